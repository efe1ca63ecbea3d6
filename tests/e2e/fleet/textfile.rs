//! The agent's `metrics_textfile`: written by `ferry-agent run` after each
//! change, atomically, in a format `promtool check metrics` accepts, with
//! the counts of what really happened.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use ferry_tests::{lacks, make_episode, noise, until, Receiver, Spool, COMMIT_A, COMMIT_B};

use crate::agent::Daemon;

/// The metrics the agent writes (after `ferry_agent_`); the rules test
/// checks the alerts name only these.
pub const NAMES: &[&str] = &[
    "pending_episodes",
    "outbox_bytes",
    "quarantine_episodes",
    "shipped_total",
    "quarantined_total",
    "conflicts_total",
    "last_success_timestamp_seconds",
    "last_error_timestamp_seconds",
    "sent_bytes_total",
    "uploads_in_flight",
    "upload_size_bytes",
    "upload_sent_bytes",
];

fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn promtool_check(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && said.trim().is_empty(), said)
}

/// A receiver that allows `COMMIT_A`, a device spool on it, and the
/// directory for its metrics file.
fn device(name: &str) -> (Receiver, Spool, tempfile::TempDir) {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, name);
    (rx, spool, tempfile::tempdir().unwrap())
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[test]
fn the_agent_writes_valid_metrics_after_each_change() {
    if lacks(
        "promtool",
        "fleet::textfile::the_agent_writes_valid_metrics_after_each_change",
    ) {
        return;
    }
    let (_rx, spool, prom_dir) = device("dev-metrics");
    let prom = prom_dir.path().join("ferry-agent.prom");
    make_episode(
        spool.path(),
        "ep-ok-1",
        Some(COMMIT_A),
        &[("a.bin", &noise(1, 300_000))],
    );
    make_episode(
        spool.path(),
        "ep-rejected",
        Some(COMMIT_B),
        &[("b.bin", b"b")],
    );
    let mut agent = Daemon::start(
        &spool,
        &[("FERRY_AGENT_METRICS_TEXTFILE", prom.to_str().unwrap())],
    );
    let log = || read(&agent.log);
    until(
        "the first episode shipped and the second quarantined in the metrics",
        log,
        || {
            let t = read(&prom);
            value(&t, "ferry_agent_shipped_total") == Some(1.0)
                && value(
                    &t,
                    "ferry_agent_quarantined_total{kind=\"commit-rejected\"}",
                ) == Some(1.0)
                && value(&t, "ferry_agent_pending_episodes") == Some(0.0)
        },
    );
    let text = read(&prom);
    for name in NAMES {
        assert!(
            text.contains(&format!("# TYPE ferry_agent_{name} ")),
            "ferry_agent_{name} missing in\n{text}"
        );
    }
    let (ok, said) = promtool_check(&text);
    assert!(ok, "promtool check metrics: {said}\n{text}");
    // The tarball was sent whole, and the upload is over.
    let sent = value(&text, "ferry_agent_sent_bytes_total").unwrap();
    assert!(sent > 300_000.0, "{text}");
    assert_eq!(
        value(&text, "ferry_agent_uploads_in_flight"),
        Some(0.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "ferry_agent_quarantine_episodes"),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        value(&text, "ferry_agent_outbox_bytes"),
        Some(0.0),
        "{text}"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    for t in ["last_success", "last_error"] {
        let at = value(&text, &format!("ferry_agent_{t}_timestamp_seconds")).unwrap();
        assert!((now - at).abs() < 120.0, "{t} at {at}, now {now}");
    }
    // A change later is written too (the writer did not stop after the
    // first pass), and only ever through a rename: no temp file stays.
    make_episode(spool.path(), "ep-ok-2", Some(COMMIT_A), &[("c.bin", b"c")]);
    until("the second shipment in the metrics", log, || {
        value(&read(&prom), "ferry_agent_shipped_total") == Some(2.0)
    });
    let names: Vec<_> = std::fs::read_dir(prom_dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["ferry-agent.prom"], "only the file itself stays");
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&prom).unwrap().permissions());
    assert_eq!(
        mode & 0o777,
        0o644,
        "node_exporter's user must be able to read it"
    );
    // Nothing changes while idle: the file is not rewritten.
    let before = std::fs::metadata(&prom).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let after = std::fs::metadata(&prom).unwrap().modified().unwrap();
    assert_eq!(before, after, "rewritten while nothing changed");
    assert!(
        agent.sigterm(Duration::from_secs(30)).success(),
        "{}",
        agent.log()
    );
}

#[test]
fn a_metrics_textfile_not_named_prom_is_a_config_error() {
    let rx = Receiver::start();
    let spool = Spool::new(&rx, "dev-metrics-name");
    let out = spool
        .agent("drain")
        .env(
            "FERRY_AGENT_METRICS_TEXTFILE",
            spool.path().join("ferry.txt"),
        )
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("metrics_textfile") && err.contains(".prom"),
        "{err}"
    );
}

/// A slow upload (a bandwidth limit) shows in the file while it runs: one
/// upload in flight, part of its bytes sent.
#[test]
fn the_metrics_show_an_upload_in_progress() {
    let (_rx, spool, prom_dir) = device("dev-progress");
    let prom = prom_dir.path().join("ferry-agent.prom");
    make_episode(
        spool.path(),
        "ep-slow",
        Some(COMMIT_A),
        &[("a.bin", &noise(7, 1_500_000))],
    );
    let mut agent = Daemon::start(
        &spool,
        &[
            ("FERRY_AGENT_METRICS_TEXTFILE", prom.to_str().unwrap()),
            ("FERRY_AGENT_BANDWIDTH_LIMIT", "256KiB"),
        ],
    );
    let log = || read(&agent.log);
    let mut seen = None;
    until("an upload part-way in the metrics", log, || {
        let t = read(&prom);
        let (sent, size) = (
            value(&t, "ferry_agent_upload_sent_bytes").unwrap_or(0.0),
            value(&t, "ferry_agent_upload_size_bytes").unwrap_or(0.0),
        );
        let part_way =
            value(&t, "ferry_agent_uploads_in_flight") == Some(1.0) && sent > 0.0 && sent < size;
        if part_way {
            seen = Some((sent, size, value(&t, "ferry_agent_outbox_bytes")));
        }
        part_way
    });
    let (_, size, outbox) = seen.unwrap();
    assert!(size > 1_500_000.0, "the tarball's size: {size}");
    assert_eq!(outbox, Some(size), "the tarball is in the outbox meanwhile");
    until("the upload done in the metrics", log, || {
        let t = read(&prom);
        value(&t, "ferry_agent_shipped_total") == Some(1.0)
            && value(&t, "ferry_agent_uploads_in_flight") == Some(0.0)
            && value(&t, "ferry_agent_upload_size_bytes") == Some(0.0)
    });
    assert!(
        agent.sigterm(Duration::from_secs(30)).success(),
        "{}",
        agent.log()
    );
}
