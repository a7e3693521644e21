//! The shell scripts dp-restart runs on a host: switch (+ restart), switch back, finish.

use dp_core::layout::script_prelude;
use dp_core::quote::{quote_str, QuoteError};
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
    let mut s = script_prelude(root)?;
    s.push_str(&dp_core::lock::acquire_script(lock_id, lease, renew)?);
    s.push_str(&format!(
        "[ -f \"$releases\"/{rel}/.dp/complete ] || {{ echo \"release \"{rel}\" is not complete on this host; it cannot go live\" >&2; exit 3; }}\n",
        rel = quote_str(release)?
    ));
    Ok(s)
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
}

/// Prints `previous <id>` and `target <id>`, then switches `current` to the target
/// atomically (a new symlink renamed over the old one) and runs `restart` in it.
pub fn switch(
    root: &str,
    target: Target,
    lock_id: &str,
    lease: Duration,
    renew: bool,
    restart: Option<Restart>,
) -> Result<String, QuoteError> {
    let mut s = script_prelude(root)?;
    s.push_str(&dp_core::lock::acquire_script(lock_id, lease, renew)?);
    s.push_str(&dp_core::layout::current_release_sh("prev"));
    match target {
        Target::Deploy(rel) | Target::Rollback(Some(rel)) => {
            s.push_str(&format!("target={}\n", quote_str(rel)?))
        }
        Target::Rollback(None) => s.push_str(
            r#"target=$(dp_prev_live "$prev")
[ -n "$target" ] || { echo "no release to roll back to: none other than ${prev:-(none)} went live on this host and is still on disk (see .dp/history.jsonl; dp rollback --to RELEASE picks one)" >&2; exit 5; }
"#,
        ),
    }
    s.push_str(
        r#"echo "previous $prev"
echo "target $target"
[ -f "$releases/$target/.dp/complete" ] || { echo "release $target is not complete on this host; it cannot go live" >&2; exit 3; }
"#,
    );
    if matches!(target, Target::Rollback(_)) {
        s.push_str("if [ \"$prev\" = \"$target\" ]; then echo \"already live\"; exit 0; fi\n");
    }
    s.push_str(
        r#"if [ "$prev" != "$target" ]; then
  dp_rm "$root/.current.tmp"
  ln -s "releases/$target" "$root/.current.tmp"
  mv -T "$root/.current.tmp" "$root/current"
fi
echo "switched"
"#,
    );
    push_restart(&mut s, restart)?;
    Ok(s)
}

/// Switches `current` back to `previous` (or removes it when there was none) and runs
/// `restart` there.
pub fn switch_back(
    root: &str,
    previous: Option<&str>,
    restart: Option<Restart>,
) -> Result<String, QuoteError> {
    let mut s = script_prelude(root)?;
    match previous {
        Some(prev) => s.push_str(&format!(
            r#"dp_rm "$root/.current.tmp"
ln -s releases/{p} "$root/.current.tmp"
mv -T "$root/.current.tmp" "$root/current"
echo "switched back"
"#,
            p = quote_str(prev)?
        )),
        None => s.push_str("rm -f \"$root/current\"\necho \"removed current\"\n"),
    }
    if previous.is_some() {
        push_restart(&mut s, restart)?;
    }
    Ok(s)
}

fn push_restart(s: &mut String, restart: Option<Restart>) -> Result<(), QuoteError> {
    if let Some(r) = restart {
        s.push_str("cd -P \"$root/current\"\n");
        // The command's output goes to .dp/restart.log and then to stderr, so stdout stays
        // ours to parse and a server it leaves running cannot hold the session open. A
        // server that must outlive a stopped command detaches (setsid). The release it
        // restarts into is in $DP_RELEASE.
        s.push_str(&format!(
            "{env}dp_deadline {secs} 'the restart command' \"$root/.dp/restart.log\" sh -c {cmd}\n\
             echo \"restarted\"\n",
            env = dp_core::layout::release_env_sh("${PWD##*/}", Some("${prev:-}")),
            secs = r.timeout.as_secs().max(1),
            cmd = quote_str(r.command)?,
        ));
    }
    Ok(())
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
}

/// Keeps the newest `keep` complete releases (never `current`, never `previous`),
/// removes leftovers and unused dependency environments, appends a history line and
/// releases the deploy lock.
pub fn finish(f: &Finish) -> Result<String, QuoteError> {
    let mut s = script_prelude(f.root)?;
    s.push_str(&format!(
        "keep={keep}\nprev={prev}\nrel={rel}\nhistory={history}\n{cleanup}{finish}",
        keep = f.keep,
        prev = quote_str(f.previous.unwrap_or(""))?,
        rel = quote_str(f.lock_id)?,
        history = quote_str(f.history)?,
        cleanup = dp_core::layout::cleanup_sh(),
        finish = dp_core::sh_file!("sh/finish.sh"),
    ));
    s.push_str(&dp_core::lock::release_script(f.lock_id)?);
    Ok(s)
}
