//! `PUT /v1/episodes/{id}` and `HEAD /v1/episodes/{id}`.
//!
//! The PUT decides everything the headers settle before it reads a byte of
//! the body, in this order: authentication, id, commit header, digest
//! header, `Content-Length` (required, at most `max_episode_size`), the
//! allow-list, an existing record, free space, an upload slot. Only then is
//! the body streamed to a temporary file while it is hashed; a verified body
//! is made durable and renamed into place, and the unique key of the index,
//! (device, id), decides which of two racing uploads of one id stored it.
//!
//! An id names an episode of the authenticated device only: another
//! device's episode of the same id is never read, compared or shown, so a
//! device learns nothing of it (HEAD answers 404, a PUT is this device's
//! own first store).

use std::time::Instant;

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use ferry_proto::{headers, BadRequest, Commit, EpisodeId, Reply, Sha256};
use http_body_util::BodyExt;

use super::{admit, authenticate, reply, token_hash, unknown_token, AppError, SharedState};
use crate::config::render_remediation;
use crate::store::objects::{Chunk, Staged, Staging};
use crate::store::{unix_now, CommitStatus, Inserted, NewEpisode, Preflight, Standing};

/// Seconds a client is asked to wait when every upload slot is taken.
pub const RETRY_AFTER_SECS: u64 = 5;
/// The first four bytes of a zstd frame, and the mask/value of a skippable
/// frame's magic (0x184D2A50..=0x184D2A5F, little endian).
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

pub(crate) fn is_zstd(head: &[u8]) -> bool {
    head.len() >= 4
        && (head[..4] == ZSTD_MAGIC || (head[0] & 0xf0 == 0x50 && head[1..4] == [0x2a, 0x4d, 0x18]))
}

/// The episode id of the path, or 400 `bad-episode-id`. The path parameter
/// arrives percent-decoded, so `a%2Fb` is `a/b` and fails the grammar.
async fn episode_id(
    state: &SharedState,
    parts: &mut axum::http::request::Parts,
) -> Result<EpisodeId, AppError> {
    let raw = Path::<String>::from_request_parts(parts, state)
        .await
        .map_err(|_| {
            AppError::bad_request(
                BadRequest::BadEpisodeId,
                "the episode id is not valid UTF-8",
            )
        })?;
    EpisodeId::parse(&raw.0)
        .map_err(|e| AppError::bad_request(BadRequest::BadEpisodeId, e.to_string()))
}

pub(crate) fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<Result<&'a str, ()>> {
    // A protocol header sent twice is malformed, not "the first one": a
    // proxy and the client could each read a different one.
    let mut all = h.get_all(name).iter();
    let first = all.next()?;
    if all.next().is_some() {
        return Some(Err(()));
    }
    Some(first.to_str().map_err(|_| ()))
}

/// A required length header (`Content-Length`, tus's `Upload-Length`):
/// 400 `missing-length` with `missing` when absent, and when not a number
/// (named `label` in the detail).
pub(crate) fn length_header(
    h: &HeaderMap,
    name: &str,
    label: &str,
    missing: &str,
) -> Result<u64, AppError> {
    match header_str(h, name) {
        None => Err(AppError::bad_request(BadRequest::MissingLength, missing)),
        Some(v) => v
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                AppError::bad_request(
                    BadRequest::MissingLength,
                    format!("the {label} header is not a number"),
                )
            }),
    }
}

/// A required protocol header parsed by `parse`: 400 `missing` when it is
/// absent, 400 `malformed` when it does not parse.
fn required<T>(
    h: &HeaderMap,
    name: &str,
    missing: BadRequest,
    malformed: BadRequest,
    parse: fn(&str) -> Result<T, ferry_proto::ParseIdError>,
) -> Result<T, AppError> {
    match header_str(h, name) {
        None => Err(AppError::bad_request(
            missing,
            format!("the {name} header is required"),
        )),
        Some(v) => v
            .map_err(|()| "not ASCII".to_owned())
            .and_then(|s| parse(s).map_err(|e| e.to_string()))
            .map_err(|e| AppError::bad_request(malformed, format!("{name}: {e}"))),
    }
}

/// `PUT /v1/episodes/` (no id at all).
pub async fn empty_id() -> AppError {
    AppError::bad_request(BadRequest::BadEpisodeId, "the episode id is empty")
}

/// Everything the headers say, validated, and what the index said of them.
/// Shared with the tus creation (`crate::tus`), whose headers say the same
/// things in other words.
pub(crate) struct Upload {
    pub(crate) id: EpisodeId,
    pub(crate) commit: Commit,
    pub(crate) sha256: Sha256,
    pub(crate) length: u64,
    pub(crate) device: String,
    pub(crate) commit_status: CommitStatus,
    pub(crate) existing: Option<crate::store::Episode>,
}

/// What a request claims about its episode before any body byte, each
/// value as far as it parsed: a PUT's path and headers, or a tus
/// creation's `Upload-Metadata` and `Upload-Length`.
pub(crate) struct Claim {
    pub(crate) id: Result<EpisodeId, AppError>,
    pub(crate) commit: Result<Commit, AppError>,
    pub(crate) sha256: Result<Sha256, AppError>,
    pub(crate) length: Result<u64, AppError>,
}

/// The headers, in the order of the module doc.
async fn check_headers(
    state: &SharedState,
    parts: &mut axum::http::request::Parts,
) -> Result<Upload, AppError> {
    let hash = token_hash(&parts.headers)?;
    let id = episode_id(state, parts).await;
    let h = &parts.headers;
    let commit = required(
        h,
        headers::COMMIT,
        BadRequest::MissingCommit,
        BadRequest::MalformedCommit,
        Commit::parse,
    );
    let sha256 = required(
        h,
        headers::SHA256,
        BadRequest::MissingDigest,
        BadRequest::MalformedDigest,
        Sha256::parse,
    );
    let length = length_header(
        h,
        header::CONTENT_LENGTH.as_str(),
        "Content-Length",
        "a Content-Length header is required (chunked uploads are not accepted)",
    );
    let claim = Claim {
        id,
        commit,
        sha256,
        length,
    };
    settle(state, &hash, claim).await
}

/// Decides a claim in the order of the module doc. The index is read once
/// (see [`Preflight`]), with the id and commit as far as they parse; their
/// errors are answered after authentication's.
pub(crate) async fn settle(
    state: &SharedState,
    hash: &[u8; 32],
    claim: Claim,
) -> Result<Upload, AppError> {
    let Claim {
        id,
        commit,
        sha256,
        length,
    } = claim;
    let preflight = state
        .index
        .preflight(
            hash,
            commit.as_ref().map_or("", |c| c.as_str()),
            id.as_ref().map_or("", |i| i.as_str()),
        )
        .await?;
    let Some(Preflight {
        device,
        commit: commit_status,
        episode: existing,
    }) = preflight
    else {
        return Err(unknown_token());
    };
    let device = admit(state, Some(device), hash)?;
    let id = id?;
    let commit = commit?;
    let sha256 = sha256?;
    let length = length?;
    let limit = state.config.max_episode_size;
    if length > limit {
        return Err(AppError(Reply::TooLarge {
            limit,
            detail: format!(
                "{length} bytes is over this receiver's max_episode_size of {limit} bytes"
            ),
        }));
    }
    if length == 0 {
        return Err(AppError::bad_request(
            BadRequest::MalformedBody,
            "the body is empty",
        ));
    }
    Ok(Upload {
        id,
        commit,
        sha256,
        length,
        device,
        commit_status,
        existing,
    })
}

/// The allow-list check: 412 with the rendered remediation, counted in the
/// metrics and tallied for the operator (`crate::rejected`: a map update).
fn check_commit(
    state: &SharedState,
    device: &str,
    commit: &Commit,
    status: &CommitStatus,
) -> Result<(), AppError> {
    if status.allowed {
        return Ok(());
    }
    state.metrics.rejected(commit.as_str());
    state.rejections.record(commit.as_str(), device, unix_now());
    Err(AppError(Reply::CommitRejected {
        your_commit: commit.to_string(),
        remediation: render_remediation(
            &state.config.remediation,
            commit.as_str(),
            status.head_commit.as_deref(),
        ),
        head_commit: status.head_commit.clone(),
    }))
}

fn already_present(id: &EpisodeId, sha256: String, size: u64) -> Reply {
    Reply::AlreadyPresent {
        episode_id: id.to_string(),
        sha256,
        size,
    }
}

fn conflict(id: &EpisodeId, existing: String, ours: &Sha256) -> Reply {
    Reply::Conflict {
        episode_id: id.to_string(),
        existing_sha256: existing,
        sha256: Some(ours.to_string()),
    }
}

/// Decrements the in-flight gauge when the upload ends, however it ends.
struct InFlight<'a>(&'a prometheus_client::metrics::gauge::Gauge);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

pub async fn put_episode(State(state): State<SharedState>, req: Request) -> Response {
    match put(&state, req).await {
        Ok(resp) => resp,
        Err(e) => e.into_response(),
    }
}

async fn put(state: &SharedState, req: Request) -> Result<Response, AppError> {
    let (mut parts, body) = req.into_parts();
    let mut up = check_headers(state, &mut parts).await?;
    if let Some(answer) = before_body(state, &mut up).await? {
        return Ok(answer);
    }
    let _slots = match take_slots(state, &up.device) {
        Ok(s) => s,
        Err(answer) => return Ok(*answer),
    };
    let started = Instant::now();
    let result = receive(state, &up, body).await;
    state
        .metrics
        .upload_seconds
        .observe(started.elapsed().as_secs_f64());
    result
}

/// The decisions after the headers' and before the body's: the
/// allow-list, an existing record (409, or 200 unless its object was lost),
/// free space. `Some` is the answer when one of them settles the upload.
pub(crate) async fn before_body(
    state: &SharedState,
    up: &mut Upload,
) -> Result<Option<Response>, AppError> {
    check_commit(state, &up.device, &up.commit, &up.commit_status)?;

    if let Some(existing) = up.existing.take() {
        if existing.sha256 != up.sha256 {
            return Ok(Some(reply(conflict(
                &up.id,
                existing.sha256.to_string(),
                &up.sha256,
            ))));
        }
        // Same bytes are already stored, unless the object was lost: then
        // this upload repairs it (and still answers 200).
        match state.objects.stat(&up.sha256).await {
            Ok(Some(_)) => {
                return Ok(Some(reply(already_present(
                    &up.id,
                    existing.sha256.to_string(),
                    existing.size,
                ))))
            }
            Ok(None) => tracing::error!(
                episode_id = %up.id, device = up.device, sha256 = %up.sha256,
                "indexed episode has no object; accepting the upload to repair it"
            ),
            Err(e) => return Err(e.into()),
        }
    }

    let free = state.objects.free_bytes().await?;
    if let Some(free) = free.filter(|free| *free < up.length) {
        tracing::warn!(free, needed = up.length, episode_id = %up.id, device = up.device, "not enough free space for an upload");
        return Err(AppError(Reply::InsufficientStorage {
            detail: "the receiver does not have space for this episode now; try again later".into(),
        }));
    }

    Ok(None)
}

/// What an upload holds while it reads a body: its device's slot, a global
/// slot, and its count in `uploads_in_flight`.
pub(crate) struct Slots<'a> {
    _device: super::slots::DeviceSlot,
    _global: tokio::sync::OwnedSemaphorePermit,
    _in_flight: InFlight<'a>,
}

/// The per-device and global upload slots, or the answer when none is free
/// (429 for the device's, 503 for the global ones).
pub(crate) fn take_slots<'a>(
    state: &'a SharedState,
    device: &str,
) -> Result<Slots<'a>, Box<Response>> {
    let max = state.config.max_uploads_per_device;
    let Some(device_slot) = state.device_slots.try_acquire(device, max) else {
        let mut resp = reply(Reply::Overloaded {
            retry_after_secs: RETRY_AFTER_SECS,
            detail: format!(
                "this device already has {max} uploads in flight (max_uploads_per_device); retry later"
            ),
        });
        *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
        return Err(Box::new(resp));
    };
    let Ok(slot) = state.upload_slots.clone().try_acquire_owned() else {
        return Err(Box::new(reply(Reply::Overloaded {
            retry_after_secs: RETRY_AFTER_SECS,
            detail: format!(
                "all {} upload slots are busy; retry later",
                state.config.max_concurrent_uploads
            ),
        })));
    };
    state.metrics.uploads_in_flight.inc();
    Ok(Slots {
        _device: device_slot,
        _global: slot,
        _in_flight: InFlight(&state.metrics.uploads_in_flight),
    })
}

/// Whether an upload is below the minimum average rate. Checked only once it
/// is older than twice the idle timeout, so a slow start is no problem; a
/// trickle that never pauses long enough for the idle timeout still cannot
/// hold an upload slot forever.
pub(crate) fn too_slow(
    config: &crate::config::Config,
    elapsed: std::time::Duration,
    received: u64,
) -> bool {
    let min = config.min_upload_rate;
    min > 0
        && elapsed > 2 * config.body_read_timeout
        && (received as f64) < min as f64 * elapsed.as_secs_f64()
}

/// Streams the body to a temporary file, verifies it, stores it.
async fn receive(state: &SharedState, up: &Upload, body: Body) -> Result<Response, AppError> {
    let Staging { tx, done: writer } = state.objects.begin(&up.sha256, up.length);
    let mut body = body;
    let mut received = 0u64;
    let mut head = Vec::with_capacity(4);
    let timeout = state.config.body_read_timeout;
    let started = Instant::now();
    loop {
        let frame = match tokio::time::timeout(timeout, body.frame()).await {
            Err(_) => {
                tracing::info!(episode_id = %up.id, device = up.device, received, "upload body stalled");
                return Err(AppError(Reply::RequestTimeout {
                    detail: format!(
                        "no body data arrived for {}",
                        humantime::format_duration(timeout)
                    ),
                }));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                tracing::info!(episode_id = %up.id, device = up.device, received, error = %e, "upload body failed");
                return Err(AppError::bad_request(
                    BadRequest::MalformedBody,
                    format!("the body ended after {received} of {} bytes", up.length),
                ));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        received += data.len() as u64;
        state.metrics.bytes_received.inc_by(data.len() as u64);
        if too_slow(&state.config, started.elapsed(), received) {
            tracing::info!(episode_id = %up.id, device = up.device, received, "upload body too slow");
            return Err(AppError(Reply::RequestTimeout {
                detail: format!(
                    "the body arrives slower than this receiver's minimum of {} bytes/s",
                    state.config.min_upload_rate
                ),
            }));
        }
        if head.len() < 4 {
            let take = (4 - head.len()).min(data.len());
            head.extend_from_slice(&data[..take]);
        }
        if tx.send(Chunk::Data(data)).await.is_err() {
            // The writer stopped: its result says why.
            break;
        }
    }
    let complete = received == up.length;
    if complete {
        let _ = tx.send(Chunk::Finish).await;
    }
    drop(tx);
    let staged = match writer.await {
        Ok(Ok(Some(w))) => w,
        Ok(Err(e)) => return Err(e.into()),
        Ok(Ok(None)) if !complete => {
            return Err(AppError::bad_request(
                BadRequest::MalformedBody,
                format!(
                    "the body has {received} bytes; Content-Length said {}",
                    up.length
                ),
            ))
        }
        Ok(Ok(None)) | Err(_) => {
            tracing::error!(episode_id = %up.id, device = up.device, "upload writer ended without a result");
            return Err(AppError::internal());
        }
    };
    if staged.sha256 != up.sha256 {
        // `staged` is dropped here, which discards what was staged.
        return Err(AppError::bad_request(
            BadRequest::DigestMismatch,
            format!(
                "the body's sha256 is {}, X-Ferry-Sha256 says {}",
                staged.sha256, up.sha256
            ),
        ));
    }
    if !is_zstd(&head) {
        return Err(AppError::bad_request(
            BadRequest::MalformedBody,
            "the body is not a zstd stream (expected a tar.zst)",
        ));
    }
    store(state, up, staged).await
}

/// Hands the verified upload to the commit stage (durable, renamed into
/// place, indexed; see `store::commit`); the unique key decides races.
pub(crate) async fn store(
    state: &SharedState,
    up: &Upload,
    staged: Staged,
) -> Result<Response, AppError> {
    stored(state, up, staged).await.map(reply)
}

/// [`store`]'s answer as a `Reply`: `stored`, `already-present` or
/// `conflict`.
pub(crate) async fn stored(
    state: &SharedState,
    up: &Upload,
    staged: Staged,
) -> Result<Reply, AppError> {
    let size = staged.size;
    let row = NewEpisode {
        episode_id: up.id.clone(),
        sha256: up.sha256.clone(),
        size,
        commit: up.commit.clone(),
        device: up.device.clone(),
        stored_at: unix_now(),
    };
    match state.committer.commit(staged, row).await? {
        Inserted::Created => {
            state.metrics.episodes_stored.inc();
            state.upload_rate.record(size, unix_now());
            tracing::info!(
                episode_id = %up.id, device = up.device, commit = %up.commit,
                sha256 = %up.sha256, size, "episode stored"
            );
            Ok(Reply::Stored {
                episode_id: up.id.to_string(),
                sha256: up.sha256.to_string(),
                size,
            })
        }
        // Same id, same bytes, same path: the object is the winner's too.
        Inserted::Exists(info) if info.sha256 == up.sha256 => {
            Ok(already_present(&up.id, info.sha256.to_string(), info.size))
        }
        // Lost the race to other bytes: ours are left to the collector.
        Inserted::Exists(info) => Ok(conflict(&up.id, info.sha256.to_string(), &up.sha256)),
        // Revoked while the body streamed: nothing was stored.
        Inserted::Refused(why) => {
            tracing::info!(
                episode_id = %up.id, device = up.device, commit = %up.commit, ?why,
                "upload refused at commit: standing changed while its body streamed"
            );
            Err(refused_at_commit(state, up, why).await)
        }
    }
}

/// The answer for an upload whose device or commit lost its standing while
/// its body streamed: what the headers would be answered now.
async fn refused_at_commit(state: &SharedState, up: &Upload, why: Standing) -> AppError {
    match why {
        Standing::DeviceRevoked => AppError(Reply::Forbidden {
            detail: format!(
                "device {} was revoked during this upload; nothing was stored",
                up.device
            ),
        }),
        Standing::DeviceGone => AppError::device_renamed(),
        // The bytes may be gone by the time the collector's delete lands:
        // nothing is acknowledged, and the retry stores them again.
        Standing::ObjectBeingCollected => AppError(Reply::Overloaded {
            retry_after_secs: super::error::UNREACHABLE_RETRY_SECS,
            detail: "an object with these bytes is being deleted as unreferenced; nothing was stored; retry it".into(),
        }),
        Standing::CommitNotAllowed => {
            let status = match state.index.commit_status(up.commit.as_str()).await {
                Ok(s) => s,
                Err(e) => return e.into(),
            };
            match check_commit(state, &up.device, &up.commit, &status) {
                Err(e) => e,
                // Allowed again since: the retry will be stored.
                Ok(()) => AppError(Reply::Overloaded {
                    retry_after_secs: 1,
                    detail: "the commit's standing changed during this upload; retry it".into(),
                }),
            }
        }
    }
}

/// `HEAD /v1/episodes/{id}`: 200 with `X-Ferry-Sha256` (and the size as
/// `Content-Length`) when the authenticated device stored this id, 404
/// otherwise (also when another device did).
pub async fn head_episode(State(state): State<SharedState>, req: Request) -> Response {
    let (mut parts, _body) = req.into_parts();
    let result = async {
        let device = authenticate(&state, &parts.headers).await?;
        let id = episode_id(&state, &mut parts).await?;
        let info = state
            .index
            .episode(&device, id.as_str())
            .await?
            .ok_or_else(|| AppError::not_found(format!("episode {id} is not stored")))?;
        let mut resp = StatusCode::OK.into_response();
        let h = resp.headers_mut();
        if let Ok(v) = HeaderValue::from_str(info.sha256.as_str()) {
            h.insert(headers::SHA256, v);
        }
        h.insert(header::CONTENT_LENGTH, HeaderValue::from(info.size));
        Ok::<_, AppError>(resp)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zstd_magic() {
        assert!(is_zstd(&[0x28, 0xb5, 0x2f, 0xfd]));
        assert!(is_zstd(&[0x5e, 0x2a, 0x4d, 0x18]));
        assert!(!is_zstd(b"hell"));
        assert!(!is_zstd(&[0x28, 0xb5]));
    }
}
