//! `dp`: the one-line deploy and the commands around it.

use crate::io::write_output;
use crate::progress::{Progress, Verbosity};
use anyhow::Context;
use clap::{Parser, Subcommand};
use dp_core::config::Config;
use dp_core::record::HostKeyPolicy;
use dp_core::{ErrorKind, Exit, Record};
use std::path::PathBuf;
use std::time::Instant;

/// Deploy a website with one line: hosts, sync, deps, migrate, restart.
///
/// `dp deploy` reads deploy.toml and runs every step in one process, with one SSH session
/// per host: upload the release (only changed files), make dependencies ready, apply
/// migrations (expand before the switch, contract after), switch hosts over in rolling
/// batches behind health checks, then clean up and release the lock. Records go to
/// stdout as JSON lines, progress and a summary to stderr.
///
/// Exit status: 0 all hosts ok; 1 at least one host failed (records say which); 2 usage,
/// config or input error before any host was touched.
#[derive(Debug, Parser)]
#[command(name = "dp", version, disable_help_subcommand = true)]
pub struct Args {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// The config file.
    #[arg(
        long,
        short = 'c',
        default_value = "deploy.toml",
        env = "DP_CONFIG",
        global = true
    )]
    pub config: PathBuf,
    /// Stage (may be omitted when the config has exactly one).
    #[arg(long, short = 's', env = "DP_STAGE", global = true)]
    pub stage: Option<String>,
    /// Unknown host keys: `strict` (refuse) or `accept-new` (record in known_hosts; a
    /// changed key is still refused). Default: `host_key_policy` in the config, else strict.
    #[arg(long, value_name = "POLICY", env = "DP_HOST_KEY_POLICY", global = true)]
    pub host_key_policy: Option<HostKeyPolicy>,
    /// Hosts at once.
    #[arg(long, short = 'j', global = true, default_value_t = usize::from(dp_core::defaults::JOBS))]
    pub jobs: usize,
    /// Print nothing on stderr but errors.
    #[arg(long, short = 'q', global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Print the records (JSON lines) on stdout even on a terminal (`dp deploy` prints
    /// them only when stdout is not one).
    #[arg(long, global = true)]
    pub json: bool,
    /// Also print what each step did on each host, and what the commands run there
    /// (restart, build, dependencies, migrations, health checks) write, as they write it.
    #[arg(long, short = 'v', global = true)]
    pub verbose: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Deploy: sync, deps, migrate (pre), rolling restart, migrate (post).
    Deploy {
        /// Print the equivalent pipeline of the small tools instead of deploying.
        #[arg(long)]
        print_pipeline: bool,
        /// Show what the deploy would do on each host, changing nothing (no lock, no
        /// directory): files to send and bytes, files linked, dependencies reused or
        /// rebuilt (which lockfile changed), pending migrations, batches, unreachable hosts.
        #[arg(long, conflicts_with = "print_pipeline")]
        plan: bool,
        /// Release id (default: UTC time plus a content hash).
        #[arg(long)]
        release: Option<String>,
        /// Redeploy even where this release is already live with the same content (by
        /// default that is a no-op: no migration, no switch, no restart).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        lease: crate::args::LeaseArg,
        #[command(flatten)]
        allow_unreachable: crate::args::AllowUnreachableArg,
    },
    /// Prepare hosts for their first deploy: directories, prerequisites, host keys.
    Setup {
        /// The same as --host-key-policy accept-new.
        #[arg(long, hide = true)]
        accept_new: bool,
    },
    /// Switch every host back to the release that was live before its current one (from
    /// each host's history: never one that failed or never served), or to --to.
    Rollback {
        /// The release to return to on every host (it must be complete on each; a host
        /// already on it is left as it is).
        #[arg(long, value_name = "RELEASE", value_parser = crate::args::release_id)]
        to: Option<String>,
    },
    /// Run the restart command and the health check on the live release (`current`),
    /// without deploying: in the rollout's batches, under the deploy lock; a host that
    /// fails stops the rollout (later batches are skipped) and nothing is switched.
    Restart {
        /// Only these hosts (repeatable).
        #[arg(long = "host", short = 'H', value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// Current and previous release per host, drift, lock holder, releases on disk, pending
    /// migrations, and the health check's answer now (when one is configured).
    Status,
    /// Remove the deploy lock on every host (shows who held it).
    Unlock,
    /// Deploys and rollbacks across hosts, newest first.
    History {
        /// How many entries (per-host lines; on a terminal, deploys).
        #[arg(long, short = 'n', default_value_t = 20)]
        limit: usize,
        /// Only these hosts (repeatable).
        #[arg(long = "host", short = 'H', value_name = "HOST")]
        hosts: Vec<String>,
    },
    /// Run a command in the live release (`current`) on every host (or --host), with
    /// DP_RELEASE and DP_ROOT set and the release's dependency programs first on PATH;
    /// each output line prefixed with its host. Templates: {host}, {root}, host vars.
    Exec {
        /// Only these hosts (repeatable).
        #[arg(long = "host", short = 'H', value_name = "HOST")]
        hosts: Vec<String>,
        /// How long the command may run on a host before it is stopped.
        #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = dp_core::config::parse_duration)]
        timeout: std::time::Duration,
        /// The command (a shell script, run with /bin/sh).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The tail of the app log (`app_log` in [restart]) from every host, each line prefixed
    /// with its host; -f follows until Ctrl-C.
    Logs {
        /// Only these hosts (repeatable).
        #[arg(long = "host", short = 'H', value_name = "HOST")]
        hosts: Vec<String>,
        /// Lines from each host.
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: usize,
        /// Keep printing what the hosts append, until Ctrl-C.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Print a shell completion script (for dp, or another tool with --bin).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
        /// Which program: dp, dp-hosts, dp-sync, dp-deps, dp-migrate or dp-restart.
        #[arg(long, default_value = "dp")]
        bin: String,
    },
}

/// Runs `dp`.
pub fn run() -> anyhow::Result<Exit> {
    exec(Args::parse())
}

/// Runs `dp` with parsed arguments.
pub fn exec(args: Args) -> anyhow::Result<Exit> {
    if let Command::Completions { shell, bin } = &args.command {
        use clap::CommandFactory;
        let mut cmd = match bin.as_str() {
            "dp" => Args::command(),
            "dp-hosts" => crate::hosts::Args::command(),
            "dp-sync" => crate::sync::Args::command(),
            "dp-deps" => crate::deps::Args::command(),
            "dp-migrate" => crate::migrate::Args::command(),
            "dp-restart" => crate::restart::Args::command(),
            other => anyhow::bail!("no program {other:?}"),
        };
        clap_complete::generate(*shell, &mut cmd, bin.clone(), &mut std::io::stdout());
        return Ok(Exit::Ok);
    }
    let config = Config::load(&args.config)?;
    let jobs = args.jobs.max(1);
    let overrides = dp_flow::Overrides {
        stage: args.stage.clone(),
        release: None,
        jobs: Some(jobs),
        lease: None,
        allow_unreachable: None,
        force: false,
    };
    if args.verbose {
        // What the commands on the hosts write, as they write it (`dp deploy`'s display
        // puts its own in place).
        dp_core::transport::live::stream_to(|host, line| eprintln!("{host} | {line}"));
    }
    let say = |msg: &str| {
        if !args.quiet {
            eprintln!("dp: {msg}");
        }
    };
    match &args.command {
        Command::Deploy {
            print_pipeline,
            plan: show_plan,
            release,
            force,
            lease,
            allow_unreachable,
        } => {
            let overrides = dp_flow::Overrides {
                release: release.clone(),
                force: *force,
                lease: Some(lease.lease),
                allow_unreachable: allow_unreachable.allow_unreachable,
                ..overrides
            };
            let plan = dp_flow::plan(&config, &args.config, &overrides)?;
            if *print_pipeline {
                print!("{}", dp_flow::pipeline(&plan)?);
                return Ok(Exit::Ok);
            }
            let mut records = hosts(&config, &args)?;
            plan.check(&records).map_err(anyhow::Error::msg)?;
            if *show_plan {
                dp_flow::plan_deploy(&mut records, &plan)?;
                crate::report_failures("dp", "plan", &records);
                if crate::table::for_people(args.json) {
                    plan_table(&records)?;
                } else {
                    write_output(&records)?;
                }
                return Ok(Exit::for_records(&records));
            }
            if matches!(plan.restart.health, Some(dp_restart::Health::Url(_)))
                && plan.restart.health_expect.is_none()
            {
                say(
                    "warning: health_url without health_expect: an old worker, or another \
                     process on the port, passes for the new release (set health_expect = \
                     \"ok {release}\" and have the app answer it)",
                );
            }
            let started = Instant::now();
            let verbosity = match (args.quiet, args.verbose) {
                (true, _) => Verbosity::Quiet,
                (_, true) => Verbosity::Verbose,
                _ => Verbosity::Normal,
            };
            let steps = 3 + match plan.migrate {
                Some(dp_flow::MigrateStep::Sql(_)) => 2,
                Some(dp_flow::MigrateStep::Exec { ref pre, ref post }) => {
                    usize::from(pre.is_some()) + usize::from(post.is_some())
                }
                None => 0,
            };
            let mut display = Progress::start(&records, steps, verbosity);
            let mut progress = |step: &str, records: &[Record]| display.step(step, records);
            let deployed = dp_flow::deploy(&mut records, &plan, &mut progress);
            display.finish();
            deployed.context("cannot deploy")?;
            for r in &records {
                if let Some(e) = &r.error {
                    crate::report_error("dp", r, e);
                }
            }
            if !args.quiet {
                summary(&records, started);
            }
            // On a terminal the summary is the output; records are for pipes (or --json).
            if args.json || !std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                write_output(&records)?;
            }
            Ok(Exit::for_records(&records))
        }
        Command::Setup { accept_new } => {
            let mut records = hosts(&config, &args)?;
            if *accept_new {
                for r in &mut records {
                    r.ssh.host_key_policy = Some(HostKeyPolicy::AcceptNew);
                }
            }
            let deps = config.deps.as_ref();
            let tools: &[&str] = match deps.and_then(|d| d.kind.as_deref()) {
                Some("pip") => &["python3"],
                Some("npm") => &["node", "npm"],
                _ => &[],
            };
            let python = deps.and_then(|d| d.python.clone());
            let mut tools: Vec<&str> = tools
                .iter()
                .map(|t| {
                    if *t == "python3" {
                        python.as_deref().unwrap_or("python3")
                    } else {
                        t
                    }
                })
                .collect();
            // With an artifact store: this machine can write to it, and each host can
            // fetch from it.
            if let Some(o) = dp_sync::store::StoreOptions::from_config(&config) {
                dp_sync::store::Store::open(&o)
                    .and_then(|store| store.check())
                    .map_err(anyhow::Error::msg)?;
                tools.push("curl|wget");
            }
            dp_flow::admin::setup(&mut records, jobs, &tools);
            finish(records, "setup", args.json)
        }
        Command::Rollback { to } => {
            let mut records = hosts(&config, &args)?;
            let opts = dp_restart::RestartOptions {
                action: dp_restart::Action::Rollback(to.clone()),
                ..dp_flow::restart_options(&config, &overrides)?
            };
            opts.check(&records).map_err(anyhow::Error::msg)?;
            dp_restart::run(&mut records, &mut dp_core::parallel::Sessions::new(), &opts);
            finish(records, dp_restart::STEP, args.json)
        }
        Command::Restart { hosts: only } => {
            let mut records = selected(&config, &args, only)?;
            let opts = dp_restart::RestartOptions {
                action: dp_restart::Action::Restart,
                ..dp_flow::restart_options(&config, &overrides)?
            };
            if opts.command.is_none() && opts.health.is_none() {
                anyhow::bail!(
                    "dp restart runs `command` and the health check of [restart]; deploy.toml has neither"
                );
            }
            opts.check(&records).map_err(anyhow::Error::msg)?;
            dp_restart::run(&mut records, &mut dp_core::parallel::Sessions::new(), &opts);
            finish(records, dp_restart::STEP, args.json)
        }
        Command::Status => {
            let mut records = hosts(&config, &args)?;
            let restart = dp_flow::restart_options(&config, &overrides)?;
            restart.check(&records).map_err(anyhow::Error::msg)?;
            let health = restart
                .health
                .as_ref()
                .map(|health| dp_flow::admin::HealthNow {
                    health,
                    expect: restart.health_expect.as_deref(),
                });
            dp_flow::admin::status(&mut records, jobs, health);
            if let Some(dir) = migrations_dir(&config) {
                if let Ok(url) = std::env::var("DATABASE_URL") {
                    if let Ok(lines) = dp_migrate::status(&url, &dir) {
                        let pending = lines.iter().filter(|l| l.applied_at.is_none()).count();
                        for r in &mut records {
                            if let Some(serde_json::Value::Object(s)) = r.steps.get_mut("status") {
                                s.insert("pending_migrations".into(), serde_json::json!(pending));
                            }
                        }
                    }
                }
            }
            finish(records, "status", args.json)
        }
        Command::Unlock => {
            let mut records = hosts(&config, &args)?;
            dp_flow::admin::unlock(&mut records, jobs);
            for r in &records {
                if let Some(h) = r
                    .steps
                    .get("unlock")
                    .and_then(|u| u.get("holder"))
                    .filter(|h| !h.is_null())
                {
                    say(&format!("{}: removed lock held by {h}", r.host));
                }
            }
            finish(records, "unlock", args.json)
        }
        Command::Completions { .. } => unreachable!("handled above"),
        Command::Exec {
            hosts: only,
            timeout,
            command,
        } => {
            let mut records = selected(&config, &args, only)?;
            host_lines(&mut records, false, |records, show| {
                dp_flow::admin::exec(records, jobs, &command.join(" "), *timeout, show)
            });
            crate::report_failures("dp", "exec", &records);
            Ok(Exit::for_records(&records))
        }
        Command::Logs {
            hosts: only,
            lines,
            follow,
        } => {
            let template = config
                .restart
                .as_ref()
                .and_then(|r| r.app_log.clone())
                .context("dp logs reads `app_log` in [restart] (such as \"{root}/shared/log/app.log\"); deploy.toml has none")?;
            let mut records = selected(&config, &args, only)?;
            host_lines(&mut records, *follow, |records, show| {
                dp_flow::admin::logs(records, jobs, &template, *lines, *follow, show)
            });
            crate::report_failures("dp", "logs", &records);
            if dp_core::interrupt::interrupted() {
                return Ok(Exit::Interrupted);
            }
            Ok(Exit::for_records(&records))
        }
        Command::History { limit, hosts: only } => {
            let mut records = selected(&config, &args, only)?;
            let people = crate::table::for_people(args.json);
            // A person's rows are deploys across hosts: read enough lines for `limit` of them.
            let per_host = if people {
                limit * records.len().max(1)
            } else {
                *limit
            };
            let lines = dp_flow::admin::history(&mut records, jobs, per_host);
            crate::report_failures("dp", "history", &records);
            if people {
                history_table(&lines, *limit)?;
            } else {
                let mut out = std::io::stdout().lock();
                for l in lines {
                    use std::io::Write;
                    writeln!(out, "{l}")?;
                }
            }
            Ok(Exit::for_records(&records))
        }
    }
}

fn migrations_dir(config: &Config) -> Option<PathBuf> {
    Some(config.migrations_dir()).filter(|d| d.is_dir())
}

/// Failures on stderr; then, for a person (a terminal, no --json), a table of the
/// step's results, else the records as JSON lines.
fn finish(records: Vec<Record>, step: &str, json: bool) -> anyhow::Result<Exit> {
    crate::report_failures("dp", step, &records);
    if crate::table::for_people(json) {
        match step {
            "status" => status_table(&records)?,
            _ => step_table(&records, step)?,
        }
    } else {
        write_output(&records)?;
    }
    Ok(Exit::for_records(&records))
}

/// One cell for a JSON value: text as it is, a list as its length, null as `-`.
fn cell(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "-".into(),
        serde_json::Value::String(s) if s.is_empty() => "-".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) => a.len().to_string(),
        serde_json::Value::Object(o) => o
            .get("holder")
            .or_else(|| o.get("release"))
            .map(cell)
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

/// host, result, and each field of `steps.<step>` (setup, unlock, rollback).
fn step_table(records: &[Record], step: &str) -> std::io::Result<()> {
    let mut keys: Vec<String> = Vec::new();
    for r in records {
        if let Some(serde_json::Value::Object(o)) = r.steps.get(step) {
            for k in o.keys() {
                if !keys.contains(k) && !matches!(k.as_str(), "ms" | "batch" | "switched_at_ms") {
                    keys.push(k.clone());
                }
            }
        }
    }
    let mut headers = vec!["host", "result"];
    headers.extend(keys.iter().map(String::as_str));
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let result = match &r.error {
                None => "ok".to_string(),
                Some(e) => format!("{}: {}", e.kind.as_str(), e.message),
            };
            let mut row = vec![r.host.clone(), result];
            for k in &keys {
                row.push(
                    r.steps
                        .get(step)
                        .map_or("-".into(), |s| cell(&s[k.as_str()])),
                );
            }
            row
        })
        .collect();
    crate::table::print(&headers, &rows)
}

/// One row per deploy, rollback or restart across hosts, newest first: the per-host lines
/// of one run (the same `run`; lines written before it had one: the same action, release,
/// previous and user, within ten minutes) together.
fn history_table(lines: &[serde_json::Value], limit: usize) -> std::io::Result<()> {
    let secs = |v: &serde_json::Value| -> u64 {
        v["time"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_secs())
    };
    // Lines with a run id (newer dp) group by it; older ones by what they say.
    let key = |v: &serde_json::Value| {
        ["action", "release", "previous", "user", "run"]
            .map(|k| v[k].as_str().unwrap_or("").to_string())
    };
    let mut groups: Vec<Vec<&serde_json::Value>> = Vec::new();
    for l in lines {
        match groups.last_mut() {
            Some(g) if key(g[0]) == key(l) && secs(g[0]).abs_diff(secs(l)) < 600 => g.push(l),
            _ => groups.push(vec![l]),
        }
    }
    let rows: Vec<Vec<String>> = groups
        .iter()
        .take(limit)
        .map(|g| {
            let ok = g
                .iter()
                .filter(|l| matches!(l["result"].as_str(), Some("ok" | "unchanged")))
                .count();
            let bad: Vec<&str> = g
                .iter()
                .filter_map(|l| l["result"].as_str())
                .filter(|r| !matches!(*r, "ok" | "unchanged"))
                .collect();
            let result = bad.first().map_or_else(
                || g[0]["result"].as_str().unwrap_or("ok").to_string(),
                |b| b.to_string(),
            );
            let time = g[0]["time"].as_str().unwrap_or("-");
            vec![
                time.split('.').next().unwrap_or(time).replace('T', " "),
                cell(&g[0]["action"]),
                cell(&g[0]["release"]),
                cell(&g[0]["previous"]),
                cell(&g[0]["user"]),
                result,
                if bad.is_empty() {
                    format!("{ok} ok")
                } else {
                    format!("{ok} ok, {} not", bad.len())
                },
            ]
        })
        .collect();
    crate::table::print(
        &[
            "time (UTC)",
            "action",
            "release",
            "previous",
            "who",
            "result",
            "hosts",
        ],
        &rows,
    )
}

/// `dp deploy --plan` for a person: one row per host.
fn plan_table(records: &[Record]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let Some(p) = r.steps.get("plan") else {
                return failed_row(r, "UNREACHABLE");
            };
            let send = if p["already_live"] == true {
                "nothing (already live)".to_string()
            } else {
                let bytes = p["send_bytes"].as_u64().unwrap_or(0);
                let via = if p["via_store"] == true {
                    " via the store"
                } else {
                    ""
                };
                format!("{} files, {}{via}", p["send_files"], human_bytes(bytes))
            };
            vec![
                r.host.clone(),
                cell(&p["current"]),
                cell(&p["base"]),
                send,
                p["linked"].to_string(),
                cell(&p["deps"]),
                p["pending_migrations"]
                    .as_array()
                    .filter(|a| !a.is_empty())
                    .map_or("-".into(), |a| {
                        a.iter()
                            .map(|m| m.as_str().unwrap_or("?"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    }),
                p["batch"].to_string(),
            ]
        })
        .collect();
    crate::table::print(
        &[
            "host",
            "current",
            "base",
            "send",
            "linked",
            "deps",
            "migrations",
            "batch",
        ],
        &rows,
    )
}

/// The row of a host the step did not reach: its name, then `what: why`.
fn failed_row(r: &Record, what: &str) -> Vec<String> {
    let why = r.error.as_ref().map_or("", |e| e.message.as_str());
    vec![r.host.clone(), format!("{what}: {why}")]
}

fn human_bytes(n: u64) -> String {
    match n {
        0..=9_999 => format!("{n} B"),
        10_000..=9_999_999 => format!("{} kB", n / 1000),
        _ => format!("{} MB", n / 1_000_000),
    }
}

/// One row per host: what runs there, since when, where a rollback goes, who holds the
/// lock, what is on disk.
fn status_table(records: &[Record]) -> std::io::Result<()> {
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let Some(s) = r.steps.get("status") else {
                return failed_row(r, "FAILED");
            };
            let since = s["current_since"]
                .as_u64()
                .map_or("-".into(), crate::table::age);
            let lock = match &s["lock"] {
                serde_json::Value::Object(l) => format!(
                    "{} ({}, {} ago)",
                    l.get("holder").and_then(|h| h.as_str()).unwrap_or("?"),
                    l.get("release").and_then(|h| h.as_str()).unwrap_or("?"),
                    l.get("time")
                        .and_then(|t| t.as_u64())
                        .map_or("?".into(), crate::table::age)
                ),
                serde_json::Value::Null => "-".into(),
                other => other.to_string(),
            };
            vec![
                r.host.clone(),
                cell(&s["current"]),
                since,
                cell(&s["previous"]),
                if s["drift"] == true {
                    "DRIFT".into()
                } else {
                    "-".into()
                },
                lock,
                cell(&s["releases"]),
                cell(&s["pending_migrations"]),
                match s.get("health") {
                    None => "-".into(),
                    Some(h) => {
                        let answer: String = cell(&h["answer"]).chars().take(60).collect();
                        let verdict = if h["ok"] == true { "ok" } else { "FAILING" };
                        format!("{verdict} ({answer})")
                    }
                },
            ]
        })
        .collect();
    crate::table::print(
        &[
            "host",
            "current",
            "live for",
            "previous",
            "drift",
            "lock",
            "releases",
            "pending",
            "health now",
        ],
        &rows,
    )
}

/// The table at the end of a deploy.
fn summary(records: &[Record], started: Instant) {
    eprintln!("{:<16} {:<28} {:>8}  result", "host", "release", "sent");
    for r in records {
        let sent = r
            .steps
            .get("sync")
            .and_then(|s| s["files_sent"].as_u64())
            .map(|n| format!("{n} files"))
            .unwrap_or_default();
        let result = match &r.error {
            None if dp_core::gate::already_live(r) => "ok (already live)".to_string(),
            None => "ok".to_string(),
            Some(e) => match e.kind {
                ErrorKind::Skipped => "skipped (an earlier batch failed)".to_string(),
                ErrorKind::NotSwitched => "not switched (another host failed)".to_string(),
                ErrorKind::SwitchedBack => format!("FAILED in {}, switched back", e.step),
                ErrorKind::Unreachable => "UNREACHABLE".to_string(),
                _ => format!("FAILED in {}", e.step),
            },
        };
        eprintln!(
            "{:<16} {:<28} {:>8}  {result}",
            r.host,
            r.release.as_deref().unwrap_or("-"),
            sent
        );
    }
    let failed = records.iter().filter(|r| r.failed()).count();
    eprintln!(
        "dp: {} in {:.1} s: {} of {} hosts ok",
        if failed > 0 {
            "deploy FAILED"
        } else if dp_core::gate::all_already_live(records) {
            "already live, nothing to do (--force redeploys)"
        } else {
            "deployed"
        },
        started.elapsed().as_secs_f64(),
        records.len() - failed,
        records.len()
    );
}

/// Runs `run` with a sink for the hosts' output lines, printed as `host | line`: as they
/// come when `live`, else host by host (in the records' order) once all are in.
fn host_lines(
    records: &mut [Record],
    live: bool,
    run: impl FnOnce(&mut [Record], &(dyn Fn(&str, &str) + Sync)),
) {
    let width = records.iter().map(|r| r.host.len()).max().unwrap_or(0);
    let print = |host: &str, line: &str| {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{host:<width$} | {line}");
        let _ = out.flush();
    };
    let kept = std::sync::Mutex::new(Vec::<(String, String)>::new());
    let keep = |host: &str, line: &str| {
        let mut kept = kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.push((host.to_string(), line.to_string()));
    };
    run(records, if live { &print } else { &keep });
    let kept = kept.into_inner().unwrap_or_else(|e| e.into_inner());
    for r in records.iter() {
        for (_, line) in kept.iter().filter(|(h, _)| *h == r.host) {
            print(&r.host, line);
        }
    }
}

/// The stage's hosts named in `only` (all when empty); an unknown name is an error.
fn selected(config: &Config, args: &Args, only: &[String]) -> anyhow::Result<Vec<Record>> {
    let mut records = hosts(config, args)?;
    if let Some(unknown) = only.iter().find(|h| !records.iter().any(|r| &r.host == *h)) {
        anyhow::bail!("no host {unknown:?} in the stage");
    }
    records.retain(|r| only.is_empty() || only.contains(&r.host));
    Ok(records)
}

/// The stage's hosts, with --host-key-policy when given.
fn hosts(config: &Config, args: &Args) -> anyhow::Result<Vec<dp_core::Record>> {
    let mut records = dp_flow::hosts(config, args.stage.as_deref())?;
    if let Some(policy) = args.host_key_policy {
        for r in &mut records {
            r.ssh.host_key_policy = Some(policy);
        }
    }
    Ok(records)
}
