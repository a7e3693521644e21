//! Facts about the workspace itself that a build elsewhere relies on.

use serde_json::Value;

/// `rust-version` in Cargo.toml is the newest `rust-version` of the locked dependencies
/// (for any target), so a toolchain it admits can build the lockfile.
#[test]
fn rust_version_is_what_the_lockfile_needs() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = std::process::Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).unwrap();
    let version = |v: &str| -> Vec<u32> { v.split('.').map(|n| n.parse().unwrap()).collect() };
    let mut needed = (vec![0], String::new());
    let mut ours = None;
    for p in meta["packages"].as_array().unwrap() {
        let Some(rv) = p["rust_version"].as_str() else {
            continue;
        };
        if p["name"] == "dp" {
            ours = Some(version(rv));
        } else if p["source"].is_string() && version(rv) > needed.0 {
            needed = (version(rv), format!("{} {}", p["name"], p["version"]));
        }
    }
    assert_eq!(ours, Some(needed.0.clone()), "needed by {}", needed.1);
}
