//! Commits answered 412, for the operator (SPEC §9): every rejected upload
//! is tallied in memory per (commit, device) — no write on the request
//! path — and the tallies are flushed to the index every
//! [`FLUSH_INTERVAL`] and at shutdown, where they add to the stored ones.
//!
//! Bounded by distinct pairs, globally ([`MAX_PAIRS`]) and per device
//! ([`MAX_PER_DEVICE`]): an attempt that would add a pair past either cap
//! is not recorded (counted in `dropped` and logged at the next flush);
//! pairs already held keep counting. Nothing is ever evicted, so a device
//! that invents commits fills only its own share and the other devices'
//! rejections still get through. In the index, each device keeps its
//! newest [`MAX_STORED_PER_DEVICE`] rows, and rows older than
//! `rejected_window` go. Only authenticated devices reach this,
//! with a commit `ferry_proto` validated (40 lowercase hex).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::admin::{allow_command, RejectedCommit, RejectedDevice};
use tokio_util::sync::CancellationToken;

use crate::store::{format_time, unix_now, Index, Rejection};

/// How often the tallies are written to the index.
pub const FLUSH_INTERVAL: Duration = Duration::from_secs(5);
/// Distinct (commit, device) pairs held between two flushes, all devices.
pub const MAX_PAIRS: usize = 10_000;
/// Distinct commits one device may have held between two flushes.
pub const MAX_PER_DEVICE: usize = 16;
/// Rows one device keeps in the index (its newest): with [`MAX_PER_DEVICE`]
/// per flush, the table is bounded per device, not only by the window.
pub const MAX_STORED_PER_DEVICE: u64 = 64;
/// Most rows a listing reads from the index.
pub const MAX_LISTED: u64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Tally {
    attempts: u64,
    first_seen: i64,
    last_seen: i64,
}

#[derive(Debug, Default)]
struct Pending {
    pairs: HashMap<(String, String), Tally>,
    /// Pairs held per device, for [`MAX_PER_DEVICE`].
    per_device: HashMap<String, usize>,
    /// Attempts not recorded because a cap was reached, since the last
    /// flush.
    dropped: u64,
}

impl Pending {
    /// Adds a tally; `false` when the pair is new and a cap is reached.
    fn add(&mut self, commit: &str, device: &str, t: Tally, caps: (usize, usize)) -> bool {
        let key = (commit.to_owned(), device.to_owned());
        if let Some(held) = self.pairs.get_mut(&key) {
            held.attempts = held.attempts.saturating_add(t.attempts);
            held.first_seen = held.first_seen.min(t.first_seen);
            held.last_seen = held.last_seen.max(t.last_seen);
            return true;
        }
        let of_device = self.per_device.get(device).copied().unwrap_or(0);
        if self.pairs.len() >= caps.0 || of_device >= caps.1 {
            self.dropped = self.dropped.saturating_add(t.attempts);
            return false;
        }
        self.pairs.insert(key, t);
        *self.per_device.entry(device.to_owned()).or_default() += 1;
        true
    }
}

/// The in-memory tallies.
#[derive(Debug)]
pub struct Rejections {
    pending: Mutex<Pending>,
    caps: (usize, usize),
}

impl Default for Rejections {
    fn default() -> Self {
        Self::with_caps(MAX_PAIRS, MAX_PER_DEVICE)
    }
}

impl Rejections {
    /// With other caps (tests).
    pub fn with_caps(pairs: usize, per_device: usize) -> Self {
        Self {
            pending: Mutex::new(Pending::default()),
            caps: (pairs, per_device),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one 412 for `device` at `now` (unix seconds): a map update
    /// under a lock, nothing else.
    pub fn record(&self, commit: &str, device: &str, now: i64) {
        let t = Tally {
            attempts: 1,
            first_seen: now,
            last_seen: now,
        };
        self.lock().add(commit, device, t, self.caps);
    }

    /// The tallies not yet flushed, as rows.
    pub fn snapshot(&self) -> Vec<Rejection> {
        rows(&self.lock().pairs)
    }

    /// Takes every tally (and the dropped count) for a flush.
    fn take(&self) -> (Vec<Rejection>, u64) {
        let mut p = self.lock();
        let taken = std::mem::take(&mut *p);
        (rows(&taken.pairs), taken.dropped)
    }

    /// Puts back the tallies of a failed flush, under the same caps.
    fn restore(&self, rows: Vec<Rejection>, dropped: u64) {
        let mut p = self.lock();
        p.dropped = p.dropped.saturating_add(dropped);
        for r in rows {
            let t = Tally {
                attempts: r.attempts,
                first_seen: r.first_seen,
                last_seen: r.last_seen,
            };
            p.add(&r.commit, &r.device, t, self.caps);
        }
    }

    /// Writes the tallies to the index and prunes rows older than
    /// `window`. On failure they are kept for the next flush.
    pub async fn flush(&self, index: &dyn Index, window: Duration) {
        let (rows, dropped) = self.take();
        if dropped > 0 {
            tracing::warn!(
                dropped,
                max_pairs = self.caps.0,
                max_per_device = self.caps.1,
                "rejected commits: attempts not recorded, too many distinct commit and device pairs since the last flush"
            );
        }
        let prune_before = unix_now().saturating_sub(window.as_secs() as i64);
        let stored = index
            .record_rejections(&rows, prune_before, MAX_STORED_PER_DEVICE)
            .await;
        if let Err(e) = stored {
            tracing::warn!(error = %e, pairs = rows.len(), "cannot record rejected commits; keeping them for the next flush");
            self.restore(rows, 0);
        }
    }

    /// Flushes every [`FLUSH_INTERVAL`] until `shutdown`; the caller
    /// flushes once more when the last request is answered.
    pub fn spawn_flusher(
        self: &Arc<Self>,
        index: Arc<dyn Index>,
        window: Duration,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FLUSH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => this.flush(&*index, window).await,
                    () = shutdown.cancelled() => break,
                }
            }
        })
    }
}

fn rows(pairs: &HashMap<(String, String), Tally>) -> Vec<Rejection> {
    pairs
        .iter()
        .map(|((commit, device), t)| Rejection {
            commit: commit.clone(),
            device: device.clone(),
            attempts: t.attempts,
            first_seen: t.first_seen,
            last_seen: t.last_seen,
        })
        .collect()
}

/// The operator's list: stored rows and unflushed ones added together,
/// those last seen before `since` and those of `allowed` commits left out,
/// grouped by commit, newest first.
pub fn summarize(
    stored: Vec<Rejection>,
    pending: Vec<Rejection>,
    allowed: &HashSet<String>,
    since: i64,
) -> Vec<RejectedCommit> {
    let mut merged: BTreeMap<(String, String), Tally> = BTreeMap::new();
    for r in stored.into_iter().chain(pending) {
        if r.last_seen < since || allowed.contains(&r.commit) {
            continue;
        }
        let t = merged.entry((r.commit, r.device)).or_insert(Tally {
            attempts: 0,
            first_seen: r.first_seen,
            last_seen: r.last_seen,
        });
        t.attempts = t.attempts.saturating_add(r.attempts);
        t.first_seen = t.first_seen.min(r.first_seen);
        t.last_seen = t.last_seen.max(r.last_seen);
    }
    let mut by_commit: BTreeMap<String, Vec<(String, Tally)>> = BTreeMap::new();
    for ((commit, device), t) in merged {
        by_commit.entry(commit).or_default().push((device, t));
    }
    let mut out: Vec<RejectedCommit> = by_commit
        .into_iter()
        .map(|(commit, mut devices)| {
            devices.sort_by(|a, b| b.1.last_seen.cmp(&a.1.last_seen).then(a.0.cmp(&b.0)));
            let first = devices.iter().map(|d| d.1.first_seen).min().unwrap_or(0);
            let last = devices.iter().map(|d| d.1.last_seen).max().unwrap_or(0);
            RejectedCommit {
                attempts: devices.iter().map(|d| d.1.attempts).sum(),
                first_seen: format_time(first),
                last_seen: format_time(last),
                allow_command: allow_command(&commit),
                devices: devices
                    .into_iter()
                    .map(|(device, t)| RejectedDevice {
                        device,
                        attempts: t.attempts,
                        first_seen: format_time(t.first_seen),
                        last_seen: format_time(t.last_seen),
                    })
                    .collect(),
                commit,
            }
        })
        .collect();
    // RFC 3339 UTC strings of one format sort as times.
    out.sort_by(|a, b| b.last_seen.cmp(&a.last_seen).then(a.commit.cmp(&b.commit)));
    out
}

/// The list an operator sees now: the index's rows within `window`, plus
/// what `pending` holds that is not flushed yet.
pub async fn list(
    index: &dyn Index,
    pending: &Rejections,
    window: Duration,
) -> Result<Vec<RejectedCommit>, crate::store::IndexError> {
    let since = unix_now().saturating_sub(window.as_secs() as i64);
    let stored = index.rejections(since, MAX_LISTED).await?;
    let allowed: HashSet<String> = index
        .list_commits()
        .await?
        .into_iter()
        .map(|c| c.commit.to_string())
        .collect();
    Ok(summarize(stored, pending.snapshot(), &allowed, since))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteIndex;

    fn commit(n: u32) -> String {
        format!("{n:040x}")
    }

    #[test]
    fn one_device_inventing_commits_fills_only_its_share() {
        let r = Rejections::with_caps(10, 3);
        for n in 0..100 {
            r.record(&commit(n), "noisy", 1);
        }
        // Another device's rejection is still recorded, and the noisy one's
        // held pairs keep counting.
        r.record(&commit(7), "quiet", 2);
        r.record(&commit(0), "noisy", 3);
        let rows = r.snapshot();
        assert_eq!(rows.iter().filter(|x| x.device == "noisy").count(), 3);
        assert!(rows.iter().any(|x| x.device == "quiet"));
        let noisy0 = rows
            .iter()
            .find(|x| x.device == "noisy" && x.commit == commit(0))
            .unwrap();
        assert_eq!((noisy0.attempts, noisy0.last_seen), (2, 3));
        assert_eq!(r.lock().dropped, 97);
    }

    #[test]
    fn the_global_cap_bounds_the_map() {
        let r = Rejections::with_caps(5, 3);
        for d in 0..10 {
            r.record(&commit(1), &format!("dev-{d}"), 1);
        }
        assert_eq!(r.snapshot().len(), 5);
        assert_eq!(r.lock().dropped, 5);
    }

    #[test]
    fn summary_groups_by_commit_and_leaves_out_allowed_and_old() {
        let row = |c: u32, d: &str, a, f, l| Rejection {
            commit: commit(c),
            device: d.into(),
            attempts: a,
            first_seen: f,
            last_seen: l,
        };
        let stored = vec![
            row(1, "a", 3, 100, 200),
            row(2, "a", 1, 10, 20),
            row(3, "b", 1, 300, 300),
        ];
        let pending = vec![row(1, "a", 2, 250, 400), row(1, "b", 1, 390, 390)];
        let allowed: HashSet<String> = [commit(3)].into();
        let out = summarize(stored, pending, &allowed, 50);
        assert_eq!(out.len(), 1, "{out:?}");
        let c = &out[0];
        assert_eq!(c.commit, commit(1));
        assert_eq!(c.attempts, 6);
        assert_eq!(c.first_seen, format_time(100));
        assert_eq!(c.last_seen, format_time(400));
        assert_eq!(
            c.allow_command,
            format!("ferry-receiver commits allow {}", commit(1))
        );
        let devices: Vec<_> = c
            .devices
            .iter()
            .map(|d| (d.device.as_str(), d.attempts))
            .collect();
        assert_eq!(devices, [("a", 5), ("b", 1)]);
    }

    #[tokio::test]
    async fn each_device_keeps_only_its_newest_rows_in_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("i.sqlite"))
            .await
            .unwrap();
        let row = |n: u32, device: &str| Rejection {
            commit: commit(n),
            device: device.into(),
            attempts: 1,
            first_seen: 1000 + n as i64,
            last_seen: 1000 + n as i64,
        };
        index
            .record_rejections(&[row(0, "quiet")], 0, 3)
            .await
            .unwrap();
        for batch in 0..4 {
            let rows: Vec<_> = (0..5).map(|i| row(batch * 5 + i, "noisy")).collect();
            index.record_rejections(&rows, 0, 3).await.unwrap();
        }
        let stored = index.rejections(0, 100).await.unwrap();
        let noisy: Vec<_> = stored
            .iter()
            .filter(|r| r.device == "noisy")
            .map(|r| r.commit.clone())
            .collect();
        assert_eq!(noisy, [commit(19), commit(18), commit(17)]);
        assert!(stored.iter().any(|r| r.device == "quiet"), "{stored:?}");
    }

    #[tokio::test]
    async fn flushes_add_up_in_the_index_and_old_rows_are_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let index = SqliteIndex::open(&dir.path().join("i.sqlite"))
            .await
            .unwrap();
        let r = Rejections::default();
        let now = unix_now();
        r.record(&commit(1), "a", now);
        r.record(&commit(1), "a", now);
        r.flush(&index, Duration::from_secs(3600)).await;
        assert!(r.snapshot().is_empty(), "a flush empties the map");
        r.record(&commit(1), "a", now + 1);
        r.flush(&index, Duration::from_secs(3600)).await;
        let stored = index.rejections(0, 10).await.unwrap();
        assert_eq!(stored.len(), 1);
        assert_eq!(
            (
                stored[0].attempts,
                stored[0].first_seen,
                stored[0].last_seen
            ),
            (2 + 1, now, now + 1)
        );

        // An old tally is pruned by the next flush.
        index
            .record_rejections(
                &[Rejection {
                    commit: commit(2),
                    device: "b".into(),
                    attempts: 1,
                    first_seen: now - 7200,
                    last_seen: now - 7200,
                }],
                0,
                MAX_STORED_PER_DEVICE,
            )
            .await
            .unwrap();
        assert_eq!(index.rejections(0, 10).await.unwrap().len(), 2);
        r.flush(&index, Duration::from_secs(3600)).await;
        assert_eq!(index.rejections(0, 10).await.unwrap().len(), 1);

        // A renamed device's rejections follow it.
        index.add_device("a", &[1; 32], now).await.unwrap();
        index.rename_device("a", "a2").await.unwrap();
        assert_eq!(index.rejections(0, 10).await.unwrap()[0].device, "a2");

        // An allowed commit is no longer listed.
        index
            .allow_commit(&commit(1), false, None, now)
            .await
            .unwrap();
        assert!(list(&index, &r, Duration::from_secs(3600))
            .await
            .unwrap()
            .is_empty());
    }
}
