//! Framework mode: run the app's own migration command (`python manage.py migrate`) once,
//! on one host, inside the new release, with its environment first on PATH, under the
//! deploy lock of that release.

use dp_core::layout::{release_of, root_of, Script};
use dp_core::lock;
use dp_core::parallel::Sessions;
use dp_core::quote::QuoteError;
use dp_core::template::{render, Escape};
use dp_core::transport::Transport;
use dp_core::Record;
use std::time::Duration;

/// Variables of the deploying machine passed to the command on the host: through its
/// stdin, never in argv, records or logs (its output is redacted of their values).
#[derive(Clone, Default)]
pub struct PassedEnv(Vec<(String, String)>);

impl std::fmt::Debug for PassedEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(name, _)| name))
            .finish()
    }
}

impl PassedEnv {
    /// The variables named in `names` that are set here (non-empty). A name that is not
    /// a variable name, or a value with a newline or NUL, is an error.
    pub fn from_names(names: &[String]) -> Result<PassedEnv, String> {
        let mut vars = Vec::new();
        for name in names {
            if !dp_core::quote::is_shell_name(name) {
                return Err(format!(
                    "[migrate] env: {name:?} is not an environment variable name"
                ));
            }
            let Some(value) = std::env::var_os(name) else {
                continue;
            };
            let value = value
                .into_string()
                .map_err(|_| format!("{name} is not valid UTF-8"))?;
            if value.contains(['\n', '\0']) {
                return Err(format!(
                    "{name} holds a newline: it cannot be passed to the host"
                ));
            }
            if !value.is_empty() {
                vars.push((name.clone(), value));
            }
        }
        Ok(PassedEnv(vars))
    }

    /// `text` with every passed value (of 4 bytes or more) replaced by `***`.
    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for (_, value) in &self.0 {
            if value.len() >= 4 {
                out = out.replace(value.as_str(), "***");
            }
        }
        out
    }
}

/// Exec-mode options.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The command (a shell script), run in the release directory.
    pub command: String,
    /// `pre`: once, before any host switches; `post`: once, after every host runs the
    /// new release.
    pub phase: crate::source::Phase,
    /// The deploying machine's variables the command gets.
    pub env: PassedEnv,
    /// Deploy lock lease to renew.
    pub lease: Duration,
    /// When to renew a lease this deploy already holds.
    pub renew: dp_core::lock::Renew,
    /// Unreachable hosts that may be left out of the deploy.
    pub allow_unreachable: usize,
    /// How long the command may run before it is stopped (with what it started).
    pub timeout: Duration,
}

/// How long the migration command may run by default.
pub const DEFAULT_EXEC_TIMEOUT: Duration = dp_core::defaults::EXEC_TIMEOUT;

impl ExecOptions {
    /// Checks, before any host is touched, that the command renders for every record (it
    /// is a template: `{release}`, `{root}`, the host's vars).
    pub fn check(&self, records: &[Record]) -> Result<(), String> {
        dp_core::template::check(
            &self.command,
            records,
            Escape::Shell,
            "the migration command",
        )
    }
}

/// Lines of the command's output kept in `steps.migrate.output` (and shown with -v).
const OUTPUT_LINES: usize = 20;

/// Runs the command on the chosen host; its last lines of output (redacted) on success.
pub(crate) fn run_on(
    records: &mut [Record],
    chosen: usize,
    sessions: &mut Sessions,
    opts: &ExecOptions,
) -> Result<String, String> {
    let mut output = String::new();
    sessions.run_one(records, chosen, |conn, record| {
        output = exec_host(conn, record, opts)?;
        Ok(())
    })?;
    Ok(output)
}

fn exec_host(
    conn: &mut dyn Transport,
    record: &Record,
    opts: &ExecOptions,
) -> Result<String, String> {
    let root = root_of(record)?;
    let release = release_of(record)?;
    let cmd = render(&opts.command, record, release, Escape::Shell).map_err(|e| e.to_string())?;
    // The passed variables come first on stdin, one line each (read by the shell alone,
    // which reads no further than each newline), so they are in no argv on the host.
    let mut reads = String::new();
    let mut input = String::new();
    for (name, value) in &opts.env.0 {
        dp_core::transport::live::hide(value);
        reads.push_str(&format!("IFS= read -r {name} || true\nexport {name}\n"));
        input.push_str(value);
        input.push('\n');
    }
    // After the switch the deploy's lock is given back already: the post command takes
    // it for its run and gives it back after.
    let (what, log, give_back) = match opts.phase {
        crate::source::Phase::Pre => ("the migration command", "migrate.log", ""),
        crate::source::Phase::Post => {
            ("the post-switch migration command", "migrate_post.log", "1")
        }
    };
    let script = || -> Result<String, QuoteError> {
        let mut s = Script::new(root)?;
        s.push(&reads)
            .push(&lock::acquire_script(
                release,
                opts.lease,
                opts.renew.due(),
            )?)
            .set("rel", release)?
            .set("what", what)?
            .set("log", log)?
            .set("cmd", &cmd)?
            .num("secs", opts.timeout.as_secs().max(1))
            .set("give_back", give_back)?
            .push(dp_core::sh_file!("sh/exec.sh"));
        Ok(s.into_string())
    };
    let s = script().map_err(|e| e.to_string())?;
    let out = conn
        .run_held_with(&s, input.as_bytes())
        .map_err(|e| opts.env.redact(&e.to_string()))?;
    lock::check_status(&out.status, &format!("`{}`", opts.command))
        .map_err(|e| opts.env.redact(&e))?;
    // dp_deadline copied the command's output to stderr.
    Ok(opts.env.redact(&dp_core::transport::tail_lines(
        &out.status.stderr,
        OUTPUT_LINES,
    )))
}
