//! Pending webhook deliveries of the durable store: those of the memory store it is built on.

use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::JobId;

use super::DurableStore;
use crate::backend::StoreError;
use crate::deliveries::{Attempt, DeliveryStore};

#[async_trait]
impl DeliveryStore for DurableStore {
    async fn claim_due(&self, max: usize, lease: Duration) -> Result<Vec<JobId>, StoreError> {
        self.memory.claim_due(max, lease).await
    }

    async fn begin_attempt(&self, id: &JobId) -> Result<Option<Attempt>, StoreError> {
        self.memory.begin_attempt(id).await
    }

    async fn complete(&self, id: &JobId) -> Result<(), StoreError> {
        self.memory.complete(id).await
    }

    async fn retry_after(&self, id: &JobId, delay: Duration) -> Result<(), StoreError> {
        self.memory.retry_after(id, delay).await
    }
}
