//! How an upload is compressed: chosen per host from what the host can unpack and the
//! size of what it needs.
//!
//! Small payloads (most redeploys: a few edited source files) go as bzip2, which packs
//! source text about a third smaller than gzip for a few tens of milliseconds of CPU;
//! medium ones as gzip; large ones as they are, since there the CPU, not the wire, is
//! the limit (on a fast link; `--no-compress` turns it all off).

use serde::Serialize;
use std::io::Read;

/// Payloads below this many bytes go as they are: a few kilobytes are not worth a
/// decompressor process on the host.
pub const COMPRESS_FROM: u64 = 16 << 10;
/// Payloads up to this many bytes go as bzip2 when the host has it.
pub const BZIP2_BELOW: u64 = 512 << 10;
/// Payloads up to this many bytes go as gzip level 6.
pub const GZIP_BEST_BELOW: u64 = 2 << 20;
/// Payloads up to this many bytes go as gzip level 1; larger ones are not compressed.
pub const GZIP_FAST_BELOW: u64 = 16 << 20;

/// The compression of an upload, as `steps.sync.compression`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// A plain tar.
    #[default]
    None,
    /// `tar -z`.
    Gzip,
    /// `tar -j`.
    Bzip2,
}

impl Codec {
    /// The GNU tar option that unpacks it (with a trailing space), or nothing.
    pub fn tar_flag(self) -> &'static str {
        match self {
            Codec::None => "",
            Codec::Gzip => "-z ",
            Codec::Bzip2 => "-j ",
        }
    }

    /// The file name extension of a payload so compressed.
    pub fn extension(self) -> &'static str {
        match self {
            Codec::None => ".tar",
            Codec::Gzip => ".tar.gz",
            Codec::Bzip2 => ".tar.bz2",
        }
    }

    /// The program tar runs to unpack it, or nothing.
    pub fn program(self) -> &'static str {
        match self {
            Codec::None => "",
            Codec::Gzip => "gzip",
            Codec::Bzip2 => "bzip2",
        }
    }
}

/// The decompressors a host has, as reported by the prepare script.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostCodecs {
    /// `gzip` is on its PATH.
    pub gzip: bool,
    /// `bzip2` is on its PATH.
    pub bzip2: bool,
}

impl HostCodecs {
    /// Records a `has NAME` line of the prepare script (sh/prepare.sh); false if it is
    /// not one.
    pub fn parse_line(&mut self, line: &str) -> bool {
        match line {
            "has gzip" => self.gzip = true,
            "has bzip2" => self.bzip2 = true,
            _ => return false,
        }
        true
    }
}

/// A codec with its level.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Choice {
    /// The codec.
    pub codec: Codec,
    level: u32,
}

/// The compression for a payload of about `payload` bytes to a host with `host`.
pub fn choose(host: HostCodecs, payload: u64, allowed: bool) -> Choice {
    let (codec, level) = match () {
        _ if !allowed || payload < COMPRESS_FROM => (Codec::None, 0),
        _ if host.bzip2 && payload <= BZIP2_BELOW => (Codec::Bzip2, 9),
        _ if host.gzip && payload <= GZIP_BEST_BELOW => (Codec::Gzip, 6),
        _ if host.gzip && payload <= GZIP_FAST_BELOW => (Codec::Gzip, 1),
        _ => (Codec::None, 0),
    };
    Choice { codec, level }
}

impl Choice {
    /// For a payload small enough to go inside the script (see `host::INLINE_BELOW`):
    /// compressed whatever its size, since every byte there is escaped; gzip first, as
    /// it unpacks fastest.
    pub fn inline(host: HostCodecs, allowed: bool) -> Choice {
        match () {
            _ if allowed && host.gzip => Choice {
                codec: Codec::Gzip,
                level: 9,
            },
            _ if allowed && host.bzip2 => Choice {
                codec: Codec::Bzip2,
                level: 9,
            },
            _ => Choice {
                codec: Codec::None,
                level: 0,
            },
        }
    }

    /// `plain`, compressed as it is read.
    pub fn reader<'a, R: Read + Send + 'a>(self, plain: R) -> Box<dyn Read + Send + 'a> {
        match self.codec {
            Codec::None => Box::new(plain),
            Codec::Gzip => Box::new(flate2::read::GzEncoder::new(
                plain,
                flate2::Compression::new(self.level),
            )),
            Codec::Bzip2 => Box::new(bzip2::read::BzEncoder::new(
                plain,
                bzip2::Compression::new(self.level),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: HostCodecs = HostCodecs {
        gzip: true,
        bzip2: true,
    };

    #[test]
    fn chooses_by_size_and_what_the_host_has() {
        assert_eq!(choose(BOTH, 10_000, true).codec, Codec::None);
        assert_eq!(choose(BOTH, 100_000, true).codec, Codec::Bzip2);
        assert_eq!(choose(BOTH, 1 << 20, true).codec, Codec::Gzip);
        assert_eq!(choose(BOTH, 100 << 20, true).codec, Codec::None);
        assert_eq!(choose(BOTH, 100_000, false).codec, Codec::None);
        let gzip_only = HostCodecs {
            gzip: true,
            bzip2: false,
        };
        assert_eq!(choose(gzip_only, 100_000, true).codec, Codec::Gzip);
        assert_eq!(
            choose(HostCodecs::default(), 100_000, true).codec,
            Codec::None
        );
    }

    #[test]
    fn encodes_what_the_decoders_read_back() {
        let text = b"def view(request):\n    return render(request, 'page.html')\n".repeat(200);
        for size in [100_000, 1 << 20, 100 << 20] {
            let choice = choose(BOTH, size, true);
            let mut out = Vec::new();
            choice
                .reader(&text[..])
                .read_to_end(&mut out)
                .expect("encodes");
            let mut back = Vec::new();
            match choice.codec {
                Codec::None => back = out.clone(),
                Codec::Gzip => {
                    flate2::read::GzDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Codec::Bzip2 => {
                    bzip2::read::BzDecoder::new(&out[..])
                        .read_to_end(&mut back)
                        .unwrap();
                }
            }
            assert_eq!(back, text, "{:?}", choice.codec);
            if choice.codec != Codec::None {
                assert!(out.len() < text.len() / 10, "{:?} compresses", choice.codec);
            }
        }
    }

    #[test]
    fn probe_lines() {
        let mut h = HostCodecs::default();
        assert!(h.parse_line("has bzip2"));
        assert!(!h.parse_line("has zstd"));
        assert_eq!(
            h,
            HostCodecs {
                gzip: false,
                bzip2: true
            }
        );
    }
}
