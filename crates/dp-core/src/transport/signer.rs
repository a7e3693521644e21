//! Ed25519 keys opened once per process: libssh2 asks [`Ed25519::sign`] to sign each
//! host's login, instead of reading and decoding the key file again for every host.
//!
//! libssh2 opens a key file twice per login (once for the public key, once to sign), and
//! each time first asks OpenSSL 3 to read it as PEM, which an OpenSSH-format key is not:
//! setting up OpenSSL 3's decoders for that took half of the client's CPU in a connect
//! check of 100 hosts. Here the key is read once (by ssh-key, as for a passphrase) and
//! held by OpenSSL as a raw Ed25519 key; a login then costs one signature. Other key
//! types (RSA, whose signature algorithm libssh2 picks per server, and ECDSA) keep
//! libssh2's own path ([`super::passphrase::userauth`]). Built against OpenSSL 3 only
//! (`cfg(dp_openssl3)`), where the decoders are the cost.

use openssl_sys as ffi;
use std::collections::HashMap;
use std::ffi::{c_int, c_uchar, c_void};
use std::path::{Path, PathBuf};
use std::ptr;
use std::sync::{Arc, Mutex, OnceLock};

/// An Ed25519 private key held by OpenSSL, with its public key in SSH wire format.
pub struct Ed25519 {
    pkey: *mut ffi::EVP_PKEY,
    blob: Vec<u8>,
}

// SAFETY: the EVP_PKEY is never changed after it is made; OpenSSL allows one key to be
// used for signing from several threads at once, each with its own EVP_MD_CTX.
unsafe impl Send for Ed25519 {}
unsafe impl Sync for Ed25519 {}

impl Drop for Ed25519 {
    fn drop(&mut self) {
        // SAFETY: made by EVP_PKEY_new_raw_private_key, freed once.
        unsafe { ffi::EVP_PKEY_free(self.pkey) }
    }
}

impl Ed25519 {
    /// The key from its 32-byte seed (an OpenSSH key's private half).
    fn from_seed(seed: &[u8; 32]) -> Option<Ed25519> {
        // SAFETY: plain OpenSSL calls with pointers and their lengths; a key that was
        // made is owned by the returned value (or freed by its Drop on the way out).
        unsafe {
            let pkey = ffi::EVP_PKEY_new_raw_private_key(
                ffi::EVP_PKEY_ED25519,
                ptr::null_mut(),
                seed.as_ptr(),
                seed.len(),
            );
            if pkey.is_null() {
                return None;
            }
            let mut key = Ed25519 {
                pkey,
                blob: Vec::new(),
            };
            // The public key from the private one, not the copy stored beside it.
            let mut public = [0u8; 32];
            let mut len = public.len();
            if ffi::EVP_PKEY_get_raw_public_key(pkey, public.as_mut_ptr(), &mut len) != 1
                || len != public.len()
            {
                return None;
            }
            key.blob = wire_blob(&public);
            Some(key)
        }
    }

    /// The public key as the server sees it (`string "ssh-ed25519"`, `string key`).
    pub fn public_blob(&self) -> &[u8] {
        &self.blob
    }

    /// The 64-byte Ed25519 signature of `data`.
    pub fn sign(&self, data: &[u8]) -> Option<[u8; 64]> {
        let mut sig = [0u8; 64];
        let mut len = sig.len();
        // SAFETY: a context made and freed here; every buffer comes with its length.
        unsafe {
            let ctx = ffi::EVP_MD_CTX_new();
            if ctx.is_null() {
                return None;
            }
            let ok = ffi::EVP_DigestSignInit(
                ctx,
                ptr::null_mut(),
                ptr::null(),
                ptr::null_mut(),
                self.pkey,
            ) == 1
                && ffi::EVP_DigestSign(ctx, sig.as_mut_ptr(), &mut len, data.as_ptr(), data.len())
                    == 1;
            ffi::EVP_MD_CTX_free(ctx);
            (ok && len == sig.len()).then_some(sig)
        }
    }
}

fn wire_blob(public: &[u8; 32]) -> Vec<u8> {
    let name = b"ssh-ed25519";
    let mut blob = Vec::with_capacity(4 + name.len() + 4 + public.len());
    blob.extend_from_slice(&(name.len() as u32).to_be_bytes());
    blob.extend_from_slice(name);
    blob.extend_from_slice(&(public.len() as u32).to_be_bytes());
    blob.extend_from_slice(public);
    blob
}

/// The Ed25519 key in the OpenSSH-format key text `text` (decrypted, or never
/// encrypted); none for another key type or format.
pub fn from_openssh(text: &str) -> Option<Ed25519> {
    let key = ssh_key::PrivateKey::from_openssh(text).ok()?;
    if key.is_encrypted() {
        return None;
    }
    // A copy on the stack, wiped when dropped; the parsed key wipes its own.
    let seed = zeroize::Zeroizing::new(key.key_data().ed25519()?.private.to_bytes());
    Ed25519::from_seed(&seed)
}

/// The key at `path` when it is an Ed25519 key this process can sign with: `plain` is its
/// text when it was decrypted here (a passphrase-protected OpenSSH key), else the file is
/// read once, and only used when it needs no passphrase. Kept for the process, a miss too.
pub fn opened(path: &Path, plain: Option<&str>) -> Option<Arc<Ed25519>> {
    type Opened = HashMap<(PathBuf, bool), Option<Arc<Ed25519>>>;
    static OPENED: OnceLock<Mutex<Opened>> = OnceLock::new();
    let mut opened = OPENED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    opened
        .entry((path.to_path_buf(), plain.is_some()))
        .or_insert_with(|| {
            let text = match plain {
                Some(text) => zeroize::Zeroizing::new(text.to_string()),
                None => zeroize::Zeroizing::new(std::fs::read_to_string(path).ok()?),
            };
            from_openssh(&text).map(Arc::new)
        })
        .clone()
}

/// libssh2's signing callback: `abstract_` points at the [`Ed25519`] (see [`userauth`]).
/// The signature is handed over in memory from `malloc`, which libssh2 frees with `free`
/// (the ssh2 crate's sessions use libssh2's default allocator).
extern "C" fn sign_callback(
    _session: *mut libssh2_sys::LIBSSH2_SESSION,
    sig: *mut *mut c_uchar,
    sig_len: *mut libc::size_t,
    data: *const c_uchar,
    data_len: libc::size_t,
    abstract_: *mut *mut c_void,
) -> c_int {
    // SAFETY: libssh2 passes back the pointer given to libssh2_userauth_publickey, which
    // points at an Ed25519 that outlives the call, and `data` with its length.
    let (key, data) = unsafe {
        (
            &*(abstract_ as *const Ed25519),
            std::slice::from_raw_parts(data, data_len),
        )
    };
    let Some(signature) = key.sign(data) else {
        return -1;
    };
    // SAFETY: a fresh allocation of the signature's size, filled before it is handed over.
    unsafe {
        let out = libc::malloc(signature.len()) as *mut c_uchar;
        if out.is_null() {
            return -1;
        }
        ptr::copy_nonoverlapping(signature.as_ptr(), out, signature.len());
        *sig = out;
        *sig_len = signature.len();
    }
    0
}

extern "C" {
    // Not in libssh2-sys's bindings; part of libssh2's API (and of the userauth.c that
    // the bindings' other login functions already link).
    fn libssh2_userauth_publickey(
        session: *mut libssh2_sys::LIBSSH2_SESSION,
        username: *const libc::c_char,
        pubkeydata: *const c_uchar,
        pubkeydata_len: libc::size_t,
        sign_callback: extern "C" fn(
            *mut libssh2_sys::LIBSSH2_SESSION,
            *mut *mut c_uchar,
            *mut libc::size_t,
            *const c_uchar,
            libc::size_t,
            *mut *mut c_void,
        ) -> c_int,
        abstract_: *mut *mut c_void,
    ) -> c_int;
}

/// Logs `user` in with `key` on the locked session `raw` (one step of libssh2's state
/// machine: it may ask to be called again, as its other login functions do).
///
/// # Safety
/// `raw` must be a live session that the caller holds locked for the call.
pub unsafe fn userauth(
    raw: *mut libssh2_sys::LIBSSH2_SESSION,
    user: &std::ffi::CStr,
    key: &Ed25519,
) -> c_int {
    let blob = key.public_blob();
    libssh2_userauth_publickey(
        raw,
        user.as_ptr(),
        blob.as_ptr(),
        blob.len(),
        sign_callback,
        key as *const Ed25519 as *mut *mut c_void,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 8032, section 7.1, TEST 2: the seed, its public key and the signature of 0x72.
    const SEED: &str = "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb";
    const PUBLIC: &str = "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c";
    const SIGNATURE: &str = "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da\
                             085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00";

    fn bytes<const N: usize>(hex: &str) -> [u8; N] {
        let hex = hex.as_bytes();
        std::array::from_fn(|i| {
            u8::from_str_radix(std::str::from_utf8(&hex[2 * i..2 * i + 2]).unwrap(), 16).unwrap()
        })
    }

    #[test]
    fn signs_as_rfc_8032_says() {
        let key = Ed25519::from_seed(&bytes(SEED)).unwrap();
        assert_eq!(key.sign(&[0x72]).unwrap(), bytes::<64>(SIGNATURE));
        assert_eq!(key.public_blob(), wire_blob(&bytes(PUBLIC)));
        assert_eq!(&key.public_blob()[..15], b"\0\0\0\x0bssh-ed25519");
    }

    #[test]
    fn only_unencrypted_ed25519_keys_are_opened_here() {
        let dir = std::env::temp_dir().join(format!("dp-signer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let make = |name: &str, kind: &str, pass: &str| {
            let path = dir.join(name);
            let ok = std::process::Command::new("ssh-keygen")
                .args(["-q", "-t", kind, "-N", pass, "-C", "", "-f"])
                .arg(&path)
                .status()
                .unwrap()
                .success();
            assert!(ok, "ssh-keygen -t {kind}");
            path
        };
        let ed = make("ed", "ed25519", "");
        let key = opened(&ed, None).expect("an ed25519 key without a passphrase");
        // The public key is the one ssh-keygen wrote beside it.
        let public = std::fs::read_to_string(ed.with_extension("pub")).unwrap();
        let public = ssh_key::PublicKey::from_openssh(&public).unwrap();
        assert_eq!(key.public_blob(), public.to_bytes().unwrap());
        // Kept: the file is not read again.
        std::fs::remove_file(&ed).unwrap();
        assert!(Arc::ptr_eq(&key, &opened(&ed, None).unwrap()));
        assert!(opened(&make("ec", "ecdsa", ""), None).is_none());
        assert!(opened(&make("locked", "ed25519", "secret"), None).is_none());
        assert!(opened(&dir.join("missing"), None).is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
