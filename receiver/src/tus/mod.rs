//! Resumable uploads with tus 1.0 (SPEC §8): core + `creation`,
//! `termination`, `expiration`, `checksum` (sha256), on the local disk
//! (`store::uploads`).
//!
//! - `OPTIONS /v1/uploads`: discovery.
//! - `POST /v1/uploads`: every decision of SPEC §2 that the headers settle,
//!   made by the PUT's own code (`http::upload::settle` and `before_body`)
//!   on what `Upload-Metadata` and `Upload-Length` claim; then `201` with
//!   `Location` and `Upload-Expires`.
//! - `HEAD /v1/uploads/{upload}`: the durable offset.
//! - `PATCH /v1/uploads/{upload}`: [`patch`].
//! - `DELETE /v1/uploads/{upload}`: termination.
//!
//! An upload belongs to the device that created it: for another device's
//! token every route answers 404, as for an upload that does not exist.
//! Every answer carries `Tus-Resumable: 1.0.0`; a request (other than
//! OPTIONS) for another version is answered 412 with `Tus-Version`.

pub mod caps;
pub mod metadata;
pub mod patch;
pub mod shared;

#[cfg(test)]
mod tests;

use std::time::{Duration, UNIX_EPOCH};

use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{head, options};
use axum::Router;
use ferry_proto::headers::tus;
use ferry_proto::{Reply, UPLOADS_PATH};

use crate::http::upload::{before_body, settle};
use crate::http::{authenticate, reply, token_hash, AppError, SharedState};
use crate::store::unix_now;
use crate::store::uploads::{valid_id, Meta};

/// The tus routes, with the header middleware of the module doc.
pub fn router() -> Router<SharedState> {
    Router::new()
        .route(UPLOADS_PATH, options(discover).post(create))
        .route(
            &format!("{UPLOADS_PATH}/{{upload}}"),
            head(status)
                .patch(patch::patch)
                .delete(terminate)
                .options(discover),
        )
        .layer(middleware::from_fn(tus_headers))
}

fn static_header(resp: &mut Response, name: &'static str, value: &'static str) {
    resp.headers_mut()
        .insert(name, HeaderValue::from_static(value));
}

/// Refuses other tus versions; adds `Tus-Resumable` to every answer.
async fn tus_headers(req: Request, next: Next) -> Response {
    let version = req.headers().get(tus::RESUMABLE);
    let mut resp =
        if req.method() == Method::OPTIONS || version.is_some_and(|v| v == tus::PROTOCOL_VERSION) {
            next.run(req).await
        } else {
            let mut r = reply(Reply::UnsupportedVersion {
                detail: format!(
                    "Tus-Resumable must be {} (got {:?})",
                    tus::PROTOCOL_VERSION,
                    version.and_then(|v| v.to_str().ok()).unwrap_or("none")
                ),
            });
            static_header(&mut r, tus::VERSION, tus::PROTOCOL_VERSION);
            r
        };
    static_header(&mut resp, tus::RESUMABLE, tus::PROTOCOL_VERSION);
    resp
}

/// `OPTIONS`: what this receiver speaks of tus.
async fn discover(State(state): State<SharedState>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    static_header(&mut resp, tus::VERSION, tus::PROTOCOL_VERSION);
    static_header(&mut resp, tus::EXTENSION, tus::EXTENSIONS);
    static_header(&mut resp, tus::CHECKSUM_ALGORITHM, tus::CHECKSUM_ALGORITHMS);
    resp.headers_mut().insert(
        tus::MAX_SIZE,
        HeaderValue::from(state.config.max_episode_size),
    );
    resp
}

/// `Upload-Expires` of an upload: an RFC 7231 date.
fn expires_header(meta: &Meta) -> HeaderValue {
    let at = UNIX_EPOCH + Duration::from_secs(meta.expires.max(0) as u64);
    HeaderValue::from_str(&httpdate::fmt_http_date(at)).unwrap_or(HeaderValue::from_static(""))
}

/// `POST /v1/uploads`: creation.
async fn create(State(state): State<SharedState>, headers: HeaderMap) -> Response {
    let result = async {
        let hash = token_hash(&headers)?;
        let claim = metadata::claim(&headers);
        let mut up = settle(&state, &hash, claim).await?;
        if let Some(answer) = before_body(&state, &mut up).await? {
            return Ok(answer);
        }
        if let Err(refused) = caps::admit(&state, &up.device, up.length).await {
            return Ok(refused);
        }
        let now = unix_now();
        let meta = Meta {
            device: up.device.clone(),
            episode_id: up.id.to_string(),
            commit: up.commit.to_string(),
            sha256: up.sha256.to_string(),
            length: up.length,
            offset: 0,
            created: now,
            expires: now.saturating_add(state.config.upload_expiry.as_secs() as i64),
        };
        let id = match &state.parts {
            Some(parts) => {
                let episode = (up.id.clone(), up.commit.clone(), up.sha256.clone());
                shared::create(&state, parts.as_ref(), &meta, episode).await?
            }
            None => state.uploads.create(meta.clone()).await?,
        };
        tracing::info!(
            upload = id, episode_id = %up.id, device = up.device, length = up.length,
            "resumable upload created"
        );
        let mut resp = StatusCode::CREATED.into_response();
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("{UPLOADS_PATH}/{id}")) {
            h.insert(header::LOCATION, v);
        }
        h.insert(tus::UPLOAD_EXPIRES, expires_header(&meta));
        h.insert(tus::UPLOAD_OFFSET, HeaderValue::from(0u64));
        Ok::<_, AppError>(resp)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// 410 for an upload past its expiry.
pub(crate) fn expired_upload() -> AppError {
    AppError(Reply::Gone {
        detail: "this upload expired; create a new one".into(),
    })
}

/// 503 while another PATCH of the upload holds it.
pub(crate) fn patch_busy() -> AppError {
    AppError(Reply::Overloaded {
        retry_after_secs: crate::http::upload::RETRY_AFTER_SECS,
        detail: "another PATCH of this upload is in progress; retry later".into(),
    })
}

/// 409 for a PATCH at `asked` of an upload at `at`.
pub(crate) fn offset_mismatch(asked: u64, at: u64) -> AppError {
    AppError(Reply::OffsetMismatch {
        offset: at,
        detail: format!("Upload-Offset is {asked}, the upload is at {at}; ask HEAD"),
    })
}

/// 404 for an upload that is not there, or not this device's.
pub(crate) fn no_upload() -> AppError {
    AppError::not_found("no such upload")
}

/// The upload `id` of the authenticated `device`: 404 when there is none
/// (or another device's), 410 when it expired.
pub(crate) async fn owned(state: &SharedState, device: &str, id: &str) -> Result<Meta, AppError> {
    if !valid_id(id) {
        return Err(no_upload());
    }
    if state.parts.is_some() {
        return shared::owned(state, device, id).await;
    }
    let meta = state
        .uploads
        .load(id)
        .await?
        .filter(|m| m.device == device)
        .ok_or_else(no_upload)?;
    if meta.expired(unix_now()) {
        return Err(expired_upload());
    }
    Ok(meta)
}

/// The headers that say where an upload stands.
pub(crate) fn offset_headers(resp: &mut Response, meta: &Meta) {
    let h = resp.headers_mut();
    h.insert(tus::UPLOAD_OFFSET, HeaderValue::from(meta.offset));
    h.insert(tus::UPLOAD_EXPIRES, expires_header(meta));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// `HEAD /v1/uploads/{upload}`: the durable offset and the length.
async fn status(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let device = authenticate(&state, &headers).await?;
        let meta = owned(&state, &device, &id).await?;
        let mut resp = StatusCode::OK.into_response();
        offset_headers(&mut resp, &meta);
        resp.headers_mut()
            .insert(tus::UPLOAD_LENGTH, HeaderValue::from(meta.length));
        Ok::<_, AppError>(resp)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// `DELETE /v1/uploads/{upload}`: termination; waits for a PATCH of it.
async fn terminate(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        let device = authenticate(&state, &headers).await?;
        owned(&state, &device, &id).await?;
        if let Some(parts) = &state.parts {
            shared::terminate(&state, parts.as_ref(), &device, &id).await?;
        } else {
            let live = state.uploads.live(&id);
            let _held = live.lock().await;
            // Gone meanwhile (completed, or reclaimed): the same 404.
            owned(&state, &device, &id).await?;
            state.uploads.remove(&id).await?;
        }
        tracing::info!(upload = id, device, "resumable upload terminated");
        Ok::<_, AppError>(StatusCode::NO_CONTENT.into_response())
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}
