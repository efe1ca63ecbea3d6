//! Removal of temporary upload files left by a crash (Never again §4): it
//! runs after the server is ready, on the blocking pool, in bounded batches,
//! and only touches `*.part` files older than this process's start — every
//! upload of this process is younger.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use tokio_util::sync::CancellationToken;

use crate::store::objects::local::TEMP_SUFFIX;

/// Directory entries looked at per blocking call.
pub const BATCH: usize = 1000;

pub use crate::store::objects::Swept;

/// Sweeps `tmp` of `*.part` files modified before `before`, in batches of
/// [`BATCH`] entries, stopping early on `shutdown`. Failures are counted and
/// logged once, with the first path and error.
pub async fn sweep_temp(tmp: PathBuf, before: SystemTime, shutdown: CancellationToken) -> Swept {
    let dir = tmp.clone();
    let mut iter = match tokio::task::spawn_blocking(move || std::fs::read_dir(&dir)).await {
        Ok(Ok(it)) => it,
        Ok(Err(e)) => {
            tracing::error!(path = %tmp.display(), error = %e, "cannot list the temporary directory; not sweeping");
            return Swept::default();
        }
        Err(_) => return Swept::default(),
    };
    let mut total = Swept::default();
    let mut first_error: Option<String> = None;
    loop {
        if shutdown.is_cancelled() {
            break;
        }
        let batch = tokio::task::spawn_blocking(move || {
            let r = sweep_batch(&mut iter, before);
            (iter, r)
        })
        .await;
        let Ok((it, (swept, more, err))) = batch else {
            break;
        };
        iter = it;
        total.removed += swept.removed;
        total.failed += swept.failed;
        if first_error.is_none() {
            first_error = err;
        }
        if !more {
            break;
        }
        tokio::task::yield_now().await;
    }
    if let Some(e) = first_error {
        tracing::error!(
            failed = total.failed,
            first = e,
            "some left-over temporary files could not be removed"
        );
    }
    if total.removed > 0 {
        tracing::info!(removed = total.removed, path = %tmp.display(), "removed temporary files left by an earlier run");
    }
    total
}

/// One batch: returns what it did, whether entries remain, and the first
/// error.
fn sweep_batch(iter: &mut std::fs::ReadDir, before: SystemTime) -> (Swept, bool, Option<String>) {
    let mut swept = Swept::default();
    let mut first_error = None;
    for _ in 0..BATCH {
        let Some(entry) = iter.next() else {
            return (swept, false, first_error);
        };
        let path = match entry {
            Ok(e) => e.path(),
            Err(e) => {
                swept.failed += 1;
                first_error.get_or_insert_with(|| format!("reading the directory: {e}"));
                continue;
            }
        };
        if !is_temp(&path) {
            continue;
        }
        let old = std::fs::symlink_metadata(&path)
            .and_then(|m| m.modified())
            .map(|t| t < before);
        match old {
            Ok(true) => match std::fs::remove_file(&path) {
                Ok(()) => swept.removed += 1,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    swept.failed += 1;
                    first_error.get_or_insert_with(|| format!("{}: {e}", path.display()));
                }
            },
            Ok(false) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                swept.failed += 1;
                first_error.get_or_insert_with(|| format!("{}: {e}", path.display()));
            }
        }
    }
    (swept, true, first_error)
}

fn is_temp(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.ends_with(TEMP_SUFFIX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn removes_only_old_part_files_across_batches() {
        let dir = tempfile::tempdir().unwrap();
        for i in 0..(BATCH + 10) {
            std::fs::write(dir.path().join(format!("{i}.part")), b"x").unwrap();
        }
        std::fs::write(dir.path().join("keep.txt"), b"x").unwrap();
        let cutoff = SystemTime::now() + Duration::from_secs(1);
        // A file newer than the cut-off (an upload of this process) stays.
        std::thread::sleep(Duration::from_millis(1100));
        std::fs::write(dir.path().join("new.part"), b"x").unwrap();
        let s = sweep_temp(dir.path().to_owned(), cutoff, CancellationToken::new()).await;
        assert_eq!(
            s,
            Swept {
                removed: (BATCH + 10) as u64,
                failed: 0
            }
        );
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        left.sort();
        assert_eq!(left, ["keep.txt", "new.part"]);
    }
}
