//! The mediator read models:
//!
//! - [`MEDIATORS`]: one document per live mediator (id: its name) with its description,
//!   metadata, `colleague_count`, `message_count`, `version` and times;
//! - [`COLLEAGUES`]: one document per registered colleague (id: `mediator/colleague`);
//! - [`INBOX`]: one document per (recipient, message) (id: `mediator/colleague/message_id`),
//!   with `inbox` = `mediator/colleague` as a top-level field, so a colleague's inbox is
//!   found and dropped with one equality.
//!
//! Pure: every event becomes a list of `DocOp`s; counters move by `Increment`, which the
//! read store applies once per event (it guards by the aggregate's sequence). The registry
//! of names has no read model.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::aggregate::MediatorEvent;
use super::MEDIATOR;
use crate::domain::memento::projection::rfc3339;
use crate::domain::projection::{forgotten_aggregate, Projection, ProjectionError};
use crate::envelope::RecordedEvent;
use crate::ports::DocOp;

pub const PROJECTION_NAME: &str = "mediator";
pub const MEDIATORS: &str = "mediator_mediators";
pub const COLLEAGUES: &str = "mediator_colleagues";
pub const INBOX: &str = "mediator_inbox";

const COLLECTIONS: &[&str] = &[MEDIATORS, COLLEAGUES, INBOX];

/// The id of a colleague's document, and the `inbox` field of its messages.
pub fn colleague_key(mediator: &str, colleague_id: &str) -> String {
    format!("{mediator}/{colleague_id}")
}

fn inbox_doc_id(mediator: &str, colleague_id: &str, message_id: &str) -> String {
    format!("{mediator}/{colleague_id}/{message_id}")
}

#[derive(Debug, Clone, Copy, Default)]
pub struct MediatorProjection;

impl Projection for MediatorProjection {
    fn name(&self) -> &'static str {
        PROJECTION_NAME
    }

    fn collections(&self) -> &'static [&'static str] {
        COLLECTIONS
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        super::owns(aggregate_type)
    }

    fn project(&self, event: &RecordedEvent) -> Result<Vec<DocOp>, ProjectionError> {
        if let Some((aggregate_type, name)) = forgotten_aggregate(event) {
            return Ok(if aggregate_type == MEDIATOR {
                forget(&name)
            } else {
                Vec::new()
            });
        }
        if event.aggregate_type != MEDIATOR {
            return Ok(Vec::new());
        }
        let Some(data) = &event.data else {
            // The payload was shredded: keep a tombstone where the mediator's doc would be.
            return Ok(if event.event_type == "mediator_created" {
                forget(&event.aggregate_id)
            } else {
                Vec::new()
            });
        };
        let parsed: MediatorEvent =
            serde::Deserialize::deserialize(data).map_err(|err| ProjectionError {
                projection: PROJECTION_NAME.to_string(),
                event_type: event.event_type.clone(),
                position: event.position,
                reason: err.to_string(),
            })?;
        Ok(ops(&event.aggregate_id, event.sequence, parsed))
    }
}

/// A forgotten mediator: a tombstone for its document, its colleagues and messages gone.
fn forget(name: &str) -> Vec<DocOp> {
    vec![
        DocOp::Upsert {
            collection: MEDIATORS.to_string(),
            id: name.to_string(),
            doc: json!({ "name": name, "tombstone": true }),
        },
        delete_where(COLLEAGUES, "mediator", name),
        delete_where(INBOX, "mediator", name),
    ]
}

fn delete_where(collection: &str, field: &str, value: &str) -> DocOp {
    DocOp::DeleteWhere {
        collection: collection.to_string(),
        field: field.to_string(),
        value: json!(value),
    }
}

/// Sets `version` and `updated_at` (and `patch`'s fields) on the mediator's document.
fn touch(name: &str, version: u64, at: DateTime<Utc>, patch: Value) -> DocOp {
    let mut patch = match patch {
        Value::Object(fields) => fields,
        _ => serde_json::Map::new(),
    };
    patch.insert("version".into(), json!(version));
    patch.insert("updated_at".into(), json!(rfc3339(at)));
    DocOp::Merge {
        collection: MEDIATORS.to_string(),
        id: name.to_string(),
        patch: Value::Object(patch),
    }
}

fn increment(name: &str, field: &str, by: f64) -> DocOp {
    DocOp::Increment {
        collection: MEDIATORS.to_string(),
        id: name.to_string(),
        field: field.to_string(),
        by,
    }
}

/// One inbox document.
#[allow(clippy::too_many_arguments)]
fn inbox_doc(
    name: &str,
    recipient: &str,
    message_id: &str,
    sender_id: &str,
    kind: &str,
    message: &Value,
    broadcast: bool,
    sent_at: &str,
    sequence: u64,
) -> DocOp {
    DocOp::Upsert {
        collection: INBOX.to_string(),
        id: inbox_doc_id(name, recipient, message_id),
        doc: json!({
            "mediator": name,
            "colleague_id": recipient,
            "inbox": colleague_key(name, recipient),
            "message_id": message_id,
            "sender_id": sender_id,
            "kind": kind,
            "message": message,
            "broadcast": broadcast,
            "sent_at": sent_at,
            "sequence": sequence,
        }),
    }
}

fn ops(name: &str, version: u64, event: MediatorEvent) -> Vec<DocOp> {
    match event {
        MediatorEvent::MediatorCreated {
            description,
            metadata,
            at,
            ..
        } => {
            let at = rfc3339(at);
            // A mediator created again after a delete starts empty: clear any leftovers.
            vec![
                delete_where(COLLEAGUES, "mediator", name),
                delete_where(INBOX, "mediator", name),
                DocOp::Upsert {
                    collection: MEDIATORS.to_string(),
                    id: name.to_string(),
                    doc: json!({
                        "name": name,
                        "description": description,
                        "metadata": metadata,
                        "colleague_count": 0,
                        "message_count": 0,
                        "version": version,
                        "created_at": at,
                        "updated_at": at,
                    }),
                },
            ]
        }
        MediatorEvent::MediatorUpdated {
            description,
            metadata,
            at,
        } => {
            let mut patch = serde_json::Map::new();
            if let Some(description) = description {
                patch.insert("description".into(), json!(description));
            }
            if let Some(metadata) = metadata {
                patch.insert("metadata".into(), Value::Object(metadata));
            }
            vec![touch(name, version, at, Value::Object(patch))]
        }
        MediatorEvent::MediatorDeleted { .. } => vec![
            delete_where(COLLEAGUES, "mediator", name),
            delete_where(INBOX, "mediator", name),
            DocOp::Delete {
                collection: MEDIATORS.to_string(),
                id: name.to_string(),
            },
        ],
        MediatorEvent::ColleagueRegistered {
            colleague_id,
            name: colleague_name,
            colleague_type,
            at,
        } => vec![
            DocOp::Upsert {
                collection: COLLEAGUES.to_string(),
                id: colleague_key(name, &colleague_id),
                doc: json!({
                    "mediator": name,
                    "id": colleague_id,
                    "name": colleague_name,
                    "type": colleague_type,
                    "registered_at": rfc3339(at),
                }),
            },
            increment(name, "colleague_count", 1.0),
            touch(name, version, at, json!({})),
        ],
        MediatorEvent::ColleagueUnregistered { colleague_id, at } => {
            let key = colleague_key(name, &colleague_id);
            vec![
                DocOp::Delete {
                    collection: COLLEAGUES.to_string(),
                    id: key.clone(),
                },
                delete_where(INBOX, "inbox", &key),
                increment(name, "colleague_count", -1.0),
                touch(name, version, at, json!({})),
            ]
        }
        MediatorEvent::MessageSent {
            message_id,
            sender_id,
            recipient_id,
            kind,
            message,
            sent_at,
        } => vec![
            inbox_doc(
                name,
                &recipient_id,
                &message_id,
                &sender_id,
                kind.as_str(),
                &message,
                false,
                &rfc3339(sent_at),
                version,
            ),
            increment(name, "message_count", 1.0),
            touch(name, version, sent_at, json!({})),
        ],
        MediatorEvent::MessageBroadcasted {
            message_id,
            sender_id,
            recipients,
            kind,
            message,
            sent_at,
        } => {
            let at = rfc3339(sent_at);
            let mut ops: Vec<DocOp> = recipients
                .iter()
                .filter(|recipient| **recipient != sender_id)
                .map(|recipient| {
                    inbox_doc(
                        name,
                        recipient,
                        &message_id,
                        &sender_id,
                        kind.as_str(),
                        &message,
                        true,
                        &at,
                        version,
                    )
                })
                .collect();
            ops.push(increment(name, "message_count", 1.0));
            ops.push(touch(name, version, sent_at, json!({})));
            ops
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::mediator::MessageKind;
    use crate::domain::projection::{AGGREGATE_FORGOTTEN, SYSTEM_AGGREGATE};
    use chrono::TimeZone;
    use cqrs_es::DomainEvent;
    use uuid::Uuid;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_704_067_200 + secs, 0)
            .single()
            .unwrap_or_default()
    }

    fn recorded(aggregate_type: &str, event_type: &str, data: Option<Value>) -> RecordedEvent {
        RecordedEvent {
            position: 7,
            context: "mediator",
            aggregate_type: aggregate_type.into(),
            aggregate_id: "chat".into(),
            sequence: 3,
            event_type: event_type.into(),
            event_version: 1,
            event_id: Uuid::nil(),
            correlation_id: Uuid::nil(),
            causation_id: None,
            actor: None,
            recorded_at: at(0),
            data,
        }
    }

    fn project(event: MediatorEvent) -> Vec<DocOp> {
        let data = serde_json::to_value(&event).ok();
        MediatorProjection
            .project(&recorded(MEDIATOR, &event.event_type(), data))
            .expect("projects")
    }

    #[test]
    fn mediator_broadcast_fills_every_recipients_inbox() {
        let ops = project(MediatorEvent::MessageBroadcasted {
            message_id: "m1".into(),
            sender_id: "a".into(),
            recipients: vec!["b".into(), "c".into()],
            kind: MessageKind::Message,
            message: json!("hi"),
            sent_at: at(1),
        });
        let inboxes: Vec<String> = ops
            .iter()
            .filter_map(|op| match op {
                DocOp::Upsert {
                    collection,
                    id,
                    doc,
                } if collection == INBOX => {
                    assert_eq!(doc["broadcast"], json!(true));
                    assert_eq!(doc["sequence"], json!(3));
                    Some(id.clone())
                }
                _ => None,
            })
            .collect();
        assert_eq!(inboxes, vec!["chat/b/m1", "chat/c/m1"]);
        assert!(ops.contains(&increment("chat", "message_count", 1.0)));
    }

    #[test]
    fn mediator_unregister_drops_the_inbox_and_delete_drops_everything() {
        let ops = project(MediatorEvent::ColleagueUnregistered {
            colleague_id: "b".into(),
            at: at(2),
        });
        assert!(ops.contains(&delete_where(INBOX, "inbox", "chat/b")));
        assert!(ops.contains(&increment("chat", "colleague_count", -1.0)));
        let ops = project(MediatorEvent::MediatorDeleted {
            name: "chat".into(),
            at: at(3),
        });
        assert!(ops.contains(&delete_where(INBOX, "mediator", "chat")));
        assert!(ops.contains(&delete_where(COLLEAGUES, "mediator", "chat")));
    }

    #[test]
    fn mediator_shredded_and_forgotten() {
        let ops = MediatorProjection
            .project(&recorded(MEDIATOR, "mediator_created", None))
            .expect("projects");
        assert_eq!(ops, forget("chat"));
        let ops = MediatorProjection
            .project(&recorded(MEDIATOR, "message_sent", None))
            .expect("projects");
        assert!(ops.is_empty());
        let mut forgotten = recorded(
            SYSTEM_AGGREGATE,
            AGGREGATE_FORGOTTEN,
            Some(json!({ "aggregate_type": MEDIATOR, "aggregate_id": "chat" })),
        );
        forgotten.aggregate_id = "mediator/chat".into();
        let ops = MediatorProjection.project(&forgotten).expect("projects");
        assert_eq!(ops, forget("chat"));
        let bad = recorded(
            MEDIATOR,
            "message_sent",
            Some(json!({ "type": "message_sent" })),
        );
        assert!(MediatorProjection.project(&bad).is_err());
        let registry = recorded(
            super::super::MEDIATOR_REGISTRY,
            "mediator_name_claimed",
            Some(json!({})),
        );
        assert!(MediatorProjection
            .project(&registry)
            .expect("ignored")
            .is_empty());
    }
}
