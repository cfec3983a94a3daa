//! What users see of a job while it runs and after: progress, cancel (WebSocket and HTTP), the output
//! download, the metrics endpoints and JSON logs. Each protocol test runs in both modes.

use herald_protocol::{JobId, JobStatus, Outcome, ServerMessage};
use reqwest::StatusCode;

use crate::helpers::{eventually, sample, Client, Mode, Process, TestEnv, TestServer};

/// Long enough (about a second or more here) to report progress several times and to be cancelled
/// while it runs.
const LONG_N: u64 = 1_000_000;

/// The factorial's phases, in the order they come.
const PRODUCT: &str = "product";
const DECIMAL: &str = "decimal";

/// Reads until the result of `id`, returning the progress of `id` seen before it and the outcome.
async fn progress_until_result(
    client: &mut Client,
    id: JobId,
) -> (Vec<(f64, Option<String>)>, Outcome) {
    let mut seen = Vec::new();
    loop {
        match client.recv_any().await {
            ServerMessage::Progress {
                id: of,
                fraction,
                phase,
                model,
            } if of == id => {
                assert_eq!(model, herald_protocol::FACTORIAL);
                seen.push((fraction, phase));
            }
            ServerMessage::Result(result) if result.id == id => return (seen, result.outcome),
            ServerMessage::Progress { .. } | ServerMessage::Result(_) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// Waits for the first progress of `id`: from then on the job is running.
async fn first_progress(client: &mut Client, id: JobId) {
    match client.recv_any().await {
        ServerMessage::Progress { id: of, .. } if of == id => {}
        other => panic!("expected progress of {id}, got {other:?}"),
    }
}

async fn progress_is_pushed_for_long_jobs_only(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(2).await;
    let mut client = server.client().await;
    let long = client.submit(LONG_N).await;
    // A second socket watches the same job: progress goes to every socket that watches it.
    let mut watcher = server.client().await;
    watcher.resume(long).await;
    assert!(matches!(watcher.recv().await, ServerMessage::Status { .. }));
    let short = client.submit(10).await;
    let mut short_done = false;
    let mut progress = Vec::new();
    let outcome = loop {
        match client.recv_any().await {
            ServerMessage::Progress {
                id,
                fraction,
                phase,
                ..
            } => {
                assert_eq!(id, long, "a 1 ms job reports no progress");
                progress.push((fraction, phase));
            }
            ServerMessage::Result(result) if result.id == short => short_done = true,
            ServerMessage::Result(result) if result.id == long => break result.outcome,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert!(short_done);
    let Outcome::Done {
        digits, timings, ..
    } = outcome
    else {
        panic!("expected done, got {outcome:?}");
    };
    assert_eq!(digits, Some(5_565_709));
    assert!(progress.len() >= 2, "{progress:?}");
    // Real progress: rising fractions through the product, then the decimal conversion.
    assert!(progress.windows(2).all(|w| w[0].0 < w[1].0), "{progress:?}");
    assert!(progress.iter().all(|(f, _)| *f > 0.0 && *f <= 1.0));
    assert!(
        progress
            .windows(2)
            .all(|w| !(w[0].1.as_deref() == Some(DECIMAL) && w[1].1.as_deref() == Some(PRODUCT))),
        "{progress:?}"
    );
    assert!(
        progress
            .iter()
            .all(|(_, p)| matches!(p.as_deref(), Some(PRODUCT | DECIMAL))),
        "{progress:?}"
    );
    assert_eq!(
        progress.last().unwrap().1.as_deref(),
        Some(DECIMAL),
        "{progress:?}"
    );
    // The watcher registered within milliseconds of the start, long before the first report at
    // 250 ms, so it hears the reports too.
    let (watched, outcome) = progress_until_result(&mut watcher, long).await;
    assert!(matches!(outcome, Outcome::Done { .. }));
    assert!(!watched.is_empty());
    assert!(watched.iter().all(|p| progress.contains(p)), "{watched:?}");
    // At most one report per 250 ms of the job's own computing time (its worker's clock).
    let allowed = timings.compute_ms / 250 + 1;
    assert!(
        progress.len() as u64 <= allowed,
        "{} reports in {} ms",
        progress.len(),
        timings.compute_ms
    );
}

async fn a_running_job_is_cancelled_on_every_watching_socket(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let mut owner = server.client().await;
    let mut watcher = server.client().await;
    let id = owner.submit(LONG_N).await;
    watcher.resume(id).await;
    assert!(matches!(watcher.recv().await, ServerMessage::Status { .. }));
    first_progress(&mut owner, id).await;

    owner
        .send_json(serde_json::json!({"type": "cancel", "id": id}))
        .await;
    for client in [&mut owner, &mut watcher] {
        let (_, outcome) = progress_until_result(client, id).await;
        assert_eq!(outcome, Outcome::Cancelled {});
    }
    let record = reqwest::get(server.http_url(&format!("/factorial/result?id={id}")))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let record: serde_json::Value = serde_json::from_str(&record).unwrap();
    assert_eq!(record["status"], "cancelled");

    // A cancel of a finished job is refused with a reason, and the socket goes on.
    owner
        .send_json(serde_json::json!({"type": "cancel", "id": id}))
        .await;
    let error = owner
        .expect_error(herald_protocol::ErrorCode::AlreadyFinished)
        .await;
    assert_eq!(error.id, Some(id));
    assert!(error.message.contains("cancelled"), "{}", error.message);
    let unknown = JobId::new_v4();
    owner
        .send_json(serde_json::json!({"type": "cancel", "id": unknown}))
        .await;
    owner
        .expect_error(herald_protocol::ErrorCode::NotFound)
        .await;
    // The worker's slot is free again: the only computing slot serves the next job.
    let next = owner.submit(8).await;
    assert_eq!(owner.output_of(next).await, "40320");
}

async fn a_cancel_from_a_socket_that_did_not_watch_still_gets_the_result(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let mut owner = server.client().await;
    let id = owner.submit(LONG_N).await;
    first_progress(&mut owner, id).await;
    let mut other = server.client().await;
    other
        .send_json(serde_json::json!({"type": "cancel", "id": id}))
        .await;
    let (_, outcome) = progress_until_result(&mut other, id).await;
    assert_eq!(outcome, Outcome::Cancelled {});
    let (_, outcome) = progress_until_result(&mut owner, id).await;
    assert_eq!(outcome, Outcome::Cancelled {});
    other.expect_nothing_pending().await;
}

/// Queued jobs exist only while no worker takes them: with RabbitMQ, before any worker runs.
#[tokio::test]
async fn a_queued_job_is_cancelled_at_once_and_its_worker_skips_it() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let mut owner = server.client().await;
    let mut watcher = server.client().await;
    let id = owner.submit(LONG_N).await;
    watcher.resume(id).await;
    match watcher.recv().await {
        ServerMessage::Status { status, .. } => assert_eq!(status, JobStatus::Queued),
        other => panic!("unexpected {other:?}"),
    }
    owner
        .send_json(serde_json::json!({"type": "cancel", "id": id}))
        .await;
    assert_eq!(owner.result_of(id).await, Outcome::Cancelled {});
    assert_eq!(watcher.result_of(id).await, Outcome::Cancelled {});

    // The worker finds it final: no attempt, and the next job is computed.
    let _worker = env.spawn_worker(1).await;
    let next = owner.submit(9).await;
    assert_eq!(owner.output_of(next).await, "362880");
    assert_eq!(env.attempts(&id).await, 0);
    assert_eq!(
        env.record_field(&id, "status").await.as_deref(),
        Some("cancelled")
    );
    owner.expect_nothing_pending().await;
    watcher.expect_nothing_pending().await;
}

async fn delete_cancels_over_http(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let http = reqwest::Client::new();
    let id = http
        .get(server.http_url(&format!("/factorial?no={LONG_N}")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let url = server.http_url(&format!("/factorial/{id}"));
    let response = http.delete(&url).send().await.unwrap();
    let status = response.status();
    let body: serde_json::Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
    assert_eq!(body["id"], id.as_str());
    match status {
        StatusCode::OK => assert_eq!(body["status"], "cancelled"),
        StatusCode::ACCEPTED => assert_eq!(body["status"], "cancelling"),
        other => panic!("unexpected {other}: {body}"),
    }
    let poll = server.http_url(&format!("/factorial/result?id={id}"));
    eventually("the job to end cancelled", || async {
        let text = http.get(&poll).send().await.unwrap().text().await.unwrap();
        let record: serde_json::Value = serde_json::from_str(&text).unwrap();
        record["status"] == "cancelled"
    })
    .await;
    let again = http.delete(&url).send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CONFLICT);
    assert!(again.text().await.unwrap().contains("already finished"));
    let unknown = server.http_url(&format!("/factorial/{}", JobId::new_v4()));
    assert_eq!(
        http.delete(&unknown).send().await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        http.delete(server.http_url("/factorial/not-an-id"))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::BAD_REQUEST
    );
}

async fn the_output_downloads_as_a_text_file(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let mut client = server.client().await;
    let id = client.submit(30_000).await;
    let output = client.output_of(id).await;
    let response = reqwest::get(server.http_url(&format!("/factorial/{id}/output")))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().unwrap().to_owned())
    };
    assert_eq!(
        header("content-type").as_deref(),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(
        header("content-disposition").as_deref(),
        Some("attachment; filename=\"factorial-30000.txt\"")
    );
    assert_eq!(response.text().await.unwrap(), output);

    let pending = client.submit(LONG_N).await;
    let early = reqwest::get(server.http_url(&format!("/factorial/{pending}/output")))
        .await
        .unwrap();
    assert_eq!(early.status(), StatusCode::CONFLICT);
    let unknown = server.http_url(&format!("/factorial/{}/output", JobId::new_v4()));
    assert_eq!(
        reqwest::get(unknown).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    let bad = server.http_url("/factorial/12/output");
    assert_eq!(
        reqwest::get(bad).await.unwrap().status(),
        StatusCode::BAD_REQUEST
    );
}

async fn metrics(server: &TestServer) -> String {
    let response = reqwest::get(server.http_url("/metrics")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    response.text().await.unwrap()
}

async fn the_server_counts_what_it_does(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let mut client = server.client().await;
    for n in [5, 6] {
        let id = client.submit(n).await;
        client.output_of(id).await;
    }
    let page = metrics(&server).await;
    assert_eq!(
        sample(&page, "herald_jobs_submitted_total{via=\"websocket\"}"),
        Some(2.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "herald_results_pushed_total{status=\"done\"}"),
        Some(2.0)
    );
    assert_eq!(
        sample(&page, "herald_time_to_result_seconds_count"),
        Some(2.0)
    );
    assert_eq!(sample(&page, "herald_sockets_open"), Some(1.0));
    // accepted and result, twice.
    assert_eq!(sample(&page, "herald_messages_pushed_total"), Some(4.0));
    assert_eq!(
        sample(&page, "herald_queue_depth{model=\"factorial\"}"),
        Some(0.0)
    );
    if mode == Mode::Embedded {
        // The in-process workers count in the same registry.
        assert_eq!(
            sample(&page, "herald_worker_jobs_total{status=\"done\"}"),
            Some(2.0)
        );
    }
    client.close().await;
    eventually("the socket to be counted closed", || async {
        sample(&metrics(&server).await, "herald_sockets_open") == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn a_worker_serves_its_own_metrics() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let worker =
        env.start_worker_process(&["--concurrency", "1", "--metrics-listen", "127.0.0.1:0"]);
    let mut addr = None;
    eventually("the worker to log its metrics address", || {
        addr = worker.log_text().lines().find_map(|l| {
            let rest = l.split("metrics on http://").nth(1)?;
            Some(rest.split('/').next()?.to_owned())
        });
        std::future::ready(addr.is_some())
    })
    .await;
    let url = format!("http://{}/metrics", addr.unwrap());
    let mut client = server.client().await;
    let id = client.submit(7).await;
    assert_eq!(client.output_of(id).await, "5040");
    let page = reqwest::get(&url).await.unwrap().text().await.unwrap();
    assert_eq!(
        sample(&page, "herald_worker_jobs_total{status=\"done\"}"),
        Some(1.0),
        "{page}"
    );
    assert_eq!(
        sample(&page, "herald_worker_compute_seconds_count"),
        Some(1.0)
    );
    assert_eq!(sample(&page, "herald_worker_job_attempts_count"), Some(1.0));
    assert_eq!(sample(&page, "herald_worker_job_attempts_sum"), Some(1.0));
}

#[tokio::test]
async fn json_logs_name_the_job_on_every_line_about_it() {
    // Embedded, as a user's first run would be: no RabbitMQ or Redis flags at all.
    let server = Process::start(
        "herald-server",
        &["--listen", "127.0.0.1:0", "--log-format", "json"].map(String::from),
    );
    let mut addr = None;
    eventually("the server to log its address", || {
        addr = server.log_text().lines().find_map(|l| {
            let line: serde_json::Value = serde_json::from_str(l).ok()?;
            let message = line["message"].as_str()?;
            Some(message.strip_prefix("listening on http://")?.to_owned())
        });
        std::future::ready(addr.is_some())
    })
    .await;
    let mut client = Client::connect(&format!("ws://{}/ws", addr.unwrap())).await;
    let id = client.submit(12).await;
    assert_eq!(client.output_of(id).await, "479001600");
    let id = id.to_string();
    let mut about_job = Vec::new();
    eventually("the job's lines to be written", || {
        let log = server.log_text();
        about_job = log
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("every line is JSON"))
            .filter(|line| line.to_string().contains(&id))
            .collect();
        std::future::ready(about_job.len() >= 3)
    })
    .await;
    for line in &about_job {
        // The ID is a field, from the event or its span, never only inside the text.
        let named = line["id"] == id.as_str() || line["span"]["id"] == id.as_str();
        assert!(named, "{line}");
    }
    let messages: Vec<&str> = about_job
        .iter()
        .filter_map(|l| l["message"].as_str())
        .collect();
    for expected in ["job accepted", "job started", "job finished"] {
        assert!(messages.contains(&expected), "{messages:?}");
    }
    let log = server.log_text();
    assert!(log.contains("EMBEDDED mode"), "embedded mode says so");
}

crate::both_modes!(
    progress_is_pushed_for_long_jobs_only,
    a_running_job_is_cancelled_on_every_watching_socket,
    a_cancel_from_a_socket_that_did_not_watch_still_gets_the_result,
    delete_cancels_over_http,
    the_output_downloads_as_a_text_file,
    the_server_counts_what_it_does,
);

/// A served model whose queue has gone (deleted behind Herald's back, its worker killed) has no depth
/// in the metrics, and reading it harms nothing else: a passive declare of a missing queue closes its
/// channel, so it must not run on the channel every job is published on. The first job published to
/// the missing queue is refused `unavailable` (RabbitMQ returns it); the next declares the queue
/// again and is accepted.
#[tokio::test]
async fn a_missing_queue_leaves_its_depth_out_and_jobs_still_flow() {
    let env = TestEnv::new();
    let server = env.spawn_app(1).await;
    let echo = format!("echo={}", crate::helpers::example_model("echo.py", ""));
    let mut echo_worker = env.start_worker_process(&["--model", &echo]);
    server.until_model_served("echo").await;
    let mut client = server.client().await;
    // The server has published to echo's queue, so it counts it as declared.
    let first = client.submit_to("echo", serde_json::json!({"x": 1})).await;
    client.result_of(first).await;
    // Killed, its announcement stays for a while (the server still lists echo), and nobody declares
    // its queue again once it is deleted.
    echo_worker.kill().await;
    let connection = lapin::Connection::connect(crate::helpers::AMQP_URL, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .queue_delete(env.job_queue("echo").as_str().into(), Default::default())
        .await
        .unwrap();
    let page = metrics(&server).await;
    assert_eq!(
        sample(&page, "herald_queue_depth{model=\"echo\"}"),
        None,
        "{page}"
    );
    assert_eq!(
        sample(&page, "herald_queue_depth{model=\"factorial\"}"),
        Some(0.0),
        "{page}"
    );
    for (n, factorial) in [(7, "5040"), (8, "40320")] {
        let id = client.submit(n).await;
        assert_eq!(client.output_of(id).await, factorial);
    }
    client
        .send_json(serde_json::json!({"type": "submit", "model": "echo", "input": {"x": 2}}))
        .await;
    client
        .expect_error(herald_protocol::ErrorCode::Unavailable)
        .await;
    // Queued (no worker serves it now), not refused again.
    client.submit_to("echo", serde_json::json!({"x": 3})).await;
}
