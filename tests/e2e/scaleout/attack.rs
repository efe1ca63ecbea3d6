//! Attacks on tus over S3: a PATCH that outlives its lease (the body
//! paused past `LEASE_FOR`, with no renewal in the last `RENEW_EVERY`)
//! still writes the upload's incomplete-part object after another PATCH
//! (or a DELETE) took the upload on.

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use ferry_tests::scaleout::{Options, Stack, PREFIX};
use ferry_tests::tus::{created, delete, head, patch, patch_head};
use ferry_tests::{read_response, sha256_hex};

use super::assert_rows_have_their_objects;
use crate::receiver::archive_of_size;

/// A PATCH at offset 0 that announces `announced` bytes, sends `bytes`
/// after `pause`, then sends nothing more (the receiver's idle timeout ends
/// it); its answer, from a thread.
fn stalled_patch(
    addr: std::net::SocketAddr,
    token: &str,
    path: &str,
    announced: usize,
    bytes: Vec<u8>,
    pause: Duration,
) -> std::thread::JoinHandle<ferry_tests::Response> {
    let h = patch_head(addr, token, path, 0, announced);
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        s.write_all(h.as_bytes()).unwrap();
        std::thread::sleep(pause);
        s.write_all(&bytes).unwrap();
        read_response(&mut s)
    })
}

#[test]
fn attack_stale_patch_overwrites_the_incomplete_part() {
    let test = "attack_stale_patch_overwrites_the_incomplete_part";
    let Some(stack) = Stack::start(test, Options::replicas(2)) else {
        return;
    };
    let token = stack.ready_device("attacker");
    let (r0, r1) = (stack.replicas.get(0).addr, stack.replicas.get(1).addr);
    let body = archive_of_size("ep-stale", 3, 1 << 20);
    let sha = sha256_hex(&body);
    let path = created(r0, &token, "ep-stale", &sha, body.len());
    // Other bytes of the same length (still a zstd stream's magic).
    let mut lie = body[..100].to_vec();
    lie[50] ^= 0xff;

    // A: takes the lease, sends 100 bytes 9.5 s later (no renewal yet),
    // then pauses until the idle timeout (30 s): the lease ran out meanwhile.
    let a = stalled_patch(r0, &token, &path, 200, lie, Duration::from_millis(9500));
    std::thread::sleep(Duration::from_secs(10));
    // B: waits for the lease, then writes the true first 100 bytes.
    let r = patch(r1, &token, &path, 0, &body[..100]);
    assert_eq!(r.status, 204, "{}", r.text());
    // A's idle timeout: it writes its tail over B's, and is refused.
    let ra = a.join().unwrap();
    assert_eq!(ra.status, 503, "{}", ra.text());
    assert_eq!(head(r1, &token, &path), (200, Some(100)));
    let r = patch(r1, &token, &path, 100, &body[100..]);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.header("x-ferry-status"), Some("stored"));
    // The bucket holds the bytes of the key, not the stale PATCH's.
    assert_rows_have_their_objects(&stack);
}

#[test]
fn attack_stale_patch_leaves_a_tail_after_delete() {
    let test = "attack_stale_patch_leaves_a_tail_after_delete";
    let Some(stack) = Stack::start(test, Options::replicas(2)) else {
        return;
    };
    let token = stack.ready_device("leaker");
    let (r0, r1) = (stack.replicas.get(0).addr, stack.replicas.get(1).addr);
    let body = archive_of_size("ep-leak", 4, 1 << 20);
    let path = created(r0, &token, "ep-leak", &sha256_hex(&body), body.len());
    let a = stalled_patch(
        r0,
        &token,
        &path,
        200,
        body[..100].to_vec(),
        Duration::from_millis(9500),
    );
    std::thread::sleep(Duration::from_secs(10));
    let r = delete(r1, &token, &path);
    assert_eq!(r.status, 204, "{}", r.text());
    let ra = a.join().unwrap();
    eprintln!("stale PATCH answered {}: {}", ra.status, ra.text());
    std::thread::sleep(Duration::from_secs(1));
    let tails = stack.s3.list(&format!("{PREFIX}/uploads/"));
    assert!(
        tails.is_empty(),
        "an incomplete part no upload names: {:?}",
        tails.iter().map(|o| &o.key).collect::<Vec<_>>()
    );
}
