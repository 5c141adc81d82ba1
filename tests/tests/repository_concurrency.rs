//! The repository's cross-aggregate guarantees under concurrency, on both backends: an email
//! belongs to one user however many race for it; an order and its stock reservations commit
//! together or not at all; concurrent orders never drive stock below 0; a cancellation gives
//! stock back once.

use futures::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, TestApp};

/// Concurrent requests of this many.
const RACERS: usize = 8;

fn statuses(replies: &[Reply]) -> Vec<u16> {
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
    statuses.sort_unstable();
    statuses
}

async fn stock(app: &TestApp, product: &str) -> u64 {
    let position = app.head_position().await;
    let reply = app
        .get_at(&format!("/products/{product}"), position)
        .await
        .expect_status(StatusCode::OK);
    reply.body["stock"]
        .as_u64()
        .unwrap_or_else(|| panic!("a stock: {}", reply.text))
}

async fn count_events(app: &TestApp, aggregate_id: &str, event_type: &str) -> usize {
    app.events_after(0)
        .await
        .iter()
        .filter(|e| e.aggregate_id == aggregate_id && e.event_type == event_type)
        .count()
}

async fn create_product(app: &TestApp, id: &str, stock: u64) {
    app.post(
        "/products",
        json!({ "id": id, "name": id, "category": "race", "price": 1.25, "stock": stock }),
    )
    .await
    .expect_status(StatusCode::CREATED);
}

async fn create_user(app: &TestApp, id: &str) {
    app.post(
        "/users",
        json!({ "id": id, "email": format!("{id}@example.com"), "name": id }),
    )
    .await
    .expect_status(StatusCode::CREATED);
}

fn order(items: Value) -> Value {
    json!({ "user_id": "buyer", "currency": "USD", "items": items })
}

async fn one_email_one_user(app: TestApp) {
    let replies = join_all((0..RACERS).map(|i| {
        // The same email, in other cases and with spaces: one normalized value.
        let email = if i % 2 == 0 {
            "Race@Example.com".to_string()
        } else {
            " race@EXAMPLE.com ".to_string()
        };
        app.post(
            "/users",
            json!({ "email": email, "name": format!("racer {i}") }),
        )
    }))
    .await;
    let mut expected = vec![409; RACERS - 1];
    expected.insert(0, 201);
    assert_eq!(
        statuses(&replies),
        expected,
        "{:?}",
        replies.iter().map(|r| &r.text).collect::<Vec<_>>()
    );
    for reply in replies
        .into_iter()
        .filter(|r| r.status != StatusCode::CREATED)
    {
        reply.expect_problem(StatusCode::CONFLICT);
    }
    let created = app
        .events_after(0)
        .await
        .iter()
        .filter(|e| e.event_type == "user_created")
        .count();
    assert_eq!(created, 1);

    // Racing to take a free email by update: one of two users gets it.
    create_user(&app, "x").await;
    create_user(&app, "y").await;
    let paths = ["/users/x", "/users/y"];
    let replies =
        join_all(paths.map(|path| app.put(path, json!({ "email": "prize@example.com" })))).await;
    assert_eq!(statuses(&replies), vec![200, 409]);
}
both_backends!(one_email_one_user);

async fn a_failed_order_writes_nothing(app: TestApp) {
    create_user(&app, "buyer").await;
    create_product(&app, "plenty", 5).await;
    create_product(&app, "scarce", 1).await;
    let head = app.head_position().await;
    let refused = app
        .post(
            "/orders",
            order(json!([
                { "product_id": "plenty", "quantity": 2 },
                { "product_id": "scarce", "quantity": 2 },
            ])),
        )
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        refused.error_fields(),
        vec!["items[1].quantity"],
        "{}",
        refused.text
    );
    assert_eq!(app.head_position().await, head, "nothing was appended");
    assert_eq!(stock(&app, "plenty").await, 5);
    assert_eq!(stock(&app, "scarce").await, 1);
    let orders = app
        .get_at("/orders", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(orders.body["total"], 0);
}
both_backends!(a_failed_order_writes_nothing);

async fn concurrent_orders_never_oversell(app: TestApp) {
    create_user(&app, "buyer").await;
    create_product(&app, "hot", 10).await;
    let replies = join_all((0..RACERS * 2).map(|_| {
        app.post(
            "/orders",
            order(json!([{ "product_id": "hot", "quantity": 3 }])),
        )
    }))
    .await;
    let won = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count();
    for reply in &replies {
        assert!(
            [201, 409, 422].contains(&reply.status.as_u16()),
            "an order is placed, loses a race (409) or finds too little stock (422): {} {}",
            reply.status,
            reply.text
        );
    }
    assert!((1..=3).contains(&won), "{won} orders of 3 won");
    let left = stock(&app, "hot").await;
    assert_eq!(left, 10 - 3 * won as u64);
    assert_eq!(
        count_events(&app, "hot", "product_stock_reserved").await,
        won
    );
    // With stock left for none, every further order is refused naming the item.
    if left < 3 {
        let refused = app
            .post(
                "/orders",
                order(json!([{ "product_id": "hot", "quantity": 3 }])),
            )
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(refused.error_fields(), vec!["items[0].quantity"]);
    }
}
both_backends!(concurrent_orders_never_oversell);

async fn crossing_orders_stay_consistent(app: TestApp) {
    create_user(&app, "buyer").await;
    create_product(&app, "left", 100).await;
    create_product(&app, "right", 100).await;
    // Half the orders name the products in one order, half in the other.
    let replies = join_all((0..RACERS).map(|i| {
        let items = if i % 2 == 0 {
            json!([{ "product_id": "left", "quantity": 1 }, { "product_id": "right", "quantity": 1 }])
        } else {
            json!([{ "product_id": "right", "quantity": 1 }, { "product_id": "left", "quantity": 1 }])
        };
        app.post("/orders", order(items))
    }))
    .await;
    for reply in &replies {
        assert!(
            [201, 409].contains(&reply.status.as_u16()),
            "{} {}",
            reply.status,
            reply.text
        );
    }
    let won = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED)
        .count() as u64;
    assert!(won >= 1);
    assert_eq!(stock(&app, "left").await, 100 - won);
    assert_eq!(stock(&app, "right").await, 100 - won);

    // Two cancellations of one order: one wins, the stock comes back once.
    let placed = replies
        .iter()
        .find(|r| r.status == StatusCode::CREATED)
        .expect("an order won");
    let id = placed.body["aggregate_id"].as_str().expect("an order id");
    let path = format!("/orders/{id}");
    let cancels = join_all((0..2).map(|_| app.put(&path, json!({ "status": "cancelled" })))).await;
    assert_eq!(statuses(&cancels), vec![200, 409]);
    assert_eq!(stock(&app, "left").await, 100 - won + 1);
    assert_eq!(stock(&app, "right").await, 100 - won + 1);
}
both_backends!(crossing_orders_stay_consistent);
