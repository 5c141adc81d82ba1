//! `GET /audit`: the audit trail of every context, for admins. Each accepted command's events
//! carry its actor (the token subject) in the event store; this reads them back by actor,
//! aggregate, event type and time, without payloads (those stay encrypted and per context).

use poem_openapi::param::Query;
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};

use kernel::domain::Context;
use kernel::envelope::StoredEvent;
use kernel::ports::EventFilter;
use web::{ApiError, ApiResult, BearerAuth, Role};

use crate::event_sourcing::time_bounds;
use crate::query::query;
use crate::ReadState;

/// Longest actor, aggregate type, aggregate id or event type accepted as a filter.
const MAX_FILTER_LEN: usize = 255;

#[derive(Tags)]
enum ApiTags {
    /// Who did what: the actor of every recorded event (admins only).
    Audit,
}

/// One recorded event, without its payload.
#[derive(Debug, Object)]
pub struct AuditEntry {
    pub position: u64,
    pub context: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: u64,
    pub event_type: String,
    pub event_id: String,
    pub correlation_id: String,
    #[oai(skip_serializing_if_is_none)]
    pub causation_id: Option<String>,
    /// The token subject of the command that recorded it (absent for system jobs that
    /// record none).
    #[oai(skip_serializing_if_is_none)]
    pub actor: Option<String>,
    /// RFC 3339.
    pub recorded_at: String,
}

impl From<StoredEvent> for AuditEntry {
    fn from(event: StoredEvent) -> Self {
        AuditEntry {
            position: event.position,
            context: Context::of_aggregate(&event.aggregate_type)
                .as_str()
                .to_string(),
            aggregate_type: event.aggregate_type,
            aggregate_id: event.aggregate_id,
            sequence: event.sequence,
            event_type: event.event_type,
            event_id: event.event_id.to_string(),
            correlation_id: event.correlation_id.to_string(),
            causation_id: event.causation_id.map(|id| id.to_string()),
            actor: event.actor,
            recorded_at: event.recorded_at.to_rfc3339(),
        }
    }
}

/// A page of the audit trail, oldest first.
#[derive(Debug, Object)]
pub struct AuditPage {
    pub items: Vec<AuditEntry>,
    /// Matches in all pages.
    pub total: u64,
    /// The offset of the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next: Option<u64>,
    /// The position of the page's last entry: pass it as `after_position` (with no offset)
    /// to read on; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_after_position: Option<u64>,
    pub limit: u32,
    pub offset: u64,
}

pub struct AuditApi {
    pub state: ReadState,
}

/// A filter value, or a 422 naming the parameter when it is blank or too long.
fn filter_value(name: &str, value: Option<String>) -> ApiResult<Option<String>> {
    match value {
        Some(text) if text.trim().is_empty() || text.len() > MAX_FILTER_LEN => Err(
            ApiError::invalid(name, format!("must be 1 to {MAX_FILTER_LEN} characters")),
        ),
        other => Ok(other),
    }
}

#[OpenApi]
impl AuditApi {
    /// The audit trail across every context: recorded events by actor, aggregate, event type
    /// and time (`from` inclusive, `to` exclusive), oldest first, without payloads.
    #[oai(path = "/audit", method = "get", tag = "ApiTags::Audit")]
    #[allow(clippy::too_many_arguments)]
    async fn audit(
        &self,
        auth: BearerAuth,
        /// The token subject that recorded the events.
        #[oai(validator(min_length = 1, max_length = 255))]
        actor: Query<Option<String>>,
        #[oai(validator(min_length = 1, max_length = 255))] aggregate_type: Query<Option<String>>,
        #[oai(validator(min_length = 1, max_length = 255))] aggregate_id: Query<Option<String>>,
        #[oai(validator(min_length = 1, max_length = 255))] event_type: Query<Option<String>>,
        /// RFC 3339.
        from: Query<Option<String>>,
        /// RFC 3339.
        to: Query<Option<String>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Query<
            Option<u32>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Query<
            Option<u64>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        after_position: Query<Option<u64>>,
    ) -> ApiResult<Json<AuditPage>> {
        auth.0.require(Role::Admin)?;
        if auth.0.scope.is_some() {
            return Err(ApiError::Forbidden(
                "the audit trail spans every context; a token scoped to some cannot read it".into(),
            ));
        }
        let (from, to) = time_bounds(from.0.as_deref(), to.0.as_deref())?;
        let filter = EventFilter {
            aggregate_types: filter_value("aggregate_type", aggregate_type.0)?
                .into_iter()
                .collect(),
            aggregate_id: filter_value("aggregate_id", aggregate_id.0)?,
            event_type: filter_value("event_type", event_type.0)?,
            actor: filter_value("actor", actor.0)?,
            after_position: after_position.0.unwrap_or(0),
            from,
            to,
            streams: None,
        };
        let paging = query(limit.0, offset.0);
        let page = self
            .state
            .engine
            .store()
            .query_events(&filter, paging.offset, paging.limit)
            .await?;
        let end = paging.offset + page.events.len() as u64;
        let more = end < page.total;
        let last_position = page.events.last().map(|event| event.position);
        Ok(Json(AuditPage {
            items: page.events.into_iter().map(AuditEntry::from).collect(),
            total: page.total,
            next: more.then_some(end),
            next_after_position: last_position.filter(|_| more),
            limit: paging.limit,
            offset: paging.offset,
        }))
    }
}
