//! A tus 1.0 client in raw HTTP, for tests that must choose the server of
//! each request (a replica, or the balancer) and break requests off.

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use base64::Engine;

use crate::{read_response_head, request, request_head, Response, COMMIT_A};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

pub fn auth(token: &str) -> String {
    format!("Bearer {token}")
}

/// `POST /v1/uploads` for `id` claiming `sha`; the answer.
pub fn create(addr: SocketAddr, token: &str, id: &str, sha: &str, len: usize) -> Response {
    let meta = format!(
        "episode_id {},commit {},sha256 {}",
        b64(id),
        b64(COMMIT_A),
        b64(sha)
    );
    let (a, l) = (auth(token), len.to_string());
    request(
        addr,
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
#[track_caller]
pub fn created(addr: SocketAddr, token: &str, id: &str, sha: &str, len: usize) -> String {
    let r = create(addr, token, id, sha, len);
    assert_eq!(r.status, 201, "{}", r.text());
    let loc = r.header("location").expect("Location").to_owned();
    assert!(loc.starts_with("/v1/uploads/"), "{loc}");
    loc
}

/// The headers of a PATCH of `len` bytes at `offset` (an empty one says
/// `Content-Length: 0` too).
fn patch_headers(token: &str, offset: u64, len: usize) -> [(&'static str, String); 5] {
    [
        ("Tus-Resumable", "1.0.0".into()),
        ("Authorization", auth(token)),
        ("Content-Type", "application/offset+octet-stream".into()),
        ("Upload-Offset", offset.to_string()),
        ("Content-Length", len.to_string()),
    ]
}

/// The head of a PATCH that announces `len` bytes at `offset`.
pub fn patch_head(addr: SocketAddr, token: &str, path: &str, offset: u64, len: usize) -> String {
    let h = patch_headers(token, offset, len);
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request_head(addr, "PATCH", path, &h, len)
}

/// A whole PATCH of `bytes` at `offset`; the answer.
pub fn patch(addr: SocketAddr, token: &str, path: &str, offset: u64, bytes: &[u8]) -> Response {
    let h = patch_headers(token, offset, bytes.len());
    let h: Vec<(&str, &str)> = h.iter().map(|(k, v)| (*k, v.as_str())).collect();
    request(addr, "PATCH", path, &h, bytes)
}

/// A PATCH that announces `announced` bytes, sends `bytes` of them and
/// breaks off (the connection dropped after `linger`).
pub fn patch_broken(
    addr: SocketAddr,
    token: &str,
    path: &str,
    offset: u64,
    announced: usize,
    bytes: &[u8],
    linger: std::time::Duration,
) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(patch_head(addr, token, path, offset, announced).as_bytes())
        .unwrap();
    s.write_all(bytes).unwrap();
    s.flush().unwrap();
    std::thread::sleep(linger);
}

/// HEAD of an upload: its status and `Upload-Offset`.
pub fn head(addr: SocketAddr, token: &str, path: &str) -> (u16, Option<u64>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(crate::DEADLINE)).unwrap();
    let a = auth(token);
    let h = request_head(
        addr,
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

/// `DELETE` of an upload; the answer.
pub fn delete(addr: SocketAddr, token: &str, path: &str) -> Response {
    let a = auth(token);
    request(
        addr,
        "DELETE",
        path,
        &[("Tus-Resumable", "1.0.0"), ("Authorization", &a)],
        b"",
    )
}
