//! The bucket or the database unreachable is transient (SPEC §7): uploads
//! answer 503 with `Retry-After` (never 500), `/readyz` is not ready and
//! names the dependency, `/healthz` stays up, nothing half-stored becomes
//! visible, and once the dependency is back the same processes store again
//! by themselves.
//!
//! The bucket outage is a TCP proxy in front of moto that refuses
//! connections (moto keeps its data in memory and must not die); the
//! database outage is `kill -9` of a private cluster's postmaster, started
//! again on its data afterwards.

use std::time::{Duration, Instant};

use ferry_tests::scaleout::{Options, Stack};
use ferry_tests::{sample_archive, sha256_hex, wait_for, Receiver, Response, COMMIT_A};

use crate::receiver::{archive_of_size, proto_headers, HeldUpload};

use super::{assert_rows_have_their_objects, expect_overloaded, object_key};

/// How long an upload may take to be refused during an outage: an agent
/// that waits longer than its request timeout gives up on its own, and a
/// load balancer's read timeout would turn a slow 503 into a 504.
const REFUSED_WITHIN: Duration = Duration::from_secs(30);

/// What a test needs to see of `/readyz` while `down` is down: 503, the
/// body naming it and not `up`. Polled: a replica may reuse its last probe
/// for a moment.
fn wait_not_ready(rx: &Receiver, down: &str, up: &str) -> String {
    let body = wait_for(&format!("{} /readyz to name {down}", rx.url), || {
        let r = rx.request("GET", "/readyz", &[], b"");
        (r.status == 503 && r.text().contains(down)).then(|| r.text())
    });
    assert!(
        !body.contains(up),
        "{}: /readyz blames the {up} too: {body}",
        rx.url
    );
    body
}

fn wait_ready(rx: &Receiver) {
    wait_for(&format!("{} /readyz to be ready again", rx.url), || {
        (rx.request("GET", "/readyz", &[], b"").status == 200).then_some(())
    });
}

/// PUT through the balancer until it is stored, as an agent would (every
/// answer but 201 must be the transient 503), within [`REFUSED_WITHIN`].
fn store_after_recovery(stack: &Stack, token: &str, id: &str, body: &[u8]) -> Duration {
    let start = Instant::now();
    loop {
        let r = stack.put(token, id, body);
        if r.status == 201 {
            return start.elapsed();
        }
        expect_overloaded(&r, &format!("{id} while recovering"));
        assert!(
            start.elapsed() < REFUSED_WITHIN,
            "{id} not stored {REFUSED_WITHIN:?} after the outage ended"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One timed PUT during the outage: 503 overloaded, within bounds.
fn refused(stack: &Stack, token: &str, id: &str, body: &[u8]) -> Duration {
    let start = Instant::now();
    let r: Response = stack.put(token, id, body);
    let took = start.elapsed();
    expect_overloaded(&r, &format!("{id} during the outage"));
    assert!(took < REFUSED_WITHIN, "{id}: the 503 took {took:?}");
    took
}

/// Which dependency goes away, and how.
#[derive(Clone, Copy)]
enum Outage {
    /// The proxy in front of moto refuses connections.
    Bucket,
    /// kill -9 of the private cluster's postmaster.
    Database,
}

impl Outage {
    /// The word `/readyz` must name.
    fn names(self) -> &'static str {
        match self {
            Outage::Bucket => "storage",
            Outage::Database => "database",
        }
    }

    /// The word for the dependency that is still there.
    fn other(self) -> &'static str {
        match self {
            Outage::Bucket => "database",
            Outage::Database => "storage",
        }
    }

    fn begin(self, stack: &mut Stack) {
        match self {
            Outage::Bucket => stack.s3.outage().cut(),
            Outage::Database => stack.db.cluster().kill_9(),
        }
    }

    fn end(self, stack: &mut Stack) {
        match self {
            Outage::Bucket => stack.s3.outage().restore(),
            Outage::Database => stack.db.cluster().restart(),
        }
    }
}

/// The whole story of one outage, through the balancer: an episode stored
/// before; an upload mid-stream when the dependency goes (503); a new one
/// during it (503, in bounds); every replica not ready, naming it, yet
/// alive; nothing of either upload visible in the bucket; then the
/// dependency back, both stored by the same processes, all consistent.
fn outage_answers_503_and_recovers(mut stack: Stack, outage: Outage) {
    let what = outage.names();
    let token = stack.ready_device("cut-off");
    assert_eq!(
        stack
            .put(&token, "before", &sample_archive("before", 1))
            .status,
        201
    );
    let pids: Vec<u32> = stack.replicas.iter().map(|r| r.pid()).collect();

    // Large enough for a multipart upload to be under way (parts of
    // s3_part_size, 8 MiB by default) when the dependency goes.
    let mid = archive_of_size("mid", 3, 16 << 20);
    let held = HeldUpload::start(
        stack.lb.addr,
        &proto_headers(&token, COMMIT_A, &sha256_hex(&mid)),
        "mid",
        &mid,
        10 << 20,
    );
    outage.begin(&mut stack);
    expect_overloaded(
        &held.finish(),
        &format!("an upload mid-stream when the {what} went"),
    );

    let during = sample_archive("during", 2);
    let took = refused(&stack, &token, "during", &during);
    for rx in stack.replicas.iter() {
        let body = wait_not_ready(rx, what, outage.other());
        assert_eq!(rx.request("GET", "/healthz", &[], b"").status, 200);
        eprintln!("{what} outage: {} /readyz: {body}", rx.url);
    }
    // Nothing of them is visible (the test reads moto directly).
    for body in [&mid, &during] {
        assert_eq!(object_key(&stack, &sha256_hex(body)), None);
    }

    outage.end(&mut stack);
    let recovered = store_after_recovery(&stack, &token, "during", &during);
    assert_eq!(stack.put(&token, "mid", &mid).status, 201);
    for rx in stack.replicas.iter() {
        wait_ready(rx);
    }
    let now: Vec<u32> = stack.replicas.iter().map(|r| r.pid()).collect();
    assert_eq!(now, pids, "a replica was restarted");
    let rows = assert_rows_have_their_objects(&stack);
    assert_eq!(rows.len(), 3);
    eprintln!("{what} outage: 503 in {took:?}; stored again {recovered:?} after it ended");
}

#[test]
fn a_bucket_outage_answers_503_and_recovers_without_a_restart() {
    let test = "a_bucket_outage_answers_503_and_recovers_without_a_restart";
    if let Some(stack) = Stack::start(test, Options::replicas(2).s3_outage()) {
        outage_answers_503_and_recovers(stack, Outage::Bucket);
    }
}

#[test]
fn a_database_outage_answers_503_and_recovers_without_a_restart() {
    let test = "a_database_outage_answers_503_and_recovers_without_a_restart";
    if let Some(stack) = Stack::start(test, Options::replicas(2).private_db()) {
        outage_answers_503_and_recovers(stack, Outage::Database);
    }
}
