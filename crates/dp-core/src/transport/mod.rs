//! Running commands on a host: one trait, two transports.
//!
//! - [`local`]: `sh -c` on this machine (the embedded default; `root` is a directory here);
//! - [`ssh`]: an OpenSSH-compatible server through libssh2, one session per host reused
//!   for every command, host keys verified against known_hosts, encrypted key files
//!   opened with a passphrase asked once ([`passphrase`]);
//! - [`chachapoly`] (Linux): OpenSSL's ChaCha20 and Poly1305 in place of libssh2's
//!   portable C ones, swapped in at link time.
//!
//! Every command is a POSIX shell script; arguments inside it must be quoted with
//! [`crate::quote`]. Input is streamed from a reader and output to a writer, so memory does
//! not grow with the size of what flows through.

#[cfg(dp_linux)]
pub mod chachapoly;
pub mod knownhosts;
pub mod live;
pub mod local;
pub mod passphrase;
#[cfg(dp_openssl3)]
pub mod signer;
pub mod ssh;
pub mod tunnel;

use crate::record::{Record, TransportKind};
use serde::Serialize;
use std::io::{Read, Write};

pub use knownhosts::HostKeyState;

/// How a command ended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecStatus {
    /// Exit code, when the command exited normally.
    pub code: Option<i32>,
    /// Signal name, when the command was killed by one.
    pub signal: Option<String>,
    /// The last bytes (at most [`STDERR_TAIL`]) the command wrote to stderr.
    pub stderr: Vec<u8>,
}

/// How much of a command's stderr is kept for error messages.
pub const STDERR_TAIL: usize = 64 * 1024;

/// The largest command sent in one exec request: libssh2 sends no packet of 35000 bytes
/// or more (MAX_SSH_PACKET_LEN, less its 256 of headroom), and the command is most of it.
pub const COMMAND_MAX: usize = 32 << 10;

/// Whether `script`, as the SSH transport sends it, fits in [`COMMAND_MAX`]: what may go
/// inside a script instead of on its stdin is sized with this.
pub fn fits_one_request(script: &str) -> bool {
    crate::quote::sh_command(&live::script(script)).len() <= COMMAND_MAX
}

impl ExecStatus {
    /// True when the command exited with status 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// The last `lines` lines of stderr, as text.
    pub fn stderr_tail(&self, lines: usize) -> String {
        tail_lines(&self.stderr, lines)
    }

    /// Turns a non-zero exit into [`TransportError::Command`].
    pub fn check(self, what: &str) -> Result<(), TransportError> {
        if self.success() {
            Ok(())
        } else {
            Err(TransportError::Command {
                what: what.to_string(),
                status: self.describe(),
                stderr: self.stderr_tail(12),
            })
        }
    }

    fn describe(&self) -> String {
        match (&self.code, &self.signal) {
            (_, Some(sig)) => format!("killed by signal {sig}"),
            (Some(c), None) => format!("exit status {c}"),
            (None, None) => "no exit status".to_string(),
        }
    }
}

/// The last `lines` lines of `bytes`, lossily decoded, trimmed.
pub fn tail_lines(bytes: &[u8], lines: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let all: Vec<&str> = text.trim_end().lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// What went wrong talking to a host. Messages name the cause; callers add host and step.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The address did not resolve.
    #[error("cannot resolve {addr}: {source}")]
    Resolve {
        /// host:port
        addr: String,
        /// The resolver's error.
        source: std::io::Error,
    },
    /// No TCP connection.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// host:port
        addr: String,
        /// The socket error.
        source: std::io::Error,
    },
    /// The SSH handshake failed.
    #[error("SSH handshake with {addr} failed: {message}")]
    Handshake {
        /// host:port
        addr: String,
        /// libssh2's message.
        message: String,
    },
    /// The host presented a key that known_hosts does not have.
    #[error(
        "host key for {host} is unknown ({key_type} {fingerprint}), not in {known_hosts}; \
         check the fingerprint, then accept it with --host-key-policy accept-new \
         (or host_key_policy = \"accept-new\" in deploy.toml)"
    )]
    HostKeyUnknown {
        /// The host as written in known_hosts (`addr` or `[addr]:port`).
        host: String,
        /// Key algorithm.
        key_type: String,
        /// `SHA256:...` fingerprint.
        fingerprint: String,
        /// The known_hosts file consulted.
        known_hosts: String,
    },
    /// The host presented a key different from the one in known_hosts.
    #[error(
        "HOST KEY CHANGED for {host}: it presented {key_type} {fingerprint}, which does not \
         match {known_hosts}; this may be a man-in-the-middle attack; refusing to connect. \
         If the change is expected, remove the old key with: ssh-keygen -R '{host}' -f {known_hosts}"
    )]
    HostKeyChanged {
        /// The host as written in known_hosts.
        host: String,
        /// Key algorithm.
        key_type: String,
        /// `SHA256:...` fingerprint of the presented key.
        fingerprint: String,
        /// The known_hosts file consulted.
        known_hosts: String,
    },
    /// known_hosts could not be read or written.
    #[error("known_hosts {path}: {message}")]
    KnownHosts {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
    /// No key was accepted.
    #[error("authentication as {user:?} failed (tried: {tried})")]
    Auth {
        /// Remote user.
        user: String,
        /// What was tried, in order.
        tried: String,
    },
    /// The run was interrupted (SIGINT, SIGTERM): the command was not started, or was cut
    /// off (an upload cut off never becomes a release).
    #[error("interrupted: stopped before it finished")]
    Interrupted,
    /// The host stopped answering: nothing came back, not even to keepalives.
    #[error("not answering: nothing heard for {silent}; the host, its sshd or the network is stuck (see server_alive_interval and server_alive_count_max)")]
    NotAnswering {
        /// How long it was silent.
        silent: String,
    },
    /// An SSH operation failed after connecting.
    #[error("{what}: {message}")]
    Ssh {
        /// What was being done.
        what: String,
        /// libssh2's message.
        message: String,
    },
    /// A local I/O error.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A remote command failed.
    #[error("{what} failed ({status}){}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Command {
        /// What the command was for.
        what: String,
        /// Exit status or signal.
        status: String,
        /// The last lines of its stderr.
        stderr: String,
    },
    /// An argument could not be quoted.
    #[error(transparent)]
    Quote(#[from] crate::quote::QuoteError),
}

impl TransportError {
    /// True when no session could be had at all: the name did not resolve, no TCP
    /// connection, or no SSH handshake. Host key and authentication failures are not
    /// unreachability: the host answered, and what it said must be looked at.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            TransportError::Resolve { .. }
                | TransportError::Connect { .. }
                | TransportError::Handshake { .. }
        )
    }
}

/// A command's captured output.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// How it ended.
    pub status: ExecStatus,
    /// Everything it wrote to stdout.
    pub stdout: Vec<u8>,
}

/// A command's standard input.
pub enum Stdin<'a> {
    /// None: end of input at once.
    Closed,
    /// Streamed from this reader, then end of input.
    From(&'a mut (dyn Read + Send)),
    /// Held open, with no input and no end of input, until the command ends: it closes
    /// when dp goes away (see [`Transport::exec_held`]).
    Held,
    /// Streamed from this reader, then held open like [`Stdin::Held`] (secrets a script
    /// reads first, which must not be in its argv on the host).
    FromThenHeld(&'a mut (dyn Read + Send)),
}

impl<'a> Stdin<'a> {
    /// The reader to stream from, and whether stdin is held open.
    pub(crate) fn into_parts(self) -> (Option<&'a mut (dyn Read + Send)>, bool) {
        match self {
            Stdin::Closed => (None, false),
            Stdin::From(r) => (Some(r), false),
            Stdin::Held => (None, true),
            Stdin::FromThenHeld(r) => (Some(r), true),
        }
    }
}

/// Runs shell scripts on one host. A transport implements [`Transport::exec_stdin`]; the
/// other methods are built on it.
pub trait Transport: Send {
    /// Runs `script` with the host's POSIX shell, its stdin as `stdin` says and its stdout
    /// into `stdout`. Stderr is kept (its tail) in the returned status. A non-zero exit is
    /// not an error here. Callers use [`Transport::exec`] or [`Transport::exec_held`].
    fn exec_stdin(
        &mut self,
        script: &str,
        stdin: Stdin,
        stdout: &mut (dyn Write + Send),
    ) -> Result<ExecStatus, TransportError>;

    /// Runs `script`, streaming `stdin` into it (EOF after the reader ends; none when
    /// `None`) and its stdout into `stdout`. After an interrupt, outside
    /// [`crate::interrupt::critical`], the command is not started.
    fn exec(
        &mut self,
        script: &str,
        stdin: Option<&mut (dyn Read + Send)>,
        stdout: &mut (dyn Write + Send),
    ) -> Result<ExecStatus, TransportError> {
        if crate::interrupt::should_stop() {
            return Err(TransportError::Interrupted);
        }
        self.exec_stdin(script, stdin.map_or(Stdin::Closed, Stdin::From), stdout)
    }

    /// Runs `script` with its stdin held open (no input, no end of input) until it ends,
    /// so that the host can tell when dp is gone: the channel, and with it the script's
    /// stdin, closes. [`crate::layout`]'s `dp_deadline` then stops what it runs at once
    /// instead of at the deadline. The script is run with `dp_held=1` set first.
    fn exec_held(
        &mut self,
        script: &str,
        stdout: &mut (dyn Write + Send),
    ) -> Result<ExecStatus, TransportError> {
        self.exec_held_with(script, &[], stdout)
    }

    /// [`Transport::exec_held`] with `input` on stdin first (then held open), for what
    /// must not appear in the script's argv on the host: the script reads it first.
    fn exec_held_with(
        &mut self,
        script: &str,
        input: &[u8],
        stdout: &mut (dyn Write + Send),
    ) -> Result<ExecStatus, TransportError> {
        if crate::interrupt::should_stop() {
            return Err(TransportError::Interrupted);
        }
        let script = format!("dp_held=1\n{script}");
        if input.is_empty() {
            self.exec_stdin(&script, Stdin::Held, stdout)
        } else {
            let mut reader = input;
            self.exec_stdin(&script, Stdin::FromThenHeld(&mut reader), stdout)
        }
    }

    /// [`Transport::exec_held`], capturing stdout.
    fn run_held(&mut self, script: &str) -> Result<Output, TransportError> {
        self.run_held_with(script, &[])
    }

    /// [`Transport::exec_held_with`], capturing stdout.
    fn run_held_with(&mut self, script: &str, input: &[u8]) -> Result<Output, TransportError> {
        let mut stdout = Vec::new();
        let status = self.exec_held_with(script, input, &mut stdout)?;
        Ok(Output { status, stdout })
    }

    /// Runs `script` and captures its stdout.
    fn run(&mut self, script: &str) -> Result<Output, TransportError> {
        let mut stdout = Vec::new();
        let status = self.exec(script, None, &mut stdout)?;
        Ok(Output { status, stdout })
    }

    /// Runs `script`, failing with its stderr unless it exits 0; returns its stdout.
    fn run_ok(&mut self, script: &str, what: &str) -> Result<Vec<u8>, TransportError> {
        let out = self.run(script)?;
        out.status.check(what)?;
        Ok(out.stdout)
    }
}

/// What connecting learned about a host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ConnectInfo {
    /// `known` or `accepted-new` for SSH; absent for local hosts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_key: Option<HostKeyState>,
    /// The negotiated cipher (client to server), for SSH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cipher: Option<String>,
    /// Milliseconds from start to an authenticated session.
    pub connect_ms: u64,
}

/// An open connection to one host.
pub enum Connection {
    /// This machine.
    Local(local::LocalTransport),
    /// An SSH session.
    Ssh(Box<ssh::SshTransport>),
}

impl Connection {
    /// Connects to the host of `record` with its transport.
    pub fn open(record: &Record) -> Result<Connection, TransportError> {
        match record.transport {
            TransportKind::Local => Ok(Connection::Local(local::LocalTransport::for_host(
                &record.host,
            ))),
            TransportKind::Ssh => Ok(Connection::Ssh(Box::new(ssh::SshTransport::connect(
                record,
            )?))),
        }
    }

    /// What connecting learned.
    pub fn info(&self) -> ConnectInfo {
        match self {
            Connection::Local(_) => ConnectInfo::default(),
            Connection::Ssh(s) => s.info.clone(),
        }
    }
}

impl Transport for Connection {
    fn exec_stdin(
        &mut self,
        script: &str,
        stdin: Stdin,
        stdout: &mut (dyn Write + Send),
    ) -> Result<ExecStatus, TransportError> {
        match self {
            Connection::Local(t) => t.exec_stdin(script, stdin, stdout),
            Connection::Ssh(t) => t.exec_stdin(script, stdin, stdout),
        }
    }
}

/// Keeps the last `cap` bytes written to it.
#[derive(Debug)]
pub(crate) struct TailBuffer {
    cap: usize,
    buf: Vec<u8>,
    /// Streamed too, when output is live (see [`live`]).
    live: Option<live::Lines>,
}

impl TailBuffer {
    /// Keeps the last `cap` bytes of `host`'s stderr (and streams it when output is live).
    pub(crate) fn new(cap: usize, host: Option<&str>) -> Self {
        TailBuffer {
            cap,
            buf: Vec::new(),
            live: live::Lines::of(host),
        }
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        if let Some(live) = &mut self.live {
            live.push(data);
        }
        self.buf.extend_from_slice(data);
        if self.buf.len() > self.cap {
            let cut = self.buf.len() - self.cap;
            self.buf.drain(..cut);
        }
    }

    pub(crate) fn into_inner(mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}
