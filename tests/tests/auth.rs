//! Authentication (JWT, HS256 pinned, exp/aud/iss required), roles, open operational
//! routes, and the rate limit.

use std::time::Duration;

use jsonwebtoken::Algorithm;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::jwt::{claims, now, sign, unsigned};
use quintet_tests::{both_backends, Reply, Side, TestApp, JWT_SECRET};
use web::Role;

/// Every token that must be refused, with why.
fn bad_tokens() -> Vec<(&'static str, String)> {
    let mut expired = claims("writer");
    expired["iat"] = json!(now() - 7200);
    expired["exp"] = json!(now() - 3600);
    let mut wrong_audience = claims("writer");
    wrong_audience["aud"] = json!("someone-else");
    let mut wrong_issuer = claims("writer");
    wrong_issuer["iss"] = json!("evil");
    let mut no_exp = claims("writer");
    no_exp.as_object_mut().map(|c| c.remove("exp"));
    let mut no_aud = claims("writer");
    no_aud.as_object_mut().map(|c| c.remove("aud"));
    let mut not_yet = claims("writer");
    not_yet["nbf"] = json!(now() + 3600);
    let mut unknown_role = claims("writer");
    unknown_role["role"] = json!("superuser");
    let right = claims("writer");
    vec![
        ("garbage", "garbage".to_string()),
        ("three garbage parts", "a.b.c".to_string()),
        (
            "another secret",
            sign(Algorithm::HS256, "another-secret-0123456789abcdef", &right),
        ),
        ("alg none", unsigned(&right)),
        (
            "HS384 with the right secret",
            sign(Algorithm::HS384, JWT_SECRET, &right),
        ),
        (
            "HS512 with the right secret",
            sign(Algorithm::HS512, JWT_SECRET, &right),
        ),
        ("expired", sign(Algorithm::HS256, JWT_SECRET, &expired)),
        (
            "wrong audience",
            sign(Algorithm::HS256, JWT_SECRET, &wrong_audience),
        ),
        (
            "wrong issuer",
            sign(Algorithm::HS256, JWT_SECRET, &wrong_issuer),
        ),
        ("no exp", sign(Algorithm::HS256, JWT_SECRET, &no_exp)),
        ("no aud", sign(Algorithm::HS256, JWT_SECRET, &no_aud)),
        (
            "nbf in the future",
            sign(Algorithm::HS256, JWT_SECRET, &not_yet),
        ),
        (
            "unknown role",
            sign(Algorithm::HS256, JWT_SECRET, &unknown_role),
        ),
    ]
}

async fn bad_tokens_are_401(app: TestApp) {
    let write = |token: Option<&str>| {
        let request = app
            .anonymous(Method::POST, Side::Write, "/mementos/caretakers")
            .json(&json!({ "name": "c1" }));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };
    let read = |token: Option<&str>| {
        let request = app.anonymous(Method::GET, Side::Read, "/mementos/caretakers");
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    };

    let before = app.head_position().await;
    Reply::of(write(None))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED);
    Reply::of(read(None))
        .await
        .expect_problem(StatusCode::UNAUTHORIZED);
    // Not a bearer scheme.
    Reply::of(
        app.anonymous(Method::GET, Side::Read, "/mementos/caretakers")
            .basic_auth("admin", Some("admin")),
    )
    .await
    .expect_problem(StatusCode::UNAUTHORIZED);

    for (why, token) in bad_tokens() {
        let reply = Reply::of(write(Some(&token))).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{why}: {}",
            reply.text
        );
        quintet_tests::assert_problem_shape(&reply);
        assert!(
            !reply.text.contains(&token),
            "{why}: the problem echoes the token"
        );
        let reply = Reply::of(read(Some(&token))).await;
        assert_eq!(
            reply.status,
            StatusCode::UNAUTHORIZED,
            "{why}: {}",
            reply.text
        );
        quintet_tests::assert_problem_shape(&reply);
    }
    assert_eq!(app.head_position().await, before, "a refused write wrote");

    // The crafted claims are fine when signed properly: the refusals above were for cause.
    let good = sign(Algorithm::HS256, JWT_SECRET, &claims("writer"));
    Reply::of(write(Some(&good)))
        .await
        .expect_status(StatusCode::CREATED);
}
both_backends!(bad_tokens_are_401);

async fn roles(app: TestApp) {
    let reader = app.token(Role::Reader);
    let writer = app.token(Role::Writer);
    let admin = app.token(Role::Admin);
    let before = app.head_position().await;

    // A reader cannot write.
    let reply = app
        .write_as(
            &reader,
            Method::POST,
            "/mementos/caretakers",
            json!({ "name": "c1" }),
        )
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    assert!(
        reply.text.to_lowercase().contains("writer"),
        "{}",
        reply.text
    );
    app.write_as(
        &reader,
        Method::PUT,
        "/originators/x/state",
        json!({ "state": {} }),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    assert_eq!(app.head_position().await, before);

    // A writer and an admin can.
    let p1 = app
        .write_as(
            &writer,
            Method::POST,
            "/mementos/caretakers",
            json!({ "name": "c1" }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    let p2 = app
        .write_as(
            &admin,
            Method::POST,
            "/mementos/caretakers",
            json!({ "name": "c2" }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    assert!(p2 > p1);

    // Every role can read.
    for token in [&reader, &writer, &admin] {
        let reply = app
            .read_at(token, "/mementos/caretakers", p2)
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(reply.body["total"], 2, "{}", reply.text);
    }
}
both_backends!(roles);

/// A token scoped to one context is refused (403) on every other context's routes, for
/// writes, reads and the event stream alike.
async fn scopes(app: TestApp) {
    let memento_only = app.token_scoped(Role::Writer, "memento");
    let elsewhere = app.token_scoped(Role::Admin, "repository");
    let position = app
        .write_as(
            &memento_only,
            Method::POST,
            "/mementos/caretakers",
            json!({ "name": "scoped" }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position();
    app.write_as(
        &elsewhere,
        Method::POST,
        "/mementos/caretakers",
        json!({ "name": "other" }),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    app.read_at(&elsewhere, "/mementos/caretakers/scoped", position)
        .await
        .expect_problem(StatusCode::FORBIDDEN);
    app.read_at(&memento_only, "/mementos/caretakers/scoped", position)
        .await
        .expect_status(StatusCode::OK);
}
both_backends!(scopes);

async fn health_and_ready_need_no_token(app: TestApp) {
    for side in [Side::Write, Side::Read] {
        let health = Reply::of(app.client.get(app.url(side, "/health")))
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(health.body["status"], "ok");
        let ready = Reply::of(app.client.get(app.url(side, "/ready")))
            .await
            .expect_status(StatusCode::OK);
        assert_eq!(ready.body["status"], "ready", "{}", ready.text);
    }
}
both_backends!(health_and_ready_need_no_token);

/// The 4th request in a window of 3 gets 429 with Retry-After.
async fn rate_limited(app: TestApp) {
    for _ in 0..3 {
        app.get("/mementos/caretakers")
            .await
            .expect_status(StatusCode::OK);
    }
    let reply = app
        .get("/mementos/caretakers")
        .await
        .expect_problem(StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = reply
        .header("retry-after")
        .unwrap_or_else(|| panic!("no Retry-After: {:?}", reply.headers))
        .parse()
        .expect("Retry-After in seconds");
    assert!((1..=60).contains(&retry_after), "Retry-After {retry_after}");
    // Unauthenticated and operational requests from the same IP are limited too.
    Reply::of(app.client.get(app.url(Side::Read, "/health")))
        .await
        .expect_problem(StatusCode::TOO_MANY_REQUESTS);

    // The write side has its own limiter: 3 more there, then 429, and nothing written.
    for name in ["a", "b", "c"] {
        app.create_caretaker(name).await;
    }
    let before = app.head_position().await;
    Reply::of(
        app.write(Method::POST, "/mementos/caretakers")
            .json(&json!({ "name": "d" })),
    )
    .await
    .expect_problem(StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(app.head_position().await, before);
}
both_backends!(
    rate_limited,
    with = |s: &mut kernel::config::Settings| {
        s.security.rate_limit_requests = 3;
        s.security.rate_limit_window = Duration::from_secs(60);
    }
);

/// Tokens never come back in any response.
async fn token_is_not_echoed(app: TestApp) {
    let token = app.token(Role::Reader);
    let reply = Reply::of(
        app.anonymous(Method::POST, Side::Write, "/mementos/caretakers")
            .bearer_auth(&token)
            .json(&json!({ "name": "c1" })),
    )
    .await
    .expect_problem(StatusCode::FORBIDDEN);
    assert!(!reply.text.contains(&token));
    let headers: Vec<Value> = reply
        .headers
        .values()
        .map(|v| json!(v.to_str().unwrap_or_default()))
        .collect();
    assert!(!headers.iter().any(|h| h.as_str() == Some(token.as_str())));
}
both_backends!(token_is_not_echoed);
