//! dp-flow: the `dp` commands, composed from the step libraries in one process, so each
//! host gets one SSH session for the whole deploy.
//!
//! `deploy` runs hosts -> sync -> deps -> migrate (pre) -> restart -> migrate (post), the
//! same steps as the pipeline [`pipeline`] prints, with the same records.

pub mod admin;

use dp_core::config::{Config, Selection};
use dp_core::defaults;
use dp_core::lock::{self, Renew};
use dp_core::parallel::Sessions;
use dp_core::quote::quote_str;
use dp_core::sshconfig::SshAliases;
use dp_core::Record;
use dp_deps::{DepsOptions, Kind};
use dp_migrate::source::Phase;
use dp_migrate::{ExecOptions, MigrateOptions};
use dp_restart::{Batch, Health, RestartOptions};
use dp_sync::{ScanOptions, SyncOptions};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A problem found before any host was touched (exit 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct FlowError(pub String);

/// Everything a deploy needs, resolved from deploy.toml and flags.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The config file (for the printed pipeline).
    pub config_path: PathBuf,
    /// The stage.
    pub stage: Option<String>,
    /// Sync options.
    pub sync: SyncOptions,
    /// Deps options (None: no dependencies step).
    pub deps: Option<DepsOptions>,
    /// Migrations: SQL or exec (None: no migration step).
    pub migrate: Option<MigrateStep>,
    /// Restart options.
    pub restart: RestartOptions,
    /// `--allow-unreachable` as given on the command line (for the printed pipeline).
    pub allow_unreachable_flag: Option<usize>,
}

/// How migrations run in a deploy.
#[derive(Debug, Clone)]
pub enum MigrateStep {
    /// SQL files; the pre phase runs before the switch, the post phase after it.
    Sql(Box<MigrateOptions>),
    /// The framework's commands: once before the switch (`exec`), once after every host
    /// switched (`exec_post`).
    Exec {
        /// `[migrate] exec`.
        pre: Option<Box<ExecOptions>>,
        /// `[migrate] exec_post`.
        post: Option<Box<ExecOptions>>,
    },
}

/// Flags that override the config.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// Stage.
    pub stage: Option<String>,
    /// Release id.
    pub release: Option<String>,
    /// Hosts at once.
    pub jobs: Option<usize>,
    /// Deploy lock lease (default [`dp_core::lock::DEFAULT_LEASE`]).
    pub lease: Option<Duration>,
    /// Unreachable hosts that may be left out (default: the config's, else 0).
    pub allow_unreachable: Option<usize>,
    /// Redeploy a release that is already live with the same content.
    pub force: bool,
}

/// Resolves the plan; checks everything that can be checked without touching a host.
pub fn plan(config: &Config, config_path: &Path, o: &Overrides) -> Result<Plan, FlowError> {
    let jobs = o.jobs.unwrap_or(usize::from(defaults::JOBS));
    let lease = o.lease.unwrap_or(defaults::LEASE);
    let src = config.source_dir();
    let sync = SyncOptions {
        src: src.clone(),
        release: o.release.clone(),
        scan: ScanOptions {
            excludes: config.exclude.clone(),
            shared: config.shared.clone(),
            hash_cache: None,
        },
        jobs,
        verify: false,
        lease,
        cache: true,
        compress: true,
        force: o.force,
        store: dp_sync::store::StoreOptions::from_config(config),
    };
    let deps = config.deps.clone().unwrap_or_default();
    let kind = Kind::parse(
        deps.kind.as_deref().unwrap_or("auto"),
        deps.command.as_deref(),
        deps.link.as_deref(),
    )
    .map_err(FlowError)?;
    let deps = Some(DepsOptions {
        kind,
        lockfiles: deps.lockfiles,
        pip_args: deps.pip_args,
        python: deps.python.unwrap_or_else(|| "python3".into()),
        jobs,
        wait: Duration::from_secs(30 * 60),
        timeout: deps.timeout.unwrap_or(dp_deps::DEFAULT_TIMEOUT),
        lease,
        renew: Renew::Always,
        keep_env: deps.env,
        build: config.build.as_ref().map(|b| dp_deps::Build {
            command: b.command.clone(),
            timeout: b.timeout.unwrap_or(dp_deps::DEFAULT_TIMEOUT),
        }),
    });
    if let Some(d) = &deps {
        d.check().map_err(FlowError)?;
    }
    let allow_unreachable = o
        .allow_unreachable
        .or(config.allow_unreachable)
        .unwrap_or(0);
    let m = config.migrate.clone().unwrap_or_default();
    let migrations_dir = config.migrations_dir();
    let framework = m.exec.is_some() || m.exec_post.is_some();
    if m.dir.is_some() && !framework && !migrations_dir.is_dir() {
        return Err(FlowError(format!(
            "{}: [migrate] dir {} is not a directory",
            config.path,
            migrations_dir.display()
        )));
    }
    let migrate = if framework {
        let env = dp_migrate::PassedEnv::from_names(
            m.env.as_deref().unwrap_or(&[String::from("DATABASE_URL")]),
        )
        .map_err(FlowError)?;
        let exec = |command: &Option<String>, phase| {
            command.clone().map(|command| {
                Box::new(ExecOptions {
                    command,
                    phase,
                    env: env.clone(),
                    lease,
                    renew: Renew::Always,
                    allow_unreachable,
                    timeout: m.exec_timeout.unwrap_or(dp_migrate::DEFAULT_EXEC_TIMEOUT),
                })
            })
        };
        Some(MigrateStep::Exec {
            pre: exec(&m.exec, Phase::Pre),
            post: exec(&m.exec_post, Phase::Post),
        })
    } else if migrations_dir.is_dir() {
        let url = std::env::var("DATABASE_URL")
            .ok()
            .filter(|u| !u.is_empty())
            .ok_or_else(|| {
                FlowError(format!(
                    "{} holds migrations but DATABASE_URL is not set (set it in the environment)",
                    migrations_dir.display()
                ))
            })?;
        Some(MigrateStep::Sql(Box::new(MigrateOptions {
            database_url: url,
            dir: migrations_dir,
            phase: Phase::Pre,
            allow_out_of_order: false,
            lock_timeout: m.lock_timeout.unwrap_or(defaults::MIGRATE_LOCK_TIMEOUT),
            via: None,
            allow_unreachable,
        })))
    } else {
        None
    };
    let restart = restart_options(config, o)?;
    Ok(Plan {
        config_path: config_path.to_path_buf(),
        stage: o.stage.clone(),
        sync,
        deps,
        migrate,
        restart,
        allow_unreachable_flag: o.allow_unreachable,
    })
}

impl Plan {
    /// Checks, before any host is touched, that every template renders for every host:
    /// the build command, the migration commands, the restart command and health check.
    pub fn check(&self, records: &[Record]) -> Result<(), String> {
        if let Some(d) = &self.deps {
            d.check_templates(records)?;
        }
        if let Some(MigrateStep::Exec { pre, post }) = &self.migrate {
            for e in pre.iter().chain(post) {
                e.check(records)?;
            }
        }
        self.restart.check(records)
    }
}

/// The restart step's options from deploy.toml and flags (what `dp rollback` needs too;
/// it needs no database).
pub fn restart_options(config: &Config, o: &Overrides) -> Result<RestartOptions, FlowError> {
    let jobs = o.jobs.unwrap_or(usize::from(defaults::JOBS));
    let lease = o.lease.unwrap_or(defaults::LEASE);
    let allow_unreachable = o
        .allow_unreachable
        .or(config.allow_unreachable)
        .unwrap_or(0);
    let r = config.restart.clone().unwrap_or_default();
    let batch: Batch = r
        .batch
        .as_deref()
        .unwrap_or("100%")
        .parse()
        .map_err(FlowError)?;
    Ok(RestartOptions {
        batch,
        command: r.command,
        health: r
            .health_url
            .map(Health::Url)
            .or(r.health_cmd.map(Health::Command)),
        health_timeout: r.health_timeout.unwrap_or(defaults::HEALTH_TIMEOUT),
        health_expect: r.health_expect.clone(),
        app_log: r.app_log.clone(),
        timeout: r.timeout.unwrap_or(dp_restart::DEFAULT_TIMEOUT),
        max_fail: 0,
        keep: config.keep_releases(),
        jobs,
        action: dp_restart::Action::Deploy,
        lease,
        renew: Renew::Always,
        allow_unreachable,
    })
}

/// The records of the stage's hosts (with ~/.ssh/config applied).
pub fn hosts(config: &Config, stage: Option<&str>) -> Result<Vec<Record>, FlowError> {
    let aliases = SshAliases::load().map_err(FlowError)?;
    dp_hosts::from_config(
        config,
        &Selection {
            stage: stage.map(str::to_string),
            ..Selection::default()
        },
        &aliases,
    )
    .map_err(|e| FlowError(e.to_string()))
}

/// Called after each step with its name and the records so far.
pub type Progress<'a> = &'a mut dyn FnMut(&str, &[Record]);

/// The one-line deploy. Never fails as a whole: failures are in the records.
pub fn deploy(records: &mut [Record], plan: &Plan, progress: Progress) -> Result<(), FlowError> {
    let mut sessions = Sessions::new();
    // The sync takes the lease after this moment; later steps renew it only once a
    // third of it has passed (until then they check it without a process on the host).
    let renew = Renew::after_taken(Instant::now(), plan.sync.lease);
    let deps = plan
        .deps
        .as_ref()
        .map(|d| DepsOptions { renew, ..d.clone() });
    // Dependencies are made ready in the same session as the upload, right after it.
    let then = deps
        .as_ref()
        .map(|d| move |r: &Record| dp_deps::host_script(r, d));
    let (_, thens) = dp_sync::scan_and_run_then(
        records,
        &mut sessions,
        &plan.sync,
        then.as_ref().map(|f| f as dp_sync::Then),
    )
    .map_err(|e| FlowError(e.to_string()))?;
    progress(dp_sync::STEP, records);
    if let Some(deps) = &deps {
        for (i, t) in thens {
            match t.output.and_then(dp_deps::interpret) {
                Ok(mut stats) => {
                    stats.ms = t.ms;
                    records[i].set_step(dp_deps::STEP, stats);
                }
                Err(m) => records[i].fail(dp_deps::STEP, m),
            }
        }
        // Hosts where the release was already complete (nothing was built); the others
        // have steps.deps from the upload's session by now.
        dp_deps::run_skipping(records, &mut sessions, deps, &|r| {
            r.steps.contains_key(dp_deps::STEP)
        });
        progress(dp_deps::STEP, records);
    }
    match &plan.migrate {
        Some(MigrateStep::Sql(opts)) => {
            // SQL migrations use no host session, and may take longer than the lease.
            lock::keep_renewed(
                records,
                &mut sessions,
                plan.sync.lease,
                plan.sync.jobs,
                renew,
                dp_migrate::STEP,
                |r| dp_migrate::run_sql(r, opts),
            );
            progress("migrate pre", records);
        }
        Some(MigrateStep::Exec {
            pre: Some(opts), ..
        }) => {
            let opts = ExecOptions {
                renew,
                ..(**opts).clone()
            };
            dp_migrate::run_exec(records, &mut sessions, &opts);
            progress("migrate", records);
        }
        Some(MigrateStep::Exec { pre: None, .. }) | None => {}
    }
    let restart = RestartOptions {
        renew,
        ..plan.restart.clone()
    };
    dp_restart::run(records, &mut sessions, &restart);
    progress(dp_restart::STEP, records);
    if let Some(MigrateStep::Sql(opts)) = &plan.migrate {
        let post = MigrateOptions {
            phase: Phase::Post,
            ..(**opts).clone()
        };
        dp_migrate::run_sql(records, &post);
        progress("migrate post", records);
    }
    if let Some(MigrateStep::Exec {
        post: Some(opts), ..
    }) = &plan.migrate
    {
        let opts = ExecOptions {
            renew,
            ..(**opts).clone()
        };
        dp_migrate::run_exec(records, &mut sessions, &opts);
        progress("migrate post", records);
    }
    Ok(())
}

/// The equivalent pipeline of the small tools, for scripts, Makefiles and CI.
pub fn pipeline(plan: &Plan) -> Result<String, FlowError> {
    let q = |s: &str| quote_str(s).map_err(|e| FlowError(e.to_string()));
    let config = q(&plan.config_path.display().to_string())?;
    let mut stage = String::new();
    if let Some(s) = &plan.stage {
        stage = format!(" --stage {}", q(s)?);
    }
    let mut release = String::new();
    if let Some(r) = &plan.sync.release {
        release = format!(" --release {}", q(r)?);
    }
    let force = if plan.sync.force { " --force" } else { "" };
    // The same parallelism as the one-line deploy, when it is not the tools' default.
    let jobs = if plan.sync.jobs == usize::from(defaults::JOBS) {
        String::new()
    } else {
        format!(" --jobs {}", plan.sync.jobs)
    };
    // The lease too, for every tool that takes or renews the lock.
    let lease = if plan.sync.lease == defaults::LEASE {
        String::new()
    } else {
        format!(" --lease {}s", plan.sync.lease.as_secs())
    };
    // Given on the command line: the tools that decide need it too (from the config they
    // read it themselves).
    let allow = match plan.allow_unreachable_flag {
        Some(n) => format!(" --allow-unreachable {n}"),
        None => String::new(),
    };
    let mut parts = vec![
        format!("dp-hosts --config {config}{stage}"),
        format!(
            "dp-sync --config {config} --src {}{release}{force}{jobs}{lease}",
            q(&plan.sync.src.display().to_string())?
        ),
        format!("dp-deps --config {config}{jobs}{lease}"),
    ];
    match &plan.migrate {
        Some(MigrateStep::Sql(m)) => parts.push(format!(
            "dp-migrate --config {config} --dir {} --phase pre{lease}{allow}",
            q(&m.dir.display().to_string())?
        )),
        Some(MigrateStep::Exec { pre: Some(e), .. }) => parts.push(format!(
            "dp-migrate --config {config} --exec {}{lease}{allow}",
            q(&e.command)?
        )),
        Some(MigrateStep::Exec { pre: None, .. }) | None => {}
    }
    parts.push(format!("dp-restart --config {config}{jobs}{lease}{allow}"));
    match &plan.migrate {
        Some(MigrateStep::Sql(m)) => parts.push(format!(
            "dp-migrate --config {config} --dir {} --phase post",
            q(&m.dir.display().to_string())?
        )),
        Some(MigrateStep::Exec { post: Some(e), .. }) => parts.push(format!(
            "dp-migrate --config {config} --exec {} --phase post{lease}",
            q(&e.command)?
        )),
        _ => {}
    }
    Ok(parts.join(" \\\n  | ") + "\n")
}

/// `dp deploy --plan`: what a deploy would do on each host, changing nothing on any host
/// (no lock, no directory): one round trip per host reads its current and newest complete
/// release and that release's manifest. Each reachable record gets `steps.plan`: the
/// files to send and their bytes, the files linked, the dependency environment (`reuse`,
/// or `rebuild` with the lockfiles that changed), the migrations pending (with
/// `DATABASE_URL`, by name and phase) and its batch. A host that cannot be reached fails
/// in step `plan`.
pub fn plan_deploy(records: &mut [Record], plan: &Plan) -> Result<(), FlowError> {
    let prepared = dp_sync::prepare(&plan.sync).map_err(|e| FlowError(e.to_string()))?;
    let lockfiles: Vec<String> = match &plan.deps {
        None => Vec::new(),
        Some(d) if !d.lockfiles.is_empty() => d.lockfiles.clone(),
        Some(d) => d
            .kind
            .default_lockfiles(|p| prepared.manifest.entries.iter().any(|e| e.path == p)),
    };
    let pending: Vec<String> = match &plan.migrate {
        Some(MigrateStep::Sql(m)) => match dp_migrate::status(&m.database_url, &m.dir) {
            Ok(lines) => lines
                .into_iter()
                .filter(|l| l.applied_at.is_none())
                .map(|l| {
                    let phase = l.phase.map_or("?", Phase::as_str);
                    format!("{}_{} ({phase})", l.version, l.name)
                })
                .collect(),
            Err(e) => vec![format!("unknown: {e}")],
        },
        _ => Vec::new(),
    };
    let deps = plan.deps.is_some();
    Sessions::new().run(records, plan.sync.jobs, "plan", |conn, record| {
        let hp = dp_sync::plan::plan_host(conn, record, &prepared, &lockfiles)?;
        let mut v = serde_json::to_value(&hp).map_err(|e| e.to_string())?;
        v["release"] = serde_json::json!(prepared.release);
        v["deps"] = serde_json::json!(match (deps, hp.lockfiles_changed.is_empty()) {
            (false, _) => "none".to_string(),
            (true, true) if hp.deps_key.is_some() => "reuse".to_string(),
            (true, true) => "build (no environment yet)".to_string(),
            (true, false) => format!("rebuild ({} changed)", hp.lockfiles_changed.join(", ")),
        });
        v["pending_migrations"] = serde_json::json!(pending);
        record.set_step("plan", v);
        Ok(())
    });
    // The batches in order, over the hosts that would be deployed.
    let live: Vec<usize> = (0..records.len())
        .filter(|&i| !records[i].failed())
        .collect();
    let size = plan.restart.batch.size(live.len()).max(1);
    for (n, &i) in live.iter().enumerate() {
        if let Some(serde_json::Value::Object(s)) = records[i].steps.get_mut("plan") {
            s.insert("batch".into(), serde_json::json!(n / size + 1));
        }
    }
    Ok(())
}
