//! Benchmark helper: streams stdin into a command on one host through dp's transport.
//!
//! `ssh_pipe RECORD_JSON COMMAND` prints the negotiated cipher and the seconds the
//! transfer took (connect excluded) on stderr. Used by scripts/bench/hosts.sh.

use dp_core::transport::{Connection, Transport};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, record, command] = args.as_slice() else {
        eprintln!("usage: ssh_pipe RECORD_JSON COMMAND");
        std::process::exit(2);
    };
    let record: dp_core::Record = serde_json::from_str(record).expect("a record");
    let mut conn = Connection::open(&record).expect("connect");
    let started = Instant::now();
    let mut stdin = std::io::stdin();
    let status = conn
        .exec(command, Some(&mut stdin), &mut std::io::sink())
        .expect("exec");
    assert!(status.success(), "{}", status.stderr_tail(5));
    eprintln!(
        "{} {:.3}",
        conn.info().cipher.unwrap_or_default(),
        started.elapsed().as_secs_f64()
    );
}
