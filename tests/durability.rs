//! Durability and reaching the backends: what a Redis restart keeps with and without the append-only
//! file, what Herald says about Redis's persistence at start, `--redis-replica-acks` (Redis WAIT) with a
//! real replica, start-up before the backends are up, and a list of RabbitMQ URLs. The Redis servers
//! here are the tests' own (on free loopback ports), since the machine's own is never restarted.

use herald_protocol::{ErrorCode, JobStatus, ServerMessage};

use crate::helpers::{eventually, Process, Proxy, RedisProcess, TestEnv, AMQP_URL, REDIS_URL};

/// Submits `n` until it is accepted (while a backend is away, it is refused as unavailable), within
/// the patience limit.
async fn submit_until_accepted(
    client: &mut crate::helpers::Client,
    n: u64,
) -> herald_protocol::JobId {
    let deadline = tokio::time::Instant::now() + crate::helpers::PATIENCE;
    loop {
        client
            .send_json(serde_json::json!({"type": "submit", "n": n}))
            .await;
        match client.recv().await {
            ServerMessage::Accepted { id, .. } => return id,
            ServerMessage::Error(e) if e.code == ErrorCode::Unavailable => {
                assert!(tokio::time::Instant::now() < deadline, "never accepted");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            other => panic!("unexpected answer to a submit: {other:?}"),
        }
    }
}

/// The keys of `env`'s job records in its Redis.
async fn job_records(env: &TestEnv) -> Vec<String> {
    let mut conn = env.redis().await;
    redis::cmd("KEYS")
        .arg(format!("{}job:*", env.backend.redis_prefix))
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// The status of job `id` of `env` as the Redis `redis` (a replica, say) holds it.
async fn status_on(
    redis: &RedisProcess,
    env: &TestEnv,
    id: &herald_protocol::JobId,
) -> Option<String> {
    let mut conn = redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    redis::cmd("HGET")
        .arg(env.backend.keys().job(id))
        .arg("status")
        .query_async(&mut conn)
        .await
        .unwrap()
}

/// Submits `count` jobs (no worker runs), restarts Redis, and returns what resumes then answer: the
/// status of each job still known, `None` for one Redis lost.
async fn restart_with_queued_jobs(redis: &mut RedisProcess, count: u64) -> Vec<Option<JobStatus>> {
    let mut env = TestEnv::new();
    env.backend.redis_url = Some(redis.url());
    let server = env.spawn_server().await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for n in 0..count {
        ids.push(client.submit(100 + n).await);
    }
    redis.restart().await;
    let mut client = server.client().await;
    let mut statuses = Vec::new();
    for id in &ids {
        // The server's connection to the old process is gone: the first answers may be unavailable.
        loop {
            client.resume(*id).await;
            match client.recv().await {
                ServerMessage::Status { status, .. } => {
                    statuses.push(Some(status));
                    break;
                }
                ServerMessage::Error(e) if e.code == ErrorCode::NotFound => {
                    statuses.push(None);
                    break;
                }
                ServerMessage::Error(e) if e.code == ErrorCode::Unavailable => {
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                other => panic!("unexpected answer to a resume: {other:?}"),
            }
        }
    }
    if statuses.iter().all(Option::is_some) {
        // Kept: a worker started now computes every one of them.
        let _worker = env.spawn_worker(2).await;
        let outputs = client.outputs_of(&ids).await;
        assert_eq!(outputs.len(), ids.len());
    }
    statuses
}

#[tokio::test]
async fn a_redis_restart_keeps_every_queued_job_with_aof_and_loses_them_all_without() {
    let mut with_aof = RedisProcess::start(&["--appendonly", "yes"]).await;
    let kept = restart_with_queued_jobs(&mut with_aof, 30).await;
    assert!(
        kept.iter().all(|s| *s == Some(JobStatus::Queued)),
        "{kept:?}"
    );

    let mut without = RedisProcess::start(&[]).await;
    let lost = restart_with_queued_jobs(&mut without, 30).await;
    assert!(lost.iter().all(Option::is_none), "{lost:?}");
}

/// Starts a server process on `redis_url` and returns its log once it listens.
async fn startup_log(env: &TestEnv, redis_url: &str) -> String {
    let mut args = env.backend_flags(AMQP_URL, redis_url);
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let mut server = Process::start("herald-server", &args);
    server.server_addr().await;
    server.terminate();
    server.wait().await;
    server.log_text()
}

#[tokio::test]
async fn servers_say_at_start_what_redis_keeps_on_disk() {
    let env = TestEnv::new();
    // The machine's Redis keeps nothing (scripts/services.sh starts it so).
    let log = startup_log(&env, REDIS_URL).await;
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("redis keeps NOTHING on disk"), "{log}");
    assert!(log.contains("not_found"), "{log}");

    let aof = RedisProcess::start(&["--appendonly", "yes"]).await;
    let log = startup_log(&env, &aof.url()).await;
    assert!(log.contains("redis keeps an append-only file"), "{log}");
    assert!(!log.contains("on disk"), "{log}");

    let snapshots = RedisProcess::start(&["--save", "60 1"]).await;
    let log = startup_log(&env, &snapshots.url()).await;
    assert!(log.contains("redis keeps only snapshots"), "{log}");

    // Managed Redis services often disable CONFIG.
    let no_config = RedisProcess::start(&["--rename-command", "CONFIG", ""]).await;
    let log = startup_log(&env, &no_config.url()).await;
    assert!(log.contains("CONFIG GET was refused"), "{log}");
}

#[tokio::test]
async fn replica_acks_wait_for_a_replica_and_refuse_jobs_without_one() {
    let primary = RedisProcess::start(&[]).await;
    let port = primary.port.to_string();
    let mut replica = RedisProcess::start(&["--replicaof", "127.0.0.1", &port]).await;
    let mut env = TestEnv::new();
    env.backend.redis_url = Some(primary.url());
    env.backend.redis_replica_acks = 1;
    let server = env.spawn_app(1).await;
    let mut client = server.client().await;
    // The replica's first sync may still run: submits meanwhile are refused as unavailable.
    let id = submit_until_accepted(&mut client, 20).await;
    assert_eq!(client.output_of(id).await, "2432902008176640000");
    // The replica holds the final record too: the worker waited for it.
    assert_eq!(
        status_on(&replica, &env, &id).await.as_deref(),
        Some("done")
    );

    // Without a replica, nothing can be held by one: the submit is refused, and leaves no record.
    replica.kill().await;
    client
        .send_json(serde_json::json!({"type": "submit", "n": 21}))
        .await;
    client.expect_error(ErrorCode::Unavailable).await;
    let keys = job_records(&env).await;
    assert_eq!(keys.len(), 1, "only the first job's record: {keys:?}");
}

/// Submits at once from several sockets share their waits for the replica (engine/src/replication.rs):
/// none is answered `accepted` before the replica, stopped meanwhile, runs again, and every job
/// answered `accepted` is on the replica; one refused (the stop outlasted the wait) left no record.
#[tokio::test]
async fn concurrent_submits_are_accepted_only_once_the_replica_holds_them() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let primary = RedisProcess::start(&[]).await;
    let port = primary.port.to_string();
    let replica = RedisProcess::start(&["--replicaof", "127.0.0.1", &port]).await;
    let mut env = TestEnv::new();
    env.backend.redis_url = Some(primary.url());
    env.backend.redis_replica_acks = 1;
    let server = env.spawn_server().await;
    let mut first = server.client().await;
    let first_id = submit_until_accepted(&mut first, 5).await;

    let mut clients = Vec::new();
    for _ in 0..4 {
        clients.push(server.client().await);
    }
    replica.signal(libc::SIGSTOP);
    let resumed = std::sync::Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (c, mut client) in clients.into_iter().enumerate() {
        let resumed = resumed.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..10u64 {
                client
                    .send_json(serde_json::json!({"type": "submit", "n": 100 + 10 * c as u64 + i}))
                    .await;
            }
            let mut accepted = Vec::new();
            let mut refused = 0;
            for _ in 0..10 {
                match client.recv().await {
                    ServerMessage::Accepted { id, .. } => {
                        assert!(
                            resumed.load(Ordering::SeqCst),
                            "accepted while the replica was stopped"
                        );
                        accepted.push(id);
                    }
                    ServerMessage::Error(e) if e.code == ErrorCode::Unavailable => refused += 1,
                    other => panic!("unexpected answer to a submit: {other:?}"),
                }
            }
            (accepted, refused)
        }));
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    resumed.store(true, Ordering::SeqCst);
    replica.signal(libc::SIGCONT);
    let mut accepted = vec![first_id];
    let mut refused = 0;
    for task in tasks {
        let (ids, count) = task.await.unwrap();
        accepted.extend(ids);
        refused += count;
    }
    assert!(
        accepted.len() > 1,
        "no submit was accepted after the replica ran again"
    );
    for id in &accepted {
        let status = status_on(&replica, &env, id).await;
        assert_eq!(status.as_deref(), Some("queued"), "job {id} on the replica");
    }
    let keys = job_records(&env).await;
    assert_eq!(
        keys.len(),
        accepted.len(),
        "one record per accepted job ({refused} refused)"
    );
}

#[tokio::test]
async fn a_server_and_a_worker_started_before_their_backends_wait_for_them() {
    let env = TestEnv::new();
    let broker = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let redis = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    broker.cut();
    redis.cut();
    let mut args = env.backend_flags(&broker.amqp_url(), &redis.redis_url());
    let mut worker = Process::start("herald-worker", &args);
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let server = Process::start("herald-server", &args);
    for (process, name) in [(&server, "server"), (&worker, "worker")] {
        let waiting = format!("cannot use Redis at {} (--redis-url) yet (", redis.addr);
        eventually(&format!("the {name} to say it waits for redis"), || {
            std::future::ready(process.log_text().contains(&waiting))
        })
        .await;
    }
    redis.restore();
    for (process, name) in [(&server, "server"), (&worker, "worker")] {
        let waiting = format!(
            "cannot use RabbitMQ at {} (--amqp-url) yet (could not connect to any node ({}",
            broker.addr, broker.addr
        );
        eventually(&format!("the {name} to say it waits for rabbitmq"), || {
            std::future::ready(process.log_text().contains(&waiting))
        })
        .await;
    }
    assert!(!server.log_text().contains("guest:guest"));
    broker.restore();
    let addr = server.server_addr().await;
    let mut client = crate::helpers::Client::connect(&format!("ws://{addr}/ws")).await;
    let id = client.submit(10).await;
    assert_eq!(client.output_of(id).await, "3628800");
    worker.terminate();
    assert!(worker.wait().await.success());
}

#[tokio::test]
async fn a_list_of_rabbitmq_urls_moves_on_to_the_next_node_when_one_goes_away() {
    let mut env = TestEnv::new();
    let first = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let second = Proxy::start("127.0.0.1:5672".parse().unwrap()).await;
    env.backend.amqp_url = Some(format!("{},{}", first.amqp_url(), second.amqp_url()));
    let server = env.spawn_app(1).await;
    let mut client = server.client().await;
    let id = client.submit(5).await;
    assert_eq!(client.output_of(id).await, "120");
    // The first node goes away for good: the server and the worker move to the second.
    first.cut();
    let id = submit_until_accepted(&mut client, 6).await;
    assert_eq!(client.output_of(id).await, "720");
    // Clean up through the broker itself.
    env.backend.amqp_url = Some(AMQP_URL.to_owned());
}
