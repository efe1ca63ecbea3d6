//! Finds finished episodes, oldest first (`done.marker` mtime, then id),
//! with memory bounded by the batch size rather than the backlog: a heap
//! keeps the K oldest while `read_dir` streams. Bad names and entries the
//! filesystem refuses are counted and reported once per pass.

use std::collections::BinaryHeap;
use std::fs;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use ferry_durable::safe::Kind;
use ferry_proto::EpisodeId;

use crate::fsio;
use crate::spool::{Spool, DONE_MARKER, EPISODES};

/// Ready episodes taken per pass (memory bound of the scan).
pub const SCAN_BATCH: usize = 1024;

/// How many problem samples a report keeps (the count is exact).
const SAMPLES: usize = 5;

/// A finished episode.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ready {
    pub done_at: SystemTime,
    pub id: EpisodeId,
}

/// What one pass over `episodes/` found.
#[derive(Debug, Default)]
pub struct ScanReport {
    /// The oldest ready episodes, oldest first, at most the batch size.
    pub batch: Vec<Ready>,
    /// All ready episodes seen (the backlog).
    pub ready_total: u64,
    /// Directories still being written (no `done.marker`).
    pub writing: u64,
    pub invalid_total: u64,
    pub invalid_samples: Vec<String>,
    pub error_total: u64,
    pub error_samples: Vec<String>,
}

impl ScanReport {
    /// One line about invalid names, if any.
    pub fn invalid_line(&self) -> Option<String> {
        (self.invalid_total > 0).then(|| {
            format!(
                "{} director{} in episodes/ with a name that is not a valid episode id, skipped (never shipped): {}",
                self.invalid_total,
                if self.invalid_total == 1 { "y" } else { "ies" },
                self.invalid_samples.join(", ")
            )
        })
    }

    /// One line about unreadable entries, if any.
    pub fn error_line(&self) -> Option<String> {
        (self.error_total > 0).then(|| {
            format!(
                "{} unreadable entr{} in episodes/, skipped this pass: {}",
                self.error_total,
                if self.error_total == 1 { "y" } else { "ies" },
                self.error_samples.join("; ")
            )
        })
    }
}

fn sample(v: &mut Vec<String>, s: String) {
    if v.len() < SAMPLES {
        v.push(s);
    }
}

/// Scan `episodes/`, keeping at most `batch` of the oldest ready episodes.
/// `progress` is bumped per entry so the watchdog sees a long scan move.
pub fn scan(spool: &Spool, batch: usize, progress: Option<&AtomicU64>) -> io::Result<ScanReport> {
    scan_with_early(spool, batch, progress, None)
}

/// A first look for a slow scan: once the scan has run for `after`, the
/// `count` oldest episodes seen so far are handed to `send`, so that a
/// huge backlog on a cold disk does not delay the first upload by the
/// whole scan. (Oldest first then holds among what was seen.)
pub struct Early {
    pub after: Duration,
    pub count: usize,
    pub send: Box<dyn FnOnce(Vec<Ready>) + Send>,
}

/// [`scan`] with an optional [`Early`] hand-off.
pub fn scan_with_early(
    spool: &Spool,
    batch: usize,
    progress: Option<&AtomicU64>,
    mut early: Option<Early>,
) -> io::Result<ScanReport> {
    let dir = spool.dir(EPISODES);
    let mut report = ScanReport::default();
    let mut heap: BinaryHeap<Ready> = BinaryHeap::with_capacity(batch + 1);
    let started = Instant::now();
    for entry in fs::read_dir(&dir)? {
        if let Some(p) = progress {
            p.fetch_add(1, Ordering::Relaxed);
        }
        if early
            .as_ref()
            .is_some_and(|e| !heap.is_empty() && started.elapsed() >= e.after)
        {
            let e = early.take().expect("checked");
            let mut first = heap.clone().into_sorted_vec();
            first.truncate(e.count);
            (e.send)(first);
        }
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                report.error_total += 1;
                sample(&mut report.error_samples, fsio::describe(&dir, &e));
                continue;
            }
        };
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            report.invalid_total += 1;
            sample(
                &mut report.invalid_samples,
                format!("{:?}", entry.file_name()),
            );
            continue;
        };
        if name.starts_with('.') {
            // Our own aside names and editor droppings; never episodes.
            continue;
        }
        let Ok(id) = EpisodeId::parse(name) else {
            report.invalid_total += 1;
            sample(&mut report.invalid_samples, format!("{name:?}"));
            continue;
        };
        match classify_entry(&dir.join(name)) {
            Ok(Entry::Ready(done_at)) => {
                report.ready_total += 1;
                heap.push(Ready { done_at, id });
                if heap.len() > batch {
                    heap.pop();
                }
            }
            Ok(Entry::Writing) => report.writing += 1,
            Ok(Entry::NotADirectory(kind)) => {
                // A symlink is never followed (it could lead anywhere the
                // agent can read); like a bad name, it is reported every
                // pass and never shipped.
                report.invalid_total += 1;
                sample(
                    &mut report.invalid_samples,
                    format!(
                        "{name:?} ({}, not a directory; never followed)",
                        kind.name()
                    ),
                );
            }
            Err((path, e)) => {
                report.error_total += 1;
                sample(&mut report.error_samples, fsio::describe(&path, &e));
            }
        }
    }
    report.batch = heap.into_sorted_vec();
    Ok(report)
}

/// What one name in `episodes/` is.
enum Entry {
    /// Finished: the mtime of its `done.marker`.
    Ready(SystemTime),
    /// A directory without `done.marker`: still being written.
    Writing,
    /// Not a directory (a symlink is not followed).
    NotADirectory(Kind),
}

fn classify_entry(path: &Path) -> Result<Entry, (std::path::PathBuf, io::Error)> {
    let meta = fs::symlink_metadata(path).map_err(|e| (path.to_owned(), e))?;
    if !meta.is_dir() {
        let ft = meta.file_type();
        let kind = if ft.is_symlink() {
            Kind::Symlink
        } else if ft.is_file() {
            Kind::File
        } else {
            Kind::Unknown
        };
        return Ok(Entry::NotADirectory(kind));
    }
    let marker = path.join(DONE_MARKER);
    match fs::symlink_metadata(&marker) {
        Ok(m) => Ok(Entry::Ready(m.modified().map_err(|e| (marker.clone(), e))?)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Entry::Writing),
        Err(e) => Err((marker, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn make(spool: &Spool, name: &str, done_secs: Option<u64>) {
        let d = spool.dir(EPISODES).join(name);
        fs::create_dir_all(&d).unwrap();
        if let Some(s) = done_secs {
            let f = fs::File::create(d.join(DONE_MARKER)).unwrap();
            f.set_modified(UNIX_EPOCH + Duration::from_secs(s)).unwrap();
        }
    }

    #[test]
    fn oldest_first_then_by_id_and_bounded() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path());
        s.prepare().unwrap();
        make(&s, "c", Some(100));
        make(&s, "b", Some(100));
        make(&s, "a", Some(300));
        make(&s, "z", Some(50));
        make(&s, "w", None);
        make(&s, "bad name", Some(1));
        make(&s, ".hidden", Some(1));
        // A finished episode elsewhere, symlinked into episodes/.
        let elsewhere = d.path().join("elsewhere");
        fs::create_dir_all(&elsewhere).unwrap();
        fs::File::create(elsewhere.join(DONE_MARKER)).unwrap();
        std::os::unix::fs::symlink(&elsewhere, s.dir(EPISODES).join("linked")).unwrap();
        let r = scan(&s, 3, None).unwrap();
        let ids: Vec<_> = r.batch.iter().map(|r| r.id.as_str()).collect();
        assert_eq!(ids, ["z", "b", "c"]);
        assert_eq!(r.ready_total, 4);
        assert_eq!(r.writing, 1);
        assert_eq!(r.invalid_total, 2);
        let line = r.invalid_line().unwrap();
        assert!(line.contains("bad name"), "{line}");
        assert!(line.contains("\"linked\" (a symlink"), "{line}");
        assert!(r.error_line().is_none());
    }

    #[test]
    fn a_slow_scan_hands_off_an_early_batch() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path());
        s.prepare().unwrap();
        for i in 0..50u64 {
            make(&s, &format!("ep{i:03}"), Some(1000 - i));
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let early = Early {
            after: Duration::ZERO,
            count: 3,
            send: Box::new(move |v| tx.send(v).unwrap()),
        };
        let r = scan_with_early(&s, 10, None, Some(early)).unwrap();
        let first = rx.recv().unwrap();
        assert_eq!(first.len(), 1, "handed off as soon as one was seen");
        assert_eq!(r.batch.len(), 10);
        assert_eq!(r.batch[0].id.as_str(), "ep049");
    }

    #[test]
    fn a_large_backlog_keeps_only_the_batch() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path());
        s.prepare().unwrap();
        for i in 0..2000u64 {
            make(&s, &format!("ep{i:05}"), Some(10_000 - i));
        }
        let r = scan(&s, 10, None).unwrap();
        assert_eq!(r.ready_total, 2000);
        assert_eq!(r.batch.len(), 10);
        assert_eq!(r.batch[0].id.as_str(), "ep01999");
        assert_eq!(r.batch[9].id.as_str(), "ep01990");
    }
}
