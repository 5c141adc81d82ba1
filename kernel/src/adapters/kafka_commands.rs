//! Kafka command topics: commands come in on `{prefix}{context}-commands`, and each one's
//! reply goes out on `{prefix}{context}-responses`, keyed and headed by its command id.
//!
//! Wire format (contract): the command value is JSON
//! `{"command_id", "method", "path", "body"?, "if_match"?}` where `method` and `path` name a
//! write route (relative to `/api/v1`), and the token travels in the `authorization` header
//! (`Bearer <jwt>`), checked exactly as over HTTP. The reply value is JSON
//! `{"command_id", "status", "body"}` with the HTTP status and body the route answered
//! (problem+json for errors).
//!
//! Delivery: a consumer stores a command's offset only after its reply was acknowledged, so a
//! crash redelivers the command; the command id doubles as the idempotency key, so the
//! redelivered command appends nothing new and gets the first result again.

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};

use super::kafka::{header, producer_config, subscribed, TracingContext};
use crate::config::KafkaSettings;
use crate::domain::Context;
use crate::error::{KernelError, KernelResult};

/// The header carrying `Bearer <jwt>`.
pub const AUTHORIZATION_HEADER: &str = "authorization";
/// The header carrying the command id on commands and replies.
pub const COMMAND_ID_HEADER: &str = "command_id";

pub fn commands_topic(prefix: &str, context: Context) -> String {
    format!("{prefix}{}-commands", context.as_str())
}

pub fn responses_topic(prefix: &str, context: Context) -> String {
    format!("{prefix}{}-responses", context.as_str())
}

/// A command as it travels on a commands topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandMessage {
    pub command_id: String,
    /// `POST`, `PUT` or `DELETE`.
    pub method: String,
    /// A write route relative to `/api/v1`, e.g. `/mementos/caretakers`.
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// The `If-Match` value, for routes that take one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub if_match: Option<String>,
}

/// The reply to a command, on the responses topic of its context.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandReply {
    /// The command's id; empty when the message had none that could be read.
    pub command_id: String,
    pub status: u16,
    pub body: serde_json::Value,
}

/// A record read from a commands topic, undecoded.
#[derive(Debug, Clone)]
pub struct CommandRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub authorization: Option<String>,
    pub payload: Vec<u8>,
}

fn kafka_error(what: &str, err: impl std::fmt::Display) -> KernelError {
    KernelError::Storage(format!("kafka {what}: {err}"))
}

/// A group consumer of commands topics, with offsets stored by hand.
pub struct CommandConsumer {
    consumer: StreamConsumer<TracingContext>,
}

impl CommandConsumer {
    pub fn subscribe(
        settings: &KafkaSettings,
        group: &str,
        topics: &[String],
    ) -> KernelResult<Self> {
        Ok(Self {
            consumer: subscribed(settings, group, topics)?,
        })
    }

    /// The next record. Cancel-safe.
    pub async fn next(&self) -> KernelResult<CommandRecord> {
        let message = self
            .consumer
            .recv()
            .await
            .map_err(|err| kafka_error("receive", err))?;
        Ok(CommandRecord {
            topic: message.topic().to_string(),
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            authorization: header(&message, AUTHORIZATION_HEADER),
            payload: message.payload().unwrap_or_default().to_vec(),
        })
    }

    /// Marks `record` handled: the next commit starts after it.
    pub fn store_offset(&self, record: &CommandRecord) -> KernelResult<()> {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(
            &record.topic,
            record.partition,
            Offset::Offset(record.offset + 1),
        )
        .map_err(|err| kafka_error("offset list", err))?;
        match self.consumer.store_offsets(&list) {
            // A revoked partition: its new owner redelivers, and idempotency absorbs it.
            Ok(()) | Err(rdkafka::error::KafkaError::StoreOffset(_)) => Ok(()),
            Err(err) => Err(kafka_error("store offset", err)),
        }
    }
}

/// Sends replies (idempotent, `acks=all`) and waits for each acknowledgement.
pub struct ReplyProducer {
    producer: FutureProducer,
    timeout: Duration,
}

impl ReplyProducer {
    pub fn new(settings: &KafkaSettings) -> KernelResult<Self> {
        Ok(Self {
            producer: producer_config(settings)
                .create()
                .map_err(|err| kafka_error("producer", err))?,
            timeout: settings.produce_timeout,
        })
    }

    pub async fn send(&self, topic: &str, reply: &CommandReply) -> KernelResult<()> {
        let value = serde_json::to_vec(reply)?;
        let headers = OwnedHeaders::new().insert(Header {
            key: COMMAND_ID_HEADER,
            value: Some(reply.command_id.as_bytes()),
        });
        let record = FutureRecord::to(topic)
            .key(reply.command_id.as_bytes())
            .payload(&value)
            .headers(headers);
        self.producer
            .send(record, self.timeout)
            .await
            .map(|_| ())
            .map_err(|(err, _)| kafka_error("reply", err))
    }
}
