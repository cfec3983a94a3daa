//! Pending webhook deliveries in the job store. The store's `finish` and `cancel` add one, in the same
//! atomic step as the final state, for every job whose record names a webhook, so whoever ends a job
//! (a worker, a cancelling server, the dead-lettering of a job that failed for good) needs no setting
//! of its own. Server instances claim due deliveries, send them, and mark each delivered or due again.
//!
//! Implemented for Redis ([`crate::deliveries_redis`]) and the memory store
//! ([`crate::deliveries_memory`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{JobId, JobRecord};

use crate::backend::StoreError;

/// The delivery store shared by every server instance.
pub type Deliveries = Arc<dyn DeliveryStore>;

/// One attempt of a delivery, as [`DeliveryStore::begin_attempt`] starts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// The job's final record (with the webhook's URL).
    pub record: JobRecord,
    /// Which attempt this is, from 1.
    pub number: u32,
}

/// Where pending deliveries wait. Every method is atomic; a delivery is claimed by one instance at a
/// time, and one whose instance died is claimed again once its lease has run out.
#[async_trait]
pub trait DeliveryStore: Send + Sync + 'static {
    /// Claims up to `max` deliveries that are due, each for `lease`: no other claim returns it
    /// until the lease runs out, when it is due again unless [`DeliveryStore::complete`] or
    /// [`DeliveryStore::retry_after`] came first.
    async fn claim_due(&self, max: usize, lease: Duration) -> Result<Vec<JobId>, StoreError>;

    /// Counts one more attempt of job `id`'s delivery and reads its record; `None` when the job's
    /// record is gone (expired).
    async fn begin_attempt(&self, id: &JobId) -> Result<Option<Attempt>, StoreError>;

    /// The delivery of job `id` is over (delivered, given up, or its job gone).
    async fn complete(&self, id: &JobId) -> Result<(), StoreError>;

    /// The delivery of job `id` is due again after `delay`; the job's record is kept at least until
    /// a little after then, so that the attempt finds it.
    async fn retry_after(&self, id: &JobId, delay: Duration) -> Result<(), StoreError>;
}

/// How long past a retry's due time the job's record is kept at least.
pub const KEEP_PAST_RETRY: Duration = Duration::from_secs(600);
