//! What to write into a quarantine reason or a log line about one attempt:
//! the answer (status, body, the error line made of it) or a local error.

use serde_json::Value;

use ferry_proto::Reply;

use crate::fsio;
use crate::ship::{Answer, UploadResult};

/// What to write into a quarantine reason or a log line about an attempt.
#[derive(Debug, Default)]
pub(crate) struct Detail {
    pub status: Option<u16>,
    pub error: String,
    pub body: Value,
    pub remediation: Option<String>,
    pub existing_sha256: Option<String>,
}

impl Detail {
    pub fn from_answer(a: &Answer) -> Detail {
        let body = serde_json::from_str(&a.body).unwrap_or_else(|_| Value::String(a.body.clone()));
        let mut d = Detail {
            status: Some(a.status),
            body,
            ..Detail::default()
        };
        d.error = match &a.reply {
            Some(r @ Reply::BadRequest { error, detail }) => {
                format!("{} {}: {}: {detail}", a.status, r.status(), error.as_str())
            }
            Some(Reply::CommitRejected { remediation, .. }) => {
                d.remediation = Some(remediation.clone());
                format!("{} commit-rejected", a.status)
            }
            Some(Reply::Conflict {
                existing_sha256, ..
            }) => {
                d.existing_sha256 = Some(existing_sha256.clone());
                format!(
                    "{} conflict: the receiver holds sha256 {existing_sha256}",
                    a.status
                )
            }
            Some(Reply::TooLarge { limit, detail }) => {
                format!("{} too-large (limit {limit} bytes): {detail}", a.status)
            }
            Some(r) => format!("{} {}", a.status, r.status()),
            None => format!("{} (unparsed answer)", a.status),
        };
        d
    }

    /// An upload's result; `token_problem` (the token file could not be
    /// read) is added to an answer, which it probably explains.
    pub fn of_upload(result: &UploadResult, token_problem: Option<&str>) -> Detail {
        match result {
            UploadResult::Answered(a) => {
                let mut d = Detail::from_answer(a);
                if let Some(tp) = token_problem {
                    d.error = format!("{} ({tp})", d.error);
                }
                d
            }
            UploadResult::Network(e) => Detail::local(format!("network: {e}")),
            UploadResult::TarballRead { path, source } => {
                Detail::local(fsio::describe(path, source))
            }
            UploadResult::Aborted => Detail::local("aborted".into()),
        }
    }

    pub fn local(error: String) -> Detail {
        Detail {
            error,
            ..Detail::default()
        }
    }
}
