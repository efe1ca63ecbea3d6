//! The commits table (the allow-list): the `Index` methods that read and
//! write it, for both pool types (see `impl_sql_index!` in `sql.rs`).

/// The [`Index`](crate::store::Index) methods of the commits table, as
/// items of the trait's `impl` block for a pool type.
macro_rules! commit_methods {
    ($pool:ty) => {
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

        fn list_commits(&self) -> $crate::store::BoxFut<'_, Vec<$crate::store::AllowedCommit>> {
            Box::pin(async move {
                let rows: Vec<$crate::store::index::sql::CommitRow> = sqlx::query_as(
                    "SELECT commit_id, head, note, allowed_at FROM commits ORDER BY head DESC, allowed_at DESC, commit_id",
                )
                .fetch_all(&self.pool)
                .await
                .map_err($crate::store::index::sql::classify)?;
                rows.into_iter().map($crate::store::index::sql::allowed_commit).collect()
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
    };
}
pub(crate) use commit_methods;
