//! Herald on a real cluster: three RabbitMQ nodes, and a Redis primary with a replica and three
//! Sentinels, all started by `scripts/cluster.sh start` on loopback. While jobs flow through two servers
//! and two worker processes, the node that leads the job queue is stopped, the Redis primary is killed
//! with SIGKILL, and a soak mixes those faults with worker kills and dropped sockets. Every accepted job
//! must reach exactly one correct result; clients may only hear `unavailable` meanwhile.
//!
//! The tests stop and start the cluster's nodes, so they run one at a time, in their own binary that
//! `cargo test` leaves out; `scripts/test.sh` starts the cluster, runs them and stops it. By hand:
//!
//! ```sh
//! eval "$(scripts/cluster.sh start)"
//! cargo test -p herald-tests --test cluster -- --test-threads=1 --nocapture
//! scripts/cluster.sh stop
//! ```

// The integration tests' fixtures; this binary uses some of them.
#[allow(dead_code)]
mod helpers;
// The soaks' clients, shared with tests/soak.rs.
#[allow(dead_code)]
mod load;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use helpers::{Process, TestEnv, TestServer, PATIENCE};
use load::{client, Shared, Tally, Xs};

const CLIENTS: usize = 6;
const WINDOW: usize = 12;
const MAX_N: u64 = 2000;

/// A variable that `scripts/cluster.sh start` prints; the tests cannot run without it.
fn var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: start the cluster first with eval \"$(scripts/cluster.sh start)\" \
             (scripts/test.sh does)"
        )
    })
}

/// An isolated environment on the cluster, with `replica_acks` replicas per new and final record.
fn cluster_env(replica_acks: u32) -> TestEnv {
    let mut env = TestEnv::new();
    env.backend.amqp_url = Some(var("HERALD_AMQP_URL"));
    env.backend.redis_url = None;
    env.backend.redis_sentinel = Some(var("HERALD_REDIS_SENTINEL"));
    env.backend.redis_master_name = Some(var("HERALD_REDIS_MASTER_NAME"));
    env.backend.redis_replica_acks = replica_acks;
    env
}

/// Runs `scripts/cluster.sh` with `args`; its stdout.
async fn cluster(args: &[&str]) -> String {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
    let output = tokio::process::Command::new(script)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .expect("scripts/cluster.sh runs");
    assert!(
        output.status.success(),
        "scripts/cluster.sh {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// The flags that put a worker process on the cluster, in `env`.
fn worker_flags(env: &TestEnv) -> Vec<String> {
    let b = &env.backend;
    [
        ("--amqp-url", b.amqp_url.clone().unwrap()),
        ("--redis-sentinel", b.redis_sentinel.clone().unwrap()),
        ("--redis-master-name", b.redis_master_name.clone().unwrap()),
        ("--redis-replica-acks", b.redis_replica_acks.to_string()),
        ("--queue", b.queue.clone()),
        ("--reply-exchange", b.reply_exchange.clone()),
        ("--redis-prefix", b.redis_prefix.clone()),
        ("--concurrency", "2".to_owned()),
    ]
    .into_iter()
    .flat_map(|(flag, value)| [flag.to_owned(), value])
    .collect()
}

/// Jobs flowing through the servers while a test injects faults.
struct Load {
    tally: Arc<Tally>,
    drops: Vec<Arc<Notify>>,
    budget: Arc<AtomicUsize>,
    clients: tokio::task::JoinSet<()>,
    started: Instant,
}

impl Load {
    fn start(servers: &[TestServer], jobs: usize) -> Self {
        let urls = servers.iter().map(|s| s.ws_url()).collect::<Vec<_>>();
        let shared = Shared::new(urls, jobs, WINDOW, MAX_N);
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
        Self {
            tally: shared.tally,
            drops,
            budget: shared.budget,
            clients,
            started: Instant::now(),
        }
    }

    fn accepted(&self) -> usize {
        self.tally.accepted.load(Ordering::Relaxed)
    }

    fn jobs_left(&self) -> usize {
        self.budget.load(Ordering::Relaxed)
    }

    /// Waits until `more` further jobs were accepted (or the budget ran out).
    async fn until_accepted(&self, more: usize) {
        let target = self.accepted() + more;
        let deadline = Instant::now() + PATIENCE * 2;
        while self.accepted() < target && self.jobs_left() > 0 {
            assert!(Instant::now() < deadline, "jobs stopped being accepted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits for every client to finish (within a generous limit: what is still awaited after it is
    /// counted lost), then prints the counts and checks that nothing was lost, duplicated or wrong.
    async fn finish(mut self, what: &str, faults: &str) {
        let deadline = tokio::time::Instant::now() + PATIENCE * 4;
        while !self.clients.is_empty() {
            match tokio::time::timeout_at(deadline, self.clients.join_next()).await {
                Ok(joined) => joined.unwrap().expect("a client panicked"),
                Err(_) => break,
            }
        }
        self.clients.abort_all();
        let t = &self.tally;
        let lost = t.waiting.lock().unwrap().len();
        let accepted = self.accepted();
        let (duplicated, wrong) = (
            t.duplicated.load(Ordering::Relaxed),
            t.wrong.load(Ordering::Relaxed),
        );
        eprintln!(
            "{what}: accepted {accepted}, results {}, lost {lost}, duplicated to a socket {duplicated}, \
             wrong {wrong}, unavailable answers {}, busy answers {}, other errors {}, submits lost with \
             their socket {}; faults: {faults}; {:.1} s",
            t.results.load(Ordering::Relaxed),
            t.unavailable.load(Ordering::Relaxed),
            t.busy.load(Ordering::Relaxed),
            t.other_errors.lock().unwrap().len(),
            t.unanswered_submits.load(Ordering::Relaxed),
            self.started.elapsed().as_secs_f64()
        );
        // Nothing lost, duplicated or wrong; no error but unavailable (not even busy).
        t.check(false);
        assert!(accepted > 0);
    }
}

/// Two servers on the cluster and two worker processes.
async fn herald(env: &TestEnv) -> (Vec<TestServer>, Vec<Process>) {
    let mut servers = Vec::new();
    for _ in 0..2 {
        servers.push(env.spawn_server().await);
    }
    let workers = (0..2)
        .map(|_| Process::start("herald-worker", &worker_flags(env)))
        .collect();
    (servers, workers)
}

/// Stops RabbitMQ node `node` and waits for the job queue to have another leader, then starts it again
/// once `while_down` is done.
async fn with_rabbit_node_down<F: std::future::Future<Output = ()>>(
    env: &TestEnv,
    node: &str,
    while_down: F,
) {
    cluster(&["stop-rabbit", node]).await;
    helpers::eventually("another node to lead the job queue", || async {
        cluster(&["queue-leader", &env.factorial_queue()]).await != node
    })
    .await;
    while_down.await;
    cluster(&["start-rabbit", node]).await;
}

/// Kills the Redis primary and waits for Sentinel to promote the replica, then starts the old primary
/// again (as a replica of the new one) once `while_down` is done.
async fn with_redis_primary_killed<F: std::future::Future<Output = ()>>(while_down: F) {
    let killed = cluster(&["kill-redis-primary"]).await;
    helpers::eventually("sentinel to promote the replica", || async {
        cluster(&["primary"]).await != killed
    })
    .await;
    while_down.await;
    cluster(&["start-redis"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_the_node_that_leads_the_job_queue_loses_no_accepted_job() {
    let env = cluster_env(0);
    let (servers, _workers) = herald(&env).await;
    let load = Load::start(&servers, 1500);
    load.until_accepted(300).await;
    let leader = cluster(&["queue-leader", &env.factorial_queue()]).await;
    with_rabbit_node_down(&env, &leader, load.until_accepted(400)).await;
    load.finish(
        "rabbitmq leader stopped",
        &format!("RabbitMQ node {leader} (the queue's leader) stopped and started again"),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_redis_primary_loses_no_accepted_job_with_one_replica_ack() {
    let env = cluster_env(1);
    let (servers, _workers) = herald(&env).await;
    let load = Load::start(&servers, 1500);
    load.until_accepted(300).await;
    with_redis_primary_killed(tokio::time::sleep(Duration::from_secs(2))).await;
    load.until_accepted(300).await;
    load.finish(
        "redis primary killed",
        "the Redis primary killed with SIGKILL, the replica promoted, the old primary back as replica",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_node_faults_worker_kills_and_dropped_sockets() {
    let env = cluster_env(1);
    let (servers, mut workers) = herald(&env).await;
    let load = Load::start(&servers, 12_000);
    let mut rng = Xs(0x5eed_f00d);
    let (mut rabbit_stops, mut redis_kills, mut worker_kills, mut dropped) = (0, 0, 0, 0);
    // Each kind of fault in turn, the short ones first, so that the run meets all of them (checked
    // below: a soak whose jobs ran out before a kind of fault came proves nothing about it).
    let plan = ["redis", "worker", "drop", "rabbit", "worker", "drop"];
    for fault in plan.iter().cycle() {
        if load.jobs_left() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300 + rng.below(700))).await;
        match *fault {
            "rabbit" => {
                let node = (1 + rng.below(3)).to_string();
                with_rabbit_node_down(&env, &node, load.until_accepted(100)).await;
                rabbit_stops += 1;
            }
            "redis" => {
                with_redis_primary_killed(tokio::time::sleep(Duration::from_secs(1))).await;
                redis_kills += 1;
            }
            "worker" => {
                let i = rng.below(2) as usize;
                workers[i].kill().await;
                workers[i] = Process::start("herald-worker", &worker_flags(&env));
                worker_kills += 1;
            }
            _ => {
                load.drops[rng.below(CLIENTS as u64) as usize].notify_one();
                dropped += 1;
            }
        }
    }
    assert!(
        rabbit_stops > 0 && redis_kills > 0 && worker_kills > 0 && dropped > 0,
        "every kind of fault met the load: {rabbit_stops} RabbitMQ stops, {redis_kills} Redis \
         kills, {worker_kills} worker kills, {dropped} drops"
    );
    load.finish(
        "soak with node faults",
        &format!(
            "{rabbit_stops} RabbitMQ node stops, {redis_kills} Redis primary kills, \
             {worker_kills} worker kills, {dropped} client sockets dropped"
        ),
    )
    .await;
    drop(workers);
    drop(servers);
}
