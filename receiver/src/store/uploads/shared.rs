//! Resumable uploads on the shared object store (S3; SPEC §7, §8): the
//! state is a row of the index ([`SharedUpload`]) and the bytes are
//! multipart parts plus one incomplete-part object ([`PartStore`]), so that
//! any replica goes on with any upload, after a dropped link or a `kill -9`
//! of the replica that had it.
//!
//! One PATCH of an upload at a time, across replicas: a PATCH takes the
//! row's lease ([`Lease`]) and saves its progress only while it holds it
//! (the save is conditional on the lease), renewing it as it goes. A lease
//! whose holder died is free again [`LEASE_FOR`] after its last renewal.
//!
//! The order of every save is the crash-safety argument: a part (or the
//! tail object) is uploaded first, then the row says it is there, then the
//! offset is answered. A crash between the two leaves bytes the row does
//! not name; the next PATCH, which starts from the row, writes them again
//! (the same part number, the same tail key).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use crate::store::objects::PartStore;
use crate::store::{unix_now, Index, IndexError, Leased, SharedUpload};

/// A lease lasts this long after its last renewal: how long an upload
/// whose PATCH died with its replica waits before another PATCH may go on.
pub const LEASE_FOR: Duration = Duration::from_secs(30);

/// A PATCH renews its lease at least this often.
pub const RENEW_EVERY: Duration = Duration::from_secs(10);

/// How soon a PATCH that waits for another's lease asks again, at first
/// and at most.
const LEASE_POLL: Duration = Duration::from_millis(100);
const LEASE_POLL_MAX: Duration = Duration::from_secs(2);

/// Expired uploads reclaimed per pass at most.
const RECLAIM_BATCH: u64 = 100;

/// A held lease on one upload's row; let go when dropped (a task of its
/// own), or when it runs out.
pub struct Lease {
    index: Arc<dyn Index>,
    pub id: String,
    pub token: String,
    released: bool,
}

impl Lease {
    /// Unix seconds until which a lease taken or renewed now holds.
    pub fn until() -> i64 {
        unix_now().saturating_add(LEASE_FOR.as_secs() as i64)
    }

    /// Takes the lease of upload `id`, waiting up to `wait` for another
    /// PATCH to let go: the row as of taking it, or what stood in the way.
    pub async fn take(
        index: &Arc<dyn Index>,
        id: &str,
        wait: Duration,
    ) -> Result<Result<(Lease, SharedUpload), Leased>, IndexError> {
        let token = super::new_id();
        let deadline = tokio::time::Instant::now() + wait;
        // A waiting PATCH asks again less and less often: each ask is a
        // write to the index.
        let mut pause = LEASE_POLL;
        loop {
            match index
                .lease_upload(id, &token, unix_now(), Self::until())
                .await?
            {
                Leased::Taken(row) => {
                    let lease = Lease {
                        index: index.clone(),
                        id: id.to_owned(),
                        token,
                        released: false,
                    };
                    return Ok(Ok((lease, *row)));
                }
                Leased::Held if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(LEASE_POLL_MAX);
                }
                other => return Ok(Err(other)),
            }
        }
    }

    /// Lets go now (if this is dropped before it is done, the drop lets
    /// go instead).
    pub async fn release(mut self) {
        if let Err(e) = self.index.release_upload(&self.id, &self.token).await {
            tracing::warn!(upload = self.id, error = %e, "cannot let go of an upload's lease; it runs out by itself");
        }
        self.released = true;
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (index, id, token) = (self.index.clone(), self.id.clone(), self.token.clone());
        if let Ok(h) = tokio::runtime::Handle::try_current() {
            h.spawn(async move {
                let _ = index.release_upload(&id, &token).await;
            });
        }
    }
}

/// Removes an upload's bytes from the store: its multipart upload and its
/// tail. Failures are logged (a bucket lifecycle rule for incomplete
/// multipart uploads is the backstop; see README).
pub async fn discard_bytes(parts: &dyn PartStore, up: &SharedUpload) {
    if let Err(e) = parts.abort(&up.sha256, &up.multipart).await {
        tracing::warn!(upload = up.id, error = %e, "cannot abort a resumable upload's multipart upload");
    }
    let tail = &up.progress.tail_key;
    if !tail.is_empty() {
        if let Err(e) = parts.delete_tail(tail).await {
            tracing::warn!(upload = up.id, error = %e, "cannot delete a resumable upload's incomplete part; the sweep will");
        }
    }
}

/// Removes an upload whose lease is held: its bytes, then its row.
pub async fn remove(
    index: &Arc<dyn Index>,
    parts: &dyn PartStore,
    up: &SharedUpload,
) -> Result<(), IndexError> {
    discard_bytes(parts, up).await;
    index.delete_upload(&up.id).await.map(drop)
}

/// One pass of the reclaimer: expired uploads whose lease is free are
/// removed, a batch at a time; the number removed.
pub async fn reclaim_pass(
    index: &Arc<dyn Index>,
    parts: &dyn PartStore,
    shutdown: &CancellationToken,
) -> Result<u64, IndexError> {
    let mut removed = 0;
    loop {
        let expired = index.expired_uploads(unix_now(), RECLAIM_BATCH).await?;
        let full = expired.len() as u64 == RECLAIM_BATCH;
        let mut progress = false;
        for up in expired {
            if shutdown.is_cancelled() {
                return Ok(removed);
            }
            // A PATCH that holds the lease renews the expiry when it saves.
            let Ok((lease, row)) = Lease::take(index, &up.id, Duration::ZERO).await? else {
                continue;
            };
            if row.progress.expires >= unix_now() {
                lease.release().await;
                continue;
            }
            remove(index, parts, &row).await?;
            tracing::info!(
                upload = row.id,
                device = row.device,
                received = row.progress.received,
                "expired resumable upload reclaimed"
            );
            removed += 1;
            progress = true;
        }
        if !full || !progress {
            return Ok(removed);
        }
    }
}

/// Incomplete parts that no upload's row names are deleted once this old:
/// written by a PATCH that lost its lease, or left by a replica that
/// died between writing one and saving the row (a live PATCH saves within
/// one request of writing).
pub const ORPHAN_AGE: Duration = Duration::from_secs(600);

/// Deletes incomplete parts no row names, older than `age`; how many.
pub async fn sweep_tails(
    index: &Arc<dyn Index>,
    parts: &dyn PartStore,
    age: Duration,
    shutdown: &CancellationToken,
) -> Result<u64, IndexError> {
    let listed = match parts.list_tails().await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list incomplete parts");
            return Ok(0);
        }
    };
    let before = std::time::SystemTime::now()
        .checked_sub(age)
        .unwrap_or(std::time::UNIX_EPOCH);
    let mut removed = 0;
    for (upload, name, written) in listed {
        if shutdown.is_cancelled() {
            break;
        }
        if written > before {
            continue;
        }
        let named = index
            .upload(&upload)
            .await?
            .is_some_and(|row| row.progress.tail_key == name);
        if named {
            continue;
        }
        match parts.delete_tail(&name).await {
            Ok(()) => removed += 1,
            Err(e) => {
                tracing::warn!(error = %e, tail = name, "cannot delete an incomplete part no upload names")
            }
        }
    }
    Ok(removed)
}

/// Runs [`reclaim_pass`] every [`super::reclaim::interval`] of `expiry`
/// until `shutdown`, counting reclaimed uploads in `expired`.
pub async fn reclaim(
    index: Arc<dyn Index>,
    parts: Arc<dyn PartStore>,
    expiry: Duration,
    expired: Counter,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(super::reclaim::interval(expiry)) => {}
        }
        match reclaim_pass(&index, parts.as_ref(), &shutdown).await {
            Ok(n) => {
                expired.inc_by(n);
            }
            Err(e) => tracing::warn!(error = %e, "reclaiming expired resumable uploads"),
        }
        match sweep_tails(&index, parts.as_ref(), ORPHAN_AGE, &shutdown).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(tails = n, "incomplete parts no upload names deleted"),
            Err(e) => tracing::warn!(error = %e, "sweeping incomplete parts"),
        }
    }
}
