//! The ferry wire contract (protocol v1), shared by `ferry-agent` and
//! `ferry-receiver`.
//!
//! This crate is the only place that knows the wire format: the validated
//! identifiers ([`EpisodeId`], [`Commit`], [`Sha256`]), the header names
//! ([`headers`]), the JSON body of every answer ([`Reply`]) and the one table
//! that maps an answer to what the agent does next ([`action::decide`],
//! with the strike counts it keeps, [`action::strikes_after`]).
//!
//! It does no IO and has no async code: everything here is a pure function
//! of its inputs, unit-tested beside the code.

#![forbid(unsafe_code)]

pub mod action;
pub mod admin;
pub mod headers;
mod ids;
pub mod reply;

pub use action::{decide, strikes_after, Action, Outcome, QuarantineKind, Sent, Strikes};
pub use ids::{Commit, EpisodeId, ParseIdError, Sha256};
pub use reply::{BadRequest, Reply};

/// Path of the upload endpoint for one episode: `/v1/episodes/{id}`.
pub fn episode_path(id: &EpisodeId) -> String {
    format!("/v1/episodes/{id}")
}

/// The tus creation endpoint (SPEC §8); an upload is `{UPLOADS_PATH}/{id}`.
pub const UPLOADS_PATH: &str = "/v1/uploads";

/// Path of the commit check endpoint: `/v1/commits/{commit}`.
pub fn commit_path(commit: &Commit) -> String {
    format!("/v1/commits/{commit}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_paths_are_the_spec_paths() {
        let id = EpisodeId::parse("ep-2026.11.22_001").unwrap();
        assert_eq!(episode_path(&id), "/v1/episodes/ep-2026.11.22_001");
        let c = Commit::parse(&"0a".repeat(20)).unwrap();
        assert_eq!(commit_path(&c), format!("/v1/commits/{}", "0a".repeat(20)));
    }
}
