//! Background sweeps: orphan outbox tarballs (no `episodes/<id>`), stale
//! `.partial` files nobody is writing, `shipped/` older than `shipped_keep`,
//! `quarantine/` older than `quarantine_keep`, and aside copies a crash left.
//!
//! They start after READY, run on the blocking pool (never on an async
//! worker), handle at most `sweep_batch` entries per batch with a pause in
//! between, check for shutdown between entries, and run at most once per
//! [`SWEEP_EVERY`] (SPEC §4.4).

use std::collections::HashSet;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ferry_proto::EpisodeId;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::fsio;
use crate::quarantine;
use crate::spool::{self, Spool};

/// How often the sweeps run (the first right after READY).
pub const SWEEP_EVERY: Duration = Duration::from_secs(3600);
/// Pause between batches, so that a large sweep yields the disk.
const BATCH_PAUSE: Duration = Duration::from_millis(20);

/// What one sweep removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    pub orphans: u64,
    pub partials: u64,
    pub shipped: u64,
    pub quarantined: u64,
    pub leftovers: u64,
    pub errors: u64,
}

/// Which sweeps to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweeps {
    /// Everything, now and then every [`SWEEP_EVERY`] (the daemon).
    All,
    /// Once, only what a crash leaves (orphan tarballs, stale partials,
    /// aside copies): `drain` finishes a crashed run's work, and leaves
    /// retention to the daemon.
    CrashLeftovers,
}

/// Run the sweeps now and, for [`Sweeps::All`], every [`SWEEP_EVERY`]
/// until `stop`.
pub async fn sweep_loop(
    cfg: &Config,
    spool: &Spool,
    in_flight: Arc<Mutex<HashSet<EpisodeId>>>,
    stop: CancellationToken,
    which: Sweeps,
) {
    loop {
        let (c, s, f, st) = (cfg.clone(), spool.clone(), in_flight.clone(), stop.clone());
        let started = std::time::Instant::now();
        let retention = which == Sweeps::All;
        match tokio::task::spawn_blocking(move || {
            sweep_all(&c, &s, &f, &st, SystemTime::now(), retention)
        })
        .await
        {
            Ok(sw) if sw != Swept::default() => tracing::info!(
                orphans = sw.orphans,
                partials = sw.partials,
                shipped = sw.shipped,
                quarantined = sw.quarantined,
                leftovers = sw.leftovers,
                errors = sw.errors,
                took_ms = started.elapsed().as_millis() as u64,
                "sweep done"
            ),
            Ok(_) => tracing::debug!("sweep: nothing to remove"),
            Err(e) => tracing::error!("sweep failed: {e}"),
        }
        if which == Sweeps::CrashLeftovers {
            return;
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(SWEEP_EVERY) => {}
        }
    }
}

/// Counts entries and pauses every `batch` of them; says when to stop.
struct Batcher<'a> {
    n: usize,
    batch: usize,
    stop: &'a CancellationToken,
}

impl Batcher<'_> {
    fn tick(&mut self) -> bool {
        self.n += 1;
        if self.n % self.batch == 0 {
            std::thread::sleep(BATCH_PAUSE);
        }
        !self.stop.is_cancelled()
    }
}

fn age(now: SystemTime, secs: i64) -> Duration {
    let t = UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64);
    now.duration_since(t).unwrap_or_default()
}

fn is_aside(name: &str) -> bool {
    name.starts_with('.') && name.contains(".old-")
}

/// Removes what the sweep found, counting it or the failure.
fn remove(p: &Path, counter: &mut u64, errors: &mut u64) {
    match fsio::remove_path(p) {
        Ok(()) => *counter += 1,
        Err(e) => {
            *errors += 1;
            tracing::warn!("sweep: cannot remove {}", fsio::describe(p, &e));
        }
    }
}

/// Outbox: orphans, stale partials and upload records of gone episodes.
/// `false` when the sweep was stopped.
fn sweep_outbox(
    spool: &Spool,
    in_flight: &Mutex<HashSet<EpisodeId>>,
    b: &mut Batcher<'_>,
    sw: &mut Swept,
) -> bool {
    if let Ok(rd) = fs::read_dir(spool.dir(spool::OUTBOX)) {
        for e in rd.flatten() {
            if !b.tick() {
                return false;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            // An upload record whose episode is gone (a crash between the
            // move and the removal of the tarball): nothing to resume.
            if let Some(id) = spool::parse_upload_record_name(&name) {
                if !spool.episode_dir(&id).exists() {
                    remove(&e.path(), &mut sw.orphans, &mut sw.errors);
                }
                continue;
            }
            let Some((id, partial)) = spool::parse_outbox_name(&name) else {
                continue;
            };
            // Decide and remove under the in-flight lock: a worker marks
            // its episode in flight before it creates the partial, so it
            // cannot start writing between our check and the unlink.
            let flying = in_flight.lock().unwrap_or_else(|p| p.into_inner());
            if flying.contains(&id) {
                continue;
            }
            if partial {
                remove(&e.path(), &mut sw.partials, &mut sw.errors);
            } else if !spool.episode_dir(&id).exists() {
                remove(&e.path(), &mut sw.orphans, &mut sw.errors);
            }
            drop(flying);
        }
    }
    true
}

/// One full sweep (blocking).
pub fn sweep_all(
    cfg: &Config,
    spool: &Spool,
    in_flight: &Mutex<HashSet<EpisodeId>>,
    stop: &CancellationToken,
    now: SystemTime,
    retention: bool,
) -> Swept {
    let mut sw = Swept::default();
    let mut b = Batcher {
        n: 0,
        batch: cfg.sweep_batch.max(1),
        stop,
    };
    if !sweep_outbox(spool, in_flight, &mut b, &mut sw) {
        return sw;
    }
    // Retention. The age of a shipped episode is the ctime of its
    // directory, which the rename into shipped/ set.
    for (dir, keep, is_quarantine) in [
        (spool::SHIPPED, cfg.shipped_keep, false),
        (spool::QUARANTINE, cfg.quarantine_keep, true),
        (spool::CONFLICT, Duration::MAX, false),
        (spool::EPISODES, Duration::MAX, false),
    ] {
        let Ok(rd) = fs::read_dir(spool.dir(dir)) else {
            continue;
        };
        for e in rd.flatten() {
            if !b.tick() {
                return sw;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            if is_aside(&name) {
                remove(&e.path(), &mut sw.leftovers, &mut sw.errors);
                continue;
            }
            if keep == Duration::MAX || !retention {
                continue;
            }
            let Ok(meta) = e.metadata() else { continue };
            let mut a = age(now, meta.ctime());
            if is_quarantine {
                if let Ok(id) = EpisodeId::parse(&name) {
                    if let Ok(r) = quarantine::read_reason(spool, &id) {
                        if let Some(t) = r
                            .quarantined_at_wall
                            .as_deref()
                            .and_then(|w| humantime::parse_rfc3339(w).ok())
                        {
                            a = now.duration_since(t).unwrap_or_default();
                        }
                    }
                }
            }
            if a > keep {
                if is_quarantine {
                    remove(&e.path(), &mut sw.quarantined, &mut sw.errors);
                } else {
                    remove(&e.path(), &mut sw.shipped, &mut sw.errors);
                }
            }
        }
    }
    sw
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cfg(spool: &Path) -> Config {
        let flags = crate::config::Flags {
            spool: Some(spool.display().to_string()),
            ..Default::default()
        };
        let mut env = BTreeMap::new();
        env.insert("FERRY_AGENT_SWEEP_BATCH".to_string(), "2".to_string());
        env.insert("FERRY_AGENT_CONFIG".to_string(), "/dev/null".to_string());
        Config::load(&flags, &env).unwrap()
    }

    #[test]
    fn sweeps_orphans_partials_and_old_entries_but_not_busy_or_live_ones() {
        let d = tempfile::tempdir().unwrap();
        let s = Spool::new(d.path());
        s.prepare().unwrap();
        let id = |x: &str| EpisodeId::parse(x).unwrap();
        fs::create_dir_all(s.episode_dir(&id("live"))).unwrap();
        fs::write(s.tarball(&id("live")), "t").unwrap();
        fs::write(s.tarball(&id("orphan")), "t").unwrap();
        fs::write(s.partial(&id("stale")), "p").unwrap();
        fs::write(s.partial(&id("busy")), "p").unwrap();
        fs::create_dir_all(s.shipped_dir(&id("old"))).unwrap();
        fs::create_dir_all(s.quarantine_dir(&id("q-old"))).unwrap();
        fs::write(
            s.quarantine_dir(&id("q-old")).join(spool::REASON_FILE),
            "{\"quarantined_at_wall\": \"2020-01-01T00:00:00Z\"}",
        )
        .unwrap();
        fs::create_dir_all(s.quarantine_dir(&id("q-new"))).unwrap();
        fs::create_dir_all(s.dir(spool::SHIPPED).join(".x.old-1")).unwrap();
        let in_flight = Mutex::new(HashSet::from([id("busy")]));
        let c = cfg(d.path());
        // Eight days from now: shipped/old is past shipped_keep (7d) but
        // q-new is not past quarantine_keep (30d).
        let later = SystemTime::now() + Duration::from_secs(8 * 86400);
        let stop = CancellationToken::new();
        // Without retention, only what a crash leaves goes.
        fs::create_dir_all(s.dir(spool::SHIPPED).join(".y.old-2")).unwrap();
        let sw = sweep_all(&c, &s, &in_flight, &stop, later, false);
        assert_eq!((sw.shipped, sw.quarantined, sw.leftovers), (0, 0, 2));
        fs::write(s.tarball(&id("orphan")), "t").unwrap();
        fs::write(s.partial(&id("stale")), "p").unwrap();
        fs::create_dir_all(s.dir(spool::SHIPPED).join(".x.old-1")).unwrap();
        // Upload records: one of a pending episode stays, an orphan goes.
        fs::write(s.upload_record(&id("live")), "{}").unwrap();
        fs::write(s.upload_record(&id("orphan")), "{}").unwrap();
        let sw = sweep_all(&c, &s, &in_flight, &stop, later, true);
        assert!(s.upload_record(&id("live")).exists());
        assert!(!s.upload_record(&id("orphan")).exists());
        assert_eq!(
            sw,
            Swept {
                orphans: 2,
                partials: 1,
                shipped: 1,
                quarantined: 1,
                leftovers: 1,
                errors: 0
            }
        );
        assert!(s.tarball(&id("live")).exists());
        assert!(s.partial(&id("busy")).exists());
        assert!(s.quarantine_dir(&id("q-new")).exists());
        assert!(!s.quarantine_dir(&id("q-old")).exists());
    }
}
