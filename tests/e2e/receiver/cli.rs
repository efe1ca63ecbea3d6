//! The admin command line: output shapes, exit codes, configuration errors,
//! and changes made while `serve` runs being in force within a second.

use std::process::Command;
use std::time::{Duration, Instant};

use ferry_tests::{bin, sample_archive, stored, Receiver, COMMIT_A, COMMIT_B};

use super::{expect, object_files};

/// Polls `f` until the change is in force, then asserts the SPEC's bound
/// (in force within a second) on what the probes prove: a probe *sent* more
/// than a second after the change and still refused is a broken bound. The
/// time of the first accepted answer is not the measure: it includes the
/// PUT's own latency, which on a busy 2-core machine is no part of the
/// bound (and `start`, read after the CLI returned, is already late).
fn within_a_second(what: &str, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    let mut last_refused = None;
    loop {
        let sent = start.elapsed();
        if f() {
            break;
        }
        last_refused = Some(sent);
        assert!(
            start.elapsed() < ferry_tests::DEADLINE,
            "{what}: never in force"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if let Some(t) = last_refused {
        assert!(
            t < Duration::from_secs(1),
            "{what}: a probe sent {t:?} after the change was still refused"
        );
    }
}

#[test]
fn changes_made_by_the_cli_while_serving_are_in_force_within_a_second() {
    let _load = ferry_tests::gap_sensitive();
    let rx = Receiver::start();
    let token = rx.add_device("dev");
    let body = sample_archive("live-1", 1);
    expect(
        &rx.put(&token, "live-1", COMMIT_A, &body),
        412,
        "commit-rejected",
    );

    rx.allow(COMMIT_A, true);
    within_a_second("commits allow", || {
        rx.put(&token, "live-1", COMMIT_A, &body).status == 201
    });

    rx.cli_ok(["commits", "revoke", COMMIT_A]);
    let body2 = sample_archive("live-2", 2);
    within_a_second("commits revoke", || {
        rx.put(&token, "live-2", COMMIT_A, &body2).status == 412
    });

    rx.allow(COMMIT_A, false);
    rx.cli_ok(["devices", "revoke", "dev"]);
    within_a_second("devices revoke", || {
        rx.put(&token, "live-2", COMMIT_A, &body2).status == 403
    });

    let token2 = rx.add_device("dev2");
    within_a_second("devices add", || {
        rx.put(&token2, "live-2", COMMIT_A, &body2).status == 201
    });
}

#[test]
fn devices_add_prints_only_the_token_and_lists_show_state() {
    let rx = Receiver::start();
    let out = rx.cli(["devices", "add", "robot-7"]);
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    let token = stdout.trim();
    assert!(token.starts_with("fry_") && token.len() == 68, "{token}");
    // The token is stored only as a hash.
    let db = std::fs::read(rx.data_dir.join("index.sqlite")).unwrap();
    let wal = std::fs::read(rx.data_dir.join("index.sqlite-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "token stored in clear"
        );
    }
    // A second device of the same name is refused.
    assert_eq!(rx.cli(["devices", "add", "robot-7"]).status.code(), Some(1));
    // Names are one safe token.
    assert_eq!(rx.cli(["devices", "add", "../x"]).status.code(), Some(2));

    let list: serde_json::Value =
        serde_json::from_str(&rx.cli_ok(["devices", "list", "--json"])).unwrap();
    assert_eq!(list[0]["name"], "robot-7");
    assert_eq!(list[0]["revoked"], false);
    // Options before the subcommand's arguments work too.
    rx.cli_ok([
        "--data-dir",
        rx.data_dir.to_str().unwrap(),
        "devices",
        "revoke",
        "robot-7",
    ]);
    let list: serde_json::Value =
        serde_json::from_str(&rx.cli_ok(["devices", "list", "--json"])).unwrap();
    assert_eq!(list[0]["revoked"], true);
    assert!(rx.cli_ok(["devices", "list"]).contains("robot-7"));
    assert_eq!(
        rx.cli(["devices", "revoke", "nobody"]).status.code(),
        Some(1)
    );
}

#[test]
fn commits_allow_head_note_revoke_and_list() {
    let rx = Receiver::start();
    rx.cli_ok([
        "commits",
        "allow",
        COMMIT_A,
        "--head",
        "--note",
        "release 1",
    ]);
    // Upper case from a human is folded.
    rx.cli_ok(["commits", "allow", &COMMIT_B.to_uppercase(), "--head"]);
    let list: serde_json::Value =
        serde_json::from_str(&rx.cli_ok(["commits", "list", "--json"])).unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let heads: Vec<_> = list.iter().filter(|c| c["head"] == true).collect();
    assert_eq!(heads.len(), 1, "exactly one head: {list:?}");
    assert_eq!(heads[0]["commit"], COMMIT_B);
    let a = list.iter().find(|c| c["commit"] == COMMIT_A).unwrap();
    assert_eq!(a["note"], "release 1");
    assert!(a["allowed_at"].as_str().unwrap().ends_with('Z'));
    assert!(rx.cli_ok(["commits", "list"]).contains(COMMIT_A));

    rx.cli_ok(["commits", "revoke", COMMIT_B]);
    assert_eq!(
        rx.cli(["commits", "revoke", COMMIT_B]).status.code(),
        Some(1)
    );
    assert_eq!(
        rx.cli(["commits", "allow", "not-a-commit"]).status.code(),
        Some(2)
    );
}

#[test]
fn episodes_list_and_verify_name_every_damaged_object() {
    let rx = Receiver::start();
    let token = rx.ready_device("dev");
    for i in 0..3 {
        let id = format!("v-{i}");
        expect(
            &rx.put(&token, &id, COMMIT_A, &sample_archive(&id, i)),
            201,
            "stored",
        );
    }
    let out = rx.cli(["episodes", "verify"]);
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("3 ok"),
        "{out:?}"
    );
    let text = rx.cli_ok(["episodes", "list"]);
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(
        text.lines().all(|l| l.starts_with("dev/v-")),
        "DEVICE/ID: {text}"
    );

    let index = stored(&rx);
    let path_of = |id: &str| {
        let sha = &index[id];
        ferry_tests::object_path(&rx.data_dir, sha)
    };
    // One flipped byte, one missing object.
    let p0 = path_of("v-0");
    let mut bytes = std::fs::read(&p0).unwrap();
    bytes[10] ^= 0xff;
    std::fs::write(&p0, bytes).unwrap();
    std::fs::remove_file(path_of("v-1")).unwrap();

    let out = rx.cli(["episodes", "verify"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("dev/v-0") && stdout.contains("MISMATCH"),
        "{stdout}"
    );
    assert!(
        stdout.contains(p0.to_str().unwrap()),
        "names the path: {stdout}"
    );
    assert!(
        stdout.contains("v-1") && stdout.contains("MISSING"),
        "{stdout}"
    );
    assert!(!stdout.contains("v-2:"), "{stdout}");
    // Only the given episodes, named DEVICE/ID (or by the id alone, which
    // one device stored here).
    assert!(rx.cli(["episodes", "verify", "dev/v-2"]).status.success());
    assert!(rx.cli(["episodes", "verify", "v-2"]).status.success());
    assert_eq!(
        rx.cli(["episodes", "verify", "dev/v-0"]).status.code(),
        Some(1)
    );
    for (name, code) in [
        ("dev/nope", 1),
        ("other/v-2", 1),
        ("nope", 1),
        ("dev/", 2),
        ("a/b/c", 2),
    ] {
        let out = rx.cli(["episodes", "verify", name]);
        assert_eq!(out.status.code(), Some(code), "{name}: {out:?}");
    }
    assert_eq!(object_files(&rx).len(), 2);
}

#[test]
fn devices_rename_keeps_token_and_episodes_and_lists_filter_by_device() {
    let rx = Receiver::start();
    let token = rx.ready_device("host-7");
    let other = rx.add_device("host-8");
    let body = sample_archive("ep-0001", 1);
    expect(&rx.put(&token, "ep-0001", COMMIT_A, &body), 201, "stored");
    expect(
        &rx.put(&other, "ep-0001", COMMIT_A, &sample_archive("ep-0001", 2)),
        201,
        "stored",
    );
    let list = |dev: &str| -> serde_json::Value {
        serde_json::from_str(&rx.cli_ok(["episodes", "list", "--device", dev, "--json"])).unwrap()
    };
    assert_eq!(list("host-7")[0]["device"], "host-7");
    assert_eq!(list("host-7").as_array().unwrap().len(), 1);
    assert_eq!(
        rx.cli(["episodes", "list", "--device", "nope"])
            .status
            .code(),
        Some(1)
    );

    // The host was re-imaged as lab-7: same token file, same episodes.
    let out = rx.cli(["devices", "rename", "host-7", "lab-7"]);
    ferry_tests::assert_ok(&out, "devices rename");
    assert_eq!(list("lab-7")[0]["episode_id"], "ep-0001");
    assert_eq!(
        rx.cli(["episodes", "list", "--device", "host-7"])
            .status
            .code(),
        Some(1)
    );
    expect(
        &rx.put(&token, "ep-0001", COMMIT_A, &body),
        200,
        "already-present",
    );
    let devices: serde_json::Value =
        serde_json::from_str(&rx.cli_ok(["devices", "list", "--json"])).unwrap();
    assert_eq!(devices[0]["name"], "host-8");
    assert_eq!(
        (&devices[1]["name"], &devices[1]["episodes"]),
        (&"lab-7".into(), &1.into())
    );
    ferry_tests::assert_ok(&rx.cli(["episodes", "verify", "lab-7/ep-0001"]), "verify");
    // Two devices stored ep-0001: the id alone is ambiguous, and the error
    // names both.
    let out = rx.cli(["episodes", "verify", "ep-0001"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("host-8/ep-0001") && err.contains("lab-7/ep-0001"),
        "{err}"
    );
    // Taken, unknown, unchanged and malformed names.
    for (old, new, code) in [
        ("lab-7", "host-8", 1),
        ("host-7", "x", 1),
        ("lab-7", "lab-7", 2),
        ("lab-7", "a b", 2),
    ] {
        let out = rx.cli(["devices", "rename", old, new]);
        assert_eq!(out.status.code(), Some(code), "{old} → {new}: {out:?}");
    }
}

fn receiver(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = Command::new(bin("ferry-receiver"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FERRY_RECEIVER_") {
            cmd.env_remove(k);
        }
    }
    cmd.args(args).envs(env.iter().copied()).output().unwrap()
}

#[test]
fn bad_usage_and_bad_configuration_exit_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert_eq!(receiver(&["frobnicate"], &[]).status.code(), Some(2));
    assert_eq!(receiver(&["commits", "allow"], &[]).status.code(), Some(2));

    let out = receiver(
        &["commits", "list", "--data-dir", d],
        &[("FERRY_RECEIVER_MAX_EPISODE_SIZE", "huge")],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("max_episode_size"), "{err}");

    let cfg = dir.path().join("receiver.toml");
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nbody_read_timeout = \"soon\"\n",
    )
    .unwrap();
    let out = receiver(
        &["serve", "--config", cfg.to_str().unwrap(), "--data-dir", d],
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("body_read_timeout"));

    std::fs::write(&cfg, "no_such_key = 1\n").unwrap();
    let out = receiver(&["devices", "list", "--config", cfg.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no_such_key"));

    // An admin token file that does not exist is a configuration error.
    let out = receiver(
        &["serve", "--data-dir", d, "--listen", "127.0.0.1:0"],
        &[(
            "FERRY_RECEIVER_ADMIN_TOKEN_FILE",
            "/nonexistent/admin.token",
        )],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("admin_token_file"));
}

#[test]
fn the_config_file_env_and_flags_layer_in_that_order() {
    let dir = tempfile::tempdir().unwrap();
    let file_dir = dir.path().join("from-file");
    let env_dir = dir.path().join("from-env");
    let flag_dir = dir.path().join("from-flag");
    let cfg = dir.path().join("receiver.toml");
    std::fs::write(&cfg, format!("data_dir = \"{}\"\n", file_dir.display())).unwrap();
    let c = cfg.to_str().unwrap();
    receiver(&["devices", "add", "a", "--config", c], &[]);
    assert!(file_dir.join("index.sqlite").exists());
    receiver(
        &["devices", "add", "a", "--config", c],
        &[("FERRY_RECEIVER_DATA_DIR", env_dir.to_str().unwrap())],
    );
    assert!(env_dir.join("index.sqlite").exists());
    receiver(
        &[
            "devices",
            "add",
            "a",
            "--config",
            c,
            "--data-dir",
            flag_dir.to_str().unwrap(),
        ],
        &[("FERRY_RECEIVER_DATA_DIR", env_dir.to_str().unwrap())],
    );
    assert!(flag_dir.join("index.sqlite").exists());
}

#[test]
fn the_shipped_example_config_is_valid() {
    let cfg = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/receiver.toml");
    let dir = tempfile::tempdir().unwrap();
    let out = receiver(
        &[
            "commits",
            "list",
            "--config",
            cfg,
            "--data-dir",
            dir.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
