//! ferry-agent: the device daemon that packs finished episodes and ships
//! them to ferry-receiver (SPEC §1, §3–§6). `main.rs` parses the command
//! line, resolves the [`config::Config`] and calls into this library.
//!
//! Map: `config` (raw → resolved), `spool` (layout, [`spool::EpisodeState`]),
//! `fsio` (crash-safe moves, errno), `scan`, `pack` (the folder: `walk`,
//! the tree it reads; `frames`, `output`; `archive`, the walker that checks
//! a tarball left in the outbox), `outbox` (the tarball to ship), `ship`, `resumable` (tus, SPEC §8),
//! `classify` (what happened → `proto::Outcome`), `episode` (one episode's
//! journey: pack → ship → classify → act), `retire` / `quarantine` /
//! `conflict` (the actions that move an episode, each with its effects and
//! text), `backoff`, `sweep`, `notify` (systemd), `state`
//! (`.ferry-agent-state.json`), `run` (daemon loop, scheduling, shutdown,
//! drain), `doctor`, `status`, `cli`, `textfile` (metrics for
//! node_exporter). Files are opened through
//! `ferry_durable::safe`; no `unsafe` here.

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
pub mod resumable;
pub mod retire;
pub mod run;
pub mod scan;
pub mod ship;
pub mod spool;
pub mod state;
pub mod status;
pub mod sweep;
pub mod textfile;
