//! The scale-out mode (SPEC §7, issue 14) end to end: 2–3 `ferry-receiver`
//! replicas on PostgreSQL and an S3 bucket (moto), behind nginx, every
//! part a real process ([`ferry_tests::scaleout::Stack`]).
//!
//! - `harness`: the parts themselves work (moto, the outage proxy, nginx,
//!   a private PostgreSQL cluster, replicas started together).

mod harness;
