//! The event store and key store on MySQL / MariaDB (InnoDB): the production backend.
//!
//! Positions come from AUTO_INCREMENT, which hands out a value at INSERT but makes the row
//! visible at COMMIT. Two writers can therefore commit out of order, and a reader can see
//! position q while a lower p is still invisible: `missing_may_fill` (a locking read of the
//! missing keys) and `gap_may_fill` (an INNODB_TRX witness, the fallback) tell the feed
//! whether such a hole may still fill (an open transaction holds it) or is a rollback.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sqlx::mysql::{
    MySqlConnection, MySqlDatabaseError, MySqlPool, MySqlPoolOptions, MySqlQueryResult,
};
use sqlx::{MySql, Transaction};
use uuid::Uuid;

use crate::error::{KernelError, KernelResult};

/// InnoDB's "Deadlock found when trying to get lock" (the whole transaction is rolled back).
const ER_LOCK_DEADLOCK: u16 = 1213;
/// A lock could not be had: waited too long (1205), or `NOWAIT` (MySQL 8's 3572).
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;
const ER_LOCK_NOWAIT: u16 = 3572;

/// Gaps of more missing positions than this are checked by time (INNODB_TRX) instead.
const MAX_LOCKED_GAP: usize = 1000;

fn is_lock_wait(err: &sqlx::Error) -> bool {
    err.as_database_error()
        .and_then(|db| db.try_downcast_ref::<MySqlDatabaseError>())
        .is_some_and(|e| matches!(e.number(), ER_LOCK_WAIT_TIMEOUT | ER_LOCK_NOWAIT))
}

/// Whether another transaction that has written rows was open at `since`, asked inside a
/// transaction of our own: the witness.
///
/// `information_schema.INNODB_TRX` is a cache that InnoDB refreshes only once it has gone
/// unread for 100 ms, so a read can return an old snapshot (and frequent readers can pin it).
/// Our own transaction appearing in it proves the snapshot is younger than the call, hence
/// younger than any gap the caller saw; without it the answer is unknown.
///
/// `trx_started` has one-second resolution and is in the server's system time zone, so it is
/// compared with the witness's own `trx_started`, never with a client clock: a transaction
/// counts unless it started at least a whole second after `since` (`?` = whole seconds since
/// `since`, rounded down). Only connections on this database count: other schemas on the same
/// server cannot hold one of our positions.
const OPEN_WRITERS_SINCE: &str = "SELECT \
     (SELECT COUNT(*) FROM information_schema.INNODB_TRX \
       WHERE trx_mysql_thread_id = CONNECTION_ID()) AS witness, \
     (SELECT COUNT(*) FROM information_schema.INNODB_TRX w \
       JOIN information_schema.INNODB_TRX t ON t.trx_mysql_thread_id <> w.trx_mysql_thread_id \
       JOIN information_schema.PROCESSLIST p ON p.ID = t.trx_mysql_thread_id \
       WHERE w.trx_mysql_thread_id = CONNECTION_ID() \
         AND t.trx_rows_modified > 0 \
         AND TIMESTAMPDIFF(SECOND, t.trx_started, w.trx_started) >= ? \
         AND (p.DB IS NULL OR p.DB = DATABASE())) AS open_writers";

/// How often, and how long apart, the gap query is retried while the cache is older than the
/// witness (a little over InnoDB's 100 ms idle time, so our own wait can let it refresh).
const STALE_CACHE_ATTEMPTS: usize = 4;
const STALE_CACHE_PAUSE: std::time::Duration = std::time::Duration::from_millis(150);

/// The event store (and key store) over a MySQL / MariaDB database.
#[derive(Clone)]
pub struct MySqlEventStore {
    pool: MySqlPool,
    /// Set once the gap query has failed and been logged, so it is logged once.
    gap_query_warned: Arc<AtomicBool>,
    appender: super::SharedAppender,
}

impl std::fmt::Debug for MySqlEventStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MySqlEventStore").finish_non_exhaustive()
    }
}

impl MySqlEventStore {
    /// Connects to `url` (`mysql://user:pass@host:3306/db`) with up to `max_connections`.
    /// Run [`Self::migrate`] before use.
    pub async fn connect(url: &str, max_connections: u32) -> KernelResult<Self> {
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections.max(1))
            // No PING before every acquire (a round trip per statement): a connection that
            // died fails its statement, is dropped by the pool, and the error surfaces once.
            .test_before_acquire(false)
            .connect(url)
            .await
            .map_err(KernelError::storage)?;
        Ok(Self::from_pool(pool))
    }

    pub fn from_pool(pool: MySqlPool) -> Self {
        Self {
            pool,
            gap_query_warned: Arc::new(AtomicBool::new(false)),
            appender: Default::default(),
        }
    }

    /// Applies `migrations/mysql`.
    pub async fn migrate(&self) -> KernelResult<()> {
        super::migrations::migrator(super::migrations::MYSQL)
            .await?
            .run(&self.pool)
            .await
            .map_err(KernelError::storage)
    }

    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    fn reader(&self) -> &MySqlPool {
        &self.pool
    }

    fn writer(&self) -> &MySqlPool {
        &self.pool
    }

    async fn begin_write(&self) -> KernelResult<Transaction<'static, MySql>> {
        self.pool.begin().await.map_err(KernelError::storage)
    }

    /// The OK packet carries the FIRST id of a multi-row INSERT. Whether the others follow it
    /// one by one depends on `innodb_autoinc_lock_mode` and `auto_increment_increment` (Galera
    /// changes the latter), so the last row is looked up by its event id instead of guessed.
    async fn last_position(
        conn: &mut MySqlConnection,
        result: &MySqlQueryResult,
        rows: usize,
        last_event_id: Uuid,
    ) -> KernelResult<u64> {
        if rows == 1 {
            return Ok(result.last_insert_id());
        }
        let position: i64 = sqlx::query_scalar("SELECT position FROM events WHERE event_id = ?")
            .bind(&last_event_id.as_bytes()[..])
            .fetch_one(conn)
            .await
            .map_err(KernelError::storage)?;
        super::to_u64(position)
    }

    fn is_deadlock(err: &sqlx::Error) -> bool {
        err.as_database_error()
            .and_then(|db| db.try_downcast_ref::<MySqlDatabaseError>())
            .is_some_and(|e| e.number() == ER_LOCK_DEADLOCK)
    }

    /// See [`OPEN_WRITERS_SINCE`]. Without the PROCESS privilege the query fails, and when the
    /// cache stays stale the answer is unknown: both answer `true`, and the feed falls back to
    /// its maximum wait. `false` means no such transaction is open now; one may have committed
    /// just before, so the caller re-reads before it skips the gap.
    async fn check_gap(&self, since: DateTime<Utc>) -> KernelResult<bool> {
        // Taken before the witness starts, so the witness is at least this far past `since`.
        let whole_seconds = (Utc::now() - since).num_seconds().max(0);
        match self.open_writers_since(whole_seconds).await {
            Ok(Some(open)) => Ok(open > 0),
            Ok(None) => {
                tracing::debug!("INNODB_TRX stayed stale; treating the gap as possibly filling");
                Ok(true)
            }
            Err(e) => {
                if !self.gap_query_warned.swap(true, Ordering::Relaxed) {
                    tracing::warn!(
                        error = %e,
                        "cannot read information_schema.INNODB_TRX (PROCESS privilege?); \
                         treating every position gap as possibly filling"
                    );
                }
                Ok(true)
            }
        }
    }

    /// Whether an open transaction holds one of the `missing` positions: a locking read of
    /// exactly those keys fails at once (`NOWAIT`) on a row an open transaction inserted,
    /// and finds a rolled-back one absent. Point lookups on the primary key, so no lock on a
    /// neighbouring row (a writer appending past the gap) gets in the way. Exact, unlike the
    /// INNODB_TRX witness of [`Self::check_gap`] (a cache that can be stale), which stays the
    /// fallback for long gaps and where the read is refused (a server without `NOWAIT`).
    async fn check_missing(&self, since: DateTime<Utc>, missing: &[u64]) -> KernelResult<bool> {
        if missing.is_empty() || missing.len() > MAX_LOCKED_GAP {
            return self.check_gap(since).await;
        }
        let marks = vec!["?"; missing.len()].join(", ");
        let sql = format!(
            "SELECT COUNT(*) FROM events WHERE position IN ({marks}) LOCK IN SHARE MODE NOWAIT"
        );
        let mut query = sqlx::query_scalar::<_, i64>(&sql);
        for position in missing {
            query = query.bind(super::to_i64(*position));
        }
        match query.fetch_one(&self.pool).await {
            Ok(_) => Ok(false),
            Err(err) if is_lock_wait(&err) => Ok(true),
            Err(err) => {
                tracing::debug!(error = %err, "locking gap read refused; asking INNODB_TRX");
                self.check_gap(since).await
            }
        }
    }

    /// The number of open writers, or `None` if the cache never showed the witness.
    async fn open_writers_since(&self, whole_seconds: i64) -> Result<Option<i64>, sqlx::Error> {
        let mut witness = self
            .pool
            .begin_with("START TRANSACTION WITH CONSISTENT SNAPSHOT")
            .await?;
        let mut open = None;
        for attempt in 0..STALE_CACHE_ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(STALE_CACHE_PAUSE).await;
            }
            let (seen, writers): (i64, i64) = sqlx::query_as(OPEN_WRITERS_SINCE)
                .bind(whole_seconds)
                .fetch_one(&mut *witness)
                .await?;
            if seen > 0 {
                open = Some(writers);
                break;
            }
        }
        witness.rollback().await?;
        Ok(open)
    }

    const COUNT_DISTINCT_STREAMS: &'static str = "COUNT(DISTINCT aggregate_type, aggregate_id)";
    /// A locking read: it sees the latest committed owner, not the transaction's snapshot.
    /// A shared lock, like the one the failed INSERT's duplicate check already holds: two
    /// writers racing for one value would deadlock asking for exclusive ones.
    const SELECT_OWNER_LOCKED: &'static str =
        "SELECT owner FROM reservations WHERE scope = ? AND value = ? LOCK IN SHARE MODE";

    /// Group commits in flight at once: while one waits for its fsync the next one gathers.
    const APPENDERS: usize = 3;
    /// Ends a SELECT that must see the latest committed rows, not the snapshot.
    const LOCKING_READ: &'static str = " FOR UPDATE";

    /// Not INSERT IGNORE: that would also turn other errors (a too-long value) into warnings.
    const INSERT_KEY_IF_ABSENT: &'static str = "INSERT INTO data_keys \
         (key_id, aggregate_id, wrapped_key, created_at) VALUES (?, ?, ?, ?) \
         ON DUPLICATE KEY UPDATE key_id = key_id";

    const INSERT_FORGOTTEN_IF_ABSENT: &'static str = "INSERT INTO data_keys \
         (key_id, aggregate_id, wrapped_key, created_at, forgotten_at) VALUES (?, ?, NULL, ?, ?) \
         ON DUPLICATE KEY UPDATE key_id = key_id";
}

super::sql_event_store!(MySqlEventStore, MySql);
