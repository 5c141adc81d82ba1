//! The repository walk-through, end to end: users, products, payments and orders through
//! their whole lives, every read route, specification queries and the read cache, with
//! read-your-writes through `min_position`.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, TestApp};

async fn stock(app: &TestApp, product: &str, position: u64) -> u64 {
    let reply = app
        .get_at(&format!("/products/{product}"), position)
        .await
        .expect_status(StatusCode::OK);
    reply.body["stock"]
        .as_u64()
        .unwrap_or_else(|| panic!("a stock: {}", reply.text))
}

async fn repository_walkthrough(app: TestApp) {
    // ------------------------------------------------------------------ users
    let ada = app
        .post(
            "/users",
            json!({ "id": "u1", "email": "Ada@Example.com", "name": "Ada Lovelace" }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(ada.body["aggregate_type"], "user");
    assert_eq!(ada.body["aggregate_id"], "u1");
    assert_eq!(ada.body["version"], 1);
    assert_eq!(ada.event_types(), vec!["user_created"]);
    let grace = app
        .post(
            "/users",
            json!({ "email": "grace@example.com", "name": "Grace Hopper" }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    let grace_id = grace.body["aggregate_id"]
        .as_str()
        .expect("a generated id")
        .to_string();
    assert!(!grace_id.is_empty());

    let doc = app
        .get_at("/users/u1", grace.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["id"], "u1");
    assert_eq!(doc.body["email"], "Ada@Example.com");
    assert_eq!(doc.body["name"], "Ada Lovelace");
    assert_eq!(doc.body["version"], 1);
    assert!(doc.body["created_at"].is_string(), "{}", doc.text);
    assert_eq!(doc.body["created_at"], doc.body["updated_at"]);

    let renamed = app
        .put(
            "/users/u1",
            json!({ "name": "Ada King", "expected_version": 1 }),
        )
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(renamed.body["version"], 2);
    assert_eq!(renamed.event_types(), vec!["user_updated"]);
    // If-Match with the version the client saw: stale now.
    Reply::of(
        app.write(Method::PUT, "/users/u1")
            .header("If-Match", "\"1\"")
            .json(&json!({ "name": "Stale" })),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    let p = Reply::of(
        app.write(Method::PUT, "/users/u1")
            .header("If-Match", "\"2\"")
            .json(&json!({ "email": "ada@lovelace.org" })),
    )
    .await
    .expect_status(StatusCode::OK)
    .position();
    let doc = app
        .get_at("/users/u1", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(doc.body["name"], "Ada King");
    assert_eq!(doc.body["email"], "ada@lovelace.org");
    assert_eq!(doc.body["version"], 3);

    let users = app.get_at("/users", p).await.expect_status(StatusCode::OK);
    assert_eq!(users.body["total"], 2, "{}", users.text);
    let found = app
        .get_at("/users/search?q=HOPPER", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(found.ids(), vec![grace_id.clone()]);
    let found = app
        .get_at("/users/search?q=lovelace.ORG", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(found.ids(), vec!["u1"]);
    let found = app
        .get_at("/users/search?q=a", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(found.body["total"], 2);

    // ------------------------------------------------------------------ products
    for (id, name, category, price, stock) in [
        ("lamp", "Desk lamp", "home", 25.5, 10),
        ("pen", "Pen", "office", 1.99, 100),
        ("mug", "Mug", "home", 8.0, 5),
    ] {
        let created = app
            .post(
                "/products",
                json!({ "id": id, "name": name, "category": category, "price": price, "stock": stock }),
            )
            .await
            .expect_status(StatusCode::CREATED);
        assert_eq!(created.event_types(), vec!["product_created"]);
    }
    let p = app
        .put(
            "/products/mug",
            json!({ "price": 7.5, "expected_version": 1 }),
        )
        .await
        .expect_status(StatusCode::OK)
        .position();
    let home = app
        .get_at("/products/category/home", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(home.ids(), vec!["lamp", "mug"]);
    let mug = app
        .get_at("/products/mug", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(mug.body["price"], 7.5);
    assert_eq!(mug.body["category"], "home");
    assert_eq!(mug.body["version"], 2);
    let products = app
        .get_at("/products?limit=2", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(products.body["total"], 3);
    assert_eq!(products.body["next"], 2);

    // ------------------------------------------------------------------ payments
    let payment = app
        .post(
            "/payments",
            json!({ "id": "pay1", "user_id": "u1", "amount": 100.5, "currency": "USD", "gateway": "stripe" }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(payment.event_types(), vec!["payment_created"]);
    for status in ["processing", "completed", "refunded"] {
        let moved = app
            .put("/payments/pay1", json!({ "status": status }))
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(moved.event_types(), vec!["payment_updated"]);
    }
    let p = app
        .post(
            "/payments",
            json!({ "id": "pay2", "user_id": grace_id, "amount": 3, "currency": "EUR", "gateway": "adyen" }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    let pay1 = app
        .get_at("/payments/pay1", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(pay1.body["status"], "refunded");
    assert_eq!(pay1.body["amount"], 100.5);
    assert_eq!(pay1.body["user_id"], "u1");
    assert_eq!(pay1.body["version"], 4);
    let of_ada = app
        .get_at("/payments/user/u1", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(of_ada.ids(), vec!["pay1"]);
    let all = app
        .get_at("/payments", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(all.ids(), vec!["pay1", "pay2"]);

    // ------------------------------------------------------------------ orders
    let placed = app
        .post(
            "/orders",
            json!({
                "id": "o1", "user_id": "u1", "currency": "USD",
                "items": [{ "product_id": "lamp", "quantity": 2 }, { "product_id": "pen", "quantity": 3 }],
            }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(placed.body["aggregate_type"], "order");
    assert_eq!(placed.body["aggregate_id"], "o1");
    assert_eq!(placed.body["version"], 1);
    let mut written = placed.event_types();
    written.sort();
    assert_eq!(
        written,
        vec![
            "order_created",
            "product_stock_reserved",
            "product_stock_reserved"
        ]
    );
    let p = placed.position();
    let o1 = app
        .get_at("/orders/o1", p)
        .await
        .expect_status(StatusCode::OK);
    // 2 × 25.50 + 3 × 1.99, computed on the server.
    assert_eq!(o1.body["total_amount"], 56.97, "{}", o1.text);
    assert_eq!(o1.body["status"], "pending");
    assert_eq!(o1.body["item_count"], 2);
    assert_eq!(
        o1.body["items"][0],
        json!({ "product_id": "lamp", "quantity": 2, "unit_price": 25.5 })
    );
    assert_eq!(stock(&app, "lamp", p).await, 8);
    assert_eq!(stock(&app, "pen", p).await, 97);

    // Cancelling gives the stock back, in the same transaction.
    let cancelled = app
        .put(
            "/orders/o1",
            json!({ "status": "cancelled", "expected_version": 1 }),
        )
        .await
        .expect_status(StatusCode::OK);
    let mut written = cancelled.event_types();
    written.sort();
    assert_eq!(
        written,
        vec![
            "order_updated",
            "product_stock_released",
            "product_stock_released"
        ]
    );
    let p = cancelled.position();
    assert_eq!(stock(&app, "lamp", p).await, 10);
    assert_eq!(stock(&app, "pen", p).await, 100);

    // A delivered order keeps its stock taken, also when deleted.
    app.post(
        "/orders",
        json!({ "id": "o2", "user_id": "u1", "currency": "USD", "items": [{ "product_id": "lamp", "quantity": 1 }] }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    for status in ["confirmed", "shipped", "delivered"] {
        let moved = app
            .put("/orders/o2", json!({ "status": status }))
            .await
            .expect_status(StatusCode::OK);
        // Shipping consumes the reserved stock: nothing is given back.
        assert_eq!(moved.event_types(), vec!["order_updated"], "{status}");
    }
    let deleted = app.delete("/orders/o2").await.expect_status(StatusCode::OK);
    assert_eq!(deleted.event_types(), vec!["order_deleted"]);
    let p = deleted.position();
    assert_eq!(stock(&app, "lamp", p).await, 9);
    app.get_at("/orders/o2", p)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    // Deleting a pending order gives its stock back.
    let p = app
        .post(
            "/orders",
            json!({ "id": "o3", "user_id": grace_id, "currency": "EUR", "items": [{ "product_id": "mug", "quantity": 5 }] }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    assert_eq!(stock(&app, "mug", p).await, 0);
    let deleted = app.delete("/orders/o3").await.expect_status(StatusCode::OK);
    let mut written = deleted.event_types();
    written.sort();
    assert_eq!(written, vec!["order_deleted", "product_stock_released"]);
    let p = deleted.position();
    assert_eq!(stock(&app, "mug", p).await, 5);
    let of_ada = app
        .get_at("/orders/user/u1", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(of_ada.ids(), vec!["o1"]);
    assert_eq!(of_ada.body["items"][0]["status"], "cancelled");
    let orders = app.get_at("/orders", p).await.expect_status(StatusCode::OK);
    assert_eq!(orders.body["total"], 1);

    // ------------------------------------------------------------------ deletes
    let p = app
        .delete("/payments/pay1")
        .await
        .expect_status(StatusCode::OK)
        .position();
    app.get_at("/payments/pay1", p)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let p = app
        .delete("/products/pen")
        .await
        .expect_status(StatusCode::OK)
        .position();
    app.get_at("/products/pen", p)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let gone = app.delete("/users/u1").await.expect_status(StatusCode::OK);
    assert_eq!(gone.event_types(), vec!["user_deleted"]);
    app.get_at("/users/u1", gone.position())
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    // Its email is free again.
    app.post(
        "/users",
        json!({ "email": "ADA@lovelace.org", "name": "Another Ada" }),
    )
    .await
    .expect_status(StatusCode::CREATED);

    // ------------------------------------------------------------------ catalog
    let p = app.head_position().await;
    let catalog = app
        .get_at("/repositories", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(catalog.body["total"], 4);
    let counts: Vec<(String, u64)> = catalog.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["type"].as_str().expect("type").to_string(),
                item["count"].as_u64().expect("count"),
            )
        })
        .collect();
    assert_eq!(
        counts,
        vec![
            ("users".to_string(), 2),
            ("payments".to_string(), 1),
            ("orders".to_string(), 1),
            ("products".to_string(), 2),
        ]
    );
    let products = app
        .get_at("/repositories/products", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(products.body["aggregate_type"], "product");
    assert!(products.body["description"].is_string());
    let fields: Vec<&str> = products.body["fields"]
        .as_array()
        .expect("fields")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(
        fields.contains(&"price") && fields.contains(&"stock"),
        "{fields:?}"
    );
    assert!(products.body["events"]
        .as_array()
        .expect("events")
        .contains(&json!("product_stock_reserved")));
    app.get_at("/repositories/mysql", p)
        .await
        .expect_problem(StatusCode::NOT_FOUND);

    // ------------------------------------------------------------------ specifications
    let cheap_home = Reply::of(
        app.anonymous(
            Method::POST,
            quintet_tests::Side::Read,
            "/repositories/query",
        )
        .bearer_auth(app.token(web::Role::Reader))
        .query(&[("min_position", p)])
        .json(&json!({
            "type": "products",
            "filter": { "and": [
                { "field": "price", "op": "lt", "value": 10 },
                { "field": "category", "op": "eq", "value": "home" },
            ]},
            "sort": [{ "field": "name", "dir": "asc" }],
            "limit": 10, "offset": 0,
        })),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(cheap_home.ids(), vec!["mug"]);
    let by_price = query(
        &app,
        p,
        json!({
            "type": "products",
            "filter": { "or": [
                { "field": "name", "op": "contains", "value": "LAMP" },
                { "not": { "field": "stock", "op": "gte", "value": 6 } },
            ]},
            "sort": [{ "field": "price", "dir": "desc" }],
        }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(by_price.ids(), vec!["lamp", "mug"]);
    let statuses = query(
        &app,
        p,
        json!({
            "type": "orders",
            "filter": { "field": "status", "op": "in", "value": ["cancelled", "delivered"] },
        }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(statuses.ids(), vec!["o1"]);
    let paged = query(
        &app,
        p,
        json!({ "type": "users", "sort": [{ "field": "email" }], "limit": 1, "offset": 1 }),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(paged.body["total"], 2);
    assert_eq!(paged.body["items"][0]["email"], "grace@example.com");

    // ------------------------------------------------------------------ cache
    let stats = |app: &TestApp| {
        let request = app.read("/repositories/cache/stats");
        async move { Reply::of(request).await.expect_status(StatusCode::OK).body }
    };
    let before = stats(&app).await;
    for field in ["hits", "misses", "size"] {
        assert!(before[field].is_u64(), "{before}");
    }
    assert!(before["hit_ratio"].is_f64(), "{before}");
    app.get_at("/products/lamp", p)
        .await
        .expect_status(StatusCode::OK);
    app.get_at("/products/lamp", p)
        .await
        .expect_status(StatusCode::OK);
    let after = stats(&app).await;
    assert!(
        after["hits"].as_u64() > before["hits"].as_u64(),
        "a repeated read is a cache hit: {before} → {after}"
    );
    let warmed = Reply::of(
        app.anonymous(
            Method::POST,
            quintet_tests::Side::Read,
            "/repositories/cache/warm",
        )
        .bearer_auth(app.token(web::Role::Writer))
        .json(&json!({ "type": "products", "limit": 10 })),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(warmed.body["warmed"], 2, "{}", warmed.text);
    assert_eq!(warmed.body["by_type"]["products"], 2);
    let all = Reply::of(
        app.anonymous(
            Method::POST,
            quintet_tests::Side::Read,
            "/repositories/cache/warm",
        )
        .bearer_auth(app.token(web::Role::Writer))
        .json(&json!({})),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(all.body["warmed"], 6, "{}", all.text);
    // A warmed document is served from the cache.
    let before = stats(&app).await;
    app.get("/users/search?q=ada")
        .await
        .expect_status(StatusCode::OK);
    app.get(&format!("/users/{grace_id}"))
        .await
        .expect_status(StatusCode::OK);
    let after = stats(&app).await;
    assert!(after["hits"].as_u64() > before["hits"].as_u64(), "{after}");

    // The stored events carry the seed's names.
    let types: Vec<String> = app
        .events_after(0)
        .await
        .into_iter()
        .map(|e| e.event_type)
        .collect();
    for name in [
        "user_created",
        "user_updated",
        "user_deleted",
        "payment_created",
        "payment_updated",
        "payment_deleted",
        "order_created",
        "order_updated",
        "order_deleted",
        "product_created",
        "product_updated",
        "product_deleted",
    ] {
        assert!(types.iter().any(|t| t == name), "no {name} in {types:?}");
    }
}
both_backends!(repository_walkthrough);

async fn query(app: &TestApp, position: u64, body: Value) -> Reply {
    Reply::of(
        app.anonymous(
            Method::POST,
            quintet_tests::Side::Read,
            "/repositories/query",
        )
        .bearer_auth(app.token(web::Role::Reader))
        .query(&[("min_position", position)])
        .json(&body),
    )
    .await
}

/// The WebSocket shows the repository's events under the seed's names, with context
/// `repository`.
async fn websocket_shows_repository_events(app: TestApp) {
    app.post(
        "/users",
        json!({ "id": "w1", "email": "w1@example.com", "name": "W" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.post(
        "/products",
        json!({ "id": "wp", "name": "W", "category": "ws", "price": 1, "stock": 2 }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.post(
        "/orders",
        json!({ "user_id": "w1", "currency": "USD", "items": [{ "product_id": "wp", "quantity": 1 }] }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.create_caretaker("not-ours").await;

    let url = format!(
        "{}?access_token={}",
        app.ws_url(),
        app.token(web::Role::Reader)
    );
    let (mut socket, _) =
        tokio::time::timeout(quintet_tests::WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("the handshake finishes in time")
            .expect("connected");
    // A barrier (answered with an error) puts the connect-time acknowledgement behind us.
    quintet_tests::ws::barrier(&mut socket).await;
    let (replayed, _) = quintet_tests::ws::subscribe(
        &mut socket,
        json!({ "contexts": ["repository"], "from_position": 0 }),
    )
    .await;
    let types: Vec<&str> = replayed.iter().filter_map(|m| m["type"].as_str()).collect();
    assert_eq!(
        types,
        vec![
            "user_created",
            "product_created",
            "order_created",
            "product_stock_reserved"
        ],
        "{replayed:?}"
    );
    for message in &replayed {
        assert_eq!(message["context"], "repository", "{message}");
    }
    assert_eq!(replayed[2]["aggregate_type"], "order");
    assert_eq!(replayed[2]["data"]["total_amount"], 1.0);
}
both_backends!(websocket_shows_repository_events);
