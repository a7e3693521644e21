//! Exit codes shared by every dp tool.

/// How a dp tool ends.
///
/// - `0`: every host is ok;
/// - `1`: at least one host failed (its record says which and why);
/// - `2`: usage, config or input error, found before any host was touched;
/// - `130`: interrupted; the records say where each host stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every host is ok.
    Ok = 0,
    /// At least one host failed; the records say which.
    HostFailed = 1,
    /// Usage, config or input error before any host was touched.
    Usage = 2,
    /// Interrupted (SIGINT, SIGTERM, SIGHUP); the records say where each host stands.
    Interrupted = 130,
}

impl Exit {
    /// The exit code for a finished run over `records`: 130 if it was interrupted, else 1
    /// if any failed, else 0.
    pub fn for_records<'a>(records: impl IntoIterator<Item = &'a crate::Record>) -> Exit {
        if crate::interrupt::interrupted() {
            Exit::Interrupted
        } else if records.into_iter().any(|r| r.failed()) {
            Exit::HostFailed
        } else {
            Exit::Ok
        }
    }

    /// The process exit code.
    pub fn code(self) -> i32 {
        self as i32
    }
}
