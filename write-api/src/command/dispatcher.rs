//! The dispatcher: runs queued commands, and scheduled ones when they are due, exactly once.
//!
//! What is pending lives in the event store, not in memory: a queued or scheduled command
//! holds a reservation (scope [`PENDING_SCOPE`]) from the unit of work that queued it until
//! the one that records its outcome, which also holds its effect. So after a crash the
//! dispatcher lists the reservations and finds exactly the commands still to run, and a
//! command that was cut off mid-way left nothing behind. Two dispatchers (two processes)
//! racing for one command are settled by the optimistic lock on the command's stream: the
//! loser finds it no longer pending and moves on.
//!
//! It wakes when something is committed in this process (the engine's `appended` signal),
//! when the next scheduled command is due, and every `dispatch_poll` (for commands queued by
//! another process).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use kernel::domain::command::{Command, CommandSource, PENDING_SCOPE};
use kernel::envelope::CommandContext;
use kernel::KernelError;

use super::envelope;
use super::runner::{self, admit};
use crate::WriteState;

/// Fewest time between two looks at the store, so a burst of commits is one look.
const MIN_SCAN_INTERVAL: Duration = Duration::from_millis(20);
/// Pending reservations read per page.
const PAGE: u32 = 1000;
/// How long a command waits after the store failed it, before it is tried again.
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// The actor recorded on what the dispatcher commits.
pub const DISPATCHER_ACTOR: &str = "command-dispatcher";

/// Runs queued commands and scheduled ones when they are due, until `shutdown`.
pub async fn run_dispatcher(state: WriteState, shutdown: web::server::Shutdown) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let appended = state.engine.appended();
    let mut dispatcher = Dispatcher::default();
    loop {
        let woken = appended.notified();
        tokio::pin!(woken);
        // Registered before looking, so a commit during the look still wakes the next wait.
        woken.as_mut().enable();
        let next = match dispatcher.tick(&state).await {
            Ok(next) => next,
            Err(err) => {
                tracing::warn!(error = %err, "command dispatcher: the store failed; retrying");
                Some(Utc::now() + chrono::Duration::from_std(RETRY_AFTER_ERROR).unwrap_or_default())
            }
        };
        let poll = state.command.dispatch_poll.max(MIN_SCAN_INTERVAL);
        let wait = next
            .map(|at| (at - Utc::now()).to_std().unwrap_or(Duration::ZERO))
            .map_or(poll, |until| until.min(poll));
        tokio::select! {
            _ = &mut stop => return,
            _ = &mut woken => {}
            _ = tokio::time::sleep(wait) => {}
        }
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(MIN_SCAN_INTERVAL) => {}
        }
    }
}

#[derive(Default)]
struct Dispatcher {
    /// When each pending command is due (known ones; loaded once).
    due: HashMap<String, DateTime<Utc>>,
    /// Commands held back until then (circuit open, handler unavailable, store errors).
    not_before: HashMap<String, DateTime<Utc>>,
}

enum Ran {
    Done,
    /// Try again at this time.
    Later(DateTime<Utc>),
}

impl Dispatcher {
    /// Runs every due command; returns when the next one is due, if any is known.
    async fn tick(&mut self, state: &WriteState) -> Result<Option<DateTime<Utc>>, KernelError> {
        let pending = pending_ids(state).await?;
        self.due.retain(|id, _| pending.contains_key(id));
        self.not_before.retain(|id, _| pending.contains_key(id));
        for id in pending.keys() {
            if !self.due.contains_key(id) {
                let command = state.engine.load::<Command>(id).await?.state;
                let due = command.due_at().unwrap_or_else(Utc::now);
                self.due.insert(id.clone(), due);
            }
        }
        let now = Utc::now();
        let mut ready: Vec<(DateTime<Utc>, String)> = self
            .due
            .iter()
            .filter(|(id, due)| {
                **due <= now && self.not_before.get(*id).is_none_or(|at| *at <= now)
            })
            .map(|(id, due)| (*due, id.clone()))
            .collect();
        ready.sort();
        let concurrency = state.command.dispatch_concurrency.max(1);
        let outcomes: Vec<(String, Result<Ran, KernelError>)> =
            futures::stream::iter(ready.into_iter().map(|(_, id)| async move {
                let ran = run_pending(state, &id).await;
                (id, ran)
            }))
            .buffer_unordered(concurrency)
            .collect()
            .await;
        for (id, ran) in outcomes {
            match ran {
                Ok(Ran::Done) => {
                    self.due.remove(&id);
                    self.not_before.remove(&id);
                }
                Ok(Ran::Later(at)) => {
                    self.not_before.insert(id, at);
                }
                Err(err) => {
                    tracing::warn!(command_id = %id, error = %err, "command dispatcher: not run; retrying");
                    let at = Utc::now()
                        + chrono::Duration::from_std(RETRY_AFTER_ERROR).unwrap_or_default();
                    self.not_before.insert(id, at);
                }
            }
        }
        let now = Utc::now();
        Ok(self
            .due
            .iter()
            .map(|(id, due)| {
                let held = self.not_before.get(id).copied().unwrap_or(*due);
                (*due).max(held)
            })
            .filter(|at| *at > now)
            .min()
            .or_else(|| (!self.due.is_empty()).then_some(now)))
    }
}

/// Every pending command id (the values of the pending reservations).
async fn pending_ids(state: &WriteState) -> Result<HashMap<String, ()>, KernelError> {
    let mut ids = HashMap::new();
    let mut after = String::new();
    loop {
        let page = state
            .engine
            .store()
            .reservations(PENDING_SCOPE, &after, PAGE)
            .await?;
        let full = page.len() == PAGE as usize;
        if let Some(last) = page.last() {
            after = last.value.clone();
        }
        ids.extend(page.into_iter().map(|r| (r.value, ())));
        if !full {
            return Ok(ids);
        }
    }
}

/// Runs one pending command, if its handler admits it now.
async fn run_pending(state: &WriteState, command_id: &str) -> Result<Ran, KernelError> {
    let engine = &state.engine;
    let command = engine.load::<Command>(command_id).await?.state;
    let (Some(command_type), true) = (command.command_type(), command.is_pending()) else {
        // Already run (by another dispatcher); its reservation is gone or going.
        return Ok(Ran::Done);
    };
    let source = command.source().unwrap_or(CommandSource::Queue);
    let ctx = CommandContext {
        actor: Some(DISPATCHER_ACTOR.to_string()),
        ..Default::default()
    };
    let now = Utc::now();
    let probe = match admit(engine, command_type, now).await? {
        Ok(probe) => probe,
        // It waits: an open circuit until its retry time, an unavailable handler a while.
        Err(refused) => {
            let runner::Refused::Unavailable { retry_after, .. } = refused;
            let wait = chrono::Duration::seconds(retry_after.clamp(1, 30) as i64);
            return Ok(Ran::Later(now + wait));
        }
    };
    let envelope = match envelope::from_stored(command_id, command_type, command.payload()) {
        Ok(envelope) => envelope,
        Err(refusal) => {
            // Checked when it was queued; a payload that no longer passes fails as it is.
            runner::fail_pending(
                state,
                &ctx,
                command_id,
                command_type,
                command.payload(),
                source,
                &refusal,
            )
            .await?;
            return Ok(Ran::Done);
        }
    };
    let outcome = runner::run(state, &ctx, &envelope, source, true).await;
    drop(probe);
    match outcome {
        Ok(_) => Ok(Ran::Done),
        Err(err) => Err(KernelError::storage(err.to_string())),
    }
}
