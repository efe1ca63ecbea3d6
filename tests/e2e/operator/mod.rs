//! Operator views (SPEC §9, issue 16): what the receiver shows the people
//! who run it.
//!
//! - `rejected`: commits answered 412, per device (raw PUTs and real
//!   agents), in `commits rejected` and the admin API, on SQLite and
//!   PostgreSQL, gone once allowed; flushed at shutdown.
//! - `page`: who may see the status page (`status_page`, Bearer or Basic),
//!   and a real browser (Debian's `chromium --headless`) rendering it.

mod page;
mod rejected;
