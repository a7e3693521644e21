//! The host-side scripts are files (`crates/*/src/**/*.sh`, loaded with `include_str!`):
//! shellcheck finds nothing in them, in POSIX sh mode.

use std::path::{Path, PathBuf};

fn sh_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            sh_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "sh") {
            out.push(p);
        }
    }
}

#[test]
fn the_host_scripts_pass_shellcheck_in_posix_sh_mode() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sh_files(&root.join("crates"), &mut files);
    files.push(root.join("examples/django/wheels.sh"));
    assert!(files.len() >= 6, "{files:?}");
    let out = std::process::Command::new("shellcheck")
        .args(["--shell=sh", "--color=never"])
        .args(&files)
        .output()
        .expect("shellcheck is needed: run make test (it installs shellcheck)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
