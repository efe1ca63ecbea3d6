//! `ferry-receiver commits rejected [--json]` and
//! `GET /v1/admin/commits/rejected`: two devices shipping a commit that is
//! not allowed are listed with the exact command that allows it, and the
//! commit drops off once that command ran.

use std::time::Duration;

use ferry_tests::{make_episode, sample_archive, Receiver, Spool, COMMIT_B};

use crate::receiver::expect;
use serde_json::Value;

/// The CLI's list (a process of its own: it sees what `serve` flushed).
fn cli_list(rx: &Receiver) -> Vec<Value> {
    let out = rx.cli_ok(["commits", "rejected", "--json"]);
    serde_json::from_str::<Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

fn api_list(rx: &Receiver) -> Vec<Value> {
    let auth = format!("Bearer {}", rx.admin_token);
    let r = rx.request(
        "GET",
        "/v1/admin/commits/rejected",
        &[("Authorization", &auth)],
        b"",
    );
    assert_eq!(r.status, 200, "{}", r.text());
    r.json().as_array().unwrap().clone()
}

fn devices_of(c: &Value) -> Vec<(String, u64)> {
    c["devices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["device"].as_str().unwrap().to_owned(),
                d["attempts"].as_u64().unwrap(),
            )
        })
        .collect()
}

#[test]
fn two_devices_on_a_rejected_commit_are_listed_until_it_is_allowed() {
    listed_until_allowed(&Receiver::start());
}

/// The same on a PostgreSQL index (the upsert, the per-device trim and the
/// listing are SQL both databases run).
#[test]
fn two_devices_on_a_rejected_commit_are_listed_until_it_is_allowed_on_postgres() {
    use crate::receiver::postgres::{receiver, TestDb};
    let test = "two_devices_on_a_rejected_commit_are_listed_until_it_is_allowed_on_postgres";
    let Some(db) = TestDb::create(test) else {
        return;
    };
    let data = tempfile::tempdir().unwrap();
    listed_until_allowed(&receiver(&db, data.path()));
}

fn listed_until_allowed(rx: &Receiver) {
    let a = rx.ready_device("lab-a");
    let b = rx.add_device("lab-b");
    let body = sample_archive("r-1", 1);
    for _ in 0..3 {
        expect(&rx.put(&a, "r-1", COMMIT_B, &body), 412, "commit-rejected");
    }
    expect(&rx.put(&b, "r-1", COMMIT_B, &body), 412, "commit-rejected");

    // The API answers at once (it adds what is not flushed yet).
    let api = api_list(rx);
    assert_eq!(api.len(), 1, "{api:?}");
    let mut devices = devices_of(&api[0]);
    devices.sort();
    assert_eq!(devices, [("lab-a".to_owned(), 3), ("lab-b".to_owned(), 1)]);

    // The CLI sees it once the receiver flushed (every 5 s).
    let listed = ferry_tests::wait_for("the CLI to list the rejected commit", || {
        let l = cli_list(rx);
        (l.len() == 1 && l[0]["attempts"] == 4).then_some(l)
    });
    let c = &listed[0];
    assert_eq!(c["commit"], COMMIT_B);
    let mut devices = devices_of(c);
    devices.sort();
    assert_eq!(devices, [("lab-a".to_owned(), 3), ("lab-b".to_owned(), 1)]);
    let command = c["allow_command"].as_str().unwrap().to_owned();
    assert_eq!(command, format!("ferry-receiver commits allow {COMMIT_B}"));
    assert!(c["first_seen"].as_str().unwrap() <= c["last_seen"].as_str().unwrap());
    let text = rx.cli_ok(["commits", "rejected"]);
    assert!(text.contains(&command) && text.contains("lab-b"), "{text}");

    // The operator runs exactly the command it printed.
    let args: Vec<&str> = command.split_whitespace().collect();
    assert_eq!(args[0], "ferry-receiver");
    rx.cli_ok(&args[1..]);
    assert!(cli_list(rx).is_empty());
    assert!(api_list(rx).is_empty());
    expect(&rx.put(&b, "r-1", COMMIT_B, &body), 201, "stored");
}

/// The same seen from real agents: two devices whose producers record a
/// commit the receiver does not allow drain their spools (the episodes are
/// quarantined as `commit-rejected`), and the operator finds both devices
/// under that commit.
#[test]
fn agents_shipping_a_rejected_commit_show_up_under_it() {
    let rx = Receiver::start();
    rx.allow(ferry_tests::COMMIT_A, true);
    let spools: Vec<Spool> = ["cell-1", "cell-2"]
        .iter()
        .map(|name| Spool::new(&rx, name))
        .collect();
    for (n, spool) in spools.iter().enumerate() {
        let data = ferry_tests::noise(n as u64, 4096);
        make_episode(
            spool.path(),
            "run-0001",
            Some(COMMIT_B),
            &[("data.bin", &data)],
        );
        let _ = spool.drain("30s");
        assert_eq!(spool.ids_in("quarantine"), ["run-0001"]);
    }
    let listed = ferry_tests::wait_for("both agents' devices under the commit", || {
        let l = cli_list(&rx);
        (l.len() == 1 && l[0]["devices"].as_array().unwrap().len() == 2).then_some(l)
    });
    let mut names: Vec<String> = devices_of(&listed[0]).into_iter().map(|d| d.0).collect();
    names.sort();
    assert_eq!(names, ["cell-1", "cell-2"]);
    assert_eq!(listed[0]["commit"], COMMIT_B);
    let command = listed[0]["allow_command"].as_str().unwrap();
    let args: Vec<&str> = command.split_whitespace().skip(1).collect();
    rx.cli_ok(&args);
    assert!(cli_list(&rx).is_empty());
}

/// The tallies between two flushes are written at shutdown: a 412
/// answered just before SIGTERM is listed after the receiver stopped.
#[test]
fn rejections_are_flushed_at_shutdown() {
    let mut rx = Receiver::start();
    let a = rx.ready_device("lab-a");
    // Past the first (immediate) flush of the interval.
    std::thread::sleep(Duration::from_millis(300));
    let body = sample_archive("s-1", 2);
    expect(&rx.put(&a, "s-1", COMMIT_B, &body), 412, "commit-rejected");
    let status = rx.sigterm(Duration::from_secs(20));
    assert!(status.success(), "{status}");
    let listed = cli_list(&rx);
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(devices_of(&listed[0]), [("lab-a".to_owned(), 1)]);
}
