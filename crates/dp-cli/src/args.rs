//! Arguments several tools share, flattened into their clap definitions.

use clap::Args;
use std::path::PathBuf;
use std::time::Duration;

/// `--config`: deploy.toml, used when it exists (an error only when named explicitly).
#[derive(Debug, Clone, Args)]
pub struct ConfigArg {
    /// Config file (used when it exists).
    #[arg(long, short = 'c', default_value = "deploy.toml", env = "DP_CONFIG")]
    pub config: PathBuf,
}

impl ConfigArg {
    /// The config, if there is one; a missing file is an error only when it was named.
    pub fn load(&self) -> anyhow::Result<Option<dp_core::config::Config>> {
        load_optional_config(&self.config, std::env::var_os("DP_CONFIG").is_some())
    }
}

/// Loads the config when it exists; a missing file is an error only when it was named
/// (`named`, or a path other than the default deploy.toml).
pub fn load_optional_config(
    path: &std::path::Path,
    named: bool,
) -> anyhow::Result<Option<dp_core::config::Config>> {
    let explicit = named || path != std::path::Path::new("deploy.toml");
    if !explicit && !path.exists() {
        return Ok(None);
    }
    Ok(Some(dp_core::config::Config::load(path)?))
}

/// "`what` (default: `key` in deploy.toml, else `value`)." for a flag whose default comes
/// from the config, then from [`dp_core::defaults`]: the same value `--help` shows
/// everywhere.
pub fn or_default(what: &str, key: &str, value: impl std::fmt::Display) -> String {
    format!("{what} (default: {key}, else {value})")
}

/// `--jobs`: how many hosts a tool works on at once.
#[derive(Debug, Clone, Args)]
pub struct JobsArg {
    /// How many hosts at once.
    #[arg(long, short = 'j', default_value_t = dp_core::defaults::JOBS, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
}

impl JobsArg {
    /// The number of hosts at once.
    pub fn get(&self) -> usize {
        usize::from(self.jobs)
    }
}

/// `--lease`: the deploy lock lease each step renews.
#[derive(Debug, Clone, Args)]
pub struct LeaseArg {
    /// Deploy lock lease to take or renew, such as `15m`.
    #[arg(long, value_name = "DURATION", default_value = dp_core::defaults::LEASE_TEXT, value_parser = parse_lease)]
    pub lease: Duration,
}

/// A lease of whole seconds, at least one (the lock keeps its expiry in seconds).
fn parse_lease(text: &str) -> Result<Duration, String> {
    let lease = dp_core::config::parse_duration(text)?;
    if lease.as_secs() == 0 || lease.subsec_nanos() != 0 {
        return Err(format!(
            "invalid lease {text:?}: whole seconds, at least 1s"
        ));
    }
    Ok(lease)
}

/// `--allow-unreachable`: how many hosts that cannot be connected to at all may be left
/// out of a deploy (every other failure before the switch stops the whole deploy).
#[derive(Debug, Clone, Args)]
pub struct AllowUnreachableArg {
    /// Hosts that could not be connected to at all that may be left out (not deployed)
    /// while the others go live; any other failure before the switch switches no host
    /// (default: `allow_unreachable` in the config, else 0).
    #[arg(long, value_name = "N")]
    pub allow_unreachable: Option<usize>,
}

impl AllowUnreachableArg {
    /// The flag, else the config's `allow_unreachable`, else 0.
    pub fn get(&self, config: Option<&dp_core::config::Config>) -> usize {
        self.allow_unreachable
            .or(config.and_then(|c| c.allow_unreachable))
            .unwrap_or(0)
    }
}

/// A release id from the command line, checked like every release id.
pub fn release_id(s: &str) -> Result<String, String> {
    dp_core::layout::check_release_id(s)?;
    Ok(s.to_string())
}
