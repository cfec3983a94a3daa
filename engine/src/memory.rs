//! Embedded mode's backends: an in-memory job store with the same TTL rules as Redis, a bounded
//! in-process job queue, and the pool of workers that consumes it with the same job code as
//! `herald-worker`. Nothing here survives the process: embedded mode is for one machine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::record::result_digest;
use herald_protocol::{JobId, JobMessage, JobRecord, JobStatus, Json};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::backend::{Cancel, Finish, JobQueue, JobStore, PublishError, Report, Start, StoreError};
use crate::jobs::{JobContext, Settle};

/// One job as the memory store keeps it.
struct Entry {
    record: JobRecord,
    /// Registrations per server instance (see [`JobStore::create`]).
    watchers: HashMap<String, u32>,
    expires: Instant,
}

impl Entry {
    fn watchers(&self) -> Vec<String> {
        self.watchers
            .iter()
            .filter(|(_, count)| **count > 0)
            .map(|(watcher, _)| watcher.clone())
            .collect()
    }
}

#[derive(Default)]
pub(crate) struct Tables {
    jobs: HashMap<JobId, Entry>,
    /// Shared results by [`herald_protocol::record::result_digest`].
    results: HashMap<String, (Json, Instant)>,
    /// Pending webhook deliveries (see [`crate::deliveries_memory`]).
    pub(crate) deliveries: crate::deliveries_memory::Pending,
}

impl Tables {
    /// The live record of `id`, and when it expires.
    pub(crate) fn live_record(&mut self, id: &JobId) -> Option<(&JobRecord, &mut Instant)> {
        self.live(id).map(|e| (&e.record, &mut e.expires))
    }

    /// The live entry of `id`; an expired one is removed on the way, as Redis would have.
    fn live(&mut self, id: &JobId) -> Option<&mut Entry> {
        let now = Instant::now();
        if self.jobs.get(id).is_some_and(|e| e.expires <= now) {
            self.jobs.remove(id);
        }
        self.jobs.get_mut(id)
    }
}

/// The job store of embedded mode. Every method holds one lock for its whole step, which makes each
/// as atomic as the Redis store's scripts.
#[derive(Default)]
pub struct MemoryStore {
    tables: Mutex<Tables>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    pub(crate) fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().expect("memory store never poisoned")
    }

    /// Drops expired records and results (reads skip them anyway; this frees their memory).
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut tables = self.tables();
        let before = tables.jobs.len() + tables.results.len();
        tables.jobs.retain(|_, e| e.expires > now);
        tables.results.retain(|_, (_, expires)| *expires > now);
        before - tables.jobs.len() - tables.results.len()
    }

    /// Records held (expired ones included until the next sweep).
    pub fn len(&self) -> usize {
        self.tables().jobs.len()
    }

    /// Whether the store holds no record.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl JobStore for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn create(
        &self,
        id: &JobId,
        record: &JobRecord,
        watcher: Option<&str>,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let mut watchers = HashMap::new();
        if let Some(watcher) = watcher {
            watchers.insert(watcher.to_owned(), 1);
        }
        let entry = Entry {
            record: record.clone(),
            watchers,
            expires: Instant::now() + ttl,
        };
        self.tables().jobs.insert(*id, entry);
        Ok(())
    }

    async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
        self.tables().jobs.remove(id);
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        Ok(self.tables().live(id).map(|e| e.record.clone()))
    }

    async fn resume(
        &self,
        id: &JobId,
        watcher: &str,
        identity: Option<&str>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let mut tables = self.tables();
        let Some(entry) = tables.live(id) else {
            return Ok(None);
        };
        if identity.is_some() && entry.record.owner.as_deref() != identity {
            return Ok(None);
        }
        if !entry.record.status.is_final() {
            *entry.watchers.entry(watcher.to_owned()).or_default() += 1;
        }
        Ok(Some(entry.record.clone()))
    }

    async fn unwatch(
        &self,
        id: &JobId,
        watcher: &str,
        registrations: u32,
    ) -> Result<(), StoreError> {
        if let Some(entry) = self.tables().live(id) {
            if let Some(count) = entry.watchers.get_mut(watcher) {
                *count = count.saturating_sub(registrations);
                if *count == 0 {
                    entry.watchers.remove(watcher);
                }
            }
        }
        Ok(())
    }

    async fn watchers(&self, id: &JobId) -> Result<Vec<String>, StoreError> {
        Ok(self
            .tables()
            .live(id)
            .map(|e| e.watchers())
            .unwrap_or_default())
    }

    async fn start(&self, id: &JobId, now_ms: u64, count: bool) -> Result<Start, StoreError> {
        let mut tables = self.tables();
        let Some(entry) = tables.live(id) else {
            return Ok(Start::Missing);
        };
        let record = &mut entry.record;
        if record.status.is_final() {
            return Ok(Start::Final);
        }
        if count {
            record.status = JobStatus::Running;
            record.started_ms = Some(now_ms);
            record.attempts += 1;
        }
        Ok(Start::Run {
            attempts: record.attempts,
            submitted_ms: record.submitted_ms,
            cancel_requested: record.cancel_requested,
        })
    }

    async fn finish(&self, id: &JobId, record: &JobRecord) -> Result<Finish, StoreError> {
        let mut tables = self.tables();
        let Some(entry) = tables.live(id) else {
            return Ok(Finish::Missing);
        };
        if entry.record.status.is_final() {
            return Ok(Finish::AlreadyFinal);
        }
        // As the Redis script: progress goes, the fields written replace, the others stay.
        let stored = &mut entry.record;
        let owner = stored.owner.take();
        let webhook = stored.webhook.take();
        let cancel_requested = stored.cancel_requested;
        *stored = record.clone();
        stored.owner = owner;
        stored.webhook = webhook.or(stored.webhook.take());
        stored.cancel_requested |= cancel_requested;
        let watchers = entry.watchers();
        if entry.record.webhook.is_some() {
            tables.deliveries.add(*id);
        }
        Ok(Finish::Applied { watchers })
    }

    async fn cancel(
        &self,
        id: &JobId,
        watcher: Option<&str>,
        identity: Option<&str>,
        now_ms: u64,
    ) -> Result<Cancel, StoreError> {
        let mut tables = self.tables();
        let Some(entry) = tables.live(id) else {
            return Ok(Cancel::Missing);
        };
        if identity.is_some() && entry.record.owner.as_deref() != identity {
            return Ok(Cancel::Missing);
        }
        match entry.record.status {
            JobStatus::Queued => {
                entry.record.status = JobStatus::Cancelled;
                entry.record.finished_ms = Some(now_ms);
                entry.record.progress = None;
                entry.record.phase = None;
                let cancelled = Cancel::Cancelled {
                    record: Box::new(entry.record.clone()),
                    watchers: entry.watchers(),
                };
                if entry.record.webhook.is_some() {
                    tables.deliveries.add(*id);
                }
                Ok(cancelled)
            }
            JobStatus::Running => {
                entry.record.cancel_requested = true;
                if let Some(watcher) = watcher {
                    *entry.watchers.entry(watcher.to_owned()).or_default() += 1;
                }
                Ok(Cancel::Requested)
            }
            status => Ok(Cancel::Final(status)),
        }
    }

    async fn report(
        &self,
        id: &JobId,
        progress: Option<(f64, Option<&str>)>,
    ) -> Result<Report, StoreError> {
        let mut tables = self.tables();
        let Some(entry) = tables
            .live(id)
            .filter(|e| e.record.status == JobStatus::Running)
        else {
            return Ok(Report {
                stop: true,
                watchers: Vec::new(),
            });
        };
        if let Some((fraction, phase)) = progress {
            entry.record.progress = Some(fraction);
            if let Some(phase) = phase {
                entry.record.phase = Some(phase.to_owned());
            }
        }
        Ok(Report {
            stop: entry.record.cancel_requested,
            watchers: entry.watchers(),
        })
    }

    async fn cached_result(&self, model: &str, input: &Json) -> Result<Option<Json>, StoreError> {
        let now = Instant::now();
        Ok(self
            .tables()
            .results
            .get(&result_digest(model, input.raw()))
            .filter(|(_, expires)| *expires > now)
            .map(|(output, _)| output.clone()))
    }

    async fn cache_result(
        &self,
        id: &JobId,
        model: &str,
        input: &Json,
        output: &Json,
    ) -> Result<(), StoreError> {
        let mut tables = self.tables();
        // The result lives as long as the job's record, as in Redis.
        if let Some(expires) = tables.live(id).map(|e| e.expires) {
            tables
                .results
                .insert(result_digest(model, input.raw()), (output.clone(), expires));
        }
        Ok(())
    }
}

/// The job queue of embedded mode: bounded, so that a flood of submits is answered `busy` as with
/// RabbitMQ's length cap.
pub struct MemoryQueue {
    jobs: mpsc::Sender<JobMessage>,
    capacity: usize,
}

impl MemoryQueue {
    /// A queue holding at most `capacity` jobs, and the receiving end for [`run_pool`].
    pub fn new(capacity: usize) -> (Self, mpsc::Receiver<JobMessage>) {
        let (jobs, receiver) = mpsc::channel(capacity.max(1));
        (Self { jobs, capacity }, receiver)
    }

    /// Where [`run_pool`] puts back a job that must be tried again. Weak, so that the pool's receiver
    /// still sees the queue close when the queue itself is dropped.
    pub fn requeuer(&self) -> mpsc::WeakSender<JobMessage> {
        self.jobs.downgrade()
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn publish(&self, job: &JobMessage) -> Result<(), PublishError> {
        self.jobs.try_send(job.clone()).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => PublishError::Full,
            mpsc::error::TrySendError::Closed(_) => {
                PublishError::Unavailable("the worker pool has stopped".into())
            }
        })
    }

    fn is_ready(&self) -> bool {
        !self.jobs.is_closed()
    }

    async fn depth(&self, _model: &str) -> Option<u64> {
        Some((self.capacity - self.jobs.capacity()) as u64)
    }
}

/// Runs the embedded worker pool: takes jobs from `jobs` and handles each with `context`, at most
/// `in_flight` at once (the computations themselves are bounded by the context's slots), until
/// `shutdown`. Then running jobs get `grace` to finish before they are stopped.
pub async fn run_pool(
    context: JobContext,
    mut jobs: mpsc::Receiver<JobMessage>,
    requeue: mpsc::WeakSender<JobMessage>,
    in_flight: usize,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => break,
            },
        };
        let context = context.clone();
        let span = tracing::info_span!("job", id = %job.id, model = %job.model);
        let (requeue, stopping) = (requeue.clone(), shutdown.clone());
        running.spawn(
            async move {
                let _permit = permit;
                let again = job.clone();
                match context.handle(job).await {
                    Settle::Ack => {}
                    // The job's attempt was counted when it started; it goes to the back of the
                    // queue, as RabbitMQ would redeliver it.
                    Settle::Requeue if !stopping.is_cancelled() => match requeue.upgrade() {
                        Some(queue) if queue.send(again).await.is_ok() => {}
                        _ => warn!("job left unfinished: the queue has stopped"),
                    },
                    Settle::Requeue => warn!("job left unfinished at shutdown"),
                    Settle::DeadLetter => {
                        error!("job set aside: its record is damaged or it failed")
                    }
                }
            }
            .instrument(span),
        );
        // Finished tasks are reaped here too, so the set does not grow with every job.
        while running.try_join_next().is_some() {}
    }
    jobs.close();
    if !running.is_empty() {
        info!(
            jobs = running.len(),
            grace_secs = grace.as_secs(),
            "waiting for running jobs"
        );
        if tokio::time::timeout(grace, async {
            while running.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            context.stop.cancel();
            while running.join_next().await.is_some() {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::model::{factorial_input, json_string};
    use herald_protocol::FACTORIAL;

    fn store_with(id: &JobId, ttl: Duration) -> MemoryStore {
        let store = MemoryStore::new();
        let record = JobRecord::queued(FACTORIAL, factorial_input(5), 1).owned_by(Some("alice"));
        futures::executor::block_on(store.create(id, &record, Some("a"), ttl)).unwrap();
        store
    }

    #[tokio::test]
    async fn a_queued_job_is_cancelled_at_once_and_never_starts() {
        let id = JobId::new_v4();
        let store = store_with(&id, Duration::from_secs(60));
        assert_eq!(
            store.cancel(&id, None, Some("bob"), 9).await.unwrap(),
            Cancel::Missing,
            "another identity's job is unknown to it"
        );
        let Cancel::Cancelled { record, watchers } =
            store.cancel(&id, None, Some("alice"), 9).await.unwrap()
        else {
            panic!("a queued job is cancelled at once");
        };
        assert_eq!(record.status, JobStatus::Cancelled);
        assert_eq!(record.finished_ms, Some(9));
        assert_eq!(watchers, vec!["a".to_owned()]);
        assert_eq!(store.start(&id, 10, true).await.unwrap(), Start::Final);
        assert_eq!(
            store.cancel(&id, None, None, 11).await.unwrap(),
            Cancel::Final(JobStatus::Cancelled)
        );
    }

    #[tokio::test]
    async fn a_running_job_is_asked_to_stop_and_the_canceller_watches() {
        let id = JobId::new_v4();
        let store = store_with(&id, Duration::from_secs(60));
        assert!(matches!(
            store.start(&id, 2, true).await.unwrap(),
            Start::Run {
                attempts: 1,
                cancel_requested: false,
                ..
            }
        ));
        let report = store
            .report(&id, Some((0.25, Some("product"))))
            .await
            .unwrap();
        assert!(!report.stop);
        let record = store.get(&id).await.unwrap().unwrap();
        assert_eq!(
            (record.progress, record.phase.as_deref()),
            (Some(0.25), Some("product"))
        );
        assert_eq!(
            store.cancel(&id, Some("b"), None, 3).await.unwrap(),
            Cancel::Requested
        );
        let report = store.report(&id, None).await.unwrap();
        assert!(report.stop);
        let mut watchers = report.watchers;
        watchers.sort();
        assert_eq!(watchers, vec!["a".to_owned(), "b".to_owned()]);
        // A worker that died after the flag was set: the next start ends it without computing.
        assert!(matches!(
            store.start(&id, 4, true).await.unwrap(),
            Start::Run {
                attempts: 2,
                cancel_requested: true,
                ..
            }
        ));
    }

    #[tokio::test]
    async fn watchers_are_counted_and_released() {
        let id = JobId::new_v4();
        let store = store_with(&id, Duration::from_secs(60));
        store.resume(&id, "a", None).await.unwrap().unwrap();
        store.unwatch(&id, "a", 1).await.unwrap();
        assert_eq!(store.watchers(&id).await.unwrap(), vec!["a".to_owned()]);
        store.unwatch(&id, "a", 1).await.unwrap();
        assert!(store.watchers(&id).await.unwrap().is_empty());
        assert!(store.resume(&id, "c", Some("bob")).await.unwrap().is_none());
        assert!(
            store.watchers(&id).await.unwrap().is_empty(),
            "a stranger registers nothing"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn records_and_results_expire_with_their_ttl() {
        let id = JobId::new_v4();
        let store = store_with(&id, Duration::from_secs(10));
        let (input, output) = (factorial_input(5), json_string("120"));
        store
            .cache_result(&id, FACTORIAL, &input, &output)
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(store.get(&id).await.unwrap().is_some());
        assert_eq!(
            store.cached_result(FACTORIAL, &input).await.unwrap(),
            Some(output)
        );
        assert_eq!(store.cached_result("echo", &input).await.unwrap(), None);
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(store.get(&id).await.unwrap().is_none());
        assert!(store
            .cached_result(FACTORIAL, &input)
            .await
            .unwrap()
            .is_none());
        assert_eq!(store.start(&id, 1, true).await.unwrap(), Start::Missing);
        store.sweep();
        assert!(store.is_empty());
    }

    #[tokio::test]
    async fn a_full_queue_refuses_and_reports_its_depth() {
        let (queue, mut jobs) = MemoryQueue::new(2);
        let job = JobMessage {
            id: JobId::new_v4(),
            model: FACTORIAL.into(),
            input: factorial_input(3),
            client: None,
        };
        queue.publish(&job).await.unwrap();
        queue.publish(&job).await.unwrap();
        assert_eq!(queue.depth(FACTORIAL).await, Some(2));
        assert!(matches!(queue.publish(&job).await, Err(PublishError::Full)));
        jobs.recv().await.unwrap();
        assert_eq!(queue.depth(FACTORIAL).await, Some(1));
    }
}
