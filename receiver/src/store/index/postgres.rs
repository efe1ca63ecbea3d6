//! The PostgreSQL index, selected by a `postgres://` `database_url`.
//!
//! The SQL is shared with SQLite (`sql.rs`); durability is PostgreSQL's own
//! (a committed transaction is on disk with the default
//! `synchronous_commit=on`). Several replicas share one database (SPEC §7):
//! migrations run under sqlx's advisory lock, so replicas starting together
//! apply them once; the write gate and the collection lease are advisory
//! locks held by a transaction, so a replica that dies lets go of them
//! with its connection.

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Transaction};

use super::sql::{classify, impl_sql_index};
use super::{BoxFut, Gate, Held, IndexError};

/// Advisory lock keys ("ferry" in ASCII, then 1 and 2): one for the write
/// gate, one for the collection lease.
const WRITE_GATE: i64 = 0x0066_6572_7279_0001;
const COLLECT_LEASE: i64 = 0x0066_6572_7279_0002;

/// How long the collector waits for batches in flight to leave the gate
/// before it gives up this round (new batches queue behind it meanwhile).
const COLLECT_WAIT: &str = "10s";

/// The PostgreSQL index.
#[derive(Debug, Clone)]
pub struct PgIndex {
    pool: PgPool,
}

impl_sql_index!(PgIndex, PgPool);

/// A gate held by an open transaction.
struct HeldTx(Transaction<'static, Postgres>);

impl Held for HeldTx {
    fn check(&mut self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            sqlx::query("SELECT 1")
                .execute(&mut *self.0)
                .await
                .map(|_| ())
                .map_err(classify)
        })
    }

    fn release(self: Box<Self>) -> BoxFut<'static, ()> {
        // The commit fails when the connection was lost: the lock went with
        // it, maybe before the batch's rows were committed.
        Box::pin(async move { self.0.commit().await.map_err(classify) })
    }
}

impl PgIndex {
    /// Connects and applies migrations (once, however many replicas start
    /// at the same time: sqlx holds an advisory lock while it migrates).
    /// `timeout` bounds the wait for a connection, so an unreachable
    /// database answers 503 rather than holding requests.
    pub async fn open(
        url: &str,
        max_connections: u32,
        timeout: Duration,
    ) -> Result<Self, IndexError> {
        let options: PgConnectOptions = url
            .parse()
            .map_err(|e| IndexError::Setup(format!("database_url: {e}")))?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(timeout)
            .connect_with(options)
            .await
            .map_err(classify)?;
        sqlx::migrate!("./migrations/postgres")
            .run(&pool)
            .await
            .map_err(|e| IndexError::Setup(format!("migrating the PostgreSQL index: {e}")))?;
        Ok(Self { pool })
    }

    /// A transaction to hold a gate in. It is idle while its holder writes
    /// to or deletes from the bucket, so a server-side
    /// `idle_in_transaction_session_timeout` must not end it (and with it
    /// the lock) behind the holder's back.
    async fn gate_tx(&self) -> Result<Transaction<'static, Postgres>, IndexError> {
        let mut tx = self.pool.begin().await.map_err(classify)?;
        sqlx::query("SET LOCAL idle_in_transaction_session_timeout = 0")
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        Ok(tx)
    }

    async fn gate_shared(&self) -> Result<Gate, IndexError> {
        let mut tx = self.gate_tx().await?;
        sqlx::query("SELECT pg_advisory_xact_lock_shared($1)")
            .bind(WRITE_GATE)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        Ok(Gate::new(HeldTx(tx)))
    }

    async fn gate_exclusive(&self) -> Result<Option<Gate>, IndexError> {
        let mut tx = self.gate_tx().await?;
        let leased: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
            .bind(COLLECT_LEASE)
            .fetch_one(&mut *tx)
            .await
            .map_err(classify)?;
        if !leased {
            return Ok(None);
        }
        sqlx::query(&format!("SET LOCAL lock_timeout = '{COLLECT_WAIT}'"))
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_GATE)
            .execute(&mut *tx)
            .await
            .map_err(classify)?;
        Ok(Some(Gate::new(HeldTx(tx))))
    }
}
