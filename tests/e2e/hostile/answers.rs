//! Class 7: answers from the receiver are not trusted either.

use std::time::{Duration, Instant};

use ferry_tests::Spool;
use serde_json::json;

use crate::agent::{fake, small, Script};

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
        _ => reply(
            201,
            None,
            json!({"status": "stored", "episode_id": "s", "sha256": "x", "size": 1}),
        ),
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
