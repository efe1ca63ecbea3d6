//! ferry-agent: the device daemon that packs finished episodes and ships
//! them to ferry-receiver (SPEC §1, §3–§6). `main.rs` parses the command
//! line, resolves the [`config::Config`] and calls into this library.
//!
//! Map: `config` (raw → resolved), `spool` (layout, [`spool::EpisodeState`]),
//! `fsio` (crash-safe moves, errno), `scan`, `pack` (`walk`: the tree it
//! reads), `outbox` (the tarball to ship; `archive`: the walker that
//! checks one left there), `ship`, `classify` (what happened →
//! `proto::Outcome`), `retire` / `quarantine` / `conflict` (the actions),
//! `backoff`, `sweep`, `notify` (systemd), `state`
//! (`.ferry-agent-state.json`), `run` (daemon loop and drain), `doctor`,
//! `status`, `cli`. Files are opened through `ferry_durable::safe`; no
//! `unsafe` here.

#![forbid(unsafe_code)]

pub mod backoff;
pub mod classify;
pub mod cli;
pub mod config;
pub mod conflict;
pub mod doctor;
pub mod episode;
pub mod fsio;
pub mod notify;
pub mod outbox;
pub mod pack;
pub mod quarantine;
pub mod retire;
pub mod run;
pub mod scan;
pub mod ship;
pub mod spool;
pub mod state;
pub mod status;
pub mod sweep;
