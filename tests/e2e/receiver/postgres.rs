//! The same contract on a PostgreSQL index: a fresh database per test on
//! `postgres://postgres@127.0.0.1:5432` ([`TestDb`], the harness's),
//! dropped afterwards. Without a reachable server (or `psql`) the tests say
//! so loudly and pass.

use std::sync::{Arc, Barrier};

pub(crate) use ferry_tests::postgres::TestDb;
use ferry_tests::{sample_archive, sha256_hex, stored, Receiver, COMMIT_A, COMMIT_B};

use super::expect;

pub(crate) fn receiver(db: &TestDb, data: &std::path::Path) -> Receiver {
    let url = db.url();
    // Every thread of the race tests gets an upload slot (one device holds
    // at most 4 by default).
    Receiver::start_in(
        data,
        &[
            ("FERRY_RECEIVER_DATABASE_URL", url.as_str()),
            ("FERRY_RECEIVER_MAX_UPLOADS_PER_DEVICE", "8"),
        ],
    )
}

#[test]
fn postgres_index_answers_every_upload_row() {
    let Some(db) = TestDb::create("postgres_index_answers_every_upload_row") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let rx = receiver(&db, data.path());
    let token = rx.ready_device("pg-dev");
    // No SQLite file: the index is in PostgreSQL.
    assert!(!data.path().join("index.sqlite").exists());
    let body = sample_archive("pg-1", 1);
    expect(&rx.put(&token, "pg-1", COMMIT_A, &body), 201, "stored");
    expect(
        &rx.put(&token, "pg-1", COMMIT_A, &body),
        200,
        "already-present",
    );
    expect(
        &rx.put(&token, "pg-1", COMMIT_A, &sample_archive("pg-1", 2)),
        409,
        "conflict",
    );
    let j = expect(
        &rx.put(&token, "pg-2", COMMIT_B, &body),
        412,
        "commit-rejected",
    );
    assert_eq!(j["head_commit"], COMMIT_A);
    rx.allow(COMMIT_B, true);
    let list: serde_json::Value =
        serde_json::from_str(&rx.cli_ok(["commits", "list", "--json"])).unwrap();
    assert_eq!(
        list.as_array()
            .unwrap()
            .iter()
            .filter(|c| c["head"] == true)
            .count(),
        1
    );
    // A rename carries the episode along (ON UPDATE CASCADE) and keeps the
    // token.
    rx.cli_ok(["devices", "rename", "pg-dev", "pg-dev-2"]);
    expect(
        &rx.put(&token, "pg-1", COMMIT_A, &body),
        200,
        "already-present",
    );
    let rows = ferry_tests::stored_by_device(&rx);
    assert_eq!(
        rows.keys().collect::<Vec<_>>(),
        [&("pg-dev-2".to_string(), "pg-1".to_string())]
    );
    rx.cli_ok(["devices", "revoke", "pg-dev-2"]);
    expect(&rx.put(&token, "pg-3", COMMIT_A, &body), 403, "forbidden");
    assert_eq!(stored(&rx).len(), 1);
    let devices: serde_json::Value =
        serde_json::from_str(&rx.cli_ok(["devices", "list", "--json"])).unwrap();
    assert_eq!(devices[0]["episodes"], 1);
    assert_eq!(devices[0]["bytes"], body.len() as u64);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}

#[test]
fn postgres_index_decides_races_and_survives_kill9() {
    let Some(db) = TestDb::create("postgres_index_decides_races_and_survives_kill9") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let rxa = Arc::new(receiver(&db, data.path()));
    let token = Arc::new(rxa.ready_device("pg-racer"));
    for round in 0..10 {
        let id = format!("pg-race-{round}");
        let bodies = Arc::new([
            sample_archive(&id, round * 2),
            sample_archive(&id, round * 2 + 1),
        ]);
        let barrier = Arc::new(Barrier::new(6));
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let (rx, token, barrier, id, bodies) = (
                    rxa.clone(),
                    token.clone(),
                    barrier.clone(),
                    id.clone(),
                    bodies.clone(),
                );
                std::thread::spawn(move || {
                    barrier.wait();
                    let body = &bodies[t % 2];
                    (sha256_hex(body), rx.put(&token, &id, COMMIT_A, body).status)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(_, s)| *s == 201).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        for (sha, status) in &results {
            let expected = if sha == &winners[0].0 {
                [200, 201]
            } else {
                [409, 409]
            };
            assert!(expected.contains(status), "round {round}: {results:?}");
        }
    }
    let mut rx = Arc::try_unwrap(rxa).ok().expect("no other owner");
    assert_eq!(stored(&rx).len(), 10);
    // kill -9 with an upload provably in flight: half a body sent, the
    // in-flight metric up and its bytes on disk.
    let body = sample_archive("pg-cut", 99);
    let mut cut = std::net::TcpStream::connect(rx.addr).unwrap();
    let head = ferry_tests::request_head(
        rx.addr,
        "PUT",
        "/v1/episodes/pg-cut",
        &[
            ("Authorization", &format!("Bearer {token}")),
            ("X-Ferry-Commit", COMMIT_A),
            ("X-Ferry-Sha256", &sha256_hex(&body)),
        ],
        body.len(),
    );
    std::io::Write::write_all(&mut cut, head.as_bytes()).unwrap();
    std::io::Write::write_all(&mut cut, &body[..body.len() / 2]).unwrap();
    rx.wait_upload_in_flight();
    rx.restart();
    drop(cut);
    assert_eq!(stored(&rx).len(), 10);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
    drop(rx);
    drop(db);
}

#[test]
fn postgres_index_decides_races_per_device() {
    let Some(db) = TestDb::create("postgres_index_decides_races_per_device") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let rx = Arc::new(receiver(&db, data.path()));
    super::race::race_across_two_devices(&rx, 10);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
    drop(rx);
}

#[test]
fn postgres_index_refuses_a_row_under_a_renamed_device() {
    let Some(db) = TestDb::create("postgres_index_refuses_a_row_under_a_renamed_device") else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let rx = receiver(&db, data.path());
    super::devices::rename_during_an_upload(&rx);
    drop(rx);
}
