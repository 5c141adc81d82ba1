//! Blue/green rebuilds of projections from the event store.
//!
//! A rebuild writes into a shadow generation of the projection (see
//! `ReadStore::begin_generation`): the live copy keeps serving reads and its runners or
//! workers keep applying to it. The rebuild tails the event store gap-safely from position
//! 0 until it has caught up with the head it sees at the end, then asks the store to swap the
//! shadow in. The store only swaps once the shadow has seen, per aggregate, every event the
//! live copy has (applied or parked), inside one transaction with the flip of the active
//! generation; if live writers got ahead in the meantime, the rebuild catches up again and
//! retries. Every write resolves the active generation itself, so after the swap the live
//! runners continue on the new copy, their version guards skipping what it already has: the
//! result equals a fresh replay.
//!
//! Progress goes to a callback (the `replay` binary draws a progress bar with it) and to the
//! `rebuild` field of the projection's status document (the admin API shows it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use crate::config::FeedSettings;
use crate::domain::projection::Projection;
use crate::engine::Engine;
use crate::error::{KernelError, KernelResult};
use crate::feed::Tailer;
use crate::ports::{ApplyReport, ReadStore};
use crate::projector::ProjectionRunner;

/// How often the status document's `rebuild` field is refreshed.
const STATUS_EVERY: Duration = Duration::from_millis(500);
/// How often the progress callback runs at most.
const PROGRESS_EVERY: Duration = Duration::from_millis(100);
/// Events per read from the store at least: bigger batches fold more changes to the same
/// documents into one write (see `ReadStore::apply_projected`).
const REBUILD_BATCH: u32 = 25_000;
/// Batches read ahead of the one being decoded.
const READ_AHEAD: usize = 2;

/// Where a rebuild is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Applying events to the shadow copy (the initial pass and the catch-up).
    Running,
    /// Caught up with the head; swapping the shadow in.
    Swapping,
    Done,
    Failed,
}

/// A snapshot of a rebuild's progress.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Progress {
    pub projection: &'static str,
    pub generation: u64,
    pub phase: Phase,
    /// The last position applied to the shadow copy.
    pub position: u64,
    /// The event store's head, as last seen.
    pub target: u64,
    /// Events projected into the shadow copy (applied or parked).
    pub events: u64,
    #[serde(skip)]
    pub elapsed: Duration,
}

impl Progress {
    /// Positions per second since the start.
    pub fn rate(&self) -> f64 {
        self.position as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }

    /// Seconds until the target at the current rate.
    pub fn eta_seconds(&self) -> f64 {
        let rate = self.rate();
        if rate <= 0.0 {
            return 0.0;
        }
        self.target.saturating_sub(self.position) as f64 / rate
    }
}

/// What a finished rebuild did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub projection: &'static str,
    pub generation: u64,
    /// Events projected (applied or parked).
    pub events: u64,
    /// The shadow's position when it was swapped in.
    pub position: u64,
    pub elapsed: Duration,
    /// Swaps refused because live writers were ahead.
    pub swap_retries: u32,
}

impl Summary {
    pub fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64().max(1e-3)
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "replayed {}: {} events in {:.2} s ({:.0} events/s), up to position {}, now generation {}",
            self.projection,
            self.events,
            self.elapsed.as_secs_f64(),
            self.events_per_second(),
            self.position,
            self.generation,
        )
    }
}

/// A rebuild that holds its shadow generation and has not run yet.
pub struct Rebuild {
    engine: Engine,
    read: Arc<dyn ReadStore>,
    projection: Arc<dyn Projection>,
    feed: FeedSettings,
    generation: u64,
    started_at: chrono::DateTime<chrono::Utc>,
}

impl std::fmt::Debug for Rebuild {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuild")
            .field("projection", &self.projection.name())
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Rebuild {
    /// Starts a shadow generation (failing with a state conflict if another rebuild of the
    /// projection is running) and marks the status document.
    pub async fn begin(
        engine: Engine,
        read: Arc<dyn ReadStore>,
        projection: Arc<dyn Projection>,
        feed: FeedSettings,
    ) -> KernelResult<Rebuild> {
        let generation = read
            .begin_generation(projection.name(), projection.collections())
            .await?;
        let rebuild = Rebuild {
            engine,
            read,
            projection,
            feed,
            generation,
            started_at: chrono::Utc::now(),
        };
        let head = rebuild.engine.store().head_position().await?;
        rebuild
            .report(
                &Progress {
                    projection: rebuild.projection.name(),
                    generation,
                    phase: Phase::Running,
                    position: 0,
                    target: head,
                    events: 0,
                    elapsed: Duration::ZERO,
                },
                None,
            )
            .await;
        Ok(rebuild)
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Builds the shadow copy, catches up and swaps it in. On failure the shadow is dropped
    /// and the status document says why.
    pub async fn run(self, mut on_progress: impl FnMut(&Progress) + Send) -> KernelResult<Summary> {
        let started = Instant::now();
        match self.build(started, &mut on_progress).await {
            Ok(summary) => Ok(summary),
            Err(err) => {
                tracing::error!(projection = self.projection.name(), error = %err, "rebuild failed");
                if let Err(abandon) = self
                    .read
                    .abandon_generation(self.projection.name(), self.generation)
                    .await
                {
                    tracing::warn!(error = %abandon, "the shadow copy was not dropped");
                }
                let progress = Progress {
                    projection: self.projection.name(),
                    generation: self.generation,
                    phase: Phase::Failed,
                    position: 0,
                    target: 0,
                    events: 0,
                    elapsed: started.elapsed(),
                };
                self.report(&progress, Some(err.to_string())).await;
                Err(err)
            }
        }
    }

    async fn build(
        &self,
        started: Instant,
        on_progress: &mut (impl FnMut(&Progress) + Send),
    ) -> KernelResult<Summary> {
        let name = self.projection.name();
        let store = self.engine.store().clone();
        let runner = Arc::new(
            ProjectionRunner::new(
                self.projection.clone(),
                self.engine.clone(),
                self.read.clone(),
                self.feed.clone(),
            )
            .targeting(self.generation),
        );
        // A pipeline of three: a task reads ahead from the store, this loop decodes and
        // projects, and one apply runs in the background while the next batch is decoded.
        let mut feed = self.feed.clone();
        feed.batch_size = feed.batch_size.max(REBUILD_BATCH);
        let mut tailer = Tailer::new(store.clone(), 0, feed, self.engine.appended());
        let (sender, mut batches) = tokio::sync::mpsc::channel(READ_AHEAD);
        let reader = crate::task::AbortOnDrop(tokio::spawn(async move {
            loop {
                let batch = tailer.next_batch().await;
                let failed = batch.is_err();
                if sender.send(batch).await.is_err() || failed {
                    return;
                }
            }
        }));
        let mut progress = Progress {
            projection: name,
            generation: self.generation,
            phase: Phase::Running,
            position: 0,
            target: store.head_position().await?,
            events: 0,
            elapsed: Duration::ZERO,
        };
        // The last position handed to an apply, and the apply in flight.
        let mut received = 0u64;
        let mut applying: Option<tokio::task::JoinHandle<KernelResult<(ApplyReport, u64)>>> = None;
        let mut swap_retries = 0u32;
        let mut last_progress: Option<Instant> = None;
        let mut last_status = Instant::now();
        loop {
            let head = store.head_position().await?;
            progress.target = progress.target.max(head);
            progress.elapsed = started.elapsed();
            if last_progress.is_none_or(|at| at.elapsed() >= PROGRESS_EVERY) {
                on_progress(&progress);
                last_progress = Some(Instant::now());
            }
            if last_status.elapsed() >= STATUS_EVERY {
                self.report(&progress, None).await;
                last_status = Instant::now();
            }
            if received >= head {
                finish_apply(&mut applying, &mut progress).await?;
                // Caught up with the head seen now: try to swap.
                progress.phase = Phase::Swapping;
                if self.read.swap_generation(name, self.generation).await? {
                    break;
                }
                // Live writers applied events this copy has not seen yet: catch up again.
                swap_retries += 1;
                progress.phase = Phase::Running;
                tracing::debug!(
                    projection = name,
                    swap_retries,
                    "shadow behind the live copy"
                );
                let woken = self.engine.appended();
                let _ = tokio::time::timeout(self.feed.poll_interval, woken.notified()).await;
                continue;
            }
            let batch = batches.recv().await.ok_or_else(|| {
                KernelError::Storage("the rebuild's store reader stopped".into())
            })??;
            let Some(last) = batch.last().map(|event| event.position) else {
                continue;
            };
            received = last;
            let projected = runner.project_stored(batch).await?;
            finish_apply(&mut applying, &mut progress).await?;
            let runner = runner.clone();
            applying = Some(tokio::spawn(async move {
                Ok((runner.apply_batch(projected, last).await?, last))
            }));
        }
        drop(reader);
        progress.phase = Phase::Done;
        progress.elapsed = started.elapsed();
        on_progress(&progress);
        self.report(&progress, None).await;
        let summary = Summary {
            projection: name,
            generation: self.generation,
            events: progress.events,
            position: progress.position,
            elapsed: progress.elapsed,
            swap_retries,
        };
        tracing::info!(
            projection = name,
            generation = self.generation,
            events = summary.events,
            seconds = summary.elapsed.as_secs_f64(),
            swap_retries,
            "rebuild swapped in"
        );
        Ok(summary)
    }

    /// Writes the `rebuild` field of the status document (best effort: progress reporting
    /// never fails a rebuild).
    async fn report(&self, progress: &Progress, error: Option<String>) {
        let now = chrono::Utc::now().to_rfc3339();
        let finished = matches!(progress.phase, Phase::Done | Phase::Failed);
        let patch = json!({
            "rebuild": {
                "state": progress.phase,
                "generation": self.generation,
                "started_at": self.started_at.to_rfc3339(),
                "finished_at": finished.then(|| now.clone()),
                "heartbeat_at": now,
                "position": progress.position,
                "target": progress.target,
                "events": progress.events,
                "events_per_second": (progress.rate() * 10.0).round() / 10.0,
                "eta_seconds": (progress.eta_seconds() * 10.0).round() / 10.0,
                "error": error,
            }
        });
        if let Err(err) = self.read.merge_status(self.projection.name(), patch).await {
            tracing::debug!(error = %err, "rebuild status not reported");
        }
    }
}

/// Waits for the apply in flight, if any, and counts it in `progress`.
async fn finish_apply(
    applying: &mut Option<tokio::task::JoinHandle<KernelResult<(ApplyReport, u64)>>>,
    progress: &mut Progress,
) -> KernelResult<()> {
    if let Some(task) = applying.take() {
        let (report, last) = task
            .await
            .map_err(|err| KernelError::Storage(format!("rebuild apply task: {err}")))??;
        progress.events += report.applied + report.parked;
        progress.position = last;
    }
    Ok(())
}

/// Rebuilds one projection: [`Rebuild::begin`] then [`Rebuild::run`].
pub async fn replay(
    engine: Engine,
    read: Arc<dyn ReadStore>,
    projection: Arc<dyn Projection>,
    feed: FeedSettings,
    on_progress: impl FnMut(&Progress) + Send,
) -> KernelResult<Summary> {
    Rebuild::begin(engine, read, projection, feed)
        .await?
        .run(on_progress)
        .await
}
