//! Soak: thousands of jobs through two servers and two worker processes while workers are killed, the
//! servers' RabbitMQ connections are cut and client sockets are dropped, all at random. At the end every
//! accepted ID has exactly one correct result and Redis holds nothing but finished, expiring records.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use herald_protocol::{ErrorCode, JobId, ServerMessage};
use num_bigint::BigUint;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{Proxy, TestEnv, PATIENCE};

const JOBS: usize = 10_000;
const CLIENTS: usize = 8;
const WINDOW: usize = 16;
const MAX_N: u64 = 3000;

/// What the clients saw, summed.
#[derive(Default)]
struct Tally {
    /// Jobs some client still waits for, with the client's number (for diagnosing a stall).
    waiting: Mutex<HashMap<JobId, usize>>,
    accepted: AtomicUsize,
    results: AtomicUsize,
    refused: AtomicUsize,
    unanswered_submits: AtomicUsize,
    reconnects: AtomicUsize,
}

struct Xs(u64);
impl Xs {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn reference(n: u64, cache: &Mutex<HashMap<u64, Arc<str>>>) -> Arc<str> {
    if let Some(hit) = cache.lock().unwrap().get(&n) {
        return hit.clone();
    }
    let value: Arc<str> = (1..=n)
        .fold(BigUint::from(1u32), |acc, k| acc * k)
        .to_string()
        .into();
    cache.lock().unwrap().insert(n, value.clone());
    value
}

/// One client: keeps up to WINDOW jobs in flight, reconnects (to either server) when its socket drops
/// or is dropped, resumes what it still waits for, and checks every result.
async fn client(
    client_no: usize,
    seed: u64,
    urls: Arc<Vec<String>>,
    budget: Arc<AtomicUsize>,
    drop_now: Arc<Notify>,
    tally: Arc<Tally>,
    cache: Arc<Mutex<HashMap<u64, Arc<str>>>>,
) {
    let mut rng = Xs(seed);
    let mut pending: HashMap<JobId, u64> = HashMap::new();
    let mut finished: HashMap<JobId, u64> = HashMap::new();
    loop {
        let url = &urls[rng.below(urls.len() as u64) as usize];
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tally.reconnects.fetch_add(1, Ordering::Relaxed);
        for id in pending.keys() {
            let frame = serde_json::json!({"type":"resume","id":id}).to_string();
            if ws.send(Message::text(frame)).await.is_err() {
                break;
            }
        }
        let mut submits_in_flight = 0usize;
        let mut retry_at = Instant::now();
        loop {
            if pending.len() + submits_in_flight < WINDOW && Instant::now() >= retry_at {
                let taken = budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .is_ok();
                if taken {
                    let n = rng.below(MAX_N + 1);
                    let frame = serde_json::json!({"type":"submit","n":n,"ref":n.to_string()});
                    if ws.send(Message::text(frame.to_string())).await.is_err() {
                        budget.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    submits_in_flight += 1;
                    continue;
                }
            }
            if pending.is_empty() && submits_in_flight == 0 && budget.load(Ordering::Relaxed) == 0 {
                let _ = ws.close(None).await;
                return;
            }
            let message = tokio::select! {
                _ = drop_now.notified() => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                message = ws.next() => message,
            };
            let Some(Ok(Message::Text(text))) = message else {
                match message {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => break,
                }
            };
            match serde_json::from_str::<ServerMessage>(&text).expect("valid server message") {
                ServerMessage::Accepted { id, n, tag, .. } => {
                    let n = n.expect("a factorial job's accepted carries n");
                    assert_eq!(tag, Some(n.to_string()));
                    submits_in_flight -= 1;
                    pending.insert(id, n);
                    tally.waiting.lock().unwrap().insert(id, client_no);
                    tally.accepted.fetch_add(1, Ordering::Relaxed);
                }
                ServerMessage::Error(e) if e.tag.is_some() => {
                    assert!(
                        matches!(e.code, ErrorCode::Unavailable | ErrorCode::Busy),
                        "{e:?}"
                    );
                    submits_in_flight -= 1;
                    budget.fetch_add(1, Ordering::Relaxed);
                    tally.refused.fetch_add(1, Ordering::Relaxed);
                    retry_at = Instant::now() + Duration::from_millis(100);
                }
                ServerMessage::Error(e) => {
                    // A resume met an outage: ask again after reconnecting.
                    assert_eq!(e.code, ErrorCode::Unavailable, "{e:?}");
                    break;
                }
                ServerMessage::Status { id, .. } | ServerMessage::Progress { id, .. } => {
                    assert!(pending.contains_key(&id))
                }
                ServerMessage::Result(result) => {
                    assert!(
                        !finished.contains_key(&result.id),
                        "a second result for {}",
                        result.id
                    );
                    let n = pending
                        .remove(&result.id)
                        .unwrap_or_else(|| panic!("a result for an unknown job {}", result.id));
                    match result.outcome.output_text() {
                        Some(output) => assert_eq!(*output, *reference(n, &cache)),
                        None => panic!("job {} ended {:?}", result.id, result.outcome),
                    }
                    finished.insert(result.id, n);
                    tally.waiting.lock().unwrap().remove(&result.id);
                    tally.results.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        // Submits sent on the lost socket may or may not have been taken: their IDs never reached us.
        tally
            .unanswered_submits
            .fetch_add(submits_in_flight, Ordering::Relaxed);
    }
}

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
    let urls = Arc::new(servers.iter().map(|s| s.ws_url()).collect::<Vec<_>>());
    let worker_args = ["--concurrency", "2"];
    let mut workers = [
        env.start_worker_process(&worker_args),
        env.start_worker_process(&worker_args),
    ];

    let budget = Arc::new(AtomicUsize::new(JOBS));
    let tally = Arc::new(Tally::default());
    let cache = Arc::new(Mutex::new(HashMap::new()));
    let drops: Vec<Arc<Notify>> = (0..CLIENTS).map(|_| Arc::new(Notify::new())).collect();
    let mut clients = tokio::task::JoinSet::new();
    for (i, drop_now) in drops.iter().enumerate() {
        clients.spawn(client(
            i,
            0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1),
            urls.clone(),
            budget.clone(),
            drop_now.clone(),
            tally.clone(),
            cache.clone(),
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
                        let w: Vec<String> = redis::cmd("SMEMBERS")
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
                joined.unwrap().expect("a client found a fault");
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
