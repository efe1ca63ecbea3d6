//! Packing: episode directory → tar → zstd → sha256 and the `.partial` file,
//! in one streaming pass driven by the calling (blocking) thread, which
//! reads and feeds zstd's workers while `output` hashes and writes; then
//! fsync, rename, fsync the directory.
//!
//! The output is deterministic: entries sorted bytewise by relative path,
//! owners zeroed, modes normalised, file mtimes kept, directory and
//! symlink mtimes zeroed (a directory's mtime changes whenever a file is added to or
//! removed from it, for example a quarantine reason file, and must not
//! change the digest), GNU headers, fixed zstd parameters (see `frames`:
//! at high levels incompressible files get level-1 frames of their own and
//! frames of at most 1 MiB are compressed in parallel; below them, one
//! frame in zstd's multi-threaded mode). Neither output depends on the
//! number of workers.

pub mod archive;
pub mod frames;
pub mod output;
pub mod walk;

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ferry_durable::safe::{self, Dir, Kind, Snapshot};
use ferry_proto::Sha256;
use tokio_util::sync::CancellationToken;

use self::frames::FrameWriter;
use self::output::{ErrorSlot, Finished, HashedOutput};
use self::walk::{check_dirs, entry_error, walk, Item, Tree};
use crate::fsio;

/// Why packing failed. Read errors are the episode's (`Outcome::LocalRead`),
/// write errors the device's (`Outcome::DiskFull` when ENOSPC/EDQUOT).
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: io::Error },
    /// The episode changed while it was packed (a file grew, was
    /// replaced, or a directory gained or lost an entry): not ready this
    /// pass. Nothing is written; the next pass packs it again.
    #[error("{} changed while being packed ({what})", path.display())]
    Changed { path: PathBuf, what: &'static str },
    #[error("cancelled")]
    Cancelled,
}

impl PackError {
    /// The device ran out of space (or quota) writing the tarball.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, PackError::Write { source, .. } if fsio::is_disk_full(source))
    }

    /// `path: message [ERRNO]`.
    pub fn describe(&self) -> String {
        match self {
            PackError::Read { path, source } | PackError::Write { path, source } => {
                fsio::describe(path, source)
            }
            PackError::Changed { .. } | PackError::Cancelled => self.to_string(),
        }
    }
}

/// Fixed archive parameters.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    pub zstd_level: i32,
    /// zstd worker threads, at least 1 (see the module doc).
    pub workers: u32,
}

impl PackOptions {
    pub fn new(zstd_level: i32) -> PackOptions {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        PackOptions {
            zstd_level,
            workers: cpus.clamp(1, 4) as u32,
        }
    }
}

/// The result of a pack: digest and size of the tarball.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packed {
    pub sha256: Sha256,
    pub size: u64,
}

/// Reads exactly `remaining` bytes of one file, counting progress and
/// honouring cancellation; keeps its own error for the same reason.
struct EntryReader<'a> {
    file: File,
    path: &'a Path,
    remaining: u64,
    progress: &'a AtomicU64,
    cancel: &'a CancellationToken,
    error: Option<PackError>,
}

impl Read for EntryReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        if self.cancel.is_cancelled() {
            self.error = Some(PackError::Cancelled);
            return Err(io::Error::other("cancelled"));
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = loop {
            match self.file.read(&mut buf[..want]) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other,
            }
        };
        match n {
            Ok(0) => {
                self.error = Some(PackError::Changed {
                    path: self.path.to_owned(),
                    what: "shrank while being read",
                });
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "file shrank while being packed",
                ))
            }
            Ok(n) => {
                self.remaining -= n as u64;
                self.progress.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                let copy = io::Error::new(e.kind(), e.to_string());
                self.error = Some(PackError::Read {
                    path: self.path.to_owned(),
                    source: e,
                });
                Err(copy)
            }
        }
    }
}

fn normal_mode(snap: &Snapshot) -> u32 {
    match snap.kind {
        Kind::Dir => 0o755,
        Kind::Symlink => 0o777,
        _ if snap.mode & 0o111 != 0 => 0o755,
        _ => 0o644,
    }
}

/// Pack `src` as `<name>/...` into `out` (written as `<out>.partial`, then
/// renamed). `progress` counts bytes read; `cancel` stops the pass.
pub fn pack_dir(
    src: &Path,
    name: &str,
    out: &Path,
    opts: PackOptions,
    progress: &AtomicU64,
    cancel: &CancellationToken,
) -> Result<Packed, PackError> {
    pack_dir_open(src, name, out, opts, progress, cancel).map(|(p, _)| p)
}

/// [`pack_dir`], also handing back the tarball open (on the descriptor
/// that wrote it), so that what is uploaded is the file made here, not
/// whatever its name points to by then. `src`'s last component is not
/// followed (an episode directory that is a symlink is refused).
pub fn pack_dir_open(
    src: &Path,
    name: &str,
    out: &Path,
    opts: PackOptions,
    progress: &AtomicU64,
    cancel: &CancellationToken,
) -> Result<(Packed, File), PackError> {
    let werr = |source| PackError::Write {
        path: out.to_owned(),
        source,
    };
    let mut tree = Tree::open(src)?;
    let items = walk(&mut tree, cancel)?;
    let out_name = out
        .file_name()
        .ok_or_else(|| werr(io::Error::from_raw_os_error(libc::EINVAL)))?;
    let out_dir = Dir::open(match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    })
    .map_err(werr)?;
    let mut partial_name = out_name.to_owned();
    partial_name.push(".partial");
    let partial = out.with_file_name(&partial_name);
    // A partial left by a crash, or planted: removed (a symlink itself,
    // never its target), then made afresh O_EXCL|O_NOFOLLOW.
    match out_dir.remove_file(&partial_name) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(werr(e)),
        _ => {}
    }
    let file = out_dir
        .create_new(&partial_name, 0o644)
        .map_err(|source| PackError::Write {
            path: partial.clone(),
            source,
        })?;
    let result = write_archive(
        &mut tree, &items, name, file, &partial, opts, progress, cancel,
    )
    .and_then(|done| {
        out_dir.rename(&partial_name, out_name).map_err(werr)?;
        out_dir.sync().map_err(werr)?;
        Ok(done)
    });
    if result.is_err() {
        let _ = out_dir.remove_file(&partial_name);
    }
    result
}

/// One regular file: opened below its directory without following, checked
/// to be the file walked and unchanged, read, and checked again after.
fn append_file(
    builder: &mut tar::Builder<FrameWriter<HashedOutput<'_>>>,
    tree: &mut Tree<'_>,
    item: &Item,
    arc_path: &Path,
    params: frames::Params,
    progress: &AtomicU64,
    cancel: &CancellationToken,
) -> Result<(), (io::Error, Option<PackError>)> {
    let src = tree.src;
    let rel = Path::new(&*item.rel);
    let path = src.join(rel);
    let fail = |e: PackError| (io::Error::other("entry"), Some(e));
    let (parent, file_name) = item.parent_and_name();
    let (file, snap) = tree
        .dir(parent)
        .and_then(|d| d.open_file(file_name))
        .map_err(|e| fail(entry_error(src, rel, e)))?;
    let replaced = PackError::Changed {
        path: path.clone(),
        what: "replaced or modified since it was listed",
    };
    if !snap.unchanged(&item.snap) {
        return Err(fail(replaced));
    }
    let size = item.snap.size;
    if params.adaptive() {
        let class = frames::classify(&file, size).map_err(|source| {
            fail(PackError::Read {
                path: path.clone(),
                source,
            })
        })?;
        builder.get_mut().switch(class).map_err(|e| (e, None))?;
    }
    let mtime = item.snap.mtime.0.max(0) as u64;
    let mut h = header(
        tar::EntryType::Regular,
        normal_mode(&item.snap),
        mtime,
        size,
    );
    let mut reader = EntryReader {
        file,
        path: &path,
        remaining: size,
        progress,
        cancel,
        error: None,
    };
    if let Err(e) = builder.append_data(&mut h, arc_path, &mut reader) {
        return Err((e, reader.error.take()));
    }
    // Grown, rewritten or replaced while read: the archive would hold a
    // mixture (or a cut) of it.
    match safe::snapshot(&reader.file) {
        Ok(after) if after.unchanged(&item.snap) => Ok(()),
        Ok(_) => Err(fail(PackError::Changed {
            path,
            what: "modified while it was read",
        })),
        Err(source) => Err(fail(PackError::Read { path, source })),
    }
}

#[allow(clippy::too_many_arguments)]
fn write_archive(
    tree: &mut Tree<'_>,
    items: &[Item],
    name: &str,
    file: File,
    partial: &Path,
    opts: PackOptions,
    progress: &AtomicU64,
    cancel: &CancellationToken,
) -> Result<(Packed, File), PackError> {
    let werr = |source| PackError::Write {
        path: partial.to_owned(),
        source,
    };
    let write_error = ErrorSlot::default();
    let hw = HashedOutput::new(file, write_error.clone(), progress, cancel).map_err(werr)?;
    let params = frames::Params {
        level: opts.zstd_level,
        workers: opts.workers,
    };
    let mut builder = tar::Builder::new(FrameWriter::new(hw, params).map_err(werr)?);

    // Map an error from tar/zstd to the side that caused it.
    let classify = |e: io::Error, reader_error: Option<PackError>, path: &Path| -> PackError {
        if cancel.is_cancelled() {
            return PackError::Cancelled;
        }
        if let Some(r) = reader_error {
            return r;
        }
        if let Some(w) = write_error.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return PackError::Write {
                path: partial.to_owned(),
                source: w,
            };
        }
        PackError::Read {
            path: path.to_owned(),
            source: e,
        }
    };

    let appended = append_all(
        &mut builder,
        tree,
        items,
        name,
        params,
        progress,
        cancel,
        &classify,
    );
    if let Err(e) = appended {
        // Dropping a multi-threaded zstd context waits for its workers to
        // finish their jobs (many seconds at a high level); a shutdown must
        // not wait for that. Abandoned, the output is discarded at once.
        builder.get_mut().abandon();
        return Err(e);
    }
    let mut frames = builder
        .into_inner()
        .map_err(|e| classify(e, None, partial))?;
    if let Err(e) = frames.finish() {
        frames.abandon();
        return Err(classify(e, None, partial));
    }
    let Finished {
        digest,
        size,
        mut file,
    } = frames.into_inner().finish().map_err(werr)?;
    file.sync_all().map_err(werr)?;
    let file = file.into_inner().map_err(werr)?;
    Ok((
        Packed {
            sha256: Sha256::from_bytes(&digest),
            size,
        },
        file,
    ))
}

/// Every entry, the episode's own directory first, then `items` in order;
/// then the directories checked unchanged. `classify` maps an error from
/// tar or zstd to the side that caused it.
#[allow(clippy::too_many_arguments)]
fn append_all(
    builder: &mut tar::Builder<FrameWriter<HashedOutput<'_>>>,
    tree: &mut Tree<'_>,
    items: &[Item],
    name: &str,
    params: frames::Params,
    progress: &AtomicU64,
    cancel: &CancellationToken,
    classify: &dyn Fn(io::Error, Option<PackError>, &Path) -> PackError,
) -> Result<(), PackError> {
    let src = tree.src;
    // The episode's own directory entry first.
    let mut h = dir_header();
    builder
        .append_data(&mut h, Path::new(name), io::empty())
        .map_err(|e| classify(e, None, src))?;

    for item in items {
        if cancel.is_cancelled() {
            return Err(PackError::Cancelled);
        }
        let rel = Path::new(&*item.rel);
        let path = src.join(rel);
        let arc_path = Path::new(name).join(rel);
        match item.kind() {
            Kind::Dir => {
                let mut h = dir_header();
                builder
                    .append_data(&mut h, &arc_path, io::empty())
                    .map_err(|e| classify(e, None, &path))?;
            }
            Kind::Symlink => {
                let (parent, link_name) = item.parent_and_name();
                let target = tree
                    .dir(parent)
                    .and_then(|d| d.read_link(link_name))
                    .map_err(|e| match e.raw_os_error() {
                        // No longer a symlink.
                        Some(libc::EINVAL) => PackError::Changed {
                            path: path.clone(),
                            what: "replaced by another kind of file",
                        },
                        _ => entry_error(src, rel, e),
                    })?;
                // A symlink's own mtime is when it was made, not data: zeroed
                // like a directory's.
                let mut h = header(tar::EntryType::Symlink, 0o777, 0, 0);
                builder
                    .append_link(&mut h, &arc_path, &target)
                    .map_err(|e| classify(e, None, &path))?;
            }
            Kind::File => {
                append_file(builder, tree, item, &arc_path, params, progress, cancel)
                    .map_err(|(e, reader_error)| classify(e, reader_error, &path))?;
            }
            other => {
                return Err(PackError::Read {
                    path,
                    source: io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("{}, not a regular file, directory or symlink", other.name()),
                    ),
                });
            }
        }
    }
    check_dirs(tree, items)
}

/// A GNU header with owners zeroed.
fn header(kind: tar::EntryType, mode: u32, mtime: u64, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(mtime);
    h.set_size(size);
    h
}

fn dir_header() -> tar::Header {
    header(tar::EntryType::Directory, 0o755, 0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};

    fn set_mtime(p: &Path, secs: u64) {
        let f = File::options().write(true).open(p).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(secs))
            .unwrap();
    }

    /// Build the same episode content in `dir`, creating entries in the
    /// given order.
    fn build(dir: &Path, reverse: bool) {
        let mut files: Vec<(&str, Vec<u8>)> = vec![
            (
                "meta.json",
                b"{\"code_version\":{\"commit\":\"x\"}}".to_vec(),
            ),
            (
                "a/b/c.bin",
                (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect(),
            ),
            ("a/z.txt", b"zzz".to_vec()),
            ("a.txt", b"dot sorts before slash".to_vec()),
            ("done.marker", Vec::new()),
            ("run.sh", b"#!/bin/sh\n".to_vec()),
        ];
        if reverse {
            files.reverse();
        }
        for (rel, data) in &files {
            let p = dir.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(&p, data).unwrap();
            set_mtime(&p, 1_700_000_000);
        }
        fs::set_permissions(dir.join("run.sh"), fs::Permissions::from_mode(0o700)).unwrap();
        fs::set_permissions(dir.join("a.txt"), fs::Permissions::from_mode(0o600)).unwrap();
        symlink("a/z.txt", dir.join("link")).unwrap();
    }

    fn pack(src: &Path, out: &Path, workers: u32) -> Packed {
        let opts = PackOptions {
            zstd_level: 3,
            workers,
        };
        pack_dir(
            src,
            "ep1",
            out,
            opts,
            &AtomicU64::new(0),
            &CancellationToken::new(),
        )
        .unwrap()
    }

    #[test]
    fn same_content_same_bytes_whatever_order_path_or_workers() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("one/ep1");
        let b = t.path().join("two/deeper/elsewhere/ep1");
        fs::create_dir_all(&a).unwrap();
        fs::create_dir_all(&b).unwrap();
        build(&a, false);
        std::thread::sleep(Duration::from_millis(1100));
        build(&b, true);
        let pa = pack(&a, &t.path().join("a.tar.zst"), 1);
        let pb = pack(&b, &t.path().join("b.tar.zst"), 3);
        assert_eq!(pa, pb);
        assert_eq!(
            fs::read(t.path().join("a.tar.zst")).unwrap(),
            fs::read(t.path().join("b.tar.zst")).unwrap()
        );
        assert!(!t.path().join("a.tar.zst.partial").exists());
        let a = File::open(t.path().join("a.tar.zst")).unwrap();
        let again = archive::check(a, "ep1", None, &|| false).unwrap();
        assert_eq!(
            (Sha256::from_bytes(&again.digest), again.size),
            (pa.sha256, pa.size)
        );
    }

    #[test]
    fn archive_lists_sorted_normalised_entries() {
        let t = tempfile::tempdir().unwrap();
        let a = t.path().join("ep1");
        fs::create_dir_all(&a).unwrap();
        build(&a, false);
        let out = t.path().join("x.tar.zst");
        pack(&a, &out, 2);
        let dec = zstd::Decoder::new(File::open(&out).unwrap()).unwrap();
        let mut ar = tar::Archive::new(dec);
        let mut seen = Vec::new();
        for e in ar.entries().unwrap() {
            let e = e.unwrap();
            let h = e.header();
            seen.push((
                e.path()
                    .unwrap()
                    .to_string_lossy()
                    .trim_end_matches('/')
                    .to_string(),
                h.mode().unwrap(),
                h.uid().unwrap(),
                h.mtime().unwrap(),
            ));
        }
        let names: Vec<&str> = seen.iter().map(|s| s.0.as_str()).collect();
        assert_eq!(
            names,
            [
                "ep1",
                "ep1/a",
                "ep1/a.txt",
                "ep1/a/b",
                "ep1/a/b/c.bin",
                "ep1/a/z.txt",
                "ep1/done.marker",
                "ep1/link",
                "ep1/meta.json",
                "ep1/run.sh"
            ]
        );
        let get = |n: &str| seen.iter().find(|s| s.0 == n).unwrap();
        assert_eq!(get("ep1/run.sh").1, 0o755);
        assert_eq!(get("ep1/a.txt").1, 0o644);
        assert_eq!(get("ep1/a").1, 0o755);
        assert_eq!(get("ep1/a.txt").3, 1_700_000_000);
        assert!(seen.iter().all(|s| s.2 == 0));
    }

    #[test]
    fn cancelling_mid_pack_returns_promptly_even_at_a_high_level() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("ep");
        fs::create_dir_all(&src).unwrap();
        // Poorly compressible data, slow at level 19.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let data: Vec<u8> = (0..24 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x % 7) as u8
            })
            .collect();
        fs::write(src.join("big.bin"), data).unwrap();
        let cancel = CancellationToken::new();
        let c = cancel.clone();
        let progress = AtomicU64::new(0);
        let started = std::time::Instant::now();
        let canceller = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            c.cancel();
        });
        let opts = PackOptions {
            zstd_level: 19,
            workers: 2,
        };
        let r = pack_dir(&src, "ep", &t.path().join("o"), opts, &progress, &cancel);
        canceller.join().unwrap();
        assert!(matches!(r, Err(PackError::Cancelled)), "{r:?}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        assert!(!t.path().join("o.partial").exists());
    }

    #[test]
    fn errors_say_which_side_and_where() {
        let t = tempfile::tempdir().unwrap();
        let missing = t.path().join("nope");
        let e = pack_dir(
            &missing,
            "x",
            &t.path().join("o"),
            PackOptions::new(3),
            &AtomicU64::new(0),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(
            matches!(&e, PackError::Read { path, .. } if path == &missing),
            "{e:?}"
        );
        let src = t.path().join("ep");
        fs::create_dir_all(&src).unwrap();
        let e = pack_dir(
            &src,
            "ep",
            &t.path().join("no/such/dir/o"),
            PackOptions::new(3),
            &AtomicU64::new(0),
            &CancellationToken::new(),
        )
        .unwrap_err();
        assert!(matches!(e, PackError::Write { .. }), "{e:?}");
        let cancel = CancellationToken::new();
        cancel.cancel();
        let e = pack_dir(
            &src,
            "ep",
            &t.path().join("o"),
            PackOptions::new(3),
            &AtomicU64::new(0),
            &cancel,
        )
        .unwrap_err();
        assert!(matches!(e, PackError::Cancelled));
        assert!(PackError::Write {
            path: "x".into(),
            source: io::Error::from_raw_os_error(libc::ENOSPC)
        }
        .is_disk_full());
    }
}
