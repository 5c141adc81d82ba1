//! The generic aggregate: a JSON `state` object that the seed's events change. One state
//! type ([`GenericState`]) holds the rules; [`GenericAggregate<K>`] gives it one cqrs-es
//! aggregate type per kind (`es-user`, `es-order`, `es-payment`, `es-custom`), because
//! `Aggregate::TYPE` is a constant.

use std::fmt;
use std::marker::PhantomData;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use super::{
    data_size, is_valid_email, is_valid_id, json_type, merge_top_level, require_object,
    AggregateKind, EventKind, EventSourcingPolicy, MAX_ID_LEN, MAX_KEY_LEN, MAX_METADATA_KEYS,
    ORDER_STATUSES, PAYMENT_STATUSES,
};
use crate::domain::memento::projection::rfc3339;
use crate::domain::{DomainError, EventSourced};

/// One of the seed's events, as stored: its type, its `data` and `metadata`, and when the
/// command that made it was decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenericEvent {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub data: Map<String, Value>,
    pub metadata: Map<String, Value>,
    pub at: DateTime<Utc>,
}

impl DomainEvent for GenericEvent {
    fn event_type(&self) -> String {
        self.kind.as_str().to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum GenericCommand {
    /// `POST /aggregates`: the kind's creation event with `data` as the initial state.
    Create {
        id: String,
        data: Value,
        metadata: Map<String, Value>,
        /// How many aggregates of this context exist now (for `max_aggregates`).
        aggregates: u64,
        at: DateTime<Utc>,
    },
    /// `PUT /aggregates/{id}`: the events that make the state take `changes`.
    Update {
        id: String,
        changes: Value,
        metadata: Map<String, Value>,
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
    /// `POST /events/publish`: one event, named by the client.
    Publish {
        id: String,
        event_type: String,
        data: Value,
        metadata: Map<String, Value>,
        expected_version: Option<u64>,
        /// How many aggregates of this context exist now (used when the event creates).
        aggregates: u64,
        at: DateTime<Utc>,
    },
}

/// The state of any generic aggregate. Not created: `version` 0.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenericState {
    state: Map<String, Value>,
    version: u64,
    active: bool,
    created_at: Option<DateTime<Utc>>,
    updated_at: Option<DateTime<Utc>>,
    metadata: Map<String, Value>,
}

impl GenericState {
    pub fn is_created(&self) -> bool {
        self.version > 0
    }

    pub fn state(&self) -> &Map<String, Value> {
        &self.state
    }

    /// 0 before creation, then the number of events.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// False once a user is deleted.
    pub fn is_active(&self) -> bool {
        self.active
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at
    }

    pub fn updated_at(&self) -> Option<DateTime<Utc>> {
        self.updated_at
    }

    /// Every key the events' metadata carried, the latest value winning.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }

    /// The aggregate as the read API shows it; the projection builds the same document.
    pub fn document(&self, kind: AggregateKind, id: &str) -> Value {
        json!({
            "id": id,
            "type": kind,
            "version": self.version,
            "active": self.active,
            "state": self.state,
            "metadata": self.metadata,
            "created_at": self.created_at.map(rfc3339),
            "updated_at": self.updated_at.map(rfc3339),
        })
    }

    /// Pure: the first event creates (state = its data), later ones change the state by
    /// their type. Every rule was checked when the event was decided.
    pub fn apply(&mut self, event: &GenericEvent) {
        self.version += 1;
        self.updated_at = Some(event.at);
        merge_top_level(&mut self.metadata, &event.metadata);
        if self.version == 1 {
            self.state = Map::new();
            merge_top_level(&mut self.state, &event.data);
            self.active = true;
            self.created_at = Some(event.at);
            return;
        }
        match event.kind {
            EventKind::UserUpdated => {
                if let Some(Value::Object(changes)) = event.data.get("changes") {
                    merge_top_level(&mut self.state, changes);
                }
            }
            EventKind::UserDeleted => self.active = false,
            EventKind::OrderStatusChanged => {
                if let Some(status) = event.data.get("status") {
                    self.state.insert("status".into(), status.clone());
                }
            }
            EventKind::PaymentProcessed | EventKind::Custom => {
                merge_top_level(&mut self.state, &event.data);
            }
            // Only ever first events: the aggregate refuses them later.
            EventKind::UserCreated | EventKind::OrderCreated => {}
        }
    }

    /// Decides the events of a command on an aggregate of `kind`.
    pub fn decide(
        &self,
        kind: AggregateKind,
        command: GenericCommand,
        policy: &EventSourcingPolicy,
    ) -> Result<Vec<GenericEvent>, DomainError> {
        match command {
            GenericCommand::Create {
                id,
                data,
                metadata,
                aggregates,
                at,
            } => {
                supported(kind, kind.creation_event(), policy, "type")?;
                check_metadata(&metadata)?;
                validate_id(&id)?;
                if self.is_created() {
                    return Err(DomainError::AlreadyExists(format!("{kind} {id}")));
                }
                check_capacity(aggregates, policy)?;
                Ok(vec![creation(kind, data, metadata, at, policy)?])
            }
            GenericCommand::Publish {
                id,
                event_type,
                data,
                metadata,
                expected_version,
                aggregates,
                at,
            } => {
                let event_kind = EventKind::parse(&event_type).ok_or_else(|| {
                    DomainError::invalid(
                        "type",
                        format!(
                            "unknown event type `{event_type}`; one of {}",
                            list(EventKind::ALL.iter().map(|k| k.as_str()))
                        ),
                    )
                })?;
                supported(kind, event_kind, policy, "type")?;
                if !kind.accepts(event_kind) {
                    return Err(DomainError::invalid(
                        "type",
                        format!(
                            "a {event_kind} event does not fit a {kind} aggregate; a {kind} takes {}",
                            list(kind.event_types().iter().map(|k| k.as_str()))
                        ),
                    ));
                }
                check_metadata(&metadata)?;
                if !self.is_created() {
                    if event_kind != kind.creation_event() {
                        return Err(not_found(kind, &id));
                    }
                    self.check_version(expected_version)?;
                    validate_id(&id)?;
                    check_capacity(aggregates, policy)?;
                    return Ok(vec![creation(kind, data, metadata, at, policy)?]);
                }
                if matches!(event_kind, EventKind::UserCreated | EventKind::OrderCreated) {
                    return Err(DomainError::AlreadyExists(format!("{kind} {id}")));
                }
                self.check_version(expected_version)?;
                self.check_active(kind, &id)?;
                self.check_room(kind, &id, 1, policy)?;
                let data = require_object("data", data)?;
                let event = self.later_event(kind, &id, event_kind, data, metadata, at)?;
                check_size(&event.data, policy)?;
                Ok(vec![event])
            }
            GenericCommand::Update {
                id,
                changes,
                metadata,
                expected_version,
                at,
            } => {
                if !policy.supports_aggregate(kind) {
                    return Err(unsupported_aggregate(kind, "type"));
                }
                if !self.is_created() {
                    return Err(not_found(kind, &id));
                }
                self.check_version(expected_version)?;
                self.check_active(kind, &id)?;
                check_metadata(&metadata)?;
                let events = self.update_events(kind, changes, metadata, at)?;
                for event in &events {
                    supported(kind, event.kind, policy, "changes")?;
                    check_size(&event.data, policy)?;
                }
                self.check_room(kind, &id, events.len() as u64, policy)?;
                Ok(events)
            }
        }
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

    fn check_active(&self, kind: AggregateKind, id: &str) -> Result<(), DomainError> {
        if self.active {
            Ok(())
        } else {
            Err(DomainError::StateConflict(format!(
                "{kind} {id} was deleted; it takes no more events"
            )))
        }
    }

    fn check_room(
        &self,
        kind: AggregateKind,
        id: &str,
        adding: u64,
        policy: &EventSourcingPolicy,
    ) -> Result<(), DomainError> {
        let max = policy.validation_rules.max_aggregate_events;
        if self.version + adding > max {
            return Err(DomainError::StateConflict(format!(
                "{kind} {id} has {} events; validation_rules.max_aggregate_events is {max}",
                self.version
            )));
        }
        Ok(())
    }

    /// A published event on a created aggregate (not a creation event).
    fn later_event(
        &self,
        kind: AggregateKind,
        id: &str,
        event_kind: EventKind,
        mut data: Map<String, Value>,
        metadata: Map<String, Value>,
        at: DateTime<Utc>,
    ) -> Result<GenericEvent, DomainError> {
        match event_kind {
            EventKind::UserUpdated => {
                // `{"changes": {..}}` or the changed fields themselves; `previous` is ours.
                let (changes, field) = match data.remove("changes") {
                    Some(changes) => (require_object("data.changes", changes)?, "data.changes"),
                    None => (data, "data"),
                };
                check_keys(field, &changes)?;
                validate_fields(kind, &changes, field, false)?;
                let changed = self.changed(&changes);
                if changed.is_empty() {
                    return Err(nothing_changes(field));
                }
                Ok(self.user_updated(changed, metadata, at))
            }
            EventKind::UserDeleted => {
                if let Some(reason) = data.get("reason").filter(|r| !r.is_string()) {
                    return Err(DomainError::invalid(
                        "data.reason",
                        format!("must be a string, got {}", json_type(reason)),
                    ));
                }
                Ok(event(EventKind::UserDeleted, data, metadata, at))
            }
            EventKind::OrderStatusChanged => {
                let status = match data.get("status") {
                    Some(Value::String(status)) if ORDER_STATUSES.contains(&status.as_str()) => {
                        status.clone()
                    }
                    _ => {
                        return Err(DomainError::invalid(
                            "data.status",
                            format!("is required, one of {}", list(ORDER_STATUSES)),
                        ))
                    }
                };
                let previous = self.state.get("status").cloned().unwrap_or(Value::Null);
                if previous == Value::String(status.clone()) {
                    return Err(DomainError::StateConflict(format!(
                        "order {id} is already {status}"
                    )));
                }
                data.insert("previous_status".into(), previous);
                Ok(event(EventKind::OrderStatusChanged, data, metadata, at))
            }
            EventKind::PaymentProcessed | EventKind::Custom => {
                check_keys("data", &data)?;
                validate_fields(kind, &data, "data", false)?;
                if kind == AggregateKind::Order && data.contains_key("status") {
                    return Err(status_only_through_event("data.status"));
                }
                Ok(event(event_kind, data, metadata, at))
            }
            EventKind::UserCreated | EventKind::OrderCreated => {
                Err(DomainError::AlreadyExists(format!("{kind} {id}")))
            }
        }
    }

    /// The events of `PUT /aggregates/{id}`: a user gets `user_updated`, an order's status
    /// `order_status_changed`, and every other change a `custom` event.
    fn update_events(
        &self,
        kind: AggregateKind,
        changes: Value,
        metadata: Map<String, Value>,
        at: DateTime<Utc>,
    ) -> Result<Vec<GenericEvent>, DomainError> {
        let changes = require_object("changes", changes)?;
        if changes.is_empty() {
            return Err(DomainError::invalid(
                "changes",
                "must name at least one field to change",
            ));
        }
        check_keys("changes", &changes)?;
        validate_fields(kind, &changes, "changes", false)?;
        let mut changed = self.changed(&changes);
        if changed.is_empty() {
            return Err(nothing_changes("changes"));
        }
        let mut events = Vec::new();
        match kind {
            AggregateKind::User => events.push(self.user_updated(changed, metadata, at)),
            AggregateKind::Order => {
                if let Some(status) = changed.remove("status") {
                    let previous = self.state.get("status").cloned().unwrap_or(Value::Null);
                    let mut data = Map::new();
                    data.insert("status".into(), status);
                    data.insert("previous_status".into(), previous);
                    events.push(event(
                        EventKind::OrderStatusChanged,
                        data,
                        metadata.clone(),
                        at,
                    ));
                }
                if !changed.is_empty() {
                    events.push(event(EventKind::Custom, changed, metadata, at));
                }
            }
            AggregateKind::Payment | AggregateKind::Custom => {
                events.push(event(EventKind::Custom, changed, metadata, at));
            }
        }
        Ok(events)
    }

    /// The entries of `changes` that differ from the state (`null` equals an absent key).
    fn changed(&self, changes: &Map<String, Value>) -> Map<String, Value> {
        changes
            .iter()
            .filter(|(key, value)| self.state.get(*key).unwrap_or(&Value::Null) != *value)
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    fn user_updated(
        &self,
        changes: Map<String, Value>,
        metadata: Map<String, Value>,
        at: DateTime<Utc>,
    ) -> GenericEvent {
        let previous: Map<String, Value> = changes
            .keys()
            .map(|key| {
                let old = self.state.get(key).cloned().unwrap_or(Value::Null);
                (key.clone(), old)
            })
            .collect();
        let mut data = Map::new();
        data.insert("changes".into(), Value::Object(changes));
        data.insert("previous".into(), Value::Object(previous));
        event(EventKind::UserUpdated, data, metadata, at)
    }
}

fn event(
    kind: EventKind,
    data: Map<String, Value>,
    metadata: Map<String, Value>,
    at: DateTime<Utc>,
) -> GenericEvent {
    GenericEvent {
        kind,
        data,
        metadata,
        at,
    }
}

/// The kind's creation event, its data the initial state (an order starts `pending`).
fn creation(
    kind: AggregateKind,
    data: Value,
    metadata: Map<String, Value>,
    at: DateTime<Utc>,
    policy: &EventSourcingPolicy,
) -> Result<GenericEvent, DomainError> {
    let mut data = require_object("data", data)?;
    check_keys("data", &data)?;
    validate_fields(kind, &data, "data", true)?;
    if kind == AggregateKind::Order && !data.contains_key("status") {
        data.insert("status".into(), json!(ORDER_STATUSES[0]));
    }
    check_size(&data, policy)?;
    Ok(event(kind.creation_event(), data, metadata, at))
}

/// The field rules of each kind, on any data that becomes state (`base` names the object
/// in errors, such as `data` or `changes`).
fn validate_fields(
    kind: AggregateKind,
    fields: &Map<String, Value>,
    base: &str,
    creating: bool,
) -> Result<(), DomainError> {
    let field = |key: &str| format!("{base}.{key}");
    let one_of = |key: &str, allowed: &[&str]| -> Result<(), DomainError> {
        match fields.get(key) {
            None => Ok(()),
            Some(Value::String(s)) if allowed.contains(&s.as_str()) => Ok(()),
            Some(other) => Err(DomainError::invalid(
                &field(key),
                format!(
                    "must be one of {}, got {other}",
                    list(allowed.iter().copied())
                ),
            )),
        }
    };
    match kind {
        AggregateKind::User => match fields.get("email") {
            None if creating => Err(DomainError::invalid(
                &field("email"),
                "a user needs an email, e.g. \"john@example.com\"",
            )),
            None => Ok(()),
            Some(Value::String(email)) if is_valid_email(email) => Ok(()),
            Some(_) => Err(DomainError::invalid(
                &field("email"),
                "must be an email address, e.g. \"john@example.com\"",
            )),
        },
        AggregateKind::Order => {
            one_of("status", &ORDER_STATUSES)?;
            match fields.get("items") {
                None | Some(Value::Null) | Some(Value::Array(_)) => Ok(()),
                Some(other) => Err(DomainError::invalid(
                    &field("items"),
                    format!("must be an array, got {}", json_type(other)),
                )),
            }
        }
        AggregateKind::Payment => {
            match fields.get("amount") {
                None if creating => {
                    return Err(DomainError::invalid(
                        &field("amount"),
                        "a payment needs an amount, a number of at least 0",
                    ))
                }
                None => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(|n| n >= 0.0) => {}
                Some(_) => {
                    return Err(DomainError::invalid(
                        &field("amount"),
                        "must be a number of at least 0",
                    ))
                }
            }
            one_of("status", &PAYMENT_STATUSES)?;
            match fields.get("currency") {
                None | Some(Value::Null) | Some(Value::String(_)) => Ok(()),
                Some(other) => Err(DomainError::invalid(
                    &field("currency"),
                    format!("must be a string, got {}", json_type(other)),
                )),
            }
        }
        AggregateKind::Custom => Ok(()),
    }
}

fn supported(
    kind: AggregateKind,
    event_kind: EventKind,
    policy: &EventSourcingPolicy,
    field: &str,
) -> Result<(), DomainError> {
    if !policy.supports_aggregate(kind) {
        return Err(unsupported_aggregate(kind, "aggregate_type"));
    }
    if !policy.supports_event(event_kind) {
        return Err(DomainError::invalid(
            field,
            format!("the {event_kind} event type is not in supported_event_types"),
        ));
    }
    Ok(())
}

fn unsupported_aggregate(kind: AggregateKind, field: &str) -> DomainError {
    DomainError::invalid(
        field,
        format!("the {kind} aggregate type is not in supported_aggregate_types"),
    )
}

fn check_capacity(aggregates: u64, policy: &EventSourcingPolicy) -> Result<(), DomainError> {
    if aggregates >= policy.max_aggregates {
        return Err(DomainError::StateConflict(format!(
            "{aggregates} aggregates exist; max_aggregates is {}",
            policy.max_aggregates
        )));
    }
    Ok(())
}

fn check_size(data: &Map<String, Value>, policy: &EventSourcingPolicy) -> Result<(), DomainError> {
    let size = data_size(data);
    let max = policy.validation_rules.max_event_data_size;
    if size > max {
        return Err(DomainError::TooLarge(format!(
            "the event's data is {size} bytes; validation_rules.max_event_data_size is {max} bytes"
        )));
    }
    Ok(())
}

fn check_keys(base: &str, map: &Map<String, Value>) -> Result<(), DomainError> {
    match map.keys().find(|key| key.chars().count() > MAX_KEY_LEN) {
        Some(key) => Err(DomainError::invalid(
            base,
            format!(
                "key `{}…` is longer than {MAX_KEY_LEN} characters",
                key.chars().take(32).collect::<String>()
            ),
        )),
        None => Ok(()),
    }
}

fn check_metadata(metadata: &Map<String, Value>) -> Result<(), DomainError> {
    if metadata.len() > MAX_METADATA_KEYS {
        return Err(DomainError::invalid(
            "metadata",
            format!("has {} keys; at most {MAX_METADATA_KEYS}", metadata.len()),
        ));
    }
    check_keys("metadata", metadata)
}

fn validate_id(id: &str) -> Result<(), DomainError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "id",
            format!("must be 1 to {MAX_ID_LEN} characters of letters, digits, '.', '_' or '-'"),
        ))
    }
}

fn not_found(kind: AggregateKind, id: &str) -> DomainError {
    DomainError::NotFound(format!("{kind} {id}"))
}

fn nothing_changes(field: &str) -> DomainError {
    DomainError::invalid(field, "change nothing: every value equals the current one")
}

fn status_only_through_event(field: &str) -> DomainError {
    DomainError::invalid(
        field,
        "an order's status changes only through order_status_changed",
    )
}

fn list<'a>(names: impl IntoIterator<Item = &'a str>) -> String {
    names.into_iter().collect::<Vec<_>>().join(", ")
}

/// Which of the four types a [`GenericAggregate`] is.
pub trait Kind: fmt::Debug + Clone + Copy + Default + PartialEq + Send + Sync + 'static {
    const KIND: AggregateKind;
}

macro_rules! kinds {
    ($($(#[$doc:meta])* $marker:ident => $kind:ident),* $(,)?) => {
        $(
            $(#[$doc])*
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
            pub struct $marker;

            impl Kind for $marker {
                const KIND: AggregateKind = AggregateKind::$kind;
            }
        )*
    };
}

kinds! {
    /// Users (`es-user`).
    UserKind => User,
    /// Orders (`es-order`).
    OrderKind => Order,
    /// Payments (`es-payment`).
    PaymentKind => Payment,
    /// Anything else (`es-custom`).
    CustomKind => Custom,
}

/// A generic aggregate of kind `K`: the rules of [`GenericState`] under the store type
/// `K::KIND.store_type()`. Serialized as its state alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent, bound = "")]
pub struct GenericAggregate<K: Kind> {
    inner: GenericState,
    #[serde(skip)]
    kind: PhantomData<K>,
}

pub type UserAggregate = GenericAggregate<UserKind>;
pub type OrderAggregate = GenericAggregate<OrderKind>;
pub type PaymentAggregate = GenericAggregate<PaymentKind>;
pub type CustomAggregate = GenericAggregate<CustomKind>;

impl<K: Kind> GenericAggregate<K> {
    pub fn state(&self) -> &GenericState {
        &self.inner
    }

    pub fn into_state(self) -> GenericState {
        self.inner
    }
}

impl<K: Kind> Aggregate for GenericAggregate<K> {
    const TYPE: &'static str = K::KIND.store_type();
    type Command = GenericCommand;
    type Event = GenericEvent;
    type Error = DomainError;
    type Services = EventSourcingPolicy;

    async fn handle(
        &mut self,
        command: Self::Command,
        service: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.inner.decide(K::KIND, command, service)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        self.inner.apply(&event);
    }
}

impl<K: Kind> EventSourced for GenericAggregate<K> {}
