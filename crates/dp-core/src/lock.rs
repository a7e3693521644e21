//! The deploy lock: `<root>/.dp/lock`, one JSON line naming the release, the holder
//! (user@machine), its pid, when it was taken and when the lease expires (host clock).
//!
//! The lock is a lease: taken by dp-sync, renewed by each later step of the same release,
//! released by dp-restart at the end of the pipeline (or by `dp unlock`). A lease that
//! expired (default 15 minutes after the last renewal) is taken over with a warning, so a
//! deploy killed by Ctrl-C never wedges the next one. Creating the file uses `set -C`
//! (O_EXCL), so two deploys cannot both take a free lock; a takeover renames the stale
//! file away first, so only one of two racing deploys can win it.

use crate::layout::{release_of, root_of, Script};
use crate::parallel::Sessions;
use crate::quote::{quote_str, QuoteError};
use crate::transport::Transport;
use crate::Record;
use serde::{Deserialize, Serialize};
use std::sync::mpsc::RecvTimeoutError;
use std::time::{Duration, Instant};

/// Default lease length.
pub const DEFAULT_LEASE: Duration = crate::defaults::LEASE;

/// Exit status of the lock script when another release holds the lock.
pub const HELD_STATUS: i32 = 75;

/// Exit status of the lock script when the lock cannot be written (a full disk, a
/// read-only root); stderr has the cause.
pub const WRITE_FAILED_STATUS: i32 = 74;

/// What the lock file says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockInfo {
    /// The release being deployed.
    pub release: String,
    /// `user@machine` of the deploying side.
    pub holder: String,
    /// Process id of the deploying tool.
    pub pid: u32,
    /// When the lock was taken or last renewed (Unix seconds, host clock).
    pub time: u64,
    /// When the lease ends (Unix seconds, host clock).
    pub expires: u64,
}

impl std::fmt::Display for LockInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "release {} by {} (pid {}), lease until {}",
            self.release,
            self.holder,
            self.pid,
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + Duration::from_secs(self.expires)
            )
        )
    }
}

/// `user@machine` for this process.
pub fn holder() -> String {
    // Asked for by every host's lock and history line: looked up once per process.
    static HOLDER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HOLDER
        .get_or_init(|| {
            let user = crate::transport::ssh::local_user();
            format!(
                "{user}@{}",
                hostname().unwrap_or_else(|| "localhost".into())
            )
        })
        .clone()
}

/// This machine's name, from the C library (any Unix).
fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into `buf`.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Some(String::from_utf8_lossy(&buf[..end]).trim().to_string()).filter(|h| !h.is_empty())
}

/// When a step renews the lease of the lock its own deploy holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Renew {
    /// Every time: a tool run on its own cannot know how old the lease is.
    #[default]
    Always,
    /// Only once this moment has passed. Before it, the step only checks that the lock
    /// still names its release, which costs the host no process (`dp deploy` knows when
    /// it took the lease, a few seconds earlier).
    After(std::time::Instant),
}

impl Renew {
    /// Renew now?
    pub fn due(self) -> bool {
        match self {
            Renew::Always => true,
            Renew::After(t) => std::time::Instant::now() >= t,
        }
    }

    /// Renew once a third of `lease` has passed since `taken`.
    pub fn after_taken(taken: std::time::Instant, lease: Duration) -> Renew {
        Renew::After(taken + lease / 3)
    }
}

/// Shell lines (in a [`Script`]) that take or renew the lock for
/// `release`, or exit [`HELD_STATUS`] with the holder's lock line on stderr. Prints one of
/// `lock taken`, `lock renewed`, `lock taken-over <old line>` on stdout; with `renew`
/// false, a lock that already names `release` is left as it is (`lock held`). They set
/// what `dp_lock hold|renew` needs, which the script may call again later, as it may
/// `dp_locked COMMAND...`, which keeps the lease renewed on the host while a long command
/// runs: both are helpers of `sh/lock.sh`, which the [`Script`] carries once.
pub fn acquire_script(release: &str, lease: Duration, renew: bool) -> Result<String, QuoteError> {
    let prefix = format!(
        "{{\"release\":\"{}\",\"holder\":{},\"pid\":{},\"time\":",
        release,
        serde_json::to_string(&holder()).unwrap_or_default(),
        std::process::id()
    );
    Ok(format!(
        "dp_lock_rel={release}\ndp_lock_prefix={prefix}\ndp_lock_lease={lease}\n\
         dp_lock_third={third}\ndp_lock_poll={poll}\ndp_lock_held={held}\n\
         dp_lock_write_failed={write_failed}\ndp_lock {mode}\n",
        prefix = quote_str(&prefix)?,
        third = (lease.as_secs() / 3).max(1),
        poll = (lease.as_secs() / 3).clamp(1, 5),
        lease = lease.as_secs(),
        release = quote_str(release)?,
        held = HELD_STATUS,
        write_failed = WRITE_FAILED_STATUS,
        mode = if renew { "renew" } else { "hold" },
    ))
}

/// Shell lines that remove the lock if `release` holds it (printing `lock released`):
/// the helper `dp_unlock`.
pub fn release_script(release: &str) -> Result<String, QuoteError> {
    Ok(format!(
        "dp_unlock_rel={}\ndp_unlock \"$dp_unlock_rel\"\n",
        quote_str(release)?
    ))
}

/// Gives back the lock of each record's release on the hosts `indices` (where this release
/// holds it), even after an interrupt. Failures are ignored: a lock not given back lapses
/// with its lease.
pub fn release_on(records: &mut [Record], sessions: &mut Sessions, indices: &[usize], jobs: usize) {
    let _ = sessions.run_indices(records, indices, jobs, |conn, record| {
        let mut script = Script::new(root_of(record)?).map_err(|e| e.to_string())?;
        script.push(&release_script(release_of(record)?).map_err(|e| e.to_string())?);
        let script = script.into_string();
        crate::interrupt::critical(|| conn.run(&script))
            .map(drop)
            .map_err(|e| e.to_string())
    });
}

/// After an interrupt, [`release_on`] every host that a step may have locked (a record
/// with a release and a root, which was reached), and mark every record that has not
/// failed as interrupted in `step`, so no later tool of the pipeline takes the lock again
/// and switches; a no-op otherwise. Each tool calls it before printing its records.
pub fn release_if_interrupted(
    records: &mut [Record],
    sessions: &mut Sessions,
    jobs: usize,
    step: &str,
) {
    if !crate::interrupt::interrupted() {
        return;
    }
    for r in records.iter_mut() {
        r.fail(step, "interrupted: the deploy stopped here");
    }
    let locked: Vec<usize> = (0..records.len())
        .filter(|&i| {
            let r = &records[i];
            r.release.is_some()
                && r.root.is_some()
                && r.error_kind() != Some(crate::ErrorKind::Unreachable)
        })
        .collect();
    release_on(records, sessions, &locked, jobs);
}

/// How a script that takes or renews the lock ended: `Ok` on exit 0; the holder when
/// another release holds the lock; else the command's failure as `what`.
pub fn check_status(status: &crate::transport::ExecStatus, what: &str) -> Result<(), String> {
    if let Some(held) = held(status) {
        return Err(held);
    }
    if status.success() {
        return Ok(());
    }
    status.clone().check(what).map_err(|e| e.to_string())
}

/// When a script that takes the lock ended with [`HELD_STATUS`], the message naming the
/// holder.
pub fn held(status: &crate::transport::ExecStatus) -> Option<String> {
    (status.code == Some(HELD_STATUS))
        .then(|| held_message(&String::from_utf8_lossy(&status.stderr)))
}

/// The message for a lock held by someone else, from the lock line the script printed
/// (or its report of a lock it could not read).
pub fn held_message(stderr: &str) -> String {
    let corrupt = stderr.lines().find_map(|l| {
        let mut f = l.strip_prefix("dp-lock-corrupt ")?.split(' ');
        let mut n = || f.next().and_then(|v| v.trim().parse::<i64>().ok());
        Some((n()?, n()?, n()?))
    });
    if let Some((size, age, left)) = corrupt {
        return format!(
            "deploy lock is corrupt ({size} bytes, written {age} s ago): it counts as expired \
             a lease after it was written, in {left} s; or remove it with `dp unlock`"
        );
    }
    let line = stderr
        .lines()
        .rev()
        .find(|l| l.trim_start().starts_with('{'));
    match line.and_then(|l| serde_json::from_str::<LockInfo>(l.trim()).ok()) {
        Some(info) => format!("deploy lock is held by {info}; wait, or remove it with `dp unlock`"),
        None => format!("deploy lock is held ({})", stderr.trim()),
    }
}

/// Parses the `lock taken-over <line>` output into a warning, if any.
pub fn takeover_warning(stdout: &str) -> Option<String> {
    let old = stdout
        .lines()
        .find_map(|l| l.strip_prefix("lock taken-over "))?;
    Some(match serde_json::from_str::<LockInfo>(old) {
        Ok(info) => format!("took over an expired deploy lock ({info})"),
        Err(_) => format!("took over an expired deploy lock ({old})"),
    })
}

/// Runs `during`, work that uses no host session (SQL migrations), while a thread renews
/// the lease of each record's release on its host (every host still in the deploy) every
/// third of `lease`, starting when `renew` is due. A migration longer than the lease must
/// not let another deploy take the hosts before this one switches them.
///
/// When `renew` is due at once, the first renewal runs before `during`, and a host whose
/// lock is no longer this release's fails for `step` (so a migration barrier sees it).
/// Later renewals that fail are left to the next step, which checks the lock.
pub fn keep_renewed<T>(
    records: &mut [Record],
    sessions: &mut Sessions,
    lease: Duration,
    jobs: usize,
    renew: Renew,
    step: &str,
    during: impl FnOnce(&mut [Record]) -> T,
) -> T {
    let every = (lease / 3).max(Duration::from_millis(100));
    // Hosts still in the deploy that hold a release's lock (records that only carry a
    // migration, without a release, have none to renew).
    let mut alive: Vec<usize> = (0..records.len())
        .filter(|&i| !records[i].failed() && records[i].release.is_some())
        .collect();
    let renew_on = |sessions: &mut Sessions, hosts: &mut [Record], alive: &[usize]| {
        sessions.run_indices(hosts, alive, jobs, |conn, r| {
            let mut s = Script::new(root_of(r)?).map_err(|e| e.to_string())?;
            s.push(&acquire_script(release_of(r)?, lease, true).map_err(|e| e.to_string())?);
            let out = conn.run(&s.into_string()).map_err(|e| e.to_string())?;
            check_status(&out.status, "renew the deploy lock")
        })
    };
    let mut next = match renew {
        Renew::After(t) if Instant::now() < t => t,
        _ => {
            let results = renew_on(sessions, records, &alive);
            for (&i, result) in alive.iter().zip(results) {
                if let Err(message) = result {
                    records[i].fail(step, message);
                }
            }
            alive.retain(|&i| !records[i].failed());
            Instant::now() + every
        }
    };
    let mut hosts = records.to_vec();
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|scope| {
        scope.spawn(move || {
            // Waits until `next`; the sender going away ends the loop.
            while let Err(RecvTimeoutError::Timeout) =
                stopped.recv_timeout(next.saturating_duration_since(Instant::now()))
            {
                renew_on(sessions, &mut hosts, &alive);
                next = Instant::now() + every;
            }
        });
        let out = during(records);
        drop(stop);
        out
    })
}

#[cfg(all(test, dp_linux))]
mod tests {
    use super::*;

    #[test]
    fn the_holder_names_this_machine() {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
        assert_eq!(hostname().as_deref(), Some(name.trim()));
        assert!(holder().ends_with(&format!("@{}", name.trim())));
    }
}
