//! What a test reads back from a running receiver and from the packer, to
//! check what arrived: the index (`episodes list --json`), the temporary
//! upload files, a `/metrics` sample, and the digest a fresh pack has.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::{assert_ok, bin, read_response, request_head, Receiver};

/// The receiver's index as `episodes list --json` shows it: id → sha256,
/// for tests whose ids are unique across devices. Panics if an id is
/// listed twice (an episode stored twice is what the suite looks for).
pub fn stored(rx: &Receiver) -> BTreeMap<String, String> {
    let mut map = BTreeMap::new();
    for ((_, id), sha) in stored_by_device(rx) {
        assert!(map.insert(id.clone(), sha).is_none(), "{id} listed twice");
    }
    map
}

/// `episodes list --json` as (device, id) → sha256: ids are scoped to
/// their device. Panics if a (device, id) is listed twice.
pub fn stored_by_device(rx: &Receiver) -> BTreeMap<(String, String), String> {
    let out = rx.cli_ok(["episodes", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).expect("episodes list --json");
    let mut map = BTreeMap::new();
    for e in v.as_array().expect("a JSON array") {
        let s = |k: &str| e[k].as_str().expect(k).to_string();
        let key = (s("device"), s("episode_id"));
        assert!(
            map.insert(key.clone(), s("sha256")).is_none(),
            "{key:?} listed twice"
        );
    }
    map
}

/// Names in `<data_dir>/tmp`: one per upload not finished (or not yet
/// stored); none when the directory does not exist.
pub fn temp_files(rx: &Receiver) -> Vec<String> {
    files_in(rx, "tmp")
}

/// The names in `<data_dir>/<sub>`; none when it does not exist.
pub fn files_in(rx: &Receiver, sub: &str) -> Vec<String> {
    std::fs::read_dir(rx.data_dir.join(sub))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The value of the first `/metrics` sample line starting with `prefix`;
/// `None` when there is none or the receiver does not answer (a test
/// polling across a restart must not panic on the refused connection).
pub fn metric(rx: &Receiver, prefix: &str) -> Option<f64> {
    let mut s = TcpStream::connect(rx.addr).ok()?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
    let head = request_head(rx.addr, "GET", "/metrics", &[], 0);
    s.write_all(head.as_bytes()).ok()?;
    read_response(&mut s)
        .text()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

/// `ferry-agent pack DIR -o <tmp>`: the sha256 it prints, which is what
/// the receiver must have stored for that directory.
pub fn pack_sha(dir: &Path) -> String {
    let out_dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("ferry-agent"))
        .arg("pack")
        .arg(dir)
        .arg("-o")
        .arg(out_dir.path().join("x.tar.zst"))
        .output()
        .expect("ferry-agent pack");
    assert_ok(&out, "ferry-agent pack");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}
