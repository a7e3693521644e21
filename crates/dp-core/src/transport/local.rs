//! The local transport: scripts run under `sh -c` on this machine.

use super::{ExecStatus, Stdin, TailBuffer, Transport, TransportError, STDERR_TAIL};
use std::io::{self, Read, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};

/// Runs scripts on this machine.
#[derive(Debug, Default)]
pub struct LocalTransport {
    /// The host's name, for live output.
    host: Option<String>,
}

impl LocalTransport {
    /// A local transport.
    pub fn new() -> Self {
        LocalTransport::default()
    }

    /// A local transport for the host named `host` (in live output).
    pub fn for_host(host: &str) -> Self {
        LocalTransport {
            host: Some(host.to_string()),
        }
    }
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> TransportError + '_ {
    move |source| TransportError::Io {
        what: what.to_string(),
        source,
    }
}

impl Transport for LocalTransport {
    /// With [`Stdin::Held`], the script's stdin is a pipe this process keeps open until
    /// the script ends (it closes when this process dies).
    fn exec_stdin(
        &mut self,
        script: &str,
        stdin: Stdin,
        stdout: &mut (dyn Write + Send),
    ) -> Result<ExecStatus, TransportError> {
        let (stdin, hold_stdin) = stdin.into_parts();
        // A process group of its own: Ctrl-C at the terminal reaches dp, which decides
        // what stops, not the script in the middle of a switch.
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(&*super::live::script(script))
            .process_group(0)
            .stdin(if stdin.is_some() || hold_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io_err("start sh"))?;
        let mut child_in = child.stdin.take();
        let held = if hold_stdin && stdin.is_none() {
            child_in.take()
        } else {
            None
        };
        let mut child_out = child.stdout.take().expect("piped stdout");
        let mut child_err = child.stderr.take().expect("piped stderr");
        let done = std::sync::atomic::AtomicBool::new(false);
        let (fed, tail, copied) = std::thread::scope(|s| {
            let feeder = s.spawn(move || -> io::Result<Option<std::process::ChildStdin>> {
                if let (Some(input), Some(mut pipe)) = (stdin, child_in) {
                    match io::copy(input, &mut pipe) {
                        // The command may stop reading early; that is its business.
                        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
                        other => {
                            other?;
                        }
                    }
                    // Held after the input: open until the command ends.
                    return Ok(hold_stdin.then_some(pipe));
                }
                Ok(None)
            });
            let host = self.host.as_deref();
            let errors = s.spawn(move || {
                let mut tail = TailBuffer::new(STDERR_TAIL, host);
                let mut buf = [0u8; 8192];
                while let Ok(n) = child_err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    tail.push(&buf[..n]);
                }
                tail.into_inner()
            });
            // A held stdin closes when dp is interrupted, as an SSH channel does: the
            // script sees dp go (and `dp logs -f` ends on the first Ctrl-C).
            let done = &done;
            let watcher = held.map(|pipe| {
                s.spawn(move || {
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        if crate::interrupt::should_stop() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    drop(pipe);
                })
            });
            let copied = io::copy(&mut child_out, stdout);
            drop(child_out);
            let fed = feeder.join().unwrap_or(Ok(None));
            let tail = errors.join().unwrap_or_default();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            if let Some(w) = watcher {
                let _ = w.join();
            }
            (fed, tail, copied)
        });
        let status = child.wait().map_err(io_err("wait for sh"))?;
        copied.map_err(io_err("write command output"))?;
        fed.map_err(io_err("read command input"))?;
        Ok(ExecStatus {
            code: status.code(),
            signal: status.signal().map(|s| s.to_string()),
            stderr: tail,
        })
    }
}
