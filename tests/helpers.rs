//! Test fixtures: an isolated Herald environment on the real RabbitMQ and Redis, apps on port 0, and a
//! WebSocket client that speaks the protocol.
//!
//! Each [`TestEnv`] has its own job queue, reply exchange and Redis prefix, so tests run in parallel, and
//! it deletes all of them when dropped, so nothing is left behind. A service that cannot be reached fails
//! the test loudly: nothing here skips.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_protocol::{JobId, Outcome, ServerMessage};
use herald_server::{Application, BrokerStats};
use herald_worker::{BackendArgs, Worker};
use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

/// RabbitMQ of this machine (the test script makes sure it runs).
pub const AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// Redis of this machine.
pub const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Longest wait for any one expected message: a guard against a hung test, not a timing assertion.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// Logs of the apps under test, shown for failing tests (`RUST_LOG=debug` for more).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// One isolated set of RabbitMQ and Redis names.
pub struct TestEnv {
    /// The backend settings every app of this environment uses.
    pub backend: BackendArgs,
}

impl TestEnv {
    /// Fresh names: `herald-test.<random>` in RabbitMQ, `herald-test:<random>:` in Redis.
    pub fn new() -> Self {
        init_logs();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..12];
        Self {
            backend: BackendArgs {
                amqp_url: AMQP_URL.into(),
                redis_url: REDIS_URL.into(),
                queue: format!("herald-test.{tag}.jobs"),
                reply_exchange: format!("herald-test.{tag}.replies"),
                redis_prefix: format!("herald-test:{tag}:"),
                max_n: 1_000_000,
            },
        }
    }

    /// Server settings for this environment, listening on a free port.
    pub fn server_settings(&self) -> herald_server::Settings {
        herald_server::Settings {
            backend: self.backend.clone(),
            listen: "127.0.0.1:0".parse().unwrap(),
            job_ttl_secs: 600,
            max_in_flight: 100,
            socket_buffer_bytes: 16 * 1024 * 1024,
        }
    }

    /// Starts a server with default test settings.
    pub async fn spawn_server(&self) -> TestServer {
        self.spawn_server_with(self.server_settings()).await
    }

    /// Starts a server with `settings`.
    pub async fn spawn_server_with(&self, settings: herald_server::Settings) -> TestServer {
        let app = Application::build(settings)
            .await
            .expect("server starts (are RabbitMQ and Redis up? scripts/test.sh starts them)");
        let addr = app.local_addr();
        let stats = app.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        TestServer {
            addr,
            stats,
            shutdown,
            task: Some(task),
        }
    }

    /// Starts an in-process worker computing `concurrency` jobs at once.
    pub async fn spawn_worker(&self, concurrency: usize) -> TestWorker {
        let settings = herald_worker::Settings {
            backend: self.backend.clone(),
            concurrency: std::num::NonZeroUsize::new(concurrency),
        };
        let worker = Worker::connect(settings).await.expect("worker starts");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        TestWorker {
            shutdown,
            task: Some(task),
        }
    }

    /// A Redis connection for looking at what Herald stored.
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(REDIS_URL)
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .expect("redis reachable")
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestEnv {
    /// Deletes the queue, the exchange and every Redis key of this environment, on a thread of its own
    /// (Drop cannot await, and the test's runtime may be shutting down).
    fn drop(&mut self) {
        let backend = self.backend.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                if let Ok(conn) =
                    lapin::Connection::connect(&backend.amqp_url, Default::default()).await
                {
                    if let Ok(channel) = conn.create_channel().await {
                        let _ = channel
                            .queue_delete(
                                backend.queue.as_str().into(),
                                QueueDeleteOptions::default(),
                            )
                            .await;
                        let _ = channel
                            .exchange_delete(
                                backend.reply_exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                    let _ = conn.close(200, "test cleanup".into()).await;
                }
                if let Ok(client) = redis::Client::open(backend.redis_url.as_str()) {
                    if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                        let keys: Vec<String> = redis::cmd("KEYS")
                            .arg(format!("{}*", backend.redis_prefix))
                            .query_async(&mut conn)
                            .await
                            .unwrap_or_default();
                        if !keys.is_empty() {
                            let _: Result<(), _> =
                                redis::cmd("DEL").arg(&keys).query_async(&mut conn).await;
                        }
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// A running server; stopped when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its reply-queue counters.
    pub stats: Arc<BrokerStats>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), herald_server::ServerError>>>,
}

impl TestServer {
    /// `ws://…/ws` of this server.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// `http://…` of this server.
    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Opens a WebSocket client to this server.
    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    /// Completions received on this instance's reply queue so far.
    pub fn completions_received(&self) -> u64 {
        self.stats
            .completions_received
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the server and waits for it to return.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A running in-process worker; stopped when dropped.
pub struct TestWorker {
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), herald_worker::WorkerError>>>,
}

impl TestWorker {
    /// Stops the worker (letting running jobs finish) and waits for it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
    }
}

impl Drop for TestWorker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A WebSocket client speaking Herald's protocol.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Client {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Self { ws }
    }

    /// Sends one text frame.
    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::text(text)).await.expect("frame sent");
    }

    /// Sends one raw frame.
    pub async fn send_message(&mut self, message: Message) {
        self.ws.send(message).await.expect("frame sent");
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: Value) {
        self.send_text(&value.to_string()).await;
    }

    /// The next frame of any kind, or `None` when the connection ended.
    pub async fn next_message(&mut self) -> Option<Message> {
        tokio::time::timeout(PATIENCE, self.ws.next())
            .await
            .expect("a frame within the patience limit")
            .map(|m| m.expect("frame readable"))
    }

    /// The next text frame as JSON, skipping control frames.
    pub async fn recv_json(&mut self) -> Value {
        loop {
            match self.next_message().await {
                Some(Message::Text(text)) => {
                    return serde_json::from_str(&text).expect("server frames are JSON")
                }
                Some(Message::Ping(_) | Message::Pong(_)) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// The next text frame as a typed message (also checks it matches the protocol's types).
    pub async fn recv(&mut self) -> ServerMessage {
        serde_json::from_value(self.recv_json().await).expect("a valid server message")
    }

    /// Submits `n` and returns the request ID from `accepted`.
    pub async fn submit(&mut self, n: u64) -> JobId {
        self.send_json(serde_json::json!({"type": "submit", "n": n}))
            .await;
        match self.recv().await {
            ServerMessage::Accepted { id, n: echoed, .. } => {
                assert_eq!(echoed, n);
                id
            }
            other => panic!("expected accepted, got {other:?}"),
        }
    }

    /// Sends a resume for `id`.
    pub async fn resume(&mut self, id: JobId) {
        self.send_json(serde_json::json!({"type": "resume", "id": id}))
            .await;
    }

    /// Waits for the next message, which must be the result of `id`, and returns its outcome.
    pub async fn result_of(&mut self, id: JobId) -> Outcome {
        match self.recv().await {
            ServerMessage::Result(result) if result.id == id => result.outcome,
            other => panic!("expected the result of {id}, got {other:?}"),
        }
    }

    /// The output of a done result for `id`.
    pub async fn output_of(&mut self, id: JobId) -> String {
        match self.result_of(id).await {
            Outcome::Done { output, digits, .. } => {
                assert_eq!(digits as usize, output.len());
                output.to_string()
            }
            other => panic!("expected done, got {other:?}"),
        }
    }

    /// Proves that nothing else is waiting on this socket: sends a resume of an unknown ID and checks
    /// that its `not_found` is the very next message.
    pub async fn expect_nothing_pending(&mut self) {
        let probe = JobId::new_v4();
        self.resume(probe).await;
        match self.recv().await {
            ServerMessage::Error(e) if e.id == Some(probe) => {}
            other => panic!("expected only the probe's answer, got {other:?}"),
        }
    }

    /// Closes the socket cleanly.
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// Polls `check` until it is true, with a patience limit (a guard against hanging, not a timing test).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
