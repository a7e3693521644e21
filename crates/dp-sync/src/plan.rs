//! `dp deploy --plan` on one host: what a sync would do there, read in one round trip
//! and changing nothing (no lock, no directory).

use crate::delta::Delta;
use crate::manifest::Manifest;
use crate::{remote, Prepared};
use dp_core::layout::{check_release_id, root_of};
use dp_core::transport::Transport;
use dp_core::Record;
use serde::Serialize;
use std::sync::Arc;

/// What a deploy would do on one host.
#[derive(Debug, Clone, Default, Serialize)]
pub struct HostPlan {
    /// The release `current` points to.
    pub current: Option<String>,
    /// The release the new one would be built on (hard links).
    pub base: Option<String>,
    /// The release is live there already with this content: nothing would happen.
    pub already_live: bool,
    /// Regular files that would be sent.
    pub send_files: usize,
    /// About the bytes that would be sent (before compression).
    pub send_bytes: u64,
    /// They would go through the artifact store (`[artifacts]`), not over SSH.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub via_store: bool,
    /// Regular files that would be hard-linked from the base.
    pub linked: usize,
    /// Paths of the base that would not be carried over.
    pub removed: usize,
    /// The base's dependency environment key, if it has one.
    pub deps_key: Option<String>,
    /// Of the given lockfiles, those whose content differs from the base's (or that the
    /// base lacks): a dependency build would follow.
    pub lockfiles_changed: Vec<String>,
}

/// Reads the host's current and newest complete release and that release's manifest,
/// and compares it with the new release's: files to send, to link, to remove, and which
/// of `lockfiles` changed.
pub fn plan_host(
    conn: &mut dyn Transport,
    record: &Record,
    p: &Prepared,
    lockfiles: &[String],
) -> Result<HostPlan, String> {
    let root = root_of(record)?;
    let script = remote::plan(root, &p.offer).map_err(|e| e.to_string())?;
    let out = conn.run(&script).map_err(|e| e.to_string())?;
    out.status
        .check("reading the host's releases")
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (head, manifest_text) = text
        .split_once(remote::MANIFEST_MARK)
        .unwrap_or((&text, ""));
    let manifest_text = manifest_text.strip_prefix('\n').unwrap_or(manifest_text);
    let mut plan = HostPlan::default();
    let mut digest = None;
    for line in head.lines() {
        if let Some(c) = line.strip_prefix("current ") {
            plan.current = Some(c.to_string()).filter(|c| !c.is_empty());
        } else if let Some(b) = line.strip_prefix("base ") {
            plan.base = Some(b.to_string()).filter(|b| check_release_id(b).is_ok());
        } else if let Some(k) = line.strip_prefix("deps_key ") {
            plan.deps_key = Some(k.to_string()).filter(|k| !k.is_empty());
        } else if let Some(d) = line.strip_prefix("digest ") {
            digest = Some(d.to_string());
        }
    }
    let base: Option<Arc<Manifest>> = match (&plan.base, digest) {
        (Some(_), Some(d)) => p.bases.get_or(&d, || {
            if manifest_text.is_empty() {
                return p.cache.get(&d);
            }
            Manifest::parse(manifest_text).filter(|m| m.digest() == d)
        }),
        _ => None,
    };
    plan.already_live = plan.current.as_deref() == Some(p.release.as_str())
        && base.as_ref().is_some_and(|b| b.digest() == p.digest);
    let delta = Delta::new(base.as_deref(), &p.manifest);
    plan.send_files = delta.files_sent;
    plan.send_bytes = delta.payload;
    plan.via_store = p.store_for(delta.payload).is_some();
    plan.linked = delta.linked;
    plan.removed = delta.removed;
    let entry = |m: &Manifest, path: &str| m.entries.iter().find(|e| e.path == path).cloned();
    plan.lockfiles_changed = lockfiles
        .iter()
        .filter(|f| {
            let new = entry(&p.manifest, f);
            let old = base.as_deref().and_then(|b| entry(b, f));
            new.is_some() && (old.is_none() || plan.deps_key.is_none() || old != new)
        })
        .cloned()
        .collect();
    Ok(plan)
}
