//! Device endpoints besides the upload: `GET /v1/whoami` and
//! `GET /v1/commits/{commit}` (may this commit ship?).

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::Json;
use ferry_proto::reply::{CommitCheck, WhoAmI};
use ferry_proto::{headers, BadRequest, Commit};

use super::{authenticate, AppError, SharedState};
use crate::config::render_remediation;

pub async fn whoami(
    State(state): State<SharedState>,
    h: HeaderMap,
) -> Result<Json<WhoAmI>, AppError> {
    let device = authenticate(&state, &h).await?;
    Ok(Json(WhoAmI {
        device,
        protocol: headers::PROTOCOL_VERSION.to_owned(),
    }))
}

pub async fn commit_check(
    State(state): State<SharedState>,
    h: HeaderMap,
    commit: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<CommitCheck>, AppError> {
    authenticate(&state, &h).await?;
    let raw = commit.map(|p| p.0).unwrap_or_default();
    let commit = Commit::parse(&raw)
        .map_err(|e| AppError::bad_request(BadRequest::MalformedCommit, e.to_string()))?;
    let status = state.index.commit_status(commit.as_str()).await?;
    let remediation = if status.allowed {
        String::new()
    } else {
        render_remediation(
            &state.config.remediation,
            commit.as_str(),
            status.head_commit.as_deref(),
        )
    };
    Ok(Json(CommitCheck {
        commit: commit.to_string(),
        allowed: status.allowed,
        head_commit: status.head_commit,
        remediation,
    }))
}
