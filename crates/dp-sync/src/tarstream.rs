//! The upload: one tar stream of the entries a host lacks, read from disk as it is
//! written (memory does not grow with file size), followed by dp's own files under `.dp/`.

use crate::manifest::{Entry, Kind};
use std::io::{self, Write};
use std::path::Path;
use tar::{EntryType, Header};

/// Writes a tar of `entries` (read from `src`) and then `extra` (name, bytes) to `out`,
/// and gives `out` back.
pub fn write_tar<W: Write>(
    src: &Path,
    entries: &[&Entry],
    extra: &[(&str, &[u8])],
    out: W,
) -> io::Result<W> {
    let mut tar = tar::Builder::new(out);
    for e in entries {
        let mut h = Header::new_gnu();
        h.set_mode(e.mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match &e.kind {
            Kind::Dir => {
                h.set_entry_type(EntryType::Directory);
                h.set_size(0);
                tar.append_data(&mut h, &e.path, io::empty())?;
            }
            Kind::Symlink { target } => {
                h.set_entry_type(EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, &e.path, target)?;
            }
            Kind::File { size, .. } => {
                let full = src.join(&e.path);
                let file = std::fs::File::open(&full)?;
                let meta = file.metadata()?;
                if meta.len() != *size {
                    return Err(io::Error::other(format!(
                        "{} changed while deploying (size {} -> {})",
                        e.path,
                        size,
                        meta.len()
                    )));
                }
                h.set_entry_type(EntryType::Regular);
                h.set_size(*size);
                h.set_mtime(
                    meta.modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                );
                tar.append_data(
                    &mut h,
                    &e.path,
                    io::BufReader::with_capacity(256 * 1024, file),
                )?;
            }
        }
    }
    for (name, bytes) in extra {
        let mut h = Header::new_gnu();
        h.set_entry_type(EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(bytes.len() as u64);
        h.set_mtime(0);
        tar.append_data(&mut h, name, *bytes)?;
    }
    let mut out = tar.into_inner()?;
    out.flush()?;
    Ok(out)
}
