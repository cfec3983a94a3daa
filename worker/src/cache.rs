//! Identical inputs are computed once: a job for an n that this worker is already computing waits for
//! that computation, and a job for an n whose result is still stored in Redis is answered from it.
//!
//! Two workers that start the same n at the same moment each compute it (the cache is filled by
//! whichever finishes first); coordinating them would cost a lock round trip on every job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

use futures::future::{BoxFuture, FutureExt, Shared};
use herald_protocol::JobId;
use redis::Script;

use crate::store::{Store, StoreError};

/// Below this n a computation is cheaper than a round trip to Redis, so results are neither looked up
/// nor stored.
pub const MIN_CACHED_N: u64 = 2_000;

// KEYS[1] the job whose TTL the cached result takes, KEYS[2] the result. ARGV[1] the output.
static STORE_RESULT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local ttl = redis.call('PTTL', KEYS[1])
if ttl > 0 then redis.call('SET', KEYS[2], ARGV[1], 'PX', ttl) end
",
    )
});

/// How a computation ended, shared by every job that waited for it.
#[derive(Debug, Clone)]
pub enum Computed {
    /// The decimal output.
    Done(Arc<str>),
    /// The computation failed (time limit, internal error) with this message.
    Failed(String),
    /// The worker is stopping.
    Stopped,
}

type Flight = Shared<BoxFuture<'static, Computed>>;

/// Counters of the work this worker did and reused.
#[derive(Debug, Default)]
pub struct ComputeStats {
    /// Computations run.
    pub computations: AtomicU64,
    /// Jobs answered from a computation in flight or a stored result.
    pub reused: AtomicU64,
}

/// The in-flight table and the Redis result cache.
#[derive(Clone, Default)]
pub struct Cache {
    flights: Arc<Mutex<HashMap<u64, Flight>>>,
    /// Counters.
    pub stats: Arc<ComputeStats>,
}

impl Cache {
    /// The output for `n`: from a computation of `n` already running here, from Redis, or from
    /// `compute`, which then serves any job for `n` that arrives while it runs.
    pub async fn get_or_compute(
        &self,
        n: u64,
        compute: impl FnOnce() -> BoxFuture<'static, Computed>,
    ) -> Computed {
        let (flight, leader) = {
            let mut flights = self.flights.lock().expect("flight table never poisoned");
            match flights.get(&n) {
                Some(flight) => (flight.clone(), false),
                None => {
                    let flight = compute().shared();
                    flights.insert(n, flight.clone());
                    (flight, true)
                }
            }
        };
        if !leader {
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
            return flight.await;
        }
        let outcome = flight.await;
        self.flights
            .lock()
            .expect("flight table never poisoned")
            .remove(&n);
        outcome
    }

    /// A stored result for `n`, if any (errors count as a miss: the job is then simply computed).
    pub async fn lookup(&self, store: &Store, n: u64) -> Option<Arc<str>> {
        if n < MIN_CACHED_N {
            return None;
        }
        let key = result_key(store, n);
        let found: Result<Option<String>, StoreError> =
            store
                .run(|mut conn| async move {
                    Ok(redis::cmd("GET").arg(&key).query_async(&mut conn).await?)
                })
                .await;
        let output = found.ok().flatten()?;
        // A damaged entry is ignored rather than served.
        (!output.is_empty() && output.bytes().all(|b| b.is_ascii_digit())).then(|| {
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
            Arc::from(output)
        })
    }

    /// Stores the result of `n`, expiring with job `id`'s record (best effort).
    pub async fn remember(&self, store: &Store, id: &JobId, n: u64, output: &str) {
        if n < MIN_CACHED_N {
            return;
        }
        let job = store.keys().job(id);
        let key = result_key(store, n);
        let stored: Result<(), StoreError> = store
            .run(|mut conn| async move {
                STORE_RESULT
                    .key(&job)
                    .key(&key)
                    .arg(output)
                    .invoke_async::<()>(&mut conn)
                    .await?;
                Ok(())
            })
            .await;
        if let Err(e) = stored {
            tracing::debug!(error = %e, "could not cache a result");
        }
    }
}

fn result_key(store: &Store, n: u64) -> String {
    format!("{}result:{n}", store.keys().prefix())
}
