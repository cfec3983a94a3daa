//! The server's side of RabbitMQ: publishing jobs with confirms, and this instance's reply queue, from
//! which completions flow into the hub.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::StreamExt;
use herald_protocol::{Completion, JobMessage};
use herald_worker::{topology, Store};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::hub::Hub;

/// Why RabbitMQ could not be used.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection or channel failed.
    #[error("rabbitmq: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker refused the message (nack), or could not route it (the job queue is missing).
    #[error("rabbitmq did not take the message")]
    Refused,
}

/// Counters an operator (and the tests) can read.
#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Completions received on this instance's reply queue.
    pub completions_received: AtomicU64,
    /// Completions that reached at least one socket.
    pub completions_delivered: AtomicU64,
}

/// This instance's RabbitMQ connection.
pub struct Broker {
    connection: Connection,
    publish: Channel,
    queue: String,
    reply_queue: String,
    consumer: Consumer,
}

impl Broker {
    /// Connects, declares the topology, and binds this instance's exclusive reply queue to the reply
    /// exchange with `instance` as its routing key.
    pub async fn connect(
        url: &str,
        queue: &str,
        reply_exchange: &str,
        instance: &str,
    ) -> Result<Self, BrokerError> {
        let connection = Connection::connect(
            url,
            ConnectionProperties::default()
                .with_connection_name(format!("herald-server-{instance}").into()),
        )
        .await?;
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        topology::declare_job_queue(&publish, queue).await?;
        topology::declare_reply_exchange(&publish, reply_exchange).await?;
        let replies = connection.create_channel().await?;
        let reply_queue = format!("{reply_exchange}.{instance}");
        replies
            .queue_declare(
                reply_queue.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        replies
            .queue_bind(
                reply_queue.as_str().into(),
                reply_exchange.into(),
                instance.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // No acks: the queue lives and dies with this process, and so do the sockets it serves.
        let consumer = replies
            .basic_consume(
                reply_queue.as_str().into(),
                format!("herald-server-{instance}").into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            connection,
            publish,
            queue: queue.to_owned(),
            reply_queue,
            consumer,
        })
    }

    /// A handle for publishing jobs.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            channel: self.publish.clone(),
            queue: self.queue.clone(),
        }
    }

    /// Name of this instance's reply queue.
    pub fn reply_queue(&self) -> &str {
        &self.reply_queue
    }

    /// Moves completions from the reply queue into the hub until `shutdown`, then closes the connection.
    pub async fn run_replies(
        self,
        hub: Arc<Hub>,
        store: Store,
        stats: Arc<BrokerStats>,
        shutdown: CancellationToken,
    ) {
        let Self {
            connection,
            mut consumer,
            ..
        } = self;
        loop {
            let delivery = tokio::select! {
                _ = shutdown.cancelled() => break,
                next = consumer.next() => next,
            };
            let delivery = match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    warn!(error = %e, "reply consumer failed");
                    break;
                }
                None => {
                    warn!("reply consumer cancelled by the broker");
                    break;
                }
            };
            stats.completions_received.fetch_add(1, Ordering::Relaxed);
            let completion = match Completion::decode(&delivery.data) {
                Ok(completion) => completion,
                Err(e) => {
                    warn!(error = %e, "ignoring a malformed completion");
                    continue;
                }
            };
            let hub = hub.clone();
            let stats = stats.clone();
            if completion.output_in_store {
                // A large output stays in Redis; read it once for all of this instance's sockets.
                let store = store.clone();
                tokio::spawn(async move {
                    match store.get(&completion.id).await {
                        Ok(Some(record)) if record.validate(true).is_ok() => {
                            deliver(&hub, &stats, completion.id, record)
                        }
                        Ok(_) => warn!(id = %completion.id, "stored result missing or damaged"),
                        Err(e) => {
                            warn!(id = %completion.id, error = %e, "could not read a stored result")
                        }
                    }
                });
            } else {
                deliver(&hub, &stats, completion.id, completion.record);
            }
        }
        if let Err(e) = connection.close(200, "server stopping".into()).await {
            info!(error = %e, "rabbitmq connection already closed");
        }
    }
}

fn deliver(
    hub: &Hub,
    stats: &BrokerStats,
    id: herald_protocol::JobId,
    record: herald_protocol::JobRecord,
) {
    if hub.deliver(id, Arc::new(record)) > 0 {
        stats.completions_delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Publishes jobs to the job queue; cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    queue: String,
}

impl Publisher {
    /// Publishes a persistent job message and waits for the broker's confirm.
    pub async fn publish(&self, job: &JobMessage) -> Result<(), BrokerError> {
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(job.id.to_string().into());
        let confirmation = self
            .channel
            .basic_publish(
                "".into(),
                self.queue.as_str().into(),
                // Mandatory: if the queue is gone the broker returns the message instead of dropping it.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &job.encode(),
                properties,
            )
            .await?
            .await?;
        match confirmation {
            lapin::Confirmation::Ack(None) => Ok(()),
            _ => Err(BrokerError::Refused),
        }
    }
}
