//! Guarantee 6: bad input gets a clear 4xx as `application/problem+json` (type, title,
//! status, detail, per-field `errors`), never a 5xx, and a rejected write writes nothing.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use quintet_tests::{
    assert_problem_shape, both_backends, Reply, Side, TestApp, MAX_BODY_BYTES, MAX_MEMENTO_SIZE,
};
use web::Role;

/// Sends a write that must be rejected with `status`, and checks that the event store's
/// head did not move.
async fn rejected(app: &TestApp, request: reqwest::RequestBuilder, status: StatusCode) -> Reply {
    let before = app.head_position().await;
    let reply = Reply::of(request).await.expect_problem(status);
    assert_eq!(
        app.head_position().await,
        before,
        "a rejected write ({status}) appended events: {}",
        reply.text
    );
    reply
}

fn raw_json(app: &TestApp, method: Method, path: &str, body: &str) -> reqwest::RequestBuilder {
    app.write(method, path)
        .header("content-type", "application/json")
        .body(body.to_string())
}

async fn malformed_and_mistyped_json(app: TestApp) {
    app.create_caretaker("c1").await;
    let path = "/mementos/caretakers";

    rejected(
        &app,
        raw_json(&app, Method::POST, path, r#"{"name": "#),
        StatusCode::BAD_REQUEST,
    )
    .await;
    rejected(
        &app,
        raw_json(&app, Method::POST, path, "not json at all"),
        StatusCode::BAD_REQUEST,
    )
    .await;
    rejected(
        &app,
        raw_json(&app, Method::POST, path, ""),
        StatusCode::BAD_REQUEST,
    )
    .await;
    rejected(
        &app,
        raw_json(&app, Method::POST, path, "[1, 2]"),
        StatusCode::BAD_REQUEST,
    )
    .await;

    // Wrong types (that the field is named is checked in `wrong_type_names_the_field`).
    for body in [
        r#"{"name": 5}"#,
        r#"{"name": true}"#,
        r#"{"name": null}"#,
        r#"{"name": ["a"]}"#,
        r#"{"name": "ok", "max_mementos": "ten"}"#,
        r#"{"name": "ok", "max_mementos": 1.5}"#,
        r#"{"name": "ok", "max_mementos": 99999999999}"#,
    ] {
        rejected(
            &app,
            raw_json(&app, Method::POST, path, body),
            StatusCode::BAD_REQUEST,
        )
        .await;
    }
    rejected(
        &app,
        raw_json(
            &app,
            Method::POST,
            path,
            r#"{"name": "ok", "max_mementos": -1}"#,
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;

    // Missing field.
    rejected(
        &app,
        raw_json(&app, Method::POST, path, "{}"),
        StatusCode::BAD_REQUEST,
    )
    .await;

    // Unknown field (deny_unknown_fields).
    let reply = rejected(
        &app,
        raw_json(
            &app,
            Method::POST,
            path,
            r#"{"name": "ok", "colour": "blue"}"#,
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(reply.text.contains("colour"), "{}", reply.text);
    rejected(
        &app,
        raw_json(
            &app,
            Method::PUT,
            "/originators/x/state",
            r#"{"state": {}, "expected_version": 1, "extra": true}"#,
        ),
        StatusCode::BAD_REQUEST,
    )
    .await;

    // Not JSON at all by content type.
    let reply = Reply::of(
        app.write(Method::POST, path)
            .header("content-type", "text/plain")
            .body("name=c2"),
    )
    .await;
    assert!(
        reply.status.is_client_error(),
        "{} {}",
        reply.status,
        reply.text
    );
    assert_problem_shape(&reply);
}
both_backends!(malformed_and_mistyped_json);

/// RFC 9457 `errors` must name the offending field, not the request type.
async fn wrong_type_names_the_field(app: TestApp) {
    let path = "/mementos/caretakers";
    for (body, field) in [
        (r#"{"name": 5}"#, "name"),
        (r#"{"name": "ok", "max_mementos": "ten"}"#, "max_mementos"),
        ("{}", "name"),
    ] {
        let reply = rejected(
            &app,
            raw_json(&app, Method::POST, path, body),
            StatusCode::BAD_REQUEST,
        )
        .await;
        let fields = reply.error_fields();
        assert!(
            fields.is_empty() || fields == vec![field.to_string()],
            "errors should name `{field}` for {body}, got {fields:?}: {}",
            reply.text
        );
        assert!(
            reply.body["detail"]
                .as_str()
                .unwrap_or_default()
                .contains(field),
            "detail should name `{field}` for {body}: {}",
            reply.text
        );
    }
}
mod wrong_type_names_the_field {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        let app = quintet_tests::spawn_app(quintet_tests::Backend::Embedded).await;
        quintet_tests::run_scenario(super::wrong_type_names_the_field(app)).await;
    }
}

async fn domain_validation_is_422_naming_the_field(app: TestApp) {
    let reply = rejected(
        &app,
        app.write(Method::POST, "/mementos/caretakers")
            .json(&json!({ "name": "has spaces" })),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(reply.error_fields(), vec!["name"], "{}", reply.text);

    let reply = rejected(
        &app,
        app.write(Method::POST, "/originators").json(&json!({
            "id": "d1", "type": "document", "name": "d", "state": { "content": 5 },
        })),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    assert_eq!(reply.error_fields(), vec!["state"], "{}", reply.text);

    // An unknown enum value of `type` is a parse error.
    let reply = rejected(
        &app,
        app.write(Method::POST, "/originators").json(&json!({
            "id": "d1", "type": "spreadsheet", "name": "d",
        })),
        StatusCode::BAD_REQUEST,
    )
    .await;
    assert!(reply.text.contains("type"), "{}", reply.text);

    // Idempotency-Key over 255 characters.
    rejected(
        &app,
        app.write(Method::POST, "/mementos/caretakers")
            .header("Idempotency-Key", "k".repeat(300))
            .json(&json!({ "name": "ok" })),
        StatusCode::BAD_REQUEST,
    )
    .await;
}
both_backends!(domain_validation_is_422_naming_the_field);

async fn oversize_body_with_content_length_is_413(app: TestApp) {
    let big = "x".repeat(MAX_BODY_BYTES + 1024);
    let body = json!({ "name": "big", "padding": big }).to_string();
    let reply = rejected(
        &app,
        app.write(Method::POST, "/mementos/caretakers")
            .header("content-type", "application/json")
            .body(body),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    assert!(reply.text.contains("bytes"), "{}", reply.text);
}
both_backends!(oversize_body_with_content_length_is_413);

/// A raw HTTP/1.1 exchange, so the body can be sent chunked without a Content-Length.
async fn raw_chunked_post(app: &TestApp, path: &str, body: &[u8]) -> (u16, String, String) {
    let addr = app.write_url.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect to write-api");
    let head = format!(
        "POST /api/v1{path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        app.token(Role::Writer)
    );
    let mut wire = head.into_bytes();
    for chunk in body.chunks(4096) {
        wire.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        wire.extend_from_slice(chunk);
        wire.extend_from_slice(b"\r\n");
    }
    wire.extend_from_slice(b"0\r\n\r\n");
    // The server may answer (and stop reading) before the whole body is sent.
    let _ = stream.write_all(&wire).await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let text = String::from_utf8_lossy(&response).to_string();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let (headers, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let content_type = headers
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_string())
        })
        .unwrap_or_default();
    (status, content_type, rest.to_string())
}

async fn oversize_chunked_body_is_413(app: TestApp) {
    let before = app.head_position().await;
    let big = "x".repeat(MAX_BODY_BYTES + 1024);
    let body = json!({ "name": "big", "padding": big }).to_string();
    let (status, content_type, rest) =
        raw_chunked_post(&app, "/mementos/caretakers", body.as_bytes()).await;
    assert_eq!(status, 413, "{rest}");
    assert!(
        content_type.starts_with("application/problem+json"),
        "{content_type}"
    );
    assert!(rest.contains("\"status\":413"), "{rest}");
    assert_eq!(app.head_position().await, before);

    // A small chunked body still works.
    let (status, _, rest) = raw_chunked_post(
        &app,
        "/mementos/caretakers",
        json!({ "name": "small" }).to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 201, "{rest}");
}
both_backends!(oversize_chunked_body_is_413);

async fn oversize_memento_state_is_413(app: TestApp) {
    app.create_caretaker("c1").await;
    app.create_document("d1", "small").await;
    let huge = "y".repeat(MAX_MEMENTO_SIZE as usize + 100);
    assert!(huge.len() < MAX_BODY_BYTES, "under the body limit");

    rejected(
        &app,
        app.write(Method::POST, "/mementos/caretakers/c1/mementos")
            .json(&json!({
                "id": "m1", "originator_id": "d1", "type": "document",
                "state": { "content": huge },
            })),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    rejected(
        &app,
        app.write(Method::POST, "/originators").json(&json!({
            "id": "d2", "type": "document", "name": "d2", "state": { "content": huge },
        })),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    rejected(
        &app,
        app.write(Method::PUT, "/originators/d1/state")
            .json(&json!({ "state": { "content": huge } })),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
    // A caretaker with its own, smaller limit.
    app.post(
        "/mementos/caretakers",
        json!({ "name": "tiny", "max_memento_size": 64 }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    app.create_document("d3", &"z".repeat(100)).await;
    rejected(
        &app,
        app.write(Method::POST, "/originators/d3/mementos")
            .json(&json!({ "caretaker": "tiny" })),
        StatusCode::PAYLOAD_TOO_LARGE,
    )
    .await;
}
both_backends!(oversize_memento_state_is_413);

async fn unknown_and_duplicate(app: TestApp) {
    app.create_caretaker("c1").await;
    app.create_document("d1", "hello").await;

    // Unknown caretaker.
    for request in [
        app.write(Method::POST, "/mementos/caretakers/nope/mementos")
            .json(
                &json!({ "originator_id": "d1", "type": "document", "state": { "content": "" } }),
            ),
        app.write(Method::DELETE, "/mementos/caretakers/nope"),
        app.write(Method::POST, "/mementos/caretakers/nope/cleanup"),
        app.write(
            Method::POST,
            "/mementos/caretakers/nope/mementos/m1/restore",
        ),
        app.write(Method::POST, "/originators/d1/mementos")
            .json(&json!({ "caretaker": "nope" })),
    ] {
        rejected(&app, request, StatusCode::NOT_FOUND).await;
    }
    // Unknown memento and originator.
    for request in [
        app.write(Method::DELETE, "/mementos/caretakers/c1/mementos/nope"),
        app.write(
            Method::POST,
            "/mementos/caretakers/c1/mementos/nope/restore",
        ),
        app.write(Method::PUT, "/originators/nope/state")
            .json(&json!({ "state": { "content": "x" } })),
        app.write(Method::POST, "/originators/nope/mementos")
            .json(&json!({ "caretaker": "c1" })),
    ] {
        rejected(&app, request, StatusCode::NOT_FOUND).await;
    }

    // Duplicates.
    rejected(
        &app,
        app.write(Method::POST, "/mementos/caretakers")
            .json(&json!({ "name": "c1" })),
        StatusCode::CONFLICT,
    )
    .await;
    rejected(
        &app,
        app.write(Method::POST, "/originators")
            .json(&json!({ "id": "d1", "type": "document", "name": "again" })),
        StatusCode::CONFLICT,
    )
    .await;
    app.post(
        "/originators/d1/mementos",
        json!({ "caretaker": "c1", "memento_id": "m1" }),
    )
    .await
    .expect_status(StatusCode::CREATED);
    rejected(
        &app,
        app.write(Method::POST, "/originators/d1/mementos")
            .json(&json!({ "caretaker": "c1", "memento_id": "m1" })),
        StatusCode::CONFLICT,
    )
    .await;

    // Read side.
    app.get("/mementos/caretakers/nope")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get("/mementos/caretakers/nope/stats")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
    app.get("/originators/nope")
        .await
        .expect_problem(StatusCode::NOT_FOUND);
}
both_backends!(unknown_and_duplicate);

async fn unknown_route_and_wrong_method(app: TestApp) {
    for side in [Side::Write, Side::Read] {
        for path in [
            "/api/v1/nothing-here",
            "/nothing-here",
            "/api/v2/mementos/caretakers",
        ] {
            let reply = Reply::of(
                app.client
                    .get(app.url(side, path))
                    .bearer_auth(app.token(Role::Admin)),
            )
            .await
            .expect_problem(StatusCode::NOT_FOUND);
            assert!(!reply.text.is_empty());
        }
    }
    rejected(
        &app,
        app.write(Method::PATCH, "/mementos/caretakers")
            .json(&json!({ "name": "c1" })),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    rejected(
        &app,
        app.write(Method::GET, "/mementos/caretakers"),
        StatusCode::METHOD_NOT_ALLOWED,
    )
    .await;
    Reply::of(
        app.anonymous(Method::POST, Side::Read, "/mementos/caretakers")
            .bearer_auth(app.token(Role::Admin))
            .json(&json!({ "name": "c1" })),
    )
    .await
    .expect_problem(StatusCode::METHOD_NOT_ALLOWED);
}
both_backends!(unknown_route_and_wrong_method);

async fn bad_versions_and_queries(app: TestApp) {
    app.create_caretaker("c1").await;
    let p = app.create_document("d1", "hello").await;

    // If-Match that is not a version.
    for if_match in ["abc", "\"v1\"", "-1", ""] {
        let reply = rejected(
            &app,
            app.write(Method::PUT, "/originators/d1/state")
                .header("If-Match", if_match)
                .json(&json!({ "state": { "content": "x" } })),
            StatusCode::BAD_REQUEST,
        )
        .await;
        assert_eq!(reply.error_fields(), vec!["If-Match"], "{}", reply.text);
    }
    rejected(
        &app,
        app.write(Method::POST, "/mementos/caretakers/c1/mementos/m1/restore")
            .header("If-Match", "nope"),
        StatusCode::BAD_REQUEST,
    )
    .await;
    // If-Match and expected_version that disagree.
    rejected(
        &app,
        app.write(Method::PUT, "/originators/d1/state")
            .header("If-Match", "\"1\"")
            .json(&json!({ "state": { "content": "x" }, "expected_version": 2 })),
        StatusCode::UNPROCESSABLE_ENTITY,
    )
    .await;
    // A stale If-Match.
    rejected(
        &app,
        app.write(Method::PUT, "/originators/d1/state")
            .header("If-Match", "\"7\"")
            .json(&json!({ "state": { "content": "x" } })),
        StatusCode::CONFLICT,
    )
    .await;
    // The right one.
    app.write(Method::PUT, "/originators/d1/state")
        .header("If-Match", "W/\"1\"")
        .json(&json!({ "state": { "content": "x" } }))
        .send()
        .await
        .map(|r| assert_eq!(r.status(), StatusCode::OK))
        .expect("sent");

    // Read-side query parameters.
    let reply = app
        .get_at("/mementos/caretakers/c1/mementos?type=spreadsheet", p)
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(reply.error_fields(), vec!["type"], "{}", reply.text);
    app.get("/originators/d1/state?version=0")
        .await
        .expect_problem(StatusCode::UNPROCESSABLE_ENTITY);
    for query in ["limit=ten", "offset=-1", "min_position=soon"] {
        app.get(&format!("/mementos/caretakers?{query}"))
            .await
            .expect_problem(StatusCode::BAD_REQUEST);
    }
    app.get("/originators/d1/state?version=x")
        .await
        .expect_problem(StatusCode::BAD_REQUEST);
}
both_backends!(bad_versions_and_queries);
