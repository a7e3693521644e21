//! dp-sync over real sshd hosts and the local transport.

use crate::util::{local_line, Dir, Fleet, Outcome, TestCommand};
use dp_core::Record;
use std::collections::BTreeMap;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// What a tree looks like to a user: path -> (kind, mode, content or link target).
type Snapshot = BTreeMap<PathBuf, (char, u32, Vec<u8>)>;

fn snapshot(root: &Path) -> Snapshot {
    fn walk(base: &Path, dir: &Path, out: &mut Snapshot) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            let rel = path.strip_prefix(base).unwrap().to_path_buf();
            // dp's own: its bookkeeping, and the release id for the app.
            if rel == Path::new(".dp") || rel == Path::new("REVISION") {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path).unwrap();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&path).unwrap();
                out.insert(rel, ('l', 0, target.into_os_string().into_encoded_bytes()));
            } else if meta.is_dir() {
                out.insert(rel, ('d', mode, Vec::new()));
                walk(base, &path, out);
            } else {
                out.insert(rel, ('f', mode, std::fs::read(&path).unwrap()));
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, &mut out);
    out
}

/// A source tree with hostile names, a deep path, empty and executable files, symlinks,
/// and things that must not be uploaded.
fn hostile_tree(dir: &Dir) -> PathBuf {
    let src = dir.path().join("src");
    let names = [
        "with space.txt",
        "quote'd",
        "dq\"x",
        "new\nline",
        "-leading-dash",
        "--",
        "-",
        "-n",
        " leading space",
        "unicodé ☃.txt",
        "$(touch pwned)",
        "`touch pwned2`",
        "semi;colon&amp|pipe",
        "back\\slash",
        "star*glob?[x]",
    ];
    for (i, n) in names.iter().enumerate() {
        dir.write(&format!("src/{n}"), format!("content {i} of {n:?}\n"));
    }
    let deep: String = (0..30).map(|i| format!("d{i}/")).collect();
    dir.write(&format!("src/{deep}deep.txt"), "deep\n");
    dir.write("src/empty", "");
    // The host writes its own REVISION (the release id) over the source's.
    dir.write("src/REVISION", "from the source\n");
    let script = dir.write("src/bin/run.sh", "#!/bin/sh\necho run\n");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = dir.write("src/conf/private.cfg", "x=1\n");
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    std::fs::create_dir_all(src.join("empty-dir")).unwrap();
    symlink("../with space.txt", src.join("bin/link to space")).unwrap();
    symlink("conf", src.join("conf-link")).unwrap();
    dir.write(
        "src/static/big.bin",
        (0..300_000u32)
            .map(|i| (i * 7 % 251) as u8)
            .collect::<Vec<_>>(),
    );
    // Not uploaded: ignored, excluded, VCS.
    dir.write("src/.gitignore", "*.log\nbuild/\n");
    dir.write("src/debug.log", "noise\n");
    dir.write("src/build/out.o", "obj\n");
    dir.write("src/secret.key", "no\n");
    dir.write("src/.git/HEAD", "ref: refs/heads/main\n");
    src
}

fn expected(src: &Path) -> Snapshot {
    let mut snap = snapshot(src);
    snap.retain(|p, _| {
        let s = p.to_string_lossy();
        !(s.ends_with(".log")
            || s.starts_with("build")
            || s == "secret.key"
            || s.starts_with(".git") && s != ".gitignore")
    });
    snap
}

fn sync(src: &Path, input: &str, extra: &[&str]) -> Outcome {
    TestCommand::new("dp-sync")
        .args(["--src".as_ref(), src.as_os_str()])
        .args(extra)
        .stdin(input)
        .run()
}

/// Removes the deploy lock, as the end of a deploy (dp-restart) does.
fn unlock(roots: &[&Path]) {
    for r in roots {
        let _ = std::fs::remove_file(r.join(".dp/lock"));
    }
}

#[test]
fn uploads_identical_trees_over_ssh_and_local() {
    let fleet = Fleet::shared();
    let dir = Dir::new("sync-identical");
    let src = hostile_tree(&dir);
    let roots = [
        fleet.root_for(0, "sync-identical"),
        fleet.root_for(1, "sync-identical"),
        dir.path().join("local"),
    ];
    let input = fleet.record_line(0, &roots[0])
        + &fleet.record_line(1, &roots[1])
        + &local_line("local1", &roots[2]);
    let out = sync(&src, &input, &["--exclude", "secret.*", "--verify"]);
    out.code(0);
    let recs = out.records();
    assert_eq!(recs.len(), 3);
    let release = recs[0].release.clone().unwrap();
    assert!(
        release.len() == 25 && release.as_bytes()[8] == b'T' && release.as_bytes()[15] == b'Z',
        "release id {release}"
    );
    let want = expected(&src);
    assert!(
        want.contains_key(Path::new("new\nline")) && !want.contains_key(Path::new("debug.log"))
    );
    for (r, root) in recs.iter().zip(&roots) {
        assert_eq!(
            r.release.as_ref(),
            Some(&release),
            "one release id for all hosts"
        );
        let stats = &r.steps["sync"];
        // The snapshots leave out REVISION; the source's is sent like any file.
        assert_eq!(
            stats["files_sent"],
            want.values().filter(|v| v.0 == 'f').count() as u64 + 1
        );
        let rel_dir = root.join("releases").join(&release);
        assert!(rel_dir.join(".dp/complete").exists());
        assert!(rel_dir.join(".dp/manifest").exists());
        assert_eq!(
            std::fs::read_to_string(rel_dir.join("REVISION")).unwrap(),
            format!("{release}\n")
        );
        let got = snapshot(&rel_dir);
        for (path, v) in &want {
            assert_eq!(got.get(path), Some(v), "{} on {}", path.display(), r.host);
        }
        assert_eq!(got.len(), want.len(), "no extra files on {}", r.host);
        assert!(
            !root.join("current").exists(),
            "dp-sync never switches current"
        );
        let lock = std::fs::read_to_string(root.join(".dp/lock")).unwrap();
        assert!(
            lock.contains(&format!("\"release\":\"{release}\"")),
            "{lock}"
        );
    }
    assert!(!Path::new("pwned").exists() && !src.join("pwned").exists());
}

#[test]
fn a_second_deploy_sends_only_what_changed() {
    let fleet = Fleet::shared();
    let dir = Dir::new("sync-incremental");
    let src = hostile_tree(&dir);
    let cache = dir.path().join("cache");
    let roots = [
        fleet.root_for(2, "sync-incremental"),
        dir.path().join("local"),
    ];
    let input = fleet.record_line(2, &roots[0]) + &local_line("local1", &roots[1]);
    let run = |release: &str| {
        TestCommand::new("dp-sync")
            .args([
                "--src".as_ref(),
                src.as_os_str(),
                "--release".as_ref(),
                release.as_ref(),
            ])
            .args(["--exclude", "secret.*"])
            .env("DP_CACHE_DIR", &cache)
            .stdin(input.clone())
            .run()
    };
    run("r1").code(0);
    unlock(&[&roots[0], &roots[1]]);
    let before: Vec<Snapshot> = roots
        .iter()
        .map(|r| snapshot(&r.join("releases/r1")))
        .collect();

    // Incompressible, so the bytes on the wire show the whole file went (and only it).
    let mut x = 0x2545F4914F6CDD1Du64;
    let changed: Vec<u8> = (0..50_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    std::fs::write(src.join("static/big.bin"), &changed).unwrap();
    let out = run("r2");
    out.code(0);
    // With the source's REVISION, which the snapshots leave out.
    let files = expected(&src).values().filter(|v| v.0 == 'f').count() as u64 + 1;
    for (r, root) in out.records().iter().zip(&roots) {
        let s = &r.steps["sync"];
        assert_eq!(s["base"], "r1");
        assert_eq!(s["files_sent"], 1, "{s}");
        assert_eq!(
            s["compression"], "bzip2",
            "small uploads are compressed: {s}"
        );
        assert_eq!(s["linked"], files - 1);
        let sent = s["bytes_sent"].as_u64().unwrap();
        assert!(
            sent > 50_000 && sent < 50_000 + 16_384,
            "sent {sent} bytes for one 50 kB file"
        );
        assert!(
            s["bytes_received"].as_u64().unwrap() < 1024,
            "the base manifest came from the cache: {s}"
        );
        let (r1, r2) = (root.join("releases/r1"), root.join("releases/r2"));
        assert_eq!(std::fs::read(r2.join("static/big.bin")).unwrap(), changed);
        let ino = |p: PathBuf| std::fs::metadata(p).unwrap().ino();
        assert_eq!(
            ino(r1.join("with space.txt")),
            ino(r2.join("with space.txt")),
            "unchanged files are hard links"
        );
        assert_ne!(
            ino(r1.join("static/big.bin")),
            ino(r2.join("static/big.bin"))
        );
    }
    for (root, snap) in roots.iter().zip(&before) {
        assert_eq!(
            &snapshot(&root.join("releases/r1")),
            snap,
            "old releases are never changed"
        );
    }

    // Without the cache the host sends its manifest back; the result is the same.
    unlock(&[&roots[0], &roots[1]]);
    std::fs::remove_file(src.join("empty")).unwrap();
    let out = sync(
        &src,
        &input,
        &["--release", "r3", "--no-cache", "--exclude", "secret.*"],
    );
    out.code(0);
    for (r, root) in out.records().iter().zip(&roots) {
        let s = &r.steps["sync"];
        assert_eq!(
            (s["files_sent"].as_u64(), s["removed"].as_u64()),
            (Some(0), Some(1)),
            "{s}"
        );
        assert!(s["bytes_received"].as_u64().unwrap() > 1024);
        assert!(!root.join("releases/r3/empty").exists());
        assert_eq!(
            snapshot(&root.join("releases/r3")).len() + 1,
            snapshot(&root.join("releases/r2")).len()
        );
    }

    // A 6 kB incompressible change is small enough to be tried inside the script, but
    // escaped there it would pass what one SSH request carries: it goes on stdin. A
    // one-line change then goes inside the script. Both build the same trees.
    for (release, path, content) in [
        ("r4", "static/big.bin", &changed[..6000]),
        ("r5", "with space.txt", &b"edited\n"[..]),
    ] {
        unlock(&[&roots[0], &roots[1]]);
        std::fs::write(src.join(path), content).unwrap();
        let out = run(release);
        out.code(0);
        for (r, root) in out.records().iter().zip(&roots) {
            assert_eq!(r.steps["sync"]["files_sent"], 1, "{release}: {r:?}");
            assert_eq!(
                snapshot(&root.join("releases").join(release)),
                expected(&src),
                "{release}"
            );
        }
    }
}

#[test]
fn rerunning_a_release_is_a_noop_and_other_content_is_refused() {
    let dir = Dir::new("sync-rerun");
    let src = dir.path().join("src");
    dir.write("src/a.txt", "a\n");
    let root = dir.path().join("host");
    let input = local_line("local1", &root);
    sync(&src, &input, &["--release", "v1"]).code(0);
    let out = sync(&src, &input, &["--release", "v1"]);
    out.code(0);
    assert_eq!(out.records()[0].steps["sync"]["noop"], true);
    dir.write("src/a.txt", "changed\n");
    let out = sync(&src, &input, &["--release", "v1"]);
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    assert_eq!(e.step, "sync");
    assert!(
        e.message
            .contains("already exists on the host with different content"),
        "{}",
        e.message
    );
    assert_eq!(
        std::fs::read_to_string(root.join("releases/v1/a.txt")).unwrap(),
        "a\n"
    );
}

#[test]
fn verify_fails_a_host_whose_files_were_changed_there() {
    let dir = Dir::new("sync-verify");
    let src = dir.path().join("src");
    dir.write("src/a.txt", "a\n");
    dir.write("src/b.txt", "b\n");
    let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
    let input = local_line("good", &good) + &local_line("bad", &bad);
    sync(&src, &input, &["--release", "v1"]).code(0);
    unlock(&[&good, &bad]);
    // Someone edits a live file on one host; the next release would hard-link it.
    let edited = bad.join("releases/v1/a.txt");
    std::fs::remove_file(&edited).unwrap();
    std::fs::write(&edited, "edited on the host\n").unwrap();
    dir.write("src/b.txt", "b2\n");
    let out = sync(&src, &input, &["--release", "v2", "--verify"]);
    out.code(1);
    let records = out.records();
    let host = |name: &str| records.iter().find(|r| r.host == name).unwrap().clone();
    assert!(host("good").error.is_none(), "{:?}", host("good").error);
    let e = host("bad").error.unwrap();
    assert_eq!(e.step, "sync");
    assert!(
        e.message.contains("differs from the source") && e.message.contains("a.txt"),
        "{}",
        e.message
    );
    assert!(good.join("releases/v2/.dp/complete").exists());
    assert!(
        !bad.join("releases/v2").exists(),
        "a release that fails verification never gets its final name"
    );
}

#[test]
fn concurrent_syncs_of_different_releases_one_wins() {
    let fleet = Fleet::shared();
    let dir = Dir::new("sync-concurrent");
    let src = hostile_tree(&dir);
    let root = fleet.root_for(3, "sync-concurrent");
    let input = fleet.record_line(3, &root);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| sync(&src, &input, &["--release", "ra"]));
        let b = s.spawn(|| sync(&src, &input, &["--release", "rb"]));
        (a.join().unwrap(), b.join().unwrap())
    });
    let (winner, loser, lost) = match (a.code, b.code) {
        (0, 1) => ("ra", &b, "rb"),
        (1, 0) => ("rb", &a, "ra"),
        codes => panic!(
            "expected one winner, got {codes:?}\n{}\n{}",
            a.stderr, b.stderr
        ),
    };
    let e = loser.records()[0].error.clone().unwrap();
    assert!(
        e.message
            .contains(&format!("deploy lock is held by release {winner} by ")),
        "{}",
        e.message
    );
    assert!(root
        .join("releases")
        .join(winner)
        .join(".dp/complete")
        .exists());
    assert!(!root.join("releases").join(lost).exists());
}

#[test]
fn an_expired_lock_is_taken_over_with_a_warning() {
    let dir = Dir::new("sync-expired");
    dir.write("src/a.txt", "a\n");
    let root = dir.path().join("host");
    dir.write(
        "host/.dp/lock",
        "{\"release\":\"old\",\"holder\":\"ci@builder\",\"pid\":42,\"time\":1000,\"expires\":2000}\n",
    );
    let out = sync(
        &dir.path().join("src"),
        &local_line("local1", &root),
        &["--release", "new"],
    );
    out.code(0);
    assert!(
        out.stderr.contains(
            "warning: took over an expired deploy lock (release old by ci@builder (pid 42)"
        ),
        "{}",
        out.stderr
    );
    assert!(std::fs::read_to_string(root.join(".dp/lock"))
        .unwrap()
        .contains("\"release\":\"new\""));
}

#[test]
fn a_connection_killed_mid_transfer_fails_only_that_host() {
    let mut fleet = Fleet::start(2);
    let dir = Dir::new("sync-killed");
    dir.write("src/small.txt", "small\n");
    // A large sparse file: cheap to make, slow enough to send that we can cut it off.
    let big = std::fs::File::create(dir.path().join("src/big.bin")).unwrap();
    big.set_len(256 << 20).unwrap();
    drop(big);
    let roots = [fleet.hosts[0].root.clone(), fleet.hosts[1].root.clone()];
    let input = fleet.record_line(0, &roots[0]) + &fleet.record_line(1, &roots[1]);
    let src = dir.path().join("src");
    let out = std::thread::scope(|s| {
        let job = s.spawn(|| sync(&src, &input, &["--release", "r1"]));
        // Wait until host 1 is receiving the big file, then kill it.
        let incoming = roots[0].join("releases/.incoming-r1/big.bin");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while std::fs::metadata(&incoming).map(|m| m.len()).unwrap_or(0) < 8 << 20 {
            assert!(
                std::time::Instant::now() < deadline,
                "transfer never started"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        fleet.hosts[0].kill_all();
        job.join().unwrap()
    });
    out.code(1);
    let recs = out.records();
    let e = recs[0].error.clone().expect("killed host fails");
    assert_eq!(e.step, "sync");
    assert!(
        recs[1].error.is_none(),
        "the other host is unaffected: {:?}",
        recs[1].error
    );
    assert!(!roots[0].join("current").exists());
    assert!(
        !roots[0].join("releases/r1").exists(),
        "no half-synced release under its real name"
    );
    assert!(roots[0].join("releases/.incoming-r1").exists());
    assert!(
        out.stderr
            .contains("dp-sync: h1: sync: sending the release: "),
        "{}",
        out.stderr
    );

    // The host comes back; the same deploy run again succeeds and cleans up.
    fleet.hosts[0].launch();
    let out = sync(&src, &input, &["--release", "r1"]);
    out.code(0);
    let recs = out.records();
    assert_eq!(recs[1].steps["sync"]["noop"], true);
    let warnings = recs[0].steps["sync"]["warnings"].to_string();
    assert!(
        warnings.contains("removed .incoming-r1, left by an interrupted sync"),
        "{warnings}"
    );
    assert!(roots[0].join("releases/r1/.dp/complete").exists());
    assert!(!roots[0].join("releases/.incoming-r1").exists());
    assert_eq!(
        std::fs::metadata(roots[0].join("releases/r1/big.bin"))
            .unwrap()
            .len(),
        256 << 20
    );
}

#[test]
fn bad_input_gives_clear_errors() {
    let dir = Dir::new("sync-bad");
    dir.write("src/a.txt", "a\n");
    let src = dir.path().join("src");
    let ok_line = local_line("local1", &dir.path().join("host"));

    let out = sync(&dir.path().join("missing"), &ok_line, &[]);
    out.code(2);
    assert!(
        out.stderr.contains("source directory") && out.stderr.contains("missing"),
        "{}",
        out.stderr
    );

    let out = sync(&src, "{\"host\":\"a\"}\nnot json\n", &[]);
    out.code(2);
    assert!(
        out.stderr.contains("stdin:2: invalid JSON"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());

    let out = sync(&src, &ok_line, &["--release", "../evil"]);
    out.code(2);
    assert!(out.stderr.contains("invalid release id"), "{}", out.stderr);

    dir.write("escape/target", "x");
    symlink("../../escape/target", src.join("escaping")).unwrap();
    let out = sync(&src, &ok_line, &[]);
    out.code(2);
    assert!(
        out.stderr
            .contains("symlink escaping points outside the source tree"),
        "{}",
        out.stderr
    );
    std::fs::remove_file(src.join("escaping")).unwrap();

    // A root that cannot be created, and a record without a root: per-host errors.
    let blocker = dir.write("blocker", "a file where a directory should be");
    let mut no_root = Record::new("noroot");
    no_root.transport = dp_core::TransportKind::Local;
    let input = local_line("local1", &blocker.join("root")).replace("local1", "blocked")
        + &serde_json::to_string(&no_root).unwrap()
        + "\n"
        + &ok_line;
    let out = sync(&src, &input, &[]);
    out.code(1);
    let recs = out.records();
    assert_eq!(recs.len(), 3);
    let blocked = recs[0].error.clone().unwrap();
    assert!(
        blocked.message.contains("preparing the release failed"),
        "{}",
        blocked.message
    );
    assert!(
        blocked.message.contains("Not a directory"),
        "{}",
        blocked.message
    );
    assert_eq!(
        recs[1].error.clone().unwrap().message,
        "record has no `root`"
    );
    assert!(recs[2].error.is_none());
    assert!(
        out.stderr
            .contains("dp-sync: blocked: sync: preparing the release failed"),
        "{}",
        out.stderr
    );
}

#[test]
fn shared_paths_are_linked_not_uploaded() {
    let dir = Dir::new("sync-shared");
    dir.write("src/app.py", "print(1)\n");
    dir.write("src/media/upload.png", "local only\n");
    dir.write(
        "deploy.toml",
        "source = \"src\"\nshared = [\"media/\", \"config/.env\"]\n",
    );
    let root = dir.path().join("host");
    let run = || {
        TestCommand::new("dp-sync")
            .current_dir(dir.path())
            .args(["--release", "s1"])
            .stdin(local_line("local1", &root))
            .run()
    };
    let out = run();
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    assert!(
        e.message.contains("shared file") && e.message.contains("config/.env is missing"),
        "{}",
        e.message
    );
    dir.write("host/shared/config/.env", "SECRET=1\n");
    unlock(&[&root]);
    run().code(0);
    let rel = root.join("releases/s1");
    assert_eq!(
        std::fs::read_link(rel.join("media")).unwrap(),
        Path::new("../../shared/media")
    );
    assert_eq!(
        std::fs::read_link(rel.join("config/.env")).unwrap(),
        Path::new("../../../shared/config/.env")
    );
    assert_eq!(
        std::fs::read_to_string(rel.join("config/.env")).unwrap(),
        "SECRET=1\n"
    );
    assert!(root.join("shared/media").is_dir());
    assert!(
        !root.join("shared/media/upload.png").exists(),
        "shared paths are never uploaded"
    );
}
