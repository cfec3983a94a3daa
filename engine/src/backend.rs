//! The small interfaces between job handling and what carries jobs: the job store, the job queue and
//! the notices (completions, progress) that reach server instances.
//!
//! Each has two implementations: Redis and RabbitMQ for distributed deployments ([`crate::store`],
//! [`crate::amqp`]), and in-process ones for the server's embedded mode ([`crate::memory`]). Job
//! processing ([`crate::jobs`]), the server's sessions and its HTTP API only ever see these traits, so
//! both modes run the same code.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::{Completion, JobId, JobMessage, JobRecord, JobStatus, Json, ProgressMessage};

pub use crate::clients::{Admission, ClientLimits, OverQuota};
pub use crate::store::StoreError;

/// The job store, shared by every server instance and worker.
pub type Store = Arc<dyn JobStore>;

/// What a worker found when it went to start a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// No record: it expired or was never written. Nobody can be waiting for it.
    Missing,
    /// Already in a final state (a redelivery after the result was stored, or a job cancelled while
    /// queued): do not compute again.
    Final,
    /// Pending: compute it (marked running if the start counted).
    Run {
        /// Starts so far, this one included if it counted.
        attempts: u32,
        /// When the server accepted it.
        submitted_ms: u64,
        /// A cancel came while an earlier start ran: end it as cancelled without computing.
        cancel_requested: bool,
    },
}

/// What happened when a final state was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// No record any more (expired while running).
    Missing,
    /// Another writer finished it first; its completion was published by that writer.
    AlreadyFinal,
    /// Stored; these server instances wait for the completion.
    Applied {
        /// Routing keys of the instances with a socket waiting.
        watchers: Vec<String>,
    },
}

/// What a cancel did.
#[derive(Debug, Clone, PartialEq)]
pub enum Cancel {
    /// No such job (or not the caller's).
    Missing,
    /// The job had already ended with this status; nothing changed.
    Final(JobStatus),
    /// The job was queued and is now cancelled; these instances wait for its completion (which the
    /// canceller publishes, since no worker will).
    Cancelled {
        /// The record as it now stands.
        record: Box<JobRecord>,
        /// Routing keys of the instances with a socket waiting.
        watchers: Vec<String>,
    },
    /// The job is running: its worker stops at its next checkpoint and publishes the cancelled
    /// result. The canceller's instance, if given, was registered as a watcher once more.
    Requested,
}

/// What a worker learns each time it reports on a running job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The job must stop: a client cancelled it (or its record is gone or already final).
    pub stop: bool,
    /// Routing keys of the instances with a socket waiting.
    pub watchers: Vec<String>,
}

/// Where job records live: the record of every job, the server instances that watch each job, and
/// the results shared by jobs of the same model and input.
///
/// Every method that changes state is atomic in every implementation: a job never moves back from a
/// final state, and a watcher registered by a resume is either seen by the worker that finishes the
/// job or sees the finished record itself.
#[async_trait]
pub trait JobStore: Send + Sync + 'static {
    /// Checks that the store answers.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Writes a new job's record (with its owner, if any), expiring after `ttl`, and registers
    /// `watcher` (a server instance with a socket waiting for it), in one step, unless the record's
    /// `client` is at one of its quotas in `limits`: the check, the record and the client's counts
    /// are one atomic step, across every server instance (see [`crate::clients`]). A record
    /// without a client is counted nowhere.
    ///
    /// Watchers are counted per instance (one registration per waiting socket) rather than kept in a
    /// set: a socket that leaves and one that arrives on the same instance then update the count in
    /// either order with the same result, where a set's remove could overtake the add and lose it.
    async fn create(
        &self,
        id: &JobId,
        record: &JobRecord,
        watcher: Option<&str>,
        ttl: Duration,
        limits: &ClientLimits,
    ) -> Result<Admission, StoreError>;

    /// Deletes a job's record and watchers, and its place in its client's counts (a submit that
    /// could not be queued leaves nothing behind).
    async fn delete(&self, id: &JobId) -> Result<(), StoreError>;

    /// Reads a job's record; `None` when there is none.
    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError>;

    /// Registers `watcher` for a pending job (one more registration) and reads its record, in one
    /// step; `None` when there is none. A final or missing job registers nothing.
    ///
    /// With `identity`, only a job whose record names it as owner is seen: any other job (including
    /// one stored without an owner) is `None` and registers nothing, exactly like a missing one.
    async fn resume(
        &self,
        id: &JobId,
        watcher: &str,
        identity: Option<&str>,
    ) -> Result<Option<JobRecord>, StoreError>;

    /// Releases `registrations` of `watcher` for a job (its sockets that waited went away).
    async fn unwatch(
        &self,
        id: &JobId,
        watcher: &str,
        registrations: u32,
    ) -> Result<(), StoreError>;

    /// The server instances waiting for a job.
    async fn watchers(&self, id: &JobId) -> Result<Vec<String>, StoreError>;

    /// Marks a pending job running and counts the attempt (`count`), or only reads where it stands
    /// (a job about to wait for a compute slot); or says why it must not run.
    async fn start(&self, id: &JobId, now_ms: u64, count: bool) -> Result<Start, StoreError>;

    /// Stores a final record unless the job is already final, and returns who waits for it. The
    /// job stops counting among its client's queued or running ones.
    ///
    /// The record's output is stored once per distinct output (under its digest, compressed when
    /// that pays: [`crate::output`]) and the record refers to it; the stored output lives as long as
    /// the longest-lived record referring to it, and the client is charged its stored bytes once.
    /// Every read of the record ([`JobStore::get`], [`JobStore::resume`]) brings the output back.
    async fn finish(&self, id: &JobId, record: &JobRecord) -> Result<Finish, StoreError>;

    /// Cancels a job: a queued one at once, a running one by asking its worker to stop. With
    /// `watcher`, a running job also counts that instance among its watchers once more (its socket
    /// wants the cancelled result). With `identity`, another identity's job is `Missing`.
    async fn cancel(
        &self,
        id: &JobId,
        watcher: Option<&str>,
        identity: Option<&str>,
        now_ms: u64,
    ) -> Result<Cancel, StoreError>;

    /// A running job's worker checks in: stores its progress (if given: the fraction and the phase),
    /// and learns whether to stop and who watches.
    async fn report(
        &self,
        id: &JobId,
        progress: Option<(f64, Option<&str>)>,
    ) -> Result<Report, StoreError>;

    /// The stored output of `model` for `input`, if any (a JSON value).
    async fn cached_result(&self, model: &str, input: &Json) -> Result<Option<Json>, StoreError>;

    /// Stores the output of `model` for `input` (once, as [`JobStore::finish`] does), kept at least
    /// as long as job `id`'s record.
    async fn cache_result(
        &self,
        id: &JobId,
        model: &str,
        input: &Json,
        output: &Json,
    ) -> Result<(), StoreError>;
}

/// Why a notice could not be sent.
#[derive(Debug, thiserror::Error)]
#[error("could not notify server instances: {0}")]
pub struct NotifyError(pub String);

/// How completions and progress reach the server instances that wait for a job.
#[async_trait]
pub trait Notifier: Send + Sync + 'static {
    /// Sends `completion` once to each of `watchers` and returns once each is safely on its way (with
    /// RabbitMQ, once the broker confirmed it).
    async fn completion(
        &self,
        watchers: &[String],
        completion: &Completion,
    ) -> Result<(), NotifyError>;

    /// Sends a progress report to each of `watchers`, best effort: a lost one is replaced by the next.
    async fn progress(&self, watchers: &[String], progress: &ProgressMessage);
}

/// Why a job could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The queue cannot be reached, or failed during the publish.
    #[error("the job queue is unavailable: {0}")]
    Unavailable(String),
    /// The job queue is at its length cap: try again later.
    #[error("the job queue is full")]
    Full,
}

/// Where the server puts jobs for workers.
#[async_trait]
pub trait JobQueue: Send + Sync + 'static {
    /// Queues a job durably (with RabbitMQ: persistent, with the broker's confirm).
    async fn publish(&self, job: &JobMessage) -> Result<(), PublishError>;

    /// Whether the queue is usable now (connected, and this instance's notices arrive).
    fn is_ready(&self) -> bool;

    /// Jobs of `model` waiting in the queue, where the queue can tell.
    async fn depth(&self, model: &str) -> Option<u64>;
}
