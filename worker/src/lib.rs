//! Herald's worker: consumes jobs from the durable RabbitMQ queue, computes them, stores results in
//! Redis and publishes a completion to the reply exchange for each server instance that waits.
//!
//! What a job goes through is the engine's ([`herald_engine::JobContext`]); this crate holds the
//! RabbitMQ consumer around it, the worker's settings and its metrics endpoint.

pub mod metrics;
pub mod settings;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_protocol::JobMessage;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use prometheus_client::registry::Registry;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

use herald_engine::connect::{self, AmqpError, AmqpNodes};
use herald_engine::metrics::WorkerMetrics;
use herald_engine::startup::{self, WORKER_BACKEND_HINT};
use herald_engine::{amqp, cache, topology};
use herald_engine::{
    JobContext, JobLimits, RedisStore, SettingsError, Settle, StartupError, Store,
};
use herald_models::Models;

pub use settings::Settings;

/// Longest pause between two reconnection attempts.
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting cannot work.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// A backend or the metrics address cannot be used at start-up.
    #[error(transparent)]
    Startup(#[from] StartupError),
    /// The metrics port cannot be opened.
    #[error("metrics listener: {0}")]
    Metrics(std::io::Error),
}

/// One AMQP connection with the worker's two channels and its topology declared.
struct Amqp {
    /// The node connected to, as `host:port`.
    node: String,
    connection: Connection,
    consume: Channel,
    publish: Channel,
}

impl Amqp {
    /// Connects to a node and declares the reply exchange and the job queue of each of `models`.
    async fn open(
        settings: &Settings,
        nodes: &AmqpNodes,
        models: &[String],
    ) -> Result<Self, AmqpError> {
        let properties =
            ConnectionProperties::default().with_connection_name("herald-worker".into());
        let (connection, node) = nodes.connect(&properties).await?;
        match Self::declare(connection, &node, settings, models).await {
            Ok(amqp) => Ok(amqp),
            Err(error) => Err(AmqpError::Node { node, error }),
        }
    }

    async fn declare(
        connection: Connection,
        node: &str,
        settings: &Settings,
        models: &[String],
    ) -> lapin::Result<Self> {
        let backend = &settings.backend;
        let consume = connection.create_channel().await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        for model in models {
            topology::declare_job_queue(
                &consume,
                &backend.job_queue(model),
                backend.max_queue_length,
                backend.quorum_initial_group_size,
            )
            .await?;
        }
        topology::declare_reply_exchange(&consume, &backend.reply_exchange).await?;
        consume
            .basic_qos(settings.prefetch(), BasicQosOptions::default())
            .await?;
        Ok(Self {
            node: node.to_owned(),
            connection,
            consume,
            publish,
        })
    }
}

/// A connected worker, ready to [`run`](Worker::run).
pub struct Worker {
    settings: Settings,
    models: Models,
    nodes: AmqpNodes,
    amqp: Amqp,
    redis: RedisStore,
    store: Store,
    cache: cache::Cache,
    notifier: Arc<amqp::AmqpNotifier>,
    registry: Registry,
    metrics: Arc<WorkerMetrics>,
}

impl Worker {
    /// Connects to Redis and RabbitMQ and declares the topology. While either is unreachable it
    /// waits, with backoff, logging each try (a backend started at the same time may not be up yet);
    /// it fails at once on what waiting cannot mend (a bad setting, a refused password).
    pub async fn connect(settings: Settings) -> Result<Self, WorkerError> {
        settings.validate()?;
        let backend = &settings.backend;
        let models = settings
            .models
            .build(backend.max_n, settings.concurrency())
            .await?;
        let (broker_at, redis_at) = (startup::rabbitmq(backend), startup::redis(backend));
        // A backend started at the same time (Compose, Kubernetes) may not be up yet: wait for it.
        let store = connect::wait_for(&redis_at, WORKER_BACKEND_HINT, || RedisStore::open(backend))
            .await
            .map_err(|e| StartupError::backend(redis_at.clone(), e, WORKER_BACKEND_HINT))?;
        store.check_persistence().await;
        let nodes = AmqpNodes::new(&backend.amqp_urls());
        let names = models.names();
        let amqp = connect::wait_for(&broker_at, WORKER_BACKEND_HINT, || {
            Amqp::open(&settings, &nodes, &names)
        })
        .await
        .map_err(|e| StartupError::backend(broker_at.clone(), e, WORKER_BACKEND_HINT))?;
        info!(node = %amqp.node, nodes = %nodes.addresses(), "connected to rabbitmq");
        let notifier = Arc::new(amqp::AmqpNotifier::new(backend.reply_exchange.clone()));
        notifier.set_channel(Some(amqp.publish.clone()));
        let mut registry = Registry::default();
        let metrics = Arc::new(WorkerMetrics::new(&mut registry));
        Ok(Self {
            settings,
            models,
            nodes,
            amqp,
            redis: store.clone(),
            store: Arc::new(store),
            cache: cache::Cache::default(),
            notifier,
            registry,
            metrics,
        })
    }

    /// How much work this worker computed and reused.
    pub fn stats(&self) -> Arc<cache::ComputeStats> {
        self.cache.stats.clone()
    }

    /// Consumes jobs until `shutdown` is cancelled, reconnecting (with backoff) whenever RabbitMQ goes
    /// away. On shutdown it stops taking jobs and lets the running ones finish within the grace period;
    /// past it they are stopped and returned to the queue.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let Self {
            settings,
            models,
            nodes,
            amqp,
            redis,
            store,
            cache,
            notifier,
            registry,
            metrics,
        } = self;
        if let Some(addr) = settings.metrics_listen {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|e| StartupError::listen(addr, "metrics-listen", e))?;
            info!(
                "metrics on http://{}/metrics",
                listener.local_addr().map_err(WorkerError::Metrics)?
            );
            let stopped = shutdown.clone();
            let registry = Arc::new(registry);
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(listener, registry, stopped).await {
                    warn!(error = %e, "metrics endpoint failed");
                }
            });
        }
        let context = JobContext {
            store,
            notifier: notifier.clone(),
            metrics,
            limits: JobLimits {
                max_attempts: settings.max_attempts,
                time_limit: settings.job_time_limit(),
            },
            slots: Arc::new(Semaphore::new(settings.concurrency())),
            stop: CancellationToken::new(),
            cache,
            models,
        };
        let names = context.models.names();
        let worker_id = format!("herald-worker-{}", uuid::Uuid::new_v4().simple());
        let announcing =
            tokio::spawn(redis.keep_announcing(worker_id, names.clone(), shutdown.clone()));
        let mut running = JoinSet::new();
        let mut connected = Some(amqp);
        let last = loop {
            let amqp = match connected.take() {
                Some(amqp) => amqp,
                None => match reconnect(&settings, &nodes, &names, &shutdown).await {
                    Some(amqp) => {
                        notifier.set_channel(Some(amqp.publish.clone()));
                        amqp
                    }
                    None => break None,
                },
            };
            match consume(&settings, &names, &amqp, &context, &mut running, &shutdown).await {
                Ok(()) => break Some(amqp),
                Err(e) => warn!(error = %e, "lost rabbitmq; reconnecting"),
            }
        };
        let grace = Duration::from_secs(settings.shutdown_grace_secs);
        if !running.is_empty() {
            info!(
                jobs = running.len(),
                grace_secs = grace.as_secs(),
                "waiting for running jobs"
            );
            let drained = tokio::time::timeout(grace, async {
                while running.join_next().await.is_some() {}
            })
            .await;
            if drained.is_err() {
                warn!("grace period over; returning unfinished jobs to the queue");
                context.stop.cancel();
                while running.join_next().await.is_some() {}
            }
        }
        if let Some(amqp) = last {
            if let Err(e) = amqp.connection.close(200, "worker stopping".into()).await {
                warn!(error = %e, "could not close the connection cleanly");
            }
        }
        let _ = announcing.await;
        context.models.shutdown().await;
        info!("worker stopped");
        Ok(())
    }
}

/// Connects again, backing off; `None` if shutdown comes first.
async fn reconnect(
    settings: &Settings,
    nodes: &AmqpNodes,
    models: &[String],
    shutdown: &CancellationToken,
) -> Option<Amqp> {
    let mut backoff = Duration::from_millis(100);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        match Amqp::open(settings, nodes, models).await {
            Ok(amqp) => {
                info!(node = %amqp.node, "reconnected to rabbitmq");
                return Some(amqp);
            }
            Err(e) => {
                warn!(error = %e, "rabbitmq still unreachable");
                backoff = (backoff * 2).min(MAX_RECONNECT_BACKOFF);
            }
        }
    }
}

/// Consumes every model's queue on one connection until shutdown (`Ok`, consumers cancelled) or the
/// connection fails (`Err`).
async fn consume(
    settings: &Settings,
    models: &[String],
    amqp: &Amqp,
    context: &JobContext,
    running: &mut JoinSet<()>,
    shutdown: &CancellationToken,
) -> lapin::Result<()> {
    let mut tags = Vec::with_capacity(models.len());
    let mut consumers = Vec::with_capacity(models.len());
    for model in models {
        let queue = settings.backend.job_queue(model);
        let tag = format!("herald-worker-{}", uuid::Uuid::new_v4().simple());
        let consumer = amqp
            .consume
            .basic_consume(
                queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        info!(%queue, %model, concurrency = settings.concurrency(), "consuming jobs");
        tags.push(tag);
        consumers.push(consumer);
    }
    let mut deliveries = futures::stream::select_all(consumers);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => {}
            next = deliveries.next() => match next {
                Some(Ok(delivery)) => {
                    let task = JobTask {
                        context: context.clone(),
                    };
                    running.spawn(task.handle(delivery));
                }
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(lapin::Error::from(lapin::ErrorKind::InvalidConnectionState(
                        lapin::ConnectionState::Closed,
                    )))
                }
            },
        }
    }
    for tag in tags {
        if let Err(e) = amqp
            .consume
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            warn!(error = %e, "could not cancel a consumer");
        }
    }
    Ok(())
}

/// One delivery's handling, with what it needs.
struct JobTask {
    context: JobContext,
}

impl JobTask {
    async fn handle(self, delivery: lapin::message::Delivery) {
        let job = match JobMessage::decode(&delivery.data) {
            Ok(job) => job,
            Err(e) => {
                warn!(error = %e, "dead-lettering a message that is not a job");
                settle(&delivery, Settle::DeadLetter).await;
                return;
            }
        };
        let span = tracing::info_span!("job", id = %job.id, model = %job.model);
        async move {
            let how = self.context.handle(job).await;
            settle(&delivery, how).await;
        }
        .instrument(span)
        .await;
    }
}

async fn settle(delivery: &lapin::message::Delivery, how: Settle) {
    let settled = match how {
        Settle::Ack => delivery.ack(BasicAckOptions::default()).await,
        Settle::Requeue => {
            delivery
                .nack(BasicNackOptions {
                    requeue: true,
                    ..BasicNackOptions::default()
                })
                .await
        }
        Settle::DeadLetter => delivery.reject(BasicRejectOptions { requeue: false }).await,
    };
    if let Err(e) = settled {
        // The channel is gone: the broker requeues the message, and processing it again is safe.
        warn!(error = %e, ?how, "could not settle the delivery");
    }
}
