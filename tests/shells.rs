//! Any login shell: over SSH a command goes to the deploy user's shell first. The same
//! deploy, to deploy users whose login shells are bash, dash, zsh and fish (made by
//! `make test`), gives the same result on each.

use crate::util::{getuid_is_root, Dir, Fleet, TestCommand};
use std::path::{Path, PathBuf};

const SHELLS: [&str; 4] = ["bash", "dash", "zsh", "fish"];

/// A directory per deploy user under /tmp (which every user can reach), removed at the
/// end.
struct Roots(PathBuf);
impl Drop for Roots {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// What a deploy left on a host, in words that do not depend on the root's path.
fn outcome(root: &Path) -> Vec<String> {
    let read =
        |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| format!("{p}: {e}"));
    let link = |p: &str| {
        std::fs::read_link(root.join(p))
            .map(|l| l.display().to_string())
            .unwrap_or_else(|e| format!("{p}: {e}"))
    };
    let mut releases: Vec<String> = std::fs::read_dir(root.join("releases"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    releases.sort();
    let history: Vec<String> = read(".dp/history.jsonl")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            format!(
                "{} {} {} {}",
                v["action"], v["release"], v["previous"], v["result"]
            )
        })
        .collect();
    vec![
        link("current"),
        read("restarted"),
        read("current/REVISION"),
        read("current/it's a \"file\" with spaces"),
        // The environment's key is the same wherever the lockfile is; its place too.
        link("current/deps")
            .rsplit_once('/')
            .map(|(dir, key)| format!("{dir}/ {}", key.len()))
            .unwrap_or_default(),
        read("current/deps/words"),
        releases.join(" "),
        history.join("\n"),
        format!("lock {}", root.join(".dp/lock").exists()),
    ]
}

#[test]
fn the_same_deploy_gives_the_same_result_under_every_login_shell() {
    assert!(
        getuid_is_root(),
        "this test logs in as the users dp-bash, dp-dash, dp-zsh and dp-fish: run it as root (make test)"
    );
    for shell in SHELLS {
        let out = std::process::Command::new("getent")
            .args(["passwd", &format!("dp-{shell}")])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&out.stdout).trim_end().ends_with(&format!("/{shell}")),
            "no user dp-{shell} with login shell {shell}: run `make test` (scripts/test-env.sh makes them)"
        );
    }
    let fleet = Fleet::shared();
    let dir = Dir::new("shells");
    let base = PathBuf::from(format!("/tmp/dp-shells-{}", std::process::id()));
    let _roots = Roots(base.clone());
    let roots: Vec<PathBuf> = SHELLS.iter().map(|s| base.join(s)).collect();
    for (shell, root) in SHELLS.iter().zip(&roots) {
        std::fs::create_dir_all(root).unwrap();
        let ok = std::process::Command::new("chown")
            .arg(format!("dp-{shell}:"))
            .arg(root)
            .status()
            .unwrap();
        assert!(ok.success());
    }
    dir.write("site/VERSION", "1\n");
    dir.write("site/it's a \"file\" with spaces", "quoted\n");
    let hosts: Vec<String> = SHELLS
        .iter()
        .zip(&roots)
        .map(|(shell, root)| {
            format!(
                "  {{ name = \"{shell}\", addr = \"127.0.0.1\", port = {}, user = \"dp-{shell}\", root = \"{}\" }},",
                fleet.hosts[0].port,
                root.display()
            )
        })
        .collect();
    // Word splitting, globbing, quoting and $(...) in every command dp runs for the user.
    dir.write(
        "deploy.toml",
        format!(
            r#"app = "shells"
source = "site"
known_hosts = "{kh}"
identity = "{key}"
[deps]
kind = "command"
lockfiles = ["VERSION"]
command = "list='one two  three'; for w in $list; do echo \"<$w>\"; done > \"$DP_DEPS_DIR/words\""
[build]
command = "set -e; test \"$(cat REVISION)\" = {{release}}; echo built > built.txt"
[restart]
batch = "2"
command = "set -- $(echo a b); echo {{release}} $# > {{root}}/restarted"
health_cmd = "test -f built.txt && test -f VERSION"
[stages.test]
hosts = [
{hosts}
]
"#,
            kh = fleet.known_hosts.display(),
            key = fleet.client_key.display(),
            hosts = hosts.join("\n"),
        ),
    );
    let dp = |args: &[&str]| {
        TestCommand::new("dp")
            .current_dir(dir.path())
            .env("DP_CACHE_DIR", dir.path().join("cache"))
            .args(args)
            .run()
    };
    dp(&["deploy", "--release", "r1"]).code(0);
    dir.write("site/VERSION", "2\n");
    dp(&["deploy", "--release", "r2"]).code(0);
    let status = dp(&["status"]);
    status.code(0);
    for r in status.records() {
        assert_eq!(
            (
                r.steps["status"]["current"].as_str(),
                r.steps["status"]["previous"].as_str()
            ),
            (Some("r2"), Some("r1")),
            "{}",
            r.host
        );
    }
    dp(&["rollback"]).code(0);

    let want = vec![
        "releases/r1".to_string(),
        "r1 2\n".to_string(),
        "r1\n".to_string(),
        "quoted\n".to_string(),
        "../../.dp/deps/ 16".to_string(),
        "<one>\n<two>\n<three>\n".to_string(),
        "r1 r2".to_string(),
        "\"deploy\" \"r1\" null \"ok\"\n\"deploy\" \"r2\" \"r1\" \"ok\"\n\"rollback\" \"r1\" \"r2\" \"ok\""
            .to_string(),
        "lock false".to_string(),
    ];
    for (shell, root) in SHELLS.iter().zip(&roots) {
        assert_eq!(outcome(root), want, "deploy user with login shell {shell}");
    }
}
