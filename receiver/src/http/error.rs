//! The one error type of the HTTP layer, mapped to a `ferry_proto::Reply`.
//!
//! Internal failures are logged here with their details (path, errno,
//! database code) and answered with a generic `detail`: the wire never
//! carries internals.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_proto::{BadRequest, Reply};

use crate::store::objects::StoreError;
use crate::store::IndexError;

/// `Retry-After` when the database or the object store is unreachable.
pub const UNREACHABLE_RETRY_SECS: u64 = 5;

/// An answer that is not the happy path. Every variant becomes one `Reply`.
#[derive(Debug)]
pub struct AppError(pub Reply);

impl AppError {
    pub fn bad_request(error: BadRequest, detail: impl Into<String>) -> Self {
        Self(Reply::BadRequest {
            error,
            detail: detail.into(),
        })
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self(Reply::NotFound {
            detail: detail.into(),
        })
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self(Reply::Unauthenticated {
            detail: detail.into(),
        })
    }

    /// 503 for an upload whose device was renamed while it was in flight:
    /// its retry is checked under the new name.
    pub fn device_renamed() -> Self {
        Self(Reply::Overloaded {
            retry_after_secs: 1,
            detail: "this device was renamed while the upload was in flight; retry it".into(),
        })
    }

    /// 503 for a dependency that cannot be reached now (SPEC §7): the
    /// device retries after `Retry-After`.
    pub fn unreachable(what: &str) -> Self {
        Self(Reply::Overloaded {
            retry_after_secs: UNREACHABLE_RETRY_SECS,
            detail: format!(
                "the receiver's {what} cannot be reached now; nothing was stored; retry later"
            ),
        })
    }

    pub fn internal() -> Self {
        Self(Reply::Internal {
            detail: "internal error; the receiver's log has the details".into(),
        })
    }
}

impl From<IndexError> for AppError {
    fn from(e: IndexError) -> Self {
        match &e {
            IndexError::Full(_) => {
                tracing::error!(error = %e, "index database is full");
                Self(Reply::InsufficientStorage {
                    detail: "the receiver's index is out of space; try again later".into(),
                })
            }
            IndexError::DeviceRenamed(_) => {
                tracing::warn!(error = %e, "an upload is answered 503: retried, it is checked under the device's new name");
                Self::device_renamed()
            }
            IndexError::Unreachable(_) => {
                tracing::warn!(error = %e, "index database unreachable; answering 503");
                Self::unreachable("database")
            }
            _ => {
                tracing::error!(error = %e, "index database failure");
                Self::internal()
            }
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        tracing::error!(
            op = e.op,
            path = %e.path.display(),
            errno = e.errno().unwrap_or(0),
            error = %e.source,
            "object storage failure"
        );
        if e.is_unreachable() {
            Self::unreachable("object storage")
        } else if e.is_unavailable() {
            Self(Reply::InsufficientStorage {
                detail: "the receiver cannot store episodes now (storage full or read-only); try again later".into(),
            })
        } else {
            Self::internal()
        }
    }
}

impl From<crate::store::commit::CommitError> for AppError {
    fn from(e: crate::store::commit::CommitError) -> Self {
        match e {
            crate::store::commit::CommitError::Store(e) => e.into(),
            crate::store::commit::CommitError::Index(e) => e.into(),
        }
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        reply(self.0)
    }
}

/// A `Reply` as an HTTP response: its status code, JSON body and, for
/// `overloaded`, `Retry-After`. (`x-ferry-protocol` is added to every
/// response by the router's middleware.)
pub fn reply(r: Reply) -> Response {
    let status = StatusCode::from_u16(r.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let retry_after = match &r {
        Reply::Overloaded {
            retry_after_secs, ..
        } => Some(*retry_after_secs),
        _ => None,
    };
    let mut resp = (status, axum::Json(r)).into_response();
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}
