//! The production read-model store: MongoDB through the `mongodb` crate.
//!
//! Documents are stored as `{_id: <id>, d: <body>, _ev: {<aggregate hash>: <mark>}}`: the body
//! under `d`, so no body field can collide with `_id`; `_ev` holds, per aggregate that touched
//! the document, the last (event sequence, op index) applied to it. Each apply turns its ops
//! into `update`/`delete` commands, consecutive ops on one collection in one command (a bulk
//! of up to 1000 statements), so a batch costs a handful of round trips. Indexes on the fields
//! the read routes filter and sort by are created at start ([`MongoReadStore::migrate`]) and
//! for every new generation.
//!
//! # Guarantees without transactions
//!
//! A standalone server has no multi-document transactions, so an apply is not atomic. What
//! holds instead, and is enough for at-least-once delivery:
//!
//! - Every op of an event is idempotent on its own: its filter requires the document's mark
//!   for the event's aggregate to be below (sequence, op index), and it sets that mark in the
//!   same single-document update. A redelivered event (a crash between its ops and its
//!   version, or two appliers at once) re-runs only ops that did not take effect; an upsert
//!   or insert-if-absent that finds its document already marked fails with a duplicate key
//!   and counts as done.
//! - Ops run before versions, versions before the checkpoint (`$max`, so they never move
//!   back): a crash leaves the version and checkpoint behind the effects, never ahead, and the
//!   redelivery completes the batch. So a read model converges to a fresh replay.
//! - Parked entries are written before the effects and are idempotent by id.
//! - Not covered: a redelivered delete of a document that another aggregate re-created in
//!   between. Quintet's projections only share documents between aggregates through forget
//!   tombstones, which are terminal, and through counters (command metrics), which are never
//!   deleted.
//! - Readers may see a batch half applied for the duration of the apply.
//!
//! Generations: `collection` at generation 0, `collection__g{N}` after; the `_generations`
//! document of a projection names the active one and lists its collections, and reads resolve
//! through it on every call. A swap is one single-document update, fenced: the swap sets
//! `fence`, which live appliers wait on, waits a grace period (2 s) for applies already under
//! way, then checks that the shadow has seen every event the live copy has, and flips. Appliers
//! re-read the generation after writing and repeat the apply on the new generation if it
//! changed meanwhile. This assumes a single apply finishes within the grace period. The old
//! generation is dropped another grace period after the flip, for readers that resolved it
//! just before.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use futures::TryStreamExt;
use mongodb::bson::{doc, Bson, Document};
use mongodb::error::{ErrorKind, WriteFailure};
use mongodb::options::IndexOptions;
use mongodb::{Client, Database, IndexModel};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::domain::memento::projection::{CARETAKERS, HISTORY, MEMENTOS};
use crate::domain::DomainError;
use crate::error::{KernelError, KernelResult};
use crate::ports::{
    split_generation_key, AggregateVersions, ApplyReport, DocOp, DocPage, DocQuery, EventEffect,
    ParkedEvent, ParkedPage, ProjectedEvent, ReadStore, RetryReport, STATUS_COLLECTION,
};
use crate::spec::{Filter, Op};

const VERSIONS: &str = "_versions";
const CHECKPOINTS: &str = "_checkpoints";
const PARKED: &str = "_parked";
const GENERATIONS: &str = "_generations";
/// Separates the parts of composite `_id`s (never in names or keys).
const SEP: char = '\u{1f}';
/// Statements per `update`/`delete` command.
const BATCH: usize = 1000;
/// How long a live applier waits for a swap's fence to clear before failing (and retrying).
const FENCE_WAIT: Duration = Duration::from_secs(30);
const FENCE_POLL: Duration = Duration::from_millis(50);
/// A shadow whose builder has not applied anything for this long is abandoned.
const REBUILD_LEASE: Duration = Duration::from_secs(60);
/// Ops of one event: the op index takes the low 16 bits of a mark.
const MAX_OPS_PER_EVENT: usize = 1 << 16;
const DUPLICATE_KEY: i32 = 11000;

/// Secondary indexes of the read-model collections, on the fields the read routes filter and
/// sort by (body fields, under `d.`).
const INDEXES: &[(&str, &[&[&str]])] = &[
    (CARETAKERS, &[&["name"]]),
    (
        MEMENTOS,
        &[
            &["caretaker", "created_at"],
            &["caretaker", "originator_id", "created_at"],
            &["caretaker", "type", "created_at"],
            &["originator_id"],
            &["version"],
        ],
    ),
    (HISTORY, &[&["originator_id", "version"]]),
];

fn storage(err: impl std::fmt::Display) -> KernelError {
    KernelError::Storage(format!("mongodb: {err}"))
}

/// The key of a projection's generation: its versions, checkpoint and parked events.
fn projection_key(name: &str, generation: u64) -> String {
    if generation == 0 {
        name.to_string()
    } else {
        format!("{name}#{generation}")
    }
}

fn physical_collection(collection: &str, generation: u64) -> String {
    if generation == 0 {
        collection.to_string()
    } else {
        format!("{collection}__g{generation}")
    }
}

fn int(value: u64) -> KernelResult<Bson> {
    i64::try_from(value)
        .map(Bson::Int64)
        .map_err(|_| KernelError::Storage(format!("{value} does not fit MongoDB's int64")))
}

fn as_u64(value: Option<&Bson>) -> u64 {
    match value {
        Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
        Some(Bson::Double(x)) if *x >= 0.0 => *x as u64,
        _ => 0,
    }
}

/// JSON to BSON: integers stay int64 (exact), other numbers become doubles.
fn to_bson(value: &Value) -> Bson {
    match value {
        Value::Null => Bson::Null,
        Value::Bool(b) => Bson::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Bson::Int64(i),
            None => Bson::Double(n.as_f64().unwrap_or(f64::NAN)),
        },
        Value::String(s) => Bson::String(s.clone()),
        Value::Array(items) => Bson::Array(items.iter().map(to_bson).collect()),
        Value::Object(map) => Bson::Document(
            map.iter()
                .map(|(key, value)| (key.clone(), to_bson(value)))
                .collect(),
        ),
    }
}

/// BSON to JSON, for what this adapter stores (plus readable forms of other types).
fn to_json(value: &Bson) -> Value {
    match value {
        Bson::Null | Bson::Undefined => Value::Null,
        Bson::Boolean(b) => Value::Bool(*b),
        Bson::Int32(n) => Value::from(*n),
        Bson::Int64(n) => Value::from(*n),
        Bson::Double(x) => serde_json::Number::from_f64(*x).map_or(Value::Null, Value::Number),
        Bson::String(s) => Value::String(s.clone()),
        Bson::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Bson::Document(doc) => Value::Object(
            doc.iter()
                .map(|(key, value)| (key.clone(), to_json(value)))
                .collect(),
        ),
        other => other.clone().into_relaxed_extjson(),
    }
}

/// The body of a stored document.
fn body_of(doc: &Document) -> Value {
    doc.get("d").map_or(Value::Null, to_json)
}

/// Validates a field name (a dotted path of `[A-Za-z0-9_]` segments, as in the SQLite store)
/// and returns its path inside the stored document.
fn body_path(field: &str) -> KernelResult<String> {
    let valid = !field.is_empty()
        && field.split('.').all(|segment| {
            !segment.is_empty()
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_')
        });
    if !valid {
        return Err(KernelError::Storage(format!(
            "invalid read-model field name `{field}`: only [A-Za-z0-9_] segments joined by dots"
        )));
    }
    Ok(format!("d.{field}"))
}

/// The filter "`field` equals `value`", with JSON types respected: scalars never match inside
/// arrays, numbers compare numerically, `null` matches null or a missing field.
fn equals(field: &str, value: &Value) -> KernelResult<Document> {
    let path = body_path(field)?;
    Ok(match value {
        Value::Null => doc! { path: Bson::Null },
        Value::Array(_) | Value::Object(_) => doc! { path: { "$eq": to_bson(value) } },
        scalar => doc! { path: { "$eq": to_bson(scalar), "$not": { "$type": "array" } } },
    })
}

/// A specification as a filter over the body, with the semantics of [`crate::spec`] (the same
/// as the SQLite store's): comparisons hold only on a present scalar of the value's type (the
/// server's type bracketing does that for scalars, `$not: {$type: "array"}` keeps array fields
/// from matching element-wise), and `ne` and `not` are exact complements (`$nor`), so they
/// match missing fields.
fn spec_filter(filter: &Filter) -> KernelResult<Document> {
    Ok(match filter {
        Filter::And(nodes) | Filter::Or(nodes) => {
            if nodes.is_empty() {
                return Err(storage("specification: empty and/or"));
            }
            let operator = if matches!(filter, Filter::And(_)) {
                "$and"
            } else {
                "$or"
            };
            let nodes = nodes
                .iter()
                .map(|node| spec_filter(node).map(Bson::Document))
                .collect::<KernelResult<Vec<Bson>>>()?;
            doc! { operator: nodes }
        }
        Filter::Not(node) => doc! { "$nor": [spec_filter(node)?] },
        Filter::Condition { field, op, value } => spec_condition(field, *op, value)?,
    })
}

fn spec_condition(field: &str, op: Op, value: &Value) -> KernelResult<Document> {
    let path = body_path(field)?;
    let mut test = match op {
        Op::Ne => return Ok(doc! { "$nor": [spec_condition(field, Op::Eq, value)?] }),
        Op::Eq => doc! { "$eq": spec_scalar(value)? },
        Op::Gt => doc! { "$gt": spec_scalar(value)? },
        Op::Gte => doc! { "$gte": spec_scalar(value)? },
        Op::Lt => doc! { "$lt": spec_scalar(value)? },
        Op::Lte => doc! { "$lte": spec_scalar(value)? },
        Op::In => {
            let Value::Array(items) = value else {
                return Err(storage("specification: in needs an array"));
            };
            if items.is_empty() {
                return Err(storage("specification: empty in list"));
            }
            let items = items
                .iter()
                .map(spec_scalar)
                .collect::<KernelResult<Vec<Bson>>>()?;
            doc! { "$in": items }
        }
        Op::Contains => {
            let Value::String(needle) = value else {
                return Err(storage("specification: contains needs a string"));
            };
            doc! { "$regex": ascii_case_insensitive_pattern(needle) }
        }
    };
    test.insert("$not", doc! { "$type": "array" });
    Ok(doc! { path: test })
}

/// A specification value: a string, number or boolean.
fn spec_scalar(value: &Value) -> KernelResult<Bson> {
    match value {
        Value::String(_) | Value::Number(_) | Value::Bool(_) => Ok(to_bson(value)),
        Value::Null | Value::Array(_) | Value::Object(_) => Err(storage(
            "specification: values are strings, numbers or booleans",
        )),
    }
}

/// A regex matching `needle` as a literal substring, ignoring the case of ASCII letters only
/// (a class per letter rather than the `i` option, which would also fold non-ASCII letters
/// where SQLite's `lower()` does not). Punctuation is escaped, control characters written as
/// `\x{..}` (a pattern cannot hold a NUL), other characters are literal.
fn ascii_case_insensitive_pattern(needle: &str) -> String {
    let mut pattern = String::with_capacity(needle.len() * 2);
    for c in needle.chars() {
        if c.is_ascii_alphabetic() {
            pattern.push('[');
            pattern.push(c.to_ascii_lowercase());
            pattern.push(c.to_ascii_uppercase());
            pattern.push(']');
        } else if c.is_ascii_punctuation() {
            pattern.push('\\');
            pattern.push(c);
        } else if c.is_ascii_control() {
            pattern.push_str(&format!("\\x{{{:x}}}", u32::from(c)));
        } else {
            pattern.push(c);
        }
    }
    pattern
}

/// The `_ev` field holding an aggregate's mark in a document.
fn mark_field(aggregate_key: &str) -> String {
    let digest = Sha256::digest(aggregate_key.as_bytes());
    format!("_ev.h{}", &hex::encode(digest)[..16])
}

/// An op's idempotency mark: the event it belongs to and its index there.
#[derive(Debug, Clone)]
struct Mark {
    field: String,
    value: i64,
}

impl Mark {
    fn new(aggregate_key: &str, sequence: u64, index: usize) -> KernelResult<Mark> {
        if index >= MAX_OPS_PER_EVENT || sequence >= (1 << 46) {
            return Err(KernelError::Storage(format!(
                "event {sequence} of {aggregate_key} has too many ops or too high a sequence"
            )));
        }
        Ok(Mark {
            field: mark_field(aggregate_key),
            value: ((sequence as i64) << 16) | index as i64,
        })
    }

    /// Adds "not applied yet" to a filter.
    fn guard(mark: Option<&Mark>, mut filter: Document) -> Document {
        if let Some(mark) = mark {
            filter.insert(mark.field.clone(), doc! { "$not": { "$gte": mark.value } });
        }
        filter
    }
}

/// One statement of an `update` or `delete` command.
#[derive(Debug, Clone)]
enum Statement {
    Update {
        collection: String,
        statement: Document,
        /// A marked upsert: a duplicate key means it was applied already.
        marked_upsert: bool,
    },
    Delete {
        collection: String,
        statement: Document,
    },
}

impl Statement {
    fn collection(&self) -> &str {
        match self {
            Statement::Update { collection, .. } | Statement::Delete { collection, .. } => {
                collection
            }
        }
    }

    fn is_update(&self) -> bool {
        matches!(self, Statement::Update { .. })
    }

    fn document(&self) -> &Document {
        match self {
            Statement::Update { statement, .. } | Statement::Delete { statement, .. } => statement,
        }
    }

    fn duplicate_is_done(&self) -> bool {
        matches!(
            self,
            Statement::Update {
                marked_upsert: true,
                ..
            }
        )
    }
}

fn validate_op(op: &DocOp) -> KernelResult<()> {
    match op {
        DocOp::Upsert { doc, .. } | DocOp::InsertIfAbsent { doc, .. } => {
            if !doc.is_object() {
                return Err(KernelError::Storage("a document must be an object".into()));
            }
        }
        DocOp::Merge { patch, .. } => {
            let Some(fields) = patch.as_object() else {
                return Err(KernelError::Storage(
                    "a merge patch must be an object".into(),
                ));
            };
            for field in fields.keys() {
                body_path(field)?;
            }
        }
        DocOp::Increment { field, by, .. } => {
            body_path(field)?;
            if !by.is_finite() {
                return Err(KernelError::Storage(format!(
                    "cannot increment `{field}` by {by}"
                )));
            }
        }
        DocOp::Delete { .. } => {}
        DocOp::DeleteWhere { field, .. } | DocOp::TombstoneWhere { field, .. } => {
            body_path(field)?;
        }
    }
    Ok(())
}

/// Translates an op (already validated) into a statement on its physical collection.
fn statement(op: &DocOp, target: &Target, mark: Option<&Mark>) -> KernelResult<Option<Statement>> {
    let set_mark = |stages: &mut Vec<Document>| {
        if let Some(mark) = mark {
            stages.push(doc! { "$set": { mark.field.clone(): mark.value } });
        }
    };
    Ok(Some(match op {
        DocOp::Upsert {
            collection,
            id,
            doc,
        } => {
            // A pipeline, so the marks of other aggregates survive the replacement.
            let mut stages = vec![doc! { "$replaceWith": { "$mergeObjects": [
                { "_ev": { "$ifNull": ["$_ev", {}] } },
                { "_id": { "$literal": id.as_str() }, "d": { "$literal": to_bson(doc) } },
            ] } }];
            set_mark(&mut stages);
            Statement::Update {
                collection: target.physical(collection),
                statement: doc! {
                    "q": Mark::guard(mark, doc! { "_id": id.as_str() }),
                    "u": stages,
                    "upsert": true,
                },
                marked_upsert: mark.is_some(),
            }
        }
        DocOp::InsertIfAbsent {
            collection,
            id,
            doc,
        } => {
            // `$setOnInsert` changes nothing in a document that exists. Guarded like an
            // upsert: once marked, the filter misses, the insert hits the duplicate key, and
            // that counts as done.
            let mut on_insert = doc! { "d": to_bson(doc) };
            match mark {
                Some(mark) => on_insert.insert(mark.field.clone(), mark.value),
                None => on_insert.insert("_ev", Document::new()),
            };
            Statement::Update {
                collection: target.physical(collection),
                statement: doc! {
                    "q": Mark::guard(mark, doc! { "_id": id.as_str() }),
                    "u": { "$setOnInsert": on_insert },
                    "upsert": true,
                },
                marked_upsert: mark.is_some(),
            }
        }
        DocOp::Merge {
            collection,
            id,
            patch,
        } => {
            let mut set = Document::new();
            for (field, value) in patch.as_object().into_iter().flatten() {
                set.insert(body_path(field)?, to_bson(value));
            }
            if let Some(mark) = mark {
                set.insert(mark.field.clone(), mark.value);
            }
            if set.is_empty() {
                return Ok(None);
            }
            Statement::Update {
                collection: target.physical(collection),
                statement: doc! {
                    "q": Mark::guard(mark, doc! { "_id": id.as_str() }),
                    "u": { "$set": set },
                },
                marked_upsert: false,
            }
        }
        DocOp::Increment {
            collection,
            id,
            field,
            by,
        } => {
            let path = body_path(field)?;
            let current = format!("${path}");
            // Whole steps stay integers, so a counter reads back as 3 and not 3.0.
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            let by = if by.fract() == 0.0 && by.abs() < EXACT {
                Bson::Int64(*by as i64)
            } else {
                Bson::Double(*by)
            };
            // A missing or non-numeric field counts as 0, as in the SQLite store.
            let mut stages = vec![doc! { "$set": { path: { "$add": [
                { "$cond": [{ "$isNumber": current.clone() }, current, 0] },
                by,
            ] } } }];
            set_mark(&mut stages);
            Statement::Update {
                collection: target.physical(collection),
                statement: doc! {
                    "q": Mark::guard(mark, doc! { "_id": id.as_str() }),
                    "u": stages,
                },
                marked_upsert: false,
            }
        }
        DocOp::Delete { collection, id } => Statement::Delete {
            collection: target.physical(collection),
            statement: doc! {
                "q": Mark::guard(mark, doc! { "_id": id.as_str() }),
                "limit": 1,
            },
        },
        DocOp::DeleteWhere {
            collection,
            field,
            value,
        } => Statement::Delete {
            collection: target.physical(collection),
            statement: doc! {
                "q": Mark::guard(mark, equals(field, value)?),
                "limit": 0,
            },
        },
        DocOp::TombstoneWhere {
            collection,
            field,
            value,
        } => {
            let mut stages = vec![doc! { "$replaceWith": {
                "_id": "$_id",
                "_ev": { "$ifNull": ["$_ev", {}] },
                "d": { "tombstone": true, "id": { "$ifNull": ["$d.id", "$_id"] } },
            } }];
            set_mark(&mut stages);
            Statement::Update {
                collection: target.physical(collection),
                statement: doc! {
                    "q": Mark::guard(mark, equals(field, value)?),
                    "u": stages,
                    "multi": true,
                },
                marked_upsert: false,
            }
        }
    }))
}

/// One projection's `_generations` document.
#[derive(Debug, Clone, Default)]
struct GenerationDoc {
    exists: bool,
    active: u64,
    shadow: Option<u64>,
    heartbeat: Option<String>,
    collections: Vec<String>,
    fence: bool,
}

impl GenerationDoc {
    fn from_doc(doc: Option<Document>) -> GenerationDoc {
        let Some(doc) = doc else {
            return GenerationDoc::default();
        };
        GenerationDoc {
            exists: true,
            active: as_u64(doc.get("active")),
            shadow: match doc.get("shadow") {
                None | Some(Bson::Null) => None,
                value => Some(as_u64(value)),
            },
            heartbeat: doc.get_str("heartbeat").ok().map(str::to_string),
            collections: doc
                .get_array("collections")
                .map(|items| {
                    items
                        .iter()
                        .filter_map(|c| c.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            fence: doc.get_bool("fence").unwrap_or(false),
        }
    }

    fn shadow_is_fresh(&self) -> bool {
        self.heartbeat.as_deref().is_some_and(|heartbeat| {
            chrono::DateTime::parse_from_rfc3339(heartbeat).is_ok_and(|at| {
                chrono::Utc::now()
                    .signed_duration_since(at)
                    .to_std()
                    .map_or(true, |age| age < REBUILD_LEASE)
            })
        })
    }
}

/// Which generation of a projection a call works on.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    generation: u64,
    key: String,
    collections: HashSet<String>,
    /// Named without a generation: follows swaps.
    follows_active: bool,
    shadow: bool,
    writable: bool,
}

impl Target {
    fn physical(&self, collection: &str) -> String {
        if self.generation > 0 && self.collections.contains(collection) {
            physical_collection(collection, self.generation)
        } else {
            collection.to_string()
        }
    }
}

/// What an apply knows of an aggregate.
#[derive(Debug, Clone, Copy, Default)]
struct AggregateState {
    version: u64,
    parked: Option<(u64, u64)>,
}

/// [`ReadStore`] over a MongoDB database.
#[derive(Clone)]
pub struct MongoReadStore {
    db: Database,
    swap_grace: Duration,
}

impl std::fmt::Debug for MongoReadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MongoReadStore")
            .field("database", &self.db.name())
            .finish_non_exhaustive()
    }
}

impl MongoReadStore {
    /// Connects to `uri` (a `mongodb://` URI) and checks that the server answers.
    pub async fn connect(uri: &str, database: &str) -> KernelResult<Self> {
        let client = Client::with_uri_str(uri).await.map_err(storage)?;
        let store = Self {
            db: client.database(database),
            swap_grace: Duration::from_secs(2),
        };
        store.ping().await?;
        Ok(store)
    }

    /// The grace period of swaps (see the module docs); tests shorten it.
    pub fn with_swap_grace(mut self, grace: Duration) -> Self {
        self.swap_grace = grace;
        self
    }

    /// Creates the indexes: the store's own, and those of the read-model collections at
    /// their active generation.
    pub async fn migrate(&self) -> KernelResult<()> {
        let own: [(&str, Document); 5] = [
            (VERSIONS, doc! { "p": 1 }),
            (PARKED, doc! { "p": 1, "position": 1 }),
            (PARKED, doc! { "p": 1, "event_id": 1 }),
            (PARKED, doc! { "p": 1, "k": 1, "seq": 1 }),
            (GENERATIONS, doc! { "collections": 1 }),
        ];
        for (collection, keys) in own {
            self.db
                .collection::<Document>(collection)
                .create_index(IndexModel::builder().keys(keys).build())
                .await
                .map_err(storage)?;
        }
        for (collection, _) in INDEXES {
            let generation = self.collection_generation(collection).await?;
            self.create_indexes(collection, generation).await?;
        }
        Ok(())
    }

    /// Drops the whole database (tests).
    pub async fn drop_database(&self) -> KernelResult<()> {
        self.db.drop().await.map_err(storage)
    }

    async fn create_indexes(&self, collection: &str, generation: u64) -> KernelResult<()> {
        let Some((_, indexes)) = INDEXES.iter().find(|(name, _)| *name == collection) else {
            return Ok(());
        };
        let physical = physical_collection(collection, generation);
        for fields in *indexes {
            let mut keys = Document::new();
            for field in *fields {
                keys.insert(format!("d.{field}"), 1);
            }
            let model = IndexModel::builder()
                .keys(keys)
                .options(IndexOptions::builder().build())
                .build();
            self.db
                .collection::<Document>(&physical)
                .create_index(model)
                .await
                .map_err(storage)?;
        }
        Ok(())
    }

    async fn generation_doc(&self, name: &str) -> KernelResult<GenerationDoc> {
        let doc = self
            .db
            .collection::<Document>(GENERATIONS)
            .find_one(doc! { "_id": name })
            .await
            .map_err(storage)?;
        Ok(GenerationDoc::from_doc(doc))
    }

    /// The active generation of the projection owning a collection (0 if none does).
    async fn collection_generation(&self, collection: &str) -> KernelResult<u64> {
        if collection.starts_with('_') {
            return Ok(0);
        }
        let doc = self
            .db
            .collection::<Document>(GENERATIONS)
            .find_one(doc! { "collections": collection })
            .await
            .map_err(storage)?;
        Ok(GenerationDoc::from_doc(doc).active)
    }

    async fn physical_for_read(&self, collection: &str) -> KernelResult<String> {
        Ok(physical_collection(
            collection,
            self.collection_generation(collection).await?,
        ))
    }

    async fn resolve(&self, projection: &str) -> KernelResult<(Target, GenerationDoc)> {
        let (name, explicit) = split_generation_key(projection);
        let row = self.generation_doc(name).await?;
        let generation = explicit.unwrap_or(row.active);
        let target = Target {
            name: name.to_string(),
            generation,
            key: projection_key(name, generation),
            collections: row.collections.iter().cloned().collect(),
            follows_active: explicit.is_none(),
            shadow: explicit.is_some_and(|g| g != row.active),
            writable: explicit.is_none_or(|g| g == row.active || row.shadow == Some(g)),
        };
        Ok((target, row))
    }

    /// Resolves the target of a write, waiting while a swap fences the active generation.
    async fn resolve_write(&self, projection: &str) -> KernelResult<Target> {
        let deadline = tokio::time::Instant::now() + FENCE_WAIT;
        loop {
            let (target, row) = self.resolve(projection).await?;
            if !target.writable {
                return Err(KernelError::Storage(format!(
                    "generation {} of {} is neither active nor being rebuilt",
                    target.generation, target.name
                )));
            }
            if !(row.fence && target.follows_active) {
                return Ok(target);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(KernelError::Storage(format!(
                    "{} is being swapped; retry",
                    target.name
                )));
            }
            tokio::time::sleep(FENCE_POLL).await;
        }
    }

    /// Whether the active generation moved away from `target` while it was written.
    async fn moved(&self, target: &Target) -> KernelResult<bool> {
        Ok(target.follows_active
            && self.generation_doc(&target.name).await?.active != target.generation)
    }

    /// Runs statements in order, consecutive ones of one kind on one collection per command.
    async fn run_statements(&self, statements: &[Statement]) -> KernelResult<()> {
        let mut start = 0;
        while start < statements.len() {
            let first = &statements[start];
            let mut end = start + 1;
            while end < statements.len()
                && end - start < BATCH
                && statements[end].collection() == first.collection()
                && statements[end].is_update() == first.is_update()
            {
                end += 1;
            }
            let chunk = &statements[start..end];
            let (verb, list) = if first.is_update() {
                ("update", "updates")
            } else {
                ("delete", "deletes")
            };
            let command = doc! {
                verb: first.collection(),
                list: chunk.iter().map(|s| Bson::Document(s.document().clone())).collect::<Vec<_>>(),
                "ordered": true,
            };
            let reply = self.db.run_command(command).await.map_err(storage)?;
            if let Ok(error) = reply.get_document("writeConcernError") {
                return Err(storage(format!("write concern: {error}")));
            }
            let failed = reply
                .get_array("writeErrors")
                .ok()
                .and_then(|errors| errors.first())
                .and_then(Bson::as_document)
                .cloned();
            match failed {
                None => start = end,
                Some(error) => {
                    let index = usize::try_from(error.get_i32("index").unwrap_or(0)).unwrap_or(0);
                    let code = error.get_i32("code").unwrap_or(0);
                    let statement = chunk.get(index).unwrap_or(first);
                    if code == DUPLICATE_KEY && statement.duplicate_is_done() {
                        // Marked already: this op took effect before. Go on after it.
                        start += index + 1;
                    } else {
                        return Err(storage(format!(
                            "{verb} on {}: {}",
                            first.collection(),
                            error.get_str("errmsg").unwrap_or("write error")
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    async fn load_versions(
        &self,
        key: &str,
        aggregates: &[&str],
    ) -> KernelResult<HashMap<String, u64>> {
        let mut found = HashMap::new();
        for chunk in aggregates.chunks(BATCH) {
            let ids: Vec<String> = chunk.iter().map(|a| format!("{key}{SEP}{a}")).collect();
            let mut cursor = self
                .db
                .collection::<Document>(VERSIONS)
                .find(doc! { "_id": { "$in": ids } })
                .await
                .map_err(storage)?;
            while let Some(doc) = cursor.try_next().await.map_err(storage)? {
                if let Ok(aggregate) = doc.get_str("k") {
                    found.insert(aggregate.to_string(), as_u64(doc.get("s")));
                }
            }
        }
        Ok(found)
    }

    async fn load_parked_ranges(
        &self,
        key: &str,
        aggregates: &[&str],
    ) -> KernelResult<HashMap<String, (u64, u64)>> {
        let mut found = HashMap::new();
        for chunk in aggregates.chunks(BATCH) {
            let pipeline = vec![
                doc! { "$match": { "p": key, "k": { "$in": chunk.to_vec() } } },
                doc! { "$group": { "_id": "$k", "low": { "$min": "$seq" }, "high": { "$max": "$seq" } } },
            ];
            let mut cursor = self
                .db
                .collection::<Document>(PARKED)
                .aggregate(pipeline)
                .await
                .map_err(storage)?;
            while let Some(doc) = cursor.try_next().await.map_err(storage)? {
                if let Ok(aggregate) = doc.get_str("_id") {
                    found.insert(
                        aggregate.to_string(),
                        (as_u64(doc.get("low")), as_u64(doc.get("high"))),
                    );
                }
            }
        }
        Ok(found)
    }

    fn version_statement(key: &str, aggregate: &str, sequence: u64) -> KernelResult<Statement> {
        Ok(Statement::Update {
            collection: VERSIONS.to_string(),
            statement: doc! {
                "q": { "_id": format!("{key}{SEP}{aggregate}") },
                "u": { "$max": { "s": int(sequence)? }, "$set": { "p": key, "k": aggregate } },
                "upsert": true,
            },
            marked_upsert: false,
        })
    }

    fn checkpoint_statement(key: &str, checkpoint: u64) -> KernelResult<Statement> {
        Ok(Statement::Update {
            collection: CHECKPOINTS.to_string(),
            statement: doc! {
                "q": { "_id": key },
                "u": {
                    "$max": { "position": int(checkpoint)? },
                    "$set": { "updated_at": chrono::Utc::now().to_rfc3339() },
                },
                "upsert": true,
            },
            marked_upsert: false,
        })
    }

    async fn renew_lease(&self, target: &Target) -> KernelResult<()> {
        if target.shadow {
            self.db
                .collection::<Document>(GENERATIONS)
                .update_one(
                    doc! { "_id": target.name.as_str(), "shadow": int(target.generation)? },
                    doc! { "$set": { "heartbeat": chrono::Utc::now().to_rfc3339() } },
                )
                .await
                .map_err(storage)?;
        }
        Ok(())
    }

    /// Ops, then versions, then the checkpoint (see the module docs for why this order).
    async fn finish(
        &self,
        target: &Target,
        mut statements: Vec<Statement>,
        versions: &AggregateVersions,
        checkpoint: u64,
    ) -> KernelResult<()> {
        for (aggregate, sequence) in versions {
            statements.push(Self::version_statement(&target.key, aggregate, *sequence)?);
        }
        statements.push(Self::checkpoint_statement(&target.key, checkpoint)?);
        self.run_statements(&statements).await?;
        self.renew_lease(target).await
    }

    async fn apply_to(
        &self,
        target: &Target,
        ops: &[DocOp],
        versions: &AggregateVersions,
        checkpoint: u64,
    ) -> KernelResult<()> {
        let mut statements = Vec::with_capacity(ops.len());
        for op in ops {
            statements.extend(statement(op, target, None)?);
        }
        self.finish(target, statements, versions, checkpoint).await
    }

    async fn apply_projected_to(
        &self,
        target: &Target,
        events: &[ProjectedEvent],
        checkpoint: u64,
    ) -> KernelResult<ApplyReport> {
        let mut aggregates: Vec<&str> = events.iter().map(|e| e.aggregate_key.as_str()).collect();
        aggregates.sort_unstable();
        aggregates.dedup();
        let versions = self.load_versions(&target.key, &aggregates).await?;
        let parked = self.load_parked_ranges(&target.key, &aggregates).await?;
        let mut states: HashMap<&str, AggregateState> = HashMap::new();
        let mut report = ApplyReport::default();
        let mut parked_statements = Vec::new();
        let mut statements = Vec::new();
        let mut applied: HashMap<&str, u64> = HashMap::new();
        let now = chrono::Utc::now().to_rfc3339();
        for event in events {
            let key = event.aggregate_key.as_str();
            let state = states.get(key).copied().unwrap_or(AggregateState {
                version: versions.get(key).copied().unwrap_or(0),
                parked: parked.get(key).copied(),
            });
            let already_parked = state.parked.is_some_and(|(_, high)| event.sequence <= high);
            if event.sequence <= state.version || already_parked {
                report.skipped += 1;
                continue;
            }
            let error = match (&event.outcome, state.parked) {
                (Ok(_), None) => None,
                (Err(error), None) => Some(error.clone()),
                (Err(error), Some((low, _))) => Some(format!(
                    "held back: event {low} of {key} is parked; this one fails too: {error}"
                )),
                (Ok(_), Some((low, _))) => {
                    Some(format!("held back: event {low} of {key} is parked"))
                }
            };
            let next = match (error, &event.outcome) {
                (None, Ok(ops)) => {
                    for (index, op) in ops.iter().enumerate() {
                        let mark = Mark::new(key, event.sequence, index)?;
                        statements.extend(statement(op, target, Some(&mark))?);
                    }
                    applied.insert(key, event.sequence);
                    report.applied += 1;
                    AggregateState {
                        version: event.sequence,
                        parked: None,
                    }
                }
                (error, _) => {
                    parked_statements.push(parked_statement(
                        &target.key,
                        event,
                        &error.unwrap_or_default(),
                        &now,
                    )?);
                    report.parked += 1;
                    let low = state.parked.map_or(event.sequence, |(low, _)| low);
                    AggregateState {
                        version: state.version,
                        parked: Some((low, event.sequence)),
                    }
                }
            };
            states.insert(key, next);
        }
        parked_statements.extend(statements);
        let versions: AggregateVersions = applied
            .into_iter()
            .map(|(key, sequence)| (key.to_string(), sequence))
            .collect();
        self.finish(target, parked_statements, &versions, checkpoint)
            .await?;
        Ok(report)
    }

    async fn parked_find(
        &self,
        filter: Document,
        limit: i64,
        offset: u64,
    ) -> KernelResult<Vec<ParkedEvent>> {
        let mut cursor = self
            .db
            .collection::<Document>(PARKED)
            .find(filter)
            .sort(doc! { "position": 1, "k": 1, "seq": 1 })
            .skip(offset)
            .limit(limit)
            .await
            .map_err(storage)?;
        let mut items = Vec::new();
        while let Some(doc) = cursor.try_next().await.map_err(storage)? {
            items.push(parked_from_doc(&doc));
        }
        Ok(items)
    }

    /// Drops every trace of one generation of a projection.
    async fn drop_generation(
        &self,
        name: &str,
        collections: &[String],
        generation: u64,
    ) -> KernelResult<()> {
        for collection in collections {
            self.db
                .collection::<Document>(&physical_collection(collection, generation))
                .drop()
                .await
                .map_err(storage)?;
        }
        let key = projection_key(name, generation);
        for collection in [VERSIONS, PARKED] {
            self.db
                .collection::<Document>(collection)
                .delete_many(doc! { "p": key.as_str() })
                .await
                .map_err(storage)?;
        }
        self.db
            .collection::<Document>(CHECKPOINTS)
            .delete_one(doc! { "_id": key.as_str() })
            .await
            .map_err(storage)?;
        Ok(())
    }

    /// Generations of a projection with data, other than `keep`.
    async fn stray_generations(
        &self,
        name: &str,
        collections: &[String],
        keep: &[u64],
    ) -> KernelResult<Vec<u64>> {
        let mut found: HashSet<u64> = HashSet::new();
        let names = self.db.list_collection_names().await.map_err(storage)?;
        for physical in &names {
            for collection in collections {
                if let Some(suffix) = physical.strip_prefix(&format!("{collection}__g")) {
                    if let Ok(generation) = suffix.parse() {
                        found.insert(generation);
                    }
                }
            }
        }
        let keys: Vec<Bson> = self
            .db
            .collection::<Document>(CHECKPOINTS)
            .distinct("_id", doc! {})
            .await
            .map_err(storage)?;
        for key in keys.iter().filter_map(Bson::as_str) {
            if let (base, Some(generation)) = split_generation_key(key) {
                if base == name {
                    found.insert(generation);
                }
            }
        }
        if !keep.contains(&0) {
            let plain = names.iter().any(|n| collections.contains(n))
                || keys.iter().any(|k| k.as_str() == Some(name));
            if plain {
                found.insert(0);
            }
        }
        let mut stray: Vec<u64> = found.into_iter().filter(|g| !keep.contains(g)).collect();
        stray.sort_unstable();
        Ok(stray)
    }

    /// Per aggregate, the highest sequence a key has seen (applied or parked).
    async fn seen(&self, key: &str) -> KernelResult<HashMap<String, u64>> {
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut versions = self
            .db
            .collection::<Document>(VERSIONS)
            .find(doc! { "p": key })
            .await
            .map_err(storage)?;
        while let Some(doc) = versions.try_next().await.map_err(storage)? {
            if let Ok(aggregate) = doc.get_str("k") {
                let entry = seen.entry(aggregate.to_string()).or_default();
                *entry = (*entry).max(as_u64(doc.get("s")));
            }
        }
        let mut parked = self
            .db
            .collection::<Document>(PARKED)
            .find(doc! { "p": key })
            .await
            .map_err(storage)?;
        while let Some(doc) = parked.try_next().await.map_err(storage)? {
            if let Ok(aggregate) = doc.get_str("k") {
                let entry = seen.entry(aggregate.to_string()).or_default();
                *entry = (*entry).max(as_u64(doc.get("seq")));
            }
        }
        Ok(seen)
    }

    async fn checkpoint_of(&self, key: &str) -> KernelResult<u64> {
        let doc = self
            .db
            .collection::<Document>(CHECKPOINTS)
            .find_one(doc! { "_id": key })
            .await
            .map_err(storage)?;
        Ok(doc.map_or(0, |doc| as_u64(doc.get("position"))))
    }

    async fn set_parked_error(
        &self,
        key: &str,
        aggregate: &str,
        sequence: u64,
        error: &str,
    ) -> KernelResult<()> {
        self.db
            .collection::<Document>(PARKED)
            .update_one(
                doc! { "_id": parked_id(key, aggregate, sequence) },
                doc! { "$set": { "error": error } },
            )
            .await
            .map_err(storage)?;
        Ok(())
    }
}

/// Whether a write failed on a duplicate key.
fn is_duplicate(err: &mongodb::error::Error) -> bool {
    matches!(
        err.kind.as_ref(),
        ErrorKind::Write(WriteFailure::WriteError(write)) if write.code == DUPLICATE_KEY
    )
}

fn parked_id(key: &str, aggregate: &str, sequence: u64) -> String {
    format!("{key}{SEP}{aggregate}{SEP}{sequence:020}")
}

fn parked_statement(
    key: &str,
    event: &ProjectedEvent,
    error: &str,
    now: &str,
) -> KernelResult<Statement> {
    Ok(Statement::Update {
        collection: PARKED.to_string(),
        statement: doc! {
            "q": { "_id": parked_id(key, &event.aggregate_key, event.sequence) },
            "u": { "$setOnInsert": {
                "p": key,
                "k": event.aggregate_key.as_str(),
                "seq": int(event.sequence)?,
                "position": int(event.position)?,
                "event_id": event.event_id.as_str(),
                "error": error,
                "parked_at": now,
                "envelope": to_bson(&event.envelope.to_json()),
            } },
            "upsert": true,
        },
        marked_upsert: false,
    })
}

fn parked_from_doc(doc: &Document) -> ParkedEvent {
    ParkedEvent {
        id: doc.get_str("event_id").unwrap_or_default().to_string(),
        aggregate_key: doc.get_str("k").unwrap_or_default().to_string(),
        sequence: as_u64(doc.get("seq")),
        position: as_u64(doc.get("position")),
        error: doc.get_str("error").unwrap_or_default().to_string(),
        parked_at: doc.get_str("parked_at").unwrap_or_default().to_string(),
        envelope: doc.get("envelope").map_or(Value::Null, to_json),
    }
}

#[async_trait]
impl ReadStore for MongoReadStore {
    /// Not atomic: ops, then versions, then the checkpoint. Ops here carry no event identity,
    /// so a redelivered `apply` re-runs them; projections use `apply_projected`.
    async fn apply(
        &self,
        projection: &str,
        ops: Vec<DocOp>,
        versions: AggregateVersions,
        checkpoint: u64,
    ) -> KernelResult<()> {
        for op in &ops {
            validate_op(op)?;
        }
        let target = self.resolve_write(projection).await?;
        self.apply_to(&target, &ops, &versions, checkpoint).await
    }

    async fn apply_guarded(
        &self,
        projection: &str,
        effects: Vec<EventEffect>,
        checkpoint: u64,
    ) -> KernelResult<()> {
        let events: Vec<ProjectedEvent> = effects
            .into_iter()
            .map(|effect| ProjectedEvent {
                aggregate_key: effect.aggregate_key,
                sequence: effect.sequence,
                position: 0,
                event_id: String::new(),
                outcome: Ok(effect.ops),
                envelope: Value::Null.into(),
            })
            .collect();
        self.apply_projected(projection, events, checkpoint)
            .await
            .map(|_| ())
    }

    async fn checkpoint(&self, projection: &str) -> KernelResult<u64> {
        let (target, _) = self.resolve(projection).await?;
        self.checkpoint_of(&target.key).await
    }

    async fn versions(&self, projection: &str, keys: &[String]) -> KernelResult<AggregateVersions> {
        let (target, _) = self.resolve(projection).await?;
        let aggregates: Vec<&str> = keys.iter().map(String::as_str).collect();
        let mut found = self.load_versions(&target.key, &aggregates).await?;
        Ok(keys
            .iter()
            .filter_map(|key| found.remove(key).map(|sequence| (key.clone(), sequence)))
            .collect())
    }

    async fn get(&self, collection: &str, id: &str) -> KernelResult<Option<Value>> {
        let physical = self.physical_for_read(collection).await?;
        let doc = self
            .db
            .collection::<Document>(&physical)
            .find_one(doc! { "_id": id })
            .await
            .map_err(storage)?;
        Ok(doc.as_ref().map(body_of))
    }

    /// `limit == 0` means no limit; ties of the sort field are broken by id.
    async fn find(&self, collection: &str, query: &DocQuery) -> KernelResult<DocPage> {
        let mut filter = Document::new();
        let mut clauses = Vec::new();
        for (field, value) in &query.filter {
            clauses.push(Bson::Document(equals(field, value)?));
        }
        if let Some(spec) = &query.condition {
            clauses.push(Bson::Document(spec_filter(spec)?));
        }
        if !clauses.is_empty() {
            filter.insert("$and", clauses);
        }
        let mut sort = Document::new();
        for (field, ascending) in &query.sort {
            sort.insert(body_path(field)?, if *ascending { 1 } else { -1 });
        }
        // Ties break by id, in the direction of the last key, so pages are stable.
        let tie = match query.sort.last() {
            Some((_, false)) => -1,
            _ => 1,
        };
        sort.insert("_id", tie);
        let physical = self.physical_for_read(collection).await?;
        let coll = self.db.collection::<Document>(&physical);
        let total = coll
            .count_documents(filter.clone())
            .await
            .map_err(storage)?;
        let limit = i64::from(query.limit);
        let mut cursor = coll
            .find(filter)
            .sort(sort)
            .skip(query.offset)
            .limit(limit)
            .await
            .map_err(storage)?;
        let mut items = Vec::new();
        while let Some(doc) = cursor.try_next().await.map_err(storage)? {
            items.push(body_of(&doc));
        }
        Ok(DocPage { items, total })
    }

    async fn reset(&self, projection: &str, collections: &[&str]) -> KernelResult<()> {
        let target = self.resolve_write(projection).await?;
        for collection in collections {
            // delete_many rather than drop: the indexes stay.
            self.db
                .collection::<Document>(&target.physical(collection))
                .delete_many(doc! {})
                .await
                .map_err(storage)?;
        }
        for collection in [VERSIONS, PARKED] {
            self.db
                .collection::<Document>(collection)
                .delete_many(doc! { "p": target.key.as_str() })
                .await
                .map_err(storage)?;
        }
        self.db
            .collection::<Document>(CHECKPOINTS)
            .delete_one(doc! { "_id": target.key.as_str() })
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn ping(&self) -> KernelResult<()> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(storage)
    }

    async fn apply_projected(
        &self,
        projection: &str,
        events: Vec<ProjectedEvent>,
        checkpoint: u64,
    ) -> KernelResult<ApplyReport> {
        // A bad op fails the whole apply before anything is written.
        for event in &events {
            if let Ok(ops) = &event.outcome {
                for op in ops {
                    validate_op(op)?;
                }
            }
        }
        let target = self.resolve_write(projection).await?;
        let report = self
            .apply_projected_to(&target, &events, checkpoint)
            .await?;
        if self.moved(&target).await? {
            // A swap happened while this was written: make sure the new copy has it too.
            let target = self.resolve_write(projection).await?;
            self.apply_projected_to(&target, &events, checkpoint)
                .await?;
        }
        Ok(report)
    }

    async fn parked(&self, projection: &str, limit: u32, offset: u64) -> KernelResult<ParkedPage> {
        let (target, _) = self.resolve(projection).await?;
        let filter = doc! { "p": target.key.as_str() };
        let total = self
            .db
            .collection::<Document>(PARKED)
            .count_documents(filter.clone())
            .await
            .map_err(storage)?;
        let items = self.parked_find(filter, i64::from(limit), offset).await?;
        Ok(ParkedPage { items, total })
    }

    async fn parked_of(
        &self,
        projection: &str,
        aggregate_key: &str,
    ) -> KernelResult<Vec<ParkedEvent>> {
        let (target, _) = self.resolve(projection).await?;
        let mut items = self
            .parked_find(doc! { "p": target.key.as_str(), "k": aggregate_key }, 0, 0)
            .await?;
        items.sort_by_key(|parked| parked.sequence);
        Ok(items)
    }

    async fn parked_by_id(&self, projection: &str, id: &str) -> KernelResult<Option<ParkedEvent>> {
        let (target, _) = self.resolve(projection).await?;
        Ok(self
            .parked_find(doc! { "p": target.key.as_str(), "event_id": id }, 1, 0)
            .await?
            .into_iter()
            .next())
    }

    /// One event at a time: op effects (marked), version, then the parked entry's removal.
    /// A crash in between leaves a consistent state that the next retry completes.
    async fn retry_parked(
        &self,
        projection: &str,
        mut events: Vec<ProjectedEvent>,
    ) -> KernelResult<RetryReport> {
        for event in &events {
            if let Ok(ops) = &event.outcome {
                for op in ops {
                    validate_op(op)?;
                }
            }
        }
        let target = self.resolve_write(projection).await?;
        events.sort_by(|a, b| {
            (a.aggregate_key.as_str(), a.sequence).cmp(&(b.aggregate_key.as_str(), b.sequence))
        });
        let mut report = RetryReport::default();
        let mut failed: HashSet<String> = HashSet::new();
        let mut aggregates: Vec<String> = Vec::new();
        for event in &events {
            let key = event.aggregate_key.as_str();
            if !aggregates.iter().any(|a| a == key) {
                aggregates.push(key.to_string());
            }
            if failed.contains(key) {
                continue;
            }
            let Some(&(low, _)) = self.load_parked_ranges(&target.key, &[key]).await?.get(key)
            else {
                continue;
            };
            if event.sequence < low {
                continue;
            }
            if event.sequence > low {
                self.set_parked_error(
                    &target.key,
                    key,
                    low,
                    "retry it first: it is the aggregate's first parked event",
                )
                .await?;
                failed.insert(key.to_string());
                continue;
            }
            let version = self
                .load_versions(&target.key, &[key])
                .await?
                .get(key)
                .copied()
                .unwrap_or(0);
            if event.sequence > version {
                match &event.outcome {
                    Ok(ops) => {
                        let mut statements = Vec::new();
                        for (index, op) in ops.iter().enumerate() {
                            let mark = Mark::new(key, event.sequence, index)?;
                            statements.extend(statement(op, &target, Some(&mark))?);
                        }
                        statements.push(Self::version_statement(&target.key, key, event.sequence)?);
                        self.run_statements(&statements).await?;
                        report.applied += 1;
                    }
                    Err(error) => {
                        self.set_parked_error(&target.key, key, event.sequence, error)
                            .await?;
                        failed.insert(key.to_string());
                        continue;
                    }
                }
            }
            self.db
                .collection::<Document>(PARKED)
                .delete_one(doc! { "_id": parked_id(&target.key, key, event.sequence) })
                .await
                .map_err(storage)?;
        }
        for key in &aggregates {
            report.still_parked += self
                .db
                .collection::<Document>(PARKED)
                .count_documents(doc! { "p": target.key.as_str(), "k": key.as_str() })
                .await
                .map_err(storage)?;
        }
        Ok(report)
    }

    async fn status(&self, projection: &str) -> KernelResult<Option<Value>> {
        let doc = self
            .db
            .collection::<Document>(STATUS_COLLECTION)
            .find_one(doc! { "_id": projection })
            .await
            .map_err(storage)?;
        Ok(doc.as_ref().map(body_of))
    }

    async fn merge_status(&self, projection: &str, patch: Value) -> KernelResult<()> {
        let Some(fields) = patch.as_object() else {
            return Err(KernelError::Storage(
                "a status patch must be an object".into(),
            ));
        };
        let mut set = doc! { "d.name": projection };
        for (field, value) in fields {
            set.insert(body_path(field)?, to_bson(value));
        }
        self.db
            .collection::<Document>(STATUS_COLLECTION)
            .update_one(doc! { "_id": projection }, doc! { "$set": set })
            .upsert(true)
            .await
            .map_err(storage)?;
        Ok(())
    }

    async fn generation(&self, projection: &str) -> KernelResult<u64> {
        Ok(self.generation_doc(projection).await?.active)
    }

    async fn begin_generation(&self, projection: &str, collections: &[&str]) -> KernelResult<u64> {
        let name = projection;
        let row = self.generation_doc(name).await?;
        let conflict = |detail: String| KernelError::Rejected(DomainError::StateConflict(detail));
        if let Some(shadow) = row.shadow {
            if row.shadow_is_fresh() {
                return Err(conflict(format!(
                    "a rebuild of {name} (generation {shadow}) is already running"
                )));
            }
        }
        for collection in collections {
            let owner = self
                .db
                .collection::<Document>(GENERATIONS)
                .find_one(doc! { "collections": *collection, "_id": { "$ne": name } })
                .await
                .map_err(storage)?;
            if let Some(owner) = owner {
                return Err(KernelError::Storage(format!(
                    "collection {collection} belongs to projection {}, not {name}",
                    owner.get_str("_id").unwrap_or("?")
                )));
            }
        }
        let mut all = row.collections.clone();
        for collection in collections {
            if !all.iter().any(|c| c == collection) {
                all.push(collection.to_string());
            }
        }
        let generation = row.active.max(row.shadow.unwrap_or(0)) + 1;
        // Claim the shadow slot only if nobody changed the document since it was read.
        let expected_shadow = match row.shadow {
            Some(shadow) => int(shadow)?,
            None => Bson::Null,
        };
        let filter = if row.exists {
            doc! { "_id": name, "active": int(row.active)?, "shadow": expected_shadow }
        } else {
            doc! { "_id": name }
        };
        let update = doc! {
            "$set": {
                "shadow": int(generation)?,
                "heartbeat": chrono::Utc::now().to_rfc3339(),
                "collections": all.clone(),
                "fence": false,
            },
            "$setOnInsert": { "active": Bson::Int64(0) },
        };
        let claimed = if row.exists {
            self.db
                .collection::<Document>(GENERATIONS)
                .update_one(filter, update)
                .await
                .map_err(storage)?
                .matched_count
                == 1
        } else {
            match self
                .db
                .collection::<Document>(GENERATIONS)
                .insert_one(doc! {
                    "_id": name,
                    "active": Bson::Int64(0),
                    "shadow": int(generation)?,
                    "heartbeat": chrono::Utc::now().to_rfc3339(),
                    "collections": all.clone(),
                    "fence": false,
                })
                .await
            {
                Ok(_) => true,
                Err(err) if is_duplicate(&err) => false,
                Err(err) => return Err(storage(err)),
            }
        };
        if !claimed {
            return Err(conflict(format!(
                "another rebuild of {name} started at the same time"
            )));
        }
        // Only now that the slot is ours: drop leftovers of older rebuilds and swaps.
        for stray in self
            .stray_generations(name, &all, &[row.active, generation])
            .await?
        {
            self.drop_generation(name, &all, stray).await?;
        }
        self.drop_generation(name, &all, generation).await?;
        for collection in &all {
            self.create_indexes(collection, generation).await?;
        }
        Ok(generation)
    }

    async fn swap_generation(&self, projection: &str, generation: u64) -> KernelResult<bool> {
        let name = projection;
        let generations = self.db.collection::<Document>(GENERATIONS);
        let row = self.generation_doc(name).await?;
        if row.shadow != Some(generation) {
            return Err(KernelError::Storage(format!(
                "generation {generation} of {name} is not being rebuilt"
            )));
        }
        let fenced = generations
            .update_one(
                doc! { "_id": name, "shadow": int(generation)? },
                doc! { "$set": { "fence": true } },
            )
            .await
            .map_err(storage)?;
        if fenced.matched_count == 0 {
            return Err(KernelError::Storage(format!(
                "generation {generation} of {name} is no longer being rebuilt"
            )));
        }
        // Applies that resolved the live copy before the fence finish within the grace.
        tokio::time::sleep(self.swap_grace).await;
        let live_key = projection_key(name, row.active);
        let shadow_key = projection_key(name, generation);
        let live = self.seen(&live_key).await?;
        let shadow = self.seen(&shadow_key).await?;
        let behind = live
            .iter()
            .any(|(aggregate, seq)| shadow.get(aggregate).copied().unwrap_or(0) < *seq);
        if behind {
            generations
                .update_one(doc! { "_id": name }, doc! { "$set": { "fence": false } })
                .await
                .map_err(storage)?;
            return Ok(false);
        }
        let checkpoint = self
            .checkpoint_of(&live_key)
            .await?
            .max(self.checkpoint_of(&shadow_key).await?);
        self.run_statements(&[Self::checkpoint_statement(&shadow_key, checkpoint)?])
            .await?;
        generations
            .update_one(
                doc! { "_id": name, "shadow": int(generation)? },
                doc! { "$set": {
                    "active": int(generation)?,
                    "shadow": Bson::Null,
                    "heartbeat": Bson::Null,
                    "fence": false,
                } },
            )
            .await
            .map_err(storage)?;
        // Readers that resolved the old copy just before the flip finish within the grace.
        tokio::time::sleep(self.swap_grace).await;
        self.drop_generation(name, &row.collections, row.active)
            .await?;
        Ok(true)
    }

    async fn abandon_generation(&self, projection: &str, generation: u64) -> KernelResult<()> {
        let row = self.generation_doc(projection).await?;
        if row.active == generation {
            return Err(KernelError::Storage(format!(
                "generation {generation} of {projection} is active"
            )));
        }
        self.drop_generation(projection, &row.collections, generation)
            .await?;
        if row.shadow == Some(generation) {
            self.db
                .collection::<Document>(GENERATIONS)
                .update_one(
                    doc! { "_id": projection, "shadow": int(generation)? },
                    doc! { "$set": { "shadow": Bson::Null, "heartbeat": Bson::Null, "fence": false } },
                )
                .await
                .map_err(storage)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn json_and_bson_round_trip() {
        let value = json!({
            "s": "x", "i": 3, "big": 9_007_199_254_740_993_i64, "f": 1.5, "whole": 1.0,
            "b": true, "n": null, "a": [1, "two", {"three": 3}], "o": {"k": [null]},
        });
        assert_eq!(to_json(&to_bson(&value)), value);
    }

    #[test]
    fn field_names_are_validated() {
        assert_eq!(body_path("a.b_c").ok(), Some("d.a.b_c".to_string()));
        for bad in ["", ".a", "a.", "a..b", "$where", "a b", "a\"b", "é"] {
            assert!(body_path(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn marks_order_by_sequence_then_op() {
        let a = Mark::new("originator/x", 3, 1).expect("mark");
        let b = Mark::new("originator/x", 4, 0).expect("mark");
        assert!(a.value < b.value);
        assert_eq!(a.field, b.field);
        assert_ne!(
            a.field,
            Mark::new("originator/y", 3, 1).expect("mark").field
        );
        assert!(Mark::new("k", 1, MAX_OPS_PER_EVENT).is_err());
    }

    fn not_array() -> Document {
        doc! { "$type": "array" }
    }

    #[test]
    fn spec_conditions_are_typed_and_skip_arrays() {
        let cases = [
            (Op::Eq, json!("x"), doc! { "$eq": "x", "$not": not_array() }),
            (
                Op::Gt,
                json!(10),
                doc! { "$gt": 10_i64, "$not": not_array() },
            ),
            (
                Op::Gte,
                json!(1.5),
                doc! { "$gte": 1.5, "$not": not_array() },
            ),
            (Op::Lt, json!("b"), doc! { "$lt": "b", "$not": not_array() }),
            (
                Op::Lte,
                json!(true),
                doc! { "$lte": true, "$not": not_array() },
            ),
            (
                Op::In,
                json!([1, "a", false]),
                doc! { "$in": [1_i64, "a", false], "$not": not_array() },
            ),
            (
                Op::Contains,
                json!("aZ"),
                doc! { "$regex": "[aA][zZ]", "$not": not_array() },
            ),
        ];
        for (op, value, expected) in cases {
            let filter = spec_filter(&Filter::condition("price", op, value)).expect("translates");
            assert_eq!(filter, doc! { "d.price": expected }, "{op:?}");
        }
    }

    #[test]
    fn spec_ne_and_not_are_exact_complements() {
        let eq = doc! { "d.name": { "$eq": "x", "$not": not_array() } };
        assert_eq!(
            spec_filter(&Filter::condition("name", Op::Ne, json!("x"))).expect("translates"),
            doc! { "$nor": [eq.clone()] }
        );
        let tree = Filter::And(vec![
            Filter::Or(vec![
                Filter::condition("name", Op::Eq, json!("x")),
                Filter::Not(Box::new(Filter::condition("name", Op::Eq, json!("x")))),
            ]),
            Filter::condition("name", Op::Eq, json!("x")),
        ]);
        assert_eq!(
            spec_filter(&tree).expect("translates"),
            doc! { "$and": [ { "$or": [eq.clone(), { "$nor": [eq.clone()] }] }, eq ] }
        );
    }

    #[test]
    fn spec_translation_rejects_what_parsing_never_produces() {
        for bad in [
            Filter::And(vec![]),
            Filter::Or(vec![]),
            Filter::condition("name", Op::Eq, Value::Null),
            Filter::condition("name", Op::Eq, json!({"a": 1})),
            Filter::condition("name", Op::In, json!("x")),
            Filter::condition("name", Op::In, json!([])),
            Filter::condition("name", Op::In, json!([[1]])),
            Filter::condition("name", Op::Contains, json!(1)),
            Filter::condition("$where", Op::Eq, json!(1)),
        ] {
            assert!(spec_filter(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn contains_patterns_are_literal_and_fold_ascii_only() {
        assert_eq!(
            ascii_case_insensitive_pattern("50%_off"),
            "50\\%\\_[oO][fF][fF]"
        );
        assert_eq!(
            ascii_case_insensitive_pattern(".*(a|b)$^[]{}\\+?"),
            "\\.\\*\\([aA]\\|[bB]\\)\\$\\^\\[\\]\\{\\}\\\\\\+\\?"
        );
        assert_eq!(ascii_case_insensitive_pattern("Café É"), "[cC][aA][fF]é É");
        assert_eq!(
            ascii_case_insensitive_pattern("a\0\tb"),
            "[aA]\\x{0}\\x{9}[bB]"
        );
        assert_eq!(ascii_case_insensitive_pattern(""), "");
    }

    #[test]
    fn scalar_equality_never_matches_inside_arrays() {
        let filter = equals("code", &json!(1)).expect("filter");
        let inner = filter.get_document("d.code").expect("on the body field");
        assert!(inner.contains_key("$eq") && inner.contains_key("$not"));
        assert_eq!(
            equals("code", &Value::Null).expect("filter").get("d.code"),
            Some(&Bson::Null)
        );
    }
}
