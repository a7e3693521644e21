//! Man pages in man/ are generated from the clap definitions and must be current.
//! Regenerate with `make man` (runs this test with DP_BLESS=1).

use clap::CommandFactory;
use std::path::Path;

fn render(cmd: clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd).render(&mut out).unwrap();
    out
}

#[test]
fn man_pages_are_current() {
    let pages = [
        ("dp.1", dp_cli::dp::Args::command()),
        ("dp-hosts.1", dp_cli::hosts::Args::command()),
        ("dp-sync.1", dp_cli::sync::Args::command()),
        ("dp-deps.1", dp_cli::deps::Args::command()),
        ("dp-migrate.1", dp_cli::migrate::Args::command()),
        ("dp-restart.1", dp_cli::restart::Args::command()),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let bless = std::env::var_os("DP_BLESS").is_some();
    // Each subcommand has a page of its own (`dp-deploy(1)`), as the parent's page says,
    // except where a tool has that name: `dp restart` is `dp-restart --in-place`, which
    // the tool's page describes.
    let tools: Vec<String> = pages.iter().map(|(n, _)| n.to_string()).collect();
    let mut all: Vec<(String, clap::Command)> = Vec::new();
    for (name, cmd) in pages {
        let parent = name.trim_end_matches(".1").to_string();
        for sub in cmd.get_subcommands() {
            let full = format!("{parent}-{}", sub.get_name());
            let page = format!("{full}.1");
            if tools.contains(&page) {
                continue;
            }
            all.push((page, sub.clone().name(&*Box::leak(full.into_boxed_str()))));
        }
        all.push((name.to_string(), cmd));
    }
    for (name, cmd) in all {
        let want = render(cmd);
        let path = dir.join(&name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read(&path).unwrap_or_default();
        assert!(
            have == want,
            "man/{name} is stale: run `make man` and commit the result"
        );
    }
    // Every page another page refers to exists.
    for page in std::fs::read_dir(&dir).unwrap().flatten() {
        let text = std::fs::read_to_string(page.path()).unwrap();
        for word in text.split_whitespace() {
            if let Some(name) = word.strip_suffix("(1)").filter(|n| n.starts_with("dp")) {
                let file = format!("{}.1", name.replace("\\-", "-"));
                assert!(
                    dir.join(&file).exists(),
                    "{} refers to {word}, which has no page",
                    page.file_name().to_string_lossy()
                );
            }
        }
    }
}

/// A default that several programs share is the same in each one's help (they read it
/// from dp_core::defaults): --jobs and --lease wherever they are taken.
#[test]
fn shared_defaults_are_the_same_in_every_help() {
    let commands = [
        dp_cli::dp::Args::command(),
        dp_cli::hosts::Args::command(),
        dp_cli::sync::Args::command(),
        dp_cli::deps::Args::command(),
        dp_cli::migrate::Args::command(),
        dp_cli::restart::Args::command(),
    ];
    let jobs = dp_core::defaults::JOBS.to_string();
    for mut cmd in commands {
        cmd.build();
        let name = cmd.get_name().to_string();
        let mut all = vec![cmd.clone()];
        all.extend(cmd.get_subcommands().cloned());
        for c in &all {
            for arg in c.get_arguments() {
                let defaults: Vec<String> = arg
                    .get_default_values()
                    .iter()
                    .map(|v| v.to_string_lossy().into_owned())
                    .collect();
                match arg.get_id().as_str() {
                    "jobs" => assert_eq!(defaults, std::slice::from_ref(&jobs), "{name} --jobs"),
                    "lease" => {
                        assert_eq!(defaults, [dp_core::defaults::LEASE_TEXT], "{name} --lease")
                    }
                    _ => {}
                }
            }
        }
    }
}
