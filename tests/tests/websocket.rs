//! `GET /ws` on read-api: the three ways to authenticate, refusals, filtered subscriptions
//! with the documented message shape, and gapless resume from a position while writes go on.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use jsonwebtoken::Algorithm;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use quintet_tests::ws::{self, events_until, positions, send, subscribe, Socket};
use quintet_tests::{both_backends, TestApp, WAIT};
use web::Role;

/// How a client presents its token.
enum Auth<'a> {
    Query(&'a str),
    Protocol(&'a str),
    FirstMessage(&'a str),
    None,
}

async fn connect(
    app: &TestApp,
    auth: Auth<'_>,
) -> Result<Socket, tokio_tungstenite::tungstenite::Error> {
    let url = match auth {
        Auth::Query(token) => format!("{}?access_token={token}", app.ws_url()),
        _ => app.ws_url(),
    };
    let mut request = url.into_client_request().expect("a ws request");
    if let Auth::Protocol(token) = auth {
        request.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&format!("bearer, {token}")).expect("header"),
        );
    }
    let (mut socket, response) =
        tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
            .await
            .expect("the handshake finishes in time")?;
    if matches!(auth, Auth::Protocol(_)) {
        assert_eq!(
            response
                .headers()
                .get("sec-websocket-protocol")
                .and_then(|v| v.to_str().ok()),
            Some("bearer"),
            "the server selects the bearer subprotocol"
        );
    }
    if let Auth::FirstMessage(token) = auth {
        send(&mut socket, json!({ "auth": token })).await;
    }
    Ok(socket)
}

/// Connects, then waits until the server has processed everything up to a barrier (an
/// empty message, answered with an error), so whatever it sends on its own at connect time
/// (today: a `subscribed` ack of an implicit match-all subscription) is out of the way.
async fn connect_ready(app: &TestApp, auth: Auth<'_>) -> Socket {
    let mut socket = connect(app, auth).await.expect("connected");
    ws::barrier(&mut socket).await;
    socket
}

async fn three_ways_to_authenticate(app: TestApp) {
    let reader = app.token(Role::Reader);
    for auth in [
        Auth::Query(&reader),
        Auth::Protocol(&reader),
        Auth::FirstMessage(&reader),
    ] {
        let mut socket = connect_ready(&app, auth).await;
        subscribe(&mut socket, json!({})).await;
        let p = app
            .create_caretaker(&format!("c{}", uuid::Uuid::new_v4().simple()))
            .await;
        let events = events_until(&mut socket, p).await;
        assert_eq!(positions(&events), vec![p]);
        assert_eq!(events[0]["type"], "caretaker_created");
    }
    // A writer (a higher role) may read the stream too.
    let writer = app.token(Role::Writer);
    let mut socket = connect_ready(&app, Auth::Protocol(&writer)).await;
    subscribe(&mut socket, json!({})).await;
}
both_backends!(three_ways_to_authenticate);

async fn bad_tokens_are_refused(app: TestApp) {
    let forged = quintet_tests::jwt::sign(
        Algorithm::HS256,
        "another-secret-0123456789abcdef",
        &quintet_tests::jwt::claims("reader"),
    );
    let unsigned = quintet_tests::jwt::unsigned(&quintet_tests::jwt::claims("reader"));
    for token in ["garbage", forged.as_str(), unsigned.as_str()] {
        match connect(&app, Auth::Query(token)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
            }
            Err(other) => panic!("expected a 401 handshake, got {other}"),
            Ok(_) => panic!("a bad access_token was accepted"),
        }
    }
    for token in [forged.as_str(), unsigned.as_str()] {
        match connect(&app, Auth::Protocol(token)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), StatusCode::UNAUTHORIZED)
            }
            Err(other) => panic!("expected a 401 handshake, got {other}"),
            Ok(_) => panic!("a bad subprotocol token was accepted"),
        }
    }
    // A bad first message closes with 4001, before anything is sent.
    for token in ["garbage", forged.as_str()] {
        let mut socket = connect(&app, Auth::FirstMessage(token))
            .await
            .expect("the upgrade itself succeeds");
        assert_eq!(
            ws::try_next(&mut socket)
                .await
                .map_err(|ended| ended.code()),
            Err(Some(4001))
        );
    }
    // No authentication at all: a subscribe first is refused.
    let mut socket = connect(&app, Auth::None).await.expect("upgrade");
    send(&mut socket, json!({ "subscribe": {} })).await;
    assert_eq!(
        ws::try_next(&mut socket)
            .await
            .map_err(|ended| ended.code()),
        Err(Some(4001))
    );
}
both_backends!(bad_tokens_are_refused);

async fn origin_is_checked(app: TestApp) {
    let reader = app.token(Role::Reader);
    let mut request = format!("{}?access_token={reader}", app.ws_url())
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static("http://evil.example"));
    match tokio_tungstenite::connect_async(request).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN)
        }
        Err(other) => panic!("expected 403, got {other}"),
        Ok(_) => panic!("a foreign Origin was accepted"),
    }
    let mut request = format!("{}?access_token={reader}", app.ws_url())
        .into_client_request()
        .expect("request");
    request
        .headers_mut()
        .insert("origin", HeaderValue::from_static("http://good.example"));
    tokio_tungstenite::connect_async(request)
        .await
        .expect("an allowed Origin connects");
}
both_backends!(
    origin_is_checked,
    with = |s: &mut kernel::config::Settings| {
        s.websocket.allowed_origins = vec!["http://good.example".into()];
    }
);

async fn filters_deliver_exactly_the_matching_events(app: TestApp) {
    let reader = app.token(Role::Reader);
    let mut filtered = connect_ready(&app, Auth::Protocol(&reader)).await;
    subscribe(
        &mut filtered,
        json!({ "event_types": ["memento_created"], "aggregate_id": "c1" }),
    )
    .await;
    let mut lifecycle = connect_ready(&app, Auth::FirstMessage(&reader)).await;
    subscribe(
        &mut lifecycle,
        json!({ "contexts": ["memento"], "aggregate_id": "c1" }),
    )
    .await;

    let p_c1 = app.create_caretaker("c1").await;
    app.create_caretaker("c2").await;
    app.create_document("d1", "hello").await;
    let p_m1 = app
        .post(
            "/originators/d1/mementos",
            json!({ "caretaker": "c1", "memento_id": "m1" }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    app.post(
        "/originators/d1/mementos",
        json!({ "caretaker": "c2", "memento_id": "x1" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let p_restore = app
        .post_empty("/mementos/caretakers/c1/mementos/m1/restore")
        .await
        .expect_status(StatusCode::OK)
        .position();
    let p_m2 = app
        .post(
            "/mementos/caretakers/c1/mementos",
            json!({ "id": "m2", "originator_id": "d1", "type": "document", "state": { "content": "x" } }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    let p_deleted = app
        .delete("/mementos/caretakers/c1/mementos/m2")
        .await
        .expect_status(StatusCode::OK)
        .position();
    let p_cleanup = app
        .post_empty("/mementos/caretakers/c1/cleanup")
        .await
        .expect_status(StatusCode::OK)
        .position();
    let p_m3 = app
        .post(
            "/originators/d1/mementos",
            json!({ "caretaker": "c1", "memento_id": "m3" }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    let p_removed = app
        .delete("/mementos/caretakers/c1")
        .await
        .expect_status(StatusCode::OK)
        .position();

    let events = events_until(&mut filtered, p_m3).await;
    assert_eq!(positions(&events), vec![p_m1, p_m2, p_m3], "{events:#?}");
    let first = &events[0];
    assert_eq!(first["type"], "memento_created");
    assert_eq!(first["context"], "memento");
    assert_eq!(first["aggregate_type"], "caretaker");
    assert_eq!(first["aggregate_id"], "c1");
    assert_eq!(first["sequence"], 2);
    assert_eq!(first["data"]["memento_id"], "m1");
    assert_eq!(first["data"]["originator_id"], "d1");
    let timestamp = first["timestamp"].as_str().expect("timestamp");
    chrono::DateTime::parse_from_rfc3339(timestamp).expect("an RFC 3339 timestamp");
    let keys: BTreeSet<&str> = first
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from([
            "type",
            "context",
            "aggregate_type",
            "aggregate_id",
            "sequence",
            "position",
            "timestamp",
            "data"
        ])
    );

    let events = events_until(&mut lifecycle, p_removed).await;
    let names: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
    assert_eq!(
        names,
        vec![
            "caretaker_created",
            "memento_created",
            "memento_restored",
            "memento_created",
            "memento_deleted",
            "cleanup_completed",
            "memento_created",
            "caretaker_removed",
        ]
    );
    let seen = positions(&events);
    assert_eq!(seen[0], p_c1);
    // A restore writes the caretaker's event and then the originator's (at p_restore).
    assert!(seen[2] > p_m1 && seen[2] < p_restore, "{seen:?}");
    assert_eq!(seen[4], p_deleted);
    assert_eq!(seen[5], p_cleanup);
    let sequences: Vec<u64> = events
        .iter()
        .filter_map(|e| e["sequence"].as_u64())
        .collect();
    assert_eq!(sequences, (1..=8).collect::<Vec<_>>());
}
both_backends!(filters_deliver_exactly_the_matching_events);

async fn resume_from_a_position_has_no_gap_and_no_duplicate(app: TestApp) {
    const BEFORE: usize = 10;
    const DURING: usize = 20;
    app.create_document("d1", "v0").await;
    let mut written = Vec::new();
    for i in 0..BEFORE {
        written.push(
            app.put(
                "/originators/d1/state",
                json!({ "state": { "content": format!("v{i}") } }),
            )
            .await
            .expect_status(StatusCode::OK)
            .position(),
        );
    }
    let from = written[BEFORE / 2];

    let reader = app.token(Role::Reader);
    let mut socket = connect_ready(&app, Auth::Protocol(&reader)).await;
    send(
        &mut socket,
        json!({ "subscribe": { "from_position": from, "aggregate_id": "d1" } }),
    )
    .await;
    // More writes go on while the server replays and goes live.
    let requests: Vec<_> = (0..DURING)
        .map(|i| {
            app.write(reqwest::Method::PUT, "/originators/d1/state")
                .json(&json!({ "state": { "content": format!("live {i}") } }))
        })
        .collect();
    let writer = tokio::spawn(async move {
        let mut positions = Vec::new();
        for request in requests {
            let reply = quintet_tests::Reply::of(request)
                .await
                .expect_status(StatusCode::OK);
            positions.push(reply.position());
        }
        positions
    });
    let mut received = Vec::new();
    let mut live_from = None;
    let mut keep = |message: Value, received: &mut Vec<Value>| {
        if message["type"] == "subscribed" {
            live_from = message["position"].as_u64();
        } else {
            received.push(message);
        }
    };
    // Drain the socket while the writer runs (the server's buffer per client is bounded).
    let mut writer = writer;
    let during = loop {
        tokio::select! {
            done = &mut writer => break done.expect("the writer"),
            message = ws::next(&mut socket) => keep(message, &mut received),
        }
    };
    written.extend(during);
    let last = *written.last().expect("writes");
    while positions(&received).last().copied().unwrap_or(0) < last {
        keep(ws::next(&mut socket).await, &mut received);
    }
    let live_from = live_from.expect("a subscribed ack");
    assert!(live_from >= from);

    let got = positions(&received);
    assert!(
        got.windows(2).all(|w| w[0] < w[1]),
        "strictly increasing, no duplicate: {got:?}"
    );
    let expected: Vec<u64> = written.iter().copied().filter(|p| *p > from).collect();
    assert_eq!(
        got, expected,
        "exactly the writes after {from} (live from {live_from})"
    );
    let sequences: Vec<u64> = received
        .iter()
        .filter_map(|e| e["sequence"].as_u64())
        .collect();
    assert!(
        sequences.windows(2).all(|w| w[1] == w[0] + 1),
        "contiguous sequences: {sequences:?}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(200), socket.next())
            .await
            .is_err(),
        "an unexpected extra message"
    );
}
both_backends!(resume_from_a_position_has_no_gap_and_no_duplicate);

/// Resuming from 0 replays the whole history.
async fn resume_from_zero_replays_everything(app: TestApp) {
    let mut written = vec![
        app.create_caretaker("a").await,
        app.create_caretaker("b").await,
        app.create_document("d", "x").await,
    ];
    written.sort_unstable();
    let reader = app.token(Role::Reader);
    let mut socket = connect_ready(&app, Auth::Query(&reader)).await;
    let (mut received, live_from) = subscribe(&mut socket, json!({ "from_position": 0 })).await;
    let last = *written.last().expect("written");
    assert!(live_from <= last);
    // The replay covers what the live feed had sent when subscribing; the rest comes live.
    if live_from < last {
        received.extend(events_until(&mut socket, last).await);
    }
    assert_eq!(positions(&received), written);
    // Then live.
    let p = app.create_caretaker("c").await;
    assert_eq!(positions(&events_until(&mut socket, p).await), vec![p]);
}
both_backends!(resume_from_zero_replays_everything);

/// Malformed client messages get an error message, not a dropped connection.
async fn bad_client_messages_get_an_error(app: TestApp) {
    let reader = app.token(Role::Reader);
    let mut socket = connect_ready(&app, Auth::Query(&reader)).await;
    subscribe(&mut socket, json!({})).await;
    for text in [
        "not json",
        r#"{"subscribe": {"bogus": 1}}"#,
        r#"{"hello": 1}"#,
        "{}",
    ] {
        socket.send(Message::text(text)).await.expect("send");
        let reply = ws::next(&mut socket).await;
        assert_eq!(reply["type"], "error", "{text}: {reply}");
    }
    // Still usable.
    subscribe(&mut socket, json!({})).await;
    let p = app.create_caretaker("c1").await;
    assert_eq!(positions(&events_until(&mut socket, p).await), vec![p]);
}
both_backends!(bad_client_messages_get_an_error);

/// A socket is closed with 4001 when its token expires.
async fn expired_token_closes_the_socket(app: TestApp) {
    // Expiry has one-second granularity: 2s leaves at least one for the handshake.
    let token = app.token_with_ttl(Role::Reader, Duration::from_secs(2));
    let mut socket = connect(&app, Auth::Query(&token))
        .await
        .expect("connected while the token is valid");
    send(&mut socket, json!({ "subscribe": {} })).await;
    loop {
        match ws::try_next(&mut socket).await {
            Ok(message) => assert_eq!(message["type"], "subscribed", "{message}"),
            Err(ended) => {
                assert_eq!(ended.code(), Some(4001), "{ended:?}");
                break;
            }
        }
    }
}
both_backends!(expired_token_closes_the_socket);

/// Before a client subscribes, the server sends it no events: otherwise a client that
/// resumes with `from_position` gets live events first (under an implicit match-all
/// subscription) and then the same events again in the replay, and cannot tell them apart.
async fn no_events_before_subscribe(app: TestApp) {
    let reader = app.token(Role::Reader);
    let mut socket = connect(&app, Auth::Protocol(&reader))
        .await
        .expect("connected");
    let p = app.create_caretaker("c1").await;
    let early = tokio::time::timeout(Duration::from_millis(500), async {
        loop {
            let message = ws::next(&mut socket).await;
            if message["type"] != "subscribed" {
                return message;
            }
        }
    })
    .await;
    assert!(
        early.is_err(),
        "an event arrived before any subscribe: {early:?}"
    );
    let (replayed, _) = subscribe(&mut socket, json!({ "from_position": p - 1 })).await;
    assert_eq!(positions(&replayed), vec![p]);
}
mod no_events_before_subscribe {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        let app = quintet_tests::spawn_app(quintet_tests::Backend::Embedded).await;
        quintet_tests::run_scenario(super::no_events_before_subscribe(app)).await;
    }
}
