//! strace as the fault injector, with its log kept: every test that injects
//! a fault (`-e inject=…`) reads the log back and asserts the fault landed
//! at least once, so that a scope that no longer matches (a renamed file, a
//! syscall this libc does not use) fails the test instead of passing it
//! without a fault.
//!
//! strace marks what it did on the traced call's line: `(INJECTED)` for
//! `error=`/`retval=`, `(DELAYED)` for `delay_enter=`/`delay_exit=`, and a
//! `+++ killed by SIGKILL +++` line after the call for `signal=SIGKILL`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// One strace run's log file (in a temp dir kept alive by this value).
pub struct Strace {
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Default for Strace {
    fn default() -> Self {
        Strace::new()
    }
}

impl Strace {
    pub fn new() -> Strace {
        let dir = tempfile::tempdir().expect("strace log dir");
        Strace {
            log: dir.path().join("strace.log"),
            _dir: dir,
        }
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// `strace -f -qq -o LOG ARGS...`, to prefix a command (for
    /// [`crate::Receiver::try_spawn`]).
    pub fn wrapper(&self, args: &[&str]) -> Vec<String> {
        let mut v: Vec<String> = ["strace", "-f", "-qq", "-o"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(self.log.display().to_string());
        v.extend(args.iter().map(|s| s.to_string()));
        v
    }

    /// `strace -f -qq -o LOG ARGS...` as a command, ready for the traced
    /// program and its arguments.
    pub fn command(&self, args: &[&str]) -> Command {
        let w = self.wrapper(args);
        let mut c = Command::new(&w[0]);
        c.args(&w[1..]);
        c
    }

    /// The log so far (empty if strace wrote nothing yet).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Faults strace applied so far: calls marked `(INJECTED)` or
    /// `(DELAYED)`, and processes killed by an injected signal.
    pub fn hits(&self) -> usize {
        count_hits(&self.log())
    }

    /// Lines of the log that record a fault, for messages and for tests
    /// that need to know which call was hit.
    pub fn hit_lines(&self) -> Vec<String> {
        let log = self.log();
        hit_lines(&log).map(str::to_string).collect()
    }

    /// Panics unless at least one fault landed; returns how many did.
    pub fn assert_hit(&self, what: &str) -> usize {
        let n = self.hits();
        if n == 0 {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{what}: strace injected nothing (no (INJECTED), (DELAYED) or killed-by line \
                 in {}); the fault never landed, so the test proved nothing. Last lines, newest \
                 first:\n{}",
                self.log.display(),
                tail.join("\n")
            );
        }
        n
    }
}

fn hit_lines(log: &str) -> impl Iterator<Item = &str> {
    log.lines().filter(|l| {
        l.ends_with("(INJECTED)") || l.ends_with("(DELAYED)") || l.contains("+++ killed by SIG")
    })
}

/// Faults recorded in a strace log (see [`Strace::hits`]).
pub fn count_hits(log: &str) -> usize {
    hit_lines(log).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_strace_fault_is_counted_and_plain_calls_are_not() {
        let log = "\
1 write(1, \"hi\\n\", 3)               = -1 EIO (Input/output error) (INJECTED)
1 write(1, \"hi\\n\", 3)               = 3
2 read(3, \"\", 4096)                  = 0 (DELAYED)
3 rename(\"a\", \"b\")                   = ?
3 +++ killed by SIGKILL +++
4 +++ exited with 0 +++
";
        assert_eq!(count_hits(log), 3);
        assert_eq!(count_hits("1 write(1, \"(INJECTED)\", 10) = 10\n"), 0);
    }

    /// The markers this module counts are what the installed strace writes.
    #[test]
    fn the_installed_strace_marks_what_it_injected() {
        if crate::lacks(
            "strace",
            "strace::the_installed_strace_marks_what_it_injected",
        ) {
            return;
        }
        let s = Strace::new();
        let st = s
            .command(&["-e", "inject=uname:error=EIO"])
            .arg("uname")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("strace uname");
        assert!(!st.success(), "uname succeeded despite the injected EIO");
        assert!(s.assert_hit("uname under EIO") >= 1);
        let quiet = Strace::new();
        let st = quiet
            .command(&["-e", "inject=uname:error=EIO:when=99"])
            .arg("uname")
            .stdout(std::process::Stdio::null())
            .status()
            .expect("strace uname");
        assert!(st.success());
        assert_eq!(quiet.hits(), 0, "{}", quiet.log());
    }
}
