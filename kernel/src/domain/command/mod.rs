//! The command context (seed 004): commands as aggregates of their own (queued, scheduled,
//! executed, failed, undone, cancelled), the handler registry with a circuit breaker per
//! handler, and the aggregates of the command types that act on nothing else
//! (notification, audit, system). The other types act on the repository's aggregates.
//!
//! Pure code: no clock, no I/O. Every time comes in with the command.

pub mod aggregate;
#[cfg(test)]
mod domain_tests;
pub mod fixtures;
pub mod handler;
pub mod projection;
pub mod read_model;
pub mod records;
pub mod spec;

use serde::Deserialize;

pub use aggregate::{
    Command, CommandEvent, CommandFailure, CommandOp, CommandSource, CommandStatus,
};
pub use handler::{
    Admission, AvailableReason, CommandHandler, HandlerEvent, HandlerOp, UnavailableReason,
};
pub use projection::CommandProjection;
pub use records::{AuditEntry, HistoryLog, MetricsLog, Notification, Record, SystemOperation};
pub use spec::{CommandSpec, CommandType};

/// Aggregate type of a command (id: its `command_id`).
pub const COMMAND: &str = "command";
/// Aggregate type of a command handler (id: the command type it runs, such as `payment`).
pub const HANDLER: &str = "command-handler";
/// Aggregate type of a notification a command sent (id: the command id).
pub const NOTIFICATION: &str = "command-notification";
/// Aggregate type of an audit entry a command recorded (id: the command id).
pub const AUDIT: &str = "command-audit";
/// Aggregate type of a system operation a command recorded (id: the command id).
pub const SYSTEM: &str = "command-system";
/// The singleton aggregate of metrics resets (id [`METRICS_ID`]).
pub const METRICS: &str = "command-metrics";
pub const METRICS_ID: &str = "metrics";
/// The singleton aggregate of history clearings (id [`HISTORY_ID`]).
pub const HISTORY: &str = "command-history";
pub const HISTORY_ID: &str = "history";

/// The reservation scope that marks a queued or scheduled command as pending (value and
/// owner: the command id). It is taken with `command.queued` / `command.scheduled` and
/// given back with the command's outcome, in the same unit of work, so listing it finds
/// exactly the commands still to run, after any restart.
pub const PENDING_SCOPE: &str = "command_pending";

/// Every aggregate type of this context, as stored in the event store.
pub const AGGREGATE_TYPES: &[&str] = &[
    COMMAND,
    HANDLER,
    NOTIFICATION,
    AUDIT,
    SYSTEM,
    METRICS,
    HISTORY,
];

/// Whether an aggregate type belongs to this context.
pub fn owns(aggregate_type: &str) -> bool {
    AGGREGATE_TYPES.contains(&aggregate_type)
}

/// Rewrites a stored payload of an older `event_version` into the current shape.
pub fn upcast(
    _aggregate_type: &str,
    _event_type: &str,
    _event_version: i32,
    payload: serde_json::Value,
) -> Result<serde_json::Value, super::DomainError> {
    // Every event of this context is at version 1.
    Ok(payload)
}

/// The command context's settings, under `command:` in the config.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CommandPolicy {
    /// Consecutive failures of a handler that open its circuit.
    pub failure_threshold: u32,
    /// How long an open circuit refuses before it lets one probe through (half-open).
    #[serde(with = "crate::config::duration_text")]
    pub open_timeout: std::time::Duration,
    /// Most commands in one `execute-batch` request.
    pub max_batch: usize,
    /// Most commands waiting in the queue and the schedule together; more are refused (503).
    pub max_queue: usize,
    /// How many pending commands the dispatcher runs at once.
    pub dispatch_concurrency: usize,
    /// How often the dispatcher looks for pending commands when nothing wakes it.
    #[serde(with = "crate::config::duration_text")]
    pub dispatch_poll: std::time::Duration,
}

impl Default for CommandPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_timeout: std::time::Duration::from_secs(30),
            max_batch: 100,
            max_queue: 10_000,
            dispatch_concurrency: 4,
            dispatch_poll: std::time::Duration::from_secs(1),
        }
    }
}
