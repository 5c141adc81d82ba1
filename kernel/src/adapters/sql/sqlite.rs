//! The event store and key store on a SQLite file: the embedded default.
//!
//! SQLite allows one writer at a time, so writes go through a pool of exactly one connection
//! (which queues writers in order instead of letting them spin on `SQLITE_BUSY`), and reads
//! through a separate pool of read-only connections that WAL lets run beside the writer.
//! Write transactions start with `BEGIN IMMEDIATE`, so they take the write lock before their
//! first read and another process on the same file cannot invalidate it halfway.
//!
//! `synchronous = NORMAL` with WAL: a commit is durable against a crash of the process (the WAL
//! is written before the commit returns) and the file is never corrupted; only a power loss or
//! an OS crash can lose the last commits, which fsync on checkpoint then bounds. That is the
//! usual trade for an embedded store; `FULL` would fsync on every commit.

use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteQueryResult, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use uuid::Uuid;

use crate::error::{KernelError, KernelResult};

/// The event store (and key store) over one SQLite file.
#[derive(Clone)]
pub struct SqliteEventStore {
    /// Exactly one connection: SQLite's single writer.
    write: SqlitePool,
    /// Read-only connections (the same pool as `write` for an in-memory database).
    read: SqlitePool,
    appender: super::SharedAppender,
}

impl std::fmt::Debug for SqliteEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteEventStore").finish_non_exhaustive()
    }
}

impl SqliteEventStore {
    /// Opens (creating it if missing) the database at `url` (`sqlite://path/to/file.db`), with a
    /// single-connection write pool and a read pool of `max_connections`. Run [`Self::migrate`]
    /// before use.
    pub async fn connect(url: &str, max_connections: u32) -> KernelResult<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .map_err(KernelError::storage)?
            .create_if_missing(true)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                options
                    .clone()
                    .journal_mode(SqliteJournalMode::Wal)
                    .synchronous(SqliteSynchronous::Normal),
            )
            .await
            .map_err(KernelError::storage)?;
        // An in-memory database exists once per connection set; a second pool would not see it.
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Ok(Self::from_pool(write));
        }
        // Connecting the writer first has created the file and switched it to WAL.
        let read = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options.read_only(true))
            .await
            .map_err(KernelError::storage)?;
        Ok(Self::from_pools(write, read))
    }

    /// One pool for reads and writes. Writers then serialize on SQLite's lock (with the pool's
    /// busy timeout) rather than on the pool; prefer [`Self::from_pools`] with a one-connection
    /// write pool.
    pub fn from_pool(pool: SqlitePool) -> Self {
        Self {
            write: pool.clone(),
            read: pool,
            appender: Default::default(),
        }
    }

    /// A write pool (it should have `max_connections(1)`) and a read pool on the same file.
    pub fn from_pools(write: SqlitePool, read: SqlitePool) -> Self {
        Self {
            write,
            read,
            appender: Default::default(),
        }
    }

    /// Applies `migrations/sqlite`.
    pub async fn migrate(&self) -> KernelResult<()> {
        super::migrations::migrator(super::migrations::SQLITE)
            .await?
            .run(&self.write)
            .await
            .map_err(KernelError::storage)
    }

    /// The write pool (one connection).
    pub fn write_pool(&self) -> &SqlitePool {
        &self.write
    }

    /// The read pool.
    pub fn read_pool(&self) -> &SqlitePool {
        &self.read
    }

    fn reader(&self) -> &SqlitePool {
        &self.read
    }

    fn writer(&self) -> &SqlitePool {
        &self.write
    }

    async fn begin_write(&self) -> KernelResult<Transaction<'static, Sqlite>> {
        self.write
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(KernelError::storage)
    }

    /// With AUTOINCREMENT and one writer, `last_insert_rowid` is the last row of the statement.
    async fn last_position(
        _conn: &mut SqliteConnection,
        result: &SqliteQueryResult,
        _rows: usize,
        _last_event_id: Uuid,
    ) -> KernelResult<u64> {
        super::to_u64(result.last_insert_rowid())
    }

    /// SQLite has no deadlocks between writers: they queue on the write lock.
    fn is_deadlock(_err: &sqlx::Error) -> bool {
        false
    }

    /// One writer commits positions in order: no gap can fill later.
    async fn check_gap(&self, _since: DateTime<Utc>) -> KernelResult<bool> {
        Ok(false)
    }

    async fn check_missing(&self, _since: DateTime<Utc>, _missing: &[u64]) -> KernelResult<bool> {
        Ok(false)
    }

    /// The only writer holds the write lock, so a plain read is current.
    const COUNT_DISTINCT_STREAMS: &'static str =
        "COUNT(DISTINCT aggregate_type || '/' || aggregate_id)";
    const SELECT_OWNER_LOCKED: &'static str =
        "SELECT owner FROM reservations WHERE scope = ? AND value = ?";

    /// SQLite has one writer: one appender.
    const APPENDERS: usize = 1;
    /// The only writer holds the write lock, so a plain read is current.
    const LOCKING_READ: &'static str = "";

    const INSERT_KEY_IF_ABSENT: &'static str = "INSERT INTO data_keys \
         (key_id, aggregate_id, wrapped_key, created_at) VALUES (?, ?, ?, ?) \
         ON CONFLICT (key_id) DO NOTHING";

    const INSERT_FORGOTTEN_IF_ABSENT: &'static str = "INSERT INTO data_keys \
         (key_id, aggregate_id, wrapped_key, created_at, forgotten_at) VALUES (?, ?, NULL, ?, ?) \
         ON CONFLICT (key_id) DO NOTHING";
}

super::sql_event_store!(SqliteEventStore, Sqlite);
