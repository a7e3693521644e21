//! Benchmark helper: per-command latency on one open session.
//! `exec_lat RECORD_JSON [N] [COMMAND]` prints the milliseconds of each of N runs.
use dp_core::transport::{Connection, Transport};
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let record: dp_core::Record = serde_json::from_str(&args[1]).expect("a record");
    let n: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let cmd = args.get(3).map(String::as_str).unwrap_or("true");
    let t = Instant::now();
    let mut conn = Connection::open(&record).expect("connect");
    println!("connect {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    for _ in 0..n {
        let t = Instant::now();
        conn.run_ok(cmd, "command").expect("command");
        println!("exec {:.1} ms", t.elapsed().as_secs_f64() * 1000.0);
    }
}
