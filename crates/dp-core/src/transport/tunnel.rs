//! A local TCP port forwarded through an SSH host (direct-tcpip), so a database that only
//! the app servers can see is reachable from the deploying machine.
//!
//! One thread serves every connection of the tunnel: it polls the listener, the local
//! sockets and the session's socket, and moves bytes both ways without blocking, so the
//! single libssh2 session is only ever used from that thread.

use super::ssh::SshTransport;
use super::TransportError;
use ssh2::Channel;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A forwarded local port; closed when dropped.
pub struct Tunnel {
    /// The local port (on 127.0.0.1).
    pub port: u16,
    stop: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
    thread: Option<JoinHandle<()>>,
}

struct Pipe {
    tcp: TcpStream,
    channel: Channel,
    to_channel: Vec<u8>,
    to_tcp: Vec<u8>,
    tcp_eof: bool,
    channel_eof: bool,
    eof_sent: bool,
    broken: bool,
}

impl Tunnel {
    /// Listens on 127.0.0.1 (a free port) and forwards each connection to
    /// `remote_host:remote_port` as seen from the SSH host.
    pub fn open(
        ssh: SshTransport,
        remote_host: &str,
        remote_port: u16,
    ) -> Result<Tunnel, TransportError> {
        let io = |what: &str| {
            let what = what.to_string();
            move |source| TransportError::Io { what, source }
        };
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io("listen for the tunnel"))?;
        listener
            .set_nonblocking(true)
            .map_err(io("listen for the tunnel"))?;
        let port = listener
            .local_addr()
            .map_err(io("listen for the tunnel"))?
            .port();
        let stop = Arc::new(AtomicBool::new(false));
        let bytes = Arc::new(AtomicU64::new(0));
        let (flag, counter) = (stop.clone(), bytes.clone());
        let host = remote_host.to_string();
        let thread = std::thread::Builder::new()
            .name("dp-tunnel".into())
            .spawn(move || serve(ssh, listener, &host, remote_port, &flag, &counter))
            .map_err(io("start the tunnel"))?;
        Ok(Tunnel {
            port,
            stop,
            bytes,
            thread: Some(thread),
        })
    }

    /// Bytes carried so far, both directions.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::SeqCst)
    }
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

fn serve(
    mut ssh: SshTransport,
    listener: TcpListener,
    host: &str,
    port: u16,
    stop: &AtomicBool,
    bytes: &AtomicU64,
) {
    let mut pipes: Vec<Pipe> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::SeqCst) {
        let mut progress = false;
        while let Ok((tcp, _)) = listener.accept() {
            progress = true;
            let _ = tcp.set_nodelay(true);
            if tcp.set_nonblocking(true).is_err() {
                continue;
            }
            if let Ok(channel) = ssh.direct_tcpip(host, port) {
                pipes.push(Pipe {
                    tcp,
                    channel,
                    to_channel: Vec::new(),
                    to_tcp: Vec::new(),
                    tcp_eof: false,
                    channel_eof: false,
                    eof_sent: false,
                    broken: false,
                });
            }
        }
        for p in &mut pipes {
            let (delivered, moved) = pump(p, &mut buf);
            bytes.fetch_add(delivered, Ordering::SeqCst);
            progress |= moved;
        }
        pipes.retain_mut(|p| {
            let done = p.broken
                || (p.tcp_eof && p.channel_eof && p.to_tcp.is_empty() && p.to_channel.is_empty());
            if done {
                let _ = p.channel.close();
                let _ = p.tcp.shutdown(Shutdown::Both);
            }
            !done
        });
        if !progress {
            wait(&ssh, &listener, &pipes);
        }
    }
}

/// Moves what it can in both directions; returns the bytes delivered and whether
/// anything happened at all.
fn pump(p: &mut Pipe, buf: &mut [u8]) -> (u64, bool) {
    let mut moved = 0u64;
    let mut read = false;
    if p.to_channel.is_empty() && !p.tcp_eof {
        match p.tcp.read(buf) {
            Ok(0) => p.tcp_eof = true,
            Ok(n) => {
                p.to_channel.extend_from_slice(&buf[..n]);
                read = true;
            }
            Err(e) if would_block(&e) => {}
            Err(_) => p.broken = true,
        }
    }
    if !p.to_channel.is_empty() {
        match p.channel.write(&p.to_channel) {
            Ok(n) => {
                p.to_channel.drain(..n);
                moved += n as u64;
            }
            Err(e) if would_block(&e) => {}
            Err(_) => p.broken = true,
        }
    } else if p.tcp_eof && !p.eof_sent && p.channel.send_eof().is_ok() {
        p.eof_sent = true;
    }
    if p.to_tcp.is_empty() && !p.channel_eof {
        match p.channel.read(buf) {
            Ok(0) => {
                if p.channel.eof() {
                    p.channel_eof = true;
                    let _ = p.tcp.shutdown(Shutdown::Write);
                }
            }
            Ok(n) => {
                p.to_tcp.extend_from_slice(&buf[..n]);
                read = true;
            }
            Err(e) if would_block(&e) => {}
            Err(_) => p.broken = true,
        }
    }
    if !p.to_tcp.is_empty() {
        match p.tcp.write(&p.to_tcp) {
            Ok(n) => {
                p.to_tcp.drain(..n);
                moved += n as u64;
            }
            Err(e) if would_block(&e) => {}
            Err(_) => p.broken = true,
        }
    }
    (moved, read || moved > 0)
}

fn wait(ssh: &SshTransport, listener: &TcpListener, pipes: &[Pipe]) {
    let mut fds = vec![
        libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: ssh.fd(),
            events: match ssh.session().block_directions() {
                ssh2::BlockDirections::Outbound => libc::POLLOUT,
                ssh2::BlockDirections::Both => libc::POLLIN | libc::POLLOUT,
                _ => libc::POLLIN,
            },
            revents: 0,
        },
    ];
    for p in pipes {
        let mut events = 0;
        if p.to_channel.is_empty() && !p.tcp_eof {
            events |= libc::POLLIN;
        }
        if !p.to_tcp.is_empty() {
            events |= libc::POLLOUT;
        }
        fds.push(libc::pollfd {
            fd: p.tcp.as_raw_fd(),
            events,
            revents: 0,
        });
    }
    // Short timeout: libssh2 may hold decrypted data that poll cannot see.
    // SAFETY: `fds` is a valid array of pollfd for sockets that outlive this call.
    unsafe {
        libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 20);
    }
}
