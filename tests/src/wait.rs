//! Bounded waits: for a condition to hold and for a process to exit. Each
//! fails loudly after its deadline, with the log the caller hands in, so
//! that a hang is a test failure with a reason rather than a stuck CI job.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use crate::DEADLINE;

/// Poll `f` until it returns `Some`, or panic with `what` after [`DEADLINE`].
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    wait_for_logged(what, &String::new, f)
}

/// Poll until `f` holds, or panic with `what` and `log` (say, the daemon's
/// stderr so far) after [`DEADLINE`].
pub fn until(what: &str, log: impl Fn() -> String, mut f: impl FnMut() -> bool) {
    wait_for_logged(what, &log, || f().then_some(()))
}

fn wait_for_logged<T>(what: &str, log: &dyn Fn() -> String, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > DEADLINE {
            panic!(
                "timed out after {DEADLINE:?} waiting for {what}{}",
                with_log(log)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Wait for a child with a deadline; kill -9 it and panic if it overstays.
pub fn wait_exit(child: &mut Child, within: Duration) -> ExitStatus {
    let what = format!("process {}", child.id());
    exit_within(child, within, &what, &String::new)
}

/// Wait for `child` at most `within`; kill -9 it and panic with `what` and
/// `log` if it is still running then (a hang is the failure these tests
/// look for).
pub fn exit_within(
    child: &mut Child,
    within: Duration,
    what: &str,
    log: &dyn Fn() -> String,
) -> ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            return st;
        }
        if start.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still running after {within:?}{}", with_log(log));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `; log:\n<log>`, or nothing when there is no log.
fn with_log(log: &dyn Fn() -> String) -> String {
    let text = log();
    if text.is_empty() {
        text
    } else {
        format!("; log:\n{text}")
    }
}
