//! SIGINT and SIGTERM from fdtrace's first moment. Until the event loop
//! installs its handlers, a signal is noted here instead of killing
//! fdtrace (which would lose the report, and for `run` orphan CMD) or
//! being ignored (a background job of a non-interactive shell starts with
//! SIGINT ignored). The loop then acts on it as if it came just then. CMD
//! gets the dispositions fdtrace itself was started with.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

const SIGNALS: [libc::c_int; 2] = [libc::SIGINT, libc::SIGTERM];

/// The last signal noted before the loop took over, 0 if none.
static NOTED: AtomicI32 = AtomicI32::new(0);
/// Whether fdtrace was started with SIGINT, SIGTERM ignored.
static IGNORED: [AtomicBool; 2] = [AtomicBool::new(false), AtomicBool::new(false)];

extern "C" fn note(signal: libc::c_int) {
    NOTED.store(signal, Ordering::Relaxed);
}

/// Installs the noting handler for SIGINT and SIGTERM.
pub fn catch() {
    for (signal, ignored) in SIGNALS.iter().zip(&IGNORED) {
        // SAFETY: the handler only stores to an atomic (async-signal-safe);
        // the sigaction structs are zeroed plain-old-data.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            let mut old: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = note as *const () as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            action.sa_flags = libc::SA_RESTART;
            if libc::sigaction(*signal, &action, &mut old) == 0 {
                ignored.store(old.sa_sigaction == libc::SIG_IGN, Ordering::Relaxed);
            }
        }
    }
}

/// The signal that came before the loop's handlers, if any (once).
pub fn take_noted() -> Option<libc::c_int> {
    match NOTED.swap(0, Ordering::Relaxed) {
        0 => None,
        signal => Some(signal),
    }
}

/// In a forked child before exec: SIGINT and SIGTERM as fdtrace got them.
/// Async-signal-safe.
pub fn restore_in_child() {
    for (signal, ignored) in SIGNALS.iter().zip(&IGNORED) {
        let disposition = if ignored.load(Ordering::Relaxed) {
            libc::SIG_IGN
        } else {
            libc::SIG_DFL
        };
        // SAFETY: signal(2) is async-signal-safe.
        unsafe { libc::signal(*signal, disposition) };
    }
}
