//! The development VM's free page reporting, paused for a run.
//!
//! The VM hands guest pages that have been free for a moment back to its
//! host; the next touch of such a page is a host fault. Measured here: the
//! first touch of 8 GiB took 26.6 s (about 13 µs per 4 KiB page), the
//! second 5.4 s. A 145 MB file written into such pages costs about 0.2 s
//! more than into pages freed a moment ago, so whichever side of a case
//! happened to allocate fresh page cache lost (`ferry-agent pack` renames
//! over its old output only at the end; `zstd -f` truncates its own first
//! and reuses those pages). For the run, reporting is paused (an order
//! above the largest buddy block, so no free block qualifies) and a share
//! of free memory is touched once, so that later allocations find pages
//! the host still backs. The old setting is restored when the guard drops.

use std::hint::black_box;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result};

const KNOB: &str = "/sys/module/page_reporting/parameters/page_reporting_order";
/// Above the largest buddy order (10 on x86-64).
const OFF: &str = "11";
/// Touched at most, and at most a third of what is available.
const WARM_MAX: u64 = 6 << 30;

/// Restores the reporting order on drop.
pub struct Paused {
    old: Option<String>,
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(old) = &self.old {
            if let Err(e) = std::fs::write(KNOB, old) {
                eprintln!("cannot restore {KNOB} to {old}: {e}");
            }
        }
    }
}

/// Pauses free page reporting if this machine has it, and says what was
/// done (for the report).
pub fn pause_page_reporting() -> (Paused, String) {
    let Ok(old) = std::fs::read_to_string(KNOB) else {
        return (
            Paused { old: None },
            "VM: no free page reporting here, nothing to pause.".to_owned(),
        );
    };
    let old = old.trim().to_owned();
    if let Err(e) = std::fs::write(KNOB, OFF) {
        return (
            Paused { old: None },
            format!(
                "VM: free page reporting is on and could not be paused ({KNOB}: {e}); \
                 figures include host faults on freshly allocated pages."
            ),
        );
    }
    let paused = Paused {
        old: Some(old.clone()),
    };
    let bytes = available_bytes().map_or(1 << 30, |a| (a / 3).min(WARM_MAX));
    let started = Instant::now();
    // In a child process: a child's peak RSS (`ru_maxrss`) starts from
    // its parent's at fork, so the bench must never hold this itself.
    let touched = std::env::current_exe().and_then(|exe| {
        Command::new(exe)
            .arg(TOUCH_MEMORY)
            .arg(bytes.to_string())
            .status()
    });
    if !matches!(&touched, Ok(st) if st.success()) {
        return (
            paused,
            format!("VM: free page reporting paused for the run, but touching memory failed ({touched:?})."),
        );
    }
    let note = format!(
        "VM: free page reporting paused for the run ({KNOB} {old} → {OFF}, restored at the end) \
         and {:.1} GiB touched once in {:.1} s, so that fresh page cache does not cost a host \
         fault per page on one side of a case only.",
        bytes as f64 / (1u64 << 30) as f64,
        started.elapsed().as_secs_f64()
    );
    (paused, note)
}

/// The hidden xtask subcommand that touches memory.
pub const TOUCH_MEMORY: &str = "__touch-memory";

/// `cargo xtask __touch-memory BYTES`: touches every page of that much
/// fresh memory, then exits.
pub fn touch_memory(args: &[String]) -> Result<ExitCode> {
    let bytes: usize = args.first().context("__touch-memory BYTES")?.parse()?;
    let mut v = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        v[i] = 1;
    }
    black_box(&v);
    Ok(ExitCode::SUCCESS)
}

/// `MemAvailable` from `/proc/meminfo`.
fn available_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
