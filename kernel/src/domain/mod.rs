//! The domain: aggregates, commands, events and projections of the five contexts.
//! Pure code: no I/O, no adapters, only `cqrs_es` traits and serde.

pub mod command;
pub mod event_sourcing;
pub mod mediator;
pub mod memento;
pub mod projection;
pub mod repository;

use thiserror::Error;

/// A rule a command broke. `field` names the offending input where there is one.
#[derive(Debug, Clone, Error, PartialEq)]
pub enum DomainError {
    /// The input is malformed or out of range (400/422).
    #[error("{message}")]
    Invalid {
        field: Option<String>,
        message: String,
    },
    /// The aggregate or an entity inside it does not exist (404).
    #[error("{0} not found")]
    NotFound(String),
    /// It exists already (409).
    #[error("{0} already exists")]
    AlreadyExists(String),
    /// The request is well formed but the state forbids it (409), e.g. a limit is reached.
    #[error("{0}")]
    StateConflict(String),
    /// The input is larger than a configured limit (413).
    #[error("{0}")]
    TooLarge(String),
}

impl DomainError {
    pub fn invalid(field: &str, message: impl Into<String>) -> Self {
        DomainError::Invalid {
            field: Some(field.to_string()),
            message: message.into(),
        }
    }
}

/// The bounded contexts; each one has its own Kafka topics and WebSocket `context` name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Context {
    Memento,
    Repository,
    Mediator,
    EventSourcing,
    Command,
    System,
}

impl Context {
    pub const fn as_str(self) -> &'static str {
        match self {
            Context::Memento => "memento",
            Context::Repository => "repository",
            Context::Mediator => "mediator",
            Context::EventSourcing => "event-sourcing",
            Context::Command => "command",
            Context::System => "system",
        }
    }

    /// The context an aggregate type belongs to.
    pub fn of_aggregate(aggregate_type: &str) -> Context {
        match aggregate_type {
            memento::CARETAKER | memento::ORIGINATOR => Context::Memento,
            t if repository::owns(t) => Context::Repository,
            t if event_sourcing::owns(t) => Context::EventSourcing,
            t if mediator::owns(t) => Context::Mediator,
            t if command::owns(t) => Context::Command,
            _ => Context::System,
        }
    }
}

/// Every aggregate type the contexts store (for routing: which topics a projection reads).
pub fn aggregate_types() -> Vec<&'static str> {
    let mut types = vec![
        memento::CARETAKER,
        memento::ORIGINATOR,
        repository::USER,
        repository::PAYMENT,
        repository::ORDER,
        repository::PRODUCT,
        event_sourcing::SNAPSHOT_LOG,
    ];
    types.extend(mediator::AGGREGATE_TYPES);
    types.extend(command::AGGREGATE_TYPES);
    types.extend(
        event_sourcing::AggregateKind::ALL
            .iter()
            .map(|kind| kind.store_type()),
    );
    types
}

/// What the engine needs of an aggregate beyond `cqrs_es::Aggregate`.
pub trait EventSourced: cqrs_es::Aggregate {
    /// Bump when the state's meaning changes while its shape stays the same; the snapshot
    /// fingerprint also covers the shape, so a changed state type invalidates old snapshots.
    const STATE_SCHEMA_VERSION: u32 = 1;

    /// Rewrites a stored payload of an older `event_version` into the current shape.
    fn upcast(
        _event_type: &str,
        _event_version: i32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, DomainError> {
        Ok(payload)
    }
}

/// Upcasts a stored payload with the upcaster of its aggregate type.
pub fn upcast(
    aggregate_type: &str,
    event_type: &str,
    event_version: i32,
    payload: serde_json::Value,
) -> Result<serde_json::Value, DomainError> {
    match aggregate_type {
        memento::CARETAKER => memento::Caretaker::upcast(event_type, event_version, payload),
        memento::ORIGINATOR => memento::Originator::upcast(event_type, event_version, payload),
        t if repository::owns(t) => repository::upcast(t, event_type, event_version, payload),
        t if event_sourcing::owns(t) => {
            event_sourcing::upcast(t, event_type, event_version, payload)
        }
        t if mediator::owns(t) => mediator::upcast(t, event_type, event_version, payload),
        t if command::owns(t) => command::upcast(t, event_type, event_version, payload),
        _ => Ok(payload),
    }
}
