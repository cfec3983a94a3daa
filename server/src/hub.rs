//! The sockets of this server instance that wait for each job, and the delivery of finished jobs to them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use herald_protocol::{JobId, JobRecord};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::session::SessionEvent;

/// Identifies one WebSocket session on this instance.
pub type SessionId = u64;

/// How the hub reaches one session.
#[derive(Clone)]
pub struct SessionHandle {
    /// The session's ID.
    pub id: SessionId,
    /// The session's event queue (bounded).
    pub events: mpsc::Sender<SessionEvent>,
    /// Cancelled when the session cannot keep up: it then closes its socket, and the client resumes.
    pub overloaded: CancellationToken,
}

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

    /// The jobs some session of this instance waits for.
    pub fn watched(&self) -> Vec<JobId> {
        self.watchers.iter().map(|e| *e.key()).collect()
    }
}
