//! Fast ChaCha20 and Poly1305 under libssh2's chacha20-poly1305@openssh.com.
//!
//! libssh2 bundles the portable C ChaCha20 and Poly1305 from OpenSSH. They run at about
//! 0.5 and 1.2 GB/s here, and in a 20-host upload they took 30% of all CPU on the machine.
//! libssh2 has no hook to swap them, so the `dp` package's build script links its
//! programs with GNU ld's `--wrap=chacha_encrypt_bytes --wrap=poly1305_auth`: libssh2's
//! calls to those two functions then land in [`__wrap_chacha_encrypt_bytes`] and
//! [`__wrap_poly1305_auth`] below, which compute the same bytes with:
//! - OpenSSL 3's (the ones sshd uses, several GB/s: [`openssl3`]) when dp-core is built
//!   against OpenSSL 3;
//! - otherwise (OpenSSL 1.1, LibreSSL) the RustCrypto crates' ([`rustcrypto`]: SIMD
//!   picked at run time, 1.2 and 1.5 GB/s here). `DP_CHACHAPOLY=rustcrypto` picks them
//!   where OpenSSL 3 is there too (the tests run both).
//!
//! Each is checked against known answers once, at the first call ([`backend`]); dp offers
//! chacha20-poly1305 only when one passes. Programs linked without the flags keep
//! libssh2's own functions; the results are identical either way. dp-core's build script
//! checks the bundled libssh2's declarations of the two functions and of `struct
//! chacha_ctx` against the ones assumed here, so a libssh2-sys update that changes them
//! fails the build instead of corrupting memory, and one that renames them fails it
//! instead of losing the speed-up.

#[cfg(dp_openssl3)]
pub mod openssl3;
pub mod rustcrypto;

use std::sync::atomic::{AtomicU64, Ordering};

/// libssh2's `struct chacha_ctx`: the 16-word ChaCha state (constants, key, 64-bit block
/// counter in words 12-13, 64-bit nonce in words 14-15).
#[repr(C)]
pub struct ChachaCtx {
    input: [u32; 16],
}

static CALLS: AtomicU64 = AtomicU64::new(0);

/// How many times libssh2 called into this module in this process (tests use it to check
/// that the link-time swap is in place).
pub fn calls() -> u64 {
    CALLS.load(Ordering::Relaxed)
}

/// Where libssh2's ChaCha20 and Poly1305 calls go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// OpenSSL 3 ([`openssl3`]).
    OpenSsl3,
    /// The RustCrypto crates ([`rustcrypto`]).
    RustCrypto,
}

/// ChaCha20 of `bytes` bytes from `m` into `c` under the state (advanced).
pub type Chacha = unsafe fn(&mut [u32; 16], *const u8, *mut u8, usize) -> bool;
/// Poly1305 of `inlen` bytes at `m` under the 32-byte key into 16 bytes at `out`.
pub type Poly = unsafe fn(*mut u8, *const u8, usize, *const u8) -> bool;

impl Backend {
    /// Its ChaCha20 and Poly1305 (each as libssh2 calls them, but in place for ChaCha20's
    /// state words).
    pub fn functions(self) -> (Chacha, Poly) {
        match self {
            #[cfg(dp_openssl3)]
            Backend::OpenSsl3 => (openssl3::chacha, openssl3::poly1305),
            #[cfg(not(dp_openssl3))]
            Backend::OpenSsl3 => unreachable!("not built against OpenSSL 3"),
            Backend::RustCrypto => (rustcrypto::chacha, rustcrypto::poly1305),
        }
    }

    /// Whether this backend computes the known answers: ChaCha20 of zeros under an
    /// all-zero key and nonce; RFC 8439's Poly1305 vector. (OpenSSL may lack them under a
    /// FIPS-only configuration.)
    pub fn passes(self) -> bool {
        let (chacha, poly) = self.functions();
        let mut state = [0u32; 16];
        for (i, c) in b"expand 32-byte k".chunks(4).enumerate() {
            state[i] = u32::from_le_bytes(c.try_into().unwrap());
        }
        let mut block = [0u8; 16];
        let key = *b"\x85\xd6\xbe\x78\x57\x55\x6d\x33\x7f\x44\x52\xfe\x42\xd5\x06\xa8\
                    \x01\x03\x80\x8a\xfb\x0d\xb2\xfd\x4a\xbf\xf6\xaf\x41\x49\xf5\x1b";
        let msg = b"Cryptographic Forum Research Group";
        let mut tag = [0u8; 16];
        // SAFETY: buffers of the stated sizes.
        let ran = unsafe {
            chacha(&mut state, block.as_ptr(), block.as_mut_ptr(), 16)
                && poly(tag.as_mut_ptr(), msg.as_ptr(), msg.len(), key.as_ptr())
        };
        ran && block == *b"\x76\xb8\xe0\xad\xa0\xf1\x3d\x90\x40\x5d\x6a\xe5\x53\x86\xbd\x28"
            && tag == *b"\xa8\x06\x1d\xc1\x30\x51\x36\xc6\xc2\x2b\x8b\xaf\x0c\x01\x27\xa9"
    }
}

/// The backend in use, chosen once: OpenSSL 3 where built with it (unless
/// `DP_CHACHAPOLY=rustcrypto`), else RustCrypto; one that fails its known answers is not
/// used. None when neither passes.
pub fn backend() -> Option<Backend> {
    static CHOSEN: std::sync::OnceLock<Option<Backend>> = std::sync::OnceLock::new();
    match OVERRIDE.load(Ordering::Relaxed) {
        1 => return Some(Backend::OpenSsl3),
        2 => return Some(Backend::RustCrypto),
        _ => {}
    }
    *CHOSEN.get_or_init(|| {
        let rust = std::env::var("DP_CHACHAPOLY").is_ok_and(|v| v == "rustcrypto");
        let mut order = Vec::new();
        if cfg!(dp_openssl3) && !rust {
            order.push(Backend::OpenSsl3);
        }
        order.push(Backend::RustCrypto);
        order.into_iter().find(|b| b.passes())
    })
}

static OVERRIDE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// From now on, libssh2's calls go to `backend` (which must pass its known answers),
/// or with None to the one [`backend`] chose. For tests of a backend that is not the
/// default one, in a process that already runs.
pub fn set_backend(backend: Option<Backend>) {
    if let Some(b) = backend {
        assert!(b.passes(), "{b:?} fails its known answers here");
    }
    let code = match backend {
        None => 0,
        Some(Backend::OpenSsl3) => 1,
        Some(Backend::RustCrypto) => 2,
    };
    OVERRIDE.store(code, Ordering::Relaxed);
}

/// Whether libssh2's chacha20-poly1305 can run here (see [`backend`]).
pub fn usable() -> bool {
    backend().is_some()
}

fn fail(what: &str) -> ! {
    eprintln!("dp: {what} failed (out of memory?)");
    std::process::abort()
}

/// libssh2's `chacha_encrypt_bytes`: ChaCha20 (the original variant: 64-bit counter and
/// nonce) of `bytes` bytes from `m` into `c`, from the state in `x`; advances the block
/// counter in `x` as libssh2's does.
///
/// # Safety
/// `x` points to a set-up `struct chacha_ctx`; `m` and `c` to `bytes` bytes each (they may
/// be the same buffer).
#[no_mangle]
pub unsafe extern "C" fn __wrap_chacha_encrypt_bytes(
    x: *mut ChachaCtx,
    m: *const u8,
    c: *mut u8,
    bytes: usize,
) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let (chacha, _) = backend().unwrap_or(Backend::RustCrypto).functions();
    if !chacha(&mut (*x).input, m, c, bytes) {
        fail("ChaCha20");
    }
}

/// libssh2's `poly1305_auth`: Poly1305 of `inlen` bytes at `m` under the one-time `key`,
/// into the 16 bytes at `out`.
///
/// # Safety
/// `out` points to 16 writable bytes, `m` to `inlen` bytes, `key` to 32 bytes.
#[no_mangle]
pub unsafe extern "C" fn __wrap_poly1305_auth(
    out: *mut u8,
    m: *const u8,
    inlen: usize,
    key: *const u8,
) {
    CALLS.fetch_add(1, Ordering::Relaxed);
    let (_, poly) = backend().unwrap_or(Backend::RustCrypto).functions();
    if !poly(out, m, inlen, key) {
        fail("Poly1305");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn state(key: &[u8], counter: u64, nonce: &[u8; 8]) -> ChachaCtx {
        let mut input = [0u32; 16];
        for (i, c) in b"expand 32-byte k".chunks(4).enumerate() {
            input[i] = u32::from_le_bytes(c.try_into().unwrap());
        }
        for i in 0..8 {
            input[4 + i] = u32::from_le_bytes(key[i * 4..i * 4 + 4].try_into().unwrap());
        }
        input[12] = counter as u32;
        input[13] = (counter >> 32) as u32;
        input[14] = u32::from_le_bytes(nonce[0..4].try_into().unwrap());
        input[15] = u32::from_le_bytes(nonce[4..8].try_into().unwrap());
        ChachaCtx { input }
    }

    #[test]
    fn chacha20_matches_the_original_known_answer_and_advances_the_counter() {
        // The original ChaCha20's first known answer: all-zero key and nonce, counter 0.
        let mut x = state(&[0u8; 32], 0, &[0u8; 8]);
        let zeros = [0u8; 64];
        let mut out = [0u8; 64];
        unsafe { __wrap_chacha_encrypt_bytes(&mut x, zeros.as_ptr(), out.as_mut_ptr(), 64) };
        assert_eq!(
            out.to_vec(),
            hex(
                "76b8e0ada0f13d90405d6ae55386bd28bdd219b8a08ded1aa836efcc8b770dc7\
                 da41597c5157488d7724e03fb8d84a376a43b8f41518a11cc387b669b2ee6586"
            )
        );
        assert_eq!((x.input[12], x.input[13]), (1, 0));
        // A 32-bit counter about to wrap carries into word 13, as the 64-bit original does.
        let mut a = state(&[7u8; 32], u64::from(u32::MAX), &[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut b = state(
            &[7u8; 32],
            u64::from(u32::MAX) + 1,
            &[1, 2, 3, 4, 5, 6, 7, 8],
        );
        let mut two = [0u8; 128];
        let mut second = [0u8; 64];
        unsafe {
            __wrap_chacha_encrypt_bytes(&mut a, two.as_ptr(), two.as_mut_ptr(), 128);
            __wrap_chacha_encrypt_bytes(&mut b, zeros.as_ptr(), second.as_mut_ptr(), 64);
        }
        assert_eq!(&two[64..], &second[..]);
        assert_eq!((a.input[12], a.input[13]), (1, 1));
    }

    #[test]
    fn every_backend_built_here_passes_the_startup_check() {
        assert!(usable());
        assert!(Backend::RustCrypto.passes());
        #[cfg(dp_openssl3)]
        assert!(Backend::OpenSsl3.passes());
    }

    /// Both backends give the same bytes as each other over lengths around the block
    /// size and a counter about to wrap.
    #[test]
    fn the_backends_agree() {
        #[cfg(dp_openssl3)]
        for len in [0usize, 1, 63, 64, 65, 1000, 32768 + 7] {
            let msg: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
            let mut outs = Vec::new();
            for b in [Backend::OpenSsl3, Backend::RustCrypto] {
                let (chacha, poly) = b.functions();
                let mut x = state(&[9u8; 32], u64::from(u32::MAX) - 1, &[5u8; 8]);
                let mut out = vec![0u8; len];
                let mut tag = [0u8; 16];
                let key = [3u8; 32];
                unsafe {
                    assert!(chacha(&mut x.input, msg.as_ptr(), out.as_mut_ptr(), len));
                    assert!(poly(tag.as_mut_ptr(), msg.as_ptr(), len, key.as_ptr()));
                }
                outs.push((out, tag, x.input[12], x.input[13]));
            }
            assert!(outs[0] == outs[1], "length {len}");
        }
    }

    #[test]
    fn poly1305_matches_rfc8439() {
        let key = hex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b");
        let msg = b"Cryptographic Forum Research Group";
        let mut tag = [0u8; 16];
        unsafe { __wrap_poly1305_auth(tag.as_mut_ptr(), msg.as_ptr(), msg.len(), key.as_ptr()) };
        assert_eq!(tag.to_vec(), hex("a8061dc1305136c6c22b8baf0c0127a9"));
    }
}
