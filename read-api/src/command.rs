//! Command reads (seed 004), served from the `command` projection: commands and their
//! status, the execution history (newest first), the audit trail, the queue and the
//! schedule, per-type metrics with latency percentiles, and the handlers with their circuit
//! breakers (a breaker shows `half_open` once its `retry_at` has passed).
//!
//! A token that acts for a user ([`web::Claims::acting_user`]) sees only the commands whose
//! payload's `user_id` is that user, with their history and audit entries: the restriction
//! is part of each store query, so pages stay full and totals count only what it may see,
//! and another user's command or audit entry by id answers 404 exactly like a missing one.
//! The handlers and their circuit breakers describe the shared service and stay readable;
//! the metrics aggregate every user's runs and are refused to it (403).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};
use serde_json::{json, Value};

use kernel::domain::command::projection::{COUNTER_KIND, PROJECTION_NAME};
use kernel::domain::command::read_model::{
    count_of, default_description, is_command_type, is_status, text, LatencyHistogram, AUDIT,
    BUCKETS_FIELD, COMMANDS, COMMAND_TYPES, HANDLERS, HISTORY, METRICS,
};
use kernel::domain::memento::projection::rfc3339;
use kernel::ports::DocQuery;
use kernel::spec::{Filter, Op, SortKey};
use web::{ApiError, ApiResult, BearerAuth, Claims};

use crate::query::{found, query, Page, MAX_LIMIT};
use crate::ReadState;

/// The context name used for token scopes.
const SCOPE: &str = kernel::domain::Context::Command.as_str();

#[derive(Tags)]
enum ApiTags {
    /// Commands, their history, audit trail, metrics, handlers and circuit breakers.
    Commands,
}

/// A handler of one command type, with its availability and circuit breaker.
#[derive(Debug, Object)]
pub struct HandlerView {
    pub name: String,
    #[oai(skip_serializing_if_is_none)]
    pub description: Option<String>,
    pub registered: bool,
    /// Registered, not disabled, and its circuit is not open (a half-open circuit lets a
    /// probe through).
    pub available: bool,
    /// `closed`, `open`, or `half_open` (open, and `retry_at` has passed).
    pub circuit: String,
    pub consecutive_failures: u64,
    /// RFC 3339; when the circuit opened.
    #[oai(skip_serializing_if_is_none)]
    pub opened_at: Option<String>,
    /// RFC 3339; when an open circuit lets a probe through.
    #[oai(skip_serializing_if_is_none)]
    pub retry_at: Option<String>,
    /// `circuit_open`, `disabled` or `unregistered` while unavailable.
    #[oai(skip_serializing_if_is_none)]
    pub unavailable_reason: Option<String>,
    /// RFC 3339; absent while the handler has no events.
    #[oai(skip_serializing_if_is_none)]
    pub updated_at: Option<String>,
}

/// Every handler: the eight built-in ones first, in seed order.
#[derive(Debug, Object)]
pub struct HandlerList {
    pub items: Vec<HandlerView>,
    pub total: u64,
}

/// The circuit breaker of one handler.
#[derive(Debug, Object)]
pub struct BreakerView {
    pub name: String,
    /// `closed`, `open` or `half_open`.
    pub state: String,
    pub consecutive_failures: u64,
    #[oai(skip_serializing_if_is_none)]
    pub opened_at: Option<String>,
    #[oai(skip_serializing_if_is_none)]
    pub retry_at: Option<String>,
}

#[derive(Debug, Object)]
pub struct BreakerList {
    pub items: Vec<BreakerView>,
    pub total: u64,
}

/// Runs of one command type since its last metrics reset.
#[derive(Debug, Object)]
pub struct MetricsView {
    pub command_type: String,
    /// Executed and failed runs.
    pub count: u64,
    pub failures: u64,
    /// failures / count; 0 without runs.
    pub failure_rate: f64,
    /// Latency percentiles in ms, estimated from a log-scale histogram (at most 9.05 %
    /// off); absent without runs.
    #[oai(skip_serializing_if_is_none)]
    pub p50_ms: Option<f64>,
    #[oai(skip_serializing_if_is_none)]
    pub p95_ms: Option<f64>,
    #[oai(skip_serializing_if_is_none)]
    pub p99_ms: Option<f64>,
    /// RFC 3339: the last reset; absent if the type was never reset.
    #[oai(skip_serializing_if_is_none)]
    pub since: Option<String>,
}

#[derive(Debug, Object)]
pub struct MetricsList {
    /// One per command type, in seed order.
    pub items: Vec<MetricsView>,
    pub total: u64,
}

pub struct CommandReadApi {
    pub state: ReadState,
}

fn unknown_type(field: &str, value: &str) -> ApiError {
    ApiError::invalid(
        field,
        format!(
            "`{}` is not a command type; one of {}",
            value.chars().take(64).collect::<String>(),
            COMMAND_TYPES.join(", ")
        ),
    )
}

/// The field of a command document naming its user (inside the payload).
const COMMAND_OWNER: &str = "payload.user_id";
/// The field of a history or audit entry naming the command's user.
const ENTRY_OWNER: &str = "user_id";

/// The equality filter on `field` that keeps a query to the token's acting user's own
/// documents; nothing when the token is not restricted.
fn owned(claims: &Claims, field: &str) -> Option<(String, Value)> {
    claims
        .acting_user()
        .map(|user| (field.to_string(), json!(user)))
}

/// A document read by id, or `None` (404, like a missing one) when the acting user does
/// not own it; `owner` picks the user a document names.
fn visible(
    claims: &Claims,
    doc: Option<Value>,
    owner: fn(&Value) -> Option<&str>,
) -> Option<Value> {
    match claims.acting_user() {
        None => doc,
        Some(user) => doc.filter(|doc| owner(doc) == Some(user)),
    }
}

fn command_owner(doc: &Value) -> Option<&str> {
    doc.get("payload")
        .and_then(|payload| payload.get("user_id"))
        .and_then(Value::as_str)
}

fn entry_owner(doc: &Value) -> Option<&str> {
    doc.get(ENTRY_OWNER).and_then(Value::as_str)
}

/// The metrics count every user's runs: a token acting for one user may not read them.
fn refuse_acting(claims: &Claims, what: &str) -> ApiResult<()> {
    match claims.acting_user() {
        Some(user) => Err(ApiError::Forbidden(format!(
            "this token acts for user {user}; {what} aggregate every user's commands and need \
             a token that acts for no user"
        ))),
        None => Ok(()),
    }
}

fn checked_type(field: &str, value: &str) -> ApiResult<()> {
    if is_command_type(value) {
        Ok(())
    } else {
        Err(unknown_type(field, value))
    }
}

/// An RFC 3339 query parameter, in the fixed-width form the read models store, or a 422.
fn parse_time(field: &str, raw: &str) -> ApiResult<String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| rfc3339(t.with_timezone(&Utc)))
        .map_err(|_| {
            ApiError::invalid(
                field,
                "must be an RFC 3339 time, such as 2024-01-01T00:00:00Z",
            )
        })
}

/// A handler as its document says, or as built in when it has none.
fn handler_view(name: &str, doc: Option<&Value>, now: &str) -> HandlerView {
    let flag = |field: &str, default: bool| {
        doc.and_then(|d| d.get(field))
            .and_then(Value::as_bool)
            .unwrap_or(default)
    };
    let owned = |field: &str| doc.and_then(|d| text(d, field)).map(str::to_string);
    let retry_at = owned("retry_at");
    let stored = owned("circuit").unwrap_or_else(|| "closed".into());
    let due = retry_at.as_deref().is_some_and(|retry| retry <= now);
    let circuit = if stored == "open" && due {
        "half_open".to_string()
    } else {
        stored
    };
    let reason = owned("unavailable_reason");
    let registered = flag("registered", true);
    let probe = circuit == "half_open" && reason.as_deref() == Some("circuit_open");
    HandlerView {
        name: name.to_string(),
        description: owned("description").or_else(|| default_description(name).map(str::to_string)),
        registered,
        available: registered && (flag("available", true) || probe),
        circuit,
        consecutive_failures: doc
            .and_then(|d| d.get("consecutive_failures"))
            .and_then(Value::as_u64)
            .unwrap_or(0),
        opened_at: owned("opened_at"),
        retry_at,
        unavailable_reason: if probe { None } else { reason },
        updated_at: owned("updated_at"),
    }
}

impl CommandReadApi {
    /// A reader of this context, after the projection reached `min_position`.
    async fn ready(&self, auth: &BearerAuth, min_position: Option<u64>) -> ApiResult<()> {
        self.state
            .reader_ready(auth, SCOPE, PROJECTION_NAME, min_position)
            .await
    }

    async fn page(
        &self,
        collection: &str,
        filter: Vec<(String, Value)>,
        condition: Option<Filter>,
        sort: Vec<SortKey>,
        limit: Option<u32>,
        offset: Option<u64>,
    ) -> ApiResult<Json<Page>> {
        let mut q = query(limit, offset);
        q.filter = filter;
        q.condition = condition;
        q.sort = sort;
        let page = self.state.read.find(collection, &q).await?;
        Ok(Json(Page::new(page, q.limit, q.offset)))
    }

    /// Every document matching `filter`, read page by page.
    async fn all(&self, collection: &str, filter: Vec<(String, Value)>) -> ApiResult<Vec<Value>> {
        let mut docs = Vec::new();
        loop {
            let q = DocQuery {
                filter: filter.clone(),
                condition: None,
                sort: vec![],
                limit: MAX_LIMIT,
                offset: docs.len() as u64,
            };
            let page = self.state.read.find(collection, &q).await?;
            let done =
                page.items.is_empty() || docs.len() as u64 + page.items.len() as u64 >= page.total;
            docs.extend(page.items);
            if done {
                return Ok(docs);
            }
        }
    }

    /// Every handler: the eight built-in ones, then any other with a document.
    async fn handlers(&self) -> ApiResult<Vec<HandlerView>> {
        let now = rfc3339(Utc::now());
        let mut docs: BTreeMap<String, Value> = self
            .all(HANDLERS, vec![])
            .await?
            .into_iter()
            .filter_map(|doc| Some((text(&doc, "name")?.to_string(), doc)))
            .collect();
        let mut views: Vec<HandlerView> = COMMAND_TYPES
            .iter()
            .map(|name| handler_view(name, docs.remove(*name).as_ref(), &now))
            .collect();
        views.extend(
            docs.iter()
                .map(|(name, doc)| handler_view(name, Some(doc), &now)),
        );
        Ok(views)
    }

    /// Metrics of the given types (all eight when `only` is `None`): one counter document
    /// per type, however many runs it counts.
    async fn metrics(&self, only: Option<&str>) -> ApiResult<Vec<MetricsView>> {
        let mut filter = vec![("kind".to_string(), json!(COUNTER_KIND))];
        if let Some(command_type) = only {
            filter.push(("command_type".into(), json!(command_type)));
        }
        let mut counters: BTreeMap<String, Value> = self
            .all(METRICS, filter)
            .await?
            .into_iter()
            .filter_map(|doc| Some((text(&doc, "command_type")?.to_string(), doc)))
            .collect();
        let types: Vec<&str> = match only {
            Some(command_type) => vec![command_type],
            None => COMMAND_TYPES.to_vec(),
        };
        Ok(types
            .into_iter()
            .map(|command_type| metrics_view(command_type, counters.remove(command_type)))
            .collect())
    }
}

/// A type's metrics from its counter document (none: nothing ran since the start).
fn metrics_view(command_type: &str, counters: Option<Value>) -> MetricsView {
    let counters = counters.unwrap_or(Value::Null);
    let histogram = LatencyHistogram::from_counts(counters.get(BUCKETS_FIELD));
    let count = count_of(counters.get("count"));
    let failures = count_of(counters.get("failures"));
    let ms = |p| {
        let us = histogram.percentile_us(p).filter(|_| count > 0);
        us.map(|us| us / 1000.0)
    };
    MetricsView {
        command_type: command_type.to_string(),
        count,
        failures,
        failure_rate: if count == 0 {
            0.0
        } else {
            failures as f64 / count as f64
        },
        p50_ms: ms(50.0),
        p95_ms: ms(95.0),
        p99_ms: ms(99.0),
        since: text(&counters, "last_reset_at").map(str::to_string),
    }
}

/// `?min_position=`: wait until the read model has applied this position (read your writes).
type MinPosition = Query<Option<u64>>;
type Limit = Query<Option<u32>>;
type Offset = Query<Option<u64>>;

#[OpenApi]
impl CommandReadApi {
    /// List commands, oldest first, optionally by status and type. A token acting for a
    /// user lists only the commands whose `user_id` is that user.
    #[oai(path = "/commands", method = "get", tag = "ApiTags::Commands")]
    async fn list_commands(
        &self,
        auth: BearerAuth,
        /// queued, scheduled, executed, failed, undone or cancelled.
        #[oai(validator(max_length = 64))]
        status: Query<Option<String>>,
        /// A command type: payment, user, order, notification, inventory, refund, audit
        /// or system.
        #[oai(name = "type", validator(max_length = 64))]
        command_type: Query<Option<String>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let mut filter = Vec::new();
        if let Some(status) = status.0 {
            if !is_status(&status) {
                return Err(ApiError::invalid(
                    "status",
                    "must be one of queued, scheduled, executed, failed, undone, cancelled",
                ));
            }
            filter.push(("status".to_string(), json!(status)));
        }
        if let Some(command_type) = command_type.0 {
            checked_type("type", &command_type)?;
            filter.push(("command_type".to_string(), json!(command_type)));
        }
        filter.extend(owned(&auth.0, COMMAND_OWNER));
        let sort = vec![("created_at".to_string(), true)];
        self.page(COMMANDS, filter, None, sort, limit.0, offset.0)
            .await
    }

    /// The execution history (executed, failed and undone runs), newest first. A token
    /// acting for a user sees only the runs of that user's commands.
    #[oai(path = "/commands/history", method = "get", tag = "ApiTags::Commands")]
    async fn history(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let sort = vec![("position".to_string(), false)];
        let filter = owned(&auth.0, ENTRY_OWNER).into_iter().collect();
        self.page(HISTORY, filter, None, sort, limit.0, offset.0)
            .await
    }

    /// Queued commands, oldest first (a token acting for a user: that user's only).
    #[oai(path = "/commands/queue", method = "get", tag = "ApiTags::Commands")]
    async fn queue(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let mut filter = vec![("status".to_string(), json!("queued"))];
        filter.extend(owned(&auth.0, COMMAND_OWNER));
        let sort = vec![("queued_at".to_string(), true)];
        self.page(COMMANDS, filter, None, sort, limit.0, offset.0)
            .await
    }

    /// Scheduled commands, the soonest due first (a token acting for a user: that user's
    /// only).
    #[oai(
        path = "/commands/scheduled",
        method = "get",
        tag = "ApiTags::Commands"
    )]
    async fn scheduled(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let mut filter = vec![("status".to_string(), json!("scheduled"))];
        filter.extend(owned(&auth.0, COMMAND_OWNER));
        let sort = vec![("execute_at".to_string(), true)];
        self.page(COMMANDS, filter, None, sort, limit.0, offset.0)
            .await
    }

    /// Every handler with its availability and circuit breaker. Handlers belong to no user:
    /// every reader of the context sees them, a token acting for a user too.
    #[oai(path = "/commands/handlers", method = "get", tag = "ApiTags::Commands")]
    async fn list_handlers(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<HandlerList>> {
        self.ready(&auth, min_position.0).await?;
        let items = self.handlers().await?;
        Ok(Json(HandlerList {
            total: items.len() as u64,
            items,
        }))
    }

    /// A handler by name (a command type).
    #[oai(
        path = "/commands/handlers/:name",
        method = "get",
        tag = "ApiTags::Commands"
    )]
    async fn get_handler(
        &self,
        auth: BearerAuth,
        #[oai(validator(max_length = 64))] name: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<HandlerView>> {
        self.ready(&auth, min_position.0).await?;
        let doc = self.state.read.get(HANDLERS, &name.0).await?;
        if doc.is_none() && !is_command_type(&name.0) {
            return Err(ApiError::NotFound(format!("handler {} not found", name.0)));
        }
        let now = rfc3339(Utc::now());
        Ok(Json(handler_view(&name.0, doc.as_ref(), &now)))
    }

    /// The audit trail: one entry per event of the context, oldest first. A token acting
    /// for a user sees only the entries of that user's commands (not those of handlers,
    /// metrics resets or history clears).
    #[oai(path = "/commands/audit", method = "get", tag = "ApiTags::Commands")]
    async fn audit(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let sort = vec![("position".to_string(), true)];
        let filter = owned(&auth.0, ENTRY_OWNER).into_iter().collect();
        self.page(AUDIT, filter, None, sort, limit.0, offset.0)
            .await
    }

    /// Audit entries between two times (both inclusive, RFC 3339), oldest first; for a
    /// token acting for a user, those of that user's commands only.
    #[oai(
        path = "/commands/audit/range",
        method = "get",
        tag = "ApiTags::Commands"
    )]
    async fn audit_range(
        &self,
        auth: BearerAuth,
        #[oai(validator(max_length = 64))] from: Query<String>,
        #[oai(validator(max_length = 64))] to: Query<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let (from, to) = (parse_time("from", &from.0)?, parse_time("to", &to.0)?);
        if from > to {
            return Err(ApiError::invalid("to", "must not be before `from`"));
        }
        let condition = Filter::And(vec![
            Filter::condition("at", Op::Gte, json!(from)),
            Filter::condition("at", Op::Lte, json!(to)),
        ]);
        let sort = vec![("at".to_string(), true), ("position".to_string(), true)];
        let filter = owned(&auth.0, ENTRY_OWNER).into_iter().collect();
        self.page(AUDIT, filter, Some(condition), sort, limit.0, offset.0)
            .await
    }

    /// Audit entries of one command type, oldest first; for a token acting for a user,
    /// those of that user's commands only.
    #[oai(
        path = "/commands/audit/type/:type",
        method = "get",
        tag = "ApiTags::Commands"
    )]
    async fn audit_of_type(
        &self,
        auth: BearerAuth,
        #[oai(name = "type", validator(max_length = 64))] command_type: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Limit,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Offset,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        checked_type("type", &command_type.0)?;
        let mut filter = vec![("command_type".to_string(), json!(command_type.0))];
        filter.extend(owned(&auth.0, ENTRY_OWNER));
        let sort = vec![("position".to_string(), true)];
        self.page(AUDIT, filter, None, sort, limit.0, offset.0)
            .await
    }

    /// An audit entry by id (the id of the event it records). Another user's entry answers
    /// a token acting for a user 404, like a missing one.
    #[oai(
        path = "/commands/audit/:id",
        method = "get",
        tag = "ApiTags::Commands"
    )]
    async fn audit_entry(
        &self,
        auth: BearerAuth,
        #[oai(validator(max_length = 64))] id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        let Ok(id) = uuid::Uuid::parse_str(&id.0) else {
            return Err(ApiError::invalid("id", "must be a UUID (an event id)"));
        };
        let doc = self.state.read.get(AUDIT, &id.to_string()).await?;
        let doc = visible(&auth.0, doc, entry_owner);
        Ok(Json(found(doc, &format!("audit entry {id}"))?))
    }

    /// Metrics of every command type since its last reset. They count every user's runs,
    /// so a token acting for a user is refused (403).
    #[oai(path = "/commands/metrics", method = "get", tag = "ApiTags::Commands")]
    async fn list_metrics(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<MetricsList>> {
        self.ready(&auth, min_position.0).await?;
        refuse_acting(&auth.0, "metrics")?;
        let items = self.metrics(None).await?;
        Ok(Json(MetricsList {
            total: items.len() as u64,
            items,
        }))
    }

    /// Metrics of one command type since its last reset; refused (403) to a token acting
    /// for a user, like all metrics.
    #[oai(
        path = "/commands/metrics/:type",
        method = "get",
        tag = "ApiTags::Commands"
    )]
    async fn metrics_of_type(
        &self,
        auth: BearerAuth,
        #[oai(name = "type", validator(max_length = 64))] command_type: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<MetricsView>> {
        self.ready(&auth, min_position.0).await?;
        refuse_acting(&auth.0, "metrics")?;
        checked_type("type", &command_type.0)?;
        let mut items = self.metrics(Some(&command_type.0)).await?;
        items
            .pop()
            .map(Json)
            .ok_or_else(|| unknown_type("type", &command_type.0))
    }

    /// The circuit breaker of every handler (shared state of the service: readable by a
    /// token acting for a user too).
    #[oai(
        path = "/commands/circuit-breaker/status",
        method = "get",
        tag = "ApiTags::Commands"
    )]
    async fn breakers(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<BreakerList>> {
        self.ready(&auth, min_position.0).await?;
        let items: Vec<BreakerView> = self
            .handlers()
            .await?
            .into_iter()
            .map(|handler| BreakerView {
                name: handler.name,
                state: handler.circuit,
                consecutive_failures: handler.consecutive_failures,
                opened_at: handler.opened_at,
                retry_at: handler.retry_at,
            })
            .collect();
        Ok(Json(BreakerList {
            total: items.len() as u64,
            items,
        }))
    }

    /// A command and its status. Another user's command answers a token acting for a user
    /// 404, like a missing one.
    #[oai(path = "/commands/:id", method = "get", tag = "ApiTags::Commands")]
    async fn get_command(
        &self,
        auth: BearerAuth,
        #[oai(validator(max_length = 256))] id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: MinPosition,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        let doc = self.state.read.get(COMMANDS, &id.0).await?;
        let doc = visible(&auth.0, doc, command_owner);
        Ok(Json(found(doc, &format!("command {}", id.0))?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2024-01-01T00:01:00.000000Z";

    #[test]
    fn a_handler_without_events_is_built_in() {
        let view = handler_view("payment", None, NOW);
        assert_eq!(view.name, "payment");
        assert!(view.registered && view.available);
        assert_eq!(view.circuit, "closed");
        assert_eq!(view.consecutive_failures, 0);
        assert_eq!(view.description.as_deref(), default_description("payment"));
        assert!(view.opened_at.is_none() && view.retry_at.is_none() && view.updated_at.is_none());
    }

    #[test]
    fn an_open_circuit_turns_half_open_at_retry_at() {
        let open = |retry_at: &str| {
            json!({
                "name": "order", "registered": true, "available": false, "circuit": "open",
                "consecutive_failures": 5, "opened_at": "2024-01-01T00:00:00.000000Z",
                "retry_at": retry_at, "unavailable_reason": "circuit_open",
                "updated_at": "2024-01-01T00:00:00.000000Z",
            })
        };
        let still_open = handler_view("order", Some(&open("2024-01-01T00:01:00.000001Z")), NOW);
        assert_eq!(still_open.circuit, "open");
        assert!(!still_open.available);
        assert_eq!(
            still_open.unavailable_reason.as_deref(),
            Some("circuit_open")
        );
        assert_eq!(still_open.consecutive_failures, 5);
        let probing = handler_view("order", Some(&open(NOW)), NOW);
        assert_eq!(probing.circuit, "half_open");
        assert!(
            probing.available,
            "a half-open circuit lets a probe through"
        );
        assert!(probing.unavailable_reason.is_none());
        assert_eq!(probing.retry_at.as_deref(), Some(NOW));
    }

    #[test]
    fn disabled_and_unregistered_handlers_are_unavailable() {
        let disabled = json!({
            "name": "audit", "registered": true, "available": false, "circuit": "closed",
            "consecutive_failures": 0, "unavailable_reason": "disabled",
        });
        let view = handler_view("audit", Some(&disabled), NOW);
        assert!(!view.available);
        assert_eq!(view.circuit, "closed");
        assert_eq!(view.unavailable_reason.as_deref(), Some("disabled"));
        let gone = json!({
            "name": "audit", "registered": false, "available": false, "circuit": "closed",
            "unavailable_reason": "unregistered",
        });
        let view = handler_view("audit", Some(&gone), NOW);
        assert!(!view.registered && !view.available);
    }

    #[test]
    fn times_are_normalized_and_checked() {
        assert_eq!(
            parse_time("from", "2024-01-01T01:00:00+01:00").expect("valid"),
            "2024-01-01T00:00:00.000000Z"
        );
        assert!(parse_time("from", "2024-01-01").is_err());
        assert!(checked_type("type", "payment").is_ok());
        assert!(checked_type("type", "PAYMENT").is_err());
    }
}
