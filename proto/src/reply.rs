//! The JSON body of every receiver answer. Every body has a `status` field
//! (SPEC §2); every refusal also says why (`detail`).

use serde::{Deserialize, Serialize};

/// The `error` field of a 400 `bad-request` answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BadRequest {
    MissingCommit,
    MalformedCommit,
    BadEpisodeId,
    MissingDigest,
    /// The `X-Ferry-Sha256` header itself is not 64 lowercase hex.
    MalformedDigest,
    DigestMismatch,
    MalformedBody,
    /// `Content-Length` is absent (for example a chunked upload).
    MissingLength,
    /// `Upload-Metadata` of a tus creation (SPEC §8) is not `key base64`
    /// pairs separated by commas.
    MalformedMetadata,
    /// Any other malformed request (bad JSON on an admin route, bad query).
    Invalid,
}

impl BadRequest {
    /// Every kind, for the tests that go through them all.
    #[cfg(test)]
    pub(crate) const ALL: [BadRequest; 10] = [
        BadRequest::MissingCommit,
        BadRequest::MalformedCommit,
        BadRequest::BadEpisodeId,
        BadRequest::MissingDigest,
        BadRequest::MalformedDigest,
        BadRequest::DigestMismatch,
        BadRequest::MalformedBody,
        BadRequest::MissingLength,
        BadRequest::MalformedMetadata,
        BadRequest::Invalid,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            BadRequest::MissingCommit => "missing-commit",
            BadRequest::MalformedCommit => "malformed-commit",
            BadRequest::BadEpisodeId => "bad-episode-id",
            BadRequest::MissingDigest => "missing-digest",
            BadRequest::MalformedDigest => "malformed-digest",
            BadRequest::DigestMismatch => "digest-mismatch",
            BadRequest::MalformedBody => "malformed-body",
            BadRequest::MissingLength => "missing-length",
            BadRequest::MalformedMetadata => "malformed-metadata",
            BadRequest::Invalid => "invalid",
        }
    }
}

/// One receiver answer. Serialised with `status` as the tag, kebab-case,
/// exactly as SPEC §2 lists them. Optional fields are omitted when `None`.
///
/// Ids and digests are plain strings here rather than the validated
/// newtypes: an answer must be readable even when it echoes back what the
/// client sent wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "kebab-case")]
pub enum Reply {
    /// 201: first successful store.
    Stored {
        episode_id: String,
        sha256: String,
        size: u64,
    },
    /// 200: the id is stored with the same sha256.
    AlreadyPresent {
        episode_id: String,
        sha256: String,
        size: u64,
    },
    /// 409: the id is stored with a different sha256.
    Conflict {
        episode_id: String,
        existing_sha256: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
    /// 412: the commit is not on the allow-list.
    CommitRejected {
        your_commit: String,
        #[serde(default)]
        head_commit: Option<String>,
        remediation: String,
    },
    /// 400.
    BadRequest { error: BadRequest, detail: String },
    /// 401: no token, or an unknown one.
    Unauthenticated { detail: String },
    /// 403: the device is revoked.
    Forbidden { detail: String },
    /// 404 (HEAD, admin lookups, unknown routes).
    NotFound { detail: String },
    /// 405.
    MethodNotAllowed { detail: String },
    /// 408: the body did not arrive in time.
    RequestTimeout { detail: String },
    /// 413: over `max_episode_size`.
    TooLarge { limit: u64, detail: String },
    /// 503 or 429: over capacity; `Retry-After` is set.
    Overloaded {
        retry_after_secs: u64,
        detail: String,
    },
    /// 507: the receiver cannot store now (disk full, storage failing).
    InsufficientStorage { detail: String },
    /// 500: a bug or an unexpected failure; the log has the details.
    Internal { detail: String },
    /// 409 (tus, SPEC §8): a PATCH's `Upload-Offset` is not the upload's
    /// offset, which is `offset`: ask HEAD and send from there.
    OffsetMismatch { offset: u64, detail: String },
    /// 410 (tus): the upload expired; start a new one.
    Gone { detail: String },
    /// 412 (tus): `Tus-Resumable` names a version this receiver does not
    /// speak (`Tus-Version` lists those it does).
    UnsupportedVersion { detail: String },
    /// 460 (tus checksum extension): the PATCH's bytes do not match its
    /// `Upload-Checksum`; none of them were kept.
    ChecksumMismatch { detail: String },
}

impl Reply {
    /// The `status` string of this reply, as serialised.
    pub fn status(&self) -> &'static str {
        match self {
            Reply::Stored { .. } => "stored",
            Reply::AlreadyPresent { .. } => "already-present",
            Reply::Conflict { .. } => "conflict",
            Reply::CommitRejected { .. } => "commit-rejected",
            Reply::BadRequest { .. } => "bad-request",
            Reply::Unauthenticated { .. } => "unauthenticated",
            Reply::Forbidden { .. } => "forbidden",
            Reply::NotFound { .. } => "not-found",
            Reply::MethodNotAllowed { .. } => "method-not-allowed",
            Reply::RequestTimeout { .. } => "request-timeout",
            Reply::TooLarge { .. } => "too-large",
            Reply::Overloaded { .. } => "overloaded",
            Reply::InsufficientStorage { .. } => "insufficient-storage",
            Reply::Internal { .. } => "internal",
            Reply::OffsetMismatch { .. } => "offset-mismatch",
            Reply::Gone { .. } => "gone",
            Reply::UnsupportedVersion { .. } => "unsupported-version",
            Reply::ChecksumMismatch { .. } => "checksum-mismatch",
        }
    }

    /// The HTTP status code that carries this reply. `Overloaded` is 503;
    /// a receiver that wants 429 (per-device rate limit) sets it itself.
    pub fn http_status(&self) -> u16 {
        match self {
            Reply::Stored { .. } => 201,
            Reply::AlreadyPresent { .. } => 200,
            Reply::Conflict { .. } => 409,
            Reply::CommitRejected { .. } => 412,
            Reply::BadRequest { .. } => 400,
            Reply::Unauthenticated { .. } => 401,
            Reply::Forbidden { .. } => 403,
            Reply::NotFound { .. } => 404,
            Reply::MethodNotAllowed { .. } => 405,
            Reply::RequestTimeout { .. } => 408,
            Reply::TooLarge { .. } => 413,
            Reply::Overloaded { .. } => 503,
            Reply::InsufficientStorage { .. } => 507,
            Reply::Internal { .. } => 500,
            Reply::OffsetMismatch { .. } => 409,
            Reply::Gone { .. } => 410,
            Reply::UnsupportedVersion { .. } => 412,
            Reply::ChecksumMismatch { .. } => 460,
        }
    }
}

/// Answer of `GET /v1/commits/{commit}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitCheck {
    pub commit: String,
    pub allowed: bool,
    pub head_commit: Option<String>,
    /// Empty when the commit is allowed.
    pub remediation: String,
}

/// Answer of `GET /v1/whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub device: String,
    pub protocol: String,
}

/// The `status` of a health answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HealthStatus {
    /// `GET /healthz`: the process answers.
    Ok,
    /// `GET /readyz`: the index and the storage are usable.
    Ready,
    /// `GET /readyz` (503): they are not; `detail` says which.
    NotReady,
}

/// The body of `GET /healthz` and `GET /readyz`. (Fields in alphabetical
/// order, as these bodies were always written.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    pub status: HealthStatus,
}

impl Health {
    pub fn new(status: HealthStatus) -> Self {
        Self {
            detail: None,
            status,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn wire_shapes_match_the_spec() {
        let r = Reply::Stored {
            episode_id: "e1".into(),
            sha256: "ab".into(),
            size: 3,
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"status": "stored", "episode_id": "e1", "sha256": "ab", "size": 3})
        );
        let r = Reply::CommitRejected {
            your_commit: "a".into(),
            head_commit: None,
            remediation: "upgrade".into(),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"status": "commit-rejected", "your_commit": "a", "head_commit": null, "remediation": "upgrade"})
        );
        let r = Reply::BadRequest {
            error: BadRequest::DigestMismatch,
            detail: "x".into(),
        };
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            json!({"status": "bad-request", "error": "digest-mismatch", "detail": "x"})
        );
    }

    #[test]
    fn status_and_http_status_agree_with_serialisation() {
        let all = [
            Reply::Stored {
                episode_id: String::new(),
                sha256: String::new(),
                size: 0,
            },
            Reply::AlreadyPresent {
                episode_id: String::new(),
                sha256: String::new(),
                size: 0,
            },
            Reply::Conflict {
                episode_id: String::new(),
                existing_sha256: String::new(),
                sha256: None,
            },
            Reply::CommitRejected {
                your_commit: String::new(),
                head_commit: None,
                remediation: String::new(),
            },
            Reply::BadRequest {
                error: BadRequest::Invalid,
                detail: String::new(),
            },
            Reply::Unauthenticated {
                detail: String::new(),
            },
            Reply::Forbidden {
                detail: String::new(),
            },
            Reply::NotFound {
                detail: String::new(),
            },
            Reply::MethodNotAllowed {
                detail: String::new(),
            },
            Reply::RequestTimeout {
                detail: String::new(),
            },
            Reply::TooLarge {
                limit: 1,
                detail: String::new(),
            },
            Reply::Overloaded {
                retry_after_secs: 1,
                detail: String::new(),
            },
            Reply::InsufficientStorage {
                detail: String::new(),
            },
            Reply::Internal {
                detail: String::new(),
            },
            Reply::OffsetMismatch {
                offset: 3,
                detail: String::new(),
            },
            Reply::Gone {
                detail: String::new(),
            },
            Reply::UnsupportedVersion {
                detail: String::new(),
            },
            Reply::ChecksumMismatch {
                detail: String::new(),
            },
        ];
        for r in all {
            let v = serde_json::to_value(&r).unwrap();
            assert_eq!(v["status"], r.status(), "{r:?}");
            assert_eq!(r.http_status(), spec_code(r.status()), "{r:?}");
            let back: Reply = serde_json::from_value(v).unwrap();
            assert_eq!(back, r);
        }
    }

    /// SPEC §2's HTTP status for each `status` string, as its table has it.
    fn spec_code(status: &str) -> u16 {
        match status {
            "stored" => 201,
            "already-present" => 200,
            "conflict" => 409,
            "commit-rejected" => 412,
            "bad-request" => 400,
            "unauthenticated" => 401,
            "forbidden" => 403,
            "not-found" => 404,
            "method-not-allowed" => 405,
            "request-timeout" => 408,
            "too-large" => 413,
            "overloaded" => 503,
            "insufficient-storage" => 507,
            "internal" => 500,
            // SPEC §8 (tus 1.0).
            "offset-mismatch" => 409,
            "gone" => 410,
            "unsupported-version" => 412,
            "checksum-mismatch" => 460,
            other => panic!("{other} is not in SPEC §2 or §8"),
        }
    }

    #[test]
    fn bad_request_kinds_serialise_as_their_names() {
        for k in BadRequest::ALL {
            assert_eq!(serde_json::to_value(k).unwrap(), k.as_str());
        }
    }

    #[test]
    fn health_bodies_are_the_status_and_the_detail_when_not_ready() {
        let ok = serde_json::to_string(&Health::new(HealthStatus::Ok)).unwrap();
        assert_eq!(ok, r#"{"status":"ok"}"#);
        let not = Health {
            detail: Some("index database not usable".into()),
            status: HealthStatus::NotReady,
        };
        assert_eq!(
            serde_json::to_string(&not).unwrap(),
            r#"{"detail":"index database not usable","status":"not-ready"}"#
        );
    }

    #[test]
    fn verify_states_and_revocations_keep_their_wire_strings() {
        use crate::admin::{CommitRevoked, DeviceRevoked, Revoked, VerifyState};
        for s in VerifyState::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<VerifyState>(&json).unwrap(), s);
        }
        fn json(v: &impl Serialize) -> String {
            serde_json::to_string(v).unwrap()
        }
        let commit = CommitRevoked {
            commit: "abc".into(),
            status: Revoked::Revoked,
        };
        let device = DeviceRevoked {
            name: "dev".into(),
            status: Revoked::Revoked,
        };
        assert_eq!(json(&commit), r#"{"commit":"abc","status":"revoked"}"#);
        assert_eq!(json(&device), r#"{"name":"dev","status":"revoked"}"#);
    }
}
