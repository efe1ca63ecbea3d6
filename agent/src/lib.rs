//! ferry-agent (placeholder while the crate is built).
