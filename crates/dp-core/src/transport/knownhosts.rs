//! Host key verification against an OpenSSH known_hosts file.
//!
//! Lines are matched by libssh2 (plain and hashed names, `[host]:port`), but only lines of
//! the key type the server presented are consulted, so a host listed with an RSA key that
//! presents an Ed25519 key is "unknown", not "changed". Before the handshake the key
//! types already known for a host are preferred, as OpenSSH does. A first-seen key is
//! appended as one line (never by rewriting the file, which would lose what libssh2 does
//! not understand).

use super::TransportError;
use base64::Engine;
use serde::Serialize;
use ssh2::{CheckResult, HashType, HostKeyType, KnownHostFileKind, Session};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What known_hosts said about the key a host presented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostKeyState {
    /// The key was already in known_hosts.
    Known,
    /// The key was unknown and has been recorded (policy `accept-new`).
    AcceptedNew,
}

/// The host key algorithms libssh2 offers, in our order of preference.
const DEFAULT_HOSTKEY_ALGS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];

/// A known_hosts file, read once per connection.
pub struct KnownHostsFile {
    path: PathBuf,
    /// (key type token, line) for every entry line.
    entries: Vec<(String, String)>,
}

impl KnownHostsFile {
    /// Reads `path`; a missing file is an empty one.
    pub fn load(path: &Path) -> Result<KnownHostsFile, TransportError> {
        let text = match std::fs::read(path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                return Err(TransportError::KnownHosts {
                    path: path.display().to_string(),
                    message: e.to_string(),
                })
            }
        };
        let entries = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                let first = words.next()?;
                if first.starts_with('@') {
                    // @cert-authority and @revoked lines are not host keys we can match.
                    return None;
                }
                let key_type = words.next()?;
                Some((key_type.to_string(), line.to_string()))
            })
            .collect();
        Ok(KnownHostsFile {
            path: path.to_path_buf(),
            entries,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn check(
        &self,
        session: &Session,
        host: &str,
        port: u16,
        token: &str,
        key: &[u8],
    ) -> CheckResult {
        let Ok(mut kh) = session.known_hosts() else {
            return CheckResult::Failure;
        };
        for (t, line) in &self.entries {
            if t == token {
                // Lines libssh2 cannot parse are skipped, as OpenSSH skips them.
                let _ = kh.read_str(line, KnownHostFileKind::OpenSSH);
            }
        }
        kh.check_port(host, port, key)
    }

    /// Host key algorithms for the handshake: types already known for this host first.
    pub fn hostkey_preference(&self, session: &Session, host: &str, port: u16) -> String {
        let mut tokens: Vec<&str> = self.entries.iter().map(|(t, _)| t.as_str()).collect();
        tokens.sort_unstable();
        tokens.dedup();
        let mut known: Vec<&str> = Vec::new();
        for token in tokens {
            // A probe key never matches: "mismatch" means this type is listed for the host.
            if matches!(
                self.check(session, host, port, token, b"dp-probe"),
                CheckResult::Mismatch
            ) {
                known.extend(
                    DEFAULT_HOSTKEY_ALGS
                        .iter()
                        .filter(|alg| alg_token(alg) == token),
                );
            }
        }
        let rest = DEFAULT_HOSTKEY_ALGS.iter().filter(|a| !known.contains(a));
        known
            .iter()
            .chain(rest)
            .copied()
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Checks the key `session` negotiated; records it if unknown and `accept_new`.
    pub fn verify(
        &self,
        session: &Session,
        host: &str,
        port: u16,
        accept_new: bool,
    ) -> Result<HostKeyState, TransportError> {
        let (key, key_type) = session
            .host_key()
            .ok_or_else(|| TransportError::Handshake {
                addr: format!("{host}:{port}"),
                message: "server presented no host key".into(),
            })?;
        let token = type_token(key_type);
        let fingerprint = session
            .host_key_hash(HashType::Sha256)
            .map(|h| {
                format!(
                    "SHA256:{}",
                    base64::engine::general_purpose::STANDARD_NO_PAD.encode(h)
                )
            })
            .unwrap_or_default();
        let name = if port == 22 {
            host.to_string()
        } else {
            format!("[{host}]:{port}")
        };
        match self.check(session, host, port, token, key) {
            CheckResult::Match => Ok(HostKeyState::Known),
            CheckResult::Mismatch => Err(TransportError::HostKeyChanged {
                host: name,
                key_type: token.to_string(),
                fingerprint,
                known_hosts: self.path.display().to_string(),
            }),
            CheckResult::NotFound if accept_new => {
                let line = format!(
                    "{name} {token} {}\n",
                    base64::engine::general_purpose::STANDARD.encode(key)
                );
                self.append(&line)?;
                Ok(HostKeyState::AcceptedNew)
            }
            CheckResult::NotFound => Err(TransportError::HostKeyUnknown {
                host: name,
                key_type: token.to_string(),
                fingerprint,
                known_hosts: self.path.display().to_string(),
            }),
            CheckResult::Failure => Err(TransportError::KnownHosts {
                path: self.path.display().to_string(),
                message: "libssh2 could not check the host key".into(),
            }),
        }
    }

    fn append(&self, line: &str) -> Result<(), TransportError> {
        let err = |e: std::io::Error| TransportError::KnownHosts {
            path: self.path.display().to_string(),
            message: format!("cannot record the new key: {e}"),
        };
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(err)?;
        // One write per line: concurrent appends from parallel hosts do not interleave.
        file.write_all(line.as_bytes()).map_err(err)
    }
}

/// The key type as written in known_hosts.
fn type_token(t: HostKeyType) -> &'static str {
    match t {
        HostKeyType::Rsa => "ssh-rsa",
        HostKeyType::Dss => "ssh-dss",
        HostKeyType::Ecdsa256 => "ecdsa-sha2-nistp256",
        HostKeyType::Ecdsa384 => "ecdsa-sha2-nistp384",
        HostKeyType::Ecdsa521 => "ecdsa-sha2-nistp521",
        HostKeyType::Ed25519 => "ssh-ed25519",
        HostKeyType::Unknown => "unknown",
    }
}

/// The known_hosts key type an algorithm verifies with.
fn alg_token(alg: &str) -> &str {
    if alg.starts_with("rsa-sha2-") {
        "ssh-rsa"
    } else {
        alg
    }
}
