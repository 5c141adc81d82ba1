//! What every write route shares: the command context (actor, correlation, idempotency) and
//! the response that carries the committed position.

use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object};
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use kernel::envelope::{CommandContext, Committed, IdempotencyKey};
use web::{ApiError, Claims};

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
    pub fn from_committed(
        committed: &Committed,
        aggregate_type: &str,
        aggregate_id: &str,
        created: bool,
    ) -> Written {
        let version = committed
            .stream(aggregate_type, aggregate_id)
            .map_or(0, |stream| stream.sequence);
        let result = WriteResult {
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            version,
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
