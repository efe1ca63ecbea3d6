//! The daemon loop (`run`) and `drain`: scan → pack → ship → execute the
//! action `proto::decide` chose, with shutdown passed down as values.
//!
//! Shutdown has two stages ([`Shutdown`]): `stop` (SIGTERM) ends scanning,
//! packing and the start of new uploads; `abort` (after `shutdown_grace`,
//! or a second signal) cancels uploads still in flight. An interrupted
//! episode is logged as aborted, keeps its tarball, and is shipped on the
//! next start; it is never recorded as a failure (SPEC §4.2).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_proto::{
    decide, Action, Commit, EpisodeId, Outcome, QuarantineKind, Reply, Sha256, Strikes,
};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Gate;
use crate::config::Config;
use crate::notify::{self, Notifier, Progress};
use crate::pack::{self, PackOptions};
use crate::quarantine::{self, kind_name, Reason};
use crate::scan;
use crate::ship::{Answer, Shipper, UploadResult};
use crate::spool::{self, MetaError, Spool};
use crate::state::AgentState;
use crate::textfile::{self, Gauges};
use crate::{classify, conflict, fsio, outbox, retire, sweep};

/// Ready episodes taken per pass (memory bound of the scan).
pub const SCAN_BATCH: usize = 1024;
/// A scan still running after this long hands over what it has found.
pub const EARLY_BATCH_AFTER: Duration = Duration::from_millis(500);
/// An episode found changing while packed this many passes in a row is
/// reported as an error (and again every as many passes).
pub const CHANGING_REPORT_EVERY: u32 = 10;

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

#[derive(Debug, Default, Clone)]
struct StrikeRecord {
    strikes: Strikes,
    attempts: u32,
    last_error: String,
    /// Passes in a row that found the episode changing while it was packed.
    changed_passes: u32,
}

/// What to write into a quarantine reason or a log line about an attempt.
#[derive(Debug, Default)]
struct Detail {
    status: Option<u16>,
    error: String,
    body: Value,
    remediation: Option<String>,
    existing_sha256: Option<String>,
}

impl Detail {
    fn from_answer(a: &Answer) -> Detail {
        let body = serde_json::from_str(&a.body).unwrap_or_else(|_| Value::String(a.body.clone()));
        let mut d = Detail {
            status: Some(a.status),
            body,
            ..Detail::default()
        };
        d.error = match &a.reply {
            Some(r @ Reply::BadRequest { error, detail }) => {
                format!("{} {}: {}: {detail}", a.status, r.status(), error.as_str())
            }
            Some(Reply::CommitRejected { remediation, .. }) => {
                d.remediation = Some(remediation.clone());
                format!("{} commit-rejected", a.status)
            }
            Some(Reply::Conflict {
                existing_sha256, ..
            }) => {
                d.existing_sha256 = Some(existing_sha256.clone());
                format!(
                    "{} conflict: the receiver holds sha256 {existing_sha256}",
                    a.status
                )
            }
            Some(Reply::TooLarge { limit, detail }) => {
                format!("{} too-large (limit {limit} bytes): {detail}", a.status)
            }
            Some(r) => format!("{} {}", a.status, r.status()),
            None => format!("{} (unparsed answer)", a.status),
        };
        d
    }

    fn local(error: String) -> Detail {
        Detail {
            error,
            ..Detail::default()
        }
    }
}

/// The running agent: everything the workers share.
pub struct Agent {
    cfg: Arc<Config>,
    spool: Spool,
    shipper: Shipper,
    progress: Arc<Progress>,
    notifier: Notifier,
    gate: Gate,
    device_logged: Mutex<Option<Instant>>,
    status_at: Mutex<Option<Instant>>,
    strikes: Mutex<HashMap<EpisodeId, StrikeRecord>>,
    state: Mutex<AgentState>,
    pack_opts: PackOptions,
    pack_slots: Semaphore,
    upload_slots: Semaphore,
    in_flight: Arc<Mutex<HashSet<EpisodeId>>>,
    logged_412: Mutex<HashSet<Commit>>,
    pass_errors: Mutex<Vec<String>>,
    pending: AtomicU64,
    quarantined: AtomicU64,
    /// Episodes that left `episodes/` (retired, quarantined, parked).
    moved: AtomicU64,
    /// Episodes parked in `conflict/` by this run.
    conflicts: AtomicU64,
    metrics: Arc<textfile::Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run a blocking closure on the blocking pool.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("blocking task panicked")
}

/// Marks an episode as being worked on (so sweeps leave its files alone).
struct FlightGuard {
    set: Arc<Mutex<HashSet<EpisodeId>>>,
    id: EpisodeId,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.id);
    }
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
            strikes: Mutex::default(),
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
        let deadline = match mode {
            Mode::Drain { timeout: Some(t) } => Some(Instant::now() + t),
            _ => None,
        };
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
        let mut finished = Finished {
            pending: 0,
            conflicts: 0,
            timed_out: false,
        };
        loop {
            if shutdown.stop.is_cancelled() {
                break;
            }
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
                scan::scan_with_early(&sp, SCAN_BATCH, Some(&prog.counter), Some(early))
            });
            tokio::pin!(scanning);
            // A slow scan (a huge backlog on a cold disk) hands over the
            // oldest episodes seen so far; they ship while it goes on.
            let mut early_ids = HashSet::new();
            let scanned = tokio::select! {
                // A long scan does not hold up shutdown.
                _ = shutdown.stop.cancelled() => break,
                r = &mut scanning => r,
                Ok(first) = early_rx => {
                    early_ids = first.iter().map(|r| r.id.clone()).collect();
                    let (_, r) = tokio::join!(self.process_batch(first, &shutdown), &mut scanning);
                    r
                }
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
            set.spawn(async move { a.process(ready.id, s).await });
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

    fn strikes_of(&self, id: &EpisodeId) -> StrikeRecord {
        lock(&self.strikes).get(id).cloned().unwrap_or_default()
    }

    /// One episode: commit, tarball, upload, action. Loops only to re-pack
    /// after a digest mismatch.
    async fn process(self: Arc<Self>, id: EpisodeId, shutdown: Shutdown) {
        if !lock(&self.in_flight).insert(id.clone()) {
            return;
        }
        let _flight = FlightGuard {
            set: self.in_flight.clone(),
            id: id.clone(),
        };
        loop {
            if shutdown.stop.is_cancelled() {
                return;
            }
            // Gone since the scan (shipped from an early batch, purged or
            // moved by an operator): nothing to do. The marker is looked
            // at as the scan does, not followed: a dangling symlink there
            // made the scan see the episode ready and this check see it
            // gone, so it stayed pending forever, never packed or reported.
            let marker = self.spool.episode_dir(&id).join(spool::DONE_MARKER);
            if !blocking(move || marker.symlink_metadata().is_ok()).await {
                return;
            }
            // The commit, from meta.json.
            let dir = self.spool.episode_dir(&id);
            let commit = match blocking(move || spool::read_commit(&dir)).await {
                Ok(c) => c,
                Err(MetaError::NoCommit(why)) => {
                    let detail = Detail {
                        remediation: Some(format!(
                            "write the producing commit into {}/meta.json as {{\"code_version\": {{\"commit\": \"<40 hex>\"}}}}, then run `ferry-agent quarantine retry {id}`",
                            self.spool.quarantine_dir(&id).display()
                        )),
                        ..Detail::local(why)
                    };
                    self.act(&id, None, None, Outcome::NoCommit, detail).await;
                    return;
                }
                Err(MetaError::Read { path, source }) => {
                    let d = Detail::local(fsio::describe(&path, &source));
                    self.act(&id, None, None, Outcome::LocalRead, d).await;
                    return;
                }
            };
            // The tarball: re-hash one left by an earlier run, or pack.
            let packed = {
                let _slot = tokio::select! {
                    // Stop wins over work that is also ready.
                    biased;
                    _ = shutdown.stop.cancelled() => { self.log_aborted(&id, "before packing"); return; }
                    s = self.pack_slots.acquire() => s.expect("semaphore open"),
                };
                let _active = self.progress.active();
                let (sp, i, opts, prog, stop) = (
                    self.spool.clone(),
                    id.clone(),
                    self.pack_opts,
                    self.progress.clone(),
                    shutdown.stop.clone(),
                );
                blocking(move || outbox::obtain(&sp, &i, opts, &prog.counter, &stop)).await
            };
            let (packed, tarball_file) = match packed {
                Ok(t) => {
                    if let Some(rec) = lock(&self.strikes).get_mut(&id) {
                        rec.changed_passes = 0;
                    }
                    (t.packed, t.file)
                }
                Err(e) => {
                    let Some(outcome) = classify::pack(&e) else {
                        self.not_ready(&id, &e).await;
                        return;
                    };
                    if outcome == Outcome::Aborted {
                        self.log_aborted(&id, "while packing");
                        return;
                    }
                    self.act(
                        &id,
                        Some(&commit),
                        None,
                        outcome,
                        Detail::local(e.describe()),
                    )
                    .await;
                    return;
                }
            };
            // Wait while backing off, then upload.
            tokio::select! {
                // Stop wins over work that is also ready.
                biased;
                _ = shutdown.stop.cancelled() => { self.log_aborted(&id, "before uploading"); return; }
                _ = self.gate.wait() => {}
            }
            let _slot = tokio::select! {
                // Stop wins over work that is also ready.
                biased;
                _ = shutdown.stop.cancelled() => { self.log_aborted(&id, "before uploading"); return; }
                s = self.upload_slots.acquire() => s.expect("semaphore open"),
            };
            let (result, token_problem) = {
                let _active = self.progress.active();
                let _upload = self.metrics.upload(packed.size, &self.progress);
                let tarball = self.spool.tarball(&id);
                tracing::debug!(episode = %id, size = packed.size, sha256 = %packed.sha256, "uploading");
                self.shipper
                    .put_episode(
                        &id,
                        &commit,
                        &packed.sha256,
                        (tarball_file, &tarball),
                        &shutdown.abort,
                    )
                    .await
            };
            let detail = match &result {
                UploadResult::Answered(a) => {
                    let mut d = Detail::from_answer(a);
                    if let Some(tp) = &token_problem {
                        d.error = format!("{} ({tp})", d.error);
                    }
                    d
                }
                UploadResult::Network(e) => Detail::local(format!("network: {e}")),
                UploadResult::TarballRead { path, source } => {
                    Detail::local(fsio::describe(path, source))
                }
                UploadResult::Aborted => Detail::local("aborted".into()),
            };
            let outcome = classify::upload(&result);
            let again = self
                .act(&id, Some(&commit), Some(&packed.sha256), outcome, detail)
                .await;
            if !again {
                return;
            }
        }
    }

    /// The episode changed while it was packed: not ready this pass (no
    /// action, no strike; the next pass packs it again, a scan interval
    /// later unless others moved on). It is never quarantined for it, since
    /// a producer may still be writing; but after every
    /// [`CHANGING_REPORT_EVERY`] passes in a row it is reported as an
    /// error (log, `STATUS=`, `doctor`'s last error).
    async fn not_ready(&self, id: &EpisodeId, e: &pack::PackError) {
        let passes = {
            let mut map = lock(&self.strikes);
            let rec = map.entry(id.clone()).or_default();
            rec.changed_passes += 1;
            rec.changed_passes
        };
        if passes % CHANGING_REPORT_EVERY == 0 {
            let msg = format!(
                "{id} keeps changing after done.marker ({passes} passes in a row): {}; the producer must finish writing before it writes done.marker",
                e.describe()
            );
            tracing::error!("{msg}");
            self.record_error(&msg).await;
        } else {
            tracing::info!(episode = %id, "not ready: {}; packing again next pass", e.describe());
        }
    }

    fn log_aborted(&self, id: &EpisodeId, when: &str) {
        tracing::info!(episode = %id, "aborted {when} by shutdown; the tarball (if any) stays in the outbox and ships on the next start");
    }

    /// Execute the table's action for one outcome. Returns true when the
    /// episode must be re-packed and shipped again now.
    async fn act(
        &self,
        id: &EpisodeId,
        commit: Option<&Commit>,
        sha: Option<&Sha256>,
        outcome: Outcome<'_>,
        detail: Detail,
    ) -> bool {
        let before = self.strikes_of(id);
        let action = decide(outcome, before.strikes);
        // Keep the per-episode strike counts (consecutive failures of one
        // kind; anything else resets them).
        {
            let mut map = lock(&self.strikes);
            let rec = map.entry(id.clone()).or_default();
            if action != Action::Abandon {
                rec.attempts += 1;
            }
            match action {
                Action::Repack => {
                    rec.strikes.digest_mismatch += 1;
                    rec.strikes.local_read = 0;
                }
                Action::SkipThisPass => {
                    rec.strikes.local_read += 1;
                    rec.strikes.digest_mismatch = 0;
                }
                Action::Abandon => {}
                _ => rec.strikes = Strikes::default(),
            }
            rec.last_error = detail.error.clone();
            if matches!(
                action,
                Action::Retire | Action::Conflict | Action::Quarantine(_)
            ) {
                map.remove(id);
            }
        }
        let attempts = before.attempts + 1;
        match action {
            Action::Retire => {
                let (sp, i) = (self.spool.clone(), id.clone());
                match blocking(move || retire::retire(&sp, &i)).await {
                    Ok(()) => {
                        self.gate.succeed();
                        *lock(&self.device_logged) = None;
                        tracing::info!(episode = %id, sha256 = %sha.map(|s| s.as_str()).unwrap_or(""), answer = %detail.error, "shipped");
                        self.left_episodes();
                        self.metrics.shipped();
                        let now = spool::now_wall();
                        let st = {
                            let mut st = lock(&self.state);
                            st.record_success(id.as_str(), &now);
                            st.clone()
                        };
                        self.save_state(st).await;
                    }
                    Err(e) => {
                        let msg = format!(
                            "shipped {id} but cannot retire it: {}",
                            fsio::describe(&self.spool.episode_dir(id), &e)
                        );
                        tracing::error!("{msg}");
                        self.record_error(&msg).await;
                    }
                }
                false
            }
            Action::Conflict => {
                let (sp, i, c, s, theirs) = (
                    self.spool.clone(),
                    id.clone(),
                    commit.cloned(),
                    sha.cloned(),
                    detail.existing_sha256.clone(),
                );
                let moved = blocking(move || match (c, s) {
                    (Some(c), Some(s)) => conflict::park(&sp, &i, &s, theirs.as_deref(), &c),
                    _ => Err(std::io::Error::other("conflict without commit or digest")),
                })
                .await;
                let msg = format!(
                    "{id}: the receiver holds different bytes under this id ({}); moved to conflict/, not shipped again. Compare and remove one copy, see `ferry-agent doctor`",
                    detail.error
                );
                match moved {
                    Ok(()) => {
                        self.conflicts.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("{msg}")
                    }
                    Err(e) => tracing::error!("{msg}; but moving it failed: {e}"),
                }
                self.left_episodes();
                self.metrics.conflict();
                self.record_error(&msg).await;
                false
            }
            Action::Quarantine(kind) => {
                let mut reason = Reason {
                    status_code: detail.status,
                    error: detail.error.clone(),
                    body: detail.body.clone(),
                    quarantined_at_wall: None,
                    commit: commit.map(|c| c.to_string()),
                    attempts: Some(attempts),
                    remediation: detail.remediation.clone(),
                    kind: Some(kind_name(kind).to_string()),
                    extra: Default::default(),
                };
                match kind {
                    QuarantineKind::Unreadable => {
                        reason.error = format!(
                            "unreadable {} passes in a row: {}",
                            ferry_proto::action::LOCAL_READ_LIMIT,
                            detail.error
                        );
                        reason.remediation = Some(format!(
                            "check the disk (dmesg, smartctl, fsck), repair or remove the file, then run `ferry-agent quarantine retry {id}`"
                        ));
                    }
                    QuarantineKind::RepeatedDigestMismatch => {
                        reason.error = format!(
                            "digest-mismatch {} times in a row: the bytes change between packing and the receiver (RAM, disk or a middlebox): {}",
                            ferry_proto::action::DIGEST_MISMATCH_LIMIT,
                            detail.error
                        );
                        reason.remediation = Some(format!(
                            "check the device's memory and disk and any proxy on the way, then run `ferry-agent quarantine retry {id}`"
                        ));
                    }
                    QuarantineKind::Refused => {
                        reason.remediation.get_or_insert_with(|| {
                            format!("see the error; fix the episode or the receiver limit, then run `ferry-agent quarantine retry {id}`")
                        });
                    }
                    QuarantineKind::CommitRejected | QuarantineKind::NoCommit => {}
                }
                let (sp, i, r) = (self.spool.clone(), id.clone(), reason.clone());
                let moved = blocking(move || quarantine::quarantine(&sp, &i, &r)).await;
                if let Err(e) = moved {
                    let msg = format!(
                        "cannot quarantine {id}: {}",
                        fsio::describe(&self.spool.episode_dir(id), &e)
                    );
                    tracing::error!("{msg}");
                    self.record_error(&msg).await;
                    return false;
                }
                self.left_episodes();
                self.quarantined.fetch_add(1, Ordering::Relaxed);
                self.metrics.quarantined(kind);
                let rem = reason.remediation.clone().unwrap_or_default();
                if kind == QuarantineKind::CommitRejected {
                    let first = commit.is_none_or(|c| lock(&self.logged_412).insert(c.clone()));
                    if first {
                        tracing::error!(
                            episode = %id,
                            commit = %commit.map(|c| c.as_str()).unwrap_or(""),
                            "the receiver rejects this commit (412); quarantined until it is allowed (re-checked every {}). Remediation: {rem}",
                            humantime::format_duration(self.cfg.recheck_interval)
                        );
                    } else {
                        tracing::info!(episode = %id, "quarantined: commit rejected (412), as logged before");
                    }
                } else {
                    tracing::error!(episode = %id, kind = kind_name(kind), "quarantined: {}. Remediation: {rem}", reason.error);
                }
                self.record_error(&format!(
                    "{id} quarantined ({}): {}",
                    kind_name(kind),
                    reason.error
                ))
                .await;
                false
            }
            Action::Repack => {
                tracing::warn!(episode = %id, "digest mismatch reported by the receiver; re-packing ({} of {})", before.strikes.digest_mismatch + 1, ferry_proto::action::DIGEST_MISMATCH_LIMIT);
                let (sp, i) = (self.spool.clone(), id.clone());
                if let Err(e) = blocking(move || sp.remove_tarballs(&i)).await {
                    tracing::error!(episode = %id, "cannot delete the tarball to re-pack: {e}");
                    return false;
                }
                true
            }
            Action::DeviceBackoff => {
                let delay = self.gate.fail(None);
                let due = {
                    let mut last = lock(&self.device_logged);
                    let due = last.is_none_or(|t| t.elapsed() >= self.cfg.backoff_max);
                    if due {
                        *last = Some(Instant::now());
                    }
                    due
                };
                let msg = format!(
                    "the receiver refuses this device ({}): check token_file {} holds the token printed by `ferry-receiver devices add NAME` (a revoked device needs a new one); all shipping paused, retrying in {}",
                    detail.error,
                    self.shipper.token_file().display(),
                    humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                );
                if due {
                    tracing::error!("{msg}");
                } else {
                    tracing::debug!("{msg}");
                }
                self.record_error(&msg).await;
                false
            }
            Action::Backoff { retry_after } => {
                let delay = self.gate.fail(retry_after);
                let what = if outcome == Outcome::DiskFull {
                    "device disk problem writing the outbox"
                } else {
                    "transient failure"
                };
                let msg = format!(
                    "{what} shipping {id}: {}; tarball kept, retrying in {}",
                    detail.error,
                    humantime::format_duration(Duration::from_millis(delay.as_millis() as u64))
                );
                tracing::warn!("{msg}");
                self.record_error(&msg).await;
                false
            }
            Action::SkipThisPass => {
                lock(&self.pass_errors).push(format!(
                    "{id} (strike {} of {}): {}",
                    before.strikes.local_read + 1,
                    ferry_proto::action::LOCAL_READ_LIMIT,
                    detail.error
                ));
                self.record_error(&format!("{id} unreadable: {}", detail.error))
                    .await;
                false
            }
            Action::Abandon => {
                self.log_aborted(id, "while uploading");
                false
            }
        }
    }

    fn left_episodes(&self) {
        let _ = self
            .pending
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                Some(p.saturating_sub(1))
            });
        self.moved.fetch_add(1, Ordering::Relaxed);
    }

    /// The gauges of the metrics textfile.
    fn gauges(&self) -> Gauges {
        Gauges {
            pending: self.pending.load(Ordering::Relaxed),
            quarantine: self.quarantined.load(Ordering::Relaxed),
        }
    }

    async fn record_error(&self, msg: &str) {
        self.metrics.error();
        let now = spool::now_wall();
        let st = {
            let mut st = lock(&self.state);
            st.record_error(msg, &now);
            st.clone()
        };
        self.save_state(st).await;
    }

    async fn save_state(&self, st: AgentState) {
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
        let found = blocking(
            move || -> std::io::Result<HashMap<Commit, Vec<EpisodeId>>> {
                let (ids, _) = quarantine::list_ids(&sp)?;
                let mut by_commit: HashMap<Commit, Vec<EpisodeId>> = HashMap::new();
                for id in ids {
                    let Ok(r) = quarantine::read_reason(&sp, &id) else {
                        continue;
                    };
                    if !r.is_commit_rejected() {
                        continue;
                    }
                    // Old reason files may not name the commit: read meta.json.
                    let c = r
                        .commit
                        .as_deref()
                        .and_then(|c| Commit::parse_lenient(c).ok())
                        .or_else(|| spool::read_commit(&sp.quarantine_dir(&id)).ok());
                    if let Some(c) = c {
                        by_commit.entry(c).or_default().push(id);
                    }
                }
                Ok(by_commit)
            },
        )
        .await;
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
