//! The SQL of the index, shared by the SQLite and PostgreSQL backends.
//!
//! Both speak the same statements (`$N` parameters, `ON CONFLICT`, partial
//! unique index for the one head commit), so one macro implements
//! [`Index`](super::Index) for both pool types; only opening differs
//! (`sqlite.rs`, `postgres.rs`).

use super::{AllowedCommit, Device, IndexError};

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

pub(crate) fn episode(r: EpisodeRow) -> Result<crate::store::Episode, IndexError> {
    // Rows are written only from parsed values: one that does not parse
    // was changed behind the receiver's back.
    let bad = |what: &str, e: ferry_proto::ParseIdError| {
        IndexError::Refused(format!("episode row {}/{}: {what}: {e}", r.4, r.0))
    };
    Ok(crate::store::Episode {
        episode_id: ferry_proto::EpisodeId::parse(&r.0).map_err(|e| bad("episode_id", e))?,
        sha256: ferry_proto::Sha256::parse(&r.1).map_err(|e| bad("sha256", e))?,
        size: r.2.max(0) as u64,
        commit: ferry_proto::Commit::parse_lenient(&r.3).map_err(|e| bad("commit_id", e))?,
        device: r.4.clone(),
        stored_at: r.5,
    })
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

pub(crate) fn preflight(row: PreflightRow) -> Result<super::Preflight, IndexError> {
    let (name, token_hash, revoked, allowed, head_commit, id, sha, size, commit, device, at) = row;
    let episode = match (id, sha, size, commit, device, at) {
        (Some(id), Some(sha), Some(size), Some(commit), Some(device), Some(at)) => {
            Some(episode((id, sha, size, commit, device, at))?)
        }
        _ => None,
    };
    Ok(super::Preflight {
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
    })
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

pub(crate) fn device(r: DeviceRow) -> Device {
    Device {
        name: r.0,
        revoked: r.1,
        created_at: r.2,
        last_seen_at: r.3,
        last_upload_at: r.4,
        episodes: r.5.max(0) as u64,
        bytes: r.6.max(0) as u64,
    }
}

pub(crate) type CommitRow = (String, bool, Option<String>, i64);

pub(crate) fn allowed_commit(r: CommitRow) -> Result<AllowedCommit, IndexError> {
    // Written only from a parsed commit (`ops::allow_commit`): one that
    // does not parse was changed behind the receiver's back.
    let commit = ferry_proto::Commit::parse_lenient(&r.0)
        .map_err(|e| IndexError::Refused(format!("commits row {:?}: commit_id: {e}", r.0)))?;
    Ok(AllowedCommit {
        commit,
        head: r.1,
        note: r.2,
        allowed_at: r.3,
    })
}

mod batch;
mod commits;
mod devices;
mod episodes;
mod rejections;
pub(crate) mod uploads;

pub(crate) use batch::{impl_batch_standing, impl_batch_statements, impl_insert_batch};
pub(crate) use commits::commit_methods;
pub(crate) use devices::{device_admin_methods, device_methods};
pub(crate) use episodes::{episode_methods, episode_store_methods};
pub(crate) use rejections::rejection_methods;
pub(crate) use uploads::upload_methods;

/// Implements [`Index`](super::Index) for a struct with a `pool` field of a
/// concrete sqlx pool type: one implementation for SQLite and PostgreSQL,
/// its methods in one file per table group under `sql/`.
macro_rules! impl_sql_index {
    ($ty:ty, $pool:ty) => {
        $crate::store::index::sql::impl_insert_batch!($ty, $pool);
        $crate::store::index::sql::impl_batch_statements!($ty, $pool);
        $crate::store::index::sql::impl_batch_standing!($ty, $pool);

        impl $crate::store::Index for $ty {
            $crate::store::index::sql::device_methods!($pool);
            $crate::store::index::sql::device_admin_methods!($pool);
            $crate::store::index::sql::commit_methods!($pool);
            $crate::store::index::sql::episode_methods!($pool);
            $crate::store::index::sql::episode_store_methods!($pool);
            $crate::store::index::sql::rejection_methods!($pool);
            $crate::store::index::sql::upload_methods!($pool);
        }
    };
}

pub(crate) use impl_sql_index;
