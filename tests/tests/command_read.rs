//! The command read routes (seed 004) against a running app: commands written through the
//! real write routes show up with their status, in the history (newest first), the audit
//! trail (by id, type and time range), the schedule and the metrics; the eight handlers and
//! their circuit breakers are listed before any event; literal routes win over
//! `/commands/{id}`; and bad input is a problem+json naming the field.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, eventually, Reply, Side, TestApp};
use web::Role;

const TYPES: [&str; 8] = [
    "payment",
    "user",
    "order",
    "notification",
    "inventory",
    "refund",
    "audit",
    "system",
];

/// Asserts a problem with `status` whose `errors` name exactly `field`.
#[track_caller]
fn names(reply: Reply, status: StatusCode, field: &str) -> Reply {
    let reply = reply.expect_problem(status);
    assert_eq!(reply.error_fields(), vec![field], "{}", reply.text);
    reply
}

/// An admin's request to write-api with a JSON body.
async fn admin(app: &TestApp, method: Method, path: &str, body: Option<Value>) -> Reply {
    app.send_as(&app.token(Role::Admin), method, Side::Write, path, body)
        .await
}

/// The committed position of a command reply (a failed command's problem carries it in
/// `X-Quintet-Position` only).
fn position_of(reply: &Reply) -> u64 {
    reply
        .header("x-quintet-position")
        .and_then(|p| p.parse().ok())
        .or_else(|| reply.body.get("position").and_then(Value::as_u64))
        .unwrap_or_else(|| panic!("no position: {} {}", reply.status, reply.text))
}

fn ids(reply: &Reply, field: &str) -> Vec<String> {
    reply
        .items()
        .iter()
        .map(|item| item[field].as_str().unwrap_or_default().to_string())
        .collect()
}

async fn handlers_and_metrics_before_any_event(app: &TestApp) {
    let handlers = app
        .get("/commands/handlers")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(handlers.body["total"], 8, "{}", handlers.text);
    assert_eq!(ids(&handlers, "name"), TYPES);
    for handler in handlers.items() {
        assert_eq!(handler["registered"], true, "{handler}");
        assert_eq!(handler["available"], true, "{handler}");
        assert_eq!(handler["circuit"], "closed", "{handler}");
        assert_eq!(handler["consecutive_failures"], 0, "{handler}");
        assert!(handler["description"].is_string(), "{handler}");
    }
    let one = app
        .get("/commands/handlers/refund")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(one.body["name"], "refund");
    assert_eq!(one.body["circuit"], "closed");
    let breakers = app
        .get("/commands/circuit-breaker/status")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&breakers, "name"), TYPES);
    assert!(breakers.items().iter().all(|b| b["state"] == "closed"
        && b["consecutive_failures"] == 0
        && b.get("opened_at").is_none()));
    let metrics = app
        .get("/commands/metrics")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&metrics, "command_type"), TYPES);
    assert!(metrics
        .items()
        .iter()
        .all(|m| m["count"] == 0 && m["failure_rate"] == 0.0 && m.get("p50_ms").is_none()));
    for path in [
        "/commands",
        "/commands/history",
        "/commands/queue",
        "/commands/scheduled",
        "/commands/audit",
    ] {
        let page = app.get(path).await.expect_status(StatusCode::OK);
        assert_eq!(page.body["total"], 0, "{path}: {}", page.text);
        assert_eq!(page.body["items"], json!([]), "{path}");
    }
}

async fn command_reads(app: TestApp) {
    handlers_and_metrics_before_any_event(&app).await;

    // A system command that runs, a user command that fails (no such user), and a user
    // that is created, all synchronously.
    let executed = app
        .post(
            "/commands/execute",
            json!({ "type": "system", "command_id": "sys-1", "action": "health_check" }),
        )
        .await
        .expect_success();
    let failed = app
        .post(
            "/commands/execute",
            json!({
                "type": "user", "command_id": "usr-missing", "user_id": "nobody",
                "action": "update", "data": { "name": "X" },
            }),
        )
        .await;
    assert!(
        failed.status.is_client_error(),
        "{} {}",
        failed.status,
        failed.text
    );
    let created = app
        .post(
            "/commands/execute",
            json!({
                "type": "user", "command_id": "usr-ada", "user_id": "ada",
                "action": "create", "data": { "name": "Ada", "email": "ada@example.com" },
            }),
        )
        .await
        .expect_success();
    let last = position_of(&created)
        .max(position_of(&failed))
        .max(position_of(&executed));

    let sys = app
        .get_at("/commands/sys-1", last)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(sys.body["id"], "sys-1");
    assert_eq!(sys.body["status"], "executed", "{}", sys.text);
    assert_eq!(sys.body["command_type"], "system");
    assert_eq!(sys.body["source"], "sync");
    assert_eq!(sys.body["actor"], "e2e-writer");
    assert!(sys.body["latency_ms"].is_number(), "{}", sys.text);
    assert!(sys.body["executed_at"].is_string());
    let missing = app
        .get("/commands/usr-missing")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(missing.body["status"], "failed", "{}", missing.text);
    assert!(
        missing.body["error"]["status"].is_number(),
        "{}",
        missing.text
    );

    // Filters.
    let failures = app
        .get("/commands?status=failed")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&failures, "id"), ["usr-missing"]);
    let users = app
        .get("/commands?type=user")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(users.body["total"], 2, "{}", users.text);
    let both = app
        .get("/commands?type=user&status=executed")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&both, "id"), ["usr-ada"]);
    let paged = app
        .get("/commands?limit=1")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(paged.body["total"], 3);
    assert_eq!(paged.body["next"], 1);
    assert_eq!(paged.items().len(), 1);

    // History: newest first, one entry per outcome.
    let history = app
        .get("/commands/history")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(
        ids(&history, "command_id"),
        ["usr-ada", "usr-missing", "sys-1"],
        "{}",
        history.text
    );
    assert_eq!(ids(&history, "outcome"), ["executed", "failed", "executed"]);

    // Audit: by id, by type and by time range.
    let audit = app
        .get("/commands/audit?limit=1000")
        .await
        .expect_status(StatusCode::OK);
    let sys_entry = audit
        .items()
        .iter()
        .find(|e| e["command_id"] == "sys-1" && e["event"] == "command.executed")
        .unwrap_or_else(|| panic!("no audit entry of sys-1: {}", audit.text))
        .clone();
    assert_eq!(sys_entry["status"], "executed");
    assert_eq!(sys_entry["actor"], "e2e-writer");
    let by_id = app
        .get(&format!(
            "/commands/audit/{}",
            sys_entry["id"].as_str().expect("id")
        ))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(by_id.body, sys_entry);
    let of_system = app
        .get("/commands/audit/type/system")
        .await
        .expect_status(StatusCode::OK);
    assert!(
        of_system
            .items()
            .iter()
            .all(|e| e["command_type"] == "system"),
        "{}",
        of_system.text
    );
    assert!(ids(&of_system, "command_id").contains(&"sys-1".to_string()));
    let at = sys_entry["at"].as_str().expect("at");
    let range = app
        .get(&format!("/commands/audit/range?from={at}&to={at}"))
        .await
        .expect_status(StatusCode::OK);
    assert!(
        range.items().iter().any(|e| e["id"] == sys_entry["id"]),
        "{}",
        range.text
    );
    assert!(range.items().iter().all(|e| e["at"] == at));
    let before = app
        .get("/commands/audit/range?from=2000-01-01T00:00:00Z&to=2000-01-02T00:00:00%2B01:00")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(before.body["total"], 0);

    // Metrics of what ran.
    let system = app
        .get("/commands/metrics/system")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(system.body["command_type"], "system");
    assert_eq!(system.body["count"], 1, "{}", system.text);
    assert_eq!(system.body["failures"], 0);
    assert!(system.body["p50_ms"].is_number(), "{}", system.text);
    let user = app
        .get("/commands/metrics/user")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(user.body["count"], 2, "{}", user.text);
    assert_eq!(user.body["failures"], 1);
    assert_eq!(user.body["failure_rate"], 0.5);
    let p50 = user.body["p50_ms"].as_f64().expect("p50");
    let p99 = user.body["p99_ms"].as_f64().expect("p99");
    assert!(p50 <= p99, "{}", user.text);

    // Undo is one more outcome: the command shows it, the history leads with it, and it
    // is no latency sample.
    let undone = app
        .post("/commands/undo", json!({ "command_id": "usr-ada" }))
        .await
        .expect_success();
    let ada = app
        .get_at("/commands/usr-ada", position_of(&undone))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ada.body["status"], "undone", "{}", ada.text);
    assert_eq!(ada.body["undoable"], false);
    assert!(ada.body["compensation"].is_object(), "{}", ada.text);
    assert!(ada.body["undone_at"].is_string());
    let history = app
        .get("/commands/history?limit=2")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&history, "outcome"), ["undone", "executed"]);
    assert_eq!(ids(&history, "command_id"), ["usr-ada", "usr-ada"]);
    assert_eq!(history.body["total"], 4);
    assert_eq!(history.body["next"], 2);
    let user = app
        .get("/commands/metrics/user")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(user.body["count"], 2, "{}", user.text);

    // A scheduled command waits in the schedule until cancelled.
    let due = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let scheduled = app
        .post(
            "/commands/schedule",
            json!({
                "execute_at": due,
                "command": { "type": "system", "command_id": "later-1", "action": "backup" },
            }),
        )
        .await
        .expect_success();
    let schedule = app
        .get_at("/commands/scheduled", position_of(&scheduled))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&schedule, "id"), ["later-1"], "{}", schedule.text);
    assert_eq!(schedule.items()[0]["status"], "scheduled");
    assert!(schedule.items()[0]["execute_at"].is_string());
    let cancelled = app.delete("/commands/scheduled/later-1").await;
    let cancelled = if cancelled.status == StatusCode::FORBIDDEN {
        admin(&app, Method::DELETE, "/commands/scheduled/later-1", None).await
    } else {
        cancelled
    }
    .expect_success();
    let later = app
        .get_at("/commands/later-1", position_of(&cancelled))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(later.body["status"], "cancelled", "{}", later.text);
    let schedule = app
        .get("/commands/scheduled")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(schedule.body["total"], 0);

    // Resetting one type's metrics leaves the others; `since` tells when.
    let reset = admin(
        &app,
        Method::POST,
        "/commands/metrics/reset",
        Some(json!({ "command_type": "system" })),
    )
    .await
    .expect_success();
    let system = app
        .get_at("/commands/metrics/system", position_of(&reset))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(system.body["count"], 0, "{}", system.text);
    assert!(system.body["since"].is_string(), "{}", system.text);
    let user = app
        .get("/commands/metrics/user")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(user.body["count"], 2, "{}", user.text);

    // Clearing the history leaves commands and the audit trail.
    let audit_before = audit.body["total"].as_u64().expect("total");
    let cleared = admin(&app, Method::DELETE, "/commands/history", None)
        .await
        .expect_success();
    let history = app
        .get_at("/commands/history", position_of(&cleared))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(history.body["total"], 0, "{}", history.text);
    let audit = app
        .get("/commands/audit")
        .await
        .expect_status(StatusCode::OK);
    assert!(audit.body["total"].as_u64().expect("total") > audit_before);
    app.get("/commands/sys-1")
        .await
        .expect_status(StatusCode::OK);

    // A queued command leaves the queue once the dispatcher has run it.
    let queued = app
        .post(
            "/commands/queue",
            json!({ "type": "system", "command_id": "q-1", "action": "reindex" }),
        )
        .await
        .expect_success();
    let queue = app
        .get_at("/commands/queue", position_of(&queued))
        .await
        .expect_status(StatusCode::OK);
    assert!(
        queue.items().iter().all(|c| c["status"] == "queued"),
        "{}",
        queue.text
    );
    let ran = eventually("q-1 to run from the queue", || async {
        let command = app.get("/commands/q-1").await;
        (command.body["status"] == "executed").then_some(command)
    })
    .await;
    assert_eq!(ran.body["source"], "queue", "{}", ran.text);
    assert!(ran.body["queued_at"].is_string(), "{}", ran.text);
    let queue = app
        .get("/commands/queue")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(queue.body["total"], 0, "{}", queue.text);

    // Disabling a handler shows in its view and breaker.
    let disabled = admin(
        &app,
        Method::POST,
        "/commands/handlers/notification/register",
        Some(json!({ "available": false, "description": "Paused" })),
    )
    .await
    .expect_success();
    let handler = app
        .get_at("/commands/handlers/notification", position_of(&disabled))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(handler.body["available"], false, "{}", handler.text);
    assert_eq!(handler.body["unavailable_reason"], "disabled");
    assert_eq!(handler.body["description"], "Paused");
    let handlers = app
        .get("/commands/handlers")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(handlers.body["total"], 8);
}
both_backends!(command_reads);

/// Literal routes (`/commands/history`, `/commands/queue`, …) win over `/commands/{id}`,
/// and `/commands/audit/type`, `/commands/audit/range` over `/commands/audit/{id}`.
async fn literal_routes_win(app: TestApp) {
    for path in [
        "/commands/history",
        "/commands/queue",
        "/commands/scheduled",
        "/commands/audit",
    ] {
        let page = app.get(path).await.expect_status(StatusCode::OK);
        assert!(page.body["items"].is_array(), "{path}: {}", page.text);
    }
    for path in [
        "/commands/handlers",
        "/commands/metrics",
        "/commands/circuit-breaker/status",
    ] {
        let list = app.get(path).await.expect_status(StatusCode::OK);
        assert_eq!(list.body["total"], 8, "{path}: {}", list.text);
    }
    // `range` is not read as an audit id, nor `type` as one.
    names(
        app.get("/commands/audit/range").await,
        StatusCode::BAD_REQUEST,
        "from",
    );
    // An id that is not a literal still reaches /commands/{id}.
    app.get("/commands/histories")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    // Write-only literal routes answer 405 to GET, not a command lookup.
    let reply = app.get("/commands/execute").await;
    assert!(
        reply.status == StatusCode::METHOD_NOT_ALLOWED || reply.status == StatusCode::NOT_FOUND,
        "{} {}",
        reply.status,
        reply.text
    );
}
both_backends!(literal_routes_win);

async fn command_reads_bad_input(app: TestApp) {
    // Unknown ids.
    app.get("/commands/nope")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get("/commands/handlers/teleport")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get(&format!("/commands/audit/{}", uuid::Uuid::new_v4()))
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    names(
        app.get("/commands/audit/not-a-uuid").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "id",
    );
    // Unknown types and statuses.
    names(
        app.get("/commands/audit/type/teleport").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "type",
    );
    names(
        app.get("/commands/metrics/Payment").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "type",
    );
    names(
        app.get("/commands?type=teleport").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "type",
    );
    names(
        app.get("/commands?status=running").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "status",
    );
    // Time ranges.
    names(
        app.get("/commands/audit/range?from=2024-01-02T00:00:00Z&to=2024-01-01T00:00:00Z")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "to",
    );
    names(
        app.get("/commands/audit/range?from=yesterday&to=2024-01-01T00:00:00Z")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "from",
    );
    names(
        app.get("/commands/audit/range?from=2024-01-01T00:00:00Z&to=2024-13-01T00:00:00Z")
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "to",
    );
    names(
        app.get("/commands/audit/range?from=2024-01-01T00:00:00Z")
            .await,
        StatusCode::BAD_REQUEST,
        "to",
    );
    // Paging.
    names(
        app.get("/commands?limit=abc").await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    names(
        app.get("/commands/history?offset=-1").await,
        StatusCode::BAD_REQUEST,
        "offset",
    );
    names(
        app.get("/commands/audit?limit=4294967296").await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    names(
        app.get("/commands/queue?offset=1000000000000001").await,
        StatusCode::BAD_REQUEST,
        "offset",
    );
    // A huge offset is an empty last page.
    let empty = app
        .get("/commands/audit?offset=1000000000000000")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(empty.body["items"], json!([]));
    assert!(empty.body.get("next").is_none());
    // Overlong path parameters.
    let long = "x".repeat(300);
    names(
        app.get(&format!("/commands/{long}")).await,
        StatusCode::BAD_REQUEST,
        "id",
    );
    names(
        app.get(&format!("/commands/metrics/{long}")).await,
        StatusCode::BAD_REQUEST,
        "type",
    );
    // Read-your-writes beyond the head.
    names(
        app.get("/commands?min_position=999999999").await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "min_position",
    );
    // No token, or a token of another context.
    Reply::of(app.anonymous(Method::GET, Side::Read, "/commands"))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED);
    Reply::of(
        app.anonymous(Method::GET, Side::Read, "/commands/metrics")
            .bearer_auth(app.token_scoped(Role::Reader, "memento")),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    // Nothing above wrote anything.
    let audit = eventually("an empty audit trail", || async {
        let audit = app.get("/commands/audit").await;
        (audit.status == StatusCode::OK).then_some(audit)
    })
    .await;
    assert_eq!(audit.body["total"], 0, "{}", audit.text);
}
both_backends!(command_reads_bad_input);
