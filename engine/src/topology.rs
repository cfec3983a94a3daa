//! The RabbitMQ names and arguments both binaries declare, kept in one place so they never disagree.

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

/// What `--queue` names each model's job queue after: `{model}` stands for the model's name, so the
/// factorial's queue is `factorial_process` by default.
pub const DEFAULT_QUEUE_TEMPLATE: &str = "{model}_process";

/// The job queue of `model` under `template` (see [`DEFAULT_QUEUE_TEMPLATE`]).
pub fn job_queue(template: &str, model: &str) -> String {
    template.replace("{model}", model)
}

/// Name of the dead-letter queue of `queue`: messages that are not jobs, and jobs that failed for good.
pub fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Arguments of the job queue: a quorum queue (replicated on a cluster, durable), capped in length with
/// `reject-publish` so an overloaded broker refuses new jobs instead of dropping old ones, and
/// dead-lettering rejected messages to [`dead_letter_queue`].
///
/// Every server and worker declares the queue with these arguments; RabbitMQ refuses a declaration whose
/// arguments differ from the existing queue's, so all of them must use the same `--max-queue-length`.
/// `group_size` is the number of nodes the queue is replicated on (capped by the cluster's size).
pub fn job_queue_arguments(queue: &str, max_length: u32, group_size: u16) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-quorum-initial-group-size".into(),
        AMQPValue::LongInt(group_size.into()),
    );
    args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(max_length.into()),
    );
    args.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString("".into()),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(dead_letter_queue(queue).into()),
    );
    args
}

/// Arguments of the dead-letter queue: a quorum queue on `group_size` nodes, like the job queue.
pub fn dead_letter_queue_arguments(group_size: u16) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    args.insert(
        "x-quorum-initial-group-size".into(),
        AMQPValue::LongInt(group_size.into()),
    );
    args
}

/// Declares the durable job queue and its dead-letter queue (idempotent: every server and worker does it
/// on each connection). Both are quorum queues: a classic queue lives on one node, and while that node
/// is down nobody can declare it, so no client could connect to the rest of the cluster.
pub async fn declare_job_queue(
    channel: &Channel,
    queue: &str,
    max_length: u32,
    group_size: u16,
) -> lapin::Result<()> {
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(
            dead_letter_queue(queue).as_str().into(),
            durable,
            dead_letter_queue_arguments(group_size),
        )
        .await?;
    channel
        .queue_declare(
            queue.into(),
            durable,
            job_queue_arguments(queue, max_length, group_size),
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
