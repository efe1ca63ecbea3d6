//! Fuzz the parsers that see untrusted input first: episode ids, commits
//! and digests as they arrive in paths and headers, `Retry-After` and answer
//! bodies as the agent reads them, and the agent's tar walker over a tarball
//! someone else may have put in its outbox. The parser properties are
//! `ferry_fuzz_check::check` (in fuzz/check, built and tested with the
//! workspace over the seed corpus fuzz/corpus/parse); the walker's, which
//! needs the agent's archive.rs compiled in by path, are here: a tarball
//! passes only as an archive of the episode, hashed whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::Digest;

#[path = "../../agent/src/pack/archive.rs"]
#[allow(dead_code)]
mod archive;

fuzz_target!(|data: &[u8]| {
    ferry_fuzz_check::check(data);
    if let Ok(c) = archive::check(data, "ep", None, &|| false) {
        assert_eq!(c.size, data.len() as u64);
        assert_eq!(c.digest, <[u8; 32]>::from(sha2::Sha256::digest(data)));
    }
});
