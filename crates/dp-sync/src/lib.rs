//! dp-sync: upload a release to every host, sending only what the host lacks.
//!
//! The source is scanned and hashed once ([`scan`]); each host then needs two commands
//! ([`remote`]): one to take the deploy lock and read the manifest of its newest complete
//! release, one that receives a tar of the new and changed entries and builds the release
//! by hard-linking everything else from that base. A release only gets its final name
//! once complete, so a half-synced release can never become `current`.

pub mod cache;
pub mod codec;
pub mod manifest;
pub mod remote;
pub mod scan;
pub mod tarstream;

use dp_core::layout::{check_release_id, root_of};
use dp_core::lock;
use dp_core::parallel::Sessions;
use dp_core::transport::Transport;
use dp_core::Record;
use manifest::Manifest;
use serde::Serialize;
use std::collections::HashMap;
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
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
}

impl Prepared {
    /// Puts the new manifest in the local cache, once: a host has it now.
    fn remember_manifest(&self) {
        self.cached
            .call_once(|| self.cache.put(&self.manifest, &self.digest));
    }
}

/// Values made once per key, by the first host that asks; hosts asking for the same key
/// meanwhile wait for it rather than making it again.
struct OncePer<T> {
    slots: Mutex<HashMap<String, Slot<T>>>,
}

/// One key's value, made or not yet.
type Slot<T> = Arc<Mutex<Option<Arc<T>>>>;

impl<T> Default for OncePer<T> {
    fn default() -> Self {
        OncePer {
            slots: Mutex::default(),
        }
    }
}

impl<T> OncePer<T> {
    /// The value for `key`, made with `make` unless made before (a `None` is not kept).
    fn get_or(&self, key: &str, make: impl FnOnce() -> Option<T>) -> Option<Arc<T>> {
        let slot = self
            .slots
            .lock()
            .expect("not poisoned")
            .entry(key.to_string())
            .or_default()
            .clone();
        let mut slot = slot.lock().expect("not poisoned");
        if slot.is_none() {
            *slot = make().map(Arc::new);
        }
        slot.clone()
    }
}

/// What a new release needs beyond one base: the same for every host on that base.
struct Delta {
    /// Entries to send.
    send: Vec<manifest::Entry>,
    /// Regular files among them.
    files_sent: usize,
    /// Regular files hard-linked from the base.
    linked: usize,
    /// Paths of the base not carried over, NUL-terminated (`.dp/remove`).
    remove_list: Vec<u8>,
    /// How many.
    removed: usize,
    /// Base manifest lines the host leaves out (`.dp/manifest.drop`).
    drop_lines: String,
    /// Lines the host adds (`.dp/manifest.add`).
    add_lines: String,
    /// About the bytes of the uncompressed tar.
    payload: u64,
}

impl Delta {
    fn new(base: Option<&Manifest>, new: &Manifest) -> Delta {
        let empty = Manifest::default();
        let base_manifest = base.unwrap_or(&empty);
        let diff = manifest::diff(base_manifest, new);
        let remove_list: Vec<u8> = diff
            .remove
            .iter()
            .flat_map(|r| r.bytes().chain([0u8]))
            .collect();
        // The host rebuilds the new manifest: base lines of changed or removed paths are
        // dropped, lines of sent entries added (with the header when there is no base).
        let sent_paths: std::collections::HashSet<&str> =
            diff.send.iter().map(|e| e.path.as_str()).collect();
        let removed: std::collections::HashSet<&str> =
            diff.remove.iter().map(String::as_str).collect();
        let mut drop_lines = String::new();
        for (e, line) in base_manifest.entries.iter().zip(base_manifest.lines()) {
            if sent_paths.contains(e.path.as_str()) || removed.contains(e.path.as_str()) {
                drop_lines.push_str(line);
                drop_lines.push('\n');
            }
        }
        let mut add_lines = String::new();
        if base.is_none() {
            add_lines.push_str(Manifest::header());
            add_lines.push('\n');
        }
        for (e, line) in new.entries.iter().zip(new.lines()) {
            if sent_paths.contains(e.path.as_str()) {
                add_lines.push_str(line);
                add_lines.push('\n');
            }
        }
        let payload = diff
            .send
            .iter()
            .map(|e| match e.kind {
                manifest::Kind::File { size, .. } => size + 512,
                _ => 512,
            })
            .sum();
        Delta {
            files_sent: diff.send.iter().filter(|e| e.is_file()).count(),
            send: diff.send.into_iter().cloned().collect(),
            linked: diff.linked,
            removed: diff.remove.len(),
            remove_list,
            drop_lines,
            add_lines,
            payload,
        }
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
    /// Things the user should know (an expired lock taken over, leftovers cleaned).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Milliseconds on this host.
    pub ms: u64,
    /// Milliseconds scanning and hashing the source (once for all hosts).
    pub scan_ms: u64,
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
/// (`dp deploy` makes the dependencies ready this way), made from the host's record.
pub type Then<'a> = &'a (dyn Fn(&Record) -> Result<String, String> + Sync);

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
/// the others in parallel, and builds the releases only if no other deploy holds any of
/// them. Two deploys of the same hosts thus meet on the first host and exactly one goes
/// on; a deploy refused anywhere gives back the locks it took and fails every record: a
/// deploy goes to all its hosts or to none. It costs no extra round trip: the lock is
/// taken by the same script that reads the host's base release.
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
    let prepare = |conn: &mut dp_core::transport::Connection, record: &mut Record| {
        Ok(prepare_host(conn, record, p, opts))
    };
    let mut states: Vec<(usize, Result<HostState, PrepareError>)> = Vec::new();
    let first = sessions.run_indices(records, &order[..1], 1, prepare);
    states.push((
        order[0],
        flatten(first.into_iter().next().expect("one result")),
    ));
    if !matches!(states[0].1, Err(PrepareError::Held(_))) {
        let rest = sessions.run_indices(records, &order[1..], opts.jobs, prepare);
        states.extend(
            order[1..]
                .iter()
                .copied()
                .zip(rest.into_iter().map(flatten)),
        );
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
    for (i, state) in states {
        match state {
            Ok(HostState::Done(mut stats)) => {
                stats.ms = started.elapsed().as_millis() as u64;
                stats.scan_ms = p.scan_ms;
                records[i].set_step(STEP, stats);
            }
            Ok(plan) => {
                to_build.push(i);
                plans.insert(i, plan);
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
        stats.ms = (started.elapsed().as_millis() as u64)
            .saturating_sub(then_out.as_ref().map_or(0, |t| t.ms));
        stats.scan_ms = p.scan_ms;
        Ok((stats, then_out))
    });
    let mut thens = HashMap::new();
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

fn flatten(r: Result<Result<HostState, PrepareError>, String>) -> Result<HostState, PrepareError> {
    r.map_err(PrepareError::Failed).and_then(|x| x)
}

/// What the first script found on a host.
pub enum HostState {
    /// The release is already complete there with this content: nothing to do.
    Done(SyncStats),
    /// Build the release on this base.
    Build {
        /// Stats so far.
        stats: SyncStats,
        /// The release to hard-link from.
        base: Option<Base>,
        /// The decompressors the host has.
        codecs: codec::HostCodecs,
    },
}

/// The release a new one is built on.
pub struct Base {
    /// Its id.
    pub id: String,
    /// The digest of its manifest.
    pub digest: String,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
}

/// Why a host cannot be synced.
#[derive(Debug)]
pub enum PrepareError {
    /// Another release holds the deploy lock.
    Held(String),
    /// Anything else.
    Failed(String),
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

/// Syncs one host over an open transport: [`prepare_host`], then [`build_host`].
pub fn sync_host(
    conn: &mut dyn Transport,
    record: &Record,
    p: &Prepared,
    opts: &SyncOptions,
) -> Result<SyncStats, String> {
    match prepare_host(conn, record, p, opts) {
        Ok(HostState::Done(stats)) => Ok(stats),
        Ok(plan) => build_host(conn, record, p, opts, plan),
        Err(PrepareError::Held(m)) | Err(PrepareError::Failed(m)) => Err(m),
    }
}

/// The first script on a host: take the deploy lock, clean leftovers, find the base.
pub fn prepare_host(
    conn: &mut dyn Transport,
    record: &Record,
    p: &Prepared,
    opts: &SyncOptions,
) -> Result<HostState, PrepareError> {
    let fail = PrepareError::Failed;
    let root = root_of(record).map_err(fail)?;
    let mut stats = SyncStats {
        release: p.release.clone(),
        entries: p.manifest.entries.len(),
        ..SyncStats::default()
    };
    let script =
        remote::prepare(root, &p.release, opts.lease, &p.offer).map_err(|e| fail(e.to_string()))?;
    stats.bytes_sent += script.len() as u64;
    let out = conn.run(&script).map_err(|e| fail(e.to_string()))?;
    stats.bytes_received += (out.stdout.len() + out.status.stderr.len()) as u64;
    if let Some(held) = lock::held(&out.status) {
        return Err(PrepareError::Held(held));
    }
    out.status
        .check("preparing the release")
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (head, manifest_text) = text
        .split_once(remote::MANIFEST_MARK)
        .unwrap_or((&text, ""));
    let manifest_text = manifest_text.strip_prefix('\n').unwrap_or(manifest_text);
    let mut base = None;
    let mut digest = None;
    let mut self_complete = false;
    let mut codecs = codec::HostCodecs::default();
    for line in head.lines() {
        if let Some(w) = lock::takeover_warning(line) {
            stats.warnings.push(w);
        } else if let Some(c) = line.strip_prefix("current ") {
            stats.current = Some(c.to_string()).filter(|c| !c.is_empty());
        } else if let Some(b) = line.strip_prefix("base ") {
            base = Some(b.to_string()).filter(|b| check_release_id(b).is_ok());
        } else if let Some(d) = line.strip_prefix("digest ") {
            digest = Some(d.to_string());
        } else if codecs.parse_line(line) {
        } else if line == "self complete" {
            self_complete = true;
        } else if let Some(d) = line.strip_prefix("cleaned ") {
            stats
                .warnings
                .push(format!("removed {d}, left by an interrupted sync"));
        }
    }
    // The manifest the host reported: sent in full, or named by a digest we have cached.
    let reported = |digest: &str| -> Option<Arc<Manifest>> {
        p.bases.get_or(digest, || {
            if manifest_text.is_empty() {
                return p.cache.get(digest);
            }
            let m = Manifest::parse(manifest_text)?;
            (m.digest() == digest).then(|| {
                p.cache.put(&m, digest);
                m
            })
        })
    };
    if self_complete {
        return match digest {
            Some(d) if d == p.digest => {
                stats.noop = true;
                stats.already_live = !opts.force && stats.current.as_deref() == Some(&p.release);
                stats.linked = p.manifest.file_count();
                Ok(HostState::Done(stats))
            }
            _ => Err(fail(format!(
                "release {} already exists on the host with different content; choose another --release",
                p.release
            ))),
        };
    }
    let base = match (base, digest) {
        (Some(id), Some(digest)) => match reported(&digest) {
            Some(manifest) => Some(Base {
                id,
                digest,
                manifest,
            }),
            None => {
                stats
                    .warnings
                    .push(format!("manifest of {id} unreadable: sending everything"));
                None
            }
        },
        (Some(id), None) => {
            stats
                .warnings
                .push(format!("manifest of {id} missing: sending everything"));
            None
        }
        (None, _) => None,
    };
    Ok(HostState::Build {
        stats,
        base,
        codecs,
    })
}

/// The second script on a host: build the release from its base and the tar of changes.
pub fn build_host(
    conn: &mut dyn Transport,
    record: &Record,
    p: &Prepared,
    opts: &SyncOptions,
    state: HostState,
) -> Result<SyncStats, String> {
    build_host_then(conn, record, p, opts, state, None).map(|(s, _)| s)
}

/// Marks, on stdout and stderr, where the output of a [`Then`] script starts.
const THEN_MARK: &[u8] = b"---dp-then---\n";
/// Starts the line with the exit status of a [`Then`] script.
const THEN_STATUS: &str = "---dp-then-status ";

/// The shell that runs `script` after the build, in a subshell with its own `set -e`,
/// whatever its exit status (the build is done by then).
fn then_script(script: &str) -> String {
    let mark = std::str::from_utf8(THEN_MARK).expect("ascii");
    format!("set +e\nprintf '%s' '{mark}'\nprintf '%s' '{mark}' >&2\n(\n{script}\n)\necho \"{THEN_STATUS}$?\"\n")
}

/// [`build_host`], then `then` in the same session when given.
fn build_host_then(
    conn: &mut dyn Transport,
    record: &Record,
    p: &Prepared,
    opts: &SyncOptions,
    state: HostState,
    then: Option<Then>,
) -> Result<(SyncStats, Option<ThenOutput>), String> {
    let root = root_of(record)?;
    let HostState::Build {
        mut stats,
        base,
        codecs,
    } = state
    else {
        return match state {
            HostState::Done(stats) => Ok((stats, None)),
            HostState::Build { .. } => unreachable!(),
        };
    };
    stats.base = base.as_ref().map(|b| b.id.clone());
    let key = base.as_ref().map(|b| b.digest.as_str()).unwrap_or("");
    let delta = p
        .deltas
        .get_or(key, || {
            Some(Delta::new(base.as_ref().map(|b| &*b.manifest), &p.manifest))
        })
        .expect("always made");
    stats.files_sent = delta.files_sent;
    stats.linked = delta.linked;
    stats.removed = delta.removed;
    let payload = delta.payload;
    let choice = codec::choose(codecs, payload, opts.compress);
    let plan = remote::BuildPlan {
        root,
        release: &p.release,
        base: base.as_ref().map(|b| b.id.as_str()),
        shared: &opts.scan.shared,
        verify: opts.verify,
        digest: &p.digest,
        codec: choice.codec,
    };
    let mut script = remote::build(&plan).map_err(|e| e.to_string())?;
    stats.bytes_sent += script.len() as u64;
    let mut then_out = None;
    match then.map(|f| f(record)) {
        Some(Ok(s)) => script.push_str(&then_script(&s)),
        Some(Err(e)) => {
            then_out = Some(ThenOutput {
                output: Err(e),
                ms: 0,
            })
        }
        None => {}
    }
    let chained = then_out.is_none() && then.is_some();
    stats.compression = plan.codec;
    // REVISION (Capistrano's convention): the release id, for the app. It travels as an
    // entry of its own, so it replaces the base's link like any sent file (never writing
    // through it), at no cost of a process on the host.
    let revision = format!("{}\n", p.release);
    let mut extra: Vec<(&str, &[u8])> = vec![
        ("REVISION", revision.as_bytes()),
        (".dp/remove", &delta.remove_list),
        (".dp/manifest.drop", delta.drop_lines.as_bytes()),
        (".dp/manifest.add", delta.add_lines.as_bytes()),
    ];
    if opts.verify {
        extra.push((".dp/sha256sums", p.sha256sums.as_bytes()));
    }
    // Last: the host checks it arrived (see remote::build).
    extra.push((".dp/end", b""));
    let send: Vec<&manifest::Entry> = delta.send.iter().collect();
    let tar = tarstream::TarReader::new(&p.src, &send, &extra);
    let mut counted = Counting {
        inner: choice.reader(tar),
        count: 0,
        error: None,
    };
    let mut stdout = MarkClock {
        buf: Vec::new(),
        seen: None,
    };
    let status = conn.exec(&script, Some(&mut counted), &mut stdout);
    stats.bytes_sent += counted.count;
    if let Some(e) = counted.error {
        return Err(format!("reading the source: {e}"));
    }
    let ended = Instant::now();
    let (mut stdout, built_at) = (stdout.buf, stdout.seen);
    // The part after the mark is the then-script's; the build is done once it shows.
    let then_part = built_at.map(|at| {
        let start = find(&stdout, THEN_MARK).expect("seen") + THEN_MARK.len();
        let part = stdout.split_off(start);
        stdout.truncate(start - THEN_MARK.len());
        (at, part)
    });
    let status = match (status, then_part) {
        (Err(e), Some((at, _))) => {
            stats.bytes_received += stdout.len() as u64;
            p.remember_manifest();
            let t = ThenOutput {
                output: Err(e.to_string()),
                ms: ended.duration_since(at).as_millis() as u64,
            };
            return Ok((stats, Some(t)));
        }
        (Err(e), None) => return Err(format!("sending the release: {e}")),
        (Ok(status), Some((at, part))) if chained && status.success() => {
            // Only the tail of stderr is kept: when the then-script wrote so much that
            // the mark fell out of it, all of it is the then-script's.
            let (build_err, then_err) = match find(&status.stderr, THEN_MARK) {
                Some(i) => (
                    status.stderr[..i].to_vec(),
                    status.stderr[i + THEN_MARK.len()..].to_vec(),
                ),
                None => (Vec::new(), status.stderr.clone()),
            };
            stats.bytes_received += (stdout.len() + build_err.len()) as u64;
            then_out = Some(ThenOutput {
                output: then_result(part, then_err),
                ms: ended.duration_since(at).as_millis() as u64,
            });
            status
        }
        (Ok(status), _) => {
            stats.bytes_received += (stdout.len() + status.stderr.len()) as u64;
            status
        }
    };
    status
        .check("building the release")
        .map_err(|e| e.to_string())?;
    p.remember_manifest();
    Ok((stats, then_out))
}

/// The then-script's output and status from what followed the mark.
fn then_result(mut stdout: Vec<u8>, stderr: Vec<u8>) -> Result<dp_core::transport::Output, String> {
    let mark = THEN_STATUS.as_bytes();
    let Some(at) = stdout.windows(mark.len()).rposition(|w| w == mark) else {
        return Err("the host did not report how the step ended".into());
    };
    let code: i32 = String::from_utf8_lossy(&stdout[at + mark.len()..])
        .trim()
        .parse()
        .map_err(|_| "the host reported an unreadable exit status".to_string())?;
    stdout.truncate(at);
    Ok(dp_core::transport::Output {
        status: dp_core::transport::ExecStatus {
            code: Some(code),
            signal: None,
            stderr,
        },
        stdout,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Collects stdout and notes when the then-mark arrived.
struct MarkClock {
    buf: Vec<u8>,
    seen: Option<Instant>,
}

impl std::io::Write for MarkClock {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let from = self.buf.len().saturating_sub(THEN_MARK.len());
        self.buf.extend_from_slice(data);
        if self.seen.is_none() && find(&self.buf[from..], THEN_MARK).is_some() {
            self.seen = Some(Instant::now());
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts the bytes read through it and keeps the error that stopped it, if any.
struct Counting<R> {
    inner: R,
    count: u64,
    error: Option<std::io::Error>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = std::io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(copy)
            }
        }
    }
}
