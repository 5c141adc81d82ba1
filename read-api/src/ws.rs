//! `GET /ws`: the event stream. Authenticate (subprotocol, `access_token`, or a first
//! `{"auth": ...}` message), then `{"subscribe": {...}}` with optional filters and
//! `from_position`: the server replays from the store up to the live feed's position, then
//! goes live, with no gap and no duplicate at the seam. Slow consumers are closed (4008);
//! an expired token closes the socket (4001).
//!
//! A token that acts for a user ([`Claims::acting_user`]) receives only the events of the
//! aggregates that user owns and of the shared ones, in the replay and live alike: see
//! [`crate::stream_owner`].

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use poem::web::websocket::{Message, WebSocket, WebSocketConfig};
use poem::web::{Data, Query};
use poem::{handler, IntoResponse, Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;

use kernel::envelope::RecordedEvent;
use web::{ApiError, Claims, JwtKeys, Role};

use crate::stream_owner::OwnerFilter;
use crate::ReadState;

/// Close codes of our own (4000-4999 are for applications).
pub const CLOSE_UNAUTHORIZED: u16 = 4001;
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
const REPLAY_BATCH: u32 = 500;

#[derive(Debug, Deserialize)]
pub struct ConnectParams {
    access_token: Option<String>,
}

/// A client message.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientMessage {
    pub auth: Option<String>,
    pub subscribe: Option<Subscription>,
}

/// What a client wants to receive.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Subscription {
    #[serde(default)]
    pub contexts: Vec<String>,
    pub aggregate_id: Option<String>,
    #[serde(default)]
    pub event_types: Vec<String>,
    pub colleague_id: Option<String>,
    pub from_position: Option<u64>,
    /// The contexts the token's scope allows (set by the server, never by the client).
    #[serde(skip)]
    pub allowed_contexts: Option<Vec<String>>,
}

impl Subscription {
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        self.allowed_contexts
            .as_ref()
            .is_none_or(|allowed| allowed.iter().any(|c| c == event.context))
            && (self.contexts.is_empty() || self.contexts.iter().any(|c| c == event.context))
            && self
                .aggregate_id
                .as_ref()
                .is_none_or(|id| *id == event.aggregate_id)
            && (self.event_types.is_empty() || self.event_types.contains(&event.event_type))
            && self
                .colleague_id
                .as_ref()
                .is_none_or(|colleague| addressed_to(event, colleague))
    }
}

/// Whether a mediator message reaches `colleague`: sent to it, or broadcast by another.
fn addressed_to(event: &RecordedEvent, colleague: &str) -> bool {
    let Some(data) = &event.data else {
        return false;
    };
    let field = |name: &str| data.get(name).and_then(Value::as_str);
    match event.event_type.as_str() {
        "message_sent" => field("recipient_id") == Some(colleague),
        "message_broadcasted" => {
            field("sender_id") != Some(colleague)
                && data
                    .get("recipients")
                    .and_then(Value::as_array)
                    .is_none_or(|all| all.iter().any(|r| r.as_str() == Some(colleague)))
        }
        _ => false,
    }
}

/// Parses a client frame; never panics, whatever the input.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, String> {
    serde_json::from_str(text).map_err(|err| format!("invalid message: {err}"))
}

/// The wire form of an event.
pub fn event_message(event: &RecordedEvent) -> String {
    let data = event.data.as_ref().map(|data| {
        let mut data = data.clone();
        if let Some(map) = data.as_object_mut() {
            map.remove("type");
        }
        data
    });
    json!({
        "type": event.event_type,
        "context": event.context,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "sequence": event.sequence,
        "position": event.position,
        "timestamp": event.recorded_at.to_rfc3339(),
        "data": data,
    })
    .to_string()
}

fn origin_allowed(req: &Request, allowed: &[String]) -> bool {
    if allowed.iter().any(|origin| origin == "*") {
        return true;
    }
    match req
        .headers()
        .get("origin")
        .and_then(|value| value.to_str().ok())
    {
        // Non-browser clients send no Origin; browsers always do.
        None => true,
        Some(origin) => allowed.iter().any(|allowed| allowed == origin),
    }
}

/// The token from the `Sec-WebSocket-Protocol` list (`bearer, <jwt>`) or `access_token`.
fn connect_token(req: &Request, params: &ConnectParams) -> Option<String> {
    let from_protocol = req
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|value| value.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .map(str::trim)
                .find(|item| item.matches('.').count() == 2)
                .map(str::to_string)
        });
    from_protocol.or_else(|| params.access_token.clone())
}

#[handler]
pub async fn stream(
    req: &Request,
    ws: WebSocket,
    Query(params): Query<ConnectParams>,
    state: Data<&ReadState>,
    keys: Data<&JwtKeys>,
) -> Response {
    if !origin_allowed(req, &state.websocket.allowed_origins) {
        return ApiError::Forbidden("this Origin is not allowed".into()).into_response();
    }
    let claims = match connect_token(req, &params) {
        Some(token) => match keys.verify(&token).and_then(|claims| {
            claims.require(Role::Reader)?;
            Ok(claims)
        }) {
            Ok(claims) => Some(claims),
            Err(err) => return err.into_response(),
        },
        None => None,
    };
    let state = state.0.clone();
    let keys = keys.0.clone();
    let config = WebSocketConfig::default()
        .max_message_size(Some(state.websocket.max_frame_bytes))
        .max_frame_size(Some(state.websocket.max_frame_bytes));
    ws.protocols(["bearer"])
        .config(config)
        .on_upgrade(move |socket| async move {
            let (sink, stream) = socket.split();
            let mut session = Session {
                state,
                keys,
                sink: Box::pin(sink),
                stream: Box::pin(stream),
                owners: None,
            };
            if let Err(reason) = session.run(claims).await {
                tracing::debug!(%reason, "websocket closed");
            }
        })
        .into_response()
}

type Sink = std::pin::Pin<Box<dyn futures::Sink<Message, Error = std::io::Error> + Send>>;
type Stream =
    std::pin::Pin<Box<dyn futures::Stream<Item = Result<Message, std::io::Error>> + Send>>;

struct Session {
    state: ReadState,
    keys: JwtKeys,
    sink: Sink,
    stream: Stream,
    /// What a token acting for a user may receive; `None` for other tokens.
    owners: Option<OwnerFilter>,
}

/// Whether an event that matches the subscription may go to this connection's token
/// (always, unless it acts for a user). Call [`OwnerFilter::observe`] first.
async fn owner_allows(
    owners: &mut Option<OwnerFilter>,
    state: &ReadState,
    event: &RecordedEvent,
) -> Result<bool, String> {
    match owners {
        None => Ok(true),
        Some(owners) => owners
            .allows(state, event)
            .await
            .map_err(|err| err.to_string()),
    }
}

impl Session {
    /// Sends a frame; a client that does not take it in time is dropped.
    async fn send(&mut self, text: String) -> Result<(), String> {
        let limit = self.state.websocket.send_timeout;
        match tokio::time::timeout(limit, self.sink.send(Message::Text(text))).await {
            Ok(sent) => sent.map_err(|err| err.to_string()),
            Err(_) => {
                metrics::counter!("quintet_ws_stalled_total").increment(1);
                Err("client stalled: send timed out".into())
            }
        }
    }

    async fn close(&mut self, code: u16, reason: &str) -> Result<(), String> {
        let limit = self.state.websocket.send_timeout;
        let _ =
            tokio::time::timeout(limit, self.sink.send(Message::close_with(code, reason))).await;
        Err(reason.to_string())
    }

    async fn run(&mut self, claims: Option<Claims>) -> Result<(), String> {
        let claims = match claims {
            Some(claims) => claims,
            None => self.authenticate().await?,
        };
        self.owners = claims.acting_user().map(OwnerFilter::new);
        let expires = tokio::time::Instant::now()
            + Duration::from_secs(
                claims
                    .exp
                    .saturating_sub(chrono::Utc::now().timestamp().max(0) as u64),
            );
        // Nothing flows before the first subscription, so a `from_position` replay can never
        // repeat events the client already got live.
        let allowed_contexts: Option<Vec<String>> = claims
            .scope
            .as_ref()
            .map(|scope| scope.split_whitespace().map(str::to_string).collect());
        let Some(mut subscription) = self.first_subscription(expires).await? else {
            return Ok(());
        };
        subscription.allowed_contexts.clone_from(&allowed_contexts);
        'subscribed: loop {
            let (live_from, mut live) = self.state.hub.subscribe();
            let mut sent_up_to = live_from;
            if let Some(from) = subscription.from_position {
                self.replay(&subscription, from, live_from).await?;
            }
            self.send(json!({"type": "subscribed", "position": live_from}).to_string())
                .await?;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep_until(expires) => {
                        return self.close(CLOSE_UNAUTHORIZED, "token expired").await;
                    }
                    received = live.recv() => match received {
                        Ok(event) => {
                            if let Some(owners) = &mut self.owners {
                                owners.observe(&event);
                            }
                            if event.position > sent_up_to
                                && subscription.matches(&event)
                                && owner_allows(&mut self.owners, &self.state, &event).await?
                            {
                                self.send(event_message(&event)).await?;
                            }
                            sent_up_to = sent_up_to.max(event.position);
                        }
                        Err(RecvError::Lagged(_)) => {
                            metrics::counter!("quintet_ws_slow_consumers_total").increment(1);
                            return self.close(CLOSE_SLOW_CONSUMER, "slow consumer: buffer full").await;
                        }
                        Err(RecvError::Closed) => return self.close(1001, "server shutting down").await,
                    },
                    incoming = self.stream.next() => match incoming {
                        Some(Ok(Message::Text(text))) => {
                            if let Some(next) = self.subscription_in(&text).await? {
                                subscription = Subscription { allowed_contexts: allowed_contexts.clone(), ..next };
                                continue 'subscribed;
                            }
                        }
                        Some(Ok(Message::Close(_))) | None => return Ok(()),
                        Some(Ok(_)) => {}
                        Some(Err(err)) => return Err(err.to_string()),
                    }
                }
            }
        }
    }

    /// The subscription a client frame carries; anything else gets an error frame back.
    async fn subscription_in(&mut self, text: &str) -> Result<Option<Subscription>, String> {
        let detail = match parse_client_message(text) {
            Ok(ClientMessage {
                subscribe: Some(subscription),
                ..
            }) => return Ok(Some(subscription)),
            Ok(_) => "expected {\"subscribe\": {...}}".to_string(),
            Err(detail) => detail,
        };
        self.send(json!({"type": "error", "detail": detail}).to_string())
            .await?;
        Ok(None)
    }

    /// Waits for the first `{"subscribe": {...}}`; `None` if the client leaves first.
    async fn first_subscription(
        &mut self,
        expires: tokio::time::Instant,
    ) -> Result<Option<Subscription>, String> {
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(expires) => {
                    return self.close(CLOSE_UNAUTHORIZED, "token expired").await.map(|_| None);
                }
                incoming = self.stream.next() => match incoming {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(subscription) = self.subscription_in(&text).await? {
                            return Ok(Some(subscription));
                        }
                    }
                    Some(Ok(Message::Close(_))) | None => return Ok(None),
                    Some(Ok(_)) => {}
                    Some(Err(err)) => return Err(err.to_string()),
                }
            }
        }
    }

    /// Waits for `{"auth": "<jwt>"}` as the first message.
    async fn authenticate(&mut self) -> Result<Claims, String> {
        let first = tokio::time::timeout(AUTH_TIMEOUT, self.stream.next()).await;
        let token = match first {
            Ok(Some(Ok(Message::Text(text)))) => {
                parse_client_message(&text).ok().and_then(|m| m.auth)
            }
            _ => None,
        };
        let Some(token) = token else {
            self.close(
                CLOSE_UNAUTHORIZED,
                "authenticate first with {\"auth\": \"<jwt>\"}",
            )
            .await?;
            unreachable!("close always returns Err");
        };
        match self.keys.verify(&token).and_then(|claims| {
            claims.require(Role::Reader)?;
            Ok(claims)
        }) {
            Ok(claims) => Ok(claims),
            Err(err) => {
                let reason = err.to_string();
                self.close(CLOSE_UNAUTHORIZED, &reason).await?;
                unreachable!("close always returns Err");
            }
        }
    }

    /// Sends the stored events in `(from, up_to]` that match.
    async fn replay(
        &mut self,
        subscription: &Subscription,
        from: u64,
        up_to: u64,
    ) -> Result<(), String> {
        let mut after = from;
        while after < up_to {
            let batch = self
                .state
                .engine
                .store()
                .read_all(after, REPLAY_BATCH)
                .await
                .map_err(|err| err.to_string())?;
            if batch.is_empty() {
                break;
            }
            for stored in batch {
                if stored.position > up_to {
                    return Ok(());
                }
                after = stored.position;
                let event: Arc<RecordedEvent> = Arc::new(
                    self.state
                        .engine
                        .record(stored)
                        .await
                        .map_err(|err| err.to_string())?,
                );
                if let Some(owners) = &mut self.owners {
                    owners.observe(&event);
                }
                if subscription.matches(&event)
                    && owner_allows(&mut self.owners, &self.state, &event).await?
                {
                    self.send(event_message(&event)).await?;
                }
            }
        }
        Ok(())
    }
}
