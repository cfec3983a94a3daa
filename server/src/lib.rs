//! Herald's server: takes jobs over WebSocket (and the classic HTTP API), queues them in RabbitMQ, and
//! pushes each result to the sockets that wait for it, on whichever instance they are connected to.
//!
//! Without RabbitMQ and Redis it runs embedded: an in-process queue, store and worker pool behind the
//! same interfaces, running the same job code.

pub mod auth;
pub mod broker;
pub mod capacity;
pub mod heartbeat;
pub mod http;
pub mod hub;
pub mod jobs;
pub mod limits;
pub mod listener;
pub mod mailbox;
pub mod metrics;
pub mod origin;
pub mod session;
pub mod settings;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use herald_engine::memory::{self, MemoryQueue, MemoryStore};
use herald_engine::metrics::WorkerMetrics;
use herald_engine::{
    JobContext, JobLimits, JobStore, RedisStore, SettingsError, Store, StoreError,
};
use herald_protocol::JobMessage;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use settings::Settings;

/// Counters an operator (and the tests) can read.
#[derive(Debug, Default)]
pub struct Stats {
    /// Completions received on this instance's reply queue.
    pub completions_received: AtomicU64,
    /// Completions that reached at least one socket.
    pub completions_delivered: AtomicU64,
    /// Sockets closed because their client did not read fast enough.
    pub sockets_closed_slow: AtomicU64,
}

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A setting cannot work.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Redis cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// RabbitMQ cannot be used at start-up.
    #[error("rabbitmq: {0}")]
    Broker(#[from] lapin::Error),
    /// The listening socket failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
}

/// What every handler and session shares.
#[derive(Clone)]
pub struct AppState {
    /// The validated settings.
    pub settings: Arc<Settings>,
    /// Job intake.
    pub jobs: jobs::Jobs,
    /// Local watchers.
    pub hub: Arc<hub::Hub>,
    /// Cancelled when the server stops.
    pub shutdown: CancellationToken,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Checks tokens; `None` when authentication is off.
    pub auth: Option<Arc<auth::Authenticator>>,
    /// Which pages may open a WebSocket.
    pub origins: Arc<origin::OriginPolicy>,
    /// Abuse limits per client.
    pub limits: Arc<limits::Limits>,
    /// Prometheus metrics.
    pub metrics: Arc<metrics::ServerMetrics>,
    /// Where the metrics are registered.
    pub registry: Arc<Registry>,
}

impl AppState {
    /// Who sent a request with `token` from `peer`: its identity (with authentication on), and the key
    /// its limits count against.
    pub fn caller(
        &self,
        token: Option<&str>,
        peer: std::net::IpAddr,
    ) -> Result<auth::Caller, auth::AuthError> {
        Ok(match &self.auth {
            None => auth::Caller {
                identity: None,
                key: auth::ClientKey::for_address(peer),
            },
            Some(authenticator) => {
                let identity = authenticator.verify(token)?;
                auth::Caller {
                    key: auth::ClientKey::Identity(identity.clone()),
                    identity: Some(identity),
                }
            }
        })
    }
}

/// How often idle clients are dropped from the rate limiter's table.
const FORGET_IDLE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How often embedded mode drops expired records.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// In-process jobs per computation slot in embedded mode: small jobs are mostly waiting, so more of
/// them must be in hand than there are cores (as the worker's AMQP prefetch).
const EMBEDDED_JOBS_PER_SLOT: usize = 32;

/// Longest wait for embedded jobs to finish when the server stops.
const EMBEDDED_GRACE: Duration = Duration::from_secs(5);

/// What the server runs on.
enum Backend {
    /// RabbitMQ and Redis, shared with workers and other instances.
    Distributed {
        broker: Arc<broker::Broker>,
        connected: Box<broker::Connected>,
    },
    /// Everything in this process.
    Embedded {
        context: JobContext,
        jobs: mpsc::Receiver<JobMessage>,
        store: Arc<MemoryStore>,
        in_flight: usize,
    },
}

/// A server bound to its port and connected to its backends, ready to [`run`](Application::run).
pub struct Application {
    listener: TcpListener,
    state: AppState,
    backend: Backend,
    max_connections: u32,
}

impl Application {
    /// Validates the settings, connects to Redis and RabbitMQ, and binds the listening socket.
    pub async fn build(settings: Settings) -> Result<Self, ServerError> {
        settings.validate()?;
        let auth = if settings.auth_enabled() {
            let authenticator =
                auth::Authenticator::new(settings.static_tokens()?, settings.jwt_secret.as_ref());
            info!(
                static_tokens = authenticator.static_tokens(),
                jwt = authenticator.accepts_jwt(),
                "authentication is on: jobs belong to the identity that submitted them"
            );
            Some(Arc::new(authenticator))
        } else {
            warn!(
                "authentication is OFF: anyone who can reach this server may submit jobs and read any \
                 job by its ID; set --auth-tokens, --auth-tokens-file or --jwt-secret before exposing it"
            );
            None
        };
        let origins = origin::OriginPolicy::new(settings.origins()?);
        let limits = limits::Limits::new(
            settings.submit_rate,
            settings.submit_burst,
            settings.max_sockets_per_client,
        );
        let mut registry = Registry::default();
        let metrics = Arc::new(metrics::ServerMetrics::new(&mut registry));
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let hub: Arc<hub::Hub> = Arc::default();
        let stats: Arc<Stats> = Arc::default();
        let (store, queue, notifier, backend): (
            Store,
            Arc<dyn herald_engine::JobQueue>,
            Arc<dyn herald_engine::Notifier>,
            Backend,
        ) = if settings.embedded()? {
            info!(
                    concurrency = settings.concurrency(),
                    "EMBEDDED mode: jobs are queued, computed and kept in this process (nothing \
                     survives a restart, and no other instance can share them); to scale out, start \
                     with --amqp-url and --redis-url (HERALD_AMQP_URL, HERALD_REDIS_URL) and run \
                     herald-worker processes"
                );
            let memory_store = Arc::new(MemoryStore::new());
            let store: Store = memory_store.clone();
            let capacity = settings.backend.max_queue_length as usize;
            let (queue, jobs) = MemoryQueue::new(capacity);
            let notifier = Arc::new(hub::HubNotifier {
                hub: hub.clone(),
                store: store.clone(),
                stats: stats.clone(),
            });
            let context = JobContext {
                store: store.clone(),
                notifier: notifier.clone(),
                metrics: Arc::new(WorkerMetrics::new(&mut registry)),
                limits: JobLimits {
                    max_n: settings.backend.max_n,
                    max_attempts: 3,
                    time_limit: Duration::from_secs(settings.job_time_limit_secs),
                },
                slots: Arc::new(Semaphore::new(settings.concurrency())),
                stop: CancellationToken::new(),
                cache: herald_engine::cache::Cache::default(),
            };
            let backend = Backend::Embedded {
                context,
                jobs,
                store: memory_store,
                in_flight: settings.concurrency() * EMBEDDED_JOBS_PER_SLOT,
            };
            (store, Arc::new(queue), notifier, backend)
        } else {
            let backend = &settings.backend;
            let redis = RedisStore::new(backend.redis_url(), backend.keys())?;
            redis.ping().await?;
            let store: Store = Arc::new(redis);
            let config = broker::BrokerConfig {
                url: backend.amqp_url().into(),
                queue: backend.queue.clone(),
                max_queue_length: backend.max_queue_length,
                reply_exchange: backend.reply_exchange.clone(),
                instance: instance.clone(),
            };
            let connected = broker::Connected::open(&config).await?;
            let broker = Arc::new(broker::Broker::new(config, &connected));
            let notifier = broker.notifier.clone();
            (
                store,
                broker.clone(),
                notifier,
                Backend::Distributed {
                    broker,
                    connected: Box::new(connected),
                },
            )
        };
        let max_connections = capacity::plan(settings.max_connections);
        let listener = TcpListener::bind(settings.listen).await?;
        let state = AppState {
            jobs: jobs::Jobs {
                store,
                queue,
                notifier,
                instance,
                ttl: settings.job_ttl(),
            },
            settings: Arc::new(settings),
            hub,
            shutdown: CancellationToken::new(),
            stats,
            auth,
            origins: Arc::new(origins),
            limits: Arc::new(limits),
            metrics,
            registry: Arc::new(registry),
        };
        Ok(Self {
            listener,
            state,
            backend,
            max_connections,
        })
    }

    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// This instance's routing key on the reply exchange.
    pub fn instance(&self) -> &str {
        &self.state.jobs.instance
    }

    /// This instance's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.state.stats.clone()
    }

    /// Serves until `shutdown` is cancelled: then every socket gets a Close frame (1001) and the server
    /// returns once every connection is closed (or 10 s have passed).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), ServerError> {
        let Self {
            listener,
            mut state,
            backend,
            max_connections,
        } = self;
        state.shutdown = shutdown.clone();
        let backend_task = match backend {
            Backend::Distributed { broker, connected } => tokio::spawn(broker.supervise(
                *connected,
                state.hub.clone(),
                state.jobs.store.clone(),
                state.stats.clone(),
                shutdown.clone(),
            )),
            Backend::Embedded {
                context,
                jobs,
                store,
                in_flight,
            } => {
                let stopped = shutdown.clone();
                tokio::spawn(async move {
                    let mut every = tokio::time::interval(SWEEP_EVERY);
                    loop {
                        tokio::select! {
                            _ = stopped.cancelled() => return,
                            _ = every.tick() => { store.sweep(); }
                        }
                    }
                });
                tokio::spawn(memory::run_pool(
                    context,
                    jobs,
                    in_flight,
                    shutdown.clone(),
                    EMBEDDED_GRACE,
                ))
            }
        };
        let limits = state.limits.clone();
        let stopped = shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(FORGET_IDLE_EVERY);
            loop {
                tokio::select! {
                    _ = stopped.cancelled() => return,
                    _ = every.tick() => limits.forget_idle(),
                }
            }
        });
        info!("listening on http://{}", listener.local_addr()?);
        let serving = listener::Serving {
            max_connections,
            header_timeout: state.settings.header_timeout(),
            request_timeout: state.settings.request_timeout(),
            limits: state.limits.clone(),
            metrics: state.metrics.clone(),
        };
        listener::serve(listener, http::router(state), serving, shutdown).await;
        let _ = backend_task.await;
        Ok(())
    }
}
