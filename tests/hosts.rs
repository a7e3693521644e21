//! dp-hosts: selection from deploy.toml and stdin, --check over real sshd hosts.

use crate::util::{free_port, keygen_locked, sh, Dir, Fleet, TestCommand};
use std::net::TcpListener;
use std::path::{Path, PathBuf};

fn hosts(dir: &Dir) -> TestCommand {
    TestCommand::new("dp-hosts").current_dir(dir.path())
}

#[test]
fn prints_one_record_per_selected_host() {
    let dir = Dir::new("hosts-select");
    dir.write(
        "deploy.toml",
        r#"root = "/srv/site"
[stages.prod]
user = "deploy"
hosts = [
  { name = "web1", addr = "10.0.0.5", roles = ["web", "migrate"] },
  { name = "web2", addr = "10.0.0.6", roles = ["web"], port = 2222 },
  { name = "db", addr = "10.0.0.7", roles = ["db"], user = "pg", root = "/srv/db" },
]
[stages.local]
transport = "local"
hosts = [{ name = "a", root = "hosts/a" }]
"#,
    );
    let out = hosts(&dir).args(["--stage", "prod"]).run();
    out.code(0);
    let recs = out.records();
    assert_eq!(
        recs.iter().map(|r| r.host.as_str()).collect::<Vec<_>>(),
        ["web1", "web2", "db"]
    );
    assert_eq!(recs[1].port, Some(2222));
    assert_eq!(recs[2].user.as_deref(), Some("pg"));
    assert_eq!(recs[2].root.as_deref(), Some("/srv/db"));
    assert!(recs.iter().all(|r| r.error.is_none() && r.extra.is_empty()));

    let web = hosts(&dir)
        .args(["-s", "prod", "--role", "web", "--host", "web2"])
        .run();
    assert_eq!(web.code(0).records().len(), 1);

    let local = hosts(&dir).args(["-s", "local"]).run();
    let rec = &local.code(0).records()[0];
    assert_eq!(
        rec.root.as_deref(),
        Some(dir.path().join("hosts/a").to_str().unwrap())
    );

    // Selection errors exit 2 and say what is wrong.
    let out = hosts(&dir).run();
    out.code(2);
    assert!(
        out.stderr.contains("several stages (local, prod)"),
        "{}",
        out.stderr
    );
    let out = hosts(&dir).args(["-s", "prod", "--host", "nope"]).run();
    out.code(2);
    assert!(
        out.stderr.contains("no host \"nope\" in stage \"prod\""),
        "{}",
        out.stderr
    );
    let out = hosts(&dir).args(["-s", "staging"]).run();
    out.code(2);
    assert!(
        out.stderr.contains("no stage \"staging\""),
        "{}",
        out.stderr
    );
}

#[test]
fn config_errors_name_file_line_and_key() {
    let dir = Dir::new("hosts-config-error");
    dir.write(
        "deploy.toml",
        "root = \"/srv\"\n[stages.prod]\nhosts = [\n  { name = \"a\", prot = 22 },\n]\n",
    );
    let out = hosts(&dir).run();
    out.code(2);
    assert!(out.stderr.contains("deploy.toml:4:"), "{}", out.stderr);
    assert!(
        out.stderr.contains("unknown field `prot`"),
        "{}",
        out.stderr
    );
    assert!(out.stdout.is_empty());

    let out = hosts(&dir).args(["--config", "missing.toml"]).run();
    out.code(2);
    assert!(out.stderr.contains("missing.toml"), "{}", out.stderr);
}

#[test]
fn from_stdin_filters_and_keeps_unknown_fields() {
    let dir = Dir::new("hosts-from");
    let input = concat!(
        r#"{"host":"a","roles":["web"],"custom":{"x":1},"steps":{"sync":{"ms":3}}}"#,
        "\n\n",
        r#"{"host":"b","roles":["db"]}"#,
        "\n"
    );
    let out = hosts(&dir)
        .args(["--from", "-", "--role", "web"])
        .stdin(input)
        .run();
    out.code(0);
    assert_eq!(out.stdout.lines().count(), 1);
    let line: serde_json::Value = serde_json::from_str(out.stdout.trim()).unwrap();
    assert_eq!(line["host"], "a");
    assert_eq!(line["custom"]["x"], 1);
    assert_eq!(line["steps"]["sync"]["ms"], 3);
}

#[test]
fn malformed_stdin_exits_2_naming_the_line() {
    let dir = Dir::new("hosts-malformed");
    let cases = [
        ("{\"host\":\"a\"}\n{\"host\": \n", "stdin:2: invalid JSON"),
        (
            "{\"host\":\"a\"}\n\n{\"addr\":\"x\"}\n",
            "stdin:3: missing field `host`",
        ),
        (
            "{\"host\":\"a\"}\n{\"host\":\"a\"}\n",
            "stdin:2: duplicate host \"a\" (first on line 1)",
        ),
        (
            "{\"host\":\"a\",\"port\":\"ssh\"}\n",
            "stdin:1: invalid record",
        ),
        ("[\"host\"]\n", "stdin:1: expected a JSON object"),
    ];
    for (input, want) in cases {
        let out = hosts(&dir).args(["--from", "-"]).stdin(input).run();
        out.code(2);
        assert!(
            out.stdout.is_empty(),
            "nothing may be printed: {}",
            out.stdout
        );
        assert!(
            out.stderr.contains(want),
            "want {want:?} in {:?}",
            out.stderr
        );
    }
}

#[test]
fn check_reaches_real_sshd_hosts() {
    let fleet = Fleet::shared();
    let dir = Dir::new("hosts-check");
    dir.write(
        "deploy.toml",
        fleet.deploy_toml(&[0, 1, 2, 3], "/srv/app", ""),
    );
    let out = hosts(&dir).args(["--check"]).run();
    out.code(0);
    let recs = out.records();
    assert_eq!(recs.len(), 4);
    for r in &recs {
        let stats = &r.steps["hosts"];
        assert_eq!(stats["reachable"], true, "{r:?}");
        assert_eq!(stats["host_key"], "known");
        let cipher = stats["cipher"].as_str().unwrap();
        assert!(
            cipher.contains("gcm") || cipher.contains("chacha20"),
            "cipher {cipher}"
        );
    }
}

#[test]
fn dead_and_silent_hosts_fail_alone_within_the_timeout() {
    let fleet = Fleet::shared();
    let dir = Dir::new("hosts-dead");
    let dead_port = free_port();
    // Accepts TCP (the kernel completes the handshake) but never speaks SSH.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_port = silent.local_addr().unwrap().port();
    let mut toml = fleet.deploy_toml(&[0, 1], "/srv/app", "connect_timeout = \"1s\"");
    toml = toml.replace(
        "\n]\n",
        &format!(
            "\n  {{ name = \"dead\", addr = \"127.0.0.1\", port = {dead_port} }},\n  \
             {{ name = \"silent\", addr = \"127.0.0.1\", port = {silent_port} }},\n]\n"
        ),
    );
    dir.write("deploy.toml", toml);
    let out = hosts(&dir).args(["--check"]).run();
    out.code(1);
    let recs = out.records();
    assert_eq!(recs.len(), 4, "no record is dropped");
    assert!(
        recs[0].error.is_none() && recs[1].error.is_none(),
        "{}",
        out.stdout
    );
    let dead = recs[2].error.as_ref().expect("dead host fails");
    assert_eq!(dead.step, "hosts");
    assert!(
        dead.message
            .contains(&format!("cannot connect to 127.0.0.1:{dead_port}")),
        "{}",
        dead.message
    );
    let silent_err = recs[3].error.as_ref().expect("silent host fails");
    assert!(
        silent_err.message.contains("timed out after 1s"),
        "{}",
        silent_err.message
    );
    assert!(out.elapsed.as_secs() < 6, "took {:?}", out.elapsed);
    assert!(
        out.stderr.contains("dp-hosts: dead: hosts: cannot connect"),
        "{}",
        out.stderr
    );
    drop(silent);
}

#[test]
fn unknown_host_key_is_refused_and_accept_new_records_it() {
    let fleet = Fleet::shared();
    let dir = Dir::new("hosts-unknown-key");
    let kh = dir.write("known_hosts", "");
    let toml = fleet.deploy_toml(&[0, 1], "/srv/app", "").replace(
        &fleet.known_hosts.display().to_string(),
        &kh.display().to_string(),
    );
    dir.write("deploy.toml", &toml);

    let out = hosts(&dir).args(["--check"]).run();
    out.code(1);
    for r in out.records() {
        let e = r.error.expect("unknown key refused");
        assert!(
            e.message.contains("is unknown (ssh-ed25519 SHA256:"),
            "{}",
            e.message
        );
        assert!(e.message.contains("accept-new"), "{}", e.message);
    }
    assert_eq!(dir.read("known_hosts"), "", "a refused key is not recorded");

    let out = hosts(&dir)
        .args(["--check", "--host-key-policy", "accept-new"])
        .run();
    out.code(0);
    for r in out.records() {
        assert_eq!(r.steps["hosts"]["host_key"], "accepted-new");
        assert_eq!(
            r.ssh.host_key_policy,
            Some(dp_core::record::HostKeyPolicy::AcceptNew)
        );
    }
    let recorded = dir.read("known_hosts");
    for i in [0, 1] {
        assert!(
            recorded.contains(&fleet.hosts[i].known_hosts_line()),
            "{recorded}"
        );
    }

    // Recorded keys are now known, with the default strict policy.
    let out = hosts(&dir).args(["--check"]).run();
    out.code(0);
    assert!(out
        .records()
        .iter()
        .all(|r| r.steps["hosts"]["host_key"] == "known"));
}

#[test]
fn changed_host_key_is_refused_even_with_accept_new() {
    let fleet = Fleet::shared();
    let dir = Dir::new("hosts-changed-key");
    let other = dir.path().join("other_key");
    let other_pub = crate::util::keygen(&other, "ed25519");
    let port = fleet.hosts[0].port;
    let forged = format!("# a comment\n[127.0.0.1]:{port} {}\n", other_pub);
    let kh = dir.write("known_hosts", &forged);
    let toml = fleet.deploy_toml(&[0], "/srv/app", "").replace(
        &fleet.known_hosts.display().to_string(),
        &kh.display().to_string(),
    );
    dir.write("deploy.toml", &toml);
    for policy in ["strict", "accept-new"] {
        let out = hosts(&dir)
            .args(["--check", "--host-key-policy", policy])
            .run();
        out.code(1);
        let e = out.records()[0].error.clone().expect("changed key refused");
        assert!(e.message.contains("HOST KEY CHANGED"), "{}", e.message);
        assert!(e.message.contains("man-in-the-middle"), "{}", e.message);
        assert!(
            e.message.contains(&format!("[127.0.0.1]:{port}")),
            "{}",
            e.message
        );
    }
    assert_eq!(dir.read("known_hosts"), forged, "known_hosts is left alone");
}

#[test]
fn a_key_of_another_type_is_unknown_not_changed() {
    let fleet = Fleet::shared();
    let dir = Dir::new("hosts-other-type");
    let rsa = dir.path().join("rsa_key");
    let rsa_pub = crate::util::keygen(&rsa, "rsa");
    let port = fleet.hosts[0].port;
    let kh = dir.write("known_hosts", format!("[127.0.0.1]:{port} {}\n", rsa_pub));
    let toml = fleet.deploy_toml(&[0], "/srv/app", "").replace(
        &fleet.known_hosts.display().to_string(),
        &kh.display().to_string(),
    );
    dir.write("deploy.toml", &toml);
    let out = hosts(&dir).args(["--check"]).run();
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    // The server has no RSA key; its Ed25519 key is simply not known yet.
    assert!(e.message.contains("is unknown"), "{}", e.message);
}

#[test]
fn ssh_config_aliases_are_honoured() {
    let fleet = Fleet::shared();
    let dir = Dir::new("hosts-alias");
    dir.write(
        "deploy.toml",
        format!(
            "root = \"/srv/app\"\nknown_hosts = \"{}\"\n[stages.prod]\nhosts = [{{ name = \"webalias\" }}]\n",
            fleet.known_hosts.display()
        ),
    );
    let cmd = hosts(&dir).args(["--check"]);
    std::fs::create_dir_all(cmd.home().join(".ssh")).unwrap();
    std::fs::write(
        cmd.home().join(".ssh/config"),
        format!(
            "Host other\n  Port 1\n\nHost webalias\n  HostName 127.0.0.1\n  Port {}\n  User {}\n  IdentityFile {}\n  ForwardAgent no\n  ServerAliveInterval 7\n  ServerAliveCountMax 4\n",
            fleet.hosts[2].port,
            fleet.user,
            fleet.client_key.display()
        ),
    )
    .unwrap();
    let out = cmd.run();
    out.code(0);
    let r = &out.records()[0];
    assert_eq!(r.host, "webalias");
    assert_eq!(r.addr.as_deref(), Some("127.0.0.1"));
    assert_eq!(r.port, Some(fleet.hosts[2].port));
    assert_eq!(r.user.as_deref(), Some(fleet.user.as_str()));
    assert_eq!(r.ssh.server_alive_interval, Some(7));
    assert_eq!(r.ssh.server_alive_count_max, Some(4));
    assert_eq!(r.steps["hosts"]["reachable"], true);
}

#[test]
fn wrong_key_fails_authentication_clearly() {
    let fleet = Fleet::shared();
    let dir = Dir::new("hosts-auth");
    let stranger = dir.path().join("stranger");
    crate::util::keygen(&stranger, "ed25519");
    dir.write("deploy.toml", with_identity(fleet, &[0], &stranger));
    let out = hosts(&dir).args(["--check"]).run();
    out.code(1);
    let e = out.records()[0].error.clone().unwrap();
    assert!(
        e.message
            .starts_with(&format!("authentication as {:?} failed", fleet.user)),
        "{}",
        e.message
    );
    assert!(e.message.contains("stranger"), "{}", e.message);
}

/// `fleet`'s deploy.toml for the hosts `which`, naming the key file `key`.
fn with_identity(fleet: &Fleet, which: &[usize], key: &Path) -> String {
    fleet.deploy_toml(which, "/srv/app", "").replace(
        &fleet.client_key.display().to_string(),
        &key.display().to_string(),
    )
}

/// `dp-hosts --check` in `dir` with no terminal, the passphrase asked from `askpass` (an
/// executable script; made so here) answering `pass` (its $PASS).
fn check_with_askpass(dir: &Dir, askpass: &Path, pass: &str) -> crate::util::Outcome {
    std::fs::set_permissions(askpass, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    hosts(dir)
        .args(["--check"])
        .env("SSH_ASKPASS", askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .env("PASS", pass)
        .without_terminal()
        .run()
}

/// `n` hosts that also let in a key locked with the passphrase "open sesame", and a new
/// directory whose deploy.toml names that key for all of them.
fn locked_key_fleet(n: usize, name: &str) -> (Fleet, Dir, PathBuf) {
    let fleet = Fleet::start(n);
    let dir = Dir::new(name);
    let locked = dir.path().join("locked key");
    fleet.authorize(&keygen_locked(&locked, "ed25519", "open sesame"));
    let all: Vec<usize> = (0..n).collect();
    dir.write("deploy.toml", with_identity(&fleet, &all, &locked));
    (fleet, dir, locked)
}

#[test]
fn an_encrypted_key_is_opened_with_one_askpass_answer_for_all_hosts() {
    let (fleet, dir, locked) = locked_key_fleet(2, "hosts-passphrase");
    let asked = dir.path().join("asked");
    let askpass = dir.write(
        "askpass",
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$1\" >>'{}'\n[ -n \"$PASS\" ] || exit 1\nprintf '%s\\n' \"$PASS\"\n",
            asked.display()
        ),
    );
    let check = |pass: &str| check_with_askpass(&dir, &askpass, pass);

    // One question for both hosts, naming the key; both hosts let us in.
    let out = check("open sesame");
    out.code(0);
    for r in out.records() {
        assert_eq!(r.steps["hosts"]["reachable"], true, "{r:?}");
    }
    let questions = std::fs::read_to_string(&asked).unwrap();
    assert_eq!(
        questions.trim_end(),
        format!("Enter passphrase for key '{}':", locked.display())
    );
    assert!(!out.stdout.contains("open sesame") && !out.stderr.contains("open sesame"));

    // A wrong answer, no answer, and no way to ask: each host fails naming the key.
    let no_terminal = hosts(&dir).args(["--check"]).without_terminal().run();
    for (out, why) in [
        (
            check("open says me"),
            "wrong passphrase? the key did not open with it",
        ),
        (check(""), "gave no passphrase"),
        (
            no_terminal,
            "no terminal to ask on: load it into ssh-agent (ssh-add), or set SSH_ASKPASS",
        ),
    ] {
        out.code(1);
        for r in out.records() {
            let e = r.error.unwrap().message;
            assert!(e.starts_with("authentication as"), "{e}");
            assert!(e.contains(&format!("{} (", locked.display())), "{e}");
            assert!(e.contains(why), "{e}");
        }
    }
    // The wrong answer was asked for three times in all, the empty one once.
    let questions = std::fs::read_to_string(&asked).unwrap();
    assert_eq!(questions.lines().count(), 1 + 3 + 1, "{questions}");
    assert_eq!(questions.matches("Wrong passphrase, try again").count(), 2);

    // With no identity set, a plain default key is tried before an encrypted one, so
    // nothing is asked when the plain one is let in.
    let toml = fleet.deploy_toml(&[0, 1], "/srv/app", "").replace(
        &format!("identity = \"{}\"\n", fleet.client_key.display()),
        "",
    );
    assert!(!toml.contains("identity"));
    dir.write("defaults.toml", toml);
    let cmd = hosts(&dir);
    let ssh_dir = cmd.home().join(".ssh");
    std::fs::create_dir_all(&ssh_dir).unwrap();
    std::fs::copy(&locked, ssh_dir.join("id_ed25519")).unwrap();
    std::fs::copy(&fleet.client_key, ssh_dir.join("id_rsa")).unwrap();
    let out = cmd
        .args(["-c", "defaults.toml", "--check"])
        .env("SSH_ASKPASS", &askpass)
        .env("SSH_ASKPASS_REQUIRE", "force")
        .without_terminal()
        .run();
    out.code(0);
    assert_eq!(std::fs::read_to_string(&asked).unwrap(), questions);
}

/// On a terminal: the prompt turns echo off, the answer opens the key, and echo is back
/// afterwards, also when the prompt is interrupted with Ctrl-C.
#[test]
fn a_passphrase_is_asked_on_the_terminal_with_echo_off() {
    let (_fleet, dir, locked) = locked_key_fleet(1, "hosts-tty");
    let harness = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/pty_prompt.py");
    let on_terminal = |mode: &str| {
        let out = std::process::Command::new("python3")
            .arg(&harness)
            .arg(mode)
            .arg(crate::util::bin("dp-hosts"))
            .args(["--check"])
            .current_dir(dir.path())
            .env("HOME", dir.path())
            .env_remove("SSH_AUTH_SOCK")
            .env_remove("SSH_ASKPASS")
            .env_remove("SSH_ASKPASS_REQUIRE")
            .output()
            .unwrap();
        let shown = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{shown}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        shown
    };

    let shown = on_terminal("answer");
    assert!(
        shown.contains(&format!(
            "Enter passphrase for key '{}': ",
            locked.display()
        )),
        "{shown}"
    );
    assert!(shown.contains("\"reachable\":true"), "{shown}");
    assert!(
        !shown.contains("open sesame"),
        "the answer was echoed:\n{shown}"
    );
    assert!(shown.contains("exit code 0, echo after: on"), "{shown}");
    assert!(shown.contains("echo while asked: off"), "{shown}");

    let shown = on_terminal("interrupt");
    assert!(shown.contains("echo while asked: off"), "{shown}");
    assert!(shown.contains("exit code -2, echo after: on"), "{shown}");
}

#[test]
fn failed_records_pass_through_untouched() {
    let dir = Dir::new("hosts-failed");
    let input = "{\"host\":\"a\",\"transport\":\"local\",\"error\":{\"step\":\"sync\",\"message\":\"disk full\"}}\n";
    let out = hosts(&dir)
        .args(["--from", "-", "--check"])
        .stdin(input)
        .run();
    out.code(1);
    let r = &out.records()[0];
    assert!(r.steps.is_empty(), "a failed host is not checked");
    assert_eq!(r.error.as_ref().unwrap().message, "disk full");
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let dir = Dir::new("hosts-pipe");
    dir.write(
        "deploy.toml",
        "root = \"/r\"\n[stages.s]\nhosts = [{ name = \"a\" }, { name = \"b\" }, { name = \"c\" }]\n",
    );
    let script = format!(
        "set -o pipefail; {} | head -c 0",
        crate::util::bin("dp-hosts").display()
    );
    let status = std::process::Command::new("bash")
        .args(["-c", &script])
        .current_dir(dir.path())
        .status()
        .unwrap();
    assert!(status.success());
}

/// A PEM key (the older format, which libssh2 decrypts itself) opens with the askpass
/// answer on every host, and a wrong answer is named as such.
#[test]
fn an_encrypted_pem_key_is_opened_with_its_passphrase() {
    let fleet = Fleet::shared();
    let dir = Dir::new("hosts-pem-passphrase");
    let locked = dir.path().join("pem key");
    sh(
        "ssh-keygen",
        &[
            "-q", "-t", "rsa", "-b", "2048", "-m", "PEM", "-N", "pem pass", "-C", "dp-test", "-f",
        ]
        .into_iter()
        .chain([locked.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert!(std::fs::read_to_string(&locked)
        .unwrap()
        .contains("ENCRYPTED"));
    let public = std::fs::read_to_string(locked.with_extension("pub")).unwrap();
    fleet.authorize(public.trim());
    dir.write("deploy.toml", with_identity(fleet, &[0, 1], &locked));
    let askpass = dir.write("askpass", "#!/bin/sh\nprintf '%s\\n' \"$PASS\"\n");
    let check = |pass: &str| check_with_askpass(&dir, &askpass, pass);
    let out = check("pem pass");
    out.code(0);
    for r in out.records() {
        assert_eq!(r.steps["hosts"]["reachable"], true, "{r:?}");
    }
    let out = check("not it");
    out.code(1);
    for r in out.records() {
        let e = r.error.unwrap().message;
        assert!(e.to_lowercase().contains("wrong passphrase"), "{e}");
        assert!(!e.contains("not it"), "{e}");
    }
}
