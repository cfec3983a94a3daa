//! Messages shared by the Herald server and worker: WebSocket frames, AMQP payloads and the Redis job record.
//!
//! Everything that crosses a process boundary is defined here once, so the two sides cannot disagree on a
//! field name, and every decoder validates what it reads: frames, payloads and stored records come from
//! outside the process and are never trusted.

pub mod amqp;
pub mod api;
pub mod frame;
pub mod idempotency;
pub mod model;
pub mod number;
pub mod record;
pub mod ws;

pub use amqp::{Completion, JobMessage, PayloadError, ProgressMessage};
pub use frame::{parse_client_frame, ClientMessage, Submit, SubmitInput};
pub use model::{Json, FACTORIAL};
pub use record::{unix_ms, JobRecord, JobStatus, Keys, RecordError};
pub use ws::{ErrorCode, ErrorMessage, JobResult, Outcome, ServerMessage, Timings};

/// A request ID: a random (v4) UUID, handed to the client when its job is accepted.
pub type JobId = uuid::Uuid;

/// Largest frame, in bytes, the server reads from a client beyond the input limit: a submit is its
/// input plus this much for the other fields.
pub const FRAME_OVERHEAD_BYTES: usize = 4 * 1024;

/// Outputs larger than this stay in Redis; completions then say `output_in_store` instead of carrying them.
pub const MAX_INLINE_OUTPUT_BYTES: usize = 1024 * 1024;
