//! Faults injected on one host of three (real sshd hosts, a real SQLite database): after
//! each one, every host is checked (its `current`, its lock, the migrations applied, the
//! records, the exit code); then the fault is removed, the same command runs again, and
//! the deploy completes with every host's tree equal to the source.

use crate::util::{bin, keygen, Dir, Fleet, Outcome, TestCommand};
use dp_core::{ErrorKind, Record};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How the deploy is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    /// `dp deploy`.
    OneLine,
    /// The pipeline `dp deploy --print-pipeline` prints, run by bash with pipefail.
    Pipeline,
}

/// Three hosts of the shared fleet with deploy roots of their own, a site with a pending
/// pre-phase migration, and a deploy.toml whose host lines a fault may change.
struct Case {
    dir: Dir,
    roots: Vec<PathBuf>,
    /// (name, port) of each host as the config names it.
    hosts: Vec<(String, u16)>,
    known_hosts: PathBuf,
    client_key: PathBuf,
    user: String,
    extra: String,
}

impl Case {
    fn new(name: &str) -> Case {
        Case::with_migrations(name, true)
    }

    /// A case whose site has migrations, or none (then dp-restart alone decides).
    fn with_migrations(name: &str, migrations: bool) -> Case {
        Case::on(Fleet::shared(), name, migrations)
    }

    /// A case on the first three hosts of `fleet`.
    fn on(fleet: &Fleet, name: &str, migrations: bool) -> Case {
        let dir = Dir::new(name);
        let roots: Vec<PathBuf> = (0..3).map(|i| fleet.root_for(i, name)).collect();
        dir.write("site/index.html", "v1\n");
        dir.write("site/app/views.py", "def index(): return 'v1'\n");
        if migrations {
            dir.write(
                "site/migrations/1_items.sql",
                "CREATE TABLE items (id INTEGER PRIMARY KEY);\n",
            );
        }
        let known_hosts = dir.path().join("known_hosts");
        std::fs::copy(&fleet.known_hosts, &known_hosts).unwrap();
        let case = Case {
            hosts: (0..3)
                .map(|i| (fleet.hosts[i].name.clone(), fleet.hosts[i].port))
                .collect(),
            dir,
            roots,
            known_hosts,
            client_key: fleet.client_key.clone(),
            user: fleet.user.clone(),
            extra: String::new(),
        };
        case.write_config();
        case
    }

    fn write_config(&self) {
        let hosts: Vec<String> = self
            .hosts
            .iter()
            .zip(&self.roots)
            .enumerate()
            .map(|(i, ((name, port), root))| {
                let roles = if i == 0 { "\"web\", \"migrate\"" } else { "\"web\"" };
                format!(
                    "  {{ name = \"{name}\", addr = \"127.0.0.1\", port = {port}, root = \"{}\", roles = [{roles}] }},",
                    root.display()
                )
            })
            .collect();
        self.dir.write(
            "deploy.toml",
            format!(
                "app = \"faults\"\nsource = \"site\"\nknown_hosts = \"{kh}\"\nidentity = \"{key}\"\n\
                 connect_timeout = \"3s\"\n{extra}\n\
                 [restart]\nbatch = \"1\"\ncommand = \"echo {{release}} > {{root}}/restarted\"\n\
                 [stages.test]\nuser = \"{user}\"\nhosts = [\n{hosts}\n]\n",
                kh = self.known_hosts.display(),
                key = self.client_key.display(),
                extra = self.extra,
                user = self.user,
                hosts = hosts.join("\n"),
            ),
        );
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.dir.path().join("db.sqlite3").display())
    }

    fn command(&self, program: &str) -> TestCommand {
        TestCommand::new(program)
            .current_dir(self.dir.path())
            .env("DATABASE_URL", self.url())
            .env("DP_CACHE_DIR", self.dir.path().join("cache"))
    }

    /// Sets the restart command (a TOML string's contents), with `extra` lines after it.
    fn set_restart(&self, command: &str, extra: &str) {
        let config = std::fs::read_to_string(self.dir.path().join("deploy.toml")).unwrap();
        let from = "command = \"echo {release} > {root}/restarted\"";
        assert!(config.contains(from), "{config}");
        self.dir.write(
            "deploy.toml",
            config.replace(from, &format!("command = \"{command}\"\n{extra}")),
        );
    }

    /// `dp-hosts | dp-sync --release RELEASE`: the hosts uploaded and locked, not switched.
    fn synced(&self, release: &str) -> Outcome {
        let up = self.command("dp-hosts").run();
        up.code(0);
        let synced = self
            .command("dp-sync")
            .args(["--release", release])
            .stdin(up.stdout.clone())
            .run();
        synced.code(0);
        synced
    }

    /// Deploys `release` in `form`, with `extra` arguments to `dp deploy`.
    fn deploy(&self, form: Form, release: &str, extra: &[&str]) -> Outcome {
        self.deploy_command(form, release, extra).run()
    }

    /// The command [`Case::deploy`] runs.
    fn deploy_command(&self, form: Form, release: &str, extra: &[&str]) -> TestCommand {
        let mut args = vec!["deploy", "--release", release];
        args.extend_from_slice(extra);
        match form {
            Form::OneLine => self.command("dp").args(&args),
            Form::Pipeline => {
                args.push("--print-pipeline");
                let printed = self.command("dp").args(&args).run();
                printed.code(0);
                let tools = bin("dp").parent().unwrap().display().to_string();
                self.command("dp")
                    .program("bash")
                    .current_dir(self.dir.path())
                    .args(["-o", "pipefail", "-c", &printed.stdout])
                    .env(
                        "PATH",
                        format!("{tools}:{}", std::env::var("PATH").unwrap_or_default()),
                    )
            }
        }
    }

    /// The first release, live everywhere, and the next one ready in the source: a
    /// changed page and a pending pre-phase migration.
    fn live_then_change(&self) {
        self.live_then_change_page();
        self.dir.write(
            "site/migrations/2_more.sql",
            "CREATE TABLE more (id INTEGER PRIMARY KEY);\n",
        );
    }

    /// [`Case::live_then_change`] without a new migration: dp-restart alone decides.
    fn live_then_change_page(&self) {
        self.deploy(Form::OneLine, "r1", &[]).code(0);
        self.dir.write("site/index.html", "v2\n");
    }

    /// Versions the database should have after the next release.
    fn expected(&self) -> Vec<i64> {
        let m = self.dir.path().join("site/migrations");
        match (m.is_dir(), m.join("2_more.sql").exists()) {
            (false, _) => vec![],
            (true, false) => vec![1],
            (true, true) => vec![1, 2],
        }
    }

    /// The versions applied to the database.
    fn applied(&self) -> Vec<i64> {
        if !self.dir.path().join("site/migrations").is_dir() {
            return vec![];
        }
        let out = self.command("dp-migrate").args(["status"]).run();
        out.code(0);
        out.stdout
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| !v["applied_at"].is_null())
            .map(|v| v["version"].as_i64().unwrap())
            .collect()
    }

    /// Invariant A after a fault on host `bad`: nobody switched, no pre migration, no
    /// lock left, every record says what happened, exit 1.
    #[track_caller]
    fn assert_nothing_switched(&self, out: &Outcome, bad: usize, bad_kind: ErrorKind) {
        out.code(1);
        let records = out.records();
        assert_eq!(records.len(), 3, "no record dropped\n{}", out.stdout);
        let bad_name = &self.hosts[bad].0;
        for (i, (r, root)) in records.iter().zip(&self.roots).enumerate() {
            assert_eq!(current(root), "releases/r1", "{}: not switched", r.host);
            assert!(
                !root.join(".dp/lock").exists(),
                "{}: lock released: {:?}",
                r.host,
                std::fs::read_to_string(root.join(".dp/lock"))
            );
            let e = r
                .error
                .clone()
                .unwrap_or_else(|| panic!("{r:?} has no error"));
            if i == bad {
                assert_eq!(e.kind, bad_kind, "{e:?}");
            } else {
                assert_eq!(e.kind, ErrorKind::NotSwitched, "{}: {e:?}", r.host);
                assert!(
                    e.message
                        .starts_with(&format!("not switched: {bad_name} failed in ")),
                    "{}: names the host and step: {e:?}",
                    r.host
                );
            }
        }
        let before: Vec<i64> = self.expected().into_iter().filter(|&v| v < 2).collect();
        assert_eq!(
            self.applied(),
            before,
            "the pre-phase migration was not applied"
        );
    }

    /// The rerun without the fault completes: every host on `release`, the migration
    /// applied, the trees equal to the source.
    #[track_caller]
    fn assert_rerun_completes(&self, form: Form, release: &str) {
        let out = self.deploy(form, release, &[]);
        out.code(0);
        for root in &self.roots {
            assert_eq!(current(root), format!("releases/{release}"));
            assert!(!root.join(".dp/lock").exists());
            assert_same_tree(&self.dir.path().join("site"), &root.join("current"));
        }
        assert_eq!(self.applied(), self.expected());
    }
}

fn current(root: &Path) -> String {
    std::fs::read_link(root.join("current"))
        .map(|p| p.display().to_string())
        .unwrap_or_default()
}

/// Every file of `src` is in `release` with the same bytes, and `release` has no other
/// files than dp's own.
#[track_caller]
fn assert_same_tree(src: &Path, release: &Path) {
    fn files(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(root).unwrap().to_path_buf();
            if rel.starts_with(".dp") || rel.as_os_str() == "REVISION" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                files(root, &e.path(), out);
            } else {
                out.push(rel);
            }
        }
    }
    let (mut a, mut b) = (Vec::new(), Vec::new());
    files(src, src, &mut a);
    files(release, release, &mut b);
    a.sort();
    b.sort();
    assert_eq!(a, b, "the same files");
    for f in &a {
        assert_eq!(
            std::fs::read(src.join(f)).unwrap(),
            std::fs::read(release.join(f)).unwrap(),
            "{}",
            f.display()
        );
    }
}

/// Two tests of one case: through `dp deploy` and through the printed pipeline.
macro_rules! in_both_forms {
    ($case:ident => $one_line:ident, $pipeline:ident) => {
        #[test]
        fn $one_line() {
            $case(Form::OneLine);
        }

        #[test]
        fn $pipeline() {
            $case(Form::Pipeline);
        }
    };
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    crate::util::free_port()
}

fn closed_port_case(form: Form) {
    let name = format!("faults-closed-port-{form:?}").to_lowercase();
    let mut case = Case::new(&name);
    case.live_then_change();
    let port = case.hosts[2].1;
    case.hosts[2].1 = closed_port();
    case.write_config();
    let out = case.deploy(form, "r2", &[]);
    case.assert_nothing_switched(&out, 2, ErrorKind::Unreachable);
    let bad = &out.records()[2];
    assert!(
        bad.error
            .as_ref()
            .unwrap()
            .message
            .contains("cannot connect"),
        "{bad:?}"
    );
    case.hosts[2].1 = port;
    case.write_config();
    case.assert_rerun_completes(form, "r2");
}

in_both_forms!(closed_port_case => a_closed_port_on_one_host_switches_no_host, a_closed_port_on_one_host_switches_no_host_in_the_pipeline);

fn changed_key_case(form: Form) {
    let name = format!("faults-host-key-{form:?}").to_lowercase();
    // No migrations: dp-restart is the one that must refuse to switch.
    let case = Case::with_migrations(&name, false);
    case.live_then_change_page();
    // Host 3 now presents a key known_hosts does not have for it.
    let fleet = Fleet::shared();
    let other = keygen(&case.dir.path().join("other_key"), "ed25519");
    let good = std::fs::read_to_string(&case.known_hosts).unwrap();
    let line = fleet.hosts[2].known_hosts_line();
    let forged = good.replace(
        &line,
        &format!("[127.0.0.1]:{} {other}\n", fleet.hosts[2].port),
    );
    assert_ne!(good, forged);
    std::fs::write(&case.known_hosts, forged).unwrap();
    let out = case.deploy(form, "r2", &[]);
    case.assert_nothing_switched(&out, 2, ErrorKind::Failed);
    let bad = &out.records()[2];
    assert!(
        bad.error
            .as_ref()
            .unwrap()
            .message
            .contains("HOST KEY CHANGED"),
        "{bad:?}"
    );
    std::fs::write(&case.known_hosts, good).unwrap();
    case.assert_rerun_completes(form, "r2");
}

in_both_forms!(changed_key_case => a_changed_host_key_on_one_host_switches_no_host, a_changed_host_key_on_one_host_switches_no_host_in_the_pipeline);

fn failing_migration_case(form: Form) {
    let name = format!("faults-migration-{form:?}").to_lowercase();
    let case = Case::new(&name);
    case.live_then_change();
    let good = std::fs::read_to_string(case.dir.path().join("site/migrations/2_more.sql")).unwrap();
    case.dir.write(
        "site/migrations/2_more.sql",
        "INSERT INTO nowhere VALUES (1);\n",
    );
    let out = case.deploy(form, "r2", &[]);
    out.code(1);
    for (r, root) in out.records().iter().zip(&case.roots) {
        let e = r.error.clone().unwrap();
        assert_eq!((e.step.as_str(), e.kind), ("migrate", ErrorKind::Failed));
        assert!(e.message.contains("migration 2"), "{e:?}");
        assert_eq!(current(root), "releases/r1");
        assert!(!root.join(".dp/lock").exists());
    }
    assert_eq!(case.applied(), vec![1]);
    // The fix changes the source (the migrations ship with it): a new release id.
    case.dir.write("site/migrations/2_more.sql", good);
    case.assert_rerun_completes(form, "r3");
}

in_both_forms!(failing_migration_case => a_failing_pre_migration_switches_no_host, a_failing_pre_migration_switches_no_host_in_the_pipeline);

fn allow_unreachable_case(form: Form) {
    let name = format!("faults-allow-unreachable-{form:?}").to_lowercase();
    let mut case = Case::new(&name);
    case.live_then_change();
    case.dir.write(
        "site/migrations/post/3_contract.sql",
        "CREATE TABLE contracted (id INTEGER);\n",
    );
    let port = case.hosts[1].1;
    case.hosts[1].1 = closed_port();
    case.write_config();
    let out = case.deploy(form, "r2", &["--allow-unreachable", "1"]);
    out.code(1);
    let records = out.records();
    for (i, (r, root)) in records.iter().zip(&case.roots).enumerate() {
        if i == 1 {
            assert_eq!(r.error.as_ref().unwrap().kind, ErrorKind::Unreachable);
            assert_eq!(current(root), "releases/r1", "left out");
        } else {
            assert!(r.error.is_none(), "{r:?}");
            assert_eq!(current(root), "releases/r2");
            assert!(
                r.steps["migrate_post"]["skipped"]
                    .as_str()
                    .is_some_and(|s| s.contains(&case.hosts[1].0)),
                "contract migrations wait for every host: {:?}",
                r.steps
            );
        }
        assert!(!root.join(".dp/lock").exists());
    }
    assert_eq!(case.applied(), vec![1, 2], "expand applied, contract not");
    // Two unreachable hosts are more than allowed: nobody switches.
    let port0 = case.hosts[0].1;
    case.hosts[0].1 = closed_port();
    case.write_config();
    case.dir.write("site/index.html", "v3\n");
    let out = case.deploy(form, "r3", &["--allow-unreachable", "1"]);
    out.code(1);
    let r = &out.records()[2];
    let e = r.error.as_ref().unwrap();
    assert_eq!(e.kind, ErrorKind::NotSwitched, "{e:?}");
    assert!(
        e.message.contains("2 hosts unreachable, 1 allowed"),
        "{e:?}"
    );
    assert_eq!(current(&case.roots[2]), "releases/r2");
    // Back again: everything goes out.
    case.hosts[0].1 = port0;
    case.hosts[1].1 = port;
    case.write_config();
    let out = case.deploy(form, "r3", &[]);
    out.code(0);
    for root in &case.roots {
        assert_eq!(current(root), "releases/r3");
        assert_same_tree(&case.dir.path().join("site"), &root.join("current"));
    }
    assert_eq!(case.applied(), vec![1, 2, 3]);
}

in_both_forms!(allow_unreachable_case => allow_unreachable_leaves_out_a_dead_host_and_no_more, allow_unreachable_leaves_out_a_dead_host_and_no_more_in_the_pipeline);

/// Records that fail before dp-restart, fed to it directly: it switches none.
#[test]
fn dp_restart_switches_nothing_when_any_record_failed() {
    let case = Case::new("faults-restart-barrier");
    case.live_then_change();
    let synced = case.synced("r2");
    let mut records: Vec<Record> = synced.records();
    records[1].fail("deps", "pip exploded");
    let input: String = records
        .iter()
        .map(|r| serde_json::to_string(r).unwrap() + "\n")
        .collect();
    let out = case.command("dp-restart").stdin(input).run();
    out.code(1);
    for (i, (r, root)) in out.records().iter().zip(&case.roots).enumerate() {
        assert_eq!(current(root), "releases/r1");
        assert!(
            !root.join(".dp/lock").exists(),
            "lock released on {}",
            r.host
        );
        let e = r.error.as_ref().unwrap();
        if i != 1 {
            assert_eq!(e.kind, ErrorKind::NotSwitched);
            assert!(
                e.message
                    .contains(&format!("{} failed in deps: pip exploded", case.hosts[1].0)),
                "{e:?}"
            );
        }
    }
    assert!(out.stderr.contains("pip exploded"), "{}", out.stderr);
}

/// A small tmpfs mounted over a host's deploy root for the length of a test.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` over `path` (empty), or `None` when not root.
    fn mount(path: &Path, size: &str) -> Option<Tmpfs> {
        if !crate::util::getuid_is_root() {
            eprintln!("skipped: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", path.display());
        Some(Tmpfs {
            path: path.to_path_buf(),
        })
    }

    fn remount(&self, mode: &str) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.path)
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount {mode}");
    }

    /// Fills the file system to the last byte.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join("filler")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let small = [0u8; 512];
        while f.write_all(&small).is_ok() {}
        let _ = f.write_all(&[0u8]);
    }

    /// Fills the file system, then frees `bytes` of it again.
    fn fill_leaving(&self, bytes: u64) {
        self.fill();
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(self.path.join("filler"))
            .unwrap();
        let len = f.metadata().unwrap().len();
        f.set_len(len.saturating_sub(bytes)).unwrap();
    }

    fn unfill(&self) {
        std::fs::remove_file(self.path.join("filler")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

/// A case whose host 3 has a tmpfs of its own as its deploy root, with r1 live.
fn tmpfs_case(name: &str) -> Option<(Case, Tmpfs)> {
    let case = Case::new(name);
    let fs = Tmpfs::mount(&case.roots[2], "4m")?;
    case.live_then_change();
    Some((case, fs))
}

#[test]
fn a_full_disk_on_one_host_switches_no_host_and_leaves_no_lock() {
    for form in [Form::OneLine, Form::Pipeline] {
        let name = format!("faults-full-disk-{form:?}").to_lowercase();
        let Some((case, fs)) = tmpfs_case(&name) else {
            return;
        };
        fs.fill();
        let out = case.deploy(form, "r2", &[]);
        case.assert_nothing_switched(&out, 2, ErrorKind::Failed);
        let e = out.records()[2].error.clone().unwrap();
        assert_eq!(e.step, "sync");
        assert!(e.message.contains("No space left on device"), "{e:?}");
        assert!(
            !case.roots[2].join(".dp/lock").exists(),
            "no empty lock left behind"
        );
        fs.unfill();
        case.assert_rerun_completes(form, "r2");

        // Room for the lock but not for the upload (which goes inside the script, and
        // is written to a file there): the cause is named all the same.
        case.dir.write("site/index.html", "v3\n");
        fs.fill_leaving(4096);
        let out = case.deploy(form, "r3", &[]);
        out.code(1);
        for (r, root) in out.records().iter().zip(&case.roots) {
            assert_eq!(current(root), "releases/r2", "{}: not switched", r.host);
            assert!(!root.join(".dp/lock").exists(), "{}: lock left", r.host);
        }
        let e = out.records()[2].error.clone().unwrap();
        assert_eq!(e.step, "sync");
        assert!(e.message.contains("No space left on device"), "{e:?}");
        fs.unfill();
        case.assert_rerun_completes(form, "r3");
    }
}

#[test]
fn a_read_only_root_on_one_host_switches_no_host() {
    for form in [Form::OneLine, Form::Pipeline] {
        let name = format!("faults-read-only-{form:?}").to_lowercase();
        let Some((case, fs)) = tmpfs_case(&name) else {
            return;
        };
        fs.remount("ro");
        let out = case.deploy(form, "r2", &[]);
        case.assert_nothing_switched(&out, 2, ErrorKind::Failed);
        let e = out.records()[2].error.clone().unwrap();
        assert_eq!(e.step, "sync");
        assert!(e.message.contains("Read-only file system"), "{e:?}");
        assert!(!e.message.contains("lock is held"), "{e:?}");
        fs.remount("rw");
        case.assert_rerun_completes(form, "r2");
    }
}

#[test]
fn an_unreadable_lock_is_reported_and_expires_with_its_lease() {
    let case = Case::new("faults-corrupt-lock");
    case.live_then_change();
    // An empty lock, as a full disk left it before: refused while its lease may run ...
    let lock = case.roots[2].join(".dp/lock");
    std::fs::write(&lock, "").unwrap();
    let out = case.deploy(Form::OneLine, "r2", &["--lease", "60s"]);
    out.code(1);
    for (i, (r, root)) in out.records().iter().zip(&case.roots).enumerate() {
        assert_eq!(current(root), "releases/r1");
        let kind = r.error.as_ref().unwrap().kind;
        if i < 2 {
            assert_eq!(kind, ErrorKind::NotSwitched);
            assert!(
                !root.join(".dp/lock").exists(),
                "{}: lock given back",
                r.host
            );
        }
    }
    let e = out.records()[2].error.clone().unwrap();
    // Written moments ago (seconds, on a busy machine).
    let age = e
        .message
        .split("deploy lock is corrupt (0 bytes, written ")
        .nth(1)
        .and_then(|rest| rest.split(" s ago)").next())
        .and_then(|n| n.parse::<u64>().ok());
    assert!(age.is_some_and(|s| s <= 10), "{e:?}");
    assert!(lock.exists(), "another's lock is not removed");
    // ... and taken over once a lease has passed since it was written.
    let old = std::process::Command::new("touch")
        .args(["-d", "2 minutes ago"])
        .arg(&lock)
        .status()
        .unwrap();
    assert!(old.success());
    let out = case.deploy(Form::OneLine, "r2", &["--lease", "60s"]);
    out.code(0);
    assert!(
        out.records()[2].steps["sync"]["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("took over an expired deploy lock")),
        "{}",
        out.stdout
    );
    for root in &case.roots {
        assert_eq!(current(root), "releases/r2");
        assert!(!root.join(".dp/lock").exists());
    }
}

/// Processes on this machine whose command line contains `marker`.
fn running(marker: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmd) = std::fs::read(entry.path().join("cmdline")) {
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            if cmd.contains(marker) && !cmd.contains("cargo") {
                found.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn a_restart_command_that_hangs_is_stopped_at_its_deadline() {
    for form in [Form::OneLine, Form::Pipeline] {
        let name = format!("faults-restart-hangs-{form:?}").to_lowercase();
        let case = Case::new(&name);
        case.live_then_change();
        // On h2, the restart into r2 never returns, and what it started would stay.
        let marker = format!("sleep 1001.{}", form as u8);
        case.set_restart(
            &format!(
                "if [ {{host}} = h2 ] && [ {{release}} = r2 ]; then {marker}; fi; echo {{release}} > {{root}}/restarted"
            ),
            "timeout = \"2s\"",
        );
        let out = case.deploy(form, "r2", &[]);
        out.code(1);
        let records = out.records();
        // Batch 1: h1 went live; h2 hung, was stopped and switched back; h3 was skipped.
        assert!(records[0].error.is_none(), "{:?}", records[0]);
        assert_eq!(current(&case.roots[0]), "releases/r2");
        let e = records[1].error.clone().unwrap();
        assert_eq!(e.kind, ErrorKind::SwitchedBack, "{e:?}");
        assert!(
            e.message
                .contains("the restart command did not finish within 2s"),
            "{e:?}"
        );
        assert_eq!(current(&case.roots[1]), "releases/r1");
        assert_eq!(records[2].error.clone().unwrap().kind, ErrorKind::Skipped);
        assert_eq!(current(&case.roots[2]), "releases/r1");
        for root in &case.roots {
            assert!(!root.join(".dp/lock").exists());
        }
        assert!(
            running(&marker).is_empty(),
            "nothing the restart started is left: {:?}",
            running(&marker)
        );
        // Fixed: the same release goes out everywhere.
        case.write_config();
        case.assert_rerun_completes(form, "r2");
    }
}

/// Sends `signal` to each of `pids`.
fn signal(pids: &[u32], signal: &str) {
    for p in pids {
        // A process may have ended meanwhile.
        let _ = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &p.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Sends `signal` to every process of the process group `group`.
fn signal_group(group: u32, signal: &str) {
    let ok = std::process::Command::new("kill")
        .args(["-s", signal, "--", &format!("-{group}")])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -s {signal} -- -{group}");
}

/// Waits for `child` at most `within`; kills it and fails the test past that.
fn wait_bounded(mut child: std::process::Child, within: Duration) -> Outcome {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            return Outcome {
                code: status.code().unwrap_or(-1),
                stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                elapsed: started.elapsed(),
            };
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "still waiting after {within:?}: a wait without end\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One host's session processes stopped (STOP: the host hangs) or killed (KILL: the
/// session drops) while its upload is under way.
fn session_fault_case(form: Form, sig: &str) {
    // A fleet of its own: the test signals every session process of its third host.
    let fleet = Fleet::start(3);
    let name = format!("faults-session-{sig}-{form:?}").to_lowercase();
    let mut case = Case::on(&fleet, &name, true);
    case.extra = "server_alive_interval = \"1s\"\nserver_alive_count_max = 2\n".into();
    case.write_config();
    case.live_then_change();
    // Large enough that the upload is still running when the host is hit.
    let big = case.dir.path().join("site/big.bin");
    std::fs::write(&big, vec![7u8; 192 << 20]).unwrap();
    let sshd = fleet.hosts[2].pid().expect("sshd pid");
    let (child, _home) = case.deploy_command(form, "r2", &[]).spawn();
    // Wait for the host's tar to be receiving, then hit everything of that session.
    let started = Instant::now();
    let hit = loop {
        let procs = crate::util::descendants(sshd);
        let receiving = procs.iter().any(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "tar")
        });
        if receiving {
            signal(&procs, sig);
            break procs;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the upload never started on h3"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    let out = wait_bounded(child, Duration::from_secs(60));
    if sig == "STOP" {
        signal(&hit, "CONT");
    }
    case.assert_nothing_switched(&out, 2, ErrorKind::Failed);
    let e = out.records()[2].error.clone().unwrap();
    assert_eq!(e.step, "sync");
    if sig == "STOP" {
        assert!(e.message.contains("not answering"), "{e:?}");
    }
    // Nothing dp started on the host keeps running once its session is gone.
    let deadline = Instant::now() + Duration::from_secs(20);
    while hit
        .iter()
        .any(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(
            Instant::now() < deadline,
            "left running on h3: {:?}",
            crate::util::descendants(sshd)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    case.assert_rerun_completes(form, "r2");
}

fn stopped_session_case(form: Form) {
    session_fault_case(form, "STOP");
}

fn killed_session_case(form: Form) {
    session_fault_case(form, "KILL");
}

in_both_forms!(stopped_session_case => a_host_that_stops_answering_mid_upload_fails_within_the_keepalive_limit, a_host_that_stops_answering_mid_upload_fails_in_the_pipeline);
in_both_forms!(killed_session_case => a_session_killed_mid_upload_switches_no_host, a_session_killed_mid_upload_switches_no_host_in_the_pipeline);

/// Waits until `ready` holds, at most a minute.
#[track_caller]
fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let started = Instant::now();
    while !ready() {
        assert!(started.elapsed() < Duration::from_secs(60), "never: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// True while an upload of `release` is under way on the host of `root`.
fn uploading(root: &Path, release: &str) -> bool {
    let releases = root.join("releases");
    releases.join(format!(".incoming-{release}")).exists()
        || releases.join(format!(".tmp-{release}")).exists()
}

#[test]
fn sigint_mid_upload_leaves_every_host_on_its_release_and_unlocked() {
    for form in [Form::OneLine, Form::Pipeline] {
        let name = format!("faults-sigint-upload-{form:?}").to_lowercase();
        let case = Case::new(&name);
        case.live_then_change();
        std::fs::write(case.dir.path().join("site/big.bin"), vec![3u8; 160 << 20]).unwrap();
        // As a terminal does: the signal goes to every process of the foreground group.
        let cmd = case.deploy_command(form, "r2", &[]).process_group();
        let (child, _home) = cmd.spawn();
        let group = child.id();
        wait_until("an upload under way", || {
            case.roots.iter().any(|r| uploading(r, "r2"))
        });
        signal_group(group, "INT");
        let out = wait_bounded(child, Duration::from_secs(60));
        out.code(130);
        let records = out.records();
        assert_eq!(records.len(), 3, "every record printed\n{}", out.stderr);
        for (r, root) in records.iter().zip(&case.roots) {
            assert_eq!(current(root), "releases/r1", "{} not switched", r.host);
            assert!(!root.join(".dp/lock").exists(), "{}: lock released", r.host);
            let kind = r.error.as_ref().map(|e| e.kind);
            assert!(
                matches!(
                    kind,
                    Some(ErrorKind::Interrupted) | Some(ErrorKind::NotSwitched)
                ),
                "{r:?}"
            );
        }
        assert!(
            records
                .iter()
                .any(|r| r.error.as_ref().unwrap().kind == ErrorKind::Interrupted),
            "{}",
            out.stdout
        );
        assert_eq!(case.applied(), vec![1], "no migration after the interrupt");
        // The hosts' tar saw its input end; nothing is left running for this deploy.
        wait_until("no process of this deploy left", || {
            running(&format!("/{name}/")).is_empty()
        });
        case.assert_rerun_completes(Form::OneLine, "r2");
    }
}

#[test]
fn sigint_mid_rollout_finishes_the_batch_and_starts_no_other() {
    let case = Case::new("faults-sigint-rollout");
    case.live_then_change();
    case.set_restart("sleep 1; echo {release} > {root}/restarted", "");
    let (child, _home) = case
        .command("dp")
        .args(["deploy", "--release", "r2"])
        .process_group()
        .spawn();
    let group = child.id();
    // h1 is switched and its restart is running: the first batch is under way.
    wait_until("h1 switched", || current(&case.roots[0]) == "releases/r2");
    signal_group(group, "INT");
    let out = wait_bounded(child, Duration::from_secs(60));
    out.code(130);
    let records = out.records();
    assert!(records[0].error.is_none(), "{:?}", records[0]);
    assert_eq!(
        std::fs::read_to_string(case.roots[0].join("restarted")).unwrap(),
        "r2\n",
        "the batch being switched finished: restarted into r2"
    );
    for (r, root) in records.iter().zip(&case.roots).skip(1) {
        assert_eq!(
            r.error.as_ref().unwrap().kind,
            ErrorKind::Interrupted,
            "{r:?}"
        );
        assert_eq!(current(root), "releases/r1");
        assert_eq!(
            std::fs::read_to_string(root.join("restarted")).unwrap(),
            "r1\n"
        );
    }
    for root in &case.roots {
        assert!(!root.join(".dp/lock").exists());
    }
    assert!(out.stderr.contains("deploy FAILED"), "{}", out.stderr);
    // Run again: the rest of the fleet follows.
    case.assert_rerun_completes(Form::OneLine, "r2");
}

#[test]
fn a_failing_health_check_switches_that_host_back_and_stops_the_rollout() {
    let case = Case::new("faults-health");
    case.live_then_change();
    let config = std::fs::read_to_string(case.dir.path().join("deploy.toml")).unwrap();
    case.dir.write(
        "deploy.toml",
        config.replace(
            "[stages.test]",
            "health_cmd = \"test {host} != h2\"\nhealth_timeout = \"1s\"\n[stages.test]",
        ),
    );
    let out = case.deploy(Form::OneLine, "r2", &[]);
    out.code(1);
    let records = out.records();
    assert!(records[0].error.is_none());
    assert_eq!(current(&case.roots[0]), "releases/r2");
    let e = records[1].error.clone().unwrap();
    assert_eq!(e.kind, ErrorKind::SwitchedBack, "{e:?}");
    assert!(e.message.contains("health check"), "{e:?}");
    assert_eq!(current(&case.roots[1]), "releases/r1");
    assert_eq!(
        std::fs::read_to_string(case.roots[1].join("restarted")).unwrap(),
        "r1\n",
        "restarted again into the release it went back to"
    );
    assert_eq!(records[2].error.clone().unwrap().kind, ErrorKind::Skipped);
    assert_eq!(current(&case.roots[2]), "releases/r1");
    for root in &case.roots {
        assert!(!root.join(".dp/lock").exists());
    }
    let history = std::fs::read_to_string(case.roots[1].join(".dp/history.jsonl")).unwrap();
    assert!(
        history
            .lines()
            .last()
            .unwrap()
            .contains("\"result\":\"switched-back\""),
        "{history}"
    );
    case.write_config();
    case.assert_rerun_completes(Form::OneLine, "r2");
}

#[test]
fn two_deploys_at_once_one_goes_on_and_the_other_changes_nothing() {
    let case = Case::new("faults-two-at-once");
    case.live_then_change();
    case.set_restart("sleep 1; echo {release} > {root}/restarted", "");
    let (x, y) = std::thread::scope(|s| {
        let x = s.spawn(|| case.deploy(Form::OneLine, "rx", &[]));
        let y = s.spawn(|| case.deploy(Form::OneLine, "ry", &[]));
        (x.join().unwrap(), y.join().unwrap())
    });
    let (winner, loser) = match (x.code, y.code) {
        (0, 1) => ("rx", &y),
        (1, 0) => ("ry", &x),
        codes => panic!(
            "one deploy must be refused: {codes:?}\n{}\n{}",
            x.stderr, y.stderr
        ),
    };
    for r in loser.records() {
        let e = r.error.unwrap();
        assert!(
            e.message
                .contains(&format!("deploy lock is held by release {winner}")),
            "{e:?}"
        );
    }
    for root in &case.roots {
        assert_eq!(current(root), format!("releases/{winner}"));
        assert!(!root.join(".dp/lock").exists());
    }
    assert_eq!(case.applied(), vec![1, 2], "migrated once");
}

/// Runs `program args` with `stdin` in the case's directory and checks that it was
/// refused with exit 2 before any host was touched, naming `what`.
#[track_caller]
fn refused(case: &Case, program: &str, args: &[&str], stdin: &str, what: &str) {
    let out = case.command(program).args(args).stdin(stdin).run();
    out.code(2);
    assert!(out.stdout.is_empty(), "{}", out.stdout);
    assert!(
        out.stderr.contains(what),
        "expected {what:?} in:\n{}",
        out.stderr
    );
    for root in &case.roots {
        assert_eq!(current(root), "releases/r1", "{program} {args:?}");
        assert!(!root.join(".dp/lock").exists());
        assert!(!root.join("releases/r2").exists());
    }
}

#[test]
fn bad_input_is_refused_before_any_host_is_touched() {
    let case = Case::new("faults-bad-input");
    case.live_then_change();
    let fleet = Fleet::shared();
    let line = |edit: &dyn Fn(&mut Record)| {
        let mut r = fleet.record(0);
        r.root = Some(case.roots[0].display().to_string());
        r.ssh.known_hosts = Some(case.known_hosts.clone());
        edit(&mut r);
        serde_json::to_string(&r).unwrap() + "\n"
    };
    let sync = ["--src", "site", "--release", "r2"];
    for (edit, what) in [
        (
            &(|r: &mut Record| r.root = Some("/".into())) as &dyn Fn(&mut Record),
            "root \"/\" is the file system's root",
        ),
        (
            &|r: &mut Record| r.root = Some("-rf".into()),
            "is not absolute",
        ),
        (
            &|r: &mut Record| r.root = Some("srv/app".into()),
            "is not absolute",
        ),
        (
            &|r: &mut Record| r.root = Some("/srv/../etc".into()),
            "is not normalized",
        ),
        (&|r: &mut Record| r.port = Some(0), "ports are 1..65535"),
        (
            &|r: &mut Record| r.host = "h1\nh9: sync: ok".into(),
            "control characters",
        ),
    ] {
        refused(&case, "dp-sync", &sync, &line(edit), what);
    }
    let config = std::fs::read_to_string(case.dir.path().join("deploy.toml")).unwrap();
    let with = |from: &str, to: &str| {
        assert!(config.contains(from), "{from}");
        case.dir.write("deploy.toml", config.replacen(from, to, 1));
    };
    let deploy = ["deploy", "--release", "r2"];
    with("echo {release}", "echo {relase}");
    refused(&case, "dp", &deploy, "", "unknown placeholder {relase}");
    with(
        "[stages.test]",
        "health_url = \"http://{addr}:port/\"\n[stages.test]",
    );
    refused(&case, "dp", &deploy, "", "health URL");
    with("[restart]", "[migrate]\ndir = \"no-such-dir\"\n[restart]");
    refused(&case, "dp", &deploy, "", "is not a directory");
    let root_line = format!("root = \"{}\"", case.roots[0].display());
    with(&root_line, "root = \"/\"");
    refused(&case, "dp", &deploy, "", "deploy.toml:");
    case.write_config();
    // The tools check templates too, on their own.
    let up = case.command("dp-hosts").run();
    up.code(0);
    let restart = case
        .command("dp-restart")
        .args(["--command", "echo {nope}"])
        .stdin(up.stdout.clone())
        .run();
    restart.code(2);
    assert!(
        restart.stderr.contains("unknown placeholder {nope}"),
        "{}",
        restart.stderr
    );
}

#[test]
fn when_dp_dies_the_command_it_waited_for_is_stopped_on_the_host() {
    let case = Case::new("faults-dp-dies");
    case.live_then_change();
    // The script says `sleep $n`: only the sleep itself matches the marker.
    let marker = "sleep 1003.25";
    case.set_restart(
        "n=1003.25; if [ {host} = h2 ]; then sleep $n; fi; echo {release} > {root}/restarted",
        "timeout = \"10m\"",
    );
    let (mut child, _home) = case
        .command("dp")
        .args(["deploy", "--release", "r2"])
        .spawn();
    wait_until("the restart command running on h2", || {
        !running(marker).is_empty()
    });
    child.kill().unwrap();
    let _ = child.wait();
    // Long before its deadline: the host saw dp go and stopped what it was running.
    let started = Instant::now();
    while !running(marker).is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "still running after dp died: {:?}",
            running(marker)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_restart_command_that_leaves_a_process_running_does_not_hold_the_deploy() {
    let case = Case::new("faults-restart-background");
    case.live_then_change();
    let marker = "sleep 1004.25";
    // A naive restart: the server is started in the background, output not redirected.
    case.set_restart(
        "n=1004.25; sleep $n & echo {release} > {root}/restarted",
        "",
    );
    let (child, _home) = case
        .command("dp")
        .args(["deploy", "--release", "r2"])
        .spawn();
    let out = wait_bounded(child, Duration::from_secs(60));
    let left = running(marker);
    let _ = std::process::Command::new("pkill")
        .args(["-f", marker])
        .status();
    out.code(0);
    for root in &case.roots {
        assert_eq!(current(root), "releases/r2");
    }
    assert_eq!(
        left.len(),
        3,
        "the servers it started keep running: {left:?}"
    );
}

#[test]
fn a_lock_lost_on_one_host_before_the_switch_switches_no_host() {
    let case = Case::new("faults-lock-lost");
    case.live_then_change();
    let synced = case.synced("r2");
    // Meanwhile another deploy took h3 over (its lease had run out, say).
    let lock = case.roots[2].join(".dp/lock");
    let far = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let other = format!(
        "{{\"release\":\"rz\",\"holder\":\"ci@elsewhere\",\"pid\":1,\"time\":{},\"expires\":{far}}}\n",
        far - 3600
    );
    std::fs::write(&lock, &other).unwrap();
    let out = case
        .command("dp-restart")
        .args(["--batch", "1"])
        .stdin(synced.stdout.clone())
        .run();
    out.code(1);
    let records = out.records();
    for (i, (r, root)) in records.iter().zip(&case.roots).enumerate() {
        assert_eq!(current(root), "releases/r1", "{} not switched", r.host);
        let e = r.error.as_ref().unwrap();
        if i == 2 {
            assert!(
                e.message
                    .contains("deploy lock is held by release rz by ci@elsewhere"),
                "{e:?}"
            );
        } else {
            assert_eq!(e.kind, ErrorKind::NotSwitched, "{e:?}");
            assert!(
                !root.join(".dp/lock").exists(),
                "{}: lock given back",
                r.host
            );
        }
    }
    assert_eq!(
        std::fs::read_to_string(&lock).unwrap(),
        other,
        "the other's lock stays"
    );
}

#[test]
fn a_session_lost_after_the_switch_is_switched_back_through_a_new_one() {
    // A fleet of its own: the test kills every session process of its second host.
    let fleet = Fleet::start(3);
    let case = Case::on(&fleet, "faults-lost-after-switch", true);
    case.live_then_change();
    case.set_restart("if [ {host} = h2 ] && [ {release} = r2 ]; then sleep 3; fi; echo {release} > {root}/restarted", "");
    let sshd = fleet.hosts[1].pid().expect("sshd pid");
    let (child, _home) = case
        .command("dp")
        .args(["deploy", "--release", "r2"])
        .spawn();
    wait_until("h2 switched", || current(&case.roots[1]) == "releases/r2");
    std::thread::sleep(Duration::from_millis(200));
    signal(&crate::util::descendants(sshd), "KILL");
    let out = wait_bounded(child, Duration::from_secs(60));
    out.code(1);
    let records = out.records();
    assert!(records[0].error.is_none(), "{:?}", records[0]);
    let e = records[1].error.clone().unwrap();
    assert_eq!(e.kind, ErrorKind::SwitchedBack, "{e:?}");
    assert!(e.message.contains("after current was switched"), "{e:?}");
    assert_eq!(current(&case.roots[1]), "releases/r1", "put back");
    assert_eq!(
        std::fs::read_to_string(case.roots[1].join("restarted")).unwrap(),
        "r1\n"
    );
    assert_eq!(records[2].error.clone().unwrap().kind, ErrorKind::Skipped);
    for root in &case.roots {
        assert!(!root.join(".dp/lock").exists());
    }
}

#[test]
fn a_dependency_build_longer_than_the_lease_keeps_the_hosts_locked() {
    let case = Case::new("faults-long-build");
    case.live_then_change();
    let config = std::fs::read_to_string(case.dir.path().join("deploy.toml")).unwrap();
    case.dir.write(
        "deploy.toml",
        format!(
            "{config}[deps]\nkind = \"command\"\ncommand = \"n=7.25; sleep $n; echo ok > \\\"$DP_DEPS_DIR/built\\\"\"\n"
        ),
    );
    let (child, _home) = case
        .command("dp")
        .args(["deploy", "--release", "ra", "--lease", "3s"])
        .spawn();
    wait_until("the build running", || !running("sleep 7.25").is_empty());
    // Past the lease: without renewal another deploy would take the hosts over now.
    std::thread::sleep(Duration::from_secs(4));
    case.dir.write("site/index.html", "v3\n");
    let other = case.deploy(Form::OneLine, "rb", &["--lease", "3s"]);
    other.code(1);
    assert!(
        other.stderr.contains("deploy lock is held by release ra"),
        "{}",
        other.stderr
    );
    let out = wait_bounded(child, Duration::from_secs(60));
    out.code(0);
    for root in &case.roots {
        assert_eq!(current(root), "releases/ra");
        assert!(!root.join(".dp/lock").exists());
    }
    assert!(running("sleep 7.25").is_empty());
}

/// A host whose sshd allows one session at a time (`MaxSessions 1`), one of three. dp
/// opens the next command's channel while one runs (a round trip less), which that host
/// refuses: the refusal costs only the round trip, and the deploy, migration and all,
/// completes everywhere.
#[test]
fn a_host_allowing_one_session_at_a_time_deploys_like_the_others() {
    let mut fleet = Fleet::start(3);
    fleet.hosts[2].relaunch_with("MaxSessions 1\n");
    let case = Case::on(&fleet, "faults-one-session", true);
    case.live_then_change();
    case.assert_rerun_completes(Form::OneLine, "r2");
    // The refusals happened (the test tried what it says).
    let log = std::fs::read_to_string(fleet.hosts[2].dir.join("sshd.log")).unwrap();
    assert!(log.contains("no more sessions"), "{log}");
}

/// dp opens each host's next channel while a command runs. In a one-by-one rollout
/// whose restarts take 2 s, with the last host's sshd closing session channels idle for a
/// second (`ChannelTimeout`, OpenSSH 9.2): every host switches, and no sshd logs a
/// protocol error. A channel still being opened when dp is done has no number from the
/// server yet; closing it as libssh2 would (as "channel 0") makes sshd cut the connection
/// and log it.
#[test]
fn channels_opened_ahead_leave_no_protocol_error_on_any_host() {
    let mut fleet = Fleet::start(3);
    fleet.hosts[2].relaunch_with("ChannelTimeout session=1s\n");
    let case = Case::on(&fleet, "faults-channel-ahead", false);
    case.live_then_change_page();
    case.set_restart(
        "if [ {host} != h3 ]; then sleep 2; fi; echo {release} > {root}/restarted",
        "",
    );
    case.assert_rerun_completes(Form::OneLine, "r2");
    for (host, root) in fleet.hosts.iter().zip(&case.roots) {
        assert_eq!(
            std::fs::read_to_string(root.join("restarted")).unwrap(),
            "r2\n"
        );
        let log = std::fs::read_to_string(host.dir.join("sshd.log")).unwrap();
        assert!(
            !log.contains("nonexistent channel") && !log.contains("bad id"),
            "{}: {log}",
            host.name
        );
    }
}

/// A host whose PATH puts BusyBox's tools first (set by its sshd), one of three: `dp
/// setup` names it and what it lacks, and a deploy is refused there before anything
/// changes, so no host switches.
#[test]
fn a_busybox_host_among_gnu_hosts_is_refused_and_switches_no_host() {
    let mut fleet = Fleet::start(3);
    let case = Case::on(&fleet, "faults-busybox", true);
    case.live_then_change();
    let applets = crate::util::busybox_applets(case.dir.path());
    fleet.hosts[2].relaunch_with(&format!(
        "SetEnv PATH={}:/usr/local/bin:/usr/bin:/bin\n",
        applets.display()
    ));
    let why =
        "this host lacks what dp's scripts need: cp -al --remove-destination (GNU coreutils cp)";
    let setup = case.command("dp").args(["setup"]).run();
    setup.code(1);
    let records = setup.records();
    assert!(
        records[0].error.is_none() && records[1].error.is_none(),
        "{}",
        setup.stdout
    );
    let e = records[2].error.clone().unwrap();
    assert_eq!((records[2].host.as_str(), e.step.as_str()), ("h3", "setup"));
    assert!(e.message.contains(why), "{e:?}");
    assert!(
        setup.stderr.contains("h3") && setup.stderr.contains(why),
        "{}",
        setup.stderr
    );

    let out = case.deploy(Form::OneLine, "r2", &[]);
    case.assert_nothing_switched(&out, 2, ErrorKind::Failed);
    let e = out.records()[2].error.clone().unwrap();
    assert_eq!(e.step, "sync");
    assert!(e.message.contains(why), "{e:?}");
    assert!(
        !case.roots[2].join("releases/r2").exists(),
        "nothing built on the refused host"
    );
    // Its tools back: the same deploy completes everywhere.
    fleet.hosts[2].relaunch_with("");
    case.assert_rerun_completes(Form::OneLine, "r2");
}
