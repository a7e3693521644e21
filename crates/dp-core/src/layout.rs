//! The remote layout of a deploy root (Capistrano-style), shared by every step:
//!
//! ```text
//! <root>/releases/<release>/                code of one deploy, never changed after switch
//! <root>/releases/<release>/.dp/manifest    path, type, mode, size, hash of every entry
//! <root>/releases/<release>/.dp/complete    written last: only complete releases go live
//! <root>/shared/                            persistent files linked into each release
//! <root>/current -> releases/<release>      switched atomically (symlink + rename)
//! <root>/.dp/lock                           deploy lock (a lease), see [`crate::lock`]
//! <root>/.dp/history.jsonl                  one line per deploy/rollback
//! <root>/.dp/restart.log, health.log, migrate.log   output of the last such command
//! <root>/.dp/deps/<key>/                    dependency environments
//! ```

use crate::quote::{quote_str, QuoteError};

/// Checks that `id` can name a release: 1 to 128 of `A-Z a-z 0-9 . _ -`, not starting
/// with `.` or `-`. Release ids appear in paths and scripts; keeping them plain keeps
/// every listing and glob on the host simple.
pub fn check_release_id(id: &str) -> Result<(), String> {
    let ok_chars = id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if id.is_empty() || id.len() > 128 || !ok_chars || id.starts_with(['.', '-']) {
        return Err(format!(
            "invalid release id {id:?}: use 1-128 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

/// Shell assignments `root=...` and `releases=...` that start every remote script, with the
/// root quoted, and the helpers every script may use. Scripts then use "$root" and
/// "$releases".
pub fn script_prelude(root: &str) -> Result<String, QuoteError> {
    let root = root.trim_end_matches('/');
    let root = if root.is_empty() { "/" } else { root };
    Ok(format!(
        "set -e\numask 022\nunset CDPATH\nroot={}\nreleases=\"$root/releases\"\n{SHELL_HELPERS}",
        quote_str(root)?
    ))
}

/// Shell functions of [`script_prelude`]. Each program a script starts costs the host about
/// a millisecond, so `mkdir` and `rm` start only when there is work for them, and the
/// deploy lock is read with the shell alone.
/// - `dp_mkdir DIR...`: creates the directories unless all exist.
/// - `dp_rm PATH...`: removes the paths unless none exists (dangling links count).
/// - `dp_lock_is RELEASE`: true if the deploy lock names RELEASE; leaves the lock's line
///   in `$dp_cur` (empty without a lock).
/// - `dp_deadline SECONDS WHAT LOG COMMAND...`: runs COMMAND with stdin /dev/null and its
///   output in the file LOG (so that something it leaves running in the background cannot
///   hold the session open), then copies LOG to stderr. Past SECONDS, COMMAND is stopped
///   (TERM, then KILL 5 s later) with everything it started that did not detach into a
///   session or process group of its own (GNU timeout signals its whole process group),
///   and WHAT is named in LOG. In a script run with its stdin held
///   ([`crate::transport::Transport::exec_held`], which sets `dp_held`), it is stopped the
///   same way as soon as that stdin closes: dp died or gave up on the host. Its status is
///   COMMAND's (124 or 137 when stopped at the deadline, 143 when dp went away).
const SHELL_HELPERS: &str = r#"dp_mkdir() { for d; do [ -d "$d" ] || { mkdir -p -- "$@"; return; }; done; }
dp_rm() { for p; do if [ -e "$p" ] || [ -L "$p" ]; then rm -rf -- "$@"; return; fi; done; }
dp_lock_is() { dp_cur=; IFS= read -r dp_cur 2>/dev/null < "$root/.dp/lock" || true; case $dp_cur in *\"release\":\"$1\",*) return 0 ;; esac; return 1; }
dp_deadline() {
  dp_secs=$1 dp_what=$2 dp_log=$3; shift 3
  command -v timeout >/dev/null 2>&1 || { echo "timeout (GNU coreutils) is not installed on this host: $dp_what cannot be bounded" >&2; return 127; }
  : > "$dp_log" || { echo "cannot write $dp_log, where the output of $dp_what goes" >&2; return 1; }
  if [ -z "${dp_held:-}" ]; then
    dp_rc=0; timeout -k 5 "$dp_secs" "$@" </dev/null >>"$dp_log" 2>&1 || dp_rc=$?
  else
    exec 3<&0
    timeout -k 5 "$dp_secs" "$@" </dev/null >>"$dp_log" 2>&1 3<&- &
    dp_job=$!
    # Ends when dp's side of this script's stdin closes; read is the shell's own.
    ( while IFS= read -r dp_line <&3; do :; done; kill -TERM "$dp_job" 2>/dev/null ) &
    dp_watch=$!
    exec 3<&-
    dp_rc=0; wait "$dp_job" || dp_rc=$?
    kill "$dp_watch" 2>/dev/null || true
  fi
  case $dp_rc in 124|137) echo "$dp_what did not finish within ${dp_secs}s: stopped, with what it started" >>"$dp_log" ;; esac
  [ ! -s "$dp_log" ] || cat -- "$dp_log" >&2 || true
  return "$dp_rc"
}
"#;

/// The record's root, or an error message naming what is missing.
pub fn root_of(record: &crate::Record) -> Result<&str, String> {
    record
        .root
        .as_deref()
        .filter(|r| !r.is_empty())
        .ok_or_else(|| "record has no `root`".to_string())
}

/// A shell line that sets `var` to the release `$root/current` points to (empty when there
/// is none), with the shell alone: `cd -P` resolves the link, so no `readlink` process.
pub fn current_release_sh(var: &str) -> String {
    format!(
        "{var}=\nif [ -L \"$root/current\" ] && dp_here=$PWD && cd -P \"$root/current\" 2>/dev/null; then {var}=${{PWD##*/}}; cd \"$dp_here\" 2>/dev/null || cd /; fi\n"
    )
}

/// Shell lines that export `DP_RELEASE` (the shell word `release`), `DP_ROOT` and
/// `DP_PREVIOUS_RELEASE` for the commands dp runs on a host: the shell word `previous`,
/// or when `None` the release `current` points to now; empty when it is `release` itself.
pub fn release_env_sh(release: &str, previous: Option<&str>) -> String {
    let (find, previous) = match previous {
        Some(p) => (String::new(), p),
        None => (current_release_sh("dp_live"), "$dp_live"),
    };
    format!(
        "{find}DP_RELEASE={release} DP_ROOT=$root DP_PREVIOUS_RELEASE={previous}\n\
         [ \"$DP_PREVIOUS_RELEASE\" != \"$DP_RELEASE\" ] || DP_PREVIOUS_RELEASE=\n\
         export DP_RELEASE DP_ROOT DP_PREVIOUS_RELEASE\n"
    )
}

/// The record's release, checked, or an error saying dp-sync must run first.
pub fn release_of(record: &crate::Record) -> Result<&str, String> {
    let release = record
        .release
        .as_deref()
        .ok_or("record has no `release`: run dp-sync first")?;
    check_release_id(release)?;
    Ok(release)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_ids() {
        assert!(check_release_id("20261127T124500Z-3f2a1c9b").is_ok());
        assert!(check_release_id("v1.2_rc-3").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", "a$b", "..", &"x".repeat(129)] {
            assert!(check_release_id(bad).is_err(), "{bad}");
        }
    }
}
