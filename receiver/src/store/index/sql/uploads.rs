//! The resumable_uploads table (migration 0006): the `Index` methods of
//! resumable uploads on the shared object store, for both pool types (see
//! `impl_sql_index!` in `sql.rs`).

use crate::store::index::{IndexError, Progress, SharedUpload};

pub(crate) const UPLOAD_COLUMNS: &str = "upload_id, device, episode_id, commit_id, sha256, \
     length, received, created, expires, multipart, parts, hash, tail_key, tail, interrupted";

pub(crate) type UploadRow = (
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    String,
    String,
    Vec<u8>,
    String,
    i64,
    bool,
);

/// A row as the domain type; one that does not parse was changed behind
/// the receiver's back.
pub(crate) fn upload(r: UploadRow) -> Result<SharedUpload, IndexError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        IndexError::Refused(format!("resumable_uploads row {}: {what}: {e}", r.0))
    };
    let parts: Vec<String> = serde_json::from_str(&r.10).map_err(|e| bad("parts", &e))?;
    Ok(SharedUpload {
        episode_id: ferry_proto::EpisodeId::parse(&r.2).map_err(|e| bad("episode_id", &e))?,
        commit: ferry_proto::Commit::parse_lenient(&r.3).map_err(|e| bad("commit_id", &e))?,
        sha256: ferry_proto::Sha256::parse(&r.4).map_err(|e| bad("sha256", &e))?,
        length: r.5.max(0) as u64,
        created: r.7,
        progress: Progress {
            received: r.6.max(0) as u64,
            expires: r.8,
            parts,
            hash: r.11,
            tail_key: r.12,
            tail: r.13.max(0) as u64,
            interrupted: r.14,
        },
        multipart: r.9,
        device: r.1,
        id: r.0,
    })
}

/// A count or size as a database integer (they never pass `i64::MAX`).
pub(crate) fn db_int(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

pub(crate) fn parts_json(parts: &[String]) -> String {
    serde_json::to_string(parts).expect("strings serialise")
}

/// The [`Index`](crate::store::Index) methods of resumable uploads, as
/// items of the trait's `impl` block for a pool type.
macro_rules! upload_methods {
    ($pool:ty) => {
        fn create_upload<'a>(
            &'a self,
            up: &'a $crate::store::SharedUpload,
        ) -> $crate::store::BoxFut<'a, ()> {
            use $crate::store::index::sql::uploads::{db_int, parts_json};
            Box::pin(async move {
                let sql = format!(
                    "INSERT INTO resumable_uploads ({}, lease, lease_until) VALUES \
                     ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, NULL, 0)",
                    $crate::store::index::sql::uploads::UPLOAD_COLUMNS
                );
                let p = &up.progress;
                $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                    sqlx::query(&sql)
                        .bind(&up.id)
                        .bind(&up.device)
                        .bind(up.episode_id.as_str())
                        .bind(up.commit.as_str())
                        .bind(up.sha256.as_str())
                        .bind(db_int(up.length))
                        .bind(db_int(p.received))
                        .bind(up.created)
                        .bind(p.expires)
                        .bind(&up.multipart)
                        .bind(parts_json(&p.parts))
                        .bind(&p.hash)
                        .bind(&p.tail_key)
                        .bind(db_int(p.tail))
                        .bind(p.interrupted)
                        .execute(&mut **conn)
                        .await
                })?;
                Ok(())
            })
        }

        fn upload<'a>(
            &'a self,
            id: &'a str,
        ) -> $crate::store::BoxFut<'a, Option<$crate::store::SharedUpload>> {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {} FROM resumable_uploads WHERE upload_id = $1",
                    $crate::store::index::sql::uploads::UPLOAD_COLUMNS
                );
                let row: Option<$crate::store::index::sql::uploads::UploadRow> =
                    sqlx::query_as(&sql)
                        .bind(id)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                row.map($crate::store::index::sql::uploads::upload).transpose()
            })
        }

        fn lease_upload<'a>(
            &'a self,
            id: &'a str,
            lease: &'a str,
            now: i64,
            until: i64,
        ) -> $crate::store::BoxFut<'a, $crate::store::Leased> {
            Box::pin(async move {
                let sql = format!(
                    "UPDATE resumable_uploads SET lease = $2, lease_until = $3 \
                     WHERE upload_id = $1 AND (lease IS NULL OR lease_until < $4) \
                     RETURNING {}",
                    $crate::store::index::sql::uploads::UPLOAD_COLUMNS
                );
                let row: Option<$crate::store::index::sql::uploads::UploadRow> =
                    $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                        sqlx::query_as(&sql)
                            .bind(id)
                            .bind(lease)
                            .bind(until)
                            .bind(now)
                            .fetch_optional(&mut **conn)
                            .await
                    })?;
                match row {
                    Some(r) => Ok($crate::store::Leased::Taken(Box::new(
                        $crate::store::index::sql::uploads::upload(r)?,
                    ))),
                    None if self.upload(id).await?.is_some() => Ok($crate::store::Leased::Held),
                    None => Ok($crate::store::Leased::Missing),
                }
            })
        }

        fn save_upload<'a>(
            &'a self,
            id: &'a str,
            lease: &'a str,
            progress: &'a $crate::store::Progress,
            until: i64,
        ) -> $crate::store::BoxFut<'a, bool> {
            use $crate::store::index::sql::uploads::{db_int, parts_json};
            Box::pin(async move {
                let done = $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                    sqlx::query(
                        "UPDATE resumable_uploads SET received = $3, expires = $4, parts = $5, \
                         hash = $6, tail_key = $7, tail = $8, interrupted = $9, lease_until = $10 \
                         WHERE upload_id = $1 AND lease = $2",
                    )
                    .bind(id)
                    .bind(lease)
                    .bind(db_int(progress.received))
                    .bind(progress.expires)
                    .bind(parts_json(&progress.parts))
                    .bind(&progress.hash)
                    .bind(&progress.tail_key)
                    .bind(db_int(progress.tail))
                    .bind(progress.interrupted)
                    .bind(until)
                    .execute(&mut **conn)
                    .await
                })?;
                Ok(done.rows_affected() > 0)
            })
        }

        fn release_upload<'a>(
            &'a self,
            id: &'a str,
            lease: &'a str,
        ) -> $crate::store::BoxFut<'a, ()> {
            Box::pin(async move {
                $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                    sqlx::query(
                        "UPDATE resumable_uploads SET lease = NULL, lease_until = 0 \
                         WHERE upload_id = $1 AND lease = $2",
                    )
                    .bind(id)
                    .bind(lease)
                    .execute(&mut **conn)
                    .await
                })?;
                Ok(())
            })
        }

        fn delete_upload<'a>(&'a self, id: &'a str) -> $crate::store::BoxFut<'a, bool> {
            Box::pin(async move {
                let done = $crate::store::index::sql::write_on_conn!($pool, self.pool, |conn| {
                    sqlx::query("DELETE FROM resumable_uploads WHERE upload_id = $1")
                        .bind(id)
                        .execute(&mut **conn)
                        .await
                })?;
                Ok(done.rows_affected() > 0)
            })
        }

        fn expired_uploads(
            &self,
            now: i64,
            limit: u64,
        ) -> $crate::store::BoxFut<'_, Vec<$crate::store::SharedUpload>> {
            Box::pin(async move {
                let sql = format!(
                    "SELECT {} FROM resumable_uploads WHERE expires < $1 ORDER BY expires LIMIT $2",
                    $crate::store::index::sql::uploads::UPLOAD_COLUMNS
                );
                let rows: Vec<$crate::store::index::sql::uploads::UploadRow> =
                    sqlx::query_as(&sql)
                        .bind(now)
                        .bind($crate::store::index::sql::uploads::db_int(limit))
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                rows.into_iter()
                    .map($crate::store::index::sql::uploads::upload)
                    .collect()
            })
        }

        fn open_uploads<'a>(
            &'a self,
            device: &'a str,
        ) -> $crate::store::BoxFut<'a, $crate::store::OpenUploads> {
            Box::pin(async move {
                let classify = $crate::store::index::sql::classify;
                let (count, pending): (i64, Option<i64>) = sqlx::query_as(
                    "SELECT COUNT(*), CAST(SUM(length - received) AS BIGINT) FROM resumable_uploads",
                )
                .fetch_one(&self.pool)
                .await
                .map_err(classify)?;
                let mine: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT upload_id, created FROM resumable_uploads WHERE device = $1 \
                     ORDER BY expires, received, created, upload_id",
                )
                .bind(device)
                .fetch_all(&self.pool)
                .await
                .map_err(classify)?;
                Ok($crate::store::OpenUploads {
                    count: count.max(0) as u64,
                    pending: pending.unwrap_or(0).max(0) as u64,
                    device: mine,
                })
            })
        }
    };
}

pub(crate) use upload_methods;
