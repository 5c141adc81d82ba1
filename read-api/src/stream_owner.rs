//! Which events of the stream (`GET /ws`) a token acting for a user
//! ([`web::Claims::acting_user`]) receives: the events of the aggregates that user owns, and
//! those of the aggregate types that belong to nobody and that its REST reads show it too.
//!
//! | aggregate types | delivered to a token acting for `u` |
//! |---|---|
//! | repository `user`, event sourcing `es-user` | the aggregate id is `u` |
//! | repository `payment`, `order` | their `user_id` (set at creation, never changed) is `u` |
//! | `es-order`, `es-payment` | the `user_id` of their state after the event is `u` |
//! | `es-snapshot` | the snapshotted aggregate is delivered by the rules above (custom: yes) |
//! | `command` | the command's payload `user_id` is `u` |
//! | `command-notification`, `command-audit` | their `user_id` is `u` |
//! | `product`, `es-custom`, memento, mediator, `command-handler` | always (shared, like their REST reads) |
//! | `command-metrics`, `command-history`, `command-system`, anything else | never |
//!
//! Later events do not always carry the owner (`payment_updated`, `order_status_changed`):
//! it is then looked up (the first event of the stream in the event store, or the read
//! models for the event-sourcing orders and payments, whose owner can change) and kept in a
//! small bounded cache per connection, which every event of an owned type seen on the
//! connection also updates. The same rules and cache serve the replay (`from_position`) and
//! the live stream. An owner that cannot be found is not delivered.

use std::num::NonZeroUsize;

use lru::LruCache;
use serde_json::Value;

use kernel::domain::command::{AUDIT, COMMAND, HANDLER, NOTIFICATION};
use kernel::domain::event_sourcing::{AggregateKind, OWNER_KEY, SNAPSHOT_LOG};
use kernel::domain::repository::{ORDER, PAYMENT, PRODUCT, USER};
use kernel::domain::Context;
use kernel::envelope::RecordedEvent;
use kernel::ports::EventFilter;
use kernel::KernelResult;

use crate::ReadState;

/// Owners remembered per connection.
pub const OWNER_CACHE_CAPACITY: usize = 4096;

/// How an event's owner is found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Class {
    /// Belongs to nobody, and acting users read its kind over REST: delivered.
    Shared,
    /// Never delivered to an acting user.
    Hidden,
    /// The owner is known from the event itself.
    Owner(Option<String>),
    /// The owner is set by the stream's first event and never changes (repository payments
    /// and orders, commands): `(aggregate type, id)`.
    Fixed(String, String),
    /// An event-sourcing order or payment (its owner may change): its id.
    Mutable(String),
}

/// A bounded map of owners by `(aggregate type, id)`, the least recently stored entry
/// evicted first.
#[derive(Debug)]
struct OwnerCache {
    owners: LruCache<(String, String), Option<String>>,
}

impl Default for OwnerCache {
    fn default() -> Self {
        Self {
            owners: LruCache::new(NonZeroUsize::new(OWNER_CACHE_CAPACITY).expect("non-zero")),
        }
    }
}

impl OwnerCache {
    fn get(&self, key: &(String, String)) -> Option<&Option<String>> {
        self.owners.peek(key)
    }

    fn put(&mut self, key: (String, String), owner: Option<String>) {
        self.owners.put(key, owner);
    }

    fn len(&self) -> usize {
        self.owners.len()
    }
}

/// The filter of one connection whose token acts for `user`.
#[derive(Debug)]
pub struct OwnerFilter {
    user: String,
    cache: OwnerCache,
    /// The last position observed: an event seen again (a replay after a resubscription)
    /// must not take an owner back to an older one.
    observed: u64,
}

/// The text of a field of a JSON object.
fn text<'a>(value: Option<&'a Value>, field: &str) -> Option<&'a str> {
    value?.get(field)?.as_str()
}

/// What an event-sourcing order or payment event says about its owner: `Some(owner)` when
/// it sets the state (a creation) or names `user_id` (set or removed), `None` otherwise.
fn es_owner_change(event: &RecordedEvent) -> Option<Option<String>> {
    let data = event.data.as_ref()?.get("data")?.as_object()?;
    match data.get(OWNER_KEY) {
        Some(owner) => Some(owner.as_str().map(str::to_string)),
        None if event.sequence == 1 => Some(None),
        None => None,
    }
}

/// The owner a repository payment or order event, or a command event, names: `user_id`
/// (repository creations and deletions, a command's cancel and undo) or `payload.user_id`.
fn named_owner(data: Option<&Value>) -> Option<String> {
    text(data, "user_id")
        .or_else(|| text(data.and_then(|d| d.get("payload")), "user_id"))
        .map(str::to_string)
}

fn classify(event: &RecordedEvent) -> Class {
    let kind = event.aggregate_type.as_str();
    let id = || event.aggregate_id.clone();
    let data = event.data.as_ref();
    match Context::of_aggregate(kind) {
        Context::Memento | Context::Mediator => Class::Shared,
        Context::Repository => match kind {
            USER => Class::Owner(Some(id())),
            PRODUCT => Class::Shared,
            PAYMENT | ORDER => Class::Fixed(kind.to_string(), id()),
            _ => Class::Hidden,
        },
        Context::EventSourcing => {
            let of = |kind: AggregateKind| match kind {
                AggregateKind::User => Class::Owner(Some(id())),
                AggregateKind::Custom => Class::Shared,
                AggregateKind::Order | AggregateKind::Payment => Class::Mutable(id()),
            };
            if kind == SNAPSHOT_LOG {
                match text(data, "aggregate_type").and_then(AggregateKind::parse) {
                    Some(snapshotted) => of(snapshotted),
                    None => Class::Hidden,
                }
            } else {
                AggregateKind::from_store_type(kind).map_or(Class::Hidden, of)
            }
        }
        Context::Command => match kind {
            COMMAND => Class::Fixed(kind.to_string(), id()),
            NOTIFICATION | AUDIT => Class::Owner(text(data, "user_id").map(str::to_string)),
            HANDLER => Class::Shared,
            _ => Class::Hidden,
        },
        Context::System => Class::Hidden,
    }
}

impl OwnerFilter {
    pub fn new(user: &str) -> Self {
        OwnerFilter {
            user: user.to_string(),
            cache: OwnerCache::default(),
            observed: 0,
        }
    }

    /// Owners this connection remembers (for tests: the cache stays bounded).
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// Learns what `event` says about its aggregate's owner. Call it with every event the
    /// connection sees, in order, whether it is delivered or not.
    pub fn observe(&mut self, event: &RecordedEvent) {
        if event.position <= self.observed {
            return;
        }
        self.observed = event.position;
        match classify(event) {
            Class::Mutable(id) => {
                let is_snapshot = event.aggregate_type == SNAPSHOT_LOG;
                if let Some(owner) = es_owner_change(event).filter(|_| !is_snapshot) {
                    self.cache.put(("es".into(), id), owner);
                }
            }
            Class::Fixed(kind, id) => {
                if let Some(owner) = named_owner(event.data.as_ref()) {
                    self.cache.put((kind, id), Some(owner));
                }
            }
            _ => {}
        }
    }

    /// Whether the connection's user may receive `event` (after [`observe`](Self::observe)).
    pub async fn allows(&mut self, state: &ReadState, event: &RecordedEvent) -> KernelResult<bool> {
        let owner = match classify(event) {
            Class::Shared => return Ok(true),
            Class::Hidden => return Ok(false),
            Class::Owner(owner) => owner,
            Class::Fixed(kind, id) => {
                let key = (kind, id);
                match self.cache.get(&key) {
                    Some(owner) => owner.clone(),
                    None => {
                        let owner = first_event_owner(state, &key.0, &key.1).await?;
                        self.cache.put(key, owner.clone());
                        owner
                    }
                }
            }
            Class::Mutable(id) => {
                let key = ("es".to_string(), id);
                match self.cache.get(&key) {
                    Some(owner) => owner.clone(),
                    None => {
                        let owner =
                            crate::event_sourcing::state_owner(state.read.as_ref(), &key.1).await?;
                        // Not cached when unknown: the read models may not have it yet.
                        if owner.is_some() {
                            self.cache.put(key, owner.clone());
                        }
                        owner
                    }
                }
            }
        };
        Ok(owner.as_deref() == Some(self.user.as_str()))
    }
}

/// The owner the first event of a stream names (see [`named_owner`]).
async fn first_event_owner(
    state: &ReadState,
    aggregate_type: &str,
    id: &str,
) -> KernelResult<Option<String>> {
    let filter = EventFilter {
        aggregate_types: vec![aggregate_type.to_string()],
        aggregate_id: Some(id.to_string()),
        ..Default::default()
    };
    let page = state.engine.store().query_events(&filter, 0, 1).await?;
    let Some(first) = page.events.into_iter().next() else {
        return Ok(None);
    };
    let recorded = state.engine.record(first).await?;
    Ok(named_owner(recorded.data.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use uuid::Uuid;

    fn next_position() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        static POSITION: AtomicU64 = AtomicU64::new(1);
        POSITION.fetch_add(1, Ordering::SeqCst)
    }

    fn event(aggregate_type: &str, id: &str, sequence: u64, data: Value) -> RecordedEvent {
        RecordedEvent {
            position: next_position(),
            context: Context::of_aggregate(aggregate_type).as_str(),
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: id.to_string(),
            sequence,
            event_type: "t".into(),
            event_version: 1,
            event_id: Uuid::nil(),
            correlation_id: Uuid::nil(),
            causation_id: None,
            actor: None,
            recorded_at: chrono::Utc::now(),
            data: Some(data),
        }
    }

    #[test]
    fn event_types_are_classified() {
        let e = |t: &str, id: &str, data: Value| classify(&event(t, id, 1, data));
        assert_eq!(e(USER, "ann", json!({})), Class::Owner(Some("ann".into())));
        assert_eq!(
            e("es-user", "ann", json!({})),
            Class::Owner(Some("ann".into()))
        );
        assert_eq!(e(PRODUCT, "p", json!({})), Class::Shared);
        assert_eq!(e("es-custom", "c", json!({})), Class::Shared);
        assert_eq!(e("caretaker", "c", json!({})), Class::Shared);
        assert_eq!(e("mediator", "m", json!({})), Class::Shared);
        assert_eq!(e(HANDLER, "payment", json!({})), Class::Shared);
        assert_eq!(
            e(PAYMENT, "p1", json!({})),
            Class::Fixed(PAYMENT.into(), "p1".into())
        );
        assert_eq!(
            e(COMMAND, "c1", json!({})),
            Class::Fixed(COMMAND.into(), "c1".into())
        );
        assert_eq!(e("es-order", "o1", json!({})), Class::Mutable("o1".into()));
        assert_eq!(
            e(SNAPSHOT_LOG, "o1", json!({"aggregate_type": "order"})),
            Class::Mutable("o1".into())
        );
        assert_eq!(
            e(SNAPSHOT_LOG, "ann", json!({"aggregate_type": "user"})),
            Class::Owner(Some("ann".into()))
        );
        assert_eq!(
            e(NOTIFICATION, "c1", json!({"user_id": "ann"})),
            Class::Owner(Some("ann".into()))
        );
        assert_eq!(e("command-metrics", "metrics", json!({})), Class::Hidden);
        assert_eq!(e("command-system", "c2", json!({})), Class::Hidden);
        assert_eq!(e("system", "x", json!({})), Class::Hidden);
    }

    #[test]
    fn owners_are_learned_from_the_events_seen() {
        let mut filter = OwnerFilter::new("ann");
        let key = |t: &str, id: &str| (t.to_string(), id.to_string());
        filter.observe(&event(PAYMENT, "p1", 1, json!({"user_id": "ann"})));
        assert_eq!(
            filter.cache.get(&key(PAYMENT, "p1")),
            Some(&Some("ann".into()))
        );
        filter.observe(&event(
            COMMAND,
            "c1",
            1,
            json!({"payload": {"user_id": "bob"}}),
        ));
        assert_eq!(
            filter.cache.get(&key(COMMAND, "c1")),
            Some(&Some("bob".into()))
        );
        // An es order: created without an owner, then given one, then handed on.
        let es = |seq, data| {
            event(
                "es-order",
                "o1",
                seq,
                json!({"type": "custom", "data": data}),
            )
        };
        filter.observe(&es(1, json!({"status": "pending"})));
        assert_eq!(filter.cache.get(&key("es", "o1")), Some(&None));
        filter.observe(&es(2, json!({"user_id": "ann"})));
        assert_eq!(
            filter.cache.get(&key("es", "o1")),
            Some(&Some("ann".into()))
        );
        filter.observe(&es(3, json!({"note": "x"})));
        assert_eq!(
            filter.cache.get(&key("es", "o1")),
            Some(&Some("ann".into()))
        );
        let handed_on = es(4, json!({"user_id": null}));
        filter.observe(&handed_on);
        assert_eq!(filter.cache.get(&key("es", "o1")), Some(&None));
        // Seen again (an older event in a later replay): nothing goes back.
        let mut older = es(2, json!({"user_id": "ann"}));
        older.position = handed_on.position;
        filter.observe(&older);
        assert_eq!(filter.cache.get(&key("es", "o1")), Some(&None));
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut filter = OwnerFilter::new("ann");
        for n in 0..OWNER_CACHE_CAPACITY + 10 {
            filter.observe(&event(
                PAYMENT,
                &format!("p{n}"),
                1,
                json!({"user_id": "bob"}),
            ));
        }
        assert_eq!(filter.cached(), OWNER_CACHE_CAPACITY);
        assert!(filter.cache.get(&("payment".into(), "p0".into())).is_none());
    }
}
