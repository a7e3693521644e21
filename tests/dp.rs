//! The `dp` wrapper: the one-line deploy equals the printed pipeline; status, history,
//! rollback, unlock; a failing migration switches no host; a concurrent deploy is refused.

use crate::util::{bin, free_port, Dir, Outcome, TestCommand};
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

/// Rewrites the fixture's deploy.toml (as `fixture` wrote it) with `sections` (TOML
/// tables) before its `[restart]`.
fn with_sections(dir: &Dir, sections: &str) {
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    let config = config.split("[restart]").collect::<Vec<_>>();
    assert_eq!(config.len(), 2, "one [restart] in the fixture's config");
    dir.write(
        "deploy.toml",
        format!("{}{sections}\n[restart]{}", config[0], config[1]),
    );
}

fn dp(dir: &Dir, args: &[&str]) -> Outcome {
    dp_on(dir, &sqlite_url(dir)).args(args).run()
}

fn sqlite_url(dir: &Dir) -> String {
    format!("sqlite://{}", dir.path().join("db.sqlite3").display())
}

/// dp in `dir`, with the database at `url` and a cache of its own.
fn dp_on(dir: &Dir, url: &str) -> TestCommand {
    TestCommand::new("dp")
        .current_dir(dir.path())
        .env("DATABASE_URL", url)
        .env("DP_CACHE_DIR", dir.path().join("cache"))
}

/// Runs a printed pipeline in `dir` with bash -o pipefail, the tools first on PATH (the
/// environment of [`dp_on`]).
fn run_pipeline(dir: &Dir, url: &str, pipeline: &str) -> Outcome {
    let tools = bin("dp").parent().unwrap().display().to_string();
    dp_on(dir, url)
        .program("bash")
        .args(["-o", "pipefail", "-c", pipeline])
        .current_dir(dir.path())
        .env(
            "PATH",
            format!("{tools}:{}", std::env::var("PATH").unwrap_or_default()),
        )
        .run()
}

/// dp-hosts | dp-sync of `site` as `release`, in `dir`.
fn upload(dir: &Dir, release: &str) -> Outcome {
    let records = TestCommand::new("dp-hosts").current_dir(dir.path()).run();
    records.code(0);
    TestCommand::new("dp-sync")
        .current_dir(dir.path())
        .args(["--src", "site", "--release", release])
        .stdin(records.stdout)
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
    let out = run_pipeline(&b, &sqlite_url(&b), &pipeline);
    out.code(0);
    let piped = out.stdout;

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
fn rollback_returns_to_what_was_live_never_to_a_release_that_failed() {
    let dir = Dir::new("dp-rollback-live");
    let roots = fixture(&dir);
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    dir.write("deploy.toml", config.replace("keep = 3", "keep = 5"));
    let status_previous = |want: &str| {
        let status = dp(&dir, &["status"]);
        status.code(0);
        for r in status.records() {
            assert_eq!(r.steps["status"]["previous"], want, "{}", r.host);
        }
    };
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    dir.write("site/VERSION", "2\n");
    dp(&dir, &["deploy", "--release", "r2"]).code(0);
    // r3 is complete on every host, but its migration failed: it never served.
    dir.write("site/VERSION", "3\n");
    dir.write(
        "site/migrations/3_broken.sql",
        "INSERT INTO nowhere VALUES (1);\n",
    );
    dp(&dir, &["deploy", "--release", "r3"]).code(1);
    std::fs::remove_file(dir.path().join("site/migrations/3_broken.sql")).unwrap();
    dir.write("site/VERSION", "4\n");
    dp(&dir, &["deploy", "--release", "r4"]).code(0);
    for root in &roots {
        assert!(root.join("releases/r3/.dp/complete").exists());
    }
    status_previous("r2");

    // No DATABASE_URL is needed to roll back, though the site has migrations.
    let rollback = |args: &[&str]| {
        TestCommand::new("dp")
            .current_dir(dir.path())
            .args(["rollback"])
            .args(args)
            .run()
    };
    let out = rollback(&[]);
    out.code(0);
    for root in &roots {
        assert_eq!(current(root), "releases/r2", "not r3, which never served");
        let restarted = std::fs::read_to_string(root.join("restarted")).unwrap();
        assert_eq!(restarted, "r2\n");
    }
    // Rolled back from r4: the next rollback goes further back, not forward to r4.
    status_previous("r1");
    rollback(&[]).code(0);
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
    }
    // --to goes to any complete release; one a host lacks fails that host only.
    rollback(&["--to", "r4"]).code(0);
    for root in &roots {
        assert_eq!(current(root), "releases/r4");
    }
    status_previous("r1");
    let out = rollback(&["--to", "r9"]);
    out.code(1);
    for r in out.records() {
        let e = r.error.unwrap();
        assert!(
            e.message.contains("release r9 is not complete"),
            "{}",
            e.message
        );
    }
    for root in &roots {
        assert_eq!(current(root), "releases/r4");
        assert!(!root.join(".dp/lock").exists());
    }
    TestCommand::new("dp")
        .current_dir(dir.path())
        .args(["rollback", "--to", "../x"])
        .run()
        .code(2);
}

#[test]
fn a_rollback_keeps_the_release_the_next_rollback_returns_to() {
    let dir = Dir::new("dp-rollback-keep");
    let roots = fixture(&dir);
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    dir.write("deploy.toml", config.replace("keep = 3", "keep = 5"));
    for (i, r) in ["r1", "r2", "r3", "r4"].iter().enumerate() {
        dir.write("site/VERSION", format!("{i}\n"));
        dp(&dir, &["deploy", "--release", r]).code(0);
    }
    // Fewer releases kept from now on: the rollback's cleanup removes r1, but not r2,
    // where the next rollback goes.
    dir.write("deploy.toml", config.replace("keep = 3", "keep = 1"));
    let rollback = || {
        TestCommand::new("dp")
            .current_dir(dir.path())
            .args(["rollback"])
            .run()
    };
    rollback().code(0);
    for root in &roots {
        assert_eq!(current(root), "releases/r3");
        assert!(!root.join("releases/r1").exists(), "beyond keep");
        assert!(root.join("releases/r4").exists(), "rolled back from");
        assert!(root.join("releases/r2/.dp/complete").exists());
    }
    rollback().code(0);
    for root in &roots {
        assert_eq!(current(root), "releases/r2");
    }
}

#[test]
fn redeploying_the_live_release_is_a_no_op_unless_forced() {
    let dir = Dir::new("dp-same-id");
    let roots = fixture(&dir);
    // The migration command counts its runs (SQL migrations are tracked anyway).
    with_sections(
        &dir,
        "[migrate]\nexec = \"echo run >> $DP_ROOT/../migrated\"",
    );
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    dir.write("site/VERSION", "2\n");
    dp(&dir, &["deploy", "--release", "r2"]).code(0);
    let migrated = || std::fs::read_to_string(dir.path().join("hosts/migrated")).unwrap();
    assert_eq!(migrated(), "run\nrun\n");
    for root in &roots {
        std::fs::remove_file(root.join("restarted")).unwrap();
    }

    let out = dp(&dir, &["deploy", "--release", "r2"]);
    out.code(0);
    assert!(
        out.stderr.contains("already live, nothing to do"),
        "{}",
        out.stderr
    );
    assert_eq!(migrated(), "run\nrun\n", "no migration");
    for (r, root) in out.records().iter().zip(&roots) {
        assert_eq!(r.steps["sync"]["already_live"], true);
        assert_eq!(r.steps["restart"]["already_live"], true);
        assert!(
            r.steps["migrate"]["skipped"].is_string(),
            "{}",
            r.steps["migrate"]
        );
        assert!(
            !root.join("restarted").exists(),
            "the restart command did not run"
        );
        assert_eq!(current(root), "releases/r2");
        assert!(!root.join(".dp/lock").exists());
        let history = std::fs::read_to_string(root.join(".dp/history.jsonl")).unwrap();
        let last: Value = serde_json::from_str(history.lines().last().unwrap()).unwrap();
        assert_eq!(
            (last["release"].as_str(), last["result"].as_str()),
            (Some("r2"), Some("unchanged"))
        );
    }
    // dp status does not show r2 as its own previous release.
    for r in dp(&dir, &["status"]).records() {
        assert_eq!(r.steps["status"]["previous"], "r1");
    }

    // --force redeploys: migration and restart run again.
    let out = dp(&dir, &["deploy", "--release", "r2", "--force"]);
    out.code(0);
    assert_eq!(migrated(), "run\nrun\nrun\n");
    for root in &roots {
        assert_eq!(
            std::fs::read_to_string(root.join("restarted")).unwrap(),
            "r2\n"
        );
    }
    // The same id with other content is refused on every host, none switched.
    dir.write("site/VERSION", "other\n");
    let out = dp(&dir, &["deploy", "--release", "r2"]);
    out.code(1);
    assert!(
        out.stderr
            .contains("already exists on the host with different content"),
        "{}",
        out.stderr
    );
    for root in &roots {
        assert_eq!(
            std::fs::read_to_string(root.join("current/VERSION")).unwrap(),
            "2\n"
        );
    }
}

#[test]
fn a_failing_build_on_one_host_switches_no_host() {
    let dir = Dir::new("dp-build");
    let roots = fixture(&dir);
    with_sections(
        &dir,
        "[build]\ncommand = \"test ! -e $DP_ROOT/no-build; echo $DP_RELEASE > built.txt\"\ntimeout = \"1m\"",
    );
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    for root in &roots {
        assert_eq!(
            std::fs::read_to_string(root.join("current/built.txt")).unwrap(),
            "r1\n"
        );
    }
    dir.write("site/VERSION", "2\n");
    dir.write("hosts/b/no-build", "");
    let out = dp(&dir, &["deploy", "--release", "r2"]);
    out.code(1);
    let records = out.records();
    let b = records[1].error.clone().unwrap();
    assert_eq!(b.step, "deps");
    assert!(
        b.message.contains("the build command ([build])"),
        "{}",
        b.message
    );
    let a = records[0].error.clone().unwrap();
    assert!(
        a.message.contains("not switched: b failed in deps"),
        "{}",
        a.message
    );
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
        assert!(!root.join(".dp/lock").exists());
    }
}

#[test]
fn framework_migrations_run_before_and_after_the_switch_with_the_database_url_hidden() {
    let dir = Dir::new("dp-exec-post");
    let roots = fixture(&dir);
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    let with_exec = |exec: &str| {
        dir.write("deploy.toml", &config);
        let post = "echo \"post sees $(readlink $DP_ROOT/current)\" >> $DP_ROOT/../post";
        with_sections(
            &dir,
            &format!("[migrate]\nexec = '''{exec}'''\nexec_post = '''{post}'''"),
        );
    };
    // The command sees DATABASE_URL; no process on the host has it in its argv.
    with_exec(
        "printf '%s\\n' \"$DATABASE_URL\" > $DP_ROOT/../url-seen\n\
         for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < $f; echo; done > $DP_ROOT/../argv 2>/dev/null\n\
         echo \"pre sees $(readlink $DP_ROOT/current) with $DATABASE_URL\"",
    );
    let secret = "postgres://app:s3cret-pw@db.internal/app";
    let run = |args: &[&str]| dp_on(&dir, secret).args(args).run();
    run(&["deploy", "--release", "r1"]).code(0);
    dir.write("site/VERSION", "2\n");
    let out = run(&["deploy", "--release", "r2", "-v"]);
    out.code(0);
    let read = |name: &str| std::fs::read_to_string(dir.path().join("hosts").join(name)).unwrap();
    assert_eq!(read("url-seen"), format!("{secret}\n"));
    assert!(read("argv").contains("sh -c"), "the process list was read");
    assert!(
        !read("argv").contains("s3cret"),
        "a host argv has the secret"
    );
    assert!(!out.stdout.contains("s3cret") && !out.stderr.contains("s3cret"));
    // Before the switch, then after every host switched; once each per deploy.
    assert_eq!(
        read("post"),
        "post sees releases/r1\npost sees releases/r2\n"
    );
    for root in &roots {
        assert!(
            !root.join(".dp/lock").exists(),
            "the post command gave the lock back"
        );
    }
    let r = &out.records()[0];
    assert_eq!(
        r.steps["migrate"]["output"],
        "pre sees releases/r1 with ***"
    );
    assert_eq!(r.steps["migrate_post"]["phase"], "post");
    assert!(
        out.stderr.contains("pre sees releases/r1 with ***"),
        "-v shows it: {}",
        out.stderr
    );

    // A failing command: its last lines are in the record (redacted), no host switches,
    // and the post command does not run.
    with_exec("echo \"cannot reach $DATABASE_URL\" >&2; exit 3");
    dir.write("site/VERSION", "3\n");
    let out = run(&["deploy", "--release", "r3"]);
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    assert_eq!(e.step, "migrate");
    assert!(e.message.contains("cannot reach ***"), "{}", e.message);
    assert!(!out.stdout.contains("s3cret") && !out.stderr.contains("s3cret"));
    assert_eq!(read("post").lines().count(), 2);
    for root in &roots {
        assert_eq!(current(root), "releases/r2");
    }

    // The printed pipeline runs the same two commands, the post one after the switch.
    with_exec("echo pre");
    let printed = run(&["deploy", "--release", "r4", "--print-pipeline"]);
    printed.code(0);
    assert!(
        printed
            .stdout
            .contains("dp-migrate --config deploy.toml --exec 'echo pre'")
            && printed.stdout.contains("--phase post"),
        "{}",
        printed.stdout
    );
    run_pipeline(&dir, secret, &printed.stdout).code(0);
    assert_eq!(read("post").lines().last(), Some("post sees releases/r4"));
}

#[test]
fn https_health_checks_verify_the_certificate_against_the_system_roots() {
    let dir = Dir::new("dp-https");
    let roots = fixture(&dir);
    let app = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/app.py"),
    )
    .unwrap();
    dir.write("site/app.py", app);
    // A self-signed certificate for localhost: trusted only where SSL_CERT_FILE names it.
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .args(["/CN=localhost", "-addext", "subjectAltName=DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let ports = [free_port(), free_port()];
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    let start = format!(
        "old=$(cat {{root}}/app.pid 2>/dev/null || true); [ -z \"$old\" ] || kill $old 2>/dev/null || true; sleep 0.2; \
         APP_TLS={}:{} setsid python3 app.py {{port}} > {{root}}/app.log 2>&1 < /dev/null & echo $! > {{root}}/app.pid",
        cert.display(),
        key.display()
    );
    let config = config
        .replace(
            "command = \"echo {release} > {root}/restarted\"\nhealth_cmd = \"test -f VERSION\"",
            &format!(
                "command = '''{start}'''\nhealth_url = \"https://localhost:{{port}}/healthz\"\n\
                 health_expect = \"ok {{release}}\"\nhealth_timeout = \"5s\""
            ),
        )
        .replace(
            "roles = [\"web\", \"migrate\"] }",
            &format!(
                "roles = [\"web\", \"migrate\"], vars = {{ port = {} }} }}",
                ports[0]
            ),
        )
        .replace(
            "roles = [\"web\"] }",
            &format!("roles = [\"web\"], vars = {{ port = {} }} }}", ports[1]),
        );
    assert!(config.contains("https://"), "{config}");
    dir.write("deploy.toml", config);
    let stop = || {
        for root in &roots {
            if let Ok(pid) = std::fs::read_to_string(root.join("app.pid")) {
                let _ = std::process::Command::new("kill").arg(pid.trim()).status();
            }
        }
    };
    let trusted = dp_on(&dir, &sqlite_url(&dir))
        .env("SSL_CERT_FILE", &cert)
        .args(["deploy", "--release", "r1"])
        .run();
    if trusted.code != 0 {
        stop();
    }
    trusted.code(0);
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
    }
    // Not trusted: the check fails on the certificate, and the host is switched back.
    dir.write("site/VERSION", "2\n");
    let untrusted = dp_on(&dir, &sqlite_url(&dir))
        .env("SSL_CERT_FILE", dir.path().join("no-such-roots.pem"))
        .env("SSL_CERT_DIR", dir.path().join("no-such-dir"))
        .args(["deploy", "--release", "r2"])
        .run();
    stop();
    untrusted.code(1);
    let e = untrusted.records()[0].error.clone().unwrap();
    assert!(
        e.message.contains("https://localhost:") && e.message.contains("certificate"),
        "{}",
        e.message
    );
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
    }
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
fn failing_dependencies_switch_no_host_and_a_rerun_finishes_the_deploy() {
    let dir = Dir::new("dp-failing-deps");
    let roots = fixture(&dir);
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    let with_deps = |command: &str| {
        dir.write(
            "deploy.toml",
            format!("{config}[deps]\nkind = \"command\"\ncommand = \"{command}\"\n"),
        )
    };
    // The dependencies are made ready in the upload's session: their failure is theirs.
    with_deps("echo resolving; echo no such package >&2; exit 7");
    let out = dp(&dir, &["deploy", "--release", "r2"]);
    out.code(1);
    for r in out.records() {
        let e = r.error.clone().unwrap();
        assert_eq!(e.step, "deps", "{e:?}");
        assert!(e.message.contains("no such package"), "{e:?}");
        assert_eq!(
            r.steps["sync"]["files_sent"], 0,
            "the upload itself succeeded"
        );
    }
    for root in &roots {
        assert_eq!(current(root), "releases/r1", "no host switched");
        assert!(root.join("releases/r2/.dp/complete").exists());
        assert!(!root.join(".dp/lock").exists(), "the lock was released");
    }
    // Again with the same id: the release is already there, so the dependencies are
    // made ready in a session of their own, and the deploy goes through.
    with_deps("echo ok > \\\"$DP_DEPS_DIR/built\\\"");
    let out = dp(&dir, &["deploy", "--release", "r2"]);
    out.code(0);
    for (r, root) in out.records().iter().zip(&roots) {
        assert_eq!(r.steps["sync"]["noop"], true);
        assert_eq!(r.steps["deps"]["cache"], "built");
        assert_eq!(current(root), "releases/r2");
    }
    // A new release: the dependencies are ready in the upload's session, from the cache.
    dir.write("site/VERSION", "3\n");
    let out = dp(&dir, &["deploy", "--release", "r3"]);
    out.code(0);
    for (r, root) in out.records().iter().zip(&roots) {
        assert_eq!(r.steps["deps"]["cache"], "hit", "{:?}", r.steps);
        assert!(r.steps["deps"]["ms"].is_u64());
        assert_eq!(current(root), "releases/r3");
        assert_eq!(
            std::fs::read_to_string(root.join("current/deps/built")).unwrap(),
            "ok\n",
            "the environment is linked into the new release"
        );
    }
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

#[test]
fn the_printed_pipeline_passes_a_lease_to_every_tool_that_locks() {
    let dir = Dir::new("dp-pipeline-lease");
    fixture(&dir);
    let out = dp(&dir, &["deploy", "--print-pipeline", "--lease", "2m"]);
    out.code(0);
    let with_lease: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("--lease 120s"))
        .map(|l| l.trim_start_matches(['|', ' ']).split(' ').next().unwrap())
        .collect();
    assert_eq!(
        with_lease,
        ["dp-sync", "dp-deps", "dp-migrate", "dp-restart"],
        "{}",
        out.stdout
    );
    let out = dp(&dir, &["deploy", "--print-pipeline"]);
    assert!(!out.stdout.contains("--lease"), "{}", out.stdout);
    // The lock keeps whole seconds: no zero or fractional lease.
    for bad in ["0s", "1500ms"] {
        let out = dp(&dir, &["deploy", "--print-pipeline", "--lease", bad]);
        out.code(2);
        assert!(
            out.stderr.contains("whole seconds, at least 1s"),
            "{}",
            out.stderr
        );
    }
}

/// A database migration longer than the lease: the deploy keeps renewing it, so another
/// deploy cannot take the hosts before this one switches them. Both as `dp deploy` and
/// as the printed pipeline.
#[test]
fn a_migration_longer_than_the_lease_keeps_the_hosts_locked() {
    let pg = crate::util::PgCluster::shared();
    for form in ["one line", "pipeline"] {
        let url = pg.create_db("dp_lease");
        let dir = Dir::new("dp-lease");
        let roots = fixture(&dir);
        dir.write("site/migrations/3_slow.sql", "SELECT pg_sleep(8);\n");
        let db = url.rsplit('/').next().unwrap().to_string();
        let deploy = ["deploy", "--release", "ra", "--lease", "2s"];
        let (a, b) = std::thread::scope(|s| {
            let a = s.spawn(|| {
                if form == "one line" {
                    return dp_on(&dir, &url).args(deploy).run();
                }
                let printed = dp_on(&dir, &url)
                    .args(deploy)
                    .args(["--print-pipeline"])
                    .run();
                run_pipeline(&dir, &url, &printed.stdout)
            });
            // Once the slow migration runs, and a 2 s lease (kept in whole seconds) would
            // surely have run out without renewal: a second release's upload tries to take
            // the hosts.
            let sleeping = "SELECT count(*) FROM pg_stat_activity \
                 WHERE query LIKE 'SELECT pg_sleep(8)%' AND pid <> pg_backend_pid()";
            let started = std::time::Instant::now();
            while pg.psql(&db, sleeping) == "0" {
                assert!(
                    started.elapsed().as_secs() < 60,
                    "{form}: the migration never started"
                );
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            std::thread::sleep(std::time::Duration::from_millis(4000));
            let b = upload(&dir, "rb");
            (a.join().unwrap(), b)
        });
        a.code(0);
        b.code(1);
        for r in b.records() {
            let e = r.error.unwrap().message;
            assert!(
                e.contains("deploy lock is held by release ra"),
                "{form}: {e}"
            );
        }
        for root in &roots {
            assert_eq!(current(root), "releases/ra", "{form}");
            assert!(!root.join(".dp/lock").exists(), "{form}");
        }
    }
}

/// In the pipeline, dp-migrate renews the lease before migrating: when another release
/// took the hosts meanwhile, nothing is migrated and the error names the holder.
#[test]
fn dp_migrate_migrates_nothing_when_the_hosts_lock_was_lost() {
    let dir = Dir::new("dp-lost-lock");
    let roots = fixture(&dir);
    let ra = upload(&dir, "ra");
    ra.code(0);
    // `dp unlock`, then another release takes the hosts.
    dp(&dir, &["unlock"]).code(0);
    upload(&dir, "rb").code(0);
    let db = dir.path().join("db.sqlite3");
    let out = TestCommand::new("dp-migrate")
        .current_dir(dir.path())
        .env("DATABASE_URL", format!("sqlite://{}", db.display()))
        .args(["--dir", "site/migrations", "--phase", "pre"])
        .stdin(ra.stdout)
        .run();
    out.code(1);
    for r in out.records() {
        let e = r.error.unwrap();
        assert_eq!(e.step, "migrate");
        assert!(
            e.message.contains("deploy lock is held by release rb"),
            "{}",
            e.message
        );
    }
    assert!(
        !db.exists() || std::fs::metadata(&db).unwrap().len() == 0,
        "nothing migrated"
    );
    for root in &roots {
        assert!(std::fs::read_to_string(root.join(".dp/lock"))
            .unwrap()
            .contains("\"rb\""));
    }
}

#[test]
fn end_to_end_over_sshd_and_postgresql() {
    let fleet = crate::util::Fleet::shared();
    let pg = crate::util::PgCluster::shared();
    let url = pg.create_db("dp_e2e");
    let db = url.rsplit('/').next().unwrap().to_string();
    let dir = Dir::new("dp-e2e");
    dir.write("site/VERSION", "1\n");
    dir.write(
        "site/migrations/1_create_pages.sql",
        "CREATE TABLE pages (id BIGINT PRIMARY KEY, title TEXT);\n",
    );
    let roots = [fleet.root_for(2, "dp-e2e"), fleet.root_for(3, "dp-e2e")];
    dir.write(
        "deploy.toml",
        fleet.deploy_toml_roots(
            &[2, 3],
            &roots,
            "source = \"site\"\n[restart]\nbatch = \"1\"\n\
             command = \"echo {release} > {root}/restarted\"\nhealth_cmd = \"grep -qv broken VERSION\"\n\
             health_timeout = \"1s\"",
        ),
    );
    let run = |args: &[&str]| dp_on(&dir, &url).args(args).run();
    let no_secret =
        |o: &Outcome| assert!(!o.stdout.contains(&pg.password) && !o.stderr.contains(&pg.password));

    let out = run(&["deploy", "--release", "r1"]);
    out.code(0);
    no_secret(&out);
    assert_eq!(pg.psql(&db, "SELECT count(*) FROM _sqlx_migrations"), "1");

    dir.write("site/VERSION", "2\n");
    let out = run(&["deploy", "--release", "r2"]);
    out.code(0);
    for r in out.records() {
        assert_eq!(r.steps["sync"]["files_sent"], 1, "only the change travels");
    }
    for root in &roots {
        assert_eq!(current(root), "releases/r2");
    }

    // A failing health check: switched back, the other host untouched.
    dir.write("site/VERSION", "broken\n");
    let out = run(&["deploy", "--release", "r3"]);
    out.code(1);
    for root in &roots {
        assert_eq!(current(root), "releases/r2");
        assert!(!root.join(".dp/lock").exists());
    }

    // A failing migration: no host switched.
    dir.write("site/VERSION", "4\n");
    dir.write(
        "site/migrations/2_broken.sql",
        "INSERT INTO missing VALUES (1);\n",
    );
    let out = run(&["deploy", "--release", "r4"]);
    out.code(1);
    no_secret(&out);
    for root in &roots {
        assert_eq!(current(root), "releases/r2");
    }
    std::fs::remove_file(dir.path().join("site/migrations/2_broken.sql")).unwrap();

    let out = run(&["rollback"]);
    out.code(0);
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
    }
    let status = run(&["status"]);
    status.code(0);
    for r in status.records() {
        assert_eq!(r.steps["status"]["current"], "r1");
        assert_eq!(r.steps["status"]["pending_migrations"], 0);
    }
    let history = run(&["history"]);
    let first: Value = serde_json::from_str(history.stdout.lines().next().unwrap()).unwrap();
    assert_eq!(
        (first["action"].as_str(), first["release"].as_str()),
        (Some("rollback"), Some("r1"))
    );
}

#[test]
fn setup_prepares_hosts_and_records_new_keys() {
    let fleet = crate::util::Fleet::shared();
    let dir = Dir::new("dp-setup");
    let root = fleet.root_for(1, "dp-setup").join("fresh");
    let kh = dir.write("known_hosts", "");
    dir.write(
        "deploy.toml",
        format!(
            "known_hosts = \"{}\"\nidentity = \"{}\"\n[stages.prod]\nuser = \"{}\"\nhosts = [{{ name = \"h\", addr = \"127.0.0.1\", port = {}, root = \"{}\" }}]\n",
            kh.display(),
            fleet.client_key.display(),
            fleet.user,
            fleet.hosts[1].port,
            root.display()
        ),
    );
    let refused = dp(&dir, &["setup"]);
    refused.code(1);
    assert!(refused.stderr.contains("is unknown"), "{}", refused.stderr);
    // What the message says to do works for dp setup as it is.
    let fix = "--host-key-policy accept-new";
    assert!(refused.stderr.contains(fix), "{}", refused.stderr);
    let out = dp(&dir, &["setup", "--host-key-policy", "accept-new"]);
    out.code(0);
    let created = out.records()[0].steps["setup"]["created"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(created, 5, "{}", out.stdout);
    assert!(
        root.join("releases").is_dir()
            && root.join("shared").is_dir()
            && root.join(".dp/deps").is_dir()
    );
    let again = dp(&dir, &["setup"]);
    again.code(0);
    assert_eq!(
        again.records()[0].steps["setup"]["created"],
        serde_json::json!([]),
        "idempotent"
    );
}

#[test]
fn completions_are_printed_for_dp_and_the_tools() {
    let dir = Dir::new("dp-completions");
    let out = TestCommand::new("dp")
        .current_dir(dir.path())
        .args(["completions", "bash"])
        .run();
    out.code(0);
    assert!(
        out.stdout.contains("_dp()") && out.stdout.contains("deploy"),
        "{}",
        out.stdout
    );
    let out = TestCommand::new("dp")
        .current_dir(dir.path())
        .args(["completions", "zsh", "--bin", "dp-sync"])
        .run();
    out.code(0);
    assert!(
        out.stdout.contains("#compdef dp-sync") && out.stdout.contains("--release"),
        "{}",
        out.stdout
    );
}

#[test]
fn the_bundled_demo_config_is_valid() {
    let demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/demo/deploy.toml");
    let out = TestCommand::new("dp-hosts")
        .args(["--config", demo.to_str().unwrap()])
        .run();
    out.code(0);
    let records = out.records();
    assert_eq!(records.len(), 3);
    for r in &records {
        let root = r.root.clone().unwrap();
        assert!(
            root.ends_with(&format!("/target/demo/hosts/{}", r.host)) && !root.contains(".."),
            "{root}"
        );
    }
}

#[test]
fn every_command_knows_its_release_the_previous_one_and_the_root() {
    let dir = Dir::new("dp-release-env");
    let roots = fixture(&dir);
    let show = "echo \\\"$DP_RELEASE|$DP_PREVIOUS_RELEASE|$DP_ROOT\\\"";
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    let config = config
        .replace(
            "command = \"echo {release} > {root}/restarted\"",
            &format!("command = \"{show} > {{root}}/restart-env\""),
        )
        .replace(
            "[restart]",
            "[migrate]\nexec = \"SHOW > $DP_ROOT/exec-env; echo {release} > {root}/exec-tpl\"\n\
             [build]\ncommand = \"SHOW > $DP_ROOT/build-env; echo {release} > {root}/build-tpl\"\n[restart]",
        )
        .replace(
            "health_cmd = \"test -f VERSION\"",
            "health_cmd = \"SHOW > $DP_ROOT/health-env\"",
        )
        .replace("SHOW", show);
    let with_deps = |n: u32| {
        dir.write(
            "deploy.toml",
            format!(
                "{config}[deps]\nkind = \"command\"\ncommand = \"{show} > $DP_ROOT/deps-env; : {n}\"\n"
            ),
        )
    };
    let read = |root: &Path, name: &str| std::fs::read_to_string(root.join(name)).unwrap();
    with_deps(1);
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    dir.write("site/VERSION", "2\n");
    with_deps(2);
    dp(&dir, &["deploy", "--release", "r2"]).code(0);
    for root in &roots {
        let want = format!("r2|r1|{}\n", root.display());
        assert_eq!(read(root, "restart-env"), want, "restart command");
        assert_eq!(read(root, "deps-env"), want, "dependency command");
        assert_eq!(read(root, "health-env"), want, "health command");
        assert_eq!(read(root, "build-env"), want, "build command");
        assert_eq!(
            read(root, "build-tpl"),
            "r2\n",
            "{{release}} in the build command"
        );
        // Each release names itself in REVISION; r2's was not written through a hard
        // link into r1's.
        assert_eq!(read(root, "current/REVISION"), "r2\n");
        assert_eq!(read(root, "releases/r1/REVISION"), "r1\n");
    }
    // The migration command runs once, on the host with role migrate.
    assert_eq!(
        read(&roots[0], "exec-env"),
        format!("r2|r1|{}\n", roots[0].display())
    );
    assert!(!roots[1].join("exec-env").exists());
    assert_eq!(read(&roots[0], "exec-tpl"), "r2\n");
    // An unknown placeholder in any command is refused before any host is touched.
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    dir.write(
        "deploy.toml",
        config.replace("> {root}/build-tpl", "> {root}/{relase}"),
    );
    let out = dp(&dir, &["deploy", "--release", "r3"]);
    out.code(2);
    assert!(
        out.stderr
            .contains("a: [build] command: unknown placeholder {relase}"),
        "{}",
        out.stderr
    );
    for root in &roots {
        assert!(!root.join("releases/r3").exists());
    }
}

#[test]
fn a_host_with_busybox_tools_first_on_its_path_is_refused_before_anything_changes() {
    let dir = Dir::new("dp-busybox");
    let roots = fixture(&dir);
    // BusyBox's applets first on PATH (the local transport's hosts share dp's PATH).
    let applets = crate::util::busybox_applets(dir.path());
    let path = format!("{}:{}", applets.display(), std::env::var("PATH").unwrap());
    let with_busybox = |args: &[&str]| {
        dp_on(&dir, &sqlite_url(&dir))
            .env("PATH", &path)
            .args(args)
            .run()
    };
    let why =
        "this host lacks what dp's scripts need: cp -al --remove-destination (GNU coreutils cp)";
    let setup = with_busybox(&["setup"]);
    setup.code(1);
    assert!(setup.stderr.contains(why), "{}", setup.stderr);
    let out = with_busybox(&["deploy", "--release", "r1"]);
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    assert_eq!(e.step, "sync");
    assert!(e.message.contains(why), "{}", e.message);
    for root in &roots {
        assert!(!root.join("current").exists());
        assert!(!root.join(".dp/lock").exists());
        let releases: Vec<_> = std::fs::read_dir(root.join("releases"))
            .map(|d| d.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert!(releases.is_empty(), "{releases:?}");
    }
    // With the GNU tools the same hosts pass (and are not probed again on that PATH);
    // BusyBox first again is a new PATH: probed, refused.
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    dir.write("site/VERSION", "2\n");
    with_busybox(&["deploy", "--release", "r2"]).code(1);
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
    }
}

/// What a person reads after a failed deploy: hosts of later batches say skipped, not
/// failed; a step that ran on no host is not reported; records go to stdout only for
/// pipes (the test's stdout is one) or with --json.
#[test]
fn a_failed_deploy_reports_skipped_hosts_and_only_the_steps_that_ran() {
    let dir = Dir::new("dp-report");
    let roots = fixture(&dir);
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    // r2's health check fails on the first batch (host a): b is never touched.
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    dir.write(
        "deploy.toml",
        config
            .replace(
                "health_cmd = \"test -f VERSION\"",
                "health_cmd = \"test -f NOPE\"",
            )
            // The app logs 25 lines per start; the record carries the last 20.
            .replace(
                "command = \"echo {release} > {root}/restarted\"",
                "command = \"for i in $(seq 1 25); do echo {release} line $i; done >> {root}/app.log\"",
            )
            .replace(
                "[restart]",
                "[restart]\nhealth_timeout = \"1s\"\napp_log = \"{root}/app.log\"",
            ),
    );
    dir.write("site/VERSION", "2\n");
    let out = dp(&dir, &["deploy", "--release", "r2"]);
    out.code(1);
    let line = |host: &str| {
        out.stderr
            .lines()
            .find(|l| l.starts_with(&format!("{host:<16} r2")))
            .unwrap_or_else(|| panic!("no row for {host}:\n{}", out.stderr))
            .to_string()
    };
    assert!(
        line("a").ends_with("FAILED in restart, switched back"),
        "{}",
        out.stderr
    );
    let e = out.records()[0].error.clone().unwrap();
    let details = e.details.expect("the app log's last lines");
    assert!(details.contains("app.log:\nr2 line 6\n"), "{details}");
    assert!(details.ends_with("r2 line 25"), "{details}");
    assert!(!details.contains("r2 line 5\n"), "{details}");
    assert!(out.stderr.contains("\n    r2 line 25\n"), "{}", out.stderr);
    assert!(
        line("b").ends_with("skipped (an earlier batch failed)"),
        "{}",
        out.stderr
    );
    assert_eq!(
        out.records().len(),
        2,
        "records on stdout when it is a pipe"
    );
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
    }

    // Refused before the switch (a migration fails): no line for the steps after it.
    dir.write("deploy.toml", config);
    dir.write(
        "site/migrations/3_broken.sql",
        "INSERT INTO nowhere VALUES (1);\n",
    );
    let out = dp(&dir, &["deploy", "--release", "r3"]);
    out.code(1);
    assert!(
        out.stderr.contains("dp: sync: 2/2 hosts ok"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("dp: restart:"), "{}", out.stderr);
    assert!(!out.stderr.contains("dp: migrate post:"), "{}", out.stderr);
}

/// Runs `program args` in `dir` on a pseudo-terminal (the environment of [`dp_on`]);
/// what the terminal showed, ending with "exit code N".
fn on_terminal(dir: &Dir, eof_after: Option<&str>, program: &str, args: &[&str]) -> String {
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/on_pty.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(harness);
    if let Some(text) = eof_after {
        cmd.args(["--eof-after", text]);
    }
    let out = cmd
        .arg(bin(program))
        .args(args)
        .current_dir(dir.path())
        .env("DATABASE_URL", sqlite_url(dir))
        .env("DP_CACHE_DIR", dir.path().join("cache"))
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// On a terminal, `dp deploy` shows its summary, not the records (--json adds them); a
/// step tool with nothing piped in says what it waits for.
#[test]
fn on_a_terminal_people_get_words_and_pipes_get_records() {
    let dir = Dir::new("dp-terminal");
    let roots = fixture(&dir);
    let shown = on_terminal(&dir, None, "dp", &["deploy", "--release", "r1"]);
    assert!(shown.ends_with("exit code 0\n"), "{shown}");
    assert!(shown.contains("2 of 2 hosts ok"), "{shown}");
    assert!(
        !shown.contains("{\"host\""),
        "no records on a terminal:\n{shown}"
    );
    assert_eq!(current(&roots[0]), "releases/r1");
    dir.write("site/VERSION", "2\n");
    let shown = on_terminal(&dir, None, "dp", &["deploy", "--release", "r2", "--json"]);
    assert!(shown.contains("{\"host\":\"a\""), "{shown}");

    let shown = on_terminal(&dir, Some("Ctrl-D"), "dp-restart", &[]);
    assert!(
        shown.contains("dp-restart: reading host records (JSON lines) from stdin"),
        "{shown}"
    );
    assert!(shown.ends_with("exit code 0\n"), "{shown}");
}

/// `dp logs` shows the app log's tail from every host, prefixed with the host; -f follows
/// what the hosts append until Ctrl-C (exit 130), and leaves nothing running.
#[test]
fn logs_shows_and_follows_every_hosts_app_log() {
    let dir = Dir::new("dp-logs");
    let roots = fixture(&dir);
    let config = std::fs::read_to_string(dir.path().join("deploy.toml")).unwrap();
    let missing = dp(&dir, &["logs"]);
    missing.code(2);
    assert!(missing.stderr.contains("app_log"), "{}", missing.stderr);
    dir.write(
        "deploy.toml",
        config.replace("[restart]", "[restart]\napp_log = \"{root}/app.log\""),
    );
    for (root, host) in roots.iter().zip(["a", "b"]) {
        let lines: String = (1..=30).map(|i| format!("{host} says {i}\n")).collect();
        std::fs::create_dir_all(root).unwrap();
        std::fs::write(root.join("app.log"), lines).unwrap();
    }
    let out = dp(&dir, &["logs", "-n", "2"]);
    out.code(0);
    assert_eq!(
        out.stdout,
        "a | a says 29\na | a says 30\nb | b says 29\nb | b says 30\n"
    );
    let out = dp(&dir, &["logs", "--host", "b", "-n", "1"]);
    out.code(0);
    assert_eq!(out.stdout, "b | b says 30\n");

    let (mut child, _home) = dp_on(&dir, &sqlite_url(&dir))
        .args(["logs", "-f", "-n", "0"])
        .spawn();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(500));
    use std::io::{BufRead, Write};
    std::fs::OpenOptions::new()
        .append(true)
        .open(roots[1].join("app.log"))
        .unwrap()
        .write_all(b"b says new\n")
        .unwrap();
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "b | b says new\n");
    let pid = child.id().to_string();
    crate::util::sh("kill", &["-INT", &pid]);
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "dp logs -f did not end on Ctrl-C"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130));
    let tails = std::process::Command::new("pgrep")
        .args([
            "-f",
            &format!("tail -n 0 -F -- {}", roots[0].join("app.log").display()),
        ])
        .output()
        .unwrap();
    assert!(tails.stdout.is_empty(), "a tail is left running");
}

/// On a terminal, status, history, rollback, unlock and setup print tables (NO_COLOR:
/// plain); the same commands piped print JSON lines (the other tests).
#[test]
fn on_a_terminal_status_and_history_are_tables() {
    let dir = Dir::new("dp-tables");
    fixture(&dir);
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    dir.write("site/VERSION", "2\n");
    dp(&dir, &["deploy", "--release", "r2"]).code(0);
    let row = |shown: &str, first: &str| -> Vec<String> {
        shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row {first}:\n{shown}"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let shown = on_terminal(&dir, None, "dp", &["status"]);
    assert!(
        shown.starts_with("host  current  live for  previous  drift  lock  releases  pending"),
        "{shown}"
    );
    let a = row(&shown, "a");
    assert_eq!(
        (a[1].as_str(), a[3].as_str(), a[4].as_str()),
        ("r2", "r1", "-"),
        "{shown}"
    );
    assert!(a[2].ends_with('s'), "live for seconds: {shown}");
    assert!(!shown.contains("{\"host\""), "{shown}");

    let shown = on_terminal(&dir, None, "dp", &["history"]);
    assert!(shown.starts_with("time (UTC)"), "{shown}");
    let lines: Vec<&str> = shown.lines().filter(|l| l.contains("deploy")).collect();
    assert_eq!(
        lines.len(),
        2,
        "one row per deploy across both hosts:\n{shown}"
    );
    assert!(
        lines[0].contains("r2") && lines[0].contains("r1") && lines[0].ends_with("2 ok"),
        "{shown}"
    );

    let shown = on_terminal(&dir, None, "dp", &["rollback"]);
    let a = row(&shown, "a");
    assert_eq!(a[1], "ok", "{shown}");
    assert!(a.contains(&"r1".to_string()), "{shown}");
    let shown = on_terminal(&dir, None, "dp", &["unlock"]);
    assert!(
        shown.starts_with("host  result  removed  holder"),
        "{shown}"
    );
    assert_eq!(row(&shown, "b")[1..], ["ok", "false", "-"], "{shown}");
    let shown = on_terminal(&dir, None, "dp", &["status", "--json"]);
    assert!(shown.contains("{\"host\":\"a\""), "{shown}");
}

/// Every path under `root` with its type and content (or link target): to see that
/// nothing changed.
fn snapshot(root: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let what = if meta.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if meta.is_dir() {
                todo.push(p.clone());
                "dir".to_string()
            } else {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
            };
            out.push((p, what));
        }
    }
    out.sort();
    out
}

/// `dp deploy --plan` says what a deploy would do (one changed file, a changed
/// lockfile, a new migration) and changes nothing on any host: no lock, no directory.
#[test]
fn the_plan_says_what_a_deploy_would_do_and_changes_nothing() {
    let dir = Dir::new("dp-plan");
    let roots = fixture(&dir);
    dir.write("site/requirements.txt", "flask==3.0\n");
    with_sections(
        &dir,
        "[deps]\nkind = \"command\"\nlockfiles = [\"requirements.txt\"]\ncommand = \"mkdir -p \\\"$DP_DEPS_DIR/bin\\\"\"",
    );
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    let before: Vec<_> = roots.iter().map(|r| snapshot(r)).collect();
    let plan = |expect: &[(&str, &str)]| {
        let out = dp(&dir, &["deploy", "--plan"]);
        out.code(0);
        for r in out.records() {
            let p = &r.steps["plan"];
            assert_eq!(p["current"], "r1", "{p}");
            for (k, v) in expect {
                assert_eq!(p[*k].to_string(), *v, "{}: {k}: {p}", r.host);
            }
        }
        for (root, snap) in roots.iter().zip(&before) {
            assert!(!root.join(".dp/lock").exists());
            assert_eq!(&snapshot(root), snap, "the plan changed the host");
        }
    };
    plan(&[
        ("send_files", "0"),
        ("deps", "\"reuse\""),
        ("pending_migrations", "[]"),
    ]);
    dir.write("site/app/views.py", "def index(): return 'changed'\n");
    plan(&[("send_files", "1"), ("deps", "\"reuse\"")]);
    dir.write("site/requirements.txt", "flask==3.1\n");
    dir.write(
        "site/migrations/3_more.sql",
        "CREATE TABLE more (id INTEGER);\n",
    );
    plan(&[
        ("send_files", "3"),
        ("deps", "\"rebuild (requirements.txt changed)\""),
        ("pending_migrations", "[\"3_more (pre)\"]"),
    ]);
    let out = dp(&dir, &["deploy", "--plan"]);
    let batches: Vec<_> = out
        .records()
        .iter()
        .map(|r| r.steps["plan"]["batch"].clone())
        .collect();
    assert_eq!(batches, [1, 2], "batch = 1: one host each");
    let shown = on_terminal(&dir, None, "dp", &["deploy", "--plan"]);
    assert!(shown.starts_with("host  current  base  send"), "{shown}");
    assert!(
        shown.contains("rebuild (requirements.txt changed)"),
        "{shown}"
    );
}

/// `dp exec CMD` runs in the live release of every host (or --host), with its release in
/// the environment, each line prefixed with the host; a host without a live release, or
/// where the command fails, fails in step exec (exit 1).
#[test]
fn exec_runs_a_command_in_the_live_release_of_each_host() {
    let dir = Dir::new("dp-exec");
    let roots = fixture(&dir);
    let out = dp(&dir, &["exec", "cat", "VERSION"]);
    out.code(1);
    assert!(out.stderr.contains("no release is live"), "{}", out.stderr);
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    let out = dp(
        &dir,
        &["exec", "echo $DP_RELEASE $(cat VERSION) {host}; pwd"],
    );
    out.code(0);
    let a = roots[0].join("releases/r1").canonicalize().unwrap();
    let b = roots[1].join("releases/r1").canonicalize().unwrap();
    assert_eq!(
        out.stdout,
        format!(
            "a | r1 1 a\na | {}\nb | r1 1 b\nb | {}\n",
            a.display(),
            b.display()
        )
    );
    let out = dp(&dir, &["exec", "--host", "b", "exit 3"]);
    out.code(1);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(out.stderr.contains("dp: b: exec:"), "{}", out.stderr);
    assert!(!out.stderr.contains("dp: a:"), "{}", out.stderr);
}

/// The operator's commands on two sshd hosts: status with the health check's answer now,
/// logs, restart in place (live output with --verbose; a failing host stops it and
/// switches nothing), a failed deploy's record with the app log's last lines, and the
/// tables on a terminal (JSON lines when piped).
#[test]
fn operator_view_over_sshd() {
    let fleet = crate::util::Fleet::shared();
    let dir = Dir::new("dp-operator");
    let (h1, h2) = (&fleet.hosts[1].name, &fleet.hosts[2].name);
    let roots = [
        fleet.root_for(1, "dp-operator"),
        fleet.root_for(2, "dp-operator"),
    ];
    dir.write("site/VERSION", "1\n");
    // Waits (20 s at most) for a `go` file when there is a `wait` file: to see that its
    // output reaches dp's stderr while it runs.
    dir.write(
        "site/restart.sh",
        "echo \"restart $DP_RELEASE\" >> \"$DP_ROOT/app.log\"\n\
         if [ -f \"$DP_ROOT/wait\" ]; then\n\
           echo waiting for go\n\
           i=0; while [ ! -f \"$DP_ROOT/go\" ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done\n\
           [ -f \"$DP_ROOT/go\" ] || { echo no go; exit 1; }\n\
         fi\n",
    );
    dir.write(
        "deploy.toml",
        fleet.deploy_toml_roots(
            &[1, 2],
            &roots,
            "source = \"site\"\n[restart]\nbatch = \"1\"\ncommand = \"sh restart.sh\"\n\
             health_cmd = \"cat VERSION && grep -qv broken VERSION\"\nhealth_timeout = \"1s\"\n\
             app_log = \"{root}/app.log\"",
        ),
    );
    let run = |args: &[&str]| dp(&dir, args);
    let restarts = |root: &Path| {
        std::fs::read_to_string(root.join("app.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    let row = |shown: &str, first: &str| -> String {
        shown
            .lines()
            .find(|l| l.split_whitespace().next() == Some(first))
            .unwrap_or_else(|| panic!("no row {first}:\n{shown}"))
            .to_string()
    };
    run(&["deploy", "--release", "r1"]).code(0);
    dir.write("site/VERSION", "2\n");
    run(&["deploy", "--release", "r2"]).code(0);

    // Status: the health check's answer now, in a column and in the records.
    let shown = on_terminal(&dir, None, "dp", &["status"]);
    assert!(shown.starts_with("host "), "{shown}");
    assert!(
        shown.lines().next().unwrap().ends_with("health now"),
        "{shown}"
    );
    for h in [h1, h2] {
        let r = row(&shown, h);
        assert!(
            r.contains(" r2 ") && r.contains(" r1 ") && r.ends_with("ok (exit 0: \"2\")"),
            "{shown}"
        );
    }
    let status = run(&["status"]);
    status.code(0);
    for r in status.records() {
        assert_eq!(r.steps["status"]["health"]["ok"], true, "{}", status.stdout);
        assert_eq!(r.steps["status"]["health"]["answer"], "exit 0: \"2\"");
    }

    // Logs: both hosts' lines, each with its host.
    let logs = run(&["logs"]);
    logs.code(0);
    for h in [h1, h2] {
        assert!(
            logs.stdout.contains(&format!("{h} | restart r2")),
            "{}",
            logs.stdout
        );
    }

    // Restart in place: the command runs again on each host, nothing switches.
    let shown = on_terminal(&dir, None, "dp", &["restart"]);
    for h in [h1, h2] {
        assert!(row(&shown, h).contains(" ok "), "{shown}");
    }
    for root in &roots {
        assert_eq!(current(root), "releases/r2");
        assert_eq!(restarts(root), 3, "r1, r2 and the restart");
        assert!(!root.join(".dp/lock").exists());
    }
    let shown = on_terminal(&dir, None, "dp", &["history"]);
    let first = shown.lines().nth(1).unwrap_or_default();
    assert!(
        first.contains("restart") && first.ends_with("2 ok"),
        "{shown}"
    );

    // --verbose: the restart command's output reaches stderr while it runs (it waits for
    // `go`, which is written only once its first line was seen).
    std::fs::write(roots[0].join("wait"), "").unwrap();
    let mut child = std::process::Command::new(bin("dp"))
        .args(["restart", "--verbose"])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    for line in std::io::BufRead::lines(stderr) {
        let line = line.unwrap();
        if line.starts_with(h1.as_str()) && line.ends_with("| waiting for go") {
            std::fs::write(roots[0].join("go"), "").unwrap();
        }
        seen.push(line);
    }
    assert!(
        child.wait().unwrap().success(),
        "streamed live:\n{}",
        seen.join("\n")
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with(h2.as_str()) && l.ends_with("| 2")),
        "the health command's output too:\n{}",
        seen.join("\n")
    );
    std::fs::remove_file(roots[0].join("wait")).unwrap();

    // A restart that fails on the first host: it is not switched, the other is skipped.
    let v = roots[0].join("releases/r2/VERSION");
    std::fs::write(&v, "broken\n").unwrap();
    let out = run(&["restart"]);
    out.code(1);
    let records = out.records();
    assert!(
        records[0]
            .error
            .as_ref()
            .unwrap()
            .message
            .contains("health check"),
        "{}",
        out.stdout
    );
    assert_eq!(records[1].error.as_ref().unwrap().kind.as_str(), "skipped");
    assert_eq!(restarts(&roots[0]), 5);
    assert_eq!(restarts(&roots[1]), 4, "the skipped host was not restarted");
    for root in &roots {
        assert_eq!(current(root), "releases/r2");
        assert!(!root.join(".dp/lock").exists());
    }
    std::fs::write(&v, "2\n").unwrap();

    // A failed deploy: the record carries the health check's answer and the app log.
    dir.write("site/VERSION", "broken\n");
    let out = run(&["deploy", "--release", "r3"]);
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    assert!(
        e.message.contains("broken"),
        "the last answer: {}",
        e.message
    );
    let details = e.details.unwrap_or_default();
    assert!(details.contains("restart r3"), "the app log: {details}");
    assert!(out.stderr.contains("restart r3"), "{}", out.stderr);
    for root in &roots {
        assert_eq!(current(root), "releases/r2");
    }

    // Rollback, unlock and setup as tables.
    let shown = on_terminal(&dir, None, "dp", &["rollback"]);
    for h in [h1, h2] {
        assert!(row(&shown, h).contains(" ok "), "{shown}");
    }
    for root in &roots {
        assert_eq!(current(root), "releases/r1");
    }
    let shown = on_terminal(&dir, None, "dp", &["unlock"]);
    assert!(shown.starts_with("host "), "{shown}");
    assert!(row(&shown, h2).contains("false"), "{shown}");
    let shown = on_terminal(&dir, None, "dp", &["setup"]);
    assert!(row(&shown, h1).contains(" ok "), "{shown}");
    let setup = run(&["setup"]);
    setup.code(0);
    assert_eq!(setup.records()[1].steps["setup"]["ready"], true);
}

/// dp raises its soft limit on open files to the hard one at start (a session per host
/// for the whole deploy): started under a soft limit of 64, what it runs sees the hard one.
#[test]
fn the_open_file_limit_is_raised_to_the_hard_one() {
    let dir = Dir::new("dp-nofile");
    fixture(&dir);
    let hard = std::process::Command::new("sh")
        .args(["-c", "ulimit -Hn"])
        .output()
        .unwrap();
    let hard = String::from_utf8_lossy(&hard.stdout).trim().to_string();
    dp(&dir, &["deploy", "--release", "r1"]).code(0);
    let out = dp_on(&dir, &sqlite_url(&dir))
        .program("sh")
        .current_dir(dir.path())
        .args([
            "-c",
            &format!(
                "ulimit -Sn 64 && exec {} exec --host a 'ulimit -Sn'",
                bin("dp").display()
            ),
        ])
        .run();
    out.code(0);
    assert_eq!(out.stdout.trim(), format!("a | {hard}"), "{}", out.stderr);
}

/// A machine that built the hosts' newest release sends the next build with the lock in
/// one exchange (on every host but the first by name, whose lock comes first alone); after another machine deployed, its guess misses and the build takes the
/// usual second exchange, with the same result; a host held by another deploy builds
/// nothing.
#[test]
fn the_build_goes_with_the_lock_when_this_machine_built_the_base() {
    let fleet = crate::util::Fleet::shared();
    let dir = Dir::new("dp-guess");
    let roots = [fleet.root_for(0, "dp-guess"), fleet.root_for(3, "dp-guess")];
    dir.write("site/VERSION", "1\n");
    dir.write("site/app/big.txt", "x".repeat(100_000));
    dir.write(
        "deploy.toml",
        fleet.deploy_toml_roots(&[0, 3], &roots, "source = \"site\""),
    );
    let from = |machine: &str, release: &str| {
        dp_on(&dir, "")
            .env("DP_CACHE_DIR", dir.path().join(machine))
            .args(["deploy", "--release", release])
            .run()
    };
    let exchanges = |out: &Outcome| -> Vec<u64> {
        out.records()
            .iter()
            .map(|r| r.steps["sync"]["exchanges"].as_u64().unwrap())
            .collect()
    };
    let same_as_source = |release: &str| {
        for root in &roots {
            let rel = root.join("releases").join(release);
            assert_eq!(
                std::fs::read_to_string(rel.join("VERSION")).unwrap(),
                std::fs::read_to_string(dir.path().join("site/VERSION")).unwrap()
            );
            assert_eq!(
                std::fs::read(rel.join("app/big.txt")).unwrap().len(),
                100_000
            );
            assert_eq!(current(root), format!("releases/{release}"));
        }
    };
    let out = from("a", "r1");
    out.code(0);
    assert_eq!(exchanges(&out), [2, 2], "nothing remembered yet");
    dir.write("site/VERSION", "2\n");
    let out = from("a", "r2");
    out.code(0);
    // The first host by name only takes its lock first (two deploys meet there), then
    // builds beside the others: their build goes with their lock.
    assert_eq!(exchanges(&out), [2, 1]);
    for r in out.records() {
        assert_eq!(r.steps["sync"]["files_sent"], 1, "only the change travels");
        assert_eq!(r.steps["sync"]["base"], "r1");
    }
    same_as_source("r2");
    // Another machine deploys: this one's guess (r2) is no longer the hosts' newest.
    dir.write("site/VERSION", "3\n");
    from("b", "r3").code(0);
    dir.write("site/VERSION", "4\n");
    let out = from("a", "r4");
    out.code(0);
    assert_eq!(exchanges(&out), [2, 2], "the guess missed");
    for r in out.records() {
        assert_eq!(r.steps["sync"]["base"], "r3");
        assert_eq!(r.steps["sync"]["files_sent"], 1);
    }
    same_as_source("r4");
    // Another deploy holds the second host: the first took its lock (it comes first by
    // name) and gave it back; the second built nothing.
    let lock = roots[1].join(".dp/lock");
    let held = "{\"release\":\"other\",\"holder\":\"someone@elsewhere\",\"pid\":1,\"time\":1,\"expires\":9999999999}\n";
    std::fs::write(&lock, held).unwrap();
    dir.write("site/VERSION", "5\n");
    let out = from("a", "r5");
    out.code(1);
    assert!(out.stderr.contains("someone@elsewhere"), "{}", out.stderr);
    for root in &roots {
        assert_eq!(current(root), "releases/r4");
    }
    assert!(!roots[0].join(".dp/lock").exists(), "the lock given back");
    assert!(!roots[1].join("releases/r5").exists());
    assert_eq!(std::fs::read_to_string(&lock).unwrap(), held);
    std::fs::remove_file(&lock).unwrap();
    let out = from("a", "r6");
    out.code(0);
    same_as_source("r6");
}
