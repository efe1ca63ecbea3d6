//! The episodes table: the `Index` methods that read it, hand a batch to
//! the insert (`batch.rs`) and total it, for both pool types (see
//! `impl_sql_index!` in `sql.rs`); and the write and collection gates.

/// The [`Index`](crate::store::Index) methods that read episodes, as items
/// of the trait's `impl` block for a pool type.
macro_rules! episode_methods {
    ($pool:ty) => {
        fn episode<'a>(
            &'a self,
            device: &'a str,
            id: &'a str,
        ) -> $crate::store::BoxFut<'a, Option<$crate::store::Episode>> {
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
                row.map($crate::store::index::sql::episode).transpose()
            })
        }

        fn episodes_with_id<'a>(
            &'a self,
            id: &'a str,
            limit: u64,
        ) -> $crate::store::BoxFut<'a, Vec<$crate::store::Episode>> {
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
                rows.into_iter().map($crate::store::index::sql::episode).collect()
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
                row.map($crate::store::index::sql::preflight).transpose()
            })
        }

        fn list_episodes<'a>(
            &'a self,
            device: Option<&'a str>,
            limit: Option<u64>,
        ) -> $crate::store::BoxFut<'a, Vec<$crate::store::Episode>> {
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
                rows.into_iter().map($crate::store::index::sql::episode).collect()
            })
        }
    };
}
pub(crate) use episode_methods;

/// The [`Index`](crate::store::Index) methods that insert episodes, find
/// the referenced objects, take the gates and total the index, as items of
/// the trait's `impl` block for a pool type.
macro_rules! episode_store_methods {
    ($pool:ty) => {
        fn insert_episodes<'a>(
            &'a self,
            rows: &'a [$crate::store::NewEpisode],
        ) -> $crate::store::BoxFut<'a, Vec<$crate::store::Inserted>> {
            Box::pin(Self::insert_batch(self.pool.clone(), rows))
        }

        fn referenced<'a>(
            &'a self,
            shas: &'a [ferry_proto::Sha256],
        ) -> $crate::store::BoxFut<'a, std::collections::HashSet<ferry_proto::Sha256>> {
            Box::pin(async move {
                let mut found = std::collections::HashSet::new();
                // A bounded number of parameters per statement, well
                // under SQLite's limit.
                for chunk in shas.chunks(500) {
                    let params: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
                    let sql = format!(
                        "SELECT DISTINCT sha256 FROM episodes WHERE sha256 IN ({})",
                        params.join(", ")
                    );
                    let mut q = sqlx::query_scalar::<_, String>(&sql);
                    for sha in chunk {
                        q = q.bind(sha.as_str());
                    }
                    let rows = q
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                    // Asked by value: what comes back parses (or is not ours).
                    found.extend(
                        rows.iter()
                            .filter_map(|r| ferry_proto::Sha256::parse(r).ok()),
                    );
                }
                Ok(found)
            })
        }

        fn mark_collecting<'a>(
            &'a self,
            shas: &'a [ferry_proto::Sha256],
            until: i64,
            now: i64,
        ) -> $crate::store::BoxFut<'a, ()> {
            Box::pin(async move {
                type Db = <$pool as $crate::store::index::sql::HasDb>::Db;
                let classify = $crate::store::index::sql::classify;
                let mut tx = self.pool.begin().await.map_err(classify)?;
                sqlx::query("DELETE FROM objects_being_collected WHERE until <= $1")
                    .bind(now)
                    .execute(&mut *tx)
                    .await
                    .map_err(classify)?;
                if !shas.is_empty() {
                    let mut q = sqlx::QueryBuilder::<Db>::new(
                        "INSERT INTO objects_being_collected (sha256, until) ",
                    );
                    q.push_values(shas, |mut b, s| {
                        b.push_bind(s.as_str()).push_bind(until);
                    });
                    q.push(" ON CONFLICT (sha256) DO UPDATE SET until = excluded.until");
                    q.build().execute(&mut *tx).await.map_err(classify)?;
                }
                tx.commit().await.map_err(classify)
            })
        }

        fn unmark_collecting<'a>(
            &'a self,
            shas: &'a [ferry_proto::Sha256],
        ) -> $crate::store::BoxFut<'a, ()> {
            Box::pin(async move {
                type Db = <$pool as $crate::store::index::sql::HasDb>::Db;
                if shas.is_empty() {
                    return Ok(());
                }
                let mut q = sqlx::QueryBuilder::<Db>::new(
                    "DELETE FROM objects_being_collected WHERE sha256 IN (",
                );
                let mut list = q.separated(", ");
                for s in shas {
                    list.push_bind(s.as_str());
                }
                q.push(")");
                q.build()
                    .execute(&self.pool)
                    .await
                    .map(|_| ())
                    .map_err($crate::store::index::sql::classify)
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
    };
}
pub(crate) use episode_store_methods;
