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
//! Staging left by a crash (a local `.part` file, an S3 multipart upload)
//! is removed in the same rounds, once idle for longer than any upload in
//! progress can be.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use ferry_proto::Sha256;
use tokio_util::sync::CancellationToken;

use super::objects::Objects;
use super::Index;

/// Objects looked at per round.
pub const PAGE: usize = 1000;

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
        let Some(gate) = self.index.collect_gate().await? else {
            round.leased_elsewhere = true;
            return Ok(round);
        };
        let result = self.delete_unreferenced(&candidates).await;
        // Deletes done under the gate stay done even if letting go fails.
        if let Err(e) = gate.release().await {
            tracing::debug!(error = %e, "letting go of the collection gate");
        }
        round.deleted = result?;
        Ok(round)
    }

    async fn delete_unreferenced(&self, candidates: &[Sha256]) -> Result<usize, RoundError> {
        let referenced = self.index.referenced(candidates).await?;
        let unreferenced: Vec<Sha256> = candidates
            .iter()
            .filter(|s| !referenced.contains(*s))
            .cloned()
            .collect();
        if !unreferenced.is_empty() {
            self.objects.delete(&unreferenced).await?;
        }
        Ok(unreferenced.len())
    }
}
