//! Sets the cfgs dp-core's code is built with:
//! - `dp_linux` where dp-core may use what only Linux has (TCP_QUICKACK, TCP_INFO, prctl,
//!   the link-time swap of libssh2's ChaCha20/Poly1305). With DP_PORTABLE_CHECK set, it is
//!   not set on Linux either: `make test` checks the crates that way, so that code behind
//!   it always has a fallback that builds elsewhere (macOS, the BSDs).
//! - `dp_openssl3` when openssl-sys found OpenSSL 3 (not LibreSSL): then the swap uses
//!   OpenSSL's ChaCha20 and Poly1305 (EVP_MAC is OpenSSL 3's), else the RustCrypto ones.
//!
//! And it checks that the libssh2 that libssh2-sys bundles declares the two functions the
//! swap replaces, and `struct chacha_ctx`, as src/transport/chachapoly.rs assumes: a
//! libssh2-sys update that changed them would corrupt memory, and one that renamed them
//! would lose the speed-up, both silently. The build fails instead.

use std::path::{Path, PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(dp_linux)");
    println!("cargo::rustc-check-cfg=cfg(dp_openssl3)");
    println!("cargo::rerun-if-env-changed=DP_PORTABLE_CHECK");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if linux && std::env::var_os("DP_PORTABLE_CHECK").is_none() {
        println!("cargo::rustc-cfg=dp_linux");
        check_libssh2_declarations();
    }
    // From openssl-sys's build script (`links = "openssl"`): the version in hex.
    let version = std::env::var("DEP_OPENSSL_VERSION_NUMBER")
        .ok()
        .and_then(|v| u64::from_str_radix(&v, 16).ok());
    let libressl = std::env::var_os("DEP_OPENSSL_LIBRESSL_VERSION_NUMBER").is_some();
    if version.is_some_and(|v| v >= 0x3000_0000) && !libressl {
        println!("cargo::rustc-cfg=dp_openssl3");
    }
}

/// The declarations the swap relies on, as they appear in libssh2's src/chacha.h and
/// src/poly1305.h (whitespace collapsed).
const EXPECTED: [(&str, &str); 6] = [
    ("chacha.h", "typedef unsigned char u8;"),
    ("chacha.h", "typedef unsigned int u32;"),
    ("chacha.h", "struct chacha_ctx { u32 input[16]; };"),
    (
        "chacha.h",
        "void chacha_encrypt_bytes(struct chacha_ctx *x, const u8 *m, u8 *c, size_t bytes);",
    ),
    (
        "poly1305.h",
        "void poly1305_auth(unsigned char out[POLY1305_TAGLEN], const unsigned char *m, size_t inlen, const unsigned char key[POLY1305_KEYLEN]);",
    ),
    ("poly1305.h", "#define POLY1305_KEYLEN 32"),
];

fn check_libssh2_declarations() {
    let Some(src) = libssh2_src() else {
        // libssh2 from the system (LIBSSH2_SYS_USE_PKG_CONFIG) is a shared library: its
        // own calls do not go through the link-time swap, so there is nothing to check.
        println!(
            "cargo::warning=dp-core: libssh2-sys's bundled source not found; the ChaCha20/Poly1305 declarations were not checked"
        );
        return;
    };
    let collapse = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    for (file, want) in EXPECTED {
        let path = src.join(file);
        println!("cargo::rerun-if-changed={}", path.display());
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("dp-core: cannot read {}: {e}", path.display()));
        if !collapse(&text).contains(want) {
            panic!(
                "dp-core: {} no longer declares `{want}`: src/transport/chachapoly.rs (the \
                 link-time swap of libssh2's ChaCha20 and Poly1305) must be brought in line \
                 with this libssh2 before it is built",
                path.display()
            );
        }
    }
    // The cipher still calls them (a renamed function would leave the swap unused).
    let path = src.join("cipher-chachapoly.c");
    println!("cargo::rerun-if-changed={}", path.display());
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    for call in ["chacha_encrypt_bytes(", "poly1305_auth("] {
        assert!(
            text.contains(call),
            "dp-core: {} no longer calls {call}...): the ChaCha20/Poly1305 swap would be unused",
            path.display()
        );
    }
}

/// libssh2's src/ directory inside the libssh2-sys crate that this build uses: found next
/// to this package's Cargo.lock entry in the registry source directory (or
/// DP_LIBSSH2_SRC).
fn libssh2_src() -> Option<PathBuf> {
    println!("cargo::rerun-if-env-changed=DP_LIBSSH2_SRC");
    if let Some(dir) = std::env::var_os("DP_LIBSSH2_SRC") {
        return Some(PathBuf::from(dir));
    }
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR")?);
    let lock = manifest
        .ancestors()
        .map(|d| d.join("Cargo.lock"))
        .find(|p| p.is_file())?;
    println!("cargo::rerun-if-changed={}", lock.display());
    let text = std::fs::read_to_string(&lock).ok()?;
    let version = text
        .split("[[package]]")
        .find(|p| p.contains("name = \"libssh2-sys\""))?
        .lines()
        .find_map(|l| l.strip_prefix("version = \""))?
        .trim_end_matches('"')
        .to_string();
    let home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))?;
    let registry = home.join("registry").join("src");
    std::fs::read_dir(&registry)
        .ok()?
        .flatten()
        .map(|index| {
            index
                .path()
                .join(format!("libssh2-sys-{version}/libssh2/src"))
        })
        .find(|p| p.join("chacha.h").is_file())
}
