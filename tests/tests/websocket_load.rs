//! WebSocket memory stays bounded: 1,000 idle connections and 50 that subscribe to everything
//! and never read, while hundreds of 8 KB events stream. Each flooded connection is dropped
//! (its sends stall, or it falls behind the bounded buffer), the idle ones keep working, and
//! the process's resident memory grows by a bounded amount, not by what the flooded clients
//! failed to take (50 × the event volume).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

use quintet_tests::{spawn_app_with, Backend, TestApp, WAIT};
use web::Role;

type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

const IDLE: usize = 1000;
const FLOODED: usize = 50;
const EVENTS: usize = 700;
/// Bytes of each event's state: 700 of them are ~5.5 MB per subscriber, more than the kernel
/// buffers a stalled loopback connection (about 4 MB), so the flooded sends really stall.
const STATE_BYTES: usize = 7900;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| {
            rest.trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .map_or(0, |kb| kb * 1024)
}

/// Connects with a small receive buffer (so a client that does not read stalls early).
async fn connect(app: &TestApp, token: &str) -> Socket {
    let mut request = app.ws_url().into_client_request().expect("ws request");
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("bearer, {token}")).expect("header"),
    );
    let addr = app.read_url.trim_start_matches("http://").to_string();
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("tcp connect");
    let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .expect("handshake in time")
        .expect("handshake");
    socket
}

async fn subscribe(socket: &mut Socket, subscription: Value) {
    socket
        .send(Message::text(
            json!({ "subscribe": subscription }).to_string(),
        ))
        .await
        .expect("subscribe sent");
    loop {
        let frame = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("an answer in time")
            .expect("open")
            .expect("frame");
        if let Message::Text(text) = frame {
            let value: Value = serde_json::from_str(&text).expect("json");
            if value["type"] == "subscribed" {
                return;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_bounded_with_idle_and_flooded_connections() {
    let app = spawn_app_with(Backend::Embedded, |settings| {
        settings.websocket.buffer = 256;
        settings.websocket.send_timeout = Duration::from_millis(500);
        settings.memento.max_memento_size = 16384;
    })
    .await;
    let token = app.token(Role::Reader);
    // One caretaker per writer: the writers never contend for one aggregate.
    for w in 0..4 {
        app.create_caretaker(&format!("load{w}")).await;
    }

    let mut idle = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut socket = connect(&app, &token).await;
        subscribe(
            &mut socket,
            json!({ "aggregate_id": "nothing-happens-here" }),
        )
        .await;
        idle.push(socket);
    }
    let mut flooded = Vec::with_capacity(FLOODED);
    for _ in 0..FLOODED {
        let mut socket = connect(&app, &token).await;
        subscribe(&mut socket, json!({})).await;
        flooded.push(socket);
    }
    let baseline = rss_bytes();
    let flood_started = std::time::Instant::now();

    // Sample the resident size while the flood runs.
    let peak = Arc::new(AtomicU64::new(baseline));
    let sampling = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    };
    let state = json!({ "content": "x".repeat(STATE_BYTES) });
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let client = app.client.clone();
            let url = app.api(quintet_tests::Side::Write, &format!("/mementos/caretakers/load{w}/mementos"));
            let token = app.token(Role::Writer);
            let state = state.clone();
            tokio::spawn(async move {
                for i in (w..EVENTS).step_by(4) {
                    let response = client
                        .post(&url)
                        .bearer_auth(&token)
                        .json(&json!({ "id": format!("m{i}"), "originator_id": "o", "type": "document", "state": state }))
                        .send()
                        .await
                        .expect("write");
                    let status = response.status();
                    let body = response.text().await.unwrap_or_default();
                    assert!(status.is_success(), "write {i}: {status} {body}");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }

    // Every flooded connection ends, as the server counts it: closed as a slow consumer
    // (4008) or dropped when a send stalled.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let metrics = app
            .client
            .get(app.url(quintet_tests::Side::Read, "/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text");
        let ended: f64 = [
            "quintet_ws_stalled_total",
            "quintet_ws_slow_consumers_total",
        ]
        .iter()
        .filter_map(|name| {
            metrics
                .lines()
                .find(|line| line.starts_with(name))
                .and_then(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        })
        .sum();
        if ended >= FLOODED as f64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {ended} of {FLOODED} flooded connections were ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(flooded);
    sampling.abort();
    let growth = peak.load(Ordering::Relaxed).saturating_sub(baseline);
    eprintln!(
        "baseline {} MB, peak growth {} MB, flood phase {:?}",
        baseline >> 20,
        growth >> 20,
        flood_started.elapsed()
    );
    let volume = (FLOODED * EVENTS * STATE_BYTES) as u64;
    assert!(
        growth < 160 << 20,
        "resident memory grew by {} MB during the flood (the flooded clients left {} MB untaken)",
        growth >> 20,
        volume >> 20
    );

    // The idle connections still work.
    for socket in idle.iter_mut().step_by(50) {
        subscribe(socket, json!({ "aggregate_id": "still-nothing" })).await;
    }
    let health = app
        .client
        .get(app.url(quintet_tests::Side::Read, "/health"))
        .send()
        .await
        .expect("health");
    assert!(health.status().is_success());
}
