//! The command lines of SPEC §5 that need no daemon: pack, status, doctor,
//! quarantine, and the exit codes for usage and configuration errors.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, UNIX_EPOCH};

use ferry_tests::{assert_ok, bin, noise, pack_sha, Receiver, Spool, COMMIT_A, COMMIT_B};

use super::{episode, small, text};

fn build(dir: &Path, reverse: bool) {
    let mut files: Vec<(&str, Vec<u8>)> = vec![
        (
            "meta.json",
            format!("{{\"code_version\":{{\"commit\":\"{COMMIT_A}\"}}}}").into_bytes(),
        ),
        ("cam/0001.bin", noise(1, 300_000)),
        ("cam/0002.bin", noise(2, 100_000)),
        ("log.txt", b"hello\n".repeat(10_000)),
        ("cam/run.sh", b"#!/bin/sh\n".to_vec()),
        ("done.marker", Vec::new()),
    ];
    if reverse {
        files.reverse();
    }
    for (rel, data) in &files {
        let p = dir.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, data).unwrap();
        fs::File::options()
            .write(true)
            .open(&p)
            .unwrap()
            .set_modified(UNIX_EPOCH + Duration::from_secs(1_750_000_000))
            .unwrap();
    }
    // An executable (0700 → 0755 in the archive), a private file (0600 →
    // 0644) and a symlink inside the episode (kept as a symlink).
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(dir.join("log.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(dir.join("cam/run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink("cam/0002.bin", dir.join("latest")).unwrap();
}

#[test]
fn pack_is_deterministic_whatever_the_order_or_the_path() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("x/ep-det");
    let b = t.path().join("somewhere/else/entirely/ep-det");
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    build(&a, false);
    build(&b, true);
    let out_file = t.path().join("a.tar.zst");
    let out = Command::new(bin("ferry-agent"))
        .arg("pack")
        .arg(&a)
        .arg("-o")
        .arg(&out_file)
        .output()
        .unwrap();
    assert_ok(&out, "pack");
    let printed = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert_eq!(
        printed,
        ferry_tests::sha256_file(&out_file),
        "prints the sha256 of the file"
    );
    assert_eq!(
        printed,
        pack_sha(&b),
        "same bytes from another order and path"
    );
    assert!(!t.path().join("a.tar.zst.partial").exists());
    // Unpacked by the system's tools it is the episode, byte for byte, with
    // normalised modes and the mtimes kept; and its owners are zeroed.
    ferry_tests::assert_archive_is_episode(&out_file, &a, "pack_is_deterministic (archive)");
    if !ferry_tests::lacks("zstd", "pack_is_deterministic (owners)") {
        let l = Command::new("sh")
            .arg("-c")
            .arg("zstd -dc \"$1\" | tar -tvf -")
            .arg("sh")
            .arg(&out_file)
            .output()
            .unwrap();
        assert_ok(&l, "zstd | tar -t");
        let listing = String::from_utf8_lossy(&l.stdout);
        assert!(
            listing.lines().all(|l| l.contains(" 0/0 ")),
            "owners zeroed: {listing}"
        );
    }
    // Usage errors.
    let out = Command::new(bin("ferry-agent"))
        .arg("pack")
        .arg(&a)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = Command::new(bin("ferry-agent"))
        .arg("pack")
        .arg(t.path().join("nope"))
        .args(["-o", "/dev/null"])
        .output()
        .unwrap();
    assert_ne!(out.status.code(), Some(0), "{}", text(&out));
}

#[test]
fn config_and_usage_errors_exit_2_naming_the_key() {
    let t = tempfile::tempdir().unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        Command::new(bin("ferry-agent"))
            .args(args)
            .env("FERRY_AGENT_SPOOL", t.path())
            .envs(env.iter().copied())
            .output()
            .unwrap()
    };
    let out = run(&["status"], &[("FERRY_AGENT_ZSTD_LEVEL", "99")]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("zstd_level"),
        "{}",
        text(&out)
    );
    let cfg = t.path().join("agent.toml");
    fs::write(&cfg, "request_timeout = \"forever\"\n").unwrap();
    let out = run(&["status", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("request_timeout"),
        "{}",
        text(&out)
    );
    fs::write(&cfg, "spoool = \"/x\"\n").unwrap();
    let out = run(&["--config", cfg.to_str().unwrap(), "status"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("spoool"),
        "{}",
        text(&out)
    );
    assert_eq!(run(&[], &[]).status.code(), Some(2));
    assert_eq!(run(&["frobnicate"], &[]).status.code(), Some(2));
    assert_eq!(
        run(&["quarantine", "retry", "../etc"], &[]).status.code(),
        Some(2)
    );
    // The example config parses and is all defaults.
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/agent.toml");
    assert_ok(
        &run(&["status", "--config", example.to_str().unwrap()], &[]),
        "status with the example config",
    );
}

#[test]
fn status_and_quarantine_list_show_retry_purge() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "qcli");
    small(&spool, "ok-1", 1);
    episode(&spool, "rej-1", Some(COMMIT_B), 2);
    episode(&spool, "rej-2", Some(COMMIT_B), 3);
    episode(&spool, "nocommit", None, 4);
    assert_ok(&spool.drain("60s"), "drain");

    let out = spool.agent("status").arg("--json").output().unwrap();
    assert_ok(&out, "status --json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["counts"]["shipped"], 1, "{v}");
    assert_eq!(v["counts"]["pending"], 0, "{v}");
    assert_eq!(v["counts"]["quarantined"], 3, "{v}");
    assert_eq!(
        v["counts"]["quarantine_by_reason"]["commit-rejected"], 2,
        "{v}"
    );
    assert_eq!(v["counts"]["quarantine_by_reason"]["no-commit"], 1, "{v}");
    assert_ok(&spool.agent("status").output().unwrap(), "status");

    let out = spool
        .agent("quarantine")
        .args(["list", "--json"])
        .output()
        .unwrap();
    assert_ok(&out, "quarantine list --json");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["episode_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["nocommit", "rej-1", "rej-2"]);
    let out = spool.agent("quarantine").arg("list").output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("commit-rejected"),
        "{}",
        text(&out)
    );

    let out = spool
        .agent("quarantine")
        .args(["show", "rej-1"])
        .output()
        .unwrap();
    assert_ok(&out, "show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["status_code"], 412);
    assert_eq!(
        spool
            .agent("quarantine")
            .args(["show", "ok-1"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(1)
    );

    // Purge one; retry the others with --all; a second retry fails.
    assert_ok(
        &spool
            .agent("quarantine")
            .args(["purge", "nocommit"])
            .output()
            .unwrap(),
        "purge",
    );
    assert_eq!(spool.ids_in("quarantine"), ["rej-1", "rej-2"]);
    rx.allow(COMMIT_B, false);
    // Options after the arguments work too.
    let mut c = Command::new(bin("ferry-agent"));
    c.args(["quarantine", "retry", "--all", "--spool"])
        .arg(spool.path());
    assert_ok(&c.output().unwrap(), "retry --all");
    assert_eq!(spool.ids_in("episodes"), ["rej-1", "rej-2"]);
    assert_eq!(
        spool
            .agent("quarantine")
            .args(["retry", "rej-1"])
            .output()
            .unwrap()
            .status
            .code(),
        Some(1)
    );
    assert_ok(&spool.drain("60s"), "drain after retry");
    assert_eq!(spool.ids_in("shipped"), ["ok-1", "rej-1", "rej-2"]);
}

#[test]
fn doctor_passes_on_a_healthy_device_and_names_the_fix_otherwise() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "doc");
    small(&spool, "ok", 1);
    let out = spool.agent("doctor").output().unwrap();
    assert_ok(&out, "doctor on a healthy device");
    // A pending episode whose commit is not allowed: a failing row with
    // the command that fixes it.
    episode(&spool, "new-code", Some(COMMIT_B), 2);
    let out = spool.agent("doctor").arg("--json").output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], false);
    let row = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "commits allowed")
        .unwrap()
        .clone();
    assert_eq!(row["status"], "fail", "{row}");
    assert!(
        row["fix"]
            .as_str()
            .unwrap()
            .contains(&format!("ferry-receiver commits allow {COMMIT_B}")),
        "{row}"
    );
    assert_eq!(v["counts"]["pending"], 2, "{v}");
    // An unreachable receiver.
    let dead = Spool::with_token("http://127.0.0.1:9", "x");
    let out = dead.agent("doctor").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("ferry-receiver serve"),
        "{}",
        text(&out)
    );
    // Every failing row says how to fix it.
    let out = dead.agent("doctor").arg("--json").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    for c in v["checks"].as_array().unwrap() {
        if c["status"] == "fail" {
            assert!(c["fix"].as_str().is_some_and(|f| !f.is_empty()), "{c}");
        }
    }
}
