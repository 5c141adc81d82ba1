//! What every write route shares: the command context (actor, correlation, idempotency) and
//! the response that carries the committed position.

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use std::collections::BTreeMap;

use poem::Request;
use poem_openapi::param::Header;
use serde_json::Value;

use kernel::domain::EventSourced;
use kernel::engine::Engine;
use kernel::envelope::{CommandContext, Committed, IdempotencyKey};
use kernel::KernelError;
use web::server::RequestId;
use web::{ApiError, ApiResult, BearerAuth, Claims, Role};

/// The outcome of a command.
#[derive(Debug, Clone, Object, Serialize)]
pub struct WriteResult {
    pub aggregate_type: String,
    pub aggregate_id: String,
    /// The aggregate's version (its last event's sequence) after the command.
    pub version: u64,
    /// The committed global position of the last event written; pass it as
    /// `min_position` to read your own write.
    pub position: u64,
    /// The event types written, in order, across every aggregate the command touched.
    pub events: Vec<String>,
}

#[derive(ApiResponse)]
pub enum Written {
    /// Created.
    #[oai(status = 201)]
    Created(Json<WriteResult>, #[oai(header = "X-Quintet-Position")] u64),
    /// Applied.
    #[oai(status = 200)]
    Applied(Json<WriteResult>, #[oai(header = "X-Quintet-Position")] u64),
}

impl Written {
    /// The response for `aggregate` from what was committed (or replayed by idempotency).
    /// A replayed result may name another id than the caller generated this time (a create
    /// without an id, sent again with its idempotency key): the committed stream of the
    /// aggregate type is the answer then.
    pub fn from_committed(
        committed: &Committed,
        aggregate_type: &str,
        aggregate_id: &str,
        created: bool,
    ) -> Written {
        let stream = committed.stream(aggregate_type, aggregate_id).or_else(|| {
            committed
                .streams
                .iter()
                .find(|stream| stream.aggregate_type == aggregate_type)
        });
        let result = WriteResult {
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: stream
                .map_or(aggregate_id, |s| s.aggregate_id.as_str())
                .to_string(),
            version: stream.map_or(0, |s| s.sequence),
            position: committed.position,
            events: committed
                .streams
                .iter()
                .flat_map(|stream| stream.event_types.iter().cloned())
                .collect(),
        };
        if created {
            Written::Created(Json(result), committed.position)
        } else {
            Written::Applied(Json(result), committed.position)
        }
    }
}

/// Longest accepted `Idempotency-Key`.
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// Builds the command context: the token's subject is the actor, the request id the
/// correlation id, and the idempotency key is bound to a hash of the route and the body.
pub fn context(
    claims: &Claims,
    request_id: Option<Uuid>,
    idempotency_key: Option<String>,
    route: &str,
    body: &impl Serialize,
) -> Result<CommandContext, ApiError> {
    let idempotency = match idempotency_key {
        None => None,
        Some(key) if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN => {
            return Err(ApiError::invalid(
                "Idempotency-Key",
                format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} characters"),
            ))
        }
        Some(key) => {
            let mut hasher = Sha256::new();
            hasher.update(route.as_bytes());
            hasher.update(b"\n");
            hasher.update(
                serde_json::to_vec(body).map_err(|err| ApiError::Internal(err.to_string()))?,
            );
            // Scoped by subject, so one client cannot replay another's result; hashed, so
            // every accepted key fits the store's column.
            let scoped = Sha256::digest(format!("{}\n{key}", claims.sub).as_bytes());
            Some(IdempotencyKey {
                key: hex::encode(scoped),
                request_hash: hex::encode(hasher.finalize()),
            })
        }
    };
    Ok(CommandContext {
        correlation_id: request_id,
        causation_id: None,
        actor: Some(claims.sub.clone()),
        idempotency,
    })
}

pub fn request_id(req: &Request) -> Option<uuid::Uuid> {
    req.extensions().get::<RequestId>().map(|id| id.0)
}

pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

pub fn metadata_map(metadata: Option<BTreeMap<String, Value>>) -> serde_json::Map<String, Value> {
    metadata.unwrap_or_default().into_iter().collect()
}

/// `If-Match: "3"`, `If-Match: 3` or `W/"3"` → 3; merged with a body `expected_version`.
pub fn expected_version(if_match: Option<String>, body: Option<u64>) -> ApiResult<Option<u64>> {
    let header = match if_match {
        None => None,
        Some(raw) => {
            let trimmed = raw.trim().trim_start_matches("W/").trim_matches('"');
            Some(trimmed.parse::<u64>().map_err(|_| {
                ApiError::invalid("If-Match", "must be a version number, such as \"3\"")
            })?)
        }
    };
    match (header, body) {
        (Some(a), Some(b)) if a != b => Err(ApiError::invalid(
            "expected_version",
            "differs from the If-Match header",
        )),
        (header, body) => Ok(header.or(body)),
    }
}

/// What every write call carries besides its own input.
pub struct Call<'a> {
    pub claims: &'a web::Claims,
    pub request_id: Option<uuid::Uuid>,
    pub idempotency_key: Option<String>,
}

pub fn call<'a>(
    auth: &'a BearerAuth,
    req: &Request,
    idempotency_key: Header<Option<String>>,
) -> Call<'a> {
    Call {
        claims: &auth.0,
        request_id: request_id(req),
        idempotency_key: idempotency_key.0,
    }
}

/// The command context of a writer of `scope` (a context name): 403 without the role or
/// the scope.
pub fn writer_context(
    call: Call<'_>,
    scope: &str,
    route: &str,
    body: &impl Serialize,
) -> ApiResult<CommandContext> {
    call.claims.allow(Role::Writer, scope)?;
    context(
        call.claims,
        call.request_id,
        call.idempotency_key,
        route,
        body,
    )
}

/// Runs one command on one aggregate for a writer of `scope` (a context name), and answers
/// with what was committed. `route` (with its path values) and `body` make the idempotency
/// hash; `created` answers 201 rather than 200.
#[allow(clippy::too_many_arguments)]
pub async fn execute<A>(
    engine: &Engine,
    services: &A::Services,
    call: Call<'_>,
    scope: &str,
    route: &str,
    body: &impl Serialize,
    aggregate_id: &str,
    created: bool,
    command: impl Fn() -> A::Command + Send + Sync,
) -> ApiResult<Written>
where
    A: EventSourced,
    KernelError: From<A::Error>,
{
    let ctx = writer_context(call, scope, route, body)?;
    let committed = engine
        .execute::<A, _>(aggregate_id, command, services, &ctx)
        .await?;
    Ok(Written::from_committed(
        &committed,
        A::TYPE,
        aggregate_id,
        created,
    ))
}
