//! Background jobs of the write side: the seed's periodic cleanup of every caretaker
//! (`memento.cleanup_interval`), run as ordinary commands so it leaves `cleanup_completed`
//! events like a manual cleanup does.

use std::time::Duration;

use chrono::Utc;

use kernel::domain::memento::{Caretaker, CaretakerCommand, CaretakerEvent, CARETAKER};
use kernel::engine::Engine;
use kernel::envelope::CommandContext;
use kernel::KernelResult;
use web::server::Shutdown;

use crate::WriteState;

const PAGE: u32 = 500;
pub const CLEANUP_ACTOR: &str = "quintet-cleanup";

/// Runs [`cleanup_all`] every `interval` until shutdown.
pub async fn run_cleanup(state: WriteState, interval: Duration, shutdown: Shutdown) {
    let stop = shutdown.wait();
    tokio::pin!(stop);
    let mut ticker = tokio::time::interval(interval);
    // The first tick fires at once; a cleanup right at start-up is not wanted.
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = ticker.tick() => match cleanup_all(&state).await {
                Ok(removed) => tracing::info!(removed, "periodic cleanup done"),
                Err(err) => tracing::warn!(error = %err, "periodic cleanup failed; retrying next interval"),
            },
        }
    }
}

/// Cleans up every live caretaker that has something to remove; returns how many
/// mementos were removed.
pub async fn cleanup_all(state: &WriteState) -> KernelResult<usize> {
    let mut after = String::new();
    let mut removed = 0;
    loop {
        let names = state
            .engine
            .store()
            .aggregate_ids(CARETAKER, &after, PAGE)
            .await?;
        let Some(last) = names.last().cloned() else {
            return Ok(removed);
        };
        for name in &names {
            removed += cleanup_one(state, name).await?;
        }
        after = last;
    }
}

async fn cleanup_one(state: &WriteState, name: &str) -> KernelResult<usize> {
    let loaded = state.engine.load::<Caretaker>(name).await?;
    if !loaded.state.is_live() {
        return Ok(0);
    }
    let command = || CaretakerCommand::Cleanup { now: Utc::now() };
    let preview = Engine::decide_on(name, loaded, command(), &state.memento).await?;
    if removed_by(&preview.events) == 0 {
        return Ok(0);
    }
    let ctx = CommandContext {
        actor: Some(CLEANUP_ACTOR.to_string()),
        ..CommandContext::default()
    };
    state
        .engine
        .execute::<Caretaker, _>(name, command, &state.memento, &ctx)
        .await?;
    Ok(removed_by(&preview.events))
}

fn removed_by(events: &[CaretakerEvent]) -> usize {
    events
        .iter()
        .map(|event| match event {
            CaretakerEvent::CleanupCompleted { removed, .. } => removed.len(),
            _ => 0,
        })
        .sum()
}
