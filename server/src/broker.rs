//! The server's side of RabbitMQ: publishing jobs with confirms, and this instance's reply queue, from
//! which completions flow into the hub. A supervisor reconnects (with backoff) whenever the connection is
//! lost, and then re-reads from Redis every job a local socket waits for, since completions published
//! while the reply queue was gone are lost to it.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use herald_engine::amqp::AmqpNotifier;
use herald_engine::backend::{JobQueue, PublishError};
use herald_engine::connect::{AmqpError, AmqpNodes};
use herald_engine::{topology, Store};
use herald_protocol::{Completion, JobMessage, ProgressMessage};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::hub::{self, Hub};
use crate::Stats;

/// Longest pause between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Jobs re-read from Redis at once after a reconnect.
const REREAD_CONCURRENCY: usize = 16;

/// What the broker connects with.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// RabbitMQ's nodes (their URLs may hold a password, so their `Debug` shows addresses only).
    pub nodes: Arc<AmqpNodes>,
    /// Name of each model's job queue (`{model}` stands for the model's name).
    pub queue: String,
    /// Job queue length cap.
    pub max_queue_length: u32,
    /// Nodes a new job queue is replicated on.
    pub quorum_group_size: u16,
    /// Reply exchange.
    pub reply_exchange: String,
    /// This instance's routing key on the reply exchange.
    pub instance: String,
}

impl BrokerConfig {
    /// The job queue of `model`.
    pub fn job_queue(&self, model: &str) -> String {
        topology::job_queue(&self.queue, model)
    }

    /// This instance's reply queue.
    pub fn reply_queue(&self) -> String {
        format!("{}.{}", self.reply_exchange, self.instance)
    }
}

/// One live connection: the publishing channel and the reply consumer.
pub struct Connected {
    /// The node connected to, as `host:port`.
    pub node: String,
    /// Shared with the [`Broker`], which opens short-lived channels on it (see `Broker::depth`).
    connection: Arc<Connection>,
    publish: Channel,
    consumer: Consumer,
}

impl Connected {
    /// Connects, declares the topology, and binds this instance's exclusive reply queue to the reply
    /// exchange with the instance ID as its routing key.
    pub async fn open(config: &BrokerConfig) -> Result<Self, AmqpError> {
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("herald-server-{}", config.instance).into());
        let (connection, node) = config.nodes.connect(&properties).await?;
        match Self::declare(connection, &node, config).await {
            Ok(connected) => Ok(connected),
            Err(error) => Err(AmqpError::Node { node, error }),
        }
    }

    async fn declare(
        connection: Connection,
        node: &str,
        config: &BrokerConfig,
    ) -> lapin::Result<Self> {
        let publish = connection.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        // The factorial's queue always; other models' queues when their first job is published.
        let factorial = config.job_queue(herald_protocol::FACTORIAL);
        topology::declare_job_queue(
            &publish,
            &factorial,
            config.max_queue_length,
            config.quorum_group_size,
        )
        .await?;
        topology::declare_reply_exchange(&publish, &config.reply_exchange).await?;
        let replies = connection.create_channel().await?;
        let reply_queue = config.reply_queue();
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
                config.reply_exchange.as_str().into(),
                config.instance.as_str().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // No acks: the queue lives and dies with this connection; what it loses is re-read from Redis.
        let consumer = replies
            .basic_consume(
                reply_queue.as_str().into(),
                format!("herald-server-{}", config.instance).into(),
                BasicConsumeOptions {
                    no_ack: true,
                    exclusive: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        Ok(Self {
            node: node.to_owned(),
            connection: Arc::new(connection),
            publish,
            consumer,
        })
    }
}

/// This instance's link to RabbitMQ; shared by every handler.
pub struct Broker {
    config: BrokerConfig,
    publish: RwLock<Option<Channel>>,
    /// The current connection, for the channels that read queue depths.
    connection: RwLock<Option<Arc<Connection>>>,
    /// Job queues declared on the current connection.
    declared: Mutex<HashSet<String>>,
    consuming: AtomicBool,
    /// Completions this instance publishes itself (of jobs cancelled while queued), on the same
    /// channel as the jobs.
    pub notifier: Arc<AmqpNotifier>,
}

#[async_trait]
impl JobQueue for Broker {
    async fn publish(&self, job: &JobMessage) -> Result<(), PublishError> {
        self.publish_job(job).await
    }

    fn is_ready(&self) -> bool {
        self.consuming.load(Ordering::Relaxed)
    }

    async fn depth(&self, model: &str) -> Option<u64> {
        // A passive declare of a queue that is missing closes its channel: on a channel of its own,
        // never the one every job is published on.
        let connection = self
            .connection
            .read()
            .expect("connection lock never poisoned")
            .clone()?;
        let channel = connection.create_channel().await.ok()?;
        let declared = channel
            .queue_declare(
                self.config.job_queue(model).as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .ok()?;
        let _ = channel.close(200, "depth read".into()).await;
        Some(u64::from(declared.message_count()))
    }
}

impl Broker {
    /// A broker whose first connection is `connected`; call [`Broker::supervise`] to run it.
    pub fn new(config: BrokerConfig, connected: &Connected) -> Self {
        let factorial = config.job_queue(herald_protocol::FACTORIAL);
        let notifier = Arc::new(AmqpNotifier::new(config.reply_exchange.clone()));
        notifier.set_channel(Some(connected.publish.clone()));
        Self {
            config,
            publish: RwLock::new(Some(connected.publish.clone())),
            connection: RwLock::new(Some(connected.connection.clone())),
            declared: Mutex::new(HashSet::from([factorial])),
            consuming: AtomicBool::new(true),
            notifier,
        }
    }

    fn channel(&self) -> Option<Channel> {
        self.publish
            .read()
            .expect("publish lock never poisoned")
            .clone()
    }

    fn set_channel(&self, channel: Option<Channel>) {
        self.notifier.set_channel(channel.clone());
        // A new connection may reach a broker that lost the queues (a new node): declare them again.
        self.declared
            .lock()
            .expect("declared lock never poisoned")
            .clear();
        *self.publish.write().expect("publish lock never poisoned") = channel;
    }

    /// Publishes a persistent job message to its model's queue (declared first if this connection has
    /// not declared it yet) and waits for the broker's confirm.
    async fn publish_job(&self, job: &JobMessage) -> Result<(), PublishError> {
        let channel = self
            .channel()
            .ok_or_else(|| PublishError::Unavailable("not connected".into()))?;
        let queue = self.config.job_queue(&job.model);
        let known = self
            .declared
            .lock()
            .expect("declared lock never poisoned")
            .contains(&queue);
        if !known {
            topology::declare_job_queue(
                &channel,
                &queue,
                self.config.max_queue_length,
                self.config.quorum_group_size,
            )
            .await
            .map_err(|e| PublishError::Unavailable(e.to_string()))?;
            self.declared
                .lock()
                .expect("declared lock never poisoned")
                .insert(queue.clone());
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type("application/json".into())
            .with_message_id(job.id.to_string().into());
        let unavailable = |e: lapin::Error| PublishError::Unavailable(e.to_string());
        let confirmation = channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                // Mandatory: if the queue is gone the broker returns the message instead of dropping it.
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                &job.encode(),
                properties,
            )
            .await
            .map_err(unavailable)?
            .await
            .map_err(unavailable)?;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_)) => {
                // Deleted since this connection declared it: declared again by the next publish,
                // rather than every job of the model refused until a reconnect.
                self.declared
                    .lock()
                    .expect("declared lock never poisoned")
                    .remove(&queue);
                Err(PublishError::Unavailable("job queue missing".into()))
            }
            // With `reject-publish`, a nack means the queue is at its length cap.
            Confirmation::Nack(_) => Err(PublishError::Full),
            Confirmation::NotRequested => Err(PublishError::Unavailable("no confirm".into())),
        }
    }

    /// Moves completions from the reply queue into the hub until `shutdown`; reconnects whenever the
    /// connection is lost.
    pub async fn supervise(
        self: Arc<Self>,
        first: Connected,
        hub: Arc<Hub>,
        store: Store,
        stats: Arc<Stats>,
        shutdown: CancellationToken,
    ) {
        let mut connected = Some(first);
        loop {
            let current = match connected.take() {
                Some(current) => current,
                None => match self.reconnect(&shutdown).await {
                    Some(current) => {
                        self.set_channel(Some(current.publish.clone()));
                        *self
                            .connection
                            .write()
                            .expect("connection lock never poisoned") =
                            Some(current.connection.clone());
                        self.consuming.store(true, Ordering::Relaxed);
                        reread_watched(&hub, &store, &stats).await;
                        current
                    }
                    None => return,
                },
            };
            let Connected {
                connection,
                consumer,
                ..
            } = current;
            let lost = consume_replies(consumer, &hub, &store, &stats, &shutdown).await;
            self.consuming.store(false, Ordering::Relaxed);
            self.set_channel(None);
            *self
                .connection
                .write()
                .expect("connection lock never poisoned") = None;
            if !lost {
                if let Err(e) = connection.close(200, "server stopping".into()).await {
                    debug!(error = %e, "rabbitmq connection already closed");
                }
                return;
            }
            warn!("lost rabbitmq; reconnecting");
        }
    }

    async fn reconnect(&self, shutdown: &CancellationToken) -> Option<Connected> {
        let mut backoff = Duration::from_millis(100);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            match Connected::open(&self.config).await {
                Ok(connected) => {
                    info!(node = %connected.node, "reconnected to rabbitmq");
                    return Some(connected);
                }
                Err(e) => {
                    warn!(error = %e, "rabbitmq still unreachable");
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}

/// Runs the reply consumer; true if the connection was lost, false on shutdown.
async fn consume_replies(
    mut consumer: Consumer,
    hub: &Arc<Hub>,
    store: &Store,
    stats: &Arc<Stats>,
    shutdown: &CancellationToken,
) -> bool {
    loop {
        let delivery = tokio::select! {
            _ = shutdown.cancelled() => return false,
            next = consumer.next() => next,
        };
        let delivery = match delivery {
            Some(Ok(delivery)) => delivery,
            Some(Err(e)) => {
                warn!(error = %e, "reply consumer failed");
                return true;
            }
            None => return true,
        };
        if delivery.properties.kind().as_ref().map(|k| k.as_str()) == Some(ProgressMessage::KIND) {
            match ProgressMessage::decode(&delivery.data) {
                Ok(progress) => hub.progress(&progress),
                Err(e) => warn!(error = %e, "ignoring a malformed progress message"),
            }
            continue;
        }
        stats.completions_received.fetch_add(1, Ordering::Relaxed);
        match Completion::decode(&delivery.data) {
            Ok(completion) => hub::complete(hub, store, stats, completion),
            Err(e) => warn!(error = %e, "ignoring a malformed completion"),
        }
    }
}

async fn reread_watched(hub: &Arc<Hub>, store: &Store, stats: &Arc<Stats>) {
    let watched = hub.watched();
    info!(
        jobs = watched.len(),
        "re-reading watched jobs after reconnecting"
    );
    futures::stream::iter(watched)
        .for_each_concurrent(REREAD_CONCURRENCY, |id| {
            hub::fetch_and_deliver(hub, store, stats, id)
        })
        .await;
}
