//! The small aggregates of this context that only record: a sent notification, an audit
//! entry and a system operation (one per command, id: the command id), and the two
//! singletons that mark a metrics reset and a history clearing. Each event's data is a JSON
//! object the write side builds from the command's checked payload.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::domain::{DomainError, EventSourced};

/// Records one event with `data`.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub data: Map<String, Value>,
}

macro_rules! record_aggregate {
    ($(#[$doc:meta])* $name:ident, $event:ident, $type:expr, $event_type:literal, once = $once:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
        pub struct $name {
            id: String,
            /// The data of the last event.
            last: Map<String, Value>,
            version: u64,
        }

        #[doc = concat!("`", $event_type, "`: the recorded data.")]
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $event(pub Map<String, Value>);

        impl DomainEvent for $event {
            fn event_type(&self) -> String {
                $event_type.to_string()
            }

            fn event_version(&self) -> String {
                "1".to_string()
            }
        }

        impl $name {
            pub fn id(&self) -> &str {
                &self.id
            }

            pub fn last(&self) -> &Map<String, Value> {
                &self.last
            }

            pub fn version(&self) -> u64 {
                self.version
            }
        }

        impl Aggregate for $name {
            const TYPE: &'static str = $type;
            type Command = Record;
            type Event = $event;
            type Error = DomainError;
            type Services = ();

            async fn handle(
                &mut self,
                command: Self::Command,
                _service: &Self::Services,
                sink: &EventSink<Self>,
            ) -> Result<(), Self::Error> {
                if $once && self.version > 0 {
                    return Err(DomainError::AlreadyExists(format!(
                        "{} {}",
                        $type, command.id
                    )));
                }
                let mut data = command.data;
                data.entry("id".to_string())
                    .or_insert_with(|| Value::String(command.id.clone()));
                sink.write($event(data), self).await;
                Ok(())
            }

            fn apply(&mut self, event: Self::Event) {
                self.version += 1;
                if let Some(Value::String(id)) = event.0.get("id") {
                    self.id = id.clone();
                }
                self.last = event.0;
            }
        }

        impl EventSourced for $name {}
    };
}

record_aggregate!(
    /// A notification a notification command sent.
    Notification,
    NotificationSent,
    super::NOTIFICATION,
    "notification.sent",
    once = true
);
record_aggregate!(
    /// An audit entry an audit command recorded.
    AuditEntry,
    AuditRecorded,
    super::AUDIT,
    "audit.recorded",
    once = true
);
record_aggregate!(
    /// A system operation a system command recorded.
    SystemOperation,
    SystemOperationRecorded,
    super::SYSTEM,
    "system.operation_recorded",
    once = true
);
record_aggregate!(
    /// The singleton (id `metrics`) whose events mark command metrics resets.
    MetricsLog,
    MetricsReset,
    super::METRICS,
    "command.metrics_reset",
    once = false
);
record_aggregate!(
    /// The singleton (id `history`) whose events mark command history clearings.
    HistoryLog,
    HistoryCleared,
    super::HISTORY,
    "command.history_cleared",
    once = false
);
