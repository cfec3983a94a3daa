//! What the server runs on, built from its settings: RabbitMQ and Redis shared with workers and other
//! instances (distributed mode), or an in-process queue, store and worker pool (embedded mode). Both
//! give the same interfaces to the sessions and the HTTP API.

use std::sync::Arc;
use std::time::Duration;

use herald_engine::connect::{self, AmqpNodes};
use herald_engine::deliveries::Deliveries;
use herald_engine::durable::DurableStore;
use herald_engine::fair::FairQueue;
use herald_engine::idempotency::Keys;
use herald_engine::idempotency_memory::LocalKeys;
use herald_engine::memory::{self, MemoryQueue, MemoryStore};
use herald_engine::metrics::WorkerMetrics;
use herald_engine::startup::{self, SERVER_BACKEND_HINT};
use herald_engine::{JobContext, JobLimits, JobQueue, Notifier, RedisStore, StartupError, Store};
use herald_models::Factorial;
use herald_protocol::JobMessage;
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::directory::Directory;
use crate::hub::{self, Hub};
use crate::{broker, ServerError, Settings, Stats};

/// Longest time between two sweeps of expired records in embedded mode.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// How often embedded mode drops expired records: every minute, or four times per TTL when that is
/// shorter, so that what expired leaves the data directory soon after.
fn sweep_every(ttl: Duration) -> Duration {
    (ttl / 4).clamp(Duration::from_secs(1), SWEEP_EVERY)
}

/// In-process jobs per computation slot in embedded mode: small jobs are mostly waiting, so more of
/// them must be in hand than there are cores (as the worker's AMQP prefetch).
const EMBEDDED_JOBS_PER_SLOT: usize = 32;

/// Longest wait for embedded jobs to finish when the server stops.
const EMBEDDED_GRACE: Duration = Duration::from_secs(5);

/// The backends' interfaces, and what must run for them.
pub struct Backends {
    /// The job store.
    pub store: Store,
    /// Where jobs are queued.
    pub queue: Arc<dyn JobQueue>,
    /// How this instance tells watchers of a job it ended itself (a cancel of a queued job).
    pub notifier: Arc<dyn Notifier>,
    /// The models jobs may name.
    pub directory: Arc<Directory>,
    /// Idempotency keys, next to the records.
    pub keys: Keys,
    /// Pending webhook deliveries, next to the records.
    pub deliveries: Deliveries,
    /// What must run while the server serves.
    pub running: Running,
}

/// What runs besides the sessions.
pub enum Running {
    /// The link to RabbitMQ, supervised and reconnected.
    Distributed {
        broker: Arc<broker::Broker>,
        connected: Box<broker::Connected>,
    },
    /// The in-process worker pool, and the sweep of expired records.
    Embedded {
        context: JobContext,
        jobs: Arc<FairQueue>,
        store: Kept,
        in_flight: usize,
        slots: usize,
        /// Jobs found unfinished in the data directory, queued again once the pool runs.
        unfinished: Vec<JobMessage>,
        /// How often expired records are swept.
        sweep_every: Duration,
    },
}

/// Where embedded mode keeps its jobs.
pub enum Kept {
    /// In memory only (--in-memory).
    Memory(Arc<MemoryStore>),
    /// In the data directory.
    Durable(Arc<DurableStore>),
}

impl Kept {
    async fn sweep(&self) {
        match self {
            Self::Memory(store) => {
                store.sweep();
            }
            Self::Durable(store) => {
                if let Err(e) = store.sweep().await {
                    tracing::warn!(error = %e, "could not remove expired records from the data directory");
                }
            }
        }
    }
}

/// Embedded mode: everything in this process. The in-process workers' metrics go to `registry`, and
/// their notices straight to `hub`.
pub async fn embedded(
    settings: &Settings,
    hub: &Arc<Hub>,
    stats: &Arc<Stats>,
    registry: &mut Registry,
) -> Result<Backends, ServerError> {
    let (store, kept, unfinished): (Store, Kept, Vec<JobMessage>) = match settings.data_dir() {
        Some(dir) => {
            let opened = DurableStore::open(&dir, true)
                .await
                .map_err(StartupError::from)?;
            let path = std::path::absolute(opened.store.path())
                .unwrap_or_else(|_| opened.store.path().to_path_buf());
            if opened.unreadable > 0 {
                tracing::warn!(
                    records = opened.unreadable,
                    "skipped job records of the data directory that could not be read"
                );
            }
            info!(
                concurrency = settings.concurrency(),
                database = %path.display(),
                records = opened.store.len(),
                requeued = opened.unfinished.len(),
                "EMBEDDED mode: jobs are queued and computed in this process, and kept in {} \
                 (--data-dir): a restart or a crash keeps every accepted job and stored result; \
                 to scale out, start with --amqp-url and --redis-url (HERALD_AMQP_URL, \
                 HERALD_REDIS_URL) and run herald-worker processes",
                path.display()
            );
            let durable = Arc::new(opened.store);
            durable.register(registry);
            (durable.clone(), Kept::Durable(durable), opened.unfinished)
        }
        None => {
            info!(
                concurrency = settings.concurrency(),
                "EMBEDDED mode, IN MEMORY (--in-memory): jobs are queued, computed and kept in this \
                 process, and a restart loses every one; without --in-memory they are kept in a data \
                 directory (--data-dir); to scale out, start with --amqp-url and --redis-url \
                 (HERALD_AMQP_URL, HERALD_REDIS_URL) and run herald-worker processes"
            );
            let memory = Arc::new(MemoryStore::new());
            memory.register(registry);
            (memory.clone(), Kept::Memory(memory), Vec::new())
        }
    };
    let (queue, jobs) = MemoryQueue::new(settings.backend.max_queue_length as usize);
    let notifier = Arc::new(hub::HubNotifier {
        hub: hub.clone(),
        store: store.clone(),
        stats: stats.clone(),
    });
    let models = settings
        .models
        .build(settings.backend.max_n, settings.concurrency())
        .await?;
    info!(models = ?models.names(), "serving models");
    let context = JobContext {
        store: store.clone(),
        notifier: notifier.clone(),
        metrics: Arc::new(WorkerMetrics::new(registry)),
        limits: JobLimits {
            max_attempts: settings.max_attempts,
            time_limit: Duration::from_secs(settings.job_time_limit_secs),
        },
        slots: Arc::new(Semaphore::new(settings.concurrency())),
        stop: CancellationToken::new(),
        cache: herald_engine::cache::Cache::default(),
        models: models.clone(),
    };
    let (deliveries, keys): (Deliveries, Keys) = match &kept {
        Kept::Memory(memory) => (memory.clone(), Arc::new(LocalKeys::new(store.clone()))),
        // Written to the data directory with the jobs.
        Kept::Durable(durable) => (durable.clone(), durable.clone()),
    };
    let running = Running::Embedded {
        context,
        jobs,
        store: kept,
        in_flight: settings.concurrency() * EMBEDDED_JOBS_PER_SLOT,
        slots: settings.concurrency(),
        unfinished,
        sweep_every: sweep_every(settings.job_ttl()),
    };
    Ok(Backends {
        keys,
        deliveries,
        store,
        queue: Arc::new(queue),
        notifier,
        directory: Arc::new(Directory::embedded(models)),
        running,
    })
}

/// Distributed mode: Redis and RabbitMQ, this instance's reply queue bound with `instance`.
pub async fn distributed(settings: &Settings, instance: &str) -> Result<Backends, ServerError> {
    let backend = &settings.backend;
    if settings.data_dir.is_some() || settings.in_memory {
        tracing::warn!(
            "--data-dir and --in-memory (HERALD_DATA_DIR, HERALD_IN_MEMORY) are ignored by a \
             distributed server: its jobs live in Redis and RabbitMQ"
        );
    }
    if !settings.models.models.is_empty() {
        tracing::warn!(
            "--model (HERALD_MODEL) is ignored by a distributed server: it takes jobs for the models \
             workers announce; give it to herald-worker"
        );
    }
    let (broker_at, redis_at) = (startup::rabbitmq(backend), startup::redis(backend));
    info!(
        amqp = %broker_at,
        redis = %redis_at,
        queue = %backend.queue,
        reply_exchange = %backend.reply_exchange,
        redis_prefix = %backend.redis_prefix,
        "DISTRIBUTED mode: jobs go through RabbitMQ's queues and live in Redis, computed by \
         herald-worker processes started with the same --amqp-url, --redis-url and names"
    );
    // A backend started at the same time (Compose, Kubernetes) may not be up yet: wait for it.
    let redis = connect::wait_for(&redis_at, SERVER_BACKEND_HINT, || RedisStore::open(backend))
        .await
        .map_err(|e| StartupError::backend(redis_at.clone(), e, SERVER_BACKEND_HINT))?;
    redis.check_persistence().await;
    let directory = Arc::new(Directory::distributed(
        Arc::new(Factorial::new(backend.max_n)),
        redis.clone(),
    ));
    directory.refresh().await;
    let config = broker::BrokerConfig {
        nodes: Arc::new(AmqpNodes::new(&backend.amqp_urls())),
        queue: backend.queue.clone(),
        max_queue_length: backend.max_queue_length,
        quorum_group_size: backend.quorum_initial_group_size,
        reply_exchange: backend.reply_exchange.clone(),
        instance: instance.to_owned(),
    };
    let connected = connect::wait_for(&broker_at, SERVER_BACKEND_HINT, || {
        broker::Connected::open(&config)
    })
    .await
    .map_err(|e| StartupError::backend(broker_at.clone(), e, SERVER_BACKEND_HINT))?;
    info!(node = %connected.node, nodes = %config.nodes.addresses(), "connected to rabbitmq");
    let broker = Arc::new(broker::Broker::new(config, &connected));
    let redis = Arc::new(redis);
    Ok(Backends {
        keys: redis.clone(),
        deliveries: redis.clone(),
        store: redis,
        queue: broker.clone(),
        notifier: broker.notifier.clone(),
        directory,
        running: Running::Distributed {
            broker,
            connected: Box::new(connected),
        },
    })
}

impl Running {
    /// Starts what must run until `shutdown`; the handle ends once it has stopped.
    pub fn start(
        self,
        hub: &Arc<Hub>,
        store: &Store,
        stats: &Arc<Stats>,
        shutdown: &CancellationToken,
    ) -> JoinHandle<()> {
        match self {
            Self::Distributed { broker, connected } => tokio::spawn(broker.supervise(
                *connected,
                hub.clone(),
                store.clone(),
                stats.clone(),
                shutdown.clone(),
            )),
            Self::Embedded {
                context,
                jobs,
                store,
                in_flight,
                slots,
                unfinished,
                sweep_every,
            } => {
                let stopped = shutdown.clone();
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(sweep_every);
                    loop {
                        tokio::select! {
                            _ = stopped.cancelled() => return,
                            _ = every.tick() => store.sweep().await,
                        }
                    }
                });
                if !unfinished.is_empty() {
                    // Back in the queue, oldest first, each in its client's lane (so the fair order
                    // holds for them too), as a restarted RabbitMQ delivers its messages again. Past
                    // the queue's cap if need be: they were accepted, and must not be lost.
                    let count = unfinished.len();
                    for job in unfinished {
                        if jobs.push(job, true).is_err() {
                            tracing::warn!("jobs left unfinished: the queue has stopped");
                            break;
                        }
                    }
                    info!(
                        jobs = count,
                        "queued again the jobs left unfinished by the last run"
                    );
                }
                let models = context.models.clone();
                let pool = memory::run_pool(
                    context,
                    jobs,
                    in_flight,
                    slots,
                    shutdown.clone(),
                    EMBEDDED_GRACE,
                );
                tokio::spawn(async move {
                    pool.await;
                    models.shutdown().await;
                })
            }
        }
    }
}
