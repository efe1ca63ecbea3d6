//! Skips and the machine's load: [`skip`] is the one way a test, or a part
//! of one, is skipped (loud, logged for `cargo xtask test`, and a failure
//! under `FERRY_REQUIRE_ALL=1`); [`heavy`] and [`gap_sensitive`] keep heavy
//! tests apart from timing-sensitive ones.

use std::io::Write;

/// Whether a command is on PATH (an executable file in one of its
/// directories, as `command -v` finds it, without needing a shell). Tests
/// that need a tool go through [`lacks`], which reports through [`skip`].
pub fn have(tool: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(path) = std::env::var_os("PATH") else {
        return false;
    };
    std::env::split_paths(&path).any(|dir| {
        std::fs::metadata(dir.join(tool))
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    })
}

/// Whether `test` must be skipped because `tool` is not on PATH; if so,
/// says so loudly through [`skip`]. `if lacks("strace", NAME) { return; }`
pub fn lacks(tool: &str, test: &str) -> bool {
    if have(tool) {
        return false;
    }
    skip(test, &format!("{tool} is not installed"));
    true
}

/// Whether the run forbids skips (`FERRY_REQUIRE_ALL=1`, set by `.ci/run`).
pub fn require_all() -> bool {
    std::env::var("FERRY_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// The one way a test, or a part of one, is skipped: loudly on stderr and in
/// the file `cargo xtask test` prints at the end (`FERRY_SKIP_LOG`). Under
/// `FERRY_REQUIRE_ALL=1` a skip is a failure: it panics with the reason.
pub fn skip(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("\n!!!!!!!! {line} !!!!!!!!\n");
    if let Ok(path) = std::env::var("FERRY_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{line}");
        }
    }
    if require_all() {
        panic!(
            "{line}; FERRY_REQUIRE_ALL=1 allows no skip (.ci/run installs what the suite needs)"
        );
    }
}

/// The machine's load, shared by the tests of the one e2e binary: a heavy
/// test (zstd level 19, 48 concurrent uploads, slowloris) holds it
/// exclusively, a test that measures gaps or latencies (watchdog feeds,
/// "within a second", "promptly") holds it shared. So no heavy test runs
/// beside a gap-sensitive one, whatever `--test-threads` is, and the
/// others run as before.
static LOAD: std::sync::RwLock<()> = std::sync::RwLock::new(());

/// Held for the whole of a heavy test (see [`LOAD`]).
pub fn heavy() -> std::sync::RwLockWriteGuard<'static, ()> {
    // A test that panicked holding it poisons it; the lock still works.
    LOAD.write().unwrap_or_else(|e| e.into_inner())
}

/// Held for the whole of a gap-sensitive test (see [`LOAD`]).
pub fn gap_sensitive() -> std::sync::RwLockReadGuard<'static, ()> {
    LOAD.read().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod strict_mode {
    //! `FERRY_REQUIRE_ALL=1` turns a skip into a failure: shown by running
    //! a test of this binary again, in a child process whose PATH holds no
    //! tool at all.

    use std::process::Command;

    /// Set for the child run only; without it the child test does nothing.
    const CHILD: &str = "FERRY_STRICT_MODE_CHILD";

    #[test]
    fn child_needs_a_tool() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        // Passes when strace is found; skips (or, strictly, fails) when not.
        let _ = crate::lacks("strace", "skip::strict_mode::child_needs_a_tool");
    }

    /// The child under a PATH without strace, with and without strict mode:
    /// (success, skip log).
    fn child(strict: bool) -> (bool, String) {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("skipped.txt");
        let mut c = Command::new(std::env::current_exe().unwrap());
        c.args([
            "--exact",
            "skip::strict_mode::child_needs_a_tool",
            "--test-threads=1",
        ])
        .env(CHILD, "1")
        .env("PATH", dir.path())
        .env("FERRY_SKIP_LOG", &log)
        .env_remove("FERRY_REQUIRE_ALL");
        if strict {
            c.env("FERRY_REQUIRE_ALL", "1");
        }
        let out = c.output().expect("run this test binary again");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("1 passed") || stdout.contains("1 failed"),
            "{stdout}"
        );
        (
            out.status.success(),
            std::fs::read_to_string(&log).unwrap_or_default(),
        )
    }

    #[test]
    fn a_missing_tool_is_a_loud_skip_and_under_require_all_a_failure() {
        let (ok, log) = child(false);
        assert!(ok, "without FERRY_REQUIRE_ALL a missing tool skips");
        assert!(
            log.contains("SKIPPED skip::strict_mode::child_needs_a_tool: strace is not installed"),
            "{log:?}"
        );
        let (ok, log) = child(true);
        assert!(!ok, "FERRY_REQUIRE_ALL=1 let a test pass without its tool");
        assert!(log.contains("SKIPPED"), "the skip is still logged: {log:?}");
    }
}
