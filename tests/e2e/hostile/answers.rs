//! Class 7: answers from the receiver are not trusted either: not its
//! `Retry-After`, not a 200/201 that does not name the episode.

use std::process::Output;
use std::time::{Duration, Instant};

use ferry_tests::Spool;
use serde_json::json;

use crate::agent::{fake, small, Fake, Script};

fn reply(status: u16, retry_after: Option<&str>, body: serde_json::Value) -> Script {
    Script::Answer {
        status,
        headers: retry_after
            .map(|v| ("Retry-After".to_string(), v.to_string()))
            .into_iter()
            .collect(),
        body: body.to_string(),
    }
}

/// `Retry-After: 18446744073709551615` panicked the upload task ("overflow
/// when adding duration to instant"), and a huge finite value closed the
/// backoff gate for years. Both are capped at `backoff_max` (SPEC §3).
#[test]
fn an_absurd_retry_after_is_capped_never_a_panic() {
    let f = fake(|n| match n {
        0 => reply(
            503,
            Some("18446744073709551615"),
            json!({"status": "overloaded"}),
        ),
        // A huge finite value, and the same in the JSON body.
        1 => reply(
            429,
            Some("999999999"),
            json!({"status": "overloaded", "retry_after_secs": u64::MAX}),
        ),
        _ => Script::Stored,
    });
    let spool = Spool::with_token(&f.url, "tok");
    small(&spool, "s", 1);
    let t0 = Instant::now();
    let out = spool
        .agent("drain")
        .args(["--timeout", "40s"])
        .env("FERRY_AGENT_BACKOFF_MAX", "1s")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(f.puts().len(), 3, "{err}");
    assert_eq!(spool.ids_in("shipped"), ["s"], "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "{:?}: {err}",
        t0.elapsed()
    );
}

/// A captive portal's or a misconfigured proxy's page, answered 200.
fn portal_page() -> Script {
    Script::Answer {
        status: 200,
        headers: vec![("Content-Type".into(), "text/html".into())],
        body: "<!doctype html><html><body>Please log in to the guest Wi-Fi</body></html>".into(),
    }
}

/// A 201 `stored` of another episode (a receiver or proxy mixing answers).
fn stored_elsewhere() -> Script {
    reply(
        201,
        None,
        json!({"status": "stored", "episode_id": "another", "sha256": "a".repeat(64), "size": 1}),
    )
}

/// A drain of one episode, `s`, shipped to `f` with a short back-off: the
/// spool, the exit and the log.
fn drain_one(f: &Fake, timeout: &str) -> (Spool, Output, String) {
    let spool = Spool::with_token(&f.url, "tok");
    small(&spool, "s", 1);
    let out = spool
        .agent("drain")
        .args(["--timeout", timeout])
        .env("FERRY_AGENT_BACKOFF_MAX", "300ms")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (spool, out, err)
}

/// The agent retired an episode on any 200/201: a captive portal's page or
/// an answer about another episode moved it to `shipped/` and deleted its
/// tarball, though it never reached the receiver. Such an answer is
/// transient (SPEC §2/§3: only `stored`/`already-present` naming the
/// episode's id and sha256 retires it): the episode stays in `episodes/`,
/// its tarball in the outbox, and it is retried, with a WARN saying why.
#[test]
fn a_2xx_that_does_not_name_the_episode_never_retires_it() {
    let f = fake(|n| {
        if n % 2 == 0 {
            portal_page()
        } else {
            stored_elsewhere()
        }
    });
    let (spool, out, err) = drain_one(&f, "4s");
    assert_eq!(out.status.code(), Some(1), "still pending: {err}");
    assert_eq!(spool.ids_in("episodes"), ["s"], "{err}");
    assert!(spool.ids_in("shipped").is_empty(), "{err}");
    assert_eq!(spool.ids_in("outbox"), ["s.tar.zst"], "{err}");
    assert!(f.puts().len() >= 2, "retried: {err}");
    assert!(
        err.contains("200 (unparsed answer) is not trusted")
            && err.contains("Please log in to the guest Wi-Fi"),
        "{err}"
    );
    assert!(
        err.contains(r#"201 stored is not trusted: it names another episode, "another""#),
        "{err}"
    );
}

/// Every kind of 2xx that is not the receiver's word about this episode
/// (a HTML page, another id, another sha256, no body) is retried; the
/// receiver's own `stored` then retires it.
#[test]
fn an_untrusted_2xx_is_retried_until_the_receiver_confirms() {
    let f = fake(|n| match n {
        0 => portal_page(),
        1 => stored_elsewhere(),
        2 => reply(
            200,
            None,
            json!({"status": "already-present", "episode_id": "s", "sha256": "b".repeat(64), "size": 1}),
        ),
        3 => Script::Answer {
            status: 201,
            headers: Vec::new(),
            body: String::new(),
        },
        _ => Script::Stored,
    });
    let (spool, out, err) = drain_one(&f, "60s");
    assert!(out.status.success(), "{err}");
    let puts = f.puts();
    assert_eq!(puts.len(), 5, "{err}");
    let sha = puts[0].header("x-ferry-sha256");
    assert!(puts.iter().all(|p| p.header("x-ferry-sha256") == sha));
    assert!(err.contains("it names another sha256"), "{err}");
    assert_eq!(spool.ids_in("shipped"), ["s"], "{err}");
    assert!(spool.ids_in("episodes").is_empty() && spool.ids_in("outbox").is_empty());
}
