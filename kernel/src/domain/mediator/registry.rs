//! The registry of live mediator names: one aggregate ([`REGISTRY_ID`]) that every create
//! and delete of a mediator changes in the same unit of work. Two concurrent creates both
//! append to its stream, so the optimistic lock lets one through and the other decides
//! again on fresh state: `max_mediators` is a hard limit, never overshot by a race.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::MEDIATOR_REGISTRY;
use crate::domain::{DomainError, EventSourced};

/// The id of the one registry aggregate.
pub const REGISTRY_ID: &str = "mediators";

#[derive(Debug, Clone, PartialEq)]
pub enum RegistryCommand {
    /// Claims a place for a new (or re-created) mediator; `max_mediators` is the limit.
    ClaimName {
        name: String,
        max_mediators: u32,
        at: DateTime<Utc>,
    },
    /// Gives a deleted mediator's place back; a name not held decides nothing.
    ReleaseName { name: String, at: DateTime<Utc> },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RegistryEvent {
    MediatorNameClaimed { name: String, at: DateTime<Utc> },
    MediatorNameReleased { name: String, at: DateTime<Utc> },
}

impl DomainEvent for RegistryEvent {
    fn event_type(&self) -> String {
        match self {
            RegistryEvent::MediatorNameClaimed { .. } => "mediator_name_claimed",
            RegistryEvent::MediatorNameReleased { .. } => "mediator_name_released",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// The live mediator names.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MediatorRegistry {
    names: BTreeSet<String>,
}

impl MediatorRegistry {
    pub fn names(&self) -> &BTreeSet<String> {
        &self.names
    }

    fn decide(&self, command: RegistryCommand) -> Result<Vec<RegistryEvent>, DomainError> {
        match command {
            RegistryCommand::ClaimName {
                name,
                max_mediators,
                at,
            } => {
                if self.names.contains(&name) {
                    return Err(DomainError::AlreadyExists(format!("mediator {name}")));
                }
                if self.names.len() >= max_mediators as usize {
                    return Err(DomainError::StateConflict(format!(
                        "too many mediators: {} exist, the limit (max_mediators) is \
                         {max_mediators}",
                        self.names.len()
                    )));
                }
                Ok(vec![RegistryEvent::MediatorNameClaimed { name, at }])
            }
            RegistryCommand::ReleaseName { name, at } => Ok(if self.names.contains(&name) {
                vec![RegistryEvent::MediatorNameReleased { name, at }]
            } else {
                vec![]
            }),
        }
    }
}

impl Aggregate for MediatorRegistry {
    const TYPE: &'static str = MEDIATOR_REGISTRY;
    type Command = RegistryCommand;
    type Event = RegistryEvent;
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
        match event {
            RegistryEvent::MediatorNameClaimed { name, .. } => {
                self.names.insert(name);
            }
            RegistryEvent::MediatorNameReleased { name, .. } => {
                self.names.remove(&name);
            }
        }
    }
}

impl EventSourced for MediatorRegistry {
    fn upcast(event_type: &str, event_version: i32, payload: Value) -> Result<Value, DomainError> {
        super::upcast(MEDIATOR_REGISTRY, event_type, event_version, payload)
    }
}
