//! The command-handler aggregate: one per command type (id: the type's name), holding whether
//! the handler is registered and enabled, and its circuit breaker. Every handler counts as
//! registered, enabled and closed until an event says otherwise.
//!
//! The breaker: closed → open after `failure_threshold` consecutive failed executions; while
//! open, commands are refused without writing anything; once `retry_at` has passed it is
//! half-open and one probe runs (the write side lets exactly one through): a success closes
//! it, a failure opens it again.

use chrono::{DateTime, Duration, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};

use super::spec::CommandType;
use super::HANDLER;
use crate::domain::{DomainError, EventSourced};

/// Longest handler description, in characters.
pub const MAX_DESCRIPTION_LEN: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnavailableReason {
    CircuitOpen,
    Disabled,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AvailableReason {
    ProbeSucceeded,
    Reset,
    Enabled,
}

#[derive(Debug, Clone, PartialEq)]
pub enum HandlerOp {
    /// Registers the handler again (or first); `available` enables or disables it.
    Register {
        name: CommandType,
        description: Option<String>,
        available: Option<bool>,
        at: DateTime<Utc>,
    },
    Unregister {
        name: CommandType,
        at: DateTime<Utc>,
    },
    /// A command of this type failed.
    RecordFailure {
        name: CommandType,
        failure_threshold: u32,
        open_timeout: Duration,
        at: DateTime<Utc>,
    },
    /// A command of this type executed.
    RecordSuccess {
        name: CommandType,
        at: DateTime<Utc>,
    },
    /// Closes the circuit and forgets the failures.
    Reset {
        name: CommandType,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum HandlerEvent {
    #[serde(rename = "handler.registered")]
    Registered {
        name: CommandType,
        #[serde(default)]
        description: Option<String>,
        registered_at: DateTime<Utc>,
    },
    #[serde(rename = "handler.unregistered")]
    Unregistered {
        name: CommandType,
        unregistered_at: DateTime<Utc>,
    },
    #[serde(rename = "handler.failure_recorded")]
    FailureRecorded {
        name: CommandType,
        consecutive_failures: u32,
        at: DateTime<Utc>,
    },
    /// A success after failures, with the circuit closed: the count starts over.
    #[serde(rename = "handler.recovered")]
    Recovered {
        name: CommandType,
        at: DateTime<Utc>,
    },
    #[serde(rename = "handler.unavailable")]
    Unavailable {
        name: CommandType,
        reason: UnavailableReason,
        opened_at: DateTime<Utc>,
        /// When an open circuit lets a probe through; none while disabled.
        retry_at: Option<DateTime<Utc>>,
    },
    #[serde(rename = "handler.available")]
    Available {
        name: CommandType,
        reason: AvailableReason,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for HandlerEvent {
    fn event_type(&self) -> String {
        match self {
            HandlerEvent::Registered { .. } => "handler.registered",
            HandlerEvent::Unregistered { .. } => "handler.unregistered",
            HandlerEvent::FailureRecorded { .. } => "handler.failure_recorded",
            HandlerEvent::Recovered { .. } => "handler.recovered",
            HandlerEvent::Unavailable { .. } => "handler.unavailable",
            HandlerEvent::Available { .. } => "handler.available",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// Whether a command of this type may run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Closed circuit: run.
    Closed,
    /// Open, and its timeout passed: one probe may run.
    HalfOpen,
    /// Open: refused until `retry_at`.
    Open {
        retry_at: DateTime<Utc>,
    },
    Unregistered,
    Disabled,
}

/// Handler state; the defaults are a registered, enabled handler with a closed circuit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CommandHandler {
    unregistered: bool,
    disabled: bool,
    description: Option<String>,
    consecutive_failures: u32,
    open: bool,
    retry_at: Option<DateTime<Utc>>,
    version: u64,
}

impl CommandHandler {
    pub fn is_registered(&self) -> bool {
        !self.unregistered
    }

    pub fn is_disabled(&self) -> bool {
        self.disabled
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn retry_at(&self) -> Option<DateTime<Utc>> {
        self.retry_at
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    pub fn version(&self) -> u64 {
        self.version
    }

    pub fn admission(&self, now: DateTime<Utc>) -> Admission {
        if self.unregistered {
            return Admission::Unregistered;
        }
        if self.disabled {
            return Admission::Disabled;
        }
        match (self.open, self.retry_at) {
            (false, _) => Admission::Closed,
            (true, Some(retry_at)) if now < retry_at => Admission::Open { retry_at },
            (true, _) => Admission::HalfOpen,
        }
    }

    fn decide(&self, op: HandlerOp) -> Result<Vec<HandlerEvent>, DomainError> {
        match op {
            HandlerOp::Register {
                name,
                description,
                available,
                at,
            } => {
                let description = match description {
                    Some(d) => Some(crate::domain::repository::validate_text(
                        "description",
                        &d,
                        MAX_DESCRIPTION_LEN,
                    )?),
                    None => None,
                };
                let mut events = vec![HandlerEvent::Registered {
                    name,
                    description,
                    registered_at: at,
                }];
                match available {
                    Some(false) if !self.disabled => events.push(HandlerEvent::Unavailable {
                        name,
                        reason: UnavailableReason::Disabled,
                        opened_at: at,
                        retry_at: None,
                    }),
                    Some(true) if self.disabled => events.push(HandlerEvent::Available {
                        name,
                        reason: AvailableReason::Enabled,
                        at,
                    }),
                    _ => {}
                }
                Ok(events)
            }
            HandlerOp::Unregister { name, at } => {
                if self.unregistered {
                    return Err(DomainError::StateConflict(format!(
                        "handler {name} is not registered"
                    )));
                }
                Ok(vec![HandlerEvent::Unregistered {
                    name,
                    unregistered_at: at,
                }])
            }
            HandlerOp::RecordFailure {
                name,
                failure_threshold,
                open_timeout,
                at,
            } => {
                let failures = self.consecutive_failures.saturating_add(1);
                let mut events = vec![HandlerEvent::FailureRecorded {
                    name,
                    consecutive_failures: failures,
                    at,
                }];
                // A failure that reaches the threshold opens the circuit; a failed probe
                // (open, past its retry time) opens it again.
                let opens = if self.open {
                    self.retry_at.is_none_or(|retry_at| at >= retry_at)
                } else {
                    failures >= failure_threshold.max(1)
                };
                if opens {
                    events.push(HandlerEvent::Unavailable {
                        name,
                        reason: UnavailableReason::CircuitOpen,
                        opened_at: at,
                        retry_at: Some(at + open_timeout),
                    });
                }
                Ok(events)
            }
            HandlerOp::RecordSuccess { name, at } => Ok(if self.open {
                vec![HandlerEvent::Available {
                    name,
                    reason: AvailableReason::ProbeSucceeded,
                    at,
                }]
            } else if self.consecutive_failures > 0 {
                vec![HandlerEvent::Recovered { name, at }]
            } else {
                vec![]
            }),
            HandlerOp::Reset { name, at } => Ok(if self.open || self.consecutive_failures > 0 {
                vec![HandlerEvent::Available {
                    name,
                    reason: AvailableReason::Reset,
                    at,
                }]
            } else {
                vec![]
            }),
        }
    }
}

impl Aggregate for CommandHandler {
    const TYPE: &'static str = HANDLER;
    type Command = HandlerOp;
    type Event = HandlerEvent;
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
            HandlerEvent::Registered { description, .. } => {
                self.unregistered = false;
                self.description = description;
            }
            HandlerEvent::Unregistered { .. } => self.unregistered = true,
            HandlerEvent::FailureRecorded {
                consecutive_failures,
                ..
            } => self.consecutive_failures = consecutive_failures,
            HandlerEvent::Recovered { .. } => self.consecutive_failures = 0,
            HandlerEvent::Unavailable {
                reason, retry_at, ..
            } => match reason {
                UnavailableReason::CircuitOpen => {
                    self.open = true;
                    self.retry_at = retry_at;
                }
                UnavailableReason::Disabled => self.disabled = true,
            },
            HandlerEvent::Available { reason, .. } => match reason {
                AvailableReason::ProbeSucceeded | AvailableReason::Reset => {
                    self.open = false;
                    self.retry_at = None;
                    self.consecutive_failures = 0;
                }
                AvailableReason::Enabled => self.disabled = false,
            },
        }
    }
}

impl EventSourced for CommandHandler {
    fn upcast(
        event_type: &str,
        event_version: i32,
        payload: serde_json::Value,
    ) -> Result<serde_json::Value, DomainError> {
        super::upcast(HANDLER, event_type, event_version, payload)
    }
}
