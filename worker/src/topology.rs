//! The RabbitMQ names and arguments both binaries declare, kept in one place so they never disagree.

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// Arguments of the job queue. A quorum queue: replicated on a cluster, durable, and it counts deliveries.
pub fn job_queue_arguments() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args
}

/// Declares the durable job queue (idempotent: every server and worker does it at start).
pub async fn declare_job_queue(channel: &Channel, queue: &str) -> lapin::Result<()> {
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            job_queue_arguments(),
        )
        .await?;
    Ok(())
}

/// Declares the direct exchange completions are published to; routing key = a server instance's ID.
pub async fn declare_reply_exchange(channel: &Channel, exchange: &str) -> lapin::Result<()> {
    channel
        .exchange_declare(
            exchange.into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
}
