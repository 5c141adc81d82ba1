//! Snapshots are disposable (the contract's snapshot rules, and guarantee 5 on the snapshot
//! side): whatever sits under a snapshot key — garbage, another aggregate's envelope, a stale
//! one, one from the future or a forked history, nothing at all — `load` returns exactly what a
//! full replay returns, and never an error. A snapshot store that is down never fails a command.
//!
//! Each scenario runs on the in-process snapshot store over SQLite and on Redis over MariaDB,
//! with the payload codec encrypting and not (so the envelope checks are tested on their own,
//! not only through AES-GCM's associated data). Corruptions are written straight into Redis
//! with the redis crate, and into the in-process store through `put`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kernel::adapters::memory::MemorySnapshotStore;
use kernel::adapters::redis::RedisSnapshotStore;
use kernel::domain::memento::{Caretaker, Originator, OriginatorKind, CARETAKER, ORIGINATOR};
use kernel::domain::EventSourced;
use kernel::engine::{snapshot_key, state_fingerprint, Engine};
use kernel::ports::{EventStore, KeyStore, SnapshotStore};
use parking_lot::Mutex;
use rand::RngCore;
use serde_json::json;
use support::rig::{self, FailingSnapshots};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

const EVERY: u64 = 3;

#[derive(Clone, Copy, Debug)]
enum Backend {
    /// `MemorySnapshotStore` over a SQLite event store.
    Memory,
    /// `RedisSnapshotStore` over a MariaDB event store.
    Redis,
}

/// Keeps a test database alive for the test's duration.
#[allow(dead_code)]
enum Db {
    Sqlite(support::SqliteTestDb),
    MySql(support::MySqlTestDb),
}

impl Db {
    async fn fresh(backend: Backend) -> (Db, Arc<dyn EventStore>, Arc<dyn KeyStore>) {
        match backend {
            Backend::Memory => {
                let db = support::fresh_sqlite().await;
                let (store, keys) = (db.store.clone(), db.store.clone());
                (Db::Sqlite(db), store, keys)
            }
            Backend::Redis => {
                let db = support::fresh_mysql().await;
                let (store, keys) = (db.store.clone(), db.store.clone());
                (Db::MySql(db), store, keys)
            }
        }
    }
}

/// Direct access to what the snapshot store holds, bypassing the engine.
enum Raw {
    Memory(Arc<MemorySnapshotStore>),
    Redis {
        conn: redis::aio::MultiplexedConnection,
        prefix: String,
    },
}

impl Raw {
    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match self {
            Raw::Memory(store) => store.get(key).await.expect("memory get"),
            Raw::Redis { conn, prefix } => redis::cmd("GET")
                .arg(format!("{prefix}{key}"))
                .query_async(&mut conn.clone())
                .await
                .expect("redis GET"),
        }
    }

    async fn set(&self, key: &str, bytes: &[u8]) {
        match self {
            Raw::Memory(store) => store.put(key, bytes.to_vec()).await.expect("memory put"),
            Raw::Redis { conn, prefix } => redis::cmd("SET")
                .arg(format!("{prefix}{key}"))
                .arg(bytes)
                .query_async::<()>(&mut conn.clone())
                .await
                .expect("redis SET"),
        }
    }

    /// Deletes every snapshot (a flushed or restarted-empty Redis).
    async fn flush(&self) {
        match self {
            Raw::Memory(store) => store.purge("").await.expect("memory purge"),
            Raw::Redis { conn, prefix } => {
                let mut conn = conn.clone();
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{prefix}*"))
                    .query_async(&mut conn)
                    .await
                    .expect("redis KEYS");
                if !keys.is_empty() {
                    redis::cmd("DEL")
                        .arg(keys)
                        .query_async::<()>(&mut conn)
                        .await
                        .expect("redis DEL");
                }
            }
        }
    }
}

struct Rig {
    engine: Engine,
    raw: Raw,
    backend: Backend,
    _db: Db,
}

async fn rig(backend: Backend, encrypted: bool) -> Rig {
    let (db, store, keys) = Db::fresh(backend).await;
    let (snapshots, raw): (Arc<dyn SnapshotStore>, Raw) = match backend {
        Backend::Memory => {
            let store = Arc::new(MemorySnapshotStore::new(1000));
            (store.clone(), Raw::Memory(store))
        }
        Backend::Redis => {
            let prefix = rig::redis_prefix();
            let store = RedisSnapshotStore::connect(&rig::redis_url(), &prefix)
                .await
                .expect("connect Redis");
            let conn = redis::Client::open(rig::redis_url())
                .expect("redis url")
                .get_multiplexed_async_connection()
                .await
                .expect("raw Redis connection");
            (Arc::new(store), Raw::Redis { conn, prefix })
        }
    };
    Rig {
        engine: rig::engine(store, snapshots, rig::codec(keys, encrypted), EVERY),
        raw,
        backend,
        _db: db,
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        // Leave no keys behind in the shared Redis.
        if let Raw::Redis { prefix, .. } = &self.raw {
            if let Ok(client) = redis::Client::open(rig::redis_url()) {
                if let Ok(mut conn) = client.get_connection() {
                    let keys: Vec<String> = redis::cmd("KEYS")
                        .arg(format!("{prefix}*"))
                        .query(&mut conn)
                        .unwrap_or_default();
                    if !keys.is_empty() {
                        let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut conn);
                    }
                }
            }
        }
    }
}

fn originator_key(id: &str) -> String {
    snapshot_key(ORIGINATOR, id, &state_fingerprint::<Originator>())
}

fn doc(tag: &str, step: u64) -> serde_json::Value {
    json!({ "content": format!("{tag}: step {step} of the document") })
}

/// Drives an originator from event `from` to event `to` (a create, then state changes).
async fn drive(engine: &Engine, id: &str, from: u64, to: u64) {
    drive_tagged(engine, id, "main", from, to).await;
}

async fn drive_tagged(engine: &Engine, id: &str, tag: &str, from: u64, to: u64) {
    for step in from..=to {
        if step == 1 {
            rig::create_originator(engine, id, OriginatorKind::Document, doc(tag, 1)).await;
        } else {
            rig::set_state(engine, id, doc(tag, step), step as i64).await;
        }
    }
}

/// Loads `id` through the engine (snapshots allowed) and through a full replay and asserts the
/// two agree on state, sequence and last event. Returns whether the snapshot was used.
async fn assert_equals_replay<A: EventSourced>(engine: &Engine, id: &str, case: &str) -> bool {
    let loaded = match engine.load::<A>(id).await {
        Ok(loaded) => loaded,
        Err(err) => panic!("{case}: load failed instead of replaying: {err}"),
    };
    let replay = rig::replay_engine(engine)
        .load::<A>(id)
        .await
        .expect("full replay");
    assert!(!replay.from_snapshot, "the replay engine has no snapshots");
    assert_eq!(
        serde_json::to_value(&loaded.state).expect("state json"),
        serde_json::to_value(&replay.state).expect("state json"),
        "{case}: state differs from a full replay"
    );
    assert_eq!(loaded.sequence, replay.sequence, "{case}: sequence");
    assert_eq!(
        loaded.last_event_id, replay.last_event_id,
        "{case}: last event id"
    );
    loaded.from_snapshot
}

/// The whole rule set on one backend and codec setting.
async fn snapshot_rules(backend: Backend, encrypted: bool) {
    let rig = rig(backend, encrypted).await;
    let engine = &rig.engine;
    let id = format!("snap-{}", rig::hex_id());
    let key = originator_key(&id);

    // Stale: the snapshot taken at sequence 3, kept aside.
    drive(engine, &id, 1, 3).await;
    let stale = rig.raw.get(&key).await.expect("a snapshot at sequence 3");
    drive(engine, &id, 4, 10).await;

    // The snapshot (taken at 9) exists under `snapshot_key` and load uses it.
    let current = rig
        .raw
        .get(&key)
        .await
        .expect("a snapshot under snapshot_key");
    assert_ne!(current, stale, "a newer snapshot replaced the one at 3");
    assert!(
        assert_equals_replay::<Originator>(engine, &id, "valid snapshot").await,
        "load used the snapshot"
    );
    let loaded = engine.load::<Originator>(&id).await.expect("load");
    assert_eq!(loaded.sequence, 10);
    assert_eq!(loaded.state.version(), 10);

    // Garbage of assorted sizes, and the valid snapshot truncated.
    let mut rng = rand::thread_rng();
    for len in [0usize, 1, 2, 7, 33, 64, 300, 4096, 70_000] {
        let mut garbage = vec![0u8; len];
        rng.fill_bytes(&mut garbage);
        rig.raw.set(&key, &garbage).await;
        assert!(
            !assert_equals_replay::<Originator>(engine, &id, &format!("{len} random bytes")).await
        );
    }
    for cut in [1, current.len() / 2, current.len() - 1] {
        rig.raw.set(&key, &current[..cut]).await;
        assert!(
            !assert_equals_replay::<Originator>(engine, &id, &format!("truncated to {cut}")).await
        );
    }
    // Every single corrupted byte of the valid snapshot: rejected, never trusted.
    for i in 0..current.len() {
        let mut flipped = current.clone();
        flipped[i] ^= 0x55;
        rig.raw.set(&key, &flipped).await;
        assert_equals_replay::<Originator>(engine, &id, &format!("byte {i} flipped")).await;
    }

    // A valid envelope of another originator, and one of a caretaker, copied over.
    let other = format!("other-{}", rig::hex_id());
    drive(engine, &other, 1, 6).await;
    let foreign = rig
        .raw
        .get(&originator_key(&other))
        .await
        .expect("the other originator's snapshot");
    rig.raw.set(&key, &foreign).await;
    assert!(
        !assert_equals_replay::<Originator>(engine, &id, "another originator's snapshot").await
    );
    rig::create_caretaker(engine, &id, 3600).await;
    rig::capture(engine, &id, &id, "m1", 20).await;
    rig::capture(engine, &id, &id, "m2", 21).await;
    let caretaker_key = snapshot_key(CARETAKER, &id, &state_fingerprint::<Caretaker>());
    let caretaker_snapshot = rig
        .raw
        .get(&caretaker_key)
        .await
        .expect("the caretaker's snapshot");
    rig.raw.set(&key, &caretaker_snapshot).await;
    assert!(!assert_equals_replay::<Originator>(engine, &id, "a caretaker's snapshot").await);
    // And the other way round: the originator's snapshot under the caretaker's key.
    rig.raw.set(&caretaker_key, &current).await;
    assert!(!assert_equals_replay::<Caretaker>(engine, &id, "an originator's snapshot").await);

    // Stale: written back after more events; it is consistent, so using it must still give
    // the current state.
    rig.raw.set(&key, &stale).await;
    assert_equals_replay::<Originator>(engine, &id, "stale snapshot").await;

    // From the future, and from a forked history: snapshots of the same aggregate id taken
    // on a second database (sharing the codec, so they decrypt) that has more events, or as
    // many but other ones.
    let (_second_db, second_store, _) = Db::fresh(backend).await;
    let second_snapshots = Arc::new(MemorySnapshotStore::new(100));
    let second = Engine::new(
        second_store,
        second_snapshots.clone(),
        engine.codec().clone(),
        Arc::new(|_: &str| EVERY),
    );
    drive_tagged(&second, &id, "fork", 1, 10).await;
    assert_eq!(
        second
            .snapshot_now::<Originator>(&id)
            .await
            .expect("snapshot"),
        10
    );
    let forked = second_snapshots
        .get(&key)
        .await
        .expect("get")
        .expect("forked");
    rig.raw.set(&key, &forked).await;
    assert!(!assert_equals_replay::<Originator>(engine, &id, "forked history").await);
    drive_tagged(&second, &id, "fork", 11, 13).await;
    assert_eq!(
        second
            .snapshot_now::<Originator>(&id)
            .await
            .expect("snapshot"),
        13
    );
    let future = second_snapshots
        .get(&key)
        .await
        .expect("get")
        .expect("future");
    rig.raw.set(&key, &future).await;
    assert!(!assert_equals_replay::<Originator>(engine, &id, "snapshot from the future").await);

    // Flushed: nothing under the key.
    rig.raw.flush().await;
    assert!(rig.raw.get(&key).await.is_none());
    assert!(!assert_equals_replay::<Originator>(engine, &id, "flushed store").await);

    // Commands still commit on top of any of this, and the next boundary writes a good
    // snapshot again (10 -> 12 crosses 12).
    rig.raw.set(&key, b"garbage").await;
    drive(engine, &id, 11, 12).await;
    assert!(
        assert_equals_replay::<Originator>(engine, &id, "rewritten after corruption").await,
        "the snapshot at 12 ({:?}) is used again",
        rig.backend
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_snapshots_never_change_what_load_returns() {
    snapshot_rules(Backend::Memory, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_snapshots_unencrypted_never_change_what_load_returns() {
    snapshot_rules(Backend::Memory, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_snapshots_never_change_what_load_returns() {
    snapshot_rules(Backend::Redis, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_snapshots_unencrypted_never_change_what_load_returns() {
    snapshot_rules(Backend::Redis, false).await;
}

/// Commits and loads on an engine whose snapshot store fails every call.
async fn commands_survive(engine: &Engine, id: &str, from: u64, to: u64) {
    let started = Instant::now();
    drive(engine, id, from, to).await;
    let loaded = engine.load::<Originator>(id).await.expect("load");
    assert_eq!(loaded.sequence, to);
    assert!(!loaded.from_snapshot);
    assert_equals_replay::<Originator>(engine, id, "snapshot store down").await;
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "a dead snapshot store slowed commands down: {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_snapshot_store_never_fails_a_command() {
    let db = support::fresh_mysql().await;
    // Redis on a port nobody listens on fails fast; the engine is then wired to a store
    // whose every call errors, which is what a Redis adapter that lost its server returns.
    let started = Instant::now();
    assert!(
        RedisSnapshotStore::connect("redis://127.0.0.1:1", "x:")
            .await
            .is_err(),
        "nothing listens on port 1"
    );
    assert!(started.elapsed() < Duration::from_secs(4));
    let engine = rig::engine(
        db.store.clone(),
        Arc::new(FailingSnapshots),
        rig::codec(db.store.clone(), true),
        1,
    );
    let id = format!("down-{}", rig::hex_id());
    commands_survive(&engine, &id, 1, 10).await;
    assert_eq!(
        db.store
            .stream_sequence(ORIGINATOR, &id)
            .await
            .expect("seq"),
        10
    );
}

/// A TCP proxy in front of Redis that can be killed, so a connected `RedisSnapshotStore`
/// loses its server mid-test.
struct Proxy {
    url: String,
    tasks: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: &'static str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let tasks: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let spawned = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let handle = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                spawned.lock().push(handle);
            }
        });
        Proxy {
            url: format!("redis://127.0.0.1:{port}"),
            tasks,
            accept,
        }
    }

    /// Closes the listener and every proxied connection.
    fn kill(&self) {
        self.accept.abort();
        for task in self.tasks.lock().drain(..) {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_going_down_never_fails_a_command() {
    let db = support::fresh_mysql().await;
    let proxy = Proxy::start("127.0.0.1:6379").await;
    let prefix = rig::redis_prefix();
    let snapshots = RedisSnapshotStore::connect(&proxy.url, &prefix)
        .await
        .expect("Redis through the proxy");
    let engine = rig::engine(
        db.store.clone(),
        Arc::new(snapshots.clone()),
        rig::codec(db.store.clone(), true),
        EVERY,
    );
    let id = format!("redis-down-{}", rig::hex_id());
    drive(&engine, &id, 1, 4).await;
    assert!(
        snapshots
            .get(&originator_key(&id))
            .await
            .expect("get")
            .is_some(),
        "a snapshot at 3 went through the proxy"
    );
    assert!(
        engine
            .load::<Originator>(&id)
            .await
            .expect("load")
            .from_snapshot
    );

    proxy.kill();
    commands_survive(&engine, &id, 5, 12).await;
    assert_eq!(
        db.store
            .stream_sequence(ORIGINATOR, &id)
            .await
            .expect("seq"),
        12
    );

    // Clean up the snapshot written before the proxy died.
    let direct = RedisSnapshotStore::connect(&rig::redis_url(), &prefix)
        .await
        .expect("direct Redis");
    direct.purge("").await.expect("purge");
}
