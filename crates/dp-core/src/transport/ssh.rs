//! The SSH transport: libssh2 through the `ssh2` crate.
//!
//! One session per host, reused for every command. The socket has TCP_NODELAY (delayed
//! ACKs otherwise add about 42 ms per round trip) and TCP keepalive (a dead host is noticed
//! within about 30 s). A host whose kernel still answers while sshd or the machine is
//! stuck is caught by SSH keepalives that want a reply (OpenSSH's ServerAliveInterval and
//! ServerAliveCountMax): when `count` of them go unanswered (about interval x (count + 1)
//! of silence), it fails as not answering. Commands are pumped in non-blocking mode, so
//! input and output flow at the same time and neither side can deadlock on a full window.

use super::knownhosts::KnownHostsFile;
use super::passphrase::{self, Unlocked};
use super::{ConnectInfo, ExecStatus, Stdin, TailBuffer, Transport, TransportError, STDERR_TAIL};
use crate::record::{HostKeyPolicy, Record};
use socket2::{Domain, Protocol, Socket, TcpKeepalive, Type};
use ssh2::{BlockDirections, Channel, ErrorCode, MethodType, Session};

/// libssh2's "would block" and "timed out" codes.
const EAGAIN: i32 = -37;
const TIMEOUT: i32 = -9;
/// libssh2's "could not read the key file".
const LIBSSH2_ERROR_FILE: i32 = -16;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Default time allowed for TCP connect plus SSH handshake and authentication.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = crate::defaults::CONNECT_TIMEOUT;

/// Ciphers in order of preference. chacha20-poly1305, with OpenSSL's ChaCha20 and Poly1305
/// under libssh2 ([`super::chachapoly`]), moved 256 MiB through one channel 1.7x faster
/// than aes128-gcm on this machine (scripts/bench/hosts.sh), so it comes first; then the
/// GCM and CTR modes every OpenSSH server still offers.
pub const CIPHERS: &str = "chacha20-poly1305@openssh.com,aes128-gcm@openssh.com,\
aes256-gcm@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr";

/// Environment variable that overrides [`CIPHERS`] (for benchmarks and old servers).
pub const CIPHERS_ENV: &str = "DP_SSH_CIPHERS";

/// [`CIPHERS`] or `$DP_SSH_CIPHERS`, without chacha20-poly1305 where this OpenSSL cannot
/// compute it (see [`super::chachapoly::usable`]).
fn cipher_preference() -> String {
    let ciphers = std::env::var(CIPHERS_ENV).unwrap_or_else(|_| CIPHERS.to_string());
    #[cfg(dp_linux)]
    if !super::chachapoly::usable() {
        return ciphers
            .split(',')
            .filter(|c| !c.starts_with("chacha20-poly1305"))
            .collect::<Vec<_>>()
            .join(",");
    }
    ciphers
}

/// An authenticated SSH session to one host.
pub struct SshTransport {
    session: Session,
    fd: RawFd,
    alive: Alive,
    /// The host's name, for live output.
    host: String,
    /// What connecting learned (host key state, cipher, time).
    pub info: ConnectInfo,
    /// A session channel opened ahead, while the previous command ran, for the next one:
    /// the next command then waits one round trip less.
    spare: Spare,
}

/// The channel opened ahead (see [`SshTransport::spare`]).
enum Spare {
    None,
    /// Its open request is on the wire; libssh2 holds it as the session's one open in
    /// progress, so no other channel may be opened until it is settled.
    Opening,
    Ready(Channel),
}

/// Default seconds of silence before a keepalive asks the host to answer (OpenSSH's
/// ServerAliveInterval, which OpenSSH leaves off; on by default here, because a deploy
/// must not wait forever on a host that stopped answering).
pub const DEFAULT_SERVER_ALIVE_INTERVAL: u64 = 15;

/// Default keepalives left unanswered before a host counts as not answering.
pub const DEFAULT_SERVER_ALIVE_COUNT_MAX: u32 = 3;

/// The dead-peer check: after `interval` of silence, a keepalive that wants a reply every
/// interval; once `count` of them went unanswered, the host is not answering (see
/// [`Alive::check`]). TCP keepalive cannot tell a host whose kernel still acknowledges
/// while sshd or the machine is stuck.
#[derive(Debug, Clone, Copy)]
struct Alive {
    interval: Duration,
    count: u32,
}

impl Alive {
    fn of(record: &Record) -> Alive {
        Alive {
            interval: Duration::from_secs(
                record
                    .ssh
                    .server_alive_interval
                    .unwrap_or(DEFAULT_SERVER_ALIVE_INTERVAL),
            ),
            count: record
                .ssh
                .server_alive_count_max
                .unwrap_or(DEFAULT_SERVER_ALIVE_COUNT_MAX)
                .max(1),
        }
    }

    fn enabled(&self) -> bool {
        !self.interval.is_zero()
    }

    /// How long a control operation may wait for an answer: about the time the keepalive
    /// check allows, interval x (count + 1).
    fn limit(&self) -> Duration {
        self.interval * (self.count + 1)
    }

    /// How long one wait on the socket may last before the check looks again.
    fn poll(&self) -> Duration {
        if self.enabled() {
            (self.interval / 2).clamp(Duration::from_millis(100), Duration::from_secs(5))
        } else {
            Duration::from_secs(5)
        }
    }

    /// After a quiet wait: once the host has been silent for an interval, asks it to
    /// answer (a keepalive that wants a reply) every interval; when `count` such asks went
    /// unanswered, the host is not answering. As with OpenSSH, a stuck host fails after
    /// about interval x (count + 1); only keepalives actually sent count, so dp itself
    /// being paused (Ctrl-Z) does not make live hosts look dead.
    fn check(
        &self,
        session: &Session,
        fd: RawFd,
        last_heard: Instant,
        probes: &mut Probes,
    ) -> Result<(), TransportError> {
        if !self.enabled() {
            // Quiet for a while: keep NATs and the server's ClientAlive checks happy.
            let _ = session.keepalive_send();
            return Ok(());
        }
        // libssh2 may have taken in a keepalive's reply inside a read that found no
        // channel data; the kernel knows when data last arrived.
        let silent = match since_data_received(fd) {
            Some(kernel) => kernel.min(last_heard.elapsed()),
            None => last_heard.elapsed(),
        };
        if silent < self.interval {
            *probes = Probes::default();
            return Ok(());
        }
        // libssh2 sends keepalives at most every 2 s.
        let every = self.interval.max(Duration::from_secs(2));
        if probes.last.is_some_and(|t| t.elapsed() < every) {
            return Ok(());
        }
        if probes.sent >= self.count {
            return Err(TransportError::NotAnswering {
                silent: humantime::format_duration(Duration::from_secs(silent.as_secs()))
                    .to_string(),
            });
        }
        let _ = session.keepalive_send();
        probes.sent += 1;
        probes.last = Some(Instant::now());
        Ok(())
    }
}

/// Keepalives sent since the host was last heard from.
#[derive(Debug, Default)]
struct Probes {
    sent: u32,
    last: Option<Instant>,
}

fn ssh_err(what: &str) -> impl FnOnce(ssh2::Error) -> TransportError + '_ {
    move |e| TransportError::Ssh {
        what: what.to_string(),
        message: e.message().to_string(),
    }
}

impl SshTransport {
    /// Connects, verifies the host key and authenticates, all within the record's connect
    /// timeout.
    pub fn connect(record: &Record) -> Result<SshTransport, TransportError> {
        let started = Instant::now();
        let host = record.address().to_string();
        let port = record.port.unwrap_or(22);
        let display = format!("{host}:{port}");
        let timeout = record
            .ssh
            .connect_timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT);
        let tcp = tcp_connect(&host, port, timeout)?;
        let fd = tcp.as_raw_fd();

        let mut session = Session::new().map_err(ssh_err("create SSH session"))?;
        let known_hosts_path = record
            .ssh
            .known_hosts
            .clone()
            .unwrap_or_else(|| home().join(".ssh/known_hosts"));
        let known = KnownHostsFile::load(&known_hosts_path)?;
        let ciphers = cipher_preference();
        session
            .method_pref(MethodType::CryptCs, &ciphers)
            .and_then(|()| session.method_pref(MethodType::CryptSc, &ciphers))
            .map_err(ssh_err("set cipher preference"))?;
        session
            .method_pref(
                MethodType::HostKey,
                &known.hostkey_preference(&session, &host, port),
            )
            .map_err(ssh_err("set host key preference"))?;
        let remaining = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        session.set_tcp_stream(tcp);
        session.set_blocking(false);
        let mut handshaking = session.clone();
        nb(&session, fd, remaining, || handshaking.handshake()).map_err(|e| {
            TransportError::Handshake {
                addr: display.clone(),
                message: timeout_message(&e, timeout),
            }
        })?;

        let accept_new = record.ssh.host_key_policy == Some(HostKeyPolicy::AcceptNew);
        let host_key = known.verify(&session, &host, port, accept_new)?;
        let user = record.user.clone().unwrap_or_else(local_user);
        let remaining = timeout
            .saturating_sub(started.elapsed())
            .max(Duration::from_millis(1));
        authenticate(&session, fd, remaining, &user, record.ssh.identity.as_ref())?;
        let alive = Alive::of(record);
        // A keepalive that wants a reply: the reply is what tells a live host from a stuck one.
        // libssh2 then sends one whenever asked, at most every 2 s.
        session.set_keepalive(alive.enabled(), 1);
        let cipher = session.methods(MethodType::CryptCs).map(str::to_string);
        Ok(SshTransport {
            session,
            fd,
            alive,
            host: record.host.clone(),
            info: ConnectInfo {
                host_key: Some(host_key),
                cipher,
                connect_ms: started.elapsed().as_millis() as u64,
            },
            spare: Spare::None,
        })
    }

    /// The underlying session.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The session's socket (for polling alongside other sockets).
    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// How long a control operation (channel open, exec request, close) may wait: as long
    /// as the host may stay silent, at most [`CONTROL_TIMEOUT`].
    fn control_timeout(&self) -> Duration {
        if self.alive.enabled() {
            self.alive.limit().min(CONTROL_TIMEOUT)
        } else {
            CONTROL_TIMEOUT
        }
    }

    /// The error for a control operation: a timeout means the host is not answering.
    fn control_err(&self, what: &'static str) -> impl FnOnce(ssh2::Error) -> TransportError {
        let (alive, timeout) = (self.alive, self.control_timeout());
        move |e| {
            if e.code() == ErrorCode::Session(TIMEOUT) && alive.enabled() {
                TransportError::NotAnswering {
                    silent: humantime::format_duration(timeout).to_string(),
                }
            } else {
                ssh_err(what)(e)
            }
        }
    }

    /// Opens a direct-tcpip channel: a TCP connection from the host to `host:port`.
    pub fn direct_tcpip(&mut self, host: &str, port: u16) -> Result<Channel, TransportError> {
        // libssh2 opens one channel at a time: a spare still opening would be taken for
        // this one.
        self.settle_spare();
        nb(&self.session, self.fd, self.control_timeout(), || {
            self.session.channel_direct_tcpip(host, port, None)
        })
        .map_err(self.control_err("open a tunnel"))
    }

    /// A session channel for the next command: the spare, else a new one.
    fn take_channel(&mut self) -> Result<Channel, TransportError> {
        // A spare refused (sshd's MaxSessions counts it) is no error: a new one is asked
        // for once the previous command's channel is closed.
        self.settle_spare();
        if let Spare::Ready(channel) = std::mem::replace(&mut self.spare, Spare::None) {
            return Ok(channel);
        }
        let (session, fd, control) = (&self.session, self.fd, self.control_timeout());
        nb(session, fd, control, || session.channel_session())
            .map_err(self.control_err("open channel"))
    }

    /// Sends the open request of a spare channel, unless there is one; its answer waits in
    /// libssh2's queue until the channel is taken. A spare that cannot be opened is no error: the
    /// next command opens its own and reports what stops it.
    fn start_spare(&mut self) {
        if !matches!(self.spare, Spare::None) {
            return;
        }
        let (session, fd, control) = (&self.session, self.fd, self.control_timeout());
        self.spare = match send_request(session, fd, control, || session.channel_session()) {
            Ok(Some(channel)) => Spare::Ready(channel),
            Ok(None) => Spare::Opening,
            Err(_) => Spare::None,
        };
    }

    /// Waits for the spare's answer, so that another channel can be opened.
    fn settle_spare(&mut self) {
        if matches!(self.spare, Spare::Opening) {
            let (session, fd, control) = (&self.session, self.fd, self.control_timeout());
            self.spare = match nb(session, fd, control, || session.channel_session()) {
                Ok(channel) => Spare::Ready(channel),
                Err(_) => Spare::None,
            };
        }
    }

    fn pump(
        &self,
        channel: &mut Channel,
        mut stdin: Option<&mut (dyn Read + Send)>,
        hold_stdin: bool,
        stdout: &mut (dyn Write + Send),
        tail: &mut TailBuffer,
    ) -> Result<(), TransportError> {
        let lost = |e: io::Error| TransportError::Io {
            what: "connection lost".into(),
            source: e,
        };
        let mut inbuf = vec![0u8; 64 * 1024];
        let (mut in_pos, mut in_len) = (0usize, 0usize);
        let mut in_done = stdin.is_none();
        // Held: no end of input (after the input, if any), until the command ends.
        let mut eof_sent = hold_stdin && in_done;
        let mut outbuf = vec![0u8; 64 * 1024];
        let mut stderr = channel.stderr();
        // When the host last showed it is alive: data read, data it let us send (its
        // window), or bytes arriving on the socket (a keepalive's reply).
        let mut last_heard = Instant::now();
        let mut probes = Probes::default();
        loop {
            if crate::interrupt::should_stop() {
                return Err(TransportError::Interrupted);
            }
            let mut progress = false;
            // Why sending stopped, if it did: on a full socket (the reads below leave
            // libssh2's block direction at "inbound", so the wait must ask for "writable"
            // itself), or on the server's flow-control window, with how much was left of it.
            let mut send_blocked = false;
            let mut window_left = None;
            if !eof_sent {
                if in_pos == in_len && !in_done {
                    let reader = stdin.as_mut().expect("stdin present until done");
                    match reader.read(&mut inbuf) {
                        Ok(0) => in_done = true,
                        Ok(n) => (in_pos, in_len) = (0, n),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(source) => {
                            return Err(TransportError::Io {
                                what: "read command input".into(),
                                source,
                            })
                        }
                    }
                }
                if in_pos < in_len {
                    match channel.write(&inbuf[in_pos..in_len]) {
                        Ok(n) => {
                            in_pos += n;
                            progress |= n > 0;
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                            send_blocked = blocked_outbound(&self.session);
                            window_left = Some(channel.write_window().remaining);
                        }
                        // The command stopped reading (it exited or closed stdin): stop
                        // sending and collect its output and exit status.
                        Err(_) => eof_sent = true,
                    }
                } else if in_done && hold_stdin {
                    eof_sent = true;
                } else if in_done {
                    match channel.send_eof() {
                        Ok(()) => {
                            eof_sent = true;
                            progress = true;
                        }
                        Err(e) if e.code() == ErrorCode::Session(EAGAIN) => {
                            send_blocked = blocked_outbound(&self.session);
                        }
                        Err(e) => return Err(ssh_err("send end of input")(e)),
                    }
                }
            }
            match channel.read(&mut outbuf) {
                Ok(0) => {}
                Ok(n) => {
                    stdout
                        .write_all(&outbuf[..n])
                        .map_err(|source| TransportError::Io {
                            what: "write command output".into(),
                            source,
                        })?;
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(lost(e)),
            }
            match stderr.read(&mut outbuf) {
                Ok(0) => {}
                Ok(n) => {
                    tail.push(&outbuf[..n]);
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(lost(e)),
            }
            if channel.eof() {
                return Ok(());
            }
            // The reads may have taken in the server's window adjustment: then send again
            // at once. Waiting for more input instead would sleep until the timeout, as the
            // server has nothing more to say until it gets more data (seen: one host of 20
            // idle for 4 s of a 7 s upload).
            if window_left.is_some_and(|left| channel.write_window().remaining > left) {
                continue;
            }
            if progress {
                last_heard = Instant::now();
                continue;
            }
            let ready = wait_socket(&self.session, self.fd, send_blocked, self.alive.poll())
                .map_err(lost)?;
            if ready & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
                last_heard = Instant::now();
            } else {
                self.alive
                    .check(&self.session, self.fd, last_heard, &mut probes)?;
            }
        }
    }
}

impl Drop for SshTransport {
    fn drop(&mut self) {
        if !matches!(self.spare, Spare::Opening) {
            return;
        }
        // Its answer has usually come, with the last command's: taken, the spare is a
        // channel libssh2 closes properly. One still unanswered has no number from the
        // server, and libssh2 would close it as channel 0, which sshd answers by cutting
        // the connection and logging a protocol error: the connection is cut here first.
        match self.session.channel_session() {
            Ok(channel) => self.spare = Spare::Ready(channel),
            Err(e) if e.code() == ErrorCode::Session(EAGAIN) => {
                // SAFETY: shutdown on the session's own socket, which it keeps open.
                unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
            }
            Err(_) => self.spare = Spare::None,
        }
    }
}

impl Transport for SshTransport {
    fn exec_stdin(
        &mut self,
        script: &str,
        stdin: Stdin,
        stdout: &mut (dyn Write + Send),
    ) -> Result<ExecStatus, TransportError> {
        let (stdin, hold_stdin) = stdin.into_parts();
        let control = self.control_timeout();
        let mut channel = self.take_channel()?;
        // The login shell only starts /bin/sh with the script (see quote::sh_command).
        let command = crate::quote::sh_command(&super::live::script(script));
        let (session, fd) = (&self.session, self.fd);
        let started = send_request(session, fd, control, || channel.exec(&command))
            .map_err(self.control_err("start command"))?;
        // The spare's open request goes out with the command, and its answer comes back
        // while the command runs.
        self.start_spare();
        let (session, fd) = (&self.session, self.fd);
        if started.is_none() {
            nb(session, fd, control, || channel.exec(&command))
                .map_err(self.control_err("start command"))?;
        }
        let mut tail = TailBuffer::new(STDERR_TAIL, Some(&self.host));
        if let Err(e) = self.pump(&mut channel, stdin, hold_stdin, stdout, &mut tail) {
            let _ = nb(session, fd, Duration::from_secs(2), || channel.close());
            return Err(e);
        }
        nb(session, fd, control, || channel.wait_close())
            .map_err(self.control_err("wait for command"))?;
        let code = channel.exit_status().map_err(ssh_err("read exit status"))?;
        let signal = channel
            .exit_signal()
            .map_err(ssh_err("read exit signal"))?
            .exit_signal;
        Ok(ExecStatus {
            code: if signal.is_some() { None } else { Some(code) },
            signal,
            stderr: tail.into_inner(),
        })
    }
}

/// Asks the kernel to acknowledge received data at once. OpenSSH servers leave Nagle's
/// algorithm on for sessions without a tty, so a small packet that follows another waits
/// for the ACK of the first; a delayed ACK here stalls it about 40 ms (measured: the first
/// channel of a session took 45 ms instead of 3). Linux clears the flag as it goes, so it
/// is set again before every wait.
#[cfg(dp_linux)]
fn quickack(fd: RawFd) {
    let one: libc::c_int = 1;
    // SAFETY: setsockopt on the session's own socket with a valid int option.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_QUICKACK,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Elsewhere there is no such option (macOS and the BSDs acknowledge sooner anyway).
#[cfg(not(dp_linux))]
fn quickack(_fd: RawFd) {}

/// How long ago the socket last received data (not bare ACKs), from the kernel.
#[cfg(dp_linux)]
fn since_data_received(fd: RawFd) -> Option<Duration> {
    // SAFETY: tcp_info is plain old data; getsockopt fills at most `len` bytes of it.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        (rc == 0).then(|| Duration::from_millis(u64::from(info.tcpi_last_data_recv)))
    }
}

/// Elsewhere only what the pump itself saw counts.
#[cfg(not(dp_linux))]
fn since_data_received(_fd: RawFd) -> Option<Duration> {
    None
}

/// True when libssh2's last call stopped because the socket would not take more bytes.
fn blocked_outbound(session: &Session) -> bool {
    matches!(
        session.block_directions(),
        BlockDirections::Outbound | BlockDirections::Both
    )
}

/// Waits (at most `timeout`) until the socket is ready in the direction libssh2 is
/// blocked on, or also writable when `writable` is set. Returns what it is ready for
/// (poll's revents; 0 on timeout).
fn wait_socket(
    session: &Session,
    fd: RawFd,
    writable: bool,
    timeout: Duration,
) -> io::Result<libc::c_short> {
    quickack(fd);
    let mut events = match session.block_directions() {
        BlockDirections::Outbound => libc::POLLOUT,
        BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
        BlockDirections::Inbound | BlockDirections::None => libc::POLLIN,
    };
    if writable {
        events |= libc::POLLOUT;
    }
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: one valid pollfd for the session's socket, which the session keeps open.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(if rc > 0 { pfd.revents } else { 0 })
}

/// Runs a non-blocking libssh2 operation to completion, waiting on the socket while it
/// would block, until `timeout` passes without progress.
fn nb<T>(
    session: &Session,
    fd: RawFd,
    timeout: Duration,
    op: impl FnMut() -> Result<T, ssh2::Error>,
) -> Result<T, ssh2::Error> {
    drive(session, fd, timeout, false, op).map(|done| done.expect("driven to the end"))
}

/// Runs a non-blocking libssh2 request until it is on the wire: its result when it also
/// got its answer, None when only the answer is left (the operation is then called again
/// later to take it). Nothing else may be sent while a request is half sent.
fn send_request<T>(
    session: &Session,
    fd: RawFd,
    timeout: Duration,
    op: impl FnMut() -> Result<T, ssh2::Error>,
) -> Result<Option<T>, ssh2::Error> {
    drive(session, fd, timeout, true, op)
}

/// [`nb`], or with `until_sent` [`send_request`].
fn drive<T>(
    session: &Session,
    fd: RawFd,
    timeout: Duration,
    until_sent: bool,
    mut op: impl FnMut() -> Result<T, ssh2::Error>,
) -> Result<Option<T>, ssh2::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        match op() {
            Err(e) if e.code() == ErrorCode::Session(EAGAIN) => {
                if until_sent && !blocked_outbound(session) {
                    return Ok(None);
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Err(ssh2::Error::new(ErrorCode::Session(TIMEOUT), "timed out"));
                }
                let wait = left.min(Duration::from_secs(5));
                if let Err(io) = wait_socket(session, fd, until_sent, wait) {
                    return Err(ssh2::Error::new(ErrorCode::Session(-7), leak_message(io)));
                }
            }
            other => return other.map(Some),
        }
    }
}

/// ssh2 errors carry `&'static str` messages; socket errors here are rare and final.
fn leak_message(e: io::Error) -> &'static str {
    Box::leak(format!("socket error: {e}").into_boxed_str())
}

/// How long a control operation (channel open, exec request, close) may wait.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(60);

fn timeout_message(e: &ssh2::Error, timeout: Duration) -> String {
    if e.code() == ErrorCode::Session(TIMEOUT) {
        format!("timed out after {}", humantime::format_duration(timeout))
    } else {
        e.message().to_string()
    }
}

fn tcp_connect(host: &str, port: u16, timeout: Duration) -> Result<TcpStream, TransportError> {
    let display = format!("{host}:{port}");
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|source| TransportError::Resolve {
            addr: display.clone(),
            source,
        })?
        .collect();
    let started = Instant::now();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "no addresses");
    for addr in addrs {
        let remaining = timeout.saturating_sub(started.elapsed());
        if remaining.is_zero() {
            last = io::Error::new(io::ErrorKind::TimedOut, "connection timed out");
            break;
        }
        match connect_one(addr, remaining) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    if last.kind() == io::ErrorKind::WouldBlock || last.kind() == io::ErrorKind::TimedOut {
        last = io::Error::new(
            io::ErrorKind::TimedOut,
            format!("timed out after {}", humantime::format_duration(timeout)),
        );
    }
    Err(TransportError::Connect {
        addr: display,
        source: last,
    })
}

fn connect_one(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_nodelay(true)?;
    socket.set_tcp_keepalive(
        &TcpKeepalive::new()
            .with_time(Duration::from_secs(15))
            .with_interval(Duration::from_secs(5))
            .with_retries(3),
    )?;
    socket.connect_timeout(&addr.into(), timeout)?;
    Ok(socket.into())
}

fn authenticate(
    session: &Session,
    fd: RawFd,
    timeout: Duration,
    user: &str,
    identity: Option<&PathBuf>,
) -> Result<(), TransportError> {
    let mut tried = Vec::new();
    if std::env::var_os("SSH_AUTH_SOCK").is_some() {
        // The agent protocol is driven by ssh2 itself, which needs a blocking session.
        session.set_blocking(true);
        session.set_timeout(timeout.as_millis().min(u32::MAX as u128) as u32);
        let ok = session.userauth_agent(user).is_ok() && session.authenticated();
        session.set_timeout(0);
        session.set_blocking(false);
        if ok {
            return Ok(());
        }
        tried.push("ssh-agent".to_string());
    }
    let candidates: Vec<PathBuf> = match identity {
        Some(path) => vec![path.clone()],
        None => ["id_ed25519", "id_ecdsa", "id_rsa"]
            .iter()
            .map(|name| home().join(".ssh").join(name))
            .filter(|p| p.exists())
            .collect(),
    };
    // Keys that need no passphrase first: no question when one of them is let in. Each
    // file is read once for this.
    let mut candidates: Vec<(bool, PathBuf)> = candidates
        .into_iter()
        .map(|key| (passphrase::is_encrypted(&key), key))
        .collect();
    candidates.sort_by_key(|(encrypted, _)| *encrypted);
    for (encrypted, key) in candidates {
        let unlocked = if encrypted {
            match passphrase::unlock(&key) {
                Ok(u) => Some(u),
                Err(why) => {
                    tried.push(format!("{} ({why})", key.display()));
                    continue;
                }
            }
        } else {
            None
        };
        let passphrase = match unlocked.as_deref() {
            Some(Unlocked::Passphrase(p)) => Some(p.expose()),
            _ => None,
        };
        match nb(session, fd, timeout, || {
            passphrase::userauth(session, user, &key, unlocked.as_deref())
        }) {
            Ok(()) if session.authenticated() => return Ok(()),
            Ok(()) => tried.push(key.display().to_string()),
            // libssh2 reads a wrong passphrase as an unknown key format; say which it is.
            Err(e)
                if passphrase.is_some() && e.code() == ErrorCode::Session(LIBSSH2_ERROR_FILE) =>
            {
                tried.push(format!(
                    "{} (wrong passphrase? the key did not open with it: {})",
                    key.display(),
                    e.message()
                ))
            }
            Err(e) => tried.push(format!("{} ({})", key.display(), e.message())),
        }
    }
    if tried.is_empty() {
        tried.push("no ssh-agent and no key in ~/.ssh/id_{ed25519,ecdsa,rsa}".into());
    }
    Err(TransportError::Auth {
        user: user.to_string(),
        tried: tried.join(", "),
    })
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/"))
}

/// The local user's name: `$USER`, else the password database.
pub fn local_user() -> String {
    if let Some(u) = std::env::var_os("USER").filter(|u| !u.is_empty()) {
        return u.to_string_lossy().into_owned();
    }
    // getpwuid_r, not getpwuid: hosts are handled on parallel threads.
    let mut buf = vec![0u8; 4096];
    // SAFETY: passwd is plain old data; getpwuid_r writes it and the strings it points to
    // into `buf` (of the given length), and `found` is null or points to `pw`.
    unsafe {
        let mut pw: libc::passwd = std::mem::zeroed();
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = libc::getpwuid_r(
            libc::geteuid(),
            &mut pw,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut found,
        );
        if rc == 0 && !found.is_null() && !pw.pw_name.is_null() {
            return std::ffi::CStr::from_ptr(pw.pw_name)
                .to_string_lossy()
                .into_owned();
        }
    }
    "root".to_string()
}
