//! Support for the end-to-end tests: spawn both HTTP apps on port 0, exactly as
//! `quintet up` assembles them, against a chosen backend (embedded SQLite, or MariaDB +
//! Redis), and talk to them over real sockets.
//!
//! Each [`TestApp`] owns fresh storage (a temp dir, a `quintet_t_<hex>` database, a random
//! Redis key prefix) so tests run in parallel; dropping it stops the servers and cleans up.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use kernel::config::{MemoryOrRedis, Settings, StoreBackend};
use kernel::engine::Engine;
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;
use web::{JwtKeys, Role};

pub mod ws;

/// The JWT secret every test app uses.
pub const JWT_SECRET: &str = "quintet-test-secret-0123456789abcdef";
pub const JWT_ISSUER: &str = "quintet";
pub const JWT_AUDIENCE: &str = "quintet-api";
/// Body limit of the test apps (small, so the 413 tests stay cheap).
pub const MAX_BODY_BYTES: usize = 64 * 1024;
/// `memento.max_memento_size` of the test apps.
pub const MAX_MEMENTO_SIZE: u64 = 4096;
/// The longest a single wait in a test may take.
pub const WAIT: Duration = Duration::from_secs(10);
/// The longest a whole scenario may take.
pub const SCENARIO_TIMEOUT: Duration = Duration::from_secs(60);

const MARIADB_URL: &str = "mysql://root@127.0.0.1:3306";
const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Which backends an app runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// SQLite event store in a fresh temp dir, in-process snapshots.
    Embedded,
    /// A fresh MariaDB database for events, Redis (random key prefix) for snapshots; read
    /// models still in SQLite in a temp dir.
    MariaDb,
}

/// Both APIs of one Quintet, running in this process.
pub struct TestApp {
    pub backend: Backend,
    /// `http://127.0.0.1:<port>` of write-api.
    pub write_url: String,
    /// `http://127.0.0.1:<port>` of read-api.
    pub read_url: String,
    pub settings: Settings,
    /// The write side's engine, for direct checks of the event store.
    pub engine: Engine,
    pub client: reqwest::Client,
    keys: JwtKeys,
    // Dropping the sender stops both servers, the projections and the hub.
    _stop: tokio::sync::watch::Sender<bool>,
    data_dir: PathBuf,
    database: Option<String>,
    redis_prefix: Option<String>,
}

impl std::fmt::Debug for TestApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestApp")
            .field("backend", &self.backend)
            .field("write_url", &self.write_url)
            .field("read_url", &self.read_url)
            .finish_non_exhaustive()
    }
}

fn random_hex() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..16].to_string()
}

/// The settings of a test app: the embedded defaults, with known security settings, a high
/// rate limit and small size limits.
pub fn test_settings(backend: Backend, data_dir: &std::path::Path) -> Settings {
    let mut settings = Settings::embedded_at(data_dir).expect("the embedded defaults are valid");
    settings.security.enabled = true;
    settings.security.jwt_secret = JWT_SECRET.into();
    settings.security.jwt_issuer = JWT_ISSUER.into();
    settings.security.jwt_audience = JWT_AUDIENCE.into();
    settings.security.leeway = Duration::from_secs(0);
    settings.security.rate_limit_enabled = true;
    settings.security.rate_limit_requests = 1_000_000;
    settings.security.rate_limit_window = Duration::from_secs(1);
    settings.security.max_body_bytes = MAX_BODY_BYTES;
    settings.memento.max_memento_size = MAX_MEMENTO_SIZE;
    // Generous for loaded CI machines: a read with min_position waits by itself.
    settings.read.min_position_wait = WAIT;
    settings.feed.poll_interval = Duration::from_millis(20);
    if backend == Backend::MariaDb {
        let database = format!("quintet_t_{}", random_hex());
        settings.event_store.backend = StoreBackend::Mysql;
        settings.event_store.url = Some(format!("{MARIADB_URL}/{database}"));
        settings.event_store.mysql.database = database;
        settings.snapshots.backend = MemoryOrRedis::Redis;
        settings.redis.host = "127.0.0.1".into();
        settings.redis.port = 6379;
        settings.redis.key_prefix = format!("quintet_t_{}:", random_hex());
    }
    settings
}

/// Spawns an app with the test settings.
pub async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with(backend, |_| {}).await
}

/// Spawns an app after `configure` adjusts the test settings.
pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    let data_dir = std::env::temp_dir().join(format!("quintet-e2e-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&data_dir).expect("temp dir");
    let mut settings = test_settings(backend, &data_dir);
    configure(&mut settings);
    let database = (settings.event_store.backend == StoreBackend::Mysql)
        .then(|| settings.event_store.mysql.database.clone());
    let redis_prefix = (settings.snapshots.backend == MemoryOrRedis::Redis)
        .then(|| settings.redis.key_prefix.clone());

    // Assembled exactly as `quintet up` does.
    let (stop, shutdown) = web::server::shutdown_channel();
    let (backends, read_state) = read_api::connect_and_start(&settings, shutdown.clone())
        .await
        .expect("connect the backends, start projections and hub");
    let write_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind write-api");
    let read_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind read-api");
    let write_url = format!(
        "http://{}",
        write_listener.local_addr().expect("write-api addr")
    );
    let read_url = format!(
        "http://{}",
        read_listener.local_addr().expect("read-api addr")
    );
    {
        let settings = settings.clone();
        let backends = backends.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(err) = write_api::serve(&settings, &backends, write_listener, shutdown).await
            {
                eprintln!("write-api stopped: {err}");
            }
        });
    }
    {
        let settings = settings.clone();
        tokio::spawn(async move {
            if let Err(err) = read_api::serve(&settings, read_state, read_listener, shutdown).await
            {
                eprintln!("read-api stopped: {err}");
            }
        });
    }
    let client = reqwest::Client::builder()
        .timeout(WAIT + Duration::from_secs(5))
        .build()
        .expect("http client");
    TestApp {
        backend,
        write_url,
        read_url,
        keys: JwtKeys::new(&settings.security),
        settings,
        engine: backends.engine.clone(),
        client,
        _stop: stop,
        data_dir,
        database,
        redis_prefix,
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        let _ = self._stop.send(true);
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let database = self.database.take();
        let prefix = self.redis_prefix.take();
        if database.is_none() && prefix.is_none() {
            return;
        }
        // Cleanup is best effort, on a thread of its own (we may be inside a runtime).
        let cleanup = std::thread::spawn(move || {
            use redis::Commands as _;
            if let Some(prefix) = prefix {
                if let Ok(mut conn) =
                    redis::Client::open(REDIS_URL).and_then(|c| c.get_connection())
                {
                    let keys: Vec<String> = conn
                        .scan_match::<_, String>(format!("{prefix}*"))
                        .map(|iter| iter.collect())
                        .unwrap_or_default();
                    for key in keys {
                        let _: Result<(), _> = redis::cmd("DEL").arg(key).query(&mut conn);
                    }
                }
            }
            if let Some(database) = database {
                let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                else {
                    return;
                };
                runtime.block_on(async move {
                    use sqlx::Connection;
                    let Ok(Ok(mut conn)) = tokio::time::timeout(
                        Duration::from_secs(5),
                        sqlx::MySqlConnection::connect(MARIADB_URL),
                    )
                    .await
                    else {
                        return;
                    };
                    let _ = sqlx::query("SET SESSION lock_wait_timeout = 5")
                        .execute(&mut conn)
                        .await;
                    let _ = tokio::time::timeout(
                        Duration::from_secs(10),
                        sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
                            .execute(&mut conn),
                    )
                    .await;
                });
            }
        });
        let _ = cleanup.join();
    }
}

/// `path` with `min_position=<position>` added to its query: a read of it waits until the
/// projections reached `position`.
pub fn at_position(path: &str, position: u64) -> String {
    let sep = if path.contains('?') { '&' } else { '?' };
    format!("{path}{sep}min_position={position}")
}

/// Which API a request goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Write,
    Read,
}

impl TestApp {
    /// A token for `role`, minted with the app's keys.
    pub fn token(&self, role: Role) -> String {
        self.keys
            .mint(
                &format!("e2e-{role:?}").to_lowercase(),
                role,
                Duration::from_secs(600),
            )
            .expect("mint a token")
    }

    /// A token for `role` that expires after `ttl`.
    pub fn token_with_ttl(&self, role: Role, ttl: Duration) -> String {
        self.keys
            .mint("e2e-short-lived", role, ttl)
            .expect("mint a token")
    }

    /// A token for `role` limited to the contexts in `scope` (space-separated).
    pub fn token_scoped(&self, role: Role, scope: &str) -> String {
        let mut claims = self
            .keys
            .claims("e2e-scoped", role, Duration::from_secs(600));
        claims.scope = Some(scope.to_string());
        self.keys.mint_claims(&claims).expect("mint a token")
    }

    /// A token for `role` that acts for the repository user `user_id` (its own aggregates
    /// only, unless `role` is admin).
    pub fn token_for_user(&self, role: Role, user_id: &str) -> String {
        let mut claims = self.keys.claims(
            &format!("e2e-user-{user_id}"),
            role,
            Duration::from_secs(600),
        );
        claims.user_id = Some(user_id.to_string());
        self.keys.mint_claims(&claims).expect("mint a token")
    }

    /// A token for `role` with a chosen subject.
    pub fn token_for(&self, subject: &str, role: Role) -> String {
        self.keys
            .mint(subject, role, Duration::from_secs(600))
            .expect("mint a token")
    }

    fn base(&self, side: Side) -> &str {
        match side {
            Side::Write => &self.write_url,
            Side::Read => &self.read_url,
        }
    }

    /// `<base>/api/v1<path>`.
    pub fn api(&self, side: Side, path: &str) -> String {
        format!("{}{}{path}", self.base(side), web::server::API_PREFIX)
    }

    /// `<base><path>` (operational routes).
    pub fn url(&self, side: Side, path: &str) -> String {
        format!("{}{path}", self.base(side))
    }

    /// A request to the API with no token.
    pub fn anonymous(&self, method: Method, side: Side, path: &str) -> RequestBuilder {
        self.client.request(method, self.api(side, path))
    }

    /// A writer's request to write-api.
    pub fn write(&self, method: Method, path: &str) -> RequestBuilder {
        self.anonymous(method, Side::Write, path)
            .bearer_auth(self.token(Role::Writer))
    }

    /// A reader's GET on read-api.
    pub fn read(&self, path: &str) -> RequestBuilder {
        self.anonymous(Method::GET, Side::Read, path)
            .bearer_auth(self.token(Role::Reader))
    }

    /// POST a JSON body to write-api as a writer.
    pub async fn post(&self, path: &str, body: Value) -> Reply {
        Reply::of(self.write(Method::POST, path).json(&body)).await
    }

    /// POST with no body to write-api as a writer.
    pub async fn post_empty(&self, path: &str) -> Reply {
        Reply::of(self.write(Method::POST, path)).await
    }

    /// PUT a JSON body to write-api as a writer.
    pub async fn put(&self, path: &str, body: Value) -> Reply {
        Reply::of(self.write(Method::PUT, path).json(&body)).await
    }

    /// DELETE on write-api as a writer.
    pub async fn delete(&self, path: &str) -> Reply {
        Reply::of(self.write(Method::DELETE, path)).await
    }

    /// GET on read-api as a reader.
    pub async fn get(&self, path: &str) -> Reply {
        Reply::of(self.read(path)).await
    }

    /// GET on read-api after the projections have reached `position` (read your writes).
    pub async fn get_at(&self, path: &str, position: u64) -> Reply {
        self.get(&at_position(path, position)).await
    }

    /// `method path` on `side` with `token`, and a JSON body when given.
    pub async fn send_as(
        &self,
        token: &str,
        method: Method,
        side: Side,
        path: &str,
        body: Option<Value>,
    ) -> Reply {
        let mut request = self.anonymous(method, side, path).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        Reply::of(request).await
    }

    /// `method path` with a JSON body on write-api, with `token`.
    pub async fn write_as(&self, token: &str, method: Method, path: &str, body: Value) -> Reply {
        self.send_as(token, method, Side::Write, path, Some(body))
            .await
    }

    /// A GET on read-api with `token`, once the projections reached `position`.
    pub async fn read_at(&self, token: &str, path: &str, position: u64) -> Reply {
        self.send_as(
            token,
            Method::GET,
            Side::Read,
            &at_position(path, position),
            None,
        )
        .await
    }

    /// The event store's head position, read directly.
    pub async fn head_position(&self) -> u64 {
        self.engine
            .store()
            .head_position()
            .await
            .expect("head position")
    }

    /// Every stored event after `position`, read directly from the event store.
    pub async fn events_after(&self, position: u64) -> Vec<kernel::envelope::StoredEvent> {
        let mut events = Vec::new();
        let mut after = position;
        loop {
            let batch = self
                .engine
                .store()
                .read_all(after, 500)
                .await
                .expect("read the event store");
            let Some(last) = batch.last() else {
                return events;
            };
            after = last.position;
            events.extend(batch);
        }
    }

    /// `ws://.../ws` of read-api.
    pub fn ws_url(&self) -> String {
        format!("{}/ws", self.read_url.replacen("http://", "ws://", 1))
    }

    /// Creates a caretaker; returns the write's position.
    pub async fn create_caretaker(&self, name: &str) -> u64 {
        self.post("/mementos/caretakers", serde_json::json!({ "name": name }))
            .await
            .expect_status(StatusCode::CREATED)
            .position()
    }

    /// Creates a document originator; returns the write's position.
    pub async fn create_document(&self, id: &str, content: &str) -> u64 {
        self.post(
            "/originators",
            serde_json::json!({
                "id": id, "type": "document", "name": format!("doc {id}"),
                "state": { "content": content },
            }),
        )
        .await
        .expect_status(StatusCode::CREATED)
        .position()
    }
}

/// A response, read in full.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub text: String,
    /// The body as JSON, or `Null` if it is not JSON.
    pub body: Value,
}

impl Reply {
    /// Sends `request` and reads the whole response.
    pub async fn of(request: RequestBuilder) -> Reply {
        let response = request.send().await.expect("the request is answered");
        Reply::read(response).await
    }

    pub async fn read(response: reqwest::Response) -> Reply {
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("the body is readable");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            text,
            body,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// Asserts the status, showing the body when it differs.
    #[track_caller]
    pub fn expect_status(self, status: StatusCode) -> Reply {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        self
    }

    /// Asserts a 2xx.
    #[track_caller]
    pub fn expect_success(self) -> Reply {
        assert!(
            self.status.is_success(),
            "expected 2xx, got {}; body: {}",
            self.status,
            self.text
        );
        self
    }

    /// Asserts an RFC 9457 problem with `status`: content type, and type/title/status/detail.
    #[track_caller]
    pub fn expect_problem(self, status: StatusCode) -> Reply {
        assert_eq!(
            self.status, status,
            "unexpected status; body: {}",
            self.text
        );
        assert_problem_shape(&self);
        self
    }

    /// The committed position of a write, checked to be the same in the body and in
    /// `X-Quintet-Position`.
    #[track_caller]
    pub fn position(&self) -> u64 {
        let body = self
            .body
            .get("position")
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no position in the body: {}", self.text));
        let header: u64 = self
            .header("x-quintet-position")
            .unwrap_or_else(|| panic!("no X-Quintet-Position header; body: {}", self.text))
            .parse()
            .expect("X-Quintet-Position is a number");
        assert_eq!(body, header, "position in body and header differ");
        assert!(body > 0, "a committed position is positive");
        body
    }

    /// The `items` of a page.
    pub fn items(&self) -> &Vec<Value> {
        self.body["items"]
            .as_array()
            .unwrap_or_else(|| panic!("a page has items: {}", self.text))
    }

    /// The `id` of each item of a page, in order.
    pub fn ids(&self) -> Vec<String> {
        self.items()
            .iter()
            .map(|item| item["id"].as_str().expect("an id").to_string())
            .collect()
    }

    /// The event types a write reports in `events`.
    pub fn event_types(&self) -> Vec<String> {
        self.body["events"]
            .as_array()
            .unwrap_or_else(|| panic!("a write has events: {}", self.text))
            .iter()
            .map(|e| e.as_str().expect("an event type").to_string())
            .collect()
    }

    /// The field names in the problem's `errors`.
    pub fn error_fields(&self) -> Vec<String> {
        self.body
            .get("errors")
            .and_then(Value::as_array)
            .map(|errors| {
                errors
                    .iter()
                    .filter_map(|e| e.get("field").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Asserts the RFC 9457 shape of an error answer.
#[track_caller]
pub fn assert_problem_shape(reply: &Reply) {
    let content_type = reply.header("content-type").unwrap_or_default();
    assert!(
        content_type.starts_with("application/problem+json"),
        "content-type is `{content_type}`, not application/problem+json; body: {}",
        reply.text
    );
    for field in ["type", "title", "detail"] {
        assert!(
            reply.body.get(field).and_then(Value::as_str).is_some(),
            "problem lacks a string `{field}`: {}",
            reply.text
        );
    }
    assert_eq!(
        reply.body.get("status").and_then(Value::as_u64),
        Some(u64::from(reply.status.as_u16())),
        "problem status differs from the HTTP status: {}",
        reply.text
    );
}

/// Polls `check` until it returns `Some`, or panics after [`WAIT`] naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Runs a scenario under [`SCENARIO_TIMEOUT`].
pub async fn run_scenario<Fut: Future<Output = ()>>(scenario: Fut) {
    tokio::time::timeout(SCENARIO_TIMEOUT, scenario)
        .await
        .expect("the scenario finishes in time");
}

/// Hex SHA-256 of the canonical JSON (sorted keys, compact) of `value`: the memento
/// checksum, computed independently of the kernel.
pub fn canonical_sha256(value: &Value) -> String {
    use sha2::{Digest, Sha256};
    fn canonical(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                // serde_json's Map is sorted unless `preserve_order` is on; sort explicitly.
                let mut entries: Vec<_> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                Value::Object(
                    entries
                        .into_iter()
                        .map(|(k, v)| (k.clone(), canonical(v)))
                        .collect(),
                )
            }
            Value::Array(items) => Value::Array(items.iter().map(canonical).collect()),
            other => other.clone(),
        }
    }
    hex::encode(Sha256::digest(canonical(value).to_string().as_bytes()))
}

/// JWT pieces for hand-crafted tokens.
pub mod jwt {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    use serde_json::{json, Value};

    pub fn now() -> i64 {
        chrono::Utc::now().timestamp()
    }

    /// Valid claims for `role`, which a test then breaks.
    pub fn claims(role: &str) -> Value {
        json!({
            "sub": "e2e-crafted",
            "role": role,
            "iat": now(),
            "exp": now() + 600,
            "aud": super::JWT_AUDIENCE,
            "iss": super::JWT_ISSUER,
        })
    }

    /// Signs `claims` with `alg` and `secret`.
    pub fn sign(alg: Algorithm, secret: &str, claims: &Value) -> String {
        encode(
            &Header::new(alg),
            claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .expect("encode a token")
    }

    /// An unsigned `alg: none` token.
    pub fn unsigned(claims: &Value) -> String {
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let payload = URL_SAFE_NO_PAD.encode(claims.to_string().as_bytes());
        format!("{header}.{payload}.")
    }
}

/// Generates `mod $name { embedded, mariadb }`: the scenario `async fn $name(app: TestApp)`
/// run once against each backend. With `with = f`, `f(&mut Settings)` adjusts the settings;
/// with `ignore = "bug: ..."`, both tests are ignored (a known bug, run with `--ignored`).
#[macro_export]
macro_rules! both_backends {
    ($name:ident) => {
        $crate::both_backends!(@gen $name, |_: &mut ::kernel::config::Settings| {}, []);
    };
    ($name:ident, ignore = $reason:literal) => {
        $crate::both_backends!(@gen $name, |_: &mut ::kernel::config::Settings| {}, [ignore = $reason]);
    };
    ($name:ident, with = $configure:expr) => {
        $crate::both_backends!(@gen $name, $configure, []);
    };
    ($name:ident, with = $configure:expr, ignore = $reason:literal) => {
        $crate::both_backends!(@gen $name, $configure, [ignore = $reason]);
    };
    (@gen $name:ident, $configure:expr, [$($attr:meta)*]) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn embedded() {
                let app = $crate::spawn_app_with($crate::Backend::Embedded, $configure).await;
                $crate::run_scenario(super::$name(app)).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            $(#[$attr])*
            async fn mariadb() {
                let app = $crate::spawn_app_with($crate::Backend::MariaDb, $configure).await;
                $crate::run_scenario(super::$name(app)).await;
            }
        }
    };
}
