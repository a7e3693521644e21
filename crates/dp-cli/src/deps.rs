//! `dp-deps`: make each host's release dependencies ready, reusing unchanged ones.

use crate::io::{read_input, write_output};
use clap::Parser;
use dp_core::parallel::Sessions;
use dp_core::Exit;
use dp_deps::{DepsOptions, Kind};

/// Make the dependencies of each record's release ready on its host.
///
/// The environment is keyed by the lockfiles' contents, the kind and its options, and the
/// interpreter version on that host. When `<root>/.dp/deps/<key>/` is complete it is
/// linked into the release in one round trip (`.venv` for pip, `node_modules` for npm);
/// otherwise it is built there (python3 -m venv + pip install -r, npm ci, or a command)
/// under a per-key build lock and marked complete only on success. Each record leaves
/// with `steps.deps` (kind, key, cache hit or built, ms). Defaults come from `[deps]` in
/// deploy.toml.
///
/// Exit status: 0 all hosts ok; 1 at least one host failed (its record has `error`, with
/// the installer's last lines); 2 usage, config or input error.
#[derive(Debug, Parser)]
#[command(name = "dp-deps", version)]
pub struct Args {
    /// The config file.
    #[command(flatten)]
    pub config: crate::args::ConfigArg,
    /// pip, npm, command or auto (default: `kind` in [deps], else auto).
    #[arg(long)]
    pub kind: Option<String>,
    /// Lockfile relative to the release (repeatable; default by kind).
    #[arg(long = "lockfile", value_name = "FILE")]
    pub lockfiles: Vec<String>,
    /// Build command for `--kind command` (run in the release with $DP_DEPS_DIR set).
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// Where `--kind command` links the environment in the release.
    #[arg(long, value_name = "PATH")]
    pub link: Option<String>,
    /// Extra argument for `pip install` (repeatable), such as --pip-arg=--no-index.
    #[arg(long = "pip-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub pip_args: Vec<String>,
    /// Python interpreter on the hosts (default: `python` in [deps], else python3).
    #[arg(long)]
    pub python: Option<String>,
    /// How many hosts at once.
    #[command(flatten)]
    pub jobs: crate::args::JobsArg,
    /// How long to wait for another deploy building the same environment.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = dp_core::config::parse_duration)]
    pub wait: std::time::Duration,
    #[arg(long, value_name = "DURATION", value_parser = dp_core::config::parse_duration,
        help = crate::args::or_default("How long building an environment may take before it is \
            stopped, with what the installer started",
            "`timeout` in [deps]", dp_core::defaults::text(dp_core::defaults::BUILD_TIMEOUT)))]
    pub timeout: Option<std::time::Duration>,
    /// A host environment variable that pip or npm may see (repeatable; default: `env`
    /// in [deps]). Every other PIP_* and npm_config_* variable is cleared, so a
    /// PIP_FIND_LINKS on the host or here cannot change what is installed.
    #[arg(long = "keep-env", value_name = "NAME")]
    pub keep_env: Vec<String>,
    /// Command run in the release once its dependencies are ready, before any host
    /// switches, with .venv/bin and node_modules/.bin first on PATH (default: `command`
    /// in [build]); collectstatic, say. A failure fails the host before the switch.
    #[arg(long, value_name = "CMD")]
    pub build: Option<String>,
    #[arg(long, value_name = "DURATION", value_parser = dp_core::config::parse_duration,
        help = crate::args::or_default("How long the build command may run",
            "`timeout` in [build]", dp_core::defaults::text(dp_core::defaults::BUILD_TIMEOUT)))]
    pub build_timeout: Option<std::time::Duration>,
    /// The deploy lock lease.
    #[command(flatten)]
    pub lease: crate::args::LeaseArg,
}

/// Runs `dp-deps`.
pub fn run() -> anyhow::Result<Exit> {
    exec(Args::parse())
}

/// Runs `dp-deps` with parsed arguments.
pub fn exec(args: Args) -> anyhow::Result<Exit> {
    let config = args.config.load()?;
    let build_section = config.as_ref().and_then(|c| c.build.clone());
    let deps = config.and_then(|c| c.deps).unwrap_or_default();
    let kind_name = args
        .kind
        .clone()
        .or(deps.kind.clone())
        .unwrap_or_else(|| "auto".into());
    let kind = Kind::parse(
        &kind_name,
        args.command.as_deref().or(deps.command.as_deref()),
        args.link.as_deref().or(deps.link.as_deref()),
    )
    .map_err(anyhow::Error::msg)?;
    let opts = DepsOptions {
        kind,
        lockfiles: flag_or(&args.lockfiles, deps.lockfiles),
        pip_args: flag_or(&args.pip_args, deps.pip_args),
        python: args
            .python
            .clone()
            .or(deps.python)
            .unwrap_or_else(|| "python3".into()),
        jobs: args.jobs.get(),
        wait: args.wait,
        timeout: args
            .timeout
            .or(deps.timeout)
            .unwrap_or(dp_deps::DEFAULT_TIMEOUT),
        lease: args.lease.lease,
        renew: dp_core::lock::Renew::Always,
        keep_env: flag_or(&args.keep_env, deps.env),
        build: args
            .build
            .clone()
            .or(build_section.as_ref().map(|b| b.command.clone()))
            .map(|command| dp_deps::Build {
                command,
                timeout: args
                    .build_timeout
                    .or(build_section.as_ref().and_then(|b| b.timeout))
                    .unwrap_or(dp_deps::DEFAULT_TIMEOUT),
            }),
    };
    opts.check().map_err(anyhow::Error::msg)?;
    let mut records = read_input("-")?;
    opts.check_templates(&records).map_err(anyhow::Error::msg)?;
    let mut sessions = Sessions::new();
    dp_deps::run(&mut records, &mut sessions, &opts);
    dp_core::lock::release_if_interrupted(&mut records, &mut sessions, opts.jobs, dp_deps::STEP);
    crate::report_failures("dp-deps", dp_deps::STEP, &records);
    write_output(&records)?;
    Ok(Exit::for_records(&records))
}

/// A repeatable flag's values when given, else the config's.
fn flag_or(flag: &[String], config: Vec<String>) -> Vec<String> {
    if flag.is_empty() {
        config
    } else {
        flag.to_vec()
    }
}
