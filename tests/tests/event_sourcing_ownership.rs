//! Object-level authorization in the event-sourcing context: a token acting for a user
//! (`user_id` claim) writes and reads only that user's own aggregates (an `es-user` whose id
//! is the user, orders and payments whose state's `user_id` is the user) and the shared
//! custom ones; another user's answer like missing ones, the event-log listings hold only
//! what it may see (filtered in the store query: totals match), and the statistics are
//! refused. Admins and tokens acting for nobody see everything.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, TestApp};
use web::Role;

/// The distinct aggregate ids of a page of events, sorted.
fn aggregates(reply: &Reply) -> Vec<String> {
    let mut ids: Vec<String> = reply
        .items()
        .iter()
        .map(|event| event["aggregate_id"].as_str().expect("an id").to_string())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

fn create(kind: &str, id: &str, state: Value) -> Value {
    json!({ "type": kind, "id": id, "initial_state": state })
}

/// Asserts `hidden` answers exactly like `missing` (a 404 with the same title and type).
async fn like_missing(app: &TestApp, token: &str, hidden: &str, missing: &str, position: u64) {
    let hidden_reply = app
        .read_at(token, hidden, position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let missing_reply = app
        .read_at(token, missing, position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    assert_eq!(
        hidden_reply.body["title"], missing_reply.body["title"],
        "{hidden}"
    );
    assert_eq!(
        hidden_reply.body["type"], missing_reply.body["type"],
        "{hidden}"
    );
}

async fn users_see_only_their_own_event_sourced_aggregates(app: TestApp) {
    let admin = app.token(Role::Admin);
    for body in [
        create("user", "ann", json!({ "email": "ann@example.com" })),
        create("user", "ben", json!({ "email": "ben@example.com" })),
        create("order", "o-ann", json!({ "user_id": "ann", "total": 1 })),
        create("order", "o-ben", json!({ "user_id": "ben", "total": 2 })),
        create("payment", "p-ben", json!({ "user_id": "ben", "amount": 5 })),
        create(
            "payment",
            "p-move",
            json!({ "user_id": "ben", "amount": 6 }),
        ),
        create("custom", "c-1", json!({ "note": "shared" })),
        // A custom aggregate naming a user still belongs to nobody.
        create("custom", "c-2", json!({ "user_id": "ben" })),
    ] {
        app.write_as(&admin, Method::POST, "/aggregates", body)
            .await
            .expect_status(StatusCode::CREATED);
    }
    app.write_as(
        &admin,
        Method::POST,
        "/snapshots",
        json!({ "aggregate_id": "o-ben" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let ann = app.token_for_user(Role::Writer, "ann");

    // Writes for someone else: creating is 403, changing another's aggregate is 404.
    let head = app.head_position().await;
    for body in [
        create("order", "o-x", json!({ "user_id": "ben" })),
        create("payment", "p-x", json!({ "amount": 1 })),
        create("user", "carol", json!({ "email": "carol@example.com" })),
    ] {
        app.write_as(&ann, Method::POST, "/aggregates", body)
            .await
            .expect_problem(StatusCode::FORBIDDEN);
    }
    let published = json!({
        "type": "payment_processed", "aggregate_id": "p-y", "aggregate_type": "payment",
        "data": { "amount": 3, "user_id": "ben" },
    });
    app.write_as(&ann, Method::POST, "/events/publish", published)
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    let changes = json!({ "changes": { "total": 3 } });
    let hidden = app
        .write_as(&ann, Method::PUT, "/aggregates/o-ben", changes.clone())
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let absent = app
        .write_as(&ann, Method::PUT, "/aggregates/o-none", changes)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    assert_eq!(hidden.body["title"], absent.body["title"]);
    assert_eq!(hidden.body["detail"], "aggregate o-ben not found");
    let custom_on = |id: &str| {
        json!({
            "type": "custom", "aggregate_id": id, "aggregate_type": "order",
            "data": { "note": "x" },
        })
    };
    let hidden = app
        .write_as(&ann, Method::POST, "/events/publish", custom_on("o-ben"))
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let absent = app
        .write_as(&ann, Method::POST, "/events/publish", custom_on("o-none"))
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    assert_eq!(hidden.body["detail"], "order o-ben not found");
    assert_eq!(absent.body["detail"], "order o-none not found");
    app.write_as(
        &ann,
        Method::POST,
        "/snapshots",
        json!({ "aggregate_id": "o-ben" }),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    // Her own order cannot be handed to someone else either.
    let handing = json!({ "changes": { "user_id": "ben" } });
    let refused = app
        .write_as(&ann, Method::PUT, "/aggregates/o-ann", handing)
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    assert!(
        refused.body["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("changes.user_id")),
        "{}",
        refused.text
    );
    assert_eq!(app.head_position().await, head, "nothing was written");

    // Her own writes, and the shared custom ones, work.
    app.write_as(
        &ann,
        Method::POST,
        "/aggregates",
        create("order", "o-ann-2", json!({ "user_id": "ann" })),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.write_as(
        &ann,
        Method::PUT,
        "/aggregates/o-ann",
        json!({ "changes": { "status": "confirmed" } }),
    )
    .await
    .expect_status(StatusCode::OK);
    app.write_as(
        &ann,
        Method::POST,
        "/events/publish",
        json!({ "type": "custom", "aggregate_id": "c-1", "aggregate_type": "custom",
                "data": { "seen_by": "ann" } }),
    )
    .await
    .expect_status(StatusCode::OK);
    app.write_as(
        &ann,
        Method::POST,
        "/snapshots",
        json!({ "aggregate_id": "o-ann" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    // An admin hands ben's payment to ann: it is hers from then on.
    let position = app
        .write_as(
            &admin,
            Method::PUT,
            "/aggregates/p-move",
            json!({ "changes": { "user_id": "ann" } }),
        )
        .await
        .expect_status(StatusCode::OK)
        .position();

    let reader = app.token_for_user(Role::Reader, "ann");
    // Reads by id: another user's answer like missing ones.
    for (hidden, missing) in [
        ("/aggregates/o-ben", "/aggregates/o-none"),
        ("/aggregates/ben", "/aggregates/nobody"),
        (
            "/aggregates/p-ben?version=1",
            "/aggregates/o-none?version=1",
        ),
        ("/events/aggregate/o-ben", "/events/aggregate/o-none"),
        ("/snapshots/o-ben", "/snapshots/o-none"),
        ("/snapshots/o-ben/latest", "/snapshots/o-none/latest"),
    ] {
        like_missing(&app, &reader, hidden, missing, position).await;
    }
    for path in [
        "/aggregates/ann",
        "/aggregates/o-ann",
        "/aggregates/p-move",
        "/aggregates/c-1",
        "/aggregates/c-2",
        "/aggregates/o-ann?version=1",
        "/events/aggregate/o-ann",
        "/snapshots/o-ann",
        "/snapshots/o-ann/latest",
        "/info",
    ] {
        app.read_at(&reader, path, position)
            .await
            .expect_status(StatusCode::OK);
    }

    // The event log: her aggregates and the shared ones, filtered in the query.
    let own = ["ann", "c-1", "c-2", "o-ann", "o-ann-2", "p-move"];
    let log = app
        .read_at(&reader, "/events?limit=1000", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(aggregates(&log), own, "{}", log.text);
    let total = log.body["total"].as_u64().expect("a total");
    assert_eq!(total, log.items().len() as u64);
    let page = app
        .read_at(&reader, "/events?limit=2&offset=2", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(page.items().len(), 2);
    assert_eq!(page.body["total"], total);
    for (path, expected) in [
        ("/events/type/order_created", vec!["o-ann", "o-ann-2"]),
        ("/events/type/user_created", vec!["ann"]),
        ("/events/aggregate-type/order", vec!["o-ann", "o-ann-2"]),
        ("/events/aggregate-type/payment", vec!["p-move"]),
        ("/events/aggregate-type/custom", vec!["c-1", "c-2"]),
    ] {
        let page = app
            .read_at(&reader, path, position)
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(aggregates(&page), expected, "{path}: {}", page.text);
    }
    // The statistics count everyone: refused.
    app.read_at(&reader, "/stats", position)
        .await
        .expect_problem(StatusCode::FORBIDDEN);

    // Admins (even acting for ann) and tokens acting for nobody see everything.
    let everyone = [
        "ann", "ben", "c-1", "c-2", "o-ann", "o-ann-2", "o-ben", "p-ben", "p-move",
    ];
    for token in [
        admin.clone(),
        app.token_for_user(Role::Admin, "ann"),
        app.token(Role::Reader),
    ] {
        let log = app
            .read_at(&token, "/events?limit=1000", position)
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(aggregates(&log), everyone, "{}", log.text);
        for path in [
            "/aggregates/o-ben",
            "/events/aggregate/o-ben",
            "/snapshots/o-ben",
            "/stats",
        ] {
            app.read_at(&token, path, position)
                .await
                .expect_status(StatusCode::OK);
        }
    }
}

both_backends!(users_see_only_their_own_event_sourced_aggregates);
