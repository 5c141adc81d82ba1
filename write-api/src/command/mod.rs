//! Command routes (seed 004): execute (sync, async, batch), undo, the handler registry with
//! its circuit breakers, and the durable queue and scheduler.
//!
//! Every command is an aggregate of its own (`command`, id: its `command_id`): its effect on
//! the aggregates it acts on and its own outcome event commit in one unit of work, so nothing
//! is half-written. Queued and scheduled commands hold a pending reservation until they run
//! (see [`dispatcher`]), so they survive a crash and run once.

pub mod dispatcher;
pub mod effects;
pub mod envelope;
pub mod runner;

use chrono::{DateTime, Utc};
use poem::http::{Method, StatusCode};
use poem::Request;
use poem_openapi::param::Path;
use poem_openapi::payload::Json;
use poem_openapi::{ApiResponse, Object, OpenApi, Tags};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use kernel::domain::command::{
    Command, CommandHandler, CommandOp, CommandSource, CommandStatus, CommandType, HandlerOp,
    HistoryLog, MetricsLog, Record, HISTORY_ID, METRICS_ID, PENDING_SCOPE,
};
use kernel::domain::DomainError;
use kernel::engine::{Engine, UnitOfWork};
use kernel::envelope::{CommandContext, Committed};
use kernel::KernelError;
use web::{ApiError, ApiResult, BearerAuth, Claims, Role, StrictJson, Text};

use crate::write::{context, request_id};
use crate::WriteState;
use envelope::Envelope;
use runner::{admit, pending_reservation, Outcome};

pub use dispatcher::run_dispatcher;

/// The context name used for token scopes.
const COMMAND_SCOPE: &str = kernel::domain::Context::Command.as_str();

#[derive(Tags)]
enum ApiTags {
    /// Commands: executed now, queued, scheduled or in batches, and undone; their handlers
    /// and circuit breakers.
    Commands,
}

/// The answer of a command route. A command that ran and was refused is recorded as
/// `failed`; its answer is the refusal's problem with `command_id` and
/// `command_status: "failed"`.
#[derive(ApiResponse)]
pub enum CommandReply {
    /// Done: the outcome (or the recorded outcome of a repeated `command_id`).
    #[oai(status = 200)]
    Done(Json<Value>, #[oai(header = "X-Quintet-Position")] u64),
    /// Accepted: queued or scheduled; `Location` is its status URL on read-api.
    #[oai(status = 202)]
    Accepted(
        Json<Value>,
        #[oai(header = "X-Quintet-Position")] u64,
        #[oai(header = "Location")] String,
    ),
    /// The command ran and was refused; it is recorded as failed.
    #[oai(status_range = "4XX", content_type = "application/problem+json")]
    Failed(
        StatusCode,
        Json<Value>,
        #[oai(header = "X-Quintet-Position")] u64,
    ),
}

/// The status URL of a command (served by read-api).
pub fn status_url(command_id: &str) -> String {
    format!("{}/commands/{command_id}", web::server::API_PREFIX)
}

/// A refusal's problem, with the command it belongs to.
fn failed_problem(refusal: &ApiError, command_id: &str, index: Option<usize>) -> Value {
    let mut problem = serde_json::to_value(refusal.body()).unwrap_or_else(|_| json!({}));
    problem["command_id"] = json!(command_id);
    problem["command_status"] = json!("failed");
    if let Some(index) = index {
        problem["index"] = json!(index);
    }
    problem
}

fn reply(outcome: Outcome) -> CommandReply {
    match &outcome.refusal {
        Some(refusal) => {
            let mut problem = failed_problem(refusal, &outcome.command_id, None);
            problem["position"] = json!(outcome.position);
            CommandReply::Failed(refusal.status(), Json(problem), outcome.position)
        }
        None => CommandReply::Done(Json(outcome.body()), outcome.position),
    }
}

fn done(body: Value, position: u64) -> CommandReply {
    let mut body = body;
    body["position"] = json!(position);
    CommandReply::Done(Json(body), position)
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct UndoRequest {
    /// The executed command to undo.
    #[oai(validator(pattern = r"^[A-Za-z0-9._-]{1,128}$"))]
    pub command_id: Text,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct ScheduleRequest {
    /// RFC 3339, in the future.
    pub execute_at: Text,
    /// A command envelope: `{type, command_id?, ...}`.
    pub command: Value,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct RegisterHandlerRequest {
    #[oai(validator(max_length = 1024))]
    pub description: Option<Text>,
    /// false disables the handler (its commands get 503); true enables it again.
    pub available: Option<bool>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct CircuitResetRequest {
    /// One handler; every handler when absent.
    pub handler: Option<Text>,
}

#[derive(Debug, Clone, Object, Serialize, Deserialize)]
#[oai(deny_unknown_fields)]
#[serde(deny_unknown_fields)]
pub struct MetricsResetRequest {
    /// One command type; every type when absent.
    pub command_type: Option<Text>,
}

/// `{"atomic": bool, "commands": [...]}` (a bare array is `atomic: false`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchRequest {
    #[serde(default)]
    atomic: bool,
    commands: Vec<Value>,
}

fn handler_name(name: &str) -> ApiResult<CommandType> {
    CommandType::parse(name).ok_or_else(|| {
        ApiError::NotFound(format!(
            "no handler named `{name}`; the handlers are {}",
            CommandType::names()
        ))
    })
}

fn parse_execute_at(text: &str, now: DateTime<Utc>) -> ApiResult<DateTime<Utc>> {
    let at = DateTime::parse_from_rfc3339(text)
        .map_err(|_| {
            ApiError::invalid(
                "execute_at",
                "must be an RFC 3339 time, such as 2030-01-01T00:00:00Z",
            )
        })?
        .with_timezone(&Utc);
    if at <= now {
        return Err(ApiError::invalid("execute_at", "must be in the future"));
    }
    Ok(at)
}

/// Runs a unit of work that may turn out empty (nothing to change): `None` then, and
/// nothing is written.
async fn run_if_any<F, Fut>(
    engine: &Engine,
    ctx: &CommandContext,
    mut build: F,
) -> Result<Option<Committed>, KernelError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<UnitOfWork, KernelError>>,
{
    let empty = std::sync::atomic::AtomicBool::new(false);
    let outcome = engine
        .run(ctx, || {
            let built = build();
            let empty = &empty;
            async move {
                let uow = built.await?;
                let is_empty = uow.is_empty();
                empty.store(is_empty, std::sync::atomic::Ordering::SeqCst);
                if is_empty {
                    return Err(KernelError::Rejected(DomainError::StateConflict(
                        "nothing to change".into(),
                    )));
                }
                Ok(uow)
            }
        })
        .await;
    match outcome {
        Ok(committed) => Ok(Some(committed)),
        Err(_) if empty.load(std::sync::atomic::Ordering::SeqCst) => Ok(None),
        Err(err) => Err(err),
    }
}

/// Parses an envelope sent with `claims`; a token acting for a user sends only that user's
/// own commands.
fn parse_for(claims: &Claims, value: &Value, prefix: Option<&str>) -> ApiResult<Envelope> {
    let envelope = envelope::parse(value, prefix)?;
    require_own_command(claims, &envelope.payload).map_err(|err| match prefix {
        Some(prefix) => envelope::prefixed(err, prefix),
        None => err,
    })?;
    Ok(envelope)
}

/// A token acting for a user ([`Claims::acting_user`]) may send a command only when the
/// command's `user_id` is that user (403 naming `user_id`); the types without a user
/// (inventory, system) change shared state and are refused to it.
fn require_own_command(claims: &Claims, payload: &Value) -> ApiResult<()> {
    let Some(user) = claims.acting_user() else {
        return Ok(());
    };
    match payload.get("user_id").and_then(Value::as_str) {
        Some(owner) if owner == user => Ok(()),
        Some(_) => Err(ApiError::Forbidden(format!(
            "user_id: this token acts for user {user} and may only send that user's own \
             commands"
        ))),
        None => Err(ApiError::Forbidden(format!(
            "this token acts for user {user}; commands without a user_id change shared state \
             and need a token that acts for no user"
        ))),
    }
}

pub struct CommandWriteApi {
    pub state: WriteState,
}

impl CommandWriteApi {
    fn engine(&self) -> &Engine {
        &self.state.engine
    }

    fn context(&self, auth: &BearerAuth, req: &Request, role: Role) -> ApiResult<CommandContext> {
        auth.0.allow(role, COMMAND_SCOPE)?;
        context(&auth.0, request_id(req), None, "", &())
    }

    /// Runs one command now (sync or as part of a non-atomic batch).
    async fn execute_one(
        &self,
        ctx: &CommandContext,
        envelope: &Envelope,
        source: CommandSource,
    ) -> ApiResult<Outcome> {
        let engine = self.engine();
        let existing = engine.load::<Command>(&envelope.command_id).await?.state;
        if existing.exists() {
            return runner::repeated(engine, &existing, envelope).await;
        }
        let _probe = admit(engine, envelope.command_type(), Utc::now())
            .await?
            .map_err(ApiError::from)?;
        runner::run(&self.state, ctx, envelope, source, false).await
    }

    /// Puts a command in the durable queue or schedule: its event and its pending
    /// reservation in one unit of work.
    async fn enqueue(
        &self,
        ctx: &CommandContext,
        envelope: &Envelope,
        source: CommandSource,
        execute_at: Option<DateTime<Utc>>,
    ) -> ApiResult<CommandReply> {
        let engine = self.engine();
        let existing = engine.load::<Command>(&envelope.command_id).await?.state;
        if existing.exists() {
            return Ok(reply(runner::repeated(engine, &existing, envelope).await?));
        }
        // An unregistered or disabled handler refuses at once; an open circuit only delays.
        let handler = engine
            .load::<CommandHandler>(envelope.command_type().as_str())
            .await?
            .state;
        if !handler.is_registered() || handler.is_disabled() {
            let state = if handler.is_registered() {
                "disabled"
            } else {
                "not registered"
            };
            return Err(ApiError::Unavailable {
                detail: format!("the {} handler is {state}", envelope.command_type()),
                retry_after_secs: 30,
            });
        }
        let max_queue = self.state.command.max_queue;
        let waiting = engine
            .store()
            .reservations(
                PENDING_SCOPE,
                "",
                u32::try_from(max_queue).unwrap_or(u32::MAX),
            )
            .await?
            .len();
        if waiting >= max_queue {
            return Err(ApiError::Unavailable {
                detail: format!("the command queue is full ({max_queue} commands wait)"),
                retry_after_secs: 5,
            });
        }
        let command_id = envelope.command_id.as_str();
        let committed = engine
            .run(ctx, || async {
                let at = Utc::now();
                let op = match execute_at {
                    Some(execute_at) => CommandOp::Schedule {
                        command_id: command_id.to_string(),
                        command_type: envelope.command_type(),
                        payload: envelope.payload.clone(),
                        execute_at,
                        at,
                    },
                    None => CommandOp::Queue {
                        command_id: command_id.to_string(),
                        command_type: envelope.command_type(),
                        payload: envelope.payload.clone(),
                        source,
                        at,
                    },
                };
                let mut uow = UnitOfWork::new();
                uow.push(engine.decide::<Command>(command_id, op, &()).await?)?;
                uow.reserve(pending_reservation(command_id));
                Ok(uow)
            })
            .await;
        let committed = match committed {
            Ok(committed) => committed,
            Err(KernelError::Rejected(DomainError::AlreadyExists(_))) => {
                // A request with the same command id won the race.
                let existing = engine.load::<Command>(command_id).await?.state;
                return Ok(reply(runner::repeated(engine, &existing, envelope).await?));
            }
            Err(err) => return Err(err.into()),
        };
        let status = if execute_at.is_some() {
            CommandStatus::Scheduled
        } else {
            CommandStatus::Queued
        };
        let url = status_url(command_id);
        let mut body = json!({
            "command_id": command_id,
            "status": status.as_str(),
            "command_type": envelope.command_type().as_str(),
            "status_url": url,
            "position": committed.position,
        });
        if let Some(execute_at) = execute_at {
            body["execute_at"] = json!(execute_at);
        }
        Ok(CommandReply::Accepted(Json(body), committed.position, url))
    }

    /// Cancels a pending command with its reservation; `None` if it is no longer pending.
    async fn cancel(
        &self,
        ctx: &CommandContext,
        command_id: &str,
        reason: &str,
    ) -> Result<Option<Committed>, KernelError> {
        let engine = self.engine();
        let result = engine
            .run(ctx, || async {
                let mut uow = UnitOfWork::new();
                let cancel = CommandOp::Cancel {
                    reason: reason.to_string(),
                    at: Utc::now(),
                };
                uow.push(engine.decide::<Command>(command_id, cancel, &()).await?)?;
                uow.release(pending_reservation(command_id));
                Ok(uow)
            })
            .await;
        match result {
            Ok(committed) => Ok(Some(committed)),
            Err(KernelError::Rejected(DomainError::StateConflict(_))) => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// Runs a batch as one unit of work: every command executes, or none does. A refusal
    /// names the command (`commands[2].amount`) and writes nothing.
    async fn atomic_batch(
        &self,
        ctx: &CommandContext,
        envelopes: &[Envelope],
    ) -> ApiResult<CommandReply> {
        let engine = self.engine();
        let at_index = |index: usize| format!("commands[{index}]");
        // The same atomic batch again answers its recorded outcomes.
        let mut recorded = Vec::new();
        for (index, envelope) in envelopes.iter().enumerate() {
            let command = engine.load::<Command>(&envelope.command_id).await?.state;
            if command.exists() {
                let outcome = runner::repeated(engine, &command, envelope)
                    .await
                    .map_err(|err| envelope::prefixed(err, &at_index(index)))?;
                recorded.push((index, outcome));
            }
        }
        if !recorded.is_empty() {
            if recorded.len() != envelopes.len() {
                let (index, outcome) = &recorded[0];
                return Err(ApiError::Conflict(format!(
                    "{}: command {} already exists; an atomic batch is either all new or                      the same batch again",
                    at_index(*index),
                    outcome.command_id
                )));
            }
            let position = recorded.iter().map(|(_, o)| o.position).max().unwrap_or(0);
            let results: Vec<Value> = recorded
                .iter()
                .map(|(index, outcome)| {
                    let mut body = outcome.body();
                    body["index"] = json!(index);
                    body
                })
                .collect();
            return Ok(done(
                json!({ "atomic": true, "results": results }),
                position,
            ));
        }
        let mut types: Vec<CommandType> = envelopes.iter().map(Envelope::command_type).collect();
        types.sort();
        types.dedup();
        let mut probes = Vec::new();
        for command_type in &types {
            probes.push(
                admit(engine, *command_type, Utc::now())
                    .await?
                    .map_err(ApiError::from)?,
            );
        }
        let refusal: std::sync::Mutex<Option<(usize, ApiError)>> = std::sync::Mutex::new(None);
        let results: std::sync::Mutex<Vec<Value>> = std::sync::Mutex::new(Vec::new());
        let committed = engine
            .run(ctx, || async {
                *refusal.lock().expect("refusal") = None;
                let at = Utc::now();
                let mut uow = UnitOfWork::new();
                let mut bodies = Vec::with_capacity(envelopes.len());
                for (index, envelope) in envelopes.iter().enumerate() {
                    let command_id = envelope.command_id.as_str();
                    let loaded = engine.load::<Command>(command_id).await?;
                    if loaded.state.exists() {
                        return Err(DomainError::AlreadyExists(format!(
                            "{}: command {command_id}",
                            at_index(index)
                        ))
                        .into());
                    }
                    let started = std::time::Instant::now();
                    let effect =
                        match effects::execute(engine, &mut uow, command_id, &envelope.spec, at)
                            .await
                        {
                            Ok(effect) => effect,
                            Err(
                                err @ (KernelError::Rejected(_)
                                | KernelError::Duplicate { .. }
                                | KernelError::Forgotten(_)),
                            ) => {
                                let api = ApiError::from(err);
                                let detail = api.to_string();
                                *refusal.lock().expect("refusal") = Some((index, api));
                                return Err(DomainError::StateConflict(detail).into());
                            }
                            Err(other) => return Err(other),
                        };
                    let executed = CommandOp::RecordExecuted {
                        command_id: command_id.to_string(),
                        command_type: envelope.command_type(),
                        payload: envelope.payload.clone(),
                        source: CommandSource::Batch,
                        result: effect.result.clone(),
                        undoable: effect.undoable,
                        undo: effect.undo,
                        latency_us: started.elapsed().as_micros() as u64,
                        at,
                    };
                    uow.push(Engine::decide_on(command_id, loaded, executed, &()).await?)?;
                    bodies.push(json!({
                        "index": index, "command_id": command_id, "status": "executed",
                        "command_type": envelope.command_type().as_str(), "result": effect.result,
                    }));
                }
                for command_type in &types {
                    let success = HandlerOp::RecordSuccess {
                        name: *command_type,
                        at,
                    };
                    uow.push(
                        engine
                            .decide::<CommandHandler>(command_type.as_str(), success, &())
                            .await?,
                    )?;
                }
                *results.lock().expect("results") = bodies;
                Ok(uow)
            })
            .await;
        drop(probes);
        let committed = match committed {
            Ok(committed) => committed,
            Err(err) => {
                let refused = refusal.lock().expect("refusal").take();
                return match refused {
                    Some((index, api)) => {
                        let command_id = &envelopes[index].command_id;
                        let api = envelope::prefixed(api, &at_index(index));
                        let mut problem = failed_problem(&api, command_id, Some(index));
                        // Nothing was recorded: the whole batch was refused.
                        problem["command_status"] = json!("rejected");
                        problem["atomic"] = json!(true);
                        let position = self.head().await?;
                        problem["position"] = json!(position);
                        Ok(CommandReply::Failed(api.status(), Json(problem), position))
                    }
                    None => Err(err.into()),
                };
            }
        };
        let results = std::mem::take(&mut *results.lock().expect("results"));
        Ok(done(
            json!({ "atomic": true, "results": results }),
            committed.position,
        ))
    }

    async fn head(&self) -> ApiResult<u64> {
        Ok(self.engine().store().head_position().await?)
    }
}

#[OpenApi]
impl CommandWriteApi {
    /// Execute a command now. Its effect and its outcome commit together; a refusal (an
    /// unknown user, no stock, an illegal transition) records the command as failed and
    /// answers the refusal's problem with `command_id` and `command_status`. The same
    /// `command_id` again with the same body answers the recorded outcome.
    #[oai(path = "/commands/execute", method = "post", tag = "ApiTags::Commands")]
    async fn execute(
        &self,
        auth: BearerAuth,
        req: &Request,
        body: StrictJson<Value>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Writer)?;
        let envelope = parse_for(&auth.0, &body.0, None)?;
        let outcome = self
            .execute_one(&ctx, &envelope, CommandSource::Sync)
            .await?;
        Ok(reply(outcome))
    }

    /// Accept a command to run in the background: it is queued durably (`source: async`) and
    /// the dispatcher runs it; poll `status_url` (read-api) for the outcome.
    #[oai(
        path = "/commands/execute-async",
        method = "post",
        tag = "ApiTags::Commands"
    )]
    async fn execute_async(
        &self,
        auth: BearerAuth,
        req: &Request,
        body: StrictJson<Value>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Writer)?;
        let envelope = parse_for(&auth.0, &body.0, None)?;
        self.enqueue(&ctx, &envelope, CommandSource::Async, None)
            .await
    }

    /// Execute several commands: a JSON array (each one on its own), or
    /// `{"atomic": true, "commands": [...]}` (one unit of work: all or nothing; a refusal
    /// names the command, as in `commands[2].amount`, and writes nothing).
    #[oai(
        path = "/commands/execute-batch",
        method = "post",
        tag = "ApiTags::Commands"
    )]
    async fn execute_batch(
        &self,
        auth: BearerAuth,
        req: &Request,
        body: StrictJson<Value>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Writer)?;
        let request = match body.0 {
            Value::Array(commands) => BatchRequest {
                atomic: false,
                commands,
            },
            other @ Value::Object(_) => {
                let bytes = serde_json::to_vec(&other)
                    .map_err(|err| ApiError::Internal(err.to_string()))?;
                web::strict::parse_strict::<BatchRequest>(&bytes)?
            }
            _ => {
                return Err(ApiError::BadRequest {
                    detail: "a batch is a JSON array of commands or {\"atomic\": bool, \
                             \"commands\": [...]}"
                        .into(),
                    errors: vec![],
                })
            }
        };
        let max = self.state.command.max_batch;
        if request.commands.is_empty() || request.commands.len() > max {
            return Err(ApiError::invalid(
                "commands",
                format!("a batch holds 1 to {max} commands"),
            ));
        }
        let mut envelopes = Vec::with_capacity(request.commands.len());
        let mut seen = std::collections::HashSet::new();
        for (index, command) in request.commands.iter().enumerate() {
            let prefix = format!("commands[{index}]");
            let envelope = parse_for(&auth.0, command, Some(&prefix))?;
            if !seen.insert(envelope.command_id.clone()) {
                return Err(ApiError::invalid(
                    &format!("{prefix}.command_id"),
                    format!(
                        "command id {} appears twice in the batch",
                        envelope.command_id
                    ),
                ));
            }
            envelopes.push(envelope);
        }
        if request.atomic {
            return self.atomic_batch(&ctx, &envelopes).await;
        }
        let mut results = Vec::with_capacity(envelopes.len());
        let (mut executed, mut failed, mut position) = (0, 0, 0);
        for (index, envelope) in envelopes.iter().enumerate() {
            let item = match self.execute_one(&ctx, envelope, CommandSource::Batch).await {
                Ok(outcome) => {
                    position = position.max(outcome.position);
                    match &outcome.refusal {
                        Some(refusal) => {
                            failed += 1;
                            json!({
                                "index": index, "command_id": outcome.command_id,
                                "command_type": outcome.command_type.as_str(),
                                "status": "failed",
                                "error": failed_problem(refusal, &outcome.command_id, None),
                                "position": outcome.position,
                            })
                        }
                        None => {
                            executed += 1;
                            let mut body = outcome.body();
                            body["index"] = json!(index);
                            body
                        }
                    }
                }
                // Refused before it ran (circuit open, a reused command id): nothing written.
                Err(err) => {
                    failed += 1;
                    json!({
                        "index": index, "command_id": envelope.command_id,
                        "command_type": envelope.command_type().as_str(),
                        "status": "rejected",
                        "error": serde_json::to_value(err.body()).unwrap_or(Value::Null),
                    })
                }
            };
            results.push(item);
        }
        if position == 0 {
            position = self.head().await?;
        }
        Ok(done(
            json!({ "atomic": false, "executed": executed, "failed": failed, "results": results }),
            position,
        ))
    }

    /// Undo an executed command with its compensating command (a payment is refunded, a
    /// created user deleted, an updated one restored, a created order cancelled, a stock
    /// change reversed). 409 with the reason when it cannot be undone.
    #[oai(path = "/commands/undo", method = "post", tag = "ApiTags::Commands")]
    async fn undo(
        &self,
        auth: BearerAuth,
        req: &Request,
        body: StrictJson<UndoRequest>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Writer)?;
        let command_id = body.0.command_id.as_str();
        let engine = self.engine();
        let compensation = std::sync::Mutex::new(Value::Null);
        let command_type = std::sync::Mutex::new(None);
        let committed = engine
            .run(&ctx, || async {
                let at = Utc::now();
                let loaded = engine.load::<Command>(command_id).await?;
                let command = loaded.state.clone();
                // Another user's command answers like a missing one.
                if !command.exists() || require_own_command(&auth.0, command.payload()).is_err() {
                    return Err(DomainError::NotFound(format!("command {command_id}")).into());
                }
                if command.status() == Some(CommandStatus::Executed)
                    && command.require_undoable().is_err()
                {
                    return Err(
                        DomainError::StateConflict(effects::why_not_undoable(&command)).into(),
                    );
                }
                command.require_undoable()?;
                let mut uow = UnitOfWork::new();
                let done = effects::compensate(engine, &mut uow, &command, at)
                    .await
                    .map_err(|err| match err {
                        KernelError::Rejected(
                            DomainError::Invalid { message, .. }
                            | DomainError::StateConflict(message),
                        ) => KernelError::Rejected(DomainError::StateConflict(format!(
                            "command {command_id} cannot be undone: {message}"
                        ))),
                        KernelError::Rejected(DomainError::NotFound(what)) => {
                            KernelError::Rejected(DomainError::StateConflict(format!(
                                "command {command_id} cannot be undone: {what} no longer exists"
                            )))
                        }
                        other => other,
                    })?;
                *compensation.lock().expect("compensation") = done.clone();
                *command_type.lock().expect("type") = command.command_type();
                let undone = CommandOp::RecordUndone {
                    compensation: done,
                    at,
                };
                uow.push(Engine::decide_on(command_id, loaded, undone, &()).await?)?;
                Ok(uow)
            })
            .await?;
        let compensation = std::mem::take(&mut *compensation.lock().expect("compensation"));
        let command_type = command_type
            .lock()
            .expect("type")
            .map_or("", CommandType::as_str);
        Ok(done(
            json!({
                "command_id": command_id, "status": "undone", "command_type": command_type,
                "compensation": compensation,
            }),
            committed.position,
        ))
    }

    /// Put a command in the durable queue; the dispatcher runs it once, even across
    /// restarts.
    #[oai(path = "/commands/queue", method = "post", tag = "ApiTags::Commands")]
    async fn enqueue_command(
        &self,
        auth: BearerAuth,
        req: &Request,
        body: StrictJson<Value>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Writer)?;
        let envelope = parse_for(&auth.0, &body.0, None)?;
        self.enqueue(&ctx, &envelope, CommandSource::Queue, None)
            .await
    }

    /// Cancel every queued command (scheduled ones stay). Admin.
    #[oai(path = "/commands/queue", method = "delete", tag = "ApiTags::Commands")]
    async fn clear_queue(&self, auth: BearerAuth, req: &Request) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Admin)?;
        let engine = self.engine();
        let mut cancelled = Vec::new();
        let mut position = 0;
        let mut after = String::new();
        loop {
            let page = engine
                .store()
                .reservations(PENDING_SCOPE, &after, 500)
                .await?;
            let Some(last) = page.last() else { break };
            after = last.value.clone();
            for reservation in &page {
                let command = engine.load::<Command>(&reservation.value).await?.state;
                if command.status() != Some(CommandStatus::Queued) {
                    continue;
                }
                if let Some(committed) = self
                    .cancel(&ctx, &reservation.value, "the queue was cleared")
                    .await?
                {
                    position = position.max(committed.position);
                    cancelled.push(reservation.value.clone());
                }
            }
        }
        if position == 0 {
            position = self.head().await?;
        }
        Ok(done(
            json!({ "cancelled": cancelled.len(), "command_ids": cancelled }),
            position,
        ))
    }

    /// Schedule a command to run at `execute_at` (RFC 3339, in the future); durable.
    #[oai(
        path = "/commands/schedule",
        method = "post",
        tag = "ApiTags::Commands"
    )]
    async fn schedule(
        &self,
        auth: BearerAuth,
        req: &Request,
        body: StrictJson<ScheduleRequest>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Writer)?;
        let execute_at = parse_execute_at(&body.0.execute_at, Utc::now())?;
        let envelope = parse_for(&auth.0, &body.0.command, Some("command"))?;
        self.enqueue(&ctx, &envelope, CommandSource::Schedule, Some(execute_at))
            .await
    }

    /// Cancel a scheduled command before it runs.
    #[oai(
        path = "/commands/scheduled/:id",
        method = "delete",
        tag = "ApiTags::Commands"
    )]
    async fn cancel_scheduled(
        &self,
        auth: BearerAuth,
        req: &Request,
        id: Path<String>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Writer)?;
        let engine = self.engine();
        let command = engine.load::<Command>(&id.0).await?.state;
        // Another user's command answers like a missing one (its payload never changes).
        let status = command
            .status()
            .filter(|_| require_own_command(&auth.0, command.payload()).is_ok());
        match status {
            None => return Err(ApiError::NotFound(format!("command {} not found", id.0))),
            Some(CommandStatus::Scheduled) => {}
            Some(status) => {
                return Err(ApiError::Conflict(format!(
                    "command {} is {status}: only a scheduled command can be cancelled",
                    id.0
                )))
            }
        }
        let committed = self
            .cancel(&ctx, &id.0, "cancelled before it was due")
            .await?
            .ok_or_else(|| {
                ApiError::Conflict(format!("command {} is no longer scheduled", id.0))
            })?;
        Ok(done(
            json!({
                "command_id": id.0, "status": "cancelled",
                "command_type": command.command_type().map_or("", CommandType::as_str),
            }),
            committed.position,
        ))
    }

    /// Clear the command history (`command.history_cleared`; read models drop finished
    /// commands). Admin.
    #[oai(
        path = "/commands/history",
        method = "delete",
        tag = "ApiTags::Commands"
    )]
    async fn clear_history(&self, auth: BearerAuth, req: &Request) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Admin)?;
        let at = Utc::now();
        let mut data = Map::new();
        data.insert("cleared_at".into(), json!(at));
        let committed = self
            .engine()
            .execute::<HistoryLog, _>(
                HISTORY_ID,
                || Record {
                    id: HISTORY_ID.to_string(),
                    data: data.clone(),
                },
                &(),
                &ctx,
            )
            .await?;
        Ok(done(json!({ "cleared_at": at }), committed.position))
    }

    /// Reset command metrics, of one type or all (`command.metrics_reset`). Admin.
    #[oai(
        path = "/commands/metrics/reset",
        method = "post",
        tag = "ApiTags::Commands"
    )]
    async fn reset_metrics(
        &self,
        auth: BearerAuth,
        req: &Request,
        body: StrictJson<MetricsResetRequest>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Admin)?;
        let command_type = match &body.0.command_type {
            Some(name) => Some(CommandType::parse(name).ok_or_else(|| {
                ApiError::invalid(
                    "command_type",
                    format!("must be one of {}", CommandType::names()),
                )
            })?),
            None => None,
        };
        let at = Utc::now();
        let mut data = Map::new();
        data.insert(
            "command_type".into(),
            command_type.map_or(Value::Null, |t| json!(t.as_str())),
        );
        data.insert("reset_at".into(), json!(at));
        let committed = self
            .engine()
            .execute::<MetricsLog, _>(
                METRICS_ID,
                || Record {
                    id: METRICS_ID.to_string(),
                    data: data.clone(),
                },
                &(),
                &ctx,
            )
            .await?;
        Ok(done(
            json!({ "command_type": data["command_type"], "reset_at": at }),
            committed.position,
        ))
    }

    /// Close circuit breakers and forget their failures: one handler's, or every one's.
    /// Admin.
    #[oai(
        path = "/commands/circuit-breaker/reset",
        method = "post",
        tag = "ApiTags::Commands"
    )]
    async fn reset_circuit_breaker(
        &self,
        auth: BearerAuth,
        req: &Request,
        body: StrictJson<CircuitResetRequest>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Admin)?;
        let handlers = match &body.0.handler {
            Some(name) => vec![CommandType::parse(name).ok_or_else(|| {
                ApiError::invalid(
                    "handler",
                    format!("must be one of {}", CommandType::names()),
                )
            })?],
            None => CommandType::ALL.to_vec(),
        };
        let engine = self.engine();
        let reset = std::sync::Mutex::new(Vec::new());
        let committed = run_if_any(engine, &ctx, || async {
            let at = Utc::now();
            let mut uow = UnitOfWork::new();
            let mut names = Vec::new();
            for name in &handlers {
                let decision = engine
                    .decide::<CommandHandler>(
                        name.as_str(),
                        HandlerOp::Reset { name: *name, at },
                        &(),
                    )
                    .await?;
                if !decision.events.is_empty() {
                    names.push(name.as_str());
                }
                uow.push(decision)?;
            }
            *reset.lock().expect("reset") = names;
            Ok(uow)
        })
        .await?;
        let position = match &committed {
            Some(committed) => committed.position,
            None => self.head().await?,
        };
        let names = std::mem::take(&mut *reset.lock().expect("reset"));
        let names = if committed.is_some() {
            names
        } else {
            Vec::new()
        };
        Ok(done(json!({ "reset": names }), position))
    }

    /// Register a command handler again (or first), with a description; `available: false`
    /// disables it, `available: true` enables it. Admin.
    #[oai(
        path = "/commands/handlers/:name/register",
        method = "post",
        tag = "ApiTags::Commands"
    )]
    async fn register_handler(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
        body: StrictJson<RegisterHandlerRequest>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Admin)?;
        let handler = handler_name(&name.0)?;
        let request = &body.0;
        let engine = self.engine();
        let committed = engine
            .execute::<CommandHandler, _>(
                handler.as_str(),
                || HandlerOp::Register {
                    name: handler,
                    description: request.description.clone().map(Text::into_string),
                    available: request.available,
                    at: Utc::now(),
                },
                &(),
                &ctx,
            )
            .await?;
        let state = engine.load::<CommandHandler>(handler.as_str()).await?.state;
        Ok(done(
            json!({
                "name": handler.as_str(), "registered": state.is_registered(),
                "available": !state.is_disabled() && !state.is_open(),
                "description": state.description(),
            }),
            committed.position,
        ))
    }

    /// Unregister a command handler: its commands get 503 until it is registered again.
    /// Admin.
    #[oai(
        path = "/commands/handlers/:name",
        method = "delete",
        tag = "ApiTags::Commands"
    )]
    async fn unregister_handler(
        &self,
        auth: BearerAuth,
        req: &Request,
        name: Path<String>,
    ) -> ApiResult<CommandReply> {
        let ctx = self.context(&auth, req, Role::Admin)?;
        let handler = handler_name(&name.0)?;
        let committed = self
            .engine()
            .execute::<CommandHandler, _>(
                handler.as_str(),
                || HandlerOp::Unregister {
                    name: handler,
                    at: Utc::now(),
                },
                &(),
                &ctx,
            )
            .await?;
        Ok(done(
            json!({ "name": handler.as_str(), "registered": false }),
            committed.position,
        ))
    }
}

/// Whether a write route of this context needs an admin (registry, resets, clearing).
pub fn is_admin_route(method: &Method, path: &str) -> bool {
    path.starts_with("/commands/handlers")
        || path == "/commands/metrics/reset"
        || path == "/commands/circuit-breaker/reset"
        || path == "/commands/history"
        || (path == "/commands/queue" && method == Method::DELETE)
}
