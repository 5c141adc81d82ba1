//! The mediator aggregate (id: its name): a description, metadata, the colleagues
//! registered with it, and the messages it passes between them. A message names a
//! registered sender and, when sent directly, a registered recipient; a broadcast reaches
//! every registered colleague but the sender, and its event lists them. A deleted mediator
//! refuses everything but being created again (which starts it empty).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::kinds::{validate_message, MessageKind};
use super::{
    is_valid_colleague_type, validate_id, MAX_DESCRIPTION_LEN, MAX_METADATA_ENTRIES, MAX_NAME_LEN,
    MEDIATOR,
};
use crate::domain::{DomainError, EventSourced};

#[derive(Debug, Clone, PartialEq)]
pub enum MediatorCommand {
    CreateMediator {
        name: String,
        description: Option<String>,
        metadata: Map<String, Value>,
        at: DateTime<Utc>,
    },
    /// Changes the description and/or the metadata (replaced whole); at least one.
    UpdateMediator {
        description: Option<String>,
        metadata: Option<Map<String, Value>>,
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
    DeleteMediator {
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
    /// `max_colleagues` is the configured limit per mediator.
    RegisterColleague {
        colleague_id: String,
        name: String,
        colleague_type: String,
        max_colleagues: u32,
        at: DateTime<Utc>,
    },
    UnregisterColleague {
        colleague_id: String,
        at: DateTime<Utc>,
    },
    /// `message_id` is made by the write side (a UUIDv7), once per request.
    SendMessage {
        message_id: String,
        sender_id: String,
        recipient_id: String,
        kind: MessageKind,
        message: Value,
        at: DateTime<Utc>,
    },
    BroadcastMessage {
        message_id: String,
        sender_id: String,
        kind: MessageKind,
        message: Value,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MediatorEvent {
    MediatorCreated {
        name: String,
        description: Option<String>,
        metadata: Map<String, Value>,
        at: DateTime<Utc>,
    },
    /// Carries what changed; absent fields stay as they were.
    MediatorUpdated {
        description: Option<String>,
        metadata: Option<Map<String, Value>>,
        at: DateTime<Utc>,
    },
    MediatorDeleted {
        name: String,
        at: DateTime<Utc>,
    },
    ColleagueRegistered {
        colleague_id: String,
        name: String,
        colleague_type: String,
        at: DateTime<Utc>,
    },
    ColleagueUnregistered {
        colleague_id: String,
        at: DateTime<Utc>,
    },
    /// Routed over the WebSocket by `recipient_id`.
    MessageSent {
        message_id: String,
        sender_id: String,
        recipient_id: String,
        kind: MessageKind,
        message: Value,
        sent_at: DateTime<Utc>,
    },
    /// `recipients`: every colleague registered when it was sent, but the sender. Routed
    /// over the WebSocket to each of them.
    MessageBroadcasted {
        message_id: String,
        sender_id: String,
        recipients: Vec<String>,
        kind: MessageKind,
        message: Value,
        sent_at: DateTime<Utc>,
    },
}

impl DomainEvent for MediatorEvent {
    fn event_type(&self) -> String {
        match self {
            MediatorEvent::MediatorCreated { .. } => "mediator_created",
            MediatorEvent::MediatorUpdated { .. } => "mediator_updated",
            MediatorEvent::MediatorDeleted { .. } => "mediator_deleted",
            MediatorEvent::ColleagueRegistered { .. } => "colleague_registered",
            MediatorEvent::ColleagueUnregistered { .. } => "colleague_unregistered",
            MediatorEvent::MessageSent { .. } => "message_sent",
            MediatorEvent::MessageBroadcasted { .. } => "message_broadcasted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// A registered colleague.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Colleague {
    pub name: String,
    pub colleague_type: String,
    pub registered_at: DateTime<Utc>,
}

/// Mediator state. Never created: `name` is empty. Deleted: `deleted` is true.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Mediator {
    name: String,
    description: Option<String>,
    metadata: Map<String, Value>,
    colleagues: BTreeMap<String, Colleague>,
    message_count: u64,
    deleted: bool,
    version: u64,
    created_at: Option<DateTime<Utc>>,
}

/// A trimmed, non-blank text of at most `max` characters without control characters.
fn validate_text(field: &str, value: &str, max: usize) -> Result<String, DomainError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(DomainError::invalid(
            field,
            format!("{field} must not be blank"),
        ));
    }
    if trimmed.chars().count() > max {
        return Err(DomainError::invalid(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(trimmed.to_string())
}

fn validate_description(description: Option<String>) -> Result<Option<String>, DomainError> {
    description
        .map(|d| validate_text("description", &d, MAX_DESCRIPTION_LEN))
        .transpose()
}

fn validate_metadata(metadata: &Map<String, Value>) -> Result<(), DomainError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(DomainError::invalid(
            "metadata",
            format!("metadata must have at most {MAX_METADATA_ENTRIES} entries"),
        ));
    }
    Ok(())
}

/// Fails with a 409 when `expected` is set and is not the aggregate's `current` version.
fn check_version(expected: Option<u64>, current: u64) -> Result<(), DomainError> {
    match expected {
        Some(expected) if expected != current => Err(DomainError::StateConflict(format!(
            "stale version: expected {expected}, current {current}"
        ))),
        _ => Ok(()),
    }
}

impl Mediator {
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    pub fn colleagues(&self) -> &BTreeMap<String, Colleague> {
        &self.colleagues
    }

    pub fn message_count(&self) -> u64 {
        self.message_count
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Created and not deleted.
    pub fn is_live(&self) -> bool {
        !self.name.is_empty() && !self.deleted
    }

    fn require_live(&self) -> Result<(), DomainError> {
        if self.is_live() {
            Ok(())
        } else if self.name.is_empty() {
            Err(DomainError::NotFound("mediator".to_string()))
        } else {
            Err(DomainError::NotFound(format!("mediator {}", self.name)))
        }
    }

    /// A message's sender (or recipient) must be registered: 422 naming `field`.
    fn require_registered(&self, field: &str, colleague_id: &str) -> Result<(), DomainError> {
        validate_id(field, colleague_id)?;
        if self.colleagues.contains_key(colleague_id) {
            Ok(())
        } else {
            Err(DomainError::invalid(
                field,
                format!(
                    "colleague {colleague_id} is not registered with mediator {}",
                    self.name
                ),
            ))
        }
    }

    fn decide(&self, command: MediatorCommand) -> Result<Vec<MediatorEvent>, DomainError> {
        match command {
            MediatorCommand::CreateMediator {
                name,
                description,
                metadata,
                at,
            } => {
                validate_id("name", &name)?;
                if self.is_live() {
                    return Err(DomainError::AlreadyExists(format!("mediator {name}")));
                }
                let description = validate_description(description)?;
                validate_metadata(&metadata)?;
                Ok(vec![MediatorEvent::MediatorCreated {
                    name,
                    description,
                    metadata,
                    at,
                }])
            }
            MediatorCommand::UpdateMediator {
                description,
                metadata,
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                if description.is_none() && metadata.is_none() {
                    return Err(DomainError::Invalid {
                        field: None,
                        message: "nothing to update: give description and/or metadata".to_string(),
                    });
                }
                let description = validate_description(description)?;
                if let Some(metadata) = &metadata {
                    validate_metadata(metadata)?;
                }
                Ok(vec![MediatorEvent::MediatorUpdated {
                    description,
                    metadata,
                    at,
                }])
            }
            MediatorCommand::DeleteMediator {
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                Ok(vec![MediatorEvent::MediatorDeleted {
                    name: self.name.clone(),
                    at,
                }])
            }
            MediatorCommand::RegisterColleague {
                colleague_id,
                name,
                colleague_type,
                max_colleagues,
                at,
            } => {
                self.require_live()?;
                validate_id("id", &colleague_id)?;
                let name = validate_text("name", &name, MAX_NAME_LEN)?;
                if !is_valid_colleague_type(&colleague_type) {
                    return Err(DomainError::invalid(
                        "type",
                        "type must be 1 to 64 characters of a-z, 0-9, '_' or '-'",
                    ));
                }
                if self.colleagues.contains_key(&colleague_id) {
                    return Err(DomainError::AlreadyExists(format!(
                        "colleague {colleague_id} of mediator {}",
                        self.name
                    )));
                }
                if self.colleagues.len() >= max_colleagues as usize {
                    return Err(DomainError::StateConflict(format!(
                        "mediator {} is full: it has {} colleagues, the limit \
                         (max_colleagues) is {max_colleagues}",
                        self.name,
                        self.colleagues.len()
                    )));
                }
                Ok(vec![MediatorEvent::ColleagueRegistered {
                    colleague_id,
                    name,
                    colleague_type,
                    at,
                }])
            }
            MediatorCommand::UnregisterColleague { colleague_id, at } => {
                self.require_live()?;
                if !self.colleagues.contains_key(&colleague_id) {
                    return Err(DomainError::NotFound(format!(
                        "colleague {colleague_id} of mediator {}",
                        self.name
                    )));
                }
                Ok(vec![MediatorEvent::ColleagueUnregistered {
                    colleague_id,
                    at,
                }])
            }
            MediatorCommand::SendMessage {
                message_id,
                sender_id,
                recipient_id,
                kind,
                message,
                at,
            } => {
                self.require_live()?;
                self.require_registered("sender_id", &sender_id)?;
                self.require_registered("recipient_id", &recipient_id)?;
                validate_message(kind, &message)?;
                Ok(vec![MediatorEvent::MessageSent {
                    message_id,
                    sender_id,
                    recipient_id,
                    kind,
                    message,
                    sent_at: at,
                }])
            }
            MediatorCommand::BroadcastMessage {
                message_id,
                sender_id,
                kind,
                message,
                at,
            } => {
                self.require_live()?;
                self.require_registered("sender_id", &sender_id)?;
                validate_message(kind, &message)?;
                let recipients = self
                    .colleagues
                    .keys()
                    .filter(|id| **id != sender_id)
                    .cloned()
                    .collect();
                Ok(vec![MediatorEvent::MessageBroadcasted {
                    message_id,
                    sender_id,
                    recipients,
                    kind,
                    message,
                    sent_at: at,
                }])
            }
        }
    }
}

impl Aggregate for Mediator {
    const TYPE: &'static str = MEDIATOR;
    type Command = MediatorCommand;
    type Event = MediatorEvent;
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
            MediatorEvent::MediatorCreated {
                name,
                description,
                metadata,
                at,
            } => {
                // A mediator created again after a delete starts empty.
                self.name = name;
                self.description = description;
                self.metadata = metadata;
                self.colleagues.clear();
                self.message_count = 0;
                self.deleted = false;
                self.created_at = Some(at);
            }
            MediatorEvent::MediatorUpdated {
                description,
                metadata,
                ..
            } => {
                if let Some(description) = description {
                    self.description = Some(description);
                }
                if let Some(metadata) = metadata {
                    self.metadata = metadata;
                }
            }
            MediatorEvent::MediatorDeleted { .. } => {
                self.deleted = true;
                self.colleagues.clear();
            }
            MediatorEvent::ColleagueRegistered {
                colleague_id,
                name,
                colleague_type,
                at,
            } => {
                self.colleagues.insert(
                    colleague_id,
                    Colleague {
                        name,
                        colleague_type,
                        registered_at: at,
                    },
                );
            }
            MediatorEvent::ColleagueUnregistered { colleague_id, .. } => {
                self.colleagues.remove(&colleague_id);
            }
            MediatorEvent::MessageSent { .. } | MediatorEvent::MessageBroadcasted { .. } => {
                self.message_count += 1;
            }
        }
    }
}

impl EventSourced for Mediator {
    fn upcast(event_type: &str, event_version: i32, payload: Value) -> Result<Value, DomainError> {
        super::upcast(MEDIATOR, event_type, event_version, payload)
    }
}
