//! Herald's worker: consumes jobs from the durable RabbitMQ queue, computes them, stores results in
//! Redis and publishes a completion to the reply exchange for each server instance that waits.
//!
//! The library also holds what the server shares with the worker: the backend settings, the RabbitMQ
//! topology and the Redis store.

pub mod compute;
pub mod jobs;
pub mod settings;
pub mod store;
pub mod telemetry;
pub mod topology;

use std::time::Duration;

use futures::StreamExt;
use herald_protocol::{Completion, JobMessage};
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

pub use settings::{BackendArgs, Settings, SettingsError};
pub use store::{Store, StoreError};

/// How long a stopping worker lets running jobs finish before it leaves them to the queue.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Pause before a job that met an unreachable Redis goes back to the queue, so that an outage does not
/// turn into a hot redelivery loop.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Why the worker stopped.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A setting cannot work.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// RabbitMQ failed or closed the connection.
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    /// Redis cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The broker cancelled the consumer (the queue was deleted).
    #[error("the broker cancelled the job consumer")]
    ConsumerCancelled,
}

/// A connected worker, ready to [`run`](Worker::run).
pub struct Worker {
    settings: Settings,
    connection: Connection,
    consume: Channel,
    publish: Channel,
    store: Store,
}

impl Worker {
    /// Connects to RabbitMQ and Redis and declares the topology.
    pub async fn connect(settings: Settings) -> Result<Self, WorkerError> {
        settings.validate()?;
        let backend = &settings.backend;
        let store = Store::new(
            &backend.redis_url,
            backend.keys(),
            settings.concurrency() * 2 + 2,
        )?;
        store.ping().await?;
        let connection = Connection::connect(
            &backend.amqp_url,
            ConnectionProperties::default().with_connection_name("herald-worker".into()),
        )
        .await?;
        let consume = connection.create_channel().await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology::declare_job_queue(&consume, &backend.queue).await?;
        topology::declare_reply_exchange(&consume, &backend.reply_exchange).await?;
        let prefetch = u16::try_from(settings.concurrency()).unwrap_or(u16::MAX);
        consume
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        Ok(Self {
            settings,
            connection,
            consume,
            publish,
            store,
        })
    }

    /// Consumes jobs until `shutdown` is cancelled, then stops taking jobs, lets the running ones finish
    /// within [`SHUTDOWN_GRACE`] and returns; unfinished jobs go back to the queue when the connection
    /// closes, since they were never acknowledged.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WorkerError> {
        let tag = format!("herald-worker-{}", uuid::Uuid::new_v4().simple());
        let mut consumer = self
            .consume
            .basic_consume(
                self.settings.backend.queue.as_str().into(),
                tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        info!(
            queue = %self.settings.backend.queue,
            concurrency = self.settings.concurrency(),
            "consuming jobs"
        );
        let mut running = JoinSet::new();
        let outcome = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break Ok(()),
                Some(_) = running.join_next(), if !running.is_empty() => {}
                next = consumer.next() => match next {
                    Some(Ok(delivery)) => {
                        let job = JobTask {
                            store: self.store.clone(),
                            publish: self.publish.clone(),
                            reply_exchange: self.settings.backend.reply_exchange.clone(),
                            max_n: self.settings.backend.max_n,
                        };
                        running.spawn(job.handle(delivery));
                    }
                    Some(Err(e)) => break Err(e.into()),
                    None => break Err(WorkerError::ConsumerCancelled),
                },
            }
        };
        if let Err(e) = self
            .consume
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await
        {
            warn!(error = %e, "could not cancel the consumer");
        }
        if !running.is_empty() {
            info!(jobs = running.len(), "waiting for running jobs");
            if tokio::time::timeout(SHUTDOWN_GRACE, running.join_all())
                .await
                .is_err()
            {
                warn!("grace period over; unfinished jobs return to the queue");
            }
        }
        if let Err(e) = self.connection.close(200, "worker stopping".into()).await {
            warn!(error = %e, "could not close the connection cleanly");
        }
        outcome
    }
}

/// One delivery's handling, with what it needs.
struct JobTask {
    store: Store,
    publish: Channel,
    reply_exchange: String,
    max_n: u64,
}

impl JobTask {
    async fn handle(self, delivery: lapin::message::Delivery) {
        let job = match JobMessage::decode(&delivery.data) {
            Ok(job) => job,
            Err(e) => {
                warn!(error = %e, "rejecting a message that is not a job");
                if let Err(e) = delivery.reject(BasicRejectOptions { requeue: false }).await {
                    warn!(error = %e, "could not reject the message");
                }
                return;
            }
        };
        let span = tracing::info_span!("job", id = %job.id);
        async move {
            let settled = match jobs::process(&self.store, job, self.max_n).await {
                Ok(jobs::Processed::Nothing) => Ok(()),
                Ok(jobs::Processed::Publish {
                    completion,
                    watchers,
                }) => self.publish_completion(&completion, &watchers).await,
                Err(e) => Err(e.to_string()),
            };
            let acked = match settled {
                Ok(()) => delivery.ack(BasicAckOptions::default()).await,
                Err(reason) => {
                    error!(%reason, "job not settled; returning it to the queue");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    delivery
                        .nack(BasicNackOptions {
                            requeue: true,
                            ..BasicNackOptions::default()
                        })
                        .await
                }
            };
            if let Err(e) = acked {
                // The broker will redeliver it; processing again is safe.
                warn!(error = %e, "could not settle the delivery");
            }
        }
        .instrument(span)
        .await;
    }

    /// Publishes the completion to each waiting server instance and waits for the broker's confirms.
    async fn publish_completion(
        &self,
        completion: &Completion,
        watchers: &[String],
    ) -> Result<(), String> {
        let body = completion.encode();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(completion.id.to_string().into());
        let mut confirms = Vec::with_capacity(watchers.len());
        for watcher in watchers {
            let confirm = self
                .publish
                .basic_publish(
                    self.reply_exchange.as_str().into(),
                    watcher.as_str().into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties.clone(),
                )
                .await
                .map_err(|e| e.to_string())?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = confirm.await.map_err(|e| e.to_string())?;
            if confirmation.is_nack() {
                return Err("the broker refused the completion".into());
            }
        }
        Ok(())
    }
}
