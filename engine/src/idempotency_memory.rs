//! Idempotency keys of a store in this process (embedded mode): a table of keys beside the store,
//! whose lock is held across the check and the create, so that two keyed submits never both create.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{JobId, JobRecord};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::backend::{Store, StoreError};
use crate::idempotency::{IdempotencyStore, Key, Keyed};

/// Keys held before the first sweep of expired ones; each sweep sets the next at twice what is left,
/// so that sweeping stays a small share of the inserts.
const SWEEP_AT: usize = 1024;

/// The keys held, and when to sweep them next.
#[derive(Default)]
struct Table {
    keys: HashMap<(Option<String>, String), Held>,
    sweep_at: usize,
}

/// What a key names.
struct Held {
    id: JobId,
    fingerprint: String,
    expires: Instant,
}

/// Idempotency keys for `store`, a job store of this process only (with another process sharing
/// the store, the check and the create would no longer be one step).
pub struct LocalKeys {
    store: Store,
    held: Mutex<Table>,
}

impl LocalKeys {
    /// Keys for the jobs of `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            held: Mutex::default(),
        }
    }
}

#[async_trait]
impl IdempotencyStore for LocalKeys {
    async fn create_keyed(
        &self,
        key: Key<'_>,
        id: &JobId,
        record: &JobRecord,
        watcher: Option<&str>,
        ttl: Duration,
    ) -> Result<Keyed, StoreError> {
        let name = (key.scope.map(str::to_owned), key.key.to_owned());
        let mut held = self.held.lock().await;
        let now = Instant::now();
        if let Some(entry) = held.keys.get(&name).filter(|e| e.expires > now) {
            // A key whose job is gone (expired, or deleted after a failed queueing) is free again.
            if let Some(existing) = self.store.get(&entry.id).await? {
                if entry.fingerprint != key.fingerprint {
                    return Ok(Keyed::Conflict);
                }
                return Ok(Keyed::Existing {
                    id: entry.id,
                    record: Box::new(existing),
                });
            }
        }
        self.store.create(id, record, watcher, ttl).await?;
        if held.keys.len() >= held.sweep_at.max(SWEEP_AT) {
            held.keys.retain(|_, e| e.expires > now);
            held.sweep_at = held.keys.len() * 2;
        }
        held.keys.insert(
            name,
            Held {
                id: *id,
                fingerprint: key.fingerprint.to_owned(),
                expires: now + ttl,
            },
        );
        Ok(Keyed::Created)
    }

    async fn delete_keyed(&self, key: Key<'_>, id: &JobId) -> Result<(), StoreError> {
        let name = (key.scope.map(str::to_owned), key.key.to_owned());
        let mut held = self.held.lock().await;
        if held.keys.get(&name).is_some_and(|e| e.id == *id) {
            held.keys.remove(&name);
        }
        self.store.delete(id).await
    }
}
