//! Webhooks: a job that ends is POSTed to the URL its submit named, signed as Standard Webhooks says
//! (checked by a receiver in Python, an implementation independent of Herald's), retried with the same
//! `webhook-id` after a failure, also after the server restarts; and addresses of this machine and
//! its private networks are refused, at the submit or when a name resolves to one.

use std::process::Stdio;

use herald_protocol::{ErrorCode, ServerMessage};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use crate::helpers::{eventually, Mode, Process, TestEnv, AMQP_URL, PATIENCE, REDIS_URL};

/// The signing key of these tests (32 bytes).
const SECRET: &str = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=";

/// tests/webhook_receiver.py, running: what it received, one JSON object per delivery.
struct Receiver {
    port: u16,
    deliveries: mpsc::UnboundedReceiver<Value>,
    _child: tokio::process::Child,
}

impl Receiver {
    /// A receiver answering `statuses` in turn (the last one repeats).
    async fn start(statuses: &str) -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/webhook_receiver.py");
        let mut child = tokio::process::Command::new("python3")
            .args([script, SECRET, statuses])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the receiver");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = lines
            .next_line()
            .await
            .unwrap()
            .expect("the receiver's port");
        let port = serde_json::from_str::<Value>(&first).unwrap()["port"]
            .as_u64()
            .unwrap() as u16;
        let (sender, deliveries) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if sender.send(serde_json::from_str(&line).unwrap()).is_err() {
                    return;
                }
            }
        });
        Self {
            port,
            deliveries,
            _child: child,
        }
    }

    /// Its URL, by address or by `host`.
    fn url(&self, host: &str) -> String {
        format!("http://{host}:{}/hook", self.port)
    }

    /// The next delivery, whose signature must verify.
    async fn next(&mut self) -> Value {
        let delivery = tokio::time::timeout(PATIENCE, self.deliveries.recv())
            .await
            .expect("a delivery arrives")
            .expect("the receiver runs");
        assert_eq!(
            delivery["valid"], true,
            "the signature verifies: {delivery}"
        );
        delivery
    }
}

/// Server settings with webhooks on (to loopback: the receiver's), retrying after `delays`.
fn settings_with_webhooks(env: &TestEnv, delays: &str) -> herald_server::Settings {
    let mut settings = env.server_settings();
    settings.webhook_secret = Some(SECRET.into());
    settings.webhook_allow_private = true;
    settings.webhook_retry_delays = delays.into();
    settings
}

/// The value of a sample of `GET /metrics` at `base` (0 when absent).
async fn sample(base: &str, name: &str) -> f64 {
    let page = reqwest::get(format!("{base}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or(0.0)
}

fn deliveries(outcome: &str) -> String {
    format!("herald_webhook_deliveries_total{{outcome=\"{outcome}\"}}")
}

async fn post(base: &str, body: Value) -> (StatusCode, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}/jobs"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The next delivery is the retry of `first` (job `id`), answered 200, with the same body, and the
/// server at `base` counts it delivered.
async fn the_retry_is_delivered(receiver: &mut Receiver, base: &str, id: &str, first: &Value) {
    let second = receiver.next().await;
    assert_eq!(
        (second["id"].as_str(), second["answered"].as_u64()),
        (Some(id), Some(200))
    );
    assert_eq!(second["body"], first["body"]);
    eventually("the delivery to be counted", || async {
        sample(base, &deliveries("delivered")).await == 1.0
    })
    .await;
}

async fn a_failed_delivery_is_retried_with_the_same_id(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let mut receiver = Receiver::start("500,200").await;
    let server = env.spawn_app_with(settings_with_webhooks(&env, "1s")).await;
    let base = server.http_url("");
    let (status, accepted) = post(
        &base,
        json!({"n": 20, "webhook": receiver.url("127.0.0.1")}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["id"].as_str().unwrap();

    let first = receiver.next().await;
    assert_eq!(first["answered"], 500);
    assert_eq!(first["id"], id, "webhook-id is the job's ID");
    let timestamp: u64 = first["timestamp"].as_str().unwrap().parse().unwrap();
    let now = herald_protocol::unix_ms() / 1000;
    assert!(
        timestamp <= now && now - timestamp < 3600,
        "webhook-timestamp is seconds now"
    );
    let body = &first["body"];
    assert_eq!(
        (
            body["id"].as_str(),
            body["status"].as_str(),
            body["output"].as_str()
        ),
        (Some(id), Some("done"), Some("2432902008176640000"))
    );
    // The same document as GET /jobs/<id>.
    let shown = reqwest::get(server.http_url(&format!("/jobs/{id}")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(body, &shown);

    the_retry_is_delivered(&mut receiver, &base, id, &first).await;
    assert_eq!(sample(&base, &deliveries("failed")).await, 1.0);
    // Delivered: nothing more comes.
    assert!(receiver.deliveries.try_recv().is_err());
}

async fn a_cancelled_job_and_a_websocket_submit_are_delivered(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let mut receiver = Receiver::start("200").await;
    // Distributed: no worker, so the job stays queued until it is cancelled. Embedded: the job runs
    // at once (small factorials need no compute slot), and ends done.
    let server = env
        .spawn_server_with(settings_with_webhooks(&env, "1s"))
        .await;
    let mut client = server.client().await;
    client
        .send_json(json!({"type": "submit", "n": 30, "webhook": receiver.url("127.0.0.1")}))
        .await;
    let id = match client.recv().await {
        ServerMessage::Accepted { id, .. } => id,
        other => panic!("expected accepted, got {other:?}"),
    };
    let expected = match mode {
        Mode::Distributed => {
            let response = reqwest::Client::new()
                .delete(server.http_url(&format!("/jobs/{id}")))
                .send()
                .await
                .unwrap();
            assert_eq!(
                response.status(),
                StatusCode::OK,
                "a queued job is cancelled at once"
            );
            "cancelled"
        }
        Mode::Embedded => "done",
    };
    let delivery = receiver.next().await;
    assert_eq!(delivery["id"], id.to_string());
    assert_eq!(delivery["body"]["status"], expected);
    client.close().await;
}

async fn private_addresses_are_refused(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let mut receiver = Receiver::start("200").await;
    let mut settings = settings_with_webhooks(&env, "1s");
    settings.webhook_allow_private = false;
    let server = env.spawn_app_with(settings).await;
    let base = server.http_url("");
    let mut client = server.client().await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://10.0.0.1/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:9/hook",
        "ftp://example.com/hook",
    ] {
        let (status, body) = post(&base, json!({"n": 5, "webhook": url})).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{url}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("webhook"),
            "{body}"
        );
        client
            .send_json(json!({"type": "submit", "n": 5, "webhook": url}))
            .await;
        let error = client.expect_error(ErrorCode::BadRequest).await;
        assert!(
            error.message.contains("\"webhook\""),
            "{url}: {}",
            error.message
        );
    }
    // A name is checked when it is resolved: `localhost` resolves to loopback, and nothing is sent
    // to the receiver listening there.
    let (status, _) = post(&base, json!({"n": 6, "webhook": receiver.url("localhost")})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    eventually("the refusal to be counted", || async {
        sample(&base, &deliveries("refused")).await == 1.0
    })
    .await;
    assert_eq!(sample(&base, &deliveries("delivered")).await, 0.0);
    assert!(
        receiver.deliveries.try_recv().is_err(),
        "nothing reached the receiver"
    );
    client.close().await;

    // A server without --webhook-secret takes no webhook.
    let plain = env.spawn_server().await;
    let (status, body) = post(
        &plain.http_url(""),
        json!({"n": 5, "webhook": "https://example.com/hook"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("--webhook-secret"));
}

crate::both_modes!(
    a_failed_delivery_is_retried_with_the_same_id,
    a_cancelled_job_and_a_websocket_submit_are_delivered,
    private_addresses_are_refused,
);

/// A server process's flags for webhooks to the test's receiver, retried after 2 s.
const WEBHOOK_FLAGS: [&str; 7] = [
    "--listen",
    "127.0.0.1:0",
    "--webhook-secret",
    SECRET,
    "--webhook-allow-private",
    "--webhook-retry-delays",
    "2s",
];

/// A server process with webhooks on, in `env`.
fn start_server_process(env: &TestEnv) -> Process {
    let mut args = env.backend_flags(AMQP_URL, REDIS_URL);
    args.extend(WEBHOOK_FLAGS.map(String::from));
    Process::start("herald-server", &args)
}

/// A server from `start` fails a delivery (500) and is killed once the retry is scheduled; the next
/// server from `start` sends the retry, with the same `webhook-id` and body, and it is delivered.
async fn a_retry_is_sent_after_a_kill(start: impl Fn() -> Process) {
    let mut receiver = Receiver::start("500,200").await;
    let mut server = start();
    let base = format!("http://{}", server.server_addr().await);
    let (status, accepted) = post(
        &base,
        json!({"n": 25, "webhook": receiver.url("127.0.0.1")}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    let id = accepted["id"].as_str().unwrap();
    let first = receiver.next().await;
    assert_eq!(
        (first["id"].as_str(), first["answered"].as_u64()),
        (Some(id), Some(500))
    );
    // Once the retry is scheduled, the server dies without a word.
    eventually("the retry to be scheduled", || async {
        sample(&base, &deliveries("failed")).await == 1.0
    })
    .await;
    server.kill().await;

    let replacement = start();
    let base = format!("http://{}", replacement.server_addr().await);
    the_retry_is_delivered(&mut receiver, &base, id, &first).await;
}

/// A retry pending in Redis is sent by the next server once the one that failed it is killed.
#[tokio::test]
async fn a_pending_retry_survives_a_restart_of_the_server() {
    let env = TestEnv::new();
    let _worker = env.spawn_worker(1).await;
    a_retry_is_sent_after_a_kill(|| start_server_process(&env)).await;
    let mut redis = env.redis().await;
    let pending: usize = redis
        .zcard(format!("{}webhooks", env.backend.redis_prefix))
        .await
        .unwrap();
    assert_eq!(pending, 0, "nothing left to deliver");
}

/// The durable embedded mode keeps a pending retry: a server killed after a failed attempt, restarted
/// on its data directory, sends the retry.
#[tokio::test]
async fn a_pending_retry_survives_a_killed_embedded_server() {
    let data = tempfile::tempdir().unwrap();
    let mut args: Vec<String> = WEBHOOK_FLAGS.map(String::from).to_vec();
    args.extend(["--data-dir".into(), data.path().to_str().unwrap().into()]);
    a_retry_is_sent_after_a_kill(|| Process::start("herald-server", &args)).await;
}
