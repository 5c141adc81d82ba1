//! Guarantee 3 at kernel level: delivery is at least once and the effect exactly once, so a
//! read model always equals a fresh replay of the store, even when the projector dies at any
//! moment. The runner's task is aborted at random points (a crash as far as the runner can
//! tell: whatever it was awaiting is dropped), restarted from the stored checkpoint each time,
//! and finally left to finish; every document must then equal what one clean run produces.
//!
//! The last tests cancel single read-store applies and event-store appends at random points
//! in-process (what a paused projection, a timeout or a dropped HTTP request does) and check
//! that the store is still usable afterwards.

mod support;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use kernel::domain::memento::projection::{CARETAKERS, PROJECTION_NAME};
use kernel::domain::memento::{Caretaker, MementoProjection, CARETAKER};
use kernel::domain::projection::{Projection, SYSTEM_AGGREGATE};
use kernel::engine::Engine;
use kernel::envelope::RecordedEvent;
use kernel::ports::{EventStore, ReadStore};
use kernel::projector::ProjectionRunner;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use support::rig;

const EVENTS: usize = 200;

fn runner(engine: &Engine, read: Arc<dyn ReadStore>, batch: u32) -> ProjectionRunner {
    ProjectionRunner::new(
        Arc::new(MementoProjection),
        engine.clone(),
        read,
        rig::feed_settings(batch),
    )
}

/// How a killed runner comes back.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Restart {
    /// As after SIGKILL: the process and its connections are gone, the read store is opened
    /// again from its file.
    Process,
    /// In the same process, on the same read store (a paused, rebuilt or timed-out task).
    Task,
}

/// Kills the runner at least 12 times at random moments while a writer adds events, then lets
/// a last runner catch up, and compares the read model with a clean replay.
async fn crash_and_compare(engine: Engine, restart: Restart, test: &str) {
    let seed = rig::seed(test);
    let mut rng = StdRng::seed_from_u64(seed);
    let tag = format!("pc{}", rig::hex_id());

    // Half the events are a backlog; the other half arrive while the runner keeps dying.
    let backlog = rig::memento_workload(&engine, &format!("{tag}a"), EVENTS / 2, seed).await;
    let writer = {
        let engine = engine.clone();
        let tag = format!("{tag}b");
        tokio::spawn(
            async move { rig::memento_workload(&engine, &tag, EVENTS / 2, seed + 1).await },
        )
    };

    let mut read = rig::fresh_read_store().await;
    let mut crashes = 0;
    let mut checkpoints = Vec::new();
    while crashes < 12 || !writer.is_finished() {
        let task = tokio::spawn(
            runner(&engine, read.dyn_store(), rng.gen_range(1..=16)).run(std::future::pending()),
        );
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..40))).await;
        task.abort();
        assert!(
            task.await.expect_err("aborted").is_cancelled(),
            "the runner was killed, not finished"
        );
        crashes += 1;
        if restart == Restart::Process {
            read.reopen().await;
        }
        checkpoints.push(
            read.store
                .checkpoint(PROJECTION_NAME)
                .await
                .expect("checkpoint"),
        );
        assert!(crashes < 500, "the writer never finished");
    }
    let written = backlog + writer.await.expect("writer");
    assert!(written >= EVENTS);
    assert!(
        checkpoints.windows(2).all(|w| w[0] <= w[1]),
        "the checkpoint never moves back: {checkpoints:?}"
    );
    eprintln!("{test}: {written} events, {crashes} crashes, checkpoints {checkpoints:?}");

    rig::project_to_head(&engine, read.dyn_store()).await;
    let fresh = rig::fresh_read_store().await;
    rig::project_to_head(&engine, fresh.dyn_store()).await;

    let crashed = rig::dump(&*read.store, &MementoProjection).await;
    let clean = rig::dump(&*fresh.store, &MementoProjection).await;
    assert!(
        crashed.values().map(Vec::len).sum::<usize>() > 10,
        "the workload produced read models"
    );
    for (collection, docs) in &clean {
        assert_eq!(
            crashed.get(collection),
            Some(docs),
            "{collection} differs from a fresh replay (seed {seed})"
        );
    }
    assert_eq!(crashed, clean);
    assert_eq!(
        read.store
            .checkpoint(PROJECTION_NAME)
            .await
            .expect("checkpoint"),
        fresh
            .store
            .checkpoint(PROJECTION_NAME)
            .await
            .expect("checkpoint"),
    );
    assert_memento_counts(&engine, &*read.store).await;
}

/// Each caretaker's read-model `memento_count` equals the number of mementos its aggregate
/// holds.
async fn assert_memento_counts(engine: &Engine, read: &dyn ReadStore) {
    let caretakers = read
        .find(CARETAKERS, &Default::default())
        .await
        .expect("caretakers");
    assert!(!caretakers.items.is_empty());
    for doc in caretakers.items {
        let name = doc["name"].as_str().expect("name");
        let aggregate = engine
            .load::<Caretaker>(name)
            .await
            .expect("load caretaker");
        assert_eq!(
            doc["memento_count"].as_f64(),
            Some(aggregate.state.memento_count() as f64),
            "memento_count of {name}: {doc}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_read_model_survives_crashes_at_any_moment() {
    let db = support::fresh_sqlite().await;
    let snapshots = Arc::new(kernel::adapters::memory::MemorySnapshotStore::new(1000));
    let engine = rig::engine(
        db.store.clone(),
        snapshots,
        rig::codec(db.store.clone(), true),
        5,
    );
    crash_and_compare(
        engine,
        Restart::Process,
        "sqlite_read_model_survives_crashes_at_any_moment",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_read_model_survives_crashes_at_any_moment() {
    let db = support::fresh_mysql().await;
    let snapshots = Arc::new(kernel::adapters::memory::MemorySnapshotStore::new(1000));
    let engine = rig::engine(
        db.store.clone(),
        snapshots,
        rig::codec(db.store.clone(), true),
        5,
    );
    crash_and_compare(
        engine,
        Restart::Process,
        "mariadb_read_model_survives_crashes_at_any_moment",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_model_survives_runner_tasks_aborted_in_process() {
    let db = support::fresh_sqlite().await;
    let snapshots = Arc::new(kernel::adapters::memory::MemorySnapshotStore::new(1000));
    let engine = rig::engine(
        db.store.clone(),
        snapshots,
        rig::codec(db.store.clone(), true),
        5,
    );
    crash_and_compare(
        engine,
        Restart::Task,
        "read_model_survives_runner_tasks_aborted_in_process",
    )
    .await;
}

/// The events a runner would hand the projection: decoded, memento and system ones only.
async fn recorded(engine: &Engine) -> Vec<RecordedEvent> {
    let projection = MementoProjection;
    let stored = engine.store().read_all(0, 10_000).await.expect("read all");
    let mut out = Vec::new();
    for event in stored {
        if projection.handles(&event.aggregate_type) || event.aggregate_type == SYSTEM_AGGREGATE {
            out.push(engine.record(event).await.expect("record"));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn applying_a_batch_twice_counts_it_once() {
    let db = support::fresh_sqlite().await;
    let engine = rig::engine(
        db.store.clone(),
        Arc::new(kernel::adapters::memory::MemorySnapshotStore::new(100)),
        rig::codec(db.store.clone(), true),
        5,
    );
    let seed = rig::seed("applying_a_batch_twice_counts_it_once");
    rig::memento_workload(&engine, &format!("tw{}", rig::hex_id()), 120, seed).await;
    let events = recorded(&engine).await;
    let last = events.last().expect("events").position;
    let cut = events.len() / 2;
    let at_cut = events[cut - 1].position;

    let twice = rig::fresh_read_store().await;
    let runner_twice = runner(&engine, twice.dyn_store(), 100);
    // The first half twice, then everything (overlapping the first half) twice, then a
    // redelivered old batch after the checkpoint moved on.
    runner_twice
        .apply(&events[..cut], at_cut)
        .await
        .expect("apply");
    runner_twice
        .apply(&events[..cut], at_cut)
        .await
        .expect("again");
    runner_twice.apply(&events, last).await.expect("apply all");
    runner_twice.apply(&events, last).await.expect("all again");
    runner_twice
        .apply(&events[..cut], at_cut)
        .await
        .expect("old batch");

    let once = rig::fresh_read_store().await;
    runner(&engine, once.dyn_store(), 100)
        .apply(&events, last)
        .await
        .expect("apply once");

    assert_eq!(
        rig::dump(&*twice.store, &MementoProjection).await,
        rig::dump(&*once.store, &MementoProjection).await,
        "a redelivered batch changed the read model"
    );
    assert_eq!(
        twice
            .store
            .checkpoint(PROJECTION_NAME)
            .await
            .expect("checkpoint"),
        last,
        "an old batch does not move the checkpoint back"
    );
    assert_memento_counts(&engine, &*twice.store).await;

    // The per-aggregate versions are the last sequence of each aggregate.
    let mut expected: HashMap<String, u64> = HashMap::new();
    for e in &events {
        expected.insert(
            format!("{}/{}", e.aggregate_type, e.aggregate_id),
            e.sequence,
        );
    }
    let keys: Vec<String> = expected.keys().cloned().collect();
    let versions: HashMap<String, u64> = twice
        .store
        .versions(PROJECTION_NAME, &keys)
        .await
        .expect("versions")
        .into_iter()
        .collect();
    assert_eq!(versions, expected);
    assert!(keys.iter().any(|k| k.starts_with(CARETAKER)));
}

/// Starts `attempts` calls of `op`, each cancelled after a random few hundred microseconds
/// (spinning on yields: tokio's timer only has millisecond resolution), and after each one
/// checks that a call that is left alone still succeeds.
async fn cancel_at_random_points<F, Fut>(attempts: usize, seed: u64, op: F) -> Result<(), String>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = kernel::KernelResult<()>> + Send + 'static,
{
    let mut rng = StdRng::seed_from_u64(seed);
    for attempt in 0..attempts {
        let task = tokio::spawn(op(format!("cancelled-{attempt}")));
        let deadline = std::time::Instant::now() + Duration::from_micros(rng.gen_range(0..1500));
        while std::time::Instant::now() < deadline && !task.is_finished() {
            tokio::task::yield_now().await;
        }
        task.abort();
        let _ = task.await;
        match tokio::time::timeout(Duration::from_secs(6), op(format!("probe-{attempt}"))).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(format!("after {} cancellations: {err}", attempt + 1)),
            Err(_) => return Err(format!("after {} cancellations: timed out", attempt + 1)),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_apply_never_poisons_the_read_store() {
    let read = rig::fresh_read_store().await;
    let store = read.store.clone();
    let seed = rig::seed("a_cancelled_apply_never_poisons_the_read_store");
    let outcome = cancel_at_random_points(200, seed, move |id| {
        let store = store.clone();
        async move {
            let op = kernel::ports::DocOp::Upsert {
                collection: "c".to_string(),
                id,
                doc: serde_json::json!({ "x": 1 }),
            };
            store.apply("p", vec![op], vec![], 1).await
        }
    })
    .await;
    assert_eq!(outcome, Ok(()), "the read store stays usable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_append_never_poisons_the_sqlite_event_store() {
    let db = support::fresh_sqlite().await;
    let store = db.store.clone();
    let seed = rig::seed("a_cancelled_append_never_poisons_the_sqlite_event_store");
    let outcome = cancel_at_random_points(200, seed, move |id| {
        let store = store.clone();
        async move {
            match store.append(rig::raw_append(&id, 0)).await {
                // The cancelled append may have committed after all: that is fine.
                Ok(_) | Err(kernel::KernelError::Conflict { .. }) => Ok(()),
                Err(err) => Err(err),
            }
        }
    })
    .await;
    assert_eq!(outcome, Ok(()), "the event store stays writable");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_append_never_poisons_the_mariadb_event_store() {
    let db = support::fresh_mysql().await;
    let store = db.store.clone();
    let seed = rig::seed("a_cancelled_append_never_poisons_the_mariadb_event_store");
    let outcome = cancel_at_random_points(100, seed, move |id| {
        let store = store.clone();
        async move {
            match store.append(rig::raw_append(&id, 0)).await {
                Ok(_) | Err(kernel::KernelError::Conflict { .. }) => Ok(()),
                Err(err) => Err(err),
            }
        }
    })
    .await;
    assert_eq!(outcome, Ok(()), "the event store stays writable");
    // Every connection of the pool is still usable (a poisoned one would fail some of these).
    let appends: Vec<_> = (0..16)
        .map(|i| db.store.append(rig::raw_append(&format!("after-{i}"), 0)))
        .collect();
    for result in futures::future::join_all(appends).await {
        result.expect("append after the cancellations");
    }
}
