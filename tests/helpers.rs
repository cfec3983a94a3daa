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
use herald_engine::BackendArgs;
use herald_protocol::{JobId, Outcome, ServerMessage};
use herald_server::{Application, Stats};
use herald_worker::Worker;
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

/// A command line running the example model `file` of `examples/python/` with `args`.
pub fn example_model(file: &str, args: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/python")
        .join(file);
    format!("python3 {} {args}", path.display())
        .trim_end()
        .to_owned()
}

/// Logs of the apps under test, shown for failing tests (`RUST_LOG=debug` for more).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// What a test runs Herald on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Servers and workers around the real RabbitMQ and Redis.
    Distributed,
    /// One server with its in-process queue, store and workers.
    Embedded,
}

/// Runs a test function (`async fn name(mode: Mode)`) once per mode, as `name::distributed` and
/// `name::embedded`: the same test, two backends, so the modes cannot drift apart.
#[macro_export]
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test]
                async fn distributed() {
                    super::$name($crate::helpers::Mode::Distributed).await
                }

                #[tokio::test]
                async fn embedded() {
                    super::$name($crate::helpers::Mode::Embedded).await
                }
            }
        )*
    };
}

/// One isolated set of RabbitMQ and Redis names.
pub struct TestEnv {
    /// The backend settings every app of this environment uses.
    pub backend: BackendArgs,
    /// Distributed or embedded.
    pub mode: Mode,
    /// Models whose queues this environment may have used besides the factorial's (removed with it).
    models: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// Where embedded servers of this environment keep their jobs: a directory of its own for each
    /// (a data directory serves one server at a time), removed with the environment.
    data: tempfile::TempDir,
}

impl TestEnv {
    /// Fresh names: `herald-test.<random>` in RabbitMQ, `herald-test:<random>:` in Redis.
    pub fn new() -> Self {
        Self::in_mode(Mode::Distributed)
    }

    /// A fresh environment in `mode`.
    pub fn in_mode(mode: Mode) -> Self {
        init_logs();
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let tag = &tag[..12];
        Self {
            mode,
            models: Default::default(),
            data: tempfile::Builder::new()
                .prefix("herald-tests-data-")
                .tempdir()
                .expect("a temporary directory"),
            backend: BackendArgs {
                amqp_url: Some(AMQP_URL.into()),
                redis_url: Some(REDIS_URL.into()),
                redis_sentinel: None,
                redis_master_name: None,
                redis_replica_acks: 0,
                quorum_initial_group_size: 3,
                queue: format!("herald-test.{tag}.{{model}}"),
                reply_exchange: format!("herald-test.{tag}.replies"),
                redis_prefix: format!("herald-test:{tag}:"),
                max_n: 1_000_000,
                max_queue_length: 100_000,
            },
        }
    }

    /// The job queue of `model` in this environment (removed with it).
    pub fn job_queue(&self, model: &str) -> String {
        self.models.lock().unwrap().insert(model.to_owned());
        self.backend.job_queue(model)
    }

    /// The factorial's job queue.
    pub fn factorial_queue(&self) -> String {
        self.job_queue(herald_protocol::FACTORIAL)
    }

    /// Server settings for this environment, listening on a free port (embedded: computing two jobs
    /// at once, and keeping them in a data directory of their own, as the binary does by default).
    pub fn server_settings(&self) -> herald_server::Settings {
        let mut backend = self.backend.clone();
        let mut data_dir = None;
        if self.mode == Mode::Embedded {
            backend.amqp_url = None;
            backend.redis_url = None;
            data_dir = Some(self.fresh_data_dir());
        }
        herald_server::Settings {
            data_dir,
            in_memory: false,
            backend,
            concurrency: std::num::NonZeroUsize::new(2),
            job_time_limit_secs: 300,
            models: Default::default(),
            max_attempts: 3,
            max_input_bytes: herald_protocol::model::DEFAULT_MAX_INPUT_BYTES,
            log: Default::default(),
            listen: "127.0.0.1:0".parse().unwrap(),
            job_ttl_secs: 600,
            max_in_flight: 100,
            socket_buffer_bytes: 16 * 1024 * 1024,
            max_buffered_bytes: None,
            // Authentication off, and no limits per client: every test client is 127.0.0.1.
            auth_tokens: None,
            auth_tokens_file: None,
            jwt_secret: None,
            allowed_origins: Vec::new(),
            allowed_hosts: Vec::new(),
            submit_rate: 0,
            submit_burst: 1,
            max_sockets_per_client: 0,
            max_queued_per_client: 0,
            max_jobs_per_client: 0,
            max_stored_bytes_per_client: 0,
            // The defaults: a test that needs other values sets them.
            max_connections: None,
            header_timeout_secs: 10,
            request_timeout_secs: 30,
            ping_interval_secs: 20,
            ping_timeout_secs: 20,
            // Webhooks off; tests/webhooks.rs turns them on.
            webhook_secret: None,
            webhook_allow_private: false,
            webhook_retry_delays: "5s,5m,30m,2h,5h,10h,10h".into(),
            webhook_timeout_secs: 10,
            webhook_max_body_bytes: 1024 * 1024,
        }
    }

    /// A data directory no server has used yet (inside this environment's).
    pub fn fresh_data_dir(&self) -> std::path::PathBuf {
        self.data
            .path()
            .join(uuid::Uuid::new_v4().simple().to_string())
    }

    /// A whole Herald serving `models` (`--model` values), computing `concurrency` jobs at once: one
    /// embedded server, or a server and a worker (distributed), each model's queue removed with this
    /// environment. Returns once the server takes jobs for every model.
    pub async fn spawn_app_with_models(
        &self,
        models: &[String],
        concurrency: usize,
        time_limit_secs: u64,
    ) -> TestServer {
        for spec in models {
            self.job_queue(spec.split('=').next().unwrap_or(spec));
        }
        let mut settings = self.server_settings();
        settings.concurrency = std::num::NonZeroUsize::new(concurrency);
        settings.job_time_limit_secs = time_limit_secs;
        let server = if self.mode == Mode::Embedded {
            settings.models.models = models.to_vec();
            self.spawn_server_with(settings).await
        } else {
            let mut server = self.spawn_server_with(settings).await;
            let mut worker = self.worker_settings(concurrency);
            worker.models.models = models.to_vec();
            worker.job_time_limit_secs = time_limit_secs;
            server.workers.push(self.spawn_worker_with(worker).await);
            server
        };
        for spec in models {
            server
                .until_model_served(spec.split('=').next().unwrap_or(spec))
                .await;
        }
        server
    }

    /// Starts a server with default test settings.
    pub async fn spawn_server(&self) -> TestServer {
        self.spawn_server_with(self.server_settings()).await
    }

    /// A whole Herald computing `concurrency` jobs at once: a server and a worker (distributed), or
    /// one embedded server.
    pub async fn spawn_app(&self, concurrency: usize) -> TestServer {
        let mut settings = self.server_settings();
        settings.concurrency = std::num::NonZeroUsize::new(concurrency);
        self.spawn_app_with(settings).await
    }

    /// [`TestEnv::spawn_app`] with server `settings` (their `concurrency` is the worker's).
    pub async fn spawn_app_with(&self, settings: herald_server::Settings) -> TestServer {
        let concurrency = settings.concurrency();
        let mut server = self.spawn_server_with(settings).await;
        if self.mode == Mode::Distributed {
            server.workers.push(self.spawn_worker(concurrency).await);
        }
        server
    }

    /// Starts a server with `settings`.
    pub async fn spawn_server_with(&self, settings: herald_server::Settings) -> TestServer {
        let app = Application::build(settings)
            .await
            .expect("server starts (are RabbitMQ and Redis up? scripts/test.sh starts them)");
        let addr = app.local_addr();
        let instance = app.instance().to_owned();
        let stats = app.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app.run(shutdown.clone()));
        TestServer {
            addr,
            instance,
            stats,
            shutdown,
            task: Some(task),
            workers: Vec::new(),
        }
    }

    /// Worker settings for this environment.
    pub fn worker_settings(&self, concurrency: usize) -> herald_worker::Settings {
        herald_worker::Settings {
            backend: self.backend.clone(),
            models: Default::default(),
            concurrency: std::num::NonZeroUsize::new(concurrency),
            prefetch: None,
            max_attempts: 3,
            job_time_limit_secs: 300,
            shutdown_grace_secs: 30,
            metrics_listen: None,
            log: Default::default(),
        }
    }

    /// Starts an in-process worker computing `concurrency` jobs at once.
    pub async fn spawn_worker(&self, concurrency: usize) -> TestWorker {
        self.spawn_worker_with(self.worker_settings(concurrency))
            .await
    }

    /// Starts an in-process worker with `settings`.
    pub async fn spawn_worker_with(&self, settings: herald_worker::Settings) -> TestWorker {
        assert_eq!(
            self.mode,
            Mode::Distributed,
            "embedded mode has no worker processes: use spawn_app"
        );
        // Each model's queue is removed with this environment, however the worker was given it.
        for spec in &settings.models.models {
            self.job_queue(spec.split('=').next().unwrap_or(spec));
        }
        let worker = Worker::connect(settings).await.expect("worker starts");
        let stats = worker.stats();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(worker.run(shutdown.clone()));
        TestWorker {
            stats,
            shutdown,
            task: Some(task),
        }
    }

    /// A Redis connection for looking at what Herald stored (on the primary, with Sentinel).
    pub async fn redis(&self) -> redis::aio::MultiplexedConnection {
        redis_primary(&self.backend).await.expect("redis reachable")
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
        if self.mode == Mode::Embedded {
            return;
        }
        let backend = self.backend.clone();
        let mut models = std::mem::take(&mut *self.models.lock().unwrap());
        models.insert(herald_protocol::FACTORIAL.to_owned());
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                // The first node that answers (on a cluster, one may be stopped).
                for url in backend.amqp_urls() {
                    // Bounded: a proxy whose accept loop no longer runs takes the connection and
                    // never answers.
                    let connect = lapin::Connection::connect(url, Default::default());
                    let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), connect).await
                    else {
                        continue;
                    };
                    if let Ok(channel) = conn.create_channel().await {
                        let queues = models.iter().flat_map(|model| {
                            let queue = backend.job_queue(model);
                            [herald_engine::topology::dead_letter_queue(&queue), queue]
                        });
                        for queue in queues {
                            let _ = channel
                                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                                .await;
                        }
                        let _ = channel
                            .exchange_delete(
                                backend.reply_exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                    let _ = conn.close(200, "test cleanup".into()).await;
                    break;
                }
                if let Ok(mut conn) = redis_primary(&backend).await {
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
            });
        });
        let _ = cleanup.join();
    }
}

/// A connection to the Redis of `backend`: its `--redis-url`, or the primary its Sentinels name.
pub async fn redis_primary(
    backend: &BackendArgs,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let sentinels = backend.sentinels().expect("valid sentinels");
    let client = if sentinels.is_empty() {
        redis::Client::open(backend.redis_url())?
    } else {
        let urls: Vec<String> = sentinels
            .iter()
            .map(|(host, port)| format!("redis://{host}:{port}"))
            .collect();
        let mut sentinel = redis::sentinel::Sentinel::build(urls)?;
        sentinel
            .async_master_for(backend.redis_master_name.as_deref().unwrap(), None)
            .await?
    };
    client.get_multiplexed_async_connection().await
}

/// A running server; stopped when dropped.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its routing key on the reply exchange.
    pub instance: String,
    /// Its reply-queue counters.
    pub stats: Arc<Stats>,
    shutdown: CancellationToken,
    task: Option<JoinHandle<Result<(), herald_server::ServerError>>>,
    /// Workers started with it by [`TestEnv::spawn_app`] (distributed mode).
    pub workers: Vec<TestWorker>,
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

    /// Waits until `GET /models` lists `model` (a worker's announcement reached the server).
    pub async fn until_model_served(&self, model: &str) {
        let url = self.http_url("/models");
        eventually(&format!("the model {model} to be served"), || {
            let url = url.clone();
            async move {
                let Ok(response) = reqwest::get(&url).await else {
                    return false;
                };
                let text = response.text().await.unwrap_or_default();
                let body: Value = serde_json::from_str(&text).unwrap_or_default();
                body["models"].as_array().is_some_and(|models| {
                    models
                        .iter()
                        .any(|m| m["name"] == model && m["workers"].as_u64().is_none_or(|w| w > 0))
                })
            }
        })
        .await;
    }

    /// Completions received on this instance's reply queue so far.
    pub fn completions_received(&self) -> u64 {
        self.stats
            .completions_received
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops the server and waits for it to return, then stops the workers started with it.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await.unwrap().unwrap();
        }
        for worker in self.workers.drain(..) {
            worker.stop().await;
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
    /// What it computed and reused.
    pub stats: Arc<herald_engine::cache::ComputeStats>,
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
    /// `progress` messages skipped by [`Client::recv`].
    pub progress_seen: usize,
}

impl Client {
    /// Connects to `url`.
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connects");
        Self::from_stream(ws)
    }

    /// Wraps an already connected stream.
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Self {
        Self {
            ws,
            progress_seen: 0,
        }
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

    /// The next text frame as a typed message (also checks it matches the protocol's types),
    /// skipping `progress` (counted in [`Client::progress_seen`]): most tests are about the rest.
    pub async fn recv(&mut self) -> ServerMessage {
        loop {
            match self.recv_any().await {
                ServerMessage::Progress { .. } => self.progress_seen += 1,
                other => return other,
            }
        }
    }

    /// The next text frame as a typed message, `progress` included.
    pub async fn recv_any(&mut self) -> ServerMessage {
        serde_json::from_value(self.recv_json().await).expect("a valid server message")
    }

    /// Submits `input` to `model` and returns the request ID from `accepted`.
    pub async fn submit_to(&mut self, model: &str, input: Value) -> JobId {
        self.send_json(serde_json::json!({"type": "submit", "model": model, "input": input}))
            .await;
        match self.recv().await {
            ServerMessage::Accepted {
                id, model: echoed, ..
            } => {
                assert_eq!(echoed, model);
                id
            }
            other => panic!("expected accepted, got {other:?}"),
        }
    }

    /// Submits `n` and returns the request ID from `accepted`.
    pub async fn submit(&mut self, n: u64) -> JobId {
        self.send_json(serde_json::json!({"type": "submit", "n": n}))
            .await;
        match self.recv().await {
            ServerMessage::Accepted {
                id,
                n: echoed,
                model,
                ..
            } => {
                assert_eq!(
                    (model.as_str(), echoed),
                    (herald_protocol::FACTORIAL, Some(n))
                );
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

    /// The output of a done result for `id`: a string output's text (the factorial's digits, whose
    /// count must match `digits`), any other output's JSON text.
    pub async fn output_of(&mut self, id: JobId) -> String {
        let outcome = self.result_of(id).await;
        let text = outcome
            .output_text()
            .unwrap_or_else(|| panic!("expected done, got {outcome:?}"));
        if let Outcome::Done {
            digits: Some(digits),
            ..
        } = outcome
        {
            assert_eq!(digits as usize, text.len());
        }
        text
    }

    /// The outputs of done results for all of `ids`, in whatever order they come (a worker with
    /// prefetch finishes jobs out of order).
    pub async fn outputs_of(&mut self, ids: &[JobId]) -> std::collections::HashMap<JobId, String> {
        let mut outputs = std::collections::HashMap::new();
        while outputs.len() < ids.len() {
            match self.recv().await {
                ServerMessage::Result(result) if ids.contains(&result.id) => {
                    match result.outcome.output_text() {
                        Some(output) => assert!(outputs.insert(result.id, output).is_none()),
                        None => panic!("expected done, got {:?}", result.outcome),
                    }
                }
                other => panic!("expected a result of {ids:?}, got {other:?}"),
            }
        }
        outputs
    }

    /// Expects the next message to be an `error` with `code` and a message, and returns it.
    pub async fn expect_error(
        &mut self,
        code: herald_protocol::ErrorCode,
    ) -> herald_protocol::ErrorMessage {
        match self.recv().await {
            ServerMessage::Error(error) => {
                assert_eq!(error.code, code, "{error:?}");
                assert!(!error.message.is_empty());
                error
            }
            other => panic!("expected an error {code:?}, got {other:?}"),
        }
    }

    /// Expects the next message to be a done result of `id`, and returns its digit count.
    pub async fn digits_of(&mut self, id: JobId) -> u64 {
        match self.result_of(id).await {
            Outcome::Done {
                digits: Some(digits),
                ..
            } => digits,
            other => panic!("expected a done factorial, got {other:?}"),
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

/// Builds the workspace's binaries once per test run (same profile as the tests), so that tests can run
/// real processes and kill them.
pub(crate) fn binary(name: &str) -> std::path::PathBuf {
    static BUILT: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = std::process::Command::new(cargo)
            .args([
                "build",
                "-p",
                "herald-worker",
                "-p",
                "herald-server",
                "-p",
                "herald-loadgen",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cargo runs");
        assert!(status.success(), "building the binaries failed");
    });
    // target/<profile>/deps/integration-<hash> → target/<profile>/<name>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target dir");
    let path = dir.join(name);
    assert!(path.exists(), "{} is missing", path.display());
    path
}

/// Where process logs go: one file per process, kept for reading after a failure.
fn log_file(name: &str) -> (std::fs::File, std::path::PathBuf) {
    let dir = std::env::temp_dir().join("herald-tests");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}-{}.log", uuid::Uuid::new_v4().simple()));
    (std::fs::File::create(&path).unwrap(), path)
}

/// A real `herald-worker` or `herald-server` process; killed when dropped.
pub struct Process {
    child: tokio::process::Child,
    /// Its log file.
    pub log: std::path::PathBuf,
    /// The data directory given to an embedded server that was not given one (removed when dropped):
    /// servers of tests running at once would otherwise share `herald-data` in the working directory.
    _data: Option<tempfile::TempDir>,
}

impl Process {
    /// Starts binary `name` with `args`.
    pub fn start(name: &str, args: &[String]) -> Self {
        Self::start_with_env(name, args, &[])
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("process still running")
    }

    /// Sends SIGKILL and reaps the process.
    pub async fn kill(&mut self) {
        self.child.kill().await.expect("kill");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("process still running") as i32;
        // SAFETY: kill(2) with a PID we own and a valid signal number has no memory effects.
        let rc = unsafe { libc::kill(pid, libc::SIGTERM) };
        assert_eq!(rc, 0, "SIGTERM delivered");
    }

    /// Waits for the process to exit (within the patience limit) and returns its exit status.
    pub async fn wait(&mut self) -> std::process::ExitStatus {
        tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("process did not exit; log: {}", self.log.display()))
            .unwrap()
    }

    /// The process's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl TestEnv {
    /// The command-line flags that put a binary into this environment.
    pub fn backend_flags(&self, amqp_url: &str, redis_url: &str) -> Vec<String> {
        let b = &self.backend;
        [
            ("--amqp-url", amqp_url.to_owned()),
            ("--redis-url", redis_url.to_owned()),
            ("--queue", b.queue.clone()),
            ("--reply-exchange", b.reply_exchange.clone()),
            ("--redis-prefix", b.redis_prefix.clone()),
            ("--max-n", b.max_n.to_string()),
            ("--max-queue-length", b.max_queue_length.to_string()),
        ]
        .into_iter()
        .flat_map(|(flag, value)| [flag.to_owned(), value])
        .collect()
    }

    /// Starts a real worker process with extra `args`.
    pub fn start_worker_process(&self, args: &[&str]) -> Process {
        let mut all = self.backend_flags(AMQP_URL, REDIS_URL);
        all.extend(args.iter().map(|a| a.to_string()));
        for pair in args.windows(2).filter(|pair| pair[0] == "--model") {
            self.job_queue(pair[1].split('=').next().unwrap_or(pair[1]));
        }
        Process::start("herald-worker", &all)
    }
}

/// A TCP proxy on loopback between Herald and a service, which a test can cut and restore.
pub struct Proxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    cut: Arc<std::sync::atomic::AtomicBool>,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    /// Cancelled by [`Proxy::stall`] for the connections open at that moment.
    silence: Arc<std::sync::Mutex<CancellationToken>>,
    task: JoinHandle<()>,
}

impl Proxy {
    /// Forwards 127.0.0.1:<random port> to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = Arc::new(std::sync::Mutex::new(Vec::<tokio::task::AbortHandle>::new()));
        let silence = Arc::new(std::sync::Mutex::new(CancellationToken::new()));
        let (cut_flag, live, silencer) = (cut.clone(), connections.clone(), silence.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if cut_flag.load(std::sync::atomic::Ordering::SeqCst) {
                    // Refused while cut: the connection closes at once.
                    drop(inbound);
                    continue;
                }
                let silenced = silencer.lock().unwrap().clone();
                let pipe = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                            // Stalled: both ends stay open and nothing more goes through, like a
                            // peer gone without a reset, until the proxy drops the connection.
                            () = silenced.cancelled() => std::future::pending().await,
                        }
                    }
                });
                live.lock().unwrap().push(pipe.abort_handle());
            }
        });
        Self {
            addr,
            cut,
            connections,
            silence,
            task,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for pipe in self.connections.lock().unwrap().drain(..) {
            pipe.abort();
        }
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }

    /// Silences every open connection without closing it; new connections work.
    pub fn stall(&self) {
        let mut silence = self.silence.lock().unwrap();
        silence.cancel();
        *silence = CancellationToken::new();
    }

    /// `amqp://…` through this proxy.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@{}/%2f", self.addr)
    }

    /// `redis://…` through this proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
        self.cut();
    }
}

impl TestEnv {
    /// One field of a job's record in Redis.
    pub async fn record_field(&self, id: &uuid::Uuid, field: &str) -> Option<String> {
        let mut redis = self.redis().await;
        redis::cmd("HGET")
            .arg(self.backend.keys().job(id))
            .arg(field)
            .query_async(&mut redis)
            .await
            .unwrap()
    }

    /// How many times workers started a job, from its record.
    pub async fn attempts(&self, id: &uuid::Uuid) -> u32 {
        self.record_field(id, "attempts")
            .await
            .expect("the record counts attempts")
            .parse()
            .expect("attempts is a number")
    }

    /// Waits until a job's record has `field` = `value`.
    pub async fn until_field(&self, id: &uuid::Uuid, field: &str, value: &str) {
        eventually(&format!("{field} = {value}"), || async {
            self.record_field(id, field).await.as_deref() == Some(value)
        })
        .await;
    }

    /// An AMQP channel on the real broker, for publishing or inspecting directly.
    pub async fn amqp_channel(&self) -> (lapin::Connection, lapin::Channel) {
        let connection = lapin::Connection::connect(AMQP_URL, Default::default())
            .await
            .expect("rabbitmq reachable");
        let channel = connection.create_channel().await.unwrap();
        (connection, channel)
    }

    /// Messages ready in the factorial's dead-letter queue.
    pub async fn dead_letters(&self) -> u32 {
        self.dead_letters_of(herald_protocol::FACTORIAL).await
    }

    /// Messages ready in the dead-letter queue of `model`.
    pub async fn dead_letters_of(&self, model: &str) -> u32 {
        let (connection, channel) = self.amqp_channel().await;
        let queue = channel
            .queue_declare(
                herald_engine::topology::dead_letter_queue(&self.job_queue(model))
                    .as_str()
                    .into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .expect("the dead-letter queue exists");
        let _ = connection.close(200, "".into()).await;
        queue.message_count()
    }

    /// Publishes a raw message to the factorial's job queue, as any AMQP client could.
    pub async fn publish_raw(&self, body: &[u8]) {
        let (connection, channel) = self.amqp_channel().await;
        channel
            .basic_publish(
                "".into(),
                self.factorial_queue().as_str().into(),
                Default::default(),
                body,
                Default::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(200, "".into()).await;
    }
}

impl TestServer {
    /// Waits until `GET /readyz` answers `status`.
    pub async fn until_readyz(&self, status: u16) {
        eventually(&format!("readyz to answer {status}"), || async {
            self.readyz().await == status
        })
        .await;
    }

    /// The status code of `GET /readyz`.
    pub async fn readyz(&self) -> u16 {
        reqwest::get(self.http_url("/readyz"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0)
    }
}

impl TestEnv {
    /// Server settings with authentication on, by static tokens: (identity, token) pairs.
    pub fn server_settings_with_tokens(&self, tokens: &[(&str, &str)]) -> herald_server::Settings {
        let list = tokens
            .iter()
            .map(|(identity, token)| format!("{identity}:{token}"))
            .collect::<Vec<_>>()
            .join(",");
        herald_server::Settings {
            auth_tokens: Some(list.into()),
            ..self.server_settings()
        }
    }
}

/// Opens a WebSocket to `url` with extra request headers. On success: the client and the value of the
/// `Sec-WebSocket-Protocol` the server chose; on a refused upgrade: its HTTP status.
pub async fn try_connect(
    url: &str,
    headers: &[(&str, &str)],
) -> Result<(Client, Option<String>), u16> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
    let mut request = url.into_client_request().expect("a valid ws:// URL");
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, response)) => {
            let protocol = response
                .headers()
                .get("sec-websocket-protocol")
                .map(|v| v.to_str().unwrap().to_owned());
            Ok((Client::from_stream(ws), protocol))
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
    }
}

impl Process {
    /// Starts binary `name` with `args` and extra environment variables (besides `RUST_LOG=info`, which
    /// `env` may override).
    pub fn start_with_env(name: &str, args: &[String], env: &[(&str, &str)]) -> Self {
        let (file, log) = log_file(name);
        let chosen = |flag: &str, var: &str| {
            args.iter()
                .any(|a| a == flag || a.starts_with(&format!("{flag}=")))
                || env.iter().any(|(key, _)| *key == var)
        };
        let data = (name == "herald-server"
            && !chosen("--amqp-url", "HERALD_AMQP_URL")
            && !chosen("--data-dir", "HERALD_DATA_DIR")
            && !chosen("--in-memory", "HERALD_IN_MEMORY"))
        .then(|| {
            tempfile::Builder::new()
                .prefix("herald-tests-data-")
                .tempdir()
                .expect("a temporary directory")
        });
        let mut command = tokio::process::Command::new(binary(name));
        if let Some(data) = &data {
            command.env("HERALD_DATA_DIR", data.path());
        }
        let child = command
            .args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .expect("process starts");
        Self {
            child,
            log,
            _data: data,
        }
    }

    /// Waits for the address a server process logs when it is ready.
    pub async fn server_addr(&self) -> String {
        let mut addr = None;
        eventually("the server to log its address", || {
            addr = self.log_text().lines().find_map(|l| {
                l.split("listening on http://")
                    .nth(1)
                    .map(|a| a.trim().to_owned())
            });
            std::future::ready(addr.is_some())
        })
        .await;
        addr.unwrap()
    }
}

/// A Redis server of the test's own, on a free loopback port with its own data directory: for what
/// cannot be done to the machine's Redis (restarting it, replicas, other settings). Killed and its
/// data removed when dropped.
pub struct RedisProcess {
    /// Where it listens.
    pub port: u16,
    args: Vec<String>,
    dir: std::path::PathBuf,
    child: Option<tokio::process::Child>,
}

impl RedisProcess {
    /// Starts `redis-server` with `extra` settings (such as `--appendonly yes`).
    pub async fn start(extra: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!(
            "herald-tests-redis-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut args: Vec<String> = [
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--dir",
            dir.to_str().unwrap(),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        args.extend(extra.iter().map(|a| a.to_string()));
        let mut redis = Self {
            port,
            args,
            dir,
            child: None,
        };
        redis.launch().await;
        redis
    }

    async fn launch(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args(&self.args)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server runs (scripts/test.sh installs it)");
        self.child = Some(child);
        let url = self.url();
        eventually("the test's redis to answer", || async {
            let Ok(client) = redis::Client::open(url.as_str()) else {
                return false;
            };
            match client.get_multiplexed_async_connection().await {
                Ok(mut conn) => redis::cmd("PING")
                    .query_async::<String>(&mut conn)
                    .await
                    .is_ok(),
                Err(_) => false,
            }
        })
        .await;
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops it as an operator's restart does (SIGTERM: it writes what it keeps, then exits) and
    /// starts it again on the same port and data directory.
    pub async fn restart(&mut self) {
        let mut child = self.child.take().expect("running");
        let pid = child.id().expect("running") as i32;
        // SAFETY: kill(2) with a PID we own and a valid signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        tokio::time::timeout(PATIENCE, child.wait())
            .await
            .expect("redis stops on SIGTERM")
            .unwrap();
        self.launch().await;
    }

    /// Sends `signal` (SIGSTOP, SIGCONT…) to the running server.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().and_then(|c| c.id()).expect("running") as i32;
        // SAFETY: kill(2) with a PID we own and a valid signal number has no memory effects.
        assert_eq!(unsafe { libc::kill(pid, signal) }, 0);
    }

    /// SIGKILL.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill");
        }
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The value of the sample `name` (with its labels, as written) on the metrics page of the server at
/// `addr` (`host:port`), read on a connection of its own that is closed after (tests that count
/// connections see none left open).
pub async fn metric(addr: impl std::fmt::Display, name: &str) -> Option<f64> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let page = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics answer")
        .text()
        .await
        .unwrap();
    sample(&page, name)
}

/// The value of the sample `name` (with its labels, as written) in a Prometheus text page; `None`
/// when the page has no such sample. A sample whose value is not a number fails the test.
pub fn sample(page: &str, name: &str) -> Option<f64> {
    let value = page
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} has the value {value:?}, not a number")),
    )
}
