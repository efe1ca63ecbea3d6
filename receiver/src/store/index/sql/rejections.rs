//! The rejected commits table: the `Index` methods that record and list
//! rejections, for both pool types (see `impl_sql_index!` in `sql.rs`;
//! the statements' shared text is in `rejections_sql.rs`).

/// The [`Index`](crate::store::Index) methods of the rejected commits table,
/// as items of the trait's `impl` block for a pool type.
macro_rules! rejection_methods {
    ($pool:ty) => {
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
    };
}
pub(crate) use rejection_methods;
