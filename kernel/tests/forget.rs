//! Crypto-shredding across every copy: `Engine::forget` deletes a data subject's keys, so its
//! aggregates no longer load (`KernelError::Forgotten`), its stored payloads no longer decode,
//! its snapshots are purged, and the read models — the live one and any fresh replay — hold
//! tombstones and no plaintext of it anywhere. Other aggregates are untouched.
//!
//! Runs on SQLite with in-process snapshots, and on MariaDB with Redis snapshots.

mod support;

use std::sync::Arc;

use kernel::adapters::memory::MemorySnapshotStore;
use kernel::adapters::redis::RedisSnapshotStore;
use kernel::codec::{self, Aad, Codec, CodecSettings, MasterKey};
use kernel::domain::memento::projection::{CARETAKERS, HISTORY, MEMENTOS, ORIGINATORS};
use kernel::domain::memento::{
    Caretaker, MementoProjection, Originator, OriginatorCommand, OriginatorKind, CARETAKER,
    ORIGINATOR,
};
use kernel::domain::projection::{AGGREGATE_FORGOTTEN, SYSTEM_AGGREGATE};
use kernel::engine::{snapshot_key, state_fingerprint, Engine};
use kernel::envelope::CommandContext;
use kernel::ports::{EventStore, KeyStore, ReadStore, SnapshotStore};
use kernel::KernelError;
use serde_json::{json, Value};
use support::rig;

/// Keeps the backends of one run alive.
#[allow(dead_code)]
enum Db {
    Sqlite(support::SqliteTestDb),
    MySql(support::MySqlTestDb, RedisSnapshotStore),
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Db::MySql(_, redis) = self {
            // Leave nothing in the shared Redis, on a runtime of our own (drop is sync).
            let redis = redis.clone();
            let _ = std::thread::spawn(move || {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map(|rt| rt.block_on(redis.purge("")))
            })
            .join();
        }
    }
}

struct Rig {
    engine: Engine,
    keys: Arc<dyn KeyStore>,
    master: MasterKey,
    snapshots: Arc<dyn SnapshotStore>,
    _db: Db,
}

type Backends = (
    Db,
    Arc<dyn EventStore>,
    Arc<dyn KeyStore>,
    Arc<dyn SnapshotStore>,
);

async fn rig(mariadb: bool) -> Rig {
    let (db, store, keys, snapshots): Backends = if mariadb {
        let db = support::fresh_mysql().await;
        let redis = RedisSnapshotStore::connect(&rig::redis_url(), &rig::redis_prefix())
            .await
            .expect("connect Redis");
        let (store, keys) = (db.store.clone(), db.store.clone());
        (Db::MySql(db, redis.clone()), store, keys, Arc::new(redis))
    } else {
        let db = support::fresh_sqlite().await;
        let (store, keys) = (db.store.clone(), db.store.clone());
        (
            Db::Sqlite(db),
            store,
            keys,
            Arc::new(MemorySnapshotStore::new(1000)),
        )
    };
    let master = MasterKey::generate();
    let codec = Arc::new(Codec::new(
        keys.clone(),
        master.clone(),
        CodecSettings::default(),
    ));
    Rig {
        engine: rig::engine(store, snapshots.clone(), codec, 2),
        keys,
        master,
        snapshots,
        _db: db,
    }
}

/// Every document of the memento projection that contains `marker` anywhere in its body.
async fn docs_containing(read: &dyn ReadStore, marker: &str) -> Vec<Value> {
    rig::dump(read, &MementoProjection)
        .await
        .into_values()
        .flatten()
        .filter(|doc| doc.to_string().contains(marker))
        .collect()
}

fn tombstone(id: &str) -> Value {
    json!({ "id": id, "tombstone": true })
}

/// The aggregates of one data subject (an originator and a caretaker both named `id`, the
/// caretaker keeping mementos of the originator) and of someone else, projected.
struct World {
    subject: String,
    other: String,
    marker: String,
}

async fn build_world(rig: &Rig, read: Arc<dyn ReadStore>) -> World {
    let engine = &rig.engine;
    let tag = rig::hex_id();
    let world = World {
        subject: format!("subject-{tag}"),
        other: format!("other-{tag}"),
        marker: format!("SECRET-{tag}"),
    };
    let secret = |n: u32| json!({ "content": format!("{} #{n}: my diary", world.marker) });
    let (subject, other) = (&world.subject, &world.other);
    rig::create_originator(engine, subject, OriginatorKind::Document, secret(0)).await;
    rig::create_caretaker(engine, subject, 3600).await;
    for n in 1..=5 {
        rig::set_state(engine, subject, secret(n), i64::from(n)).await;
        rig::capture(engine, subject, subject, &format!("m{n}"), i64::from(n)).await;
    }
    rig::restore(engine, subject, "m2", 10).await;

    rig::create_originator(
        engine,
        other,
        OriginatorKind::Document,
        json!({"content": "public"}),
    )
    .await;
    rig::create_caretaker(engine, other, 3600).await;
    rig::set_state(engine, other, json!({"content": "still public"}), 1).await;
    rig::capture(engine, other, other, "p1", 2).await;

    rig::project_to_head(engine, read.clone()).await;
    assert!(
        !docs_containing(&*read, &world.marker).await.is_empty(),
        "the read models hold the subject's state before forgetting"
    );
    world
}

async fn forget_shreds_every_copy(mariadb: bool) {
    let rig = rig(mariadb).await;
    let engine = &rig.engine;
    let live = rig::fresh_read_store().await;
    let world = build_world(&rig, live.dyn_store()).await;
    let (subject, other) = (&world.subject, &world.other);

    let originator_snapshot = snapshot_key(ORIGINATOR, subject, &state_fingerprint::<Originator>());
    let caretaker_snapshot = snapshot_key(CARETAKER, subject, &state_fingerprint::<Caretaker>());
    assert!(rig
        .snapshots
        .get(&originator_snapshot)
        .await
        .expect("get")
        .is_some());
    assert!(rig
        .snapshots
        .get(&caretaker_snapshot)
        .await
        .expect("get")
        .is_some());
    let other_snapshot = snapshot_key(ORIGINATOR, other, &state_fingerprint::<Originator>());
    assert!(rig
        .snapshots
        .get(&other_snapshot)
        .await
        .expect("get")
        .is_some());
    let head_before = engine.store().head_position().await.expect("head");

    let mut forgotten = engine.forget(subject, "test").await.expect("forget");
    forgotten.sort();
    assert_eq!(
        forgotten,
        vec![
            format!("{CARETAKER}/{subject}"),
            format!("{ORIGINATOR}/{subject}")
        ]
    );

    // The aggregates no longer load, and commands on them fail without appending.
    assert!(matches!(
        engine.load::<Originator>(subject).await,
        Err(KernelError::Forgotten(_))
    ));
    assert!(matches!(
        engine.load::<Caretaker>(subject).await,
        Err(KernelError::Forgotten(_))
    ));
    let head_after_forget = engine.store().head_position().await.expect("head");
    let attempt = engine
        .execute::<Originator, _>(
            subject,
            || OriginatorCommand::SetState {
                state: json!({"content": "again"}),
                expected_version: None,
                at: rig::at(99),
            },
            &rig::policy(),
            &CommandContext::default(),
        )
        .await;
    assert!(
        matches!(attempt, Err(KernelError::Forgotten(_))),
        "{attempt:?}"
    );
    // Re-creating the same id cannot mint a new key: a forgotten subject stays forgotten.
    let recreate = engine
        .execute::<Originator, _>(
            subject,
            || OriginatorCommand::CreateOriginator {
                id: subject.clone(),
                kind: OriginatorKind::Document,
                name: "reborn".into(),
                state: None,
                at: rig::at(100),
            },
            &rig::policy(),
            &CommandContext::default(),
        )
        .await;
    assert!(recreate.is_err(), "{recreate:?}");
    assert_eq!(
        engine.store().head_position().await.expect("head"),
        head_after_forget,
        "nothing appended for a forgotten aggregate"
    );

    // The raw payloads stay in the store but cannot be decoded, by this codec or a new one
    // with the same master key; and none of them shows the plaintext.
    let fresh_codec = Codec::new(
        rig.keys.clone(),
        rig.master.clone(),
        CodecSettings::default(),
    );
    for aggregate_type in [ORIGINATOR, CARETAKER] {
        let stored = engine
            .store()
            .load_stream(aggregate_type, subject, 0)
            .await
            .expect("stream");
        assert!(stored.len() >= 6, "{aggregate_type} events are kept");
        for event in stored {
            assert!(codec::is_encrypted(&event.payload));
            assert!(!String::from_utf8_lossy(&event.payload).contains(&world.marker));
            let key_id = codec::key_id(aggregate_type, subject);
            let aad = Aad {
                aggregate_id: subject,
                sequence: event.sequence,
                event_id: event.event_id,
            };
            for codec in [engine.codec().as_ref(), &fresh_codec] {
                assert!(matches!(
                    codec.decode(&key_id, &aad, &event.payload).await,
                    Err(KernelError::Forgotten(_))
                ));
            }
            let recorded = engine
                .record(event)
                .await
                .expect("record a forgotten event");
            assert_eq!(recorded.data, None, "projections see no data");
        }
    }

    // One `aggregate_forgotten` event per key, readable (it carries only the names).
    let system = engine
        .store()
        .read_all(head_before, 100)
        .await
        .expect("read");
    let forgets: Vec<_> = system
        .iter()
        .filter(|e| e.aggregate_type == SYSTEM_AGGREGATE && e.event_type == AGGREGATE_FORGOTTEN)
        .collect();
    assert_eq!(forgets.len(), 2);

    // Snapshots purged; the other subject's kept.
    assert_eq!(
        rig.snapshots.get(&originator_snapshot).await.expect("get"),
        None
    );
    assert_eq!(
        rig.snapshots.get(&caretaker_snapshot).await.expect("get"),
        None
    );
    assert!(rig
        .snapshots
        .get(&other_snapshot)
        .await
        .expect("get")
        .is_some());

    // The live read model, once projected: tombstones, and no plaintext anywhere.
    rig::project_to_head(engine, live.dyn_store()).await;
    let read = &*live.store;
    assert_eq!(
        read.get(ORIGINATORS, subject).await.expect("get"),
        Some(tombstone(subject))
    );
    assert_eq!(
        read.get(CARETAKERS, subject).await.expect("get"),
        Some(tombstone(subject))
    );
    for collection in [MEMENTOS, HISTORY] {
        let docs = read
            .find(collection, &Default::default())
            .await
            .expect("find");
        for doc in docs
            .items
            .iter()
            .filter(|d| d.to_string().contains(subject.as_str()))
        {
            assert_eq!(
                doc.get("tombstone"),
                Some(&json!(true)),
                "{collection}: {doc}"
            );
        }
    }
    assert_eq!(
        docs_containing(read, &world.marker).await,
        Vec::<Value>::new()
    );

    // A fresh replay into an empty read store: the same.
    let replayed = rig::fresh_read_store().await;
    rig::project_to_head(engine, replayed.dyn_store()).await;
    let replay = &*replayed.store;
    assert_eq!(
        replay.get(ORIGINATORS, subject).await.expect("get"),
        Some(tombstone(subject))
    );
    assert_eq!(
        replay.get(CARETAKERS, subject).await.expect("get"),
        Some(tombstone(subject))
    );
    assert_eq!(
        docs_containing(replay, &world.marker).await,
        Vec::<Value>::new()
    );

    // Someone else's data is untouched, in the aggregates and in both read models.
    let kept = engine.load::<Originator>(other).await.expect("other loads");
    assert_eq!(kept.state.state(), &json!({"content": "still public"}));
    assert_eq!(
        engine
            .load::<Caretaker>(other)
            .await
            .expect("load")
            .state
            .memento_count(),
        1
    );
    for store in [read, replay] {
        let doc = store
            .get(ORIGINATORS, other)
            .await
            .expect("get")
            .expect("other's doc");
        assert_eq!(doc["state"], json!({"content": "still public"}));
        assert!(doc.get("tombstone").is_none());
        let caretaker = store
            .get(CARETAKERS, other)
            .await
            .expect("get")
            .expect("doc");
        assert_eq!(caretaker["memento_count"].as_f64(), Some(1.0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_forget_shreds_every_copy() {
    forget_shreds_every_copy(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_redis_forget_shreds_every_copy() {
    forget_shreds_every_copy(true).await;
}

/// A memento of the subject's state kept by someone else's caretaker is a copy of the
/// subject's data too: the contract's "crypto-shredding across every copy" says read models
/// are purged of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forget_purges_mementos_of_the_subject_in_other_caretakers() {
    let rig = rig(false).await;
    let engine = &rig.engine;
    let tag = rig::hex_id();
    let (subject, keeper, marker) = (
        format!("subject-{tag}"),
        format!("keeper-{tag}"),
        format!("SECRET-{tag}"),
    );
    rig::create_originator(
        engine,
        &subject,
        OriginatorKind::Document,
        json!({"content": format!("{marker}: my diary")}),
    )
    .await;
    rig::create_caretaker(engine, &keeper, 3600).await;
    rig::capture(engine, &keeper, &subject, "copy", 1).await;

    engine.forget(&subject, "test").await.expect("forget");
    let live = rig::fresh_read_store().await;
    rig::project_to_head(engine, live.dyn_store()).await;
    assert_eq!(
        docs_containing(&*live.store, &marker).await,
        Vec::<Value>::new(),
        "the subject's state survives in {keeper}'s memento"
    );
}

/// A new aggregate's key is made without asking the store and stored with its first events.
/// A key already stored under the id (another writer's, or one an earlier version stored
/// before an append that then failed) makes the first attempt a conflict; the engine then
/// learns that key, the retry seals with it, and the events decode. A forgotten id stays
/// forgotten.
async fn new_aggregates_use_a_key_already_stored(mariadb: bool) {
    let rig = rig(mariadb).await;
    let id = format!("orphan-{}", rig::hex_id());
    let key_id = codec::key_id(ORIGINATOR, &id);
    let stored = codec::DataKey::generate().wrap(&rig.master, &key_id);
    rig.keys
        .put_if_absent(&key_id, &stored)
        .await
        .expect("store a key with no events");
    rig::create_originator(
        &rig.engine,
        &id,
        OriginatorKind::Document,
        json!({"content": "one"}),
    )
    .await;
    assert_eq!(
        rig.keys.get(&key_id).await.expect("get"),
        Some(stored),
        "the stored key stays"
    );
    let loaded = rig.engine.load::<Originator>(&id).await.expect("load");
    assert_eq!(loaded.sequence, 1);

    let gone = format!("gone-{}", rig::hex_id());
    rig.keys
        .forget(&codec::key_id(ORIGINATOR, &gone))
        .await
        .expect("forget an unseen id");
    let gone_owned = gone.clone();
    let err = rig
        .engine
        .execute::<Originator, _>(
            &gone,
            || OriginatorCommand::CreateOriginator {
                id: gone_owned.clone(),
                kind: OriginatorKind::Document,
                name: "gone".into(),
                state: None,
                at: rig::at(0),
            },
            &rig::policy(),
            &CommandContext::default(),
        )
        .await
        .expect_err("a forgotten id");
    assert!(matches!(err, KernelError::Forgotten(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_new_aggregates_use_a_key_already_stored() {
    new_aggregates_use_a_key_already_stored(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_new_aggregates_use_a_key_already_stored() {
    new_aggregates_use_a_key_already_stored(true).await;
}
