//! Runs projections: feeds each one the store's events in position order and applies its
//! read-model changes atomically with its checkpoint and per-aggregate versions, so a crash
//! at any moment neither loses nor doubles an effect.
//!
//! # Ordered parking
//!
//! An event the projection cannot apply (its `project` fails, or its payload cannot be
//! decoded) is parked in the read store, and so is every later event of the same aggregate,
//! in order, while every other aggregate keeps flowing and the checkpoint keeps moving. The
//! decision is made by [`ReadStore::apply_projected`] inside the apply, so it holds under
//! redelivery and for several appliers. [`retry_parked`] re-reads a parked aggregate's events
//! from the event store, projects them again and applies them in order: the aggregate is
//! un-parked when all succeed, and the first one that still fails stays parked (with its new
//! error) together with every later one.
//!
//! # The status document
//!
//! Each projection has one document in the read store's `_projections` collection
//! ([`crate::ports::STATUS_COLLECTION`], id = the projection name), read with [`ReadStore::status`] and
//! written with [`ReadStore::merge_status`] (top-level fields replaced whole, so writers of
//! different fields never clobber each other):
//!
//! ```json
//! {
//!   "name": "memento",
//!   "paused": false,              // admin flag (POST .../pause, .../resume)
//!   "paused_at": "2024-...Z",     // when it was paused, or null
//!   "position": 1234,             // the last checkpoint a runner or worker reported
//!   "events_per_second": 850.5,   // the recent apply rate it reported
//!   "updated_at": "2024-...Z",    // when it last reported (every second while busy, every
//!                                 // 5 s while idle)
//!   "rebuild": {                  // the last or current rebuild (see `kernel::replay`)
//!     "state": "running",         // running | swapping | done | failed
//!     "generation": 2, "started_at": "...", "finished_at": null, "heartbeat_at": "...",
//!     "position": 700, "target": 1200, "events": 650,
//!     "events_per_second": 4000.0, "eta_seconds": 0.1, "error": null
//!   }
//! }
//! ```
//!
//! Runners and workers honour `paused`: [`ProjectionRunner::apply`] re-reads the flag at
//! most every 250 ms and waits (polling every 250 ms) while it is set, so nothing is applied
//! and the checkpoint stays put. A Kafka worker that must keep polling its consumer while
//! paused can check [`ProjectionRunner::is_paused`] first. Rebuilds need nothing from
//! runners: the swap only happens once the shadow copy has seen every event the live copy
//! has, and every write resolves the active copy itself (see `ReadStore::swap_generation`).
//! Positions, lags and parked counts shown by the admin API come from the stores themselves;
//! the document only adds what a store cannot know (the rate, the flags, rebuild progress).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::config::FeedSettings;
use crate::domain::projection::{Projection, SYSTEM_AGGREGATE};
use crate::engine::Engine;
use crate::envelope::{RecordedEvent, StoredEvent};
use crate::error::{KernelError, KernelResult};
use crate::feed::{Hub, Tailer};
use crate::ports::{
    generation_key, ApplyReport, DocOp, ProjectedEvent, ReadCache, ReadStore, RetryReport,
};

/// How often the pause flag is re-read.
pub const PAUSE_POLL: Duration = Duration::from_millis(250);
/// How often a busy runner reports its rate; an idle one reports every 5 of these.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// The aggregate key used for per-aggregate version guards.
pub fn aggregate_key(aggregate_type: &str, aggregate_id: &str) -> String {
    format!("{aggregate_type}/{aggregate_id}")
}

/// Projects one event: its ops, or the projection's error.
pub fn project_event(projection: &dyn Projection, event: RecordedEvent) -> ProjectedEvent {
    let outcome = projection.project(&event).map_err(|err| err.to_string());
    ProjectedEvent {
        aggregate_key: aggregate_key(&event.aggregate_type, &event.aggregate_id),
        sequence: event.sequence,
        position: event.position,
        event_id: event.event_id.to_string(),
        outcome,
        envelope: event.into_envelope().into(),
    }
}

/// An event whose payload cannot be decoded: parked with the decoding error.
fn undecodable(stored: StoredEvent, error: &KernelError) -> ProjectedEvent {
    ProjectedEvent {
        aggregate_key: aggregate_key(&stored.aggregate_type, &stored.aggregate_id),
        sequence: stored.sequence,
        position: stored.position,
        event_id: stored.event_id.to_string(),
        outcome: Err(format!("cannot decode the event: {error}")),
        envelope: stored.into_envelope().into(),
    }
}

/// Decodes a stored event for a projection. A payload that can never be decoded (corrupt,
/// undecryptable, not upcastable) becomes an event to park; a backend failure is an error.
pub async fn decode_for(
    engine: &Engine,
    projection: &dyn Projection,
    stored: StoredEvent,
) -> KernelResult<ProjectedEvent> {
    match engine.record_or_keep(stored).await {
        Ok(event) => Ok(project_event(projection, event)),
        Err((err @ KernelError::Storage(_), _)) => Err(err),
        Err((err, stored)) => {
            tracing::warn!(
                projection = projection.name(),
                position = stored.position,
                error = %err,
                "event cannot be decoded; parking it"
            );
            Ok(undecodable(stored, &err))
        }
    }
}

/// The pause flag as last read, and when.
struct PauseCache {
    paused: bool,
    checked: Option<Instant>,
}

/// One projection's worker.
pub struct ProjectionRunner {
    projection: Arc<dyn Projection>,
    engine: Engine,
    read: Arc<dyn ReadStore>,
    feed: FeedSettings,
    position: watch::Sender<u64>,
    /// `name` (the active generation) or `name#N` (a shadow copy being rebuilt).
    target: String,
    pause: Mutex<PauseCache>,
    /// Events applied (or parked) since start, for the rate.
    processed: AtomicU64,
    /// The read cache whose entries this projection's changes invalidate.
    cache: Option<Arc<dyn ReadCache>>,
}

impl ProjectionRunner {
    pub fn new(
        projection: Arc<dyn Projection>,
        engine: Engine,
        read: Arc<dyn ReadStore>,
        feed: FeedSettings,
    ) -> Self {
        let (position, _) = watch::channel(0);
        let target = projection.name().to_string();
        Self {
            projection,
            engine,
            read,
            feed,
            position,
            target,
            pause: Mutex::new(PauseCache {
                paused: false,
                checked: None,
            }),
            processed: AtomicU64::new(0),
            cache: None,
        }
    }

    /// Invalidates the read-cache entries of the documents each applied batch changes.
    pub fn with_cache(mut self, cache: Arc<dyn ReadCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    /// Makes the runner build one generation of the projection (a shadow copy) instead of
    /// the active one. It then ignores the pause flag, which is about the live copy.
    pub fn targeting(mut self, generation: u64) -> Self {
        self.target = generation_key(self.projection.name(), generation);
        self
    }

    /// Observes the projection's checkpoint (for `min_position` reads).
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.position.subscribe()
    }

    pub fn name(&self) -> &'static str {
        self.projection.name()
    }

    fn live(&self) -> bool {
        self.target == self.projection.name()
    }

    /// Whether the projection is paused (the flag re-read at most every 250 ms).
    pub async fn is_paused(&self) -> KernelResult<bool> {
        if !self.live() {
            return Ok(false);
        }
        {
            let cache = self.pause.lock();
            if cache.checked.is_some_and(|at| at.elapsed() < PAUSE_POLL) {
                return Ok(cache.paused);
            }
        }
        let paused = self
            .read
            .status(self.projection.name())
            .await?
            .and_then(|doc| doc.get("paused").and_then(Value::as_bool))
            .unwrap_or(false);
        *self.pause.lock() = PauseCache {
            paused,
            checked: Some(Instant::now()),
        };
        Ok(paused)
    }

    /// Waits while the projection is paused.
    async fn wait_until_running(&self) -> KernelResult<()> {
        let mut logged = false;
        while self.is_paused().await? {
            if !logged {
                tracing::info!(projection = self.name(), "projection paused");
                logged = true;
            }
            tokio::time::sleep(PAUSE_POLL).await;
        }
        if logged {
            tracing::info!(projection = self.name(), "projection resumed");
        }
        Ok(())
    }

    /// Runs until `shutdown` resolves. Failures are retried with backoff, never skipped.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let work = async {
            let mut backoff = Duration::from_millis(50);
            loop {
                if let Err(err) = self.run_once().await {
                    tracing::error!(projection = self.projection.name(), error = %err, "projection failed; retrying");
                    metrics::counter!("quintet_projection_errors_total", "projection" => self.projection.name()).increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        tokio::select! {
            _ = &mut shutdown => {}
            _ = work => {}
            _ = self.report() => {}
        }
    }

    /// Reports the runner's rate and position to the status document and its lag, rate and
    /// parked count as metrics, until dropped. Runs inside [`run`](Self::run); a worker that
    /// calls [`apply`](Self::apply) itself can run it alongside.
    pub async fn report(&self) {
        if !self.live() {
            return std::future::pending().await;
        }
        let name = self.projection.name();
        let mut last_count = self.processed.load(Ordering::Relaxed);
        let mut last_at = Instant::now();
        let mut rate = 0.0_f64;
        let mut idle_ticks = 0u32;
        loop {
            tokio::time::sleep(REPORT_EVERY).await;
            let count = self.processed.load(Ordering::Relaxed);
            let elapsed = last_at.elapsed().as_secs_f64().max(1e-3);
            let current = (count - last_count) as f64 / elapsed;
            // Smoothed, so one slow second does not make the rate jump.
            rate = if rate == 0.0 {
                current
            } else {
                0.5 * rate + 0.5 * current
            };
            if rate < 0.01 {
                rate = 0.0;
            }
            let busy = count != last_count;
            last_count = count;
            last_at = Instant::now();
            idle_ticks += 1;
            if !busy && idle_ticks < 5 && rate == 0.0 {
                continue;
            }
            idle_ticks = 0;
            match self.lag().await {
                Ok(lag) => {
                    metrics::gauge!("quintet_projection_lag_events", "projection" => name)
                        .set(lag.events as f64);
                    metrics::gauge!("quintet_projection_lag_seconds", "projection" => name)
                        .set(lag.seconds);
                    metrics::gauge!("quintet_projection_parked", "projection" => name)
                        .set(lag.parked as f64);
                }
                Err(err) => tracing::debug!(projection = name, error = %err, "lag not measured"),
            }
            metrics::gauge!("quintet_projection_events_per_second", "projection" => name).set(rate);
            let patch = json!({
                "position": *self.position.borrow(),
                "events_per_second": (rate * 10.0).round() / 10.0,
                "updated_at": chrono::Utc::now().to_rfc3339(),
            });
            if let Err(err) = self.read.merge_status(name, patch).await {
                tracing::debug!(projection = name, error = %err, "status not reported");
            }
        }
    }

    async fn lag(&self) -> KernelResult<Lag> {
        lag_of(&self.engine, &*self.read, self.projection.name()).await
    }

    /// Tails from the stored checkpoint until an error occurs.
    async fn run_once(&self) -> KernelResult<()> {
        let checkpoint = self.read.checkpoint(&self.target).await?;
        self.position.send_replace(checkpoint);
        let mut tailer = Tailer::new(
            self.engine.store().clone(),
            checkpoint,
            self.feed.clone(),
            self.engine.appended(),
        );
        loop {
            let batch = tailer.next_batch().await?;
            self.apply_stored(batch).await?;
        }
    }

    /// Decodes, projects and applies a batch read from the event store (the events of other
    /// aggregate types only move the checkpoint).
    pub async fn apply_stored(&self, batch: Vec<StoredEvent>) -> KernelResult<ApplyReport> {
        let Some(last) = batch.last().map(|event| event.position) else {
            return Ok(ApplyReport::default());
        };
        let projected = self.project_stored(batch).await?;
        self.apply_batch(projected, last).await
    }

    /// Decodes and projects the events of a batch read from the event store that this
    /// projection handles (the first half of [`apply_stored`](Self::apply_stored)).
    pub async fn project_stored(
        &self,
        batch: Vec<StoredEvent>,
    ) -> KernelResult<Vec<ProjectedEvent>> {
        let mut projected = Vec::with_capacity(batch.len());
        for stored in batch {
            if self.projection.handles(&stored.aggregate_type)
                || stored.aggregate_type == SYSTEM_AGGREGATE
            {
                projected.push(decode_for(&self.engine, &*self.projection, stored).await?);
            }
        }
        Ok(projected)
    }

    /// Applies projected events with the checkpoint `last` (the second half of
    /// [`apply_stored`](Self::apply_stored)), then publishes the position and drops the read
    /// cache's copies of what changed.
    pub async fn apply_batch(
        &self,
        projected: Vec<ProjectedEvent>,
        last: u64,
    ) -> KernelResult<ApplyReport> {
        // A shadow copy being rebuilt has nothing in the cache.
        let cache = self.cache.as_ref().filter(|_| self.live());
        let touched = cache.map(|_| Touched::of(&projected));
        let report = self.apply_projected(projected, last).await?;
        // The checkpoint moves before the invalidation: see `read_api::cache`.
        self.position.send_replace(last);
        if let (Some(cache), Some(touched)) = (cache, touched) {
            touched.invalidate(&**cache).await;
        }
        metrics::gauge!("quintet_projection_position", "projection" => self.projection.name())
            .set(last as f64);
        Ok(report)
    }

    /// Projects a batch and applies it with the checkpoint in one read-store transaction;
    /// the store skips events an earlier (or a concurrent) run already applied, and parks the
    /// ones that fail together with every later event of their aggregate. Waits while the
    /// projection is paused.
    pub async fn apply(&self, events: &[RecordedEvent], checkpoint: u64) -> KernelResult<()> {
        let projected = events
            .iter()
            .map(|event| project_event(&*self.projection, event.clone()))
            .collect();
        self.apply_projected(projected, checkpoint)
            .await
            .map(|_| ())
    }

    async fn apply_projected(
        &self,
        projected: Vec<ProjectedEvent>,
        checkpoint: u64,
    ) -> KernelResult<ApplyReport> {
        self.wait_until_running().await?;
        let count = projected.len() as u64;
        let report = self
            .read
            .apply_projected(&self.target, projected, checkpoint)
            .await?;
        self.processed.fetch_add(count, Ordering::Relaxed);
        if report.parked > 0 {
            tracing::warn!(
                projection = self.projection.name(),
                parked = report.parked,
                "events parked"
            );
            metrics::counter!("quintet_projection_parked_total", "projection" => self.projection.name())
                .increment(report.parked);
        }
        Ok(report)
    }
}

/// What a batch of projected events changes, as read-cache keys (`collection/id`), and the
/// collections changed by filter (whose entries are all dropped).
#[derive(Debug, Default)]
pub struct Touched {
    keys: std::collections::HashSet<String>,
    collections: std::collections::HashSet<String>,
}

impl Touched {
    pub fn of(projected: &[ProjectedEvent]) -> Self {
        let mut touched = Touched::default();
        for ops in projected
            .iter()
            .filter_map(|event| event.outcome.as_ref().ok())
        {
            for op in ops {
                match op {
                    DocOp::Upsert { collection, id, .. }
                    | DocOp::InsertIfAbsent { collection, id, .. }
                    | DocOp::Merge { collection, id, .. }
                    | DocOp::Increment { collection, id, .. }
                    | DocOp::Delete { collection, id } => {
                        touched.keys.insert(format!("{collection}/{id}"));
                    }
                    DocOp::DeleteWhere { collection, .. }
                    | DocOp::TombstoneWhere { collection, .. } => {
                        touched.collections.insert(collection.clone());
                    }
                }
            }
        }
        touched
    }

    /// Everything a projection owns (after a rebuild swapped in a new copy).
    pub fn all_of(projection: &dyn Projection) -> Self {
        Touched {
            keys: Default::default(),
            collections: projection
                .collections()
                .iter()
                .map(|collection| collection.to_string())
                .collect(),
        }
    }

    /// Drops the entries; a cache that fails only costs a warning (entries expire anyway).
    pub async fn invalidate(&self, cache: &dyn ReadCache) {
        for key in &self.keys {
            if let Err(err) = cache.invalidate(key).await {
                tracing::warn!(error = %err, "read cache invalidation failed");
                return;
            }
        }
        for collection in &self.collections {
            if let Err(err) = cache.invalidate_prefix(&format!("{collection}/")).await {
                tracing::warn!(error = %err, "read cache invalidation failed");
                return;
            }
        }
    }
}

/// How far a projection is behind the event store.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lag {
    /// The projection's checkpoint.
    pub position: u64,
    /// The event store's head.
    pub head: u64,
    /// `head - position`.
    pub events: u64,
    /// Age of the oldest event not applied yet; 0 when caught up.
    pub seconds: f64,
    pub parked: u64,
}

/// Measures a projection's lag from the stores.
pub async fn lag_of(engine: &Engine, read: &dyn ReadStore, projection: &str) -> KernelResult<Lag> {
    let position = read.checkpoint(projection).await?;
    let head = engine.store().head_position().await?;
    let events = head.saturating_sub(position);
    let seconds = if events == 0 {
        0.0
    } else {
        match engine.store().read_all(position, 1).await?.first() {
            Some(oldest) => {
                let age = chrono::Utc::now().signed_duration_since(oldest.recorded_at);
                (age.num_milliseconds().max(0) as f64) / 1000.0
            }
            None => 0.0,
        }
    };
    let parked = read.parked(projection, 1, 0).await?.total;
    Ok(Lag {
        position,
        head,
        events,
        seconds,
        parked,
    })
}

/// Retries the parked events of the aggregate that parked event `id` belongs to: re-reads
/// them from the event store, projects them again and applies them in order (see
/// [`ReadStore::retry_parked`]). Events parked behind them while this runs are retried too,
/// up to a few rounds. `Ok(None)` if no parked event has that id.
pub async fn retry_parked(
    engine: &Engine,
    read: &dyn ReadStore,
    projection: &dyn Projection,
    id: &str,
) -> KernelResult<Option<RetryReport>> {
    let name = projection.name();
    let Some(parked) = read.parked_by_id(name, id).await? else {
        return Ok(None);
    };
    let key = parked.aggregate_key;
    let Some((aggregate_type, aggregate_id)) = key.split_once('/') else {
        return Err(KernelError::Storage(format!(
            "parked aggregate key `{key}` is not type/id"
        )));
    };
    let mut total = RetryReport::default();
    for _round in 0..3 {
        let entries = read.parked_of(name, &key).await?;
        let Some(first) = entries.first() else {
            break;
        };
        let mut stream = engine
            .store()
            .load_stream(
                aggregate_type,
                aggregate_id,
                first.sequence.saturating_sub(1),
            )
            .await?
            .into_iter();
        let mut events = Vec::with_capacity(entries.len());
        for entry in &entries {
            let stored = stream.find(|event| event.sequence == entry.sequence);
            events.push(match stored {
                Some(stored) => decode_for(engine, projection, stored).await?,
                None => ProjectedEvent {
                    aggregate_key: key.clone(),
                    sequence: entry.sequence,
                    position: entry.position,
                    event_id: entry.id.clone(),
                    outcome: Err("the event is not in the event store".to_string()),
                    envelope: entry.envelope.clone().into(),
                },
            });
        }
        let given = events.len() as u64;
        let report = read.retry_parked(name, events).await?;
        total.applied += report.applied;
        total.still_parked = report.still_parked;
        // Stop at a failure, or when nothing new was parked behind the ones retried.
        if report.still_parked == 0 || report.applied < given {
            break;
        }
    }
    tracing::info!(
        projection = name,
        aggregate = %key,
        applied = total.applied,
        still_parked = total.still_parked,
        "retried parked events"
    );
    Ok(Some(total))
}

/// Sets or clears a projection's pause flag.
pub async fn set_paused(read: &dyn ReadStore, projection: &str, paused: bool) -> KernelResult<()> {
    let paused_at = paused.then(|| chrono::Utc::now().to_rfc3339());
    read.merge_status(
        projection,
        json!({ "paused": paused, "paused_at": paused_at }),
    )
    .await
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
