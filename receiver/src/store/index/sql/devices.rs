//! The devices table: the `Index` methods that read and write it, for both
//! pool types (see `impl_sql_index!` in `sql.rs`).

/// The [`Index`](crate::store::Index) methods a request uses (and `ping`),
/// as items of the trait's `impl` block for a pool type.
macro_rules! device_methods {
    ($pool:ty) => {
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
    };
}
pub(crate) use device_methods;

/// The [`Index`](crate::store::Index) methods of `devices rename` and the
/// device listings, as items of the trait's `impl` block.
macro_rules! device_admin_methods {
    ($pool:ty) => {
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
        ) -> $crate::store::BoxFut<'a, Option<$crate::store::Device>> {
            Box::pin(async move {
                let row: Option<$crate::store::index::sql::DeviceRow> =
                    sqlx::query_as($crate::store::index::sql::ONE_DEVICE)
                        .bind(name)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                Ok(row.map($crate::store::index::sql::device))
            })
        }

        fn list_devices(&self) -> $crate::store::BoxFut<'_, Vec<$crate::store::Device>> {
            Box::pin(async move {
                let rows: Vec<$crate::store::index::sql::DeviceRow> =
                    sqlx::query_as($crate::store::index::sql::LIST_DEVICES)
                        .fetch_all(&self.pool)
                        .await
                        .map_err($crate::store::index::sql::classify)?;
                Ok(rows
                    .into_iter()
                    .map($crate::store::index::sql::device)
                    .collect())
            })
        }
    };
}
pub(crate) use device_admin_methods;
