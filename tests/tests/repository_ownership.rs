//! Object-level authorization in the repository context (issue 6): a token acting for a
//! user (`user_id` claim) reads and writes only that user's own users, payments and orders;
//! another user's answer like missing ones. Admins are never restricted.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, Side, TestApp};
use web::Role;

/// `method path` on `side` with `token`, and a JSON body when given.
async fn send(
    app: &TestApp,
    token: &str,
    method: Method,
    side: Side,
    path: &str,
    body: Option<Value>,
) -> Reply {
    let mut request = app.anonymous(method, side, path).bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    Reply::of(request).await
}

async fn write(app: &TestApp, token: &str, method: Method, path: &str, body: Value) -> Reply {
    send(app, token, method, Side::Write, path, Some(body)).await
}

/// A GET on read-api once the projections reached `position`.
async fn read(app: &TestApp, token: &str, path: &str, position: u64) -> Reply {
    let sep = if path.contains('?') { '&' } else { '?' };
    let path = format!("{path}{sep}min_position={position}");
    send(app, token, Method::GET, Side::Read, &path, None).await
}

fn ids(reply: &Reply) -> Vec<String> {
    let mut ids: Vec<String> = reply.body["items"]
        .as_array()
        .unwrap_or_else(|| panic!("a page has items: {}", reply.text))
        .iter()
        .map(|item| item["id"].as_str().expect("an id").to_string())
        .collect();
    ids.sort();
    ids
}

fn payment(id: &str, user: &str) -> Value {
    json!({ "id": id, "user_id": user, "amount": 10.5, "currency": "USD", "gateway": "stripe" })
}

fn order(id: &str, user: &str) -> Value {
    json!({
        "id": id,
        "user_id": user,
        "items": [{ "product_id": "p1", "quantity": 1 }],
        "currency": "USD",
    })
}

async fn users_see_only_their_own_aggregates(app: TestApp) {
    let admin = app.token(Role::Admin);
    for (id, email) in [("alice", "alice@example.com"), ("bob", "bob@example.com")] {
        let user = json!({ "id": id, "email": email, "name": id });
        write(&app, &admin, Method::POST, "/users", user)
            .await
            .expect_status(StatusCode::CREATED);
    }
    let product =
        json!({ "id": "p1", "name": "Pen", "category": "office", "price": 2.5, "stock": 100 });
    write(&app, &admin, Method::POST, "/products", product)
        .await
        .expect_status(StatusCode::CREATED);
    for (id, user) in [("pa", "alice"), ("pb", "bob")] {
        write(&app, &admin, Method::POST, "/payments", payment(id, user))
            .await
            .expect_status(StatusCode::CREATED);
    }
    let mut position = 0;
    for (id, user) in [("oa", "alice"), ("ob", "bob")] {
        position = write(&app, &admin, Method::POST, "/orders", order(id, user))
            .await
            .expect_status(StatusCode::CREATED)
            .position();
    }

    let alice = app.token_for_user(Role::Writer, "alice");

    // Reads of bob's aggregates answer exactly like missing ones.
    for (path, missing) in [
        ("/users/bob", "/users/nobody"),
        ("/payments/pb", "/payments/nothing"),
        ("/orders/ob", "/orders/nothing"),
    ] {
        let hidden = read(&app, &alice, path, position)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
        let absent = read(&app, &alice, missing, position)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
        assert_eq!(hidden.body["title"], absent.body["title"], "{path}");
        assert_eq!(hidden.body["type"], absent.body["type"], "{path}");
    }
    for path in ["/users/alice", "/payments/pa", "/orders/oa"] {
        read(&app, &alice, path, position)
            .await
            .expect_status(StatusCode::OK);
    }

    // Lists hold alice's own documents only.
    for (path, own) in [
        ("/users", "alice"),
        ("/users/search?q=example", "alice"),
        ("/payments", "pa"),
        ("/orders", "oa"),
        ("/payments/user/alice", "pa"),
        ("/orders/user/alice", "oa"),
    ] {
        let page = read(&app, &alice, path, position)
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(ids(&page), vec![own], "{path}: {}", page.text);
        assert_eq!(page.body["total"], 1, "{path}: {}", page.text);
    }
    for path in ["/payments/user/bob", "/orders/user/bob"] {
        read(&app, &alice, path, position)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
    }

    // Specification queries get the owner filter too, combined with the caller's own.
    for (kind, own) in [("payments", "pa"), ("orders", "oa"), ("users", "alice")] {
        let query = json!({ "type": kind });
        let page = send(
            &app,
            &alice,
            Method::POST,
            Side::Read,
            &format!("/repositories/query?min_position={position}"),
            Some(query),
        )
        .await
        .expect_status(StatusCode::OK);
        assert_eq!(ids(&page), vec![own], "{kind}: {}", page.text);
    }
    // The catalog counts only what the token may read; an admin counts everyone's.
    let counts = |reply: &Reply| -> Vec<(String, u64)> {
        reply.body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("items: {}", reply.text))
            .iter()
            .map(|item| {
                let name = item["type"].as_str().expect("type").to_string();
                (name, item["count"].as_u64().expect("count"))
            })
            .collect()
    };
    let own_counts = read(&app, &alice, "/repositories", position)
        .await
        .expect_status(StatusCode::OK);
    let all_counts = read(&app, &admin, "/repositories", position)
        .await
        .expect_status(StatusCode::OK);
    for ((name, own), (_, all)) in counts(&own_counts).into_iter().zip(counts(&all_counts)) {
        let (expected_own, expected_all) = if name == "products" { (1, 1) } else { (1, 2) };
        assert_eq!((own, all), (expected_own, expected_all), "{name}");
    }
    let payments = read(&app, &alice, "/repositories/payments", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(payments.body["count"], 1, "{}", payments.text);

    let query = json!({
        "type": "payments",
        "filter": { "field": "user_id", "op": "eq", "value": "bob" },
    });
    let page = send(
        &app,
        &alice,
        Method::POST,
        Side::Read,
        "/repositories/query",
        Some(query),
    )
    .await
    .expect_status(StatusCode::OK);
    assert_eq!(page.body["total"], 0, "{}", page.text);

    // Creating for bob is forbidden; changing bob's aggregates answers like missing ones.
    for (path, body) in [
        ("/payments", payment("pb2", "bob")),
        ("/orders", order("ob2", "bob")),
        (
            "/users",
            json!({ "id": "carol", "email": "carol@example.com", "name": "Carol" }),
        ),
        (
            "/users",
            json!({ "email": "dave@example.com", "name": "Dave" }),
        ),
    ] {
        write(&app, &alice, Method::POST, path, body)
            .await
            .expect_problem(StatusCode::FORBIDDEN);
    }
    let head = app.head_position().await;
    for (method, path, body) in [
        (Method::PUT, "/orders/ob", json!({ "status": "confirmed" })),
        (
            Method::PUT,
            "/payments/pb",
            json!({ "status": "processing" }),
        ),
        (Method::PUT, "/users/bob", json!({ "name": "Bobby" })),
    ] {
        write(&app, &alice, method, path, body)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
    }
    for path in ["/orders/ob", "/payments/pb", "/users/bob"] {
        send(&app, &alice, Method::DELETE, Side::Write, path, None)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
    }
    assert_eq!(app.head_position().await, head, "nothing was written");
    let bobs_order = read(&app, &admin, "/orders/ob", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(bobs_order.body["status"], "pending");
    assert_eq!(bobs_order.body["version"], 1);

    // Alice's own writes work.
    write(
        &app,
        &alice,
        Method::POST,
        "/payments",
        payment("pa2", "alice"),
    )
    .await
    .expect_status(StatusCode::CREATED);
    write(&app, &alice, Method::POST, "/orders", order("oa2", "alice"))
        .await
        .expect_status(StatusCode::CREATED);
    write(
        &app,
        &alice,
        Method::PUT,
        "/payments/pa",
        json!({ "status": "processing" }),
    )
    .await
    .expect_status(StatusCode::OK);
    write(
        &app,
        &alice,
        Method::PUT,
        "/users/alice",
        json!({ "name": "Alice A." }),
    )
    .await
    .expect_status(StatusCode::OK);
    let position = write(
        &app,
        &alice,
        Method::PUT,
        "/orders/oa",
        json!({ "status": "confirmed" }),
    )
    .await
    .expect_status(StatusCode::OK)
    .position();
    let own = read(&app, &alice, "/orders/oa", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(own.body["status"], "confirmed");
    let page = read(&app, &alice, "/payments", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&page), vec!["pa", "pa2"]);

    // An admin acting for alice still sees and changes everything.
    let admin_for_alice = app.token_for_user(Role::Admin, "alice");
    let page = read(&app, &admin_for_alice, "/payments", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&page), vec!["pa", "pa2", "pb"]);
    read(&app, &admin_for_alice, "/users/bob", position)
        .await
        .expect_status(StatusCode::OK);
    write(
        &app,
        &admin_for_alice,
        Method::PUT,
        "/orders/ob",
        json!({ "status": "confirmed" }),
    )
    .await
    .expect_status(StatusCode::OK);

    // A reader acting for alice reads her aggregates but cannot write, not even her own.
    let reader = app.token_for_user(Role::Reader, "alice");
    read(&app, &reader, "/payments/pa", position)
        .await
        .expect_status(StatusCode::OK);
    read(&app, &reader, "/payments/pb", position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    write(
        &app,
        &reader,
        Method::POST,
        "/payments",
        payment("pa3", "alice"),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    write(
        &app,
        &reader,
        Method::PUT,
        "/payments/pa",
        json!({ "status": "completed" }),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
}

both_backends!(users_see_only_their_own_aggregates);
