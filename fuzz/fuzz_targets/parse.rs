//! Fuzz the parsers that see untrusted input first: episode ids, commits
//! and digests as they arrive in paths and headers, and answer bodies as the
//! agent reads them. The properties are `ferry_fuzz_check::check` (in
//! fuzz/check, built and tested with the workspace over the seed corpus
//! fuzz/corpus/parse); this is only libFuzzer's entry point.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| ferry_fuzz_check::check(data));
