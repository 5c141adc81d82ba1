//! Clients of read-api's `GET /ws`: connect, send, read the next message, subscribe and
//! collect events, each wait bounded by [`WAIT`].

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error, Message};

use crate::{TestApp, WAIT};

/// A client connection to read-api's WebSocket.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects with `token` in the subprotocol header (`bearer, <token>`).
pub async fn connect(app: &TestApp, token: &str) -> Socket {
    let mut request = app.ws_url().into_client_request().expect("a ws request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("bearer, {token}")).expect("header"),
    );
    let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("the handshake finishes in time")
        .expect("connected");
    socket
}

/// Sends `message` as a text frame.
pub async fn send(socket: &mut Socket, message: Value) {
    socket
        .send(Message::text(message.to_string()))
        .await
        .expect("send a ws message");
}

/// How a socket stopped giving messages.
#[derive(Debug)]
pub enum Ended {
    /// A close frame (with its code and reason, if it had them).
    Closed(Option<CloseFrame>),
    /// A read failed.
    Failed(Error),
    /// The stream ended without a close frame.
    Gone,
}

impl Ended {
    /// The close code, if the server closed with one.
    pub fn code(&self) -> Option<u16> {
        match self {
            Ended::Closed(Some(frame)) => Some(u16::from(frame.code)),
            _ => None,
        }
    }
}

/// The next text message as JSON (other frames are skipped), or how the socket ended.
/// Panics if nothing comes within [`WAIT`].
pub async fn try_next(socket: &mut Socket) -> Result<Value, Ended> {
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a ws message in time");
        match frame {
            Some(Ok(Message::Text(text))) => {
                return Ok(serde_json::from_str(text.as_str()).expect("a JSON message"))
            }
            Some(Ok(Message::Close(frame))) => return Err(Ended::Closed(frame)),
            Some(Ok(_)) => continue,
            Some(Err(err)) => return Err(Ended::Failed(err)),
            None => return Err(Ended::Gone),
        }
    }
}

/// The next text message as JSON; panics if the socket ends.
pub async fn next(socket: &mut Socket) -> Value {
    try_next(socket)
        .await
        .unwrap_or_else(|ended| panic!("the socket stays open: {ended:?}"))
}

/// Sends a barrier (an empty message, answered with an error) and reads up to its answer,
/// so whatever the server sent on its own before is out of the way.
pub async fn barrier(socket: &mut Socket) {
    send(socket, json!({})).await;
    while next(socket).await["type"] != "error" {}
}

/// Subscribes and waits for the `subscribed` acknowledgement; returns the events that came
/// before it (the replay) and the live position it names. Panics on an error message.
pub async fn subscribe(socket: &mut Socket, subscription: Value) -> (Vec<Value>, u64) {
    send(socket, json!({ "subscribe": subscription })).await;
    let mut replayed = Vec::new();
    loop {
        let message = next(socket).await;
        if message["type"] == "subscribed" {
            let position = message["position"].as_u64().expect("subscribed position");
            return (replayed, position);
        }
        assert_ne!(message["type"], "error", "{message}");
        replayed.push(message);
    }
}

/// The events until one at `position` (or past it) arrives. Panics on an error message.
pub async fn events_until(socket: &mut Socket, position: u64) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let message = next(socket).await;
        assert_ne!(message["type"], "error", "{message}");
        let at = message["position"].as_u64().expect("a position");
        events.push(message);
        if at >= position {
            return events;
        }
    }
}

/// The `position` of each event.
pub fn positions(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["position"].as_u64().expect("a position"))
        .collect()
}
