//! Sets `cfg(dp_linux)` where dp-core may use what only Linux has (TCP_QUICKACK,
//! TCP_INFO, prctl, OpenSSL 3's ChaCha20/Poly1305 for libssh2). With DP_PORTABLE_CHECK
//! set, it is not set on Linux either: `make test` checks the crates that way, so that
//! code behind it always has a fallback that builds elsewhere (macOS, the BSDs).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(dp_linux)");
    println!("cargo::rerun-if-env-changed=DP_PORTABLE_CHECK");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if linux && std::env::var_os("DP_PORTABLE_CHECK").is_none() {
        println!("cargo::rustc-cfg=dp_linux");
    }
}
