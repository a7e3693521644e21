//! The other `dp` commands: setup, status, unlock, history, rollback. Each runs one
//! script per host, in parallel, and returns one JSON-able value per host.

use dp_core::layout::{root_of, Script};
use dp_core::parallel::Sessions;
use dp_core::quote::QuoteError;

use dp_core::transport::Transport;
use dp_core::Record;
use dp_restart::Health;
use serde_json::{json, Value};
use std::time::Duration;

fn run_script(
    records: &mut [Record],
    jobs: usize,
    step: &str,
    body: impl Fn(&mut Script) -> Result<(), QuoteError> + Sync,
) -> Vec<Result<String, String>> {
    run_script_then(records, jobs, step, body, |_, _, text| Ok(text))
}

/// [`run_script`], then `then` in the same session with what the script printed.
fn run_script_then<T: Send>(
    records: &mut [Record],
    jobs: usize,
    step: &str,
    body: impl Fn(&mut Script) -> Result<(), QuoteError> + Sync,
    then: impl Fn(&mut dyn Transport, &Record, String) -> Result<T, String> + Sync,
) -> Vec<Result<T, String>> {
    let all: Vec<usize> = (0..records.len()).collect();
    let results = Sessions::new().run_indices(records, &all, jobs, |conn, record| {
        let mut script = Script::new(root_of(record)?).map_err(|e| e.to_string())?;
        body(&mut script).map_err(|e| e.to_string())?;
        let script = script.into_string();
        let out = conn.run(&script).map_err(|e| e.to_string())?;
        out.status.check(step).map_err(|e| e.to_string())?;
        then(
            conn,
            record,
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    });
    for (r, res) in records.iter_mut().zip(&results) {
        if let Err(e) = res {
            r.fail(step, e.clone());
        }
    }
    results
}

/// `dp setup`: create the layout, check prerequisites and that the root is writable.
/// Idempotent; says what it did per host. `extra_tools` are what the dependency kind
/// needs (the Python interpreter for pip; node and npm).
pub fn setup(records: &mut [Record], jobs: usize, extra_tools: &[&str]) {
    let results = run_script(records, jobs, "setup", |s| {
        let tools: Result<Vec<String>, _> = extra_tools
            .iter()
            .map(|t| dp_core::quote::quote_str(t))
            .collect();
        s.set("tools", &tools?.join(" "))?
            .push(dp_core::sh_file!("sh/setup.sh"))
            .push(&dp_core::layout::host_check_sh(true))
            .push("echo ok\n");
        Ok(())
    });
    for (r, res) in records.iter_mut().zip(results) {
        if let Ok(text) = res {
            let created: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("created "))
                .collect();
            r.set_step("setup", json!({ "created": created, "ready": true }));
        }
    }
}

/// A health check to try once per host (`dp status`), with its expected text.
pub struct HealthNow<'a> {
    /// The check.
    pub health: &'a Health,
    /// `health_expect`.
    pub expect: Option<&'a str>,
}

/// `dp status`: current release, previous live release (where `dp rollback` would go),
/// the lock holder, the releases on disk; with `health`, the health check's answer now
/// (on hosts with a current release, in the same session).
pub fn status(records: &mut [Record], jobs: usize, health: Option<HealthNow>) {
    let results = run_script_then(
        records,
        jobs,
        "status",
        |s| {
            s.push(dp_core::sh_file!("sh/status.sh"));
            Ok(())
        },
        |conn, record, text| {
            let current = text
                .lines()
                .find_map(|l| l.strip_prefix("current "))
                .filter(|c| !c.is_empty());
            let answer = match (&health, current) {
                (Some(h), Some(current)) => {
                    let (ok, answer) = h.health.probe(
                        conn,
                        record,
                        (current, None),
                        h.expect,
                        Duration::from_secs(10),
                    );
                    Some(json!({ "ok": ok, "answer": answer }))
                }
                _ => None,
            };
            Ok((text, answer))
        },
    );
    for (r, res) in records.iter_mut().zip(results) {
        let Ok((text, health)) = res else { continue };
        let mut v = json!({ "current": null, "previous": null, "lock": null, "releases": [] });
        for line in text.lines() {
            if let Some(c) = line.strip_prefix("current ") {
                v["current"] = json!(Some(c).filter(|c| !c.is_empty()));
            } else if let Some(t) = line.strip_prefix("since ") {
                // When `current` was switched (seconds since the epoch, the host's clock).
                v["current_since"] = json!(t.trim().parse::<u64>().ok());
            } else if let Some(l) = line.strip_prefix("lock ") {
                v["lock"] = serde_json::from_str(l).unwrap_or(json!(l));
            } else if let Some(p) = line.strip_prefix("previous ") {
                // What `dp rollback` would return to.
                v["previous"] = json!(Some(p).filter(|p| !p.is_empty()));
            } else if let Some(rel) = line.strip_prefix("release ") {
                v["releases"]
                    .as_array_mut()
                    .expect("array")
                    .push(json!(rel));
            }
        }
        if let Some(h) = health {
            v["health"] = h;
        }
        r.set_step("status", v);
    }
    // Drift: hosts not on the release most hosts run.
    let currents: Vec<Option<String>> = records
        .iter()
        .map(|r| {
            r.steps
                .get("status")
                .and_then(|s| s["current"].as_str())
                .map(str::to_string)
        })
        .collect();
    let mut counts: Vec<(Option<String>, usize)> = Vec::new();
    for c in &currents {
        match counts.iter_mut().find(|(k, _)| k == c) {
            Some((_, n)) => *n += 1,
            None => counts.push((c.clone(), 1)),
        }
    }
    let majority = counts
        .iter()
        .max_by_key(|(_, n)| *n)
        .and_then(|(k, _)| k.clone());
    for (r, c) in records.iter_mut().zip(currents) {
        if let Some(Value::Object(s)) = r.steps.get_mut("status") {
            s.insert("drift".into(), json!(c != majority));
        }
    }
}

/// `dp unlock`: remove the deploy lock, showing who held it.
pub fn unlock(records: &mut [Record], jobs: usize) {
    let results = run_script(records, jobs, "unlock", |s| {
        s.push(dp_core::sh_file!("sh/unlock.sh"));
        Ok(())
    });
    for (r, res) in records.iter_mut().zip(results) {
        let Ok(text) = res else { continue };
        let held = text
            .lines()
            .find_map(|l| l.strip_prefix("held "))
            .map(|l| serde_json::from_str::<Value>(l).unwrap_or(json!(l)));
        r.set_step(
            "unlock",
            json!({ "removed": held.is_some(), "holder": held }),
        );
    }
}

/// `dp history`: every host's history lines, merged, newest first.
pub fn history(records: &mut [Record], jobs: usize, limit: usize) -> Vec<Value> {
    let n = limit.max(1);
    let results = run_script(records, jobs, "history", |s| {
        s.num("n", n).push(dp_core::sh_file!("sh/history.sh"));
        Ok(())
    });
    // (time, position in its file, entry): later lines of one file are newer.
    let mut all: Vec<(String, usize, Value)> = Vec::new();
    for (r, res) in records.iter().zip(results) {
        let Ok(text) = res else { continue };
        for (i, line) in text.lines().enumerate() {
            if let Ok(mut v) = serde_json::from_str::<Value>(line) {
                v["host"] = json!(r.host);
                all.push((v["time"].as_str().unwrap_or_default().to_string(), i, v));
            }
        }
    }
    all.sort_by(|a, b| (&b.0, b.1).cmp(&(&a.0, a.1)));
    all.into_iter().take(limit).map(|(_, _, v)| v).collect()
}

/// `dp logs`: the last `lines` lines of the app log (`template`, rendered per host with
/// `{release}` as `current`) on every host, each line passed to `show` with its host as it
/// arrives; with `follow`, new lines too, until dp is interrupted (Ctrl-C). A host that
/// cannot be read fails in step `logs`.
pub fn logs(
    records: &mut [Record],
    jobs: usize,
    template: &str,
    lines: usize,
    follow: bool,
    show: &(dyn Fn(&str, &str) + Sync),
) {
    let results = run_streamed(records, jobs, show, |record| {
        let path =
            dp_core::template::render(template, record, "current", dp_core::template::Escape::Text)
                .map_err(|e| e.to_string())?;
        let mut s = Script::new(root_of(record)?).map_err(|e| e.to_string())?;
        s.set("log", &path)
            .map_err(|e| e.to_string())?
            .num("lines", lines)
            .set("follow", if follow { "1" } else { "" })
            .map_err(|e| e.to_string())?
            .push(dp_core::sh_file!("sh/logs.sh"));
        Ok(s.into_string())
    });
    for (r, res) in records.iter_mut().zip(results) {
        let checked = res.and_then(|status| {
            status
                .check("reading the app log")
                .map_err(|e| e.to_string())
        });
        if let Err(e) = checked {
            r.fail("logs", e);
        }
    }
}

/// Runs the script `script` makes for each host (all at once, at most `jobs`), with its
/// stdin held (it ends when dp goes), passing each line of its stdout to `show` with the
/// host as it arrives. The exit status of each, or why it could not run.
fn run_streamed(
    records: &mut [Record],
    jobs: usize,
    show: &(dyn Fn(&str, &str) + Sync),
    script: impl Fn(&Record) -> Result<String, String> + Sync,
) -> Vec<Result<dp_core::transport::ExecStatus, String>> {
    let all: Vec<usize> = (0..records.len()).collect();
    Sessions::new().run_indices(records, &all, jobs, |conn, record| {
        let script = script(record)?;
        let mut out = Lines {
            host: &record.host,
            show,
            partial: Vec::new(),
        };
        let status = conn
            .exec_held(&script, &mut out)
            .map_err(|e| e.to_string())?;
        out.flush_partial();
        Ok(status)
    })
}

/// Splits what a host sends into lines for `show`.
struct Lines<'a> {
    host: &'a str,
    show: &'a (dyn Fn(&str, &str) + Sync),
    partial: Vec<u8>,
}

impl Lines<'_> {
    fn flush_partial(&mut self) {
        if !self.partial.is_empty() {
            (self.show)(self.host, &String::from_utf8_lossy(&self.partial));
            self.partial.clear();
        }
    }
}

impl std::io::Write for Lines<'_> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.partial.extend_from_slice(data);
        while let Some(at) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=at).collect();
            (self.show)(self.host, String::from_utf8_lossy(&line[..at]).as_ref());
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `dp exec CMD`: runs `command` (rendered per host: `{host}`, `{root}`, its vars, with
/// `{release}` as `current`) in the release `current` points to on every host, at most
/// `jobs` at once, under `timeout`; each line of its output goes to `show` with its host.
/// `steps.exec.status` is the command's exit status; a host where it fails, or that has
/// no live release, fails in step `exec`.
pub fn exec(
    records: &mut [Record],
    jobs: usize,
    command: &str,
    timeout: std::time::Duration,
    show: &(dyn Fn(&str, &str) + Sync),
) {
    let results = run_streamed(records, jobs, show, |record| {
        let cmd =
            dp_core::template::render(command, record, "current", dp_core::template::Escape::Shell)
                .map_err(|e| e.to_string())?;
        let mut s = Script::new(root_of(record)?).map_err(|e| e.to_string())?;
        s.set("cmd", &cmd)
            .map_err(|e| e.to_string())?
            .num("secs", timeout.as_secs().max(1))
            .push(dp_core::sh_file!("sh/exec.sh"));
        Ok(s.into_string())
    });
    for (r, res) in records.iter_mut().zip(results) {
        match res {
            Ok(status) => {
                r.set_step("exec", json!({ "status": status.code }));
                let stderr = String::from_utf8_lossy(&status.stderr).trim().to_string();
                match status.code {
                    Some(0) => {}
                    Some(3) if stderr.contains("no release is live") => r.fail("exec", stderr),
                    _ => r.fail(
                        "exec",
                        status
                            .check("the command")
                            .err()
                            .map(|e| e.to_string())
                            .unwrap_or_default(),
                    ),
                }
            }
            Err(e) => r.fail("exec", e),
        }
    }
}
