//! Idempotency keys of the durable store: the in-process key table, with each key written in its
//! job's row by the same commit that creates the job, so that a restart keeps every key a client was
//! answered for.

use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{JobId, JobRecord};

use super::database::KeyColumns;
use super::DurableStore;
use crate::backend::{Admission, ClientLimits, JobStore, StoreError};
use crate::idempotency::{IdempotencyStore, Key, Keyed};

#[async_trait]
impl IdempotencyStore for DurableStore {
    async fn create_keyed(
        &self,
        key: Key<'_>,
        id: &JobId,
        record: &JobRecord,
        watcher: Option<&str>,
        ttl: Duration,
        limits: &ClientLimits,
    ) -> Result<Keyed, StoreError> {
        // Held across the check and the commit: two keyed submits never both create.
        let mut held = self.keys.lock().await;
        if let Some(keyed) = held.check(key, &self.memory).await? {
            return Ok(keyed);
        }
        let columns = KeyColumns {
            scope: key.scope.map(str::to_owned),
            name: key.key.to_owned(),
            fingerprint: key.fingerprint.to_owned(),
        };
        if let Admission::Refused(over) = self
            .insert(id, record, watcher, ttl, Some(columns), limits)
            .await?
        {
            return Ok(Keyed::Refused(over));
        }
        held.hold(key, id, ttl);
        Ok(Keyed::Created)
    }

    async fn delete_keyed(&self, key: Key<'_>, id: &JobId) -> Result<(), StoreError> {
        let mut held = self.keys.lock().await;
        held.release(key, id);
        // The key goes with the row.
        self.delete(id).await
    }
}
