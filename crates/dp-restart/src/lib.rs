//! dp-restart: roll a release out in batches, where "no downtime" is won.
//!
//! Per batch, in parallel: switch `current` atomically (new symlink renamed over the old
//! one; there is never a moment without `current`), run the restart command in the new
//! release, and wait for the health check. A host that fails its restart or health check
//! is switched back to its previous release and restarted; the rollout then stops (unless
//! `--max-fail` allows more) and later batches are marked skipped. Finally, on every host
//! that received the release (failed ones included): keep the newest releases, remove
//! unused dependency environments, append to history.jsonl and release the deploy lock.

mod health;
mod script;

use dp_core::layout::{check_release_id, release_of, root_of, Script};
use dp_core::parallel::Sessions;
use dp_core::template::{render, Escape};
use dp_core::transport::{Connection, Transport};
use dp_core::Record;
use dp_core::{gate, interrupt, lock, ErrorKind};
use serde::Serialize;
use std::time::{Duration, Instant, SystemTime};

pub use health::Health;

/// The step name in records.
pub const STEP: &str = "restart";

/// How long a restart command may run by default.
pub const DEFAULT_TIMEOUT: Duration = dp_core::defaults::RESTART_TIMEOUT;

/// How many hosts per batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// This many hosts.
    Count(usize),
    /// This percentage of the hosts (rounded up, at least one).
    Percent(u32),
}

impl std::str::FromStr for Batch {
    type Err = String;
    fn from_str(s: &str) -> Result<Batch, String> {
        let bad = || format!("invalid batch {s:?}: a number of hosts (2) or a percentage (25%)");
        match s.strip_suffix('%') {
            Some(p) => match p.parse::<u32>() {
                Ok(p) if (1..=100).contains(&p) => Ok(Batch::Percent(p)),
                _ => Err(bad()),
            },
            None => match s.parse::<usize>() {
                Ok(n) if n >= 1 => Ok(Batch::Count(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl Batch {
    /// Batch size for `hosts` hosts.
    pub fn size(self, hosts: usize) -> usize {
        match self {
            Batch::Count(n) => n,
            Batch::Percent(p) => (hosts * p as usize).div_ceil(100),
        }
        .max(1)
    }
}

/// How to roll out.
#[derive(Debug, Clone)]
pub struct RestartOptions {
    /// Batch size.
    pub batch: Batch,
    /// Restart command template, run in the new release on each host.
    pub command: Option<String>,
    /// Health check.
    pub health: Option<Health>,
    /// How long a host may take to become healthy.
    pub health_timeout: Duration,
    /// Text the health check's answer must contain (templated: `ok {release}`), so that
    /// only the new release passes.
    pub health_expect: Option<String>,
    /// The app's log file on each host, templated: its last lines go into a failed host's
    /// record (`error.details`).
    pub app_log: Option<String>,
    /// How long the restart command may run on a host before it is stopped (with what it
    /// started that did not detach) and the host counts as failed.
    pub timeout: Duration,
    /// Host failures allowed before the rollout stops.
    pub max_fail: usize,
    /// Complete releases to keep.
    pub keep: usize,
    /// Hosts at once within a batch (and for the finish).
    pub jobs: usize,
    /// Deploy the records' release, roll back, or restart in place.
    pub action: Action,
    /// Deploy lock lease to renew.
    pub lease: Duration,
    /// When to renew a lease this deploy already holds.
    pub renew: dp_core::lock::Renew,
    /// Hosts that could not be connected to at all that may be left out of the rollout
    /// (any other failure before the switch switches no host).
    pub allow_unreachable: usize,
}

/// What a rollout does on each host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Action {
    /// Switch to the record's release.
    #[default]
    Deploy,
    /// Switch back to each host's previous live release, or to this one on every host.
    Rollback(Option<String>),
    /// Switch nothing: run the restart command and the health check on the release
    /// `current` points to (`dp restart`).
    Restart,
}

impl Action {
    /// The action as history.jsonl names it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Deploy => "deploy",
            Action::Rollback(_) => "rollback",
            Action::Restart => "restart",
        }
    }
}

/// What dp-restart did on one host (`steps.restart`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartStats {
    /// Batch number, from 1.
    pub batch: usize,
    /// The release now live (or that was tried).
    pub release: String,
    /// `current` before the switch.
    pub previous: Option<String>,
    /// `current` was switched.
    pub switched: bool,
    /// The health check passed (absent when there is none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub healthy: Option<bool>,
    /// Switched back after a failure.
    pub switched_back: bool,
    /// The release was live already with this content (dp-sync's `already_live`): the
    /// host was left alone, no switch, no restart, no health check.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub already_live: bool,
    /// The evidence of a failure, for the record's `error.details` (not in the step).
    #[serde(skip)]
    pub evidence: Option<String>,
    /// The finish (history, cleanup, unlock) ran in the switch's exchange: Ok, or how it
    /// failed (not in the step).
    #[serde(skip)]
    pub finished: Option<Result<(), String>>,
    /// Releases and environments removed by the cleanup.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// Milliseconds for switch, restart and health check.
    pub ms: u64,
    /// Milliseconds from the start of the rollout to this host's switch.
    pub switched_at_ms: u64,
}

impl RestartOptions {
    /// Checks, before any host is touched, that the restart command and health check
    /// render for every host that has not failed (known placeholders only) and that the
    /// health URL parses as an http:// or https:// URL with a host. The error names the
    /// host and the template.
    pub fn check(&self, records: &[Record]) -> Result<(), String> {
        for r in records.iter().filter(|r| !r.failed()) {
            let release = "r";
            let named = |what: &str, e: String| format!("{}: {what}: {e}", r.host);
            if let Some(c) = &self.command {
                render(c, r, release, Escape::Shell)
                    .map_err(|e| named("restart command", e.to_string()))?;
            }
            if let Some(t) = &self.app_log {
                render(t, r, release, Escape::Text).map_err(|e| named("app_log", e.to_string()))?;
            }
            match &self.health {
                Some(Health::Url(t)) => {
                    let url = render(t, r, release, Escape::Url)
                        .map_err(|e| named("health URL", e.to_string()))?;
                    match url::Url::parse(&url) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                        Ok(u) => {
                            return Err(named(
                                "health URL",
                                format!(
                                    "{url}: only http:// and https:// URLs with a host are checked (got {}:)",
                                    u.scheme()
                                ),
                            ))
                        }
                        Err(e) => return Err(named("health URL", format!("{url}: {e}"))),
                    }
                }
                Some(Health::Command(t)) => {
                    render(t, r, release, Escape::Shell)
                        .map_err(|e| named("health command", e.to_string()))?;
                }
                None => {}
            }
            if let Some(t) = &self.health_expect {
                if self.health.is_none() {
                    return Err(
                        "health_expect needs a health check (health_url or health_cmd)".into(),
                    );
                }
                render(t, r, release, Escape::Text)
                    .map_err(|e| named("health_expect", e.to_string()))?;
            }
        }
        Ok(())
    }
}

fn utc_now() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

/// Rolls out over every record; see the module documentation. All or nothing before the
/// switch: when any record has failed (beyond `allow_unreachable` unreachable hosts), no
/// host is switched, each record says why, and the finish releases every lock.
pub fn run(records: &mut [Record], sessions: &mut Sessions, opts: &RestartOptions) {
    let started_at = utc_now();
    let rollout_start = Instant::now();
    // The lock id of a rollback or restart (a deploy's is its release).
    let run_id = format!(
        "{}-{}",
        opts.action.as_str(),
        started_at.replace(['-', ':'], "").replace('.', "-")
    );
    // A rollback to a named release checks first that every host has it; a restart, that
    // every host has a live release and none is being deployed to.
    let refused = match &opts.action {
        Action::Rollback(to) => to.is_some() && !ready_everywhere(records, sessions, opts, &run_id),
        Action::Restart => !ready_everywhere(records, sessions, opts, &run_id),
        Action::Deploy => {
            gate::hold_back(records, STEP, opts.allow_unreachable).is_err()
                || !ready_everywhere(records, sessions, opts, &run_id)
        }
    };
    if refused {
        finish_all(records, sessions, opts, &run_id, &[]);
        return;
    }
    let eligible: Vec<usize> = (0..records.len())
        .filter(|&i| !records[i].failed())
        .collect();
    let size = opts.batch.size(eligible.len());
    let mut failures: Vec<String> = Vec::new();
    // Hosts whose switch's exchange ran the finish too.
    let mut finished: Vec<usize> = Vec::new();
    let mut stopped_after: Option<usize> = None;
    for (b, batch) in eligible.chunks(size).enumerate() {
        if interrupt::interrupted() {
            // Start no new batch; the one being switched has finished or switched back.
            for &i in batch {
                records[i].fail(
                    STEP,
                    "not switched: the deploy was interrupted before this host's batch",
                );
            }
            continue;
        }
        if let Some(after) = stopped_after {
            for &i in batch {
                records[i].fail_as(
                    STEP,
                    ErrorKind::Skipped,
                    format!(
                        "skipped: the rollout stopped after batch {after} failed ({})",
                        failures.join(", ")
                    ),
                );
            }
            continue;
        }
        let results = sessions.run_indices(records, batch, opts.jobs, |conn, record| {
            let started = Instant::now();
            let mut stats = RestartStats {
                batch: b + 1,
                ..RestartStats::default()
            };
            // A batch being switched is finished (or switched back) even after an interrupt.
            let outcome = interrupt::critical(|| {
                roll_host(conn, record, opts, &run_id, &mut stats, rollout_start)
            });
            stats.ms = started.elapsed().as_millis() as u64;
            if opts.action != Action::Deploy && !stats.release.is_empty() {
                record.release = Some(stats.release.clone());
            }
            record.set_step(STEP, &stats);
            outcome
                .map(|()| stats.finished.take())
                .map_err(|(kind, message)| {
                    record.fail_as(STEP, kind, message.clone());
                    if let Some(evidence) = &stats.evidence {
                        record.add_details(evidence);
                    }
                    message
                })
        });
        for (&i, result) in batch.iter().zip(results) {
            match result {
                Err(message) => {
                    records[i].fail(STEP, message);
                    failures.push(records[i].host.clone());
                }
                Ok(Some(done)) => {
                    finished.push(i);
                    // As a finish after the rollout would: the host counts as failed,
                    // but it did not fail its rollout.
                    if let Err(message) = done {
                        records[i].fail(STEP, message);
                    }
                }
                Ok(None) => {}
            }
        }
        if failures.len() > opts.max_fail {
            stopped_after = Some(b + 1);
        }
    }
    finish_all(records, sessions, opts, &run_id, &finished);
}

/// Before the first switch, on every host that is to switch, in parallel: the deploy lock
/// is still this release's (renewed when due) and the release is complete. A host that
/// fails here fails the whole rollout before any host switched (all or nothing); the
/// records then say why, and the result is false. Skipped inside `dp deploy` while its
/// lease is fresh (see [`lock::Renew::After`]).
fn ready_everywhere(
    records: &mut [Record],
    sessions: &mut Sessions,
    opts: &RestartOptions,
    run_id: &str,
) -> bool {
    // `dp deploy` checked every host's lock moments ago, in the same process, and holds a
    // lease a third of which has not yet passed: nobody else can hold those hosts now.
    if matches!(opts.renew, lock::Renew::After(_)) && !opts.renew.due() {
        return true;
    }
    let hosts: Vec<usize> = (0..records.len())
        .filter(|&i| {
            !records[i].failed()
                && (opts.action != Action::Deploy || !gate::already_live(&records[i]))
        })
        .collect();
    let results = sessions.run_indices(records, &hosts, opts.jobs, |conn, record| {
        // An empty release: the one `current` points to.
        let (lock_id, release) = match &opts.action {
            Action::Rollback(Some(to)) => (run_id, to.as_str()),
            Action::Restart => (run_id, ""),
            Action::Rollback(None) | Action::Deploy => {
                let release = release_of(record)?;
                (release, release)
            }
        };
        let s = script::ready(
            root_of(record)?,
            lock_id,
            release,
            opts.lease,
            opts.renew.due(),
        )
        .map_err(|e| e.to_string())?;
        let out = conn.run(&s).map_err(|e| e.to_string())?;
        lock::check_status(&out.status, "check the lock and the release")
    });
    for (&i, result) in hosts.iter().zip(results) {
        if let Err(message) = result {
            records[i].fail(STEP, message);
        }
    }
    gate::hold_back(records, STEP, opts.allow_unreachable).is_ok()
}

/// Switch, restart, health check; switch back on failure.
fn roll_host(
    conn: &mut dyn Transport,
    record: &Record,
    opts: &RestartOptions,
    run_id: &str,
    stats: &mut RestartStats,
    rollout_start: Instant,
) -> Result<(), (ErrorKind, String)> {
    let failed = |m: String| (ErrorKind::Failed, m);
    if opts.action == Action::Deploy && gate::already_live(record) {
        let release = release_of(record).map_err(failed)?;
        stats.release = release.to_string();
        stats.previous = Some(release.to_string());
        stats.already_live = true;
        return Ok(());
    }
    let root = root_of(record).map_err(failed)?.to_string();
    let release = match &opts.action {
        Action::Deploy => Some(release_of(record).map_err(failed)?.to_string()),
        Action::Rollback(to) => to.clone(),
        Action::Restart => None,
    };
    let lock_id = if opts.action == Action::Deploy {
        release.clone().unwrap_or_default()
    } else {
        run_id.to_string()
    };
    // The restart template is rendered on the host's side of the switch: {release} is the
    // target, which in a rollback or restart only the host may know; render with a marker
    // first.
    let target_for_template = release.clone().unwrap_or_else(|| "${target}".to_string());
    // A command template (the restart command, a health command) as the host runs it in
    // the target: where only the host knows the target, {release} is "$DP_RELEASE" there.
    let on_host = |t: &str| -> Result<String, (ErrorKind, String)> {
        let r = render(t, record, &target_for_template, Escape::Shell)
            .map_err(|e| failed(e.to_string()))?;
        Ok(if release.is_none() {
            r.replace("'${target}'", "\"$DP_RELEASE\"")
        } else {
            r
        })
    };
    let restart = opts.command.as_deref().map(on_host).transpose()?;
    let timeout = opts.timeout;
    let restart = restart
        .as_deref()
        .map(|command| script::Restart { command, timeout });
    let target = match &opts.action {
        Action::Deploy => script::Target::Deploy(release.as_deref().unwrap_or_default()),
        Action::Rollback(_) => script::Target::Rollback(release.as_deref()),
        Action::Restart => script::Target::Current,
    };
    // A health command's first try, and the finish when it passes (or when there is no
    // health check), go in the switch's exchange: a host that comes up at once costs one
    // exchange. A health URL is polled from here, so the finish waits for it.
    // Where only the host knows the release (a rollback to the previous one, a restart),
    // an expected text that names it is checked from here instead.
    let health_cmd = match &opts.health {
        Some(Health::Command(t)) => Some(on_host(t)?),
        _ => None,
    };
    let want = match (&opts.health_expect, &health_cmd) {
        (Some(t), Some(_)) => Some(
            render(t, record, &target_for_template, Escape::Text)
                .map_err(|e| failed(e.to_string()))?,
        ),
        _ => None,
    };
    let health_cmd = health_cmd
        .filter(|_| release.is_some() || !want.as_deref().is_some_and(|w| w.contains("${target}")));
    let finish_here = health_cmd.is_some() || opts.health.is_none();
    let after = script::After {
        health: health_cmd
            .as_deref()
            .map(|c| (c, opts.health_timeout.as_secs(), want.as_deref())),
        finish: finish_here.then(|| {
            let (history_head, history_tail) = history_parts(opts.action.as_str(), "ok", run_id);
            script::FinishAfter {
                keep: opts.keep.max(1),
                history_head,
                history_tail,
                rollback: matches!(opts.action, Action::Rollback(_)),
            }
        }),
    };
    let s = script::switch(
        &root,
        target,
        &lock_id,
        opts.lease,
        // A deploy renewed the lease moments ago, before the first switch.
        opts.action != Action::Deploy && opts.renew.due(),
        restart,
        &after,
    )
    .map_err(|e| failed(e.to_string()))?;
    // What the script printed is read even when the session is lost midway: a host whose
    // `current` was switched before that must be put back.
    let mut printed = Clocked::new(b"checking\n");
    let ran = conn.exec_held(&s, &mut printed);
    // The health timeout starts once the restart is done: at the first try in the
    // exchange, else now.
    let health_started = printed.seen.unwrap_or_else(Instant::now);
    let text = String::from_utf8_lossy(&printed.buf).into_owned();
    for line in text.lines() {
        if let Some(p) = line.strip_prefix("previous ") {
            stats.previous = Some(p.to_string()).filter(|p| !p.is_empty());
        } else if let Some(t) = line.strip_prefix("target ") {
            stats.release = t.to_string();
        } else if line == "switched" {
            stats.switched = true;
            stats.switched_at_ms = rollout_start.elapsed().as_millis() as u64;
        } else if line == "healthy" {
            stats.healthy = Some(true);
        } else if line == "finished" {
            stats.finished = Some(Ok(()));
        } else if let Some(code) = line.strip_prefix("finish failed ") {
            stats.finished = Some(Err(format!(
                "cleanup and unlock failed (exit status {code}): {}",
                tail_of(&ran)
            )));
        } else if let Some(r) = line.strip_prefix("removed ") {
            stats.removed.push(r.to_string());
        }
    }
    // The host passed and its finish began in the exchange: it serves the new release,
    // whatever became of the session or of the finish (which then failed, and is not
    // run again).
    if text.lines().any(|l| l == "finishing") {
        if stats.finished.is_none() {
            let why = match &ran {
                Ok(status) => tail_of(&Ok(status.clone())),
                Err(e) => e.to_string(),
            };
            stats.finished = Some(Err(format!("cleanup and unlock failed: {why}")));
        }
        return Ok(());
    }
    let mut lost = false;
    let failure = match ran {
        Err(e) if !stats.switched => return Err(failed(e.to_string())),
        Err(e) => {
            lost = true;
            Some(format!("{e} (after current was switched)"))
        }
        Ok(status) => match lock::held(&status) {
            Some(held) => return Err(failed(held)),
            None => status
                .check("switch and restart")
                .err()
                .map(|e| e.to_string()),
        },
    };
    let failure = if failure.is_some() || stats.healthy == Some(true) {
        failure
    } else if let Some(health) = &opts.health {
        match health.wait(
            conn,
            record,
            (&stats.release, stats.previous.as_deref()),
            (health_started, opts.health_timeout),
            opts.health_expect.as_deref(),
        ) {
            Ok(()) => {
                stats.healthy = Some(true);
                None
            }
            Err(e) => {
                stats.healthy = Some(false);
                Some(e)
            }
        }
    } else {
        None
    };
    let Some(failure) = failure else {
        return Ok(());
    };
    // While the failed release is still in place: what its app logged.
    stats.evidence = app_log_tail(conn, record, opts, &stats.release);
    if !stats.switched {
        return Err(failed(failure));
    }
    // Put the host back as it was.
    let back_restart = match (&opts.command, &stats.previous) {
        (Some(t), Some(prev)) => {
            Some(render(t, record, prev, Escape::Shell).map_err(|e| failed(e.to_string()))?)
        }
        _ => None,
    };
    let back_restart = back_restart
        .as_deref()
        .map(|command| script::Restart { command, timeout });
    let s = script::switch_back(&root, stats.previous.as_deref(), back_restart)
        .map_err(|e| failed(e.to_string()))?;
    // The session that was lost is of no use: put the host back through a new one.
    let back = if lost {
        Connection::open(record)
            .map_err(|e| failed(format!("{failure}; SWITCHING BACK FAILED: {e}")))
            .and_then(|mut fresh| {
                fresh
                    .run_held(&s)
                    .map_err(|e| failed(format!("{failure}; SWITCHING BACK FAILED: {e}")))
            })?
    } else {
        match conn.run_held(&s) {
            Ok(out) => out,
            Err(e) => return Err(failed(format!("{failure}; SWITCHING BACK FAILED: {e}"))),
        }
    };
    if back.status.success() {
        stats.switched_back = true;
        return Err((
            ErrorKind::SwitchedBack,
            format!(
                "{failure}; switched back to {}",
                stats.previous.as_deref().unwrap_or("no release")
            ),
        ));
    }
    Err(failed(format!(
        "{failure}; SWITCHING BACK FAILED: {}",
        back.status
            .check("switch back")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    )))
}

/// Lines of the app log a failed host's record carries.
const APP_LOG_LINES: usize = 20;

/// The last [`APP_LOG_LINES`] lines of `[restart] app_log` on the host, headed with its
/// path; None without one (or when it cannot be read: said in the text).
fn app_log_tail(
    conn: &mut dyn Transport,
    record: &Record,
    opts: &RestartOptions,
    release: &str,
) -> Option<String> {
    let template = opts.app_log.as_deref()?;
    let path = render(template, record, release, Escape::Text).ok()?;
    let mut script = Script::new(root_of(record).ok()?).ok()?;
    script
        .set("log", &path)
        .ok()?
        .num("lines", APP_LOG_LINES)
        .push(dp_core::sh_file!("sh/app_log.sh"));
    let text = match conn.run(&script.into_string()) {
        Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
        Err(e) => format!("cannot read it: {e}"),
    };
    Some(format!("last lines of {path}:\n{}", text.trim_end()))
}

/// The finish on every host that received the release, but those whose switch's exchange
/// finished already (`finished`).
fn finish_all(
    records: &mut [Record],
    sessions: &mut Sessions,
    opts: &RestartOptions,
    run_id: &str,
    finished: &[usize],
) {
    let action = opts.action.as_str();
    let targets: Vec<usize> = (0..records.len())
        .filter(|&i| {
            records[i].root.is_some()
                && (records[i].release.is_some() || opts.action != Action::Deploy)
                && !finished.contains(&i)
        })
        .collect();
    let results = sessions.run_indices(records, &targets, opts.jobs, |conn, record| {
        interrupt::critical(|| finish_host(conn, record, opts, run_id, action))
    });
    for (&i, result) in targets.iter().zip(results) {
        match result {
            Ok(removed) if !removed.is_empty() => {
                if let Some(serde_json::Value::Object(step)) = records[i].steps.get_mut(STEP) {
                    step.insert("removed".into(), serde_json::json!(removed));
                }
            }
            Ok(_) => {}
            Err(e) => {
                let message = format!("cleanup and unlock failed: {e}");
                if records[i].failed() {
                    continue;
                }
                records[i].fail(STEP, message);
            }
        }
    }
}

/// A command's stdout as it comes, with the moment a line (`needle`) first came.
struct Clocked {
    buf: Vec<u8>,
    needle: &'static [u8],
    seen: Option<Instant>,
}

impl Clocked {
    fn new(needle: &'static [u8]) -> Clocked {
        Clocked {
            buf: Vec::new(),
            needle,
            seen: None,
        }
    }
}

impl std::io::Write for Clocked {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let from = self.buf.len().saturating_sub(self.needle.len());
        self.buf.extend_from_slice(data);
        if self.seen.is_none()
            && self.buf[from..]
                .windows(self.needle.len())
                .any(|w| w == self.needle)
        {
            self.seen = Some(Instant::now());
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A history.jsonl line around its `release` and `previous` (which the host may be the
/// one to know): `{"time":..,"action":..,` and `"user":..,"result":..,"run":..}`. The
/// run id is the same on every host of one rollout: `dp history` groups by it.
fn history_parts(action: &str, result: &str, run_id: &str) -> (String, String) {
    let j = |v: &str| serde_json::to_string(v).unwrap_or_default();
    (
        format!("{{\"time\":{},\"action\":{},", j(&utc_now()), j(action)),
        format!(
            "\"user\":{},\"result\":{},\"run\":{}}}",
            j(&lock::holder()),
            j(result),
            j(run_id)
        ),
    )
}

/// The last lines a command wrote to stderr, or why it could not be run.
fn tail_of(
    ran: &Result<dp_core::transport::ExecStatus, dp_core::transport::TransportError>,
) -> String {
    match ran {
        Ok(status) => status.stderr_tail(12),
        Err(e) => e.to_string(),
    }
}

/// The finish on one host: cleanup, history, unlock. Returns what the cleanup removed.
fn finish_host(
    conn: &mut dyn Transport,
    record: &Record,
    opts: &RestartOptions,
    run_id: &str,
    action: &str,
) -> Result<Vec<String>, String> {
    let previous = record
        .steps
        .get(STEP)
        .and_then(|v| v["previous"].as_str())
        .map(str::to_string);
    let release = record.release.clone().unwrap_or_default();
    let unchanged = record
        .steps
        .get(STEP)
        .is_some_and(|s| s["already_live"] == true);
    let result = match &record.error {
        None if unchanged => "unchanged".to_string(),
        None => "ok".to_string(),
        Some(e) if e.kind == ErrorKind::Failed => format!("failed in {}", e.step),
        Some(e) => e.kind.as_str().to_string(),
    };
    let (head, tail) = history_parts(action, &result, run_id);
    let history = format!(
        "{head}\"release\":{},\"previous\":{},{tail}",
        serde_json::to_string(&release).unwrap_or_default(),
        serde_json::to_string(&previous).unwrap_or_default()
    );
    let lock_id = if opts.action == Action::Deploy {
        release.clone()
    } else {
        run_id.to_string()
    };
    if check_release_id(&lock_id).is_err() {
        return Ok(Vec::new());
    }
    let f = script::Finish {
        root: root_of(record)?,
        lock_id: &lock_id,
        keep: opts.keep.max(1),
        previous: previous.as_deref(),
        history: &history,
        rollback: matches!(opts.action, Action::Rollback(_)),
    };
    let out = conn
        .run(&script::finish(&f).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    out.status
        .check("finishing (cleanup, history, unlock)")
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("removed ").map(str::to_string))
        .collect::<Vec<_>>())
}
