//! The `dp` wrapper: the one-line deploy equals the printed pipeline; status, history,
//! rollback, unlock; a failing migration switches no host; a concurrent deploy is refused.

use crate::util::{bin, Dir, Outcome, TestCommand};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// A site with a migration, two local hosts and a rollout config, under `dir`.
fn fixture(dir: &Dir) -> Vec<PathBuf> {
    dir.write("site/VERSION", "1\n");
    dir.write("site/app/views.py", "def index(): return 'hi'\n");
    dir.write(
        "site/migrations/1_create_items.sql",
        "CREATE TABLE items (id INTEGER PRIMARY KEY);\n",
    );
    dir.write(
        "site/migrations/post/2_cleanup.sql",
        "CREATE TABLE cleaned (id INTEGER);\n",
    );
    dir.write(
        "deploy.toml",
        r#"app = "t"
source = "site"
keep = 3
[restart]
batch = "1"
command = "echo {release} > {root}/restarted"
health_cmd = "test -f VERSION"
[stages.local]
transport = "local"
hosts = [
  { name = "a", root = "hosts/a", roles = ["web", "migrate"] },
  { name = "b", root = "hosts/b", roles = ["web"] },
]
"#,
    );
    vec![dir.path().join("hosts/a"), dir.path().join("hosts/b")]
}

fn dp(dir: &Dir, args: &[&str]) -> Outcome {
    TestCommand::new("dp")
        .current_dir(dir.path())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("db.sqlite3").display()),
        )
        .env("DP_CACHE_DIR", dir.path().join("cache"))
        .args(args)
        .run()
}

fn current(root: &Path) -> String {
    std::fs::read_link(root.join("current"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// The parts of a record that do not depend on timing or on where the fixture lives.
fn normalized(line: &str, dir: &Path) -> Value {
    let mut v: Value =
        serde_json::from_str(&line.replace(&dir.display().to_string(), "DIR")).unwrap();
    fn strip(v: &mut Value) {
        if let Value::Object(m) = v {
            m.retain(|k, _| {
                !(k.ends_with("ms")
                    || k.starts_with("bytes_")
                    || k == "waited_s"
                    || k == "warnings")
            });
            m.values_mut().for_each(strip);
        }
    }
    strip(&mut v);
    v
}

#[test]
fn deploy_and_the_printed_pipeline_give_the_same_result() {
    let (a, b) = (Dir::new("dp-one-line"), Dir::new("dp-pipeline"));
    let roots_a = fixture(&a);
    let roots_b = fixture(&b);
    let one = dp(&a, &["deploy", "--release", "r1"]);
    one.code(0);
    assert!(one.stderr.contains("dp: deployed"), "{}", one.stderr);

    let printed = dp(&b, &["deploy", "--release", "r1", "--print-pipeline"]);
    printed.code(0);
    let pipeline = printed.stdout.clone();
    assert!(
        pipeline.starts_with("dp-hosts --config deploy.toml"),
        "{pipeline}"
    );
    assert!(
        pipeline.contains("| dp-migrate --config deploy.toml --dir")
            && pipeline.contains("--phase post"),
        "{pipeline}"
    );
    let tools = bin("dp").parent().unwrap().to_path_buf();
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .args(["-o", "pipefail", "-c", &pipeline])
        .current_dir(b.path())
        .env("PATH", path)
        .env("HOME", b.path())
        .env(
            "DATABASE_URL",
            format!("sqlite://{}", b.path().join("db.sqlite3").display()),
        )
        .env("DP_CACHE_DIR", b.path().join("cache"))
        .env_remove("PIP_FIND_LINKS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let piped = String::from_utf8_lossy(&out.stdout).to_string();

    let left: Vec<Value> = one
        .stdout
        .lines()
        .map(|l| normalized(l, a.path()))
        .collect();
    let right: Vec<Value> = piped.lines().map(|l| normalized(l, b.path())).collect();
    assert_eq!(left, right, "the same records");
    assert_eq!(
        left[0]["steps"]["migrate"]["applied"],
        serde_json::json!([1])
    );
    assert_eq!(
        left[0]["steps"]["migrate_post"]["applied"],
        serde_json::json!([2])
    );
    for (ra, rb) in roots_a.iter().zip(&roots_b) {
        assert_eq!(current(ra), "releases/r1");
        assert_eq!(current(rb), "releases/r1");
        assert_eq!(
            std::fs::read_to_string(ra.join("restarted")).unwrap(),
            std::fs::read_to_string(rb.join("restarted")).unwrap()
        );
        assert!(!ra.join(".dp/lock").exists() && !rb.join(".dp/lock").exists());
    }
}

#[test]
fn status_history_rollback_and_unlock() {
    let dir = Dir::new("dp-admin");
    let roots = fixture(&dir);
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    dir.write("site/VERSION", "2\n");
    dp(&dir, &["deploy", "--release", "r2"]).code(0);

    let status = dp(&dir, &["status"]);
    status.code(0);
    for r in status.records() {
        let s = &r.steps["status"];
        assert_eq!(
            (s["current"].as_str(), s["previous"].as_str()),
            (Some("r2"), Some("r1")),
            "{s}"
        );
        assert_eq!(s["drift"], false);
        assert!(s["lock"].is_null());
        assert_eq!(s["pending_migrations"], 0);
    }

    let history = dp(&dir, &["history"]);
    history.code(0);
    let lines: Vec<Value> = history
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "two deploys on two hosts");
    assert_eq!(lines[0]["release"], "r2", "newest first");

    let rollback = dp(&dir, &["rollback"]);
    rollback.code(0);
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
        assert_eq!(
            std::fs::read_to_string(root.join("restarted")).unwrap(),
            "r1\n"
        );
    }
    // Drift shows when hosts disagree.
    std::fs::remove_file(roots[1].join("current")).unwrap();
    std::os::unix::fs::symlink("releases/r2", roots[1].join("current")).unwrap();
    let status = dp(&dir, &["status"]);
    let drift: Vec<bool> = status
        .records()
        .iter()
        .map(|r| r.steps["status"]["drift"].as_bool().unwrap())
        .collect();
    assert_eq!(drift.iter().filter(|d| **d).count(), 1);

    dir.write(
        "hosts/a/.dp/lock",
        "{\"release\":\"rX\",\"holder\":\"ci@box\",\"pid\":7,\"time\":1,\"expires\":9999999999}\n",
    );
    let unlock = dp(&dir, &["unlock"]);
    unlock.code(0);
    assert!(
        unlock.stderr.contains("a: removed lock held by"),
        "{}",
        unlock.stderr
    );
    assert_eq!(
        unlock.records()[0].steps["unlock"]["holder"]["holder"],
        "ci@box"
    );
    assert!(!roots[0].join(".dp/lock").exists());
}

#[test]
fn a_failing_migration_switches_no_host() {
    let dir = Dir::new("dp-failing-migration");
    let roots = fixture(&dir);
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    dir.write(
        "site/migrations/3_broken.sql",
        "INSERT INTO nowhere VALUES (1);\n",
    );
    let out = dp(&dir, &["deploy", "--release", "r2"]);
    out.code(1);
    for r in out.records() {
        assert_eq!(r.error.clone().unwrap().step, "migrate");
    }
    for root in &roots {
        assert_eq!(current(root), "releases/r1", "no host switched");
        assert!(!root.join(".dp/lock").exists(), "the lock was released");
    }
    assert!(out.stderr.contains("deploy FAILED"), "{}", out.stderr);
}

#[test]
fn a_concurrent_deploy_is_refused() {
    let dir = Dir::new("dp-concurrent");
    let roots = fixture(&dir);
    dir.write("site/slow.txt", "x");
    // Slow the rollout down so the two deploys overlap.
    let toml = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    dir.write(
        "deploy.toml",
        toml.replace(
            "echo {release} > {root}/restarted",
            "sleep 1; echo {release} > {root}/restarted",
        ),
    );
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| dp(&dir, &["deploy", "--release", "rx"]));
        let y = s.spawn(|| dp(&dir, &["deploy", "--release", "ry"]));
        (x.join().unwrap(), y.join().unwrap())
    });
    let (winner, loser) = match (x.code, y.code) {
        (0, 1) => ("rx", &y),
        (1, 0) => ("ry", &x),
        codes => panic!(
            "expected one deploy to be refused: {codes:?}\n{}\n{}",
            x.stderr, y.stderr
        ),
    };
    assert!(
        loser
            .stderr
            .contains(&format!("deploy lock is held by release {winner}")),
        "{}",
        loser.stderr
    );
    for root in &roots {
        assert_eq!(current(root), format!("releases/{winner}"));
        assert!(!root.join(".dp/lock").exists());
    }
}
