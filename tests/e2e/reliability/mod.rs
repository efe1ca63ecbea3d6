//! The reliability suite (issue 4): nothing acknowledged is lost and nothing
//! is duplicated, whatever crashes, fails or lies. Every test here runs both
//! real binaries and ends with [`assert_delivered`], the one definition of
//! "everything arrived exactly once".
//!
//! Bounded for CI by default; `FERRY_SOAK=<duration>` (e.g. `1h`) turns the
//! random-crash test into the soak run.

mod crash;
mod durability;
mod faults;
mod hostile;
mod network;

use std::path::Path;
use std::process::{Child, Stdio};

use ferry_tests::{assert_ok, pack_sha, stored, Receiver, Spool};

/// Everything in `ids` arrived exactly once and intact:
/// - the spool has each in `shipped/`, none pending, quarantined or in
///   conflict, and no file left in `outbox/`;
/// - the receiver stores each once, with the sha256 of a fresh pack of the
///   shipped directory (so no false 409 could have happened);
/// - the stored object, unpacked by the system's `zstd` and `tar`, is the
///   shipped directory byte for byte, with its modes, mtimes and symlink
///   targets (the oracle that does not trust ferry's own packer);
/// - `ferry-receiver episodes verify` is clean.
pub fn assert_delivered(rx: &Receiver, spool: &Spool, ids: &[String]) {
    let shipped = spool.ids_in("shipped");
    for id in ids {
        assert!(
            shipped.contains(id),
            "{id} is not in shipped/ (shipped: {})",
            shipped.len()
        );
    }
    assert_eq!(
        spool.ids_in("episodes"),
        Vec::<String>::new(),
        "episodes left pending"
    );
    assert_eq!(
        spool.ids_in("quarantine"),
        Vec::<String>::new(),
        "episodes quarantined"
    );
    assert_eq!(
        spool.ids_in("conflict"),
        Vec::<String>::new(),
        "episodes in conflict"
    );
    assert_eq!(
        spool.ids_in("outbox"),
        Vec::<String>::new(),
        "files left in outbox/"
    );

    let index = stored(rx);
    for id in ids {
        let sha = index
            .get(id)
            .unwrap_or_else(|| panic!("{id} is in shipped/ but not stored by the receiver"));
        let shipped = spool.path().join("shipped").join(id);
        let fresh = pack_sha(&shipped);
        assert_eq!(sha, &fresh, "{id}: stored sha256 differs from a fresh pack");
        let object = ferry_tests::object_path(&rx.data_dir, sha);
        ferry_tests::assert_archive_is_episode(&object, &shipped, "assert_delivered");
    }
    let verify = rx.cli(["episodes", "verify"]);
    assert_ok(&verify, "ferry-receiver episodes verify");
}

/// A small episode whose content depends on `seed`: a text file and some
/// incompressible bytes.
pub fn small_episode(spool: &Spool, id: &str, seed: u64) {
    let noise = ferry_tests::noise(seed, 2048 + (seed as usize % 4096));
    let text = format!("episode {id}\n").repeat(50);
    ferry_tests::make_episode(
        spool.path(),
        id,
        Some(ferry_tests::COMMIT_A),
        &[("data/noise.bin", &noise), ("log.txt", text.as_bytes())],
    );
}

/// `ferry-agent run` on `spool`, quick to notice work and to retry (scan
/// every 200ms, backoff at most 1s, 4 uploads at once), its log appended
/// to `log`.
pub fn start_agent(spool: &Spool, log: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    spool
        .agent("run")
        .env("FERRY_AGENT_SCAN_INTERVAL", "200ms")
        .env("FERRY_AGENT_BACKOFF_MAX", "1s")
        .env("FERRY_AGENT_SHIP_CONCURRENCY", "4")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start ferry-agent run")
}
