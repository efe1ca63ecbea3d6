//! Resumable uploads on the scale-out stack (SPEC §7, §8): the upload's
//! state in the shared index, its bytes in S3 multipart parts and an
//! incomplete-part object, so that a PATCH may land on any replica, and
//! one whose replica died goes on at another. Each test ends by reading the
//! bucket itself: the stored object hashes to its key, and nothing of an
//! upload is left (no open multipart upload, no incomplete part).

use std::time::{Duration, Instant};

use ferry_tests::scaleout::{Options, Stack, PREFIX};
use ferry_tests::tus::{created, delete, head, patch, patch_broken};
use ferry_tests::{metric, sha256_hex, wait_for, COMMIT_A};

use super::assert_rows_have_their_objects;
use crate::receiver::{archive_of_size, expect, expect_400};

/// Bytes received by tus PATCHes, summed over the replicas.
fn tus_bytes(stack: &Stack) -> f64 {
    stack
        .replicas
        .iter()
        .filter_map(|r| metric(r, "ferry_bytes_received_total{route=\"tus\"}"))
        .sum()
}

/// Nothing of any upload is left in the bucket.
#[track_caller]
fn assert_no_upload_left(stack: &Stack) {
    let prefix = format!("{PREFIX}/");
    wait_for("no open multipart upload and no incomplete part", || {
        let open = stack.s3.open_multipart_uploads(&prefix);
        let tails = stack.s3.list(&format!("{PREFIX}/uploads/"));
        (open.is_empty() && tails.is_empty()).then_some(())
    });
}

#[test]
fn tus_upload_begun_on_one_replica_completes_through_another() {
    let test = "tus_upload_begun_on_one_replica_completes_through_another";
    let Some(mut stack) = Stack::start(test, Options::replicas(2)) else {
        return;
    };
    let token = stack.ready_device("roamer");
    let (r0, r1) = (stack.replicas.get(0).addr, stack.replicas.get(1).addr);
    // Three 8 MiB parts and a short last one.
    let body = archive_of_size("ep-roam", 9, 27 << 20);
    let sha = sha256_hex(&body);
    let path = created(r0, &token, "ep-roam", &sha, body.len());

    // 3 MiB at replica 0: less than a part, so it waits in the upload's
    // incomplete-part object.
    let r = patch(r0, &token, &path, 0, &body[..3 << 20]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(r.header("upload-offset"), Some("3145728"));
    // Replica 1 knows the offset, and goes on: a part is shipped.
    assert_eq!(head(r1, &token, &path), (200, Some(3 << 20)));
    let r = patch(r1, &token, &path, 3 << 20, &body[3 << 20..10 << 20]);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(head(r0, &token, &path), (200, Some(10 << 20)));

    // A PATCH at replica 0 breaks off after 4 MiB: they are kept, and
    // replica 1 sees them.
    patch_broken(
        r0,
        &token,
        &path,
        10 << 20,
        body.len() - (10 << 20),
        &body[10 << 20..14 << 20],
        Duration::from_millis(500),
    );
    let kept = wait_for("the broken PATCH's bytes kept", || {
        match head(r1, &token, &path) {
            (200, Some(o)) if o > 10 << 20 => Some(o),
            _ => None,
        }
    });
    assert!(kept <= 14 << 20, "{kept}");

    // Replica 0 dies with a PATCH in the middle of a part, holding the
    // upload's lease.
    let k = kept as usize;
    let mut held = std::net::TcpStream::connect(r0).unwrap();
    {
        use std::io::Write;
        let h = ferry_tests::tus::patch_head(r0, &token, &path, kept, body.len() - k);
        held.write_all(h.as_bytes()).unwrap();
        held.write_all(&body[k..k + (1 << 20)]).unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    stack.replicas.kill9(0);
    drop(held);
    let before = tus_bytes(&stack);

    // Replica 1 finishes it once the dead PATCH's lease runs out (asking
    // HEAD again after each 503, as a client does).
    let started = Instant::now();
    let answer = loop {
        let (status, offset) = head(r1, &token, &path);
        assert_eq!(status, 200);
        let offset = offset.unwrap();
        assert!(offset >= kept, "{offset} < {kept}: acknowledged bytes lost");
        let r = patch(r1, &token, &path, offset, &body[offset as usize..]);
        if r.status != 503 {
            break r;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the dead replica's lease never ran out: {}",
            r.text()
        );
    };
    expect(&answer, 201, "stored");
    assert_eq!(answer.header("x-ferry-status"), Some("stored"));
    assert_eq!(answer.json()["sha256"], sha.as_str());
    // The last PATCH sent only what the upload lacked, not the episode.
    let resent = tus_bytes(&stack) - before;
    assert!(
        resent <= (body.len() - k) as f64,
        "{resent} bytes sent again after the kill; the upload lacked {}",
        body.len() - k
    );
    let rows = assert_rows_have_their_objects(&stack);
    assert_eq!(
        rows.get(&("roamer".into(), "ep-roam".into())),
        Some(&sha),
        "{rows:?}"
    );
    assert_eq!(head(r1, &token, &path).0, 404);
    assert_no_upload_left(&stack);
    stack.replicas.restart(0);
}

#[test]
fn tus_on_s3_a_lie_a_termination_and_another_device_leave_nothing() {
    let test = "tus_on_s3_a_lie_a_termination_and_another_device_leave_nothing";
    let Some(stack) = Stack::start(test, Options::replicas(2)) else {
        return;
    };
    let token = stack.ready_device("liar");
    let other = stack.add_device("other");
    let (r0, r1) = (stack.replicas.get(0).addr, stack.replicas.get(1).addr);

    // A lying digest, across replicas and parts: refused at completion,
    // nothing stored, nothing left.
    let body = archive_of_size("ep-lie", 10, 12 << 20);
    let lie = sha256_hex(b"other bytes");
    let path = created(r0, &token, "ep-lie", &lie, body.len());
    assert_eq!(patch(r0, &token, &path, 0, &body[..9 << 20]).status, 204);
    // Another device sees nothing of it, and cannot touch it.
    assert_eq!(head(r1, &other, &path), (404, None));
    expect(
        &patch(r1, &other, &path, 9 << 20, &body[9 << 20..]),
        404,
        "not-found",
    );
    expect(&delete(r0, &other, &path), 404, "not-found");
    let r = patch(r1, &token, &path, 9 << 20, &body[9 << 20..]);
    expect_400(&r, "digest-mismatch");
    assert_eq!(head(r0, &token, &path).0, 404);
    assert!(stack.rows().is_empty());
    assert!(
        super::object_key(&stack, &sha256_hex(&body)).is_none(),
        "an object of the lie's bytes"
    );

    // Termination at the other replica than the bytes went to.
    let body = archive_of_size("ep-end", 11, 2 << 20);
    let sha = sha256_hex(&body);
    let path = created(r0, &token, "ep-end", &sha, body.len());
    assert_eq!(patch(r0, &token, &path, 0, &body[..1 << 20]).status, 204);
    let r = delete(r1, &token, &path);
    assert_eq!(r.status, 204, "{}", r.text());
    assert_eq!(head(r0, &token, &path).0, 404);
    assert_no_upload_left(&stack);
}

#[test]
fn tus_on_s3_expiry_reclaims_the_parts_and_the_incomplete_part() {
    let test = "tus_on_s3_expiry_reclaims_the_parts_and_the_incomplete_part";
    let opts = Options::replicas(2).env("FERRY_RECEIVER_UPLOAD_EXPIRY", "2s");
    let Some(stack) = Stack::start(test, opts) else {
        return;
    };
    let token = stack.ready_device("idler");
    let r0 = stack.replicas.get(0).addr;
    let body = archive_of_size("ep-idle", 12, 12 << 20);
    let path = created(r0, &token, "ep-idle", &sha256_hex(&body), body.len());
    // A part and an incomplete part.
    assert_eq!(patch(r0, &token, &path, 0, &body[..10 << 20]).status, 204);
    assert!(!stack
        .s3
        .open_multipart_uploads(&format!("{PREFIX}/"))
        .is_empty());
    assert_no_upload_left(&stack);
    let reclaimed: f64 = stack
        .replicas
        .iter()
        .filter_map(|r| metric(r, "ferry_uploads_expired_total"))
        .sum();
    assert_eq!(reclaimed, 1.0);
    assert_eq!(head(r0, &token, &path).0, 404);
}

#[test]
fn tus_standard_client_tuspy_through_the_balancer_on_s3() {
    const NAME: &str = "tus_standard_client_tuspy_through_the_balancer_on_s3";
    let probe = std::process::Command::new("python3")
        .args(["-c", "import tusclient"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        ferry_tests::skip(
            NAME,
            "python3 with tuspy is not installed (pip install tuspy)",
        );
        return;
    }
    let Some(stack) = Stack::start(NAME, Options::replicas(2)) else {
        return;
    };
    let token = stack.ready_device("dev-py");
    let dir = tempfile::tempdir().unwrap();
    let body = archive_of_size("ep-py", 13, 6 << 20);
    let sha = sha256_hex(&body);
    let file = dir.path().join("ep-py.tar.zst");
    std::fs::write(&file, &body).unwrap();
    let out = std::process::Command::new("python3")
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/tus_upload.py"))
        .arg(format!("{}/v1/uploads", stack.url()))
        .arg(&token)
        .arg(&file)
        .args(["ep-py", COMMIT_A, &sha])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "tuspy: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .filter_map(|l| l.strip_prefix("resume offset "))
            .any(|o| o.trim().parse::<u64>().is_ok_and(|o| o > 0)),
        "the client resumed from where it was: {stdout}"
    );
    let rows = assert_rows_have_their_objects(&stack);
    assert_eq!(rows.get(&("dev-py".into(), "ep-py".into())), Some(&sha));
    assert_no_upload_left(&stack);
}

/// The agent ships a large episode with tus through nginx; the replica
/// that receives it is killed (-9) mid-upload; the agent goes on at the
/// other replica from what the dead one had made durable (its last whole
/// part), not from byte 0.
#[test]
fn agent_resumes_at_another_replica_after_the_one_it_used_is_killed() {
    let test = "agent_resumes_at_another_replica_after_the_one_it_used_is_killed";
    let Some(mut stack) = Stack::start(test, Options::replicas(2)) else {
        return;
    };
    let token = stack.ready_device("dev-big");
    let spool = ferry_tests::Spool::with_token(stack.url(), &token);
    ferry_tests::make_episode(
        spool.path(),
        "ep-big",
        Some(COMMIT_A),
        &[("data.bin", &ferry_tests::noise(17, 40 << 20))],
    );
    let log = spool.path().join("agent.log");
    let mut agent = spool.resumable_agent(&log);
    // Past three of the 8 MiB parts at whichever replica has the PATCH:
    // two are in the bucket and saved (the third may still be on its way).
    let busy = wait_for("24 MiB of the episode at one replica", || {
        (0..2).find(|&i| {
            metric(
                stack.replicas.get(i),
                "ferry_bytes_received_total{route=\"tus\"}",
            )
            .is_some_and(|b| b > (24 << 20) as f64)
        })
    });
    stack.replicas.kill9(busy);
    let other = stack.replicas.get(1 - busy);
    let before = metric(other, "ferry_bytes_received_total{route=\"tus\"}").unwrap_or(0.0);
    wait_for("the episode shipped", || {
        (spool.ids_in("shipped") == ["ep-big"]).then_some(())
    });
    let _ = agent.kill();
    let _ = agent.wait();
    let log = std::fs::read_to_string(&log).unwrap();
    let other = stack.replicas.get(1 - busy);
    let again = metric(other, "ferry_bytes_received_total{route=\"tus\"}").unwrap() - before;
    let rows = stack.rows();
    let sha = rows
        .get(&("dev-big".into(), "ep-big".into()))
        .expect("stored")
        .clone();
    let size = stack
        .objects()
        .into_iter()
        .find(|o| ferry_tests::s3::key_sha(&o.key) == sha)
        .expect("its object")
        .size;
    eprintln!("after the kill -9 of replica {busy}: {again} of {size} bytes sent again");
    assert!(
        again <= (size - (16 << 20)) as f64,
        "{again} of {size} bytes sent again\n{log}"
    );
    assert!(log.contains("resuming the upload"), "{log}");
    stack.replicas.restart(busy);
    assert_rows_have_their_objects(&stack);
    assert_no_upload_left(&stack);
}

/// Replicas whose `s3_part_size` differ (a rolling change of it): an
/// incomplete part saved by the one with larger parts is already a whole
/// part at the other, which ships it as one and goes on.
#[test]
fn tus_on_s3_goes_on_across_replicas_with_different_part_sizes() {
    let test = "tus_on_s3_goes_on_across_replicas_with_different_part_sizes";
    let opts = Options::replicas(2).replica_env(1, "FERRY_RECEIVER_S3_PART_SIZE", "5MiB");
    let Some(stack) = Stack::start(test, opts) else {
        return;
    };
    let token = stack.ready_device("mixed");
    let (r0, r1) = (stack.replicas.get(0).addr, stack.replicas.get(1).addr);
    let body = archive_of_size("ep-mixed", 14, 20 << 20);
    let sha = sha256_hex(&body);
    let path = created(r0, &token, "ep-mixed", &sha, body.len());
    // 7 MiB at the replica of 8 MiB parts: an incomplete part.
    assert_eq!(patch(r0, &token, &path, 0, &body[..7 << 20]).status, 204);
    // The rest at the replica of 5 MiB parts.
    let r = patch(r1, &token, &path, 7 << 20, &body[7 << 20..]);
    expect(&r, 201, "stored");
    let rows = assert_rows_have_their_objects(&stack);
    assert_eq!(rows.get(&("mixed".into(), "ep-mixed".into())), Some(&sha));
    assert_no_upload_left(&stack);
}

/// The caps on open uploads, counted in the shared index: a device's
/// newest upload ends its oldest idle one at any replica (its multipart
/// upload aborted), and past the global cap creation is refused (503).
#[test]
fn tus_on_s3_open_uploads_are_capped_across_replicas() {
    let test = "tus_on_s3_open_uploads_are_capped_across_replicas";
    let opts = Options::replicas(2)
        .env("FERRY_RECEIVER_MAX_OPEN_UPLOADS_PER_DEVICE", "2")
        .env("FERRY_RECEIVER_MAX_OPEN_UPLOADS", "3");
    let Some(stack) = Stack::start(test, opts) else {
        return;
    };
    let a = stack.ready_device("cap-a");
    let b = stack.add_device("cap-b");
    let (r0, r1) = (stack.replicas.get(0).addr, stack.replicas.get(1).addr);
    let body = archive_of_size("ep-cap", 15, 1 << 20);
    let sha = sha256_hex(&body);
    let first = created(r0, &a, "ep-cap-1", &sha, body.len());
    let second = created(r1, &a, "ep-cap-2", &sha, body.len());
    assert_eq!(patch(r1, &a, &second, 0, &body[..1000]).status, 204);
    let _third = created(r0, &a, "ep-cap-3", &sha, body.len());
    assert_eq!(head(r1, &a, &first).0, 404);
    assert_eq!(head(r0, &a, &second), (200, Some(1000)));
    let open = stack.s3.open_multipart_uploads(&format!("{PREFIX}/"));
    assert_eq!(
        open.len(),
        2,
        "the ended upload's multipart upload is aborted: {open:?}"
    );
    created(r1, &b, "ep-cap-b1", &sha, body.len());
    let r = ferry_tests::tus::create(r0, &b, "ep-cap-b2", &sha, body.len());
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["status"], "overloaded");
}
