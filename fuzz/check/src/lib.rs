//! The properties the fuzz target `parse` checks on each input, as plain
//! functions: the workspace builds and tests them (over the seed corpus in
//! `fuzz/corpus/parse`), and the libFuzzer target in `fuzz/` is a shim that
//! calls [`check`]. So the properties cannot rot while the fuzzer, which
//! needs cargo-fuzz, is not run.
//!
//! Properties, not just "does not crash": a parsed id is one safe path
//! component, a parsed commit or digest is lowercase hex of its length, and
//! a parsed answer round-trips and has an action, which retires the episode
//! only when the answer names the episode and sha256 that were sent.

use ferry_proto::{
    decide, headers, Action, Commit, EpisodeId, Outcome, Reply, Sent, Sha256, Strikes,
};

/// Check every property on one input; panics (a fuzzer finding) if one
/// does not hold.
pub fn check(data: &[u8]) {
    if let Ok(s) = std::str::from_utf8(data) {
        check_str(s);
    }
    if let Ok(r) = serde_json::from_slice::<Reply>(data) {
        check_reply(&r);
    }
    check_retry_after(data);
}

/// A `Retry-After` the agent accepts is plain digits, read exactly while it
/// fits (up to 19 digits), saturated beyond.
fn check_retry_after(data: &[u8]) {
    if let Some(d) = headers::parse_retry_after(data) {
        let digits = data.trim_ascii();
        assert!(!digits.is_empty() && digits.iter().all(u8::is_ascii_digit));
        if digits.len() < 20 {
            let n: u64 = std::str::from_utf8(digits).unwrap().parse().unwrap();
            assert_eq!(d.as_secs(), n);
        }
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_str(s: &str) {
    if let Ok(id) = EpisodeId::parse(s) {
        let id = id.as_str();
        assert_eq!(id, s, "an id is the string it was parsed from");
        assert!(!id.contains('/') && !id.contains('\\') && !id.contains('\0'));
        assert!(id != "." && id != ".." && !id.starts_with('.'));
        assert!(id.len() <= EpisodeId::MAX_LEN);
    }
    if let Ok(c) = Commit::parse(s) {
        assert!(is_lower_hex(c.as_str(), 40), "{c:?}");
    }
    if let Ok(d) = Sha256::parse(s) {
        assert!(is_lower_hex(d.as_str(), 64), "{d:?}");
    }
    if let Ok(c) = Commit::parse_lenient(s) {
        assert!(is_lower_hex(c.as_str(), 40), "{c:?}");
        assert_eq!(c.as_str(), s.trim().to_ascii_lowercase());
    }
}

fn check_reply(r: &Reply) {
    let back = serde_json::to_vec(r).expect("serialise");
    let again: Reply = serde_json::from_slice(&back).expect("round trip");
    assert_eq!(r, &again);
    let id = EpisodeId::parse("fuzz-episode").expect("an id");
    let sha = Sha256::parse(&"f".repeat(64)).expect("a digest");
    let sent = Sent {
        episode_id: &id,
        sha256: &sha,
    };
    let action = decide(
        Outcome::Answered {
            status: r.http_status(),
            reply: Some(r),
            retry_after: None,
            sent,
        },
        Strikes::default(),
    );
    // Only the answer naming the episode and digest sent retires it.
    let names_ours = matches!(
        r,
        Reply::Stored { episode_id, sha256, .. } | Reply::AlreadyPresent { episode_id, sha256, .. }
            if episode_id == id.as_str() && sha256 == sha.as_str()
    );
    assert_eq!(action == Action::Retire, names_ours, "{r:?} → {action:?}");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every file of the seed corpus passes, and the corpus reaches each
    /// kind of input (an id, a commit, a digest, an answer body), so the
    /// properties above are exercised on every workspace test run.
    #[test]
    fn the_seed_corpus_passes_and_covers_every_parser() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/parse");
        let mut seen = [0usize; 4];
        for e in std::fs::read_dir(&dir).expect("fuzz/corpus/parse") {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            check(&data);
            let s = std::str::from_utf8(&data).unwrap_or("");
            seen[0] += EpisodeId::parse(s).is_ok() as usize;
            seen[1] += Commit::parse(s).is_ok() as usize;
            seen[2] += Sha256::parse(s).is_ok() as usize;
            seen[3] += serde_json::from_slice::<Reply>(&data).is_ok() as usize;
        }
        assert!(seen.iter().all(|&n| n > 0), "corpus coverage {seen:?}");
    }

    /// Inputs around the corpus: each seed cut at every length and with
    /// each byte flipped, the way the fuzzer starts.
    #[test]
    fn truncations_and_bit_flips_of_the_seeds_pass() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/parse");
        for e in std::fs::read_dir(&dir).unwrap() {
            let data = std::fs::read(e.unwrap().path()).unwrap();
            for n in 0..=data.len() {
                check(&data[..n]);
            }
            for i in 0..data.len() {
                for bit in [0x01u8, 0x20, 0x80] {
                    let mut d = data.clone();
                    d[i] ^= bit;
                    check(&d);
                }
            }
        }
    }
}
