//! Interrupts (SIGINT, SIGTERM, SIGHUP) that leave a clean fleet.
//!
//! The first signal only raises a flag: nothing new is started (no upload, no step on a
//! host that has not begun it, no next batch), commands in flight that may stop do stop
//! (an upload is cut off: the host never builds a release from it), and what must finish
//! does ([`critical`]: a batch being switched, switched back, the finish that releases
//! the locks). The tool then prints its records and exits 130 ([`crate::Exit::Interrupted`]). A second signal ends the
//! process at once (the handler is reset to the default when it first runs); the locks
//! then lapse with their lease.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CRITICAL: Cell<bool> = const { Cell::new(false) };
}

extern "C" fn on_signal(_: libc::c_int) {
    // Async-signal-safe: one atomic store.
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs the handlers. Signals that were ignored when the process started (a tool
/// under `nohup`, or in a background job) stay ignored.
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: sigaction with a handler that only stores to an atomic; SA_RESETHAND
        // puts the default back, so a second signal ends the process.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) == 0
                && old.sa_sigaction == libc::SIG_IGN
            {
                continue;
            }
            let mut act: libc::sigaction = std::mem::zeroed();
            act.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
            act.sa_flags = libc::SA_RESETHAND | libc::SA_RESTART;
            libc::sigemptyset(&mut act.sa_mask);
            libc::sigaction(sig, &act, std::ptr::null_mut());
        }
    }
}

/// True once the first signal came.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// True when a command in flight on this thread should stop now: interrupted, and not
/// inside [`critical`].
pub fn should_stop() -> bool {
    interrupted() && !CRITICAL.with(Cell::get)
}

/// Runs `f` as work that must finish even after an interrupt (on this thread).
pub fn critical<T>(f: impl FnOnce() -> T) -> T {
    let before = CRITICAL.with(|c| c.replace(true));
    let out = f();
    CRITICAL.with(|c| c.set(before));
    out
}
