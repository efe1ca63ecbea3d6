//! One episode's journey: the scan found it → `meta.json` names its commit
//! → the tarball is packed (or a left-over one re-hashed) → the upload →
//! what happened, classified → the action `proto::decide` chose, executed.
//!
//! The journey is a closed state enum, [`Step`]; each state has one
//! function that does its part and returns the next state, and [`process`]
//! runs them until [`Step::Done`]. Only a re-pack after a digest mismatch
//! goes back to the start. Where the action is executed: `act.rs`, which
//! hands the moves to `retire.rs`, `quarantine.rs` and `conflict.rs`.

mod act;
mod detail;
mod tally;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use ferry_proto::{Commit, EpisodeId, Outcome, Sent, Sha256};
use tokio::sync::SemaphorePermit;

pub(crate) use detail::Detail;
pub(crate) use tally::Tally;

use crate::outbox::{self, Tarball};
use crate::pack::PackError;
use crate::resumable::{Resumable, Shipment};
use crate::run::{blocking, lock, Agent, Shutdown};
use crate::ship::UploadResult;
use crate::spool::{self, MetaError};
use crate::{classify, fsio};

/// An episode found changing while packed this many passes in a row is
/// reported as an error (and again every as many passes).
pub const CHANGING_REPORT_EVERY: u32 = 10;

/// Where one episode's journey is.
enum Step<'a> {
    /// Handed over by the scan: is it still there, and what is its commit?
    Found,
    /// `meta.json` names the commit: obtain the tarball.
    Committed { commit: Commit },
    /// The tarball is open: wait for the gate and a slot, then upload it.
    Packed { commit: Commit, tarball: Tarball },
    /// An attempt ended: decide and execute the action.
    Happened(Box<Happened<'a>>),
    /// It changed while it was packed: not ready this pass.
    NotReady(PackError),
    /// Shutdown stopped the journey (when, for the log line).
    Aborted(&'static str),
    /// Nothing more to do this pass.
    Done,
}

/// What happened to one attempt, with what to say about it.
struct Happened<'a> {
    commit: Option<Commit>,
    what: What,
    detail: Detail,
    /// The upload slot of an upload, held until its action is executed
    /// (the next upload waits for this one's retire).
    _slot: Option<SemaphorePermit<'a>>,
}

/// The thing classified: an upload's result with the sha256 of the
/// tarball it sent (its outcome borrows both, and the answer's parsed
/// body) or an outcome decided locally.
enum What {
    Upload {
        result: UploadResult,
        sha256: Sha256,
    },
    Local(Outcome<'static>),
}

impl What {
    fn outcome<'s>(&'s self, id: &'s EpisodeId) -> Outcome<'s> {
        match self {
            What::Upload { result, sha256 } => classify::upload(
                result,
                Sent {
                    episode_id: id,
                    sha256,
                },
            ),
            What::Local(o) => *o,
        }
    }

    /// The sha256 of the tarball an upload sent.
    fn sha256(&self) -> Option<&Sha256> {
        match self {
            What::Upload { sha256, .. } => Some(sha256),
            What::Local(_) => None,
        }
    }
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

/// One episode, from the scan to the action. An episode already on its
/// way (from an early batch) is left to that journey.
pub(crate) async fn process(agent: Arc<Agent>, id: EpisodeId, shutdown: Shutdown) {
    if !lock(&agent.in_flight).insert(id.clone()) {
        return;
    }
    let _flight = FlightGuard {
        set: agent.in_flight.clone(),
        id: id.clone(),
    };
    let mut step = Step::Found;
    loop {
        step = match step {
            Step::Found => found(&agent, &id, &shutdown).await,
            Step::Committed { commit } => packed(&agent, &id, commit, &shutdown).await,
            Step::Packed { commit, tarball } => {
                upload(&agent, &id, commit, tarball, &shutdown).await
            }
            Step::Happened(h) => act::act(&agent, &id, h).await,
            Step::NotReady(e) => {
                not_ready(&agent, &id, &e).await;
                Step::Done
            }
            Step::Aborted(when) => {
                log_aborted(&id, when);
                Step::Done
            }
            Step::Done => return,
        };
    }
}

/// Still there (not shipped from an early batch, purged or moved by an
/// operator since the scan)? Then its commit, from `meta.json`.
async fn found<'a>(agent: &'a Agent, id: &EpisodeId, shutdown: &Shutdown) -> Step<'a> {
    if shutdown.stop.is_cancelled() {
        return Step::Done;
    }
    // The marker is looked at as the scan does, not followed: a dangling
    // symlink there made the scan see the episode ready and this check see
    // it gone, so it stayed pending forever, never packed or reported.
    let marker = agent.spool.episode_dir(id).join(spool::DONE_MARKER);
    if !blocking(move || marker.symlink_metadata().is_ok()).await {
        return Step::Done;
    }
    let dir = agent.spool.episode_dir(id);
    let local = |outcome, detail| {
        Step::Happened(Box::new(Happened {
            commit: None,
            what: What::Local(outcome),
            detail,
            _slot: None,
        }))
    };
    match blocking(move || spool::read_commit(&dir)).await {
        Ok(commit) => Step::Committed { commit },
        Err(MetaError::NoCommit(why)) => local(Outcome::NoCommit, Detail::local(why)),
        Err(MetaError::Read { path, source }) => local(
            Outcome::LocalRead,
            Detail::local(fsio::describe(&path, &source)),
        ),
    }
}

/// The tarball: re-hash one left by an earlier run, or pack, one at a
/// time.
async fn packed<'a>(
    agent: &'a Agent,
    id: &EpisodeId,
    commit: Commit,
    shutdown: &Shutdown,
) -> Step<'a> {
    let obtained = {
        let _slot = tokio::select! {
            // Stop wins over work that is also ready.
            biased;
            _ = shutdown.stop.cancelled() => return Step::Aborted("before packing"),
            s = agent.pack_slots.acquire() => s.expect("semaphore open"),
        };
        let _active = agent.progress.active();
        let (sp, i, opts, prog, stop) = (
            agent.spool.clone(),
            id.clone(),
            agent.pack_opts,
            agent.progress.clone(),
            shutdown.stop.clone(),
        );
        blocking(move || outbox::obtain(&sp, &i, opts, &prog.counter, &stop)).await
    };
    match obtained {
        Ok(tarball) => {
            agent.tally.packed(id);
            Step::Packed { commit, tarball }
        }
        Err(e) => match classify::pack(&e) {
            None => Step::NotReady(e),
            Some(Outcome::Aborted) => Step::Aborted("while packing"),
            Some(outcome) => Step::Happened(Box::new(Happened {
                commit: Some(commit),
                what: What::Local(outcome),
                detail: Detail::local(e.describe()),
                _slot: None,
            })),
        },
    }
}

/// Wait while backing off and for an upload slot, then upload.
async fn upload<'a>(
    agent: &'a Agent,
    id: &EpisodeId,
    commit: Commit,
    tarball: Tarball,
    shutdown: &Shutdown,
) -> Step<'a> {
    tokio::select! {
        // Stop wins over work that is also ready.
        biased;
        _ = shutdown.stop.cancelled() => return Step::Aborted("before uploading"),
        _ = agent.gate.wait() => {}
    }
    let slot = tokio::select! {
        // Stop wins over work that is also ready.
        biased;
        _ = shutdown.stop.cancelled() => return Step::Aborted("before uploading"),
        s = agent.upload_slots.acquire() => s.expect("semaphore open"),
    };
    let Tarball { packed, file } = tarball;
    let (result, token_problem) = {
        let _active = agent.progress.active();
        let _upload = agent.metrics.upload(packed.size, &agent.progress);
        let path = agent.spool.tarball(id);
        tracing::debug!(episode = %id, size = packed.size, sha256 = %packed.sha256, "uploading");
        let file = if packed.size >= agent.cfg.resumable_threshold {
            let shipment = Shipment {
                spool: &agent.spool,
                id,
                commit: &commit,
                sha256: &packed.sha256,
                tarball: &path,
            };
            match agent
                .shipper
                .tus_episode(&shipment, file, &shutdown.abort)
                .await
            {
                (Resumable::Done(result), problem) => Err((result, problem)),
                (Resumable::Unsupported(file), _) => {
                    tracing::info!(episode = %id, "the receiver has no resumable uploads; using PUT");
                    Ok(file)
                }
            }
        } else {
            Ok(file)
        };
        match file {
            Err(done) => done,
            Ok(file) => {
                agent
                    .shipper
                    .put_episode(id, &commit, &packed.sha256, (file, &path), &shutdown.abort)
                    .await
            }
        }
    };
    Step::Happened(Box::new(Happened {
        commit: Some(commit),
        detail: Detail::of_upload(&result, token_problem.as_deref()),
        what: What::Upload {
            result,
            sha256: packed.sha256,
        },
        _slot: Some(slot),
    }))
}

/// The episode changed while it was packed: not ready this pass (no
/// action, no strike; the next pass packs it again, a scan interval
/// later unless others moved on). It is never quarantined for it, since
/// a producer may still be writing; but after every
/// [`CHANGING_REPORT_EVERY`] passes in a row it is reported as an
/// error (log, `STATUS=`, `doctor`'s last error).
async fn not_ready(agent: &Agent, id: &EpisodeId, e: &PackError) {
    let passes = agent.tally.changed(id);
    if passes % CHANGING_REPORT_EVERY == 0 {
        let msg = format!(
            "{id} keeps changing after done.marker ({passes} passes in a row): {}; the producer must finish writing before it writes done.marker",
            e.describe()
        );
        tracing::error!("{msg}");
        agent.record_error(&msg).await;
    } else {
        tracing::info!(episode = %id, "not ready: {}; packing again next pass", e.describe());
    }
}

fn log_aborted(id: &EpisodeId, when: &str) {
    tracing::info!(episode = %id, "aborted {when} by shutdown; the tarball (if any) stays in the outbox and ships on the next start");
}
