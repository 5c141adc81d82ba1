//! Projection throughput for `benches/compare`: the Kafka projector against a naive consumer,
//! its scale-out over a consumer group, and the replay job's rebuild rate, on real servers
//! (MariaDB, tansu, SQLite read stores) with the real binaries.
//!
//! `project live --events N --runs R --bin-dir target/release --work DIR`:
//! 1. fills a fresh MariaDB event store (`--db-prefix` + uuid, `quintet_projbench_` by
//!    default) with N memento events through the engine (decide, encode, append: what
//!    write-api does), two writers, 500 events per unit of work;
//! 2. per run, twice: publishes the store to a fresh topic prefix with the kernel's relay (the
//!    wire format every consumer reads), with the `projector` processes already in their group
//!    and paused (admin flag), then resumes them and times resume -> checkpoint == head:
//!    - prefix `a`: one `projector --projection memento` process (3 partitions): *ours*;
//!    - prefix `b`: two processes in one consumer group: the scale-out figure;
//! 3. *naive*, on prefix `a`: one rdkafka consumer, partitions assigned from the beginning, that
//!    decodes each message the same way (`kafka::decode_event`, `projector::decode_for`) and
//!    applies it alone (`ReadStore::apply_projected` with one event: one SQLite transaction per
//!    event) into a fresh read store; timed from its first message to its last;
//! 4. checks that every read model (one process, two processes, naive) holds exactly the
//!    documents of a fresh in-process replay of the store (count and hash per collection).
//!
//! `project rebuild --events N --runs R --bin-dir target/release --work DIR`: fills a fresh
//! database with N events (timed), then runs `replay --projection memento --quiet` R times
//! (each into a fresh read store) and reads the rate from its summary line.
//!
//! `project fetch-latency`: times one message at a time through the broker (produce ack,
//! consumer receipt) with librdkafka's default `fetch.wait.max.ms` and with 10, 5 and 2 ms.
//!
//! `project drop-topics --prefix P`: deletes the event topics of a prefix (best effort).
//!
//! Progress goes to stderr; `RESULT key=value ...` lines to stdout for the script.

// mimalloc: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use kernel::adapters::kafka::{self, MARKER_HEADER};
use kernel::adapters::read_sqlite::SqliteReadStore;
use kernel::config::{FeedBackend, FeedSettings, KafkaSettings, Settings};
use kernel::domain::memento::projection::PROJECTION_NAME;
use kernel::domain::memento::{
    Caretaker, CaretakerCommand, MementoPolicy, MementoProjection, Originator, OriginatorCommand,
    OriginatorKind,
};
use kernel::domain::projection::Projection;
use kernel::domain::Context;
use kernel::engine::{Decision, Engine, Loaded, UnitOfWork};
use kernel::envelope::CommandContext;
use kernel::ports::{DocQuery, ReadStore};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use serde_json::{json, Map, Value};
use sqlx::Connection;

/// Concurrent writers of the fill (`--writers`).
const WRITERS: usize = 2;
/// Per writer: one unit of work holds one event of each of its aggregates.
const CARETAKERS: usize = 400;
const ORIGINATORS: usize = 100;
/// Mementos a caretaker keeps at most (older ones are deleted), so aggregates stay small.
const KEEP_MEMENTOS: usize = 8;
/// How long a projector may take to catch up before the run counts as failed.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(600);

struct Options {
    command: String,
    events: usize,
    runs: usize,
    bin_dir: PathBuf,
    work: PathBuf,
    brokers: String,
    prefix: String,
    naive_runs: usize,
    writers: usize,
    /// Databases are named `{db_prefix}<uuid>`.
    db_prefix: String,
}

fn options() -> Options {
    let mut args = std::env::args().skip(1);
    let command = args.next().unwrap_or_else(|| {
        eprintln!("usage: project live|rebuild|drop-topics [--flag value ...]");
        std::process::exit(2);
    });
    let mut options = Options {
        command,
        events: 100_000,
        runs: 3,
        bin_dir: PathBuf::from("target/release"),
        work: std::env::temp_dir().join(format!("quintet-project-{}", std::process::id())),
        brokers: std::env::var("KAFKA_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into()),
        prefix: String::new(),
        naive_runs: 0,
        writers: WRITERS,
        db_prefix: "quintet_projbench_".into(),
    };
    let rest: Vec<String> = args.collect();
    for pair in rest.chunks(2) {
        let [flag, value] = pair else {
            panic!("flags come in pairs: --flag value");
        };
        match flag.as_str() {
            "--events" => options.events = value.parse().expect("--events N"),
            "--runs" => options.runs = value.parse().expect("--runs N"),
            "--naive-runs" => options.naive_runs = value.parse().expect("--naive-runs N"),
            "--bin-dir" => options.bin_dir = PathBuf::from(value),
            "--work" => options.work = PathBuf::from(value),
            "--brokers" => options.brokers = value.clone(),
            "--prefix" => options.prefix = value.clone(),
            "--writers" => options.writers = value.parse().expect("--writers N"),
            "--db-prefix" => options.db_prefix = value.clone(),
            other => panic!("unknown flag {other}"),
        }
    }
    if options.naive_runs == 0 {
        options.naive_runs = options.runs;
    }
    options
}

fn mysql_base_url() -> String {
    std::env::var("MYSQL_TEST_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".to_string())
        .trim_end_matches('/')
        .to_string()
}

fn short_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// One configuration as config keys: the bench builds its `Settings` from it and hands it to
/// the processes it starts as `QUINTET__...` variables.
#[derive(Clone)]
struct World {
    database: String,
    data_dir: PathBuf,
    prefix: String,
    brokers: String,
}

impl World {
    fn pairs(&self) -> Vec<(&'static str, Value)> {
        vec![
            ("event_store.backend", json!("mysql")),
            (
                "event_store.url",
                json!(format!("{}/{}", mysql_base_url(), self.database)),
            ),
            ("event_store.max_connections", json!(16)),
            ("data_dir", json!(self.data_dir.display().to_string())),
            ("feed.backend", json!("kafka")),
            ("kafka.brokers", json!(self.brokers)),
            ("kafka.topic_prefix", json!(self.prefix)),
            ("kafka.partitions", json!(3)),
            ("kafka.produce_timeout", json!("10s")),
            ("projector.metrics_port", json!(0)),
            ("logging.level", json!("info")),
            ("logging.format", json!("pretty")),
        ]
    }

    fn settings(&self) -> Settings {
        let mut figment = Settings::figment(None);
        for (key, value) in self.pairs() {
            figment = figment.merge(figment::providers::Serialized::default(key, value));
        }
        Settings::from_figment(figment).expect("bench settings")
    }

    /// Starts a process (`quintet <process> ...`: `projector`, `replay`, which run exactly as
    /// their own binaries do) configured like this world.
    fn spawn(&self, bin_dir: &Path, process: &str, args: &[&str], log: &Path) -> Child {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("log file");
        let mut command = Command::new(bin_dir.join("quintet"));
        command
            .arg(process)
            .args(args)
            .env_remove("QUINTET_CONFIG")
            .stdin(Stdio::null())
            .stderr(file);
        if process == "replay" {
            command.stdout(Stdio::piped());
        } else {
            command.stdout(Stdio::null());
        }
        for (key, value) in self.pairs() {
            let variable = format!("QUINTET__{}", key.to_uppercase().replace('.', "__"));
            let text = match value {
                Value::String(text) => text,
                other => other.to_string(),
            };
            command.env(variable, text);
        }
        command.spawn().unwrap_or_else(|err| {
            panic!(
                "start {} {process}: {err}",
                bin_dir.join("quintet").display()
            )
        })
    }
}

async fn create_database(prefix: &str) -> String {
    let database = format!(
        "{prefix}{}",
        &uuid::Uuid::new_v4().simple().to_string()[..16]
    );
    let mut admin = sqlx::MySqlConnection::connect(&mysql_base_url())
        .await
        .expect("connect to MariaDB (MYSQL_TEST_URL)");
    sqlx::query(&format!(
        "CREATE DATABASE `{database}` CHARACTER SET utf8mb4"
    ))
    .execute(&mut admin)
    .await
    .expect("create the bench database");
    admin.close().await.ok();
    database
}

async fn drop_database(database: &str) {
    if let Ok(mut admin) = sqlx::MySqlConnection::connect(&mysql_base_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS `{database}`"))
            .execute(&mut admin)
            .await;
        admin.close().await.ok();
    }
}

// ---------------------------------------------------------------------------------- fill

/// A tiny deterministic generator (xorshift64*), so fills are alike from run to run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// An aggregate a writer holds in memory, so it decides without loading it.
struct Held<A> {
    id: String,
    loaded: Option<Loaded<A>>,
}

impl<A> Held<A>
where
    A: kernel::domain::EventSourced<Services = MementoPolicy> + Clone,
{
    fn new(id: String) -> Self {
        Self { id, loaded: None }
    }

    async fn decide(&mut self, command: A::Command) -> Decision<A>
    where
        kernel::KernelError: From<A::Error>,
    {
        let loaded = self.loaded.take().unwrap_or(Loaded {
            state: A::default(),
            sequence: 0,
            last_event_id: None,
            from_snapshot: false,
        });
        let decision = Engine::decide_on(&self.id, loaded, command, &MementoPolicy::default())
            .await
            .expect("decide");
        self.loaded = Some(Loaded {
            state: decision.state_after.clone(),
            sequence: decision.base_sequence + decision.events.len() as u64,
            last_event_id: None,
            from_snapshot: false,
        });
        decision
    }
}

fn text(rng: &mut Rng, words: usize) -> String {
    const WORDS: [&str; 8] = [
        "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel",
    ];
    (0..words)
        .map(|_| WORDS[rng.below(WORDS.len())])
        .collect::<Vec<_>>()
        .join(" ")
}

/// One writer: its own caretakers and originators; each unit of work gives every one of them
/// one event (a memento saved or deleted, a state set), until `events` are written. It decides
/// the next unit of work while a task of its own commits the previous one, in order.
///
/// The first unit of work creates every aggregate of the writer (and so its data keys); those
/// go one writer at a time (`setup`): concurrent group commits that each insert hundreds of new
/// keys can deadlock in InnoDB, which the store reports as a conflict for the caller to retry.
async fn writer(
    engine: Engine,
    tag: String,
    events: usize,
    seed: u64,
    setup: Arc<tokio::sync::Mutex<()>>,
) -> usize {
    let mut rng = Rng(seed | 1);
    let (queue, mut queued) = tokio::sync::mpsc::channel::<UnitOfWork>(2);
    let committer = tokio::spawn(async move {
        let ctx = CommandContext {
            actor: Some("bench".into()),
            ..CommandContext::default()
        };
        if let Some(uow) = queued.recv().await {
            let _one_at_a_time = setup.lock().await;
            engine.commit(uow, &ctx).await.expect("commit the setup");
        }
        while let Some(uow) = queued.recv().await {
            engine.commit(uow, &ctx).await.expect("commit");
        }
    });
    let mut originators: Vec<Held<Originator>> = (0..ORIGINATORS)
        .map(|i| Held::new(format!("{tag}-o{i}")))
        .collect();
    let mut caretakers: Vec<Held<Caretaker>> = (0..CARETAKERS)
        .map(|i| Held::new(format!("{tag}-c{i}")))
        .collect();
    let mut uow = UnitOfWork::new();
    for o in &mut originators {
        let id = o.id.clone();
        let decision = o
            .decide(OriginatorCommand::CreateOriginator {
                id: id.clone(),
                kind: OriginatorKind::Document,
                name: format!("originator {id}"),
                state: Some(json!({ "content": text(&mut rng, 20) })),
                at: Utc::now(),
            })
            .await;
        uow.push(decision).expect("push");
    }
    for c in &mut caretakers {
        let name = c.id.clone();
        let decision = c
            .decide(CaretakerCommand::CreateCaretaker {
                name,
                max_mementos: Some(1000),
                max_memento_size: None,
                max_memento_age_secs: Some(86_400),
                at: Utc::now(),
            })
            .await;
        uow.push(decision).expect("push");
    }
    let mut written = ORIGINATORS + CARETAKERS;
    queue.send(uow).await.expect("committer");
    let mut saved: Vec<Vec<String>> = vec![Vec::new(); CARETAKERS];
    let mut round = 0usize;
    while written < events {
        round += 1;
        let mut uow = UnitOfWork::new();
        for o in &mut originators {
            let decision = o
                .decide(OriginatorCommand::SetState {
                    state: json!({ "content": text(&mut rng, 20), "round": round }),
                    expected_version: None,
                    at: Utc::now(),
                })
                .await;
            written += decision.events.len();
            uow.push(decision).expect("push");
        }
        for (k, c) in caretakers.iter_mut().enumerate() {
            let full = saved[k].len() >= KEEP_MEMENTOS;
            let command = if full || (!saved[k].is_empty() && rng.below(4) == 0) {
                let pick = rng.below(saved[k].len());
                let victim = saved[k].swap_remove(pick);
                CaretakerCommand::DeleteMemento {
                    memento_id: victim,
                    at: Utc::now(),
                }
            } else {
                let memento_id = format!("m{round}");
                saved[k].push(memento_id.clone());
                CaretakerCommand::SaveMemento {
                    memento_id,
                    originator_id: originators[k % ORIGINATORS].id.clone(),
                    kind: OriginatorKind::Document,
                    state: json!({ "content": text(&mut rng, 20) }),
                    description: Some(format!("round {round}")),
                    metadata: Map::new(),
                    at: Utc::now(),
                }
            };
            let decision = c.decide(command).await;
            written += decision.events.len();
            uow.push(decision).expect("push");
        }
        queue.send(uow).await.expect("committer");
    }
    drop(queue);
    committer.await.expect("committer");
    written
}

/// Appends at least `events` memento events through the engine; returns the store's head.
async fn fill(engine: &Engine, events: usize, writers: usize) -> u64 {
    let started = Instant::now();
    let tag = short_id();
    let setup = Arc::new(tokio::sync::Mutex::new(()));
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            tokio::spawn(writer(
                engine.clone(),
                format!("{tag}w{w}"),
                events.div_ceil(writers),
                0x9e37_79b9_7f4a_7c15 ^ (w as u64 + 1),
                setup.clone(),
            ))
        })
        .collect();
    let mut written = 0;
    for task in tasks {
        written += task.await.expect("writer");
    }
    let head = engine.store().head_position().await.expect("head");
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "fill: {written} events through the engine into MariaDB in {seconds:.1} s ({:.0}/s), head {head}",
        written as f64 / seconds
    );
    println!(
        "RESULT fill events={written} seconds={seconds:.1} rate={:.0}",
        written as f64 / seconds
    );
    head
}

// ---------------------------------------------------------------------------- read models

async fn open_read_store(path: &Path) -> SqliteReadStore {
    let store = SqliteReadStore::connect(&path.display().to_string(), 2)
        .await
        .expect("open a read store");
    store.migrate().await.expect("migrate the read store");
    store
}

/// Per collection of the memento projection: the document count and a hash of the documents.
async fn digest(read: &dyn ReadStore) -> BTreeMap<String, (usize, u64)> {
    let mut out = BTreeMap::new();
    for collection in MementoProjection.collections() {
        let page = read
            .find(collection, &DocQuery::default())
            .await
            .expect("find every document");
        let mut docs: Vec<String> = page.items.iter().map(Value::to_string).collect();
        docs.sort();
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        docs.hash(&mut hasher);
        out.insert(collection.to_string(), (docs.len(), hasher.finish()));
    }
    out
}

fn total_docs(digest: &BTreeMap<String, (usize, u64)>) -> usize {
    digest.values().map(|(count, _)| count).sum()
}

fn show_digest(digest: &BTreeMap<String, (usize, u64)>) -> String {
    digest
        .iter()
        .map(|(collection, (count, hash))| format!("{collection}={count}:{hash:016x}"))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The read model a clean in-process rebuild (`kernel::replay`) makes of the store.
async fn fresh_replay(engine: &Engine, work: &Path) -> BTreeMap<String, (usize, u64)> {
    let dir = work.join("fresh-replay");
    std::fs::create_dir_all(&dir).expect("dir");
    let read: Arc<dyn ReadStore> = Arc::new(open_read_store(&dir.join("read.db")).await);
    let feed = FeedSettings {
        backend: FeedBackend::Embedded,
        poll_interval: Duration::from_millis(10),
        batch_size: 1000,
        gap_min_wait: Duration::from_millis(50),
        gap_max_wait: Duration::from_secs(60),
    };
    let summary = kernel::replay::replay(
        engine.clone(),
        read.clone(),
        Arc::new(MementoProjection),
        feed,
        |_: &kernel::replay::Progress| {},
    )
    .await
    .expect("fresh replay");
    eprintln!("fresh in-process replay (the reference read model): {summary}");
    digest(&*read).await
}

// ---------------------------------------------------------------------------- processes

struct Process {
    child: Child,
    log: PathBuf,
}

impl Process {
    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the last assignment it logged gave it at least one event partition.
    fn owns_partitions(&self) -> bool {
        let log = self.log_text();
        let last = log.lines().rfind(|line| {
            line.contains("partitions assigned") || line.contains("partitions revoked")
        });
        last.is_some_and(|line| line.contains("partitions assigned") && line.contains("-events/"))
    }

    fn assert_running(&mut self) {
        if let Some(exit) = self.child.try_wait().expect("wait") {
            panic!("{} exited: {exit}\n{}", self.log.display(), self.log_text());
        }
    }

    /// SIGTERM, then waits (up to 30 s) for it to exit.
    async fn terminate(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.child.try_wait().expect("wait").is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ------------------------------------------------------------------------------- relay

/// Publishes the whole store to `world`'s topics with the kernel's relay, and stops it once
/// the broker acknowledged everything up to `head`. Returns the seconds it took.
async fn relay_all(world: &World, engine: &Engine, head: u64) -> f64 {
    let settings = world.settings();
    let checkpoints = kernel::relay::connect_checkpoints(&settings)
        .await
        .expect("relay position store");
    let relay = kernel::relay::Relay::new(
        engine.store().clone(),
        checkpoints,
        settings.kafka.clone(),
        settings.feed.clone(),
        engine.appended(),
    )
    .with_name(&format!("bench-{}", world.prefix));
    let mut position = relay.watch();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let started = Instant::now();
    let task = tokio::spawn(relay.run(async move {
        let _ = stopped.await;
    }));
    tokio::time::timeout(CATCH_UP_TIMEOUT, position.wait_for(|at| *at >= head))
        .await
        .expect("the relay did not publish everything in time")
        .expect("relay position");
    let seconds = started.elapsed().as_secs_f64();
    // The markers for `head` follow the acknowledgement; leave them a moment to go out.
    tokio::time::sleep(kernel::relay::MARKER_INTERVAL * 3).await;
    let _ = stop.send(());
    let _ = task.await;
    seconds
}

/// The settings of a Kafka client for `world`.
fn kafka_settings(world: &World) -> KafkaSettings {
    world.settings().kafka
}

/// Deletes the event topics of a prefix (best effort; tansu may not support it).
async fn drop_topics(brokers: &str, prefix: &str) {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    let settings = KafkaSettings {
        brokers: brokers.to_string(),
        ..KafkaSettings::default()
    };
    let Ok(admin) = kafka::client_config(&settings).create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let topics = kafka::all_event_topics(prefix);
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    match admin.delete_topics(&names, &options).await {
        Ok(results) => {
            let failed = results.iter().filter(|result| result.is_err()).count();
            eprintln!(
                "dropped the topics of prefix {prefix} ({failed} of {} not deleted)",
                names.len()
            );
        }
        Err(err) => eprintln!("topics of prefix {prefix} not deleted: {err}"),
    }
}

// ----------------------------------------------------------------------------- projectors

/// `processes` projector processes in one group on a fresh read store: paused while the relay
/// fills their topics, then resumed; returns events per second from resume to checkpoint ==
/// head, and the read model's digest.
async fn run_projectors(
    options: &Options,
    engine: &Engine,
    world: &World,
    head: u64,
    processes: usize,
) -> (f64, BTreeMap<String, (usize, u64)>) {
    std::fs::create_dir_all(&world.data_dir).expect("data dir");
    let read = open_read_store(&world.settings().read_store_path()).await;
    // Paused before they start: nothing is applied until the topics hold every event.
    kernel::projector::set_paused(&read, PROJECTION_NAME, true)
        .await
        .expect("pause");
    let mut spawned: Vec<Process> = (0..processes)
        .map(|n| {
            let log = world.data_dir.join(format!("projector-{n}.log"));
            let child = world.spawn(
                &options.bin_dir,
                "projector",
                &["--projection", PROJECTION_NAME],
                &log,
            );
            Process { child, log }
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !spawned.iter().all(Process::owns_partitions) {
        for process in &mut spawned {
            process.assert_running();
        }
        assert!(
            Instant::now() < deadline,
            "the projectors never all owned partitions\n{}",
            spawned
                .iter()
                .map(Process::log_text)
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let relay_seconds = relay_all(world, engine, head).await;
    eprintln!(
        "  relay: {head} positions published to prefix {} in {relay_seconds:.1} s ({:.0}/s)",
        world.prefix,
        head as f64 / relay_seconds
    );
    let resumed = Instant::now();
    kernel::projector::set_paused(&read, PROJECTION_NAME, false)
        .await
        .expect("resume");
    let mut first_progress: Option<Duration> = None;
    loop {
        let at = read.checkpoint(PROJECTION_NAME).await.expect("checkpoint");
        if at >= head {
            break;
        }
        if first_progress.is_none() {
            let marks = read
                .find("_watermarks", &DocQuery::default())
                .await
                .expect("watermarks");
            if marks.total > 0 {
                first_progress = Some(resumed.elapsed());
            }
        }
        for process in &mut spawned {
            process.assert_running();
        }
        assert!(
            resumed.elapsed() < CATCH_UP_TIMEOUT,
            "the projectors did not catch up (checkpoint {at} < {head})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let seconds = resumed.elapsed().as_secs_f64();
    let rate = head as f64 / seconds;
    let first = first_progress.unwrap_or_default().as_secs_f64();
    let seeks: usize = spawned
        .iter()
        .map(|p| p.log_text().matches("seeking back").count())
        .sum();
    let rejoins: usize = spawned
        .iter()
        .map(|p| p.log_text().matches("rejoining").count())
        .sum();
    eprintln!(
        "  ours, {processes} projector process(es): {head} events in {seconds:.2} s from resume \
         ({rate:.0}/s); first batch applied {first:.2} s after resume ({:.0}/s from there); \
         seek-backs {seeks}, rejoins {rejoins}",
        head as f64 / (seconds - first).max(1e-3)
    );
    for process in spawned {
        process.terminate().await;
    }
    (rate, digest(&read).await)
}

/// The naive projector: one consumer, one transaction per event.
async fn run_naive(
    engine: &Engine,
    world: &World,
    dir: &Path,
) -> (f64, u64, BTreeMap<String, (usize, u64)>) {
    use rdkafka::TopicPartitionList;
    std::fs::create_dir_all(dir).expect("dir");
    let read: Arc<dyn ReadStore> = Arc::new(open_read_store(&dir.join("read.db")).await);
    let settings = kafka_settings(world);
    let topic = kafka::events_topic(&world.prefix, Context::Memento);
    let partitions = kafka::partition_counts(&settings, std::slice::from_ref(&topic))
        .await
        .expect("partitions")[&topic];
    // The relay is done: every partition ends with a marker at the store's head, and the naive
    // run stops once it has seen one on each (tansu's high watermarks are not reliable for
    // record batches of several records, such as an event and its marker).
    let head = engine.store().head_position().await.expect("head");
    let mut waiting: std::collections::HashSet<i32> = (0..partitions).collect();
    let mut config = kafka::client_config(&settings);
    config
        .set("group.id", format!("{}naive", world.prefix))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = config.create().expect("naive consumer");
    let mut list = TopicPartitionList::new();
    for partition in 0..partitions {
        list.add_partition_offset(&topic, partition, rdkafka::Offset::Beginning)
            .expect("partition list");
    }
    consumer.assign(&list).expect("assign");
    let projection = MementoProjection;
    let mut events = 0u64;
    let mut started: Option<Instant> = None;
    while !waiting.is_empty() {
        let stored = {
            let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
                .await
                .expect("the naive consumer got nothing for 60 s")
                .expect("receive");
            started.get_or_insert_with(Instant::now);
            if let Some(marker) = kafka::header(&message, MARKER_HEADER) {
                if marker.parse::<u64>().is_ok_and(|position| position >= head) {
                    waiting.remove(&message.partition());
                }
                continue;
            }
            kafka::decode_event(message.payload().unwrap_or_default()).expect("decode")
        };
        let projected = kernel::projector::decode_for(engine, &projection, stored)
            .await
            .expect("decode for the projection");
        read.apply_projected(PROJECTION_NAME, vec![projected], 0)
            .await
            .expect("apply one event");
        events += 1;
    }
    let seconds = started.map_or(0.0, |at| at.elapsed().as_secs_f64());
    let rate = events as f64 / seconds.max(1e-3);
    eprintln!(
        "  naive: {events} events in {seconds:.2} s from its first message ({rate:.0}/s), one \
         SQLite transaction per event"
    );
    (rate, events, digest(&*read).await)
}

/// Per-stage timing of the broker path the end-to-end lag crosses: one message at a time
/// (25 ms apart, so the consumer is idle in a fetch when it is produced), with the relay's
/// producer settings; the time to the producer's acknowledgement, and to the consumer's
/// receipt, with librdkafka's default `fetch.wait.max.ms` (500) and with 10 ms.
async fn fetch_latency(options: &Options) {
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use rdkafka::TopicPartitionList;
    let settings = KafkaSettings {
        brokers: options.brokers.clone(),
        partitions: 1,
        ..KafkaSettings::default()
    };
    let prefix = format!("qb{}_", short_id());
    let topic = kafka::events_topic(&prefix, Context::System);
    kafka::ensure_topics(&settings, std::slice::from_ref(&topic))
        .await
        .expect("topic");
    let producer: FutureProducer = kafka::producer_config(&settings)
        .create()
        .expect("producer");
    for wait in [None, Some("10"), Some("5"), Some("2")] {
        let mut config = kafka::client_config(&settings);
        config
            .set("group.id", format!("{prefix}latency"))
            .set("enable.auto.commit", "false");
        if let Some(wait) = wait {
            config.set("fetch.wait.max.ms", wait);
        }
        let consumer: StreamConsumer = config.create().expect("consumer");
        // From the current end, resolved now (not `Offset::End`, which the client resolves
        // later and could place after the first message).
        let (_, high) = consumer
            .fetch_watermarks(&topic, 0, Duration::from_secs(10))
            .expect("watermarks");
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(high))
            .expect("partition list");
        consumer.assign(&list).expect("assign");
        let mut acked = Vec::new();
        let mut received = Vec::new();
        for n in 0..60 {
            let sent = Instant::now();
            let key = format!("{n}");
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload("x"),
                    Duration::from_secs(5),
                )
                .await
                .expect("produce");
            acked.push(sent.elapsed().as_secs_f64() * 1000.0);
            loop {
                let message = tokio::time::timeout(Duration::from_secs(5), consumer.recv())
                    .await
                    .expect("nothing received for 5 s")
                    .expect("receive");
                if message.key() == Some(key.as_bytes()) {
                    break;
                }
            }
            received.push(sent.elapsed().as_secs_f64() * 1000.0);
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        // The first messages wait for the consumer's first fetch; leave them out.
        let (acked, received) = (&acked[10..], &received[10..]);
        let percentile = |values: &[f64], fraction: f64| {
            let mut sorted = values.to_vec();
            sorted.sort_by(f64::total_cmp);
            sorted[((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1]
        };
        let wait = wait.unwrap_or("default (500)");
        eprintln!(
            "  fetch.wait.max.ms {wait}: produce acknowledged p50 {:.1} ms p99 {:.1} ms; \
             received p50 {:.1} ms p99 {:.1} ms",
            percentile(acked, 0.5),
            percentile(acked, 0.99),
            percentile(received, 0.5),
            percentile(received, 0.99)
        );
        println!(
            "RESULT fetch_latency wait={} ack_p50_ms={:.1} received_p50_ms={:.1} received_p99_ms={:.1}",
            wait.split(' ').next().unwrap_or_default(),
            percentile(acked, 0.5),
            percentile(received, 0.5),
            percentile(received, 0.99)
        );
    }
    drop_topics(&options.brokers, &prefix).await;
}

fn median(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    (
        sorted[sorted.len() / 2],
        sorted[0],
        sorted[sorted.len() - 1],
    )
}

async fn live(options: &Options) {
    std::fs::create_dir_all(&options.work).expect("work dir");
    let database = create_database(&options.db_prefix).await;
    let base = World {
        database: database.clone(),
        data_dir: options.work.join("writer"),
        prefix: format!("qb{}_", short_id()),
        brokers: options.brokers.clone(),
    };
    let backends = kernel::wiring::connect_write_side(&base.settings())
        .await
        .expect("write side");
    let engine = backends.engine;
    let head = fill(&engine, options.events, options.writers).await;
    let reference = fresh_replay(&engine, &options.work).await;
    eprintln!(
        "reference read model: {} documents ({})",
        total_docs(&reference),
        show_digest(&reference)
    );

    let mut one = Vec::new();
    let mut two = Vec::new();
    let mut naive = Vec::new();
    let mut all_equal = true;
    let mut prefixes = Vec::new();
    for run in 1..=options.runs {
        eprintln!("run {run}/{}", options.runs);
        let id = short_id();
        let world_a = World {
            data_dir: options.work.join(format!("r{run}-one")),
            prefix: format!("qb{id}a_"),
            ..base.clone()
        };
        let (rate, docs) = run_projectors(options, &engine, &world_a, head, 1).await;
        one.push(rate);
        all_equal &= check("one projector", &docs, &reference);
        prefixes.push(world_a.prefix.clone());
        if run <= options.naive_runs {
            let (rate, _, docs) = run_naive(
                &engine,
                &world_a,
                &options.work.join(format!("r{run}-naive")),
            )
            .await;
            naive.push(rate);
            all_equal &= check("naive", &docs, &reference);
        }
        let world_b = World {
            data_dir: options.work.join(format!("r{run}-two")),
            prefix: format!("qb{id}b_"),
            ..base.clone()
        };
        let (rate, docs) = run_projectors(options, &engine, &world_b, head, 2).await;
        two.push(rate);
        all_equal &= check("two projectors", &docs, &reference);
        prefixes.push(world_b.prefix.clone());
        for prefix in prefixes.drain(..) {
            drop_topics(&options.brokers, &prefix).await;
        }
    }
    let (one_med, one_lo, one_hi) = median(&one);
    let (two_med, two_lo, two_hi) = median(&two);
    let (naive_med, naive_lo, naive_hi) = median(&naive);
    println!(
        "RESULT projection events={head} ours={one_med:.0} ours_min={one_lo:.0} ours_max={one_hi:.0} \
         naive={naive_med:.0} naive_min={naive_lo:.0} naive_max={naive_hi:.0} ratio={:.2} \
         docs={} equal={all_equal}",
        one_med / naive_med,
        total_docs(&reference)
    );
    println!(
        "RESULT scaleout events={head} one={one_med:.0} two={two_med:.0} two_min={two_lo:.0} \
         two_max={two_hi:.0} ratio={:.2} equal={all_equal}",
        two_med / one_med
    );
    drop_database(&database).await;
    if !all_equal {
        eprintln!("a read model differs from the fresh replay");
        std::process::exit(1);
    }
}

/// Whether a read model equals the reference; prints what differs.
fn check(
    what: &str,
    docs: &BTreeMap<String, (usize, u64)>,
    reference: &BTreeMap<String, (usize, u64)>,
) -> bool {
    if docs == reference {
        eprintln!(
            "  {what}: {} documents, equal to the fresh replay",
            total_docs(docs)
        );
        true
    } else {
        eprintln!(
            "  {what}: DIFFERS from the fresh replay: {} vs {}",
            show_digest(docs),
            show_digest(reference)
        );
        false
    }
}

// ------------------------------------------------------------------------------- rebuild

async fn rebuild(options: &Options) {
    std::fs::create_dir_all(&options.work).expect("work dir");
    let database = create_database(&options.db_prefix).await;
    let base = World {
        database: database.clone(),
        data_dir: options.work.join("writer"),
        prefix: format!("qb{}_", short_id()),
        brokers: options.brokers.clone(),
    };
    let backends = kernel::wiring::connect_write_side(&base.settings())
        .await
        .expect("write side");
    let head = fill(&backends.engine, options.events, options.writers).await;
    let mut rates = Vec::new();
    let mut digests = Vec::new();
    for run in 1..=options.runs {
        let world = World {
            data_dir: options.work.join(format!("rebuild-{run}")),
            ..base.clone()
        };
        std::fs::create_dir_all(&world.data_dir).expect("data dir");
        let log = world.data_dir.join("replay.log");
        let started = Instant::now();
        let child = world.spawn(
            &options.bin_dir,
            "replay",
            &["--projection", PROJECTION_NAME, "--quiet"],
            &log,
        );
        let output = tokio::task::spawn_blocking(move || child.wait_with_output())
            .await
            .expect("replay task")
            .expect("replay");
        let wall = started.elapsed().as_secs_f64();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "replay failed: {}\n{stdout}\n{}",
            output.status,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        // `replayed memento: N events in S s (R events/s), up to position P, now generation G`
        let line = stdout
            .lines()
            .find(|line| line.starts_with("replayed "))
            .unwrap_or_else(|| panic!("no summary line in {stdout}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let events: u64 = words[2].parse().expect("events");
        let seconds: f64 = words[5].parse().expect("seconds");
        let rate = events as f64 / seconds;
        assert!(events >= head, "the rebuild saw {events} of {head} events");
        let read = open_read_store(&world.settings().read_store_path()).await;
        let docs = digest(&read).await;
        eprintln!(
            "  rebuild {run}: {events} events in {seconds:.1} s ({rate:.0}/s; {wall:.1} s with \
             process start), {} documents",
            total_docs(&docs)
        );
        rates.push(rate);
        digests.push(docs);
        let _ = std::fs::remove_dir_all(&world.data_dir);
    }
    let same = digests.windows(2).all(|pair| pair[0] == pair[1]);
    let (med, lo, hi) = median(&rates);
    println!(
        "RESULT rebuild events={head} rate={med:.0} min={lo:.0} max={hi:.0} docs={} same={same}",
        total_docs(&digests[0])
    );
    drop_database(&database).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let options = options();
    match options.command.as_str() {
        "live" => live(&options).await,
        "rebuild" => rebuild(&options).await,
        "drop-topics" => drop_topics(&options.brokers, &options.prefix).await,
        "fetch-latency" => fetch_latency(&options).await,
        other => panic!("unknown command {other}: live, rebuild, fetch-latency or drop-topics"),
    }
}
