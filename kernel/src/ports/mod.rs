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

    /// Ids of the aggregates of a type, in id order, after `after` (exclusive), at most `limit`.
    async fn aggregate_ids(
        &self,
        aggregate_type: &str,
        after: &str,
        limit: u32,
    ) -> KernelResult<Vec<String>>;

    /// The highest committed position (0 when empty).
    async fn head_position(&self) -> KernelResult<u64>;

    /// The result first stored under an idempotency key, if any.
    async fn idempotent_result(&self, key: &str) -> KernelResult<Option<IdempotentResult>>;

    /// Whether the backend answers.
    async fn ping(&self) -> KernelResult<()>;
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

/// A simple equality filter with paging, enough for the list routes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DocQuery {
    pub filter: Vec<(String, Value)>,
    /// Sort by a top-level field; ascending when true.
    pub sort: Option<(String, bool)>,
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
}
