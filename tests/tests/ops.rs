//! The operational routes of both processes: `/health`, `/ready`, `/metrics`,
//! `/openapi.json` and `/docs`, plus request ids.

use reqwest::StatusCode;
use serde_json::Value;

use quintet_tests::{both_backends, Reply, Side, TestApp};

async fn health_and_ready(app: TestApp) {
    for side in [Side::Write, Side::Read] {
        let health = Reply::of(app.client.get(app.url(side, "/health")))
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(health.body["status"], "ok", "{}", health.text);
    }
    let ready = Reply::of(app.client.get(app.url(Side::Write, "/ready")))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["checks"]["event_store"], "ok", "{}", ready.text);
    assert_eq!(ready.body["checks"]["snapshots"], "ok", "{}", ready.text);
    let ready = Reply::of(app.client.get(app.url(Side::Read, "/ready")))
        .await
        .expect_status(StatusCode::OK);
    assert_eq!(ready.body["status"], "ready");
    assert_eq!(ready.body["checks"]["read_store"], "ok", "{}", ready.text);
    assert_eq!(ready.body["checks"]["event_store"], "ok", "{}", ready.text);
}
both_backends!(health_and_ready);

async fn scrape(app: &TestApp, side: Side) -> String {
    let reply = Reply::of(app.client.get(app.url(side, "/metrics")))
        .await
        .expect_status(StatusCode::OK);
    assert!(
        reply
            .header("content-type")
            .unwrap_or_default()
            .starts_with("text/plain"),
        "{:?}",
        reply.headers
    );
    reply.text
}

/// The request counter shows up (at the latest on the second scrape).
async fn metrics_count_requests(app: TestApp) {
    app.create_caretaker("c1").await;
    app.get("/mementos/caretakers")
        .await
        .expect_status(StatusCode::OK);
    for side in [Side::Write, Side::Read] {
        scrape(&app, side).await;
        let text = scrape(&app, side).await;
        assert!(
            text.contains("quintet_http_requests_total"),
            "no request counter in:\n{text}"
        );
    }
}
both_backends!(metrics_count_requests);

/// Requests made before the first scrape are counted too.
async fn metrics_count_requests_before_the_first_scrape(app: TestApp) {
    app.create_caretaker("c1").await;
    let text = scrape(&app, Side::Write).await;
    assert!(
        text.contains("quintet_http_requests_total"),
        "the first scrape lost the requests before it:\n{text}"
    );
    assert!(
        text.contains("quintet_commands_committed_total"),
        "the first scrape lost the committed command:\n{text}"
    );
}
mod metrics_count_requests_before_the_first_scrape {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn embedded() {
        let app = quintet_tests::spawn_app(quintet_tests::Backend::Embedded).await;
        quintet_tests::run_scenario(super::metrics_count_requests_before_the_first_scrape(app))
            .await;
    }
}

async fn openapi_and_docs(app: TestApp) {
    for side in [Side::Write, Side::Read] {
        let reply = Reply::of(app.client.get(app.url(side, "/openapi.json")))
            .await
            .expect_status(StatusCode::OK);
        let spec: Value = serde_json::from_str(&reply.text).expect("the spec is JSON");
        assert!(
            spec["openapi"]
                .as_str()
                .unwrap_or_default()
                .starts_with("3."),
            "{}",
            spec["openapi"]
        );
        assert_eq!(spec["servers"][0]["url"], "/api/v1");
        let paths = spec["paths"].as_object().expect("paths");
        assert!(
            paths.contains_key("/mementos/caretakers"),
            "{:?}",
            paths.keys()
        );
        let expected = match side {
            Side::Write => [
                "/originators",
                "/mementos/caretakers/{name}/mementos/{id}/restore",
            ],
            Side::Read => [
                "/originators/{id}/history",
                "/mementos/caretakers/{name}/stats",
            ],
        };
        for path in expected {
            assert!(
                paths.contains_key(path),
                "{path} missing: {:?}",
                paths.keys()
            );
        }
        // Every path is relative to the server: none repeats the prefix.
        assert!(paths.keys().all(|p| !p.starts_with("/api/")));
        // The problem responses are documented.
        assert!(
            reply.text.contains("application/problem+json"),
            "problem+json is not documented"
        );
        // The bearer scheme is declared.
        assert!(
            spec["components"]["securitySchemes"]
                .as_object()
                .is_some_and(|schemes| !schemes.is_empty()),
            "no security scheme"
        );

        let docs = Reply::of(app.client.get(app.url(side, "/docs")))
            .await
            .expect_status(StatusCode::OK);
        assert!(
            docs.header("content-type")
                .unwrap_or_default()
                .starts_with("text/html"),
            "{:?}",
            docs.headers
        );
        assert!(docs.text.to_lowercase().contains("swagger"));
    }
}
both_backends!(openapi_and_docs);

async fn request_ids(app: TestApp) {
    let reply = Reply::of(app.client.get(app.url(Side::Write, "/health"))).await;
    let generated = reply.header("x-request-id").expect("an x-request-id");
    uuid::Uuid::parse_str(generated).expect("a UUID request id");
    let mine = uuid::Uuid::new_v4().to_string();
    let reply = Reply::of(
        app.client
            .get(app.url(Side::Read, "/health"))
            .header("X-Request-Id", &mine),
    )
    .await;
    assert_eq!(reply.header("x-request-id"), Some(mine.as_str()));
    // Errors carry one too.
    let reply = Reply::of(app.client.get(app.url(Side::Read, "/nothing"))).await;
    assert!(reply.header("x-request-id").is_some());
}
both_backends!(request_ids);
