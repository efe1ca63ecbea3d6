//! Crash at any instant: random `kill -9` of either program while episodes
//! ship, and deterministic crash points at every rename and fsync of one
//! ship (strace `inject=…:signal=SIGKILL:when=N`).

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ferry_tests::{
    assert_ok, put_episode, sha256_hex, signal, stored, temp_files, wait_exit, Receiver, Spool,
    Strace, COMMIT_A,
};

use super::{assert_delivered, small_episode, start_agent};

/// xorshift64: a seeded, reproducible sequence of choices.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// Seeded random faults while a few hundred episodes ship from several
/// devices: kill -9 of an agent or of the receiver, a graceful restart of
/// either, and receiver outages of a few seconds. `FERRY_SEED` picks the
/// seed; `FERRY_SOAK=1h` runs for that long with 8 devices, adding episodes
/// as it goes, and reports shipped, faults by kind, lost and duplicated.
#[test]
fn random_kill9_of_agent_and_receiver_loses_and_duplicates_nothing() {
    let seed: u64 = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_f00d);
    let soak: Option<Duration> = std::env::var("FERRY_SOAK").ok().map(|s| parse_duration(&s));
    eprintln!("random crash test: FERRY_SEED={seed} soak={soak:?}");
    let mut rng = Rng(seed | 1);

    let mut rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let n_devices = if soak.is_some() { 8 } else { 2 };
    let logs = tempfile::tempdir().unwrap();
    struct Device {
        spool: Spool,
        agent: Child,
        log: std::path::PathBuf,
        ids: Vec<String>,
    }
    let mut devices: Vec<Device> = (0..n_devices)
        .map(|d| {
            let spool = Spool::new(&rx, &format!("crashy-{d}"));
            let log = logs.path().join(format!("agent-{d}.log"));
            let agent = start_agent(&spool, &log);
            Device {
                spool,
                agent,
                log,
                ids: Vec::new(),
            }
        })
        .collect();
    let add = |dev: &mut Device, d: usize, n: usize, rng: &mut Rng| {
        for _ in 0..n {
            let id = format!("ep-{d}-{:06}", dev.ids.len());
            small_episode(&dev.spool, &id, rng.next());
            dev.ids.push(id);
        }
    };
    for (d, dev) in devices.iter_mut().enumerate() {
        add(dev, d, 200 / n_devices, &mut rng);
    }

    // Faults by kind.
    let kinds = [
        "agent kill -9",
        "receiver kill -9",
        "agent SIGTERM restart",
        "receiver SIGTERM restart",
        "receiver outage",
    ];
    let mut faults = [0usize; 5];
    // Faults that landed while work was pending (episodes not yet shipped
    // on some device): a fault on an idle system proves nothing.
    let mut with_work = 0;
    let started = Instant::now();
    // Not a soak: go on until 12 faults landed with work pending (at most
    // 40 faults), so that a fast or a slow machine proves the same.
    const WITH_WORK: usize = 12;
    const MAX_FAULTS: usize = 40;
    for round in 0.. {
        match soak {
            Some(d) if started.elapsed() > d => break,
            None if with_work >= WITH_WORK || round >= MAX_FAULTS => break,
            _ => {}
        }
        // Work keeps arriving before every fault, and the fault follows
        // within a moment, so that it lands while there is some however
        // fast this machine ships.
        {
            let d = rng.below(n_devices as u64) as usize;
            add(
                &mut devices[d],
                d,
                if soak.is_some() { 20 } else { 10 },
                &mut rng,
            );
        }
        std::thread::sleep(Duration::from_millis(20 + rng.below(200)));
        let pending: usize = devices
            .iter()
            .map(|d| d.spool.ids_in("episodes").len())
            .sum();
        if pending > 0 {
            with_work += 1;
        }
        let kind = rng.below(kinds.len() as u64) as usize;
        let d = rng.below(n_devices as u64) as usize;
        match kind {
            0 => {
                let dev = &mut devices[d];
                let _ = dev.agent.kill();
                let _ = dev.agent.wait();
                dev.agent = start_agent(&dev.spool, &dev.log);
            }
            1 => rx.restart(),
            2 => {
                let dev = &mut devices[d];
                // Give a just-started agent time to install its handler,
                // as systemd's start-up would.
                std::thread::sleep(Duration::from_millis(300));
                signal(dev.agent.id(), libc::SIGTERM);
                let st = wait_exit(&mut dev.agent, Duration::from_secs(60));
                assert!(st.success(), "agent exit after SIGTERM: {st}");
                dev.agent = start_agent(&dev.spool, &dev.log);
            }
            3 => {
                let st = rx.sigterm(Duration::from_secs(60));
                assert!(st.success(), "receiver exit after SIGTERM: {st}");
                rx.restart();
            }
            _ => {
                rx.kill9();
                std::thread::sleep(Duration::from_millis(500 + rng.below(2500)));
                rx.restart();
            }
        }
        faults[kind] += 1;
    }

    // Let it finish in peace: stop the daemons, then drain what is left.
    std::thread::sleep(Duration::from_secs(1));
    let mut shipped = 0;
    for dev in &mut devices {
        signal(dev.agent.id(), libc::SIGTERM);
        let st = wait_exit(&mut dev.agent, Duration::from_secs(60));
        assert!(st.success(), "agent exit after SIGTERM: {st}");
        let out = dev.spool.drain("180s");
        if !out.status.success() {
            let tail = std::fs::read_to_string(&dev.log).unwrap_or_default();
            let tail: String = tail.lines().rev().take(40).collect::<Vec<_>>().join("\n");
            panic!(
                "drain failed ({}): {}\nlast agent log lines (newest first):\n{tail}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_delivered(&rx, &dev.spool, &dev.ids);
        shipped += dev.ids.len();
    }
    // Every stored row belongs to an episode of some device: no duplicate,
    // no stray.
    assert_eq!(
        stored(&rx).len(),
        shipped,
        "stored rows differ from shipped episodes"
    );
    // Uploads cut by a receiver kill leave temp files; the restarted
    // receiver sweeps them after it is ready.
    ferry_tests::wait_for("receiver temp files swept", || {
        temp_files(&rx).is_empty().then_some(())
    });
    let total: usize = faults.iter().sum();
    assert!(
        with_work >= WITH_WORK.min(total) && (soak.is_some() || with_work >= WITH_WORK),
        "only {with_work} of {total} faults landed while episodes were pending"
    );
    let by_kind: Vec<String> = kinds
        .iter()
        .zip(faults)
        .map(|(k, n)| format!("{k}: {n}"))
        .collect();
    eprintln!(
        "random crash test: {shipped} episodes from {n_devices} devices shipped once each; \
         faults {} ({with_work} with work pending); 0 lost, 0 duplicated, in {:?}",
        by_kind.join(", "),
        started.elapsed()
    );
}

fn parse_duration(s: &str) -> Duration {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num.parse().expect("FERRY_SOAK like 30m or 1h");
    match unit {
        "s" | "" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        other => panic!("FERRY_SOAK unit {other:?}: use s, m or h"),
    }
}

/// One crash point: the `n`th call of one of `syscalls` (scoped to the
/// calls naming `path`, when given) is replaced by SIGKILL.
///
/// strace counts `when=N` per thread, so an unscoped N walks each thread's
/// own sequence; scoping to a path names the exact state change instead
/// (the object's directory, the write-ahead log, `outbox/<id>.partial`).
#[derive(Debug, Clone)]
struct Point {
    syscalls: &'static str,
    path: Option<String>,
    n: u32,
}

impl Point {
    /// strace's arguments for this point (after `strace -f -qq -o LOG`).
    fn args(&self) -> Vec<String> {
        let mut args: Vec<String> = Vec::new();
        if let Some(p) = &self.path {
            args.push("-P".into());
            args.push(p.clone());
        }
        args.push("-e".into());
        args.push(format!(
            "inject={}:signal=SIGKILL:when={}",
            self.syscalls, self.n
        ));
        args
    }

    /// The strace prefix for this point, logging to `trace`.
    fn strace(&self, trace: &Strace) -> Vec<String> {
        trace.wrapper(&self.args().iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// strace attached to the running process `pid` (every thread), so
    /// that `when=N` counts the calls made from now on: the upload's, not
    /// start-up's. Returns once every thread is traced.
    fn attach(&self, trace: &Strace, pid: u32) -> Child {
        let args = self.args();
        let mut c = trace.command(&args.iter().map(String::as_str).collect::<Vec<_>>());
        let child = c
            .arg("-p")
            .arg(pid.to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("strace -p");
        ferry_tests::wait_for("strace attached to every thread", || {
            let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
            let all = tasks.flatten().all(|t| {
                std::fs::read_to_string(t.path().join("status"))
                    .unwrap_or_default()
                    .lines()
                    .any(|l| {
                        l.starts_with("TracerPid:") && l.split_whitespace().nth(1) != Some("0")
                    })
            });
            all.then_some(())
        });
        child
    }
}

const RENAMES: &str = "rename,renameat,renameat2";
const SYNCS: &str = "fsync,fdatasync";
/// A bound on the unscoped walk per syscall, so CI stays bounded.
const MAX_N: u32 = 12;

/// For every rename and fsync the agent makes along one ship, kill it
/// exactly there; then a clean drain must finish the job with no loss, no
/// false conflict, no quarantine and no orphan.
#[test]
fn agent_killed_at_every_rename_and_fsync_recovers() {
    if ferry_tests::lacks("strace", "agent_killed_at_every_rename_and_fsync_recovers") {
        return;
    }
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "crash-points");
    let root = std::fs::canonicalize(spool.path()).unwrap();
    let at = |rel: &str| Some(root.join(rel).display().to_string());
    let mut ids: Vec<String> = Vec::new();
    let mut seq = 0;
    // Each point ships a new episode; its id is known before the run, so
    // the scoped paths can name it.
    let scopes_for = |id: &str| -> Vec<(&'static str, Option<String>)> {
        vec![
            (SYNCS, at(&format!("outbox/{id}.tar.zst.partial"))),
            // The pack renames relative to its descriptor of outbox/
            // (renameat), which `strace -P` matches by that descriptor's
            // path, not by the partial's.
            (RENAMES, at("outbox")),
            (SYNCS, at("outbox")),
            (RENAMES, at(&format!("episodes/{id}"))),
            (SYNCS, at("shipped")),
            (SYNCS, at("episodes")),
            ("rename", None),
            ("renameat", None),
            ("renameat2", None),
            ("fsync", None),
            ("fdatasync", None),
        ]
    };
    let n_scopes = scopes_for("x").len();
    let mut hit = 0;
    let mut missed: Vec<String> = Vec::new();
    for scope in 0..n_scopes {
        // A scope whose first call was not reached in one drain (a drain
        // that happened to take another path under load) is tried again
        // before it counts as missed; one that is never reached fails.
        let (syscalls, path) = scopes_for("<id>")[scope].clone();
        // The unscoped walk also covers the syscall variants this libc may
        // not use for the agent's renames and syncs (it uses rename and
        // fsync); those need not be reached, nor tried twice.
        let variant = path.is_none() && matches!(syscalls, "renameat" | "renameat2" | "fdatasync");
        let mut scope_hits = 0;
        for attempt in 0..if variant { 1 } else { 2 } {
            if scope_hits > 0 {
                break;
            }
            if attempt > 0 {
                eprintln!("scope {scope}: no call reached; trying again");
            }
            for n in 1..=MAX_N {
                seq += 1;
                let id = format!("cp-{seq:03}");
                small_episode(&spool, &id, seq);
                ids.push(id.clone());
                let (syscalls, path) = scopes_for(&id)[scope].clone();
                let point = Point { syscalls, path, n };
                let trace = Strace::new();
                let mut cmd = Command::new("strace");
                cmd.args(&point.strace(&trace)[1..])
                    .args(spool.drain_cmd_args("60s"));
                let out = cmd.output().expect("strace ferry-agent drain");
                // strace's log, not the exit status, says whether the
                // injected SIGKILL landed; the two must agree.
                let killed = trace.hits() > 0;
                assert_eq!(
                    killed,
                    out.status.code().is_none() || out.status.code() == Some(137),
                    "{point:?}: strace log and exit status ({}) disagree:\n{}",
                    out.status,
                    trace.hit_lines().join("\n")
                );
                // Whatever happened, a clean drain finishes the job.
                let clean = spool.drain("60s");
                assert_ok(&clean, &format!("drain after a kill at {point:?}"));
                assert_delivered(&rx, &spool, &ids);
                if !killed {
                    // No Nth call: every point of this scope has been visited.
                    assert_ok(&out, &format!("drain under strace ({point:?})"));
                    break;
                }
                hit += 1;
                scope_hits += 1;
            }
        }
        if scope_hits == 0 && !variant {
            missed.push(format!("{:?}", (syscalls, path)));
        }
    }
    eprintln!("agent crash points visited: {hit}");
    assert!(
        missed.is_empty(),
        "scopes never hit (is strace injecting?): {missed:?}"
    );
}

/// For every rename and fsync the receiver makes while storing one upload,
/// kill it exactly there; an acknowledged upload survives, an
/// unacknowledged one is accepted again after restart with 201 or 200
/// (never a false 409), and `episodes verify` stays clean.
#[test]
fn receiver_killed_at_every_rename_and_fsync_recovers() {
    if ferry_tests::lacks(
        "strace",
        "receiver_killed_at_every_rename_and_fsync_recovers",
    ) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::start_in(data.path(), &[]);
    rx.allow(COMMIT_A, true);
    let token = rx.add_device("crash-points");
    rx.kill9();
    let root = std::fs::canonicalize(data.path()).unwrap();

    let mut acked: Vec<(String, String)> = Vec::new();
    let mut seq = 0u64;
    let mut hit = 0;
    let mut missed = Vec::new();
    // The scopes depend on the upload's digest (content-addressed object),
    // so each point first makes its archive, then its scopes.
    let scope_count = 7;
    for scope in 0..scope_count {
        let mut scope_hits = 0;
        let mut scope_name = String::new();
        for n in 1..=MAX_N {
            seq += 1;
            let id = format!("rcp-{seq:03}");
            let body = ferry_tests::sample_archive(&id, seq);
            let sha = sha256_hex(&body);
            let object = ferry_tests::object_path(&root, &sha);
            let shard = object.parent().unwrap();
            // No scope names the object for its rename: strace's `-P` did
            // not match that rename here (the scope was never hit, and the
            // walk used to pass without it); the unscoped `rename` walk
            // kills at it instead (one rename per upload).
            let scopes: [(&str, Option<String>); 7] = [
                (SYNCS, Some(shard.display().to_string())),
                (
                    SYNCS,
                    Some(root.join("index.sqlite-wal").display().to_string()),
                ),
                ("rename", None),
                ("renameat", None),
                ("renameat2", None),
                ("fsync", None),
                ("fdatasync", None),
            ];
            let (syscalls, path) = scopes[scope].clone();
            // The syscall variants this libc may not use for the
            // receiver's renames and syncs need not be reached.
            let variant =
                path.is_none() && matches!(syscalls, "renameat" | "renameat2" | "fdatasync");
            scope_name = format!(
                "{syscalls} {path:?}{}",
                if variant { " (variant)" } else { "" }
            );
            let point = Point { syscalls, path, n };
            let trace = Strace::new();
            rx.try_spawn("127.0.0.1:0", &[]).expect("receiver");
            let mut tracer = point.attach(&trace, rx.pid());
            let answer = std::panic::catch_unwind(|| {
                put_episode(rx.addr, &token, &id, COMMIT_A, &sha, &body)
            });
            match answer {
                Ok(r) if r.status == 201 || r.status == 200 => {
                    acked.push((id.clone(), sha.clone()))
                }
                Ok(r) => assert!(
                    r.status >= 500,
                    "{point:?}: unexpected answer {} {}",
                    r.status,
                    r.text()
                ),
                Err(_) => {} // the connection died with the receiver
            }
            std::thread::sleep(Duration::from_millis(50));
            // Only a kill strace logged counts, read before our own kill -9
            // (which strace could log too).
            let killed = trace.hits() > 0;
            if killed {
                assert!(
                    !rx.is_running(),
                    "{point:?}: strace logged a kill, yet it runs"
                );
            }
            rx.kill9();
            let _ = tracer.kill();
            let _ = tracer.wait();

            // Restart cleanly; the upload is either there or can be redone.
            rx.restart();
            let again = put_episode(rx.addr, &token, &id, COMMIT_A, &sha, &body);
            assert!(
                again.status == 201 || again.status == 200,
                "{point:?}: re-upload answered {} {}",
                again.status,
                again.text()
            );
            if acked.iter().any(|(a, _)| a == &id) {
                assert_eq!(
                    again.status, 200,
                    "{point:?}: an acknowledged upload was lost"
                );
            }
            let index = stored(&rx);
            for (a, s) in &acked {
                assert_eq!(index.get(a), Some(s), "{point:?}: acknowledged {a} missing");
            }
            assert_ok(&rx.cli(["episodes", "verify"]), "episodes verify");
            rx.kill9();
            if !killed {
                break;
            }
            hit += 1;
            scope_hits += 1;
        }
        if scope_hits == 0 && !scope_name.ends_with("(variant)") {
            missed.push(scope_name);
        }
    }
    eprintln!("receiver crash points visited while storing: {hit}");
    assert!(
        missed.is_empty(),
        "scopes never hit while storing an upload (is strace injecting?): {missed:?}"
    );
}
