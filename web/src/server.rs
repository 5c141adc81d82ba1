//! Assembles an HTTP app: the versioned API, the operational routes and the middleware
//! stack that every route passes through; and serves it until shutdown.

use std::time::Instant;

use poem::listener::TcpAcceptor;
use poem::middleware::Cors;
use poem::{Endpoint, EndpointExt, Request, Response, Route};
use poem_openapi::{OpenApi, OpenApiService};
use uuid::Uuid;

use kernel::config::SecuritySettings;

use crate::auth::JwtKeys;
use crate::limits::{BodyLimit, RateLimit};
use crate::ops::{self, Readiness};
use crate::problem::problem_from_poem;

pub const API_PREFIX: &str = "/api/v1";

/// The OpenAPI service for an API, with its title and the `/api/v1` server.
pub fn openapi_service<T: OpenApi>(api: T, title: &str) -> OpenApiService<T, ()> {
    OpenApiService::new(api, title, env!("CARGO_PKG_VERSION")).server(API_PREFIX)
}

/// Every route of a process, behind the shared middleware.
pub fn app<T: OpenApi + 'static>(
    service: OpenApiService<T, ()>,
    security: &SecuritySettings,
    keys: JwtKeys,
    readiness: Readiness,
    policy: crate::auth::RoutePolicy,
    base: Route,
) -> impl Endpoint<Output = Response> {
    // Installed now, so what is recorded before the first scrape is not lost.
    ops::metrics_handle();
    let spec = spec_json(&service);
    let allowed = AllowedMethods::from_spec(&spec);
    let docs = service.swagger_ui();
    let route = base
        .nest(API_PREFIX, service.with(crate::auth::Gate { policy }))
        .at(
            "/openapi.json",
            poem::get(poem::endpoint::make_sync(move |_| {
                Response::builder()
                    .content_type("application/json")
                    .body(spec.clone())
            })),
        )
        .nest("/docs", docs)
        .at("/health", poem::get(ops::health))
        .at("/ready", poem::get(ops::ready))
        .at("/metrics", poem::get(ops::prometheus));
    let mut cors = Cors::new();
    if !security.cors_origins.iter().any(|origin| origin == "*") {
        cors = cors.allow_origins(security.cors_origins.iter().map(String::as_str));
    }
    let rate_limit = RateLimit::new(
        security.rate_limit_enabled,
        security.rate_limit_requests,
        security.rate_limit_window,
        keys.clone(),
    );
    let timeout = security.request_timeout;
    route
        .around(move |next, req| timed(next, req, timeout))
        .with(rate_limit)
        .with(BodyLimit {
            max_bytes: security.max_body_bytes,
        })
        .with(cors)
        .data(keys)
        .data(readiness)
        .catch_all_error(problem_from_poem)
        .around(access_log)
        .around(move |next, req| {
            let allowed = allowed.clone();
            async move { allowed.annotate(next, req).await }
        })
}

/// Answers 503 problem+json (with `Retry-After`) when the request is not done in time.
async fn timed<E: Endpoint>(
    next: std::sync::Arc<E>,
    req: Request,
    limit: std::time::Duration,
) -> poem::Result<Response> {
    // `call`, not `get_response`: errors stay errors, for the problem+json mapping outside.
    match tokio::time::timeout(limit, next.call(req)).await {
        Ok(outcome) => outcome.map(poem::IntoResponse::into_response),
        Err(_) => {
            tracing::warn!(timeout_ms = limit.as_millis() as u64, "request timed out");
            Err(crate::problem::ApiError::Unavailable {
                detail: format!("the request took longer than {} ms", limit.as_millis()),
                retry_after_secs: 1,
            }
            .into())
        }
    }
}

/// The spec as served and as written to `openapi/`: poem-openapi's, plus
/// `additionalProperties: false` on request bodies (which reject unknown fields).
pub fn spec_json<T: OpenApi>(service: &OpenApiService<T, ()>) -> String {
    let raw = service.spec();
    let Ok(mut spec) = serde_json::from_str::<serde_json::Value>(&raw) else {
        return raw;
    };
    if let Some(schemas) = spec
        .pointer_mut("/components/schemas")
        .and_then(serde_json::Value::as_object_mut)
    {
        for (name, schema) in schemas.iter_mut() {
            if let (true, Some(schema)) = (name.ends_with("Request"), schema.as_object_mut()) {
                schema.insert("additionalProperties".into(), false.into());
            }
        }
    }
    serde_json::to_string_pretty(&spec).unwrap_or(raw)
}

/// The methods each documented path accepts, for the `Allow` header of a 405 (RFC 9110).
#[derive(Clone, Default)]
struct AllowedMethods {
    routes: std::sync::Arc<Vec<(Vec<Option<String>>, String)>>,
}

impl AllowedMethods {
    fn from_spec(spec: &str) -> Self {
        let mut routes = Vec::new();
        let parsed: serde_json::Value = serde_json::from_str(spec).unwrap_or_default();
        if let Some(paths) = parsed.get("paths").and_then(serde_json::Value::as_object) {
            for (path, operations) in paths {
                let segments = format!("{API_PREFIX}{path}")
                    .split('/')
                    .map(|segment| (!segment.starts_with('{')).then(|| segment.to_string()))
                    .collect();
                let methods: Vec<String> = operations
                    .as_object()
                    .map(|ops| ops.keys().map(|m| m.to_ascii_uppercase()).collect())
                    .unwrap_or_default();
                routes.push((segments, methods.join(", ")));
            }
        }
        for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
            routes.push((
                path.split('/').map(|s| Some(s.to_string())).collect(),
                "GET".into(),
            ));
        }
        Self {
            routes: std::sync::Arc::new(routes),
        }
    }

    fn lookup(&self, path: &str) -> Option<&str> {
        let wanted: Vec<&str> = path.split('/').collect();
        // Like the router: a literal segment beats a parameter (`/repositories/query` is not
        // `/repositories/{type}`), so the match with the most literals wins.
        self.routes
            .iter()
            .filter(|(segments, _)| {
                segments.len() == wanted.len()
                    && segments.iter().zip(&wanted).all(|(segment, got)| {
                        segment.as_deref().is_none_or(|literal| literal == *got)
                    })
            })
            .max_by_key(|(segments, _)| segments.iter().filter(|s| s.is_some()).count())
            .map(|(_, methods)| methods.as_str())
    }

    async fn annotate<E: Endpoint<Output = Response>>(
        &self,
        next: std::sync::Arc<E>,
        req: Request,
    ) -> poem::Result<Response> {
        let path = req.uri().path().to_string();
        let mut response = next.call(req).await?;
        if response.status() == poem::http::StatusCode::METHOD_NOT_ALLOWED {
            if let Some(value) = self.lookup(&path).and_then(|methods| methods.parse().ok()) {
                response.headers_mut().insert("allow", value);
            }
        }
        Ok(response)
    }
}

/// The request id a handler can use as the correlation id of what it writes.
#[derive(Debug, Clone, Copy)]
pub struct RequestId(pub Uuid);

/// Logs method, path (never the query, which may carry a token), status and latency, and
/// tags the response with its request id.
async fn access_log<E: Endpoint<Output = Response>>(
    next: std::sync::Arc<E>,
    mut req: Request,
) -> poem::Result<Response> {
    let started = Instant::now();
    let request_id = req
        .headers()
        .get("x-request-id")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| Uuid::parse_str(value).ok())
        .unwrap_or_else(Uuid::now_v7);
    req.extensions_mut().insert(RequestId(request_id));
    let method = req.method().to_string();
    let path = req.uri().path().to_string();
    let mut response = match next.call(req).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    };
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    tracing::info!(%request_id, %method, %path, status, latency_ms = elapsed.as_secs_f64() * 1000.0, "request");
    metrics::counter!("quintet_http_requests_total", "method" => method, "status" => status.to_string()).increment(1);
    metrics::histogram!("quintet_http_request_seconds").record(elapsed.as_secs_f64());
    if let Ok(value) = request_id.to_string().parse() {
        response.headers_mut().insert("x-request-id", value);
    }
    Ok(response)
}

/// Serves `app` on an already bound listener until `shutdown` resolves (mini-redis style:
/// tests bind port 0 and pass the listener in).
pub async fn run(
    listener: std::net::TcpListener,
    app: impl Endpoint + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let acceptor = TcpAcceptor::from_tokio(listener)?;
    poem::Server::new_with_acceptor(acceptor)
        .run_with_graceful_shutdown(app, shutdown, Some(std::time::Duration::from_secs(5)))
        .await
}

/// A shutdown signal many tasks can wait on.
#[derive(Clone)]
pub struct Shutdown(tokio::sync::watch::Receiver<bool>);

/// Resolves the returned [`Shutdown`] when the sender is dropped or sends `true`.
pub fn shutdown_channel() -> (tokio::sync::watch::Sender<bool>, Shutdown) {
    let (sender, receiver) = tokio::sync::watch::channel(false);
    (sender, Shutdown(receiver))
}

impl Shutdown {
    /// Waits for the signal.
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stop| *stop).await;
    }

    /// A Shutdown that fires on SIGINT or SIGTERM.
    pub fn on_signals() -> Shutdown {
        let (sender, shutdown) = shutdown_channel();
        tokio::spawn(async move {
            let interrupt = tokio::signal::ctrl_c();
            #[cfg(unix)]
            {
                let mut terminate =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .expect("SIGTERM handler installs");
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            #[cfg(not(unix))]
            let _ = interrupt.await;
            tracing::info!("shutting down");
            let _ = sender.send(true);
            // Keep the sender alive until the receivers are gone.
            sender.closed().await;
        });
        shutdown
    }
}

/// Binds a listener, with a clear error naming the address.
pub fn bind(addr: &str) -> std::io::Result<std::net::TcpListener> {
    std::net::TcpListener::bind(addr)
        .map_err(|err| std::io::Error::new(err.kind(), format!("cannot listen on {addr}: {err}")))
}

/// The frame of every process: load the configuration, start logging, run `body` until it
/// ends or a signal arrives, and turn the outcome into an exit code.
pub async fn process_main<F, Fut>(name: &str, body: F) -> std::process::ExitCode
where
    F: FnOnce(kernel::config::Settings, Shutdown) -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let settings = match kernel::config::Settings::load() {
        Ok(settings) => settings,
        Err(err) => {
            eprintln!("{name}: {err}");
            return std::process::ExitCode::from(2);
        }
    };
    kernel::telemetry::init(&settings.logging);
    if let Err(err) = crate::JwtKeys::try_new(&settings.security) {
        eprintln!("{name}: {err}");
        return std::process::ExitCode::from(2);
    }
    match body(settings, Shutdown::on_signals()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "{name} failed");
            eprintln!("{name}: {err}");
            std::process::ExitCode::FAILURE
        }
    }
}
