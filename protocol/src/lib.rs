//! Messages shared by the Herald server and worker: WebSocket frames, AMQP payloads and the Redis job record.
//!
//! Everything that crosses a process boundary is defined here once, so the two sides cannot disagree on a
//! field name, and every decoder validates what it reads: frames, payloads and stored records come from
//! outside the process and are never trusted.

pub mod amqp;
pub mod record;
pub mod ws;

pub use amqp::{Completion, JobMessage, PayloadError, ProgressMessage};
pub use record::{unix_ms, JobRecord, JobStatus, Keys, Phase, RecordError};
pub use ws::{
    parse_client_frame, ClientMessage, ErrorCode, ErrorMessage, JobResult, Outcome, ServerMessage,
    Timings,
};

/// A request ID: a random (v4) UUID, handed to the client when its job is accepted.
pub type JobId = uuid::Uuid;

/// Largest frame, in bytes, the server reads from a client; a larger one closes the socket with 1009.
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// Outputs larger than this stay in Redis; completions then say `output_in_store` instead of carrying them.
pub const MAX_INLINE_OUTPUT_BYTES: usize = 1024 * 1024;
