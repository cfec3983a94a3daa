//! Pending webhook deliveries of the durable store: those of the memory store it is built on, with
//! each change written to the job's row, so that a restart keeps every delivery not yet made.

use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{unix_ms, JobId};

use super::database::Write;
use super::{answered, DurableStore};
use crate::backend::StoreError;
use crate::deliveries::{Attempt, DeliveryStore, KEEP_PAST_RETRY};

#[async_trait]
impl DeliveryStore for DurableStore {
    async fn claim_due(&self, max: usize, lease: Duration) -> Result<Vec<JobId>, StoreError> {
        // A lease is not written: after a restart no instance holds one, and what was claimed is due.
        self.memory.claim_due(max, lease).await
    }

    async fn begin_attempt(&self, id: &JobId) -> Result<Option<Attempt>, StoreError> {
        let attempt = self.memory.begin_attempt(id).await?;
        if attempt.is_some() {
            // Not waited for: an attempt lost in a crash only moves the retry schedule back one step.
            self.writer
                .send_unanswered(Write::DeliveryAttempt { id: id.to_string() });
        }
        Ok(attempt)
    }

    async fn complete(&self, id: &JobId) -> Result<(), StoreError> {
        self.memory.complete(id).await?;
        answered(self.writer.send(Write::DeliveryDone { id: id.to_string() }))
            .await
            .map(drop)
    }

    async fn retry_after(&self, id: &JobId, delay: Duration) -> Result<(), StoreError> {
        self.memory.retry_after(id, delay).await?;
        let due_ms = (unix_ms() + delay.as_millis() as u64) as i64;
        answered(self.writer.send(Write::DeliveryDue {
            id: id.to_string(),
            due_ms,
            keep_until_ms: due_ms + KEEP_PAST_RETRY.as_millis() as i64,
        }))
        .await
        .map(drop)
    }
}
