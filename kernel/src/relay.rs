//! The relay: the event store is the outbox. It tails the store in position order with the
//! gap-safe [`Tailer`] (so it never passes a position a still-open transaction could fill) and
//! publishes every committed event to Kafka (`kernel::adapters::kafka` has the wire format).
//!
//! - Its position lives in the event store (`relay_checkpoints`, one row per relay name) and is
//!   stored only after the broker acknowledged every event up to it; a restarted relay resumes
//!   there. Events published after the last stored position are published again: consumers
//!   skip them with their per-aggregate version guards.
//! - The producer is idempotent with `acks=all` and the gapless guarantee. Any delivery failure
//!   (the broker is down, a topic vanished) throws the producer away; after a backoff a fresh one
//!   republishes from the stored position. Nothing is dropped or skipped.
//! - Watermark markers go to every partition of every topic whenever the relay has caught up
//!   (behind the batch that caught it up, in the same round trip), and at least every
//!   [`MARKER_INTERVAL`] while it streams.
//! - Metrics: `quintet_relay_position`, `quintet_relay_lag_events` (head − position),
//!   `quintet_relay_published_total`, `quintet_relay_failures_total`.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::{watch, Notify};

use crate::adapters::kafka;
use crate::config::{FeedSettings, KafkaSettings, Settings, StoreBackend};
use crate::engine::Engine;
use crate::envelope::StoredEvent;
use crate::error::{KernelError, KernelResult};
use crate::feed::Tailer;
use crate::ports::EventStore;

/// The relay name under which write-api's relay stores its position.
pub const DEFAULT_RELAY: &str = "kafka";
/// Markers go out at least this often while events keep coming.
pub const MARKER_INTERVAL: Duration = Duration::from_millis(100);
/// How often the lag gauge asks the store for its head.
const LAG_REFRESH: Duration = Duration::from_millis(500);
/// Retries while the broker is away come at least this often, so the relay catches up soon
/// after it returns.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Where relays keep their positions (the event store's `relay_checkpoints` table).
#[async_trait]
pub trait RelayCheckpoints: Send + Sync + 'static {
    /// The last position the relay published and had acknowledged (0 if none).
    async fn relay_position(&self, name: &str) -> KernelResult<u64>;
    /// Moves the relay's position forward (never back).
    async fn store_relay_position(&self, name: &str, position: u64) -> KernelResult<()>;
}

/// One relay: an event store, where it keeps its position, and a broker.
pub struct Relay {
    store: Arc<dyn EventStore>,
    checkpoints: Arc<dyn RelayCheckpoints>,
    kafka: KafkaSettings,
    feed: FeedSettings,
    wake: Arc<Notify>,
    name: String,
    position: watch::Sender<u64>,
}

impl Relay {
    pub fn new(
        store: Arc<dyn EventStore>,
        checkpoints: Arc<dyn RelayCheckpoints>,
        kafka: KafkaSettings,
        feed: FeedSettings,
        wake: Arc<Notify>,
    ) -> Self {
        let (position, _) = watch::channel(0);
        Self {
            store,
            checkpoints,
            kafka,
            feed,
            wake,
            name: DEFAULT_RELAY.to_string(),
            position,
        }
    }

    /// Another relay name (another row of `relay_checkpoints`).
    pub fn with_name(mut self, name: &str) -> Self {
        self.name = name.to_string();
        self
    }

    /// Observes the stored (acknowledged) position.
    pub fn watch(&self) -> watch::Receiver<u64> {
        self.position.subscribe()
    }

    /// Runs until `shutdown` resolves. Every failure (broker, store) is retried with a
    /// backoff from the stored position.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut backoff = Duration::from_millis(100);
        loop {
            let started = Instant::now();
            tokio::select! {
                _ = &mut shutdown => return,
                result = self.run_once() => {
                    let err: KernelError = match result {
                        Ok(never) => match never {},
                        Err(err) => err,
                    };
                    tracing::warn!(relay = %self.name, error = %err, ?backoff, "relay failed; retrying from its stored position");
                    metrics::counter!("quintet_relay_failures_total").increment(1);
                }
            }
            // A run that went well for a while starts the backoff over.
            if started.elapsed() > MAX_BACKOFF * 2 {
                backoff = Duration::from_millis(100);
            }
            tokio::select! {
                _ = &mut shutdown => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// Publishes from the stored position until something fails.
    async fn run_once(&self) -> KernelResult<std::convert::Infallible> {
        let topics = kafka::all_event_topics(&self.kafka.topic_prefix);
        kafka::ensure_topics(&self.kafka, &topics).await?;
        let partitions = kafka::partition_counts(&self.kafka, &topics).await?;
        if let Some(missing) = topics.iter().find(|t| !partitions.contains_key(*t)) {
            return Err(KernelError::Storage(format!(
                "kafka topic {missing} has no partitions yet"
            )));
        }
        let producer: FutureProducer = kafka::producer_config(&self.kafka)
            .create()
            .map_err(|err| KernelError::Storage(format!("kafka producer: {err}")))?;
        let start = self.checkpoints.relay_position(&self.name).await?;
        self.position.send_replace(start);
        metrics::gauge!("quintet_relay_position").set(start as f64);
        tracing::info!(relay = %self.name, position = start, "relay publishing");

        let tailer = Tailer::new(
            self.store.clone(),
            start,
            self.feed.clone(),
            self.wake.clone(),
        );
        // The store is read in a task of its own (the tailer is not cancel-safe), so a batch
        // is read and enqueued while earlier ones wait for their acknowledgements.
        let (sender, mut feed) = tokio::sync::mpsc::channel(2);
        let _reader = crate::task::AbortOnDrop(tokio::spawn(read_store(tailer, sender)));
        let mut in_flight: VecDeque<InFlight> = VecDeque::new();
        let mut marked = 0u64;
        let mut marked_at = Instant::now();
        let mut lag_at: Option<Instant> = None;
        let outcome: KernelResult<std::convert::Infallible> = loop {
            let step = tokio::select! {
                biased;
                acked = front_acked(&mut in_flight), if !in_flight.is_empty() => Step::Acked(acked),
                read = feed.recv(), if in_flight.len() < MAX_IN_FLIGHT => Step::Read(read),
            };
            match step {
                Step::Acked(Err(err)) => {
                    // Settled: it must not be awaited again.
                    in_flight.pop_front();
                    break Err(err);
                }
                Step::Acked(Ok(())) => {
                    // Everything acknowledged in order from the front: one stored position.
                    let mut last = in_flight.pop_front().map_or(0, |done| done.last);
                    while let Some(front) = in_flight.front_mut() {
                        match (&mut front.acked).now_or_never() {
                            Some(Ok(())) => last = in_flight.pop_front().map_or(last, |d| d.last),
                            Some(Err(err)) => {
                                in_flight.pop_front();
                                return self.fail(err, in_flight).await;
                            }
                            None => break,
                        }
                    }
                    if let Err(err) = self
                        .checkpoints
                        .store_relay_position(&self.name, last)
                        .await
                    {
                        break Err(err);
                    }
                    self.position.send_replace(last);
                    metrics::gauge!("quintet_relay_position").set(last as f64);
                    if lag_at.is_none_or(|at| at.elapsed() >= LAG_REFRESH) {
                        self.refresh_lag(last).await;
                        lag_at = Some(Instant::now());
                    }
                }
                Step::Read(None) => {
                    break Err(KernelError::Storage(
                        "the relay's store reader stopped".into(),
                    ))
                }
                Step::Read(Some(Err(err))) => break Err(err),
                Step::Read(Some(Ok(Read::CaughtUp(position)))) => {
                    // Caught up (or waiting on a gap): tell the consumers where everything
                    // stands.
                    if marked < position {
                        let mut deliveries = Vec::new();
                        if let Err(err) =
                            enqueue_markers(&producer, &partitions, position, &mut deliveries).await
                        {
                            break Err(err);
                        }
                        in_flight.push_back(InFlight::new(position, deliveries));
                        marked = position;
                        marked_at = Instant::now();
                    }
                    if lag_at.is_none_or(|at| at.elapsed() >= LAG_REFRESH) {
                        self.refresh_lag(position).await;
                        lag_at = Some(Instant::now());
                    }
                }
                Step::Read(Some(Ok(Read::Batch(batch)))) => {
                    let Some(last) = batch.last().map(|e| e.position) else {
                        continue;
                    };
                    // Markers ride with a batch that likely caught the relay up (a short one),
                    // or when they are due: enqueued behind the events on the same idempotent
                    // producer, each partition's marker lands after its events without waiting
                    // for their acks, so a consumer can apply both in one batch.
                    let mark = batch.len() < self.feed.batch_size as usize
                        || marked_at.elapsed() >= MARKER_INTERVAL;
                    let markers = mark.then_some((&partitions, last));
                    let deliveries = match self.enqueue(&producer, &batch, markers).await {
                        Ok(deliveries) => deliveries,
                        Err(err) => break Err(err),
                    };
                    tracing::debug!(
                        relay = %self.name,
                        first = batch[0].position,
                        last,
                        markers = mark,
                        in_flight = in_flight.len(),
                        "relay enqueued"
                    );
                    in_flight.push_back(InFlight::new(last, deliveries));
                    metrics::counter!("quintet_relay_published_total")
                        .increment(batch.len() as u64);
                    if mark {
                        marked = last;
                        marked_at = Instant::now();
                    }
                }
            }
        };
        match outcome {
            Ok(never) => match never {},
            Err(err) => self.fail(err, in_flight).await,
        }
    }

    /// Lets every delivery still in flight settle (nothing of this producer is left in flight
    /// when it is dropped), then fails with `err`.
    async fn fail(
        &self,
        err: KernelError,
        in_flight: VecDeque<InFlight>,
    ) -> KernelResult<std::convert::Infallible> {
        for pending in in_flight {
            let _ = pending.acked.await;
        }
        Err(err)
    }

    /// Queues a batch, then the markers `(partitions, position)` if given; the deliveries
    /// settle as the broker acknowledges them.
    async fn enqueue(
        &self,
        producer: &FutureProducer,
        batch: &[StoredEvent],
        markers: Option<(&BTreeMap<String, i32>, u64)>,
    ) -> KernelResult<Vec<rdkafka::producer::DeliveryFuture>> {
        let mut deliveries = Vec::with_capacity(batch.len());
        for event in batch {
            let (context, key) = kafka::route(event);
            let topic = kafka::events_topic(&self.kafka.topic_prefix, context);
            let value = kafka::encode_event(event)?;
            let record = FutureRecord::to(&topic)
                .key(key)
                .payload(&value)
                .headers(kafka::event_headers(event));
            deliveries.push(enqueue(producer, record).await?);
        }
        if let Some((partitions, position)) = markers {
            enqueue_markers(producer, partitions, position, &mut deliveries).await?;
        }
        Ok(deliveries)
    }

    async fn refresh_lag(&self, position: u64) {
        match self.store.head_position().await {
            Ok(head) => metrics::gauge!("quintet_relay_lag_events")
                .set(head.saturating_sub(position) as f64),
            Err(err) => tracing::debug!(error = %err, "relay lag: no head position"),
        }
    }
}

/// Batches (or marker sets) enqueued and not yet acknowledged, at most: enough to keep
/// reading while the broker acknowledges (tansu took 11-18 ms for an event and its markers).
const MAX_IN_FLIGHT: usize = 16;

/// A batch (or a set of markers) enqueued: acknowledged once `acked` resolves.
struct InFlight {
    /// The position every event up to which is published once this is acknowledged.
    last: u64,
    acked: futures::future::BoxFuture<'static, KernelResult<()>>,
}

impl InFlight {
    fn new(last: u64, deliveries: Vec<rdkafka::producer::DeliveryFuture>) -> Self {
        Self {
            last,
            acked: Box::pin(await_all(deliveries)),
        }
    }
}

/// What the store reader hands the relay.
enum Read {
    Batch(Vec<StoredEvent>),
    /// Nothing more to read for now; everything up to here was handed out.
    CaughtUp(u64),
}

enum Step {
    Acked(KernelResult<()>),
    Read(Option<KernelResult<Read>>),
}

/// Waits for the oldest batch in flight to be acknowledged (cancel-safe: the future stays in
/// the queue).
async fn front_acked(in_flight: &mut VecDeque<InFlight>) -> KernelResult<()> {
    match in_flight.front_mut() {
        Some(front) => (&mut front.acked).await,
        None => std::future::pending().await,
    }
}

/// Reads the store gap-safely and hands the relay batches, and a `CaughtUp` each time it
/// has read everything there is.
async fn read_store(mut tailer: Tailer, sender: tokio::sync::mpsc::Sender<KernelResult<Read>>) {
    loop {
        let read = match tailer.poll().await {
            Ok(batch) if batch.is_empty() => {
                if sender
                    .send(Ok(Read::CaughtUp(tailer.position())))
                    .await
                    .is_err()
                {
                    return;
                }
                tailer.next_batch().await.map(Read::Batch)
            }
            Ok(batch) => Ok(Read::Batch(batch)),
            Err(err) => Err(err),
        };
        let failed = read.is_err();
        if sender.send(read).await.is_err() || failed {
            return;
        }
    }
}

/// Queues the marker `position` for every partition of every topic.
async fn enqueue_markers(
    producer: &FutureProducer,
    partitions: &BTreeMap<String, i32>,
    position: u64,
    deliveries: &mut Vec<rdkafka::producer::DeliveryFuture>,
) -> KernelResult<()> {
    for (topic, count) in partitions {
        for partition in 0..*count {
            let record = FutureRecord::<(), ()>::to(topic)
                .partition(partition)
                .headers(kafka::marker_headers(position));
            deliveries.push(enqueue(producer, record).await?);
        }
    }
    Ok(())
}

/// Queues a record, waiting for room when the producer's queue is full.
async fn enqueue<K, P>(
    producer: &FutureProducer,
    mut record: FutureRecord<'_, K, P>,
) -> KernelResult<rdkafka::producer::DeliveryFuture>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                back,
            )) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((err, _)) => return Err(KernelError::Storage(format!("kafka produce: {err}"))),
        }
    }
}

/// Waits for every delivery; the first failure fails the whole batch (after all are settled,
/// so nothing of this producer is still in flight when it is dropped).
async fn await_all(deliveries: Vec<rdkafka::producer::DeliveryFuture>) -> KernelResult<()> {
    let mut failure = None;
    for delivery in deliveries {
        let outcome = match delivery.await {
            Ok(Ok(_)) => continue,
            Ok(Err((err, message))) => {
                use rdkafka::message::Message;
                format!(
                    "kafka delivery to {}/{}: {err}",
                    message.topic(),
                    message.partition()
                )
            }
            Err(_) => "kafka delivery: the producer went away".to_string(),
        };
        failure.get_or_insert(outcome);
    }
    match failure {
        Some(message) => Err(KernelError::Storage(message)),
        None => Ok(()),
    }
}

/// Connects a store for the relay's position: the configured event store, on a small pool of
/// its own (its migrations create `relay_checkpoints`).
pub async fn connect_checkpoints(settings: &Settings) -> KernelResult<Arc<dyn RelayCheckpoints>> {
    use crate::adapters::sql::{MySqlEventStore, SqliteEventStore};
    let url = settings.event_store_url();
    Ok(match settings.event_store.backend {
        StoreBackend::Sqlite => {
            let store = SqliteEventStore::connect(&url, 1).await?;
            store.migrate().await?;
            Arc::new(store)
        }
        StoreBackend::Mysql => {
            let store = MySqlEventStore::connect(&url, 2).await?;
            store.migrate().await?;
            Arc::new(store)
        }
    })
}

/// The relay of a write-side process: connects where it keeps its position (retrying while
/// the store is away) and publishes until `shutdown`.
pub async fn run_from_settings(
    settings: Settings,
    engine: Engine,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    let checkpoints = loop {
        match connect_checkpoints(&settings).await {
            Ok(checkpoints) => break checkpoints,
            Err(err) => {
                tracing::warn!(error = %err, "relay: cannot reach its position store; retrying");
                tokio::select! {
                    _ = &mut shutdown => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    Relay::new(
        engine.store().clone(),
        checkpoints,
        settings.kafka.clone(),
        settings.feed.clone(),
        engine.appended(),
    )
    .run(shutdown)
    .await;
}
