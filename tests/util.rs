//! Test harness: a command builder for the dp binaries, and fixtures that start real
//! servers (OpenSSH sshd on loopback) and stop exactly those processes when done.
//!
//! Every sshd runs under a small `sh` guard whose stdin is a pipe held by this test
//! process: when the fixture is dropped, or the test binary exits for any reason, the
//! pipe closes and the guard stops its sshd. Shared fixtures ([`Fleet::shared`]) live for
//! the whole test run; tests that stop hosts start their own.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A fresh directory under the target dir, removed on drop.
pub struct Dir {
    dir: tempfile::TempDir,
}

impl Dir {
    /// A new empty directory.
    pub fn new(name: &str) -> Dir {
        let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(&base).unwrap();
        let dir = tempfile::Builder::new()
            .prefix(&format!("dp-{name}-"))
            .tempdir_in(base)
            .unwrap();
        Dir { dir }
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `rel`, creating parents.
    pub fn write(&self, rel: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, contents).unwrap();
        p
    }

    /// Reads `rel` as text.
    pub fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path().join(rel)).unwrap()
    }
}

/// Path of one of the project's binaries.
pub fn bin(name: &str) -> PathBuf {
    PathBuf::from(match name {
        "dp" => env!("CARGO_BIN_EXE_dp"),
        "dp-hosts" => env!("CARGO_BIN_EXE_dp-hosts"),
        "dp-sync" => env!("CARGO_BIN_EXE_dp-sync"),
        "dp-deps" => env!("CARGO_BIN_EXE_dp-deps"),
        "dp-migrate" => env!("CARGO_BIN_EXE_dp-migrate"),
        "dp-restart" => env!("CARGO_BIN_EXE_dp-restart"),
        other => panic!("unknown binary {other}"),
    })
}

/// Runs a dp binary with a clean environment: HOME is a fresh directory (no ~/.ssh of
/// the developer's), no ssh-agent.
pub struct TestCommand {
    cmd: Command,
    stdin: Option<Vec<u8>>,
    home: Option<Dir>,
}

/// What a finished command left.
#[derive(Debug)]
pub struct Outcome {
    /// Exit code.
    pub code: i32,
    /// Stdout as text.
    pub stdout: String,
    /// Stderr as text.
    pub stderr: String,
    /// How long it took.
    pub elapsed: Duration,
}

impl Outcome {
    /// Stdout decoded as records, one per line.
    pub fn records(&self) -> Vec<dp_core::Record> {
        self.stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad record {l:?}: {e}")))
            .collect()
    }

    /// Asserts the exit code, showing everything when it differs.
    #[track_caller]
    pub fn code(&self, code: i32) -> &Outcome {
        assert_eq!(
            self.code, code,
            "unexpected exit code\nstdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

impl TestCommand {
    /// A command for binary `name`.
    pub fn new(name: &str) -> TestCommand {
        let home = Dir::new("home");
        let mut cmd = Command::new(bin(name));
        cmd.env("HOME", home.path())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("DP_CONFIG")
            .env_remove("DP_STAGE")
            .env_remove("DP_HOST_KEY_POLICY")
            .env_remove("DATABASE_URL")
            .env_remove("SSH_ASKPASS")
            .env_remove("SSH_ASKPASS_REQUIRE")
            // Tests that install packages mean "offline, from this directory" only.
            .env_remove("PIP_FIND_LINKS");
        TestCommand {
            cmd,
            stdin: None,
            home: Some(home),
        }
    }

    /// Runs `program` instead of the dp binary (with the same clean environment).
    pub fn program(mut self, program: &str) -> Self {
        let mut cmd = Command::new(program);
        for (k, v) in self.cmd.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        self.cmd = cmd;
        self
    }

    /// The fake HOME of this command.
    pub fn home(&self) -> &Path {
        self.home.as_ref().unwrap().path()
    }

    /// Adds arguments.
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, k: &str, v: impl AsRef<std::ffi::OsStr>) -> Self {
        self.cmd.env(k, v);
        self
    }

    /// Runs in a session of its own, without a controlling terminal (nothing can be asked
    /// on /dev/tty, as under cron or CI).
    pub fn without_terminal(mut self) -> Self {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches nothing of this process.
        unsafe {
            self.cmd.pre_exec(|| {
                if libc::setsid() == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        self
    }

    /// Runs in `dir`.
    pub fn current_dir(mut self, dir: &Path) -> Self {
        self.cmd.current_dir(dir);
        self
    }

    /// Feeds `input` on stdin (from a thread, so large inputs cannot deadlock).
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }

    /// Runs the command in a process group of its own (whose id is its pid), so a test
    /// can signal it and everything it started, as a terminal signals its foreground job.
    pub fn process_group(mut self) -> Self {
        use std::os::unix::process::CommandExt;
        self.cmd.process_group(0);
        self
    }

    /// Starts the command without waiting (stdin closed, stdout and stderr piped); the
    /// second value keeps its HOME alive.
    pub fn spawn(mut self) -> (std::process::Child, Option<Dir>) {
        let child = self
            .cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        (child, self.home.take())
    }

    /// Runs the command to its end.
    pub fn run(mut self) -> Outcome {
        let started = Instant::now();
        self.cmd
            .stdin(if self.stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = self.cmd.spawn().expect("spawn");
        let feeder = self.stdin.take().map(|input| {
            let mut pipe = child.stdin.take().unwrap();
            std::thread::spawn(move || {
                let _ = pipe.write_all(&input);
            })
        });
        let out = child.wait_with_output().unwrap();
        if let Some(f) = feeder {
            f.join().unwrap();
        }
        Outcome {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }
}

/// Runs a program and returns its stdout; panics with its stderr on failure.
pub fn sh(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Spawns a server script whose last lines wait on stdin and then stop the server
/// (`... & pid=$!; read _; kill $pid; wait $pid`), with its output discarded. Closing the
/// returned stdin stops it, and so does the end of the test binary, whatever way it ends.
pub fn spawn_guarded(cmd: &mut Command) -> (std::process::Child, std::process::ChildStdin) {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdin = child.stdin.take().unwrap();
    (child, stdin)
}

/// Syncs `src` as `release` to the hosts of `input` (JSON lines) and returns the records
/// dp-sync printed; panics unless it succeeded everywhere.
pub fn sync_release(src: &Path, input: impl Into<Vec<u8>>, release: &str) -> String {
    let out = TestCommand::new("dp-sync")
        .args([
            "--src".as_ref(),
            src.as_os_str(),
            "--release".as_ref(),
            release.as_ref(),
        ])
        .stdin(input)
        .run();
    out.code(0);
    out.stdout
}

/// A directory for a fixture shared by this whole test run: `<prefix><pid>` under the
/// target dir. Shared fixtures outlive the run (statics are never dropped), so the
/// directories of runs that have ended are removed first.
fn run_dir(prefix: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(&base).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix(prefix) {
            if !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    base.join(format!("{prefix}{}", std::process::id()))
}

/// Generates a key pair without a passphrase at `path` (`ed25519` or `rsa`) and returns
/// its public key as `type base64`.
pub fn keygen(path: &Path, kind: &str) -> String {
    keygen_locked(path, kind, "")
}

/// [`keygen`], with the private key encrypted under `passphrase` (none when empty).
pub fn keygen_locked(path: &Path, kind: &str, passphrase: &str) -> String {
    let mut args = vec![
        "-q",
        "-t",
        kind,
        "-N",
        passphrase,
        "-C",
        "dp-test",
        "-f",
        path.to_str().unwrap(),
    ];
    if kind == "rsa" {
        args.extend(["-b", "2048"]);
    }
    sh("ssh-keygen", &args);
    let public = std::fs::read_to_string(path.with_extension("pub")).unwrap();
    public
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The user tests log in as (sshd runs as this user too when not root).
pub fn user() -> String {
    sh("id", &["-un"]).trim().to_string()
}

/// Waits (at most `within`) until something accepts connections on loopback `port`.
pub fn listening(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A free loopback TCP port (free when asked; callers retry if it is taken meanwhile).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn sshd_path() -> PathBuf {
    for p in ["/usr/sbin/sshd", "/usr/local/sbin/sshd"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("sshd not found: run `make test` (it installs openssh-server) or apt-get install openssh-server");
}

/// One sshd on loopback.
pub struct SshHost {
    /// Name used in configs (`h1`, `h2`, ...).
    pub name: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// A deploy root directory reserved for this host.
    pub root: PathBuf,
    /// `ssh-ed25519 AAAA...` of its host key.
    pub host_key: String,
    pub dir: PathBuf,
    guard: Option<(Child, ChildStdin)>,
    /// Lines added to its sshd_config.
    extra_config: String,
}

impl SshHost {
    /// The known_hosts line for this host.
    pub fn known_hosts_line(&self) -> String {
        format!("[127.0.0.1]:{} {}\n", self.port, self.host_key)
    }

    /// Stops this sshd (its open sessions continue until they close).
    pub fn stop(&mut self) {
        if let Some((mut child, stdin)) = self.guard.take() {
            drop(stdin);
            let _ = child.wait();
        }
        // The guard kills sshd; wait until the port is closed.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid of this sshd (its sessions are its descendants).
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.dir.join("sshd.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok())
    }

    /// Stops this sshd and every session it serves (kills the whole connection tree).
    pub fn kill_all(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("sshd.pid")) {
            if let Ok(pid) = pid.trim().parse::<u32>() {
                for p in descendants(pid).into_iter().chain([pid]) {
                    let _ = Command::new("kill")
                        .args(["-KILL", &p.to_string()])
                        .status();
                }
            }
        }
        self.stop();
    }

    fn start(dir: &Path, name: &str, client_pub: &str) -> SshHost {
        std::fs::create_dir_all(dir).unwrap();
        let host_key = keygen(&dir.join("host_ed25519"), "ed25519");
        std::fs::write(dir.join("authorized_keys"), client_pub).unwrap();
        let root = dir.join("root");
        std::fs::create_dir_all(&root).unwrap();
        let mut host = SshHost {
            name: name.to_string(),
            port: 0,
            root,
            host_key,
            dir: dir.to_path_buf(),
            guard: None,
            extra_config: String::new(),
        };
        host.launch();
        host
    }

    /// Restarts this sshd on its port with `extra` lines first in its sshd_config (for
    /// example `SetEnv PATH=...`, which sessions get after sshd's default PATH; first,
    /// because sshd keeps a keyword's first value; no `Match` blocks).
    pub fn relaunch_with(&mut self, extra: &str) {
        self.stop();
        self.extra_config = extra.to_string();
        self.launch();
    }

    /// (Re)starts sshd on a free port (a port kept from before when restarting).
    pub fn launch(&mut self) {
        if getuid_is_root() {
            let _ = std::fs::create_dir_all("/run/sshd");
        }
        let keep_port = self.port != 0;
        for _attempt in 0..10 {
            let port = if keep_port { self.port } else { free_port() };
            let config = self.dir.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "{extra}Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_ed25519\n\
                     PidFile none\nAuthorizedKeysFile {dir}/authorized_keys\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nUsePAM no\nStrictModes no\nPermitRootLogin yes\n\
                     PrintMotd no\nMaxStartups 200\nMaxSessions 100\nLogLevel VERBOSE\n",
                    dir = self.dir.display(),
                    extra = self.extra_config,
                ),
            )
            .unwrap();
            let script = format!(
                "{sshd} -D -f {cfg} -E {log} & pid=$!; echo $pid > {pidfile}; read _; kill $pid 2>/dev/null; wait $pid",
                sshd = sshd_path().display(),
                cfg = config.display(),
                log = self.dir.join("sshd.log").display(),
                pidfile = self.dir.join("sshd.pid").display(),
            );
            let (mut child, stdin) = spawn_guarded(Command::new("sh").args(["-c", &script]));
            if wait_for_banner(port, Duration::from_secs(5)) {
                self.port = port;
                self.guard = Some((child, stdin));
                return;
            }
            drop(stdin);
            let _ = child.wait();
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(self.dir.join("sshd.log")).unwrap_or_default();
        panic!("sshd {} did not start; log:\n{log}", self.name);
    }
}

impl Drop for SshHost {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Every process below `pid`, found through /proc.
pub fn descendants(pid: u32) -> Vec<u32> {
    let mut parent_of: Vec<(u32, u32)> = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // Fields after the parenthesised command name: state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|f| f.parse().ok()) {
            parent_of.push((p, ppid));
        }
    }
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// True when the tests run as root (needed to mount file systems for fault tests).
pub fn getuid_is_root() -> bool {
    user() == "root"
}

fn wait_for_banner(port: u16, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 16];
            if s.read(&mut buf)
                .map(|n| buf[..n].starts_with(b"SSH-2.0-OpenSSH"))
                .unwrap_or(false)
            {
                return true;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// N sshd hosts sharing one client key and one known_hosts file.
pub struct Fleet {
    /// The hosts.
    pub hosts: Vec<SshHost>,
    /// Private key accepted by every host.
    pub client_key: PathBuf,
    /// A known_hosts file listing every host.
    pub known_hosts: PathBuf,
    /// The login user.
    pub user: String,
    dir: PathBuf,
    _owned: Option<Dir>,
}

static FLEET_SEQ: AtomicUsize = AtomicUsize::new(0);

impl Fleet {
    /// Starts `n` sshd hosts for this test alone.
    pub fn start(n: usize) -> Fleet {
        let seq = FLEET_SEQ.fetch_add(1, Ordering::SeqCst);
        let dir = Dir::new(&format!("fleet{seq}"));
        let path = dir.path().to_path_buf();
        Fleet::start_in(path, Some(dir), n)
    }

    fn start_in(dir: PathBuf, owned: Option<Dir>, n: usize) -> Fleet {
        std::fs::create_dir_all(&dir).unwrap();
        let client_key = dir.join("client_ed25519");
        let client_pub = keygen(&client_key, "ed25519");
        let hosts: Vec<SshHost> = std::thread::scope(|s| {
            let handles: Vec<_> = (1..=n)
                .map(|i| {
                    let (d, p) = (dir.join(format!("h{i}")), client_pub.clone());
                    s.spawn(move || SshHost::start(&d, &format!("h{i}"), &p))
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let known_hosts = dir.join("known_hosts");
        let lines: String = hosts.iter().map(SshHost::known_hosts_line).collect();
        std::fs::write(&known_hosts, lines).unwrap();
        Fleet {
            hosts,
            client_key,
            known_hosts,
            user: user(),
            dir,
            _owned: owned,
        }
    }

    /// The fleet shared by every test of this run (4 hosts). Tests must not stop its hosts
    /// and use deploy roots of their own under [`Fleet::root_for`].
    pub fn shared() -> &'static Fleet {
        static SHARED: OnceLock<Fleet> = OnceLock::new();
        SHARED.get_or_init(|| Fleet::start_in(run_dir("dp-shared-"), None, 4))
    }

    /// A fresh deploy root for `test` on host `i` (all hosts live on this machine).
    pub fn root_for(&self, i: usize, test: &str) -> PathBuf {
        let p = self.hosts[i].root.join(test);
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    /// Lets the key `public` (`type base64`) in on every host, besides the client key.
    pub fn authorize(&self, public: &str) {
        for h in &self.hosts {
            let keys = h.dir.join("authorized_keys");
            let all = std::fs::read_to_string(&keys).unwrap() + "\n" + public + "\n";
            std::fs::write(&keys, all).unwrap();
        }
    }

    /// The fleet's scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A `[stages.test]` deploy.toml for the hosts `which`, with `extra` top-level lines.
    pub fn deploy_toml(&self, which: &[usize], root: &str, extra: &str) -> String {
        self.toml(
            which,
            &format!("root = \"{root}\"\n"),
            |_| String::new(),
            extra,
        )
    }

    /// [`Fleet::deploy_toml`] with a deploy root of its own for each host (`roots`, in
    /// the order of `which`).
    pub fn deploy_toml_roots(&self, which: &[usize], roots: &[PathBuf], extra: &str) -> String {
        self.toml(
            which,
            "",
            |n| format!(", root = \"{}\"", roots[n].display()),
            extra,
        )
    }

    fn toml(
        &self,
        which: &[usize],
        root: &str,
        host_root: impl Fn(usize) -> String,
        extra: &str,
    ) -> String {
        let hosts: Vec<String> = which
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let h = &self.hosts[i];
                format!(
                    "  {{ name = \"{}\", addr = \"127.0.0.1\", port = {}, roles = [\"web\"]{} }},",
                    h.name,
                    h.port,
                    host_root(n)
                )
            })
            .collect();
        format!(
            "app = \"test\"\n{root}known_hosts = \"{kh}\"\nidentity = \"{key}\"\n{extra}\n\
             [stages.test]\nuser = \"{user}\"\nhosts = [\n{hosts}\n]\n",
            kh = self.known_hosts.display(),
            key = self.client_key.display(),
            user = self.user,
            hosts = hosts.join("\n"),
        )
    }

    /// A record for host `i` with deploy root `root`, as one JSON line.
    pub fn record_line(&self, i: usize, root: &Path) -> String {
        let mut r = self.record(i);
        r.root = Some(root.display().to_string());
        serde_json::to_string(&r).unwrap() + "\n"
    }

    /// A record for host `i` as dp-hosts would print it.
    pub fn record(&self, i: usize) -> dp_core::Record {
        let h = &self.hosts[i];
        let mut r = dp_core::Record::new(h.name.clone());
        r.addr = Some("127.0.0.1".into());
        r.port = Some(h.port);
        r.user = Some(self.user.clone());
        r.root = Some(h.root.display().to_string());
        r.ssh.identity = Some(self.client_key.clone());
        r.ssh.known_hosts = Some(self.known_hosts.clone());
        r
    }
}

/// A PostgreSQL cluster of its own: initdb in a temporary directory, listening on a free
/// loopback port, password authentication (scram) for the `postgres` superuser, run as a
/// non-root user (`postgres` when the tests run as root). Stopped when the test binary
/// exits (the same stdin guard as sshd).
pub struct PgCluster {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// The superuser's password.
    pub password: String,
    dir: PathBuf,
    _guard: (Child, ChildStdin),
}

static DB_SEQ: AtomicUsize = AtomicUsize::new(0);

fn pg_bin(name: &str) -> PathBuf {
    if let Ok(out) = Command::new("sh")
        .args(["-c", &format!("command -v {name}")])
        .output()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if !p.is_empty() {
            return PathBuf::from(p);
        }
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin").join(name))
        .filter(|p| p.exists())
        .collect();
    candidates.sort();
    candidates
        .pop()
        .unwrap_or_else(|| panic!("{name} not found: run `make test` (it installs postgresql)"))
}

/// Runs `program args` as the cluster's user (postgres when we are root).
fn as_pg_user(program: &Path, args: &[&str]) -> Command {
    if user() == "root" {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program).args(args);
        c
    } else {
        let mut c = Command::new(program);
        c.args(args);
        c
    }
}

impl PgCluster {
    /// The cluster shared by every test of this run.
    pub fn shared() -> &'static PgCluster {
        static SHARED: OnceLock<PgCluster> = OnceLock::new();
        SHARED.get_or_init(PgCluster::start)
    }

    fn start() -> PgCluster {
        let dir = run_dir("dp-pg-");
        std::fs::create_dir_all(&dir).unwrap();
        let password = format!("pw-{}-secret", std::process::id());
        std::fs::write(dir.join("pwfile"), &password).unwrap();
        if user() == "root" {
            sh("chown", &["-R", "postgres", dir.to_str().unwrap()]);
        }
        let data = dir.join("data");
        let out = as_pg_user(
            &pg_bin("initdb"),
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "postgres",
                "--auth=scram-sha-256",
                &format!("--pwfile={}", dir.join("pwfile").display()),
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for _ in 0..10 {
            let port = free_port();
            let postgres = pg_bin("postgres");
            let cmd = format!(
                "{pg} -D {data} -p {port} -k {dir} -c listen_addresses=127.0.0.1 -c fsync=off \
                 -c synchronous_commit=off -c full_page_writes=off > {dir}/log 2>&1 & pid=$!; \
                 read _; kill -INT $pid 2>/dev/null; wait $pid",
                pg = postgres.display(),
                data = data.display(),
                dir = dir.display(),
            );
            let (mut child, stdin) =
                spawn_guarded(&mut as_pg_user(Path::new("/bin/sh"), &["-c", &cmd]));
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut ready = false;
            while Instant::now() < deadline {
                let ok = Command::new(pg_bin("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    ready = true;
                    break;
                }
                if child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if ready {
                return PgCluster {
                    port,
                    password,
                    dir,
                    _guard: (child, stdin),
                };
            }
            drop(stdin);
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        panic!("postgres did not start:\n{log}");
    }

    /// A new empty database; returns its URL (with the password: keep it out of output).
    pub fn create_db(&self, prefix: &str) -> String {
        let name = format!(
            "{}_{}",
            prefix.replace('-', "_"),
            DB_SEQ.fetch_add(1, Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!(
            "postgres://postgres:{}@127.0.0.1:{}/{name}",
            self.password, self.port
        )
    }

    /// Runs SQL with psql in database `db`; returns the unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(pg_bin("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                db,
            ])
            .args(["-v", "ON_ERROR_STOP=1", "-X", "-A", "-t", "-c", sql])
            .env("PGPASSWORD", &self.password)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Its scratch directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A record for a local-transport host with deploy root `root`.
pub fn local_record(name: &str, root: &Path) -> dp_core::Record {
    let mut r = dp_core::Record::new(name);
    r.transport = dp_core::TransportKind::Local;
    r.root = Some(root.display().to_string());
    r
}

/// [`local_record`] as one JSON line.
pub fn local_line(name: &str, root: &Path) -> String {
    serde_json::to_string(&local_record(name, root)).unwrap() + "\n"
}

/// nginx in front of the apps, retrying the next upstream on errors.
pub struct Nginx {
    /// Where it listens.
    pub port: u16,
    guard: Option<(std::process::Child, std::process::ChildStdin)>,
}

impl Nginx {
    /// Starts nginx balancing over `upstreams` (ports on 127.0.0.1), its files in `dir`.
    pub fn start(dir: &Path, upstreams: &[u16]) -> Nginx {
        let port = free_port();
        let tmp = dir.join("nginx-tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        Command::new("chmod")
            .args(["777"])
            .arg(&tmp)
            .status()
            .unwrap();
        let servers: String = upstreams
            .iter()
            .map(|p| format!("    server 127.0.0.1:{p} max_fails=0;\n"))
            .collect();
        let user = if crate::util::user() == "root" {
            "user root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx-error.log;\n\
             events {{ worker_connections 512; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {t}; proxy_temp_path {t}; fastcgi_temp_path {t};\n  \
             uwsgi_temp_path {t}; scgi_temp_path {t};\n  upstream app {{\n{servers}  }}\n  server {{\n    \
             listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://app;\n      \
             proxy_next_upstream error timeout http_500 http_502 http_503 http_504;\n      \
             proxy_next_upstream_tries 0;\n      proxy_connect_timeout 1s;\n    }}\n  }}\n}}\n",
            d = dir.display(),
            t = tmp.display(),
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx not found: run `make test` (it installs nginx)");
        let script = format!(
            "{nginx} -c {} -p {} & pid=$!; read _; kill -QUIT $pid; wait $pid",
            conf_path.display(),
            dir.display()
        );
        let (child, stdin) = spawn_guarded(Command::new("sh").args(["-c", &script]));
        listening(port, Duration::from_secs(4));
        Nginx {
            port,
            guard: Some((child, stdin)),
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if let Some((mut child, stdin)) = self.guard.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// One GET through nginx: Ok(body) on 200.
pub fn get(port: u16) -> Result<String, String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.0\r\nHost: test\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).map_err(|e| e.to_string())?;
    let status = resp.lines().next().unwrap_or_default().to_string();
    if !status.contains(" 200 ") {
        return Err(status);
    }
    Ok(resp
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string())
}

/// Runs `f` while a client sends GET / to `port` in a loop: what `f` returned, and how
/// many requests succeeded and failed (each failure is printed).
pub fn under_load<T>(port: u16, f: impl FnOnce() -> T) -> (T, usize, usize) {
    use std::sync::atomic::AtomicBool;
    let done = AtomicBool::new(false);
    let (ok, failed) = (AtomicUsize::new(0), AtomicUsize::new(0));
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) {
                match get(port) {
                    Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        eprintln!("failed request: {e}");
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        });
        let out = f();
        done.store(true, Ordering::SeqCst);
        out
    });
    (out, ok.into_inner(), failed.into_inner())
}

/// A directory in `dir` holding a link to busybox for each of its applets but `sh`: put
/// first on PATH, it gives a host BusyBox's tools instead of GNU's.
pub fn busybox_applets(dir: &Path) -> PathBuf {
    let list = Command::new("busybox")
        .arg("--list")
        .output()
        .expect("busybox is needed for this test: run make test (it installs busybox)");
    let applets = dir.join("busybox-bin");
    std::fs::create_dir_all(&applets).unwrap();
    let busybox = sh("sh", &["-c", "command -v busybox"]);
    for applet in String::from_utf8_lossy(&list.stdout).lines() {
        if !matches!(applet, "sh" | "ash") {
            std::os::unix::fs::symlink(busybox.trim(), applets.join(applet)).unwrap();
        }
    }
    applets
}

/// The test object store: a one-node Garage (an S3-compatible server) on a free loopback
/// port (`scripts/garage.sh`), with a bucket `dp-artifacts` and a key allowed on it,
/// behind the counting proxy
/// `fixtures/s3_proxy.py` (which logs each request and injects faults). Shared by every
/// test of this run (each uses a prefix of its own) and stopped when the test binary
/// exits (the same stdin guard as sshd).
pub struct Garage {
    /// The proxy's URL: `[artifacts] endpoint`.
    pub endpoint: String,
    /// The key's id and secret.
    pub key: (String, String),
    dir: PathBuf,
    _guards: Vec<(Child, ChildStdin)>,
}

impl Garage {
    /// The store shared by every test of this run.
    pub fn shared() -> &'static Garage {
        static SHARED: OnceLock<Garage> = OnceLock::new();
        SHARED.get_or_init(Garage::start)
    }

    fn start() -> Garage {
        let dir = run_dir("dp-garage-");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/garage.sh");
        let server = format!(
            "{script} start {d} 2> {d}/start.log || touch {d}/failed; read _; {script} stop {d}",
            script = script.display(),
            d = dir.display()
        );
        let mut guards = vec![spawn_guarded(Command::new("bash").args(["-c", &server]))];
        let deadline = Instant::now() + Duration::from_secs(60);
        let endpoint = loop {
            if let Ok(e) = std::fs::read_to_string(dir.join("endpoint")) {
                break e.trim().to_string();
            }
            assert!(
                Instant::now() < deadline && !dir.join("failed").exists(),
                "the store did not start (`make test` installs garage): {}",
                std::fs::read_to_string(dir.join("start.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        let key = std::fs::read_to_string(dir.join("key")).unwrap();
        let (id, secret) = key.trim().split_once(' ').unwrap();
        let key = (id.to_string(), secret.to_string());
        let s3 = endpoint.rsplit(':').next().unwrap().to_string();
        let port = free_port();
        let proxy = format!(
            "python3 {fixture} {port} {s3} {d} > {d}/proxy.log 2>&1 & pid=$!; read _; kill $pid; wait $pid",
            fixture = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures/s3_proxy.py")
                .display(),
            d = dir.display()
        );
        guards.push(spawn_guarded(Command::new("sh").args(["-c", &proxy])));
        assert!(
            listening(port, Duration::from_secs(20)),
            "the store's proxy did not start"
        );
        Garage {
            endpoint: format!("http://127.0.0.1:{port}"),
            key,
            dir,
            _guards: guards,
        }
    }

    /// The environment that gives dp the key (as the standard AWS variables).
    pub fn env(&self) -> [(&'static str, &str); 2] {
        [
            ("AWS_ACCESS_KEY_ID", self.key.0.as_str()),
            ("AWS_SECRET_ACCESS_KEY", self.key.1.as_str()),
        ]
    }

    /// `[artifacts]` for deploy.toml, with the objects under `prefix` and `extra` lines.
    pub fn artifacts_toml(&self, prefix: &str, extra: &str) -> String {
        format!(
            "[artifacts]\nstore = \"s3://dp-artifacts/{prefix}\"\nendpoint = \"{}\"\n\
             region = \"garage\"\n{extra}",
            self.endpoint
        )
    }

    /// The requests the store got whose path contains `part`, as `METHOD PATH`.
    pub fn requests(&self, part: &str) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("requests.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(part))
            .map(str::to_string)
            .collect()
    }

    /// The next `count` requests `method` whose path contains `part` fail with a 503.
    pub fn fail_next(&self, method: &str, part: &str, count: usize) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("faults"))
            .unwrap();
        writeln!(f, "FAIL {method} {part} {count}").unwrap();
    }
}
