//! The status page (`GET /`) as an operator console: who may see it, and
//! what a real browser renders.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use ferry_tests::{sample_archive, Receiver, COMMIT_A, COMMIT_B};

use crate::receiver::expect;

/// Standard base64, for a Basic `Authorization` header.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let mut buf = [0u8; 3];
        buf[..chunk.len()].copy_from_slice(chunk);
        let n = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn get_page(rx: &Receiver, auth: Option<&str>) -> ferry_tests::Response {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("Authorization", a)).into_iter().collect();
    rx.request("GET", "/", &headers, b"")
}

#[test]
fn the_page_needs_the_admin_token_as_bearer_or_basic_password() {
    let rx = Receiver::start();
    let r = get_page(&rx, None);
    assert_eq!(r.status, 401, "{}", r.text());
    let challenge = r.header("www-authenticate").unwrap_or_default();
    assert!(
        challenge.starts_with("Basic realm=\"ferry\""),
        "{challenge:?}"
    );
    assert_eq!(r.json()["status"], "unauthenticated");

    let bearer = format!("Bearer {}", rx.admin_token);
    let r = get_page(&rx, Some(&bearer));
    assert_eq!(r.status, 200);
    assert!(r.text().contains("<h1>ferry receiver</h1>"));
    // The CSP the page always sent still holds.
    let csp = r.header("content-security-policy").unwrap_or_default();
    assert!(csp.contains("default-src 'none'"), "{csp:?}");

    let basic = format!(
        "Basic {}",
        base64(format!("operator:{}", rx.admin_token).as_bytes())
    );
    assert_eq!(get_page(&rx, Some(&basic)).status, 200);
    let wrong = format!("Basic {}", base64(b"operator:not-the-token-at-all"));
    assert_eq!(get_page(&rx, Some(&wrong)).status, 401);
    // A device token is not the admin token.
    let device = format!("Bearer {}", rx.add_device("lab-a"));
    assert_eq!(get_page(&rx, Some(&device)).status, 401);
}

#[test]
fn off_removes_the_page_and_public_opens_it() {
    let dir = tempfile::tempdir().unwrap();
    let off = Receiver::start_in(
        &dir.path().join("off"),
        &[("FERRY_RECEIVER_STATUS_PAGE", "off")],
    );
    let bearer = format!("Bearer {}", off.admin_token);
    assert_eq!(get_page(&off, Some(&bearer)).status, 404);
    assert_eq!(get_page(&off, None).status, 404);

    let public = Receiver::start_in(
        &dir.path().join("public"),
        &[("FERRY_RECEIVER_STATUS_PAGE", "public")],
    );
    let r = get_page(&public, None);
    assert_eq!(r.status, 200);
    assert!(r.header("www-authenticate").is_none());
}

/// The workspace's `target/`, where screenshots go.
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
}

/// Runs headless chromium with `args` on `url`; returns stdout.
fn chromium(profile: &Path, args: &[&str], url: &str) -> String {
    let out = Command::new("timeout")
        .arg("120")
        .arg("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .expect("run chromium");
    assert!(
        out.status.success(),
        "chromium failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Debian's chromium renders the page, authenticated the way a browser
/// does it (the token as the Basic password, here in the URL): the DOM has
/// the rejected commit with both its devices and its allow command, and a
/// device that stopped uploading is listed first, as falling behind.
#[test]
fn a_real_browser_renders_the_console() {
    if ferry_tests::lacks("chromium", "a_real_browser_renders_the_console") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(
        &dir.path().join("data"),
        // Long enough that a device that uploads just before chromium starts
        // (a few seconds under load) is not behind yet when it renders.
        &[("FERRY_RECEIVER_BEHIND_AFTER", "8s")],
    );
    let old = rx.ready_device("lab-old");
    let a = rx.add_device("lab-a");
    let b = rx.add_device("lab-b");
    rx.cli_ok([
        "commits",
        "allow",
        COMMIT_A,
        "--note",
        "release <1.4> & \"friends\"",
    ]);
    expect(
        &rx.put(&old, "e-1", COMMIT_A, &sample_archive("e-1", 1)),
        201,
        "stored",
    );
    for (token, id) in [(&a, "x-1"), (&b, "x-1"), (&a, "x-2")] {
        expect(
            &rx.put(token, id, COMMIT_B, &sample_archive(id, 2)),
            412,
            "commit-rejected",
        );
    }
    // lab-old falls behind; a fresh device uploads now and is not.
    std::thread::sleep(Duration::from_secs(9));
    let fresh = rx.add_device("lab-fresh");
    expect(
        &rx.put(&fresh, "e-2", COMMIT_A, &sample_archive("e-2", 3)),
        201,
        "stored",
    );

    let url = format!("http://operator:{}@{}/", rx.admin_token, rx.addr);
    let profile = dir.path().join("profile");
    let dom = chromium(&profile, &["--dump-dom"], &url);
    assert!(
        dom.contains("<h1>ferry receiver</h1>"),
        "not the page: {dom}"
    );
    let rejected = section(&dom, "<table id=\"rejected\">");
    assert!(rejected.contains(COMMIT_B), "{rejected}");
    assert!(
        rejected.contains("lab-a") && rejected.contains("lab-b"),
        "{rejected}"
    );
    assert!(
        rejected.contains(&format!("ferry-receiver commits allow {COMMIT_B}")),
        "{rejected}"
    );
    let devices = section(&dom, "<table id=\"devices\">");
    let behind_row = devices
        .split("<tr")
        .find(|row| row.contains("lab-old"))
        .unwrap_or_default();
    assert!(behind_row.contains("falling behind"), "{devices}");
    let fresh_row = devices
        .split("<tr")
        .find(|row| row.contains("lab-fresh"))
        .unwrap_or_default();
    assert!(!fresh_row.contains("falling behind"), "{devices}");
    assert!(
        devices.find("lab-old") < devices.find("lab-fresh"),
        "falling behind first: {devices}"
    );
    // The note is text, escaped, not markup.
    assert!(
        dom.contains("release &lt;1.4&gt; &amp; \"friends\""),
        "{dom}"
    );
    assert!(dom.contains("<svg id=\"rate\""), "{dom}");

    let shots = target_dir().join("screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    for (name, size) in [
        ("status-page.png", "1100,1300"),
        ("status-page-phone.png", "412,1400"),
    ] {
        let path = shots.join(name);
        let _ = std::fs::remove_file(&path);
        chromium(
            &profile,
            &[
                &format!("--screenshot={}", path.display()),
                &format!("--window-size={size}"),
            ],
            &url,
        );
        let png = std::fs::read(&path).unwrap();
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}",
            path.display()
        );
    }
}

/// The table that starts with `open`, up to its end.
fn section<'a>(dom: &'a str, open: &str) -> &'a str {
    let start = dom
        .find(open)
        .unwrap_or_else(|| panic!("no {open} in {dom}"));
    let rest = &dom[start..];
    &rest[..rest.find("</table>").unwrap_or(rest.len())]
}
