//! An index made by the previous release (ids global, keyed by episode id
//! alone) upgraded in place by this one: every old episode is still
//! listed under its device, verified and downloadable, and a re-ship by
//! its device still answers 200. The databases are the fixture in
//! `tests/fixtures/prev-release/` (see its README: made by that release's
//! binary), for SQLite as a file and for PostgreSQL as a dump restored into
//! a fresh database.

use std::path::{Path, PathBuf};
use std::process::Command;

use ferry_tests::{sha256_hex, stored_by_device, Receiver};

use super::expect;
use super::postgres::{self, TestDb};

/// The commit the fixture's episodes were shipped with.
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const EP_1: &str = "c20db324d78ec4fbe8ed90a9fdf1943abf018db97fa50c57a3a8971426681deb";
const EP_2: &str = "58aea22374d327acd6b448d6ca187f5956b8515d22ae30ccbe29cd21998fe422";

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/prev-release")
}

/// A data directory holding the fixture's objects (and its SQLite index
/// when `sqlite`).
fn data_dir(sqlite: bool) -> tempfile::TempDir {
    let data = tempfile::tempdir().unwrap();
    let status = Command::new("cp")
        .arg("-a")
        .arg(fixture().join("objects"))
        .arg(data.path())
        .status()
        .unwrap();
    assert!(status.success());
    if sqlite {
        std::fs::copy(
            fixture().join("index.sqlite"),
            data.path().join("index.sqlite"),
        )
        .unwrap();
    }
    data
}

fn tokens(file: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(fixture().join(file)).unwrap()).unwrap()
}

/// Everything the previous release stored, checked through this one.
fn assert_upgraded(rx: &Receiver, tokens: &serde_json::Value) {
    let rows = stored_by_device(rx);
    let expected = [
        (("old-a", "ep-0001"), EP_1),
        (("old-a", "ep-0002"), EP_2),
        (("old-b", "ep-0003"), EP_2),
    ];
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for ((device, id), sha) in expected {
        assert_eq!(rows[&(device.into(), id.into())], sha, "{device}/{id}");
    }
    let verify = rx.cli(["episodes", "verify"]);
    ferry_tests::assert_ok(&verify, "episodes verify");
    assert!(String::from_utf8_lossy(&verify.stdout).contains("3 ok"));
    ferry_tests::assert_ok(
        &rx.cli(["episodes", "verify", "old-b/ep-0003"]),
        "verify one",
    );

    let admin = format!("Bearer {}", rx.admin_token);
    let a = [("Authorization", admin.as_str())];
    for ((device, id), sha) in expected {
        let p = format!("/v1/admin/devices/{device}/episodes/{id}/download");
        let dl = rx.request("GET", &p, &a, b"");
        assert_eq!(dl.status, 200, "{p}: {}", dl.text());
        assert_eq!(sha256_hex(&dl.body), sha, "{p}");
    }
    let devices = rx.request("GET", "/v1/admin/devices", &a, b"").json();
    let names: Vec<_> = devices
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["name"].as_str().unwrap(),
                d["revoked"] == true,
                d["episodes"].as_u64(),
            )
        })
        .collect();
    assert_eq!(
        names,
        [
            ("old-a", false, Some(2)),
            ("old-b", false, Some(1)),
            ("old-c", true, Some(0))
        ]
    );

    // A re-ship by its device: 200, as before the upgrade. The same bytes
    // under an id only another device had: now this device's own 201.
    let body = |sha: &str| std::fs::read(ferry_tests::object_path(&rx.data_dir, sha)).unwrap();
    let (old_a, old_b) = (
        tokens["old-a"].as_str().unwrap(),
        tokens["old-b"].as_str().unwrap(),
    );
    expect(
        &rx.put(old_a, "ep-0001", COMMIT, &body(EP_1)),
        200,
        "already-present",
    );
    expect(
        &rx.put(old_b, "ep-0003", COMMIT, &body(EP_2)),
        200,
        "already-present",
    );
    expect(
        &rx.put(old_b, "ep-0001", COMMIT, &body(EP_1)),
        201,
        "stored",
    );
    // The migrated key still decides: other bytes under an old id conflict.
    let j = expect(
        &rx.put(old_a, "ep-0002", COMMIT, &body(EP_1)),
        409,
        "conflict",
    );
    assert_eq!(j["existing_sha256"], EP_2);
    assert_eq!(stored_by_device(rx).len(), 4);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify after");
}

#[test]
fn a_sqlite_index_of_the_previous_release_is_upgraded_in_place() {
    let data = data_dir(true);
    let mut rx = Receiver::start_in(data.path(), &[]);
    assert_upgraded(&rx, &tokens("tokens-sqlite.json"));
    // Upgraded once: a restart finds it current.
    rx.restart();
    assert_eq!(stored_by_device(&rx).len(), 4);
}

#[test]
fn a_postgres_index_of_the_previous_release_is_upgraded_in_place() {
    let test = "a_postgres_index_of_the_previous_release_is_upgraded_in_place";
    let Some(db) = TestDb::create(test) else {
        return;
    };
    let out = Command::new("psql")
        .args([&db.url(), "-v", "ON_ERROR_STOP=1", "-q", "-f"])
        .arg(fixture().join("postgres.sql"))
        .output()
        .unwrap();
    ferry_tests::assert_ok(&out, "restoring the previous release's dump");
    let data = data_dir(false);
    let mut rx = postgres::receiver(&db, data.path());
    assert_upgraded(&rx, &tokens("tokens-postgres.json"));
    rx.restart();
    assert_eq!(stored_by_device(&rx).len(), 4);
    drop(rx);
}

/// ferry never deletes a device row, but a database edited by hand may
/// have an episode whose device is gone: the migration keeps the episode
/// under a revoked placeholder device rather than failing (the new foreign
/// key needs the row) or dropping it.
#[test]
fn an_old_episode_whose_device_row_is_gone_is_kept_under_a_revoked_device() {
    let test = "an_old_episode_whose_device_row_is_gone_is_kept_under_a_revoked_device";
    if ferry_tests::lacks("sqlite3", test) {
        return;
    }
    let data = data_dir(true);
    let out = Command::new("sqlite3")
        .arg(data.path().join("index.sqlite"))
        .arg("DELETE FROM devices WHERE name = 'old-b'")
        .output()
        .unwrap();
    ferry_tests::assert_ok(&out, "sqlite3");
    let rx = Receiver::start_in(data.path(), &[]);
    assert_eq!(stored_by_device(&rx).len(), 3);
    let devices: serde_json::Value =
        serde_json::from_str(&rx.cli_ok(["devices", "list", "--json"])).unwrap();
    let b = &devices[1];
    assert_eq!(
        (&b["name"], &b["revoked"], &b["episodes"]),
        (&"old-b".into(), &true.into(), &1.into())
    );
    // Its old token is no longer the device's: 401, nothing stored.
    let old_b = tokens("tokens-sqlite.json")["old-b"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = std::fs::read(ferry_tests::object_path(&rx.data_dir, EP_2)).unwrap();
    assert_eq!(rx.put(&old_b, "ep-0003", COMMIT, &body).status, 401);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}
