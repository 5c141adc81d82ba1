//! The read side over HTTP: queries served from the read models, with read-your-writes
//! (`min_position`), and a WebSocket stream of events with filters and gapless resume.

pub mod admin;
pub mod audit;
pub mod cache;
pub mod checkpoint_poll;
pub mod command;
pub mod event_sourcing;
pub mod mediator;
pub mod memento;
pub mod owner;
pub mod query;
pub mod repository;
pub mod stream_owner;
pub mod ws;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kernel::config::Settings;
use kernel::engine::Engine;
use kernel::feed::Hub;
use kernel::ports::{ReadCache, ReadStore};
use poem::{Endpoint, EndpointExt, Response, Route};
use poem_openapi::OpenApiService;
use tokio::sync::watch;
use web::ops::Readiness;
use web::{ApiError, JwtKeys, Role};

/// What every read handler needs.
#[derive(Clone)]
pub struct ReadState {
    pub read: Arc<dyn ReadStore>,
    /// Cache-aside for reads by id (see [`cache`]).
    pub cache: Arc<dyn ReadCache>,
    pub cache_ttl: Duration,
    pub engine: Engine,
    pub hub: Hub,
    /// Live checkpoints of the projections running in this process; others are polled.
    pub checkpoints: HashMap<&'static str, watch::Receiver<u64>>,
    /// The polled ones: one poll loop per projection, shared by every waiting read.
    pub polled: checkpoint_poll::PolledCheckpoints,
    pub min_position_wait: Duration,
    pub websocket: kernel::config::WebSocketSettings,
    /// How rebuilds started from the admin API tail the event store.
    pub feed: kernel::config::FeedSettings,
    pub event_sourcing: kernel::domain::event_sourcing::EventSourcingPolicy,
}

impl ReadState {
    /// A reader of `context` (role and scope), once `projection` has applied `min_position`.
    pub async fn reader_ready(
        &self,
        auth: &web::BearerAuth,
        context: &str,
        projection: &str,
        min_position: Option<u64>,
    ) -> Result<(), ApiError> {
        auth.0.allow(Role::Reader, context)?;
        self.await_position(projection, min_position).await
    }

    /// Waits until `projection` has applied `min_position`, or answers 503 with Retry-After.
    pub async fn await_position(
        &self,
        projection: &str,
        min_position: Option<u64>,
    ) -> Result<(), ApiError> {
        let Some(wanted) = min_position.filter(|position| *position > 0) else {
            return Ok(());
        };
        // A position no write has returned yet is a client error, not something to wait for.
        let head = self.engine.store().head_position().await?;
        if wanted > head {
            return Err(ApiError::invalid(
                "min_position",
                format!("{wanted} is beyond the last committed position ({head})"),
            ));
        }
        let deadline = tokio::time::Instant::now() + self.min_position_wait;
        if let Some(receiver) = self.checkpoints.get(projection) {
            let mut receiver = receiver.clone();
            let reached =
                tokio::time::timeout_at(deadline, receiver.wait_for(|p| *p >= wanted)).await;
            if matches!(reached, Ok(Ok(_))) {
                return Ok(());
            }
        } else {
            let mut receiver = self.polled.subscribe(&self.read, projection);
            let reached =
                tokio::time::timeout_at(deadline, receiver.wait_for(|p| *p >= wanted)).await;
            if matches!(reached, Ok(Ok(_))) {
                return Ok(());
            }
        }
        Err(ApiError::Unavailable {
            detail: format!("the {projection} projection has not reached position {wanted} yet"),
            retry_after_secs: 1,
        })
    }
}

/// The read routes of every context and the projection admin routes.
pub type ReadApis = (
    memento::MementoReadApi,
    repository::RepositoryReadApi,
    event_sourcing::EventSourcingReadApi,
    mediator::MediatorReadApi,
    command::CommandReadApi,
    admin::AdminApi,
    audit::AuditApi,
);

pub fn openapi(state: ReadState) -> OpenApiService<ReadApis, ()> {
    web::server::openapi_service(
        (
            memento::MementoReadApi {
                state: state.clone(),
            },
            repository::RepositoryReadApi {
                state: state.clone(),
            },
            event_sourcing::EventSourcingReadApi {
                state: state.clone(),
            },
            mediator::MediatorReadApi {
                state: state.clone(),
            },
            command::CommandReadApi {
                state: state.clone(),
            },
            admin::AdminApi {
                state: state.clone(),
            },
            audit::AuditApi { state },
        ),
        "Quintet read API",
    )
}

/// The whole read-api app: API, WebSocket, docs, operational routes, middleware.
pub fn app(
    state: ReadState,
    settings: &Settings,
    readiness: Readiness,
) -> impl Endpoint<Output = Response> {
    let keys = JwtKeys::new(&settings.security);
    let ws = Route::new().at("/ws", ws::stream.data(state.clone()).data(keys.clone()));
    web::server::app(
        openapi(state),
        &settings.security,
        keys,
        readiness,
        route_policy,
        ws,
    )
}

/// Reading needs a reader of the route's context; the audit trail and the projection admin
/// actions need an admin, and warming the cache a writer.
fn route_policy(method: &poem::http::Method, path: &str) -> (Role, Option<&'static str>) {
    if path == "/audit" {
        return (Role::Admin, None);
    }
    if path.starts_with("/projections") {
        let role = if method == poem::http::Method::GET {
            Role::Reader
        } else {
            Role::Admin
        };
        return (role, None);
    }
    let role = if path == "/repositories/cache/warm" {
        Role::Writer
    } else {
        Role::Reader
    };
    (role, web::auth::context_of_route(path))
}

/// Starts the in-process projections and the event stream hub, and returns the state the
/// read routes need. Everything stops on `shutdown`.
pub async fn start(
    settings: &Settings,
    engine: Engine,
    read: Arc<dyn ReadStore>,
    shutdown: web::server::Shutdown,
) -> kernel::KernelResult<ReadState> {
    let cache = kernel::wiring::connect_read_cache(settings).await?;
    let mut checkpoints = HashMap::new();
    // With Kafka, projector processes build the read models; this process only reads them.
    let in_process = settings.feed.backend == kernel::config::FeedBackend::Embedded;
    for projection in projectors::all().into_iter().filter(|_| in_process) {
        let runner = kernel::projector::ProjectionRunner::new(
            projection,
            engine.clone(),
            read.clone(),
            settings.feed.clone(),
        )
        .with_cache(cache.clone());
        checkpoints.insert(runner.name(), runner.watch());
        tokio::spawn(runner.run(shutdown.clone().wait()));
    }
    let hub = Hub::new(
        settings.websocket.buffer,
        engine.store().head_position().await?,
    );
    tokio::spawn(kernel::projector::run_hub(
        engine.clone(),
        hub.clone(),
        settings.feed.clone(),
        shutdown.wait(),
    ));
    Ok(ReadState {
        read,
        cache,
        cache_ttl: settings.cache.ttl,
        engine,
        hub,
        checkpoints,
        polled: Default::default(),
        min_position_wait: settings.read.min_position_wait,
        websocket: settings.websocket.clone(),
        feed: settings.feed.clone(),
        event_sourcing: settings.event_sourcing.clone(),
    })
}

/// Connects every backend the configuration names (the read API reads the event store for
/// replays and time travel) and starts the projections and the hub.
pub async fn connect_and_start(
    settings: &Settings,
    shutdown: web::server::Shutdown,
) -> kernel::KernelResult<(kernel::wiring::Backends, ReadState)> {
    let backends = kernel::wiring::connect_write_side(settings).await?;
    let read = kernel::wiring::connect_read_store(settings).await?;
    let state = start(settings, backends.engine.clone(), read, shutdown).await?;
    Ok((backends, state))
}

/// Readiness of the read side: the read store and the event store answer.
pub fn readiness(state: &ReadState) -> Readiness {
    let read = state.read.clone();
    let store = state.engine.store().clone();
    Readiness::new()
        .check("read_store", move || {
            let read = read.clone();
            async move { read.ping().await.map_err(|err| err.to_string()) }
        })
        .check("event_store", move || {
            let store = store.clone();
            async move { store.ping().await.map_err(|err| err.to_string()) }
        })
}

/// Serves the read API on `listener` until `shutdown`.
pub async fn serve(
    settings: &Settings,
    state: ReadState,
    listener: std::net::TcpListener,
    shutdown: web::server::Shutdown,
) -> std::io::Result<()> {
    let readiness = readiness(&state);
    web::server::run(listener, app(state, settings, readiness), shutdown.wait()).await
}

/// The `read-api` process, with its projections running in-process.
pub async fn main() -> std::process::ExitCode {
    web::server::process_main("read-api", |settings, shutdown| async move {
        let (_, state) = connect_and_start(&settings, shutdown.clone())
            .await
            .map_err(|err| err.to_string())?;
        let listener =
            web::server::bind(&settings.read_api.addr()).map_err(|err| err.to_string())?;
        tracing::info!(addr = %settings.read_api.addr(), "read-api listening");
        serve(&settings, state, listener, shutdown)
            .await
            .map_err(|err| err.to_string())
    })
    .await
}
