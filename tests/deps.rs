//! dp-deps with real python3 venv + pip (offline, from wheels built in the test) and npm,
//! over real sshd and the local transport.

use crate::util::{local_line, sh, sync_release, Dir, Fleet, Outcome, TestCommand};
use std::path::{Path, PathBuf};
use std::process::Command;

fn wheel(dir: &Path, name: &str, version: &str) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make_wheel.py");
    sh(
        "python3",
        &[
            script.to_str().unwrap(),
            dir.to_str().unwrap(),
            name,
            version,
        ],
    );
}

/// Syncs `src` as `release`, then runs dp-deps with `args` on the synced records.
fn deploy_deps(src: &Path, input: &str, release: &str, args: &[&str]) -> Outcome {
    TestCommand::new("dp-deps")
        .args(args)
        .stdin(sync_release(src, input, release))
        .run()
}

fn unlock(roots: &[PathBuf]) {
    for r in roots {
        let _ = std::fs::remove_file(r.join(".dp/lock"));
    }
}

/// Runs a program from a release and returns its trimmed stdout.
fn run_in(program: PathBuf, args: &[&str]) -> String {
    let out = Command::new(&program)
        .args(args)
        .env_remove("PYTHONPATH")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        program.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn pip_environments_are_built_reused_and_kept_per_release() {
    let fleet = Fleet::shared();
    let dir = Dir::new("deps-pip");
    let wheels = dir.path().join("wheels");
    wheel(&wheels, "dptool", "1.0");
    wheel(&wheels, "dptool", "2.0");
    dir.write("src/requirements.txt", "dptool==1.0\n");
    dir.write("src/app.py", "print('v1')\n");
    let src = dir.path().join("src");
    let roots = vec![fleet.root_for(0, "deps-pip"), dir.path().join("local")];
    let input = fleet.record_line(0, &roots[0]) + &local_line("local1", &roots[1]);
    let find_links = format!("--pip-arg=--find-links={}", wheels.display());
    let args = ["--kind", "pip", "--pip-arg=--no-index", find_links.as_str()];

    let out = deploy_deps(&src, &input, "r1", &args);
    out.code(0);
    let first: Vec<String> = out
        .records()
        .iter()
        .map(|r| {
            let d = &r.steps["deps"];
            assert_eq!(
                (d["kind"].as_str(), d["cache"].as_str()),
                (Some("pip"), Some("built")),
                "{d}"
            );
            d["key"].as_str().unwrap().to_string()
        })
        .collect();
    for root in &roots {
        let rel = root.join("releases/r1");
        assert_eq!(
            run_in(
                rel.join(".venv/bin/python"),
                &["-c", "import dptool; print(dptool.VERSION)"]
            ),
            "1.0"
        );
        assert_eq!(run_in(rel.join(".venv/bin/dptool"), &[]), "1.0");
    }

    // Same lockfile, new release: the environment is reused, pip does not run.
    unlock(&roots);
    dir.write("src/app.py", "print('v2')\n");
    let logs: Vec<_> = roots
        .iter()
        .zip(&first)
        .map(|(root, key)| {
            std::fs::metadata(root.join(format!(".dp/deps/{key}.log")))
                .unwrap()
                .modified()
                .unwrap()
        })
        .collect();
    let out = deploy_deps(&src, &input, "r2", &args);
    out.code(0);
    for ((r, key), (root, log)) in out
        .records()
        .iter()
        .zip(&first)
        .zip(roots.iter().zip(&logs))
    {
        assert_eq!(r.steps["deps"]["cache"], "hit");
        assert_eq!(r.steps["deps"]["key"], key.as_str());
        let now = std::fs::metadata(root.join(format!(".dp/deps/{key}.log")))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(&now, log, "no pip run on a hit");
        assert_eq!(
            std::fs::canonicalize(root.join("releases/r2/.venv")).unwrap(),
            std::fs::canonicalize(root.join("releases/r1/.venv")).unwrap()
        );
    }

    // A changed lockfile gets its own environment; the old release keeps its own.
    unlock(&roots);
    dir.write("src/requirements.txt", "dptool==2.0\n");
    let out = deploy_deps(&src, &input, "r3", &args);
    out.code(0);
    for (r, key) in out.records().iter().zip(&first) {
        assert_eq!(r.steps["deps"]["cache"], "built");
        assert_ne!(r.steps["deps"]["key"], key.as_str());
    }
    for root in &roots {
        assert_eq!(
            run_in(root.join("releases/r3/.venv/bin/dptool"), &[]),
            "2.0"
        );
        assert_eq!(
            run_in(root.join("releases/r1/.venv/bin/dptool"), &[]),
            "1.0"
        );
        assert_eq!(
            run_in(
                root.join("releases/r1/.venv/bin/python"),
                &["-c", "import dptool; print(dptool.VERSION)"]
            ),
            "1.0"
        );
    }
}

#[test]
fn a_requirement_that_cannot_be_installed_fails_only_that_host() {
    let fleet = Fleet::shared();
    let dir = Dir::new("deps-fail");
    // Only the local host sees this directory (it inherits PIP_FIND_LINKS, kept on
    // purpose with --keep-env; SSH hosts do not), so dptool 3.0 installs there and
    // nowhere else.
    let local_wheels = dir.path().join("local-wheels");
    wheel(&local_wheels, "dptool", "3.0");
    dir.write("src/requirements.txt", "dptool==3.0\n");
    let src = dir.path().join("src");
    let roots = [fleet.root_for(1, "deps-fail"), dir.path().join("local")];
    let input = fleet.record_line(1, &roots[0]) + &local_line("local1", &roots[1]);
    let synced = sync_release(&src, input, "r1");
    let out = TestCommand::new("dp-deps")
        .args([
            "--kind",
            "pip",
            "--pip-arg=--no-index",
            "--keep-env",
            "PIP_FIND_LINKS",
        ])
        .env("PIP_FIND_LINKS", &local_wheels)
        .stdin(synced)
        .run();
    out.code(1);
    let recs = out.records();
    let e = recs[0]
        .error
        .clone()
        .expect("the SSH host cannot install dptool 3.0");
    assert_eq!(e.step, "deps");
    assert!(
        e.message
            .contains("No matching distribution found for dptool==3.0"),
        "{}",
        e.message
    );
    assert!(recs[1].error.is_none(), "{:?}", recs[1].error);
    assert_eq!(recs[1].steps["deps"]["cache"], "built");
    // Nothing complete-looking is left behind on the failed host.
    let left: Vec<_> = std::fs::read_dir(roots[0].join(".dp/deps"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.ends_with(".log"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    assert!(!roots[0].join("releases/r1/.venv").exists());
    assert!(out.stderr.contains(&format!(
        "dp-deps: {}: deps: installing dependencies failed",
        fleet.hosts[1].name
    )));
}

#[test]
fn a_missing_interpreter_is_named() {
    let dir = Dir::new("deps-nopython");
    dir.write("src/requirements.txt", "anything\n");
    let root = dir.path().join("local");
    let out = deploy_deps(
        &dir.path().join("src"),
        &local_line("l", &root),
        "r1",
        &["--python", "python3-missing"],
    );
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    assert!(
        e.message
            .contains("python3-missing is not installed on this host"),
        "{}",
        e.message
    );
}

#[test]
fn concurrent_builds_of_one_environment_build_it_once() {
    let dir = Dir::new("deps-concurrent");
    let wheels = dir.path().join("wheels");
    wheel(&wheels, "dptool", "1.0");
    dir.write("src/requirements.txt", "dptool==1.0\n");
    let root = dir.path().join("local");
    let synced = sync_release(&dir.path().join("src"), local_line("l", &root), "r1");
    let find_links = format!("--pip-arg=--find-links={}", wheels.display());
    let run = || {
        TestCommand::new("dp-deps")
            .args(["--kind", "pip", "--pip-arg=--no-index", find_links.as_str()])
            .stdin(synced.clone())
            .run()
    };
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(run);
        let b = s.spawn(run);
        (a.join().unwrap(), b.join().unwrap())
    });
    a.code(0);
    b.code(0);
    let mut caches: Vec<String> = [&a, &b]
        .iter()
        .map(|o| {
            o.records()[0].steps["deps"]["cache"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    caches.sort();
    assert_eq!(caches, ["built", "hit"]);
    assert_eq!(
        run_in(root.join("releases/r1/.venv/bin/dptool"), &[]),
        "1.0"
    );
}

#[test]
fn npm_and_command_environments_are_linked_into_the_release() {
    let dir = Dir::new("deps-npm");
    let pkg = dir.path().join("pkg");
    dir.write(
        "pkg/package.json",
        r#"{"name":"localpkg","version":"1.0.0","main":"index.js"}"#,
    );
    dir.write("pkg/index.js", "module.exports = 'localpkg 1.0.0';\n");
    let pack = Command::new("npm")
        .args(["pack", "--silent"])
        .current_dir(&pkg)
        .output();
    let Some(pack) = pack.ok().filter(|o| o.status.success()) else {
        panic!("npm is needed for this test: install nodejs and npm");
    };
    let tgz = String::from_utf8_lossy(&pack.stdout).trim().to_string();
    dir.write(
        "src/package.json",
        r#"{"name":"app","version":"1.0.0","dependencies":{"localpkg":"file:localpkg-1.0.0.tgz"}}"#,
    );
    std::fs::copy(pkg.join(&tgz), dir.path().join("src").join(&tgz)).unwrap();
    let lock = Command::new("npm")
        .args([
            "install",
            "--package-lock-only",
            "--offline",
            "--no-audit",
            "--no-fund",
        ])
        .current_dir(dir.path().join("src"))
        .output()
        .unwrap();
    assert!(
        lock.status.success(),
        "{}",
        String::from_utf8_lossy(&lock.stderr)
    );
    let root = dir.path().join("local");
    let input = local_line("l", &root);
    let out = deploy_deps(&dir.path().join("src"), &input, "r1", &[]);
    out.code(0);
    let d = &out.records()[0].steps["deps"];
    assert_eq!(
        (d["kind"].as_str(), d["cache"].as_str()),
        (Some("npm"), Some("built")),
        "auto finds npm: {d}"
    );
    let node = Command::new("node")
        .args(["-e", "console.log(require('localpkg'))"])
        .current_dir(root.join("releases/r1"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&node.stdout).trim(),
        "localpkg 1.0.0"
    );

    // Any command: its directory is linked where asked, and reused while unchanged.
    unlock(std::slice::from_ref(&root));
    let cmd = [
        "--kind",
        "command",
        "--command",
        "echo built > \"$DP_DEPS_DIR/marker\"",
        "--link",
        "vendor/deps",
    ];
    let out = deploy_deps(&dir.path().join("src"), &input, "r2", &cmd);
    out.code(0);
    assert_eq!(out.records()[0].steps["deps"]["cache"], "built");
    assert_eq!(
        std::fs::read_to_string(root.join("releases/r2/vendor/deps/marker")).unwrap(),
        "built\n"
    );
    unlock(std::slice::from_ref(&root));
    let out = deploy_deps(&dir.path().join("src"), &input, "r3", &cmd);
    assert_eq!(out.code(0).records()[0].steps["deps"]["cache"], "hit");
    assert_eq!(
        std::fs::read_to_string(root.join("releases/r3/vendor/deps/marker")).unwrap(),
        "built\n"
    );
}

#[test]
fn cleanup_removes_environments_no_release_uses() {
    let dir = Dir::new("deps-cleanup");
    let root = dir.path().join("local");
    for (rel, key) in [("r1", "k1"), ("r2", "k2")] {
        dir.write(
            &format!("local/releases/{rel}/.dp/deps-key"),
            format!("{key}\n"),
        );
        dir.write(&format!("local/.dp/deps/{key}/.dp-complete"), "");
    }
    dir.write("local/.dp/deps/k3/.dp-complete", "");
    dir.write("local/.dp/deps/k4/.dp-complete", "");
    std::fs::create_dir_all(root.join(".dp/deps/k4.lock")).unwrap();
    std::fs::remove_dir_all(root.join("releases/r1")).unwrap();
    // The layout's cleanup, keeping every release.
    let mut script = dp_core::layout::Script::new(root.to_str().unwrap()).unwrap();
    script
        .push(dp_core::layout::cleanup_sh())
        .push("dp_cleanup 99 ''\n");
    let script = script.into_string();
    let mut local = dp_core::transport::local::LocalTransport::new();
    let out = dp_core::transport::Transport::run_ok(&mut local, &script, "cleanup").unwrap();
    let mut removed: Vec<&str> = std::str::from_utf8(&out).unwrap().lines().collect();
    removed.sort();
    assert_eq!(removed, ["removed deps k1", "removed deps k3"]);
    assert!(root.join(".dp/deps/k2").exists(), "used by a release");
    assert!(root.join(".dp/deps/k4").exists(), "being built");
}

#[test]
fn pip_sees_no_pip_variables_but_those_kept() {
    let dir = Dir::new("deps-pip-env");
    let wheels = dir.path().join("wheels");
    let extra = dir.path().join("extra");
    wheel(&wheels, "dptool", "1.0");
    wheel(&extra, "dptool", "2.0");
    dir.write("src/requirements.txt", "dptool\n");
    let src = dir.path().join("src");
    let root = dir.path().join("local");
    let input = local_line("local1", &root);
    let find_links = format!("--pip-arg=--find-links={}", wheels.display());
    let deps = |release: &str, extra_args: &[&str]| {
        TestCommand::new("dp-deps")
            .args(["--kind", "pip", "--pip-arg=--no-index", find_links.as_str()])
            .args(extra_args)
            // On the deploying machine (the local transport's host shares it).
            .env("PIP_FIND_LINKS", &extra)
            .env("PIP_NO_INDEX", "0")
            .stdin(sync_release(&src, input.as_str(), release))
            .run()
    };
    let version = |release: &str| {
        run_in(
            root.join("releases").join(release).join(".venv/bin/dptool"),
            &[],
        )
    };
    let out = deps("r1", &[]);
    out.code(0);
    assert_eq!(
        version("r1"),
        "1.0",
        "the extra wheel directory was not read"
    );
    let key = out.records()[0].steps["deps"]["key"].clone();
    unlock(std::slice::from_ref(&root));

    // Kept on purpose: pip reads it, and the environment gets a key of its own.
    let out = deps("r2", &["--keep-env", "PIP_FIND_LINKS"]);
    out.code(0);
    assert_eq!(version("r2"), "2.0");
    let d = &out.records()[0].steps["deps"];
    assert_eq!(d["cache"], "built");
    assert_ne!(d["key"], key);
    unlock(std::slice::from_ref(&root));
    TestCommand::new("dp-deps")
        .args(["--keep-env", "PIP FIND"])
        .stdin(input.as_str())
        .run()
        .code(2);
}

#[test]
fn the_build_command_runs_in_each_new_release_and_its_failure_stops_the_host() {
    let fleet = Fleet::shared();
    let dir = Dir::new("deps-build");
    dir.write("src/app.py", "print('v1')\n");
    let src = dir.path().join("src");
    let roots = vec![fleet.root_for(0, "deps-build"), dir.path().join("local")];
    let input = fleet.record_line(0, &roots[0]) + &local_line("local1", &roots[1]);
    // The command kind puts a tool in its environment's bin/; the build finds it first on
    // PATH (linked as vendor/tools: the link the kind makes, recorded by dp-deps).
    let args = [
        "--kind",
        "command",
        "--command",
        "mkdir -p \"$DP_DEPS_DIR/bin\" && printf '#!/bin/sh\\necho collected\\n' > \"$DP_DEPS_DIR/bin/collect\" && chmod +x \"$DP_DEPS_DIR/bin/collect\"",
        "--link",
        "vendor/tools",
        "--build",
        "set -e; collect > static.txt; echo \"$DP_RELEASE $DP_ROOT\" >> static.txt",
    ];
    let out = deploy_deps(&src, &input, "r1", &args);
    out.code(0);
    for (r, root) in out.records().iter().zip(&roots) {
        assert_eq!(r.steps["deps"]["build"], true, "{}", r.steps["deps"]);
        assert_eq!(
            std::fs::read_to_string(root.join("releases/r1/static.txt")).unwrap(),
            format!("collected\nr1 {}\n", root.display())
        );
    }
    unlock(&roots);

    // A build whose first line fails: the host fails in deps, naming the build and
    // showing its output; the second line never runs.
    let mut failing = args.to_vec();
    failing.pop();
    failing.push("set -e; echo 'compilemessages: no msgfmt' >&2; false; touch ran-on");
    let out = deploy_deps(&src, &input, "r2", &failing);
    out.code(1);
    for (r, root) in out.records().iter().zip(&roots) {
        let e = r.error.clone().unwrap();
        assert_eq!(e.step, "deps");
        assert!(
            e.message.contains("the build command ([build])")
                && e.message.contains("compilemessages: no msgfmt"),
            "{}",
            e.message
        );
        assert!(!root.join("releases/r2/ran-on").exists());
    }
    unlock(&roots);
}

/// Environments under `<root>/.dp/deps` marked complete.
fn complete_envs(root: &Path) -> Vec<String> {
    std::fs::read_dir(root.join(".dp/deps"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().join(".dp-complete").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_failing_venv_npm_ci_or_command_line_fails_the_host_and_is_built_again() {
    use std::os::unix::fs::PermissionsExt;
    let dir = Dir::new("deps-failing-steps");
    let bin = dir.path().join("bin");
    // Stubs first on PATH: each fails (with the real tool's kind of message) until its
    // `-ok` file exists, then does what the real tool would.
    let stub = |name: &str, body: &str| {
        let p = dir.write(&format!("bin/{name}"), format!("#!/bin/sh\n{body}"));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let ok = |name: &str| dir.write(&format!("bin/{name}-ok"), "");
    let b = bin.display();
    stub("node", "echo v20.0.0\n");
    stub(
        "npm",
        &format!(
            "[ -f {b}/npm-ok ] && {{ mkdir -p node_modules/leftpad; exit 0; }}\n\
             echo 'npm ERR! code E404' >&2\necho 'npm ERR! 404 Not Found - GET leftpad' >&2\nexit 1\n"
        ),
    );
    stub(
        "python-stub",
        &format!(
            "case $1 in --version) echo 'Python 3.11.99' ;;\n\
             *) [ -f {b}/python-ok ] && exec python3 \"$@\"\n\
             echo 'Error: ensurepip is not available (apt install python3-venv)' >&2; exit 1 ;;\nesac\n"
        ),
    );
    let path = format!("{b}:{}", std::env::var("PATH").unwrap());
    let cases: [(&str, &str, &[&str], &str); 3] = [
        (
            "npm",
            "package-lock.json",
            &["--kind", "npm"],
            "npm ERR! 404 Not Found - GET leftpad",
        ),
        (
            "python",
            "requirements.txt",
            &[
                "--kind",
                "pip",
                "--python",
                "python-stub",
                "--pip-arg=--no-index",
            ],
            "Error: ensurepip is not available",
        ),
        (
            "cmd",
            "deps.lock",
            // The first line fails; the second would succeed and hide it under sh -c.
            &[
                "--kind",
                "command",
                "--lockfile",
                "deps.lock",
                "--command",
                "cat \"$DP_CMD_OK\"\necho fetched > \"$DP_DEPS_DIR/vendor.txt\"",
            ],
            "No such file or directory",
        ),
    ];
    for (name, lockfile, args, message) in cases {
        let src = dir.path().join(format!("src-{name}"));
        dir.write(&format!("src-{name}/{lockfile}"), "\n");
        dir.write(&format!("src-{name}/package.json"), "{}\n");
        let root = dir.path().join(format!("host-{name}"));
        let input = local_line("local1", &root);
        let run = |release: &str| {
            TestCommand::new("dp-deps")
                .args(args)
                .env("PATH", &path)
                .env("DP_CMD_OK", bin.join("cmd-ok"))
                .stdin(sync_release(&src, input.as_str(), release))
                .run()
        };
        let out = run("r1");
        out.code(1);
        let e = out.records()[0].error.clone().unwrap();
        assert!(e.message.contains(message), "{name}: {}", e.message);
        assert!(
            complete_envs(&root).is_empty(),
            "{name}: nothing complete is left"
        );
        unlock(std::slice::from_ref(&root));
        // Fixed on the host: the next deploy builds the same environment again.
        ok(name);
        let out = run("r2");
        out.code(0);
        assert_eq!(out.records()[0].steps["deps"]["cache"], "built", "{name}");
        assert_eq!(complete_envs(&root).len(), 1, "{name}");
        unlock(std::slice::from_ref(&root));
    }
    assert_eq!(
        std::fs::read_to_string(dir.path().join("host-cmd/releases/r2/deps/vendor.txt")).unwrap(),
        "fetched\n"
    );
}
