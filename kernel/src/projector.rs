//! Runs projections: feeds each one the store's events in position order and applies its
//! read-model changes atomically with its checkpoint and per-aggregate versions, so a crash
//! at any moment neither loses nor doubles an effect.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::FeedSettings;
use crate::domain::projection::{Projection, SYSTEM_AGGREGATE};
use crate::engine::Engine;
use crate::envelope::RecordedEvent;
use crate::error::KernelResult;
use crate::feed::{Hub, Tailer};
use crate::ports::{EventEffect, ReadStore};

/// The aggregate key used for per-aggregate version guards.
pub fn aggregate_key(aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{aggregate_type}/{aggregate_id}")
}

/// One projection's worker.
pub struct ProjectionRunner {
    projection: Arc<dyn Projection>,
    engine: Engine,
    read: Arc<dyn ReadStore>,
    feed: FeedSettings,
    position: watch::Sender<u64>,
}

impl ProjectionRunner {
    pub fn new(
        projection: Arc<dyn Projection>,
        engine: Engine,
        read: Arc<dyn ReadStore>,
        feed: FeedSettings,
    ) -> Self {
        let (position, _) = watch::channel(0);
        Self {
            projection,
            engine,
            read,
            feed,
            position,
        }
    }

    /// Observes the projection's checkpoint (for `min_position` reads).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.position.subscribe()
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Runs until `shutdown` resolves. Failures are retried with backoff, never skipped.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(50);
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                result = self.run_once() => {
                    if let Err(err) = result {
                        tracing::error!(projection = self.projection.name(), error = %err, "projection failed; retrying");
                        metrics::counter!("quintet_projection_errors_total", "projection" => self.projection.name()).increment(1);
                        tokio::select! {
                            _ = &mut shutdown => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// Tails from the stored checkpoint until an error occurs.
    async fn run_once(&self) -> KernelResult<()> {
        let checkpoint = self.read.checkpoint(self.projection.name()).await?;
        self.position.send_replace(checkpoint);
        let mut tailer = Tailer::new(
            self.engine.store().clone(),
            checkpoint,
            self.feed.clone(),
            self.engine.appended(),
        );
        loop {
            let batch = tailer.next_batch().await?;
            let last = batch.last().map_or(checkpoint, |event| event.position);
            let mut recorded = Vec::with_capacity(batch.len());
            for stored in batch {
                if self.projection.handles(&stored.aggregate_type)
                    || stored.aggregate_type == SYSTEM_AGGREGATE
                {
                    recorded.push(self.engine.record(stored).await?);
                }
            }
            self.apply(&recorded, last).await?;
            self.position.send_replace(last);
            metrics::gauge!("quintet_projection_position", "projection" => self.projection.name())
                .set(last as f64);
        }
    }

    /// Projects a batch and applies it with the checkpoint in one read-store transaction;
    /// the store skips events an earlier (or a concurrent) run already applied.
    pub async fn apply(&self, events: &[RecordedEvent], checkpoint: u64) -> KernelResult<()> {
        let mut effects = Vec::with_capacity(events.len());
        for event in events {
            effects.push(EventEffect {
                aggregate_key: aggregate_key(&event.aggregate_type, &event.aggregate_id),
                sequence: event.sequence,
                ops: self
                    .projection
                    .project(event)
                    .map_err(crate::KernelError::storage)?,
            });
        }
        self.read
            .apply_guarded(self.projection.name(), effects, checkpoint)
            .await
    }
}

/// Tails the store from its head and publishes every decoded event to the hub.
pub async fn run_hub(
    engine: Engine,
    hub: Hub,
    feed: FeedSettings,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        let mut tailer = Tailer::new(
            engine.store().clone(),
            hub.position(),
            feed.clone(),
            engine.appended(),
        );
        let tail = async {
            loop {
                for stored in tailer.next_batch().await? {
                    let position = stored.position;
                    match engine.record(stored).await {
                        Ok(event) => hub.publish(event),
                        Err(err) => {
                            tracing::warn!(position, error = %err, "event not decodable for the stream");
                            hub.advance(position);
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = &mut shutdown => return,
            result = tail => {
                let result: KernelResult<()> = result;
                if let Err(err) = result {
                    tracing::error!(error = %err, "event stream tailer failed; restarting");
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}
