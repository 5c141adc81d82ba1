//! The `event-sourcing` read models: each generic aggregate's current document, its state
//! and metadata one key per document (so a partial change is a few `DocOp`s, never a read
//! of the old state), and the snapshots the snapshot logs recorded.
//!
//! Pure: every event becomes a list of `DocOp`s. The rules mirror
//! [`GenericState::apply`](super::GenericState::apply): the first event of an aggregate
//! sets its state, later ones change it by their type, `null` removes a key.

use serde_json::{json, Map, Value};

use super::aggregate::GenericEvent;
use super::snapshot::SnapshotLogEvent;
use super::{owns, AggregateKind, EventKind, SNAPSHOT_LOG};
use crate::domain::memento::projection::rfc3339;
use crate::domain::projection::{forgotten_aggregate, Projection, ProjectionError};
use crate::envelope::RecordedEvent;
use crate::ports::DocOp;

pub const PROJECTION_NAME: &str = "event-sourcing";
/// Id: the aggregate id. `{id, type, version, active, created_at, updated_at,
/// last_event_type, position}`.
pub const AGGREGATES: &str = "es_aggregates";
/// Id: `{aggregate_id}/{part}/{key}`. `{aggregate_id, part ("state" or "metadata"), key,
/// value}`.
pub const FIELDS: &str = "es_aggregate_fields";
/// Id: `{aggregate_id}/{log sequence:010}`. `{id, aggregate_id, aggregate_type, version,
/// data, taken_at, position}`.
pub const SNAPSHOTS: &str = "es_snapshots";

/// `part` of a field document holding a state key.
pub const STATE_PART: &str = "state";
/// `part` of a field document holding a metadata key.
pub const METADATA_PART: &str = "metadata";

const COLLECTIONS: &[&str] = &[AGGREGATES, FIELDS, SNAPSHOTS];

#[derive(Debug, Clone, Copy, Default)]
pub struct EventSourcingProjection;

/// The read-model id of one state or metadata key of an aggregate.
pub fn field_doc_id(aggregate_id: &str, part: &str, key: &str) -> String {
    format!("{aggregate_id}/{part}/{key}")
}

/// The read-model id of one snapshot (the position in its log keeps repeats apart).
pub fn snapshot_doc_id(aggregate_id: &str, log_sequence: u64) -> String {
    format!("{aggregate_id}/{log_sequence:010}")
}

/// Rebuilds an aggregate's document from its read models: the aggregate document and its
/// field documents (any order). The same shape as [`GenericState::document`](super::GenericState::document).
pub fn assemble(aggregate: &Value, fields: &[Value]) -> Value {
    let mut state = Map::new();
    let mut metadata = Map::new();
    for field in fields {
        let (Some(part), Some(key), Some(value)) = (
            field.get("part").and_then(Value::as_str),
            field.get("key").and_then(Value::as_str),
            field.get("value"),
        ) else {
            continue;
        };
        match part {
            STATE_PART => state.insert(key.to_string(), value.clone()),
            METADATA_PART => metadata.insert(key.to_string(), value.clone()),
            _ => None,
        };
    }
    let get = |key: &str| aggregate.get(key).cloned().unwrap_or(Value::Null);
    json!({
        "id": get("id"),
        "type": get("type"),
        "version": get("version"),
        "active": get("active"),
        "state": state,
        "metadata": metadata,
        "created_at": get("created_at"),
        "updated_at": get("updated_at"),
    })
}

impl Projection for EventSourcingProjection {
    fn name(&self) -> &'static str {
        PROJECTION_NAME
    }

    fn collections(&self) -> &'static [&'static str] {
        COLLECTIONS
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        owns(aggregate_type)
    }

    fn project(&self, event: &RecordedEvent) -> Result<Vec<DocOp>, ProjectionError> {
        if let Some((aggregate_type, aggregate_id)) = forgotten_aggregate(event) {
            return Ok(forget(&aggregate_type, &aggregate_id));
        }
        let aggregate_type = event.aggregate_type.as_str();
        let kind = AggregateKind::from_store_type(aggregate_type);
        if kind.is_none() && aggregate_type != SNAPSHOT_LOG {
            return Ok(Vec::new());
        }
        let Some(data) = &event.data else {
            // The payload was shredded: a tombstone where the aggregate's document would be.
            return Ok(if kind.is_some() && event.sequence == 1 {
                vec![tombstone(AGGREGATES, &event.aggregate_id)]
            } else {
                Vec::new()
            });
        };
        let error = |reason: String| ProjectionError {
            projection: PROJECTION_NAME.to_string(),
            event_type: event.event_type.clone(),
            position: event.position,
            reason,
        };
        match kind {
            Some(kind) => {
                let parsed: GenericEvent =
                    serde::Deserialize::deserialize(data).map_err(|e| error(e.to_string()))?;
                Ok(aggregate_ops(kind, event, &parsed))
            }
            None => {
                let parsed: SnapshotLogEvent =
                    serde::Deserialize::deserialize(data).map_err(|e| error(e.to_string()))?;
                Ok(snapshot_ops(event, parsed))
            }
        }
    }
}

fn forget(aggregate_type: &str, aggregate_id: &str) -> Vec<DocOp> {
    let where_aggregate = |collection: &str| DocOp::TombstoneWhere {
        collection: collection.to_string(),
        field: "aggregate_id".to_string(),
        value: json!(aggregate_id),
    };
    if AggregateKind::from_store_type(aggregate_type).is_some() {
        // Snapshots hold copies of the state.
        vec![
            tombstone(AGGREGATES, aggregate_id),
            where_aggregate(FIELDS),
            where_aggregate(SNAPSHOTS),
        ]
    } else if aggregate_type == SNAPSHOT_LOG {
        vec![where_aggregate(SNAPSHOTS)]
    } else {
        Vec::new()
    }
}

fn aggregate_ops(
    kind: AggregateKind,
    recorded: &RecordedEvent,
    event: &GenericEvent,
) -> Vec<DocOp> {
    let id = recorded.aggregate_id.as_str();
    let at = rfc3339(event.at);
    let mut ops = Vec::new();
    if recorded.sequence == 1 {
        ops.push(DocOp::Upsert {
            collection: AGGREGATES.to_string(),
            id: id.to_string(),
            doc: json!({
                "id": id,
                "type": kind,
                "version": 1,
                "active": true,
                "created_at": at,
                "updated_at": at,
                "last_event_type": event.kind,
                "position": recorded.position,
            }),
        });
        field_ops(&mut ops, id, STATE_PART, &event.data);
        field_ops(&mut ops, id, METADATA_PART, &event.metadata);
        return ops;
    }
    let mut patch = json!({
        "version": recorded.sequence,
        "updated_at": at,
        "last_event_type": event.kind,
        "position": recorded.position,
    });
    if event.kind == EventKind::UserDeleted {
        patch["active"] = json!(false);
    }
    ops.push(DocOp::Merge {
        collection: AGGREGATES.to_string(),
        id: id.to_string(),
        patch,
    });
    field_ops(&mut ops, id, METADATA_PART, &event.metadata);
    match event.kind {
        EventKind::UserUpdated => {
            if let Some(Value::Object(changes)) = event.data.get("changes") {
                field_ops(&mut ops, id, STATE_PART, changes);
            }
        }
        EventKind::OrderStatusChanged => {
            if let Some(status) = event.data.get("status") {
                let mut patch = Map::new();
                patch.insert("status".into(), status.clone());
                field_ops(&mut ops, id, STATE_PART, &patch);
            }
        }
        EventKind::PaymentProcessed | EventKind::Custom => {
            field_ops(&mut ops, id, STATE_PART, &event.data);
        }
        EventKind::UserDeleted | EventKind::UserCreated | EventKind::OrderCreated => {}
    }
    ops
}

/// One upsert per key, one delete per `null` (the merge rule of the aggregate).
fn field_ops(ops: &mut Vec<DocOp>, aggregate_id: &str, part: &str, patch: &Map<String, Value>) {
    for (key, value) in patch {
        let id = field_doc_id(aggregate_id, part, key);
        if value.is_null() {
            ops.push(DocOp::Delete {
                collection: FIELDS.to_string(),
                id,
            });
        } else {
            ops.push(DocOp::Upsert {
                collection: FIELDS.to_string(),
                id,
                doc: json!({
                    "aggregate_id": aggregate_id,
                    "part": part,
                    "key": key,
                    "value": value,
                }),
            });
        }
    }
}

fn snapshot_ops(recorded: &RecordedEvent, event: SnapshotLogEvent) -> Vec<DocOp> {
    match event {
        SnapshotLogEvent::SnapshotTaken {
            aggregate_type,
            version,
            data,
            at,
        } => {
            let id = snapshot_doc_id(&recorded.aggregate_id, recorded.sequence);
            vec![DocOp::Upsert {
                collection: SNAPSHOTS.to_string(),
                id: id.clone(),
                doc: json!({
                    "id": id,
                    "aggregate_id": recorded.aggregate_id,
                    "aggregate_type": aggregate_type,
                    "version": version,
                    "data": data,
                    "taken_at": rfc3339(at),
                    "position": recorded.position,
                }),
            }]
        }
    }
}

fn tombstone(collection: &str, id: &str) -> DocOp {
    DocOp::Upsert {
        collection: collection.to_string(),
        id: id.to_string(),
        doc: json!({ "id": id, "tombstone": true }),
    }
}
