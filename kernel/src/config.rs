//! Typed, layered configuration: built-in `configs/default.yaml`, then the file named by
//! `QUINTET_CONFIG`, then `QUINTET__SECTION__KEY` variables, then the seeds' variables
//! (`MYSQL_HOST`, `REDIS_HOST`, `JWT_SECRET`, ...).

use std::path::PathBuf;
use std::time::Duration;

use figment::providers::{Env, Format, Yaml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::codec::CodecSettings;
use crate::domain::memento::MementoPolicy;

/// The embedded defaults, compiled in so `quintet up` works from any directory.
pub const DEFAULT_YAML: &str = include_str!("../../configs/default.yaml");
const DEV_JWT_SECRET: &str = "quintet-development-secret-change-me";
const DEV_MASTER_KEY: &str = "cXVpbnRldC1kZXZlbG9wbWVudC1tYXN0ZXIta2V5ISE=";

/// The seeds' environment variables and the config keys they set.
const SEED_VARIABLES: &[(&str, &str)] = &[
    ("MYSQL_HOST", "event_store.mysql.host"),
    ("MYSQL_PORT", "event_store.mysql.port"),
    ("MYSQL_USERNAME", "event_store.mysql.username"),
    ("MYSQL_PASSWORD", "event_store.mysql.password"),
    ("MYSQL_DATABASE", "event_store.mysql.database"),
    ("MONGODB_URI", "read_store.mongodb.uri"),
    ("MONGODB_DATABASE", "read_store.mongodb.database"),
    ("REDIS_HOST", "redis.host"),
    ("REDIS_PORT", "redis.port"),
    ("REDIS_PASSWORD", "redis.password"),
    ("KAFKA_BROKERS", "kafka.brokers"),
    ("JWT_SECRET", "security.jwt_secret"),
];

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Invalid(String),
    #[error("configuration: {0}")]
    Figment(#[from] Box<figment::Error>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Development,
    Production,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Settings {
    pub mode: Mode,
    pub data_dir: PathBuf,
    pub write_api: Listen,
    pub read_api: Listen,
    pub event_store: EventStoreSettings,
    pub read_store: ReadStoreSettings,
    pub snapshots: SnapshotSettings,
    pub cache: CacheSettings,
    pub redis: RedisSettings,
    pub codec: CodecSettings,
    pub master_key: String,
    pub feed: FeedSettings,
    pub read: ReadSettings,
    pub security: SecuritySettings,
    pub websocket: WebSocketSettings,
    pub memento: MementoSettings,
    /// The event-sourcing context's limits and supported types (seed 003's keys).
    #[serde(default)]
    pub event_sourcing: crate::domain::event_sourcing::EventSourcingPolicy,
    /// The mediator context's limits (seed 002's keys).
    #[serde(default)]
    pub mediator: crate::domain::mediator::MediatorPolicy,
    /// The command context's circuit breaker and queue settings (seed 004).
    #[serde(default)]
    pub command: crate::domain::command::CommandPolicy,
    pub logging: LoggingSettings,
    #[serde(default)]
    pub kafka: KafkaSettings,
    pub projector: ProjectorSettings,
}

/// The `projector` worker process.
#[derive(Debug, Clone, Deserialize)]
pub struct ProjectorSettings {
    /// Where a projector serves `/health` and `/metrics` (port 0 picks a free one).
    pub metrics_host: String,
    pub metrics_port: u16,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Listen {
    pub host: String,
    pub port: u16,
}

impl Listen {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreBackend {
    Sqlite,
    Mysql,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EventStoreSettings {
    pub backend: StoreBackend,
    /// A full URL wins over the parts below (e.g. `sqlite://...` or `mysql://...`).
    #[serde(default)]
    pub url: Option<String>,
    pub max_connections: u32,
    pub mysql: MySqlSettings,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MySqlSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    #[serde(default)]
    pub password: String,
    pub database: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReadBackend {
    Sqlite,
    Mongodb,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReadStoreSettings {
    pub backend: ReadBackend,
    #[serde(default)]
    pub mongodb: Option<MongoSettings>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MongoSettings {
    pub uri: String,
    #[serde(default = "default_mongo_db")]
    pub database: String,
}

fn default_mongo_db() -> String {
    "quintet".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemoryOrRedis {
    Memory,
    Redis,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SnapshotSettings {
    pub backend: MemoryOrRedis,
    /// Take a snapshot every N events of an aggregate.
    pub every: u64,
    /// Per aggregate type overrides of `every`.
    #[serde(default)]
    pub every_by_type: std::collections::HashMap<String, u64>,
    /// Entries kept by the in-process store.
    pub capacity: usize,
}

impl SnapshotSettings {
    pub fn every_for(&self, aggregate_type: &str) -> u64 {
        self.every_by_type
            .get(aggregate_type)
            .copied()
            .unwrap_or(self.every)
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct CacheSettings {
    pub backend: MemoryOrRedis,
    #[serde(with = "duration_text")]
    pub ttl: Duration,
    pub max_size: usize,
}

#[derive(Debug, Clone, Deserialize)]
pub struct RedisSettings {
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub password: String,
    #[serde(default)]
    pub db: u32,
    pub key_prefix: String,
}

impl RedisSettings {
    pub fn url(&self) -> String {
        if self.password.is_empty() {
            format!("redis://{}:{}/{}", self.host, self.port, self.db)
        } else {
            format!(
                "redis://:{}@{}:{}/{}",
                self.password, self.host, self.port, self.db
            )
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct FeedSettings {
    pub backend: FeedBackend,
    #[serde(with = "duration_text")]
    pub poll_interval: Duration,
    pub batch_size: u32,
    /// A gap younger than this is always waited for.
    #[serde(with = "duration_text")]
    pub gap_min_wait: Duration,
    /// A gap older than this is released even if the store cannot tell whether it may fill.
    #[serde(with = "duration_text")]
    pub gap_max_wait: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReadSettings {
    /// How long a read with `min_position` waits for the projections before answering 503.
    #[serde(with = "duration_text")]
    pub min_position_wait: Duration,
}

#[derive(Debug, Clone, Deserialize)]
pub struct SecuritySettings {
    pub enabled: bool,
    /// The HS256 secret; tokens without a `kid` are checked with it.
    pub jwt_secret: String,
    /// Asymmetric keys (RS256, ES256, ...) as a JWKS: inline JSON, or `@/path/to/jwks.json`.
    /// Each key needs `kid` and `alg`; the algorithm is pinned per key. Listing an old and a
    /// new key accepts both during a rotation.
    #[serde(default)]
    pub jwks: Option<String>,
    pub jwt_issuer: String,
    pub jwt_audience: String,
    #[serde(with = "duration_text")]
    pub token_expiry: Duration,
    #[serde(with = "duration_text")]
    pub leeway: Duration,
    pub rate_limit_enabled: bool,
    pub rate_limit_requests: u32,
    #[serde(with = "duration_text")]
    pub rate_limit_window: Duration,
    pub max_body_bytes: usize,
    pub cors_origins: Vec<String>,
    /// A request that takes longer is answered 503 with `Retry-After` (WebSocket sessions
    /// are not requests: only their upgrade is timed).
    #[serde(with = "duration_text", default = "default_request_timeout")]
    pub request_timeout: Duration,
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

#[derive(Debug, Clone, Deserialize)]
pub struct WebSocketSettings {
    pub enabled: bool,
    pub allowed_origins: Vec<String>,
    /// Messages buffered per connection before a slow consumer is closed.
    pub buffer: usize,
    pub max_frame_bytes: usize,
    /// A client that does not take a frame within this long (its TCP window stays shut) is
    /// dropped: a stalled send would otherwise hold the session forever.
    #[serde(with = "duration_text", default = "default_send_timeout")]
    pub send_timeout: Duration,
}

fn default_send_timeout() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Clone, Deserialize)]
pub struct MementoSettings {
    pub name: String,
    pub version: String,
    pub max_mementos: u32,
    pub max_memento_size: u64,
    #[serde(with = "duration_text")]
    pub max_memento_age: Duration,
    #[serde(with = "duration_text")]
    pub cleanup_interval: Duration,
}

impl MementoSettings {
    pub fn policy(&self) -> MementoPolicy {
        MementoPolicy {
            max_mementos: self.max_mementos,
            max_memento_size: self.max_memento_size,
            max_memento_age_secs: self.max_memento_age.as_secs(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct LoggingSettings {
    pub level: String,
    /// `json` or `pretty`.
    pub format: String,
}

/// Kafka, used when `feed.backend` is `kafka`.
#[derive(Debug, Clone, Deserialize)]
pub struct KafkaSettings {
    /// Comma-separated `host:port` list (`KAFKA_BROKERS`).
    pub brokers: String,
    /// Prepended to every topic and consumer group name (isolates tests sharing a broker).
    pub topic_prefix: String,
    /// Partitions of each topic Quintet creates.
    pub partitions: i32,
    /// How long a produce may wait for the broker before the relay retries.
    #[serde(with = "duration_text")]
    pub produce_timeout: Duration,
    /// How long a consumer's fetch waits at the broker for records (librdkafka's
    /// `fetch.wait.max.ms`). tansu holds every fetch this long even when records arrive
    /// meanwhile, so it bounds how late a consumer sees them; shorter costs the broker more
    /// fetches while idle.
    #[serde(with = "duration_text", default = "default_fetch_wait")]
    pub fetch_wait: Duration,
}

fn default_fetch_wait() -> Duration {
    Duration::from_millis(5)
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic_prefix: String::new(),
            partitions: 3,
            produce_timeout: Duration::from_secs(5),
            fetch_wait: default_fetch_wait(),
        }
    }
}

/// Where projections get their events from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedBackend {
    /// In-process: projections run inside read-api (or `quintet up`) and tail the store.
    Embedded,
    /// The relay in write-api publishes to Kafka; `projector` processes consume it.
    Kafka,
}

impl Settings {
    /// Loads the layered configuration from the process environment.
    pub fn load() -> Result<Settings, ConfigError> {
        Self::from_figment(Self::figment(std::env::var("QUINTET_CONFIG").ok()))
    }

    pub fn figment(config_file: Option<String>) -> Figment {
        let mut figment = Figment::from(Yaml::string(DEFAULT_YAML));
        if let Some(file) = config_file {
            figment = figment.merge(Yaml::file_exact(file));
        }
        figment = figment.merge(Env::prefixed("QUINTET__").split("__"));
        for (variable, key) in SEED_VARIABLES {
            let key = *key;
            figment = figment.merge(Env::raw().only(&[*variable]).map(move |_| key.into()));
        }
        figment
    }

    pub fn from_figment(figment: Figment) -> Result<Settings, ConfigError> {
        let settings: Settings = figment.extract().map_err(Box::new)?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.security.rate_limit_requests == 0 || self.security.rate_limit_window.is_zero() {
            return Err(ConfigError::Invalid(
                "security.rate_limit_requests and rate_limit_window must be positive".into(),
            ));
        }
        self.event_sourcing
            .validate()
            .map_err(|err| ConfigError::Invalid(format!("event_sourcing: {err}")))?;
        if self.snapshots.every == 0 {
            return Err(ConfigError::Invalid(
                "snapshots.every must be positive".into(),
            ));
        }
        if self.security.jwt_secret.len() < 16 {
            return Err(ConfigError::Invalid(
                "security.jwt_secret must be at least 16 bytes".into(),
            ));
        }
        if self.mode == Mode::Production {
            if self.security.jwt_secret == DEV_JWT_SECRET {
                return Err(ConfigError::Invalid(
                    "mode is production but security.jwt_secret is the built-in development secret; set JWT_SECRET".into(),
                ));
            }
            if self.master_key == DEV_MASTER_KEY {
                return Err(ConfigError::Invalid(
                    "mode is production but master_key is the built-in development key; set QUINTET__MASTER_KEY".into(),
                ));
            }
        }
        Ok(())
    }

    /// The event store URL: the explicit one, else built from the backend's parts.
    pub fn event_store_url(&self) -> String {
        if let Some(url) = &self.event_store.url {
            return url.clone();
        }
        match self.event_store.backend {
            StoreBackend::Sqlite => {
                format!("sqlite://{}", self.data_dir.join("events.db").display())
            }
            StoreBackend::Mysql => {
                let m = &self.event_store.mysql;
                if m.password.is_empty() {
                    format!(
                        "mysql://{}@{}:{}/{}",
                        m.username, m.host, m.port, m.database
                    )
                } else {
                    format!(
                        "mysql://{}:{}@{}:{}/{}",
                        m.username, m.password, m.host, m.port, m.database
                    )
                }
            }
        }
    }

    /// The built-in embedded settings with another data directory (tests, spec generation).
    pub fn embedded_at(data_dir: &std::path::Path) -> Result<Settings, ConfigError> {
        let figment = Figment::from(Yaml::string(DEFAULT_YAML))
            .merge(("data_dir", data_dir.display().to_string()));
        Self::from_figment(figment)
    }

    /// The event store URL with any password hidden, for messages and logs.
    pub fn event_store_url_redacted(&self) -> String {
        let url = self.event_store_url();
        match (url.find("://"), url.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                let credentials = &url[scheme + 3..at];
                match credentials.split_once(':') {
                    Some((user, _)) => format!("{}{user}:***{}", &url[..scheme + 3], &url[at..]),
                    None => url,
                }
            }
            _ => url,
        }
    }

    pub fn read_store_path(&self) -> PathBuf {
        self.data_dir.join("read.db")
    }
}

/// Parses `50ms`, `1s`, `5m`, `24h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|err| format!("`{text}`: {err}"))
}

/// Durations written as text: `50ms`, `1s`, `5m`, `24h`.
pub(crate) mod duration_text {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        super::parse_duration(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load() {
        let settings = Settings::from_figment(Settings::figment(None)).expect("defaults are valid");
        assert_eq!(settings.write_api.port, 8080);
        assert_eq!(settings.event_store.backend, StoreBackend::Sqlite);
        assert_eq!(settings.security.rate_limit_window, Duration::from_secs(1));
    }

    #[test]
    fn environment_overrides_apply() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("QUINTET__SECURITY__RATE_LIMIT_REQUESTS", "7");
            jail.set_env("MYSQL_HOST", "db.internal");
            jail.set_env("JWT_SECRET", "a-secret-from-the-environment");
            let settings = Settings::from_figment(Settings::figment(None)).expect("valid");
            assert_eq!(settings.security.rate_limit_requests, 7);
            assert_eq!(settings.event_store.mysql.host, "db.internal");
            assert_eq!(
                settings.security.jwt_secret,
                "a-secret-from-the-environment"
            );
            Ok(())
        });
    }

    #[test]
    fn production_refuses_development_secrets() {
        figment::Jail::expect_with(|jail| {
            jail.set_env("QUINTET__MODE", "production");
            let err = Settings::from_figment(Settings::figment(None)).expect_err("must refuse");
            assert!(err.to_string().contains("jwt_secret"), "{err}");
            jail.set_env("JWT_SECRET", "a-real-production-secret-value");
            let err = Settings::from_figment(Settings::figment(None)).expect_err("must refuse");
            assert!(err.to_string().contains("master_key"), "{err}");
            Ok(())
        });
    }
}
