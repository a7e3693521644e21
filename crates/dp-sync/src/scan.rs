//! Scanning the source tree once: walk it honouring .gitignore/.ignore and excludes
//! (always skipping `.git` and a top-level `.dp`), then hash every file in parallel.

use crate::manifest::{is_clean_relative, Entry, Kind, Manifest};
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};

/// A problem with the source tree; nothing has been sent anywhere yet.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The source is not a readable directory.
    #[error("source directory {0}: {1}")]
    Source(String, std::io::Error),
    /// An exclude glob does not parse.
    #[error("invalid exclude {0:?}: {1}")]
    Exclude(String, String),
    /// Walking or reading failed.
    #[error("{0}: {1}")]
    Io(String, String),
    /// A symlink points outside the tree (or is absolute).
    #[error("symlink {path} points outside the source tree (-> {target})")]
    SymlinkEscapes {
        /// The link, relative to the source.
        path: String,
        /// Its target.
        target: String,
    },
    /// A name that is not UTF-8, or a special file.
    #[error("{0}: {1}")]
    Unsupported(String, &'static str),
}

/// What to leave out.
#[derive(Debug, Clone, Default)]
pub struct ScanOptions {
    /// Gitignore-style globs to exclude, on top of .gitignore/.ignore files.
    pub excludes: Vec<String>,
    /// Paths (relative to the source) left out because they are linked from `shared/`.
    pub shared: Vec<String>,
    /// Directory for the hash cache (see [`HashCache`]); `None` hashes every file.
    pub hash_cache: Option<PathBuf>,
}

/// What identifies a file's content without reading it: size, mtime, ctime, inode.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Stamp {
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
    ino: u64,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Stamp {
        use std::os::unix::fs::MetadataExt;
        Stamp {
            size: m.len(),
            mtime_ns: m.mtime() as i128 * 1_000_000_000 + m.mtime_nsec() as i128,
            ctime_ns: m.ctime() as i128 * 1_000_000_000 + m.ctime_nsec() as i128,
            ino: m.ino(),
        }
    }
}

/// Hashes of the last scan of a source directory, reused for files whose [`Stamp`] has
/// not changed, as git's index does. A file modified within a second of the cache being
/// written could keep its stamp, so such "racy" entries are never trusted and are hashed
/// again. Stored as `scan-<digest of the source path>` in the cache directory.
pub struct HashCache {
    written_ns: i128,
    entries: std::collections::HashMap<String, (Stamp, String)>,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CacheLine {
    p: String,
    s: Stamp,
    h: String,
}

impl HashCache {
    fn file(dir: &Path, src: &Path) -> PathBuf {
        let abs = std::fs::canonicalize(src).unwrap_or_else(|_| src.to_path_buf());
        let key = hex::encode(Sha256::digest(abs.as_os_str().as_encoded_bytes()));
        dir.join(format!("scan-{}", &key[..32]))
    }

    /// Loads the cache for `src` (empty when missing or unreadable).
    pub fn load(dir: &Path, src: &Path) -> HashCache {
        let mut cache = HashCache {
            written_ns: 0,
            entries: Default::default(),
        };
        let Ok(text) = std::fs::read_to_string(Self::file(dir, src)) else {
            return cache;
        };
        let mut lines = text.lines();
        cache.written_ns = lines.next().and_then(|l| l.parse().ok()).unwrap_or(0);
        for line in lines {
            if let Ok(l) = serde_json::from_str::<CacheLine>(line) {
                cache.entries.insert(l.p, (l.s, l.h));
            }
        }
        cache
    }

    fn get(&self, path: &str, stamp: &Stamp) -> Option<String> {
        let (known, hash) = self.entries.get(path)?;
        let racy = stamp.mtime_ns >= self.written_ns - 1_000_000_000
            || stamp.ctime_ns >= self.written_ns - 1_000_000_000;
        (known == stamp && !racy).then(|| hash.clone())
    }

    fn save(&self, dir: &Path, src: &Path, files: &[(Entry, Stamp)]) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as i128)
            .unwrap_or(0);
        let mut out = format!("{now}\n");
        for (e, stamp) in files {
            if let Kind::File { sha256, .. } = &e.kind {
                let line = CacheLine {
                    p: e.path.clone(),
                    s: stamp.clone(),
                    h: sha256.clone(),
                };
                out.push_str(&serde_json::to_string(&line).unwrap_or_default());
                out.push('\n');
            }
        }
        let path = Self::file(dir, src);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::create_dir_all(dir).is_ok() && std::fs::write(&tmp, out).is_ok() {
            let _ = std::fs::rename(&tmp, &path);
        }
    }
}

/// Walks `src` and hashes every file, in parallel.
pub fn scan(src: &Path, opts: &ScanOptions) -> Result<Manifest, ScanError> {
    let meta =
        std::fs::metadata(src).map_err(|e| ScanError::Source(src.display().to_string(), e))?;
    if !meta.is_dir() {
        return Err(ScanError::Source(
            src.display().to_string(),
            std::io::Error::new(std::io::ErrorKind::NotADirectory, "not a directory"),
        ));
    }
    let mut overrides = ignore::overrides::OverrideBuilder::new(src);
    for glob in opts.excludes.iter().chain(opts.shared.iter()) {
        let g = glob.trim_end_matches('/');
        let anchored = if opts.shared.contains(glob) {
            format!("!/{g}")
        } else {
            format!("!{g}")
        };
        overrides
            .add(&anchored)
            .map_err(|e| ScanError::Exclude(glob.clone(), e.to_string()))?;
    }
    let overrides = overrides
        .build()
        .map_err(|e| ScanError::Exclude(opts.excludes.join(" "), e.to_string()))?;
    let root = src.to_path_buf();
    let walker = ignore::WalkBuilder::new(src)
        .hidden(false)
        .parents(false)
        .git_global(false)
        .require_git(false)
        .follow_links(false)
        .overrides(overrides)
        .filter_entry(move |e| {
            let name = e.file_name();
            !(name == ".git" || (name == ".dp" && e.path().parent() == Some(root.as_path())))
        })
        .build();

    // Regular files with their stat (taken once, here) for hashing below.
    let mut files: Vec<(String, PathBuf, u32, Stamp)> = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    for item in walker {
        let item = item.map_err(|e| ScanError::Io(src.display().to_string(), e.to_string()))?;
        if item.depth() == 0 {
            continue;
        }
        let full = item.path().to_path_buf();
        let rel_path = full.strip_prefix(src).expect("walk stays under src");
        let rel = rel_path
            .to_str()
            .ok_or_else(|| {
                ScanError::Unsupported(full.display().to_string(), "file name is not UTF-8")
            })?
            .to_string();
        if !is_clean_relative(&rel) {
            return Err(ScanError::Unsupported(rel, "unusual path"));
        }
        let meta = std::fs::symlink_metadata(&full)
            .map_err(|e| ScanError::Io(rel.clone(), e.to_string()))?;
        let mode = meta.permissions().mode() & 0o7777;
        let ft = meta.file_type();
        if ft.is_dir() {
            entries.push(Entry {
                path: rel,
                mode,
                kind: Kind::Dir,
            });
        } else if ft.is_file() {
            files.push((rel, full, mode, Stamp::of(&meta)));
        } else if ft.is_symlink() {
            let target =
                std::fs::read_link(&full).map_err(|e| ScanError::Io(rel.clone(), e.to_string()))?;
            let target_str = target
                .to_str()
                .ok_or_else(|| ScanError::Unsupported(rel.clone(), "symlink target is not UTF-8"))?
                .to_string();
            if !stays_inside(rel_path, &target) {
                return Err(ScanError::SymlinkEscapes {
                    path: rel,
                    target: target_str,
                });
            }
            entries.push(Entry {
                path: rel,
                mode: 0o777,
                kind: Kind::Symlink { target: target_str },
            });
        } else {
            return Err(ScanError::Unsupported(
                rel,
                "not a regular file, directory or symlink",
            ));
        }
    }
    let cache = opts
        .hash_cache
        .as_ref()
        .map(|dir| HashCache::load(dir, src));
    let hashed: Result<Vec<(Entry, Stamp)>, ScanError> = files
        .into_par_iter()
        .map(|(rel, full, mode, stamp)| {
            let io = |e: std::io::Error| ScanError::Io(rel.clone(), e.to_string());
            let known = cache.as_ref().and_then(|c| c.get(&rel, &stamp));
            let (size, sha256) = match known {
                Some(hash) => (stamp.size, hash),
                None => hash_file(&full).map_err(io)?,
            };
            Ok((
                Entry {
                    path: rel,
                    mode,
                    kind: Kind::File { size, sha256 },
                },
                stamp,
            ))
        })
        .collect();
    let hashed = hashed?;
    if let (Some(dir), Some(cache)) = (&opts.hash_cache, cache) {
        cache.save(dir, src, &hashed);
    }
    entries.extend(hashed.into_iter().map(|(e, _)| e));
    Ok(Manifest::new(entries))
}

/// Size and SHA-256 of a file, streamed.
pub fn hash_file(path: &Path) -> std::io::Result<(u64, String)> {
    hash_copy(&mut std::fs::File::open(path)?, &mut std::io::sink())
}

/// Size and SHA-256 of what `from` gives, written to `to` as it is read.
pub fn hash_copy(from: &mut dyn Read, to: &mut dyn Write) -> std::io::Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = from.read(&mut buf)?;
        if n == 0 {
            break;
        }
        size += n as u64;
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
    }
    Ok((size, hex::encode(hasher.finalize())))
}

/// True when a link at `link` (relative to the tree) pointing at `target` resolves inside
/// the tree, judged on the names alone.
fn stays_inside(link: &Path, target: &Path) -> bool {
    if target.is_absolute() {
        return false;
    }
    let mut depth: i64 = link.components().count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            _ => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::stays_inside;
    use std::path::Path;

    #[test]
    fn symlink_containment() {
        assert!(stays_inside(Path::new("a/link"), Path::new("../b")));
        assert!(stays_inside(Path::new("link"), Path::new("a/b")));
        assert!(!stays_inside(Path::new("link"), Path::new("../x")));
        assert!(!stays_inside(Path::new("a/link"), Path::new("../../x")));
        assert!(!stays_inside(Path::new("a/link"), Path::new("/etc/passwd")));
        assert!(!stays_inside(
            Path::new("a/link"),
            Path::new("b/../../../x")
        ));
    }
}
