//! The sqlx event store and key store, on SQLite (the embedded default) and MySQL / MariaDB.
//!
//! Both backends share one schema shape (`migrations/sqlite`, `migrations/mysql`) and, through
//! the `sql_event_store!` macro, one implementation of everything whose SQL is the same. Each
//! backend file only supplies what differs: how a write transaction begins, how the position of
//! the last inserted row is found, a few dialect statements and `gap_may_fill`.
//!
//! How `append` works (both backends), in one transaction:
//! 1. releases, then reservations (a taken value → `Duplicate`, unless the owner is the same);
//! 2. the batch's new data keys (`AppendBatch::new_keys`), so a new aggregate's key and its
//!    first events commit together (another writer's key under the same id → `Conflict`);
//! 3. for each stream, a guard that `expected_sequence` exists (a sequence ahead of the stream
//!    would otherwise leave a hole), then one multi-row INSERT with sequences
//!    `expected_sequence + 1..`; the UNIQUE (aggregate_type, aggregate_id, sequence) index is the
//!    optimistic lock, so a unique violation there is a `Conflict`;
//! 4. the idempotency key with the JSON of the resulting `Committed`.
//!
//! Concurrent batches are group-committed (see [`Appender`]): one transaction, one INSERT
//! for the events of many batches; a group that fails is redone batch by batch.
//!
//! Any failure rolls the whole batch back. When the batch carries an idempotency key, a failure
//! is checked once more against the stored keys: a concurrent request with the same key may have
//! won the race, and then its result is returned (same hash) or `IdempotencyMismatch`.
//!
//! A batch without events is allowed and is not an error: its reservations, releases and
//! idempotency key are still applied, and `Committed.position` is the head position seen inside
//! the transaction (so a `min_position` read that follows it never waits).
//!
//! Timestamps are stored as unix microseconds, so `recorded_at` loses its sub-microsecond part.
//! Data keys: a key id is either a bare aggregate id or `"{aggregate_type}/{aggregate_id}"`;
//! the aggregate id (after the first `/`) is stored beside it for `key_ids_for`.

pub(crate) mod migrations;
pub mod mysql;
pub mod sqlite;

pub use mysql::MySqlEventStore;
pub use sqlite::SqliteEventStore;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use crate::domain::DomainError;
use crate::envelope::{
    AppendBatch, Committed, CommittedStream, IdempotencyKey, IdempotentResult, NewEvent,
    StoredEvent, StreamAppend,
};
use crate::error::{KernelError, KernelResult};

/// Most batches one group commit takes, and (roughly) most events: a group stops growing
/// once it holds this many.
const MAX_GROUP_BATCHES: usize = 128;
const MAX_GROUP_EVENTS: usize = 4000;
/// Batches that may wait for an appender before `append` itself waits.
const APPEND_QUEUE: usize = 1024;

/// A batch waiting for an appender, and where its answer goes.
pub(crate) type Pending = (AppendBatch, oneshot::Sender<KernelResult<Committed>>);

/// Group commit. `append` hands its batch to a few appender tasks; each takes the first
/// waiting batch plus every batch queued behind it (up to the bounds above) and commits them
/// in ONE transaction, so concurrent commands share a durable commit and a multi-row INSERT.
/// A group that fails for any reason (a conflict, a taken value, a replayed idempotency key)
/// is rolled back and its batches are appended one by one, which gives each its own exact
/// answer: a group never changes what a batch would have been told alone.
#[derive(Default)]
pub(crate) struct Appender {
    queue: parking_lot::Mutex<Option<mpsc::Sender<Pending>>>,
}

impl Appender {
    /// The queue to the appender tasks, starting them with `start` when there are none (the
    /// first append, or after the runtime that ran them has gone).
    fn queue(&self, start: impl FnOnce(mpsc::Receiver<Pending>)) -> mpsc::Sender<Pending> {
        let mut queue = self.queue.lock();
        match &*queue {
            Some(sender) if !sender.is_closed() => sender.clone(),
            _ => {
                let (sender, receiver) = mpsc::channel(APPEND_QUEUE);
                start(receiver);
                *queue = Some(sender.clone());
                sender
            }
        }
    }
}

/// The next group: the first waiting batch and whatever is already queued behind it.
pub(crate) async fn next_group(
    receiver: &tokio::sync::Mutex<mpsc::Receiver<Pending>>,
) -> Option<Vec<Pending>> {
    let mut receiver = receiver.lock().await;
    let first = receiver.recv().await?;
    let mut events = batch_events(&first.0);
    let mut group = vec![first];
    while group.len() < MAX_GROUP_BATCHES && events < MAX_GROUP_EVENTS {
        match receiver.try_recv() {
            Ok(next) => {
                events += batch_events(&next.0);
                group.push(next);
            }
            Err(_) => break,
        }
    }
    Some(group)
}

fn batch_events(batch: &AppendBatch) -> usize {
    batch.streams.iter().map(|s| s.events.len()).sum()
}

/// Whether a batch can share a group: one without events answers with the head position,
/// which only a transaction of its own can tell.
fn groupable(batch: &AppendBatch) -> bool {
    batch_events(batch) > 0
}

/// One row of an events INSERT.
pub(crate) struct GroupRow<'a> {
    batch: &'a AppendBatch,
    stream: &'a StreamAppend,
    sequence: u64,
    event: &'a NewEvent,
}

/// What a batch's streams committed, once their events are in.
fn committed_streams(batch: &AppendBatch) -> Vec<CommittedStream> {
    batch
        .streams
        .iter()
        .map(|s| CommittedStream {
            aggregate_type: s.aggregate_type.clone(),
            aggregate_id: s.aggregate_id.clone(),
            sequence: s.expected_sequence + s.events.len() as u64,
            event_ids: s.events.iter().map(|e| e.event_id).collect(),
            event_types: s.events.iter().map(|e| e.event_type.clone()).collect(),
        })
        .collect()
}

/// Why a group did not commit.
pub(crate) enum GroupFailure {
    /// Before COMMIT: nothing was written; the batches are appended one by one.
    Rejected(KernelError),
    /// At COMMIT: the outcome is unknown, and every batch gets the error.
    Commit(KernelError),
}

/// A store's appender, shared by its clones.
pub(crate) type SharedAppender = Arc<Appender>;

/// Rows per INSERT statement: well under SQLite's 32766 and MySQL's 65535 bind parameters
/// (11 per row).
const INSERT_CHUNK_ROWS: usize = 500;
/// Payload bytes per INSERT statement, to stay well under MySQL's `max_allowed_packet`
/// (16 MiB by default on MariaDB). A single larger event still goes alone in its statement.
const INSERT_CHUNK_BYTES: usize = 4 << 20;

/// The columns of `events`, in the order [`EventRow`] reads them.
const EVENT_COLUMNS: &str = "position, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, event_id, correlation_id, causation_id, actor, recorded_at, payload";

const INSERT_EVENTS: &str = "INSERT INTO events (aggregate_type, aggregate_id, sequence, \
     event_type, event_version, event_id, correlation_id, causation_id, actor, recorded_at, \
     payload) ";

/// Column limits of the MySQL schema, checked for both backends so they behave the same and a
/// too-long value is a clear 4xx rather than a storage error.
const MAX_AGGREGATE_TYPE: usize = 128;
const MAX_NAME: usize = 255;
const MAX_REQUEST_HASH: usize = 64;

/// One `events` row as both backends return it. Text columns are read as bytes: MySQL flags
/// binary-collated (`utf8mb4_bin`) columns as BINARY, which sqlx refuses to decode as `String`.
#[derive(Debug)]
struct EventRow {
    position: i64,
    aggregate_type: Vec<u8>,
    aggregate_id: Vec<u8>,
    sequence: i64,
    event_type: Vec<u8>,
    event_version: i32,
    event_id: Vec<u8>,
    correlation_id: Vec<u8>,
    causation_id: Option<Vec<u8>>,
    actor: Option<Vec<u8>>,
    recorded_at: i64,
    payload: Vec<u8>,
}

impl<'r, R: sqlx::Row> sqlx::FromRow<'r, R> for EventRow
where
    &'static str: sqlx::ColumnIndex<R>,
    i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i32: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Vec<u8>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    fn from_row(row: &'r R) -> Result<Self, sqlx::Error> {
        Ok(EventRow {
            position: row.try_get("position")?,
            aggregate_type: row.try_get("aggregate_type")?,
            aggregate_id: row.try_get("aggregate_id")?,
            sequence: row.try_get("sequence")?,
            event_type: row.try_get("event_type")?,
            event_version: row.try_get("event_version")?,
            event_id: row.try_get("event_id")?,
            correlation_id: row.try_get("correlation_id")?,
            causation_id: row.try_get("causation_id")?,
            actor: row.try_get("actor")?,
            recorded_at: row.try_get("recorded_at")?,
            payload: row.try_get("payload")?,
        })
    }
}

impl TryFrom<EventRow> for StoredEvent {
    type Error = KernelError;

    fn try_from(row: EventRow) -> KernelResult<Self> {
        Ok(StoredEvent {
            position: to_u64(row.position)?,
            aggregate_type: text(row.aggregate_type)?,
            aggregate_id: text(row.aggregate_id)?,
            sequence: to_u64(row.sequence)?,
            event_type: text(row.event_type)?,
            event_version: row.event_version,
            event_id: uuid_from(&row.event_id)?,
            correlation_id: uuid_from(&row.correlation_id)?,
            causation_id: row.causation_id.as_deref().map(uuid_from).transpose()?,
            actor: row.actor.map(text).transpose()?,
            recorded_at: from_micros(row.recorded_at)?,
            payload: row.payload,
        })
    }
}

/// A text column read as bytes (see [`EventRow`]).
fn text(bytes: Vec<u8>) -> KernelResult<String> {
    String::from_utf8(bytes).map_err(|e| KernelError::Storage(format!("stored text: {e}")))
}

/// A stream's events as rows, with their sequences.
fn rows_of<'a>(
    batch: &'a AppendBatch,
    stream: &'a StreamAppend,
) -> impl Iterator<Item = GroupRow<'a>> + 'a {
    stream
        .events
        .iter()
        .enumerate()
        .map(move |(i, event)| GroupRow {
            batch,
            stream,
            sequence: stream.expected_sequence + 1 + i as u64,
            event,
        })
}

/// Rows split into INSERT statements of at most [`INSERT_CHUNK_ROWS`] rows and about
/// [`INSERT_CHUNK_BYTES`] of payload; never an empty chunk.
fn chunk_rows<'a>(rows: impl Iterator<Item = GroupRow<'a>>) -> Vec<Vec<GroupRow<'a>>> {
    let mut chunks: Vec<Vec<GroupRow<'a>>> = Vec::new();
    let mut bytes = 0;
    for row in rows {
        let len = row.event.payload.len();
        match chunks.last_mut() {
            Some(chunk) if chunk.len() < INSERT_CHUNK_ROWS && bytes + len <= INSERT_CHUNK_BYTES => {
                chunk.push(row);
            }
            _ => {
                chunks.push(vec![row]);
                bytes = 0;
            }
        }
        bytes += len;
    }
    chunks
}

/// Expected sequences the table must confirm per statement (three binds each).
const CHECK_CHUNK_STREAMS: usize = 500;

/// The streams of a batch whose expected sequence the events table must confirm: each one
/// with events and an `expected_sequence` above 0, unless an earlier stream of the same
/// aggregate in the batch comes first, which it must then continue exactly (its rows are not
/// in the table yet). A stream that does not is a conflict.
fn streams_to_check(batch: &AppendBatch) -> KernelResult<Vec<&StreamAppend>> {
    let mut next: HashMap<(&str, &str), u64> = HashMap::new();
    let mut checks = Vec::new();
    for s in batch.streams.iter().filter(|s| !s.events.is_empty()) {
        let key = (s.aggregate_type.as_str(), s.aggregate_id.as_str());
        match next.get(&key) {
            Some(&continues) if continues != s.expected_sequence => {
                return Err(conflict(
                    &s.aggregate_type,
                    &s.aggregate_id,
                    s.expected_sequence,
                ));
            }
            Some(_) => {}
            None if s.expected_sequence > 0 => checks.push(s),
            None => {}
        }
        next.insert(key, s.expected_sequence + s.events.len() as u64);
    }
    Ok(checks)
}

/// The conflict a rejected INSERT of `rows` stands for: the first of their streams that
/// `taken` (the `(aggregate_type, aggregate_id)` of a row already stored under one of their
/// sequences) names, else the first of them.
fn conflict_of(rows: &[GroupRow<'_>], taken: Option<(String, String)>) -> KernelError {
    let stream = taken
        .and_then(|(aggregate_type, aggregate_id)| {
            rows.iter()
                .map(|r| r.stream)
                .find(|s| s.aggregate_type == aggregate_type && s.aggregate_id == aggregate_id)
        })
        .or_else(|| rows.first().map(|r| r.stream));
    match stream {
        Some(s) => conflict(&s.aggregate_type, &s.aggregate_id, s.expected_sequence),
        None => KernelError::storage("an empty INSERT was rejected"),
    }
}

fn rows_to_events(rows: Vec<EventRow>) -> KernelResult<Vec<StoredEvent>> {
    rows.into_iter().map(StoredEvent::try_from).collect()
}

/// A `u64` bound to a signed BIGINT: values past `i64::MAX` clamp (no row can be that high).
fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> KernelResult<u64> {
    u64::try_from(v).map_err(|_| KernelError::Storage(format!("negative value {v} in the store")))
}

fn uuid_from(bytes: &[u8]) -> KernelResult<Uuid> {
    Uuid::from_slice(bytes).map_err(|e| KernelError::Storage(format!("stored uuid: {e}")))
}

fn micros(at: DateTime<Utc>) -> i64 {
    at.timestamp_micros()
}

fn from_micros(v: i64) -> KernelResult<DateTime<Utc>> {
    DateTime::from_timestamp_micros(v)
        .ok_or_else(|| KernelError::Storage(format!("stored timestamp {v} is out of range")))
}

/// The aggregate id a data key belongs to: the part after the first `/`, or the whole key id.
fn key_aggregate_id(key_id: &str) -> &str {
    key_id.split_once('/').map_or(key_id, |(_, id)| id)
}

fn check_len(field: &str, value: &str, max: usize) -> KernelResult<()> {
    if value.chars().count() > max {
        return Err(KernelError::Rejected(DomainError::invalid(
            field,
            format!("must be at most {max} characters"),
        )));
    }
    Ok(())
}

/// Rejects values the schema cannot hold, before any transaction starts.
fn validate_batch(batch: &AppendBatch) -> KernelResult<()> {
    for s in &batch.streams {
        check_len("aggregate_type", &s.aggregate_type, MAX_AGGREGATE_TYPE)?;
        check_len("aggregate_id", &s.aggregate_id, MAX_NAME)?;
        if s.expected_sequence > i64::MAX as u64 - s.events.len() as u64 {
            return Err(KernelError::Rejected(DomainError::invalid(
                "expected_version",
                "is out of range",
            )));
        }
        for e in &s.events {
            check_len("event_type", &e.event_type, MAX_NAME)?;
        }
    }
    if let Some(actor) = &batch.actor {
        check_len("actor", actor, MAX_NAME)?;
    }
    if let Some(idem) = &batch.idempotency {
        check_len("idempotency_key", &idem.key, MAX_NAME)?;
        check_len("request_hash", &idem.request_hash, MAX_REQUEST_HASH)?;
    }
    for r in batch.reservations.iter().chain(&batch.releases) {
        check_len("reservation.scope", &r.scope, MAX_AGGREGATE_TYPE)?;
        check_len("reservation.value", &r.value, MAX_NAME)?;
        check_len("reservation.owner", &r.owner, MAX_NAME)?;
    }
    Ok(())
}

/// The answer to a request whose idempotency key is already stored.
fn replay_idempotent(key: &IdempotencyKey, stored: IdempotentResult) -> KernelResult<Committed> {
    if stored.request_hash == key.request_hash {
        Ok(stored.committed)
    } else {
        Err(KernelError::IdempotencyMismatch(key.key.clone()))
    }
}

fn parse_idempotent(request_hash: Vec<u8>, response: &[u8]) -> KernelResult<IdempotentResult> {
    Ok(IdempotentResult {
        request_hash: text(request_hash)?,
        committed: serde_json::from_slice(response)?,
    })
}

fn is_unique_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// Whether a unique violation on `events` came from the event id rather than the sequence.
fn is_event_id_violation(err: &sqlx::Error) -> bool {
    matches!(err, sqlx::Error::Database(db) if db.message().contains("event_id"))
}

fn conflict(aggregate_type: &str, aggregate_id: &str, expected: u64) -> KernelError {
    KernelError::Conflict {
        aggregate_type: aggregate_type.to_string(),
        aggregate_id: aggregate_id.to_string(),
        expected,
    }
}

/// A value bound into an event-log query.
pub(crate) enum LogBind {
    Text(String),
    Int(i64),
}

/// The WHERE clause (and its binds, in order) of an event-log filter. Only fixed column names
/// reach the SQL text; every value is bound.
pub(crate) fn log_condition(filter: &crate::ports::EventFilter) -> (String, Vec<LogBind>) {
    let mut clauses = vec!["position > ?".to_string()];
    let mut binds = vec![LogBind::Int(to_i64(filter.after_position))];
    if !filter.aggregate_types.is_empty() {
        let marks = vec!["?"; filter.aggregate_types.len()].join(", ");
        clauses.push(format!("aggregate_type IN ({marks})"));
        binds.extend(filter.aggregate_types.iter().cloned().map(LogBind::Text));
    }
    if let Some(id) = &filter.aggregate_id {
        clauses.push("aggregate_id = ?".into());
        binds.push(LogBind::Text(id.clone()));
    }
    if let Some(event_type) = &filter.event_type {
        clauses.push("event_type = ?".into());
        binds.push(LogBind::Text(event_type.clone()));
    }
    if let Some(actor) = &filter.actor {
        clauses.push("actor = ?".into());
        binds.push(LogBind::Text(actor.clone()));
    }
    if let Some(from) = filter.from {
        clauses.push("recorded_at >= ?".into());
        binds.push(LogBind::Int(from.timestamp_micros()));
    }
    if let Some(to) = filter.to {
        clauses.push("recorded_at < ?".into());
        binds.push(LogBind::Int(to.timestamp_micros()));
    }
    if let Some(streams) = &filter.streams {
        clauses.push(streams_condition(streams, &mut binds));
    }
    (clauses.join(" AND "), binds)
}

/// `(<set> OR <set> ...)`, each set `(aggregate_type IN (..) AND aggregate_id IN (..))`; a
/// set or a list with nothing in it matches nothing.
fn streams_condition(streams: &[crate::ports::StreamSet], binds: &mut Vec<LogBind>) -> String {
    let mut sets = Vec::new();
    for set in streams {
        let ids_empty = set.aggregate_ids.as_ref().is_some_and(Vec::is_empty);
        if set.aggregate_types.is_empty() || ids_empty {
            continue;
        }
        let marks = vec!["?"; set.aggregate_types.len()].join(", ");
        let mut condition = format!("(aggregate_type IN ({marks})");
        binds.extend(set.aggregate_types.iter().cloned().map(LogBind::Text));
        if let Some(ids) = &set.aggregate_ids {
            let marks = vec!["?"; ids.len()].join(", ");
            condition.push_str(&format!(" AND aggregate_id IN ({marks})"));
            binds.extend(ids.iter().cloned().map(LogBind::Text));
        }
        condition.push(')');
        sets.push(condition);
    }
    if sets.is_empty() {
        "1 = 0".to_string()
    } else {
        format!("({})", sets.join(" OR "))
    }
}

/// Implements the shared part of a sqlx store. The backend type must provide:
/// - `fn reader(&self) -> &Pool<DB>` and `fn writer(&self) -> &Pool<DB>`;
/// - `async fn begin_write(&self) -> KernelResult<Transaction<'static, DB>>`;
/// - `async fn last_position(conn, &QueryResult, rows, last_event_id) -> KernelResult<u64>`:
///   the position of the last row of an INSERT that just ran on `conn`;
/// - `fn is_deadlock(&sqlx::Error) -> bool` (a deadlock between writers is a `Conflict`);
/// - `async fn check_gap(&self, since) -> KernelResult<bool>` and
///   `async fn check_missing(&self, since, missing: &[u64]) -> KernelResult<bool>`;
/// - const `COUNT_DISTINCT_STREAMS`, the SQL that counts distinct (type, id) pairs;
/// - consts `SELECT_OWNER_LOCKED` (the owner of a reservation, read with a lock where the
///   backend has row locks), `INSERT_KEY_IF_ABSENT` and `INSERT_FORGOTTEN_IF_ABSENT`,
///   `LOCKING_READ` (the tail of a SELECT that must read the latest rows) and `APPENDERS`
///   (group commits in flight at once);
/// - a field `appender: SharedAppender` (see [`Appender`]).
macro_rules! sql_event_store {
    ($store:ty, $db:ty) => {
        impl $store {
            /// The committed sequence of one aggregate (0 when it has no events).
            pub async fn stream_sequence(
                &self,
                aggregate_type: &str,
                aggregate_id: &str,
            ) -> $crate::error::KernelResult<u64> {
                let seq: i64 = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(sequence), 0) FROM events \
                     WHERE aggregate_type = ? AND aggregate_id = ?",
                )
                .bind(aggregate_type)
                .bind(aggregate_id)
                .fetch_one(self.reader())
                .await
                .map_err($crate::error::KernelError::storage)?;
                $crate::adapters::sql::to_u64(seq)
            }

            /// Everything `append` writes, inside the caller's transaction.
            async fn append_in_tx(
                conn: &mut <$db as sqlx::Database>::Connection,
                batch: &$crate::envelope::AppendBatch,
            ) -> $crate::error::KernelResult<$crate::envelope::Committed> {
                use $crate::adapters::sql as common;
                use $crate::error::KernelError;

                Self::apply_reservations(&mut *conn, batch).await?;

                Self::insert_new_keys(
                    &mut *conn,
                    &batch.new_keys,
                    batch.recorded_at,
                    || match batch.streams.first() {
                        Some(s) => common::conflict(&s.aggregate_type, &s.aggregate_id, s.expected_sequence),
                        None => KernelError::storage("a data key was stored by another writer"),
                    },
                    |e| Self::write_error(e, batch),
                )
                .await?;

                // One check for the whole batch, then every stream's rows in multi-row
                // INSERTs: a unit of work over hundreds of aggregates costs a few statements,
                // not two per stream.
                let checks = common::streams_to_check(batch)?;
                if let Some(s) = Self::first_not_at_expected(&mut *conn, &checks)
                    .await
                    .map_err(|e| Self::write_error(e, batch))?
                {
                    // The unique index catches a stale sequence; this catches one that is
                    // ahead of the stream, which would otherwise leave a hole.
                    return Err(common::conflict(&s.aggregate_type, &s.aggregate_id, s.expected_sequence));
                }
                let chunks = common::chunk_rows(
                    batch.streams.iter().flat_map(|s| common::rows_of(batch, s)),
                );
                let mut last_position: Option<u64> = None;
                for (index, chunk) in chunks.iter().enumerate() {
                    let result = match Self::event_insert(chunk).build().execute(&mut *conn).await {
                        Ok(result) => result,
                        Err(e) if common::is_unique_violation(&e) => {
                            if common::is_event_id_violation(&e) {
                                return Err(KernelError::Rejected(
                                    $crate::domain::DomainError::AlreadyExists(
                                        "an event id of this batch".into(),
                                    ),
                                ));
                            }
                            let taken = Self::stream_of_taken_row(&mut *conn, chunk).await?;
                            return Err(common::conflict_of(chunk, taken));
                        }
                        Err(e) => return Err(Self::write_error(e, batch)),
                    };
                    if index + 1 == chunks.len() {
                        let last_event_id = chunk.last().map(|r| r.event.event_id).unwrap_or_default();
                        last_position = Some(
                            Self::last_position(&mut *conn, &result, chunk.len(), last_event_id)
                                .await?,
                        );
                    }
                }
                let streams = common::committed_streams(batch);

                let position = match last_position {
                    Some(p) => p,
                    None => {
                        let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
                            .fetch_one(&mut *conn)
                            .await
                            .map_err(|e| Self::write_error(e, batch))?;
                        common::to_u64(head)?
                    }
                };
                let committed = $crate::envelope::Committed { position, streams };

                if let Some(idem) = &batch.idempotency {
                    let response = serde_json::to_string(&committed)?;
                    let inserted = sqlx::query(
                        "INSERT INTO idempotency_keys (idem_key, request_hash, response, created_at) \
                         VALUES (?, ?, ?, ?)",
                    )
                    .bind(&idem.key)
                    .bind(&idem.request_hash)
                    .bind(&response)
                    .bind(common::micros(batch.recorded_at))
                    .execute(&mut *conn)
                    .await;
                    match inserted {
                        Ok(_) => {}
                        // Another request stored the key since we looked; `append` reads it back.
                        Err(e) if common::is_unique_violation(&e) => {
                            return Err(KernelError::IdempotencyMismatch(idem.key.clone()));
                        }
                        Err(e) => return Err(Self::write_error(e, batch)),
                    }
                }
                Ok(committed)
            }

            /// Releases, then reservations: a value another owner holds is `Duplicate`.
            async fn apply_reservations(
                conn: &mut <$db as sqlx::Database>::Connection,
                batch: &$crate::envelope::AppendBatch,
            ) -> $crate::error::KernelResult<()> {
                use $crate::adapters::sql as common;
                use $crate::error::KernelError;

                for r in &batch.releases {
                    sqlx::query("DELETE FROM reservations WHERE scope = ? AND value = ? AND owner = ?")
                        .bind(&r.scope)
                        .bind(&r.value)
                        .bind(&r.owner)
                        .execute(&mut *conn)
                        .await
                        .map_err(|e| Self::write_error(e, batch))?;
                }

                for r in &batch.reservations {
                    let inserted =
                        sqlx::query("INSERT INTO reservations (scope, value, owner) VALUES (?, ?, ?)")
                            .bind(&r.scope)
                            .bind(&r.value)
                            .bind(&r.owner)
                            .execute(&mut *conn)
                            .await;
                    match inserted {
                        Ok(_) => {}
                        // The failed statement alone is rolled back; the transaction goes on.
                        Err(e) if common::is_unique_violation(&e) => {
                            let owner: Option<Vec<u8>> = sqlx::query_scalar(Self::SELECT_OWNER_LOCKED)
                                .bind(&r.scope)
                                .bind(&r.value)
                                .fetch_optional(&mut *conn)
                                .await
                                .map_err(|e| Self::write_error(e, batch))?;
                            if owner.as_deref() != Some(r.owner.as_bytes()) {
                                return Err(KernelError::Duplicate {
                                    scope: r.scope.clone(),
                                    value: r.value.clone(),
                                });
                            }
                        }
                        Err(e) => return Err(Self::write_error(e, batch)),
                    }
                }
                Ok(())
            }

            /// Stores new data keys with a plain INSERT, in key order: concurrent writers'
            /// inserts then never wait on each other (an upsert's gap locks made them
            /// deadlock). A key id that is already stored fails the statement (only it; the
            /// transaction goes on), and a locking read tells why: a forgotten id gives
            /// `Forgotten`, another writer's key `clash()` (the caller retries and seals with
            /// that key).
            async fn insert_new_keys(
                conn: &mut <$db as sqlx::Database>::Connection,
                keys: &[$crate::envelope::NewDataKey],
                at: chrono::DateTime<chrono::Utc>,
                clash: impl Fn() -> $crate::error::KernelError,
                sql_error: impl Fn(sqlx::Error) -> $crate::error::KernelError,
            ) -> $crate::error::KernelResult<()> {
                use $crate::adapters::sql as common;
                if keys.is_empty() {
                    return Ok(());
                }
                let mut sorted: Vec<&$crate::envelope::NewDataKey> = keys.iter().collect();
                sorted.sort_by(|a, b| a.key_id.cmp(&b.key_id));
                let at = common::micros(at);
                let mut insert = sqlx::QueryBuilder::<$db>::new(
                    "INSERT INTO data_keys (key_id, aggregate_id, wrapped_key, created_at) ",
                );
                insert.push_values(&sorted, |mut row, key| {
                    row.push_bind(key.key_id.as_str())
                        .push_bind(common::key_aggregate_id(&key.key_id))
                        .push_bind(key.wrapped.as_slice())
                        .push_bind(at);
                });
                match insert.build().execute(&mut *conn).await {
                    Ok(_) => return Ok(()),
                    Err(e) if common::is_unique_violation(&e) => {}
                    Err(e) => return Err(sql_error(e)),
                }

                let mut select = sqlx::QueryBuilder::<$db>::new(
                    "SELECT key_id FROM data_keys WHERE forgotten_at IS NOT NULL AND key_id IN (",
                );
                let mut ids = select.separated(", ");
                for key in &sorted {
                    ids.push_bind(key.key_id.as_str());
                }
                select.push(")");
                select.push(Self::LOCKING_READ);
                let forgotten: Option<Vec<u8>> =
                    select.build_query_scalar().fetch_optional(&mut *conn).await.map_err(&sql_error)?;
                match forgotten {
                    Some(key_id) => Err($crate::error::KernelError::Forgotten(common::text(key_id)?)),
                    None => Err(clash()),
                }
            }

            /// `(aggregate_type = ? AND aggregate_id = ? AND sequence = ?) OR ...`, one
            /// term per `(aggregate_type, aggregate_id, sequence)`.
            fn push_sequences<'q>(
                query: &mut sqlx::QueryBuilder<'q, $db>,
                sequences: impl Iterator<Item = (&'q str, &'q str, u64)>,
            ) {
                for (i, (aggregate_type, aggregate_id, sequence)) in sequences.enumerate() {
                    if i > 0 {
                        query.push(" OR ");
                    }
                    query
                        .push("(aggregate_type = ")
                        .push_bind(aggregate_type)
                        .push(" AND aggregate_id = ")
                        .push_bind(aggregate_id)
                        .push(" AND sequence = ")
                        .push_bind($crate::adapters::sql::to_i64(sequence))
                        .push(")");
                }
            }

            /// The first of `checks` whose expected sequence is not in the events table
            /// (another writer is behind what this one saw, or the sequence is made up).
            async fn first_not_at_expected<'s>(
                conn: &mut <$db as sqlx::Database>::Connection,
                checks: &[&'s $crate::envelope::StreamAppend],
            ) -> Result<Option<&'s $crate::envelope::StreamAppend>, sqlx::Error> {
                for chunk in checks.chunks($crate::adapters::sql::CHECK_CHUNK_STREAMS) {
                    let mut query = sqlx::QueryBuilder::<$db>::new(
                        "SELECT aggregate_type, aggregate_id, sequence FROM events WHERE ",
                    );
                    Self::push_sequences(
                        &mut query,
                        chunk.iter().map(|s| {
                            (s.aggregate_type.as_str(), s.aggregate_id.as_str(), s.expected_sequence)
                        }),
                    );
                    // Bytes: see `EventRow`.
                    let rows: Vec<(Vec<u8>, Vec<u8>, i64)> =
                        query.build_query_as().fetch_all(&mut *conn).await?;
                    // A set: a chunk holds up to 500 streams, each looked up once.
                    let found: std::collections::HashSet<(&[u8], &[u8], i64)> = rows
                        .iter()
                        .map(|(aggregate_type, aggregate_id, sequence)| {
                            (aggregate_type.as_slice(), aggregate_id.as_slice(), *sequence)
                        })
                        .collect();
                    let missing = chunk.iter().find(|s| {
                        !found.contains(&(
                            s.aggregate_type.as_bytes(),
                            s.aggregate_id.as_bytes(),
                            $crate::adapters::sql::to_i64(s.expected_sequence),
                        ))
                    });
                    if let Some(s) = missing {
                        return Ok(Some(*s));
                    }
                }
                Ok(None)
            }

            /// The stream of a row already stored under one of `rows`' sequences (their
            /// INSERT hit the unique index: another writer got there first).
            async fn stream_of_taken_row(
                conn: &mut <$db as sqlx::Database>::Connection,
                rows: &[$crate::adapters::sql::GroupRow<'_>],
            ) -> $crate::error::KernelResult<Option<(String, String)>> {
                use $crate::adapters::sql as common;
                let mut query = sqlx::QueryBuilder::<$db>::new(
                    "SELECT aggregate_type, aggregate_id FROM events WHERE ",
                );
                Self::push_sequences(
                    &mut query,
                    rows.iter().map(|r| {
                        (r.stream.aggregate_type.as_str(), r.stream.aggregate_id.as_str(), r.sequence)
                    }),
                );
                query.push(" LIMIT 1");
                let taken: Option<(Vec<u8>, Vec<u8>)> = query
                    .build_query_as()
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                taken
                    .map(|(aggregate_type, aggregate_id)| {
                        Ok((common::text(aggregate_type)?, common::text(aggregate_id)?))
                    })
                    .transpose()
            }

            /// One multi-row INSERT of event rows.
            fn event_insert<'a>(
                rows: &'a [$crate::adapters::sql::GroupRow<'a>],
            ) -> sqlx::QueryBuilder<'a, $db> {
                use $crate::adapters::sql as common;
                let mut qb = sqlx::QueryBuilder::<$db>::new(common::INSERT_EVENTS);
                qb.push_values(rows, |mut row, r| {
                    row.push_bind(r.stream.aggregate_type.as_str())
                        .push_bind(r.stream.aggregate_id.as_str())
                        .push_bind(common::to_i64(r.sequence))
                        .push_bind(r.event.event_type.as_str())
                        .push_bind(r.event.event_version)
                        .push_bind(&r.event.event_id.as_bytes()[..])
                        .push_bind(&r.batch.correlation_id.as_bytes()[..])
                        .push_bind(r.batch.causation_id.as_ref().map(|c| &c.as_bytes()[..]))
                        .push_bind(r.batch.actor.as_deref())
                        .push_bind(common::micros(r.batch.recorded_at))
                        .push_bind(r.event.payload.as_slice());
                });
                qb
            }

            /// The appender tasks' loop: one group at a time, until every handle of the store
            /// outside them is gone.
            async fn run_appender(
                &self,
                receiver: &tokio::sync::Mutex<tokio::sync::mpsc::Receiver<$crate::adapters::sql::Pending>>,
            ) {
                while let Some(mut group) = $crate::adapters::sql::next_group(receiver).await {
                    metrics::histogram!("quintet_append_group_batches").record(group.len() as f64);
                    if group.len() == 1 {
                        let (batch, reply) = group.pop().expect("a group of one");
                        let _ = reply.send(self.append_now(batch).await);
                    } else {
                        self.append_group(group).await;
                    }
                }
            }

            /// Two or more batches: one transaction for all that can share it; if it fails,
            /// each alone (see [`Appender`](crate::adapters::sql::Appender)).
            async fn append_group(&self, group: Vec<$crate::adapters::sql::Pending>) {
                use $crate::adapters::sql::{self as common, GroupFailure};
                let mut together = Vec::with_capacity(group.len());
                let mut alone = Vec::new();
                for (batch, reply) in group {
                    if let Err(err) = common::validate_batch(&batch) {
                        let _ = reply.send(Err(err));
                    } else if common::groupable(&batch) {
                        together.push((batch, reply));
                    } else {
                        alone.push((batch, reply));
                    }
                }
                if together.len() > 1 {
                    let batches: Vec<&$crate::envelope::AppendBatch> =
                        together.iter().map(|(batch, _)| batch).collect();
                    match self.commit_group(&batches).await {
                        Ok(committed) => {
                            for ((_, reply), committed) in together.into_iter().zip(committed) {
                                let _ = reply.send(Ok(committed));
                            }
                        }
                        Err(GroupFailure::Commit(err)) => {
                            let message = err.to_string();
                            for (_, reply) in together {
                                let _ = reply.send(Err($crate::error::KernelError::storage(&message)));
                            }
                        }
                        Err(GroupFailure::Rejected(err)) => {
                            tracing::debug!(error = %err, batches = together.len(), "group append rolled back; appending one by one");
                            metrics::counter!("quintet_append_groups_split_total").increment(1);
                            together.append(&mut alone);
                            alone = together;
                        }
                    }
                } else {
                    alone.append(&mut together);
                }
                for (batch, reply) in alone {
                    let _ = reply.send(self.append_now(batch).await);
                }
            }

            async fn commit_group(
                &self,
                batches: &[&$crate::envelope::AppendBatch],
            ) -> Result<Vec<$crate::envelope::Committed>, $crate::adapters::sql::GroupFailure> {
                use $crate::adapters::sql::GroupFailure;
                let mut tx = self.begin_write().await.map_err(GroupFailure::Rejected)?;
                match Self::group_in_tx(&mut tx, batches).await {
                    Ok(committed) => {
                        tx.commit().await.map_err(|e| {
                            GroupFailure::Commit($crate::error::KernelError::storage(e))
                        })?;
                        Ok(committed)
                    }
                    Err(err) => {
                        if let Err(e) = tx.rollback().await {
                            tracing::warn!(error = %e, "rollback of a failed group append failed");
                        }
                        Err(GroupFailure::Rejected(err))
                    }
                }
            }

            /// A group's writes: like `append_in_tx` for each batch, but one INSERT for all
            /// their events, keys and idempotency keys. Any failure fails the whole group.
            async fn group_in_tx(
                conn: &mut <$db as sqlx::Database>::Connection,
                batches: &[&$crate::envelope::AppendBatch],
            ) -> $crate::error::KernelResult<Vec<$crate::envelope::Committed>> {
                use $crate::adapters::sql as common;
                use $crate::error::KernelError;
                let storage = KernelError::storage;

                for batch in batches {
                    Self::apply_reservations(&mut *conn, batch).await?;
                }
                let keys: Vec<$crate::envelope::NewDataKey> =
                    batches.iter().flat_map(|b| b.new_keys.iter().cloned()).collect();
                if let Some(first) = batches.first() {
                    Self::insert_new_keys(
                        &mut *conn,
                        &keys,
                        first.recorded_at,
                        || KernelError::storage("two writers made a data key for the same id"),
                        storage,
                    )
                    .await?;
                }

                let checks: Vec<&$crate::envelope::StreamAppend> = batches
                    .iter()
                    .flat_map(|b| &b.streams)
                    .filter(|s| !s.events.is_empty() && s.expected_sequence > 0)
                    .collect();
                if Self::first_not_at_expected(&mut *conn, &checks).await.map_err(storage)?.is_some() {
                    return Err(KernelError::storage(
                        "a stream of the group is not at its expected sequence",
                    ));
                }

                for chunk in common::chunk_rows(batches.iter().flat_map(|b| {
                    b.streams.iter().flat_map(move |s| common::rows_of(b, s))
                })) {
                    Self::event_insert(&chunk).build().execute(&mut *conn).await.map_err(storage)?;
                }

                let last_ids: Vec<uuid::Uuid> = batches
                    .iter()
                    .map(|b| {
                        b.streams
                            .iter()
                            .rev()
                            .find_map(|s| s.events.last())
                            .map(|e| e.event_id)
                            .unwrap_or_default()
                    })
                    .collect();
                let mut query = sqlx::QueryBuilder::<$db>::new(
                    "SELECT event_id, position FROM events WHERE event_id IN (",
                );
                let mut ids = query.separated(", ");
                for id in &last_ids {
                    ids.push_bind(&id.as_bytes()[..]);
                }
                query.push(")");
                let positions: Vec<(Vec<u8>, i64)> =
                    query.build_query_as().fetch_all(&mut *conn).await.map_err(storage)?;

                let mut committed = Vec::with_capacity(batches.len());
                let mut idempotent = Vec::new();
                for (batch, last_id) in batches.iter().zip(&last_ids) {
                    let position = positions
                        .iter()
                        .find(|(id, _)| id.as_slice() == last_id.as_bytes())
                        .map(|(_, position)| *position)
                        .ok_or_else(|| KernelError::storage("a grouped event has no position"))?;
                    let batch_committed = $crate::envelope::Committed {
                        position: common::to_u64(position)?,
                        streams: common::committed_streams(batch),
                    };
                    if let Some(idem) = &batch.idempotency {
                        idempotent.push((idem, serde_json::to_string(&batch_committed)?, batch.recorded_at));
                    }
                    committed.push(batch_committed);
                }
                if !idempotent.is_empty() {
                    let mut insert = sqlx::QueryBuilder::<$db>::new(
                        "INSERT INTO idempotency_keys (idem_key, request_hash, response, created_at) ",
                    );
                    insert.push_values(&idempotent, |mut row, (idem, response, at)| {
                        row.push_bind(idem.key.as_str())
                            .push_bind(idem.request_hash.as_str())
                            .push_bind(response.as_str())
                            .push_bind(common::micros(*at));
                    });
                    insert.build().execute(&mut *conn).await.map_err(storage)?;
                }
                Ok(committed)
            }

            /// A failed write: a deadlock between writers is a conflict on the batch's first
            /// stream (the caller retries), anything else a storage error.
            fn write_error(
                err: sqlx::Error,
                batch: &$crate::envelope::AppendBatch,
            ) -> $crate::error::KernelError {
                match batch.streams.first() {
                    Some(s) if Self::is_deadlock(&err) => $crate::adapters::sql::conflict(
                        &s.aggregate_type,
                        &s.aggregate_id,
                        s.expected_sequence,
                    ),
                    _ => $crate::error::KernelError::storage(err),
                }
            }

            async fn read_key(
                conn: &mut <$db as sqlx::Database>::Connection,
                key_id: &str,
            ) -> $crate::error::KernelResult<Option<Vec<u8>>> {
                let row: Option<(Option<Vec<u8>>, Option<i64>)> = sqlx::query_as(
                    "SELECT wrapped_key, forgotten_at FROM data_keys WHERE key_id = ?",
                )
                .bind(key_id)
                .fetch_optional(&mut *conn)
                .await
                .map_err($crate::error::KernelError::storage)?;
                match row {
                    None => Ok(None),
                    Some((_, Some(_))) => {
                        Err($crate::error::KernelError::Forgotten(key_id.to_string()))
                    }
                    Some((Some(key), None)) => Ok(Some(key)),
                    Some((None, None)) => Err($crate::error::KernelError::Storage(format!(
                        "data key {key_id} has neither a key nor a forgotten time"
                    ))),
                }
            }
        }

        impl $store {
            /// The append itself; see `EventStore::append`.
            async fn append_now(
                &self,
                batch: $crate::envelope::AppendBatch,
            ) -> $crate::error::KernelResult<$crate::envelope::Committed> {
                use $crate::ports::EventStore as _;
                use $crate::adapters::sql as common;
                common::validate_batch(&batch)?;
                if let Some(idem) = &batch.idempotency {
                    if let Some(stored) = self.idempotent_result(&idem.key).await? {
                        return common::replay_idempotent(idem, stored);
                    }
                }

                let mut tx = self.begin_write().await?;
                let failure = match Self::append_in_tx(&mut tx, &batch).await {
                    Ok(committed) => {
                        tx.commit().await.map_err($crate::error::KernelError::storage)?;
                        return Ok(committed);
                    }
                    Err(failure) => failure,
                };
                if let Err(e) = tx.rollback().await {
                    // The connection is dropped by the pool; the transaction dies with it.
                    tracing::warn!(error = %e, "rollback of a failed append failed");
                }
                // A concurrent request with the same key may have committed first: answer as
                // it would have been answered had it been seen before we started.
                if let Some(idem) = &batch.idempotency {
                    if let Some(stored) = self.idempotent_result(&idem.key).await? {
                        return common::replay_idempotent(idem, stored);
                    }
                }
                Err(failure)
            }
        }

        #[async_trait::async_trait]
        impl $crate::ports::EventStore for $store {
            /// Runs to completion in a task of its own even if the caller is cancelled (a
            /// client hanging up): a write transaction cut between BEGIN and its guard would
            /// leave SQLite's single writer connection inside it.
            async fn append(
                &self,
                batch: $crate::envelope::AppendBatch,
            ) -> $crate::error::KernelResult<$crate::envelope::Committed> {
                let (reply, answer) = tokio::sync::oneshot::channel();
                let queue = self.appender.queue(|receiver| {
                    let receiver = std::sync::Arc::new(tokio::sync::Mutex::new(receiver));
                    for _ in 0..Self::APPENDERS {
                        // Without this store's appender: the tasks end once the store's other
                        // handles are gone and the queue closes.
                        let mut store = self.clone();
                        store.appender = Default::default();
                        let receiver = receiver.clone();
                        tokio::spawn(async move { store.run_appender(&receiver).await });
                    }
                });
                queue.send((batch, reply)).await.map_err(|_| {
                    $crate::error::KernelError::storage("the event store's appender has stopped")
                })?;
                answer.await.map_err(|_| {
                    $crate::error::KernelError::storage("the event store's appender stopped before answering")
                })?
            }

            async fn load_stream(
                &self,
                aggregate_type: &str,
                aggregate_id: &str,
                after_sequence: u64,
            ) -> $crate::error::KernelResult<Vec<$crate::envelope::StoredEvent>> {
                let sql = format!(
                    "SELECT {} FROM events WHERE aggregate_type = ? AND aggregate_id = ? \
                     AND sequence > ? ORDER BY sequence",
                    $crate::adapters::sql::EVENT_COLUMNS
                );
                let rows = sqlx::query_as::<_, $crate::adapters::sql::EventRow>(&sql)
                    .bind(aggregate_type)
                    .bind(aggregate_id)
                    .bind($crate::adapters::sql::to_i64(after_sequence))
                    .fetch_all(self.reader())
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                $crate::adapters::sql::rows_to_events(rows)
            }

            async fn read_all(
                &self,
                after_position: u64,
                limit: u32,
            ) -> $crate::error::KernelResult<Vec<$crate::envelope::StoredEvent>> {
                let sql = format!(
                    "SELECT {} FROM events WHERE position > ? ORDER BY position LIMIT ?",
                    $crate::adapters::sql::EVENT_COLUMNS
                );
                let rows = sqlx::query_as::<_, $crate::adapters::sql::EventRow>(&sql)
                    .bind($crate::adapters::sql::to_i64(after_position))
                    .bind(i64::from(limit))
                    .fetch_all(self.reader())
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                $crate::adapters::sql::rows_to_events(rows)
            }

            async fn gap_may_fill(
                &self,
                since: chrono::DateTime<chrono::Utc>,
            ) -> $crate::error::KernelResult<bool> {
                self.check_gap(since).await
            }

            async fn missing_may_fill(
                &self,
                since: chrono::DateTime<chrono::Utc>,
                missing: &[u64],
            ) -> $crate::error::KernelResult<bool> {
                self.check_missing(since, missing).await
            }

            async fn aggregate_ids(
                &self,
                aggregate_type: &str,
                after: &str,
                limit: u32,
            ) -> $crate::error::KernelResult<Vec<String>> {
                let ids: Vec<Vec<u8>> = sqlx::query_scalar(
                    "SELECT DISTINCT aggregate_id FROM events \
                     WHERE aggregate_type = ? AND aggregate_id > ? \
                     ORDER BY aggregate_id LIMIT ?",
                )
                .bind(aggregate_type)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await
                .map_err($crate::error::KernelError::storage)?;
                ids.into_iter().map($crate::adapters::sql::text).collect()
            }

            async fn head_position(&self) -> $crate::error::KernelResult<u64> {
                let head: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
                    .fetch_one(self.reader())
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                $crate::adapters::sql::to_u64(head)
            }

            async fn query_events(
                &self,
                filter: &$crate::ports::EventFilter,
                offset: u64,
                limit: u32,
            ) -> $crate::error::KernelResult<$crate::ports::EventPage> {
                use $crate::adapters::sql::LogBind;
                let (condition, binds) = $crate::adapters::sql::log_condition(filter);
                // One read transaction: the page and the total come from one snapshot.
                let mut tx = self
                    .reader()
                    .begin()
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                let count_sql = format!("SELECT COUNT(*) FROM events WHERE {condition}");
                let mut count = sqlx::query_scalar::<_, i64>(&count_sql);
                for bind in &binds {
                    count = match bind {
                        LogBind::Text(text) => count.bind(text.as_str()),
                        LogBind::Int(int) => count.bind(*int),
                    };
                }
                let total = count
                    .fetch_one(&mut *tx)
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                let sql = format!(
                    "SELECT {} FROM events WHERE {condition} ORDER BY position LIMIT ? OFFSET ?",
                    $crate::adapters::sql::EVENT_COLUMNS
                );
                let mut page = sqlx::query_as::<_, $crate::adapters::sql::EventRow>(&sql);
                for bind in &binds {
                    page = match bind {
                        LogBind::Text(text) => page.bind(text.as_str()),
                        LogBind::Int(int) => page.bind(*int),
                    };
                }
                let rows = page
                    .bind(i64::from(limit))
                    .bind($crate::adapters::sql::to_i64(offset))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                tx.commit().await.map_err($crate::error::KernelError::storage)?;
                Ok($crate::ports::EventPage {
                    events: $crate::adapters::sql::rows_to_events(rows)?,
                    total: $crate::adapters::sql::to_u64(total)?,
                })
            }

            async fn event_stats(
                &self,
                aggregate_types: &[String],
            ) -> $crate::error::KernelResult<$crate::ports::EventStats> {
                use $crate::adapters::sql::LogBind;
                let filter = $crate::ports::EventFilter {
                    aggregate_types: aggregate_types.to_vec(),
                    ..Default::default()
                };
                let (condition, binds) = $crate::adapters::sql::log_condition(&filter);
                let sql = format!(
                    "SELECT COUNT(*), {}, COUNT(DISTINCT event_type) FROM events WHERE {condition}",
                    Self::COUNT_DISTINCT_STREAMS
                );
                let mut query = sqlx::query_as::<_, (i64, i64, i64)>(&sql);
                for bind in &binds {
                    query = match bind {
                        LogBind::Text(text) => query.bind(text.as_str()),
                        LogBind::Int(int) => query.bind(*int),
                    };
                }
                let (events, aggregates, event_types) = query
                    .fetch_one(self.reader())
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                Ok($crate::ports::EventStats {
                    events: $crate::adapters::sql::to_u64(events)?,
                    aggregates: $crate::adapters::sql::to_u64(aggregates)?,
                    event_types: $crate::adapters::sql::to_u64(event_types)?,
                })
            }

            async fn idempotent_result(
                &self,
                key: &str,
            ) -> $crate::error::KernelResult<Option<$crate::envelope::IdempotentResult>> {
                let row: Option<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
                    "SELECT request_hash, response FROM idempotency_keys WHERE idem_key = ?",
                )
                .bind(key)
                .fetch_optional(self.reader())
                .await
                .map_err($crate::error::KernelError::storage)?;
                row.map(|(hash, response)| $crate::adapters::sql::parse_idempotent(hash, &response))
                    .transpose()
            }

            async fn reservations(
                &self,
                scope: &str,
                after: &str,
                limit: u32,
            ) -> $crate::error::KernelResult<Vec<$crate::envelope::Reservation>> {
                let rows: Vec<(Vec<u8>, Vec<u8>)> = sqlx::query_as(
                    "SELECT value, owner FROM reservations WHERE scope = ? AND value > ? \
                     ORDER BY value LIMIT ?",
                )
                .bind(scope)
                .bind(after)
                .bind(i64::from(limit))
                .fetch_all(self.reader())
                .await
                .map_err($crate::error::KernelError::storage)?;
                rows.into_iter()
                    .map(|(value, owner)| {
                        Ok($crate::envelope::Reservation {
                            scope: scope.to_string(),
                            value: $crate::adapters::sql::text(value)?,
                            owner: $crate::adapters::sql::text(owner)?,
                        })
                    })
                    .collect()
            }

            async fn ping(&self) -> $crate::error::KernelResult<()> {
                for pool in [self.reader(), self.writer()] {
                    sqlx::query("SELECT 1")
                        .execute(pool)
                        .await
                        .map_err($crate::error::KernelError::storage)?;
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::ports::KeyStore for $store {
            async fn get(&self, key_id: &str) -> $crate::error::KernelResult<Option<Vec<u8>>> {
                let mut conn = self
                    .reader()
                    .acquire()
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                Self::read_key(&mut conn, key_id).await
            }

            async fn put_if_absent(
                &self,
                key_id: &str,
                wrapped: &[u8],
            ) -> $crate::error::KernelResult<Vec<u8>> {
                let mut conn = self
                    .writer()
                    .acquire()
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                sqlx::query(Self::INSERT_KEY_IF_ABSENT)
                    .bind(key_id)
                    .bind($crate::adapters::sql::key_aggregate_id(key_id))
                    .bind(wrapped)
                    .bind($crate::adapters::sql::micros(chrono::Utc::now()))
                    .execute(&mut *conn)
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                Self::read_key(&mut conn, key_id).await?.ok_or_else(|| {
                    $crate::error::KernelError::Storage(format!(
                        "data key {key_id} is missing right after it was stored"
                    ))
                })
            }

            async fn forget(&self, key_id: &str) -> $crate::error::KernelResult<bool> {
                let now = $crate::adapters::sql::micros(chrono::Utc::now());
                let mut conn = self
                    .writer()
                    .acquire()
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                let deleted = sqlx::query(
                    "UPDATE data_keys SET wrapped_key = NULL, forgotten_at = ? \
                     WHERE key_id = ? AND forgotten_at IS NULL",
                )
                .bind(now)
                .bind(key_id)
                .execute(&mut *conn)
                .await
                .map_err($crate::error::KernelError::storage)?
                .rows_affected()
                    > 0;
                if deleted {
                    return Ok(true);
                }
                // Never seen: remember it as forgotten, so a key cannot be created later.
                sqlx::query(Self::INSERT_FORGOTTEN_IF_ABSENT)
                    .bind(key_id)
                    .bind($crate::adapters::sql::key_aggregate_id(key_id))
                    .bind(now)
                    .bind(now)
                    .execute(&mut *conn)
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                // A concurrent `put_if_absent` may have stored a live key between the two
                // statements; the row exists now, so this second pass settles it.
                let deleted = sqlx::query(
                    "UPDATE data_keys SET wrapped_key = NULL, forgotten_at = ? \
                     WHERE key_id = ? AND forgotten_at IS NULL",
                )
                .bind(now)
                .bind(key_id)
                .execute(&mut *conn)
                .await
                .map_err($crate::error::KernelError::storage)?
                .rows_affected()
                    > 0;
                Ok(deleted)
            }

            async fn key_ids_for(
                &self,
                aggregate_id: &str,
            ) -> $crate::error::KernelResult<Vec<String>> {
                let ids: Vec<Vec<u8>> = sqlx::query_scalar(
                    "SELECT key_id FROM data_keys WHERE aggregate_id = ? ORDER BY key_id",
                )
                .bind(aggregate_id)
                .fetch_all(self.reader())
                .await
                .map_err($crate::error::KernelError::storage)?;
                ids.into_iter().map($crate::adapters::sql::text).collect()
            }
        }

        /// Relay positions (`relay_checkpoints`), in portable SQL: a guarded UPDATE moves a
        /// position forward only; the first store of a name INSERTs it (a concurrent first
        /// store loses on the primary key and then updates).
        #[async_trait::async_trait]
        impl $crate::relay::RelayCheckpoints for $store {
            async fn relay_position(&self, name: &str) -> $crate::error::KernelResult<u64> {
                let position: Option<i64> =
                    sqlx::query_scalar("SELECT position FROM relay_checkpoints WHERE name = ?")
                        .bind(name)
                        .fetch_optional(self.writer())
                        .await
                        .map_err($crate::error::KernelError::storage)?;
                position.map_or(Ok(0), $crate::adapters::sql::to_u64)
            }

            async fn store_relay_position(
                &self,
                name: &str,
                position: u64,
            ) -> $crate::error::KernelResult<()> {
                let position = $crate::adapters::sql::to_i64(position);
                for _ in 0..2 {
                    let updated = sqlx::query(
                        "UPDATE relay_checkpoints SET position = ? WHERE name = ? AND position < ?",
                    )
                    .bind(position)
                    .bind(name)
                    .bind(position)
                    .execute(self.writer())
                    .await
                    .map_err($crate::error::KernelError::storage)?;
                    if updated.rows_affected() > 0 {
                        return Ok(());
                    }
                    let exists: Option<i64> =
                        sqlx::query_scalar("SELECT position FROM relay_checkpoints WHERE name = ?")
                            .bind(name)
                            .fetch_optional(self.writer())
                            .await
                            .map_err($crate::error::KernelError::storage)?;
                    if exists.is_some() {
                        // Already at or past `position`.
                        return Ok(());
                    }
                    match sqlx::query("INSERT INTO relay_checkpoints (name, position) VALUES (?, ?)")
                        .bind(name)
                        .bind(position)
                        .execute(self.writer())
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(err) if $crate::adapters::sql::is_unique_violation(&err) => continue,
                        Err(err) => return Err($crate::error::KernelError::storage(err)),
                    }
                }
                Err($crate::error::KernelError::Storage(format!(
                    "relay position of {name} could not be stored"
                )))
            }
        }
    };
}
pub(crate) use sql_event_store;

#[cfg(test)]
mod tests {
    use super::*;

    fn events(sizes: &[usize]) -> Vec<NewEvent> {
        sizes
            .iter()
            .map(|&n| NewEvent {
                event_id: Uuid::new_v4(),
                event_type: "t".into(),
                event_version: 1,
                payload: vec![0; n],
            })
            .collect()
    }

    #[test]
    fn chunks_split_by_rows_and_bytes() {
        let lens = |events: Vec<NewEvent>| {
            let stream = StreamAppend {
                aggregate_type: "t".into(),
                aggregate_id: "a".into(),
                expected_sequence: 0,
                events,
            };
            let batch = AppendBatch {
                streams: vec![],
                correlation_id: Uuid::nil(),
                causation_id: None,
                actor: None,
                recorded_at: Utc::now(),
                idempotency: None,
                reservations: vec![],
                releases: vec![],
                new_keys: vec![],
            };
            chunk_rows(rows_of(&batch, &stream))
                .iter()
                .map(|c| c.len())
                .collect::<Vec<_>>()
        };
        assert!(lens(vec![]).is_empty());
        assert_eq!(lens(events(&[1; 1203])), vec![500, 500, 203]);
        let mb = 1 << 20;
        assert_eq!(lens(events(&[3 * mb, 2 * mb, 9 * mb, 1])), vec![1, 1, 1, 1]);
        assert_eq!(lens(events(&[mb, mb, mb, mb, 1])), vec![4, 1]);
    }

    #[test]
    fn stream_sets_become_one_bound_condition() {
        use crate::ports::{EventFilter, StreamSet};
        let set = |types: &[&str], ids: Option<&[&str]>| StreamSet {
            aggregate_types: types.iter().map(|t| t.to_string()).collect(),
            aggregate_ids: ids.map(|ids| ids.iter().map(|i| i.to_string()).collect()),
        };
        let filter = EventFilter {
            streams: Some(vec![
                set(&["es-user"], Some(&["ann"])),
                set(&["es-order", "es-payment"], Some(&[])),
                set(&["es-custom"], None),
            ]),
            ..Default::default()
        };
        let (sql, binds) = log_condition(&filter);
        assert_eq!(
            sql,
            "position > ? AND ((aggregate_type IN (?) AND aggregate_id IN (?)) \
             OR (aggregate_type IN (?)))"
        );
        assert_eq!(binds.len(), 4);
        let nothing = EventFilter {
            streams: Some(vec![set(&["es-order"], Some(&[]))]),
            ..Default::default()
        };
        assert_eq!(log_condition(&nothing).0, "position > ? AND 1 = 0");
    }

    #[test]
    fn key_ids_name_their_aggregate() {
        assert_eq!(key_aggregate_id("user/u-1"), "u-1");
        assert_eq!(key_aggregate_id("file/a/b"), "a/b");
        assert_eq!(key_aggregate_id("bare"), "bare");
    }
}
