//! Storage faults, injected for real: strace `-e inject=SYSCALL:error=ERRNO`
//! scoped with `-P` where a path can name the target, and a loop-mounted
//! ext4 image damaged with debugfs for a real EUCLEAN. Each program stays
//! up, acknowledges nothing it did not store, and resumes by itself when the
//! fault clears.

use std::process::Command;

use ferry_tests::{
    assert_ok, have, put_episode, sha256_hex, skip, stored, temp_files, Receiver, Spool, Strace,
    COMMIT_A, COMMIT_B,
};

use super::{assert_delivered, small_episode};

/// A 4 s drain under `strace -P <outbox>/<id>.tar.zst.partial -e INJECT`,
/// retrying quickly; the partial file's path and the drain's output, after
/// asserting the fault landed.
fn drain_with_outbox_fault(
    spool: &Spool,
    id: &str,
    inject: &str,
) -> (std::path::PathBuf, std::process::Output) {
    let partial = spool.path().join(format!("outbox/{id}.tar.zst.partial"));
    let trace = Strace::new();
    let mut cmd = trace.command(&["-P", partial.to_str().unwrap(), "-e", inject]);
    cmd.args(spool.drain_cmd_args("4s"))
        .env("FERRY_AGENT_SCAN_INTERVAL", "100ms")
        .env("FERRY_AGENT_BACKOFF_MAX", "200ms");
    let out = cmd.output().expect("strace drain");
    trace.assert_hit(&format!("{inject} on {}", partial.display()));
    (partial, out)
}

/// Start `rx` under `strace -P PATH -e EXPR...`; the trace, to assert on.
fn receiver_under_strace(rx: &mut Receiver, path: &str, exprs: &[&str]) -> Strace {
    let trace = Strace::new();
    let mut args = vec!["-P", path];
    for e in exprs {
        args.extend(["-e", e]);
    }
    rx.try_spawn("127.0.0.1:0", &trace.wrapper(&args))
        .expect("receiver under strace");
    trace
}

fn reason(spool: &Spool, id: &str) -> serde_json::Value {
    let p = spool
        .path()
        .join("quarantine")
        .join(id)
        .join("quarantine_reason.json");
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).expect("quarantine_reason.json is JSON")
}

/// One file that cannot be read (EIO, then EUCLEAN) costs its episode only:
/// the others ship, and after five failed passes the bad one is quarantined
/// with a reason naming the file and the errno.
#[test]
fn unreadable_file_costs_one_episode_and_is_named() {
    if ferry_tests::lacks("strace", "unreadable_file_costs_one_episode_and_is_named") {
        return;
    }
    for (errno, words) in [
        ("EIO", ["EIO", "os error 5"]),
        ("EUCLEAN", ["EUCLEAN", "os error 117"]),
    ] {
        let rx = Receiver::start();
        rx.allow(COMMIT_A, true);
        let spool = Spool::new(&rx, "eio");
        let good: Vec<String> = (0..5).map(|i| format!("good-{i}")).collect();
        for (i, id) in good.iter().enumerate() {
            small_episode(&spool, id, i as u64);
        }
        small_episode(&spool, "bad", 99);
        let bad_file = spool.path().join("episodes/bad/data/noise.bin");
        let trace = Strace::new();
        let mut cmd = trace.command(&[
            "-P",
            bad_file.to_str().unwrap(),
            "-e",
            &format!("inject=read:error={errno}"),
        ]);
        cmd.args(spool.drain_cmd_args("60s"))
            .env("FERRY_AGENT_SCAN_INTERVAL", "100ms");
        let out = cmd.output().expect("strace drain");
        trace.assert_hit(&format!("{errno} on bad/data/noise.bin"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ok(&out, &format!("drain with {errno} on one file"));
        assert_eq!(
            spool.ids_in("quarantine"),
            vec!["bad".to_string()],
            "{errno}: {stderr}"
        );
        let r = reason(&spool, "bad");
        let error = r["error"].as_str().unwrap_or_default().to_string();
        assert!(
            error.contains("noise.bin"),
            "{errno}: reason does not name the file: {r}"
        );
        assert!(
            words.iter().any(|w| error.contains(w)),
            "{errno}: reason does not name the errno: {r}"
        );
        assert!(r["quarantined_at_wall"].as_str().is_some(), "{r}");
        // Everything else arrived.
        let index = stored(&rx);
        for id in &good {
            assert!(index.contains_key(id), "{errno}: {id} not stored");
        }
        assert!(!index.contains_key("bad"));
    }
}

/// A full disk under the outbox is transient: nothing is quarantined, and
/// once space is back the episode ships.
#[test]
fn outbox_enospc_is_transient_and_never_quarantines() {
    if ferry_tests::lacks("strace", "outbox_enospc_is_transient_and_never_quarantines") {
        return;
    }
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "enospc");
    small_episode(&spool, "full-1", 1);
    // The drain cannot finish while the disk is "full": it must time out
    // (exit 1) without quarantining anything.
    let (_, i) = drain_with_outbox_fault(&spool, "full-1", "inject=write:error=ENOSPC");
    let why = String::from_utf8_lossy(&i.stderr);
    assert!(!i.status.success(), "drain claimed success on a full disk");
    assert!(
        why.contains("ENOSPC") || why.contains("No space left"),
        "the drain failed, but not for the full disk: {why}"
    );
    assert_eq!(spool.ids_in("quarantine"), Vec::<String>::new());
    assert_eq!(spool.ids_in("episodes"), vec!["full-1".to_string()]);
    // Space is back.
    assert_ok(&spool.drain("60s"), "drain after the disk emptied");
    assert_delivered(&rx, &spool, &["full-1".to_string()]);
}

/// A large tarball is flushed in steps while it is packed (`fdatasync` on
/// a thread of its own; ferry-durable). Such a flush failing (EIO, strace
/// `-P` scoped to the outbox's `.partial` file; the final sync is an
/// `fsync`, so only a step can fail here) is a failed pack that names the
/// file and the errno: nothing is shipped or quarantined, no partial file
/// is left, and the next drain ships the episode.
#[test]
fn agent_failed_flush_step_fails_the_pack_and_is_retried() {
    if ferry_tests::lacks(
        "strace",
        "agent_failed_flush_step_fails_the_pack_and_is_retried",
    ) {
        return;
    }
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "flush-eio");
    // Incompressible, so the tarball passes a 32 MiB step.
    let big = ferry_tests::noise(11, 48 << 20);
    ferry_tests::make_episode(
        spool.path(),
        "big-1",
        Some(COMMIT_A),
        &[("data/noise.bin", &big)],
    );
    let (partial, out) = drain_with_outbox_fault(&spool, "big-1", "inject=fdatasync:error=EIO");
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "drain claimed success: {log}");
    assert!(
        log.contains(partial.to_str().unwrap()) && log.contains("os error 5"),
        "the failure does not name the file and EIO: {log}"
    );
    assert_eq!(spool.ids_in("quarantine"), Vec::<String>::new());
    assert_eq!(spool.ids_in("episodes"), vec!["big-1".to_string()]);
    assert!(!partial.exists(), "partial file left behind");
    assert!(stored(&rx).is_empty(), "shipped despite the failed flush");
    // The fault clears.
    assert_ok(&spool.drain("60s"), "drain after the fault cleared");
    assert_delivered(&rx, &spool, &["big-1".to_string()]);
}

/// The receiver cannot fsync the directory one object lands in (EIO,
/// strace `-P` scoped to that directory): that upload is not acknowledged
/// (5xx with a JSON reason), nothing of it is indexed, the receiver stays
/// up and keeps storing other episodes, and once the fault is gone the same
/// upload is stored.
#[test]
fn receiver_fsync_eio_is_not_acknowledged_and_costs_one_upload() {
    if ferry_tests::lacks(
        "strace",
        "receiver_fsync_eio_is_not_acknowledged_and_costs_one_upload",
    ) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::start_in(data.path(), &[]);
    rx.allow(COMMIT_A, true);
    let token = rx.add_device("fsync-eio");
    rx.kill9();
    let body = ferry_tests::sample_archive("fs-1", 1);
    let sha = sha256_hex(&body);
    let object = ferry_tests::object_path(data.path(), &sha);
    let shard = object.parent().unwrap();
    let trace = receiver_under_strace(
        &mut rx,
        shard.to_str().unwrap(),
        &["inject=fsync,fdatasync:error=EIO"],
    );
    for _ in 0..2 {
        let r = put_episode(rx.addr, &token, "fs-1", COMMIT_A, &sha, &body);
        assert!(
            r.status >= 500,
            "acknowledged despite EIO: {} {}",
            r.status,
            r.text()
        );
        assert!(r.json()["status"].is_string(), "{}", r.text());
    }
    trace.assert_hit("EIO on the fsync of the object's shard directory");
    assert!(rx.is_running(), "the receiver died of an EIO");
    assert!(!stored(&rx).contains_key("fs-1"), "indexed despite EIO");
    // Another episode (another shard directory) is stored meanwhile.
    let other = ferry_tests::sample_archive("fs-other", 77);
    let other_sha = sha256_hex(&other);
    assert_ne!(&other_sha[..2], &sha[..2], "pick another seed: same shard");
    let r = put_episode(rx.addr, &token, "fs-other", COMMIT_A, &other_sha, &other);
    assert_eq!(r.status, 201, "{}", r.text());
    assert!(temp_files(&rx).is_empty(), "temp files left behind");

    // The fault clears.
    rx.restart();
    let r = put_episode(rx.addr, &token, "fs-1", COMMIT_A, &sha, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}

/// Under load the receiver makes a whole batch of small uploads durable
/// with one `syncfs` (receiver/src/store/commit.rs). `syncfs` reports an
/// error anywhere on the file system, maybe another program's, so when it
/// fails the batch falls back to an fsync of each file and directory, which
/// tells whose data was lost. With every `syncfs` failing (EIO, strace `-P`
/// scoped to the temporary directory it is called on) while 48 devices
/// upload at once: `syncfs` was called and failed, yet every upload is
/// stored (201), indexed and intact, and no temporary file is left.
#[test]
fn receiver_syncfs_eio_under_load_falls_back_to_fsync_per_file() {
    let _load = ferry_tests::heavy();
    if ferry_tests::lacks(
        "strace",
        "receiver_syncfs_eio_under_load_falls_back_to_fsync_per_file",
    ) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    // Load from one device: every upload of the batch gets a slot.
    let mut rx = Receiver::start_in(
        data.path(),
        &[("FERRY_RECEIVER_MAX_UPLOADS_PER_DEVICE", "64")],
    );
    rx.allow(COMMIT_A, true);
    let token = rx.add_device("syncfs-eio");
    rx.kill9();
    let root = std::fs::canonicalize(data.path()).unwrap();
    let tmp = root.join("tmp");
    let trace = receiver_under_strace(
        &mut rx,
        tmp.to_str().unwrap(),
        &["trace=syncfs", "inject=syncfs:error=EIO"],
    );

    let injected = || trace.hits();
    let mut stored_ids: Vec<(String, String)> = Vec::new();
    for round in 0..5u64 {
        let uploads: Vec<(String, String, Vec<u8>)> = (0..48u64)
            .map(|i| {
                let id = format!("load-{round}-{i}");
                let body = ferry_tests::sample_archive(&id, 1000 + round * 100 + i);
                (id, sha256_hex(&body), body)
            })
            .collect();
        let answers: Vec<(u16, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = uploads
                .iter()
                .map(|(id, sha, body)| {
                    let (addr, token) = (rx.addr, &token);
                    s.spawn(move || {
                        let r = put_episode(addr, token, id, COMMIT_A, sha, body);
                        (r.status, r.text())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for ((id, sha, _), (status, text)) in uploads.into_iter().zip(answers) {
            assert_eq!(status, 201, "{id}: {text}");
            stored_ids.push((id, sha));
        }
        if injected() > 0 {
            break;
        }
    }
    trace.assert_hit("EIO on syncfs in 5 rounds of 48 concurrent uploads");
    assert!(rx.is_running(), "the receiver died of an EIO");
    let index = stored(&rx);
    for (id, sha) in &stored_ids {
        assert_eq!(index.get(id), Some(sha), "acknowledged {id} is not indexed");
    }
    assert!(temp_files(&rx).is_empty(), "temp files left behind");
    assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
}

/// Incident 3: a transient EIO while SQLite commits (fdatasync) or while the
/// receiver opens the index must never leave the database out of WAL, and
/// must never be acknowledged.
#[test]
fn incident3_transient_eio_never_downgrades_wal() {
    const TEST: &str = "incident3_transient_eio_never_downgrades_wal";
    if ferry_tests::lacks("strace", TEST) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::start_in(data.path(), &[]);
    rx.allow(COMMIT_A, true);
    let token = rx.add_device("wal");
    rx.kill9();
    let db = data.path().join("index.sqlite");
    let db_s = db.to_str().unwrap().to_string();

    // 1. EIO on the first opens and reads of the database file. Refusing
    // to start on a database it cannot read is acceptable, if it exits by
    // itself (not hung, not killed); serving is too, if the PUT gets an
    // honest answer. Changing the journal mode is not. Either way the
    // fault must have landed.
    for inject in [
        "inject=openat:error=EIO:when=1..2",
        "inject=pread64:error=EIO:when=1..3",
    ] {
        let trace = Strace::new();
        let wrapper = trace.wrapper(&["-P", &db_s, "-e", inject]);
        match rx.try_spawn("127.0.0.1:0", &wrapper) {
            Ok(()) => {
                let body = ferry_tests::sample_archive(&format!("wal-{}", inject.len()), 5);
                let r = rx.put(&token, &format!("wal-{}", inject.len()), COMMIT_A, &body);
                assert!(
                    matches!(r.status, 201 | 500 | 503 | 507),
                    "{}: {}",
                    r.status,
                    r.text()
                );
            }
            Err(e) => assert!(
                e.contains("exit: Ok(") && !e.contains("signal"),
                "{inject}: the receiver neither served nor exited by itself: {e}"
            ),
        }
        rx.kill9();
        trace.assert_hit(&format!("{inject} on index.sqlite"));
        if let Some(mode) = ferry_tests::journal_mode(&db, TEST) {
            assert_eq!(mode, "wal", "journal mode after {inject}");
        }
    }

    // 2. EIO on SQLite's commit syncs of the write-ahead log (fsync or
    // fdatasync, whichever this SQLite build uses): not acknowledged, then
    // it clears. strace counts `when=` per thread, so each connection's
    // thread fails its first three syncs: allow for several failed attempts.
    let wal = data.path().join("index.sqlite-wal");
    let wal_eio = "inject=fsync,fdatasync:error=EIO:when=1..3";
    let trace = receiver_under_strace(&mut rx, wal.to_str().unwrap(), &[wal_eio]);
    let body = ferry_tests::sample_archive("wal-commit", 6);
    let sha = sha256_hex(&body);
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let r = put_episode(rx.addr, &token, "wal-commit", COMMIT_A, &sha, &body);
        statuses.push(r.status);
        if matches!(r.status, 200 | 201) {
            break;
        }
        assert!(r.status >= 500, "{}: {}", r.status, r.text());
    }
    assert!(
        matches!(statuses.last(), Some(200 | 201)),
        "never stored: {statuses:?}"
    );
    assert!(
        statuses[0] >= 500,
        "the injected EIO on the WAL sync was never hit: {statuses:?}"
    );
    // A second process (the CLI) agrees with the server about the database.
    let list = rx.cli_ok(["episodes", "list", "--json"]);
    assert!(list.contains("wal-commit"), "{list}");
    rx.kill9();
    trace.assert_hit("EIO on the WAL's sync under an upload");

    // 3. The same fault under the admin API's writes: refused with a JSON
    // reason until it clears, and a failed write never leaves its
    // connection holding the write lock (the CLI, another process, can
    // still write while the server runs).
    let trace = receiver_under_strace(&mut rx, wal.to_str().unwrap(), &[wal_eio]);
    let admin = format!("Bearer {}", rx.admin_token);
    let a = [
        ("Authorization", admin.as_str()),
        ("Content-Type", "application/json"),
    ];
    let mut statuses = Vec::new();
    for _ in 0..40 {
        let r = rx.request(
            "POST",
            "/v1/admin/commits",
            &a,
            format!("{{\"commit\":\"{COMMIT_B}\"}}").as_bytes(),
        );
        statuses.push(r.status);
        if r.status == 201 {
            break;
        }
        assert!(r.status >= 500, "{}: {}", r.status, r.text());
        assert!(r.json()["status"].is_string(), "{}", r.text());
    }
    assert_eq!(statuses.last(), Some(&201), "never allowed: {statuses:?}");
    assert!(
        statuses[0] >= 500,
        "the injected EIO on the WAL sync was never hit: {statuses:?}"
    );
    assert_ok(
        &rx.cli(["commits", "allow", &"c".repeat(40)]),
        "a CLI write while the server runs",
    );
    let list = rx.cli_ok(["commits", "list", "--json"]);
    assert!(
        list.contains(COMMIT_B) && list.contains(&"c".repeat(40)),
        "{list}"
    );
    rx.kill9();
    trace.assert_hit("EIO on the WAL's sync under an admin write");
    if let Some(mode) = ferry_tests::journal_mode(&db, TEST) {
        assert_eq!(mode, "wal", "journal mode after EIO on fdatasync");
    }
}

/// Run a shell snippet as root, returning whether it worked.
fn sh(script: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(script)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A real EUCLEAN: an ext4 image with a spool on it, one file's extent
/// header damaged with debugfs. That episode is quarantined naming the file;
/// every other episode ships.
#[test]
fn real_euclean_on_damaged_ext4_costs_one_episode() {
    for tool in ["mkfs.ext4", "debugfs", "mount", "umount"] {
        if !have(tool) {
            skip(
                "real_euclean_on_damaged_ext4_costs_one_episode",
                &format!("{tool} is not installed (apt-get install e2fsprogs)"),
            );
            return;
        }
    }
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let token = rx.add_device("ext4");
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("spool.img");
    let mnt = work.path().join("mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    let (img_s, mnt_s) = (img.to_str().unwrap(), mnt.to_str().unwrap());
    assert!(
        sh(&format!(
            "truncate -s 64M {img_s} && mkfs.ext4 -q -F {img_s}"
        )),
        "mkfs.ext4"
    );
    if !sh(&format!("mount -o loop {img_s} {mnt_s}")) {
        skip(
            "real_euclean_on_damaged_ext4_costs_one_episode",
            "cannot loop-mount an image here (no loop devices or not root)",
        );
        return;
    }
    let spool = Spool::with_token(&rx.url, &token);
    // Build the spool on the image: episodes written by a "producer".
    let on_img = mnt.join("spool");
    for sub in ["episodes", "outbox", "shipped", "quarantine", "conflict"] {
        std::fs::create_dir_all(on_img.join(sub)).unwrap();
    }
    let ids: Vec<String> = (0..4).map(|i| format!("ok-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        ferry_tests::make_episode(
            &on_img,
            id,
            Some(COMMIT_A),
            &[("data.bin", &ferry_tests::noise(i as u64, 40_000))],
        );
    }
    ferry_tests::make_episode(
        &on_img,
        "damaged",
        Some(COMMIT_A),
        &[("data.bin", &ferry_tests::noise(9, 40_000))],
    );
    assert!(sh(&format!("umount {mnt_s}")), "umount");
    // Damage the extent header of the damaged episode's data file.
    assert!(
        sh(&format!("debugfs -w -R 'sif /spool/episodes/damaged/data.bin block[0] 0x12345' {img_s} 2>/dev/null")),
        "debugfs"
    );
    assert!(sh(&format!("mount -o loop {img_s} {mnt_s}")), "remount");
    let guard = Unmount(mnt_s.to_string());

    let out = Command::new(ferry_tests::bin("ferry-agent"))
        .args(["drain", "--spool"])
        .arg(&on_img)
        .args(["--receiver", &rx.url, "--token-file"])
        .arg(&spool.token_file)
        .args(["--timeout", "120s"])
        .env("FERRY_AGENT_SCAN_INTERVAL", "100ms")
        .output()
        .expect("drain");
    assert_ok(&out, "drain on the damaged image");
    let quarantined: Vec<String> = std::fs::read_dir(on_img.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(quarantined, vec!["damaged".to_string()]);
    let reason =
        std::fs::read_to_string(on_img.join("quarantine/damaged/quarantine_reason.json")).unwrap();
    assert!(reason.contains("data.bin"), "{reason}");
    assert!(
        reason.contains("EUCLEAN")
            || reason.contains("117")
            || reason.contains("Structure needs cleaning"),
        "{reason}"
    );
    let index = stored(&rx);
    for id in &ids {
        assert!(index.contains_key(id), "{id} not stored");
    }
    drop(guard);
}

struct Unmount(String);
impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// A real full disk under the agent's spool (a small tmpfs): the tarball
/// does not fit, which is transient — nothing is quarantined, no partial
/// file is left, and once space is freed the episode ships.
#[test]
fn agent_spool_on_a_full_tmpfs_backs_off_and_recovers() {
    const TEST: &str = "agent_spool_on_a_full_tmpfs_backs_off_and_recovers";
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let token = rx.add_device("tmpfs");
    let mnt = tempfile::tempdir().unwrap();
    let m = mnt.path().to_str().unwrap().to_string();
    if !sh(&format!("mount -t tmpfs -o size=6m tmpfs {m}")) {
        skip(TEST, "cannot mount a tmpfs here (not root?)");
        return;
    }
    let _guard = Unmount(m.clone());
    let spool_dir = mnt.path().join("spool");
    for sub in ["episodes", "outbox", "shipped", "quarantine", "conflict"] {
        std::fs::create_dir_all(spool_dir.join(sub)).unwrap();
    }
    // 3.5 MB that does not compress: the episode fits, its tarball does not.
    ferry_tests::make_episode(
        &spool_dir,
        "big",
        Some(COMMIT_A),
        &[("camera.raw", &ferry_tests::noise(1, 3_500_000))],
    );
    let token_file = mnt
        .path()
        .join("..")
        .join(format!("tmpfs-token-{}", std::process::id()));
    std::fs::write(&token_file, &token).unwrap();
    let drain = |timeout: &str| {
        Command::new(ferry_tests::bin("ferry-agent"))
            .args(["drain", "--spool"])
            .arg(&spool_dir)
            .args(["--receiver", &rx.url, "--token-file"])
            .arg(&token_file)
            .args(["--timeout", timeout])
            .env("FERRY_AGENT_SCAN_INTERVAL", "100ms")
            .env("FERRY_AGENT_BACKOFF_MAX", "300ms")
            .output()
            .expect("drain")
    };
    let full = drain("4s");
    let stderr = String::from_utf8_lossy(&full.stderr).to_string();
    assert!(
        !full.status.success(),
        "drain claimed success on a full disk"
    );
    assert!(
        stderr.contains("ENOSPC") || stderr.contains("No space left"),
        "{stderr}"
    );
    let listing = |sub: &str| -> Vec<String> {
        std::fs::read_dir(spool_dir.join(sub))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    assert_eq!(
        listing("quarantine"),
        Vec::<String>::new(),
        "quarantined for a full disk"
    );
    assert_eq!(listing("episodes"), vec!["big".to_string()]);
    assert_eq!(
        listing("outbox"),
        Vec::<String>::new(),
        "a partial tarball was left on the full disk"
    );

    // Space is freed.
    assert!(sh(&format!("mount -o remount,size=32m {m}")), "remount");
    assert_ok(&drain("60s"), "drain after space was freed");
    assert_eq!(listing("shipped"), vec!["big".to_string()]);
    assert!(stored(&rx).contains_key("big"));
    let _ = std::fs::remove_file(&token_file);
}
