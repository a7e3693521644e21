//! Links dp's programs so that libssh2's portable ChaCha20 and Poly1305 calls go to
//! OpenSSL's (see crates/dp-core/src/transport/chachapoly.rs for why), and sets
//! `cfg(dp_linux)` for the tests: on Linux, unless DP_PORTABLE_CHECK is set (as
//! crates/dp-core/build.rs does).

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=DP_PORTABLE_CHECK");
    println!("cargo::rustc-check-cfg=cfg(dp_linux)");
    let linux = std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux");
    if linux && std::env::var_os("DP_PORTABLE_CHECK").is_none() {
        println!("cargo::rustc-cfg=dp_linux");
        for sym in ["chacha_encrypt_bytes", "poly1305_auth"] {
            // --wrap sends libssh2's calls to __wrap_<sym>; -u pulls that definition in
            // from dp-core even though it is found before libssh2 asks for it.
            println!("cargo::rustc-link-arg=-Wl,--wrap={sym},-u,__wrap_{sym}");
        }
    }
}
