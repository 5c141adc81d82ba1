//! The caretaker aggregate: a named, bounded collection of mementos (snapshots of an
//! originator's state) with per-originator versions, age- and count-based cleanup.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{
    sized_checksum, validate_id, MementoPolicy, OriginatorKind, CARETAKER, MAX_DESCRIPTION_LEN,
    MAX_METADATA_KEYS,
};
use crate::domain::{DomainError, EventSourced};

/// Longest originator id a memento may name.
const MAX_ORIGINATOR_REF_LEN: usize = 256;

#[derive(Debug, Clone, PartialEq)]
pub enum CaretakerCommand {
    CreateCaretaker {
        name: String,
        max_mementos: Option<u32>,
        max_memento_size: Option<u64>,
        max_memento_age_secs: Option<u64>,
        at: DateTime<Utc>,
    },
    SaveMemento {
        memento_id: String,
        originator_id: String,
        kind: OriginatorKind,
        state: Value,
        description: Option<String>,
        metadata: Map<String, Value>,
        at: DateTime<Utc>,
    },
    DeleteMemento {
        memento_id: String,
        at: DateTime<Utc>,
    },
    /// Records that a memento was restored into an originator.
    MarkRestored {
        memento_id: String,
        originator_id: String,
        at: DateTime<Utc>,
    },
    /// Removes expired mementos, then the oldest ones while over the count limit.
    Cleanup {
        now: DateTime<Utc>,
    },
    RemoveCaretaker {
        at: DateTime<Utc>,
    },
}

/// A memento that cleanup removed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemovedMemento {
    pub memento_id: String,
    pub originator_id: String,
    pub kind: OriginatorKind,
    pub size: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CaretakerEvent {
    CaretakerCreated {
        name: String,
        max_mementos: u32,
        max_memento_size: u64,
        max_memento_age_secs: u64,
        at: DateTime<Utc>,
    },
    MementoCreated {
        memento_id: String,
        originator_id: String,
        kind: OriginatorKind,
        state: Value,
        description: Option<String>,
        metadata: Map<String, Value>,
        size: u64,
        checksum: String,
        version: u64,
        at: DateTime<Utc>,
    },
    MementoDeleted {
        memento_id: String,
        originator_id: String,
        kind: OriginatorKind,
        size: u64,
        at: DateTime<Utc>,
    },
    MementoRestored {
        memento_id: String,
        originator_id: String,
        version: u64,
        at: DateTime<Utc>,
    },
    CleanupCompleted {
        removed: Vec<RemovedMemento>,
        at: DateTime<Utc>,
    },
    CaretakerRemoved {
        name: String,
        memento_count: u64,
        at: DateTime<Utc>,
    },
}

impl DomainEvent for CaretakerEvent {
    fn event_type(&self) -> String {
        match self {
            CaretakerEvent::CaretakerCreated { .. } => "caretaker_created",
            CaretakerEvent::MementoCreated { .. } => "memento_created",
            CaretakerEvent::MementoDeleted { .. } => "memento_deleted",
            CaretakerEvent::MementoRestored { .. } => "memento_restored",
            CaretakerEvent::CleanupCompleted { .. } => "cleanup_completed",
            CaretakerEvent::CaretakerRemoved { .. } => "caretaker_removed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1".to_string()
    }
}

/// The limits a caretaker was created with (fixed for its lifetime).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CaretakerLimits {
    pub max_mementos: u32,
    pub max_memento_size: u64,
    pub max_memento_age_secs: u64,
}

/// A stored memento, with everything needed to restore it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MementoEntry {
    pub memento_id: String,
    pub originator_id: String,
    pub kind: OriginatorKind,
    pub state: Value,
    pub description: Option<String>,
    pub metadata: Map<String, Value>,
    pub size: u64,
    pub checksum: String,
    pub version: u64,
    pub created_at: DateTime<Utc>,
    pub restore_count: u64,
    pub last_restored_at: Option<DateTime<Utc>>,
    /// Save order within the caretaker: breaks ties between equal `created_at` in cleanup.
    pub seq: u64,
}

/// Caretaker state. Never created: `name` is empty. Removed: `live` is false, `name` is kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Caretaker {
    name: String,
    live: bool,
    limits: CaretakerLimits,
    created_at: Option<DateTime<Utc>>,
    mementos: BTreeMap<String, MementoEntry>,
    /// Highest version ever given to each originator here; kept after deletes so versions
    /// are never reused.
    versions: BTreeMap<String, u64>,
    next_seq: u64,
}

impl Caretaker {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Created and not removed.
    pub fn is_live(&self) -> bool {
        self.live
    }

    pub fn limits(&self) -> CaretakerLimits {
        self.limits
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        self.created_at
    }

    pub fn memento(&self, id: &str) -> Option<&MementoEntry> {
        self.mementos.get(id)
    }

    /// Mementos by id.
    pub fn mementos(&self) -> impl Iterator<Item = &MementoEntry> {
        self.mementos.values()
    }

    pub fn memento_count(&self) -> usize {
        self.mementos.len()
    }

    /// The highest version ever given to an originator here (0 if none).
    pub fn last_version(&self, originator_id: &str) -> u64 {
        self.versions.get(originator_id).copied().unwrap_or(0)
    }

    fn not_found(&self) -> DomainError {
        if self.name.is_empty() {
            DomainError::NotFound("caretaker".to_string())
        } else {
            DomainError::NotFound(format!("caretaker {}", self.name))
        }
    }

    fn require_live(&self) -> Result<(), DomainError> {
        if self.live {
            Ok(())
        } else {
            Err(self.not_found())
        }
    }

    fn existing(&self, memento_id: &str) -> Result<&MementoEntry, DomainError> {
        self.mementos
            .get(memento_id)
            .ok_or_else(|| DomainError::NotFound(format!("memento {memento_id}")))
    }

    fn decide(
        &self,
        command: CaretakerCommand,
        policy: &MementoPolicy,
    ) -> Result<Vec<CaretakerEvent>, DomainError> {
        match command {
            CaretakerCommand::CreateCaretaker {
                name,
                max_mementos,
                max_memento_size,
                max_memento_age_secs,
                at,
            } => {
                validate_id("name", &name)?;
                if self.live {
                    return Err(DomainError::AlreadyExists(format!("caretaker {name}")));
                }
                let max_mementos = limit(
                    "max_mementos",
                    max_mementos.unwrap_or(policy.max_mementos).into(),
                    policy.max_mementos.into(),
                )?;
                let max_memento_size = limit(
                    "max_memento_size",
                    max_memento_size.unwrap_or(policy.max_memento_size),
                    policy.max_memento_size,
                )?;
                let max_memento_age_secs = limit(
                    "max_memento_age_secs",
                    max_memento_age_secs.unwrap_or(policy.max_memento_age_secs),
                    policy.max_memento_age_secs,
                )?;
                Ok(vec![CaretakerEvent::CaretakerCreated {
                    name,
                    // Bounded by policy.max_mementos, a u32.
                    max_mementos: u32::try_from(max_mementos).unwrap_or(u32::MAX),
                    max_memento_size,
                    max_memento_age_secs,
                    at,
                }])
            }
            CaretakerCommand::SaveMemento {
                memento_id,
                originator_id,
                kind,
                state,
                description,
                metadata,
                at,
            } => {
                self.require_live()?;
                validate_id("id", &memento_id)?;
                if self.mementos.contains_key(&memento_id) {
                    return Err(DomainError::AlreadyExists(format!("memento {memento_id}")));
                }
                if originator_id.trim().is_empty() {
                    return Err(DomainError::invalid(
                        "originator_id",
                        "originator_id must not be empty",
                    ));
                }
                if originator_id.chars().count() > MAX_ORIGINATOR_REF_LEN {
                    return Err(DomainError::invalid(
                        "originator_id",
                        format!(
                            "originator_id must be at most {MAX_ORIGINATOR_REF_LEN} characters"
                        ),
                    ));
                }
                if let Some(d) = &description {
                    if d.chars().count() > MAX_DESCRIPTION_LEN {
                        return Err(DomainError::invalid(
                            "description",
                            format!("description must be at most {MAX_DESCRIPTION_LEN} characters"),
                        ));
                    }
                }
                if metadata.len() > MAX_METADATA_KEYS {
                    return Err(DomainError::invalid(
                        "metadata",
                        format!("metadata may have at most {MAX_METADATA_KEYS} keys"),
                    ));
                }
                kind.validate_state(&state)?;
                let (size, checksum) = sized_checksum(&state, self.limits.max_memento_size)?;
                let count = self.mementos.len();
                if count >= self.limits.max_mementos as usize {
                    return Err(DomainError::StateConflict(format!(
                        "caretaker {} is full ({count} mementos); run cleanup or delete some",
                        self.name
                    )));
                }
                let version = self.last_version(&originator_id) + 1;
                Ok(vec![CaretakerEvent::MementoCreated {
                    memento_id,
                    originator_id,
                    kind,
                    state,
                    description,
                    metadata,
                    size,
                    checksum,
                    version,
                    at,
                }])
            }
            CaretakerCommand::DeleteMemento { memento_id, at } => {
                self.require_live()?;
                let entry = self.existing(&memento_id)?;
                Ok(vec![CaretakerEvent::MementoDeleted {
                    memento_id,
                    originator_id: entry.originator_id.clone(),
                    kind: entry.kind,
                    size: entry.size,
                    at,
                }])
            }
            CaretakerCommand::MarkRestored {
                memento_id,
                originator_id,
                at,
            } => {
                self.require_live()?;
                let entry = self.existing(&memento_id)?;
                Ok(vec![CaretakerEvent::MementoRestored {
                    memento_id,
                    originator_id,
                    version: entry.version,
                    at,
                }])
            }
            CaretakerCommand::Cleanup { now } => {
                self.require_live()?;
                Ok(vec![CaretakerEvent::CleanupCompleted {
                    removed: self.cleanup_victims(now),
                    at: now,
                }])
            }
            CaretakerCommand::RemoveCaretaker { at } => {
                self.require_live()?;
                Ok(vec![CaretakerEvent::CaretakerRemoved {
                    name: self.name.clone(),
                    memento_count: self.mementos.len() as u64,
                    at,
                }])
            }
        }
    }

    /// Expired mementos (oldest first), then the oldest survivors while over `max_mementos`.
    fn cleanup_victims(&self, now: DateTime<Utc>) -> Vec<RemovedMemento> {
        let mut by_age: Vec<&MementoEntry> = self.mementos.values().collect();
        by_age.sort_by_key(|e| (e.created_at, e.seq));
        let max_age_ms = i128::from(self.limits.max_memento_age_secs) * 1000;
        let (expired, kept): (Vec<&MementoEntry>, Vec<&MementoEntry>) = by_age
            .into_iter()
            .partition(|e| i128::from((now - e.created_at).num_milliseconds()) > max_age_ms);
        let overflow = kept.len().saturating_sub(self.limits.max_mementos as usize);
        expired
            .into_iter()
            .chain(kept.into_iter().take(overflow))
            .map(|e| RemovedMemento {
                memento_id: e.memento_id.clone(),
                originator_id: e.originator_id.clone(),
                kind: e.kind,
                size: e.size,
            })
            .collect()
    }
}

/// A caretaker limit: 1..=ceiling.
fn limit(field: &str, value: u64, ceiling: u64) -> Result<u64, DomainError> {
    if value == 0 || value > ceiling {
        return Err(DomainError::invalid(
            field,
            format!("{field} must be between 1 and {ceiling}"),
        ));
    }
    Ok(value)
}

impl Aggregate for Caretaker {
    const TYPE: &'static str = CARETAKER;
    type Command = CaretakerCommand;
    type Event = CaretakerEvent;
    type Error = DomainError;
    type Services = MementoPolicy;

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
            CaretakerEvent::CaretakerCreated {
                name,
                max_mementos,
                max_memento_size,
                max_memento_age_secs,
                at,
            } => {
                // A re-created caretaker starts from scratch.
                *self = Caretaker {
                    name,
                    live: true,
                    limits: CaretakerLimits {
                        max_mementos,
                        max_memento_size,
                        max_memento_age_secs,
                    },
                    created_at: Some(at),
                    ..Caretaker::default()
                };
            }
            CaretakerEvent::MementoCreated {
                memento_id,
                originator_id,
                kind,
                state,
                description,
                metadata,
                size,
                checksum,
                version,
                at,
            } => {
                let last = self.versions.entry(originator_id.clone()).or_insert(0);
                *last = (*last).max(version);
                let seq = self.next_seq;
                self.next_seq += 1;
                self.mementos.insert(
                    memento_id.clone(),
                    MementoEntry {
                        memento_id,
                        originator_id,
                        kind,
                        state,
                        description,
                        metadata,
                        size,
                        checksum,
                        version,
                        created_at: at,
                        restore_count: 0,
                        last_restored_at: None,
                        seq,
                    },
                );
            }
            CaretakerEvent::MementoDeleted { memento_id, .. } => {
                self.mementos.remove(&memento_id);
            }
            CaretakerEvent::MementoRestored { memento_id, at, .. } => {
                if let Some(entry) = self.mementos.get_mut(&memento_id) {
                    entry.restore_count += 1;
                    entry.last_restored_at = Some(at);
                }
            }
            CaretakerEvent::CleanupCompleted { removed, .. } => {
                for r in removed {
                    self.mementos.remove(&r.memento_id);
                }
            }
            CaretakerEvent::CaretakerRemoved { .. } => {
                self.live = false;
                self.mementos.clear();
            }
        }
    }
}

impl EventSourced for Caretaker {}
