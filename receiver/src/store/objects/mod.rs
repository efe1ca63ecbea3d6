//! The object store: episode bytes under content-addressed keys, behind the
//! [`Objects`] trait, with two backends: a local directory ([`local`], the
//! embedded default) and an S3-compatible bucket ([`s3`]).
//!
//! Every backend keeps the same promises:
//! - an upload is staged while it arrives, hashed as it is written, and
//!   becomes visible under its final key (its sha256) only in
//!   [`Objects::persist`], which the commit stage calls after the digest
//!   matched; a dropped or failed staging leaves nothing under a final key;
//! - an object under its final key is complete and durable;
//! - nothing is deleted here except by the collector (`store::collect`),
//!   under the index's collection gate.

pub mod local;
pub mod s3;

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use ferry_proto::Sha256;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use local::{LocalObjects, TEMP_SUFFIX};

/// Errno classes that answer 507 rather than 500: "no space" (ENOSPC,
/// EDQUOT) and "cannot take writes now" (that, or a read-only file system).
pub use ferry_durable::fsio::{is_out_of_space, is_storage_unavailable};

/// A boxed future of the object store.
pub type ObjFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, StoreError>> + Send + 'a>>;

/// A boxed future that cannot fail as a whole.
pub type Fut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An object's bytes, as they are read.
pub type ByteStream = Pin<Box<dyn Stream<Item = io::Result<Bytes>> + Send>>;

/// A failed storage operation, with what was done and to what (a path, or
/// an `s3://` URL).
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct StoreError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl StoreError {
    pub fn new(op: &'static str, path: &Path, source: io::Error) -> Self {
        Self {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// The same failure again, for another upload of the batch it failed.
    pub fn again(&self) -> Self {
        Self::new(self.op, &self.path, ferry_durable::copy_error(&self.source))
    }

    /// The errno, if the OS gave one.
    pub fn errno(&self) -> Option<i32> {
        self.source.raw_os_error()
    }

    /// Whether the storage cannot take writes now (507), by errno.
    pub fn is_unavailable(&self) -> bool {
        self.errno().is_some_and(is_storage_unavailable)
    }

    /// Whether the storage could not be reached (a remote store down, a
    /// connection lost or timed out): transient, 503 with `Retry-After`.
    pub fn is_unreachable(&self) -> bool {
        use io::ErrorKind::*;
        self.errno().is_none()
            && matches!(
                self.source.kind(),
                ConnectionRefused
                    | ConnectionReset
                    | ConnectionAborted
                    | NotConnected
                    | TimedOut
                    | BrokenPipe
                    | UnexpectedEof
                    | HostUnreachable
                    | NetworkUnreachable
            )
    }
}

/// Runs blocking work on the blocking pool.
pub async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => Err(StoreError::new(
            "blocking task failed for",
            Path::new("?"),
            io::Error::other(e.to_string()),
        )),
    }
}

/// One message to a staging writer.
#[derive(Debug)]
pub enum Chunk {
    Data(Bytes),
    /// The body is complete: finish staging it and hand back the
    /// [`Staged`] upload.
    Finish,
}

/// A staging in progress: send the body's chunks, then [`Chunk::Finish`];
/// dropping the sender without it aborts the staging, which then leaves
/// nothing behind. `done` resolves to the staged upload (`None` when
/// aborted).
pub struct Staging {
    pub tx: mpsc::Sender<Chunk>,
    pub done: tokio::task::JoinHandle<Result<Option<Staged>, StoreError>>,
}

/// A complete staged upload, not yet visible under its final key: its
/// digest and size as written, and what its backend needs to persist it
/// (only the backend that made it looks inside). Dropping it discards it.
pub struct Staged {
    pub sha256: Sha256,
    pub size: u64,
    pub held: Box<dyn std::any::Any + Send>,
}

impl std::fmt::Debug for Staged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Staged")
            .field("sha256", &self.sha256)
            .field("size", &self.size)
            .finish()
    }
}

/// An object as a listing shows it: its digest and when it was last
/// written (made visible, or written again).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub sha256: Sha256,
    pub modified: SystemTime,
}

/// What one sweep of staging left by a crash did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    pub removed: u64,
    pub failed: u64,
}

/// Multipart parts kept across requests and replicas: where a resumable
/// upload's bytes wait on a store that has them (S3). A part is uploaded
/// once it is whole; the bytes of an unfinished part wait in an
/// incomplete-part object of the upload (its "tail"), as tusd's S3 store
/// keeps them, since S3 takes no part under 5 MiB but the last.
pub trait PartStore: Send + Sync {
    /// Bytes of every part but the last.
    fn part_size(&self) -> u64;
    /// Room for `bytes` more buffered bytes in memory, out of the store's
    /// buffer limit, held until the returned value is dropped (waiting a
    /// while for it, then unreachable: 503).
    fn buffer(&self, bytes: u64) -> ObjFut<'_, Box<dyn std::any::Any + Send>>;
    /// Opens a multipart upload for the object `claimed`; its id.
    fn open<'a>(&'a self, claimed: &'a Sha256) -> ObjFut<'a, String>;
    /// Uploads part `index` (from 0) of `multipart`; its ETag.
    fn put_part<'a>(
        &'a self,
        claimed: &'a Sha256,
        multipart: &'a str,
        index: usize,
        data: Vec<Bytes>,
    ) -> ObjFut<'a, String>;
    /// Writes an incomplete part of resumable upload `upload` under a new
    /// name (a write never replaces another); the name.
    fn put_tail<'a>(&'a self, upload: &'a str, data: Vec<Bytes>) -> ObjFut<'a, String>;
    /// The incomplete part named `name`.
    fn get_tail<'a>(&'a self, name: &'a str) -> ObjFut<'a, Bytes>;
    /// Deletes the incomplete part named `name` (gone already is fine).
    fn delete_tail<'a>(&'a self, name: &'a str) -> ObjFut<'a, ()>;
    /// Every incomplete part there is: its upload, its name and when it
    /// was written (for the sweep of those no upload names).
    fn list_tails(&self) -> ObjFut<'_, Vec<(String, String, SystemTime)>>;
    /// Aborts `multipart` (gone already is fine).
    fn abort<'a>(&'a self, claimed: &'a Sha256, multipart: &'a str) -> ObjFut<'a, ()>;
    /// A finished upload whose bytes hashed to `sha256`, for the commit
    /// stage: [`Objects::persist`] completes the multipart upload (and
    /// takes it as done if an earlier attempt completed it). Dropping it
    /// keeps the upload, so that a failed commit can be tried again.
    fn staged(&self, sha256: &Sha256, multipart: &str, parts: Vec<String>, size: u64) -> Staged;
}

/// A content-addressed object store. Objects are named by their sha256.
pub trait Objects: Send + Sync + 'static {
    /// Where the objects are, for logs: a directory or an `s3://` URL.
    fn describe(&self) -> String;
    /// Where one object is, for messages.
    fn locator(&self, sha256: &Sha256) -> String;
    /// Makes the store usable (directories, a reachable bucket); at start.
    fn prepare(&self) -> ObjFut<'_, ()>;
    /// Long upkeep that runs after READY (a layout migration), stopping
    /// early on `shutdown`.
    fn upkeep(&self, shutdown: CancellationToken) -> Fut<'_, ()>;
    /// Starts staging an upload of `length` bytes that claims the digest
    /// `claimed` (a backend may stage under that key; it still persists
    /// only what hashed to it).
    fn begin(&self, claimed: &Sha256, length: u64) -> Staging;
    /// Makes verified staged uploads durable and visible under their final
    /// keys, one result per upload, in order. Called by the commit stage
    /// only, with the write gate held.
    fn persist(&self, batch: Vec<Staged>) -> Fut<'_, Vec<Result<(), StoreError>>>;
    /// The object's size, or `None` when it is not there.
    fn stat<'a>(&'a self, sha256: &'a Sha256) -> ObjFut<'a, Option<u64>>;
    /// The object's bytes (an error of kind `NotFound` when it is not
    /// there).
    fn read<'a>(&'a self, sha256: &'a Sha256) -> ObjFut<'a, ByteStream>;
    /// The object's sha256 and size, read whole (`episodes verify`): by
    /// default hashed as [`Objects::read`] streams it; a store that can read
    /// faster off the async threads says how.
    fn hash<'a>(&'a self, sha256: &'a Sha256) -> ObjFut<'a, (Sha256, u64)> {
        Box::pin(async move {
            use futures_util::StreamExt as _;
            use sha2::Digest as _;
            let at = PathBuf::from(self.locator(sha256));
            let mut stream = self.read(sha256).await?;
            let (mut hasher, mut size) = (sha2::Sha256::new(), 0u64);
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| StoreError::new("read", &at, e))?;
                size += chunk.len() as u64;
                hasher.update(&chunk);
            }
            Ok((Sha256::from_bytes(&hasher.finalize().into()), size))
        })
    }
    /// Bytes free for new objects; `None` when the store has no such
    /// limit.
    fn free_bytes(&self) -> ObjFut<'_, Option<u64>>;
    /// Proves the store takes writes now (for `/readyz`).
    fn check(&self) -> ObjFut<'_, ()>;
    /// Up to `limit` objects after `after` in key order (from the start
    /// when `None`): a page of a listing that the collector walks.
    fn list<'a>(&'a self, after: Option<&'a Sha256>, limit: usize) -> ObjFut<'a, Vec<Listed>>;
    /// Deletes objects; called by the collector only, under the gate.
    fn delete<'a>(&'a self, shas: &'a [Sha256]) -> ObjFut<'a, ()>;
    /// Removes staging left by a crash or an abandoned upload, older than
    /// `before`, in bounded steps, stopping early on `shutdown`.
    fn sweep_staging(&self, before: SystemTime, shutdown: CancellationToken) -> Fut<'_, Swept>;
    /// Where resumable uploads keep their bytes in this store, if it
    /// keeps them (else they are on the local disk: `store::uploads`).
    fn parts(&self) -> Option<Arc<dyn PartStore>> {
        None
    }
}

/// Opens the configured object store (not yet prepared).
pub fn open(config: &crate::config::Config) -> Result<Arc<dyn Objects>, StoreError> {
    match &config.storage {
        crate::config::Storage::Local(dir) => {
            Ok(Arc::new(LocalObjects::new(dir.clone(), config.tmp_dir())))
        }
        crate::config::Storage::S3(s3) => {
            Ok(Arc::new(s3::S3Objects::new(s3::builder_from_env(), s3)?))
        }
    }
}
