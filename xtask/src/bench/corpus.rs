//! The bench corpus: deterministic episodes of mixed text and
//! incompressible bytes, made once and reused (a `.complete` marker records
//! the parameters they were made with).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Where the corpus lives and what it holds.
pub struct Corpus {
    /// `<root>/large/ep-large`: ~2,000 files, ~200 MB (quick: ~40 MB).
    pub large: PathBuf,
    pub large_bytes: u64,
    /// `<root>/medium/ep-medium`: the same mix, smaller, for the slow
    /// high-level compression case.
    pub medium: PathBuf,
    pub medium_bytes: u64,
    /// Number of tiny (10 KiB) episodes for the small-episode case.
    pub small_count: usize,
}

/// A xorshift64 stream: the same seed gives the same bytes on every machine.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

const WORDS: &[&str] = &[
    "episode",
    "sensor",
    "frame",
    "timestamp",
    "joint",
    "torque",
    "camera",
    "lidar",
    "pose",
    "velocity",
    "error",
    "warning",
    "info",
    "gripper",
    "battery",
    "voltage",
    "temperature",
    "calibration",
    "offset",
    "status",
    "ok",
    "retry",
    "queue",
    "left",
    "right",
    "arm",
    "base",
    "x",
    "y",
    "z",
    "0.001",
    "12.5",
    "-3.75",
    "true",
    "false",
    "null",
    "{",
    "}",
    "[",
    "]",
];

/// Log-like text: lines of words and numbers; compresses about 4×.
fn text(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 64);
    let mut line = 0u64;
    while out.len() < len {
        line += 1;
        let _ = write!(out, "{:010} ", line * 1000 + rng.below(1000));
        for _ in 0..(4 + rng.below(10)) {
            out.extend_from_slice(WORDS[rng.below(WORDS.len() as u64) as usize].as_bytes());
            out.push(b' ');
        }
        let _ = writeln!(out, "{}", rng.below(1 << 20));
    }
    out.truncate(len);
    out
}

/// Write one episode of `files` files and about `total` bytes: half text,
/// half random, sizes spread so that a few large files carry much of it.
fn episode(dir: &Path, seed: u64, files: usize, total: u64) -> Result<u64> {
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let mut rng = Rng::new(seed);
    let big = 4usize;
    let big_size = total / 5 / big as u64; // 20 % in four big binary files
    let rest = total - big_size * big as u64;
    let small = files - big;
    let mean = rest / small as u64;
    let mut written = 0u64;
    for i in 0..files {
        let sub = dir.join(format!("part-{:02}", i % 16));
        std::fs::create_dir_all(&sub)?;
        let (name, data) = if i < big {
            let mut buf = vec![0u8; big_size as usize];
            rng.fill(&mut buf);
            (format!("camera-{i:04}.raw"), buf)
        } else {
            let size = (mean / 2 + rng.below(mean)) as usize;
            if i % 2 == 0 {
                (format!("log-{i:05}.txt"), text(&mut rng, size))
            } else {
                let mut buf = vec![0u8; size];
                rng.fill(&mut buf);
                (format!("blob-{i:05}.bin"), buf)
            }
        };
        written += data.len() as u64;
        std::fs::write(sub.join(name), data)?;
    }
    std::fs::write(
        dir.join("meta.json"),
        format!(
            "{{\"code_version\": {{\"commit\": \"{}\"}}}}\n",
            super::cases::COMMIT
        ),
    )?;
    std::fs::write(dir.join("done.marker"), b"")?;
    Ok(written)
}

/// Make the corpus if it is not there yet with the same parameters.
pub fn ensure(work: &Path, quick: bool) -> Result<Corpus> {
    let (name, large_total, medium_total, small_count) = if quick {
        ("corpus-quick", 40_000_000u64, 8_000_000u64, 2_000usize)
    } else {
        ("corpus", 200_000_000u64, 40_000_000u64, 10_000usize)
    };
    let root = work.join(name);
    let large = root.join("large").join("ep-large");
    let medium = root.join("medium").join("ep-medium");
    let marker = root.join(".complete");
    let params = format!("v1 {large_total} {medium_total} {small_count}\n");
    if std::fs::read_to_string(&marker).ok().as_deref() != Some(params.as_str()) {
        println!("making the corpus in {} ...", root.display());
        let _ = std::fs::remove_dir_all(&root);
        episode(&large, 1, 2000, large_total)?;
        episode(&medium, 2, 500, medium_total)?;
        std::fs::write(&marker, &params)?;
    }
    Ok(Corpus {
        large_bytes: super::dir_bytes(&large),
        large,
        medium_bytes: super::dir_bytes(&medium),
        medium,
        small_count,
    })
}
