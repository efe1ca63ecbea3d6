//! The local content-addressed object store: the embedded default.
//!
//! An object lives at `<root>/<aa>/<sha256>` (`aa`: the first byte of its
//! digest, in hex). The 256 shard directories are made when the store is
//! prepared, so storing an object creates no directory. Uploads are
//! written to `<tmp>/<random>.part` by a blocking writer thread that
//! hashes as it writes. A verified upload is made durable under its
//! temporary name, then renamed into place, and the rename made durable: so
//! an object under its final name is always complete. Uploads of at least
//! [`SYNC_ALONE`] bytes are fsynced by their writer; smaller ones are made
//! durable a batch at a time by [`LocalObjects::sync_batch`] (see
//! `store::commit`, which calls [`Objects::persist`]). The file-system calls are `ferry_durable::fsio`'s.
//! Every blocking call runs off the async worker threads. Errors carry the
//! path and the errno.

use std::collections::BTreeSet;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use ferry_durable::fsio;

use super::{blocking, Fut, Listed, ObjFut, Objects, Staged, Staging, StoreError, Swept};

mod writer;
use ferry_proto::Sha256;
use tokio::sync::mpsc;
pub(crate) use writer::BodyHasher;
pub use writer::TempFile;
use writer::{random_name, write_upload};

/// Suffix of temporary upload files (the sweep removes left-over ones).
pub const TEMP_SUFFIX: &str = ".part";

/// An upload at least this large is fsynced by its own writer thread as
/// soon as it is complete: its flush is worth its own call, and a batch's
/// shared sync then does not wait behind it. Smaller uploads leave their
/// sync to the batch.
pub const SYNC_ALONE: u64 = 1 << 20;

/// From this many files (or directories) to sync in one batch up, one
/// `syncfs` replaces their fsyncs. Below it, per-file fsyncs wait only for
/// their own data, whatever else is written to the same file system.
pub const SYNCFS_MIN: usize = 8;

/// Marks a store in the current layout (one level of 256 shards). A store
/// without it is migrated by [`LocalObjects::migrate`] from the first
/// layout, `<root>/<aa>/<bb>/<sha256>`, which made a directory for nearly
/// every new object until the store held millions.
pub const LAYOUT_MARK: &str = ".layout-v2";

/// Makes the shard directories a store lacks (blocking): all 256 in a new
/// store, none once the store is marked (see [`LAYOUT_MARK`]).
fn make_shards(root: &Path) -> Result<(), StoreError> {
    if root.join(LAYOUT_MARK).exists() {
        return Ok(());
    }
    let mut made = false;
    for byte in 0..=255u8 {
        let shard = root.join(format!("{byte:02x}"));
        if !shard.is_dir() {
            // Another receiver preparing the same directory may have made
            // it since the check.
            match fs::create_dir(&shard) {
                Ok(()) => made = true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && shard.is_dir() => {}
                Err(e) => return Err(StoreError::new("create directory", &shard, e)),
            }
        }
    }
    if made {
        fsync_dir(root)?;
    }
    Ok(())
}

/// Moves every object of the first layout in one shard
/// (`<shard>/<bb>/<sha256>`) up into the shard (blocking), each move made
/// durable before its old directory goes. Safe to repeat after a crash at
/// any point: a move is a rename of a content-addressed name. Returns how
/// many objects moved.
fn migrate_shard(shard: &Path) -> Result<u64, StoreError> {
    // Listed before anything is moved (a directory read while entries are
    // added to or removed from it may skip some on some file systems); a
    // missed object makes `remove_dir` fail loudly.
    let list = |dir: &Path| -> Result<Vec<fs::DirEntry>, StoreError> {
        fs::read_dir(dir)
            .and_then(|rd| rd.collect::<io::Result<Vec<_>>>())
            .map_err(|e| StoreError::new("read directory", dir, e))
    };
    let mut olds = Vec::new();
    for entry in list(shard)? {
        let is_dir = entry
            .file_type()
            .map_err(|e| StoreError::new("stat", &entry.path(), e))?
            .is_dir();
        if is_dir {
            olds.push(entry.path());
        }
    }
    let mut moved = 0u64;
    for old in olds {
        for object in list(&old)? {
            let to = shard.join(object.file_name());
            fs::rename(object.path(), &to)
                .map_err(|e| StoreError::new("move object into its shard", &to, e))?;
            moved += 1;
        }
        fsync_dir(shard)?;
        fsync_dir(&old)?;
        fs::remove_dir(&old).map_err(|e| StoreError::new("remove directory", &old, e))?;
        fsync_dir(shard)?;
    }
    Ok(moved)
}

/// The object store: where objects and temporary files live.
#[derive(Debug, Clone)]
pub struct LocalObjects {
    root: PathBuf,
    tmp: PathBuf,
    /// Directories whose new entries (a shard directory created in them)
    /// are not known to be durable yet: synced with the next batch, and
    /// kept here until a sync of them succeeds.
    unsynced_dirs: std::sync::Arc<std::sync::Mutex<BTreeSet<PathBuf>>>,
}

/// What the writer thread hands back once an upload body is complete under
/// its temporary name: fsynced when `synced`, otherwise written to the
/// kernel with its writeback started, to be made durable by
/// [`LocalObjects::sync_batch`]. The file stays open so that its own
/// writeback errors can be read.
#[derive(Debug)]
pub struct Written {
    pub temp: TempFile,
    pub file: File,
    pub synced: bool,
    pub sha256: Sha256,
    pub size: u64,
}

impl LocalObjects {
    pub fn new(root: PathBuf, tmp: PathBuf) -> Self {
        Self {
            root,
            tmp,
            unsynced_dirs: Default::default(),
        }
    }

    fn unsynced_dirs(&self) -> std::sync::MutexGuard<'_, BTreeSet<PathBuf>> {
        self.unsynced_dirs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> &Path {
        &self.tmp
    }

    /// `<root>/<aa>/<sha256>`.
    pub fn path_of(&self, sha256: &Sha256) -> PathBuf {
        let s = sha256.as_str();
        self.root.join(&s[0..2]).join(s)
    }

    /// Where the object is to be read from (blocking): its path, or, when
    /// it is not there but is under the first layout's
    /// `<root>/<aa>/<bb>/<sha256>`, that. Such an object can appear after
    /// the migration: stored by an older receiver that served on after a
    /// newer one migrated the store, or after a downgrade and upgrade.
    pub fn locate(&self, sha256: &Sha256) -> PathBuf {
        let path = self.path_of(sha256);
        if path.exists() {
            return path;
        }
        let s = sha256.as_str();
        let old = self.root.join(&s[0..2]).join(&s[2..4]).join(s);
        if old.exists() {
            old
        } else {
            path
        }
    }

    /// Creates the root and temp directories, and the 256 shard
    /// directories where missing (an older store is migrated later, by
    /// [`LocalObjects::migrate`]). Temporary files are renamed into the
    /// root, so both must be on one file system: checked here.
    pub async fn prepare(&self) -> Result<(), StoreError> {
        let (root, tmp) = (self.root.clone(), self.tmp.clone());
        blocking(move || {
            for dir in [&root, &tmp] {
                if dir.is_dir() {
                    continue;
                }
                fs::create_dir_all(dir).map_err(|e| StoreError::new("create directory", dir, e))?;
                // A new directory must survive a power cut before the first
                // object in it is acknowledged: sync it and its parent.
                fsync_dir(dir)?;
                if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    fsync_dir(parent)?;
                }
            }
            use std::os::unix::fs::MetadataExt;
            let dev = |p: &Path| {
                fs::metadata(p)
                    .map(|m| m.dev())
                    .map_err(|e| StoreError::new("stat", p, e))
            };
            if dev(&root)? != dev(&tmp)? {
                return Err(StoreError::new(
                    "temporary directory is on another file system than",
                    &root,
                    io::Error::from_raw_os_error(libc::EXDEV),
                ));
            }
            make_shards(&root)
        })
        .await
    }

    /// Brings a store of the first layout to the current one, after the
    /// receiver is ready (Never again §4: no long work before READY): one
    /// shard per blocking call, stopping early on `shutdown`, and marks the
    /// store (see [`LAYOUT_MARK`]) once every shard is done. Until then,
    /// objects not yet moved are found where they are
    /// ([`LocalObjects::locate`]). A failure is logged and the next start
    /// goes on.
    pub async fn migrate(&self, shutdown: tokio_util::sync::CancellationToken) {
        let mark = self.root.join(LAYOUT_MARK);
        let root = self.root.clone();
        if blocking(move || Ok(root.join(LAYOUT_MARK).exists()))
            .await
            .unwrap_or(false)
        {
            return;
        }
        let mut moved = 0u64;
        for byte in 0..=255u8 {
            if shutdown.is_cancelled() {
                return;
            }
            let shard = self.root.join(format!("{byte:02x}"));
            match blocking(move || migrate_shard(&shard)).await {
                Ok(n) => moved += n,
                Err(e) => {
                    tracing::error!(error = %e, "cannot move objects of the first layout; the next start tries again");
                    return;
                }
            }
        }
        let root = self.root.clone();
        let marked = blocking(move || {
            // The moves are durable before the mark says they are done.
            fsync_dir(&root)?;
            fsio::write_atomic(&mark, b"").map_err(|e| StoreError::new("create", &mark, e))
        })
        .await;
        match marked {
            Ok(()) if moved > 0 => {
                tracing::info!(moved, "object store migrated to one level of 256 shards")
            }
            Ok(()) => {}
            Err(e) => tracing::error!(error = %e, "cannot mark the object store as migrated"),
        }
    }

    /// Makes a batch of written uploads durable under their temporary
    /// names (blocking); one result per upload, in order.
    ///
    /// A few files are fsynced one by one. From [`SYNCFS_MIN`] files up,
    /// one `syncfs` of the store's file system flushes the data and
    /// metadata of all of them instead. `syncfs` reports a file system's
    /// writeback errors once, to whichever caller asks first, so each file's
    /// own error state is then read too (`sync_file_range` with the WAIT
    /// flags, which reads and clears the file's errors just like fsync): a
    /// failed page fails its own upload. When `syncfs` itself fails (an
    /// error anywhere on the file system, maybe not ours), each file is
    /// fsynced instead, which tells whose data was lost.
    pub fn sync_batch(&self, batch: &[&Written]) -> Vec<Result<(), StoreError>> {
        let fsync_each = || {
            batch
                .iter()
                .map(|w| match w.synced {
                    true => Ok(()),
                    false => w
                        .file
                        .sync_all()
                        .map_err(|e| StoreError::new("fsync", w.temp.path(), e)),
                })
                .collect()
        };
        let unsynced = batch.iter().filter(|w| !w.synced).count();
        if unsynced < SYNCFS_MIN {
            return fsync_each();
        }
        if let Err(e) = self.syncfs("sync file system of") {
            tracing::warn!(error = %e, files = unsynced, "syncfs failed; fsyncing each file of the batch instead");
            return fsync_each();
        }
        batch
            .iter()
            .map(|w| match w.synced {
                true => Ok(()),
                false => fsio::wait_written(&w.file)
                    .map_err(|e| StoreError::new("write back", w.temp.path(), e)),
            })
            .collect()
    }

    /// Moves a durable temporary file to its content-addressed name
    /// (blocking): create the shard directories, rename. Returns the shard
    /// directory, whose new entry [`LocalObjects::dirs_to_sync`] and
    /// [`LocalObjects::sync_dirs`] make durable once for the whole batch,
    /// with the parents of any directory created.
    pub fn place(&self, written: Written) -> Result<PathBuf, StoreError> {
        let Written {
            mut temp, sha256, ..
        } = written;
        let dest = self.path_of(&sha256);
        let shard = dest.parent().expect("object path has a parent");
        self.ensure_dir(shard)?;
        fs::rename(temp.path(), &dest)
            .map_err(|e| StoreError::new("rename into place", &dest, e))?;
        // rename(2) of a name onto another link of the same inode does
        // nothing (a resumable upload's retried completion hands over a
        // hard link of a file already placed): then the temporary name is
        // still there, and dropping `temp` removes it.
        if fs::symlink_metadata(temp.path()).is_err() {
            temp.keep();
        }
        Ok(shard.to_owned())
    }

    /// Creates `dir` and any missing parents below the root; the parent of
    /// every directory created is recorded as unsynced at once, so that it
    /// is synced by this batch or, if that fails or this upload fails
    /// later, by a following one.
    fn ensure_dir(&self, dir: &Path) -> Result<(), StoreError> {
        if dir.is_dir() {
            return Ok(());
        }
        if let Some(parent) = dir.parent() {
            if parent != self.root && parent.starts_with(&self.root) {
                self.ensure_dir(parent)?;
            }
        }
        match fs::create_dir(dir) {
            Ok(()) => {
                let parent = dir.parent().unwrap_or(&self.root).to_owned();
                self.unsynced_dirs().insert(parent);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(StoreError::new("create directory", dir, e)),
        }
    }

    /// The directories a batch must sync: the shards it renamed into and
    /// every directory still recorded as unsynced (taken; put back by
    /// [`LocalObjects::sync_dirs`] when their sync fails).
    pub fn dirs_to_sync(&self, shards: impl IntoIterator<Item = PathBuf>) -> BTreeSet<PathBuf> {
        let mut dirs = std::mem::take(&mut *self.unsynced_dirs());
        dirs.extend(shards);
        dirs
    }

    /// Makes directories durable (blocking): an fsync of each, or one
    /// `syncfs` from [`SYNCFS_MIN`] directories up (and an fsync of each
    /// when it fails). Returns the directories that could not be synced,
    /// with why.
    pub fn sync_dirs(&self, dirs: &BTreeSet<PathBuf>) -> Vec<(PathBuf, StoreError)> {
        if dirs.len() >= SYNCFS_MIN {
            match self.syncfs("sync new objects in") {
                Ok(()) => return Vec::new(),
                Err(e) => {
                    tracing::warn!(error = %e, dirs = dirs.len(), "syncfs failed; fsyncing each directory instead");
                }
            }
        }
        let failed: Vec<(PathBuf, StoreError)> = dirs
            .iter()
            .filter_map(|d| fsync_dir(d).err().map(|e| (d.clone(), e)))
            .collect();
        // A directory that could not be synced is synced again with the
        // next batch (a shard created in it may not survive a power cut).
        self.unsynced_dirs()
            .extend(failed.iter().map(|(d, _)| d.clone()));
        failed
    }

    /// `syncfs` of the file system holding the store (blocking).
    fn syncfs(&self, op: &'static str) -> Result<(), StoreError> {
        let dir = File::open(&self.tmp).map_err(|e| StoreError::new("open", &self.tmp, e))?;
        fsio::syncfs(&dir).map_err(|e| StoreError::new(op, &self.tmp, e))
    }

    /// Deletes an object (only ever one this process stored and no row
    /// references).
    pub async fn remove(&self, sha256: &Sha256) -> Result<(), StoreError> {
        let store = self.clone();
        let sha = sha256.clone();
        blocking(move || {
            // Under the first layout too (see `locate`): both, if both.
            for _ in 0..2 {
                let path = store.locate(&sha);
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(e) => return Err(StoreError::new("remove", &path, e)),
                }
            }
            Ok(())
        })
        .await
    }

    /// Whether the object exists and its size, without reading it.
    pub async fn stat(&self, sha256: &Sha256) -> Result<Option<u64>, StoreError> {
        let store = self.clone();
        let sha = sha256.clone();
        blocking(move || {
            let path = store.locate(&sha);
            match fs::metadata(&path) {
                Ok(m) => Ok(Some(m.len())),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(StoreError::new("stat", &path, e)),
            }
        })
        .await
    }

    /// Opens an object for reading (download).
    pub async fn open(&self, sha256: &Sha256) -> Result<tokio::fs::File, StoreError> {
        let store = self.clone();
        let sha = sha256.clone();
        let file = blocking(move || {
            let path = store.locate(&sha);
            File::open(&path).map_err(|e| StoreError::new("open", &path, e))
        })
        .await?;
        Ok(tokio::fs::File::from_std(file))
    }

    /// Free bytes for unprivileged writers on the temp file system.
    pub async fn free_bytes(&self) -> Result<u64, StoreError> {
        let tmp = self.tmp.clone();
        blocking(move || {
            fsio::disk_space(&tmp)
                .map(|(free, _total)| free)
                .map_err(|e| StoreError::new("statvfs", &tmp, e))
        })
        .await
    }

    /// Proves the storage takes writes: create, fsync and remove a small
    /// file in the temp directory (for `/readyz`).
    pub async fn check_writable(&self) -> Result<(), StoreError> {
        let path = self
            .tmp
            .join(format!("readyz-{}{TEMP_SUFFIX}", random_name()));
        blocking(move || {
            let r = File::create(&path)
                .and_then(|mut f| f.write_all(b"ok").and_then(|()| f.sync_all()))
                .map_err(|e| StoreError::new("write probe", &path, e));
            let _ = fs::remove_file(&path);
            r
        })
        .await
    }
}

impl Written {
    /// As the commit stage carries it.
    pub fn staged(self) -> Staged {
        Staged {
            sha256: self.sha256.clone(),
            size: self.size,
            held: Box::new(self),
        }
    }
}

impl LocalObjects {
    /// [`Objects::persist`] on the blocking pool: make every file durable
    /// under its temporary name (one `syncfs` for many, see
    /// [`LocalObjects::sync_batch`]), rename each into place, make the
    /// renames durable. An object renamed into place whose name could not
    /// be made durable is not acknowledged; it stays for the collector.
    fn persist_blocking(&self, written: Vec<Written>) -> Vec<Result<(), StoreError>> {
        let synced = self.sync_batch(&written.iter().collect::<Vec<_>>());
        let placed: Vec<Result<PathBuf, StoreError>> = written
            .into_iter()
            .zip(synced)
            .map(|(w, synced)| synced.and_then(|()| self.place(w)))
            .collect();
        let dirs = self.dirs_to_sync(placed.iter().flatten().cloned());
        let failed = self.sync_dirs(&dirs);
        placed
            .into_iter()
            .map(|p| {
                let shard = p?;
                // A name that may not survive a power cut (its shard
                // directory or one above it was not synced) is not durable.
                match failed.iter().find(|(d, _)| shard.starts_with(d)) {
                    Some((_, e)) => Err(e.again()),
                    None => Ok(()),
                }
            })
            .collect()
    }

    /// One page of the listing (blocking): shards in order, names in order
    /// within a shard, from just after `after`.
    fn list_blocking(
        &self,
        after: Option<Sha256>,
        limit: usize,
    ) -> Result<Vec<Listed>, StoreError> {
        let first = after
            .as_ref()
            .map_or(0, |a| u8::from_str_radix(&a.as_str()[..2], 16).unwrap_or(0));
        let mut out = Vec::new();
        for byte in first..=255u8 {
            let shard = self.root.join(format!("{byte:02x}"));
            let entries = match fs::read_dir(&shard) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::new("read directory", &shard, e)),
            };
            let mut page = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| StoreError::new("read directory", &shard, e))?;
                let Some(sha) = entry
                    .file_name()
                    .to_str()
                    .and_then(|n| Sha256::parse(n).ok())
                else {
                    continue; // a first-layout directory, or not ours
                };
                if after.as_ref().is_some_and(|a| sha.as_str() <= a.as_str()) {
                    continue;
                }
                // No follow: a name in the store is a file we renamed there.
                let meta = match entry.metadata() {
                    Ok(m) if m.is_file() => m,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::new("stat", &entry.path(), e)),
                };
                let modified = meta
                    .modified()
                    .map_err(|e| StoreError::new("stat", &entry.path(), e))?;
                page.push(Listed {
                    sha256: sha,
                    modified,
                });
            }
            page.sort_by(|a, b| a.sha256.as_str().cmp(b.sha256.as_str()));
            out.extend(page);
            if out.len() >= limit {
                out.truncate(limit);
                break;
            }
        }
        Ok(out)
    }
}

impl Objects for LocalObjects {
    fn describe(&self) -> String {
        self.root.display().to_string()
    }

    fn locator(&self, sha256: &Sha256) -> String {
        self.locate(sha256).display().to_string()
    }

    fn prepare(&self) -> ObjFut<'_, ()> {
        Box::pin(LocalObjects::prepare(self))
    }

    fn upkeep(&self, shutdown: tokio_util::sync::CancellationToken) -> Fut<'_, ()> {
        Box::pin(self.migrate(shutdown))
    }

    fn begin(&self, _claimed: &Sha256, _length: u64) -> Staging {
        let (tx, rx) = mpsc::channel(16);
        let path = self.tmp.join(format!("{}{TEMP_SUFFIX}", random_name()));
        let done = tokio::task::spawn_blocking(move || {
            write_upload(path, rx).map(|w| w.map(Written::staged))
        });
        Staging { tx, done }
    }

    fn persist(&self, batch: Vec<Staged>) -> Fut<'_, Vec<Result<(), StoreError>>> {
        Box::pin(async move {
            let n = batch.len();
            let mut written = Vec::with_capacity(n);
            let mut foreign = Vec::new();
            for (i, staged) in batch.into_iter().enumerate() {
                match staged.held.downcast::<Written>() {
                    Ok(w) => written.push(*w),
                    Err(_) => foreign.push(i),
                }
            }
            if !foreign.is_empty() {
                // A broken invariant, not a storage failure: fail them all.
                let e = || {
                    StoreError::new(
                        "persist",
                        &self.root,
                        io::Error::other("an upload staged by another store"),
                    )
                };
                return (0..n).map(|_| Err(e())).collect();
            }
            let store = self.clone();
            match blocking(move || Ok(store.persist_blocking(written))).await {
                Ok(r) => r,
                Err(e) => (0..n).map(|_| Err(e.again())).collect(),
            }
        })
    }

    fn stat<'a>(&'a self, sha256: &'a Sha256) -> ObjFut<'a, Option<u64>> {
        Box::pin(LocalObjects::stat(self, sha256))
    }

    fn read<'a>(&'a self, sha256: &'a Sha256) -> ObjFut<'a, super::ByteStream> {
        Box::pin(async move {
            let file = self.open(sha256).await?;
            let stream = tokio_util::io::ReaderStream::with_capacity(file, 256 << 10);
            Ok(Box::pin(stream) as super::ByteStream)
        })
    }

    fn hash<'a>(&'a self, sha256: &'a Sha256) -> ObjFut<'a, (Sha256, u64)> {
        let (store, sha) = (self.clone(), sha256.clone());
        Box::pin(blocking(move || {
            let path = store.locate(&sha);
            hash_file(&path).map_err(|e| StoreError::new("hash", &path, e))
        }))
    }

    fn free_bytes(&self) -> ObjFut<'_, Option<u64>> {
        Box::pin(async move { LocalObjects::free_bytes(self).await.map(Some) })
    }

    fn check(&self) -> ObjFut<'_, ()> {
        Box::pin(self.check_writable())
    }

    fn list<'a>(&'a self, after: Option<&'a Sha256>, limit: usize) -> ObjFut<'a, Vec<Listed>> {
        let (store, after) = (self.clone(), after.cloned());
        Box::pin(blocking(move || store.list_blocking(after, limit)))
    }

    fn delete<'a>(&'a self, shas: &'a [Sha256]) -> ObjFut<'a, ()> {
        Box::pin(async move {
            for sha in shas {
                self.remove(sha).await?;
            }
            Ok(())
        })
    }

    fn sweep_staging(
        &self,
        before: std::time::SystemTime,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Fut<'_, Swept> {
        Box::pin(crate::sweep::sweep_temp(self.tmp.clone(), before, shutdown))
    }
}

/// fsync of a directory, so renames and creations in it are durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fsio::fsync_dir(dir).map_err(|e| StoreError::new("fsync directory", dir, e))
}

/// sha256 and size of a file, read in 1 MiB pieces (blocking).
pub fn hash_file(path: &Path) -> io::Result<(Sha256, u64)> {
    let (digest, size) = fsio::hash_file(path)?;
    Ok((Sha256::from_bytes(&digest), size))
}

#[cfg(test)]
mod tests;
