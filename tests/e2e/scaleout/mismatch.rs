//! A body whose sha256 is not the one announced is never stored (SPEC §7:
//! a multipart upload is completed only after the digest matched,
//! otherwise aborted). Shown for a small body and for a large one that is
//! provably in a multipart upload while it streams, from moto's side: no
//! request ever made a final key visible, and after collection nothing is
//! left, not even an open multipart upload or a staging marker.

use ferry_tests::s3::BUCKET;
use ferry_tests::scaleout::{Options, Stack, PREFIX};
use ferry_tests::{sha256_hex, wait_for, COMMIT_A};

use crate::receiver::{archive_of_size, expect_400, proto_headers, HeldUpload};

use super::assert_rows_have_their_objects;

/// Several parts of the 5 MiB S3 minimum, so the body cannot fit one PUT.
const LARGE: usize = 20 << 20;
/// Sent before the test looks for the multipart upload.
const HELD: usize = 12 << 20;

/// The requests in moto's log that make an object visible under a key of
/// the episode area (outside `staging/`): a PUT that is not a part upload
/// (a single PUT or a copy), or the completion of a multipart upload.
fn visible_writes(stack: &Stack) -> Vec<String> {
    let area = format!("/{BUCKET}/{PREFIX}/");
    let staging = format!("{area}staging/");
    stack
        .s3
        .successful_requests()
        .into_iter()
        .filter(|l| {
            let Some((method, target)) = l.split_once(' ') else {
                return false;
            };
            let (path, query) = target.split_once('?').unwrap_or((target, ""));
            if !path.starts_with(&area) || path.starts_with(&staging) {
                return false;
            }
            match method {
                "PUT" => !query.contains("uploadId="),
                "POST" => query.contains("uploadId="),
                _ => false,
            }
        })
        .collect()
}

#[test]
fn a_digest_mismatch_leaves_no_object_and_no_open_multipart_upload() {
    let test = "a_digest_mismatch_leaves_no_object_and_no_open_multipart_upload";
    // A grace of a few seconds: the collector must not abort the large
    // upload while it streams, and cleans up soon after.
    let opts = Options::replicas(2)
        .env("FERRY_RECEIVER_COLLECT_GRACE", "3s")
        .env("FERRY_RECEIVER_COLLECT_INTERVAL", "200ms");
    let Some(stack) = Stack::start(test, opts) else {
        return;
    };
    let token = stack.ready_device("liar");
    let prefix = format!("{PREFIX}/");

    // Small: answered 400, nothing written where an episode lives.
    let small = ferry_tests::sample_archive("small", 1);
    let claimed = sha256_hex(&ferry_tests::sample_archive("small", 2));
    let r = ferry_tests::put_episode(stack.lb.addr, &token, "small", COMMIT_A, &claimed, &small);
    expect_400(&r, "digest-mismatch");

    // Large, through nginx: while it streams, a multipart upload is open
    // (the receiver does not hold the body in memory); then 400.
    let large = archive_of_size("large", 7, LARGE);
    let claimed_large = sha256_hex(&archive_of_size("large", 8, 64));
    let held = HeldUpload::start(
        stack.lb.addr,
        &proto_headers(&token, COMMIT_A, &claimed_large),
        "large",
        &large,
        HELD,
    );
    let open = wait_for(
        "a multipart upload open while the large body streams",
        || {
            let open = stack.s3.open_multipart_uploads(&prefix);
            (!open.is_empty()).then_some(open)
        },
    );
    expect_400(&held.finish(), "digest-mismatch");
    assert_eq!(
        visible_writes(&stack),
        Vec::<String>::new(),
        "a body that did not match became visible"
    );
    assert_eq!(stack.objects(), [], "objects after two mismatches");

    // After collection: no open multipart upload, no staging marker,
    // nothing at all under the prefix.
    wait_for("the mismatched uploads to be cleaned up", || {
        (stack.s3.open_multipart_uploads(&prefix).is_empty() && stack.s3.list(&prefix).is_empty())
            .then_some(())
    });
    assert_eq!(visible_writes(&stack), Vec::<String>::new());
    eprintln!("digest mismatch: multipart upload seen in flight: {open:?}");

    // The same ids with the right bytes are stored, and that write is
    // seen in moto's log: the check above can see a visible write.
    let r = stack.put(&token, "small", &small);
    assert_eq!(r.status, 201, "{}", r.text());
    let r = stack.put(&token, "large", &large);
    assert_eq!(r.status, 201, "{}", r.text());
    let writes = visible_writes(&stack);
    for body in [&small, &large] {
        let sha = sha256_hex(body);
        assert!(
            writes.iter().any(|w| w.contains(&sha)),
            "the store of {sha} is not among the visible writes {writes:?}"
        );
    }
    let rows = assert_rows_have_their_objects(&stack);
    assert_eq!(rows.len(), 2);
}
