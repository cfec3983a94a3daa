//! What a worker does with one job, whatever carried it: mark it running, compute it on a blocking
//! thread within its time limit while reporting progress and watching for a cancel, store the final
//! record, and tell the server instances that wait. The same code runs in `herald-worker` and in the
//! server's embedded mode.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use herald_protocol::{
    unix_ms, Completion, JobId, JobMessage, JobRecord, JobStatus, ProgressMessage,
};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backend::{Finish, Notifier, Start, Store, StoreError};
use crate::cache::{Cache, Computed, FlightState, MIN_CACHED_N};
use crate::metrics::WorkerMetrics;
use herald_models::compute;

/// The limits a worker applies to every job.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
    /// Largest n computed; a larger one fails.
    pub max_n: u64,
    /// Starts of one job before it fails for good.
    pub max_attempts: u32,
    /// Longest computation.
    pub time_limit: Duration,
}

/// What processing a job needs; cheap to clone.
#[derive(Clone)]
pub struct JobContext {
    /// The job store.
    pub store: Store,
    /// How completions and progress reach the servers.
    pub notifier: Arc<dyn Notifier>,
    /// The worker's metrics.
    pub metrics: Arc<WorkerMetrics>,
    /// The limits.
    pub limits: JobLimits,
    /// Computations running at once (a reconnect can hand over more deliveries than the old channel's
    /// prefetch allowed while old ones still compute).
    pub slots: Arc<Semaphore>,
    /// Cancelled when running jobs must stop at once and go back to the queue (end of the shutdown grace).
    pub stop: CancellationToken,
    /// Computations in flight and stored results, so identical inputs are computed once.
    pub cache: Cache,
}

/// What is left to do once a job has been processed.
#[derive(Debug)]
pub enum Processed {
    /// Nothing to publish: the record is gone, or another writer already finished and published it.
    Nothing,
    /// Publish `completion` once to each of `watchers` (server instances' routing keys). Then, if
    /// `dead_letter`, reject the message to the dead-letter queue instead of acknowledging it.
    Publish {
        completion: Box<Completion>,
        watchers: Vec<String>,
        dead_letter: bool,
    },
    /// Stopped by the worker's shutdown before it finished: return the message to the queue.
    Abandoned,
    /// The stored record is damaged: nothing sensible can be done with the job but to set it aside.
    Damaged,
}

/// How a job's message ends, once the job has been handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settle {
    /// Done with it.
    Ack,
    /// Back to the queue, for this worker or another (the worker is stopping, or the completion
    /// could not be sent).
    Requeue,
    /// Set aside in the dead-letter queue.
    DeadLetter,
}

/// How waiting for a computation ended, for one job.
enum Outcome {
    /// The computation ended (or was already stored).
    Computed(Computed),
    /// A client cancelled this job.
    Cancelled,
}

/// Longest pause between two tries of a store operation during an outage.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Pause before a job whose completion could not be sent goes back to the queue.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Below this n a computation takes under 20 µs here (about 17 µs at 500; BENCHMARKS.md,
/// "Throughput"), less than handing it to a blocking thread and back costs, so it runs in place.
pub const INLINE_BELOW_N: u64 = 500;

/// How often a running job checks for a cancel: a cancel takes effect within about this long (plus
/// one checkpoint of the computation, about a millisecond).
pub const CANCEL_POLL: Duration = Duration::from_millis(50);

/// How often a job that waits for a computing slot checks for a cancel.
pub const WAITING_POLL: Duration = Duration::from_millis(250);

/// Shortest gap between two progress messages of one job, and how long a job runs before its first:
/// jobs shorter than this send none.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);

impl JobContext {
    /// Handles one job to the end: processes it, then sends its completion to the instances that wait,
    /// and says how its message should be settled.
    pub async fn handle(&self, job: JobMessage) -> Settle {
        match self.process(job).await {
            Processed::Nothing => Settle::Ack,
            Processed::Abandoned => Settle::Requeue,
            Processed::Damaged => Settle::DeadLetter,
            Processed::Publish {
                completion,
                watchers,
                dead_letter,
            } => match self.notifier.completion(&watchers, &completion).await {
                Ok(()) if dead_letter => Settle::DeadLetter,
                Ok(()) => Settle::Ack,
                Err(e) => {
                    // The result is stored: a redelivery sends it again without computing.
                    error!(error = %e, "completion not sent; returning the job to the queue");
                    tokio::time::sleep(RETRY_PAUSE).await;
                    Settle::Requeue
                }
            },
        }
    }

    /// Runs `op` until the store answers, backing off while it is unreachable; `None` if the worker's stop
    /// comes first. A job keeps its delivery during an outage rather than being requeued, so an outage
    /// does not count as a failed attempt.
    async fn persist<T, F, Fut>(&self, what: &str, mut op: F) -> Result<Option<T>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut backoff = Duration::from_millis(100);
        loop {
            match op().await {
                Ok(value) => return Ok(Some(value)),
                Err(StoreError::Unavailable(reason)) => {
                    warn!(%reason, "job store unavailable while trying to {what}; retrying");
                    tokio::select! {
                        _ = self.stop.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Runs one job to its final state.
    ///
    /// Safe to call again for a job already processed (a redelivery): a job whose result is stored is
    /// not computed again; its completion is published again instead, since the first publish may not
    /// have happened, and servers drop the duplicate.
    pub async fn process(&self, job: JobMessage) -> Processed {
        match self.try_process(job).await {
            Ok(processed) => processed,
            Err(e) => {
                error!(error = %e, "job record is damaged; dead-lettering the job");
                Processed::Damaged
            }
        }
    }

    async fn try_process(&self, job: JobMessage) -> Result<Processed, StoreError> {
        let started_ms = unix_ms();
        let Some(start) = self
            .persist("start the job", || self.store.start(&job.id, started_ms))
            .await?
        else {
            return Ok(Processed::Abandoned);
        };
        let (attempts, submitted_ms, cancel_requested) = match start {
            Start::Missing => {
                warn!("job record is missing (expired or never stored); dropping the job");
                return Ok(Processed::Nothing);
            }
            Start::Final => return self.republish(job).await,
            Start::Run {
                attempts,
                submitted_ms,
                cancel_requested,
            } => (attempts, submitted_ms, cancel_requested),
        };
        let mut record = JobRecord::queued(job.n, submitted_ms);
        record.started_ms = Some(started_ms);
        record.attempts = attempts;
        let mut dead_letter = false;
        if cancel_requested {
            // Cancelled while an earlier start ran, and that worker never finished it.
            record.status = JobStatus::Cancelled;
        } else if attempts > self.limits.max_attempts {
            // Earlier starts never finished: the job killed its worker (or its connection) each time.
            warn!(attempts, "job exceeded its attempts; failing it");
            record.status = JobStatus::Failed;
            record.error = Some(format!(
                "gave up after {} attempts: the job stopped its worker each time",
                self.limits.max_attempts
            ));
            dead_letter = true;
        } else if job.n > self.limits.max_n {
            // The server checks this too; a worker still refuses what would exhaust its memory.
            record.status = JobStatus::Failed;
            record.error = Some(format!(
                "n is above this worker's maximum of {}",
                self.limits.max_n
            ));
        } else {
            info!(n = job.n, attempts, "job started");
            self.metrics.attempts.observe(f64::from(attempts));
            let clock = Instant::now();
            match self.obtain(job.id, job.n).await {
                Outcome::Cancelled => {
                    info!("job cancelled while running");
                    record.status = JobStatus::Cancelled;
                }
                Outcome::Computed(Computed::Done(output)) => {
                    record.status = JobStatus::Done;
                    record.compute_ms = Some(clock.elapsed().as_millis() as u64);
                    record.digits = Some(output.len() as u64);
                    record.output = Some(output);
                }
                Outcome::Computed(Computed::Failed(error)) => {
                    record.status = JobStatus::Failed;
                    record.error = Some(error);
                }
                Outcome::Computed(Computed::Stopped) => return Ok(Processed::Abandoned),
            }
        }
        record.finished_ms = Some(unix_ms());
        let Some(finish) = self
            .persist("store the result", || self.store.finish(&job.id, &record))
            .await?
        else {
            return Ok(Processed::Abandoned);
        };
        match finish {
            Finish::Applied { watchers } => {
                info!(status = %record.status, compute_ms = record.compute_ms, "job finished");
                self.metrics.finished(record.status, record.compute_ms);
                Ok(Processed::Publish {
                    completion: Box::new(Completion::new(job.id, record)),
                    watchers,
                    dead_letter,
                })
            }
            // Another writer's completion, or this worker's own earlier write whose reply was lost
            // (say, Redis WAIT fell short): publish what is stored, as after a redelivery. Servers
            // drop a second copy.
            Finish::AlreadyFinal => self.republish(job).await,
            Finish::Missing => {
                warn!("job record expired while the job ran; result dropped");
                Ok(Processed::Nothing)
            }
        }
    }

    /// The output for n: reused from a stored result or a computation in flight, or computed here.
    /// While it waits, the job reports progress and checks for a cancel.
    async fn obtain(&self, id: JobId, n: u64) -> Outcome {
        if n < MIN_CACHED_N {
            // Well under a millisecond: no progress to report, nothing to share, and no time for a
            // cancel to land, so none of the machinery below is worth its cost on the hot path.
            return Outcome::Computed(self.compute(n, FlightState::detached()).await);
        }
        if let Some(output) = self.cache.lookup(self.store.as_ref(), n).await {
            info!("answered from a stored result of the same n");
            return Outcome::Computed(Computed::Done(output));
        }
        let context = self.clone();
        let mut flight = self.cache.join(n, move |state| {
            async move {
                let computed = context.compute(n, state).await;
                if let Computed::Done(output) = &computed {
                    context
                        .cache
                        .remember(context.store.as_ref(), &id, n, output)
                        .await;
                }
                computed
            }
            .boxed()
        });
        let started = Instant::now();
        let mut polls =
            tokio::time::interval_at(tokio::time::Instant::now() + CANCEL_POLL, CANCEL_POLL);
        polls.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent: Option<(Instant, f64)> = None;
        let mut last_check = Instant::now();
        loop {
            tokio::select! {
                computed = flight.outcome() => return Outcome::Computed(computed),
                _ = polls.tick() => {
                    // A job still waiting for a computing slot (a worker holds many in hand) checks
                    // less often: dozens of them would otherwise cost Redis hundreds of calls a
                    // second for nothing.
                    if flight.progress().is_none() && last_check.elapsed() < WAITING_POLL {
                        continue;
                    }
                    last_check = Instant::now();
                    let due = started.elapsed() >= PROGRESS_EVERY
                        && last_sent.is_none_or(|(at, _)| at.elapsed() >= PROGRESS_EVERY);
                    let progress = flight
                        .progress()
                        .filter(|p| due && last_sent.is_none_or(|(_, f)| p.fraction > f));
                    match self.store.report(&id, progress.map(|p| p.fraction)).await {
                        // Leaving the flight stops the computation if no other job waits for it.
                        Ok(report) if report.stop => return Outcome::Cancelled,
                        Ok(report) => {
                            if let Some(progress) = progress {
                                last_sent = Some((Instant::now(), progress.fraction));
                                let message = ProgressMessage {
                                    id,
                                    fraction: progress.fraction,
                                    phase: progress.phase,
                                };
                                self.notifier.progress(&report.watchers, &message).await;
                            }
                        }
                        // The job goes on: a cancel is only noticed later, progress is skipped.
                        Err(e) => debug!(error = %e, "could not report on a running job"),
                    }
                }
            }
        }
    }

    async fn compute(&self, n: u64, flight: Arc<FlightState>) -> Computed {
        if n < INLINE_BELOW_N {
            self.cache
                .stats
                .computations
                .fetch_add(1, Ordering::Relaxed);
            return match compute::factorial_decimal(n, &mut |_| true) {
                Ok(output) => Computed::Done(Arc::from(output)),
                // A checkpoint that never says stop cannot interrupt it.
                Err(_) => Computed::Failed("internal error while computing".into()),
            };
        }
        let Ok(_slot) = self.slots.clone().acquire_owned().await else {
            return Computed::Stopped;
        };
        self.cache
            .stats
            .computations
            .fetch_add(1, Ordering::Relaxed);
        let stop = self.stop.clone();
        let time_limit = self.limits.time_limit;
        let computed = tokio::task::spawn_blocking(move || {
            let clock = Instant::now();
            let mut timed_out = false;
            let output = compute::factorial_decimal(n, &mut |progress| {
                if clock.elapsed() >= time_limit {
                    timed_out = true;
                }
                flight.progress.send_replace(Some(progress));
                !timed_out && !stop.is_cancelled() && !flight.abandoned.is_cancelled()
            });
            (output, timed_out)
        })
        .await;
        match computed {
            Ok((Ok(output), _)) => Computed::Done(Arc::from(output)),
            Ok((Err(_), true)) => {
                Computed::Failed(format!("time limit exceeded ({} s)", time_limit.as_secs()))
            }
            Ok((Err(_), false)) => Computed::Stopped,
            Err(panic) => {
                error!(error = %panic, "computation panicked");
                Computed::Failed("internal error while computing".into())
            }
        }
    }

    async fn republish(&self, job: JobMessage) -> Result<Processed, StoreError> {
        let Some(record) = self
            .persist("read the stored result", || self.store.get(&job.id))
            .await?
        else {
            return Ok(Processed::Abandoned);
        };
        let Some(record) = record else {
            return Ok(Processed::Nothing);
        };
        let Some(watchers) = self
            .persist("read the watchers", || self.store.watchers(&job.id))
            .await?
        else {
            return Ok(Processed::Abandoned);
        };
        info!(status = %record.status, "job already final; publishing its completion again");
        Ok(Processed::Publish {
            completion: Box::new(Completion::new(job.id, record)),
            watchers,
            dead_letter: false,
        })
    }
}
