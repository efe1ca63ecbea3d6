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
//! Determinism: the choice depends only on the file's own bytes (a level-1
//! trial compression of fixed samples with the zstd built into this
//! binary) and on fixed parameters, so the same episode gives the same
//! frames on every run and machine.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;

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

/// One long-lived zstd context per class: ending a frame and starting the
/// next on the same context keeps its memory and its worker threads, so a
/// switch costs a frame end, not a new context (which at level 19 means
/// allocating and clearing tens of MiB, and new threads).
fn context(class: Class, p: Params) -> io::Result<raw::Encoder<'static>> {
    let mut enc = match class {
        Class::Dense => {
            let mut e = raw::Encoder::new(p.level)?;
            e.set_parameter(CParameter::NbWorkers(p.workers.max(1)))?;
            // A fixed job size (part of the output, like the level): the
            // default, 4 windows, holds ~60 MiB at level 3 with two
            // workers; 2 MiB jobs hold ~23 MiB, keep both cores busy on
            // smaller inputs and cost < 0.1 % of ratio on the bench corpus.
            e.set_parameter(CParameter::JobSize(JOB_SIZE))?;
            e
        }
        Class::Incompressible => raw::Encoder::new(1)?,
    };
    enc.set_parameter(CParameter::ChecksumFlag(true))?;
    Ok(enc)
}

/// A `Write` that compresses into a sequence of frames, switching frames
/// when the class of the bytes changes.
pub struct FrameWriter<W: Write> {
    inner: W,
    dense: raw::Encoder<'static>,
    /// Made on the first switch (most episodes never need it).
    light: Option<raw::Encoder<'static>>,
    class: Class,
    params: Params,
    out: Vec<u8>,
    /// How many frames were started (for the log and the tests).
    pub frames: u32,
}

impl<W: Write> FrameWriter<W> {
    pub fn new(inner: W, params: Params) -> io::Result<FrameWriter<W>> {
        Ok(FrameWriter {
            inner,
            dense: context(Class::Dense, params)?,
            light: None,
            class: Class::Dense,
            params,
            out: Vec::with_capacity(zstd::zstd_safe::CCtx::out_size()),
            frames: 1,
        })
    }

    fn current(&mut self) -> &mut raw::Encoder<'static> {
        match self.class {
            Class::Dense => &mut self.dense,
            Class::Incompressible => self.light.as_mut().expect("made on switch"),
        }
    }

    /// End the current frame, writing everything it still holds, and make
    /// its context ready for a new frame.
    fn end_frame(&mut self) -> io::Result<()> {
        loop {
            self.out.clear();
            let mut out = OutBuffer::around(&mut self.out);
            let remaining = match self.class {
                Class::Dense => self.dense.finish(&mut out, true)?,
                Class::Incompressible => self
                    .light
                    .as_mut()
                    .expect("made on switch")
                    .finish(&mut out, true)?,
            };
            self.inner.write_all(&self.out)?;
            if remaining == 0 {
                break;
            }
        }
        self.current().reinit()
    }

    /// The bytes written next are of `class`: end the current frame and
    /// start one for it if it differs (only at adaptive levels).
    pub fn switch(&mut self, class: Class) -> io::Result<()> {
        if class == self.class || !self.params.adaptive() {
            return Ok(());
        }
        self.end_frame()?;
        if class == Class::Incompressible && self.light.is_none() {
            self.light = Some(context(class, self.params)?);
        }
        self.class = class;
        self.frames += 1;
        Ok(())
    }

    /// End the last frame and flush the inner writer. On an error the
    /// caller may `std::mem::forget` the writer rather than drop it:
    /// dropping a multi-threaded context waits for its workers to finish
    /// their jobs (seconds at a high level), which a shutdown must not.
    pub fn finish(&mut self) -> io::Result<()> {
        self.end_frame()?;
        self.inner.flush()
    }

    /// The inner writer, after [`FrameWriter::finish`].
    pub fn into_inner(self) -> W {
        self.inner
    }
}

impl<W: Write> Write for FrameWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut input = InBuffer::around(buf);
        // Loop until zstd took something: a multi-threaded context may
        // take nothing while its job queue is full.
        while input.pos() == 0 && !buf.is_empty() {
            self.out.clear();
            let mut out = OutBuffer::around(&mut self.out);
            match self.class {
                Class::Dense => self.dense.run(&mut input, &mut out)?,
                Class::Incompressible => self
                    .light
                    .as_mut()
                    .expect("made on switch")
                    .run(&mut input, &mut out)?,
            };
            self.inner.write_all(&self.out)?;
        }
        Ok(input.pos())
    }

    /// Writes what the inner writer holds; never ends or flushes a zstd
    /// block (that would make the output depend on when flush is called).
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
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
        let frames = w.frames;
        w.finish().unwrap();
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
