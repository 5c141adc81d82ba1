//! Guarantee 2: the same `Idempotency-Key` with the same body returns the first result and
//! appends nothing; with a different body it is refused (409).

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, Side, TestApp};
use web::Role;

async fn send(app: &TestApp, key: &str, method: Method, path: &str, body: Option<Value>) -> Reply {
    let mut request = app.write(method, path).header("Idempotency-Key", key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    Reply::of(request).await
}

async fn replay_returns_the_first_result(app: TestApp) {
    let body = json!({ "name": "c1", "max_mementos": 10 });
    let first = send(
        &app,
        "key-1",
        Method::POST,
        "/mementos/caretakers",
        Some(body.clone()),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let head = app.head_position().await;
    assert_eq!(head, first.position());

    let second = send(
        &app,
        "key-1",
        Method::POST,
        "/mementos/caretakers",
        Some(body.clone()),
    )
    .await
    .expect_status(StatusCode::CREATED);
    assert_eq!(
        second.body, first.body,
        "the replay differs from the first result"
    );
    assert_eq!(second.position(), first.position());
    assert_eq!(
        app.head_position().await,
        head,
        "the replay appended events"
    );

    // The same body without the key is a new command: a duplicate.
    app.post("/mementos/caretakers", body.clone())
        .await
        .expect_problem(StatusCode::CONFLICT);

    // Writes whose result depends on the state replay too (an update, not a create).
    app.create_document("d1", "v1").await;
    let change = json!({ "state": { "content": "v2" } });
    let first = send(
        &app,
        "key-2",
        Method::PUT,
        "/originators/d1/state",
        Some(change.clone()),
    )
    .await
    .expect_status(StatusCode::OK);
    let head = app.head_position().await;
    let second = send(
        &app,
        "key-2",
        Method::PUT,
        "/originators/d1/state",
        Some(change),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(second.body, first.body);
    assert_eq!(second.body["version"], 2);
    assert_eq!(app.head_position().await, head);

    // Routes without a body replay too.
    let first = send(
        &app,
        "key-3",
        Method::POST,
        "/mementos/caretakers/c1/cleanup",
        None,
    )
    .await
    .expect_status(StatusCode::OK);
    let head = app.head_position().await;
    let second = send(
        &app,
        "key-3",
        Method::POST,
        "/mementos/caretakers/c1/cleanup",
        None,
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(second.body, first.body);
    assert_eq!(app.head_position().await, head);
}
both_backends!(replay_returns_the_first_result);

async fn same_key_other_request_is_409(app: TestApp) {
    send(
        &app,
        "key-1",
        Method::POST,
        "/mementos/caretakers",
        Some(json!({ "name": "c1" })),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let head = app.head_position().await;

    // Another body.
    let reply = send(
        &app,
        "key-1",
        Method::POST,
        "/mementos/caretakers",
        Some(json!({ "name": "c2" })),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    assert!(
        reply.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("idempotency key"),
        "{}",
        reply.text
    );
    // Another route, same key.
    send(
        &app,
        "key-1",
        Method::POST,
        "/originators",
        Some(json!({ "id": "d1", "type": "document", "name": "d" })),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    send(
        &app,
        "key-1",
        Method::DELETE,
        "/mementos/caretakers/c1",
        None,
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    assert_eq!(app.head_position().await, head, "a refused request wrote");

    // Keys are scoped by subject: another client's same key and body is its own command
    // (here a duplicate), never the first client's result.
    let other = Reply::of(
        app.anonymous(Method::POST, Side::Write, "/mementos/caretakers")
            .bearer_auth(app.token_for("someone-else", Role::Writer))
            .header("Idempotency-Key", "key-1")
            .json(&json!({ "name": "c1" })),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    assert!(other.body.get("position").is_none());
    assert_eq!(app.head_position().await, head);
}
both_backends!(same_key_other_request_is_409);

async fn concurrent_same_key_writes_once(app: TestApp) {
    let before = app.head_position().await;
    let body = json!({ "name": "raced" });
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let request = app
                .write(Method::POST, "/mementos/caretakers")
                .header("Idempotency-Key", "race-key")
                .json(&body);
            tokio::spawn(Reply::of(request))
        })
        .collect();
    let mut positions = Vec::new();
    for task in tasks {
        let reply = task.await.expect("task").expect_status(StatusCode::CREATED);
        positions.push(reply.position());
    }
    positions.dedup();
    assert_eq!(positions.len(), 1, "different positions: {positions:?}");
    let written = app.events_after(before).await;
    assert_eq!(
        written.len(),
        1,
        "exactly one event is written: {written:?}"
    );
    assert_eq!(written[0].position, positions[0]);
}
both_backends!(concurrent_same_key_writes_once);

async fn concurrent_same_key_on_a_contended_aggregate(app: TestApp) {
    app.create_document("d1", "v1").await;
    let before = app.head_position().await;
    let body = json!({ "state": { "content": "v2" } });
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let request = app
                .write(Method::PUT, "/originators/d1/state")
                .header("Idempotency-Key", "put-key")
                .json(&body);
            tokio::spawn(Reply::of(request))
        })
        .collect();
    let mut bodies = Vec::new();
    for task in tasks {
        bodies.push(task.await.expect("task").expect_status(StatusCode::OK).body);
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(bodies[0]["version"], 2);
    let written = app.events_after(before).await;
    assert_eq!(
        written.len(),
        1,
        "exactly one event is written: {written:?}"
    );
}
both_backends!(concurrent_same_key_on_a_contended_aggregate);

/// A create without an id generates one; sent again with its key, it answers with the id
/// (and version) that was committed the first time, not a freshly generated one.
async fn replayed_create_without_id_names_the_committed_aggregate(app: TestApp) {
    let body = json!({ "type": "document", "name": "no id given" });
    let first = send(
        &app,
        "gen-id",
        Method::POST,
        "/originators",
        Some(body.clone()),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let second = send(&app, "gen-id", Method::POST, "/originators", Some(body))
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(second.body, first.body);
    assert_eq!(second.body["version"], 1);
}
both_backends!(replayed_create_without_id_names_the_committed_aggregate);
