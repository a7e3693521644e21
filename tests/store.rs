//! Large payloads through an S3-compatible object store (`[artifacts]`): a real Garage
//! behind a counting proxy, three sshd hosts.

use crate::util::{Dir, Fleet, Garage, Outcome, TestCommand};
use std::path::{Path, PathBuf};

/// `n` bytes that do not compress (so the payload is as big as the file).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// dp in `dir` with the store's key in the environment and a cache of its own.
fn dp(dir: &Dir, garage: &Garage, args: &[&str]) -> Outcome {
    let mut c = TestCommand::new("dp")
        .current_dir(dir.path())
        .env("DP_CACHE_DIR", dir.path().join("cache"))
        .args(args);
    for (k, v) in garage.env() {
        c = c.env(k, v);
    }
    c.run()
}

fn current(root: &Path) -> String {
    std::fs::read_link(root.join("current"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Every regular file under `dir` (relative path, contents), sorted; `.dp` and
/// `REVISION` left out.
fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            if rel == ".dp" || rel == "REVISION" {
                continue;
            }
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A deploy.toml for hosts 0 to 2 at `roots`, through the store under `prefix`.
fn config(fleet: &Fleet, garage: &Garage, roots: &[PathBuf], prefix: &str, extra: &str) -> String {
    fleet.deploy_toml_roots(
        &[0, 1, 2],
        roots,
        &format!(
            "source = \"site\"\n{}",
            garage.artifacts_toml(prefix, &format!("threshold = \"100KiB\"\n{extra}"))
        ),
    )
}

fn roots(fleet: &Fleet, test: &str) -> Vec<PathBuf> {
    (0..3).map(|i| fleet.root_for(i, test)).collect()
}

/// Puts the file at `path` in the store as `key` (curl signs the request).
fn put_object(garage: &Garage, key: &str, path: &Path) {
    let put = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--aws-sigv4", "aws:amz:garage:s3"])
        .args(["-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD", "--user"])
        .arg(format!("{}:{}", garage.key.0, garage.key.1))
        .arg("-T")
        .arg(path)
        .arg(format!("{}/dp-artifacts/{key}", garage.endpoint))
        .output()
        .unwrap();
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
}

fn count(lines: &[String], method: &str) -> usize {
    lines
        .iter()
        .filter(|l| l.starts_with(&format!("{method} ")))
        .count()
}

/// Three hosts get a 400 KB release through the store: uploaded once, fetched by each
/// host, the trees byte-identical, the client's bytes to the hosts small, no secret in
/// records or logs. A small change then streams over SSH; with `keep = 1` the next large
/// one deletes the first's payload.
#[test]
fn deploys_through_the_store() {
    let fleet = Fleet::shared();
    let garage = Garage::shared();
    let dir = Dir::new("dp-store");
    let roots = roots(fleet, "dp-store");
    let prefix = "t-deploy";
    dir.write("site/index.html", "<h1>one</h1>\n");
    std::fs::write(dir.path().join("site/blob.bin"), noise(400_000, 1)).unwrap();
    dir.write(
        "deploy.toml",
        config(fleet, garage, &roots, prefix, "keep = 1\n"),
    );

    // Setup checks the store takes and deletes an object, and the hosts can fetch.
    let setup = dp(&dir, garage, &["setup"]);
    setup.code(0);
    let checks = garage.requests(&format!("/{prefix}/.dp-check"));
    assert_eq!(count(&checks, "PUT"), 1, "{checks:?}");
    assert_eq!(count(&checks, "DELETE"), 1, "{checks:?}");

    let out = dp(&dir, garage, &["deploy", "--release", "r1", "-v"]);
    out.code(0);
    let site = tree(&dir.path().join("site"));
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
        assert!(
            tree(&root.join("releases/r1")) == site,
            "{}",
            root.display()
        );
    }
    let records = out.records();
    assert_eq!(records.len(), 3);
    let syncs: Vec<&serde_json::Value> = records.iter().map(|r| &r.steps["sync"]).collect();
    let object = syncs[0]["store"]["object"].as_str().unwrap().to_string();
    assert!(object.starts_with(&format!("{prefix}/r1/")), "{object}");
    for s in &syncs {
        assert_eq!(s["store"]["object"], object.as_str(), "{}", out.stdout);
        // The scripts and the URL: the payload itself did not go over SSH.
        let payload = s["store"]["bytes"].as_u64().unwrap();
        assert!(payload > 300_000, "{s}");
        assert!(s["bytes_sent"].as_u64().unwrap() < payload / 8, "{s}");
    }
    let uploaded = syncs
        .iter()
        .filter(|s| s["store"]["uploaded"] == true)
        .count();
    assert_eq!(uploaded, 1, "{}", out.stdout);
    let requests = garage.requests(&format!("/{prefix}/r"));
    assert_eq!(count(&requests, "PUT"), 1, "{requests:?}");
    assert_eq!(
        count(&requests, "GET"),
        3,
        "one fetch per host: {requests:?}"
    );
    // No secret and no signature anywhere dp writes.
    for text in [&out.stdout, &out.stderr] {
        assert!(!text.contains(&garage.key.1), "{text}");
        assert!(!text.contains("X-Amz-Signature"), "{text}");
    }

    // A small change streams over SSH as before.
    dir.write("site/index.html", "<h1>two</h1>\n");
    let out = dp(&dir, garage, &["deploy", "--release", "r2"]);
    out.code(0);
    for r in out.records() {
        assert!(r.steps["sync"].get("store").is_none(), "{}", out.stdout);
    }
    assert_eq!(count(&garage.requests(&format!("/{prefix}/r")), "GET"), 3);

    // A large one goes through the store again, and r1's payload goes (keep = 1). The
    // plan says so; and even above the 4 MiB a guessed build may carry over SSH, the
    // lock and the build go in one exchange (the first host's lock is taken first).
    std::fs::write(dir.path().join("site/blob.bin"), noise(5 << 20, 2)).unwrap();
    // Not a payload: never deleted.
    std::fs::write(dir.path().join("notes.txt"), "keep me\n").unwrap();
    put_object(
        garage,
        &format!("{prefix}/r0/notes.txt"),
        &dir.path().join("notes.txt"),
    );
    let plan = dp(&dir, garage, &["deploy", "--plan", "--release", "r3"]);
    plan.code(0);
    for r in plan.records() {
        assert_eq!(r.steps["plan"]["via_store"], true, "{}", plan.stdout);
    }
    let out = dp(&dir, garage, &["deploy", "--release", "r3"]);
    out.code(0);
    let exchanges: Vec<u64> = out
        .records()
        .iter()
        .map(|r| r.steps["sync"]["exchanges"].as_u64().unwrap())
        .collect();
    assert_eq!(exchanges, [2, 1, 1], "{}", out.stdout);
    let site = tree(&dir.path().join("site"));
    for root in &roots {
        assert_eq!(current(root), "releases/r3");
        assert!(tree(&root.join("releases/r3")) == site);
    }
    let pruned: u64 = out
        .records()
        .iter()
        .map(|r| r.steps["sync"]["store"]["pruned"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(pruned, 1, "{}", out.stdout);
    let requests = garage.requests(&format!("/{prefix}/r"));
    assert_eq!(
        requests
            .iter()
            .filter(|l| l.starts_with("DELETE ") && l.ends_with(&object))
            .count(),
        1,
        "{requests:?}"
    );
    assert_eq!(count(&requests, "DELETE"), 1, "{requests:?}");
}

/// Faults on the store's side, each checked on every host: a corrupted object is
/// rejected by the hosts' hash check; a fetch that fails on one host of three fails the
/// deploy with nothing switched, or with `fallback = "direct"` that host gets the payload
/// over SSH; a store that is down fails the deploy naming it, or falls back.
#[test]
fn store_faults_switch_no_host() {
    let fleet = Fleet::shared();
    let garage = Garage::shared();
    let dir = Dir::new("dp-store-faults");
    let prefix = "t-faults";
    dir.write("site/index.html", "<h1>one</h1>\n");
    std::fs::write(dir.path().join("site/blob.bin"), noise(200_000, 3)).unwrap();
    let first = roots(fleet, "dp-store-faults-a");
    dir.write("deploy.toml", config(fleet, garage, &first, prefix, ""));
    let out = dp(&dir, garage, &["deploy", "--release", "r1"]);
    out.code(0);
    let object = out.records()[0].steps["sync"]["store"]["object"]
        .as_str()
        .unwrap()
        .to_string();

    // The object is overwritten in the store; the same release to three new roots makes
    // the same payload, which the store has: every host fetches it and rejects it.
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, noise(1000, 4)).unwrap();
    put_object(garage, &object, &garbage);
    let second = roots(fleet, "dp-store-faults-b");
    dir.write("deploy.toml", config(fleet, garage, &second, prefix, ""));
    let out = dp(&dir, garage, &["deploy", "--release", "r1"]);
    out.code(1);
    assert!(out.stderr.contains("rejected"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(garage.endpoint.trim_start_matches("http://")),
        "the store is named: {}",
        out.stderr
    );
    for root in &second {
        assert_eq!(current(root), "", "{}", root.display());
        assert!(!root.join("releases/r1").exists());
    }

    // A fetch fails on one host of three: the deploy fails and no host switches.
    dir.write("deploy.toml", config(fleet, garage, &first, prefix, ""));
    std::fs::write(dir.path().join("site/blob.bin"), noise(200_000, 5)).unwrap();
    garage.fail_next("GET", &format!("/{prefix}/r2/"), 1);
    let out = dp(&dir, garage, &["deploy", "--release", "r2"]);
    out.code(1);
    let failed: Vec<_> = out
        .records()
        .into_iter()
        .filter(|r| r.error.as_ref().is_some_and(|e| e.step == "sync"))
        .collect();
    assert_eq!(failed.len(), 1, "{}", out.stdout);
    let message = &failed[0].error.as_ref().unwrap().message;
    assert!(
        message.contains("503") && message.contains(garage.endpoint.trim_start_matches("http://")),
        "{message}"
    );
    assert!(!message.contains("X-Amz"), "{message}");
    for root in &first {
        assert_eq!(current(root), "releases/r1", "{}", root.display());
    }

    // The same with `fallback = "direct"`: that host gets it over SSH, all switch.
    dir.write(
        "deploy.toml",
        config(fleet, garage, &first, prefix, "fallback = \"direct\"\n"),
    );
    std::fs::write(dir.path().join("site/blob.bin"), noise(200_000, 7)).unwrap();
    garage.fail_next("GET", &format!("/{prefix}/r3/"), 1);
    let out = dp(&dir, garage, &["deploy", "--release", "r3"]);
    out.code(0);
    let site = tree(&dir.path().join("site"));
    for root in &first {
        assert_eq!(current(root), "releases/r3");
        assert!(tree(&root.join("releases/r3")) == site);
    }
    let records = out.records();
    let direct: Vec<_> = records
        .iter()
        .filter(|r| r.steps["sync"].get("store").is_none())
        .collect();
    assert_eq!(direct.len(), 1, "{}", out.stdout);
    let warnings = direct[0].steps["sync"]["warnings"].to_string();
    assert!(
        warnings.contains("503") && warnings.contains("sent over SSH instead"),
        "{warnings}"
    );

    // The store is down: the deploy fails naming it, before any host is switched...
    let dead = crate::util::free_port();
    let down = |extra: &str| {
        config(fleet, garage, &first, prefix, extra)
            .replace(&garage.endpoint, &format!("http://127.0.0.1:{dead}"))
    };
    std::fs::write(dir.path().join("site/blob.bin"), noise(200_000, 6)).unwrap();
    dir.write("deploy.toml", down(""));
    let setup = dp(&dir, garage, &["setup"]);
    assert_ne!(setup.code, 0);
    assert!(
        setup
            .stderr
            .contains(&format!("artifact store 127.0.0.1:{dead}")),
        "{}",
        setup.stderr
    );
    let out = dp(&dir, garage, &["deploy", "--release", "r4"]);
    out.code(1);
    assert!(
        out.stderr
            .contains(&format!("artifact store 127.0.0.1:{dead}")),
        "{}",
        out.stderr
    );
    for root in &first {
        assert_eq!(current(root), "releases/r3");
    }
    // ... or, with the fallback, streams to every host.
    dir.write("deploy.toml", down("fallback = \"direct\"\n"));
    let out = dp(&dir, garage, &["deploy", "--release", "r4"]);
    out.code(0);
    for root in &first {
        assert_eq!(current(root), "releases/r4");
    }
}
