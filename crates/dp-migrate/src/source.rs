//! Migration files: `<version>_<name>.sql` (or `.up.sql`; `.down.sql` is never applied
//! forward), in the migrations directory and its `post/` subfolder.
//!
//! - `-- no-transaction` as the first line runs the file outside a transaction (sqlx's
//!   convention);
//! - files in `post/`, or whose first lines include `-- dp:post`, belong to the `post`
//!   phase: they contract the schema after every host runs the new release.
//!
//! Checksums are SHA-384 of the file's bytes, as sqlx computes them, so `sqlx migrate
//! info` and dp agree on what was applied.

use serde::Serialize;
use sha2::{Digest, Sha384};
use std::path::{Path, PathBuf};

/// When a migration runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Before the switch: expand the schema (additive changes).
    Pre,
    /// After every host switched: contract (drop what the old release needed).
    Post,
}

impl Phase {
    /// `pre` or `post`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pre => "pre",
            Phase::Post => "post",
        }
    }
}

/// One migration file.
#[derive(Debug, Clone)]
pub struct Migration {
    /// Version from the file name.
    pub version: i64,
    /// Description (the name with `_` as spaces, as sqlx stores it).
    pub description: String,
    /// Phase.
    pub phase: Phase,
    /// Run outside a transaction.
    pub no_tx: bool,
    /// The SQL.
    pub sql: String,
    /// SHA-384 of the SQL.
    pub checksum: Vec<u8>,
    /// The file, for messages.
    pub path: PathBuf,
}

/// A problem with the migration files.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SourceError {
    /// The file or directory.
    pub path: String,
    /// What is wrong.
    pub message: String,
}

/// Reads every migration under `dir` (and `dir/post`), sorted by version.
pub fn load(dir: &Path) -> Result<Vec<Migration>, SourceError> {
    let err = |path: &Path, message: String| SourceError {
        path: path.display().to_string(),
        message,
    };
    if !dir.is_dir() {
        return Err(err(dir, "migrations directory not found".into()));
    }
    let mut out: Vec<Migration> = Vec::new();
    for (sub, forced_post) in [(dir.to_path_buf(), false), (dir.join("post"), true)] {
        let Ok(entries) = std::fs::read_dir(&sub) else {
            continue;
        };
        for entry in entries {
            let entry = entry.map_err(|e| err(&sub, e.to_string()))?;
            let path = entry.path();
            if !path.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some((version, rest)) = name.split_once('_') else {
                continue;
            };
            let Some(stem) = rest.strip_suffix(".sql") else {
                continue;
            };
            if stem.ends_with(".down") {
                continue;
            }
            let stem = stem.strip_suffix(".up").unwrap_or(stem);
            let version: i64 = version
                .parse()
                .map_err(|_| err(&path, "expected an integer version before `_`".into()))?;
            let sql = std::fs::read_to_string(&path).map_err(|e| err(&path, e.to_string()))?;
            let head: Vec<&str> = sql
                .lines()
                .take_while(|l| l.trim_start().starts_with("--"))
                .collect();
            let post = forced_post || head.iter().any(|l| l.trim() == "-- dp:post");
            if let Some(other) = out.iter().find(|m| m.version == version) {
                return Err(err(
                    &path,
                    format!("version {version} is also used by {}", other.path.display()),
                ));
            }
            out.push(Migration {
                version,
                description: stem.replace('_', " "),
                phase: if post { Phase::Post } else { Phase::Pre },
                no_tx: sql.starts_with("-- no-transaction"),
                checksum: Sha384::digest(sql.as_bytes()).to_vec(),
                sql,
                path,
            });
        }
    }
    out.sort_by_key(|m| m.version);
    Ok(out)
}
