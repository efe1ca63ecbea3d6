//! A spool written by the older shipper, taken over as it is: ready
//! episodes ship, unfinished ones wait, a tarball of an earlier run ships
//! as it is, a stale `.partial` is swept, old `quarantine_reason.json`
//! files are read (and kept), and an old 412 is re-queued once allowed.

use std::fs;

use ferry_tests::{make_episode, pack_sha, stored, until, Receiver, Spool, COMMIT_A, COMMIT_B};

use super::{read_json, small, Daemon};

#[test]
fn an_old_layout_spool_is_taken_over_without_loss() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "old-host");
    let p = spool.path();
    // The old shipper left no conflict/ directory.
    fs::remove_dir(p.join("conflict")).unwrap();
    small(&spool, "ready-1", 1);
    small(&spool, "ready-2", 2);
    // Still being written: no done.marker.
    let writing = small(&spool, "writing", 3);
    fs::remove_file(writing.join("done.marker")).unwrap();
    // A complete tarball from an earlier run, and a stale partial.
    let with_tar = small(&spool, "had-tarball", 4);
    let out = std::process::Command::new(ferry_tests::bin("ferry-agent"))
        .arg("pack")
        .arg(&with_tar)
        .arg("-o")
        .arg(p.join("outbox/had-tarball.tar.zst"))
        .output()
        .unwrap();
    assert!(out.status.success());
    fs::write(p.join("outbox/ready-2.tar.zst.partial"), b"half a tarball").unwrap();
    // Already shipped long ago.
    small(&spool, "shipped-old", 5);
    fs::rename(
        p.join("episodes/shipped-old"),
        p.join("shipped/shipped-old"),
    )
    .unwrap();
    // Quarantined by the old shipper: a 412 without commit or kind, and a
    // 400 with a field we do not know.
    let q412 = make_episode(
        &p.join("old-q"),
        "old-412",
        Some(COMMIT_B),
        &[("x.bin", b"x")],
    );
    fs::rename(&q412, p.join("quarantine/old-412")).unwrap();
    fs::write(
        p.join("quarantine/old-412/quarantine_reason.json"),
        r#"{"status_code": 412, "error": "commit-rejected", "body": "{\"status\":\"commit-rejected\"}", "quarantined_at_wall": "2026-01-02T03:04:05Z"}"#,
    )
    .unwrap();
    let q400 = make_episode(
        &p.join("old-q"),
        "old-400",
        Some(COMMIT_A),
        &[("y.bin", b"y")],
    );
    fs::rename(&q400, p.join("quarantine/old-400")).unwrap();
    let old400 = r#"{"status_code": 400, "error": "malformed-body", "body": null, "quarantined_at_wall": "2026-01-02T03:04:05Z", "host": "lab-7"}"#;
    fs::write(p.join("quarantine/old-400/quarantine_reason.json"), old400).unwrap();

    let out = spool
        .agent("quarantine")
        .args(["list", "--json"])
        .output()
        .unwrap();
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("list --json reads old files");
    assert_eq!(v.as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v[1]["kind"], "commit-rejected", "{v}");
    assert_eq!(v[0]["host"], "lab-7", "unknown fields kept: {v}");

    let d = Daemon::start(
        &spool,
        &[
            ("FERRY_AGENT_RECHECK_INTERVAL", "1s"),
            ("FERRY_AGENT_SCAN_INTERVAL", "200ms"),
            // The old quarantine is dated in the past: keep it out of the
            // retention sweep, which has its own test.
            ("FERRY_AGENT_QUARANTINE_KEEP", "100000d"),
        ],
    );
    until(
        "ready episodes shipped",
        || d.log(),
        || {
            let s = stored(&rx);
            ["ready-1", "ready-2", "had-tarball"]
                .iter()
                .all(|id| s.contains_key(*id))
        },
    );
    let s = stored(&rx);
    assert_eq!(s["had-tarball"], pack_sha(&p.join("shipped/had-tarball")));
    assert!(!s.contains_key("writing") && !s.contains_key("shipped-old"));
    assert_eq!(spool.ids_in("episodes"), ["writing"]);
    assert!(p.join("conflict").is_dir());
    until(
        "stale partial swept",
        || d.log(),
        || super::outbox(&spool).is_empty(),
    );
    // The old 400 stays as it was, byte for byte; the old 412 is re-queued
    // once the receiver allows its commit (read from meta.json).
    assert_eq!(
        fs::read_to_string(p.join("quarantine/old-400/quarantine_reason.json")).unwrap(),
        old400
    );
    rx.allow(COMMIT_B, false);
    until(
        "old 412 shipped",
        || d.log(),
        || stored(&rx).contains_key("old-412"),
    );
    until(
        "old 412 retired",
        || d.log(),
        || spool.ids_in("shipped").contains(&"old-412".to_string()),
    );
    assert!(!p.join("shipped/old-412/quarantine_reason.json").exists());
    assert_eq!(spool.ids_in("quarantine"), ["old-400"]);
    let _ = read_json(&p.join(".ferry-agent-state.json"));
}

/// What a crash leaves (an orphan tarball of an episode already retired, a
/// stale partial, an aside copy of a replaced directory) is finished by
/// the next `drain`, not only by the daemon.
#[test]
fn drain_finishes_what_a_crash_left() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "leftovers");
    let p = spool.path();
    small(&spool, "done-before", 1);
    fs::rename(
        p.join("episodes/done-before"),
        p.join("shipped/done-before"),
    )
    .unwrap();
    fs::write(p.join("outbox/done-before.tar.zst"), b"orphan").unwrap();
    fs::write(p.join("outbox/gone.tar.zst.partial"), b"half").unwrap();
    fs::create_dir_all(p.join("shipped/.x.old-123/data")).unwrap();
    small(&spool, "new", 2);
    let out = spool.drain("60s");
    assert!(out.status.success(), "{}", super::text(&out));
    assert!(
        super::outbox(&spool).is_empty(),
        "{:?}",
        super::outbox(&spool)
    );
    assert_eq!(spool.ids_in("shipped"), ["done-before", "new"]);
    assert!(stored(&rx).contains_key("new"));
}
