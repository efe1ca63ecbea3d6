//! The SQL of the index, shared by the SQLite and PostgreSQL backends.
//!
//! Both speak the same statements (`$N` parameters, `ON CONFLICT`, partial
//! unique index for the one head commit), so one macro implements
//! [`Index`](super::Index) for both pool types; only opening differs
//! (`sqlite.rs`, `postgres.rs`).

use ferry_proto::admin::{CommitInfo, DeviceInfo, EpisodeInfo};

use super::{format_time, IndexError};

/// SQLite's primary result code for "database or disk is full".
const SQLITE_FULL: i64 = 13;
/// PostgreSQL's SQLSTATE for "disk full" (53100). Only that one: the
/// rest of class 53 (out of memory, too many connections) says nothing of
/// space and stays a database error.
const PG_DISK_FULL: &str = "53100";
/// SQLite's extended result code and PostgreSQL's SQLSTATE for a foreign
/// key violation: a row naming a device that does not exist.
const SQLITE_CONSTRAINT_FOREIGNKEY: &str = "787";
const PG_FOREIGN_KEY_VIOLATION: &str = "23503";

/// PostgreSQL SQLSTATEs that say the server cannot serve now rather than
/// that a statement was wrong: class 08 (connection exception), 57P01–03
/// (admin or crash shutdown, cannot connect now) and 53300 (too many
/// connections).
fn pg_unreachable(code: &str) -> bool {
    code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
}

/// Classifies a database error by its code, never by its message.
pub(crate) fn classify(err: sqlx::Error) -> IndexError {
    let text = err.to_string();
    match &err {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            if code == SQLITE_CONSTRAINT_FOREIGNKEY || code == PG_FOREIGN_KEY_VIOLATION {
                return IndexError::DeviceRenamed(text);
            }
            let full = if let Some(e) = db.try_downcast_ref::<sqlx::sqlite::SqliteError>() {
                e.code()
                    .and_then(|c| c.parse::<i64>().ok())
                    .is_some_and(|c| c & 0xff == SQLITE_FULL)
            } else {
                code == PG_DISK_FULL
            };
            if full {
                IndexError::Full(text)
            } else if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_none()
                && pg_unreachable(code)
            {
                IndexError::Unreachable(text)
            } else {
                IndexError::Refused(text)
            }
        }
        sqlx::Error::Io(io)
            if io
                .raw_os_error()
                .is_some_and(crate::store::objects::is_out_of_space) =>
        {
            IndexError::Full(text)
        }
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => IndexError::Unreachable(text),
        _ => IndexError::Refused(text),
    }
}

use sqlx::error::DatabaseError as _;

/// The database type behind a pool type, for the macro below.
pub(crate) trait HasDb {
    type Db: sqlx::Database;
    /// Starts a write transaction (takes the write lock at once).
    const BEGIN_WRITE: &'static str;
}
impl HasDb for sqlx::SqlitePool {
    type Db = sqlx::Sqlite;
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
}
impl HasDb for sqlx::PgPool {
    type Db = sqlx::Postgres;
    const BEGIN_WRITE: &'static str = "BEGIN";
}

/// Makes a connection whose write failed safe to reuse, or takes it out of
/// the pool.
///
/// An I/O error during a commit (an EIO on the write-ahead log's fsync) can
/// leave SQLite's transaction open on that connection, holding the write
/// lock: given back to the pool as it is, it made every later write of
/// this process fail and every other process see "database is locked"
/// (found by `reliability::faults::incident3_transient_eio_never_downgrades_wal`).
/// So: roll back explicitly, then prove the connection can start and end a
/// write transaction; if it cannot, close it and let the pool open a fresh
/// one.
macro_rules! recover_connection {
    ($pool:ty, $conn:expr) => {{
        let mut conn = $conn;
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        let begin = <$pool as $crate::store::index::sql::HasDb>::BEGIN_WRITE;
        let clean = sqlx::query(begin).execute(&mut *conn).await.is_ok()
            && sqlx::query("ROLLBACK").execute(&mut *conn).await.is_ok();
        if !clean {
            use sqlx::Connection as _;
            tracing::warn!("closing an index connection after a failed write; a fresh one replaces it");
            if let Err(e) = conn.detach().close_hard().await {
                tracing::debug!(error = %e, "closing the failed index connection");
            }
        }
    }};
}
pub(crate) use recover_connection;

/// Runs a write on one pooled connection (`$conn`: `&mut PoolConnection`);
/// when it fails, the connection is recovered or closed by
/// [`recover_connection!`] before it goes back to the pool. `$body`
/// evaluates to `Result<T, sqlx::Error>`; the macro to
/// `Result<T, IndexError>`. Every write of the index goes through this (or
/// calls `recover_connection!` itself).
macro_rules! write_on_conn {
    ($pool:ty, $src:expr, |$conn:ident| $body:expr) => {{
        let classify = $crate::store::index::sql::classify;
        let mut held = $src.acquire().await.map_err(classify)?;
        let result = {
            let $conn = &mut held;
            $body
        };
        match result {
            Ok(v) => Ok(v),
            Err(e) => {
                $crate::store::index::sql::recover_connection!($pool, held);
                Err(classify(e))
            }
        }
    }};
}
pub(crate) use write_on_conn;

pub(crate) type EpisodeRow = (String, String, i64, String, String, i64);
pub(crate) const EPISODE_COLUMNS: &str = "episode_id, sha256, size, commit_id, device, stored_at";

pub(crate) fn episode_info(r: EpisodeRow) -> EpisodeInfo {
    EpisodeInfo {
        episode_id: r.0,
        sha256: r.1,
        size: r.2.max(0) as u64,
        commit: r.3,
        device: r.4,
        stored_at: format_time(r.5),
    }
}

/// One round trip for everything a PUT reads before its body: no row for an
/// unknown token; otherwise the device, whether the commit is allowed, the
/// head commit, and the device's own row of the id when it stored one (all
/// NULL when not: another device's row of the same id is not joined).
/// Plain SQL that SQLite and PostgreSQL both run.
pub(crate) const PREFLIGHT: &str = "SELECT d.name, d.token_hash, d.revoked, \
     EXISTS (SELECT 1 FROM commits WHERE commit_id = $2), \
     (SELECT commit_id FROM commits WHERE head = $3 LIMIT 1), \
     e.episode_id, e.sha256, e.size, e.commit_id, e.device, e.stored_at \
     FROM devices d LEFT JOIN episodes e ON e.device = d.name AND e.episode_id = $4 \
     WHERE d.token_hash = $1";

pub(crate) type PreflightRow = (
    String,
    Vec<u8>,
    bool,
    bool,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
);

pub(crate) fn preflight(row: PreflightRow) -> super::Preflight {
    let (name, token_hash, revoked, allowed, head_commit, id, sha, size, commit, device, at) = row;
    let episode = match (id, sha, size, commit, device, at) {
        (Some(id), Some(sha), Some(size), Some(commit), Some(device), Some(at)) => {
            Some(episode_info((id, sha, size, commit, device, at)))
        }
        _ => None,
    };
    super::Preflight {
        device: super::DeviceAuth {
            name,
            token_hash,
            revoked,
        },
        commit: super::CommitStatus {
            allowed,
            head_commit,
        },
        episode,
    }
}

pub(crate) type DeviceRow = (String, bool, i64, Option<i64>, Option<i64>, i64, i64);
/// The columns of [`DeviceRow`], for every device or one. The counts are
/// kept by the INSERT trigger (migration 0004): no per-device scan.
macro_rules! select_devices {
    () => {
        "SELECT d.name, d.revoked, d.created_at, d.last_seen_at, d.last_upload_at, \
         d.episode_count, d.episode_bytes FROM devices d"
    };
}
pub(crate) const LIST_DEVICES: &str = concat!(select_devices!(), " ORDER BY d.name");
pub(crate) const ONE_DEVICE: &str = concat!(select_devices!(), " WHERE d.name = $1");

/// Renames a device unless the new name is taken; the episodes follow by
/// the foreign key's `ON UPDATE CASCADE`, in the same statement.
pub(crate) const RENAME_DEVICE: &str = "UPDATE devices SET name = $2 WHERE name = $1 \
     AND NOT EXISTS (SELECT 1 FROM devices WHERE name = $2)";

pub(crate) fn device_info(r: DeviceRow) -> DeviceInfo {
    DeviceInfo {
        name: r.0,
        revoked: r.1,
        created_at: format_time(r.2),
        last_seen_at: r.3.map(format_time),
        last_upload_at: r.4.map(format_time),
        episodes: r.5.max(0) as u64,
        bytes: r.6.max(0) as u64,
    }
}

pub(crate) type CommitRow = (String, bool, Option<String>, i64);

pub(crate) fn commit_info(r: CommitRow) -> CommitInfo {
    CommitInfo {
        commit: r.0,
        head: r.1,
        note: r.2,
        allowed_at: format_time(r.3),
    }
}

/// Implements [`Index`](super::Index) for a struct with a `pool` field of a
/// concrete sqlx pool type.
macro_rules! impl_sql_index {
    ($ty:ty, $pool:ty) => {
        impl $ty {
            /// Inserts a batch of rows in one transaction (one synced
            /// commit), one result per row, in order. The unique key on
            /// `(device, episode_id)` decides races, within the batch too.
            async fn insert_batch(
                pool: $pool,
                rows: &[$crate::store::NewEpisode],
            ) -> Result<Vec<$crate::store::Inserted>, $crate::store::IndexError> {
                if rows.is_empty() {
                    // A multi-row INSERT needs at least one row.
                    return Ok(Vec::new());
                }
                let classify = $crate::store::index::sql::classify;
                let mut conn = pool.acquire().await.map_err(classify)?;
                let result = Self::insert_batch_on(&mut conn, rows).await;
                if result.is_err() {
                    $crate::store::index::sql::recover_connection!($pool, conn);
                }
                result
            }

            /// The batch in one transaction of one statement, whatever its
            /// size, and a second only when some ids were already stored:
            /// one multi-row `INSERT … ON CONFLICT DO NOTHING RETURNING`
            /// (the unique key decides, within the batch too: a later row
            /// with a device and id already in the batch is not sent and
            /// answers as existing; the trigger `episodes_record_upload` records each
            /// device's last upload in the same statement), then one
            /// `SELECT` of the rows that were already there. Every
            /// statement is a round trip to the database, so per-row
            /// statements would make a batch of 200 rows cost 400 round
            /// trips.
            async fn insert_batch_on(
                conn: &mut sqlx::pool::PoolConnection<<$pool as $crate::store::index::sql::HasDb>::Db>,
                rows: &[$crate::store::NewEpisode],
            ) -> Result<Vec<$crate::store::Inserted>, $crate::store::IndexError> {
                type Db = <$pool as $crate::store::index::sql::HasDb>::Db;
                let classify = $crate::store::index::sql::classify;
                let key = |e: &$crate::store::NewEpisode| (e.device.clone(), e.episode_id.clone());
                let mut seen = std::collections::HashSet::new();
                let first: Vec<bool> = rows.iter().map(|e| seen.insert(key(e))).collect();
                // One transaction, so that the answers are all or nothing:
                // a failed SELECT must not leave rows committed that are
                // then answered as failed.
                use sqlx::Connection as _;
                let mut tx = (&mut **conn).begin().await.map_err(classify)?;

                // The standing checked before the body (device not
                // revoked, commit allowed) is checked again here, in the
                // statement that inserts: an upload whose device or commit
                // was revoked while its body streamed stores nothing.
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "INSERT INTO episodes (episode_id, sha256, size, commit_id, device, stored_at) \
                     SELECT column1, column2, column3, column4, column5, column6 FROM (",
                );
                // In key order: two replicas' batches that share devices
                // then lock their device rows (the trigger) and keys in the
                // same order, instead of deadlocking and retrying row by
                // row. The answers are read back by key, not by position.
                let mut sorted: Vec<&$crate::store::NewEpisode> =
                    rows.iter().zip(&first).filter(|(_, f)| **f).map(|(e, _)| e).collect();
                sorted.sort_by(|a, b| (&a.device, &a.episode_id).cmp(&(&b.device, &b.episode_id)));
                q.push_values(
                    sorted,
                    |mut b, e| {
                        b.push_bind(&e.episode_id)
                            .push_bind(&e.sha256)
                            .push_bind(e.size as i64)
                            .push_bind(&e.commit)
                            .push_bind(&e.device)
                            .push_bind(e.stored_at);
                    },
                );
                q.push(
                    ") AS v WHERE EXISTS (SELECT 1 FROM devices d WHERE d.name = v.column5 AND NOT d.revoked) \
                     AND EXISTS (SELECT 1 FROM commits c WHERE c.commit_id = v.column4) \
                     ON CONFLICT (device, episode_id) DO NOTHING RETURNING device, episode_id",
                );
                let created: std::collections::HashSet<(String, String)> = q
                    .build_query_as::<(String, String)>()
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(classify)?
                    .into_iter()
                    .collect();

                let is_created = |i: usize| first[i] && created.contains(&key(&rows[i]));
                let existing_keys: Vec<&$crate::store::NewEpisode> = (0..rows.len())
                    .filter(|&i| !is_created(i))
                    .map(|i| &rows[i])
                    .collect();
                let mut existing = std::collections::HashMap::new();
                if !existing_keys.is_empty() {
                    // One `(device = ? AND episode_id = ?)` per row, ORed:
                    // both databases look each up by the primary key (a row
                    // value against a VALUES list made SQLite scan the key's
                    // whole index).
                    let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                        "SELECT {} FROM episodes WHERE ",
                        $crate::store::index::sql::EPISODE_COLUMNS
                    ));
                    for (n, e) in existing_keys.iter().enumerate() {
                        q.push(if n == 0 { "(device = " } else { " OR (device = " });
                        q.push_bind(&e.device)
                            .push(" AND episode_id = ")
                            .push_bind(&e.episode_id)
                            .push(")");
                    }
                    let found: Vec<$crate::store::index::sql::EpisodeRow> = q
                        .build_query_as()
                        .fetch_all(&mut *tx)
                        .await
                        .map_err(classify)?;
                    for r in found {
                        existing.insert((r.4.clone(), r.0.clone()), $crate::store::index::sql::episode_info(r));
                    }
                }

                let refused: Vec<&$crate::store::NewEpisode> = (0..rows.len())
                    .filter(|&i| !is_created(i) && !existing.contains_key(&key(&rows[i])))
                    .map(|i| &rows[i])
                    .collect();
                let standing = Self::standing_on(&mut tx, &refused).await?;

                let mut out = Vec::with_capacity(rows.len());
                for (i, e) in rows.iter().enumerate() {
                    if is_created(i) {
                        out.push($crate::store::Inserted::Created);
                    } else if let Some(info) = existing.get(&key(e)) {
                        out.push($crate::store::Inserted::Exists(info.clone()));
                    } else if let Some(why) = standing(e) {
                        out.push($crate::store::Inserted::Refused(why));
                    } else {
                        return Err($crate::store::IndexError::Setup(format!(
                            "episode {}/{} was neither inserted nor refused",
                            e.device, e.episode_id
                        )));
                    }
                }
                tx.commit().await.map_err(classify)?;
                Ok(out)
            }

            /// Why each of `rows` was refused by the insert's standing
            /// check, read in the same transaction (`None`: it was not).
            async fn standing_on(
                tx: &mut sqlx::Transaction<'_, <$pool as $crate::store::index::sql::HasDb>::Db>,
                rows: &[&$crate::store::NewEpisode],
            ) -> Result<
                impl Fn(&$crate::store::NewEpisode) -> Option<$crate::store::Standing>,
                $crate::store::IndexError,
            > {
                type Db = <$pool as $crate::store::index::sql::HasDb>::Db;
                let classify = $crate::store::index::sql::classify;
                let mut devices = std::collections::HashMap::<String, bool>::new();
                let mut allowed = std::collections::HashSet::<String>::new();
                if !rows.is_empty() {
                    let mut q = sqlx::QueryBuilder::<Db>::new("SELECT name, revoked FROM devices WHERE name IN (");
                    let mut list = q.separated(", ");
                    for e in rows {
                        list.push_bind(&e.device);
                    }
                    q.push(")");
                    devices = q
                        .build_query_as::<(String, bool)>()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(classify)?
                        .into_iter()
                        .collect();
                    let mut q = sqlx::QueryBuilder::<Db>::new("SELECT commit_id FROM commits WHERE commit_id IN (");
                    let mut list = q.separated(", ");
                    for e in rows {
                        list.push_bind(&e.commit);
                    }
                    q.push(")");
                    allowed = q
                        .build_query_scalar::<String>()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(classify)?
                        .into_iter()
                        .collect();
                }
                Ok(move |e: &$crate::store::NewEpisode| match devices.get(&e.device) {
                    None => Some($crate::store::Standing::DeviceGone),
                    Some(true) => Some($crate::store::Standing::DeviceRevoked),
                    Some(false) if !allowed.contains(&e.commit) => {
                        Some($crate::store::Standing::CommitNotAllowed)
                    }
                    Some(false) => None,
                })
            }

        }

        impl $crate::store::Index for $ty {
            fn ping(&self) -> $crate::store::BoxFut<'_, ()> {
                Box::pin(async move {
                    sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM commits")
                        .fetch_one(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                    Ok(())
                })
            }

            fn device_by_token_hash<'a>(
                &'a self,
                hash: &'a [u8],
            ) -> $crate::store::BoxFut<'a, Option<$crate::store::DeviceAuth>> {
                Box::pin(async move {
                    let row: Option<(String, Vec<u8>, bool)> =
                        sqlx::query_as("SELECT name, token_hash, revoked FROM devices WHERE token_hash = $1")
                            .bind(hash)
                            .fetch_optional(&self.pool)
                            .await
                            .map_err($crate::store::index::sql::classify)?;
                    Ok(row.map(|(name, token_hash, revoked)| $crate::store::DeviceAuth {
                        name,
                        token_hash,
                        revoked,
                    }))
                })
            }

            fn touch_device<'a>(&'a self, name: &'a str, now: i64) -> $crate::store::BoxFut<'a, ()> {
                Box::pin(async move {
                    $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                        sqlx::query("UPDATE devices SET last_seen_at = $1 WHERE name = $2")
                            .bind(now)
                            .bind(name)
                            .execute(&mut **conn)
                            .await
                    })?;
                    Ok(())
                })
            }

            fn add_device<'a>(
                &'a self,
                name: &'a str,
                token_hash: &'a [u8],
                now: i64,
            ) -> $crate::store::BoxFut<'a, $crate::store::AddDevice> {
                Box::pin(async move {
                    let done = $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                        sqlx::query(
                            "INSERT INTO devices (name, token_hash, revoked, created_at) VALUES ($1, $2, $3, $4) \
                             ON CONFLICT DO NOTHING",
                        )
                        .bind(name)
                        .bind(token_hash)
                        .bind(false)
                        .bind(now)
                        .execute(&mut **conn)
                        .await
                    })?;
                    Ok(if done.rows_affected() == 1 {
                        $crate::store::AddDevice::Added
                    } else {
                        $crate::store::AddDevice::NameTaken
                    })
                })
            }

            fn revoke_device<'a>(&'a self, name: &'a str) -> $crate::store::BoxFut<'a, bool> {
                Box::pin(async move {
                    let done = $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                        sqlx::query("UPDATE devices SET revoked = $1 WHERE name = $2")
                            .bind(true)
                            .bind(name)
                            .execute(&mut **conn)
                            .await
                    })?;
                    Ok(done.rows_affected() > 0)
                })
            }

            fn rename_device<'a>(
                &'a self,
                old: &'a str,
                new: &'a str,
            ) -> $crate::store::BoxFut<'a, $crate::store::RenameDevice> {
                Box::pin(async move {
                    let done = $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                        sqlx::query($crate::store::index::sql::RENAME_DEVICE)
                            .bind(old)
                            .bind(new)
                            .execute(&mut **conn)
                            .await
                    })?;
                    if done.rows_affected() > 0 {
                        // Its rejected commits follow (shown to operators
                        // only; a pair the new name somehow has already
                        // stays under the old one until the window ends).
                        $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                            sqlx::query($crate::store::index::rejections_sql::RENAME_REJECTIONS)
                                .bind(old)
                                .bind(new)
                                .execute(&mut **conn)
                                .await
                        })?;
                        return Ok($crate::store::RenameDevice::Renamed);
                    }
                    Ok(match self.device(old).await? {
                        None => $crate::store::RenameDevice::NoSuchDevice,
                        Some(_) => $crate::store::RenameDevice::NameTaken,
                    })
                })
            }

            fn device<'a>(
                &'a self,
                name: &'a str,
            ) -> $crate::store::BoxFut<'a, Option<ferry_proto::admin::DeviceInfo>> {
                Box::pin(async move {
                    let row: Option<$crate::store::index::sql::DeviceRow> = sqlx::query_as($crate::store::index::sql::ONE_DEVICE)
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                    Ok(row.map($crate::store::index::sql::device_info))
                })
            }

            fn list_devices(&self) -> $crate::store::BoxFut<'_, Vec<ferry_proto::admin::DeviceInfo>> {
                Box::pin(async move {
                    let rows: Vec<$crate::store::index::sql::DeviceRow> = sqlx::query_as($crate::store::index::sql::LIST_DEVICES)
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                    Ok(rows.into_iter().map($crate::store::index::sql::device_info).collect())
                })
            }

            fn allow_commit<'a>(
                &'a self,
                commit: &'a str,
                head: bool,
                note: Option<&'a str>,
                now: i64,
            ) -> $crate::store::BoxFut<'a, ()> {
                Box::pin(async move {
                    $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                        async {
                            use sqlx::Connection as _;
                            let mut tx = (&mut **conn).begin().await?;
                            if head {
                                sqlx::query("UPDATE commits SET head = $1 WHERE head = $2 AND commit_id <> $3")
                                    .bind(false)
                                    .bind(true)
                                    .bind(commit)
                                    .execute(&mut *tx)
                                    .await?;
                            }
                            sqlx::query(
                                "INSERT INTO commits (commit_id, head, note, allowed_at) VALUES ($1, $2, $3, $4) \
                                 ON CONFLICT (commit_id) DO UPDATE SET head = (commits.head OR excluded.head), \
                                 note = COALESCE(excluded.note, commits.note)",
                            )
                            .bind(commit)
                            .bind(head)
                            .bind(note)
                            .bind(now)
                            .execute(&mut *tx)
                            .await?;
                            tx.commit().await
                        }
                        .await
                    })
                })
            }

            fn revoke_commit<'a>(&'a self, commit: &'a str) -> $crate::store::BoxFut<'a, bool> {
                Box::pin(async move {
                    let done = $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                        sqlx::query("DELETE FROM commits WHERE commit_id = $1")
                            .bind(commit)
                            .execute(&mut **conn)
                            .await
                    })?;
                    Ok(done.rows_affected() > 0)
                })
            }

            fn list_commits(&self) -> $crate::store::BoxFut<'_, Vec<ferry_proto::admin::CommitInfo>> {
                Box::pin(async move {
                    let rows: Vec<$crate::store::index::sql::CommitRow> = sqlx::query_as(
                        "SELECT commit_id, head, note, allowed_at FROM commits ORDER BY head DESC, allowed_at DESC, commit_id",
                    )
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::store::index::sql::classify)?;
                    Ok(rows.into_iter().map($crate::store::index::sql::commit_info).collect())
                })
            }

            fn commit_status<'a>(&'a self, commit: &'a str) -> $crate::store::BoxFut<'a, $crate::store::CommitStatus> {
                Box::pin(async move {
                    // One round trip: the commit's own row (if any) and the head.
                    let rows: Vec<(String, bool)> =
                        sqlx::query_as("SELECT commit_id, head FROM commits WHERE commit_id = $1 OR head = $2")
                            .bind(commit)
                            .bind(true)
                            .fetch_all(&self.pool)
                            .await
                            .map_err($crate::store::index::sql::classify)?;
                    Ok($crate::store::CommitStatus {
                        allowed: rows.iter().any(|(c, _)| c == commit),
                        head_commit: rows.into_iter().find(|(_, h)| *h).map(|(c, _)| c),
                    })
                })
            }

            fn episode<'a>(
                &'a self,
                device: &'a str,
                id: &'a str,
            ) -> $crate::store::BoxFut<'a, Option<ferry_proto::admin::EpisodeInfo>> {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM episodes WHERE device = $1 AND episode_id = $2",
                        $crate::store::index::sql::EPISODE_COLUMNS
                    );
                    let row: Option<$crate::store::index::sql::EpisodeRow> = sqlx::query_as(&sql)
                        .bind(device)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                    Ok(row.map($crate::store::index::sql::episode_info))
                })
            }

            fn episodes_with_id<'a>(
                &'a self,
                id: &'a str,
                limit: u64,
            ) -> $crate::store::BoxFut<'a, Vec<ferry_proto::admin::EpisodeInfo>> {
                Box::pin(async move {
                    let sql = format!(
                        "SELECT {} FROM episodes WHERE episode_id = $1 ORDER BY device LIMIT $2",
                        $crate::store::index::sql::EPISODE_COLUMNS
                    );
                    let rows: Vec<$crate::store::index::sql::EpisodeRow> = sqlx::query_as(&sql)
                        .bind(id)
                        .bind(limit.min(i64::MAX as u64) as i64)
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                    Ok(rows.into_iter().map($crate::store::index::sql::episode_info).collect())
                })
            }

            fn preflight<'a>(
                &'a self,
                token_hash: &'a [u8],
                commit: &'a str,
                episode_id: &'a str,
            ) -> $crate::store::BoxFut<'a, Option<$crate::store::Preflight>> {
                Box::pin(async move {
                    let row: Option<$crate::store::index::sql::PreflightRow> =
                        sqlx::query_as($crate::store::index::sql::PREFLIGHT)
                            .bind(token_hash)
                            .bind(commit)
                            .bind(true)
                            .bind(episode_id)
                            .fetch_optional(&self.pool)
                            .await
                            .map_err($crate::store::index::sql::classify)?;
                    Ok(row.map($crate::store::index::sql::preflight))
                })
            }

            fn insert_episodes<'a>(
                &'a self,
                rows: &'a [$crate::store::NewEpisode],
            ) -> $crate::store::BoxFut<'a, Vec<$crate::store::Inserted>> {
                Box::pin(Self::insert_batch(self.pool.clone(), rows))
            }

            fn list_episodes<'a>(
                &'a self,
                device: Option<&'a str>,
                limit: Option<u64>,
            ) -> $crate::store::BoxFut<'a, Vec<ferry_proto::admin::EpisodeInfo>> {
                Box::pin(async move {
                    // One device's rows are found by the primary key's
                    // prefix, so that statement names the device outright.
                    let filter = if device.is_some() { "WHERE device = $2" } else { "" };
                    let sql = format!(
                        "SELECT {} FROM episodes {filter} ORDER BY stored_at DESC, device, episode_id LIMIT $1",
                        $crate::store::index::sql::EPISODE_COLUMNS
                    );
                    let limit = limit.map(|l| l.min(i64::MAX as u64) as i64).unwrap_or(i64::MAX);
                    let mut query = sqlx::query_as(&sql).bind(limit);
                    if let Some(d) = device {
                        query = query.bind(d);
                    }
                    let rows: Vec<$crate::store::index::sql::EpisodeRow> = query
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                    Ok(rows.into_iter().map($crate::store::index::sql::episode_info).collect())
                })
            }

            fn record_rejections<'a>(
                &'a self,
                rows: &'a [$crate::store::Rejection],
                prune_before: i64,
                keep_per_device: u64,
            ) -> $crate::store::BoxFut<'a, ()> {
                Box::pin(async move {
                    type Db = <$pool as $crate::store::index::sql::HasDb>::Db;
                    $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| async {
                        use sqlx::Connection as _;
                        let mut tx = (&mut **conn).begin().await?;
                        for chunk in rows.chunks($crate::store::index::rejections_sql::REJECTIONS_PER_STATEMENT) {
                            let mut q = sqlx::QueryBuilder::<Db>::new(
                                "INSERT INTO rejected_commits (commit_id, device, attempts, first_seen, last_seen) ",
                            );
                            q.push_values(chunk, |mut b, r| {
                                b.push_bind(&r.commit)
                                    .push_bind(&r.device)
                                    .push_bind(r.attempts.min(i64::MAX as u64) as i64)
                                    .push_bind(r.first_seen)
                                    .push_bind(r.last_seen);
                            });
                            q.push($crate::store::index::rejections_sql::UPSERT_REJECTION);
                            q.build().execute(&mut *tx).await?;
                        }
                        let mut devices: Vec<&str> = rows.iter().map(|r| r.device.as_str()).collect();
                        devices.sort_unstable();
                        devices.dedup();
                        for chunk in devices.chunks($crate::store::index::rejections_sql::REJECTIONS_PER_STATEMENT) {
                            let mut q = sqlx::QueryBuilder::<Db>::new(
                                "DELETE FROM rejected_commits WHERE device IN (",
                            );
                            let mut list = q.separated(", ");
                            for d in chunk {
                                list.push_bind(*d);
                            }
                            q.push($crate::store::index::rejections_sql::KEEP_NEWEST_OF_DEVICES);
                            let mut list = q.separated(", ");
                            for d in chunk {
                                list.push_bind(*d);
                            }
                            q.push(") ) ranked WHERE n <= ");
                            q.push_bind(keep_per_device.min(i64::MAX as u64) as i64);
                            q.push(")");
                            q.build().execute(&mut *tx).await?;
                        }
                        sqlx::query("DELETE FROM rejected_commits WHERE last_seen < $1")
                            .bind(prune_before)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await
                    }.await)?;
                    Ok(())
                })
            }

            fn rejections(
                &self,
                since: i64,
                limit: u64,
            ) -> $crate::store::BoxFut<'_, Vec<$crate::store::Rejection>> {
                Box::pin(async move {
                    let rows: Vec<(String, String, i64, i64, i64)> =
                        sqlx::query_as($crate::store::index::rejections_sql::LIST_REJECTIONS)
                            .bind(since)
                            .bind(limit.min(i64::MAX as u64) as i64)
                            .fetch_all(&self.pool)
                            .await
                            .map_err($crate::store::index::sql::classify)?;
                    Ok(rows
                        .into_iter()
                        .map(|r| $crate::store::Rejection {
                            commit: r.0,
                            device: r.1,
                            attempts: r.2.max(0) as u64,
                            first_seen: r.3,
                            last_seen: r.4,
                        })
                        .collect())
                })
            }

            fn referenced<'a>(
                &'a self,
                shas: &'a [String],
            ) -> $crate::store::BoxFut<'a, std::collections::HashSet<String>> {
                Box::pin(async move {
                    let mut found = std::collections::HashSet::new();
                    // A bounded number of parameters per statement, well
                    // under SQLite's limit.
                    for chunk in shas.chunks(500) {
                        let params: Vec<String> =
                            (1..=chunk.len()).map(|i| format!("${i}")).collect();
                        let sql = format!(
                            "SELECT DISTINCT sha256 FROM episodes WHERE sha256 IN ({})",
                            params.join(", ")
                        );
                        let mut q = sqlx::query_scalar::<_, String>(&sql);
                        for sha in chunk {
                            q = q.bind(sha);
                        }
                        let rows = q
                            .fetch_all(&self.pool)
                            .await
                            .map_err($crate::store::index::sql::classify)?;
                        found.extend(rows);
                    }
                    Ok(found)
                })
            }

            fn write_gate(&self) -> $crate::store::BoxFut<'_, $crate::store::Gate> {
                Box::pin(self.gate_shared())
            }

            fn collect_gate(&self) -> $crate::store::BoxFut<'_, Option<$crate::store::Gate>> {
                Box::pin(self.gate_exclusive())
            }

            fn totals(&self) -> $crate::store::BoxFut<'_, $crate::store::Totals> {
                Box::pin(async move {
                    let (episodes, bytes, devices, commits): (i64, i64, i64, i64) = sqlx::query_as(
                        "SELECT CAST(COALESCE(SUM(episode_count), 0) AS BIGINT), \
                         CAST(COALESCE(SUM(episode_bytes), 0) AS BIGINT), \
                         COUNT(*), (SELECT COUNT(*) FROM commits) FROM devices",
                    )
                    .fetch_one(&self.pool)
                    .await
                    .map_err($crate::store::index::sql::classify)?;
                    Ok($crate::store::Totals {
                        episodes: episodes.max(0) as u64,
                        bytes: bytes.max(0) as u64,
                        devices: devices.max(0) as u64,
                        commits: commits.max(0) as u64,
                    })
                })
            }
        }
    };
}

pub(crate) use impl_sql_index;
