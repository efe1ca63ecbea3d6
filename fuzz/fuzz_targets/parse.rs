//! Fuzz the parsers that see untrusted input first: episode ids, commits
//! and digests as they arrive in paths and headers, `Retry-After` and
//! answer bodies as the agent reads them, and the agent's tar walker over
//! a tarball someone else may have put in its outbox. Properties, not just
//! "does not crash": a parsed id is one safe path component, a parsed
//! answer round-trips, a `Retry-After` is plain digits, and a tarball
//! passes only as an archive of the episode, hashed whole.
#![no_main]

use ferry_proto::{decide, headers, Commit, EpisodeId, Outcome, Reply, Sha256, Strikes};
use libfuzzer_sys::fuzz_target;
use sha2::Digest;

#[path = "../../agent/src/pack/archive.rs"]
#[allow(dead_code)]
mod archive;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(id) = EpisodeId::parse(s) {
            let id = id.as_str();
            assert!(!id.contains('/') && !id.contains('\\') && !id.contains('\0'));
            assert!(id != "." && id != ".." && !id.starts_with('.'));
            assert!(id.len() <= EpisodeId::MAX_LEN);
        }
        if let Ok(c) = Commit::parse(s) {
            assert_eq!(c.as_str().len(), 40);
        }
        if let Ok(d) = Sha256::parse(s) {
            assert_eq!(d.as_str().len(), 64);
        }
        let _ = Commit::parse_lenient(s);
    }
    if let Some(d) = headers::parse_retry_after(data) {
        let digits = data.trim_ascii();
        assert!(!digits.is_empty() && digits.iter().all(u8::is_ascii_digit));
        // Up to 19 digits always fit in a u64; longer ones may saturate.
        if digits.len() < 20 {
            let n: u64 = std::str::from_utf8(digits).unwrap().parse().unwrap();
            assert_eq!(d.as_secs(), n);
        }
    }
    if let Ok(r) = serde_json::from_slice::<Reply>(data) {
        let back = serde_json::to_vec(&r).expect("serialise");
        let again: Reply = serde_json::from_slice(&back).expect("round trip");
        assert_eq!(r, again);
        let _ = decide(
            Outcome::Answered {
                status: r.http_status(),
                reply: Some(&r),
                retry_after: None,
            },
            Strikes::default(),
        );
    }
    if let Ok(c) = archive::check(data, "ep", None, &|| false) {
        assert_eq!(c.size, data.len() as u64);
        assert_eq!(c.digest, <[u8; 32]>::from(sha2::Sha256::digest(data)));
    }
});
