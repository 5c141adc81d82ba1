//! The order aggregate: a user's items (product and quantity, priced when placed), a currency,
//! a total computed here from the prices, and a status that moves only along legal
//! transitions. While an order is pending or confirmed it holds stock on its products; the
//! write side reserves that stock when the order is placed and releases it when the order is
//! cancelled or deleted, in the same unit of work.

use std::collections::HashSet;
use std::fmt;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::payment::illegal_transition;
use super::{
    check_version, from_cents, to_cents, validate_currency, validate_id, validate_money,
    MAX_AMOUNT, ORDER,
};
use crate::domain::{DomainError, EventSourced};

/// Most items an order may have.
pub const MAX_ITEMS: usize = 100;
/// Largest quantity of one item.
pub const MAX_QUANTITY: i64 = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Shipped,
    Delivered,
    Cancelled,
}

impl OrderStatus {
    pub const ALL: [OrderStatus; 5] = [
        OrderStatus::Pending,
        OrderStatus::Confirmed,
        OrderStatus::Shipped,
        OrderStatus::Delivered,
        OrderStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Shipped => "shipped",
            OrderStatus::Delivered => "delivered",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    /// The statuses an order may move to from this one.
    pub fn next(self) -> &'static [OrderStatus] {
        use OrderStatus::*;
        match self {
            Pending => &[Confirmed, Cancelled],
            Confirmed => &[Shipped, Cancelled],
            Shipped => &[Delivered],
            Delivered | Cancelled => &[],
        }
    }

    pub fn can_move_to(self, to: OrderStatus) -> bool {
        self.next().contains(&to)
    }

    /// Whether an order in this status holds the stock it reserved (shipped stock is gone).
    pub fn holds_stock(self) -> bool {
        matches!(self, OrderStatus::Pending | OrderStatus::Confirmed)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One requested item with the price its product has now (loaded by the write side).
#[derive(Debug, Clone, PartialEq)]
pub struct PricedItem {
    pub product_id: String,
    pub quantity: i64,
    pub unit_price: f64,
}

/// One item of a placed order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderLine {
    pub product_id: String,
    pub quantity: u64,
    pub unit_price: f64,
}

/// Checks the requested items (product ids and quantities, in request order) before anything
/// is loaded: 1 to 100 items, valid ids, quantities 1..=10000, each product once. Errors
/// name the item (`items[1].quantity`).
pub fn validate_items<'a>(
    items: impl ExactSizeIterator<Item = (&'a str, i64)>,
) -> Result<(), DomainError> {
    if items.len() == 0 {
        return Err(DomainError::invalid(
            "items",
            "an order needs at least one item",
        ));
    }
    if items.len() > MAX_ITEMS {
        return Err(DomainError::invalid(
            "items",
            format!("an order may have at most {MAX_ITEMS} items"),
        ));
    }
    let mut seen = HashSet::new();
    for (index, (product_id, quantity)) in items.enumerate() {
        let field = |name: &str| format!("items[{index}].{name}");
        validate_id(&field("product_id"), product_id)?;
        if !seen.insert(product_id) {
            return Err(DomainError::invalid(
                &field("product_id"),
                format!("product {product_id} appears more than once; give one item per product"),
            ));
        }
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(DomainError::invalid(
                &field("quantity"),
                format!("quantity must be between 1 and {MAX_QUANTITY}"),
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub enum OrderCommand {
    PlaceOrder {
        id: String,
        user_id: String,
        currency: String,
        items: Vec<PricedItem>,
        at: DateTime<Utc>,
    },
    ChangeStatus {
        status: OrderStatus,
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
    DeleteOrder {
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum OrderEvent {
    OrderCreated {
        id: String,
        user_id: String,
        items: Vec<OrderLine>,
        currency: String,
        total_amount: f64,
        status: OrderStatus,
        at: DateTime<Utc>,
    },
    OrderUpdated {
        status: OrderStatus,
        previous_status: OrderStatus,
        at: DateTime<Utc>,
    },
    /// `status` is the status the order had when deleted.
    OrderDeleted {
        user_id: String,
        status: OrderStatus,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for OrderEvent {
    fn event_type(&self) -> String {
        match self {
            OrderEvent::OrderCreated { .. } => "order_created",
            OrderEvent::OrderUpdated { .. } => "order_updated",
            OrderEvent::OrderDeleted { .. } => "order_deleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Order state. Never created: `id` is empty. Deleted: `deleted` is true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Order {
    id: String,
    user_id: String,
    items: Vec<OrderLine>,
    currency: String,
    total_amount: f64,
    status: OrderStatus,
    deleted: bool,
    version: u64,
    created_at: Option<DateTime<Utc>>,
}

impl Default for Order {
    fn default() -> Self {
        Order {
            id: String::new(),
            user_id: String::new(),
            items: Vec::new(),
            currency: String::new(),
            total_amount: 0.0,
            status: OrderStatus::Pending,
            deleted: false,
            version: 0,
            created_at: None,
        }
    }
}

impl Order {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    pub fn items(&self) -> &[OrderLine] {
        &self.items
    }

    pub fn total_amount(&self) -> f64 {
        self.total_amount
    }

    pub fn status(&self) -> OrderStatus {
        self.status
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Created and not deleted.
    pub fn is_live(&self) -> bool {
        !self.id.is_empty() && !self.deleted
    }

    /// Whether this order still holds stock on its products.
    pub fn holds_stock(&self) -> bool {
        self.is_live() && self.status.holds_stock()
    }

    /// Whether `event`, decided on this order, gives its stock back to the products:
    /// cancelling or deleting an order that holds stock does; shipping consumes it.
    pub fn releases_stock(&self, event: &OrderEvent) -> bool {
        let stops_holding = matches!(
            event,
            OrderEvent::OrderUpdated {
                status: OrderStatus::Cancelled,
                ..
            } | OrderEvent::OrderDeleted { .. }
        );
        stops_holding && self.holds_stock()
    }

    fn require_live(&self) -> Result<(), DomainError> {
        if self.is_live() {
            Ok(())
        } else if self.id.is_empty() {
            Err(DomainError::NotFound("order".to_string()))
        } else {
            Err(DomainError::NotFound(format!("order {}", self.id)))
        }
    }

    fn decide(&self, command: OrderCommand) -> Result<Vec<OrderEvent>, DomainError> {
        match command {
            OrderCommand::PlaceOrder {
                id,
                user_id,
                currency,
                items,
                at,
            } => {
                validate_id("id", &id)?;
                if !self.id.is_empty() {
                    return Err(DomainError::AlreadyExists(format!("order {id}")));
                }
                validate_id("user_id", &user_id)?;
                validate_currency("currency", &currency)?;
                validate_items(
                    items
                        .iter()
                        .map(|item| (item.product_id.as_str(), item.quantity)),
                )?;
                let mut total_cents: i64 = 0;
                let mut lines = Vec::with_capacity(items.len());
                for (index, item) in items.into_iter().enumerate() {
                    validate_money(&format!("items[{index}].unit_price"), item.unit_price, true)?;
                    let quantity = item.quantity.unsigned_abs();
                    // Bounded: 1e11 cents × 1e4 × 100 items stays far below i64::MAX.
                    total_cents += to_cents(item.unit_price) * item.quantity;
                    lines.push(OrderLine {
                        product_id: item.product_id,
                        quantity,
                        unit_price: item.unit_price,
                    });
                }
                let total_amount = from_cents(total_cents);
                if total_amount > MAX_AMOUNT {
                    return Err(DomainError::invalid(
                        "items",
                        format!("the order's total {total_amount} exceeds {MAX_AMOUNT}"),
                    ));
                }
                Ok(vec![OrderEvent::OrderCreated {
                    id,
                    user_id,
                    items: lines,
                    currency,
                    total_amount,
                    status: OrderStatus::Pending,
                    at,
                }])
            }
            OrderCommand::ChangeStatus {
                status,
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                if !self.status.can_move_to(status) {
                    let legal: Vec<&str> = self.status.next().iter().map(|s| s.as_str()).collect();
                    return Err(illegal_transition(
                        &format!("order {}", self.id),
                        self.status.as_str(),
                        status.as_str(),
                        &legal,
                    ));
                }
                Ok(vec![OrderEvent::OrderUpdated {
                    status,
                    previous_status: self.status,
                    at,
                }])
            }
            OrderCommand::DeleteOrder {
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                Ok(vec![OrderEvent::OrderDeleted {
                    user_id: self.user_id.clone(),
                    status: self.status,
                    at,
                }])
            }
        }
    }
}

impl Aggregate for Order {
    const TYPE: &'static str = ORDER;
    type Command = OrderCommand;
    type Event = OrderEvent;
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
            OrderEvent::OrderCreated {
                id,
                user_id,
                items,
                currency,
                total_amount,
                status,
                at,
            } => {
                self.id = id;
                self.user_id = user_id;
                self.items = items;
                self.currency = currency;
                self.total_amount = total_amount;
                self.status = status;
                self.created_at = Some(at);
            }
            OrderEvent::OrderUpdated { status, .. } => self.status = status,
            OrderEvent::OrderDeleted { .. } => self.deleted = true,
        }
    }
}

impl EventSourced for Order {
    fn upcast(
        event_type: &str,
        event_version: i32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, DomainError> {
        super::upcast(ORDER, event_type, event_version, payload)
    }
}
