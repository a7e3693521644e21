//! dp-hosts: the inventory step. Selects host records from `deploy.toml` (or from a stream
//! of records), and optionally checks that every host is reachable, in parallel.

use dp_core::config::{Config, ConfigError, Selection};
use dp_core::sshconfig::SshAliases;
use dp_core::transport::{Connection, Transport};
use dp_core::Record;
use serde::Serialize;
use std::time::Instant;

/// The step name used in records (`steps.hosts`, `error.step`).
pub const STEP: &str = "hosts";

/// A selection that matches nothing, or names what is not there.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SelectError(pub String);

/// The selected hosts of `config`, with `~/.ssh/config` aliases applied.
pub fn from_config(
    config: &Config,
    selection: &Selection,
    aliases: &SshAliases,
) -> Result<Vec<Record>, ConfigError> {
    let mut records = config.select(selection)?;
    for r in &mut records {
        aliases.apply(r);
    }
    Ok(records)
}

/// Keeps the records having any of `roles` (all when empty) and named in `hosts` (all when
/// empty). Every name in `hosts` must exist.
pub fn filter(
    records: Vec<Record>,
    roles: &[String],
    hosts: &[String],
) -> Result<Vec<Record>, SelectError> {
    for wanted in hosts {
        if !records.iter().any(|r| &r.host == wanted) {
            return Err(SelectError(format!("no host {wanted:?} in the input")));
        }
    }
    let kept: Vec<Record> = records
        .into_iter()
        .filter(|r| hosts.is_empty() || hosts.contains(&r.host))
        .filter(|r| roles.is_empty() || roles.iter().any(|role| r.has_role(role)))
        .collect();
    if kept.is_empty() {
        return Err(SelectError(format!(
            "no host matches roles [{}]",
            roles.join(", ")
        )));
    }
    Ok(kept)
}

/// What `--check` found for one host (`steps.hosts`).
#[derive(Debug, Clone, Serialize)]
pub struct CheckStats {
    /// An authenticated session ran `true`.
    pub reachable: bool,
    /// `known` or `accepted-new` (SSH only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_key: Option<dp_core::transport::HostKeyState>,
    /// Negotiated cipher (SSH only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// Milliseconds for connect + authenticate + `true`.
    pub ms: u64,
}

/// Connects to every host not already failed, at most `jobs` at once, runs `true`, and
/// records the result in `steps.hosts` (or `error`). Nothing on the hosts is changed.
pub fn check(records: &mut [Record], jobs: usize) {
    dp_core::parallel::map(jobs, records.iter_mut().collect(), check_one);
}

/// Checks one host; see [`check`].
pub fn check_one(record: &mut Record) {
    if record.failed() {
        return;
    }
    let started = Instant::now();
    let result = Connection::open(record).and_then(|mut conn| {
        conn.run_ok("true", "running `true`")?;
        Ok(conn.info())
    });
    let ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(info) => record.set_step(
            STEP,
            CheckStats {
                reachable: true,
                host_key: info.host_key,
                cipher: info.cipher,
                ms,
            },
        ),
        Err(e) => {
            record.set_step(
                STEP,
                CheckStats {
                    reachable: false,
                    host_key: None,
                    cipher: None,
                    ms,
                },
            );
            record.fail(STEP, e.to_string());
        }
    }
}
