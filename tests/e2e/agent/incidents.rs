//! SPEC §4: the five incidents from the field, each reproduced with a real
//! fault and named after it.

use std::time::{Duration, Instant};

use ferry_tests::{assert_ok, noise, pack_sha, stored, until, Receiver, Spool, COMMIT_A};

use super::{daemon_with_notify, outbox, read_json, reason, small, text, Daemon, NotifySocket};

/// §4.1: one unreadable file costs its episode only; one aggregated ERROR
/// per pass; the others ship; five strikes then quarantine naming the file
/// and the errno. A scan-level EIO (on a `done.marker`) is skipped the same
/// way.
#[test]
fn incident1_unreadable_file_costs_one_episode() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "incident1");
    for i in 0..4 {
        small(&spool, &format!("good-{i}"), i);
    }
    small(&spool, "rotten", 9);
    let bad = spool.path().join("episodes/rotten/data/noise.bin");
    let Some((mut cmd, trace)) = super::strace_drain(
        "incident1_unreadable_file_costs_one_episode",
        &spool,
        "120s",
        &[
            "-P",
            bad.to_str().unwrap(),
            "-e",
            "inject=read:error=EUCLEAN",
        ],
    ) else {
        return;
    };
    let out = cmd
        .env("FERRY_AGENT_SCAN_INTERVAL", "100ms")
        .output()
        .unwrap();
    trace.assert_hit("EUCLEAN on rotten/data/noise.bin");
    assert_ok(&out, "drain with an EUCLEAN file");
    let err = String::from_utf8_lossy(&out.stderr);
    let s = stored(&rx);
    for i in 0..4 {
        assert!(s.contains_key(&format!("good-{i}")), "{}", text(&out));
    }
    assert!(!s.contains_key("rotten"));
    assert_eq!(spool.ids_in("quarantine"), ["rotten"]);
    let r = reason(&spool, "rotten");
    let e = r["error"].as_str().unwrap();
    assert!(e.contains("noise.bin") && e.contains("EUCLEAN"), "{r}");
    assert_eq!(r["kind"], "unreadable", "{r}");
    assert_eq!(r["attempts"], 5, "{r}");
    // One aggregated ERROR line per pass for the four skipping passes.
    assert_eq!(err.matches("this pass skipped").count(), 4, "{err}");

    // A done.marker the filesystem refuses to stat: skipped and reported,
    // the rest keeps shipping, and it ships once the disk is healthy.
    small(&spool, "stat-eio", 10);
    small(&spool, "fine", 11);
    let marker = spool.path().join("episodes/stat-eio/done.marker");
    let (mut cmd, trace) = super::strace_drain(
        "incident1_unreadable_file_costs_one_episode",
        &spool,
        "60s",
        &[
            "-P",
            marker.to_str().unwrap(),
            "-e",
            "inject=statx,newfstatat:error=EIO",
        ],
    )
    .expect("strace was found above");
    let out = cmd.output().unwrap();
    trace.assert_hit("EIO on stat of stat-eio/done.marker");
    assert_ok(&out, "drain with an EIO done.marker");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("1 unreadable entry") && err.contains("EIO"),
        "{err}"
    );
    assert!(stored(&rx).contains_key("fine"));
    assert_ok(&spool.drain("60s"), "drain on a healthy disk");
    assert!(stored(&rx).contains_key("stat-eio"));
}

/// §4.2: SIGTERM mid-upload aborts it, leaves the tarball, logs "aborted",
/// exits 0, records no failure; the next start ships that same tarball.
#[test]
fn incident2_sigterm_mid_upload_is_aborted_not_failed() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "incident2");
    let dir = small(&spool, "slow", 1);
    std::fs::write(dir.join("big.bin"), noise(2, 4 << 20)).unwrap();
    let mut d = Daemon::start(
        &spool,
        &[
            ("FERRY_AGENT_BANDWIDTH_LIMIT", "256KiB"),
            ("FERRY_AGENT_SHUTDOWN_GRACE", "1s"),
            ("RUST_LOG", "ferry_agent=debug"),
        ],
    );
    d.wait_log("uploading");
    // Mid-upload, observed at the receiver, not assumed after a sleep.
    rx.wait_upload_in_flight();
    let t = Instant::now();
    let st = d.sigterm(Duration::from_secs(30));
    assert!(st.success(), "exit after SIGTERM: {st}\n{}", d.log());
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "took {:?}",
        t.elapsed()
    );
    let log = d.log();
    assert!(
        log.contains("aborted while uploading") && log.contains("slow"),
        "{log}"
    );
    assert!(!log.contains("transient failure"), "{log}");
    assert_eq!(
        outbox(&spool),
        ["slow.tar.zst"],
        "tarball left in the outbox"
    );
    assert_eq!(spool.ids_in("episodes"), ["slow"]);
    assert!(spool.ids_in("quarantine").is_empty());
    // Nothing recorded as a failure (the state file may not exist at all).
    let state_file = spool.path().join(".ferry-agent-state.json");
    if state_file.exists() {
        let state = read_json(&state_file);
        assert!(
            state["last_error"].is_null(),
            "recorded as a failure: {state}"
        );
    }
    assert!(stored(&rx).is_empty());

    // The next start ships the same tarball.
    let out = spool
        .agent("drain")
        .args(["--timeout", "120s"])
        .env("RUST_LOG", "ferry_agent=debug")
        .output()
        .unwrap();
    assert_ok(&out, "drain after the abort");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("re-hashed the tarball left in the outbox"),
        "{}",
        text(&out)
    );
    assert_eq!(
        stored(&rx)["slow"],
        pack_sha(&spool.path().join("shipped/slow"))
    );
    assert!(outbox(&spool).is_empty());
}

/// §4.3: a transient EIO (here: the receiver's fsync of the stored object
/// fails twice) is surfaced as a transient answer and retried; nothing is
/// quarantined, the journal mode stays WAL; and a state file the agent
/// cannot write is reported and survived, never fatal.
#[test]
fn incident3_transient_eio_is_retried_never_a_permanent_downgrade() {
    if ferry_tests::lacks(
        "strace",
        "incident3_transient_eio_is_retried_never_a_permanent_downgrade",
    ) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::start_in(data.path(), &[]);
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "incident3");
    rx.kill9();
    let trace = ferry_tests::Strace::new();
    let wrapper = trace.wrapper(&["-e", "inject=fsync:error=EIO:when=1..2"]);
    rx.try_spawn("127.0.0.1:0", &wrapper)
        .expect("receiver under strace");
    let spool = Spool::with_token(
        &rx.url,
        &std::fs::read_to_string(&spool.token_file).unwrap(),
    );
    for i in 0..3 {
        small(&spool, &format!("wal-{i}"), i);
    }
    let out = spool
        .agent("drain")
        .args(["--timeout", "120s"])
        .env("FERRY_AGENT_BACKOFF_MAX", "300ms")
        .env("FERRY_AGENT_SHIP_CONCURRENCY", "1")
        .output()
        .unwrap();
    assert_ok(&out, "drain through transient receiver EIO");
    trace.assert_hit("EIO on the receiver's fsync");
    assert!(spool.ids_in("quarantine").is_empty(), "{}", text(&out));
    assert_eq!(spool.ids_in("shipped").len(), 3);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("transient failure"),
        "the fault was never hit: {}",
        text(&out)
    );
    if let Some(mode) = ferry_tests::journal_mode(
        &data.path().join("index.sqlite"),
        "incident3_transient_eio_is_retried_never_a_permanent_downgrade",
    ) {
        assert_eq!(mode, "wal");
    }

    // The agent's own state file cannot be written (a directory stands
    // where it goes): the failure is reported, shipping goes on, and the
    // next save after the fault clears works. The receiver is restarted
    // without strace first: strace counts `when=` per thread, so every
    // fresh thread of the traced receiver would fail its first fsyncs again,
    // and this part is about the agent's own file.
    rx.restart();
    small(&spool, "state-eio", 7);
    let state = spool.path().join(".ferry-agent-state.json");
    let _ = std::fs::remove_file(&state);
    std::fs::create_dir(&state).unwrap();
    let out = spool.drain("60s");
    assert_ok(&out, "drain with an unwritable state file");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cannot save"),
        "{}",
        text(&out)
    );
    std::fs::remove_dir(&state).unwrap();
    small(&spool, "state-ok", 8);
    assert_ok(&spool.drain("60s"), "drain after the fault cleared");
    assert_eq!(read_json(&state)["last_success_episode"], "state-ok");
    assert!(spool.ids_in("shipped").contains(&"state-eio".to_string()));
}

/// §4.4: a huge boot-time cleanup runs after READY, in batches, off the
/// async threads: READY comes first, the watchdog keeps being fed, and new
/// episodes ship while it runs.
#[test]
fn incident4_boot_sweep_runs_after_ready_without_blocking() {
    let _load = ferry_tests::gap_sensitive();
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "incident4");
    for i in 0..5000 {
        std::fs::create_dir_all(spool.path().join(format!("shipped/old-{i}/data"))).unwrap();
    }
    for i in 0..500 {
        std::fs::write(
            spool.path().join(format!("outbox/orphan-{i}.tar.zst")),
            b"x",
        )
        .unwrap();
    }
    let ns = NotifySocket::new();
    let interval = Duration::from_secs(1);
    let d = daemon_with_notify(
        &spool,
        &ns,
        Some(interval),
        &[
            ("FERRY_AGENT_SHIPPED_KEEP", "0s"),
            ("FERRY_AGENT_SWEEP_BATCH", "10"),
            ("FERRY_AGENT_SCAN_INTERVAL", "200ms"),
        ],
    );
    let ready = ferry_tests::wait_for("READY=1", || ns.first("READY=1"));
    let old = |spool: &Spool| {
        spool
            .ids_in("shipped")
            .iter()
            .filter(|n| n.starts_with("old-"))
            .count()
    };
    let left_at_ready = old(&spool) + spool.ids_in("outbox").len();
    assert!(left_at_ready > 0, "the sweep ran before READY");
    // A new episode ships while the sweep is still going.
    small(&spool, "fresh", 1);
    until(
        "fresh stored",
        || d.log(),
        || stored(&rx).contains_key("fresh"),
    );
    let during = old(&spool);
    until(
        "sweep done",
        || d.log(),
        || old(&spool) == 0 && outbox(&spool).is_empty(),
    );
    let done = Instant::now();
    assert!(
        during > 0,
        "the sweep finished before the episode shipped; not a concurrency test"
    );
    // What systemd checks: no gap between feeds (READY counts as the
    // first) as long as WatchdogSec, over a sweep longer than it.
    let mut feeds: Vec<Instant> = vec![ready];
    feeds.extend(
        ns.matching("WATCHDOG=1")
            .into_iter()
            .map(|(t, _)| t)
            .filter(|t| *t > ready && *t < done),
    );
    feeds.push(done);
    let span = done - ready;
    assert!(
        span > interval,
        "the sweep took only {span:?}: no test of the watchdog"
    );
    assert!(
        max_gap(&feeds) < interval,
        "watchdog starved during the sweep: a gap of {:?} (WatchdogSec {interval:?}) in {span:?}",
        max_gap(&feeds)
    );
    eprintln!(
        "incident 4: sweep {span:?}, longest gap between feeds {:?}",
        max_gap(&feeds)
    );
    drop(d);
}

/// Whether a thread of the program traced by the strace process `strace`
/// is stopped by strace on entry to `read` (the injected delay): state `t`
/// (tracing stop) in `/proc/TID/stat` and syscall 0 (`read` on x86_64) in
/// `/proc/TID/syscall`.
fn held_in_read(strace: u32) -> bool {
    let children = std::fs::read_to_string(format!("/proc/{strace}/task/{strace}/children"))
        .unwrap_or_default();
    children.split_whitespace().any(|pid| {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return false;
        };
        tasks.flatten().any(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next());
            let call = std::fs::read_to_string(t.path().join("syscall")).unwrap_or_default();
            state == Some("t") && call.split_whitespace().next() == Some("0")
        })
    })
}

fn max_gap(times: &[Instant]) -> Duration {
    times
        .windows(2)
        .map(|w| w[1] - w[0])
        .max()
        .unwrap_or_default()
}

/// §4.5: a pass that is legitimately long (a slow upload) keeps the
/// watchdog fed because bytes move; an upload that stops moving stops the
/// feeding.
#[test]
fn incident5_watchdog_fed_on_progress_not_on_passes() {
    let _load = ferry_tests::gap_sensitive();
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "incident5");
    let dir = small(&spool, "long", 1);
    std::fs::write(dir.join("big.bin"), noise(3, 3 << 20)).unwrap();
    let ns = NotifySocket::new();
    let interval = Duration::from_secs(2);
    let mut d = daemon_with_notify(
        &spool,
        &ns,
        Some(interval),
        &[
            ("FERRY_AGENT_BANDWIDTH_LIMIT", "512KiB"),
            ("RUST_LOG", "ferry_agent=debug"),
        ],
    );
    d.wait_log("uploading");
    let start = Instant::now();
    until("shipped", || d.log(), || stored(&rx).contains_key("long"));
    let end = Instant::now();
    assert!(
        end - start > interval * 2,
        "the upload was not longer than the watchdog interval: {:?}",
        end - start
    );
    let feeds: Vec<Instant> = ns
        .matching("WATCHDOG=1")
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| *t >= start && *t <= end)
        .collect();
    assert!(feeds.len() >= 3, "{feeds:?}");
    assert!(
        max_gap(&feeds) < interval,
        "gap {:?} during a moving upload",
        max_gap(&feeds)
    );
    assert!(!d.log().contains("not feeding the watchdog"), "{}", d.log());
    drop(d);

    // A receiver that stops reading: the upload stalls, the feeding stops.
    let f = super::fake(|_| super::Script::Hang);
    let spool = Spool::with_token(&f.url, "tok");
    let dir = small(&spool, "stuck", 1);
    std::fs::write(dir.join("big.bin"), noise(4, 48 << 20)).unwrap();
    let ns = NotifySocket::new();
    let interval = Duration::from_secs(1);
    let mut d = daemon_with_notify(
        &spool,
        &ns,
        Some(interval),
        &[("FERRY_AGENT_REQUEST_TIMEOUT", "10m")],
    );
    d.wait_log("not feeding the watchdog");
    let stalled = Instant::now();
    std::thread::sleep(interval * 3);
    let after: Vec<_> = ns
        .matching("WATCHDOG=1")
        .into_iter()
        .filter(|(t, _)| *t > stalled)
        .collect();
    assert!(after.is_empty(), "still fed while stalled: {after:?}");
    assert!(ns.first("WATCHDOG=1").is_some(), "never fed at all");
}

/// §4.5, the pack side: a read that hangs (strace delay) stops the feeding
/// while it hangs, and feeding resumes when it returns.
#[test]
fn incident5_a_hung_read_while_packing_stops_the_watchdog() {
    let _load = ferry_tests::gap_sensitive();
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "incident5b");
    let dir = small(&spool, "hang", 1);
    let file = dir.join("data/noise.bin");
    if ferry_tests::lacks(
        "strace",
        "incident5_a_hung_read_while_packing_stops_the_watchdog",
    ) {
        return;
    }
    let ns = NotifySocket::new();
    let trace = ferry_tests::Strace::new();
    let mut cmd = trace.command(&[
        "-P",
        file.to_str().unwrap(),
        "-e",
        "inject=read:delay_enter=4000000:when=1",
    ]);
    cmd.arg(ferry_tests::bin("ferry-agent"))
        .arg("run")
        .arg("--spool")
        .arg(spool.path())
        .arg("--receiver")
        .arg(&rx.url)
        .arg("--token-file")
        .arg(&spool.token_file);
    for (k, v) in ns.env(Some(Duration::from_secs(1))) {
        cmd.env(k, v);
    }
    let d = Daemon::start_cmd(cmd, &[]);
    until(
        "starving logged",
        || d.log(),
        || d.log().contains("not feeding the watchdog"),
    );
    until(
        "shipped after the slow read",
        || d.log(),
        || stored(&rx).contains_key("hang"),
    );
    until(
        "feeding resumed",
        || d.log(),
        || d.log().contains("moving again"),
    );
    trace.assert_hit("the 4 s hold of the first read of noise.bin");
    let feeds: Vec<Instant> = ns
        .matching("WATCHDOG=1")
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    assert!(
        max_gap(&feeds) >= Duration::from_millis(1500),
        "fed through a hung read: {feeds:?}"
    );
}

/// SPEC §1: kill -9 mid-pack (a read held by strace) and mid-upload; each
/// restart finishes the job: shipped exactly once, the digest of a fresh
/// pack, no tarball or `.partial` left.
#[test]
fn kill9_mid_pack_and_mid_upload_ships_exactly_once() {
    if ferry_tests::lacks("strace", "kill9_mid_pack_and_mid_upload_ships_exactly_once") {
        return;
    }
    use std::os::unix::process::CommandExt;
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "kill9");
    let dir = small(&spool, "victim", 1);
    std::fs::write(dir.join("big.bin"), noise(5, 2 << 20)).unwrap();

    // 1. Mid-pack: the third read of big.bin hangs; kill -9 the group once
    // the pack is provably under way: its `.partial` exists, no finished
    // tarball does, and strace saw the two reads before the held one.
    let big = dir.join("big.bin");
    let trace = ferry_tests::Strace::new();
    let mut cmd = trace.command(&[
        "-e",
        "trace=read",
        "-P",
        big.to_str().unwrap(),
        "-e",
        "inject=read:delay_enter=30000000:when=3",
    ]);
    cmd.arg(ferry_tests::bin("ferry-agent"))
        .args(["run", "--spool"])
        .arg(spool.path())
        .args(["--receiver", &rx.url, "--token-file"])
        .arg(&spool.token_file)
        .process_group(0);
    let mut d = Daemon::start_cmd(cmd, &[]);
    until(
        "a partial tarball and a read of big.bin held by strace",
        || d.log(),
        || {
            outbox(&spool).iter().any(|n| n.ends_with(".partial"))
                && trace.log().matches(" read(").count() >= 2
                && held_in_read(d.child.id())
        },
    );
    assert!(
        !outbox(&spool).contains(&"victim.tar.zst".to_string()),
        "the pack had finished: the kill was not mid-pack"
    );
    ferry_tests::signal_group(d.child.id(), libc::SIGKILL);
    let _ = d.child.wait();
    assert_eq!(trace.hits(), 0, "the held read returned before the kill");
    assert_eq!(spool.ids_in("episodes"), ["victim"]);

    // 2. Mid-upload: a slow link, kill -9 once the receiver holds some of
    // the body (a temp file with bytes in it), so the upload is in flight.
    let mut d = Daemon::start(
        &spool,
        &[
            ("FERRY_AGENT_BANDWIDTH_LIMIT", "256KiB"),
            ("RUST_LOG", "ferry_agent=debug"),
        ],
    );
    d.wait_log("uploading");
    rx.wait_upload_in_flight();
    let _ = d.child.kill();
    let _ = d.child.wait();
    assert_eq!(spool.ids_in("episodes"), ["victim"]);
    assert!(stored(&rx).is_empty());

    // 3. A clean start finishes it.
    let mut d = Daemon::start(&spool, &[]);
    until("stored", || d.log(), || stored(&rx).contains_key("victim"));
    until(
        "retired and swept",
        || d.log(),
        || spool.ids_in("shipped") == ["victim"] && outbox(&spool).is_empty(),
    );
    assert!(d.sigterm(Duration::from_secs(30)).success());
    assert_eq!(stored(&rx).len(), 1);
    assert_eq!(
        stored(&rx)["victim"],
        pack_sha(&spool.path().join("shipped/victim"))
    );
    assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}

/// §4.5 as it happened: a long pack at a high zstd level. The reads pause
/// while zstd's workers chew on a whole job, but compressed output keeps
/// flowing, so the watchdog is fed throughout.
///
/// The pack is made to outlast the watchdog interval whatever the machine's
/// speed: strace holds every 128th read of the file (one per MiB, the pack
/// reads 8 KiB at a time) for a second, so 12 MiB take at least 12 s of
/// reads against a 6 s interval, and input still moves at least once a
/// second. (This test used to rely on level 19 alone taking over 6 s, and
/// failed on a machine a little faster than the one that sized it.)
#[test]
fn incident5_a_long_pack_at_a_high_zstd_level_keeps_the_watchdog_fed() {
    let _load = ferry_tests::heavy();
    const TEST: &str = "incident5_a_long_pack_at_a_high_zstd_level_keeps_the_watchdog_fed";
    if ferry_tests::lacks("strace", TEST) {
        return;
    }
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "incident5c");
    let dir = small(&spool, "dense", 1);
    // Low-entropy bytes: slow for zstd -19, unlike pure noise.
    let data: Vec<u8> = noise(7, 12 << 20).iter().map(|b| b % 5).collect();
    let file = dir.join("dense.bin");
    std::fs::write(&file, data).unwrap();
    let ns = NotifySocket::new();
    // Generous: a loaded 2-core machine slows each zstd job down, and the
    // watchdog is fed every half interval only if a job finished or input
    // moved since the last feed.
    let interval = Duration::from_secs(6);
    let trace = ferry_tests::Strace::new();
    let agent = spool.agent("run");
    let mut cmd = trace.command(&[
        "-e",
        "trace=read",
        "-P",
        file.to_str().unwrap(),
        "-e",
        "inject=read:delay_enter=1000000:when=1+128",
    ]);
    cmd.arg(agent.get_program()).args(agent.get_args());
    for (k, v) in ns.env(Some(interval)) {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let mut d = Daemon::start_cmd(
        cmd,
        &[
            ("FERRY_AGENT_ZSTD_LEVEL", "19"),
            ("RUST_LOG", "ferry_agent=debug"),
        ],
    );
    d.wait_log("packed");
    let packed = Instant::now();
    until("shipped", || d.log(), || stored(&rx).contains_key("dense"));
    let held = trace.hits();
    assert!(
        held >= 12,
        "strace held {held} reads, not the 12 the test needs"
    );
    assert!(
        packed - start > interval,
        "the pack was not longer than the watchdog interval: {:?}",
        packed - start
    );
    let feeds: Vec<Instant> = ns
        .matching("WATCHDOG=1")
        .into_iter()
        .map(|(t, _)| t)
        .filter(|t| *t <= packed)
        .collect();
    assert!(
        max_gap(&feeds) < interval,
        "gap {:?} during the pack",
        max_gap(&feeds)
    );
    assert!(!d.log().contains("not feeding the watchdog"), "{}", d.log());
}
