//! File writing shared by the agent (tarballs in the outbox) and the
//! receiver (uploads in `tmp/`): both write one large file front to back and
//! then fsync it before anything depends on it.
//!
//! [`WritebackFile`] starts the kernel's writeback of what has been written
//! every [`WritebackFile::EVERY`] bytes, so the disk works while the file is
//! still being produced. Writeback alone is not enough where the disk has a
//! volatile write cache: the final fsync also flushes that cache, and a
//! flush takes as long as the data the device holds unflushed, however
//! early the writeback had started (docs/PERFORMANCE.md has the figures).
//! So from [`WritebackFile::FLUSH_EVERY`] bytes on, a thread of the file's
//! own also `fdatasync`s it every that many bytes while the writes go on,
//! and the final fsync flushes only the tail.
//!
//! [`fsio`] holds the crash-safe moves and errno classification, [`safe`]
//! the descriptor-relative, non-following file access for directories
//! another party can write to.

pub mod fsio;
pub mod process;
pub mod safe;

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// A file written front to back whose writeback starts early, and whose
/// data is flushed in steps while it is written.
///
/// `sync_file_range(SYNC_FILE_RANGE_WRITE)` only starts I/O on dirty pages;
/// durability is still the final [`WritebackFile::sync_all`]. That flag
/// does not consume a writeback error (only the WAIT flags advance the
/// file's error cursor), so a page that fails to write is still reported by
/// the fsync. An error the call returns itself fails the write, so it is
/// never lost; a file system that does not support the call (`EINVAL`,
/// `ENOSYS`, `EOPNOTSUPP`, `ESPIPE`) just does without, and without the
/// flushes too.
///
/// The flushes in steps run on a thread of their own (started at the
/// first [`WritebackFile::FLUSH_EVERY`] bytes, so a small file never has
/// one) on a duplicate of the descriptor. A duplicate shares the open
/// file's error cursor: an `fdatasync` there consumes a writeback error
/// the final fsync would then not see. So the flusher keeps its first
/// error; every later write, [`WritebackFile::sync_all`] and
/// [`WritebackFile::into_inner`] return it.
#[derive(Debug)]
pub struct WritebackFile {
    file: File,
    written: u64,
    started: u64,
    unsupported: bool,
    /// Bytes written when the last flush was asked for.
    flushed: u64,
    flush_every: u64,
    flusher: Flusher,
}

impl WritebackFile {
    /// Writeback is started over every this many new bytes.
    pub const EVERY: u64 = 8 << 20;

    /// A flush (`fdatasync`, on the flusher thread) is asked for every this
    /// many bytes. 16 and 32 MiB shortened the final fsync equally
    /// (docs/PERFORMANCE.md); 32 MiB costs fewer flushes on a device where
    /// each has a price.
    pub const FLUSH_EVERY: u64 = 32 << 20;

    /// Wraps a file opened for writing at offset 0.
    pub fn new(file: File) -> Self {
        Self {
            file,
            written: 0,
            started: 0,
            unsupported: false,
            flushed: 0,
            flush_every: Self::FLUSH_EVERY,
            flusher: Flusher::NotYet,
        }
    }

    /// The file, to read its state. Not to sync it: its fsync would not
    /// see an error the flusher consumed; [`WritebackFile::sync_all`] does.
    pub fn get_ref(&self) -> &File {
        &self.file
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Flushes done in steps so far.
    pub fn flushes(&self) -> u64 {
        match &self.flusher {
            Flusher::Running { done, .. } => done.load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Makes the file durable: waits for the flusher, returns the error it
    /// kept if any, then fsyncs (which flushes only what came after the
    /// last step).
    pub fn sync_all(&mut self) -> io::Result<()> {
        self.flusher.stop()?;
        self.file.sync_all()
    }

    /// The file, once the flusher has stopped; its kept error instead, if
    /// it had one (the final fsync could no longer see it).
    pub fn into_inner(mut self) -> io::Result<File> {
        self.flusher.stop()?;
        Ok(self.file)
    }

    /// Starts writeback of everything written and not yet started, however
    /// little: for a file that is complete and will be synced later.
    pub fn start_rest(&mut self) -> io::Result<()> {
        if self.written > self.started {
            self.start()?;
        }
        Ok(())
    }

    /// Before a write: fails with the flusher's error if it has one, and
    /// starts writeback of `[started, written)` when it is large enough.
    fn kick(&mut self) -> io::Result<()> {
        self.flusher.check()?;
        if self.written - self.started < Self::EVERY {
            return Ok(());
        }
        self.start()
    }

    /// After a write: asks for a flush every `flush_every` bytes.
    fn step(&mut self) {
        if self.unsupported || self.written - self.flushed < self.flush_every {
            return;
        }
        self.flushed = self.written;
        self.flusher.request(&self.file);
    }

    fn start(&mut self) -> io::Result<()> {
        if self.unsupported {
            return Ok(());
        }
        let (offset, len) = (self.started as i64, (self.written - self.started) as i64);
        // SAFETY: a valid open descriptor and a plain byte range; no memory
        // is passed to the kernel.
        let rc = unsafe {
            libc::sync_file_range(
                self.file.as_raw_fd(),
                offset,
                len,
                libc::SYNC_FILE_RANGE_WRITE,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP | libc::ESPIPE) => {
                    self.unsupported = true;
                }
                _ => return Err(e),
            }
        }
        self.started = self.written;
        Ok(())
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Kick before writing, so that an error is returned with nothing of
        // `buf` written.
        self.kick()?;
        let n = self.file.write(buf)?;
        self.written += n as u64;
        self.step();
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        self.kick()?;
        let n = self.file.write_vectored(bufs)?;
        self.written += n as u64;
        self.step();
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The flusher's first error, kept until the file is synced or given back.
type Kept = Arc<Mutex<Option<io::Error>>>;

/// The thread that `fdatasync`s a [`WritebackFile`] in steps.
#[derive(Debug)]
enum Flusher {
    /// No flush asked for yet.
    NotYet,
    /// Running. A request is a message in a channel of one: asked for again
    /// while one waits, the two are one flush. Dropped (a file abandoned
    /// mid-write), it stops after the flush it is in, if any, and nobody
    /// waits for it.
    Running {
        /// Set by a stop, and when dropped, before `tx` goes (fields drop
        /// in order): a request still queued is then not flushed.
        stopping: StopOnDrop,
        tx: SyncSender<()>,
        thread: JoinHandle<()>,
        kept: Kept,
        /// Flushes done.
        done: Arc<AtomicU64>,
    },
    /// A flush failed: every later write and sync fails with this.
    Failed(io::Error),
    /// Stopped, or never started: no thread could be, or the descriptor
    /// could not be duplicated. The final fsync still makes the file
    /// durable; it just flushes more.
    Off,
}

/// Tells the flusher thread to stop, at the latest when dropped.
#[derive(Debug)]
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Flusher {
    fn request(&mut self, file: &File) {
        if let Flusher::NotYet = self {
            *self = Flusher::start(file).unwrap_or(Flusher::Off);
        }
        if let Flusher::Running { tx, .. } = self {
            // Full: a flush is queued already and covers this one.
            // Disconnected: the thread stopped on an error, kept for `check`.
            let _ = tx.try_send(());
        }
    }

    /// The flusher of a regular file; none for anything else (a pipe, a
    /// device), which `fdatasync` cannot flush.
    fn start(file: &File) -> io::Result<Flusher> {
        if !file.metadata()?.is_file() {
            return Ok(Flusher::Off);
        }
        let dup = file.try_clone()?;
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        let kept: Kept = Arc::default();
        let stopping = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (slot, stop, count) = (kept.clone(), stopping.clone(), done.clone());
        let thread = std::thread::Builder::new()
            .name("file-flush".into())
            .spawn(move || {
                for () in rx {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    if let Err(e) = dup.sync_data() {
                        *slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        return;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })?;
        Ok(Flusher::Running {
            stopping: StopOnDrop(stopping),
            tx,
            thread,
            kept,
            done,
        })
    }

    /// A copy of the flusher's error, if it has one.
    fn check(&self) -> io::Result<()> {
        match self {
            Flusher::Running { kept, .. } => {
                match kept.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                    Some(e) => Err(copy_error(e)),
                    None => Ok(()),
                }
            }
            Flusher::Failed(e) => Err(copy_error(e)),
            Flusher::NotYet | Flusher::Off => Ok(()),
        }
    }

    /// Stops the thread after the flush it is in, and returns its error
    /// (kept: asked again, the answer is the same).
    fn stop(&mut self) -> io::Result<()> {
        let (stopping, tx, thread, kept) = match std::mem::replace(self, Flusher::Off) {
            Flusher::Running {
                stopping,
                tx,
                thread,
                kept,
                ..
            } => (stopping, tx, thread, kept),
            other => {
                *self = other;
                return self.check();
            }
        };
        drop(stopping);
        drop(tx);
        let failed = match thread.join() {
            Err(_) => Some(io::Error::other("the file's flusher thread panicked")),
            Ok(()) => kept.lock().unwrap_or_else(|p| p.into_inner()).take(),
        };
        if let Some(e) = failed {
            *self = Flusher::Failed(e);
        }
        self.check()
    }
}

/// The same error again, for a second reader of one failure: by errno when
/// it has one (`io::Error` is not `Clone`).
pub fn copy_error(e: &io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(n) => io::Error::from_raw_os_error(n),
        None => io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::io::Read;

    #[test]
    fn writes_through_and_starts_writeback_in_steps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = WritebackFile::new(File::create(&path).unwrap());
        let block = vec![0x5au8; 1 << 20];
        for _ in 0..20 {
            w.write_all(&block).unwrap();
        }
        assert_eq!(w.written(), 20 << 20);
        // Kicked at 8 MiB and 16 MiB (before the 9th and 17th block).
        assert_eq!(w.started, 16 << 20);
        w.write_all(b"tail").unwrap();
        w.start_rest().unwrap();
        assert_eq!(w.started, (20 << 20) + 4);
        assert!(
            !w.unsupported,
            "a regular file on the test's file system supports it"
        );
        w.sync_all().unwrap();
        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), (20 << 20) + 4);
        assert!(back[..20 << 20].iter().all(|&b| b == 0x5a));
    }

    #[test]
    fn a_pipe_does_without() {
        let (r, w) = pipe();
        let reader = std::thread::spawn(move || {
            let mut r = r;
            let mut n = 0u64;
            let mut buf = vec![0u8; 1 << 16];
            loop {
                match r.read(&mut buf).unwrap() {
                    0 => return n,
                    k => n += k as u64,
                }
            }
        });
        let mut w = WritebackFile::new(w);
        w.flush_every = 1 << 20;
        let block = vec![1u8; 1 << 20];
        for _ in 0..10 {
            w.write_all(&block).unwrap();
        }
        assert!(w.unsupported, "sync_file_range on a pipe is ESPIPE");
        assert!(matches!(w.flusher, Flusher::Off), "nor flushes");
        drop(w);
        assert_eq!(reader.join().unwrap(), 10 << 20);
    }

    #[test]
    fn flushes_in_steps_on_its_own_thread_then_syncs_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut w = WritebackFile::new(File::create(&path).unwrap());
        w.flush_every = 1 << 20;
        let block = vec![0xa5u8; 256 << 10];
        for _ in 0..3 {
            w.write_all(&block).unwrap();
        }
        assert!(
            matches!(w.flusher, Flusher::NotYet),
            "no thread below the first step"
        );
        for _ in 0..13 {
            w.write_all(&block).unwrap();
        }
        assert!(matches!(w.flusher, Flusher::Running { .. }));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while w.flushes() == 0 {
            assert!(std::time::Instant::now() < deadline, "no flush in 10 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        w.sync_all().unwrap();
        assert!(matches!(w.flusher, Flusher::Off), "stopped by the sync");
        let file = w.into_inner().unwrap();
        drop(file);
        assert_eq!(std::fs::read(&path).unwrap(), block.repeat(16));
    }

    /// A step that fails after the last write (the error is in the
    /// flusher's slot when the writer is done) still fails the sync and
    /// `into_inner`: the final fsync of a regular file would succeed, as
    /// the flush consumed the kernel's error. The error is put in the slot
    /// by hand, as the flusher thread would.
    #[test]
    fn a_step_failed_after_the_last_write_fails_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut w = WritebackFile::new(File::create(dir.path().join("f")).unwrap());
        w.write_all(b"all of it").unwrap();
        w.flusher = Flusher::start(w.get_ref()).unwrap();
        let Flusher::Running { kept, .. } = &w.flusher else {
            panic!("a regular file has a flusher");
        };
        *kept.lock().unwrap() = Some(io::Error::from_raw_os_error(libc::EIO));
        for _ in 0..2 {
            let e = w.sync_all().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
        }
        let e = w.into_inner().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    }

    /// The flusher's error fails the next write, the sync and
    /// `into_inner`, every time asked. A real one: `/proc/self/comm` is a
    /// regular file that `fdatasync` cannot flush (EINVAL); it is opened
    /// for writing and never written. (Its own fsync fails too, so the
    /// sync's part is shown by the test above.)
    #[test]
    fn a_failed_flush_fails_every_later_write_and_sync() {
        let w = OpenOptions::new()
            .write(true)
            .open("/proc/self/comm")
            .unwrap();
        let mut f = WritebackFile::new(w);
        f.flusher = Flusher::start(f.get_ref()).unwrap();
        assert!(matches!(f.flusher, Flusher::Running { .. }));
        f.flusher.request(&f.file);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while f.flusher.check().is_ok() {
            assert!(std::time::Instant::now() < deadline, "no flush in 10 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let e = f.write(b"x").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        for _ in 0..2 {
            let e = f.sync_all().unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
        }
        let e = f.into_inner().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}");
    }

    /// A pipe's read and write ends.
    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` is a writable array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: both descriptors were just created and are owned here.
        unsafe {
            use std::os::fd::FromRawFd;
            (File::from_raw_fd(fds[0]), File::from_raw_fd(fds[1]))
        }
    }
}
