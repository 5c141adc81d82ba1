//! The command read models (seed 004), in the collections of [`read_model`]:
//!
//! - `command_commands`: one document per command (id: the command id) with its status,
//!   payload, outcome and the time of each step; `version` is the sequence of its last event.
//! - `command_history`: one entry per outcome (executed, failed, undone), id
//!   `<command_id>:<sequence>`, all marked `kind: "history"` so that `command.history_cleared`
//!   deletes them in one op.
//! - `command_audit`: one immutable entry per event of the context (id: the event id); the
//!   history clear leaves it alone.
//! - `command_metrics`: one counter document per command type (id: the type, `kind:
//!   "counter"`) with `count`, `failures`, `total_latency_us`, the latency histogram's bucket
//!   counts under `buckets` (`buckets.b<index>`, only buckets that have runs) and
//!   `last_reset_at` (null until a reset). An executed or failed run creates the type's zero
//!   document if it is absent, then increments it; a reset replaces it with a zero document
//!   holding the reset time. So a metrics read costs one document per type, whatever the
//!   number of runs. Readers turn the buckets into a [`read_model::LatencyHistogram`].
//! - `command_handlers`: one document per handler that has events (id: its name); the eight
//!   built-in handlers without one are registered, available and closed.
//!
//! Pure: every event becomes a list of `DocOp`s. Times are stored as fixed-width RFC 3339 so
//! they sort and compare as strings.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::read_model::{
    bucket_field, default_description, latency_bucket, AUDIT, BUCKETS_FIELD, COMMANDS,
    COMMAND_TYPES, HANDLERS, HISTORY, METRICS,
};
use crate::domain::memento::projection::rfc3339;
use crate::domain::projection::{forgotten_aggregate, Projection, ProjectionError};
use crate::envelope::RecordedEvent;
use crate::ports::DocOp;

pub const PROJECTION_NAME: &str = "command";

/// Aggregate type of a command (id: the command id).
const COMMAND: &str = super::COMMAND;
/// Aggregate type of a handler (id: its name, a command type).
pub const HANDLER: &str = "command-handler";
/// Singleton aggregate (id `metrics`) of the metrics resets.
pub const METRICS_AGGREGATE: &str = "command-metrics";
/// Singleton aggregate (id `history`) of the history clears.
pub const HISTORY_AGGREGATE: &str = "command-history";

/// `kind` of every history entry (what a history clear deletes).
pub const HISTORY_KIND: &str = "history";
/// `kind` of a type's counter document in `command_metrics`.
pub const COUNTER_KIND: &str = "counter";

const COLLECTIONS: &[&str] = &[COMMANDS, HISTORY, AUDIT, METRICS, HANDLERS];

#[derive(Debug, Clone, Copy, Default)]
pub struct CommandProjection;

impl Projection for CommandProjection {
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
        if let Some((aggregate_type, aggregate_id)) = forgotten_aggregate(event) {
            return Ok(forget(&aggregate_type, &aggregate_id));
        }
        match event.aggregate_type.as_str() {
            COMMAND => command_ops(event),
            HANDLER => handler_ops(event),
            METRICS_AGGREGATE => metrics_ops(event),
            HISTORY_AGGREGATE => Ok(history_ops(event)),
            _ => Ok(Vec::new()),
        }
    }
}

// ---- Event payloads (extra fields are ignored; `command_id` and `name` repeat the id).

#[derive(Deserialize)]
struct Queued {
    command_type: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    source: Option<String>,
    queued_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Scheduled {
    command_type: String,
    #[serde(default)]
    payload: Value,
    execute_at: DateTime<Utc>,
    scheduled_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Executed {
    command_type: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    source: Option<String>,
    #[serde(default)]
    result: Value,
    #[serde(default)]
    undoable: bool,
    latency_us: f64,
    executed_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Failed {
    command_type: String,
    #[serde(default)]
    payload: Value,
    #[serde(default)]
    source: Option<String>,
    error: Value,
    latency_us: f64,
    failed_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Cancelled {
    command_type: String,
    #[serde(default)]
    reason: Option<String>,
    cancelled_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct Undone {
    command_type: String,
    #[serde(default)]
    compensation: Value,
    undone_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct HandlerRegistered {
    #[serde(default)]
    description: Option<String>,
    registered_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct HandlerUnregistered {
    unregistered_at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct HandlerFailureRecorded {
    consecutive_failures: u64,
    at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct HandlerAt {
    at: DateTime<Utc>,
}

#[derive(Deserialize)]
struct HandlerUnavailable {
    reason: String,
    opened_at: DateTime<Utc>,
    /// None while disabled.
    #[serde(default)]
    retry_at: Option<DateTime<Utc>>,
}

#[derive(Deserialize)]
struct MetricsReset {
    #[serde(default)]
    command_type: Option<String>,
    reset_at: DateTime<Utc>,
}

fn parse<E: DeserializeOwned>(event: &RecordedEvent, data: &Value) -> Result<E, ProjectionError> {
    serde::Deserialize::deserialize(data).map_err(|err| ProjectionError {
        projection: PROJECTION_NAME.to_string(),
        event_type: event.event_type.clone(),
        position: event.position,
        reason: err.to_string(),
    })
}

fn latency_error(event: &RecordedEvent, latency_us: f64) -> ProjectionError {
    ProjectionError {
        projection: PROJECTION_NAME.to_string(),
        event_type: event.event_type.clone(),
        position: event.position,
        reason: format!("latency_us must be a finite number ≥ 0, not {latency_us}"),
    }
}

// ---- Commands.

/// What a command event says, in the shape the documents take.
struct CommandStep {
    status: &'static str,
    /// `None` when the payload was shredded.
    command_type: Option<String>,
    /// Fields of the command document this step sets.
    fields: Map<String, Value>,
    at: DateTime<Utc>,
    /// An outcome (executed, failed, undone) gets a history entry with these fields.
    history: Option<Map<String, Value>>,
    /// Executed and failed runs count in the type's metrics: (latency µs, failed).
    run: Option<(f64, bool)>,
    /// The user the command belongs to (its payload's `user_id`), when the event says.
    user_id: Option<String>,
}

/// The status a command event leads to, from its type alone.
pub fn status_of(event_type: &str) -> Option<&'static str> {
    Some(match event_type {
        "command.queued" => "queued",
        "command.scheduled" => "scheduled",
        "command.executed" => "executed",
        "command.failed" => "failed",
        "command.cancelled" => "cancelled",
        "command.undone" => "undone",
        _ => return None,
    })
}

fn fields(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

fn command_ops(event: &RecordedEvent) -> Result<Vec<DocOp>, ProjectionError> {
    let Some(status) = status_of(&event.event_type) else {
        // An event type this read side does not know yet: audited, nothing else.
        return Ok(vec![audit_entry(
            event,
            None,
            None,
            None,
            event.recorded_at,
        )]);
    };
    let step = match &event.data {
        None => shredded_step(event, status),
        Some(data) => parsed_step(event, status, data)?,
    };
    let mut ops = vec![command_doc(event, &step)];
    if let Some(history) = &step.history {
        ops.push(history_entry(event, &step, history.clone()));
    }
    if let (Some((latency_us, failed)), Some(command_type)) = (step.run, &step.command_type) {
        ops.extend(count_run(command_type, latency_us, failed));
    }
    let mut audit = audit_entry(
        event,
        Some(&event.aggregate_id),
        step.command_type.as_deref(),
        Some(step.status),
        step.at,
    );
    if let DocOp::Upsert { doc, .. } = &mut audit {
        doc["user_id"] = json!(step.user_id);
    }
    ops.push(audit);
    Ok(ops)
}

/// The step of an event whose payload was crypto-shredded: only the status is known.
fn shredded_step(event: &RecordedEvent, status: &'static str) -> CommandStep {
    let outcome = matches!(status, "executed" | "failed" | "undone");
    CommandStep {
        status,
        command_type: None,
        fields: fields(json!({ "shredded": true })),
        at: event.recorded_at,
        history: outcome.then(Map::new),
        run: None,
        user_id: None,
    }
}

/// A payload's `user_id`: the user a command belongs to.
fn owner_of(payload: &Value) -> Option<String> {
    payload
        .get("user_id")
        .and_then(Value::as_str)
        .map(str::to_string)
}

/// A field of an event's data that names the command's user (`user_id` of cancelled and
/// undone events, absent in older ones).
#[derive(Deserialize)]
struct Owner {
    #[serde(default)]
    user_id: Option<String>,
}

fn parsed_step(
    event: &RecordedEvent,
    status: &'static str,
    data: &Value,
) -> Result<CommandStep, ProjectionError> {
    let step = match status {
        "queued" => {
            let e: Queued = parse(event, data)?;
            CommandStep {
                status,
                fields: fields(json!({
                    "command_type": e.command_type, "payload": e.payload,
                    "source": e.source, "queued_at": rfc3339(e.queued_at),
                })),
                user_id: owner_of(&e.payload),
                command_type: Some(e.command_type),
                at: e.queued_at,
                history: None,
                run: None,
            }
        }
        "scheduled" => {
            let e: Scheduled = parse(event, data)?;
            CommandStep {
                status,
                fields: fields(json!({
                    "command_type": e.command_type, "payload": e.payload, "source": "schedule",
                    "execute_at": rfc3339(e.execute_at), "scheduled_at": rfc3339(e.scheduled_at),
                })),
                user_id: owner_of(&e.payload),
                command_type: Some(e.command_type),
                at: e.scheduled_at,
                history: None,
                run: None,
            }
        }
        "executed" => {
            let e: Executed = parse(event, data)?;
            if !e.latency_us.is_finite() || e.latency_us < 0.0 {
                return Err(latency_error(event, e.latency_us));
            }
            let latency_ms = e.latency_us / 1000.0;
            CommandStep {
                status,
                fields: fields(json!({
                    "command_type": e.command_type, "payload": e.payload, "source": e.source,
                    "result": e.result, "error": null, "undoable": e.undoable,
                    "latency_ms": latency_ms, "executed_at": rfc3339(e.executed_at),
                })),
                history: Some(fields(json!({
                    "source": e.source, "result": e.result, "undoable": e.undoable,
                    "latency_ms": latency_ms,
                }))),
                user_id: owner_of(&e.payload),
                command_type: Some(e.command_type),
                at: e.executed_at,
                run: Some((e.latency_us, false)),
            }
        }
        "failed" => {
            let e: Failed = parse(event, data)?;
            if !e.latency_us.is_finite() || e.latency_us < 0.0 {
                return Err(latency_error(event, e.latency_us));
            }
            let latency_ms = e.latency_us / 1000.0;
            CommandStep {
                status,
                fields: fields(json!({
                    "command_type": e.command_type, "payload": e.payload, "source": e.source,
                    "result": null, "error": e.error, "undoable": false,
                    "latency_ms": latency_ms, "failed_at": rfc3339(e.failed_at),
                })),
                history: Some(fields(json!({
                    "source": e.source, "error": e.error, "latency_ms": latency_ms,
                }))),
                user_id: owner_of(&e.payload),
                command_type: Some(e.command_type),
                at: e.failed_at,
                run: Some((e.latency_us, true)),
            }
        }
        "cancelled" => {
            let e: Cancelled = parse(event, data)?;
            let owner: Owner = parse(event, data)?;
            CommandStep {
                user_id: owner.user_id,
                status,
                fields: fields(json!({
                    "command_type": e.command_type, "cancel_reason": e.reason,
                    "cancelled_at": rfc3339(e.cancelled_at),
                })),
                command_type: Some(e.command_type),
                at: e.cancelled_at,
                history: None,
                run: None,
            }
        }
        _ => {
            let e: Undone = parse(event, data)?;
            let owner: Owner = parse(event, data)?;
            CommandStep {
                user_id: owner.user_id,
                status,
                fields: fields(json!({
                    "command_type": e.command_type, "compensation": e.compensation,
                    "undoable": false, "undone_at": rfc3339(e.undone_at),
                })),
                history: Some(fields(json!({ "compensation": e.compensation }))),
                command_type: Some(e.command_type),
                at: e.undone_at,
                run: None,
            }
        }
    };
    Ok(step)
}

/// Every field of a command document, empty: the first event fills in its own.
fn empty_command(id: &str) -> Map<String, Value> {
    fields(json!({
        "id": id, "command_type": null, "status": null, "payload": null, "source": null,
        "result": null, "error": null, "undoable": false, "latency_ms": null,
        "compensation": null, "cancel_reason": null, "actor": null,
        "queued_at": null, "scheduled_at": null, "execute_at": null, "executed_at": null,
        "failed_at": null, "undone_at": null, "cancelled_at": null,
    }))
}

/// The command's first event creates its document; later ones set their fields.
fn command_doc(event: &RecordedEvent, step: &CommandStep) -> DocOp {
    let at = rfc3339(step.at);
    let mut changes = step.fields.clone();
    changes.insert("status".into(), json!(step.status));
    changes.insert("version".into(), json!(event.sequence));
    changes.insert("updated_at".into(), json!(at));
    if event.sequence <= 1 {
        let mut doc = empty_command(&event.aggregate_id);
        doc.extend(changes);
        doc.insert("actor".into(), json!(event.actor));
        doc.insert("created_at".into(), json!(at));
        DocOp::Upsert {
            collection: COMMANDS.into(),
            id: event.aggregate_id.clone(),
            doc: Value::Object(doc),
        }
    } else {
        DocOp::Merge {
            collection: COMMANDS.into(),
            id: event.aggregate_id.clone(),
            patch: Value::Object(changes),
        }
    }
}

/// The id of an outcome's history entry.
pub fn outcome_id(command_id: &str, sequence: u64) -> String {
    format!("{command_id}:{sequence}")
}

fn history_entry(event: &RecordedEvent, step: &CommandStep, details: Map<String, Value>) -> DocOp {
    let mut entry = fields(json!({
        "id": outcome_id(&event.aggregate_id, event.sequence),
        "kind": HISTORY_KIND,
        "command_id": event.aggregate_id,
        "command_type": step.command_type,
        "outcome": step.status,
        "source": null, "result": null, "error": null, "compensation": null,
        "undoable": false, "latency_ms": null,
    }));
    entry.extend(details);
    entry.insert("user_id".into(), json!(step.user_id));
    entry.insert("actor".into(), json!(event.actor));
    entry.insert("at".into(), json!(rfc3339(step.at)));
    entry.insert("position".into(), json!(event.position));
    DocOp::Upsert {
        collection: HISTORY.into(),
        id: outcome_id(&event.aggregate_id, event.sequence),
        doc: Value::Object(entry),
    }
}

/// A type's counter document with nothing counted; `last_reset_at` is null or RFC 3339.
pub fn zero_counters(command_type: &str, last_reset_at: Option<&str>) -> Value {
    json!({
        "id": command_type,
        "kind": COUNTER_KIND,
        "command_type": command_type,
        "count": 0,
        "failures": 0,
        "total_latency_us": 0,
        BUCKETS_FIELD: {},
        "last_reset_at": last_reset_at,
    })
}

/// One executed or failed run: the type's counters, created at zero if absent, go up.
fn count_run(command_type: &str, latency_us: f64, failed: bool) -> Vec<DocOp> {
    let increment = |field: String, by: f64| DocOp::Increment {
        collection: METRICS.into(),
        id: command_type.to_string(),
        field,
        by,
    };
    let mut ops = vec![
        DocOp::InsertIfAbsent {
            collection: METRICS.into(),
            id: command_type.to_string(),
            doc: zero_counters(command_type, None),
        },
        increment("count".into(), 1.0),
    ];
    if failed {
        ops.push(increment("failures".into(), 1.0));
    }
    ops.push(increment("total_latency_us".into(), latency_us));
    ops.push(increment(bucket_field(latency_bucket(latency_us)), 1.0));
    ops
}

/// The audit entry of any event of the context.
fn audit_entry(
    event: &RecordedEvent,
    command_id: Option<&str>,
    command_type: Option<&str>,
    status: Option<&str>,
    at: DateTime<Utc>,
) -> DocOp {
    let id = event.event_id.to_string();
    let handler = (event.aggregate_type == HANDLER).then_some(event.aggregate_id.as_str());
    DocOp::Upsert {
        collection: AUDIT.into(),
        id: id.clone(),
        doc: json!({
            "id": id,
            "aggregate_type": event.aggregate_type,
            "command_id": command_id,
            "command_type": command_type,
            "handler": handler,
            "event": event.event_type,
            "status": status,
            "actor": event.actor,
            "user_id": null,
            "at": rfc3339(at),
            "position": event.position,
        }),
    }
}

// ---- Handlers.

/// A built-in handler's state before any event: registered, available, closed.
fn default_handler(name: &str) -> Map<String, Value> {
    fields(json!({
        "id": name, "name": name, "description": default_description(name),
        "registered": true, "available": true, "circuit": "closed",
        "consecutive_failures": 0, "opened_at": null, "retry_at": null,
        "unavailable_reason": null,
    }))
}

fn handler_ops(event: &RecordedEvent) -> Result<Vec<DocOp>, ProjectionError> {
    let name = event.aggregate_id.as_str();
    let audit = |at| audit_entry(event, None, Some(name), None, at);
    let Some(data) = &event.data else {
        return Ok(vec![audit(event.recorded_at)]);
    };
    let (changes, at) = match event.event_type.as_str() {
        "handler.registered" => {
            let e: HandlerRegistered = parse(event, data)?;
            let mut changes = fields(json!({
                "registered": true, "available": true, "circuit": "closed",
                "consecutive_failures": 0, "opened_at": null, "retry_at": null,
                "unavailable_reason": null,
            }));
            if let Some(description) = e.description {
                changes.insert("description".into(), json!(description));
            }
            (changes, e.registered_at)
        }
        "handler.unregistered" => {
            let e: HandlerUnregistered = parse(event, data)?;
            let changes = json!({
                "registered": false, "available": false, "unavailable_reason": "unregistered",
            });
            (fields(changes), e.unregistered_at)
        }
        "handler.failure_recorded" => {
            let e: HandlerFailureRecorded = parse(event, data)?;
            let changes = json!({ "consecutive_failures": e.consecutive_failures });
            (fields(changes), e.at)
        }
        "handler.recovered" => {
            let e: HandlerAt = parse(event, data)?;
            let changes = json!({
                "consecutive_failures": 0, "circuit": "closed", "opened_at": null,
                "retry_at": null,
            });
            (fields(changes), e.at)
        }
        "handler.unavailable" => {
            let e: HandlerUnavailable = parse(event, data)?;
            let mut changes = fields(json!({
                "available": false, "unavailable_reason": e.reason,
            }));
            if e.reason == "circuit_open" {
                changes.insert("circuit".into(), json!("open"));
                changes.insert("opened_at".into(), json!(rfc3339(e.opened_at)));
                changes.insert("retry_at".into(), json!(e.retry_at.map(rfc3339)));
            }
            (changes, e.opened_at)
        }
        "handler.available" => {
            // A handler that is available again has a closed circuit, counting anew.
            let e: HandlerAt = parse(event, data)?;
            let changes = json!({
                "available": true, "unavailable_reason": null, "circuit": "closed",
                "consecutive_failures": 0, "opened_at": null, "retry_at": null,
            });
            (fields(changes), e.at)
        }
        _ => return Ok(vec![audit(event.recorded_at)]),
    };
    let mut changes = changes;
    changes.insert("version".into(), json!(event.sequence));
    changes.insert("updated_at".into(), json!(rfc3339(at)));
    let doc = if event.sequence <= 1 {
        let mut doc = default_handler(name);
        doc.extend(changes);
        DocOp::Upsert {
            collection: HANDLERS.into(),
            id: name.to_string(),
            doc: Value::Object(doc),
        }
    } else {
        DocOp::Merge {
            collection: HANDLERS.into(),
            id: name.to_string(),
            patch: Value::Object(changes),
        }
    };
    Ok(vec![doc, audit(at)])
}

// ---- Metrics resets and history clears.

fn metrics_ops(event: &RecordedEvent) -> Result<Vec<DocOp>, ProjectionError> {
    let shredded_or_other = event.data.is_none() || event.event_type != "command.metrics_reset";
    let Some(data) = event.data.as_ref().filter(|_| !shredded_or_other) else {
        return Ok(vec![audit_entry(
            event,
            None,
            None,
            None,
            event.recorded_at,
        )]);
    };
    let e: MetricsReset = parse(event, data)?;
    let reset_at = rfc3339(e.reset_at);
    // Upserts, not deletes: the counters are shared by every command of the type, and an
    // upsert stays idempotent on redelivery where a delete would not (see `adapters::mongo`).
    let reset = |command_type: &str| DocOp::Upsert {
        collection: METRICS.into(),
        id: command_type.to_string(),
        doc: zero_counters(command_type, Some(&reset_at)),
    };
    let mut ops: Vec<DocOp> = match &e.command_type {
        Some(command_type) => vec![reset(command_type)],
        None => COMMAND_TYPES.iter().map(|t| reset(t)).collect(),
    };
    ops.push(audit_entry(
        event,
        None,
        e.command_type.as_deref(),
        None,
        e.reset_at,
    ));
    Ok(ops)
}

/// A history clear needs no payload: even a shredded one clears.
fn history_ops(event: &RecordedEvent) -> Vec<DocOp> {
    if event.event_type != "command.history_cleared" {
        return vec![audit_entry(event, None, None, None, event.recorded_at)];
    }
    let at = event
        .data
        .as_ref()
        .and_then(|data| data.get("cleared_at"))
        .and_then(|at| serde_json::from_value::<DateTime<Utc>>(at.clone()).ok())
        .unwrap_or(event.recorded_at);
    vec![
        DocOp::DeleteWhere {
            collection: HISTORY.into(),
            field: "kind".into(),
            value: json!(HISTORY_KIND),
        },
        audit_entry(event, None, None, None, at),
    ]
}

/// A forgotten command leaves a tombstone, and its history entries (they hold its outcome)
/// go; audit entries and the metrics counters hold nothing personal and stay.
fn forget(aggregate_type: &str, aggregate_id: &str) -> Vec<DocOp> {
    if aggregate_type != COMMAND {
        return Vec::new();
    }
    vec![
        DocOp::Upsert {
            collection: COMMANDS.into(),
            id: aggregate_id.to_string(),
            doc: json!({ "id": aggregate_id, "tombstone": true }),
        },
        DocOp::DeleteWhere {
            collection: HISTORY.into(),
            field: "command_id".into(),
            value: json!(aggregate_id),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::command::read_model::LatencyHistogram;
    use crate::domain::projection::{AGGREGATE_FORGOTTEN, SYSTEM_AGGREGATE};
    use std::collections::BTreeMap;
    use uuid::Uuid;

    const T0: &str = "2024-01-01T00:00:00Z";
    const T1: &str = "2024-01-01T00:00:01Z";
    const AT0: &str = "2024-01-01T00:00:00.000000Z";
    const AT1: &str = "2024-01-01T00:00:01.000000Z";

    fn recorded(
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        event_type: &str,
        data: Option<Value>,
    ) -> RecordedEvent {
        RecordedEvent {
            position: 100 + sequence,
            context: "command",
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            sequence,
            event_type: event_type.to_string(),
            event_version: 1,
            event_id: Uuid::from_u128(u128::from(sequence)),
            correlation_id: Uuid::nil(),
            causation_id: None,
            actor: Some("alice".into()),
            recorded_at: "2024-01-02T00:00:00Z".parse().expect("time"),
            data,
        }
    }

    fn project(e: &RecordedEvent) -> Vec<DocOp> {
        CommandProjection.project(e).expect("project")
    }

    fn op_in<'a>(ops: &'a [DocOp], collection: &str) -> Vec<&'a DocOp> {
        ops.iter()
            .filter(|op| match op {
                DocOp::Upsert { collection: c, .. }
                | DocOp::InsertIfAbsent { collection: c, .. }
                | DocOp::Merge { collection: c, .. }
                | DocOp::Increment { collection: c, .. }
                | DocOp::Delete { collection: c, .. }
                | DocOp::DeleteWhere { collection: c, .. }
                | DocOp::TombstoneWhere { collection: c, .. } => c == collection,
            })
            .collect()
    }

    fn only<'a>(ops: &'a [DocOp], collection: &str) -> &'a DocOp {
        let found = op_in(ops, collection);
        assert_eq!(found.len(), 1, "{collection}: {ops:?}");
        found[0]
    }

    fn upserted(op: &DocOp) -> &Value {
        match op {
            DocOp::Upsert { doc, .. } => doc,
            other => panic!("not an upsert: {other:?}"),
        }
    }

    fn merged(op: &DocOp) -> &Value {
        match op {
            DocOp::Merge { patch, .. } => patch,
            other => panic!("not a merge: {other:?}"),
        }
    }

    fn queued(id: &str) -> RecordedEvent {
        recorded(
            COMMAND,
            id,
            1,
            "command.queued",
            Some(json!({
                "command_id": id, "command_type": "payment", "payload": {"amount": 5},
                "source": "queue", "queued_at": T0, "extra": "ignored",
            })),
        )
    }

    fn executed(id: &str, sequence: u64, latency_us: f64) -> RecordedEvent {
        recorded(
            COMMAND,
            id,
            sequence,
            "command.executed",
            Some(json!({
                "command_id": id, "command_type": "payment", "payload": {"amount": 5},
                "source": "queue", "result": {"ok": true}, "undoable": true,
                "latency_us": latency_us, "executed_at": T1,
            })),
        )
    }

    #[test]
    fn command_projection_identity() {
        let p = CommandProjection;
        assert_eq!(p.name(), "command");
        assert_eq!(
            p.collections(),
            &[
                "command_commands",
                "command_history",
                "command_audit",
                "command_metrics",
                "command_handlers"
            ]
        );
        assert!(p.handles("command"));
        assert!(!p.handles("caretaker"));
    }

    #[test]
    fn queued_creates_the_command_and_an_audit_entry() {
        let ops = project(&queued("c1"));
        assert_eq!(ops.len(), 2, "{ops:?}");
        let doc = upserted(only(&ops, COMMANDS));
        assert_eq!(doc["id"], "c1");
        assert_eq!(doc["status"], "queued");
        assert_eq!(doc["command_type"], "payment");
        assert_eq!(doc["payload"], json!({"amount": 5}));
        assert_eq!(doc["source"], "queue");
        assert_eq!(doc["queued_at"], AT0);
        assert_eq!(doc["created_at"], AT0);
        assert_eq!(doc["updated_at"], AT0);
        assert_eq!(doc["actor"], "alice");
        assert_eq!(doc["version"], 1);
        assert_eq!(doc["executed_at"], Value::Null);
        assert!(doc.get("extra").is_none());
        let audit = upserted(only(&ops, AUDIT));
        assert_eq!(
            audit,
            &json!({
                "id": Uuid::from_u128(1).to_string(), "aggregate_type": "command",
                "command_id": "c1", "command_type": "payment", "handler": null,
                "event": "command.queued", "status": "queued", "actor": "alice",
                "user_id": null, "at": AT0, "position": 101,
            })
        );
    }

    #[test]
    fn executed_sets_the_outcome_history_and_counts_the_run() {
        let ops = project(&executed("c1", 2, 1500.0));
        assert_eq!(ops.len(), 7, "{ops:?}");
        let patch = merged(only(&ops, COMMANDS));
        assert_eq!(patch["status"], "executed");
        assert_eq!(patch["result"], json!({"ok": true}));
        assert_eq!(patch["undoable"], true);
        assert_eq!(patch["latency_ms"], 1.5);
        assert_eq!(patch["executed_at"], AT1);
        assert_eq!(patch["version"], 2);
        assert_eq!(patch["updated_at"], AT1);
        assert!(patch.get("created_at").is_none());
        let history = upserted(only(&ops, HISTORY));
        assert_eq!(history["id"], "c1:2");
        assert_eq!(history["kind"], "history");
        assert_eq!(history["outcome"], "executed");
        assert_eq!(history["command_type"], "payment");
        assert_eq!(history["latency_ms"], 1.5);
        assert_eq!(history["position"], 102);
        assert_eq!(history["at"], AT1);
        let increment = |field: &str, by: f64| DocOp::Increment {
            collection: METRICS.into(),
            id: "payment".into(),
            field: field.into(),
            by,
        };
        assert_eq!(
            op_in(&ops, METRICS),
            vec![
                &DocOp::InsertIfAbsent {
                    collection: METRICS.into(),
                    id: "payment".into(),
                    doc: json!({
                        "id": "payment", "kind": "counter", "command_type": "payment",
                        "count": 0, "failures": 0, "total_latency_us": 0, "buckets": {},
                        "last_reset_at": null,
                    }),
                },
                &increment("count", 1.0),
                &increment("total_latency_us", 1500.0),
                &increment(&format!("buckets.b{}", latency_bucket(1500.0)), 1.0),
            ]
        );
        // A synchronous run is the command's first event: it creates the document.
        let ops = project(&executed("c2", 1, 10.0));
        let doc = upserted(only(&ops, COMMANDS));
        assert_eq!(doc["status"], "executed");
        assert_eq!(doc["created_at"], AT1);
        assert_eq!(doc["queued_at"], Value::Null);
    }

    #[test]
    fn failed_scheduled_cancelled_and_undone() {
        let failed = recorded(
            COMMAND,
            "c1",
            1,
            "command.failed",
            Some(json!({
                "command_id": "c1", "command_type": "refund", "payload": {}, "source": "sync",
                "error": {"status": 422, "title": "Invalid", "detail": "no", "field": "amount"},
                "latency_us": 20, "failed_at": T0,
            })),
        );
        let ops = project(&failed);
        let doc = upserted(only(&ops, COMMANDS));
        assert_eq!(doc["status"], "failed");
        assert_eq!(doc["error"]["field"], "amount");
        assert_eq!(doc["failed_at"], AT0);
        let history = upserted(only(&ops, HISTORY));
        assert_eq!(history["outcome"], "failed");
        assert_eq!(history["error"]["status"], 422);
        let metrics = op_in(&ops, METRICS);
        assert!(
            matches!(metrics[0], DocOp::InsertIfAbsent { id, .. } if id == "refund"),
            "{metrics:?}"
        );
        assert!(metrics.contains(&&DocOp::Increment {
            collection: METRICS.into(),
            id: "refund".into(),
            field: "failures".into(),
            by: 1.0,
        }));
        assert_eq!(metrics.len(), 5, "count, failures, latency and bucket");

        let scheduled = recorded(
            COMMAND,
            "s1",
            1,
            "command.scheduled",
            Some(json!({
                "command_id": "s1", "command_type": "system", "payload": {"action": "x"},
                "execute_at": "2024-01-01T01:00:00+01:00", "scheduled_at": T0,
            })),
        );
        let ops = project(&scheduled);
        assert_eq!(ops.len(), 2);
        let doc = upserted(only(&ops, COMMANDS));
        assert_eq!(doc["status"], "scheduled");
        // Times are normalized to UTC, fixed width.
        assert_eq!(doc["execute_at"], AT0);
        assert_eq!(doc["scheduled_at"], AT0);

        let cancelled = recorded(
            COMMAND,
            "s1",
            2,
            "command.cancelled",
            Some(
                json!({"command_id": "s1", "command_type": "system", "reason": "no longer needed", "cancelled_at": T1}),
            ),
        );
        let ops = project(&cancelled);
        assert_eq!(ops.len(), 2);
        let patch = merged(only(&ops, COMMANDS));
        assert_eq!(patch["status"], "cancelled");
        assert_eq!(patch["cancel_reason"], "no longer needed");
        assert_eq!(patch["cancelled_at"], AT1);
        assert_eq!(upserted(only(&ops, AUDIT))["status"], "cancelled");

        let undone = recorded(
            COMMAND,
            "c9",
            2,
            "command.undone",
            Some(
                json!({"command_id": "c9", "command_type": "inventory", "compensation": {"released": 3}, "undone_at": T1}),
            ),
        );
        let ops = project(&undone);
        assert_eq!(ops.len(), 3);
        let patch = merged(only(&ops, COMMANDS));
        assert_eq!(patch["status"], "undone");
        assert_eq!(patch["undoable"], false);
        assert_eq!(patch["compensation"], json!({"released": 3}));
        let history = upserted(only(&ops, HISTORY));
        assert_eq!(history["outcome"], "undone");
        assert_eq!(history["compensation"], json!({"released": 3}));
        assert_eq!(history["user_id"], Value::Null);
        assert!(op_in(&ops, METRICS).is_empty());
    }

    #[test]
    fn history_and_audit_entries_name_the_commands_user() {
        let payload = json!({"user_id": "ann", "amount": 5});
        let executed = recorded(
            COMMAND,
            "c1",
            1,
            "command.executed",
            Some(
                json!({"command_type": "payment", "payload": payload, "source": "sync",
                        "result": {}, "undoable": true, "latency_us": 10, "executed_at": T0}),
            ),
        );
        let ops = project(&executed);
        assert_eq!(upserted(only(&ops, HISTORY))["user_id"], "ann");
        assert_eq!(upserted(only(&ops, AUDIT))["user_id"], "ann");
        assert_eq!(upserted(only(&ops, COMMANDS))["payload"]["user_id"], "ann");
        // Later events repeat the user; older ones without it stay unattributed.
        let undone = |data: Value| recorded(COMMAND, "c1", 2, "command.undone", Some(data));
        let ops = project(&undone(
            json!({"command_type": "payment", "compensation": {},
                                          "undone_at": T1, "user_id": "ann"}),
        ));
        assert_eq!(upserted(only(&ops, HISTORY))["user_id"], "ann");
        assert_eq!(upserted(only(&ops, AUDIT))["user_id"], "ann");
        let ops = project(&undone(
            json!({"command_type": "payment", "compensation": {},
                                          "undone_at": T1}),
        ));
        assert_eq!(upserted(only(&ops, AUDIT))["user_id"], Value::Null);
        let cancelled = recorded(
            COMMAND,
            "c2",
            2,
            "command.cancelled",
            Some(
                json!({"command_type": "payment", "reason": "r", "cancelled_at": T1,
                        "user_id": "ann"}),
            ),
        );
        assert_eq!(
            upserted(only(&project(&cancelled), AUDIT))["user_id"],
            "ann"
        );
    }

    #[test]
    fn shredded_command_events_keep_status_without_data() {
        let ops = project(&recorded(COMMAND, "c1", 1, "command.queued", None));
        let doc = upserted(only(&ops, COMMANDS));
        assert_eq!(doc["status"], "queued");
        assert_eq!(doc["shredded"], true);
        assert_eq!(doc["payload"], Value::Null);
        assert_eq!(doc["command_type"], Value::Null);
        let ops = project(&recorded(COMMAND, "c1", 2, "command.executed", None));
        assert_eq!(merged(only(&ops, COMMANDS))["status"], "executed");
        assert_eq!(upserted(only(&ops, HISTORY))["outcome"], "executed");
        assert!(
            op_in(&ops, METRICS).is_empty(),
            "no type or latency to count"
        );
        let audit = upserted(only(&ops, AUDIT));
        assert_eq!(audit["at"], "2024-01-02T00:00:00.000000Z");
        assert_eq!(audit["command_type"], Value::Null);
    }

    #[test]
    fn bad_payloads_are_errors_and_unknown_events_are_only_audited() {
        for (event_type, data) in [
            ("command.queued", json!({"command_type": "payment"})),
            (
                "command.executed",
                json!({"command_type": "payment", "latency_us": "fast", "executed_at": T0}),
            ),
            (
                "command.executed",
                json!({"command_type": "payment", "latency_us": -1, "executed_at": T0}),
            ),
            (
                "command.failed",
                json!({"command_type": "payment", "latency_us": 1, "failed_at": "yesterday", "error": {}}),
            ),
        ] {
            let err = CommandProjection
                .project(&recorded(COMMAND, "c1", 1, event_type, Some(data)))
                .expect_err(event_type);
            assert_eq!(err.projection, "command");
            assert_eq!(err.event_type, event_type);
            assert_eq!(err.position, 101);
        }
        let err = CommandProjection
            .project(&recorded(
                HANDLER,
                "payment",
                1,
                "handler.failure_recorded",
                Some(json!({"consecutive_failures": -2, "at": T0})),
            ))
            .expect_err("negative count");
        assert_eq!(err.event_type, "handler.failure_recorded");
        let ops = project(&recorded(
            COMMAND,
            "c1",
            3,
            "command.dispatched",
            Some(json!({})),
        ));
        assert_eq!(ops.len(), 1);
        assert_eq!(upserted(only(&ops, AUDIT))["event"], "command.dispatched");
        assert!(project(&recorded(
            "caretaker",
            "x",
            1,
            "caretaker_created",
            Some(json!({}))
        ))
        .is_empty());
    }

    fn handler(sequence: u64, event_type: &str, data: Value) -> RecordedEvent {
        recorded(HANDLER, "payment", sequence, event_type, Some(data))
    }

    #[test]
    fn handler_transitions() {
        // A first event starts from the built-in defaults.
        let ops = project(&handler(
            1,
            "handler.failure_recorded",
            json!({"name": "payment", "consecutive_failures": 4, "at": T0}),
        ));
        assert_eq!(ops.len(), 2);
        let doc = upserted(only(&ops, HANDLERS));
        assert_eq!(doc["name"], "payment");
        assert_eq!(doc["registered"], true);
        assert_eq!(doc["available"], true);
        assert_eq!(doc["circuit"], "closed");
        assert_eq!(doc["consecutive_failures"], 4);
        assert_eq!(
            doc["description"],
            default_description("payment").expect("built in")
        );
        let audit = upserted(only(&ops, AUDIT));
        assert_eq!(audit["handler"], "payment");
        assert_eq!(audit["command_type"], "payment");
        assert_eq!(audit["command_id"], Value::Null);

        let ops = project(&handler(
            2,
            "handler.unavailable",
            json!({"name": "payment", "reason": "circuit_open", "opened_at": T0, "retry_at": T1}),
        ));
        let patch = merged(only(&ops, HANDLERS));
        assert_eq!(patch["available"], false);
        assert_eq!(patch["circuit"], "open");
        assert_eq!(patch["opened_at"], AT0);
        assert_eq!(patch["retry_at"], AT1);
        assert_eq!(patch["unavailable_reason"], "circuit_open");
        assert_eq!(patch["version"], 2);

        let ops = project(&handler(
            3,
            "handler.recovered",
            json!({"name": "payment", "at": T1}),
        ));
        let patch = merged(only(&ops, HANDLERS));
        assert_eq!(patch["consecutive_failures"], 0);
        assert_eq!(patch["circuit"], "closed");
        assert_eq!(patch["retry_at"], Value::Null);

        let ops = project(&handler(
            4,
            "handler.available",
            json!({"name": "payment", "reason": "circuit_closed", "at": T1}),
        ));
        let patch = merged(only(&ops, HANDLERS));
        assert_eq!(patch["available"], true);
        assert_eq!(patch["unavailable_reason"], Value::Null);

        // Disabling keeps the circuit as it is.
        let ops = project(&handler(
            5,
            "handler.unavailable",
            json!({"name": "payment", "reason": "disabled", "opened_at": T0, "retry_at": null}),
        ));
        let patch = merged(only(&ops, HANDLERS));
        assert_eq!(patch["available"], false);
        assert!(patch.get("circuit").is_none());

        let ops = project(&handler(
            6,
            "handler.unregistered",
            json!({"name": "payment", "unregistered_at": T1}),
        ));
        let patch = merged(only(&ops, HANDLERS));
        assert_eq!(patch["registered"], false);
        assert_eq!(patch["available"], false);

        let ops = project(&handler(
            7,
            "handler.registered",
            json!({"name": "payment", "description": "Stripe", "registered_at": T1}),
        ));
        let patch = merged(only(&ops, HANDLERS));
        assert_eq!(patch["registered"], true);
        assert_eq!(patch["available"], true);
        assert_eq!(patch["description"], "Stripe");
        assert_eq!(patch["updated_at"], AT1);

        // Shredded handler events are audited only.
        let ops = project(&recorded(HANDLER, "payment", 8, "handler.recovered", None));
        assert_eq!(ops.len(), 1);
        assert!(op_in(&ops, AUDIT).len() == 1);
    }

    #[test]
    fn metrics_reset_of_one_type_and_of_all() {
        let ops = project(&recorded(
            METRICS_AGGREGATE,
            "metrics",
            1,
            "command.metrics_reset",
            Some(json!({"command_type": "order", "reset_at": T1})),
        ));
        assert_eq!(
            op_in(&ops, METRICS),
            vec![&DocOp::Upsert {
                collection: METRICS.into(),
                id: "order".into(),
                doc: json!({
                    "id": "order", "kind": "counter", "command_type": "order", "count": 0,
                    "failures": 0, "total_latency_us": 0, "buckets": {}, "last_reset_at": AT1,
                }),
            }]
        );
        assert_eq!(upserted(only(&ops, AUDIT))["command_type"], "order");

        let ops = project(&recorded(
            METRICS_AGGREGATE,
            "metrics",
            2,
            "command.metrics_reset",
            Some(json!({"command_type": null, "reset_at": T1})),
        ));
        let metrics = op_in(&ops, METRICS);
        assert_eq!(metrics.len(), 8);
        for (op, command_type) in metrics.iter().zip(COMMAND_TYPES) {
            assert_eq!(upserted(op), &zero_counters(command_type, Some(AT1)));
        }
        assert!(CommandProjection
            .project(&recorded(
                METRICS_AGGREGATE,
                "metrics",
                3,
                "command.metrics_reset",
                Some(json!({"reset_at": 5}))
            ))
            .is_err());
        // A shredded reset is audited only.
        let ops = project(&recorded(
            METRICS_AGGREGATE,
            "metrics",
            4,
            "command.metrics_reset",
            None,
        ));
        assert!(op_in(&ops, METRICS).is_empty(), "{ops:?}");
    }

    /// Applies ops the way the read stores do (`InsertIfAbsent` only creates, `Increment`
    /// adds at a dotted path of an existing document): the counters a reader would see.
    fn counters_after(events: &[RecordedEvent]) -> BTreeMap<String, Value> {
        let mut docs: BTreeMap<String, Value> = BTreeMap::new();
        for op in events.iter().flat_map(project) {
            match op {
                DocOp::InsertIfAbsent {
                    collection,
                    id,
                    doc,
                } if collection == METRICS => {
                    docs.entry(id).or_insert(doc);
                }
                DocOp::Upsert {
                    collection,
                    id,
                    doc,
                } if collection == METRICS => {
                    docs.insert(id, doc);
                }
                DocOp::Increment {
                    collection,
                    id,
                    field,
                    by,
                } if collection == METRICS => {
                    let Some(mut at) = docs.get_mut(&id) else {
                        continue;
                    };
                    for key in field.split('.') {
                        at = at
                            .as_object_mut()
                            .expect("object")
                            .entry(key)
                            .or_insert(json!(0));
                    }
                    *at = json!(at.as_f64().expect("number") + by);
                }
                other => assert!(
                    op_in(std::slice::from_ref(&other), METRICS).is_empty(),
                    "{other:?}"
                ),
            }
        }
        docs
    }

    #[test]
    fn counters_fold_runs_and_start_over_at_a_reset() {
        let failed = |id: &str, sequence: u64, latency_us: f64| {
            recorded(
                COMMAND,
                id,
                sequence,
                "command.failed",
                Some(json!({
                    "command_type": "payment", "error": {}, "latency_us": latency_us,
                    "failed_at": T1,
                })),
            )
        };
        let reset = |sequence: u64, command_type: Value| {
            recorded(
                METRICS_AGGREGATE,
                "metrics",
                sequence,
                "command.metrics_reset",
                Some(json!({"command_type": command_type, "reset_at": T1})),
            )
        };
        let mut events: Vec<RecordedEvent> = (1..=90)
            .map(|i| executed(&format!("c{i}"), 1, 100.0))
            .collect();
        events.extend((1..=10).map(|i| failed(&format!("f{i}"), 1, 1e6)));
        let counters = counters_after(&events);
        assert_eq!(counters.len(), 1, "{counters:?}");
        let payment = &counters["payment"];
        assert_eq!(payment["count"], json!(100.0));
        assert_eq!(payment["failures"], json!(10.0));
        assert_eq!(
            payment["total_latency_us"],
            json!(90.0 * 100.0 + 10.0 * 1e6)
        );
        assert_eq!(payment["last_reset_at"], Value::Null);
        let histogram = LatencyHistogram::from_counts(payment.get("buckets"));
        assert_eq!(histogram.total(), 100);
        assert!(histogram.percentile_us(50.0).expect("runs") < 120.0);
        assert!(histogram.percentile_us(95.0).expect("runs") > 9e5);

        // A reset of another type leaves payment alone; a reset of payment starts it over.
        events.push(reset(1, json!("order")));
        assert_eq!(counters_after(&events)["payment"], *payment);
        assert_eq!(
            counters_after(&events)["order"],
            zero_counters("order", Some(AT1))
        );
        events.push(reset(2, json!("payment")));
        events.push(executed("late", 1, 2000.0));
        let payment = &counters_after(&events)["payment"];
        assert_eq!(payment["count"], json!(1.0));
        assert_eq!(payment["failures"], json!(0));
        assert_eq!(payment["last_reset_at"], AT1);
        assert_eq!(
            LatencyHistogram::from_counts(payment.get("buckets")).total(),
            1
        );
        // A reset of all zeroes every type, payment included.
        events.push(reset(3, Value::Null));
        let counters = counters_after(&events);
        assert_eq!(counters.len(), COMMAND_TYPES.len());
        assert_eq!(counters["payment"], zero_counters("payment", Some(AT1)));
    }

    #[test]
    fn history_clear_deletes_history_only() {
        let clear = |data| {
            recorded(
                HISTORY_AGGREGATE,
                "history",
                1,
                "command.history_cleared",
                data,
            )
        };
        let ops = project(&clear(Some(json!({"cleared_at": T1}))));
        assert_eq!(
            op_in(&ops, HISTORY),
            vec![&DocOp::DeleteWhere {
                collection: HISTORY.into(),
                field: "kind".into(),
                value: json!("history"),
            }]
        );
        assert_eq!(upserted(only(&ops, AUDIT))["at"], AT1);
        assert_eq!(ops.len(), 2, "audit, commands and metrics stay");
        // Even a shredded clear clears.
        let ops = project(&clear(None));
        assert_eq!(op_in(&ops, HISTORY).len(), 1);
    }

    /// The write side's sample of every stored event type projects, into the expected
    /// collections: the read side and the write side agree on the payloads.
    #[test]
    fn every_stored_sample_of_the_context_projects() {
        let samples = crate::domain::command::fixtures::samples();
        assert!(samples.len() >= 15, "{}", samples.len());
        for (i, sample) in samples.into_iter().enumerate() {
            let event = recorded(
                sample.aggregate_type,
                "payment",
                i as u64 + 1,
                &sample.event_type,
                Some(sample.payload),
            );
            let ops = CommandProjection
                .project(&event)
                .unwrap_or_else(|err| panic!("{}: {err}", sample.event_type));
            let owned = [COMMAND, HANDLER, METRICS_AGGREGATE, HISTORY_AGGREGATE];
            if owned.contains(&sample.aggregate_type) {
                assert_eq!(op_in(&ops, AUDIT).len(), 1, "{}", sample.event_type);
                assert!(ops.len() >= 2, "{}: {ops:?}", sample.event_type);
            } else {
                assert!(ops.is_empty(), "{}: {ops:?}", sample.event_type);
            }
        }
    }

    #[test]
    fn forgotten_commands_leave_a_tombstone() {
        let forget = |atype: &str, id: &str| {
            recorded(
                SYSTEM_AGGREGATE,
                &format!("{atype}/{id}"),
                1,
                AGGREGATE_FORGOTTEN,
                Some(json!({"aggregate_type": atype, "aggregate_id": id})),
            )
        };
        assert_eq!(
            project(&forget(COMMAND, "c1")),
            vec![
                DocOp::Upsert {
                    collection: COMMANDS.into(),
                    id: "c1".into(),
                    doc: json!({"id": "c1", "tombstone": true}),
                },
                DocOp::DeleteWhere {
                    collection: HISTORY.into(),
                    field: "command_id".into(),
                    value: json!("c1"),
                },
            ]
        );
        assert!(project(&forget("user", "u1")).is_empty());
    }
}
