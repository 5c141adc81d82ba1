//! The event-sourcing routes on bad and contested input: wrong types, unknown ids, events
//! that do not fit their aggregate, stale versions (also under a real race), oversize data,
//! versions beyond the head, bad times, auth, idempotency, envelope ids and forgetting.
//! Every refusal is problem+json and appends nothing.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use kernel::config::Settings;
use quintet_tests::{both_backends, Reply, TestApp};
use web::Role;

/// Asserts a problem with `status` naming `field` (when given), and that nothing was
/// appended.
async fn refused(app: &TestApp, reply: Reply, status: StatusCode, field: Option<&str>, head: u64) {
    let reply = reply.expect_problem(status);
    if let Some(field) = field {
        assert_eq!(reply.error_fields(), vec![field], "{}", reply.text);
    }
    assert_eq!(app.head_position().await, head, "a refusal appends nothing");
}

async fn setup(app: &TestApp) -> u64 {
    app.post(
        "/aggregates",
        json!({ "type": "user", "id": "u1", "initial_state": { "email": "a@b.co" } }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.post(
        "/aggregates",
        json!({ "type": "order", "id": "o1", "initial_state": {} }),
    )
    .await
    .expect_status(StatusCode::CREATED)
    .position()
}

async fn writes_refuse_bad_input(app: TestApp) {
    let head = setup(&app).await;
    let cases: Vec<(&str, Method, Value, StatusCode, Option<&str>)> = vec![
        // Creating.
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "spaceship" }),
            StatusCode::BAD_REQUEST,
            Some("type"),
        ),
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "user", "initial_state": { "name": "x" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("initial_state.email"),
        ),
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "user", "initial_state": { "email": "nope" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("initial_state.email"),
        ),
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "custom", "initial_state": [1] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("initial_state"),
        ),
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "order", "initial_state": { "status": "lost" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("initial_state.status"),
        ),
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "payment", "initial_state": { "amount": -5 } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("initial_state.amount"),
        ),
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "custom", "id": "a b" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("id"),
        ),
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "custom", "extra": 1 }),
            StatusCode::BAD_REQUEST,
            Some("extra"),
        ),
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "user", "id": "u1", "initial_state": { "email": "a@b.co" } }),
            StatusCode::CONFLICT,
            None,
        ),
        (
            "/aggregates",
            Method::POST,
            json!({ "type": "custom", "id": "u1" }),
            StatusCode::CONFLICT,
            None,
        ),
        // Changing.
        (
            "/aggregates/nobody",
            Method::PUT,
            json!({ "changes": { "a": 1 } }),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "/aggregates/u1",
            Method::PUT,
            json!({ "changes": { "email": "a@b.co" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("changes"),
        ),
        (
            "/aggregates/u1",
            Method::PUT,
            json!({ "changes": "x" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("changes"),
        ),
        (
            "/aggregates/u1",
            Method::PUT,
            json!({ "changes": { "email": null } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("changes.email"),
        ),
        (
            "/aggregates/o1",
            Method::PUT,
            json!({ "changes": { "status": "lost" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("changes.status"),
        ),
        (
            "/aggregates/u1",
            Method::PUT,
            json!({ "changes": { "a": 1 }, "expected_version": 5 }),
            StatusCode::CONFLICT,
            None,
        ),
        // Publishing.
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "order_created", "aggregate_id": "u1", "aggregate_type": "user" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("type"),
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "user_updated", "aggregate_id": "o1", "aggregate_type": "order" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("type"),
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "custom", "aggregate_id": "u1", "aggregate_type": "order" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("aggregate_type"),
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "user_exploded", "aggregate_id": "u1", "aggregate_type": "user" }),
            StatusCode::BAD_REQUEST,
            Some("type"),
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "user_updated", "aggregate_id": "ghost", "aggregate_type": "user", "data": { "a": 1 } }),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "user_created", "aggregate_id": "u1", "aggregate_type": "user", "data": { "email": "a@b.co" } }),
            StatusCode::CONFLICT,
            None,
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "order_status_changed", "aggregate_id": "o1", "aggregate_type": "order", "data": { "status": "lost" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("data.status"),
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "order_status_changed", "aggregate_id": "o1", "aggregate_type": "order", "data": { "status": "pending" } }),
            StatusCode::CONFLICT,
            None,
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "custom", "aggregate_id": "o1", "aggregate_type": "order", "data": { "status": "shipped" } }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("data.status"),
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "custom", "aggregate_id": "u1", "aggregate_type": "user", "data": 3 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("data"),
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "custom", "aggregate_id": "u1", "aggregate_type": "user", "expected_version": 0 }),
            StatusCode::CONFLICT,
            None,
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "custom", "aggregate_id": "u1", "aggregate_type": "user", "version": 7 }),
            StatusCode::CONFLICT,
            None,
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "custom", "aggregate_id": "u1", "aggregate_type": "user", "version": 2, "expected_version": 0 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("version"),
        ),
        (
            "/events/publish",
            Method::POST,
            json!({ "type": "custom", "aggregate_id": "u/1", "aggregate_type": "user" }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("aggregate_id"),
        ),
        // Snapshots.
        (
            "/snapshots",
            Method::POST,
            json!({ "aggregate_id": "ghost" }),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "/snapshots",
            Method::POST,
            json!({ "aggregate_id": "u1", "version": 9 }),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("version"),
        ),
        (
            "/snapshots",
            Method::POST,
            json!({ "aggregate_id": "u1", "data": {} }),
            StatusCode::BAD_REQUEST,
            Some("data"),
        ),
    ];
    for (path, method, body, status, field) in cases {
        let reply = Reply::of(app.write(method.clone(), path).json(&body)).await;
        assert_eq!(
            reply.status, status,
            "{method} {path} {body}: {}",
            reply.text
        );
        refused(&app, reply, status, field, head).await;
    }

    // A stale If-Match, on PUT and on publish.
    let reply = Reply::of(
        app.write(Method::PUT, "/aggregates/u1")
            .header("If-Match", "\"3\"")
            .json(&json!({ "changes": { "a": 1 } })),
    )
    .await;
    refused(&app, reply, StatusCode::CONFLICT, None, head).await;
    let reply = Reply::of(
        app.write(Method::POST, "/events/publish")
            .header("If-Match", "W/\"0\"")
            .json(&json!({ "type": "custom", "aggregate_id": "o1", "aggregate_type": "order" })),
    )
    .await;
    refused(&app, reply, StatusCode::CONFLICT, None, head).await;

    // Readers may not write; a token scoped to another context may not either.
    let reply = Reply::of(
        app.anonymous(Method::POST, quintet_tests::Side::Write, "/aggregates")
            .bearer_auth(app.token(Role::Reader))
            .json(&json!({ "type": "custom" })),
    )
    .await;
    refused(&app, reply, StatusCode::FORBIDDEN, None, head).await;
    let reply = Reply::of(
        app.anonymous(Method::POST, quintet_tests::Side::Write, "/aggregates")
            .bearer_auth(app.token_scoped(Role::Writer, "memento"))
            .json(&json!({ "type": "custom" })),
    )
    .await;
    refused(&app, reply, StatusCode::FORBIDDEN, None, head).await;
    let reply = Reply::of(
        app.anonymous(Method::POST, quintet_tests::Side::Write, "/aggregates")
            .bearer_auth(app.token_scoped(Role::Writer, "event-sourcing"))
            .json(&json!({ "type": "custom", "id": "scoped" })),
    )
    .await;
    reply.expect_status(StatusCode::CREATED);
}
both_backends!(writes_refuse_bad_input);

async fn reads_refuse_bad_input(app: TestApp) {
    let head = setup(&app).await;
    let cases: Vec<(String, StatusCode, Option<&str>)> = vec![
        ("/aggregates/ghost".into(), StatusCode::NOT_FOUND, None),
        (
            "/aggregates/ghost?version=1".into(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "/aggregates/u1?version=2".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("version"),
        ),
        (
            "/aggregates/u1?version=0".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("version"),
        ),
        (
            "/aggregates/u1?version=x".into(),
            StatusCode::BAD_REQUEST,
            None,
        ),
        (
            "/aggregates/u1?at=yesterday".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("at"),
        ),
        (
            "/aggregates/u1?at=2024-01-01T00:00:00Z&version=1".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("at"),
        ),
        (
            "/aggregates/u1?at=2000-01-01T00:00:00Z".into(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            format!("/aggregates/u1?min_position={}", head + 100),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("min_position"),
        ),
        (
            "/events/aggregate/ghost".into(),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            "/events/type/user_exploded".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("type"),
        ),
        (
            "/events/aggregate-type/es-user".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("type"),
        ),
        (
            "/events?from=soon".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("from"),
        ),
        (
            "/events?to=2024-13-01T00:00:00Z".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("to"),
        ),
        (
            "/events?from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z".into(),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("to"),
        ),
        ("/events?limit=ten".into(), StatusCode::BAD_REQUEST, None),
        (
            format!("/events?min_position={}", head + 100),
            StatusCode::UNPROCESSABLE_ENTITY,
            Some("min_position"),
        ),
        ("/snapshots/ghost".into(), StatusCode::NOT_FOUND, None),
        (
            "/snapshots/ghost/latest".into(),
            StatusCode::NOT_FOUND,
            None,
        ),
        ("/snapshots/u1/latest".into(), StatusCode::NOT_FOUND, None),
        ("/aggregates/a%2Fb".into(), StatusCode::NOT_FOUND, None),
        (
            format!("/aggregates/{}", "x".repeat(300)),
            StatusCode::NOT_FOUND,
            None,
        ),
        (
            format!("/events/aggregate/{}", "x".repeat(300)),
            StatusCode::NOT_FOUND,
            None,
        ),
    ];
    for (path, status, field) in cases {
        let sep = if path.contains('?') { '&' } else { '?' };
        // Reads of the read models wait for the writes above (unless the case sets its own).
        let path = if path.contains("min_position") {
            path
        } else {
            format!("{path}{sep}min_position={head}")
        };
        let reply = app.get(&path).await;
        assert_eq!(reply.status, status, "GET {path}: {}", reply.text);
        let reply = reply.expect_problem(status);
        if let Some(field) = field {
            assert_eq!(
                reply.error_fields(),
                vec![field],
                "GET {path}: {}",
                reply.text
            );
        }
    }
    // A writer's token may read; no token may not; a scope of another context may not.
    for token in [app.token(Role::Writer), app.token(Role::Admin)] {
        Reply::of(
            app.anonymous(Method::GET, quintet_tests::Side::Read, "/aggregates/u1")
                .bearer_auth(token),
        )
        .await
        .expect_status(StatusCode::OK);
    }
    Reply::of(app.anonymous(Method::GET, quintet_tests::Side::Read, "/events"))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED);
    Reply::of(
        app.anonymous(Method::GET, quintet_tests::Side::Read, "/stats")
            .bearer_auth(app.token_scoped(Role::Reader, "memento")),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    // Paging limits are clamped.
    let clamped = app
        .get("/events?limit=5000")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(clamped.body["limit"], 1000);
    let zero = app
        .get("/events?limit=0")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(zero.body["limit"], 1);
}
both_backends!(reads_refuse_bad_input);

async fn stale_versions_race(app: TestApp) {
    setup(&app).await;
    // Sixteen publishers all expect version 1: exactly one wins, the rest get 409.
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let request = app.write(Method::POST, "/events/publish").json(&json!({
                "type": "custom", "aggregate_id": "u1", "aggregate_type": "user",
                "expected_version": 1, "data": { "writer": i },
            }));
            tokio::spawn(Reply::of(request))
        })
        .collect();
    let mut won = 0;
    for task in tasks {
        let reply = task.await.expect("task");
        match reply.status {
            StatusCode::OK => won += 1,
            StatusCode::CONFLICT => {
                quintet_tests::assert_problem_shape(&reply);
            }
            other => panic!("only 200 or 409, got {other}: {}", reply.text),
        }
    }
    assert_eq!(won, 1);
    let events = app
        .get("/events/aggregate/u1")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(events.body["total"], 2);

    // Without an expectation, concurrent publishes all land, in contiguous versions.
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let request = app.write(Method::POST, "/events/publish").json(&json!({
                "type": "custom", "aggregate_id": "u1", "aggregate_type": "user",
                "data": { "writer": i },
            }));
            tokio::spawn(Reply::of(request))
        })
        .collect();
    for task in tasks {
        let reply = task.await.expect("task");
        assert!(
            reply.status == StatusCode::OK || reply.status == StatusCode::CONFLICT,
            "{}: {}",
            reply.status,
            reply.text
        );
    }
    let events = app
        .get("/events/aggregate/u1?limit=100")
        .await
        .expect_status(StatusCode::OK);
    let versions: Vec<u64> = events.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|e| e["version"].as_u64())
        .collect();
    assert_eq!(versions, (1..=versions.len() as u64).collect::<Vec<_>>());

    // Two creations of one id as different types: one wins, the other is 409.
    let tasks: Vec<_> = ["user", "custom"]
        .into_iter()
        .map(|kind| {
            let request = app.write(Method::POST, "/aggregates").json(&json!({
                "type": kind, "id": "contested", "initial_state": { "email": "c@d.ef" },
            }));
            tokio::spawn(Reply::of(request))
        })
        .collect();
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.expect("task").status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![StatusCode::CREATED, StatusCode::CONFLICT]);
    let contested = app
        .engine
        .store()
        .query_events(
            &kernel::ports::EventFilter {
                aggregate_id: Some("contested".into()),
                ..Default::default()
            },
            0,
            10,
        )
        .await
        .expect("query");
    assert_eq!(contested.total, 1, "one type holds the id");
}
both_backends!(stale_versions_race);

async fn idempotency_and_envelope_ids(app: TestApp) {
    // A generated id with an Idempotency-Key: the retry answers the first result.
    let send = || {
        Reply::of(
            app.write(Method::POST, "/aggregates")
                .header("Idempotency-Key", "create-once")
                .json(&json!({ "type": "custom", "initial_state": { "a": 1 } })),
        )
    };
    let first = send().await.expect_status(StatusCode::CREATED);
    let again = send().await.expect_status(StatusCode::CREATED);
    assert_eq!(first.body, again.body);
    let id = first.body["aggregate_id"]
        .as_str()
        .expect("an id")
        .to_string();
    let other_body = Reply::of(
        app.write(Method::POST, "/aggregates")
            .header("Idempotency-Key", "create-once")
            .json(&json!({ "type": "custom", "initial_state": { "a": 2 } })),
    )
    .await;
    other_body.expect_problem(StatusCode::CONFLICT);

    // A UUID correlation/causation id in the metadata becomes the envelope's.
    let correlation = uuid::Uuid::now_v7();
    let causation = uuid::Uuid::now_v7();
    let published = app
        .post(
            "/events/publish",
            json!({
                "type": "custom", "aggregate_id": id, "aggregate_type": "custom",
                "expected_version": 1, "data": { "b": 2 },
                "metadata": {
                    "correlation_id": correlation.to_string(),
                    "causation_id": causation.to_string(),
                },
            }),
        )
        .await
        .expect_status(StatusCode::OK);
    // Snapshot retries are idempotent too.
    let snap = || {
        Reply::of(
            app.write(Method::POST, "/snapshots")
                .header("Idempotency-Key", "snap-once")
                .json(&json!({ "aggregate_id": id })),
        )
    };
    let s1 = snap().await.expect_status(StatusCode::CREATED);
    let s2 = snap().await.expect_status(StatusCode::CREATED);
    assert_eq!(s1.body, s2.body);
    assert_eq!(s1.body["version"], 2);
    let list = app
        .get_at(&format!("/snapshots/{id}"), s1.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(list.body["total"], 1);

    let events = app
        .get(&format!("/events/aggregate/{id}"))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(events.body["total"], 2, "the retry appended nothing");
    let event = &events.body["items"][1];
    assert_eq!(event["position"], published.position());
    assert_eq!(event["correlation_id"], correlation.to_string());
    assert_eq!(event["causation_id"], causation.to_string());
    assert_eq!(event["metadata"]["correlation_id"], correlation.to_string());
    // Otherwise the request id is the correlation id and there is no causation.
    assert!(events.body["items"][0]["causation_id"].is_null());
}
both_backends!(idempotency_and_envelope_ids);

fn big_bodies(settings: &mut Settings) {
    settings.security.max_body_bytes = 4 << 20;
}

async fn oversize_data_is_413(app: TestApp) {
    let head = setup(&app).await;
    // {"blob":"<n>"} is 11 + n bytes of canonical JSON.
    let sized = |bytes: usize| json!({ "blob": "x".repeat(bytes - 11) });
    let limit = 1_048_576;
    let reply = app
        .post(
            "/aggregates",
            json!({ "type": "custom", "id": "big", "initial_state": sized(limit + 1) }),
        )
        .await;
    assert!(reply.text.contains("max_event_data_size"), "{}", reply.text);
    refused(&app, reply, StatusCode::PAYLOAD_TOO_LARGE, None, head).await;
    let reply = app
        .post(
            "/events/publish",
            json!({ "type": "custom", "aggregate_id": "o1", "aggregate_type": "order",
                    "data": sized(limit + 1) }),
        )
        .await;
    refused(&app, reply, StatusCode::PAYLOAD_TOO_LARGE, None, head).await;
    let reply = app
        .put("/aggregates/u1", json!({ "changes": sized(limit + 1) }))
        .await;
    refused(&app, reply, StatusCode::PAYLOAD_TOO_LARGE, None, head).await;
    // Exactly at the limit fits.
    let fits = app
        .post(
            "/aggregates",
            json!({ "type": "custom", "id": "big", "initial_state": sized(limit) }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    let current = app
        .get_at("/aggregates/big", fits.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        current.body["state"]["blob"].as_str().map(str::len),
        Some(limit - 11)
    );
}
both_backends!(oversize_data_is_413, with = big_bodies);

async fn forgotten_aggregates_are_gone(app: TestApp) {
    app.post(
        "/aggregates",
        json!({ "type": "user", "id": "u1", "initial_state": { "email": "a@b.co" } }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let p = app
        .post("/snapshots", json!({ "aggregate_id": "u1" }))
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    app.get_at("/snapshots/u1/latest", p)
        .await
        .expect_status(StatusCode::OK);

    let forgotten = app.engine.forget("u1", "e2e").await.expect("forget");
    assert_eq!(forgotten.len(), 2, "{forgotten:?}");
    let head = app.head_position().await;
    app.get_at("/aggregates/u1", head)
        .await
        .expect_problem(StatusCode::GONE);
    app.get_at("/snapshots/u1", head)
        .await
        .expect_problem(StatusCode::GONE);
    app.get("/aggregates/u1?version=1")
        .await
        .expect_problem(StatusCode::GONE);
    let events = app
        .get("/events/aggregate/u1")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(events.body["items"][0]["forgotten"], true);
    assert!(events.body["items"][0]["data"].is_null());
    // A forgotten aggregate takes no more events.
    let reply = app
        .post(
            "/events/publish",
            json!({ "type": "custom", "aggregate_id": "u1", "aggregate_type": "user" }),
        )
        .await;
    refused(&app, reply, StatusCode::GONE, None, head).await;
}
both_backends!(forgotten_aggregates_are_gone);
