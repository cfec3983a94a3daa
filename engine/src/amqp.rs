//! RabbitMQ's side of the notices: completions and progress go to the reply exchange, once per
//! waiting server instance, with the instance's ID as routing key. Shared by workers and servers (a
//! server publishes the completion of a job cancelled while queued).

use std::sync::RwLock;

use async_trait::async_trait;
use herald_protocol::{Completion, ProgressMessage};
use lapin::options::BasicPublishOptions;
use lapin::{BasicProperties, Channel, PublisherConfirm};

use crate::backend::{Notifier, NotifyError};

/// Publishes notices on the current channel (replaced after each reconnect).
pub struct AmqpNotifier {
    channel: RwLock<Option<Channel>>,
    exchange: String,
}

impl AmqpNotifier {
    /// A notifier for `exchange`, with no channel until [`AmqpNotifier::set_channel`].
    pub fn new(exchange: impl Into<String>) -> Self {
        Self {
            channel: RwLock::new(None),
            exchange: exchange.into(),
        }
    }

    /// Publishes on `channel` from now on (a channel in confirm mode), or nowhere while disconnected.
    pub fn set_channel(&self, channel: Option<Channel>) {
        *self.channel.write().expect("channel lock never poisoned") = channel;
    }

    /// Publishes `body` once to each watcher's routing key; the broker's confirms, to await or not.
    async fn publish_each(
        &self,
        channel: &Channel,
        watchers: &[String],
        body: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<Vec<PublisherConfirm>> {
        let mut confirms = Vec::with_capacity(watchers.len());
        for watcher in watchers {
            let confirm = channel
                .basic_publish(
                    self.exchange.as_str().into(),
                    watcher.as_str().into(),
                    BasicPublishOptions::default(),
                    body,
                    properties.clone(),
                )
                .await?;
            confirms.push(confirm);
        }
        Ok(confirms)
    }

    fn channel(&self) -> Option<Channel> {
        self.channel
            .read()
            .expect("channel lock never poisoned")
            .clone()
    }
}

#[async_trait]
impl Notifier for AmqpNotifier {
    async fn completion(
        &self,
        watchers: &[String],
        completion: &Completion,
    ) -> Result<(), NotifyError> {
        if watchers.is_empty() {
            return Ok(());
        }
        let channel = self
            .channel()
            .ok_or_else(|| NotifyError("not connected to rabbitmq".into()))?;
        let body = completion.encode();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_correlation_id(completion.id.to_string().into());
        let failed = |e: lapin::Error| NotifyError(e.to_string());
        let confirms = self
            .publish_each(&channel, watchers, &body, properties)
            .await
            .map_err(failed)?;
        for confirm in confirms {
            if confirm.await.map_err(failed)?.is_nack() {
                return Err(NotifyError("the broker refused the completion".into()));
            }
        }
        Ok(())
    }

    async fn progress(&self, watchers: &[String], progress: &ProgressMessage) {
        let Some(channel) = self.channel() else {
            return;
        };
        let body = progress.encode();
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_type(ProgressMessage::KIND.into())
            .with_correlation_id(progress.id.to_string().into());
        // Confirms not waited for: a progress message that is lost is replaced by the next one.
        if let Err(e) = self
            .publish_each(&channel, watchers, &body, properties)
            .await
        {
            tracing::debug!(error = %e, "progress not published");
        }
    }
}
