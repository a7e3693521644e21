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

impl Drop for CipherCtx {
    fn drop(&mut self) {
        // SAFETY: the context was made by EVP_CIPHER_CTX_new and is freed once.
        unsafe { ffi::EVP_CIPHER_CTX_free(self.0) }
    }
}

struct MacCtx(*mut ffi::EVP_MAC_CTX);

impl Drop for MacCtx {
    fn drop(&mut self) {
        // SAFETY: the context was made by EVP_MAC_CTX_new and is freed once.
        unsafe { ffi::EVP_MAC_CTX_free(self.0) }
    }
}

fn fail(what: &str) -> ! {
    eprintln!("dp: OpenSSL failed in {what} (out of memory?)");
    std::process::abort()
}

/// One ChaCha20 context per thread, set up once with the cipher; every call then only
/// loads a key and IV into it.
fn cipher_ctx() -> *mut ffi::EVP_CIPHER_CTX {
    thread_local! {
        static CTX: CipherCtx = {
            // SAFETY: plain OpenSSL calls; the result is checked.
            unsafe {
                let ctx = ffi::EVP_CIPHER_CTX_new();
                if ctx.is_null()
                    || ffi::EVP_EncryptInit_ex(ctx, ffi::EVP_chacha20(), ptr::null_mut(), ptr::null(), ptr::null()) != 1
                {
                    fail("EVP_EncryptInit_ex(chacha20)");
                }
                CipherCtx(ctx)
            }
        };
    }
    CTX.with(|c| c.0)
}

fn mac_ctx() -> *mut ffi::EVP_MAC_CTX {
    thread_local! {
        static CTX: MacCtx = {
            // SAFETY: plain OpenSSL calls; the results are checked. The fetched EVP_MAC is
            // reference-counted by the context, so it is released right away.
            unsafe {
                let mac = ffi::EVP_MAC_fetch(ptr::null_mut(), c"POLY1305".as_ptr(), ptr::null());
                if mac.is_null() {
                    fail("EVP_MAC_fetch(POLY1305)");
                }
                let ctx = ffi::EVP_MAC_CTX_new(mac);
                ffi::EVP_MAC_free(mac);
                if ctx.is_null() {
                    fail("EVP_MAC_CTX_new");
                }
                MacCtx(ctx)
            }
        };
    }
    CTX.with(|c| c.0)
}

/// ChaCha20 (the original variant: 64-bit counter and nonce) of `bytes` bytes from `m`
/// into `c`, from the state in `x`; advances the block counter in `x` as libssh2's does.
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
    if bytes == 0 {
        return;
    }
    let state = &mut (*x).input;
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
    let ctx = cipher_ctx();
    let mut done = 0usize;
    let ok = ffi::EVP_EncryptInit_ex(ctx, ptr::null(), ptr::null_mut(), key.as_ptr(), iv.as_ptr())
        == 1
        && {
            // EVP_EncryptUpdate takes an int length; SSH packets are far below it, but keep
            // to the contract for any length.
            let mut ok = true;
            while ok && done < bytes {
                let n = (bytes - done).min(1 << 30);
                let mut out: c_int = 0;
                ok = ffi::EVP_EncryptUpdate(ctx, c.add(done), &mut out, m.add(done), n as c_int)
                    == 1
                    && out as usize == n;
                done += n;
            }
            ok
        };
    std::ptr::write_volatile(&mut key, [0u8; 32]);
    if !ok {
        fail("EVP_EncryptUpdate(chacha20)");
    }
    let counter =
        (u64::from(state[13]) << 32 | u64::from(state[12])).wrapping_add(bytes.div_ceil(64) as u64);
    state[12] = counter as u32;
    state[13] = (counter >> 32) as u32;
}

/// Poly1305 of `inlen` bytes at `m` under the one-time `key`, into the 16 bytes at `out`.
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
    let ctx = mac_ctx();
    let mut len = 0usize;
    let ok = ffi::EVP_MAC_init(ctx, key, 32, ptr::null()) == 1
        && (inlen == 0 || ffi::EVP_MAC_update(ctx, m, inlen) == 1)
        && ffi::EVP_MAC_final(ctx, out, &mut len, 16) == 1
        && len == 16;
    if !ok {
        fail("EVP_MAC(POLY1305)");
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
    fn poly1305_matches_rfc8439() {
        let key = hex("85d6be7857556d337f4452fe42d506a80103808afb0db2fd4abff6af4149f51b");
        let msg = b"Cryptographic Forum Research Group";
        let mut tag = [0u8; 16];
        unsafe { __wrap_poly1305_auth(tag.as_mut_ptr(), msg.as_ptr(), msg.len(), key.as_ptr()) };
        assert_eq!(tag.to_vec(), hex("a8061dc1305136c6c22b8baf0c0127a9"));
    }
}
