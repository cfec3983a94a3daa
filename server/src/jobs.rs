//! Taking a job in: store its record, then publish it, so that a client holding its ID can always learn
//! its fate. Shared by the WebSocket and the HTTP API.

use std::time::Duration;

use herald_protocol::{unix_ms, ErrorCode, ErrorMessage, JobId, JobMessage, JobRecord, JobStatus};
use herald_worker::Store;
use tracing::{error, warn};

use crate::broker::Publisher;

/// What a client learns when a submit cannot be taken.
pub fn unavailable() -> ErrorMessage {
    ErrorMessage::new(
        ErrorCode::Unavailable,
        "the job service is temporarily unavailable; try again shortly",
    )
}

/// The server's job intake.
#[derive(Clone)]
pub struct Jobs {
    /// The Redis store.
    pub store: Store,
    /// Where jobs are published.
    pub publisher: Publisher,
    /// This instance's routing key on the reply exchange.
    pub instance: String,
    /// How long records live.
    pub ttl: Duration,
}

impl Jobs {
    /// Stores the record of job `id` (status `queued`), registering this instance as a watcher if
    /// `watched`, then publishes the job and waits for the broker's confirm.
    ///
    /// If the publish fails after the record was written, the record is marked failed, so the ID never
    /// points at a job that will not run.
    pub async fn submit(&self, id: JobId, n: u64, watched: bool) -> Result<(), ErrorMessage> {
        let record = JobRecord::queued(n, unix_ms());
        let watcher = watched.then_some(self.instance.as_str());
        if let Err(e) = self.store.create(&id, &record, watcher, self.ttl).await {
            warn!(%id, error = %e, "could not store a new job");
            return Err(unavailable());
        }
        if let Err(e) = self.publisher.publish(&JobMessage { id, n }).await {
            warn!(%id, error = %e, "could not publish a job");
            let mut failed = record;
            failed.status = JobStatus::Failed;
            failed.error = Some("the job could not be queued".into());
            failed.finished_ms = Some(unix_ms());
            if let Err(e) = self.store.finish(&id, &failed).await {
                error!(%id, error = %e, "could not mark an unpublished job failed");
            }
            return Err(unavailable());
        }
        Ok(())
    }
}
