//! The command aggregate: one command's life. It is queued or scheduled (durable, run later),
//! or executed at once; it ends executed, failed or cancelled, and an executed command that
//! can be undone may be undone once. What undo needs (the values the command overwrote) is
//! captured at execution, memento-style, in the `undo` of `command.executed`.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::spec::CommandType;
use super::COMMAND;
use crate::domain::{DomainError, EventSourced};

/// Where a command is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Queued,
    Scheduled,
    Executed,
    Failed,
    Undone,
    Cancelled,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Scheduled => "scheduled",
            CommandStatus::Executed => "executed",
            CommandStatus::Failed => "failed",
            CommandStatus::Undone => "undone",
            CommandStatus::Cancelled => "cancelled",
        }
    }

    /// Waiting in the queue or for its time.
    pub fn is_pending(self) -> bool {
        matches!(self, CommandStatus::Queued | CommandStatus::Scheduled)
    }
}

impl std::fmt::Display for CommandStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a command came to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandSource {
    Sync,
    Async,
    Queue,
    Schedule,
    Batch,
}

impl CommandSource {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandSource::Sync => "sync",
            CommandSource::Async => "async",
            CommandSource::Queue => "queue",
            CommandSource::Schedule => "schedule",
            CommandSource::Batch => "batch",
        }
    }
}

/// Why a command failed: the problem the refusal answered with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandFailure {
    pub status: u16,
    pub title: String,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum CommandOp {
    /// Into the durable queue (`source` is queue or async).
    Queue {
        command_id: String,
        command_type: CommandType,
        payload: Value,
        source: CommandSource,
        at: DateTime<Utc>,
    },
    Schedule {
        command_id: String,
        command_type: CommandType,
        payload: Value,
        execute_at: DateTime<Utc>,
        at: DateTime<Utc>,
    },
    /// A new command ran at once, or a pending one ran.
    RecordExecuted {
        command_id: String,
        command_type: CommandType,
        payload: Value,
        source: CommandSource,
        result: Value,
        undoable: bool,
        undo: Option<Value>,
        latency_us: u64,
        at: DateTime<Utc>,
    },
    RecordFailed {
        command_id: String,
        command_type: CommandType,
        payload: Value,
        source: CommandSource,
        error: CommandFailure,
        latency_us: u64,
        at: DateTime<Utc>,
    },
    /// Only a pending command.
    Cancel { reason: String, at: DateTime<Utc> },
    /// Only an executed command that can be undone.
    RecordUndone {
        compensation: Value,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum CommandEvent {
    #[serde(rename = "command.queued")]
    Queued {
        command_id: String,
        command_type: CommandType,
        payload: Value,
        source: CommandSource,
        queued_at: DateTime<Utc>,
    },
    #[serde(rename = "command.scheduled")]
    Scheduled {
        command_id: String,
        command_type: CommandType,
        payload: Value,
        execute_at: DateTime<Utc>,
        scheduled_at: DateTime<Utc>,
    },
    #[serde(rename = "command.executed")]
    Executed {
        command_id: String,
        command_type: CommandType,
        payload: Value,
        source: CommandSource,
        result: Value,
        undoable: bool,
        /// The values the command overwrote, for undo.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        undo: Option<Value>,
        latency_us: u64,
        executed_at: DateTime<Utc>,
    },
    #[serde(rename = "command.failed")]
    Failed {
        command_id: String,
        command_type: CommandType,
        payload: Value,
        source: CommandSource,
        error: CommandFailure,
        latency_us: u64,
        failed_at: DateTime<Utc>,
    },
    #[serde(rename = "command.cancelled")]
    Cancelled {
        command_id: String,
        command_type: CommandType,
        reason: String,
        cancelled_at: DateTime<Utc>,
        /// The payload's `user_id` (the user the command belongs to), repeated so the read
        /// side can attribute the event without the earlier ones; absent in older events
        /// and for commands without a user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
    #[serde(rename = "command.undone")]
    Undone {
        command_id: String,
        command_type: CommandType,
        compensation: Value,
        undone_at: DateTime<Utc>,
        /// As in `Cancelled`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        user_id: Option<String>,
    },
}

impl DomainEvent for CommandEvent {
    fn event_type(&self) -> String {
        match self {
            CommandEvent::Queued { .. } => "command.queued",
            CommandEvent::Scheduled { .. } => "command.scheduled",
            CommandEvent::Executed { .. } => "command.executed",
            CommandEvent::Failed { .. } => "command.failed",
            CommandEvent::Cancelled { .. } => "command.cancelled",
            CommandEvent::Undone { .. } => "command.undone",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Command state. Never recorded: `id` is empty.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Command {
    id: String,
    command_type: Option<CommandType>,
    payload: Value,
    status: Option<CommandStatus>,
    source: Option<CommandSource>,
    /// When a pending command is due (now for a queued one).
    due_at: Option<DateTime<Utc>>,
    result: Value,
    undoable: bool,
    undo: Option<Value>,
    error: Option<CommandFailure>,
    version: u64,
}

impl Command {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn exists(&self) -> bool {
        !self.id.is_empty()
    }

    pub fn command_type(&self) -> Option<CommandType> {
        self.command_type
    }

    /// The envelope's fields besides `type` and `command_id`.
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    pub fn status(&self) -> Option<CommandStatus> {
        self.status
    }

    pub fn source(&self) -> Option<CommandSource> {
        self.source
    }

    pub fn due_at(&self) -> Option<DateTime<Utc>> {
        self.due_at
    }

    pub fn result(&self) -> &Value {
        &self.result
    }

    pub fn undo(&self) -> Option<&Value> {
        self.undo.as_ref()
    }

    pub fn error(&self) -> Option<&CommandFailure> {
        self.error.as_ref()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn is_pending(&self) -> bool {
        self.status.is_some_and(CommandStatus::is_pending)
    }

    fn name(&self) -> String {
        format!("command {}", self.id)
    }

    fn require_new(&self, command_id: &str) -> Result<(), DomainError> {
        if self.exists() {
            Err(DomainError::AlreadyExists(format!("command {command_id}")))
        } else {
            Ok(())
        }
    }

    fn decide(&self, op: CommandOp) -> Result<Vec<CommandEvent>, DomainError> {
        match op {
            CommandOp::Queue {
                command_id,
                command_type,
                payload,
                source,
                at,
            } => {
                self.require_new(&command_id)?;
                Ok(vec![CommandEvent::Queued {
                    command_id,
                    command_type,
                    payload,
                    source,
                    queued_at: at,
                }])
            }
            CommandOp::Schedule {
                command_id,
                command_type,
                payload,
                execute_at,
                at,
            } => {
                self.require_new(&command_id)?;
                if execute_at <= at {
                    return Err(DomainError::invalid(
                        "execute_at",
                        "execute_at must be in the future",
                    ));
                }
                Ok(vec![CommandEvent::Scheduled {
                    command_id,
                    command_type,
                    payload,
                    execute_at,
                    scheduled_at: at,
                }])
            }
            CommandOp::RecordExecuted {
                command_id,
                command_type,
                payload,
                source,
                result,
                undoable,
                undo,
                latency_us,
                at,
            } => {
                self.require_runnable()?;
                Ok(vec![CommandEvent::Executed {
                    command_id,
                    command_type,
                    payload,
                    source,
                    result,
                    undoable,
                    undo,
                    latency_us,
                    executed_at: at,
                }])
            }
            CommandOp::RecordFailed {
                command_id,
                command_type,
                payload,
                source,
                error,
                latency_us,
                at,
            } => {
                self.require_runnable()?;
                Ok(vec![CommandEvent::Failed {
                    command_id,
                    command_type,
                    payload,
                    source,
                    error,
                    latency_us,
                    failed_at: at,
                }])
            }
            CommandOp::Cancel { reason, at } => {
                let status = self.require_status()?;
                if !status.is_pending() {
                    return Err(DomainError::StateConflict(format!(
                        "{} is {status}: only a queued or scheduled command can be cancelled",
                        self.name()
                    )));
                }
                Ok(vec![CommandEvent::Cancelled {
                    command_id: self.id.clone(),
                    command_type: self.typed()?,
                    reason,
                    cancelled_at: at,
                    user_id: self.user_id(),
                }])
            }
            CommandOp::RecordUndone { compensation, at } => {
                self.require_undoable()?;
                Ok(vec![CommandEvent::Undone {
                    command_id: self.id.clone(),
                    command_type: self.typed()?,
                    compensation,
                    undone_at: at,
                    user_id: self.user_id(),
                }])
            }
        }
    }

    /// The payload's `user_id`: the user the command belongs to, if any.
    fn user_id(&self) -> Option<String> {
        self.payload
            .get("user_id")
            .and_then(Value::as_str)
            .map(str::to_string)
    }

    fn typed(&self) -> Result<CommandType, DomainError> {
        self.command_type
            .ok_or_else(|| DomainError::NotFound(self.name()))
    }

    fn require_status(&self) -> Result<CommandStatus, DomainError> {
        self.status
            .ok_or_else(|| DomainError::NotFound(self.name()))
    }

    /// New (run at once) or pending (run from the queue or the schedule).
    fn require_runnable(&self) -> Result<(), DomainError> {
        match self.status {
            None => Ok(()),
            Some(status) if status.is_pending() => Ok(()),
            Some(status) => Err(DomainError::StateConflict(format!(
                "{} is already {status}",
                self.name()
            ))),
        }
    }

    /// Why this command cannot be undone, if it cannot.
    pub fn require_undoable(&self) -> Result<(), DomainError> {
        match self.require_status()? {
            CommandStatus::Executed if self.undoable => Ok(()),
            CommandStatus::Executed => Err(DomainError::StateConflict(format!(
                "{} cannot be undone: a {} command has no compensating action",
                self.name(),
                self.typed()?
            ))),
            CommandStatus::Undone => Err(DomainError::StateConflict(format!(
                "{} is already undone",
                self.name()
            ))),
            status => Err(DomainError::StateConflict(format!(
                "{} is {status}: only an executed command can be undone",
                self.name()
            ))),
        }
    }
}

impl Aggregate for Command {
    const TYPE: &'static str = COMMAND;
    type Command = CommandOp;
    type Event = CommandEvent;
    type Error = DomainError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _service: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.version += 1;
        match event {
            CommandEvent::Queued {
                command_id,
                command_type,
                payload,
                source,
                queued_at,
            } => {
                self.id = command_id;
                self.command_type = Some(command_type);
                self.payload = payload;
                self.source = Some(source);
                self.status = Some(CommandStatus::Queued);
                self.due_at = Some(queued_at);
            }
            CommandEvent::Scheduled {
                command_id,
                command_type,
                payload,
                execute_at,
                ..
            } => {
                self.id = command_id;
                self.command_type = Some(command_type);
                self.payload = payload;
                self.source = Some(CommandSource::Schedule);
                self.status = Some(CommandStatus::Scheduled);
                self.due_at = Some(execute_at);
            }
            CommandEvent::Executed {
                command_id,
                command_type,
                payload,
                source,
                result,
                undoable,
                undo,
                ..
            } => {
                self.id = command_id;
                self.command_type = Some(command_type);
                self.payload = payload;
                self.source = Some(source);
                self.status = Some(CommandStatus::Executed);
                self.due_at = None;
                self.result = result;
                self.undoable = undoable;
                self.undo = undo;
            }
            CommandEvent::Failed {
                command_id,
                command_type,
                payload,
                source,
                error,
                ..
            } => {
                self.id = command_id;
                self.command_type = Some(command_type);
                self.payload = payload;
                self.source = Some(source);
                self.status = Some(CommandStatus::Failed);
                self.due_at = None;
                self.error = Some(error);
            }
            CommandEvent::Cancelled { .. } => {
                self.status = Some(CommandStatus::Cancelled);
                self.due_at = None;
            }
            CommandEvent::Undone { .. } => {
                self.status = Some(CommandStatus::Undone);
            }
        }
    }
}

impl EventSourced for Command {
    fn upcast(event_type: &str, event_version: i32, payload: Value) -> Result<Value, DomainError> {
        super::upcast(COMMAND, event_type, event_version, payload)
    }
}
