//! Files in directories another party can write to (the agent's spool,
//! where producers write episodes): nothing here follows a symlink in a
//! name it was given, blocks opening a FIFO, reads without a bound, or
//! creates a file under a name someone could have planted.
//!
//! A [`Dir`] is a directory descriptor; names below it are resolved one
//! component at a time relative to it (`openat` and friends) with
//! `O_NOFOLLOW`, so swapping a directory for a symlink between two calls
//! cannot redirect a later one. Files are opened `O_NOFOLLOW|O_NONBLOCK`
//! and `fstat`ed: only a regular file is handed back, with the
//! [`Snapshot`] that lets the caller check it is the one it looked at.
//! New files are made `O_CREAT|O_EXCL|O_NOFOLLOW` under a random name and
//! renamed into place.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, CWD};

/// What kind of object a name refers to (not following a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
    Unknown,
}

impl Kind {
    fn of(ft: FileType) -> Kind {
        match ft {
            FileType::RegularFile => Kind::File,
            FileType::Directory => Kind::Dir,
            FileType::Symlink => Kind::Symlink,
            FileType::Fifo => Kind::Fifo,
            FileType::Socket => Kind::Socket,
            FileType::CharacterDevice => Kind::CharDevice,
            FileType::BlockDevice => Kind::BlockDevice,
            _ => Kind::Unknown,
        }
    }

    /// Human name: "a FIFO", "a symlink", ….
    pub fn name(self) -> &'static str {
        match self {
            Kind::File => "a regular file",
            Kind::Dir => "a directory",
            Kind::Symlink => "a symlink",
            Kind::Fifo => "a FIFO",
            Kind::Socket => "a socket",
            Kind::CharDevice => "a character device",
            Kind::BlockDevice => "a block device",
            Kind::Unknown => "of an unknown type",
        }
    }
}

/// A file's identity and what changes with its content: enough to tell
/// that an open file is the one looked at, and that it did not change
/// while it was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Snapshot {
    pub dev: u64,
    pub ino: u64,
    pub kind: Kind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    pub size: u64,
    pub nlink: u64,
    pub uid: u32,
    /// Seconds and nanoseconds.
    pub mtime: (i64, u32),
    pub ctime: (i64, u32),
}

impl Snapshot {
    #[allow(clippy::unnecessary_cast)] // field types differ between targets
    fn of(st: &rfs::Stat) -> Snapshot {
        Snapshot {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            kind: Kind::of(FileType::from_raw_mode(st.st_mode as rfs::RawMode)),
            mode: st.st_mode as u32 & 0o7777,
            size: st.st_size.max(0) as u64,
            nlink: st.st_nlink as u64,
            uid: st.st_uid as u32,
            mtime: (st.st_mtime as i64, st.st_mtime_nsec as u32),
            ctime: (st.st_ctime as i64, st.st_ctime_nsec as u32),
        }
    }

    /// The same object (device, inode, type).
    pub fn same_object(&self, other: &Snapshot) -> bool {
        (self.dev, self.ino, self.kind) == (other.dev, other.ino, other.kind)
    }

    /// The same object, and nothing says its content changed (size, mtime,
    /// ctime; ctime also moves on a rename, link or chmod).
    pub fn unchanged(&self, other: &Snapshot) -> bool {
        self.same_object(other)
            && (self.size, self.mtime, self.ctime) == (other.size, other.mtime, other.ctime)
    }
}

/// A name that should be a regular file is something else. Carried inside
/// an `io::Error` (see [`not_regular`]) so callers decide by type.
#[derive(Debug)]
pub struct NotRegular(pub Kind);

impl fmt::Display for NotRegular {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "is {}, not a regular file (not opened)", self.0.name())
    }
}

impl std::error::Error for NotRegular {}

/// A file larger than its reader accepts. Carried like [`NotRegular`].
#[derive(Debug)]
pub struct TooLarge {
    pub cap: u64,
}

impl fmt::Display for TooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "larger than {} bytes (not read)", self.cap)
    }
}

impl std::error::Error for TooLarge {}

/// The kind found where a regular file was expected: a [`NotRegular`]
/// error, or `ELOOP` from `O_NOFOLLOW` (a symlink).
pub fn not_regular(e: &io::Error) -> Option<Kind> {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return Some(Kind::Symlink);
    }
    e.get_ref()
        .and_then(|i| i.downcast_ref::<NotRegular>())
        .map(|n| n.0)
}

/// The error is a [`TooLarge`].
pub fn is_too_large(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|i| i.is::<TooLarge>())
}

fn name_arg(name: &OsStr) -> io::Result<&OsStr> {
    let b = name.as_bytes();
    if b.is_empty() || b.contains(&b'/') || b == b"." || b == b".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not one path component"),
        ));
    }
    Ok(name)
}

const READ_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::NOFOLLOW)
    .union(OFlags::NONBLOCK)
    .union(OFlags::NOCTTY)
    .union(OFlags::CLOEXEC);
const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// `fstat` the descriptor and hand it back as a `File` only if it is a
/// regular file.
fn regular(fd: OwnedFd) -> io::Result<(File, Snapshot)> {
    let snap = Snapshot::of(&rfs::fstat(&fd)?);
    if snap.kind != Kind::File {
        return Err(io::Error::other(NotRegular(snap.kind)));
    }
    Ok((File::from(fd), snap))
}

/// The snapshot of an open file (`fstat`).
pub fn snapshot(file: &impl AsFd) -> io::Result<Snapshot> {
    Ok(Snapshot::of(&rfs::fstat(file)?))
}

/// Open the regular file at `path` for reading without following a
/// symlink in its last component and without blocking (a FIFO is refused
/// after an open that does not wait for a writer). The directories above
/// it are trusted (the operator's).
pub fn open_regular(path: &Path) -> io::Result<(File, Snapshot)> {
    regular(rfs::openat(CWD, path, READ_FLAGS, Mode::empty())?)
}

/// Read all of `file`, refusing (with a [`TooLarge`] error) one longer
/// than `cap` bytes whatever its size says (a sparse file or a
/// character device says little).
pub fn read_capped(file: &mut File, cap: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut out)?;
    if out.len() as u64 > cap {
        return Err(io::Error::other(TooLarge { cap }));
    }
    Ok(out)
}

/// [`open_regular`] then [`read_capped`].
pub fn read_regular(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let (mut f, snap) = open_regular(path)?;
    if snap.size > cap {
        return Err(io::Error::other(TooLarge { cap }));
    }
    read_capped(&mut f, cap)
}

/// A random hex name part, so that nobody can plant a file under a
/// temporary name before it is made.
pub fn random_suffix() -> String {
    let mut b = [0u8; 8];
    if rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty()).is_err() {
        // getrandom does not fail on Linux ≥ 3.17 once the pool is ready;
        // the name is still checked O_EXCL, so a guessable one is only
        // an extra attempt for whoever guesses.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ u64::from(std::process::id()).rotate_left(40)).to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// An open directory; every name below it is one component resolved
/// relative to it without following symlinks.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
}

impl Dir {
    /// Open a directory the operator named (symlinks in it followed).
    pub fn open(path: &Path) -> io::Result<Dir> {
        let flags = DIR_FLAGS.difference(OFlags::NOFOLLOW);
        Ok(Dir {
            fd: rfs::openat(CWD, path, flags, Mode::empty())?,
        })
    }

    /// Open a directory whose last component may have been planted: a
    /// symlink there is refused (`ELOOP`/`ENOTDIR`).
    pub fn open_nofollow(path: &Path) -> io::Result<Dir> {
        Ok(Dir {
            fd: rfs::openat(CWD, path, DIR_FLAGS, Mode::empty())?,
        })
    }

    /// The directory `name` below this one, not following a symlink.
    pub fn open_dir(&self, name: &OsStr) -> io::Result<Dir> {
        Ok(Dir {
            fd: rfs::openat(&self.fd, name_arg(name)?, DIR_FLAGS, Mode::empty())?,
        })
    }

    /// This directory's own snapshot.
    pub fn snapshot(&self) -> io::Result<Snapshot> {
        Ok(Snapshot::of(&rfs::fstat(&self.fd)?))
    }

    /// What `name` is, not following a symlink.
    pub fn snapshot_at(&self, name: &OsStr) -> io::Result<Snapshot> {
        let st = rfs::statat(&self.fd, name_arg(name)?, AtFlags::SYMLINK_NOFOLLOW)?;
        Ok(Snapshot::of(&st))
    }

    /// The names in this directory (without `.` and `..`), in the order
    /// the file system returns them.
    pub fn names(&self) -> io::Result<Vec<OsString>> {
        let mut out = Vec::new();
        for e in rfs::Dir::read_from(&self.fd)? {
            let name = e?.file_name().to_bytes().to_vec();
            if name != b"." && name != b".." {
                out.push(OsString::from_vec(name));
            }
        }
        Ok(out)
    }

    /// Open the regular file `name` for reading: `O_NOFOLLOW|O_NONBLOCK`,
    /// then `fstat`; anything but a regular file is a [`NotRegular`]
    /// error (`ELOOP` for a symlink).
    pub fn open_file(&self, name: &OsStr) -> io::Result<(File, Snapshot)> {
        regular(rfs::openat(
            &self.fd,
            name_arg(name)?,
            READ_FLAGS,
            Mode::empty(),
        )?)
    }

    /// The target of the symlink `name`.
    pub fn read_link(&self, name: &OsStr) -> io::Result<OsString> {
        let t = rfs::readlinkat(&self.fd, name_arg(name)?, Vec::new())?;
        Ok(OsString::from_vec(t.into_bytes()))
    }

    /// Create `name` for reading and writing, `O_EXCL|O_NOFOLLOW`: fails
    /// with `EEXIST` whatever is there, a symlink included.
    pub fn create_new(&self, name: &OsStr, mode: u32) -> io::Result<File> {
        let flags = OFlags::RDWR
            | OFlags::CREATE
            | OFlags::EXCL
            | OFlags::NOFOLLOW
            | OFlags::NOCTTY
            | OFlags::CLOEXEC;
        let fd = rfs::openat(&self.fd, name_arg(name)?, flags, Mode::from_raw_mode(mode))?;
        Ok(File::from(fd))
    }

    /// Create a new file named `<prefix><random>` (see [`Dir::create_new`]),
    /// trying another name if one exists already.
    pub fn create_temp(&self, prefix: &str, mode: u32) -> io::Result<(File, OsString)> {
        let mut tries = 0;
        loop {
            let name = OsString::from(format!("{prefix}{}", random_suffix()));
            match self.create_new(&name, mode) {
                Ok(f) => return Ok((f, name)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && tries < 16 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Rename `from` to `to`, both in this directory (a symlink at `to` is
    /// replaced, never followed).
    pub fn rename(&self, from: &OsStr, to: &OsStr) -> io::Result<()> {
        Ok(rfs::renameat(
            &self.fd,
            name_arg(from)?,
            &self.fd,
            name_arg(to)?,
        )?)
    }

    /// Unlink the non-directory `name` (a symlink itself, not its target).
    pub fn remove_file(&self, name: &OsStr) -> io::Result<()> {
        Ok(rfs::unlinkat(&self.fd, name_arg(name)?, AtFlags::empty())?)
    }

    /// fsync the directory, so that renames and unlinks in it are durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rfs::fsync(&self.fd)?)
    }

    /// Replace `name` with `bytes`, crash-safely: a new file under a random
    /// temporary name (`.<name>.tmp-<random>`), write, fsync, rename over
    /// `name`, fsync this directory. On failure the temporary file is
    /// removed.
    pub fn replace(&self, name: &OsStr, bytes: &[u8]) -> io::Result<()> {
        let prefix = format!(".{}.tmp-", name_arg(name)?.to_string_lossy());
        let (mut f, tmp) = self.create_temp(&prefix, 0o644)?;
        let result = (|| {
            f.write_all(bytes)?;
            f.sync_all()?;
            self.rename(&tmp, name)?;
            self.sync()
        })();
        if result.is_err() {
            let _ = self.remove_file(&tmp);
        }
        result
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn replace_never_writes_through_a_planted_symlink() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        let dir = Dir::open(d.path()).unwrap();
        symlink(&victim, d.path().join("state.json")).unwrap();
        // Whatever temporary name an older version would have used.
        symlink(&victim, d.path().join(".state.json.tmp-1")).unwrap();
        dir.replace(OsStr::new("state.json"), b"new").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(d.path().join("state.json")).unwrap(), b"new");
        let e = dir.create_new(OsStr::new(".state.json.tmp-1"), 0o600);
        assert_eq!(e.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
    }

    #[test]
    fn fifos_symlinks_and_huge_files_are_refused_without_blocking() {
        let d = tempfile::tempdir().unwrap();
        let dir = Dir::open(d.path()).unwrap();
        rfs::mknodat(&dir, "fifo", FileType::Fifo, Mode::RUSR | Mode::WUSR, 0).unwrap();
        let e = open_regular(&d.path().join("fifo")).unwrap_err();
        assert_eq!(not_regular(&e), Some(Kind::Fifo), "{e}");
        symlink("/dev/zero", d.path().join("zero")).unwrap();
        let e = read_regular(&d.path().join("zero"), 10).unwrap_err();
        assert_eq!(not_regular(&e), Some(Kind::Symlink), "{e}");
        let f = File::create(d.path().join("sparse")).unwrap();
        f.set_len(1 << 30).unwrap();
        let e = read_regular(&d.path().join("sparse"), 1 << 20).unwrap_err();
        assert!(is_too_large(&e), "{e}");
        let mut z = File::open("/dev/zero").unwrap();
        assert!(is_too_large(&read_capped(&mut z, 4096).unwrap_err()));
        std::fs::write(d.path().join("ok"), "x").unwrap();
        assert_eq!(read_regular(&d.path().join("ok"), 1).unwrap(), b"x");
    }

    #[test]
    fn names_resolve_one_component_without_following() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir(d.path().join("real")).unwrap();
        std::fs::write(d.path().join("real/f"), "x").unwrap();
        symlink(d.path().join("real"), d.path().join("link")).unwrap();
        let dir = Dir::open(d.path()).unwrap();
        assert!(dir.open_dir(OsStr::new("link")).is_err());
        assert!(Dir::open_nofollow(&d.path().join("link")).is_err());
        assert!(dir.open_dir(OsStr::new("real/f")).is_err(), "one component");
        let real = dir.open_dir(OsStr::new("real")).unwrap();
        assert_eq!(real.names().unwrap(), [OsString::from("f")]);
        let (_, s) = real.open_file(OsStr::new("f")).unwrap();
        assert!(s.unchanged(&real.snapshot_at(OsStr::new("f")).unwrap()));
        assert_eq!(
            dir.snapshot_at(OsStr::new("link")).unwrap().kind,
            Kind::Symlink
        );
    }
}
