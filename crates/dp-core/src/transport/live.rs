//! Live output (`dp --verbose`): what the commands dp runs on hosts (restart, build,
//! dependencies, migrations) write, line by line as it comes, to a sink that prints it
//! with the host's name. Off unless [`stream_to`] was called. The scripts learn it from
//! `dp_live=1` (see `dp_deadline`), which then copies a command's output to stderr while
//! the command runs rather than after it ends.

use std::sync::RwLock;

type Sink = Box<dyn Fn(&str, &str) + Send + Sync>;

static SINK: RwLock<Option<Sink>> = RwLock::new(None);

/// Streams every host's command output to `sink(host, line)` from now on (in place of
/// the sink before, if any).
pub fn stream_to(sink: impl Fn(&str, &str) + Send + Sync + 'static) {
    *SINK.write().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(sink));
}

/// Values (4 bytes or more) that live lines show as `***`: secrets passed to the hosts'
/// commands (such as `DATABASE_URL` for a migration command), which may print them.
static HIDDEN: RwLock<Vec<String>> = RwLock::new(Vec::new());

/// Shows `value` as `***` in live lines from now on.
pub fn hide(value: &str) {
    if value.len() >= 4 {
        let mut hidden = HIDDEN.write().unwrap_or_else(|e| e.into_inner());
        if !hidden.iter().any(|v| v == value) {
            hidden.push(value.to_string());
        }
    }
}

/// Whether output is streamed.
pub fn enabled() -> bool {
    SINK.read().unwrap_or_else(|e| e.into_inner()).is_some()
}

/// `script` as a transport runs it: with `dp_live=1` first when output is streamed.
pub(crate) fn script(script: &str) -> std::borrow::Cow<'_, str> {
    if enabled() {
        format!("dp_live=1\n{script}").into()
    } else {
        script.into()
    }
}

/// Cuts one host's stderr into lines for the sink.
#[derive(Debug)]
pub(crate) struct Lines {
    host: String,
    partial: Vec<u8>,
}

impl Lines {
    /// Lines of `host`, when output is streamed.
    pub(crate) fn of(host: Option<&str>) -> Option<Lines> {
        let host = host.filter(|_| enabled())?;
        Some(Lines {
            host: host.to_string(),
            partial: Vec::new(),
        })
    }

    pub(crate) fn push(&mut self, data: &[u8]) {
        self.partial.extend_from_slice(data);
        while let Some(end) = self.partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.partial.drain(..=end).collect();
            self.emit(&line[..end]);
        }
    }

    fn emit(&self, line: &[u8]) {
        // dp's own marks (such as dp-sync's chaining mark) are not the commands' output.
        if line.starts_with(b"---dp-") {
            return;
        }
        if let Some(sink) = SINK.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
            let mut line = String::from_utf8_lossy(line).into_owned();
            for value in HIDDEN.read().unwrap_or_else(|e| e.into_inner()).iter() {
                line = line.replace(value.as_str(), "***");
            }
            sink(&self.host, line.trim_end_matches('\r'));
        }
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.emit(&self.partial);
        }
    }
}
