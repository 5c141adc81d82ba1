//! Object-level authorization on commands: a token acting for a user (`user_id` claim)
//! sends, undoes and cancels only that user's own commands; an admin is never restricted.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, Side, TestApp};
use web::Role;

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
    let reply = app
        .write_as(
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
    app.write_as(
        &ann,
        Method::POST,
        "/commands/execute",
        json!({"type": "system", "action": "backup", "parameters": {}}),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    let batch = json!([payment("c-ann-1", "ann"), payment("c-ben-1", "ben")]);
    app.write_as(&ann, Method::POST, "/commands/execute-batch", batch)
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    let schedule =
        json!({"execute_at": "2099-01-01T00:00:00Z", "command": payment("c-ben-2", "ben")});
    app.write_as(&ann, Method::POST, "/commands/schedule", schedule)
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    assert_eq!(
        app.head_position().await,
        head,
        "a refused command wrote nothing"
    );

    // Their own: accepted.
    app.write_as(
        &ann,
        Method::POST,
        "/commands/execute",
        payment("c-ann", "ann"),
    )
    .await
    .expect_status(StatusCode::OK);

    // Another user's command, sent by an admin: invisible to ann's token for undo and cancel.
    let admin = app.token(Role::Admin);
    app.write_as(
        &admin,
        Method::POST,
        "/commands/execute",
        payment("c-ben-3", "ben"),
    )
    .await
    .expect_status(StatusCode::OK);
    let scheduled =
        json!({"execute_at": "2099-01-01T00:00:00Z", "command": payment("c-ben-4", "ben")});
    app.write_as(&admin, Method::POST, "/commands/schedule", scheduled)
        .await
        .expect_status(StatusCode::ACCEPTED);
    app.write_as(
        &ann,
        Method::POST,
        "/commands/undo",
        json!({"command_id": "c-ben-3"}),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    app.send_as(
        &ann,
        Method::DELETE,
        Side::Write,
        "/commands/scheduled/c-ben-4",
        None,
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    // ...while ann undoes her own.
    app.write_as(
        &ann,
        Method::POST,
        "/commands/undo",
        json!({"command_id": "c-ann"}),
    )
    .await
    .expect_status(StatusCode::OK);
}
both_backends!(a_user_token_sends_only_its_own_commands);

/// The values of `field` in a page, sorted and deduplicated.
fn values(reply: &Reply, field: &str) -> Vec<String> {
    let mut values: Vec<String> = reply
        .items()
        .iter()
        .map(|item| item[field].as_str().unwrap_or("<none>").to_string())
        .collect();
    values.sort();
    values.dedup();
    values
}

/// Reads of the command context by a token acting for a user: its own commands only, in
/// every listing (filtered in the query: totals and pages hold only its own), by id (404 like
/// a missing one), in the history and the audit trail; the metrics are refused; handlers and
/// breakers stay readable. Admins and tokens acting for nobody see everything.
async fn a_user_token_reads_only_its_own_commands(app: TestApp) {
    for user in ["ann", "ben"] {
        app.post(
            "/users",
            json!({"id": user, "email": format!("{user}@example.com"), "name": user}),
        )
        .await
        .expect_status(StatusCode::CREATED);
    }
    let admin = app.token(Role::Admin);
    let ann_writer = app.token_for_user(Role::Writer, "ann");
    for (token, id, user) in [
        (&ann_writer, "c-ann-1", "ann"),
        (&ann_writer, "c-ann-2", "ann"),
        (&admin, "c-ben-1", "ben"),
    ] {
        app.write_as(token, Method::POST, "/commands/execute", payment(id, user))
            .await
            .expect_status(StatusCode::OK);
    }
    // A command without a user, by an admin.
    app.write_as(
        &admin,
        Method::POST,
        "/commands/execute",
        json!({"type": "system", "command_id": "c-sys", "action": "health_check"}),
    )
    .await
    .expect_status(StatusCode::OK);
    for (token, id, user) in [
        (&ann_writer, "c-ann-s1", "ann"),
        (&ann_writer, "c-ann-s2", "ann"),
        (&admin, "c-ben-s", "ben"),
    ] {
        let body = json!({"execute_at": "2099-01-01T00:00:00Z", "command": payment(id, user)});
        app.write_as(token, Method::POST, "/commands/schedule", body)
            .await
            .expect_status(StatusCode::ACCEPTED);
    }
    // Ann undoes one and cancels another: those events name her too.
    app.write_as(
        &ann_writer,
        Method::POST,
        "/commands/undo",
        json!({"command_id": "c-ann-1"}),
    )
    .await
    .expect_status(StatusCode::OK);
    app.send_as(
        &ann_writer,
        Method::DELETE,
        Side::Write,
        "/commands/scheduled/c-ann-s2",
        None,
    )
    .await
    .expect_success();
    let head = app.head_position().await;

    let ann = app.token_for_user(Role::Reader, "ann");
    let own = ["c-ann-1", "c-ann-2", "c-ann-s1", "c-ann-s2"];

    // Listings: only hers, with totals and pages to match.
    let page = app
        .read_at(&ann, "/commands", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(values(&page, "id"), own, "{}", page.text);
    assert_eq!(page.body["total"], 4, "{}", page.text);
    let first = app
        .read_at(&ann, "/commands?limit=2", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(first.items().len(), 2);
    assert_eq!(first.body["total"], 4);
    assert_eq!(first.body["next"], 2);
    let typed = app
        .read_at(&ann, "/commands?type=payment&status=executed", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(values(&typed, "id"), ["c-ann-2"], "{}", typed.text);
    let scheduled = app
        .read_at(&ann, "/commands/scheduled", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(values(&scheduled, "id"), ["c-ann-s1"], "{}", scheduled.text);
    let queue = app
        .read_at(&ann, "/commands/queue", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(queue.body["total"], 0, "{}", queue.text);

    // By id: another user's command answers exactly like a missing one.
    let hidden = app
        .read_at(&ann, "/commands/c-ben-1", head)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let absent = app
        .read_at(&ann, "/commands/c-nothing", head)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    assert_eq!(hidden.body["title"], absent.body["title"]);
    assert_eq!(hidden.body["type"], absent.body["type"]);
    app.read_at(&ann, "/commands/c-sys", head)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let mine = app
        .read_at(&ann, "/commands/c-ann-1", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(mine.body["status"], "undone", "{}", mine.text);

    // History: her runs, including the undo.
    let history = app
        .read_at(&ann, "/commands/history", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        values(&history, "command_id"),
        ["c-ann-1", "c-ann-2"],
        "{}",
        history.text
    );
    assert_eq!(
        history.body["total"], 3,
        "two runs and an undo: {}",
        history.text
    );
    assert!(
        history
            .items()
            .iter()
            .any(|entry| entry["outcome"] == "undone"),
        "{}",
        history.text
    );

    // Audit: the entries of her commands only (no handler, no other user, no system).
    let audit = app
        .read_at(&ann, "/commands/audit", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(values(&audit, "command_id"), own, "{}", audit.text);
    let statuses = values(&audit, "status");
    for status in ["executed", "undone", "scheduled", "cancelled"] {
        assert!(
            statuses.iter().any(|s| s == status),
            "{status}: {}",
            audit.text
        );
    }
    let total = audit.body["total"].as_u64().expect("a total");
    let paged = app
        .read_at(&ann, "/commands/audit?limit=1&offset=1", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(paged.body["total"], total);
    assert_eq!(paged.items().len(), 1);
    for path in [
        "/commands/audit/type/payment",
        "/commands/audit/range?from=2000-01-01T00:00:00Z&to=2100-01-01T00:00:00Z",
    ] {
        let page = app
            .read_at(&ann, path, head)
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(values(&page, "command_id"), own, "{path}: {}", page.text);
        assert_eq!(page.body["total"], total, "{path}");
    }
    let everything = app
        .read_at(&admin, "/commands/audit?limit=1000", head)
        .await
        .expect_status(StatusCode::OK);
    let entry_of = |command: &str| {
        everything
            .items()
            .iter()
            .find(|entry| entry["command_id"] == command)
            .and_then(|entry| entry["id"].as_str())
            .unwrap_or_else(|| panic!("an audit entry of {command}: {}", everything.text))
            .to_string()
    };
    let bens = app
        .read_at(
            &ann,
            &format!("/commands/audit/{}", entry_of("c-ben-1")),
            head,
        )
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let nobody = app
        .read_at(
            &ann,
            "/commands/audit/00000000-0000-0000-0000-000000000000",
            head,
        )
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    assert_eq!(bens.body["title"], nobody.body["title"]);
    app.read_at(
        &ann,
        &format!("/commands/audit/{}", entry_of("c-ann-2")),
        head,
    )
    .await
    .expect_status(StatusCode::OK);

    // Metrics count everyone's runs: refused. Handlers and breakers are the service's.
    for path in ["/commands/metrics", "/commands/metrics/payment"] {
        app.read_at(&ann, path, head)
            .await
            .expect_problem(StatusCode::FORBIDDEN);
    }
    for path in ["/commands/handlers", "/commands/circuit-breaker/status"] {
        app.read_at(&ann, path, head)
            .await
            .expect_status(StatusCode::OK);
    }

    // Admins (even acting for ann) and tokens acting for nobody see every command.
    let reader = app.token(Role::Reader);
    for token in [&admin, &app.token_for_user(Role::Admin, "ann"), &reader] {
        let page = app
            .read_at(token, "/commands", head)
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(page.body["total"], 7, "{}", page.text);
        app.read_at(token, "/commands/c-ben-1", head)
            .await
            .expect_status(StatusCode::OK);
        let history = app
            .read_at(token, "/commands/history", head)
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(history.body["total"], 5, "{}", history.text);
        app.read_at(token, "/commands/metrics", head)
            .await
            .expect_status(StatusCode::OK);
    }
}
both_backends!(a_user_token_reads_only_its_own_commands);
