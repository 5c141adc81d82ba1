//! The command engine: loads an aggregate (snapshot + events), lets it decide, encodes the
//! events and appends them, several aggregates in one transaction when a command spans them.
//! It only talks to ports.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::codec::{self, Aad, Codec, NewKeys};
use crate::domain::{Context, EventSourced};
use crate::envelope::{
    AppendBatch, CommandContext, Committed, NewEvent, RecordedEvent, Reservation, StoredEvent,
    StreamAppend,
};
use crate::error::{KernelError, KernelResult};
use crate::ports::{EventStore, SnapshotStore};

/// How many times a command is decided again after losing an optimistic-lock race.
const MAX_CONFLICT_RETRIES: usize = 8;
/// Snapshot envelopes larger than this are treated as corrupt rather than allocated.
const MAX_SNAPSHOT_BYTES: usize = 64 << 20;

/// An aggregate as loaded from the store.
#[derive(Debug)]
pub struct Loaded<A> {
    pub state: A,
    pub sequence: u64,
    pub last_event_id: Option<Uuid>,
    /// Whether a snapshot was used (for tests and metrics).
    pub from_snapshot: bool,
}

/// The events one aggregate decided, ready to join a unit of work.
#[derive(Debug)]
pub struct Decision<A: Aggregate> {
    pub aggregate_id: String,
    pub base_sequence: u64,
    pub events: Vec<A::Event>,
    pub state_after: A,
}

struct PendingStream {
    aggregate_type: &'static str,
    aggregate_id: String,
    expected_sequence: u64,
    events: Vec<PendingEvent>,
    /// The state after the events and its schema fingerprint, for snapshotting.
    state_after: serde_json::Value,
    fingerprint: String,
}

struct PendingEvent {
    event_id: Uuid,
    event_type: String,
    event_version: i32,
    json: Vec<u8>,
}

/// Everything one command appends: one or more aggregates, committed atomically.
#[derive(Default)]
pub struct UnitOfWork {
    streams: Vec<PendingStream>,
    reservations: Vec<Reservation>,
    releases: Vec<Reservation>,
}

impl UnitOfWork {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a decision; a decision with no events adds nothing.
    pub fn push<A: EventSourced>(&mut self, decision: Decision<A>) -> KernelResult<()> {
        if decision.events.is_empty() {
            return Ok(());
        }
        let mut events = Vec::with_capacity(decision.events.len());
        for event in &decision.events {
            events.push(PendingEvent {
                event_id: Uuid::now_v7(),
                event_type: event.event_type(),
                event_version: event.event_version().parse().unwrap_or(1),
                json: serde_json::to_vec(event)?,
            });
        }
        self.streams.push(PendingStream {
            aggregate_type: A::TYPE,
            aggregate_id: decision.aggregate_id,
            expected_sequence: decision.base_sequence,
            events,
            state_after: serde_json::to_value(&decision.state_after)?,
            fingerprint: state_fingerprint::<A>(),
        });
        Ok(())
    }

    pub fn reserve(&mut self, reservation: Reservation) {
        self.reservations.push(reservation);
    }

    pub fn release(&mut self, reservation: Reservation) {
        self.releases.push(reservation);
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }
}

#[derive(Clone)]
pub struct Engine {
    store: Arc<dyn EventStore>,
    snapshots: Arc<dyn SnapshotStore>,
    codec: Arc<Codec>,
    snapshot_every: Arc<dyn Fn(&str) -> u64 + Send + Sync>,
    appended: Arc<Notify>,
    /// Whether the event store also holds the data keys (new keys then ride in the append).
    keys_with_events: bool,
}

/// The bincode-framed snapshot as it sits in Redis or in memory.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotEnvelope {
    fingerprint: String,
    sequence: u64,
    last_event_id: Uuid,
    /// SHA-256 of the plaintext state JSON.
    checksum: [u8; 32],
    /// The state JSON, through the payload codec (so forgetting the key also kills it).
    state: Vec<u8>,
}

impl Engine {
    pub fn new(
        store: Arc<dyn EventStore>,
        snapshots: Arc<dyn SnapshotStore>,
        codec: Arc<Codec>,
        snapshot_every: Arc<dyn Fn(&str) -> u64 + Send + Sync>,
    ) -> Self {
        // Same object: its event and key tables share a database, so a new aggregate's key
        // can go into the append's transaction.
        let keys_with_events = std::ptr::eq(
            Arc::as_ptr(&store).cast::<()>(),
            Arc::as_ptr(codec.key_store()).cast::<()>(),
        );
        Self {
            store,
            snapshots,
            codec,
            snapshot_every,
            appended: Arc::new(Notify::new()),
            keys_with_events,
        }
    }

    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    pub fn codec(&self) -> &Arc<Codec> {
        &self.codec
    }

    pub fn snapshots(&self) -> &Arc<dyn SnapshotStore> {
        &self.snapshots
    }

    /// Woken after every commit, so in-process feeds need not wait for their next poll.
    pub fn appended(&self) -> Arc<Notify> {
        self.appended.clone()
    }

    /// Loads an aggregate: a verified snapshot plus the events after it, or a full replay.
    pub async fn load<A: EventSourced>(&self, aggregate_id: &str) -> KernelResult<Loaded<A>> {
        if let Some(loaded) = self.load_from_snapshot::<A>(aggregate_id).await? {
            return Ok(loaded);
        }
        let events = self.store.load_stream(A::TYPE, aggregate_id, 0).await?;
        let mut loaded = Loaded {
            state: A::default(),
            sequence: 0,
            last_event_id: None,
            from_snapshot: false,
        };
        self.apply_stored(&mut loaded, &events).await?;
        Ok(loaded)
    }

    /// Uses a snapshot only if the event it claims to end at is really in the store.
    async fn load_from_snapshot<A: EventSourced>(
        &self,
        aggregate_id: &str,
    ) -> KernelResult<Option<Loaded<A>>> {
        let Some((state, sequence, last_event_id)) = self.read_snapshot::<A>(aggregate_id).await
        else {
            return Ok(None);
        };
        let events = self
            .store
            .load_stream(A::TYPE, aggregate_id, sequence - 1)
            .await?;
        match events.first() {
            Some(first) if first.sequence == sequence && first.event_id == last_event_id => {}
            _ => {
                tracing::warn!(
                    aggregate_type = A::TYPE,
                    aggregate_id,
                    sequence,
                    "snapshot does not match the stream (from the future or forked); replaying"
                );
                return Ok(None);
            }
        }
        let mut loaded = Loaded {
            state,
            sequence,
            last_event_id: Some(last_event_id),
            from_snapshot: true,
        };
        self.apply_stored(&mut loaded, &events[1..]).await?;
        Ok(Some(loaded))
    }

    async fn apply_stored<A: EventSourced>(
        &self,
        loaded: &mut Loaded<A>,
        events: &[StoredEvent],
    ) -> KernelResult<()> {
        for stored in events {
            if stored.sequence != loaded.sequence + 1 {
                return Err(KernelError::storage(format!(
                    "stream {}/{} jumps from sequence {} to {}",
                    stored.aggregate_type, stored.aggregate_id, loaded.sequence, stored.sequence
                )));
            }
            let json = self.decode_payload(stored).await?;
            let value: serde_json::Value = serde_json::from_slice(&json)?;
            let value = A::upcast(&stored.event_type, stored.event_version, value)?;
            let event: A::Event = serde_json::from_value(value)?;
            loaded.state.apply(event);
            loaded.sequence = stored.sequence;
            loaded.last_event_id = Some(stored.event_id);
        }
        Ok(())
    }

    async fn decode_payload(&self, stored: &StoredEvent) -> KernelResult<Vec<u8>> {
        let key_id = codec::key_id(&stored.aggregate_type, &stored.aggregate_id);
        let aad = Aad {
            aggregate_id: &stored.aggregate_id,
            sequence: stored.sequence,
            event_id: stored.event_id,
        };
        self.codec.decode(&key_id, &aad, &stored.payload).await
    }

    /// Decodes a stored event for projections and the WebSocket: a forgotten payload
    /// becomes `data: None`.
    pub async fn record(&self, stored: StoredEvent) -> KernelResult<RecordedEvent> {
        self.record_or_keep(stored).await.map_err(|(err, _)| err)
    }

    /// Like [`record`](Self::record), but a failure hands the stored event back (so a caller
    /// that parks undecodable events needs no copy of every event it decodes).
    pub async fn record_or_keep(
        &self,
        stored: StoredEvent,
    ) -> Result<RecordedEvent, (KernelError, StoredEvent)> {
        let decoded = match self.decode_payload(&stored).await {
            Ok(json) => serde_json::from_slice(&json)
                .map_err(KernelError::from)
                .and_then(|value| {
                    crate::domain::upcast(
                        &stored.aggregate_type,
                        &stored.event_type,
                        stored.event_version,
                        value,
                    )
                    .map_err(KernelError::from)
                })
                .map(Some),
            Err(KernelError::Forgotten(_)) => Ok(None),
            Err(other) => Err(other),
        };
        let data = match decoded {
            Ok(data) => data,
            Err(err) => return Err((err, stored)),
        };
        Ok(RecordedEvent {
            position: stored.position,
            context: Context::of_aggregate(&stored.aggregate_type).as_str(),
            aggregate_type: stored.aggregate_type,
            aggregate_id: stored.aggregate_id,
            sequence: stored.sequence,
            event_type: stored.event_type,
            event_version: stored.event_version,
            event_id: stored.event_id,
            correlation_id: stored.correlation_id,
            causation_id: stored.causation_id,
            actor: stored.actor,
            recorded_at: stored.recorded_at,
            data,
        })
    }

    /// Loads an aggregate and lets it handle a command, without writing anything.
    pub async fn decide<A: EventSourced>(
        &self,
        aggregate_id: &str,
        command: A::Command,
        services: &A::Services,
    ) -> KernelResult<Decision<A>>
    where
        KernelError: From<A::Error>,
    {
        let loaded = self.load::<A>(aggregate_id).await?;
        Self::decide_on(aggregate_id, loaded, command, services).await
    }

    /// Lets an already loaded aggregate handle a command.
    pub async fn decide_on<A: EventSourced>(
        aggregate_id: &str,
        loaded: Loaded<A>,
        command: A::Command,
        services: &A::Services,
    ) -> KernelResult<Decision<A>>
    where
        KernelError: From<A::Error>,
    {
        let mut state = loaded.state;
        let sink = cqrs_es::event_sink::EventSink::<A>::default();
        state.handle(command, services, &sink).await?;
        Ok(Decision {
            aggregate_id: aggregate_id.to_string(),
            base_sequence: loaded.sequence,
            events: sink.collect().await,
            state_after: state,
        })
    }

    /// Runs a command on one aggregate, deciding again on a lost race.
    pub async fn execute<A, F>(
        &self,
        aggregate_id: &str,
        command: F,
        services: &A::Services,
        ctx: &CommandContext,
    ) -> KernelResult<Committed>
    where
        A: EventSourced,
        KernelError: From<A::Error>,
        F: Fn() -> A::Command + Send + Sync,
    {
        self.run(ctx, || async {
            let mut uow = UnitOfWork::new();
            uow.push(self.decide::<A>(aggregate_id, command(), services).await?)?;
            Ok(uow)
        })
        .await
    }

    /// Runs a command that creates its aggregate: decided on the empty state and appended as
    /// the stream's first event, without reading the store or a snapshot first. The append's
    /// optimistic lock is the existence check: if the stream exists (or deciding on the
    /// empty state gave no events), it runs as [`execute`](Self::execute) does, on the loaded
    /// state, which gives the aggregate's own answer (such as "already exists").
    pub async fn create<A, F>(
        &self,
        aggregate_id: &str,
        command: F,
        services: &A::Services,
        ctx: &CommandContext,
    ) -> KernelResult<Committed>
    where
        A: EventSourced,
        KernelError: From<A::Error>,
        F: Fn() -> A::Command + Send + Sync,
    {
        let blind = std::sync::atomic::AtomicBool::new(true);
        self.run(ctx, || async {
            let first = blind.swap(false, std::sync::atomic::Ordering::Relaxed);
            let empty = Loaded {
                state: A::default(),
                sequence: 0,
                last_event_id: None,
                from_snapshot: false,
            };
            let decision = match first {
                true => match Self::decide_on(aggregate_id, empty, command(), services).await {
                    Ok(decision) if !decision.events.is_empty() => decision,
                    _ => self.decide::<A>(aggregate_id, command(), services).await?,
                },
                false => self.decide::<A>(aggregate_id, command(), services).await?,
            };
            let mut uow = UnitOfWork::new();
            uow.push(decision)?;
            Ok(uow)
        })
        .await
    }

    /// Builds a unit of work and commits it, building it again (on fresh state) when
    /// another writer won the race, a bounded number of times. A repeated idempotency key
    /// returns the first result without building anything.
    pub async fn run<F, Fut>(&self, ctx: &CommandContext, mut build: F) -> KernelResult<Committed>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = KernelResult<UnitOfWork>>,
    {
        if let Some(first) = self.idempotent_replay(ctx).await? {
            return Ok(first);
        }
        let mut attempt = 0;
        loop {
            let outcome = match build().await {
                Ok(uow) => self.commit(uow, ctx).await,
                Err(err) => Err(err),
            };
            match outcome {
                Ok(committed) => return Ok(committed),
                // A racer with the same idempotency key may have committed since we looked:
                // its result is the answer, not our rejection or conflict.
                Err(err) if ctx.idempotency.is_some() => {
                    if let Some(first) = self.idempotent_replay(ctx).await? {
                        return Ok(first);
                    }
                    if !matches!(err, KernelError::Conflict { .. })
                        || attempt >= MAX_CONFLICT_RETRIES
                    {
                        return Err(err);
                    }
                }
                Err(KernelError::Conflict { .. }) if attempt < MAX_CONFLICT_RETRIES => {}
                Err(err) => return Err(err),
            }
            attempt += 1;
            let jitter = rand::random::<u64>() % (1 + 2 * attempt as u64);
            tokio::time::sleep(Duration::from_millis(jitter)).await;
        }
    }

    /// The first result stored under the context's idempotency key, if the same request was
    /// already committed; an error if the key was used with another request.
    pub async fn idempotent_replay(&self, ctx: &CommandContext) -> KernelResult<Option<Committed>> {
        let Some(idempotency) = &ctx.idempotency else {
            return Ok(None);
        };
        match self.store.idempotent_result(&idempotency.key).await? {
            Some(first) if first.request_hash == idempotency.request_hash => {
                Ok(Some(first.committed))
            }
            Some(_) => Err(KernelError::IdempotencyMismatch(idempotency.key.clone())),
            None => Ok(None),
        }
    }

    /// Encodes and appends a unit of work, then snapshots what crossed a snapshot boundary.
    pub async fn commit(&self, uow: UnitOfWork, ctx: &CommandContext) -> KernelResult<Committed> {
        if uow.streams.is_empty() {
            return Err(KernelError::storage("a unit of work with no events"));
        }
        let mut streams = Vec::with_capacity(uow.streams.len());
        let mut write_keys = Vec::with_capacity(uow.streams.len());
        for pending in &uow.streams {
            let key_id = codec::key_id(pending.aggregate_type, &pending.aggregate_id);
            // Two streams of one aggregate share its key (a second new key under the same
            // id would clash with the first on every retry).
            let index = match write_keys.iter().position(|(id, _)| *id == key_id) {
                Some(index) => index,
                None => {
                    let new_keys = match (self.keys_with_events, pending.expected_sequence) {
                        (false, _) => NewKeys::StoreNow,
                        (true, 0) => NewKeys::WithAppendUnasked,
                        (true, _) => NewKeys::WithAppend,
                    };
                    let key = self.codec.write_key(&key_id, new_keys).await?;
                    write_keys.push((key_id, key));
                    write_keys.len() - 1
                }
            };
            let key = &write_keys[index].1;
            let mut events = Vec::with_capacity(pending.events.len());
            for (offset, event) in pending.events.iter().enumerate() {
                let aad = Aad {
                    aggregate_id: &pending.aggregate_id,
                    sequence: pending.expected_sequence + 1 + offset as u64,
                    event_id: event.event_id,
                };
                events.push(NewEvent {
                    event_id: event.event_id,
                    event_type: event.event_type.clone(),
                    event_version: event.event_version,
                    payload: self.codec.seal_with(key, &aad, &event.json)?,
                });
            }
            streams.push(StreamAppend {
                aggregate_type: pending.aggregate_type.to_string(),
                aggregate_id: pending.aggregate_id.clone(),
                expected_sequence: pending.expected_sequence,
                events,
            });
        }
        let batch = AppendBatch {
            streams,
            correlation_id: ctx.correlation_id.unwrap_or_else(Uuid::now_v7),
            causation_id: ctx.causation_id,
            actor: ctx.actor.clone(),
            recorded_at: Utc::now(),
            idempotency: ctx.idempotency.clone(),
            reservations: uow.reservations,
            releases: uow.releases,
            new_keys: write_keys
                .iter()
                .filter_map(|(_, key)| key.new_key().cloned())
                .collect(),
        };
        let committed = match self.store.append(batch).await {
            Ok(committed) => committed,
            Err(err) => {
                if matches!(err, KernelError::Conflict { .. }) {
                    for (key_id, key) in &write_keys {
                        if key.new_key().is_some() {
                            self.codec.learn(key_id).await;
                        }
                    }
                }
                return Err(err);
            }
        };
        for (_, key) in &write_keys {
            self.codec.remember(key);
        }
        self.appended.notify_waiters();
        metrics::counter!("quintet_commands_committed_total").increment(1);
        for pending in uow.streams {
            self.maybe_snapshot(pending, &committed).await;
        }
        Ok(committed)
    }

    /// Snapshots are disposable: a failure is logged, never returned (Redis being down must
    /// not fail a committed command).
    async fn maybe_snapshot(&self, pending: PendingStream, committed: &Committed) {
        let every = (self.snapshot_every)(pending.aggregate_type).max(1);
        let Some(stream) = committed.stream(pending.aggregate_type, &pending.aggregate_id) else {
            return;
        };
        if pending.expected_sequence / every == stream.sequence / every {
            return;
        }
        let Some(last_event_id) = stream.event_ids.last().copied() else {
            return;
        };
        if let Err(err) = self
            .write_snapshot(
                pending.aggregate_type,
                &pending.aggregate_id,
                &pending.fingerprint,
                stream.sequence,
                last_event_id,
                &pending.state_after,
            )
            .await
        {
            tracing::warn!(aggregate_type = pending.aggregate_type, aggregate_id = %pending.aggregate_id, error = %err, "snapshot not written");
        }
    }

    async fn write_snapshot(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        fingerprint: &str,
        sequence: u64,
        last_event_id: Uuid,
        state: &serde_json::Value,
    ) -> KernelResult<()> {
        let json = serde_json::to_vec(state)?;
        let aad = Aad {
            aggregate_id,
            sequence,
            event_id: last_event_id,
        };
        let envelope = SnapshotEnvelope {
            fingerprint: fingerprint.to_string(),
            sequence,
            last_event_id,
            checksum: Sha256::digest(&json).into(),
            state: self
                .codec
                .encode(&codec::key_id(aggregate_type, aggregate_id), &aad, &json)
                .await?,
        };
        let bytes = bincode::serde::encode_to_vec(&envelope, bincode::config::standard())
            .map_err(|err| KernelError::storage(format!("snapshot encode: {err}")))?;
        self.snapshots
            .put(
                &snapshot_key(aggregate_type, aggregate_id, fingerprint),
                bytes,
            )
            .await
    }

    /// Writes a snapshot of an aggregate's current state now (the `POST /snapshots` route).
    pub async fn snapshot_now<A: EventSourced>(&self, aggregate_id: &str) -> KernelResult<u64> {
        let loaded = self.load::<A>(aggregate_id).await?;
        let Some(last_event_id) = loaded.last_event_id else {
            return Ok(0);
        };
        self.write_snapshot(
            A::TYPE,
            aggregate_id,
            &state_fingerprint::<A>(),
            loaded.sequence,
            last_event_id,
            &serde_json::to_value(&loaded.state)?,
        )
        .await?;
        Ok(loaded.sequence)
    }

    /// Any problem with a snapshot (missing, unreadable, wrong checksum, Redis down) means
    /// "no snapshot": the caller replays. Returns the state, its sequence and last event id.
    pub async fn read_snapshot<A: EventSourced>(
        &self,
        aggregate_id: &str,
    ) -> Option<(A, u64, Uuid)> {
        let key = snapshot_key(A::TYPE, aggregate_id, &state_fingerprint::<A>());
        let bytes = match self.snapshots.get(&key).await {
            Ok(Some(bytes)) => bytes,
            Ok(None) => return None,
            Err(err) => {
                tracing::warn!(error = %err, "snapshot store unavailable; replaying");
                return None;
            }
        };
        match self.open_snapshot::<A>(aggregate_id, &bytes).await {
            Ok(found) => found,
            Err(reason) => {
                tracing::warn!(aggregate_type = A::TYPE, aggregate_id, %reason, "discarding snapshot");
                None
            }
        }
    }

    async fn open_snapshot<A: EventSourced>(
        &self,
        aggregate_id: &str,
        bytes: &[u8],
    ) -> Result<Option<(A, u64, Uuid)>, String> {
        let envelope = decode_envelope(bytes)?;
        if envelope.fingerprint != state_fingerprint::<A>() || envelope.sequence == 0 {
            return Err("schema fingerprint or sequence mismatch".into());
        }
        let aad = Aad {
            aggregate_id,
            sequence: envelope.sequence,
            event_id: envelope.last_event_id,
        };
        let json = self
            .codec
            .decode(&codec::key_id(A::TYPE, aggregate_id), &aad, &envelope.state)
            .await
            .map_err(|err| format!("unreadable: {err}"))?;
        if <[u8; 32]>::from(Sha256::digest(&json)) != envelope.checksum {
            return Err("checksum mismatch".into());
        }
        let state: A = serde_json::from_slice(&json).map_err(|err| format!("state: {err}"))?;
        Ok(Some((state, envelope.sequence, envelope.last_event_id)))
    }

    /// Crypto-shreds an aggregate id: deletes its data keys, purges its snapshots and appends
    /// an `aggregate_forgotten` event per key so projections replace their copies with a
    /// tombstone. Returns the key ids that were forgotten.
    pub async fn forget(&self, aggregate_id: &str, actor: &str) -> KernelResult<Vec<String>> {
        use crate::domain::projection::{AGGREGATE_FORGOTTEN, SYSTEM_AGGREGATE};
        let key_ids = self.store_keys_for(aggregate_id).await?;
        let mut forgotten = Vec::new();
        for key_id in key_ids {
            self.codec.forget(&key_id).await?;
            let Some((aggregate_type, id)) = key_id.split_once('/') else {
                continue;
            };
            if let Err(err) = self
                .snapshots
                .purge(&format!("snap:{aggregate_type}:{id}:"))
                .await
            {
                tracing::warn!(error = %err, "snapshot purge failed; snapshots are unreadable anyway");
            }
            let data = serde_json::json!({"aggregate_type": aggregate_type, "aggregate_id": id});
            let sequence = self.stream_sequence(SYSTEM_AGGREGATE, &key_id).await?;
            if sequence > 0 {
                // Forgotten before: the tombstone event exists; deleting and purging again
                // above was harmless.
                forgotten.push(key_id);
                continue;
            }
            let batch = AppendBatch {
                streams: vec![StreamAppend {
                    aggregate_type: SYSTEM_AGGREGATE.to_string(),
                    aggregate_id: key_id.clone(),
                    expected_sequence: sequence,
                    events: vec![NewEvent {
                        event_id: Uuid::now_v7(),
                        event_type: AGGREGATE_FORGOTTEN.to_string(),
                        event_version: 1,
                        payload: codec::seal(
                            None,
                            &Aad {
                                aggregate_id: &key_id,
                                sequence: sequence + 1,
                                event_id: Uuid::nil(),
                            },
                            &serde_json::to_vec(&data)?,
                            &codec::CodecSettings {
                                compression_enabled: false,
                                encryption_enabled: false,
                                ..Default::default()
                            },
                        )?,
                    }],
                }],
                correlation_id: Uuid::now_v7(),
                causation_id: None,
                actor: Some(actor.to_string()),
                recorded_at: Utc::now(),
                idempotency: None,
                reservations: vec![],
                releases: vec![],
                new_keys: vec![],
            };
            self.store.append(batch).await?;
            forgotten.push(key_id);
        }
        self.appended.notify_waiters();
        Ok(forgotten)
    }

    async fn store_keys_for(&self, aggregate_id: &str) -> KernelResult<Vec<String>> {
        self.codec.key_store().key_ids_for(aggregate_id).await
    }

    async fn stream_sequence(&self, aggregate_type: &str, aggregate_id: &str) -> KernelResult<u64> {
        Ok(self
            .store
            .load_stream(aggregate_type, aggregate_id, 0)
            .await?
            .last()
            .map_or(0, |event| event.sequence))
    }
}

pub fn snapshot_key(aggregate_type: &str, aggregate_id: &str, fingerprint: &str) -> String {
    format!("snap:{aggregate_type}:{aggregate_id}:{fingerprint}")
}

/// The bincode decode of a stored snapshot envelope, size-limited so corrupt bytes cannot
/// make it allocate more than a snapshot may hold.
fn decode_envelope(bytes: &[u8]) -> Result<SnapshotEnvelope, String> {
    if bytes.len() > MAX_SNAPSHOT_BYTES {
        return Err("too large".into());
    }
    let (envelope, _): (SnapshotEnvelope, usize) = bincode::serde::decode_from_slice(
        bytes,
        bincode::config::standard().with_limit::<MAX_SNAPSHOT_BYTES>(),
    )
    .map_err(|err| format!("undecodable: {err}"))?;
    Ok(envelope)
}

/// The envelope decode that reading a snapshot does, exposed for the fuzz target: its
/// fingerprint and sequence, or why the bytes are no snapshot.
pub fn decode_snapshot_envelope(bytes: &[u8]) -> Result<(String, u64), String> {
    decode_envelope(bytes).map(|envelope| (envelope.fingerprint, envelope.sequence))
}

/// A fingerprint of an aggregate's state schema: its Rust type, its declared schema version
/// and the shape of its default JSON. A changed state type gets a new fingerprint, so old
/// snapshots are simply never found.
pub fn state_fingerprint<A: EventSourced>() -> String {
    let mut hasher = Sha256::new();
    hasher.update(std::any::type_name::<A>().as_bytes());
    hasher.update(A::STATE_SCHEMA_VERSION.to_le_bytes());
    if let Ok(default) = serde_json::to_value(A::default()) {
        hash_shape(&default, &mut hasher);
    }
    hex::encode(&hasher.finalize()[..8])
}

fn hash_shape(value: &serde_json::Value, hasher: &mut Sha256) {
    use serde_json::Value;
    match value {
        Value::Null => hasher.update(b"n"),
        Value::Bool(_) => hasher.update(b"b"),
        Value::Number(_) => hasher.update(b"#"),
        Value::String(_) => hasher.update(b"s"),
        Value::Array(items) => {
            hasher.update(b"[");
            items.iter().for_each(|item| hash_shape(item, hasher));
            hasher.update(b"]");
        }
        Value::Object(map) => {
            hasher.update(b"{");
            let mut keys: Vec<_> = map.keys().collect();
            keys.sort();
            for key in keys {
                hasher.update(key.as_bytes());
                hasher.update(b":");
                hash_shape(&map[key], hasher);
            }
            hasher.update(b"}");
        }
    }
}
