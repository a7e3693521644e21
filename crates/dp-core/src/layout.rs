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
/// - `dp_prev_live CURRENT`: prints the release a rollback returns to, from
///   `.dp/history.jsonl`: of the releases that went live on this host (in a deploy or
///   rollback whose result was ok, or that were current when a deploy or rollback
///   started), the one live most recently, other than CURRENT and other than one a
///   rollback to an older release left (so rollbacks walk back), that is still complete
///   on disk. Prints nothing when there
///   is none. A release that failed or never served is never printed.
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
dp_prev_live() {
  [ -f "$root/.dp/history.jsonl" ] || return 0
  # seq: each release's last moment live (line number; + .5 once it went live in that
  # line); first: when it first went live; struck: left by a rollback to an older one.
  awk 'function field(k) { if (match($0, "\"" k "\":\"[^\"]*\"")) return substr($0, RSTART + length(k) + 4, RLENGTH - length(k) - 5); return "" }
    { n++; rel = field("release"); prev = field("previous"); ok = ($0 ~ /"result":"ok"[,}]/)
      if (prev != "") { seq[prev] = n; if (!(prev in first)) first[prev] = n }
      if (ok && rel != "") {
        if (!(rel in first)) first[rel] = n
        if (field("action") == "rollback" && prev != "" && prev != rel && first[rel] < first[prev]) struck[prev] = 1
        seq[rel] = n + 0.5; delete struck[rel]
      } }
    END { for (r in seq) if (!(r in struck)) print seq[r], r }' "$root/.dp/history.jsonl" | sort -rn | while read -r dp_n dp_r; do
    if [ "$dp_r" != "$1" ] && [ -f "$releases/$dp_r/.dp/complete" ]; then printf '%s\n' "$dp_r"; break; fi
  done
}
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

/// Exit status of a script whose host lacks a tool or flag dp's scripts use.
pub const HOST_UNFIT_STATUS: i32 = 69;

/// Shell lines (after [`script_prelude`]) that check, before anything else, that the host
/// has what dp's scripts rely on beyond POSIX, with the exact flags used: GNU cp's
/// `-al --remove-destination` (replacing a hard link, not writing through it), `mv -T`,
/// `sha256sum --quiet --strict -c`, `timeout -k`, `find -maxdepth -mmin`, GNU tar's
/// `-x -p --no-same-owner`, `date -r`, `xargs -0`. BusyBox and BSD tools lack some of
/// these (BusyBox cp takes `--remove-destination` but fails on an existing link). A host
/// that lacks one is refused with [`HOST_UNFIT_STATUS`] and a message naming each
/// missing piece and what to install. A host that passed with the same PATH is not
/// probed again (`.dp/host-ok`, read by the shell alone), unless `always`.
pub fn host_check_sh(always: bool) -> String {
    format!(
        r#"dp_mkdir "$root/.dp"
dp_ok=
if [ -z "{always}" ] && [ -f "$root/.dp/host-ok" ]; then IFS= read -r dp_ok < "$root/.dp/host-ok" || dp_ok=; fi
if [ "$dp_ok" != "v1 $PATH" ]; then
  dp_t="$root/.dp/.probe.$$" dp_miss=
  rm -rf "$dp_t"
  mkdir -p "$dp_t/a/d" "$dp_t/in/d"
  echo old > "$dp_t/a/d/f"; echo new > "$dp_t/in/d/f"
  {{ cp -al "$dp_t/a" "$dp_t/b" && cp -al --remove-destination "$dp_t/in/." "$dp_t/b/" &&
    IFS= read -r dp_x < "$dp_t/b/d/f" && [ "$dp_x" = new ] &&
    IFS= read -r dp_x < "$dp_t/a/d/f" && [ "$dp_x" = old ]; }} >/dev/null 2>&1 ||
    dp_miss="$dp_miss; cp -al --remove-destination (GNU coreutils cp)"
  {{ ln -s a "$dp_t/l1" && mv -T "$dp_t/l1" "$dp_t/l2"; }} >/dev/null 2>&1 || dp_miss="$dp_miss; mv -T (GNU coreutils mv)"
  (cd "$dp_t/a/d" && sha256sum f > ../sums && sha256sum --quiet --strict -c ../sums) >/dev/null 2>&1 ||
    dp_miss="$dp_miss; sha256sum --quiet --strict -c (GNU coreutils sha256sum)"
  timeout -k 1 5 true >/dev/null 2>&1 || dp_miss="$dp_miss; timeout -k (GNU coreutils timeout)"
  find "$dp_t" -maxdepth 0 -mmin +60 >/dev/null 2>&1 || dp_miss="$dp_miss; find -maxdepth -mmin (GNU findutils)"
  {{ (cd "$dp_t" && tar -c -f t.tar a) && mkdir "$dp_t/x" && tar -x -p --no-same-owner -f "$dp_t/t.tar" -C "$dp_t/x"; }} >/dev/null 2>&1 ||
    dp_miss="$dp_miss; tar -x -p --no-same-owner (GNU tar)"
  date -r "$dp_t/a/d/f" +%s >/dev/null 2>&1 || dp_miss="$dp_miss; date -r (GNU coreutils date)"
  printf 'a\0' | xargs -0 true >/dev/null 2>&1 || dp_miss="$dp_miss; xargs -0 (GNU findutils xargs)"
  rm -rf "$dp_t"
  if [ -n "$dp_miss" ]; then
    echo "this host lacks what dp's scripts need: ${{dp_miss#; }}. Install GNU coreutils, findutils and tar, first on the deploy user's PATH ($PATH); BusyBox and BSD tools differ" >&2
    exit {unfit}
  fi
  printf 'v1 %s
' "$PATH" > "$root/.dp/host-ok"
fi
"#,
        always = if always { "1" } else { "" },
        unfit = HOST_UNFIT_STATUS,
    )
}

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

    /// `dp_prev_live` over a history, run by /bin/sh on a scratch root.
    fn prev_live(history: &[(&str, &str, Option<&str>, &str)], current: &str) -> String {
        let root = std::env::temp_dir().join(format!(
            "dp-prev-live-{}-{}",
            std::process::id(),
            history.len()
        ));
        let _ = std::fs::remove_dir_all(&root);
        for r in ["r1", "r2", "r3", "r4"] {
            std::fs::create_dir_all(root.join("releases").join(r).join(".dp")).unwrap();
            std::fs::write(root.join("releases").join(r).join(".dp/complete"), "").unwrap();
        }
        let lines: String = history
            .iter()
            .map(|(action, release, previous, result)| {
                let line = serde_json::json!({"time": "t", "action": action, "release": release,
                    "previous": previous, "user": "u \"result\":\"ok\"", "result": result});
                format!("{line}\n")
            })
            .collect();
        std::fs::create_dir_all(root.join(".dp")).unwrap();
        std::fs::write(root.join(".dp/history.jsonl"), lines).unwrap();
        let script =
            script_prelude(root.to_str().unwrap()).unwrap() + &format!("dp_prev_live {current}\n");
        let out = std::process::Command::new("sh")
            .args(["-c", &script])
            .output()
            .unwrap();
        std::fs::remove_dir_all(&root).unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn the_previous_live_release_is_one_that_served() {
        let ok = "ok";
        // r3 was switched back: never live. r2 is what r3's deploy started from.
        let h = [
            ("deploy", "r1", None, ok),
            ("deploy", "r2", Some("r1"), ok),
            ("deploy", "r3", Some("r2"), "switched-back"),
        ];
        assert_eq!(prev_live(&h, "r2"), "r1");
        // A refused deploy (never switched) changes nothing; a same-id redeploy neither.
        let h = [
            ("deploy", "r1", None, ok),
            ("deploy", "r2", Some("r1"), ok),
            ("deploy", "r3", None, "not-switched"),
            ("deploy", "r2", Some("r2"), ok),
        ];
        assert_eq!(prev_live(&h, "r2"), "r1");
        // A rollback leaves r3 behind: the next rollback goes further back, not to r3.
        let h = [
            ("deploy", "r1", None, ok),
            ("deploy", "r2", Some("r1"), ok),
            ("deploy", "r3", Some("r2"), ok),
            ("rollback", "r2", Some("r3"), ok),
        ];
        assert_eq!(prev_live(&h, "r2"), "r1");
        // ... and a rollback --to a newer release leaves nothing behind.
        let h = [
            ("deploy", "r1", None, ok),
            ("deploy", "r2", Some("r1"), ok),
            ("rollback", "r1", Some("r2"), ok),
            ("rollback", "r2", Some("r1"), ok),
        ];
        assert_eq!(prev_live(&h, "r2"), "r1");
        // Live before a failed migration's deploy counts; a release gone from disk does not.
        let h = [
            ("deploy", "r4", None, ok),
            ("deploy", "r2", Some("r4"), ok),
            ("deploy", "gone", Some("r2"), ok),
        ];
        assert_eq!(prev_live(&h, "r3"), "r2");
        assert_eq!(prev_live(&h, "r2"), "r4");
        assert_eq!(prev_live(&[("deploy", "r1", None, ok)], "r1"), "");
    }

    #[test]
    fn release_ids() {
        assert!(check_release_id("20261127T124500Z-3f2a1c9b").is_ok());
        assert!(check_release_id("v1.2_rc-3").is_ok());
        for bad in ["", "-x", ".x", "a/b", "a b", "a$b", "..", &"x".repeat(129)] {
            assert!(check_release_id(bad).is_err(), "{bad}");
        }
    }
}
