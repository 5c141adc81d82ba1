//! Queued and scheduled commands survive SIGKILL and run exactly once: the real `write-api`
//! binary on a fresh MariaDB database takes ~200 queued payment commands and one scheduled a
//! few seconds ahead, is killed with SIGKILL while its dispatcher is working through them
//! (and before the scheduled one is due), and is started again. Every command must end with
//! exactly one `command.executed`, and exactly one payment must exist per command, read from
//! the event store itself.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use kernel::config::Settings;
use kernel::domain::command::{COMMAND, PENDING_SCOPE};
use kernel::domain::repository::PAYMENT;
use kernel::ports::{EventFilter, EventStore};
use serde_json::{json, Map, Value};
use sqlx::Connection;
use web::{JwtKeys, Role};

const QUEUED: usize = 200;
const JWT_SECRET: &str = "quintet-durability-secret-0123456789abcdef";

fn mysql_base_url() -> String {
    std::env::var("MYSQL_TEST_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
        .trim_end_matches('/')
        .to_string()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// The settings the process and the test share, as config keys.
fn overrides(database: &str, data_dir: &Path, port: u16) -> Vec<(&'static str, Value)> {
    vec![
        ("event_store.backend", json!("mysql")),
        (
            "event_store.url",
            json!(format!("{}/{database}", mysql_base_url())),
        ),
        ("data_dir", json!(data_dir.display().to_string())),
        ("write_api.port", json!(port)),
        ("security.jwt_secret", json!(JWT_SECRET)),
        ("security.rate_limit_requests", json!(1_000_000)),
        ("command.dispatch_poll", json!("200ms")),
        ("logging.level", json!("info")),
        ("logging.format", json!("pretty")),
    ]
}

fn nested(pairs: &[(&str, Value)]) -> Value {
    let mut root = Map::new();
    for (key, value) in pairs {
        let parts: Vec<&str> = key.split('.').collect();
        let mut node = &mut root;
        for part in &parts[..parts.len() - 1] {
            node = node
                .entry(part.to_string())
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("an object");
        }
        node.insert(parts[parts.len() - 1].to_string(), value.clone());
    }
    Value::Object(root)
}

struct World {
    database: String,
    data_dir: PathBuf,
    port: u16,
    settings: Settings,
}

impl World {
    async fn new() -> World {
        let database = format!("quintet_t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::MySqlConnection::connect(&mysql_base_url())
            .await
            .expect("connect to MariaDB (MYSQL_TEST_URL)");
        sqlx::query(&format!(
            "CREATE DATABASE `{database}` CHARACTER SET utf8mb4"
        ))
        .execute(&mut admin)
        .await
        .expect("create the test database");
        admin.close().await.ok();
        let data_dir =
            std::env::temp_dir().join(format!("quintet_t_command_{}", &database[10..22]));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let port = free_port();
        let figment = Settings::figment(None).merge(figment::providers::Serialized::defaults(
            nested(&overrides(&database, &data_dir, port)),
        ));
        let settings = Settings::from_figment(figment).expect("test settings");
        World {
            database,
            data_dir,
            port,
            settings,
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn spawn(&self, name: &str) -> Process {
        let log = self.data_dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .expect("process log");
        let mut command = Command::new(env!("CARGO_BIN_EXE_write-api"));
        command
            .env_remove("QUINTET_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file);
        for (key, value) in overrides(&self.database, &self.data_dir, self.port) {
            let variable = format!("QUINTET__{}", key.to_uppercase().replace('.', "__"));
            let text = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            command.env(variable, text);
        }
        Process {
            child: command.spawn().expect("start the write-api binary"),
            log,
        }
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "kept {} (process logs) and database {}",
                self.data_dir.display(),
                self.database
            );
            return;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let base = mysql_base_url();
        let database = self.database.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let mut conn = sqlx::MySqlConnection::connect(&base).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
                    .execute(&mut conn)
                    .await
                    .ok()?;
                conn.close().await.ok()
            })
        })
        .join();
    }
}

struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.sigkill();
    }
}

async fn wait_healthy(world: &World, client: &reqwest::Client, process: &mut Process) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(world.url("/health")).send().await {
            if response.status().is_success() {
                return;
            }
        }
        if let Some(exit) = process.child.try_wait().expect("wait") {
            panic!("write-api exited: {exit}\n{}", process.log_text());
        }
        assert!(
            Instant::now() < deadline,
            "write-api did not become healthy\n{}",
            process.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn post(
    client: &reqwest::Client,
    world: &World,
    token: &str,
    path: &str,
    body: Value,
) -> (u16, Value) {
    let response = client
        .post(world.url(&format!("/api/v1{path}")))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("the request is answered");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Stream id → how many events of `event_type` it has, for one aggregate type.
async fn count_events(
    store: &dyn EventStore,
    aggregate_type: &str,
    event_type: &str,
) -> BTreeMap<String, usize> {
    let filter = EventFilter {
        aggregate_types: vec![aggregate_type.to_string()],
        event_type: Some(event_type.to_string()),
        ..Default::default()
    };
    let mut counts = BTreeMap::new();
    let mut offset = 0;
    loop {
        let page = store
            .query_events(&filter, offset, 1000)
            .await
            .expect("read the event log");
        if page.events.is_empty() {
            return counts;
        }
        offset += page.events.len() as u64;
        for event in page.events {
            *counts.entry(event.aggregate_id).or_insert(0) += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn command_queue_and_schedule_survive_sigkill_and_run_once() {
    let world = World::new().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let token = JwtKeys::new(&world.settings.security)
        .mint("durability-test", Role::Writer, Duration::from_secs(3600))
        .expect("a token");

    let mut first = world.spawn("first");
    wait_healthy(&world, &client, &mut first).await;
    let (status, body) = post(
        &client,
        &world,
        &token,
        "/users",
        json!({ "id": "payer", "email": "payer@example.com", "name": "Payer" }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let payment = |id: &str| {
        json!({
            "type": "payment", "command_id": id, "user_id": "payer", "amount": 12.5,
            "currency": "USD", "payment_method": "card", "gateway": "stripe",
        })
    };

    // One scheduled a few seconds ahead: it must still be pending when the process dies.
    let execute_at = Utc::now() + chrono::Duration::seconds(6);
    let (status, body) = post(
        &client,
        &world,
        &token,
        "/commands/schedule",
        json!({ "execute_at": execute_at.to_rfc3339(), "command": payment("scheduled-1") }),
    )
    .await;
    assert_eq!(status, 202, "{body}");

    // The queue fills from a task of its own; the process is killed mid-way, while requests
    // are in flight and the dispatcher works through what was queued.
    let ids: BTreeSet<String> = std::iter::once("scheduled-1".to_string())
        .chain((0..QUEUED).map(|n| format!("queued-{n:04}")))
        .collect();
    let acknowledged = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let filler = {
        let (client, token, acknowledged) = (client.clone(), token.clone(), acknowledged.clone());
        let url = world.url("/api/v1/commands/queue");
        tokio::spawn(async move {
            let mut unanswered = Vec::new();
            for n in 0..QUEUED {
                let id = format!("queued-{n:04}");
                let sent = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&payment(&id))
                    .send()
                    .await;
                match sent {
                    Ok(response) if response.status().as_u16() == 202 => {
                        acknowledged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    // Killed: it may or may not have been queued.
                    _ => unanswered.push(id),
                }
            }
            unanswered
        })
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while acknowledged.load(std::sync::atomic::Ordering::SeqCst) < QUEUED / 2 {
        assert!(
            Instant::now() < deadline,
            "the queue does not fill\n{}",
            first.log_text()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let backends = kernel::wiring::connect_write_side(&world.settings)
        .await
        .expect("connect to the event store");
    let store = backends.engine.store().clone();
    first.sigkill();
    assert!(
        Utc::now() < execute_at,
        "the scheduled command was not due yet at the kill"
    );
    let unanswered = filler.await.expect("the filler task");
    let executed_at_kill = count_events(&*store, COMMAND, "command.executed")
        .await
        .len();
    eprintln!(
        "{executed_at_kill} of {} commands had run at the SIGKILL; {} queue requests unanswered",
        ids.len(),
        unanswered.len()
    );

    let mut second = world.spawn("second");
    wait_healthy(&world, &client, &mut second).await;
    // What was cut off is sent again with its command id: queued now, or answered with what
    // was recorded before the kill (never twice).
    for id in &unanswered {
        let (status, body) = post(&client, &world, &token, "/commands/queue", payment(id)).await;
        assert!(status == 202 || status == 200, "{status}: {body}");
        assert_eq!(body["command_id"], id.as_str());
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let executed = loop {
        let executed = count_events(&*store, COMMAND, "command.executed").await;
        if executed.len() == ids.len() {
            break executed;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of {} commands ran after the restart\n{}",
            executed.len(),
            ids.len(),
            second.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    // Exactly once: one command.executed per command, one payment per command.
    assert_eq!(executed.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(executed.values().all(|n| *n == 1), "{executed:?}");
    let failed = count_events(&*store, COMMAND, "command.failed").await;
    assert!(failed.is_empty(), "no command failed: {failed:?}");
    let payments = count_events(&*store, PAYMENT, "payment_created").await;
    assert_eq!(payments.keys().cloned().collect::<BTreeSet<_>>(), ids);
    assert!(payments.values().all(|n| *n == 1), "{payments:?}");
    let mut all_payments = Vec::new();
    let mut after = String::new();
    loop {
        let page = store
            .aggregate_ids(PAYMENT, &after, 1000)
            .await
            .expect("payment ids");
        let Some(last) = page.last() else { break };
        after = last.clone();
        all_payments.extend(page);
    }
    assert_eq!(all_payments.len(), ids.len(), "one payment per command");

    // Nothing is left pending, and the scheduled one ran on time.
    assert!(store
        .reservations(PENDING_SCOPE, "", 1000)
        .await
        .expect("pending")
        .is_empty());
    let scheduled = backends
        .engine
        .load::<kernel::domain::command::Command>("scheduled-1")
        .await
        .expect("load");
    assert_eq!(
        scheduled.state.status(),
        Some(kernel::domain::command::CommandStatus::Executed)
    );
    let events = store
        .load_stream(COMMAND, "scheduled-1", 0)
        .await
        .expect("stream");
    let last = events.last().expect("events");
    assert!(last.recorded_at >= execute_at, "ran before it was due");
    drop(second);
}
