//! The embedded read-model store: JSON documents in a SQLite file of their own (not the event
//! store's), translated from [`DocOp`]s into SQLite JSON1 functions (`json_set`,
//! `json_extract`).
//!
//! Writes go through a pool of exactly one connection (SQLite has one writer anyway), so
//! `apply` calls serialize there while reads use a separate pool and, thanks to WAL, never wait
//! for them. Every value is bound as a parameter; field names are validated and turned into
//! quoted JSON paths that are bound too, so no SQL text is ever built from data.
//!
//! Generations (blue/green rebuilds): a projection's documents live in `collection` while it is
//! at generation 0 and in `collection#N` at generation N; its versions, checkpoint and parked
//! events under the key `name` or `name#N`. The `generations` table names the active one, and
//! every write resolves it inside its own transaction, every read inside its own statement or
//! read transaction. A swap is one write transaction, so readers and writers see either the
//! old generation or the new one, never a mix. Parking and retries run inside the same
//! transaction as the effects, versions and checkpoint: all or nothing.

use std::collections::{HashMap, HashSet};
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite};

use crate::adapters::doc_fold::{self, DocKey, DocWrite, Fold};
use crate::domain::DomainError;
use crate::error::{KernelError, KernelResult};
use crate::ports::{
    split_generation_key, AggregateVersions, ApplyReport, DocOp, DocPage, DocQuery, EventEffect,
    ParkedEvent, ParkedPage, ProjectedEvent, ReadStore, RetryReport, STATUS_COLLECTION,
};
use crate::spec::{Filter, Op};

/// How long a statement waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per `IN (...)` list when reading versions; well under SQLite's parameter limit.
const VERSIONS_CHUNK: usize = 500;
/// A shadow generation whose builder has not applied anything for this long is abandoned.
pub const REBUILD_LEASE: Duration = Duration::from_secs(60);

const DELETE_WHERE: &str = "DELETE FROM documents WHERE collection = ? AND ";
const TOMBSTONE_WHERE: &str = "UPDATE documents SET body = \
     json_set('{\"tombstone\":true}', '$.id', COALESCE(json_extract(body, '$.id'), id)) \
     WHERE collection = ? AND ";
// The checkpoint only moves forward: a replayed (older) batch leaves it alone.
const UPSERT_CHECKPOINT: &str =
    "INSERT INTO checkpoints (projection, position, updated_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (projection) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at \
     WHERE excluded.position > checkpoints.position";
/// The physical name of a logical collection: its active generation's copy.
const RESOLVE_COLLECTION: &str = "COALESCE((SELECT ?1 || '#' || g.active \
     FROM generation_collections c JOIN generations g ON g.projection = c.projection \
     WHERE c.collection = ?1 AND g.active > 0), ?1)";
const SELECT_GENERATION: &str =
    "SELECT active, shadow, shadow_heartbeat, collections FROM generations WHERE projection = ?";
const PARKED_COLUMNS: &str =
    "event_id, aggregate_key, sequence, position, error, parked_at, envelope";
const INSERT_PARKED: &str = "INSERT INTO parked \
     (projection, aggregate_key, sequence, position, event_id, error, parked_at, envelope) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
     ON CONFLICT (projection, aggregate_key, sequence) DO NOTHING";
/// Per aggregate, the highest sequence a projection key has seen (applied or parked) and
/// that the other key has not: non-zero means the other key is behind.
const BEHIND: &str = "WITH \
     live AS (SELECT aggregate_key AS k, MAX(s) AS s FROM ( \
        SELECT aggregate_key, sequence AS s FROM aggregate_versions WHERE projection = ?1 \
        UNION ALL SELECT aggregate_key, sequence FROM parked WHERE projection = ?1) GROUP BY aggregate_key), \
     shadow AS (SELECT aggregate_key AS k, MAX(s) AS s FROM ( \
        SELECT aggregate_key, sequence AS s FROM aggregate_versions WHERE projection = ?2 \
        UNION ALL SELECT aggregate_key, sequence FROM parked WHERE projection = ?2) GROUP BY aggregate_key) \
     SELECT COUNT(*) FROM live LEFT JOIN shadow ON shadow.k = live.k WHERE COALESCE(shadow.s, 0) < live.s";

/// The key of a projection's generation: its versions, checkpoint and parked events.
fn projection_key(name: &str, generation: u64) -> String {
    if generation == 0 {
        name.to_string()
    } else {
        format!("{name}#{generation}")
    }
}

/// The physical collection of a logical one at a generation.
fn physical_collection(collection: &str, generation: u64) -> String {
    if generation == 0 {
        collection.to_string()
    } else {
        format!("{collection}#{generation}")
    }
}

/// One projection's row of the `generations` table.
#[derive(Debug, Clone, Default)]
struct GenerationRow {
    active: u64,
    shadow: Option<u64>,
    shadow_heartbeat: Option<String>,
    collections: Vec<String>,
}

impl GenerationRow {
    /// Whether the shadow's builder applied something within the lease.
    fn shadow_is_fresh(&self) -> bool {
        let Some(heartbeat) = &self.shadow_heartbeat else {
            return false;
        };
        chrono::DateTime::parse_from_rfc3339(heartbeat).is_ok_and(|at| {
            let age = chrono::Utc::now().signed_duration_since(at);
            age.to_std().map_or(true, |age| age < REBUILD_LEASE)
        })
    }
}

async fn generation_row(
    conn: &mut SqliteConnection,
    projection: &str,
) -> KernelResult<GenerationRow> {
    let row = sqlx::query(SELECT_GENERATION)
        .bind(projection)
        .fetch_optional(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    let Some(row) = row else {
        return Ok(GenerationRow::default());
    };
    let active: i64 = row.try_get(0).map_err(KernelError::storage)?;
    let shadow: Option<i64> = row.try_get(1).map_err(KernelError::storage)?;
    let shadow_heartbeat: Option<String> = row.try_get(2).map_err(KernelError::storage)?;
    let collections: String = row.try_get(3).map_err(KernelError::storage)?;
    Ok(GenerationRow {
        active: u64::try_from(active).unwrap_or(0),
        shadow: shadow.and_then(|s| u64::try_from(s).ok()),
        shadow_heartbeat,
        collections: serde_json::from_str(&collections)?,
    })
}

/// Which generation of a projection a call works on, resolved inside its transaction.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    generation: u64,
    /// Versions, checkpoint and parked events live under this key.
    key: String,
    /// The projection's logical collections (renamed at generations above 0).
    collections: HashSet<String>,
    /// Named explicitly as a shadow (`name#N`, N not active): applies renew the lease.
    shadow: bool,
    /// The active generation or the shadow being built: a write to any other (an abandoned
    /// shadow whose builder still runs) is refused.
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

/// Resolves `name` (the active generation) or `name#N` (generation N).
async fn resolve(conn: &mut SqliteConnection, projection: &str) -> KernelResult<Target> {
    let (name, explicit) = split_generation_key(projection);
    let row = generation_row(conn, name).await?;
    let generation = explicit.unwrap_or(row.active);
    Ok(Target {
        name: name.to_string(),
        generation,
        key: projection_key(name, generation),
        collections: row.collections.into_iter().collect(),
        shadow: explicit.is_some_and(|g| g != row.active),
        writable: explicit.is_none_or(|g| g == row.active || row.shadow == Some(g)),
    })
}

/// Resolves the target of a write: only the active generation or the shadow being built.
async fn resolve_write(conn: &mut SqliteConnection, projection: &str) -> KernelResult<Target> {
    let target = resolve(conn, projection).await?;
    if !target.writable {
        return Err(KernelError::Storage(format!(
            "generation {} of {} is neither active nor being rebuilt",
            target.generation, target.name
        )));
    }
    Ok(target)
}

/// [`ReadStore`] over a SQLite file holding JSON documents.
#[derive(Clone)]
pub struct SqliteReadStore {
    /// One connection: every write transaction goes through it.
    writer: SqlitePool,
    /// Readers; the same pool as `writer` for an in-memory database, which is per connection.
    reader: SqlitePool,
}

impl std::fmt::Debug for SqliteReadStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReadStore").finish_non_exhaustive()
    }
}

/// A write transaction's body.
type TxBody<T> =
    Box<dyn for<'c> FnOnce(&'c mut SqliteConnection) -> BoxFuture<'c, KernelResult<T>> + Send>;

impl SqliteReadStore {
    /// Runs `body` in one write transaction (`BEGIN IMMEDIATE`, so the busy timeout covers
    /// the lock), committed if it succeeds and rolled back if not. It runs to completion in a
    /// task of its own even if the caller is cancelled: a write transaction cut between BEGIN
    /// and its guard would leave the single writer connection inside it (sqlx-sqlite 0.8).
    async fn write<T: Send + 'static>(&self, body: TxBody<T>) -> KernelResult<T> {
        let writer = self.writer.clone();
        tokio::spawn(async move {
            let mut tx = writer
                .begin_with("BEGIN IMMEDIATE")
                .await
                .map_err(KernelError::storage)?;
            match body(&mut tx).await {
                Ok(value) => {
                    tx.commit().await.map_err(KernelError::storage)?;
                    Ok(value)
                }
                Err(err) => {
                    // The error that matters is the body's; a failed rollback also discards.
                    if let Err(rollback) = tx.rollback().await {
                        tracing::warn!(error = %rollback, "read store rollback failed");
                    }
                    Err(err)
                }
            }
        })
        .await
        .map_err(|err| KernelError::Storage(format!("read store task: {err}")))?
    }

    /// Resolves a projection in a read transaction of its own.
    async fn resolve_read(&self, projection: &str) -> KernelResult<Target> {
        let mut conn = self.reader.acquire().await.map_err(KernelError::storage)?;
        resolve(&mut conn, projection).await
    }

    async fn parked_query(
        &self,
        projection: &str,
        condition: &'static str,
        bind: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> KernelResult<Vec<ParkedEvent>> {
        let mut tx = self.reader.begin().await.map_err(KernelError::storage)?;
        let target = resolve(&mut tx, projection).await?;
        let sql = format!(
            "SELECT {PARKED_COLUMNS} FROM parked WHERE projection = ? {condition} \
             ORDER BY position, aggregate_key, sequence LIMIT ? OFFSET ?"
        );
        let mut query = sqlx::query(&sql).bind(target.key.as_str());
        if let Some(value) = bind {
            query = query.bind(value);
        }
        let rows = query
            .bind(limit)
            .bind(offset)
            .fetch_all(&mut *tx)
            .await
            .map_err(KernelError::storage)?;
        tx.commit().await.map_err(KernelError::storage)?;
        rows.iter().map(parked_from_row).collect()
    }

    /// Opens (creating it if needed) the read-store file. Accepts a plain path, `:memory:` or a
    /// `sqlite:` URL. `max_connections` sizes the read pool; writes use one extra connection.
    pub async fn connect(path_or_url: &str, max_connections: u32) -> KernelResult<Self> {
        let in_memory = path_or_url.contains(":memory:") || path_or_url.contains("mode=memory");
        let base = if path_or_url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(path_or_url).map_err(KernelError::storage)?
        } else {
            SqliteConnectOptions::new().filename(path_or_url)
        };
        let mut options = base
            .create_if_missing(true)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            // Read models outgrow SQLite's default 2 MiB page cache at a few thousand
            // documents; past it every batch re-read and spilled pages. Statement journals
            // (multi-row upserts inside a transaction) stay in memory.
            .pragma("cache_size", "-65536")
            .pragma("temp_store", "memory")
            // Checkpoints every 40 MiB of WAL instead of 4 MiB: a page rewritten by many
            // batches is copied into the database once per checkpoint, and a busy projector
            // checkpointed (with an fsync) after almost every batch.
            .pragma("wal_autocheckpoint", "10000");
        if !in_memory {
            // Reads of pages the cache lacks come from the mapped file, not read(2) copies.
            options = options.pragma("mmap_size", "268435456");
        }
        if !in_memory {
            options = options.journal_mode(SqliteJournalMode::Wal);
        }

        if in_memory {
            // The database lives as long as its connection: keep exactly one, forever.
            let pool = SqlitePoolOptions::new()
                .min_connections(1)
                .max_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
                .map_err(KernelError::storage)?;
            return Ok(Self {
                writer: pool.clone(),
                reader: pool,
            });
        }

        // The writer first: it creates the file and switches it to WAL before readers open it.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(KernelError::storage)?;
        let reader = SqlitePoolOptions::new()
            .max_connections(max_connections.max(1))
            .connect_with(options)
            .await
            .map_err(KernelError::storage)?;
        Ok(Self { writer, reader })
    }

    /// Runs the read store's own migrations (`migrations/read-sqlite`).
    pub async fn migrate(&self) -> KernelResult<()> {
        // Several processes (read-api, projectors, replay) may open one file at once, and
        // sqlx has no migration lock for SQLite: the loser of a race fails on the version
        // the winner recorded, and a second run then finds every migration applied.
        let migrator =
            super::sql::migrations::migrator(super::sql::migrations::READ_SQLITE).await?;
        let mut attempt = 0;
        loop {
            match migrator.run(&self.writer).await {
                Ok(()) => return Ok(()),
                Err(_) if attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(50 * attempt)).await;
                }
                Err(err) => return Err(KernelError::storage(err)),
            }
        }
    }

    /// Closes both pools, waiting for checked-out connections to come back.
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

/// A value to bind, already converted to the SQLite type it must compare as.
#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
    Real(f64),
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, SqliteArguments<'q>>;

fn bind_all<'q>(mut query: Query<'q>, binds: &'q [Bind]) -> Query<'q> {
    for bind in binds {
        query = match bind {
            Bind::Text(s) => query.bind(s.as_str()),
            Bind::Int(n) => query.bind(*n),
            Bind::Real(x) => query.bind(*x),
        };
    }
    query
}

/// Turns a field name (a dotted path such as `by_type.document`) into a quoted JSON path
/// (`$."by_type"."document"`). Only `[A-Za-z0-9_]` segments separated by single dots pass.
fn json_path(field: &str) -> KernelResult<String> {
    doc_fold::check_path(field)?;
    let mut path = String::with_capacity(field.len() * 2 + 4);
    path.push('$');
    for segment in field.split('.') {
        path.push_str(".\"");
        path.push_str(segment);
        path.push('"');
    }
    Ok(path)
}

/// An offset as SQLite's INTEGER: past `i64::MAX` it clamps (no collection is that long, so
/// the page is empty either way).
fn offset_bind(offset: u64) -> i64 {
    i64::try_from(offset).unwrap_or(i64::MAX)
}

fn to_i64(value: u64, what: &str) -> KernelResult<i64> {
    i64::try_from(value)
        .map_err(|_| KernelError::Storage(format!("{what} {value} does not fit SQLite's INTEGER")))
}

/// A JSON number as the SQLite number it compares equal to (integers stay integers).
fn number_bind(n: &serde_json::Number) -> Bind {
    match n.as_i64() {
        Some(i) => Bind::Int(i),
        // Past i64 (a huge u64) or a float: SQLite compares integer and real numerically.
        None => Bind::Real(n.as_f64().unwrap_or(f64::NAN)),
    }
}

/// The SQL condition "`field` equals `value`" plus its binds, with JSON types respected:
/// strings match only strings, numbers only numbers (3 == 3.0), booleans only booleans,
/// `null` matches null or a missing field, arrays and objects compare as minified JSON.
fn equals(field: &str, value: &Value) -> KernelResult<(&'static str, Vec<Bind>)> {
    let path = Bind::Text(json_path(field)?);
    Ok(match value {
        Value::String(s) => (
            "(json_type(body, ?) = 'text' AND json_extract(body, ?) = ?)",
            vec![path.clone(), path, Bind::Text(s.clone())],
        ),
        Value::Number(n) => (
            "(json_type(body, ?) IN ('integer', 'real') AND json_extract(body, ?) = ?)",
            vec![path.clone(), path, number_bind(n)],
        ),
        Value::Bool(b) => (
            "(json_type(body, ?) = ?)",
            vec![path, Bind::Text(if *b { "true" } else { "false" }.into())],
        ),
        Value::Null => (
            "(COALESCE(json_type(body, ?), 'null') = 'null')",
            vec![path],
        ),
        Value::Array(_) | Value::Object(_) => (
            "(json_type(body, ?) = ? AND json_extract(body, ?) = json(?))",
            vec![
                path.clone(),
                Bind::Text(if value.is_array() { "array" } else { "object" }.into()),
                path,
                Bind::Text(serde_json::to_string(value)?),
            ],
        ),
    })
}

/// Appends a specification (see [`crate::spec`] for its semantics) as one SQL expression that
/// is always 0 or 1, never NULL, so `NOT` is an exact complement; its values go to `binds`.
fn spec_sql(filter: &Filter, sql: &mut String, binds: &mut Vec<Bind>) -> KernelResult<()> {
    match filter {
        Filter::And(nodes) | Filter::Or(nodes) => {
            if nodes.is_empty() {
                return Err(KernelError::storage("specification: empty and/or"));
            }
            let joiner = if matches!(filter, Filter::And(_)) {
                " AND "
            } else {
                " OR "
            };
            sql.push('(');
            for (index, node) in nodes.iter().enumerate() {
                if index > 0 {
                    sql.push_str(joiner);
                }
                spec_sql(node, sql, binds)?;
            }
            sql.push(')');
        }
        Filter::Not(node) => {
            sql.push_str("(NOT ");
            spec_sql(node, sql, binds)?;
            sql.push(')');
        }
        Filter::Condition { field, op, value } => {
            spec_condition_sql(field, *op, value, sql, binds)?
        }
    }
    Ok(())
}

fn spec_condition_sql(
    field: &str,
    op: Op,
    value: &Value,
    sql: &mut String,
    binds: &mut Vec<Bind>,
) -> KernelResult<()> {
    let path = Bind::Text(json_path(field)?);
    let comparison = match op {
        Op::Ne => {
            sql.push_str("(NOT ");
            spec_condition_sql(field, Op::Eq, value, sql, binds)?;
            sql.push(')');
            return Ok(());
        }
        Op::In => return spec_in_sql(path, value, sql, binds),
        Op::Contains => {
            let Value::String(needle) = value else {
                return Err(KernelError::storage(
                    "specification: contains needs a string",
                ));
            };
            // lower() folds ASCII letters only, which is the documented semantics.
            sql.push_str(
                "(COALESCE(json_type(body, ?), '') = 'text' \
                 AND instr(lower(json_extract(body, ?)), lower(?)) > 0)",
            );
            binds.extend([path.clone(), path, Bind::Text(needle.clone())]);
            return Ok(());
        }
        Op::Eq => "=",
        Op::Gt => ">",
        Op::Gte => ">=",
        Op::Lt => "<",
        Op::Lte => "<=",
    };
    let (type_test, bind) = spec_scalar(value)?;
    sql.push_str(&format!(
        "({type_test} AND json_extract(body, ?) {comparison} ?)"
    ));
    binds.extend([path.clone(), path, bind]);
    Ok(())
}

/// `in`: per JSON type among the values, "the field has that type and is one of them".
fn spec_in_sql(
    path: Bind,
    value: &Value,
    sql: &mut String,
    binds: &mut Vec<Bind>,
) -> KernelResult<()> {
    let Value::Array(items) = value else {
        return Err(KernelError::storage("specification: in needs an array"));
    };
    // Grouped by type test, in order of first appearance.
    let mut groups: Vec<(&'static str, Vec<Bind>)> = Vec::new();
    for item in items {
        let (type_test, bind) = spec_scalar(item)?;
        match groups.iter_mut().find(|(test, _)| *test == type_test) {
            Some((_, group)) => group.push(bind),
            None => groups.push((type_test, vec![bind])),
        }
    }
    if groups.is_empty() {
        return Err(KernelError::storage("specification: empty in list"));
    }
    sql.push('(');
    for (index, (type_test, group)) in groups.into_iter().enumerate() {
        if index > 0 {
            sql.push_str(" OR ");
        }
        let placeholders = vec!["?"; group.len()].join(", ");
        sql.push_str(&format!(
            "({type_test} AND json_extract(body, ?) IN ({placeholders}))"
        ));
        binds.extend([path.clone(), path.clone()]);
        binds.extend(group);
    }
    sql.push(')');
    Ok(())
}

/// A specification value: the test "the field holds a JSON value of its type" (one `?` for the
/// path; never NULL) and the bind `json_extract` compares equal to (booleans extract as 1/0).
fn spec_scalar(value: &Value) -> KernelResult<(&'static str, Bind)> {
    Ok(match value {
        Value::String(s) => (
            "COALESCE(json_type(body, ?), '') = 'text'",
            Bind::Text(s.clone()),
        ),
        Value::Number(n) => (
            "COALESCE(json_type(body, ?), '') IN ('integer', 'real')",
            number_bind(n),
        ),
        Value::Bool(b) => (
            "COALESCE(json_type(body, ?), '') IN ('true', 'false')",
            Bind::Int(i64::from(*b)),
        ),
        Value::Null | Value::Array(_) | Value::Object(_) => {
            return Err(KernelError::storage(
                "specification: values are strings, numbers or booleans",
            ))
        }
    })
}

/// Runs a set-wise op (`DeleteWhere`, `TombstoneWhere`): it matches documents by content.
async fn apply_set_wise(
    conn: &mut SqliteConnection,
    target: &Target,
    op: &DocOp,
) -> KernelResult<()> {
    let (head, collection, field, value) = match op {
        DocOp::DeleteWhere {
            collection,
            field,
            value,
        } => (DELETE_WHERE, collection, field, value),
        DocOp::TombstoneWhere {
            collection,
            field,
            value,
        } => (TOMBSTONE_WHERE, collection, field, value),
        _ => {
            return Err(KernelError::Storage(
                "a per-document op went the set-wise way".into(),
            ))
        }
    };
    let (condition, mut binds) = equals(field, value)?;
    binds.insert(0, Bind::Text(target.physical(collection)));
    let sql = format!("{head}{condition}");
    bind_all(sqlx::query(&sql), &binds)
        .execute(&mut *conn)
        .await
        .map(|_| ())
        .map_err(KernelError::storage)
}

/// Applies document ops in order. Each run of per-document ops is folded in memory (see
/// `doc_fold`): the documents it needs are read in a few statements and each one it changes
/// is written once, with multi-row statements, instead of one statement per op (every
/// statement is a round trip to sqlx's SQLite worker thread). Set-wise ops run between the
/// runs, after what comes before them is written.
async fn apply_ops(
    conn: &mut SqliteConnection,
    target: &Target,
    ops: &[&DocOp],
) -> KernelResult<()> {
    let mut fold = Fold::default();
    // Physical names, made once per collection rather than once per op.
    let mut physical: HashMap<&str, String> = HashMap::new();
    for op in ops {
        match doc_fold::target_of(op) {
            Some((collection, id)) => {
                let name = physical
                    .entry(collection)
                    .or_insert_with(|| target.physical(collection));
                fold.push(name, id, op);
            }
            None => {
                write_fold(conn, std::mem::take(&mut fold)).await?;
                apply_set_wise(conn, target, op).await?;
            }
        }
    }
    write_fold(conn, fold).await
}

/// Reads the documents a fold needs, folds, and writes the result.
async fn write_fold(conn: &mut SqliteConnection, fold: Fold<'_>) -> KernelResult<()> {
    if fold.is_empty() {
        return Ok(());
    }
    let mut bases: HashMap<DocKey, Value> = HashMap::new();
    for (collection, ids) in fold.bases_needed() {
        let found = select_in(conn, collection, &ids, |list| {
            format!("SELECT id, body FROM documents WHERE collection = ? AND id IN ({list})")
        })
        .await?;
        for row in found {
            let id: String = row.try_get(0).map_err(KernelError::storage)?;
            let body: String = row.try_get(1).map_err(KernelError::storage)?;
            bases.insert((collection.to_string(), id), serde_json::from_str(&body)?);
        }
    }
    let (puts, removes): (Vec<DocWrite>, Vec<DocWrite>) = fold
        .finish(bases)?
        .into_iter()
        .partition(|write| matches!(write, DocWrite::Put { .. }));
    for chunk in statement_chunks(&puts) {
        let sql = format!(
            "INSERT INTO documents (collection, id, body) VALUES {} \
             ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body",
            rows(chunk.len(), "(?, ?, ?)")
        );
        let mut query = sqlx::query(&sql);
        for write in chunk {
            if let DocWrite::Put {
                collection,
                id,
                body,
            } = write
            {
                query = query
                    .bind(collection.as_str())
                    .bind(id.as_str())
                    .bind(body.as_str());
            }
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(KernelError::storage)?;
    }
    for chunk in statement_chunks(&removes) {
        let sql = format!(
            "DELETE FROM documents WHERE (collection, id) IN (VALUES {})",
            rows(chunk.len(), "(?, ?)")
        );
        let mut query = sqlx::query(&sql);
        for write in chunk {
            if let DocWrite::Remove { collection, id } = write {
                query = query.bind(collection.as_str()).bind(id.as_str());
            }
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(KernelError::storage)?;
    }
    Ok(())
}

/// The rows of a multi-row statement at most; each row binds up to 3 parameters, well under
/// SQLite's limit.
const MAX_ROWS: usize = 512;

/// Splits `items` into runs whose lengths are powers of two (at most [`MAX_ROWS`]), so every
/// multi-row statement has one of ten shapes and stays in sqlx's statement cache.
fn statement_chunks<T>(mut items: &[T]) -> impl Iterator<Item = &[T]> {
    std::iter::from_fn(move || {
        let n = items.len();
        if n == 0 {
            return None;
        }
        let size = if n >= MAX_ROWS {
            MAX_ROWS
        } else {
            1 << (usize::BITS - 1 - n.leading_zeros())
        };
        let (chunk, rest) = items.split_at(size);
        items = rest;
        Some(chunk)
    })
}

/// The rows of `select(list)` for `scope` and every key in `keys`, where `list` is the
/// statement's `IN` list of placeholders and `scope` binds its one `?` before the list; a
/// statement per [`statement_chunks`] run.
async fn select_in(
    conn: &mut SqliteConnection,
    scope: &str,
    keys: &[&str],
    select: impl Fn(&str) -> String,
) -> KernelResult<Vec<SqliteRow>> {
    let mut found = Vec::new();
    for chunk in statement_chunks(keys) {
        let sql = select(&rows(chunk.len(), "?"));
        let mut query = sqlx::query(&sql).bind(scope);
        for key in chunk {
            query = query.bind(*key);
        }
        found.extend(
            query
                .fetch_all(&mut *conn)
                .await
                .map_err(KernelError::storage)?,
        );
    }
    Ok(found)
}

/// `count` copies of `row`, comma-separated.
fn rows(count: usize, row: &str) -> String {
    vec![row; count].join(", ")
}

/// The stored versions of the given aggregates (absent: none applied).
async fn stored_versions(
    conn: &mut SqliteConnection,
    key: &str,
    aggregate_keys: &[&str],
) -> KernelResult<HashMap<String, u64>> {
    let unique = unique_keys(aggregate_keys);
    let mut found = HashMap::with_capacity(unique.len());
    let selected = select_in(conn, key, &unique, |list| {
        format!(
            "SELECT aggregate_key, sequence FROM aggregate_versions \
             WHERE projection = ? AND aggregate_key IN ({list})"
        )
    })
    .await?;
    for row in selected {
        let aggregate_key: String = row.try_get(0).map_err(KernelError::storage)?;
        let sequence: i64 = row.try_get(1).map_err(KernelError::storage)?;
        found.insert(aggregate_key, u64::try_from(sequence).unwrap_or(0));
    }
    Ok(found)
}

/// The lowest and highest parked sequence of each given aggregate that has parked events.
async fn parked_ranges(
    conn: &mut SqliteConnection,
    key: &str,
    aggregate_keys: &[&str],
) -> KernelResult<HashMap<String, (u64, u64)>> {
    let mut found = HashMap::new();
    // Almost always none: one cheap probe instead of the lookups.
    let any: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM parked WHERE projection = ?)")
        .bind(key)
        .fetch_one(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    if !any {
        return Ok(found);
    }
    let unique = unique_keys(aggregate_keys);
    let selected = select_in(conn, key, &unique, |list| {
        format!(
            "SELECT aggregate_key, MIN(sequence), MAX(sequence) FROM parked \
             WHERE projection = ? AND aggregate_key IN ({list}) GROUP BY aggregate_key"
        )
    })
    .await?;
    for row in selected {
        let aggregate_key: String = row.try_get(0).map_err(KernelError::storage)?;
        let low: i64 = row.try_get(1).map_err(KernelError::storage)?;
        let high: i64 = row.try_get(2).map_err(KernelError::storage)?;
        found.insert(
            aggregate_key,
            (
                u64::try_from(low).unwrap_or(0),
                u64::try_from(high).unwrap_or(0),
            ),
        );
    }
    Ok(found)
}

/// Each key once, in first-seen order.
fn unique_keys<'k>(keys: &[&'k str]) -> Vec<&'k str> {
    let mut seen = HashSet::with_capacity(keys.len());
    keys.iter()
        .copied()
        .filter(|key| seen.insert(*key))
        .collect()
}

async fn stored_version(
    conn: &mut SqliteConnection,
    key: &str,
    aggregate_key: &str,
) -> KernelResult<u64> {
    let stored: Option<i64> = sqlx::query_scalar(
        "SELECT sequence FROM aggregate_versions WHERE projection = ? AND aggregate_key = ?",
    )
    .bind(key)
    .bind(aggregate_key)
    .fetch_optional(&mut *conn)
    .await
    .map_err(KernelError::storage)?;
    Ok(stored.map_or(0, |s| u64::try_from(s).unwrap_or(0)))
}

/// The lowest and highest parked sequence of an aggregate, if it has parked events.
async fn parked_range(
    conn: &mut SqliteConnection,
    key: &str,
    aggregate_key: &str,
) -> KernelResult<Option<(u64, u64)>> {
    let row = sqlx::query(
        "SELECT MIN(sequence), MAX(sequence) FROM parked WHERE projection = ? AND aggregate_key = ?",
    )
    .bind(key)
    .bind(aggregate_key)
    .fetch_one(&mut *conn)
    .await
    .map_err(KernelError::storage)?;
    let low: Option<i64> = row.try_get(0).map_err(KernelError::storage)?;
    let high: Option<i64> = row.try_get(1).map_err(KernelError::storage)?;
    Ok(match (low, high) {
        (Some(low), Some(high)) => Some((
            u64::try_from(low).unwrap_or(0),
            u64::try_from(high).unwrap_or(0),
        )),
        _ => None,
    })
}

/// Renews the lease of a shadow generation's builder.
async fn renew_lease(conn: &mut SqliteConnection, target: &Target) -> KernelResult<()> {
    if target.shadow {
        sqlx::query(
            "UPDATE generations SET shadow_heartbeat = ? WHERE projection = ? AND shadow = ?",
        )
        .bind(chrono::Utc::now().to_rfc3339())
        .bind(target.name.as_str())
        .bind(to_i64(target.generation, "generation")?)
        .execute(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    }
    Ok(())
}

/// Applies the effects above their aggregate's stored version, inside the caller's transaction.
async fn apply_guarded_in(
    conn: &mut SqliteConnection,
    target: &Target,
    effects: &[EventEffect],
    checkpoint: i64,
) -> KernelResult<()> {
    let keys: Vec<&str> = effects.iter().map(|e| e.aggregate_key.as_str()).collect();
    let stored = stored_versions(conn, &target.key, &keys).await?;
    let mut applied: HashMap<&str, u64> = HashMap::new();
    let mut ops: Vec<&DocOp> = Vec::new();
    for effect in effects {
        let key = effect.aggregate_key.as_str();
        let version = match applied.get(key) {
            Some(version) => *version,
            None => stored.get(key).copied().unwrap_or(0),
        };
        if effect.sequence <= version {
            continue;
        }
        ops.extend(&effect.ops);
        applied.insert(key, effect.sequence);
    }
    apply_ops(conn, target, &ops).await?;
    let versions: AggregateVersions = applied
        .into_iter()
        .map(|(key, sequence)| (key.to_string(), sequence))
        .collect();
    apply_in(conn, target, &[], &versions, checkpoint).await
}

/// What the transaction knows of an aggregate while applying a batch.
#[derive(Debug, Clone, Copy)]
struct AggregateState {
    version: u64,
    /// Lowest and highest parked sequence.
    parked: Option<(u64, u64)>,
}

/// Applies or parks each event in order, inside the caller's transaction. The batch's
/// aggregates are looked up once, up front, and its document ops folded (see `apply_ops`).
async fn apply_projected_in(
    conn: &mut SqliteConnection,
    target: &Target,
    events: &[ProjectedEvent],
    checkpoint: i64,
) -> KernelResult<ApplyReport> {
    let keys: Vec<&str> = events.iter().map(|e| e.aggregate_key.as_str()).collect();
    let versions = stored_versions(conn, &target.key, &keys).await?;
    let parked = parked_ranges(conn, &target.key, &keys).await?;
    let mut states: HashMap<&str, AggregateState> = HashMap::new();
    let mut report = ApplyReport::default();
    let mut applied: HashMap<&str, u64> = HashMap::new();
    let mut ops: Vec<&DocOp> = Vec::new();
    let now = chrono::Utc::now().to_rfc3339();
    for event in events {
        let key = event.aggregate_key.as_str();
        let state = match states.get(key) {
            Some(state) => *state,
            None => AggregateState {
                version: versions.get(key).copied().unwrap_or(0),
                parked: parked.get(key).copied(),
            },
        };
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
            (Ok(_), Some((low, _))) => Some(format!("held back: event {low} of {key} is parked")),
        };
        let next = match (error, &event.outcome) {
            (None, Ok(event_ops)) => {
                ops.extend(event_ops);
                applied.insert(key, event.sequence);
                report.applied += 1;
                AggregateState {
                    version: event.sequence,
                    parked: None,
                }
            }
            (error, _) => {
                let error = error.unwrap_or_default();
                insert_parked(conn, &target.key, event, &error, &now).await?;
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
    apply_ops(conn, target, &ops).await?;
    let versions: AggregateVersions = applied
        .into_iter()
        .map(|(key, sequence)| (key.to_string(), sequence))
        .collect();
    apply_in(conn, target, &[], &versions, checkpoint).await?;
    Ok(report)
}

async fn insert_parked(
    conn: &mut SqliteConnection,
    key: &str,
    event: &ProjectedEvent,
    error: &str,
    now: &str,
) -> KernelResult<()> {
    sqlx::query(INSERT_PARKED)
        .bind(key)
        .bind(event.aggregate_key.as_str())
        .bind(to_i64(event.sequence, "sequence")?)
        .bind(to_i64(event.position, "position")?)
        .bind(event.event_id.as_str())
        .bind(error)
        .bind(now)
        .bind(serde_json::to_string(&event.envelope.to_json())?)
        .execute(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    Ok(())
}

/// Retries parked events in sequence order, inside the caller's transaction.
async fn retry_parked_in(
    conn: &mut SqliteConnection,
    target: &Target,
    mut events: Vec<ProjectedEvent>,
) -> KernelResult<RetryReport> {
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
        let sequence = to_i64(event.sequence, "sequence")?;
        // Only what is still parked, and only from the aggregate's first parked event on.
        let Some((low, _)) = parked_range(conn, &target.key, key).await? else {
            continue;
        };
        if event.sequence < low {
            continue;
        }
        if event.sequence > low {
            set_parked_error(
                conn,
                &target.key,
                key,
                low,
                "retry it first: it is the aggregate's first parked event",
            )
            .await?;
            failed.insert(key.to_string());
            continue;
        }
        let version = stored_version(conn, &target.key, key).await?;
        if event.sequence > version {
            match &event.outcome {
                Ok(ops) => {
                    apply_ops(conn, target, &ops.iter().collect::<Vec<_>>()).await?;
                    let versions = vec![(key.to_string(), event.sequence)];
                    write_versions(conn, &target.key, &versions).await?;
                    report.applied += 1;
                }
                Err(error) => {
                    set_parked_error(conn, &target.key, key, event.sequence, error).await?;
                    failed.insert(key.to_string());
                    continue;
                }
            }
        }
        sqlx::query(
            "DELETE FROM parked WHERE projection = ? AND aggregate_key = ? AND sequence = ?",
        )
        .bind(target.key.as_str())
        .bind(key)
        .bind(sequence)
        .execute(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    }
    for key in &aggregates {
        let count: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM parked WHERE projection = ? AND aggregate_key = ?",
        )
        .bind(target.key.as_str())
        .bind(key.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
        report.still_parked += u64::try_from(count).unwrap_or(0);
    }
    Ok(report)
}

async fn set_parked_error(
    conn: &mut SqliteConnection,
    key: &str,
    aggregate_key: &str,
    sequence: u64,
    error: &str,
) -> KernelResult<()> {
    sqlx::query(
        "UPDATE parked SET error = ? WHERE projection = ? AND aggregate_key = ? AND sequence = ?",
    )
    .bind(error)
    .bind(key)
    .bind(aggregate_key)
    .bind(to_i64(sequence, "sequence")?)
    .execute(&mut *conn)
    .await
    .map_err(KernelError::storage)?;
    Ok(())
}

async fn write_versions(
    conn: &mut SqliteConnection,
    key: &str,
    versions: &AggregateVersions,
) -> KernelResult<()> {
    for chunk in statement_chunks(versions) {
        let sql = format!(
            "INSERT INTO aggregate_versions (projection, aggregate_key, sequence) VALUES {} \
             ON CONFLICT (projection, aggregate_key) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)",
            rows(chunk.len(), "(?, ?, ?)")
        );
        let mut query = sqlx::query(&sql);
        for (aggregate_key, sequence) in chunk {
            query = query
                .bind(key)
                .bind(aggregate_key.as_str())
                .bind(to_i64(*sequence, "sequence")?);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(KernelError::storage)?;
    }
    Ok(())
}

async fn apply_in(
    conn: &mut SqliteConnection,
    target: &Target,
    ops: &[DocOp],
    versions: &AggregateVersions,
    checkpoint: i64,
) -> KernelResult<()> {
    apply_ops(conn, target, &ops.iter().collect::<Vec<_>>()).await?;
    write_versions(conn, &target.key, versions).await?;
    sqlx::query(UPSERT_CHECKPOINT)
        .bind(target.key.as_str())
        .bind(checkpoint)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    renew_lease(conn, target).await
}

/// Deletes everything of one generation of a projection: documents, versions, checkpoint,
/// parked events.
async fn drop_generation_in(
    conn: &mut SqliteConnection,
    name: &str,
    collections: &[String],
    generation: u64,
) -> KernelResult<()> {
    for collection in collections {
        sqlx::query("DELETE FROM documents WHERE collection = ?")
            .bind(physical_collection(collection, generation))
            .execute(&mut *conn)
            .await
            .map_err(KernelError::storage)?;
    }
    let key = projection_key(name, generation);
    for table in ["aggregate_versions", "checkpoints", "parked"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE projection = ?"))
            .bind(key.as_str())
            .execute(&mut *conn)
            .await
            .map_err(KernelError::storage)?;
    }
    Ok(())
}

/// Generations of a projection that have data and are not in `keep` (leftovers of a crashed
/// rebuild or swap).
async fn stray_generations(
    conn: &mut SqliteConnection,
    name: &str,
    collections: &[String],
    keep: &[u64],
) -> KernelResult<Vec<u64>> {
    let mut found: HashSet<u64> = HashSet::new();
    // `#` sorts just before `$`: the range (`x#`, `x$`) holds exactly the names `x#...`.
    let range = |prefix: &str| (format!("{prefix}#"), format!("{prefix}$"));
    let mut names: Vec<String> = Vec::new();
    let (low, high) = range(name);
    for table in ["checkpoints", "aggregate_versions", "parked"] {
        let sql = format!(
            "SELECT DISTINCT projection FROM {table} WHERE projection > ? AND projection < ?"
        );
        names.extend(
            sqlx::query_scalar::<_, String>(&sql)
                .bind(low.as_str())
                .bind(high.as_str())
                .fetch_all(&mut *conn)
                .await
                .map_err(KernelError::storage)?,
        );
    }
    for collection in collections {
        let (low, high) = range(collection);
        names.extend(
            sqlx::query_scalar::<_, String>(
                "SELECT DISTINCT collection FROM documents WHERE collection > ? AND collection < ?",
            )
            .bind(low.as_str())
            .bind(high.as_str())
            .fetch_all(&mut *conn)
            .await
            .map_err(KernelError::storage)?,
        );
    }
    for physical in &names {
        if let (_, Some(generation)) = split_generation_key(physical) {
            found.insert(generation);
        }
    }
    // Generation 0 has plain names; it is stray once another generation is active.
    if !keep.contains(&0) {
        let mut any: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM checkpoints WHERE projection = ?1) \
             OR EXISTS (SELECT 1 FROM aggregate_versions WHERE projection = ?1)",
        )
        .bind(name)
        .fetch_one(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
        for collection in collections {
            any = any
                || sqlx::query_scalar::<_, bool>(
                    "SELECT EXISTS (SELECT 1 FROM documents WHERE collection = ?)",
                )
                .bind(collection.as_str())
                .fetch_one(&mut *conn)
                .await
                .map_err(KernelError::storage)?;
        }
        if any {
            found.insert(0);
        }
    }
    let mut stray: Vec<u64> = found.into_iter().filter(|g| !keep.contains(g)).collect();
    stray.sort_unstable();
    Ok(stray)
}

async fn begin_generation_in(
    conn: &mut SqliteConnection,
    name: &str,
    collections: &[String],
) -> KernelResult<u64> {
    let row = generation_row(conn, name).await?;
    if let Some(shadow) = row.shadow {
        if row.shadow_is_fresh() {
            return Err(KernelError::Rejected(DomainError::StateConflict(format!(
                "a rebuild of {name} (generation {shadow}) is already running"
            ))));
        }
    }
    for collection in collections {
        let owner: Option<String> = sqlx::query_scalar(
            "SELECT projection FROM generation_collections WHERE collection = ?",
        )
        .bind(collection.as_str())
        .fetch_optional(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
        if let Some(owner) = owner.filter(|owner| owner != name) {
            return Err(KernelError::Storage(format!(
                "collection {collection} belongs to projection {owner}, not {name}"
            )));
        }
    }
    let mut all = row.collections.clone();
    for collection in collections {
        if !all.contains(collection) {
            all.push(collection.clone());
        }
    }
    let generation = row.active.max(row.shadow.unwrap_or(0)) + 1;
    // A stale shadow and any other leftover: only the active copy survives.
    for stray in stray_generations(conn, name, &all, &[row.active]).await? {
        drop_generation_in(conn, name, &all, stray).await?;
    }
    sqlx::query(
        "INSERT INTO generations (projection, active, shadow, shadow_heartbeat, collections) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (projection) DO UPDATE SET \
         shadow = excluded.shadow, shadow_heartbeat = excluded.shadow_heartbeat, \
         collections = excluded.collections",
    )
    .bind(name)
    .bind(to_i64(row.active, "generation")?)
    .bind(to_i64(generation, "generation")?)
    .bind(chrono::Utc::now().to_rfc3339())
    .bind(serde_json::to_string(&all)?)
    .execute(&mut *conn)
    .await
    .map_err(KernelError::storage)?;
    for collection in &all {
        sqlx::query(
            "INSERT INTO generation_collections (collection, projection) VALUES (?, ?) \
             ON CONFLICT (collection) DO NOTHING",
        )
        .bind(collection.as_str())
        .bind(name)
        .execute(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    }
    Ok(generation)
}

/// Swaps the shadow in if it dominates; returns the generation to drop afterwards.
async fn swap_generation_in(
    conn: &mut SqliteConnection,
    name: &str,
    generation: u64,
) -> KernelResult<Option<(u64, Vec<String>)>> {
    let row = generation_row(conn, name).await?;
    if row.shadow != Some(generation) {
        return Err(KernelError::Storage(format!(
            "generation {generation} of {name} is not being rebuilt"
        )));
    }
    let live = projection_key(name, row.active);
    let shadow = projection_key(name, generation);
    let behind: i64 = sqlx::query_scalar(BEHIND)
        .bind(live.as_str())
        .bind(shadow.as_str())
        .fetch_one(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    if behind > 0 {
        return Ok(None);
    }
    // The shadow has seen every event the live copy has, so it is at least as far.
    let mut checkpoint: i64 = 0;
    for key in [&live, &shadow] {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = ?")
                .bind(key.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(KernelError::storage)?;
        checkpoint = checkpoint.max(position.unwrap_or(0));
    }
    sqlx::query(UPSERT_CHECKPOINT)
        .bind(shadow.as_str())
        .bind(checkpoint)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    sqlx::query(
        "UPDATE generations SET active = ?, shadow = NULL, shadow_heartbeat = NULL \
         WHERE projection = ?",
    )
    .bind(to_i64(generation, "generation")?)
    .bind(name)
    .execute(&mut *conn)
    .await
    .map_err(KernelError::storage)?;
    Ok(Some((row.active, row.collections)))
}

fn parked_from_row(row: &SqliteRow) -> KernelResult<ParkedEvent> {
    let sequence: i64 = row.try_get(2).map_err(KernelError::storage)?;
    let position: i64 = row.try_get(3).map_err(KernelError::storage)?;
    let envelope: String = row.try_get(6).map_err(KernelError::storage)?;
    Ok(ParkedEvent {
        id: row.try_get(0).map_err(KernelError::storage)?,
        aggregate_key: row.try_get(1).map_err(KernelError::storage)?,
        sequence: u64::try_from(sequence).unwrap_or(0),
        position: u64::try_from(position).unwrap_or(0),
        error: row.try_get(4).map_err(KernelError::storage)?,
        parked_at: row.try_get(5).map_err(KernelError::storage)?,
        envelope: serde_json::from_str(&envelope)?,
    })
}

#[async_trait]
impl ReadStore for SqliteReadStore {
    async fn apply(
        &self,
        projection: &str,
        ops: Vec<DocOp>,
        versions: AggregateVersions,
        checkpoint: u64,
    ) -> KernelResult<()> {
        let projection = projection.to_string();
        let checkpoint = to_i64(checkpoint, "checkpoint")?;
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let target = resolve_write(conn, &projection).await?;
                apply_in(conn, &target, &ops, &versions, checkpoint).await
            })
        }))
        .await
    }

    async fn apply_guarded(
        &self,
        projection: &str,
        effects: Vec<EventEffect>,
        checkpoint: u64,
    ) -> KernelResult<()> {
        let projection = projection.to_string();
        let checkpoint = to_i64(checkpoint, "checkpoint")?;
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let target = resolve_write(conn, &projection).await?;
                apply_guarded_in(conn, &target, &effects, checkpoint).await
            })
        }))
        .await
    }

    async fn checkpoint(&self, projection: &str) -> KernelResult<u64> {
        let mut tx = self.reader.begin().await.map_err(KernelError::storage)?;
        let target = resolve(&mut tx, projection).await?;
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = ?")
                .bind(target.key.as_str())
                .fetch_optional(&mut *tx)
                .await
                .map_err(KernelError::storage)?;
        tx.commit().await.map_err(KernelError::storage)?;
        Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
    }

    async fn versions(&self, projection: &str, keys: &[String]) -> KernelResult<AggregateVersions> {
        let target = self.resolve_read(projection).await?;
        let mut found: HashMap<String, u64> = HashMap::new();
        for chunk in keys.chunks(VERSIONS_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT aggregate_key, sequence FROM aggregate_versions \
                 WHERE projection = ? AND aggregate_key IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql).bind(target.key.as_str());
            for key in chunk {
                query = query.bind(key.as_str());
            }
            let rows = query
                .fetch_all(&self.reader)
                .await
                .map_err(KernelError::storage)?;
            for row in rows {
                let key: String = row.try_get(0).map_err(KernelError::storage)?;
                let sequence: i64 = row.try_get(1).map_err(KernelError::storage)?;
                found.insert(key, u64::try_from(sequence).unwrap_or(0));
            }
        }
        // In the order asked for, each key once.
        Ok(keys
            .iter()
            .filter_map(|key| found.remove(key).map(|sequence| (key.clone(), sequence)))
            .collect())
    }

    async fn get(&self, collection: &str, id: &str) -> KernelResult<Option<Value>> {
        // One statement: the active generation and the document come from one snapshot.
        let sql = format!(
            "SELECT body FROM documents WHERE collection = {RESOLVE_COLLECTION} AND id = ?2"
        );
        let body: Option<String> = sqlx::query_scalar(&sql)
            .bind(collection)
            .bind(id)
            .fetch_optional(&self.reader)
            .await
            .map_err(KernelError::storage)?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    /// `limit == 0` means no limit. Ties of the sort field are broken by document id, so pages
    /// are stable.
    async fn find(&self, collection: &str, query: &DocQuery) -> KernelResult<DocPage> {
        // One read transaction: the generation, the page and the total come from one snapshot.
        let mut tx = self.reader.begin().await.map_err(KernelError::storage)?;
        let physical: String = sqlx::query_scalar(&format!("SELECT {RESOLVE_COLLECTION}"))
            .bind(collection)
            .fetch_one(&mut *tx)
            .await
            .map_err(KernelError::storage)?;

        let mut condition = String::from("collection = ?");
        let mut binds = vec![Bind::Text(physical)];
        for (field, value) in &query.filter {
            let (fragment, more) = equals(field, value)?;
            condition.push_str(" AND ");
            condition.push_str(fragment);
            binds.extend(more);
        }

        if let Some(spec) = &query.condition {
            condition.push_str(" AND ");
            spec_sql(spec, &mut condition, &mut binds)?;
        }
        let mut select_binds = binds.clone();
        let mut order = String::new();
        for (field, ascending) in &query.sort {
            select_binds.push(Bind::Text(json_path(field)?));
            order.push_str(if *ascending {
                "json_extract(body, ?) ASC, "
            } else {
                "json_extract(body, ?) DESC, "
            });
        }
        // Ties break by id, in the direction of the last key, so pages are stable.
        order.push_str(match query.sort.last() {
            Some((_, false)) => "id DESC",
            _ => "id ASC",
        });
        let limit = if query.limit == 0 {
            -1
        } else {
            i64::from(query.limit)
        };
        select_binds.push(Bind::Int(limit));
        select_binds.push(Bind::Int(offset_bind(query.offset)));

        let count_sql = format!("SELECT COUNT(*) FROM documents WHERE {condition}");
        let select_sql = format!(
            "SELECT body FROM documents WHERE {condition} ORDER BY {order} LIMIT ? OFFSET ?"
        );

        let total: i64 = bind_all(sqlx::query(&count_sql), &binds)
            .fetch_one(&mut *tx)
            .await
            .and_then(|row| row.try_get(0))
            .map_err(KernelError::storage)?;
        let rows = bind_all(sqlx::query(&select_sql), &select_binds)
            .fetch_all(&mut *tx)
            .await
            .map_err(KernelError::storage)?;
        tx.commit().await.map_err(KernelError::storage)?;

        let items = rows
            .iter()
            .map(|row| {
                let body: &str = row.try_get(0).map_err(KernelError::storage)?;
                Ok(serde_json::from_str(body)?)
            })
            .collect::<KernelResult<Vec<Value>>>()?;
        Ok(DocPage {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    /// Drops the target generation's documents of `collections`, its versions, checkpoint and
    /// parked events.
    async fn reset(&self, projection: &str, collections: &[&str]) -> KernelResult<()> {
        let projection = projection.to_string();
        let collections: Vec<String> = collections.iter().map(|c| c.to_string()).collect();
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let target = resolve_write(conn, &projection).await?;
                for collection in &collections {
                    sqlx::query("DELETE FROM documents WHERE collection = ?")
                        .bind(target.physical(collection))
                        .execute(&mut *conn)
                        .await
                        .map_err(KernelError::storage)?;
                }
                for table in ["aggregate_versions", "checkpoints", "parked"] {
                    sqlx::query(&format!("DELETE FROM {table} WHERE projection = ?"))
                        .bind(target.key.as_str())
                        .execute(&mut *conn)
                        .await
                        .map_err(KernelError::storage)?;
                }
                Ok(())
            })
        }))
        .await
    }

    async fn ping(&self) -> KernelResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map(|_| ())
            .map_err(KernelError::storage)
    }

    async fn apply_projected(
        &self,
        projection: &str,
        events: Vec<ProjectedEvent>,
        checkpoint: u64,
    ) -> KernelResult<ApplyReport> {
        let projection = projection.to_string();
        let checkpoint = to_i64(checkpoint, "checkpoint")?;
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let target = resolve_write(conn, &projection).await?;
                apply_projected_in(conn, &target, &events, checkpoint).await
            })
        }))
        .await
    }

    async fn parked(&self, projection: &str, limit: u32, offset: u64) -> KernelResult<ParkedPage> {
        let limit = if limit == 0 { -1 } else { i64::from(limit) };
        let items = self
            .parked_query(projection, "", None, limit, offset_bind(offset))
            .await?;
        let target = self.resolve_read(projection).await?;
        let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM parked WHERE projection = ?")
            .bind(target.key.as_str())
            .fetch_one(&self.reader)
            .await
            .map_err(KernelError::storage)?;
        Ok(ParkedPage {
            items,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn parked_of(
        &self,
        projection: &str,
        aggregate_key: &str,
    ) -> KernelResult<Vec<ParkedEvent>> {
        let mut items = self
            .parked_query(
                projection,
                "AND aggregate_key = ?",
                Some(aggregate_key),
                -1,
                0,
            )
            .await?;
        items.sort_by_key(|parked| parked.sequence);
        Ok(items)
    }

    async fn parked_by_id(&self, projection: &str, id: &str) -> KernelResult<Option<ParkedEvent>> {
        Ok(self
            .parked_query(projection, "AND event_id = ?", Some(id), 1, 0)
            .await?
            .into_iter()
            .next())
    }

    async fn retry_parked(
        &self,
        projection: &str,
        events: Vec<ProjectedEvent>,
    ) -> KernelResult<RetryReport> {
        let projection = projection.to_string();
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let target = resolve_write(conn, &projection).await?;
                retry_parked_in(conn, &target, events).await
            })
        }))
        .await
    }

    async fn status(&self, projection: &str) -> KernelResult<Option<Value>> {
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM documents WHERE collection = ? AND id = ?")
                .bind(STATUS_COLLECTION)
                .bind(projection)
                .fetch_optional(&self.reader)
                .await
                .map_err(KernelError::storage)?;
        Ok(body.map(|b| serde_json::from_str(&b)).transpose()?)
    }

    async fn merge_status(&self, projection: &str, patch: Value) -> KernelResult<()> {
        let projection = projection.to_string();
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let ops = [
                    DocOp::InsertIfAbsent {
                        collection: STATUS_COLLECTION.to_string(),
                        id: projection.clone(),
                        doc: serde_json::json!({ "name": projection }),
                    },
                    DocOp::Merge {
                        collection: STATUS_COLLECTION.to_string(),
                        id: projection.clone(),
                        patch,
                    },
                ];
                let mut fold = Fold::default();
                for op in &ops {
                    fold.push(STATUS_COLLECTION, &projection, op);
                }
                write_fold(conn, fold).await
            })
        }))
        .await
    }

    async fn generation(&self, projection: &str) -> KernelResult<u64> {
        let mut conn = self.reader.acquire().await.map_err(KernelError::storage)?;
        Ok(generation_row(&mut conn, projection).await?.active)
    }

    async fn begin_generation(&self, projection: &str, collections: &[&str]) -> KernelResult<u64> {
        let name = projection.to_string();
        let collections: Vec<String> = collections.iter().map(|c| c.to_string()).collect();
        self.write(Box::new(move |conn| {
            Box::pin(async move { begin_generation_in(conn, &name, &collections).await })
        }))
        .await
    }

    async fn swap_generation(&self, projection: &str, generation: u64) -> KernelResult<bool> {
        let name = projection.to_string();
        let swapped = self
            .write(Box::new(move |conn| {
                Box::pin(async move { swap_generation_in(conn, &name, generation).await })
            }))
            .await?;
        let Some((old, collections)) = swapped else {
            return Ok(false);
        };
        // Nothing resolves to the old generation any more; a crash here leaves it for the
        // next rebuild to drop.
        let name = projection.to_string();
        self.write(Box::new(move |conn| {
            Box::pin(async move { drop_generation_in(conn, &name, &collections, old).await })
        }))
        .await?;
        Ok(true)
    }

    async fn abandon_generation(&self, projection: &str, generation: u64) -> KernelResult<()> {
        let name = projection.to_string();
        self.write(Box::new(move |conn| {
            Box::pin(async move {
                let row = generation_row(conn, &name).await?;
                if row.active == generation {
                    return Err(KernelError::Storage(format!(
                        "generation {generation} of {name} is active"
                    )));
                }
                drop_generation_in(conn, &name, &row.collections, generation).await?;
                if row.shadow == Some(generation) {
                    sqlx::query(
                        "UPDATE generations SET shadow = NULL, shadow_heartbeat = NULL \
                         WHERE projection = ?",
                    )
                    .bind(name.as_str())
                    .execute(&mut *conn)
                    .await
                    .map_err(KernelError::storage)?;
                }
                Ok(())
            })
        }))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(filter: &Filter) -> KernelResult<(String, usize)> {
        let mut sql = String::new();
        let mut binds = Vec::new();
        spec_sql(filter, &mut sql, &mut binds)?;
        Ok((sql, binds.len()))
    }

    #[test]
    fn specs_become_bound_sql() {
        let tree = Filter::And(vec![
            Filter::condition("name", Op::Ne, json!("x'; DROP TABLE documents; --")),
            Filter::Not(Box::new(Filter::condition("price", Op::Gt, json!(2)))),
            Filter::condition("price", Op::In, json!([1, "1", true, 2])),
        ]);
        let (sql, binds) = spec(&tree).expect("translates");
        assert!(
            !sql.contains("DROP"),
            "values are bound, never interpolated"
        );
        assert_eq!(sql.matches('?').count(), binds);
        assert!(sql.starts_with("((NOT (COALESCE(json_type(body, ?), '') = 'text'"));
        // One IN list per JSON type among the values.
        assert_eq!(sql.matches(" IN (?, ?)").count(), 1, "{sql}");
        assert_eq!(sql.matches(" IN (?)").count(), 2, "{sql}");
    }

    #[test]
    fn spec_translation_rejects_what_parsing_never_produces() {
        for bad in [
            Filter::And(vec![]),
            Filter::Or(vec![]),
            Filter::condition("name", Op::Eq, Value::Null),
            Filter::condition("name", Op::Lt, json!([1])),
            Filter::condition("name", Op::In, json!("x")),
            Filter::condition("name", Op::In, json!([])),
            Filter::condition("name", Op::In, json!([{"a": 1}])),
            Filter::condition("name", Op::Contains, json!(1)),
            Filter::condition("a'b", Op::Eq, json!(1)),
        ] {
            assert!(spec(&bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn field_names_become_quoted_paths() {
        assert_eq!(json_path("status").ok(), Some("$.\"status\"".to_owned()));
        assert_eq!(
            json_path("by_type.document").ok(),
            Some("$.\"by_type\".\"document\"".to_owned())
        );
        for bad in [
            "", ".a", "a.", "a..b", "a b", "a\"b", "a'; DROP", "a[0]", "é",
        ] {
            assert!(json_path(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
