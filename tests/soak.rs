//! Soak: thousands of jobs through two servers and two worker processes while workers are killed, the
//! servers' RabbitMQ connections are cut and client sockets are dropped, all at random. At the end every
//! accepted ID has exactly one correct result and Redis holds nothing but finished, expiring records.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use herald_protocol::JobId;
use tokio::sync::Notify;

use crate::helpers::{Proxy, TestEnv, PATIENCE};
use crate::load::{client, Shared, Xs};

const JOBS: usize = 10_000;
const CLIENTS: usize = 8;
const WINDOW: usize = 16;
const MAX_N: u64 = 3000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_thousands_of_jobs_through_kills_and_cuts() {
    let started = Instant::now();
    let env = TestEnv::new();
    let proxies = [
        Proxy::start("127.0.0.1:5672".parse().unwrap()).await,
        Proxy::start("127.0.0.1:5672".parse().unwrap()).await,
    ];
    let mut servers = Vec::new();
    for proxy in &proxies {
        let mut settings = env.server_settings();
        settings.backend.amqp_url = Some(proxy.amqp_url());
        servers.push(env.spawn_server_with(settings).await);
    }
    let urls = servers.iter().map(|s| s.ws_url()).collect::<Vec<_>>();
    let worker_args = ["--concurrency", "2"];
    let mut workers = [
        env.start_worker_process(&worker_args),
        env.start_worker_process(&worker_args),
    ];

    let shared = Shared::new(urls, JOBS, WINDOW, MAX_N);
    let (budget, tally) = (shared.budget.clone(), shared.tally.clone());
    let drops: Vec<Arc<Notify>> = (0..CLIENTS).map(|_| Arc::new(Notify::new())).collect();
    let mut clients = tokio::task::JoinSet::new();
    for (i, drop_now) in drops.iter().enumerate() {
        clients.spawn(client(
            i,
            0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
            shared.clone(),
            drop_now.clone(),
        ));
    }

    let (mut kills, mut cuts, mut dropped) = (0, 0, 0);
    let mut rng = Xs(0xdead_beef);
    let deadline = Instant::now() + PATIENCE * 4;
    let mut last_report = Instant::now();
    while !clients.is_empty() {
        if last_report.elapsed() > Duration::from_secs(5) {
            last_report = Instant::now();
            eprintln!(
                "soak progress: accepted {}, results {}, refused {}, budget left {}, clients left {}",
                tally.accepted.load(Ordering::Relaxed),
                tally.results.load(Ordering::Relaxed),
                tally.refused.load(Ordering::Relaxed),
                budget.load(Ordering::Relaxed),
                clients.len()
            );
        }
        if Instant::now() >= deadline {
            let waiting: Vec<(JobId, usize)> = tally
                .waiting
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (*k, *v))
                .take(10)
                .collect();
            for (id, client_no) in &waiting {
                eprintln!(
                    "stalled: client {client_no} waits for {id}: status {:?}, attempts {:?}, watchers {:?}",
                    env.record_field(id, "status").await,
                    env.record_field(id, "attempts").await,
                    {
                        let mut redis = env.redis().await;
                        let w: HashMap<String, String> = redis::cmd("HGETALL")
                            .arg(env.backend.keys().watchers(id))
                            .query_async(&mut redis)
                            .await
                            .unwrap();
                        w
                    }
                );
            }
            eprintln!(
                "servers: {:?}",
                servers
                    .iter()
                    .map(|s| s.instance.clone())
                    .collect::<Vec<_>>()
            );
            panic!("the soak did not finish in time");
        }
        tokio::select! {
            joined = clients.join_next() => {
                joined.unwrap().expect("a client panicked");
                continue;
            }
            _ = tokio::time::sleep(Duration::from_millis(150 + rng.below(300))) => {}
        }
        if budget.load(Ordering::Relaxed) == 0 {
            continue; // no more chaos while the last results drain
        }
        match rng.below(3) {
            0 => {
                let i = rng.below(2) as usize;
                workers[i].kill().await;
                workers[i] = env.start_worker_process(&worker_args);
                kills += 1;
            }
            1 => {
                let proxy = &proxies[rng.below(2) as usize];
                proxy.cut();
                tokio::time::sleep(Duration::from_millis(200 + rng.below(400))).await;
                proxy.restore();
                cuts += 1;
            }
            _ => {
                drops[rng.below(CLIENTS as u64) as usize].notify_one();
                dropped += 1;
            }
        }
    }

    // Every result came once and right; submits were refused only as unavailable or busy.
    tally.check(true);
    let accepted = tally.accepted.load(Ordering::Relaxed);
    let unanswered = tally.unanswered_submits.load(Ordering::Relaxed);
    assert_eq!(accepted, tally.results.load(Ordering::Relaxed));
    // Each submit was accepted, or lost with its socket before the answer came (refusals were retried).
    assert_eq!(accepted + unanswered, JOBS);

    // Redis holds one finished record per job taken (accepted, or taken while its answer was lost),
    // plus watcher counts, cached results, stored outputs and client counts, and every key expires.
    let mut redis = env.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", env.backend.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    let job_prefix = format!("{}job:", env.backend.redis_prefix);
    let watch_prefix = format!("{}watch:", env.backend.redis_prefix);
    let result_prefix = format!("{}result:", env.backend.redis_prefix);
    let output_prefix = format!("{}output:", env.backend.redis_prefix);
    let client_prefix = format!("{}client:", env.backend.redis_prefix);
    let workers = format!("{}workers", env.backend.redis_prefix);
    let mut records = 0;
    for key in &keys {
        let ttl: i64 = redis::cmd("PTTL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(ttl > 0, "{key} does not expire");
        if key.starts_with(&job_prefix) {
            records += 1;
            let status: String = redis::cmd("HGET")
                .arg(key)
                .arg("status")
                .query_async(&mut redis)
                .await
                .unwrap();
            assert_eq!(status, "done", "{key} never finished");
        } else {
            // Besides records: watcher counts, cached results of identical inputs, the stored
            // outputs, each client's counts, and the workers' announcements; all expire.
            assert!(
                key.starts_with(&watch_prefix)
                    || key.starts_with(&result_prefix)
                    || key.starts_with(&output_prefix)
                    || key.starts_with(&client_prefix)
                    || *key == workers,
                "unexpected key {key}"
            );
        }
    }
    assert!(records >= accepted && records <= accepted + unanswered);
    eprintln!(
        "soak: {accepted} jobs accepted and answered once each; {} submits refused (busy/unavailable) \
         and retried; {unanswered} submits lost with their socket; {records} records in Redis; \
         {kills} worker kills, {cuts} RabbitMQ cuts, {dropped} client sockets dropped, {} connections; \
         {:.1} s",
        tally.refused.load(Ordering::Relaxed),
        tally.reconnects.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}
