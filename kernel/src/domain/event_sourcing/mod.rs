//! The event-sourcing context (seed 003): generic aggregates of the types user, order,
//! payment and custom, whose events clients publish directly; a log of the snapshots taken
//! of them; and the projection that keeps each aggregate's current document.
//!
//! Pure code: no clock, no I/O. Every time comes in with the command.

pub mod aggregate;
pub mod fixtures;
pub mod projection;
pub mod snapshot;

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::DomainError;

pub use aggregate::{
    CustomAggregate, CustomKind, GenericAggregate, GenericCommand, GenericEvent, GenericState,
    Kind, OrderAggregate, OrderKind, PaymentAggregate, PaymentKind, UserAggregate, UserKind,
};
pub use projection::EventSourcingProjection;
pub use snapshot::{SnapshotLog, SnapshotLogCommand, SnapshotLogEvent};

/// Prefix of this context's aggregate types in the event store (`es-user`, ...), so they
/// never collide with the repository context's `user`, `order` and `payment`.
pub const TYPE_PREFIX: &str = "es-";

/// Aggregate type of the snapshot logs: one stream per aggregate id, one `snapshot_taken`
/// event per snapshot forced through `POST /snapshots`.
pub const SNAPSHOT_LOG: &str = "es-snapshot";

/// Reservation scope that keeps an aggregate id unique across the four types
/// (value: the id; owner: `<store type>/<id>`).
pub const ID_RESERVATION_SCOPE: &str = "es_aggregate_id";

/// What `GET /info` calls the service (the seed's `name`, `version`, `description`).
pub const SERVICE_NAME: &str = "Event Sourcing Service";
pub const SERVICE_VERSION: &str = "1.0.0";
pub const SERVICE_DESCRIPTION: &str =
    "Event Sourcing pattern implementation with microservice architecture";

/// Longest aggregate id.
pub const MAX_ID_LEN: usize = 128;
/// Longest top-level key of an aggregate's state or metadata.
pub const MAX_KEY_LEN: usize = 256;
/// Most keys an event's metadata may have.
pub const MAX_METADATA_KEYS: usize = 64;
/// Longest email a user may have (RFC 5321).
pub const MAX_EMAIL_LEN: usize = 254;

/// The statuses an order can be in; `order_created` starts at `pending` unless it says.
pub const ORDER_STATUSES: [&str; 7] = [
    "pending",
    "confirmed",
    "processing",
    "shipped",
    "delivered",
    "cancelled",
    "refunded",
];

/// The statuses a payment can be in.
pub const PAYMENT_STATUSES: [&str; 6] = [
    "pending",
    "processing",
    "completed",
    "failed",
    "refunded",
    "cancelled",
];

/// Whether an aggregate type belongs to this context.
pub fn owns(aggregate_type: &str) -> bool {
    aggregate_type.starts_with(TYPE_PREFIX)
}

/// The state key naming the user an order or a payment belongs to.
pub const OWNER_KEY: &str = "user_id";

/// Who an aggregate belongs to, for a token that acts for one user: a user is its own
/// (its id), an order or a payment the `user_id` of its current state (`None` without
/// one). Custom aggregates belong to nobody: they are shared ([`AggregateKind::is_shared`]).
pub fn owner<'a>(
    kind: AggregateKind,
    id: &'a str,
    state: &'a Map<String, Value>,
) -> Option<&'a str> {
    match kind {
        AggregateKind::User => Some(id),
        AggregateKind::Order | AggregateKind::Payment => {
            state.get(OWNER_KEY).and_then(Value::as_str)
        }
        AggregateKind::Custom => None,
    }
}

/// Whether `user` may read and write the aggregate: it owns it, or the aggregate is shared.
pub fn visible_to(kind: AggregateKind, id: &str, state: &Map<String, Value>, user: &str) -> bool {
    kind.is_shared() || owner(kind, id, state) == Some(user)
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

/// The four aggregate types of the seed; shown as `user`, stored as `es-user`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateKind {
    User,
    Order,
    Payment,
    Custom,
}

impl AggregateKind {
    pub const ALL: [AggregateKind; 4] = [
        AggregateKind::User,
        AggregateKind::Order,
        AggregateKind::Payment,
        AggregateKind::Custom,
    ];

    /// The name the API shows (`user`).
    pub const fn as_str(self) -> &'static str {
        match self {
            AggregateKind::User => "user",
            AggregateKind::Order => "order",
            AggregateKind::Payment => "payment",
            AggregateKind::Custom => "custom",
        }
    }

    /// The aggregate type in the event store (`es-user`).
    pub const fn store_type(self) -> &'static str {
        match self {
            AggregateKind::User => "es-user",
            AggregateKind::Order => "es-order",
            AggregateKind::Payment => "es-payment",
            AggregateKind::Custom => "es-custom",
        }
    }

    pub fn parse(name: &str) -> Option<AggregateKind> {
        AggregateKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// Custom aggregates have no owning user: every token of the context reads and writes
    /// them, like the repository's products.
    pub const fn is_shared(self) -> bool {
        matches!(self, AggregateKind::Custom)
    }

    pub fn from_store_type(aggregate_type: &str) -> Option<AggregateKind> {
        AggregateKind::ALL
            .into_iter()
            .find(|k| k.store_type() == aggregate_type)
    }

    /// The four store types, for event-log filters.
    pub fn store_types() -> Vec<String> {
        AggregateKind::ALL
            .iter()
            .map(|k| k.store_type().to_string())
            .collect()
    }

    /// The event that creates an aggregate of this type (its first event).
    pub const fn creation_event(self) -> EventKind {
        match self {
            AggregateKind::User => EventKind::UserCreated,
            AggregateKind::Order => EventKind::OrderCreated,
            AggregateKind::Payment => EventKind::PaymentProcessed,
            AggregateKind::Custom => EventKind::Custom,
        }
    }

    /// The event types an aggregate of this type takes; `custom` fits every type.
    pub fn event_types(self) -> &'static [EventKind] {
        match self {
            AggregateKind::User => &[
                EventKind::UserCreated,
                EventKind::UserUpdated,
                EventKind::UserDeleted,
                EventKind::Custom,
            ],
            AggregateKind::Order => &[
                EventKind::OrderCreated,
                EventKind::OrderStatusChanged,
                EventKind::Custom,
            ],
            AggregateKind::Payment => &[EventKind::PaymentProcessed, EventKind::Custom],
            AggregateKind::Custom => &[EventKind::Custom],
        }
    }

    pub fn accepts(self, event: EventKind) -> bool {
        self.event_types().contains(&event)
    }
}

impl fmt::Display for AggregateKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The seven event types of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    UserCreated,
    UserUpdated,
    UserDeleted,
    OrderCreated,
    OrderStatusChanged,
    PaymentProcessed,
    Custom,
}

impl EventKind {
    pub const ALL: [EventKind; 7] = [
        EventKind::UserCreated,
        EventKind::UserUpdated,
        EventKind::UserDeleted,
        EventKind::OrderCreated,
        EventKind::OrderStatusChanged,
        EventKind::PaymentProcessed,
        EventKind::Custom,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            EventKind::UserCreated => "user_created",
            EventKind::UserUpdated => "user_updated",
            EventKind::UserDeleted => "user_deleted",
            EventKind::OrderCreated => "order_created",
            EventKind::OrderStatusChanged => "order_status_changed",
            EventKind::PaymentProcessed => "payment_processed",
            EventKind::Custom => "custom",
        }
    }

    pub fn parse(name: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == name)
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The seed's `validation_rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidationRules {
    /// Largest `data` of one event, in bytes of canonical JSON (over it: 413).
    pub max_event_data_size: u64,
    /// Most events one aggregate may have (over it: 409).
    pub max_aggregate_events: u64,
}

impl Default for ValidationRules {
    fn default() -> Self {
        ValidationRules {
            max_event_data_size: 1_048_576,
            max_aggregate_events: 10_000,
        }
    }
}

/// The `event_sourcing` section of the configuration (the seed's keys), and the services
/// of this context's aggregates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventSourcingPolicy {
    /// Most aggregates (of the four types together) that may be created (over it: 409).
    pub max_aggregates: u64,
    /// Most snapshots `POST /snapshots` may record per aggregate (over it: 409).
    pub max_snapshots: u64,
    /// The event types that may be written; a subset of the seven.
    pub supported_event_types: Vec<String>,
    /// The aggregate types that may be written; a subset of the four.
    pub supported_aggregate_types: Vec<String>,
    pub validation_rules: ValidationRules,
}

impl Default for EventSourcingPolicy {
    fn default() -> Self {
        EventSourcingPolicy {
            max_aggregates: 10_000,
            max_snapshots: 1_000,
            supported_event_types: EventKind::ALL
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            supported_aggregate_types: AggregateKind::ALL
                .iter()
                .map(|k| k.as_str().to_string())
                .collect(),
            validation_rules: ValidationRules::default(),
        }
    }
}

impl EventSourcingPolicy {
    /// Checks the configured names; call it when the configuration loads.
    pub fn validate(&self) -> Result<(), String> {
        for name in &self.supported_event_types {
            if EventKind::parse(name).is_none() {
                return Err(format!(
                    "event_sourcing.supported_event_types: unknown event type `{name}`"
                ));
            }
        }
        for name in &self.supported_aggregate_types {
            if AggregateKind::parse(name).is_none() {
                return Err(format!(
                    "event_sourcing.supported_aggregate_types: unknown aggregate type `{name}`"
                ));
            }
        }
        Ok(())
    }

    pub fn supports_aggregate(&self, kind: AggregateKind) -> bool {
        self.supported_aggregate_types
            .iter()
            .any(|name| name == kind.as_str())
    }

    pub fn supports_event(&self, kind: EventKind) -> bool {
        self.supported_event_types
            .iter()
            .any(|name| name == kind.as_str())
    }
}

/// Whether `s` is 1..=128 characters of `[A-Za-z0-9._-]`.
pub fn is_valid_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Whether `s` looks like an email: one `@`, a local part, a dotted domain, no spaces.
pub fn is_valid_email(s: &str) -> bool {
    if s.len() > MAX_EMAIL_LEN || s.chars().any(char::is_whitespace) {
        return false;
    }
    let mut parts = s.split('@');
    let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
}

/// Bytes of the canonical JSON (sorted keys, compact) of an event's data: what
/// `validation_rules.max_event_data_size` limits.
pub fn data_size(data: &Map<String, Value>) -> u64 {
    crate::domain::memento::canonical_json(&Value::Object(data.clone())).len() as u64
}

/// Merges `patch` into `target` at the top level: each key replaces the old value whole,
/// and a `null` removes the key. The one rule for state and metadata, here and in the
/// projection.
pub fn merge_top_level(target: &mut Map<String, Value>, patch: &Map<String, Value>) {
    for (key, value) in patch {
        if value.is_null() {
            target.remove(key);
        } else {
            target.insert(key.clone(), value.clone());
        }
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The object inside `value`, or a 422 naming `field`.
pub fn require_object(field: &str, value: Value) -> Result<Map<String, Value>, DomainError> {
    match value {
        Value::Object(map) => Ok(map),
        other => Err(DomainError::invalid(
            field,
            format!("must be a JSON object, got {}", json_type(&other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_sourcing_names_round_trip() {
        for kind in AggregateKind::ALL {
            assert_eq!(AggregateKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                AggregateKind::from_store_type(kind.store_type()),
                Some(kind)
            );
            assert!(owns(kind.store_type()));
            assert!(kind.accepts(kind.creation_event()));
            assert!(kind.accepts(EventKind::Custom));
            assert_eq!(
                serde_json::to_value(kind).expect("serialize"),
                json!(kind.as_str())
            );
        }
        for kind in EventKind::ALL {
            assert_eq!(EventKind::parse(kind.as_str()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).expect("serialize"),
                json!(kind.as_str())
            );
        }
        assert!(owns(SNAPSHOT_LOG));
        assert!(!owns("user"));
        assert_eq!(AggregateKind::parse("es-user"), None);
    }

    #[test]
    fn event_sourcing_policy_defaults_are_the_seed_and_partial_config_fills_in() {
        let p = EventSourcingPolicy::default();
        assert_eq!(p.validation_rules.max_event_data_size, 1_048_576);
        assert_eq!(p.validation_rules.max_aggregate_events, 10_000);
        assert_eq!(p.max_aggregates, 10_000);
        assert_eq!(p.supported_event_types.len(), 7);
        assert_eq!(p.supported_aggregate_types.len(), 4);
        assert!(p.validate().is_ok());
        let p: EventSourcingPolicy =
            serde_json::from_value(json!({"validation_rules": {"max_aggregate_events": 5}}))
                .expect("policy");
        assert_eq!(p.validation_rules.max_aggregate_events, 5);
        assert_eq!(p.validation_rules.max_event_data_size, 1_048_576);
        let bad = EventSourcingPolicy {
            supported_event_types: vec!["user_exploded".into()],
            ..Default::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn event_sourcing_emails_and_ids() {
        assert!(is_valid_email("john@example.com"));
        for bad in [
            "",
            "john",
            "@example.com",
            "john@",
            "a@b@c.d",
            "jo hn@x.io",
            "j@x.",
        ] {
            assert!(!is_valid_email(bad), "{bad}");
        }
        assert!(is_valid_id("user-123"));
        assert!(!is_valid_id("a/b"));
    }

    #[test]
    fn event_sourcing_owners() {
        let state = |value: Value| value.as_object().cloned().expect("obj");
        let alice = state(json!({"user_id": "alice"}));
        let none = state(json!({}));
        assert_eq!(owner(AggregateKind::User, "alice", &none), Some("alice"));
        assert_eq!(owner(AggregateKind::Order, "o1", &alice), Some("alice"));
        assert_eq!(owner(AggregateKind::Payment, "p1", &none), None);
        assert_eq!(owner(AggregateKind::Custom, "c1", &alice), None);
        assert!(visible_to(AggregateKind::Order, "o1", &alice, "alice"));
        assert!(!visible_to(AggregateKind::Order, "o1", &alice, "bob"));
        assert!(!visible_to(AggregateKind::User, "alice", &none, "bob"));
        assert!(!visible_to(AggregateKind::Payment, "p1", &none, "bob"));
        assert!(visible_to(AggregateKind::Custom, "c1", &alice, "bob"));
    }

    #[test]
    fn event_sourcing_merge_replaces_and_null_removes() {
        let mut target = json!({"a": 1, "b": {"x": 1}})
            .as_object()
            .cloned()
            .expect("obj");
        let patch = json!({"a": null, "b": {"y": 2}, "c": 3})
            .as_object()
            .cloned()
            .expect("obj");
        merge_top_level(&mut target, &patch);
        assert_eq!(Value::Object(target), json!({"b": {"y": 2}, "c": 3}));
    }
}
