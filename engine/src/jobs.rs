//! What a worker does with one job, whatever carried it: mark it running, run its model within the time
//! limit while reporting progress and watching for a cancel, store the final record, and tell the
//! server instances that wait. The same code runs in `herald-worker` and in the server's embedded mode.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::FutureExt;
use herald_models::{Model, Models, Run, RunError};
use herald_protocol::record::result_digest;
use herald_protocol::{
    unix_ms, Completion, JobId, JobMessage, JobRecord, JobStatus, Json, ProgressMessage,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::backend::{Finish, Notifier, Start, Store, StoreError};
use crate::cache::{Cache, Computed, FlightState};
use crate::metrics::WorkerMetrics;

/// The limits a worker applies to every job.
#[derive(Debug, Clone, Copy)]
pub struct JobLimits {
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
    /// The models this worker runs.
    pub models: Models,
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
    /// Stopped by the worker's shutdown before it finished, or its model's program went away during
    /// it (an attempt, counted when it started): return the message to the queue.
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

/// How a job's start went, as the store told it.
struct Started {
    /// Starts so far, this one included if it was counted.
    attempts: u32,
    /// Whether this start was counted.
    counted: bool,
    /// When the server accepted the job.
    submitted_ms: u64,
    /// When this start happened.
    at_ms: u64,
    /// A cancel came while an earlier start ran: end it as cancelled without computing.
    cancel_requested: bool,
}

impl Started {
    /// Starts before this one: each ended without a result.
    fn tried(&self) -> u32 {
        if self.counted {
            self.attempts.saturating_sub(1)
        } else {
            self.attempts
        }
    }
}

/// How waiting for a computation ended, for one job.
#[derive(Debug)]
enum Outcome {
    /// Nothing more to do with the job, as the store says (see [`JobContext::start`]).
    Over(Processed),
    /// Earlier starts never finished: fail it for good.
    GaveUp,
    /// The computation ended (or was already stored).
    Computed(Computed),
    /// A client cancelled this job.
    Cancelled,
}

/// Longest pause between two tries of a store operation during an outage.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Pause before a job whose completion could not be sent goes back to the queue.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

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
        let model = self.models.get(&job.model).cloned();
        let input = model.as_ref().map(|model| model.validate(&job.input));
        // A job that must wait for a compute slot counts its attempt only once it has one (see
        // `obtain`): one still waiting in this worker's hand when the worker dies was never tried.
        let waits = matches!((&model, &input), (Some(m), Some(Ok(i))) if !m.is_quick(i));
        let started = match self.start(job.id, &job.model, !waits).await? {
            Ok(started) => started,
            Err(over) => return Ok(over),
        };
        let mut record = JobRecord::queued(&job.model, job.input.clone(), started.submitted_ms);
        record.started_ms = Some(started.at_ms);
        record.attempts = started.attempts;
        let mut dead_letter = false;
        match (model, input) {
            _ if started.cancel_requested => {
                // Cancelled while an earlier start ran, and that worker never finished it.
                record.status = JobStatus::Cancelled;
            }
            _ if started.tried() >= self.limits.max_attempts => {
                // Earlier starts never finished: the job stopped its worker (or its model's program,
                // or the connection) each time.
                warn!(
                    attempts = started.tried(),
                    "job exceeded its attempts; failing it"
                );
                give_up(&mut record, started.tried(), None);
                dead_letter = true;
            }
            (None, _) => {
                // Only queues of models served here are consumed: this message is misrouted.
                warn!(model = %job.model, "job for a model this worker does not serve");
                record.status = JobStatus::Failed;
                record.error = Some(format!("no worker here serves the model {:?}", job.model));
                dead_letter = true;
            }
            (Some(_), Some(Err(refused))) => {
                record.status = JobStatus::Failed;
                record.error = Some(refused.to_string());
            }
            (Some(model), Some(Ok(input))) => {
                let clock = Instant::now();
                let outcome = if waits {
                    self.obtain(job.id, &model, input, &mut record).await?
                } else {
                    self.run_quick(job.id, &model, input).await
                };
                match outcome {
                    Outcome::Over(over) => return Ok(over),
                    Outcome::GaveUp => {
                        let tried = record.attempts.saturating_sub(1);
                        give_up(&mut record, tried, None);
                        dead_letter = true;
                    }
                    Outcome::Cancelled => {
                        info!("job cancelled while running");
                        record.status = JobStatus::Cancelled;
                    }
                    Outcome::Computed(Computed::Done(output)) => {
                        record.status = JobStatus::Done;
                        record.compute_ms = Some(clock.elapsed().as_millis() as u64);
                        record.output = Some(output);
                    }
                    Outcome::Computed(Computed::Failed(error)) => {
                        record.status = JobStatus::Failed;
                        record.error = Some(error);
                    }
                    Outcome::Computed(Computed::Crashed(reason)) => {
                        let attempts = record.attempts;
                        if attempts < self.limits.max_attempts {
                            warn!(%reason, attempts, "the model's program went away during the job; returning it to the queue");
                            return Ok(Processed::Abandoned);
                        }
                        warn!(%reason, attempts, "the model's program went away during the job's last attempt; failing it");
                        give_up(&mut record, attempts, Some(&reason));
                        dead_letter = true;
                    }
                    Outcome::Computed(Computed::Stopped) => return Ok(Processed::Abandoned),
                }
            }
            (Some(_), None) => unreachable!("an input is validated whenever the model is known"),
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
            Finish::AlreadyFinal => self.republish(job.id).await,
            Finish::Missing => {
                warn!("job record expired while the job ran; result dropped");
                Ok(Processed::Nothing)
            }
        }
    }

    /// Reads where job `id` (of `model`) stands before it runs and, if `count`, marks it running and counts the
    /// attempt. `Err` holds what is left to do when the job must not run (gone, already final, or
    /// the worker stops during a store outage).
    async fn start(
        &self,
        id: JobId,
        model: &str,
        count: bool,
    ) -> Result<Result<Started, Processed>, StoreError> {
        let at_ms = unix_ms();
        let Some(start) = self
            .persist("start the job", || self.store.start(&id, at_ms, count))
            .await?
        else {
            return Ok(Err(Processed::Abandoned));
        };
        Ok(match start {
            Start::Missing => {
                warn!("job record is missing (expired or never stored); dropping the job");
                Err(Processed::Nothing)
            }
            Start::Final => Err(self.republish(id).await?),
            Start::Run {
                attempts,
                submitted_ms,
                cancel_requested,
            } => {
                if count {
                    info!(model, attempts, "job started");
                    self.metrics.attempts.observe(f64::from(attempts));
                }
                Ok(Started {
                    attempts,
                    counted: count,
                    submitted_ms,
                    at_ms,
                    cancel_requested,
                })
            }
        })
    }

    /// Runs a quick input at once: well under a millisecond, so there is no progress to report,
    /// nothing to share, and no time for a cancel to land; none of `obtain`'s machinery is worth
    /// its cost on the hot path.
    async fn run_quick(&self, id: JobId, model: &Arc<dyn Model>, input: Json) -> Outcome {
        let run = Run::new(
            id,
            self.limits.time_limit,
            self.stop.clone(),
            FlightState::detached().progress.clone(),
        );
        self.cache
            .stats
            .computations
            .fetch_add(1, Ordering::Relaxed);
        Outcome::Computed(computed(
            model.run(input, run).await,
            self.limits.time_limit,
        ))
    }

    /// The output for `input`: reused from a stored result or a computation in flight, or computed
    /// here once a compute slot is free. The job's attempt is counted (in `record`) when it joins a
    /// computation or gets its slot, not before. While it waits, the job reports progress and checks
    /// for a cancel.
    async fn obtain(
        &self,
        id: JobId,
        model: &Arc<dyn Model>,
        input: Json,
        record: &mut JobRecord,
    ) -> Result<Outcome, StoreError> {
        let shares = model.shares_results(&input);
        if shares {
            if let Some(output) = self
                .cache
                .lookup(self.store.as_ref(), model.as_ref(), &input)
                .await
            {
                info!("answered from a stored result of the same input");
                return Ok(Outcome::Computed(Computed::Done(output)));
            }
        }
        let key = if shares {
            result_digest(model.name(), input.raw())
        } else {
            id.to_string()
        };
        // Joining a computation of the same input needs no slot of its own.
        let slot = match self.cache.joinable(&key) {
            true => None,
            false => tokio::select! {
                _ = self.stop.cancelled() => return Ok(Outcome::Computed(Computed::Stopped)),
                slot = self.slots.clone().acquire_owned() => match slot {
                    Ok(slot) => Some(slot),
                    Err(_) => return Ok(Outcome::Computed(Computed::Stopped)),
                },
            },
        };
        let started = match self.start(id, model.name(), true).await? {
            Ok(started) => started,
            Err(over) => return Ok(Outcome::Over(over)),
        };
        record.attempts = started.attempts;
        record.started_ms = Some(started.at_ms);
        if started.cancel_requested {
            return Ok(Outcome::Cancelled);
        }
        if started.tried() >= self.limits.max_attempts {
            return Ok(Outcome::GaveUp);
        }
        let context = self.clone();
        let running = model.clone();
        let mut flight = self.cache.join(key, &self.stop, move |state| {
            async move {
                let computed = context
                    .compute(id, running.as_ref(), input.clone(), state, slot)
                    .await;
                if let Computed::Done(output) = &computed {
                    context
                        .cache
                        .remember(
                            context.store.as_ref(),
                            &id,
                            running.as_ref(),
                            &input,
                            output,
                        )
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
                computed = flight.outcome() => return Ok(Outcome::Computed(computed)),
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
                    let reported = progress
                        .as_ref()
                        .map(|p| (p.fraction, p.phase.as_deref()));
                    match self.store.report(&id, reported).await {
                        // Leaving the flight stops the computation if no other job waits for it.
                        Ok(report) if report.stop => return Ok(Outcome::Cancelled),
                        Ok(report) => {
                            if let Some(progress) = progress {
                                last_sent = Some((Instant::now(), progress.fraction));
                                let message = ProgressMessage {
                                    id,
                                    model: model.name().to_owned(),
                                    fraction: progress.fraction,
                                    phase: progress.phase.map(|p| p.into_owned()),
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

    /// Runs `model` on `input` in a compute slot: `slot` if the job brought one, else one it waits
    /// for (a job that found the computation of its input running joined it, and the computation
    /// ended before it could start).
    async fn compute(
        &self,
        id: JobId,
        model: &dyn Model,
        input: Json,
        flight: Arc<FlightState>,
        slot: Option<OwnedSemaphorePermit>,
    ) -> Computed {
        let _slot = match slot {
            Some(slot) => slot,
            None => match self.slots.clone().acquire_owned().await {
                Ok(slot) => slot,
                Err(_) => return Computed::Stopped,
            },
        };
        self.cache
            .stats
            .computations
            .fetch_add(1, Ordering::Relaxed);
        let run = Run::new(
            id,
            self.limits.time_limit,
            flight.abandoned.clone(),
            flight.progress.clone(),
        );
        computed(model.run(input, run).await, self.limits.time_limit)
    }

    async fn republish(&self, id: JobId) -> Result<Processed, StoreError> {
        let Some(record) = self
            .persist("read the stored result", || self.store.get(&id))
            .await?
        else {
            return Ok(Processed::Abandoned);
        };
        let Some(record) = record else {
            return Ok(Processed::Nothing);
        };
        let Some(watchers) = self
            .persist("read the watchers", || self.store.watchers(&id))
            .await?
        else {
            return Ok(Processed::Abandoned);
        };
        info!(status = %record.status, "job already final; publishing its completion again");
        Ok(Processed::Publish {
            completion: Box::new(Completion::new(id, record)),
            watchers,
            dead_letter: false,
        })
    }
}

/// Marks a job failed for good after `tried` starts that never finished (`reason`: why the last
/// one ended, when known).
fn give_up(record: &mut JobRecord, tried: u32, reason: Option<&str>) {
    record.status = JobStatus::Failed;
    record.error = Some(match reason {
        Some(reason) => format!("gave up after {tried} attempts: {reason}"),
        None => format!(
            "gave up after {tried} attempts: each one ended without a result (the worker or the model's program stopped)"
        ),
    });
}

/// What a model's run means for the job.
fn computed(result: Result<Json, RunError>, time_limit: Duration) -> Computed {
    match result {
        Ok(output) => Computed::Done(output),
        Err(RunError::Failed(error)) => Computed::Failed(error),
        Err(RunError::TimedOut) => {
            Computed::Failed(format!("time limit exceeded ({} s)", time_limit.as_secs()))
        }
        Err(RunError::Crashed(reason)) => Computed::Crashed(reason),
        Err(RunError::Stopped) => Computed::Stopped,
    }
}
