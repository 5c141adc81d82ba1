//! Support for the schema-fixture test (`kernel/tests/schema_fixtures.rs`): a realistic
//! sample of every (aggregate type, event type, version) this context stores, and how a
//! stored payload replays onto its aggregate.

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::aggregate::{CommandFailure, CommandSource};
use super::handler::{AvailableReason, UnavailableReason};
use super::records::{
    AuditRecorded, HistoryCleared, MetricsReset, NotificationSent, SystemOperationRecorded,
};
use super::{
    AuditEntry, Command, CommandEvent, CommandHandler, CommandType, HandlerEvent, HistoryLog,
    MetricsLog, Notification, SystemOperation, AUDIT, COMMAND, HANDLER, HISTORY, METRICS,
    NOTIFICATION, SYSTEM,
};
use crate::domain::repository::fixtures::StoredSample;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_704_067_200 + secs, 0)
        .single()
        .unwrap_or_default()
}

fn payment_payload() -> Value {
    json!({ "user_id": "user-1", "amount": 12.5, "currency": "USD",
            "payment_method": "card", "gateway": "stripe" })
}

/// One event of every command variant, in an order that makes sense to apply.
pub fn command_samples() -> Vec<CommandEvent> {
    vec![
        CommandEvent::Queued {
            command_id: "cmd-1".into(),
            command_type: CommandType::Payment,
            payload: payment_payload(),
            source: CommandSource::Queue,
            queued_at: at(0),
        },
        CommandEvent::Scheduled {
            command_id: "cmd-2".into(),
            command_type: CommandType::Payment,
            payload: payment_payload(),
            execute_at: at(60),
            scheduled_at: at(0),
        },
        CommandEvent::Executed {
            command_id: "cmd-1".into(),
            command_type: CommandType::Payment,
            payload: payment_payload(),
            source: CommandSource::Queue,
            result: json!({ "aggregate_type": "payment", "aggregate_id": "cmd-1",
                            "status": "completed" }),
            undoable: true,
            undo: Some(json!({ "payment_id": "cmd-1" })),
            latency_us: 1234,
            executed_at: at(1),
        },
        CommandEvent::Failed {
            command_id: "cmd-3".into(),
            command_type: CommandType::Payment,
            payload: payment_payload(),
            source: CommandSource::Sync,
            error: CommandFailure {
                status: 422,
                title: "Unprocessable Entity".into(),
                detail: "user_id: user user-9 does not exist".into(),
                field: Some("user_id".into()),
            },
            latency_us: 321,
            failed_at: at(2),
        },
        CommandEvent::Cancelled {
            command_id: "cmd-2".into(),
            command_type: CommandType::Payment,
            reason: "cancelled before it was due".into(),
            cancelled_at: at(3),
            user_id: Some("user-1".into()),
        },
        CommandEvent::Undone {
            command_id: "cmd-1".into(),
            command_type: CommandType::Payment,
            compensation: json!({ "action": "refund", "aggregate_type": "payment",
                                  "aggregate_id": "cmd-1", "status": "refunded" }),
            undone_at: at(4),
            user_id: Some("user-1".into()),
        },
    ]
}

/// One event of every handler variant.
pub fn handler_samples() -> Vec<HandlerEvent> {
    let name = CommandType::Payment;
    vec![
        HandlerEvent::Registered {
            name,
            description: Some("payments".into()),
            registered_at: at(0),
        },
        HandlerEvent::FailureRecorded {
            name,
            consecutive_failures: 1,
            at: at(1),
        },
        HandlerEvent::Recovered { name, at: at(2) },
        HandlerEvent::Unavailable {
            name,
            reason: UnavailableReason::CircuitOpen,
            opened_at: at(3),
            retry_at: Some(at(33)),
        },
        HandlerEvent::Available {
            name,
            reason: AvailableReason::ProbeSucceeded,
            at: at(34),
        },
        HandlerEvent::Unregistered {
            name,
            unregistered_at: at(40),
        },
    ]
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

pub fn notification_samples() -> Vec<NotificationSent> {
    vec![NotificationSent(object(json!({
        "id": "cmd-4", "notification_id": "cmd-4", "command_id": "cmd-4", "user_id": "user-1",
        "channel": "email", "notification_type": "receipt", "title": "Thanks",
        "message": "Your payment went through", "priority": "normal", "sent_at": at(5),
    })))]
}

pub fn audit_samples() -> Vec<AuditRecorded> {
    vec![AuditRecorded(object(json!({
        "id": "cmd-5", "audit_id": "cmd-5", "command_id": "cmd-5", "entity_type": "user",
        "entity_id": "user-1", "action": "login", "changes": { "last_login": "now" },
        "user_id": "user-1", "ip_address": "192.0.2.1", "user_agent": "curl/8",
        "recorded_at": at(6),
    })))]
}

pub fn system_samples() -> Vec<SystemOperationRecorded> {
    vec![SystemOperationRecorded(object(json!({
        "id": "cmd-6", "operation_id": "cmd-6", "command_id": "cmd-6", "action": "cache_clear",
        "parameters": { "scope": "all" }, "recorded_at": at(7),
    })))]
}

pub fn metrics_samples() -> Vec<MetricsReset> {
    vec![MetricsReset(object(json!({
        "id": "metrics", "command_type": "payment", "reset_at": at(8),
    })))]
}

pub fn history_samples() -> Vec<HistoryCleared> {
    vec![HistoryCleared(object(
        json!({ "id": "history", "cleared_at": at(9) }),
    ))]
}

fn stored<A: Aggregate>(events: Vec<A::Event>) -> impl Iterator<Item = StoredSample> {
    events.into_iter().map(|event| StoredSample {
        aggregate_type: A::TYPE,
        event_type: event.event_type(),
        version: event.event_version(),
        payload: serde_json::to_value(&event).unwrap_or(Value::Null),
    })
}

/// One stored sample of every (aggregate type, event type, version) of this context.
pub fn samples() -> Vec<StoredSample> {
    stored::<Command>(command_samples())
        .chain(stored::<CommandHandler>(handler_samples()))
        .chain(stored::<Notification>(notification_samples()))
        .chain(stored::<AuditEntry>(audit_samples()))
        .chain(stored::<SystemOperation>(system_samples()))
        .chain(stored::<MetricsLog>(metrics_samples()))
        .chain(stored::<HistoryLog>(history_samples()))
        .collect()
}

/// Deserializes a payload and applies it to a fresh aggregate and to one that its first
/// sample was applied to.
fn replay<A>(payload: Value, first: A::Event) -> Result<(), String>
where
    A: Aggregate,
    A::Event: DeserializeOwned + Serialize,
{
    let event: A::Event =
        serde_json::from_value(payload).map_err(|e| format!("does not deserialize: {e}"))?;
    A::default().apply(event.clone());
    let mut created = A::default();
    created.apply(first);
    created.apply(event);
    Ok(())
}

/// Deserializes an (already upcast) stored payload of `aggregate_type` and applies it.
pub fn replay_payload(aggregate_type: &str, payload: Value) -> Result<(), String> {
    fn first<E>(events: Vec<E>) -> Result<E, String> {
        events
            .into_iter()
            .next()
            .ok_or_else(|| "no sample".to_string())
    }
    match aggregate_type {
        COMMAND => replay::<Command>(payload, first(command_samples())?),
        HANDLER => replay::<CommandHandler>(payload, first(handler_samples())?),
        NOTIFICATION => replay::<Notification>(payload, first(notification_samples())?),
        AUDIT => replay::<AuditEntry>(payload, first(audit_samples())?),
        SYSTEM => replay::<SystemOperation>(payload, first(system_samples())?),
        METRICS => replay::<MetricsLog>(payload, first(metrics_samples())?),
        HISTORY => replay::<HistoryLog>(payload, first(history_samples())?),
        other => Err(format!("{other} is not an aggregate type of this context")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn command_samples_cover_every_event_type_and_replay() {
        let all = samples();
        let types: BTreeSet<(&str, String)> = all
            .iter()
            .map(|s| (s.aggregate_type, s.event_type.clone()))
            .collect();
        assert_eq!(types.len(), all.len(), "one sample per event type");
        assert_eq!(all.len(), 6 + 6 + 5);
        for sample in all {
            replay_payload(sample.aggregate_type, sample.payload.clone())
                .unwrap_or_else(|e| panic!("{}: {e}", sample.event_type));
        }
    }
}
