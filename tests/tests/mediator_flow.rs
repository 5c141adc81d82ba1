//! The mediator walk-through, end to end: create a mediator, register three colleagues,
//! send a message and broadcast one, read the inboxes, update, unregister and delete, with
//! read-your-writes through `min_position`; and `max_mediators` holding under concurrent
//! creates.

use reqwest::StatusCode;
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, TestApp};

async fn register(app: &TestApp, id: &str) -> u64 {
    let reply = app
        .post(
            "/mediators/chat/colleagues",
            json!({ "id": id, "name": format!("Colleague {id}"), "type": "service" }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(reply.event_types(), vec!["colleague_registered"]);
    reply.position()
}

async fn inbox(app: &TestApp, colleague: &str, position: u64) -> Reply {
    app.get_at(
        &format!("/mediators/chat/colleagues/{colleague}/messages"),
        position,
    )
    .await
    .expect_status(StatusCode::OK)
}

async fn mediator_walkthrough(app: TestApp) {
    // ------------------------------------------------------------------ create
    let created = app
        .post(
            "/mediators",
            json!({ "name": "chat", "description": "Team chat", "metadata": { "team": "core" } }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(created.body["aggregate_type"], "mediator");
    assert_eq!(created.body["aggregate_id"], "chat");
    assert_eq!(created.body["version"], 1);
    // The registry of names changes in the same transaction.
    assert_eq!(
        created.event_types(),
        vec!["mediator_created", "mediator_name_claimed"]
    );
    let position = created.position();
    let doc = app
        .get_at("/mediators/chat", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["name"], "chat");
    assert_eq!(doc.body["description"], "Team chat");
    assert_eq!(doc.body["metadata"], json!({ "team": "core" }));
    assert_eq!(doc.body["colleague_count"], 0);
    assert_eq!(doc.body["colleagues"], json!([]));
    app.post("/mediators", json!({ "name": "chat" }))
        .await
        .expect_problem(StatusCode::CONFLICT);

    // ------------------------------------------------------------------ colleagues
    register(&app, "alice").await;
    register(&app, "bob").await;
    let position = register(&app, "carol").await;
    let doc = app
        .get_at("/mediators/chat", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["colleague_count"], 3);
    assert_eq!(doc.body["version"], 4);
    let colleagues = doc.body["colleagues"].as_array().expect("colleagues");
    let ids: Vec<&str> = colleagues
        .iter()
        .map(|c| c["id"].as_str().expect("an id"))
        .collect();
    assert_eq!(ids, ["alice", "bob", "carol"]);
    assert_eq!(colleagues[0]["name"], "Colleague alice");
    assert_eq!(colleagues[0]["type"], "service");
    assert!(colleagues[0]["registered_at"].is_string());

    // ------------------------------------------------------------------ messages
    let sent = app
        .post(
            "/mediators/chat/messages",
            json!({ "sender_id": "alice", "recipient_id": "bob", "message": "Hello from alice" }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(sent.event_types(), vec!["message_sent"]);
    assert_eq!(sent.body["recipients"], json!(["bob"]));
    assert_eq!(sent.body["recipient_count"], 1);
    let direct_id = sent.body["message_id"]
        .as_str()
        .expect("a message id")
        .to_string();
    let parsed = uuid::Uuid::parse_str(&direct_id).expect("a uuid");
    assert_eq!(parsed.get_version_num(), 7, "a UUIDv7");
    sent.position();

    let broadcast = app
        .post(
            "/mediators/chat/broadcast",
            json!({
                "sender_id": "bob",
                "kind": "event",
                "message": { "type": "user_created", "data": { "user_id": "123" } },
            }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(broadcast.event_types(), vec!["message_broadcasted"]);
    assert_eq!(broadcast.body["recipients"], json!(["alice", "carol"]));
    assert_eq!(broadcast.body["recipient_count"], 2);
    let broadcast_id = broadcast.body["message_id"]
        .as_str()
        .expect("an id")
        .to_string();
    let position = broadcast.position();

    // bob: the direct message only (his own broadcast is not in his inbox).
    let bob = inbox(&app, "bob", position).await;
    assert_eq!(bob.body["total"], 1);
    let entry = &bob.items()[0];
    assert_eq!(entry["message_id"], direct_id.as_str());
    assert_eq!(entry["sender_id"], "alice");
    assert_eq!(entry["colleague_id"], "bob");
    assert_eq!(entry["mediator"], "chat");
    assert_eq!(entry["kind"], "message");
    assert_eq!(entry["message"], "Hello from alice");
    assert_eq!(entry["broadcast"], false);
    assert!(entry["sent_at"].is_string());
    assert!(entry.get("inbox").is_none(), "no internal keys: {entry}");
    // alice and carol: the broadcast.
    for colleague in ["alice", "carol"] {
        let reply = inbox(&app, colleague, position).await;
        assert_eq!(reply.body["total"], 1, "{}", reply.text);
        let entry = &reply.items()[0];
        assert_eq!(entry["message_id"], broadcast_id.as_str());
        assert_eq!(entry["sender_id"], "bob");
        assert_eq!(entry["kind"], "event");
        assert_eq!(entry["broadcast"], true);
        assert_eq!(entry["message"]["data"]["user_id"], "123");
    }
    // Oldest first, paged.
    let mut last = 0;
    for n in 0..3 {
        last = app
            .post(
                "/mediators/chat/messages",
                json!({
                    "sender_id": "carol", "recipient_id": "alice", "kind": "task",
                    "message": { "name": format!("t{n}"), "type": "work", "priority": n },
                }),
            )
            .await
            .expect_status(StatusCode::CREATED)
            .position();
    }
    let page = app
        .get_at("/mediators/chat/colleagues/alice/messages?limit=2", last)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(page.body["total"], 4);
    assert_eq!(page.body["next"], 2);
    assert_eq!(page.items()[0]["message_id"], broadcast_id.as_str());
    assert_eq!(page.items()[1]["message"]["name"], "t0");
    let page = app
        .get_at(
            "/mediators/chat/colleagues/alice/messages?limit=2&offset=2",
            last,
        )
        .await
        .expect_status(StatusCode::OK);
    let names: Vec<&Value> = page.items().iter().map(|i| &i["message"]["name"]).collect();
    assert_eq!(names, [&json!("t1"), &json!("t2")]);
    assert!(page.body.get("next").is_none());
    let tasks = app
        .get_at("/mediators/chat/colleagues/alice/messages?kind=task", last)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(tasks.body["total"], 3);
    let doc = app
        .get_at("/mediators/chat", last)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["message_count"], 5);

    // ------------------------------------------------------------------ update
    let updated = app
        .put(
            "/mediators/chat",
            json!({ "description": "All hands", "expected_version": 9 }),
        )
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(updated.event_types(), vec!["mediator_updated"]);
    let doc = app
        .get_at("/mediators/chat", updated.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["description"], "All hands");
    assert_eq!(doc.body["metadata"], json!({ "team": "core" }));
    assert_eq!(doc.body["version"], 10);

    // ------------------------------------------------------------------ unregister
    let gone = app
        .delete("/mediators/chat/colleagues/alice")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(gone.event_types(), vec!["colleague_unregistered"]);
    let position = gone.position();
    app.get_at("/mediators/chat/colleagues/alice/messages", position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let doc = app
        .get_at("/mediators/chat", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["colleague_count"], 2);
    // alice is no longer a recipient of broadcasts, nor a sender.
    let broadcast = app
        .post(
            "/mediators/chat/broadcast",
            json!({ "sender_id": "carol", "message": "bye" }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(broadcast.body["recipients"], json!(["bob"]));
    // Registered again, alice starts with an empty inbox.
    let position = register(&app, "alice").await;
    let reply = inbox(&app, "alice", position).await;
    assert_eq!(reply.body["total"], 0);

    // ------------------------------------------------------------------ list and delete
    let other = app
        .post("/mediators", json!({ "name": "alerts" }))
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    let list = app
        .get_at("/mediators", other)
        .await
        .expect_status(StatusCode::OK);
    let names: Vec<&Value> = list.items().iter().map(|m| &m["name"]).collect();
    assert_eq!(names, [&json!("alerts"), &json!("chat")]);
    assert_eq!(list.body["total"], 2);

    let deleted = app
        .delete("/mediators/chat")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        deleted.event_types(),
        vec!["mediator_deleted", "mediator_name_released"]
    );
    let position = deleted.position();
    app.get_at("/mediators/chat", position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get_at("/mediators/chat/colleagues/bob/messages", position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    // A deleted mediator refuses everything but create.
    app.post(
        "/mediators/chat/messages",
        json!({ "sender_id": "bob", "recipient_id": "carol", "message": "x" }),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    app.delete("/mediators/chat")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let again = app
        .post("/mediators", json!({ "name": "chat" }))
        .await
        .expect_status(StatusCode::CREATED);
    let doc = app
        .get_at("/mediators/chat", again.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["colleague_count"], 0);
    assert_eq!(doc.body["colleagues"], json!([]));
    assert_eq!(doc.body["message_count"], 0);
}

both_backends!(mediator_walkthrough);

/// Concurrent creates beyond `max_mediators`: exactly the limit succeed, every other one
/// gets a 409, and deleting one frees a place.
async fn mediator_limit_under_concurrency(app: TestApp) {
    const LIMIT: usize = 3;
    let creates = (0..10).map(|n| {
        let app = &app;
        async move {
            app.post("/mediators", json!({ "name": format!("m{n}") }))
                .await
        }
    });
    let replies = futures::future::join_all(creates).await;
    let mut created = Vec::new();
    for (n, reply) in replies.into_iter().enumerate() {
        match reply.status {
            StatusCode::CREATED => created.push(format!("m{n}")),
            StatusCode::CONFLICT => {
                reply.expect_problem(StatusCode::CONFLICT);
            }
            other => panic!("unexpected {other}: {}", reply.text),
        }
    }
    assert_eq!(
        created.len(),
        LIMIT,
        "exactly the limit succeed: {created:?}"
    );
    let head = app.head_position().await;
    let list = app
        .get_at("/mediators", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(list.body["total"], LIMIT as u64);

    let full = app
        .post("/mediators", json!({ "name": "late" }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    assert!(
        full.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("max_mediators"),
        "{}",
        full.text
    );
    app.delete(&format!("/mediators/{}", created[0]))
        .await
        .expect_status(StatusCode::OK);
    app.post("/mediators", json!({ "name": "late" }))
        .await
        .expect_status(StatusCode::CREATED);
}

both_backends!(
    mediator_limit_under_concurrency,
    with = |settings: &mut kernel::config::Settings| settings.mediator.max_mediators = 3
);

/// Crypto-shredding a mediator: its document becomes a tombstone (410), its colleagues and
/// inboxes are gone from the read models, and it takes no more commands.
async fn mediator_forgotten(app: TestApp) {
    app.post("/mediators", json!({ "name": "secret" }))
        .await
        .expect_status(StatusCode::CREATED);
    for id in ["a", "b"] {
        app.post(
            "/mediators/secret/colleagues",
            json!({ "id": id, "name": id, "type": "person" }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    }
    let sent = app
        .post(
            "/mediators/secret/messages",
            json!({ "sender_id": "a", "recipient_id": "b", "message": "classified" }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    let inbox = app
        .get_at("/mediators/secret/colleagues/b/messages", sent)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(inbox.body["total"], 1);

    let forgotten = app.engine.forget("secret", "e2e").await.expect("forget");
    assert!(
        forgotten.iter().any(|key| key == "mediator/secret"),
        "{forgotten:?}"
    );
    let head = app.head_position().await;
    app.get_at("/mediators/secret", head)
        .await
        .expect_problem(StatusCode::GONE);
    app.get_at("/mediators/secret/colleagues/b/messages", head)
        .await
        .expect_problem(StatusCode::GONE);
    assert!(
        !app.get_at("/mediators", head)
            .await
            .text
            .contains("classified"),
        "no message content survives"
    );
    app.post(
        "/mediators/secret/messages",
        json!({ "sender_id": "a", "recipient_id": "b", "message": "more" }),
    )
    .await
    .expect_problem(StatusCode::GONE);
}

both_backends!(mediator_forgotten);
