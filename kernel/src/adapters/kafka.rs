//! Kafka plumbing for the distributed feed: topic names and routing, the bincode message
//! envelope, client configurations, topic creation, and a consumer that hands out decoded
//! events and watermark markers in batches.
//!
//! Wire format (contract): one topic per context, `{prefix}{context}-events`; the key is the
//! aggregate id; the value is the stored event (payload still ciphertext) framed with bincode;
//! headers `position` and `event_id`. Events of aggregate types no context claims go to
//! `{prefix}system-events`, so nothing the store holds is ever left unpublished. A system
//! `aggregate_forgotten` event (aggregate id `{type}/{id}`) goes to the topic of the aggregate it
//! names, keyed by that aggregate's id, so it lands after that aggregate's events in the same
//! partition.
//!
//! Watermark markers: a message with an empty key and value, header `marker` = P, sent to an
//! explicit partition. The relay sends one to every partition of every topic once everything up
//! to P is acknowledged; a consumer that applied a partition's marker P has applied every event
//! of that partition with position <= P (Kafka keeps order per partition).

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::DateTime;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::config::KafkaSettings;
use crate::domain::projection::{Projection, SYSTEM_AGGREGATE};
use crate::domain::Context;
use crate::envelope::StoredEvent;
use crate::error::{KernelError, KernelResult};

pub const POSITION_HEADER: &str = "position";
pub const EVENT_ID_HEADER: &str = "event_id";
pub const MARKER_HEADER: &str = "marker";

/// The most records the relay puts in one record batch. tansu 0.6 answers a fetch from an
/// offset inside a record batch with the next batch, silently skipping the rest of the one
/// holding that offset; a consumer resumes from arbitrary offsets, so it seeks this far back
/// before the offset it needs, which always lands at or before the start of its batch (the
/// records before it are redeliveries, skipped by the version guards).
pub const MAX_RECORDS_PER_BATCH: i64 = 100;

/// The first byte of every event message; bump when the envelope's shape changes.
const ENVELOPE_VERSION: u8 = 1;
/// The largest message value a consumer decodes (a payload is at most a few MiB).
const MAX_ENVELOPE_BYTES: usize = 64 << 20;

/// Every context that has an event topic; `System` holds what no other context claims.
pub const EVENT_CONTEXTS: [Context; 6] = [
    Context::Memento,
    Context::Repository,
    Context::Mediator,
    Context::EventSourcing,
    Context::Command,
    Context::System,
];

/// `{prefix}{context}-events`.
pub fn events_topic(prefix: &str, context: Context) -> String {
    format!("{prefix}{}-events", context.as_str())
}

/// Every event topic, in [`EVENT_CONTEXTS`] order.
pub fn all_event_topics(prefix: &str) -> Vec<String> {
    EVENT_CONTEXTS
        .iter()
        .map(|context| events_topic(prefix, *context))
        .collect()
}

/// The consumer group of a projection's workers: `{prefix}projection-{name}`.
pub fn consumer_group(prefix: &str, projection: &str) -> String {
    format!("{prefix}projection-{projection}")
}

/// The topics a projection's worker subscribes to: those of the contexts whose aggregates it
/// handles, and always the system topic (system events go to every projection).
pub fn projection_topics(prefix: &str, projection: &dyn Projection) -> Vec<String> {
    let mut topics: Vec<String> = Vec::new();
    for aggregate_type in crate::domain::aggregate_types() {
        let topic = events_topic(prefix, Context::of_aggregate(aggregate_type));
        if projection.handles(aggregate_type) && !topics.contains(&topic) {
            topics.push(topic);
        }
    }
    topics.push(events_topic(prefix, Context::System));
    topics
}

/// The context (topic) and key of an event.
pub fn route(event: &StoredEvent) -> (Context, &str) {
    if event.aggregate_type == SYSTEM_AGGREGATE {
        // A data key id `{type}/{id}`: follow the aggregate it names.
        if let Some((aggregate_type, aggregate_id)) = event.aggregate_id.split_once('/') {
            return (Context::of_aggregate(aggregate_type), aggregate_id);
        }
    }
    (
        Context::of_aggregate(&event.aggregate_type),
        &event.aggregate_id,
    )
}

/// The bincode-framed message value.
#[derive(Serialize, Deserialize)]
struct WireEvent {
    version: u8,
    position: u64,
    aggregate_type: String,
    aggregate_id: String,
    sequence: u64,
    event_type: String,
    event_version: i32,
    event_id: [u8; 16],
    correlation_id: [u8; 16],
    causation_id: Option<[u8; 16]>,
    actor: Option<String>,
    /// Unix microseconds: the store keeps no more precision.
    recorded_at: i64,
    payload: Vec<u8>,
}

/// The message value of a stored event.
pub fn encode_event(event: &StoredEvent) -> KernelResult<Vec<u8>> {
    let wire = WireEvent {
        version: ENVELOPE_VERSION,
        position: event.position,
        aggregate_type: event.aggregate_type.clone(),
        aggregate_id: event.aggregate_id.clone(),
        sequence: event.sequence,
        event_type: event.event_type.clone(),
        event_version: event.event_version,
        event_id: event.event_id.into_bytes(),
        correlation_id: event.correlation_id.into_bytes(),
        causation_id: event.causation_id.map(Uuid::into_bytes),
        actor: event.actor.clone(),
        recorded_at: event.recorded_at.timestamp_micros(),
        payload: event.payload.clone(),
    };
    bincode::serde::encode_to_vec(&wire, bincode::config::standard())
        .map_err(|err| KernelError::Storage(format!("kafka envelope: {err}")))
}

/// The stored event a message value carries.
pub fn decode_event(bytes: &[u8]) -> KernelResult<StoredEvent> {
    let bad = |what: String| KernelError::Storage(format!("kafka envelope: {what}"));
    match bytes.first() {
        Some(&ENVELOPE_VERSION) => {}
        Some(other) => return Err(bad(format!("unknown envelope version {other}"))),
        None => return Err(bad("empty message".into())),
    }
    let (wire, _): (WireEvent, usize) = bincode::serde::decode_from_slice(
        bytes,
        bincode::config::standard().with_limit::<MAX_ENVELOPE_BYTES>(),
    )
    .map_err(|err| bad(err.to_string()))?;
    Ok(StoredEvent {
        position: wire.position,
        aggregate_type: wire.aggregate_type,
        aggregate_id: wire.aggregate_id,
        sequence: wire.sequence,
        event_type: wire.event_type,
        event_version: wire.event_version,
        event_id: Uuid::from_bytes(wire.event_id),
        correlation_id: Uuid::from_bytes(wire.correlation_id),
        causation_id: wire.causation_id.map(Uuid::from_bytes),
        actor: wire.actor,
        recorded_at: DateTime::from_timestamp_micros(wire.recorded_at)
            .ok_or_else(|| bad(format!("timestamp {} out of range", wire.recorded_at)))?,
        payload: wire.payload,
    })
}

/// The headers of an event message.
pub fn event_headers(event: &StoredEvent) -> OwnedHeaders {
    let position = event.position.to_string();
    let event_id = event.event_id.to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: POSITION_HEADER,
            value: Some(position.as_str()),
        })
        .insert(Header {
            key: EVENT_ID_HEADER,
            value: Some(event_id.as_str()),
        })
}

/// The headers of a watermark marker.
pub fn marker_headers(position: u64) -> OwnedHeaders {
    let position = position.to_string();
    OwnedHeaders::new().insert(Header {
        key: MARKER_HEADER,
        value: Some(position.as_str()),
    })
}

/// A header's value as text.
pub fn header<M: Message>(message: &M, key: &str) -> Option<String> {
    let headers = message.headers()?;
    headers
        .iter()
        .find(|header| header.key == key)
        .and_then(|header| header.value)
        .and_then(|value| std::str::from_utf8(value).ok())
        .map(str::to_string)
}

fn kafka_error(what: &str, err: impl std::fmt::Display) -> KernelError {
    KernelError::Storage(format!("kafka {what}: {err}"))
}

/// Settings every client shares.
pub fn client_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", "quintet")
        // Topics are created by us, with our partition count; never implicitly.
        .set("allow.auto.create.topics", "false")
        // The broker being away is expected (outages); the callers log and retry.
        .set("log_level", "3");
    config
}

/// The relay's producer: idempotent, `acks=all`, and a failure that could leave a hole in a
/// partition's sequence is fatal (the relay then starts over from its stored position).
/// `produce_timeout` bounds each message, including the producer id a new producer first gets
/// (about half a second with librdkafka), so keep it well above a second.
pub fn producer_config(settings: &KafkaSettings) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("enable.gapless.guarantee", "true")
        // Bounded record batches: see [`MAX_RECORDS_PER_BATCH`].
        .set("batch.num.messages", MAX_RECORDS_PER_BATCH.to_string())
        // The relay enqueues whole batches, so waiting for more only adds latency.
        .set("linger.ms", "1")
        .set(
            "message.timeout.ms",
            settings.produce_timeout.as_millis().max(1).to_string(),
        );
    config
}

/// A consumer in `group`: offsets are stored by hand once an effect committed, and committed
/// in the background every second (and on shutdown).
pub fn consumer_config(settings: &KafkaSettings, group: &str) -> ClientConfig {
    let mut config = client_config(settings);
    config
        .set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // A killed worker's partitions move to the others after this long.
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("max.poll.interval.ms", "300000")
        .set("topic.metadata.refresh.interval.ms", "5000")
        // tansu 0.6 holds a fetch for its whole max wait even when records arrive meanwhile,
        // so librdkafka's default (500 ms) put ~480 ms on every message of an idle consumer
        // (`benches/src/bin/project.rs fetch-latency`: 476 ms vs 13 ms at 10 ms). A relay
        // batch's markers also land in several fetches, one per partition written meanwhile.
        .set(
            "fetch.wait.max.ms",
            settings.fetch_wait.as_millis().clamp(1, 60_000).to_string(),
        );
    config
}

/// Creates the topics that do not exist yet, with `settings.partitions` partitions each.
pub async fn ensure_topics(settings: &KafkaSettings, topics: &[String]) -> KernelResult<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(settings)
        .create()
        .map_err(|err| kafka_error("admin client", err))?;
    let partitions = settings.partitions.max(1);
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| NewTopic::new(topic, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(settings.produce_timeout))
        .operation_timeout(Some(settings.produce_timeout));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|err| kafka_error("create topics", err))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(kafka_error(&format!("create topic {topic}"), code)),
        }
    }
    Ok(())
}

/// The partition count of each topic, from the broker's metadata (missing topics are absent).
pub async fn partition_counts(
    settings: &KafkaSettings,
    topics: &[String],
) -> KernelResult<BTreeMap<String, i32>> {
    let settings = settings.clone();
    let topics = topics.to_vec();
    tokio::task::spawn_blocking(move || {
        let consumer: rdkafka::consumer::BaseConsumer = client_config(&settings)
            .create()
            .map_err(|err| kafka_error("metadata client", err))?;
        let mut counts = BTreeMap::new();
        for topic in &topics {
            let metadata = consumer
                .fetch_metadata(Some(topic), settings.produce_timeout)
                .map_err(|err| kafka_error("metadata", err))?;
            for found in metadata.topics() {
                if found.error().is_none() && !found.partitions().is_empty() {
                    counts.insert(found.name().to_string(), found.partitions().len() as i32);
                }
            }
        }
        Ok(counts)
    })
    .await
    .map_err(|err| kafka_error("metadata task", err))?
}

/// The first offset a partition still holds (older ones were removed by retention).
pub async fn log_start(settings: &KafkaSettings, topic: &str, partition: i32) -> KernelResult<i64> {
    let settings = settings.clone();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let client: rdkafka::consumer::BaseConsumer = client_config(&settings)
            .create()
            .map_err(|err| kafka_error("watermark client", err))?;
        let (low, _high) = client
            .fetch_watermarks(&topic, partition, settings.produce_timeout)
            .map_err(|err| kafka_error("watermarks", err))?;
        Ok(low)
    })
    .await
    .map_err(|err| kafka_error("watermark task", err))?
}

/// What a consumer hands out.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Event {
        topic: String,
        partition: i32,
        offset: i64,
        event: StoredEvent,
    },
    /// A watermark: every event of this partition up to `position` came before it.
    Marker {
        topic: String,
        partition: i32,
        offset: i64,
        position: u64,
    },
}

impl Incoming {
    pub fn topic(&self) -> &str {
        match self {
            Incoming::Event { topic, .. } | Incoming::Marker { topic, .. } => topic,
        }
    }
    pub fn partition(&self) -> i32 {
        match self {
            Incoming::Event { partition, .. } | Incoming::Marker { partition, .. } => *partition,
        }
    }
    pub fn offset(&self) -> i64 {
        match self {
            Incoming::Event { offset, .. } | Incoming::Marker { offset, .. } => *offset,
        }
    }
}

/// Turns a message into what it carries; a message that is neither a marker nor a decodable
/// event is an error (it never came from the relay, and skipping it could lose an event).
fn incoming<M: Message>(message: &M) -> KernelResult<Incoming> {
    let topic = message.topic().to_string();
    let (partition, offset) = (message.partition(), message.offset());
    if let Some(marker) = header(message, MARKER_HEADER) {
        let position = marker.parse().map_err(|_| {
            KernelError::Storage(format!(
                "kafka marker `{marker}` at {topic}/{partition}@{offset}"
            ))
        })?;
        return Ok(Incoming::Marker {
            topic,
            partition,
            offset,
            position,
        });
    }
    let event = decode_event(message.payload().unwrap_or_default())
        .map_err(|err| KernelError::Storage(format!("{err} at {topic}/{partition}@{offset}")))?;
    Ok(Incoming::Event {
        topic,
        partition,
        offset,
        event,
    })
}

/// Routes librdkafka's logs, errors and the group's rebalances to `tracing`.
#[derive(Debug, Default, Clone)]
pub struct TracingContext;

impl rdkafka::client::ClientContext for TracingContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as Level;
        match level {
            Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
                tracing::error!(target: "librdkafka", facility, "{message}")
            }
            Level::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
            Level::Notice | Level::Info => {
                tracing::info!(target: "librdkafka", facility, "{message}")
            }
            Level::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        // The broker being away shows up here; callers retry.
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

impl rdkafka::consumer::ConsumerContext for TracingContext {
    fn post_rebalance(
        &self,
        _consumer: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        use rdkafka::consumer::Rebalance;
        let partitions = |list: &TopicPartitionList| -> Vec<String> {
            list.elements()
                .iter()
                .map(|e| format!("{}/{}", e.topic(), e.partition()))
                .collect()
        };
        match rebalance {
            Rebalance::Assign(list) => {
                tracing::info!(partitions = ?partitions(list), "partitions assigned")
            }
            Rebalance::Revoke(list) => {
                tracing::info!(partitions = ?partitions(list), "partitions revoked")
            }
            Rebalance::Error(err) => tracing::warn!(error = %err, "rebalance failed"),
        }
    }
}

/// A consumer that joined `group` and subscribed to `topics`, offsets stored by hand.
pub fn subscribed(
    settings: &KafkaSettings,
    group: &str,
    topics: &[String],
) -> KernelResult<StreamConsumer<TracingContext>> {
    let consumer: StreamConsumer<TracingContext> = consumer_config(settings, group)
        .create_with_context(TracingContext)
        .map_err(|err| kafka_error("consumer", err))?;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&names)
        .map_err(|err| kafka_error("subscribe", err))?;
    Ok(consumer)
}

/// A group consumer of event topics.
pub struct EventConsumer {
    consumer: Option<StreamConsumer<TracingContext>>,
}

impl EventConsumer {
    /// Joins `group` and subscribes to `topics`.
    pub fn subscribe(
        settings: &KafkaSettings,
        group: &str,
        topics: &[String],
    ) -> KernelResult<Self> {
        Ok(Self {
            consumer: Some(subscribed(settings, group, topics)?),
        })
    }

    fn consumer(&self) -> &StreamConsumer<TracingContext> {
        self.consumer
            .as_ref()
            .expect("the consumer is only taken by close, which consumes self")
    }

    /// Waits for the next message. Cancel-safe: a message leaves the queue only when this
    /// returns it, so it can be raced against a shutdown or a timer.
    pub async fn next(&self) -> KernelResult<Incoming> {
        let message = self
            .consumer()
            .recv()
            .await
            .map_err(|err| kafka_error("receive", err))?;
        incoming(&message)
    }

    /// Adds to `batch` what else arrives within `linger`, up to `max` messages in all. Not
    /// cancel-safe (a message taken is in `batch`): do not race it.
    pub async fn fill(
        &self,
        batch: &mut Vec<Incoming>,
        max: usize,
        linger: Duration,
    ) -> KernelResult<()> {
        let deadline = tokio::time::Instant::now() + linger;
        while batch.len() < max {
            match tokio::time::timeout_at(deadline, self.consumer().recv()).await {
                Ok(Ok(message)) => batch.push(incoming(&message)?),
                Ok(Err(err)) => return Err(kafka_error("receive", err)),
                Err(_) => break,
            }
        }
        Ok(())
    }

    /// Stores, for the next commit, the offsets after everything in `handled`. Partitions
    /// this consumer no longer owns (a rebalance) are skipped: their new owner starts from the
    /// last committed offset and its version guards skip what was already applied.
    pub fn store_offsets(&self, handled: &[Incoming]) -> KernelResult<()> {
        let mut next: BTreeMap<(&str, i32), i64> = BTreeMap::new();
        for item in handled {
            let entry = next.entry((item.topic(), item.partition())).or_insert(0);
            *entry = (*entry).max(item.offset() + 1);
        }
        for ((topic, partition), offset) in next {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(topic, partition, Offset::Offset(offset))
                .map_err(|err| kafka_error("offset list", err))?;
            match self.consumer().store_offsets(&list) {
                Ok(()) => {}
                Err(KafkaError::StoreOffset(RDKafkaErrorCode::State))
                | Err(KafkaError::StoreOffset(RDKafkaErrorCode::UnknownPartition)) => {
                    tracing::debug!(topic, partition, "partition revoked; offset not stored");
                }
                Err(err) => return Err(kafka_error("store offset", err)),
            }
        }
        Ok(())
    }

    /// Moves a partition's fetch position to `offset` (asynchronously: messages already
    /// fetched from the old position are discarded by the client).
    pub fn seek(&self, topic: &str, partition: i32, offset: i64) -> KernelResult<()> {
        self.consumer()
            .seek(topic, partition, Offset::Offset(offset), Duration::ZERO)
            .map_err(|err| kafka_error("seek", err))
    }

    /// The partitions this consumer owns now.
    pub fn assignment(&self) -> KernelResult<Vec<(String, i32)>> {
        let list = self
            .consumer()
            .assignment()
            .map_err(|err| kafka_error("assignment", err))?;
        Ok(list
            .elements()
            .iter()
            .map(|element| (element.topic().to_string(), element.partition()))
            .collect())
    }

    /// Commits the stored offsets now, then leaves the group (the close blocks on the broker,
    /// so it runs off the async threads).
    pub async fn close(mut self) {
        let Some(consumer) = self.consumer.take() else {
            return;
        };
        let closed = tokio::task::spawn_blocking(move || {
            if let Err(err) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored since the last commit is the common case.
                tracing::debug!(error = %err, "final offset commit");
            }
            consumer.unsubscribe();
            drop(consumer);
        })
        .await;
        if let Err(err) = closed {
            tracing::warn!(error = %err, "closing the consumer failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::memento::{CARETAKER, ORIGINATOR};

    fn event(aggregate_type: &str, aggregate_id: &str) -> StoredEvent {
        StoredEvent {
            position: 42,
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            sequence: 7,
            event_type: "memento_created".into(),
            event_version: 2,
            event_id: Uuid::now_v7(),
            correlation_id: Uuid::now_v7(),
            causation_id: Some(Uuid::now_v7()),
            actor: Some("tester".into()),
            recorded_at: DateTime::from_timestamp_micros(1_700_000_000_123_456)
                .expect("valid time"),
            payload: vec![0, 1, 2, 255],
        }
    }

    #[test]
    fn envelope_round_trips() {
        let original = event(CARETAKER, "c1");
        let bytes = encode_event(&original).expect("encode");
        assert_eq!(decode_event(&bytes).expect("decode"), original);
        let plain = StoredEvent {
            causation_id: None,
            actor: None,
            payload: vec![],
            ..original
        };
        let bytes = encode_event(&plain).expect("encode");
        assert_eq!(decode_event(&bytes).expect("decode"), plain);
    }

    #[test]
    fn bad_envelopes_are_errors_not_panics() {
        assert!(decode_event(&[]).is_err());
        assert!(decode_event(&[9, 1, 2]).is_err());
        let bytes = encode_event(&event(CARETAKER, "c1")).expect("encode");
        for cut in 0..bytes.len() {
            assert!(decode_event(&bytes[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn events_route_to_their_context_keyed_by_aggregate() {
        let caretaker = event(CARETAKER, "c1");
        assert_eq!(route(&caretaker), (Context::Memento, "c1"));
        let forgotten = event(SYSTEM_AGGREGATE, &format!("{ORIGINATOR}/o9"));
        assert_eq!(route(&forgotten), (Context::Memento, "o9"));
        let unknown = event("feedtest", "x");
        assert_eq!(route(&unknown), (Context::System, "x"));
        assert_eq!(
            events_topic("t_", Context::EventSourcing),
            "t_event-sourcing-events"
        );
        assert_eq!(consumer_group("t_", "mementos"), "t_projection-mementos");
    }

    #[test]
    fn every_aggregate_type_has_a_context_topic() {
        for aggregate_type in crate::domain::aggregate_types() {
            assert_ne!(
                Context::of_aggregate(aggregate_type),
                Context::System,
                "{aggregate_type} would go to the system topic"
            );
        }
    }

    #[test]
    fn projections_read_the_topics_of_their_contexts() {
        use crate::domain::event_sourcing::EventSourcingProjection;
        use crate::domain::memento::MementoProjection;
        use crate::domain::repository::RepositoryProjection;
        assert_eq!(
            projection_topics("p_", &MementoProjection),
            ["p_memento-events", "p_system-events"]
        );
        assert_eq!(
            projection_topics("p_", &RepositoryProjection),
            ["p_repository-events", "p_system-events"]
        );
        assert_eq!(
            projection_topics("p_", &EventSourcingProjection),
            ["p_event-sourcing-events", "p_system-events"]
        );
    }
}
