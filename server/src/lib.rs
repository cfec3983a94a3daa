//! Herald's server: takes jobs over WebSocket (and the classic HTTP API), queues them in RabbitMQ, and
//! pushes each result to the sockets that wait for it, on whichever instance they are connected to.
//!
//! Without RabbitMQ and Redis it runs embedded: an in-process queue, store and worker pool behind the
//! same interfaces, running the same job code.

pub mod auth;
pub mod backend;
pub mod broker;
pub mod buffers;
pub mod capacity;
pub mod directory;
pub mod heartbeat;
pub mod host;
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
pub mod webhook;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use herald_engine::{SettingsError, StartupError, StoreError};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
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
    /// A backend or the listening address cannot be used at start-up.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// Redis cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
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
    /// Which host names requests may address the server by.
    pub hosts: Arc<host::HostPolicy>,
    /// What all sockets together may hold for their clients.
    pub buffers: Arc<buffers::Buffers>,
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

/// A server bound to its port and connected to its backends, ready to [`run`](Application::run).
pub struct Application {
    listener: TcpListener,
    state: AppState,
    running: backend::Running,
    max_connections: u32,
    /// Sends webhooks, if they are on.
    dispatcher: Option<Arc<webhook::dispatch::Dispatcher>>,
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
        let hosts = host::HostPolicy::new(settings.listen.ip(), settings.hosts()?);
        let limits = limits::Limits::new(
            settings.submit_rate,
            settings.submit_burst,
            settings.max_sockets_per_client,
        );
        let mut registry = Registry::default();
        let metrics = Arc::new(metrics::ServerMetrics::new(&mut registry));
        let buffers = buffers::Buffers::new(
            capacity::buffer_budget(settings.max_buffered_bytes),
            metrics.buffered_bytes.clone(),
            metrics.sockets_closed_buffers.clone(),
        );
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let hub: Arc<hub::Hub> = Arc::default();
        let stats: Arc<Stats> = Arc::default();
        let backends = if settings.embedded()? {
            backend::embedded(&settings, &hub, &stats, &mut registry).await?
        } else {
            backend::distributed(&settings, &instance).await?
        };
        let dispatcher = match settings.webhooks()? {
            Some(config) => {
                info!(
                    retry_delays = %settings.webhook_retry_delays,
                    allow_private = config.allow_private,
                    "webhooks are on: this server sends pending deliveries"
                );
                let dispatcher = webhook::dispatch::Dispatcher::new(
                    backends.deliveries.clone(),
                    config,
                    metrics.clone(),
                )
                .map_err(|e| {
                    SettingsError::new(
                        "webhook-secret",
                        format!("no HTTP client for webhooks: {e}"),
                    )
                })?;
                Some(Arc::new(dispatcher))
            }
            None => None,
        };
        let max_connections = capacity::plan(settings.max_connections);
        let listener = TcpListener::bind(settings.listen)
            .await
            .map_err(|e| StartupError::listen(settings.listen, "listen", e))?;
        let state = AppState {
            jobs: jobs::Jobs {
                store: backends.store,
                queue: backends.queue,
                notifier: backends.notifier,
                instance,
                ttl: settings.job_ttl(),
                directory: backends.directory,
                max_input_bytes: settings.max_input_bytes,
                client_limits: settings.client_limits(),
                keys: backends.keys,
            },
            settings: Arc::new(settings),
            hub,
            shutdown: CancellationToken::new(),
            stats,
            auth,
            origins: Arc::new(origins),
            hosts: Arc::new(hosts),
            buffers,
            limits: Arc::new(limits),
            metrics,
            registry: Arc::new(registry),
        };
        Ok(Self {
            listener,
            state,
            running: backends.running,
            max_connections,
            dispatcher,
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
            running,
            max_connections,
            dispatcher,
        } = self;
        state.shutdown = shutdown.clone();
        if let Some(dispatcher) = dispatcher {
            tokio::spawn(dispatcher.run(shutdown.clone()));
        }
        let backend_task = running.start(&state.hub, &state.jobs.store, &state.stats, &shutdown);
        tokio::spawn(
            state
                .jobs
                .directory
                .clone()
                .keep_refreshing(shutdown.clone()),
        );
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
