//! Storage, one folder per part:
//!
//! - [`index`]: devices, commits and episodes behind the [`Index`] trait
//!   (SQLite embedded by default, PostgreSQL by URL);
//! - [`objects`]: the content-addressed bytes behind the
//!   [`objects::Objects`] trait (a local directory by default, an S3
//!   bucket by URL);
//! - [`commit`]: verified uploads made durable and indexed, a batch at a
//!   time, on any pair of the two;
//! - [`collect`]: objects no row references, deleted after a grace period
//!   by the one replica holding the collection lease.
//!
//! The index holds no bytes of episodes and the object store no metadata:
//! an episode exists once its index row is committed, and its row points at
//! an object by sha256.

pub mod collect;
pub mod commit;
pub mod index;
pub mod objects;

pub use index::*;
