//! `PATCH /v1/uploads/{upload}`: bytes appended at the upload's offset.
//!
//! One PATCH of an upload at a time (its [`Live`] lock; a second waits up
//! to `body_read_timeout`, then 503). The body is streamed to the upload's
//! `.bin` by a blocking writer that hashes as it writes, continuing the
//! sha256 state the previous PATCH left in memory (after a restart, the
//! first PATCH re-hashes the partial file once). When the body ends, the
//! bytes are fsynced, then the record's offset is replaced, then the new
//! offset answered: what was answered survives `kill -9`. A long PATCH
//! also checkpoints every `store::uploads::CHECKPOINT` bytes, so what HEAD
//! answers mid-PATCH is durable too. A body that ends early (a dropped
//! link) keeps what arrived, as tus asks, unless the PATCH carried an
//! `Upload-Checksum`, which then cannot be checked: such a PATCH keeps
//! nothing, and neither does one whose checksum differs (460).
//!
//! The PATCH that reaches `Upload-Length` verifies the whole sha256 against
//! the claimed one (400 `digest-mismatch`: the upload is discarded) and the
//! zstd magic, then hands the file to the PUT's commit stage and answers
//! only once it is stored, with `X-Ferry-Status` and the §2 JSON. If the
//! commit stage fails (503, 507), the complete upload stays: an empty PATCH
//! at its offset tries the commit again.

use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use ferry_proto::headers::{self, tus};
use ferry_proto::{BadRequest, Commit, EpisodeId, Reply, Sha256};
use http_body_util::BodyExt;
use sha2::Digest;
use tokio::sync::mpsc;

use super::{offset_headers, owned};
use crate::http::upload::{header_str, is_zstd, stored, take_slots, too_slow, Upload};
use crate::http::{authenticate, reply, AppError, SharedState};
use crate::store::objects::blocking;
use crate::store::uploads::{self, Live, Meta};
use crate::store::{unix_now, CommitStatus};

pub async fn patch(
    State(state): State<SharedState>,
    Path(id): Path<String>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    match run(&state, &id, &parts.headers, body).await {
        Ok(resp) | Err(Done(resp)) => resp,
    }
}

/// An answer that ends the PATCH early.
pub(crate) struct Done(pub(crate) Response);

impl From<AppError> for Done {
    fn from(e: AppError) -> Self {
        Done(e.into_response())
    }
}

fn invalid(detail: impl Into<String>) -> AppError {
    AppError::bad_request(BadRequest::Invalid, detail)
}

/// What the headers of a PATCH say: its offset and, optionally, the sha256
/// of its bytes (`Upload-Checksum: sha256 <base64>`).
pub(crate) fn patch_headers(h: &HeaderMap) -> Result<(u64, Option<[u8; 32]>), AppError> {
    // Each header once: a proxy could act on another copy (see
    // `header_str`).
    let ctype = header_str(h, header::CONTENT_TYPE.as_str()).and_then(Result::ok);
    if ctype != Some(tus::PATCH_CONTENT_TYPE) {
        return Err(invalid(format!(
            "Content-Type must be {}",
            tus::PATCH_CONTENT_TYPE
        )));
    }
    let offset = header_str(h, tus::UPLOAD_OFFSET)
        .and_then(Result::ok)
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| invalid("an Upload-Offset header (one number) is required"))?;
    let checksum = match header_str(h, tus::UPLOAD_CHECKSUM) {
        None => None,
        Some(v) => {
            let v = v.unwrap_or("");
            let (algo, encoded) = v.split_once(' ').unwrap_or((v, ""));
            if algo != "sha256" {
                return Err(invalid(format!(
                    "Upload-Checksum: algorithm {algo:?} is not supported (Tus-Checksum-Algorithm: sha256)"
                )));
            }
            let digest = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| invalid("Upload-Checksum: not a base64 sha256"))?;
            Some(digest)
        }
    };
    Ok((offset, checksum))
}

async fn run(state: &SharedState, id: &str, h: &HeaderMap, body: Body) -> Result<Response, Done> {
    let device = authenticate(state, h).await?;
    owned(state, &device, id).await?;
    let (offset, checksum) = patch_headers(h)?;
    if let Some(parts) = &state.parts {
        return super::shared::patch(state, parts.as_ref(), &device, id, (offset, checksum), body)
            .await;
    }
    let live = state.uploads.live(id);
    let Ok(mut live) =
        tokio::time::timeout(state.config.body_read_timeout, live.lock_owned()).await
    else {
        return Err(super::patch_busy().into());
    };
    // Read again under the lock: a PATCH before this one moved it on.
    let mut meta = owned(state, &device, id).await?;
    if offset != meta.offset {
        return Err(super::offset_mismatch(offset, meta.offset).into());
    }
    // Slots first: a PATCH turned away keeps the hash state for the next.
    let slots = match take_slots(state, &device) {
        Ok(s) => s,
        Err(answer) => return Err(Done(*answer)),
    };
    if meta.offset > 0 && (live.interrupted || live.hasher.is_none()) {
        state.metrics.uploads_resumed.inc();
    }
    let base = match live.hasher.take() {
        Some((at, h)) if at == meta.offset => h,
        _ => {
            let (bin, upto) = (state.uploads.bin(id), meta.offset);
            blocking(move || uploads::rehash(&bin, upto))
                .await
                .map_err(AppError::from)?
        }
    };
    if meta.offset == meta.length {
        // A retry of a completion whose commit failed.
        drop(slots);
        return complete(state, id, &meta, base).await;
    }
    let started = Instant::now();
    let result = receive(state, id, &mut meta, &mut live, base, checksum, body).await;
    drop(slots);
    state
        .metrics
        .upload_seconds
        .observe(started.elapsed().as_secs_f64());
    if let Err(answer) = result {
        tracing::info!(
            upload = id,
            device,
            offset = meta.offset,
            "PATCH ended early"
        );
        return Err(answer);
    }
    if meta.offset < meta.length {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        offset_headers(&mut resp, &meta);
        return Ok(resp);
    }
    let (_, whole) = live.hasher.take().expect("kept by receive");
    complete(state, id, &meta, whole).await
}

/// Streams the body to the upload's file, then keeps what it may of it
/// (moving `meta`'s offset and `live`'s hash state) or discards it; the
/// refusal when the PATCH is not answered with its new offset.
async fn receive(
    state: &SharedState,
    id: &str,
    meta: &mut Meta,
    live: &mut Live,
    base: sha2::Sha256,
    checksum: Option<[u8; 32]>,
    body: Body,
) -> Result<(), Done> {
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    // The expiry moves on only with bytes: an empty PATCH must not keep an
    // upload (and the disk it holds) alive for ever.
    let renewed = unix_now().saturating_add(state.config.upload_expiry.as_secs() as i64);
    let writer = tokio::task::spawn_blocking({
        let mut m = meta.clone();
        m.expires = renewed;
        let (ups, owned_id, base) = (state.uploads.clone(), id.to_owned(), base.clone());
        move || uploads::append(&ups, &owned_id, m, base, checksum.is_some(), rx)
    });
    let ended = pump(state, body, tx, meta.length - meta.offset).await;
    let appended = match writer.await {
        Ok(r) => r.map_err(AppError::from)?,
        Err(_) => return Err(AppError::internal().into()),
    };
    // Without a checksum every byte that arrived is kept (some may be
    // checkpointed already); with one, only a whole PATCH that matches it.
    let keep = checksum.is_none_or(|c| ended.is_whole() && appended.patch == Some(c));
    let at = meta.offset;
    if keep {
        if appended.written > 0 {
            meta.expires = renewed;
        }
        meta.offset += appended.written;
        let (ups, owned_id, m, file) = (
            state.uploads.clone(),
            id.to_owned(),
            meta.clone(),
            appended.file,
        );
        blocking(move || uploads::keep(&ups, &owned_id, &file, &m))
            .await
            .map_err(AppError::from)?;
        *live = Live {
            hasher: Some((meta.offset, appended.whole)),
            interrupted: !ended.is_whole(),
        };
    } else {
        let (ups, owned_id, file) = (state.uploads.clone(), id.to_owned(), appended.file);
        blocking(move || uploads::discard(&ups, &owned_id, &file, at))
            .await
            .map_err(AppError::from)?;
        *live = Live {
            hasher: Some((at, base)),
            interrupted: true,
        };
    }
    match ended.refusal(checksum.is_some() && !keep) {
        Some(answer) => Err(answer.into()),
        None => Ok(()),
    }
}

/// How a PATCH body ended.
pub(crate) enum Ended {
    /// The body ended after exactly what it carried.
    Whole,
    /// It stopped early: a stall, a trickle, a broken connection.
    Early(AppError),
    /// It went past `Upload-Length`: what fits is kept, the rest refused.
    TooLong,
}

impl Ended {
    pub(crate) fn is_whole(&self) -> bool {
        matches!(self, Ended::Whole)
    }

    /// The answer when the PATCH is not answered with its new offset:
    /// a checksum mismatch (`mismatch`), a body past the length, or an
    /// early end.
    pub(crate) fn refusal(self, mismatch: bool) -> Option<AppError> {
        match self {
            Ended::TooLong => Some(AppError::bad_request(
                BadRequest::MalformedBody,
                "the PATCH goes past Upload-Length",
            )),
            Ended::Early(e) => Some(e),
            Ended::Whole if mismatch => Some(AppError(Reply::ChecksumMismatch {
                detail:
                    "the PATCH's bytes do not match its Upload-Checksum; none of them were kept"
                        .into(),
            })),
            Ended::Whole => None,
        }
    }
}

/// Streams the body to the writer, at most `room` bytes.
async fn pump(state: &SharedState, body: Body, tx: mpsc::Sender<Bytes>, room: u64) -> Ended {
    let mut reader = BodyReader::new(state, body, room);
    loop {
        match reader.next().await {
            Piece::Data(data) => {
                if tx.send(data).await.is_err() {
                    // The writer stopped: its result says why.
                    return Ended::Whole;
                }
            }
            Piece::End(ended) => return ended,
        }
    }
}

/// What [`BodyReader::next`] read.
pub(crate) enum Piece {
    Data(Bytes),
    End(Ended),
}

/// A PATCH body read chunk by chunk, at most `room` bytes, with the same
/// idle timeout and minimum rate as a PUT; counted in the bytes-received
/// metric of the tus route.
pub(crate) struct BodyReader<'a> {
    state: &'a SharedState,
    body: Body,
    started: Instant,
    received: u64,
    room: u64,
    /// The end to report after the last piece (a body past `room`).
    then: Option<Ended>,
}

impl<'a> BodyReader<'a> {
    pub(crate) fn new(state: &'a SharedState, body: Body, room: u64) -> Self {
        Self {
            state,
            body,
            started: Instant::now(),
            received: 0,
            room,
            then: None,
        }
    }

    pub(crate) async fn next(&mut self) -> Piece {
        if let Some(end) = self.then.take() {
            return Piece::End(end);
        }
        let (state, timeout) = (self.state, self.state.config.body_read_timeout);
        loop {
            let frame = match tokio::time::timeout(timeout, self.body.frame()).await {
                Err(_) => {
                    return Piece::End(Ended::Early(AppError(Reply::RequestTimeout {
                        detail: format!(
                            "no body data arrived for {}",
                            humantime::format_duration(timeout)
                        ),
                    })))
                }
                Ok(None) => return Piece::End(Ended::Whole),
                Ok(Some(Err(_))) => {
                    return Piece::End(Ended::Early(AppError::bad_request(
                        BadRequest::MalformedBody,
                        format!(
                            "the body broke off after {} bytes; they are kept",
                            self.received
                        ),
                    )))
                }
                Ok(Some(Ok(frame))) => frame,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            if data.is_empty() {
                continue;
            }
            let before = self.received;
            self.received += data.len() as u64;
            state.metrics.bytes_received_tus.inc_by(data.len() as u64);
            if self.received > self.room {
                // What fits of the chunk that crosses the length is kept too.
                let fits = (self.room - before) as usize;
                if fits == 0 {
                    return Piece::End(Ended::TooLong);
                }
                self.then = Some(Ended::TooLong);
                return Piece::Data(data.slice(..fits));
            }
            if too_slow(&state.config, self.started.elapsed(), self.received) {
                return Piece::End(Ended::Early(AppError(Reply::RequestTimeout {
                    detail: format!(
                        "the body arrives slower than this receiver's minimum of {} bytes/s",
                        state.config.min_upload_rate
                    ),
                })));
            }
            return Piece::Data(data);
        }
    }
}

/// The whole upload is here: verify it, store it as a PUT would, answer.
async fn complete(
    state: &SharedState,
    id: &str,
    meta: &Meta,
    whole: sha2::Sha256,
) -> Result<Response, Done> {
    let sha256 = Sha256::from_bytes(&whole.finalize().into());
    fn parse<T>(id: &str, r: Result<T, ferry_proto::ParseIdError>) -> Result<T, AppError> {
        r.map_err(|e| {
            tracing::error!(upload = id, error = %e, "an upload's record does not parse");
            AppError::internal()
        })
    }
    let up = as_upload(
        parse(id, EpisodeId::parse(&meta.episode_id))?,
        parse(id, Commit::parse(&meta.commit))?,
        parse(id, Sha256::parse(&meta.sha256))?,
        meta.length,
        &meta.device,
    );
    if sha256 != up.sha256 {
        state.uploads.remove(id).await.map_err(AppError::from)?;
        tracing::info!(upload = id, device = up.device, episode_id = %up.id, "completed upload has another digest; discarded");
        return Err(digest_mismatch(&sha256, &up.sha256).into());
    }
    let head = state.uploads.head(id).await.map_err(AppError::from)?;
    if !is_zstd(&head) {
        state.uploads.remove(id).await.map_err(AppError::from)?;
        return Err(not_zstd().into());
    }
    let written = state
        .uploads
        .finished(id, state.config.tmp_dir(), sha256, meta.length)
        .await
        .map_err(AppError::from)?;
    // An error here (503, 507) keeps the complete upload for a retry.
    let answer = stored(state, &up, written.staged()).await?;
    if let Err(e) = state.uploads.remove(id).await {
        tracing::warn!(upload = id, error = %e, "stored, but the upload's files stay until they expire");
    }
    Ok(completed(answer, meta.length))
}

/// The episode a completed upload stores, as the PUT's commit stage takes
/// it (the header checks were made at creation).
pub(crate) fn as_upload(
    id: EpisodeId,
    commit: Commit,
    sha256: Sha256,
    length: u64,
    device: &str,
) -> Upload {
    Upload {
        id,
        commit,
        sha256,
        length,
        device: device.to_owned(),
        commit_status: CommitStatus {
            allowed: true,
            head_commit: None,
        },
        existing: None,
    }
}

/// 400 for a completed upload whose bytes hash to `got`, not the `claimed`
/// digest.
pub(crate) fn digest_mismatch(got: &Sha256, claimed: &Sha256) -> AppError {
    AppError::bad_request(
        BadRequest::DigestMismatch,
        format!(
            "the upload's sha256 is {got}, Upload-Metadata said {claimed}; the upload is discarded"
        ),
    )
}

/// 400 for an upload that is not a tar.zst.
pub(crate) fn not_zstd() -> AppError {
    AppError::bad_request(
        BadRequest::MalformedBody,
        "the upload is not a zstd stream (expected a tar.zst); it is discarded",
    )
}

/// The answer to the PATCH that completed an upload: the commit stage's
/// reply, with `X-Ferry-Status` when it stored (or had) the episode.
pub(crate) fn completed(answer: Reply, length: u64) -> Response {
    let status = match &answer {
        Reply::Stored { .. } | Reply::AlreadyPresent { .. } => Some(answer.status()),
        _ => None,
    };
    let mut resp = reply(answer);
    if let Some(s) = status {
        resp.headers_mut()
            .insert(headers::STATUS, HeaderValue::from_static(s));
    }
    resp.headers_mut()
        .insert(tus::UPLOAD_OFFSET, HeaderValue::from(length));
    resp
}
