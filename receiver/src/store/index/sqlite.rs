//! The embedded SQLite index (the default).
//!
//! Journal mode (Never again §3): WAL is set exactly once, when this code
//! creates the database file. Every later open only *reads* the journal
//! mode; a failing read is retried with backoff and reported, never
//! answered by setting a mode. A successful read of a non-WAL mode on an
//! existing file is logged as an ERROR and upgraded to WAL — an upgrade,
//! never a downgrade. Every connection runs `synchronous=FULL` (a commit
//! survives a power cut), `busy_timeout=5s` and foreign keys on.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{ConnectOptions, Connection, SqliteConnection, SqlitePool};

use super::sql::{classify, impl_sql_index};
use super::IndexError;

/// How many times a transient failure to open or to read the journal mode
/// is retried, and the first pause (doubled each time).
const OPEN_ATTEMPTS: u32 = 6;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// The SQLite index.
#[derive(Debug, Clone)]
pub struct SqliteIndex {
    pool: SqlitePool,
    /// The write gate (see `Index::write_gate`). One process serves a
    /// SQLite index, so a lock in memory is the gate, and that process
    /// holds the collection lease.
    gate: std::sync::Arc<tokio::sync::RwLock<()>>,
}

/// A held guard of [`SqliteIndex`]'s gate.
struct HeldLocal<G: Send>(G);

impl<G: Send> crate::store::Held for HeldLocal<G> {
    fn check(&mut self) -> crate::store::BoxFut<'_, ()> {
        Box::pin(async { Ok(()) })
    }

    fn release(self: Box<Self>) -> crate::store::BoxFut<'static, ()> {
        drop(self);
        Box::pin(async { Ok(()) })
    }
}

impl_sql_index!(SqliteIndex, SqlitePool);

/// What to do after reading the journal mode of an existing database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JournalAction {
    Keep,
    /// The file is not in WAL mode (created by something else, or by a
    /// version that had the field bug): log an ERROR and set WAL.
    UpgradeToWal,
}

/// The pure decision on a journal mode that was *read successfully*.
pub fn journal_action(mode: &str) -> JournalAction {
    if mode.eq_ignore_ascii_case("wal") {
        JournalAction::Keep
    } else {
        JournalAction::UpgradeToWal
    }
}

fn base_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .busy_timeout(Duration::from_secs(5))
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
}

/// Transient failures worth retrying: IO errors and SQLite's IOERR, BUSY,
/// LOCKED and CANTOPEN families, by code.
fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(db) => db
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            .is_some_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 14)),
        _ => false,
    }
}

/// Runs `op` until it succeeds, fails permanently, or runs out of attempts;
/// every transient failure is logged with what was being done.
async fn retry<T, F, Fut>(what: &str, path: &Path, mut op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut pause = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        match op().await {
            Ok(v) => return Ok(v),
            Err(e) if is_transient(&e) && attempt < OPEN_ATTEMPTS => {
                tracing::error!(
                    path = %path.display(), attempt, error = %e,
                    "{what} failed; retrying in {pause:?} (the journal mode is left as it is)"
                );
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn read_journal_mode(conn: &mut SqliteConnection) -> Result<String, sqlx::Error> {
    sqlx::query_scalar::<_, String>("PRAGMA journal_mode")
        .fetch_one(conn)
        .await
}

impl SqliteIndex {
    /// Opens the database at `path`, creating it (in WAL mode) and its
    /// directory if missing, and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, IndexError> {
        let owned: PathBuf = path.to_owned();
        let exists = tokio::task::spawn_blocking(move || -> Result<bool, IndexError> {
            if let Some(parent) = owned.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|e| {
                    IndexError::Setup(format!("cannot create directory {}: {e}", parent.display()))
                })?;
            }
            match std::fs::metadata(&owned) {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(IndexError::Setup(format!(
                    "cannot stat {}: {e}",
                    owned.display()
                ))),
            }
        })
        .await
        .map_err(|e| IndexError::Setup(format!("open task failed: {e}")))??;

        let opts = base_options(path);
        let mut conn = if exists {
            // Open and read in one retried step: a failure at either point is
            // reported and retried, and never leads to setting a mode.
            let (mut conn, mode) = retry(
                "opening the index and reading its journal mode",
                path,
                || async {
                    let mut conn = opts.connect().await?;
                    let mode = read_journal_mode(&mut conn).await?;
                    Ok((conn, mode))
                },
            )
            .await
            .map_err(classify)?;
            if journal_action(&mode) == JournalAction::UpgradeToWal {
                tracing::error!(
                    path = %path.display(),
                    journal_mode = %mode,
                    "index database is not in WAL mode; switching it to WAL (an upgrade, never a downgrade)"
                );
                sqlx::query("PRAGMA journal_mode=WAL")
                    .execute(&mut conn)
                    .await
                    .map_err(classify)?;
            }
            conn
        } else {
            // Created here, so WAL is set here, once.
            let create = opts
                .clone()
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal);
            retry("creating the index", path, || create.connect())
                .await
                .map_err(classify)?
        };
        sqlx::migrate!("./migrations/sqlite")
            .run(&mut conn)
            .await
            .map_err(|e| IndexError::Setup(format!("migrating {}: {e}", path.display())))?;
        conn.close().await.map_err(classify)?;

        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(opts)
            .await
            .map_err(classify)?;
        Ok(Self {
            pool,
            gate: Default::default(),
        })
    }

    async fn gate_shared(&self) -> Result<crate::store::Gate, IndexError> {
        let guard = self.gate.clone().read_owned().await;
        Ok(crate::store::Gate::new(HeldLocal(guard)))
    }

    async fn gate_exclusive(&self) -> Result<Option<crate::store::Gate>, IndexError> {
        let guard = self.gate.clone().write_owned().await;
        Ok(Some(crate::store::Gate::new(HeldLocal(guard))))
    }

    /// The pool, for tests.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{AddDevice, Index, Inserted, NewEpisode, RenameDevice, Standing};
    use ferry_proto::{Commit, EpisodeId, Sha256};

    async fn mode_of(path: &Path) -> String {
        let mut c = base_options(path).connect().await.unwrap();
        read_journal_mode(&mut c).await.unwrap()
    }

    #[test]
    fn only_wal_is_kept() {
        assert_eq!(journal_action("wal"), JournalAction::Keep);
        assert_eq!(journal_action("WAL"), JournalAction::Keep);
        assert_eq!(journal_action("delete"), JournalAction::UpgradeToWal);
        assert_eq!(journal_action("truncate"), JournalAction::UpgradeToWal);
    }

    #[tokio::test]
    async fn a_new_database_is_created_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/index.sqlite");
        let idx = SqliteIndex::open(&path).await.unwrap();
        idx.pool().close().await;
        assert_eq!(mode_of(&path).await, "wal");
        // Reopening keeps it, and the data.
        let idx = SqliteIndex::open(&path).await.unwrap();
        idx.ping().await.unwrap();
        assert_eq!(mode_of(&path).await, "wal");
    }

    #[tokio::test]
    async fn an_existing_delete_mode_database_is_upgraded_never_downgraded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        {
            let mut c = base_options(&path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Delete)
                .connect()
                .await
                .unwrap();
            sqlx::query("CREATE TABLE unrelated (x INTEGER)")
                .execute(&mut c)
                .await
                .unwrap();
            c.close().await.unwrap();
        }
        assert_eq!(mode_of(&path).await, "delete");
        let idx = SqliteIndex::open(&path).await.unwrap();
        idx.ping().await.unwrap();
        assert_eq!(mode_of(&path).await, "wal");
    }

    #[tokio::test]
    async fn a_garbage_file_is_an_error_not_a_new_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("index.sqlite");
        std::fs::write(&path, vec![0x55u8; 8192]).unwrap();
        assert!(SqliteIndex::open(&path).await.is_err());
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x55u8; 8192]);
    }

    #[tokio::test]
    async fn an_allow_list_row_that_is_not_a_commit_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("i.sqlite"))
            .await
            .unwrap();
        // The index takes the commit as given; only `ops` parses it, so
        // this stands for a row changed behind the receiver's back.
        idx.allow_commit("not-a-commit", false, None, 1)
            .await
            .unwrap();
        match idx.list_commits().await {
            Err(IndexError::Refused(msg)) => assert!(msg.contains("not-a-commit"), "{msg}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn index_operations() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("i.sqlite"))
            .await
            .unwrap();
        assert_eq!(
            idx.add_device("d1", &[1; 32], 10).await.unwrap(),
            AddDevice::Added
        );
        assert_eq!(
            idx.add_device("d1", &[2; 32], 10).await.unwrap(),
            AddDevice::NameTaken
        );
        let d = idx.device_by_token_hash(&[1; 32]).await.unwrap().unwrap();
        assert_eq!((d.name.as_str(), d.revoked), ("d1", false));

        let (a, b) = ("a".repeat(40), "b".repeat(40));
        idx.allow_commit(&a, true, Some("first"), 1).await.unwrap();
        idx.allow_commit(&b, false, None, 2).await.unwrap();
        let s = idx.commit_status(&b).await.unwrap();
        assert!(s.allowed);
        assert_eq!(s.head_commit.as_deref(), Some(a.as_str()));
        idx.allow_commit(&b, true, None, 3).await.unwrap();
        // Re-allowing the old head without --head does not make two heads.
        idx.allow_commit(&a, false, None, 4).await.unwrap();
        let list = idx.list_commits().await.unwrap();
        assert_eq!(list.iter().filter(|c| c.head).count(), 1);
        assert_eq!(list[0].commit.as_str(), b);
        assert_eq!(
            list.iter()
                .find(|c| c.commit.as_str() == a)
                .unwrap()
                .note
                .as_deref(),
            Some("first")
        );
        assert!(idx.revoke_commit(&b).await.unwrap());
        let s = idx.commit_status(&b).await.unwrap();
        assert!(!s.allowed && s.head_commit.is_none());

        let e = NewEpisode {
            episode_id: eid("ep1"),
            sha256: sha('c'),
            size: 5,
            commit: Commit::parse(&a).unwrap(),
            device: "d1".into(),
            stored_at: 100,
        };
        assert_eq!(
            idx.insert_episodes(std::slice::from_ref(&e)).await.unwrap(),
            [Inserted::Created]
        );
        let again = NewEpisode {
            sha256: sha('d'),
            ..e.clone()
        };
        match &idx
            .insert_episodes(std::slice::from_ref(&again))
            .await
            .unwrap()[..]
        {
            [Inserted::Exists(info)] => assert_eq!(info.sha256, e.sha256),
            other => panic!("{other:?}"),
        }
        // One batch: a new id, the same id again with other bytes, and an
        // id stored before. The unique key decides within the batch too.
        let e2 = NewEpisode {
            episode_id: eid("ep2"),
            sha256: sha('e'),
            ..e.clone()
        };
        let e2_other = NewEpisode {
            sha256: sha('f'),
            ..e2.clone()
        };
        let batch = idx
            .insert_episodes(&[e2.clone(), e2_other, again.clone()])
            .await
            .unwrap();
        match &batch[..] {
            [Inserted::Created, Inserted::Exists(a), Inserted::Exists(b)] => {
                assert_eq!(a.sha256, e2.sha256);
                assert_eq!(b.sha256, e.sha256);
            }
            other => panic!("{other:?}"),
        }
        assert!(idx.insert_episodes(&[]).await.unwrap().is_empty());
        let asked = [e.sha256.clone(), again.sha256.clone(), sha('f')];
        let found = idx.referenced(&asked).await.unwrap();
        assert_eq!(found, [e.sha256.clone()].into_iter().collect());
        let devices = idx.list_devices().await.unwrap();
        assert_eq!((devices[0].episodes, devices[0].bytes), (2, 10));
        // Recorded by the INSERT's trigger.
        assert_eq!(devices[0].last_upload_at, Some(100));
        let t = idx.totals().await.unwrap();
        assert_eq!((t.episodes, t.bytes, t.devices, t.commits), (2, 10, 1, 1));

        assert!(idx.revoke_device("d1").await.unwrap());
        assert!(!idx.revoke_device("nope").await.unwrap());
        assert!(
            idx.device_by_token_hash(&[1; 32])
                .await
                .unwrap()
                .unwrap()
                .revoked
        );

        // The PUT's one read: nothing for an unknown token; for a known one
        // the device, the commit's standing with the head, and the episode.
        assert_eq!(idx.preflight(&[9; 32], &a, "ep1").await.unwrap(), None);
        let p = idx.preflight(&[1; 32], &a, "ep1").await.unwrap().unwrap();
        assert_eq!((p.device.name.as_str(), p.device.revoked), ("d1", true));
        assert_eq!(p.device.token_hash, vec![1; 32]);
        assert!(p.commit.allowed && p.commit.head_commit.is_none());
        assert_eq!(p.episode, idx.episode("d1", "ep1").await.unwrap());
        assert_eq!(p.episode.unwrap().sha256, e.sha256);
        let p = idx.preflight(&[1; 32], &b, "nope").await.unwrap().unwrap();
        assert!(!p.commit.allowed && p.episode.is_none());
        idx.allow_commit(&b, true, None, 5).await.unwrap();
        let p = idx.preflight(&[1; 32], "", "").await.unwrap().unwrap();
        assert!(!p.commit.allowed);
        assert_eq!(p.commit.head_commit.as_deref(), Some(b.as_str()));
    }

    fn eid(id: &str) -> EpisodeId {
        EpisodeId::parse(id).unwrap()
    }

    /// A digest of 64 times `c`.
    fn sha(c: char) -> Sha256 {
        Sha256::parse(&c.to_string().repeat(64)).unwrap()
    }

    fn row(device: &str, id: &str, sha: char, at: i64) -> NewEpisode {
        NewEpisode {
            episode_id: eid(id),
            sha256: self::sha(sha),
            size: 7,
            commit: Commit::parse(&"a".repeat(40)).unwrap(),
            device: device.into(),
            stored_at: at,
        }
    }

    /// The collector's fence: while an object is marked as being collected,
    /// no row naming it is inserted (the commit stage answers 503); marks
    /// past their time are ignored and cleared; unmarked, it stores.
    #[tokio::test]
    async fn a_row_naming_an_object_being_collected_is_refused_until_unmarked() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("i.sqlite"))
            .await
            .unwrap();
        idx.add_device("d1", &[1; 32], 1).await.unwrap();
        idx.allow_commit(&"a".repeat(40), true, None, 1)
            .await
            .unwrap();
        let x = sha('a');
        idx.mark_collecting(std::slice::from_ref(&x), 100, 10)
            .await
            .unwrap();
        assert_eq!(
            idx.insert_episodes(&[row("d1", "ep-1", 'a', 50), row("d1", "ep-2", 'b', 50)])
                .await
                .unwrap(),
            [
                Inserted::Refused(Standing::ObjectBeingCollected),
                Inserted::Created
            ]
        );
        // A mark past its time neither refuses nor survives the next mark.
        assert_eq!(
            idx.insert_episodes(&[row("d1", "ep-3", 'a', 100)])
                .await
                .unwrap(),
            [Inserted::Created]
        );
        idx.mark_collecting(&[], 0, 200).await.unwrap();
        idx.mark_collecting(std::slice::from_ref(&x), 300, 200)
            .await
            .unwrap();
        idx.unmark_collecting(std::slice::from_ref(&x))
            .await
            .unwrap();
        assert_eq!(
            idx.insert_episodes(&[row("d1", "ep-1", 'a', 250)])
                .await
                .unwrap(),
            [Inserted::Created]
        );
    }

    #[tokio::test]
    async fn episodes_are_keyed_by_device_and_id() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("i.sqlite"))
            .await
            .unwrap();
        for (name, hash) in [("d1", [1; 32]), ("d2", [2; 32]), ("d3", [3; 32])] {
            idx.add_device(name, &hash, 1).await.unwrap();
        }
        idx.allow_commit(&"a".repeat(40), true, None, 1)
            .await
            .unwrap();
        // Two devices, one id, other bytes: both created, in one batch too;
        // within one device the key still decides.
        let batch = idx
            .insert_episodes(&[
                row("d1", "ep-1", 'a', 10),
                row("d2", "ep-1", 'b', 11),
                row("d2", "ep-1", 'c', 12),
            ])
            .await
            .unwrap();
        match &batch[..] {
            [Inserted::Created, Inserted::Created, Inserted::Exists(e)] => {
                assert_eq!((e.device.as_str(), &e.sha256), ("d2", &sha('b')))
            }
            other => panic!("{other:?}"),
        }
        // A later batch: each device meets its own row.
        match &idx
            .insert_episodes(&[row("d2", "ep-1", 'a', 13), row("d3", "ep-1", 'a', 13)])
            .await
            .unwrap()[..]
        {
            [Inserted::Exists(e), Inserted::Created] => assert_eq!(e.sha256, sha('b')),
            other => panic!("{other:?}"),
        }
        // The PUT's read sees only the token's own device's row.
        let p = idx.preflight(&[3; 32], "", "ep-1").await.unwrap().unwrap();
        assert_eq!(p.episode.unwrap().sha256, sha('a'));
        idx.insert_episodes(&[row("d1", "only-d1", 'd', 14)])
            .await
            .unwrap();
        let p = idx
            .preflight(&[2; 32], "", "only-d1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(p.episode, None, "another device's episode is not shown");
        assert_eq!(idx.episode("d2", "only-d1").await.unwrap(), None);
        let everyones = idx.episodes_with_id("ep-1", 10).await.unwrap();
        let owners: Vec<&str> = everyones.iter().map(|e| e.device.as_str()).collect();
        assert_eq!(owners, ["d1", "d2", "d3"]);
        assert_eq!(idx.episodes_with_id("ep-1", 2).await.unwrap().len(), 2);
        assert_eq!(idx.list_episodes(Some("d2"), None).await.unwrap().len(), 1);
        assert_eq!(idx.list_episodes(None, None).await.unwrap().len(), 4);
        assert_eq!(idx.list_episodes(None, Some(2)).await.unwrap().len(), 2);

        // A rename carries the token and the episodes along.
        assert_eq!(
            idx.rename_device("d1", "d1-new").await.unwrap(),
            RenameDevice::Renamed
        );
        assert_eq!(
            idx.device_by_token_hash(&[1; 32])
                .await
                .unwrap()
                .unwrap()
                .name,
            "d1-new"
        );
        let moved = idx.list_episodes(Some("d1-new"), None).await.unwrap();
        assert_eq!(moved.len(), 2);
        assert!(idx
            .list_episodes(Some("d1"), None)
            .await
            .unwrap()
            .is_empty());
        assert_eq!(idx.device("d1-new").await.unwrap().unwrap().episodes, 2);
        assert_eq!(idx.device("d1").await.unwrap(), None);
        assert_eq!(
            idx.rename_device("d1", "x").await.unwrap(),
            RenameDevice::NoSuchDevice
        );
        assert_eq!(
            idx.rename_device("d2", "d3").await.unwrap(),
            RenameDevice::NameTaken
        );
        // A row checked under the old name that arrives after the rename
        // is refused by the insert's standing check (and the foreign key
        // behind it), not stored under a name no device has.
        assert_eq!(
            idx.insert_episodes(&[row("d1", "late", 'e', 15)])
                .await
                .unwrap(),
            [Inserted::Refused(Standing::DeviceGone)]
        );
        assert_eq!(idx.list_episodes(None, None).await.unwrap().len(), 4);
    }

    /// Issue 13, item 12: the standing checked before the body is checked
    /// again by the insert; a device or commit revoked meanwhile stores
    /// nothing, row by row within one batch.
    #[tokio::test]
    async fn revocation_during_an_upload_is_seen_by_the_insert() {
        let dir = tempfile::tempdir().unwrap();
        let idx = SqliteIndex::open(&dir.path().join("i.sqlite"))
            .await
            .unwrap();
        for (name, hash) in [("d1", [1; 32]), ("d2", [2; 32])] {
            idx.add_device(name, &hash, 1).await.unwrap();
        }
        let (a, b) = ("a".repeat(40), "b".repeat(40));
        idx.allow_commit(&a, true, None, 1).await.unwrap();
        idx.allow_commit(&b, false, None, 1).await.unwrap();
        assert!(idx.revoke_device("d2").await.unwrap());
        assert!(idx.revoke_commit(&b).await.unwrap());
        let mut on_b = row("d1", "ep-b", 'b', 10);
        on_b.commit = Commit::parse(&b).unwrap();
        let got = idx
            .insert_episodes(&[
                row("d1", "ep-a", 'a', 10),
                row("d2", "ep-a", 'a', 10),
                on_b,
                row("gone", "ep-a", 'a', 10),
            ])
            .await
            .unwrap();
        assert_eq!(
            got,
            [
                Inserted::Created,
                Inserted::Refused(Standing::DeviceRevoked),
                Inserted::Refused(Standing::CommitNotAllowed),
                Inserted::Refused(Standing::DeviceGone),
            ]
        );
        let stored = idx.list_episodes(None, None).await.unwrap();
        assert_eq!(stored.len(), 1, "{stored:?}");
    }
}
