//! The write side over HTTP: commands arrive as REST calls, run on the aggregates through
//! the kernel's engine, and answer only after the event store has committed, with the
//! committed global `position` (body and `X-Quintet-Position`).

pub mod command;
pub mod event_sourcing;
pub mod ingress;
pub mod jobs;
pub mod mediator;
pub mod memento;
pub mod repository;
pub mod write;

use kernel::config::Settings;
use kernel::domain::command::CommandPolicy;
use kernel::domain::event_sourcing::EventSourcingPolicy;
use kernel::domain::mediator::MediatorPolicy;
use kernel::domain::memento::MementoPolicy;
use kernel::engine::Engine;
use poem::{Endpoint, Response, Route};
use poem_openapi::OpenApiService;
use web::ops::Readiness;
use web::{JwtKeys, Role};

/// What every write handler needs.
#[derive(Clone)]
pub struct WriteState {
    pub engine: Engine,
    pub memento: MementoPolicy,
    pub event_sourcing: EventSourcingPolicy,
    pub mediator: MediatorPolicy,
    pub command: CommandPolicy,
}

impl WriteState {
    /// The state of the write routes, with the policies the configuration sets.
    pub fn new(engine: Engine, settings: &Settings) -> Self {
        Self {
            engine,
            memento: settings.memento.policy(),
            event_sourcing: settings.event_sourcing.clone(),
            mediator: settings.mediator.clone(),
            command: settings.command.clone(),
        }
    }
}

pub type WriteApis = (
    memento::MementoWriteApi,
    repository::RepositoryWriteApi,
    event_sourcing::EventSourcingWriteApi,
    mediator::MediatorWriteApi,
    command::CommandWriteApi,
);

pub fn openapi(state: WriteState) -> OpenApiService<WriteApis, ()> {
    web::server::openapi_service(
        (
            memento::MementoWriteApi {
                state: state.clone(),
            },
            repository::RepositoryWriteApi {
                state: state.clone(),
            },
            event_sourcing::EventSourcingWriteApi {
                state: state.clone(),
            },
            mediator::MediatorWriteApi {
                state: state.clone(),
            },
            command::CommandWriteApi { state },
        ),
        "Quintet write API",
    )
}

/// The whole write-api app: API, docs, operational routes, middleware.
pub fn app(
    state: WriteState,
    settings: &Settings,
    readiness: Readiness,
) -> impl Endpoint<Output = Response> {
    web::server::app(
        openapi(state),
        &settings.security,
        JwtKeys::new(&settings.security),
        readiness,
        route_policy,
        Route::new(),
    )
}

/// Writing needs a writer of the route's context; the command context's management
/// routes (handler registry, resets, clearing) need an admin.
fn route_policy(method: &poem::http::Method, path: &str) -> (Role, Option<&'static str>) {
    let role = if command::is_admin_route(method, path) {
        Role::Admin
    } else {
        Role::Writer
    };
    (role, web::auth::context_of_route(path))
}

/// Readiness of the write side: the event store and the snapshot store answer.
pub fn readiness(backends: &kernel::wiring::Backends) -> Readiness {
    let store = backends.engine.store().clone();
    let snapshots = backends.snapshots.clone();
    Readiness::new()
        .check("event_store", move || {
            let store = store.clone();
            async move { store.ping().await.map_err(|err| err.to_string()) }
        })
        .check("snapshots", move || {
            let snapshots = snapshots.clone();
            async move { snapshots.ping().await.map_err(|err| err.to_string()) }
        })
}

/// Serves the write API on `listener` until `shutdown`.
pub async fn serve(
    settings: &Settings,
    backends: &kernel::wiring::Backends,
    listener: std::net::TcpListener,
    shutdown: web::server::Shutdown,
) -> std::io::Result<()> {
    let state = WriteState::new(backends.engine.clone(), settings);
    tokio::spawn(jobs::run_cleanup(
        state.clone(),
        settings.memento.cleanup_interval,
        shutdown.clone(),
    ));
    if settings.feed.backend == kernel::config::FeedBackend::Kafka {
        // The event store is the outbox: the relay publishes what this process commits.
        tokio::spawn(kernel::relay::run_from_settings(
            settings.clone(),
            backends.engine.clone(),
            shutdown.clone().wait(),
        ));
    }
    if settings.feed.backend == kernel::config::FeedBackend::Kafka {
        // Commands also arrive on Kafka, through the same route stack as HTTP.
        let commands = app(state.clone(), settings, readiness(backends));
        tokio::spawn(ingress::run(
            settings.kafka.clone(),
            commands,
            shutdown.clone().wait(),
        ));
    }
    // Queued and scheduled commands run from the store, so a restart loses none.
    tokio::spawn(command::run_dispatcher(state.clone(), shutdown.clone()));
    let app = app(state, settings, readiness(backends));
    web::server::run(listener, app, shutdown.wait()).await
}

/// The `write-api` process.
pub async fn main() -> std::process::ExitCode {
    web::server::process_main("write-api", |settings, shutdown| async move {
        let backends = kernel::wiring::connect_write_side(&settings)
            .await
            .map_err(|err| err.to_string())?;
        let listener =
            web::server::bind(&settings.write_api.addr()).map_err(|err| err.to_string())?;
        tracing::info!(addr = %settings.write_api.addr(), "write-api listening");
        serve(&settings, &backends, listener, shutdown)
            .await
            .map_err(|err| err.to_string())
    })
    .await
}
