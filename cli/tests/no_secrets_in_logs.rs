//! Issue 6: no token ever reaches a log. The real `quintet up` binary runs with debug
//! logging (configured level and `RUST_LOG`), a known JWT secret and master key, and is
//! driven with tokens minted by `quintet token`: authorized REST writes and reads, a bad
//! token, an expired token, a missing token (401), and the WebSocket with the token in
//! `?access_token=` and in `Sec-WebSocket-Protocol`. After SIGTERM its whole stdout and
//! stderr must contain none of the tokens, none of their payloads or signatures, neither
//! the secret nor the master key, and must show the requests (so silence cannot pass).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

const JWT_SECRET: &str = "no-secrets-in-logs-jwt-secret-0123456789abcdef";
/// Base64 of the 32 bytes of [`MASTER_KEY_BYTES`].
const MASTER_KEY: &str = "bm8tc2VjcmV0cy1pbi1sb2dzLW1hc3Rlci1rZXktMzI=";
const MASTER_KEY_BYTES: &str = "no-secrets-in-logs-master-key-32";
const WAIT: Duration = Duration::from_secs(20);

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// One `quintet` installation: a fresh data dir, free ports, debug logging, known secrets.
struct World {
    data_dir: PathBuf,
    write_port: u16,
    read_port: u16,
}

impl World {
    fn new() -> World {
        let unique = format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos()
        );
        let data_dir = std::env::temp_dir().join(format!("quintet-no-secrets-{unique}"));
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let mut world = World {
            data_dir,
            write_port: 0,
            read_port: 0,
        };
        world.pick_ports();
        world
    }

    fn pick_ports(&mut self) {
        self.write_port = free_port();
        self.read_port = free_port();
        while self.read_port == self.write_port {
            self.read_port = free_port();
        }
    }

    /// Starts `quintet up` and waits until both APIs answer. A free port can be taken by
    /// another process before ours binds it, so a failed bind is retried on fresh ports.
    async fn start(&mut self, client: &reqwest::Client) -> Up {
        for _attempt in 0..3 {
            let mut up = self.up();
            let deadline = Instant::now() + WAIT;
            let bound = loop {
                // Printed once both listeners are bound.
                if up.output().contains("quintet up: write API") {
                    break true;
                }
                if up.child.try_wait().expect("wait").is_some() {
                    break false;
                }
                assert!(
                    Instant::now() < deadline,
                    "quintet up never bound its ports\n{}",
                    up.output()
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            };
            if !bound {
                let output = up.output();
                assert!(
                    output.to_ascii_lowercase().contains("address"),
                    "quintet up exited before binding\n{output}"
                );
                self.pick_ports();
                continue;
            }
            wait_healthy(client, &mut up, &self.write_api("/health")).await;
            wait_healthy(client, &mut up, &self.read_api("/health")).await;
            return up;
        }
        panic!("quintet up could not bind free ports in 3 attempts");
    }

    /// `quintet <args>` with this world's environment.
    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_quintet"));
        command
            .args(args)
            .env_remove("QUINTET_CONFIG")
            .env_remove("JWT_SECRET")
            .env("RUST_LOG", "debug")
            .env("QUINTET__LOGGING__LEVEL", "debug")
            .env("QUINTET__LOGGING__FORMAT", "json")
            .env("QUINTET__DATA_DIR", &self.data_dir)
            .env("QUINTET__WRITE_API__PORT", self.write_port.to_string())
            .env("QUINTET__READ_API__PORT", self.read_port.to_string())
            .env("QUINTET__SECURITY__JWT_SECRET", JWT_SECRET)
            .env("QUINTET__SECURITY__LEEWAY", "0s")
            .env("QUINTET__MASTER_KEY", MASTER_KEY)
            .stdin(Stdio::null());
        command
    }

    /// A token from `quintet token`.
    fn mint(&self, role: &str, subject: &str, ttl: &str) -> String {
        let output = self
            .command(&["token", "--role", role, "--subject", subject, "--ttl", ttl])
            .output()
            .expect("run quintet token");
        assert!(
            output.status.success(),
            "quintet token failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let token = String::from_utf8(output.stdout)
            .expect("a UTF-8 token")
            .trim()
            .to_string();
        assert_eq!(token.matches('.').count(), 2, "not a JWT: {token}");
        token
    }

    fn up(&self) -> Up {
        let stdout = self.data_dir.join("up.stdout");
        let stderr = self.data_dir.join("up.stderr");
        let child = self
            .command(&["up"])
            .stdout(std::fs::File::create(&stdout).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start quintet up");
        Up {
            child,
            stdout,
            stderr,
        }
    }

    fn write_api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.write_port)
    }

    fn read_api(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.read_port)
    }

    fn ws(&self) -> String {
        format!("ws://127.0.0.1:{}/ws", self.read_port)
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept {} (process output)", self.data_dir.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// The running `quintet up`, its output captured in files.
struct Up {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Up {
    fn output(&self) -> String {
        let read = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
        format!("{}{}", read(&self.stdout), read(&self.stderr))
    }

    fn assert_running(&mut self) {
        if let Some(exit) = self.child.try_wait().expect("wait") {
            panic!("quintet up exited: {exit}\n{}", self.output());
        }
    }

    /// SIGTERM, then waits (polling) for a clean exit.
    async fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                assert!(
                    exit.success(),
                    "quintet up exits cleanly on SIGTERM: {exit}\n{}",
                    self.output()
                );
                return;
            }
            assert!(
                Instant::now() < deadline,
                "quintet up did not stop on SIGTERM\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_healthy(client: &reqwest::Client, up: &mut Up, url: &str) {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return;
            }
        }
        up.assert_running();
        assert!(
            Instant::now() < deadline,
            "{url} never became healthy\n{}",
            up.output()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn status_of(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("answered");
    let status = response.status().as_u16();
    let body = response.json().await.unwrap_or(Value::Null);
    (status, body)
}

/// Opens the event stream, sends an empty message and waits for the server's answer to it,
/// so the connection really was authenticated and served.
async fn open_stream(request: tokio_tungstenite::tungstenite::handshake::client::Request) {
    let (mut socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("the handshake finishes in time")
        .expect("the authenticated handshake succeeds");
    socket
        .send(Message::text("{}"))
        .await
        .expect("send on the stream");
    let first = tokio::time::timeout(WAIT, socket.next())
        .await
        .expect("a first frame in time")
        .expect("the socket stays open")
        .expect("a frame");
    assert!(first.is_text(), "unexpected first frame {first:?}");
    let _ = socket.close(None).await;
}

/// The handshake with `request` is refused with 401.
async fn stream_refused(request: tokio_tungstenite::tungstenite::handshake::client::Request) {
    let outcome = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .expect("the handshake finishes in time");
    match outcome {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status().as_u16(), 401)
        }
        Err(other) => panic!("expected a 401, got {other}"),
        Ok(_) => panic!("a bad token opened the event stream"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_token_or_secret_reaches_the_logs() {
    let mut world = World::new();
    let writer = world.mint("writer", "log-test-writer", "10m");
    let reader = world.mint("reader", "log-test-reader", "10m");
    let stream_reader = world.mint("reader", "log-test-stream", "10m");
    let short_lived = world.mint("reader", "log-test-expiring", "1s");
    // The writer's token with another signature: well formed, but forged.
    let (unsigned, signature) = writer.rsplit_once('.').expect("a JWT");
    let forged = format!("{unsigned}.{}", "A".repeat(signature.len()));

    let client = reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("http client");
    let mut up = world.start(&client).await;

    // Authorized writes and reads.
    let caretakers_write = world.write_api("/api/v1/mementos/caretakers");
    let caretakers_read = world.read_api("/api/v1/mementos/caretakers");
    let (status, body) = status_of(
        client
            .post(&caretakers_write)
            .bearer_auth(&writer)
            .json(&json!({ "name": "log-test" })),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let position = body["position"].as_u64().expect("a position");
    let (status, body) = status_of(
        client
            .get(format!("{caretakers_read}?min_position={position}"))
            .bearer_auth(&reader),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Refusals: no token, a forged token (read and write), a token under the wrong scheme.
    let (status, _) = status_of(client.get(&caretakers_read)).await;
    assert_eq!(status, 401);
    let (status, _) = status_of(client.get(&caretakers_read).bearer_auth(&forged)).await;
    assert_eq!(status, 401);
    let (status, _) = status_of(
        client
            .post(&caretakers_write)
            .bearer_auth(&forged)
            .json(&json!({ "name": "forged" })),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = status_of(
        client
            .get(&caretakers_read)
            .header("authorization", format!("Token {reader}")),
    )
    .await;
    assert_eq!(status, 401);

    // An expired token: poll until its second has passed (no fixed sleep).
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, body) =
            status_of(client.get(&caretakers_read).bearer_auth(&short_lived)).await;
        if status == 401 {
            break;
        }
        assert_eq!(status, 200, "{body}");
        assert!(Instant::now() < deadline, "the 1s token never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The event stream: token in the query, token in the subprotocol list, and refusals.
    let query = format!("{}?access_token={stream_reader}", world.ws())
        .into_client_request()
        .expect("ws request");
    open_stream(query).await;
    let mut by_protocol = world.ws().into_client_request().expect("ws request");
    by_protocol.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("bearer, {reader}")).expect("header"),
    );
    open_stream(by_protocol).await;
    stream_refused(
        format!("{}?access_token={forged}", world.ws())
            .into_client_request()
            .expect("ws request"),
    )
    .await;
    stream_refused(
        format!("{}?access_token={short_lived}", world.ws())
            .into_client_request()
            .expect("ws request"),
    )
    .await;
    let mut expired_protocol = world.ws().into_client_request().expect("ws request");
    expired_protocol.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_str(&format!("bearer, {short_lived}")).expect("header"),
    );
    stream_refused(expired_protocol).await;

    up.assert_running();
    up.terminate().await;
    let log = up.output();

    // The log is real: the access log shows every kind of request made above (JSON lines,
    // as configured), and debug lines were written.
    assert!(log.len() > 1000, "suspiciously little output:\n{log}");
    for evidence in [
        r#""path":"/api/v1/mementos/caretakers","status":201"#,
        r#""path":"/api/v1/mementos/caretakers","status":200"#,
        r#""path":"/api/v1/mementos/caretakers","status":401"#,
        r#""path":"/ws","status":101"#,
        r#""path":"/ws","status":401"#,
        r#""level":"DEBUG""#,
    ] {
        assert!(
            log.contains(evidence),
            "the log does not show `{evidence}`:\n{log}"
        );
    }
    let access_lines = log.matches(r#""message":"request""#).count();
    assert!(
        access_lines >= 13,
        "only {access_lines} access-log lines for at least 13 requests:\n{log}"
    );

    let mut secrets = vec![
        ("the JWT secret".to_string(), JWT_SECRET.to_string()),
        ("the master key".to_string(), MASTER_KEY.to_string()),
        (
            "the master key bytes".to_string(),
            MASTER_KEY_BYTES.to_string(),
        ),
    ];
    for (name, token) in [
        ("writer", &writer),
        ("reader", &reader),
        ("stream reader", &stream_reader),
        ("expired", &short_lived),
        ("forged", &forged),
    ] {
        let parts: Vec<&str> = token.split('.').collect();
        secrets.push((format!("the {name} token"), token.clone()));
        secrets.push((format!("the {name} token's payload"), parts[1].to_string()));
        secrets.push((
            format!("the {name} token's signature"),
            parts[2].to_string(),
        ));
    }
    for (name, secret) in &secrets {
        if let Some(at) = log.find(secret.as_str()) {
            let line = log[..at].rfind('\n').map_or(0, |start| start + 1);
            let end = log[at..].find('\n').map_or(log.len(), |end| at + end);
            panic!("{name} is in the log:\n{}", &log[line..end]);
        }
    }
}
