//! Limits that protect the receiver: a stalled body (408), all upload slots
//! busy (503 + Retry-After), a full disk (507, nothing half-written).

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::{metric, sha256_hex, stored, temp_files, Receiver, COMMIT_A};

use super::{archive_of_size, expect, hold_upload, object_files, proto_headers, HeldUpload};

#[test]
fn a_stalled_body_gets_408_and_frees_its_slot() {
    let _load = ferry_tests::gap_sensitive();
    let data = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(data.path(), &[("FERRY_RECEIVER_BODY_READ_TIMEOUT", "1s")]);
    let token = rx.ready_device("slow");
    let body = archive_of_size("stall", 1, 200_000);
    let held = HeldUpload::start(
        rx.addr,
        &proto_headers(&token, COMMIT_A, &sha256_hex(&body)),
        "stall",
        &body,
        1000,
    );
    let r = held.answer();
    expect(&r, 408, "request-timeout");
    ferry_tests::wait_for("slot and temp file released", || {
        (metric(&rx, "ferry_uploads_in_flight") == Some(0.0) && temp_files(&rx).is_empty())
            .then_some(())
    });
    assert!(stored(&rx).is_empty());
    expect(&rx.put(&token, "stall", COMMIT_A, &body), 201, "stored");
}

#[test]
fn a_trickling_body_below_the_minimum_rate_gets_408() {
    let _load = ferry_tests::gap_sensitive();
    let data = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(
        data.path(),
        &[
            ("FERRY_RECEIVER_BODY_READ_TIMEOUT", "1s"),
            ("FERRY_RECEIVER_MIN_UPLOAD_RATE", "100KiB/s"),
        ],
    );
    let token = rx.ready_device("trickle");
    let body = archive_of_size("trickle", 1, 200_000);
    let mut held = hold_upload(&rx, &token, "trickle", &body, 10);
    // Never idle for the 1 s timeout, but far below 100 KiB/s.
    let start = std::time::Instant::now();
    let mut sent = 10;
    while metric(&rx, "ferry_uploads_in_flight") == Some(1.0) {
        assert!(
            start.elapsed() < std::time::Duration::from_secs(30),
            "never cut off"
        );
        if std::io::Write::write_all(&mut held.stream, &body[sent..sent + 10]).is_err() {
            break;
        }
        sent += 10;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    expect(
        &ferry_tests::read_response(&mut held.stream),
        408,
        "request-timeout",
    );
    ferry_tests::wait_for("temp file removed", || {
        temp_files(&rx).is_empty().then_some(())
    });
    assert!(stored(&rx).is_empty());
}

#[test]
fn over_capacity_answers_503_with_retry_after() {
    let data = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(
        data.path(),
        &[("FERRY_RECEIVER_MAX_CONCURRENT_UPLOADS", "1")],
    );
    let token = rx.ready_device("busy");
    let first = archive_of_size("first", 1, 200_000);
    let second = archive_of_size("second", 2, 1000);
    let held = hold_upload(&rx, &token, "first", &first, 1000);
    // Another device: the same one would meet its own limit (429) first.
    let other = rx.add_device("busy-2");
    let r = rx.put(&other, "second", COMMIT_A, &second);
    let j = expect(&r, 503, "overloaded");
    let retry: u64 = r
        .header("retry-after")
        .expect("Retry-After")
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    assert_eq!(j["retry_after_secs"], retry);
    expect(&held.finish(), 201, "stored");
    expect(&rx.put(&token, "second", COMMIT_A, &second), 201, "stored");
}

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf, #[allow(dead_code)] tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Result<Tmpfs, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -t tmpfs failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Tmpfs(dir.path().to_owned(), dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `path` with a file until the disk is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).unwrap();
    let block = vec![0u8; 64 << 10];
    while f.write_all(&block).is_ok() {}
    let _ = f.flush();
}

#[test]
fn a_full_disk_answers_507_and_leaves_nothing_half_written() {
    let fs = match Tmpfs::mount("4m") {
        Ok(fs) => fs,
        Err(e) => {
            ferry_tests::skip(
                "a_full_disk_answers_507_and_leaves_nothing_half_written",
                &e,
            );
            return;
        }
    };
    let data = fs.path().join("data");
    let rx = Receiver::start_in(&data, &[]);
    let token = rx.ready_device("full");

    // Bigger than the whole disk: refused before the body.
    let big = archive_of_size("big", 1, 6 << 20);
    expect(
        &rx.put(&token, "big", COMMIT_A, &big),
        507,
        "insufficient-storage",
    );

    // The disk fills while the body streams: ENOSPC on write → 507.
    let body = archive_of_size("mid", 2, 2 << 20);
    let held = hold_upload(&rx, &token, "mid", &body, 64 << 10);
    let filler = fs.path().join("filler");
    fill(&filler);
    expect(&held.finish(), 507, "insufficient-storage");
    ferry_tests::wait_for("temp file removed", || {
        temp_files(&rx).is_empty().then_some(())
    });
    assert!(object_files(&rx).is_empty());

    // Space again: the same episode stores.
    std::fs::remove_file(&filler).unwrap();
    expect(&rx.put(&token, "mid", COMMIT_A, &body), 201, "stored");
    assert_eq!(stored(&rx).len(), 1);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
    drop(rx);
}
