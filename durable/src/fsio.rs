//! Crash-safe filesystem primitives (write temp → fsync → rename → fsync
//! dir), the batch syncs (`syncfs`, a file's own writeback state), disk
//! space, file digests, the one-daemon lock, and errno classification, so
//! that nothing decides by message text. Temporary files are made with
//! [`crate::safe`]: `O_EXCL|O_NOFOLLOW` under a random name. Shared by the
//! agent and the receiver; every system call through `rustix` where it has
//! one.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use sha2::Digest;

use crate::safe::Dir;

/// fsync a directory so that a rename or unlink inside it is durable.
pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    Dir::open(dir)?.sync()
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Write `bytes` to `path` atomically and durably: a new file under a
/// random name in the same directory (`O_EXCL|O_NOFOLLOW`), fsync, rename
/// over `path`, fsync the directory. The directory is the caller's
/// (followed if a symlink); `path`'s own name is never followed.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    Dir::open(parent(path))?.replace(name, bytes)
}

/// Rename `from` to `to` and fsync both parent directories (one when they
/// are the same), so that the move survives a power cut.
pub fn rename_durable(from: &Path, to: &Path) -> io::Result<()> {
    fs::rename(from, to)?;
    let (a, b) = (parent(from), parent(to));
    fsync_dir(b)?;
    if a != b {
        fsync_dir(a)?;
    }
    Ok(())
}

/// Move directory `from` to `to`, replacing an existing `to` (left over
/// from an earlier copy of the same episode) instead of failing on it.
/// The old copy is first renamed aside, so at every instant one complete
/// copy exists under a recognisable name.
pub fn move_dir_replacing(from: &Path, to: &Path) -> io::Result<()> {
    match fs::rename(from, to) {
        Ok(()) => {}
        Err(e) if is_dir_not_empty(&e) || e.kind() == io::ErrorKind::AlreadyExists => {
            let aside = aside_name(to);
            fs::rename(to, &aside)?;
            fs::rename(from, to)?;
            fsync_dir(parent(to))?;
            remove_path(&aside)?;
        }
        Err(e) => return Err(e),
    }
    let (a, b) = (parent(from), parent(to));
    fsync_dir(b)?;
    if a != b {
        fsync_dir(a)?;
    }
    Ok(())
}

/// Name for an old copy being replaced: a dot name, so scans ignore it and
/// the retention sweep removes it if a crash leaves it behind.
pub fn aside_name(path: &Path) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent(path).join(format!(".{name}.old-{nanos}"))
}

/// Remove a file or a directory tree; a missing path is not an error.
pub fn remove_path(path: &Path) -> io::Result<()> {
    let result = match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(path),
        Ok(_) => fs::remove_file(path),
        Err(e) => Err(e),
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

/// Remove a file durably (unlink, fsync dir); a missing file is fine.
pub fn remove_file_durable(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => fsync_dir(parent(path)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn is_dir_not_empty(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST))
}

/// The device's disk is full (or the quota is): transient, never the
/// episode's fault.
pub fn is_disk_full(e: &io::Error) -> bool {
    e.raw_os_error().is_some_and(is_out_of_space)
}

/// Whether an errno means "no space" (ENOSPC, EDQUOT).
pub fn is_out_of_space(errno: i32) -> bool {
    errno == libc::ENOSPC || errno == libc::EDQUOT
}

/// Whether an errno means "this storage cannot take writes now": out of
/// space, or a read-only file system.
pub fn is_storage_unavailable(errno: i32) -> bool {
    is_out_of_space(errno) || errno == libc::EROFS
}

/// Symbolic name of an errno, for messages an operator greps for.
pub fn errno_name(e: &io::Error) -> Option<&'static str> {
    Some(match e.raw_os_error()? {
        libc::EIO => "EIO",
        libc::EUCLEAN => "EUCLEAN",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ENOSPC => "ENOSPC",
        libc::EDQUOT => "EDQUOT",
        libc::EROFS => "EROFS",
        libc::ESTALE => "ESTALE",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::ELOOP => "ELOOP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EBADMSG => "EBADMSG",
        libc::ENODATA => "ENODATA",
        libc::EINTR => "EINTR",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return None,
    })
}

/// `path: message (os error N) [ENAME]`: the one way an IO error with a
/// path is written, so that logs and reason files agree.
pub fn describe(path: &Path, e: &io::Error) -> String {
    match errno_name(e) {
        Some(n) => format!("{}: {e} [{n}]", path.display()),
        None => format!("{}: {e}", path.display()),
    }
}

/// Free and total bytes of the filesystem holding `path` (statvfs).
pub fn disk_space(path: &Path) -> io::Result<(u64, u64)> {
    let st = rustix::fs::statvfs(path)?;
    Ok((
        st.f_bavail.saturating_mul(st.f_frsize),
        st.f_blocks.saturating_mul(st.f_frsize),
    ))
}

/// `syncfs` of the file system holding the open file or directory `fd`:
/// one call that makes every file and directory written there durable.
pub fn syncfs(fd: impl AsFd) -> io::Result<()> {
    Ok(rustix::fs::syncfs(fd)?)
}

/// Waits for a file's writeback and reads its own writeback error state:
/// `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` over the whole file,
/// which reads and clears the file's errors just like fsync (after a
/// `syncfs`, which reports a file system's errors to one caller only).
pub fn wait_written(file: &File) -> io::Result<()> {
    let flags = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: a valid open descriptor and the whole-file range (0, 0); no
    // memory is passed to the kernel. (rustix has no sync_file_range.)
    if unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, flags) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// sha256 and size of a file, read in 1 MiB pieces.
pub fn hash_file(path: &Path) -> io::Result<([u8; 32], u64)> {
    let mut hasher = sha2::Sha256::new();
    let size = hash_reader(File::open(path)?, &mut hasher)?;
    Ok((hasher.finalize().into(), size))
}

/// Feeds everything `r` yields to `hasher`, read in 1 MiB pieces; the
/// number of bytes.
pub fn hash_reader(mut r: impl Read, hasher: &mut sha2::Sha256) -> io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok(size)
}

/// An exclusive advisory lock on a file, held for the life of the value.
/// One daemon per spool: two would pack and ship the same episodes.
pub struct LockFile {
    _file: File,
}

impl LockFile {
    /// Take the lock without waiting; `Ok(None)` when someone holds it.
    /// A symlink planted under the name is refused, not followed.
    pub fn try_lock(path: &Path) -> io::Result<Option<LockFile>> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(Some(LockFile { _file: file })),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_atomic_replaces_and_leaves_no_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn move_dir_replacing_overwrites_an_old_copy() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        fs::create_dir_all(a.join("x")).unwrap();
        fs::create_dir_all(b.join("old")).unwrap();
        move_dir_replacing(&a, &b).unwrap();
        assert!(b.join("x").exists() && !b.join("old").exists() && !a.exists());
        assert_eq!(fs::read_dir(d.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_file_is_hashed_and_its_writeback_read_and_file_system_synced() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("x");
        fs::write(&p, b"hello world").unwrap();
        let (digest, size) = hash_file(&p).unwrap();
        assert_eq!(size, 11);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        let f = File::open(&p).unwrap();
        wait_written(&f).unwrap();
        syncfs(&f).unwrap();
        assert_eq!(
            hash_file(&d.path().join("missing"))
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOENT)
        );
    }

    #[test]
    fn errno_is_classified_by_number() {
        assert!(is_out_of_space(libc::ENOSPC) && is_out_of_space(libc::EDQUOT));
        assert!(is_storage_unavailable(libc::EROFS));
        assert!(!is_storage_unavailable(libc::EIO));
        assert!(is_disk_full(&io::Error::from_raw_os_error(libc::ENOSPC)));
        assert!(!is_disk_full(&io::Error::from_raw_os_error(libc::EIO)));
        assert_eq!(
            errno_name(&io::Error::from_raw_os_error(117)),
            Some("EUCLEAN")
        );
    }
}
