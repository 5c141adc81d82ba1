//! Event-sourcing routes (seed 003): generic aggregates (user, order, payment, custom),
//! events published with optimistic concurrency, and forced snapshots.
//!
//! An aggregate id is unique across the four types (a reservation taken with the creation
//! event); the type of an existing id is looked up in the event store.
//!
//! A token that acts for a user ([`web::Claims::acting_user`]) writes only that user's own
//! aggregates: an `es-user` whose id is the user, an order or a payment whose state's
//! `user_id` is the user. Another user's answers 404 like a missing one; a write that would
//! leave the aggregate belonging to someone else (creating it for another user, or changing
//! its `user_id`) is a 403. Custom aggregates have no owner and are shared, like the
//! repository's products. Both checks run on the state as loaded and as decided, inside the
//! unit of work.

use std::collections::BTreeMap;

use chrono::Utc;
use poem::Request;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{Enum, Object, OpenApi, Tags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use uuid::Uuid;

use kernel::domain::event_sourcing::{
    is_valid_id, visible_to, AggregateKind, CustomKind, EventKind, EventSourcingPolicy,
    GenericAggregate, GenericCommand, GenericEvent, GenericState, Kind, OrderKind, PaymentKind,
    SnapshotLog, SnapshotLogCommand, UserKind, ID_RESERVATION_SCOPE, OWNER_KEY, SNAPSHOT_LOG,
};
use kernel::domain::DomainError;
use kernel::engine::{Engine, UnitOfWork};
use kernel::envelope::{CommandContext, Committed, Reservation};
use kernel::ports::EventFilter;
use kernel::{KernelError, KernelResult};
use web::{ApiError, ApiResult, BearerAuth, Role, StrictJson, Text};

use crate::write::{context, expected_version, metadata_map, new_id, request_id, Written};
use crate::WriteState;

/// The context name used for token scopes.
const SCOPE: &str = kernel::domain::Context::EventSourcing.as_str();

/// Runs `$body` with `$K` the marker type of `$kind` (cqrs-es aggregate types are static).
macro_rules! with_kind {
    ($kind:expr, $K:ident => $body:expr) => {
        match $kind {
            AggregateKind::User => {
                type $K = UserKind;
                $body
            }
            AggregateKind::Order => {
                type $K = OrderKind;
                $body
            }
            AggregateKind::Payment => {
                type $K = PaymentKind;
                $body
            }
            AggregateKind::Custom => {
                type $K = CustomKind;
                $body
            }
        }
    };
}

#[derive(Tags)]
enum ApiTags {
    /// Generic aggregates, the events that change them, and their snapshots.
    EventSourcing,
}

/// The four aggregate types.
#[derive(Debug, Clone, Copy, Enum, Serialize, Deserialize, PartialEq)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum EsAggregateType {
    User,
    Order,
    Payment,
    Custom,
}

impl From<EsAggregateType> for AggregateKind {
    fn from(kind: EsAggregateType) -> Self {
        match kind {
            EsAggregateType::User => AggregateKind::User,
            EsAggregateType::Order => AggregateKind::Order,
            EsAggregateType::Payment => AggregateKind::Payment,
            EsAggregateType::Custom => AggregateKind::Custom,
        }
    }
}

/// The seven event types.
#[derive(Debug, Clone, Copy, Enum, Serialize, Deserialize, PartialEq)]
#[oai(rename_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum EsEventType {
    UserCreated,
    UserUpdated,
    UserDeleted,
    OrderCreated,
    OrderStatusChanged,
    PaymentProcessed,
    Custom,
}

impl From<EsEventType> for EventKind {
    fn from(kind: EsEventType) -> Self {
        match kind {
            EsEventType::UserCreated => EventKind::UserCreated,
            EsEventType::UserUpdated => EventKind::UserUpdated,
            EsEventType::UserDeleted => EventKind::UserDeleted,
            EsEventType::OrderCreated => EventKind::OrderCreated,
            EsEventType::OrderStatusChanged => EventKind::OrderStatusChanged,
            EsEventType::PaymentProcessed => EventKind::PaymentProcessed,
            EsEventType::Custom => EventKind::Custom,
        }
    }
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateAggregateRequest {
    /// The aggregate type; its creation event is `user_created`, `order_created`,
    /// `payment_processed` or `custom`.
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub kind: EsAggregateType,
    /// Generated when absent; unique across the four types.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub id: Option<Text>,
    /// The state, a JSON object: a user needs an `email`, a payment an `amount`; an order
    /// starts `pending` unless it names a `status`. Defaults to `{}`.
    pub initial_state: Option<Value>,
    /// The creation event's metadata; a UUID `correlation_id` or `causation_id` also
    /// becomes the event's envelope id.
    #[oai(validator(max_properties = 64))]
    pub metadata: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateAggregateRequest {
    /// Top-level fields to set (`null` removes one). A user's become one `user_updated`
    /// with the previous values; an order's `status` becomes `order_status_changed`; every
    /// other change one `custom` event.
    pub changes: Value,
    /// Optimistic concurrency: the version the change is based on (or send `If-Match`).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    pub expected_version: Option<u64>,
    /// The events' metadata.
    #[oai(validator(max_properties = 64))]
    pub metadata: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct PublishEventRequest {
    /// The event type; it must fit `aggregate_type` (`custom` fits every type).
    #[oai(rename = "type")]
    #[serde(rename = "type")]
    pub event_type: EsEventType,
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub aggregate_id: Text,
    pub aggregate_type: EsAggregateType,
    /// The event's data, a JSON object (default `{}`). A creation event's data is the
    /// initial state; `user_updated` takes `{"changes": {..}}` or the changed fields.
    pub data: Option<Value>,
    /// The event's metadata; a UUID `correlation_id` or `causation_id` also becomes the
    /// event's envelope id.
    #[oai(validator(max_properties = 64))]
    pub metadata: Option<BTreeMap<String, Value>>,
    /// Optimistic concurrency: the aggregate's current version (0: it must not exist yet).
    /// A stale one is 409. Or send `If-Match`.
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    pub expected_version: Option<u64>,
    /// The version the event will have (the seed's field): `expected_version + 1`.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000000000")))]
    pub version: Option<u64>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshotRequest {
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub aggregate_id: Text,
    /// The version to snapshot: the current one by default, or an earlier one (its state
    /// is rebuilt from the events). Beyond the current version is 422.
    #[oai(validator(minimum(value = "1"), maximum(value = "1000000000000000")))]
    pub version: Option<u64>,
}

pub struct EventSourcingWriteApi {
    pub state: WriteState,
}

/// A write by a token that acts for `user`.
#[derive(Debug, Clone, Copy)]
struct Acting<'a> {
    user: &'a str,
    /// How another user's aggregate answers: `<what> not found`, like a missing one.
    missing: &'a str,
    /// The request field that names the aggregate's owner (`initial_state`, `changes`,
    /// `data`, or the id field for a user), for the 403.
    owner_field: &'a str,
    /// The field naming the aggregate's id, for the 403 on a user (owned by its id).
    id_field: &'a str,
}

/// Why a token acting for a user was refused (403), set by the unit of work that refused.
#[derive(Default)]
struct Refusal(std::sync::Mutex<Option<ApiError>>);

impl Refusal {
    fn set(&self, err: ApiError) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(err);
        }
    }

    /// The refusal if there was one, else `err` as an API error.
    fn or(&self, err: KernelError) -> ApiError {
        self.0
            .lock()
            .ok()
            .and_then(|mut slot| slot.take())
            .unwrap_or_else(|| err.into())
    }
}

/// The acting user of a token, with how its refusals name things.
fn acting<'a>(
    auth: &'a BearerAuth,
    missing: &'a str,
    owner_field: &'a str,
    id_field: &'a str,
) -> Option<Acting<'a>> {
    auth.0.acting_user().map(|user| Acting {
        user,
        missing,
        owner_field,
        id_field,
    })
}

impl EventSourcingWriteApi {
    fn engine(&self) -> &Engine {
        &self.state.engine
    }

    fn policy(&self) -> &EventSourcingPolicy {
        &self.state.event_sourcing
    }

    /// Decides `command` on the aggregate and commits it; a creation also reserves the id.
    /// With `acting`, another user's aggregate is not found, and a decision that leaves the
    /// aggregate to someone else is refused into `refusal`.
    async fn run<K: Kind>(
        &self,
        ctx: &CommandContext,
        id: &str,
        acting: Option<Acting<'_>>,
        refusal: &Refusal,
        command: impl Fn() -> GenericCommand + Send + Sync,
    ) -> KernelResult<Committed> {
        let engine = self.engine();
        let policy = self.policy();
        let command = &command;
        let creating_command = matches!(command(), GenericCommand::Create { .. });
        engine
            .run(ctx, || async move {
                let loaded = engine.load::<GenericAggregate<K>>(id).await?;
                if let Some(acting) = acting {
                    let before = loaded.state.state();
                    // A creation over an existing id is a 409 whoever owns it, as in the
                    // repository context.
                    if before.is_created()
                        && !creating_command
                        && !visible_to(K::KIND, id, before.state(), acting.user)
                    {
                        return Err(DomainError::NotFound(acting.missing.to_string()).into());
                    }
                }
                let decision =
                    Engine::decide_on::<GenericAggregate<K>>(id, loaded, command(), policy).await?;
                if let Some(acting) = acting {
                    let after = decision.state_after.state();
                    if !visible_to(K::KIND, id, after.state(), acting.user) {
                        refusal.set(not_theirs(K::KIND, acting));
                        return Err(DomainError::StateConflict("refused".into()).into());
                    }
                }
                let creating = decision.base_sequence == 0;
                let mut uow = UnitOfWork::new();
                uow.push(decision)?;
                if creating {
                    uow.reserve(id_reservation(K::KIND, id));
                }
                Ok(uow)
            })
            .await
    }

    /// Snapshots the aggregate now, and records the snapshot of `version` in its log; a
    /// token acting for a user snapshots only its own (or shared) aggregates.
    async fn snapshot<K: Kind>(
        &self,
        ctx: &CommandContext,
        id: &str,
        acting: Option<&str>,
        version: Option<u64>,
    ) -> KernelResult<Committed> {
        let engine = self.engine();
        let policy = self.policy();
        let at = Utc::now();
        engine
            .run(ctx, || async move {
                let loaded = engine.load::<GenericAggregate<K>>(id).await?;
                if let Some(user) = acting {
                    if !visible_to(K::KIND, id, loaded.state.state().state(), user) {
                        return Err(DomainError::NotFound(format!("aggregate {id}")).into());
                    }
                }
                let current = loaded.sequence;
                let version = version.unwrap_or(current);
                if version == 0 || version > current {
                    return Err(DomainError::invalid(
                        "version",
                        format!(
                            "{version} is not a version of {} {id}, which is at version {current}",
                            K::KIND
                        ),
                    )
                    .into());
                }
                let document = if version == current {
                    loaded.state.state().document(K::KIND, id)
                } else {
                    state_at(engine, K::KIND, id, version)
                        .await?
                        .document(K::KIND, id)
                };
                engine.snapshot_now::<GenericAggregate<K>>(id).await?;
                let record = SnapshotLogCommand::Record {
                    aggregate_type: K::KIND,
                    version,
                    document,
                    at,
                };
                let mut uow = UnitOfWork::new();
                uow.push(engine.decide::<SnapshotLog>(id, record, policy).await?)?;
                Ok(uow)
            })
            .await
    }
}

/// The 403 of a write that would leave an aggregate of `kind` to another user (or to none).
fn not_theirs(kind: AggregateKind, acting: Acting<'_>) -> ApiError {
    let user = acting.user;
    let field = match kind {
        AggregateKind::User => acting.id_field.to_string(),
        _ => format!("{}.{OWNER_KEY}", acting.owner_field),
    };
    ApiError::Forbidden(format!(
        "{field}: this token acts for user {user} and may only write that user's own {kind} \
         aggregates (whose {} is {user})",
        if kind == AggregateKind::User {
            "id"
        } else {
            OWNER_KEY
        }
    ))
}

/// The reservation that keeps an aggregate id unique across the four types.
fn id_reservation(kind: AggregateKind, id: &str) -> Reservation {
    Reservation {
        scope: ID_RESERVATION_SCOPE.to_string(),
        value: id.to_string(),
        owner: format!("{}/{id}", kind.store_type()),
    }
}

/// The type of an existing aggregate id, from its events.
async fn resolve(engine: &Engine, id: &str) -> KernelResult<Option<AggregateKind>> {
    if !is_valid_id(id) {
        return Ok(None);
    }
    let filter = EventFilter {
        aggregate_types: AggregateKind::store_types(),
        aggregate_id: Some(id.to_string()),
        ..Default::default()
    };
    let page = engine.store().query_events(&filter, 0, 1).await?;
    Ok(page
        .events
        .first()
        .and_then(|event| AggregateKind::from_store_type(&event.aggregate_type)))
}

/// How many aggregates of the four types exist (for `max_aggregates`).
async fn aggregate_count(engine: &Engine) -> KernelResult<u64> {
    Ok(engine
        .store()
        .event_stats(&AggregateKind::store_types())
        .await?
        .aggregates)
}

/// Folds an aggregate's stored events up to `version`.
async fn state_at(
    engine: &Engine,
    kind: AggregateKind,
    id: &str,
    version: u64,
) -> KernelResult<GenericState> {
    let mut state = GenericState::default();
    for stored in engine.store().load_stream(kind.store_type(), id, 0).await? {
        if stored.sequence > version {
            break;
        }
        let recorded = engine.record(stored).await?;
        let data = recorded
            .data
            .ok_or_else(|| KernelError::Forgotten(format!("{kind} {id}")))?;
        let event: GenericEvent = serde_json::from_value(data)?;
        state.apply(&event);
    }
    Ok(state)
}

/// A UUID `correlation_id` / `causation_id` in the metadata becomes the envelope's id.
fn link_ids(ctx: &mut CommandContext, metadata: &Map<String, Value>) {
    let uuid = |key: &str| {
        metadata
            .get(key)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
    };
    if let Some(correlation) = uuid("correlation_id") {
        ctx.correlation_id = Some(correlation);
    }
    if let Some(causation) = uuid("causation_id") {
        ctx.causation_id = Some(causation);
    }
}

/// Renames the field of a validation error (`data.email` → `initial_state.email`).
fn renamed(err: KernelError, from: &str, to: &str) -> KernelError {
    match err {
        KernelError::Rejected(DomainError::Invalid {
            field: Some(field),
            message,
        }) if field == from || field.starts_with(&format!("{from}.")) => {
            KernelError::Rejected(DomainError::Invalid {
                field: Some(format!("{to}{}", &field[from.len()..])),
                message,
            })
        }
        other => other,
    }
}

/// The write result with the API's type name (`user`, not `es-user`).
fn written(committed: &Committed, kind: AggregateKind, id: &str, created: bool) -> Written {
    let mut answer = Written::from_committed(committed, kind.store_type(), id, created);
    match &mut answer {
        Written::Created(Json(result), _) | Written::Applied(Json(result), _) => {
            result.aggregate_type = kind.as_str().to_string();
        }
    }
    answer
}

fn unknown_aggregate(id: &str) -> ApiError {
    ApiError::NotFound(format!("aggregate {id} not found"))
}

#[OpenApi(tag = "ApiTags::EventSourcing")]
impl EventSourcingWriteApi {
    /// Create an aggregate (its creation event carries `initial_state`).
    #[oai(path = "/aggregates", method = "post")]
    async fn create_aggregate(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CreateAggregateRequest>,
    ) -> ApiResult<Written> {
        auth.0.allow(Role::Writer, SCOPE)?;
        let request = &body.0;
        let kind = AggregateKind::from(request.kind);
        let id = request.id.clone().map_or_else(new_id, Text::into_string);
        let metadata = metadata_map(request.metadata.clone());
        let mut ctx = context(
            &auth.0,
            request_id(req),
            idempotency_key.0,
            "POST /aggregates",
            request,
        )?;
        link_ids(&mut ctx, &metadata);
        let engine = self.engine();
        let aggregates = match resolve(engine, &id).await? {
            Some(existing) if existing != kind => {
                return Err(ApiError::Conflict(format!(
                    "aggregate {id} already exists as a {existing}"
                )))
            }
            Some(_) => 0,
            None => aggregate_count(engine).await?,
        };
        let data = request.initial_state.clone().unwrap_or_else(|| json!({}));
        let at = Utc::now();
        let missing = format!("{kind} {id}");
        let acting = acting(&auth, &missing, "initial_state", "id");
        let refusal = Refusal::default();
        let committed = with_kind!(kind, K => {
            self.run::<K>(&ctx, &id, acting, &refusal, || GenericCommand::Create {
                id: id.clone(),
                data: data.clone(),
                metadata: metadata.clone(),
                aggregates,
                at,
            })
            .await
        })
        .map_err(|err| refusal.or(renamed(err, "data", "initial_state")))?;
        Ok(written(&committed, kind, &id, true))
    }

    /// Change an aggregate's state; the changes become the events that fit its type.
    #[oai(path = "/aggregates/:id", method = "put")]
    async fn update_aggregate(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<UpdateAggregateRequest>,
    ) -> ApiResult<Written> {
        auth.0.allow(Role::Writer, SCOPE)?;
        let request = &body.0;
        let expected = expected_version(if_match.0, request.expected_version)?;
        let metadata = metadata_map(request.metadata.clone());
        let mut ctx = context(
            &auth.0,
            request_id(req),
            idempotency_key.0,
            &format!("PUT /aggregates/{}", id.0),
            &(request, expected),
        )?;
        link_ids(&mut ctx, &metadata);
        let kind = resolve(self.engine(), &id.0)
            .await?
            .ok_or_else(|| unknown_aggregate(&id.0))?;
        let at = Utc::now();
        let missing = format!("aggregate {}", id.0);
        let acting = acting(&auth, &missing, "changes", "id");
        let refusal = Refusal::default();
        let committed = with_kind!(kind, K => {
            self.run::<K>(&ctx, &id.0, acting, &refusal, || GenericCommand::Update {
                id: id.0.clone(),
                changes: request.changes.clone(),
                metadata: metadata.clone(),
                expected_version: expected,
                at,
            })
            .await
        })
        .map_err(|err| refusal.or(err))?;
        Ok(written(&committed, kind, &id.0, false))
    }

    /// Publish one event on an aggregate, with optimistic concurrency. A creation event
    /// (`user_created`, `order_created`, `payment_processed`, `custom`) on a new id creates
    /// the aggregate (201); on an existing one it appends (200).
    #[oai(path = "/events/publish", method = "post")]
    async fn publish(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<PublishEventRequest>,
    ) -> ApiResult<Written> {
        auth.0.allow(Role::Writer, SCOPE)?;
        let request = &body.0;
        let kind = AggregateKind::from(request.aggregate_type);
        let id = request.aggregate_id.as_str();
        if !is_valid_id(id) {
            return Err(ApiError::invalid(
                "aggregate_id",
                "must be 1 to 128 characters of letters, digits, '.', '_' or '-'",
            ));
        }
        let expected = match (
            expected_version(if_match.0, request.expected_version)?,
            request.version,
        ) {
            (expected, None) => expected,
            (_, Some(0)) => return Err(ApiError::invalid("version", "versions start at 1")),
            (None, Some(version)) => Some(version - 1),
            (Some(expected), Some(version)) if expected + 1 == version => Some(expected),
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid(
                    "version",
                    "must be expected_version + 1 (the version the event will have)",
                ))
            }
        };
        let metadata = metadata_map(request.metadata.clone());
        let mut ctx = context(
            &auth.0,
            request_id(req),
            idempotency_key.0,
            "POST /events/publish",
            &(request, expected),
        )?;
        link_ids(&mut ctx, &metadata);
        let engine = self.engine();
        let existing = resolve(engine, id).await?;
        let aggregates = match existing {
            Some(existing) if existing != kind => {
                return Err(ApiError::invalid(
                    "aggregate_type",
                    format!("aggregate {id} is a {existing}, not a {kind}"),
                ))
            }
            Some(_) => 0,
            None => aggregate_count(engine).await?,
        };
        let event_type = EventKind::from(request.event_type).as_str();
        let data = request.data.clone().unwrap_or_else(|| json!({}));
        let at = Utc::now();
        let missing = format!("{kind} {id}");
        let acting = acting(&auth, &missing, "data", "aggregate_id");
        let refusal = Refusal::default();
        let committed = with_kind!(kind, K => {
            self.run::<K>(&ctx, id, acting, &refusal, || GenericCommand::Publish {
                id: id.to_string(),
                event_type: event_type.to_string(),
                data: data.clone(),
                metadata: metadata.clone(),
                expected_version: expected,
                aggregates,
                at,
            })
            .await
        })
        .map_err(|err| refusal.or(err))?;
        let created = committed
            .stream(kind.store_type(), id)
            .is_some_and(|stream| stream.sequence == 1);
        Ok(written(&committed, kind, id, created))
    }

    /// Force a snapshot of an aggregate: the snapshot store gets its current state, and
    /// the snapshot log records its document at `version` (the current one by default).
    #[oai(path = "/snapshots", method = "post")]
    async fn create_snapshot(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CreateSnapshotRequest>,
    ) -> ApiResult<Written> {
        auth.0.allow(Role::Writer, SCOPE)?;
        let request = &body.0;
        let id = request.aggregate_id.as_str();
        let ctx = context(
            &auth.0,
            request_id(req),
            idempotency_key.0,
            "POST /snapshots",
            request,
        )?;
        let engine = self.engine();
        let kind = resolve(engine, id)
            .await?
            .ok_or_else(|| unknown_aggregate(id))?;
        let acting = auth.0.acting_user();
        let committed =
            with_kind!(kind, K => self.snapshot::<K>(&ctx, id, acting, request.version).await)?;
        // The answer names the snapshotted aggregate and version, read back from the log
        // (the same whether this request committed it or an idempotent replay found it).
        let version = match committed.stream(SNAPSHOT_LOG, id) {
            Some(stream) => {
                let stored = engine
                    .store()
                    .load_stream(SNAPSHOT_LOG, id, stream.sequence.saturating_sub(1))
                    .await?;
                match stored.into_iter().next() {
                    Some(stored) => engine
                        .record(stored)
                        .await?
                        .data
                        .and_then(|data| data.get("version").and_then(Value::as_u64))
                        .unwrap_or(0),
                    None => 0,
                }
            }
            None => 0,
        };
        let mut answer = written(&committed, kind, id, true);
        match &mut answer {
            Written::Created(Json(result), _) | Written::Applied(Json(result), _) => {
                result.version = version;
            }
        }
        Ok(answer)
    }
}
