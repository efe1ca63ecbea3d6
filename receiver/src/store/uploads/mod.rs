//! Durable state of resumable (tus) uploads on the local disk (SPEC §8).
//!
//! An upload is two files under `<data_dir>/uploads/`: `<id>.bin`, the
//! bytes received so far, and `<id>.json`, its [`Meta`] (device, episode
//! id, commit, claimed sha256, length, the durable offset, created,
//! expires), always replaced whole with `ferry_durable`'s write-temp →
//! fsync → rename → fsync-dir. The offset in the JSON is the truth: a
//! PATCH's bytes are fsynced in the `.bin` before the JSON says they are
//! there, and only then answered, so what the receiver answered survives
//! `kill -9`. Bytes in the `.bin` past that offset (written by a PATCH that
//! a crash interrupted before its fsync) are cut off by the next PATCH.
//!
//! The uploads live under the data directory, on the file system of the
//! objects, so that a finished `.bin` becomes an object by a hard link and
//! the object store's rename ([`Uploads::finished`]).
//!
//! In memory, per upload, a [`Live`] behind an async mutex: one PATCH at a
//! time, and the sha256 state of the bytes up to the offset, kept between
//! PATCHes so that each PATCH hashes only its own bytes. After a restart
//! the first PATCH re-hashes the partial file once ([`rehash`]).

pub mod hashstate;
pub mod reclaim;
pub mod shared;

pub use hashstate::HashState;

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use ferry_durable::fsio;
use ferry_proto::Sha256;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::Digest;
use tokio::sync::mpsc;

use super::objects::local::{BodyHasher, TempFile, Written, TEMP_SUFFIX};
use super::objects::{blocking, StoreError};
use super::OpenUploads;

/// What the receiver keeps of one upload, in `<id>.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub device: String,
    pub episode_id: String,
    pub commit: String,
    /// The sha256 the creation claimed for the whole body.
    pub sha256: String,
    pub length: u64,
    /// Bytes received, fsynced and acknowledged.
    pub offset: u64,
    /// Unix seconds.
    pub created: i64,
    /// Unix seconds: an incomplete upload is reclaimed after this. Moved
    /// on by every PATCH (an upload that makes progress does not expire).
    pub expires: i64,
}

impl Meta {
    /// Past `expires`: complete or not (a complete upload whose commit
    /// failed and was never retried goes too).
    pub fn expired(&self, now: i64) -> bool {
        self.expires < now
    }
}

/// The in-memory state of one upload, held by its PATCH.
#[derive(Default)]
pub struct Live {
    /// The sha256 state of the upload's bytes up to the offset it names.
    pub hasher: Option<(u64, sha2::Sha256)>,
    /// The previous PATCH ended before its body did.
    pub interrupted: bool,
}

/// Every upload of this receiver.
pub struct Uploads {
    dir: PathBuf,
    live: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Live>>>>,
    /// What the caps at creation count ([`Uploads::open_uploads`]): every
    /// upload's device, creation time and the bytes it still expects; read
    /// from the records on first use, then kept up to date.
    open: Mutex<Option<HashMap<String, Open>>>,
}

/// An upload as the caps count it.
#[derive(Debug, Clone)]
struct Open {
    device: String,
    created: i64,
    expires: i64,
    offset: u64,
    length: u64,
}

impl Open {
    fn of(meta: &Meta) -> Self {
        Open {
            device: meta.device.clone(),
            created: meta.created,
            expires: meta.expires,
            offset: meta.offset,
            length: meta.length,
        }
    }
}

/// A random, unguessable upload id: 128 bits, hex.
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut b);
    hex::encode(b)
}

/// Whether `id` has the form [`new_id`] makes (so it is safe in a path).
pub fn valid_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Uploads {
    pub fn new(dir: PathBuf) -> Self {
        Self {
            dir,
            live: Mutex::default(),
            open: Mutex::default(),
        }
    }

    /// Counts the open uploads for the caps at creation (see
    /// `store::index::OpenUploads`); the first call reads every record.
    pub async fn open_uploads(self: &Arc<Self>, device: &str) -> Result<OpenUploads, StoreError> {
        if self
            .open
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none()
        {
            let this = self.clone();
            let found = blocking(move || this.read_all()).await?;
            let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
            if open.is_none() {
                *open = Some(found);
            }
        }
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let all = open.as_ref().expect("loaded above");
        let mut mine: Vec<(&String, &Open)> =
            all.iter().filter(|(_, o)| o.device == device).collect();
        mine.sort_by_key(|(id, o)| (o.expires, o.offset, o.created, *id));
        let mine = mine
            .into_iter()
            .map(|(id, o)| (id.clone(), o.created))
            .collect();
        Ok(OpenUploads {
            count: all.len() as u64,
            pending: all
                .values()
                .map(|o| o.length.saturating_sub(o.offset))
                .fold(0, u64::saturating_add),
            device: mine,
        })
    }

    /// Every record in the directory (blocking); one that cannot be read
    /// is counted as nothing (the reclaimer deals with it).
    fn read_all(&self) -> Result<HashMap<String, Open>, StoreError> {
        let mut found = HashMap::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(found),
            Err(e) => return Err(StoreError::new("read directory", &self.dir, e)),
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            if let Ok(Some(meta)) = self.read_meta(id) {
                found.insert(id.to_owned(), Open::of(&meta));
            }
        }
        Ok(found)
    }

    /// Keeps the caps' count of upload `id` up to date.
    fn note(&self, id: &str, meta: Option<&Meta>) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(all) = open.as_mut() {
            match meta {
                Some(m) => all.insert(id.to_owned(), Open::of(m)),
                None => all.remove(id),
            };
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn bin(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.bin"))
    }

    pub fn json(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// The live state of an upload (made on first use).
    pub fn live(&self, id: &str) -> Arc<tokio::sync::Mutex<Live>> {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.entry(id.to_owned()).or_default().clone()
    }

    /// Drops the live state of an upload that is gone.
    pub fn forget(&self, id: &str) {
        let mut live = self.live.lock().unwrap_or_else(|e| e.into_inner());
        live.remove(id);
    }

    /// Creates an upload: an empty `.bin`, then its `.json` (durably; the
    /// directory is made and synced the first time).
    pub async fn create(self: &Arc<Self>, meta: Meta) -> Result<String, StoreError> {
        let this = self.clone();
        blocking(move || {
            this.ensure_dir()?;
            let id = new_id();
            let bin = this.bin(&id);
            File::options()
                .write(true)
                .create_new(true)
                .open(&bin)
                .map_err(|e| StoreError::new("create", &bin, e))?;
            this.write_meta(&id, &meta)?;
            Ok(id)
        })
        .await
    }

    fn ensure_dir(&self) -> Result<(), StoreError> {
        if self.dir.is_dir() {
            return Ok(());
        }
        fs::create_dir_all(&self.dir)
            .map_err(|e| StoreError::new("create directory", &self.dir, e))?;
        if let Some(parent) = self.dir.parent() {
            fsio::fsync_dir(parent).map_err(|e| StoreError::new("fsync directory", parent, e))?;
        }
        Ok(())
    }

    /// Replaces `<id>.json` durably (blocking).
    pub fn write_meta(&self, id: &str, meta: &Meta) -> Result<(), StoreError> {
        let path = self.json(id);
        let text = serde_json::to_vec_pretty(meta)
            .map_err(|e| StoreError::new("encode", &path, io::Error::other(e.to_string())))?;
        fsio::write_atomic(&path, &text).map_err(|e| StoreError::new("write", &path, e))?;
        self.note(id, Some(meta));
        Ok(())
    }

    /// Reads `<id>.json` (blocking); `None` when the upload does not exist.
    pub fn read_meta(&self, id: &str) -> Result<Option<Meta>, StoreError> {
        let path = self.json(id);
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::new("read", &path, e)),
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| StoreError::new("parse", &path, io::Error::other(e.to_string())))
    }

    /// [`Uploads::read_meta`] off the async threads.
    pub async fn load(self: &Arc<Self>, id: &str) -> Result<Option<Meta>, StoreError> {
        let (this, id) = (self.clone(), id.to_owned());
        blocking(move || this.read_meta(&id)).await
    }

    /// Removes an upload (blocking): its record first, so that it is gone
    /// even if removing its bytes fails (the reclaimer takes a `.bin`
    /// without a record).
    pub fn remove_now(&self, id: &str) -> Result<(), StoreError> {
        self.note(id, None);
        for path in [self.json(id), self.bin(id)] {
            fsio::remove_file_durable(&path).map_err(|e| StoreError::new("remove", &path, e))?;
        }
        Ok(())
    }

    /// [`Uploads::remove_now`] off the async threads, and its live state.
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<(), StoreError> {
        let (this, owned) = (self.clone(), id.to_owned());
        let r = blocking(move || this.remove_now(&owned)).await;
        self.forget(id);
        r
    }

    /// The first four bytes of a complete upload (its zstd magic).
    pub async fn head(self: &Arc<Self>, id: &str) -> Result<Vec<u8>, StoreError> {
        let bin = self.bin(id);
        blocking(move || {
            let mut head = Vec::with_capacity(4);
            File::open(&bin)
                .and_then(|f| f.take(4).read_to_end(&mut head))
                .map_err(|e| StoreError::new("read", &bin, e))?;
            Ok(head)
        })
        .await
    }

    /// A finished upload as the object store's staged file: a hard link
    /// of its `.bin` in the store's temporary directory (same file system;
    /// the commit stage renames it into place, or drops and so deletes
    /// it), already fsynced by the PATCHes. The `.bin` itself stays until
    /// the episode is stored, so a failed commit can be retried.
    pub async fn finished(
        self: &Arc<Self>,
        id: &str,
        tmp: PathBuf,
        sha256: Sha256,
        size: u64,
    ) -> Result<Written, StoreError> {
        let bin = self.bin(id);
        blocking(move || {
            let temp = tmp.join(format!("{}{TEMP_SUFFIX}", new_id()));
            fs::hard_link(&bin, &temp).map_err(|e| StoreError::new("link", &temp, e))?;
            let temp = TempFile::new(temp);
            let file =
                File::open(temp.path()).map_err(|e| StoreError::new("open", temp.path(), e))?;
            Ok(Written {
                temp,
                file,
                synced: true,
                sha256,
                size,
            })
        })
        .await
    }
}

/// The sha256 state of the first `upto` bytes of `bin` (blocking): after a
/// restart, once per upload.
pub fn rehash(bin: &Path, upto: u64) -> Result<sha2::Sha256, StoreError> {
    let mut h = sha2::Sha256::new();
    let f = File::open(bin).map_err(|e| StoreError::new("open", bin, e))?;
    let read =
        fsio::hash_reader(f.take(upto), &mut h).map_err(|e| StoreError::new("read", bin, e))?;
    if read != upto {
        return Err(StoreError::new(
            "read",
            bin,
            io::Error::other(format!("{read} bytes where the record says {upto}")),
        ));
    }
    Ok(h)
}

/// What a PATCH's writer wrote (not yet durable).
pub struct Appended {
    pub file: File,
    pub written: u64,
    /// The hash of the upload's bytes up to the end of this PATCH's.
    pub whole: sha2::Sha256,
    /// The sha256 of this PATCH's bytes alone (when a checksum was sent).
    pub patch: Option<[u8; 32]>,
}

/// A long PATCH without a checksum makes its bytes durable, and moves the
/// record's offset, every this many bytes: a `kill -9` of the receiver in
/// the middle of a 2 GB PATCH then costs at most this much (what HEAD
/// answers is always durable).
pub const CHECKPOINT: u64 = 8 << 20;

/// The writer of one PATCH (blocking): cuts `bin` at the record's offset
/// (bytes past it were never acknowledged), then writes and hashes every
/// chunk until the channel closes, with a checkpoint every [`CHECKPOINT`]
/// bytes unless the PATCH carries a checksum (its bytes are not verified
/// before its end). The rest is not synced here: the caller then keeps
/// ([`keep`]) or discards ([`discard`]) it.
pub fn append(
    uploads: &Uploads,
    id: &str,
    mut meta: Meta,
    whole: sha2::Sha256,
    checksum: bool,
    mut rx: mpsc::Receiver<Bytes>,
) -> Result<Appended, StoreError> {
    let bin = uploads.bin(id);
    let offset = meta.offset;
    let mut file = OpenOptions::new()
        .write(true)
        .open(&bin)
        .map_err(|e| StoreError::new("open", &bin, e))?;
    file.set_len(offset)
        .and_then(|()| file.seek(SeekFrom::Start(offset)).map(drop))
        .map_err(|e| StoreError::new("truncate", &bin, e))?;
    let mut patch = checksum.then(sha2::Sha256::new);
    let mut written = 0u64;
    let mut checkpoint = CHECKPOINT;
    // As a PUT's writer: from 1 MiB on the hash runs on a thread of its
    // own, beside the writes.
    let mut hasher = BodyHasher::Inline(whole);
    while let Some(chunk) = rx.blocking_recv() {
        file.write_all(&chunk)
            .map_err(|e| StoreError::new("write", &bin, e))?;
        hasher.update(&chunk, written + chunk.len() as u64);
        if let Some(p) = patch.as_mut() {
            p.update(&chunk);
        }
        written += chunk.len() as u64;
        if patch.is_none() && written >= checkpoint {
            meta.offset = offset + written;
            keep(uploads, id, &file, &meta)?;
            checkpoint = written + CHECKPOINT;
        }
    }
    let whole = hasher.finish().ok_or_else(|| {
        StoreError::new(
            "hash",
            &bin,
            io::Error::other("the hashing thread panicked"),
        )
    })?;
    Ok(Appended {
        file,
        written,
        whole,
        patch: patch.map(|p| p.finalize().into()),
    })
}

/// Makes a PATCH's bytes durable, then the record that says they are there
/// (blocking).
pub fn keep(uploads: &Uploads, id: &str, file: &File, meta: &Meta) -> Result<(), StoreError> {
    file.sync_data()
        .map_err(|e| StoreError::new("fsync", &uploads.bin(id), e))?;
    uploads.write_meta(id, meta)
}

/// Cuts a PATCH's bytes off again (blocking).
pub fn discard(uploads: &Uploads, id: &str, file: &File, offset: u64) -> Result<(), StoreError> {
    file.set_len(offset)
        .map_err(|e| StoreError::new("truncate", &uploads.bin(id), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(length: u64) -> Meta {
        Meta {
            device: "d1".into(),
            episode_id: "ep-1".into(),
            commit: "a".repeat(40),
            sha256: "b".repeat(64),
            length,
            offset: 0,
            created: 1,
            expires: 100,
        }
    }

    #[tokio::test]
    async fn bytes_are_kept_past_the_offset_only_when_kept() {
        let dir = tempfile::tempdir().unwrap();
        let ups = Arc::new(Uploads::new(dir.path().join("uploads")));
        let id = ups.create(meta(10)).await.unwrap();
        assert!(valid_id(&id));
        assert_eq!(ups.load(&id).await.unwrap(), Some(meta(10)));
        // The writer is blocking: on a thread of its own, as on the pool.
        let write = |offset: u64, data: &'static [u8]| {
            let (tx, rx) = mpsc::channel(4);
            tx.try_send(Bytes::from_static(data)).unwrap();
            drop(tx);
            let (ups, id) = (ups.clone(), id.clone());
            let mut m = meta(10);
            m.offset = offset;
            std::thread::spawn(move || append(&ups, &id, m, sha2::Sha256::new(), true, rx))
                .join()
                .unwrap()
                .unwrap()
        };
        let a = write(0, b"hello");
        assert_eq!(a.patch, Some(sha2::Sha256::digest(b"hello").into()));
        let mut m = meta(10);
        m.offset = 5;
        keep(&ups, &id, &a.file, &m).unwrap();
        // A second PATCH written and then discarded leaves the first.
        let b = write(5, b"XXX");
        discard(&ups, &id, &b.file, 5).unwrap();
        assert_eq!(fs::read(ups.bin(&id)).unwrap(), b"hello");
        // Bytes past the record's offset (a crash before the record) are
        // cut off by the next PATCH.
        fs::write(ups.bin(&id), b"helloGARBAGE").unwrap();
        let c = write(5, b"world");
        keep(&ups, &id, &c.file, &m).unwrap();
        assert_eq!(fs::read(ups.bin(&id)).unwrap(), b"helloworld");
        let h = rehash(&ups.bin(&id), 10).unwrap();
        assert_eq!(h.finalize(), sha2::Sha256::digest(b"helloworld"));
        assert!(
            rehash(&ups.bin(&id), 11).is_err(),
            "a short file is an error"
        );
        ups.remove(&id).await.unwrap();
        assert_eq!(ups.load(&id).await.unwrap(), None);
        assert!(!ups.bin(&id).exists());
    }

    #[tokio::test]
    async fn a_long_patch_checkpoints_its_offset_unless_it_has_a_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let ups = Arc::new(Uploads::new(dir.path().join("uploads")));
        let id = ups.create(meta(20 << 20)).await.unwrap();
        for checksum in [true, false] {
            let (tx, rx) = mpsc::channel(16);
            let (u, i) = (ups.clone(), id.clone());
            let mut m = meta(20 << 20);
            m.offset = 0;
            let writer =
                std::thread::spawn(move || append(&u, &i, m, sha2::Sha256::new(), checksum, rx));
            for _ in 0..9 {
                tx.send(Bytes::from(vec![7u8; 1 << 20])).await.unwrap();
            }
            drop(tx);
            let a = writer.join().unwrap().unwrap();
            assert_eq!(a.written, 9 << 20);
            let offset = ups.load(&id).await.unwrap().unwrap().offset;
            let want = if checksum { 0 } else { CHECKPOINT };
            assert_eq!(offset, want, "checksum: {checksum}");
        }
    }

    #[test]
    fn ids_are_unguessable_hex_and_nothing_else_is_one() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(valid_id(&a));
        for bad in ["", "../etc/passwd", &"A".repeat(32), &"a".repeat(31)] {
            assert!(!valid_id(bad), "{bad}");
        }
    }
}
