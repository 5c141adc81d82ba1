//! Request timeouts: a request that is not answered within `security.request_timeout` gets
//! 503 problem+json with `Retry-After`, from the same middleware stack every route uses.

use std::time::{Duration, Instant};

use poem::{handler, Route};
use reqwest::StatusCode;

use kernel::config::Settings;
use quintet_tests::{test_settings, Backend, Reply};
use web::ops::Readiness;
use web::JwtKeys;

/// An endpoint slower than any timeout a test sets.
#[handler]
async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_secs(60)).await;
    "too late"
}

#[handler]
fn quick() -> &'static str {
    "fine"
}

#[tokio::test]
async fn a_slow_request_gets_503_problem_with_retry_after() {
    let dir = std::env::temp_dir().join(format!("quintet-timeout-{}", uuid::Uuid::new_v4()));
    let mut settings: Settings = test_settings(Backend::Embedded, &dir);
    settings.security.request_timeout = Duration::from_millis(200);
    let backends = kernel::wiring::connect_write_side(&settings)
        .await
        .expect("backends");
    let state = write_api::WriteState::new(backends.engine.clone(), &settings);
    let app = web::server::app(
        write_api::openapi(state),
        &settings.security,
        JwtKeys::new(&settings.security),
        Readiness::new(),
        |_, _| (web::Role::Reader, None),
        Route::new().at("/slow", slow).at("/quick", quick),
    );
    let listener = web::server::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let (_stop, shutdown) = web::server::shutdown_channel();
    tokio::spawn(web::server::run(listener, app, shutdown.wait()));
    let client = reqwest::Client::new();

    let started = Instant::now();
    let reply = Reply::of(client.get(format!("{url}/slow"))).await;
    let waited = started.elapsed();
    let reply = reply.expect_problem(StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        waited < Duration::from_secs(10),
        "answered after {waited:?}, not at the timeout"
    );
    let retry_after = reply
        .headers
        .get("retry-after")
        .map(|v| v.as_bytes().to_vec());
    assert_eq!(retry_after.as_deref(), Some(&b"1"[..]));

    // A quick request on the same stack is untouched.
    let fine = client
        .get(format!("{url}/quick"))
        .send()
        .await
        .expect("quick");
    assert_eq!(fine.status(), StatusCode::OK);
    let _ = std::fs::remove_dir_all(dir);
}
