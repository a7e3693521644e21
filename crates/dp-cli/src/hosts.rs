//! `dp-hosts`: print the host records of a stage, optionally checking each host.

use crate::io::{read_input, write_output};
use anyhow::Context;
use clap::Parser;
use dp_core::config::{Config, Selection};
use dp_core::record::HostKeyPolicy;
use dp_core::sshconfig::SshAliases;
use dp_core::Exit;
use std::path::PathBuf;

/// Print the host records of a stage, one JSON object per line.
///
/// Hosts come from deploy.toml (stage, roles, per-host settings, ~/.ssh/config aliases) or,
/// with --from, from records made elsewhere. With --check every host is connected to in
/// parallel (authenticate, run `true`) and its reachability and host-key state are added
/// to its record under steps.hosts; nothing on the hosts is changed.
///
/// Exit status: 0 all hosts ok; 1 at least one host failed (its record has `error`);
/// 2 usage, config or input error, before any host was touched.
#[derive(Debug, Parser)]
#[command(name = "dp-hosts", version)]
pub struct Args {
    /// The config file.
    #[arg(long, short = 'c', default_value = "deploy.toml", env = "DP_CONFIG")]
    pub config: PathBuf,
    /// Stage to select (may be omitted when the config has exactly one).
    #[arg(long, short = 's', env = "DP_STAGE")]
    pub stage: Option<String>,
    /// Keep hosts having this role (repeatable; any of them matches).
    #[arg(long = "role", short = 'r', value_name = "ROLE")]
    pub roles: Vec<String>,
    /// Keep only this host (repeatable).
    #[arg(long = "host", short = 'H', value_name = "HOST")]
    pub hosts: Vec<String>,
    /// Read records from this file instead of the config (`-` is stdin).
    #[arg(long, value_name = "FILE")]
    pub from: Option<String>,
    /// Connect to every host (auth + `true`) and report in steps.hosts; changes nothing.
    #[arg(long)]
    pub check: bool,
    /// How many hosts to check at once.
    #[arg(long, short = 'j', default_value_t = dp_core::defaults::JOBS, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Unknown host keys: `strict` (refuse) or `accept-new` (record in known_hosts).
    #[arg(long, value_name = "POLICY", env = "DP_HOST_KEY_POLICY")]
    pub host_key_policy: Option<HostKeyPolicy>,
    /// Connect timeout for SSH hosts, such as `5s` or `500ms`.
    #[arg(long, value_name = "DURATION", value_parser = humantime_duration)]
    pub connect_timeout: Option<std::time::Duration>,
}

fn humantime_duration(s: &str) -> Result<std::time::Duration, String> {
    dp_core::config::parse_duration(s)
}

/// Runs `dp-hosts`.
pub fn run() -> anyhow::Result<Exit> {
    exec(Args::parse())
}

/// Runs `dp-hosts` with parsed arguments.
pub fn exec(args: Args) -> anyhow::Result<Exit> {
    let mut records = match &args.from {
        Some(path) => {
            if args.stage.is_some() {
                anyhow::bail!("--stage selects from the config; it cannot be used with --from");
            }
            let records = read_input(path)?;
            dp_hosts::filter(records, &args.roles, &args.hosts)?
        }
        None => {
            let config = Config::load(&args.config)?;
            let aliases = SshAliases::load().map_err(anyhow::Error::msg)?;
            let selection = Selection {
                stage: args.stage.clone(),
                roles: args.roles.clone(),
                hosts: args.hosts.clone(),
            };
            dp_hosts::from_config(&config, &selection, &aliases)
                .with_context(|| "cannot select hosts".to_string())?
        }
    };
    for r in records
        .iter_mut()
        .filter(|r| r.transport == dp_core::TransportKind::Ssh)
    {
        if let Some(policy) = args.host_key_policy {
            r.ssh.host_key_policy = Some(policy);
        }
        if let Some(t) = args.connect_timeout {
            r.ssh.connect_timeout_ms = Some(t.as_millis() as u64);
        }
    }
    if args.check {
        dp_hosts::check(&mut records, usize::from(args.jobs));
        crate::report_failures("dp-hosts", dp_hosts::STEP, &records);
    }
    write_output(&records)?;
    Ok(Exit::for_records(&records))
}
