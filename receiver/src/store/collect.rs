//! Collection: objects that no index row references are deleted once they
//! are older than `collect_grace`, by whichever replica holds the
//! collection lease.
//!
//! An object is unreferenced when its upload lost the race for its id to
//! other bytes, when its row was refused or failed, or when a replica
//! crashed between persisting it and committing its row. The commit stage
//! never deletes (see `store::commit`): with several replicas sharing a
//! bucket, "no row references X" is only true while no replica is between
//! making X visible and committing a row for it. So a round:
//!
//! 1. lists one page of objects (outside any lock: listing is slow) and
//!    keeps those last written before now − grace;
//! 2. takes the collection lease and the write gate exclusively
//!    (`Index::collect_gate`): from here on, every batch that persisted an
//!    object has committed its rows, and no batch persists anything until
//!    the round lets go;
//! 3. asks the index which candidates are referenced, deletes the rest;
//! 4. lets go.
//!
//! An upload of bytes equal to a candidate either persisted before step 2
//! (its row is committed by then, so the candidate is referenced) or
//! persists after step 4 (it writes the object again). The grace period
//! is not what makes this safe; it keeps a just-stored object out of the
//! listing, so that rounds rarely find anything to check, and gives an
//! operator time to look at what a failed upload left.
//!
//! The gate is an advisory lock of a database session, so it lasts only
//! as long as that session: a failover or a network cut ends it while a
//! delete may still be on the wire, and S3 has no conditional delete. So
//! the gate is not the fence; it keeps refusals rare. The fence is
//! `objects_being_collected`: each chunk of candidates is marked there and
//! committed before its delete is sent, and the index is asked again which
//! of them are referenced. A row committed before the mark is seen by that
//! second question and keeps its object; a row after the mark is refused by
//! the insert (503, the device retries) until the delete is confirmed or the
//! mark outlives any request ([`COLLECTING_FOR`]).
//!
//! Staging left by a crash (a local `.part` file, an S3 multipart upload)
//! is removed in the same rounds, once idle for longer than any upload in
//! progress can be.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_proto::Sha256;
use tokio_util::sync::CancellationToken;

use super::objects::Objects;
use super::{unix_now, Index};

/// Objects looked at per round.
pub const PAGE: usize = 1000;

/// Objects deleted per request, each request only after the gate is proven
/// still held.
pub const DELETE_CHUNK: usize = 100;

/// How long an object marked for deletion refuses new rows unless its
/// delete is confirmed first: longer than any delete request can live (the
/// S3 client gives up on a request after 60 s and retries within 10 s).
pub const COLLECTING_FOR: Duration = Duration::from_secs(600);

/// Staging idle for this long belongs to no live upload: an upload makes
/// progress at least every `body_read_timeout` (30 s by default).
pub const STAGING_IDLE: Duration = Duration::from_secs(15 * 60);

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    /// Objects old enough to be candidates.
    pub candidates: usize,
    /// Candidates deleted (no row referenced them).
    pub deleted: usize,
    /// Whether another replica held the lease (nothing was checked).
    pub leased_elsewhere: bool,
}

/// The collector of one replica.
pub struct Collector {
    pub index: Arc<dyn Index>,
    pub objects: Arc<dyn Objects>,
    pub grace: Duration,
    /// Where the next round's page starts; `None`: at the beginning.
    cursor: Option<Sha256>,
}

/// Why a round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RoundError {
    #[error(transparent)]
    Store(#[from] super::objects::StoreError),
    #[error(transparent)]
    Index(#[from] super::IndexError),
}

impl Collector {
    pub fn new(index: Arc<dyn Index>, objects: Arc<dyn Objects>, grace: Duration) -> Self {
        Self {
            index,
            objects,
            grace,
            cursor: None,
        }
    }

    /// Runs rounds every `interval` until `shutdown`; a failed round is
    /// logged and the next one tries again.
    pub async fn run(
        mut self,
        interval: Duration,
        shutdown: CancellationToken,
        deleted_total: prometheus_client::metrics::counter::Counter,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
            match self.round().await {
                Ok(r) => {
                    deleted_total.inc_by(r.deleted as u64);
                    if r.deleted > 0 {
                        tracing::info!(
                            deleted = r.deleted,
                            candidates = r.candidates,
                            "collected unreferenced objects"
                        );
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a collection round failed; the next one tries again")
                }
            }
            let idle = self.grace.max(STAGING_IDLE);
            let before = SystemTime::now()
                .checked_sub(idle)
                .unwrap_or(SystemTime::UNIX_EPOCH);
            let swept = self.objects.sweep_staging(before, shutdown.clone()).await;
            if swept.removed > 0 || swept.failed > 0 {
                tracing::info!(
                    removed = swept.removed,
                    failed = swept.failed,
                    "removed abandoned staging"
                );
            }
        }
    }

    /// One round over the next page of the listing.
    pub async fn round(&mut self) -> Result<Round, RoundError> {
        let page = self.objects.list(self.cursor.as_ref(), PAGE).await?;
        self.cursor = match page.len() < PAGE {
            true => None,
            false => page.last().map(|l| l.sha256.clone()),
        };
        let cutoff = SystemTime::now()
            .checked_sub(self.grace)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        let candidates: Vec<Sha256> = page
            .into_iter()
            .filter(|l| l.modified <= cutoff)
            .map(|l| l.sha256)
            .collect();
        let mut round = Round {
            candidates: candidates.len(),
            ..Round::default()
        };
        if candidates.is_empty() {
            return Ok(round);
        }
        let Some(mut gate) = self.index.collect_gate().await? else {
            round.leased_elsewhere = true;
            return Ok(round);
        };
        let mut deleted = Vec::new();
        let result = self
            .delete_unreferenced(&mut gate, &candidates, &mut deleted)
            .await;
        if let Err(e) = gate.release().await {
            self.gate_lost(&deleted, &e).await;
        }
        result?;
        round.deleted = deleted.len();
        Ok(round)
    }

    /// Deletes the candidates no row references, a chunk at a time, each
    /// chunk only after proving the gate is still held: a gate lost (its
    /// database session ended) lets other replicas persist and index the
    /// same bytes again, and a delete sent after that would take an
    /// acknowledged episode's object.
    async fn delete_unreferenced(
        &self,
        gate: &mut super::Gate,
        candidates: &[Sha256],
        deleted: &mut Vec<Sha256>,
    ) -> Result<(), RoundError> {
        let referenced = self.index.referenced(candidates).await?;
        let unreferenced: Vec<Sha256> = candidates
            .iter()
            .filter(|s| !referenced.contains(*s))
            .cloned()
            .collect();
        for chunk in unreferenced.chunks(DELETE_CHUNK) {
            gate.check().await?;
            // The fence: marked (and committed) before anything is sent,
            // then asked again. A row committed before the mark is seen by
            // the second question and keeps its object; a row after it is
            // refused until the mark goes. So a delete that lands late (its
            // gate lost on the way) takes no acknowledged episode's object.
            let now = unix_now();
            self.index
                .mark_collecting(
                    chunk,
                    now.saturating_add(COLLECTING_FOR.as_secs() as i64),
                    now,
                )
                .await?;
            let still = self.index.referenced(chunk).await?;
            let doomed: Vec<Sha256> = chunk
                .iter()
                .filter(|s| !still.contains(*s))
                .cloned()
                .collect();
            if !doomed.is_empty() {
                self.objects.delete(&doomed).await?;
            }
            // Done (an error above leaves the marks to their time): rows of
            // these bytes may be stored again.
            self.index.unmark_collecting(chunk).await?;
            deleted.extend(doomed);
        }
        Ok(())
    }

    /// The gate was lost while this round deleted: a chunk in flight when it
    /// went may have raced an upload of the same bytes on another replica.
    /// Nothing can bring those bytes back; say loudly which rows now point
    /// at a deleted object (`episodes verify` names them too), so that an
    /// operator can have the devices ship them again.
    async fn gate_lost(&self, deleted: &[Sha256], e: &super::IndexError) {
        if deleted.is_empty() {
            tracing::warn!(error = %e, "the collection gate was lost; nothing was deleted after it");
            return;
        }
        match self.index.referenced(deleted).await {
            Ok(now) if now.is_empty() => tracing::warn!(
                error = %e, deleted = deleted.len(),
                "the collection gate was lost during a round; no deleted object is referenced"
            ),
            Ok(now) => {
                let shas: Vec<String> = now.iter().map(|s| s.to_string()).collect();
                tracing::error!(
                    error = %e, objects = ?shas,
                    "the collection gate was lost during a round and rows committed since reference objects it deleted; run `ferry-receiver episodes verify`"
                );
            }
            Err(again) => tracing::error!(
                error = %e, recheck = %again, deleted = deleted.len(),
                "the collection gate was lost during a round and the index cannot be asked which deleted objects are referenced now"
            ),
        }
    }
}
