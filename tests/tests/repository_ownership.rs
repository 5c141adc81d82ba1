//! Object-level authorization in the repository context (issue 6): a token acting for a
//! user (`user_id` claim) reads and writes only that user's own users, payments and orders;
//! another user's answer like missing ones. Admins are never restricted.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, Side, TestApp};
use web::Role;

fn ids(reply: &Reply) -> Vec<String> {
    let mut ids = reply.ids();
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
        app.write_as(&admin, Method::POST, "/users", user)
            .await
            .expect_status(StatusCode::CREATED);
    }
    let product =
        json!({ "id": "p1", "name": "Pen", "category": "office", "price": 2.5, "stock": 100 });
    app.write_as(&admin, Method::POST, "/products", product)
        .await
        .expect_status(StatusCode::CREATED);
    for (id, user) in [("pa", "alice"), ("pb", "bob")] {
        app.write_as(&admin, Method::POST, "/payments", payment(id, user))
            .await
            .expect_status(StatusCode::CREATED);
    }
    let mut position = 0;
    for (id, user) in [("oa", "alice"), ("ob", "bob")] {
        position = app
            .write_as(&admin, Method::POST, "/orders", order(id, user))
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
        let hidden = app
            .read_at(&alice, path, position)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
        let absent = app
            .read_at(&alice, missing, position)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
        assert_eq!(hidden.body["title"], absent.body["title"], "{path}");
        assert_eq!(hidden.body["type"], absent.body["type"], "{path}");
    }
    for path in ["/users/alice", "/payments/pa", "/orders/oa"] {
        app.read_at(&alice, path, position)
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
        let page = app
            .read_at(&alice, path, position)
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(ids(&page), vec![own], "{path}: {}", page.text);
        assert_eq!(page.body["total"], 1, "{path}: {}", page.text);
    }
    for path in ["/payments/user/bob", "/orders/user/bob"] {
        app.read_at(&alice, path, position)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
    }

    // Specification queries get the owner filter too, combined with the caller's own.
    for (kind, own) in [("payments", "pa"), ("orders", "oa"), ("users", "alice")] {
        let query = json!({ "type": kind });
        let page = app
            .send_as(
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
        reply
            .items()
            .iter()
            .map(|item| {
                let name = item["type"].as_str().expect("type").to_string();
                (name, item["count"].as_u64().expect("count"))
            })
            .collect()
    };
    let own_counts = app
        .read_at(&alice, "/repositories", position)
        .await
        .expect_status(StatusCode::OK);
    let all_counts = app
        .read_at(&admin, "/repositories", position)
        .await
        .expect_status(StatusCode::OK);
    for ((name, own), (_, all)) in counts(&own_counts).into_iter().zip(counts(&all_counts)) {
        let (expected_own, expected_all) = if name == "products" { (1, 1) } else { (1, 2) };
        assert_eq!((own, all), (expected_own, expected_all), "{name}");
    }
    let payments = app
        .read_at(&alice, "/repositories/payments", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(payments.body["count"], 1, "{}", payments.text);

    let query = json!({
        "type": "payments",
        "filter": { "field": "user_id", "op": "eq", "value": "bob" },
    });
    let page = app
        .send_as(
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
        app.write_as(&alice, Method::POST, path, body)
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
        app.write_as(&alice, method, path, body)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
    }
    for path in ["/orders/ob", "/payments/pb", "/users/bob"] {
        app.send_as(&alice, Method::DELETE, Side::Write, path, None)
            .await
            .expect_problem(StatusCode::NOT_FOUND);
    }
    assert_eq!(app.head_position().await, head, "nothing was written");
    let bobs_order = app
        .read_at(&admin, "/orders/ob", head)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(bobs_order.body["status"], "pending");
    assert_eq!(bobs_order.body["version"], 1);

    // Alice's own writes work.
    app.write_as(&alice, Method::POST, "/payments", payment("pa2", "alice"))
        .await
        .expect_status(StatusCode::CREATED);
    app.write_as(&alice, Method::POST, "/orders", order("oa2", "alice"))
        .await
        .expect_status(StatusCode::CREATED);
    app.write_as(
        &alice,
        Method::PUT,
        "/payments/pa",
        json!({ "status": "processing" }),
    )
    .await
    .expect_status(StatusCode::OK);
    app.write_as(
        &alice,
        Method::PUT,
        "/users/alice",
        json!({ "name": "Alice A." }),
    )
    .await
    .expect_status(StatusCode::OK);
    let position = app
        .write_as(
            &alice,
            Method::PUT,
            "/orders/oa",
            json!({ "status": "confirmed" }),
        )
        .await
        .expect_status(StatusCode::OK)
        .position();
    let own = app
        .read_at(&alice, "/orders/oa", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(own.body["status"], "confirmed");
    let page = app
        .read_at(&alice, "/payments", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&page), vec!["pa", "pa2"]);

    // An admin acting for alice still sees and changes everything.
    let admin_for_alice = app.token_for_user(Role::Admin, "alice");
    let page = app
        .read_at(&admin_for_alice, "/payments", position)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ids(&page), vec!["pa", "pa2", "pb"]);
    app.read_at(&admin_for_alice, "/users/bob", position)
        .await
        .expect_status(StatusCode::OK);
    app.write_as(
        &admin_for_alice,
        Method::PUT,
        "/orders/ob",
        json!({ "status": "confirmed" }),
    )
    .await
    .expect_status(StatusCode::OK);

    // A reader acting for alice reads her aggregates but cannot write, not even her own.
    let reader = app.token_for_user(Role::Reader, "alice");
    app.read_at(&reader, "/payments/pa", position)
        .await
        .expect_status(StatusCode::OK);
    app.read_at(&reader, "/payments/pb", position)
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.write_as(&reader, Method::POST, "/payments", payment("pa3", "alice"))
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    app.write_as(
        &reader,
        Method::PUT,
        "/payments/pa",
        json!({ "status": "completed" }),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
}

both_backends!(users_see_only_their_own_aggregates);
