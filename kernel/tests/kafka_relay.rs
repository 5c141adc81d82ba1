//! The relay (event store → Kafka) against the real tansu broker and MariaDB:
//! - every committed event is published to its context's topic, keyed by aggregate id, with
//!   `position` and `event_id` headers, in order per aggregate, and watermark markers reach
//!   every partition; a restarted relay resumes from its stored position (guarantee 3's
//!   producer half);
//! - a held-open transaction's position is never skipped, a rolled-back one is released
//!   (guarantee 4);
//! - a broker outage during writes loses no acknowledged event: the relay catches up once the
//!   broker is back (guarantee 5). This one runs a private tansu on a port of its own, so it can
//!   kill and restart it without disturbing other tests;
//! - the relay's stored position only moves forward, on MariaDB and SQLite.
//!
//! Every test has its own database and topic prefix. Needs tansu (`scripts/services.sh`
//! starts the shared one on 127.0.0.1:9092; `KAFKA_TEST_BROKERS` points elsewhere).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kernel::adapters::kafka::{self, EVENT_ID_HEADER, MARKER_HEADER, POSITION_HEADER};
use kernel::adapters::sql::MySqlEventStore;
use kernel::config::{FeedBackend, FeedSettings, KafkaSettings};
use kernel::domain::memento::{CARETAKER, ORIGINATOR};
use kernel::envelope::{AppendBatch, NewEvent, StoredEvent, StreamAppend};
use kernel::ports::EventStore;
use kernel::relay::{Relay, RelayCheckpoints};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use sqlx::{MySql, Transaction};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

fn brokers() -> String {
    std::env::var("KAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_string())
}

fn kafka_settings(brokers: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: brokers.to_string(),
        topic_prefix: format!("t{}_", support::rig::hex_id()),
        partitions: 3,
        produce_timeout: Duration::from_secs(2),
        ..KafkaSettings::default()
    }
}

fn feed() -> FeedSettings {
    FeedSettings {
        backend: FeedBackend::Kafka,
        ..support::rig::feed_settings(200)
    }
}

/// `count` events on one aggregate after `expected`, in one transaction.
fn batch(aggregate_type: &str, aggregate_id: &str, expected: u64, count: usize) -> AppendBatch {
    AppendBatch {
        streams: vec![StreamAppend {
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            expected_sequence: expected,
            events: (0..count)
                .map(|i| NewEvent {
                    event_id: Uuid::now_v7(),
                    event_type: "ticked".to_string(),
                    event_version: 1,
                    payload: format!("payload {aggregate_id} {}", expected + 1 + i as u64)
                        .into_bytes(),
                })
                .collect(),
        }],
        correlation_id: Uuid::now_v7(),
        causation_id: None,
        actor: Some("relay-test".to_string()),
        recorded_at: Utc::now(),
        idempotency: None,
        reservations: vec![],
        releases: vec![],
        new_keys: vec![],
    }
}

/// `writers` concurrent writers, each appending `rounds` batches of 1..=3 events to its own
/// aggregates (caretakers, originators and an unknown type, so three topics get traffic).
async fn write_load(store: Arc<MySqlEventStore>, tag: String, writers: usize, rounds: usize) {
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let tag = tag.clone();
        tasks.push(tokio::spawn(async move {
            let types = [CARETAKER, ORIGINATOR, "feedtest"];
            let mut sequences: BTreeMap<usize, u64> = BTreeMap::new();
            for round in 0..rounds {
                let k = round % 6;
                let aggregate_type = types[k % 3];
                let id = format!("{tag}-w{w}-a{k}");
                let expected = sequences.get(&k).copied().unwrap_or(0);
                let count = 1 + round % 3;
                store
                    .append(batch(aggregate_type, &id, expected, count))
                    .await
                    .expect("append");
                sequences.insert(k, expected + count as u64);
            }
        }));
    }
    for task in tasks {
        task.await.expect("writer");
    }
}

/// A message as the test sees it.
#[derive(Debug, Clone)]
struct Seen {
    topic: String,
    partition: i32,
    key: Option<String>,
    position: Option<u64>,
    event_id: Option<String>,
    marker: Option<u64>,
    event: Option<StoredEvent>,
}

/// A consumer reading every partition of `topics` from the beginning (no group).
fn reader(settings: &KafkaSettings, partitions: &BTreeMap<String, i32>) -> StreamConsumer {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", format!("{}reader", settings.topic_prefix))
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("test consumer");
    let mut list = TopicPartitionList::new();
    for (topic, count) in partitions {
        for partition in 0..*count {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .expect("partition");
        }
    }
    consumer.assign(&list).expect("assign");
    consumer
}

/// Reads until `done` holds for everything seen so far, or panics after `timeout`.
async fn read_until(
    consumer: &StreamConsumer,
    seen: &mut Vec<Seen>,
    timeout: Duration,
    what: &str,
    done: impl Fn(&[Seen]) -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !done(seen) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(!left.is_zero(), "timed out after {timeout:?}: {what}");
        let Ok(message) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let message = message.expect("receive");
        let marker = kafka::header(&message, MARKER_HEADER).map(|m| m.parse().expect("marker"));
        let event = match marker {
            Some(_) => None,
            None => {
                Some(kafka::decode_event(message.payload().unwrap_or_default()).expect("decode"))
            }
        };
        seen.push(Seen {
            topic: message.topic().to_string(),
            partition: message.partition(),
            key: message
                .key()
                .map(|k| String::from_utf8(k.to_vec()).expect("utf-8 key")),
            position: kafka::header(&message, POSITION_HEADER).map(|p| p.parse().expect("pos")),
            event_id: kafka::header(&message, EVENT_ID_HEADER),
            marker,
            event,
        });
    }
}

fn positions(seen: &[Seen]) -> BTreeSet<u64> {
    seen.iter()
        .filter_map(|s| s.event.as_ref().map(|e| e.position))
        .collect()
}

/// Whether every partition has a marker at or past `position`.
fn marked(seen: &[Seen], partitions: &BTreeMap<String, i32>, position: u64) -> bool {
    partitions.iter().all(|(topic, count)| {
        (0..*count).all(|p| {
            seen.iter().any(|s| {
                &s.topic == topic && s.partition == p && s.marker.is_some_and(|m| m >= position)
            })
        })
    })
}

/// Waits until the relay's stored position reaches `target`.
async fn wait_position(position: &mut watch::Receiver<u64>, target: u64, timeout: Duration) {
    let reached = tokio::time::timeout(timeout, position.wait_for(|p| *p >= target))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(
        reached,
        "relay did not reach {target} within {timeout:?} (at {})",
        *position.borrow()
    );
}

fn relay(store: &Arc<MySqlEventStore>, settings: &KafkaSettings) -> Relay {
    Relay::new(
        store.clone(),
        store.clone(),
        settings.clone(),
        feed(),
        Arc::new(Notify::new()),
    )
}

/// Every event of the store, as stored.
async fn all_events(store: &MySqlEventStore) -> Vec<StoredEvent> {
    store.read_all(0, 1_000_000).await.expect("read all")
}

/// Checks what a reader saw against the store's events: each one published (at least once)
/// to its context's topic, keyed by aggregate id, with its headers and unchanged; each
/// aggregate in one partition, in sequence order.
fn check_published(events: &[StoredEvent], seen: &[Seen], prefix: &str) {
    let mut by_position: BTreeMap<u64, Vec<&Seen>> = BTreeMap::new();
    for s in seen.iter().filter(|s| s.event.is_some()) {
        by_position
            .entry(s.event.as_ref().expect("event").position)
            .or_default()
            .push(s);
    }
    for event in events {
        let copies = by_position
            .get(&event.position)
            .unwrap_or_else(|| panic!("position {} was never published", event.position));
        let (context, key) = kafka::route(event);
        for copy in copies {
            assert_eq!(
                copy.event.as_ref(),
                Some(event),
                "the message is the stored event"
            );
            assert_eq!(copy.topic, kafka::events_topic(prefix, context));
            assert_eq!(copy.key.as_deref(), Some(key));
            assert_eq!(copy.position, Some(event.position));
            assert_eq!(copy.event_id, Some(event.event_id.to_string()));
        }
    }
    // Per aggregate: one partition, and the first delivery of each sequence in order.
    // (aggregate type, id) -> (topic, partition, sequence) of each delivery, in order.
    type Deliveries = Vec<(String, i32, u64)>;
    let mut streams: BTreeMap<(String, String), Deliveries> = BTreeMap::new();
    for s in seen {
        if let Some(e) = &s.event {
            streams
                .entry((e.aggregate_type.clone(), e.aggregate_id.clone()))
                .or_default()
                .push((s.topic.clone(), s.partition, e.sequence));
        }
    }
    for ((aggregate_type, id), deliveries) in streams {
        let places: BTreeSet<_> = deliveries.iter().map(|(t, p, _)| (t, p)).collect();
        assert_eq!(places.len(), 1, "{aggregate_type}/{id} spans partitions");
        let mut highest: Option<u64> = None;
        for (_, _, sequence) in deliveries {
            // A redelivery (after a relay restart) repeats a prefix; a new one is the next.
            if let Some(high) = highest {
                assert!(
                    sequence <= high || sequence == high + 1,
                    "{aggregate_type}/{id}: sequence {sequence} after {high}"
                );
            }
            highest = Some(highest.map_or(sequence, |high| high.max(sequence)));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_every_event_in_order_and_resumes_after_a_restart() {
    let db = support::fresh_mysql().await;
    let settings = kafka_settings(&brokers());
    let tag = support::rig::hex_id();

    // A backlog, then the relay, with writers still going.
    write_load(db.store.clone(), format!("{tag}a"), 3, 40).await;
    let first = relay(&db.store, &settings);
    let mut position = first.watch();
    let task = tokio::spawn(first.run(std::future::pending()));
    write_load(db.store.clone(), format!("{tag}b"), 3, 40).await;
    let head = db.head_position().await.expect("head");
    wait_position(&mut position, head, Duration::from_secs(20)).await;
    assert_eq!(
        db.relay_position(kernel::relay::DEFAULT_RELAY)
            .await
            .expect("stored position"),
        head,
        "the position is stored once acknowledged"
    );

    let topics = kafka::all_event_topics(&settings.topic_prefix);
    let partitions = kafka::partition_counts(&settings, &topics)
        .await
        .expect("partitions");
    assert_eq!(partitions.len(), topics.len(), "every topic exists");
    assert!(partitions.values().all(|count| *count == 3));
    let consumer = reader(&settings, &partitions);
    let mut seen = Vec::new();
    let events = all_events(&db).await;
    let expected: BTreeSet<u64> = events.iter().map(|e| e.position).collect();
    read_until(
        &consumer,
        &mut seen,
        Duration::from_secs(20),
        "every event and marker",
        |s| positions(s).is_superset(&expected) && marked(s, &partitions, head),
    )
    .await;
    check_published(&events, &seen, &settings.topic_prefix);

    // A crash, more writes, and a new relay: it starts from the stored position.
    task.abort();
    let _ = task.await;
    write_load(db.store.clone(), format!("{tag}c"), 2, 30).await;
    let second = relay(&db.store, &settings);
    let mut position = second.watch();
    let task = tokio::spawn(second.run(std::future::pending()));
    let new_head = db.head_position().await.expect("head");
    wait_position(&mut position, new_head, Duration::from_secs(20)).await;
    let events = all_events(&db).await;
    let expected: BTreeSet<u64> = events.iter().map(|e| e.position).collect();
    read_until(
        &consumer,
        &mut seen,
        Duration::from_secs(20),
        "the new events",
        |s| positions(s).is_superset(&expected) && marked(s, &partitions, new_head),
    )
    .await;
    check_published(&events, &seen, &settings.topic_prefix);
    let copies_of_old = seen
        .iter()
        .filter(|s| s.event.as_ref().is_some_and(|e| e.position <= head))
        .count();
    assert_eq!(
        copies_of_old,
        events.iter().filter(|e| e.position <= head).count(),
        "the restarted relay resumed after its stored position, not from the start"
    );
    task.abort();
}

/// Inserts one event row inside `tx` without committing it; returns its position.
async fn insert_uncommitted(tx: &mut Transaction<'static, MySql>, aggregate_id: &str) -> u64 {
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, event_id, correlation_id, causation_id, actor, recorded_at, payload) \
         VALUES ('caretaker', ?, 1, 'ticked', 1, ?, ?, NULL, NULL, ?, 'held')",
    )
    .bind(aggregate_id)
    .bind(&Uuid::now_v7().as_bytes()[..])
    .bind(&Uuid::now_v7().as_bytes()[..])
    .bind(Utc::now().timestamp_micros())
    .execute(&mut **tx)
    .await
    .expect("insert inside the held transaction")
    .last_insert_id()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_waits_for_a_held_open_transaction_and_releases_a_rolled_back_gap() {
    let db = support::fresh_mysql().await;
    let settings = kafka_settings(&brokers());
    let first = db
        .append(batch(CARETAKER, "before", 0, 1))
        .await
        .expect("append")
        .position;
    let relay = relay(&db.store, &settings);
    let mut position = relay.watch();
    let task = tokio::spawn(relay.run(std::future::pending()));
    wait_position(&mut position, first, Duration::from_secs(20)).await;

    // p is open, q > p commits: for as long as p is open the relay stays before it.
    let mut held = db.pool().begin().await.expect("begin");
    let p = insert_uncommitted(&mut held, "held").await;
    let q = db
        .append(batch(CARETAKER, "after", 0, 1))
        .await
        .expect("append q")
        .position;
    assert!(q > p);
    let moved = tokio::time::timeout(Duration::from_secs(1), position.wait_for(|at| *at >= p))
        .await
        .is_ok();
    assert!(
        !moved,
        "the relay moved to {} past the open p={p}",
        *position.borrow()
    );
    held.commit().await.expect("commit p");
    wait_position(&mut position, q, Duration::from_secs(10)).await;

    // p2 is open, q2 commits, p2 rolls back: the relay gets past it in a bounded time although
    // gap_max_wait is a minute, and p2 never shows up.
    let mut held = db.pool().begin().await.expect("begin");
    let p2 = insert_uncommitted(&mut held, "rolled-back").await;
    let q2 = db
        .append(batch(CARETAKER, "after-2", 0, 1))
        .await
        .expect("append q2")
        .position;
    let moved = tokio::time::timeout(
        Duration::from_millis(500),
        position.wait_for(|at| *at >= p2),
    )
    .await
    .is_ok();
    assert!(
        !moved,
        "the relay moved to {} past the open p2={p2} (p={p}, q={q}, q2={q2})",
        *position.borrow()
    );
    held.rollback().await.expect("roll back p2");
    let rolled_back = Instant::now();
    wait_position(&mut position, q2, Duration::from_secs(10)).await;
    eprintln!("rolled-back gap released after {:?}", rolled_back.elapsed());

    let topics = kafka::all_event_topics(&settings.topic_prefix);
    let partitions = kafka::partition_counts(&settings, &topics)
        .await
        .expect("partitions");
    let consumer = reader(&settings, &partitions);
    let mut seen = Vec::new();
    let events = all_events(&db).await;
    let expected: BTreeSet<u64> = events.iter().map(|e| e.position).collect();
    assert!(expected.contains(&p) && !expected.contains(&p2));
    read_until(
        &consumer,
        &mut seen,
        Duration::from_secs(20),
        "p, q and q2",
        |s| positions(s).is_superset(&expected) && marked(s, &partitions, q2),
    )
    .await;
    assert!(
        !positions(&seen).contains(&p2),
        "a rolled-back position was published"
    );
    check_published(&events, &seen, &settings.topic_prefix);
    task.abort();
}

/// A tansu broker of the test's own, on a free port, killed and restarted at will.
struct PrivateBroker {
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateBroker {
    fn binary() -> std::path::PathBuf {
        if let Ok(path) = std::env::var("TANSU") {
            return path.into();
        }
        let home = std::env::var("HOME").unwrap_or_default();
        let installed = std::path::Path::new(&home).join(".cargo/bin/tansu");
        if installed.exists() {
            installed
        } else {
            "tansu".into()
        }
    }

    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("a free port")
            .local_addr()
            .expect("addr")
            .port();
        let mut broker = PrivateBroker { port, child: None };
        broker.restart().await;
        broker
    }

    fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        assert!(self.child.is_none(), "the broker is already running");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = std::process::Command::new(Self::binary())
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start tansu (scripts/install-deps.sh installs it)");
        self.child = Some(child);
        support::rig::poll_until(Duration::from_secs(20), "tansu listens", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_outage_loses_no_acknowledged_event() {
    // The relay's retries, for a failure's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter("kernel=info")
        .with_test_writer()
        .try_init();
    let db = support::fresh_mysql().await;
    let mut broker = PrivateBroker::start().await;
    let settings = kafka_settings(&broker.brokers());
    let tag = support::rig::hex_id();

    let relay = relay(&db.store, &settings);
    let mut position = relay.watch();
    let task = tokio::spawn(relay.run(std::future::pending()));
    write_load(db.store.clone(), format!("{tag}a"), 2, 30).await;
    let before = db.head_position().await.expect("head");
    wait_position(&mut position, before, Duration::from_secs(30)).await;

    // The broker dies while writes go on: every write is still acknowledged by the store.
    let writers = tokio::spawn(write_load(db.store.clone(), format!("{tag}b"), 2, 60));
    support::rig::poll_until(
        Duration::from_secs(10),
        "writes reach the relay",
        || async { (*position.borrow() > before).then_some(()) },
    )
    .await;
    broker.kill();
    let down_at = db.head_position().await.expect("head");
    support::rig::poll_until(
        Duration::from_secs(20),
        "writes while the broker is down",
        || async {
            let head = db.head_position().await.expect("head");
            (head > down_at + 20).then_some(())
        },
    )
    .await;
    // Nothing can be acknowledged now; the relay's position stays where the old broker left it.
    let stored = *position.borrow();
    assert!(stored < db.head_position().await.expect("head"));
    assert_eq!(
        db.relay_position(kernel::relay::DEFAULT_RELAY)
            .await
            .expect("stored"),
        stored
    );

    // The broker comes back (empty: tansu keeps topics in memory). The relay recreates the
    // topics and publishes everything after its stored position.
    broker.restart().await;
    let restarted = Instant::now();
    writers.await.expect("writers");
    let head = db.head_position().await.expect("head");
    wait_position(&mut position, head, Duration::from_secs(40)).await;
    eprintln!(
        "relay caught up {:?} after the broker came back (stored {stored}, head {head})",
        restarted.elapsed()
    );

    let topics = kafka::all_event_topics(&settings.topic_prefix);
    let partitions = kafka::partition_counts(&settings, &topics)
        .await
        .expect("partitions");
    let consumer = reader(&settings, &partitions);
    let mut seen = Vec::new();
    let after: Vec<StoredEvent> = all_events(&db)
        .await
        .into_iter()
        .filter(|e| e.position > stored)
        .collect();
    assert!(after.len() > 20, "events were written during the outage");
    let expected: BTreeSet<u64> = after.iter().map(|e| e.position).collect();
    read_until(
        &consumer,
        &mut seen,
        Duration::from_secs(20),
        "every event after the stored position",
        |s| positions(s).is_superset(&expected) && marked(s, &partitions, head),
    )
    .await;
    check_published(&after, &seen, &settings.topic_prefix);
    task.abort();
}

/// The relay's position store on both backends: 0 at first, then only forward.
async fn positions_only_move_forward(store: &dyn RelayCheckpoints) {
    assert_eq!(store.relay_position("kafka").await.expect("read"), 0);
    store
        .store_relay_position("kafka", 7)
        .await
        .expect("first store");
    store
        .store_relay_position("kafka", 12)
        .await
        .expect("forward");
    store
        .store_relay_position("kafka", 9)
        .await
        .expect("back is ignored");
    assert_eq!(store.relay_position("kafka").await.expect("read"), 12);
    store
        .store_relay_position("other", 3)
        .await
        .expect("another relay");
    assert_eq!(store.relay_position("other").await.expect("read"), 3);
    assert_eq!(store.relay_position("kafka").await.expect("read"), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_positions_only_move_forward_on_mariadb_and_sqlite() {
    let mysql = support::fresh_mysql().await;
    positions_only_move_forward(&*mysql.store).await;
    let sqlite = support::fresh_sqlite().await;
    positions_only_move_forward(&*sqlite.store).await;
}
