//! Links dp's programs so that libssh2's portable ChaCha20 and Poly1305 calls go to
//! OpenSSL's (see crates/dp-core/src/transport/chachapoly.rs for why).

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        for sym in ["chacha_encrypt_bytes", "poly1305_auth"] {
            // --wrap sends libssh2's calls to __wrap_<sym>; -u pulls that definition in
            // from dp-core even though it is found before libssh2 asks for it.
            println!("cargo:rustc-link-arg=-Wl,--wrap={sym},-u,__wrap_{sym}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
