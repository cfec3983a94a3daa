//! Embedded mode's backends: an in-memory job store with the same TTL rules as Redis, a bounded
//! in-process job queue, and the pool of workers that consumes it with the same job code as
//! `herald-worker`. Nothing here survives the process (the durable store, `crate::durable`, writes
//! this store's changes through to a file): embedded mode is for one machine.
//!
//! Outputs are kept once each in an [`OutputTable`], compressed, and records refer to them by digest,
//! as in Redis; each client's counts are kept in [`ClientBooks`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use herald_models::Models;
use herald_protocol::record::result_digest;
use herald_protocol::{JobId, JobMessage, JobRecord, JobStatus, Json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

use crate::backend::{
    Admission, Cancel, ClientLimits, Finish, JobQueue, JobStore, PublishError, Report, Start,
    StoreError,
};
use crate::clients::ClientBooks;
use crate::fair::{FairQueue, PushError};
use crate::jobs::{JobContext, Settle};
use crate::output;
use crate::outputs::OutputTable;

/// A stored output: its digest and its stored form (see [`crate::output`]).
pub(crate) type StoredOutput = (String, Arc<[u8]>);

/// One job as the memory store keeps it.
struct Entry {
    record: JobRecord,
    /// Registrations per server instance (see [`JobStore::create`]).
    watchers: HashMap<String, u32>,
    expires: Instant,
    /// The digest of its output in [`Tables::outputs`] (the record itself holds none).
    output: Option<String>,
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
    /// Shared results: the output digest of each [`herald_protocol::record::result_digest`].
    results: HashMap<String, (String, Instant)>,
    /// Every stored output, once.
    outputs: OutputTable,
    /// Each client's counts.
    books: ClientBooks,
    /// Pending webhook deliveries (see [`crate::deliveries_memory`]).
    pub(crate) deliveries: crate::deliveries_memory::Pending,
}

impl Tables {
    /// The live record of `id` (without its output) and the stored form of its output, if any.
    pub(crate) fn live_record(&mut self, id: &JobId) -> Option<(JobRecord, Option<Arc<[u8]>>)> {
        let (record, digest) = self
            .live(id)
            .map(|e| (e.record.clone(), e.output.clone()))?;
        let blob = digest.and_then(|digest| self.outputs.get(&digest));
        Some((record, blob))
    }

    /// Keeps the live record of `id`, and its output, at least until `until`.
    pub(crate) fn keep_until(&mut self, id: &JobId, until: Instant) {
        let Some(entry) = self.live(id) else {
            return;
        };
        entry.expires = entry.expires.max(until);
        let (expires, digest) = (entry.expires, entry.output.clone());
        if let Some(digest) = digest {
            self.outputs.refer(&digest, expires);
        }
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

    /// Registers the gauges of the stored outputs in `registry`.
    pub fn register(&self, registry: &mut prometheus_client::registry::Registry) {
        self.tables().outputs.register(registry);
    }

    /// Drops expired records, results and outputs (reads skip them anyway; this frees their
    /// memory).
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut tables = self.tables();
        let before = tables.jobs.len() + tables.results.len();
        tables.jobs.retain(|_, e| e.expires > now);
        tables.results.retain(|_, (_, expires)| *expires > now);
        tables.books.sweep();
        let outputs = tables.outputs.sweep();
        before - tables.jobs.len() - tables.results.len() + outputs
    }

    /// Distinct outputs held and their stored bytes (expired ones included until the next sweep).
    pub fn outputs_held(&self) -> (usize, u64) {
        self.tables().outputs.held()
    }

    /// `record` with its output read back from its stored form (decoded off the lock).
    pub(crate) async fn with_output(
        &self,
        mut record: JobRecord,
        blob: Option<Arc<[u8]>>,
    ) -> Result<JobRecord, StoreError> {
        if let Some(blob) = blob {
            record.output = Some(output::decode_async(blob.to_vec()).await?);
        }
        Ok(record)
    }

    /// Stores `output` once (compressing it only if it is not stored yet), expiring no earlier than
    /// `expires`; returns its digest and stored size.
    async fn shelve(&self, output: &Json, expires: Instant) -> (String, u64) {
        let digest = output::digest_async(output).await;
        {
            let mut tables = self.tables();
            if tables.outputs.refer(&digest, expires) {
                let size = tables.outputs.size(&digest).unwrap_or(0);
                return (digest, size);
            }
        }
        let encoded = output::encode_async(output).await;
        let size = self
            .tables()
            .outputs
            .put(&encoded.digest, encoded.blob, expires);
        (digest, size)
    }

    /// Puts back job `id`'s `record` as a durable store read it, expiring after `ttl`, with the
    /// output it refers to (its digest and stored form) if any, and counts it in its client's books
    /// as it was counted before (without quotas: it was accepted).
    pub(crate) fn restore(
        &self,
        id: &JobId,
        record: JobRecord,
        ttl: Duration,
        output: Option<(&str, Arc<[u8]>)>,
    ) {
        let expires = Instant::now() + ttl;
        let mut tables = self.tables();
        let output = output.map(|(digest, blob)| {
            let size = tables.outputs.restore(digest, blob, expires);
            (digest.to_owned(), size)
        });
        if let Some(client) = &record.client {
            // Without limits, admitting never refuses.
            let _ = tables
                .books
                .admit(client, *id, expires, &ClientLimits::default());
            if record.status.is_final() {
                let output = output.as_ref().map(|(d, size)| (d.as_str(), *size));
                tables.books.settle(client, id, output, expires);
            }
        }
        tables.jobs.insert(
            *id,
            Entry {
                record,
                watchers: HashMap::new(),
                expires,
                output: output.map(|(digest, _)| digest),
            },
        );
    }

    /// Puts back a shared result as a durable store read it: the output `digest` (stored
    /// already, by [`MemoryStore::restore`] of job `id` or of another) is the result of `result`,
    /// living as long as job `id`. Nothing when either is gone.
    pub(crate) fn restore_result(&self, result: &str, id: &JobId, digest: &str) {
        let mut tables = self.tables();
        let Some(expires) = tables.live(id).map(|e| e.expires) else {
            return;
        };
        if !tables.outputs.refer(digest, expires) {
            return;
        }
        tables
            .results
            .insert(result.to_owned(), (digest.to_owned(), expires));
    }

    /// Job `id`'s record as stored (without its output), and the digest and stored form of the
    /// output it refers to, if any: what a durable store writes.
    pub(crate) fn stored(&self, id: &JobId) -> Option<(JobRecord, Option<StoredOutput>)> {
        let mut tables = self.tables();
        let (record, digest) = tables
            .live(id)
            .map(|e| (e.record.clone(), e.output.clone()))?;
        let output = digest.and_then(|digest| {
            let blob = tables.outputs.get(&digest)?;
            Some((digest, blob))
        });
        Some((record, output))
    }

    /// The output digest and stored form of the shared result of `model` and `input`, if held.
    pub(crate) fn shared_output(&self, model: &str, input: &Json) -> Option<StoredOutput> {
        let now = Instant::now();
        let tables = self.tables();
        let (digest, _) = tables
            .results
            .get(&result_digest(model, input.raw()))
            .filter(|(_, expires)| *expires > now)?;
        let blob = tables.outputs.get(digest)?;
        Some((digest.clone(), blob))
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
        limits: &ClientLimits,
    ) -> Result<Admission, StoreError> {
        let mut watchers = HashMap::new();
        if let Some(watcher) = watcher {
            watchers.insert(watcher.to_owned(), 1);
        }
        let expires = Instant::now() + ttl;
        let entry = Entry {
            record: record.clone(),
            watchers,
            expires,
            output: None,
        };
        let mut tables = self.tables();
        if let Some(client) = &record.client {
            if let Err(over) = tables.books.admit(client, *id, expires, limits) {
                return Ok(Admission::Refused(over));
            }
        }
        tables.jobs.insert(*id, entry);
        Ok(Admission::Created)
    }

    async fn delete(&self, id: &JobId) -> Result<(), StoreError> {
        let mut tables = self.tables();
        if let Some(client) = tables.jobs.remove(id).and_then(|e| e.record.client) {
            tables.books.forget(&client, id);
        }
        Ok(())
    }

    async fn get(&self, id: &JobId) -> Result<Option<JobRecord>, StoreError> {
        let found = {
            let mut tables = self.tables();
            let found = tables
                .live(id)
                .map(|e| (e.record.clone(), e.output.clone()));
            found.map(|(record, digest)| {
                let blob = digest.and_then(|d| tables.outputs.get(&d));
                (record, blob)
            })
        };
        match found {
            Some((record, blob)) => Ok(Some(self.with_output(record, blob).await?)),
            None => Ok(None),
        }
    }

    async fn resume(
        &self,
        id: &JobId,
        watcher: &str,
        identity: Option<&str>,
    ) -> Result<Option<JobRecord>, StoreError> {
        let (record, blob) = {
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
            let (record, digest) = (entry.record.clone(), entry.output.clone());
            (record, digest.and_then(|d| tables.outputs.get(&d)))
        };
        Ok(Some(self.with_output(record, blob).await?))
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
        let expires = {
            let mut tables = self.tables();
            match tables.live(id) {
                None => return Ok(Finish::Missing),
                Some(entry) if entry.record.status.is_final() => return Ok(Finish::AlreadyFinal),
                Some(entry) => entry.expires,
            }
        };
        // The output is shelved first, off the lock (hashing and compressing a large one takes
        // milliseconds); should the job have ended meanwhile, the output merely lives on until the
        // expiry of the record it was meant for.
        let shelved = match &record.output {
            Some(output) => Some(self.shelve(output, expires).await),
            None => None,
        };
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
        let client = stored.client.take();
        let webhook = stored.webhook.take();
        let cancel_requested = stored.cancel_requested;
        *stored = record.clone();
        stored.output = None;
        stored.owner = owner;
        stored.client = client.clone();
        stored.webhook = webhook.or(stored.webhook.take());
        stored.cancel_requested |= cancel_requested;
        entry.output = shelved.as_ref().map(|(digest, _)| digest.clone());
        let watchers = entry.watchers();
        if entry.record.webhook.is_some() {
            tables.deliveries.add(*id);
        }
        if let Some(client) = client {
            let output = shelved
                .as_ref()
                .map(|(digest, size)| (digest.as_str(), *size));
            tables.books.settle(&client, id, output, expires);
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
                let webhook = entry.record.webhook.is_some();
                let (client, expires) = (entry.record.client.clone(), entry.expires);
                if webhook {
                    tables.deliveries.add(*id);
                }
                if let Some(client) = client {
                    tables.books.settle(&client, id, None, expires);
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
        let blob = {
            let tables = self.tables();
            tables
                .results
                .get(&result_digest(model, input.raw()))
                .filter(|(_, expires)| *expires > now)
                .and_then(|(digest, _)| tables.outputs.get(digest))
        };
        match blob {
            Some(blob) => Ok(Some(output::decode_async(blob.to_vec()).await?)),
            None => Ok(None),
        }
    }

    async fn cache_result(
        &self,
        id: &JobId,
        model: &str,
        input: &Json,
        output: &Json,
    ) -> Result<(), StoreError> {
        // The result lives as long as the job's record, as in Redis.
        let Some(expires) = self.tables().live(id).map(|e| e.expires) else {
            return Ok(());
        };
        let (digest, _) = self.shelve(output, expires).await;
        let mut tables = self.tables();
        let result = tables
            .results
            .entry(result_digest(model, input.raw()))
            .or_insert((digest.clone(), expires));
        if result.0 != digest || result.1 < expires {
            *result = (digest, expires);
        }
        Ok(())
    }
}

/// The job queue of embedded mode: bounded, so that a flood of submits is answered `busy` as with
/// RabbitMQ's length cap, and fair between clients ([`FairQueue`]).
pub struct MemoryQueue {
    jobs: Arc<FairQueue>,
}

impl MemoryQueue {
    /// A queue holding at most `capacity` jobs, and the taking end for [`run_pool`].
    pub fn new(capacity: usize) -> (Self, Arc<FairQueue>) {
        let jobs = Arc::new(FairQueue::new(capacity));
        (Self { jobs: jobs.clone() }, jobs)
    }
}

impl Drop for MemoryQueue {
    /// Nothing more can be submitted: the pool takes what is queued and stops.
    fn drop(&mut self) {
        self.jobs.close();
    }
}

#[async_trait]
impl JobQueue for MemoryQueue {
    async fn publish(&self, job: &JobMessage) -> Result<(), PublishError> {
        self.jobs.push(job.clone(), false).map_err(|e| match e {
            PushError::Full => PublishError::Full,
            PushError::Closed => PublishError::Unavailable("the worker pool has stopped".into()),
        })
    }

    fn is_ready(&self) -> bool {
        !self.jobs.is_closed()
    }

    async fn depth(&self, _model: &str) -> Option<u64> {
        Some(self.jobs.len() as u64)
    }
}

/// Runs the embedded worker pool: takes jobs from `jobs` and handles each with `context`, at most
/// `in_flight` at once (the computations themselves are bounded by the context's `slots`
/// permits), until `shutdown`. Then running jobs get `grace` to finish before they are
/// stopped.
///
/// A job that needs a compute slot (one its model does not call quick) is taken only while fewer
/// such jobs are in hand than there are slots: the queue's fair order, not the order of arrival,
/// then decides who gets each slot as it frees, and a quick job is never held behind them.
pub async fn run_pool(
    context: JobContext,
    jobs: Arc<FairQueue>,
    in_flight: usize,
    slots: usize,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let permits = Arc::new(Semaphore::new(in_flight.max(1)));
    let slots = slots.max(1);
    let heavy_in_hand = Arc::new(AtomicUsize::new(0));
    let mut running = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit.expect("never closed"),
        };
        let models = context.models.clone();
        let room = heavy_in_hand.load(Ordering::Acquire) < slots;
        let startable = move |job: &JobMessage| room || is_quick(&models, job);
        let job = tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(_) = running.join_next(), if !running.is_empty() => continue,
            job = jobs.take(startable) => match job {
                Some(job) => job,
                None => break,
            },
        };
        let heavy = (!is_quick(&context.models, &job)).then(|| {
            heavy_in_hand.fetch_add(1, Ordering::AcqRel);
            HeavyGuard(heavy_in_hand.clone())
        });
        let context = context.clone();
        let span = tracing::info_span!("job", id = %job.id, model = %job.model);
        let (requeue, stopping) = (jobs.clone(), shutdown.clone());
        running.spawn(
            async move {
                let _permit = permit;
                let _heavy = heavy;
                let again = job.clone();
                match context.handle(job).await {
                    Settle::Ack => {}
                    // The job's attempt was counted when it started; it goes to the back of its
                    // client's lane, as RabbitMQ would redeliver it.
                    Settle::Requeue if !stopping.is_cancelled() => {
                        if requeue.push(again, true).is_err() {
                            warn!("job left unfinished: the queue has stopped");
                        }
                    }
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

/// Counts a heavy job in hand until it is dropped.
struct HeavyGuard(Arc<AtomicUsize>);

impl Drop for HeavyGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `job` runs without a compute slot (its model calls its input quick). A job of an unknown
/// model, or with an input its model refuses, ends at once without computing: quick too.
fn is_quick(models: &Models, job: &JobMessage) -> bool {
    match models.get(&job.model) {
        Some(model) => match model.validate(&job.input) {
            Ok(input) => model.is_quick(&input),
            Err(_) => true,
        },
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store_cases;
    use herald_protocol::model::{factorial_input, json_string};
    use herald_protocol::FACTORIAL;

    fn store_with(id: &JobId, ttl: Duration) -> MemoryStore {
        let store = MemoryStore::new();
        let record = JobRecord::queued(FACTORIAL, factorial_input(5), 1).owned_by(Some("alice"));
        let created = futures::executor::block_on(store.create(
            id,
            &record,
            Some("a"),
            ttl,
            &ClientLimits::default(),
        ));
        assert_eq!(created.unwrap(), Admission::Created);
        store
    }

    #[tokio::test]
    async fn a_queued_job_is_cancelled_at_once_and_never_starts() {
        let id = JobId::new_v4();
        let store = store_with(&id, Duration::from_secs(60));
        store_cases::a_queued_job_is_cancelled_at_once_and_never_starts(&store, &id).await;
    }

    #[tokio::test]
    async fn a_running_job_is_asked_to_stop_and_the_canceller_watches() {
        let id = JobId::new_v4();
        let store = store_with(&id, Duration::from_secs(60));
        store_cases::a_running_job_is_asked_to_stop_and_the_canceller_watches(&store, &id).await;
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
        store_cases::watchers_are_counted_and_released(&store, &id).await;
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
        let (queue, jobs) = MemoryQueue::new(2);
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
        jobs.take(|_| true).await.unwrap();
        assert_eq!(queue.depth(FACTORIAL).await, Some(1));
        drop(queue);
        assert!(
            jobs.take(|_| true).await.is_some(),
            "what is queued is still taken"
        );
        assert!(jobs.take(|_| true).await.is_none(), "then the pool stops");
    }
}
