//! The answer→action table of SPEC §3, as one pure function.
//!
//! The agent turns whatever happened to one shipping attempt into an
//! [`Outcome`], calls [`decide`] with the episode's [`Strikes`] so far, and
//! executes the [`Action`] it gets back; [`strikes_after`] is what the
//! episode's strike counts become. Nothing here does IO, so every row of
//! the table is a unit test below.

use std::time::Duration;

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
    /// JSON body when it parsed; `retry_after` the `Retry-After` header.
    Answered {
        status: u16,
        reply: Option<&'a Reply>,
        retry_after: Option<Duration>,
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
    /// 201/200: move to `shipped/`, delete the tarball.
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
        } => match (status, reply) {
            // tus (SPEC §8): answers about the upload, not the episode. The
            // agent re-asks HEAD or starts a new upload on its next attempt.
            (409, Some(Reply::OffsetMismatch { .. }))
            | (410, Some(Reply::Gone { .. }))
            | (460, _) => Action::Backoff { retry_after },
            (412, Some(Reply::UnsupportedVersion { .. })) => {
                Action::Quarantine(QuarantineKind::Refused)
            }
            _ => decide_status(status, reply, retry_after, strikes),
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
    strikes: Strikes,
) -> Action {
    match status {
        200 | 201 => Action::Retire,
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
mod tests {
    use super::*;

    #[test]
    fn quarantine_kinds_serialise_to_their_names_and_parse_back() {
        for k in QuarantineKind::ALL {
            let json = serde_json::to_string(&k).unwrap();
            assert_eq!(json, format!("\"{}\"", k.as_str()));
            assert_eq!(serde_json::from_str::<QuarantineKind>(&json).unwrap(), k);
            assert_eq!(QuarantineKind::parse(k.as_str()), Some(k));
        }
        assert_eq!(
            QuarantineKind::RepeatedDigestMismatch.as_str(),
            "repeated-digest-mismatch"
        );
        assert_eq!(QuarantineKind::parse("unknown"), None);
    }

    fn answered(status: u16) -> Action {
        decide(
            Outcome::Answered {
                status,
                reply: None,
                retry_after: None,
            },
            Strikes::default(),
        )
    }

    fn bad_request(error: BadRequest, strikes: Strikes) -> Action {
        let reply = Reply::BadRequest {
            error,
            detail: String::new(),
        };
        decide(
            Outcome::Answered {
                status: 400,
                reply: Some(&reply),
                retry_after: None,
            },
            strikes,
        )
    }

    #[test]
    fn row_201_and_200_retire() {
        assert_eq!(answered(201), Action::Retire);
        assert_eq!(answered(200), Action::Retire);
    }

    #[test]
    fn row_409_moves_to_conflict() {
        assert_eq!(answered(409), Action::Conflict);
    }

    #[test]
    fn row_412_quarantines_for_recheck() {
        assert_eq!(
            answered(412),
            Action::Quarantine(QuarantineKind::CommitRejected)
        );
    }

    #[test]
    fn row_400_digest_mismatch_repacks_then_quarantines_on_the_third() {
        let s = |n| Strikes {
            digest_mismatch: n,
            local_read: 0,
        };
        assert_eq!(
            bad_request(BadRequest::DigestMismatch, s(0)),
            Action::Repack
        );
        assert_eq!(
            bad_request(BadRequest::DigestMismatch, s(1)),
            Action::Repack
        );
        assert_eq!(
            bad_request(BadRequest::DigestMismatch, s(2)),
            Action::Quarantine(QuarantineKind::RepeatedDigestMismatch)
        );
    }

    #[test]
    fn row_other_400_413_and_other_4xx_quarantine() {
        for e in [
            BadRequest::MissingCommit,
            BadRequest::MalformedCommit,
            BadRequest::BadEpisodeId,
            BadRequest::MissingDigest,
            BadRequest::MalformedBody,
        ] {
            assert_eq!(
                bad_request(e, Strikes::default()),
                Action::Quarantine(QuarantineKind::Refused)
            );
        }
        // A 400 whose body did not parse is still a refusal of the episode.
        assert_eq!(answered(400), Action::Quarantine(QuarantineKind::Refused));
        for s in [404, 405, 410, 413, 415, 422] {
            assert_eq!(
                answered(s),
                Action::Quarantine(QuarantineKind::Refused),
                "{s}"
            );
        }
    }

    fn tus(status: u16, reply: Reply) -> Action {
        decide(
            Outcome::Answered {
                status,
                reply: Some(&reply),
                retry_after: None,
            },
            Strikes::default(),
        )
    }

    /// SPEC §8's answers are about the upload, not the episode: an offset
    /// mismatch, an expired upload and a damaged PATCH are retried (HEAD
    /// again, a new upload, the same bytes again), never parked or
    /// quarantined; a tus version the receiver does not speak is refused.
    #[test]
    fn tus_rows_retry_the_upload() {
        let detail = String::new();
        let offset = Reply::OffsetMismatch {
            offset: 7,
            detail: detail.clone(),
        };
        let back = Action::Backoff { retry_after: None };
        assert_eq!(tus(409, offset), back);
        assert_eq!(
            tus(
                410,
                Reply::Gone {
                    detail: detail.clone()
                }
            ),
            back
        );
        assert_eq!(
            tus(
                460,
                Reply::ChecksumMismatch {
                    detail: detail.clone()
                }
            ),
            back
        );
        assert_eq!(answered(460), back, "460 without a body too");
        assert_eq!(
            tus(412, Reply::UnsupportedVersion { detail }),
            Action::Quarantine(QuarantineKind::Refused)
        );
        // Without the tus bodies, 409 and 410 keep their §2 rows.
        assert_eq!(answered(409), Action::Conflict);
        assert_eq!(answered(410), Action::Quarantine(QuarantineKind::Refused));
    }

    #[test]
    fn row_401_403_never_quarantine() {
        assert_eq!(answered(401), Action::DeviceBackoff);
        assert_eq!(answered(403), Action::DeviceBackoff);
    }

    #[test]
    fn row_transient_backs_off_and_keeps_retry_after() {
        for s in [408, 429, 500, 502, 503, 504, 507, 302, 100] {
            assert_eq!(answered(s), Action::Backoff { retry_after: None }, "{s}");
        }
        let ra = Some(Duration::from_secs(7));
        assert_eq!(
            decide(
                Outcome::Answered {
                    status: 503,
                    reply: None,
                    retry_after: ra
                },
                Strikes::default()
            ),
            Action::Backoff { retry_after: ra }
        );
        assert_eq!(
            decide(Outcome::Network, Strikes::default()),
            Action::Backoff { retry_after: None }
        );
    }

    #[test]
    fn row_local_read_error_skips_then_quarantines_on_the_fifth() {
        for n in 0..4 {
            let s = Strikes {
                digest_mismatch: 0,
                local_read: n,
            };
            assert_eq!(decide(Outcome::LocalRead, s), Action::SkipThisPass, "{n}");
        }
        let s = Strikes {
            digest_mismatch: 0,
            local_read: 4,
        };
        assert_eq!(
            decide(Outcome::LocalRead, s),
            Action::Quarantine(QuarantineKind::Unreadable)
        );
    }

    #[test]
    fn row_disk_full_is_transient_whatever_the_strikes() {
        let s = Strikes {
            digest_mismatch: 9,
            local_read: 9,
        };
        assert_eq!(
            decide(Outcome::DiskFull, s),
            Action::Backoff { retry_after: None }
        );
    }

    #[test]
    fn missing_commit_is_quarantined_without_shipping() {
        assert_eq!(
            decide(Outcome::NoCommit, Strikes::default()),
            Action::Quarantine(QuarantineKind::NoCommit)
        );
    }

    #[test]
    fn shutdown_is_never_a_failure() {
        assert_eq!(
            decide(Outcome::Aborted, Strikes::default()),
            Action::Abandon
        );
    }

    /// SPEC §3's rows for an answered attempt, written from the SPEC's
    /// table (row by row, in its order), not from `decide`: the oracle for
    /// the property below. `mismatch` is a 400 whose body says
    /// `digest-mismatch`; `earlier` how many came just before it.
    fn spec_row(status: u16, mismatch: bool, earlier: u32, ra: Option<Duration>) -> Action {
        let four_xx = (400..500).contains(&status);
        if status == 201 || status == 200 {
            Action::Retire
        } else if status == 409 {
            Action::Conflict
        } else if status == 412 {
            Action::Quarantine(QuarantineKind::CommitRejected)
        } else if status == 400 && mismatch {
            // "quarantine after 3 in a row": this one is number earlier + 1.
            if earlier + 1 >= 3 {
                Action::Quarantine(QuarantineKind::RepeatedDigestMismatch)
            } else {
                Action::Repack
            }
        } else if status == 401 || status == 403 {
            Action::DeviceBackoff
        } else if status == 408 || status == 429 || status == 460 || (500..600).contains(&status) {
            // 460: SPEC §8's checksum mismatch, bytes damaged on the way.
            Action::Backoff { retry_after: ra }
        } else if four_xx {
            // "other 400, 413, other 4xx"
            Action::Quarantine(QuarantineKind::Refused)
        } else {
            // Not in the table (1xx, 3xx, 6xx from a proxy): says nothing
            // about the episode, so transient.
            Action::Backoff { retry_after: ra }
        }
    }

    fn any_bad_request() -> impl proptest::strategy::Strategy<Value = BadRequest> {
        proptest::sample::select(BadRequest::ALL.to_vec())
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(4000))]

        /// Every status (the table's ones weighted up), with or without a
        /// parsed body of every 400 kind, any strikes, any Retry-After.
        #[test]
        fn decide_agrees_with_the_spec_table(
            status in proptest::prop_oneof![
                proptest::sample::select(vec![200u16, 201, 400, 401, 403, 408, 409, 412, 413, 429, 500, 503, 507]),
                100u16..700,
            ],
            body in proptest::option::of(any_bad_request()),
            earlier in 0u32..6,
            other in 0u32..9,
            ra in proptest::option::of(0u64..3600),
        ) {
            let ra = ra.map(Duration::from_secs);
            let reply = body.map(|error| Reply::BadRequest { error, detail: String::new() });
            let got = decide(
                Outcome::Answered { status, reply: reply.as_ref(), retry_after: ra },
                Strikes { digest_mismatch: earlier, local_read: other },
            );
            let mismatch = body == Some(BadRequest::DigestMismatch);
            proptest::prop_assert_eq!(got, spec_row(status, mismatch, earlier, ra));
        }

        /// The rows without an answer: a local read error skips the pass
        /// until the 5th in a row quarantines; a full disk and the network
        /// are transient whatever the strikes.
        #[test]
        fn decide_without_an_answer_agrees_with_the_spec(earlier in 0u32..8, other in 0u32..8) {
            let s = Strikes { digest_mismatch: other, local_read: earlier };
            let read = if earlier + 1 >= 5 {
                Action::Quarantine(QuarantineKind::Unreadable)
            } else {
                Action::SkipThisPass
            };
            proptest::prop_assert_eq!(decide(Outcome::LocalRead, s), read);
            proptest::prop_assert_eq!(decide(Outcome::DiskFull, s), Action::Backoff { retry_after: None });
            proptest::prop_assert_eq!(decide(Outcome::Network, s), Action::Backoff { retry_after: None });
            proptest::prop_assert_eq!(decide(Outcome::NoCommit, s), Action::Quarantine(QuarantineKind::NoCommit));
            proptest::prop_assert_eq!(decide(Outcome::Aborted, s), Action::Abandon);
        }
    }

    #[test]
    fn strikes_count_consecutive_failures_of_one_kind() {
        let s = |digest_mismatch, local_read| Strikes {
            digest_mismatch,
            local_read,
        };
        let backoff = Action::Backoff { retry_after: None };
        let refused = Action::Quarantine(QuarantineKind::Refused);
        // (before, action, after)
        let table = [
            (s(0, 0), Action::Repack, s(1, 0)),
            (s(1, 3), Action::Repack, s(2, 0)),
            (s(0, 0), Action::SkipThisPass, s(0, 1)),
            (s(2, 3), Action::SkipThisPass, s(0, 4)),
            (s(2, 3), Action::Abandon, s(2, 3)),
            (s(2, 3), Action::Retire, s(0, 0)),
            (s(2, 3), Action::Conflict, s(0, 0)),
            (s(2, 3), refused, s(0, 0)),
            (s(2, 3), Action::DeviceBackoff, s(0, 0)),
            (s(2, 3), backoff, s(0, 0)),
        ];
        for (before, action, after) in table {
            assert_eq!(
                strikes_after(before, action),
                after,
                "{before:?} {action:?}"
            );
        }
    }

    #[test]
    fn strikes_reach_the_limits_through_decide() {
        // Digest mismatches in a row: re-pack, re-pack, quarantine.
        let mut s = Strikes::default();
        let reply = Reply::BadRequest {
            error: BadRequest::DigestMismatch,
            detail: String::new(),
        };
        let mismatch = Outcome::Answered {
            status: 400,
            reply: Some(&reply),
            retry_after: None,
        };
        let mut seen = Vec::new();
        for _ in 0..DIGEST_MISMATCH_LIMIT {
            let a = decide(mismatch, s);
            seen.push(a);
            s = strikes_after(s, a);
        }
        assert_eq!(
            seen,
            [
                Action::Repack,
                Action::Repack,
                Action::Quarantine(QuarantineKind::RepeatedDigestMismatch)
            ]
        );
        // A transient failure in between starts the count again.
        let mut s = Strikes::default();
        for outcome in [Outcome::LocalRead, Outcome::LocalRead, Outcome::Network] {
            s = strikes_after(s, decide(outcome, s));
        }
        assert_eq!(s, Strikes::default());
        // An abandoned attempt does not.
        let mut s = Strikes::default();
        for _ in 0..LOCAL_READ_LIMIT - 1 {
            s = strikes_after(s, decide(Outcome::LocalRead, s));
            s = strikes_after(s, decide(Outcome::Aborted, s));
        }
        assert_eq!(
            decide(Outcome::LocalRead, s),
            Action::Quarantine(QuarantineKind::Unreadable)
        );
    }

    #[test]
    fn only_moves_end_an_episode_and_only_abandon_is_no_attempt() {
        let all = [
            Action::Retire,
            Action::Conflict,
            Action::Quarantine(QuarantineKind::NoCommit),
            Action::Repack,
            Action::DeviceBackoff,
            Action::Backoff { retry_after: None },
            Action::SkipThisPass,
            Action::Abandon,
        ];
        let moves: Vec<_> = all.iter().filter(|a| a.moves_episode()).collect();
        assert_eq!(
            moves,
            [
                &Action::Retire,
                &Action::Conflict,
                &Action::Quarantine(QuarantineKind::NoCommit)
            ]
        );
        let not_attempts: Vec<_> = all.iter().filter(|a| !a.counts_as_attempt()).collect();
        assert_eq!(not_attempts, [&Action::Abandon]);
    }
}
