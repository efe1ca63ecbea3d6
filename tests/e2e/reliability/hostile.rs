//! Hostile and broken input to the receiver: every one gets a clear status
//! and a JSON reason, nothing partial is stored, and an honest device is
//! still served promptly.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ferry_tests::{
    put_episode, read_response, request_head, sha256_hex, stored, temp_files, Receiver, COMMIT_A,
};

/// Nothing outside `objects/`, `tmp/` and the index was created.
fn assert_nothing_stored(rx: &Receiver) {
    assert!(stored(rx).is_empty(), "something was indexed");
    let objects = walk(&rx.data_dir.join("objects"));
    assert!(objects.is_empty(), "objects on disk: {objects:?}");
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                out.extend(walk(&e.path()));
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                // (`.layout-v2` marks the store's layout.)
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

#[test]
fn path_traversal_in_every_encoding_is_refused_with_json() {
    let rx = Receiver::start();
    let token = rx.ready_device("hostile");
    let body = ferry_tests::sample_archive("x", 1);
    let sha = sha256_hex(&body);
    let long = "a".repeat(200);
    let cases = [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "..%2Fetc",
        "..%2fetc%2fpasswd",
        "a%2Fb",
        "%2F",
        "%2Fetc%2Fpasswd",
        "..%5C..%5Cwindows",
        "%252e%252e",
        "a%00b",
        "%C3%A9t%C3%A9",
        ".hidden",
        "-dash",
        long.as_str(),
    ];
    for id in cases {
        let r = put_episode(rx.addr, &token, id, COMMIT_A, &sha, &body);
        assert!(
            r.status == 400 || r.status == 404,
            "id {id:?}: expected 400 (or 404 when it does not route), got {} {}",
            r.status,
            r.text()
        );
        let j = r.json();
        assert!(j["status"].is_string(), "id {id:?}: {j}");
        if r.status == 400 {
            assert_eq!(j["error"], "bad-episode-id", "id {id:?}: {j}");
        }
    }
    // Paths with real slashes do not route to an episode at all.
    for path in [
        "/v1/episodes/../../etc/passwd",
        "/v1/episodes/a/b",
        "/v1/episodes//x",
    ] {
        let auth = format!("Bearer {token}");
        let r = rx.request(
            "PUT",
            path,
            &[
                ("Authorization", &auth),
                ("X-Ferry-Commit", COMMIT_A),
                ("X-Ferry-Sha256", &sha),
            ],
            &body,
        );
        assert!(
            matches!(r.status, 400 | 404),
            "{path}: {} {}",
            r.status,
            r.text()
        );
        assert!(r.json()["status"].is_string(), "{path}");
    }
    assert_nothing_stored(&rx);
}

#[test]
fn oversized_headers_are_refused_and_the_receiver_stays_up() {
    let rx = Receiver::start();
    let token = rx.ready_device("big-headers");
    let huge = "x".repeat(256 * 1024);
    let mut s = TcpStream::connect(rx.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!(
        "PUT /v1/episodes/e1 HTTP/1.1\r\nHost: x\r\nX-Junk: {huge}\r\nContent-Length: 3\r\n\r\nabc"
    );
    let _ = s.write_all(head.as_bytes());
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 4"),
        "oversized headers answered: {text:.200}"
    );
    // Still serving.
    let body = ferry_tests::sample_archive("after-big", 2);
    let r = rx.put(&token, "after-big", COMMIT_A, &body);
    assert_eq!(r.status, 201, "{}", r.text());
}

/// SPEC §2: every error answer, including those for malformed HTTP,
/// carries the JSON reason: a broken request line and a broken header line
/// each get a 400 whose body is `{"status": ..., "error": ...}`.
#[test]
fn malformed_http_gets_a_json_reason() {
    let rx = Receiver::start();
    for raw in [
        "THIS IS NOT HTTP\r\n\r\n",
        "PUT /v1/episodes/x HTTP/1.1\r\nHost: x\r\nno colon in this header\r\n\r\n",
    ] {
        let mut s = TcpStream::connect(rx.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(raw.as_bytes()).unwrap();
        let r = read_response(&mut s);
        assert_eq!(r.status, 400, "{raw:?}: {}", r.text());
        let j = r.json();
        assert!(
            j["status"].is_string() && j["error"].is_string(),
            "{raw:?}: {j}"
        );
    }
    assert!(rx.request("GET", "/healthz", &[], b"").status == 200);
}

#[test]
fn short_body_under_a_huge_content_length_stores_nothing() {
    let rx = Receiver::start();
    let token = rx.ready_device("short-body");
    let body = ferry_tests::sample_archive("short", 3);
    let sha = sha256_hex(&body);
    let auth = format!("Bearer {token}");
    let mut s = TcpStream::connect(rx.addr).unwrap();
    let head = request_head(
        rx.addr,
        "PUT",
        "/v1/episodes/short",
        &[
            ("Authorization", &auth),
            ("X-Ferry-Commit", COMMIT_A),
            ("X-Ferry-Sha256", &sha),
            ("Content-Length", "1000000"),
        ],
        0,
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(&body).unwrap();
    // The upload is in flight (its handler runs, its temp file exists), so
    // what follows tests a cut upload, not one that never started.
    rx.wait_upload_in_flight();
    // The client gives up half way and closes.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    drop(s);
    ferry_tests::wait_for("temp file of the cut upload removed", || {
        temp_files(&rx).is_empty().then_some(())
    });
    assert_nothing_stored(&rx);
    // The id is still free.
    let r = rx.put(&token, "short", COMMIT_A, &body);
    assert_eq!(r.status, 201, "{}", r.text());
}

#[test]
fn a_body_that_is_not_a_tar_zst_is_refused_as_malformed() {
    let rx = Receiver::start();
    let token = rx.ready_device("garbage");
    let body = b"this is not a zstd frame, let alone a tar archive".repeat(100);
    let r = rx.put(&token, "garbage", COMMIT_A, &body);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"], "malformed-body", "{}", r.text());
    assert_nothing_stored(&rx);
}

#[test]
fn wrong_and_revoked_tokens_and_missing_admin_token_are_refused_with_json() {
    let rx = Receiver::start();
    let token = rx.ready_device("tok");
    let body = ferry_tests::sample_archive("tok-1", 4);
    for bad in ["", "nope", "Bearer", &format!("{token}x")] {
        let r = rx.put(bad, "tok-1", COMMIT_A, &body);
        assert_eq!(r.status, 401, "token {bad:?}: {}", r.text());
        assert_eq!(r.json()["status"], "unauthenticated");
    }
    rx.cli_ok(["devices", "revoke", "tok"]);
    let r = ferry_tests::wait_for("revocation in force", || {
        let r = rx.put(&token, "tok-1", COMMIT_A, &body);
        (r.status == 403).then_some(r)
    });
    assert_eq!(r.json()["status"], "forbidden");
    for path in [
        "/v1/admin/devices",
        "/v1/admin/commits",
        "/v1/admin/episodes",
    ] {
        for auth in [
            None,
            Some(format!("Bearer {token}")),
            Some("Bearer wrong".to_string()),
        ] {
            let headers: Vec<(&str, &str)> =
                auth.iter().map(|a| ("Authorization", a.as_str())).collect();
            let r = rx.request("GET", path, &headers, b"");
            assert_eq!(r.status, 401, "{path} with {auth:?}: {}", r.text());
            assert!(r.json()["status"].is_string());
        }
    }
    assert_nothing_stored(&rx);
}

/// Hundreds of connections trickling their headers a byte at a time must
/// not keep an honest device from its 201.
#[test]
fn slowloris_does_not_starve_an_honest_device() {
    let _load = ferry_tests::heavy();
    let rx = Receiver::start();
    let token = rx.ready_device("honest");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut trickles = Vec::new();
    for i in 0..200 {
        let addr = rx.addr;
        let stop = stop.clone();
        trickles.push(std::thread::spawn(move || {
            let Ok(mut s) = TcpStream::connect(addr) else {
                return;
            };
            let head = format!("PUT /v1/episodes/slow-{i} HTTP/1.1\r\nHost: x\r\nX-Slow: ");
            let _ = s.write_all(head.as_bytes());
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if s.write_all(b"a").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }));
    }
    std::thread::sleep(Duration::from_millis(500));
    let body = ferry_tests::sample_archive("honest-1", 5);
    let start = Instant::now();
    let r = rx.put(&token, "honest-1", COMMIT_A, &body);
    let took = start.elapsed();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in trickles {
        let _ = t.join();
    }
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(
        took < Duration::from_secs(10),
        "honest upload took {took:?} under slowloris"
    );
}

/// A response is always readable as JSON, even for unknown routes and
/// methods.
#[test]
fn unknown_routes_and_methods_answer_json() {
    let rx = Receiver::start();
    for (m, p) in [
        ("GET", "/nope"),
        ("DELETE", "/v1/episodes/x"),
        ("POST", "/healthz"),
        ("GET", "/v2/episodes/x"),
    ] {
        let mut s = TcpStream::connect(rx.addr).unwrap();
        s.write_all(request_head(rx.addr, m, p, &[], 0).as_bytes())
            .unwrap();
        let r = read_response(&mut s);
        assert!(r.status >= 400, "{m} {p}: {}", r.status);
        assert!(r.json()["status"].is_string(), "{m} {p}: {}", r.text());
    }
}
