//! Support for the schema-fixture test (`kernel/tests/schema_fixtures.rs`): a realistic
//! sample of every (aggregate type, event type, version) this context stores, and how a
//! stored payload replays onto its aggregate.

use chrono::{DateTime, TimeZone, Utc};
use cqrs_es::{Aggregate, DomainEvent};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use super::{
    Order, OrderEvent, OrderLine, OrderStatus, Payment, PaymentEvent, PaymentStatus, Product,
    ProductEvent, User, UserEvent, ORDER, PAYMENT, PRODUCT, USER,
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

/// One event of every user variant, in an order that makes sense to apply.
pub fn user_samples() -> Vec<UserEvent> {
    vec![
        UserEvent::UserCreated {
            id: "user-1".into(),
            email: "ada@example.com".into(),
            name: "Ada Lovelace".into(),
            at: at(0),
        },
        UserEvent::UserUpdated {
            email: Some("ada@lovelace.org".into()),
            name: Some("Ada King".into()),
            previous_email: Some("ada@example.com".into()),
            at: at(1),
        },
        UserEvent::UserDeleted {
            email: "ada@lovelace.org".into(),
            at: at(2),
        },
    ]
}

/// One event of every payment variant.
pub fn payment_samples() -> Vec<PaymentEvent> {
    vec![
        PaymentEvent::PaymentCreated {
            id: "payment-1".into(),
            user_id: "user-1".into(),
            amount: 100.5,
            currency: "USD".into(),
            gateway: "stripe".into(),
            status: PaymentStatus::Pending,
            at: at(0),
        },
        PaymentEvent::PaymentUpdated {
            status: PaymentStatus::Processing,
            previous_status: PaymentStatus::Pending,
            amount: Some(120.25),
            currency: Some("EUR".into()),
            gateway: Some("adyen".into()),
            at: at(1),
        },
        PaymentEvent::PaymentDeleted {
            user_id: "user-1".into(),
            status: PaymentStatus::Completed,
            at: at(2),
        },
    ]
}

/// One event of every order variant.
pub fn order_samples() -> Vec<OrderEvent> {
    vec![
        OrderEvent::OrderCreated {
            id: "order-1".into(),
            user_id: "user-1".into(),
            items: vec![
                OrderLine {
                    product_id: "product-1".into(),
                    quantity: 2,
                    unit_price: 25.5,
                },
                OrderLine {
                    product_id: "product-2".into(),
                    quantity: 1,
                    unit_price: 9.99,
                },
            ],
            currency: "USD".into(),
            total_amount: 60.99,
            status: OrderStatus::Pending,
            at: at(0),
        },
        OrderEvent::OrderUpdated {
            status: OrderStatus::Confirmed,
            previous_status: OrderStatus::Pending,
            at: at(1),
        },
        OrderEvent::OrderDeleted {
            user_id: "user-1".into(),
            status: OrderStatus::Confirmed,
            at: at(2),
        },
    ]
}

/// One event of every product variant.
pub fn product_samples() -> Vec<ProductEvent> {
    vec![
        ProductEvent::ProductCreated {
            id: "product-1".into(),
            name: "Desk lamp".into(),
            category: "home".into(),
            price: 25.5,
            stock: 10,
            at: at(0),
        },
        ProductEvent::ProductUpdated {
            name: Some("Desk lamp XL".into()),
            category: Some("lighting".into()),
            price: Some(29.99),
            stock: Some(12),
            at: at(1),
        },
        ProductEvent::ProductStockReserved {
            order_id: "order-1".into(),
            quantity: 2,
            stock: 10,
            at: at(2),
        },
        ProductEvent::ProductStockReleased {
            order_id: "order-1".into(),
            quantity: 2,
            stock: 12,
            at: at(3),
        },
        ProductEvent::ProductDeleted { at: at(4) },
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
    stored::<User>(user_samples())
        .chain(stored::<Payment>(payment_samples()))
        .chain(stored::<Order>(order_samples()))
        .chain(stored::<Product>(product_samples()))
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
        USER => replay::<User>(payload, first(user_samples())?),
        PAYMENT => replay::<Payment>(payload, first(payment_samples())?),
        ORDER => replay::<Order>(payload, first(order_samples())?),
        PRODUCT => replay::<Product>(payload, first(product_samples())?),
        other => Err(format!("{other} is not an aggregate type of this context")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Exhaustive on purpose: a new variant does not compile until it is listed here, and
    /// the test below then asks for a sample of it.
    fn variant_counts() -> [(usize, usize); 4] {
        fn distinct<E>(events: Vec<E>, name: fn(&E) -> &'static str) -> usize {
            events.iter().map(name).collect::<BTreeSet<_>>().len()
        }
        [
            (
                distinct(user_samples(), |e| match e {
                    UserEvent::UserCreated { .. } => "created",
                    UserEvent::UserUpdated { .. } => "updated",
                    UserEvent::UserDeleted { .. } => "deleted",
                }),
                3,
            ),
            (
                distinct(payment_samples(), |e| match e {
                    PaymentEvent::PaymentCreated { .. } => "created",
                    PaymentEvent::PaymentUpdated { .. } => "updated",
                    PaymentEvent::PaymentDeleted { .. } => "deleted",
                }),
                3,
            ),
            (
                distinct(order_samples(), |e| match e {
                    OrderEvent::OrderCreated { .. } => "created",
                    OrderEvent::OrderUpdated { .. } => "updated",
                    OrderEvent::OrderDeleted { .. } => "deleted",
                }),
                3,
            ),
            (
                distinct(product_samples(), |e| match e {
                    ProductEvent::ProductCreated { .. } => "created",
                    ProductEvent::ProductUpdated { .. } => "updated",
                    ProductEvent::ProductDeleted { .. } => "deleted",
                    ProductEvent::ProductStockReserved { .. } => "reserved",
                    ProductEvent::ProductStockReleased { .. } => "released",
                }),
                5,
            ),
        ]
    }

    #[test]
    fn repository_every_variant_has_a_sample() {
        for (sampled, variants) in variant_counts() {
            assert_eq!(sampled, variants, "an event variant has no sample");
        }
    }

    #[test]
    fn repository_samples_cover_every_event_type_and_replay() {
        let samples = samples();
        let names: Vec<(&str, &str)> = samples
            .iter()
            .map(|s| (s.aggregate_type, s.event_type.as_str()))
            .collect();
        assert_eq!(names.len(), 14);
        for (aggregate_type, event_type) in [
            (USER, "user_deleted"),
            (PAYMENT, "payment_updated"),
            (ORDER, "order_created"),
            (PRODUCT, "product_stock_released"),
        ] {
            assert!(names.contains(&(aggregate_type, event_type)), "{names:?}");
        }
        for sample in samples {
            assert_eq!(sample.version, "1");
            replay_payload(sample.aggregate_type, sample.payload).expect("replays");
        }
        assert!(replay_payload(USER, serde_json::json!({"type": "user_created"})).is_err());
        assert!(replay_payload("caretaker", serde_json::json!({})).is_err());
    }
}
