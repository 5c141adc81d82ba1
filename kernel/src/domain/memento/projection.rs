//! The memento read models: caretakers with their statistics, mementos, originators and
//! each originator's state history (for `GET /originators/{id}/state?version=`).
//!
//! Pure: every event becomes a list of `DocOp`s. Counters move by `Increment`, so the
//! projection never needs to read a document.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::caretaker::CaretakerEvent;
use super::originator::OriginatorEvent;
use super::{OriginatorKind, CARETAKER, ORIGINATOR};
use crate::domain::projection::{forgotten_aggregate, Projection, ProjectionError};
use crate::envelope::RecordedEvent;
use crate::ports::DocOp;

pub const PROJECTION_NAME: &str = "memento";
/// Id: the caretaker's name.
pub const CARETAKERS: &str = "memento_caretakers";
/// Id: `{caretaker}/{memento_id}`.
pub const MEMENTOS: &str = "memento_mementos";
/// Id: the originator's id.
pub const ORIGINATORS: &str = "memento_originators";
/// Id: `{originator}/{version:010}`, so ids sort by version.
pub const HISTORY: &str = "memento_originator_history";

const COLLECTIONS: &[&str] = &[CARETAKERS, MEMENTOS, ORIGINATORS, HISTORY];

#[derive(Debug, Clone, Copy, Default)]
pub struct MementoProjection;

/// The read-model id of a memento.
pub fn memento_doc_id(caretaker: &str, memento_id: &str) -> String {
    format!("{caretaker}/{memento_id}")
}

/// The read-model id of one version of an originator's state.
pub fn history_doc_id(originator_id: &str, version: u64) -> String {
    format!("{originator_id}/{version:010}")
}

/// Times in read models: RFC 3339, UTC, fixed width (microseconds) so strings sort as times.
pub fn rfc3339(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Projection for MementoProjection {
    fn name(&self) -> &'static str {
        PROJECTION_NAME
    }

    fn collections(&self) -> &'static [&'static str] {
        COLLECTIONS
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        aggregate_type == CARETAKER || aggregate_type == ORIGINATOR
    }

    fn project(&self, event: &RecordedEvent) -> Result<Vec<DocOp>, ProjectionError> {
        if let Some((aggregate_type, aggregate_id)) = forgotten_aggregate(event) {
            return Ok(forget(&aggregate_type, &aggregate_id));
        }
        let aggregate_type = event.aggregate_type.as_str();
        if aggregate_type != CARETAKER && aggregate_type != ORIGINATOR {
            return Ok(Vec::new());
        }
        let Some(data) = &event.data else {
            // The payload was shredded: keep a tombstone where the aggregate's doc would be.
            return Ok(match (aggregate_type, event.event_type.as_str()) {
                (CARETAKER, "caretaker_created") => {
                    vec![tombstone(CARETAKERS, &event.aggregate_id)]
                }
                (ORIGINATOR, "originator_created") => {
                    vec![tombstone(ORIGINATORS, &event.aggregate_id)]
                }
                _ => Vec::new(),
            });
        };
        let error = |reason: String| ProjectionError {
            projection: PROJECTION_NAME.to_string(),
            event_type: event.event_type.clone(),
            position: event.position,
            reason,
        };
        if aggregate_type == CARETAKER {
            let parsed: CaretakerEvent =
                serde::Deserialize::deserialize(data).map_err(|e| error(e.to_string()))?;
            Ok(caretaker_ops(&event.aggregate_id, parsed))
        } else {
            let parsed: OriginatorEvent =
                serde::Deserialize::deserialize(data).map_err(|e| error(e.to_string()))?;
            Ok(originator_ops(&event.aggregate_id, event.position, parsed))
        }
    }
}

fn forget(aggregate_type: &str, aggregate_id: &str) -> Vec<DocOp> {
    match aggregate_type {
        CARETAKER => vec![
            tombstone(CARETAKERS, aggregate_id),
            DocOp::TombstoneWhere {
                collection: MEMENTOS.to_string(),
                field: "caretaker".to_string(),
                value: json!(aggregate_id),
            },
        ],
        // Mementos of the originator in any caretaker hold copies of its state.
        ORIGINATOR => vec![
            tombstone(ORIGINATORS, aggregate_id),
            DocOp::TombstoneWhere {
                collection: HISTORY.to_string(),
                field: "originator_id".to_string(),
                value: json!(aggregate_id),
            },
            DocOp::TombstoneWhere {
                collection: MEMENTOS.to_string(),
                field: "originator_id".to_string(),
                value: json!(aggregate_id),
            },
        ],
        _ => Vec::new(),
    }
}

fn caretaker_ops(name: &str, event: CaretakerEvent) -> Vec<DocOp> {
    match event {
        CaretakerEvent::CaretakerCreated {
            name: _,
            max_mementos,
            max_memento_size,
            max_memento_age_secs,
            at,
        } => {
            let at = rfc3339(at);
            let by_type: serde_json::Map<String, Value> = OriginatorKind::ALL
                .iter()
                .map(|k| (k.as_str().to_string(), json!(0)))
                .collect();
            vec![upsert(
                CARETAKERS,
                name,
                json!({
                    "name": name,
                    "max_mementos": max_mementos,
                    "max_memento_size": max_memento_size,
                    "max_memento_age_secs": max_memento_age_secs,
                    "memento_count": 0,
                    "total_size": 0,
                    "by_type": by_type,
                    "restore_count": 0,
                    "cleanup_count": 0,
                    "last_cleanup_at": null,
                    "created_at": at,
                    "updated_at": at,
                }),
            )]
        }
        CaretakerEvent::MementoCreated {
            memento_id,
            originator_id,
            kind,
            state,
            description,
            metadata,
            size,
            checksum,
            version,
            at,
        } => {
            let at = rfc3339(at);
            vec![
                upsert(
                    MEMENTOS,
                    &memento_doc_id(name, &memento_id),
                    json!({
                        "id": memento_id,
                        "caretaker": name,
                        "originator_id": originator_id,
                        "type": kind,
                        "description": description,
                        "metadata": metadata,
                        "state": state,
                        "size": size,
                        "checksum": checksum,
                        "version": version,
                        "created_at": at,
                        "restore_count": 0,
                        "last_restored_at": null,
                    }),
                ),
                increment(CARETAKERS, name, "memento_count", 1.0),
                increment(CARETAKERS, name, "total_size", size as f64),
                increment(CARETAKERS, name, &by_type_field(kind), 1.0),
                merge(CARETAKERS, name, json!({ "updated_at": at })),
            ]
        }
        CaretakerEvent::MementoDeleted {
            memento_id,
            kind,
            size,
            at,
            ..
        } => vec![
            DocOp::Delete {
                collection: MEMENTOS.to_string(),
                id: memento_doc_id(name, &memento_id),
            },
            increment(CARETAKERS, name, "memento_count", -1.0),
            increment(CARETAKERS, name, "total_size", -(size as f64)),
            increment(CARETAKERS, name, &by_type_field(kind), -1.0),
            merge(CARETAKERS, name, json!({ "updated_at": rfc3339(at) })),
        ],
        CaretakerEvent::MementoRestored { memento_id, at, .. } => {
            let at = rfc3339(at);
            let id = memento_doc_id(name, &memento_id);
            vec![
                increment(MEMENTOS, &id, "restore_count", 1.0),
                merge(MEMENTOS, &id, json!({ "last_restored_at": at })),
                increment(CARETAKERS, name, "restore_count", 1.0),
                merge(CARETAKERS, name, json!({ "updated_at": at })),
            ]
        }
        CaretakerEvent::CleanupCompleted { removed, at } => {
            let at = rfc3339(at);
            let mut ops: Vec<DocOp> = removed
                .iter()
                .map(|r| DocOp::Delete {
                    collection: MEMENTOS.to_string(),
                    id: memento_doc_id(name, &r.memento_id),
                })
                .collect();
            if !removed.is_empty() {
                let total: u64 = removed.iter().map(|r| r.size).sum();
                ops.push(increment(
                    CARETAKERS,
                    name,
                    "memento_count",
                    -(removed.len() as f64),
                ));
                ops.push(increment(CARETAKERS, name, "total_size", -(total as f64)));
                for kind in OriginatorKind::ALL {
                    let n = removed.iter().filter(|r| r.kind == kind).count();
                    if n > 0 {
                        ops.push(increment(
                            CARETAKERS,
                            name,
                            &by_type_field(kind),
                            -(n as f64),
                        ));
                    }
                }
            }
            ops.push(increment(CARETAKERS, name, "cleanup_count", 1.0));
            ops.push(merge(
                CARETAKERS,
                name,
                json!({ "last_cleanup_at": at, "updated_at": at }),
            ));
            ops
        }
        CaretakerEvent::CaretakerRemoved { .. } => vec![
            DocOp::DeleteWhere {
                collection: MEMENTOS.to_string(),
                field: "caretaker".to_string(),
                value: json!(name),
            },
            DocOp::Delete {
                collection: CARETAKERS.to_string(),
                id: name.to_string(),
            },
        ],
    }
}

fn originator_ops(id: &str, position: u64, event: OriginatorEvent) -> Vec<DocOp> {
    match event {
        OriginatorEvent::OriginatorCreated {
            id: _,
            kind,
            name,
            state,
            version,
            at,
        } => {
            let at = rfc3339(at);
            vec![
                upsert(
                    ORIGINATORS,
                    id,
                    json!({
                        "id": id,
                        "type": kind,
                        "name": name,
                        "state": state,
                        "version": version,
                        "created_at": at,
                        "updated_at": at,
                        "restored_from": null,
                    }),
                ),
                history(
                    id,
                    version,
                    state,
                    "originator_created",
                    None,
                    &at,
                    position,
                ),
            ]
        }
        OriginatorEvent::OriginatorStateChanged { state, version, at } => {
            let at = rfc3339(at);
            let mut ops = replace_state(id, &state, version, &at, Value::Null);
            ops.push(history(
                id,
                version,
                state,
                "originator_state_changed",
                None,
                &at,
                position,
            ));
            ops
        }
        OriginatorEvent::OriginatorRestored {
            caretaker,
            memento_id,
            restored_version,
            state,
            version,
            at,
        } => {
            let at = rfc3339(at);
            let from = json!({
                "caretaker": caretaker,
                "memento_id": memento_id,
                "version": restored_version,
            });
            let mut ops = replace_state(id, &state, version, &at, from);
            ops.push(history(
                id,
                version,
                state,
                "originator_restored",
                Some((&caretaker, &memento_id)),
                &at,
                position,
            ));
            ops
        }
    }
}

/// Sets the originator's state. The state is cleared first so that, even where `Merge` is a
/// deep (RFC 7386) merge, keys the new state no longer has do not survive.
fn replace_state(id: &str, state: &Value, version: u64, at: &str, from: Value) -> Vec<DocOp> {
    vec![
        merge(ORIGINATORS, id, json!({ "state": null })),
        merge(
            ORIGINATORS,
            id,
            json!({
                "state": state,
                "version": version,
                "updated_at": at,
                "restored_from": from,
            }),
        ),
    ]
}

fn history(
    originator_id: &str,
    version: u64,
    state: Value,
    event_type: &str,
    source: Option<(&str, &str)>,
    at: &str,
    position: u64,
) -> DocOp {
    let (caretaker, memento_id) = match source {
        Some((c, m)) => (json!(c), json!(m)),
        None => (Value::Null, Value::Null),
    };
    upsert(
        HISTORY,
        &history_doc_id(originator_id, version),
        json!({
            "originator_id": originator_id,
            "version": version,
            "state": state,
            "event_type": event_type,
            "caretaker": caretaker,
            "memento_id": memento_id,
            "at": at,
            "position": position,
        }),
    )
}

fn by_type_field(kind: OriginatorKind) -> String {
    format!("by_type.{}", kind.as_str())
}

fn tombstone(collection: &str, id: &str) -> DocOp {
    upsert(collection, id, json!({ "id": id, "tombstone": true }))
}

fn upsert(collection: &str, id: &str, doc: Value) -> DocOp {
    DocOp::Upsert {
        collection: collection.to_string(),
        id: id.to_string(),
        doc,
    }
}

fn merge(collection: &str, id: &str, patch: Value) -> DocOp {
    DocOp::Merge {
        collection: collection.to_string(),
        id: id.to_string(),
        patch,
    }
}

fn increment(collection: &str, id: &str, field: &str, by: f64) -> DocOp {
    DocOp::Increment {
        collection: collection.to_string(),
        id: id.to_string(),
        field: field.to_string(),
        by,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::memento::caretaker::RemovedMemento;
    use crate::domain::memento::checksum;
    use crate::domain::projection::{AGGREGATE_FORGOTTEN, SYSTEM_AGGREGATE};
    use chrono::TimeZone;
    use cqrs_es::DomainEvent;
    use uuid::Uuid;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("valid date")
            + chrono::Duration::seconds(secs)
    }

    fn recorded(
        aggregate_type: &str,
        aggregate_id: &str,
        position: u64,
        event_type: &str,
        data: Option<Value>,
    ) -> RecordedEvent {
        RecordedEvent {
            position,
            context: "memento",
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            sequence: position,
            event_type: event_type.to_string(),
            event_version: 1,
            event_id: Uuid::nil(),
            correlation_id: Uuid::nil(),
            causation_id: None,
            actor: None,
            recorded_at: t(0),
            data,
        }
    }

    fn caretaker_event(position: u64, e: &CaretakerEvent) -> RecordedEvent {
        let data = serde_json::to_value(e).expect("serialize");
        recorded(CARETAKER, "ct", position, &e.event_type(), Some(data))
    }

    fn originator_event(position: u64, e: &OriginatorEvent) -> RecordedEvent {
        let data = serde_json::to_value(e).expect("serialize");
        recorded(ORIGINATOR, "doc1", position, &e.event_type(), Some(data))
    }

    fn project(e: &RecordedEvent) -> Vec<DocOp> {
        MementoProjection.project(e).expect("project")
    }

    fn memento_created(id: &str, kind: OriginatorKind, state: Value, at: i64) -> CaretakerEvent {
        let (size, sum) = checksum(&state);
        CaretakerEvent::MementoCreated {
            memento_id: id.into(),
            originator_id: "doc1".into(),
            kind,
            state,
            description: Some("first".into()),
            metadata: serde_json::Map::new(),
            size,
            checksum: sum,
            version: 1,
            at: t(at),
        }
    }

    #[test]
    fn memento_projection_identity() {
        let p = MementoProjection;
        assert_eq!(p.name(), "memento");
        assert!(p.handles("caretaker") && p.handles("originator"));
        assert!(!p.handles("user"));
        assert_eq!(
            p.collections(),
            &[
                "memento_caretakers",
                "memento_mementos",
                "memento_originators",
                "memento_originator_history"
            ]
        );
        assert_eq!(history_doc_id("doc1", 3), "doc1/0000000003");
        assert_eq!(rfc3339(t(1)), "2024-01-01T00:00:01.000000Z");
    }

    #[test]
    fn memento_projection_caretaker_created() {
        let ops = project(&caretaker_event(
            1,
            &CaretakerEvent::CaretakerCreated {
                name: "ct".into(),
                max_mementos: 10,
                max_memento_size: 1000,
                max_memento_age_secs: 60,
                at: t(0),
            },
        ));
        assert_eq!(
            ops,
            vec![upsert(
                CARETAKERS,
                "ct",
                json!({
                    "name": "ct",
                    "max_mementos": 10,
                    "max_memento_size": 1000,
                    "max_memento_age_secs": 60,
                    "memento_count": 0,
                    "total_size": 0,
                    "by_type": {"document": 0, "database": 0, "file": 0, "configuration": 0},
                    "restore_count": 0,
                    "cleanup_count": 0,
                    "last_cleanup_at": null,
                    "created_at": "2024-01-01T00:00:00.000000Z",
                    "updated_at": "2024-01-01T00:00:00.000000Z",
                })
            )]
        );
    }

    #[test]
    fn memento_projection_memento_lifecycle() {
        let state = json!({"content": "Hello"});
        let (size, sum) = checksum(&state);
        let ops = project(&caretaker_event(
            2,
            &memento_created("m1", OriginatorKind::Document, state.clone(), 5),
        ));
        assert_eq!(
            ops,
            vec![
                upsert(
                    MEMENTOS,
                    "ct/m1",
                    json!({
                        "id": "m1",
                        "caretaker": "ct",
                        "originator_id": "doc1",
                        "type": "document",
                        "description": "first",
                        "metadata": {},
                        "state": state,
                        "size": size,
                        "checksum": sum,
                        "version": 1,
                        "created_at": "2024-01-01T00:00:05.000000Z",
                        "restore_count": 0,
                        "last_restored_at": null,
                    })
                ),
                increment(CARETAKERS, "ct", "memento_count", 1.0),
                increment(CARETAKERS, "ct", "total_size", size as f64),
                increment(CARETAKERS, "ct", "by_type.document", 1.0),
                merge(
                    CARETAKERS,
                    "ct",
                    json!({"updated_at": "2024-01-01T00:00:05.000000Z"})
                ),
            ]
        );

        let ops = project(&caretaker_event(
            3,
            &CaretakerEvent::MementoRestored {
                memento_id: "m1".into(),
                originator_id: "doc1".into(),
                version: 1,
                at: t(6),
            },
        ));
        let at6 = "2024-01-01T00:00:06.000000Z";
        assert_eq!(
            ops,
            vec![
                increment(MEMENTOS, "ct/m1", "restore_count", 1.0),
                merge(MEMENTOS, "ct/m1", json!({"last_restored_at": at6})),
                increment(CARETAKERS, "ct", "restore_count", 1.0),
                merge(CARETAKERS, "ct", json!({"updated_at": at6})),
            ]
        );

        let ops = project(&caretaker_event(
            4,
            &CaretakerEvent::MementoDeleted {
                memento_id: "m1".into(),
                originator_id: "doc1".into(),
                kind: OriginatorKind::Document,
                size,
                at: t(7),
            },
        ));
        assert_eq!(
            ops,
            vec![
                DocOp::Delete {
                    collection: MEMENTOS.into(),
                    id: "ct/m1".into()
                },
                increment(CARETAKERS, "ct", "memento_count", -1.0),
                increment(CARETAKERS, "ct", "total_size", -(size as f64)),
                increment(CARETAKERS, "ct", "by_type.document", -1.0),
                merge(
                    CARETAKERS,
                    "ct",
                    json!({"updated_at": "2024-01-01T00:00:07.000000Z"})
                ),
            ]
        );
    }

    #[test]
    fn memento_projection_cleanup_groups_counters() {
        let removed = vec![
            RemovedMemento {
                memento_id: "m1".into(),
                originator_id: "doc1".into(),
                kind: OriginatorKind::Document,
                size: 10,
            },
            RemovedMemento {
                memento_id: "m2".into(),
                originator_id: "db1".into(),
                kind: OriginatorKind::Database,
                size: 20,
            },
            RemovedMemento {
                memento_id: "m3".into(),
                originator_id: "doc1".into(),
                kind: OriginatorKind::Document,
                size: 30,
            },
        ];
        let ops = project(&caretaker_event(
            5,
            &CaretakerEvent::CleanupCompleted { removed, at: t(9) },
        ));
        let at = "2024-01-01T00:00:09.000000Z";
        let del = |id: &str| DocOp::Delete {
            collection: MEMENTOS.into(),
            id: id.into(),
        };
        assert_eq!(
            ops,
            vec![
                del("ct/m1"),
                del("ct/m2"),
                del("ct/m3"),
                increment(CARETAKERS, "ct", "memento_count", -3.0),
                increment(CARETAKERS, "ct", "total_size", -60.0),
                increment(CARETAKERS, "ct", "by_type.document", -2.0),
                increment(CARETAKERS, "ct", "by_type.database", -1.0),
                increment(CARETAKERS, "ct", "cleanup_count", 1.0),
                merge(
                    CARETAKERS,
                    "ct",
                    json!({"last_cleanup_at": at, "updated_at": at})
                ),
            ]
        );

        // An empty cleanup still counts and stamps the caretaker.
        let ops = project(&caretaker_event(
            6,
            &CaretakerEvent::CleanupCompleted {
                removed: vec![],
                at: t(9),
            },
        ));
        assert_eq!(
            ops,
            vec![
                increment(CARETAKERS, "ct", "cleanup_count", 1.0),
                merge(
                    CARETAKERS,
                    "ct",
                    json!({"last_cleanup_at": at, "updated_at": at})
                ),
            ]
        );
    }

    #[test]
    fn memento_projection_caretaker_removed() {
        let ops = project(&caretaker_event(
            7,
            &CaretakerEvent::CaretakerRemoved {
                name: "ct".into(),
                memento_count: 2,
                at: t(10),
            },
        ));
        assert_eq!(
            ops,
            vec![
                DocOp::DeleteWhere {
                    collection: MEMENTOS.into(),
                    field: "caretaker".into(),
                    value: json!("ct"),
                },
                DocOp::Delete {
                    collection: CARETAKERS.into(),
                    id: "ct".into(),
                },
            ]
        );
    }

    #[test]
    fn memento_projection_originator_sequence() {
        let created = OriginatorEvent::OriginatorCreated {
            id: "doc1".into(),
            kind: OriginatorKind::Document,
            name: "My Document".into(),
            state: json!({"content": "a"}),
            version: 1,
            at: t(0),
        };
        let at0 = "2024-01-01T00:00:00.000000Z";
        assert_eq!(
            project(&originator_event(10, &created)),
            vec![
                upsert(
                    ORIGINATORS,
                    "doc1",
                    json!({
                        "id": "doc1",
                        "type": "document",
                        "name": "My Document",
                        "state": {"content": "a"},
                        "version": 1,
                        "created_at": at0,
                        "updated_at": at0,
                        "restored_from": null,
                    })
                ),
                upsert(
                    HISTORY,
                    "doc1/0000000001",
                    json!({
                        "originator_id": "doc1",
                        "version": 1,
                        "state": {"content": "a"},
                        "event_type": "originator_created",
                        "caretaker": null,
                        "memento_id": null,
                        "at": at0,
                        "position": 10,
                    })
                ),
            ]
        );

        let changed = OriginatorEvent::OriginatorStateChanged {
            state: json!({"content": "b"}),
            version: 2,
            at: t(1),
        };
        let at1 = "2024-01-01T00:00:01.000000Z";
        assert_eq!(
            project(&originator_event(11, &changed)),
            vec![
                merge(ORIGINATORS, "doc1", json!({"state": null})),
                merge(
                    ORIGINATORS,
                    "doc1",
                    json!({
                        "state": {"content": "b"},
                        "version": 2,
                        "updated_at": at1,
                        "restored_from": null,
                    })
                ),
                upsert(
                    HISTORY,
                    "doc1/0000000002",
                    json!({
                        "originator_id": "doc1",
                        "version": 2,
                        "state": {"content": "b"},
                        "event_type": "originator_state_changed",
                        "caretaker": null,
                        "memento_id": null,
                        "at": at1,
                        "position": 11,
                    })
                ),
            ]
        );

        let restored = OriginatorEvent::OriginatorRestored {
            caretaker: "ct".into(),
            memento_id: "m1".into(),
            restored_version: 1,
            state: json!({"content": "a"}),
            version: 3,
            at: t(2),
        };
        let at2 = "2024-01-01T00:00:02.000000Z";
        assert_eq!(
            project(&originator_event(12, &restored)),
            vec![
                merge(ORIGINATORS, "doc1", json!({"state": null})),
                merge(
                    ORIGINATORS,
                    "doc1",
                    json!({
                        "state": {"content": "a"},
                        "version": 3,
                        "updated_at": at2,
                        "restored_from": {"caretaker": "ct", "memento_id": "m1", "version": 1},
                    })
                ),
                upsert(
                    HISTORY,
                    "doc1/0000000003",
                    json!({
                        "originator_id": "doc1",
                        "version": 3,
                        "state": {"content": "a"},
                        "event_type": "originator_restored",
                        "caretaker": "ct",
                        "memento_id": "m1",
                        "at": at2,
                        "position": 12,
                    })
                ),
            ]
        );
    }

    #[test]
    fn memento_projection_unreadable_payloads() {
        assert_eq!(
            project(&recorded(CARETAKER, "ct", 1, "caretaker_created", None)),
            vec![upsert(
                CARETAKERS,
                "ct",
                json!({"id": "ct", "tombstone": true})
            )]
        );
        assert_eq!(
            project(&recorded(ORIGINATOR, "doc1", 2, "originator_created", None)),
            vec![upsert(
                ORIGINATORS,
                "doc1",
                json!({"id": "doc1", "tombstone": true})
            )]
        );
        for (t, e) in [
            (CARETAKER, "memento_created"),
            (CARETAKER, "cleanup_completed"),
            (ORIGINATOR, "originator_state_changed"),
        ] {
            assert_eq!(project(&recorded(t, "x", 3, e, None)), vec![]);
        }
    }

    #[test]
    fn memento_projection_forgotten_aggregates() {
        let forget = |atype: &str, id: &str| {
            recorded(
                SYSTEM_AGGREGATE,
                "system",
                20,
                AGGREGATE_FORGOTTEN,
                Some(json!({"aggregate_type": atype, "aggregate_id": id})),
            )
        };
        assert_eq!(
            project(&forget(CARETAKER, "ct")),
            vec![
                upsert(CARETAKERS, "ct", json!({"id": "ct", "tombstone": true})),
                DocOp::TombstoneWhere {
                    collection: MEMENTOS.into(),
                    field: "caretaker".into(),
                    value: json!("ct"),
                },
            ]
        );
        assert_eq!(
            project(&forget(ORIGINATOR, "doc1")),
            vec![
                upsert(
                    ORIGINATORS,
                    "doc1",
                    json!({"id": "doc1", "tombstone": true})
                ),
                DocOp::TombstoneWhere {
                    collection: HISTORY.into(),
                    field: "originator_id".into(),
                    value: json!("doc1"),
                },
                DocOp::TombstoneWhere {
                    collection: MEMENTOS.into(),
                    field: "originator_id".into(),
                    value: json!("doc1"),
                },
            ]
        );
        assert_eq!(project(&forget("user", "u1")), vec![]);
        // Other system events and other aggregate types are ignored.
        assert_eq!(
            project(&recorded(
                SYSTEM_AGGREGATE,
                "system",
                21,
                "other",
                Some(json!({}))
            )),
            vec![]
        );
        assert_eq!(
            project(&recorded("user", "u1", 22, "user_created", Some(json!({})))),
            vec![]
        );
    }

    #[test]
    fn memento_projection_bad_payload_is_an_error() {
        let err = MementoProjection
            .project(&recorded(
                CARETAKER,
                "ct",
                30,
                "memento_created",
                Some(json!({"type": "memento_created", "memento_id": 1})),
            ))
            .expect_err("bad payload");
        assert_eq!(err.projection, "memento");
        assert_eq!(err.event_type, "memento_created");
        assert_eq!(err.position, 30);
    }

    #[test]
    fn memento_projection_by_type_counters_per_kind() {
        for (kind, field) in [
            (OriginatorKind::Database, "by_type.database"),
            (OriginatorKind::File, "by_type.file"),
            (OriginatorKind::Configuration, "by_type.configuration"),
        ] {
            let state = kind.empty_state();
            let ops = project(&caretaker_event(1, &memento_created("m", kind, state, 0)));
            assert!(
                ops.contains(&increment(CARETAKERS, "ct", field, 1.0)),
                "{kind}: {ops:?}"
            );
            match &ops[0] {
                DocOp::Upsert { doc, .. } => assert_eq!(doc["type"], json!(kind.as_str())),
                other => panic!("expected upsert, got {other:?}"),
            }
        }
    }
}
