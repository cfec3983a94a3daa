//! Models behind Herald: programs in Python speaking the line protocol (docs/models.md), run by a real
//! worker against the real RabbitMQ and Redis and by an embedded server, through the WebSocket and the
//! jobs API: results, progress, cancel, the time limit, programs that crash, print garbage or hang,
//! inputs the model refuses, two models side by side, and models nobody serves.

use std::time::Duration;

use herald_protocol::{ErrorCode, JobId, Outcome, ServerMessage};
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::helpers::{eventually, example_model, Client, Mode, TestEnv, TestServer};

/// The misbehaving example model, as `faulty`.
fn faulty() -> String {
    format!("faulty={}", example_model("faulty.py", ""))
}

/// The slow example model, as `sentiment`.
fn sentiment() -> String {
    format!("sentiment={}", example_model("slow_sentiment.py", ""))
}

/// The output of a done result, as JSON.
fn output(outcome: &Outcome) -> Value {
    match outcome {
        Outcome::Done { output, digits, .. } => {
            assert_eq!(*digits, None, "only the factorial counts digits");
            serde_json::from_str(output.get()).unwrap()
        }
        other => panic!("expected done, got {other:?}"),
    }
}

/// The error of a failed result.
fn failure(outcome: &Outcome) -> String {
    match outcome {
        Outcome::Failed { error } => error.clone(),
        other => panic!("expected failed, got {other:?}"),
    }
}

/// Waits for the first progress of `id` and returns its phase.
async fn first_progress(client: &mut Client, id: JobId) -> Option<String> {
    match client.recv_any().await {
        ServerMessage::Progress {
            id: of,
            model,
            phase,
            ..
        } if of == id => {
            assert_eq!(model, "faulty");
            phase
        }
        other => panic!("expected progress of {id}, got {other:?}"),
    }
}

/// The PID a faulty model reports in its progress phase (`pid N`).
fn pid_of(phase: Option<String>) -> i32 {
    phase
        .as_deref()
        .and_then(|p| p.strip_prefix("pid "))
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("a phase naming the program's PID, got {phase:?}"))
}

/// Whether process `pid` still exists.
fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    unsafe { libc::kill(pid, 0) == 0 }
}

async fn a_program_answers_with_its_output(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app_with_models(&[faulty()], 1, 30).await;
    let mut client = server.client().await;
    let id = client
        .submit_to(
            "faulty",
            json!({"text": "hi", "big": 12345678901234567890u64}),
        )
        .await;
    let result = output(&client.result_of(id).await);
    assert_eq!(
        result["input"],
        json!({"text": "hi", "big": 12345678901234567890u64})
    );
    assert!(result["pid"].as_i64().is_some());
    let models: Value = serde_json::from_str(
        &reqwest::get(server.http_url("/models"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    )
    .unwrap();
    let names: Vec<&str> = models["models"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    assert!(names.contains(&"faulty"), "{models}");
}

async fn progress_from_the_program_reaches_the_socket(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app_with_models(&[sentiment()], 1, 30).await;
    let mut client = server.client().await;
    let id = client
        .submit_to(
            "sentiment",
            json!({"text": "what a lovely day", "seconds": 1.5}),
        )
        .await;
    let mut fractions = Vec::new();
    let outcome = loop {
        match client.recv_any().await {
            ServerMessage::Progress {
                id: of,
                model,
                fraction,
                ..
            } if of == id => {
                assert_eq!(model, "sentiment");
                fractions.push(fraction);
            }
            ServerMessage::Result(result) if result.id == id => {
                assert_eq!(result.model, "sentiment");
                break result.outcome;
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(!fractions.is_empty(), "a 1.5 s job reports progress");
    assert!(fractions.windows(2).all(|w| w[0] < w[1]), "{fractions:?}");
    assert_eq!(output(&outcome)["label"], "positive");
}

async fn a_running_job_is_cancelled_its_program_stopped_and_the_next_job_served(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app_with_models(&[faulty()], 1, 60).await;
    let mut client = server.client().await;
    let id = client.submit_to("faulty", json!({"do": "sleep"})).await;
    let pid = pid_of(first_progress(&mut client, id).await);
    assert!(alive(pid));
    client.send_json(json!({"type": "cancel", "id": id})).await;
    loop {
        match client.recv_any().await {
            ServerMessage::Progress { .. } => {}
            ServerMessage::Result(result) if result.id == id => {
                assert!(matches!(result.outcome, Outcome::Cancelled {}));
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    eventually("the cancelled job's program to be stopped", || async move {
        !alive(pid)
    })
    .await;
    // The one slot serves the next job, with a fresh program.
    let next = client.submit_to("faulty", json!({"do": "echo"})).await;
    let answer = output(&client.result_of(next).await);
    assert_ne!(answer["pid"].as_i64(), Some(i64::from(pid)));
}

async fn the_time_limit_stops_a_program_that_hangs(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app_with_models(&[faulty()], 1, 1).await;
    let mut client = server.client().await;
    let id = client.submit_to("faulty", json!({"do": "hang"})).await;
    let error = failure(&client.result_of(id).await);
    assert!(error.contains("time limit exceeded (1 s)"), "{error}");
    let next = client.submit_to("faulty", json!({"do": "echo"})).await;
    output(&client.result_of(next).await);
}

async fn garbage_and_refusals_fail_the_job_with_a_clear_error(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app_with_models(&[faulty()], 1, 30).await;
    let mut client = server.client().await;
    let garbage = client.submit_to("faulty", json!({"do": "garbage"})).await;
    let error = failure(&client.result_of(garbage).await);
    assert!(error.contains("not JSON"), "{error}");
    let refused = client
        .submit_to("faulty", json!({"do": "error", "message": "no such text"}))
        .await;
    assert_eq!(failure(&client.result_of(refused).await), "no such text");
    // Neither counts as an attempt to retry: each ran once.
    for id in [garbage, refused] {
        let job = job_view(&server, id).await;
        assert_eq!(job["attempts"], 1, "{job}");
        assert_eq!(job["status"], "failed", "{job}");
    }
    let next = client.submit_to("faulty", json!({"do": "echo"})).await;
    output(&client.result_of(next).await);
}

async fn a_program_that_crashes_on_one_input_fails_that_job_after_its_attempts(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app_with_models(&[faulty()], 1, 30).await;
    let mut client = server.client().await;
    let crash = client.submit_to("faulty", json!({"do": "crash"})).await;
    // Other inputs are served meanwhile, by the programs started again after each crash.
    let mut fine = Vec::new();
    for i in 0..3 {
        fine.push(
            client
                .submit_to("faulty", json!({"do": "echo", "i": i}))
                .await,
        );
    }
    let mut left: Vec<JobId> = fine.clone();
    let crashed = loop {
        match client.recv_any().await {
            ServerMessage::Result(result) if result.id == crash => break result.outcome,
            ServerMessage::Result(result) if left.contains(&result.id) => {
                output(&result.outcome);
                left.retain(|id| *id != result.id);
            }
            ServerMessage::Progress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    let error = failure(&crashed);
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    assert!(error.contains("ended during the job"), "{error}");
    for id in left {
        output(&client.result_of(id).await);
    }
    let job = job_view(&server, crash).await;
    assert_eq!(job["attempts"], 3, "{job}");
    if mode == Mode::Distributed {
        eventually("the crashing job to be dead-lettered", || async {
            env.dead_letters_of("faulty").await == 1
        })
        .await;
    }
}

async fn models_nobody_serves_are_refused(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app_with_models(&[faulty()], 1, 30).await;
    let mut client = server.client().await;
    client
        .send_json(json!({"type": "submit", "model": "nope", "input": {}, "ref": "r"}))
        .await;
    let error = client.expect_error(ErrorCode::UnknownModel).await;
    assert_eq!(error.tag.as_deref(), Some("r"));
    assert!(error.message.contains("\"nope\""), "{}", error.message);
    assert!(
        error.message.contains("faulty"),
        "names what is served: {}",
        error.message
    );
    let response = reqwest::Client::new()
        .post(server.http_url("/jobs"))
        .body(r#"{"model":"nope","input":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "unknown_model");
    // An input over --max-input-bytes is refused before it is stored.
    let big = "x".repeat(herald_protocol::model::DEFAULT_MAX_INPUT_BYTES);
    client
        .send_json(json!({"type": "submit", "model": "faulty", "input": big}))
        .await;
    client.expect_error(ErrorCode::TooLarge).await;
    client.expect_nothing_pending().await;
}

/// `GET /jobs/<id>`, which must answer 200.
async fn job_view(server: &TestServer, id: JobId) -> Value {
    let response = reqwest::get(server.http_url(&format!("/jobs/{id}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

async fn the_jobs_api_submits_shows_and_cancels(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env
        .spawn_app_with_models(&[faulty(), "factorial".into()], 1, 60)
        .await;
    let http = reqwest::Client::new();
    let post = |body: &'static str| {
        let request = http.post(server.http_url("/jobs")).body(body);
        async move {
            let response = request.send().await.unwrap();
            let status = response.status();
            let location = response
                .headers()
                .get("location")
                .map(|l| l.to_str().unwrap().to_owned());
            let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
            (status, location, body)
        }
    };

    let (status, location, body) =
        post(r#"{"model":"faulty","input":{"do":"echo","x":[1,2]}}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id: JobId = body["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(location.as_deref(), Some(format!("/jobs/{id}").as_str()));
    assert_eq!(body["model"], "faulty");
    let done = poll_until_final(&server, id).await;
    assert_eq!(done["status"], "done", "{done}");
    assert_eq!(done["input"], json!({"do": "echo", "x": [1, 2]}));
    assert_eq!(done["output"]["input"], json!({"do": "echo", "x": [1, 2]}));
    assert!(done["timings"]["total_ms"].as_u64().is_some(), "{done}");

    // The factorial through the same API, with its n.
    let (status, _, body) = post(r#"{"model":"factorial","input":{"n":10}}"#).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let factorial = poll_until_final(&server, body["id"].as_str().unwrap().parse().unwrap()).await;
    assert_eq!(
        (factorial["n"].clone(), factorial["output"].clone()),
        (json!(10), json!("3628800"))
    );

    // Refusals are JSON with the protocol's codes.
    for (bad, code, status) in [
        ("not json", "bad_request", StatusCode::BAD_REQUEST),
        (
            r#"{"model":"faulty"}"#,
            "bad_request",
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"model":"factorial","input":{"n":1.5}}"#,
            "bad_request",
            StatusCode::BAD_REQUEST,
        ),
        (
            r#"{"input":{"n":1000001}}"#,
            "too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
        ),
    ] {
        let (got, _, body) = post(bad).await;
        assert_eq!(
            (got, body["code"].as_str()),
            (status, Some(code)),
            "{bad}: {body}"
        );
        assert!(body["message"].as_str().is_some_and(|m| !m.is_empty()));
    }

    // DELETE stops a running job; a second DELETE finds it finished.
    let (_, _, body) = post(r#"{"model":"faulty","input":{"do":"sleep"}}"#).await;
    let running: JobId = body["id"].as_str().unwrap().parse().unwrap();
    eventually("the job to run", || async {
        job_view(&server, running).await["status"] == "running"
    })
    .await;
    let delete = || {
        http.delete(server.http_url(&format!("/jobs/{running}")))
            .send()
    };
    let response = delete().await.unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let cancelled = poll_until_final(&server, running).await;
    assert_eq!(cancelled["status"], "cancelled", "{cancelled}");
    let response = delete().await.unwrap();
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["code"], "already_finished");

    let unknown = JobId::new_v4();
    let response = reqwest::get(server.http_url(&format!("/jobs/{unknown}")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let response = reqwest::get(server.http_url("/jobs/not-an-id"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
}

/// Polls `GET /jobs/<id>` until the job is final.
async fn poll_until_final(server: &TestServer, id: JobId) -> Value {
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    loop {
        let job = job_view(server, id).await;
        if matches!(
            job["status"].as_str(),
            Some("done" | "failed" | "cancelled")
        ) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{id} never finished: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn two_models_are_served_by_two_workers_side_by_side() {
    let env = TestEnv::new();
    let server = env.spawn_app_with_models(&[faulty()], 1, 60).await;
    let mut second = env.worker_settings(1);
    second.models.models = vec![sentiment()];
    let _sentiment = env.spawn_worker_with(second).await;
    server.until_model_served("sentiment").await;
    let mut client = server.client().await;
    // A backlog of the slow model does not hold up the other model's jobs: each has its own queue.
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(
            client
                .submit_to("sentiment", json!({"text": "good", "seconds": 1}))
                .await,
        );
    }
    let quick = client.submit_to("faulty", json!({"do": "echo"})).await;
    let first = loop {
        match client.recv_any().await {
            ServerMessage::Result(result) => break result,
            ServerMessage::Progress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(
        first.id, quick,
        "the faulty job came first, past the sentiment backlog"
    );
    output(&first.outcome);
    let mut left = slow.clone();
    while !left.is_empty() {
        match client.recv_any().await {
            ServerMessage::Result(result) => {
                assert_eq!(result.model, "sentiment");
                assert_eq!(output(&result.outcome)["label"], "positive");
                left.retain(|id| *id != result.id);
            }
            ServerMessage::Progress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    // Each model's workers are counted.
    client
        .send_json(
            json!({"type": "submit", "model": "sentiment", "input": {"text": "x", "seconds": 0}}),
        )
        .await;
    match client.recv().await {
        ServerMessage::Accepted { workers, .. } => assert_eq!(workers, Some(1)),
        other => panic!("expected accepted, got {other:?}"),
    }
}

crate::both_modes!(
    a_program_answers_with_its_output,
    progress_from_the_program_reaches_the_socket,
    a_running_job_is_cancelled_its_program_stopped_and_the_next_job_served,
    the_time_limit_stops_a_program_that_hangs,
    garbage_and_refusals_fail_the_job_with_a_clear_error,
    a_program_that_crashes_on_one_input_fails_that_job_after_its_attempts,
    models_nobody_serves_are_refused,
    the_jobs_api_submits_shows_and_cancels,
);

#[tokio::test]
async fn a_model_is_forgotten_once_its_workers_are_gone_and_its_grace_is_over() {
    use herald_engine::RedisStore;
    use herald_server::directory::Directory;

    let env = TestEnv::new();
    let store = RedisStore::new(crate::helpers::REDIS_URL, env.backend.keys()).unwrap();
    let grace = Duration::from_millis(1500);
    let factorial = std::sync::Arc::new(herald_models::Factorial::new(10));
    let directory = Directory::distributed_with_grace(factorial, store.clone(), grace);
    // Unknown before any worker: refused, naming what is served (the factorial always is).
    assert_eq!(
        lookup(&directory, "echo").await,
        Err(vec!["factorial".to_owned()])
    );
    store.announce("w1", &["echo".into()]).await.unwrap();
    store
        .announce("w2", &["echo".into(), "other".into()])
        .await
        .unwrap();
    directory.refresh().await;
    assert_eq!(lookup(&directory, "echo").await, Ok(Some(2)));
    // A clean stop withdraws; a worker killed leaves an announcement that lapses by itself.
    store.withdraw("w1").await.unwrap();
    let lapsed = serde_json::json!({"models": ["echo", "other"], "until_ms": herald_protocol::unix_ms() - 1});
    let mut redis = env.redis().await;
    let _: () = redis::cmd("HSET")
        .arg(env.backend.keys().workers())
        .arg("w2")
        .arg(lapsed.to_string())
        .query_async(&mut redis)
        .await
        .unwrap();
    directory.refresh().await;
    // Known through the grace period, with no worker: its jobs wait in its queue.
    assert_eq!(lookup(&directory, "echo").await, Ok(Some(0)));
    let hash: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(env.backend.keys().workers())
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        hash.is_empty(),
        "the lapsed announcement was deleted: {hash:?}"
    );
    tokio::time::sleep(grace + Duration::from_millis(100)).await;
    directory.refresh().await;
    assert_eq!(
        lookup(&directory, "echo").await,
        Err(vec!["factorial".to_owned()])
    );
}

/// The workers serving `name`, or the names served, as the directory answers a submit.
async fn lookup(
    directory: &herald_server::directory::Directory,
    name: &str,
) -> Result<Option<u32>, Vec<String>> {
    directory.lookup(name).await.map(|served| served.workers)
}
