//! Crash-safe filesystem primitives and errno classification: they live in
//! `ferry-durable` (`fsio`, and `safe` for files in directories others
//! can write to), re-exported here under the name the agent's modules use.

pub use ferry_durable::fsio::*;
