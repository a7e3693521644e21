//! The upload: one tar stream of the entries a host lacks, followed by dp's own files
//! under `.dp/`.
//!
//! The stream is pulled ([`TarReader`] is a [`Read`]): the transport reads file contents
//! straight from disk into its send buffer, with no thread, pipe or extra copy in between,
//! and memory does not grow with file size.

use crate::manifest::{Entry, Kind};
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use tar::{Builder, EntryType, Header};

/// A tar of `entries` (read from `src` as the stream is read) and then `extra` (name,
/// bytes), as a reader.
pub struct TarReader<'a> {
    src: &'a Path,
    entries: std::slice::Iter<'a, &'a Entry>,
    extra: std::slice::Iter<'a, (&'a str, &'a [u8])>,
    /// Makes headers (with GNU long-name entries where needed) into its buffer.
    headers: Builder<Vec<u8>>,
    /// Bytes to hand out before anything else, from `pos`.
    pending: Vec<u8>,
    pos: usize,
    /// The data of the entry being sent.
    data: Data<'a>,
    done: bool,
}

/// The data of one entry.
enum Data<'a> {
    /// None left: the next thing is the next entry's header.
    None,
    /// A file: its path, the open file, its size, the bytes of it still to send.
    File(&'a str, File, u64, u64),
    /// One of dp's own files: its size, and the bytes still to send.
    Bytes(u64, &'a [u8]),
}

impl<'a> TarReader<'a> {
    /// A reader of the tar of `entries` then `extra`.
    pub fn new(
        src: &'a Path,
        entries: &'a [&'a Entry],
        extra: &'a [(&'a str, &'a [u8])],
    ) -> TarReader<'a> {
        TarReader {
            src,
            entries: entries.iter(),
            extra: extra.iter(),
            headers: Builder::new(Vec::new()),
            pending: Vec::new(),
            pos: 0,
            data: Data::None,
            done: false,
        }
    }

    /// Queues the next entry's header (and opens its file); false at the end.
    fn next_entry(&mut self) -> io::Result<bool> {
        if let Some(e) = self.entries.next() {
            let mut h = Header::new_gnu();
            h.set_mode(e.mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            match &e.kind {
                Kind::Dir => {
                    h.set_entry_type(EntryType::Directory);
                    h.set_size(0);
                    self.headers.append_data(&mut h, &e.path, io::empty())?;
                }
                Kind::Symlink { target } => {
                    h.set_entry_type(EntryType::Symlink);
                    h.set_size(0);
                    self.headers.append_link(&mut h, &e.path, target)?;
                }
                Kind::File { size, .. } => {
                    let full = self.src.join(&e.path);
                    let file = File::open(&full)
                        .map_err(|err| io::Error::new(err.kind(), format!("{}: {err}", e.path)))?;
                    let meta = file.metadata()?;
                    if meta.len() != *size {
                        return Err(changed(&e.path, *size, meta.len()));
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
                    // The header only: no data is read, so none is padded.
                    self.headers.append_data(&mut h, &e.path, io::empty())?;
                    self.data = Data::File(&e.path, file, *size, *size);
                }
            }
        } else if let Some((name, bytes)) = self.extra.next() {
            let mut h = Header::new_gnu();
            h.set_entry_type(EntryType::Regular);
            h.set_mode(0o644);
            h.set_size(bytes.len() as u64);
            h.set_mtime(0);
            self.headers.append_data(&mut h, name, io::empty())?;
            self.data = Data::Bytes(bytes.len() as u64, bytes);
        } else if !self.done {
            self.done = true;
            // Two zero blocks end the archive.
            self.headers.get_mut().extend_from_slice(&[0; 1024]);
        } else {
            return Ok(false);
        }
        self.pending.clear();
        self.pos = 0;
        std::mem::swap(&mut self.pending, self.headers.get_mut());
        Ok(true)
    }
}

fn changed(path: &str, was: u64, now: u64) -> io::Error {
    io::Error::other(format!(
        "{path} changed while deploying (size {was} -> {now})"
    ))
}

impl Read for TarReader<'_> {
    /// Fills `buf` as far as the stream goes: headers, small files and padding share one
    /// buffer, so they share SSH packets too.
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read_some(&mut buf[filled..])? {
                0 => break,
                n => filled += n,
            }
        }
        Ok(filled)
    }
}

impl TarReader<'_> {
    /// The next piece of the stream: from one header, file or padding.
    fn read_some(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.pos < self.pending.len() {
                let n = buf.len().min(self.pending.len() - self.pos);
                buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            let size = match &mut self.data {
                Data::None => None,
                Data::File(path, file, size, left) => {
                    if *left > 0 {
                        let want = buf.len().min(usize::try_from(*left).unwrap_or(usize::MAX));
                        let n = file.read(&mut buf[..want])?;
                        if n == 0 {
                            return Err(changed(path, *size, file.metadata()?.len()));
                        }
                        *left -= n as u64;
                        return Ok(n);
                    }
                    Some(*size)
                }
                Data::Bytes(size, rest) => {
                    if !rest.is_empty() {
                        let n = buf.len().min(rest.len());
                        buf[..n].copy_from_slice(&rest[..n]);
                        *rest = &rest[n..];
                        return Ok(n);
                    }
                    Some(*size)
                }
            };
            if let Some(size) = size {
                // The data is out: pad it to a whole block.
                self.data = Data::None;
                self.pending.clear();
                self.pending.resize(((512 - size % 512) % 512) as usize, 0);
                self.pos = 0;
                continue;
            }
            if !self.next_entry()? {
                return Ok(0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn file(path: &str, size: u64, mode: u32) -> Entry {
        Entry {
            path: path.into(),
            mode,
            kind: Kind::File {
                size,
                sha256: String::new(),
            },
        }
    }

    #[test]
    fn reads_back_as_the_same_tree() {
        let dir = std::env::temp_dir().join(format!("dp-tarstream-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("d")).unwrap();
        let long = format!("d/{}", "x".repeat(150));
        let contents: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("d/one block", vec![7; 512]),
            (
                "d/odd\nname",
                (0..70_000u32).map(|i| (i % 251) as u8).collect(),
            ),
            (&long, b"long name".to_vec()),
        ];
        for (p, c) in &contents {
            std::fs::write(dir.join(p), c).unwrap();
        }
        std::fs::set_permissions(dir.join("empty"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        let mut entries = vec![Entry {
            path: "d".into(),
            mode: 0o750,
            kind: Kind::Dir,
        }];
        entries.extend(contents.iter().map(|(p, c)| file(p, c.len() as u64, 0o644)));
        entries[1].mode = 0o755;
        entries.push(Entry {
            path: "link".into(),
            mode: 0o777,
            kind: Kind::Symlink {
                target: "d/one block".into(),
            },
        });
        let refs: Vec<&Entry> = entries.iter().collect();
        let extra: Vec<(&str, &[u8])> = vec![(".dp/manifest.add", b"a\nb\n")];
        let mut tar = Vec::new();
        // A small buffer, so reads stop mid-header and mid-file.
        let mut reader = TarReader::new(&dir, &refs, &extra);
        let mut chunk = [0u8; 300];
        loop {
            let n = reader.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            tar.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(tar.len() % 512, 0);
        let mut archive = tar::Archive::new(&tar[..]);
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mode = entry.header().mode().unwrap();
            let kind = entry.header().entry_type();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            seen.push((path, mode, kind, data));
        }
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "d",
                "empty",
                "d/one block",
                "d/odd\nname",
                long.as_str(),
                "link",
                ".dp/manifest.add"
            ]
        );
        assert_eq!(seen[0].1, 0o750);
        assert!(seen[0].2.is_dir());
        assert_eq!(seen[1].1, 0o755);
        for (i, (_, c)) in contents.iter().enumerate() {
            assert_eq!(&seen[i + 1].3, c, "{}", seen[i + 1].0);
        }
        assert!(seen[5].2.is_symlink());
        assert_eq!(seen[6].3, b"a\nb\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_that_changed_size_is_an_error_naming_it() {
        let dir = std::env::temp_dir().join(format!("dp-tarstream-changed-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.txt"), b"12345").unwrap();
        let entries = [file("a.txt", 3, 0o644)];
        let refs: Vec<&Entry> = entries.iter().collect();
        let err = io::copy(&mut TarReader::new(&dir, &refs, &[]), &mut io::sink()).unwrap_err();
        assert!(
            err.to_string().contains("a.txt changed while deploying"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
