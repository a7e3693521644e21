//! OpenSSL's ChaCha20 and Poly1305 under libssh2's chacha20-poly1305@openssh.com.
//!
//! libssh2 bundles the portable C ChaCha20 and Poly1305 from OpenSSH. They run at about
//! 0.5 and 1.2 GB/s here, and in a 20-host upload they took 30% of all CPU on the machine.
//! OpenSSL's (the ones sshd itself uses) run at several GB/s. libssh2 has no hook to swap
//! them, so the `dp` package's build script links its programs with GNU ld's
//! `--wrap=chacha_encrypt_bytes --wrap=poly1305_auth`: libssh2's calls to those two
//! functions then land in [`__wrap_chacha_encrypt_bytes`] and [`__wrap_poly1305_auth`]
//! below, which compute the same bytes with OpenSSL. Programs linked without those flags
//! keep libssh2's own functions; the results are identical either way (the tests below
//! check both against the reference implementation's known answers).

use openssl_sys as ffi;
use std::ffi::c_int;
use std::ptr;
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

struct CipherCtx(*mut ffi::EVP_CIPHER_CTX);

impl CipherCtx {
    /// A context set up with ChaCha20; every call then only loads a key and IV into it.
    fn new() -> Option<CipherCtx> {
        // SAFETY: plain OpenSSL calls; a context that failed to set up is freed by Drop.
        unsafe {
            let ctx = CipherCtx(ffi::EVP_CIPHER_CTX_new());
            let cipher = ffi::EVP_chacha20();
            (!ctx.0.is_null()
                && !cipher.is_null()
                && ffi::EVP_EncryptInit_ex(
                    ctx.0,
                    cipher,
                    ptr::null_mut(),
                    ptr::null(),
                    ptr::null(),
                ) == 1)
                .then_some(ctx)
        }
    }
}

impl Drop for CipherCtx {
    fn drop(&mut self) {
        // SAFETY: the context was made by EVP_CIPHER_CTX_new (or is null) and is freed once.
        unsafe { ffi::EVP_CIPHER_CTX_free(self.0) }
    }
}

struct MacCtx(*mut ffi::EVP_MAC_CTX);

impl MacCtx {
    fn new() -> Option<MacCtx> {
        // SAFETY: plain OpenSSL calls. The fetched EVP_MAC is reference-counted by the
        // context, so it is released right away.
        unsafe {
            let mac = ffi::EVP_MAC_fetch(ptr::null_mut(), c"POLY1305".as_ptr(), ptr::null());
            if mac.is_null() {
                return None;
            }
            let ctx = ffi::EVP_MAC_CTX_new(mac);
            ffi::EVP_MAC_free(mac);
            (!ctx.is_null()).then_some(MacCtx(ctx))
        }
    }
}

impl Drop for MacCtx {
    fn drop(&mut self) {
        // SAFETY: the context was made by EVP_MAC_CTX_new and is freed once.
        unsafe { ffi::EVP_MAC_CTX_free(self.0) }
    }
}

thread_local! {
    static CIPHER: Option<CipherCtx> = CipherCtx::new();
    static MAC: Option<MacCtx> = MacCtx::new();
}

/// Runs `f` with this thread's ChaCha20 context, or with one made for this call (while
/// the thread is shutting down). False when OpenSSL has no ChaCha20 or `f` failed.
fn with_cipher(f: impl Fn(*mut ffi::EVP_CIPHER_CTX) -> bool) -> bool {
    match CIPHER.try_with(|c| c.as_ref().map(|c| f(c.0))) {
        Ok(Some(ok)) => ok,
        _ => CipherCtx::new().is_some_and(|c| f(c.0)),
    }
}

fn fail(what: &str) -> ! {
    eprintln!("dp: OpenSSL failed in {what} (out of memory?)");
    std::process::abort()
}

/// Whether OpenSSL here computes ChaCha20 and Poly1305 (it may not, under a FIPS-only
/// configuration): checked once against known answers. dp offers chacha20-poly1305 only
/// when it does, since the calls below could not fall back.
pub fn usable() -> bool {
    static USABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *USABLE.get_or_init(|| {
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
                && poly1305(tag.as_mut_ptr(), msg.as_ptr(), msg.len(), key.as_ptr())
        };
        // ChaCha20 of zeros under an all-zero key and nonce; RFC 8439's Poly1305 vector.
        ran && block == *b"\x76\xb8\xe0\xad\xa0\xf1\x3d\x90\x40\x5d\x6a\xe5\x53\x86\xbd\x28"
            && tag == *b"\xa8\x06\x1d\xc1\x30\x51\x36\xc6\xc2\x2b\x8b\xaf\x0c\x01\x27\xa9"
    })
}

/// ChaCha20 of `bytes` bytes with OpenSSL, advancing the block counter in `state`.
///
/// # Safety
/// `m` and `c` point to `bytes` bytes each (they may be the same buffer).
unsafe fn chacha(state: &mut [u32; 16], m: *const u8, c: *mut u8, bytes: usize) -> bool {
    if bytes == 0 {
        return true;
    }
    let mut key = [0u8; 32];
    for (i, w) in state[4..12].iter().enumerate() {
        key[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    // OpenSSL's IV is words 12-15 of the state: its 32-bit counter carries into word 13,
    // so it counts blocks exactly as the 64-bit counter of the original does.
    let mut iv = [0u8; 16];
    for (i, w) in state[12..16].iter().enumerate() {
        iv[i * 4..i * 4 + 4].copy_from_slice(&w.to_le_bytes());
    }
    let ok = with_cipher(|ctx| {
        if ffi::EVP_EncryptInit_ex(ctx, ptr::null(), ptr::null_mut(), key.as_ptr(), iv.as_ptr())
            != 1
        {
            return false;
        }
        // EVP_EncryptUpdate takes an int length; SSH packets are far below it, but keep
        // to the contract for any length.
        let mut done = 0usize;
        while done < bytes {
            let n = (bytes - done).min(1 << 30);
            let mut out: c_int = 0;
            if ffi::EVP_EncryptUpdate(ctx, c.add(done), &mut out, m.add(done), n as c_int) != 1
                || out as usize != n
            {
                return false;
            }
            done += n;
        }
        true
    });
    std::ptr::write_volatile(&mut key, [0u8; 32]);
    let counter =
        (u64::from(state[13]) << 32 | u64::from(state[12])).wrapping_add(bytes.div_ceil(64) as u64);
    state[12] = counter as u32;
    state[13] = (counter >> 32) as u32;
    ok
}

/// Poly1305 with OpenSSL.
///
/// # Safety
/// `out` points to 16 writable bytes, `m` to `inlen` bytes, `key` to 32 bytes.
unsafe fn poly1305(out: *mut u8, m: *const u8, inlen: usize, key: *const u8) -> bool {
    let run = |ctx: &MacCtx| {
        let mut len = 0usize;
        ffi::EVP_MAC_init(ctx.0, key, 32, ptr::null()) == 1
            && (inlen == 0 || ffi::EVP_MAC_update(ctx.0, m, inlen) == 1)
            && ffi::EVP_MAC_final(ctx.0, out, &mut len, 16) == 1
            && len == 16
    };
    match MAC.try_with(|c| c.as_ref().map(run)) {
        Ok(Some(ok)) => ok,
        _ => MacCtx::new().as_ref().is_some_and(run),
    }
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
    if !poly1305(out, m, inlen, key) {
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
    fn openssl_here_passes_the_startup_check() {
        assert!(usable());
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
