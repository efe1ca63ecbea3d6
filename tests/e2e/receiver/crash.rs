//! kill -9 of the receiver while uploads stream in, then a restart: every
//! acknowledged (201/200) episode is there with its digest, `episodes
//! verify` is clean, and the temporary files of the cut uploads are swept.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use ferry_tests::{put_episode, sha256_hex, stored, temp_files, Receiver, COMMIT_A};

use super::{archive_of_size, proto_headers, HeldUpload};

const CYCLES: usize = 3;
const CLIENTS: usize = 4;

#[test]
fn kill9_during_uploads_loses_nothing_acknowledged() {
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::start_in(data.path(), &[]);
    let token = rx.ready_device("crashy");
    // A pool of bodies (made once by the tools), reused under many ids.
    let bodies: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..8)
            .map(|i| archive_of_size("crash", i, (64 << 10) + i as usize * 20_000))
            .collect(),
    );
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
    let mut next_id = 0usize;

    for cycle in 0..CYCLES {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = rx.addr;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|c| {
                let (stop, acked, bodies, token) =
                    (stop.clone(), acked.clone(), bodies.clone(), token.clone());
                let base = next_id + c * 100_000;
                std::thread::spawn(move || {
                    let mut n = 0;
                    while !stop.load(Ordering::Relaxed) {
                        let id = format!("c{cycle}-{base}-{n}");
                        let body = &bodies[(base + n) % bodies.len()];
                        let sha = sha256_hex(body);
                        // A connection cut by the kill panics inside the
                        // harness's reader: that is "no answer", not a failure.
                        let r = std::panic::catch_unwind(|| {
                            put_episode(addr, &token, &id, COMMIT_A, &sha, body)
                        });
                        match r {
                            Ok(r) if matches!(r.status, 200 | 201) => {
                                acked.lock().unwrap().push((id, sha))
                            }
                            Ok(r) => panic!("unexpected answer {}: {}", r.status, r.text()),
                            Err(_) => return,
                        }
                        n += 1;
                    }
                })
            })
            .collect();
        next_id += CLIENTS * 100_000 + 1;
        // Let some uploads be acknowledged, then kill in the middle of
        // others: observed in flight (the metric and a body on disk), and
        // proven cut by the temp files the kill leaves behind. One upload
        // is held half-sent, so that the kill always cuts one (the racing
        // clients' small bodies may all be between two uploads at the
        // instant of the kill).
        ferry_tests::wait_for("some acknowledged uploads", || {
            (acked.lock().unwrap().len() > cycle * 5 + 5).then_some(())
        });
        let held_body = &bodies[cycle % bodies.len()];
        let held = HeldUpload::start(
            rx.addr,
            &proto_headers(&token, COMMIT_A, &sha256_hex(held_body)),
            &format!("held-{cycle}"),
            held_body,
            held_body.len() / 2,
        );
        rx.wait_upload_in_flight();
        rx.kill9();
        drop(held);
        assert!(
            !temp_files(&rx).is_empty(),
            "cycle {cycle}: the kill cut no upload (no temp file left)"
        );
        stop.store(true, Ordering::Relaxed);
        for c in clients {
            let _ = c.join();
        }
        rx.restart();

        let index = stored(&rx);
        let acked = acked.lock().unwrap().clone();
        for (id, sha) in &acked {
            assert_eq!(
                index.get(id),
                Some(sha),
                "cycle {cycle}: acknowledged {id} lost"
            );
        }
        ferry_tests::assert_ok(
            &rx.cli(["episodes", "verify"]),
            "episodes verify after kill -9",
        );
        // Uploads cut by the kill left temp files; the sweep after the
        // restart removes them.
        ferry_tests::wait_for("left-over temp files swept", || {
            temp_files(&rx).is_empty().then_some(())
        });
        // And the receiver still takes uploads of ids cut mid-way.
        let r = rx.request("GET", "/readyz", &[], b"");
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert!(acked.lock().unwrap().len() >= CYCLES * 5);
}
