//! Framework mode: run the app's own migration command (`python manage.py migrate`) once,
//! on one host, inside the new release, with its environment first on PATH, under the
//! deploy lock of that release.

use dp_core::layout::{release_of, root_of, script_prelude};
use dp_core::lock;
use dp_core::parallel::Sessions;
use dp_core::quote::quote_str;
use dp_core::transport::Transport;
use dp_core::Record;
use std::time::Duration;

/// Exec-mode options.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    /// The command (a shell script), run in the release directory.
    pub command: String,
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
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(30 * 60);

pub(crate) fn run_on(
    records: &mut [Record],
    chosen: usize,
    sessions: &mut Sessions,
    opts: &ExecOptions,
) -> Result<(), String> {
    sessions.run_one(records, chosen, |conn, record| {
        exec_host(conn, record, opts)
    })
}

fn exec_host(conn: &mut dyn Transport, record: &Record, opts: &ExecOptions) -> Result<(), String> {
    let root = root_of(record)?;
    let release = release_of(record)?;
    let mut s = script_prelude(root).map_err(|e| e.to_string())?;
    s.push_str(
        &lock::acquire_script(release, opts.lease, opts.renew.due()).map_err(|e| e.to_string())?,
    );
    s.push_str(&format!(
        r#"{env}cd "$releases"/{rel}
PATH="$PWD/.venv/bin:$PWD/node_modules/.bin:$PATH"
export PATH
dp_locked dp_deadline {secs} 'the migration command' "$root/.dp/migrate.log" sh -c {cmd}
"#,
        secs = opts.timeout.as_secs().max(1),
        env =
            dp_core::layout::release_env_sh(&quote_str(release).map_err(|e| e.to_string())?, None,),
        rel = quote_str(release).map_err(|e| e.to_string())?,
        cmd = quote_str(&opts.command).map_err(|e| e.to_string())?,
    ));
    let out = conn.run_held(&s).map_err(|e| e.to_string())?;
    lock::check_status(&out.status, &format!("`{}`", opts.command))
}
