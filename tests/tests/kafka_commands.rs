//! Commands over Kafka (tansu on 127.0.0.1:9092): a command on `<context>-commands` runs
//! through the same route stack as HTTP and its reply arrives on `<context>-responses`,
//! correlated by command id; a redelivered command appends nothing new; bad tokens, foreign
//! routes and malformed messages get problem replies.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};

use kernel::adapters::kafka::{ensure_topics, producer_config};
use kernel::adapters::kafka_commands::{commands_topic, responses_topic, CommandReply};
use kernel::config::{FeedBackend, KafkaSettings};
use kernel::domain::Context;
use quintet_tests::{spawn_app_with, Backend, TestApp};
use web::Role;

fn kafka(prefix: &str) -> KafkaSettings {
    KafkaSettings {
        brokers: std::env::var("KAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        topic_prefix: prefix.to_string(),
        partitions: 1,
        produce_timeout: Duration::from_secs(5),
        ..KafkaSettings::default()
    }
}

async fn send(producer: &FutureProducer, topic: &str, token: Option<&str>, value: &[u8]) {
    let bearer = token.map(|token| format!("Bearer {token}"));
    let mut headers = OwnedHeaders::new();
    if let Some(bearer) = &bearer {
        headers = headers.insert(Header {
            key: "authorization",
            value: Some(bearer.as_str()),
        });
    }
    producer
        .send(
            FutureRecord::<(), [u8]>::to(topic)
                .payload(value)
                .headers(headers),
            Duration::from_secs(5),
        )
        .await
        .expect("command produced");
}

/// Reads replies until one arrived for each of `ids`.
async fn replies(consumer: &StreamConsumer, ids: &[&str]) -> HashMap<String, Vec<CommandReply>> {
    let mut seen: HashMap<String, Vec<CommandReply>> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ids.iter().all(|id| seen.contains_key(*id)) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "no reply for some of {ids:?}; got {seen:?}"
        );
        let Ok(message) = tokio::time::timeout(left, consumer.recv()).await else {
            continue;
        };
        let message = message.expect("reply received");
        let reply: CommandReply =
            serde_json::from_slice(message.payload().unwrap_or_default()).expect("reply JSON");
        seen.entry(reply.command_id.clone())
            .or_default()
            .push(reply);
    }
    seen
}

fn command(id: &str, method: &str, path: &str, body: Value) -> Vec<u8> {
    json!({ "command_id": id, "method": method, "path": path, "body": body })
        .to_string()
        .into_bytes()
}

async fn caretaker_events(app: &TestApp, name: &str) -> usize {
    app.engine
        .store()
        .load_stream("caretaker", name, 0)
        .await
        .expect("stream")
        .len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_over_kafka_reply_once_and_append_once() {
    let prefix = format!("t{}_", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let settings = kafka(&prefix);
    let configured = settings.clone();
    let app = spawn_app_with(Backend::MariaDb, move |s| {
        s.feed.backend = FeedBackend::Kafka;
        s.kafka = configured;
    })
    .await;
    let input = commands_topic(&prefix, Context::Memento);
    let output = responses_topic(&prefix, Context::Memento);
    ensure_topics(&settings, &[input.clone(), output.clone()])
        .await
        .expect("topics");
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &settings.brokers)
        .set("group.id", format!("{prefix}test-replies"))
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .expect("reply consumer");
    let mut partitions = TopicPartitionList::new();
    partitions
        .add_partition_offset(&output, 0, Offset::Beginning)
        .expect("partition");
    consumer.assign(&partitions).expect("assign");
    let producer: FutureProducer = producer_config(&settings).create().expect("producer");
    let writer = app.token(Role::Writer);
    let reader = app.token(Role::Reader);

    let create = command(
        "cmd-1",
        "POST",
        "/mementos/caretakers",
        json!({ "name": "kc1" }),
    );
    send(&producer, &input, Some(&writer), &create).await;
    // The same command again (a producer retry, or a redelivery): one effect, same answer.
    send(&producer, &input, Some(&writer), &create).await;
    send(
        &producer,
        &input,
        Some(&reader),
        &command(
            "cmd-reader",
            "POST",
            "/mementos/caretakers",
            json!({ "name": "kc2" }),
        ),
    )
    .await;
    send(
        &producer,
        &input,
        Some("not-a-token"),
        &command(
            "cmd-badtoken",
            "POST",
            "/mementos/caretakers",
            json!({ "name": "kc3" }),
        ),
    )
    .await;
    send(
        &producer,
        &input,
        Some(&writer),
        &command("cmd-foreign", "POST", "/users", json!({ "name": "x" })),
    )
    .await;
    send(
        &producer,
        &input,
        Some(&writer),
        &command(
            "cmd-invalid",
            "POST",
            "/mementos/caretakers",
            json!({ "name": "" }),
        ),
    )
    .await;
    send(
        &producer,
        &input,
        Some(&writer),
        br#"{"command_id": "cmd-garbled", "method": 3}"#,
    )
    .await;

    let got = replies(
        &consumer,
        &[
            "cmd-1",
            "cmd-reader",
            "cmd-badtoken",
            "cmd-foreign",
            "cmd-invalid",
            "cmd-garbled",
        ],
    )
    .await;
    // Both deliveries of cmd-1 are answered alike.
    let mut first = got["cmd-1"].clone();
    if first.len() < 2 {
        let more = replies(&consumer, &["cmd-1"]).await;
        first.extend(more["cmd-1"].clone());
    }
    assert_eq!(first[0].status, 201, "{:?}", first[0]);
    assert_eq!(first[0].body["aggregate_id"], "kc1");
    assert!(first[0].body["position"].as_u64() > Some(0));
    assert_eq!(
        first[1], first[0],
        "a redelivered command gets the first result"
    );
    assert_eq!(caretaker_events(&app, "kc1").await, 1);

    let status = |id: &str| got[id][0].status;
    assert_eq!(status("cmd-reader"), 403);
    assert_eq!(status("cmd-badtoken"), 401);
    assert_eq!(status("cmd-foreign"), 422);
    assert_eq!(status("cmd-invalid"), 422);
    assert_eq!(status("cmd-garbled"), 400);
    for id in [
        "cmd-reader",
        "cmd-badtoken",
        "cmd-foreign",
        "cmd-invalid",
        "cmd-garbled",
    ] {
        assert!(
            got[id][0].body["title"].is_string(),
            "{id}: problem body {:?}",
            got[id][0]
        );
    }
    assert_eq!(caretaker_events(&app, "kc2").await, 0);
    assert_eq!(caretaker_events(&app, "kc3").await, 0);
}
