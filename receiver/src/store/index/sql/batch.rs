//! The batch insert of episodes: one transaction, one multi-row statement,
//! the answers read back by key (see `impl_sql_index!` in `sql.rs`).

/// The inherent methods of `$ty` behind `Index::insert_episodes`.
macro_rules! impl_insert_batch {
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
                conn: &mut sqlx::pool::PoolConnection<
                    <$pool as $crate::store::index::sql::HasDb>::Db,
                >,
                rows: &[$crate::store::NewEpisode],
            ) -> Result<Vec<$crate::store::Inserted>, $crate::store::IndexError> {
                let classify = $crate::store::index::sql::classify;
                let key =
                    |e: &$crate::store::NewEpisode| (e.device.clone(), e.episode_id.to_string());
                let mut seen = std::collections::HashSet::new();
                let first: Vec<bool> = rows.iter().map(|e| seen.insert(key(e))).collect();
                // One transaction, so that the answers are all or nothing:
                // a failed SELECT must not leave rows committed that are
                // then answered as failed.
                use sqlx::Connection as _;
                let mut tx = (&mut **conn).begin().await.map_err(classify)?;

                let created = Self::insert_new_on(&mut tx, rows, &first).await?;

                let is_created = |i: usize| first[i] && created.contains(&key(&rows[i]));
                let existing_keys: Vec<&$crate::store::NewEpisode> = (0..rows.len())
                    .filter(|&i| !is_created(i))
                    .map(|i| &rows[i])
                    .collect();
                let existing = Self::existing_on(&mut tx, &existing_keys).await?;

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
        }
    };
}
pub(crate) use impl_insert_batch;

/// The INSERT and the SELECT of [`impl_insert_batch!`]'s transaction, as
/// inherent methods of `$ty`.
macro_rules! impl_batch_statements {
    ($ty:ty, $pool:ty) => {
        impl $ty {
            /// The INSERT of the batch's first row of each key, in key order;
            /// returns the keys it created.
            async fn insert_new_on(
                tx: &mut sqlx::Transaction<'_, <$pool as $crate::store::index::sql::HasDb>::Db>,
                rows: &[$crate::store::NewEpisode],
                first: &[bool],
            ) -> Result<std::collections::HashSet<(String, String)>, $crate::store::IndexError> {
                type Db = <$pool as $crate::store::index::sql::HasDb>::Db;
                let classify = $crate::store::index::sql::classify;
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
                    rows.iter().zip(first).filter(|(_, f)| **f).map(|(e, _)| e).collect();
                sorted.sort_by(|a, b| (a.device.as_str(), a.episode_id.as_str()).cmp(&(b.device.as_str(), b.episode_id.as_str())));
                q.push_values(
                    sorted,
                    |mut b, e| {
                        b.push_bind(e.episode_id.as_str())
                            .push_bind(e.sha256.as_str())
                            .push_bind(e.size as i64)
                            .push_bind(e.commit.as_str())
                            .push_bind(&e.device)
                            .push_bind(e.stored_at);
                    },
                );
                q.push(
                    ") AS v WHERE EXISTS (SELECT 1 FROM devices d WHERE d.name = v.column5 AND NOT d.revoked) \
                     AND EXISTS (SELECT 1 FROM commits c WHERE c.commit_id = v.column4) \
                     AND NOT EXISTS (SELECT 1 FROM objects_being_collected o \
                                     WHERE o.sha256 = v.column2 AND o.until > v.column6) \
                     ON CONFLICT (device, episode_id) DO NOTHING RETURNING device, episode_id",
                );
                Ok(q
                    .build_query_as::<(String, String)>()
                    .fetch_all(&mut **tx)
                    .await
                    .map_err(classify)?
                    .into_iter()
                    .collect())
            }

            /// The stored rows of `keys` (those the INSERT did not create), by
            /// (device, id), read in the same transaction.
            async fn existing_on(
                tx: &mut sqlx::Transaction<'_, <$pool as $crate::store::index::sql::HasDb>::Db>,
                keys: &[&$crate::store::NewEpisode],
            ) -> Result<
                std::collections::HashMap<(String, String), $crate::store::Episode>,
                $crate::store::IndexError,
            > {
                type Db = <$pool as $crate::store::index::sql::HasDb>::Db;
                let classify = $crate::store::index::sql::classify;
                let mut existing = std::collections::HashMap::new();
                if !keys.is_empty() {
                    // One `(device = ? AND episode_id = ?)` per row, ORed:
                    // both databases look each up by the primary key (a row
                    // value against a VALUES list made SQLite scan the key's
                    // whole index).
                    let mut q = sqlx::QueryBuilder::<Db>::new(format!(
                        "SELECT {} FROM episodes WHERE ",
                        $crate::store::index::sql::EPISODE_COLUMNS
                    ));
                    for (n, e) in keys.iter().enumerate() {
                        q.push(if n == 0 { "(device = " } else { " OR (device = " });
                        q.push_bind(&e.device)
                            .push(" AND episode_id = ")
                            .push_bind(e.episode_id.as_str())
                            .push(")");
                    }
                    let found: Vec<$crate::store::index::sql::EpisodeRow> = q
                        .build_query_as()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(classify)?;
                    for r in found {
                        existing.insert((r.4.clone(), r.0.clone()), $crate::store::index::sql::episode(r)?);
                    }
                }
                Ok(existing)
            }
        }
    };
}
pub(crate) use impl_batch_statements;

/// The standing check of [`impl_insert_batch!`]'s transaction, as an
/// inherent method of `$ty`.
macro_rules! impl_batch_standing {
    ($ty:ty, $pool:ty) => {
        impl $ty {
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
                let mut collected = std::collections::HashMap::<String, i64>::new();
                if !rows.is_empty() {
                    let mut q = sqlx::QueryBuilder::<Db>::new(
                        "SELECT name, revoked FROM devices WHERE name IN (",
                    );
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
                    let mut q = sqlx::QueryBuilder::<Db>::new(
                        "SELECT commit_id FROM commits WHERE commit_id IN (",
                    );
                    let mut list = q.separated(", ");
                    for e in rows {
                        list.push_bind(e.commit.as_str());
                    }
                    q.push(")");
                    allowed = q
                        .build_query_scalar::<String>()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(classify)?
                        .into_iter()
                        .collect();
                    let mut q = sqlx::QueryBuilder::<Db>::new(
                        "SELECT sha256, until FROM objects_being_collected WHERE sha256 IN (",
                    );
                    let mut list = q.separated(", ");
                    for e in rows {
                        list.push_bind(e.sha256.as_str());
                    }
                    q.push(")");
                    collected = q
                        .build_query_as::<(String, i64)>()
                        .fetch_all(&mut **tx)
                        .await
                        .map_err(classify)?
                        .into_iter()
                        .collect();
                }
                Ok(
                    move |e: &$crate::store::NewEpisode| match devices.get(&e.device) {
                        None => Some($crate::store::Standing::DeviceGone),
                        Some(true) => Some($crate::store::Standing::DeviceRevoked),
                        Some(false) if !allowed.contains(e.commit.as_str()) => {
                            Some($crate::store::Standing::CommitNotAllowed)
                        }
                        Some(false)
                            if collected
                                .get(e.sha256.as_str())
                                .is_some_and(|until| *until > e.stored_at) =>
                        {
                            Some($crate::store::Standing::ObjectBeingCollected)
                        }
                        Some(false) => None,
                    },
                )
            }
        }
    };
}
pub(crate) use impl_batch_standing;
