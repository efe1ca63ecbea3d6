//! Classes 1, 2 and 6, and the depth of the tree: what a producer can plant in `episodes/` (and the
//! spool root) to make the agent write through a symlink, hang on a FIFO,
//! read a huge file whole, or silently skip an episode.

use std::os::unix::fs::symlink;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ferry_tests::{
    exit_within, make_episode, pack_sha, stored, wait_for, Receiver, Spool, COMMIT_A,
};
use serde_json::json;

use super::secret;
use crate::agent::{answer, fake, reason, small, Daemon};

/// Class 1. The reason and conflict files are written into the producer's
/// own directory (moved to quarantine/ or conflict/), and the state file
/// into the spool root. Before: a temporary name `.<name>.tmp-<pid>`
/// opened create+truncate, so a symlink planted under it (the pid is
/// public) made the agent, as root, truncate and overwrite its target.
#[test]
fn planted_symlinks_never_redirect_an_agent_write() {
    let release = Arc::new(AtomicBool::new(false));
    let arrived = Arc::new(AtomicUsize::new(0));
    let (r, a) = (release.clone(), arrived.clone());
    // Every PUT waits until the symlinks are planted; then one is refused
    // (400: quarantine) and the other a conflict (409).
    let f = fake(move |_| {
        // Counted here: the fake counts a PUT once its body is read.
        let n = a.fetch_add(1, Ordering::SeqCst);
        while !r.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        match n {
            0 => answer(
                400,
                json!({"status": "bad-request", "error": "x", "detail": "no"}),
            ),
            _ => answer(409, json!({"status": "conflict"})),
        }
    });
    let spool = Spool::with_token(&f.url, "tok");
    let victims = tempfile::tempdir().unwrap();
    let targets: Vec<_> = ["reason", "conflict", "state", "named"]
        .iter()
        .map(|n| secret(victims.path(), n))
        .collect();
    let eps = [small(&spool, "ep-a", 1), small(&spool, "ep-b", 2)];
    let log = victims.path().join("agent.log");
    let mut child = spool
        .agent("drain")
        .args(["--timeout", "60s"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    wait_for("the first upload", || {
        (arrived.load(Ordering::SeqCst) > 0).then_some(())
    });
    for dir in &eps {
        for (name, victim) in [
            (format!(".quarantine_reason.json.tmp-{pid}"), &targets[0].0),
            (format!(".conflict.json.tmp-{pid}"), &targets[1].0),
            ("quarantine_reason.json".into(), &targets[3].0),
            ("conflict.json".into(), &targets[3].0),
        ] {
            symlink(victim, dir.join(name)).unwrap();
        }
    }
    symlink(
        &targets[2].0,
        spool
            .path()
            .join(format!("..ferry-agent-state.json.tmp-{pid}")),
    )
    .unwrap();
    release.store(true, Ordering::SeqCst);
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    exit_within(&mut child, Duration::from_secs(60), "drain", &read_log);
    for (path, bytes) in &targets {
        assert_eq!(
            &std::fs::read(path).unwrap(),
            bytes,
            "{} was written through a planted symlink; log:\n{}",
            path.display(),
            read_log()
        );
    }
    let (q, c) = (spool.ids_in("quarantine"), spool.ids_in("conflict"));
    assert_eq!((q.len(), c.len()), (1, 1), "{}", read_log());
    assert_eq!(reason(&spool, &q[0])["kind"], "refused");
    let rec = spool
        .path()
        .join("conflict")
        .join(&c[0])
        .join("conflict.json");
    assert!(std::fs::symlink_metadata(&rec).unwrap().is_file());
    let state = spool.path().join(".ferry-agent-state.json");
    assert!(std::fs::symlink_metadata(&state).unwrap().is_file());
}

/// Class 2. `meta.json` as a FIFO hung the agent for good (drain never
/// ended, SIGTERM ignored); as a symlink to `/dev/zero` or a 1 GiB sparse
/// file it was read whole into memory. Now each is refused after an open
/// that does not block or follow and a bounded read, the episode is
/// quarantined with a reason that says what the file is, and the honest
/// episode next to them ships.
#[test]
fn fifos_devices_and_huge_spool_files_never_stall_or_bloat_the_agent() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "hostile-meta");
    small(&spool, "good", 1);
    for id in ["fifo", "zero", "sparse"] {
        let dir = small(&spool, id, 2);
        std::fs::remove_file(dir.join("meta.json")).unwrap();
    }
    let ep = |id: &str| spool.path().join("episodes").join(id).join("meta.json");
    let made = std::process::Command::new("mkfifo")
        .arg(ep("fifo"))
        .status();
    assert!(made.unwrap().success(), "mkfifo");
    symlink("/dev/zero", ep("zero")).unwrap();
    std::fs::File::create(ep("sparse"))
        .unwrap()
        .set_len(1 << 30)
        .unwrap();
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("agent.log");
    let mut child = spool
        .agent("drain")
        .args(["--timeout", "120s"])
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let status = exit_within(&mut child, Duration::from_secs(40), "drain", &read_log);
    assert!(status.success(), "{status}: {}", read_log());
    assert_eq!(
        stored(&rx).get("good"),
        Some(&pack_sha(&spool.path().join("shipped/good")))
    );
    for (id, says) in [
        ("fifo", "a FIFO"),
        ("zero", "a symlink"),
        ("sparse", "larger than 1048576 bytes"),
    ] {
        let r = reason(&spool, id);
        assert_eq!(r["kind"], "no-commit", "{id}: {r}");
        let e = r["error"].as_str().unwrap();
        assert!(e.contains("meta.json") && e.contains(says), "{id}: {r}");
    }
}

/// Class 2, shutdown: with a FIFO for a `meta.json`, the daemon still
/// ships the honest episode, feeds on, and stops on SIGTERM within the
/// grace period (it ignored SIGTERM while blocked opening the FIFO).
#[test]
fn a_fifo_in_the_spool_never_stalls_the_daemon_or_its_shutdown() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "hostile-fifo-run");
    let dir = small(&spool, "fifo", 2);
    std::fs::remove_file(dir.join("meta.json")).unwrap();
    let made = std::process::Command::new("mkfifo")
        .arg(dir.join("meta.json"))
        .status();
    assert!(made.unwrap().success(), "mkfifo");
    small(&spool, "good", 1);
    let mut d = Daemon::start(&spool, &[("FERRY_AGENT_SCAN_INTERVAL", "200ms")]);
    d.wait_log("shipped");
    d.wait_log("quarantined");
    let st = d.sigterm(Duration::from_secs(15));
    assert!(st.success(), "{st}: {}", d.log());
    assert_eq!(spool.ids_in("shipped"), ["good"], "{}", d.log());
    assert_eq!(spool.ids_in("quarantine"), ["fifo"], "{}", d.log());
}

/// Class 6. An episode directory that is a symlink was counted as "being
/// written" forever, and drain said nothing was pending. It is reported
/// like an invalid name, every pass, and never followed (the link could
/// lead to any directory the agent can read) nor shipped.
#[test]
fn a_symlinked_episode_directory_is_reported_never_followed_or_silently_skipped() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "hostile-link");
    small(&spool, "good", 1);
    let elsewhere = tempfile::tempdir().unwrap();
    let target = make_episode(elsewhere.path(), "linked", Some(COMMIT_A), &[("x", b"x")]);
    symlink(&target, spool.path().join("episodes/linked")).unwrap();
    let out = spool.drain("60s");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(
        err.contains("\"linked\" (a symlink, not a directory; never followed)"),
        "not reported: {err}"
    );
    assert_eq!(stored(&rx).keys().collect::<Vec<_>>(), ["good"]);
    let link = spool.path().join("episodes/linked");
    assert!(std::fs::symlink_metadata(&link).unwrap().is_symlink());
    let mut left: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(
        left,
        ["done.marker", "meta.json", "x"],
        "the target was touched"
    );
}

/// The depth of the tree: a producer nests directories 400 deep. The pack
/// walk kept one descriptor open per level, so under a descriptor limit of
/// 128 (prlimit) the walk failed with EMFILE every pass, the episode was
/// quarantined as `unreadable` (with "check the disk" as the fix) and
/// whatever else the agent opened meanwhile failed too. Now at most a few
/// dozen levels stay open: the episode ships, byte for byte what
/// `ferry-agent pack` makes of it.
#[test]
fn a_deeply_nested_episode_never_runs_the_agent_out_of_descriptors() {
    if ferry_tests::lacks(
        "prlimit",
        "a_deeply_nested_episode_never_runs_the_agent_out_of_descriptors",
    ) {
        return;
    }
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "hostile-depth");
    small(&spool, "good", 1);
    let deep = small(&spool, "deep", 2);
    let mut leaf = deep.clone();
    for _ in 0..400 {
        leaf.push("d");
    }
    std::fs::create_dir_all(&leaf).unwrap();
    std::fs::write(leaf.join("leaf.bin"), b"bottom").unwrap();

    let agent = spool.agent("drain");
    let mut cmd = std::process::Command::new("prlimit");
    cmd.args(["--nofile=128:128", "--"])
        .arg(agent.get_program())
        .args(agent.get_args())
        .args(["--timeout", "60s"]);
    let out = cmd.output().unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    assert!(!log.contains("Too many open files"), "{log}");
    let stored = stored(&rx);
    for id in ["good", "deep"] {
        let shipped = spool.path().join("shipped").join(id);
        assert_eq!(stored.get(id), Some(&pack_sha(&shipped)), "{id}: {log}");
    }
}

/// The marker: a producer makes `done.marker` a dangling symlink. The scan
/// (not following it) saw the episode ready, the upload task (following
/// it) saw it gone: the episode stayed pending forever, never packed,
/// never reported, and every drain exited 1. Now both look at the name
/// alone, and the episode ships like any other.
#[test]
fn a_dangling_symlink_marker_never_leaves_an_episode_silently_pending() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "hostile-marker");
    small(&spool, "good", 1);
    let odd = small(&spool, "odd", 2);
    std::fs::remove_file(odd.join("done.marker")).unwrap();
    symlink("/nonexistent/ferry-marker", odd.join("done.marker")).unwrap();
    let out = spool.drain("20s");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {log}", out.status);
    let stored = stored(&rx);
    for id in ["good", "odd"] {
        let shipped = spool.path().join("shipped").join(id);
        assert_eq!(stored.get(id), Some(&pack_sha(&shipped)), "{id}: {log}");
    }
}
