//! The daemon loop (`run`) and `drain`: scan, hand each ready episode to
//! its journey (`episode`: pack → ship → classify → act), keep `STATUS=`
//! and the 412 re-check going, with shutdown passed down as values.
//!
//! Shutdown has two stages ([`Shutdown`]): `stop` (SIGTERM) ends scanning,
//! packing and the start of new uploads; `abort` (after `shutdown_grace`,
//! or a second signal) cancels uploads still in flight. An interrupted
//! episode is logged as aborted, keeps its tarball, and is shipped on the
//! next start; it is never recorded as a failure (SPEC §4.2).

use std::collections::HashSet;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::{Commit, EpisodeId};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Gate;
use crate::config::Config;
use crate::episode::{self, Tally};
use crate::notify::{self, Notifier, Progress};
use crate::pack::PackOptions;
use crate::quarantine;
use crate::scan;
use crate::ship::Shipper;
use crate::spool::{self, Spool};
use crate::state::AgentState;
use crate::textfile::{self, Gauges};
use crate::{fsio, sweep};

/// A scan still running after this long hands over what it has found.
pub const EARLY_BATCH_AFTER: Duration = Duration::from_millis(500);

/// The two stages of shutdown, created by `main` and passed down.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    /// No new work: scanning, packing and new uploads stop.
    pub stop: CancellationToken,
    /// In-flight uploads are cancelled.
    pub abort: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }

    /// Stop now and abort in-flight work after `grace`.
    pub fn begin(&self, grace: Duration) {
        self.stop.cancel();
        let abort = self.abort.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            abort.cancel();
        });
    }

    fn child(&self) -> Shutdown {
        Shutdown {
            stop: self.stop.child_token(),
            abort: self.abort.child_token(),
        }
    }
}

/// `run` or `drain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Run,
    /// Ship what is ready and return; give up after the timeout.
    Drain {
        timeout: Option<Duration>,
    },
}

/// How a `run` or `drain` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Finished {
    /// Ready episodes still in `episodes/` at the end.
    pub pending: u64,
    /// Episodes this run parked in `conflict/` (409: the receiver holds
    /// other bytes under the id). Nothing is pending for them, but nothing
    /// is fine either: `drain` exits 1.
    pub conflicts: u64,
    pub timed_out: bool,
}

/// Errors that stop the agent from starting.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("spool {path} is not usable: {message}")]
    Spool { path: String, message: String },
    #[error("another ferry-agent holds the lock {0}; one agent per spool")]
    Locked(String),
    #[error(transparent)]
    Client(#[from] crate::ship::ClientError),
}

/// The running agent: everything the workers share. The loop, scheduling
/// and shutdown are here; one episode's journey is `episode`, which reads
/// these fields (as do the action modules it calls).
pub struct Agent {
    pub(crate) cfg: Arc<Config>,
    pub(crate) spool: Spool,
    pub(crate) shipper: Shipper,
    pub(crate) progress: Arc<Progress>,
    notifier: Notifier,
    pub(crate) gate: Gate,
    /// When the device refusal was last told at ERROR (`None` after a
    /// success).
    pub(crate) device_logged: Mutex<Option<Instant>>,
    status_at: Mutex<Option<Instant>>,
    /// Strikes, attempts and changing passes of episodes still in
    /// `episodes/`.
    pub(crate) tally: Tally,
    pub(crate) state: Mutex<AgentState>,
    pub(crate) pack_opts: PackOptions,
    pub(crate) pack_slots: Semaphore,
    pub(crate) upload_slots: Semaphore,
    pub(crate) in_flight: Arc<Mutex<HashSet<EpisodeId>>>,
    /// Rejected commits told at ERROR (until the re-check allows them).
    pub(crate) logged_412: Mutex<HashSet<Commit>>,
    /// Read errors of this pass, told in one line at its end.
    pub(crate) pass_errors: Mutex<Vec<String>>,
    pending: AtomicU64,
    pub(crate) quarantined: AtomicU64,
    /// Episodes that left `episodes/` (retired, quarantined, parked).
    moved: AtomicU64,
    /// Episodes parked in `conflict/` by this run.
    pub(crate) conflicts: AtomicU64,
    /// The counters of the metrics textfile (`metrics_textfile`).
    pub(crate) metrics: Arc<textfile::Metrics>,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run a blocking closure on the blocking pool.
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

impl Agent {
    /// Prepare the spool, take the lock and build the client. Returns the
    /// agent and the lock (held for the life of the process).
    pub async fn start(
        cfg: Config,
        notifier: Notifier,
    ) -> Result<(Arc<Agent>, fsio::LockFile), StartError> {
        let spool = Spool::new(cfg.spool.clone());
        let s = spool.clone();
        let prepared = blocking(move || {
            s.prepare()?;
            fsio::LockFile::try_lock(&s.root().join(spool::LOCK_FILE))
        })
        .await;
        let lockf = match prepared {
            Ok(Some(l)) => l,
            Ok(None) => {
                return Err(StartError::Locked(
                    spool.root().join(spool::LOCK_FILE).display().to_string(),
                ))
            }
            Err(e) => {
                return Err(StartError::Spool {
                    path: spool.root().display().to_string(),
                    message: e.to_string(),
                })
            }
        };
        let progress = Progress::new();
        let shipper = Shipper::new(&cfg, progress.clone())?;
        let sp = spool.clone();
        let state = blocking(move || AgentState::load(&sp.state_file())).await;
        let metrics = textfile::Metrics::new(
            state.last_success_at.as_deref(),
            state.last_error_at.as_deref(),
        );
        let agent = Agent {
            pack_opts: PackOptions::new(cfg.zstd_level),
            gate: Gate::new(cfg.backoff_max),
            pack_slots: Semaphore::new(1),
            upload_slots: Semaphore::new(cfg.ship_concurrency),
            cfg: Arc::new(cfg),
            spool,
            shipper,
            progress,
            notifier,
            device_logged: Mutex::new(None),
            status_at: Mutex::new(None),
            tally: Tally::default(),
            state: Mutex::new(state),
            in_flight: Arc::default(),
            logged_412: Mutex::default(),
            pass_errors: Mutex::default(),
            pending: AtomicU64::new(0),
            quarantined: AtomicU64::new(0),
            moved: AtomicU64::new(0),
            conflicts: AtomicU64::new(0),
            metrics: Arc::new(metrics),
        };
        Ok((Arc::new(agent), lockf))
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// The daemon loop or a drain, until `shutdown` (or the drain ends).
    pub async fn run(self: &Arc<Self>, mode: Mode, shutdown: Shutdown) -> Finished {
        self.notifier.ready();
        tracing::info!(
            spool = %self.spool.root().display(),
            receiver = %self.cfg.receiver,
            mode = ?mode,
            "ferry-agent ready"
        );
        let outer = shutdown.clone();
        let shutdown = shutdown.child();
        let deadline = match mode {
            Mode::Drain { timeout: Some(t) } => Some(Instant::now() + t),
            _ => None,
        };
        let mut background = self.background(mode, deadline, &outer, &shutdown);
        let mut finished = Finished {
            pending: 0,
            conflicts: 0,
            timed_out: false,
        };
        loop {
            if shutdown.stop.is_cancelled() {
                break;
            }
            let Some((scanned, early_ids)) = self.scan_pass(&shutdown).await else {
                break;
            };
            let mut report = match scanned {
                Ok(r) => r,
                Err(e) => {
                    let msg = format!(
                        "cannot list {}: {}",
                        self.spool.dir(spool::EPISODES).display(),
                        e
                    );
                    tracing::error!("{msg}");
                    self.record_error(&msg).await;
                    self.sleep(self.cfg.scan_interval, &shutdown.stop).await;
                    continue;
                }
            };
            report.batch.retain(|r| !early_ids.contains(&r.id));
            self.pending.store(report.ready_total, Ordering::Relaxed);
            finished.pending = report.ready_total;
            if let Some(line) = report.invalid_line() {
                tracing::warn!("{line}");
            }
            if let Some(line) = report.error_line() {
                lock(&self.pass_errors).push(line);
            }
            self.refresh_status().await;
            if report.ready_total == 0 && matches!(mode, Mode::Drain { .. }) {
                self.flush_pass_errors();
                break;
            }
            // Rescan at once after a pass that moved episodes on (more may
            // be waiting beyond the batch); otherwise wait for news.
            let moved_before = self.moved.load(Ordering::Relaxed);
            self.process_batch(report.batch, &shutdown).await;
            self.flush_pass_errors();
            self.refresh_status().await;
            let moved = self.moved.load(Ordering::Relaxed) != moved_before;
            if !moved || shutdown.stop.is_cancelled() {
                // Wait for news, but come back as soon as a backoff ends
                // rather than a whole scan interval later.
                let mut wait = self.cfg.scan_interval;
                let open = self.gate.open_at();
                let now = Instant::now();
                if open > now {
                    wait = wait.min(open - now);
                }
                self.sleep(wait, &shutdown.stop).await;
            }
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            finished.timed_out = true;
        }
        // Count what is left for drain's exit code (a daemon stopping
        // does not pay for another full scan).
        if matches!(mode, Mode::Drain { .. }) {
            let sp = self.spool.clone();
            if let Ok(r) = blocking(move || scan::scan(&sp, 0, None)).await {
                finished.pending = r.ready_total;
            }
        }
        shutdown.stop.cancel();
        while background.join_next().await.is_some() {}
        finished.conflicts = self.conflicts.load(Ordering::Relaxed);
        finished
    }

    /// The tasks beside the loop: sweeps, the 412 re-check, a drain's
    /// deadline.
    fn background(
        self: &Arc<Self>,
        mode: Mode,
        deadline: Option<Instant>,
        outer: &Shutdown,
        shutdown: &Shutdown,
    ) -> JoinSet<()> {
        let mut background = JoinSet::new();
        {
            // The daemon runs every sweep, hourly; a drain only finishes
            // what a crashed run left in the outbox.
            let which = match mode {
                Mode::Run => sweep::Sweeps::All,
                Mode::Drain { .. } => sweep::Sweeps::CrashLeftovers,
            };
            // A drain lets its one sweep finish (unless a signal stops it).
            let c = match which {
                sweep::Sweeps::All => shutdown.stop.clone(),
                sweep::Sweeps::CrashLeftovers => outer.stop.clone(),
            };
            let a = self.clone();
            background.spawn(async move {
                sweep::sweep_loop(&a.cfg, &a.spool, a.in_flight.clone(), c, which).await
            });
        }
        {
            let (a, c) = (self.clone(), shutdown.stop.clone());
            background.spawn(async move { a.recheck_loop(c).await });
        }
        if let Some(path) = self.cfg.metrics_textfile.clone() {
            let (a, c) = (self.clone(), shutdown.stop.clone());
            let (m, p, outbox) = (a.metrics.clone(), a.progress(), a.spool.dir(spool::OUTBOX));
            background.spawn(textfile::writer(path, outbox, m, p, move || a.gauges(), c));
        }
        if let Some(d) = deadline {
            let s = shutdown.clone();
            background.spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep_until(d) => {
                        tracing::warn!("drain timeout reached; stopping");
                        s.stop.cancel();
                        s.abort.cancel();
                    }
                    _ = s.stop.cancelled() => {}
                }
            });
        }
        background
    }

    /// One scan of `episodes/`, and the ids of the oldest episodes a slow
    /// scan handed over early (already shipped by the time it returns);
    /// `None` when shutdown stopped it.
    async fn scan_pass(
        self: &Arc<Self>,
        shutdown: &Shutdown,
    ) -> Option<(io::Result<scan::ScanReport>, HashSet<EpisodeId>)> {
        let sp = self.spool.clone();
        let prog = self.progress.clone();
        let (tx, early_rx) = tokio::sync::oneshot::channel();
        let early = scan::Early {
            after: EARLY_BATCH_AFTER,
            count: self.cfg.ship_concurrency * 4,
            send: Box::new(move |v| {
                let _ = tx.send(v);
            }),
        };
        let scanning = blocking(move || {
            scan::scan_with_early(&sp, scan::SCAN_BATCH, Some(&prog.counter), Some(early))
        });
        tokio::pin!(scanning);
        // A slow scan (a huge backlog on a cold disk) hands over the
        // oldest episodes seen so far; they ship while it goes on.
        let mut early_ids = HashSet::new();
        let scanned = tokio::select! {
            // A long scan does not hold up shutdown.
            _ = shutdown.stop.cancelled() => return None,
            r = &mut scanning => r,
            Ok(first) = early_rx => {
                early_ids = first.iter().map(|r| r.id.clone()).collect();
                let (_, r) = tokio::join!(self.process_batch(first, shutdown), &mut scanning);
                r
            }
        };
        Some((scanned, early_ids))
    }

    async fn sleep(&self, d: Duration, stop: &CancellationToken) {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    fn flush_pass_errors(&self) {
        let errors = std::mem::take(&mut *lock(&self.pass_errors));
        if !errors.is_empty() {
            tracing::error!(
                "this pass skipped {} unreadable item(s), the rest kept shipping: {}",
                errors.len(),
                errors.join(" | ")
            );
        }
    }

    async fn process_batch(self: &Arc<Self>, batch: Vec<scan::Ready>, shutdown: &Shutdown) {
        let mut set = JoinSet::new();
        let limit = self.cfg.ship_concurrency + 1;
        for ready in batch {
            while set.len() >= limit {
                set.join_next().await;
                self.status_now_and_then().await;
            }
            if shutdown.stop.is_cancelled() {
                break;
            }
            let (a, s) = (self.clone(), shutdown.clone());
            set.spawn(episode::process(a, ready.id, s));
        }
        while set.join_next().await.is_some() {}
    }

    /// Keep STATUS= current during a long pass, at most once a second.
    async fn status_now_and_then(&self) {
        let due = {
            let mut last = lock(&self.status_at);
            let due = last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1));
            if due {
                *last = Some(Instant::now());
            }
            due
        };
        if due {
            self.refresh_status().await;
        }
    }

    /// One episode less in `episodes/`.
    pub(crate) fn left_episodes(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(1))
            });
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// The last error, in the state file (for `doctor` and `STATUS=`).
    /// The gauges of the metrics textfile.
    fn gauges(&self) -> Gauges {
        Gauges {
            pending: self.pending.load(Ordering::Relaxed),
            quarantine: self.quarantined.load(Ordering::Relaxed),
        }
    }

    pub(crate) async fn record_error(&self, msg: &str) {
        self.metrics.error();
        let now = spool::now_wall();
        let st = {
            let mut st = lock(&self.state);
            st.record_error(msg, &now);
            st.clone()
        };
        self.save_state(st).await;
    }

    pub(crate) async fn save_state(&self, st: AgentState) {
        let path = self.spool.state_file();
        if let Err(e) = blocking(move || st.save(&path)).await {
            tracing::warn!("cannot save {}: {e}", spool::STATE_FILE);
        }
    }

    /// The one-line `STATUS=`.
    async fn refresh_status(&self) {
        let sp = self.spool.clone();
        if let Ok(Ok((ids, bad))) =
            tokio::task::spawn_blocking(move || quarantine::list_ids(&sp)).await
        {
            self.quarantined
                .store((ids.len() + bad.len()) as u64, Ordering::Relaxed);
        }
        let st = lock(&self.state).clone();
        let line = format!(
            "pending {}, shipped today {}, quarantined {}, last error: {}",
            self.pending.load(Ordering::Relaxed),
            st.shipped_on(&spool::now_wall()),
            self.quarantined.load(Ordering::Relaxed),
            st.last_error
                .as_deref()
                .map(|e| e.chars().take(200).collect::<String>())
                .unwrap_or_else(|| "none".into())
        );
        self.notifier.status(&line);
    }

    /// Every `recheck_interval`, ask the receiver about each distinct
    /// commit among the 412-quarantined episodes and re-queue those whose
    /// commit is now allowed.
    async fn recheck_loop(self: Arc<Self>, stop: CancellationToken) {
        loop {
            // A GET may take up to request_timeout; shutdown does not wait.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.recheck_once() => {}
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.cfg.recheck_interval) => {}
            }
        }
    }

    pub async fn recheck_once(&self) {
        let sp = self.spool.clone();
        let found = blocking(move || quarantine::rejected_by_commit(&sp)).await;
        let by_commit = match found {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!("cannot list quarantine for the commit re-check: {e}");
                return;
            }
        };
        for (commit, ids) in by_commit {
            let answer = self
                .shipper
                .get(&ferry_proto::commit_path(&commit), true)
                .await;
            let allowed = match &answer {
                Ok(a) if a.status == 200 => {
                    serde_json::from_str::<ferry_proto::reply::CommitCheck>(&a.body)
                        .map(|c| c.allowed)
                        .unwrap_or(false)
                }
                _ => false,
            };
            if !allowed {
                tracing::debug!(%commit, answer = ?answer.as_ref().map(|a| a.status), "commit still not allowed");
                continue;
            }
            for id in ids {
                let (sp, i) = (self.spool.clone(), id.clone());
                match blocking(move || quarantine::requeue(&sp, &i)).await {
                    Ok(()) => {
                        tracing::info!(episode = %id, %commit, "commit now allowed; re-queued from quarantine")
                    }
                    Err(e) => tracing::warn!(episode = %id, "cannot re-queue: {e}"),
                }
            }
            lock(&self.logged_412).remove(&commit);
        }
    }
}

/// Start the watchdog feeder when systemd asked for one.
pub fn spawn_watchdog(
    interval: Option<Duration>,
    progress: Arc<Progress>,
    notifier: Notifier,
    stop: CancellationToken,
) {
    if let Some(i) = interval {
        tracing::info!(
            "systemd watchdog every {}; fed on progress",
            humantime::format_duration(i)
        );
        tokio::spawn(notify::watchdog_task(i, progress, notifier, stop));
    }
}
