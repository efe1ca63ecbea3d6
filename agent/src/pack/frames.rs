//! The zstd side of packing: one stream of concatenated zstd frames, where
//! bytes that do not compress are not given the configured level's effort.
//!
//! At a high level (`zstd -19`) zstd spends as long failing to shrink
//! random bytes (camera frames, already-compressed blobs) as it spends on
//! text. Above [`ADAPTIVE_FROM_LEVEL`], a file whose sampled bytes do not
//! compress is written in a frame of its own at level 1, which costs
//! almost nothing, and the next compressible entry starts a new frame at
//! the configured level. Concatenated frames are one valid zstd stream
//! (`zstd -d` and every decoder read them as one).
//!
//! At those levels the frames are also compressed in parallel: a frame
//! ends at every class switch and after [`FRAME_MAX`] bytes, each frame is
//! compressed on its own (single-threaded, its size known up front) by a
//! pool of worker threads, and the frames are written in order. zstd's own
//! multi-threading splits one frame into jobs, so it cannot spread the
//! short dense runs between incompressible files over the cores: with
//! text and camera files interleaved, every text run was one job on one
//! core.
//!
//! Determinism: the choice depends only on the file's own bytes (a level-1
//! trial compression of fixed samples with the zstd built into this
//! binary) and on fixed parameters, and frame boundaries only on classes
//! and byte counts, so the same episode gives the same frames on every run
//! and machine, whatever the number of workers.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::sync::{mpsc, Arc, Mutex};

use zstd::stream::raw::{self, CParameter, InBuffer, Operation, OutBuffer};

/// Levels from which incompressible files get frames of their own. Below
/// it zstd gives up on random bytes quickly and a frame switch (a sync
/// point for the worker threads) would cost more than it saves.
pub const ADAPTIVE_FROM_LEVEL: i32 = 8;
/// Files smaller than this are never sampled: they are compressed at the
/// configured level (a frame switch for a few KiB is not worth it).
pub const SAMPLE_FROM_SIZE: u64 = 16 << 10;
/// Bytes per sample; two samples (start and middle), or the whole file
/// when it is smaller.
const SAMPLE: usize = 32 << 10;
/// zstd job size of compressible frames.
const JOB_SIZE: u32 = 2 << 20;
/// At adaptive levels, the most input bytes in one frame. Each frame is
/// compressed with its size known, so zstd sizes its window and match
/// tables to it: at level 19, a 1 MiB window instead of 8 MiB, which on the
/// bench corpus's text halves the time per byte for 3.8 % more output on
/// that text (0.6 % on the whole episode), keeps a level-19 context near
/// 16 MiB, and lets a dense run of a few MiB keep every worker busy.
pub const FRAME_MAX: usize = 1 << 20;
/// A sample that level 1 shrinks by less than this fraction does not
/// compress.
const MIN_SAVING: f64 = 0.03;

/// How the bytes of one entry are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The configured level.
    Dense,
    /// Level 1, single-threaded: zstd stores such blocks raw.
    Incompressible,
}

/// Sample `file` (of `size` bytes) and say which class its bytes are.
/// Reads with `pread`, so the file's position is untouched.
pub fn classify(file: &File, size: u64) -> io::Result<Class> {
    if size < SAMPLE_FROM_SIZE {
        return Ok(Class::Dense);
    }
    let mut buf = vec![0u8; SAMPLE];
    let mut raw = 0usize;
    let mut packed = 0usize;
    let offsets: &[u64] = if size <= 2 * SAMPLE as u64 {
        &[0, SAMPLE as u64]
    } else {
        &[0, size / 2]
    };
    for &offset in offsets {
        let n = read_full_at(file, &mut buf, offset)?;
        raw += n;
        packed += zstd::bulk::compress(&buf[..n], 1)?.len();
    }
    if raw == 0 || (packed as f64) < raw as f64 * (1.0 - MIN_SAVING) {
        Ok(Class::Dense)
    } else {
        Ok(Class::Incompressible)
    }
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Fixed zstd parameters of one pack.
#[derive(Debug, Clone, Copy)]
pub struct Params {
    pub level: i32,
    /// Worker threads for dense frames, at least 1 (multi-threaded output
    /// does not depend on the count, but differs from single-threaded).
    pub workers: u32,
}

impl Params {
    pub fn adaptive(&self) -> bool {
        self.level >= ADAPTIVE_FROM_LEVEL
    }
}

/// The one multi-threaded context of a pack below the adaptive levels.
fn stream_context(p: Params) -> io::Result<raw::Encoder<'static>> {
    let mut enc = raw::Encoder::new(p.level)?;
    enc.set_parameter(CParameter::NbWorkers(p.workers.max(1)))?;
    // A fixed job size (part of the output, like the level): the default,
    // 4 windows, holds ~60 MiB at level 3 with two workers; 2 MiB jobs hold
    // ~23 MiB, keep both cores busy on smaller inputs and cost < 0.1 % of
    // ratio on the bench corpus.
    enc.set_parameter(CParameter::JobSize(JOB_SIZE))?;
    enc.set_parameter(CParameter::ChecksumFlag(true))?;
    Ok(enc)
}

/// A `Write` that compresses into a sequence of frames, switching frames
/// when the class of the bytes changes (only at adaptive levels).
pub struct FrameWriter<W: Write> {
    inner: W,
    mode: Mode,
    abandoned: bool,
    /// How many frames were started (for the log and the tests).
    pub frames: u32,
}

enum Mode {
    /// Below [`ADAPTIVE_FROM_LEVEL`]: one frame, zstd's own workers.
    Stream { enc: StreamEnc, out: Vec<u8> },
    /// At adaptive levels: frames compressed by a pool, in parallel.
    Parallel(Pool),
}

/// The multi-threaded encoder of [`Mode::Stream`]. Dropping one waits for
/// its workers to finish their jobs (seconds at a high level); once
/// abandoned, it is leaked instead, which a shutdown prefers.
struct StreamEnc {
    enc: Option<raw::Encoder<'static>>,
    abandoned: bool,
}

impl StreamEnc {
    fn get(&mut self) -> &mut raw::Encoder<'static> {
        self.enc.as_mut().expect("present until dropped")
    }
}

impl Drop for StreamEnc {
    fn drop(&mut self) {
        if self.abandoned {
            std::mem::forget(self.enc.take());
        }
    }
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W, params: Params) -> io::Result<FrameWriter<W>> {
        let mode = if params.adaptive() {
            Mode::Parallel(Pool::new(params)?)
        } else {
            Mode::Stream {
                enc: StreamEnc {
                    enc: Some(stream_context(params)?),
                    abandoned: false,
                },
                out: Vec::with_capacity(zstd::zstd_safe::CCtx::out_size()),
            }
        };
        Ok(FrameWriter {
            inner,
            mode,
            abandoned: false,
            frames: 0,
        })
    }

    /// Gives up on this output (a cancelled pack): later writes are
    /// discarded, and dropping the writer never waits for zstd's workers
    /// (the pool's finish their current frame and exit on their own; the
    /// multi-threaded encoder is leaked).
    pub fn abandon(&mut self) {
        self.abandoned = true;
        if let Mode::Stream { enc, .. } = &mut self.mode {
            enc.abandoned = true;
        }
    }

    /// The bytes written next are of `class`: end the current frame and
    /// start one for it if it differs (only at adaptive levels).
    pub fn switch(&mut self, class: Class) -> io::Result<()> {
        match &mut self.mode {
            Mode::Stream { .. } => Ok(()),
            Mode::Parallel(pool) => {
                if class != pool.class {
                    self.frames += pool.submit(&mut self.inner)?;
                    pool.class = class;
                }
                Ok(())
            }
        }
    }

    /// End the last frame and flush the inner writer. On an error the
    /// caller may [`FrameWriter::abandon`] the writer before dropping it.
    pub fn finish(&mut self) -> io::Result<()> {
        if self.abandoned {
            return Err(io::Error::other("the output was abandoned"));
        }
        match &mut self.mode {
            Mode::Stream { enc, out } => {
                loop {
                    out.clear();
                    let mut o = OutBuffer::around(out);
                    let remaining = enc.get().finish(&mut o, true)?;
                    self.inner.write_all(out)?;
                    if remaining == 0 {
                        break;
                    }
                }
                self.frames = 1;
            }
            Mode::Parallel(pool) => {
                self.frames += pool.submit(&mut self.inner)?;
                if self.frames == 0 {
                    // Nothing was written: still one (empty) frame.
                    self.frames += pool.submit_always(&mut self.inner)?;
                }
                pool.drain(&mut self.inner, 0)?;
            }
        }
        self.inner.flush()
    }

    /// The inner writer, after [`FrameWriter::finish`].
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.abandoned {
            return Ok(buf.len());
        }
        match &mut self.mode {
            Mode::Stream { enc, out } => {
                let mut input = InBuffer::around(buf);
                // Loop until zstd took something: a multi-threaded context
                // may take nothing while its job queue is full.
                while input.pos() == 0 && !buf.is_empty() {
                    out.clear();
                    let mut o = OutBuffer::around(out);
                    enc.get().run(&mut input, &mut o)?;
                    self.inner.write_all(out)?;
                }
                Ok(input.pos())
            }
            Mode::Parallel(pool) => {
                let take = buf.len().min(FRAME_MAX - pool.pending.len());
                pool.pending.extend_from_slice(&buf[..take]);
                if pool.pending.len() == FRAME_MAX {
                    self.frames += pool.submit(&mut self.inner)?;
                }
                Ok(take)
            }
        }
    }

    /// Writes what the inner writer holds; never ends or flushes a zstd
    /// block or frame (that would make the output depend on when flush is
    /// called).
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// One frame to compress: its sequence number, class and input.
type Job = (u64, Class, Vec<u8>);
/// A compressed frame, with its input buffer back for reuse.
type Done = (u64, io::Result<Vec<u8>>, Vec<u8>);

/// Worker threads compressing whole frames, and the frames in flight.
/// Memory is bounded: at most `workers + 1` frames are queued, being
/// compressed or waiting for an earlier one to be written.
struct Pool {
    jobs: Option<mpsc::SyncSender<Job>>,
    done: mpsc::Receiver<Done>,
    /// The input of the current frame, at most [`FRAME_MAX`] bytes.
    pending: Vec<u8>,
    class: Class,
    next_seq: u64,
    next_out: u64,
    in_flight: usize,
    max_in_flight: usize,
    ready: BTreeMap<u64, io::Result<Vec<u8>>>,
    spare: Vec<Vec<u8>>,
    /// A frame or its write failed: the output has a hole, so every later
    /// call fails too (and none waits for a frame that will never come).
    failed: bool,
}

impl Pool {
    fn new(params: Params) -> io::Result<Pool> {
        let workers = params.workers.max(1) as usize;
        let (jobs, rx) = mpsc::sync_channel::<Job>(workers);
        let rx = Arc::new(Mutex::new(rx));
        let (tx, done) = mpsc::channel::<Done>();
        for i in 0..workers {
            let (rx, tx) = (rx.clone(), tx.clone());
            let level = params.level;
            std::thread::Builder::new()
                .name(format!("ferry-zstd-{i}"))
                .spawn(move || compress_frames(level, &rx, &tx))?;
        }
        Ok(Pool {
            jobs: Some(jobs),
            done,
            pending: Vec::with_capacity(FRAME_MAX),
            class: Class::Dense,
            next_seq: 0,
            next_out: 0,
            in_flight: 0,
            max_in_flight: workers + 1,
            ready: BTreeMap::new(),
            spare: Vec::new(),
            failed: false,
        })
    }

    /// Hands the current frame's input to the workers (nothing when it is
    /// empty) and writes every frame that is done, in order. Returns how
    /// many frames it started.
    fn submit(&mut self, inner: &mut impl Write) -> io::Result<u32> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        self.submit_always(inner)
    }

    fn submit_always(&mut self, inner: &mut impl Write) -> io::Result<u32> {
        self.check()?;
        let next = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(FRAME_MAX));
        let input = std::mem::replace(&mut self.pending, next);
        let stopped = || io::Error::other("the zstd worker threads stopped");
        self.jobs
            .as_ref()
            .ok_or_else(stopped)?
            .send((self.next_seq, self.class, input))
            .map_err(|_| stopped())?;
        self.next_seq += 1;
        self.in_flight += 1;
        self.drain(inner, self.max_in_flight - 1)?;
        Ok(1)
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            return Err(io::Error::other("an earlier zstd frame failed"));
        }
        Ok(())
    }

    /// Writes finished frames in order until at most `keep` are in flight.
    fn drain(&mut self, inner: &mut impl Write, keep: usize) -> io::Result<()> {
        self.check()?;
        loop {
            while let Some(frame) = self.ready.remove(&self.next_out) {
                self.next_out += 1;
                self.in_flight -= 1;
                if let Err(e) = frame.and_then(|f| inner.write_all(&f)) {
                    self.failed = true;
                    return Err(e);
                }
            }
            if self.in_flight <= keep {
                return Ok(());
            }
            let (seq, frame, mut input) = self
                .done
                .recv()
                .map_err(|_| io::Error::other("the zstd worker threads stopped"))?;
            input.clear();
            self.spare.push(input);
            self.ready.insert(seq, frame);
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Workers end after their current frame; nobody waits for them.
        self.jobs = None;
    }
}

/// A worker: compresses whole frames with one long-lived context per class
/// (a level-19 context is costly to make).
fn compress_frames(level: i32, jobs: &Mutex<mpsc::Receiver<Job>>, done: &mpsc::Sender<Done>) {
    let make = |level| -> io::Result<zstd::bulk::Compressor<'static>> {
        let mut c = zstd::bulk::Compressor::new(level)?;
        c.set_parameter(CParameter::ChecksumFlag(true))?;
        Ok(c)
    };
    let (mut dense, mut light) = (make(level), make(1));
    loop {
        let job = jobs.lock().unwrap_or_else(|e| e.into_inner()).recv();
        let Ok((seq, class, input)) = job else {
            return;
        };
        let ctx = match class {
            Class::Dense => &mut dense,
            Class::Incompressible => &mut light,
        };
        // A panic costs this frame (an error for the pack), not a frame
        // that never arrives.
        let frame = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match ctx {
            Ok(c) => c.compress(&input),
            Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
        }))
        .unwrap_or_else(|_| Err(io::Error::other("a zstd worker panicked")));
        if done.send((seq, frame, input)).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn noise(len: usize) -> Vec<u8> {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    #[test]
    fn random_bytes_are_incompressible_and_text_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let rnd = dir.path().join("rnd");
        let txt = dir.path().join("txt");
        std::fs::write(&rnd, noise(1 << 20)).unwrap();
        std::fs::write(&txt, b"sensor 12.5 ok\n".repeat(100_000)).unwrap();
        let small = dir.path().join("small");
        std::fs::write(&small, noise(1000)).unwrap();
        let f = |p| File::open(p).unwrap();
        assert_eq!(classify(&f(&rnd), 1 << 20).unwrap(), Class::Incompressible);
        assert_eq!(classify(&f(&txt), 1_500_000).unwrap(), Class::Dense);
        assert_eq!(classify(&f(&small), 1000).unwrap(), Class::Dense);
    }

    fn frames_of(params: Params, parts: &[(Class, &[u8])]) -> (Vec<u8>, u32) {
        let mut w = FrameWriter::new(Vec::new(), params).unwrap();
        for (class, bytes) in parts {
            w.switch(*class).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap();
        let frames = w.frames;
        (w.into_inner(), frames)
    }

    #[test]
    fn concatenated_frames_decode_as_one_stream_and_are_deterministic() {
        let text = b"joint torque 3.75 ok\n".repeat(20_000);
        let rnd = noise(300_000);
        let parts: Vec<(Class, &[u8])> = vec![
            (Class::Dense, &text[..]),
            (Class::Incompressible, &rnd[..]),
            (Class::Dense, &text[..]),
        ];
        let p = Params {
            level: 19,
            workers: 1,
        };
        let (a, frames) = frames_of(p, &parts);
        assert_eq!(frames, 3);
        // zstd -d reads the concatenated frames as one stream.
        let (b, _) = frames_of(
            Params {
                level: 19,
                workers: 2,
            },
            &parts,
        );
        assert_eq!(a, b, "output depends on the worker count");
        let mut out = Vec::new();
        zstd::Decoder::new(&a[..])
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        let want: Vec<u8> = parts.iter().flat_map(|(_, b)| b.iter().copied()).collect();
        assert_eq!(out, want);
    }

    fn decode(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        zstd::Decoder::new(bytes)
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn a_long_dense_run_is_cut_into_frames_compressed_in_parallel_in_order() {
        // 2.5 frames of text in many small writes, then noise, then text.
        let text: Vec<u8> = (0..)
            .flat_map(|i: u32| format!("joint {i} torque {} ok\n", i % 97).into_bytes())
            .take(FRAME_MAX * 5 / 2)
            .collect();
        let rnd = noise(100_000);
        let write = |workers| {
            let mut w = FrameWriter::new(Vec::new(), Params { level: 9, workers }).unwrap();
            w.switch(Class::Dense).unwrap();
            for chunk in text.chunks(7_001) {
                w.write_all(chunk).unwrap();
            }
            w.switch(Class::Incompressible).unwrap();
            w.write_all(&rnd).unwrap();
            w.switch(Class::Dense).unwrap();
            w.write_all(b"tail").unwrap();
            w.finish().unwrap();
            let frames = w.frames;
            (w.into_inner(), frames)
        };
        let (one, frames) = write(1);
        assert_eq!(frames, 5, "3 frames of text, 1 of noise, 1 of text");
        for workers in [2, 3] {
            assert_eq!(write(workers).0, one, "{workers} workers");
        }
        let want: Vec<u8> = [&text[..], &rnd[..], b"tail"].concat();
        assert_eq!(decode(&one), want);
        assert!(one.len() < want.len() / 2, "the text still compresses");
    }

    /// A writer that fails every write (a full disk, say).
    struct Failing;
    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn after_a_failed_frame_every_call_fails_and_none_waits() {
        let mut w = FrameWriter::new(
            Failing,
            Params {
                level: 9,
                workers: 2,
            },
        )
        .unwrap();
        let text = b"valve 7 open 1.25 bar\n".repeat(FRAME_MAX / 10);
        let mut first = None;
        for _ in 0..4 {
            if let Err(e) = w.write_all(&text) {
                first = Some(e);
                break;
            }
        }
        let first = first.expect("the output's error reaches the writer");
        assert_eq!(first.raw_os_error(), Some(libc::ENOSPC));
        assert!(w.write_all(&text).is_err());
        assert!(w.finish().is_err());
    }

    #[test]
    fn an_abandoned_writer_discards_and_drops_without_finishing() {
        for level in [3, 19] {
            let mut w = FrameWriter::new(Vec::new(), Params { level, workers: 2 }).unwrap();
            w.write_all(&noise(3 << 20)).unwrap();
            w.abandon();
            w.write_all(b"after").unwrap();
            assert!(w.finish().is_err(), "level {level}");
            drop(w);
        }
    }

    #[test]
    fn nothing_written_is_one_empty_frame() {
        for level in [3, 19] {
            let (bytes, frames) = frames_of(Params { level, workers: 2 }, &[]);
            assert_eq!(frames, 1);
            assert!(decode(&bytes).is_empty());
        }
    }

    #[test]
    fn below_the_adaptive_level_there_is_one_frame() {
        let rnd = noise(10_000);
        let (_, frames) = frames_of(
            Params {
                level: 3,
                workers: 1,
            },
            &[(Class::Incompressible, &rnd[..]), (Class::Dense, b"x")],
        );
        assert_eq!(frames, 1);
    }
}
