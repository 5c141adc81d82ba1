//! Engines, read stores, feeds and memento workloads for the kernel-level guarantee tests.
//!
//! Everything here is built the way `kernel::wiring` builds it, from the ports up, so a test
//! can swap one backend (a failing snapshot store, a store that misbehaves on cue) at a time.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use kernel::adapters::memory::MemorySnapshotStore;
use kernel::adapters::read_sqlite::SqliteReadStore;
use kernel::codec::{Codec, CodecSettings, MasterKey};
use kernel::config::FeedSettings;
use kernel::domain::memento::projection::PROJECTION_NAME;
use kernel::domain::memento::{
    Caretaker, CaretakerCommand, MementoPolicy, MementoProjection, Originator, OriginatorCommand,
    OriginatorKind,
};
use kernel::domain::projection::Projection;
use kernel::engine::Engine;
use kernel::envelope::{AppendBatch, CommandContext, Committed, NewEvent, StreamAppend};
use kernel::ports::{DocQuery, EventStore, KeyStore, ReadStore, SnapshotStore};
use kernel::projector::ProjectionRunner;
use kernel::{KernelError, KernelResult};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Map, Value};
use uuid::Uuid;

/// A short random hex string, for ids, prefixes and markers.
pub fn hex_id() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_string()
}

/// The Redis that tests use (`REDIS_URL`, default the local one).
pub fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

/// A key prefix of a test's own.
pub fn redis_prefix() -> String {
    format!("quintet_t_{}:", Uuid::new_v4().simple())
}

/// A codec with a fresh master key over `keys`; `encrypted: false` stores plain (zstd) JSON.
pub fn codec(keys: Arc<dyn KeyStore>, encrypted: bool) -> Arc<Codec> {
    let settings = CodecSettings {
        encryption_enabled: encrypted,
        ..CodecSettings::default()
    };
    Arc::new(Codec::new(keys, MasterKey::generate(), settings))
}

/// An engine over the given ports that snapshots every `every` events.
pub fn engine(
    store: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    codec: Arc<Codec>,
    every: u64,
) -> Engine {
    Engine::new(store, snapshots, codec, Arc::new(move |_: &str| every))
}

/// An engine that shares `base`'s event store and codec but has an empty snapshot store of
/// its own: its `load` is always a full replay.
pub fn replay_engine(base: &Engine) -> Engine {
    Engine::new(
        base.store().clone(),
        Arc::new(MemorySnapshotStore::new(16)),
        base.codec().clone(),
        Arc::new(|_: &str| u64::MAX),
    )
}

/// A snapshot store whose every call fails, like Redis being down.
#[derive(Debug, Default)]
pub struct FailingSnapshots;

#[async_trait]
impl SnapshotStore for FailingSnapshots {
    async fn get(&self, _key: &str) -> KernelResult<Option<Vec<u8>>> {
        Err(KernelError::storage("snapshot store is down"))
    }
    async fn put(&self, _key: &str, _bytes: Vec<u8>) -> KernelResult<()> {
        Err(KernelError::storage("snapshot store is down"))
    }
    async fn purge(&self, _prefix: &str) -> KernelResult<()> {
        Err(KernelError::storage("snapshot store is down"))
    }
    async fn ping(&self) -> KernelResult<()> {
        Err(KernelError::storage("snapshot store is down"))
    }
}

/// Feed settings for tests: fast polling, a short minimum gap wait, a long maximum one.
pub fn feed_settings(batch_size: u32) -> FeedSettings {
    FeedSettings {
        backend: kernel::config::FeedBackend::Embedded,
        poll_interval: Duration::from_millis(10),
        batch_size,
        gap_min_wait: Duration::from_millis(50),
        gap_max_wait: Duration::from_secs(60),
    }
}

/// Polls `check` every 10 ms until it returns `Some`, panicking with `what` after `timeout`.
pub async fn poll_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A migrated SQLite read store on a temp file of its own, removed on drop.
pub struct ReadTestDb {
    pub store: Arc<SqliteReadStore>,
    pub path: PathBuf,
}

impl ReadTestDb {
    pub fn dyn_store(&self) -> Arc<dyn ReadStore> {
        self.store.clone()
    }

    /// Closes the store and opens the file again, as a restarted process would.
    pub async fn reopen(&mut self) {
        self.store.close().await;
        let store = SqliteReadStore::connect(&self.path.display().to_string(), 2)
            .await
            .expect("reopen the read store");
        store.migrate().await.expect("migrate the read store");
        self.store = Arc::new(store);
    }
}

pub async fn fresh_read_store() -> ReadTestDb {
    let path = std::env::temp_dir().join(format!("quintet_t_read_{}.db", hex_id()));
    let store = SqliteReadStore::connect(&path.display().to_string(), 2)
        .await
        .expect("open the read store");
    store.migrate().await.expect("migrate the read store");
    ReadTestDb {
        store: Arc::new(store),
        path,
    }
}

impl Drop for ReadTestDb {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut file = self.path.clone().into_os_string();
            file.push(suffix);
            let _ = std::fs::remove_file(file);
        }
    }
}

/// Every document of every collection a projection owns, in id order.
pub async fn dump(
    read: &dyn ReadStore,
    projection: &dyn Projection,
) -> BTreeMap<String, Vec<Value>> {
    let mut all = BTreeMap::new();
    for collection in projection.collections() {
        let page = read
            .find(collection, &DocQuery::default())
            .await
            .expect("find every document");
        assert_eq!(page.items.len() as u64, page.total, "limit 0 returns all");
        all.insert(collection.to_string(), page.items);
    }
    all
}

/// Runs the memento projection from `read`'s checkpoint until it reaches the store's head,
/// then stops it.
pub async fn project_to_head(engine: &Engine, read: Arc<dyn ReadStore>) {
    let head = engine.store().head_position().await.expect("head");
    let runner = ProjectionRunner::new(
        Arc::new(MementoProjection),
        engine.clone(),
        read.clone(),
        feed_settings(50),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(runner.run(async move {
        let _ = stopped.await;
    }));
    poll_until(
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
    task.await.expect("runner stops cleanly");
}

/// One raw event row for feed tests (the feed never decodes payloads).
pub fn raw_append(aggregate_id: &str, expected_sequence: u64) -> AppendBatch {
    AppendBatch {
        streams: vec![StreamAppend {
            aggregate_type: "feedtest".to_string(),
            aggregate_id: aggregate_id.to_string(),
            expected_sequence,
            events: vec![NewEvent {
                event_id: Uuid::now_v7(),
                event_type: "ticked".to_string(),
                event_version: 1,
                payload: b"{}".to_vec(),
            }],
        }],
        correlation_id: Uuid::now_v7(),
        causation_id: None,
        actor: None,
        recorded_at: Utc::now(),
        idempotency: None,
        reservations: vec![],
        releases: vec![],
        new_keys: vec![],
    }
}

/// A fixed instant plus `secs` seconds: commands carry their own time.
pub fn at(secs: i64) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .single()
        .expect("valid date")
        + chrono::Duration::seconds(secs)
}

pub fn policy() -> MementoPolicy {
    MementoPolicy::default()
}

fn ctx() -> CommandContext {
    CommandContext {
        actor: Some("tester".to_string()),
        ..CommandContext::default()
    }
}

fn events_in(committed: &Committed) -> usize {
    committed.streams.iter().map(|s| s.event_ids.len()).sum()
}

pub async fn create_originator(
    engine: &Engine,
    id: &str,
    kind: OriginatorKind,
    state: Value,
) -> Committed {
    let id_owned = id.to_string();
    engine
        .execute::<Originator, _>(
            id,
            || OriginatorCommand::CreateOriginator {
                id: id_owned.clone(),
                kind,
                name: format!("originator {id_owned}"),
                state: Some(state.clone()),
                at: at(0),
            },
            &policy(),
            &ctx(),
        )
        .await
        .expect("create originator")
}

pub async fn set_state(engine: &Engine, id: &str, state: Value, secs: i64) -> Committed {
    engine
        .execute::<Originator, _>(
            id,
            || OriginatorCommand::SetState {
                state: state.clone(),
                expected_version: None,
                at: at(secs),
            },
            &policy(),
            &ctx(),
        )
        .await
        .expect("set state")
}

pub async fn create_caretaker(engine: &Engine, name: &str, max_age_secs: u64) -> Committed {
    let name_owned = name.to_string();
    engine
        .execute::<Caretaker, _>(
            name,
            || CaretakerCommand::CreateCaretaker {
                name: name_owned.clone(),
                max_mementos: Some(1000),
                max_memento_size: None,
                max_memento_age_secs: Some(max_age_secs),
                at: at(0),
            },
            &policy(),
            &ctx(),
        )
        .await
        .expect("create caretaker")
}

/// Saves the originator's current state as a memento in `caretaker`.
pub async fn capture(
    engine: &Engine,
    caretaker: &str,
    originator: &str,
    memento_id: &str,
    secs: i64,
) -> Committed {
    let loaded = engine
        .load::<Originator>(originator)
        .await
        .expect("load originator");
    let kind = loaded.state.kind().expect("originator exists");
    let state = loaded.state.state().clone();
    let mut metadata = Map::new();
    metadata.insert("captured_at".to_string(), json!(secs));
    engine
        .execute::<Caretaker, _>(
            caretaker,
            || CaretakerCommand::SaveMemento {
                memento_id: memento_id.to_string(),
                originator_id: originator.to_string(),
                kind,
                state: state.clone(),
                description: Some(format!("memento {memento_id}")),
                metadata: metadata.clone(),
                at: at(secs),
            },
            &policy(),
            &ctx(),
        )
        .await
        .expect("save memento")
}

/// Undo: marks the memento restored in its caretaker and restores it into its originator.
pub async fn restore(engine: &Engine, caretaker: &str, memento_id: &str, secs: i64) -> usize {
    let ct = engine
        .load::<Caretaker>(caretaker)
        .await
        .expect("load caretaker");
    let entry = ct
        .state
        .memento(memento_id)
        .expect("memento exists")
        .clone();
    let marked = engine
        .execute::<Caretaker, _>(
            caretaker,
            || CaretakerCommand::MarkRestored {
                memento_id: memento_id.to_string(),
                originator_id: entry.originator_id.clone(),
                at: at(secs),
            },
            &policy(),
            &ctx(),
        )
        .await
        .expect("mark restored");
    let restored = engine
        .execute::<Originator, _>(
            &entry.originator_id,
            || OriginatorCommand::RestoreFromMemento {
                caretaker: caretaker.to_string(),
                memento_id: memento_id.to_string(),
                memento_version: entry.version,
                kind: entry.kind,
                state: entry.state.clone(),
                checksum: entry.checksum.clone(),
                expected_version: None,
                at: at(secs),
            },
            &policy(),
            &ctx(),
        )
        .await
        .expect("restore");
    events_in(&marked) + events_in(&restored)
}

fn state_for(kind: OriginatorKind, step: u64, tag: &str) -> Value {
    match kind {
        OriginatorKind::Document => json!({ "content": format!("{tag} doc step {step}") }),
        OriginatorKind::File => {
            json!({ "content": format!("{tag} k={step}"), "path": format!("/etc/{tag}.conf") })
        }
        OriginatorKind::Database => json!({
            "table": "users",
            "records": (0..step % 4).map(|i| json!({"id": i, "tag": tag})).collect::<Vec<_>>(),
        }),
        OriginatorKind::Configuration => {
            json!({ "tag": tag, "level": step, "nested": { "odd": step % 2 == 1 } })
        }
    }
}

/// Writes a mixed memento workload of at least `min_events` events: originators of every kind,
/// state changes, mementos saved, deleted, restored and cleaned up. Returns the event count.
pub async fn memento_workload(engine: &Engine, tag: &str, min_events: usize, seed: u64) -> usize {
    let mut rng = StdRng::seed_from_u64(seed);
    let originators: Vec<(String, OriginatorKind)> = OriginatorKind::ALL
        .iter()
        .map(|kind| (format!("{tag}-o-{}", kind.as_str()), *kind))
        .collect();
    let caretakers: Vec<String> = (0..3).map(|i| format!("{tag}-ct-{i}")).collect();
    let mut events = 0;
    for (id, kind) in &originators {
        events += events_in(&create_originator(engine, id, *kind, state_for(*kind, 0, tag)).await);
    }
    for name in &caretakers {
        events += events_in(&create_caretaker(engine, name, 40).await);
    }
    let mut clock: i64 = 1;
    let mut next_memento = 0;
    while events < min_events {
        clock += 1;
        let (originator, kind) = &originators[rng.gen_range(0..originators.len())];
        let caretaker = &caretakers[rng.gen_range(0..caretakers.len())];
        match rng.gen_range(0..10) {
            0..=3 => {
                let state = state_for(*kind, clock as u64, tag);
                events += events_in(&set_state(engine, originator, state, clock).await);
            }
            4..=6 => {
                next_memento += 1;
                let id = format!("m{next_memento}");
                events += events_in(&capture(engine, caretaker, originator, &id, clock).await);
            }
            7 | 8 => {
                let ct = engine.load::<Caretaker>(caretaker).await.expect("load");
                let ids: Vec<String> = ct.state.mementos().map(|m| m.memento_id.clone()).collect();
                if ids.is_empty() {
                    continue;
                }
                let id = ids[rng.gen_range(0..ids.len())].clone();
                if rng.gen_bool(0.5) {
                    events += restore(engine, caretaker, &id, clock).await;
                } else {
                    let committed = engine
                        .execute::<Caretaker, _>(
                            caretaker,
                            || CaretakerCommand::DeleteMemento {
                                memento_id: id.clone(),
                                at: at(clock),
                            },
                            &policy(),
                            &ctx(),
                        )
                        .await
                        .expect("delete memento");
                    events += events_in(&committed);
                }
            }
            _ => {
                let committed = engine
                    .execute::<Caretaker, _>(
                        caretaker,
                        || CaretakerCommand::Cleanup { now: at(clock) },
                        &policy(),
                        &ctx(),
                    )
                    .await
                    .expect("cleanup");
                events += events_in(&committed);
            }
        }
    }
    events
}

/// The seed for a randomized test: `QUINTET_TEST_SEED` if set, else random (printed, so a
/// failure can be replayed).
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("QUINTET_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("{test}: QUINTET_TEST_SEED={seed}");
    seed
}
