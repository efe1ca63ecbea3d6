//! Every row of the answer table, one test each, and the table as a
//! property against an oracle written from SPEC §3.

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

const OUR_ID: &str = "ep-1";
const OUR_SHA: &str = "5e1dc0d1c2a9f1f1d4a0b7a7c8f8d3e2b1a0c9d8e7f6a5b4c3d2e1f0a9b8c7d6";
const OTHER_SHA: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// `f` of an answer to the upload of [`OUR_ID`] with [`OUR_SHA`].
fn answer_to_ours<R>(
    status: u16,
    reply: Option<&Reply>,
    retry_after: Option<Duration>,
    f: impl FnOnce(Outcome<'_>) -> R,
) -> R {
    let (id, sha) = (
        EpisodeId::parse(OUR_ID).unwrap(),
        Sha256::parse(OUR_SHA).unwrap(),
    );
    let sent = Sent {
        episode_id: &id,
        sha256: &sha,
    };
    f(Outcome::Answered {
        status,
        reply,
        retry_after,
        sent,
    })
}

/// `decide` of an answer to the upload of [`OUR_ID`] with [`OUR_SHA`].
fn decide_ours(
    status: u16,
    reply: Option<&Reply>,
    retry_after: Option<Duration>,
    strikes: Strikes,
) -> Action {
    answer_to_ours(status, reply, retry_after, |o| decide(o, strikes))
}

fn answered(status: u16) -> Action {
    decide_ours(status, None, None, Strikes::default())
}

fn bad_request(error: BadRequest, strikes: Strikes) -> Action {
    let reply = Reply::BadRequest {
        error,
        detail: String::new(),
    };
    decide_ours(400, Some(&reply), None, strikes)
}

fn stored(episode_id: &str, sha256: &str) -> Reply {
    Reply::Stored {
        episode_id: episode_id.into(),
        sha256: sha256.into(),
        size: 1,
    }
}

fn already_present(episode_id: &str, sha256: &str) -> Reply {
    Reply::AlreadyPresent {
        episode_id: episode_id.into(),
        sha256: sha256.into(),
        size: 1,
    }
}

#[test]
fn row_201_and_200_retire_when_they_name_the_episode_sent() {
    let ours = |s, r: Reply| decide_ours(s, Some(&r), None, Strikes::default());
    assert_eq!(ours(201, stored(OUR_ID, OUR_SHA)), Action::Retire);
    assert_eq!(ours(200, already_present(OUR_ID, OUR_SHA)), Action::Retire);
    // Either word means durable; the id and digest tie it to us.
    assert_eq!(ours(200, stored(OUR_ID, OUR_SHA)), Action::Retire);
    assert_eq!(ours(201, already_present(OUR_ID, OUR_SHA)), Action::Retire);
}

/// A 200/201 that is not the receiver's word about this episode (a
/// captive portal's page, a proxy's empty 200, another episode's or
/// other bytes' answer) must not retire it: the episode would leave the
/// device without having reached the receiver.
#[test]
fn row_201_and_200_that_do_not_confirm_the_episode_back_off() {
    let ra = Some(Duration::from_secs(3));
    let back = |s, r: Option<Reply>| decide_ours(s, r.as_ref(), ra, Strikes::default());
    let want = Action::Backoff { retry_after: ra };
    for status in [200, 201] {
        // No body, or one that is not JSON (garbage, a HTML page).
        assert_eq!(back(status, None), want, "{status} without a reply");
        let overloaded = Reply::Overloaded {
            retry_after_secs: 1,
            detail: String::new(),
        };
        assert_eq!(back(status, Some(overloaded)), want, "{status} overloaded");
        let conflict = Reply::Conflict {
            episode_id: OUR_ID.into(),
            existing_sha256: OUR_SHA.into(),
            sha256: None,
        };
        assert_eq!(back(status, Some(conflict)), want, "{status} conflict");
        for r in [stored("ep-2", OUR_SHA), already_present("ep-2", OUR_SHA)] {
            assert_eq!(back(status, Some(r.clone())), want, "{status} {r:?}");
        }
        for r in [
            stored(OUR_ID, OTHER_SHA),
            already_present(OUR_ID, OTHER_SHA),
        ] {
            assert_eq!(back(status, Some(r.clone())), want, "{status} {r:?}");
        }
        // Ids are case-sensitive, digests are lowercase hex.
        let upper = OUR_SHA.to_ascii_uppercase();
        assert_eq!(back(status, Some(stored("EP-1", OUR_SHA))), want);
        assert_eq!(back(status, Some(stored(OUR_ID, &upper))), want);
    }
}

/// `unconfirmed` says why, for the log, and only for a 200/201.
#[test]
fn unconfirmed_names_what_was_wrong_with_a_200_or_201() {
    let why = |status, reply: Option<&Reply>| {
        answer_to_ours(status, reply, None, |o| {
            unconfirmed(o).map(|u| u.to_string())
        })
    };
    let other_id = stored("ep-2", OUR_SHA);
    let other_sha = already_present(OUR_ID, OTHER_SHA);
    let gone = Reply::Gone {
        detail: String::new(),
    };
    assert_eq!(
        why(200, None).as_deref(),
        Some("its body is not a receiver's JSON answer")
    );
    assert_eq!(
        why(201, Some(&gone)).as_deref(),
        Some(r#"its status is "gone", neither "stored" nor "already-present""#)
    );
    assert_eq!(
        why(201, Some(&other_id)).as_deref(),
        Some(r#"it names another episode, "ep-2""#)
    );
    assert_eq!(
        why(200, Some(&other_sha)),
        Some(format!("it names another sha256, {OTHER_SHA:?}"))
    );
    assert_eq!(why(201, Some(&stored(OUR_ID, OUR_SHA))), None);
    assert_eq!(why(503, None), None, "not a 200/201");
    assert_eq!(unconfirmed(Outcome::Network), None);
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
    decide_ours(status, Some(&reply), None, Strikes::default())
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
        decide_ours(503, None, ra, Strikes::default()),
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
/// `digest-mismatch`; `earlier` how many came just before it;
/// `confirms` that the body is §2's `stored`/`already-present` with the
/// episode id and sha256 that were sent.
fn spec_row(
    status: u16,
    (mismatch, confirms): (bool, bool),
    earlier: u32,
    ra: Option<Duration>,
) -> Action {
    let four_xx = (400..500).contains(&status);
    if (status == 201 || status == 200) && confirms {
        Action::Retire
    } else if status == 201 || status == 200 {
        // Not the receiver's word about this episode: says nothing
        // about it, so transient.
        Action::Backoff { retry_after: ra }
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

/// A body: none, a 400 of every kind, or a `stored`/`already-present`
/// naming our id or another, our digest or another.
fn any_body() -> impl proptest::strategy::Strategy<Value = Option<Reply>> {
    use proptest::prelude::*;
    let ids = proptest::sample::select(vec![OUR_ID, "ep-2", "EP-1"]);
    let shas = proptest::sample::select(vec![OUR_SHA, OTHER_SHA]);
    proptest::prop_oneof![
        Just(None),
        any_bad_request().prop_map(|error| Some(Reply::BadRequest {
            error,
            detail: String::new()
        })),
        (any::<bool>(), ids, shas).prop_map(|(new, id, sha)| Some(if new {
            stored(id, sha)
        } else {
            already_present(id, sha)
        })),
    ]
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
        body in any_body(),
        earlier in 0u32..6,
        other in 0u32..9,
        ra in proptest::option::of(0u64..3600),
    ) {
        let ra = ra.map(Duration::from_secs);
        let got = decide_ours(
            status,
            body.as_ref(),
            ra,
            Strikes { digest_mismatch: earlier, local_read: other },
        );
        let mismatch = matches!(
            body,
            Some(Reply::BadRequest { error: BadRequest::DigestMismatch, .. })
        );
        let confirms = match &body {
            Some(Reply::Stored { episode_id, sha256, .. } | Reply::AlreadyPresent { episode_id, sha256, .. }) => {
                episode_id == OUR_ID && sha256 == OUR_SHA
            }
            _ => false,
        };
        proptest::prop_assert_eq!(got, spec_row(status, (mismatch, confirms), earlier, ra));
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
    let mut seen = Vec::new();
    for _ in 0..DIGEST_MISMATCH_LIMIT {
        let a = decide_ours(400, Some(&reply), None, s);
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
