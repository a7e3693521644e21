//! I/O adapters for the upload: a stdout sink that notes when the then-mark came, and a
//! reader that counts what it passes on.

use crate::then::{find, THEN_MARK};
use std::io::Read;
use std::time::Instant;

/// Collects stdout and notes when the then-mark arrived.
pub(crate) struct MarkClock {
    pub(crate) buf: Vec<u8>,
    pub(crate) seen: Option<Instant>,
}

impl std::io::Write for MarkClock {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let from = self.buf.len().saturating_sub(THEN_MARK.len());
        self.buf.extend_from_slice(data);
        if self.seen.is_none() && find(&self.buf[from..], THEN_MARK).is_some() {
            self.seen = Some(Instant::now());
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Counts the bytes read through it and keeps the error that stopped it, if any.
pub(crate) struct Counting<R> {
    pub(crate) inner: R,
    pub(crate) count: u64,
    pub(crate) error: Option<std::io::Error>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self.inner.read(buf) {
            Ok(n) => {
                self.count += n as u64;
                Ok(n)
            }
            Err(e) => {
                let copy = std::io::Error::new(e.kind(), e.to_string());
                self.error = Some(e);
                Err(copy)
            }
        }
    }
}
