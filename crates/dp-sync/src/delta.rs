//! What a new release needs beyond one base, computed once per base for every host on it.

use crate::manifest::{self, Manifest};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Values made once per key, by the first host that asks; hosts asking for the same key
/// meanwhile wait for it rather than making it again.
pub(crate) struct OncePer<T> {
    slots: Mutex<HashMap<String, Slot<T>>>,
}

/// One key's value, made or not yet.
pub(crate) type Slot<T> = Arc<Mutex<Option<Arc<T>>>>;

impl<T> Default for OncePer<T> {
    fn default() -> Self {
        OncePer {
            slots: Mutex::default(),
        }
    }
}

impl<T> OncePer<T> {
    /// The value for `key`, made with `make` unless made before (a `None` is not kept).
    pub(crate) fn get_or(&self, key: &str, make: impl FnOnce() -> Option<T>) -> Option<Arc<T>> {
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
pub(crate) struct Delta {
    /// Entries to send.
    pub(crate) send: Vec<manifest::Entry>,
    /// Regular files among them.
    pub(crate) files_sent: usize,
    /// Regular files hard-linked from the base.
    pub(crate) linked: usize,
    /// Paths of the base not carried over, NUL-terminated (`.dp/remove`).
    pub(crate) remove_list: Vec<u8>,
    /// How many.
    pub(crate) removed: usize,
    /// Base manifest lines the host leaves out (`.dp/manifest.drop`).
    pub(crate) drop_lines: String,
    /// Lines the host adds (`.dp/manifest.add`).
    pub(crate) add_lines: String,
    /// About the bytes of the uncompressed tar.
    pub(crate) payload: u64,
}

impl Delta {
    /// Nothing to send, remove or change in the manifest: the release is its base's tree.
    pub(crate) fn is_empty(&self) -> bool {
        self.send.is_empty()
            && self.remove_list.is_empty()
            && self.drop_lines.is_empty()
            && self.add_lines.is_empty()
    }

    pub(crate) fn new(base: Option<&Manifest>, new: &Manifest) -> Delta {
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
