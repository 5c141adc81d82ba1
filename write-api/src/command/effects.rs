//! What each command type does, as a unit of work on the aggregates it acts on (the
//! repository's users, payments, orders and products, or this context's own records), and
//! its compensation for undo. Nothing here commits: the runner adds the command's own outcome
//! event to the same unit of work.

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use kernel::domain::command::spec::{
    AuditSpec, InventoryAction, InventorySpec, NotificationSpec, OrderAction, OrderSpec,
    PaymentSpec, RefundSpec, SystemSpec, UserAction, UserSpec,
};
use kernel::domain::command::{
    AuditEntry, Command, CommandSpec, CommandType, Notification, Record, SystemOperation, AUDIT,
    NOTIFICATION, SYSTEM,
};
use kernel::domain::repository::{
    to_cents, Order, OrderCommand, OrderStatus, Payment, PaymentCommand, PaymentStatus, PricedItem,
    Product, ProductCommand, User, UserCommand, MAX_STOCK, ORDER, PAYMENT, PRODUCT, USER,
};
use kernel::domain::{DomainError, EventSourced};
use kernel::engine::{Decision, Engine, Loaded, UnitOfWork};
use kernel::KernelError;

use crate::repository::{for_item, push_user, require_user};

/// What a command's effect did (its events are in the unit of work it was given).
pub struct Effect {
    /// What was done (`aggregate_type`, `aggregate_id`, ...).
    pub result: Value,
    pub undoable: bool,
    /// What undo needs (the values the command overwrote).
    pub undo: Option<Value>,
}

/// Decides several commands on one aggregate in a row, as one decision.
async fn chain<A>(
    aggregate_id: &str,
    loaded: Loaded<A>,
    commands: Vec<A::Command>,
) -> Result<Decision<A>, KernelError>
where
    A: EventSourced<Services = ()>,
    KernelError: From<A::Error>,
{
    let base_sequence = loaded.sequence;
    let mut loaded = loaded;
    let mut events = Vec::new();
    for command in commands {
        let decision = Engine::decide_on(aggregate_id, loaded, command, &()).await?;
        let sequence = decision.base_sequence + decision.events.len() as u64;
        events.extend(decision.events);
        loaded = Loaded {
            state: decision.state_after,
            sequence,
            last_event_id: None,
            from_snapshot: false,
        };
    }
    Ok(Decision {
        aggregate_id: aggregate_id.to_string(),
        base_sequence,
        events,
        state_after: loaded.state,
    })
}

fn rejected(field: &str, message: impl Into<String>) -> KernelError {
    KernelError::Rejected(DomainError::invalid(field, message))
}

/// Runs a command's effect. Its id names what it creates (a payment, a notification), so
/// running it again after a crash cannot create a second one.
pub async fn execute(
    engine: &Engine,
    uow: &mut UnitOfWork,
    command_id: &str,
    spec: &CommandSpec,
    at: DateTime<Utc>,
) -> Result<Effect, KernelError> {
    match spec {
        CommandSpec::Payment(p) => payment(engine, uow, command_id, p, at).await,
        CommandSpec::User(u) => user(engine, uow, u, at).await,
        CommandSpec::Order(o) => order(engine, uow, command_id, o, at).await,
        CommandSpec::Inventory(i) => inventory(engine, uow, i, at).await,
        CommandSpec::Refund(r) => refund(engine, uow, r, at).await,
        CommandSpec::Notification(n) => notification(engine, uow, command_id, n, at).await,
        CommandSpec::Audit(a) => audit(engine, uow, command_id, a, at).await,
        CommandSpec::System(s) => system(engine, uow, command_id, s, at).await,
    }
}

/// Moves an order along a status change and, when it stops holding stock, gives the stock
/// back to its products (as the repository's order routes do). Only an order of `owner`
/// (when given) is changed; another user's order is not found.
async fn change_order(
    engine: &Engine,
    uow: &mut UnitOfWork,
    owner: Option<&str>,
    order_id: &str,
    status: OrderStatus,
    at: DateTime<Utc>,
) -> Result<(), KernelError> {
    let loaded = engine.load::<Order>(order_id).await?;
    if owner.is_some_and(|owner| owner != loaded.state.user_id()) {
        return Err(DomainError::NotFound("order".to_string()).into());
    }
    let before = loaded.state.clone();
    let change = OrderCommand::ChangeStatus {
        status,
        expected_version: None,
        at,
    };
    let decision = Engine::decide_on(order_id, loaded, change, &()).await?;
    let releases = decision
        .events
        .iter()
        .any(|event| before.releases_stock(event));
    uow.push(decision)?;
    if releases {
        for line in before.items() {
            let release = ProductCommand::ReleaseStock {
                order_id: order_id.to_string(),
                quantity: line.quantity,
                at,
            };
            match engine
                .decide::<Product>(&line.product_id, release, &())
                .await
            {
                Ok(decision) => uow.push(decision)?,
                // A forgotten product has no stock to give back to.
                Err(KernelError::Forgotten(_)) => {}
                Err(other) => return Err(other),
            }
        }
    }
    Ok(())
}

async fn payment(
    engine: &Engine,
    uow: &mut UnitOfWork,
    command_id: &str,
    p: &PaymentSpec,
    at: DateTime<Utc>,
) -> Result<Effect, KernelError> {
    require_user(engine, "user_id", &p.user_id).await?;
    let id = command_id;
    let loaded = engine.load::<Payment>(id).await?;
    let status = |status| PaymentCommand::UpdatePayment {
        status: Some(status),
        amount: None,
        currency: None,
        gateway: None,
        expected_version: None,
        at,
    };
    let decision = chain(
        id,
        loaded,
        vec![
            PaymentCommand::CreatePayment {
                id: id.to_string(),
                user_id: p.user_id.clone(),
                amount: p.amount,
                currency: p.currency.clone(),
                gateway: p.gateway.clone(),
                at,
            },
            status(PaymentStatus::Processing),
            status(PaymentStatus::Completed),
        ],
    )
    .await?;
    uow.push(decision)?;
    Ok(Effect {
        result: json!({
            "aggregate_type": PAYMENT, "aggregate_id": id, "user_id": p.user_id,
            "amount": p.amount, "currency": p.currency, "payment_method": p.payment_method,
            "gateway": p.gateway, "status": "completed",
        }),
        undoable: true,
        undo: Some(json!({ "payment_id": id })),
    })
}

async fn user(
    engine: &Engine,
    uow: &mut UnitOfWork,
    u: &UserSpec,
    at: DateTime<Utc>,
) -> Result<Effect, KernelError> {
    let id = u.user_id.as_str();
    let loaded = engine.load::<User>(id).await?;
    let before = loaded.state.clone();
    let (command, undoable, undo) = match u.action {
        UserAction::Create => (
            UserCommand::CreateUser {
                id: id.to_string(),
                email: u.data.email.clone().unwrap_or_default(),
                name: u.data.name.clone().unwrap_or_default(),
                at,
            },
            true,
            Some(json!({ "user_id": id })),
        ),
        UserAction::Update => {
            // The values the update overwrites, to put back on undo.
            let mut previous = Map::new();
            previous.insert("user_id".into(), json!(id));
            if u.data.name.is_some() {
                previous.insert("name".into(), json!(before.name()));
            }
            if u.data.email.is_some() {
                previous.insert("email".into(), json!(before.email()));
            }
            (
                UserCommand::UpdateUser {
                    email: u.data.email.clone(),
                    name: u.data.name.clone(),
                    expected_version: None,
                    at,
                },
                true,
                Some(Value::Object(previous)),
            )
        }
        UserAction::Delete => (
            UserCommand::DeleteUser {
                expected_version: None,
                at,
            },
            false,
            None,
        ),
    };
    let decision = Engine::decide_on(id, loaded, command, &()).await?;
    push_user(uow, decision)?;
    let action = serde_json::to_value(u.action)?;
    Ok(Effect {
        result: json!({ "aggregate_type": USER, "aggregate_id": id, "action": action }),
        undoable,
        undo,
    })
}

async fn order(
    engine: &Engine,
    uow: &mut UnitOfWork,
    command_id: &str,
    o: &OrderSpec,
    at: DateTime<Utc>,
) -> Result<Effect, KernelError> {
    let action = serde_json::to_value(o.action)?;
    if o.action != OrderAction::Create {
        let id = o.order_id.clone().unwrap_or_default();
        let status = match o.action {
            OrderAction::Confirm => OrderStatus::Confirmed,
            OrderAction::Ship => OrderStatus::Shipped,
            OrderAction::Deliver => OrderStatus::Delivered,
            _ => OrderStatus::Cancelled,
        };
        // The order must belong to the command's user; another user's order is not found.
        change_order(engine, uow, Some(&o.user_id), &id, status, at).await?;
        return Ok(Effect {
            result: json!({
                "aggregate_type": ORDER, "aggregate_id": id, "action": action,
                "status": status.as_str(),
            }),
            undoable: false,
            undo: None,
        });
    }
    let id = o.order_id.clone().unwrap_or_else(|| command_id.to_string());
    require_user(engine, "user_id", &o.user_id).await?;
    let mut products = Vec::with_capacity(o.items.len());
    let mut priced = Vec::with_capacity(o.items.len());
    for (index, item) in o.items.iter().enumerate() {
        let product = match engine.load::<Product>(&item.product_id).await {
            Ok(product) if product.state.is_live() => product,
            Ok(_) | Err(KernelError::Forgotten(_)) => {
                return Err(rejected(
                    &format!("items[{index}].product_id"),
                    format!("product {} does not exist", item.product_id),
                ))
            }
            Err(other) => return Err(other),
        };
        priced.push(PricedItem {
            product_id: item.product_id.clone(),
            quantity: item.quantity,
            unit_price: product.state.price(),
        });
        products.push(product);
    }
    let place = OrderCommand::PlaceOrder {
        id: id.clone(),
        user_id: o.user_id.clone(),
        currency: o.currency.clone().unwrap_or_default(),
        items: priced,
        at,
    };
    let decision = engine.decide::<Order>(&id, place, &()).await?;
    let total = decision.state_after.total_amount();
    if let Some(expected) = o.total_amount {
        if to_cents(expected) != to_cents(total) {
            return Err(rejected(
                "total_amount",
                format!("total_amount {expected} differs from the order's total {total} at the products' current prices"),
            ));
        }
    }
    uow.push(decision)?;
    for (index, (item, product)) in o.items.iter().zip(products).enumerate() {
        let reserve = ProductCommand::ReserveStock {
            order_id: id.clone(),
            quantity: item.quantity,
            at,
        };
        let decision = Engine::decide_on(&item.product_id, product, reserve, &())
            .await
            .map_err(for_item(index))?;
        uow.push(decision)?;
    }
    Ok(Effect {
        result: json!({
            "aggregate_type": ORDER, "aggregate_id": id, "action": action,
            "status": OrderStatus::Pending.as_str(), "total_amount": total,
        }),
        undoable: true,
        undo: Some(json!({ "order_id": id })),
    })
}

/// A live product, or a 422 naming `product_id`.
async fn live_product(engine: &Engine, id: &str) -> Result<Loaded<Product>, KernelError> {
    match engine.load::<Product>(id).await {
        Ok(product) if product.state.is_live() => Ok(product),
        Ok(_) | Err(KernelError::Forgotten(_)) => Err(rejected(
            "product_id",
            format!("product {id} does not exist"),
        )),
        Err(other) => Err(other),
    }
}

fn set_stock(stock: u64, at: DateTime<Utc>) -> ProductCommand {
    ProductCommand::UpdateProduct {
        name: None,
        category: None,
        price: None,
        stock: Some(stock as i64),
        expected_version: None,
        at,
    }
}

async fn inventory(
    engine: &Engine,
    uow: &mut UnitOfWork,
    i: &InventorySpec,
    at: DateTime<Utc>,
) -> Result<Effect, KernelError> {
    let loaded = live_product(engine, &i.product_id).await?;
    let previous = loaded.state.stock();
    let quantity = i.quantity.unsigned_abs();
    let stock = match i.action {
        InventoryAction::Add => previous
            .checked_add(quantity)
            .filter(|s| *s <= MAX_STOCK as u64)
            .ok_or_else(|| {
                rejected(
                    "quantity",
                    format!("the stock would exceed {MAX_STOCK} (it is {previous})"),
                )
            })?,
        InventoryAction::Remove => previous.checked_sub(quantity).ok_or_else(|| {
            rejected(
                "quantity",
                format!(
                    "only {previous} of product {} in stock; cannot remove {quantity}",
                    i.product_id
                ),
            )
        })?,
        InventoryAction::Set => quantity,
    };
    let decision = Engine::decide_on(&i.product_id, loaded, set_stock(stock, at), &()).await?;
    uow.push(decision)?;
    let action = serde_json::to_value(i.action)?;
    Ok(Effect {
        result: json!({
            "aggregate_type": PRODUCT, "aggregate_id": i.product_id, "action": action,
            "quantity": quantity, "previous_stock": previous, "stock": stock,
        }),
        undoable: true,
        undo: Some(json!({
            "product_id": i.product_id, "action": action, "quantity": quantity,
            "previous_stock": previous,
        })),
    })
}

async fn refund(
    engine: &Engine,
    uow: &mut UnitOfWork,
    r: &RefundSpec,
    at: DateTime<Utc>,
) -> Result<Effect, KernelError> {
    let loaded = match engine.load::<Payment>(&r.payment_id).await {
        Ok(payment) if payment.state.is_live() => payment,
        Ok(_) | Err(KernelError::Forgotten(_)) => {
            return Err(rejected(
                "payment_id",
                format!("payment {} does not exist", r.payment_id),
            ))
        }
        Err(other) => return Err(other),
    };
    let payment = &loaded.state;
    if payment.user_id() != r.user_id {
        return Err(rejected(
            "user_id",
            format!("payment {} belongs to another user", r.payment_id),
        ));
    }
    if to_cents(payment.amount()) != to_cents(r.amount) {
        return Err(rejected(
            "amount",
            format!(
                "amount must equal the payment's amount, {}",
                payment.amount()
            ),
        ));
    }
    let currency = serde_json::to_value(payment)?
        .get("currency")
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_default();
    if currency != r.currency {
        return Err(rejected(
            "currency",
            format!("currency must equal the payment's currency, {currency}"),
        ));
    }
    let refund = PaymentCommand::UpdatePayment {
        status: Some(PaymentStatus::Refunded),
        amount: None,
        currency: None,
        gateway: None,
        expected_version: None,
        at,
    };
    let decision = Engine::decide_on(&r.payment_id, loaded, refund, &()).await?;
    uow.push(decision)?;
    Ok(Effect {
        result: json!({
            "aggregate_type": PAYMENT, "aggregate_id": r.payment_id, "status": "refunded",
            "amount": r.amount, "currency": r.currency,
        }),
        undoable: false,
        undo: None,
    })
}

fn with_metadata(
    mut data: Map<String, Value>,
    metadata: &Option<Map<String, Value>>,
) -> Map<String, Value> {
    if let Some(metadata) = metadata {
        data.insert("metadata".into(), Value::Object(metadata.clone()));
    }
    data
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

async fn notification(
    engine: &Engine,
    uow: &mut UnitOfWork,
    command_id: &str,
    n: &NotificationSpec,
    at: DateTime<Utc>,
) -> Result<Effect, KernelError> {
    require_user(engine, "user_id", &n.user_id).await?;
    let data = with_metadata(
        object(json!({
            "notification_id": command_id, "command_id": command_id, "user_id": n.user_id,
            "channel": n.channel, "notification_type": n.notification_type, "title": n.title,
            "message": n.message, "priority": n.priority, "sent_at": at,
        })),
        &n.metadata,
    );
    let record = Record {
        id: command_id.to_string(),
        data,
    };
    uow.push(
        engine
            .decide::<Notification>(command_id, record, &())
            .await?,
    )?;
    Ok(Effect {
        result: json!({
            "aggregate_type": NOTIFICATION, "aggregate_id": command_id, "user_id": n.user_id,
            "channel": n.channel,
        }),
        undoable: false,
        undo: None,
    })
}

async fn audit(
    engine: &Engine,
    uow: &mut UnitOfWork,
    command_id: &str,
    a: &AuditSpec,
    at: DateTime<Utc>,
) -> Result<Effect, KernelError> {
    let data = with_metadata(
        object(json!({
            "audit_id": command_id, "command_id": command_id, "entity_type": a.entity_type,
            "entity_id": a.entity_id, "action": a.action, "changes": a.changes,
            "user_id": a.user_id, "ip_address": a.ip_address, "user_agent": a.user_agent,
            "recorded_at": at,
        })),
        &a.metadata,
    );
    let record = Record {
        id: command_id.to_string(),
        data,
    };
    uow.push(engine.decide::<AuditEntry>(command_id, record, &()).await?)?;
    Ok(Effect {
        result: json!({
            "aggregate_type": AUDIT, "aggregate_id": command_id, "entity_type": a.entity_type,
            "entity_id": a.entity_id,
        }),
        undoable: false,
        undo: None,
    })
}

async fn system(
    engine: &Engine,
    uow: &mut UnitOfWork,
    command_id: &str,
    s: &SystemSpec,
    at: DateTime<Utc>,
) -> Result<Effect, KernelError> {
    let data = with_metadata(
        object(json!({
            "operation_id": command_id, "command_id": command_id, "action": s.action,
            "parameters": s.parameters, "recorded_at": at,
        })),
        &s.metadata,
    );
    let record = Record {
        id: command_id.to_string(),
        data,
    };
    uow.push(
        engine
            .decide::<SystemOperation>(command_id, record, &())
            .await?,
    )?;
    Ok(Effect {
        result: json!({
            "aggregate_type": SYSTEM, "aggregate_id": command_id, "action": s.action,
        }),
        undoable: false,
        undo: None,
    })
}

/// Why an executed command cannot be undone, in words that fit its type and action.
pub fn why_not_undoable(command: &Command) -> String {
    let id = command.id();
    let action = command
        .payload()
        .get("action")
        .and_then(Value::as_str)
        .unwrap_or_default();
    match command.command_type() {
        Some(CommandType::User) => format!(
            "command {id} cannot be undone: a deleted user cannot be restored (its email may \
             belong to another user by now)"
        ),
        Some(CommandType::Order) => format!(
            "command {id} cannot be undone: only creating an order can be undone (by \
             cancelling it), not `{action}`"
        ),
        Some(CommandType::Refund) => {
            format!("command {id} cannot be undone: a refunded payment is final")
        }
        Some(other) => {
            format!("command {id} cannot be undone: a {other} command has no compensating action")
        }
        None => format!("command {id} cannot be undone"),
    }
}

fn memento_text<'a>(undo: &'a Value, key: &str) -> Option<&'a str> {
    undo.get(key).and_then(Value::as_str)
}

/// The compensating action of an executed command: a unit of work and its description.
pub async fn compensate(
    engine: &Engine,
    uow: &mut UnitOfWork,
    command: &Command,
    at: DateTime<Utc>,
) -> Result<Value, KernelError> {
    let undo = command.undo().cloned().unwrap_or(Value::Null);
    let missing = || {
        KernelError::Rejected(DomainError::StateConflict(format!(
            "command {} has no undo information",
            command.id()
        )))
    };
    match command.command_type() {
        Some(CommandType::Payment) => {
            let id = memento_text(&undo, "payment_id").ok_or_else(missing)?;
            let refund = PaymentCommand::UpdatePayment {
                status: Some(PaymentStatus::Refunded),
                amount: None,
                currency: None,
                gateway: None,
                expected_version: None,
                at,
            };
            uow.push(engine.decide::<Payment>(id, refund, &()).await?)?;
            Ok(
                json!({ "action": "refund", "aggregate_type": PAYMENT, "aggregate_id": id,
                        "status": "refunded" }),
            )
        }
        Some(CommandType::User) => {
            let id = memento_text(&undo, "user_id").ok_or_else(missing)?;
            let action = command.payload().get("action").and_then(Value::as_str);
            if action == Some("create") {
                let delete = UserCommand::DeleteUser {
                    expected_version: None,
                    at,
                };
                push_user(uow, engine.decide::<User>(id, delete, &()).await?)?;
                return Ok(
                    json!({ "action": "delete", "aggregate_type": USER, "aggregate_id": id }),
                );
            }
            let name = memento_text(&undo, "name").map(str::to_string);
            let email = memento_text(&undo, "email").map(str::to_string);
            let restore = UserCommand::UpdateUser {
                email: email.clone(),
                name: name.clone(),
                expected_version: None,
                at,
            };
            push_user(uow, engine.decide::<User>(id, restore, &()).await?)?;
            let mut restored = Map::new();
            if let Some(name) = name {
                restored.insert("name".into(), json!(name));
            }
            if let Some(email) = email {
                restored.insert("email".into(), json!(email));
            }
            Ok(
                json!({ "action": "restore", "aggregate_type": USER, "aggregate_id": id,
                        "restored": restored }),
            )
        }
        Some(CommandType::Order) => {
            let id = memento_text(&undo, "order_id").ok_or_else(missing)?;
            change_order(engine, uow, None, id, OrderStatus::Cancelled, at).await?;
            Ok(
                json!({ "action": "cancel", "aggregate_type": ORDER, "aggregate_id": id,
                        "status": "cancelled" }),
            )
        }
        Some(CommandType::Inventory) => {
            let id = memento_text(&undo, "product_id").ok_or_else(missing)?;
            let quantity = undo.get("quantity").and_then(Value::as_u64).unwrap_or(0);
            let previous = undo
                .get("previous_stock")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            let loaded = live_product(engine, id).await?;
            let current = loaded.state.stock();
            let stock = match memento_text(&undo, "action") {
                Some("add") => current.checked_sub(quantity).ok_or_else(|| {
                    KernelError::Rejected(DomainError::StateConflict(format!(
                        "only {current} of product {id} in stock now; cannot take back {quantity}"
                    )))
                })?,
                Some("remove") => current.saturating_add(quantity).min(MAX_STOCK as u64),
                _ => previous,
            };
            uow.push(Engine::decide_on(id, loaded, set_stock(stock, at), &()).await?)?;
            Ok(
                json!({ "action": "adjust_stock", "aggregate_type": PRODUCT, "aggregate_id": id,
                        "previous_stock": current, "stock": stock }),
            )
        }
        _ => Err(KernelError::Rejected(DomainError::StateConflict(
            why_not_undoable(command),
        ))),
    }
}
