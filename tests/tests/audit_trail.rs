//! The audit trail (`GET /audit`, admins only): every accepted command is attributable to
//! the token subject that sent it, across contexts, and can be queried by actor, aggregate
//! and time.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, Side, TestApp};
use web::Role;

async fn write_as(app: &TestApp, subject: &str, path: &str, body: Value) -> u64 {
    app.write_as(
        &app.token_for(subject, Role::Writer),
        Method::POST,
        path,
        body,
    )
    .await
    .expect_success()
    .position()
}

async fn audit(app: &TestApp, token: &str, query: &str) -> Reply {
    app.send_as(
        token,
        Method::GET,
        Side::Read,
        &format!("/audit{query}"),
        None,
    )
    .await
}

async fn every_command_is_attributable_to_its_subject(app: TestApp) {
    write_as(&app, "alice", "/mementos/caretakers", json!({"name": "c1"})).await;
    write_as(
        &app,
        "bob",
        "/users",
        json!({"id": "u1", "email": "u1@example.com", "name": "U"}),
    )
    .await;
    write_as(&app, "alice", "/mediators", json!({"name": "m1"})).await;
    let admin = app.token(Role::Admin);

    let alice = audit(&app, &admin, "?actor=alice")
        .await
        .expect_status(StatusCode::OK);
    let items = alice.body["items"].as_array().expect("items");
    assert!(items.len() >= 2, "{}", alice.text);
    assert!(
        items.iter().all(|e| e["actor"] == "alice"),
        "{}",
        alice.text
    );
    let contexts: Vec<&str> = items.iter().filter_map(|e| e["context"].as_str()).collect();
    assert!(contexts.contains(&"memento") && contexts.contains(&"mediator"));
    assert!(items
        .iter()
        .all(|e| e.get("data").is_none() && e.get("payload").is_none()));

    let bob = audit(
        &app,
        &admin,
        "?actor=bob&aggregate_type=user&aggregate_id=u1",
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(bob.body["total"], json!(1), "{}", bob.text);
    assert_eq!(bob.body["items"][0]["event_type"], "user_created");

    let nobody = audit(&app, &admin, "?actor=carol")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(nobody.body["total"], json!(0));
    let future = audit(&app, &admin, "?from=2999-01-01T00:00:00Z")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(future.body["total"], json!(0));

    // Paging by cursor reads every entry once.
    let all = audit(&app, &admin, "").await.expect_status(StatusCode::OK);
    let total = all.body["total"].as_u64().expect("total");
    let mut seen = 0;
    let mut after = 0;
    loop {
        let page = audit(&app, &admin, &format!("?limit=2&after_position={after}"))
            .await
            .expect_status(StatusCode::OK);
        seen += page.body["items"].as_array().expect("items").len() as u64;
        match page.body["next_after_position"].as_u64() {
            Some(next) => after = next,
            None => break,
        }
    }
    assert_eq!(seen, total);
}
both_backends!(every_command_is_attributable_to_its_subject);

async fn only_unscoped_admins_read_the_audit_trail(app: TestApp) {
    for role in [Role::Reader, Role::Writer] {
        audit(&app, &app.token(role), "")
            .await
            .expect_problem(StatusCode::FORBIDDEN);
    }
    audit(&app, &app.token_scoped(Role::Admin, "memento"), "")
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    Reply::of(app.anonymous(Method::GET, Side::Read, "/audit"))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED);
    let admin = app.token(Role::Admin);
    for bad in [
        "?from=yesterday",
        "?from=2024-02-01T00:00:00Z&to=2024-01-01T00:00:00Z",
        "?actor=",
        "?limit=-1",
    ] {
        let reply = audit(&app, &admin, bad).await;
        assert!(
            reply.status.is_client_error() && reply.status != StatusCode::FORBIDDEN,
            "{bad}: {} {}",
            reply.status,
            reply.text
        );
    }
}
both_backends!(only_unscoped_admins_read_the_audit_trail);
