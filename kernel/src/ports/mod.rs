//! Ports: what the kernel needs from the outside world. Adapters implement them;
//! the domain never sees an adapter.

use async_trait::async_trait;
use serde_json::Value;

use crate::envelope::{AppendBatch, Committed, IdempotentResult, StoredEvent};
use crate::error::KernelResult;

/// The durable, append-only event store.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// Appends every stream in one transaction. A stream whose `expected_sequence` is stale fails
    /// the whole batch with `KernelError::Conflict`; a taken reservation with `KernelError::Duplicate`;
    /// an idempotency key already stored with `KernelError::IdempotencyMismatch` or, for the same
    /// request hash, returns the first result unchanged.
    async fn append(&self, batch: AppendBatch) -> KernelResult<Committed>;

    /// Events of one aggregate with `sequence > after_sequence`, in order.
    async fn load_stream(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after_sequence: u64,
    ) -> KernelResult<Vec<StoredEvent>>;

    /// Committed events with `position > after_position`, in position order, at most `limit`.
    /// Positions can have gaps (rolled-back or still-open transactions); the feed deals with them.
    async fn read_all(&self, after_position: u64, limit: u32) -> KernelResult<Vec<StoredEvent>>;

    /// Whether a transaction that was already open at `since` may still commit a row with a
    /// position below the ones already visible. Backends that commit positions in order answer false.
    async fn gap_may_fill(&self, since: chrono::DateTime<chrono::Utc>) -> KernelResult<bool>;

    /// [`gap_may_fill`](Self::gap_may_fill) for known missing positions: backends that can
    /// ask about those rows directly do, which is exact; the default asks by time.
    async fn missing_may_fill(
        &self,
        since: chrono::DateTime<chrono::Utc>,
        missing: &[u64],
    ) -> KernelResult<bool> {
        let _ = missing;
        self.gap_may_fill(since).await
    }

    /// Ids of the aggregates of a type, in id order, after `after` (exclusive), at most `limit`.
    async fn aggregate_ids(
        &self,
        aggregate_type: &str,
        after: &str,
        limit: u32,
    ) -> KernelResult<Vec<String>>;

    /// The highest committed position (0 when empty).
    async fn head_position(&self) -> KernelResult<u64>;

    /// A page of the event log matching `filter`, in position order, with the total count.
    async fn query_events(
        &self,
        filter: &EventFilter,
        offset: u64,
        limit: u32,
    ) -> KernelResult<EventPage>;

    /// Counts over the events of the given aggregate types (all types when empty).
    async fn event_stats(&self, aggregate_types: &[String]) -> KernelResult<EventStats>;

    /// The result first stored under an idempotency key, if any.
    async fn idempotent_result(&self, key: &str) -> KernelResult<Option<IdempotentResult>>;

    /// Whether the backend answers.
    async fn ping(&self) -> KernelResult<()>;

    /// The reservations held in `scope` whose value is above `after`, in value order, at
    /// most `limit` (the command context lists its pending queued and scheduled commands
    /// this way). A store that keeps no reservations answers with an error.
    async fn reservations(
        &self,
        scope: &str,
        after: &str,
        limit: u32,
    ) -> KernelResult<Vec<crate::envelope::Reservation>> {
        let _ = (scope, after, limit);
        Err(crate::error::KernelError::storage(
            "this event store cannot list reservations",
        ))
    }
}

/// Which events an event-log query returns; every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventFilter {
    /// Only these aggregate types (empty: any).
    pub aggregate_types: Vec<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    /// Only events recorded for this actor (a token subject).
    pub actor: Option<String>,
    /// Only positions above this one (a cursor).
    pub after_position: u64,
    /// `recorded_at >= from`.
    pub from: Option<chrono::DateTime<chrono::Utc>>,
    /// `recorded_at < to`.
    pub to: Option<chrono::DateTime<chrono::Utc>>,
    /// Only events of these streams (an event matches when it is in one of the sets);
    /// `None`: no restriction, an empty list: nothing. How a token acting for a user reads
    /// only its own aggregates' events.
    pub streams: Option<Vec<StreamSet>>,
}

/// Streams of an event-log query: those of `aggregate_types` whose id is in
/// `aggregate_ids` (every id of those types when `aggregate_ids` is `None`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamSet {
    pub aggregate_types: Vec<String>,
    pub aggregate_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct EventPage {
    pub events: Vec<StoredEvent>,
    /// Matches in all pages.
    pub total: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EventStats {
    pub events: u64,
    /// Distinct (aggregate type, aggregate id) pairs.
    pub aggregates: u64,
    /// Distinct event types.
    pub event_types: u64,
}

/// Storage for per-aggregate data keys, wrapped by the master key.
#[async_trait]
pub trait KeyStore: Send + Sync + 'static {
    /// The wrapped key of an aggregate: `Ok(None)` if it never had one, `Err(Forgotten)` once
    /// it was shredded.
    async fn get(&self, key_id: &str) -> KernelResult<Option<Vec<u8>>>;
    /// Stores a wrapped key unless one exists; returns the one that is stored
    /// (`Err(Forgotten)` if the key id was shredded: a forgotten aggregate stays forgotten).
    async fn put_if_absent(&self, key_id: &str, wrapped: &[u8]) -> KernelResult<Vec<u8>>;
    /// Deletes the key and remembers that it was forgotten. Returns whether a key was deleted.
    async fn forget(&self, key_id: &str) -> KernelResult<bool>;
    /// Key ids that belong to an aggregate id, whatever its type.
    async fn key_ids_for(&self, aggregate_id: &str) -> KernelResult<Vec<String>>;
}

/// Disposable aggregate snapshots (Redis, or in-process).
#[async_trait]
pub trait SnapshotStore: Send + Sync + 'static {
    async fn get(&self, key: &str) -> KernelResult<Option<Vec<u8>>>;
    async fn put(&self, key: &str, bytes: Vec<u8>) -> KernelResult<()>;
    /// Deletes every snapshot whose key starts with `prefix`.
    async fn purge(&self, prefix: &str) -> KernelResult<()>;
    async fn ping(&self) -> KernelResult<()>;
}

/// Hit/miss counters and entry count of a read cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct CacheStats {
    pub hits: u64,
    pub misses: u64,
    pub size: u64,
}

/// The cache-aside read cache (Redis, or an in-process LRU), holding JSON documents by key.
#[async_trait]
pub trait ReadCache: Send + Sync + 'static {
    /// The cached value, counting a hit or a miss.
    async fn get(&self, key: &str) -> KernelResult<Option<Value>>;
    /// Stores a value; `ttl: None` keeps it until evicted or invalidated.
    async fn put(
        &self,
        key: &str,
        value: &Value,
        ttl: Option<std::time::Duration>,
    ) -> KernelResult<()>;
    async fn invalidate(&self, key: &str) -> KernelResult<()>;
    /// Drops every entry whose key starts with `prefix` (e.g. when an aggregate is forgotten).
    async fn invalidate_prefix(&self, prefix: &str) -> KernelResult<()>;
    async fn stats(&self) -> KernelResult<CacheStats>;
}

/// One change a projection makes to the read models. Pure data, so every read store can
/// translate it (SQLite JSON functions, MongoDB update operators) and apply it in batches.
#[derive(Debug, Clone, PartialEq)]
pub enum DocOp {
    /// Replace (or create) a whole document.
    Upsert {
        collection: String,
        id: String,
        doc: Value,
    },
    /// Create a document only if none has this id; an existing one is left as it is. With
    /// `Increment` after it, a counter that needs no event to create it first.
    InsertIfAbsent {
        collection: String,
        id: String,
        doc: Value,
    },
    /// Set top-level fields of an existing document, each value replaced whole (a `null`
    /// stores null; nested objects are not merged); no-op if the document is absent.
    Merge {
        collection: String,
        id: String,
        patch: Value,
    },
    /// Add `by` to a numeric field (a dotted path) of an existing document.
    Increment {
        collection: String,
        id: String,
        field: String,
        by: f64,
    },
    Delete {
        collection: String,
        id: String,
    },
    /// Delete every document whose top-level `field` equals `value`.
    DeleteWhere {
        collection: String,
        field: String,
        value: Value,
    },
    /// Replace the documents whose top-level `field` equals `value` with a tombstone.
    TombstoneWhere {
        collection: String,
        field: String,
        value: Value,
    },
}

/// A read-model query: equality filters and an optional specification, sorted and paged.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocQuery {
    /// Top-level field equals value; all of them must hold.
    pub filter: Vec<(String, Value)>,
    /// A checked specification, combined with `filter` by and.
    pub condition: Option<crate::spec::Filter>,
    /// Sort keys in order (top-level fields, ascending when true); ties break by id.
    pub sort: Vec<crate::spec::SortKey>,
    pub limit: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct DocPage {
    pub items: Vec<Value>,
    pub total: u64,
}

/// What one event does to the read models, guarded by its aggregate's sequence.
#[derive(Debug, Clone, PartialEq)]
pub struct EventEffect {
    /// `aggregate_type/aggregate_id`.
    pub aggregate_key: String,
    pub sequence: u64,
    pub ops: Vec<DocOp>,
}

/// The per-aggregate high-water marks a projection has applied, for idempotency.
pub type AggregateVersions = Vec<(String, u64)>;

/// An event as a projection saw it: what it does to the read models, or why the projection
/// could not apply it. The input of [`ReadStore::apply_projected`], which parks it (and every
/// later event of its aggregate) instead of applying it when it failed.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectedEvent {
    /// `aggregate_type/aggregate_id`.
    pub aggregate_key: String,
    pub sequence: u64,
    pub position: u64,
    /// The event id: the id of its parked entry, if it gets parked.
    pub event_id: String,
    /// The ops, or the projection's error.
    pub outcome: Result<Vec<DocOp>, String>,
    /// What a parked entry shows: the event's envelope, without its payload (a parked copy
    /// of personal data would survive crypto-shredding).
    pub envelope: ParkedEnvelope,
}

/// A parked entry's envelope: the event's fields, turned into JSON only if the event is
/// parked (almost none are, and building JSON for each cost several allocations), or JSON
/// already (an entry read back to be retried).
#[derive(Debug, Clone, PartialEq)]
pub enum ParkedEnvelope {
    Event(Box<crate::envelope::EventEnvelope>),
    Json(Value),
}

impl ParkedEnvelope {
    pub fn to_json(&self) -> Value {
        match self {
            ParkedEnvelope::Event(envelope) => {
                serde_json::to_value(envelope).unwrap_or(Value::Null)
            }
            ParkedEnvelope::Json(json) => json.clone(),
        }
    }
}

impl From<Value> for ParkedEnvelope {
    fn from(json: Value) -> Self {
        ParkedEnvelope::Json(json)
    }
}

impl From<crate::envelope::EventEnvelope> for ParkedEnvelope {
    fn from(envelope: crate::envelope::EventEnvelope) -> Self {
        ParkedEnvelope::Event(Box::new(envelope))
    }
}

/// What one `apply_projected` call did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyReport {
    pub applied: u64,
    /// Newly parked events (failed, or behind a parked event of their aggregate).
    pub parked: u64,
    /// Already applied or already parked (redelivery).
    pub skipped: u64,
}

/// A parked event of a projection.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ParkedEvent {
    /// The event id.
    pub id: String,
    pub aggregate_key: String,
    pub sequence: u64,
    pub position: u64,
    /// The projection's error for this event, or which parked event holds it back.
    pub error: String,
    /// RFC 3339.
    pub parked_at: String,
    pub envelope: Value,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ParkedPage {
    /// In position order.
    pub items: Vec<ParkedEvent>,
    pub total: u64,
}

/// What a retry of parked events did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetryReport {
    /// Parked events applied and un-parked.
    pub applied: u64,
    /// Events of the aggregate still parked afterwards.
    pub still_parked: u64,
}

/// The name under which read-store calls target one generation of a projection explicitly
/// (a shadow copy being rebuilt): `name#generation`. A plain name targets the active one.
pub fn generation_key(projection: &str, generation: u64) -> String {
    format!("{projection}#{generation}")
}

/// Splits `name#generation`; a plain name gives `None`.
pub fn split_generation_key(key: &str) -> (&str, Option<u64>) {
    match key.rsplit_once('#') {
        Some((name, generation)) => match generation.parse() {
            Ok(generation) => (name, Some(generation)),
            Err(_) => (key, None),
        },
        None => (key, None),
    }
}

/// The collection holding each projection's status document (see `kernel::projector`).
pub const STATUS_COLLECTION: &str = "_projections";

/// Read-model storage (SQLite documents, or MongoDB).
#[async_trait]
pub trait ReadStore: Send + Sync + 'static {
    /// Applies ops, records the aggregate versions and moves the projection's checkpoint,
    /// atomically.
    async fn apply(
        &self,
        projection: &str,
        ops: Vec<DocOp>,
        versions: AggregateVersions,
        checkpoint: u64,
    ) -> KernelResult<()>;
    /// Applies each effect whose sequence is above the projection's stored version of its
    /// aggregate (checked inside the transaction, so concurrent or repeated deliveries of the
    /// same event take effect once), records the new versions and moves the checkpoint,
    /// atomically.
    async fn apply_guarded(
        &self,
        projection: &str,
        effects: Vec<EventEffect>,
        checkpoint: u64,
    ) -> KernelResult<()>;
    /// The last position the projection applied (0 if none).
    async fn checkpoint(&self, projection: &str) -> KernelResult<u64>;
    /// Applied sequences of the given aggregate keys (`type/id`); missing ones are absent.
    async fn versions(&self, projection: &str, keys: &[String]) -> KernelResult<AggregateVersions>;
    async fn get(&self, collection: &str, id: &str) -> KernelResult<Option<Value>>;
    async fn find(&self, collection: &str, query: &DocQuery) -> KernelResult<DocPage>;
    /// Drops everything a projection wrote: its collections, versions and checkpoint.
    async fn reset(&self, projection: &str, collections: &[&str]) -> KernelResult<()>;
    async fn ping(&self) -> KernelResult<()>;

    // Parking, generations and status (issue 3). Every `projection` argument above and below
    // may be `name#generation` (see [`generation_key`]) to target a shadow copy; a plain name
    // targets the active generation, resolved by the store at the time of the call. Logical
    // collection names in `DocOp`s, `get` and `find` are mapped to the generation's copy.

    /// Like `apply_guarded`, with ordered parking: an event whose outcome is an error is
    /// parked, and so is every later event of an aggregate that has parked events, while the
    /// others apply. Already applied or already parked events are skipped (redelivery).
    /// Effects, parked entries, versions and the checkpoint move together (atomically where
    /// the backend has transactions; see each adapter for its guarantee).
    async fn apply_projected(
        &self,
        projection: &str,
        events: Vec<ProjectedEvent>,
        checkpoint: u64,
    ) -> KernelResult<ApplyReport>;
    /// A page of the projection's parked events, in position order (`limit == 0`: all).
    async fn parked(&self, projection: &str, limit: u32, offset: u64) -> KernelResult<ParkedPage>;
    /// The parked events of one aggregate, in sequence order.
    async fn parked_of(
        &self,
        projection: &str,
        aggregate_key: &str,
    ) -> KernelResult<Vec<ParkedEvent>>;
    /// The parked event with this id, if any.
    async fn parked_by_id(&self, projection: &str, id: &str) -> KernelResult<Option<ParkedEvent>>;
    /// Retries parked events of one aggregate with fresh outcomes, in sequence order: each one
    /// that still is parked applies and is un-parked, up to the first failure, which keeps its
    /// new error (it and every later one stay parked).
    async fn retry_parked(
        &self,
        projection: &str,
        events: Vec<ProjectedEvent>,
    ) -> KernelResult<RetryReport>;

    /// The projection's status document (collection [`STATUS_COLLECTION`]), if any.
    async fn status(&self, projection: &str) -> KernelResult<Option<Value>>;
    /// Sets top-level fields of the status document, creating it if absent.
    async fn merge_status(&self, projection: &str, patch: Value) -> KernelResult<()>;

    /// The active generation of a projection (0 until its first rebuild).
    async fn generation(&self, projection: &str) -> KernelResult<u64>;
    /// Starts a shadow generation of a projection owning `collections`, empty, and returns
    /// its number. Fails with a state conflict while another rebuild holds a fresh lease
    /// (a shadow applied to within the last minute); a stale shadow is dropped.
    async fn begin_generation(&self, projection: &str, collections: &[&str]) -> KernelResult<u64>;
    /// Swaps the shadow `generation` in, if it has seen (applied or parked) at least every
    /// event the active one has, per aggregate; its checkpoint becomes the higher of the two.
    /// Returns false, changing nothing, when the shadow is behind: catch up and try again.
    /// The old generation is dropped.
    async fn swap_generation(&self, projection: &str, generation: u64) -> KernelResult<bool>;
    /// Drops a shadow generation that will not be swapped in.
    async fn abandon_generation(&self, projection: &str, generation: u64) -> KernelResult<()>;
}
