//! Overload: a full job queue, too many jobs on one socket, and a client that stops reading.

use herald_protocol::{ErrorCode, ErrorMessage, ServerMessage};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{eventually, TestEnv, TestServer};

/// What a full queue answers: `busy` over the socket (echoing the submit's `ref`, with a retry time),
/// and 429 with Retry-After over HTTP.
async fn refused_while_full(server: &TestServer, busy: &ErrorMessage) {
    assert_eq!(busy.code, ErrorCode::Busy);
    assert_eq!(busy.tag.as_deref(), Some("r"));
    assert!(busy.retry_after_ms.unwrap() > 0);
    let response = reqwest::get(server.http_url("/factorial?no=8"))
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
}

#[tokio::test]
async fn a_full_queue_answers_busy_and_stores_nothing() {
    let mut env = TestEnv::new();
    env.backend.max_queue_length = 2;
    let server = env.spawn_server().await;
    let mut client = server.client().await;
    // A quorum queue starts refusing once its length has passed the cap, so one or two more may get in.
    let mut accepted = Vec::new();
    let busy = loop {
        client
            .send_json(serde_json::json!({"type":"submit","n":5,"ref":"r"}))
            .await;
        match client.recv().await {
            ServerMessage::Accepted { id, .. } => accepted.push(id),
            ServerMessage::Error(e) => break e,
            other => panic!("unexpected {other:?}"),
        }
        assert!(accepted.len() <= 4, "the cap of 2 was not enforced");
    };
    assert!(accepted.len() >= 2);
    refused_while_full(&server, &busy).await;

    // Only the accepted jobs have records: the refused ones left nothing behind.
    let mut redis = env.redis().await;
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}job:*", env.backend.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    let mut expected: Vec<String> = accepted
        .iter()
        .map(|id| env.backend.keys().job(id))
        .collect();
    keys.sort();
    expected.sort();
    assert_eq!(keys, expected);

    // Once a worker drains the queue, submits are taken again.
    let _worker = env.spawn_worker(1).await;
    let outputs = client.outputs_of(&accepted).await;
    assert!(outputs.values().all(|o| o == "120"));
    let id = client.submit(9).await;
    assert_eq!(client.output_of(id).await, "362880");
}

#[tokio::test]
async fn one_socket_may_hold_only_so_many_jobs_in_flight() {
    let env = TestEnv::new();
    let mut settings = env.server_settings();
    settings.max_in_flight = 3;
    let server = env.spawn_server_with(settings).await;
    let mut client = server.client().await;
    let ids = [
        client.submit(1).await,
        client.submit(2).await,
        client.submit(3).await,
    ];
    client.send_text("4").await;
    match client.recv().await {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::Busy);
            assert!(e.retry_after_ms.is_some());
        }
        other => panic!("expected busy, got {other:?}"),
    }
    // Another socket has its own allowance.
    let mut other = server.client().await;
    other.submit(4).await;

    let _worker = env.spawn_worker(1).await;
    client.outputs_of(&ids).await;
    let id = client.submit(4).await;
    assert_eq!(client.output_of(id).await, "24");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_and_its_jobs_stay_resumable() {
    let env = TestEnv::new();
    let mut settings = env.server_settings();
    settings.socket_buffer_bytes = 64 * 1024;
    let server = env.spawn_server_with(settings).await;
    let mut slow = server.client().await;
    // 60 results of 456,574 digits: far more than the socket buffer and the kernel's buffers hold.
    let mut ids = Vec::new();
    for _ in 0..60 {
        ids.push(slow.submit(100_000).await);
    }
    let _worker = env.spawn_worker(2).await;
    eventually("the server to give up on the slow socket", || async {
        server
            .stats
            .sockets_closed_slow
            .load(std::sync::atomic::Ordering::Relaxed)
            == 1
    })
    .await;
    // Reading now drains what was in flight, then the Close frame.
    let close = loop {
        match slow.next_message().await {
            Some(Message::Text(_)) => continue,
            Some(Message::Close(frame)) => break frame,
            other => panic!("expected frames then a close, got {other:?}"),
        }
    };
    let close = close.expect("a close frame with a code");
    assert_eq!(close.code, CloseCode::Policy);
    assert!(close.reason.contains("too slow"), "{}", close.reason);

    // Every job is still there to resume.
    let mut again = server.client().await;
    for id in ids {
        again.resume(id).await;
        loop {
            match again.recv().await {
                ServerMessage::Status { .. } => continue,
                ServerMessage::Result(r) if r.id == id => {
                    assert!(matches!(
                        r.outcome,
                        herald_protocol::Outcome::Done {
                            digits: Some(456_574),
                            ..
                        }
                    ));
                    break;
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

/// Embedded mode has the same cap: its bounded in-process queue answers `busy` when full. Its workers
/// hold up to 32 jobs per computing slot in hand (as a RabbitMQ worker's prefetch), so with one slot
/// and a cap of 2, at most 35 long jobs get in.
#[tokio::test]
async fn an_embedded_queue_answers_busy_when_full() {
    let mut env = TestEnv::in_mode(crate::helpers::Mode::Embedded);
    env.backend.max_queue_length = 2;
    let mut settings = env.server_settings();
    settings.concurrency = std::num::NonZeroUsize::new(1);
    settings.job_time_limit_secs = 1;
    let server = env.spawn_server_with(settings).await;
    let mut client = server.client().await;
    let mut accepted = 0;
    let busy = loop {
        client
            .send_json(serde_json::json!({"type":"submit","n":1_000_000 - accepted,"ref":"r"}))
            .await;
        match client.recv().await {
            ServerMessage::Accepted { .. } => accepted += 1,
            ServerMessage::Error(e) => break e,
            other => panic!("unexpected {other:?}"),
        }
        assert!(accepted <= 35, "the cap of 2 was not enforced");
    };
    assert!(accepted >= 2);
    refused_while_full(&server, &busy).await;
}
