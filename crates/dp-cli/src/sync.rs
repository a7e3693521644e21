//! `dp-sync`: upload the source as a new release to every host of the input records.

use crate::io::{read_input, write_output};
use anyhow::Context;
use clap::Parser;
use dp_core::parallel::Sessions;
use dp_core::Exit;
use dp_sync::{ScanOptions, SyncOptions};
use std::path::PathBuf;

/// Upload the source tree as a new release to every host read from stdin.
///
/// The source is scanned once (honouring .gitignore/.ignore, `exclude` from deploy.toml and
/// --exclude; .git is always skipped) and hashed in parallel. On each host, in parallel,
/// dp-sync takes the deploy lock (a lease renewed by later steps and released by
/// dp-restart), hard-links unchanged files from the newest complete release, streams only
/// new and changed files as one tar, links the `shared` paths, writes the manifest and
/// marks the release complete. Each record leaves with `release` and `steps.sync`.
///
/// Exit status: 0 all hosts ok; 1 at least one host failed (its record has `error`);
/// 2 usage, config, source or input error, before any host was touched.
#[derive(Debug, Parser)]
#[command(name = "dp-sync", version)]
pub struct Args {
    /// The config file.
    #[command(flatten)]
    pub config: crate::args::ConfigArg,
    /// Source directory (default: `source` from the config, else the current directory).
    #[arg(long, value_name = "DIR")]
    pub src: Option<PathBuf>,
    /// Release id for every host (default: UTC time plus a content hash prefix).
    #[arg(long, value_name = "ID")]
    pub release: Option<String>,
    /// Leave out paths matching this gitignore-style glob (repeatable).
    #[arg(long = "exclude", value_name = "GLOB")]
    pub excludes: Vec<String>,
    /// How many hosts at once.
    #[command(flatten)]
    pub jobs: crate::args::JobsArg,
    /// Recompute every file's SHA-256 on the host (sha256sum) before marking it complete.
    #[arg(long)]
    pub verify: bool,
    /// Do not use the local caches (manifests by digest, file hashes by stat): the host
    /// then sends its manifest back and every file is hashed.
    #[arg(long)]
    pub no_cache: bool,
    /// Never compress the upload (by default small uploads are compressed with bzip2 or gzip).
    #[arg(long)]
    pub no_compress: bool,
    /// Redeploy even when the release is already live with this content (by default such
    /// a host is marked `already_live` and the later steps leave it alone).
    #[arg(long)]
    pub force: bool,
    /// The deploy lock lease.
    #[command(flatten)]
    pub lease: crate::args::LeaseArg,
}

/// Runs `dp-sync`.
pub fn run() -> anyhow::Result<Exit> {
    exec(Args::parse())
}

/// Runs `dp-sync` with parsed arguments.
pub fn exec(args: Args) -> anyhow::Result<Exit> {
    let config = args.config.load()?;
    let src = match (&args.src, &config) {
        (Some(src), _) => src.clone(),
        (None, Some(c)) => c.source_dir(),
        (None, None) => PathBuf::from("."),
    };
    let mut excludes = config
        .as_ref()
        .map(|c| c.exclude.clone())
        .unwrap_or_default();
    excludes.extend(args.excludes.iter().cloned());
    let opts = SyncOptions {
        src,
        release: args.release.clone(),
        scan: ScanOptions {
            excludes,
            shared: config
                .as_ref()
                .map(|c| c.shared.clone())
                .unwrap_or_default(),
            hash_cache: None,
        },
        jobs: args.jobs.get(),
        verify: args.verify,
        lease: args.lease.lease,
        cache: !args.no_cache,
        compress: !args.no_compress,
        force: args.force,
        store: config
            .as_ref()
            .and_then(dp_sync::store::StoreOptions::from_config),
    };
    let mut records = read_input("-")?;
    let mut sessions = Sessions::new();
    dp_sync::scan_and_run(&mut records, &mut sessions, &opts)
        .context("cannot prepare the release")?;
    dp_core::lock::release_if_interrupted(&mut records, &mut sessions, opts.jobs, dp_sync::STEP);
    crate::report_failures("dp-sync", dp_sync::STEP, &records);
    crate::report_warnings("dp-sync", dp_sync::STEP, &records);
    write_output(&records)?;
    Ok(Exit::for_records(&records))
}
