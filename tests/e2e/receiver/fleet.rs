//! A fleet whose devices all count from `ep-000` (issue 12): 100 devices,
//! each a real `ferry-agent drain` on its own spool of the same episode
//! ids, draining 8 at a time into one receiver, on the embedded default
//! and on PostgreSQL. Every episode is stored exactly once under its own
//! device with its own digest, and there is no conflict anywhere.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use ferry_tests::{make_episode, metric, pack_sha, stored_by_device, Receiver, Spool, COMMIT_A};

const DEVICES: usize = 100;
const EPISODES: usize = 3;
/// Agents draining at once.
const PARALLEL: usize = 8;

fn ids() -> Vec<String> {
    (0..EPISODES).map(|e| format!("ep-{e:03}")).collect()
}

/// Registers the devices through the admin API (one request each, where
/// `devices add` would start 100 processes) and fills their spools: the
/// same ids everywhere, bytes of their own (the device's name is in them).
fn spools(rx: &Receiver) -> Vec<(String, Spool)> {
    rx.allow(COMMIT_A, true);
    let admin = format!("Bearer {}", rx.admin_token);
    let h = [
        ("Authorization", admin.as_str()),
        ("Content-Type", "application/json"),
    ];
    (0..DEVICES)
        .map(|d| {
            let name = format!("dev-{d:03}");
            let body = format!("{{\"name\":\"{name}\"}}");
            let r = rx.request("POST", "/v1/admin/devices", &h, body.as_bytes());
            assert_eq!(r.status, 201, "{}", r.text());
            let spool = Spool::with_token(&rx.url, r.json()["token"].as_str().unwrap());
            for id in ids() {
                let data = format!("{name} {id}\n");
                make_episode(
                    spool.path(),
                    &id,
                    Some(COMMIT_A),
                    &[("data.txt", data.as_bytes())],
                );
            }
            (name, spool)
        })
        .collect()
}

/// Drains every spool, `PARALLEL` at a time; each agent must exit 0 with
/// nothing in `conflict/` or `quarantine/`. Returns (device, id) → the
/// digest of that device's own pack of the episode.
fn drain_all(spools: &[(String, Spool)]) -> Vec<((String, String), String)> {
    let next = AtomicUsize::new(0);
    let packed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| {
                while let Some((name, spool)) = spools.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let out = spool.drain("60s");
                    ferry_tests::assert_ok(&out, &format!("drain of {name}"));
                    assert_eq!(spool.ids_in("shipped"), ids(), "{name}");
                    for sub in ["episodes", "conflict", "quarantine"] {
                        assert!(spool.ids_in(sub).is_empty(), "{name}: {sub}/ not empty");
                    }
                    for id in ids() {
                        // The digest its device shipped, packed again.
                        let sha = pack_sha(&spool.path().join("shipped").join(&id));
                        packed.lock().unwrap().push(((name.clone(), id), sha));
                    }
                }
            });
        }
    });
    packed.into_inner().unwrap()
}

fn fleet_of_one_namespace(rx: &Receiver) {
    let started = std::time::Instant::now();
    let spools = spools(rx);
    let packed = drain_all(&spools);
    let rows = stored_by_device(rx);
    assert_eq!(rows.len(), DEVICES * EPISODES, "one row per device and id");
    for (key, sha) in &packed {
        assert_eq!(
            rows.get(key),
            Some(sha),
            "{key:?}: stored under its own device, its own digest"
        );
    }
    let distinct: std::collections::HashSet<_> = rows.values().collect();
    assert_eq!(distinct.len(), DEVICES * EPISODES);
    let puts = |status: u16| {
        let m = format!(
            "ferry_http_requests_total{{route=\"/v1/episodes/{{id}}\",method=\"PUT\",status=\"{status}\"}}"
        );
        metric(rx, &m).unwrap_or(0.0)
    };
    assert_eq!(puts(201), (DEVICES * EPISODES) as f64);
    assert_eq!(puts(409), 0.0, "no conflict anywhere");
    let verify = rx.cli(["episodes", "verify"]);
    ferry_tests::assert_ok(&verify, "episodes verify");
    let summary = format!(
        "{} ok, 0 mismatch, 0 missing, 0 unreadable",
        DEVICES * EPISODES
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains(&summary));
    eprintln!(
        "fleet: {DEVICES} devices x {EPISODES} episodes stored in {:.1?}",
        started.elapsed()
    );
}

#[test]
fn a_fleet_whose_devices_all_count_from_ep_000_stores_every_episode() {
    fleet_of_one_namespace(&Receiver::start());
}

#[test]
fn a_fleet_whose_devices_all_count_from_ep_000_stores_every_episode_on_postgres() {
    let test = "a_fleet_whose_devices_all_count_from_ep_000_stores_every_episode_on_postgres";
    let Some(db) = super::postgres::TestDb::create(test) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    let rx = super::postgres::receiver(&db, data.path());
    fleet_of_one_namespace(&rx);
    drop(rx);
}
