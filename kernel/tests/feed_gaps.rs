//! Guarantee 4, no gap skipping: a MySQL auto-increment position becomes visible at commit,
//! not at insert, so the tailing feed must never move past a position that a still-open
//! transaction could fill, and must release a rolled-back gap after a bounded wait.
//!
//! The MariaDB tests hold a real transaction open with an inserted event row (position p)
//! while the store commits a later append (position q > p), and watch what a `Tailer` hands
//! out. An SQLite run checks the plain case: concurrent writers, every position once, in order.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use kernel::adapters::sql::MySqlEventStore;
use kernel::envelope::{AppendBatch, Committed, IdempotentResult, StoredEvent};
use kernel::feed::Tailer;
use kernel::ports::EventStore;
use kernel::KernelResult;
use sqlx::{MySql, Transaction};
use support::rig::{feed_settings, raw_append};
use tokio::sync::Notify;
use uuid::Uuid;

/// Inserts one event row inside `tx` without committing it; returns its position.
async fn insert_uncommitted(tx: &mut Transaction<'static, MySql>, aggregate_id: &str) -> u64 {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, event_id, correlation_id, causation_id, actor, recorded_at, payload) \
         VALUES ('feedtest', ?, 1, 'ticked', 1, ?, ?, NULL, NULL, ?, '{}')",
    )
    .bind(aggregate_id)
    .bind(&Uuid::now_v7().as_bytes()[..])
    .bind(&Uuid::now_v7().as_bytes()[..])
    .bind(Utc::now().timestamp_micros())
    .execute(&mut **tx)
    .await
    .expect("insert inside the held transaction")
    .last_insert_id()
}

fn tailer(store: Arc<dyn EventStore>, after: u64) -> Tailer {
    Tailer::new(store, after, feed_settings(100), Arc::new(Notify::new()))
}

/// Everything the tailer hands out within `window` (it keeps waiting for more meanwhile).
async fn drain_for(tailer: &mut Tailer, window: Duration) -> Vec<u64> {
    let deadline = Instant::now() + window;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return seen;
        }
        match tokio::time::timeout(left, tailer.next_batch()).await {
            Ok(batch) => seen.extend(batch.expect("tail").iter().map(|e| e.position)),
            Err(_) => return seen,
        }
    }
}

/// Collects handed-out positions until `last` is among them, or panics after `timeout`.
async fn drain_until(tailer: &mut Tailer, last: u64, timeout: Duration) -> Vec<u64> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while !seen.contains(&last) {
        let left = deadline.saturating_duration_since(Instant::now());
        let batch = tokio::time::timeout(left, tailer.next_batch())
            .await
            .unwrap_or_else(|_| {
                panic!("position {last} not handed out within {timeout:?}; saw {seen:?}")
            })
            .expect("tail");
        seen.extend(batch.iter().map(|e| e.position));
    }
    seen
}

/// Appends one event and starts a tailer past it; then holds a transaction open with position
/// p and commits q > p through the store.
async fn open_gap(db: &support::MySqlTestDb) -> (Tailer, Transaction<'static, MySql>, u64, u64) {
    let first = db.append(raw_append("before", 0)).await.expect("append");
    let mut tailer = tailer(db.store.clone(), 0);
    assert_eq!(
        drain_until(&mut tailer, first.position, Duration::from_secs(5)).await,
        vec![first.position]
    );
    let mut held = db.pool().begin().await.expect("begin the held transaction");
    let p = insert_uncommitted(&mut held, "held").await;
    let q = db
        .append(raw_append("after", 0))
        .await
        .expect("append q")
        .position;
    assert!(q > p, "q={q} must follow p={p}");
    assert_eq!(
        db.read_all(first.position, 100)
            .await
            .expect("read")
            .iter()
            .map(|e| e.position)
            .collect::<Vec<_>>(),
        vec![q],
        "q is visible while p is not"
    );
    (tailer, held, p, q)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailer_waits_for_an_open_transaction_then_hands_out_both_in_order() {
    let db = support::fresh_mysql().await;
    let (mut tailer, held, p, q) = open_gap(&db).await;

    // Well past gap_min_wait: the open transaction can still fill p, so q must wait.
    let early = drain_for(&mut tailer, Duration::from_secs(1)).await;
    assert!(
        early.is_empty(),
        "handed out {early:?} while p={p} was open"
    );
    assert!(
        tailer.position() < p,
        "moved to {} past p={p}",
        tailer.position()
    );

    held.commit().await.expect("commit the held transaction");
    let seen = drain_until(&mut tailer, q, Duration::from_secs(5)).await;
    assert_eq!(seen, vec![p, q], "p then q, each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailer_releases_a_rolled_back_gap_within_a_bounded_wait() {
    let db = support::fresh_mysql().await;
    let (mut tailer, held, p, q) = open_gap(&db).await;
    let early = drain_for(&mut tailer, Duration::from_millis(500)).await;
    assert!(
        early.is_empty(),
        "handed out {early:?} while p={p} was open"
    );

    held.rollback()
        .await
        .expect("roll back the held transaction");
    let rolled_back = Instant::now();
    // gap_max_wait is 60 s: only the store saying "nothing can fill it" releases it in time.
    let seen = drain_until(&mut tailer, q, Duration::from_secs(5)).await;
    assert_eq!(seen, vec![q], "q alone, never p={p}");
    eprintln!("rolled-back gap released after {:?}", rolled_back.elapsed());
    assert!(drain_for(&mut tailer, Duration::from_millis(200))
        .await
        .is_empty());
}

/// Delegates to MariaDB, but commits the held transaction at the start of the first
/// `gap_may_fill` call: the commit lands between the tailer's read (which did not see p) and
/// its question "can the gap still fill?" (which then no longer sees an open writer). In
/// production the window is the whole gap check (up to ~600 ms of stale-cache retries).
struct CommitDuringGapCheck {
    inner: Arc<MySqlEventStore>,
    held: tokio::sync::Mutex<Option<Transaction<'static, MySql>>>,
}

#[async_trait]
impl EventStore for CommitDuringGapCheck {
    async fn append(&self, batch: AppendBatch) -> KernelResult<Committed> {
        self.inner.append(batch).await
    }
    async fn load_stream(&self, t: &str, id: &str, after: u64) -> KernelResult<Vec<StoredEvent>> {
        self.inner.load_stream(t, id, after).await
    }
    async fn read_all(&self, after: u64, limit: u32) -> KernelResult<Vec<StoredEvent>> {
        self.inner.read_all(after, limit).await
    }
    async fn gap_may_fill(&self, since: chrono::DateTime<Utc>) -> KernelResult<bool> {
        if let Some(held) = self.held.lock().await.take() {
            held.commit().await.expect("commit the held transaction");
            // Answer as the store does once its INNODB_TRX cache has caught up with the commit
            // (it refreshes after 100 ms unread): polled, not slept.
            let deadline = Instant::now() + Duration::from_secs(5);
            while self.inner.gap_may_fill(since).await? {
                assert!(Instant::now() < deadline, "INNODB_TRX never caught up");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.inner.gap_may_fill(since).await
    }
    async fn aggregate_ids(&self, t: &str, after: &str, limit: u32) -> KernelResult<Vec<String>> {
        self.inner.aggregate_ids(t, after, limit).await
    }
    async fn head_position(&self) -> KernelResult<u64> {
        self.inner.head_position().await
    }
    async fn query_events(
        &self,
        filter: &kernel::ports::EventFilter,
        offset: u64,
        limit: u32,
    ) -> KernelResult<kernel::ports::EventPage> {
        self.inner.query_events(filter, offset, limit).await
    }
    async fn event_stats(&self, types: &[String]) -> KernelResult<kernel::ports::EventStats> {
        self.inner.event_stats(types).await
    }
    async fn idempotent_result(&self, key: &str) -> KernelResult<Option<IdempotentResult>> {
        self.inner.idempotent_result(key).await
    }
    async fn ping(&self) -> KernelResult<()> {
        self.inner.ping().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tailer_does_not_lose_a_gap_that_commits_during_the_gap_check() {
    let db = support::fresh_mysql().await;
    let (_, held, p, q) = open_gap(&db).await;
    let racy = Arc::new(CommitDuringGapCheck {
        inner: db.store.clone(),
        held: tokio::sync::Mutex::new(Some(held)),
    });
    let mut tailer = tailer(racy, p - 1);
    let seen = drain_until(&mut tailer, q, Duration::from_secs(5)).await;
    assert_eq!(
        seen,
        vec![p, q],
        "p committed before the gap was released: it must come first"
    );
}

/// Many writers on one server: every committed position exactly once, in increasing order,
/// with no skip (MariaDB commits auto-increment positions out of order under concurrency).
async fn concurrent_writers_are_tailed_exactly_once(store: Arc<dyn EventStore>) {
    const TASKS: usize = 4;
    const PER_TASK: u64 = 50;
    let mut tailer = tailer(store.clone(), 0);
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.len() < TASKS * PER_TASK as usize {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, tailer.next_batch()).await {
                Ok(batch) => seen.extend(batch.expect("tail").iter().map(|e| e.position)),
                Err(_) => break,
            }
        }
        seen
    });
    let writers: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move {
                let id = format!("writer-{task}");
                let mut positions = Vec::new();
                for expected in 0..PER_TASK {
                    let committed = store
                        .append(raw_append(&id, expected))
                        .await
                        .expect("append");
                    positions.push(committed.position);
                }
                positions
            })
        })
        .collect();
    let mut committed = BTreeSet::new();
    for writer in writers {
        committed.extend(writer.await.expect("writer"));
    }
    let seen = reader.await.expect("reader");
    assert_eq!(committed.len(), TASKS * PER_TASK as usize);
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "positions not strictly increasing: {seen:?}"
    );
    assert_eq!(
        seen,
        committed.into_iter().collect::<Vec<_>>(),
        "every committed position once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_tailer_sees_every_concurrent_append_once_in_order() {
    let db = support::fresh_sqlite().await;
    concurrent_writers_are_tailed_exactly_once(db.store.clone()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_tailer_sees_every_concurrent_append_once_in_order() {
    let db = support::fresh_mysql().await;
    concurrent_writers_are_tailed_exactly_once(db.store.clone()).await;
}
