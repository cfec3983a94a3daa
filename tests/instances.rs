//! Several server instances and workers: resume anywhere, and completions go only where sockets wait.

use herald_protocol::{ErrorCode, JobStatus, Outcome, ServerMessage};

use crate::helpers::{eventually, TestEnv};

/// Waits until the job's record says `running`.
async fn until_running(env: &TestEnv, id: uuid::Uuid) {
    let redis = env.redis().await;
    let key = env.backend.keys().job(&id);
    eventually("the job to start running", || {
        let key = key.clone();
        let mut redis = redis.clone();
        async move {
            let status: Option<String> = redis::cmd("HGET")
                .arg(&key)
                .arg("status")
                .query_async(&mut redis)
                .await
                .unwrap();
            status.as_deref() == Some("running")
        }
    })
    .await;
}

#[tokio::test]
async fn a_job_submitted_on_a_is_resumed_on_b_while_running() {
    let env = TestEnv::new();
    let a = env.spawn_server().await;
    let b = env.spawn_server().await;
    let _w1 = env.spawn_worker(1).await;
    let _w2 = env.spawn_worker(1).await;

    let mut on_a = a.client().await;
    // Large enough to run for seconds, so the resume below surely meets it running.
    let id = on_a.submit(1_000_000).await;
    until_running(&env, id).await;
    on_a.close().await;

    let mut on_b = b.client().await;
    on_b.resume(id).await;
    match on_b.recv().await {
        ServerMessage::Status {
            id: got, n, status, ..
        } => {
            assert_eq!((got, n, status), (id, Some(1_000_000), JobStatus::Running));
        }
        other => panic!("expected status running, got {other:?}"),
    }
    // A second resume of the same job on the same socket: answered, but still one result in the end.
    on_b.resume(id).await;
    assert!(matches!(on_b.recv().await, ServerMessage::Status { .. }));
    let outcome = on_b.result_of(id).await;
    match (&outcome, outcome.output_text()) {
        (Outcome::Done { digits, .. }, Some(output)) => {
            assert_eq!(*digits, Some(5_565_709));
            assert_eq!(output.len(), 5_565_709);
            assert!(output.starts_with("8263931688331240062376646103"));
            assert!(output.ends_with(&"0".repeat(249_998)));
        }
        other => panic!("expected done, got {other:?}"),
    }
    on_b.expect_nothing_pending().await;
    // The output was over 1 MiB: it came from Redis, and the completion went to B only.
    assert_eq!(b.completions_received(), 1);
    assert_eq!(
        a.completions_received(),
        0,
        "A had no socket waiting any more"
    );
}

#[tokio::test]
async fn completions_reach_only_the_instances_that_wait() {
    let env = TestEnv::new();
    let a = env.spawn_server().await;
    let b = env.spawn_server().await;
    let c = env.spawn_server().await;
    let _w1 = env.spawn_worker(1).await;
    let _w2 = env.spawn_worker(1).await;

    let mut on_a = a.client().await;
    let mut on_b = b.client().await;
    let jobs_on_a = 5;
    for n in 0..jobs_on_a {
        let id = on_a.submit(n).await;
        on_a.output_of(id).await;
    }
    let id = on_b.submit(9).await;
    assert_eq!(on_b.output_of(id).await, "362880");

    // A job submitted over HTTP has no socket waiting: no instance is told.
    let http_id = reqwest::get(c.http_url("/factorial?no=8"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let http_id: uuid::Uuid = http_id.parse().unwrap();
    // Resumed on B after it finished: answered from Redis, no completion needed.
    eventually("the HTTP job to finish", || async {
        let body = reqwest::get(c.http_url(&format!("/factorial/result?id={http_id}")))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        body.contains("\"done\"")
    })
    .await;
    on_b.resume(http_id).await;
    assert_eq!(on_b.output_of(http_id).await, "40320");

    on_a.expect_nothing_pending().await;
    on_b.expect_nothing_pending().await;
    assert_eq!(a.completions_received(), jobs_on_a);
    assert_eq!(b.completions_received(), 1);
    assert_eq!(c.completions_received(), 0);
}

#[tokio::test]
async fn resume_of_a_finished_job_anywhere_and_of_an_unknown_id() {
    let env = TestEnv::new();
    let a = env.spawn_server().await;
    let b = env.spawn_server().await;
    let _worker = env.spawn_worker(1).await;
    let mut on_a = a.client().await;
    let id = on_a.submit(15).await;
    assert_eq!(on_a.output_of(id).await, "1307674368000");

    for server in [&a, &b] {
        let mut client = server.client().await;
        client.resume(id).await;
        assert_eq!(client.output_of(id).await, "1307674368000");
        let unknown = uuid::Uuid::new_v4();
        client.resume(unknown).await;
        match client.recv().await {
            ServerMessage::Error(e) => {
                assert_eq!((e.code, e.id), (ErrorCode::NotFound, Some(unknown)));
            }
            other => panic!("expected not_found, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_job_queued_before_any_worker_runs_is_resumed_and_finished() {
    let env = TestEnv::new();
    let a = env.spawn_server().await;
    let b = env.spawn_server().await;
    let mut on_a = a.client().await;
    let id = on_a.submit(11).await;
    on_a.close().await;

    let mut on_b = b.client().await;
    on_b.resume(id).await;
    match on_b.recv().await {
        ServerMessage::Status { status, .. } => assert_eq!(status, JobStatus::Queued),
        other => panic!("expected status queued, got {other:?}"),
    }
    let _worker = env.spawn_worker(1).await;
    assert_eq!(on_b.output_of(id).await, "39916800");
    on_b.expect_nothing_pending().await;
}
