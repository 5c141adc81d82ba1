//! The Redis snapshot store and read cache against the real Redis (`REDIS_URL`, default
//! redis://127.0.0.1:6379). Each test works under its own random key prefix.
#![allow(clippy::unwrap_used)] // tests: a failed unwrap is a failed test

use std::time::{Duration, Instant};

use kernel::adapters::redis::{RedisCache, RedisSnapshotStore};
use kernel::ports::{CacheStats, ReadCache, SnapshotStore};
use kernel::KernelError;
use serde_json::json;

fn redis_url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_string())
}

fn prefix() -> String {
    format!("quintet_t_{}:", uuid::Uuid::new_v4().simple())
}

#[tokio::test]
async fn snapshots_put_get_and_purge_by_prefix() {
    let p = prefix();
    let store = RedisSnapshotStore::connect(&redis_url(), &p).await.unwrap();
    store.ping().await.unwrap();
    assert_eq!(store.get("snap:user:1:v1").await.unwrap(), None);
    store.put("snap:user:1:v1", vec![1, 2, 3]).await.unwrap();
    store.put("snap:user:1:v2", vec![0; 70_000]).await.unwrap();
    store.put("snap:user:10:v1", vec![4]).await.unwrap();
    // Glob metacharacters in keys are literal for purge.
    store.put("snap:weird*:1", vec![5]).await.unwrap();
    store.put("snap:weirdo:1", vec![6]).await.unwrap();
    assert_eq!(
        store.get("snap:user:1:v1").await.unwrap(),
        Some(vec![1, 2, 3])
    );
    assert_eq!(
        store.get("snap:user:1:v2").await.unwrap().map(|b| b.len()),
        Some(70_000)
    );

    store.purge("snap:user:1:").await.unwrap();
    assert_eq!(store.get("snap:user:1:v1").await.unwrap(), None);
    assert_eq!(store.get("snap:user:1:v2").await.unwrap(), None);
    assert_eq!(store.get("snap:user:10:v1").await.unwrap(), Some(vec![4]));

    store.purge("snap:weird*").await.unwrap();
    assert_eq!(store.get("snap:weird*:1").await.unwrap(), None);
    assert_eq!(store.get("snap:weirdo:1").await.unwrap(), Some(vec![6]));

    // Another prefix (another test, another deployment) is untouched by a purge of everything.
    let other = RedisSnapshotStore::connect(&redis_url(), &prefix())
        .await
        .unwrap();
    other.put("snap:user:10:v1", vec![7]).await.unwrap();
    store.purge("").await.unwrap();
    assert_eq!(store.get("snap:user:10:v1").await.unwrap(), None);
    assert_eq!(other.get("snap:user:10:v1").await.unwrap(), Some(vec![7]));
    other.purge("").await.unwrap();
}

#[tokio::test]
async fn purge_walks_many_keys() {
    let store = RedisSnapshotStore::connect(&redis_url(), &prefix())
        .await
        .unwrap();
    for i in 0..1200 {
        store.put(&format!("snap:o:{i}"), vec![1]).await.unwrap();
    }
    store.purge("snap:o:").await.unwrap();
    for i in [0, 599, 1199] {
        assert_eq!(store.get(&format!("snap:o:{i}")).await.unwrap(), None);
    }
}

#[tokio::test]
async fn snapshot_ttl_expires() {
    let store = RedisSnapshotStore::connect(&redis_url(), &prefix())
        .await
        .unwrap()
        .with_ttl(Some(Duration::from_millis(50)));
    store.put("snap:a", vec![1]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while store.get("snap:a").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "snapshot did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_dead_redis_fails_fast() {
    let started = Instant::now();
    let result = RedisSnapshotStore::connect("redis://127.0.0.1:1", "x:").await;
    assert!(matches!(result, Err(KernelError::Storage(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let result = RedisCache::connect("redis://127.0.0.1:1", "x:").await;
    assert!(matches!(result, Err(KernelError::Storage(_))));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(matches!(
        RedisCache::connect("not a url", "x:").await,
        Err(KernelError::Storage(_))
    ));
}

#[tokio::test]
async fn cache_counts_hits_misses_and_size() {
    let p = prefix();
    let cache = RedisCache::connect(&redis_url(), &p).await.unwrap();
    cache.ping().await.unwrap();
    assert_eq!(cache.get("user:1").await.unwrap(), None);
    cache
        .put("user:1", &json!({"name": "Ada", "n": [1, 2]}), None)
        .await
        .unwrap();
    cache
        .put("user:2", &json!("two"), Some(Duration::from_secs(60)))
        .await
        .unwrap();
    cache.put("order:1", &json!(1), None).await.unwrap();
    assert_eq!(
        cache.get("user:1").await.unwrap(),
        Some(json!({"name": "Ada", "n": [1, 2]}))
    );
    assert_eq!(cache.get("user:2").await.unwrap(), Some(json!("two")));
    assert_eq!(
        cache.stats().await.unwrap(),
        CacheStats {
            hits: 2,
            misses: 1,
            size: 3
        }
    );

    cache.invalidate("user:1").await.unwrap();
    assert_eq!(cache.get("user:1").await.unwrap(), None);
    cache.invalidate_prefix("user:").await.unwrap();
    assert_eq!(cache.get("user:2").await.unwrap(), None);
    assert_eq!(
        cache.stats().await.unwrap(),
        CacheStats {
            hits: 2,
            misses: 3,
            size: 1
        }
    );
    cache.invalidate_prefix("").await.unwrap();
    assert_eq!(cache.stats().await.unwrap().size, 0);
}

#[tokio::test]
async fn cache_entries_expire() {
    let cache = RedisCache::connect(&redis_url(), &prefix()).await.unwrap();
    cache
        .put("k", &json!(1), Some(Duration::from_millis(30)))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while cache.get("k").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "entry did not expire");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fake Redis that answers `+OK` (or `+PONG`) until told to stall, then reads and never replies.
fn stalling_redis() -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>) {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("redis://{}", listener.local_addr().unwrap());
    let stalled = Arc::new(AtomicBool::new(false));
    let flag = stalled.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut pending = Vec::new();
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        return;
                    }
                    pending.extend_from_slice(&buf[..n]);
                    // Each request is a RESP array "*<n>\r\n" of bulk strings; answer each one.
                    while let Some((len, is_ping)) = parse_request(&pending) {
                        pending.drain(..len);
                        if flag.load(Ordering::SeqCst) {
                            continue;
                        }
                        let reply: &[u8] = if is_ping { b"+PONG\r\n" } else { b"+OK\r\n" };
                        if stream.write_all(reply).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, stalled)
}

/// The length of the first complete RESP request in `buf`, and whether it is a PING.
fn parse_request(buf: &[u8]) -> Option<(usize, bool)> {
    fn line(buf: &[u8], at: usize) -> Option<(&[u8], usize)> {
        let end = buf[at..].windows(2).position(|w| w == b"\r\n")? + at;
        Some((&buf[at..end], end + 2))
    }
    let (head, mut at) = line(buf, 0)?;
    let count: usize = std::str::from_utf8(head.strip_prefix(b"*")?)
        .ok()?
        .parse()
        .ok()?;
    let mut first = Vec::new();
    for i in 0..count {
        let (len_line, next) = line(buf, at)?;
        let len: usize = std::str::from_utf8(len_line.strip_prefix(b"$")?)
            .ok()?
            .parse()
            .ok()?;
        if buf.len() < next + len + 2 {
            return None;
        }
        if i == 0 {
            first = buf[next..next + len].to_ascii_uppercase();
        }
        at = next + len + 2;
    }
    Some((at, first == b"PING"))
}

#[tokio::test]
async fn a_stalled_redis_times_out_instead_of_hanging() {
    let (url, stalled) = stalling_redis();
    let store = RedisSnapshotStore::connect(&url, "x:").await.unwrap();
    store.ping().await.unwrap();
    store.put("k", vec![1]).await.unwrap();
    stalled.store(true, std::sync::atomic::Ordering::SeqCst);
    for _ in 0..2 {
        let started = Instant::now();
        let result = store.put("k", vec![1]).await;
        assert!(matches!(result, Err(KernelError::Storage(_))), "{result:?}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "took {:?}",
            started.elapsed()
        );
    }
    let started = Instant::now();
    assert!(store.purge("").await.is_err());
    assert!(started.elapsed() < Duration::from_secs(3));
}
