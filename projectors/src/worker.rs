//! The `projector` worker: consumes the relay's Kafka topics and builds read models, one
//! consumer group per projection (`{prefix}projection-{name}`), so projections scale out by
//! starting more processes.
//!
//! Per batch of messages (up to five thousand, or what arrived within a few milliseconds):
//! 1. admission: the read store, not the broker, says where each partition stands (the next
//!    offset applied, kept beside its watermark); a message past that point means the broker
//!    skipped offsets, and the partition is sought back (see [`Worker`]'s `admit`);
//! 2. events of aggregates the projection handles are decoded (the engine holds the data keys)
//!    and applied in one read-store transaction with per-aggregate version guards, so a
//!    redelivered or duplicated message changes nothing; a failing event parks itself and the
//!    rest of its aggregate (`ReadStore::apply_projected`);
//! 3. then, in a second transaction (a crash in between only redelivers), each touched
//!    partition's `_watermarks` document (id `{projection}/{topic}/{partition}`: the highest
//!    marker applied and the next offset) and the checkpoint: the lowest watermark over every
//!    partition of the projection's topics (0 while one has none). So `ReadStore::checkpoint`
//!    means "every event up to here is applied", as with the embedded feed; the workers write
//!    it and read-api only reads it;
//! 4. only then are the batch's offsets stored for the next commit.
//!
//! Steps 1 and 2's decoding (the intake) and the rest (the applier) form a pipeline: the next
//! batch is decoded while one is applied, and batches are applied in the order received.
//!
//! A watchdog rejoins the group when a partition is left without a consumer (see
//! `Watchdog`). SIGTERM: the in-flight batch finishes, offsets are committed and the consumer
//! leaves its group. Metrics (`/metrics` on `projector.metrics_host:metrics_port`, labelled by
//! projection): `quintet_projection_lag_events`, `quintet_projection_lag_seconds`,
//! `quintet_projection_events_per_second`, `quintet_projection_parked`,
//! `quintet_projection_position`, plus `quintet_projector_*` counters; the position and rate
//! also go to the projection's status document for the admin API.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kernel::adapters::kafka::{self, EventConsumer, Incoming};
use kernel::config::{KafkaSettings, Settings};
use kernel::domain::projection::{Projection, SYSTEM_AGGREGATE};
use kernel::engine::Engine;
use kernel::ports::{DocOp, DocQuery, ProjectedEvent, ReadCache, ReadStore};
use kernel::projector::{decode_for, ProjectionRunner, Touched, PAUSE_POLL};
use kernel::relay::{RelayCheckpoints, DEFAULT_RELAY};
use kernel::{KernelError, KernelResult};
use serde_json::json;
use web::server::Shutdown;

/// Where per-partition watermarks live in the read store.
pub const WATERMARKS: &str = "_watermarks";
/// Messages per batch at most: a backlog is applied in large batches (fewer commits, and
/// more changes to one document folded into one write).
const MAX_BATCH: usize = 5000;
/// How long a batch waits for more messages after its first one: short, as the event and
/// the marker that moves the checkpoint arrive together (see `kernel::relay`).
const LINGER: Duration = Duration::from_millis(2);
/// How often lag, rate and parked count are refreshed.
const STATS_INTERVAL: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("unknown projection `{0}` (known: {1})")]
    UnknownProjection(String, String),
    #[error("name a projection with --projection NAME, or use --all")]
    NoProjection,
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error("metrics server: {0}")]
    Io(#[from] std::io::Error),
}

/// The projections a process runs: `--all`, or the named ones.
pub fn select(names: &[String], all: bool) -> Result<Vec<Arc<dyn Projection>>, WorkerError> {
    if all {
        return Ok(crate::all());
    }
    if names.is_empty() {
        return Err(WorkerError::NoProjection);
    }
    names
        .iter()
        .map(|name| {
            crate::by_name(name).ok_or_else(|| {
                let known: Vec<&str> = crate::all().iter().map(|p| p.name()).collect();
                WorkerError::UnknownProjection(name.clone(), known.join(", "))
            })
        })
        .collect()
}

/// Runs the worker of each projection and the metrics server on `metrics` until `shutdown`.
pub async fn run(
    settings: Settings,
    projections: Vec<Arc<dyn Projection>>,
    metrics: TcpListener,
    shutdown: Shutdown,
) -> Result<(), WorkerError> {
    web::ops::metrics_handle();
    // The stores may be starting too, and two workers starting at once race on the read
    // store's migrations: retry until connected (or told to stop).
    let Some(backends) = retry("event store", &shutdown, || {
        kernel::wiring::connect_write_side(&settings)
    })
    .await
    else {
        return Ok(());
    };
    let Some(read) = retry("read store", &shutdown, || {
        kernel::wiring::connect_read_store(&settings)
    })
    .await
    else {
        return Ok(());
    };
    // The read cache the read API fills: what this projector changes is dropped from it.
    // Only a shared (Redis) cache: an in-process one here is one no reader ever sees.
    let cache = if settings.cache.backend == kernel::config::MemoryOrRedis::Redis {
        let Some(cache) = retry("read cache", &shutdown, || {
            kernel::wiring::connect_read_cache(&settings)
        })
        .await
        else {
            return Ok(());
        };
        Some(cache)
    } else {
        None
    };
    // Where the relay stands: what the watermarks must eventually reach (see `Watchdog`).
    let Some(relay) = retry("relay position store", &shutdown, || {
        kernel::relay::connect_checkpoints(&settings)
    })
    .await
    else {
        return Ok(());
    };
    tracing::info!(
        projections = ?projections.iter().map(|p| p.name()).collect::<Vec<_>>(),
        metrics = %metrics.local_addr()?,
        "projector starting"
    );
    let server = tokio::spawn(web::server::run(
        metrics,
        metrics_app(),
        shutdown.clone().wait(),
    ));
    let mut tasks = Vec::new();
    for projection in projections {
        let mut worker = Worker::new(
            projection,
            backends.engine.clone(),
            read.clone(),
            relay.clone(),
            settings.kafka.clone(),
        );
        if let Some(cache) = &cache {
            worker = worker.with_cache(cache.clone());
        }
        tasks.push(tokio::spawn(worker.run(shutdown.clone())));
    }
    for task in tasks {
        if let Err(err) = task.await {
            tracing::error!(error = %err, "a projection worker panicked");
        }
    }
    match server.await {
        Ok(result) => result?,
        Err(err) => tracing::error!(error = %err, "the metrics server panicked"),
    }
    tracing::info!("projector stopped");
    Ok(())
}

/// Calls `connect` until it succeeds, with a backoff; `None` if `shutdown` came first.
async fn retry<T, F, Fut>(what: &str, shutdown: &Shutdown, mut connect: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = KernelResult<T>>,
{
    let mut backoff = Duration::from_millis(100);
    loop {
        match connect().await {
            Ok(value) => return Some(value),
            Err(err) => {
                tracing::warn!(error = %err, ?backoff, "cannot connect the {what}; retrying");
            }
        }
        tokio::select! {
            _ = shutdown.clone().wait() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// `/health` and `/metrics`.
fn metrics_app() -> impl poem::Endpoint {
    poem::Route::new()
        .at("/health", poem::get(web::ops::health))
        .at("/metrics", poem::get(web::ops::prometheus))
}

/// How often a consumer checks for orphaned partitions.
const WATCHDOG_EVERY: Duration = Duration::from_secs(1);
/// A partition whose watermark stands still this long while another one moves is orphaned.
/// Well above the consumer session timeout (6 s), so a dead owner's partitions first get their
/// chance to move to a live member the normal way.
const ORPHAN_AFTER: Duration = Duration::from_secs(10);

/// Orphaned-partition detection. A group coordinator must hand a dead member's partitions to
/// the others once its session expires; tansu 0.6 evicts the member but keeps the group's
/// generation, and then answers the leader's new assignment with the old one, so the dead
/// member's partitions stay unowned forever (a worker may even be left with none at all).
/// Every marker reaches every partition, so a partition whose watermark stands still below
/// what another partition or the relay (its stored position) reached has nobody consuming it,
/// or a stuck owner: the worker then leaves the group and joins again as a new member, which
/// makes the coordinator start a new generation and assign every partition afresh. A needless
/// rejoin costs a rebalance, never an effect (offsets and version guards).
#[derive(Default)]
struct Watchdog {
    /// Per partition: the watermark last seen, and since when it has not moved.
    seen: BTreeMap<(String, i32), (u64, Instant)>,
}

/// Drops the entries now and once more a moment later: the checkpoint here moves with the
/// watermarks, not with each apply, so a reader that read a document just before the apply
/// and caches it just after the first invalidation is caught by the second.
fn invalidate_twice(cache: Arc<dyn ReadCache>, touched: Touched) {
    tokio::spawn(async move {
        touched.invalidate(&*cache).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        touched.invalidate(&*cache).await;
    });
}

/// A batch decoded by the intake, for the applier.
struct Decoded {
    batch: Vec<Incoming>,
    projected: Vec<ProjectedEvent>,
}

/// Per consumer: the next offset of each partition this worker expects (what it admitted, or
/// what the read store says was applied).
#[derive(Default)]
struct Offsets {
    expected: std::collections::HashMap<(String, i32), i64>,
}

/// Counters a worker shares with its stats task.
#[derive(Default)]
struct Counters {
    /// Events applied (or parked) by this worker.
    events: AtomicU64,
}

/// One projection's consumer.
pub struct Worker {
    projection: Arc<dyn Projection>,
    engine: Engine,
    read: Arc<dyn ReadStore>,
    relay: Arc<dyn RelayCheckpoints>,
    kafka: KafkaSettings,
    topics: Vec<String>,
    runner: ProjectionRunner,
    counters: Arc<Counters>,
    cache: Option<Arc<dyn ReadCache>>,
}

impl Worker {
    pub fn new(
        projection: Arc<dyn Projection>,
        engine: Engine,
        read: Arc<dyn ReadStore>,
        relay: Arc<dyn RelayCheckpoints>,
        kafka: KafkaSettings,
    ) -> Self {
        let topics = kafka::projection_topics(&kafka.topic_prefix, &*projection);
        // The runner is only asked for the pause flag (cached, re-read every 250 ms); its
        // feed settings are never used here.
        let feed = kernel::config::FeedSettings {
            backend: kernel::config::FeedBackend::Kafka,
            poll_interval: Duration::from_millis(50),
            batch_size: 500,
            gap_min_wait: Duration::from_millis(50),
            gap_max_wait: Duration::from_secs(30),
        };
        let runner = ProjectionRunner::new(projection.clone(), engine.clone(), read.clone(), feed);
        Self {
            projection,
            engine,
            read,
            relay,
            kafka,
            topics,
            runner,
            counters: Arc::default(),
            cache: None,
        }
    }

    /// Invalidates the read-cache entries of the documents each applied batch changes.
    pub fn with_cache(mut self, cache: Arc<dyn ReadCache>) -> Self {
        self.cache = Some(cache);
        self
    }

    fn name(&self) -> &'static str {
        self.projection.name()
    }

    /// Consumes until `shutdown`; failures start over (from the committed offsets) after a
    /// backoff.
    pub async fn run(self, shutdown: Shutdown) {
        let stats = tokio::spawn(stats_loop(
            self.projection.name(),
            self.engine.clone(),
            self.read.clone(),
            self.counters.clone(),
            shutdown.clone(),
        ));
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            match self.run_once(&shutdown).await {
                Ok(()) => break,
                Err(err) => {
                    tracing::warn!(projection = self.name(), error = %err, ?backoff, "projector failed; restarting its consumer");
                    metrics::counter!("quintet_projector_failures_total", "projection" => self.name())
                        .increment(1);
                }
            }
            if started.elapsed() > MAX_BACKOFF * 2 {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                _ = shutdown.clone().wait() => break,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        let _ = stats.await;
    }

    /// One consumer's life: subscribe, then batch after batch until shutdown (Ok) or a
    /// failure (Err). The consumer leaves its group either way.
    async fn run_once(&self, shutdown: &Shutdown) -> KernelResult<()> {
        // The relay creates the topics too; whoever starts first does it.
        kafka::ensure_topics(&self.kafka, &self.topics).await?;
        let partitions = kafka::partition_counts(&self.kafka, &self.topics).await?;
        let group = kafka::consumer_group(&self.kafka.topic_prefix, self.name());
        let consumer = EventConsumer::subscribe(&self.kafka, &group, &self.topics)?;
        tracing::info!(projection = self.name(), %group, topics = ?self.topics, "projector consuming");
        let outcome = self.consume(&consumer, &partitions, shutdown).await;
        consumer.close().await;
        outcome
    }

    /// Two stages joined in this task: the intake receives, admits and decodes batches
    /// (decoding runs in a task of its own), and the applier applies them in order, so one
    /// batch is decoded while the one before it is applied. At most one decoded batch waits.
    async fn consume(
        &self,
        consumer: &EventConsumer,
        partitions: &BTreeMap<String, i32>,
        shutdown: &Shutdown,
    ) -> KernelResult<()> {
        let (decoded, to_apply) = tokio::sync::mpsc::channel(1);
        let (intake, applier) = tokio::join!(
            self.intake(consumer, partitions, shutdown, decoded),
            self.applier(consumer, partitions, shutdown, to_apply),
        );
        intake.and(applier)
    }

    /// The first stage: batches in, admitted (see `admit`), held while paused, decoded and
    /// projected. Returns when shut down, or with the error that makes the consumer rejoin.
    async fn intake(
        &self,
        consumer: &EventConsumer,
        partitions: &BTreeMap<String, i32>,
        shutdown: &Shutdown,
        decoded: tokio::sync::mpsc::Sender<Decoded>,
    ) -> KernelResult<()> {
        let mut watchdog = Watchdog::default();
        let mut offsets = Offsets::default();
        let mut tick = tokio::time::interval(WATCHDOG_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let first = tokio::select! {
                biased;
                _ = shutdown.clone().wait() => return Ok(()),
                first = consumer.next() => first?,
                _ = tick.tick() => {
                    match self.check_orphans(&mut watchdog, partitions).await {
                        Ok(None) => {}
                        Ok(Some(orphaned)) => return Err(KernelError::Storage(orphaned)),
                        Err(err) => {
                            tracing::debug!(projection = self.name(), error = %err, "orphan check skipped");
                        }
                    }
                    continue;
                }
            };
            let mut batch = vec![first];
            consumer.fill(&mut batch, MAX_BATCH, LINGER).await?;
            let batch = self.admit(consumer, batch, &mut offsets).await?;
            if batch.is_empty() {
                continue;
            }
            // Paused (admin API): hold the batch until resumed; its offsets are not stored.
            loop {
                match self.runner.is_paused().await {
                    Ok(false) => break,
                    Ok(true) => {}
                    Err(err) => {
                        tracing::debug!(projection = self.name(), error = %err, "pause flag not read")
                    }
                }
                tokio::select! {
                    _ = shutdown.clone().wait() => return Ok(()),
                    _ = tokio::time::sleep(PAUSE_POLL) => {}
                }
            }
            let Some(projected) = self.retrying(shutdown, || self.decode(&batch)).await else {
                return Ok(());
            };
            if decoded.send(Decoded { batch, projected }).await.is_err() {
                // The applier stopped: shutting down.
                return Ok(());
            }
        }
    }

    /// The second stage: applies decoded batches in order, then stores their offsets. The
    /// batch in flight finishes on shutdown; what is still queued is left for redelivery.
    async fn applier(
        &self,
        consumer: &EventConsumer,
        partitions: &BTreeMap<String, i32>,
        shutdown: &Shutdown,
        mut to_apply: tokio::sync::mpsc::Receiver<Decoded>,
    ) -> KernelResult<()> {
        while let Some(Decoded { batch, projected }) = to_apply.recv().await {
            // A failed apply decodes the batch again for the next attempt (the projected events
            // went into it).
            let mut projected = Some(projected);
            let applied = self
                .retrying(shutdown, || {
                    let first = projected.take();
                    let batch = &batch;
                    async move {
                        let projected = match first {
                            Some(projected) => projected,
                            None => self.decode(batch).await?,
                        };
                        self.apply(batch, projected, partitions).await
                    }
                })
                .await;
            if applied.is_none() {
                // Stopping without storing the offsets: the batch comes again.
                return Ok(());
            }
            consumer.store_offsets(&batch)?;
        }
        Ok(())
    }

    /// Runs `attempt` until it succeeds, backing off after each failure; `None` if shut down
    /// first.
    async fn retrying<T, F, Fut>(&self, shutdown: &Shutdown, mut attempt: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = KernelResult<T>>,
    {
        let mut backoff = Duration::from_millis(50);
        loop {
            match attempt().await {
                Ok(value) => return Some(value),
                Err(err) => {
                    tracing::warn!(projection = self.name(), error = %err, "batch failed; retrying");
                    metrics::counter!("quintet_projector_failures_total", "projection" => self.name())
                        .increment(1);
                    tokio::select! {
                        _ = shutdown.clone().wait() => return None,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Lets through the messages that follow what this projection applied of their partition.
    /// The read store, not the broker, says where a partition stands: a message past that point
    /// means offsets were skipped (tansu 0.6 skips the rest of a record batch when a consumer
    /// resumes inside it, see `kafka::MAX_RECORDS_PER_BATCH`), so the partition is sought back
    /// before the first offset not applied and the rest of it in this batch dropped; unless
    /// retention already removed them. Messages below that point are redeliveries; they go
    /// through (the version guards skip them).
    async fn admit(
        &self,
        consumer: &EventConsumer,
        batch: Vec<Incoming>,
        offsets: &mut Offsets,
    ) -> KernelResult<Vec<Incoming>> {
        let mut admitted = Vec::with_capacity(batch.len());
        let mut blocked: Vec<(String, i32)> = Vec::new();
        for item in batch {
            let key = (item.topic().to_string(), item.partition());
            if blocked.contains(&key) {
                continue;
            }
            let mut expected = match offsets.expected.get(&key) {
                Some(expected) => *expected,
                None => self.stored_next_offset(&key).await?,
            };
            if item.offset() > expected {
                // Another member of the group may have applied more since we looked.
                expected = expected.max(self.stored_next_offset(&key).await?);
            }
            if item.offset() > expected {
                let start = kafka::log_start(&self.kafka, &key.0, key.1).await?;
                if start > expected {
                    // Retention removed them before this projection got there.
                    tracing::error!(
                        projection = self.name(),
                        topic = key.0,
                        partition = key.1,
                        from = expected,
                        to = start,
                        "offsets were removed from the partition before they were applied"
                    );
                } else {
                    tracing::warn!(
                        projection = self.name(),
                        topic = key.0,
                        partition = key.1,
                        delivered = item.offset(),
                        applied_up_to = expected,
                        "the consumer skipped offsets this projection never applied; seeking back"
                    );
                    metrics::counter!("quintet_projector_offset_gaps_total", "projection" => self.name())
                        .increment(1);
                    // From before the start of the record batch holding `expected` (see
                    // `MAX_RECORDS_PER_BATCH`); what comes before it again is skipped by the
                    // version guards.
                    let target = (expected - kafka::MAX_RECORDS_PER_BATCH).max(start);
                    consumer.seek(&key.0, key.1, target)?;
                    offsets.expected.insert(key.clone(), expected);
                    blocked.push(key);
                    continue;
                }
            }
            offsets
                .expected
                .insert(key, expected.max(item.offset() + 1));
            admitted.push(item);
        }
        Ok(admitted)
    }

    /// The first offset of a partition this projection has not applied (0 if none).
    async fn stored_next_offset(&self, key: &(String, i32)) -> KernelResult<i64> {
        let doc = self
            .read
            .get(WATERMARKS, &watermark_id(self.name(), &key.0, key.1))
            .await?;
        Ok(doc.and_then(|doc| doc["next_offset"].as_i64()).unwrap_or(0))
    }

    /// Why the consumer must leave the group and join again, if a partition of the
    /// projection's topics made no progress for [`ORPHAN_AFTER`] while it is behind another
    /// partition or the relay. See [`Watchdog`].
    async fn check_orphans(
        &self,
        watchdog: &mut Watchdog,
        partitions: &BTreeMap<String, i32>,
    ) -> KernelResult<Option<String>> {
        if self.runner.is_paused().await? {
            // Paused workers stand still on purpose.
            watchdog.seen.clear();
            return Ok(None);
        }
        let known = self.watermarks().await?;
        let now = Instant::now();
        let positions: Vec<((String, i32), u64)> = partitions
            .iter()
            .flat_map(|(topic, count)| (0..*count).map(move |p| (topic.clone(), p)))
            .map(|key| {
                let position = known.get(&key).copied().unwrap_or(0);
                (key, position)
            })
            .collect();
        // What every watermark must reach: the relay published markers up to here (or is about
        // to), and some partition may already be further.
        let relay = self.relay.relay_position(DEFAULT_RELAY).await?;
        let highest = positions
            .iter()
            .map(|(_, position)| *position)
            .max()
            .unwrap_or(0)
            .max(relay);
        for (key, position) in positions {
            let entry = watchdog.seen.entry(key.clone()).or_insert((position, now));
            if entry.0 != position {
                *entry = (position, now);
            } else if position < highest && now.duration_since(entry.1) >= ORPHAN_AFTER {
                metrics::counter!("quintet_projector_rejoins_total", "projection" => self.name())
                    .increment(1);
                return Ok(Some(format!(
                    "partition {}/{} is stuck at watermark {position} while others reached \
                     {highest}: its owner is gone and the group did not reassign it; rejoining",
                    key.0, key.1
                )));
            }
        }
        Ok(None)
    }

    /// Decodes and projects the events of a batch that this projection handles, in a task of
    /// its own (so the applier keeps going meanwhile). An event that can never be decoded
    /// comes back as one to park.
    async fn decode(&self, batch: &[Incoming]) -> KernelResult<Vec<ProjectedEvent>> {
        let events: Vec<_> = batch
            .iter()
            .filter_map(|item| match item {
                Incoming::Event { event, .. }
                    if self.projection.handles(&event.aggregate_type)
                        || event.aggregate_type == SYSTEM_AGGREGATE =>
                {
                    Some(event.clone())
                }
                _ => None,
            })
            .collect();
        let engine = self.engine.clone();
        let projection = self.projection.clone();
        tokio::spawn(async move {
            let mut projected = Vec::with_capacity(events.len());
            for event in events {
                projected.push(decode_for(&engine, &*projection, event).await?);
            }
            Ok(projected)
        })
        .await
        .map_err(|err| KernelError::Storage(format!("decode task: {err}")))?
    }

    /// Applies a decoded batch: the events (guarded, with parking), then the watermarks and
    /// the checkpoint they allow.
    async fn apply(
        &self,
        batch: &[Incoming],
        projected: Vec<ProjectedEvent>,
        partitions: &BTreeMap<String, i32>,
    ) -> KernelResult<()> {
        let mut marks: BTreeMap<(&str, i32), u64> = BTreeMap::new();
        for item in batch {
            if let Incoming::Marker {
                topic,
                partition,
                position,
                ..
            } = item
            {
                let mark = marks.entry((topic.as_str(), *partition)).or_insert(0);
                *mark = (*mark).max(*position);
            }
        }
        if tracing::enabled!(tracing::Level::DEBUG) {
            let mut ranges: BTreeMap<(&str, i32), (i64, i64)> = BTreeMap::new();
            for item in batch {
                let range = ranges
                    .entry((item.topic(), item.partition()))
                    .or_insert((item.offset(), item.offset()));
                range.0 = range.0.min(item.offset());
                range.1 = range.1.max(item.offset());
            }
            tracing::debug!(
                projection = self.name(),
                ?ranges,
                events = projected.len(),
                "applying a batch"
            );
        }
        if !projected.is_empty() {
            let count = projected.len() as u64;
            let touched = self.cache.as_ref().map(|_| Touched::of(&projected));
            // Checkpoint 0 leaves it alone (it never moves back): only watermarks move it.
            let report = self.read.apply_projected(self.name(), projected, 0).await?;
            if let (Some(cache), Some(touched)) = (&self.cache, touched) {
                invalidate_twice(cache.clone(), touched);
            }
            tracing::debug!(projection = self.name(), ?report, "batch applied");
            self.counters.events.fetch_add(count, Ordering::Relaxed);
            metrics::counter!("quintet_projector_events_total", "projection" => self.name())
                .increment(count);
            if report.parked > 0 {
                tracing::warn!(
                    projection = self.name(),
                    parked = report.parked,
                    "events parked"
                );
                metrics::counter!("quintet_projection_parked_total", "projection" => self.name())
                    .increment(report.parked);
            }
        }
        self.record_progress(batch, &marks, partitions).await?;
        Ok(())
    }

    /// Stores, per partition the batch touched, its new watermark and the next offset to
    /// apply (after the effects committed: a crash in between only redelivers), and moves the
    /// checkpoint to the lowest watermark of every partition of the projection's topics,
    /// those of other workers of the group included.
    async fn record_progress(
        &self,
        batch: &[Incoming],
        marks: &BTreeMap<(&str, i32), u64>,
        partitions: &BTreeMap<String, i32>,
    ) -> KernelResult<()> {
        let mut known = progress(&*self.read, self.name()).await?;
        let mut touched: Vec<(String, i32)> = Vec::new();
        for item in batch {
            let key = (item.topic().to_string(), item.partition());
            let entry = known.entry(key.clone()).or_default();
            entry.next_offset = entry.next_offset.max(item.offset() + 1);
            if !touched.contains(&key) {
                touched.push(key);
            }
        }
        for ((topic, partition), position) in marks {
            let entry = known.entry((topic.to_string(), *partition)).or_default();
            entry.position = entry.position.max(*position);
        }
        let checkpoint = partitions
            .iter()
            .flat_map(|(topic, count)| (0..*count).map(move |p| (topic.clone(), p)))
            .map(|key| known.get(&key).map_or(0, |progress| progress.position))
            .min()
            .unwrap_or(0);
        let ops = touched
            .iter()
            .map(|(topic, partition)| {
                let progress = known
                    .get(&(topic.clone(), *partition))
                    .copied()
                    .unwrap_or_default();
                DocOp::Upsert {
                    collection: WATERMARKS.to_string(),
                    id: watermark_id(self.name(), topic, *partition),
                    doc: json!({
                        "projection": self.name(),
                        "topic": topic,
                        "partition": partition,
                        "position": progress.position,
                        "next_offset": progress.next_offset,
                    }),
                }
            })
            .collect();
        self.read
            .apply(self.name(), ops, vec![], checkpoint)
            .await?;
        Ok(())
    }

    /// Every stored watermark of this projection, by (topic, partition).
    async fn watermarks(&self) -> KernelResult<BTreeMap<(String, i32), u64>> {
        watermarks(&*self.read, self.name()).await
    }
}

/// What a projection applied of one partition (its `_watermarks` document).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionProgress {
    /// The highest marker applied: every event of the partition up to here is applied.
    pub position: u64,
    /// The first offset not applied yet.
    pub next_offset: i64,
}

/// The id of a partition's `_watermarks` document.
fn watermark_id(projection: &str, topic: &str, partition: i32) -> String {
    format!("{projection}/{topic}/{partition}")
}

/// Every partition's progress of a projection, by (topic, partition).
pub async fn progress(
    read: &dyn ReadStore,
    projection: &str,
) -> KernelResult<BTreeMap<(String, i32), PartitionProgress>> {
    let page = read
        .find(
            WATERMARKS,
            &DocQuery {
                filter: vec![("projection".to_string(), json!(projection))],
                ..DocQuery::default()
            },
        )
        .await?;
    let mut out = BTreeMap::new();
    for doc in page.items {
        let (Some(topic), Some(partition)) = (doc["topic"].as_str(), doc["partition"].as_i64())
        else {
            continue;
        };
        let Ok(partition) = i32::try_from(partition) else {
            continue;
        };
        out.insert(
            (topic.to_string(), partition),
            PartitionProgress {
                position: doc["position"].as_u64().unwrap_or(0),
                next_offset: doc["next_offset"].as_i64().unwrap_or(0),
            },
        );
    }
    Ok(out)
}

/// Every stored watermark of a projection, by (topic, partition).
pub async fn watermarks(
    read: &dyn ReadStore,
    projection: &str,
) -> KernelResult<BTreeMap<(String, i32), u64>> {
    Ok(progress(read, projection)
        .await?
        .into_iter()
        .map(|(key, progress)| (key, progress.position))
        .collect())
}

/// Refreshes the lag, rate and parked gauges (and the status document) every second.
async fn stats_loop(
    name: &'static str,
    engine: Engine,
    read: Arc<dyn ReadStore>,
    counters: Arc<Counters>,
    shutdown: Shutdown,
) {
    let mut last = (Instant::now(), 0u64);
    loop {
        tokio::select! {
            _ = shutdown.clone().wait() => return,
            _ = tokio::time::sleep(STATS_INTERVAL) => {}
        }
        let events = counters.events.load(Ordering::Relaxed);
        let rate = (events - last.1) as f64 / last.0.elapsed().as_secs_f64().max(1e-3);
        last = (Instant::now(), events);
        if let Err(err) = refresh_stats(name, &engine, &*read, rate).await {
            tracing::debug!(projection = name, error = %err, "projector stats");
        }
    }
}

async fn refresh_stats(
    name: &'static str,
    engine: &Engine,
    read: &dyn ReadStore,
    rate: f64,
) -> KernelResult<()> {
    let lag = kernel::projector::lag_of(engine, read, name).await?;
    // The names the in-process runner uses, with the projection as label.
    metrics::gauge!("quintet_projection_position", "projection" => name).set(lag.position as f64);
    metrics::gauge!("quintet_projection_lag_events", "projection" => name).set(lag.events as f64);
    metrics::gauge!("quintet_projection_lag_seconds", "projection" => name).set(lag.seconds);
    metrics::gauge!("quintet_projection_events_per_second", "projection" => name).set(rate);
    metrics::gauge!("quintet_projection_parked", "projection" => name).set(lag.parked as f64);
    read.merge_status(
        name,
        json!({
            "position": lag.position,
            "events_per_second": (rate * 10.0).round() / 10.0,
            "updated_at": chrono::Utc::now().to_rfc3339(),
        }),
    )
    .await
}

/// `projector --projection NAME [--projection NAME ...]` or `projector --all`.
#[derive(Debug, clap::Parser)]
#[command(
    name = "projector",
    about = "Builds read models from the Kafka event topics (feed.backend: kafka)."
)]
pub struct Args {
    /// A projection to run (repeatable).
    #[arg(long = "projection", value_name = "NAME")]
    pub projections: Vec<String>,
    /// Run every projection.
    #[arg(long, conflicts_with = "projections")]
    pub all: bool,
}

/// The `projector` process.
pub async fn main() -> std::process::ExitCode {
    use clap::Parser;
    main_with(Args::parse()).await
}

/// The process with its arguments already parsed (`quintet projector` parses them).
pub async fn main_with(args: Args) -> std::process::ExitCode {
    let projections = match select(&args.projections, args.all) {
        Ok(projections) => projections,
        Err(err) => {
            eprintln!("projector: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    web::server::process_main("projector", |settings, shutdown| async move {
        let addr = format!(
            "{}:{}",
            settings.projector.metrics_host, settings.projector.metrics_port
        );
        let listener = web::server::bind(&addr).map_err(|err| err.to_string())?;
        run(settings, projections, listener, shutdown)
            .await
            .map_err(|err| err.to_string())
    })
    .await
}
