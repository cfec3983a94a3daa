//! Idempotency keys in the job store: a submit that carries a key creates its job only if no live job
//! holds that key yet, in the same atomic step, so that two submits racing on one key (on two server
//! instances) make one job.
//!
//! Implemented for Redis ([`crate::idempotency_redis`]) and in-process stores
//! ([`crate::idempotency_memory`]).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{JobId, JobRecord};

use crate::backend::{ClientLimits, OverQuota, StoreError};

/// The key store shared by every server instance.
pub type Keys = Arc<dyn IdempotencyStore>;

/// A submit's idempotency key.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a> {
    /// Whose key it is: the identity that sent it with authentication on; `None` (every client
    /// shares one space of keys) without.
    pub scope: Option<&'a str>,
    /// The key as the client sent it (checked by [`herald_protocol::idempotency::check_key`]).
    pub key: &'a str,
    /// [`herald_protocol::idempotency::fingerprint`] of the submit's model and input.
    pub fingerprint: &'a str,
}

/// What a keyed create did.
#[derive(Debug, Clone, PartialEq)]
pub enum Keyed {
    /// No live job held the key: the job was created and now holds it.
    Created,
    /// The key's job, submitted earlier with the same model and input. Nothing was created, and no
    /// watcher registered: a caller that waits for it resumes it (after watching it locally, so that
    /// its completion cannot slip between the two).
    Existing {
        /// Its ID.
        id: JobId,
        /// Its record as it stands.
        record: Box<JobRecord>,
    },
    /// A live job holds the key with another model or input. Nothing changed.
    Conflict,
    /// No live job held the key, but the submit's client is at one of its quotas: nothing was
    /// created, and the key stays free.
    Refused(OverQuota),
}

/// Where idempotency keys live, next to the job records. A key lives as long as its job's record
/// (the job TTL); a key whose job is gone is free again.
#[async_trait]
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Creates job `id` with `record` as [`crate::JobStore::create`] does (its client's quotas in
    /// `limits` included), unless a live job holds `key`: then answers [`Keyed::Existing`] or
    /// [`Keyed::Conflict`]. One atomic step.
    async fn create_keyed(
        &self,
        key: Key<'_>,
        id: &JobId,
        record: &JobRecord,
        watcher: Option<&str>,
        ttl: Duration,
        limits: &ClientLimits,
    ) -> Result<Keyed, StoreError>;

    /// Deletes job `id` (as [`crate::JobStore::delete`]) and frees `key` if it still names that job:
    /// a keyed submit that could not be queued leaves nothing behind.
    async fn delete_keyed(&self, key: Key<'_>, id: &JobId) -> Result<(), StoreError>;
}
