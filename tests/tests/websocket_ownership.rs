//! `GET /ws` for a token acting for a user (`user_id` claim): it receives the events of the
//! aggregates that user owns (repository users, payments and orders; event-sourcing users,
//! orders and payments; commands) and of the shared ones (products, custom aggregates), in
//! the replay from a position and live alike, also for later events that do not name the
//! owner; never another user's. An admin receives everything.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::ws::{connect, events_until, subscribe};
use quintet_tests::{both_backends, Reply, TestApp};
use web::Role;

/// `aggregate_type/aggregate_id` of each event.
fn streams(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}/{}",
                e["aggregate_type"].as_str().unwrap_or("?"),
                e["aggregate_id"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

/// `aggregate_type/aggregate_id/event type` of each event.
fn typed(events: &[Value]) -> BTreeSet<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{}/{}/{}",
                e["aggregate_type"].as_str().unwrap_or("?"),
                e["aggregate_id"].as_str().unwrap_or("?"),
                e["type"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

async fn admin(app: &TestApp, method: Method, path: &str, body: Value) -> Reply {
    app.write_as(&app.token(Role::Admin), method, path, body)
        .await
}

/// The streams only ben's events are in.
const BENS: [&str; 8] = [
    "user/ben",
    "payment/pb",
    "order/ob",
    "es-user/ben",
    "es-order/eo-ben",
    "command/c-ben",
    "payment/c-ben",
    "es-snapshot/eo-ben",
];

#[track_caller]
fn assert_none_of_bens(events: &[Value]) {
    let seen = streams(events);
    for stream in BENS {
        assert!(!seen.contains(stream), "{stream} was delivered: {seen:?}");
    }
}

async fn a_user_token_streams_only_its_own_events(app: TestApp) {
    for (id, email) in [("ann", "ann@example.com"), ("ben", "ben@example.com")] {
        admin(
            &app,
            Method::POST,
            "/users",
            json!({ "id": id, "email": email, "name": id }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    }
    let product =
        json!({ "id": "p1", "name": "Pen", "category": "office", "price": 2.5, "stock": 100 });
    admin(&app, Method::POST, "/products", product)
        .await
        .expect_status(StatusCode::CREATED);
    for (path, id, user) in [
        ("/payments", "pa", "ann"),
        ("/payments", "pb", "ben"),
        ("/orders", "oa", "ann"),
        ("/orders", "ob", "ben"),
    ] {
        let body = if path == "/payments" {
            json!({ "id": id, "user_id": user, "amount": 10.5, "currency": "USD", "gateway": "stripe" })
        } else {
            json!({ "id": id, "user_id": user, "currency": "USD",
                    "items": [{ "product_id": "p1", "quantity": 1 }] })
        };
        admin(&app, Method::POST, path, body)
            .await
            .expect_status(StatusCode::CREATED);
    }
    // A later event that does not name its owner, before anyone subscribes.
    admin(
        &app,
        Method::PUT,
        "/payments/pb",
        json!({ "status": "processing" }),
    )
    .await
    .expect_status(StatusCode::OK);
    for (kind, id, state) in [
        ("user", "ben", json!({ "email": "ben@example.com" })),
        ("order", "eo-ann", json!({ "user_id": "ann" })),
        ("order", "eo-ben", json!({ "user_id": "ben" })),
        (
            "payment",
            "ep-move",
            json!({ "user_id": "ben", "amount": 4 }),
        ),
        ("custom", "ec", json!({ "note": "shared" })),
    ] {
        admin(
            &app,
            Method::POST,
            "/aggregates",
            json!({ "type": kind, "id": id, "initial_state": state }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    }
    admin(
        &app,
        Method::POST,
        "/snapshots",
        json!({ "aggregate_id": "eo-ben" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    for (id, user) in [("c-ann", "ann"), ("c-ben", "ben")] {
        let command = json!({
            "type": "payment", "command_id": id, "user_id": user, "amount": 10.0,
            "currency": "USD", "payment_method": "card", "gateway": "stripe",
        });
        admin(&app, Method::POST, "/commands/execute", command)
            .await
            .expect_status(StatusCode::OK);
    }

    let ann = app.token_for_user(Role::Reader, "ann");
    // One connection replays from the start, another only goes live (its owners are all
    // looked up), and an admin's sees everything.
    let mut replaying = connect(&app, &ann).await;
    let (replayed, _) = subscribe(&mut replaying, json!({ "from_position": 0 })).await;
    let mut live = connect(&app, &ann).await;
    subscribe(&mut live, json!({})).await;
    let mut everything = connect(&app, &app.token(Role::Admin)).await;
    let (replayed_all, _) = subscribe(&mut everything, json!({ "from_position": 0 })).await;

    assert_none_of_bens(&replayed);
    let replayed_streams = streams(&replayed);
    for stream in [
        "user/ann",
        "payment/pa",
        "order/oa",
        "product/p1",
        "es-order/eo-ann",
        "es-custom/ec",
        "command/c-ann",
        "payment/c-ann",
    ] {
        assert!(
            replayed_streams.contains(stream),
            "{stream}: {replayed_streams:?}"
        );
    }
    assert!(
        !replayed_streams.contains("es-payment/ep-move"),
        "ben's until handed over: {replayed_streams:?}"
    );
    let all_streams = streams(&replayed_all);
    for stream in BENS {
        assert!(
            all_streams.contains(stream),
            "admin: {stream}: {all_streams:?}"
        );
    }

    // Live: later events that do not name the owner, a hand-over, then a shared barrier.
    for (path, body) in [
        ("/payments/pa", json!({ "status": "processing" })),
        ("/payments/pb", json!({ "status": "completed" })),
        ("/orders/ob", json!({ "status": "confirmed" })),
        ("/orders/oa", json!({ "status": "confirmed" })),
    ] {
        admin(&app, Method::PUT, path, body)
            .await
            .expect_status(StatusCode::OK);
    }
    for (id, changes) in [
        ("eo-ben", json!({ "status": "confirmed" })),
        ("eo-ann", json!({ "status": "confirmed" })),
        ("ep-move", json!({ "user_id": "ann" })),
        ("ep-move", json!({ "note": "now ann's" })),
    ] {
        admin(
            &app,
            Method::PUT,
            &format!("/aggregates/{id}"),
            json!({ "changes": changes }),
        )
        .await
        .expect_status(StatusCode::OK);
    }
    let barrier = admin(&app, Method::PUT, "/products/p1", json!({ "price": 3.0 }))
        .await
        .expect_status(StatusCode::OK)
        .position();

    for socket in [&mut replaying, &mut live] {
        let events = events_until(socket, barrier).await;
        assert_none_of_bens(&events);
        let seen = typed(&events);
        for event in [
            "payment/pa/payment_updated",
            "order/oa/order_updated",
            "es-order/eo-ann/order_status_changed",
            "es-payment/ep-move/custom",
            "product/p1/product_updated",
        ] {
            assert!(seen.contains(event), "{event}: {seen:?}");
        }
        let hand_over = events
            .iter()
            .filter(|e| e["aggregate_id"] == "ep-move")
            .count();
        assert_eq!(
            hand_over, 2,
            "the hand-over and the event after it: {seen:?}"
        );
    }
    let all = typed(&events_until(&mut everything, barrier).await);
    for event in [
        "payment/pb/payment_updated",
        "order/ob/order_updated",
        "es-order/eo-ben/order_status_changed",
    ] {
        assert!(all.contains(event), "admin: {event}: {all:?}");
    }
}
both_backends!(a_user_token_streams_only_its_own_events);
