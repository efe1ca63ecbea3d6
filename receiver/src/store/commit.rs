//! The commit stage: verified uploads become durable, visible and indexed,
//! a batch at a time, on any object store and any index.
//!
//! "201 means durable" costs, per upload, making its object durable under
//! its final key and a synced commit of its row. With many devices
//! uploading small episodes at once, those flushes are the receiver's
//! limit, so one task takes every verified upload waiting (up to
//! [`MAX_BATCH`]) and, for the whole batch:
//!
//! 1. takes the index's write gate (shared; see `store::collect`);
//! 2. persists every staged upload: durable and visible under its final
//!    key ([`Objects::persist`]: for the local store, one `syncfs` or an
//!    fsync each, renames, directory syncs; for S3, completed multipart
//!    uploads or single PUTs);
//! 3. inserts every row whose object persisted in one index transaction
//!    (one synced commit; see `Index::insert_episodes`); a batch that fails
//!    because of its rows is retried row by row, so each upload gets its
//!    own answer and one bad row cannot fail its neighbours, while a batch
//!    that fails because the index cannot be reached answers every upload
//!    with that at once;
//! 4. lets go of the gate, and answers each upload.
//!
//! Nothing is deleted here. An object that lost the race for its id, whose
//! row was refused or failed, or whose name could not be made durable stays
//! unreferenced until the collector, holding the gate exclusively, finds it
//! older than the grace period. Deleting it inline would be a race with
//! another replica: replica A places X, replica B (which lost a race with
//! the same bytes) sees no row for X and deletes it, then A inserts its row
//! and answers 201 for an object that is gone. The gate closes that window:
//! from step 2 to step 4, no collector can look.
//!
//! Each upload is answered only after its object and its row are durable;
//! only the flushes are shared.

use std::sync::Arc;

use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use tokio::sync::{mpsc, oneshot};

use super::objects::{Objects, Staged, StoreError};
use super::{Index, IndexError, Inserted, NewEpisode};

/// Uploads in one batch at most.
pub const MAX_BATCH: usize = 256;

/// What the commit stage reports about its batches (exported as metrics;
/// cheap clones of the same histograms).
#[derive(Debug, Clone)]
pub struct CommitStats {
    /// Uploads per batch.
    pub batch_size: Histogram,
    /// Step 2 of a batch: its objects made durable and visible.
    pub durable_seconds: Histogram,
    /// Step 3 of a batch: the index transaction.
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
    staged: Staged,
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
    pub fn spawn(
        index: Arc<dyn Index>,
        objects: Arc<dyn Objects>,
        stats: CommitStats,
    ) -> Committer {
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
                    std::panic::AssertUnwindSafe(commit_batch(&*index, &*objects, &stats, jobs));
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
    /// is left to the collector.
    pub async fn commit(&self, staged: Staged, row: NewEpisode) -> Answer {
        let (reply, answer) = oneshot::channel();
        let stopped =
            || CommitError::Index(IndexError::Setup("the commit task has stopped".to_owned()));
        self.tx
            .send(Job { staged, row, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn commit_batch(
    index: &dyn Index,
    objects: &dyn Objects,
    stats: &CommitStats,
    jobs: Vec<Job>,
) {
    let (staged, rest): (Vec<Staged>, Vec<(NewEpisode, oneshot::Sender<Answer>)>) = jobs
        .into_iter()
        .map(|j| (j.staged, (j.row, j.reply)))
        .unzip();

    // 1. Dropping `staged` on the way out discards what was staged.
    let gate = match index.write_gate().await {
        Ok(g) => g,
        Err(e) => {
            tracing::warn!(uploads = rest.len(), error = %e, "cannot take the write gate");
            for (_, reply) in rest {
                let _ = reply.send(Err(CommitError::Index(e.clone())));
            }
            return;
        }
    };

    // 2.
    let started = std::time::Instant::now();
    let persisted = objects.persist(staged).await;
    stats
        .durable_seconds
        .observe(started.elapsed().as_secs_f64());

    // 3. One transaction for every row whose object persisted.
    let rows: Vec<NewEpisode> = rest
        .iter()
        .zip(&persisted)
        .filter(|(_, p)| p.is_ok())
        .map(|((row, _), _)| row.clone())
        .collect();
    let started = std::time::Instant::now();
    let inserted = insert(index, &rows).await;
    stats.index_seconds.observe(started.elapsed().as_secs_f64());
    let mut inserted = inserted.into_iter();

    // 4. A gate lost on the way (its connection dropped) may have let the
    // collector delete an object whose row is now committed: nothing of
    // the batch is acknowledged; a retry is answered from the index and
    // repairs a missing object.
    let lost = gate.release().await.err();
    if let Some(e) = &lost {
        tracing::warn!(error = %e, "the write gate was lost during a batch; answering it 503");
    }
    for ((_, reply), persisted) in rest.into_iter().zip(persisted) {
        let answer = match persisted {
            Err(e) => Err(CommitError::Store(e)),
            Ok(()) => match inserted.next() {
                Some(_) if lost.is_some() => Err(CommitError::Index(lost.clone().expect("lost"))),
                Some(Ok(r)) => Ok(r),
                Some(Err(e)) => Err(CommitError::Index(e)),
                None => Err(CommitError::Index(IndexError::Setup(
                    "the index returned fewer results than rows".to_owned(),
                ))),
            },
        };
        let _ = reply.send(answer);
    }
}

/// Whether an index error is about the rows (worth retrying them one by
/// one, for each its own answer) rather than about reaching the database.
fn about_the_rows(e: &IndexError) -> bool {
    matches!(e, IndexError::Refused(_) | IndexError::DeviceRenamed(_))
}

/// All rows in one transaction; when that fails because of the rows, each
/// row on its own, for its own answer. When the database cannot be reached
/// (or is full), every row gets that answer at once: retrying them one by
/// one would wait for each in turn while every upload waits behind them.
async fn insert(index: &dyn Index, rows: &[NewEpisode]) -> Vec<Result<Inserted, IndexError>> {
    if rows.is_empty() {
        return Vec::new();
    }
    match index.insert_episodes(rows).await {
        Ok(results) if results.len() == rows.len() => results.into_iter().map(Ok).collect(),
        Err(e) if !about_the_rows(&e) => {
            tracing::warn!(rows = rows.len(), error = %e, "a batch of index rows failed");
            rows.iter().map(|_| Err(e.clone())).collect()
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
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::collect::Collector;
    use crate::store::objects::{Chunk, LocalObjects, Staging};
    use crate::store::sqlite::SqliteIndex;
    use bytes::Bytes;
    use std::time::Duration;

    type Store = Arc<LocalObjects>;

    async fn written(store: &Store, body: &[u8]) -> Staged {
        let claimed = ferry_proto::Sha256::from_bytes(&[0; 32]);
        let Staging { tx, done } = store.begin(&claimed, body.len() as u64);
        tx.send(Chunk::Data(Bytes::copy_from_slice(body)))
            .await
            .unwrap();
        tx.send(Chunk::Finish).await.unwrap();
        drop(tx);
        done.await.unwrap().unwrap().unwrap()
    }

    fn spawn(index: &Arc<dyn Index>, store: &Store) -> Committer {
        Committer::spawn(index.clone(), store.clone(), CommitStats::default())
    }

    /// One collection round with no grace period.
    async fn collect(index: &Arc<dyn Index>, store: &Store) -> usize {
        let mut c = Collector::new(index.clone(), store.clone(), Duration::ZERO);
        c.round().await.unwrap().deleted
    }

    fn row(id: &str, w: &Staged) -> NewEpisode {
        NewEpisode {
            episode_id: ferry_proto::EpisodeId::parse(id).unwrap(),
            sha256: w.sha256.clone(),
            size: w.size,
            commit: ferry_proto::Commit::parse(&"c".repeat(40)).unwrap(),
            device: "d1".into(),
            stored_at: 1,
        }
    }

    async fn setup(dir: &std::path::Path) -> (Arc<dyn Index>, Store) {
        let index: Arc<dyn Index> =
            Arc::new(SqliteIndex::open(&dir.join("i.sqlite")).await.unwrap());
        index.add_device("d1", &[1; 32], 0).await.unwrap();
        index
            .allow_commit(&"c".repeat(40), true, None, 0)
            .await
            .unwrap();
        let store = Arc::new(LocalObjects::new(dir.join("objects"), dir.join("tmp")));
        store.prepare().await.unwrap();
        (index, store)
    }

    fn temp_files(store: &Store) -> usize {
        std::fs::read_dir(store.tmp_dir()).unwrap().count()
    }

    #[tokio::test]
    async fn concurrent_uploads_are_placed_indexed_and_answered() {
        let dir = tempfile::tempdir().unwrap();
        let (index, store) = setup(dir.path()).await;
        let committer = spawn(&index, &store);
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
            assert!(store.stat(&sha).await.unwrap().is_some(), "object in place");
        }
        assert_eq!(index.totals().await.unwrap().episodes, 100);
        assert_eq!(temp_files(&store), 0, "every temporary file was renamed");
    }

    #[tokio::test]
    async fn same_id_other_bytes_in_one_batch_keeps_one_and_the_collector_takes_the_other() {
        let dir = tempfile::tempdir().unwrap();
        let (index, store) = setup(dir.path()).await;
        let committer = spawn(&index, &store);
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
                assert_eq!(info.sha256, sha_a);
                (sha_a, sha_b)
            }
            (Inserted::Exists(info), Inserted::Created) => {
                assert_eq!(info.sha256, sha_b);
                (sha_b, sha_a)
            }
            other => panic!("expected one created and one existing: {other:?}"),
        };
        assert!(store.stat(&winner).await.unwrap().is_some());
        assert!(
            store.stat(&loser).await.unwrap().is_some(),
            "nothing is deleted inline"
        );
        assert_eq!(collect(&index, &store).await, 1);
        assert!(store.stat(&winner).await.unwrap().is_some());
        assert!(
            store.stat(&loser).await.unwrap().is_none(),
            "the loser's object is collected"
        );
    }

    #[tokio::test]
    async fn a_lost_race_keeps_an_object_another_device_references() {
        let dir = tempfile::tempdir().unwrap();
        let (index, store) = setup(dir.path()).await;
        index.add_device("d2", &[2; 32], 0).await.unwrap();
        let committer = spawn(&index, &store);
        let w = |b: &'static [u8]| written(&store, b);
        let on = |device: &str, id: &str, w: &Staged| NewEpisode {
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
        assert_eq!(collect(&index, &store).await, 0);
        assert!(
            store.stat(&sha_x).await.unwrap().is_some(),
            "d2's object is kept"
        );
        // Bytes nobody references are collected.
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
        assert_eq!(collect(&index, &store).await, 1);
        assert!(store.stat(&sha_y).await.unwrap().is_none());
        assert!(store.stat(&sha_x).await.unwrap().is_some());
        assert_eq!(index.totals().await.unwrap().episodes, 4);
    }

    #[tokio::test]
    async fn an_index_failure_answers_an_error_and_keeps_what_may_be_referenced() {
        let dir = tempfile::tempdir().unwrap();
        let sqlite = SqliteIndex::open(&dir.path().join("i.sqlite"))
            .await
            .unwrap();
        let store = Arc::new(LocalObjects::new(
            dir.path().join("objects"),
            dir.path().join("tmp"),
        ));
        store.prepare().await.unwrap();
        sqlite.pool().close().await;
        let index: Arc<dyn Index> = Arc::new(sqlite);
        let committer = spawn(&index, &store);
        let w = written(&store, b"orphan").await;
        let (r, sha) = (row("e", &w), w.sha256.clone());
        assert!(matches!(
            committer.commit(w, r).await,
            Err(CommitError::Index(_))
        ));
        // Nothing is deleted inline; with the index gone the collector
        // cannot take the gate's round either, so the object stays.
        assert!(store.stat(&sha).await.unwrap().is_some());
        let mut c = Collector::new(index.clone(), store.clone(), Duration::ZERO);
        assert!(c.round().await.is_err(), "no index, no collection");
        assert!(store.stat(&sha).await.unwrap().is_some());
    }
}
