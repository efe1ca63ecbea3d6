//! The agent's metrics for node_exporter's textfile collector
//! (`metrics_textfile`): counters and gauges kept in atomics by the workers,
//! rendered in the Prometheus text format and written atomically (an
//! exclusively created temp file renamed over the target) at most once a
//! second, and only when the text changed.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_proto::QuarantineKind;
use tokio_util::sync::CancellationToken;

use crate::notify::Progress;

/// How often the writer looks for a change (the issue's "at most once a
/// second").
pub const INTERVAL: Duration = Duration::from_secs(1);

/// Where a kind's counter is: the order of [`QuarantineKind::ALL`], which
/// is also the order the file lists them (all are written, at zero too, so
/// that `increase()` sees the first one).
fn kind_index(kind: QuarantineKind) -> usize {
    QuarantineKind::ALL
        .iter()
        .position(|k| *k == kind)
        .expect("every kind is listed")
}

/// The counters the workers bump. Times are Unix seconds, 0 for never.
#[derive(Debug, Default)]
pub struct Metrics {
    shipped: AtomicU64,
    quarantined: [AtomicU64; QuarantineKind::ALL.len()],
    conflicts: AtomicU64,
    last_success: AtomicU64,
    last_error: AtomicU64,
    uploads: AtomicU64,
    /// Bytes to send and sent by the uploads started since none was in
    /// flight (the current "run" of uploads): their ratio is the progress.
    run_size: AtomicU64,
    run_sent_base: AtomicU64,
}

/// Counts one upload in flight for the life of the guard.
pub struct UploadGuard<'a> {
    metrics: &'a Metrics,
    progress: Arc<Progress>,
}

impl Drop for UploadGuard<'_> {
    fn drop(&mut self) {
        if self.metrics.uploads.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.metrics.run_size.store(0, Ordering::SeqCst);
            let sent = self.progress.sent.load(Ordering::SeqCst);
            self.metrics.run_sent_base.store(sent, Ordering::SeqCst);
        }
    }
}

impl Metrics {
    /// Starts with the last success and error the state file remembers.
    pub fn new(last_success_at: Option<&str>, last_error_at: Option<&str>) -> Metrics {
        let m = Metrics::default();
        m.last_success
            .store(unix(last_success_at), Ordering::Relaxed);
        m.last_error.store(unix(last_error_at), Ordering::Relaxed);
        m
    }

    pub fn shipped(&self) {
        self.shipped.fetch_add(1, Ordering::Relaxed);
        self.last_success.store(now(), Ordering::Relaxed);
    }

    pub fn quarantined(&self, kind: QuarantineKind) {
        self.quarantined[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
    }

    pub fn conflict(&self) {
        self.conflicts.fetch_add(1, Ordering::Relaxed);
    }

    pub fn error(&self) {
        self.last_error.store(now(), Ordering::Relaxed);
    }

    /// An upload of `size` bytes begins; it counts until the guard drops.
    pub fn upload<'a>(&'a self, size: u64, progress: &Arc<Progress>) -> UploadGuard<'a> {
        if self.uploads.fetch_add(1, Ordering::SeqCst) == 0 {
            let sent = progress.sent.load(Ordering::SeqCst);
            self.run_sent_base.store(sent, Ordering::SeqCst);
            self.run_size.store(0, Ordering::SeqCst);
        }
        self.run_size.fetch_add(size, Ordering::SeqCst);
        UploadGuard {
            metrics: self,
            progress: progress.clone(),
        }
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `2026-01-02T03:04:05Z` (the state file's times) → Unix seconds; 0 when
/// absent or unreadable.
fn unix(wall: Option<&str>) -> u64 {
    wall.and_then(|w| humantime::parse_rfc3339(w).ok())
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs())
}

/// What the agent knows that is not a counter here, read at each write.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Finished episodes waiting in `episodes/`.
    pub pending: u64,
    /// Episodes in `quarantine/` now.
    pub quarantine: u64,
}

/// Name (after `ferry_agent_`), type and help of each metric, in the
/// order `render` gives their samples.
const METRICS: [(&str, &str, &str); 12] = [
    (
        "pending_episodes",
        "gauge",
        "Finished episodes waiting to be shipped.",
    ),
    ("outbox_bytes", "gauge", "Bytes of tarballs in the outbox."),
    (
        "quarantine_episodes",
        "gauge",
        "Episodes in quarantine/ now.",
    ),
    (
        "shipped_total",
        "counter",
        "Episodes shipped since the agent started.",
    ),
    (
        "quarantined_total",
        "counter",
        "Episodes quarantined since the start, by kind.",
    ),
    (
        "conflicts_total",
        "counter",
        "Episodes parked in conflict/ since the start.",
    ),
    (
        "last_success_timestamp_seconds",
        "gauge",
        "Last episode shipped (Unix time; 0: never).",
    ),
    (
        "last_error_timestamp_seconds",
        "gauge",
        "Last error recorded (Unix time; 0: never).",
    ),
    (
        "sent_bytes_total",
        "counter",
        "Upload body bytes sent since the agent started.",
    ),
    ("uploads_in_flight", "gauge", "Uploads in progress."),
    (
        "upload_size_bytes",
        "gauge",
        "Bytes to send by the uploads since none was in flight.",
    ),
    (
        "upload_sent_bytes",
        "gauge",
        "Bytes of upload_size_bytes sent so far.",
    ),
];

/// Renders the text exposition format.
pub fn render(m: &Metrics, progress: &Progress, g: Gauges, outbox_bytes: u64) -> String {
    let get = |a: &AtomicU64| a.load(Ordering::SeqCst);
    let one = |v: u64| vec![(String::new(), v)];
    let sent = get(&progress.sent);
    let uploads = get(&m.uploads);
    let (size, done) = if uploads == 0 {
        (0, 0)
    } else {
        let size = get(&m.run_size);
        (size, sent.saturating_sub(get(&m.run_sent_base)).min(size))
    };
    let by_kind = QuarantineKind::ALL
        .iter()
        .zip(&m.quarantined)
        .map(|(k, c)| (format!("{{kind=\"{}\"}}", k.as_str()), get(c)))
        .collect();
    let samples: [Vec<(String, u64)>; 12] = [
        one(g.pending),
        one(outbox_bytes),
        one(g.quarantine),
        one(get(&m.shipped)),
        by_kind,
        one(get(&m.conflicts)),
        one(get(&m.last_success)),
        one(get(&m.last_error)),
        one(sent),
        one(uploads),
        one(size),
        one(done),
    ];
    let mut out = String::new();
    for ((name, kind, help), samples) in METRICS.iter().zip(samples) {
        let _ = writeln!(out, "# HELP ferry_agent_{name} {help}");
        let _ = writeln!(out, "# TYPE ferry_agent_{name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "ferry_agent_{name}{labels} {v}");
        }
    }
    out
}

/// Bytes of the files in `dir` (the outbox: a few tarballs, so listing it
/// each second costs little).
fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(|e| e.ok()?.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Writes `text` to `path` atomically: an exclusively created temp file
/// beside it (not `*.prom`, which the collector would read), then a
/// rename. No fsync: after a crash a stale or missing file is rewritten
/// within a second, and an SD card is spared a flush per second.
pub fn write_atomic(path: &Path, text: &str) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
    };
    let mut f = match open() {
        // Left by a crash of a process with our pid.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(&tmp)?;
            open()?
        }
        r => r?,
    };
    // Readable by node_exporter's user whatever our umask (the unit's is
    // 0027): the counts are no secret.
    let written = f
        .set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| f.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Writes the file at start, then each second when the text changed, and
/// once more when `stop` fires (so a drain leaves its final counts).
pub async fn writer(
    path: PathBuf,
    outbox: PathBuf,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    gauges: impl Fn() -> Gauges,
    stop: CancellationToken,
) {
    let mut last = String::new();
    let mut logged = false;
    loop {
        let stopping = stop.is_cancelled();
        let (p, o, m, pr, g) = (
            path.clone(),
            outbox.clone(),
            metrics.clone(),
            progress.clone(),
            gauges(),
        );
        let prev = std::mem::take(&mut last);
        let done = tokio::task::spawn_blocking(move || {
            let text = render(&m, &pr, g, dir_bytes(&o));
            let r = if text == prev {
                Ok(())
            } else {
                write_atomic(&p, &text)
            };
            (text, r)
        })
        .await;
        match done {
            Ok((text, Ok(()))) => {
                last = text;
                logged = false;
            }
            Ok((_, Err(e))) if !logged => {
                tracing::warn!("cannot write metrics_textfile {}: {e}", path.display());
                logged = true;
            }
            _ => {}
        }
        if stopping {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(INTERVAL) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_metric_with_progress_of_the_current_run() {
        let progress = Progress::new();
        let m = Metrics::new(Some("2026-01-02T03:04:05Z"), None);
        m.quarantined(QuarantineKind::Refused);
        m.conflict();
        progress.sent.fetch_add(100, Ordering::SeqCst);
        let g = m.upload(1000, &progress);
        progress.sent.fetch_add(250, Ordering::SeqCst);
        let text = render(
            &m,
            &progress,
            Gauges {
                pending: 3,
                quarantine: 1,
            },
            4096,
        );
        for line in [
            "ferry_agent_pending_episodes 3",
            "ferry_agent_outbox_bytes 4096",
            "ferry_agent_quarantined_total{kind=\"refused\"} 1",
            "ferry_agent_quarantined_total{kind=\"commit-rejected\"} 0",
            "ferry_agent_conflicts_total 1",
            "ferry_agent_last_success_timestamp_seconds 1767323045",
            "ferry_agent_last_error_timestamp_seconds 0",
            "ferry_agent_sent_bytes_total 350",
            "ferry_agent_uploads_in_flight 1",
            "ferry_agent_upload_size_bytes 1000",
            "ferry_agent_upload_sent_bytes 250",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        drop(g);
        let text = render(&m, &progress, Gauges::default(), 0);
        assert!(text.contains("ferry_agent_upload_size_bytes 0\n"), "{text}");
        m.shipped();
        assert!(m.last_success.load(Ordering::SeqCst) > 1767323045);
    }

    #[test]
    fn writes_atomically_over_the_old_file_and_a_stale_temp() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("ferry.prom");
        fs::write(&p, "old").unwrap();
        let stale = d
            .path()
            .join(format!("ferry.prom.{}.tmp", std::process::id()));
        fs::write(&stale, "stale").unwrap();
        write_atomic(&p, "new\n").unwrap();
        assert_eq!(fs::read_to_string(&p).unwrap(), "new\n");
        assert!(!stale.exists());
        let err = write_atomic(&d.path().join("missing/ferry.prom"), "x").unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }
}
