//! The mediator context (seed 002): mediators, the colleagues registered with them, and the
//! messages they pass between colleagues (direct or broadcast), with the projection that
//! builds mediators and inboxes.
//!
//! Pure code: no clock, no I/O. Every time comes in with the command.

pub mod aggregate;
pub mod fixtures;
pub mod kinds;
pub mod projection;
pub mod registry;

use serde::{Deserialize, Serialize};

use crate::domain::DomainError;

pub use aggregate::{Colleague, Mediator, MediatorCommand, MediatorEvent};
pub use kinds::{validate_cron, validate_message, MessageKind, MAX_MESSAGE_BYTES};
pub use projection::MediatorProjection;
pub use registry::{MediatorRegistry, RegistryCommand, RegistryEvent, REGISTRY_ID};

/// Aggregate type of a mediator (id: its name).
pub const MEDIATOR: &str = "mediator";
/// Aggregate type of the one registry of live mediator names (id: [`REGISTRY_ID`]); every
/// create and delete changes it in the same unit of work, so `max_mediators` holds under
/// concurrency.
pub const MEDIATOR_REGISTRY: &str = "mediator_registry";

/// Every aggregate type of this context, as stored in the event store.
pub const AGGREGATE_TYPES: &[&str] = &[MEDIATOR, MEDIATOR_REGISTRY];

/// Longest mediator name or colleague id.
pub const MAX_ID_LEN: usize = 128;
/// Longest colleague name, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Longest mediator description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 1024;
/// Most metadata entries of a mediator.
pub const MAX_METADATA_ENTRIES: usize = 64;

/// Whether `s` is 1..=128 characters of `[A-Za-z0-9._-]` (a mediator name or colleague id).
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub(crate) fn validate_id(field: &str, value: &str) -> Result<(), DomainError> {
    if is_valid_id(value) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!(
                "{field} must be 1 to {MAX_ID_LEN} characters of letters, digits, '.', '_' or '-'"
            ),
        ))
    }
}

/// Whether `s` is a colleague type: 1..=64 characters of `[a-z0-9_-]`.
pub fn is_valid_colleague_type(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'-'))
}

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

/// The seed's limits (`max_mediators`, `max_colleagues`), under `mediator:` in the config.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MediatorPolicy {
    pub max_mediators: u32,
    /// Per mediator.
    pub max_colleagues: u32,
}

impl Default for MediatorPolicy {
    fn default() -> Self {
        Self {
            max_mediators: 100,
            max_colleagues: 1000,
        }
    }
}
