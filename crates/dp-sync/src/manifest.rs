//! The manifest: every entry of a release (path, type, mode, size, SHA-256, link target),
//! stored as `.dp/manifest` in the release, one JSON object per line after a header line.
//!
//! SHA-256 (not a faster hash) so that `--verify` can check a release on the host with
//! nothing but `sha256sum`.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::HashMap;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// A regular file.
    File {
        /// Size in bytes.
        size: u64,
        /// SHA-256, lowercase hex.
        sha256: String,
    },
    /// A directory.
    Dir,
    /// A symbolic link (relative, inside the tree).
    Symlink {
        /// Where it points.
        target: String,
    },
}

/// One entry of a release.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the release, `/`-separated, no `.` or `..` parts.
    pub path: String,
    /// Permission bits (`0o7777` of the mode).
    pub mode: u32,
    /// What it is.
    pub kind: Kind,
}

impl Entry {
    /// True for regular files.
    pub fn is_file(&self) -> bool {
        matches!(self.kind, Kind::File { .. })
    }

    fn same_type(&self, other: &Entry) -> bool {
        std::mem::discriminant(&self.kind) == std::mem::discriminant(&other.kind)
    }
}

#[derive(Serialize, Deserialize)]
struct Line {
    p: String,
    t: char,
    m: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    h: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    l: Option<String>,
}

const HEADER: &str = "{\"dp_manifest\":1}";

/// Every entry of a release, in canonical order: sorted by their manifest lines as bytes,
/// which is what `LC_ALL=C sort` gives, so a host can rebuild a manifest from its base
/// plus the lines that changed and get the same digest.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Manifest {
    /// Entries, in canonical order.
    pub entries: Vec<Entry>,
    lines: Vec<String>,
}

impl Manifest {
    /// Builds a manifest, putting `entries` in canonical order.
    pub fn new(entries: Vec<Entry>) -> Manifest {
        let mut pairs: Vec<(String, Entry)> =
            entries.into_iter().map(|e| (line_of(&e), e)).collect();
        pairs.sort_by(|a, b| a.0.cmp(&b.0));
        let (lines, entries) = pairs.into_iter().unzip();
        Manifest { entries, lines }
    }

    /// The header line every manifest starts with.
    pub fn header() -> &'static str {
        HEADER
    }

    /// The entry lines, in order (without the header), one per entry.
    pub fn lines(&self) -> &[String] {
        &self.lines
    }

    /// The `.dp/manifest` text.
    pub fn to_text(&self) -> String {
        let mut out =
            String::with_capacity(self.lines.iter().map(|l| l.len() + 1).sum::<usize>() + 20);
        out.push_str(HEADER);
        out.push('\n');
        for line in &self.lines {
            out.push_str(line);
            out.push('\n');
        }
        out
    }

    /// Parses `.dp/manifest` text. `None` when it is not a valid manifest or names a path
    /// that could leave the release (a manifest read from a host is not trusted).
    pub fn parse(text: &str) -> Option<Manifest> {
        let mut lines = text.lines();
        if lines.next()? != HEADER {
            return None;
        }
        let mut entries = Vec::new();
        for line in lines.filter(|l| !l.is_empty()) {
            let l: Line = serde_json::from_str(line).ok()?;
            if !is_clean_relative(&l.p) {
                return None;
            }
            let kind = match l.t {
                'f' => Kind::File {
                    size: l.s?,
                    sha256: l.h?,
                },
                'd' => Kind::Dir,
                'l' => Kind::Symlink { target: l.l? },
                _ => return None,
            };
            entries.push(Entry {
                path: l.p,
                mode: l.m,
                kind,
            });
        }
        Some(Manifest::new(entries))
    }

    /// SHA-256 of the manifest text, lowercase hex (names the content of a release).
    pub fn digest(&self) -> String {
        hex::encode(Sha256::digest(self.to_text().as_bytes()))
    }

    /// Number of regular files.
    pub fn file_count(&self) -> usize {
        self.entries.iter().filter(|e| e.is_file()).count()
    }

    /// A `sha256sum -c` list of every regular file, each name as `./name` (so a file
    /// named `-` is not read as stdin, nor `-n` as an option). Names with a newline or
    /// backslash use GNU's escaped form (line starts with `\`).
    pub fn sha256sums(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            if let Kind::File { sha256, .. } = &e.kind {
                // The host writes its own (the release id) over a REVISION of the source.
                if e.path == "REVISION" {
                    continue;
                }
                if e.path.contains(['\n', '\\']) {
                    let escaped = e.path.replace('\\', "\\\\").replace('\n', "\\n");
                    out.push_str(&format!("\\{sha256}  ./{escaped}\n"));
                } else {
                    out.push_str(&format!("{sha256}  ./{}\n", e.path));
                }
            }
        }
        out
    }
}

/// The manifest line of one entry.
fn line_of(e: &Entry) -> String {
    let (t, s, h, l) = match &e.kind {
        Kind::File { size, sha256 } => ('f', Some(*size), Some(sha256.clone()), None),
        Kind::Dir => ('d', None, None, None),
        Kind::Symlink { target } => ('l', None, None, Some(target.clone())),
    };
    let line = Line {
        p: e.path.clone(),
        t,
        m: e.mode,
        s,
        h,
        l,
    };
    serde_json::to_string(&line).expect("plain data")
}

/// True for a non-empty relative `/`-separated path without `.`, `..` or empty parts.
pub fn is_clean_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
        && !path.contains('\0')
}

/// What a new release needs beyond its base.
#[derive(Debug, Default)]
pub struct Diff<'a> {
    /// Entries to send: new or changed files and links, new or re-moded directories.
    pub send: Vec<&'a Entry>,
    /// Base paths to remove before the sent entries land (gone, or changed type).
    pub remove: Vec<String>,
    /// Regular files reused from the base by hard link.
    pub linked: usize,
}

/// Compares `new` against `base` (an empty manifest when there is no base).
pub fn diff<'a>(base: &Manifest, new: &'a Manifest) -> Diff<'a> {
    let old: HashMap<&str, &Entry> = base.entries.iter().map(|e| (e.path.as_str(), e)).collect();
    let mut d = Diff::default();
    for e in &new.entries {
        match old.get(e.path.as_str()) {
            Some(o) if *o == e => {
                if e.is_file() {
                    d.linked += 1;
                }
            }
            Some(o) if !o.same_type(e) => {
                d.remove.push(e.path.clone());
                d.send.push(e);
            }
            _ => d.send.push(e),
        }
    }
    let new_paths: std::collections::HashSet<&str> =
        new.entries.iter().map(|e| e.path.as_str()).collect();
    for o in &base.entries {
        if !new_paths.contains(o.path.as_str()) {
            d.remove.push(o.path.clone());
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str, h: &str) -> Entry {
        Entry {
            path: p.into(),
            mode: 0o644,
            kind: Kind::File {
                size: 1,
                sha256: h.into(),
            },
        }
    }

    #[test]
    fn text_round_trips() {
        let m = Manifest::new(vec![
            file("a\nb", "00"),
            Entry {
                path: "d".into(),
                mode: 0o755,
                kind: Kind::Dir,
            },
            Entry {
                path: "l".into(),
                mode: 0o777,
                kind: Kind::Symlink { target: "d".into() },
            },
        ]);
        assert_eq!(Manifest::parse(&m.to_text()), Some(m.clone()));
        assert!(m.sha256sums().starts_with("\\00  ./a\\nb\n"));
    }

    #[test]
    fn hostile_manifests_are_refused() {
        for p in ["../etc", "/etc", "a/../../b", "a//b", ""] {
            let text = format!(
                "{HEADER}\n{{\"p\":{},\"t\":\"d\",\"m\":493}}\n",
                serde_json::to_string(p).unwrap()
            );
            assert_eq!(Manifest::parse(&text), None, "{p}");
        }
    }

    #[test]
    fn diff_sends_changes_and_removes_gone_or_retyped() {
        let base = Manifest::new(vec![
            file("same", "1"),
            file("changed", "1"),
            file("gone", "1"),
            file("x", "1"),
        ]);
        let new = Manifest::new(vec![
            file("same", "1"),
            file("changed", "2"),
            file("added", "3"),
            Entry {
                path: "x".into(),
                mode: 0o755,
                kind: Kind::Dir,
            },
        ]);
        let d = diff(&base, &new);
        let sent: Vec<&str> = d.send.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(sent, ["added", "changed", "x"]);
        assert_eq!(d.remove, ["x", "gone"]);
        assert_eq!(d.linked, 1);
    }
}
