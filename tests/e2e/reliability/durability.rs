//! Durability order, read off a real syscall trace: every state change of
//! the agent is fsync(file) → rename → fsync(dir). The receiver's is the
//! batched form of the same order (see `receiver/src/store/commit.rs`):
//! syncfs → the file's own writeback error read → rename → syncfs → index
//! commit synced → 201.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

use ferry_tests::{assert_ok, put_episode, sha256_hex, Receiver, Spool, COMMIT_A};

use super::small_episode;

/// One completed syscall from an `strace -f -y` log.
#[derive(Debug, Clone)]
enum Call {
    /// fsync or fdatasync of the file or directory at this path.
    Sync(String),
    /// syncfs of the file system holding this path.
    SyncFs(String),
    /// sync_file_range with SYNC_FILE_RANGE_WAIT_BEFORE (the writeback
    /// error state of this file is read).
    RangeWait(String),
    Rename {
        from: String,
        to: String,
    },
    /// A write to a TCP socket; the text is what strace showed of the data.
    SocketWrite(String),
}

/// Parse an `strace -f -y -o FILE` log into completed calls, in order of
/// completion (an `<unfinished ...>` call is joined with its resumption).
fn parse_trace(path: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(path).expect("trace file");
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut calls = Vec::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(char::is_whitespace) else {
            continue;
        };
        let rest = rest.trim_start();
        let full = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if rest.starts_with("<...") {
            let tail = rest.split_once("resumed>").map(|x| x.1).unwrap_or("");
            match pending.remove(pid) {
                Some(head) => format!("{head}{tail}"),
                None => continue,
            }
        } else {
            rest.to_string()
        };
        // strace pads the result column, so find it from the right; a
        // failed call (`= -1 EIO ...`) changed nothing.
        match full.rsplit_once(" = ") {
            Some((_, result)) if !result.trim_start().starts_with('-') => {}
            _ => continue,
        }
        if full.starts_with("fsync(") || full.starts_with("fdatasync(") {
            if let Some(p) = between(&full, '<', '>') {
                calls.push(Call::Sync(p));
            }
        } else if full.starts_with("syncfs(") {
            if let Some(p) = between(&full, '<', '>') {
                calls.push(Call::SyncFs(p));
            }
        } else if full.starts_with("sync_file_range(")
            && full.contains("SYNC_FILE_RANGE_WAIT_BEFORE")
        {
            if let Some(p) = between(&full, '<', '>') {
                calls.push(Call::RangeWait(p));
            }
        } else if full.starts_with("rename") {
            // rename("a", "b"), or renameat(3</dir>, "a", 3</dir>, "b"):
            // a relative name is joined to the directory strace shows for
            // its descriptor (`-y`).
            let quoted: Vec<&str> = full.split('"').collect();
            if quoted.len() >= 4 {
                let at = |before: &str, name: &str| match before.rfind('<') {
                    Some(i) if !name.starts_with('/') => {
                        let dir = &before[i + 1..];
                        format!("{}/{name}", dir.split('>').next().unwrap_or(dir))
                    }
                    _ => name.to_string(),
                };
                calls.push(Call::Rename {
                    from: at(quoted[0], quoted[1]),
                    to: at(quoted[2], quoted[3]),
                });
            }
        } else if (full.starts_with("write") || full.starts_with("send")) && full.contains("TCP:") {
            calls.push(Call::SocketWrite(full));
        }
    }
    calls
}

fn between(s: &str, open: char, close: char) -> Option<String> {
    let a = s.find(open)? + 1;
    let b = s[a..].find(close)? + a;
    Some(s[a..b].to_string())
}

fn sync_of(
    calls: &[Call],
    range: std::ops::Range<usize>,
    pred: impl Fn(&str) -> bool,
) -> Option<usize> {
    calls[range.clone()]
        .iter()
        .position(|c| matches!(c, Call::Sync(p) if pred(p)))
        .map(|i| i + range.start)
}

fn rename_of(calls: &[Call], pred: impl Fn(&str, &str) -> bool) -> usize {
    calls
        .iter()
        .position(|c| matches!(c, Call::Rename { from, to } if pred(from, to)))
        .unwrap_or_else(|| panic!("no matching rename in the trace: {calls:#?}"))
}

/// Assert: the file `from` is synced before the rename at `r`, and the
/// directory `dir` is synced after it.
fn assert_file_rename_dir(calls: &[Call], r: usize, from: &str, dir: &str, what: &str) {
    assert!(
        sync_of(calls, 0..r, |p| p == from).is_some(),
        "{what}: no fsync of {from} before its rename: {calls:#?}"
    );
    assert!(
        sync_of(calls, r..calls.len(), |p| p == dir).is_some(),
        "{what}: no fsync of directory {dir} after the rename: {calls:#?}"
    );
}

const TRACED: &str = "trace=fsync,fdatasync,syncfs,sync_file_range,rename,renameat,renameat2,write,writev,sendto,sendmsg";

#[test]
fn agent_state_changes_are_fsync_rename_fsync_dir() {
    if ferry_tests::lacks("strace", "agent_state_changes_are_fsync_rename_fsync_dir") {
        return;
    }
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "durability");
    small_episode(&spool, "dur-1", 7);
    let trace = spool
        .path()
        .join("..")
        .join(format!("agent-trace-{}", std::process::id()));
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "48", "-e", TRACED, "-o"])
        .arg(&trace)
        .args(spool.drain_cmd_args("60s"))
        .output()
        .expect("strace ferry-agent drain");
    assert_ok(&out, "drain under strace");
    let calls = parse_trace(&trace);
    let _ = std::fs::remove_file(&trace);
    let root = std::fs::canonicalize(spool.path()).unwrap();
    let root = root.to_str().unwrap();

    // Pack: outbox/<id>.tar.zst.partial → outbox/<id>.tar.zst.
    let partial = format!("{root}/outbox/dur-1.tar.zst.partial");
    let r = rename_of(&calls, |f, t| {
        f.ends_with("outbox/dur-1.tar.zst.partial") && t.ends_with("outbox/dur-1.tar.zst")
    });
    assert_file_rename_dir(&calls, r, &partial, &format!("{root}/outbox"), "pack");

    // Retire: episodes/<id> → shipped/<id>, then both directories synced.
    let r = rename_of(&calls, |f, t| {
        f.ends_with("episodes/dur-1") && t.ends_with("shipped/dur-1")
    });
    for dir in ["shipped", "episodes"] {
        let d = format!("{root}/{dir}");
        assert!(
            sync_of(&calls, r..calls.len(), |p| p == d).is_some(),
            "retire: no fsync of {d} after the rename: {calls:#?}"
        );
    }
}

#[test]
fn receiver_acknowledges_only_after_object_and_index_are_durable() {
    if ferry_tests::lacks(
        "strace",
        "receiver_acknowledges_only_after_object_and_index_are_durable",
    ) {
        return;
    }
    let data = tempfile::tempdir().unwrap();
    let mut rx = Receiver::start_in(data.path(), &[]);
    rx.allow(COMMIT_A, true);
    let token = rx.add_device("durability");
    rx.kill9();
    let trace = data.path().join("trace.txt");
    let wrapper: Vec<String> = ["strace", "-f", "-yy", "-qq", "-s", "48", "-e", TRACED, "-o"]
        .iter()
        .map(|s| s.to_string())
        .chain([trace.display().to_string()])
        .collect();
    rx.try_spawn("127.0.0.1:0", &wrapper)
        .expect("receiver under strace");
    let body = ferry_tests::sample_archive("dur-rx", 3);
    let sha = sha256_hex(&body);
    let r = put_episode(rx.addr, &token, "dur-rx", COMMIT_A, &sha, &body);
    assert_eq!(r.status, 201, "{}", r.text());
    // SIGTERM to the receiver under strace: it shuts down gracefully and
    // strace, its last tracee gone, flushes its log and exits (a SIGKILL
    // would lose the buffered tail).
    let children = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", rx.pid()))
        .expect("children of strace");
    for pid in children.split_whitespace() {
        ferry_tests::signal(pid.parse().unwrap(), libc::SIGTERM);
    }
    ferry_tests::wait_for("strace to exit", || (!rx.is_running()).then_some(()));
    rx.kill9();

    let calls = parse_trace(&trace);
    let root = std::fs::canonicalize(data.path()).unwrap();
    let root = root.to_str().unwrap().to_string();
    let r = rename_of(&calls, |_, t| t.ends_with(&sha));
    let Call::Rename { from, to } = calls[r].clone() else {
        unreachable!()
    };
    let obj_dir = Path::new(&to)
        .parent()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        to.starts_with(&format!("{root}/objects/")),
        "object outside objects/: {to}"
    );
    // The upload's batch makes it durable (receiver/src/store/commit.rs):
    // a batch this small fsyncs the file, renames it and fsyncs its
    // directory; a large batch uses syncfs of the store's file system, then
    // reads the file's own writeback error, renames, and syncfs again.
    let tmp = format!("{root}/tmp");
    let syncfs = |range: std::ops::Range<usize>| {
        calls[range.clone()]
            .iter()
            .position(|c| matches!(c, Call::SyncFs(p) if *p == tmp))
            .map(|i| i + range.start)
    };
    let file_synced = sync_of(&calls, 0..r, |p| p == from).is_some()
        || syncfs(0..r).is_some_and(|s| {
            calls[s..r]
                .iter()
                .any(|c| matches!(c, Call::RangeWait(p) if *p == from))
        });
    assert!(
        file_synced,
        "object store: {from} was not made durable before its rename: {calls:#?}"
    );
    let dir_sync = [
        sync_of(&calls, r..calls.len(), |p| p == obj_dir),
        syncfs(r..calls.len()),
    ]
    .into_iter()
    .flatten()
    .min()
    .unwrap_or_else(|| panic!("no sync of {obj_dir} after the rename: {calls:#?}"));
    let answer = calls
        .iter()
        .position(|c| matches!(c, Call::SocketWrite(t) if t.contains("HTTP/1.1 201")))
        .unwrap_or_else(|| panic!("no 201 written to the socket: {calls:#?}"));
    assert!(
        dir_sync < answer,
        "201 sent before the object's new name was synced"
    );
    let wal = sync_of(&calls, dir_sync..answer, |p| {
        p.ends_with("index.sqlite-wal") || p.ends_with("index.sqlite")
    });
    assert!(
        wal.is_some(),
        "201 sent without a sync of the index between the object's rename and the answer: {calls:#?}"
    );
}
