//! dp-deps: make each release's dependencies ready, reusing an environment whenever the
//! lockfile (and interpreter) did not change.
//!
//! Environments live in `<root>/.dp/deps/<key>/`, where the key hashes the lockfiles'
//! contents, the kind, its options and the interpreter version on that host. A hit costs
//! one round trip: the host computes the key, finds `<key>/.dp-complete`, and links the
//! environment into the release (`.venv` for pip, `node_modules` for npm, the configured
//! path for a command). A miss builds the environment at its final path (a virtualenv is
//! not relocatable) under a per-key build lock, and marks it complete only when the build
//! succeeded; an entry without the marker is removed and rebuilt.

mod script;

use dp_core::layout::{release_of, root_of, Script};
use dp_core::lock;
use dp_core::parallel::Sessions;
use dp_core::template::{self, render, Escape};
use dp_core::transport::Transport;
use dp_core::Record;
use serde::Serialize;
use std::time::{Duration, Instant};

/// The step name in records.
pub const STEP: &str = "deps";

/// What kind of environment to build. Each kind's host side (its link in the release,
/// where its programs are, its version, its build) is declared in `sh/kinds.sh`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// pip when the release has requirements.txt, npm when it has package-lock.json,
    /// else nothing.
    Auto,
    /// A Python virtualenv, `pip install -r` each lockfile; linked as `.venv`.
    Pip,
    /// `npm ci`; linked as `node_modules`.
    Npm,
    /// Any command, run in the release with `$DP_DEPS_DIR` set; linked at `link`.
    Command {
        /// The command (a shell script).
        command: String,
        /// Where the environment is linked in the release.
        link: String,
    },
}

impl Kind {
    /// The lockfiles whose content keys this kind's environment when the config names
    /// none, in a release whose files `has` tells: what `sh/kinds.sh` declares on the host
    /// (`dp_kind_auto` picks pip for requirements.txt, else npm for package-lock.json; a
    /// test checks the two agree). A command names its own; none for auto with neither.
    pub fn default_lockfiles(&self, has: impl Fn(&str) -> bool) -> Vec<String> {
        let pip = || vec!["requirements.txt".to_string()];
        let npm = || vec!["package.json".to_string(), "package-lock.json".to_string()];
        match self {
            Kind::Pip => pip(),
            Kind::Npm => npm(),
            Kind::Auto if has("requirements.txt") => pip(),
            Kind::Auto if has("package-lock.json") => npm(),
            Kind::Auto | Kind::Command { .. } => Vec::new(),
        }
    }

    /// Parses `pip`, `npm`, `auto`, or `command` (with its command and link).
    pub fn parse(kind: &str, command: Option<&str>, link: Option<&str>) -> Result<Kind, String> {
        match kind {
            "auto" => Ok(Kind::Auto),
            "pip" => Ok(Kind::Pip),
            "npm" => Ok(Kind::Npm),
            "command" => {
                let command = command
                    .filter(|c| !c.trim().is_empty())
                    .ok_or("kind \"command\" needs a command (--command or `command` in [deps])")?;
                let link = link.unwrap_or("deps").trim_end_matches('/');
                let clean = !link.is_empty()
                    && !link.starts_with('/')
                    && link
                        .split('/')
                        .all(|p| !p.is_empty() && p != "." && p != ".." && p != ".dp");
                if !clean {
                    return Err(format!(
                        "invalid link {link:?}: a relative path inside the release"
                    ));
                }
                Ok(Kind::Command {
                    command: command.to_string(),
                    link: link.to_string(),
                })
            }
            other => Err(format!(
                "unknown dependency kind {other:?} (expected pip, npm, command or auto)"
            )),
        }
    }
}

/// How long building an environment may take by default.
pub const DEFAULT_TIMEOUT: Duration = dp_core::defaults::BUILD_TIMEOUT;

/// How to make dependencies ready.
#[derive(Debug, Clone)]
pub struct DepsOptions {
    /// The kind.
    pub kind: Kind,
    /// Lockfiles relative to the release (default by kind).
    pub lockfiles: Vec<String>,
    /// Extra `pip install` arguments.
    pub pip_args: Vec<String>,
    /// Python interpreter on the hosts.
    pub python: String,
    /// Hosts at once.
    pub jobs: usize,
    /// How long to wait for another deploy building the same environment.
    pub wait: Duration,
    /// How long building an environment may take before it is stopped (with what the
    /// installer started) and the host fails.
    pub timeout: Duration,
    /// Deploy lock lease to renew.
    pub lease: Duration,
    /// When to renew a lease this deploy already holds.
    pub renew: dp_core::lock::Renew,
    /// Host environment variables the installer may see among those that change what
    /// it installs (`PIP_*`, `npm_config_*`); the others are cleared. Their values are
    /// part of the environment's key.
    pub keep_env: Vec<String>,
    /// The build command run in the release once its dependencies are ready.
    pub build: Option<Build>,
}

/// `[build]`: a command run on every host in the new release after its dependencies are
/// ready (before any host switches).
#[derive(Debug, Clone)]
pub struct Build {
    /// The command (a shell script).
    pub command: String,
    /// How long it may run before it is stopped (with what it started).
    pub timeout: Duration,
}

/// The exit status of the deps script when the build command failed.
pub const BUILD_FAILED_STATUS: i32 = 76;

impl DepsOptions {
    /// Checks what can be checked before any host is touched: the names in `keep_env`.
    pub fn check(&self) -> Result<(), String> {
        for name in &self.keep_env {
            if !dp_core::quote::is_shell_name(name) {
                return Err(format!(
                    "[deps] env: {name:?} is not an environment variable name"
                ));
            }
        }
        if self
            .build
            .as_ref()
            .is_some_and(|b| b.command.trim().is_empty())
        {
            return Err("[build] command is empty".into());
        }
        Ok(())
    }

    /// Checks, before any host is touched, that the build command renders for every
    /// record (it is a template: `{release}`, `{root}`, the host's vars).
    pub fn check_templates(&self, records: &[Record]) -> Result<(), String> {
        match &self.build {
            Some(b) => template::check(&b.command, records, Escape::Shell, "[build] command"),
            None => Ok(()),
        }
    }
}

/// What dp-deps did on one host (`steps.deps`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct DepsStats {
    /// `pip`, `npm`, `command`, or `none` (auto found nothing to install).
    pub kind: String,
    /// The environment key (empty for `none`).
    pub key: String,
    /// `hit` (reused) or `built`.
    pub cache: String,
    /// Seconds waited for another deploy building the same key, when it happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_s: Option<u64>,
    /// The build command ran and succeeded (absent without one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<bool>,
    /// Milliseconds on this host.
    pub ms: u64,
}

/// Makes dependencies ready on every record that has not failed.
pub fn run(records: &mut [Record], sessions: &mut Sessions, opts: &DepsOptions) {
    run_skipping(records, sessions, opts, &|_| false)
}

/// [`run`], leaving alone the records for which `skip` says so (`dp deploy` skips those
/// whose dependencies were made ready in the upload's session).
pub fn run_skipping(
    records: &mut [Record],
    sessions: &mut Sessions,
    opts: &DepsOptions,
    skip: &(dyn Fn(&Record) -> bool + Sync),
) {
    sessions.run(records, opts.jobs, STEP, |conn, record| {
        if skip(record) {
            return Ok(());
        }
        let started = Instant::now();
        let mut stats = deps_host(conn, record, opts)?;
        stats.ms = started.elapsed().as_millis() as u64;
        record.set_step(STEP, stats);
        Ok(())
    });
}

/// Makes dependencies ready on one host.
pub fn deps_host(
    conn: &mut dyn Transport,
    record: &Record,
    opts: &DepsOptions,
) -> Result<DepsStats, String> {
    let script = host_script(record, opts)?.into_string();
    let out = conn.run_held(&script).map_err(|e| e.to_string())?;
    interpret(out)
}

/// The script that makes one host's dependencies ready and runs the build command (see
/// [`interpret`]). A host where the release is already live
/// ([`dp_core::gate::already_live`]) gets no build.
pub fn host_script(record: &Record, opts: &DepsOptions) -> Result<Script, String> {
    let root = root_of(record)?;
    let release = release_of(record)?;
    let build = match &opts.build {
        Some(b) if !dp_core::gate::already_live(record) => Some(Build {
            command: render(&b.command, record, release, Escape::Shell)
                .map_err(|e| format!("[build] command: {e}"))?,
            timeout: b.timeout,
        }),
        _ => None,
    };
    script::deps(root, release, opts, build.as_ref()).map_err(|e| e.to_string())
}

/// What [`host_script`] did, read from its output.
pub fn interpret(out: dp_core::transport::Output) -> Result<DepsStats, String> {
    let what = if out.status.code == Some(BUILD_FAILED_STATUS) {
        "the build command ([build])"
    } else {
        "installing dependencies"
    };
    lock::check_status(&out.status, what)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut stats = DepsStats::default();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("kind ") {
            stats.kind = v.to_string();
        } else if let Some(v) = line.strip_prefix("key ") {
            stats.key = v.to_string();
        } else if let Some(v) = line.strip_prefix("cache ") {
            stats.cache = v.to_string();
        } else if line == "build ok" {
            stats.build = Some(true);
        } else if let Some(v) = line.strip_prefix("waited ") {
            stats.waited_s = v.parse().ok().filter(|w| *w > 0);
        }
    }
    if stats.kind.is_empty() {
        return Err(format!("unexpected output from the host: {}", text.trim()));
    }
    Ok(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Kind::default_lockfiles says what sh/kinds.sh does on a host (run here by /bin/sh,
    /// with stub python3, node and npm on PATH).
    #[test]
    fn default_lockfiles_agree_with_the_host_side() {
        let dir = std::env::temp_dir().join(format!("dp-kinds-{}", std::process::id()));
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        for tool in ["python3", "node", "npm"] {
            let p = bin.join(tool);
            std::fs::write(&p, "#!/bin/sh\necho 1.0\n").unwrap();
            std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
                .unwrap();
        }
        let host = |files: &[&str], kind: &str| -> String {
            let rel = dir.join("rel");
            let _ = std::fs::remove_dir_all(&rel);
            std::fs::create_dir_all(&rel).unwrap();
            for f in files {
                std::fs::write(rel.join(f), "").unwrap();
            }
            let script = format!(
                "{}python=python3 kind={kind}\n[ \"$kind\" != auto ] || dp_kind_auto\n\
                 [ \"$kind\" = none ] || \"dp_kind_$kind\"\necho \"${{lockfiles:-}}\"\n",
                dp_core::sh_file!("sh/kinds.sh")
            );
            let out = std::process::Command::new("sh")
                .args(["-c", &script])
                .current_dir(&rel)
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        };
        for (files, kind, name) in [
            (
                &["requirements.txt", "package-lock.json"][..],
                Kind::Auto,
                "auto",
            ),
            (&["package-lock.json"][..], Kind::Auto, "auto"),
            (&[][..], Kind::Auto, "auto"),
            (&[][..], Kind::Pip, "pip"),
            (&[][..], Kind::Npm, "npm"),
        ] {
            let rust = kind.default_lockfiles(|f| files.contains(&f)).join(" ");
            assert_eq!(rust, host(files, name), "{name} with {files:?}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
