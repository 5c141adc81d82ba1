//! Append throughput of the event store, on SQLite and on MariaDB, measured side by side
//! with a baseline in the same run: plain single-row INSERTs of the same bytes, one
//! transaction each, from the same number of tasks.
//!
//! Scenarios (events per second, median of `--runs`):
//! - `single`: 32 tasks, each commit appends one encoded event (codec: JSON, zstd, AES-GCM)
//!   through the kernel's `EventStore::append` (optimistic lock, metadata, one transaction);
//! - `batched`: 32 tasks, each commit appends `--batch` events of one aggregate;
//! - `baseline`: 32 tasks, raw `INSERT` of a pre-encoded row per transaction.
//!
//! `cargo run --release -p quintet-benches --bin append -- --backend both`

// mimalloc: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kernel::adapters::sql::{MySqlEventStore, SqliteEventStore};
use kernel::codec::{self, Aad, CodecSettings, DataKey};
use kernel::envelope::{AppendBatch, NewEvent, StreamAppend};
use kernel::ports::EventStore;
use uuid::Uuid;

struct Options {
    backends: Vec<String>,
    events: u64,
    tasks: u64,
    batch: u64,
    runs: usize,
}

fn options() -> Options {
    let mut options = Options {
        backends: vec!["sqlite".into(), "mysql".into()],
        events: 20_000,
        tasks: 32,
        batch: 100,
        runs: 3,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut pairs = args.chunks(2);
    while let Some([flag, value]) = pairs.next() {
        match flag.as_str() {
            "--backend" if value == "both" => {}
            "--backend" => options.backends = vec![value.clone()],
            "--events" => options.events = value.parse().expect("--events N"),
            "--tasks" => options.tasks = value.parse().expect("--tasks N"),
            "--batch" => options.batch = value.parse().expect("--batch N"),
            "--runs" => options.runs = value.parse().expect("--runs N"),
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

/// A realistic 1 KB event payload, encoded as the engine would.
fn encoded_payload(key: &DataKey, aggregate_id: &str, sequence: u64, event_id: Uuid) -> Vec<u8> {
    let json = serde_json::to_vec(&serde_json::json!({
        "type": "originator_state_changed",
        "state": {"content": "x".repeat(900), "author": "bench", "tags": ["a", "b", "c"]},
        "version": sequence,
        "at": Utc::now(),
    }))
    .expect("json");
    let aad = Aad {
        aggregate_id,
        sequence,
        event_id,
    };
    codec::seal(Some(key), &aad, &json, &CodecSettings::default()).expect("seal")
}

fn new_event(key: &DataKey, aggregate_id: &str, sequence: u64) -> NewEvent {
    let event_id = Uuid::now_v7();
    NewEvent {
        event_id,
        event_type: "originator_state_changed".into(),
        event_version: 1,
        payload: encoded_payload(key, aggregate_id, sequence, event_id),
    }
}

fn batch(aggregate_id: &str, expected: u64, events: Vec<NewEvent>) -> AppendBatch {
    AppendBatch {
        streams: vec![StreamAppend {
            aggregate_type: "originator".into(),
            aggregate_id: aggregate_id.to_string(),
            expected_sequence: expected,
            events,
        }],
        correlation_id: Uuid::now_v7(),
        causation_id: None,
        actor: Some("bench".into()),
        recorded_at: Utc::now(),
        idempotency: None,
        reservations: vec![],
        releases: vec![],
        new_keys: vec![],
    }
}

/// Appends `per_commit`-event commits from `tasks` tasks until `events` are written.
async fn run_appends(store: Arc<dyn EventStore>, options: &Options, per_commit: u64) -> f64 {
    let key = Arc::new(DataKey::generate());
    let commits_per_task = (options.events / options.tasks / per_commit).max(1);
    let run = Uuid::now_v7().simple().to_string();
    let started = Instant::now();
    let mut handles = Vec::new();
    for task in 0..options.tasks {
        let store = store.clone();
        let key = key.clone();
        let aggregate_id = format!("bench-{run}-{task}");
        handles.push(tokio::spawn(async move {
            let mut sequence = 0;
            for _ in 0..commits_per_task {
                let events = (1..=per_commit)
                    .map(|offset| new_event(&key, &aggregate_id, sequence + offset))
                    .collect();
                store
                    .append(batch(&aggregate_id, sequence, events))
                    .await
                    .expect("append");
                sequence += per_commit;
            }
        }));
    }
    for handle in handles {
        handle.await.expect("task");
    }
    let written = commits_per_task * per_commit * options.tasks;
    written as f64 / started.elapsed().as_secs_f64()
}

/// Baseline: one raw INSERT per transaction, the same bytes, no kernel.
async fn run_baseline(backend: &str, url: &str, options: &Options) -> f64 {
    let key = Arc::new(DataKey::generate());
    let per_task = options.events / options.tasks;
    let run = Uuid::now_v7().simple().to_string();
    let sql = "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, \
         event_version, event_id, correlation_id, causation_id, actor, recorded_at, payload) \
         VALUES (?, ?, ?, ?, ?, ?, ?, NULL, ?, ?, ?)";
    let started = Instant::now();
    let mut handles = Vec::new();
    macro_rules! spawn_inserts {
        ($pool:expr) => {
            for task in 0..options.tasks {
                let pool = $pool.clone();
                let key = key.clone();
                let aggregate_id = format!("base-{run}-{task}");
                handles.push(tokio::spawn(async move {
                    for sequence in 1..=per_task {
                        let event_id = Uuid::now_v7();
                        let payload = encoded_payload(&key, &aggregate_id, sequence, event_id);
                        sqlx::query(sql)
                            .bind("originator")
                            .bind(aggregate_id.as_bytes())
                            .bind(sequence as i64)
                            .bind("originator_state_changed")
                            .bind(1i32)
                            .bind(event_id.as_bytes().to_vec())
                            .bind(Uuid::now_v7().as_bytes().to_vec())
                            .bind("bench")
                            .bind(Utc::now().timestamp_micros())
                            .bind(payload)
                            .execute(&pool)
                            .await
                            .expect("insert");
                    }
                }));
            }
        };
    }
    if backend == "mysql" {
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(options.tasks as u32)
            .connect(url)
            .await
            .expect("baseline pool");
        spawn_inserts!(pool);
    } else {
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(
                url.parse::<sqlx::sqlite::SqliteConnectOptions>()
                    .expect("url")
                    .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
                    .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
                    .busy_timeout(Duration::from_secs(30)),
            )
            .await
            .expect("baseline pool");
        spawn_inserts!(pool);
    }
    for handle in handles {
        handle.await.expect("task");
    }
    (per_task * options.tasks) as f64 / started.elapsed().as_secs_f64()
}

fn median(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

async fn connect(backend: &str) -> (Arc<dyn EventStore>, String) {
    if backend == "mysql" {
        let base = std::env::var("MYSQL_TEST_URL")
            .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
        let name = format!("quintet_bench_{}", Uuid::new_v4().simple());
        use sqlx::Connection;
        let mut admin = sqlx::MySqlConnection::connect(&base)
            .await
            .expect("MariaDB");
        sqlx::query(&format!("CREATE DATABASE `{name}`"))
            .execute(&mut admin)
            .await
            .expect("create database");
        // Durability is what makes the figure honest: every commit must reach the disk.
        let flush: String =
            sqlx::query_scalar("SELECT CAST(@@innodb_flush_log_at_trx_commit AS CHAR)")
                .fetch_one(&mut admin)
                .await
                .expect("read innodb_flush_log_at_trx_commit");
        println!("mysql: innodb_flush_log_at_trx_commit={flush}");
        let url = format!("{base}/{name}");
        let store = MySqlEventStore::connect(&url, 32).await.expect("connect");
        store.migrate().await.expect("migrate");
        (Arc::new(store), url)
    } else {
        let path =
            std::env::temp_dir().join(format!("quintet-bench-{}.db", Uuid::new_v4().simple()));
        let url = format!("sqlite://{}", path.display());
        let store = SqliteEventStore::connect(&url, 4).await.expect("connect");
        store.migrate().await.expect("migrate");
        (Arc::new(store), url)
    }
}

#[tokio::main]
async fn main() {
    let options = options();
    println!(
        "append: {} events per run, {} tasks, batch {}, {} runs (median [min..max])",
        options.events, options.tasks, options.batch, options.runs
    );
    for backend in &options.backends {
        let (store, url) = connect(backend).await;
        // Warm-up: connections, caches, the InnoDB buffer pool.
        run_appends(
            store.clone(),
            &Options {
                events: 1000,
                ..options_clone(&options)
            },
            1,
        )
        .await;
        let mut single = Vec::new();
        let mut batched = Vec::new();
        let mut baseline = Vec::new();
        for _ in 0..options.runs {
            baseline.push(run_baseline(backend, &url, &options).await);
            single.push(run_appends(store.clone(), &options, 1).await);
            batched.push(run_appends(store.clone(), &options, options.batch).await);
        }
        let (base, base_lo, base_hi) = median(baseline);
        let (one, one_lo, one_hi) = median(single);
        let (many, many_lo, many_hi) = median(batched);
        println!("{backend}: baseline raw INSERT {base:.0}/s [{base_lo:.0}..{base_hi:.0}]");
        println!("{backend}: single-event appends {one:.0}/s [{one_lo:.0}..{one_hi:.0}]");
        println!(
            "{backend}: batched appends ({}/commit) {many:.0}/s [{many_lo:.0}..{many_hi:.0}]",
            options.batch
        );
        println!("METRIC append_single_events_per_s_{backend} ours={one:.0} baseline={base:.0} ratio={:.2}", one / base);
        println!("METRIC append_batched_events_per_s_{backend} ours={many:.0} baseline={base:.0} ratio={:.2}", many / base);
    }
}

fn options_clone(options: &Options) -> Options {
    Options {
        backends: options.backends.clone(),
        events: options.events,
        tasks: options.tasks,
        batch: options.batch,
        runs: options.runs,
    }
}
