//! tus on the shared object store (S3): the state in the index, the bytes
//! in multipart parts (`store::uploads::shared`), so that a PATCH may reach
//! any replica.
//!
//! A PATCH takes the upload's lease, then reads its body into a buffer that
//! starts with the upload's tail (the incomplete part the last PATCH left):
//! each time the buffer holds a whole part, the part is uploaded while its
//! bytes are hashed (continuing the sha256 state saved in the row) and,
//! without `Upload-Checksum`, the row saved: parts, offset, hash state. When
//! the body ends, what is left in the buffer is written as the new tail
//! object and saved, so the offset answered counts every byte received; a
//! PATCH with a checksum saves only at its end, and only if it matched. The
//! PATCH that reaches `Upload-Length` uploads the last part (S3 takes a
//! short last part), checks the digest and the zstd magic, and hands the
//! parts to the commit stage, which completes the multipart upload under the
//! write gate exactly as a PUT's staging is persisted.
//!
//! Nothing re-reads the parts: the hash state travels in the row. A short
//! PATCH costs a read and a write of the tail (at most a part), as in
//! tusd's S3 store.

use std::time::Instant;

use axum::body::Body;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ferry_proto::{Reply, Sha256};
use sha2::Digest;

use super::patch::{as_upload, completed, digest_mismatch, not_zstd, BodyReader, Done, Piece};
use super::{expired_upload, no_upload, offset_headers, offset_mismatch, patch_busy};
use crate::http::upload::{is_zstd, stored, take_slots, RETRY_AFTER_SECS};
use crate::http::{AppError, SharedState};
use crate::store::objects::PartStore;
use crate::store::uploads::shared::{self as sh, Lease, RENEW_EVERY};
use crate::store::uploads::{HashState, Meta};
use crate::store::{unix_now, Leased, Progress, SharedUpload};

/// The most parts an S3 multipart upload takes.
const MAX_PARTS: u64 = 10_000;

/// The tus view of a row (for HEAD and the offset headers).
pub fn meta_of(up: &SharedUpload) -> Meta {
    Meta {
        device: up.device.clone(),
        episode_id: up.episode_id.to_string(),
        commit: up.commit.to_string(),
        sha256: up.sha256.to_string(),
        length: up.length,
        offset: up.progress.received,
        created: up.created,
        expires: up.progress.expires,
    }
}

/// The upload `id` of `device`: 404 when there is none (or another
/// device's), 410 when it expired.
fn check_owned(up: Option<SharedUpload>, device: &str) -> Result<SharedUpload, AppError> {
    let up = up.filter(|u| u.device == device).ok_or_else(no_upload)?;
    if up.progress.expires < unix_now() {
        return Err(expired_upload());
    }
    Ok(up)
}

pub async fn owned(state: &SharedState, device: &str, id: &str) -> Result<Meta, AppError> {
    check_owned(state.index.upload(id).await?, device).map(|u| meta_of(&u))
}

/// Creates an upload: its multipart upload, then its row (a row that
/// cannot be written aborts the multipart upload again).
pub async fn create(
    state: &SharedState,
    parts: &dyn PartStore,
    meta: &Meta,
    episode: (ferry_proto::EpisodeId, ferry_proto::Commit, Sha256),
) -> Result<String, AppError> {
    let (episode_id, commit, sha256) = episode;
    // S3 takes at most 10,000 parts: refuse now what could never complete.
    let max = MAX_PARTS.saturating_mul(parts.part_size());
    if meta.length > max {
        return Err(AppError(Reply::TooLarge {
            limit: max,
            detail: format!(
                "a resumable upload here takes at most {MAX_PARTS} parts of s3_part_size, {max} bytes; ship it with a PUT or raise s3_part_size"
            ),
        }));
    }
    let multipart = parts.open(&sha256).await?;
    let up = SharedUpload {
        id: crate::store::uploads::new_id(),
        device: meta.device.clone(),
        episode_id,
        commit,
        sha256,
        length: meta.length,
        created: meta.created,
        multipart,
        progress: Progress {
            received: 0,
            expires: meta.expires,
            parts: Vec::new(),
            hash: HashState::default().encode(),
            tail_key: String::new(),
            tail: 0,
            interrupted: false,
        },
    };
    if let Err(e) = state.index.create_upload(&up).await {
        sh::discard_bytes(parts, &up).await;
        return Err(e.into());
    }
    Ok(up.id)
}

/// Takes the lease of an upload of `device`, waiting up to
/// `body_read_timeout` for a PATCH that holds it (503 after that).
async fn lease(
    state: &SharedState,
    device: &str,
    id: &str,
) -> Result<(Lease, SharedUpload), AppError> {
    match Lease::take(&state.index, id, state.config.body_read_timeout).await? {
        Ok((lease, row)) => match check_owned(Some(row), device) {
            Ok(row) => Ok((lease, row)),
            Err(e) => {
                lease.release().await;
                Err(e)
            }
        },
        Err(Leased::Held) => Err(patch_busy()),
        Err(_) => Err(no_upload()),
    }
}

/// `DELETE`: termination, once no PATCH holds the upload.
pub async fn terminate(
    state: &SharedState,
    parts: &dyn PartStore,
    device: &str,
    id: &str,
) -> Result<(), AppError> {
    let (lease, row) = lease(state, device, id).await?;
    sh::remove(&state.index, parts, &row).await?;
    drop(lease);
    Ok(())
}

/// What a PATCH has, between its parts.
struct Patch<'a> {
    state: &'a SharedState,
    parts: &'a dyn PartStore,
    lease: Lease,
    up: SharedUpload,
    /// The saved (or, with a checksum, to be saved) progress: the bytes
    /// of whole parts and of `buf`'s first `hashed` bytes.
    hash: HashState,
    /// The bytes after the last part: the old tail, then this PATCH's.
    buf: Vec<Bytes>,
    buffered: u64,
    /// Of `buf`, bytes already in `hash` (the old tail's).
    hashed: u64,
    /// Save at every part (no checksum to wait for).
    save_parts: bool,
    /// What the row holds now.
    saved: Progress,
    renewed: Instant,
}

/// `PATCH`, after authentication and the headers.
pub(crate) async fn patch(
    state: &SharedState,
    parts: &dyn PartStore,
    device: &str,
    id: &str,
    (offset, checksum): (u64, Option<[u8; 32]>),
    body: Body,
) -> Result<Response, Done> {
    let (lease, up) = lease(state, device, id).await?;
    if offset != up.progress.received {
        return Err(offset_mismatch(offset, up.progress.received).into());
    }
    let hash = HashState::decode(&up.progress.hash).map_err(|e| {
        tracing::error!(upload = id, error = %e, "an upload's hash state does not decode");
        AppError::internal()
    })?;
    let mut p = Patch {
        state,
        parts,
        lease,
        hash,
        buf: Vec::new(),
        buffered: 0,
        hashed: 0,
        save_parts: checksum.is_none(),
        saved: up.progress.clone(),
        renewed: Instant::now(),
        up,
    };
    if p.up.progress.received == p.up.length {
        // A retry of a completion whose commit failed.
        return p.complete().await;
    }
    let slots = match take_slots(state, device) {
        Ok(s) => s,
        Err(answer) => return Err(Done(*answer)),
    };
    if p.up.progress.interrupted {
        state.metrics.uploads_resumed.inc();
    }
    // A part's worth of buffer (or what the upload still lacks), out of
    // the same `s3_buffer_limit` the PUTs' parts count against.
    let part = parts.part_size();
    let room = p.up.length - p.up.progress.received + p.up.progress.tail;
    let need = room.min(part.max(p.up.progress.tail));
    let _buffer = parts.buffer(need).await.map_err(AppError::from)?;
    if p.up.progress.tail > 0 {
        let tail = p
            .kept(parts.get_tail(&p.up.progress.tail_key))
            .await?
            .map_err(AppError::from)?;
        if tail.len() as u64 != p.up.progress.tail {
            tracing::error!(
                upload = id,
                want = p.up.progress.tail,
                got = tail.len(),
                "an upload's incomplete part is not the size its row says"
            );
            return Err(AppError::internal().into());
        }
        p.buffered = p.up.progress.tail;
        p.hashed = p.buffered;
        p.buf.push(tail);
    }
    let started = Instant::now();
    let result = p.receive(checksum, body).await;
    drop(slots);
    state
        .metrics
        .upload_seconds
        .observe(started.elapsed().as_secs_f64());
    let p = result?;
    if p.up.progress.received < p.up.length {
        let mut resp = StatusCode::NO_CONTENT.into_response();
        offset_headers(&mut resp, &meta_of(&p.up));
        p.lease.release().await;
        return Ok(resp);
    }
    p.complete().await
}

impl Patch<'_> {
    /// Reads the body, shipping whole parts as they fill; then saves what
    /// it may (see the module doc). `Err` when the PATCH is refused.
    async fn receive(mut self, checksum: Option<[u8; 32]>, body: Body) -> Result<Self, Done> {
        let part = self.parts.part_size();
        let room = self.up.length - self.up.progress.received;
        let mut reader = BodyReader::new(self.state, body, room);
        let mut mine = checksum.map(|_| sha2::Sha256::new());
        // With a checksum, nothing is saved before the end: the parts
        // shipped meanwhile are written again by the next PATCH if this
        // one is refused.
        let mut progress = self.up.progress.clone();
        // The expiry moves on only with bytes: an empty PATCH must not keep
        // an upload (and what it holds) alive for ever.
        let renewed = unix_now().saturating_add(self.state.config.upload_expiry.as_secs() as i64);
        let ended = loop {
            match reader.next().await {
                Piece::Data(mut data) => {
                    progress.expires = renewed;
                    if let Some(m) = mine.as_mut() {
                        m.update(&data);
                    }
                    while !data.is_empty() {
                        // An incomplete part saved by a replica with a
                        // larger `s3_part_size` may already be a part.
                        if self.buffered >= part {
                            self.ship_part(&mut progress).await?;
                        }
                        let take = (part - self.buffered).min(data.len() as u64) as usize;
                        self.buffered += take as u64;
                        self.buf.push(data.split_to(take));
                        if self.buffered == part {
                            self.ship_part(&mut progress).await?;
                        }
                    }
                    self.renew().await?;
                }
                Piece::End(ended) => break ended,
            }
        };
        let keep = checksum.is_none_or(|c| {
            ended.is_whole() && mine.map(|m| <[u8; 32]>::from(m.finalize())) == Some(c)
        });
        if keep {
            // The buffer starts with the old tail, which `received`
            // counts too.
            let last = progress.received - progress.tail + self.buffered == self.up.length;
            if last && self.buffered > 0 {
                self.ship_part(&mut progress).await?;
            } else if self.buffered > self.hashed {
                self.ship_tail(&mut progress).await?;
            }
            progress.interrupted = !ended.is_whole();
            self.save(&progress).await?;
            self.up.progress = progress;
        }
        match ended.refusal(checksum.is_some() && !keep) {
            Some(answer) => Err(answer.into()),
            None => Ok(self),
        }
    }

    /// Fails the PATCH when the upload's first bytes (in the buffer while
    /// no part is shipped) are not a zstd stream: the upload is discarded.
    async fn check_zstd(&self, progress: &Progress) -> Result<(), Done> {
        if !progress.parts.is_empty() {
            return Ok(());
        }
        let head: Vec<u8> = self
            .buf
            .iter()
            .flat_map(|c| c.iter().copied())
            .take(4)
            .collect();
        if head.len() < 4 && self.buffered < self.up.length {
            return Ok(());
        }
        if is_zstd(&head) {
            return Ok(());
        }
        sh::remove(&self.state.index, self.parts, &self.up)
            .await
            .map_err(AppError::from)?;
        Err(not_zstd().into())
    }

    /// Uploads the buffer as the next part while hashing it; saves the
    /// progress unless the PATCH waits for its checksum.
    async fn ship_part(&mut self, progress: &mut Progress) -> Result<(), Done> {
        self.check_zstd(progress).await?;
        self.fence().await?;
        let chunks = std::mem::take(&mut self.buf);
        let hashing = hash_more(std::mem::take(&mut self.hash), chunks.clone(), self.hashed);
        let index = progress.parts.len();
        let upload = self
            .parts
            .put_part(&self.up.sha256, &self.up.multipart, index, chunks);
        let (hashed, etag) = self.kept(async { tokio::join!(hashing, upload) }).await?;
        self.hash = hashed?;
        let etag = match etag {
            Ok(etag) => etag,
            Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => {
                return Err(self.lost_multipart(e).await)
            }
            Err(e) => return Err(AppError::from(e).into()),
        };
        progress.parts.push(etag);
        progress.received = progress.received - progress.tail + self.buffered;
        progress.tail = 0;
        progress.tail_key.clear();
        progress.hash = self.hash.encode();
        (self.buffered, self.hashed) = (0, 0);
        if self.save_parts {
            self.save(progress).await?;
        }
        Ok(())
    }

    /// Writes the buffer as the upload's tail while hashing what is new
    /// in it.
    async fn ship_tail(&mut self, progress: &mut Progress) -> Result<(), Done> {
        self.check_zstd(progress).await?;
        self.fence().await?;
        let chunks = self.buf.clone();
        let hashing = hash_more(std::mem::take(&mut self.hash), chunks.clone(), self.hashed);
        let upload = self.parts.put_tail(&self.up.id, chunks);
        let (hashed, put) = self.kept(async { tokio::join!(hashing, upload) }).await?;
        self.hash = hashed?;
        progress.tail_key = put.map_err(AppError::from)?;
        progress.received = progress.received - progress.tail + self.buffered;
        progress.tail = self.buffered;
        progress.hash = self.hash.encode();
        self.hashed = self.buffered;
        Ok(())
    }

    /// Saves `progress` and renews the lease; 503 when the lease was lost
    /// (its holder stalled past [`sh::LEASE_FOR`] and another PATCH took
    /// the upload on).
    async fn save(&mut self, progress: &Progress) -> Result<(), Done> {
        let kept = self
            .state
            .index
            .save_upload(&self.up.id, &self.lease.token, progress, Lease::until())
            .await
            .map_err(AppError::from)?;
        if !kept {
            return Err(lease_lost().into());
        }
        // The incomplete part the row named before is no longer needed
        // (a part took its bytes, or a new one has them and more).
        let before = std::mem::replace(&mut self.saved, progress.clone()).tail_key;
        if !before.is_empty() && before != progress.tail_key {
            if let Err(e) = self.parts.delete_tail(&before).await {
                tracing::warn!(upload = self.up.id, error = %e, "cannot delete an incomplete part no longer needed; the sweep will");
            }
        }
        self.renewed = Instant::now();
        Ok(())
    }

    /// Renews the lease now (saving what was saved last), before a part or
    /// the tail is written: a PATCH whose body paused past [`sh::LEASE_FOR`]
    /// since its last renewal (up to [`RENEW_EVERY`] plus
    /// `body_read_timeout`) may have lost the upload to another PATCH or a
    /// DELETE, and must not write over the bytes that one saved (the same
    /// part number, the same tail key) nor leave a tail no row names.
    async fn fence(&mut self) -> Result<(), Done> {
        let saved = self.saved.clone();
        self.save(&saved).await
    }

    /// Runs `work` (a request to the bucket, the commit stage) while
    /// renewing the lease every [`RENEW_EVERY`], so that no other PATCH,
    /// DELETE or eviction takes the upload on while it is in flight, however
    /// long the store takes; fails (503) if the lease is lost meanwhile.
    async fn kept<T>(&self, work: impl std::future::Future<Output = T>) -> Result<T, Done> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return Ok(out),
                () = tokio::time::sleep(RENEW_EVERY) => {
                    let index = &self.state.index;
                    let until = Lease::until();
                    let kept = index
                        .save_upload(&self.up.id, &self.lease.token, &self.saved, until)
                        .await
                        .map_err(AppError::from)?;
                    if !kept {
                        return Err(lease_lost().into());
                    }
                }
            }
        }
    }

    /// The multipart upload is gone from the bucket (a lifecycle rule
    /// aborted it, or an earlier removal did and lost its row): nothing can
    /// go on with it. The row goes, and the answer is 410, so the client
    /// starts a new upload instead of failing here until the expiry.
    async fn lost_multipart(&self, e: crate::store::objects::StoreError) -> Done {
        tracing::warn!(upload = self.up.id, error = %e, "the upload's multipart upload is gone from the bucket; the upload is removed");
        if let Err(e) = sh::remove(&self.state.index, self.parts, &self.up).await {
            return AppError::from(e).into();
        }
        AppError(Reply::Gone {
            detail: "this upload's bytes are gone from the store; create a new one".into(),
        })
        .into()
    }

    /// Renews the lease (saving what was saved last) when it is due.
    async fn renew(&mut self) -> Result<(), Done> {
        if self.renewed.elapsed() < RENEW_EVERY {
            return Ok(());
        }
        self.fence().await
    }

    /// Every byte is here: verify, store as a PUT would, answer. An error
    /// of the commit stage keeps the upload for a retry (an empty PATCH).
    async fn complete(self) -> Result<Response, Done> {
        let (state, id) = (self.state, self.up.id.clone());
        if self.up.progress.tail != 0 || self.up.progress.parts.is_empty() {
            // Completing would make an object of the parts alone.
            tracing::error!(
                upload = id,
                tail = self.up.progress.tail,
                "a complete upload still has an incomplete part"
            );
            return Err(AppError::internal().into());
        }
        let digest = Sha256::from_bytes(&self.hash.clone().finish());
        if digest != self.up.sha256 {
            sh::remove(&state.index, self.parts, &self.up)
                .await
                .map_err(AppError::from)?;
            tracing::info!(upload = id, device = self.up.device, episode_id = %self.up.episode_id, "completed upload has another digest; discarded");
            return Err(digest_mismatch(&digest, &self.up.sha256).into());
        }
        let up = &self.up;
        let episode = as_upload(
            up.episode_id.clone(),
            up.commit.clone(),
            up.sha256.clone(),
            up.length,
            &up.device,
        );
        let staged = self.parts.staged(
            &up.sha256,
            &up.multipart,
            up.progress.parts.clone(),
            up.length,
        );
        let answer = self.kept(stored(state, &episode, staged)).await??;
        if let Err(e) = state.index.delete_upload(&id).await {
            tracing::warn!(upload = id, error = %e, "stored, but the upload's row stays until it expires");
        }

        self.lease.release().await;
        Ok(completed(answer, up.length))
    }
}

/// 503 for a PATCH whose lease ran out (its body or the store stalled)
/// and was taken by another PATCH, or whose upload was removed.
fn lease_lost() -> AppError {
    AppError(Reply::Overloaded {
        retry_after_secs: RETRY_AFTER_SECS,
        detail: "another PATCH took this upload on; ask HEAD for its offset".into(),
    })
}

/// `hash` updated with `chunks` past their first `skip` bytes, on the
/// blocking pool.
async fn hash_more(
    mut hash: HashState,
    chunks: Vec<Bytes>,
    skip: u64,
) -> Result<HashState, AppError> {
    let job = move || {
        let mut skip = skip as usize;
        for c in &chunks {
            let from = skip.min(c.len());
            hash.update(&c[from..]);
            skip -= from;
        }
        hash
    };
    tokio::task::spawn_blocking(job)
        .await
        .map_err(|_| AppError::internal())
}
