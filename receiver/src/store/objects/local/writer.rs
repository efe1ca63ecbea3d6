//! The writer of one upload: a blocking thread that writes and hashes
//! every chunk as it arrives, and the temporary file it writes to.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use ferry_durable::WritebackFile;
use ferry_proto::Sha256;
use rand::RngCore;
use sha2::Digest;
use tokio::sync::mpsc;

use super::{Written, SYNC_ALONE};
use crate::store::objects::{Chunk, StoreError};

pub(super) fn random_name() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// The writer thread: write and hash every chunk; on `Finish` complete the
/// file (fsynced from [`SYNC_ALONE`] bytes up); on a closed channel (client
/// gone, shutdown, error elsewhere) or any error, delete the file.
pub(super) fn write_upload(
    path: PathBuf,
    mut rx: mpsc::Receiver<Chunk>,
) -> Result<Option<Written>, StoreError> {
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| StoreError::new("create", &path, e))?;
    let mut temp = TempFile::new(path.clone());
    let result = write_body(&path, file, &mut rx);
    if !matches!(result, Ok(Some(_))) {
        // Aborted or failed: remove it now, on this blocking thread, so that
        // nothing is left even when the runtime is shutting down.
        temp.remove_now();
    }
    result.map(|done| {
        done.map(|(file, synced, sha256, size)| Written {
            temp,
            file,
            synced,
            sha256,
            size,
        })
    })
}

/// The written file, whether it is fsynced, its digest and size.
type Body = (File, bool, Sha256, u64);

fn write_body(
    path: &Path,
    file: File,
    rx: &mut mpsc::Receiver<Chunk>,
) -> Result<Option<Body>, StoreError> {
    // Writeback starts, and a large body is flushed in steps, while it
    // arrives: the sync at the end flushes only the tail.
    let mut out = WritebackFile::new(file);
    let mut hasher = BodyHasher::Inline(sha2::Sha256::new());
    let mut size = 0u64;
    // The chunks waiting when the writer gets to them are written with one
    // vectored call (up to [`GATHER`] bytes), straight from the buffers
    // they arrived in: no copy through a buffer of our own, fewer calls.
    let mut gathered: Vec<Bytes> = Vec::new();
    let mut finished = false;
    while !finished {
        // Wait for one chunk, then take what else is waiting (a closed
        // channel shows at the next wait).
        let Some(first) = rx.blocking_recv() else {
            return Ok(None);
        };
        let (mut next, mut bytes) = (Some(first), 0usize);
        while let Some(chunk) = next.take() {
            match chunk {
                Chunk::Data(b) => {
                    size += b.len() as u64;
                    hasher.update(&b, size);
                    bytes += b.len();
                    gathered.push(b);
                    if bytes < GATHER {
                        next = rx.try_recv().ok();
                    }
                }
                Chunk::Finish => finished = true,
            }
        }
        write_all_chunks(&mut out, &gathered).map_err(|e| StoreError::new("write", path, e))?;
        gathered.clear();
    }
    let synced = size >= SYNC_ALONE;
    if synced {
        out.sync_all()
            .map_err(|e| StoreError::new("fsync", path, e))?;
    } else {
        out.start_rest()
            .map_err(|e| StoreError::new("start writeback of", path, e))?;
    }
    let digest = hasher.finish().ok_or_else(|| {
        StoreError::new(
            "hash",
            path,
            io::Error::other("the hashing thread panicked"),
        )
    })?;
    let sha256 = Sha256::from_bytes(&digest.finalize().into());
    let file = out
        .into_inner()
        .map_err(|e| StoreError::new("flush", path, e))?;
    Ok(Some((file, synced, sha256, size)))
}

/// Body bytes written with one vectored call at most.
const GATHER: usize = 1 << 20;

/// Writes every byte of `chunks`, in order, with as few calls as it takes.
fn write_all_chunks(out: &mut WritebackFile, chunks: &[Bytes]) -> io::Result<()> {
    let mut slices: Vec<io::IoSlice<'_>> = chunks.iter().map(|c| io::IoSlice::new(c)).collect();
    let mut rest = &mut slices[..];
    while !rest.is_empty() {
        match out.write_vectored(rest) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => io::IoSlice::advance_slices(&mut rest, n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// From this many body bytes up, the sha256 is computed on a thread of its
/// own, in parallel with the writes: a large upload then keeps two cores
/// busy instead of hashing and writing in turn on one.
pub(super) const HASH_APART: u64 = 1 << 20;

/// The sha256 of a body as it arrives.
enum BodyHasher {
    /// On the writer thread (every body, until [`HASH_APART`] bytes).
    Inline(sha2::Sha256),
    /// On the writer thread to the end: no thread could be started.
    Here(sha2::Sha256),
    /// On a thread of its own, fed the same chunks (reference-counted,
    /// not copied); bounded by its channel of 16 chunks.
    Apart {
        tx: std::sync::mpsc::SyncSender<Bytes>,
        thread: std::thread::JoinHandle<sha2::Sha256>,
    },
}

impl BodyHasher {
    /// Hashes `chunk`, the body's bytes up to `received`.
    fn update(&mut self, chunk: &Bytes, received: u64) {
        match self {
            BodyHasher::Inline(h) if received < HASH_APART => h.update(chunk),
            BodyHasher::Inline(h) => {
                let (tx, rx) = std::sync::mpsc::sync_channel::<Bytes>(16);
                let mut apart = h.clone();
                let spawned = std::thread::Builder::new()
                    .name("upload-hash".into())
                    .spawn(move || {
                        for b in rx {
                            apart.update(&b);
                        }
                        apart
                    });
                match spawned {
                    Ok(thread) => {
                        // The thread holds its receiver until `tx` drops.
                        let _ = tx.send(chunk.clone());
                        *self = BodyHasher::Apart { tx, thread };
                    }
                    // No thread to be had: hash here, as for a small body,
                    // to the end (no new attempt for every chunk).
                    Err(_) => {
                        h.update(chunk);
                        *self = BodyHasher::Here(std::mem::take(h));
                    }
                }
            }
            BodyHasher::Here(h) => h.update(chunk),
            BodyHasher::Apart { tx, .. } => {
                // A send fails only if the thread panicked; `finish` says so.
                let _ = tx.send(chunk.clone());
            }
        }
    }

    /// The hasher over every chunk; `None` if the hashing thread panicked.
    fn finish(self) -> Option<sha2::Sha256> {
        match self {
            BodyHasher::Inline(h) | BodyHasher::Here(h) => Some(h),
            BodyHasher::Apart { tx, thread } => {
                drop(tx);
                thread.join().ok()
            }
        }
    }
}

/// A temporary upload file that is deleted when dropped, unless kept (by a
/// successful rename into place). The deletion runs on the blocking pool
/// when a runtime is there.
#[derive(Debug)]
pub struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl TempFile {
    fn new(path: PathBuf) -> Self {
        Self { path, keep: false }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub(super) fn keep(&mut self) {
        self.keep = true;
    }

    /// Removes the file on the calling (blocking) thread.
    fn remove_now(&mut self) {
        self.keep = true;
        if let Err(e) = fs::remove_file(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::error!(path = %self.path.display(), error = %e, "cannot remove temporary upload file");
            }
        }
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        let path = std::mem::take(&mut self.path);
        let remove = move || {
            if let Err(e) = fs::remove_file(&path) {
                if e.kind() != io::ErrorKind::NotFound {
                    tracing::error!(path = %path.display(), error = %e, "cannot remove temporary upload file");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn_blocking(remove);
            }
            Err(_) => remove(),
        }
    }
}
