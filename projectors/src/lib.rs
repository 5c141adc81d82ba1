//! Projection workers. The projections themselves are pure code in `kernel::domain`; this
//! crate assembles the set of them that a process runs (today: in-process, inside read-api
//! or `quintet up`).

pub mod replay;
pub mod worker;

use std::sync::Arc;

use kernel::domain::command::CommandProjection;
use kernel::domain::event_sourcing::EventSourcingProjection;
use kernel::domain::mediator::MediatorProjection;
use kernel::domain::memento::MementoProjection;
use kernel::domain::projection::Projection;
use kernel::domain::repository::RepositoryProjection;

/// Every projection Quintet has, by name.
pub fn all() -> Vec<Arc<dyn Projection>> {
    vec![
        Arc::new(MementoProjection),
        Arc::new(RepositoryProjection),
        Arc::new(EventSourcingProjection),
        Arc::new(MediatorProjection),
        Arc::new(CommandProjection),
    ]
}

/// The projection with this name.
pub fn by_name(name: &str) -> Option<Arc<dyn Projection>> {
    all()
        .into_iter()
        .find(|projection| projection.name() == name)
}
