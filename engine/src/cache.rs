//! Identical inputs are computed once: a job for an n that this worker is already computing joins that
//! computation, and a job for an n whose result is still stored is answered from it.
//!
//! A computation runs in its own task, apart from the jobs that wait for it, so that one of them can
//! be cancelled without stopping the work the others wait for. When the last job waiting for a
//! computation leaves, the computation is stopped at its next checkpoint.
//!
//! Two workers that start the same n at the same moment each compute it (the cache is filled by
//! whichever finishes first); coordinating them would cost a lock round trip on every job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use herald_protocol::JobId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backend::JobStore;
use herald_models::compute::Progress;

/// Below this n a computation is cheaper than a round trip to the store, so results are neither
/// looked up nor stored.
pub const MIN_CACHED_N: u64 = 2_000;

/// How a computation ended, shared by every job that waited for it.
#[derive(Debug, Clone)]
pub enum Computed {
    /// The decimal output.
    Done(Arc<str>),
    /// The computation failed (time limit, internal error) with this message.
    Failed(String),
    /// The worker is stopping, or nobody waits any more.
    Stopped,
}

/// Counters of the work this worker did and reused.
#[derive(Debug, Default)]
pub struct ComputeStats {
    /// Computations run.
    pub computations: AtomicU64,
    /// Jobs answered from a computation in flight or a stored result.
    pub reused: AtomicU64,
}

/// What a running computation shares with the jobs that wait for it.
pub struct FlightState {
    /// The latest progress of the computation.
    pub progress: watch::Sender<Option<Progress>>,
    /// Cancelled when no job waits any more: the computation should stop.
    pub abandoned: CancellationToken,
    done: watch::Sender<Option<Computed>>,
    waiting: Mutex<usize>,
}

impl FlightState {
    /// The state of a computation no other job can join (for inputs too small to share).
    pub fn detached() -> Arc<Self> {
        Arc::new(Self {
            progress: watch::channel(None).0,
            abandoned: CancellationToken::new(),
            done: watch::channel(None).0,
            waiting: Mutex::new(1),
        })
    }
}

/// One job's membership in a computation; leaving (dropping it) may stop the computation.
pub struct Flight {
    n: u64,
    state: Arc<FlightState>,
    done: watch::Receiver<Option<Computed>>,
    cache: Cache,
}

impl Flight {
    /// The outcome, once the computation ends.
    pub async fn outcome(&mut self) -> Computed {
        match self.done.wait_for(Option::is_some).await {
            Ok(done) => done.clone().unwrap_or(Computed::Stopped),
            Err(_) => Computed::Stopped,
        }
    }

    /// The latest progress reported.
    pub fn progress(&self) -> Option<Progress> {
        *self.state.progress.borrow()
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        // Under the table's lock, so that no job joins a computation that is being abandoned.
        let mut flights = self
            .cache
            .flights
            .lock()
            .expect("flight table never poisoned");
        let mut waiting = self.state.waiting.lock().expect("flight never poisoned");
        *waiting -= 1;
        if *waiting == 0 && self.state.done.borrow().is_none() {
            self.state.abandoned.cancel();
            if flights
                .get(&self.n)
                .is_some_and(|f| Arc::ptr_eq(f, &self.state))
            {
                flights.remove(&self.n);
            }
        }
    }
}

/// The in-flight table and the stored results.
#[derive(Clone, Default)]
pub struct Cache {
    flights: Arc<Mutex<HashMap<u64, Arc<FlightState>>>>,
    /// Counters.
    pub stats: Arc<ComputeStats>,
}

impl Cache {
    /// Joins the computation of `n` running here, or starts one with `compute` in a task of its own.
    pub fn join(
        &self,
        n: u64,
        compute: impl FnOnce(Arc<FlightState>) -> BoxFuture<'static, Computed>,
    ) -> Flight {
        let mut flights = self.flights.lock().expect("flight table never poisoned");
        if let Some(state) = flights.get(&n) {
            *state.waiting.lock().expect("flight never poisoned") += 1;
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
            return Flight {
                n,
                state: state.clone(),
                done: state.done.subscribe(),
                cache: self.clone(),
            };
        }
        let (done, done_rx) = watch::channel(None);
        let state = Arc::new(FlightState {
            progress: watch::channel(None).0,
            abandoned: CancellationToken::new(),
            done,
            waiting: Mutex::new(1),
        });
        flights.insert(n, state.clone());
        let work = compute(state.clone());
        let table = self.flights.clone();
        let finished = state.clone();
        tokio::spawn(async move {
            let outcome = work.await;
            let mut flights = table.lock().expect("flight table never poisoned");
            if flights.get(&n).is_some_and(|f| Arc::ptr_eq(f, &finished)) {
                flights.remove(&n);
            }
            finished.done.send_replace(Some(outcome));
        });
        Flight {
            n,
            state,
            done: done_rx,
            cache: self.clone(),
        }
    }

    /// A stored result for `n`, if any (errors count as a miss: the job is then simply computed).
    pub async fn lookup(&self, store: &dyn JobStore, n: u64) -> Option<Arc<str>> {
        if n < MIN_CACHED_N {
            return None;
        }
        let output = store.cached_result(n).await.ok().flatten()?;
        // A damaged entry is ignored rather than served.
        (!output.is_empty() && output.bytes().all(|b| b.is_ascii_digit())).then(|| {
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
            Arc::from(output)
        })
    }

    /// Stores the result of `n`, expiring with job `id`'s record (best effort).
    pub async fn remember(&self, store: &dyn JobStore, id: &JobId, n: u64, output: &str) {
        if n < MIN_CACHED_N {
            return;
        }
        if let Err(e) = store.cache_result(id, n, output).await {
            tracing::debug!(error = %e, "could not cache a result");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// A computation that runs until it is abandoned, and says whether it was.
    fn endless(state: Arc<FlightState>) -> BoxFuture<'static, Computed> {
        async move {
            state.abandoned.cancelled().await;
            Computed::Stopped
        }
        .boxed()
    }

    #[tokio::test]
    async fn the_last_job_to_leave_stops_the_computation() {
        let cache = Cache::default();
        let first = cache.join(7, endless);
        let second = cache.join(7, |_| unreachable!("joins the running computation"));
        let state = first.state.clone();
        drop(first);
        assert!(!state.abandoned.is_cancelled(), "another job still waits");
        drop(second);
        assert!(state.abandoned.is_cancelled());
        // A new job for the same n starts afresh rather than joining the abandoned computation.
        let mut fresh = cache.join(7, |_| async { Computed::Done(Arc::from("5040")) }.boxed());
        assert!(matches!(fresh.outcome().await, Computed::Done(out) if &*out == "5040"));
    }

    #[tokio::test]
    async fn every_waiting_job_gets_the_outcome() {
        let cache = Cache::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut first = cache.join(9, move |_| {
            async move {
                let _ = rx.await;
                Computed::Done(Arc::from("362880"))
            }
            .boxed()
        });
        let mut second = cache.join(9, |_| unreachable!());
        tx.send(()).unwrap();
        for flight in [&mut first, &mut second] {
            assert!(matches!(flight.outcome().await, Computed::Done(out) if &*out == "362880"));
        }
        assert_eq!(cache.stats.reused.load(Ordering::Relaxed), 1);
    }
}
