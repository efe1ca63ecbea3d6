//! The answer→action table of SPEC §3, as one pure function.
//!
//! The agent turns whatever happened to one shipping attempt into an
//! [`Outcome`], calls [`decide`] with the episode's [`Strikes`] so far, and
//! executes the [`Action`] it gets back; [`strikes_after`] is what the
//! episode's strike counts become. Nothing here does IO, so every row of
//! the table is a unit test below.

use std::fmt;
use std::time::Duration;

use crate::ids::{EpisodeId, Sha256};
use crate::reply::{BadRequest, Reply};

/// Consecutive `digest-mismatch` answers after which the episode is
/// quarantined instead of re-packed (SPEC §3: "quarantine after 3 in a row").
pub const DIGEST_MISMATCH_LIMIT: u32 = 3;
/// Consecutive passes with a local read error after which the episode is
/// quarantined naming the file and the error (SPEC §3: "after 5 failed
/// passes").
pub const LOCAL_READ_LIMIT: u32 = 5;

/// What happened to one attempt to ship one episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome<'a> {
    /// The receiver answered with this HTTP status. `reply` is the parsed
    /// JSON body when it parsed; `retry_after` the `Retry-After` header;
    /// `sent` the episode the request shipped, which a 200/201 must name.
    Answered {
        status: u16,
        reply: Option<&'a Reply>,
        retry_after: Option<Duration>,
        sent: Sent<'a>,
    },
    /// No answer: connection refused or reset, DNS, TLS, timeout, a body
    /// that stopped arriving.
    Network,
    /// Reading the episode's own files failed (EIO, EUCLEAN, EACCES, …):
    /// the episode's problem, possibly temporary.
    LocalRead,
    /// Writing the outbox failed because the device's disk is full.
    DiskFull,
    /// The episode's `meta.json` names no valid commit: it can never be
    /// shipped as it is.
    NoCommit,
    /// The shipping was interrupted by shutdown. Never a failure (SPEC §4.2).
    Aborted,
}

/// What one attempt shipped: the episode and the sha256 of its tarball.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent<'a> {
    pub episode_id: &'a EpisodeId,
    pub sha256: &'a Sha256,
}

/// Why a 200/201 is not the receiver's word that it holds the episode that
/// was sent. Such an answer may come from anything on the way (a proxy, a
/// captive portal, a receiver with a bug), so it says nothing about the
/// episode: [`decide`] keeps the episode and retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unconfirmed<'a> {
    /// The body is not a receiver answer (not JSON, or not one of §2's).
    NoReply,
    /// A receiver answer, but not `stored` nor `already-present`.
    NotStored { status: &'static str },
    /// `stored`/`already-present`, but of another episode id.
    OtherEpisode { episode_id: &'a str },
    /// `stored`/`already-present` of this id, but with another sha256.
    OtherDigest { sha256: &'a str },
}

impl fmt::Display for Unconfirmed<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unconfirmed::NoReply => f.write_str("its body is not a receiver's JSON answer"),
            Unconfirmed::NotStored { status } => write!(
                f,
                "its status is {status:?}, neither \"stored\" nor \"already-present\""
            ),
            Unconfirmed::OtherEpisode { episode_id } => {
                write!(f, "it names another episode, {episode_id:?}")
            }
            Unconfirmed::OtherDigest { sha256 } => {
                write!(f, "it names another sha256, {sha256:?}")
            }
        }
    }
}

/// Why `reply` does not confirm that the receiver holds `sent`; `None` when
/// it does. A 201 `already-present` or a 200 `stored` confirms too: either
/// word means the receiver holds these bytes durably (SPEC §2), and only
/// the id and the digest tie the answer to this episode.
fn unconfirmed_reply<'a>(reply: Option<&'a Reply>, sent: Sent<'_>) -> Option<Unconfirmed<'a>> {
    let (episode_id, sha256) = match reply {
        None => return Some(Unconfirmed::NoReply),
        Some(
            Reply::Stored {
                episode_id, sha256, ..
            }
            | Reply::AlreadyPresent {
                episode_id, sha256, ..
            },
        ) => (episode_id, sha256),
        Some(r) => return Some(Unconfirmed::NotStored { status: r.status() }),
    };
    if episode_id != sent.episode_id.as_str() {
        Some(Unconfirmed::OtherEpisode { episode_id })
    } else if sha256 != sent.sha256.as_str() {
        Some(Unconfirmed::OtherDigest { sha256 })
    } else {
        None
    }
}

/// Why `outcome`, a 200 or 201, is not trusted to retire the episode (the
/// agent logs it); `None` for every other outcome and for a 200/201 that
/// names the episode and digest sent. The rule [`decide`] applies.
pub fn unconfirmed(outcome: Outcome<'_>) -> Option<Unconfirmed<'_>> {
    match outcome {
        Outcome::Answered {
            status: 200 | 201,
            reply,
            sent,
            ..
        } => unconfirmed_reply(reply, sent),
        _ => None,
    }
}

/// Per-episode counts of consecutive failures of one kind, before the
/// outcome being decided; [`strikes_after`] keeps them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Strikes {
    pub digest_mismatch: u32,
    pub local_read: u32,
}

/// Why an episode is quarantined. The agent writes it into
/// `quarantine_reason.json` (field `kind`, as [`QuarantineKind::as_str`])
/// and the 412 kind is the one it re-checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum QuarantineKind {
    /// 412: the commit is not allowed. Re-queued by itself once the
    /// receiver allows the commit.
    CommitRejected,
    /// The receiver refused the episode itself (400 other than
    /// digest-mismatch, 413, other 4xx).
    Refused,
    /// `DIGEST_MISMATCH_LIMIT` digest mismatches in a row: the bytes change
    /// between pack and upload (bad RAM, bad disk, a middlebox).
    RepeatedDigestMismatch,
    /// `LOCAL_READ_LIMIT` passes in a row could not read the episode.
    Unreadable,
    /// No commit in `meta.json`: quarantined without shipping.
    NoCommit,
}

impl QuarantineKind {
    pub const ALL: [QuarantineKind; 5] = [
        QuarantineKind::CommitRejected,
        QuarantineKind::Refused,
        QuarantineKind::RepeatedDigestMismatch,
        QuarantineKind::Unreadable,
        QuarantineKind::NoCommit,
    ];

    /// The stable name of the kind, as written in the reason file.
    pub fn as_str(self) -> &'static str {
        match self {
            QuarantineKind::CommitRejected => "commit-rejected",
            QuarantineKind::Refused => "refused",
            QuarantineKind::RepeatedDigestMismatch => "repeated-digest-mismatch",
            QuarantineKind::Unreadable => "unreadable",
            QuarantineKind::NoCommit => "no-commit",
        }
    }

    /// The kind named `name`; `None` for a name no kind has.
    pub fn parse(name: &str) -> Option<QuarantineKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

/// What the agent does next with the episode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// 201/200 naming the episode and sha256 sent: move to `shipped/`,
    /// delete the tarball.
    Retire,
    /// 409: move to `conflict/` with `conflict.json`; never shipped again by
    /// itself.
    Conflict,
    /// Move to `quarantine/` with `quarantine_reason.json`.
    Quarantine(QuarantineKind),
    /// 400 digest-mismatch under the limit: delete the tarball, re-pack,
    /// retry.
    Repack,
    /// 401/403: the device's credentials are wrong. Never the episode's
    /// fault: keep everything, back off all shipping, tell the operator.
    DeviceBackoff,
    /// Transient: keep the tarball and retry after an exponential backoff
    /// with full jitter; `retry_after` (from the receiver) is a floor.
    Backoff { retry_after: Option<Duration> },
    /// A local read error under the limit: skip this episode this pass,
    /// keep shipping the rest.
    SkipThisPass,
    /// Shutdown interrupted the attempt: keep the tarball, record nothing;
    /// the next start ships it.
    Abandon,
}

/// The table of SPEC §3.
pub fn decide(outcome: Outcome<'_>, strikes: Strikes) -> Action {
    match outcome {
        Outcome::Answered {
            status,
            reply,
            retry_after,
            sent,
        } => match (status, reply) {
            // tus (SPEC §8): answers about the upload, not the episode. The
            // agent re-asks HEAD or starts a new upload on its next attempt.
            (409, Some(Reply::OffsetMismatch { .. }))
            | (410, Some(Reply::Gone { .. }))
            | (460, _) => Action::Backoff { retry_after },
            (412, Some(Reply::UnsupportedVersion { .. })) => {
                Action::Quarantine(QuarantineKind::Refused)
            }
            _ => decide_status(status, reply, retry_after, sent, strikes),
        },
        Outcome::Network | Outcome::DiskFull => Action::Backoff { retry_after: None },
        Outcome::LocalRead => {
            if strikes.local_read + 1 >= LOCAL_READ_LIMIT {
                Action::Quarantine(QuarantineKind::Unreadable)
            } else {
                Action::SkipThisPass
            }
        }
        Outcome::NoCommit => Action::Quarantine(QuarantineKind::NoCommit),
        Outcome::Aborted => Action::Abandon,
    }
}

/// The rows of SPEC §2's answers, by status code.
fn decide_status(
    status: u16,
    reply: Option<&Reply>,
    retry_after: Option<Duration>,
    sent: Sent<'_>,
    strikes: Strikes,
) -> Action {
    match status {
        // Only the receiver's own word about this episode retires it: the
        // episode leaves the device for good. Any other 2xx (a proxy's or a
        // captive portal's page, another episode's answer) is transient.
        200 | 201 => match unconfirmed_reply(reply, sent) {
            None => Action::Retire,
            Some(_) => Action::Backoff { retry_after },
        },
        409 => Action::Conflict,
        412 => Action::Quarantine(QuarantineKind::CommitRejected),
        400 => match reply {
            Some(Reply::BadRequest {
                error: BadRequest::DigestMismatch,
                ..
            }) => {
                if strikes.digest_mismatch + 1 >= DIGEST_MISMATCH_LIMIT {
                    Action::Quarantine(QuarantineKind::RepeatedDigestMismatch)
                } else {
                    Action::Repack
                }
            }
            _ => Action::Quarantine(QuarantineKind::Refused),
        },
        401 | 403 => Action::DeviceBackoff,
        408 | 429 => Action::Backoff { retry_after },
        402 | 404..=407 | 410..=411 | 413..=428 | 430..=459 | 461..=499 => {
            Action::Quarantine(QuarantineKind::Refused)
        }
        // 5xx including 503 and 507, and anything unexpected (1xx, 3xx
        // from a misconfigured proxy): the answer says nothing about
        // the episode, so keep it and try again later.
        _ => Action::Backoff { retry_after },
    }
}

/// The strike counts after `action` was decided with `before`: they count
/// consecutive failures of one kind, so a re-pack adds a digest mismatch, a
/// skipped pass adds a local read error, each resetting the other, and
/// every other action resets both, except an abandoned attempt (shutdown),
/// which is no attempt and changes nothing.
pub fn strikes_after(before: Strikes, action: Action) -> Strikes {
    match action {
        Action::Repack => Strikes {
            digest_mismatch: before.digest_mismatch + 1,
            local_read: 0,
        },
        Action::SkipThisPass => Strikes {
            digest_mismatch: 0,
            local_read: before.local_read + 1,
        },
        Action::Abandon => before,
        Action::Retire
        | Action::Conflict
        | Action::Quarantine(_)
        | Action::DeviceBackoff
        | Action::Backoff { .. } => Strikes::default(),
    }
}

impl Action {
    /// The episode leaves `episodes/` (to `shipped/`, `conflict/` or
    /// `quarantine/`): nothing about it needs remembering any more.
    pub fn moves_episode(self) -> bool {
        matches!(
            self,
            Action::Retire | Action::Conflict | Action::Quarantine(_)
        )
    }

    /// The action follows an attempt that counts (every one but an
    /// attempt that shutdown abandoned).
    pub fn counts_as_attempt(self) -> bool {
        self != Action::Abandon
    }
}

#[cfg(test)]
mod tests;
