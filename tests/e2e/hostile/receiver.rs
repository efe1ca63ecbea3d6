//! A client that wants to hurt the receiver or the other devices, over raw
//! sockets (issue 13, items 8, 9 and 13): each test is named after the class
//! of hole it closes and fails on a receiver that has the hole.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ferry_tests::{read_response, Receiver, Response};

/// Sends `raw` as is on a fresh connection and reads the answer.
fn raw(rx: &Receiver, raw: &[u8]) -> Response {
    let mut s = TcpStream::connect(rx.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(raw).unwrap();
    read_response(&mut s)
}

/// The `ferry_http_requests_total` series in an exposition.
fn request_series(metrics: &str) -> Vec<&str> {
    metrics
        .lines()
        .filter(|l| l.starts_with("ferry_http_requests_total{"))
        .collect()
}

/// Item 8: every metric label comes from a closed set. 400 invented
/// methods on known and unknown routes are answered 405 with JSON, all
/// counted under `method="other"`; the exposition does not grow with them.
#[test]
fn unbounded_metric_labels() {
    let rx = Receiver::start();
    for i in 0..400 {
        let path = if i % 2 == 0 {
            "/v1/episodes/ep-1"
        } else {
            "/no/such/route"
        };
        let r = raw(
            &rx,
            format!("XMETHOD{i} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 405, "{}", r.text());
        assert_eq!(r.json()["status"], "method-not-allowed");
    }
    let metrics = rx.request("GET", "/metrics", &[], b"").text();
    let series = request_series(&metrics);
    assert!(
        series.len() < 10,
        "{} request series after 400 invented methods:\n{}",
        series.len(),
        series.join("\n")
    );
    assert!(!metrics.contains("XMETHOD"), "a client-made label value");
    let other: f64 = series
        .iter()
        .filter(|l| l.contains(r#"method="other""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(other, 400.0, "{}", series.join("\n"));
}

/// The number of descriptors `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Item 9: idle sockets cannot exhaust the descriptors. The receiver runs
/// with a descriptor limit of 512 (prlimit) and its automatic cap; 1,500
/// idle sockets later, health, readiness, metrics and the admin API still
/// answer, a device request is shed with 503 JSON and `Retry-After`, the
/// descriptors in use stay under the limit, and once the sockets go a
/// device is served again.
#[test]
fn no_connection_cap() {
    if ferry_tests::lacks("prlimit", "no_connection_cap") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut rx = Receiver::prepare(dir.path(), &[]);
    rx.try_spawn(
        "127.0.0.1:0",
        &["prlimit".into(), "--nofile=512:512".into(), "--".into()],
    )
    .unwrap();
    let token = rx.add_device("dev");
    let pid = rx.pid();

    let mut idle = Vec::new();
    for _ in 0..1500 {
        match TcpStream::connect(rx.addr) {
            Ok(s) => idle.push(s),
            Err(e) => panic!("connect: {e}"),
        }
    }
    // Let the accept loop take them all in (and close what is over the cap).
    std::thread::sleep(Duration::from_millis(500));
    let fds = open_fds(pid);
    assert!(fds < 500, "{fds} descriptors open with a limit of 512");

    for path in ["/healthz", "/readyz", "/metrics"] {
        let t = Instant::now();
        let r = rx.request("GET", path, &[], b"");
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{path} took {:?}",
            t.elapsed()
        );
    }
    let admin = format!("Bearer {}", rx.admin_token);
    let r = rx.request(
        "GET",
        "/v1/admin/devices",
        &[("Authorization", &admin)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());

    let bearer = format!("Bearer {token}");
    let r = rx.request("GET", "/v1/whoami", &[("Authorization", &bearer)], b"");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["status"], "overloaded");
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let metrics = rx.request("GET", "/metrics", &[], b"").text();
    assert!(
        metrics.contains("ferry_connections_shedding_total"),
        "{metrics}"
    );

    drop(idle);
    ferry_tests::wait_for("device served again", || {
        let r = rx.request("GET", "/v1/whoami", &[("Authorization", &bearer)], b"");
        (r.status == 200).then_some(())
    });
    assert!(rx.is_running());
}

/// Item 13: what hyper refuses before the router sees it (a broken request
/// line, duplicate, conflicting or overflowing `Content-Length`,
/// `Transfer-Encoding` with `Content-Length`, a head over the limit) is
/// answered with the §2 JSON, not an empty body.
#[test]
fn malformed_http_gets_json() {
    let rx = Receiver::start();
    let big_header = format!("X-Pad: {}\r\n", "a".repeat(70 << 10));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("broken request line", b"GARBAGE\r\n\r\n".to_vec()),
        (
            "duplicate content-length",
            b"PUT /v1/episodes/x HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello".to_vec(),
        ),
        (
            "overflowing content-length",
            b"PUT /v1/episodes/x HTTP/1.1\r\nHost: x\r\nContent-Length: 184467440737095516160\r\n\r\n".to_vec(),
        ),
        (
            "transfer-encoding with content-length",
            b"PUT /v1/episodes/x HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n".to_vec(),
        ),
        (
            "head over the limit",
            format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{big_header}\r\n").into_bytes(),
        ),
    ];
    for (what, req) in cases {
        let r = raw(&rx, &req);
        assert!((400..500).contains(&r.status), "{what}: {}", r.status);
        let v = r.json();
        // hyper reads `Transfer-Encoding` over `Content-Length` (RFC 9112
        // §6.3) and hands that request on, so it meets the router's own
        // refusals (here: no token); the others never reach the router.
        if what.starts_with("transfer-encoding") {
            assert!(v["status"].is_string(), "{what}: {v}");
        } else {
            assert_eq!(v["status"], "bad-request", "{what}: {v}");
        }
        assert!(
            v["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{what}: {v}"
        );
        assert_eq!(r.header("x-ferry-protocol"), Some("1"), "{what}");
    }
    // The server is fine afterwards.
    assert_eq!(rx.request("GET", "/healthz", &[], b"").status, 200);
}

/// Item 13: the HTML page cannot run a script or be framed.
#[test]
fn status_page_security_headers() {
    let rx = Receiver::start();
    let admin = format!("Bearer {}", rx.admin_token);
    let r = rx.request("GET", "/", &[("Authorization", &admin)], b"");
    assert_eq!(r.status, 200);
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp:?}");
    assert!(csp.contains("frame-ancestors 'none'"), "{csp:?}");
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
}

/// Item 13: `/readyz` needs no token, and its probe writes and syncs a
/// file; a flood of probes must not become a flood of syncs. Counted with
/// strace: 200 probes in a burst cost at most a few.
#[test]
fn readyz_probe_is_not_a_sync_per_request() {
    if ferry_tests::lacks("strace", "readyz_probe_is_not_a_sync_per_request") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let trace = ferry_tests::Strace::new();
    let mut rx = Receiver::prepare(&dir.path().join("data"), &[]);
    rx.try_spawn(
        "127.0.0.1:0",
        &trace.wrapper(&["-e", "trace=fsync,fdatasync"]),
    )
    .unwrap();
    let syncs = || trace.log().lines().filter(|l| l.contains("sync(")).count();
    let before = syncs();
    let t = Instant::now();
    for _ in 0..200 {
        assert_eq!(rx.request("GET", "/readyz", &[], b"").status, 200);
    }
    let elapsed = t.elapsed().as_secs() as usize;
    let probes = syncs() - before;
    assert!(probes >= 1, "the probe never synced: is strace seeing it?");
    // One probe a second, each at most a file and a directory sync.
    assert!(
        probes <= 2 * (elapsed + 2),
        "{probes} syncs for 200 probes in {elapsed} s"
    );
}

/// Item 10: one device cannot take every upload slot. With 4 slots and 2
/// per device, a device that opens 4 trickling uploads gets 429 JSON with
/// `Retry-After` for the third and fourth, and another device still
/// stores its episode while the first two trickle on.
#[test]
fn one_device_takes_every_upload_slot() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(
        dir.path(),
        &[
            ("FERRY_RECEIVER_MAX_CONCURRENT_UPLOADS", "4"),
            ("FERRY_RECEIVER_MAX_UPLOADS_PER_DEVICE", "2"),
        ],
    );
    rx.allow(ferry_tests::COMMIT_A, true);
    let greedy = rx.add_device("greedy");
    let honest = rx.add_device("honest");
    let body = ferry_tests::sample_archive("big", 1);
    let sha = ferry_tests::sha256_hex(&body);
    let mut held = Vec::new();
    let mut refused = Vec::new();
    for i in 0..4 {
        let mut s = TcpStream::connect(rx.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let head = ferry_tests::request_head(
            rx.addr,
            "PUT",
            &format!("/v1/episodes/trickle-{i}"),
            &[
                ("Authorization", &format!("Bearer {greedy}")),
                ("X-Ferry-Commit", ferry_tests::COMMIT_A),
                ("X-Ferry-Sha256", &sha),
            ],
            body.len(),
        );
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(&body[..16]).unwrap();
        // An upload holding a slot waits for more body; a refused one is
        // answered at once.
        let mut probe = [0u8; 1];
        match std::io::Read::read(&mut s, &mut probe) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => held.push(s),
            _ => {
                s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                let mut rest = Vec::from(probe);
                let _ = std::io::Read::read_to_end(&mut s, &mut rest);
                refused.push(read_response(&mut rest.as_slice()));
            }
        }
    }
    assert_eq!(held.len(), 2, "uploads holding a slot");
    assert_eq!(refused.len(), 2);
    for r in &refused {
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(r.json()["status"], "overloaded");
        assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    }
    let own = ferry_tests::sample_archive("own", 2);
    let r = rx.put(&honest, "own", ferry_tests::COMMIT_A, &own);
    assert_eq!(r.status, 201, "{}", r.text());
    drop(held);
}

/// Item 12: a device or commit revoked while an upload's body streams is
/// seen at commit: the answer is 403 or 412 with its JSON, and nothing is
/// stored (no row, no object).
#[test]
fn revocation_is_rechecked_at_commit() {
    let rx = Receiver::start();
    let (a, b) = (ferry_tests::COMMIT_A, ferry_tests::COMMIT_B);
    rx.allow(a, true);
    rx.allow(b, false);
    let cases: [(&str, &str, &[&str], u16, &str); 2] = [
        (
            "revoked-dev",
            a,
            &["devices", "revoke", "revoked-dev"],
            403,
            "forbidden",
        ),
        (
            "other-dev",
            b,
            &["commits", "revoke", b],
            412,
            "commit-rejected",
        ),
    ];
    for (device, commit, revoke, status, reply) in cases {
        let token = rx.add_device(device);
        let body = ferry_tests::sample_archive("mid", 3);
        let sha = ferry_tests::sha256_hex(&body);
        let mut s = TcpStream::connect(rx.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let head = ferry_tests::request_head(
            rx.addr,
            "PUT",
            "/v1/episodes/mid",
            &[
                ("Authorization", &format!("Bearer {token}")),
                ("X-Ferry-Commit", commit),
                ("X-Ferry-Sha256", &sha),
            ],
            body.len(),
        );
        s.write_all(head.as_bytes()).unwrap();
        let half = body.len() / 2;
        s.write_all(&body[..half]).unwrap();
        // The headers were accepted: the upload is in flight.
        ferry_tests::wait_for("upload in flight", || {
            let m = rx.request("GET", "/metrics", &[], b"").text();
            m.lines()
                .any(|l| l.starts_with("ferry_uploads_in_flight ") && !l.ends_with(" 0"))
                .then_some(())
        });
        rx.cli_ok(revoke);
        s.write_all(&body[half..]).unwrap();
        let r = read_response(&mut s);
        assert_eq!(r.status, status, "{device}: {}", r.text());
        assert_eq!(r.json()["status"], reply, "{device}");
    }
    let listed = rx.cli_ok(["episodes", "list", "--json"]);
    assert_eq!(listed.trim(), "[]", "{listed}");
    ferry_tests::wait_for("the refused uploads' objects are collected", || {
        crate::receiver::object_files(&rx).is_empty().then_some(())
    });
}
