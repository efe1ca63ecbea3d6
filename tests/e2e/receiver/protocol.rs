//! Every row of SPEC §2 against the real binary, with archives made by the
//! `tar` and `zstd` tools. Answers that the headers settle are checked to
//! come back without the body ever being sent.

use std::time::Duration;

use ferry_tests::{sample_archive, sha256_hex, stored, temp_files, Receiver, COMMIT_A, COMMIT_B};

use super::{expect, expect_400, head_only, object_files, proto_headers, send};

/// A 1 GB Content-Length: if the receiver tried to read that body, the
/// answer would never come (the test never sends it).
const HUGE: u64 = 1_000_000_000;
const PROMPT: Duration = Duration::from_secs(10);

#[test]
fn row_201_stored_then_200_already_present() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let body = sample_archive("ep-1", 1);
    let sha = sha256_hex(&body);
    let j = expect(&rx.put(&token, "ep-1", COMMIT_A, &body), 201, "stored");
    assert_eq!(j["episode_id"], "ep-1");
    assert_eq!(j["sha256"], sha.as_str());
    assert_eq!(j["size"], body.len() as u64);
    // The object is content-addressed and byte-identical.
    let objects = object_files(&rx);
    assert_eq!(objects.len(), 1, "{objects:?}");
    assert!(
        objects[0] == ferry_tests::object_path(&rx.data_dir, &sha),
        "{objects:?}"
    );
    assert_eq!(std::fs::read(&objects[0]).unwrap(), body);

    let j = expect(
        &rx.put(&token, "ep-1", COMMIT_A, &body),
        200,
        "already-present",
    );
    assert_eq!(j["episode_id"], "ep-1");
    assert_eq!(j["sha256"], sha.as_str());
    assert_eq!(j["size"], body.len() as u64);

    // Decided from the existing row before the body: a huge length with the
    // same digest is answered at once.
    let (r, took) = head_only(
        rx.addr,
        &proto_headers(&token, COMMIT_A, &sha),
        "ep-1",
        1_000_000,
    );
    expect(&r, 200, "already-present");
    assert!(took < PROMPT, "{took:?}");
    assert_eq!(stored(&rx).len(), 1);
    assert!(temp_files(&rx).is_empty());
}

#[test]
fn row_409_conflict_names_the_existing_digest_before_reading_the_body() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let first = sample_archive("ep-c", 1);
    let second = sample_archive("ep-c", 2);
    expect(&rx.put(&token, "ep-c", COMMIT_A, &first), 201, "stored");
    let j = expect(&rx.put(&token, "ep-c", COMMIT_A, &second), 409, "conflict");
    assert_eq!(j["existing_sha256"], sha256_hex(&first).as_str());
    // Without sending the body.
    let (r, took) = head_only(
        rx.addr,
        &proto_headers(&token, COMMIT_A, &sha256_hex(&second)),
        "ep-c",
        HUGE,
    );
    let j = expect(&r, 409, "conflict");
    assert_eq!(j["existing_sha256"], sha256_hex(&first).as_str());
    assert!(took < PROMPT, "{took:?}");
    // The stored episode is untouched.
    assert_eq!(stored(&rx)["ep-c"], sha256_hex(&first));
    assert_eq!(object_files(&rx).len(), 1);
}

#[test]
fn row_412_commit_rejected_with_remediation_and_without_reading_a_huge_body() {
    let data = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(
        data.path(),
        &[(
            "FERRY_RECEIVER_REMEDIATION",
            "flash {head_commit} (you run {your_commit})",
        )],
    );
    let token = rx.ready_device("dev");
    let body = sample_archive("ep-r", 1);
    let j = expect(
        &rx.put(&token, "ep-r", COMMIT_B, &body),
        412,
        "commit-rejected",
    );
    assert_eq!(j["your_commit"], COMMIT_B);
    assert_eq!(j["head_commit"], COMMIT_A);
    assert_eq!(
        j["remediation"],
        format!("flash {COMMIT_A} (you run {COMMIT_B})").as_str()
    );

    let (r, took) = head_only(
        rx.addr,
        &proto_headers(&token, COMMIT_B, &sha256_hex(&body)),
        "ep-r",
        HUGE,
    );
    expect(&r, 412, "commit-rejected");
    assert!(took < PROMPT, "a 1 GB body was waited for: {took:?}");
    assert!(stored(&rx).is_empty());
    assert!(object_files(&rx).is_empty());

    // Allowed now: the same episode stores.
    rx.allow(COMMIT_B, false);
    expect(&rx.put(&token, "ep-r", COMMIT_B, &body), 201, "stored");
}

#[test]
fn row_412_without_a_head_commit_still_explains() {
    let rx = Receiver::start();
    let token = rx.add_device("dev");
    let body = sample_archive("ep-n", 1);
    let j = expect(
        &rx.put(&token, "ep-n", COMMIT_A, &body),
        412,
        "commit-rejected",
    );
    assert!(j["head_commit"].is_null(), "{j}");
    assert!(j["remediation"].as_str().unwrap().contains(COMMIT_A), "{j}");
}

#[test]
fn row_400_header_errors_are_answered_before_the_body() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let body = sample_archive("ep-h", 1);
    let sha = sha256_hex(&body);
    let auth = ("Authorization".to_string(), format!("Bearer {token}"));
    let commit = ("X-Ferry-Commit".to_string(), COMMIT_A.to_string());
    let digest = ("X-Ferry-Sha256".to_string(), sha.clone());
    let cases: Vec<(Vec<(String, String)>, &str)> = vec![
        (vec![auth.clone(), digest.clone()], "missing-commit"),
        (
            vec![
                auth.clone(),
                ("X-Ferry-Commit".into(), COMMIT_A.to_uppercase()),
                digest.clone(),
            ],
            "malformed-commit",
        ),
        (
            vec![
                auth.clone(),
                ("X-Ferry-Commit".into(), "abc".into()),
                digest.clone(),
            ],
            "malformed-commit",
        ),
        (vec![auth.clone(), commit.clone()], "missing-digest"),
        (
            vec![
                auth.clone(),
                commit.clone(),
                ("X-Ferry-Sha256".into(), "xyz".into()),
            ],
            "malformed-digest",
        ),
        (
            vec![
                auth.clone(),
                commit.clone(),
                ("X-Ferry-Sha256".into(), sha.to_uppercase()),
            ],
            "malformed-digest",
        ),
    ];
    for (headers, error) in cases {
        expect_400(
            &send(&rx, "PUT", "/v1/episodes/ep-h", &headers, &body),
            error,
        );
        let (r, took) = head_only(rx.addr, &headers, "ep-h", HUGE);
        expect_400(&r, error);
        assert!(took < PROMPT, "{error}: {took:?}");
    }
    assert!(stored(&rx).is_empty());
}

#[test]
fn row_400_bad_episode_ids_never_touch_a_path() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let body = sample_archive("x", 1);
    let headers = proto_headers(&token, COMMIT_A, &sha256_hex(&body));
    let long = "a".repeat(200);
    for id in [
        "..",
        "%2F",
        "a%2Fb",
        "%2e%2e",
        "%2E%2E",
        ".hidden",
        "-x",
        "a%20b",
        "%00",
        "%FF",
        "a%5Cb",
        long.as_str(),
    ] {
        let r = send(&rx, "PUT", &format!("/v1/episodes/{id}"), &headers, &body);
        expect_400(&r, "bad-episode-id");
        assert_eq!(
            super::head_request(&rx, id, &headers[0].1).status,
            400,
            "HEAD {id}"
        );
    }
    // 128 characters is the longest valid id.
    let max = "b".repeat(128);
    let body = sample_archive(&max, 2);
    expect(&rx.put(&token, &max, COMMIT_A, &body), 201, "stored");
    assert_eq!(stored(&rx).len(), 1);
    // Nothing was written outside the data dir's objects.
    assert_eq!(object_files(&rx).len(), 1);
}

#[test]
fn row_400_digest_mismatch_stores_nothing_and_the_id_stays_free() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let body = sample_archive("ep-d", 1);
    let other = sample_archive("ep-d", 2);
    let headers = proto_headers(&token, COMMIT_A, &sha256_hex(&other));
    expect_400(
        &send(&rx, "PUT", "/v1/episodes/ep-d", &headers, &body),
        "digest-mismatch",
    );
    assert!(stored(&rx).is_empty());
    assert!(object_files(&rx).is_empty());
    ferry_tests::wait_for("temp file removed", || {
        temp_files(&rx).is_empty().then_some(())
    });
    expect(&rx.put(&token, "ep-d", COMMIT_A, &body), 201, "stored");
}

#[test]
fn row_400_malformed_body_not_zstd_or_empty() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let not_zstd = b"this is plainly not a tar.zst archive".to_vec();
    expect_400(
        &rx.put(&token, "ep-m", COMMIT_A, &not_zstd),
        "malformed-body",
    );
    expect_400(&rx.put(&token, "ep-m", COMMIT_A, b""), "malformed-body");
    assert!(stored(&rx).is_empty());
    assert!(object_files(&rx).is_empty());
}

#[test]
fn row_400_missing_length_for_a_chunked_upload() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let body = sample_archive("ep-l", 1);
    let mut headers = proto_headers(&token, COMMIT_A, &sha256_hex(&body));
    headers.push(("Transfer-Encoding".into(), "chunked".into()));
    let mut chunked = format!("{:x}\r\n", body.len()).into_bytes();
    chunked.extend_from_slice(&body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    expect_400(
        &send(&rx, "PUT", "/v1/episodes/ep-l", &headers, &chunked),
        "missing-length",
    );
    assert!(stored(&rx).is_empty());
}

#[test]
fn row_401_and_403() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let body = sample_archive("ep-a", 1);
    let sha = sha256_hex(&body);
    // No token, a malformed header, an unknown token.
    let mut no_auth = proto_headers(&token, COMMIT_A, &sha);
    no_auth.remove(0);
    expect(
        &send(&rx, "PUT", "/v1/episodes/ep-a", &no_auth, &body),
        401,
        "unauthenticated",
    );
    for auth in [
        "Basic Zm9vOmJhcg==",
        "Bearer",
        "Bearer fry_0000",
        &format!("Bearer {token}x"),
    ] {
        let mut h = no_auth.clone();
        h.push(("Authorization".into(), auth.to_string()));
        expect(
            &send(&rx, "PUT", "/v1/episodes/ep-a", &h, &body),
            401,
            "unauthenticated",
        );
    }
    // Auth is decided first, before the body.
    let (r, took) = head_only(rx.addr, &no_auth, "ep-a", HUGE);
    expect(&r, 401, "unauthenticated");
    assert!(took < PROMPT);

    rx.cli_ok(["devices", "revoke", "dev"]);
    expect(&rx.put(&token, "ep-a", COMMIT_A, &body), 403, "forbidden");
    let (r, _) = head_only(
        rx.addr,
        &proto_headers(&token, COMMIT_A, &sha),
        "ep-a",
        HUGE,
    );
    expect(&r, 403, "forbidden");
    assert!(stored(&rx).is_empty());
}

#[test]
fn row_413_too_large_names_the_limit_before_reading() {
    let data = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(data.path(), &[("FERRY_RECEIVER_MAX_EPISODE_SIZE", "64KiB")]);
    let token = rx.ready_device("dev");
    let big = super::archive_of_size("ep-big", 1, 100_000);
    assert!(big.len() > 65536);
    let j = expect(&rx.put(&token, "ep-big", COMMIT_A, &big), 413, "too-large");
    assert_eq!(j["limit"], 65536);
    let (r, took) = head_only(
        rx.addr,
        &proto_headers(&token, COMMIT_A, &sha256_hex(&big)),
        "ep-big",
        HUGE,
    );
    expect(&r, 413, "too-large");
    assert!(took < PROMPT);
    // Under the limit is fine.
    let small = sample_archive("ep-small", 1);
    expect(&rx.put(&token, "ep-small", COMMIT_A, &small), 201, "stored");
}

#[test]
fn a_cut_upload_stores_nothing_and_leaves_no_temp_file() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let body = super::archive_of_size("ep-cut", 1, 300_000);
    let held = super::hold_upload(&rx, &token, "ep-cut", &body, body.len() / 2);
    drop(held);
    ferry_tests::wait_for("the cut upload to be cleaned up", || {
        (ferry_tests::metric(&rx, "ferry_uploads_in_flight") == Some(0.0)
            && temp_files(&rx).is_empty())
        .then_some(())
    });
    assert!(stored(&rx).is_empty());
    assert!(object_files(&rx).is_empty());
    expect(&rx.put(&token, "ep-cut", COMMIT_A, &body), 201, "stored");
}

#[test]
fn an_object_lost_from_disk_is_repaired_by_the_next_upload() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    let body = sample_archive("ep-lost", 1);
    expect(&rx.put(&token, "ep-lost", COMMIT_A, &body), 201, "stored");
    let objects = object_files(&rx);
    std::fs::remove_file(&objects[0]).unwrap();
    assert!(!rx.cli(["episodes", "verify"]).status.success());
    expect(
        &rx.put(&token, "ep-lost", COMMIT_A, &body),
        200,
        "already-present",
    );
    assert_eq!(std::fs::read(&objects[0]).unwrap(), body);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}
