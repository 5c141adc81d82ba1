//! The mediator routes' ugly cases: malformed JSON, wrong types, unknown fields, bad names,
//! every kind's bad payload naming the field, unknown mediators and colleagues,
//! unregistered senders and recipients, the colleague limit, stale versions, oversize
//! messages, roles, and replayed idempotency keys. Each answer is a problem+json naming
//! the field where there is one, and a refused write writes nothing.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, Side, TestApp};
use web::Role;

/// Asserts a problem with `status` whose `errors` name exactly `field`.
#[track_caller]
fn names(reply: Reply, status: StatusCode, field: &str) -> Reply {
    let reply = reply.expect_problem(status);
    assert_eq!(reply.error_fields(), vec![field], "{}", reply.text);
    reply
}

async fn raw_post(app: &TestApp, path: &str, body: &str) -> Reply {
    Reply::of(
        app.write(Method::POST, path)
            .header("content-type", "application/json")
            .body(body.to_string()),
    )
    .await
}

/// A mediator `chat` with colleagues a, b and c; returns the last write's position.
async fn seed(app: &TestApp) -> u64 {
    app.post("/mediators", json!({ "name": "chat" }))
        .await
        .expect_status(StatusCode::CREATED);
    let mut position = 0;
    for id in ["a", "b", "c"] {
        position = app
            .post(
                "/mediators/chat/colleagues",
                json!({ "id": id, "name": id, "type": "service" }),
            )
            .await
            .expect_status(StatusCode::CREATED)
            .position();
    }
    position
}

async fn mediator_bad_input(app: TestApp) {
    seed(&app).await;
    let head = app.head_position().await;

    // ------------------------------------------------------------ malformed bodies: 400
    raw_post(&app, "/mediators", "{\"name\": ")
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
    raw_post(&app, "/mediators/chat/messages", "not json")
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
    names(
        app.post("/mediators", json!({ "name": 5 })).await,
        StatusCode::BAD_REQUEST,
        "name",
    );
    names(
        app.post("/mediators", json!({ "name": "x", "colour": "red" }))
            .await,
        StatusCode::BAD_REQUEST,
        "colour",
    );
    names(
        app.post("/mediators", json!({})).await,
        StatusCode::BAD_REQUEST,
        "name",
    );
    names(
        app.post(
            "/mediators/chat/colleagues",
            json!({ "id": "d", "name": "d", "type": "service", "active": true }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "active",
    );
    names(
        app.post(
            "/mediators/chat/messages",
            json!({ "sender_id": "a", "recipient_id": 7, "message": "x" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "recipient_id",
    );
    names(
        app.post(
            "/mediators/chat/messages",
            json!({ "sender_id": "a", "recipient_id": "b" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "message",
    );
    names(
        app.post(
            "/mediators/chat/broadcast",
            json!({ "sender_id": "a", "recipient_id": "b", "message": "x" }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "recipient_id",
    );

    // ------------------------------------------------------------ bad values: 422
    for bad in ["a b", "a/b", "", "ü"] {
        names(
            app.post("/mediators", json!({ "name": bad })).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "name",
        );
    }
    names(
        app.post("/mediators", json!({ "name": "x".repeat(129) }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "name",
    );
    names(
        app.post("/mediators", json!({ "name": "x", "description": "  " }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "description",
    );
    for (body, field) in [
        (json!({ "id": "d e", "name": "d", "type": "service" }), "id"),
        (json!({ "id": "d", "name": " ", "type": "service" }), "name"),
        (
            json!({ "id": "d", "name": "n".repeat(257), "type": "service" }),
            "name",
        ),
        (json!({ "id": "d", "name": "d", "type": "Service" }), "type"),
        (json!({ "id": "d", "name": "d", "type": "" }), "type"),
    ] {
        names(
            app.post("/mediators/chat/colleagues", body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
        );
    }

    // ------------------------------------------------------------ senders, recipients, kinds
    let send = |body: Value| app.post("/mediators/chat/messages", body);
    names(
        send(json!({ "sender_id": "z", "recipient_id": "b", "message": "x" })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "sender_id",
    );
    names(
        send(json!({ "sender_id": "a", "recipient_id": "z", "message": "x" })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "recipient_id",
    );
    names(
        app.post(
            "/mediators/chat/broadcast",
            json!({ "sender_id": "z", "message": "x" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "sender_id",
    );
    names(
        send(json!({ "sender_id": "a", "recipient_id": "b", "message": "x", "kind": "fax" })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "kind",
    );
    let cases = [
        ("message", json!("   "), "message"),
        ("message", json!({ "text": "x" }), "message"),
        ("event", json!({ "type": "t" }), "message.data"),
        (
            "event",
            json!({ "type": "t", "data": {}, "source": 1 }),
            "message.source",
        ),
        ("command", json!({ "type": "", "data": {} }), "message.type"),
        ("query", json!({ "type": "q", "data": [1] }), "message.data"),
        (
            "notification",
            json!({ "type": "email", "content": "hi" }),
            "message.recipient_id",
        ),
        (
            "workflow",
            json!({ "name": "w", "steps": [{ "name": "a", "type": "t" }, { "name": "b" }] }),
            "message.steps[1].type",
        ),
        (
            "workflow",
            json!({ "name": "w", "steps": [] }),
            "message.steps",
        ),
        (
            "service",
            json!({ "name": "s", "type": "t" }),
            "message.status",
        ),
        (
            "resource",
            json!({ "name": "r", "type": "t", "capacity": 10, "used": 11 }),
            "message.used",
        ),
        (
            "task",
            json!({ "name": "t", "type": "t", "priority": 101 }),
            "message.priority",
        ),
        (
            "job",
            json!({ "name": "j", "type": "t", "schedule": "61 * * * *" }),
            "message.schedule",
        ),
    ];
    for (kind, message, field) in cases {
        names(
            send(json!({ "sender_id": "a", "recipient_id": "b", "kind": kind, "message": message.clone() }))
                .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
        );
        names(
            app.post(
                "/mediators/chat/broadcast",
                json!({ "sender_id": "a", "kind": kind, "message": message }),
            )
            .await,
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
        );
    }

    // ------------------------------------------------------------ unknown things: 404
    app.post(
        "/mediators/nope/messages",
        json!({ "sender_id": "a", "recipient_id": "b", "message": "x" }),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    app.post(
        "/mediators/nope/broadcast",
        json!({ "sender_id": "a", "message": "x" }),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    app.post(
        "/mediators/nope/colleagues",
        json!({ "id": "a", "name": "a", "type": "service" }),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    app.delete("/mediators/chat/colleagues/zed")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.delete("/mediators/nope/colleagues/a")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.delete("/mediators/nope")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.put("/mediators/nope", json!({ "description": "x" }))
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let position = app.head_position().await;
    app.get_at("/mediators/nope", position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get_at("/mediators/nope/colleagues/a/messages", position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get_at("/mediators/chat/colleagues/zed/messages", position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    names(
        app.get_at("/mediators/chat/colleagues/a/messages?kind=fax", position)
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "kind",
    );

    // ------------------------------------------------------------ conflicts: 409
    app.post("/mediators", json!({ "name": "chat" }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    app.post(
        "/mediators/chat/colleagues",
        json!({ "id": "a", "name": "again", "type": "service" }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    let full = app
        .post(
            "/mediators/chat/colleagues",
            json!({ "id": "d", "name": "d", "type": "service" }),
        )
        .await
        .expect_problem(StatusCode::CONFLICT);
    assert!(
        full.body["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("max_colleagues"),
        "{}",
        full.text
    );
    app.put(
        "/mediators/chat",
        json!({ "description": "x", "expected_version": 1 }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    Reply::of(
        app.write(Method::PUT, "/mediators/chat")
            .header("If-Match", "\"2\"")
            .json(&json!({ "description": "x" })),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    Reply::of(
        app.write(Method::DELETE, "/mediators/chat")
            .header("If-Match", "1"),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    app.put("/mediators/chat", json!({}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);

    // ------------------------------------------------------------ roles
    Reply::of(
        app.anonymous(Method::POST, Side::Write, "/mediators")
            .bearer_auth(app.token(Role::Reader))
            .json(&json!({ "name": "r" })),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    Reply::of(
        app.anonymous(Method::POST, Side::Write, "/mediators")
            .json(&json!({ "name": "r" })),
    )
    .await
    .expect_problem(StatusCode::UNAUTHORIZED);

    // ------------------------------------------------------------ oversize: 413
    let big = "x".repeat(quintet_tests::MAX_BODY_BYTES);
    send(json!({ "sender_id": "a", "recipient_id": "b", "message": big }))
        .await
        .expect_problem(StatusCode::PAYLOAD_TOO_LARGE);

    // Nothing of the above wrote anything.
    assert_eq!(
        app.head_position().await,
        head,
        "a refused write wrote events"
    );

    // ------------------------------------------------------------ idempotency
    let keyed = |body: Value| {
        Reply::of(
            app.write(Method::POST, "/mediators/chat/broadcast")
                .header("Idempotency-Key", "bcast-1")
                .json(&body),
        )
    };
    let first = keyed(json!({ "sender_id": "a", "message": "once" }))
        .await
        .expect_status(StatusCode::CREATED);
    let head = app.head_position().await;
    let again = keyed(json!({ "sender_id": "a", "message": "once" }))
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(again.position(), first.position());
    assert_eq!(again.body["message_id"], first.body["message_id"]);
    assert_eq!(again.body["recipients"], json!(["b", "c"]));
    assert_eq!(app.head_position().await, head, "a replay appends nothing");
    keyed(json!({ "sender_id": "a", "message": "twice" }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    let inbox = app
        .get_at("/mediators/chat/colleagues/b/messages", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(inbox.body["total"], 1, "{}", inbox.text);
}

both_backends!(
    mediator_bad_input,
    with = |settings: &mut kernel::config::Settings| settings.mediator.max_colleagues = 3
);

/// With a body limit above it, the 64 KiB message limit itself answers 413.
async fn mediator_message_size_limit(app: TestApp) {
    seed(&app).await;
    let head = app.head_position().await;
    let limit = kernel::domain::mediator::MAX_MESSAGE_BYTES;
    // Serialized with its quotes, this is one byte over.
    let over = "x".repeat(limit - 1);
    app.post(
        "/mediators/chat/messages",
        json!({ "sender_id": "a", "recipient_id": "b", "message": over }),
    )
    .await
    .expect_problem(StatusCode::PAYLOAD_TOO_LARGE);
    app.post(
        "/mediators/chat/broadcast",
        json!({ "sender_id": "a", "message": "y".repeat(limit) }),
    )
    .await
    .expect_problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.head_position().await, head);
    let fits = "x".repeat(limit - 2);
    app.post(
        "/mediators/chat/messages",
        json!({ "sender_id": "a", "recipient_id": "b", "message": fits }),
    )
    .await
    .expect_status(StatusCode::CREATED);
}

both_backends!(
    mediator_message_size_limit,
    with = |settings: &mut kernel::config::Settings| settings.security.max_body_bytes = 256 * 1024
);
