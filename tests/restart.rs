//! dp-restart over real sshd and local hosts, and zero downtime behind a real nginx.

use crate::util::{
    free_port, get, sync_release, under_load, Dir, Fleet, Nginx, Outcome, TestCommand,
};
use dp_core::Record;
use std::path::{Path, PathBuf};
use std::process::Command;

fn local_record(name: &str, root: &Path, port: Option<u16>) -> Record {
    let mut r = crate::util::local_record(name, root);
    if let Some(p) = port {
        r.extra
            .insert("vars".into(), serde_json::json!({ "port": p }));
    }
    r
}

fn lines(records: &[Record]) -> String {
    records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect()
}

/// Three local hosts h1..h3 under `dir`: their roots and their records as input.
fn three_local_hosts(dir: &Dir) -> (Vec<PathBuf>, String) {
    let roots: Vec<PathBuf> = (1..=3).map(|i| dir.path().join(format!("h{i}"))).collect();
    let recs: Vec<Record> = roots
        .iter()
        .enumerate()
        .map(|(i, r)| local_record(&format!("h{}", i + 1), r, None))
        .collect();
    (roots, lines(&recs))
}

fn restart(input: &str, args: &[&str]) -> Outcome {
    TestCommand::new("dp-restart").args(args).stdin(input).run()
}

fn current(root: &Path) -> String {
    std::fs::read_link(root.join("current"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

fn history(root: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(root.join(".dp/history.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn rolls_out_keeps_releases_writes_history_and_rolls_back() {
    let fleet = Fleet::shared();
    let dir = Dir::new("restart-basic");
    dir.write("src/VERSION", "1\n");
    let src = dir.path().join("src");
    let roots = vec![
        fleet.root_for(0, "restart-basic"),
        fleet.root_for(1, "restart-basic"),
        dir.path().join("local"),
    ];
    let input = fleet.record_line(0, &roots[0])
        + &fleet.record_line(1, &roots[1])
        + &lines(&[local_record("l", &roots[2], None)]);
    let cmd = "echo {release} >> {root}/restarts";
    let args = [
        "--batch",
        "2",
        "--command",
        cmd,
        "--health-cmd",
        "test -f VERSION",
        "--keep",
        "2",
    ];
    for (i, rel) in ["r1", "r2", "r3", "r4"].iter().enumerate() {
        dir.write("src/VERSION", format!("{}\n", i + 1));
        let out = restart(&sync_release(&src, input.as_str(), rel), &args);
        out.code(0);
        for (r, root) in out.records().iter().zip(&roots) {
            let s = &r.steps["restart"];
            assert_eq!(s["release"], *rel);
            assert_eq!(s["switched"], true);
            assert_eq!(s["healthy"], true);
            assert_eq!(
                s["batch"],
                if r.host == "l" { 2 } else { 1 },
                "batches of 2"
            );
            assert_eq!(current(root), format!("releases/{rel}"));
            assert!(!root.join(".dp/lock").exists(), "the lock is released");
        }
    }
    for root in &roots {
        // Removed releases are renamed to .trash-* at once and deleted in the background.
        let listing = || -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(root.join("releases"))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while listing().iter().any(|n| n.starts_with(".trash-")) {
            assert!(
                std::time::Instant::now() < deadline,
                "removed releases are deleted: {:?}",
                listing()
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let kept = listing();
        assert_eq!(
            kept,
            ["r3", "r4"],
            "keep = 2 (r3 is also the previous release)"
        );
        assert_eq!(
            std::fs::read_to_string(root.join("restarts")).unwrap(),
            "r1\nr2\nr3\nr4\n"
        );
        let h = history(root);
        assert_eq!(h.len(), 4);
        assert_eq!(
            (
                h[3]["release"].as_str(),
                h[3]["previous"].as_str(),
                h[3]["result"].as_str()
            ),
            (Some("r4"), Some("r3"), Some("ok"))
        );
    }

    // Rollback: back to the release before current, with the same checks.
    let hosts_only: String = input.clone();
    let out = restart(
        &hosts_only,
        &[
            "--rollback",
            "--command",
            cmd,
            "--health-cmd",
            "test -f VERSION",
        ],
    );
    out.code(0);
    for (r, root) in out.records().iter().zip(&roots) {
        assert_eq!(r.steps["restart"]["release"], "r3");
        assert_eq!(r.steps["restart"]["previous"], "r4");
        assert_eq!(current(root), "releases/r3");
        let h = history(root);
        assert_eq!(
            (h[4]["action"].as_str(), h[4]["release"].as_str()),
            (Some("rollback"), Some("r3"))
        );
        assert!(!root.join(".dp/lock").exists());
    }
}

#[test]
fn a_failing_check_switches_the_batch_back_and_skips_the_rest() {
    let dir = Dir::new("restart-fail");
    dir.write("src/VERSION", "good\n");
    let src = dir.path().join("src");
    let (roots, input) = three_local_hosts(&dir);
    let args = [
        "--batch",
        "1",
        "--health-cmd",
        "grep -q good VERSION",
        "--health-timeout",
        "1s",
    ];
    restart(&sync_release(&src, input.as_str(), "r1"), &args).code(0);
    dir.write("src/VERSION", "broken\n");
    let out = restart(&sync_release(&src, input.as_str(), "r2"), &args);
    out.code(1);
    let recs = out.records();
    let e = recs[0].error.clone().unwrap();
    assert_eq!(e.step, "restart");
    assert!(
        e.message
            .contains("health check `grep -q good VERSION` failed after 1s"),
        "{}",
        e.message
    );
    assert!(e.message.contains("switched back to r1"), "{}", e.message);
    assert_eq!(recs[0].steps["restart"]["switched_back"], true);
    for r in &recs[1..] {
        assert!(r
            .error
            .clone()
            .unwrap()
            .message
            .starts_with("skipped: the rollout stopped after batch 1 failed (h1)"));
    }
    for root in &roots {
        assert_eq!(
            current(root),
            "releases/r1",
            "every host serves the old release"
        );
        assert!(
            !root.join(".dp/lock").exists(),
            "locks released, failed hosts included"
        );
    }
    assert_eq!(
        history(&roots[0]).last().unwrap()["result"],
        "switched-back"
    );
    assert_eq!(history(&roots[2]).last().unwrap()["result"], "skipped");
    assert!(
        out.stderr.contains("dp-restart: h1: restart: health check"),
        "{}",
        out.stderr
    );
}

#[test]
fn template_values_are_quoted() {
    let dir = Dir::new("restart-quote");
    dir.write("src/VERSION", "1\n");
    let root = dir.path().join("h1");
    let mut r = local_record("h1", &root, None);
    r.extra.insert(
        "vars".into(),
        serde_json::json!({ "evil": "$(touch pwned); `touch pwned2` 'x\"" }),
    );
    let input = lines(&[r]);
    let out = restart(
        &sync_release(&dir.path().join("src"), input.as_str(), "r1"),
        &["--command", "printf '%s' {evil} > out.txt"],
    );
    out.code(0);
    assert_eq!(
        std::fs::read_to_string(root.join("releases/r1/out.txt")).unwrap(),
        "$(touch pwned); `touch pwned2` 'x\""
    );
    assert!(!root.join("releases/r1/pwned").exists() && !root.join("releases/r1/pwned2").exists());
}

fn kill_apps(roots: &[PathBuf]) {
    for r in roots {
        if let Ok(pid) = std::fs::read_to_string(r.join("app.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

struct Apps(Vec<PathBuf>);
impl Drop for Apps {
    fn drop(&mut self) {
        kill_apps(&self.0);
    }
}

#[test]
fn zero_downtime_rollout_behind_nginx() {
    let dir = Dir::new("restart-nginx");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app.py"),
        dir.path().join("app.py"),
    )
    .unwrap();
    dir.write("src/VERSION", "1\n");
    std::fs::copy(dir.path().join("app.py"), dir.path().join("src/app.py")).unwrap();
    let src = dir.path().join("src");
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let roots: Vec<PathBuf> = (1..=4).map(|i| dir.path().join(format!("h{i}"))).collect();
    let _apps = Apps(roots.clone());
    let recs: Vec<Record> = roots
        .iter()
        .zip(&ports)
        .enumerate()
        .map(|(i, (r, p))| local_record(&format!("h{}", i + 1), r, Some(*p)))
        .collect();
    let input = lines(&recs);
    // Stop the old process (waiting for it to exit), start the new one detached.
    let cmd = "old=$(cat {root}/app.pid 2>/dev/null || true); \
               if [ -n \"$old\" ] && kill $old 2>/dev/null; then \
               while kill -0 $old 2>/dev/null && ! grep -qs '^State:.*Z' /proc/$old/status; do sleep 0.02; done; fi; \
               setsid python3 app.py {port} > {root}/app.log 2>&1 < /dev/null & echo $! > {root}/app.pid";
    let args = [
        "--batch",
        "1",
        "--command",
        cmd,
        "--health-url",
        "http://127.0.0.1:{port}/healthz",
        "--health-timeout",
        "3s",
    ];
    restart(&sync_release(&src, input.as_str(), "v1"), &args).code(0);
    let nginx = Nginx::start(dir.path(), &ports);
    assert_eq!(get(nginx.port).unwrap(), "version 1");

    let run_with_load = |release: &str, version: &str, code: i32| -> (Outcome, usize, usize) {
        dir.write("src/VERSION", format!("{version}\n"));
        let synced = sync_release(&src, input.as_str(), release);
        let (out, ok, failed) = under_load(nginx.port, || restart(&synced, &args));
        out.code(code);
        (out, ok, failed)
    };

    let (_, ok, failed) = run_with_load("v2", "2", 0);
    assert_eq!(
        failed, 0,
        "no request failed during the rollout ({ok} succeeded)"
    );
    assert!(ok > 20, "the load ran during the rollout: {ok} requests");
    for _ in 0..20 {
        assert_eq!(
            get(nginx.port).unwrap(),
            "version 2",
            "every host serves the new release"
        );
    }

    // A release that fails its health check: switched back, the rest untouched, and the
    // load balancer never shows an error.
    let (out, ok, failed) = run_with_load("v3", "broken", 1);
    assert_eq!(
        failed, 0,
        "no request failed during the failed rollout ({ok} succeeded)"
    );
    let recs = out.records();
    let e = recs[0].error.clone().unwrap();
    assert!(
        e.message.contains("health check http://127.0.0.1:")
            && e.message
                .contains("500 Internal Server Error: \"unhealthy\""),
        "{}",
        e.message
    );
    // The first batch is h1 alone: it failed there, and the hosts after it were skipped.
    assert_eq!((recs[0].host.as_str(), e.step.as_str()), ("h1", "restart"));
    assert_eq!(e.kind, dp_core::ErrorKind::SwitchedBack, "{e:?}");
    assert!(e.message.ends_with("switched back to v2"), "{e:?}");
    for r in &recs[1..] {
        let e = r.error.clone().unwrap();
        assert_eq!(e.kind, dp_core::ErrorKind::Skipped, "{}: {e:?}", r.host);
    }
    for root in &roots {
        assert_eq!(current(root), "releases/v2");
    }
    for _ in 0..20 {
        assert_eq!(get(nginx.port).unwrap(), "version 2");
    }
}

#[test]
fn max_fail_lets_that_many_failures_pass() {
    let dir = Dir::new("restart-maxfail");
    dir.write("src/VERSION", "good\n");
    let src = dir.path().join("src");
    let (roots, input) = three_local_hosts(&dir);
    let synced = sync_release(&src, input.as_str(), "r1");
    // h1 fails its check (a file only it has); with --max-fail 1 the rollout goes on.
    dir.write("h1/releases/r1/FAIL", "");
    let out = restart(
        &synced,
        &[
            "--batch",
            "1",
            "--max-fail",
            "1",
            "--health-cmd",
            "test ! -f FAIL",
            "--health-timeout",
            "1s",
        ],
    );
    out.code(1);
    let recs = out.records();
    assert!(
        recs[0]
            .error
            .clone()
            .unwrap()
            .message
            .contains("health check"),
        "{:?}",
        recs[0].error
    );
    assert!(
        recs[1].error.is_none() && recs[2].error.is_none(),
        "later batches still ran"
    );
    assert_eq!(current(&roots[1]), "releases/r1");
    assert_eq!(current(&roots[2]), "releases/r1");
    assert_eq!(
        current(&roots[0]),
        "",
        "h1 had no previous release: current removed"
    );
}

#[test]
fn health_expect_tells_the_new_release_from_an_old_process_on_the_port() {
    let dir = Dir::new("restart-expect");
    dir.write("src/VERSION", "1\n");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app.py"),
        dir.path().join("src/app.py"),
    )
    .unwrap();
    let src = dir.path().join("src");
    let port = free_port();
    let root = dir.path().join("h1");
    let _apps = Apps(vec![root.clone()]);
    let input = lines(&[local_record("h1", &root, Some(port))]);
    let start =
        "setsid python3 app.py {port} > {root}/app.log 2>&1 < /dev/null & echo $! > {root}/app.pid";
    let check = [
        "--health-url",
        "http://127.0.0.1:{port}/healthz",
        "--health-timeout",
        "2s",
        "--health-expect",
        "ok {release}",
    ];
    fn with<'a>(command: &'a str, check: &[&'a str]) -> Vec<&'a str> {
        let mut a = vec!["--command", command];
        a.extend_from_slice(check);
        a
    }
    restart(
        &sync_release(&src, input.as_str(), "r1"),
        &with(start, &check),
    )
    .code(0);
    // r2's restart does not restart anything: r1's server still answers on the port.
    dir.write("src/VERSION", "2\n");
    let out = restart(
        &sync_release(&src, input.as_str(), "r2"),
        &with("true", &check),
    );
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    assert!(
        e.message.contains("does not contain \"ok r2\"") && e.message.contains("ok r1"),
        "{e:?}"
    );
    assert_eq!(current(&root), "releases/r1", "switched back");
    // Without the expected answer, the old server passes for the new release: the
    // problem this option exists for.
    let out = restart(
        &sync_release(&src, input.as_str(), "r3"),
        &[
            "--command",
            "true",
            "--health-url",
            "http://127.0.0.1:{port}/healthz",
        ],
    );
    out.code(0);
    assert_eq!(current(&root), "releases/r3");
    // A typo in the expected text is refused before any host is touched.
    let out = restart(
        &sync_release(&src, input.as_str(), "r4"),
        &[
            "--health-url",
            "http://127.0.0.1:{port}/healthz",
            "--health-expect",
            "ok {relase}",
        ],
    );
    out.code(1);
    assert!(
        out.stderr.contains("unknown placeholder {relase}"),
        "{}",
        out.stderr
    );
    assert_eq!(current(&root), "releases/r3");
}

/// A health command's first try and the finish run in the switch's exchange: the
/// expected text is checked there too (a host whose answer lacks it is polled, then
/// switched back), and the history line written there names the release and the one
/// before it, as the finish after the rollout does.
#[test]
fn a_health_command_with_expected_text_and_the_finish_in_the_switch() {
    let dir = Dir::new("restart-cmd-expect");
    let src = dir.path().join("src");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let input = lines(&[local_record("a", &a, None), local_record("b", &b, None)]);
    let check = [
        "--batch",
        "1",
        "--health-cmd",
        "cat VERSION",
        "--health-expect",
        "ok {release}",
        "--health-timeout",
        "1s",
    ];
    dir.write("src/VERSION", "ok r1\n");
    restart(&sync_release(&src, input.as_str(), "r1"), &check).code(0);
    dir.write("src/VERSION", "ok r2\n");
    restart(&sync_release(&src, input.as_str(), "r2"), &check).code(0);
    for root in [&a, &b] {
        assert_eq!(current(root), "releases/r2");
        assert!(!root.join(".dp/lock").exists(), "the lock is given back");
        let history = std::fs::read_to_string(root.join(".dp/history.jsonl")).unwrap();
        let last: serde_json::Value =
            serde_json::from_str(history.lines().last().unwrap()).unwrap();
        assert_eq!(
            (
                &last["action"],
                &last["release"],
                &last["previous"],
                &last["result"]
            ),
            (&"deploy".into(), &"r2".into(), &"r1".into(), &"ok".into()),
            "{history}"
        );
        assert!(last["run"]
            .as_str()
            .is_some_and(|r| r.starts_with("deploy-")));
    }
    // The answer lacks the expected text: switched back, the other host skipped.
    dir.write("src/VERSION", "ok r2\n");
    let out = restart(&sync_release(&src, input.as_str(), "r3"), &check);
    out.code(1);
    let records = out.records();
    let e = records[0].error.clone().unwrap();
    assert!(e.message.contains("does not contain \"ok r3\""), "{e:?}");
    assert_eq!(records[1].error.clone().unwrap().kind.as_str(), "skipped");
    for root in [&a, &b] {
        assert_eq!(current(root), "releases/r2");
        assert!(!root.join(".dp/lock").exists());
    }
}

/// A finish that fails in the switch's exchange (here: history.jsonl cannot be written)
/// fails the host, which stays on the new release (it passed): not switched back, and
/// its finish is not run a second time.
#[test]
fn a_failed_finish_in_the_switch_leaves_the_host_on_the_new_release() {
    let dir = Dir::new("restart-finish-fails");
    let src = dir.path().join("src");
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let input = lines(&[local_record("a", &a, None), local_record("b", &b, None)]);
    let check = ["--health-cmd", "test -f VERSION"];
    dir.write("src/VERSION", "1\n");
    restart(&sync_release(&src, input.as_str(), "r1"), &check).code(0);
    std::fs::remove_file(b.join(".dp/history.jsonl")).unwrap();
    std::fs::create_dir(b.join(".dp/history.jsonl")).unwrap();
    dir.write("src/VERSION", "2\n");
    let out = restart(&sync_release(&src, input.as_str(), "r2"), &check);
    out.code(1);
    let records = out.records();
    assert!(records[0].error.is_none(), "{}", out.stdout);
    let e = records[1].error.clone().unwrap();
    assert!(e.message.contains("cleanup and unlock failed"), "{e:?}");
    assert_eq!(records[1].steps["restart"]["switched_back"], false);
    assert_eq!(current(&a), "releases/r2");
    assert_eq!(current(&b), "releases/r2", "it passed: not switched back");
    assert!(!a.join(".dp/lock").exists());
}
