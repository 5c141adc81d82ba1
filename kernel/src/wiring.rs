//! The composition root: picks and connects the adapters the configuration names, so that
//! choosing a backend is configuration and never a code change.

use std::sync::Arc;

use crate::adapters::memory::{MemoryCache, MemorySnapshotStore};
use crate::adapters::mongo::MongoReadStore;
use crate::adapters::read_sqlite::SqliteReadStore;
use crate::adapters::redis::{RedisCache, RedisSnapshotStore};
use crate::adapters::sql::{MySqlEventStore, SqliteEventStore};
use crate::codec::{Codec, MasterKey};
use crate::config::{MemoryOrRedis, ReadBackend, Settings, StoreBackend};
use crate::engine::Engine;
use crate::error::{KernelError, KernelResult};
use crate::ports::{EventStore, KeyStore, ReadCache, ReadStore, SnapshotStore};

/// Connected backends.
#[derive(Clone)]
pub struct Backends {
    pub engine: Engine,
    pub snapshots: Arc<dyn SnapshotStore>,
}

/// Connects the event store (running its migrations), the key store, the snapshot store and
/// the codec, and builds the engine.
pub async fn connect_write_side(settings: &Settings) -> KernelResult<Backends> {
    let url = settings.event_store_url();
    let (store, keys): (Arc<dyn EventStore>, Arc<dyn KeyStore>) = match settings.event_store.backend
    {
        StoreBackend::Sqlite => {
            ensure_data_dir(settings)?;
            let store = Arc::new(
                SqliteEventStore::connect(&url, settings.event_store.max_connections).await?,
            );
            store.migrate().await?;
            (store.clone(), store)
        }
        StoreBackend::Mysql => {
            create_mysql_database(&url).await?;
            let store = Arc::new(
                MySqlEventStore::connect(&url, settings.event_store.max_connections).await?,
            );
            store.migrate().await?;
            (store.clone(), store)
        }
    };
    let snapshots: Arc<dyn SnapshotStore> = match settings.snapshots.backend {
        MemoryOrRedis::Memory => Arc::new(MemorySnapshotStore::new(settings.snapshots.capacity)),
        MemoryOrRedis::Redis => Arc::new(
            RedisSnapshotStore::connect(&settings.redis.url(), &settings.redis.key_prefix).await?,
        ),
    };
    let master = MasterKey::from_base64(&settings.master_key)?;
    let codec = Arc::new(Codec::new(keys, master, settings.codec.clone()));
    let snapshot_settings = settings.snapshots.clone();
    let engine = Engine::new(
        store,
        snapshots.clone(),
        codec,
        Arc::new(move |aggregate_type: &str| snapshot_settings.every_for(aggregate_type)),
    );
    Ok(Backends { engine, snapshots })
}

/// Connects the read-model store and runs its migrations (SQLite) or creates its indexes
/// (MongoDB, at `read_store.mongodb.uri`, which `MONGODB_URI` overrides).
pub async fn connect_read_store(settings: &Settings) -> KernelResult<Arc<dyn ReadStore>> {
    if settings.read_store.backend == ReadBackend::Mongodb {
        let Some(mongo) = settings.read_store.mongodb.as_ref() else {
            return Err(KernelError::storage(
                "read_store.backend is mongodb but read_store.mongodb.uri (or MONGODB_URI) is not set",
            ));
        };
        let store = MongoReadStore::connect(&mongo.uri, &mongo.database).await?;
        store.migrate().await?;
        return Ok(Arc::new(store));
    }
    ensure_data_dir(settings)?;
    let path = settings.read_store_path();
    let store = SqliteReadStore::connect(&path.display().to_string(), 4).await?;
    store.migrate().await?;
    Ok(Arc::new(store))
}

/// Connects the read cache: an in-process LRU of `cache.max_size` entries, or Redis (keys
/// under `{redis.key_prefix}cache:`).
pub async fn connect_read_cache(settings: &Settings) -> KernelResult<Arc<dyn ReadCache>> {
    Ok(match settings.cache.backend {
        MemoryOrRedis::Memory => Arc::new(MemoryCache::new(settings.cache.max_size)),
        MemoryOrRedis::Redis => Arc::new(
            RedisCache::connect(
                &settings.redis.url(),
                &format!("{}cache:", settings.redis.key_prefix),
            )
            .await?,
        ),
    })
}

fn ensure_data_dir(settings: &Settings) -> KernelResult<()> {
    std::fs::create_dir_all(&settings.data_dir).map_err(|err| {
        KernelError::storage(format!(
            "cannot create data_dir {}: {err}",
            settings.data_dir.display()
        ))
    })
}

/// Creates the configured MySQL database if it does not exist, so a fresh server needs no
/// hand-made setup.
async fn create_mysql_database(url: &str) -> KernelResult<()> {
    use sqlx::ConnectOptions;
    use std::str::FromStr;
    let options = sqlx::mysql::MySqlConnectOptions::from_str(url).map_err(KernelError::storage)?;
    let Some(database) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    if !database
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_')
    {
        return Err(KernelError::storage(format!(
            "database name `{database}` must be letters, digits and _"
        )));
    }
    let mut connection = options
        .database("")
        .connect()
        .await
        .map_err(KernelError::storage)?;
    sqlx::query(&format!(
        "CREATE DATABASE IF NOT EXISTS `{database}` CHARACTER SET utf8mb4"
    ))
    .execute(&mut connection)
    .await
    .map_err(KernelError::storage)?;
    Ok(())
}
