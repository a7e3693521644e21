//! Transports over a real sshd and locally: streaming, exit codes, quoting.

use crate::util::Fleet;
use dp_core::transport::{Connection, Transport, TransportError};
use dp_core::{quote, Record, TransportKind};
use proptest::prelude::*;
use std::sync::Mutex;

fn local() -> Connection {
    let mut r = Record::new("local");
    r.transport = TransportKind::Local;
    Connection::open(&r).unwrap()
}

fn ssh() -> Connection {
    Connection::open(&Fleet::shared().record(0)).unwrap()
}

fn round_trip(conn: &mut Connection) {
    // 3 MiB through `cat`: more than any SSH window, so input and output must flow together.
    let input: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let mut out = Vec::new();
    let status = conn
        .exec(
            "cat; echo 'to stderr' >&2; exit 3",
            Some(&mut input.as_slice()),
            &mut out,
        )
        .unwrap();
    assert_eq!(out.len(), input.len());
    assert!(out == input, "stdout differs from stdin");
    assert_eq!(status.code, Some(3));
    assert_eq!(status.stderr_tail(1), "to stderr");
    // The same session runs the next command.
    let out = conn.run_ok("printf hello", "printf").unwrap();
    assert_eq!(out, b"hello");
    let err = conn
        .run_ok("echo boom >&2; exit 7", "the test command")
        .unwrap_err();
    assert!(matches!(err, TransportError::Command { .. }));
    assert_eq!(
        err.to_string(),
        "the test command failed (exit status 7): boom"
    );
}

#[test]
fn ssh_round_trips_stdin_stdout_and_exit_code() {
    round_trip(&mut ssh());
}

/// In dp's programs (and this test binary) libssh2's ChaCha20 and Poly1305 are OpenSSL 3's
/// or the RustCrypto crates', through the link flags in build.rs, and sshd accepts what
/// each computes (a wrong byte or tag would end the session). One test, as the backend is
/// the process's.
#[cfg(dp_linux)]
#[test]
fn ssh_encrypts_with_the_fast_chacha20_poly1305_of_each_backend() {
    use dp_core::transport::chachapoly::{self, Backend};
    let mut backends = vec![Backend::RustCrypto];
    if chachapoly::backend() == Some(Backend::OpenSsl3) {
        backends.insert(0, Backend::OpenSsl3);
    }
    for b in backends {
        chachapoly::set_backend(Some(b));
        let mut conn = ssh();
        let cipher = conn.info().cipher.unwrap_or_default();
        assert_eq!(cipher, "chacha20-poly1305@openssh.com");
        let before = chachapoly::calls();
        round_trip(&mut conn);
        // At least one ChaCha20 and one Poly1305 call per packet of the 6 MiB round trip.
        assert!(
            chachapoly::calls() - before > 2 * 6 * 1024 * 1024 / 32768,
            "libssh2 used its own ChaCha20 ({b:?})"
        );
    }
    chachapoly::set_backend(None);
}

#[test]
fn local_round_trips_stdin_stdout_and_exit_code() {
    round_trip(&mut local());
}

#[test]
fn ssh_reports_signals() {
    let status = ssh().run("kill -TERM $$").unwrap().status;
    assert_eq!(status.code, None);
    assert_eq!(status.signal.as_deref(), Some("TERM"));
}

const HOSTILE: &[&[u8]] = &[
    b"with space",
    b"it's",
    b"\"double\"",
    b"new\nline",
    b"$(touch /tmp/dp-pwned)",
    b"`touch /tmp/dp-pwned`",
    b"a; touch /tmp/dp-pwned",
    b"-rf",
    b"--",
    b"*",
    b"~",
    b"$HOME",
    b"back\\slash",
    b"\xff\xfe non-utf8 \x80",
    b"caf\xc3\xa9 \xe2\x98\x83",
    b"",
    b"\t\r\x01\x7f",
    b"trailing newline\n\n",
];

/// Runs `printf '%s\0' ARGS...` and splits what comes back.
fn echo_args(conn: &mut Connection, args: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut script = String::from("printf '%s\\0'");
    for a in args {
        script.push(' ');
        script.push_str(&quote(a).unwrap());
    }
    let out = conn.run_ok(&script, "printf").unwrap();
    let mut parts: Vec<Vec<u8>> = out.split(|b| *b == 0).map(<[u8]>::to_vec).collect();
    assert_eq!(parts.pop(), Some(vec![]), "output ends with NUL");
    parts
}

#[test]
fn hostile_arguments_arrive_byte_identical() {
    let _ = std::fs::remove_file("/tmp/dp-pwned");
    for conn in [&mut local(), &mut ssh()] {
        let got = echo_args(conn, HOSTILE);
        let want: Vec<Vec<u8>> = HOSTILE.iter().map(|a| a.to_vec()).collect();
        assert_eq!(got, want);
    }
    assert!(
        !std::path::Path::new("/tmp/dp-pwned").exists(),
        "an argument was executed"
    );
    assert!(quote(b"nul\0byte").is_err());
}

static SSH_CONN: Mutex<Option<Connection>> = Mutex::new(None);

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn any_bytes_survive_quoting_over_ssh(args in prop::collection::vec(
        prop::collection::vec(1u8..=255, 0..40), 1..6))
    {
        let mut guard = SSH_CONN.lock().unwrap_or_else(|e| e.into_inner());
        let conn = guard.get_or_insert_with(ssh);
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        prop_assert_eq!(echo_args(conn, &refs), args);
    }
}
