//! SPEC §3, row by row: what the agent does with each answer. The real
//! receiver gives every answer it can; a scripted raw server stands in for
//! the ones a correct receiver never gives on demand (digest mismatch,
//! 503 with Retry-After, a 400 of our own choosing).

use std::time::Duration;

use ferry_tests::{assert_ok, pack_sha, stored, Receiver, Spool, COMMIT_A, COMMIT_B};
use serde_json::json;

use super::{answer, episode, fake, outbox, read_json, reason, small, text, Daemon, Script};

#[test]
fn row_201_and_200_retire_and_delete_the_tarball() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "retire");
    let dir = small(&spool, "ep-201", 1);
    let want = pack_sha(&dir);
    let out = spool.drain("60s");
    assert_ok(&out, "drain");
    assert_eq!(spool.ids_in("shipped"), ["ep-201"]);
    assert!(spool.ids_in("episodes").is_empty());
    assert!(
        outbox(&spool).is_empty(),
        "tarball not deleted: {:?}",
        outbox(&spool)
    );
    assert_eq!(
        stored(&rx)["ep-201"],
        want,
        "stored digest is the deterministic pack"
    );

    // The same episode again (a producer re-delivering it): 200
    // already-present, retired again, stored once.
    std::fs::rename(
        spool.path().join("shipped/ep-201"),
        spool.path().join("episodes/ep-201"),
    )
    .unwrap();
    let out = spool.drain("60s");
    assert_ok(&out, "second drain");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("200 already-present"),
        "{}",
        text(&out)
    );
    assert_eq!(spool.ids_in("shipped"), ["ep-201"]);
    assert!(spool.ids_in("episodes").is_empty() && outbox(&spool).is_empty());
    assert_eq!(stored(&rx).len(), 1);
}

#[test]
fn row_409_moves_to_conflict_and_stops_shipping_it() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "conflict");
    small(&spool, "ep-409", 1);
    assert_ok(&spool.drain("60s"), "first drain");
    let theirs = stored(&rx)["ep-409"].clone();
    // Same id, other bytes.
    let dir = small(&spool, "ep-409", 2);
    let ours = pack_sha(&dir);
    assert_ne!(ours, theirs);
    // Nothing is left pending, but this drain parked an episode: exit 1,
    // saying how many.
    let out = spool.drain("60s");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("1 episode(s) parked in conflict/"),
        "{}",
        text(&out)
    );
    assert_eq!(spool.ids_in("conflict"), ["ep-409"]);
    assert!(spool.ids_in("episodes").is_empty() && outbox(&spool).is_empty());
    let c = read_json(&spool.path().join("conflict/ep-409/conflict.json"));
    assert_eq!(c["episode_id"], "ep-409");
    assert_eq!(c["sha256"], ours.as_str());
    assert_eq!(c["existing_sha256"], theirs.as_str());
    assert_eq!(c["commit"], COMMIT_A);
    assert!(c["at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(
        stored(&rx)["ep-409"],
        theirs,
        "the receiver's copy is untouched"
    );
    // Not shipped again by itself (a drain that parks nothing exits 0),
    // and doctor shows it.
    assert_ok(&spool.drain("60s"), "third drain");
    assert_eq!(spool.ids_in("conflict"), ["ep-409"]);
    let out = spool.agent("doctor").arg("--json").output().unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    assert_eq!(v["counts"]["conflicts"], 1, "{v}");
    let row = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "conflicts")
        .unwrap();
    assert_ne!(row["status"], "ok", "{row}");
    assert!(row["fix"].as_str().is_some(), "{row}");
}

#[test]
fn row_412_quarantines_logs_once_and_requeues_when_allowed() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "rejected");
    episode(&spool, "old-1", Some(COMMIT_B), 1);
    episode(&spool, "old-2", Some(COMMIT_B), 2);
    small(&spool, "fine", 3);
    let mut d = Daemon::start(
        &spool,
        &[
            ("FERRY_AGENT_RECHECK_INTERVAL", "1s"),
            ("FERRY_AGENT_SCAN_INTERVAL", "200ms"),
        ],
    );
    ferry_tests::until(
        "both quarantined",
        || d.log(),
        || spool.ids_in("quarantine") == ["old-1", "old-2"],
    );
    let r = reason(&spool, "old-1");
    assert_eq!(r["status_code"], 412, "{r}");
    assert_eq!(r["commit"], COMMIT_B, "{r}");
    assert_eq!(r["kind"], "commit-rejected", "{r}");
    assert!(!r["remediation"].as_str().unwrap_or("").is_empty(), "{r}");
    assert!(
        r["quarantined_at_wall"].as_str().unwrap().ends_with('Z'),
        "{r}"
    );
    assert!(stored(&rx).contains_key("fine"));
    // Logged once at ERROR with the remediation, not once per episode.
    let log = d.log();
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("412"))
        .count();
    assert_eq!(errors, 1, "{log}");
    // The receiver allows the commit: re-queued and shipped by itself.
    rx.allow(COMMIT_B, false);
    ferry_tests::until(
        "re-queued and shipped",
        || d.log(),
        || {
            let s = stored(&rx);
            s.contains_key("old-1") && s.contains_key("old-2")
        },
    );
    ferry_tests::until("retired", || d.log(), || spool.ids_in("shipped").len() == 3);
    assert!(spool.ids_in("quarantine").is_empty());
    assert!(d.sigterm(Duration::from_secs(30)).success());
}

#[test]
fn row_412_quarantine_retry_by_hand() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "retry");
    episode(&spool, "by-hand", Some(COMMIT_B), 1);
    assert_ok(&spool.drain("60s"), "drain quarantines");
    assert_eq!(spool.ids_in("quarantine"), ["by-hand"]);
    rx.allow(COMMIT_B, false);
    assert_ok(
        &spool
            .agent("quarantine")
            .args(["retry", "by-hand"])
            .output()
            .unwrap(),
        "retry",
    );
    assert!(
        !spool
            .path()
            .join("episodes/by-hand/quarantine_reason.json")
            .exists(),
        "the reason file would be packed"
    );
    assert_ok(&spool.drain("60s"), "drain ships");
    let dir = spool.path().join("shipped/by-hand");
    assert_eq!(stored(&rx)["by-hand"], pack_sha(&dir));
}

#[test]
fn row_400_digest_mismatch_repacks_and_quarantines_after_three() {
    // Always a mismatch: three packs and uploads, then quarantine.
    let f = fake(|_| {
        answer(
            400,
            json!({"status": "bad-request", "error": "digest-mismatch", "detail": "sha256 differs"}),
        )
    });
    let spool = Spool::with_token(&f.url, "tok");
    small(&spool, "flaky", 1);
    let out = spool.drain("60s");
    assert_ok(&out, "drain");
    assert_eq!(f.puts().len(), 3, "{}", text(&out));
    assert!(f.puts().iter().all(|h| h.path == "/v1/episodes/flaky"));
    assert_eq!(spool.ids_in("quarantine"), ["flaky"]);
    let r = reason(&spool, "flaky");
    assert_eq!(r["kind"], "repeated-digest-mismatch", "{r}");
    assert_eq!(r["status_code"], 400);
    assert_eq!(r["attempts"], 3);
    assert!(outbox(&spool).is_empty());

    // One mismatch, then stored: re-packed to the same bytes and retired.
    let f = fake(|n| match n {
        0 => answer(
            400,
            json!({"status": "bad-request", "error": "digest-mismatch", "detail": "x"}),
        ),
        _ => Script::Stored,
    });
    let spool = Spool::with_token(&f.url, "tok");
    small(&spool, "once", 1);
    let out = spool
        .agent("drain")
        .arg("--timeout")
        .arg("60s")
        .env("RUST_LOG", "ferry_agent=debug")
        .output()
        .unwrap();
    assert_ok(&out, "drain");
    let puts = f.puts();
    assert_eq!(puts.len(), 2);
    assert_eq!(
        puts[0].header("x-ferry-sha256"),
        puts[1].header("x-ferry-sha256")
    );
    let packs = String::from_utf8_lossy(&out.stderr)
        .matches(" packed")
        .count();
    assert_eq!(packs, 2, "deleted and re-packed: {}", text(&out));
    assert_eq!(spool.ids_in("shipped"), ["once"]);
}

#[test]
fn row_other_400_413_and_other_4xx_quarantine_with_the_reason() {
    // 413 from the real receiver.
    let data = tempfile::tempdir().unwrap();
    let rx = Receiver::start_in(data.path(), &[("FERRY_RECEIVER_MAX_EPISODE_SIZE", "1024")]);
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "big");
    super::episode(&spool, "big", Some(COMMIT_A), 1);
    std::fs::write(
        spool.path().join("episodes/big/more.bin"),
        ferry_tests::noise(9, 64 << 10),
    )
    .unwrap();
    assert_ok(&spool.drain("60s"), "drain");
    assert_eq!(spool.ids_in("quarantine"), ["big"]);
    let r = reason(&spool, "big");
    assert_eq!(r["status_code"], 413, "{r}");
    assert_eq!(r["body"]["status"], "too-large", "{r}");
    assert!(r["error"].as_str().unwrap().contains("too-large"), "{r}");

    // A 400 malformed-body and a 422 from a scripted server.
    let f = fake(|n| match n {
        0 => answer(
            400,
            json!({"status": "bad-request", "error": "malformed-body", "detail": "not a tar"}),
        ),
        _ => answer(422, json!({"status": "unprocessable"})),
    });
    let spool = Spool::with_token(&f.url, "tok");
    small(&spool, "a-400", 1);
    small(&spool, "b-422", 2);
    let out = spool
        .agent("drain")
        .arg("--timeout")
        .arg("60s")
        .env("FERRY_AGENT_SHIP_CONCURRENCY", "1")
        .output()
        .unwrap();
    assert_ok(&out, "drain");
    assert_eq!(
        spool.ids_in("quarantine"),
        ["a-400", "b-422"],
        "{}",
        text(&out)
    );
    // The scripted answers go by arrival order, which two uploads in
    // flight do not fix: check them as a pair.
    let (a, b) = (reason(&spool, "a-400"), reason(&spool, "b-422"));
    let (r400, r422) = if a["status_code"] == 400 {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(r400["status_code"], 400, "{r400}");
    assert!(
        r400["error"].as_str().unwrap().contains("malformed-body"),
        "{r400}"
    );
    assert_eq!(r422["status_code"], 422, "{r422}");
    assert_eq!(r422["kind"], "refused", "{r422}");
    assert_eq!(f.puts().len(), 2, "each tried once");
}

#[test]
fn row_401_403_never_quarantine_and_say_how_to_fix() {
    let _load = ferry_tests::gap_sensitive();
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    // 401: an unknown token.
    let spool = Spool::with_token(&rx.url, "fry_not_a_token");
    small(&spool, "ep-401", 1);
    let out = spool.drain("3s");
    assert_eq!(out.status.code(), Some(1), "pending remain: {}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("devices add"), "{err}");
    assert!(
        err.contains(&spool.token_file.display().to_string()),
        "{err}"
    );
    assert_eq!(
        err.matches("refuses this device").count(),
        1,
        "ERROR once per interval: {err}"
    );
    // Over more than one interval (backoff_max 1 s, a 4.5 s drain): logged
    // at ERROR again each interval, yet not on every attempt.
    let again = Spool::with_token(&rx.url, "fry_not_a_token_either");
    small(&again, "ep-401b", 3);
    let out = again
        .agent("drain")
        .args(["--timeout", "4500ms"])
        .env("FERRY_AGENT_BACKOFF_MAX", "1s")
        .env("RUST_LOG", "ferry_agent=debug")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let log = String::from_utf8_lossy(&out.stderr);
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("refuses this device"))
        .collect();
    let errors = refusals.iter().filter(|l| l.contains("ERROR")).count();
    assert!(
        (2..=6).contains(&errors),
        "{errors} ERROR lines in 4.5 s at one per 1 s interval: {log}"
    );
    assert!(
        refusals.len() > errors,
        "every attempt was an ERROR ({errors} of {}): {log}",
        refusals.len()
    );
    assert!(spool.ids_in("quarantine").is_empty());
    assert_eq!(spool.ids_in("episodes"), ["ep-401"]);
    assert_eq!(outbox(&spool), ["ep-401.tar.zst"], "tarball kept");
    // doctor names the failing row and the fix.
    let d = spool.agent("doctor").output().unwrap();
    assert_eq!(d.status.code(), Some(1), "{}", text(&d));
    let dout = String::from_utf8_lossy(&d.stdout);
    assert!(
        dout.contains("FAIL") && dout.contains("devices add"),
        "{dout}"
    );
    // Fixed token file: picked up, shipped.
    let token = rx.add_device("now-known");
    std::fs::write(&spool.token_file, format!("{token}\n")).unwrap();
    assert_ok(&spool.drain("60s"), "drain with the right token");
    assert_eq!(spool.ids_in("shipped"), ["ep-401"]);

    // 403: a revoked device.
    let spool = Spool::new(&rx, "revoked");
    small(&spool, "ep-403", 2);
    rx.cli_ok(["devices", "revoke", "revoked"]);
    let out = spool.drain("3s");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("403"),
        "{}",
        text(&out)
    );
    assert!(spool.ids_in("quarantine").is_empty());
    assert_eq!(spool.ids_in("episodes"), ["ep-403"]);
}

#[test]
fn row_transient_answers_back_off_keep_the_tarball_and_honour_retry_after() {
    let ra = |status: u16| Script::Answer {
        status,
        headers: vec![("Retry-After".into(), "2".into())],
        body: json!({"status": "overloaded", "retry_after_secs": 2, "detail": "busy"}).to_string(),
    };
    let f = fake(move |n| match n {
        0 => ra(503),
        1 => ra(429),
        2 => answer(
            507,
            json!({"status": "insufficient-storage", "detail": "full"}),
        ),
        3 => answer(500, json!({"status": "internal", "detail": "oops"})),
        4 => answer(408, json!({"status": "request-timeout", "detail": "slow"})),
        _ => Script::Stored,
    });
    let spool = Spool::with_token(&f.url, "tok");
    small(&spool, "t", 1);
    let out = spool
        .agent("drain")
        .arg("--timeout")
        .arg("60s")
        .env("FERRY_AGENT_BACKOFF_MAX", "3s")
        .env("FERRY_AGENT_SCAN_INTERVAL", "100ms")
        .env("RUST_LOG", "ferry_agent=debug")
        .output()
        .unwrap();
    assert_ok(&out, "drain");
    let puts = f.puts();
    assert_eq!(puts.len(), 6, "{}", text(&out));
    // Retry-After (2s) is a floor, above the jitter; one above backoff_max
    // is capped at it (SPEC §3; hostile::answers).
    for i in 0..2 {
        let gap = puts[i + 1].at - puts[i].at;
        assert!(gap >= Duration::from_millis(1900), "gap {i}: {gap:?}");
    }
    // The tarball was kept: packed once, the same bytes every time.
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches(" packed").count(), 1, "{err}");
    assert!(puts
        .iter()
        .all(|p| p.header("x-ferry-sha256") == puts[0].header("x-ferry-sha256")));
    assert!(spool.ids_in("quarantine").is_empty());
    assert_eq!(spool.ids_in("shipped"), ["t"]);
}

#[test]
fn row_network_error_is_transient_and_the_tarball_waits() {
    let mut rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "net");
    small(&spool, "net-1", 1);
    rx.kill9();
    let out = spool.drain("3s");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    // It failed for the reason under test: the connection, transient.
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("transient") && err.to_lowercase().contains("connect"),
        "{}",
        text(&out)
    );
    assert_eq!(spool.ids_in("episodes"), ["net-1"]);
    assert_eq!(outbox(&spool), ["net-1.tar.zst"]);
    assert!(spool.ids_in("quarantine").is_empty());
    rx.restart();
    assert_ok(&spool.drain("60s"), "drain once the receiver is back");
    assert_eq!(spool.ids_in("shipped"), ["net-1"]);
    assert!(outbox(&spool).is_empty());
}

#[test]
fn row_disk_full_is_transient_and_never_quarantines() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "quota");
    small(&spool, "q-1", 1);
    let partial = spool.path().join("outbox/q-1.tar.zst.partial");
    let Some((mut cmd, trace)) = super::strace_drain(
        "row_disk_full_is_transient_and_never_quarantines",
        &spool,
        "3s",
        &[
            "-P",
            partial.to_str().unwrap(),
            "-e",
            "inject=write:error=EDQUOT",
        ],
    ) else {
        return;
    };
    let out = cmd
        .env("FERRY_AGENT_BACKOFF_MAX", "300ms")
        .output()
        .unwrap();
    trace.assert_hit("EDQUOT on the outbox partial");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("EDQUOT"),
        "{}",
        text(&out)
    );
    assert!(spool.ids_in("quarantine").is_empty());
    assert_eq!(spool.ids_in("episodes"), ["q-1"]);
    assert_ok(&spool.drain("60s"), "drain with space");
    assert_eq!(spool.ids_in("shipped"), ["q-1"]);
}

#[test]
fn no_commit_is_quarantined_locally_without_shipping() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "nocommit");
    episode(&spool, "no-commit", None, 1);
    episode(&spool, "bad-commit", Some("not-a-commit"), 2);
    // Upper case and whitespace are accepted.
    episode(
        &spool,
        "upper",
        Some(&format!("  {}\n", COMMIT_A.to_uppercase())),
        3,
    );
    let out = spool.drain("60s");
    assert_ok(&out, "drain");
    assert_eq!(spool.ids_in("quarantine"), ["bad-commit", "no-commit"]);
    for id in ["bad-commit", "no-commit"] {
        let r = reason(&spool, id);
        assert_eq!(r["status_code"], serde_json::Value::Null, "{r}");
        assert_eq!(r["kind"], "no-commit", "{r}");
        assert!(r["error"].as_str().unwrap().contains("meta.json"), "{r}");
    }
    assert_eq!(stored(&rx).keys().collect::<Vec<_>>(), ["upper"]);
}

#[test]
fn invalid_names_are_skipped_reported_and_never_shipped() {
    let rx = Receiver::start();
    rx.allow(COMMIT_A, true);
    let spool = Spool::new(&rx, "names");
    small(&spool, "good", 1);
    small(&spool, "bad name", 2);
    small(&spool, "-dash", 3);
    let out = spool.drain("60s");
    assert_ok(&out, "drain");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"bad name\"") && err.contains("\"-dash\""),
        "{err}"
    );
    assert_eq!(stored(&rx).keys().collect::<Vec<_>>(), ["good"]);
    assert_eq!(spool.ids_in("episodes"), ["-dash", "bad name"]);
}

/// `request_timeout` is an idle timeout: an upload that stops moving is
/// abandoned after it (a network error: retried, never quarantined), while
/// a slow upload that keeps moving may take far longer than it.
#[test]
fn request_timeout_is_a_stall_timeout_not_a_total() {
    let f = fake(|n| match n {
        0 => Script::Hang,
        _ => Script::Stored,
    });
    let spool = Spool::with_token(&f.url, "tok");
    let dir = small(&spool, "s", 1);
    std::fs::write(dir.join("big.bin"), ferry_tests::noise(6, 24 << 20)).unwrap();
    let out = spool
        .agent("drain")
        .args(["--timeout", "120s"])
        .env("FERRY_AGENT_REQUEST_TIMEOUT", "2s")
        .env("FERRY_AGENT_BACKOFF_MAX", "300ms")
        .env("FERRY_AGENT_BANDWIDTH_LIMIT", "4MiB")
        .output()
        .unwrap();
    assert_ok(&out, "drain");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stalled"), "{err}");
    let puts = f.puts();
    assert_eq!(puts.len(), 2, "{err}");
    // The second upload took longer than request_timeout and was not cut.
    assert!(puts[1].body_len > 24 << 20, "{err}");
    let took = puts[1].at - puts[1].started;
    assert!(took > std::time::Duration::from_secs(3), "{took:?}");
    assert!(spool.ids_in("quarantine").is_empty());
    assert_eq!(spool.ids_in("shipped"), ["s"]);
}
