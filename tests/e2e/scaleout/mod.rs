//! The scale-out mode (SPEC §7, issue 14) end to end: 2–3 `ferry-receiver`
//! replicas on PostgreSQL and an S3 bucket (moto), behind nginx, every
//! part a real process ([`ferry_tests::scaleout::Stack`]). Each test ends
//! by reading the bucket itself (plain S3 HTTP to moto, not the receiver's
//! client): every row has its object and every object hashes to its key.
//!
//! - `harness`: the parts themselves work (moto, the outage proxy, nginx,
//!   a private PostgreSQL cluster, replicas started together).
//! - `race`: one device racing one id across replicas, many rounds.
//! - `mismatch`: a wrong digest leaves nothing under a final key and no
//!   open multipart upload.
//! - `crash`: agents ship through nginx while replicas are killed (-9) or
//!   restarted one by one (SIGTERM); nothing lost or duplicated.
//! - `outage`: the bucket or the database unreachable → 503 + Retry-After,
//!   `/readyz` names it, recovery without a restart.
//! - `collect`: the collector never deletes an object whose row commits
//!   later.
//! - `tus`: resumable uploads go on at any replica, and leave nothing in
//!   the bucket once completed, refused, ended or expired.

mod attack;
mod collect;
mod crash;
mod fleet;
mod harness;
mod mismatch;
mod outage;
mod race;
mod tus;

use std::collections::{BTreeMap, BTreeSet};

use ferry_tests::s3::key_sha;
use ferry_tests::scaleout::Stack;
use ferry_tests::{assert_ok, sha256_hex, Response};

/// The collector on a short leash: every unreferenced object is old
/// enough at once, and a round runs five times a second. Only the write
/// gate keeps an object whose row is not yet committed.
pub(crate) const EAGER_COLLECTOR: [(&str, &str); 2] = [
    ("FERRY_RECEIVER_COLLECT_GRACE", "0s"),
    ("FERRY_RECEIVER_COLLECT_INTERVAL", "200ms"),
];

/// The index and the bucket agree: every row's object is in the bucket,
/// every object there hashes to its key (bytes fetched from moto), and
/// `ferry-receiver episodes verify` re-hashes them clean. Returns the rows.
pub(crate) fn assert_rows_have_their_objects(stack: &Stack) -> BTreeMap<(String, String), String> {
    let rows = stack.rows();
    let referenced: BTreeSet<&str> = rows.values().map(String::as_str).collect();
    let objects = stack.objects();
    for o in &objects {
        // The collector may take an unreferenced object (a race's loser)
        // between the listing and the read; a referenced one must be there.
        let Some(bytes) = stack.s3.get(&o.key) else {
            assert!(
                !referenced.contains(key_sha(&o.key)),
                "{} is referenced and listed but cannot be read",
                o.key
            );
            continue;
        };
        assert_eq!(bytes.len() as u64, o.size, "{}: size", o.key);
        assert_eq!(
            sha256_hex(&bytes),
            key_sha(&o.key),
            "{}: its bytes do not hash to its key",
            o.key
        );
    }
    let in_bucket: BTreeSet<&str> = objects.iter().map(|o| key_sha(&o.key)).collect();
    for ((device, id), sha) in &rows {
        assert!(
            in_bucket.contains(sha.as_str()),
            "row {device}/{id} points at {sha}, which is not in the bucket ({} objects)",
            objects.len()
        );
    }
    assert_ok(
        &stack.replicas.cli(["episodes", "verify"]),
        "episodes verify against the bucket",
    );
    rows
}

/// The key of the object named by `sha`, if the bucket has one.
pub(crate) fn object_key(stack: &Stack, sha: &str) -> Option<String> {
    stack
        .objects()
        .into_iter()
        .find(|o| key_sha(&o.key) == sha)
        .map(|o| o.key)
}

/// A transient refusal as SPEC §2 and §7 define it: 503, `Retry-After` in
/// whole seconds, JSON `{"status": "overloaded"}` (never a 500).
#[track_caller]
pub(crate) fn expect_overloaded(r: &Response, what: &str) {
    assert_eq!(
        r.status,
        503,
        "{what}: expected 503 overloaded, got {}: {}",
        r.status,
        r.text()
    );
    let after = r
        .header("retry-after")
        .unwrap_or_else(|| panic!("{what}: 503 without Retry-After: {:?}", r.headers));
    let secs: u64 = after
        .parse()
        .unwrap_or_else(|_| panic!("{what}: Retry-After {after:?} is not whole seconds"));
    assert!(secs > 0, "{what}: Retry-After 0");
    assert_eq!(r.json()["status"], "overloaded", "{what}: {}", r.text());
}

/// The statuses nginx logged, counted (for the tests' summary lines).
pub(crate) fn status_counts(stack: &Stack) -> BTreeMap<u16, usize> {
    let mut counts = BTreeMap::new();
    for (_, _, status) in stack.lb.upstreams_used() {
        *counts.entry(status).or_insert(0) += 1;
    }
    counts
}
