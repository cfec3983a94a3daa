//! What reaches a WebSocket session from outside its socket: the events it handles besides its client's
//! frames, and the handle through which the hub and the session's own tasks send them.

use std::sync::Arc;

use herald_engine::backend::Cancel;
use herald_protocol::{ErrorMessage, JobId, JobRecord, ProgressMessage};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::jobs::{Prepared, Taken};

/// How a submit of a session went.
pub struct Submitted {
    /// The request ID it was given.
    pub id: JobId,
    /// The client's `ref`.
    pub tag: Option<String>,
    /// The job taken and what taking it did (a new job, or the job of a repeated idempotency key),
    /// or why not.
    pub outcome: Result<(Prepared, Taken), ErrorMessage>,
}

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

/// Events that reach a session besides its client's frames.
///
/// Kept small (large payloads boxed): every session's event queue allocates its first block of slots
/// up front, and that is memory an idle socket pays for.
pub enum SessionEvent {
    /// A watched job finished (from the hub).
    Finished(JobId, Arc<JobRecord>),
    /// A submit of this session was stored and published, or not.
    Submitted(Box<Submitted>),
    /// The answer to a resume: the record, `None` when there is none, or why it could not be read.
    Resumed {
        id: JobId,
        outcome: Box<Result<Option<JobRecord>, ErrorMessage>>,
    },
    /// The answer to a cancel, or why it could not be made.
    Cancelled {
        id: JobId,
        outcome: Box<Result<Cancel, ErrorMessage>>,
    },
    /// A watched job's progress (from the hub).
    Progress(Box<ProgressMessage>),
}
