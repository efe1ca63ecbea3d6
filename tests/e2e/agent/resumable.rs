//! Resumable uploads from the agent (SPEC §8): a large episode ships with
//! tus, keeps its upload URL in `outbox/<id>.upload.json`, and after the
//! receiver is `kill -9`ed mid-upload sends only what the receiver had not
//! made durable; SIGTERM aborts the upload at once and the next run
//! resumes it.

use std::process::Stdio;
use std::time::{Duration, Instant};

use ferry_tests::{make_episode, noise, signal, wait_exit, Receiver, Spool, COMMIT_A};

use ferry_tests::{metric, stored};

const TUS_BYTES: &str = "ferry_bytes_received_total{route=\"tus\"}";

#[test]
fn agent_resumes_a_large_episode_after_the_receiver_is_killed_mid_upload() {
    let mut rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "dev-big");
    make_episode(
        spool.path(),
        "ep-big",
        Some(COMMIT_A),
        &[("data.bin", &noise(7, 32 << 20))],
    );
    let log = spool.path().join("agent.log");
    let mut agent = spool.resumable_agent(&log);
    let record = spool.path().join("outbox/ep-big.upload.json");
    // Well into the upload: past three of the receiver's 8 MiB checkpoints.
    ferry_tests::wait_for("24 MiB of the episode at the receiver", || {
        (record.exists() && metric(&rx, TUS_BYTES).unwrap_or(0.0) > (24 << 20) as f64).then_some(())
    });
    rx.kill9();
    // `status` shows the upload in progress, from the spool alone.
    let out = spool.agent("status").arg("--json").output().unwrap();
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ups = &st["counts"]["resumable"];
    assert_eq!(ups[0]["episode"], "ep-big", "{st}");
    assert!(ups[0]["size"].as_u64().unwrap() > 32 << 20, "{st}");
    rx.restart();
    // Retired: moved to shipped/, then the tarball and its upload record
    // removed.
    ferry_tests::wait_for("the episode shipped", || {
        (spool.ids_in("shipped") == ["ep-big"] && spool.ids_in("outbox").is_empty()).then_some(())
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    let stored = stored(&rx);
    let sha = stored.get("ep-big").expect("stored");
    let size = std::fs::metadata(ferry_tests::object_path(&rx.data_dir, sha))
        .unwrap()
        .len();
    // The receiver after its restart got only what it had not made durable.
    let again = metric(&rx, TUS_BYTES).unwrap() as u64;
    eprintln!("resumed after kill -9: {again} of {size} bytes sent again");
    assert!(
        again <= size - (16 << 20),
        "{again} of {size} bytes sent again after the restart\n{log}"
    );
    assert!(metric(&rx, "ferry_uploads_resumed_total").unwrap() >= 1.0);
    assert!(log.contains("resuming the upload"), "{log}");
    assert!(!record.exists(), "the upload record goes with the tarball");
    assert!(
        spool.ids_in("outbox").is_empty(),
        "{:?}",
        spool.ids_in("outbox")
    );
}

/// SIGTERM in the middle of a resumable upload: the agent stops once its
/// `shutdown_grace` is over (the aborted upload is no failure: SPEC §4.2), keeps the tarball and the upload
/// record, and the next run asks the receiver where it got and sends only
/// the rest.
#[test]
fn sigterm_aborts_a_resumable_upload_and_the_next_run_resumes_it() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "dev-term");
    make_episode(
        spool.path(),
        "ep-term",
        Some(COMMIT_A),
        &[("data.bin", &noise(8, 24 << 20))],
    );
    let mut agent = spool
        .agent("run")
        .env("FERRY_AGENT_BANDWIDTH_LIMIT", "4MiB")
        .env("FERRY_AGENT_RESUMABLE_THRESHOLD", "1MiB")
        // In-flight uploads are aborted after this much of SIGTERM.
        .env("FERRY_AGENT_SHUTDOWN_GRACE", "200ms")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    ferry_tests::wait_for("12 MiB of the episode at the receiver", || {
        (metric(&rx, TUS_BYTES).unwrap_or(0.0) > (12 << 20) as f64).then_some(())
    });
    let asked = Instant::now();
    signal(agent.id(), libc::SIGTERM);
    let st = wait_exit(&mut agent, Duration::from_secs(30));
    assert!(st.success(), "agent exit after SIGTERM: {st}");
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "{:?}",
        asked.elapsed()
    );
    assert!(spool.path().join("outbox/ep-term.upload.json").exists());
    assert!(spool.path().join("outbox/ep-term.tar.zst").exists());
    assert!(spool.ids_in("quarantine").is_empty());
    let sent_before = metric(&rx, TUS_BYTES).unwrap();
    let out = spool
        .agent("drain")
        .args(["--timeout", "60s"])
        .env("FERRY_AGENT_RESUMABLE_THRESHOLD", "1MiB")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("resuming the upload"), "{log}");
    assert_eq!(spool.ids_in("shipped"), ["ep-term"]);
    let stored = stored(&rx);
    let size = std::fs::metadata(ferry_tests::object_path(&rx.data_dir, &stored["ep-term"]))
        .unwrap()
        .len();
    let total = metric(&rx, TUS_BYTES).unwrap();
    // The drain sent what the receiver lacked, not the episode again.
    assert!(
        total - sent_before < size as f64 - (8 << 20) as f64,
        "{} of {size} bytes sent by the drain\n{log}",
        total - sent_before
    );
}
