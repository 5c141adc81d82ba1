//! Projections turn recorded events into read-model changes. Pure: they return `DocOp`s,
//! and a runner applies them atomically with the checkpoint.

use crate::envelope::RecordedEvent;
use crate::ports::DocOp;

/// Aggregate type of system events (such as `aggregate_forgotten`).
pub const SYSTEM_AGGREGATE: &str = "system";
/// Appended by `quintet forget`; its (unencrypted) data is `{"aggregate_type", "aggregate_id"}`.
pub const AGGREGATE_FORGOTTEN: &str = "aggregate_forgotten";

#[derive(Debug, thiserror::Error, PartialEq)]
#[error("projection {projection} cannot apply {event_type} at position {position}: {reason}")]
pub struct ProjectionError {
    pub projection: String,
    pub event_type: String,
    pub position: u64,
    pub reason: String,
}

pub trait Projection: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    /// The read-model collections this projection owns (dropped on rebuild).
    fn collections(&self) -> &'static [&'static str];
    /// Whether it consumes events of this aggregate type (system events go to every projection).
    fn handles(&self, aggregate_type: &str) -> bool;
    fn project(&self, event: &RecordedEvent) -> Result<Vec<DocOp>, ProjectionError>;
}

/// The aggregate a forget event names, if `event` is one.
pub fn forgotten_aggregate(event: &RecordedEvent) -> Option<(String, String)> {
    if event.aggregate_type != SYSTEM_AGGREGATE || event.event_type != AGGREGATE_FORGOTTEN {
        return None;
    }
    let data = event.data.as_ref()?;
    Some((
        data.get("aggregate_type")?.as_str()?.to_string(),
        data.get("aggregate_id")?.as_str()?.to_string(),
    ))
}
