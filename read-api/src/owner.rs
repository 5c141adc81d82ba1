//! Object-level authorization of repository reads: a token that acts for a user
//! ([`Claims::acting_user`]) sees only that user's own users, payments and orders. What it
//! may not see answers exactly like what does not exist, so nothing leaks.

use serde_json::{json, Value};

use kernel::domain::repository::projection::{ORDERS, PAYMENTS, USERS};
use web::{ApiError, ApiResult, Claims};

/// The document field naming the owning user of a collection's documents; `None` for
/// collections without an owner (products).
pub fn owner_field(collection: &str) -> Option<&'static str> {
    match collection {
        USERS => Some("id"),
        PAYMENTS | ORDERS => Some("user_id"),
        _ => None,
    }
}

/// The equality filter that keeps a listing or query of `collection` to the acting user's
/// own documents; `None` when the token or the collection is not restricted.
pub fn owner_filter(claims: &Claims, collection: &str) -> Option<(String, Value)> {
    let user = claims.acting_user()?;
    let field = owner_field(collection)?;
    Some((field.to_string(), json!(user)))
}

/// A document read by id, or `None` (a 404 like a missing one) when the acting user does
/// not own it.
pub fn visible(claims: &Claims, collection: &str, doc: Option<Value>) -> Option<Value> {
    let (field, user) = match owner_filter(claims, collection) {
        None => return doc,
        Some(restriction) => restriction,
    };
    doc.filter(|doc| doc.get(&field) == Some(&user))
}

/// Fails with 404 unless the acting user (if any) is `user_id`: another user's lookups
/// answer as if that user had nothing.
pub fn require_user(claims: &Claims, user_id: &str) -> ApiResult<()> {
    match claims.acting_user() {
        Some(user) if user != user_id => {
            Err(ApiError::NotFound(format!("user {user_id} not found")))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kernel::domain::repository::projection::PRODUCTS;
    use web::Role;

    fn claims(role: Role, user_id: Option<&str>) -> Claims {
        Claims {
            sub: "test".into(),
            role,
            exp: 0,
            iat: 0,
            nbf: None,
            aud: "a".into(),
            iss: "i".into(),
            scope: None,
            user_id: user_id.map(str::to_string),
        }
    }

    #[test]
    fn another_users_document_is_invisible_to_an_acting_user() {
        let alice = claims(Role::Writer, Some("alice"));
        let own = json!({"id": "p1", "user_id": "alice"});
        let other = json!({"id": "p2", "user_id": "bob"});
        assert_eq!(visible(&alice, PAYMENTS, Some(own.clone())), Some(own));
        assert_eq!(visible(&alice, PAYMENTS, Some(other)), None);
        assert_eq!(
            visible(&alice, USERS, Some(json!({"id": "bob"}))),
            None,
            "a user document is owned by its own id"
        );
    }

    #[test]
    fn admins_unbound_tokens_and_products_are_not_restricted() {
        let bob_doc = json!({"id": "p2", "user_id": "bob"});
        let admin = claims(Role::Admin, Some("alice"));
        let unbound = claims(Role::Reader, None);
        let alice = claims(Role::Reader, Some("alice"));
        assert!(visible(&admin, PAYMENTS, Some(bob_doc.clone())).is_some());
        assert!(visible(&unbound, PAYMENTS, Some(bob_doc.clone())).is_some());
        assert!(visible(&alice, PRODUCTS, Some(bob_doc)).is_some());
        assert_eq!(owner_filter(&alice, PRODUCTS), None);
        assert_eq!(
            owner_filter(&alice, ORDERS),
            Some(("user_id".to_string(), json!("alice")))
        );
        assert!(require_user(&alice, "alice").is_ok());
        assert!(matches!(
            require_user(&alice, "bob"),
            Err(ApiError::NotFound(_))
        ));
        assert!(require_user(&admin, "bob").is_ok());
    }
}
