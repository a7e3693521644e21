//! `dp-migrate`: apply database migrations once, at the right moment, for a deploy.

use crate::args::load_optional_config;
use crate::io::{read_input, write_output};
use clap::{Parser, Subcommand};
use dp_core::parallel::Sessions;
use dp_core::Exit;
use dp_migrate::source::Phase;
use dp_migrate::{ExecOptions, MigrateOptions};
use std::io::IsTerminal;
use std::path::PathBuf;

/// Apply pending database migrations once per deploy, under a lock, at the right moment.
///
/// A barrier: all records are read first; if any host has failed, nothing is migrated,
/// every other record is marked not switched, naming the host and step that stopped the
/// deploy (so dp-restart switches no host), and the exit status is 1. --allow-unreachable
/// N lets up to N hosts that could not be connected to at all be left out instead. SQL
/// files `<version>_<name>.sql` are tracked in sqlx's `_sqlx_migrations` table (version, description, checksum, execution time).
/// Before anything is applied, a read-only preflight checks that applied files are
/// unchanged and present, that no row is dirty, and that nothing pending is older than
/// what is applied. `--phase pre` (before the switch) applies expand migrations;
/// `--phase post` (after every host switched) applies those in `post/` or tagged
/// `-- dp:post`. A failed migration is rolled back and fails every record, so no host
/// switches. With --exec the framework's own command runs once instead, on the first
/// host with role `migrate`, inside the new release.
///
/// The database URL comes from DATABASE_URL and never appears in records, logs or errors.
#[derive(Debug, Parser)]
#[command(
    name = "dp-migrate",
    version,
    args_conflicts_with_subcommands = true,
    disable_help_subcommand = true
)]
pub struct Args {
    /// `status`: one JSON line per migration (version, name, phase, applied_at, checksum_ok).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Database URL (prefer the DATABASE_URL environment variable: argv is visible to
    /// other users of the machine).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, global = true)]
    pub database_url: Option<String>,
    /// Config file for `[migrate]` (used when it exists).
    #[arg(
        long,
        short = 'c',
        default_value = "deploy.toml",
        env = "DP_CONFIG",
        global = true
    )]
    pub config: PathBuf,
    /// Migrations directory (default: `dir` in [migrate], else `<source>/migrations`).
    #[arg(long, global = true)]
    pub dir: Option<PathBuf>,
    /// Which migrations to apply: `pre` (expand, before the switch) or `post` (contract).
    #[arg(long, default_value = "pre", value_parser = ["pre", "post"])]
    pub phase: String,
    /// Print the plan as JSON lines and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, value_name = "DURATION", value_parser = dp_core::config::parse_duration,
        help = crate::args::or_default("How long to wait for another run's lock",
            "`lock_timeout` in [migrate]", dp_core::defaults::text(dp_core::defaults::MIGRATE_LOCK_TIMEOUT)))]
    pub lock_timeout: Option<std::time::Duration>,
    /// Apply pending migrations older than applied ones.
    #[arg(long)]
    pub allow_out_of_order: bool,
    /// Reach the database through this host (one of the input records) over SSH.
    #[arg(long, value_name = "HOST")]
    pub via: Option<String>,
    /// Framework mode: run this command once in the new release instead of SQL files
    /// (default: `exec` in [migrate]; with --phase post, `exec_post`). With --phase post
    /// it runs only when every host runs the new release.
    #[arg(long, value_name = "CMD")]
    pub exec: Option<String>,
    /// Variables of this machine the --exec command gets, passed on its stdin (never in
    /// argv, records or logs; their values are redacted from its output). Comma-separated
    /// names; default: `env` in [migrate], else DATABASE_URL (when set).
    #[arg(long, value_name = "NAMES", value_delimiter = ',')]
    pub env: Option<Vec<String>>,
    #[arg(long, value_name = "DURATION", value_parser = dp_core::config::parse_duration,
        help = crate::args::or_default("How long the --exec command may run before it is stopped, \
            with what it started",
            "`exec_timeout` in [migrate]", dp_core::defaults::text(dp_core::defaults::EXEC_TIMEOUT)))]
    pub exec_timeout: Option<std::time::Duration>,
    /// The deploy lock lease.
    #[command(flatten)]
    pub lease: crate::args::LeaseArg,
    /// Unreachable hosts that may be left out.
    #[command(flatten)]
    pub allow_unreachable: crate::args::AllowUnreachableArg,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print one JSON line per migration: version, name, phase, applied_at, checksum_ok.
    Status,
}

/// Runs `dp-migrate`.
pub fn run() -> anyhow::Result<Exit> {
    exec(Args::parse())
}

/// Runs `dp-migrate` with parsed arguments.
pub fn exec(args: Args) -> anyhow::Result<Exit> {
    let config = load_optional_config(&args.config, std::env::var_os("DP_CONFIG").is_some())?;
    let section = config
        .as_ref()
        .and_then(|c| c.migrate.clone())
        .unwrap_or_default();
    let dir = match (&args.dir, &config) {
        (Some(d), _) => d.clone(),
        (None, Some(c)) => c.migrations_dir(),
        (None, None) => PathBuf::from("migrations"),
    };
    let url = || {
        args.database_url
            .clone()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!("no database: set DATABASE_URL (or --database-url), or use --exec")
            })
    };
    if let Some(Command::Status) = args.command {
        let lines = dp_migrate::status(&url()?, &dir)?;
        print_lines(&lines)?;
        return Ok(Exit::Ok);
    }
    let phase = if args.phase == "post" {
        Phase::Post
    } else {
        Phase::Pre
    };
    // Framework mode: --exec, or `exec`/`exec_post` in [migrate]. Its post phase runs
    // `exec_post` (or --exec given with --phase post).
    let framework = args.exec.is_some() || section.exec.is_some() || section.exec_post.is_some();
    let exec_cmd = args.exec.clone().or(match phase {
        Phase::Pre => section.exec.clone(),
        Phase::Post => section.exec_post.clone(),
    });
    if !framework && (args.dir.is_some() || section.dir.is_some()) && !dir.is_dir() {
        anyhow::bail!("migrations directory {} is not a directory", dir.display());
    }
    // Dry runs read no records unless a tunnel host must come from them.
    let via_name = args.via.clone().or(section.via.clone());
    let mut records = if std::io::stdin().is_terminal() || (args.dry_run && via_name.is_none()) {
        Vec::new()
    } else {
        read_input("-")?
    };
    let via = match &via_name {
        None => None,
        Some(name) => Some(
            records
                .iter()
                .find(|r| &r.host == name)
                .cloned()
                .ok_or_else(|| {
                    anyhow::anyhow!("--via {name}: no such host in the input records")
                })?,
        ),
    };
    if args.dry_run {
        let mut opts = sql_options(url()?, dir, phase, &args, &section);
        opts.via = via;
        print_lines(&dp_migrate::dry_run(&opts)?)?;
        return Ok(Exit::Ok);
    }
    if framework && exec_cmd.is_none() {
        // Nothing to run in this phase: the records pass through.
        write_output(&records)?;
        return Ok(Exit::for_records(&records));
    }
    match exec_cmd {
        Some(command) => {
            let env_names = args
                .env
                .clone()
                .or(section.env.clone())
                .unwrap_or_else(|| vec!["DATABASE_URL".into()]);
            let opts = ExecOptions {
                command,
                phase,
                env: dp_migrate::PassedEnv::from_names(&env_names).map_err(anyhow::Error::msg)?,
                lease: args.lease.lease,
                renew: dp_core::lock::Renew::Always,
                allow_unreachable: args.allow_unreachable.get(config.as_ref()),
                timeout: args
                    .exec_timeout
                    .or(section.exec_timeout)
                    .unwrap_or(dp_migrate::DEFAULT_EXEC_TIMEOUT),
            };
            opts.check(&records).map_err(anyhow::Error::msg)?;
            dp_migrate::run_exec(&mut records, &mut Sessions::new(), &opts);
        }
        None => {
            let mut opts = sql_options(url()?, dir, phase, &args, &section);
            opts.via = via;
            opts.allow_unreachable = args.allow_unreachable.get(config.as_ref());
            if records.is_empty() && stdin_is_pipe() {
                // The tool before this one printed no host: it failed, or selected none.
                // Either way there is no deploy to migrate for.
                eprintln!(
                    "dp-migrate: no host records on stdin (did the tool before it fail?): nothing migrated; \
                     to migrate without hosts, give it no stdin (</dev/null)"
                );
                return Ok(Exit::HostFailed);
            }
            if records.is_empty() {
                // Standalone use: no record to carry the result, so stderr does.
                return Ok(match dp_migrate::migrate(&opts) {
                    Ok(stats) => {
                        eprintln!(
                            "dp-migrate: {} phase: applied {:?}",
                            args.phase, stats.applied
                        );
                        Exit::Ok
                    }
                    Err(e) => {
                        eprintln!("dp-migrate: {e}");
                        Exit::HostFailed
                    }
                });
            }
            // Anything to apply? (A read-only look, taken only when it matters; through
            // --via it is not worth a second tunnel.) Without, there is nothing to keep the
            // hosts' lease alive through.
            let pending = || {
                opts.via.is_some()
                    || dp_migrate::dry_run(&opts).map_or(true, |p| p.iter().any(|l| l.would_apply))
            };
            if phase == Phase::Pre
                && dp_migrate::may_migrate(&records, phase, opts.allow_unreachable)
                && pending()
            {
                // The hosts are locked until dp-restart: renew the lease first (a host
                // that lost its lock stops the migration), then through a long migration.
                let lease = args.lease.lease;
                dp_core::lock::keep_renewed(
                    &mut records,
                    &mut Sessions::new(),
                    lease,
                    usize::from(dp_core::defaults::JOBS),
                    dp_core::lock::Renew::Always,
                    dp_migrate::STEP,
                    |r| dp_migrate::run_sql(r, &opts),
                );
            } else {
                dp_migrate::run_sql(&mut records, &opts);
            }
        }
    }
    dp_core::lock::release_if_interrupted(
        &mut records,
        &mut Sessions::new(),
        usize::from(dp_core::defaults::JOBS),
        dp_migrate::STEP,
    );
    if let Some(first) = records
        .iter()
        .find(|r| r.error.as_ref().is_some_and(|e| e.step == dp_migrate::STEP))
    {
        eprintln!(
            "dp-migrate: {}",
            first
                .error
                .as_ref()
                .map(|e| e.message.as_str())
                .unwrap_or_default()
        );
    }
    write_output(&records)?;
    Ok(Exit::for_records(&records))
}

/// True when stdin is a pipe or socket (dp-migrate inside a pipeline), not a terminal,
/// a file or /dev/null (dp-migrate on its own).
fn stdin_is_pipe() -> bool {
    use std::os::fd::AsFd;
    use std::os::unix::fs::FileTypeExt;
    let Ok(fd) = std::io::stdin().as_fd().try_clone_to_owned() else {
        return false;
    };
    std::fs::File::from(fd)
        .metadata()
        .map(|m| m.file_type().is_fifo() || m.file_type().is_socket())
        .unwrap_or(false)
}

fn sql_options(
    database_url: String,
    dir: PathBuf,
    phase: Phase,
    args: &Args,
    section: &dp_core::config::MigrateConfig,
) -> MigrateOptions {
    MigrateOptions {
        database_url,
        dir,
        phase,
        allow_out_of_order: args.allow_out_of_order,
        lock_timeout: args
            .lock_timeout
            .or(section.lock_timeout)
            .unwrap_or(dp_core::defaults::MIGRATE_LOCK_TIMEOUT),
        via: None,
        allow_unreachable: 0,
    }
}

fn print_lines<T: serde::Serialize>(lines: &[T]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    for l in lines {
        serde_json::to_writer(&mut out, l)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
