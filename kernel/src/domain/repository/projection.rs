//! The repository read models: one collection per aggregate type, one document per
//! aggregate (id = aggregate id), carrying every field, the aggregate's `version` (the
//! sequence of the last event applied) and `created_at` / `updated_at`.
//!
//! Pure: every event becomes a list of `DocOp`s. Events carry absolute values (a product's
//! stock after a reservation, not the difference), so each op can be a plain merge.

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use super::order::OrderEvent;
use super::payment::PaymentEvent;
use super::product::ProductEvent;
use super::user::UserEvent;
use super::{ORDER, PAYMENT, PRODUCT, USER};
use crate::domain::memento::projection::rfc3339;
use crate::domain::projection::{forgotten_aggregate, Projection, ProjectionError};
use crate::envelope::RecordedEvent;
use crate::ports::DocOp;
use crate::spec::{FieldKind, FieldSpec};

pub const PROJECTION_NAME: &str = "repository";
pub const USERS: &str = "repository_users";
pub const PAYMENTS: &str = "repository_payments";
pub const ORDERS: &str = "repository_orders";
pub const PRODUCTS: &str = "repository_products";

const COLLECTIONS: &[&str] = &[USERS, PAYMENTS, ORDERS, PRODUCTS];

const ID: FieldSpec = FieldSpec::new("id", FieldKind::Text);
const VERSION: FieldSpec = FieldSpec::new("version", FieldKind::Number);
const CREATED_AT: FieldSpec = FieldSpec::new("created_at", FieldKind::Time);
const UPDATED_AT: FieldSpec = FieldSpec::new("updated_at", FieldKind::Time);

/// The fields of a user document that specifications may filter and sort on.
pub const USER_FIELDS: &[FieldSpec] = &[
    ID,
    FieldSpec::new("email", FieldKind::Text),
    FieldSpec::new("name", FieldKind::Text),
    VERSION,
    CREATED_AT,
    UPDATED_AT,
];

/// The fields of a payment document that specifications may filter and sort on.
pub const PAYMENT_FIELDS: &[FieldSpec] = &[
    ID,
    FieldSpec::new("user_id", FieldKind::Text),
    FieldSpec::new("amount", FieldKind::Number),
    FieldSpec::new("currency", FieldKind::Text),
    FieldSpec::new("gateway", FieldKind::Text),
    FieldSpec::new("status", FieldKind::Text),
    VERSION,
    CREATED_AT,
    UPDATED_AT,
];

/// The fields of an order document that specifications may filter and sort on (`items`,
/// an array, is not one of them).
pub const ORDER_FIELDS: &[FieldSpec] = &[
    ID,
    FieldSpec::new("user_id", FieldKind::Text),
    FieldSpec::new("currency", FieldKind::Text),
    FieldSpec::new("total_amount", FieldKind::Number),
    FieldSpec::new("item_count", FieldKind::Number),
    FieldSpec::new("status", FieldKind::Text),
    VERSION,
    CREATED_AT,
    UPDATED_AT,
];

/// The fields of a product document that specifications may filter and sort on.
pub const PRODUCT_FIELDS: &[FieldSpec] = &[
    ID,
    FieldSpec::new("name", FieldKind::Text),
    FieldSpec::new("category", FieldKind::Text),
    FieldSpec::new("price", FieldKind::Number),
    FieldSpec::new("stock", FieldKind::Number),
    VERSION,
    CREATED_AT,
    UPDATED_AT,
];

/// The collection holding the documents of an aggregate type of this context.
pub fn collection_of(aggregate_type: &str) -> Option<&'static str> {
    match aggregate_type {
        USER => Some(USERS),
        PAYMENT => Some(PAYMENTS),
        ORDER => Some(ORDERS),
        PRODUCT => Some(PRODUCTS),
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct RepositoryProjection;

impl Projection for RepositoryProjection {
    fn name(&self) -> &'static str {
        PROJECTION_NAME
    }

    fn collections(&self) -> &'static [&'static str] {
        COLLECTIONS
    }

    fn handles(&self, aggregate_type: &str) -> bool {
        super::owns(aggregate_type)
    }

    fn project(&self, event: &RecordedEvent) -> Result<Vec<DocOp>, ProjectionError> {
        if let Some((aggregate_type, aggregate_id)) = forgotten_aggregate(event) {
            return Ok(collection_of(&aggregate_type)
                .map(|collection| vec![tombstone(collection, &aggregate_id)])
                .unwrap_or_default());
        }
        let Some(collection) = collection_of(&event.aggregate_type) else {
            return Ok(Vec::new());
        };
        let Some(data) = &event.data else {
            // The payload was shredded: keep a tombstone where the aggregate's doc would be.
            let created = format!("{}_created", event.aggregate_type);
            return Ok(if event.event_type == created {
                vec![tombstone(collection, &event.aggregate_id)]
            } else {
                Vec::new()
            });
        };
        let doc = Doc {
            collection,
            id: &event.aggregate_id,
            version: event.sequence,
        };
        let ops = match event.aggregate_type.as_str() {
            USER => user_ops(&doc, parse(event, data)?),
            PAYMENT => payment_ops(&doc, parse(event, data)?),
            ORDER => order_ops(&doc, parse(event, data)?),
            _ => product_ops(&doc, parse(event, data)?),
        };
        Ok(ops)
    }
}

fn parse<E: DeserializeOwned>(event: &RecordedEvent, data: &Value) -> Result<E, ProjectionError> {
    serde::Deserialize::deserialize(data).map_err(|err| ProjectionError {
        projection: PROJECTION_NAME.to_string(),
        event_type: event.event_type.clone(),
        position: event.position,
        reason: err.to_string(),
    })
}

/// The document an event changes.
struct Doc<'a> {
    collection: &'static str,
    id: &'a str,
    version: u64,
}

impl Doc<'_> {
    /// The whole document of a created aggregate: `fields` plus id, version and times.
    fn create(&self, fields: Value, at: chrono::DateTime<chrono::Utc>) -> DocOp {
        let at = rfc3339(at);
        let mut doc = Map::new();
        doc.insert("id".into(), json!(self.id));
        if let Value::Object(fields) = fields {
            doc.extend(fields);
        }
        doc.insert("version".into(), json!(self.version));
        doc.insert("created_at".into(), json!(at));
        doc.insert("updated_at".into(), json!(at));
        DocOp::Upsert {
            collection: self.collection.to_string(),
            id: self.id.to_string(),
            doc: Value::Object(doc),
        }
    }

    /// Sets the fields of `changes` that are not null, plus version and `updated_at`.
    fn change(&self, changes: Value, at: chrono::DateTime<chrono::Utc>) -> DocOp {
        let mut patch: Map<String, Value> = match changes {
            Value::Object(fields) => fields.into_iter().filter(|(_, v)| !v.is_null()).collect(),
            _ => Map::new(),
        };
        patch.insert("version".into(), json!(self.version));
        patch.insert("updated_at".into(), json!(rfc3339(at)));
        DocOp::Merge {
            collection: self.collection.to_string(),
            id: self.id.to_string(),
            patch: Value::Object(patch),
        }
    }

    fn delete(&self) -> DocOp {
        DocOp::Delete {
            collection: self.collection.to_string(),
            id: self.id.to_string(),
        }
    }
}

fn user_ops(doc: &Doc, event: UserEvent) -> Vec<DocOp> {
    match event {
        UserEvent::UserCreated {
            email, name, at, ..
        } => vec![doc.create(json!({ "email": email, "name": name }), at)],
        UserEvent::UserUpdated {
            email, name, at, ..
        } => vec![doc.change(json!({ "email": email, "name": name }), at)],
        UserEvent::UserDeleted { .. } => vec![doc.delete()],
    }
}

fn payment_ops(doc: &Doc, event: PaymentEvent) -> Vec<DocOp> {
    match event {
        PaymentEvent::PaymentCreated {
            user_id,
            amount,
            currency,
            gateway,
            status,
            at,
            ..
        } => vec![doc.create(
            json!({
                "user_id": user_id,
                "amount": amount,
                "currency": currency,
                "gateway": gateway,
                "status": status,
            }),
            at,
        )],
        PaymentEvent::PaymentUpdated {
            status,
            amount,
            currency,
            gateway,
            at,
            ..
        } => vec![doc.change(
            json!({
                "status": status,
                "amount": amount,
                "currency": currency,
                "gateway": gateway,
            }),
            at,
        )],
        PaymentEvent::PaymentDeleted { .. } => vec![doc.delete()],
    }
}

fn order_ops(doc: &Doc, event: OrderEvent) -> Vec<DocOp> {
    match event {
        OrderEvent::OrderCreated {
            user_id,
            items,
            currency,
            total_amount,
            status,
            at,
            ..
        } => vec![doc.create(
            json!({
                "user_id": user_id,
                "item_count": items.len(),
                "items": items,
                "currency": currency,
                "total_amount": total_amount,
                "status": status,
            }),
            at,
        )],
        OrderEvent::OrderUpdated { status, at, .. } => {
            vec![doc.change(json!({ "status": status }), at)]
        }
        OrderEvent::OrderDeleted { .. } => vec![doc.delete()],
    }
}

fn product_ops(doc: &Doc, event: ProductEvent) -> Vec<DocOp> {
    match event {
        ProductEvent::ProductCreated {
            name,
            category,
            price,
            stock,
            at,
            ..
        } => vec![doc.create(
            json!({ "name": name, "category": category, "price": price, "stock": stock }),
            at,
        )],
        ProductEvent::ProductUpdated {
            name,
            category,
            price,
            stock,
            at,
        } => vec![doc.change(
            json!({ "name": name, "category": category, "price": price, "stock": stock }),
            at,
        )],
        ProductEvent::ProductStockReserved { stock, at, .. }
        | ProductEvent::ProductStockReleased { stock, at, .. } => {
            vec![doc.change(json!({ "stock": stock }), at)]
        }
        ProductEvent::ProductDeleted { .. } => vec![doc.delete()],
    }
}

fn tombstone(collection: &str, id: &str) -> DocOp {
    DocOp::Upsert {
        collection: collection.to_string(),
        id: id.to_string(),
        doc: json!({ "id": id, "tombstone": true }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::projection::{AGGREGATE_FORGOTTEN, SYSTEM_AGGREGATE};
    use crate::domain::repository::order::OrderLine;
    use crate::domain::repository::order::OrderStatus;
    use crate::domain::repository::payment::PaymentStatus;
    use chrono::{DateTime, TimeZone, Utc};
    use cqrs_es::DomainEvent;
    use serde::Serialize;
    use uuid::Uuid;

    fn t(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
            .single()
            .expect("valid date")
            + chrono::Duration::seconds(secs)
    }

    const AT0: &str = "2024-01-01T00:00:00.000000Z";
    const AT1: &str = "2024-01-01T00:00:01.000000Z";

    fn recorded(
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: u64,
        event_type: &str,
        data: Option<Value>,
    ) -> RecordedEvent {
        RecordedEvent {
            position: 100 + sequence,
            context: "repository",
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            sequence,
            event_type: event_type.to_string(),
            event_version: 1,
            event_id: Uuid::nil(),
            correlation_id: Uuid::nil(),
            causation_id: None,
            actor: None,
            recorded_at: t(0),
            data,
        }
    }

    fn event<E: DomainEvent + Serialize>(
        aggregate_type: &str,
        id: &str,
        sequence: u64,
        e: &E,
    ) -> RecordedEvent {
        let data = serde_json::to_value(e).expect("serialize");
        recorded(aggregate_type, id, sequence, &e.event_type(), Some(data))
    }

    fn project(e: &RecordedEvent) -> Vec<DocOp> {
        RepositoryProjection.project(e).expect("project")
    }

    fn upsert(collection: &str, id: &str, doc: Value) -> DocOp {
        DocOp::Upsert {
            collection: collection.into(),
            id: id.into(),
            doc,
        }
    }

    fn merge(collection: &str, id: &str, patch: Value) -> DocOp {
        DocOp::Merge {
            collection: collection.into(),
            id: id.into(),
            patch,
        }
    }

    fn delete(collection: &str, id: &str) -> DocOp {
        DocOp::Delete {
            collection: collection.into(),
            id: id.into(),
        }
    }

    #[test]
    fn repository_projection_identity() {
        let p = RepositoryProjection;
        assert_eq!(p.name(), "repository");
        assert_eq!(
            p.collections(),
            &[
                "repository_users",
                "repository_payments",
                "repository_orders",
                "repository_products"
            ]
        );
        for t in ["user", "payment", "order", "product"] {
            assert!(p.handles(t), "{t}");
        }
        assert!(!p.handles("caretaker"));
    }

    #[test]
    fn repository_projection_user_lifecycle() {
        let created = UserEvent::UserCreated {
            id: "u1".into(),
            email: "ada@example.com".into(),
            name: "Ada".into(),
            at: t(0),
        };
        assert_eq!(
            project(&event(USER, "u1", 1, &created)),
            vec![upsert(
                USERS,
                "u1",
                json!({
                    "id": "u1", "email": "ada@example.com", "name": "Ada", "version": 1,
                    "created_at": AT0, "updated_at": AT0,
                })
            )]
        );
        let updated = UserEvent::UserUpdated {
            email: None,
            name: Some("Ada L.".into()),
            previous_email: None,
            at: t(1),
        };
        assert_eq!(
            project(&event(USER, "u1", 2, &updated)),
            vec![merge(
                USERS,
                "u1",
                json!({"name": "Ada L.", "version": 2, "updated_at": AT1})
            )]
        );
        let deleted = UserEvent::UserDeleted {
            email: "ada@example.com".into(),
            at: t(2),
        };
        assert_eq!(
            project(&event(USER, "u1", 3, &deleted)),
            vec![delete(USERS, "u1")]
        );
    }

    #[test]
    fn repository_projection_payment_lifecycle() {
        let created = PaymentEvent::PaymentCreated {
            id: "p1".into(),
            user_id: "u1".into(),
            amount: 100.5,
            currency: "USD".into(),
            gateway: "stripe".into(),
            status: PaymentStatus::Pending,
            at: t(0),
        };
        assert_eq!(
            project(&event(PAYMENT, "p1", 1, &created)),
            vec![upsert(
                PAYMENTS,
                "p1",
                json!({
                    "id": "p1", "user_id": "u1", "amount": 100.5, "currency": "USD",
                    "gateway": "stripe", "status": "pending", "version": 1,
                    "created_at": AT0, "updated_at": AT0,
                })
            )]
        );
        let updated = PaymentEvent::PaymentUpdated {
            status: PaymentStatus::Processing,
            previous_status: PaymentStatus::Pending,
            amount: None,
            currency: None,
            gateway: Some("adyen".into()),
            at: t(1),
        };
        assert_eq!(
            project(&event(PAYMENT, "p1", 2, &updated)),
            vec![merge(
                PAYMENTS,
                "p1",
                json!({"status": "processing", "gateway": "adyen", "version": 2, "updated_at": AT1})
            )]
        );
        let deleted = PaymentEvent::PaymentDeleted {
            user_id: "u1".into(),
            status: PaymentStatus::Processing,
            at: t(2),
        };
        assert_eq!(
            project(&event(PAYMENT, "p1", 3, &deleted)),
            vec![delete(PAYMENTS, "p1")]
        );
    }

    #[test]
    fn repository_projection_order_lifecycle() {
        let created = OrderEvent::OrderCreated {
            id: "o1".into(),
            user_id: "u1".into(),
            items: vec![OrderLine {
                product_id: "p1".into(),
                quantity: 2,
                unit_price: 9.99,
            }],
            currency: "EUR".into(),
            total_amount: 19.98,
            status: OrderStatus::Pending,
            at: t(0),
        };
        assert_eq!(
            project(&event(ORDER, "o1", 1, &created)),
            vec![upsert(
                ORDERS,
                "o1",
                json!({
                    "id": "o1", "user_id": "u1",
                    "items": [{"product_id": "p1", "quantity": 2, "unit_price": 9.99}],
                    "item_count": 1, "currency": "EUR", "total_amount": 19.98,
                    "status": "pending", "version": 1,
                    "created_at": AT0, "updated_at": AT0,
                })
            )]
        );
        let updated = OrderEvent::OrderUpdated {
            status: OrderStatus::Confirmed,
            previous_status: OrderStatus::Pending,
            at: t(1),
        };
        assert_eq!(
            project(&event(ORDER, "o1", 2, &updated)),
            vec![merge(
                ORDERS,
                "o1",
                json!({"status": "confirmed", "version": 2, "updated_at": AT1})
            )]
        );
        let deleted = OrderEvent::OrderDeleted {
            user_id: "u1".into(),
            status: OrderStatus::Confirmed,
            at: t(2),
        };
        assert_eq!(
            project(&event(ORDER, "o1", 3, &deleted)),
            vec![delete(ORDERS, "o1")]
        );
    }

    #[test]
    fn repository_projection_product_lifecycle() {
        let created = ProductEvent::ProductCreated {
            id: "p1".into(),
            name: "Lamp".into(),
            category: "home".into(),
            price: 25.0,
            stock: 10,
            at: t(0),
        };
        assert_eq!(
            project(&event(PRODUCT, "p1", 1, &created)),
            vec![upsert(
                PRODUCTS,
                "p1",
                json!({
                    "id": "p1", "name": "Lamp", "category": "home", "price": 25.0,
                    "stock": 10, "version": 1, "created_at": AT0, "updated_at": AT0,
                })
            )]
        );
        let reserved = ProductEvent::ProductStockReserved {
            order_id: "o1".into(),
            quantity: 3,
            stock: 7,
            at: t(1),
        };
        assert_eq!(
            project(&event(PRODUCT, "p1", 2, &reserved)),
            vec![merge(
                PRODUCTS,
                "p1",
                json!({"stock": 7, "version": 2, "updated_at": AT1})
            )]
        );
        let released = ProductEvent::ProductStockReleased {
            order_id: "o1".into(),
            quantity: 3,
            stock: 10,
            at: t(1),
        };
        assert_eq!(
            project(&event(PRODUCT, "p1", 3, &released)),
            vec![merge(
                PRODUCTS,
                "p1",
                json!({"stock": 10, "version": 3, "updated_at": AT1})
            )]
        );
        let updated = ProductEvent::ProductUpdated {
            name: None,
            category: Some("garden".into()),
            price: Some(30.0),
            stock: None,
            at: t(1),
        };
        assert_eq!(
            project(&event(PRODUCT, "p1", 4, &updated)),
            vec![merge(
                PRODUCTS,
                "p1",
                json!({"category": "garden", "price": 30.0, "version": 4, "updated_at": AT1})
            )]
        );
        assert_eq!(
            project(&event(
                PRODUCT,
                "p1",
                5,
                &ProductEvent::ProductDeleted { at: t(2) }
            )),
            vec![delete(PRODUCTS, "p1")]
        );
    }

    #[test]
    fn repository_projection_forgotten_and_shredded() {
        let forget = |atype: &str, id: &str| {
            recorded(
                SYSTEM_AGGREGATE,
                &format!("{atype}/{id}"),
                1,
                AGGREGATE_FORGOTTEN,
                Some(json!({"aggregate_type": atype, "aggregate_id": id})),
            )
        };
        assert_eq!(
            project(&forget(USER, "u1")),
            vec![upsert(USERS, "u1", json!({"id": "u1", "tombstone": true}))]
        );
        assert_eq!(
            project(&forget(PRODUCT, "p1")),
            vec![upsert(
                PRODUCTS,
                "p1",
                json!({"id": "p1", "tombstone": true})
            )]
        );
        assert_eq!(project(&forget("caretaker", "ct")), vec![]);
        // Shredded payloads: the created event leaves a tombstone, the others nothing.
        assert_eq!(
            project(&recorded(ORDER, "o1", 1, "order_created", None)),
            vec![upsert(ORDERS, "o1", json!({"id": "o1", "tombstone": true}))]
        );
        assert_eq!(
            project(&recorded(PAYMENT, "p1", 2, "payment_updated", None)),
            vec![]
        );
        // Other contexts are not ours.
        assert_eq!(
            project(&recorded(
                "caretaker",
                "ct",
                1,
                "caretaker_created",
                Some(json!({}))
            )),
            vec![]
        );
    }

    #[test]
    fn repository_projection_bad_payload_is_an_error() {
        let err = RepositoryProjection
            .project(&recorded(
                USER,
                "u1",
                1,
                "user_created",
                Some(json!({"type": "user_created", "id": 5})),
            ))
            .expect_err("bad payload");
        assert_eq!(err.projection, "repository");
        assert_eq!(err.event_type, "user_created");
        assert_eq!(err.position, 101);
    }
}
