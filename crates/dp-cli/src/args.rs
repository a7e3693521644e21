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
        crate::sync::load_optional_config(&self.config, std::env::var_os("DP_CONFIG").is_some())
    }
}

/// `--lease`: the deploy lock lease each step renews.
#[derive(Debug, Clone, Args)]
pub struct LeaseArg {
    /// Deploy lock lease to take or renew, such as `15m`.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = dp_core::config::parse_duration)]
    pub lease: Duration,
}
