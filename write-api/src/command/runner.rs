//! Runs one command: the handler's circuit breaker admits it (or refuses with 503, writing
//! nothing), its effect and its own outcome event (`command.executed`, or `command.failed`
//! with the breaker's events) commit in one unit of work, and a pending command gives back its
//! pending reservation in that same unit of work, so it runs exactly once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use kernel::domain::command::{
    Admission, Command, CommandFailure, CommandHandler, CommandOp, CommandSource, CommandStatus,
    CommandType, HandlerOp, COMMAND, PENDING_SCOPE,
};
use kernel::domain::DomainError;
use kernel::engine::{Engine, UnitOfWork};
use kernel::envelope::{CommandContext, Reservation};
use kernel::KernelError;
use web::ApiError;

use super::effects;
use super::envelope::Envelope;
use crate::WriteState;

/// What became of a command.
#[derive(Debug)]
pub struct Outcome {
    pub command_id: String,
    pub command_type: CommandType,
    pub status: CommandStatus,
    /// What was done (executed), or null.
    pub result: Value,
    /// Why it failed (failed), as the problem it answered with.
    pub refusal: Option<ApiError>,
    /// The recorded failure of a command answered from the store.
    pub recorded_error: Option<CommandFailure>,
    /// The committed position of its last event.
    pub position: u64,
}

impl Outcome {
    /// The JSON body of a successful answer.
    pub fn body(&self) -> Value {
        let mut body = json!({
            "command_id": self.command_id,
            "status": self.status.as_str(),
            "command_type": self.command_type.as_str(),
            "result": self.result,
            "position": self.position,
        });
        if let Some(error) = &self.recorded_error {
            body["error"] = serde_json::to_value(error).unwrap_or(Value::Null);
        }
        body
    }
}

/// The pending reservation of a queued or scheduled command.
pub fn pending_reservation(command_id: &str) -> Reservation {
    Reservation {
        scope: PENDING_SCOPE.to_string(),
        value: command_id.to_string(),
        owner: command_id.to_string(),
    }
}

/// The failure recorded for a refusal.
pub fn failure_of(refusal: &ApiError) -> CommandFailure {
    let body = refusal.body();
    CommandFailure {
        status: body.status,
        title: body.title,
        detail: body.detail,
        field: body
            .errors
            .and_then(|errors| errors.into_iter().next())
            .map(|error| error.field),
    }
}

/// Whether an error is the command being refused (it fails, and that is recorded) rather
/// than the store being unavailable (nothing is recorded; the caller may retry).
fn as_refusal(err: KernelError) -> Result<ApiError, KernelError> {
    match err {
        KernelError::Rejected(_) | KernelError::Duplicate { .. } | KernelError::Forgotten(_) => {
            Ok(err.into())
        }
        other => Err(other),
    }
}

/// The in-process gate of half-open circuits: at most one probe per handler (per engine)
/// at a time.
fn probes() -> &'static Mutex<HashSet<(usize, CommandType)>> {
    static PROBES: OnceLock<Mutex<HashSet<(usize, CommandType)>>> = OnceLock::new();
    PROBES.get_or_init(Default::default)
}

/// Holds a half-open circuit's probe slot until dropped.
pub struct Probe {
    key: (usize, CommandType),
}

impl Drop for Probe {
    fn drop(&mut self) {
        if let Ok(mut probes) = probes().lock() {
            probes.remove(&self.key);
        }
    }
}

fn engine_key(engine: &Engine) -> usize {
    Arc::as_ptr(&engine.appended()) as usize
}

/// Why a handler refuses commands now.
#[derive(Debug)]
pub enum Refused {
    /// Try again after this many seconds.
    Unavailable { detail: String, retry_after: u64 },
}

impl From<Refused> for ApiError {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::Unavailable {
                detail,
                retry_after,
            } => ApiError::Unavailable {
                detail,
                retry_after_secs: retry_after,
            },
        }
    }
}

/// Asks a handler's circuit breaker whether a command may run now: `Ok(Some(probe))` for the
/// one probe of a half-open circuit.
pub async fn admit(
    engine: &Engine,
    command_type: CommandType,
    now: DateTime<Utc>,
) -> Result<Result<Option<Probe>, Refused>, KernelError> {
    let handler = engine
        .load::<CommandHandler>(command_type.as_str())
        .await?
        .state;
    Ok(match handler.admission(now) {
        Admission::Closed => Ok(None),
        Admission::Unregistered => Err(Refused::Unavailable {
            detail: format!("the {command_type} handler is not registered"),
            retry_after: 30,
        }),
        Admission::Disabled => Err(Refused::Unavailable {
            detail: format!("the {command_type} handler is disabled"),
            retry_after: 30,
        }),
        Admission::Open { retry_at } => {
            let wait = (retry_at - now).num_milliseconds().max(0) as u64;
            Err(Refused::Unavailable {
                detail: format!(
                    "the {command_type} handler's circuit is open after repeated failures; \
                     retry at {}",
                    retry_at.to_rfc3339()
                ),
                retry_after: wait.div_ceil(1000).max(1),
            })
        }
        Admission::HalfOpen => {
            let key = (engine_key(engine), command_type);
            let mut probes = probes()
                .lock()
                .map_err(|_| KernelError::storage("probe gate poisoned"))?;
            if probes.insert(key) {
                Ok(Some(Probe { key }))
            } else {
                Err(Refused::Unavailable {
                    detail: format!(
                        "the {command_type} handler's circuit is half-open and its one probe \
                         is running"
                    ),
                    retry_after: 1,
                })
            }
        }
    })
}

/// The position of a command's last event.
pub async fn last_position(engine: &Engine, command_id: &str) -> Result<u64, KernelError> {
    Ok(engine
        .store()
        .load_stream(COMMAND, command_id, 0)
        .await?
        .last()
        .map_or(0, |event| event.position))
}

/// The recorded outcome of an existing command, for a repeated command id.
pub async fn recorded(engine: &Engine, command: &Command) -> Result<Outcome, KernelError> {
    Ok(Outcome {
        command_id: command.id().to_string(),
        command_type: command.command_type().unwrap_or(CommandType::System),
        status: command.status().unwrap_or(CommandStatus::Failed),
        result: command.result().clone(),
        refusal: None,
        recorded_error: command.error().cloned(),
        position: last_position(engine, command.id()).await?,
    })
}

/// Answers a command id that is already recorded: its outcome when the body is the same, a
/// 409 when it differs.
pub async fn repeated(
    engine: &Engine,
    command: &Command,
    envelope: &Envelope,
) -> Result<Outcome, ApiError> {
    if command.command_type() != Some(envelope.command_type())
        || command.payload() != &envelope.payload
    {
        return Err(ApiError::Conflict(format!(
            "command {} was already sent with another body",
            envelope.command_id
        )));
    }
    Ok(recorded(engine, command).await?)
}

/// Runs a command now: new (`pending` false) or from the queue or schedule (`pending` true,
/// its reservation is given back). Assumes the breaker admitted it. A command already
/// recorded (for a new one) or no longer pending (for a pending one) is answered with its
/// recorded outcome.
pub async fn run(
    state: &WriteState,
    ctx: &CommandContext,
    envelope: &Envelope,
    source: CommandSource,
    pending: bool,
) -> Result<Outcome, ApiError> {
    let engine = &state.engine;
    let policy = &state.command;
    let command_id = envelope.command_id.as_str();
    let command_type = envelope.command_type();
    let refusal: Mutex<Option<ApiError>> = Mutex::new(None);
    let already: Mutex<bool> = Mutex::new(false);
    let result: Mutex<Value> = Mutex::new(Value::Null);
    let open_timeout = chrono::Duration::from_std(policy.open_timeout)
        .unwrap_or_else(|_| chrono::Duration::seconds(30));
    // A unique value the effect claims (an email) that turns out taken only at commit: the
    // command is then recorded as failed, by a second unit of work without the effect.
    let taken: Mutex<Option<(String, String)>> = Mutex::new(None);
    let mut attempt = 0;
    let committed = loop {
        attempt += 1;
        let outcome = engine
            .run(ctx, || async {
                let at = Utc::now();
                let loaded = engine.load::<Command>(command_id).await?;
                let runnable = if pending {
                    loaded.state.is_pending()
                } else {
                    !loaded.state.exists()
                };
                if !runnable {
                    *already.lock().expect("flag") = true;
                    return Err(KernelError::Rejected(DomainError::StateConflict(format!(
                        "command {command_id} was already run"
                    ))));
                }
                let started = Instant::now();
                let mut effect_uow = UnitOfWork::new();
                let taken = taken.lock().expect("taken").clone();
                let effect = match taken {
                    Some((scope, value)) => Err(KernelError::Duplicate { scope, value }),
                    None => {
                        effects::execute(engine, &mut effect_uow, command_id, &envelope.spec, at)
                            .await
                    }
                };
                let latency_us = started.elapsed().as_micros() as u64;
                let (mut uow, op, handler_op, refused) = match effect {
                    Ok(effect) => {
                        *result.lock().expect("result") = effect.result.clone();
                        (
                            effect_uow,
                            CommandOp::RecordExecuted {
                                command_id: command_id.to_string(),
                                command_type,
                                payload: envelope.payload.clone(),
                                source,
                                result: effect.result,
                                undoable: effect.undoable,
                                undo: effect.undo,
                                latency_us,
                                at,
                            },
                            HandlerOp::RecordSuccess {
                                name: command_type,
                                at,
                            },
                            None,
                        )
                    }
                    Err(err) => {
                        let refused = as_refusal(err)?;
                        (
                            UnitOfWork::new(),
                            CommandOp::RecordFailed {
                                command_id: command_id.to_string(),
                                command_type,
                                payload: envelope.payload.clone(),
                                source,
                                error: failure_of(&refused),
                                latency_us,
                                at,
                            },
                            HandlerOp::RecordFailure {
                                name: command_type,
                                failure_threshold: policy.failure_threshold,
                                open_timeout,
                                at,
                            },
                            Some(refused),
                        )
                    }
                };
                uow.push(Engine::decide_on(command_id, loaded, op, &()).await?)?;
                uow.push(
                    engine
                        .decide::<CommandHandler>(command_type.as_str(), handler_op, &())
                        .await?,
                )?;
                if pending {
                    uow.release(pending_reservation(command_id));
                }
                *refusal.lock().expect("refusal") = refused;
                Ok(uow)
            })
            .await;
        match outcome {
            Ok(committed) => break committed,
            Err(_) if *already.lock().expect("flag") => {
                let command = engine.load::<Command>(command_id).await?.state;
                return if pending {
                    Ok(recorded(engine, &command).await?)
                } else {
                    repeated(engine, &command, envelope).await
                };
            }
            Err(KernelError::Duplicate { scope, value }) if attempt == 1 => {
                *taken.lock().expect("taken") = Some((scope, value));
            }
            Err(err) => return Err(err.into()),
        }
    };
    let refused = refusal.lock().expect("refusal").take();
    let result = std::mem::take(&mut *result.lock().expect("result"));
    Ok(Outcome {
        command_id: command_id.to_string(),
        command_type,
        status: if refused.is_some() {
            CommandStatus::Failed
        } else {
            CommandStatus::Executed
        },
        result: if refused.is_some() {
            Value::Null
        } else {
            result
        },
        refusal: refused,
        recorded_error: None,
        position: committed.position,
    })
}

/// Records a pending command as failed without running it (its stored payload no longer
/// passes the checks), giving back its pending reservation.
pub async fn fail_pending(
    state: &WriteState,
    ctx: &CommandContext,
    command_id: &str,
    command_type: CommandType,
    payload: &Value,
    source: CommandSource,
    refusal: &ApiError,
) -> Result<(), KernelError> {
    let engine = &state.engine;
    let outcome = engine
        .run(ctx, || async {
            let failed = CommandOp::RecordFailed {
                command_id: command_id.to_string(),
                command_type,
                payload: payload.clone(),
                source,
                error: failure_of(refusal),
                latency_us: 0,
                at: Utc::now(),
            };
            let mut uow = UnitOfWork::new();
            uow.push(engine.decide::<Command>(command_id, failed, &()).await?)?;
            uow.release(pending_reservation(command_id));
            Ok(uow)
        })
        .await;
    match outcome {
        // Run or cancelled meanwhile.
        Ok(_) | Err(KernelError::Rejected(_)) => Ok(()),
        Err(err) => Err(err),
    }
}
