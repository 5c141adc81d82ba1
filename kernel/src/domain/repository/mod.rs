//! The repository context (seed 001): users, payments, orders and products, and the
//! projection that builds their read models.
//!
//! Pure code: no clock, no I/O. Every time comes in with the command, and whatever another
//! aggregate knows (a product's price, whether a user exists) is loaded by the write side and
//! passed in. Cross-aggregate rules (an order reserves stock on every product it names, a
//! user's email is unique) are kept by the write side's unit of work: one transaction over
//! the streams involved, plus a reservation of the email.

pub mod fixtures;
pub mod order;
pub mod payment;
pub mod product;
pub mod projection;
pub mod user;

pub use order::{Order, OrderCommand, OrderEvent, OrderLine, OrderStatus, PricedItem};
pub use payment::{Payment, PaymentCommand, PaymentEvent, PaymentStatus};
pub use product::{Product, ProductCommand, ProductEvent};
pub use projection::RepositoryProjection;
pub use user::{normalize_email, EmailClaims, User, UserCommand, UserEvent};

use crate::domain::DomainError;

/// Aggregate types of this context, as stored in the event store.
pub const USER: &str = "user";
pub const PAYMENT: &str = "payment";
pub const ORDER: &str = "order";
pub const PRODUCT: &str = "product";

/// The reservation scope that keeps emails unique across users (value: [`normalize_email`]).
pub const EMAIL_SCOPE: &str = "user_email";

/// Longest id of a user, payment, order or product.
pub const MAX_ID_LEN: usize = 128;
/// Longest user or product name, in characters.
pub const MAX_NAME_LEN: usize = 256;
/// Longest product category or payment gateway, in characters.
pub const MAX_LABEL_LEN: usize = 64;
/// The largest amount or price (so every amount in cents is exact in an `f64`).
pub const MAX_AMOUNT: f64 = 1_000_000_000.0;
/// The largest stock a product may hold.
pub const MAX_STOCK: i64 = 1_000_000_000;

/// Whether an aggregate type belongs to this context.
pub fn owns(aggregate_type: &str) -> bool {
    matches!(aggregate_type, USER | PAYMENT | ORDER | PRODUCT)
}

/// Rewrites a stored payload of an older `event_version` into the current shape.
pub fn upcast(
    _aggregate_type: &str,
    _event_type: &str,
    _event_version: i32,
    payload: serde_json::Value,
) -> Result<serde_json::Value, super::DomainError> {
    // Every event of this context is still at version 1.
    Ok(payload)
}

/// Whether `s` is 1..=128 characters of `[A-Za-z0-9._-]`.
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

/// A trimmed, non-blank text of at most `max` characters without control characters.
pub(crate) fn validate_text(field: &str, value: &str, max: usize) -> Result<String, DomainError> {
    let trimmed = value.trim();
    if trimmed.is_empty() {
        return Err(DomainError::invalid(
            field,
            format!("{field} must not be blank"),
        ));
    }
    if trimmed.chars().count() > max {
        return Err(DomainError::invalid(
            field,
            format!("{field} must be at most {max} characters"),
        ));
    }
    if trimmed.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            format!("{field} must not contain control characters"),
        ));
    }
    Ok(trimmed.to_string())
}

/// Three upper-case ASCII letters (ISO 4217 style), such as `USD`.
pub(crate) fn validate_currency(field: &str, value: &str) -> Result<(), DomainError> {
    if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("{field} must be three upper-case letters, such as USD"),
        ))
    }
}

/// A finite amount in `0..=MAX_AMOUNT` (above 0 unless `zero_allowed`) with at most two
/// decimals.
pub(crate) fn validate_money(
    field: &str,
    value: f64,
    zero_allowed: bool,
) -> Result<(), DomainError> {
    if !value.is_finite() {
        return Err(DomainError::invalid(
            field,
            format!("{field} must be a finite number"),
        ));
    }
    if value < 0.0 || (!zero_allowed && value == 0.0) {
        let bound = if zero_allowed {
            "at least 0"
        } else {
            "greater than 0"
        };
        return Err(DomainError::invalid(
            field,
            format!("{field} must be {bound}"),
        ));
    }
    if value > MAX_AMOUNT {
        return Err(DomainError::invalid(
            field,
            format!("{field} must be at most {MAX_AMOUNT}"),
        ));
    }
    let cents = value * 100.0;
    if (cents - cents.round()).abs() > 1e-3 {
        return Err(DomainError::invalid(
            field,
            format!("{field} must have at most two decimals"),
        ));
    }
    Ok(())
}

/// An amount already checked by [`validate_money`], in whole cents.
pub fn to_cents(value: f64) -> i64 {
    (value * 100.0).round() as i64
}

/// Whole cents back to an amount with at most two decimals.
pub fn from_cents(cents: i64) -> f64 {
    cents as f64 / 100.0
}

/// An error about `field` of a nested input, reported under `prefix` (`quantity` of the
/// second item becomes `items[1].quantity`); other errors pass through.
pub fn nest_field(error: DomainError, prefix: &str) -> DomainError {
    match error {
        DomainError::Invalid {
            field: Some(field),
            message,
        } => DomainError::Invalid {
            field: Some(format!("{prefix}.{field}")),
            message,
        },
        other => other,
    }
}

/// Fails with a 409 when `expected` is set and is not the aggregate's `current` version.
pub(crate) fn check_version(expected: Option<u64>, current: u64) -> Result<(), DomainError> {
    match expected {
        Some(expected) if expected != current => Err(DomainError::StateConflict(format!(
            "stale version: expected {expected}, current {current}"
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_money_rules() {
        for ok in [0.01, 1.0, 100.5, 100.29, 999_999_999.99, MAX_AMOUNT] {
            assert!(validate_money("amount", ok, false).is_ok(), "{ok}");
        }
        for bad in [
            0.0,
            -1.0,
            0.001,
            1.005,
            f64::NAN,
            f64::INFINITY,
            MAX_AMOUNT + 1.0,
        ] {
            assert!(validate_money("amount", bad, false).is_err(), "{bad}");
        }
        assert!(validate_money("price", 0.0, true).is_ok());
        assert_eq!(to_cents(100.29), 10029);
        assert_eq!(from_cents(10029), 100.29);
    }

    #[test]
    fn repository_currency_and_ids() {
        assert!(validate_currency("currency", "USD").is_ok());
        for bad in ["usd", "US", "USDD", "U$D", ""] {
            assert!(validate_currency("currency", bad).is_err(), "{bad}");
        }
        assert!(is_valid_id("u-1.a_B"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id(&"x".repeat(129)));
    }

    #[test]
    fn repository_text_is_trimmed_and_bounded() {
        assert_eq!(
            validate_text("name", "  Ada ", 10).ok().as_deref(),
            Some("Ada")
        );
        assert!(validate_text("name", "   ", 10).is_err());
        assert!(validate_text("name", "abcdefghijk", 10).is_err());
        assert!(validate_text("name", "a\u{0}b", 10).is_err());
    }

    #[test]
    fn repository_nested_fields() {
        let nested = nest_field(DomainError::invalid("quantity", "too many"), "items[1]");
        assert_eq!(
            nested,
            DomainError::Invalid {
                field: Some("items[1].quantity".into()),
                message: "too many".into()
            }
        );
        let other = nest_field(DomainError::NotFound("x".into()), "items[0]");
        assert_eq!(other, DomainError::NotFound("x".into()));
    }
}
