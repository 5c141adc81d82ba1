//! Authorization on every route, table-driven: the routes come from the specs the two apps
//! serve (so a new route is covered the day it exists), and each one is called with no token,
//! with every role, and with a token scoped to another context. Below the route's role the
//! answer is 403, without a token 401, with a foreign scope 403; with enough rights it is
//! never 401/403, and never a 5xx.

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use quintet_tests::{both_backends, Reply, Side, TestApp};
use web::Role;

/// The context whose scope a route needs (None: not scoped to a context).
fn context_of(path: &str) -> Option<&'static str> {
    let first = path
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap_or_default();
    match first {
        "mementos" | "originators" => Some("memento"),
        "users" | "payments" | "orders" | "products" | "repositories" => Some("repository"),
        "aggregates" | "events" | "snapshots" | "stats" | "info" => Some("event-sourcing"),
        "mediators" => Some("mediator"),
        "commands" => Some("command"),
        _ => None,
    }
}

/// The least role a route needs.
fn required_role(side: Side, method: &Method, path: &str) -> Role {
    match side {
        // The command context's management: handler registry, resets, clearing.
        Side::Write
            if path.starts_with("/commands/handlers")
                || path == "/commands/metrics/reset"
                || path == "/commands/circuit-breaker/reset"
                || path == "/commands/history"
                || (path == "/commands/queue" && method == Method::DELETE) =>
        {
            Role::Admin
        }
        Side::Write => Role::Writer,
        Side::Read if path.starts_with("/projections") && method != Method::GET => Role::Admin,
        Side::Read if path == "/audit" => Role::Admin,
        Side::Read if path == "/repositories/cache/warm" => Role::Writer,
        Side::Read => Role::Reader,
    }
}

/// A concrete path for a templated one: every `{param}` becomes an id nothing has.
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| {
            if segment.starts_with('{') {
                "authz-probe"
            } else {
                segment
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn routes(app: &TestApp, side: Side) -> Vec<(Method, String)> {
    let spec: Value = app
        .client
        .get(app.url(side, "/openapi.json"))
        .send()
        .await
        .expect("spec")
        .json()
        .await
        .expect("spec JSON");
    let mut routes = Vec::new();
    for (path, operations) in spec["paths"].as_object().expect("paths") {
        for method in operations.as_object().expect("operations").keys() {
            let method =
                Method::from_bytes(method.to_ascii_uppercase().as_bytes()).expect("method");
            routes.push((method, path.clone()));
        }
    }
    assert!(routes.len() > 5, "the {side:?} spec lists its routes");
    routes
}

async fn call(
    app: &TestApp,
    side: Side,
    method: &Method,
    path: &str,
    token: Option<String>,
) -> Reply {
    let mut request = app.anonymous(method.clone(), side, &concrete(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if *method != Method::GET && *method != Method::DELETE {
        request = request.json(&json!({}));
    }
    Reply::of(request).await
}

async fn every_route_checks_token_role_and_scope(app: TestApp) {
    let mut checked = 0;
    for side in [Side::Write, Side::Read] {
        for (method, path) in routes(&app, side).await {
            let what = format!("{side:?} {method} {path}");
            let needed = required_role(side, &method, &path);
            let context = context_of(&path);

            let anonymous = call(&app, side, &method, &path, None).await;
            assert_eq!(
                anonymous.status,
                StatusCode::UNAUTHORIZED,
                "{what} without a token: {}",
                anonymous.text
            );

            for role in [Role::Reader, Role::Writer, Role::Admin] {
                let reply = call(&app, side, &method, &path, Some(app.token(role))).await;
                assert!(
                    !reply.status.is_server_error(),
                    "{what} as {role:?}: {}",
                    reply.text
                );
                if role < needed {
                    assert_eq!(
                        reply.status,
                        StatusCode::FORBIDDEN,
                        "{what} as {role:?}: {}",
                        reply.text
                    );
                } else {
                    assert!(
                        reply.status != StatusCode::FORBIDDEN
                            && reply.status != StatusCode::UNAUTHORIZED,
                        "{what} as {role:?} is allowed: {} {}",
                        reply.status,
                        reply.text
                    );
                }
            }
            if let Some(context) = context {
                let foreign = if context == "memento" {
                    "repository"
                } else {
                    "memento"
                };
                let scoped = app.token_scoped(Role::Admin, foreign);
                let reply = call(&app, side, &method, &path, Some(scoped)).await;
                assert_eq!(
                    reply.status,
                    StatusCode::FORBIDDEN,
                    "{what} scoped to {foreign}: {}",
                    reply.text
                );
                let own = app.token_scoped(needed, context);
                let reply = call(&app, side, &method, &path, Some(own)).await;
                assert!(
                    !reply.status.is_server_error()
                        && reply.status != StatusCode::FORBIDDEN
                        && reply.status != StatusCode::UNAUTHORIZED,
                    "{what} scoped to {context}: {} {}",
                    reply.status,
                    reply.text
                );
            }
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} routes checked");
}
both_backends!(every_route_checks_token_role_and_scope);
