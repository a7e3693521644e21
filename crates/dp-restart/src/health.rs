//! Health checks: an HTTP GET from the deploying machine, or a command on the host,
//! polled until it succeeds or the timeout passes. With an expected answer (templated,
//! such as `ok {release}`), success also needs the answer to contain it: an old worker,
//! or another process on the port, does not pass for the new release.

use dp_core::layout::Script;
use dp_core::quote::QuoteError;
use dp_core::template::{render, Escape};
use dp_core::transport::Transport;
use dp_core::Record;
use std::time::{Duration, Instant};

/// A health check template.
#[derive(Debug, Clone)]
pub enum Health {
    /// GET this URL (templated); a 2xx answer is healthy (whose body has the expected
    /// text, when there is one).
    Url(String),
    /// Run this command (templated) in `current` on the host; exit 0 is healthy (with the
    /// expected text in its output, when there is one).
    Command(String),
}

/// How much of a failed health check's last answer its error shows (characters).
const BODY_SHOWN: usize = 200;

/// "STATUS TEXT: BODY" for an answer that is not a pass, with the body's first
/// [`BODY_SHOWN`] characters (what the app said about why).
fn answer(code: u16, r: ureq::Response) -> String {
    let status = format!("{code} {}", r.status_text());
    let mut body = String::new();
    let _ = std::io::Read::read_to_string(
        &mut std::io::Read::take(r.into_reader(), BODY_SHOWN as u64 * 4),
        &mut body,
    );
    shown(status, &body)
}

/// A health check made ready for one host and release: rendered, with its HTTP agent.
struct Check<'a> {
    health: &'a Health,
    /// The rendered URL or command.
    target: String,
    expect: Option<String>,
    agent: Option<ureq::Agent>,
    record: &'a Record,
    release: &'a str,
    previous: Option<&'a str>,
}

impl<'a> Check<'a> {
    fn new(
        health: &'a Health,
        record: &'a Record,
        (release, previous): (&'a str, Option<&'a str>),
        expect: Option<&str>,
    ) -> Result<Check<'a>, String> {
        let expect = match expect {
            Some(t) => Some(render(t, record, release, Escape::Text).map_err(|e| e.to_string())?),
            None => None,
        };
        let (target, agent) = match health {
            Health::Url(t) => {
                let url = render(t, record, release, Escape::Url).map_err(|e| e.to_string())?;
                let mut agent = ureq::AgentBuilder::new()
                    .timeout_connect(Duration::from_secs(2))
                    .timeout(Duration::from_secs(5))
                    .redirects(0);
                if url.starts_with("https:") {
                    // The system's roots (SSL_CERT_FILE and SSL_CERT_DIR are honoured).
                    let tls = native_tls::TlsConnector::new()
                        .map_err(|e| format!("health check {url}: TLS: {e}"))?;
                    agent = agent.tls_connector(std::sync::Arc::new(tls));
                }
                (url, Some(agent.build()))
            }
            Health::Command(t) => (
                render(t, record, release, Escape::Shell).map_err(|e| e.to_string())?,
                None,
            ),
        };
        Ok(Check {
            health,
            target,
            expect,
            agent,
            record,
            release,
            previous,
        })
    }

    /// What the answer lacked, if it lacked the expected text.
    fn lacks(&self, answer: &str) -> Option<String> {
        let want = self.expect.as_deref()?;
        (!answer.contains(want)).then(|| {
            let shown: String = answer.trim().chars().take(BODY_SHOWN).collect();
            format!("the answer does not contain {want:?} (an old worker, or another process on the port?): {shown:?}")
        })
    }

    /// One try, which may take `left` (a command's deadline): Ok with the answer when
    /// healthy, else Err with it (the status and the body's first characters, the
    /// command's exit and output, or the connection error).
    fn once(&self, conn: &mut dyn Transport, left: Duration) -> Result<String, String> {
        match (self.health, &self.agent) {
            (Health::Url(_), Some(agent)) => match agent.get(&self.target).call() {
                Ok(r) if (200..300).contains(&r.status()) => {
                    let status = format!("{} {}", r.status(), r.status_text());
                    match r.into_string() {
                        Ok(body) => match self.lacks(&body) {
                            None => Ok(shown(status, &body)),
                            Some(why) => Err(format!("{status}, but {why}")),
                        },
                        Err(e) => Err(format!("{status}, but reading the body: {e}")),
                    }
                }
                Ok(r) => Err(answer(r.status(), r)),
                Err(ureq::Error::Status(code, r)) => Err(answer(code, r)),
                Err(e) => Err(e.to_string()),
            },
            _ => {
                let root = self.record.root.clone().unwrap_or_default();
                let script = || -> Result<String, QuoteError> {
                    let mut s = Script::new(&root)?;
                    s.set("release", self.release)?
                        .set("previous", self.previous.unwrap_or(""))?
                        .set("cmd", &self.target)?
                        .num("secs", left.as_secs().max(1))
                        .push(dp_core::sh_file!("sh/health.sh"));
                    Ok(s.into_string())
                };
                let script = script().map_err(|e| e.to_string())?;
                match conn.run_held(&script) {
                    // The command's output reaches here as its stderr (see dp_deadline).
                    Ok(out) if out.status.success() => {
                        let said = String::from_utf8_lossy(&out.status.stderr).into_owned();
                        match self.lacks(&said) {
                            None => Ok(shown("exit 0".into(), &said)),
                            Some(why) => Err(format!("it exited 0, but {why}")),
                        }
                    }
                    Ok(out) => Err(out
                        .status
                        .check("")
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default()
                        .trim_start_matches(" failed ")
                        .to_string()),
                    Err(e) => Err(e.to_string()),
                }
            }
        }
    }

    /// The check as its error names it.
    fn name(&self) -> String {
        match self.health {
            Health::Url(_) => self.target.clone(),
            Health::Command(t) => format!("`{t}`"),
        }
    }
}

/// "STATUS: BODY" with the body's first [`BODY_SHOWN`] characters (none when empty).
fn shown(status: String, body: &str) -> String {
    let body: String = body.trim().chars().take(BODY_SHOWN).collect();
    if body.is_empty() {
        status
    } else {
        format!("{status}: {body:?}")
    }
}

impl Health {
    /// Polls until healthy or `timeout` after `started` (the check may have had a first
    /// try before); the error names the check and the last answer. With `expect`, the
    /// answer (the body, or the command's output) must contain it. A health command gets
    /// `DP_RELEASE` (`release`), `DP_PREVIOUS_RELEASE` (`previous`) and `DP_ROOT` in its
    /// environment.
    pub fn wait(
        &self,
        conn: &mut dyn Transport,
        record: &Record,
        releases: (&str, Option<&str>),
        (started, timeout): (Instant, Duration),
        expect: Option<&str>,
    ) -> Result<(), String> {
        let check = Check::new(self, record, releases, expect)?;
        let pause = match self {
            Health::Url(_) => Duration::from_millis(100),
            Health::Command(_) => Duration::from_millis(200),
        };
        loop {
            // Each try may take what is left of the health timeout, no more.
            let left = timeout.saturating_sub(started.elapsed());
            let last = match check.once(conn, left) {
                Ok(_) => return Ok(()),
                Err(last) => last,
            };
            if started.elapsed() >= timeout {
                return Err(format!(
                    "health check {} failed after {}: {last}",
                    check.name(),
                    humantime::format_duration(timeout)
                ));
            }
            std::thread::sleep(pause);
        }
    }

    /// One try now (`dp status`): whether it passed, and the answer (status and the first
    /// characters of the body; the command's exit and output; or the connection error).
    pub fn probe(
        &self,
        conn: &mut dyn Transport,
        record: &Record,
        releases: (&str, Option<&str>),
        expect: Option<&str>,
        timeout: Duration,
    ) -> (bool, String) {
        match Check::new(self, record, releases, expect).and_then(|c| c.once(conn, timeout)) {
            Ok(answer) => (true, answer),
            Err(answer) => (false, answer),
        }
    }
}
