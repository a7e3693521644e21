//! The shell scripts dp-restart runs on a host: switch (+ restart), switch back, finish.

use dp_core::layout::Script;
use dp_core::quote::QuoteError;
use std::time::Duration;

/// Takes or renews (when `renew`) the deploy lock as `lock_id` and checks that `release`
/// is complete: what every host must pass before any host switches.
pub fn ready(
    root: &str,
    lock_id: &str,
    release: &str,
    lease: Duration,
    renew: bool,
) -> Result<String, QuoteError> {
    let mut s = Script::new(root)?;
    s.push(&dp_core::lock::acquire_script(lock_id, lease, renew)?)
        .set("rel", release)?
        .push(dp_core::sh_file!("sh/ready.sh"));
    Ok(s.into_string())
}

/// A restart command and how long it may run.
#[derive(Debug, Clone, Copy)]
pub struct Restart<'a> {
    /// The rendered command (a shell script).
    pub command: &'a str,
    /// Its deadline: past it, the command and what it started are stopped.
    pub timeout: Duration,
}

/// Where a switch goes.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    /// A deploy's release.
    Deploy(&'a str),
    /// A rollback: to the given release, or (`None`) to the release that was live before
    /// `current` (`dp_prev_live`). A host already on the target is left as it is.
    Rollback(Option<&'a str>),
    /// No switch: the restart in the release `current` points to.
    Current,
}

/// The switch's values and functions (`sh/switch.sh`).
fn push_switch(
    s: &mut Script,
    target: Option<&str>,
    mode: &str,
    restart: Option<Restart>,
) -> Result<(), QuoteError> {
    s.set("target", target.unwrap_or(""))?
        .set("mode", mode)?
        .set("restart", restart.map_or("", |r| r.command))?
        .num(
            "restart_secs",
            restart.map_or(1, |r| r.timeout.as_secs().max(1)),
        )
        .push(dp_core::sh_file!("sh/switch.sh"));
    Ok(())
}

/// Prints `previous <id>` and `target <id>`, then switches `current` to the target
/// atomically (a new symlink renamed over the old one) and runs `restart` in it
/// ([`Target::Current`]: only runs `restart` in `current`).
pub fn switch(
    root: &str,
    target: Target,
    lock_id: &str,
    lease: Duration,
    renew: bool,
    restart: Option<Restart>,
    after: &After,
) -> Result<String, QuoteError> {
    let (release, mode) = match target {
        Target::Deploy(rel) => (Some(rel), "deploy"),
        Target::Rollback(rel) => (rel, "rollback"),
        Target::Current => (None, "current"),
    };
    let mut s = Script::new(root)?;
    s.push(&dp_core::lock::acquire_script(lock_id, lease, renew)?);
    push_switch(&mut s, release, mode, restart)?;
    s.push("dp_switch\n");
    if after.health.is_some() || after.finish.is_some() {
        let (hcmd, hsecs, want) = after.health.unwrap_or(("", 1, None));
        s.set("hcmd", hcmd)?
            .num("hsecs", hsecs.max(1))
            .set("want", want.unwrap_or(""))?;
        match &after.finish {
            Some(f) => {
                s.set("finish", "1")?
                    .num("keep", f.keep)
                    .set("rel", lock_id)?
                    .set("hist_head", &f.history_head)?
                    .set("hist_tail", &f.history_tail)?
                    .set("rollback", if f.rollback { "1" } else { "" })?
                    .push(dp_core::layout::cleanup_sh())
                    .push(dp_core::sh_file!("sh/finish.sh"));
            }
            None => {
                s.set("finish", "")?;
            }
        }
        s.push(dp_core::sh_file!("sh/after.sh"));
    }
    Ok(s.into_string())
}

/// What the switch's exchange goes on to do when the switch and restart succeeded.
#[derive(Debug, Default)]
pub struct After<'a> {
    /// One try of the health command: the rendered command, its deadline in seconds and
    /// the text its output must contain.
    pub health: Option<(&'a str, u64, Option<&'a str>)>,
    /// The finish, when the host passed (no health check here, or its try passed).
    pub finish: Option<FinishAfter>,
}

/// The finish inside the switch's exchange ([`After`]): the history line around its
/// `release` and `previous`, which only the host may know then.
#[derive(Debug)]
pub struct FinishAfter {
    /// Releases to keep.
    pub keep: usize,
    /// The history line up to `"release":` (`{"time":...,"action":"deploy",`).
    pub history_head: String,
    /// The history line after `"previous":P,` (`"user":...}`).
    pub history_tail: String,
    /// A rollback's finish.
    pub rollback: bool,
}

/// Switches `current` back to `previous` (or removes it when there was none) and runs
/// `restart` there.
pub fn switch_back(
    root: &str,
    previous: Option<&str>,
    restart: Option<Restart>,
) -> Result<String, QuoteError> {
    let mut s = Script::new(root)?;
    push_switch(&mut s, None, "deploy", restart)?;
    s.set("previous", previous.unwrap_or(""))?
        .push("dp_switch_back \"$previous\"\n");
    Ok(s.into_string())
}

/// What the finish script needs.
pub struct Finish<'a> {
    /// The deploy root.
    pub root: &'a str,
    /// The lock id to release (the release, or the rollback id).
    pub lock_id: &'a str,
    /// Releases to keep.
    pub keep: usize,
    /// Never removed: the release `current` was switched from.
    pub previous: Option<&'a str>,
    /// One JSON line for history.jsonl.
    pub history: &'a str,
    /// A rollback's finish: the release the next rollback returns to is kept too.
    pub rollback: bool,
}

/// Appends a history line, keeps the newest `keep` complete releases (never `current`,
/// never `previous`, never the release a rollback would return to), removes leftovers and
/// unused dependency environments and releases the deploy lock.
pub fn finish(f: &Finish) -> Result<String, QuoteError> {
    let mut s = Script::new(f.root)?;
    s.num("keep", f.keep)
        .set("prev", f.previous.unwrap_or(""))?
        .set("rel", f.lock_id)?
        .set("history", f.history)?
        .set("rollback", if f.rollback { "1" } else { "" })?
        .push(dp_core::layout::cleanup_sh())
        .push(dp_core::sh_file!("sh/finish.sh"))
        .push("dp_finish\n")
        .push(&dp_core::lock::release_script(f.lock_id)?);
    Ok(s.into_string())
}
