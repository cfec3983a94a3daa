//! Identical inputs are computed once: a job whose model and input this worker is already computing
//! joins that computation, and one whose result is still stored is answered from it (for models whose
//! results may be shared; see [`herald_models::Model::shares_results`]).
//!
//! Every computation runs as a flight, shared or not: that is where its progress is kept and where
//! it learns that nobody waits for it any more.
//!
//! A computation runs in its own task, apart from the jobs that wait for it, so that one of them can
//! be cancelled without stopping the work the others wait for. When the last job waiting for a
//! computation leaves, the computation is stopped at its next checkpoint.
//!
//! Two workers that start the same input at the same moment each compute it (the cache is filled by
//! whichever finishes first); coordinating them would cost a lock round trip on every job.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use herald_models::{Model, Progress};
use herald_protocol::{JobId, Json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backend::JobStore;

/// How a computation ended, shared by every job that waited for it.
#[derive(Debug, Clone)]
pub enum Computed {
    /// The output.
    Done(Json),
    /// The computation failed (the model refused the input, the time limit, an internal error) with
    /// this message.
    Failed(String),
    /// The model's program went away during the job: worth another attempt.
    Crashed(String),
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
    pub progress: Arc<watch::Sender<Option<Progress>>>,
    /// Cancelled when no job waits any more: the computation should stop.
    pub abandoned: CancellationToken,
    done: watch::Sender<Option<Computed>>,
    waiting: Mutex<usize>,
}

impl FlightState {
    /// The state of a computation no other job can join (for inputs too small to share).
    pub fn detached() -> Arc<Self> {
        Self::new(&CancellationToken::new()).0
    }

    /// A computation's state, stopped with `stop` (the worker's), and where its outcome arrives.
    fn new(stop: &CancellationToken) -> (Arc<Self>, watch::Receiver<Option<Computed>>) {
        let (done, done_rx) = watch::channel(None);
        let state = Arc::new(Self {
            progress: Arc::new(watch::channel(None).0),
            abandoned: stop.child_token(),
            done,
            waiting: Mutex::new(1),
        });
        (state, done_rx)
    }
}

/// One job's membership in a computation; leaving (dropping it) may stop the computation.
pub struct Flight {
    key: String,
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
        self.state.progress.borrow().clone()
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
                .get(&self.key)
                .is_some_and(|f| Arc::ptr_eq(f, &self.state))
            {
                flights.remove(&self.key);
            }
        }
    }
}

/// The in-flight table and the stored results.
#[derive(Clone, Default)]
pub struct Cache {
    flights: Arc<Mutex<HashMap<String, Arc<FlightState>>>>,
    /// Counters.
    pub stats: Arc<ComputeStats>,
}

impl Cache {
    /// Whether a computation under `key` runs here now, for a job to join.
    pub fn joinable(&self, key: &str) -> bool {
        self.flights
            .lock()
            .expect("flight table never poisoned")
            .contains_key(key)
    }

    /// Joins the computation under `key` running here, or starts one with `compute` in a task of its
    /// own; a computation started here stops when `stop` is cancelled. A computation that must not
    /// be shared gets a key of its own (the job's ID).
    pub fn join(
        &self,
        key: String,
        stop: &CancellationToken,
        compute: impl FnOnce(Arc<FlightState>) -> BoxFuture<'static, Computed>,
    ) -> Flight {
        let mut flights = self.flights.lock().expect("flight table never poisoned");
        if let Some(state) = flights.get(&key) {
            *state.waiting.lock().expect("flight never poisoned") += 1;
            self.stats.reused.fetch_add(1, Ordering::Relaxed);
            return Flight {
                key,
                state: state.clone(),
                done: state.done.subscribe(),
                cache: self.clone(),
            };
        }
        let (state, done_rx) = FlightState::new(stop);
        flights.insert(key.clone(), state.clone());
        let work = compute(state.clone());
        let table = self.flights.clone();
        let finished = state.clone();
        let owned_key = key.clone();
        tokio::spawn(async move {
            let outcome = work.await;
            let mut flights = table.lock().expect("flight table never poisoned");
            if flights
                .get(&owned_key)
                .is_some_and(|f| Arc::ptr_eq(f, &finished))
            {
                flights.remove(&owned_key);
            }
            finished.done.send_replace(Some(outcome));
        });
        Flight {
            key,
            state,
            done: done_rx,
            cache: self.clone(),
        }
    }

    /// A stored output of `model` for `input`, if the model shares results (errors count as a
    /// miss: the job is then simply computed).
    pub async fn lookup(
        &self,
        store: &dyn JobStore,
        model: &dyn Model,
        input: &Json,
    ) -> Option<Json> {
        if !model.shares_results(input) {
            return None;
        }
        let output = store
            .cached_result(model.name(), input)
            .await
            .ok()
            .flatten()?;
        self.stats.reused.fetch_add(1, Ordering::Relaxed);
        Some(output)
    }

    /// Stores the output of `model` for `input`, expiring with job `id`'s record (best effort).
    pub async fn remember(
        &self,
        store: &dyn JobStore,
        id: &JobId,
        model: &dyn Model,
        input: &Json,
        output: &Json,
    ) {
        if !model.shares_results(input) {
            return;
        }
        if let Err(e) = store.cache_result(id, model.name(), input, output).await {
            tracing::debug!(error = %e, "could not cache a result");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;
    use herald_protocol::model::json_string;

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
        let stop = CancellationToken::new();
        let first = cache.join("7".into(), &stop, endless);
        let second = cache.join("7".into(), &stop, |_| {
            unreachable!("joins the running computation")
        });
        let state = first.state.clone();
        drop(first);
        assert!(!state.abandoned.is_cancelled(), "another job still waits");
        drop(second);
        assert!(state.abandoned.is_cancelled());
        // A new job for the same n starts afresh rather than joining the abandoned computation.
        let mut fresh = cache.join("7".into(), &stop, |_| {
            async { Computed::Done(json_string("5040")) }.boxed()
        });
        assert!(matches!(fresh.outcome().await, Computed::Done(out) if out.get() == "\"5040\""));
    }

    #[tokio::test]
    async fn the_workers_stop_stops_every_computation() {
        let cache = Cache::default();
        let stop = CancellationToken::new();
        let flight = cache.join("8".into(), &stop, endless);
        stop.cancel();
        assert!(flight.state.abandoned.is_cancelled());
    }

    #[tokio::test]
    async fn every_waiting_job_gets_the_outcome() {
        let cache = Cache::default();
        let stop = CancellationToken::new();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut first = cache.join("9".into(), &stop, move |_| {
            async move {
                let _ = rx.await;
                Computed::Done(json_string("362880"))
            }
            .boxed()
        });
        let mut second = cache.join("9".into(), &stop, |_| unreachable!());
        tx.send(()).unwrap();
        for flight in [&mut first, &mut second] {
            assert!(
                matches!(flight.outcome().await, Computed::Done(out) if out.get() == "\"362880\"")
            );
        }
        assert_eq!(cache.stats.reused.load(Ordering::Relaxed), 1);
    }
}
