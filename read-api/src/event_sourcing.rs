//! Event-sourcing read routes (seed 003): aggregates (current, from the `event-sourcing`
//! projection; or at a past version or time, folded from the event store), the event log
//! (read-only from the event store), snapshots, stats and info.
//!
//! A token that acts for a user ([`web::Claims::acting_user`]) reads only that user's own
//! aggregates (an `es-user` whose id is the user, an order or a payment whose state's
//! `user_id` is the user) and the shared custom ones: another user's aggregate, its events
//! and its snapshots answer 404 like missing ones, and the event-log listings carry the
//! restriction into the store query (the streams it may see, found in the read models), so
//! pages stay full and totals right. `GET /stats` counts everyone's aggregates and is
//! refused to it (403).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use poem_openapi::param::{Path, Query};
use poem_openapi::payload::Json;
use poem_openapi::{Object, OpenApi, Tags};
use serde_json::{json, Value};

use kernel::domain::event_sourcing::projection::{
    assemble, field_doc_id, AGGREGATES, FIELDS, PROJECTION_NAME, SNAPSHOTS, STATE_PART,
};
use kernel::domain::event_sourcing::{
    is_valid_id, AggregateKind, EventKind, EventSourcingPolicy, GenericEvent, GenericState,
    ORDER_STATUSES, OWNER_KEY, PAYMENT_STATUSES, SERVICE_DESCRIPTION, SERVICE_NAME,
    SERVICE_VERSION,
};
use kernel::domain::memento::projection::rfc3339;
use kernel::envelope::StoredEvent;
use kernel::ports::{DocQuery, EventFilter, ReadStore, StreamSet};
use kernel::KernelResult;
use web::{ApiError, ApiResult, BearerAuth, Role};

use crate::query::{found, query, Page};
use crate::ReadState;

/// The context name used for token scopes.
const SCOPE: &str = kernel::domain::Context::EventSourcing.as_str();
/// Documents read per page when a whole set is needed (an aggregate's fields).
const FIELD_PAGE: u32 = 1000;
/// Most orders and payments a user may own for the event-log listings to be filtered for a
/// token acting for that user (their ids go into the store query); beyond, those listings
/// answer 403 and the events are read per aggregate.
pub const MAX_OWNED_STREAMS: u64 = 1000;

#[derive(Tags)]
enum ApiTags {
    /// Generic aggregates, the event log, snapshots, statistics.
    EventSourcing,
}

/// A page of the event log.
#[derive(Debug, Object)]
pub struct EventPage {
    /// `{id, type, aggregate_id, aggregate_type, version, position, data, metadata,
    /// correlation_id, causation_id, actor, timestamp}`, in position order.
    pub items: Vec<Value>,
    /// Matches in all pages.
    pub total: u64,
    /// The offset of the next page; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next: Option<u64>,
    /// The position of the page's last event: pass it as `after_position` (with no
    /// offset) to read on; absent on the last page.
    #[oai(skip_serializing_if_is_none)]
    pub next_after_position: Option<u64>,
    pub limit: u32,
    pub offset: u64,
}

pub struct EventSourcingReadApi {
    pub state: ReadState,
}

/// An RFC 3339 query parameter, or a 422 naming it.
fn parse_time(field: &str, value: Option<&str>) -> ApiResult<Option<DateTime<Utc>>> {
    value
        .map(|raw| {
            DateTime::parse_from_rfc3339(raw)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::invalid(
                        field,
                        "must be an RFC 3339 time, such as 2024-01-01T00:00:00Z",
                    )
                })
        })
        .transpose()
}

/// The `from` (inclusive) and `to` (exclusive) bounds of an event-log query.
type TimeBounds = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

pub(crate) fn time_bounds(from: Option<&str>, to: Option<&str>) -> ApiResult<TimeBounds> {
    let (from, to) = (parse_time("from", from)?, parse_time("to", to)?);
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(ApiError::invalid("to", "must not be before `from`"));
        }
    }
    Ok((from, to))
}

fn unknown_aggregate(id: &str) -> ApiError {
    ApiError::NotFound(format!("aggregate {id} not found"))
}

/// The user an order or a payment belongs to now, from its state's `user_id` in the read
/// models (`None`: it has none, or the read models do not have it yet).
pub async fn state_owner(read: &dyn ReadStore, id: &str) -> KernelResult<Option<String>> {
    let field = read
        .get(FIELDS, &field_doc_id(id, STATE_PART, OWNER_KEY))
        .await?;
    Ok(field
        .as_ref()
        .and_then(|doc| doc.get("value"))
        .and_then(Value::as_str)
        .map(str::to_string))
}

/// Whether `user` may read the aggregate `id` (per the read models): it is shared, or the
/// user owns it. Missing and forgotten aggregates are not visible.
pub async fn visible_to(read: &dyn ReadStore, id: &str, user: &str) -> KernelResult<bool> {
    let Some(doc) = read.get(AGGREGATES, id).await? else {
        return Ok(false);
    };
    let kind = doc
        .get("type")
        .and_then(Value::as_str)
        .and_then(AggregateKind::parse);
    Ok(match kind {
        None => false,
        Some(kind) if kind.is_shared() => true,
        Some(AggregateKind::User) => id == user,
        Some(_) => state_owner(read, id).await?.as_deref() == Some(user),
    })
}

impl EventSourcingReadApi {
    fn policy(&self) -> &EventSourcingPolicy {
        &self.state.event_sourcing
    }

    /// A reader of this context, after the projection reached `min_position`.
    async fn ready(&self, auth: &BearerAuth, min_position: Option<u64>) -> ApiResult<()> {
        self.state
            .reader_ready(auth, SCOPE, PROJECTION_NAME, min_position)
            .await
    }

    /// A reader of this context, for routes that read the event store (always up to date):
    /// `min_position` only has to be a committed position. For a token acting for a user,
    /// whose ownership the read models tell, the projection must have reached it too.
    async fn reader(&self, auth: &BearerAuth, min_position: Option<u64>) -> ApiResult<()> {
        if auth.0.acting_user().is_some() {
            return self.ready(auth, min_position).await;
        }
        auth.0.allow(Role::Reader, SCOPE)?;
        if let Some(wanted) = min_position.filter(|p| *p > 0) {
            let head = self.state.engine.store().head_position().await?;
            if wanted > head {
                return Err(ApiError::invalid(
                    "min_position",
                    format!("{wanted} is beyond the last committed position ({head})"),
                ));
            }
        }
        Ok(())
    }

    /// 404 (like a missing aggregate) unless the token's acting user, if any, may read `id`.
    async fn require_visible(&self, auth: &BearerAuth, id: &str) -> ApiResult<()> {
        let Some(user) = auth.0.acting_user() else {
            return Ok(());
        };
        if visible_to(self.state.read.as_ref(), id, user).await? {
            Ok(())
        } else {
            Err(unknown_aggregate(id))
        }
    }

    /// The streams a token acting for a user may read in the event log (`None`: every one):
    /// its own `es-user`, the orders and payments whose `user_id` is the user (from the read
    /// models), and every custom aggregate. 403 when the user owns more than
    /// [`MAX_OWNED_STREAMS`] orders and payments.
    async fn visible_streams(&self, auth: &BearerAuth) -> ApiResult<Option<Vec<StreamSet>>> {
        let Some(user) = auth.0.acting_user() else {
            return Ok(None);
        };
        let mut q = DocQuery {
            filter: vec![
                ("part".into(), json!(STATE_PART)),
                ("key".into(), json!(OWNER_KEY)),
                ("value".into(), json!(user)),
            ],
            sort: vec![("aggregate_id".into(), true)],
            limit: FIELD_PAGE,
            ..Default::default()
        };
        let mut owned = Vec::new();
        loop {
            let page = self.state.read.find(FIELDS, &q).await?;
            if page.total > MAX_OWNED_STREAMS {
                return Err(ApiError::Forbidden(format!(
                    "user {user} owns more than {MAX_OWNED_STREAMS} orders and payments: the \
                     event log cannot be filtered for this token; read the events of each \
                     aggregate with GET /events/aggregate/{{id}}"
                )));
            }
            let got = page.items.len() as u64;
            owned.extend(page.items.iter().filter_map(|doc| {
                doc.get("aggregate_id")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            }));
            q.offset += got;
            if got == 0 || q.offset >= page.total {
                break;
            }
        }
        let types = |kinds: &[AggregateKind]| -> Vec<String> {
            kinds
                .iter()
                .map(|kind| kind.store_type().to_string())
                .collect()
        };
        Ok(Some(vec![
            StreamSet {
                aggregate_types: types(&[AggregateKind::User]),
                aggregate_ids: Some(vec![user.to_string()]),
            },
            // A custom aggregate with a `user_id` in its state is among `owned`, but its
            // type is not in this set (it is in the next, shared, one).
            StreamSet {
                aggregate_types: types(&[AggregateKind::Order, AggregateKind::Payment]),
                aggregate_ids: Some(owned),
            },
            StreamSet {
                aggregate_types: types(&[AggregateKind::Custom]),
                aggregate_ids: None,
            },
        ]))
    }

    /// The type of an existing aggregate id, from its events.
    async fn resolve(&self, id: &str) -> ApiResult<AggregateKind> {
        if !is_valid_id(id) {
            return Err(unknown_aggregate(id));
        }
        let filter = EventFilter {
            aggregate_types: AggregateKind::store_types(),
            aggregate_id: Some(id.to_string()),
            ..Default::default()
        };
        let page = self
            .state
            .engine
            .store()
            .query_events(&filter, 0, 1)
            .await?;
        page.events
            .first()
            .and_then(|event| AggregateKind::from_store_type(&event.aggregate_type))
            .ok_or_else(|| unknown_aggregate(id))
    }

    /// One event as the API shows it (`user`, not `es-user`; decrypted).
    async fn event_item(&self, stored: StoredEvent) -> ApiResult<Value> {
        let recorded = self.state.engine.record(stored).await?;
        let aggregate_type = AggregateKind::from_store_type(&recorded.aggregate_type).map_or_else(
            || recorded.aggregate_type.clone(),
            |kind| kind.as_str().to_string(),
        );
        let part = |key: &str| {
            recorded
                .data
                .as_ref()
                .and_then(|data| data.get(key))
                .cloned()
                .unwrap_or(Value::Null)
        };
        Ok(json!({
            "id": recorded.event_id,
            "type": recorded.event_type,
            "aggregate_id": recorded.aggregate_id,
            "aggregate_type": aggregate_type,
            "version": recorded.sequence,
            "position": recorded.position,
            "data": part("data"),
            "metadata": part("metadata"),
            "correlation_id": recorded.correlation_id,
            "causation_id": recorded.causation_id,
            "actor": recorded.actor,
            "timestamp": rfc3339(recorded.recorded_at),
            "forgotten": recorded.data.is_none(),
        }))
    }

    /// A page of the event log of this context's aggregates.
    #[allow(clippy::too_many_arguments)]
    async fn event_page(
        &self,
        auth: &BearerAuth,
        mut filter: EventFilter,
        from: Option<String>,
        to: Option<String>,
        limit: Option<u32>,
        offset: Option<u64>,
        after_position: Option<u64>,
    ) -> ApiResult<Json<EventPage>> {
        let (from, to) = time_bounds(from.as_deref(), to.as_deref())?;
        filter.from = from;
        filter.to = to;
        filter.after_position = after_position.unwrap_or(0);
        if filter.aggregate_types.is_empty() {
            filter.aggregate_types = AggregateKind::store_types();
        }
        filter.streams = self.visible_streams(auth).await?;
        let paging = query(limit, offset);
        let page = self
            .state
            .engine
            .store()
            .query_events(&filter, paging.offset, paging.limit)
            .await?;
        let end = paging.offset + page.events.len() as u64;
        let more = end < page.total;
        let last_position = page.events.last().map(|event| event.position);
        let mut items = Vec::with_capacity(page.events.len());
        for stored in page.events {
            items.push(self.event_item(stored).await?);
        }
        Ok(Json(EventPage {
            items,
            total: page.total,
            next: more.then_some(end),
            next_after_position: last_position.filter(|_| more),
            limit: paging.limit,
            offset: paging.offset,
        }))
    }

    /// The aggregate's current document from the read models: its document and its field
    /// documents, read again if the projection moved it in between.
    async fn current(&self, id: &str) -> ApiResult<Value> {
        let what = format!("aggregate {id}");
        let mut doc = found(self.state.read.get(AGGREGATES, id).await?, &what)?;
        for _ in 0..3 {
            let mut fields = Vec::new();
            let mut q = DocQuery {
                filter: vec![("aggregate_id".into(), json!(id))],
                sort: vec![("key".into(), true)],
                limit: FIELD_PAGE,
                ..Default::default()
            };
            loop {
                let page = self.state.read.find(FIELDS, &q).await?;
                let got = page.items.len() as u64;
                fields.extend(page.items);
                q.offset += got;
                if got == 0 || q.offset >= page.total {
                    break;
                }
            }
            let again = found(self.state.read.get(AGGREGATES, id).await?, &what)?;
            if again.get("version") == doc.get("version") {
                let mut current = assemble(&doc, &fields);
                current["current_version"] = doc.get("version").cloned().unwrap_or(Value::Null);
                return Ok(current);
            }
            doc = again;
        }
        Err(ApiError::Unavailable {
            detail: format!("aggregate {id} changes too fast to read consistently"),
            retry_after_secs: 1,
        })
    }

    /// The aggregate folded from its stored events up to `version`, or up to the events
    /// recorded at or before `at`.
    async fn past(
        &self,
        id: &str,
        version: Option<u64>,
        at: Option<DateTime<Utc>>,
    ) -> ApiResult<Value> {
        let kind = self.resolve(id).await?;
        let engine = &self.state.engine;
        let events = engine.store().load_stream(kind.store_type(), id, 0).await?;
        let current = events.last().map_or(0, |event| event.sequence);
        if let Some(version) = version {
            if version == 0 {
                return Err(ApiError::invalid("version", "versions start at 1"));
            }
            if version > current {
                return Err(ApiError::invalid(
                    "version",
                    format!("{version} is beyond the current version of {kind} {id} ({current})"),
                ));
            }
        }
        let mut state = GenericState::default();
        for stored in events {
            let past_version = version.is_some_and(|v| stored.sequence > v);
            let past_time = at.is_some_and(|at| stored.recorded_at > at);
            if past_version || past_time {
                break;
            }
            let recorded = engine.record(stored).await?;
            let data = recorded
                .data
                .ok_or_else(|| ApiError::Gone(format!("{kind} {id} was forgotten")))?;
            let event: GenericEvent = serde_json::from_value(data)
                .map_err(|err| ApiError::Internal(format!("stored event of {id}: {err}")))?;
            state.apply(&event);
        }
        if !state.is_created() {
            let when = at.map(rfc3339).unwrap_or_default();
            return Err(ApiError::NotFound(format!(
                "{kind} {id} did not exist yet at {when}"
            )));
        }
        let mut doc = state.document(kind, id);
        doc["current_version"] = json!(current);
        Ok(doc)
    }
}

#[OpenApi(tag = "ApiTags::EventSourcing")]
impl EventSourcingReadApi {
    /// Get an aggregate: its current state, or (time travel) its state at a past
    /// `version` or at a past time `at` (RFC 3339), folded from its events. Another user's
    /// aggregate answers a token acting for a user 404, like a missing one.
    #[oai(path = "/aggregates/:id", method = "get")]
    async fn get_aggregate(
        &self,
        auth: BearerAuth,
        id: Path<String>,
        /// Time travel: the state after this many events (1 is the creation).
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        version: Query<Option<u64>>,
        /// Time travel: the state after the events recorded at or before this time.
        at: Query<Option<String>>,
        /// Wait until the read model has applied this position (read your writes).
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        let at = parse_time("at", at.0.as_deref())?;
        if version.0.is_some() && at.is_some() {
            return Err(ApiError::invalid("at", "give `version` or `at`, not both"));
        }
        if version.0.is_none() && at.is_none() {
            self.ready(&auth, min_position.0).await?;
            self.require_visible(&auth, &id.0).await?;
            return Ok(Json(self.current(&id.0).await?));
        }
        self.reader(&auth, min_position.0).await?;
        self.require_visible(&auth, &id.0).await?;
        Ok(Json(self.past(&id.0, version.0, at).await?))
    }

    /// The events of one aggregate, oldest first (404 for another user's aggregate, to a
    /// token acting for a user).
    #[oai(path = "/events/aggregate/:id", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn events_of_aggregate(
        &self,
        auth: BearerAuth,
        id: Path<String>,
        /// Only events recorded at or after this time (RFC 3339).
        from: Query<Option<String>>,
        /// Only events recorded before this time (RFC 3339).
        to: Query<Option<String>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Query<
            Option<u32>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Query<
            Option<u64>,
        >,
        /// Only events after this global position (a cursor: a page's `next_after_position`).
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        after_position: Query<Option<u64>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<EventPage>> {
        self.reader(&auth, min_position.0).await?;
        self.require_visible(&auth, &id.0).await?;
        let kind = self.resolve(&id.0).await?;
        let filter = EventFilter {
            aggregate_types: vec![kind.store_type().to_string()],
            aggregate_id: Some(id.0.clone()),
            ..Default::default()
        };
        self.event_page(
            &auth,
            filter,
            from.0,
            to.0,
            limit.0,
            offset.0,
            after_position.0,
        )
        .await
    }

    /// The events of one type (`user_created`, ...), oldest first. A token acting for a
    /// user gets only those of its own aggregates and of the shared custom ones (403 if the
    /// user owns more than 1000 orders and payments).
    #[oai(path = "/events/type/:type", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn events_of_type(
        &self,
        auth: BearerAuth,
        #[oai(name = "type")] event_type: Path<String>,
        from: Query<Option<String>>,
        to: Query<Option<String>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Query<
            Option<u32>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Query<
            Option<u64>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        after_position: Query<Option<u64>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<EventPage>> {
        self.reader(&auth, min_position.0).await?;
        let kind = EventKind::parse(&event_type.0).ok_or_else(|| {
            ApiError::invalid(
                "type",
                format!(
                    "must be one of {}",
                    EventKind::ALL.map(EventKind::as_str).join(", ")
                ),
            )
        })?;
        let filter = EventFilter {
            event_type: Some(kind.as_str().to_string()),
            ..Default::default()
        };
        self.event_page(
            &auth,
            filter,
            from.0,
            to.0,
            limit.0,
            offset.0,
            after_position.0,
        )
        .await
    }

    /// The events of the aggregates of one type (`user`, `order`, `payment`, `custom`). A
    /// token acting for a user gets only those of its own aggregates (and every custom one),
    /// like `GET /events`.
    #[oai(path = "/events/aggregate-type/:type", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn events_of_aggregate_type(
        &self,
        auth: BearerAuth,
        #[oai(name = "type")] aggregate_type: Path<String>,
        from: Query<Option<String>>,
        to: Query<Option<String>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Query<
            Option<u32>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Query<
            Option<u64>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        after_position: Query<Option<u64>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<EventPage>> {
        self.reader(&auth, min_position.0).await?;
        let kind = AggregateKind::parse(&aggregate_type.0).ok_or_else(|| {
            ApiError::invalid(
                "type",
                format!(
                    "must be one of {}",
                    AggregateKind::ALL.map(AggregateKind::as_str).join(", ")
                ),
            )
        })?;
        let filter = EventFilter {
            aggregate_types: vec![kind.store_type().to_string()],
            ..Default::default()
        };
        self.event_page(
            &auth,
            filter,
            from.0,
            to.0,
            limit.0,
            offset.0,
            after_position.0,
        )
        .await
    }

    /// Every event of this context's aggregates, oldest first. A token acting for a user
    /// gets only the events of its own `user`, its orders and payments (`user_id`) and the
    /// shared custom aggregates; 403 if the user owns more than 1000 orders and payments.
    #[oai(path = "/events", method = "get")]
    #[allow(clippy::too_many_arguments)]
    async fn all_events(
        &self,
        auth: BearerAuth,
        from: Query<Option<String>>,
        to: Query<Option<String>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Query<
            Option<u32>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Query<
            Option<u64>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        after_position: Query<Option<u64>>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<EventPage>> {
        self.reader(&auth, min_position.0).await?;
        self.event_page(
            &auth,
            EventFilter::default(),
            from.0,
            to.0,
            limit.0,
            offset.0,
            after_position.0,
        )
        .await
    }

    /// The snapshots taken of an aggregate (`POST /snapshots`), newest first (404 for
    /// another user's aggregate, to a token acting for a user).
    #[oai(path = "/snapshots/:aggregate_id", method = "get")]
    async fn snapshots(
        &self,
        auth: BearerAuth,
        aggregate_id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "4294967295")))] limit: Query<
            Option<u32>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))] offset: Query<
            Option<u64>,
        >,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Page>> {
        self.ready(&auth, min_position.0).await?;
        let id = &aggregate_id.0;
        self.require_visible(&auth, id).await?;
        found(
            self.state.read.get(AGGREGATES, id).await?,
            &format!("aggregate {id}"),
        )?;
        let mut q = query(limit.0, offset.0);
        q.filter.push(("aggregate_id".into(), json!(id)));
        q.sort = vec![("position".into(), false)];
        let page = self.state.read.find(SNAPSHOTS, &q).await?;
        Ok(Json(Page::new(page, q.limit, q.offset)))
    }

    /// The newest snapshot of an aggregate (404 if it has none, or if it is another user's
    /// and the token acts for a user).
    #[oai(path = "/snapshots/:aggregate_id/latest", method = "get")]
    async fn latest_snapshot(
        &self,
        auth: BearerAuth,
        aggregate_id: Path<String>,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        let id = &aggregate_id.0;
        self.require_visible(&auth, id).await?;
        found(
            self.state.read.get(AGGREGATES, id).await?,
            &format!("aggregate {id}"),
        )?;
        let mut q = query(Some(1), None);
        q.filter.push(("aggregate_id".into(), json!(id)));
        q.sort = vec![("position".into(), false)];
        let page = self.state.read.find(SNAPSHOTS, &q).await?;
        let latest = page.items.into_iter().next();
        match latest {
            Some(doc) => Ok(Json(found(Some(doc), &format!("the snapshot of {id}"))?)),
            None => Err(ApiError::NotFound(format!(
                "aggregate {id} has no snapshot"
            ))),
        }
    }

    /// Statistics: events, aggregates and event types in the event store; aggregates by
    /// type, active aggregates and snapshots in the read models. They count every user's
    /// aggregates, so a token acting for a user is refused (403).
    #[oai(path = "/stats", method = "get")]
    async fn stats(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        self.ready(&auth, min_position.0).await?;
        if let Some(user) = auth.0.acting_user() {
            return Err(ApiError::Forbidden(format!(
                "this token acts for user {user}; the statistics count every user's aggregates \
                 and need a token that acts for no user"
            )));
        }
        let store = self.state.engine.store();
        let types = AggregateKind::store_types();
        let totals = store.event_stats(&types).await?;
        let count = |collection: &'static str, filter: Vec<(String, Value)>| async move {
            let q = DocQuery {
                filter,
                limit: 1,
                ..Default::default()
            };
            self.state
                .read
                .find(collection, &q)
                .await
                .map(|page| page.total)
        };
        let mut aggregates_by_type = BTreeMap::new();
        let mut snapshots_by_type = BTreeMap::new();
        for kind in AggregateKind::ALL {
            let name = kind.as_str();
            let aggregates = count(AGGREGATES, vec![("type".into(), json!(name))]).await?;
            aggregates_by_type.insert(name, aggregates);
            let snapshots = count(SNAPSHOTS, vec![("aggregate_type".into(), json!(name))]).await?;
            snapshots_by_type.insert(name, snapshots);
        }
        let active = count(AGGREGATES, vec![("active".into(), json!(true))]).await?;
        let mut events_by_type = BTreeMap::new();
        for kind in EventKind::ALL {
            let filter = EventFilter {
                aggregate_types: types.clone(),
                event_type: Some(kind.as_str().to_string()),
                ..Default::default()
            };
            events_by_type.insert(
                kind.as_str(),
                store.query_events(&filter, 0, 0).await?.total,
            );
        }
        Ok(Json(json!({
            "events": totals.events,
            "aggregates": totals.aggregates,
            "event_types": totals.event_types,
            "events_by_type": events_by_type,
            "aggregates_by_type": aggregates_by_type,
            "active_aggregates": active,
            "snapshots": snapshots_by_type.values().sum::<u64>(),
            "snapshots_by_type": snapshots_by_type,
            "max_aggregates": self.policy().max_aggregates,
        })))
    }

    /// What this service is and the rules it applies (the seed's configuration).
    #[oai(path = "/info", method = "get")]
    async fn info(
        &self,
        auth: BearerAuth,
        #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
        min_position: Query<Option<u64>>,
    ) -> ApiResult<Json<Value>> {
        self.reader(&auth, min_position.0).await?;
        let policy = self.policy();
        let by_aggregate: BTreeMap<&str, Vec<&str>> = AggregateKind::ALL
            .iter()
            .map(|kind| {
                let events = kind.event_types().iter().map(|e| e.as_str()).collect();
                (kind.as_str(), events)
            })
            .collect();
        let creation: BTreeMap<&str, &str> = AggregateKind::ALL
            .iter()
            .map(|kind| (kind.as_str(), kind.creation_event().as_str()))
            .collect();
        Ok(Json(json!({
            "name": SERVICE_NAME,
            "version": SERVICE_VERSION,
            "description": SERVICE_DESCRIPTION,
            "supported_event_types": policy.supported_event_types,
            "supported_aggregate_types": policy.supported_aggregate_types,
            "validation_rules": policy.validation_rules,
            "max_aggregates": policy.max_aggregates,
            "max_snapshots": policy.max_snapshots,
            "event_types_by_aggregate_type": by_aggregate,
            "creation_events": creation,
            "order_statuses": ORDER_STATUSES,
            "payment_statuses": PAYMENT_STATUSES,
        })))
    }
}
