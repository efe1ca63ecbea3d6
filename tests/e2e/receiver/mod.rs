//! Receiver end-to-end tests.
