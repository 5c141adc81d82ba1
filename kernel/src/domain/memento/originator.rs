//! The originator aggregate: an object (document, database, file or configuration) whose
//! state changes over time and can be rolled back to a memento (undo).

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{
    checksum, sized_checksum, validate_id, MementoPolicy, OriginatorKind, MAX_ORIGINATOR_NAME_LEN,
    ORIGINATOR,
};
use crate::domain::{DomainError, EventSourced};

#[derive(Debug, Clone, PartialEq)]
pub enum OriginatorCommand {
    CreateOriginator {
        id: String,
        kind: OriginatorKind,
        name: String,
        /// `None`: the kind's empty state.
        state: Option<Value>,
        at: DateTime<Utc>,
    },
    SetState {
        state: Value,
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
    /// Undo: bring back the state a caretaker kept. The engine reads the memento from the
    /// caretaker and passes it in; the checksum guards against a corrupt memento.
    RestoreFromMemento {
        caretaker: String,
        memento_id: String,
        memento_version: u64,
        kind: OriginatorKind,
        state: Value,
        checksum: String,
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OriginatorEvent {
    OriginatorCreated {
        id: String,
        kind: OriginatorKind,
        name: String,
        state: Value,
        version: u64,
        at: DateTime<Utc>,
    },
    OriginatorStateChanged {
        state: Value,
        version: u64,
        at: DateTime<Utc>,
    },
    OriginatorRestored {
        caretaker: String,
        memento_id: String,
        /// The memento's version (per originator, inside its caretaker).
        restored_version: u64,
        state: Value,
        /// The originator's new version.
        version: u64,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for OriginatorEvent {
    fn event_type(&self) -> String {
        match self {
            OriginatorEvent::OriginatorCreated { .. } => "originator_created",
            OriginatorEvent::OriginatorStateChanged { .. } => "originator_state_changed",
            OriginatorEvent::OriginatorRestored { .. } => "originator_restored",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Where the current state came from, when it was a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoredFrom {
    pub caretaker: String,
    pub memento_id: String,
    pub version: u64,
}

/// Originator state. Not created: `kind` is `None`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Originator {
    id: String,
    kind: Option<OriginatorKind>,
    name: String,
    state: Value,
    version: u64,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    restored_from: Option<RestoredFrom>,
}

impl Originator {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn is_created(&self) -> bool {
        self.kind.is_some()
    }

    pub fn kind(&self) -> Option<OriginatorKind> {
        self.kind
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn state(&self) -> &Value {
        &self.state
    }

    /// 0 before creation, 1 after it, +1 per change or restore.
    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at
    }

    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.updated_at
    }

    pub fn restored_from(&self) -> Option<&RestoredFrom> {
        self.restored_from.as_ref()
    }

    fn require_created(&self) -> Result<OriginatorKind, DomainError> {
        self.kind.ok_or_else(|| {
            if self.id.is_empty() {
                DomainError::NotFound("originator".to_string())
            } else {
                DomainError::NotFound(format!("originator {}", self.id))
            }
        })
    }

    fn check_version(&self, expected: Option<u64>) -> Result<(), DomainError> {
        match expected {
            Some(expected) if expected != self.version => Err(DomainError::StateConflict(format!(
                "stale version: expected {expected}, current {}",
                self.version
            ))),
            _ => Ok(()),
        }
    }

    fn decide(
        &self,
        command: OriginatorCommand,
        policy: &MementoPolicy,
    ) -> Result<Vec<OriginatorEvent>, DomainError> {
        match command {
            OriginatorCommand::CreateOriginator {
                id,
                kind,
                name,
                state,
                at,
            } => {
                validate_id("id", &id)?;
                if self.is_created() {
                    return Err(DomainError::AlreadyExists(format!("originator {id}")));
                }
                let name_len = name.chars().count();
                if name.trim().is_empty() || name_len > MAX_ORIGINATOR_NAME_LEN {
                    return Err(DomainError::invalid(
                        "name",
                        format!(
                            "name must be 1 to {MAX_ORIGINATOR_NAME_LEN} characters, not blank"
                        ),
                    ));
                }
                let state = state.unwrap_or_else(|| kind.empty_state());
                kind.validate_state(&state)?;
                sized_checksum(&state, policy.max_memento_size)?;
                Ok(vec![OriginatorEvent::OriginatorCreated {
                    id,
                    kind,
                    name,
                    state,
                    version: 1,
                    at,
                }])
            }
            OriginatorCommand::SetState {
                state,
                expected_version,
                at,
            } => {
                let kind = self.require_created()?;
                self.check_version(expected_version)?;
                kind.validate_state(&state)?;
                sized_checksum(&state, policy.max_memento_size)?;
                Ok(vec![OriginatorEvent::OriginatorStateChanged {
                    state,
                    version: self.version + 1,
                    at,
                }])
            }
            OriginatorCommand::RestoreFromMemento {
                caretaker,
                memento_id,
                memento_version,
                kind,
                state,
                checksum: expected_sum,
                expected_version,
                at,
            } => {
                let own_kind = self.require_created()?;
                self.check_version(expected_version)?;
                if kind != own_kind {
                    return Err(DomainError::invalid(
                        "type",
                        format!(
                            "memento {memento_id} holds a {kind} state; originator {} is a {own_kind}",
                            self.id
                        ),
                    ));
                }
                if checksum(&state).1 != expected_sum {
                    return Err(DomainError::invalid(
                        "checksum",
                        format!("memento {memento_id} is corrupt: its checksum does not match its state"),
                    ));
                }
                // No size check: an intact memento stays restorable if the limit shrinks.
                own_kind.validate_state(&state)?;
                Ok(vec![OriginatorEvent::OriginatorRestored {
                    caretaker,
                    memento_id,
                    restored_version: memento_version,
                    state,
                    version: self.version + 1,
                    at,
                }])
            }
        }
    }
}

impl Aggregate for Originator {
    const TYPE: &'static str = ORIGINATOR;
    type Command = OriginatorCommand;
    type Event = OriginatorEvent;
    type Error = DomainError;
    type Services = MementoPolicy;

    async fn handle(
        &mut self,
        command: Self::Command,
        service: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command, service)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            OriginatorEvent::OriginatorCreated {
                id,
                kind,
                name,
                state,
                version,
                at,
            } => {
                *self = Originator {
                    id,
                    kind: Some(kind),
                    name,
                    state,
                    version,
                    created_at: Some(at),
                    updated_at: Some(at),
                    restored_from: None,
                };
            }
            OriginatorEvent::OriginatorStateChanged { state, version, at } => {
                self.state = state;
                self.version = version;
                self.updated_at = Some(at);
                self.restored_from = None;
            }
            OriginatorEvent::OriginatorRestored {
                caretaker,
                memento_id,
                restored_version,
                state,
                version,
                at,
            } => {
                self.state = state;
                self.version = version;
                self.updated_at = Some(at);
                self.restored_from = Some(RestoredFrom {
                    caretaker,
                    memento_id,
                    version: restored_version,
                });
            }
        }
    }
}

impl EventSourced for Originator {}
