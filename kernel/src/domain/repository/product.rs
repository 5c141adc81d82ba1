//! The product aggregate: a name, a category, a price and a stock that never goes below 0.
//! Orders reserve stock (and give it back when cancelled) in the same unit of work as the
//! order itself, so a product's stream is also the lock on its stock.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::{
    check_version, validate_id, validate_money, validate_text, MAX_LABEL_LEN, MAX_NAME_LEN,
    MAX_STOCK, PRODUCT,
};
use crate::domain::{DomainError, EventSourced};

#[derive(Debug, Clone, PartialEq)]
pub enum ProductCommand {
    CreateProduct {
        id: String,
        name: String,
        category: String,
        price: f64,
        stock: i64,
        at: DateTime<Utc>,
    },
    /// Changes the fields that are given (at least one); `stock` sets the stock outright.
    UpdateProduct {
        name: Option<String>,
        category: Option<String>,
        price: Option<f64>,
        stock: Option<i64>,
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
    DeleteProduct {
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
    /// Takes `quantity` out of the stock for an order (`quantity` is the field blamed).
    ReserveStock {
        order_id: String,
        quantity: i64,
        at: DateTime<Utc>,
    },
    /// Gives back what an order reserved. A deleted product has no stock to give back to:
    /// that is not an error, it decides nothing.
    ReleaseStock {
        order_id: String,
        quantity: u64,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProductEvent {
    ProductCreated {
        id: String,
        name: String,
        category: String,
        price: f64,
        stock: u64,
        at: DateTime<Utc>,
    },
    /// Carries the fields that changed.
    ProductUpdated {
        name: Option<String>,
        category: Option<String>,
        price: Option<f64>,
        stock: Option<u64>,
        at: DateTime<Utc>,
    },
    ProductDeleted {
        at: DateTime<Utc>,
    },
    /// `stock` is the stock after the reservation.
    ProductStockReserved {
        order_id: String,
        quantity: u64,
        stock: u64,
        at: DateTime<Utc>,
    },
    /// `stock` is the stock after the release.
    ProductStockReleased {
        order_id: String,
        quantity: u64,
        stock: u64,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for ProductEvent {
    fn event_type(&self) -> String {
        match self {
            ProductEvent::ProductCreated { .. } => "product_created",
            ProductEvent::ProductUpdated { .. } => "product_updated",
            ProductEvent::ProductDeleted { .. } => "product_deleted",
            ProductEvent::ProductStockReserved { .. } => "product_stock_reserved",
            ProductEvent::ProductStockReleased { .. } => "product_stock_released",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// A stock in `0..=MAX_STOCK`.
fn validate_stock(field: &str, stock: i64) -> Result<u64, DomainError> {
    if !(0..=MAX_STOCK).contains(&stock) {
        return Err(DomainError::invalid(
            field,
            format!("{field} must be between 0 and {MAX_STOCK}"),
        ));
    }
    Ok(stock.unsigned_abs())
}

/// Product state. Never created: `id` is empty. Deleted: `deleted` is true.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Product {
    id: String,
    name: String,
    category: String,
    price: f64,
    stock: u64,
    deleted: bool,
    version: u64,
    created_at: Option<DateTime<Utc>>,
}

impl Product {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn category(&self) -> &str {
        &self.category
    }

    pub fn price(&self) -> f64 {
        self.price
    }

    pub fn stock(&self) -> u64 {
        self.stock
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    /// Created and not deleted.
    pub fn is_live(&self) -> bool {
        !self.id.is_empty() && !self.deleted
    }

    fn require_live(&self) -> Result<(), DomainError> {
        if self.is_live() {
            Ok(())
        } else if self.id.is_empty() {
            Err(DomainError::NotFound("product".to_string()))
        } else {
            Err(DomainError::NotFound(format!("product {}", self.id)))
        }
    }

    fn decide(&self, command: ProductCommand) -> Result<Vec<ProductEvent>, DomainError> {
        match command {
            ProductCommand::CreateProduct {
                id,
                name,
                category,
                price,
                stock,
                at,
            } => {
                validate_id("id", &id)?;
                if !self.id.is_empty() {
                    return Err(DomainError::AlreadyExists(format!("product {id}")));
                }
                let name = validate_text("name", &name, MAX_NAME_LEN)?;
                let category = validate_text("category", &category, MAX_LABEL_LEN)?;
                validate_money("price", price, true)?;
                let stock = validate_stock("stock", stock)?;
                Ok(vec![ProductEvent::ProductCreated {
                    id,
                    name,
                    category,
                    price,
                    stock,
                    at,
                }])
            }
            ProductCommand::UpdateProduct {
                name,
                category,
                price,
                stock,
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                if name.is_none() && category.is_none() && price.is_none() && stock.is_none() {
                    return Err(DomainError::Invalid {
                        field: None,
                        message: "nothing to update: give name, category, price or stock"
                            .to_string(),
                    });
                }
                let name = name
                    .as_deref()
                    .map(|n| validate_text("name", n, MAX_NAME_LEN))
                    .transpose()?;
                let category = category
                    .as_deref()
                    .map(|c| validate_text("category", c, MAX_LABEL_LEN))
                    .transpose()?;
                if let Some(price) = price {
                    validate_money("price", price, true)?;
                }
                let stock = stock.map(|s| validate_stock("stock", s)).transpose()?;
                Ok(vec![ProductEvent::ProductUpdated {
                    name,
                    category,
                    price,
                    stock,
                    at,
                }])
            }
            ProductCommand::DeleteProduct {
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                Ok(vec![ProductEvent::ProductDeleted { at }])
            }
            ProductCommand::ReserveStock {
                order_id,
                quantity,
                at,
            } => {
                self.require_live()?;
                if quantity < 1 {
                    return Err(DomainError::invalid(
                        "quantity",
                        "quantity must be at least 1",
                    ));
                }
                let wanted = quantity.unsigned_abs();
                if wanted > self.stock {
                    return Err(DomainError::invalid(
                        "quantity",
                        format!(
                            "only {} of product {} in stock; {wanted} requested",
                            self.stock, self.id
                        ),
                    ));
                }
                Ok(vec![ProductEvent::ProductStockReserved {
                    order_id,
                    quantity: wanted,
                    stock: self.stock - wanted,
                    at,
                }])
            }
            ProductCommand::ReleaseStock {
                order_id,
                quantity,
                at,
            } => {
                if !self.is_live() || quantity == 0 {
                    return Ok(vec![]);
                }
                Ok(vec![ProductEvent::ProductStockReleased {
                    order_id,
                    quantity,
                    stock: self.stock.saturating_add(quantity),
                    at,
                }])
            }
        }
    }
}

impl Aggregate for Product {
    const TYPE: &'static str = PRODUCT;
    type Command = ProductCommand;
    type Event = ProductEvent;
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
            ProductEvent::ProductCreated {
                id,
                name,
                category,
                price,
                stock,
                at,
            } => {
                self.id = id;
                self.name = name;
                self.category = category;
                self.price = price;
                self.stock = stock;
                self.created_at = Some(at);
            }
            ProductEvent::ProductUpdated {
                name,
                category,
                price,
                stock,
                ..
            } => {
                if let Some(name) = name {
                    self.name = name;
                }
                if let Some(category) = category {
                    self.category = category;
                }
                if let Some(price) = price {
                    self.price = price;
                }
                if let Some(stock) = stock {
                    self.stock = stock;
                }
            }
            ProductEvent::ProductDeleted { .. } => self.deleted = true,
            ProductEvent::ProductStockReserved { stock, .. }
            | ProductEvent::ProductStockReleased { stock, .. } => self.stock = stock,
        }
    }
}

impl EventSourced for Product {
    fn upcast(
        event_type: &str,
        event_version: i32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, DomainError> {
        super::upcast(PRODUCT, event_type, event_version, payload)
    }
}
