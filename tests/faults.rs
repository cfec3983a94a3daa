//! Faults: workers killed mid-job, jobs that keep failing, time limits, redeliveries, and RabbitMQ or
//! Redis going away under a running server or worker. Nothing accepted is lost.

use herald_engine::{JobStore, StoreError};
use herald_protocol::{ErrorCode, Outcome, ServerMessage};

use crate::helpers::{eventually, Proxy, TestEnv, AMQP_URL};

const LONG_N: u64 = 1_000_000;

/// An input that computes for several seconds on any machine: LONG_N! takes under a second on a quiet
/// one, too close to the shortest time limit.
const PAST_A_SECOND_N: u64 = 5_000_000;

#[tokio::test]
async fn a_worker_killed_mid_job_leaves_it_to_another_worker() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let mut doomed = env.start_worker_process(&["--concurrency", "1"]);
    let mut client = server.client().await;
    let id = client.submit(LONG_N).await;
    env.until_field(&id, "status", "running").await;
    doomed.kill().await;

    let _survivor = env.start_worker_process(&["--concurrency", "1"]);
    assert_eq!(client.digits_of(id).await, 5_565_709);
    assert_eq!(env.attempts(&id).await, 2);
    client.expect_nothing_pending().await;
}

#[tokio::test]
async fn a_job_that_keeps_killing_its_worker_fails_and_is_dead_lettered() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let mut client = server.client().await;
    let id = client.submit(LONG_N).await;
    for attempt in 1..=2 {
        let mut worker = env.start_worker_process(&["--concurrency", "1", "--max-attempts", "2"]);
        env.until_field(&id, "attempts", &attempt.to_string()).await;
        worker.kill().await;
    }
    let _last = env.start_worker_process(&["--concurrency", "1", "--max-attempts", "2"]);
    match client.result_of(id).await {
        Outcome::Failed { error } => assert!(error.contains("gave up after 2 attempts"), "{error}"),
        other => panic!("expected failed, got {other:?}"),
    }
    eventually("the job in the dead-letter queue", || async {
        env.dead_letters().await == 1
    })
    .await;
}

#[tokio::test]
async fn jobs_waiting_in_a_killed_workers_hand_are_not_charged_an_attempt() {
    let mut env = TestEnv::new();
    env.backend.max_n = 2 * PAST_A_SECOND_N;
    let server = env.spawn_server().await;
    let mut client = server.client().await;
    let args = ["--concurrency", "1", "--max-attempts", "2"];
    let mut worker = env.start_worker_process(&args);
    // One slot: the long job holds it, and the others wait in the worker's hand (its prefetch).
    let doomed = client.submit(PAST_A_SECOND_N).await;
    env.until_field(&doomed, "status", "running").await;
    let mut waiting = Vec::new();
    for n in [3000, 3001, 3002] {
        waiting.push(client.submit(n).await);
    }
    // The worker dies twice while the long job runs, with the others delivered to it and waiting.
    for attempt in 1..=2 {
        env.until_field(&doomed, "attempts", &attempt.to_string())
            .await;
        // They are in the worker's hand, delivered and unacknowledged, not ready in the queue.
        eventually("the waiting jobs delivered to the worker", || async {
            ready_jobs(&env).await == 0
        })
        .await;
        for id in &waiting {
            assert_eq!(
                env.record_field(id, "status").await.as_deref(),
                Some("queued")
            );
            assert_eq!(env.attempts(id).await, 0, "a waiting job was never tried");
        }
        worker.kill().await;
        worker = env.start_worker_process(&args);
    }
    // The long job used its two attempts and fails; the waiting ones run on their first.
    match client.result_of(doomed).await {
        Outcome::Failed { error } => assert!(error.contains("gave up after 2 attempts"), "{error}"),
        other => panic!("expected failed, got {other:?}"),
    }
    let outputs = client.outputs_of(&waiting).await;
    for id in &waiting {
        assert!(!outputs[id].is_empty());
        assert_eq!(env.attempts(id).await, 1);
    }
}

/// Messages ready (not delivered to a consumer) in the factorial's job queue.
async fn ready_jobs(env: &TestEnv) -> u32 {
    let (connection, channel) = env.amqp_channel().await;
    let queue = channel
        .queue_declare(
            env.factorial_queue().as_str().into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .expect("the job queue exists");
    let _ = connection.close(200, "".into()).await;
    queue.message_count()
}

#[tokio::test]
async fn messages_that_are_not_jobs_go_straight_to_the_dead_letter_queue() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let _worker = env.spawn_worker(1).await;
    env.publish_raw(b"not json at all").await;
    env.publish_raw(br#"{"n": 5}"#).await;
    env.publish_raw(b"\xff\xfe\x00").await;
    eventually("three dead letters", || async {
        env.dead_letters().await == 3
    })
    .await;
    // The worker is unharmed and the bad messages do not come back.
    let mut client = server.client().await;
    let id = client.submit(4).await;
    assert_eq!(client.output_of(id).await, "24");
    assert_eq!(env.dead_letters().await, 3);
}

#[tokio::test]
async fn a_job_past_its_time_limit_fails_and_frees_the_worker() {
    let mut env = TestEnv::new();
    env.backend.max_n = PAST_A_SECOND_N;
    let server = env.spawn_server().await;
    let mut settings = env.worker_settings(1);
    settings.job_time_limit_secs = 1;
    let _worker = env.spawn_worker_with(settings).await;
    let mut client = server.client().await;
    let id = client.submit(PAST_A_SECOND_N).await;
    match client.result_of(id).await {
        Outcome::Failed { error } => assert_eq!(error, "time limit exceeded (1 s)"),
        other => panic!("expected failed, got {other:?}"),
    }
    let id = client.submit(8).await;
    assert_eq!(client.output_of(id).await, "40320");
}

#[tokio::test]
async fn heartbeats_and_acks_keep_working_while_workers_compute() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    // A one-second heartbeat: a runtime thread blocked by computing would lose the connection, and the
    // job would be redelivered (a second attempt).
    let mut settings = env.worker_settings(2);
    settings.backend.amqp_url = Some(format!("{AMQP_URL}?heartbeat=1"));
    let _worker = env.spawn_worker_with(settings).await;
    let mut client = server.client().await;
    let first = client.submit(LONG_N).await;
    let second = client.submit(LONG_N - 1).await;
    let mut done = 0;
    while done < 2 {
        match client.recv().await {
            ServerMessage::Result(r) => {
                assert!(matches!(r.outcome, Outcome::Done { .. }));
                done += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for id in [first, second] {
        assert_eq!(env.attempts(&id).await, 1);
    }
}

#[tokio::test]
async fn a_result_stored_twice_or_published_twice_reaches_each_socket_once() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let mut client = server.client().await;
    let id = client.submit(12).await;

    // A worker stored the result, then two completions went out (a worker presumed dead finished too).
    let store =
        herald_engine::RedisStore::new(crate::helpers::REDIS_URL, env.backend.keys()).unwrap();
    let mut record = store.get(&id).await.unwrap().unwrap();
    record.status = herald_protocol::JobStatus::Done;
    record.output = Some(herald_protocol::model::json_string("479001600"));
    let herald_engine::backend::Finish::Applied { watchers } =
        store.finish(&id, &record).await.unwrap()
    else {
        panic!("the result is stored once");
    };
    assert_eq!(watchers, vec![server.instance.clone()]);
    assert_eq!(
        store.finish(&id, &record).await.unwrap(),
        herald_engine::backend::Finish::AlreadyFinal,
        "a second store of a final job changes nothing"
    );
    let completion = herald_protocol::Completion::new(id, record).encode();
    let (connection, channel) = env.amqp_channel().await;
    for _ in 0..2 {
        channel
            .basic_publish(
                env.backend.reply_exchange.as_str().into(),
                server.instance.as_str().into(),
                Default::default(),
                &completion,
                Default::default(),
            )
            .await
            .unwrap();
    }
    let _ = connection.close(200, "".into()).await;
    assert_eq!(client.output_of(id).await, "479001600");
    eventually("both completions to arrive", || async {
        server.completions_received() == 2
    })
    .await;
    client.expect_nothing_pending().await;

    // The job message is still queued, as after a crash: a worker takes it, sees the stored result and
    // does not compute it again (no attempt counted).
    let _worker = env.spawn_worker(1).await;
    let queue = env.factorial_queue();
    eventually("the job message to be consumed", || async {
        let (connection, channel) = env.amqp_channel().await;
        let declared = channel
            .queue_declare(
                queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap();
        let _ = connection.close(200, "".into()).await;
        declared.message_count() == 0
    })
    .await;
    assert_eq!(env.attempts(&id).await, 0);
    client.expect_nothing_pending().await;
}

#[tokio::test]
async fn the_server_rides_out_a_rabbitmq_outage() {
    let env = TestEnv::new();
    let proxy = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut settings = env.server_settings();
    settings.backend.amqp_url = Some(proxy.amqp_url());
    let server = env.spawn_server_with(settings).await;
    let _worker = env.spawn_worker(1).await;
    let mut client = server.client().await;
    assert_eq!(server.readyz().await, 200);

    // A long job whose completion is published while this server's reply queue is gone.
    let id = client.submit(LONG_N).await;
    env.until_field(&id, "status", "running").await;
    proxy.cut();
    server.until_readyz(503).await;
    client.send_text("5").await;
    client.expect_error(ErrorCode::Unavailable).await;
    env.until_field(&id, "status", "done").await;

    proxy.restore();
    // After reconnecting, the server re-reads the jobs its sockets wait for.
    assert_eq!(client.digits_of(id).await, 5_565_709);
    server.until_readyz(200).await;
    let id = client.submit(6).await;
    assert_eq!(client.output_of(id).await, "720");
}

#[tokio::test]
async fn the_server_rides_out_a_redis_outage() {
    let env = TestEnv::new();
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let mut settings = env.server_settings();
    settings.backend.redis_url = Some(proxy.redis_url());
    let server = env.spawn_server_with(settings).await;
    let _worker = env.spawn_worker(1).await;
    let mut client = server.client().await;

    proxy.cut();
    server.until_readyz(503).await;
    client.send_text("5").await;
    client.expect_error(ErrorCode::Unavailable).await;
    let status = reqwest::get(server.http_url("/factorial?no=5"))
        .await
        .unwrap()
        .status();
    assert_eq!(status, 503);

    proxy.restore();
    server.until_readyz(200).await;
    let id = client.submit(7).await;
    assert_eq!(client.output_of(id).await, "5040");
}

#[tokio::test]
async fn a_redis_connection_that_goes_silent_is_replaced() {
    let env = TestEnv::new();
    let proxy = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let store = herald_engine::RedisStore::new(&proxy.redis_url(), env.backend.keys()).unwrap();
    store.ping().await.unwrap();

    // The connection stays open and silent: redis-rs would wait on it for good (it reconnects only
    // when a connection breaks), so the store gives up on the operation and on the connection.
    proxy.stall();
    match store.ping().await {
        Err(StoreError::Unavailable(reason)) => assert!(reason.contains("in time"), "{reason}"),
        other => panic!("expected unavailable, got {other:?}"),
    }
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_worker_rides_out_rabbitmq_and_redis_outages() {
    let env = TestEnv::new();
    let amqp = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let redis = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let server = env.spawn_server().await;
    let mut settings = env.worker_settings(1);
    settings.backend.amqp_url = Some(amqp.amqp_url());
    settings.backend.redis_url = Some(redis.redis_url());
    let _worker = env.spawn_worker_with(settings).await;
    let mut client = server.client().await;
    let id = client.submit(9).await;
    assert_eq!(client.output_of(id).await, "362880");

    // RabbitMQ away: jobs wait in the queue, and the worker takes them after reconnecting.
    amqp.cut();
    let id = client.submit(10).await;
    amqp.restore();
    assert_eq!(client.output_of(id).await, "3628800");

    // Redis away: the worker holds the job and retries until Redis is back.
    redis.cut();
    let id = client.submit(11).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    redis.restore();
    assert_eq!(client.output_of(id).await, "39916800");
    assert_eq!(env.attempts(&id).await, 1);
}
