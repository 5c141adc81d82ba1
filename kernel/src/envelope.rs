//! The shapes events take on their way into and out of the event store.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Who asked, and why: carried by every event a command produces.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CommandContext {
    pub correlation_id: Option<Uuid>,
    pub causation_id: Option<Uuid>,
    pub actor: Option<String>,
    pub idempotency: Option<IdempotencyKey>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct IdempotencyKey {
    pub key: String,
    /// SHA-256 (hex) of the method, route and body, so a reused key with another body is caught.
    pub request_hash: String,
}

/// One event ready to append: the payload is already encoded (and encrypted).
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_id: Uuid,
    pub event_type: String,
    pub event_version: i32,
    pub payload: Vec<u8>,
}

/// The events one aggregate appends, with the sequence they must follow.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamAppend {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The sequence of the last event the decision saw (0 for a new aggregate).
    pub expected_sequence: u64,
    pub events: Vec<NewEvent>,
}

/// Everything appended by one command: several aggregates, one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct AppendBatch {
    pub streams: Vec<StreamAppend>,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub idempotency: Option<IdempotencyKey>,
    /// Unique values claimed in the same transaction (e.g. a user's email).
    pub reservations: Vec<Reservation>,
    /// Reservations given back in the same transaction.
    pub releases: Vec<Reservation>,
    /// Data keys first used by this batch, stored in the same transaction (so a new
    /// aggregate costs one durable commit). If another writer stored a different key under
    /// the same id first, the append fails with a `Conflict` (a forgotten id: `Forgotten`)
    /// and the retry seals with the stored key.
    pub new_keys: Vec<NewDataKey>,
}

/// A data key wrapped under the master key, as the key store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDataKey {
    pub key_id: String,
    pub wrapped: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub scope: String,
    pub value: String,
    /// The aggregate that holds the value.
    pub owner: String,
}

/// An event as it is stored, with its global position.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredEvent {
    pub position: u64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub event_type: String,
    pub event_version: i32,
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: Option<String>,
    pub recorded_at: DateTime<Utc>,
    pub payload: Vec<u8>,
}

/// What a committed batch produced. Serialized as the stored idempotent response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Committed {
    /// The global position of the last event written.
    pub position: u64,
    pub streams: Vec<CommittedStream>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommittedStream {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's sequence after the append.
    pub sequence: u64,
    pub event_ids: Vec<Uuid>,
    pub event_types: Vec<String>,
}

impl Committed {
    pub fn stream(&self, aggregate_type: &str, aggregate_id: &str) -> Option<&CommittedStream> {
        self.streams
            .iter()
            .find(|s| s.aggregate_type == aggregate_type && s.aggregate_id == aggregate_id)
    }
}

/// An event's envelope: every field of it but the payload. What a parked entry shows (a
/// parked copy of personal data would survive crypto-shredding).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventEnvelope {
    pub position: u64,
    pub context: &'static str,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub event_type: String,
    pub event_version: i32,
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: Option<String>,
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// The envelope, without the payload.
    pub fn into_envelope(self) -> EventEnvelope {
        EventEnvelope {
            position: self.position,
            context: self.context,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            event_id: self.event_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            actor: self.actor,
            recorded_at: self.recorded_at,
        }
    }
}

impl StoredEvent {
    /// The envelope, without the payload.
    pub fn into_envelope(self) -> EventEnvelope {
        EventEnvelope {
            position: self.position,
            context: crate::domain::Context::of_aggregate(&self.aggregate_type).as_str(),
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            sequence: self.sequence,
            event_type: self.event_type,
            event_version: self.event_version,
            event_id: self.event_id,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            actor: self.actor,
            recorded_at: self.recorded_at,
        }
    }
}

/// A result remembered under an idempotency key.
#[derive(Debug, Clone, PartialEq)]
pub struct IdempotentResult {
    pub request_hash: String,
    pub committed: Committed,
}

/// A decoded event, as projections and the WebSocket see it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecordedEvent {
    pub position: u64,
    pub context: &'static str,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub event_type: String,
    pub event_version: i32,
    pub event_id: Uuid,
    pub correlation_id: Uuid,
    pub causation_id: Option<Uuid>,
    pub actor: Option<String>,
    pub recorded_at: DateTime<Utc>,
    /// `None` when the payload can no longer be read (its data key was forgotten).
    pub data: Option<serde_json::Value>,
}
