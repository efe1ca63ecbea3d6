//! The commit stage: verified uploads become durable, placed and indexed,
//! a batch at a time.
//!
//! "201 means durable" used to cost, per upload, an fsync of its file, an
//! fsync of its directory and a synced commit of the index. With many
//! devices uploading small episodes at once, those flushes were the
//! receiver's limit. Now one task takes every verified upload waiting (up
//! to [`MAX_BATCH`]) and, for the whole batch:
//!
//! 1. makes every temporary file durable (uploads of at least
//!    [`SYNC_ALONE`](super::objects::SYNC_ALONE) were already fsynced by
//!    their writer): under load, with one `syncfs` for the whole batch and
//!    then a read of each file's own writeback error, so a failed page
//!    fails its own upload only (a failed `syncfs` falls back to an fsync
//!    of each file); a batch of fewer than
//!    [`SYNCFS_MIN`](super::objects::SYNCFS_MIN) files is fsynced file by
//!    file, so a quiet receiver never waits for other programs' writes;
//! 2. renames each file to its content-addressed name;
//! 3. makes those renames durable: an fsync of each changed directory, or
//!    one more `syncfs` when there are many; a directory whose new entry
//!    could not be synced is synced again with every batch until it is;
//! 4. inserts every row in one index transaction (one synced commit; see
//!    `Index::insert_episodes`); a
//!    batch that fails because of its rows is retried row by row, so each
//!    upload gets its own answer and one bad row cannot fail its
//!    neighbours, while a batch that fails because the index cannot be
//!    reached answers every upload with that at once;
//! 5. deletes an object that no row references (a lost race for its id
//!    with other bytes, a failed insert), and answers each upload.
//!
//! Each upload is still answered only after its object and its row are
//! durable; only the flushes are shared. Because one task does every
//! rename, insert and delete, an object is never deleted while another
//! upload of the same bytes is between its rename and its insert.

use std::path::PathBuf;
use std::sync::Arc;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::{mpsc, oneshot};

use super::objects::{blocking, ObjectStore, StoreError, Written};
use super::{Index, IndexError, Inserted, NewEpisode};

/// Uploads in one batch at most.
pub const MAX_BATCH: usize = 256;

/// What the commit stage reports about its batches (exported as metrics;
/// cheap clones of the same histograms).
#[derive(Debug, Clone)]
pub struct CommitStats {
    /// Uploads per batch.
    pub batch_size: Histogram,
    /// Steps 1–3 of a batch: its files and their names made durable.
    pub durable_seconds: Histogram,
    /// Step 4 of a batch: the index transaction.
    pub index_seconds: Histogram,
}

impl Default for CommitStats {
    fn default() -> Self {
        Self {
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 9)),
            // 0.5 ms .. ~4 s
            durable_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
            index_seconds: Histogram::new(exponential_buckets(0.0005, 2.0, 14)),
        }
    }
}

/// Why an upload could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Index(#[from] IndexError),
}

type Answer = Result<Inserted, CommitError>;

struct Job {
    written: Written,
    row: NewEpisode,
    reply: oneshot::Sender<Answer>,
}

/// Handle of the commit task; cheap to clone.
#[derive(Debug, Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("row", &self.row).finish()
    }
}

impl Committer {
    /// Starts the commit task. It ends when every handle is dropped.
    pub fn spawn(index: Arc<dyn Index>, objects: ObjectStore, stats: CommitStats) -> Committer {
        let (tx, mut rx) = mpsc::channel::<Job>(4 * MAX_BATCH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                // A panic costs its batch (those uploads get an error), not
                // the task and every later upload.
                stats.batch_size.observe(jobs.len() as f64);
                let batch =
                    std::panic::AssertUnwindSafe(commit_batch(&*index, &objects, &stats, jobs));
                if futures_util::FutureExt::catch_unwind(batch).await.is_err() {
                    tracing::error!(
                        "a commit batch panicked; its uploads were answered with an error"
                    );
                }
            }
        });
        Committer { tx }
    }

    /// Commits one verified upload with its index row; resolves once its
    /// batch is durable and indexed (or failed). `Inserted::Exists` with
    /// other bytes means a lost race for the id, and `Inserted::Refused` a
    /// device or commit revoked during the upload: in both cases the object
    /// was discarded unless another row references it.
    pub async fn commit(&self, written: Written, row: NewEpisode) -> Answer {
        let (reply, answer) = oneshot::channel();
        let stopped =
            || CommitError::Index(IndexError::Setup("the commit task has stopped".to_owned()));
        self.tx
            .send(Job {
                written,
                row,
                reply,
            })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// What steps 1–3 did with one upload.
enum Durable {
    /// In place under its final name, and that name is durable.
    Placed,
    /// Not in place (its temporary file is deleted).
    Failed(StoreError),
    /// Renamed into place, but its name could not be made durable: not
    /// acknowledged, and removed when no row references it.
    Unsynced(StoreError),
}

async fn commit_batch(
    index: &dyn Index,
    objects: &ObjectStore,
    stats: &CommitStats,
    jobs: Vec<Job>,
) {
    let (written, rest): (Vec<Written>, Vec<(NewEpisode, oneshot::Sender<Answer>)>) = jobs
        .into_iter()
        .map(|j| (j.written, (j.row, j.reply)))
        .unzip();

    // 1–3 on the blocking pool: sync, place, sync. A failed upload's
    // temporary file is deleted when its `Written` is dropped.
    let store = objects.clone();
    let started = std::time::Instant::now();
    let placed = blocking(move || Ok(make_durable(&store, written))).await;
    stats
        .durable_seconds
        .observe(started.elapsed().as_secs_f64());
    let placed: Vec<Durable> = match placed {
        Ok(p) => p,
        Err(e) => rest.iter().map(|_| Durable::Failed(e.again())).collect(),
    };

    // 4: one transaction for every row whose object is in place.
    let rows: Vec<NewEpisode> = rest
        .iter()
        .zip(&placed)
        .filter(|(_, p)| matches!(p, Durable::Placed))
        .map(|((row, _), _)| row.clone())
        .collect();
    let started = std::time::Instant::now();
    let (inserted, index_down) = insert(index, &rows).await;
    stats.index_seconds.observe(started.elapsed().as_secs_f64());
    let mut inserted = inserted.into_iter();

    // 5: answers, and objects nobody references (not while the index is
    // unreachable: an unreferenced object costs only space, and a retry of
    // the same upload reuses its name).
    for ((row, reply), placed) in rest.into_iter().zip(placed) {
        let (answer, discard) = match placed {
            Durable::Failed(e) => (Err(CommitError::Store(e)), false),
            Durable::Unsynced(e) => (Err(CommitError::Store(e)), true),
            Durable::Placed => match inserted.next() {
                Some(Ok(Inserted::Created)) => (Ok(Inserted::Created), false),
                Some(Ok(Inserted::Exists(info))) => {
                    let ours = info.sha256 == row.sha256;
                    (Ok(Inserted::Exists(info)), !ours)
                }
                // Stored nothing: its object goes unless another row has it.
                Some(Ok(Inserted::Refused(why))) => (Ok(Inserted::Refused(why)), true),
                Some(Err(e)) => (Err(CommitError::Index(e)), true),
                None => (
                    Err(CommitError::Index(IndexError::Setup(
                        "the index returned fewer results than rows".to_owned(),
                    ))),
                    false,
                ),
            },
        };
        if discard && !index_down {
            discard_if_unreferenced(index, objects, &row.sha256).await;
        }
        let _ = reply.send(answer);
    }
}

/// Steps 1–3 (blocking): one result per upload, in order.
fn make_durable(store: &ObjectStore, written: Vec<Written>) -> Vec<Durable> {
    let synced = store.sync_batch(&written.iter().collect::<Vec<_>>());
    let placed: Vec<Result<PathBuf, StoreError>> = written
        .into_iter()
        .zip(synced)
        .map(|(w, synced)| synced.and_then(|()| store.place(w)))
        .collect();
    let dirs = store.dirs_to_sync(placed.iter().flatten().cloned());
    let failed = store.sync_dirs(&dirs);
    placed
        .into_iter()
        .map(|p| match p {
            Err(e) => Durable::Failed(e),
            // An object whose name may not survive a power cut (its shard
            // directory or one above it was not synced) is not
            // acknowledged.
            Ok(shard) => match failed.iter().find(|(d, _)| shard.starts_with(d)) {
                Some((_, e)) => Durable::Unsynced(e.again()),
                None => Durable::Placed,
            },
        })
        .collect()
}

/// Whether an index error is about the rows (worth retrying them one by
/// one, for each its own answer) rather than about reaching the database.
fn about_the_rows(e: &IndexError) -> bool {
    matches!(
        e,
        IndexError::Db(sqlx::Error::Database(_)) | IndexError::DeviceRenamed(_)
    )
}

/// All rows in one transaction; when that fails because of the rows, each
/// row on its own, for its own answer. When the database cannot be reached
/// (or is full), every row gets that answer at once: retrying them one by
/// one would wait for each in turn while every upload waits behind them.
/// The flag says so.
async fn insert(
    index: &dyn Index,
    rows: &[NewEpisode],
) -> (Vec<Result<Inserted, IndexError>>, bool) {
    if rows.is_empty() {
        return (Vec::new(), false);
    }
    match index.insert_episodes(rows).await {
        Ok(results) if results.len() == rows.len() => {
            (results.into_iter().map(Ok).collect(), false)
        }
        Err(e) if !about_the_rows(&e) => {
            tracing::warn!(rows = rows.len(), error = %e, "a batch of index rows failed");
            (rows.iter().map(|_| Err(e.again())).collect(), true)
        }
        outcome => {
            if let Err(e) = &outcome {
                tracing::warn!(rows = rows.len(), error = %e, "a batch of index rows failed; retrying them one by one");
            }
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                let r = index
                    .insert_episodes(std::slice::from_ref(row))
                    .await
                    .and_then(|mut v| {
                        v.pop()
                            .ok_or_else(|| IndexError::Setup("empty batch result".into()))
                    });
                out.push(r);
            }
            (out, false)
        }
    }
}

/// Deletes an object when no index row references it. Only the commit task
/// renames objects into place, so no other upload of the same bytes is
/// between its rename and its insert.
async fn discard_if_unreferenced(index: &dyn Index, objects: &ObjectStore, sha256: &str) {
    let Ok(sha) = ferry_proto::Sha256::parse(sha256) else {
        return;
    };
    match index.sha_referenced(sha256).await {
        Ok(false) => {
            if let Err(e) = objects.remove(&sha).await {
                tracing::warn!(error = %e, "cannot remove an unreferenced object");
            }
        }
        Ok(true) => {}
        Err(e) => {
            tracing::warn!(error = %e, %sha256, "cannot tell whether an object is referenced; keeping it")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::objects::Chunk;
    use crate::store::sqlite::SqliteIndex;
    use bytes::Bytes;

    async fn written(store: &ObjectStore, body: &[u8]) -> Written {
        let (tx, handle) = store.begin_upload();
        tx.send(Chunk::Data(Bytes::copy_from_slice(body)))
            .await
            .unwrap();
        tx.send(Chunk::Finish).await.unwrap();
        drop(tx);
        handle.await.unwrap().unwrap().unwrap()
    }

    fn row(id: &str, w: &Written) -> NewEpisode {
        NewEpisode {
            episode_id: id.into(),
            sha256: w.sha256.to_string(),
            size: w.size,
            commit: "c".repeat(40),
            device: "d1".into(),
            stored_at: 1,
        }
    }

    async fn setup(dir: &std::path::Path) -> (Arc<dyn Index>, ObjectStore) {
        let index: Arc<dyn Index> =
            Arc::new(SqliteIndex::open(&dir.join("i.sqlite")).await.unwrap());
        index.add_device("d1", &[1; 32], 0).await.unwrap();
        index
            .allow_commit(&"c".repeat(40), true, None, 0)
            .await
            .unwrap();
        let store = ObjectStore::new(dir.join("objects"), dir.join("tmp"));
        store.prepare().await.unwrap();
        (index, store)
    }

    fn temp_files(store: &ObjectStore) -> usize {
        std::fs::read_dir(store.tmp_dir()).unwrap().count()
    }

    #[tokio::test]
    async fn concurrent_uploads_are_placed_indexed_and_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (index, store) = setup(dir.path()).await;
        let committer = Committer::spawn(index.clone(), store.clone(), CommitStats::default());
        let mut tasks = Vec::new();
        for i in 0..100 {
            let w = written(&store, format!("body {i}").as_bytes()).await;
            let (c, r) = (committer.clone(), row(&format!("e{i}"), &w));
            tasks.push(tokio::spawn(async move {
                (r.sha256.clone(), c.commit(w, r).await)
            }));
        }
        for t in tasks {
            let (sha, answer) = t.await.unwrap();
            assert_eq!(answer.unwrap(), Inserted::Created);
            let sha = ferry_proto::Sha256::parse(&sha).unwrap();
            assert!(store.stat(&sha).await.unwrap().is_some(), "object in place");
        }
        assert_eq!(index.totals().await.unwrap().episodes, 100);
        assert_eq!(temp_files(&store), 0, "every temporary file was renamed");
    }

    #[tokio::test]
    async fn same_id_other_bytes_in_one_batch_keeps_one_and_discards_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let (index, store) = setup(dir.path()).await;
        let committer = Committer::spawn(index.clone(), store.clone(), CommitStats::default());
        let (a, b) = (
            written(&store, b"aaaa").await,
            written(&store, b"bbbb").await,
        );
        let (ra, rb) = (row("same", &a), row("same", &b));
        let (sha_a, sha_b) = (a.sha256.clone(), b.sha256.clone());
        let (x, y) = tokio::join!(committer.commit(a, ra), committer.commit(b, rb));
        let (x, y) = (x.unwrap(), y.unwrap());
        let (winner, loser) = match (&x, &y) {
            (Inserted::Created, Inserted::Exists(info)) => {
                assert_eq!(info.sha256, sha_a.as_str());
                (sha_a, sha_b)
            }
            (Inserted::Exists(info), Inserted::Created) => {
                assert_eq!(info.sha256, sha_b.as_str());
                (sha_b, sha_a)
            }
            other => panic!("expected one created and one existing: {other:?}"),
        };
        assert!(store.stat(&winner).await.unwrap().is_some());
        assert!(
            store.stat(&loser).await.unwrap().is_none(),
            "the loser's object is discarded"
        );
    }

    #[tokio::test]
    async fn a_lost_race_keeps_an_object_another_device_references() {
        let dir = tempfile::tempdir().unwrap();
        let (index, store) = setup(dir.path()).await;
        index.add_device("d2", &[2; 32], 0).await.unwrap();
        let committer = Committer::spawn(index.clone(), store.clone(), CommitStats::default());
        let w = |b: &'static [u8]| written(&store, b);
        let on = |device: &str, id: &str, w: &Written| NewEpisode {
            device: device.into(),
            ..row(id, w)
        };
        // The same bytes from two devices, under the same id: two rows, one
        // object.
        let (x1, x2) = (w(b"shared").await, w(b"shared").await);
        let sha_x = x1.sha256.clone();
        let (r1, r2) = (on("d1", "ep", &x1), on("d2", "ep", &x2));
        assert_eq!(committer.commit(x1, r1).await.unwrap(), Inserted::Created);
        assert_eq!(committer.commit(x2, r2).await.unwrap(), Inserted::Created);
        // d1 stores other bytes as "mine", then loses a race for "mine"
        // with the shared bytes: those bytes are still d2's, so they stay.
        let a = w(b"d1 only").await;
        let ra = on("d1", "mine", &a);
        assert_eq!(committer.commit(a, ra).await.unwrap(), Inserted::Created);
        let x3 = w(b"shared").await;
        let r3 = on("d1", "mine", &x3);
        assert!(matches!(
            committer.commit(x3, r3).await.unwrap(),
            Inserted::Exists(_)
        ));
        assert!(
            store.stat(&sha_x).await.unwrap().is_some(),
            "d2's object is kept"
        );
        // Bytes nobody references are collected as before.
        let y = w(b"nobody's").await;
        let (ry, sha_y) = (on("d2", "mine", &y), y.sha256.clone());
        let d2_mine = w(b"d2 first").await;
        let r = on("d2", "mine", &d2_mine);
        assert_eq!(
            committer.commit(d2_mine, r).await.unwrap(),
            Inserted::Created
        );
        assert!(matches!(
            committer.commit(y, ry).await.unwrap(),
            Inserted::Exists(_)
        ));
        assert!(store.stat(&sha_y).await.unwrap().is_none());
        assert_eq!(index.totals().await.unwrap().episodes, 4);
    }

    #[tokio::test]
    async fn an_index_failure_answers_an_error_and_keeps_what_may_be_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteIndex::open(&dir.path().join("i.sqlite"))
            .await
            .unwrap();
        let store = ObjectStore::new(dir.path().join("objects"), dir.path().join("tmp"));
        store.prepare().await.unwrap();
        sqlite.pool().close().await;
        let committer = Committer::spawn(Arc::new(sqlite), store.clone(), CommitStats::default());
        let w = written(&store, b"orphan").await;
        let (r, sha) = (row("e", &w), w.sha256.clone());
        assert!(matches!(
            committer.commit(w, r).await,
            Err(CommitError::Index(_))
        ));
        // With the index gone, "is it referenced?" cannot be answered, so
        // the object is kept (never delete what might be referenced).
        assert!(store.stat(&sha).await.unwrap().is_some());
    }
}
