//! `cargo xtask bench`: ferry against the obvious alternatives, measured in
//! the same run, alternately, so that the machine's mood hits both sides.
//!
//! Every case prints medians, min–max, the ratio ferry/baseline and peak
//! RSS, and the whole report is written to `target/bench/report.md`.
//! Speed is never asserted in a test; it is measured here.

mod cases;
mod console;
mod corpus;
mod nginx;
mod scaleout;
mod vm;

pub use vm::{touch_memory, TOUCH_MEMORY};

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cargo, run_ok};

/// What a run of the bench is asked to do.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Smaller corpus, fewer repetitions: a smoke run of the harness.
    pub quick: bool,
    /// Repetitions of each side of each case.
    pub reps: usize,
    /// Run only the cases whose name contains one of these.
    pub only: Vec<String>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts> {
        let mut o = Opts {
            quick: false,
            reps: 5,
            only: Vec::new(),
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            match a.as_str() {
                "--quick" => {
                    o.quick = true;
                    o.reps = 2;
                }
                "--reps" => o.reps = it.next().context("--reps N")?.parse()?,
                "--only" => o.only.push(it.next().context("--only CASE")?.clone()),
                other => bail!("unknown bench option {other} (--quick, --reps N, --only CASE)"),
            }
        }
        Ok(o)
    }

    pub fn wants(&self, case: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| case.contains(o.as_str()))
    }
}

/// Paths of the release binaries and the bench's scratch space.
pub struct Env {
    pub agent: PathBuf,
    pub receiver: PathBuf,
    pub work: PathBuf,
}

pub fn run(args: &[String]) -> Result<ExitCode> {
    let opts = Opts::parse(args)?;
    for tool in ["tar", "zstd", "sha256sum", "curl", "sync"] {
        if !have(tool) {
            bail!("the bench needs `{tool}` on PATH (apt-get install zstd curl)");
        }
    }
    run_ok(cargo().args([
        "build",
        "--release",
        "--locked",
        "-p",
        "ferry-agent",
        "-p",
        "ferry-receiver",
    ]))?;
    let release = crate::target_dir().join("release");
    // Another build of either binary (an A/B of two commits on the same
    // machine in the same hour) can be put in place of this one's.
    let binary = |name: &str, var: &str| {
        std::env::var_os(var).map_or_else(|| release.join(name), PathBuf::from)
    };
    let env = Env {
        agent: binary("ferry-agent", "FERRY_BENCH_AGENT"),
        receiver: binary("ferry-receiver", "FERRY_BENCH_RECEIVER"),
        work: crate::target_dir().join("bench"),
    };
    std::fs::create_dir_all(&env.work)?;

    let mut report = Report::default();
    let _ = writeln!(
        report.text,
        "# ferry bench — {}\n\nmachine: {} cores; command: `cargo xtask bench {}`\n",
        humantime_now(),
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        args.join(" ")
    );
    let corpus = corpus::ensure(&env.work, opts.quick)?;
    let (_paused, vm_note) = vm::pause_page_reporting();
    report.note(&vm_note);
    cases::all(&env, &opts, &corpus, &mut report)?;

    let out = env.work.join("report.md");
    std::fs::write(&out, &report.text)?;
    println!("\nreport written to {}", out.display());
    Ok(ExitCode::SUCCESS)
}

fn humantime_now() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output();
    match out {
        Ok(o) => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Err(_) => "unknown date".into(),
    }
}

/// Removes a directory left by an earlier run and, when it held many
/// files, lets the file system forget their inodes before anything is
/// timed. On ext4 without a journal (this machine's root file system) every
/// file create skips each inode deleted in the last 5 s (300 s while its
/// inode table block is dirty), so creating 10,000 files right after
/// deleting 10,000 costs a scan per create and measures the previous run's
/// deletions instead of the side under test. A `sync` cleans the blocks;
/// 6 s later none of them is recent.
pub fn clear_dir(dir: &Path) {
    let many = std::fs::read_dir(dir)
        .map(|d| d.count() > 64)
        .unwrap_or(false)
        || std::fs::read_dir(dir.join("objects")).is_ok();
    let _ = std::fs::remove_dir_all(dir);
    if many {
        let _ = Command::new("sync").status();
        std::thread::sleep(Duration::from_secs(6));
    }
}

pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// One run of one command: wall time and the peak RSS of the largest
/// process in it (`wait4` reports the maximum over the child and the
/// descendants it waited for, which covers a `sh -c` pipeline).
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub wall: Duration,
    pub max_rss_kib: u64,
}

/// Run `cmd` to completion and measure it; fails if it fails.
pub fn measure(cmd: &mut Command) -> Result<Sample> {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let (status, rss) = wait4(child.id())?;
    let wall = start.elapsed();
    if status != 0 {
        bail!("{cmd:?} failed with wait status {status:#x}");
    }
    Ok(Sample {
        wall,
        max_rss_kib: rss,
    })
}

/// `wait4(2)`: the exit status and `ru_maxrss` (KiB on Linux).
pub fn wait4(pid: u32) -> Result<(i32, u64)> {
    let mut status = 0i32;
    // SAFETY: rusage is plain data, filled in by the kernel.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is a child of ours that nobody else reaps.
        let r = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut ru) };
        if r == pid as libc::pid_t {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err).context("wait4");
        }
    }
    Ok((status, ru.ru_maxrss as u64))
}

/// Send `sig` to a child and wait up to `grace` for it to exit; SIGKILL
/// after that.
pub fn stop_child(child: &mut std::process::Child, sig: i32, grace: Duration) {
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, sig) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Peak RSS (`VmHWM`) of a running process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

/// Median, min and max of a set of durations.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Stats {
    pub fn of(values: &[f64]) -> Stats {
        assert!(!values.is_empty(), "no samples");
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Stats {
            median,
            min: v[0],
            max: v[n - 1],
        }
    }
}

/// Percentile (0–100) of latencies, nearest-rank.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The growing report: printed as it goes and written at the end.
#[derive(Default)]
pub struct Report {
    pub text: String,
}

impl Report {
    pub fn section(&mut self, title: &str, note: &str) {
        let s = format!(
            "\n## {title}\n\n{note}\n\n| side | median | min–max | peak RSS |\n|---|---|---|---|\n"
        );
        print!("{s}");
        self.text.push_str(&s);
    }

    /// A throughput row: `bytes` moved per run; samples in seconds.
    pub fn rate_row(&mut self, side: &str, bytes: u64, samples: &[Sample]) -> f64 {
        let mbs: Vec<f64> = samples
            .iter()
            .map(|s| bytes as f64 / 1e6 / s.wall.as_secs_f64())
            .collect();
        let st = Stats::of(&mbs);
        let rss = samples.iter().map(|s| s.max_rss_kib).max().unwrap_or(0);
        let s = format!(
            "| {side} | {:.1} MB/s | {:.1}–{:.1} | {:.1} MiB |\n",
            st.median,
            st.min,
            st.max,
            rss as f64 / 1024.0
        );
        print!("{s}");
        self.text.push_str(&s);
        st.median
    }

    /// A free-form row.
    pub fn row(&mut self, side: &str, median: &str, range: &str, rss: &str) {
        let s = format!("| {side} | {median} | {range} | {rss} |\n");
        print!("{s}");
        self.text.push_str(&s);
    }

    /// The verdict line of a case: the ratio and the target.
    pub fn ratio(&mut self, what: &str, ratio: f64, target: f64) {
        let verdict = if ratio >= target { "meets" } else { "MISSES" };
        let s = format!("\n**{what}: {ratio:.2}×** ({verdict} the target ≥ {target}×)\n");
        print!("{s}");
        self.text.push_str(&s);
    }

    pub fn note(&mut self, text: &str) {
        let s = format!("\n{text}\n");
        print!("{s}");
        self.text.push_str(&s);
    }
}

/// Total size of the regular files below `dir`.
pub fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                match e.file_type() {
                    Ok(t) if t.is_dir() => stack.push(e.path()),
                    Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                    _ => {}
                }
            }
        }
    }
    total
}

/// Drop the page cache is not possible without side effects on the host
/// tests; instead every side reads a corpus that the other side has just
/// read, so both run warm. This reads it once up front.
pub fn warm(dir: &Path) -> Result<()> {
    let st = Command::new("tar")
        .arg("-C")
        .arg(dir.parent().unwrap())
        .arg("-cf")
        .arg("/dev/null")
        .arg(dir.file_name().unwrap())
        .status()?;
    if !st.success() {
        bail!("warming {} failed", dir.display());
    }
    // GNU tar skips reading file contents when writing to /dev/null; cat does not.
    let st = Command::new("sh")
        .arg("-c")
        .arg("find \"$1\" -type f -exec cat {} + > /dev/null")
        .arg("sh")
        .arg(dir)
        .status()?;
    if !st.success() {
        bail!("warming {} failed", dir.display());
    }
    Ok(())
}
