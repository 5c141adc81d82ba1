//! Commands over Kafka: each record of a `<context>-commands` topic is run through the very
//! same route stack as an HTTP request (token, role and scope checks, limits, validation,
//! idempotency), and the answer goes to `<context>-responses`. The wire format and delivery
//! rules are in `kernel::adapters::kafka_commands`.

use std::time::Duration;

use poem::http::{header, Method};
use poem::{Endpoint, Response};
use serde_json::Value;

use kernel::adapters::kafka::ensure_topics;
use kernel::adapters::kafka_commands::{
    commands_topic, responses_topic, CommandConsumer, CommandMessage, CommandRecord, CommandReply,
    ReplyProducer,
};
use kernel::config::KafkaSettings;
use kernel::domain::Context;
use kernel::KernelResult;
use web::ApiError;

/// The contexts that take commands (a route belongs to the context `context_of_route` says).
pub const COMMAND_CONTEXTS: [Context; 5] = [
    Context::Memento,
    Context::Repository,
    Context::Mediator,
    Context::EventSourcing,
    Context::Command,
];

/// Largest command accepted from a topic, as over HTTP the body limit applies on top.
const MAX_COMMAND_BYTES: usize = 4 << 20;
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Consumes commands until `shutdown`, starting over after a failure (uncommitted commands
/// are redelivered and absorbed by idempotency).
pub async fn run<E>(kafka: KafkaSettings, app: E, shutdown: impl std::future::Future<Output = ()>)
where
    E: Endpoint<Output = Response>,
{
    tokio::pin!(shutdown);
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            outcome = run_once(&kafka, &app) => {
                if let Err(err) = outcome {
                    tracing::warn!(error = %err, "command ingress stopped; restarting");
                }
            }
        }
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn run_once<E>(kafka: &KafkaSettings, app: &E) -> KernelResult<()>
where
    E: Endpoint<Output = Response>,
{
    let prefix = &kafka.topic_prefix;
    let mut topics = Vec::new();
    for context in COMMAND_CONTEXTS {
        topics.push(commands_topic(prefix, context));
        topics.push(responses_topic(prefix, context));
    }
    ensure_topics(kafka, &topics).await?;
    let inputs: Vec<String> = COMMAND_CONTEXTS
        .iter()
        .map(|context| commands_topic(prefix, *context))
        .collect();
    let consumer =
        CommandConsumer::subscribe(kafka, &format!("{prefix}write-api-commands"), &inputs)?;
    let replies = ReplyProducer::new(kafka)?;
    tracing::info!(topics = ?inputs, "command ingress consuming");
    loop {
        let record = consumer.next().await?;
        let Some(context) = COMMAND_CONTEXTS
            .into_iter()
            .find(|context| commands_topic(prefix, *context) == record.topic)
        else {
            consumer.store_offset(&record)?;
            continue;
        };
        let reply = handle(app, context, &record).await;
        tracing::debug!(command_id = %reply.command_id, status = reply.status, "command handled");
        replies
            .send(&responses_topic(prefix, context), &reply)
            .await?;
        consumer.store_offset(&record)?;
    }
}

/// Runs one command record through the app and returns its reply.
pub async fn handle<E>(app: &E, context: Context, record: &CommandRecord) -> CommandReply
where
    E: Endpoint<Output = Response>,
{
    let command = match parse(context, &record.payload) {
        Ok(command) => command,
        Err((command_id, err)) => {
            return CommandReply {
                command_id,
                status: err.status().as_u16(),
                body: serde_json::to_value(err.body()).unwrap_or(Value::Null),
            };
        }
    };
    let body = command
        .body
        .as_ref()
        .map(|body| body.to_string())
        .unwrap_or_default();
    let mut request = poem::Request::builder()
        .method(Method::from_bytes(command.method.as_bytes()).unwrap_or(Method::POST))
        .uri_str(format!("{}{}", web::server::API_PREFIX, command.path))
        .header("Idempotency-Key", command.command_id.as_str());
    if command.body.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    if let Some(authorization) = &record.authorization {
        request = request.header(header::AUTHORIZATION, authorization.as_str());
    }
    if let Some(if_match) = &command.if_match {
        request = request.header(header::IF_MATCH, if_match.as_str());
    }
    let response = app.get_response(request.body(body)).await;
    let status = response.status().as_u16();
    let bytes = response.into_body().into_bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    CommandReply {
        command_id: command.command_id,
        status,
        body,
    }
}

/// Decodes and checks a command: a write method, and a path of the topic's context.
fn parse(context: Context, payload: &[u8]) -> Result<CommandMessage, (String, ApiError)> {
    if payload.len() > MAX_COMMAND_BYTES {
        return Err((
            String::new(),
            ApiError::PayloadTooLarge(format!("commands are at most {MAX_COMMAND_BYTES} bytes")),
        ));
    }
    let command: CommandMessage = serde_json::from_slice(payload).map_err(|err| {
        // Reply under the id if one can be read at all, so the sender can correlate.
        let command_id = serde_json::from_slice::<Value>(payload)
            .ok()
            .and_then(|value| value.get("command_id")?.as_str().map(str::to_string))
            .unwrap_or_default();
        let error = ApiError::BadRequest {
            detail: format!("command: {err}"),
            errors: Vec::new(),
        };
        (command_id, error)
    })?;
    let id = command.command_id.clone();
    if id.is_empty() || id.len() > 255 {
        return Err((
            id,
            ApiError::invalid("command_id", "must be 1 to 255 characters"),
        ));
    }
    if !matches!(command.method.as_str(), "POST" | "PUT" | "DELETE") {
        return Err((
            id,
            ApiError::invalid("method", "must be POST, PUT or DELETE"),
        ));
    }
    let allowed_chars = command
        .path
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-~%".contains(c));
    if !allowed_chars
        || command.path.contains("..")
        || web::auth::context_of_route(&command.path) != Some(context.as_str())
    {
        return Err((
            id,
            ApiError::invalid(
                "path",
                format!("must be a write route of the {} context", context.as_str()),
            ),
        ));
    }
    Ok(command)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(context: Context, value: Value) -> Result<CommandMessage, (String, u16)> {
        parse(context, value.to_string().as_bytes())
            .map_err(|(id, err)| (id, err.status().as_u16()))
    }

    #[test]
    fn commands_must_be_write_routes_of_their_topic_context() {
        let ok = parsed(
            Context::Memento,
            serde_json::json!({"command_id": "c1", "method": "POST", "path": "/mementos/caretakers", "body": {"name": "x"}}),
        );
        assert!(ok.is_ok());
        let wrong_context = parsed(
            Context::Memento,
            serde_json::json!({"command_id": "c2", "method": "POST", "path": "/users"}),
        );
        assert_eq!(wrong_context.err(), Some(("c2".into(), 422)));
        let read = parsed(
            Context::Memento,
            serde_json::json!({"command_id": "c3", "method": "GET", "path": "/mementos/caretakers"}),
        );
        assert_eq!(read.err(), Some(("c3".into(), 422)));
        let escape = parsed(
            Context::Memento,
            serde_json::json!({"command_id": "c4", "method": "POST", "path": "/mementos/../users"}),
        );
        assert_eq!(escape.err(), Some(("c4".into(), 422)));
        let query = parsed(
            Context::Memento,
            serde_json::json!({"command_id": "c5", "method": "POST", "path": "/mementos/caretakers?x=1"}),
        );
        assert_eq!(query.err(), Some(("c5".into(), 422)));
    }

    #[test]
    fn malformed_commands_reply_400_under_the_id_when_it_can_be_read() {
        let unknown_field = parsed(
            Context::Memento,
            serde_json::json!({"command_id": "c6", "method": "POST", "path": "/originators", "extra": 1}),
        );
        assert_eq!(unknown_field.err(), Some(("c6".into(), 400)));
        let garbage = parse(Context::Memento, b"\xff not json")
            .map_err(|(id, err)| (id, err.status().as_u16()));
        assert_eq!(garbage.err(), Some((String::new(), 400)));
    }
}
