//! ChaCha20 and Poly1305 from OpenSSL 3 (EVP_MAC), the ones sshd itself uses: several
//! GB/s here. Built only against OpenSSL 3 (`cfg(dp_openssl3)`, set by dp-core's build
//! script from the version openssl-sys found).

use openssl_sys as ffi;
use std::ffi::c_int;
use std::ptr;
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

/// ChaCha20 of `bytes` bytes with OpenSSL, advancing the block counter in `state`.
///
/// # Safety
/// `m` and `c` point to `bytes` bytes each (they may be the same buffer).
pub(super) unsafe fn chacha(state: &mut [u32; 16], m: *const u8, c: *mut u8, bytes: usize) -> bool {
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
pub(super) unsafe fn poly1305(out: *mut u8, m: *const u8, inlen: usize, key: *const u8) -> bool {
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
