//! dp-migrate: database migrations, tracked in sqlx's `_sqlx_migrations` table, applied
//! exactly once per deploy under a lock, at the right moment: `pre` (expand, before any
//! host switches) or `post` (contract, after every host switched).
//!
//! It is a barrier: it reads every record first, and if any host has failed it applies
//! nothing. A preflight checks the whole state read-only before anything is applied.
//! A failed migration marks every record failed, so no host switches.

pub mod db;
mod exec;
pub mod plan;
pub mod source;

use db::{Db, DbError};
use dp_core::parallel::Sessions;
use dp_core::Record;
use plan::PlanLine;
use serde::Serialize;
use source::{Migration, Phase};
use std::path::PathBuf;
use std::time::{Duration, Instant};

pub use exec::{ExecOptions, PassedEnv, DEFAULT_EXEC_TIMEOUT};

/// The step name in records.
pub const STEP: &str = "migrate";

/// SQL-mode options.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// Database URL (from the environment; never printed).
    pub database_url: String,
    /// Migrations directory (on this machine).
    pub dir: PathBuf,
    /// Which phase to apply.
    pub phase: Phase,
    /// Apply pending migrations older than applied ones.
    pub allow_out_of_order: bool,
    /// How long to wait for another run's lock.
    pub lock_timeout: Duration,
    /// Reach the database through this host (an SSH tunnel).
    pub via: Option<Record>,
    /// Unreachable hosts that may be left out of the deploy (pre phase).
    pub allow_unreachable: usize,
}

/// What dp-migrate did (`steps.migrate`, the same on every record).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MigrateStats {
    /// `sql` or `exec`.
    pub mode: String,
    /// `pre` or `post` (sql mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Versions applied by this run, in order.
    pub applied: Vec<i64>,
    /// Milliseconds waited for another run's lock, when it had to wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<u64>,
    /// The host the command ran on (exec mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The SSH host the database was reached through (`--via`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
    /// Bytes the tunnel carried, both directions (`--via`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub via_bytes: Option<u64>,
    /// The last lines of the command's output (exec mode), with the values of the
    /// variables passed to it redacted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<String>,
    /// Milliseconds in all.
    pub ms: u64,
}

/// Why a run did not complete.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The migration files are unusable.
    #[error(transparent)]
    Source(#[from] source::SourceError),
    /// The preflight refused.
    #[error("refused before applying anything: {0}")]
    Preflight(#[from] plan::PreflightError),
    /// A migration failed (and was rolled back unless it opted out of transactions).
    #[error("migration {version} ({path}) failed and was rolled back: {cause}")]
    Failed {
        /// Version.
        version: i64,
        /// The file.
        path: String,
        /// The database's error.
        cause: String,
    },
    /// The database could not be reached or used.
    #[error("database {url}: {cause}")]
    Db {
        /// The redacted URL.
        url: String,
        /// What happened.
        cause: String,
    },
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The host and port of a `postgres://` URL (port 5432 when it names none).
pub fn host_port(url: &str) -> Option<(String, u16)> {
    let u = url::Url::parse(url).ok()?;
    let host = match u.host()? {
        url::Host::Ipv6(a) => a.to_string(),
        other => other.to_string(),
    };
    Some((host, u.port().unwrap_or(5432)))
}

/// The URL with its host and port replaced by 127.0.0.1:`port` (a tunnel's end).
fn on_local_port(url: &str, port: u16) -> Option<String> {
    let mut u = url::Url::parse(url).ok()?;
    u.set_host(Some("127.0.0.1")).ok()?;
    u.set_port(Some(port)).ok()?;
    Some(u.into())
}

/// Opens the tunnel `opts.via` asks for and returns the URL to use through it.
fn through_via(
    opts: &MigrateOptions,
) -> Result<(String, Option<dp_core::transport::tunnel::Tunnel>), MigrateError> {
    let Some(via) = &opts.via else {
        return Ok((opts.database_url.clone(), None));
    };
    let db_err = db_error(opts);
    let fail = |cause: String| db_err(DbError(cause));
    if opts.database_url.starts_with("sqlite:") {
        return Err(fail(
            "--via needs a network database; SQLite files are local".into(),
        ));
    }
    let (host, port) = host_port(&opts.database_url)
        .ok_or_else(|| fail("cannot find the host in the URL".into()))?;
    match dp_core::transport::Connection::open(via) {
        Ok(dp_core::transport::Connection::Ssh(ssh)) => {
            let tunnel = dp_core::transport::tunnel::Tunnel::open(*ssh, &host, port)
                .map_err(|e| fail(format!("tunnel through {}: {e}", via.host)))?;
            let url = on_local_port(&opts.database_url, tunnel.port)
                .ok_or_else(|| fail("cannot put the tunnel's port in the URL".into()))?;
            Ok((url, Some(tunnel)))
        }
        Ok(_) => Ok((opts.database_url.clone(), None)),
        Err(e) => Err(fail(format!("tunnel through {}: {e}", via.host))),
    }
}

/// Turns a database error into one naming the database (its redacted URL).
fn db_error(opts: &MigrateOptions) -> impl Fn(DbError) -> MigrateError {
    let url = db::redact(&opts.database_url);
    move |e| MigrateError::Db {
        url: url.clone(),
        cause: e.0,
    }
}

/// `opts` with the URL to connect to (through the `--via` tunnel when there is one),
/// and the tunnel, which must live as long as the connections.
fn connectable(
    opts: &MigrateOptions,
) -> Result<(MigrateOptions, Option<dp_core::transport::tunnel::Tunnel>), MigrateError> {
    let (url, tunnel) = through_via(opts)?;
    let opts = MigrateOptions {
        database_url: url,
        via: None,
        ..opts.clone()
    };
    Ok((opts, tunnel))
}

/// Applies the pending migrations of `opts.phase`. Returns what was applied.
pub fn migrate(opts: &MigrateOptions) -> Result<MigrateStats, MigrateError> {
    // Messages name the database as given, not the local end of a tunnel.
    let db_err = db_error(opts);
    let via = opts.via.as_ref().map(|r| r.host.clone());
    let (connect, tunnel) = connectable(opts)?;
    let started = Instant::now();
    let migrations = source::load(&opts.dir)?;
    runtime().block_on(async {
        let (mut db, waited) = Db::open(&connect.database_url, opts.lock_timeout)
            .await
            .map_err(&db_err)?;
        let result = apply_all(&mut db, &migrations, opts, &db_err).await;
        // Keep what was applied before a failure (each migration is its own unit) and
        // always release the lock.
        let closed = db.close().await.map_err(&db_err);
        let applied = result?;
        closed?;
        Ok(MigrateStats {
            mode: "sql".into(),
            phase: Some(opts.phase),
            applied,
            waited_ms: Some(waited.as_millis() as u64).filter(|ms| *ms >= 100),
            host: None,
            via: via.clone(),
            via_bytes: tunnel.as_ref().map(|t| t.bytes()),
            output: None,
            ms: started.elapsed().as_millis() as u64,
        })
    })
}

async fn apply_all(
    db: &mut Db,
    migrations: &[Migration],
    opts: &MigrateOptions,
    db_err: &impl Fn(DbError) -> MigrateError,
) -> Result<Vec<i64>, MigrateError> {
    let applied = db.applied().await.map_err(db_err)?;
    let plan = plan::preflight(migrations, &applied, opts.phase, opts.allow_out_of_order)?;
    let mut done = Vec::new();
    for line in plan.iter().filter(|l| l.would_apply) {
        let m = migrations
            .iter()
            .find(|m| m.version == line.version)
            .expect("planned from these");
        db.apply(m).await.map_err(|e| MigrateError::Failed {
            version: m.version,
            path: m.path.display().to_string(),
            cause: e.0,
        })?;
        done.push(m.version);
    }
    Ok(done)
}

/// The plan for `opts.phase`, read-only: nothing is locked, created or applied.
pub fn dry_run(opts: &MigrateOptions) -> Result<Vec<PlanLine>, MigrateError> {
    let db_err = db_error(opts);
    let (connect, _tunnel) = connectable(opts)?;
    let migrations = source::load(&opts.dir)?;
    runtime().block_on(async {
        let applied = read_applied(&connect.database_url).await.map_err(db_err)?;
        Ok(plan::preflight(
            &migrations,
            &applied,
            opts.phase,
            opts.allow_out_of_order,
        )?)
    })
}

async fn read_applied(url: &str) -> Result<Vec<db::Applied>, DbError> {
    if url.starts_with("sqlite:") {
        let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
        let path = path.split('?').next().unwrap_or(path);
        if !std::path::Path::new(path).exists() {
            return Ok(Vec::new());
        }
    }
    let mut db = Db::open_read_only(url).await?;
    let applied = if db.has_table().await? {
        db.applied().await?
    } else {
        Vec::new()
    };
    db.close().await?;
    Ok(applied)
}

/// One line of `dp-migrate status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusLine {
    /// Version.
    pub version: i64,
    /// Name.
    pub name: String,
    /// `pre`, `post`, or null when the file is missing.
    pub phase: Option<Phase>,
    /// When it was applied; null when pending.
    pub applied_at: Option<String>,
    /// Whether the file still matches what was applied; null when pending.
    pub checksum_ok: Option<bool>,
    /// False for a dirty row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub success: Option<bool>,
    /// The file; null when it is missing.
    pub file: Option<String>,
}

/// Every migration, in files or in the table, with its state.
pub fn status(url: &str, dir: &std::path::Path) -> Result<Vec<StatusLine>, MigrateError> {
    let migrations = source::load(dir)?;
    let redacted = db::redact(url);
    let applied = runtime()
        .block_on(read_applied(url))
        .map_err(|e| MigrateError::Db {
            url: redacted,
            cause: e.0,
        })?;
    let mut versions: Vec<i64> = migrations
        .iter()
        .map(|m| m.version)
        .chain(applied.iter().map(|a| a.version))
        .collect();
    versions.sort_unstable();
    versions.dedup();
    Ok(versions
        .into_iter()
        .map(|v| {
            let m = migrations.iter().find(|m| m.version == v);
            let a = applied.iter().find(|a| a.version == v);
            StatusLine {
                version: v,
                name: m
                    .map(|m| m.description.clone())
                    .or(a.map(|a| a.description.clone()))
                    .unwrap_or_default(),
                phase: m.map(|m| m.phase),
                applied_at: a.map(|a| a.installed_on.clone()),
                checksum_ok: a.map(|a| m.is_some_and(|m| m.checksum == a.checksum)),
                success: a.map(|a| a.success).filter(|s| !s),
                file: m.map(|m| m.path.display().to_string()),
            }
        })
        .collect())
}

/// The barrier: true when a migration may run for these records. Before the switch
/// (pre phase, exec), every host must be fine, except up to `allow_unreachable` hosts that
/// could not be connected to at all; after it (post phase), every host must be.
pub fn may_migrate(records: &[Record], phase: Phase, allow_unreachable: usize) -> bool {
    match phase {
        Phase::Pre => dp_core::gate::check(records, allow_unreachable).is_ok(),
        Phase::Post => !records.iter().any(Record::failed),
    }
}

/// The barrier of [`may_migrate`], saying why on the records when it refuses: before the
/// switch, each record that has not failed is marked not switched, naming the host and
/// step that stopped the deploy (so dp-restart switches nothing); after it, those records
/// get `steps.migrate_post.skipped` (contract migrations wait until every host runs the
/// new release). When the release is already live everywhere
/// ([`dp_core::gate::all_already_live`]), nothing runs and the step says `skipped`.
fn barrier(records: &mut [Record], phase: Phase, allow_unreachable: usize) -> bool {
    let interrupted = dp_core::interrupt::interrupted();
    if interrupted && phase == Phase::Pre {
        for r in records.iter_mut() {
            r.fail(STEP, "interrupted before the migration: nothing migrated");
        }
        return false;
    }
    let may = match phase {
        Phase::Pre => dp_core::gate::hold_back(records, STEP, allow_unreachable).is_ok(),
        Phase::Post => {
            let why = match records.iter().find(|r| r.failed()) {
                Some(first) => format!(
                    "not every host runs the new release ({} failed in {}); run the deploy again",
                    first.host,
                    first
                        .error
                        .as_ref()
                        .map(|e| e.step.as_str())
                        .unwrap_or_default()
                ),
                None if interrupted => "interrupted before the migration".to_string(),
                None => return true,
            };
            for r in records.iter_mut().filter(|r| !r.failed()) {
                r.set_step(POST_STEP, serde_json::json!({ "skipped": why }));
            }
            false
        }
    };
    // The same release with the same content is live everywhere already: a redeploy
    // of it is a no-op (dp-sync --force redeploys).
    if may && dp_core::gate::all_already_live(records) {
        let key = step_of(phase);
        let why = "the release is already live on every host with this content";
        for r in records.iter_mut().filter(|r| !r.failed()) {
            r.set_step(key, serde_json::json!({ "skipped": why }));
        }
        return false;
    }
    may
}

/// Where the post phase is recorded (the pre phase's `steps.migrate` stays visible).
pub const POST_STEP: &str = "migrate_post";

/// The record step a phase's result goes in.
fn step_of(phase: Phase) -> &'static str {
    match phase {
        Phase::Pre => STEP,
        Phase::Post => POST_STEP,
    }
}

/// SQL mode over records: migrate once, record the result on every record that has not
/// failed (or fail them all).
pub fn run_sql(records: &mut [Record], opts: &MigrateOptions) {
    if !barrier(records, opts.phase, opts.allow_unreachable) {
        return;
    }
    let key = step_of(opts.phase);
    let live = records.iter_mut().filter(|r| !r.failed());
    match migrate(opts) {
        Ok(stats) => live.for_each(|r| r.set_step(key, &stats)),
        Err(e) => live.for_each(|r| r.fail(STEP, e.to_string())),
    }
}

/// Exec mode over records: run the framework's command once, on the first host with
/// role `migrate` (else the first host), in its new release: before the switch (pre
/// phase) or after every host switched (post phase).
pub fn run_exec(records: &mut [Record], sessions: &mut Sessions, opts: &ExecOptions) {
    if !barrier(records, opts.phase, opts.allow_unreachable) {
        return;
    }
    let key = step_of(opts.phase);
    let started = Instant::now();
    let live = |r: &Record| !r.failed();
    let Some(chosen) = records
        .iter()
        .position(|r| live(r) && r.has_role("migrate"))
        .or_else(|| records.iter().position(live))
    else {
        return;
    };
    // Once started, the migration runs to its end (or its deadline), even after an
    // interrupt: a migration cut halfway is worse than one that finishes.
    let result = dp_core::interrupt::critical(|| exec::run_on(records, chosen, sessions, opts));
    let mut stats = MigrateStats {
        mode: "exec".into(),
        phase: Some(opts.phase),
        applied: Vec::new(),
        waited_ms: None,
        host: Some(records[chosen].host.clone()),
        via: None,
        via_bytes: None,
        output: None,
        ms: started.elapsed().as_millis() as u64,
    };
    match result {
        Ok(output) => {
            stats.output = Some(output).filter(|o| !o.is_empty());
            records
                .iter_mut()
                .filter(|r| live(r))
                .for_each(|r| r.set_step(key, &stats))
        }
        Err(message) => {
            let host = records[chosen].host.clone();
            records.iter_mut().for_each(|r| {
                r.fail(
                    STEP,
                    format!("migration command on {host} failed: {message}"),
                )
            });
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn host_port() {
        let url = "postgres://u:p%40ss@db.internal:6543/app?sslmode=disable";
        assert_eq!(
            super::host_port(url),
            Some(("db.internal".to_string(), 6543))
        );
        assert_eq!(
            super::on_local_port(url, 40001).as_deref(),
            Some("postgres://u:p%40ss@127.0.0.1:40001/app?sslmode=disable")
        );
        assert_eq!(
            super::host_port("postgresql://[::1]/app"),
            Some(("::1".to_string(), 5432))
        );
    }
}
