//! A local cache of manifests by digest, so a redeploy from the same machine does not
//! read the base release's manifest back from every host: the host only says which
//! manifest it has (its SHA-256), and the text comes from here.
//!
//! Location: `manifests/` under [`cache_root`]: `$DP_CACHE_DIR`, else `$XDG_CACHE_HOME/dp`,
//! else `~/.cache/dp`. Entries are written atomically and checked against their name
//! when read; only the newest [`KEEP`] are kept. A missing or unwritable cache only costs
//! bytes on the wire.

use crate::manifest::Manifest;
use std::path::PathBuf;

/// How many manifests to keep.
pub const KEEP: usize = 32;

/// How many digests to offer a host.
pub const OFFER: usize = 8;

/// dp's local cache directory: `$DP_CACHE_DIR`, else `$XDG_CACHE_HOME/dp`, else
/// `~/.cache/dp`.
pub fn cache_root() -> Option<PathBuf> {
    std::env::var_os("DP_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("dp")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dp")))
}

/// The manifest cache.
#[derive(Debug, Clone)]
pub struct ManifestCache {
    dir: Option<PathBuf>,
}

impl ManifestCache {
    /// The cache at its default location.
    pub fn open_default() -> ManifestCache {
        let dir = std::env::var_os("DP_CACHE_DIR")
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("dp/manifests"))
            })
            .or_else(|| {
                std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/dp/manifests"))
            });
        ManifestCache { dir }
    }

    /// A cache that holds nothing.
    pub fn disabled() -> ManifestCache {
        ManifestCache { dir: None }
    }

    /// The manifest with `digest`, if cached and intact.
    pub fn get(&self, digest: &str) -> Option<Manifest> {
        if !is_digest(digest) {
            return None;
        }
        let text = std::fs::read_to_string(self.dir.as_ref()?.join(digest)).ok()?;
        let manifest = Manifest::parse(&text)?;
        (manifest.digest() == digest).then_some(manifest)
    }

    /// Stores `manifest` under its `digest` and prunes old entries. Errors are ignored.
    pub fn put(&self, manifest: &Manifest, digest: &str) {
        let Some(dir) = &self.dir else { return };
        if !is_digest(digest) {
            return;
        }
        let path = dir.join(digest);
        if path.exists() {
            // Touch it, so pruning keeps what is in use.
            let _ = std::fs::File::options()
                .append(true)
                .open(&path)
                .and_then(|f| f.set_modified(std::time::SystemTime::now()));
            return;
        }
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = dir.join(format!(".{digest}.{}", std::process::id()));
        if std::fs::write(&tmp, manifest.to_text()).is_ok() && std::fs::rename(&tmp, &path).is_ok()
        {
            self.prune();
        } else {
            let _ = std::fs::remove_file(&tmp);
        }
    }

    /// Digests of the newest cached manifests (at most [`OFFER`]), newest first.
    pub fn offer(&self) -> Vec<String> {
        self.newest()
            .into_iter()
            .take(OFFER)
            .map(|(d, _)| d)
            .collect()
    }

    fn newest(&self) -> Vec<(String, std::time::SystemTime)> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let mut all: Vec<(String, std::time::SystemTime)> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let modified = e.metadata().ok()?.modified().ok()?;
                is_digest(&name).then_some((name, modified))
            })
            .collect();
        all.sort_by_key(|e| std::cmp::Reverse(e.1));
        all
    }

    fn prune(&self) {
        let Some(dir) = &self.dir else { return };
        for (digest, _) in self.newest().into_iter().skip(KEEP) {
            let _ = std::fs::remove_file(dir.join(digest));
        }
    }
}

fn is_digest(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

/// What this machine built on a host last: the release, its manifest's digest and the
/// decompressors the host had, under `hosts/` in [`cache_root`], one small file per host
/// (named by a hash of its transport, address, port, user and root). A redeploy from here
/// guesses that release is still the host's newest, and sends the build with the lock
/// and base check in one exchange; the host checks the guess (`sh/guess.sh`). Only a
/// hint: a wrong or missing one costs the second exchange.
#[derive(Debug, Clone)]
pub struct HostMemory {
    dir: Option<PathBuf>,
}

/// A host's [`HostMemory`] entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// The release built there.
    pub release: String,
    /// Its manifest's digest.
    pub digest: String,
    /// The decompressors the host had.
    pub codecs: crate::codec::HostCodecs,
}

impl HostMemory {
    /// The memory at its default location (none when `enabled` is false).
    pub fn open(enabled: bool) -> HostMemory {
        HostMemory {
            dir: enabled.then(cache_root).flatten().map(|d| d.join("hosts")),
        }
    }

    fn path(&self, record: &dp_core::Record) -> Option<PathBuf> {
        use sha2::Digest;
        let key = format!(
            "{:?}\0{}\0{}\0{}\0{}",
            record.transport,
            record.address(),
            record.port.unwrap_or(22),
            record.user.as_deref().unwrap_or(""),
            record.root.as_deref()?
        );
        let name = hex::encode(sha2::Sha256::digest(key.as_bytes()));
        Some(self.dir.as_ref()?.join(&name[..32]))
    }

    /// What was built on the host last, if remembered.
    pub fn get(&self, record: &dp_core::Record) -> Option<Built> {
        let text = std::fs::read_to_string(self.path(record)?).ok()?;
        let mut f = text.split_whitespace();
        let (release, digest) = (f.next()?.to_string(), f.next()?.to_string());
        dp_core::layout::check_release_id(&release).ok()?;
        if !is_digest(&digest) {
            return None;
        }
        let mut codecs = crate::codec::HostCodecs::default();
        for c in f {
            codecs.parse_line(&format!("has {c}"));
        }
        Some(Built {
            release,
            digest,
            codecs,
        })
    }

    /// Remembers what was built on the host. Errors are ignored.
    pub fn put(&self, record: &dp_core::Record, built: &Built) {
        let Some(path) = self.path(record) else {
            return;
        };
        let mut line = format!("{} {}", built.release, built.digest);
        if built.codecs.gzip {
            line.push_str(" gzip");
        }
        if built.codecs.bzip2 {
            line.push_str(" bzip2");
        }
        line.push('\n');
        let Some(dir) = path.parent() else { return };
        if std::fs::create_dir_all(dir).is_err() {
            return;
        }
        let tmp = path.with_extension(format!("{}.tmp", std::process::id()));
        if std::fs::write(&tmp, line).is_err() || std::fs::rename(&tmp, &path).is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
    }
}
