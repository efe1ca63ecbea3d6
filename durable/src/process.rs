//! Process-wide settings the programs make once at start-up, before any
//! other thread exists: the allocator's thresholds (receiver) and the
//! signal dispositions before the async handlers are installed (agent).
//! They need `unsafe` calls into libc, which live here, next to the other
//! system calls of the workspace, so that the program crates forbid it.

use std::sync::atomic::{AtomicBool, Ordering};

/// Asks glibc's malloc to keep up to `trim_threshold` freed bytes per
/// arena instead of giving them back to the kernel at once, and to serve
/// blocks below `mmap_threshold` from the arenas: memory freed by one
/// buffer is then reused by the next instead of faulted in and zeroed
/// afresh. glibc only; with other C libraries this does nothing. Call it
/// before any other thread exists.
pub fn keep_freed_memory(mmap_threshold: i32, trim_threshold: i32) {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, mmap_threshold);
        libc::mallopt(libc::M_TRIM_THRESHOLD, trim_threshold);
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    let _ = (mmap_threshold, trim_threshold);
}

/// Set by a SIGTERM/SIGINT caught by [`catch_early_signals`].
static EARLY_SIGNAL: AtomicBool = AtomicBool::new(false);

extern "C" fn early_signal(_: libc::c_int) {
    EARLY_SIGNAL.store(true, Ordering::SeqCst);
}

/// Catches SIGTERM and SIGINT from now on by setting a flag
/// ([`early_signal_seen`]) instead of dying of the default action: a
/// signal that arrives before a daemon's async handlers are installed (an
/// orchestrator stopping it during start-up) then ends it cleanly. Tokio's
/// handlers, installed later, chain to this one.
pub fn catch_early_signals() {
    let handler: extern "C" fn(libc::c_int) = early_signal;
    // SAFETY: the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        libc::signal(libc::SIGTERM, handler as libc::sighandler_t);
        libc::signal(libc::SIGINT, handler as libc::sighandler_t);
    }
}

/// Gives SIGTERM and SIGINT their default action back (one-shot commands
/// stop on a signal the ordinary way).
pub fn default_signals() {
    // SAFETY: restoring the default disposition.
    unsafe {
        libc::signal(libc::SIGTERM, libc::SIG_DFL);
        libc::signal(libc::SIGINT, libc::SIG_DFL);
    }
}

/// Whether a SIGTERM/SIGINT arrived since [`catch_early_signals`].
pub fn early_signal_seen() -> bool {
    EARLY_SIGNAL.load(Ordering::SeqCst)
}
