//! Object-level authorization on commands: a token acting for a user (`user_id` claim)
//! sends, undoes and cancels only that user's own commands; an admin is never restricted.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, Side, TestApp};
use web::Role;

async fn send(app: &TestApp, token: &str, method: Method, path: &str, body: Value) -> Reply {
    let mut request = app.anonymous(method, Side::Write, path).bearer_auth(token);
    if !body.is_null() {
        request = request.json(&body);
    }
    Reply::of(request).await
}

fn payment(command_id: &str, user_id: &str) -> Value {
    json!({
        "type": "payment", "command_id": command_id, "user_id": user_id, "amount": 10.0,
        "currency": "USD", "payment_method": "card", "gateway": "stripe"
    })
}

async fn a_user_token_sends_only_its_own_commands(app: TestApp) {
    for user in ["ann", "ben"] {
        app.post(
            "/users",
            json!({"id": user, "email": format!("{user}@example.com"), "name": user}),
        )
        .await
        .expect_status(StatusCode::CREATED);
    }
    let ann = app.token_for_user(Role::Writer, "ann");
    let head = app.head_position().await;

    // Someone else's payment, a command without a user: 403, and nothing written.
    let reply = send(
        &app,
        &ann,
        Method::POST,
        "/commands/execute",
        payment("c-ben", "ben"),
    )
    .await;
    assert_eq!(
        reply.expect_problem(StatusCode::FORBIDDEN).error_fields(),
        Vec::<String>::new()
    );
    send(
        &app,
        &ann,
        Method::POST,
        "/commands/execute",
        json!({"type": "system", "action": "backup", "parameters": {}}),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    let batch = json!([payment("c-ann-1", "ann"), payment("c-ben-1", "ben")]);
    send(&app, &ann, Method::POST, "/commands/execute-batch", batch)
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    let schedule =
        json!({"execute_at": "2099-01-01T00:00:00Z", "command": payment("c-ben-2", "ben")});
    send(&app, &ann, Method::POST, "/commands/schedule", schedule)
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    assert_eq!(
        app.head_position().await,
        head,
        "a refused command wrote nothing"
    );

    // Their own: accepted.
    send(
        &app,
        &ann,
        Method::POST,
        "/commands/execute",
        payment("c-ann", "ann"),
    )
    .await
    .expect_status(StatusCode::OK);

    // Another user's command, sent by an admin: invisible to ann's token for undo and cancel.
    let admin = app.token(Role::Admin);
    send(
        &app,
        &admin,
        Method::POST,
        "/commands/execute",
        payment("c-ben-3", "ben"),
    )
    .await
    .expect_status(StatusCode::OK);
    let scheduled =
        json!({"execute_at": "2099-01-01T00:00:00Z", "command": payment("c-ben-4", "ben")});
    send(&app, &admin, Method::POST, "/commands/schedule", scheduled)
        .await
        .expect_status(StatusCode::ACCEPTED);
    send(
        &app,
        &ann,
        Method::POST,
        "/commands/undo",
        json!({"command_id": "c-ben-3"}),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    send(
        &app,
        &ann,
        Method::DELETE,
        "/commands/scheduled/c-ben-4",
        Value::Null,
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    // ...while ann undoes her own.
    send(
        &app,
        &ann,
        Method::POST,
        "/commands/undo",
        json!({"command_id": "c-ann"}),
    )
    .await
    .expect_status(StatusCode::OK);
}
both_backends!(a_user_token_sends_only_its_own_commands);
