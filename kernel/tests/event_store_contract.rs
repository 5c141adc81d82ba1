//! The event-store contract: one set of scenarios, written once over the `EventStore` and
//! `KeyStore` ports, run against SQLite (a temp file per test) and MariaDB (a database per
//! test). A MariaDB-only module checks the position gaps that auto-increment leaves while a
//! transaction is open.

mod support;

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Duration, Utc};
use kernel::adapters::sql::{MySqlEventStore, SqliteEventStore};
use kernel::domain::DomainError;
use kernel::envelope::{
    AppendBatch, Committed, IdempotencyKey, NewEvent, Reservation, StoredEvent, StreamAppend,
};
use kernel::ports::{EventFilter, EventStore, KeyStore};
use kernel::{KernelError, KernelResult};
use uuid::Uuid;

/// The inherent read methods both stores have, so scenarios can be generic.
#[async_trait]
trait Backend: EventStore + KeyStore {
    async fn stream_seq(&self, aggregate_type: &str, aggregate_id: &str) -> KernelResult<u64>;
    async fn by_type(&self, t: &str, after: u64, limit: u32) -> KernelResult<Vec<StoredEvent>>;
    async fn by_aggregate_type(
        &self,
        t: &str,
        after: u64,
        limit: u32,
    ) -> KernelResult<Vec<StoredEvent>>;
}

macro_rules! backend {
    ($store:ty) => {
        #[async_trait]
        impl Backend for $store {
            async fn stream_seq(&self, ty: &str, id: &str) -> KernelResult<u64> {
                self.stream_sequence(ty, id).await
            }
            async fn by_type(
                &self,
                t: &str,
                after: u64,
                limit: u32,
            ) -> KernelResult<Vec<StoredEvent>> {
                let filter = EventFilter {
                    event_type: Some(t.to_string()),
                    after_position: after,
                    ..Default::default()
                };
                Ok(self.query_events(&filter, 0, limit).await?.events)
            }
            async fn by_aggregate_type(
                &self,
                t: &str,
                after: u64,
                limit: u32,
            ) -> KernelResult<Vec<StoredEvent>> {
                let filter = EventFilter {
                    aggregate_types: vec![t.to_string()],
                    after_position: after,
                    ..Default::default()
                };
                Ok(self.query_events(&filter, 0, limit).await?.events)
            }
        }
    };
}
backend!(SqliteEventStore);
backend!(MySqlEventStore);

fn event(event_type: &str, payload: &[u8]) -> NewEvent {
    NewEvent {
        event_id: Uuid::new_v4(),
        event_type: event_type.to_string(),
        event_version: 1,
        payload: payload.to_vec(),
    }
}

fn stream(aggregate_type: &str, id: &str, expected: u64, n: usize) -> StreamAppend {
    StreamAppend {
        aggregate_type: aggregate_type.to_string(),
        aggregate_id: id.to_string(),
        expected_sequence: expected,
        events: (0..n)
            .map(|i| event("thing_happened", format!("{id}#{i}").as_bytes()))
            .collect(),
    }
}

fn batch(streams: Vec<StreamAppend>) -> AppendBatch {
    AppendBatch {
        streams,
        correlation_id: Uuid::new_v4(),
        causation_id: None,
        actor: None,
        recorded_at: Utc::now(),
        idempotency: None,
        reservations: vec![],
        releases: vec![],
        new_keys: vec![],
    }
}

fn idem(key: &str, hash: &str) -> Option<IdempotencyKey> {
    Some(IdempotencyKey {
        key: key.to_string(),
        request_hash: hash.to_string(),
    })
}

fn reservation(value: &str, owner: &str) -> Reservation {
    Reservation {
        scope: "user_email".into(),
        value: value.into(),
        owner: owner.into(),
    }
}

fn truncate_to_micros(at: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(at.timestamp_micros()).expect("in range")
}

/// Polls `gap_may_fill` until it answers false (a MySQL answer can be conservatively true while
/// InnoDB's transaction cache is stale); false if it never does within 10 s.
async fn gap_settles<S: EventStore + ?Sized>(store: &S, since: impl Fn() -> DateTime<Utc>) -> bool {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        if !store.gap_may_fill(since()).await.expect("gap_may_fill") {
            return true;
        }
        if tokio::time::Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

fn is_conflict_on(err: &KernelError, id: &str) -> bool {
    matches!(err, KernelError::Conflict { aggregate_id, .. } if aggregate_id == id)
}

mod scenarios {
    use super::*;

    pub async fn round_trip_keeps_all_metadata<S: Backend>(store: &Arc<S>) {
        let mut b = batch(vec![stream("order", "o-1", 0, 2)]);
        b.causation_id = Some(Uuid::new_v4());
        b.actor = Some("alice@example.com".into());
        b.streams[0].events[1].event_type = "order_shipped".into();
        b.streams[0].events[1].event_version = 3;
        b.streams[0].events[1].payload = vec![0, 255, 1, 254];
        let committed = store.append(b.clone()).await.expect("append");

        let loaded = store.load_stream("order", "o-1", 0).await.expect("load");
        assert_eq!(loaded.len(), 2);
        for (i, (got, sent)) in loaded.iter().zip(&b.streams[0].events).enumerate() {
            assert_eq!(got.aggregate_type, "order");
            assert_eq!(got.aggregate_id, "o-1");
            assert_eq!(got.sequence, i as u64 + 1);
            assert_eq!(got.event_type, sent.event_type);
            assert_eq!(got.event_version, sent.event_version);
            assert_eq!(got.event_id, sent.event_id);
            assert_eq!(got.correlation_id, b.correlation_id);
            assert_eq!(got.causation_id, b.causation_id);
            assert_eq!(got.actor, b.actor);
            assert_eq!(got.recorded_at, truncate_to_micros(b.recorded_at));
            assert_eq!(got.payload, sent.payload);
        }
        assert_eq!(committed.position, loaded[1].position);
        let s = committed.stream("order", "o-1").expect("committed stream");
        assert_eq!(s.sequence, 2);
        assert_eq!(
            s.event_ids,
            b.streams[0]
                .events
                .iter()
                .map(|e| e.event_id)
                .collect::<Vec<_>>()
        );
        assert_eq!(s.event_types, vec!["thing_happened", "order_shipped"]);

        // Optional metadata absent, a non-ASCII id, and case-sensitive ids.
        store
            .append(batch(vec![stream("order", "Ö-1", 0, 1)]))
            .await
            .expect("append");
        store
            .append(batch(vec![stream("order", "ö-1", 0, 1)]))
            .await
            .expect("a different id by case");
        let plain = store.load_stream("order", "Ö-1", 0).await.expect("load");
        assert_eq!(plain.len(), 1);
        assert_eq!(plain[0].causation_id, None);
        assert_eq!(plain[0].actor, None);

        assert_eq!(
            store.load_stream("order", "o-1", 1).await.expect("load")[0].event_type,
            "order_shipped"
        );
        assert!(store
            .load_stream("order", "nope", 0)
            .await
            .expect("load")
            .is_empty());
        assert_eq!(store.stream_seq("order", "o-1").await.expect("seq"), 2);
        assert_eq!(store.stream_seq("order", "nope").await.expect("seq"), 0);
        store.ping().await.expect("ping");
    }

    pub async fn positions_increase_and_committed_is_last<S: Backend>(store: &Arc<S>) {
        assert_eq!(store.head_position().await.expect("head"), 0);
        let mut last = 0;
        for i in 0..3 {
            let b = batch(vec![
                stream("order", &format!("o-{i}"), 0, 3),
                stream("product", &format!("p-{i}"), 0, 2),
            ]);
            let committed = store.append(b).await.expect("append");
            assert!(committed.position > last);
            last = committed.position;
            let p = store
                .load_stream("product", &format!("p-{i}"), 0)
                .await
                .expect("load");
            assert_eq!(
                committed.position, p[1].position,
                "the last event of the batch"
            );
            assert_eq!(
                store.head_position().await.expect("head"),
                committed.position
            );
        }
        let all = store.read_all(0, 1000).await.expect("read_all");
        assert_eq!(all.len(), 15);
        assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    }

    pub async fn large_stream_spans_insert_chunks<S: Backend>(store: &Arc<S>) {
        let committed = store
            .append(batch(vec![stream("order", "big", 0, 1203)]))
            .await
            .expect("append");
        let loaded = store.load_stream("order", "big", 0).await.expect("load");
        assert_eq!(loaded.len(), 1203);
        assert!(loaded
            .iter()
            .enumerate()
            .all(|(i, e)| e.sequence == i as u64 + 1));
        assert!(loaded.windows(2).all(|w| w[0].position < w[1].position));
        assert_eq!(committed.position, loaded[1202].position);
        assert_eq!(committed.streams[0].sequence, 1203);
    }

    pub async fn stale_expected_sequence_conflicts<S: Backend>(store: &Arc<S>) {
        store
            .append(batch(vec![stream("order", "o-1", 0, 2)]))
            .await
            .expect("append");
        let head = store.head_position().await.expect("head");

        let err = store
            .append(batch(vec![stream("order", "o-1", 1, 1)]))
            .await
            .expect_err("stale");
        assert!(
            matches!(&err, KernelError::Conflict { aggregate_type, aggregate_id, expected }
                if aggregate_type == "order" && aggregate_id == "o-1" && *expected == 1),
            "{err:?}"
        );
        // Ahead of the stream: it would leave a hole, so it conflicts too.
        let err = store
            .append(batch(vec![stream("order", "o-1", 5, 1)]))
            .await
            .expect_err("ahead");
        assert!(is_conflict_on(&err, "o-1"), "{err:?}");
        let err = store
            .append(batch(vec![stream("order", "new", 3, 1)]))
            .await
            .expect_err("ahead of a new stream");
        assert!(is_conflict_on(&err, "new"), "{err:?}");

        assert_eq!(store.head_position().await.expect("head"), head);
        assert_eq!(store.stream_seq("order", "o-1").await.expect("seq"), 2);
        assert_eq!(store.stream_seq("order", "new").await.expect("seq"), 0);
        store
            .append(batch(vec![stream("order", "o-1", 2, 1)]))
            .await
            .expect("current");
    }

    pub async fn multi_stream_batch_is_atomic<S: Backend>(store: &Arc<S>) {
        store
            .append(batch(vec![stream("product", "p-1", 0, 1)]))
            .await
            .expect("append");
        let head = store.head_position().await.expect("head");
        let err = store
            .append(batch(vec![
                stream("order", "o-1", 0, 2),
                stream("product", "p-1", 0, 1),
            ]))
            .await
            .expect_err("second stream is stale");
        assert!(is_conflict_on(&err, "p-1"), "{err:?}");
        assert!(store
            .load_stream("order", "o-1", 0)
            .await
            .expect("load")
            .is_empty());
        assert_eq!(store.head_position().await.expect("head"), head);
    }

    /// A batch's streams are checked in one query and inserted together: two streams of one
    /// aggregate must continue each other, and a stream ahead of its aggregate anywhere in a
    /// wide batch fails the whole batch, named in the conflict.
    pub async fn streams_of_a_batch_are_checked_together<S: Backend>(store: &Arc<S>) {
        store
            .append(batch(vec![stream("product", "p-2", 0, 1)]))
            .await
            .expect("append");
        store
            .append(batch(vec![
                stream("product", "p-2", 1, 2),
                stream("product", "p-2", 3, 1),
            ]))
            .await
            .expect("two streams of p-2, the second continuing the first");
        assert_eq!(store.stream_seq("product", "p-2").await.expect("seq"), 4);
        let head = store.head_position().await.expect("head");

        let err = store
            .append(batch(vec![
                stream("order", "o-9", 0, 1),
                stream("product", "p-2", 4, 1),
                stream("product", "p-2", 6, 1),
            ]))
            .await
            .expect_err("the second stream of p-2 leaves a hole");
        assert!(is_conflict_on(&err, "p-2"), "{err:?}");

        // 50 new streams, one of them replaced by `odd`.
        let wide = |at: usize, odd: StreamAppend| {
            let mut streams: Vec<StreamAppend> = (0..50)
                .map(|i| stream("order", &format!("w-{i}"), 0, 1))
                .collect();
            streams[at] = odd;
            batch(streams)
        };
        let err = store
            .append(wide(25, stream("order", "w-25", 7, 1)))
            .await
            .expect_err("w-25 is ahead of its stream");
        assert!(is_conflict_on(&err, "w-25"), "{err:?}");
        let err = store
            .append(wide(40, stream("product", "p-2", 2, 1)))
            .await
            .expect_err("p-2 is stale");
        assert!(is_conflict_on(&err, "p-2"), "{err:?}");

        assert_eq!(store.head_position().await.expect("head"), head);
        assert_eq!(store.stream_seq("order", "o-9").await.expect("seq"), 0);
        assert_eq!(store.stream_seq("order", "w-0").await.expect("seq"), 0);
    }

    pub async fn concurrent_writers_get_contiguous_sequences<S: Backend>(store: &Arc<S>) {
        const WRITERS: usize = 16;
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut conflicts = 0u32;
                for _ in 0..500 {
                    let seq = store.stream_seq("order", "hot").await?;
                    let mut s = stream("order", "hot", seq, 1);
                    s.events[0].payload = format!("writer {w}").into_bytes();
                    match store.append(batch(vec![s])).await {
                        Ok(c) => return Ok::<_, KernelError>((c, conflicts)),
                        Err(KernelError::Conflict { .. }) => conflicts += 1,
                        Err(other) => return Err(other),
                    }
                }
                Err(KernelError::Storage("gave up after 500 conflicts".into()))
            }));
        }
        let mut total_conflicts = 0;
        let mut sequences = HashSet::new();
        for t in tasks {
            let (committed, conflicts) = t.await.expect("task").expect("only conflicts");
            total_conflicts += conflicts;
            assert!(sequences.insert(committed.streams[0].sequence));
        }
        let loaded = store.load_stream("order", "hot", 0).await.expect("load");
        let seqs: Vec<u64> = loaded.iter().map(|e| e.sequence).collect();
        assert_eq!(seqs, (1..=WRITERS as u64).collect::<Vec<_>>());
        assert_eq!(sequences.len(), WRITERS);
        eprintln!("{WRITERS} writers, {total_conflicts} conflicts");
    }

    /// Many batches at once share group commits; each still gets the answer it would have
    /// had alone: racers on one stream (one wins), a taken value (`Duplicate`), a replayed
    /// idempotency key (the first result), and everyone else committed with the position of
    /// their own last event.
    pub async fn concurrent_batches_get_their_own_answers<S: Backend>(store: &Arc<S>) {
        store
            .append(batch(vec![stream("order", "hot", 0, 1)]))
            .await
            .expect("seed the hot stream");
        let mut taken = batch(vec![stream("user", "owner", 0, 1)]);
        taken.reservations = vec![reservation("taken@example.com", "user/owner")];
        store.append(taken).await.expect("reserve");
        let mut first = batch(vec![stream("order", "idem", 0, 1)]);
        first.idempotency = idem("group-key", "h");
        let first = store.append(first).await.expect("first with the key");

        enum Kind {
            Plain,
            Racer,
            Duplicate,
            Replay,
        }
        let mut tasks = Vec::new();
        for i in 0..96usize {
            let kind = match i % 12 {
                0 => Kind::Racer,
                5 => Kind::Duplicate,
                7 => Kind::Replay,
                _ => Kind::Plain,
            };
            let mut b = match kind {
                Kind::Racer => batch(vec![stream("order", "hot", 1, 1)]),
                Kind::Replay => batch(vec![stream("order", "idem", 0, 1)]),
                _ => batch(vec![
                    stream("order", &format!("g-{i}"), 0, 1 + i % 3),
                    stream("product", &format!("g-{i}"), 0, 1),
                ]),
            };
            match kind {
                Kind::Duplicate => {
                    b.reservations = vec![reservation("taken@example.com", &format!("user/{i}"))]
                }
                Kind::Replay => b.idempotency = idem("group-key", "h"),
                Kind::Plain if i % 2 == 0 => {
                    b.idempotency = idem(&format!("plain-{i}"), "h");
                    b.reservations = vec![reservation(&format!("{i}@example.com"), "x")];
                }
                _ => {}
            }
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let sent = b.clone();
                (kind, sent, store.append(b).await)
            }));
        }
        let mut racer_wins = 0;
        for task in tasks {
            let (kind, sent, answer) = task.await.expect("task");
            match kind {
                Kind::Racer => match answer {
                    Ok(_) => racer_wins += 1,
                    Err(err) => assert!(is_conflict_on(&err, "hot"), "{err:?}"),
                },
                Kind::Duplicate => {
                    assert!(
                        matches!(answer, Err(KernelError::Duplicate { .. })),
                        "{answer:?}"
                    )
                }
                Kind::Replay => assert_eq!(answer.expect("replay"), first),
                Kind::Plain => {
                    let committed = answer.expect("a plain batch commits");
                    let last = sent.streams.last().expect("streams");
                    let stored = store
                        .load_stream(&last.aggregate_type, &last.aggregate_id, 0)
                        .await
                        .expect("load");
                    assert_eq!(stored.len(), last.events.len());
                    assert_eq!(committed.position, stored.last().expect("event").position);
                    let order = &sent.streams[0];
                    assert_eq!(
                        store
                            .load_stream("order", &order.aggregate_id, 0)
                            .await
                            .expect("load")
                            .iter()
                            .map(|e| e.event_id)
                            .collect::<Vec<_>>(),
                        order.events.iter().map(|e| e.event_id).collect::<Vec<_>>()
                    );
                    if let Some(key) = &sent.idempotency {
                        let mut again = sent.clone();
                        again.streams[0].events[0].event_id = Uuid::new_v4();
                        assert_eq!(store.append(again).await.expect("replayed"), committed);
                        assert!(key.key.starts_with("plain-"));
                    }
                }
            }
        }
        assert_eq!(racer_wins, 1, "exactly one racer on the hot stream wins");
        assert_eq!(store.stream_seq("order", "hot").await.expect("seq"), 2);
        assert_eq!(store.stream_seq("order", "idem").await.expect("seq"), 1);
        let all = store.read_all(0, 10_000).await.expect("read_all");
        assert!(all.windows(2).all(|w| w[0].position < w[1].position));
    }

    /// A batch's new data keys commit with its events, or not at all.
    pub async fn new_keys_commit_with_their_events<S: Backend>(store: &Arc<S>) {
        let new_key = |id: &str, wrapped: &[u8]| kernel::envelope::NewDataKey {
            key_id: id.to_string(),
            wrapped: wrapped.to_vec(),
        };
        let mut b = batch(vec![stream("user", "k-1", 0, 1)]);
        b.new_keys = vec![new_key("user/k-1", b"wrapped-1")];
        store.append(b).await.expect("append with a new key");
        assert_eq!(
            store.get("user/k-1").await.expect("get"),
            Some(b"wrapped-1".to_vec())
        );

        // Another writer's key under the same id: a conflict, and nothing written.
        let mut other = batch(vec![stream("user", "k-1", 1, 1)]);
        other.new_keys = vec![new_key("user/k-1", b"wrapped-2")];
        let err = store.append(other).await.expect_err("a clashing key");
        assert!(is_conflict_on(&err, "k-1"), "{err:?}");
        assert_eq!(store.stream_seq("user", "k-1").await.expect("seq"), 1);
        assert_eq!(
            store.get("user/k-1").await.expect("get"),
            Some(b"wrapped-1".to_vec())
        );

        // Events that conflict take their new key with them.
        let mut stale = batch(vec![stream("user", "k-1", 0, 1)]);
        stale.new_keys = vec![new_key("user/k-2", b"wrapped-3")];
        let err = store.append(stale).await.expect_err("stale");
        assert!(is_conflict_on(&err, "k-1"), "{err:?}");
        assert_eq!(store.get("user/k-2").await.expect("get"), None);

        // A forgotten id never gets a key again.
        assert!(!store.forget("user/k-3").await.expect("forget unseen"));
        let mut forgotten = batch(vec![stream("user", "k-3", 0, 1)]);
        forgotten.new_keys = vec![new_key("user/k-3", b"wrapped-4")];
        let err = store.append(forgotten).await.expect_err("forgotten");
        assert!(
            matches!(&err, KernelError::Forgotten(id) if id == "user/k-3"),
            "{err:?}"
        );
        assert_eq!(store.stream_seq("user", "k-3").await.expect("seq"), 0);

        // Concurrent creators of one aggregate: one key, the winner's.
        let mut tasks = Vec::new();
        for i in 0..8u8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut b = batch(vec![stream("user", "k-4", 0, 1)]);
                b.new_keys = vec![new_key("user/k-4", &[i; 4])];
                store.append(b).await.map(|_| i)
            }));
        }
        let mut winners = Vec::new();
        for task in tasks {
            match task.await.expect("task") {
                Ok(i) => winners.push(i),
                Err(err) => assert!(is_conflict_on(&err, "k-4"), "{err:?}"),
            }
        }
        assert_eq!(winners.len(), 1);
        assert_eq!(
            store.get("user/k-4").await.expect("get"),
            Some(vec![winners[0]; 4])
        );
    }

    pub async fn idempotent_replay_returns_first_result<S: Backend>(store: &Arc<S>) {
        let mut b = batch(vec![stream("order", "o-1", 0, 2)]);
        b.idempotency = idem("k-1", "hash-a");
        let first = store.append(b.clone()).await.expect("append");
        let head = store.head_position().await.expect("head");

        // A retry re-runs the command: new event ids, same key and hash.
        let mut retry = batch(vec![stream("order", "o-1", 0, 2)]);
        retry.idempotency = idem("k-1", "hash-a");
        assert_eq!(store.append(retry).await.expect("replay"), first);
        assert_eq!(store.head_position().await.expect("head"), head);

        let stored = store
            .idempotent_result("k-1")
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(stored.request_hash, "hash-a");
        assert_eq!(stored.committed, first);
        assert!(store
            .idempotent_result("other")
            .await
            .expect("read")
            .is_none());

        let mut other = batch(vec![stream("order", "o-2", 0, 1)]);
        other.idempotency = idem("k-1", "hash-b");
        let err = store.append(other).await.expect_err("mismatch");
        assert!(
            matches!(&err, KernelError::IdempotencyMismatch(k) if k == "k-1"),
            "{err:?}"
        );
        assert_eq!(store.head_position().await.expect("head"), head);
        assert!(store
            .load_stream("order", "o-2", 0)
            .await
            .expect("load")
            .is_empty());
    }

    pub async fn concurrent_same_key_writes_once<S: Backend>(store: &Arc<S>) {
        // The same batch (same aggregate, same event ids), and batches that each create a new
        // aggregate (ids generated per attempt): either way exactly one is written.
        let mut same = batch(vec![stream("order", "o-1", 0, 2)]);
        same.idempotency = idem("same", "h");
        let mut tasks = Vec::new();
        for i in 0..8 {
            let store = store.clone();
            let same = same.clone();
            tasks.push(tokio::spawn(async move {
                let a = store.append(same).await?;
                let mut fresh = batch(vec![stream("user", &format!("u-{i}"), 0, 1)]);
                fresh.idempotency = idem("fresh", "h");
                let b = store.append(fresh).await?;
                Ok::<_, KernelError>((a, b))
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.expect("task").expect("every request succeeds"));
        }
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "all answers are the first one"
        );
        let all = store.read_all(0, 1000).await.expect("read_all");
        assert_eq!(all.len(), 3, "one write of 2 events, one of 1 event");
        assert_eq!(
            store
                .by_aggregate_type("user", 0, 100)
                .await
                .expect("read")
                .len(),
            1
        );
    }

    pub async fn reservations_are_unique_across_aggregates<S: Backend>(store: &Arc<S>) {
        let mut a = batch(vec![stream("user", "u-a", 0, 1)]);
        a.reservations = vec![reservation("x@example.com", "u-a")];
        store.append(a).await.expect("first reservation");
        let head = store.head_position().await.expect("head");

        let mut b = batch(vec![stream("user", "u-b", 0, 1)]);
        b.reservations = vec![reservation("x@example.com", "u-b")];
        let err = store.append(b.clone()).await.expect_err("taken");
        assert!(
            matches!(&err, KernelError::Duplicate { scope, value }
                if scope == "user_email" && value == "x@example.com"),
            "{err:?}"
        );
        assert_eq!(store.head_position().await.expect("head"), head);
        assert!(store
            .load_stream("user", "u-b", 0)
            .await
            .expect("load")
            .is_empty());

        // The owner reserving its own value again is a no-op.
        let mut again = batch(vec![stream("user", "u-a", 1, 1)]);
        again.reservations = vec![reservation("x@example.com", "u-a")];
        store.append(again).await.expect("same owner");

        // A release by someone else changes nothing.
        let mut wrong = batch(vec![stream("user", "u-c", 0, 1)]);
        wrong.releases = vec![reservation("x@example.com", "u-c")];
        store.append(wrong).await.expect("append");
        assert!(matches!(
            store.append(b.clone()).await,
            Err(KernelError::Duplicate { .. })
        ));

        let mut release = batch(vec![stream("user", "u-a", 2, 1)]);
        release.releases = vec![reservation("x@example.com", "u-a")];
        store.append(release).await.expect("release");
        store.append(b).await.expect("free again");

        // Release and re-reserve in one batch (a change of owner).
        let mut swap = batch(vec![
            stream("user", "u-b", 1, 1),
            stream("user", "u-a", 3, 1),
        ]);
        swap.releases = vec![reservation("x@example.com", "u-b")];
        swap.reservations = vec![reservation("x@example.com", "u-a")];
        store.append(swap).await.expect("swap");
    }

    pub async fn reservations_are_listed_by_scope<S: Backend>(store: &Arc<S>) {
        let pending = |value: &str| Reservation {
            scope: "command_pending".into(),
            value: value.into(),
            owner: value.into(),
        };
        let mut a = batch(vec![stream("command", "c-2", 0, 1)]);
        a.reservations = vec![pending("c-2"), reservation("p@example.com", "u-p")];
        store.append(a).await.expect("reserve");
        let mut b = batch(vec![stream("command", "c-1", 0, 1)]);
        b.reservations = vec![pending("c-1")];
        store.append(b).await.expect("reserve");
        let mut c = batch(vec![stream("command", "c-3", 0, 1)]);
        c.reservations = vec![pending("c-3")];
        store.append(c).await.expect("reserve");

        let values = |list: Vec<Reservation>| list.into_iter().map(|r| r.value).collect::<Vec<_>>();
        let all = store
            .reservations("command_pending", "", 100)
            .await
            .expect("list");
        assert!(all
            .iter()
            .all(|r| r.scope == "command_pending" && r.owner == r.value));
        assert_eq!(values(all), vec!["c-1", "c-2", "c-3"]);
        let page = store
            .reservations("command_pending", "c-1", 1)
            .await
            .expect("page");
        assert_eq!(values(page), vec!["c-2"]);

        let mut release = batch(vec![stream("command", "c-2", 1, 1)]);
        release.releases = vec![pending("c-2")];
        store.append(release).await.expect("release");
        let left = store
            .reservations("command_pending", "", 100)
            .await
            .expect("list");
        assert_eq!(values(left), vec!["c-1", "c-3"]);
        assert!(store
            .reservations("nothing_here", "", 100)
            .await
            .expect("list")
            .is_empty());
    }

    pub async fn batch_without_events_is_a_no_op_commit<S: Backend>(store: &Arc<S>) {
        store
            .append(batch(vec![stream("order", "o-1", 0, 2)]))
            .await
            .expect("append");
        let head = store.head_position().await.expect("head");
        let mut empty = batch(vec![stream("order", "o-1", 2, 0)]);
        empty.reservations = vec![reservation("y@example.com", "o-1")];
        empty.idempotency = idem("noop", "h");
        let committed = store.append(empty).await.expect("no events");
        assert_eq!(committed.position, head);
        assert_eq!(committed.streams[0].sequence, 2);
        assert!(committed.streams[0].event_ids.is_empty());
        assert_eq!(store.head_position().await.expect("head"), head);
        // Its reservation and idempotency key were stored.
        let mut taker = batch(vec![stream("user", "u-1", 0, 1)]);
        taker.reservations = vec![reservation("y@example.com", "u-1")];
        assert!(matches!(
            store.append(taker).await,
            Err(KernelError::Duplicate { .. })
        ));
        assert!(store
            .idempotent_result("noop")
            .await
            .expect("read")
            .is_some());
        assert_eq!(
            store
                .append(batch(vec![]))
                .await
                .expect("nothing at all")
                .position,
            head
        );
    }

    pub async fn bad_input_is_rejected_before_writing<S: Backend>(store: &Arc<S>) {
        let long = "x".repeat(256);
        let err = store
            .append(batch(vec![stream("order", &long, 0, 1)]))
            .await
            .expect_err("too long");
        assert!(
            matches!(err, KernelError::Rejected(DomainError::Invalid { .. })),
            "{err:?}"
        );

        let first = batch(vec![stream("order", "o-1", 0, 1)]);
        store.append(first.clone()).await.expect("append");
        let head = store.head_position().await.expect("head");
        let mut reused = batch(vec![stream("order", "o-2", 0, 1)]);
        reused.streams[0].events[0].event_id = first.streams[0].events[0].event_id;
        let err = store.append(reused).await.expect_err("duplicate event id");
        assert!(
            matches!(err, KernelError::Rejected(DomainError::AlreadyExists(_))),
            "{err:?}"
        );
        assert_eq!(store.head_position().await.expect("head"), head);
    }

    pub async fn read_all_pages_in_position_order<S: Backend>(store: &Arc<S>) {
        for i in 0..5 {
            let mut b = batch(vec![stream("order", &format!("o-{i}"), 0, 3)]);
            b.streams.push(stream("product", &format!("p-{i}"), 0, 2));
            b.streams[1].events[0].event_type = "stock_reserved".into();
            store.append(b).await.expect("append");
        }
        let mut pages = Vec::new();
        let mut after = 0;
        loop {
            let page = store.read_all(after, 10).await.expect("page");
            if page.is_empty() {
                break;
            }
            after = page.last().expect("non-empty").position;
            pages.push(page);
        }
        assert_eq!(
            pages.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10, 10, 5]
        );
        let all: Vec<StoredEvent> = pages.into_iter().flatten().collect();
        assert_eq!(all, store.read_all(0, 1000).await.expect("all"));
        assert!(all.windows(2).all(|w| w[0].position < w[1].position));
        assert!(store.read_all(after, 10).await.expect("tail").is_empty());
        assert!(store.read_all(u64::MAX, 10).await.expect("far").is_empty());

        let reserved = store
            .by_type("stock_reserved", 0, 100)
            .await
            .expect("by type");
        assert_eq!(reserved.len(), 5);
        assert!(reserved.iter().all(|e| e.aggregate_type == "product"));
        let paged = store
            .by_type("stock_reserved", reserved[1].position, 2)
            .await
            .expect("page");
        assert_eq!(paged, reserved[2..4].to_vec());
        let orders = store
            .by_aggregate_type("order", 0, 100)
            .await
            .expect("by agg type");
        assert_eq!(orders.len(), 15);
        assert!(orders.windows(2).all(|w| w[0].position < w[1].position));
        assert_eq!(
            store
                .by_aggregate_type("order", 0, 4)
                .await
                .expect("limit")
                .len(),
            4
        );
    }

    pub async fn key_store_forgets_for_good<S: Backend>(store: &Arc<S>) {
        assert_eq!(store.get("user/u-1").await.expect("get"), None);
        assert_eq!(
            store
                .put_if_absent("user/u-1", b"wrapped-1")
                .await
                .expect("put"),
            b"wrapped-1"
        );
        assert_eq!(
            store
                .put_if_absent("user/u-1", b"wrapped-2")
                .await
                .expect("put again"),
            b"wrapped-1",
            "the first key stays"
        );
        assert_eq!(
            store.get("user/u-1").await.expect("get"),
            Some(b"wrapped-1".to_vec())
        );
        store.put_if_absent("payment/u-1", b"w").await.expect("put");
        store.put_if_absent("user/u-2", b"w").await.expect("put");
        assert_eq!(
            store.key_ids_for("u-1").await.expect("ids"),
            vec!["payment/u-1", "user/u-1"]
        );

        assert!(store.forget("user/u-1").await.expect("forget"));
        assert!(matches!(
            store.get("user/u-1").await,
            Err(KernelError::Forgotten(_))
        ));
        assert!(matches!(
            store.put_if_absent("user/u-1", b"again").await,
            Err(KernelError::Forgotten(_))
        ));
        assert!(!store.forget("user/u-1").await.expect("forget twice"));

        // A key never seen is remembered as forgotten.
        assert!(!store.forget("user/u-9").await.expect("forget unknown"));
        assert!(matches!(
            store.get("user/u-9").await,
            Err(KernelError::Forgotten(_))
        ));
        assert!(matches!(
            store.put_if_absent("user/u-9", b"late").await,
            Err(KernelError::Forgotten(_))
        ));
        assert_eq!(
            store.key_ids_for("u-9").await.expect("ids"),
            vec!["user/u-9"]
        );
        assert_eq!(
            store.get("user/u-2").await.expect("get"),
            Some(b"w".to_vec())
        );
    }

    pub async fn event_log_filters_by_actor<S: Backend>(store: &Arc<S>) {
        for (id, actor) in [("a-1", Some("alice")), ("b-1", Some("bob")), ("n-1", None)] {
            let mut b = batch(vec![stream("order", id, 0, 2)]);
            b.actor = actor.map(str::to_string);
            store.append(b).await.expect("append");
        }
        let of = |actor: &str| EventFilter {
            actor: Some(actor.to_string()),
            ..Default::default()
        };
        let alice = store
            .query_events(&of("alice"), 0, 10)
            .await
            .expect("query");
        assert_eq!(alice.total, 2);
        assert!(alice
            .events
            .iter()
            .all(|e| e.actor.as_deref() == Some("alice") && e.aggregate_id == "a-1"));
        let nobody = store
            .query_events(&of("carol"), 0, 10)
            .await
            .expect("query");
        assert_eq!(nobody.total, 0);
        // Combined with the other filters, by and.
        let mut narrowed = of("bob");
        narrowed.aggregate_id = Some("a-1".into());
        let none = store.query_events(&narrowed, 0, 10).await.expect("query");
        assert_eq!(none.total, 0);
    }

    pub async fn gap_may_fill_is_false_when_idle<S: Backend>(store: &Arc<S>) {
        store
            .append(batch(vec![stream("order", "o-1", 0, 1)]))
            .await
            .expect("append");
        assert!(gap_settles(&**store, Utc::now).await);
        assert!(gap_settles(&**store, || Utc::now() - Duration::hours(1)).await);
    }
}

/// Instantiates every scenario once per backend.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::fresh_sqlite().await;
                    crate::scenarios::$name(&db.store).await;
                }
            )*
        }
        mod mariadb {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let db = crate::support::fresh_mysql().await;
                    crate::scenarios::$name(&db.store).await;
                }
            )*
        }
    };
}

contract!(
    round_trip_keeps_all_metadata,
    positions_increase_and_committed_is_last,
    large_stream_spans_insert_chunks,
    stale_expected_sequence_conflicts,
    multi_stream_batch_is_atomic,
    streams_of_a_batch_are_checked_together,
    concurrent_writers_get_contiguous_sequences,
    concurrent_batches_get_their_own_answers,
    new_keys_commit_with_their_events,
    idempotent_replay_returns_first_result,
    concurrent_same_key_writes_once,
    reservations_are_unique_across_aggregates,
    reservations_are_listed_by_scope,
    batch_without_events_is_a_no_op_commit,
    bad_input_is_rejected_before_writing,
    read_all_pages_in_position_order,
    key_store_forgets_for_good,
    event_log_filters_by_actor,
    gap_may_fill_is_false_when_idle,
);

/// Auto-increment gaps: a position is taken at INSERT and becomes visible at COMMIT.
/// Writers in separate processes (here: stores of their own, so their appends are separate
/// transactions, never one group) creating many aggregates each at once, with interleaving
/// ids: none may fail. Storing new keys by an upsert plus a locking read made them deadlock,
/// which surfaced as conflicts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_concurrent_creators_never_conflict() {
    let db = support::fresh_mysql().await;
    for round in 0..5 {
        let mut tasks = Vec::new();
        for w in 0..8 {
            let store = MySqlEventStore::from_pool(db.store.pool().clone());
            tasks.push(tokio::spawn(async move {
                let ids: Vec<String> = (0..20).map(|i| format!("c-{round}-{i:02}-w{w}")).collect();
                let mut b = batch(ids.iter().map(|id| stream("user", id, 0, 1)).collect());
                b.new_keys = ids
                    .iter()
                    .map(|id| kernel::envelope::NewDataKey {
                        key_id: format!("user/{id}"),
                        wrapped: id.as_bytes().to_vec(),
                    })
                    .collect();
                store.append(b).await
            }));
        }
        for task in tasks {
            task.await
                .expect("task")
                .expect("a creator never conflicts");
        }
    }
    assert_eq!(
        db.store.get("user/c-4-07-w3").await.expect("get"),
        Some(b"c-4-07-w3".to_vec())
    );
}

mod mariadb_gaps {
    use super::*;
    use sqlx::{MySql, Transaction};

    /// Inserts one event in `tx` without committing; returns its position.
    async fn insert_raw(tx: &mut Transaction<'static, MySql>, aggregate_id: &str) -> u64 {
        let result = sqlx::query(
            "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
             event_version, event_id, correlation_id, causation_id, actor, recorded_at, payload) \
             VALUES ('order', ?, 1, 'thing_happened', 1, ?, ?, NULL, NULL, ?, 'held')",
        )
        .bind(aggregate_id)
        .bind(&Uuid::new_v4().as_bytes()[..])
        .bind(&Uuid::new_v4().as_bytes()[..])
        .bind(Utc::now().timestamp_micros())
        .execute(&mut **tx)
        .await
        .expect("raw insert");
        result.last_insert_id()
    }

    fn positions(events: &[StoredEvent]) -> Vec<u64> {
        events.iter().map(|e| e.position).collect()
    }

    /// A holds p open, B commits q > p: readers see q first; p appears at A's commit.
    async fn hold_a_position_open(
        db: &support::MySqlTestDb,
    ) -> (Transaction<'static, MySql>, u64, u64) {
        let store = &db.store;
        store
            .append(batch(vec![stream("order", "before", 0, 1)]))
            .await
            .expect("append");
        let mut a = store.pool().begin().await.expect("begin A");
        let p = insert_raw(&mut a, "held").await;
        let committed: Committed = store
            .append(batch(vec![stream("order", "b", 0, 1)]))
            .await
            .expect("B appends while A is open");
        let q = committed.position;
        assert!(q > p, "q={q} p={p}");
        assert_eq!(
            positions(&store.read_all(p - 1, 100).await.expect("read")),
            vec![q]
        );
        assert_eq!(store.head_position().await.expect("head"), q);
        (a, p, q)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn open_transaction_gap_fills_at_commit() {
        let db = support::fresh_mysql().await;
        let started = Utc::now();
        let (a, p, q) = hold_a_position_open(&db).await;
        assert!(
            db.gap_may_fill(Utc::now()).await.expect("gap"),
            "A is open and has written"
        );
        // A transaction that began after `since` cannot hold a position seen at `since`.
        assert!(gap_settles(&*db.store, || started - Duration::seconds(2)).await);
        assert!(
            db.gap_may_fill(Utc::now()).await.expect("gap"),
            "still open"
        );

        a.commit().await.expect("commit A");
        assert_eq!(
            positions(&db.read_all(p - 1, 100).await.expect("read")),
            vec![p, q]
        );
        assert!(gap_settles(&*db.store, Utc::now).await);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rolled_back_gap_stops_waiting() {
        let db = support::fresh_mysql().await;
        let (a, p, q) = hold_a_position_open(&db).await;
        assert!(db.gap_may_fill(Utc::now()).await.expect("gap"));

        a.rollback().await.expect("rollback A");
        assert!(gap_settles(&*db.store, Utc::now).await);
        assert_eq!(
            positions(&db.read_all(p - 1, 100).await.expect("read")),
            vec![q]
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_only_transaction_is_not_a_gap() {
        let db = support::fresh_mysql().await;
        let mut a = db.pool().begin().await.expect("begin");
        sqlx::query("SELECT COUNT(*) FROM events FOR UPDATE")
            .execute(&mut *a)
            .await
            .expect("read");
        assert!(gap_settles(&*db.store, Utc::now).await);
        a.rollback().await.expect("rollback");
    }
}
