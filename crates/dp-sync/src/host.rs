//! One host's sync: the two scripts ([`crate::remote`]) and what their output says: the
//! lock taken, the base and its manifest, then the upload and the build.

use crate::delta::Delta;
use crate::io::{Counting, MarkClock};
use crate::then::{find, then_result, then_script, THEN_MARK};
use crate::{
    codec, manifest, remote, tarstream, Prepared, SyncOptions, SyncStats, Then, ThenOutput,
};
use dp_core::layout::{check_release_id, root_of};
use dp_core::lock;
use dp_core::transport::Transport;
use dp_core::Record;
use manifest::Manifest;
use std::sync::Arc;
use std::time::Instant;

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

/// Syncs one host over an open transport: [`prepare_host`], then [`build_host`].
pub fn sync_host(
    conn: &mut dyn Transport,
    record: &Record,
    p: &Prepared,
    opts: &SyncOptions,
) -> Result<SyncStats, String> {
    match prepare_host(conn, record, p, opts) {
        Ok(HostState::Done(stats)) => Ok(SyncStats {
            exchanges: 1,
            ..stats
        }),
        Ok(plan) => build_host(conn, record, p, opts, plan).map(|s| SyncStats {
            exchanges: s.exchanges + 2,
            ..s
        }),
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
    read_prepared(&out.status, &out.stdout, p, opts, stats)
}

/// A line of the first script that goes into the stats as it is: a lock taken over, the
/// current release, a leftover cleaned. False for any other line.
fn note_line(line: &str, stats: &mut SyncStats) -> bool {
    if let Some(w) = lock::takeover_warning(line) {
        stats.warnings.push(w);
    } else if let Some(c) = line.strip_prefix("current ") {
        stats.current = Some(c.to_string()).filter(|c| !c.is_empty());
    } else if let Some(d) = line.strip_prefix("cleaned ") {
        stats
            .warnings
            .push(format!("removed {d}, left by an interrupted sync"));
    } else {
        return false;
    }
    true
}

/// What the first script printed: the lock taken (or held by another deploy), the
/// leftovers cleaned, the host's decompressors, the current release, and the base with
/// its manifest (or this release, complete already).
fn read_prepared(
    status: &dp_core::transport::ExecStatus,
    stdout: &[u8],
    p: &Prepared,
    opts: &SyncOptions,
    mut stats: SyncStats,
) -> Result<HostState, PrepareError> {
    let fail = PrepareError::Failed;
    if let Some(held) = lock::held(status) {
        return Err(PrepareError::Held(held));
    }
    status
        .clone()
        .check("preparing the release")
        .map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(stdout);
    let (head, manifest_text) = text
        .split_once(remote::MANIFEST_MARK)
        .unwrap_or((&text, ""));
    let manifest_text = manifest_text.strip_prefix('\n').unwrap_or(manifest_text);
    let mut base = None;
    let mut digest = None;
    let mut self_complete = false;
    let mut codecs = codec::HostCodecs::default();
    for line in head.lines() {
        if note_line(line, &mut stats) {
        } else if let Some(b) = line.strip_prefix("base ") {
            base = Some(b.to_string()).filter(|b| check_release_id(b).is_ok());
        } else if let Some(d) = line.strip_prefix("digest ") {
            digest = Some(d.to_string());
        } else if codecs.parse_line(line) {
        } else if line == "self complete" {
            self_complete = true;
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

/// [`build_host`], then `then` in the same session when given.
pub(crate) fn build_host_then(
    conn: &mut dyn Transport,
    record: &Record,
    p: &Prepared,
    opts: &SyncOptions,
    state: HostState,
    then: Option<Then>,
) -> Result<(SyncStats, Option<ThenOutput>), String> {
    match build_exchange(conn, record, p, opts, state, then, Mode::Plain)? {
        Built::Done(stats, then_out) => Ok((stats, then_out)),
        Built::Missed(_) => Err("the host did not build the release".into()),
    }
}

/// How big a payload may be to be sent on a guess ([`guess`]): a wrong guess sends it
/// for nothing (one that goes through the artifact store is guessed at any size).
const GUESS_MAX: u64 = 4 << 20;

/// The state [`prepare_host`] would find on the host, guessed from what this machine
/// built there last ([`crate::cache::HostMemory`]), when its manifest is at hand and the
/// payload against it is small: the lock, the check and the build then go in one
/// exchange ([`build_exchange`]).
pub(crate) fn guess(record: &Record, p: &Prepared) -> Option<HostState> {
    let built = p.memory.get(record)?;
    if built.release == p.release {
        return None;
    }
    let manifest = p
        .bases
        .get_or(&built.digest, || p.cache.get(&built.digest))?;
    let delta = p.deltas.get_or(&built.digest, || {
        Some(Delta::new(Some(&*manifest), &p.manifest))
    })?;
    // Through the store, a wrong guess sends only a URL (and leaves one payload unused).
    if delta.payload > GUESS_MAX && p.store_for(delta.payload).is_none() {
        return None;
    }
    Some(HostState::Build {
        stats: SyncStats {
            release: p.release.clone(),
            entries: p.manifest.entries.len(),
            ..SyncStats::default()
        },
        base: Some(Base {
            id: built.release,
            digest: built.digest,
            manifest,
        }),
        codecs: built.codecs,
    })
}

/// What one exchange of [`build_exchange`] did.
pub(crate) enum Built {
    /// The release was built (and `then` ran, when given).
    Done(SyncStats, Option<ThenOutput>),
    /// The guess was wrong, or the host refused before the build: what it said, as
    /// [`prepare_host`] would say it.
    Missed(Result<HostState, PrepareError>),
}

/// How [`build_exchange`] goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The build alone, its lock taken before.
    Plain,
    /// With the base [`guess`] gave: the lock and the base check come first in the
    /// exchange ([`remote::prepare_guess`]).
    Guessed,
    /// The build alone, the payload over SSH even where it would go through the store
    /// (the host could not fetch it from there).
    Direct,
}

/// A payload put in the artifact store ([`crate::store`]).
pub(crate) struct Payload {
    /// Its object name.
    key: String,
    /// Its SHA-256.
    sha256: String,
    /// Its size.
    bytes: u64,
    /// Uploaded by this run (the store did not have it).
    uploaded: bool,
}

/// A file removed when dropped.
struct TempFile(std::path::PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Payloads estimated below this many bytes (before compression) are tried inside the
/// script ([`inline_payload`]).
const INLINE_BELOW: u64 = 32 << 10;
/// The most a payload may take inside the script, escaped: the script with it must stay
/// well inside one argument's limit on the host (128 KiB on Linux), and each byte there
/// costs up to 9 on the wire.
const INLINE_MAX: usize = 24 << 10;

/// The payload compressed with `choice` for the script and escaped for its `printf`,
/// when it fits in [`INLINE_MAX`]. A source that cannot be read gives None: the stream
/// reports it.
fn inline_payload(
    p: &Prepared,
    send: &[&manifest::Entry],
    extra: &[(&str, &[u8])],
    choice: codec::Choice,
) -> Option<String> {
    let mut bytes = Vec::new();
    let tar = choice.reader(tarstream::TarReader::new(&p.src, send, extra));
    std::io::Read::read_to_end(
        &mut std::io::Read::take(tar, INLINE_MAX as u64 + 1),
        &mut bytes,
    )
    .ok()?;
    let format = dp_core::quote::printf_format(&bytes);
    (format.len() <= INLINE_MAX).then_some(format)
}

/// Compresses `tar` with `choice` into a temporary file while hashing it, then puts it in
/// the store under its hash, unless the store has it already.
fn upload(
    p: &Prepared,
    store: &crate::store::Store,
    tar: tarstream::TarReader,
    choice: codec::Choice,
) -> Result<Payload, String> {
    static SEQ: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temp =
        TempFile(std::env::temp_dir().join(format!("dp-payload-{}-{n}", std::process::id())));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&temp.0)
        .map_err(|e| format!("{}: {e}", temp.0.display()))?;
    // A read error is the source's; any other, the temporary file's.
    let mut reader = Counting {
        inner: choice.reader(tar),
        count: 0,
        error: None,
    };
    let (bytes, sha256) =
        crate::scan::hash_copy(&mut reader, &mut file).map_err(|e| match &reader.error {
            Some(e) => format!("reading the source: {e}"),
            None => format!("{}: {e}", temp.0.display()),
        })?;
    drop(file);
    let key = store.key(&p.release, &sha256, choice.codec.extension());
    let uploaded = !store.exists(&key)?;
    if uploaded {
        store.put(&key, &temp.0, bytes)?;
    }
    Ok(Payload {
        key,
        sha256,
        bytes,
        uploaded,
    })
}

/// What every host on `delta`'s base gets beside the sent files.
fn payload_extras<'a>(
    delta: &'a Delta,
    revision: &'a str,
    sha256sums: Option<&'a str>,
) -> Vec<(&'a str, &'a [u8])> {
    // REVISION (Capistrano's convention): the release id, for the app. It travels as an
    // entry of its own, so it replaces the base's link like any sent file (never writing
    // through it), at no cost of a process on the host.
    let mut extra: Vec<(&str, &[u8])> = vec![
        ("REVISION", revision.as_bytes()),
        (".dp/remove", &delta.remove_list),
        (".dp/manifest.drop", delta.drop_lines.as_bytes()),
        (".dp/manifest.add", delta.add_lines.as_bytes()),
    ];
    if let Some(sums) = sha256sums {
        extra.push((".dp/sha256sums", sums.as_bytes()));
    }
    // Last: the host checks it arrived (see remote::build).
    extra.push((".dp/end", b""));
    extra
}

/// The build's exchange (then `then`'s script); see [`Mode`].
pub(crate) fn build_exchange(
    conn: &mut dyn Transport,
    record: &Record,
    p: &Prepared,
    opts: &SyncOptions,
    state: HostState,
    then: Option<Then>,
    mode: Mode,
) -> Result<Built, String> {
    let guessed = mode == Mode::Guessed;
    let root = root_of(record)?;
    let HostState::Build {
        mut stats,
        base,
        codecs,
    } = state
    else {
        return match state {
            HostState::Done(stats) => Ok(Built::Done(stats, None)),
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
    let revision = format!("{}\n", p.release);
    let extra = payload_extras(&delta, &revision, opts.verify.then_some(&*p.sha256sums));
    let send: Vec<&manifest::Entry> = delta.send.iter().collect();
    // A large payload goes through the store: uploaded once, by the first host to need
    // it, then fetched by each host itself.
    let stored = match p.store_for(payload) {
        Some(store) if mode != Mode::Direct => {
            let mut made = false;
            let up = p
                .payloads
                .get_or(&format!("{key} {:?}", choice.codec), || {
                    made = true;
                    let tar = tarstream::TarReader::new(&p.src, &send, &extra);
                    Some(upload(p, store, tar, choice))
                })
                .expect("always made");
            match &*up {
                Ok(payload) => {
                    let mut used = crate::StoreUse {
                        object: payload.key.clone(),
                        bytes: payload.bytes,
                        uploaded: made && payload.uploaded,
                        pruned: 0,
                    };
                    if used.uploaded {
                        p.pruned.call_once(|| match store.prune(&p.release) {
                            Ok(deleted) => used.pruned = deleted.len(),
                            Err(e) => stats.warnings.push(format!("old payloads kept: {e}")),
                        });
                    }
                    stats.store = Some(used);
                    Some((store, up.clone()))
                }
                Err(e) if store.fallback_direct => {
                    stats.warnings.push(format!("{e}; sent over SSH instead"));
                    None
                }
                Err(e) => return Err(e.clone()),
            }
        }
        _ => None,
    };
    let fetch = stored.as_ref().and_then(|(store, up)| {
        let payload = up.as_ref().as_ref().ok()?;
        Some((store, payload))
    });
    // Nothing changed: no payload; the host makes the release from its base.
    let unchanged = base.is_some() && delta.is_empty() && !opts.verify && fetch.is_none();
    // The then-script as it goes inside the build's (its helpers left to the build).
    let (then_text, mut then_out) = match then.map(|f| f(record)) {
        Some(Ok(s)) => (Some(then_script(&s.into_inner())), None),
        Some(Err(e)) => (
            None,
            Some(ThenOutput {
                output: Err(e),
                ms: 0,
            }),
        ),
        None => (None, None),
    };
    let chained = then_out.is_none() && then.is_some();
    // The whole script for one exchange: the build (its payload inside when `inline`),
    // the then-script, and with a guess the preparation first; the helpers once for all.
    let assemble = |choice: codec::Choice, inline: Option<&str>| {
        let plan = remote::BuildPlan {
            root,
            release: &p.release,
            base: base.as_ref().map(|b| b.id.as_str()),
            shared: &opts.scan.shared,
            verify: opts.verify,
            digest: &p.digest,
            codec: choice.codec,
            fetch: fetch.map(|(store, payload)| remote::Fetch {
                sha256: &payload.sha256,
                from: store.host(),
                fallback: store.fallback_direct,
            }),
            inline,
            unchanged,
        };
        let mut script = remote::build(&plan).map_err(|e| e.to_string())?;
        if let Some(text) = &then_text {
            script.push(text);
        }
        if guessed {
            let b = base.as_ref().expect("a guess has a base");
            remote::prepare_guess(
                root,
                &p.release,
                opts.lease,
                &p.offer,
                (&b.id, &b.digest, choice.codec.program()),
                script,
            )
            .map_err(|e| e.to_string())
        } else {
            Ok(script.into_string())
        }
    };
    // A small payload goes inside the script, so the host need not wait for its input,
    // when the command still fits in one request.
    let mut inline = match fetch {
        None if unchanged => None,
        None if payload < INLINE_BELOW => {
            // The same for every host on this base: escaped once.
            let choice = codec::Choice::inline(codecs, opts.compress);
            p.inlines
                .get_or(&format!("{key} {:?}", choice.codec), || {
                    Some(inline_payload(p, &send, &extra, choice))
                })
                .and_then(|format| (*format).clone())
                .map(|format| (choice, format))
        }
        _ => None,
    };
    let mut assembled = None;
    if let Some((choice, format)) = &inline {
        let script = assemble(*choice, Some(format))?;
        if dp_core::transport::fits_one_request(&script) {
            assembled = Some((*choice, script));
        } else {
            inline = None;
        }
    }
    let (choice, script) = match assembled {
        Some(a) => a,
        None => (choice, assemble(choice, None)?),
    };
    if guessed {
        stats.bytes_sent = script.len() as u64;
    } else {
        stats.bytes_sent += script.len() as u64;
    }
    stats.compression = choice.codec;
    // The tar, or the presigned URL of the stored payload (a secret: on stdin only).
    let input: Box<dyn std::io::Read + Send> = match fetch {
        Some((store, payload)) => Box::new(std::io::Cursor::new(
            format!("{}\n", store.get_url(&payload.key)).into_bytes(),
        )),
        None if inline.is_some() || unchanged => Box::new(std::io::empty()),
        None => choice.reader(tarstream::TarReader::new(&p.src, &send, &extra)),
    };
    let mut counted = Counting {
        inner: input,
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
    if guessed {
        const OK: &[u8] = b"guess ok\n";
        let Some(at) = find(&stdout, OK) else {
            // The host stopped before the build: what it said is the first script's
            // (the stats so far were the guess's, but for the bytes).
            let status = status.map_err(|e| e.to_string())?;
            let fresh = SyncStats {
                release: p.release.clone(),
                entries: p.manifest.entries.len(),
                bytes_sent: stats.bytes_sent,
                bytes_received: stats.bytes_received + (stdout.len() + status.stderr.len()) as u64,
                ..SyncStats::default()
            };
            let said = read_prepared(&status, &stdout, p, opts, fresh);
            return Ok(Built::Missed(said));
        };
        // Before the mark: what the first script says (the current release, warnings).
        for line in String::from_utf8_lossy(&stdout[..at]).lines() {
            note_line(line, &mut stats);
        }
        stats.bytes_received += at as u64;
        stdout.drain(..at + OK.len());
    }
    if fetch.is_some_and(|(store, _)| store.fallback_direct)
        && find(&stdout, remote::UNFETCHED).is_some()
    {
        // The host could not have the payload from the store (it said why on stderr):
        // it gets it over SSH, in one more exchange (its lock is taken).
        let why = status
            .as_ref()
            .map(|s| s.stderr_tail(1))
            .ok()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "the host could not fetch it".into());
        stats.warnings.push(format!("{why}; sent over SSH instead"));
        stats.store = None;
        stats.exchanges += 1;
        stats.bytes_received += stdout.len() as u64;
        let state = HostState::Build {
            stats,
            base,
            codecs,
        };
        return build_exchange(conn, record, p, opts, state, then, Mode::Direct);
    }
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
            p.remember_host(record, codecs);
            return Ok(Built::Done(stats, Some(t)));
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
    p.remember_host(record, codecs);
    Ok(Built::Done(stats, then_out))
}
