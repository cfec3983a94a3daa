//! Idempotency keys of a store in this process (embedded mode): a table of keys beside the store,
//! whose lock is held across the check and the create, so that two keyed submits never both create.
//! The durable store keeps the same table, and writes each key with its job's row.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{JobId, JobRecord};
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::backend::{Admission, ClientLimits, JobStore, Store, StoreError};
use crate::idempotency::{IdempotencyStore, Key, Keyed};

/// Keys held before the first sweep of expired ones; each sweep sets the next at twice what is left,
/// so that sweeping stays a small share of the inserts.
const SWEEP_AT: usize = 1024;

/// A key as the table files it: its scope (identity) and the client's text.
type Name = (Option<String>, String);

/// The keys held, and when to sweep them next.
#[derive(Default)]
pub(crate) struct KeyTable {
    keys: HashMap<Name, Held>,
    sweep_at: usize,
}

/// What a key names.
struct Held {
    id: JobId,
    fingerprint: String,
    expires: Instant,
}

fn name(key: Key<'_>) -> Name {
    (key.scope.map(str::to_owned), key.key.to_owned())
}

impl KeyTable {
    /// What a submit with `key` gets when a live job of `store` holds the key already; `None` when
    /// the key is free (never used, expired, or its job gone), and the submit creates its job.
    pub(crate) async fn check<S: JobStore + ?Sized>(
        &self,
        key: Key<'_>,
        store: &S,
    ) -> Result<Option<Keyed>, StoreError> {
        let Some(entry) = self
            .keys
            .get(&name(key))
            .filter(|e| e.expires > Instant::now())
        else {
            return Ok(None);
        };
        // A key whose job is gone (expired, or deleted after a failed queueing) is free again.
        let Some(existing) = store.get(&entry.id).await? else {
            return Ok(None);
        };
        if entry.fingerprint != key.fingerprint {
            return Ok(Some(Keyed::Conflict));
        }
        Ok(Some(Keyed::Existing {
            id: entry.id,
            record: Box::new(existing),
        }))
    }

    /// `key` now names job `id` for `ttl`.
    pub(crate) fn hold(&mut self, key: Key<'_>, id: &JobId, ttl: Duration) {
        self.restore(key, id, Instant::now() + ttl);
    }

    /// `key` names job `id` until `expires` (as read back from a file at start-up).
    pub(crate) fn restore(&mut self, key: Key<'_>, id: &JobId, expires: Instant) {
        if self.keys.len() >= self.sweep_at.max(SWEEP_AT) {
            let now = Instant::now();
            self.keys.retain(|_, e| e.expires > now);
            self.sweep_at = self.keys.len() * 2;
        }
        self.keys.insert(
            name(key),
            Held {
                id: *id,
                fingerprint: key.fingerprint.to_owned(),
                expires,
            },
        );
    }

    /// Frees `key` if it still names job `id`.
    pub(crate) fn release(&mut self, key: Key<'_>, id: &JobId) {
        let name = name(key);
        if self.keys.get(&name).is_some_and(|e| e.id == *id) {
            self.keys.remove(&name);
        }
    }
}

/// Idempotency keys for `store`, a job store of this process only (with another process sharing
/// the store, the check and the create would no longer be one step).
pub struct LocalKeys {
    store: Store,
    held: Mutex<KeyTable>,
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
        limits: &ClientLimits,
    ) -> Result<Keyed, StoreError> {
        let mut held = self.held.lock().await;
        if let Some(keyed) = held.check(key, &*self.store).await? {
            return Ok(keyed);
        }
        if let Admission::Refused(over) =
            self.store.create(id, record, watcher, ttl, limits).await?
        {
            return Ok(Keyed::Refused(over));
        }
        held.hold(key, id, ttl);
        Ok(Keyed::Created)
    }

    async fn delete_keyed(&self, key: Key<'_>, id: &JobId) -> Result<(), StoreError> {
        let mut held = self.held.lock().await;
        held.release(key, id);
        self.store.delete(id).await
    }
}
