//! Ordered parking: an event a projection cannot apply parks itself and every later event of
//! its aggregate, while other aggregates keep flowing and the checkpoint keeps moving; a retry
//! after the fix applies the parked events in order, and the read model ends up equal to a
//! fresh replay.
//!
//! The projection under test is the memento projection wrapped so that it fails on events
//! whose payload carries a `poison` marker that is still "broken" (a test-only bug switch).

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use kernel::domain::memento::projection::{ORIGINATORS, PROJECTION_NAME};
use kernel::domain::memento::{MementoProjection, OriginatorKind};
use kernel::domain::projection::{Projection, ProjectionError};
use kernel::engine::Engine;
use kernel::envelope::RecordedEvent;
use kernel::ports::{DocOp, ParkedEvent, ReadStore};
use kernel::projector::{retry_parked, ProjectionRunner};
use parking_lot::Mutex;
use serde_json::{json, Value};
use support::rig;

/// The memento projection, failing on events whose payload has `"poison": "<marker>"` while
/// the marker is in `broken`.
struct Flaky {
    inner: MementoProjection,
    broken: Mutex<HashSet<String>>,
}

impl Flaky {
    fn new(broken: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            inner: MementoProjection,
            broken: Mutex::new(broken.iter().map(|m| m.to_string()).collect()),
        })
    }

    fn fix(&self, marker: &str) {
        self.broken.lock().remove(marker);
    }
}

impl Projection for Flaky {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn collections(&self) -> &'static [&'static str] {
        self.inner.collections()
    }
    fn handles(&self, aggregate_type: &str) -> bool {
        self.inner.handles(aggregate_type)
    }
    fn project(&self, event: &RecordedEvent) -> Result<Vec<DocOp>, ProjectionError> {
        let text = event
            .data
            .as_ref()
            .map(Value::to_string)
            .unwrap_or_default();
        for marker in self.broken.lock().iter() {
            if text.contains(&format!("\"poison\":\"{marker}\"")) {
                return Err(ProjectionError {
                    projection: PROJECTION_NAME.into(),
                    event_type: event.event_type.clone(),
                    position: event.position,
                    reason: format!("poisoned by {marker}"),
                });
            }
        }
        self.inner.project(event)
    }
}

struct Rig {
    engine: Engine,
    _db: support::SqliteTestDb,
}

async fn rig() -> Rig {
    let db = support::fresh_sqlite().await;
    let snapshots = Arc::new(kernel::adapters::memory::MemorySnapshotStore::new(100));
    let engine = rig::engine(
        db.store.clone(),
        snapshots,
        rig::codec(db.store.clone(), true),
        1000,
    );
    Rig { engine, _db: db }
}

/// Runs `projection` from the read store's checkpoint to the event store's head, then stops.
async fn run_to_head(engine: &Engine, read: Arc<dyn ReadStore>, projection: Arc<dyn Projection>) {
    let head = engine.store().head_position().await.expect("head");
    let runner = ProjectionRunner::new(
        projection,
        engine.clone(),
        read.clone(),
        rig::feed_settings(7),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    rig::poll_until(
        Duration::from_secs(10),
        "projection reaches the head",
        || {
            let read = read.clone();
            async move {
                let at = read.checkpoint(PROJECTION_NAME).await.expect("checkpoint");
                (at >= head).then_some(())
            }
        },
    )
    .await;
    let _ = stop.send(());
    task.await.expect("runner stops");
}

/// Every event in the store, in position order.
async fn all_events(engine: &Engine) -> Vec<kernel::envelope::StoredEvent> {
    let mut events = Vec::new();
    loop {
        let after = events
            .last()
            .map_or(0, |e: &kernel::envelope::StoredEvent| e.position);
        let batch = engine.store().read_all(after, 500).await.expect("read_all");
        if batch.is_empty() {
            return events;
        }
        events.extend(batch);
    }
}

fn doc(content: &str, poison: Option<&str>) -> Value {
    match poison {
        Some(marker) => json!({ "content": content, "poison": marker }),
        None => json!({ "content": content }),
    }
}

async fn parked(read: &dyn ReadStore) -> Vec<ParkedEvent> {
    let page = read.parked(PROJECTION_NAME, 0, 0).await.expect("parked");
    assert_eq!(page.total as usize, page.items.len());
    page.items
}

fn sequences_of(parked: &[ParkedEvent], key: &str) -> Vec<u64> {
    parked
        .iter()
        .filter(|p| p.aggregate_key == key)
        .map(|p| p.sequence)
        .collect()
}

async fn originator(read: &dyn ReadStore, id: &str) -> Value {
    read.get(ORIGINATORS, id)
        .await
        .expect("get")
        .unwrap_or_else(|| panic!("originator {id} is in the read model"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_parks_its_aggregate_only_and_a_retry_applies_in_order() {
    let rig = rig().await;
    let engine = &rig.engine;
    let read_db = rig::fresh_read_store().await;
    let read = read_db.dyn_store();
    let flaky = Flaky::new(&["p1", "p2"]);
    let tag = rig::hex_id();
    let (bad, good1, good2) = (
        format!("{tag}-bad"),
        format!("{tag}-good1"),
        format!("{tag}-good2"),
    );
    let key = format!("originator/{bad}");

    for id in [&bad, &good1, &good2] {
        rig::create_originator(engine, id, OriginatorKind::Document, doc("v1", None)).await;
    }
    // bad: 2 is poisoned (p1), 3 is fine, 4 is poisoned (p2), 5 is fine; the others flow.
    rig::set_state(engine, &bad, doc("v2", Some("p1")), 2).await;
    rig::set_state(engine, &good1, doc("v2", None), 2).await;
    rig::set_state(engine, &bad, doc("v3", None), 3).await;
    rig::set_state(engine, &good2, doc("v2", None), 3).await;
    rig::set_state(engine, &bad, doc("v4", Some("p2")), 4).await;
    rig::set_state(engine, &good1, doc("v3", None), 4).await;

    run_to_head(engine, read.clone(), flaky.clone()).await;
    let head = engine.store().head_position().await.expect("head");
    assert_eq!(
        read.checkpoint(PROJECTION_NAME).await.expect("checkpoint"),
        head,
        "the checkpoint moves past parked events"
    );
    let first = parked(&*read).await;
    assert_eq!(sequences_of(&first, &key), vec![2, 3, 4], "parked in order");
    assert_eq!(first.len(), 3, "only the poisoned aggregate is parked");
    assert!(first[0].error.contains("poisoned by p1"), "{first:?}");
    assert!(
        first[1].error.contains("held back"),
        "a later event waits behind the first parked one, even if it would apply: {first:?}"
    );
    assert!(first.windows(2).all(|w| w[0].position < w[1].position));
    assert_eq!(first[0].envelope["aggregate_id"], json!(bad));
    assert!(
        first[0].envelope.get("data").is_none(),
        "parked entries keep no payload"
    );
    assert_eq!(originator(&*read, &bad).await["version"], json!(1));
    assert_eq!(originator(&*read, &good1).await["version"], json!(3));
    assert_eq!(originator(&*read, &good2).await["version"], json!(2));

    // Redelivery (every event again, twice) changes nothing.
    let everything = all_events(engine).await;
    let again = ProjectionRunner::new(
        flaky.clone(),
        engine.clone(),
        read.clone(),
        rig::feed_settings(7),
    );
    for _ in 0..2 {
        let report = again
            .apply_stored(everything.clone())
            .await
            .expect("redelivery");
        assert_eq!((report.applied, report.parked), (0, 0), "{report:?}");
    }
    assert_eq!(parked(&*read).await, first);

    // A later event of the parked aggregate parks too; others still flow.
    rig::set_state(engine, &bad, doc("v5", None), 5).await;
    rig::set_state(engine, &good2, doc("v3", None), 5).await;
    run_to_head(engine, read.clone(), flaky.clone()).await;
    assert_eq!(sequences_of(&parked(&*read).await, &key), vec![2, 3, 4, 5]);
    assert_eq!(originator(&*read, &good2).await["version"], json!(3));

    // Fix p1 only: the retry applies 2 and 3, and 4 still fails: it keeps its error and 5
    // stays behind it.
    flaky.fix("p1");
    let any_id = parked(&*read).await[2].id.clone();
    let report = retry_parked(engine, &*read, &*flaky, &any_id)
        .await
        .expect("retry")
        .expect("the id is parked");
    assert_eq!((report.applied, report.still_parked), (2, 2));
    let left = parked(&*read).await;
    assert_eq!(sequences_of(&left, &key), vec![4, 5]);
    assert!(left[0].error.contains("poisoned by p2"), "{left:?}");
    assert_eq!(originator(&*read, &bad).await["version"], json!(3));

    // Fix p2: everything applies, in order, and the aggregate flows again.
    flaky.fix("p2");
    let report = retry_parked(engine, &*read, &*flaky, &left[1].id)
        .await
        .expect("retry")
        .expect("the id is parked");
    assert_eq!((report.applied, report.still_parked), (2, 0));
    assert!(parked(&*read).await.is_empty());
    assert_eq!(
        retry_parked(engine, &*read, &*flaky, &left[1].id)
            .await
            .expect("retry"),
        None,
        "an un-parked id is gone"
    );
    rig::set_state(engine, &bad, doc("v6", None), 6).await;
    run_to_head(engine, read.clone(), flaky.clone()).await;
    assert!(parked(&*read).await.is_empty());
    assert_eq!(originator(&*read, &bad).await["version"], json!(6));

    // The result equals a fresh replay with the fixed projection.
    let fresh = rig::fresh_read_store().await;
    rig::project_to_head(engine, fresh.dyn_store()).await;
    assert_eq!(
        rig::dump(&*read, &MementoProjection).await,
        rig::dump(&*fresh.store, &MementoProjection).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parking_is_decided_inside_the_apply_for_concurrent_deliveries() {
    let rig = rig().await;
    let engine = &rig.engine;
    let read_db = rig::fresh_read_store().await;
    let read = read_db.dyn_store();
    let flaky = Flaky::new(&["boom"]);
    let tag = rig::hex_id();
    for i in 0..4 {
        let id = format!("{tag}-{i}");
        rig::create_originator(engine, &id, OriginatorKind::Document, doc("v1", None)).await;
        let poison = (i == 2).then_some("boom");
        rig::set_state(engine, &id, doc("v2", poison), 2).await;
        rig::set_state(engine, &id, doc("v3", None), 3).await;
    }
    let events = all_events(engine).await;
    let runner = |batch: usize| {
        let runner = ProjectionRunner::new(
            flaky.clone(),
            engine.clone(),
            read.clone(),
            rig::feed_settings(batch as u32),
        );
        let events = events.clone();
        async move {
            for chunk in events.chunks(batch) {
                runner.apply_stored(chunk.to_vec()).await.expect("apply");
            }
        }
    };
    // Two appliers deliver the same events concurrently, in different batch sizes.
    tokio::join!(runner(1), runner(5));
    let all = parked(&*read).await;
    assert_eq!(
        sequences_of(&all, &format!("originator/{tag}-2")),
        vec![2, 3]
    );
    assert_eq!(all.len(), 2);
    for i in [0, 1, 3] {
        assert_eq!(
            originator(&*read, &format!("{tag}-{i}")).await["version"],
            json!(3)
        );
    }
    assert_eq!(
        read.checkpoint(PROJECTION_NAME).await.expect("checkpoint"),
        events.last().expect("events").position
    );
}
