//! Concurrent PUTs of one id: the unique key of the index decides. Run many
//! rounds; every round has exactly one 201, the same bytes get 200, other
//! bytes 409, one row, and the stored object is the winner's.

use std::sync::{Arc, Barrier};

use ferry_tests::{sample_archive, sha256_hex, Receiver, COMMIT_A};

use super::{object_files, stored, temp_files};

const ROUNDS: usize = 50;
const THREADS: usize = 8;

#[test]
fn concurrent_puts_of_one_id_store_it_exactly_once() {
    let _load = ferry_tests::heavy();
    let rx = Arc::new(Receiver::start());
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
    // Losers with other bytes left no object behind: one object per id.
    assert_eq!(object_files(&rx).len(), ROUNDS);
    ferry_tests::wait_for("no temp files", || temp_files(&rx).is_empty().then_some(()));
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}
