//! The embedded read-model store: JSON documents in a SQLite file of their own (not the event
//! store's), translated from [`DocOp`]s into SQLite JSON1 functions (`json_set`,
//! `json_extract`).
//!
//! Writes go through a pool of exactly one connection (SQLite has one writer anyway), so
//! `apply` calls serialize there while reads use a separate pool and, thanks to WAL, never wait
//! for them. Every value is bound as a parameter; field names are validated and turned into
//! quoted JSON paths that are bound too, so no SQL text is ever built from data.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool,
    SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Row, Sqlite};

use crate::error::{KernelError, KernelResult};
use crate::ports::{AggregateVersions, DocOp, DocPage, DocQuery, EventEffect, ReadStore};

/// How long a statement waits for a lock held by another connection or process.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Keys per `IN (...)` list when reading versions; well under SQLite's parameter limit.
const VERSIONS_CHUNK: usize = 500;

const UPSERT_DOC: &str = "INSERT INTO documents (collection, id, body) VALUES (?1, ?2, ?3) \
     ON CONFLICT (collection, id) DO UPDATE SET body = excluded.body";
// One top-level field, replaced whole; json(?4) inserts the value as JSON, not as a string.
const SET_FIELD: &str =
    "UPDATE documents SET body = json_set(body, ?3, json(?4)) WHERE collection = ?1 AND id = ?2";
// A missing (or non-numeric) field counts as 0; json_set creates missing parent objects.
const INCREMENT_DOC: &str = "UPDATE documents SET body = json_set(body, ?3, \
     (CASE WHEN json_type(body, ?3) IN ('integer', 'real') THEN json_extract(body, ?3) ELSE 0 END) + ?4) \
     WHERE collection = ?1 AND id = ?2";
const DELETE_DOC: &str = "DELETE FROM documents WHERE collection = ?1 AND id = ?2";
const DELETE_WHERE: &str = "DELETE FROM documents WHERE collection = ? AND ";
const TOMBSTONE_WHERE: &str = "UPDATE documents SET body = \
     json_set('{\"tombstone\":true}', '$.id', COALESCE(json_extract(body, '$.id'), id)) \
     WHERE collection = ? AND ";
const UPSERT_VERSION: &str =
    "INSERT INTO aggregate_versions (projection, aggregate_key, sequence) VALUES (?1, ?2, ?3) \
     ON CONFLICT (projection, aggregate_key) DO UPDATE SET sequence = MAX(sequence, excluded.sequence)";
// The checkpoint only moves forward: a replayed (older) batch leaves it alone.
const UPSERT_CHECKPOINT: &str =
    "INSERT INTO checkpoints (projection, position, updated_at) VALUES (?1, ?2, ?3) \
     ON CONFLICT (projection) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at \
     WHERE excluded.position > checkpoints.position";

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

impl SqliteReadStore {
    /// The reset itself; see `ReadStore::reset`.
    async fn reset_now(&self, projection: &str, collections: &[&str]) -> KernelResult<()> {
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(KernelError::storage)?;
        for collection in collections {
            sqlx::query("DELETE FROM documents WHERE collection = ?")
                .bind(*collection)
                .execute(&mut *tx)
                .await
                .map_err(KernelError::storage)?;
        }
        sqlx::query("DELETE FROM aggregate_versions WHERE projection = ?")
            .bind(projection)
            .execute(&mut *tx)
            .await
            .map_err(KernelError::storage)?;
        sqlx::query("DELETE FROM checkpoints WHERE projection = ?")
            .bind(projection)
            .execute(&mut *tx)
            .await
            .map_err(KernelError::storage)?;
        tx.commit().await.map_err(KernelError::storage)
    }

    /// The guarded apply itself; see `ReadStore::apply_guarded`.
    async fn apply_guarded_now(
        &self,
        projection: &str,
        effects: Vec<EventEffect>,
        checkpoint: u64,
    ) -> KernelResult<()> {
        let checkpoint = to_i64(checkpoint, "checkpoint")?;
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(KernelError::storage)?;
        match apply_guarded_in(&mut tx, projection, &effects, checkpoint).await {
            Ok(()) => tx.commit().await.map_err(KernelError::storage),
            Err(err) => {
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "read store rollback failed");
                }
                Err(err)
            }
        }
    }

    /// The apply itself; see `ReadStore::apply`.
    async fn apply_now(
        &self,
        projection: &str,
        ops: Vec<DocOp>,
        versions: AggregateVersions,
        checkpoint: u64,
    ) -> KernelResult<()> {
        let checkpoint = to_i64(checkpoint, "checkpoint")?;
        // IMMEDIATE takes the write lock up front, so the busy timeout applies to it.
        let mut tx = self
            .writer
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(KernelError::storage)?;
        match apply_in(&mut tx, projection, &ops, &versions, checkpoint).await {
            Ok(()) => tx.commit().await.map_err(KernelError::storage),
            Err(err) => {
                // The error that matters is the op's; a failed rollback also discards the writes.
                if let Err(rollback) = tx.rollback().await {
                    tracing::warn!(error = %rollback, "read store rollback failed");
                }
                Err(err)
            }
        }
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
            .busy_timeout(BUSY_TIMEOUT);
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
        sqlx::migrate!("../migrations/read-sqlite")
            .run(&self.writer)
            .await
            .map_err(KernelError::storage)
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
    let mut path = String::with_capacity(field.len() + 8);
    path.push('$');
    for segment in field.split('.') {
        path.push_str(".\"");
        path.push_str(segment);
        path.push('"');
    }
    Ok(path)
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

async fn apply_op(conn: &mut SqliteConnection, op: &DocOp) -> KernelResult<()> {
    match op {
        DocOp::Upsert {
            collection,
            id,
            doc,
        } => {
            sqlx::query(UPSERT_DOC)
                .bind(collection.as_str())
                .bind(id.as_str())
                .bind(serde_json::to_string(doc)?)
                .execute(&mut *conn)
                .await
        }
        DocOp::Merge {
            collection,
            id,
            patch,
        } => {
            let Some(fields) = patch.as_object() else {
                return Err(KernelError::Storage(
                    "a merge patch must be an object".into(),
                ));
            };
            let mut done = sqlx::sqlite::SqliteQueryResult::default();
            for (field, value) in fields {
                let path = json_path(field)?;
                done = sqlx::query(SET_FIELD)
                    .bind(collection.as_str())
                    .bind(id.as_str())
                    .bind(path)
                    .bind(serde_json::to_string(value)?)
                    .execute(&mut *conn)
                    .await
                    .map_err(|err| KernelError::Storage(format!("read store: {err}")))?;
            }
            Ok(done)
        }
        DocOp::Increment {
            collection,
            id,
            field,
            by,
        } => {
            let path = json_path(field)?;
            if !by.is_finite() {
                return Err(KernelError::Storage(format!(
                    "cannot increment `{field}` by {by}"
                )));
            }
            // Whole steps stay integers, so a counter reads back as 3 and not 3.0.
            const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
            let by = if by.fract() == 0.0 && by.abs() < EXACT {
                Bind::Int(*by as i64)
            } else {
                Bind::Real(*by)
            };
            let binds = [
                Bind::Text(collection.clone()),
                Bind::Text(id.clone()),
                Bind::Text(path),
                by,
            ];
            bind_all(sqlx::query(INCREMENT_DOC), &binds)
                .execute(&mut *conn)
                .await
        }
        DocOp::Delete { collection, id } => {
            sqlx::query(DELETE_DOC)
                .bind(collection.as_str())
                .bind(id.as_str())
                .execute(&mut *conn)
                .await
        }
        DocOp::DeleteWhere {
            collection,
            field,
            value,
        }
        | DocOp::TombstoneWhere {
            collection,
            field,
            value,
        } => {
            let (condition, mut binds) = equals(field, value)?;
            binds.insert(0, Bind::Text(collection.clone()));
            let head = if matches!(op, DocOp::DeleteWhere { .. }) {
                DELETE_WHERE
            } else {
                TOMBSTONE_WHERE
            };
            let sql = format!("{head}{condition}");
            bind_all(sqlx::query(&sql), &binds)
                .execute(&mut *conn)
                .await
        }
    }
    .map(|_| ())
    .map_err(KernelError::storage)
}

/// Applies the effects above their aggregate's stored version, inside the caller's transaction.
async fn apply_guarded_in(
    conn: &mut SqliteConnection,
    projection: &str,
    effects: &[EventEffect],
    checkpoint: i64,
) -> KernelResult<()> {
    let mut applied: HashMap<&str, u64> = HashMap::new();
    for effect in effects {
        let seen = match applied.get(effect.aggregate_key.as_str()) {
            Some(seen) => *seen,
            None => {
                let stored: Option<i64> = sqlx::query_scalar(
                    "SELECT sequence FROM aggregate_versions WHERE projection = ? AND aggregate_key = ?",
                )
                .bind(projection)
                .bind(effect.aggregate_key.as_str())
                .fetch_optional(&mut *conn)
                .await
                .map_err(KernelError::storage)?;
                stored.map_or(0, |s| u64::try_from(s).unwrap_or(0))
            }
        };
        if effect.sequence <= seen {
            continue;
        }
        for op in &effect.ops {
            apply_op(conn, op).await?;
        }
        applied.insert(effect.aggregate_key.as_str(), effect.sequence);
    }
    let versions: AggregateVersions = applied
        .into_iter()
        .map(|(key, sequence)| (key.to_string(), sequence))
        .collect();
    apply_in(conn, projection, &[], &versions, checkpoint).await
}

async fn apply_in(
    conn: &mut SqliteConnection,
    projection: &str,
    ops: &[DocOp],
    versions: &AggregateVersions,
    checkpoint: i64,
) -> KernelResult<()> {
    for op in ops {
        apply_op(conn, op).await?;
    }
    for (key, sequence) in versions {
        sqlx::query(UPSERT_VERSION)
            .bind(projection)
            .bind(key.as_str())
            .bind(to_i64(*sequence, "sequence")?)
            .execute(&mut *conn)
            .await
            .map_err(KernelError::storage)?;
    }
    sqlx::query(UPSERT_CHECKPOINT)
        .bind(projection)
        .bind(checkpoint)
        .bind(chrono::Utc::now().to_rfc3339())
        .execute(&mut *conn)
        .await
        .map_err(KernelError::storage)?;
    Ok(())
}

#[async_trait]
impl ReadStore for SqliteReadStore {
    /// Runs to completion in a task of its own even if the caller is cancelled: a write
    /// transaction cut between BEGIN and its guard would leave the single writer connection
    /// inside it (sqlx-sqlite 0.8).
    async fn apply(
        &self,
        projection: &str,
        ops: Vec<DocOp>,
        versions: AggregateVersions,
        checkpoint: u64,
    ) -> KernelResult<()> {
        let store = self.clone();
        let projection = projection.to_string();
        tokio::spawn(async move {
            store
                .apply_now(&projection, ops, versions, checkpoint)
                .await
        })
        .await
        .map_err(|err| KernelError::Storage(format!("read store task: {err}")))?
    }

    /// In a task of its own for the same reason as `apply`.
    async fn apply_guarded(
        &self,
        projection: &str,
        effects: Vec<EventEffect>,
        checkpoint: u64,
    ) -> KernelResult<()> {
        let store = self.clone();
        let projection = projection.to_string();
        tokio::spawn(async move {
            store
                .apply_guarded_now(&projection, effects, checkpoint)
                .await
        })
        .await
        .map_err(|err| KernelError::Storage(format!("read store task: {err}")))?
    }

    async fn checkpoint(&self, projection: &str) -> KernelResult<u64> {
        let position: Option<i64> =
            sqlx::query_scalar("SELECT position FROM checkpoints WHERE projection = ?")
                .bind(projection)
                .fetch_optional(&self.reader)
                .await
                .map_err(KernelError::storage)?;
        Ok(position.map_or(0, |p| u64::try_from(p).unwrap_or(0)))
    }

    async fn versions(&self, projection: &str, keys: &[String]) -> KernelResult<AggregateVersions> {
        let mut found: HashMap<String, u64> = HashMap::new();
        for chunk in keys.chunks(VERSIONS_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT aggregate_key, sequence FROM aggregate_versions \
                 WHERE projection = ? AND aggregate_key IN ({placeholders})"
            );
            let mut query = sqlx::query(&sql).bind(projection);
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
        let body: Option<String> =
            sqlx::query_scalar("SELECT body FROM documents WHERE collection = ? AND id = ?")
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
        let mut condition = String::from("collection = ?");
        let mut binds = vec![Bind::Text(collection.to_owned())];
        for (field, value) in &query.filter {
            let (fragment, more) = equals(field, value)?;
            condition.push_str(" AND ");
            condition.push_str(fragment);
            binds.extend(more);
        }

        let mut select_binds = binds.clone();
        let order = match &query.sort {
            Some((field, ascending)) => {
                select_binds.push(Bind::Text(json_path(field)?));
                if *ascending {
                    "json_extract(body, ?) ASC, id ASC"
                } else {
                    "json_extract(body, ?) DESC, id DESC"
                }
            }
            None => "id ASC",
        };
        let limit = if query.limit == 0 {
            -1
        } else {
            i64::from(query.limit)
        };
        select_binds.push(Bind::Int(limit));
        select_binds.push(Bind::Int(to_i64(query.offset, "offset")?));

        let count_sql = format!("SELECT COUNT(*) FROM documents WHERE {condition}");
        let select_sql = format!(
            "SELECT body FROM documents WHERE {condition} ORDER BY {order} LIMIT ? OFFSET ?"
        );

        // One read transaction: the page and the total come from the same snapshot.
        let mut tx = self.reader.begin().await.map_err(KernelError::storage)?;
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

    /// In a task of its own for the same reason as `apply`.
    async fn reset(&self, projection: &str, collections: &[&str]) -> KernelResult<()> {
        let store = self.clone();
        let projection = projection.to_string();
        let collections: Vec<String> = collections.iter().map(|c| c.to_string()).collect();
        tokio::spawn(async move {
            let collections: Vec<&str> = collections.iter().map(String::as_str).collect();
            store.reset_now(&projection, &collections).await
        })
        .await
        .map_err(|err| KernelError::Storage(format!("read store task: {err}")))?
    }

    async fn ping(&self) -> KernelResult<()> {
        sqlx::query("SELECT 1")
            .execute(&self.reader)
            .await
            .map(|_| ())
            .map_err(KernelError::storage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
