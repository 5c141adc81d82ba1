//! HTTP load generator for `benches/compare`: `POST`s one create-product command per request
//! (a fresh id each time, the same JSON body for Quintet and for the mysql-es baseline).
//!
//! - `--mode closed` (default): `--concurrency` tasks, each sending its next request when the
//!   previous one has answered, for `--seconds` per run after a `--warmup`; prints the
//!   median, min and max requests/s of `--runs` runs.
//! - `--mode open --rate R`: requests are started at a fixed rate, whatever the answers do,
//!   and each latency is measured from the moment the request was due (so a stalled server
//!   is not hidden by a stalled client); prints p50/p99/max of every run and their median.
//! - `--mode lag --rate R --read-url U`: open loop as above; after each write's answer the
//!   product is read back from the read API with `?min_position=` (the server waits until
//!   its projection has reached that position), and the latency is accepted → visible.
//!
//! The generator's own CPU time (and that of every `--pid`, e.g. the server and mysqld) is
//! read from `/proc/<pid>/stat` around the measured runs and printed as a share of the
//! wall time, because all of them share the machine's cores.
//!
//! The last line is `RESULT key=value ...` for the script to parse.

// mimalloc: see the workspace Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

#[derive(Clone)]
struct Options {
    url: String,
    token: Option<String>,
    mode: String,
    concurrency: usize,
    rate: f64,
    seconds: f64,
    warmup: f64,
    runs: usize,
    pids: Vec<u32>,
    /// `--mode lag`: where the created product is read back with `?min_position=`.
    read_url: String,
    read_token: Option<String>,
    /// `--omit-id true`: let the server generate the id (skips the id's pattern check).
    omit_id: bool,
}

fn options() -> Options {
    let mut options = Options {
        url: "http://127.0.0.1:8080/api/v1/products".into(),
        token: None,
        mode: "closed".into(),
        concurrency: 32,
        rate: 0.0,
        seconds: 10.0,
        warmup: 3.0,
        runs: 3,
        pids: Vec::new(),
        read_url: "http://127.0.0.1:8081/api/v1/products".into(),
        read_token: None,
        omit_id: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    for pair in args.chunks(2) {
        let [flag, value] = pair else {
            panic!("flags come in pairs: --flag value");
        };
        match flag.as_str() {
            "--url" => options.url = value.clone(),
            "--token" => options.token = Some(value.clone()).filter(|token| !token.is_empty()),
            "--mode" => options.mode = value.clone(),
            "--concurrency" => options.concurrency = value.parse().expect("--concurrency N"),
            "--rate" => options.rate = value.parse().expect("--rate R"),
            "--seconds" => options.seconds = value.parse().expect("--seconds S"),
            "--warmup" => options.warmup = value.parse().expect("--warmup S"),
            "--runs" => options.runs = value.parse().expect("--runs N"),
            "--pid" => options.pids.push(value.parse().expect("--pid PID")),
            "--read-url" => options.read_url = value.clone(),
            "--omit-id" => options.omit_id = value.parse().expect("--omit-id true|false"),
            "--read-token" => {
                options.read_token = Some(value.clone()).filter(|token| !token.is_empty())
            }
            other => panic!("unknown flag {other}"),
        }
    }
    options
}

/// CPU seconds (user + system) a process has used so far, from `/proc/<pid>/stat`.
fn cpu_seconds(pid: Option<u32>) -> f64 {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".into(),
    };
    let Ok(stat) = std::fs::read_to_string(path) else {
        return f64::NAN;
    };
    // Fields after the `(comm)`, which may itself hold spaces: state is field 3, utime 14.
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    let ticks = |index: usize| {
        fields
            .get(index)
            .and_then(|field| field.parse::<f64>().ok())
    };
    // utime and stime are fields 14 and 15, i.e. indexes 11 and 12 after `(comm)`.
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / CLOCK_TICKS_PER_SECOND,
        _ => f64::NAN,
    }
}

/// `sysconf(_SC_CLK_TCK)`: 100 on every Linux this runs on (reading it needs libc).
const CLOCK_TICKS_PER_SECOND: f64 = 100.0;

fn body(run: &str, n: u64, omit_id: bool) -> String {
    if omit_id {
        return r#"{"name":"Organic cotton t-shirt","category":"apparel","price":19.99,"stock":1000}"#
            .into();
    }
    format!(
        r#"{{"id":"bench-{run}-{n}","name":"Organic cotton t-shirt","category":"apparel","price":19.99,"stock":1000}}"#
    )
}

struct Sender {
    client: reqwest::Client,
    options: Options,
    run: String,
    next: AtomicU64,
    errors: AtomicU64,
    /// Every 2xx, warm-up included (for per-command server counters).
    succeeded: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl Sender {
    /// Sends one command; true when it was answered with a 2xx.
    async fn send(&self) -> bool {
        self.send_for_position().await.is_some()
    }

    /// Sends one command; on a 2xx, the created id and the `X-Quintet-Position` it answered.
    async fn send_for_position(&self) -> Option<(u64, Option<u64>)> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut request = self
            .client
            .post(&self.options.url)
            .header("content-type", "application/json")
            .body(body(&self.run, n, self.options.omit_id));
        if let Some(token) = &self.options.token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                let position = response
                    .headers()
                    .get("x-quintet-position")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| value.parse().ok());
                let _ = response.bytes().await;
                self.succeeded.fetch_add(1, Ordering::Relaxed);
                Some((n, position))
            }
            Ok(response) => {
                let status = response.status();
                let text = response.text().await.unwrap_or_default();
                self.fail(format!(
                    "{status}: {}",
                    text.chars().take(300).collect::<String>()
                ));
                None
            }
            Err(err) => {
                self.fail(err.to_string());
                None
            }
        }
    }

    /// Sends one command, then reads the product back from the read API with
    /// `?min_position=` (the server waits until its projection has that position). Returns
    /// the time from the write's answer to the read's 200: accepted to visible.
    async fn send_and_read_back(&self) -> Option<Duration> {
        let (n, position) = self.send_for_position().await?;
        let accepted = Instant::now();
        let Some(position) = position else {
            self.fail("the write answered without X-Quintet-Position".into());
            return None;
        };
        let url = format!(
            "{}/bench-{}-{n}?min_position={position}",
            self.options.read_url, self.run
        );
        let mut request = self.client.get(url);
        if let Some(token) = &self.options.read_token {
            request = request.bearer_auth(token);
        }
        match request.send().await {
            Ok(response) if response.status().is_success() => {
                let _ = response.bytes().await;
                Some(accepted.elapsed())
            }
            Ok(response) => {
                self.fail(format!("read back: {}", response.status()));
                None
            }
            Err(err) => {
                self.fail(format!("read back: {err}"));
                None
            }
        }
    }

    fn fail(&self, text: String) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.first_error
            .lock()
            .expect("not poisoned")
            .get_or_insert(text);
    }
}

/// Closed loop for `seconds`: returns (successful requests/s, latencies in µs).
async fn closed_loop(sender: Arc<Sender>, seconds: f64) -> (f64, Vec<u32>) {
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..sender.options.concurrency {
        let sender = sender.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut ok = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let sent = Instant::now();
                if sender.send().await {
                    ok += 1;
                    latencies.push(sent.elapsed().as_micros() as u32);
                }
            }
            (ok, latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut ok = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (done, mut more) = task.await.expect("load task");
        ok += done;
        latencies.append(&mut more);
    }
    (ok as f64 / started.elapsed().as_secs_f64(), latencies)
}

/// Open loop at `rate` requests/s for `seconds`: latencies in µs from each request's due time
/// (or, with `lag`, from each write's answer until the read API shows it).
async fn open_loop(sender: Arc<Sender>, rate: f64, seconds: f64, lag: bool) -> (f64, Vec<u32>) {
    let total = (rate * seconds) as u64;
    let interval = Duration::from_secs_f64(1.0 / rate);
    let started = tokio::time::Instant::now();
    let mut tasks = Vec::with_capacity(total as usize);
    for i in 0..total {
        let due = started + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        let sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            if lag {
                let visible = sender.send_and_read_back().await;
                (
                    visible.is_some(),
                    visible.unwrap_or_default().as_micros() as u32,
                )
            } else {
                let ok = sender.send().await;
                (ok, due.elapsed().as_micros() as u32)
            }
        }));
    }
    let mut latencies = Vec::with_capacity(tasks.len());
    let mut ok = 0u64;
    for task in tasks {
        let (done, latency) = task.await.expect("load task");
        if done {
            ok += 1;
            latencies.push(latency);
        }
    }
    (ok as f64 / started.elapsed().as_secs_f64(), latencies)
}

fn percentile(sorted: &[u32], fraction: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index] as f64 / 1000.0
}

fn median(values: &[f64]) -> (f64, f64, f64) {
    let mut values = values.to_vec();
    values.sort_by(f64::total_cmp);
    (
        values[values.len() / 2],
        values[0],
        values[values.len() - 1],
    )
}

#[tokio::main]
async fn main() {
    let options = options();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(options.concurrency.max(64))
        .tcp_nodelay(true)
        .build()
        .expect("HTTP client");
    let sender = Arc::new(Sender {
        client,
        options: options.clone(),
        run: Uuid::now_v7().simple().to_string(),
        next: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        succeeded: AtomicU64::new(0),
        first_error: Default::default(),
    });
    let open = options.mode == "open" || options.mode == "lag";
    let lag = options.mode == "lag";
    let run_once = |seconds: f64| {
        let sender = sender.clone();
        async move {
            if open {
                open_loop(sender, options.rate, seconds, lag).await
            } else {
                closed_loop(sender, seconds).await
            }
        }
    };

    run_once(options.warmup).await;
    let warmup_errors = sender.errors.swap(0, Ordering::Relaxed);
    if warmup_errors > 0 {
        eprintln!(
            "load: {warmup_errors} errors during warm-up, first: {}",
            sender
                .first_error
                .lock()
                .expect("not poisoned")
                .take()
                .unwrap_or_default()
        );
    }

    let cpu_before: Vec<f64> = std::iter::once(cpu_seconds(None))
        .chain(options.pids.iter().map(|&pid| cpu_seconds(Some(pid))))
        .collect();
    let wall = Instant::now();
    let mut rates = Vec::new();
    let mut p50s = Vec::new();
    let mut p99s = Vec::new();
    for run in 1..=options.runs {
        let (rate, mut latencies) = run_once(options.seconds).await;
        latencies.sort_unstable();
        let (p50, p99, max) = (
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.99),
            percentile(&latencies, 1.0),
        );
        println!(
            "run {run}: {rate:.0} ok/s, latency p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms ({} ok)",
            latencies.len()
        );
        rates.push(rate);
        p50s.push(p50);
        p99s.push(p99);
    }
    let wall = wall.elapsed().as_secs_f64();
    let cpu_share: Vec<String> = cpu_before
        .iter()
        .enumerate()
        .map(|(index, before)| {
            let pid = index.checked_sub(1).map(|i| options.pids[i]);
            format!("{:.0}", (cpu_seconds(pid) - before) / wall * 100.0)
        })
        .collect();
    let errors = sender.errors.load(Ordering::Relaxed);
    if errors > 0 {
        eprintln!(
            "load: {errors} errors, first: {}",
            sender
                .first_error
                .lock()
                .expect("not poisoned")
                .take()
                .unwrap_or_default()
        );
    }
    let (rate, rate_lo, rate_hi) = median(&rates);
    let (p50, _, _) = median(&p50s);
    let (p99, p99_lo, p99_hi) = median(&p99s);
    println!(
        "RESULT rate={rate:.0} rate_min={rate_lo:.0} rate_max={rate_hi:.0} p50_ms={p50:.2} \
         p99_ms={p99:.2} p99_min_ms={p99_lo:.2} p99_max_ms={p99_hi:.2} errors={errors} \
         client_cpu_pct={} pids_cpu_pct={} total_ok={}",
        cpu_share[0],
        if cpu_share.len() > 1 {
            cpu_share[1..].join(",")
        } else {
            "-".into()
        },
        sender.succeeded.load(Ordering::Relaxed)
    );
}
