//! Mediator routes (seed 002): mediators, their colleagues, and the messages passed
//! between colleagues.
//!
//! Creating and deleting a mediator also changes the registry of live names in the same
//! unit of work (one transaction), so `mediator.max_mediators` holds under concurrent
//! creates: the loser of a race decides again on fresh state and gets a 409 when the
//! registry is full. Messages get a UUIDv7 `message_id` made here, once per request; the
//! answer reads it (and a broadcast's recipients) back from the committed event, so a
//! replay under the same `Idempotency-Key` answers with the first message's id.

use std::collections::BTreeMap;

use chrono::Utc;
use poem::Request;
use poem_openapi::param::{Header, Path};
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use kernel::domain::mediator::{
    Mediator, MediatorCommand, MediatorRegistry, MessageKind, RegistryCommand, MEDIATOR,
    REGISTRY_ID,
};
use kernel::engine::{Engine, UnitOfWork};
use kernel::envelope::{CommandContext, Committed};
use kernel::KernelError;
use web::{ApiResult, BearerAuth, StrictJson, Text};

use crate::write::{call, expected_version, metadata_map, writer_context, WriteResult, Written};
use crate::WriteState;

/// The context name used for token scopes.
const MEDIATOR_SCOPE: &str = kernel::domain::Context::Mediator.as_str();

#[derive(Tags)]
enum ApiTags {
    /// Mediators, the colleagues registered with them, and the messages they pass between
    /// colleagues, directly or by broadcast.
    Mediators,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CreateMediatorRequest {
    /// The mediator's id: 1 to 128 characters of letters, digits, '.', '_' or '-'.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub name: Text,
    #[oai(validator(pattern = r"\S", max_length = 1024))]
    pub description: Option<Text>,
    /// Free key/value pairs, at most 64.
    #[oai(validator(max_properties = 64))]
    pub metadata: Option<BTreeMap<String, Value>>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UpdateMediatorRequest {
    #[oai(validator(pattern = r"\S", max_length = 1024))]
    pub description: Option<Text>,
    /// Replaces the metadata whole; at most 64 entries.
    #[oai(validator(max_properties = 64))]
    pub metadata: Option<BTreeMap<String, Value>>,
    /// Optimistic concurrency: the version the change is based on (or send `If-Match`).
    #[oai(validator(minimum(value = "0"), maximum(value = "1000000000000000")))]
    pub expected_version: Option<u64>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RegisterColleagueRequest {
    /// Unique within the mediator: 1 to 128 characters of letters, digits, '.', '_' or '-'.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub id: Text,
    #[oai(validator(pattern = r"\S", max_length = 256))]
    pub name: Text,
    /// Such as `service`: 1 to 64 characters of a-z, 0-9, '_' or '-'.
    #[oai(rename = "type", validator(pattern = r"^[a-z0-9_-]{1,64}$"))]
    #[serde(rename = "type")]
    pub colleague_type: Text,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// A registered colleague.
    pub sender_id: Text,
    /// A registered colleague (the sender itself is allowed).
    pub recipient_id: Text,
    /// Its shape depends on `kind`: a non-blank string for `message`; an object for the
    /// other kinds (see `kind`). At most 64 KiB serialized.
    pub message: Value,
    /// One of message (the default), event `{type, data, source?}`, command `{type, data}`,
    /// query `{type, data}`, notification `{type, content, recipient_id}`, workflow
    /// `{name, steps: [{name, type}]}` (1 to 100 steps), service `{name, type, status}`,
    /// resource `{name, type, capacity, used}` (integers, 0 <= used <= capacity), task
    /// `{name, type, priority}` (integer 0 to 100), job `{name, type, schedule}` (a 5-field
    /// cron expression).
    pub kind: Option<Text>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct BroadcastRequest {
    /// A registered colleague; every other registered colleague receives the message.
    pub sender_id: Text,
    /// As for a direct message: its shape depends on `kind`.
    pub message: Value,
    /// As for a direct message; default `message`.
    pub kind: Option<Text>,
}

/// The outcome of a message or a broadcast.
#[derive(Debug, Clone, Object, Serialize)]
pub struct MessageResult {
    pub aggregate_type: String,
    /// The mediator's name.
    pub aggregate_id: String,
    /// The mediator's version after the message.
    pub version: u64,
    /// The committed global position; pass it as `min_position` to read the inbox.
    pub position: u64,
    /// The event types written.
    pub events: Vec<String>,
    /// The message's id (a UUIDv7), as inboxes and the WebSocket show it.
    pub message_id: String,
    /// The colleagues that received it.
    pub recipients: Vec<String>,
    /// How many colleagues received it (a broadcast: every registered colleague but the
    /// sender).
    pub recipient_count: u64,
}

#[derive(ApiResponse)]
pub enum MessageWritten {
    /// Delivered to the recipients' inboxes.
    #[oai(status = 201)]
    Created(
        Json<MessageResult>,
        #[oai(header = "X-Quintet-Position")] u64,
    ),
}

pub struct MediatorWriteApi {
    pub state: WriteState,
}

/// The kind named in a request (default `message`), or a 422 on `kind`.
fn kind_of(kind: &Option<Text>) -> ApiResult<MessageKind> {
    Ok(MessageKind::parse_optional(kind.as_deref())?)
}

impl MediatorWriteApi {
    fn engine(&self) -> &Engine {
        &self.state.engine
    }

    /// The command context of a writer in this context.
    fn context(
        &self,
        auth: &BearerAuth,
        req: &Request,
        idempotency_key: Header<Option<String>>,
        route: &str,
        body: &impl Serialize,
    ) -> ApiResult<CommandContext> {
        writer_context(
            call(auth, req, idempotency_key),
            MEDIATOR_SCOPE,
            route,
            body,
        )
    }

    /// Runs one command on one mediator.
    async fn run(
        &self,
        ctx: &CommandContext,
        name: &str,
        created: bool,
        command: impl Fn() -> MediatorCommand + Send + Sync,
    ) -> ApiResult<Written> {
        let committed = self
            .engine()
            .execute::<Mediator, _>(name, command, &(), ctx)
            .await?;
        Ok(Written::from_committed(&committed, MEDIATOR, name, created))
    }

    /// Runs a command on a mediator together with one on the registry of names, in one
    /// unit of work.
    async fn run_with_registry(
        &self,
        ctx: &CommandContext,
        name: &str,
        created: bool,
        command: impl Fn() -> MediatorCommand,
        registry: impl Fn() -> RegistryCommand,
    ) -> ApiResult<Written> {
        let engine = self.engine();
        let committed = engine
            .run(ctx, || async {
                let mut uow = UnitOfWork::new();
                uow.push(engine.decide::<Mediator>(name, command(), &()).await?)?;
                uow.push(
                    engine
                        .decide::<MediatorRegistry>(REGISTRY_ID, registry(), &())
                        .await?,
                )?;
                Ok::<_, KernelError>(uow)
            })
            .await?;
        Ok(Written::from_committed(&committed, MEDIATOR, name, created))
    }

    /// Runs a message command and answers with the committed message's id and recipients.
    async fn run_message(
        &self,
        ctx: &CommandContext,
        name: &str,
        message_id: &str,
        command: impl Fn() -> MediatorCommand + Send + Sync,
    ) -> ApiResult<MessageWritten> {
        let committed = self
            .engine()
            .execute::<Mediator, _>(name, command, &(), ctx)
            .await?;
        let written = match Written::from_committed(&committed, MEDIATOR, name, true) {
            Written::Created(Json(result), _) | Written::Applied(Json(result), _) => result,
        };
        let (message_id, recipients) = self
            .committed_message(&committed, name)
            .await?
            .unwrap_or_else(|| (message_id.to_string(), Vec::new()));
        let WriteResult {
            aggregate_type,
            aggregate_id,
            version,
            position,
            events,
        } = written;
        Ok(MessageWritten::Created(
            Json(MessageResult {
                aggregate_type,
                aggregate_id,
                version,
                position,
                events,
                message_id,
                recipient_count: recipients.len() as u64,
                recipients,
            }),
            committed.position,
        ))
    }

    /// The id and recipients of the message event a commit (or its idempotent replay)
    /// wrote; `None` if its payload can no longer be read.
    async fn committed_message(
        &self,
        committed: &Committed,
        name: &str,
    ) -> ApiResult<Option<(String, Vec<String>)>> {
        let Some(stream) = committed.stream(MEDIATOR, name) else {
            return Ok(None);
        };
        let engine = self.engine();
        let stored = engine
            .store()
            .load_stream(MEDIATOR, name, stream.sequence.saturating_sub(1))
            .await?;
        let Some(event) = stored.into_iter().next() else {
            return Ok(None);
        };
        let recorded = engine.record(event).await?;
        let Some(data) = recorded.data else {
            return Ok(None);
        };
        let text = |value: &Value| value.as_str().map(str::to_string);
        let Some(message_id) = data.get("message_id").and_then(text) else {
            return Ok(None);
        };
        let recipients = match recorded.event_type.as_str() {
            "message_sent" => data
                .get("recipient_id")
                .and_then(text)
                .into_iter()
                .collect(),
            _ => data
                .get("recipients")
                .and_then(Value::as_array)
                .map(|all| all.iter().filter_map(text).collect())
                .unwrap_or_default(),
        };
        Ok(Some((message_id, recipients)))
    }
}

#[OpenApi(tag = "ApiTags::Mediators")]
impl MediatorWriteApi {
    /// Create a mediator (409 when one of that name is live, or when `max_mediators` are).
    #[oai(path = "/mediators", method = "post")]
    async fn create_mediator(
        &self,
        auth: BearerAuth,
        req: &Request,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<CreateMediatorRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let ctx = self.context(&auth, req, idempotency_key, "POST /mediators", request)?;
        let name = request.name.as_str();
        let max_mediators = self.state.mediator.max_mediators;
        self.run_with_registry(
            &ctx,
            name,
            true,
            || MediatorCommand::CreateMediator {
                name: name.to_string(),
                description: request.description.clone().map(Text::into_string),
                metadata: metadata_map(request.metadata.clone()),
                at,
            },
            || RegistryCommand::ClaimName {
                name: name.to_string(),
                max_mediators,
                at,
            },
        )
        .await
    }

    /// Change a mediator's description and/or metadata (emits `mediator_updated`).
    #[oai(path = "/mediators/:name", method = "put")]
    async fn update_mediator(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<UpdateMediatorRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let expected = expected_version(if_match.0, request.expected_version)?;
        let route = format!("PUT /mediators/{}", name.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, &(request, expected))?;
        self.run(&ctx, &name.0, false, || MediatorCommand::UpdateMediator {
            description: request.description.clone().map(Text::into_string),
            metadata: request.metadata.clone().map(|m| m.into_iter().collect()),
            expected_version: expected,
            at,
        })
        .await
    }

    /// Delete a mediator with its colleagues and their inboxes; its place under
    /// `max_mediators` becomes free.
    #[oai(path = "/mediators/:name", method = "delete")]
    async fn delete_mediator(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "If-Match", validator(pattern = r#"^(W/)?"?[0-9]+"?$"#))] if_match: Header<
            Option<String>,
        >,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let expected = expected_version(if_match.0, None)?;
        let route = format!("DELETE /mediators/{}", name.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, &expected)?;
        self.run_with_registry(
            &ctx,
            &name.0,
            false,
            || MediatorCommand::DeleteMediator {
                expected_version: expected,
                at,
            },
            || RegistryCommand::ReleaseName {
                name: name.0.clone(),
                at,
            },
        )
        .await
    }

    /// Register a colleague (409 when its id is taken, or when the mediator holds
    /// `max_colleagues`).
    #[oai(path = "/mediators/:name/colleagues", method = "post")]
    async fn register_colleague(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<RegisterColleagueRequest>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let request = &body.0;
        let route = format!("POST /mediators/{}/colleagues", name.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, request)?;
        let max_colleagues = self.state.mediator.max_colleagues;
        self.run(&ctx, &name.0, true, || MediatorCommand::RegisterColleague {
            colleague_id: request.id.to_string(),
            name: request.name.to_string(),
            colleague_type: request.colleague_type.to_string(),
            max_colleagues,
            at,
        })
        .await
    }

    /// Unregister a colleague; its inbox goes with it.
    #[oai(path = "/mediators/:name/colleagues/:colleague_id", method = "delete")]
    async fn unregister_colleague(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        colleague_id: Path<String>,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
    ) -> ApiResult<Written> {
        let at = Utc::now();
        let route = format!("DELETE /mediators/{}/colleagues/{}", name.0, colleague_id.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, &())?;
        self.run(&ctx, &name.0, false, || {
            MediatorCommand::UnregisterColleague {
                colleague_id: colleague_id.0.clone(),
                at,
            }
        })
        .await
    }

    /// Send a message from one registered colleague to another (422 naming `sender_id` or
    /// `recipient_id` when one is not registered). Answers with the message's id.
    #[oai(path = "/mediators/:name/messages", method = "post")]
    async fn send_message(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<SendMessageRequest>,
    ) -> ApiResult<MessageWritten> {
        let at = Utc::now();
        let request = &body.0;
        let route = format!("POST /mediators/{}/messages", name.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, request)?;
        let kind = kind_of(&request.kind)?;
        let message_id = uuid::Uuid::now_v7().to_string();
        self.run_message(&ctx, &name.0, &message_id, || {
            MediatorCommand::SendMessage {
                message_id: message_id.clone(),
                sender_id: request.sender_id.to_string(),
                recipient_id: request.recipient_id.to_string(),
                kind,
                message: request.message.clone(),
                at,
            }
        })
        .await
    }

    /// Broadcast a message from a registered colleague to every other registered colleague.
    /// Answers with the message's id and its recipients.
    #[oai(path = "/mediators/:name/broadcast", method = "post")]
    async fn broadcast(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        #[oai(name = "Idempotency-Key", validator(min_length = 1, max_length = 255))]
        idempotency_key: Header<Option<String>>,
        body: StrictJson<BroadcastRequest>,
    ) -> ApiResult<MessageWritten> {
        let at = Utc::now();
        let request = &body.0;
        let route = format!("POST /mediators/{}/broadcast", name.0);
        let ctx = self.context(&auth, req, idempotency_key, &route, request)?;
        let kind = kind_of(&request.kind)?;
        let message_id = uuid::Uuid::now_v7().to_string();
        self.run_message(&ctx, &name.0, &message_id, || {
            MediatorCommand::BroadcastMessage {
                message_id: message_id.clone(),
                sender_id: request.sender_id.to_string(),
                kind,
                message: request.message.clone(),
                at,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use web::ApiError;

    #[test]
    fn mediator_kind_defaults_and_refuses_unknown_names() {
        assert_eq!(kind_of(&None).ok(), Some(MessageKind::Message));
        assert_eq!(
            kind_of(&Some(Text("job".into()))).ok(),
            Some(MessageKind::Job)
        );
        match kind_of(&Some(Text("fax".into()))) {
            Err(ApiError::Unprocessable { errors, .. }) => {
                assert_eq!(errors.first().map(|e| e.field.as_str()), Some("kind"));
            }
            other => panic!("expected a 422 on kind, got {other:?}"),
        }
    }
}
