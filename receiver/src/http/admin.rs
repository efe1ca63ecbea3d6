//! The admin API under `/v1/admin/`, guarded by the admin token
//! (`admin_token_file`; without one configured every route answers 401).
//! The JSON shapes are `ferry_proto::admin`, the same as `--json` output.
//! An episode is named by its device and its id:
//! `/v1/admin/devices/{device}/episodes/{id}`.

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use ferry_proto::admin::{
    AddDevice, AllowCommit, CommitInfo, DeviceInfo, EpisodeInfo, NewDevice, RejectedCommit,
    RenameDevice,
};
use ferry_proto::admin::{CommitRevoked, DeviceRevoked, Revoked};
use ferry_proto::{headers, BadRequest, Reply};
use serde::Deserialize;

use super::{AppError, SharedState};
use crate::ops::{self, OpError};
use crate::store::Episode;
use crate::tokens;

pub fn router() -> Router<SharedState> {
    Router::new()
        .route("/commits", get(list_commits).post(allow_commit))
        .route("/commits/rejected", get(rejected_commits))
        .route("/commits/{commit}", delete(revoke_commit))
        .route("/devices", get(list_devices).post(add_device))
        .route("/devices/{name}", delete(revoke_device))
        .route("/devices/{name}/rename", post(rename_device))
        .route("/devices/{name}/episodes", get(device_episodes))
        .route("/devices/{name}/episodes/{id}", get(episode))
        .route("/devices/{name}/episodes/{id}/download", get(download))
        .route("/episodes", get(list_episodes))
        .route("/episodes/{id}", get(episode_by_id))
        .route("/episodes/{id}/download", get(download_by_id))
}

type PathParam<T> = Result<Path<T>, axum::extract::rejection::PathRejection>;

/// Checks `Authorization: Bearer <admin token>` in constant time.
fn admin(state: &SharedState, h: &HeaderMap) -> Result<(), AppError> {
    let Some(expected) = state.admin_token.as_deref() else {
        return Err(AppError::unauthenticated(
            "the admin API is disabled on this receiver: set admin_token_file to enable it",
        ));
    };
    let presented = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(tokens::bearer)
        .unwrap_or("");
    if tokens::token_matches(presented, expected) {
        Ok(())
    } else {
        Err(AppError::unauthenticated(
            "an `Authorization: Bearer <admin token>` header is required",
        ))
    }
}

impl From<OpError> for AppError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Invalid(d) | OpError::Exists(d) => {
                AppError::bad_request(BadRequest::Invalid, d)
            }
            OpError::NotFound(d) => AppError::not_found(d),
            OpError::Index(e) => e.into(),
            OpError::Store(e) => e.into(),
        }
    }
}

fn body<T>(j: Result<Json<T>, JsonRejection>) -> Result<T, AppError> {
    j.map(|Json(v)| v)
        .map_err(|e| AppError::bad_request(BadRequest::Invalid, e.body_text()))
}

fn param<T>(p: PathParam<T>) -> Result<T, AppError> {
    p.map(|Path(s)| s).map_err(|_| {
        AppError::bad_request(BadRequest::Invalid, "the path parameter is not valid UTF-8")
    })
}

async fn list_commits(
    State(st): State<SharedState>,
    h: HeaderMap,
) -> Result<Json<Vec<CommitInfo>>, AppError> {
    admin(&st, &h)?;
    let list = st.index.list_commits().await?;
    Ok(Json(list.iter().map(ops::commit_info).collect()))
}

/// `GET /v1/admin/commits/rejected`: as `commits rejected --json`, plus
/// what this process has not flushed yet.
async fn rejected_commits(
    State(st): State<SharedState>,
    h: HeaderMap,
) -> Result<Json<Vec<RejectedCommit>>, AppError> {
    admin(&st, &h)?;
    let list = crate::rejected::list(&*st.index, &st.rejections, st.config.rejected_window).await?;
    Ok(Json(list))
}

async fn allow_commit(
    State(st): State<SharedState>,
    h: HeaderMap,
    j: Result<Json<AllowCommit>, JsonRejection>,
) -> Result<(StatusCode, Json<CommitInfo>), AppError> {
    admin(&st, &h)?;
    let entry = ops::allow_commit(&st.index, &body(j)?).await?;
    Ok((StatusCode::CREATED, Json(ops::commit_info(&entry))))
}

async fn revoke_commit(
    State(st): State<SharedState>,
    h: HeaderMap,
    c: PathParam<String>,
) -> Result<Response, AppError> {
    admin(&st, &h)?;
    let c = param(c)?;
    ops::revoke_commit(&st.index, &c).await?;
    Ok(Json(CommitRevoked {
        commit: c,
        status: Revoked::Revoked,
    })
    .into_response())
}

async fn list_devices(
    State(st): State<SharedState>,
    h: HeaderMap,
) -> Result<Json<Vec<DeviceInfo>>, AppError> {
    admin(&st, &h)?;
    let list = st.index.list_devices().await?;
    Ok(Json(list.iter().map(ops::device_info).collect()))
}

async fn add_device(
    State(st): State<SharedState>,
    h: HeaderMap,
    j: Result<Json<AddDevice>, JsonRejection>,
) -> Result<(StatusCode, Json<NewDevice>), AppError> {
    admin(&st, &h)?;
    let dev = ops::add_device(&st.index, &body(j)?.name).await?;
    Ok((StatusCode::CREATED, Json(dev)))
}

async fn revoke_device(
    State(st): State<SharedState>,
    h: HeaderMap,
    n: PathParam<String>,
) -> Result<Response, AppError> {
    admin(&st, &h)?;
    let name = param(n)?;
    ops::revoke_device(&st.index, &name).await?;
    Ok(Json(DeviceRevoked {
        name,
        status: Revoked::Revoked,
    })
    .into_response())
}

/// Renames a device; it keeps its token and its episodes.
async fn rename_device(
    State(st): State<SharedState>,
    h: HeaderMap,
    n: PathParam<String>,
    j: Result<Json<RenameDevice>, JsonRejection>,
) -> Result<Json<DeviceInfo>, AppError> {
    admin(&st, &h)?;
    let old = param(n)?;
    let new = body(j)?.name;
    let device = ops::rename_device(&st.index, &old, &new).await?;
    Ok(Json(ops::device_info(&device)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<u64>,
    device: Option<String>,
}

type ListParams = Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>;

/// Episodes, newest first (at most `limit`, default 1000), of every device
/// or of `?device=NAME`.
async fn list_episodes(
    State(st): State<SharedState>,
    h: HeaderMap,
    q: ListParams,
) -> Result<Json<Vec<EpisodeInfo>>, AppError> {
    admin(&st, &h)?;
    episodes_of(&st, None, q).await
}

/// One device's episodes, as [`list_episodes`] with `?device=NAME`.
async fn device_episodes(
    State(st): State<SharedState>,
    h: HeaderMap,
    n: PathParam<String>,
    q: ListParams,
) -> Result<Json<Vec<EpisodeInfo>>, AppError> {
    admin(&st, &h)?;
    episodes_of(&st, Some(param(n)?), q).await
}

/// The episodes of `device` (else of the query's device, else of all).
async fn episodes_of(
    st: &SharedState,
    device: Option<String>,
    q: ListParams,
) -> Result<Json<Vec<EpisodeInfo>>, AppError> {
    let Query(q) = q.map_err(|e| AppError::bad_request(BadRequest::Invalid, e.body_text()))?;
    let device = device.or(q.device);
    let limit = Some(q.limit.unwrap_or(1000));
    let list = ops::list_episodes(&st.index, device.as_deref(), limit).await?;
    Ok(Json(list.iter().map(ops::episode_info).collect()))
}

async fn episode(
    State(st): State<SharedState>,
    h: HeaderMap,
    p: PathParam<(String, String)>,
) -> Result<Json<EpisodeInfo>, AppError> {
    admin(&st, &h)?;
    let (device, id) = param(p)?;
    Ok(Json(ops::episode_info(
        &ops::episode(&st.index, &device, &id).await?,
    )))
}

/// `/v1/admin/episodes/{id}` (the route of the release whose ids were
/// global): the episode when exactly one device stored the id, 400 naming
/// the devices when several did.
async fn episode_by_id(
    State(st): State<SharedState>,
    h: HeaderMap,
    id: PathParam<String>,
) -> Result<Json<EpisodeInfo>, AppError> {
    admin(&st, &h)?;
    Ok(Json(ops::episode_info(
        &ops::resolve(&st.index, &param(id)?).await?,
    )))
}

async fn download(
    State(st): State<SharedState>,
    h: HeaderMap,
    p: PathParam<(String, String)>,
) -> Result<Response, AppError> {
    admin(&st, &h)?;
    let (device, id) = param(p)?;
    send_object(&st, ops::episode(&st.index, &device, &id).await?).await
}

/// `/v1/admin/episodes/{id}/download`, resolved as [`episode_by_id`].
async fn download_by_id(
    State(st): State<SharedState>,
    h: HeaderMap,
    id: PathParam<String>,
) -> Result<Response, AppError> {
    admin(&st, &h)?;
    send_object(&st, ops::resolve(&st.index, &param(id)?).await?).await
}

/// Streams the stored `tar.zst`. An unreadable object fails this request
/// only.
async fn send_object(st: &SharedState, info: Episode) -> Result<Response, AppError> {
    let stream = st.objects.read(&info.sha256).await.map_err(|e| {
        if e.source.kind() == std::io::ErrorKind::NotFound {
            tracing::error!(path = %e.path.display(), device = info.device, episode_id = %info.episode_id, "stored episode has no object");
            AppError(Reply::NotFound {
                detail: format!("episode {}/{} is indexed but its object is missing", info.device, info.episode_id),
            })
        } else {
            e.into()
        }
    })?;
    let mut resp = Body::from_stream(stream).into_response();
    let hdrs = resp.headers_mut();
    hdrs.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zstd"),
    );
    hdrs.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
    if let Ok(v) = HeaderValue::from_str(info.sha256.as_str()) {
        hdrs.insert(headers::SHA256, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}.tar.zst\"",
        info.episode_id
    )) {
        hdrs.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(resp)
}
