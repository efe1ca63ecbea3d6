//! Episodes belong to their device (SPEC §2): ids are scoped to the device
//! that ships them, and no device-facing route tells a device anything
//! about another device's episodes.

use ferry_tests::{sample_archive, sha256_hex, stored_by_device, Receiver, COMMIT_A};

use super::{expect, head_request, object_files};

#[test]
fn another_devices_episode_answers_as_if_absent_on_every_device_route() {
    let rx = Receiver::start();
    let a = rx.ready_device("dev-a");
    let b = rx.add_device("dev-b");
    let theirs = sample_archive("ep-0001", 1);
    expect(&rx.put(&a, "ep-0001", COMMIT_A, &theirs), 201, "stored");
    let (auth_a, auth_b) = (format!("Bearer {a}"), format!("Bearer {b}"));

    // HEAD: 404 for b, as for an id nobody stored; no digest, no size.
    let r = head_request(&rx, "ep-0001", &auth_b);
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-ferry-sha256"), None);
    assert_eq!(head_request(&rx, "ep-0001", &auth_a).status, 200);

    // PUT: the same bytes as a's are not "already present" and other bytes
    // are not a conflict: each is b's own first store (the same bytes as
    // a's: one object, two rows). Then other bytes are b's own conflict,
    // naming b's digest, never a's.
    let j = expect(&rx.put(&b, "ep-0001", COMMIT_A, &theirs), 201, "stored");
    assert_eq!(j["sha256"], sha256_hex(&theirs).as_str());
    let other = sample_archive("ep-0002", 3);
    expect(&rx.put(&a, "ep-0002", COMMIT_A, &other), 201, "stored");
    let mine = sample_archive("ep-0002", 4);
    expect(&rx.put(&b, "ep-0002", COMMIT_A, &mine), 201, "stored");
    let j = expect(&rx.put(&b, "ep-0002", COMMIT_A, &other), 409, "conflict");
    assert_eq!(
        j["existing_sha256"],
        sha256_hex(&mine).as_str(),
        "b's own digest"
    );
    let r = head_request(&rx, "ep-0002", &auth_b);
    assert_eq!(r.header("x-ferry-sha256"), Some(sha256_hex(&mine).as_str()));

    // The commit check and whoami speak of the caller and the allow-list
    // only: the same answer whatever other devices stored.
    for (auth, name) in [(&auth_a, "dev-a"), (&auth_b, "dev-b")] {
        let h = [("Authorization", auth.as_str())];
        let j = rx.request("GET", "/v1/whoami", &h, b"").json();
        assert_eq!(j, serde_json::json!({"device": name, "protocol": "1"}));
        let j = rx
            .request("GET", &format!("/v1/commits/{COMMIT_A}"), &h, b"")
            .json();
        let keys: Vec<&String> = j.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            ["allowed", "commit", "head_commit", "remediation"],
            "{j}"
        );
    }

    // An operator who names ep-0001 by its id alone is told whose it is.
    let admin = format!("Bearer {}", rx.admin_token);
    let r = rx.request(
        "GET",
        "/v1/admin/episodes/ep-0001",
        &[("Authorization", &admin)],
        b"",
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let detail = r.json()["detail"].as_str().unwrap().to_owned();
    assert!(
        detail.contains("dev-a/ep-0001") && detail.contains("dev-b/ep-0001"),
        "{detail}"
    );

    let rows = stored_by_device(&rx);
    assert_eq!(rows.len(), 4);
    assert_eq!(
        rows[&("dev-a".into(), "ep-0001".into())],
        sha256_hex(&theirs)
    );
    assert_eq!(
        rows[&("dev-b".into(), "ep-0001".into())],
        sha256_hex(&theirs)
    );
    assert_eq!(rows[&("dev-b".into(), "ep-0002".into())], sha256_hex(&mine));
    // Identical bytes are stored once: three objects for four rows.
    assert_eq!(object_files(&rx).len(), 3);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
    // Damage to the shared object is reported for both of its rows.
    let shared = ferry_tests::object_path(&rx.data_dir, &sha256_hex(&theirs));
    let mut bytes = std::fs::read(&shared).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&shared, bytes).unwrap();
    let out = rx.cli(["episodes", "verify"]);
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for name in [
        "dev-a/ep-0001: MISMATCH",
        "dev-b/ep-0001: MISMATCH",
        "2 ok, 2 mismatch",
    ] {
        assert!(stdout.contains(name), "{name}: {stdout}");
    }
}

/// `devices rename` while one of the device's uploads is between its
/// header checks (under the old name) and its index row: the foreign key
/// refuses a row under a name no device has, so that upload gets a 503
/// with `Retry-After` (the agent retries it) and leaves nothing behind; the
/// retry is stored under the new name.
#[test]
fn a_rename_during_an_upload_costs_that_upload_a_retry_and_no_orphan() {
    rename_during_an_upload(&Receiver::start());
}

/// The test above on any index.
pub(super) fn rename_during_an_upload(rx: &Receiver) {
    let token = rx.ready_device("host-1");
    let body = sample_archive("ep-r", 1);
    let held = super::hold_upload(rx, &token, "ep-r", &body, body.len() - 100);
    rx.cli_ok(["devices", "rename", "host-1", "lab-1"]);
    let r = held.finish();
    let j = expect(&r, 503, "overloaded");
    assert_eq!(r.header("retry-after"), Some("1"), "{j}");
    assert!(stored_by_device(rx).is_empty());
    ferry_tests::wait_for("the refused upload's object is removed", || {
        object_files(rx).is_empty().then_some(())
    });
    expect(&rx.put(&token, "ep-r", COMMIT_A, &body), 201, "stored");
    let rows = stored_by_device(rx);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        [&("lab-1".to_string(), "ep-r".to_string())]
    );
}
