//! `GET /ws` for mediator colleagues: a subscriber with `colleague_id` receives exactly the
//! messages addressed to that colleague (direct ones, and broadcasts from the others), live
//! and on resume from a position; `aggregate_id` narrows it to one mediator.

use reqwest::StatusCode;
use serde_json::{json, Value};

use quintet_tests::ws::{self, events_until, positions, Socket};
use quintet_tests::{both_backends, TestApp};
use web::Role;

/// Connects with a reader's token in the subprotocol header and subscribes; returns the
/// socket and the events replayed before the `subscribed` acknowledgement.
async fn subscribe(app: &TestApp, subscription: Value) -> (Socket, Vec<Value>) {
    let mut socket = ws::connect(app, &app.token(Role::Reader)).await;
    // Whatever the server sends on its own at connect time is out of the way before
    // subscribing.
    ws::barrier(&mut socket).await;
    let (replayed, _) = ws::subscribe(&mut socket, subscription).await;
    (socket, replayed)
}

async fn write(app: &TestApp, path: &str, body: Value) -> u64 {
    app.post(path, body)
        .await
        .expect_status(StatusCode::CREATED)
        .position()
}

async fn send(app: &TestApp, mediator: &str, from: &str, to: &str, text: &str) -> u64 {
    write(
        app,
        &format!("/mediators/{mediator}/messages"),
        json!({ "sender_id": from, "recipient_id": to, "message": text }),
    )
    .await
}

async fn broadcast(app: &TestApp, mediator: &str, from: &str, text: &str) -> u64 {
    write(
        app,
        &format!("/mediators/{mediator}/broadcast"),
        json!({ "sender_id": from, "message": text }),
    )
    .await
}

async fn colleague_gets_exactly_its_messages(app: TestApp) {
    for mediator in ["chat", "ops"] {
        write(&app, "/mediators", json!({ "name": mediator })).await;
        for colleague in ["alice", "bob", "carol"] {
            write(
                &app,
                &format!("/mediators/{mediator}/colleagues"),
                json!({ "id": colleague, "name": colleague, "type": "person" }),
            )
            .await;
        }
    }
    let start = app.head_position().await;
    let (mut bob_in_chat, replayed) = subscribe(
        &app,
        json!({ "contexts": ["mediator"], "colleague_id": "bob", "aggregate_id": "chat" }),
    )
    .await;
    assert!(replayed.is_empty());
    let (mut bob_anywhere, _) = subscribe(&app, json!({ "colleague_id": "bob" })).await;

    let to_bob = send(&app, "chat", "alice", "bob", "hi bob").await;
    let _to_carol = send(&app, "chat", "alice", "carol", "hi carol").await;
    let _from_bob = broadcast(&app, "chat", "bob", "bob to all").await;
    let from_carol = broadcast(&app, "chat", "carol", "carol to all").await;
    let in_ops = send(&app, "ops", "alice", "bob", "hi bob in ops").await;
    let last = send(&app, "chat", "carol", "bob", "last").await;

    let events = events_until(&mut bob_in_chat, last).await;
    assert_eq!(positions(&events), vec![to_bob, from_carol, last]);
    let direct = &events[0];
    assert_eq!(direct["type"], "message_sent");
    assert_eq!(direct["context"], "mediator");
    assert_eq!(direct["aggregate_type"], "mediator");
    assert_eq!(direct["aggregate_id"], "chat");
    assert_eq!(direct["data"]["recipient_id"], "bob");
    assert_eq!(direct["data"]["sender_id"], "alice");
    assert_eq!(direct["data"]["message"], "hi bob");
    assert!(direct["data"]["message_id"].is_string());
    let shared = &events[1];
    assert_eq!(shared["type"], "message_broadcasted");
    assert_eq!(shared["data"]["sender_id"], "carol");
    assert_eq!(shared["data"]["recipients"], json!(["alice", "bob"]));

    let events = events_until(&mut bob_anywhere, last).await;
    assert_eq!(positions(&events), vec![to_bob, from_carol, in_ops, last]);

    // Resuming from a position replays the same selection, then goes live.
    let (mut carol, replayed) = subscribe(
        &app,
        json!({ "colleague_id": "carol", "aggregate_id": "chat", "from_position": start }),
    )
    .await;
    let texts: Vec<&Value> = replayed.iter().map(|e| &e["data"]["message"]).collect();
    assert_eq!(texts, [&json!("hi carol"), &json!("bob to all")]);
    let live = send(&app, "chat", "bob", "carol", "live").await;
    let events = events_until(&mut carol, live).await;
    assert_eq!(positions(&events), vec![live]);
}

both_backends!(colleague_gets_exactly_its_messages);
