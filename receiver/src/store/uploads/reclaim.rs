//! Reclaiming expired uploads (SPEC §8 `upload_expiry`): a task started
//! after READY that, every so often, walks `<data_dir>/uploads/` in bounded
//! batches on the blocking pool and removes every upload past its
//! `expires`, a `.bin` whose record is gone, and temporary files of record
//! writes that a crash left, once older than the expiry.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use tokio_util::sync::CancellationToken;

use super::{valid_id, Uploads};
use crate::store::unix_now;

/// Directory entries looked at per blocking call.
pub const BATCH: usize = 1000;

/// How often the directory is walked: half the expiry, within [100 ms, 1 min].
pub fn interval(expiry: Duration) -> Duration {
    (expiry / 2).clamp(Duration::from_millis(100), Duration::from_secs(60))
}

/// Runs until `shutdown`, counting reclaimed uploads in `expired`.
pub async fn run(
    uploads: Arc<Uploads>,
    expiry: Duration,
    expired: Counter,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval(expiry)) => {}
        }
        let n = pass(&uploads, expiry, &shutdown).await;
        if n > 0 {
            expired.inc_by(n);
            tracing::info!(uploads = n, "expired uploads reclaimed");
        }
    }
}

/// One walk of the directory; returns how many uploads were reclaimed.
pub async fn pass(uploads: &Arc<Uploads>, expiry: Duration, shutdown: &CancellationToken) -> u64 {
    let dir = uploads.dir().to_owned();
    let mut iter = match tokio::task::spawn_blocking(move || std::fs::read_dir(dir)).await {
        Ok(Ok(it)) => it,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => return 0,
        Ok(Err(e)) => {
            tracing::error!(path = %uploads.dir().display(), error = %e, "cannot list uploads; not reclaiming");
            return 0;
        }
        Err(_) => return 0,
    };
    let mut total = 0;
    while !shutdown.is_cancelled() {
        let ups = uploads.clone();
        let batch = tokio::task::spawn_blocking(move || {
            let r = batch(&ups, &mut iter, expiry);
            (iter, r)
        })
        .await;
        let Ok((it, (n, more))) = batch else {
            break;
        };
        iter = it;
        total += n;
        if !more {
            break;
        }
    }
    total
}

/// Up to [`BATCH`] entries (blocking): how many uploads were reclaimed,
/// and whether entries are left.
fn batch(uploads: &Uploads, iter: &mut std::fs::ReadDir, expiry: Duration) -> (u64, bool) {
    let now = unix_now();
    let mut reclaimed = 0;
    for _ in 0..BATCH {
        let Some(entry) = iter.next() else {
            return (reclaimed, false);
        };
        let Ok(entry) = entry else { continue };
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        match name.split_once('.') {
            Some((id, "json")) if valid_id(id) => {
                if reclaim(uploads, id, now) {
                    reclaimed += 1;
                }
            }
            // A `.bin` without its record, or a record write's left-over.
            Some((id, "bin")) if valid_id(id) && uploads.json(id).exists() => {}
            _ => remove_if_older(&path, expiry),
        }
    }
    (reclaimed, true)
}

/// Removes upload `id` if it expired and no PATCH holds it.
fn reclaim(uploads: &Uploads, id: &str, now: i64) -> bool {
    let live = uploads.live(id);
    let Ok(_held) = live.try_lock() else {
        return false;
    };
    let expired = match uploads.read_meta(id) {
        Ok(Some(m)) => m.expired(now),
        Ok(None) => false,
        Err(e) => {
            tracing::warn!(upload = id, error = %e, "cannot read an upload's record");
            false
        }
    };
    if !expired {
        return false;
    }
    let r = uploads.remove_now(id);
    uploads.forget(id);
    match r {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(upload = id, error = %e, "cannot reclaim an expired upload");
            false
        }
    }
}

fn remove_if_older(path: &Path, age: Duration) {
    let old = std::fs::symlink_metadata(path)
        .and_then(|m| m.modified())
        .is_ok_and(|t| SystemTime::now().duration_since(t).unwrap_or_default() > age);
    if old {
        if let Err(e) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a left-over upload file");
        }
    }
}
