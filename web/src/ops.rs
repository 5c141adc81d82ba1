//! Operational routes: liveness, readiness (each backend checked), Prometheus metrics.

use std::sync::{Arc, OnceLock};

use futures_util_compat::BoxFuture;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use poem::http::StatusCode;
use poem::{handler, web::Data, IntoResponse, Response};

use crate::problem::{problem_response, ProblemBody};

/// Boxed futures without pulling in all of `futures`.
mod futures_util_compat {
    pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
}

pub type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// Named checks of each backend a process uses.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Check)>,
}

impl Readiness {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn check<F, Fut>(mut self, name: &'static str, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.checks.push((
            name,
            Arc::new(move || Box::pin(check()) as BoxFuture<'static, _>),
        ));
        self
    }

    /// Runs every check; the map says which passed.
    pub async fn run(&self) -> (bool, serde_json::Map<String, serde_json::Value>) {
        let mut all_ok = true;
        let mut report = serde_json::Map::new();
        for (name, check) in &self.checks {
            let outcome = tokio::time::timeout(std::time::Duration::from_secs(2), check()).await;
            let status = match outcome {
                Ok(Ok(())) => "ok".to_string(),
                Ok(Err(err)) => {
                    all_ok = false;
                    format!("failing: {err}")
                }
                Err(_) => {
                    all_ok = false;
                    "failing: timed out".to_string()
                }
            };
            report.insert(name.to_string(), status.into());
        }
        (all_ok, report)
    }
}

#[handler]
pub async fn health() -> Response {
    Response::builder()
        .content_type("application/json")
        .body(r#"{"status":"ok"}"#)
}

#[handler]
pub async fn ready(readiness: Data<&Readiness>) -> Response {
    let (ok, checks) = readiness.run().await;
    if ok {
        Response::builder()
            .content_type("application/json")
            .body(serde_json::json!({"status": "ready", "checks": checks}).to_string())
    } else {
        let body = ProblemBody {
            kind: "https://quintet.dev/problems/not-ready".into(),
            title: "Service Unavailable".into(),
            status: StatusCode::SERVICE_UNAVAILABLE.as_u16(),
            detail: serde_json::Value::Object(checks).to_string(),
            errors: None,
        };
        problem_response(&body, Some(1))
    }
}

/// The process-wide Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; then ours simply stays empty.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[handler]
pub async fn prometheus() -> impl IntoResponse {
    Response::builder()
        .content_type("text/plain; version=0.0.4")
        .body(metrics_handle().render())
}
