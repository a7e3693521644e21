//! dp-sync: upload a release to every host, sending only what the host lacks.
//!
//! The source is scanned and hashed once ([`scan`]); each host then needs two commands
//! ([`remote`]): one to take the deploy lock and read the manifest of its newest complete
//! release, one that receives a tar of the new and changed entries and builds the release
//! by hard-linking everything else from that base. A release only gets its final name
//! once complete, so a half-synced release can never become `current`.

pub mod cache;
pub mod codec;
mod delta;
mod host;
mod io;
pub mod manifest;
pub mod plan;
pub mod remote;
pub mod scan;
pub mod store;
pub mod tarstream;
mod then;

use delta::{Delta, OncePer};
use host::build_host_then;
pub use host::{build_host, prepare_host, sync_host, Base, HostState, PrepareError};

use dp_core::layout::check_release_id;
use dp_core::lock;
use dp_core::parallel::Sessions;
use dp_core::Record;
use manifest::Manifest;
use serde::Serialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

pub use scan::{ScanError, ScanOptions};

/// The step name in records.
pub const STEP: &str = "sync";

/// How to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// The source directory.
    pub src: PathBuf,
    /// The release id; generated from time and content when `None`.
    pub release: Option<String>,
    /// Excludes and shared paths.
    pub scan: ScanOptions,
    /// Hosts at once.
    pub jobs: usize,
    /// Recompute every hash on the host with sha256sum before marking complete.
    pub verify: bool,
    /// Deploy lock lease.
    pub lease: Duration,
    /// Use the local caches (see [`cache`] and [`scan::HashCache`]).
    pub cache: bool,
    /// Compress small payloads (see [`codec`]).
    pub compress: bool,
    /// Redeploy a release that is already live with this content (else the later steps
    /// leave such a host alone: see [`SyncStats::already_live`]).
    pub force: bool,
    /// Large payloads through an object store (`[artifacts]`; see [`store`]).
    pub store: Option<store::StoreOptions>,
}

/// A problem found before any host was touched.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The source could not be scanned.
    #[error(transparent)]
    Scan(#[from] ScanError),
    /// A bad option.
    #[error("{0}")]
    Invalid(String),
}

/// The scanned source, ready to be sent to any number of hosts.
pub struct Prepared {
    /// Milliseconds the scan took (once, for all hosts).
    pub scan_ms: u64,
    /// Source directory.
    pub src: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
    /// The release id for every host.
    pub release: String,
    digest: String,
    sha256sums: String,
    cache: cache::ManifestCache,
    /// Digests of the manifests in the local cache, offered to every host.
    offer: Vec<String>,
    /// Base manifests by digest, read or parsed once for all hosts.
    bases: OncePer<Manifest>,
    /// What a host needs, by its base's digest (empty without a base), worked out once
    /// for all hosts on that base.
    deltas: OncePer<Delta>,
    /// The new manifest went into the local cache.
    cached: std::sync::Once,
    /// What this machine built on each host last.
    memory: cache::HostMemory,
    /// The artifact store, when large payloads go through one.
    store: Option<store::Store>,
    /// Payloads put in the store, by base digest and codec: uploaded once for all hosts
    /// on that base (a failure too is kept, not retried by every host).
    payloads: OncePer<Result<host::Payload, String>>,
    /// Small payloads escaped for the build script (see `host::inline_payload`), by base
    /// digest and codec: made once for all hosts on that base (one too large, once too).
    inlines: OncePer<Option<String>>,
    /// Old payloads were deleted from the store (once per run, after an upload).
    pruned: std::sync::Once,
}

impl Prepared {
    /// The artifact store, when a payload of this many bytes goes through it.
    fn store_for(&self, payload: u64) -> Option<&store::Store> {
        self.store.as_ref().filter(|s| payload >= s.threshold)
    }

    /// Remembers that this release is built on the host (see [`cache::HostMemory`]).
    fn remember_host(&self, record: &Record, codecs: codec::HostCodecs) {
        self.memory.put(
            record,
            &cache::Built {
                release: self.release.clone(),
                digest: self.digest.clone(),
                codecs,
            },
        );
    }

    /// Puts the new manifest in the local cache, once: a host has it now.
    fn remember_manifest(&self) {
        self.cached
            .call_once(|| self.cache.put(&self.manifest, &self.digest));
    }
}

/// Scans the source and fixes the release id.
pub fn prepare(opts: &SyncOptions) -> Result<Prepared, SyncError> {
    for p in &opts.scan.shared {
        if !manifest::is_clean_relative(p.trim_end_matches('/')) || p.chars().any(char::is_control)
        {
            return Err(SyncError::Invalid(format!(
                "shared path {p:?} must be relative, without `.`, `..` or control characters"
            )));
        }
    }
    if let Some(id) = &opts.release {
        check_release_id(id).map_err(SyncError::Invalid)?;
    }
    let store = opts
        .store
        .as_ref()
        .map(store::Store::open)
        .transpose()
        .map_err(SyncError::Invalid)?;
    let started = Instant::now();
    let cache = if opts.cache {
        cache::ManifestCache::open_default()
    } else {
        cache::ManifestCache::disabled()
    };
    let mut scan_opts = opts.scan.clone();
    if scan_opts.hash_cache.is_none() {
        scan_opts.hash_cache = opts
            .cache
            .then(cache::cache_root)
            .flatten()
            .map(|d| d.join("hashes"));
    }
    let manifest = scan::scan(&opts.src, &scan_opts)?;
    let scan_ms = started.elapsed().as_millis() as u64;
    let release = match &opts.release {
        Some(id) => id.clone(),
        None => release_id(SystemTime::now(), &manifest),
    };
    Ok(Prepared {
        scan_ms,
        src: opts.src.clone(),
        digest: manifest.digest(),
        sha256sums: if opts.verify {
            manifest.sha256sums()
        } else {
            String::new()
        },
        offer: cache.offer(),
        manifest,
        release,
        cache,
        bases: OncePer::default(),
        deltas: OncePer::default(),
        cached: std::sync::Once::new(),
        memory: cache::HostMemory::open(opts.cache),
        store,
        payloads: OncePer::default(),
        inlines: OncePer::default(),
        pruned: std::sync::Once::new(),
    })
}

/// `YYYYMMDDTHHMMSSZ-<first 8 hex of the manifest digest>`.
pub fn release_id(now: SystemTime, manifest: &Manifest) -> String {
    let stamp = humantime::format_rfc3339_seconds(now)
        .to_string()
        .replace(['-', ':'], "");
    format!("{stamp}-{}", &manifest.digest()[..8])
}

/// What dp-sync did on one host (`steps.sync`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct SyncStats {
    /// The release built.
    pub release: String,
    /// The release its unchanged files were hard-linked from.
    pub base: Option<String>,
    /// `current` before this sync.
    pub current: Option<String>,
    /// Entries in the release.
    pub entries: usize,
    /// Regular files sent.
    pub files_sent: usize,
    /// Regular files hard-linked from the base.
    pub linked: usize,
    /// Paths of the base not carried over.
    pub removed: usize,
    /// Bytes written to the host (scripts and tar stream).
    pub bytes_sent: u64,
    /// Bytes read back from the host.
    pub bytes_received: u64,
    /// The release was already complete with the same content: nothing was done.
    pub noop: bool,
    /// ... and it is `current` already: no migration, switch or restart follows for this
    /// host (unless `--force`). See [`dp_core::gate::already_live`].
    pub already_live: bool,
    /// How the upload was compressed.
    pub compression: codec::Codec,
    /// The payload came from the artifact store (`[artifacts]`), not over SSH.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreUse>,
    /// Exchanges with the host: 2 (the lock and base, then the build), or 1 (a release
    /// complete already; or the build sent with the lock on the base this machine built
    /// there last, see [`cache::HostMemory`]); one more where a payload the host could
    /// not fetch from the store was sent over SSH instead.
    pub exchanges: u8,
    /// Things the user should know (an expired lock taken over, leftovers cleaned).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Milliseconds on this host.
    pub ms: u64,
    /// Milliseconds scanning and hashing the source (once for all hosts).
    pub scan_ms: u64,
}

/// A payload the host fetched from the artifact store (`steps.sync.store`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct StoreUse {
    /// The object's name: `<prefix>/<release>/<sha256>.tar[.gz|.bz2]`.
    pub object: String,
    /// Its size: what the host fetched.
    pub bytes: u64,
    /// This host's sync uploaded it. A payload is uploaded once for all the hosts that
    /// need it, and not at all when the store has it already.
    pub uploaded: bool,
    /// Old payloads this upload deleted from the store (`[artifacts] keep`).
    #[serde(skip_serializing_if = "is_zero")]
    pub pruned: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Scans the source while connecting to the hosts, then syncs them: the whole step.
pub fn scan_and_run(
    records: &mut [Record],
    sessions: &mut Sessions,
    opts: &SyncOptions,
) -> Result<Prepared, SyncError> {
    scan_and_run_then(records, sessions, opts, None).map(|(p, _)| p)
}

/// A script to run on a host in the same session, right after its release is built
/// (`dp deploy` makes the dependencies ready this way), made from the host's record; it
/// is sent inside the build's script, which carries the helpers both use once.
pub type Then<'a> = &'a (dyn Fn(&Record) -> Result<dp_core::layout::Script, String> + Sync);

/// What the [`Then`] script did on one host.
#[derive(Debug)]
pub struct ThenOutput {
    /// Its output and exit status, or why it could not run to the end.
    pub output: Result<dp_core::transport::Output, String>,
    /// Milliseconds from the end of the build to the end of the script.
    pub ms: u64,
}

/// [`scan_and_run`], running `then` after each build in the same session. Gives the
/// output of `then` by record index, for the hosts where it ran (not where the release
/// was already complete, nor where the sync failed).
pub fn scan_and_run_then(
    records: &mut [Record],
    sessions: &mut Sessions,
    opts: &SyncOptions,
    then: Option<Then>,
) -> Result<(Prepared, HashMap<usize, ThenOutput>), SyncError> {
    let prepared = std::thread::scope(|s| {
        let scan = s.spawn(|| prepare(opts));
        sessions.connect(records, opts.jobs, STEP);
        scan.join()
            .unwrap_or_else(|_| Err(SyncError::Invalid("the scan panicked".into())))
    })?;
    let thens = run_phased(records, sessions, &prepared, opts, then);
    Ok((prepared, thens))
}

/// Prepares every host (taking its deploy lock), the first host by name alone and then
/// the others in parallel. Two deploys of the same hosts thus meet on the first host and
/// exactly one goes on; a deploy refused anywhere gives back the locks it took and fails
/// every record: a deploy goes to all its hosts or to none (a release may have been built
/// on a host that was free, unused). It costs no extra round trip: the lock is taken by
/// the same script that reads the host's base release, and where this machine knows the
/// base ([`host::guess`]), by the script that builds. The first host's own build runs
/// beside the others' first exchange; it is guessed only when it is the only host, so
/// that the others wait for its lock, not for its build.
fn run_phased(
    records: &mut [Record],
    sessions: &mut Sessions,
    p: &Prepared,
    opts: &SyncOptions,
    then: Option<Then>,
) -> HashMap<usize, ThenOutput> {
    let mut order: Vec<usize> = (0..records.len())
        .filter(|&i| !records[i].failed())
        .collect();
    order.sort_by(|&a, &b| records[a].host.cmp(&records[b].host));
    if order.is_empty() {
        return HashMap::new();
    }
    for &i in &order {
        // Set even if the sync fails: dp-restart's finish then releases this release's
        // lock on the host (and only a lock this release holds).
        records[i].release = Some(p.release.clone());
    }
    let started = Instant::now();
    // Where this machine knows what it built last, the lock, the base check and the
    // build go in one exchange (the lock is still taken first: a host held by another
    // deploy builds nothing); elsewhere, or when the guess was wrong, in two.
    let alone = order.len() == 1;
    let first_host = records[order[0]].host.clone();
    let first_plan: std::sync::Mutex<Option<HostState>> = std::sync::Mutex::new(None);
    let exchange = |conn: &mut dp_core::transport::Connection, record: &mut Record| {
        let first = record.host == first_host;
        if first {
            // Its lock is taken: now its build, beside the others' first exchange.
            if let Some(plan) = first_plan.lock().expect("not poisoned").take() {
                return Ok(
                    match host::build_host_then(conn, record, p, opts, plan, then) {
                        Ok((mut stats, then_out)) => {
                            stats.exchanges += 2;
                            Ok(Stage::Built(stats, then_out))
                        }
                        Err(m) => Err(PrepareError::Failed(m)),
                    },
                );
            }
        }
        if !first || alone {
            if let Some(state) = host::guess(record, p) {
                let guessed = host::Mode::Guessed;
                return match host::build_exchange(conn, record, p, opts, state, then, guessed)? {
                    host::Built::Done(mut stats, then_out) => {
                        stats.exchanges += 1;
                        Ok(Ok(Stage::Built(stats, then_out)))
                    }
                    host::Built::Missed(said) => Ok(said.map(Stage::Prepared)),
                };
            }
        }
        Ok(prepare_host(conn, record, p, opts).map(Stage::Prepared))
    };
    let mut states: Vec<(usize, Result<Stage, PrepareError>)> = Vec::new();
    let first = sessions.run_indices(records, &order[..1], 1, exchange);
    let first = flatten(first.into_iter().next().expect("one result"));
    if !matches!(first, Err(PrepareError::Held(_))) {
        let mut next: Vec<usize> = order[1..].to_vec();
        match first {
            Ok(Stage::Prepared(plan @ HostState::Build { .. })) if !alone => {
                *first_plan.lock().expect("not poisoned") = Some(plan);
                next.insert(0, order[0]);
            }
            other => states.push((order[0], other)),
        }
        let rest = sessions.run_indices(records, &next, opts.jobs, exchange);
        states.extend(next.iter().copied().zip(rest.into_iter().map(flatten)));
    } else {
        states.push((order[0], first));
    }
    let held = states.iter().find_map(|(i, s)| match s {
        Err(PrepareError::Held(m)) => Some((records[*i].host.clone(), m.clone())),
        _ => None,
    });
    if let Some((host, message)) = held {
        let taken: Vec<usize> = states
            .iter()
            .filter(|(_, s)| s.is_ok())
            .map(|(i, _)| *i)
            .collect();
        lock::release_on(records, sessions, &taken, opts.jobs);
        let why = dp_core::gate::Blocked {
            host: host.clone(),
            step: STEP.to_string(),
            message: message.clone(),
        };
        for r in records.iter_mut().filter(|r| r.host == host) {
            r.fail(STEP, message.clone());
        }
        dp_core::gate::mark_held_back(records, STEP, &why);
        return HashMap::new();
    }
    let mut to_build: Vec<usize> = Vec::new();
    let mut plans: std::collections::HashMap<usize, HostState> = std::collections::HashMap::new();
    let mut thens = HashMap::new();
    for (i, state) in states {
        match state {
            Ok(Stage::Prepared(HostState::Done(mut stats))) => {
                stats.exchanges = 1;
                stats.ms = started.elapsed().as_millis() as u64;
                stats.scan_ms = p.scan_ms;
                records[i].set_step(STEP, stats);
            }
            Ok(Stage::Prepared(plan)) => {
                to_build.push(i);
                plans.insert(i, plan);
            }
            Ok(Stage::Built(mut stats, then_out)) => {
                stats.ms = (started.elapsed().as_millis() as u64)
                    .saturating_sub(then_out.as_ref().map_or(0, |t| t.ms));
                stats.scan_ms = p.scan_ms;
                records[i].set_step(STEP, stats);
                if let Some(t) = then_out {
                    thens.insert(i, t);
                }
            }
            Err(PrepareError::Failed(m)) | Err(PrepareError::Held(m)) => records[i].fail(STEP, m),
        }
    }
    let plans = std::sync::Mutex::new(plans);
    let index_of: std::collections::HashMap<String, usize> = to_build
        .iter()
        .map(|&i| (records[i].host.clone(), i))
        .collect();
    let results = sessions.run_indices(records, &to_build, opts.jobs, |conn, record| {
        let i = index_of[&record.host];
        let plan = plans
            .lock()
            .expect("not poisoned")
            .remove(&i)
            .expect("planned");
        let (mut stats, then_out) = build_host_then(conn, record, p, opts, plan, then)?;
        stats.exchanges += 2;
        stats.ms = (started.elapsed().as_millis() as u64)
            .saturating_sub(then_out.as_ref().map_or(0, |t| t.ms));
        stats.scan_ms = p.scan_ms;
        Ok((stats, then_out))
    });
    for (i, result) in to_build.into_iter().zip(results) {
        match result {
            Ok((stats, then_out)) => {
                records[i].set_step(STEP, stats);
                if let Some(t) = then_out {
                    thens.insert(i, t);
                }
            }
            Err(m) => records[i].fail(STEP, m),
        }
    }
    thens
}

/// Where a host is after its first exchange.
enum Stage {
    /// Prepared: the build comes next (or nothing, the release being complete).
    Prepared(HostState),
    /// Built already, in the same exchange ([`host::build_exchange`]).
    Built(SyncStats, Option<ThenOutput>),
}

fn flatten(r: Result<Result<Stage, PrepareError>, String>) -> Result<Stage, PrepareError> {
    r.map_err(PrepareError::Failed).and_then(|x| x)
}

/// Syncs every record that has not failed, at most `opts.jobs` hosts at once, each host
/// on its own (no all-or-nothing locking; see [`scan_and_run`] for that).
pub fn run(
    records: &mut [Record],
    sessions: &mut Sessions,
    prepared: &Prepared,
    opts: &SyncOptions,
) {
    sessions.run(records, opts.jobs, STEP, |conn, record| {
        let started = Instant::now();
        record.release = Some(prepared.release.clone());
        let mut stats = sync_host(conn, record, prepared, opts)?;
        stats.ms = started.elapsed().as_millis() as u64;
        stats.scan_ms = prepared.scan_ms;
        record.set_step(STEP, stats);
        Ok(())
    });
}
