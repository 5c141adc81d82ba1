//! Redis adapters: the snapshot store and the read cache, over a `ConnectionManager`.
//!
//! Every command runs under a timeout so a dead or stalled Redis fails a call quickly instead
//! of hanging it; every Redis error becomes `KernelError::Storage`. Prefix deletes and counts
//! walk the keyspace with SCAN, never KEYS, so they do not block the server.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::FromRedisValue;
use serde_json::Value;

use crate::error::{KernelError, KernelResult};
use crate::ports::{CacheStats, ReadCache, SnapshotStore};

/// The most one Redis command may take.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// The most establishing the first connection may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Keys asked per SCAN round trip.
const SCAN_COUNT: usize = 500;

/// Opens a connection manager (which reconnects by itself later), failing fast when Redis is
/// unreachable.
pub async fn connect_manager(url: &str) -> KernelResult<ConnectionManager> {
    let client = redis::Client::open(url).map_err(|e| storage("bad url", e))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(COMMAND_TIMEOUT)
        .set_response_timeout(COMMAND_TIMEOUT)
        // No in-place retries (their backoff starts at a second): a failed attempt fails the
        // call, and the manager tries a fresh connection on the next command.
        .set_number_of_retries(0);
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        ConnectionManager::new_with_config(client, config),
    )
    .await
    {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(e)) => Err(storage("connect", e)),
        Err(_) => Err(KernelError::Storage("redis: connect timed out".into())),
    }
}

fn storage(what: &str, err: impl std::fmt::Display) -> KernelError {
    KernelError::Storage(format!("redis {what}: {err}"))
}

/// Runs one command on a clone of the manager (clones share the connection) under the timeout.
async fn run<T: FromRedisValue>(conn: &ConnectionManager, cmd: &redis::Cmd) -> KernelResult<T> {
    let mut conn = conn.clone();
    match tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async::<T>(&mut conn)).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(storage("command", e)),
        Err(_) => Err(KernelError::Storage("redis: command timed out".into())),
    }
}

/// Escapes glob metacharacters so a literal prefix can be used in SCAN MATCH.
fn glob_escape(literal: &str) -> String {
    let mut out = String::with_capacity(literal.len() + 1);
    for c in literal.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Walks every key that starts with `prefix`, one SCAN batch at a time.
async fn scan_prefix<F, Fut>(
    conn: &ConnectionManager,
    prefix: &str,
    mut each_batch: F,
) -> KernelResult<()>
where
    F: FnMut(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = KernelResult<()>>,
{
    let pattern = format!("{}*", glob_escape(prefix));
    let mut cursor: u64 = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = run(
            conn,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT),
        )
        .await?;
        if !keys.is_empty() {
            each_batch(keys).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

async fn delete_prefix(conn: &ConnectionManager, prefix: &str) -> KernelResult<()> {
    scan_prefix(conn, prefix, |keys| async move {
        run::<u64>(conn, redis::cmd("DEL").arg(keys))
            .await
            .map(|_| ())
    })
    .await
}

async fn count_prefix(conn: &ConnectionManager, prefix: &str) -> KernelResult<u64> {
    // SCAN may return a key more than once; collect to count each once.
    let seen = parking_lot::Mutex::new(std::collections::HashSet::new());
    scan_prefix(conn, prefix, |keys| {
        seen.lock().extend(keys);
        async { Ok(()) }
    })
    .await?;
    Ok(seen.into_inner().len() as u64)
}

fn set_cmd(key: &str, bytes: &[u8], ttl: Option<Duration>) -> redis::Cmd {
    let mut cmd = redis::cmd("SET");
    cmd.arg(key).arg(bytes);
    if let Some(ttl) = ttl {
        // PX 0 is an error in Redis; the shortest TTL is one millisecond.
        let millis = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        cmd.arg("PX").arg(millis);
    }
    cmd
}

/// Aggregate snapshots in Redis under `{prefix}{key}`, with an optional TTL.
#[derive(Clone)]
pub struct RedisSnapshotStore {
    conn: ConnectionManager,
    prefix: String,
    ttl: Option<Duration>,
}

impl std::fmt::Debug for RedisSnapshotStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSnapshotStore")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl RedisSnapshotStore {
    pub async fn connect(url: &str, key_prefix: &str) -> KernelResult<Self> {
        Ok(Self::from_manager(connect_manager(url).await?, key_prefix))
    }

    /// Shares an existing connection manager.
    pub fn from_manager(conn: ConnectionManager, key_prefix: &str) -> Self {
        Self {
            conn,
            prefix: key_prefix.to_string(),
            ttl: None,
        }
    }

    /// Snapshots expire after `ttl` (none by default).
    pub fn with_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.ttl = ttl;
        self
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl SnapshotStore for RedisSnapshotStore {
    async fn get(&self, key: &str) -> KernelResult<Option<Vec<u8>>> {
        run(&self.conn, redis::cmd("GET").arg(self.key(key))).await
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> KernelResult<()> {
        run(&self.conn, &set_cmd(&self.key(key), &bytes, self.ttl)).await
    }

    async fn purge(&self, prefix: &str) -> KernelResult<()> {
        delete_prefix(&self.conn, &self.key(prefix)).await
    }

    async fn ping(&self) -> KernelResult<()> {
        run::<String>(&self.conn, &redis::cmd("PING"))
            .await
            .map(|_| ())
    }
}

/// The cache-aside read cache in Redis: JSON text under `{prefix}{key}`. Hits and misses are
/// counted by this process; the size counts the prefix's keys with SCAN.
pub struct RedisCache {
    conn: ConnectionManager,
    prefix: String,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl std::fmt::Debug for RedisCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCache")
            .field("prefix", &self.prefix)
            .field("hits", &self.hits)
            .field("misses", &self.misses)
            .finish_non_exhaustive()
    }
}

impl RedisCache {
    pub async fn connect(url: &str, key_prefix: &str) -> KernelResult<Self> {
        Ok(Self::from_manager(connect_manager(url).await?, key_prefix))
    }

    pub fn from_manager(conn: ConnectionManager, key_prefix: &str) -> Self {
        Self {
            conn,
            prefix: key_prefix.to_string(),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    pub async fn ping(&self) -> KernelResult<()> {
        run::<String>(&self.conn, &redis::cmd("PING"))
            .await
            .map(|_| ())
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl ReadCache for RedisCache {
    async fn get(&self, key: &str) -> KernelResult<Option<Value>> {
        let raw: Option<Vec<u8>> = run(&self.conn, redis::cmd("GET").arg(self.key(key))).await?;
        // An entry that is not JSON (written by something else) is treated as a miss.
        let value = raw.and_then(|bytes| serde_json::from_slice(&bytes).ok());
        let counter = if value.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(value)
    }

    async fn put(&self, key: &str, value: &Value, ttl: Option<Duration>) -> KernelResult<()> {
        let bytes = serde_json::to_vec(value)?;
        run(&self.conn, &set_cmd(&self.key(key), &bytes, ttl)).await
    }

    async fn invalidate(&self, key: &str) -> KernelResult<()> {
        run::<u64>(&self.conn, redis::cmd("DEL").arg(self.key(key)))
            .await
            .map(|_| ())
    }

    async fn invalidate_prefix(&self, prefix: &str) -> KernelResult<()> {
        delete_prefix(&self.conn, &self.key(prefix)).await
    }

    async fn stats(&self) -> KernelResult<CacheStats> {
        Ok(CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            size: count_prefix(&self.conn, &self.prefix).await?,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::glob_escape;

    #[test]
    fn glob_escape_escapes_metacharacters() {
        assert_eq!(glob_escape("a*b?c[d]e\\f"), "a\\*b\\?c\\[d\\]e\\\\f");
        assert_eq!(glob_escape("snap:user:1:"), "snap:user:1:");
    }
}
