//! Pending webhook deliveries of the memory store (embedded mode): a table beside its records, under
//! the same lock, so that a job's final state and its delivery are written in one step. Like the
//! records, they do not survive the process, unless the durable store writes them to its file and
//! restores them at start-up.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::JobId;
use tokio::time::Instant;

use crate::backend::StoreError;
use crate::deliveries::{Attempt, DeliveryStore, KEEP_PAST_RETRY};
use crate::memory::MemoryStore;

/// One delivery waiting.
struct Delivery {
    /// When it is due (moved past the lease while claimed).
    due: Instant,
    /// Attempts begun.
    attempts: u32,
}

/// The deliveries waiting, by job.
#[derive(Default)]
pub struct Pending(HashMap<JobId, Delivery>);

impl Pending {
    /// Adds the delivery of job `id`, due at once (none if it is there already).
    pub(crate) fn add(&mut self, id: JobId) {
        self.0.entry(id).or_insert(Delivery {
            due: Instant::now(),
            attempts: 0,
        });
    }

    /// Puts back the delivery of job `id` as a file kept it: `attempts` begun, due at `due`.
    pub(crate) fn restore(&mut self, id: JobId, attempts: u32, due: Instant) {
        self.0.insert(id, Delivery { due, attempts });
    }

    /// Whether the delivery of job `id` is pending.
    pub(crate) fn contains(&self, id: &JobId) -> bool {
        self.0.contains_key(id)
    }
}

#[async_trait]
impl DeliveryStore for MemoryStore {
    async fn claim_due(&self, max: usize, lease: Duration) -> Result<Vec<JobId>, StoreError> {
        let now = Instant::now();
        let mut tables = self.tables();
        let mut claimed = Vec::new();
        for (id, delivery) in tables.deliveries.0.iter_mut() {
            if claimed.len() == max {
                break;
            }
            if delivery.due <= now {
                delivery.due = now + lease;
                claimed.push(*id);
            }
        }
        Ok(claimed)
    }

    async fn begin_attempt(&self, id: &JobId) -> Result<Option<Attempt>, StoreError> {
        let (record, blob, number) = {
            let mut tables = self.tables();
            let Some((record, blob)) = tables.live_record(id) else {
                return Ok(None);
            };
            let Some(delivery) = tables.deliveries.0.get_mut(id) else {
                return Ok(None);
            };
            delivery.attempts += 1;
            (record, blob, delivery.attempts)
        };
        // The output is stored apart from the record: read back, off the lock.
        Ok(Some(Attempt {
            record: self.with_output(record, blob).await?,
            number,
        }))
    }

    async fn complete(&self, id: &JobId) -> Result<(), StoreError> {
        self.tables().deliveries.0.remove(id);
        Ok(())
    }

    async fn retry_after(&self, id: &JobId, delay: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut tables = self.tables();
        tables.keep_until(id, now + delay + KEEP_PAST_RETRY);
        if let Some(delivery) = tables.deliveries.0.get_mut(id) {
            delivery.due = now + delay;
        }
        Ok(())
    }
}
