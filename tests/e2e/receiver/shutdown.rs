//! SIGTERM: stop accepting, let in-flight uploads finish within the grace
//! period, abort the rest without leaving anything half-stored, exit 0.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use ferry_tests::{stored, temp_files, Receiver};

use super::{archive_of_size, expect, hold_upload};

#[test]
fn sigterm_lets_an_in_flight_upload_finish_and_exits_0() {
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::start_in(data.path(), &[("FERRY_RECEIVER_SHUTDOWN_GRACE", "30s")]);
    let token = rx.ready_device("dev");
    let body = archive_of_size("term-1", 1, 300_000);
    let held = hold_upload(&rx, &token, "term-1", &body, 1000);
    ferry_tests::signal(rx.pid(), libc::SIGTERM);
    // New connections are refused while the upload is still running.
    ferry_tests::wait_for("listener closed", || {
        TcpStream::connect(rx.addr).is_err().then_some(())
    });
    expect(&held.finish(), 201, "stored");
    let status = rx.sigterm(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(stored(&rx).len(), 1);
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}

#[test]
fn sigterm_aborts_a_stalled_upload_after_the_grace_period() {
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::start_in(data.path(), &[("FERRY_RECEIVER_SHUTDOWN_GRACE", "1s")]);
    let token = rx.ready_device("dev");
    let body = archive_of_size("term-2", 2, 300_000);
    let held = hold_upload(&rx, &token, "term-2", &body, 100_000);
    let start = Instant::now();
    let status = rx.sigterm(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "{:?}",
        start.elapsed()
    );
    drop(held);
    assert!(
        temp_files(&rx).is_empty(),
        "temp files left: {:?}",
        temp_files(&rx)
    );
    assert!(stored(&rx).is_empty());
}

#[test]
fn sigterm_on_an_idle_receiver_exits_0_promptly() {
    let mut rx = Receiver::start();
    // An idle keep-alive connection must not hold the shutdown.
    let _idle = TcpStream::connect(rx.addr).unwrap();
    let start = Instant::now();
    let status = rx.sigterm(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}
