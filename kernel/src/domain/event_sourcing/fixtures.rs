//! Support for the schema-fixture test (`kernel/tests/schema_fixtures.rs`): a realistic
//! sample of every (aggregate type, event type, version) this context stores, and how a
//! stored payload replays onto its aggregate.

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde_json::{json, Map, Value};

use super::aggregate::{GenericEvent, GenericState};
use super::snapshot::{SnapshotLog, SnapshotLogEvent};
use super::{AggregateKind, EventKind, SNAPSHOT_LOG};

/// One sample event as the engine stores it (the payload before the codec).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub aggregate_type: &'static str,
    pub event_type: String,
    pub version: String,
    pub payload: Value,
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_704_067_200 + secs, 0)
        .single()
        .unwrap_or_default()
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn generic(kind: EventKind, data: Value, secs: i64) -> GenericEvent {
    GenericEvent {
        kind,
        data: object(data),
        metadata: object(json!({ "source": "fixtures", "correlation_id": "corr-123" })),
        at: at(secs),
    }
}

/// Sample events of one kind, its creation event first, every event type it takes.
pub fn kind_samples(kind: AggregateKind) -> Vec<GenericEvent> {
    let custom = |secs| {
        generic(
            EventKind::Custom,
            json!({ "note": "hello", "tags": ["a"] }),
            secs,
        )
    };
    match kind {
        AggregateKind::User => vec![
            generic(
                EventKind::UserCreated,
                json!({
                    "user_id": "user-123", "email": "john@example.com",
                    "first_name": "John", "last_name": "Doe", "role": "user",
                }),
                0,
            ),
            generic(
                EventKind::UserUpdated,
                json!({
                    "changes": { "first_name": "Jane", "nickname": "JJ" },
                    "previous": { "first_name": "John", "nickname": null },
                }),
                1,
            ),
            custom(2),
            generic(EventKind::UserDeleted, json!({ "reason": "closed" }), 3),
        ],
        AggregateKind::Order => vec![
            generic(
                EventKind::OrderCreated,
                json!({
                    "user_id": "user-123", "status": "pending", "total_amount": 42.5,
                    "items": [{ "sku": "A-1", "quantity": 2 }],
                }),
                0,
            ),
            generic(
                EventKind::OrderStatusChanged,
                json!({ "status": "shipped", "previous_status": "pending" }),
                1,
            ),
            custom(2),
        ],
        AggregateKind::Payment => vec![
            generic(
                EventKind::PaymentProcessed,
                json!({
                    "amount": 42.5, "currency": "EUR", "status": "pending",
                    "transaction_id": "tx-1",
                }),
                0,
            ),
            generic(
                EventKind::PaymentProcessed,
                json!({ "status": "completed" }),
                1,
            ),
            custom(2),
        ],
        AggregateKind::Custom => vec![generic(
            EventKind::Custom,
            json!({ "anything": { "nested": true } }),
            0,
        )],
    }
}

/// A sample `snapshot_taken` event.
pub fn snapshot_sample() -> SnapshotLogEvent {
    let mut state = GenericState::default();
    for event in kind_samples(AggregateKind::User).iter().take(2) {
        state.apply(event);
    }
    SnapshotLogEvent::SnapshotTaken {
        aggregate_type: AggregateKind::User,
        version: state.version(),
        data: state.document(AggregateKind::User, "user-123"),
        at: at(5),
    }
}

/// One stored sample of every (aggregate type, event type, version) of this context.
pub fn samples() -> Vec<StoredSample> {
    let mut out: Vec<StoredSample> = Vec::new();
    for kind in AggregateKind::ALL {
        for event in kind_samples(kind) {
            let sample = StoredSample {
                aggregate_type: kind.store_type(),
                event_type: event.event_type(),
                version: event.event_version(),
                payload: serde_json::to_value(&event).unwrap_or_default(),
            };
            let seen = out.iter().any(|s| {
                s.aggregate_type == sample.aggregate_type
                    && s.event_type == sample.event_type
                    && s.version == sample.version
            });
            if !seen {
                out.push(sample);
            }
        }
    }
    let snapshot = snapshot_sample();
    out.push(StoredSample {
        aggregate_type: SNAPSHOT_LOG,
        event_type: snapshot.event_type(),
        version: snapshot.event_version(),
        payload: serde_json::to_value(&snapshot).unwrap_or_default(),
    });
    out
}

/// Deserializes an (already upcast) stored payload of `aggregate_type` and applies it, to a
/// fresh aggregate and to one its kind's creation sample created first.
pub fn replay_payload(aggregate_type: &str, payload: Value) -> Result<(), String> {
    if aggregate_type == SNAPSHOT_LOG {
        let event: SnapshotLogEvent =
            serde_json::from_value(payload).map_err(|e| format!("no longer deserializes: {e}"))?;
        let mut log = SnapshotLog::default();
        log.apply(event.clone());
        log.apply(event);
        return Ok(());
    }
    let kind = AggregateKind::from_store_type(aggregate_type)
        .ok_or_else(|| format!("{aggregate_type} is not an aggregate type of this context"))?;
    let event: GenericEvent =
        serde_json::from_value(payload).map_err(|e| format!("no longer deserializes: {e}"))?;
    if !kind.accepts(event.kind) {
        return Err(format!("a {} event does not fit a {kind}", event.kind));
    }
    GenericState::default().apply(&event);
    let mut created = GenericState::default();
    if let Some(creation) = kind_samples(kind).first() {
        created.apply(creation);
    }
    created.apply(&event);
    Ok(())
}
