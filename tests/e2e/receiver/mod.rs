//! Receiver end-to-end tests: the real `ferry-receiver` binary, raw HTTP,
//! archives made by the system's `tar` and `zstd`.
//!
//! - `protocol`: every row of SPEC §2, decided before the body where the
//!   headers settle it.
//! - `race`: concurrent PUTs of one id, many rounds, by one device and by
//!   two.
//! - `devices`: ids scoped to their device; nothing of another device's
//!   episodes on any device route.
//! - `fleet`: 100 real agents whose spools all use the same ids.
//! - `crash`: kill -9 during uploads, restart, nothing acknowledged lost.
//! - `limits`: 408, 503, 507 on a full disk.
//! - `cli`: the admin commands, exit codes, changes in force while serving.
//! - `surface`: HEAD, commit check, whoami, health, metrics, status page,
//!   admin API.
//! - `shutdown`: SIGTERM with uploads in flight.
//! - `startup`: ready at once, the sweep of left-overs after READY, logs.
//! - `postgres`: the same contract on a PostgreSQL index.
//! - `migration`: an index made by the previous release, upgraded in
//!   place (SQLite and PostgreSQL).
//! - `tls`: HTTPS with a configured certificate.

mod cli;
mod crash;
mod devices;
mod fleet;
mod limits;
mod migration;
pub(crate) mod postgres;
mod protocol;
mod race;
mod shutdown;
mod startup;
mod surface;
mod tls;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use ferry_tests::{read_response, request_head, Receiver, Response, COMMIT_A};

/// An archive of `size` incompressible bytes for episode `id`, made by the
/// system tools.
pub fn archive_of_size(id: &str, seed: u64, size: usize) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let dir = ferry_tests::make_episode(
        tmp.path(),
        id,
        Some(COMMIT_A),
        &[("data.bin", &ferry_tests::noise(seed, size))],
    );
    ferry_tests::tar_zst_with_tools(&dir)
}

/// The usual protocol headers, owned.
pub fn proto_headers(token: &str, commit: &str, sha: &str) -> Vec<(String, String)> {
    vec![
        ("Authorization".into(), format!("Bearer {token}")),
        ("X-Ferry-Commit".into(), commit.into()),
        ("X-Ferry-Sha256".into(), sha.into()),
    ]
}

fn borrow(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// A raw request with owned headers.
pub fn send(
    rx: &Receiver,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &[u8],
) -> Response {
    rx.request(method, path, &borrow(headers), body)
}

/// Asserts the status code and the JSON `status` (and the protocol header).
#[track_caller]
pub fn expect(r: &Response, code: u16, status: &str) -> serde_json::Value {
    assert_eq!(
        r.status,
        code,
        "expected {code} {status}, got: {}",
        r.text()
    );
    let j = r.json();
    assert_eq!(j["status"], status, "{j}");
    assert_eq!(
        r.header("x-ferry-protocol"),
        Some("1"),
        "protocol header missing"
    );
    j
}

/// Asserts a 400 with the given `error`.
#[track_caller]
pub fn expect_400(r: &Response, error: &str) {
    let j = expect(r, 400, "bad-request");
    assert_eq!(j["error"], error, "{j}");
    assert!(j["detail"].is_string(), "{j}");
}

/// An upload whose head and first `sent` body bytes are on the wire, the
/// rest held back. The server has the request; the test decides what
/// happens to the body.
pub struct HeldUpload {
    pub stream: TcpStream,
    pub rest: Vec<u8>,
}

impl HeldUpload {
    pub fn start(
        addr: SocketAddr,
        headers: &[(String, String)],
        id: &str,
        body: &[u8],
        sent: usize,
    ) -> Self {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(ferry_tests::DEADLINE))
            .unwrap();
        let head = request_head(
            addr,
            "PUT",
            &format!("/v1/episodes/{id}"),
            &borrow(headers),
            body.len(),
        );
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(&body[..sent]).unwrap();
        stream.flush().unwrap();
        Self {
            stream,
            rest: body[sent..].to_vec(),
        }
    }

    /// Sends the rest of the body and reads the answer.
    pub fn finish(mut self) -> Response {
        // The server may answer (and close) before taking it all.
        let _ = self.stream.write_all(&self.rest);
        read_response(&mut self.stream)
    }

    /// Reads the answer without sending more.
    pub fn answer(mut self) -> Response {
        read_response(&mut self.stream)
    }
}

/// Starts an upload of `body` as `id` with the usual headers, sends `sent`
/// bytes of it, and waits until the receiver holds it in an upload slot.
pub fn hold_upload(rx: &Receiver, token: &str, id: &str, body: &[u8], sent: usize) -> HeldUpload {
    let sha = ferry_tests::sha256_hex(body);
    let held = HeldUpload::start(
        rx.addr,
        &proto_headers(token, COMMIT_A, &sha),
        id,
        body,
        sent,
    );
    wait_in_flight(rx, 1);
    held
}

/// Waits until exactly `n` uploads hold a slot.
pub fn wait_in_flight(rx: &Receiver, n: u32) {
    ferry_tests::wait_for(&format!("{n} uploads in flight"), || {
        (ferry_tests::metric(rx, "ferry_uploads_in_flight") == Some(f64::from(n))).then_some(())
    });
}

/// A HEAD request for an episode; only the head of the answer is read.
pub fn head_request(rx: &Receiver, id: &str, auth: &str) -> Response {
    let mut s = TcpStream::connect(rx.addr).unwrap();
    let head = request_head(
        rx.addr,
        "HEAD",
        &format!("/v1/episodes/{id}"),
        &[("Authorization", auth)],
        0,
    );
    s.write_all(head.as_bytes()).unwrap();
    ferry_tests::read_response_head(&mut s)
}

/// Sends only a request head (no body) with the given Content-Length, and
/// returns the answer and how long it took. The body is never sent, so an
/// answer proves the receiver decided without reading it.
pub fn head_only(
    addr: SocketAddr,
    headers: &[(String, String)],
    id: &str,
    content_length: u64,
) -> (Response, Duration) {
    let mut h = headers.to_vec();
    h.push(("Content-Length".into(), content_length.to_string()));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let start = Instant::now();
    s.write_all(
        request_head(addr, "PUT", &format!("/v1/episodes/{id}"), &borrow(&h), 0).as_bytes(),
    )
    .unwrap();
    let r = read_response(&mut s);
    (r, start.elapsed())
}

/// Files under `<data_dir>/objects`.
pub fn object_files(rx: &Receiver) -> Vec<std::path::PathBuf> {
    fn walk(d: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if !e.file_name().to_string_lossy().starts_with('.') {
                    // (`.layout-v2` marks the store's layout.)
                    out.push(p);
                }
            }
        }
    }
    let mut v = Vec::new();
    walk(&rx.data_dir.join("objects"), &mut v);
    v
}
