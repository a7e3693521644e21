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
    let body: String = body.trim().chars().take(BODY_SHOWN).collect();
    if body.is_empty() {
        status
    } else {
        format!("{status}: {body:?}")
    }
}

impl Health {
    /// Polls until healthy or `timeout`; the error names the check and the last answer.
    /// With `expect`, the answer (the body, or the command's output) must contain it.
    /// A health command gets `DP_RELEASE` (`release`), `DP_PREVIOUS_RELEASE` (`previous`)
    /// and `DP_ROOT` in its environment.
    pub fn wait(
        &self,
        conn: &mut dyn Transport,
        record: &Record,
        (release, previous): (&str, Option<&str>),
        timeout: Duration,
        expect: Option<&str>,
    ) -> Result<(), String> {
        let started = Instant::now();
        let mut last: String;
        let expect = match expect {
            Some(t) => Some(render(t, record, release, Escape::Text).map_err(|e| e.to_string())?),
            None => None,
        };
        // What the answer lacked, if it lacked the expected text.
        let lacks = |answer: &str| -> Option<String> {
            let want = expect.as_deref()?;
            (!answer.contains(want)).then(|| {
                let shown: String = answer.trim().chars().take(BODY_SHOWN).collect();
                format!("the answer does not contain {want:?} (an old worker, or another process on the port?): {shown:?}")
            })
        };
        match self {
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
                let agent = agent.build();
                loop {
                    match agent.get(&url).call() {
                        Ok(r) if (200..300).contains(&r.status()) => {
                            let status = format!("{} {}", r.status(), r.status_text());
                            match r.into_string() {
                                Ok(body) => match lacks(&body) {
                                    None => return Ok(()),
                                    Some(why) => last = format!("{status}, but {why}"),
                                },
                                Err(e) => last = format!("{status}, but reading the body: {e}"),
                            }
                        }
                        Ok(r) => last = answer(r.status(), r),
                        Err(ureq::Error::Status(code, r)) => last = answer(code, r),
                        Err(e) => last = e.to_string(),
                    }
                    if started.elapsed() >= timeout {
                        return Err(format!(
                            "health check {url} failed after {}: {last}",
                            humantime::format_duration(timeout)
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
            Health::Command(t) => {
                let cmd = render(t, record, release, Escape::Shell).map_err(|e| e.to_string())?;
                let root = record.root.clone().unwrap_or_default();
                loop {
                    // Each try may take what is left of the health timeout, no more.
                    let left = timeout.saturating_sub(started.elapsed()).as_secs().max(1);
                    let script = || -> Result<String, QuoteError> {
                        let mut s = Script::new(&root)?;
                        s.set("release", release)?
                            .set("previous", previous.unwrap_or(""))?
                            .set("cmd", &cmd)?
                            .num("secs", left)
                            .push(dp_core::sh_file!("sh/health.sh"));
                        Ok(s.into_string())
                    };
                    let script = script().map_err(|e| e.to_string())?;
                    match conn.run_held(&script) {
                        // The command's output reaches here as its stderr (see dp_deadline).
                        Ok(out) if out.status.success() => {
                            match lacks(&String::from_utf8_lossy(&out.status.stderr)) {
                                None => return Ok(()),
                                Some(why) => last = format!("it exited 0, but {why}"),
                            }
                        }
                        Ok(out) => {
                            last = out
                                .status
                                .check("")
                                .err()
                                .map(|e| e.to_string())
                                .unwrap_or_default()
                        }
                        Err(e) => last = e.to_string(),
                    }
                    if started.elapsed() >= timeout {
                        return Err(format!(
                            "health check `{t}` failed after {}: {}",
                            humantime::format_duration(timeout),
                            last.trim_start_matches(" failed ")
                        ));
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
    }
}
