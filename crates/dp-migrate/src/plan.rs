//! The preflight: what is applied, what is pending, and whether it is safe to go on.
//! Read-only; nothing is applied unless every check passes.

use crate::db::Applied;
use crate::source::{Migration, Phase};
use serde::Serialize;
use std::collections::HashMap;

/// Why nothing will be applied.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// An applied migration's file changed.
    #[error("migration {version} ({path}) was changed after it was applied: its checksum no longer matches the database")]
    Checksum {
        /// Version.
        version: i64,
        /// The file.
        path: String,
    },
    /// An applied migration has no file.
    #[error("migration {version} ({description}) is applied in the database but has no file in the migrations directory")]
    Missing {
        /// Version.
        version: i64,
        /// Its description in the table.
        description: String,
    },
    /// A failed no-transaction migration left a dirty row.
    #[error("migration {version} ({description}) is dirty: it failed part-way outside a transaction; repair the database, then delete its row from _sqlx_migrations")]
    Dirty {
        /// Version.
        version: i64,
        /// Description.
        description: String,
    },
    /// A pending migration is older than one already applied in its phase.
    #[error("migration {version} ({path}) is pending but older than applied migration {newer}; refusing to apply out of order (use --allow-out-of-order)")]
    OutOfOrder {
        /// Version.
        version: i64,
        /// The file.
        path: String,
        /// The newer applied version.
        newer: i64,
    },
}

/// One line of the plan (`--dry-run`).
#[derive(Debug, Clone, Serialize)]
pub struct PlanLine {
    /// Version.
    pub version: i64,
    /// Name (description).
    pub name: String,
    /// `pre` or `post`.
    pub phase: Phase,
    /// SHA-384, hex.
    pub checksum: String,
    /// Already applied.
    pub applied: bool,
    /// Would be applied by this run.
    pub would_apply: bool,
}

/// Checks the files against the table and returns the plan for `phase`: every
/// migration, with those to apply marked.
pub fn preflight(
    migrations: &[Migration],
    applied: &[Applied],
    phase: Phase,
    allow_out_of_order: bool,
) -> Result<Vec<PlanLine>, PreflightError> {
    let files: HashMap<i64, &Migration> = migrations.iter().map(|m| (m.version, m)).collect();
    let done: HashMap<i64, &Applied> = applied.iter().map(|a| (a.version, a)).collect();
    for a in applied {
        if !a.success {
            return Err(PreflightError::Dirty {
                version: a.version,
                description: a.description.clone(),
            });
        }
        match files.get(&a.version) {
            None => {
                return Err(PreflightError::Missing {
                    version: a.version,
                    description: a.description.clone(),
                })
            }
            Some(m) if m.checksum != a.checksum => {
                return Err(PreflightError::Checksum {
                    version: a.version,
                    path: m.path.display().to_string(),
                })
            }
            Some(_) => {}
        }
    }
    let mut plan = Vec::new();
    for m in migrations {
        let is_applied = done.contains_key(&m.version);
        let would_apply = !is_applied && m.phase == phase;
        if would_apply && !allow_out_of_order {
            let newer = migrations
                .iter()
                .filter(|o| {
                    o.phase == m.phase && o.version > m.version && done.contains_key(&o.version)
                })
                .map(|o| o.version)
                .max();
            if let Some(newer) = newer {
                return Err(PreflightError::OutOfOrder {
                    version: m.version,
                    path: m.path.display().to_string(),
                    newer,
                });
            }
        }
        plan.push(PlanLine {
            version: m.version,
            name: m.description.clone(),
            phase: m.phase,
            checksum: hex::encode(&m.checksum),
            applied: is_applied,
            would_apply,
        });
    }
    Ok(plan)
}
