//! The chaining hook: a later step's script run in the same session right after the build
//! ([`crate::Then`]), its output told apart from the build's by a mark.

/// Marks, on stdout and stderr, where the output of a [`Then`] script starts.
pub(crate) const THEN_MARK: &[u8] = b"---dp-then---\n";
/// Starts the line with the exit status of a [`Then`] script.
pub(crate) const THEN_STATUS: &str = "---dp-then-status ";

/// The shell that runs `script` after the build, in a subshell with its own `set -e`,
/// whatever its exit status (the build is done by then).
pub(crate) fn then_script(script: &str) -> String {
    let mark = std::str::from_utf8(THEN_MARK).expect("ascii");
    format!("set +e\nprintf '%s' '{mark}'\nprintf '%s' '{mark}' >&2\n(\n{script}\n)\necho \"{THEN_STATUS}$?\"\n")
}

/// The then-script's output and status from what followed the mark.
pub(crate) fn then_result(
    mut stdout: Vec<u8>,
    stderr: Vec<u8>,
) -> Result<dp_core::transport::Output, String> {
    let mark = THEN_STATUS.as_bytes();
    let Some(at) = stdout.windows(mark.len()).rposition(|w| w == mark) else {
        return Err("the host did not report how the step ended".into());
    };
    let code: i32 = String::from_utf8_lossy(&stdout[at + mark.len()..])
        .trim()
        .parse()
        .map_err(|_| "the host reported an unreadable exit status".to_string())?;
    stdout.truncate(at);
    Ok(dp_core::transport::Output {
        status: dp_core::transport::ExecStatus {
            code: Some(code),
            signal: None,
            stderr,
        },
        stdout,
    })
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
