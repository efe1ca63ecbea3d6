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

use base64::Engine;
use ferry_tests::{
    files_in, metric, read_response_head, request_head, stored, Receiver, Response, COMMIT_A,
};

use super::{archive_of_size, expect, expect_400, object_files};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

/// `POST /v1/uploads` for `id` claiming `sha`; the answer.
fn create(rx: &Receiver, token: &str, id: &str, sha: &str, len: usize) -> Response {
    let meta = format!(
        "episode_id {},commit {},sha256 {}",
        b64(id),
        b64(COMMIT_A),
        b64(sha)
    );
    let (a, l) = (auth(token), len.to_string());
    rx.request(
        "POST",
        "/v1/uploads",
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Authorization", &a),
            ("Upload-Length", &l),
            ("Upload-Metadata", &meta),
        ],
        b"",
    )
}

/// A created upload's path.
fn created(rx: &Receiver, token: &str, id: &str, sha: &str, len: usize) -> String {
    let r = create(rx, token, id, sha, len);
    assert_eq!(r.status, 201, "{}", r.text());
    let loc = r.header("location").expect("Location").to_owned();
    assert!(loc.starts_with("/v1/uploads/"), "{loc}");
    loc
}

fn patch_head(rx: &Receiver, token: &str, path: &str, offset: u64, len: usize) -> String {
    let (a, o) = (auth(token), offset.to_string());
    request_head(
        rx.addr,
        "PATCH",
        path,
        &[
            ("Tus-Resumable", "1.0.0"),
            ("Authorization", &a),
            ("Content-Type", "application/offset+octet-stream"),
            ("Upload-Offset", &o),
            ("Content-Length", &len.to_string()),
        ],
        len,
    )
}

fn patch(rx: &Receiver, token: &str, path: &str, offset: u64, bytes: &[u8]) -> Response {
    let mut s = TcpStream::connect(rx.addr).unwrap();
    s.set_read_timeout(Some(ferry_tests::DEADLINE)).unwrap();
    s.write_all(patch_head(rx, token, path, offset, bytes.len()).as_bytes())
        .unwrap();
    let _ = s.write_all(bytes);
    ferry_tests::read_response(&mut s)
}

/// HEAD of an upload: its status and `Upload-Offset`.
fn head(rx: &Receiver, token: &str, path: &str) -> (u16, Option<u64>) {
    let mut s = TcpStream::connect(rx.addr).unwrap();
    s.set_read_timeout(Some(ferry_tests::DEADLINE)).unwrap();
    let a = auth(token);
    let h = request_head(
        rx.addr,
        "HEAD",
        path,
        &[("Tus-Resumable", "1.0.0"), ("Authorization", &a)],
        0,
    );
    s.write_all(h.as_bytes()).unwrap();
    let r = read_response_head(&mut s);
    assert_eq!(r.header("tus-resumable"), Some("1.0.0"));
    let offset = r.header("upload-offset").and_then(|v| v.parse().ok());
    (r.status, offset)
}

fn uploads_dir_files(rx: &Receiver) -> Vec<String> {
    files_in(rx, "uploads")
}

#[test]
fn tus_patch_interrupted_resumes_and_the_offset_survives_kill9() {
    let mut rx = Receiver::start();
    let token = rx.ready_device("dev-1");
    let body = archive_of_size("ep-tus", 1, 4 << 20);
    let sha = ferry_tests::sha256_hex(&body);
    let path = created(&rx, &token, "ep-tus", &sha, body.len());
    assert_eq!(head(&rx, &token, &path), (200, Some(0)));

    let r = patch(&rx, &token, &path, 0, &body[..1 << 20]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some("1048576"));

    // A PATCH that breaks off after 1 MiB more of the 3 it announced: tus
    // keeps what arrived.
    let mut s = TcpStream::connect(rx.addr).unwrap();
    s.write_all(patch_head(&rx, &token, &path, 1 << 20, body.len() - (1 << 20)).as_bytes())
        .unwrap();
    s.write_all(&body[1 << 20..2 << 20]).unwrap();
    s.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(s);
    let kept = ferry_tests::wait_for("the broken PATCH's bytes kept", || {
        match head(&rx, &token, &path) {
            (200, Some(o)) if o > 1 << 20 => Some(o),
            _ => None,
        }
    });
    assert!(kept <= 2 << 20, "{kept}");

    // What was answered survives kill -9.
    rx.kill9();
    rx.restart();
    assert_eq!(head(&rx, &token, &path), (200, Some(kept)));
    // The wrong offset is refused with where the upload is.
    let r = patch(&rx, &token, &path, 0, &body[..10]);
    let j = expect(&r, 409, "offset-mismatch");
    assert_eq!(j["offset"], kept);

    let r = patch(&rx, &token, &path, kept, &body[kept as usize..]);
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
    assert_eq!(head(&rx, &token, &path).0, 404);
}

#[test]
fn tus_a_lying_digest_is_refused_at_completion_and_nothing_is_stored() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev-1");
    let body = archive_of_size("ep-lie", 2, 1 << 20);
    let lie = ferry_tests::sha256_hex(b"other bytes");
    let path = created(&rx, &token, "ep-lie", &lie, body.len());
    let r = patch(&rx, &token, &path, 0, &body[..1000]);
    assert_eq!(r.status, 204);
    let r = patch(&rx, &token, &path, 1000, &body[1000..]);
    expect_400(&r, "digest-mismatch");
    assert!(stored(&rx).is_empty());
    assert!(object_files(&rx).is_empty(), "{:?}", object_files(&rx));
    assert!(uploads_dir_files(&rx).is_empty());
    assert_eq!(head(&rx, &token, &path).0, 404);
}

#[test]
fn tus_expiry_reclaims_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(dir.path(), &[("FERRY_RECEIVER_UPLOAD_EXPIRY", "1s")]);
    let token = rx.ready_device("dev-1");
    let body = archive_of_size("ep-exp", 3, 1 << 20);
    let sha = ferry_tests::sha256_hex(&body);
    let path = created(&rx, &token, "ep-exp", &sha, body.len());
    assert_eq!(patch(&rx, &token, &path, 0, &body[..500_000]).status, 204);
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
    assert_eq!(head(&rx, &token, &path).0, 404);
    let r = patch(&rx, &token, &path, 500_000, &body[500_000..]);
    assert_eq!(r.status, 404, "{}", r.text());
}

#[test]
fn tus_one_device_cannot_see_or_touch_anothers_upload() {
    let rx = Receiver::start();
    let a = rx.ready_device("dev-a");
    let b = rx.add_device("dev-b");
    let body = archive_of_size("ep-own", 4, 200_000);
    let sha = ferry_tests::sha256_hex(&body);
    let path = created(&rx, &a, "ep-own", &sha, body.len());
    assert_eq!(patch(&rx, &a, &path, 0, &body[..1000]).status, 204);
    assert_eq!(head(&rx, &b, &path), (404, None));
    let r = patch(&rx, &b, &path, 1000, &body[1000..]);
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
    assert_eq!(head(&rx, &a, &path), (200, Some(1000)));
    let r = patch(&rx, &a, &path, 1000, &body[1000..]);
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
