//! The user aggregate: an email and a name. The email is unique across users; the aggregate
//! says which email it claims and gives back ([`email_claims`]), and the write side turns
//! that into reservations in the same unit of work.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::{check_version, validate_id, validate_text, MAX_NAME_LEN, USER};
use crate::domain::{DomainError, EventSourced};

/// Longest email (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;

#[derive(Debug, Clone, PartialEq)]
pub enum UserCommand {
    CreateUser {
        id: String,
        email: String,
        name: String,
        at: DateTime<Utc>,
    },
    /// Changes the fields that are given (at least one).
    UpdateUser {
        email: Option<String>,
        name: Option<String>,
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
    DeleteUser {
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UserEvent {
    UserCreated {
        id: String,
        email: String,
        name: String,
        at: DateTime<Utc>,
    },
    /// Carries the fields that were given; `previous_email` is set when `email` is.
    UserUpdated {
        email: Option<String>,
        name: Option<String>,
        previous_email: Option<String>,
        at: DateTime<Utc>,
    },
    UserDeleted {
        email: String,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for UserEvent {
    fn event_type(&self) -> String {
        match self {
            UserEvent::UserCreated { .. } => "user_created",
            UserEvent::UserUpdated { .. } => "user_updated",
            UserEvent::UserDeleted { .. } => "user_deleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// The form of an email that uniqueness is checked on: trimmed and lower-cased.
pub fn normalize_email(email: &str) -> String {
    email.trim().to_lowercase()
}

/// A trimmed email with one `@`, a non-empty local part and a dotted domain, no spaces.
fn validate_email(value: &str) -> Result<String, DomainError> {
    let email = value.trim();
    let bad = |message: &str| Err(DomainError::invalid("email", message));
    if email.is_empty() {
        return bad("email must not be blank");
    }
    if email.chars().count() > MAX_EMAIL_LEN {
        return bad("email must be at most 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("email must not contain spaces");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return bad("email must look like name@example.com");
    };
    if local.is_empty()
        || domain.contains('@')
        || !domain.contains('.')
        || domain.starts_with('.')
        || domain.ends_with('.')
        || domain.contains("..")
    {
        return bad("email must look like name@example.com");
    }
    Ok(email.to_string())
}

/// What an event does to the email reservations of its user: the normalized email it
/// claims and the one it gives back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmailClaims {
    pub reserve: Option<String>,
    pub release: Option<String>,
}

/// The reservation changes of `event` (a changed-case email keeps its reservation).
pub fn email_claims(event: &UserEvent) -> EmailClaims {
    match event {
        UserEvent::UserCreated { email, .. } => EmailClaims {
            reserve: Some(normalize_email(email)),
            release: None,
        },
        UserEvent::UserUpdated {
            email: Some(email),
            previous_email: Some(previous),
            ..
        } if normalize_email(email) != normalize_email(previous) => EmailClaims {
            reserve: Some(normalize_email(email)),
            release: Some(normalize_email(previous)),
        },
        UserEvent::UserUpdated { .. } => EmailClaims::default(),
        UserEvent::UserDeleted { email, .. } => EmailClaims {
            reserve: None,
            release: Some(normalize_email(email)),
        },
    }
}

/// User state. Never created: `id` is empty. Deleted: `deleted` is true, the rest is kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct User {
    id: String,
    email: String,
    name: String,
    deleted: bool,
    /// Events applied so far: the version `expected_version` is checked against.
    version: u64,
    created_at: Option<DateTime<Utc>>,
}

impl User {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn email(&self) -> &str {
        &self.email
    }

    pub fn name(&self) -> &str {
        &self.name
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
            Err(DomainError::NotFound("user".to_string()))
        } else {
            Err(DomainError::NotFound(format!("user {}", self.id)))
        }
    }

    fn decide(&self, command: UserCommand) -> Result<Vec<UserEvent>, DomainError> {
        match command {
            UserCommand::CreateUser {
                id,
                email,
                name,
                at,
            } => {
                validate_id("id", &id)?;
                if !self.id.is_empty() {
                    return Err(DomainError::AlreadyExists(format!("user {id}")));
                }
                Ok(vec![UserEvent::UserCreated {
                    id,
                    email: validate_email(&email)?,
                    name: validate_text("name", &name, MAX_NAME_LEN)?,
                    at,
                }])
            }
            UserCommand::UpdateUser {
                email,
                name,
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                if email.is_none() && name.is_none() {
                    return Err(DomainError::Invalid {
                        field: None,
                        message: "nothing to update: give email or name".to_string(),
                    });
                }
                let email = email.as_deref().map(validate_email).transpose()?;
                let name = name
                    .as_deref()
                    .map(|n| validate_text("name", n, MAX_NAME_LEN))
                    .transpose()?;
                Ok(vec![UserEvent::UserUpdated {
                    previous_email: email.as_ref().map(|_| self.email.clone()),
                    email,
                    name,
                    at,
                }])
            }
            UserCommand::DeleteUser {
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                Ok(vec![UserEvent::UserDeleted {
                    email: self.email.clone(),
                    at,
                }])
            }
        }
    }
}

impl Aggregate for User {
    const TYPE: &'static str = USER;
    type Command = UserCommand;
    type Event = UserEvent;
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
            UserEvent::UserCreated {
                id,
                email,
                name,
                at,
            } => {
                self.id = id;
                self.email = email;
                self.name = name;
                self.created_at = Some(at);
            }
            UserEvent::UserUpdated { email, name, .. } => {
                if let Some(email) = email {
                    self.email = email;
                }
                if let Some(name) = name {
                    self.name = name;
                }
            }
            UserEvent::UserDeleted { .. } => self.deleted = true,
        }
    }
}

impl EventSourced for User {
    fn upcast(
        event_type: &str,
        event_version: i32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, DomainError> {
        super::upcast(USER, event_type, event_version, payload)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_email_shapes() {
        for ok in ["a@b.co", " Ada@Example.com ", "x.y+z@sub.example.org"] {
            assert!(validate_email(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "plain", "@b.co", "a@", "a@b", "a@@b.co", "a b@c.de", "a@.b.co", "a@b.co.",
            "a@b..co",
        ] {
            assert!(validate_email(bad).is_err(), "{bad}");
        }
        assert!(validate_email(&format!("{}@b.co", "x".repeat(250))).is_err());
        assert_eq!(normalize_email("  Ada@Example.COM "), "ada@example.com");
    }
}
