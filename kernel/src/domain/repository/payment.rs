//! The payment aggregate: an amount in a currency, paid by a user through a gateway, whose
//! status moves only along legal transitions. That the user exists is checked by the write
//! side (it loads the user) before the payment decides.

use std::fmt;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::{
    check_version, validate_currency, validate_id, validate_money, MAX_LABEL_LEN, PAYMENT,
};
use crate::domain::{DomainError, EventSourced};

/// Where a payment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PaymentStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Refunded,
    Cancelled,
}

impl PaymentStatus {
    pub const ALL: [PaymentStatus; 6] = [
        PaymentStatus::Pending,
        PaymentStatus::Processing,
        PaymentStatus::Completed,
        PaymentStatus::Failed,
        PaymentStatus::Refunded,
        PaymentStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::Processing => "processing",
            PaymentStatus::Completed => "completed",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Refunded => "refunded",
            PaymentStatus::Cancelled => "cancelled",
        }
    }

    /// The statuses a payment may move to from this one.
    pub fn next(self) -> &'static [PaymentStatus] {
        use PaymentStatus::*;
        match self {
            Pending => &[Processing, Cancelled],
            Processing => &[Completed, Failed],
            Completed => &[Refunded],
            Failed | Refunded | Cancelled => &[],
        }
    }

    pub fn can_move_to(self, to: PaymentStatus) -> bool {
        self.next().contains(&to)
    }
}

impl fmt::Display for PaymentStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a status change is refused with: the legal next statuses, or that there are none.
pub(crate) fn illegal_transition(what: &str, from: &str, to: &str, legal: &[&str]) -> DomainError {
    let allowed = if legal.is_empty() {
        format!("{from} is final")
    } else {
        format!("from {from} it may go to {}", legal.join(" or "))
    };
    DomainError::StateConflict(format!("{what} cannot go from {from} to {to}: {allowed}"))
}

#[derive(Debug, Clone, PartialEq)]
pub enum PaymentCommand {
    CreatePayment {
        id: String,
        user_id: String,
        amount: f64,
        currency: String,
        gateway: String,
        at: DateTime<Utc>,
    },
    /// Changes the fields that are given (at least one). Amount, currency and gateway may
    /// change only while the payment is pending; the status only along a legal transition.
    UpdatePayment {
        status: Option<PaymentStatus>,
        amount: Option<f64>,
        currency: Option<String>,
        gateway: Option<String>,
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
    /// Refused while the payment is processing (the gateway has it).
    DeletePayment {
        expected_version: Option<u64>,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PaymentEvent {
    PaymentCreated {
        id: String,
        user_id: String,
        amount: f64,
        currency: String,
        gateway: String,
        status: PaymentStatus,
        at: DateTime<Utc>,
    },
    /// `status` is the status after the change (always present), `previous_status` the one
    /// before; the other fields are present when they changed.
    PaymentUpdated {
        status: PaymentStatus,
        previous_status: PaymentStatus,
        amount: Option<f64>,
        currency: Option<String>,
        gateway: Option<String>,
        at: DateTime<Utc>,
    },
    PaymentDeleted {
        user_id: String,
        status: PaymentStatus,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for PaymentEvent {
    fn event_type(&self) -> String {
        match self {
            PaymentEvent::PaymentCreated { .. } => "payment_created",
            PaymentEvent::PaymentUpdated { .. } => "payment_updated",
            PaymentEvent::PaymentDeleted { .. } => "payment_deleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// 1 to 64 characters of letters, digits, `.`, `_` or `-` (such as `stripe`).
fn validate_gateway(gateway: &str) -> Result<(), DomainError> {
    let ok = !gateway.is_empty()
        && gateway.len() <= MAX_LABEL_LEN
        && gateway
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            "gateway",
            format!(
                "gateway must be 1 to {MAX_LABEL_LEN} letters, digits, '.', '_' or '-', such as stripe"
            ),
        ))
    }
}

/// Payment state. Never created: `id` is empty. Deleted: `deleted` is true.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    id: String,
    user_id: String,
    amount: f64,
    currency: String,
    gateway: String,
    status: PaymentStatus,
    deleted: bool,
    version: u64,
    created_at: Option<DateTime<Utc>>,
}

impl Default for Payment {
    fn default() -> Self {
        Payment {
            id: String::new(),
            user_id: String::new(),
            amount: 0.0,
            currency: String::new(),
            gateway: String::new(),
            status: PaymentStatus::Pending,
            deleted: false,
            version: 0,
            created_at: None,
        }
    }
}

impl Payment {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn user_id(&self) -> &str {
        &self.user_id
    }

    pub fn amount(&self) -> f64 {
        self.amount
    }

    pub fn status(&self) -> PaymentStatus {
        self.status
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
            Err(DomainError::NotFound("payment".to_string()))
        } else {
            Err(DomainError::NotFound(format!("payment {}", self.id)))
        }
    }

    fn decide(&self, command: PaymentCommand) -> Result<Vec<PaymentEvent>, DomainError> {
        match command {
            PaymentCommand::CreatePayment {
                id,
                user_id,
                amount,
                currency,
                gateway,
                at,
            } => {
                validate_id("id", &id)?;
                if !self.id.is_empty() {
                    return Err(DomainError::AlreadyExists(format!("payment {id}")));
                }
                validate_id("user_id", &user_id)?;
                validate_money("amount", amount, false)?;
                validate_currency("currency", &currency)?;
                validate_gateway(&gateway)?;
                Ok(vec![PaymentEvent::PaymentCreated {
                    id,
                    user_id,
                    amount,
                    currency,
                    gateway,
                    status: PaymentStatus::Pending,
                    at,
                }])
            }
            PaymentCommand::UpdatePayment {
                status,
                amount,
                currency,
                gateway,
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                if status.is_none() && amount.is_none() && currency.is_none() && gateway.is_none() {
                    return Err(DomainError::Invalid {
                        field: None,
                        message: "nothing to update: give status, amount, currency or gateway"
                            .to_string(),
                    });
                }
                if let Some(amount) = amount {
                    validate_money("amount", amount, false)?;
                }
                if let Some(currency) = &currency {
                    validate_currency("currency", currency)?;
                }
                if let Some(gateway) = &gateway {
                    validate_gateway(gateway)?;
                }
                let details_change = amount.is_some() || currency.is_some() || gateway.is_some();
                if details_change && self.status != PaymentStatus::Pending {
                    return Err(DomainError::StateConflict(format!(
                        "payment {} is {}: amount, currency and gateway change only while pending",
                        self.id, self.status
                    )));
                }
                let next = match status {
                    Some(to) if to != self.status => {
                        if !self.status.can_move_to(to) {
                            let legal: Vec<&str> =
                                self.status.next().iter().map(|s| s.as_str()).collect();
                            return Err(illegal_transition(
                                &format!("payment {}", self.id),
                                self.status.as_str(),
                                to.as_str(),
                                &legal,
                            ));
                        }
                        to
                    }
                    _ => self.status,
                };
                Ok(vec![PaymentEvent::PaymentUpdated {
                    status: next,
                    previous_status: self.status,
                    amount,
                    currency,
                    gateway,
                    at,
                }])
            }
            PaymentCommand::DeletePayment {
                expected_version,
                at,
            } => {
                self.require_live()?;
                check_version(expected_version, self.version)?;
                if self.status == PaymentStatus::Processing {
                    return Err(DomainError::StateConflict(format!(
                        "payment {} is processing: it can be deleted once completed or failed",
                        self.id
                    )));
                }
                Ok(vec![PaymentEvent::PaymentDeleted {
                    user_id: self.user_id.clone(),
                    status: self.status,
                    at,
                }])
            }
        }
    }
}

impl Aggregate for Payment {
    const TYPE: &'static str = PAYMENT;
    type Command = PaymentCommand;
    type Event = PaymentEvent;
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
            PaymentEvent::PaymentCreated {
                id,
                user_id,
                amount,
                currency,
                gateway,
                status,
                at,
            } => {
                self.id = id;
                self.user_id = user_id;
                self.amount = amount;
                self.currency = currency;
                self.gateway = gateway;
                self.status = status;
                self.created_at = Some(at);
            }
            PaymentEvent::PaymentUpdated {
                status,
                amount,
                currency,
                gateway,
                ..
            } => {
                self.status = status;
                if let Some(amount) = amount {
                    self.amount = amount;
                }
                if let Some(currency) = currency {
                    self.currency = currency;
                }
                if let Some(gateway) = gateway {
                    self.gateway = gateway;
                }
            }
            PaymentEvent::PaymentDeleted { .. } => self.deleted = true,
        }
    }
}

impl EventSourced for Payment {
    fn upcast(
        event_type: &str,
        event_version: i32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, DomainError> {
        super::upcast(PAYMENT, event_type, event_version, payload)
    }
}
