//! The collector never deletes an object whose row commits later (SPEC
//! §7: "no replica deletes an object another replica may still be
//! indexing"). The race it must not lose: replica A makes an object
//! visible, the collector (on any replica, grace 0s, a round five times a
//! second) sees no row for it and deletes it, then A inserts its row and
//! answers 201, and the acknowledged episode is gone.
//!
//! The window is held open from outside, with no hook in the receiver:
//! replica 0 reaches moto through a proxy of its own that holds moto's
//! answer to the write that makes the object visible (a PUT or a multipart
//! completion of its final key) for [`HOLD`]. The object is then complete
//! in the bucket while replica 0 waits to insert its row, as over a slow
//! network. The test sees the window itself (the object in the bucket
//! while the episode has no row) and that the collector is live before
//! and after it (planted orphans go), so without the write gate the held
//! object would be deleted and the test fail.

use std::time::{Duration, Instant};

use ferry_tests::s3::key_sha;
use ferry_tests::scaleout::{Options, Stack};
use ferry_tests::{noise, put_episode, sample_archive, sha256_hex, wait_for, COMMIT_A};

use super::{assert_rows_have_their_objects, object_key, EAGER_COLLECTOR};

/// How long moto's answer to the held write is kept from replica 0.
const HOLD: Duration = Duration::from_secs(3);

/// Whether a request line (`PUT /bucket/key?query HTTP/1.1`) makes an
/// object named `sha` visible: a PUT that is not a part upload, or the
/// completion of a multipart upload, outside `staging/`.
fn makes_visible(line: &str, sha: &str) -> bool {
    let visible_write = (line.starts_with("PUT ") && !line.contains("partNumber="))
        || (line.starts_with("POST ") && line.contains("uploadId="));
    visible_write && line.contains(sha) && !line.contains("/staging/")
}

/// A key for `sha` in the layout the receiver uses, learned from one of
/// its own keys (`template` naming `template_sha`): flat `PREFIX/<sha>` or
/// sharded `PREFIX/<aa>/<sha>`.
fn key_like(template: &str, template_sha: &str, sha: &str) -> String {
    template
        .split('/')
        .map(|seg| {
            if seg == template_sha {
                sha
            } else if seg == &template_sha[..2] {
                &sha[..2]
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// Put an unreferenced object where the receiver keeps episodes and wait
/// until a collection round deletes it: proof that the collector runs.
fn orphan_is_collected(stack: &Stack, template: &str, template_sha: &str, seed: u64) {
    let junk = noise(seed, 1000);
    let key = key_like(template, template_sha, &sha256_hex(&junk));
    stack.s3.put(&key, &junk);
    wait_for(&format!("the collector to delete the orphan {key}"), || {
        stack.s3.get(&key).is_none().then_some(())
    });
}

#[test]
fn collection_never_deletes_an_object_whose_row_commits_later() {
    let test = "collection_never_deletes_an_object_whose_row_commits_later";
    let mut opts = Options::replicas(2).s3_proxy_for(0);
    for (k, v) in EAGER_COLLECTOR {
        opts = opts.env(k, v);
    }
    let Some(stack) = Stack::start(test, opts) else {
        return;
    };
    let token = stack.ready_device("slow-commit");
    let (held_replica, other) = (stack.replicas.get(0), stack.replicas.get(1));

    // An episode stored on the other replica shows the key layout, and
    // an orphan planted beside it is collected: the collector is live.
    let first = sample_archive("first", 1);
    let r = other.put(&token, "first", COMMIT_A, &first);
    assert_eq!(r.status, 201, "{}", r.text());
    let first_sha = sha256_hex(&first);
    let template = object_key(&stack, &first_sha).expect("the first episode's object");
    orphan_is_collected(&stack, &template, &first_sha, 1);

    // The held commit: the upload goes to replica 0; its write of the
    // object completes in moto and the answer is held.
    let body = sample_archive("held", 2);
    let sha = sha256_hex(&body);
    let s = sha.clone();
    stack
        .s3_proxy(0)
        .hold_answers(move |line| makes_visible(line, &s), HOLD);
    let (addr, t) = (held_replica.addr, token.clone());
    let sent = Instant::now();
    let upload = {
        let (body, sha) = (body.clone(), sha.clone());
        std::thread::spawn(move || put_episode(addr, &t, "held", COMMIT_A, &sha, &body))
    };
    // The window, seen from outside: the object is in the bucket and the
    // episode has no row (HEAD answers 404 on the other replica).
    let auth = format!("Bearer {token}");
    let mut window = None;
    let mut beside = None;
    while !upload.is_finished() {
        let visible = object_key(&stack, &sha).is_some();
        if visible {
            let head = crate::receiver::head_request(other, "held", &auth);
            if head.status == 404 && window.is_none() {
                window = Some(sent.elapsed());
                // An upload on the other replica meanwhile: how long it
                // waits on the held gate (a collector queued for the gate
                // exclusively makes later writers queue behind it).
                let t = Instant::now();
                let r = other.put(&token, "beside", COMMIT_A, &sample_archive("beside", 3));
                beside = Some((r.status, t.elapsed()));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let r = upload.join().unwrap();
    let answered = sent.elapsed();
    assert_eq!(r.status, 201, "{}", r.text());
    let held = stack.s3_proxy(0).held();
    assert!(
        !held.is_empty(),
        "no write of {sha} went through replica 0's proxy: nothing was held"
    );
    let opened = window.unwrap_or_else(|| {
        panic!(
            "the window never opened: the object was never seen in the bucket while the \
             episode had no row (answered after {answered:?}, held: {held:?})"
        )
    });
    assert!(
        answered - opened >= Duration::from_secs(1),
        "the window was open only {:?}: too short to show anything",
        answered - opened
    );

    // The 201's object is there, with its bytes, and stays: a collection
    // round that ends after the row committed does not take it either.
    let key = object_key(&stack, &sha).expect("the held episode's object after its 201");
    assert_eq!(stack.s3.get(&key).unwrap(), body);
    orphan_is_collected(&stack, &key, &sha, 2);
    assert_eq!(
        stack.s3.get(&key).as_deref(),
        Some(&body[..]),
        "{key} was collected"
    );
    let rows = assert_rows_have_their_objects(&stack);
    assert_eq!(rows[&("slow-commit".to_string(), "held".to_string())], sha);
    assert_eq!(
        beside.map(|(status, _)| status),
        Some(201),
        "the upload beside"
    );
    assert_eq!(key_sha(&key), sha);
    eprintln!(
        "collection race: object visible without its row from {opened:?} to {answered:?} \
         after the request; the collector ran before and after and kept it; an upload to \
         the other replica during the window: {beside:?}"
    );
}
