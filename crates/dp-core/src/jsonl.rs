//! JSON lines in and out: every tool reads host records through [`read_records`] and
//! writes them through [`RecordWriter`].
//!
//! Input is read whole before any host is touched, so a malformed line stops the run
//! with exit code 2 and an error naming `stdin:LINE` and the cause. Blank lines are
//! skipped. Output is one record per line, flushed after each line so a downstream tool
//! sees it at once; a closed downstream pipe is reported as [`std::io::ErrorKind::BrokenPipe`]
//! for the CLI layer to treat as a normal end.

use crate::Record;
use std::collections::HashMap;
use std::io::{self, BufRead, Write};

/// A problem with the input stream, found before any host was touched.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// A line is not a valid record.
    #[error("{source_name}:{line}: {cause}")]
    Line {
        /// Where the lines came from (`stdin` or a file name).
        source_name: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        cause: String,
    },
    /// The stream could not be read.
    #[error("{source_name}: {source}")]
    Read {
        /// Where the lines came from.
        source_name: String,
        /// The read error.
        source: io::Error,
    },
}

/// Reads every record from `input`, checking that each line is a JSON object with a
/// string `host` and that no host name appears twice.
pub fn read_records(input: impl BufRead, source_name: &str) -> Result<Vec<Record>, InputError> {
    let mut records = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    let line_error = |line: usize, cause: String| InputError::Line {
        source_name: source_name.to_string(),
        line,
        cause,
    };
    for (index, line) in input.split(b'\n').enumerate() {
        let number = index + 1;
        let line = line.map_err(|source| InputError::Read {
            source_name: source_name.to_string(),
            source,
        })?;
        let text = std::str::from_utf8(&line)
            .map_err(|e| line_error(number, format!("not UTF-8: {e}")))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let value: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| line_error(number, format!("invalid JSON: {e}")))?;
        match value.get("host") {
            Some(serde_json::Value::String(h)) if !h.is_empty() => {}
            Some(serde_json::Value::String(_)) => {
                return Err(line_error(number, "`host` is empty".into()))
            }
            Some(_) => return Err(line_error(number, "`host` must be a string".into())),
            None if value.is_object() => {
                return Err(line_error(number, "missing field `host`".into()))
            }
            None => return Err(line_error(number, "expected a JSON object".into())),
        }
        let record: Record = serde_json::from_value(value)
            .map_err(|e| line_error(number, format!("invalid record: {e}")))?;
        record
            .check()
            .map_err(|e| line_error(number, format!("host {:?}: {e}", record.host)))?;
        if let Some(first) = seen.insert(record.host.clone(), number) {
            return Err(line_error(
                number,
                format!("duplicate host {:?} (first on line {first})", record.host),
            ));
        }
        records.push(record);
    }
    Ok(records)
}

/// Writes records as JSON lines, flushing after each one.
pub struct RecordWriter<W: Write> {
    out: W,
}

impl<W: Write> RecordWriter<W> {
    /// Wraps `out`.
    pub fn new(out: W) -> Self {
        RecordWriter { out }
    }

    /// Writes one record as one line and flushes it.
    pub fn write(&mut self, record: &Record) -> io::Result<()> {
        serde_json::to_writer(&mut self.out, record).map_err(io::Error::from)?;
        self.out.write_all(b"\n")?;
        self.out.flush()
    }

    /// Writes every record in order.
    pub fn write_all<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a Record>,
    ) -> io::Result<()> {
        records.into_iter().try_for_each(|r| self.write(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(input: &str) -> String {
        read_records(input.as_bytes(), "stdin")
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_and_skips_blank_lines() {
        let recs =
            read_records("{\"host\":\"a\"}\n\n{\"host\":\"b\"}\n".as_bytes(), "stdin").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[1].host, "b");
    }

    #[test]
    fn names_line_and_cause() {
        assert!(err("{\"host\":\"a\"}\n{oops\n").starts_with("stdin:2: invalid JSON"));
        assert_eq!(err("{\"addr\":\"x\"}"), "stdin:1: missing field `host`");
        assert_eq!(err("[1]"), "stdin:1: expected a JSON object");
        assert_eq!(
            err("{\"host\":\"a\"}\n{\"host\":\"a\"}"),
            "stdin:2: duplicate host \"a\" (first on line 1)"
        );
        assert!(err("{\"host\":\"a\",\"port\":\"x\"}").starts_with("stdin:1: invalid record"));
        assert!(
            err("{\"host\":\"a\",\"root\":\"/\"}").starts_with("stdin:1: host \"a\": root \"/\"")
        );
        assert!(err("{\"host\":\"a\",\"root\":\"-rf\"}").contains("not absolute"));
        assert!(err("{\"host\":\"a\",\"port\":0}").contains("1..65535"));
        assert!(err("{\"host\":\"a\\nb\"}").contains("control characters"));
    }
}
