//! Resumable uploads (SPEC §8, tus 1.0) against the real receiver binary:
//! create, PATCH, an interrupted PATCH resumed, the offset across `kill -9`,
//! a lying digest, expiry, one device's upload hidden from another, and two
//! standard clients, unmodified: `tuspy` (PyPI) and `tus-js-client` (npm,
//! on the machine's node).

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use ferry_tests::tus::{auth, created, head, patch, patch_head};
use ferry_tests::{files_in, metric, stored, Receiver, COMMIT_A};

use super::{archive_of_size, expect, expect_400, object_files};

fn uploads_dir_files(rx: &Receiver) -> Vec<String> {
    files_in(rx, "uploads")
}

#[test]
fn tus_patch_interrupted_resumes_and_the_offset_survives_kill9() {
    let mut rx = Receiver::start();
    let token = rx.ready_device("dev-1");
    let body = archive_of_size("ep-tus", 1, 4 << 20);
    let sha = ferry_tests::sha256_hex(&body);
    let path = created(rx.addr, &token, "ep-tus", &sha, body.len());
    assert_eq!(head(rx.addr, &token, &path), (200, Some(0)));

    let r = patch(rx.addr, &token, &path, 0, &body[..1 << 20]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some("1048576"));

    // A PATCH that breaks off after 1 MiB more of the 3 it announced: tus
    // keeps what arrived.
    let mut s = TcpStream::connect(rx.addr).unwrap();
    s.write_all(patch_head(rx.addr, &token, &path, 1 << 20, body.len() - (1 << 20)).as_bytes())
        .unwrap();
    s.write_all(&body[1 << 20..2 << 20]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let kept = ferry_tests::wait_for("the broken PATCH's bytes kept", || {
        match head(rx.addr, &token, &path) {
            (200, Some(o)) if o > 1 << 20 => Some(o),
            _ => None,
        }
    });
    assert!(kept <= 2 << 20, "{kept}");

    // What was answered survives kill -9.
    rx.kill9();
    rx.restart();
    assert_eq!(head(rx.addr, &token, &path), (200, Some(kept)));
    // The wrong offset is refused with where the upload is.
    let r = patch(rx.addr, &token, &path, 0, &body[..10]);
    let j = expect(&r, 409, "offset-mismatch");
    assert_eq!(j["offset"], kept);

    let r = patch(rx.addr, &token, &path, kept, &body[kept as usize..]);
    let j = expect(&r, 201, "stored");
    assert_eq!(r.header("x-ferry-status"), Some("stored"));
    assert_eq!(j["sha256"], sha.as_str());
    assert_eq!(stored(&rx).get("ep-tus"), Some(&sha));
    assert_eq!(
        ferry_tests::sha256_file(&ferry_tests::object_path(&rx.data_dir, &sha)),
        sha
    );
    // Resumed after the restart; the bytes after it are only the rest.
    assert!(metric(&rx, "ferry_uploads_resumed_total").unwrap() >= 1.0);
    let after = metric(&rx, "ferry_bytes_received_total{route=\"tus\"}").unwrap();
    assert_eq!(
        after,
        (body.len() as u64 - kept) as f64,
        "bytes after the restart"
    );
    assert!(
        uploads_dir_files(&rx).is_empty(),
        "{:?}",
        uploads_dir_files(&rx)
    );
    assert_eq!(head(rx.addr, &token, &path).0, 404);
}

#[test]
fn tus_a_lying_digest_is_refused_at_completion_and_nothing_is_stored() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev-1");
    let body = archive_of_size("ep-lie", 2, 1 << 20);
    let lie = ferry_tests::sha256_hex(b"other bytes");
    let path = created(rx.addr, &token, "ep-lie", &lie, body.len());
    let r = patch(rx.addr, &token, &path, 0, &body[..1000]);
    assert_eq!(r.status, 204);
    let r = patch(rx.addr, &token, &path, 1000, &body[1000..]);
    expect_400(&r, "digest-mismatch");
    assert!(stored(&rx).is_empty());
    assert!(object_files(&rx).is_empty(), "{:?}", object_files(&rx));
    assert!(uploads_dir_files(&rx).is_empty());
    assert_eq!(head(rx.addr, &token, &path).0, 404);
}

#[test]
fn tus_expiry_reclaims_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(dir.path(), &[("FERRY_RECEIVER_UPLOAD_EXPIRY", "1s")]);
    let token = rx.ready_device("dev-1");
    let body = archive_of_size("ep-exp", 3, 1 << 20);
    let sha = ferry_tests::sha256_hex(&body);
    let path = created(rx.addr, &token, "ep-exp", &sha, body.len());
    assert_eq!(
        patch(rx.addr, &token, &path, 0, &body[..500_000]).status,
        204
    );
    assert_eq!(
        uploads_dir_files(&rx).len(),
        2,
        "{:?}",
        uploads_dir_files(&rx)
    );
    ferry_tests::wait_for("the expired upload reclaimed", || {
        uploads_dir_files(&rx).is_empty().then_some(())
    });
    assert_eq!(metric(&rx, "ferry_uploads_expired_total"), Some(1.0));
    assert_eq!(head(rx.addr, &token, &path).0, 404);
    let r = patch(rx.addr, &token, &path, 500_000, &body[500_000..]);
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn tus_one_device_cannot_see_or_touch_anothers_upload() {
    let rx = Receiver::start();
    let a = rx.ready_device("dev-a");
    let b = rx.add_device("dev-b");
    let body = archive_of_size("ep-own", 4, 200_000);
    let sha = ferry_tests::sha256_hex(&body);
    let path = created(rx.addr, &a, "ep-own", &sha, body.len());
    assert_eq!(patch(rx.addr, &a, &path, 0, &body[..1000]).status, 204);
    assert_eq!(head(rx.addr, &b, &path), (404, None));
    let r = patch(rx.addr, &b, &path, 1000, &body[1000..]);
    expect(&r, 404, "not-found");
    let bb = auth(&b);
    let r = rx.request(
        "DELETE",
        &path,
        &[("Tus-Resumable", "1.0.0"), ("Authorization", &bb)],
        b"",
    );
    expect(&r, 404, "not-found");
    // Untouched: a's upload goes on where it was.
    assert_eq!(head(rx.addr, &a, &path), (200, Some(1000)));
    let r = patch(rx.addr, &a, &path, 1000, &body[1000..]);
    expect(&r, 201, "stored");
    assert!(stored(&rx).contains_key("ep-own"));
}

/// `tests/` of the repository.
fn tests_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a standard client's script with `args`; asserts it succeeded and
/// returns its stdout.
fn run_client(mut cmd: Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// An episode for a standard client: written to a file, its sha256.
fn client_episode(dir: &std::path::Path, id: &str, seed: u64) -> (PathBuf, String, usize) {
    let body = archive_of_size(id, seed, 6 << 20);
    let file = dir.join(format!("{id}.tar.zst"));
    std::fs::write(&file, &body).unwrap();
    (file, ferry_tests::sha256_hex(&body), body.len())
}

/// What a standard client must have done: resumed at an offset above 0,
/// and stored the episode with its digest.
fn assert_resumed_and_stored(rx: &Receiver, out: &str, id: &str, sha: &str, len: usize) {
    let resumed: Vec<u64> = out
        .lines()
        .filter_map(|l| l.strip_prefix("resume offset "))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert!(
        resumed.iter().any(|o| *o > 0 && (*o as usize) < len),
        "the client resumed from where it was, not 0: {out}"
    );
    assert_eq!(stored(rx).get(id).map(String::as_str), Some(sha), "{out}");
    assert_eq!(
        ferry_tests::sha256_file(&ferry_tests::object_path(&rx.data_dir, sha)),
        sha
    );
}

#[test]
fn tus_standard_client_tuspy_creates_aborts_and_resumes() {
    const NAME: &str = "tus_standard_client_tuspy_creates_aborts_and_resumes";
    if ferry_tests::lacks("python3", NAME) {
        return;
    }
    let probe = Command::new("python3")
        .args(["-c", "import tusclient"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        ferry_tests::skip(NAME, "tuspy is not installed (pip install tuspy)");
        return;
    }
    let rx = Receiver::start();
    let token = rx.ready_device("dev-py");
    let dir = tempfile::tempdir().unwrap();
    let (file, sha, len) = client_episode(dir.path(), "ep-py", 5);
    let mut cmd = Command::new("python3");
    cmd.arg(tests_dir().join("fixtures/tus_upload.py"))
        .arg(format!("{}/v1/uploads", rx.url))
        .arg(&token)
        .arg(&file)
        .args(["ep-py", COMMIT_A, &sha]);
    let out = run_client(cmd, "tuspy");
    assert_resumed_and_stored(&rx, &out, "ep-py", &sha, len);
}

#[test]
fn tus_standard_client_tus_js_client_creates_aborts_and_resumes() {
    const NAME: &str = "tus_standard_client_tus_js_client_creates_aborts_and_resumes";
    if ferry_tests::lacks("node", NAME) {
        return;
    }
    let js = tests_dir().join("js");
    if !js.join("node_modules/tus-js-client").is_dir() {
        ferry_tests::skip(
            NAME,
            "tus-js-client is not installed (npm ci --prefix tests/js)",
        );
        return;
    }
    let rx = Receiver::start();
    let token = rx.ready_device("dev-js");
    let dir = tempfile::tempdir().unwrap();
    let (file, sha, len) = client_episode(dir.path(), "ep-js", 6);
    let mut cmd = Command::new("node");
    cmd.arg(js.join("tus_upload.js"))
        .arg(format!("{}/v1/uploads", rx.url))
        .arg(&token)
        .arg(&file)
        .args(["ep-js", COMMIT_A, &sha])
        .current_dir(&js);
    let out = run_client(cmd, "tus-js-client");
    assert_resumed_and_stored(&rx, &out, "ep-js", &sha, len);
}

/// The caps on incomplete uploads (a device that creates uploads and never
/// finishes them): a device's newest upload ends its oldest idle one, one
/// being written is never ended (429 when all are), and past the global
/// cap creation is refused with 503.
#[test]
fn tus_open_uploads_are_capped_per_device_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(
        dir.path(),
        &[
            ("FERRY_RECEIVER_MAX_OPEN_UPLOADS_PER_DEVICE", "2"),
            ("FERRY_RECEIVER_MAX_OPEN_UPLOADS", "3"),
        ],
    );
    let a = rx.ready_device("dev-a");
    let b = rx.add_device("dev-b");
    let body = archive_of_size("ep-cap", 8, 300_000);
    let sha = ferry_tests::sha256_hex(&body);
    let first = created(rx.addr, &a, "ep-cap-1", &sha, body.len());
    let second = created(rx.addr, &a, "ep-cap-2", &sha, body.len());
    assert_eq!(patch(rx.addr, &a, &second, 0, &body[..1000]).status, 204);
    // A third of dev-a's ends its oldest, however far the others are.
    let third = created(rx.addr, &a, "ep-cap-3", &sha, body.len());
    assert_eq!(head(rx.addr, &a, &first).0, 404);
    assert_eq!(head(rx.addr, &a, &second), (200, Some(1000)));
    assert_eq!(metric(&rx, "ferry_uploads_evicted_total"), Some(1.0));

    // Both of dev-a's being written (PATCHes held open): no room, 429.
    let held: Vec<TcpStream> = [&second, &third]
        .iter()
        .map(|path| {
            let offset = head(rx.addr, &a, path).1.unwrap();
            let mut s = TcpStream::connect(rx.addr).unwrap();
            s.write_all(patch_head(rx.addr, &a, path, offset, 5000).as_bytes())
                .unwrap();
            s.write_all(&body[offset as usize..offset as usize + 10])
                .unwrap();
            s
        })
        .collect();
    ferry_tests::wait_for("both PATCHes in flight", || {
        (rx.uploads_in_flight() == 2).then_some(())
    });
    let r = ferry_tests::tus::create(rx.addr, &a, "ep-cap-4", &sha, body.len());
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["status"], "overloaded");
    drop(held);

    // Three open in all (dev-a's two and one of dev-b's): the fourth is
    // refused, whoever asks.
    created(rx.addr, &b, "ep-cap-b1", &sha, body.len());
    let r = ferry_tests::tus::create(rx.addr, &b, "ep-cap-b2", &sha, body.len());
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.header("retry-after").is_some());
    assert_eq!(r.json()["status"], "overloaded");
}
