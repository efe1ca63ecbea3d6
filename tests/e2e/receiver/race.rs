//! Concurrent PUTs of one id: the unique key of the index, (device, id),
//! decides. Run many rounds; within one device every round has exactly one
//! 201, the same bytes get 200, other bytes 409, one row, and the stored
//! object is the winner's. Two devices racing for one id get one 201 each.

use std::sync::{Arc, Barrier};

use ferry_tests::{sample_archive, sha256_hex, stored, temp_files, Receiver, COMMIT_A};

use super::object_files;

const ROUNDS: usize = 50;
const THREADS: usize = 8;

/// A receiver on which every racing thread gets an upload slot: one device
/// holds at most `max_uploads_per_device` of them (4 by default).
fn racing_receiver(dir: &std::path::Path) -> Receiver {
    Receiver::start_in(dir, &[("FERRY_RECEIVER_MAX_UPLOADS_PER_DEVICE", "8")])
}

#[test]
fn concurrent_puts_of_one_id_store_it_exactly_once() {
    let _load = ferry_tests::heavy();
    let dir = tempfile::tempdir().unwrap();
    let rx = Arc::new(racing_receiver(dir.path()));
    let token = Arc::new(rx.ready_device("racer"));
    for round in 0..ROUNDS {
        let id = format!("race-{round}");
        // Half the threads send version A, half version B.
        let a = Arc::new(sample_archive(&id, 2 * round as u64));
        let b = Arc::new(sample_archive(&id, 2 * round as u64 + 1));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (rx, token, barrier, id) =
                    (rx.clone(), token.clone(), barrier.clone(), id.clone());
                let body = if t % 2 == 0 { a.clone() } else { b.clone() };
                std::thread::spawn(move || {
                    barrier.wait();
                    let r = rx.put(&token, &id, COMMIT_A, &body);
                    (sha256_hex(&body), r.status, r.json())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let winners: Vec<_> = results.iter().filter(|(_, s, _)| *s == 201).collect();
        assert_eq!(winners.len(), 1, "round {round}: {results:?}");
        let winner_sha = winners[0].0.clone();
        for (sha, status, j) in &results {
            match *status {
                201 => {}
                200 => {
                    assert_eq!(sha, &winner_sha, "round {round}: 200 for other bytes: {j}");
                    assert_eq!(j["status"], "already-present");
                }
                409 => {
                    assert_ne!(
                        sha, &winner_sha,
                        "round {round}: 409 for the same bytes: {j}"
                    );
                    assert_eq!(j["existing_sha256"], winner_sha.as_str());
                }
                s => panic!("round {round}: unexpected {s}: {j}"),
            }
        }
        let winner_body = if sha256_hex(&a) == winner_sha { &a } else { &b };
        let path = ferry_tests::object_path(&rx.data_dir, &winner_sha);
        assert_eq!(
            &std::fs::read(&path).unwrap(),
            winner_body.as_ref(),
            "round {round}"
        );
    }
    let index = stored(&rx);
    assert_eq!(index.len(), ROUNDS, "one row per id");
    // Losers with other bytes leave no object behind once collected: one
    // object per id.
    ferry_tests::wait_for("the losers' objects are collected", || {
        (object_files(&rx).len() == ROUNDS).then_some(())
    });
    ferry_tests::wait_for("no temp files", || temp_files(&rx).is_empty().then_some(()));
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}

/// The key is (device, id): the same id raced by two devices, each with two
/// versions, stores one episode per device (two 201s per round); within a
/// device the race is decided as above.
#[test]
fn concurrent_puts_of_one_id_from_two_devices_store_one_each() {
    let dir = tempfile::tempdir().unwrap();
    let rx = Arc::new(racing_receiver(dir.path()));
    race_across_two_devices(&rx, 20);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}

/// `rounds` rounds of one id raced by two devices with two versions each,
/// on `rx` (any index); asserts one 201 per device and round.
pub(super) fn race_across_two_devices(rx: &Arc<Receiver>, rounds: usize) {
    let tokens = Arc::new([rx.ready_device("racer-a"), rx.add_device("racer-b")]);
    for round in 0..rounds {
        let id = format!("race-{round}");
        // bodies[device][version]
        let seed = |d: usize, v: usize| (4 * round + 2 * d + v) as u64;
        let bodies = Arc::new([0, 1].map(|d| [0, 1].map(|v| sample_archive(&id, seed(d, v)))));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (rx, tokens, bodies, barrier, id) = (
                    rx.clone(),
                    tokens.clone(),
                    bodies.clone(),
                    barrier.clone(),
                    id.clone(),
                );
                std::thread::spawn(move || {
                    let (d, v) = (t % 2, (t / 2) % 2);
                    barrier.wait();
                    let r = rx.put(&tokens[d], &id, COMMIT_A, &bodies[d][v]);
                    (d, v, r.status)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        for d in 0..2 {
            let mine: Vec<_> = results.iter().filter(|r| r.0 == d).collect();
            let winners: Vec<_> = mine.iter().filter(|r| r.2 == 201).collect();
            assert_eq!(winners.len(), 1, "round {round}, device {d}: {results:?}");
            let won = winners[0].1;
            for (_, v, status) in &mine {
                let expected = if *v == won { [200, 201] } else { [409, 409] };
                assert!(expected.contains(status), "round {round}: {results:?}");
            }
        }
    }
    let rows = ferry_tests::stored_by_device(rx);
    assert_eq!(rows.len(), 2 * rounds, "one row per device and id");
    ferry_tests::wait_for("the losers' objects are collected", || {
        (object_files(rx).len() == 2 * rounds).then_some(())
    });
}
