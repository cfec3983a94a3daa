//! The sockets of this server instance that wait for each job, and the delivery of finished jobs and
//! progress to them, whichever way they arrive (this instance's RabbitMQ reply queue, or directly from
//! the in-process workers of embedded mode).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use herald_engine::backend::{Notifier, NotifyError};
use herald_engine::Store;
use herald_protocol::{Completion, JobId, JobRecord, ProgressMessage};
use tokio::sync::mpsc;
use tracing::warn;

use crate::mailbox::{SessionEvent, SessionHandle, SessionId};
use crate::Stats;

/// Registry of local watchers, keyed by request ID.
#[derive(Default)]
pub struct Hub {
    watchers: DashMap<JobId, Vec<SessionHandle>>,
    next_session: AtomicU64,
}

impl Hub {
    /// A fresh session ID.
    pub fn new_session_id(&self) -> SessionId {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers `session` as waiting for `id`. Call before the job can finish from this session's point
    /// of view (before publishing it, before reading its record), so that no completion is missed.
    pub fn watch(&self, id: JobId, session: &SessionHandle) {
        let mut entry = self.watchers.entry(id).or_default();
        if !entry.iter().any(|s| s.id == session.id) {
            entry.push(session.clone());
        }
    }

    /// Removes `session` from the watchers of `id`.
    pub fn unwatch(&self, id: &JobId, session: SessionId) {
        self.watchers.remove_if_mut(id, |_, sessions| {
            sessions.retain(|s| s.id != session);
            sessions.is_empty()
        });
    }

    /// Hands a finished job to every session waiting for it, and forgets the job. Returns how many
    /// sessions it reached. A session whose queue is full is marked overloaded rather than waited for,
    /// so one slow client never holds up the others.
    pub fn deliver(&self, id: JobId, record: Arc<JobRecord>) -> usize {
        let Some((_, sessions)) = self.watchers.remove(&id) else {
            return 0;
        };
        let mut reached = 0;
        for session in sessions {
            match session
                .events
                .try_send(SessionEvent::Finished(id, record.clone()))
            {
                Ok(()) => reached += 1,
                Err(mpsc::error::TrySendError::Full(_)) => session.overloaded.cancel(),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        reached
    }

    /// Hands a progress report to every session waiting for the job. A session whose queue is full
    /// misses it: the next report replaces it, and progress must never crowd out a result.
    pub fn progress(&self, progress: &ProgressMessage) {
        let Some(sessions) = self.watchers.get(&progress.id) else {
            return;
        };
        for session in sessions.iter() {
            let _ = session
                .events
                .try_send(SessionEvent::Progress(Box::new(progress.clone())));
        }
    }

    /// The jobs some session of this instance waits for.
    pub fn watched(&self) -> Vec<JobId> {
        self.watchers.iter().map(|e| *e.key()).collect()
    }
}

/// Delivers a completion that reached this instance: at once if it carries its record whole, else
/// after reading the large output from the store (once for all of this instance's sockets).
pub fn complete(hub: &Arc<Hub>, store: &Store, stats: &Arc<Stats>, completion: Completion) {
    if completion.output_in_store {
        let (hub, store, stats) = (hub.clone(), store.clone(), stats.clone());
        tokio::spawn(async move { fetch_and_deliver(&hub, &store, &stats, completion.id).await });
    } else {
        deliver(hub, stats, completion.id, completion.record);
    }
}

/// Reads a finished job from the store and hands it to the hub; a pending one is left alone.
pub async fn fetch_and_deliver(hub: &Hub, store: &Store, stats: &Stats, id: JobId) {
    match store.get(&id).await {
        Ok(Some(record)) if record.status.is_final() => {
            if record.validate(true).is_ok() {
                deliver(hub, stats, id, record);
            } else {
                warn!(%id, "stored result is damaged");
            }
        }
        Ok(Some(_)) => {}
        Ok(None) => warn!(%id, "a watched job's record is gone"),
        Err(e) => warn!(%id, error = %e, "could not read a watched job"),
    }
}

fn deliver(hub: &Hub, stats: &Stats, id: JobId, record: JobRecord) {
    if hub.deliver(id, Arc::new(record)) > 0 {
        stats.completions_delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Embedded mode's notices: the in-process workers hand completions and progress straight to this
/// instance's hub (the only instance there is).
pub struct HubNotifier {
    /// The hub.
    pub hub: Arc<Hub>,
    /// The store, for outputs too large to travel in a completion.
    pub store: Store,
    /// Counters.
    pub stats: Arc<Stats>,
}

#[async_trait]
impl Notifier for HubNotifier {
    async fn completion(
        &self,
        watchers: &[String],
        completion: &Completion,
    ) -> Result<(), NotifyError> {
        if !watchers.is_empty() {
            self.stats
                .completions_received
                .fetch_add(1, Ordering::Relaxed);
            complete(&self.hub, &self.store, &self.stats, completion.clone());
        }
        Ok(())
    }

    async fn progress(&self, watchers: &[String], progress: &ProgressMessage) {
        if !watchers.is_empty() {
            self.hub.progress(progress);
        }
    }
}
