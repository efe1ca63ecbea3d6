//! A receiver behind a private CA: without `ca_file` the agent refuses the
//! certificate (a transient failure, nothing quarantined); with it, it
//! ships. A `ca_file` that cannot be read is a configuration error naming
//! the key.

use std::path::Path;
use std::process::Command;

use ferry_tests::{assert_ok, stored, Receiver, Spool, COMMIT_A};

use super::{small, text};

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", text(&out));
}

/// A CA and a server certificate for 127.0.0.1 signed by it.
fn make_ca(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut a = vec!["req", "-x509"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=ferry test CA",
    ]);
    a.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &a);
    let mut a = vec!["req"];
    a.extend(ec);
    a.extend([
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    openssl(dir, &a);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

#[test]
fn private_ca_via_ca_file() {
    if ferry_tests::lacks("openssl", "private_ca_via_ca_file") {
        return;
    }
    let pki = tempfile::tempdir().unwrap();
    make_ca(pki.path());
    let data = tempfile::tempdir().unwrap();
    let cert = pki.path().join("server.pem");
    let key = pki.path().join("server.key");
    let rx = Receiver::start_in(
        data.path(),
        &[
            ("FERRY_RECEIVER_TLS_CERT", cert.to_str().unwrap()),
            ("FERRY_RECEIVER_TLS_KEY", key.to_str().unwrap()),
        ],
    );
    assert!(rx.url.starts_with("https://"), "{}", rx.url);
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "tls");
    small(&spool, "secure", 1);

    let out = spool.drain("3s");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // Refused for the reason under test: the certificate is not trusted.
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .to_lowercase()
            .contains("certificate"),
        "{}",
        text(&out)
    );
    assert!(spool.ids_in("quarantine").is_empty());

    let ca = pki.path().join("ca.pem");
    let out = spool
        .agent("drain")
        .args(["--timeout", "60s"])
        .env("FERRY_AGENT_CA_FILE", &ca)
        .output()
        .unwrap();
    assert_ok(&out, "drain with ca_file");
    assert!(stored(&rx).contains_key("secure"));

    let out = spool
        .agent("drain")
        .env("FERRY_AGENT_CA_FILE", pki.path().join("nope.pem"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ca_file"),
        "{}",
        text(&out)
    );
}
