//! Group commit of episode rows.
//!
//! "201 means durable" costs one synced commit of the index per upload; a
//! commit is an fsync of the write-ahead log, about a millisecond here, and
//! SQLite runs one writer at a time. With many devices uploading at once
//! that caps the receiver at the disk's fsync rate. Instead, one task takes
//! every row waiting when it is free and inserts them all in one
//! transaction: one sync, many acknowledgements. Each upload still waits
//! for the commit that contains its row before its 201 — durability per
//! upload is unchanged; only the sync is shared.
//!
//! A failed batch is retried row by row, so that each upload gets its own
//! error (disk full is 507, anything else 500) and one bad row cannot fail
//! its neighbours.

use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

use super::{IndexError, Inserted, NewEpisode};

/// Rows in one transaction at most.
pub const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<Inserted, IndexError>>;
type BatchFut = Pin<Box<dyn Future<Output = Result<Vec<Inserted>, IndexError>> + Send>>;

/// Handle of the committing task; cheap to clone.
#[derive(Debug, Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<(NewEpisode, Reply)>,
}

impl GroupCommit {
    /// Start the committing task. `commit` inserts a batch in one
    /// transaction and returns one result per row, in order.
    pub fn spawn<F>(commit: F) -> GroupCommit
    where
        F: Fn(Vec<NewEpisode>) -> BatchFut + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<(NewEpisode, Reply)>(4 * MAX_BATCH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut jobs = vec![first];
                while jobs.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(j) => jobs.push(j),
                        Err(_) => break,
                    }
                }
                let rows: Vec<NewEpisode> = jobs.iter().map(|(r, _)| r.clone()).collect();
                match commit(rows).await {
                    Ok(results) if results.len() == jobs.len() => {
                        for ((_, reply), r) in jobs.into_iter().zip(results) {
                            let _ = reply.send(Ok(r));
                        }
                    }
                    outcome => {
                        // A failed batch (or, a bug, one result short):
                        // each row again on its own, for its own answer.
                        if let Err(e) = &outcome {
                            tracing::warn!(rows = jobs.len(), error = %e, "a batch of index rows failed; retrying them one by one");
                        }
                        for (row, reply) in jobs {
                            let r = commit(vec![row]).await.and_then(|mut v| {
                                v.pop()
                                    .ok_or_else(|| IndexError::Setup("empty batch result".into()))
                            });
                            let _ = reply.send(r);
                        }
                    }
                }
            }
        });
        GroupCommit { tx }
    }

    /// Insert one row, in the next batch; resolves once that batch is
    /// committed (or failed).
    pub async fn insert(&self, row: NewEpisode) -> Result<Inserted, IndexError> {
        let (reply, answer) = oneshot::channel();
        self.tx
            .send((row, reply))
            .await
            .map_err(|_| IndexError::Setup("the index commit task has stopped".into()))?;
        answer
            .await
            .map_err(|_| IndexError::Setup("the index commit task dropped a row".into()))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn row(id: &str) -> NewEpisode {
        NewEpisode {
            episode_id: id.into(),
            sha256: "s".into(),
            size: 1,
            commit: "c".into(),
            device: "d".into(),
            stored_at: 0,
        }
    }

    #[tokio::test]
    async fn concurrent_rows_share_commits_and_each_gets_its_answer() {
        let batches = Arc::new(AtomicUsize::new(0));
        let b = batches.clone();
        let gc = GroupCommit::spawn(move |rows| {
            b.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                Ok(rows.iter().map(|_| Inserted::Created).collect())
            })
        });
        let mut tasks = Vec::new();
        for i in 0..100 {
            let gc = gc.clone();
            tasks.push(tokio::spawn(async move {
                gc.insert(row(&format!("e{i}"))).await
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), Inserted::Created);
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n < 100, "no batching happened: {n} commits for 100 rows");
    }

    #[tokio::test]
    async fn a_failing_batch_is_retried_row_by_row() {
        let gc = GroupCommit::spawn(|rows| {
            Box::pin(async move {
                if rows.len() > 1 || rows[0].episode_id == "bad" {
                    return Err(IndexError::Setup("boom".into()));
                }
                Ok(vec![Inserted::Created])
            })
        });
        let (a, b) = tokio::join!(gc.insert(row("good")), gc.insert(row("bad")));
        assert_eq!(a.unwrap(), Inserted::Created);
        assert!(b.is_err());
    }
}
