//! What each command type carries (the envelope's fields besides `type` and `command_id`) and
//! the checks that need nothing loaded. A command that fails them is refused before anything
//! is written; what needs loaded state (does the user exist, is there stock) is decided when
//! the command runs, and a refusal then makes the command `failed`.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::repository::order::validate_items;
use crate::domain::repository::{
    nest_field, validate_currency, validate_id, validate_money, validate_text, MAX_LABEL_LEN,
    MAX_NAME_LEN, MAX_STOCK,
};
use crate::domain::DomainError;

/// Longest free text (a description, a message, a reason), in characters.
pub const MAX_TEXT_LEN: usize = 4096;
/// Most keys in a `metadata`, `changes` or `parameters` object.
pub const MAX_MAP_KEYS: usize = 64;
/// The system operations a system command may record.
pub const SYSTEM_ACTIONS: &[&str] = &[
    "backup",
    "cache_clear",
    "config_reload",
    "health_check",
    "maintenance_end",
    "maintenance_start",
    "reindex",
];
/// The channels a notification may go out on.
pub const CHANNELS: &[&str] = &["email", "sms", "push", "webhook", "in_app"];
/// A notification's priorities.
pub const PRIORITIES: &[&str] = &["low", "normal", "high", "urgent"];

/// The eight command types; each one has a handler of the same name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandType {
    Payment,
    User,
    Order,
    Notification,
    Inventory,
    Refund,
    Audit,
    System,
}

impl CommandType {
    pub const ALL: [CommandType; 8] = [
        CommandType::Payment,
        CommandType::User,
        CommandType::Order,
        CommandType::Notification,
        CommandType::Inventory,
        CommandType::Refund,
        CommandType::Audit,
        CommandType::System,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            CommandType::Payment => "payment",
            CommandType::User => "user",
            CommandType::Order => "order",
            CommandType::Notification => "notification",
            CommandType::Inventory => "inventory",
            CommandType::Refund => "refund",
            CommandType::Audit => "audit",
            CommandType::System => "system",
        }
    }

    pub fn parse(name: &str) -> Option<CommandType> {
        Self::ALL.into_iter().find(|t| t.as_str() == name)
    }

    /// The names of every type, for error messages.
    pub fn names() -> String {
        Self::ALL.map(CommandType::as_str).join(", ")
    }
}

impl std::fmt::Display for CommandType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command id: 1 to 128 characters of `[A-Za-z0-9._-]`.
pub fn validate_command_id(field: &str, id: &str) -> Result<(), DomainError> {
    validate_id(field, id)
}

/// 1 to 64 characters of letters, digits, `.`, `_` or `-` (a gateway, a method, a label).
fn validate_label(field: &str, value: &str) -> Result<(), DomainError> {
    let ok = !value.is_empty()
        && value.len() <= MAX_LABEL_LEN
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("{field} must be 1 to {MAX_LABEL_LEN} letters, digits, '.', '_' or '-'"),
        ))
    }
}

fn validate_one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), DomainError> {
    if allowed.contains(&value) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("{field} must be one of {}", allowed.join(", ")),
        ))
    }
}

fn validate_map(field: &str, map: &Map<String, Value>) -> Result<(), DomainError> {
    if map.len() > MAX_MAP_KEYS {
        return Err(DomainError::invalid(
            field,
            format!("{field} may have at most {MAX_MAP_KEYS} keys"),
        ));
    }
    if let Some(key) = map.keys().find(|k| k.is_empty() || k.len() > MAX_LABEL_LEN) {
        return Err(DomainError::invalid(
            &format!("{field}.{key}"),
            format!("keys of {field} must be 1 to {MAX_LABEL_LEN} characters"),
        ));
    }
    Ok(())
}

fn validate_metadata(metadata: &Option<Map<String, Value>>) -> Result<(), DomainError> {
    metadata
        .as_ref()
        .map_or(Ok(()), |m| validate_map("metadata", m))
}

/// An email as the repository's user routes accept it.
fn validate_email(field: &str, email: &str) -> Result<(), DomainError> {
    let trimmed = email.trim();
    let shaped = trimmed.split_once('@').is_some_and(|(local, domain)| {
        !local.is_empty()
            && !domain.contains('@')
            && domain
                .split_once('.')
                .is_some_and(|(a, b)| !a.is_empty() && !b.is_empty())
    }) && !trimmed.chars().any(char::is_whitespace);
    if (3..=254).contains(&email.len()) && shaped {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("{field} must be an email address such as ada@example.com"),
        ))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PaymentSpec {
    pub user_id: String,
    pub amount: f64,
    pub currency: String,
    pub payment_method: String,
    pub gateway: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserAction {
    Create,
    Update,
    Delete,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserData {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub email: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub user_id: String,
    pub action: UserAction,
    #[serde(default)]
    pub data: UserData,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderAction {
    Create,
    Confirm,
    Ship,
    Deliver,
    Cancel,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderItemSpec {
    pub product_id: String,
    pub quantity: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OrderSpec {
    /// Required unless the action is `create` (then it defaults to the command id).
    #[serde(default)]
    pub order_id: Option<String>,
    pub user_id: String,
    pub action: OrderAction,
    #[serde(default)]
    pub items: Vec<OrderItemSpec>,
    /// When given with `create`, it must equal the total the products' prices make.
    #[serde(default)]
    pub total_amount: Option<f64>,
    #[serde(default)]
    pub currency: Option<String>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InventoryAction {
    Add,
    Remove,
    Set,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InventorySpec {
    pub product_id: String,
    pub action: InventoryAction,
    pub quantity: i64,
    pub reason: String,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundSpec {
    pub payment_id: String,
    pub user_id: String,
    pub amount: f64,
    pub currency: String,
    pub reason: String,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotificationSpec {
    pub user_id: String,
    pub channel: String,
    pub notification_type: String,
    pub title: String,
    pub message: String,
    pub priority: String,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSpec {
    pub entity_type: String,
    pub entity_id: String,
    pub action: String,
    pub changes: Map<String, Value>,
    pub user_id: String,
    pub ip_address: String,
    pub user_agent: String,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemSpec {
    pub action: String,
    #[serde(default)]
    pub parameters: Map<String, Value>,
    #[serde(default)]
    pub metadata: Option<Map<String, Value>>,
}

/// A command's checked payload.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandSpec {
    Payment(PaymentSpec),
    User(UserSpec),
    Order(OrderSpec),
    Notification(NotificationSpec),
    Inventory(InventorySpec),
    Refund(RefundSpec),
    Audit(AuditSpec),
    System(SystemSpec),
}

impl CommandSpec {
    pub fn command_type(&self) -> CommandType {
        match self {
            CommandSpec::Payment(_) => CommandType::Payment,
            CommandSpec::User(_) => CommandType::User,
            CommandSpec::Order(_) => CommandType::Order,
            CommandSpec::Notification(_) => CommandType::Notification,
            CommandSpec::Inventory(_) => CommandType::Inventory,
            CommandSpec::Refund(_) => CommandType::Refund,
            CommandSpec::Audit(_) => CommandType::Audit,
            CommandSpec::System(_) => CommandType::System,
        }
    }

    /// The checks that need nothing loaded; errors name the field.
    pub fn validate(&self) -> Result<(), DomainError> {
        match self {
            CommandSpec::Payment(p) => {
                validate_id("user_id", &p.user_id)?;
                validate_money("amount", p.amount, false)?;
                validate_currency("currency", &p.currency)?;
                validate_label("payment_method", &p.payment_method)?;
                validate_label("gateway", &p.gateway)?;
                if let Some(description) = &p.description {
                    validate_text("description", description, MAX_TEXT_LEN)?;
                }
                validate_metadata(&p.metadata)
            }
            CommandSpec::User(u) => {
                validate_id("user_id", &u.user_id)?;
                if let Some(email) = &u.data.email {
                    validate_email("data.email", email)?;
                }
                if let Some(name) = &u.data.name {
                    validate_text("data.name", name, MAX_NAME_LEN)?;
                }
                match u.action {
                    UserAction::Create => {
                        if u.data.email.is_none() {
                            return Err(DomainError::invalid(
                                "data.email",
                                "data.email is required to create a user",
                            ));
                        }
                        if u.data.name.is_none() {
                            return Err(DomainError::invalid(
                                "data.name",
                                "data.name is required to create a user",
                            ));
                        }
                    }
                    UserAction::Update => {
                        if u.data.email.is_none() && u.data.name.is_none() {
                            return Err(DomainError::invalid(
                                "data",
                                "nothing to update: give data.name or data.email",
                            ));
                        }
                    }
                    UserAction::Delete => {}
                }
                validate_metadata(&u.metadata)
            }
            CommandSpec::Order(o) => {
                validate_id("user_id", &o.user_id)?;
                if let Some(order_id) = &o.order_id {
                    validate_id("order_id", order_id)?;
                }
                if let Some(currency) = &o.currency {
                    validate_currency("currency", currency)?;
                }
                if let Some(total) = o.total_amount {
                    validate_money("total_amount", total, true)?;
                }
                if o.action == OrderAction::Create {
                    if o.currency.is_none() {
                        return Err(DomainError::invalid(
                            "currency",
                            "currency is required to create an order",
                        ));
                    }
                    validate_items(
                        o.items
                            .iter()
                            .map(|item| (item.product_id.as_str(), item.quantity)),
                    )?;
                } else if o.order_id.is_none() {
                    return Err(DomainError::invalid(
                        "order_id",
                        "order_id is required for every action but create",
                    ));
                }
                validate_metadata(&o.metadata)
            }
            CommandSpec::Inventory(i) => {
                validate_id("product_id", &i.product_id)?;
                let least = if i.action == InventoryAction::Set {
                    0
                } else {
                    1
                };
                if !(least..=MAX_STOCK).contains(&i.quantity) {
                    return Err(DomainError::invalid(
                        "quantity",
                        format!("quantity must be between {least} and {MAX_STOCK}"),
                    ));
                }
                validate_text("reason", &i.reason, MAX_NAME_LEN)?;
                validate_metadata(&i.metadata)
            }
            CommandSpec::Refund(r) => {
                validate_id("payment_id", &r.payment_id)?;
                validate_id("user_id", &r.user_id)?;
                validate_money("amount", r.amount, false)?;
                validate_currency("currency", &r.currency)?;
                validate_text("reason", &r.reason, MAX_NAME_LEN)?;
                validate_metadata(&r.metadata)
            }
            CommandSpec::Notification(n) => {
                validate_id("user_id", &n.user_id)?;
                validate_one_of("channel", &n.channel, CHANNELS)?;
                validate_label("notification_type", &n.notification_type)?;
                validate_text("title", &n.title, MAX_NAME_LEN)?;
                validate_text("message", &n.message, MAX_TEXT_LEN)?;
                validate_one_of("priority", &n.priority, PRIORITIES)?;
                validate_metadata(&n.metadata)
            }
            CommandSpec::Audit(a) => {
                validate_label("entity_type", &a.entity_type)?;
                validate_id("entity_id", &a.entity_id)?;
                validate_label("action", &a.action)?;
                validate_map("changes", &a.changes)?;
                validate_id("user_id", &a.user_id)?;
                if a.ip_address.parse::<IpAddr>().is_err() {
                    return Err(DomainError::invalid(
                        "ip_address",
                        "ip_address must be an IPv4 or IPv6 address",
                    ));
                }
                validate_text("user_agent", &a.user_agent, MAX_NAME_LEN * 2)?;
                validate_metadata(&a.metadata)
            }
            CommandSpec::System(s) => {
                validate_one_of("action", &s.action, SYSTEM_ACTIONS)?;
                validate_map("parameters", &s.parameters)?;
                validate_metadata(&s.metadata)
            }
        }
    }
}

/// Reports an error about `field` of the `index`th command of a batch as
/// `commands[index].field`.
pub fn in_batch(error: DomainError, index: usize) -> DomainError {
    match error {
        DomainError::Invalid {
            field: None,
            message,
        } => DomainError::Invalid {
            field: Some(format!("commands[{index}]")),
            message,
        },
        other => nest_field(other, &format!("commands[{index}]")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payment() -> PaymentSpec {
        PaymentSpec {
            user_id: "u1".into(),
            amount: 10.5,
            currency: "USD".into(),
            payment_method: "card".into(),
            gateway: "stripe".into(),
            description: None,
            metadata: None,
        }
    }

    fn field(spec: CommandSpec) -> Option<String> {
        match spec.validate() {
            Err(DomainError::Invalid { field, .. }) => field,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn command_spec_checks_name_the_field() {
        assert!(CommandSpec::Payment(payment()).validate().is_ok());
        let mut p = payment();
        p.amount = 0.001;
        assert_eq!(field(CommandSpec::Payment(p)).as_deref(), Some("amount"));
        let mut p = payment();
        p.currency = "usd".into();
        assert_eq!(field(CommandSpec::Payment(p)).as_deref(), Some("currency"));
        let user = UserSpec {
            user_id: "u1".into(),
            action: UserAction::Create,
            data: UserData {
                name: Some("Ada".into()),
                email: None,
            },
            metadata: None,
        };
        assert_eq!(
            field(CommandSpec::User(user)).as_deref(),
            Some("data.email")
        );
        let system = SystemSpec {
            action: "rm_rf".into(),
            parameters: Map::new(),
            metadata: None,
        };
        assert_eq!(
            field(CommandSpec::System(system)).as_deref(),
            Some("action")
        );
        let inventory = InventorySpec {
            product_id: "p1".into(),
            action: InventoryAction::Remove,
            quantity: 0,
            reason: "count".into(),
            metadata: None,
        };
        assert_eq!(
            field(CommandSpec::Inventory(inventory)).as_deref(),
            Some("quantity")
        );
    }

    #[test]
    fn command_batch_fields_are_prefixed() {
        let nested = in_batch(DomainError::invalid("amount", "bad"), 2);
        assert!(
            matches!(nested, DomainError::Invalid { field: Some(f), .. } if f == "commands[2].amount")
        );
    }

    #[test]
    fn command_emails() {
        assert!(validate_email("e", "ada@example.com").is_ok());
        for bad in ["ada", "a@b", "@b.c", "a b@c.d", "a@b@c.d"] {
            assert!(validate_email("e", bad).is_err(), "{bad}");
        }
    }
}
