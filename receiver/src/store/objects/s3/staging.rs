//! Staging an upload to S3, and persisting it.
//!
//! A task per upload receives the body's chunks and cuts them into part
//! buffers of `part_size` bytes (without copying: slices of the chunks).
//! While the body is smaller than a part, it stays in memory, and is PUT
//! by [`persist`] once the commit stage has it, which is only after its
//! digest matched. When the first part fills, a multipart upload is created
//! on the claimed final key, with a marker under `<prefix>/staging/` (see
//! `sweep`), and parts are uploaded as they fill, two at most in flight.
//! [`persist`] completes it only if the body hashed to the key; otherwise,
//! and whenever a staging fails, is abandoned or its [`Staged`] is dropped,
//! the upload is aborted and its marker deleted by a task of its own, so
//! that nothing needs to wait for it. S3 makes nothing of an open
//! multipart upload visible under its key.
//!
//! Every part buffer and small body holds permits of the store's buffer
//! semaphore (in KiB) until its bytes are uploaded or dropped. A staging
//! that cannot get them within the wait fails as unreachable: 503, retry.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use ferry_proto::Sha256;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use rand::RngCore;
use sha2::Digest;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tokio::task::JoinHandle;

use super::errors::{plain_error, store_error};
use super::{invariant, sweep, Inner};
use crate::store::objects::{Chunk, Staged, Staging, StoreError};

/// Part uploads of one staging in flight at most.
const PARTS_IN_FLIGHT: usize = 2;

/// An open multipart upload rewrites its marker when the marker is this
/// old, so that the marker's age is the time since the upload last made
/// progress (the sweep removes only idle ones).
pub const MARKER_REFRESH: std::time::Duration = std::time::Duration::from_secs(60);

/// Permits for `bytes` bytes: one per KiB, rounded up (a permit count is a
/// `u32`, and a part may be 5 GiB).
pub fn kib(bytes: u64) -> u64 {
    bytes.div_ceil(1024)
}

pub fn random_name() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// What a [`Staged`] upload of this store holds.
pub enum Held {
    /// A body smaller than a part, in memory with its permits.
    Small {
        payload: PutPayload,
        _permit: Option<OwnedSemaphorePermit>,
    },
    /// Every part uploaded; to be completed.
    Multipart(Multipart),
    /// A resumable upload's parts (`parts`): completed, never aborted here.
    Resumed(super::parts::Resumed),
}

/// An open multipart upload on `key`. Dropped while open (not completed or
/// aborted), it is aborted by a task of its own.
pub struct Multipart {
    inner: Arc<Inner>,
    key: Path,
    id: MultipartId,
    marker: Path,
    marker_written: Instant,
    /// Part uploads started and not yet awaited, in part order.
    in_flight: VecDeque<JoinHandle<Result<PartId, StoreError>>>,
    /// Parts uploaded, in part order.
    parts: Vec<PartId>,
    open: bool,
}

/// The marker's content: enough to abort the upload.
#[derive(serde::Serialize, serde::Deserialize)]
pub struct Marker {
    pub key: String,
    pub upload_id: String,
}

impl Multipart {
    /// Creates the upload, then its marker; a marker that cannot be written
    /// aborts the upload (nothing would find it after a crash).
    async fn create(inner: Arc<Inner>, key: Path) -> Result<Self, StoreError> {
        let at = inner.locator(&key);
        let id = inner
            .s3
            .create_multipart(&key)
            .await
            .map_err(|e| store_error("create multipart upload", &at, e))?;
        let marker = sweep::marker_key(&inner);
        let mut mp = Multipart {
            inner,
            key,
            id,
            marker,
            marker_written: Instant::now(),
            in_flight: VecDeque::new(),
            parts: Vec::new(),
            open: true,
        };
        mp.write_marker().await?;
        Ok(mp)
    }

    async fn write_marker(&mut self) -> Result<(), StoreError> {
        let body = serde_json::to_vec(&Marker {
            key: self.key.to_string(),
            upload_id: self.id.clone(),
        })
        .expect("a marker serialises");
        self.marker_written = Instant::now();
        self.inner
            .s3
            .put(&self.marker, PutPayload::from(body))
            .await
            .map(|_| ())
            .map_err(|e| store_error("write", &self.inner.locator(&self.marker), e))
    }

    /// Rewrites the marker if it is [`MARKER_REFRESH`] old; a failure is
    /// logged (the next part's upload will fail too if the store is down).
    async fn refresh_marker(&mut self) {
        if self.marker_written.elapsed() < MARKER_REFRESH {
            return;
        }
        if let Err(e) = self.write_marker().await {
            tracing::warn!(error = %e, "cannot refresh the marker of a multipart upload");
        }
    }

    /// Starts uploading part `parts + in_flight` with `payload`, after
    /// waiting for the oldest part in flight if [`PARTS_IN_FLIGHT`] are.
    /// The permit is released once the part is uploaded (or failed).
    async fn ship(
        &mut self,
        payload: PutPayload,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<(), StoreError> {
        while self.in_flight.len() >= PARTS_IN_FLIGHT
            || self.in_flight.front().is_some_and(|h| h.is_finished())
        {
            self.settle_one().await?;
        }
        let idx = self.parts.len() + self.in_flight.len();
        let (s3, key, id) = (self.inner.s3.clone(), self.key.clone(), self.id.clone());
        let at = self.inner.locator(&key);
        self.in_flight.push_back(tokio::spawn(async move {
            let r = s3.put_part(&key, &id, idx, payload).await;
            drop(permit);
            r.map_err(|e| lost_upload(store_error("upload part of", &at, e)))
        }));
        self.refresh_marker().await;
        Ok(())
    }

    /// Awaits the oldest part in flight.
    async fn settle_one(&mut self) -> Result<(), StoreError> {
        let Some(h) = self.in_flight.pop_front() else {
            return Ok(());
        };
        let at = self.inner.locator(&self.key);
        let part = h
            .await
            .map_err(|e| invariant("upload part of", &at, &e.to_string()))??;
        self.parts.push(part);
        Ok(())
    }

    async fn complete(mut self) -> Result<(), StoreError> {
        let at = self.inner.locator(&self.key);
        let parts = std::mem::take(&mut self.parts);
        self.inner
            .s3
            .complete_multipart(&self.key, &self.id, parts)
            .await
            .map_err(|e| lost_upload(store_error("complete multipart upload", &at, e)))?;
        self.open = false;
        if let Err(e) = self.inner.s3.delete(&self.marker).await {
            // The sweep finds the upload gone and deletes the marker then.
            tracing::warn!(error = %e, marker = %self.marker, "cannot delete the marker of a completed upload");
        }
        Ok(())
    }

    /// Aborts the upload: every part in flight stopped, the upload aborted,
    /// its marker deleted; failures are logged (the sweep tries again).
    async fn abort(mut self) {
        self.open = false;
        let in_flight = std::mem::take(&mut self.in_flight);
        abort_upload(
            self.inner.clone(),
            self.key.clone(),
            self.id.clone(),
            self.marker.clone(),
            in_flight,
        )
        .await;
    }
}

impl Drop for Multipart {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        let args = (
            self.inner.clone(),
            self.key.clone(),
            std::mem::take(&mut self.id),
            self.marker.clone(),
            std::mem::take(&mut self.in_flight),
        );
        // Without a runtime (shutting down), the marker stays for the sweep.
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(abort_upload(args.0, args.1, args.2, args.3, args.4));
        }
    }
}

async fn abort_upload(
    inner: Arc<Inner>,
    key: Path,
    id: MultipartId,
    marker: Path,
    in_flight: VecDeque<JoinHandle<Result<PartId, StoreError>>>,
) {
    // A part still uploading after the abort could be kept by the store.
    for h in in_flight {
        h.abort();
        let _ = h.await;
    }
    if let Err(e) = sweep::abort(&inner, &key, &id, &marker).await {
        tracing::warn!(error = %e, "cannot abort a multipart upload; the sweep of staging will");
    }
}

/// An upload that vanished under us (the sweep of another replica, or
/// the store's lifecycle rule, aborted it): transient, retry the upload.
fn lost_upload(e: StoreError) -> StoreError {
    match e.source.kind() {
        io::ErrorKind::NotFound => StoreError {
            source: io::Error::new(io::ErrorKind::ConnectionAborted, e.source),
            ..e
        },
        _ => e,
    }
}

/// `kib` permits of the store's buffer semaphore, waiting at most its
/// `buffer_wait` (then unreachable: 503, retry).
pub async fn buffer_permits(
    inner: &Inner,
    kib: u64,
    at: &str,
) -> Result<OwnedSemaphorePermit, StoreError> {
    let sem = inner.buffers.clone();
    let wait = inner.buffer_wait;
    let want = kib.min(u32::MAX as u64) as u32;
    match tokio::time::timeout(wait, sem.acquire_many_owned(want)).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(_)) => Err(invariant("buffer", at, "the buffer semaphore is closed")),
        Err(_) => Err(plain_error(
            "buffer",
            at,
            io::ErrorKind::TimedOut,
            format!(
                "no room in s3_buffer_limit for {kib} KiB within {} s: the bucket takes uploads slower than they arrive",
                wait.as_secs()
            ),
        )),
    }
}

/// The state of one staging.
struct Writer {
    inner: Arc<Inner>,
    claimed: Sha256,
    /// The length the client declared (a hint for the buffer to reserve).
    length: u64,
    hasher: sha2::Sha256,
    /// Bytes received.
    size: u64,
    /// Bytes in parts already shipped.
    shipped: u64,
    /// The current part (or small body): slices of the chunks.
    buf: Vec<Bytes>,
    buffered: u64,
    permit: Option<OwnedSemaphorePermit>,
    upload: Option<Multipart>,
}

/// Starts the staging task.
pub fn begin(inner: Arc<Inner>, claimed: Sha256, length: u64) -> Staging {
    let (tx, rx) = mpsc::channel(16);
    let done = tokio::spawn(stage(inner, claimed, length, rx));
    Staging { tx, done }
}

async fn stage(
    inner: Arc<Inner>,
    claimed: Sha256,
    length: u64,
    mut rx: mpsc::Receiver<Chunk>,
) -> Result<Option<Staged>, StoreError> {
    let mut w = Writer {
        inner,
        claimed,
        length,
        hasher: sha2::Sha256::new(),
        size: 0,
        shipped: 0,
        buf: Vec::new(),
        buffered: 0,
        permit: None,
        upload: None,
    };
    // Returning early drops `w`: its upload, if any, is aborted.
    loop {
        match rx.recv().await {
            Some(Chunk::Data(b)) => w.push(b).await?,
            Some(Chunk::Finish) => return w.finish().await.map(Some),
            None => {
                if let Some(mp) = w.upload.take() {
                    mp.abort().await;
                }
                return Ok(None);
            }
        }
    }
}

impl Writer {
    async fn push(&mut self, mut b: Bytes) -> Result<(), StoreError> {
        self.size += b.len() as u64;
        while !b.is_empty() {
            let room = self.inner.part_size - self.buffered;
            let piece = b.split_to(b.len().min(room as usize));
            self.reserve(piece.len() as u64).await?;
            self.buffered += piece.len() as u64;
            self.buf.push(piece);
            if self.buffered == self.inner.part_size {
                self.ship().await?;
            }
        }
        // A part may take long to fill from a slow client.
        if let Some(upload) = &mut self.upload {
            upload.refresh_marker().await;
        }
        Ok(())
    }

    /// Holds permits for `n` more buffered bytes: on the first byte of a
    /// part, for the whole part (or the whole small body the declared
    /// length promises), so that a part waits for room once.
    async fn reserve(&mut self, n: u64) -> Result<(), StoreError> {
        let held = self.permit.as_ref().map_or(0, |p| p.num_permits() as u64);
        let need = kib(self.buffered + n);
        if held >= need {
            return Ok(());
        }
        let expected = self
            .length
            .saturating_sub(self.shipped)
            .min(self.inner.part_size);
        let want = need.max(kib(expected)) - held;
        let at = self.inner.locator(&self.inner.object_key(&self.claimed));
        let more = buffer_permits(&self.inner, want, &at).await?;
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }

    /// Hashes the buffer on the blocking pool (off the async workers)
    /// while it is uploaded as the next part.
    async fn ship(&mut self) -> Result<(), StoreError> {
        if self.upload.is_none() {
            let key = self.inner.object_key(&self.claimed);
            self.upload = Some(Multipart::create(self.inner.clone(), key).await?);
        }
        let chunks = std::mem::take(&mut self.buf);
        self.shipped += self.buffered;
        self.buffered = 0;
        let payload: PutPayload = chunks.iter().cloned().collect();
        let permit = self.permit.take();
        let upload = self.upload.as_mut().expect("created above");
        let at = upload.inner.locator(&upload.key);
        let hashing = hash_apart(std::mem::take(&mut self.hasher), chunks, &at);
        let (hashed, shipped) = tokio::join!(hashing, upload.ship(payload, permit));
        self.hasher = hashed?;
        shipped
    }

    async fn finish(mut self) -> Result<Staged, StoreError> {
        let held = if self.upload.is_none() {
            let chunks = std::mem::take(&mut self.buf);
            let payload: PutPayload = chunks.iter().cloned().collect();
            let at = self.inner.locator(&self.inner.object_key(&self.claimed));
            self.hasher = hash_apart(std::mem::take(&mut self.hasher), chunks, &at).await?;
            Held::Small {
                payload,
                _permit: self.permit.take(),
            }
        } else {
            if self.buffered > 0 {
                self.ship().await?;
            }
            let mut upload = self.upload.take().expect("checked");
            while !upload.in_flight.is_empty() {
                upload.settle_one().await?;
            }
            Held::Multipart(upload)
        };
        let digest = std::mem::take(&mut self.hasher).finalize();
        Ok(Staged {
            sha256: Sha256::from_bytes(&digest.into()),
            size: self.size,
            held: Box::new(held),
        })
    }
}

/// `hasher` updated with `chunks`, on the blocking pool. Fails only while
/// the runtime shuts down (the pool is gone): the upload is answered 503,
/// never with a digest of the wrong bytes.
async fn hash_apart(
    mut hasher: sha2::Sha256,
    chunks: Vec<Bytes>,
    at: &str,
) -> Result<sha2::Sha256, StoreError> {
    let job = move || {
        for c in &chunks {
            hasher.update(c);
        }
        hasher
    };
    tokio::task::spawn_blocking(job).await.map_err(|e| {
        plain_error(
            "hash",
            at,
            io::ErrorKind::ConnectionAborted,
            format!("the hashing task ended: {e}"),
        )
    })
}

/// Makes one staged upload visible under its final key: a conditional PUT
/// of a small body, the completion of a multipart upload whose body hashed
/// to the key it was uploaded to (else it is aborted).
pub async fn persist(inner: &Arc<Inner>, staged: Staged) -> Result<(), StoreError> {
    let key = inner.object_key(&staged.sha256);
    let at = inner.locator(&key);
    let held = staged
        .held
        .downcast::<Held>()
        .map_err(|_| invariant("persist", &at, "an upload staged by another store"))?;
    match *held {
        Held::Small { payload, _permit } => put_small(inner, &key, payload).await,
        Held::Multipart(mp) if mp.key != key => {
            mp.abort().await;
            Err(invariant(
                "persist",
                &at,
                "the body's sha256 is not the key it was uploaded to",
            ))
        }
        Held::Multipart(mp) => mp.complete().await,
        Held::Resumed(r) if r.key != key => Err(invariant(
            "persist",
            &at,
            "a resumable upload's sha256 is not the key it was uploaded to",
        )),
        Held::Resumed(r) => r.complete(inner, staged.size).await,
    }
}

/// PUT with If-None-Match: *: an object already there holds the same
/// verified bytes (its key is their digest), which is success too.
async fn put_small(inner: &Inner, key: &Path, payload: PutPayload) -> Result<(), StoreError> {
    let at = inner.locator(key);
    if !inner.create_unsupported.load(Ordering::Relaxed) {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match inner.s3.put_opts(key, payload.clone(), opts).await {
            Ok(_) | Err(object_store::Error::AlreadyExists { .. }) => return Ok(()),
            Err(e) if super::errors::kind_of(&e) == io::ErrorKind::Unsupported => {
                tracing::warn!(error = %e, "the store does not take conditional PUTs; small objects are PUT plainly");
                inner.create_unsupported.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(store_error("put", &at, e)),
        }
    }
    let opts = PutOptions::default();
    inner
        .s3
        .put_opts(key, payload, opts)
        .await
        .map(|_| ())
        .map_err(|e| store_error("put", &at, e))
}
