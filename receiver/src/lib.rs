//! ferry-receiver (placeholder while the crate is built).
