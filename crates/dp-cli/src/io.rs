//! Records in and out for the command-line tools: stdin through dp-core's reader, stdout
//! one flushed line per record.

use anyhow::Context;
use dp_core::jsonl::{read_records, RecordWriter};
use dp_core::Record;
use std::io::BufReader;

/// Reads records from `path` (`-` is stdin); any malformed line is an error (exit 2).
pub fn read_input(path: &str) -> anyhow::Result<Vec<Record>> {
    if path == "-" {
        let stdin = std::io::stdin();
        if std::io::IsTerminal::is_terminal(&stdin) {
            // Nothing piped in: say what is awaited rather than wait silently.
            let me = std::env::args()
                .next()
                .map(|a| a.rsplit('/').next().unwrap_or(&a).to_string())
                .unwrap_or_else(|| "dp".into());
            eprintln!(
                "{me}: reading host records (JSON lines) from stdin: pipe dp-hosts into it \
                 (dp-hosts | {me} ...), or type them and end with Ctrl-D"
            );
        }
        Ok(read_records(stdin.lock(), "stdin")?)
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {path}"))?;
        Ok(read_records(BufReader::new(file), path)?)
    }
}

/// Writes records to stdout, one flushed line each.
pub fn write_output(records: &[Record]) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    RecordWriter::new(stdout.lock())
        .write_all(records)
        .context("cannot write records to stdout")
}
