//! Raw HTTP/1.1: one request per connection, answers parsed by hand, so
//! that a test can send what no client library would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};

use crate::DEADLINE;

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON; panics with the body text if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {:?}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Send one request on a fresh connection (`Connection: close`) and read the
/// whole answer. `Content-Length` is added from `body` unless `headers`
/// already has one (so a test can lie about it).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Response {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let head = request_head(addr, method, path, headers, body.len());
    s.write_all(head.as_bytes()).expect("write head");
    // A server that answers early may close before the body is sent; that
    // is its right, so a failed body write is not an error here.
    let _ = s.write_all(body);
    read_response(&mut s)
}

/// The request line and headers, ending with the blank line.
pub fn request_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body_len: usize,
) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    let mut has_len = false;
    for (k, v) in headers {
        has_len |=
            k.eq_ignore_ascii_case("content-length") || k.eq_ignore_ascii_case("transfer-encoding");
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if !has_len && (body_len > 0 || method == "PUT" || method == "POST") {
        head.push_str(&format!("Content-Length: {body_len}\r\n"));
    }
    head.push_str("\r\n");
    head
}

/// Read one response from a stream (body by Content-Length, or to EOF).
/// For HEAD requests use [`read_response_head`].
pub fn read_response(s: &mut impl Read) -> Response {
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let len = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    let mut body = Vec::new();
    match len {
        Some(n) => {
            body.resize(n, 0);
            r.read_exact(&mut body).expect("read body");
        }
        None => {
            let chunked = headers
                .iter()
                .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
            if chunked {
                loop {
                    let mut line = String::new();
                    r.read_line(&mut line).expect("chunk size");
                    let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)
                        .expect("chunk size hex");
                    let mut chunk = vec![0u8; n + 2];
                    r.read_exact(&mut chunk).expect("chunk");
                    if n == 0 {
                        break;
                    }
                    body.extend_from_slice(&chunk[..n]);
                }
            } else {
                let _ = r.read_to_end(&mut body);
            }
        }
    }
    Response {
        status,
        headers,
        body,
    }
}

/// Read only the status line and headers (HEAD answers, early answers).
pub fn read_response_head(s: &mut impl Read) -> Response {
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    Response {
        status,
        headers,
        body: Vec::new(),
    }
}

fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header line");
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    (status, headers)
}

/// PUT `/v1/episodes/{id}` with the protocol headers.
pub fn put_episode(
    addr: SocketAddr,
    token: &str,
    id: &str,
    commit: &str,
    sha256: &str,
    body: &[u8],
) -> Response {
    let auth = format!("Bearer {token}");
    request(
        addr,
        "PUT",
        &format!("/v1/episodes/{id}"),
        &[
            ("Authorization", &auth),
            ("X-Ferry-Commit", commit),
            ("X-Ferry-Sha256", sha256),
        ],
        body,
    )
}
