//! Fuzz the parsers that see untrusted input first: episode ids, commits
//! and digests as they arrive in paths and headers, and answer bodies as the
//! agent reads them. Properties, not just "does not crash": a parsed id is
//! one safe path component, and a parsed answer round-trips.
#![no_main]

use ferry_proto::{decide, Commit, EpisodeId, Outcome, Reply, Sha256, Strikes};
use libfuzzer_sys::fuzz_target;

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
});
