//! Idempotency keys: a repeated submit returns the first one's job and starts nothing, another input
//! under the same key is refused, keys belong to an identity, and submits racing on one key (on two
//! server instances) make one job. In both modes, and across a `kill -9` of an embedded server.

use futures::future::join_all;
use herald_protocol::{ErrorCode, JobId, ServerMessage};
use redis::AsyncCommands;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{Mode, Process, TestEnv, TestServer, PATIENCE};

/// `POST /jobs` with `body` and, if given, an `Idempotency-Key` (and a bearer token): the status and
/// the JSON answer.
async fn post(
    server: &TestServer,
    key: Option<&str>,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    post_to(&server.http_url("/jobs"), key, token, body).await
}

/// `POST` of `body` to `url`, as [`post`].
async fn post_to(
    url: &str,
    key: Option<&str>,
    token: Option<&str>,
    body: Value,
) -> (StatusCode, Value) {
    let mut request = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string());
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// `GET /jobs/<id>` once the job has ended.
async fn final_job(server: &TestServer, id: &str) -> Value {
    let url = server.http_url(&format!("/jobs/{id}"));
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let response = reqwest::get(&url).await.unwrap();
        let job: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        if matches!(
            job["status"].as_str(),
            Some("done" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} never ended"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Job records in this environment's Redis (distributed mode).
async fn stored_jobs(env: &TestEnv) -> usize {
    let mut redis = env.redis().await;
    let pattern = format!("{}job:*", env.backend.redis_prefix);
    let keys: Vec<String> = redis.keys(pattern).await.unwrap();
    keys.len()
}

/// Jobs that reached a final state on the server's in-process workers (embedded mode).
async fn jobs_done_embedded(server: &TestServer) -> f64 {
    let page = reqwest::get(server.http_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|l| {
            l.strip_prefix("herald_worker_jobs_total{status=\"done\"} ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// How many jobs this Herald ever made: records in Redis, or jobs its embedded workers finished.
async fn jobs_made(env: &TestEnv, server: &TestServer) -> usize {
    match env.mode {
        Mode::Distributed => stored_jobs(env).await,
        Mode::Embedded => jobs_done_embedded(server).await as usize,
    }
}

async fn a_repeated_key_returns_the_same_job_and_computes_once(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let submit = json!({"model": "factorial", "input": {"n": 3000}});
    let (status, first) = post(&server, Some("order-1"), None, submit.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let id = first["id"].as_str().unwrap().to_owned();

    // A repeat while it may still run, and the same input written differently: the same job, 200.
    let (status, again) = post(
        &server,
        Some("order-1"),
        None,
        json!({"input": {"n": 3000}, "model": "factorial"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again, first, "the same body");

    // Over the WebSocket: `accepted` with the same ID and `existing`, then its result.
    let mut client = server.client().await;
    client
        .send_json(json!({"type": "submit", "n": 3000, "key": "order-1", "ref": "r"}))
        .await;
    match client.recv().await {
        ServerMessage::Accepted {
            id: accepted,
            existing,
            tag,
            n,
            ..
        } => {
            assert_eq!(accepted.to_string(), id);
            assert!(existing);
            assert_eq!((tag.as_deref(), n), (Some("r"), Some(3000)));
        }
        other => panic!("expected accepted, got {other:?}"),
    }
    let digits = client.digits_of(JobId::parse_str(&id).unwrap()).await;
    assert_eq!(digits, 9131, "3000! has 9131 digits");

    // Once it has ended: still the same job, and the result at once.
    let job = final_job(&server, &id).await;
    assert_eq!(
        (job["status"].as_str(), job["attempts"].as_u64()),
        (Some("done"), Some(1))
    );
    let (status, late) = post(&server, Some("order-1"), None, submit.clone()).await;
    assert_eq!((status, &late["id"]), (StatusCode::OK, &first["id"]));
    client
        .send_json(json!({"type": "submit", "n": 3000, "key": "order-1"}))
        .await;
    assert!(matches!(
        client.recv().await,
        ServerMessage::Accepted { existing: true, .. }
    ));
    assert_eq!(client.digits_of(JobId::parse_str(&id).unwrap()).await, 9131);

    // Computed once: one job was ever made, and its record counts one attempt.
    assert_eq!(jobs_made(&env, &server).await, 1);

    // Another key is another job.
    let (status, other) = post(&server, Some("order-2"), None, submit).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_ne!(other["id"], first["id"]);
    client.close().await;
}

async fn another_input_under_a_key_gets_409(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let (status, first) = post(&server, Some("k-1"), None, json!({"n": 10})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    for changed in [
        json!({"n": 11}),
        json!({"model": "factorial", "input": {"n": 12}}),
    ] {
        let (status, body) = post(&server, Some("k-1"), None, changed).await;
        assert_eq!(status, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["code"], "conflict");
        assert!(body["message"]
            .as_str()
            .unwrap()
            .contains("idempotency key"));
    }
    let mut client = server.client().await;
    client
        .send_json(json!({"type": "submit", "n": 11, "key": "k-1", "ref": "x"}))
        .await;
    let error = client.expect_error(ErrorCode::Conflict).await;
    assert_eq!(error.tag.as_deref(), Some("x"));
    // The key's job is untouched, and the refused submits made nothing.
    let job = final_job(&server, first["id"].as_str().unwrap()).await;
    assert_eq!(job["output"], "3628800");
    assert_eq!(jobs_made(&env, &server).await, 1);

    // Keys are checked: 1..255 printable ASCII, the header and the body's "key" agreeing.
    for (key, body) in [
        (Some("k".repeat(256)), json!({"n": 10})),
        (Some("k-1".to_owned()), json!({"n": 10, "key": "k-2"})),
        (None, json!({"n": 10, "key": ""})),
    ] {
        let (status, answer) = post(&server, key.as_deref(), None, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert_eq!(answer["code"], "bad_request");
    }
    client
        .send_json(json!({"type": "submit", "n": 10, "key": "tab\there"}))
        .await;
    let error = client.expect_error(ErrorCode::BadRequest).await;
    assert!(error.message.contains("\"key\""), "{}", error.message);
    client.close().await;
}

async fn keys_belong_to_an_identity(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let (alice, bob) = ("alice-token-0123456789", "bob-token-0123456789ab");
    let settings = env.server_settings_with_tokens(&[("alice", alice), ("bob", bob)]);
    let server = env.spawn_app_with(settings).await;
    let (status, of_alice) = post(&server, Some("shared"), Some(alice), json!({"n": 7})).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Bob's key of the same name is his own: a new job, even with another input.
    let (status, of_bob) = post(&server, Some("shared"), Some(bob), json!({"n": 8})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{of_bob}");
    assert_ne!(of_alice["id"], of_bob["id"]);
    let (status, again) = post(&server, Some("shared"), Some(alice), json!({"n": 7})).await;
    assert_eq!((status, &again["id"]), (StatusCode::OK, &of_alice["id"]));
}

async fn submits_racing_on_one_key_make_one_job(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let first = env.spawn_app(1).await;
    // Two server instances sharing Redis and RabbitMQ; in embedded mode, one server and its store.
    let second = match mode {
        Mode::Distributed => Some(env.spawn_server().await),
        Mode::Embedded => None,
    };
    let servers: Vec<&TestServer> = [Some(&first), second.as_ref()]
        .into_iter()
        .flatten()
        .collect();
    let answers = join_all((0..16).map(|i| {
        let server = servers[i % servers.len()];
        post(server, Some("race"), None, json!({"n": 2500}))
    }))
    .await;
    let created = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::ACCEPTED)
        .count();
    assert_eq!(created, 1, "{answers:?}");
    assert!(answers
        .iter()
        .all(|(status, body)| status.is_success() && body["id"] == answers[0].1["id"]));
    let id = answers[0].1["id"].as_str().unwrap();
    let job = final_job(&first, id).await;
    assert_eq!(job["attempts"], 1);
    assert_eq!(jobs_made(&env, &first).await, 1);
}

crate::both_modes!(
    a_repeated_key_returns_the_same_job_and_computes_once,
    another_input_under_a_key_gets_409,
    keys_belong_to_an_identity,
    submits_racing_on_one_key_make_one_job,
);

/// The durable embedded mode keeps its keys: after a `kill -9` and a restart on the same data
/// directory, a repeated key still names its job, and another input under it is still refused.
#[tokio::test]
async fn keys_survive_a_killed_embedded_server() {
    let data = tempfile::tempdir().unwrap();
    let args: Vec<String> = ["--listen", "127.0.0.1:0", "--data-dir"]
        .iter()
        .map(|a| a.to_string())
        .chain([data.path().to_str().unwrap().to_owned()])
        .collect();
    let mut server = Process::start("herald-server", &args);
    let url = format!("http://{}/jobs", server.server_addr().await);
    let (status, first) = post_to(&url, Some("order-7"), None, json!({"n": 12})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    server.kill().await;

    let server = Process::start("herald-server", &args);
    let base = format!("http://{}", server.server_addr().await);
    let url = format!("{base}/jobs");
    let (status, again) = post_to(&url, Some("order-7"), None, json!({"n": 12})).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["id"], first["id"], "the same job, not a new one");
    let (status, changed) = post_to(&url, Some("order-7"), None, json!({"n": 13})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{changed}");
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let id = first["id"].as_str().unwrap();
    loop {
        let text = reqwest::get(format!("{base}/jobs/{id}"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let job: Value = serde_json::from_str(&text).unwrap();
        if job["status"] == "done" {
            assert_eq!(job["output"], "479001600", "12!");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "12! ends: {job}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
