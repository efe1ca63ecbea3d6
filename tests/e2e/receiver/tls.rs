//! TLS: with `tls_cert`/`tls_key` the receiver speaks HTTPS (checked with
//! `curl` against a certificate made by `openssl`).

use std::path::Path;
use std::process::Command;

use ferry_tests::{sample_archive, sha256_hex, Receiver, COMMIT_A};

fn self_signed(dir: &Path) -> bool {
    Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
        ])
        .arg(dir.join("key.pem"))
        .arg("-out")
        .arg(dir.join("cert.pem"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn curl(cert: &Path, args: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(cert)
        .args(args)
        .output()
        .expect("curl");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn tls_serves_https_with_the_configured_certificate() {
    const TEST: &str = "tls_serves_https_with_the_configured_certificate";
    if !ferry_tests::have("openssl") || !ferry_tests::have("curl") {
        ferry_tests::skip(TEST, "openssl or curl is not installed");
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let certs = tempfile::tempdir().unwrap();
    if !self_signed(certs.path()) {
        ferry_tests::skip(TEST, "openssl could not make a certificate");
        return;
    }
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let rx = Receiver::start_in(
        data.path(),
        &[
            ("FERRY_RECEIVER_TLS_CERT", cert.to_str().unwrap()),
            ("FERRY_RECEIVER_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    assert!(rx.url.starts_with("https://"), "{}", rx.url);
    let token = rx.ready_device("tls-dev");
    let health = curl(&cert, &[&format!("{}/healthz", rx.url)]);
    assert!(health.contains("ok"), "{health}");

    let body = sample_archive("tls-1", 1);
    let file = data.path().join("tls-1.tar.zst");
    std::fs::write(&file, &body).unwrap();
    let answer = curl(
        &cert,
        &[
            "-T",
            file.to_str().unwrap(),
            "-H",
            &format!("Authorization: Bearer {token}"),
            "-H",
            &format!("X-Ferry-Commit: {COMMIT_A}"),
            "-H",
            &format!("X-Ferry-Sha256: {}", sha256_hex(&body)),
            &format!("{}/v1/episodes/tls-1", rx.url),
        ],
    );
    let j: serde_json::Value = serde_json::from_str(&answer).unwrap();
    assert_eq!(j["status"], "stored", "{j}");

    // Plain HTTP on the TLS port gets no answer, and the receiver keeps
    // serving.
    let mut s = std::net::TcpStream::connect(rx.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let _ = std::io::Write::write_all(&mut s, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let mut buf = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut buf);
    assert!(!String::from_utf8_lossy(&buf).contains("\"ok\""));
    assert!(curl(&cert, &[&format!("{}/healthz", rx.url)]).contains("ok"));
}

#[test]
fn a_missing_certificate_is_a_configuration_error() {
    let data = tempfile::tempdir().unwrap();
    let out = Command::new(ferry_tests::bin("ferry-receiver"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(data.path())
        .env("FERRY_RECEIVER_TLS_CERT", "/nonexistent/cert.pem")
        .env("FERRY_RECEIVER_TLS_KEY", "/nonexistent/key.pem")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tls_cert"));
}
