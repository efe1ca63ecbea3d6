//! The write side of a pack: the compressed stream is hashed and written to
//! the `.partial` file on a thread of its own.
//!
//! The packing thread reads files, builds the tar stream and feeds zstd's
//! workers. When it also hashed and wrote the output, zstd's workers waited
//! for input while it did (on the bench corpus at level 3, sha256 alone was
//! 11 % of all CPU samples, all of them on the packing thread). Here it
//! copies the output into one of [`BUFFERS`] buffers of [`BUFFER`] bytes
//! and hands it over; memory stays bounded by those buffers.
//!
//! The first write error is kept, with its errno, in the shared slot the
//! pack reads to tell a write failure from a read failure. It reaches the
//! packing thread at its next hand-over (at most a few buffers later) or at
//! [`HashedOutput::finish`], which then fails; nothing waits on a stopped
//! thread.

use std::fs::File;
use std::io::{self, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use ferry_durable::{copy_error, WritebackFile};
use sha2::Digest;
use tokio_util::sync::CancellationToken;

/// Bytes handed over at a time.
const BUFFER: usize = 1 << 20;
/// Buffers in circulation (filling, queued, being written).
const BUFFERS: usize = 4;

/// The first write error of a pack, shared with the code that classifies
/// a failure as a read or a write error.
pub type ErrorSlot = Arc<Mutex<Option<io::Error>>>;

/// What the output thread gives back once everything is written.
struct Written {
    hasher: sha2::Sha256,
    file: WritebackFile,
}

/// A `Write` that hashes and writes on its own thread, counting bytes.
pub struct HashedOutput<'a> {
    cur: Vec<u8>,
    allocated: usize,
    tx: Option<SyncSender<Vec<u8>>>,
    free: Receiver<Vec<u8>>,
    thread: Option<JoinHandle<Option<Written>>>,
    error: ErrorSlot,
    /// Set when dropped unfinished: the thread writes nothing more.
    abandoned: Arc<AtomicBool>,
    written: u64,
    /// Compressed output counts as progress too: at a high zstd level the
    /// reads pause while a worker compresses a whole frame, its output
    /// still moves, so the watchdog sees work.
    progress: &'a AtomicU64,
    /// Checked on every write: at a high level the reads may pause for
    /// a long time, the output does not.
    cancel: &'a CancellationToken,
}

/// The finished output: its sha256, its length and the file, written (and
/// flushed in steps when large) but not yet synced.
#[derive(Debug)]
pub struct Finished {
    pub digest: [u8; 32],
    pub size: u64,
    pub file: WritebackFile,
}

impl<'a> HashedOutput<'a> {
    /// Starts the output thread for `file`, opened for writing at offset 0.
    pub fn new(
        file: File,
        error: ErrorSlot,
        progress: &'a AtomicU64,
        cancel: &'a CancellationToken,
    ) -> io::Result<HashedOutput<'a>> {
        let (tx, rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
        let (free_tx, free) = mpsc::channel::<Vec<u8>>();
        let slot = error.clone();
        let abandoned = Arc::new(AtomicBool::new(false));
        let stop = abandoned.clone();
        let thread = std::thread::Builder::new()
            .name("pack-output".into())
            .spawn(move || {
                // A panic here is still a write failure, not a read one.
                let _panic = PanicToSlot(slot.clone());
                let mut hasher = sha2::Sha256::new();
                // Writeback starts, and a large tarball is flushed in
                // steps, as it grows: the fsync at the end flushes its
                // last few megabytes only.
                let mut file = WritebackFile::new(file);
                for mut buf in rx {
                    if stop.load(Ordering::Relaxed) {
                        return None;
                    }
                    hasher.update(&buf);
                    if let Err(e) = file.write_all(&buf) {
                        keep(&slot, e);
                        return None;
                    }
                    buf.clear();
                    // The packing thread may be gone (an abandoned pack).
                    let _ = free_tx.send(buf);
                }
                Some(Written { hasher, file })
            })?;
        Ok(HashedOutput {
            cur: Vec::with_capacity(BUFFER),
            allocated: 1,
            tx: Some(tx),
            free,
            thread: Some(thread),
            error,
            abandoned,
            written: 0,
            progress,
            cancel,
        })
    }

    /// Hands the current buffer over and takes an empty one.
    fn hand_over(&mut self) -> io::Result<()> {
        let next = if self.allocated < BUFFERS {
            self.allocated += 1;
            Vec::with_capacity(BUFFER)
        } else {
            self.free.recv().map_err(|_| self.stopped())?
        };
        let full = std::mem::replace(&mut self.cur, next);
        self.send(full)
    }

    fn send(&mut self, buf: Vec<u8>) -> io::Result<()> {
        let tx = self.tx.as_ref().ok_or_else(|| self.stopped())?;
        tx.send(buf).map_err(|_| self.stopped())
    }

    /// The error to return once the output thread has stopped: a copy of
    /// the one it kept (the original stays in the slot).
    fn stopped(&self) -> io::Error {
        let slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        match slot.as_ref() {
            Some(e) => copy_error(e),
            None => io::Error::other("the pack's output thread stopped"),
        }
    }

    /// Writes what is left, waits for the output thread and gives back the
    /// digest, the size and the file (not yet synced).
    pub fn finish(mut self) -> io::Result<Finished> {
        if !self.cur.is_empty() {
            let last = std::mem::take(&mut self.cur);
            self.send(last)?;
        }
        self.tx = None;
        let thread = self.thread.take().expect("joined once");
        let written = match thread.join() {
            Ok(Some(w)) => w,
            Ok(None) => {
                let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
                return Err(slot
                    .take()
                    .unwrap_or_else(|| io::Error::other("the pack's output thread stopped")));
            }
            Err(_) => return Err(io::Error::other("the pack's output thread panicked")),
        };
        Ok(Finished {
            digest: written.hasher.finalize().into(),
            size: self.written,
            file: written.file,
        })
    }
}

impl Write for HashedOutput<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.is_cancelled() {
            return Err(io::Error::other("cancelled"));
        }
        let mut rest = buf;
        while !rest.is_empty() {
            let take = (BUFFER - self.cur.len()).min(rest.len());
            self.cur.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.cur.len() == BUFFER {
                self.hand_over()?;
            }
        }
        self.written += buf.len() as u64;
        self.progress.fetch_add(buf.len() as u64, Ordering::Relaxed);
        Ok(buf.len())
    }

    /// Nothing to do: what is handed over is written in order, and
    /// [`HashedOutput::finish`] writes the rest.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Dropped without [`HashedOutput::finish`] (a failed or cancelled pack):
/// the thread finishes the write it is in, if any, writes nothing more and
/// exits; nobody waits for it. The caller removes the partial file, so a
/// later pack of the same episode writes a new one.
impl Drop for HashedOutput<'_> {
    fn drop(&mut self) {
        // After `finish` the thread has exited already; this is a no-op.
        self.abandoned.store(true, Ordering::Relaxed);
        self.tx = None;
    }
}

/// Puts an error in the slot if the output thread panics, so that the pack
/// reports a write failure (an empty slot would read as the input's fault).
struct PanicToSlot(ErrorSlot);

impl Drop for PanicToSlot {
    fn drop(&mut self) {
        if std::thread::panicking() {
            keep(
                &self.0,
                io::Error::other("the pack's output thread panicked"),
            );
        }
    }
}

fn keep(slot: &ErrorSlot, e: io::Error) {
    let mut slot = slot.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        *slot = Some(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_to(path: &std::path::Path) -> (ErrorSlot, AtomicU64, CancellationToken, File) {
        let file = File::create(path).unwrap();
        (
            Arc::default(),
            AtomicU64::new(0),
            CancellationToken::new(),
            file,
        )
    }

    #[test]
    fn hashes_counts_and_writes_everything_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let (slot, progress, cancel, file) = output_to(&path);
        let mut out = HashedOutput::new(file, slot, &progress, &cancel).unwrap();
        // Writes of awkward sizes across many buffer boundaries.
        let data: Vec<u8> = (0..(BUFFER * BUFFERS * 3 + 12345))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        for chunk in data.chunks(BUFFER / 3 + 17) {
            out.write_all(chunk).unwrap();
        }
        let done = out.finish().unwrap();
        assert_eq!(done.size, data.len() as u64);
        assert_eq!(progress.load(Ordering::Relaxed), data.len() as u64);
        let want: [u8; 32] = sha2::Sha256::digest(&data).into();
        assert_eq!(done.digest, want);
        drop(done.file);
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    #[test]
    fn a_write_error_keeps_its_errno_and_fails_later_hand_overs_and_finish() {
        // /dev/full fails every write with ENOSPC.
        let (slot, progress, cancel, file) = output_to(std::path::Path::new("/dev/full"));
        let mut out = HashedOutput::new(file, slot, &progress, &cancel).unwrap();
        let chunk = vec![1u8; BUFFER];
        let mut failed = None;
        for _ in 0..(BUFFERS * 4) {
            if let Err(e) = out.write_all(&chunk) {
                failed = Some(e);
                break;
            }
        }
        let e = failed.expect("a write must fail once the thread has stopped");
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
        assert_eq!(
            out.write(&chunk).unwrap_err().raw_os_error(),
            Some(libc::ENOSPC)
        );
        let e = out.finish().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn a_write_error_in_the_last_buffer_fails_finish() {
        let (slot, progress, cancel, file) = output_to(std::path::Path::new("/dev/full"));
        let mut out = HashedOutput::new(file, slot, &progress, &cancel).unwrap();
        out.write_all(b"small").unwrap();
        let e = out.finish().unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOSPC));
    }

    #[test]
    fn dropped_unfinished_it_writes_nothing_more() {
        use std::io::Read;
        // A FIFO nobody reads yet: the thread blocks in its first write.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &path,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
            0,
        )
        .unwrap();
        let (go, wait) = mpsc::channel::<()>();
        let reader = {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut r = File::open(path).unwrap();
                wait.recv().unwrap();
                let mut all = Vec::new();
                r.read_to_end(&mut all).unwrap();
                all.len()
            })
        };
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        let (slot, progress, cancel) = (
            ErrorSlot::default(),
            AtomicU64::new(0),
            CancellationToken::new(),
        );
        let mut out = HashedOutput::new(file, slot, &progress, &cancel).unwrap();
        // Three buffers handed over (no free one is waited for).
        for _ in 0..3 {
            out.write_all(&vec![7u8; BUFFER]).unwrap();
        }
        drop(out);
        go.send(()).unwrap();
        // The write in progress, if the thread had begun one, completes;
        // the queued buffers are not written, and the thread closes the
        // file on its way out.
        let n = reader.join().unwrap();
        assert!(n == 0 || n == BUFFER, "{n} bytes written after the drop");
    }

    #[test]
    fn a_cancelled_pack_fails_its_next_write() {
        let dir = tempfile::tempdir().unwrap();
        let (slot, progress, cancel, file) = output_to(&dir.path().join("out"));
        let mut out = HashedOutput::new(file, slot, &progress, &cancel).unwrap();
        out.write_all(b"before").unwrap();
        cancel.cancel();
        assert!(out.write(b"after").is_err());
    }
}
