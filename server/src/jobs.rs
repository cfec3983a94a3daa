//! Taking a job in: store its record, then publish it, so that a client holding its ID can always learn
//! its fate. Shared by the WebSocket and the HTTP API.

use std::sync::Arc;
use std::time::Duration;

use herald_protocol::{unix_ms, ErrorCode, ErrorMessage, JobId, JobMessage, JobRecord};
use herald_worker::Store;
use tracing::{error, warn};

use crate::broker::{Broker, PublishError};

/// How long a client should wait before submitting again when the queue is full.
pub const BUSY_RETRY_AFTER_MS: u64 = 1000;

/// What a client learns when RabbitMQ or Redis cannot be reached.
pub fn unavailable() -> ErrorMessage {
    ErrorMessage::new(
        ErrorCode::Unavailable,
        "the job service is temporarily unavailable; try again shortly",
    )
}

/// Why a submit was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// RabbitMQ or Redis cannot be reached.
    Unavailable,
    /// The job queue is at its cap.
    Busy,
}

impl Refusal {
    /// The protocol's error for this refusal.
    pub fn to_error(self) -> ErrorMessage {
        match self {
            Self::Unavailable => unavailable(),
            Self::Busy => ErrorMessage {
                retry_after_ms: Some(BUSY_RETRY_AFTER_MS),
                ..ErrorMessage::new(ErrorCode::Busy, "the job queue is full; try again shortly")
            },
        }
    }
}

/// The server's job intake.
#[derive(Clone)]
pub struct Jobs {
    /// The Redis store.
    pub store: Store,
    /// Where jobs are published.
    pub broker: Arc<Broker>,
    /// This instance's routing key on the reply exchange.
    pub instance: String,
    /// How long records live.
    pub ttl: Duration,
}

impl Jobs {
    /// Stores the record of job `id` (status `queued`, belonging to `owner`), registering this instance
    /// as a watcher if `watched`, then publishes the job and waits for the broker's confirm.
    ///
    /// If the publish fails, the record is deleted again: the client never got the ID, and nothing is
    /// left half-stored. (Should the broker have taken the message after all, its worker finds no record
    /// and drops it.)
    pub async fn submit(
        &self,
        id: JobId,
        n: u64,
        watched: bool,
        owner: Option<&str>,
    ) -> Result<(), Refusal> {
        let record = JobRecord::queued(n, unix_ms()).owned_by(owner);
        let watcher = watched.then_some(self.instance.as_str());
        if let Err(e) = self.store.create(&id, &record, watcher, self.ttl).await {
            warn!(%id, error = %e, "could not store a new job");
            return Err(Refusal::Unavailable);
        }
        let refusal = match self.broker.publish(&JobMessage { id, n }).await {
            Ok(()) => return Ok(()),
            Err(PublishError::Full) => Refusal::Busy,
            Err(e) => {
                warn!(%id, error = %e, "could not publish a job");
                Refusal::Unavailable
            }
        };
        if let Err(e) = self.store.delete(&id).await {
            error!(%id, error = %e, "could not delete the record of an unpublished job");
        }
        Err(refusal)
    }
}
