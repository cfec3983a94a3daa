//! Graceful shutdown of real processes: SIGTERM to a server closes its sockets with 1001; SIGTERM to a
//! worker finishes or returns its running jobs. No job is lost either way.

use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Client, Process, TestEnv, AMQP_URL, REDIS_URL};

const LONG_N: u64 = 1_000_000;

#[tokio::test]
async fn sigterm_to_the_server_closes_every_socket_with_1001_and_exits() {
    let env = TestEnv::new();
    let mut args = env.backend_flags(AMQP_URL, REDIS_URL);
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let mut server = Process::start("herald-server", &args);
    let url = format!("ws://{}/ws", server.server_addr().await);
    let mut clients = vec![Client::connect(&url).await, Client::connect(&url).await];
    for client in &mut clients {
        client.expect_nothing_pending().await;
    }

    server.terminate();
    for client in &mut clients {
        match client.next_message().await {
            Some(Message::Close(Some(frame))) => {
                assert_eq!(frame.code, CloseCode::Away);
                assert_eq!(frame.reason, "server shutting down");
            }
            other => panic!("expected close 1001, got {other:?}"),
        }
    }
    assert!(server.wait().await.success(), "{}", server.log_text());
}

#[tokio::test]
async fn sigterm_to_a_worker_lets_its_running_job_finish() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let mut worker =
        env.start_worker_process(&["--concurrency", "1", "--shutdown-grace-secs", "120"]);
    let mut client = server.client().await;
    let id = client.submit(LONG_N).await;
    env.until_field(&id, "status", "running").await;
    worker.terminate();
    assert_eq!(client.digits_of(id).await, 5_565_709);
    assert!(worker.wait().await.success(), "{}", worker.log_text());
    assert_eq!(env.attempts(&id).await, 1);
}

#[tokio::test]
async fn sigterm_past_the_grace_period_returns_the_job_to_the_queue() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let mut worker =
        env.start_worker_process(&["--concurrency", "1", "--shutdown-grace-secs", "0"]);
    let mut client = server.client().await;
    let id = client.submit(LONG_N).await;
    env.until_field(&id, "status", "running").await;
    worker.terminate();
    assert!(worker.wait().await.success(), "{}", worker.log_text());
    assert!(worker
        .log_text()
        .contains("returning unfinished jobs to the queue"));

    let _next = env.spawn_worker(1).await;
    assert_eq!(client.digits_of(id).await, 5_565_709);
    assert_eq!(env.attempts(&id).await, 2);
}
