//! Fleet packaging end to end (issue 16): what an operator installs and
//! monitors, checked with the operator's own tools.
//!
//! - `rules`: the alerting rules, with `promtool test rules`.
//! - `textfile`: the agent's metrics file, with `promtool check metrics`.
//! - `container`: the Dockerfile's pieces and `ferry-receiver healthcheck`.
//! - `deb`: the Debian packages built with `cargo deb`, linted, installed,
//!   verified and purged.

mod container;
mod deb;
mod rules;
mod textfile;

use std::path::PathBuf;

/// The workspace root (the tests crate is one level below it).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}
