//! One device racing one id across replicas: the unique key of the shared
//! index decides, whichever replica each upload lands on. Every round has
//! exactly one 201; the same bytes get 200, other bytes 409; the object in
//! the bucket is the winner's. The collector runs eagerly throughout
//! ([`super::EAGER_COLLECTOR`]), so a loser's object that a replica placed
//! and another one deleted too early would show as a row without its
//! object. The admin download reads the winners back through nginx.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Barrier};

use ferry_tests::s3::key_sha;
use ferry_tests::scaleout::{Options, Stack};
use ferry_tests::{put_episode, sample_archive, sha256_hex, wait_for, COMMIT_A};

use super::{assert_rows_have_their_objects, object_key, EAGER_COLLECTOR};

const ROUNDS: usize = 20;
const REPLICAS: usize = 3;
/// Two per replica, one with each version of the episode.
const THREADS: usize = 6;

#[test]
fn one_device_racing_one_id_across_replicas_gets_exactly_one_201_per_round() {
    let test = "one_device_racing_one_id_across_replicas_gets_exactly_one_201_per_round";
    let mut opts = Options::replicas(REPLICAS);
    for (k, v) in EAGER_COLLECTOR {
        opts = opts.env(k, v);
    }
    let Some(stack) = Stack::start(test, opts) else {
        return;
    };
    let token = Arc::new(stack.ready_device("racer"));
    let addrs = stack.replicas.addrs();
    let mut winners = BTreeMap::new();
    let mut bodies_won = BTreeMap::new();
    for round in 0..ROUNDS {
        let id = format!("race-{round}");
        let bodies = Arc::new([
            sample_archive(&id, 2 * round as u64),
            sample_archive(&id, 2 * round as u64 + 1),
        ]);
        let barrier = Arc::new(Barrier::new(THREADS));
        // Thread t goes straight to replica t % 3 with version t % 2: every
        // replica has both versions in every round.
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (token, barrier, id, bodies) =
                    (token.clone(), barrier.clone(), id.clone(), bodies.clone());
                let addr = addrs[t % REPLICAS];
                std::thread::spawn(move || {
                    let body = &bodies[t % 2];
                    let sha = sha256_hex(body);
                    barrier.wait();
                    let r = put_episode(addr, &token, &id, COMMIT_A, &sha, body);
                    (t % REPLICAS, sha, r.status, r.text())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let won: Vec<_> = results.iter().filter(|r| r.2 == 201).collect();
        assert_eq!(won.len(), 1, "round {round}: one 201, got {results:#?}");
        let winner = won[0].1.clone();
        for (replica, sha, status, text) in &results {
            let j: serde_json::Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("round {round}: {status} not JSON ({e}): {text}"));
            match status {
                201 => assert_eq!(j["status"], "stored"),
                200 => {
                    assert_eq!(sha, &winner, "round {round}: 200 for other bytes: {text}");
                    assert_eq!(j["status"], "already-present", "{text}");
                }
                409 => {
                    assert_ne!(sha, &winner, "round {round}: 409 for the winner's bytes");
                    assert_eq!(j["existing_sha256"], winner.as_str(), "{text}");
                }
                s => panic!("round {round}: replica {replica} answered {s}: {text}"),
            }
        }
        // A 201 means the object is complete in the bucket: it is there
        // now, with the winner's bytes.
        let key = object_key(&stack, &winner)
            .unwrap_or_else(|| panic!("round {round}: 201 for {winner}, no such object"));
        let winner_body = if sha256_hex(&bodies[0]) == winner {
            &bodies[0]
        } else {
            &bodies[1]
        };
        assert_eq!(&stack.s3.get(&key).unwrap(), winner_body, "round {round}");
        bodies_won.insert(id.clone(), winner_body.clone());
        winners.insert(("racer".to_string(), id), winner);
    }
    // The admin download, through the balancer (any replica), streams
    // the winner's bytes from the bucket.
    let auth = format!("Bearer {}", stack.replicas.get(0).admin_token);
    for (id, body) in &bodies_won {
        let path = format!("/v1/admin/devices/racer/episodes/{id}/download");
        let r = ferry_tests::request(
            stack.lb.addr,
            "GET",
            &path,
            &[("Authorization", &auth)],
            b"",
        );
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(&r.body == body, "{path}: not the winner's bytes");
    }

    let rows = assert_rows_have_their_objects(&stack);
    assert_eq!(rows, winners, "one row per id, the winner's");
    // The losers' objects (other bytes) are unreferenced: collected, and
    // nothing else. What remains is exactly the winners.
    let wanted: BTreeSet<String> = winners.values().cloned().collect();
    wait_for(
        "the collector to leave exactly the winners' objects",
        || {
            let left: BTreeSet<String> = stack
                .objects()
                .iter()
                .map(|o| key_sha(&o.key).to_string())
                .collect();
            (left == wanted).then_some(())
        },
    );
    assert_rows_have_their_objects(&stack);

    // `episodes verify` reads the bucket: a damaged object fails it.
    let (_, victim) = winners.iter().next().unwrap();
    let key = object_key(&stack, victim).unwrap();
    stack.s3.put(&key, b"not the episode any more");
    let out = stack.replicas.cli(["episodes", "verify"]);
    assert!(
        !out.status.success(),
        "episodes verify passed over a damaged object {key}: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}
