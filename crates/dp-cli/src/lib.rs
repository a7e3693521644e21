//! dp-cli: what every dp binary shares. The command-line definitions (one module per
//! tool, like cargo's `commands/`), the error reporter and exit handling. Binaries only
//! call [`main_with`] with a command's `run`.

/// `eprintln!` that ignores a failed write: after SIGHUP the terminal is gone, and std's
/// `eprintln!` would panic there, before the finish that releases the locks. Defined
/// before the modules, so it is the one they all use.
macro_rules! eprintln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod args;
pub mod deps;
pub mod dp;
pub mod hosts;
pub mod io;
pub mod migrate;
pub mod progress;
pub mod restart;
pub mod sync;
pub mod table;

use dp_core::Exit;

/// Runs a tool and exits: with the tool's [`Exit`] on success; with 2 after printing the
/// whole cause chain on error; with 0 when stdout was closed by the reader (a broken pipe
/// is how `dp-hosts | head -1` ends, not a failure).
pub fn main_with(name: &str, run: impl FnOnce() -> anyhow::Result<Exit>) -> ! {
    dp_core::interrupt::install();
    dp_core::parallel::raise_fd_limit();
    let code = match run() {
        Ok(exit) => exit.code(),
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            eprintln!("{name}: error: {e:#}");
            Exit::Usage.code()
        }
    };
    std::process::exit(code)
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// Prints one line per host that failed in `step`: `tool: host: step: cause`.
pub fn report_failures(tool: &str, step: &str, records: &[dp_core::Record]) {
    for r in records {
        if let Some(err) = r.error.as_ref().filter(|e| e.step == step) {
            report_error(tool, r, err);
        }
    }
}

/// `tool: host: step: message`, then the error's details (evidence), indented.
pub fn report_error(tool: &str, r: &dp_core::Record, err: &dp_core::record::HostError) {
    eprintln!("{tool}: {}: {}: {}", r.host, err.step, err.message);
    for line in err.details.iter().flat_map(|d| d.lines()) {
        eprintln!("    {line}");
    }
}

/// Prints the `warnings` a step left in each record's `steps.<step>`: `tool: host: warning`.
pub fn report_warnings(tool: &str, step: &str, records: &[dp_core::Record]) {
    for r in records {
        let warnings = r
            .steps
            .get(step)
            .and_then(|s| s.get("warnings"))
            .and_then(|w| w.as_array());
        for w in warnings.into_iter().flatten() {
            eprintln!(
                "{tool}: {}: warning: {}",
                r.host,
                w.as_str().unwrap_or_default()
            );
        }
    }
}
