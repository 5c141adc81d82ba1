//! The projection admin API: status (position, lag, rate, parked count, state), pause,
//! resume, blue/green rebuild with progress, and parked events with retry.
//!
//! Positions, lags and parked counts are measured from the stores on every call; the rate,
//! the pause flag and rebuild progress come from each projection's status document (see
//! `kernel::projector`), which runners, workers and rebuilds keep up to date. Reading needs
//! the reader role, changing anything the admin role.

use std::sync::Arc;

use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Enum, Object, OpenApi, Tags};
use serde_json::Value;

use kernel::domain::projection::Projection;
use kernel::ports::ParkedEvent;
use kernel::projector::{lag_of, retry_parked, set_paused};
use kernel::replay::Rebuild;
use web::{ApiError, ApiResult, BearerAuth, Role};

use crate::query::{DEFAULT_LIMIT, MAX_LIMIT};
use crate::ReadState;

/// A rebuild whose job has not reported for this long is considered dead.
const REBUILD_STALE_SECS: i64 = 60;
/// A reported rate older than this is stale (no runner is reporting): shown as 0.
const RATE_STALE_SECS: i64 = 15;

#[derive(Tags)]
enum AdminTags {
    /// Projection status and administration: lag, pause, resume, rebuild, parked events.
    Projections,
}

/// What a projection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "lowercase")]
pub enum ProjectionState {
    Running,
    Paused,
    Rebuilding,
}

/// Progress of a projection's current or last rebuild.
#[derive(Debug, Clone, Object)]
pub struct RebuildStatus {
    /// `running`, `swapping`, `done`, `failed`, or `abandoned` (its job stopped reporting).
    pub state: String,
    /// The generation being built (the active one once done).
    pub generation: u64,
    #[oai(skip_serializing_if_is_none)]
    pub started_at: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub finished_at: Option<String>,
    /// The last position applied to the shadow copy.
    pub position: u64,
    /// The event store's head as last seen by the rebuild.
    pub target: u64,
    /// Events projected into the shadow copy.
    pub events: u64,
    pub events_per_second: f64,
    pub eta_seconds: f64,
    #[oai(skip_serializing_if_is_none)]
    pub error: Option<String>,
}

/// One projection's status.
#[derive(Debug, Clone, Object)]
pub struct ProjectionStatus {
    pub name: String,
    pub state: ProjectionState,
    /// Whether the projection is paused (it may be paused and rebuilding at once).
    pub paused: bool,
    /// The generation serving reads (0 until the first rebuild).
    pub generation: u64,
    /// The last position the projection applied (its checkpoint).
    pub position: u64,
    /// The event store's last committed position.
    pub head: u64,
    /// `head - position`.
    pub lag_events: u64,
    /// Age of the oldest event not applied yet, in seconds; 0 when caught up.
    pub lag_seconds: f64,
    /// The recent apply rate reported by its runner or workers.
    pub events_per_second: f64,
    /// Parked events (see `/projections/{name}/parked`).
    pub parked: u64,
    /// When a runner or worker last reported.
    #[oai(skip_serializing_if_is_none)]
    pub updated_at: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub rebuild: Option<RebuildStatus>,
}

/// Every projection's status.
#[derive(Debug, Clone, Object)]
pub struct ProjectionList {
    pub items: Vec<ProjectionStatus>,
    pub total: u64,
}

/// A rebuild was started.
#[derive(Debug, Clone, Object)]
pub struct RebuildAccepted {
    pub projection: String,
    pub state: ProjectionState,
    /// The shadow generation being built.
    pub generation: u64,
    /// Poll this for progress (`rebuild` in the status).
    pub status_url: String,
}

#[derive(ApiResponse)]
pub enum RebuildStarted {
    /// The rebuild runs in the background; poll the status URL for progress.
    #[oai(status = 202)]
    Accepted(Json<RebuildAccepted>, #[oai(header = "Location")] String),
}

/// An event the projection could not apply, or one held back behind it.
#[derive(Debug, Clone, Object)]
pub struct ParkedEventView {
    /// The event id; retry with it.
    pub id: String,
    /// `aggregate_type/aggregate_id`.
    pub aggregate_key: String,
    pub sequence: u64,
    pub position: u64,
    pub error: String,
    pub parked_at: String,
    /// The event's envelope (its payload is not kept).
    pub event: Value,
}

impl From<ParkedEvent> for ParkedEventView {
    fn from(parked: ParkedEvent) -> Self {
        ParkedEventView {
            id: parked.id,
            aggregate_key: parked.aggregate_key,
            sequence: parked.sequence,
            position: parked.position,
            error: parked.error,
            parked_at: parked.parked_at,
            event: parked.envelope,
        }
    }
}

/// A page of parked events, in position order.
#[derive(Debug, Clone, Object)]
pub struct ParkedList {
    pub items: Vec<ParkedEventView>,
    pub total: u64,
    /// The offset of the next page, if there is one.
    #[oai(skip_serializing_if_is_none)]
    pub next: Option<u64>,
    pub limit: u32,
    pub offset: u64,
}

/// What a retry did.
#[derive(Debug, Clone, Object)]
pub struct RetryResult {
    pub projection: String,
    /// The aggregate whose parked events were retried, in order.
    pub aggregate_key: String,
    /// Parked events applied and un-parked.
    pub applied: u64,
    /// Events of the aggregate still parked (the first one failed again, with its new
    /// error, and holds back the rest).
    pub still_parked: u64,
}

pub struct AdminApi {
    pub state: ReadState,
}

fn projection(name: &str) -> ApiResult<Arc<dyn Projection>> {
    projectors::by_name(name)
        .ok_or_else(|| ApiError::NotFound(format!("projection {name} not found")))
}

fn text(doc: &Value, field: &str) -> Option<String> {
    doc.get(field).and_then(Value::as_str).map(str::to_string)
}

fn number(doc: &Value, field: &str) -> f64 {
    doc.get(field).and_then(Value::as_f64).unwrap_or(0.0)
}

fn whole(doc: &Value, field: &str) -> u64 {
    doc.get(field).and_then(Value::as_u64).unwrap_or(0)
}

/// Seconds since an RFC 3339 time (None if absent or unreadable).
fn age_secs(at: Option<&str>) -> Option<i64> {
    let at = chrono::DateTime::parse_from_rfc3339(at?).ok()?;
    Some(chrono::Utc::now().signed_duration_since(at).num_seconds())
}

fn rebuild_status(doc: &Value) -> Option<RebuildStatus> {
    let rebuild = doc.get("rebuild").filter(|r| r.is_object())?;
    let mut state = text(rebuild, "state").unwrap_or_default();
    let live = state == "running" || state == "swapping";
    let stale = age_secs(text(rebuild, "heartbeat_at").as_deref())
        .is_none_or(|age| age > REBUILD_STALE_SECS);
    if live && stale {
        state = "abandoned".to_string();
    }
    Some(RebuildStatus {
        state,
        generation: whole(rebuild, "generation"),
        started_at: text(rebuild, "started_at"),
        finished_at: text(rebuild, "finished_at"),
        position: whole(rebuild, "position"),
        target: whole(rebuild, "target"),
        events: whole(rebuild, "events"),
        events_per_second: number(rebuild, "events_per_second"),
        eta_seconds: number(rebuild, "eta_seconds"),
        error: text(rebuild, "error"),
    })
}

impl AdminApi {
    async fn status_of(&self, name: &str) -> ApiResult<ProjectionStatus> {
        let read = &*self.state.read;
        let doc = read.status(name).await?.unwrap_or(Value::Null);
        let lag = lag_of(&self.state.engine, read, name).await?;
        let generation = read.generation(name).await?;
        let paused = doc.get("paused").and_then(Value::as_bool).unwrap_or(false);
        let rebuild = rebuild_status(&doc);
        let rebuilding = rebuild
            .as_ref()
            .is_some_and(|r| r.state == "running" || r.state == "swapping");
        let updated_at = text(&doc, "updated_at");
        let fresh = age_secs(updated_at.as_deref()).is_some_and(|age| age <= RATE_STALE_SECS);
        Ok(ProjectionStatus {
            name: name.to_string(),
            state: if rebuilding {
                ProjectionState::Rebuilding
            } else if paused {
                ProjectionState::Paused
            } else {
                ProjectionState::Running
            },
            paused,
            generation,
            position: lag.position,
            head: lag.head,
            lag_events: lag.events,
            lag_seconds: lag.seconds,
            events_per_second: if fresh {
                number(&doc, "events_per_second")
            } else {
                0.0
            },
            parked: lag.parked,
            updated_at,
            rebuild,
        })
    }
}

#[OpenApi(tag = "AdminTags::Projections")]
impl AdminApi {
    /// List projections with their status: state, position, lag in events and seconds,
    /// events/s, parked count, rebuild progress.
    #[oai(path = "/projections", method = "get")]
    async fn list_projections(&self, auth: BearerAuth) -> ApiResult<Json<ProjectionList>> {
        auth.0.require(Role::Reader)?;
        let mut items = Vec::new();
        for projection in projectors::all() {
            items.push(self.status_of(projection.name()).await?);
        }
        Ok(Json(ProjectionList {
            total: items.len() as u64,
            items,
        }))
    }

    /// Get one projection's status (poll it for rebuild progress).
    #[oai(path = "/projections/:name", method = "get")]
    async fn get_projection(
        &self,
        auth: BearerAuth,
        name: Path<String>,
    ) -> ApiResult<Json<ProjectionStatus>> {
        auth.0.require(Role::Reader)?;
        let projection = projection(&name.0)?;
        Ok(Json(self.status_of(projection.name()).await?))
    }

    /// Pause a projection: its runners and workers stop applying (within 250 ms) until it
    /// is resumed; reads keep being served, lag grows.
    #[oai(path = "/projections/:name/pause", method = "post")]
    async fn pause(
        &self,
        auth: BearerAuth,
        name: Path<String>,
    ) -> ApiResult<Json<ProjectionStatus>> {
        auth.0.require(Role::Admin)?;
        let projection = projection(&name.0)?;
        set_paused(&*self.state.read, projection.name(), true).await?;
        tracing::info!(projection = projection.name(), subject = %auth.0.sub, "projection paused");
        Ok(Json(self.status_of(projection.name()).await?))
    }

    /// Resume a paused projection.
    #[oai(path = "/projections/:name/resume", method = "post")]
    async fn resume(
        &self,
        auth: BearerAuth,
        name: Path<String>,
    ) -> ApiResult<Json<ProjectionStatus>> {
        auth.0.require(Role::Admin)?;
        let projection = projection(&name.0)?;
        set_paused(&*self.state.read, projection.name(), false).await?;
        tracing::info!(projection = projection.name(), subject = %auth.0.sub, "projection resumed");
        Ok(Json(self.status_of(projection.name()).await?))
    }

    /// Rebuild a projection blue/green: a shadow copy is built from the event store while
    /// the live one keeps serving, catches up with live writes, and is swapped in atomically.
    /// Answers 202 at once; progress shows in the status. 409 if a rebuild is running.
    #[oai(path = "/projections/:name/rebuild", method = "post")]
    async fn rebuild(&self, auth: BearerAuth, name: Path<String>) -> ApiResult<RebuildStarted> {
        auth.0.require(Role::Admin)?;
        let projection = projection(&name.0)?;
        let name = projection.name();
        let swapped = kernel::projector::Touched::all_of(&*projection);
        let rebuild = Rebuild::begin(
            self.state.engine.clone(),
            self.state.read.clone(),
            projection,
            self.state.feed.clone(),
        )
        .await?;
        let generation = rebuild.generation();
        tracing::info!(projection = name, generation, subject = %auth.0.sub, "rebuild started");
        let cache = self.state.cache.clone();
        tokio::spawn(async move {
            // Failures are logged and recorded in the status document by the rebuild.
            if rebuild.run(|_| {}).await.is_ok() {
                swapped.invalidate(&*cache).await;
            }
        });
        let status_url = format!("{}/projections/{name}", web::server::API_PREFIX);
        Ok(RebuildStarted::Accepted(
            Json(RebuildAccepted {
                projection: name.to_string(),
                state: ProjectionState::Rebuilding,
                generation,
                status_url: status_url.clone(),
            }),
            status_url,
        ))
    }

    /// List a projection's parked events, in position order.
    #[oai(path = "/projections/:name/parked", method = "get")]
    async fn list_parked(
        &self,
        auth: BearerAuth,
        name: Path<String>,
        /// Page size (clamped to 1..=1000, default 50).
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))]
        limit: Query<Option<u32>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Query<
            Option<u64>,
        >,
    ) -> ApiResult<Json<ParkedList>> {
        auth.0.require(Role::Reader)?;
        let projection = projection(&name.0)?;
        let limit = limit.0.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT);
        let offset = offset.0.unwrap_or(0);
        let page = self
            .state
            .read
            .parked(projection.name(), limit, offset)
            .await?;
        let end = offset + page.items.len() as u64;
        Ok(Json(ParkedList {
            next: (end < page.total).then_some(end),
            items: page.items.into_iter().map(ParkedEventView::from).collect(),
            total: page.total,
            limit,
            offset,
        }))
    }

    /// Retry parked events: the aggregate of parked event `id` has its parked events
    /// re-read, projected again and applied in order; it flows again if all succeed. If one
    /// still fails, it keeps its new error and holds back the rest.
    #[oai(path = "/projections/:name/parked/:id/retry", method = "post")]
    async fn retry(
        &self,
        auth: BearerAuth,
        name: Path<String>,
        id: Path<String>,
    ) -> ApiResult<Json<RetryResult>> {
        auth.0.require(Role::Admin)?;
        let projection = projection(&name.0)?;
        let parked = self
            .state
            .read
            .parked_by_id(projection.name(), &id.0)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("parked event {} not found", id.0)))?;
        let report = retry_parked(&self.state.engine, &*self.state.read, &*projection, &id.0)
            .await?
            .ok_or_else(|| ApiError::NotFound(format!("parked event {} not found", id.0)))?;
        tracing::info!(
            projection = projection.name(),
            aggregate = %parked.aggregate_key,
            applied = report.applied,
            still_parked = report.still_parked,
            subject = %auth.0.sub,
            "parked events retried"
        );
        Ok(Json(RetryResult {
            projection: projection.name().to_string(),
            aggregate_key: parked.aggregate_key,
            applied: report.applied,
            still_parked: report.still_parked,
        }))
    }
}
