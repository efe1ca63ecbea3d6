//! SPEC §6 on a real `NOTIFY_SOCKET`: READY=1 once the spool is usable,
//! STATUS= with the one-line summary, STOPPING=1 on SIGTERM, exit 0.

use std::time::Duration;

use ferry_tests::{stored, until, Receiver, Spool, COMMIT_A, COMMIT_B};

use super::{daemon_with_notify, episode, small, NotifySocket};

#[test]
fn ready_status_and_stopping_on_a_real_notify_socket() {
    let _load = ferry_tests::gap_sensitive();
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "notify");
    small(&spool, "n-1", 1);
    episode(&spool, "n-rejected", Some(COMMIT_B), 2);
    let ns = NotifySocket::new();
    let mut d = daemon_with_notify(&spool, &ns, None, &[("FERRY_AGENT_SCAN_INTERVAL", "200ms")]);
    ferry_tests::wait_for("READY=1", || ns.first("READY=1"));
    until("shipped", || d.log(), || stored(&rx).contains_key("n-1"));
    until(
        "STATUS with the summary",
        || d.log(),
        || {
            ns.matching("STATUS=").iter().any(|(_, m)| {
                m.contains("pending 0")
                    && m.contains("shipped today 1")
                    && m.contains("quarantined 1")
                    && m.contains("last error: n-rejected")
            })
        },
    );
    assert!(ns.first("STOPPING=1").is_none());
    let st = d.sigterm(Duration::from_secs(30));
    assert!(st.success(), "{st}");
    assert!(ns.first("STOPPING=1").is_some(), "no STOPPING=1");
    assert!(
        ns.matching("WATCHDOG=1").is_empty(),
        "fed a watchdog nobody asked for"
    );
}

#[test]
fn ready_is_not_sent_when_the_spool_is_unusable() {
    let rx = Receiver::start();
    let spool = Spool::new(&rx, "unusable");
    let ns = NotifySocket::new();
    // A spool path under a regular file can never be created.
    let file = spool.path().join("a-file");
    std::fs::write(&file, b"x").unwrap();
    let mut cmd = std::process::Command::new(ferry_tests::bin("ferry-agent"));
    cmd.arg("run")
        .arg("--spool")
        .arg(file.join("spool"))
        .arg("--receiver")
        .arg(&rx.url)
        .arg("--token-file")
        .arg(&spool.token_file);
    for (k, v) in ns.env(None) {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", super::text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not usable"),
        "{}",
        super::text(&out)
    );
    assert!(ns.first("READY=1").is_none());
}

/// A stop that arrives while the daemon is still starting (an orchestrator
/// restarting it in a hurry) is a clean shutdown too, never a death by
/// signal.
#[test]
fn sigterm_during_startup_is_a_clean_exit() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "early");
    small(&spool, "e-1", 1);
    // Signal as soon as the process catches SIGTERM at all (its first
    // act in main), then at a few later instants of the start-up. Before
    // main no program can catch a signal.
    for delay_ms in [0u64, 1, 5, 20, 100] {
        let mut d = super::Daemon::start(&spool, &[]);
        ferry_tests::wait_for("SIGTERM caught", || {
            catches_sigterm(d.child.id()).then_some(())
        });
        std::thread::sleep(Duration::from_millis(delay_ms));
        let st = d.sigterm(Duration::from_secs(30));
        assert!(st.success(), "after {delay_ms} ms: {st}\n{}", d.log());
    }
    assert!(spool.ids_in("quarantine").is_empty());
}

/// Whether `pid` has a handler for SIGTERM (bit 15 of `SigCgt`).
fn catches_sigterm(pid: u32) -> bool {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
        .is_some_and(|m| m & (1 << (libc::SIGTERM - 1)) != 0)
}
