//! Issue 13, the agent side: a hostile producer in the same spool, and a
//! receiver answering nonsense, must not hurt the device. One test per
//! class of hole, named after it; each failed on the agent before its fix.
//! The agent runs as the test's user: as root in CI, so a write through a
//! planted symlink, or a read of a file the producer cannot read, would
//! really land.
//!
//! - `spool`: planted symlinks (1), blocking and unbounded reads (2), a
//!   symlinked episode directory (6), directories nested deep enough to
//!   exhaust the descriptors, a dangling symlink for `done.marker`.
//! - `packing`: a file swapped while packed (3), a file that changes while
//!   packed (4).
//! - `outbox`: anything in the outbox the agent did not make (5).
//! - `answers`: a `Retry-After` from the receiver (7), a 200/201 that does
//!   not name the episode (a captive portal's page, another id).
//!
//! And the receiver side, over raw sockets: `receiver` (metric labels (8),
//! the connection cap (9), upload slots per device (10), malformed HTTP,
//! `/readyz` and the status page's headers (13)).

mod answers;
mod outbox;
mod packing;
mod receiver;
mod spool;

use std::path::{Path, PathBuf};

/// A file the producer must never get the agent to read or write: marker
/// bytes (to search archives for), mode 0600.
pub fn secret(dir: &Path, name: &str) -> (PathBuf, Vec<u8>) {
    use std::os::unix::fs::PermissionsExt;
    let marker = format!("SECRET-{name}-{:016x}\n", rand::random::<u64>()).repeat(64);
    let p = dir.join(name);
    std::fs::write(&p, &marker).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    (p, marker.into_bytes())
}

/// Whether `hay` contains `needle`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The decompressed bytes of a `.tar.zst` (the `zstd` tool), for searching.
pub fn unzstd(path: &Path) -> Vec<u8> {
    let out = std::process::Command::new("zstd")
        .args(["-dcq", "--"])
        .arg(path)
        .output()
        .expect("zstd -dc");
    out.stdout
}
