//! The host record: one JSON object per line, flowing from tool to tool.
//!
//! ```json
//! {"host":"web1","transport":"ssh","addr":"10.0.0.5","port":22,"user":"deploy",
//!  "root":"/srv/mysite","roles":["web","migrate"],"release":"20261127T124500Z-3f2a1c9b",
//!  "steps":{"sync":{"files_sent":12,"bytes_sent":48213,"linked":2981,"ms":812}},
//!  "error":null}
//! ```
//!
//! - `host` is required and unique within one stream; everything else has a default.
//! - A record whose `error` is set has failed: later tools pass it through untouched and
//!   do not act on that host. A tool never drops a record.
//! - Fields this version does not know are kept and written back out unchanged.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::path::PathBuf;

/// How a host is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// OpenSSH-compatible server, through libssh2.
    #[default]
    Ssh,
    /// This machine: `root` is a local directory.
    Local,
}

impl TransportKind {
    /// The name used in records and config.
    pub fn as_str(self) -> &'static str {
        match self {
            TransportKind::Ssh => "ssh",
            TransportKind::Local => "local",
        }
    }
}

/// What to do with a host key that is not in known_hosts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyPolicy {
    /// Refuse unknown keys (the default).
    #[default]
    Strict,
    /// Record a first-seen key in known_hosts; a changed key is still refused.
    AcceptNew,
}

impl std::str::FromStr for HostKeyPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strict" | "yes" => Ok(HostKeyPolicy::Strict),
            "accept-new" => Ok(HostKeyPolicy::AcceptNew),
            _ => Err(format!(
                "unknown host key policy {s:?} (expected \"strict\" or \"accept-new\")"
            )),
        }
    }
}

/// SSH connection settings carried in a record (only what differs from the defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SshOptions {
    /// Private key file to try after the agent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<PathBuf>,
    /// known_hosts file (default `~/.ssh/known_hosts`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub known_hosts: Option<PathBuf>,
    /// Unknown host keys: refused (`strict`) or recorded (`accept-new`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_policy: Option<HostKeyPolicy>,
    /// Connect timeout in milliseconds (default 10000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_timeout_ms: Option<u64>,
    /// Seconds of silence from the host before a keepalive asks it to answer
    /// (OpenSSH's ServerAliveInterval; default 15, 0 turns the check off).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_alive_interval: Option<u64>,
    /// Keepalives left unanswered before the host counts as not answering
    /// (OpenSSH's ServerAliveCountMax; default 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_alive_count_max: Option<u32>,
}

impl SshOptions {
    /// True when nothing differs from the defaults.
    pub fn is_default(&self) -> bool {
        *self == SshOptions::default()
    }
}

/// What kind of failure a host had: the tools that decide (dp-migrate, dp-restart) read
/// this, never the message.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// The step failed on this host (the default).
    #[default]
    Failed,
    /// The host could not be connected to at all (no TCP connection, no SSH handshake):
    /// the only kind `--allow-unreachable` may leave out.
    Unreachable,
    /// Nothing failed here, but the deploy stopped before the switch because another host
    /// failed: `current` was not changed.
    NotSwitched,
    /// The rollout stopped before this host's batch: `current` was not changed.
    Skipped,
    /// The restart or health check failed and the host was switched back.
    SwitchedBack,
    /// The deploy was interrupted (SIGINT, SIGTERM) before this host went live.
    Interrupted,
}

impl ErrorKind {
    /// The name used in records and history.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Failed => "failed",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::NotSwitched => "not-switched",
            ErrorKind::Skipped => "skipped",
            ErrorKind::SwitchedBack => "switched-back",
            ErrorKind::Interrupted => "interrupted",
        }
    }
}

/// Why a host failed, and in which step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostError {
    /// The step that failed (`hosts`, `sync`, `deps`, `migrate`, `restart`, ...).
    pub step: String,
    /// What kind of failure (`failed` when absent).
    #[serde(default)]
    pub kind: ErrorKind,
    /// The cause, in words.
    pub message: String,
    /// The evidence, when there is some: the app log's last lines on a failed health
    /// check, say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

impl std::fmt::Display for HostError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.step, self.message)
    }
}

/// One host, as it flows between the tools.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The host's name, unique in one stream.
    pub host: String,
    /// How to reach it.
    #[serde(default)]
    pub transport: TransportKind,
    /// Network address (defaults to `host`, after ~/.ssh/config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// SSH port (default 22, after ~/.ssh/config).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Remote user (defaults to ~/.ssh/config, then the local user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Deploy root on the host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
    /// Roles, such as `web` and `migrate`.
    #[serde(default)]
    pub roles: Vec<String>,
    /// SSH settings that differ from the defaults.
    #[serde(default, skip_serializing_if = "SshOptions::is_default")]
    pub ssh: SshOptions,
    /// The release of this deploy, shared by every host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<String>,
    /// What each step did, keyed by step name.
    #[serde(default)]
    pub steps: Map<String, Value>,
    /// Set when this host failed; later tools then leave it alone.
    #[serde(default)]
    pub error: Option<HostError>,
    /// Fields this version does not know, written back out unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Record {
    /// A record for `host` with every other field at its default.
    pub fn new(host: impl Into<String>) -> Record {
        Record {
            host: host.into(),
            transport: TransportKind::default(),
            addr: None,
            port: None,
            user: None,
            root: None,
            roles: Vec::new(),
            ssh: SshOptions::default(),
            release: None,
            steps: Map::new(),
            error: None,
            extra: Map::new(),
        }
    }

    /// True when this host has failed in an earlier step.
    pub fn failed(&self) -> bool {
        self.error.is_some()
    }

    /// Marks this host failed in `step`. An earlier error is kept: the first cause wins.
    /// After an interrupt, a failure is of kind `interrupted` (the message keeps the cause).
    pub fn fail(&mut self, step: &str, message: impl Into<String>) {
        let kind = if crate::interrupt::interrupted() {
            ErrorKind::Interrupted
        } else {
            ErrorKind::Failed
        };
        self.fail_as(step, kind, message);
    }

    /// [`Record::fail`] with a kind other than [`ErrorKind::Failed`].
    pub fn fail_as(&mut self, step: &str, kind: ErrorKind, message: impl Into<String>) {
        if self.error.is_none() {
            self.error = Some(HostError {
                step: step.to_string(),
                kind,
                message: message.into(),
                details: None,
            });
        }
    }

    /// Adds `details` (evidence: the app log's last lines, say) to this host's error.
    pub fn add_details(&mut self, details: &str) {
        if let Some(e) = &mut self.error {
            let all = e.details.take().map_or(String::new(), |d| d + "\n");
            e.details = Some(all + details);
        }
    }

    /// The kind of this host's failure, if it failed.
    pub fn error_kind(&self) -> Option<ErrorKind> {
        self.error.as_ref().map(|e| e.kind)
    }

    /// Stores what `step` did.
    pub fn set_step(&mut self, step: &str, stats: impl Serialize) {
        let value = serde_json::to_value(stats).unwrap_or(Value::Null);
        self.steps.insert(step.to_string(), value);
    }

    /// The address to connect to: `addr`, else the host name.
    pub fn address(&self) -> &str {
        self.addr.as_deref().unwrap_or(&self.host)
    }

    /// True when the host has `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// Checks what must hold before any host is touched: names without control
    /// characters, a port in 1..65535, and a deploy root that is absolute, normalized and
    /// not `/`. The message names the field and the value.
    pub fn check(&self) -> Result<(), String> {
        check_text("host", &self.host)?;
        for (field, value) in [("addr", &self.addr), ("user", &self.user)] {
            if let Some(v) = value {
                check_text(field, v)?;
            }
        }
        for role in &self.roles {
            check_text("role", role)?;
        }
        if self.port == Some(0) {
            return Err("port 0: ports are 1..65535".into());
        }
        if let Some(root) = &self.root {
            check_root(root)?;
        }
        Ok(())
    }
}

/// Refuses a name or value with control characters (a newline in a host name could fake
/// lines of output) or that is empty.
pub fn check_text(field: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("`{field}` is empty"));
    }
    if value.chars().any(char::is_control) {
        return Err(format!("`{field}` {value:?} contains control characters"));
    }
    Ok(())
}

/// A deploy root must be an absolute, normalized path (no `.`, `..` or empty components;
/// one trailing `/` is allowed) and not `/` itself: a relative root would resolve against
/// the remote login directory, and everything under it is dp's to manage.
pub fn check_root(root: &str) -> Result<(), String> {
    check_text("root", root)?;
    let bad = |why: &str| Err(format!("root {root:?} {why}"));
    let Some(rest) = root.strip_prefix('/') else {
        return bad("is not absolute (it must start with /)");
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.is_empty() {
        return bad("is the file system's root: choose a directory of its own, such as /srv/app");
    }
    if rest
        .split('/')
        .any(|part| part.is_empty() || part == "." || part == "..")
    {
        return bad("is not normalized (no `.`, `..` or `//` in it)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_fields_round_trip_in_order() {
        let line = r#"{"host":"a","zeta":1,"alpha":{"x":[1,2]},"error":null}"#;
        let r: Record = serde_json::from_str(line).unwrap();
        assert_eq!(r.extra.keys().collect::<Vec<_>>(), ["zeta", "alpha"]);
        let out = serde_json::to_string(&r).unwrap();
        assert!(out.ends_with(r#""zeta":1,"alpha":{"x":[1,2]}}"#), "{out}");
    }

    #[test]
    fn checks_roots_names_and_ports() {
        for good in ["/srv/app", "/srv/app/", "/a", "/srv/my app", "/-rf"] {
            assert!(check_root(good).is_ok(), "{good}");
        }
        for bad in [
            "/",
            "//",
            "",
            "-rf",
            "srv/app",
            "/srv/../etc",
            "/srv/./a",
            "/srv//a",
            "/a\nb",
        ] {
            assert!(check_root(bad).is_err(), "{bad:?}");
        }
        let mut r = Record::new("web\nfake line");
        assert!(r.check().unwrap_err().contains("control characters"));
        r.host = "web".into();
        r.port = Some(0);
        assert!(r.check().unwrap_err().contains("1..65535"));
        r.port = Some(22);
        assert!(r.check().is_ok());
    }

    #[test]
    fn first_error_wins() {
        let mut r = Record::new("a");
        r.fail("sync", "disk full");
        r.fail("restart", "later");
        assert_eq!(r.error.unwrap().to_string(), "sync: disk full");
    }
}
