//! Support for the schema-fixture test (`kernel/tests/schema_fixtures.rs`): a realistic
//! sample of every (aggregate type, event type, version) this context stores, and how a
//! stored payload replays onto its aggregate.

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::{json, Map, Value};

use super::{
    Mediator, MediatorEvent, MediatorRegistry, MessageKind, RegistryEvent, MEDIATOR,
    MEDIATOR_REGISTRY,
};

/// One sample event as the engine stores it (the payload before the codec).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredSample {
    pub aggregate_type: &'static str,
    pub event_type: String,
    pub version: String,
    pub payload: Value,
}

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_704_067_200 + secs, 0)
        .single()
        .unwrap_or_default()
}

/// One event of every mediator variant, in an order that makes sense to apply.
pub fn mediator_samples() -> Vec<MediatorEvent> {
    let mut metadata = Map::new();
    metadata.insert("team".into(), json!("platform"));
    vec![
        MediatorEvent::MediatorCreated {
            name: "chat".into(),
            description: Some("Team chat".into()),
            metadata: metadata.clone(),
            at: at(0),
        },
        MediatorEvent::MediatorUpdated {
            description: Some("Team chat, all hands".into()),
            metadata: Some(metadata),
            at: at(1),
        },
        MediatorEvent::ColleagueRegistered {
            colleague_id: "colleague1".into(),
            name: "Colleague 1".into(),
            colleague_type: "service".into(),
            at: at(2),
        },
        MediatorEvent::MessageSent {
            message_id: "0190c5b2-1a2b-7c3d-8e4f-a1b2c3d4e5f6".into(),
            sender_id: "colleague1".into(),
            recipient_id: "colleague2".into(),
            kind: MessageKind::Message,
            message: json!("Hello from colleague 1"),
            sent_at: at(3),
        },
        MediatorEvent::MessageBroadcasted {
            message_id: "0190c5b2-1a2b-7c3d-8e4f-a1b2c3d4e5f7".into(),
            sender_id: "colleague1".into(),
            recipients: vec!["colleague2".into(), "colleague3".into()],
            kind: MessageKind::Event,
            message: json!({ "type": "user_created", "data": { "user_id": "123" } }),
            sent_at: at(4),
        },
        MediatorEvent::ColleagueUnregistered {
            colleague_id: "colleague1".into(),
            at: at(5),
        },
        MediatorEvent::MediatorDeleted {
            name: "chat".into(),
            at: at(6),
        },
    ]
}

/// One event of every registry variant.
pub fn registry_samples() -> Vec<RegistryEvent> {
    vec![
        RegistryEvent::MediatorNameClaimed {
            name: "chat".into(),
            at: at(0),
        },
        RegistryEvent::MediatorNameReleased {
            name: "chat".into(),
            at: at(6),
        },
    ]
}

fn stored<A: Aggregate>(events: Vec<A::Event>) -> impl Iterator<Item = StoredSample> {
    events.into_iter().map(|event| StoredSample {
        aggregate_type: A::TYPE,
        event_type: event.event_type(),
        version: event.event_version(),
        payload: serde_json::to_value(&event).unwrap_or_default(),
    })
}

/// One stored sample of every (aggregate type, event type, version) of this context.
pub fn samples() -> Vec<StoredSample> {
    stored::<Mediator>(mediator_samples())
        .chain(stored::<MediatorRegistry>(registry_samples()))
        .collect()
}

/// Deserializes a payload and applies it to a fresh aggregate and to one that its creation
/// sample created first.
fn replay<A>(payload: Value, creation: A::Event) -> Result<(), String>
where
    A: Aggregate,
    A::Event: DeserializeOwned + Serialize,
{
    let event: A::Event =
        serde_json::from_value(payload).map_err(|e| format!("no longer deserializes: {e}"))?;
    A::default().apply(event.clone());
    let mut created = A::default();
    created.apply(creation);
    created.apply(event);
    Ok(())
}

/// Deserializes an (already upcast) stored payload of `aggregate_type` and applies it, to a
/// fresh aggregate and to one its creation sample created first.
pub fn replay_payload(aggregate_type: &str, payload: Value) -> Result<(), String> {
    fn first<E>(events: Vec<E>) -> Result<E, String> {
        events
            .into_iter()
            .next()
            .ok_or_else(|| "no creation sample".to_string())
    }
    match aggregate_type {
        MEDIATOR => replay::<Mediator>(payload, first(mediator_samples())?),
        MEDIATOR_REGISTRY => replay::<MediatorRegistry>(payload, first(registry_samples())?),
        other => Err(format!("{other} is not an aggregate type of this context")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Exhaustive on purpose: a new variant does not compile until it is listed here, and
    /// the test below then asks for a sample of it.
    #[test]
    fn mediator_every_variant_has_a_sample() {
        let mediator: BTreeSet<_> = mediator_samples()
            .iter()
            .map(|e| match e {
                MediatorEvent::MediatorCreated { .. } => "created",
                MediatorEvent::MediatorUpdated { .. } => "updated",
                MediatorEvent::MediatorDeleted { .. } => "deleted",
                MediatorEvent::ColleagueRegistered { .. } => "registered",
                MediatorEvent::ColleagueUnregistered { .. } => "unregistered",
                MediatorEvent::MessageSent { .. } => "sent",
                MediatorEvent::MessageBroadcasted { .. } => "broadcasted",
            })
            .collect();
        assert_eq!(mediator.len(), 7, "a mediator event has no sample");
        let registry: BTreeSet<_> = registry_samples()
            .iter()
            .map(|e| match e {
                RegistryEvent::MediatorNameClaimed { .. } => "claimed",
                RegistryEvent::MediatorNameReleased { .. } => "released",
            })
            .collect();
        assert_eq!(registry.len(), 2, "a registry event has no sample");
    }

    #[test]
    fn mediator_samples_replay() {
        let samples = samples();
        assert_eq!(samples.len(), 9);
        for sample in samples {
            assert_eq!(sample.version, "1");
            replay_payload(sample.aggregate_type, sample.payload).expect("replays");
        }
        assert!(replay_payload(MEDIATOR, json!({"type": "mediator_created"})).is_err());
        assert!(replay_payload("user", json!({})).is_err());
    }
}
