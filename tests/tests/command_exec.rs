//! The command context's write side end to end: every command type with its effect on the
//! aggregates it acts on, undo, idempotent command ids, batches (atomic and not), the
//! durable queue and schedule, the handler registry and the circuit breaker's transitions,
//! and bad input. Assertions read the event store, not the read side.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use web::Role;

use quintet_tests::{both_backends, eventually, spawn_app_with, Backend, Reply, TestApp};

fn payment(id: &str, user: &str, amount: f64) -> Value {
    json!({
        "type": "payment", "command_id": id, "user_id": user, "amount": amount,
        "currency": "USD", "payment_method": "card", "gateway": "stripe",
        "description": "e2e",
    })
}

/// The event types of one stream, in order.
async fn stream(app: &TestApp, aggregate_type: &str, id: &str) -> Vec<String> {
    app.engine
        .store()
        .load_stream(aggregate_type, id, 0)
        .await
        .expect("load a stream")
        .into_iter()
        .map(|event| event.event_type)
        .collect()
}

/// The decoded data of a stream's events.
async fn stream_data(app: &TestApp, aggregate_type: &str, id: &str) -> Vec<Value> {
    let mut data = Vec::new();
    for stored in app
        .engine
        .store()
        .load_stream(aggregate_type, id, 0)
        .await
        .expect("load a stream")
    {
        let recorded = app.engine.record(stored).await.expect("decode");
        data.push(recorded.data.unwrap_or(Value::Null));
    }
    data
}

async fn execute(app: &TestApp, body: Value) -> Reply {
    app.post("/commands/execute", body).await
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Reply {
    app.send_as(
        &app.token(Role::Admin),
        method,
        quintet_tests::Side::Write,
        path,
        body,
    )
    .await
}

async fn stock(app: &TestApp, product: &str) -> u64 {
    let data = stream_data(app, "product", product).await;
    let mut stock = 0;
    for event in data {
        if let Some(s) = event.get("stock").and_then(Value::as_u64) {
            stock = s;
        }
    }
    stock
}

async fn setup_repository(app: &TestApp) {
    app.post(
        "/users",
        json!({ "id": "u1", "email": "u1@example.com", "name": "Ada" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.post(
        "/products",
        json!({ "id": "p1", "name": "Pen", "category": "office", "price": 2.5, "stock": 10 }),
    )
    .await
    .expect_status(StatusCode::CREATED);
}

async fn command_every_type_and_undo(app: TestApp) {
    setup_repository(&app).await;

    // payment: a completed payment for an existing user; undo refunds it.
    let paid = execute(&app, payment("c-pay", "u1", 12.5))
        .await
        .expect_status(StatusCode::OK);
    paid.position();
    assert_eq!(paid.body["command_id"], "c-pay");
    assert_eq!(paid.body["status"], "executed");
    assert_eq!(paid.body["command_type"], "payment");
    assert_eq!(paid.body["result"]["aggregate_type"], "payment");
    assert_eq!(paid.body["result"]["status"], "completed");
    assert_eq!(
        stream(&app, "payment", "c-pay").await,
        vec!["payment_created", "payment_updated", "payment_updated"]
    );
    assert_eq!(
        stream(&app, "command", "c-pay").await,
        vec!["command.executed"]
    );
    let executed = &stream_data(&app, "command", "c-pay").await[0];
    assert_eq!(executed["source"], "sync");
    assert_eq!(executed["undoable"], true);
    assert_eq!(executed["payload"]["amount"], 12.5);
    assert!(executed["payload"].get("type").is_none());
    assert!(executed["latency_us"].is_u64());
    // The same command id and body: the recorded outcome, nothing new.
    let head = app.head_position().await;
    let again = execute(&app, payment("c-pay", "u1", 12.5))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(again.body["status"], "executed");
    assert_eq!(app.head_position().await, head);
    // The same id with another body: 409, nothing new.
    execute(&app, payment("c-pay", "u1", 13.0))
        .await
        .expect_problem(StatusCode::CONFLICT);
    assert_eq!(app.head_position().await, head);

    let undone = app
        .post("/commands/undo", json!({ "command_id": "c-pay" }))
        .await
        .expect_status(StatusCode::OK);
    undone.position();
    assert_eq!(undone.body["status"], "undone");
    assert_eq!(undone.body["compensation"]["action"], "refund");
    assert_eq!(
        stream(&app, "command", "c-pay").await,
        vec!["command.executed", "command.undone"]
    );
    let refunded = stream_data(&app, "payment", "c-pay").await;
    assert_eq!(refunded.last().expect("an event")["status"], "refunded");
    let twice = app
        .post("/commands/undo", json!({ "command_id": "c-pay" }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    assert!(twice.body["detail"]
        .as_str()
        .expect("present")
        .contains("already undone"));
    app.post("/commands/undo", json!({ "command_id": "nope" }))
        .await
        .expect_problem(StatusCode::NOT_FOUND);

    // A refusal while running: recorded as failed, answered with the refusal's problem.
    let head = app.head_position().await;
    let refused = execute(&app, payment("c-pay-ghost", "ghost", 1.0))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.body["command_id"], "c-pay-ghost");
    assert_eq!(refused.body["command_status"], "failed");
    assert_eq!(refused.error_fields(), vec!["user_id"]);
    assert!(refused.position() > head);
    assert_eq!(
        stream(&app, "command", "c-pay-ghost").await,
        vec!["command.failed"]
    );
    let failed = &stream_data(&app, "command", "c-pay-ghost").await[0];
    assert_eq!(failed["error"]["status"], 422);
    assert_eq!(failed["error"]["field"], "user_id");
    assert!(stream(&app, "payment", "c-pay-ghost").await.is_empty());
    app.post("/commands/undo", json!({ "command_id": "c-pay-ghost" }))
        .await
        .expect_problem(StatusCode::CONFLICT);

    // user: create, update (undo restores), delete (cannot be undone).
    execute(
        &app,
        json!({ "type": "user", "command_id": "c-u-create", "user_id": "u2", "action": "create",
                "data": { "name": "Grace", "email": "grace@example.com" } }),
    )
    .await
    .expect_status(StatusCode::OK);
    execute(
        &app,
        json!({ "type": "user", "command_id": "c-u-dup", "user_id": "u3", "action": "create",
                "data": { "name": "Other", "email": "GRACE@example.com" } }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    // The email turned out taken only at commit: still recorded as failed, without the user.
    assert_eq!(
        stream(&app, "command", "c-u-dup").await,
        vec!["command.failed"]
    );
    assert!(stream(&app, "user", "u3").await.is_empty());
    execute(
        &app,
        json!({ "type": "user", "command_id": "c-u-update", "user_id": "u2", "action": "update",
                "data": { "name": "Grace Hopper", "email": "hopper@example.com" } }),
    )
    .await
    .expect_status(StatusCode::OK);
    let restored = app
        .post("/commands/undo", json!({ "command_id": "c-u-update" }))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(restored.body["compensation"]["restored"]["name"], "Grace");
    let user = stream_data(&app, "user", "u2").await;
    assert_eq!(user.last().expect("present")["name"], "Grace");
    assert_eq!(user.last().expect("present")["email"], "grace@example.com");
    execute(
        &app,
        json!({ "type": "user", "command_id": "c-u-delete", "user_id": "u2", "action": "delete" }),
    )
    .await
    .expect_status(StatusCode::OK);
    let no = app
        .post("/commands/undo", json!({ "command_id": "c-u-delete" }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    assert!(
        no.body["detail"]
            .as_str()
            .expect("present")
            .contains("cannot be undone"),
        "{}",
        no.text
    );

    // order: create reserves stock; undo cancels it and gives the stock back.
    let placed = execute(
        &app,
        json!({ "type": "order", "command_id": "c-order", "user_id": "u1", "action": "create",
                "items": [{ "product_id": "p1", "quantity": 2 }], "total_amount": 5.0,
                "currency": "USD" }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(placed.body["result"]["aggregate_id"], "c-order");
    assert_eq!(stock(&app, "p1").await, 8);
    execute(
        &app,
        json!({ "type": "order", "command_id": "c-order-bad-total", "user_id": "u1",
                "action": "create", "items": [{ "product_id": "p1", "quantity": 1 }],
                "total_amount": 9.99, "currency": "USD" }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(stock(&app, "p1").await, 8);
    app.post("/commands/undo", json!({ "command_id": "c-order" }))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stock(&app, "p1").await, 10);
    assert_eq!(
        stream_data(&app, "order", "c-order")
            .await
            .last()
            .expect("present")["status"],
        "cancelled"
    );
    execute(
        &app,
        json!({ "type": "order", "command_id": "c-order-2", "order_id": "o2", "user_id": "u1",
                "action": "create", "items": [{ "product_id": "p1", "quantity": 1 }],
                "currency": "USD" }),
    )
    .await
    .expect_status(StatusCode::OK);
    execute(
        &app,
        json!({ "type": "order", "command_id": "c-order-2-confirm", "order_id": "o2",
                "user_id": "u1", "action": "confirm" }),
    )
    .await
    .expect_status(StatusCode::OK);
    execute(
        &app,
        json!({ "type": "order", "command_id": "c-order-2-deliver", "order_id": "o2",
                "user_id": "u1", "action": "deliver" }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    app.post(
        "/commands/undo",
        json!({ "command_id": "c-order-2-confirm" }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);

    // inventory: add, remove (never below 0), set; undo reverses.
    execute(
        &app,
        json!({ "type": "inventory", "command_id": "c-inv-add", "product_id": "p1",
                "action": "add", "quantity": 5, "reason": "delivery" }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(stock(&app, "p1").await, 14);
    let short = execute(
        &app,
        json!({ "type": "inventory", "command_id": "c-inv-short", "product_id": "p1",
                "action": "remove", "quantity": 100, "reason": "loss" }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(short.error_fields(), vec!["quantity"]);
    app.post("/commands/undo", json!({ "command_id": "c-inv-add" }))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stock(&app, "p1").await, 9);
    execute(
        &app,
        json!({ "type": "inventory", "command_id": "c-inv-set", "product_id": "p1",
                "action": "set", "quantity": 3, "reason": "count" }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(stock(&app, "p1").await, 3);
    app.post("/commands/undo", json!({ "command_id": "c-inv-set" }))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stock(&app, "p1").await, 9);

    // refund: the amount and user must match; a refund cannot be undone.
    execute(&app, payment("c-pay-2", "u1", 40.0))
        .await
        .expect_status(StatusCode::OK);
    let wrong = execute(
        &app,
        json!({ "type": "refund", "command_id": "c-refund-wrong", "payment_id": "c-pay-2",
                "user_id": "u1", "amount": 39.99, "currency": "USD", "reason": "damaged" }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(wrong.error_fields(), vec!["amount"]);
    execute(
        &app,
        json!({ "type": "refund", "command_id": "c-refund", "payment_id": "c-pay-2",
                "user_id": "u1", "amount": 40.0, "currency": "USD", "reason": "damaged" }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(
        stream_data(&app, "payment", "c-pay-2")
            .await
            .last()
            .expect("present")["status"],
        "refunded"
    );
    app.post("/commands/undo", json!({ "command_id": "c-refund" }))
        .await
        .expect_problem(StatusCode::CONFLICT);

    // notification, audit, system: their own aggregates; no undo.
    execute(
        &app,
        json!({ "type": "notification", "command_id": "c-note", "user_id": "u1",
                "channel": "email", "notification_type": "receipt", "title": "Thanks",
                "message": "Paid", "priority": "normal" }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(
        stream(&app, "command-notification", "c-note").await,
        vec!["notification.sent"]
    );
    execute(
        &app,
        json!({ "type": "audit", "command_id": "c-audit", "entity_type": "user",
                "entity_id": "u1", "action": "login", "changes": { "ip": "new" },
                "user_id": "u1", "ip_address": "192.0.2.1", "user_agent": "curl/8" }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(
        stream(&app, "command-audit", "c-audit").await,
        vec!["audit.recorded"]
    );
    execute(
        &app,
        json!({ "type": "system", "command_id": "c-sys", "action": "cache_clear",
                "parameters": { "scope": "all" } }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(
        stream(&app, "command-system", "c-sys").await,
        vec!["system.operation_recorded"]
    );
    let system = &stream_data(&app, "command-system", "c-sys").await[0];
    assert_eq!(system["action"], "cache_clear");
    for id in ["c-note", "c-audit", "c-sys"] {
        let no = app
            .post("/commands/undo", json!({ "command_id": id }))
            .await
            .expect_problem(StatusCode::CONFLICT);
        assert!(no.body["detail"]
            .as_str()
            .expect("present")
            .contains("cannot be undone"));
    }
    execute(
        &app,
        json!({ "type": "system", "command_id": "c-sys-bad", "action": "rm_rf" }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
}
both_backends!(command_every_type_and_undo);

async fn command_batches(app: TestApp) {
    setup_repository(&app).await;
    // Not atomic: each command on its own; one refusal does not stop the others.
    let batch = app
        .post(
            "/commands/execute-batch",
            json!([
                payment("b-1", "u1", 1.0),
                payment("b-2", "ghost", 1.0),
                payment("b-3", "u1", 3.0)
            ]),
        )
        .await
        .expect_status(StatusCode::OK);
    batch.position();
    assert_eq!(batch.body["executed"], 2);
    assert_eq!(batch.body["failed"], 1);
    let results = batch.body["results"].as_array().expect("results");
    assert_eq!(results[0]["status"], "executed");
    assert_eq!(results[1]["status"], "failed");
    assert_eq!(results[1]["error"]["status"], 422);
    assert_eq!(results[2]["status"], "executed");
    assert_eq!(stream(&app, "command", "b-2").await, vec!["command.failed"]);
    let batch_source = &stream_data(&app, "command", "b-1").await[0];
    assert_eq!(batch_source["source"], "batch");

    // Atomic: all or nothing; the refusal names the command and its field.
    let head = app.head_position().await;
    let refused = app
        .post(
            "/commands/execute-batch",
            json!({ "atomic": true, "commands": [
                payment("a-1", "u1", 1.0),
                { "type": "inventory", "command_id": "a-2", "product_id": "p1",
                  "action": "add", "quantity": 1, "reason": "r" },
                { "type": "refund", "command_id": "a-3", "payment_id": "b-1", "user_id": "u1",
                  "amount": 2.0, "currency": "USD", "reason": "r" },
            ]}),
        )
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(refused.error_fields(), vec!["commands[2].amount"]);
    assert_eq!(refused.body["command_id"], "a-3");
    assert_eq!(refused.body["index"], 2);
    assert_eq!(
        app.head_position().await,
        head,
        "an atomic refusal writes nothing"
    );
    assert!(stream(&app, "command", "a-1").await.is_empty());

    let atomic = app
        .post(
            "/commands/execute-batch",
            json!({ "atomic": true, "commands": [
                payment("a-1", "u1", 1.0),
                { "type": "inventory", "command_id": "a-2", "product_id": "p1",
                  "action": "add", "quantity": 1, "reason": "r" },
                { "type": "refund", "command_id": "a-3", "payment_id": "b-1", "user_id": "u1",
                  "amount": 1.0, "currency": "USD", "reason": "r" },
            ]}),
        )
        .await
        .expect_status(StatusCode::OK);
    let position = atomic.position();
    let events = app.events_after(head).await;
    assert!(events.iter().all(|e| e.position <= position));
    let correlation = events[0].correlation_id;
    assert!(
        events.iter().all(|e| e.correlation_id == correlation),
        "one unit of work"
    );
    assert_eq!(stock(&app, "p1").await, 11);
    // The same atomic batch again: its recorded outcomes.
    let again = app
        .post(
            "/commands/execute-batch",
            json!({ "atomic": true, "commands": [
                payment("a-1", "u1", 1.0),
                { "type": "inventory", "command_id": "a-2", "product_id": "p1",
                  "action": "add", "quantity": 1, "reason": "r" },
                { "type": "refund", "command_id": "a-3", "payment_id": "b-1", "user_id": "u1",
                  "amount": 1.0, "currency": "USD", "reason": "r" },
            ]}),
        )
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(again.body["results"][2]["status"], "executed");
    assert_eq!(app.head_position().await, position);

    // A malformed member refuses the whole batch, naming it.
    let bad = app
        .post(
            "/commands/execute-batch",
            json!([payment("m-1", "u1", 1.0), { "type": "payment", "user_id": "u1" }]),
        )
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_fields(), vec!["commands[1].amount"]);
    assert!(stream(&app, "command", "m-1").await.is_empty());
}
both_backends!(command_batches);

async fn command_queue_and_schedule(app: TestApp) {
    setup_repository(&app).await;
    let accepted = app
        .post("/commands/execute-async", payment("q-async", "u1", 2.0))
        .await
        .expect_status(StatusCode::ACCEPTED);
    accepted.position();
    assert_eq!(accepted.body["status"], "queued");
    assert_eq!(
        accepted.header("location"),
        Some("/api/v1/commands/q-async")
    );
    assert_eq!(accepted.body["status_url"], "/api/v1/commands/q-async");
    let queued = app
        .post("/commands/queue", payment("q-1", "u1", 3.0))
        .await
        .expect_status(StatusCode::ACCEPTED);
    assert_eq!(queued.body["status"], "queued");
    let scheduled = app
        .post(
            "/commands/schedule",
            json!({ "execute_at": (chrono::Utc::now() + chrono::Duration::milliseconds(700)).to_rfc3339(),
                    "command": payment("s-1", "u1", 4.0) }),
        )
        .await
        .expect_status(StatusCode::ACCEPTED);
    assert_eq!(scheduled.body["status"], "scheduled");
    for id in ["q-async", "q-1", "s-1"] {
        let app = &app;
        eventually(&format!("{id} runs"), || async move {
            let types = stream(app, "command", id).await;
            (types.len() == 2).then_some(types)
        })
        .await;
    }
    assert_eq!(
        stream(&app, "command", "q-async").await,
        vec!["command.queued", "command.executed"]
    );
    assert_eq!(
        stream_data(&app, "command", "q-async").await[1]["source"],
        "async"
    );
    assert_eq!(
        stream_data(&app, "command", "q-1").await[0]["source"],
        "queue"
    );
    assert_eq!(
        stream(&app, "command", "s-1").await,
        vec!["command.scheduled", "command.executed"]
    );
    assert_eq!(
        stream_data(&app, "command", "s-1").await[1]["source"],
        "schedule"
    );
    assert_eq!(
        stream(&app, "payment", "s-1").await.len(),
        3,
        "the scheduled payment completed"
    );

    // Cancelling a scheduled command.
    app.post(
        "/commands/schedule",
        json!({ "execute_at": "2099-01-01T00:00:00Z", "command": payment("s-later", "u1", 4.0) }),
    )
    .await
    .expect_status(StatusCode::ACCEPTED);
    let cancelled = app
        .delete("/commands/scheduled/s-later")
        .await
        .expect_status(StatusCode::OK);
    cancelled.position();
    assert_eq!(cancelled.body["status"], "cancelled");
    app.delete("/commands/scheduled/s-later")
        .await
        .expect_problem(StatusCode::CONFLICT);
    app.delete("/commands/scheduled/unknown")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let past = app
        .post(
            "/commands/schedule",
            json!({ "execute_at": "2001-01-01T00:00:00Z", "command": payment("s-past", "u1", 4.0) }),
        )
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(past.error_fields(), vec!["execute_at"]);
    let bad = app
        .post(
            "/commands/schedule",
            json!({ "execute_at": "2099-01-01T00:00:00Z", "command": { "type": "payment" } }),
        )
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
    assert_eq!(bad.error_fields(), vec!["command.user_id"]);

    // Clearing the queue (admin): a command held back by an open circuit is cancelled.
    for id in ["open-1", "open-2"] {
        execute(&app, payment(id, "ghost", 1.0))
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    }
    app.post("/commands/queue", payment("q-held", "u1", 1.0))
        .await
        .expect_status(StatusCode::ACCEPTED);
    app.write(Method::DELETE, "/commands/queue")
        .send()
        .await
        .map(|r| assert_eq!(r.status(), StatusCode::FORBIDDEN))
        .expect("answered");
    let cleared = admin(&app, Method::DELETE, "/commands/queue", None)
        .await
        .expect_status(StatusCode::OK);
    cleared.position();
    assert_eq!(cleared.body["command_ids"], json!(["q-held"]));
    assert_eq!(
        stream(&app, "command", "q-held").await,
        vec!["command.queued", "command.cancelled"]
    );
}
both_backends!(
    command_queue_and_schedule,
    with = |settings: &mut kernel::config::Settings| {
        settings.command.failure_threshold = 2;
        settings.command.open_timeout = Duration::from_secs(3600);
        settings.command.dispatch_poll = Duration::from_millis(100);
    }
);

/// Waits until the payment handler's open circuit is half-open.
async fn wait_half_open(app: &TestApp) {
    let handler = app
        .engine
        .load::<kernel::domain::command::CommandHandler>("payment")
        .await
        .expect("handler");
    let retry_at = handler.state.retry_at().expect("an open circuit");
    let wait = (retry_at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(wait + Duration::from_millis(20)).await;
}

async fn command_circuit_breaker(app: TestApp) {
    setup_repository(&app).await;
    // closed → open after two consecutive failures, in the failure's unit of work.
    execute(&app, payment("f-1", "ghost", 1.0))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        stream(&app, "command-handler", "payment").await,
        vec!["handler.failure_recorded"]
    );
    let opening = execute(&app, payment("f-2", "ghost", 1.0))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    let events = app.events_after(opening.position() - 3).await;
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert!(
        types.ends_with(&[
            "command.failed",
            "handler.failure_recorded",
            "handler.unavailable"
        ]),
        "{types:?}"
    );
    let unavailable = stream_data(&app, "command-handler", "payment").await;
    assert_eq!(unavailable[2]["reason"], "circuit_open");
    assert!(unavailable[2]["retry_at"].is_string());

    // open: 503 with Retry-After, nothing written; other handlers are unaffected.
    let head = app.head_position().await;
    let refused = execute(&app, payment("f-3", "u1", 1.0))
        .await
        .expect_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.header("retry-after").is_some());
    assert_eq!(app.head_position().await, head);
    assert!(stream(&app, "command", "f-3").await.is_empty());
    execute(
        &app,
        json!({ "type": "system", "command_id": "f-sys", "action": "health_check" }),
    )
    .await
    .expect_status(StatusCode::OK);

    // half-open: a successful probe closes it.
    wait_half_open(&app).await;
    execute(&app, payment("probe-ok", "u1", 1.0))
        .await
        .expect_status(StatusCode::OK);
    let handler = stream_data(&app, "command-handler", "payment").await;
    assert_eq!(
        handler.last().expect("present")["type"],
        "handler.available"
    );
    assert_eq!(
        handler.last().expect("present")["reason"],
        "probe_succeeded"
    );

    // A success after a failure, closed: recovered.
    execute(&app, payment("f-4", "ghost", 1.0))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    execute(&app, payment("ok-4", "u1", 1.0))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        stream(&app, "command-handler", "payment")
            .await
            .last()
            .expect("present"),
        "handler.recovered"
    );

    // half-open: a failed probe opens it again; concurrent requests get exactly one probe.
    for id in ["f-5", "f-6"] {
        execute(&app, payment(id, "ghost", 1.0))
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    }
    wait_half_open(&app).await;
    let before = stream(&app, "command-handler", "payment").await.len();
    let probes = (0..4).map(|n| {
        let app = &app;
        async move { execute(app, payment(&format!("probe-{n}"), "ghost", 1.0)).await }
    });
    let replies = futures::future::join_all(probes).await;
    let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|s| **s == 422).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 503).count(),
        3,
        "{statuses:?}"
    );
    let after = stream(&app, "command-handler", "payment").await;
    assert_eq!(
        &after[before..],
        &["handler.failure_recorded", "handler.unavailable"]
    );

    // reset (admin): closed at once.
    app.post(
        "/commands/circuit-breaker/reset",
        json!({ "handler": "payment" }),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    let reset = admin(
        &app,
        Method::POST,
        "/commands/circuit-breaker/reset",
        Some(json!({ "handler": "payment" })),
    )
    .await
    .expect_status(StatusCode::OK);
    reset.position();
    assert_eq!(reset.body["reset"], json!(["payment"]));
    let last = stream_data(&app, "command-handler", "payment").await;
    assert_eq!(last.last().expect("present")["reason"], "reset");
    execute(&app, payment("after-reset", "u1", 1.0))
        .await
        .expect_status(StatusCode::OK);

    // The registry: unregistered or disabled handlers refuse with 503.
    admin(&app, Method::DELETE, "/commands/handlers/payment", None)
        .await
        .expect_status(StatusCode::OK);
    admin(&app, Method::DELETE, "/commands/handlers/payment", None)
        .await
        .expect_problem(StatusCode::CONFLICT);
    execute(&app, payment("unregistered", "u1", 1.0))
        .await
        .expect_problem(StatusCode::SERVICE_UNAVAILABLE);
    app.post("/commands/queue", payment("unregistered-q", "u1", 1.0))
        .await
        .expect_problem(StatusCode::SERVICE_UNAVAILABLE);
    admin(
        &app,
        Method::POST,
        "/commands/handlers/payment/register",
        Some(json!({ "description": "payments", "available": false })),
    )
    .await
    .expect_status(StatusCode::OK);
    execute(&app, payment("disabled", "u1", 1.0))
        .await
        .expect_problem(StatusCode::SERVICE_UNAVAILABLE);
    let enabled = admin(
        &app,
        Method::POST,
        "/commands/handlers/payment/register",
        Some(json!({ "available": true })),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(enabled.body["available"], true);
    execute(&app, payment("enabled", "u1", 1.0))
        .await
        .expect_status(StatusCode::OK);
    let registry: Vec<String> = stream(&app, "command-handler", "payment").await;
    assert!(
        registry.ends_with(&[
            "handler.unregistered".to_string(),
            "handler.registered".to_string(),
            "handler.unavailable".to_string(),
            "handler.registered".to_string(),
            "handler.available".to_string(),
        ]),
        "{registry:?}"
    );
    admin(
        &app,
        Method::POST,
        "/commands/handlers/teleport/register",
        Some(json!({})),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    app.post("/commands/handlers/payment/register", json!({}))
        .await
        .expect_problem(StatusCode::FORBIDDEN);

    // Metrics reset and history clearing (admin), as events.
    admin(
        &app,
        Method::POST,
        "/commands/metrics/reset",
        Some(json!({ "command_type": "payment" })),
    )
    .await
    .expect_status(StatusCode::OK);
    admin(
        &app,
        Method::POST,
        "/commands/metrics/reset",
        Some(json!({})),
    )
    .await
    .expect_status(StatusCode::OK);
    let resets = stream_data(&app, "command-metrics", "metrics").await;
    assert_eq!(resets[0]["command_type"], "payment");
    assert_eq!(resets[1]["command_type"], Value::Null);
    admin(
        &app,
        Method::POST,
        "/commands/metrics/reset",
        Some(json!({ "command_type": "nope" })),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    admin(&app, Method::DELETE, "/commands/history", None)
        .await
        .expect_status(StatusCode::OK)
        .position();
    assert_eq!(
        stream(&app, "command-history", "history").await,
        vec!["command.history_cleared"]
    );
    app.delete("/commands/history")
        .await
        .expect_problem(StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_circuit_breaker_transitions() {
    let app = spawn_app_with(Backend::Embedded, |settings| {
        settings.command.failure_threshold = 2;
        settings.command.open_timeout = Duration::from_millis(400);
    })
    .await;
    quintet_tests::run_scenario(command_circuit_breaker(app)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_bad_input_writes_nothing() {
    let app = spawn_app_with(Backend::Embedded, |_| {}).await;
    setup_repository(&app).await;
    let head = app.head_position().await;
    let raw = |body: &'static str| {
        app.write(Method::POST, "/commands/execute")
            .header("content-type", "application/json")
            .body(body)
    };
    Reply::of(raw("{\"type\": \"payment\","))
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
    Reply::of(raw("[1, 2]"))
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
    let wrong = execute(
        &app,
        json!({ "type": "payment", "user_id": "u1", "amount": "12",
        "currency": "USD", "payment_method": "card", "gateway": "stripe" }),
    )
    .await
    .expect_problem(StatusCode::BAD_REQUEST);
    assert_eq!(wrong.error_fields(), vec!["amount"]);
    let missing = execute(
        &app,
        json!({ "type": "payment", "user_id": "u1", "amount": 1.0,
        "currency": "USD", "gateway": "stripe" }),
    )
    .await
    .expect_problem(StatusCode::BAD_REQUEST);
    assert_eq!(missing.error_fields(), vec!["payment_method"]);
    let unknown_field = execute(
        &app,
        json!({ "type": "system", "action": "backup", "sudo": true }),
    )
    .await
    .expect_problem(StatusCode::BAD_REQUEST);
    assert_eq!(unknown_field.error_fields(), vec!["sudo"]);
    let unknown = execute(&app, json!({ "type": "teleport" }))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(unknown.error_fields(), vec!["type"]);
    let no_type = execute(&app, json!({ "user_id": "u1" }))
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
    assert_eq!(no_type.error_fields(), vec!["type"]);
    let bad_id = execute(
        &app,
        json!({ "type": "system", "command_id": "a b", "action": "backup" }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad_id.error_fields(), vec!["command_id"]);
    let currency = execute(
        &app,
        json!({ "type": "payment", "user_id": "u1", "amount": 1.0,
        "currency": "usd", "payment_method": "card", "gateway": "stripe" }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(currency.error_fields(), vec!["currency"]);
    let email = execute(
        &app,
        json!({ "type": "user", "user_id": "u9", "action": "create",
        "data": { "name": "X", "email": "not-an-email" } }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(email.error_fields(), vec!["data.email"]);
    let ip = execute(
        &app,
        json!({ "type": "audit", "entity_type": "user", "entity_id": "u1",
        "action": "login", "changes": {}, "user_id": "u1", "ip_address": "999.1.1.1",
        "user_agent": "x" }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(ip.error_fields(), vec!["ip_address"]);
    let huge = "x".repeat(quintet_tests::MAX_BODY_BYTES + 1);
    execute(
        &app,
        json!({ "type": "system", "action": "backup", "parameters": { "blob": huge } }),
    )
    .await
    .expect_problem(StatusCode::PAYLOAD_TOO_LARGE);
    app.post("/commands/undo", json!({ "command_id": 5 }))
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
    let empty = app
        .post("/commands/execute-batch", json!([]))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(empty.error_fields(), vec!["commands"]);
    let twice = app
        .post(
            "/commands/execute-batch",
            json!([{ "type": "system", "command_id": "d", "action": "backup" },
                   { "type": "system", "command_id": "d", "action": "backup" }]),
        )
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(twice.error_fields(), vec!["commands[1].command_id"]);
    app.anonymous(
        Method::POST,
        quintet_tests::Side::Write,
        "/commands/execute",
    )
    .json(&json!({ "type": "system", "action": "backup" }))
    .send()
    .await
    .map(|r| assert_eq!(r.status(), StatusCode::UNAUTHORIZED))
    .expect("answered");
    assert_eq!(app.head_position().await, head, "bad input writes nothing");
}
