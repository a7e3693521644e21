//! `~/.ssh/config` aliases: HostName, User, Port, IdentityFile, ServerAliveInterval and
//! ServerAliveCountMax fill what deploy.toml leaves unset (deploy.toml, when it says
//! something, wins).

use crate::record::{Record, TransportKind};
use ssh2_config::{ParseRule, SshConfig};
use std::path::PathBuf;

/// The parsed `~/.ssh/config` (empty when there is none).
#[derive(Default)]
pub struct SshAliases {
    config: Option<SshConfig>,
}

impl SshAliases {
    /// Reads `$HOME/.ssh/config`; a missing file is fine, a malformed one is an error.
    pub fn load() -> Result<SshAliases, String> {
        let Some(home) = std::env::var_os("HOME") else {
            return Ok(SshAliases::default());
        };
        let path = PathBuf::from(home).join(".ssh/config");
        let file = match std::fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(SshAliases::default()),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
        let config = SshConfig::default()
            .parse(&mut std::io::BufReader::new(file), rules)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(SshAliases {
            config: Some(config),
        })
    }

    /// Fills `addr`, `port`, `user` and `ssh.identity` of an SSH record from the alias
    /// matching its address (or name), where the record does not set them.
    pub fn apply(&self, record: &mut Record) {
        let Some(config) = &self.config else { return };
        if record.transport != TransportKind::Ssh {
            return;
        }
        let alias = record.address().to_string();
        let params = config.query(&alias);
        if record.addr.is_none() {
            if let Some(name) = params.host_name {
                record.addr = Some(name.replace("%h", &alias));
            }
        }
        if record.port.is_none() {
            record.port = params.port;
        }
        if record.user.is_none() {
            record.user = params.user;
        }
        if record.ssh.server_alive_interval.is_none() {
            record.ssh.server_alive_interval = params.server_alive_interval.map(|d| d.as_secs());
        }
        if record.ssh.server_alive_count_max.is_none() {
            // Not a field of ssh2-config's own: it keeps the line among those it skipped.
            record.ssh.server_alive_count_max = params
                .unsupported_fields
                .iter()
                .chain(params.ignored_fields.iter())
                .find(|(k, _)| k.eq_ignore_ascii_case("ServerAliveCountMax"))
                .and_then(|(_, v)| v.first())
                .and_then(|v| v.parse().ok());
        }
        if record.ssh.identity.is_none() {
            record.ssh.identity = params
                .identity_file
                .and_then(|files| files.into_iter().next())
                .map(|p| crate::config::expand_home(&p));
        }
    }
}
