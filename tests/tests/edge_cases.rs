//! Boundaries and odd-but-legal input: size limits at the byte, paging, ids in paths,
//! deep JSON, re-created caretakers, expiry-driven cleanup, and long idempotency keys.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, eventually, Reply, TestApp, MAX_BODY_BYTES, MAX_MEMENTO_SIZE};

/// A document state whose canonical JSON is exactly `size` bytes.
fn document_of_size(size: u64) -> Value {
    let overhead = r#"{"content":""}"#.len() as u64;
    json!({ "content": "x".repeat((size - overhead) as usize) })
}

async fn memento_size_limit_is_exact(app: TestApp) {
    app.create_caretaker("c1").await;
    let at_limit = document_of_size(MAX_MEMENTO_SIZE);
    assert_eq!(
        quintet_tests::canonical_sha256(&at_limit).len(),
        64,
        "sanity"
    );
    app.post(
        "/mementos/caretakers/c1/mementos",
        json!({ "id": "fits", "originator_id": "o", "type": "document", "state": at_limit }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let before = app.head_position().await;
    app.post(
        "/mementos/caretakers/c1/mementos",
        json!({
            "id": "over", "originator_id": "o", "type": "document",
            "state": document_of_size(MAX_MEMENTO_SIZE + 1),
        }),
    )
    .await
    .expect_problem(StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(app.head_position().await, before);
    let p = app
        .post(
            "/originators",
            json!({ "id": "d1", "type": "document", "name": "d", "state": document_of_size(MAX_MEMENTO_SIZE) }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    let stats = app
        .get_at("/mementos/caretakers/c1/stats", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["total_size"], json!(MAX_MEMENTO_SIZE));
}
both_backends!(memento_size_limit_is_exact);

async fn body_limit_is_exact(app: TestApp) {
    // Pad a valid request with insignificant whitespace to the exact size.
    let core = json!({ "name": "padded" }).to_string();
    let at_limit = format!("{core}{}", " ".repeat(MAX_BODY_BYTES - core.len()));
    assert_eq!(at_limit.len(), MAX_BODY_BYTES);
    Reply::of(
        app.write(Method::POST, "/mementos/caretakers")
            .header("content-type", "application/json")
            .body(at_limit.clone()),
    )
    .await
    .expect_status(StatusCode::CREATED);
    Reply::of(
        app.write(Method::POST, "/mementos/caretakers")
            .header("content-type", "application/json")
            .body(format!("{at_limit} ")),
    )
    .await
    .expect_problem(StatusCode::PAYLOAD_TOO_LARGE);
}
both_backends!(body_limit_is_exact);

async fn content_type_variants(app: TestApp) {
    Reply::of(
        app.write(Method::POST, "/mementos/caretakers")
            .header("content-type", "application/json; charset=utf-8")
            .body(json!({ "name": "c1" }).to_string()),
    )
    .await
    .expect_status(StatusCode::CREATED);
    for body in [
        r#"{"name": "c2"} trailing"#,
        "null",
        r#""c2""#,
        "\u{feff}{\"name\": \"c2\"}",
    ] {
        let reply = Reply::of(
            app.write(Method::POST, "/mementos/caretakers")
                .header("content-type", "application/json")
                .body(body),
        )
        .await;
        assert!(
            reply.status.is_client_error(),
            "{body:?}: {} {}",
            reply.status,
            reply.text
        );
        quintet_tests::assert_problem_shape(&reply);
    }
}
both_backends!(content_type_variants);

async fn deep_json_is_refused_cleanly(app: TestApp) {
    app.create_caretaker("c1").await;
    let before = app.head_position().await;
    let depth = 5000;
    let deep = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let body = format!(
        r#"{{"id": "deep", "originator_id": "o", "type": "configuration", "state": {{"a": {deep}}}}}"#
    );
    let reply = Reply::of(
        app.write(Method::POST, "/mementos/caretakers/c1/mementos")
            .header("content-type", "application/json")
            .body(body),
    )
    .await;
    assert!(
        reply.status.is_client_error(),
        "{} {}",
        reply.status,
        reply.text
    );
    quintet_tests::assert_problem_shape(&reply);
    assert_eq!(app.head_position().await, before);

    // Moderately nested configuration is fine, and round-trips.
    let mut nested = json!("leaf");
    for i in 0..50 {
        nested = json!({ format!("k{i}"): nested });
    }
    let p = app
        .post(
            "/mementos/caretakers/c1/mementos",
            json!({ "id": "nested", "originator_id": "o", "type": "configuration", "state": nested }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    let got = app
        .get_at("/mementos/caretakers/c1/mementos/nested", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(got.body["state"], nested);
    assert_eq!(
        got.body["checksum"],
        quintet_tests::canonical_sha256(&nested)
    );
}
both_backends!(deep_json_is_refused_cleanly);

async fn odd_ids_in_paths(app: TestApp) {
    app.create_caretaker("c1").await;
    let long = "x".repeat(300);
    for id in ["a%2Fb", "%20", "caf%C3%A9", "..", "%00", long.as_str()] {
        let before = app.head_position().await;
        for reply in [
            app.put(&format!("/originators/{id}/state"), json!({ "state": {} }))
                .await,
            app.delete(&format!("/mementos/caretakers/{id}")).await,
            app.post_empty(&format!("/mementos/caretakers/c1/mementos/{id}/restore"))
                .await,
            app.get(&format!("/originators/{id}")).await,
            app.get(&format!("/mementos/caretakers/{id}/stats")).await,
        ] {
            assert!(
                reply.status.is_client_error(),
                "{id}: {} {}",
                reply.status,
                reply.text
            );
            quintet_tests::assert_problem_shape(&reply);
        }
        assert_eq!(app.head_position().await, before, "{id}");
    }
    // Names outside the charset, and too long, are validation errors.
    for name in ["café", "a b", "a/b", "", long.as_str()] {
        let reply = app
            .post("/mementos/caretakers", json!({ "name": name }))
            .await
            .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            reply.error_fields(),
            vec!["name"],
            "{name:?}: {}",
            reply.text
        );
    }
    // The longest valid id works end to end.
    let longest = "y".repeat(128);
    let p = app.create_caretaker(&longest).await;
    app.get_at(&format!("/mementos/caretakers/{longest}"), p)
        .await
        .expect_status(StatusCode::OK);
}
both_backends!(odd_ids_in_paths);

async fn paging(app: TestApp) {
    let mut last = 0;
    for name in ["c", "a", "b"] {
        last = app.create_caretaker(name).await;
    }
    let first = app
        .get_at("/mementos/caretakers?limit=2", last)
        .await
        .expect_status(StatusCode::OK);
    let names: Vec<&str> = first.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    assert_eq!(first.body["total"], 3);
    assert_eq!(first.body["next"], 2);
    let second = app
        .get("/mementos/caretakers?limit=2&offset=2")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(second.body["items"][0]["name"], "c");
    assert!(second.body["next"].is_null(), "{}", second.text);
    let clamped = app
        .get("/mementos/caretakers?limit=5000")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(clamped.body["limit"], 1000);
    let past = app
        .get("/mementos/caretakers?offset=99")
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(past.body["items"], json!([]));
    assert_eq!(past.body["total"], 3);
    app.get("/mementos/caretakers?min_position=18446744073709551616")
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
}
both_backends!(paging);

async fn caretaker_can_be_recreated_empty(app: TestApp) {
    app.create_caretaker("c1").await;
    app.create_document("d1", "hello").await;
    app.post(
        "/originators/d1/mementos",
        json!({ "caretaker": "c1", "memento_id": "m1" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.delete("/mementos/caretakers/c1")
        .await
        .expect_status(StatusCode::OK);
    // Writes to a removed caretaker are 404.
    app.post(
        "/originators/d1/mementos",
        json!({ "caretaker": "c1", "memento_id": "m2" }),
    )
    .await
    .expect_problem(StatusCode::NOT_FOUND);
    app.post_empty("/mementos/caretakers/c1/mementos/m1/restore")
        .await
        .expect_problem(StatusCode::NOT_FOUND);

    let recreated = app
        .post("/mementos/caretakers", json!({ "name": "c1" }))
        .await
        .expect_status(StatusCode::CREATED);
    let p = recreated.position();
    let stats = app
        .get_at("/mementos/caretakers/c1/stats", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["memento_count"], 0, "{}", stats.text);
    let list = app
        .get_at("/mementos/caretakers/c1/mementos", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(list.body["total"], 0, "{}", list.text);
    // The old memento is gone from the write side too: its id can be used again.
    app.post_empty("/mementos/caretakers/c1/mementos/m1/restore")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    let p = app
        .post(
            "/originators/d1/mementos",
            json!({ "caretaker": "c1", "memento_id": "m1" }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    let stats = app
        .get_at("/mementos/caretakers/c1/stats", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["memento_count"], 1, "{}", stats.text);
}
both_backends!(caretaker_can_be_recreated_empty);

/// A full caretaker refuses more (409); cleanup removes expired mementos.
async fn limits_and_cleanup(app: TestApp) {
    app.post(
        "/mementos/caretakers",
        json!({ "name": "small", "max_mementos": 2, "max_memento_age_secs": 1 }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    for id in ["m1", "m2"] {
        app.post(
            "/mementos/caretakers/small/mementos",
            json!({ "id": id, "originator_id": "o", "type": "file", "state": { "content": "k=v", "path": "/etc/x" } }),
        )
        .await
        .expect_status(StatusCode::CREATED);
    }
    app.post(
        "/mementos/caretakers/small/mementos",
        json!({ "id": "m3", "originator_id": "o", "type": "file", "state": { "content": "" } }),
    )
    .await
    .expect_problem(StatusCode::CONFLICT);
    // Over the configured ceiling.
    app.post(
        "/mementos/caretakers",
        json!({ "name": "huge", "max_mementos": 10_000_000 }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);

    // Once they expire (after a second), cleanup removes both.
    let p = eventually("cleanup removes the expired mementos", || async {
        let reply = app
            .post_empty("/mementos/caretakers/small/cleanup")
            .await
            .expect_status(StatusCode::OK);
        let p = reply.position();
        let stats = app
            .get_at("/mementos/caretakers/small/stats", p)
            .await
            .expect_status(StatusCode::OK);
        (stats.body["memento_count"] == 0).then_some(p)
    })
    .await;
    let stats = app
        .get_at("/mementos/caretakers/small/stats", p)
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(stats.body["by_type"]["file"], 0);
    assert_eq!(stats.body["total_size"], 0);
    // And there is room again.
    app.post(
        "/mementos/caretakers/small/mementos",
        json!({ "id": "m3", "originator_id": "o", "type": "file", "state": { "content": "" } }),
    )
    .await
    .expect_status(StatusCode::CREATED);
}
both_backends!(limits_and_cleanup);

/// The API accepts Idempotency-Keys of 1 to 255 characters; the longest must work.
async fn longest_idempotency_key_works(app: TestApp) {
    let key = "k".repeat(255);
    let first = Reply::of(
        app.write(Method::POST, "/mementos/caretakers")
            .header("Idempotency-Key", &key)
            .json(&json!({ "name": "c1" })),
    )
    .await
    .expect_status(StatusCode::CREATED);
    let again = Reply::of(
        app.write(Method::POST, "/mementos/caretakers")
            .header("Idempotency-Key", &key)
            .json(&json!({ "name": "c1" })),
    )
    .await
    .expect_status(StatusCode::CREATED);
    assert_eq!(first.body, again.body);
}
mod longest_idempotency_key_works {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        let app = quintet_tests::spawn_app(quintet_tests::Backend::Embedded).await;
        quintet_tests::run_scenario(super::longest_idempotency_key_works(app)).await;
    }
}

/// Each originator kind validates its own shape and round-trips through restore.
async fn every_originator_kind_restores(app: TestApp) {
    app.create_caretaker("c1").await;
    let kinds = [
        (
            "document",
            json!({ "content": "Hello" }),
            json!({ "content": "Bye" }),
        ),
        (
            "database",
            json!({ "table": "users", "schema": "public", "records": [{ "id": 1, "name": "John" }] }),
            json!({ "table": "users", "records": [] }),
        ),
        (
            "file",
            json!({ "content": "key1=value1", "path": "/etc/app.conf" }),
            json!({ "content": "key1=value2" }),
        ),
        (
            "configuration",
            json!({ "database": { "host": "localhost", "port": 3306 }, "cache": { "ttl": 300 } }),
            json!({ "database": { "host": "prod" } }),
        ),
    ];
    for (kind, first, second) in kinds {
        let id = format!("o-{kind}");
        app.post(
            "/originators",
            json!({ "id": id, "type": kind, "name": kind, "state": first }),
        )
        .await
        .expect_status(StatusCode::CREATED);
        app.post(
            &format!("/originators/{id}/mementos"),
            json!({ "caretaker": "c1", "memento_id": format!("m-{kind}") }),
        )
        .await
        .expect_status(StatusCode::CREATED);
        app.put(
            &format!("/originators/{id}/state"),
            json!({ "state": second }),
        )
        .await
        .expect_status(StatusCode::OK);
        let p = Reply::of(
            app.write(
                Method::POST,
                &format!("/mementos/caretakers/c1/mementos/m-{kind}/restore"),
            )
            .header("If-Match", "\"2\""),
        )
        .await
        .expect_status(StatusCode::OK)
        .position();
        let doc = app
            .get_at(&format!("/originators/{id}"), p)
            .await
            .expect_status(StatusCode::OK);
        // Keys the restored state lacks must not survive from the state before it.
        assert_eq!(doc.body["state"], first, "{kind}: {}", doc.text);
        assert_eq!(doc.body["type"], kind);
        // Restoring again with the old version is stale.
        Reply::of(
            app.write(
                Method::POST,
                &format!("/mementos/caretakers/c1/mementos/m-{kind}/restore"),
            )
            .header("If-Match", "\"2\""),
        )
        .await
        .expect_problem(StatusCode::CONFLICT);
    }
    let p = app.head_position().await;
    let stats = app
        .get_at("/mementos/caretakers/c1/stats", p)
        .await
        .expect_status(StatusCode::OK);
    for kind in ["document", "database", "file", "configuration"] {
        assert_eq!(stats.body["by_type"][kind], 1, "{}", stats.text);
    }
    assert_eq!(stats.body["restore_count"], 4);
    // A shape that does not fit its kind.
    app.post(
        "/originators",
        json!({ "id": "bad", "type": "database", "name": "x", "state": { "records": {} } }),
    )
    .await
    .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
}
both_backends!(every_originator_kind_restores);
