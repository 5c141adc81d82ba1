//! The snapshot log of a generic aggregate (store type `es-snapshot`, same id): one
//! `snapshot_taken` event per snapshot forced through `POST /snapshots`, carrying the
//! aggregate's document at that version. The engine's snapshot store keeps only the latest
//! snapshot per aggregate, and may lose it (it is disposable); this log is what the
//! snapshot routes list and count.

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{AggregateKind, EventSourcingPolicy, SNAPSHOT_LOG};
use crate::domain::{DomainError, EventSourced};

#[derive(Debug, Clone, PartialEq)]
pub enum SnapshotLogCommand {
    Record {
        aggregate_type: AggregateKind,
        /// The aggregate's version the snapshot holds (at least 1).
        version: u64,
        /// The aggregate's document at that version.
        document: Value,
        at: DateTime<Utc>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum SnapshotLogEvent {
    SnapshotTaken {
        aggregate_type: AggregateKind,
        version: u64,
        data: Value,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for SnapshotLogEvent {
    fn event_type(&self) -> String {
        match self {
            SnapshotLogEvent::SnapshotTaken { .. } => "snapshot_taken",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// How many snapshots an aggregate's log holds, and of which type the aggregate is.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SnapshotLog {
    aggregate_type: Option<AggregateKind>,
    count: u64,
    last_version: u64,
}

impl SnapshotLog {
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The version of the newest snapshot (0: none).
    pub fn last_version(&self) -> u64 {
        self.last_version
    }

    fn decide(
        &self,
        command: SnapshotLogCommand,
        policy: &EventSourcingPolicy,
    ) -> Result<Vec<SnapshotLogEvent>, DomainError> {
        match command {
            SnapshotLogCommand::Record {
                aggregate_type,
                version,
                document,
                at,
            } => {
                if version == 0 {
                    return Err(DomainError::invalid(
                        "version",
                        "an aggregate with no events has nothing to snapshot",
                    ));
                }
                if self
                    .aggregate_type
                    .is_some_and(|known| known != aggregate_type)
                {
                    return Err(DomainError::invalid(
                        "aggregate_type",
                        "differs from the type of the earlier snapshots",
                    ));
                }
                if self.count >= policy.max_snapshots {
                    return Err(DomainError::StateConflict(format!(
                        "the aggregate has {} snapshots; max_snapshots is {}",
                        self.count, policy.max_snapshots
                    )));
                }
                Ok(vec![SnapshotLogEvent::SnapshotTaken {
                    aggregate_type,
                    version,
                    data: document,
                    at,
                }])
            }
        }
    }
}

impl Aggregate for SnapshotLog {
    const TYPE: &'static str = SNAPSHOT_LOG;
    type Command = SnapshotLogCommand;
    type Event = SnapshotLogEvent;
    type Error = DomainError;
    type Services = EventSourcingPolicy;

    async fn handle(
        &mut self,
        command: Self::Command,
        service: &Self::Services,
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        for event in self.decide(command, service)? {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            SnapshotLogEvent::SnapshotTaken {
                aggregate_type,
                version,
                ..
            } => {
                self.aggregate_type = Some(aggregate_type);
                self.count += 1;
                self.last_version = version;
            }
        }
    }
}

impl EventSourced for SnapshotLog {}
