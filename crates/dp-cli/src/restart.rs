//! `dp-restart`: roll the release out in batches behind health checks; finish the deploy.

use crate::io::{read_input, write_output};
use clap::Parser;
use dp_core::parallel::Sessions;
use dp_core::Exit;
use dp_restart::{Batch, Health, RestartOptions};

/// Switch each host to its record's release in rolling batches, restart and health-check
/// it, switch it back on failure; then clean up, write history and release the lock.
///
/// A barrier: all records are read first. If any record carries an error (a host that
/// failed before the switch), no host is switched: every other record says which host and
/// step stopped it, and the locks are released (--allow-unreachable N lets up to N hosts
/// that could not be connected to at all be left out instead). Per batch, in parallel:
/// `current` is switched atomically (a new symlink renamed over it), the restart command runs in the new
/// release, and the health check (an HTTP GET from here, or a command on the host) is
/// polled until it passes or --health-timeout. A host that fails is switched back to its
/// previous release and restarted; the rollout stops (beyond --max-fail failures) and
/// later hosts are marked skipped. Then, on every host that received the release, failed
/// ones included: the newest --keep complete releases are kept (never `current` or the
/// previous one), unused dependency environments and leftovers are removed, a line is
/// appended to `<root>/.dp/history.jsonl`, and the deploy lock is released.
///
/// With --in-place (what `dp restart` runs), nothing is switched: the restart command and
/// the health check run on the release `current` points to, in the same batches, under a
/// lock taken on every host first; a host that fails stops the rollout.
///
/// Templates (--command, --health-url, --health-cmd, --health-expect) take {host},
/// {addr}, {ssh_port}, {release}, {root} and the host's `vars` ({name}, so {port} is a
/// host var, never the SSH port); values are quoted for the shell and percent-encoded in
/// URLs. An unknown placeholder is a usage error before any host is touched.
///
/// Exit status: 0 all hosts ok; 1 at least one host failed or was skipped; 2 usage error.
#[derive(Debug, Parser)]
#[command(name = "dp-restart", version)]
pub struct Args {
    /// The config file.
    #[command(flatten)]
    pub config: crate::args::ConfigArg,
    /// Hosts per batch: a number (1) or a percentage (25%).
    #[arg(long, short = 'b', value_name = "N|P%")]
    pub batch: Option<Batch>,
    /// Restart command, run on each host as `/bin/sh -c CMD` in the new release's
    /// directory, with DP_RELEASE, DP_PREVIOUS_RELEASE and DP_ROOT set and stdin from
    /// /dev/null; not under `set -e` (its status is its last command's). A server it
    /// starts must detach (setsid nohup ... &, or systemctl restart). See the README's
    /// recipes (pid file, systemd, gunicorn HUP).
    #[arg(long, value_name = "CMD")]
    pub command: Option<String>,
    /// Health check URL, fetched from this machine until it answers 2xx (with the
    /// --health-expect text in the body, when given).
    #[arg(long, value_name = "URL", conflicts_with = "health_cmd")]
    pub health_url: Option<String>,
    /// Health check command, run in `current` on the host until it exits 0.
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Text the health check's answer must contain, such as `ok {release}` (default:
    /// `health_expect` in [restart]).
    #[arg(long, value_name = "TEXT")]
    pub health_expect: Option<String>,
    /// The app's log file on each host, templated (`{root}/shared/log/app.log`): a failed
    /// host's record carries its last 20 lines in `error.details` (default: `app_log` in
    /// [restart]).
    #[arg(long, value_name = "PATH")]
    pub app_log: Option<String>,
    #[arg(long, value_name = "DURATION", value_parser = dp_core::config::parse_duration,
        help = crate::args::or_default("How long a host may take to become healthy",
            "`health_timeout` in [restart]", dp_core::defaults::text(dp_core::defaults::HEALTH_TIMEOUT)))]
    pub health_timeout: Option<std::time::Duration>,
    #[arg(long, value_name = "DURATION", value_parser = dp_core::config::parse_duration,
        help = crate::args::or_default("How long the restart command may run on a host before it is \
            stopped, with what it started that did not detach",
            "`timeout` in [restart]", dp_core::defaults::text(dp_core::defaults::RESTART_TIMEOUT)))]
    pub timeout: Option<std::time::Duration>,
    /// Host failures to let pass before the rollout stops.
    #[arg(long, default_value_t = 0)]
    pub max_fail: usize,
    #[arg(long, help = crate::args::or_default("Complete releases to keep on each host",
        "`keep` in the config", dp_core::defaults::KEEP))]
    pub keep: Option<usize>,
    /// Hosts at once within a batch.
    #[arg(long, short = 'j', default_value_t = dp_core::defaults::JOBS, value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: u16,
    /// Switch every host back to the release that was live before `current` (from each
    /// host's .dp/history.jsonl: never one that failed or never served).
    #[arg(long)]
    pub rollback: bool,
    /// With --rollback: the release to return to on every host.
    #[arg(long, value_name = "RELEASE", requires = "rollback", value_parser = crate::args::release_id)]
    pub to: Option<String>,
    /// Switch nothing: run the restart command and the health check on the release
    /// `current` points to, in batches (a host that fails stops the rollout).
    #[arg(long, conflicts_with = "rollback")]
    pub in_place: bool,
    /// The deploy lock lease.
    #[command(flatten)]
    pub lease: crate::args::LeaseArg,
    /// Unreachable hosts that may be left out.
    #[command(flatten)]
    pub allow_unreachable: crate::args::AllowUnreachableArg,
}

/// Runs `dp-restart`.
pub fn run() -> anyhow::Result<Exit> {
    exec(Args::parse())
}

/// Runs `dp-restart` with parsed arguments.
pub fn exec(args: Args) -> anyhow::Result<Exit> {
    let config = args.config.load()?;
    let section = config
        .as_ref()
        .and_then(|c| c.restart.clone())
        .unwrap_or_default();
    let health = match (
        &args.health_url,
        &args.health_cmd,
        &section.health_url,
        &section.health_cmd,
    ) {
        (Some(u), _, _, _) => Some(Health::Url(u.clone())),
        (_, Some(c), _, _) => Some(Health::Command(c.clone())),
        (_, _, Some(u), _) => Some(Health::Url(u.clone())),
        (_, _, _, Some(c)) => Some(Health::Command(c.clone())),
        _ => None,
    };
    let batch = match (&args.batch, &section.batch) {
        (Some(b), _) => *b,
        (None, Some(b)) => b.parse().map_err(anyhow::Error::msg)?,
        (None, None) => Batch::Percent(100),
    };
    let opts = RestartOptions {
        batch,
        command: args.command.clone().or(section.command.clone()),
        health,
        health_timeout: args
            .health_timeout
            .or(section.health_timeout)
            .unwrap_or(dp_core::defaults::HEALTH_TIMEOUT),
        health_expect: args.health_expect.clone().or(section.health_expect.clone()),
        app_log: args.app_log.clone().or(section.app_log.clone()),
        timeout: args
            .timeout
            .or(section.timeout)
            .unwrap_or(dp_restart::DEFAULT_TIMEOUT),
        max_fail: args.max_fail,
        keep: args
            .keep
            .or(config.as_ref().and_then(|c| c.keep.map(|k| k as usize)))
            .unwrap_or(dp_core::defaults::KEEP),
        jobs: usize::from(args.jobs),
        action: if args.rollback {
            dp_restart::Action::Rollback(args.to.clone())
        } else if args.in_place {
            dp_restart::Action::Restart
        } else {
            dp_restart::Action::Deploy
        },
        lease: args.lease.lease,
        renew: dp_core::lock::Renew::Always,
        allow_unreachable: args.allow_unreachable.get(config.as_ref()),
    };
    let mut records = read_input("-")?;
    if let Err(e) = opts.check(&records) {
        if !records.iter().any(|r| r.release.is_some()) {
            anyhow::bail!(e);
        }
        // dp-sync has locked these hosts: switch none, give the locks back, and say why
        // on every record.
        for r in records.iter_mut() {
            r.fail(dp_restart::STEP, format!("not switched: {e}"));
        }
    }
    dp_restart::run(&mut records, &mut Sessions::new(), &opts);
    crate::report_failures("dp-restart", dp_restart::STEP, &records);
    write_output(&records)?;
    Ok(Exit::for_records(&records))
}
