//! The repository routes' ugly cases: wrong types, unknown fields and ids, bad values,
//! stale versions, illegal transitions, unknown specification fields and ops, roles and
//! scopes, idempotency. Each answer is a problem+json naming the field where there is one,
//! and a refused write writes nothing.

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

async fn query(app: &TestApp, body: Value) -> Reply {
    Reply::of(
        app.anonymous(Method::POST, Side::Read, "/repositories/query")
            .bearer_auth(app.token(Role::Reader))
            .json(&body),
    )
    .await
}

/// Seeds a user `u1` (ada@example.com) and products `a` (stock 5, 10.00) and `b` (stock 1,
/// 2.50); returns the position of the last write.
async fn seed(app: &TestApp) -> u64 {
    app.post(
        "/users",
        json!({ "id": "u1", "email": "ada@example.com", "name": "Ada" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.post(
        "/products",
        json!({ "id": "a", "name": "A", "category": "c", "price": 10, "stock": 5 }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.post(
        "/products",
        json!({ "id": "b", "name": "B", "category": "c", "price": 2.5, "stock": 1 }),
    )
    .await
    .expect_status(StatusCode::CREATED)
    .position()
}

async fn users_bad_input(app: TestApp) {
    seed(&app).await;
    // Wrong types, unknown and missing fields: 400 naming the field.
    names(
        app.post("/users", json!({ "email": 5, "name": "x" })).await,
        StatusCode::BAD_REQUEST,
        "email",
    );
    names(
        app.post(
            "/users",
            json!({ "email": "x@y.zz", "name": "x", "age": 3 }),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "age",
    );
    names(
        app.post("/users", json!({ "email": "x@y.zz" })).await,
        StatusCode::BAD_REQUEST,
        "name",
    );
    // Bad values: 422 naming the field.
    names(
        app.post("/users", json!({ "email": "nope", "name": "x" }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "email",
    );
    names(
        app.post("/users", json!({ "email": "x@y.zz", "name": "  " }))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "name",
    );
    names(
        app.post(
            "/users",
            json!({ "id": "a b", "email": "x@y.zz", "name": "x" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "id",
    );
    // The email is unique without case; the id too.
    app.post(
        "/users",
        json!({ "email": " ADA@example.COM ", "name": "Copy" }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    app.post(
        "/users",
        json!({ "id": "u1", "email": "other@example.com", "name": "Other" }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);

    // Updates.
    app.put("/users/nobody", json!({ "name": "x" }))
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.put("/users/u1", json!({}))
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    app.put("/users/u1", json!({ "name": "x", "expected_version": 7 }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    names(
        Reply::of(
            app.write(Method::PUT, "/users/u1")
                .header("If-Match", "\"2\"")
                .json(&json!({ "name": "x", "expected_version": 1 })),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "expected_version",
    );
    // Taking another user's email fails whole: the old email stays reserved.
    app.post(
        "/users",
        json!({ "id": "u2", "email": "grace@example.com", "name": "Grace" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let head = app.head_position().await;
    app.put("/users/u2", json!({ "email": "Ada@Example.com" }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    assert_eq!(
        app.head_position().await,
        head,
        "a refused update writes nothing"
    );
    app.post(
        "/users",
        json!({ "email": "grace@example.com", "name": "Copy" }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    // Moving to a new email frees the old one, in the same transaction.
    app.put("/users/u2", json!({ "email": "hopper@example.com" }))
        .await
        .expect_status(StatusCode::OK);
    app.post(
        "/users",
        json!({ "email": "grace@example.com", "name": "New Grace" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.post(
        "/users",
        json!({ "email": "hopper@example.com", "name": "Copy" }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    // Only the case changes: still the same reservation.
    app.put("/users/u2", json!({ "email": "Hopper@Example.com" }))
        .await
        .expect_status(StatusCode::OK);

    app.delete("/users/nobody")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.delete("/users/u2").await.expect_status(StatusCode::OK);
    app.delete("/users/u2")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let p = app.head_position().await;
    app.get_at("/users/u2", p)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    names(app.get("/users/search").await, StatusCode::BAD_REQUEST, "q");
}
both_backends!(users_bad_input);

async fn payments_bad_input(app: TestApp) {
    seed(&app).await;
    let payment = |user: &str, amount: Value, currency: &str| json!({ "user_id": user, "amount": amount, "currency": currency, "gateway": "stripe" });
    for (amount, field_status) in [
        (json!(-5), StatusCode::UNPROCESSABLE_ENTITY),
        (json!(0), StatusCode::UNPROCESSABLE_ENTITY),
        (json!(1.005), StatusCode::UNPROCESSABLE_ENTITY),
        (json!(2e9), StatusCode::UNPROCESSABLE_ENTITY),
        (json!("10"), StatusCode::BAD_REQUEST),
        (json!(null), StatusCode::BAD_REQUEST),
    ] {
        names(
            app.post("/payments", payment("u1", amount, "USD")).await,
            field_status,
            "amount",
        );
    }
    names(
        app.post("/payments", payment("u1", json!(10), "usd")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "currency",
    );
    let unknown_user = names(
        app.post("/payments", payment("ghost", json!(10), "USD"))
            .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "user_id",
    );
    assert!(unknown_user.text.contains("ghost"), "{}", unknown_user.text);
    names(
        app.post(
            "/payments",
            json!({ "user_id": "u1", "amount": 1, "currency": "USD", "gateway": "no spaces" }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "gateway",
    );

    app.post(
        "/payments",
        json!({ "id": "p1", "user_id": "u1", "amount": 10, "currency": "USD", "gateway": "stripe" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    // Illegal transition: 409 with the reason.
    let illegal = app
        .put("/payments/p1", json!({ "status": "completed" }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    assert!(
        illegal.text.contains("cannot go from pending to completed"),
        "{}",
        illegal.text
    );
    names(
        app.put("/payments/p1", json!({ "status": "paid" })).await,
        StatusCode::BAD_REQUEST,
        "status",
    );
    app.put(
        "/payments/p1",
        json!({ "status": "processing", "expected_version": 5 }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    app.put(
        "/payments/p1",
        json!({ "status": "processing", "expected_version": 1 }),
    )
    .await
    .expect_status(StatusCode::OK);
    // Details change only while pending; a processing payment is not deleted.
    app.put("/payments/p1", json!({ "amount": 20 }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    app.delete("/payments/p1")
        .await
        .expect_problem(StatusCode::CONFLICT);
    app.put("/payments/nope", json!({ "status": "processing" }))
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.delete("/payments/nope")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    // A deleted user takes no new payments.
    app.delete("/users/u1").await.expect_status(StatusCode::OK);
    names(
        app.post("/payments", payment("u1", json!(10), "USD")).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "user_id",
    );
    let p = app.head_position().await;
    app.get_at("/payments/nope", p)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
}
both_backends!(payments_bad_input);

async fn orders_and_products_bad_input(app: TestApp) {
    let seeded = seed(&app).await;
    let order = |items: Value| json!({ "user_id": "u1", "currency": "USD", "items": items });
    let head = app.head_position().await;
    let cases = [
        (
            order(
                json!([{ "product_id": "a", "quantity": 1 }, { "product_id": "ghost", "quantity": 1 }]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "items[1].product_id",
        ),
        (
            order(
                json!([{ "product_id": "a", "quantity": 1 }, { "product_id": "b", "quantity": 2 }]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "items[1].quantity",
        ),
        (
            order(json!([{ "product_id": "a", "quantity": 0 }])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "items[0].quantity",
        ),
        (
            order(json!([{ "product_id": "a", "quantity": -3 }])),
            StatusCode::UNPROCESSABLE_ENTITY,
            "items[0].quantity",
        ),
        (
            order(json!([{ "product_id": "a", "quantity": "2" }])),
            StatusCode::BAD_REQUEST,
            "items[0].quantity",
        ),
        (
            order(json!([{ "product_id": "a", "quantity": 1, "price": 0 }])),
            StatusCode::BAD_REQUEST,
            "items[0].price",
        ),
        (
            order(
                json!([{ "product_id": "a", "quantity": 1 }, { "product_id": "a", "quantity": 1 }]),
            ),
            StatusCode::UNPROCESSABLE_ENTITY,
            "items[1].product_id",
        ),
        (order(json!([])), StatusCode::UNPROCESSABLE_ENTITY, "items"),
        (
            json!({ "user_id": "ghost", "currency": "USD", "items": [{ "product_id": "a", "quantity": 1 }] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "user_id",
        ),
        (
            json!({ "user_id": "u1", "currency": "US", "items": [{ "product_id": "a", "quantity": 1 }] }),
            StatusCode::UNPROCESSABLE_ENTITY,
            "currency",
        ),
    ];
    for (body, status, field) in cases {
        names(app.post("/orders", body).await, status, field);
    }
    assert_eq!(
        app.head_position().await,
        head,
        "refused orders write nothing"
    );
    let orders = app
        .get_at("/orders", seeded)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(orders.body["total"], 0);

    app.post(
        "/orders",
        json!({ "id": "o1", "user_id": "u1", "currency": "USD", "items": [{ "product_id": "a", "quantity": 1 }] }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.post(
        "/orders",
        json!({ "id": "o1", "user_id": "u1", "currency": "USD", "items": [{ "product_id": "a", "quantity": 1 }] }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    let illegal = app
        .put("/orders/o1", json!({ "status": "delivered" }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    assert!(
        illegal.text.contains("cannot go from pending to delivered"),
        "{}",
        illegal.text
    );
    names(
        app.put("/orders/o1", json!({ "status": "lost" })).await,
        StatusCode::BAD_REQUEST,
        "status",
    );
    names(
        app.put("/orders/o1", json!({})).await,
        StatusCode::BAD_REQUEST,
        "status",
    );
    app.put(
        "/orders/o1",
        json!({ "status": "confirmed", "expected_version": 9 }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    app.put("/orders/o1", json!({ "status": "cancelled" }))
        .await
        .expect_status(StatusCode::OK);
    // Cancelled is final: a second cancel gives nothing back twice.
    app.put("/orders/o1", json!({ "status": "cancelled" }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    app.put("/orders/ghost", json!({ "status": "confirmed" }))
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.delete("/orders/ghost")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let p = app.head_position().await;
    let a = app
        .get_at("/products/a", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(a.body["stock"], 5, "{}", a.text);

    // Products.
    let product = |price: Value, stock: Value| json!({ "name": "P", "category": "c", "price": price, "stock": stock });
    names(
        app.post("/products", product(json!(-1), json!(1))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "price",
    );
    names(
        app.post("/products", product(json!(1), json!(-1))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "stock",
    );
    names(
        app.post("/products", product(json!(1), json!(1.5))).await,
        StatusCode::BAD_REQUEST,
        "stock",
    );
    names(
        app.post("/products", product(json!("cheap"), json!(1)))
            .await,
        StatusCode::BAD_REQUEST,
        "price",
    );
    names(
        app.post(
            "/products",
            json!({ "name": "P", "category": " ", "price": 1, "stock": 1 }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "category",
    );
    app.put("/products/a", json!({ "stock": 3, "expected_version": 1 }))
        .await
        .expect_problem(StatusCode::CONFLICT);
    names(
        app.put("/products/a", json!({ "stock": -1 })).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "stock",
    );
    app.put("/products/ghost", json!({ "stock": 1 }))
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.delete("/products/b")
        .await
        .expect_status(StatusCode::OK);
    // A deleted product is not ordered.
    names(
        app.post(
            "/orders",
            json!({ "user_id": "u1", "currency": "USD", "items": [{ "product_id": "b", "quantity": 1 }] }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "items[0].product_id",
    );
    let p = app.head_position().await;
    app.get_at("/products/b", p)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get_at("/orders/ghost", p)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
}
both_backends!(orders_and_products_bad_input);

async fn specifications_bad_input(app: TestApp) {
    seed(&app).await;
    let cases = [
        (
            json!({ "type": "products", "filter": { "field": "colour", "op": "eq", "value": "red" } }),
            "filter.field",
        ),
        (
            json!({ "type": "products", "filter": { "field": "price", "op": "like", "value": 1 } }),
            "filter.op",
        ),
        (
            json!({ "type": "products", "filter": { "and": [
                { "field": "price", "op": "lt", "value": 1 },
                { "field": "price", "op": "between", "value": 1 },
            ] } }),
            "filter.and[1].op",
        ),
        (
            json!({ "type": "products", "filter": { "field": "price", "op": "contains", "value": "1" } }),
            "filter.op",
        ),
        (
            json!({ "type": "products", "filter": { "field": "price", "op": "lt", "value": "ten" } }),
            "filter.value",
        ),
        (
            json!({ "type": "users", "sort": [{ "field": "password" }] }),
            "sort[0].field",
        ),
        (
            json!({ "type": "users", "sort": [{ "field": "name", "dir": "up" }] }),
            "sort[0].dir",
        ),
    ];
    for (body, field) in cases {
        names(
            query(&app, body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            field,
        );
    }
    names(
        query(&app, json!({ "type": "widgets" })).await,
        StatusCode::BAD_REQUEST,
        "type",
    );
    names(
        query(&app, json!({ "type": "users", "where": {} })).await,
        StatusCode::BAD_REQUEST,
        "where",
    );
    names(
        query(&app, json!({ "type": "users", "limit": "ten" })).await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    app.get("/repositories/widgets")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    names(
        Reply::of(
            app.anonymous(Method::POST, Side::Read, "/repositories/cache/warm")
                .bearer_auth(app.token(Role::Writer))
                .json(&json!({ "type": "widgets" })),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "type",
    );
}
both_backends!(specifications_bad_input);

async fn roles_scopes_and_idempotency(app: TestApp) {
    // A reader does not write; a token scoped to another context reads nothing here.
    Reply::of(
        app.anonymous(Method::POST, Side::Write, "/users")
            .bearer_auth(app.token(Role::Reader))
            .json(&json!({ "email": "x@y.zz", "name": "x" })),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    Reply::of(
        app.anonymous(Method::GET, Side::Read, "/users")
            .bearer_auth(app.token_scoped(Role::Admin, "memento")),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    Reply::of(
        app.anonymous(Method::GET, Side::Read, "/repositories")
            .bearer_auth(app.token_scoped(Role::Reader, "repository")),
    )
    .await
    .expect_status(StatusCode::OK);
    Reply::of(
        app.anonymous(Method::POST, Side::Read, "/repositories/cache/warm")
            .bearer_auth(app.token(Role::Reader))
            .json(&json!({})),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    Reply::of(app.anonymous(Method::GET, Side::Read, "/products"))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED);

    // The same key and body: the first result, one event; another body: 409.
    let send = |body: Value| {
        Reply::of(
            app.write(Method::POST, "/users")
                .header("Idempotency-Key", "create-ada")
                .json(&body),
        )
    };
    let body = json!({ "email": "ada@example.com", "name": "Ada" });
    let first = send(body.clone()).await.expect_status(StatusCode::CREATED);
    let again = send(body).await.expect_status(StatusCode::CREATED);
    assert_eq!(first.body, again.body);
    assert_eq!(app.events_after(0).await.len(), 1);
    send(json!({ "email": "ada@example.com", "name": "Other" }))
        .await
        .expect_problem(StatusCode::CONFLICT);

    // Generated ids: a replay answers with the id first committed. An order replayed
    // reserves its stock once.
    let keyed = |key: &'static str, path: &'static str, body: Value| {
        Reply::of(
            app.write(Method::POST, path)
                .header("Idempotency-Key", key)
                .json(&body),
        )
    };
    let product = json!({ "name": "Lamp", "category": "home", "price": 5, "stock": 3 });
    let first = keyed("lamp", "/products", product.clone())
        .await
        .expect_status(StatusCode::CREATED);
    let again = keyed("lamp", "/products", product)
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(first.body, again.body);
    let lamp = first.body["aggregate_id"]
        .as_str()
        .expect("an id")
        .to_string();
    let user = app.events_after(0).await[0].aggregate_id.clone();
    let order = json!({ "user_id": user, "currency": "USD", "items": [{ "product_id": lamp, "quantity": 2 }] });
    let first = keyed("order", "/orders", order.clone())
        .await
        .expect_status(StatusCode::CREATED);
    let again = keyed("order", "/orders", order)
        .await
        .expect_status(StatusCode::CREATED);
    assert_eq!(first.body, again.body);
    let stock = app
        .get_at(&format!("/products/{lamp}"), again.position())
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stock.body["stock"], 1, "{}", stock.text);
}
both_backends!(roles_scopes_and_idempotency);
