//! Replay under load: blue/green rebuilds run while a writer keeps appending and the live
//! runner keeps applying; once the writer stops and the runner catches up, the live read
//! model equals a fresh replay, and the old generations are gone.

mod support;

use std::sync::Arc;
use std::time::Duration;

use kernel::domain::memento::projection::PROJECTION_NAME;
use kernel::domain::memento::MementoProjection;
use kernel::domain::projection::Projection;
use kernel::domain::DomainError;
use kernel::engine::Engine;
use kernel::ports::generation_key;
use kernel::projector::ProjectionRunner;
use kernel::replay::{replay, Phase, Rebuild};
use kernel::KernelError;
use support::rig;

const BACKLOG: usize = 300;
const LIVE: usize = 400;

fn memento() -> Arc<dyn Projection> {
    Arc::new(MementoProjection)
}

async fn replay_under_load(engine: Engine, test: &str) {
    let seed = rig::seed(test);
    let tag = format!("rp{}", rig::hex_id());
    rig::memento_workload(&engine, &format!("{tag}a"), BACKLOG, seed).await;

    let read_db = rig::fresh_read_store().await;
    let read = read_db.dyn_store();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let live = {
        let runner = ProjectionRunner::new(
            memento(),
            engine.clone(),
            read.clone(),
            rig::feed_settings(16),
        );
        let mut stopped = stopped.clone();
        tokio::spawn(runner.run(async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        }))
    };
    let writer = {
        let engine = engine.clone();
        let tag = format!("{tag}b");
        tokio::spawn(async move { rig::memento_workload(&engine, &tag, LIVE, seed + 1).await })
    };

    // Two rebuilds back to back while the writer writes: 0 -> 1 -> 2.
    let mut updates = 0;
    let first = replay(
        engine.clone(),
        read.clone(),
        memento(),
        rig::feed_settings(50),
        |progress| {
            assert!(progress.position <= progress.target);
            updates += 1;
        },
    )
    .await
    .expect("first rebuild");
    assert!(updates >= 1, "progress was reported");
    assert_eq!(first.generation, 1);
    assert!(first.events >= BACKLOG as u64, "{first}");
    eprintln!("{test}: {first} ({} swap retries)", first.swap_retries);
    let second = replay(
        engine.clone(),
        read.clone(),
        memento(),
        rig::feed_settings(50),
        |_| {},
    )
    .await
    .expect("second rebuild");
    assert_eq!(second.generation, 2);
    eprintln!("{test}: {second} ({} swap retries)", second.swap_retries);

    let written = writer.await.expect("writer");
    assert!(written >= LIVE);
    let head = engine.store().head_position().await.expect("head");
    rig::poll_until(
        Duration::from_secs(20),
        "the live runner catches up",
        || {
            let read = read.clone();
            async move {
                let at = read.checkpoint(PROJECTION_NAME).await.expect("checkpoint");
                (at >= head).then_some(())
            }
        },
    )
    .await;
    let _ = stop.send(true);
    live.await.expect("the live runner stops");

    let fresh = rig::fresh_read_store().await;
    rig::project_to_head(&engine, fresh.dyn_store()).await;
    let rebuilt = rig::dump(&*read, &MementoProjection).await;
    let clean = rig::dump(&*fresh.store, &MementoProjection).await;
    assert!(rebuilt.values().map(Vec::len).sum::<usize>() > 10);
    for (collection, docs) in &clean {
        assert_eq!(
            rebuilt.get(collection),
            Some(docs),
            "{collection} differs from a fresh replay (seed {seed})"
        );
    }
    assert_eq!(
        read.generation(PROJECTION_NAME).await.expect("generation"),
        2
    );
    for old in [0, 1] {
        assert_eq!(
            read.checkpoint(&generation_key(PROJECTION_NAME, old))
                .await
                .expect("checkpoint"),
            0,
            "generation {old} was dropped"
        );
    }
    let status = read
        .status(PROJECTION_NAME)
        .await
        .expect("status")
        .expect("a status document");
    assert_eq!(status["rebuild"]["state"], "done", "{status}");
    assert_eq!(status["rebuild"]["generation"], 2, "{status}");
}

fn sqlite_engine(db: &support::SqliteTestDb) -> Engine {
    rig::engine(
        db.store.clone(),
        Arc::new(kernel::adapters::memory::MemorySnapshotStore::new(1000)),
        rig::codec(db.store.clone(), true),
        10,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_replay_under_load_equals_a_fresh_replay() {
    let db = support::fresh_sqlite().await;
    replay_under_load(
        sqlite_engine(&db),
        "sqlite_replay_under_load_equals_a_fresh_replay",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_replay_under_load_equals_a_fresh_replay() {
    let db = support::fresh_mysql().await;
    let engine = rig::engine(
        db.store.clone(),
        Arc::new(kernel::adapters::memory::MemorySnapshotStore::new(1000)),
        rig::codec(db.store.clone(), true),
        10,
    );
    replay_under_load(engine, "mariadb_replay_under_load_equals_a_fresh_replay").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_rebuild_at_a_time_and_a_failed_one_leaves_the_live_copy() {
    let db = support::fresh_sqlite().await;
    let engine = sqlite_engine(&db);
    let tag = format!("rp{}", rig::hex_id());
    rig::memento_workload(&engine, &tag, 50, 7).await;
    let read_db = rig::fresh_read_store().await;
    let read = read_db.dyn_store();
    rig::project_to_head(&engine, read.clone()).await;
    let before = rig::dump(&*read, &MementoProjection).await;

    let rebuild = Rebuild::begin(
        engine.clone(),
        read.clone(),
        memento(),
        rig::feed_settings(50),
    )
    .await
    .expect("begin");
    assert_eq!(rebuild.generation(), 1);
    let second = Rebuild::begin(
        engine.clone(),
        read.clone(),
        memento(),
        rig::feed_settings(50),
    )
    .await;
    assert!(
        matches!(
            second,
            Err(KernelError::Rejected(DomainError::StateConflict(_)))
        ),
        "a second rebuild is refused while the first holds its lease: {second:?}"
    );
    let status = read
        .status(PROJECTION_NAME)
        .await
        .expect("status")
        .expect("doc");
    assert_eq!(status["rebuild"]["state"], "running");

    // Abandoning the shadow (what a failed rebuild does) leaves the live copy untouched.
    read.abandon_generation(PROJECTION_NAME, 1)
        .await
        .expect("abandon");
    assert_eq!(read.generation(PROJECTION_NAME).await.expect("gen"), 0);
    assert_eq!(rig::dump(&*read, &MementoProjection).await, before);
    let failed = rebuild.run(|_| {}).await;
    assert!(failed.is_err(), "its shadow is gone: {failed:?}");
    let status = read
        .status(PROJECTION_NAME)
        .await
        .expect("status")
        .expect("doc");
    assert_eq!(status["rebuild"]["state"], "failed", "{status}");

    // The next rebuild works and gives the same read model.
    let summary = replay(
        engine.clone(),
        read.clone(),
        memento(),
        rig::feed_settings(50),
        |progress| assert_ne!(progress.phase, Phase::Failed),
    )
    .await
    .expect("rebuild");
    assert_eq!(summary.generation, 1);
    assert_eq!(rig::dump(&*read, &MementoProjection).await, before);
}
