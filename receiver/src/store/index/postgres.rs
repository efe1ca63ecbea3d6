//! The PostgreSQL index, selected by a `postgres://` `database_url`.
//!
//! The SQL is shared with SQLite (`sql.rs`); durability is PostgreSQL's own
//! (a committed transaction is on disk with the default
//! `synchronous_commit=on`).

use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;

use super::sql::{classify, impl_sql_index};
use super::IndexError;

/// The PostgreSQL index.
#[derive(Debug, Clone)]
pub struct PgIndex {
    pool: PgPool,
}

impl_sql_index!(PgIndex, PgPool);

impl PgIndex {
    /// Connects and applies migrations.
    pub async fn open(url: &str) -> Result<Self, IndexError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(30))
            .connect(url)
            .await
            .map_err(classify)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| IndexError::Setup(format!("migrating the PostgreSQL index: {e}")))?;
        Ok(Self { pool })
    }
}
