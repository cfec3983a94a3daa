//! The model interface: what every model behind Herald implements, whether it is built in (the
//! factorial) or a program in another language ([`crate::executable`]), and the context a running
//! job gets to report progress and to learn that it must stop.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use herald_protocol::{JobId, Json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// A model: validates a job's input and computes its output.
///
/// The engine runs [`Model::run`] for every job of the model, within a compute slot of the worker,
/// with the job's time limit, and turns its result into the job's final state. A model never sees the
/// store or the queue.
#[async_trait]
pub trait Model: Send + Sync + 'static {
    /// The name jobs use to ask for this model (see [`herald_protocol::model::check_model_name`]).
    fn name(&self) -> &str;

    /// Checks a job's input and returns the form that is queued, stored and compared when results are
    /// shared (the factorial turns `10` and `{"n": 10}` into `{"n":10}`). The server calls it at
    /// submit when it knows the model, and the worker again before running the job, since a queued
    /// message is input from outside.
    fn validate(&self, input: &Json) -> Result<Json, InputError>;

    /// Whether jobs with this (validated) input may share one computation and one stored output with
    /// every other job of the same input. Only for models whose output depends on nothing but the
    /// input.
    fn shares_results(&self, _input: &Json) -> bool {
        false
    }

    /// Whether this input takes well under a millisecond: the engine then runs it without a compute
    /// slot, progress reports or cancel checks, which would cost more than the work.
    fn is_quick(&self, _input: &Json) -> bool {
        false
    }

    /// Computes the output for a validated input: a JSON value. Reports progress through `run` and
    /// returns soon after [`Run::should_stop`] says so.
    async fn run(&self, input: Json, run: Run) -> Result<Json, RunError>;

    /// Releases what the model holds (its programs, for an executable model) once no job will run
    /// any more: the worker calls it last, when it stops.
    async fn shutdown(&self) {}
}

/// Why an input was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// The input is not what the model takes.
    #[error("{0}")]
    Invalid(String),
    /// The input asks for more than this deployment computes (the factorial's `n` above `--max-n`).
    #[error("{0}")]
    TooLarge(String),
}

/// How a run ended without an output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The model could not compute this input: the job fails with this message, and is not tried again.
    #[error("{0}")]
    Failed(String),
    /// The job ran past its time limit and was stopped.
    #[error("time limit exceeded")]
    TimedOut,
    /// The run was asked to stop (a cancel, the worker's shutdown, or nobody waits any more).
    #[error("stopped")]
    Stopped,
    /// The model's program went away during the job (it exited or was killed): the job counts an
    /// attempt and goes back to the queue, up to the attempts allowed.
    #[error("{0}")]
    Crashed(String),
}

/// How far a run is.
#[derive(Debug, Clone, PartialEq)]
pub struct Progress {
    /// 0.0 ..= 1.0.
    pub fraction: f64,
    /// The part of the work it is in, if the model says.
    pub phase: Option<Cow<'static, str>>,
}

/// Why a run must stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Cancelled, abandoned, or the worker is stopping.
    Stopped,
    /// Past its time limit.
    TimedOut,
}

/// What a running job gets from the engine: where to report progress, and whether to stop.
#[derive(Clone)]
pub struct Run {
    id: JobId,
    progress: Arc<watch::Sender<Option<Progress>>>,
    stop: CancellationToken,
    time_limit: Duration,
    deadline: Instant,
}

impl Run {
    /// A run of job `id` that must end within `time_limit` from now, or when `stop` is cancelled;
    /// progress goes to `progress`.
    pub fn new(
        id: JobId,
        time_limit: Duration,
        stop: CancellationToken,
        progress: Arc<watch::Sender<Option<Progress>>>,
    ) -> Self {
        Self {
            id,
            progress,
            stop,
            time_limit,
            deadline: Instant::now() + time_limit,
        }
    }

    /// A run nobody watches (tests, benchmarks), with `time_limit`.
    pub fn detached(id: JobId, time_limit: Duration) -> Self {
        Self::new(
            id,
            time_limit,
            CancellationToken::new(),
            Arc::new(watch::channel(None).0),
        )
    }

    /// The job's request ID.
    pub fn id(&self) -> JobId {
        self.id
    }

    /// The job's time limit.
    pub fn time_limit(&self) -> Duration {
        self.time_limit
    }

    /// Reports progress; the engine forwards it to the clients that watch, at most four times a second.
    pub fn report(&self, progress: Progress) {
        self.progress.send_replace(Some(progress));
    }

    /// Whether the run must stop now, and why: for code that checks at its own checkpoints (a
    /// computation on a blocking thread).
    pub fn should_stop(&self) -> Option<Stop> {
        if self.stop.is_cancelled() {
            Some(Stop::Stopped)
        } else if Instant::now() >= self.deadline {
            Some(Stop::TimedOut)
        } else {
            None
        }
    }

    /// Waits until the run must stop, and says why: for async code that selects on it.
    pub async fn stopped(&self) -> Stop {
        let deadline = tokio::time::Instant::from_std(self.deadline);
        tokio::select! {
            _ = self.stop.cancelled() => Stop::Stopped,
            _ = tokio::time::sleep_until(deadline) => Stop::TimedOut,
        }
    }
}

/// The models a process serves, by name.
#[derive(Clone, Default)]
pub struct Models {
    by_name: BTreeMap<String, Arc<dyn Model>>,
}

impl Models {
    /// Adds `model`; a second model with the same name replaces the first.
    pub fn with(mut self, model: Arc<dyn Model>) -> Self {
        self.by_name.insert(model.name().to_owned(), model);
        self
    }

    /// The model called `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Model>> {
        self.by_name.get(name)
    }

    /// The names served, in order.
    pub fn names(&self) -> Vec<String> {
        self.by_name.keys().cloned().collect()
    }

    /// Every model served.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn Model>> {
        self.by_name.values()
    }

    /// Whether none is served.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// Shuts every model down (see [`Model::shutdown`]).
    pub async fn shutdown(&self) {
        for model in self.by_name.values() {
            model.shutdown().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_run_stops_on_its_token_or_its_deadline() {
        let run = Run::detached(JobId::nil(), Duration::from_secs(2));
        assert_eq!(run.should_stop(), None);
        assert_eq!(run.stopped().await, Stop::TimedOut);
        let stop = CancellationToken::new();
        let run = Run::new(
            JobId::nil(),
            Duration::from_secs(60),
            stop.clone(),
            Arc::new(watch::channel(None).0),
        );
        stop.cancel();
        assert_eq!(run.should_stop(), Some(Stop::Stopped));
        assert_eq!(run.stopped().await, Stop::Stopped);
    }
}
