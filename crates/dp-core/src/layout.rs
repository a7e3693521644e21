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

/// A shell file of the host side as it is sent: without its comment lines and blank
/// lines, which would otherwise travel with every script. (No line of dp's scripts that
/// starts with `#` is inside a quoted string.)
pub fn strip_comments(text: &str) -> String {
    text.lines()
        .filter(|l| {
            let t = l.trim_start();
            !t.is_empty() && !t.starts_with('#')
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// A host-side shell file (`include_str!` of a `.sh` file), as sent ([`strip_comments`]),
/// made once per run.
#[macro_export]
macro_rules! sh_file {
    ($path:literal) => {{
        static TEXT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
        TEXT.get_or_init(|| $crate::layout::strip_comments(include_str!($path)))
            .as_str()
    }};
}

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

/// The helpers of `sh/helpers.sh` and of `sh/lock.sh` (the deploy lock's functions), one
/// function each: (name, definition), in file order.
fn helpers() -> &'static [(String, String)] {
    static HELPERS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    HELPERS.get_or_init(|| {
        let mut all: Vec<(String, String)> = Vec::new();
        let files = [
            crate::sh_file!("sh/helpers.sh"),
            crate::sh_file!("sh/lock.sh"),
        ];
        for line in files.iter().flat_map(|f| f.lines()) {
            // A definition starts at the line's start: `name() {`.
            let name = line.split_once("() ").map(|(n, _)| n).filter(|n| {
                !n.is_empty() && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
            });
            match (name, all.last_mut()) {
                (Some(name), _) => all.push((name.to_string(), format!("{line}\n"))),
                (None, Some((_, text))) => {
                    text.push_str(line);
                    text.push('\n');
                }
                (None, None) => panic!("helpers: {line:?} is outside a function"),
            }
        }
        all
    })
}

/// Whether `text` names `word` as a whole word (shell names: letters, digits, `_`).
fn names(text: &str, word: &str) -> bool {
    let is_name = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    text.match_indices(word).any(|(i, _)| {
        let before = i.checked_sub(1).map(|j| text.as_bytes()[j]);
        let after = text.as_bytes().get(i + word.len()).copied();
        !before.is_some_and(is_name) && !after.is_some_and(is_name)
    })
}

/// The helper definitions `body` uses, with those they use in turn: each script carries
/// only its own (all of them would be about 4 kB per script).
fn helpers_for(body: &str) -> String {
    let all = helpers();
    let mut need = vec![false; all.len()];
    loop {
        let mut more = false;
        for i in 0..all.len() {
            if !need[i]
                && (names(body, &all[i].0)
                    || (0..all.len()).any(|j| need[j] && names(&all[j].1, &all[i].0)))
            {
                need[i] = true;
                more = true;
            }
        }
        if !more {
            break;
        }
    }
    all.iter()
        .zip(need)
        .filter(|(_, n)| *n)
        .map(|((_, text), _)| text.as_str())
        .collect()
}

/// A host-side script as it is sent: assignments `root=...` and `releases=...` (then
/// "$root" and "$releases" are the deploy root and its releases), the helpers
/// ([`helpers`]) the script uses, then pieces that are shell files (`sh_file!`), each
/// after its values as quoted assignments. A script sent inside another
/// ([`Script::into_inner`]) leaves its helpers to the outer one, which then carries each
/// once for both.
#[derive(Debug, Clone)]
pub struct Script {
    head: String,
    body: String,
}

impl Script {
    /// A script for the deploy root `root`.
    pub fn new(root: &str) -> Result<Script, QuoteError> {
        let root = root.trim_end_matches('/');
        let root = if root.is_empty() { "/" } else { root };
        Ok(Script {
            head: format!(
                "set -e\numask 022\nunset CDPATH\nroot={}\nreleases=\"$root/releases\"\n",
                quote_str(root)?
            ),
            body: String::new(),
        })
    }

    /// `name=value`, the value quoted.
    pub fn set(&mut self, name: &str, value: &str) -> Result<&mut Self, QuoteError> {
        self.body
            .push_str(&format!("{name}={}\n", quote_str(value)?));
        Ok(self)
    }

    /// `name=N`: a number.
    pub fn num(&mut self, name: &str, n: impl std::fmt::Display) -> &mut Self {
        self.body.push_str(&format!("{name}={n}\n"));
        self
    }

    /// Text dp made: a shell file, or lines another module's function returned.
    pub fn push(&mut self, text: &str) -> &mut Self {
        self.body.push_str(text);
        self
    }

    /// The script.
    pub fn into_string(self) -> String {
        let helpers = helpers_for(&self.body);
        self.head + &helpers + &self.body
    }

    /// The script without its helpers, to be pushed into another [`Script`] for the same
    /// root, whose [`Script::into_string`] defines the helpers both use, once, before
    /// either runs (a subshell sees them too).
    pub fn into_inner(self) -> String {
        self.head + &self.body
    }
}

/// Exit status of a script whose host lacks a tool or flag dp's scripts use.
pub const HOST_UNFIT_STATUS: i32 = 69;

/// Shell lines (in a [`Script`]) that check, before anything else, that the host
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
        "dp_check_always={}\ndp_unfit_status={HOST_UNFIT_STATUS}\n{}",
        if always { "1" } else { "''" },
        crate::sh_file!("sh/host_check.sh"),
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

/// Shell lines defining `dp_cleanup KEEP PREVIOUS [ROLLBACK]`: what a finished deploy may
/// remove. Complete releases beyond the newest KEEP (by completion time, `dp_by_age`;
/// never `current`, never PREVIOUS, and after a rollback never the release the next
/// rollback returns to), leftovers of interrupted syncs, and dependency environments that
/// no remaining release uses (never one being built). Releases are renamed away at once and
/// deleted in the background. Prints `removed release R`, `removed leftover D` and
/// `removed deps K` lines.
pub fn cleanup_sh() -> &'static str {
    crate::sh_file!("sh/cleanup.sh")
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
        let mut script = Script::new(root.to_str().unwrap()).unwrap();
        script.push(&format!("dp_prev_live {current}\n"));
        let script = script.into_string();
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
    fn a_script_carries_the_helpers_it_uses_and_those_they_use() {
        let mut s = Script::new("/srv/app").unwrap();
        s.push("dp_release_env \"$rel\"\n");
        let text = s.into_string();
        assert!(text.contains("dp_release_env() {"), "{text}");
        assert!(
            text.contains("dp_current() {"),
            "used by dp_release_env: {text}"
        );
        assert!(!text.contains("dp_deadline() {"), "{text}");
        assert!(!text.contains("dp_prev_live() {"), "{text}");
        // Every helper is a function of its own.
        let all: Vec<&str> = helpers().iter().map(|(n, _)| n.as_str()).collect();
        assert!(
            all.contains(&"dp_prev_live") && all.contains(&"dp_deadline"),
            "{all:?}"
        );
        assert!(names("a dp_cur_rel b", "dp_cur_rel") && !names("dp_current", "dp_cur"));
    }

    #[test]
    fn a_script_inside_another_shares_its_helpers_once() {
        let root = std::env::temp_dir().join(format!("dp-inner-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let root_text = root.to_str().unwrap();
        // The lock's helpers as those of helpers.sh: the outer takes it, the inner, in a
        // subshell as a then-script runs, holds it and makes a directory.
        let lock =
            crate::lock::acquire_script("r1", std::time::Duration::from_secs(60), false).unwrap();
        let mut inner = Script::new(root_text).unwrap();
        inner.push(&lock).push("dp_mkdir \"$root/made\"\n");
        let mut outer = Script::new(root_text).unwrap();
        outer
            .push(&lock)
            .push(&format!("(\n{})\n", inner.into_inner()));
        let text = outer.into_string();
        for definition in ["dp_lock() {", "dp_mkdir() {", "dp_lock_is() {"] {
            assert_eq!(text.matches(definition).count(), 1, "{definition}: {text}");
        }
        let out = std::process::Command::new("sh")
            .args(["-c", &text])
            .output()
            .unwrap();
        let made = root.join("made").is_dir();
        let lock_file = std::fs::read_to_string(root.join(".dp/lock")).unwrap_or_default();
        std::fs::remove_dir_all(&root).unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "lock taken\nlock held\n"
        );
        assert!(
            made && lock_file.contains("\"release\":\"r1\""),
            "{lock_file}"
        );
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
