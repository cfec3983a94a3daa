//! The WebSocket protocol's messages: text frames holding one JSON object each. What clients send is
//! read by [`crate::frame`].

use serde::{Deserialize, Serialize};

use crate::model::Json;
use crate::record::{JobRecord, JobStatus};
use crate::JobId;

/// Why a request could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a valid request.
    BadRequest,
    /// n is above the server's maximum.
    TooLarge,
    /// No such job, or it expired.
    NotFound,
    /// RabbitMQ or Redis cannot be reached.
    Unavailable,
    /// Too much work in flight; try again after `retry_after_ms`.
    Busy,
    /// A cancel of a job that has already reached a final state.
    AlreadyFinished,
    /// No worker serves the model the submit names.
    UnknownModel,
    /// The request contradicts the job's state (an output asked of a job that has none), or an
    /// idempotency key is reused with another model or input.
    Conflict,
    /// The HTTP request did not prove an identity (authentication on). Over the WebSocket this never
    /// comes: the upgrade itself is refused with 401.
    Unauthorized,
}

/// An `error` message (also what [`parse_client_frame`] returns for a frame it refuses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable explanation; never internal details.
    pub message: String,
    /// The job concerned, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<JobId>,
    /// The client's tag, where it gave one.
    #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// With `busy`: when trying again makes sense.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorMessage {
    /// An error with a code and a message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            id: None,
            tag: None,
            retry_after_ms: None,
        }
    }

    /// The same error about job `id`.
    pub fn with_id(mut self, id: JobId) -> Self {
        self.id = Some(id);
        self
    }

    /// The same error echoing the client's tag.
    pub fn with_tag(mut self, tag: Option<String>) -> Self {
        self.tag = tag;
        self
    }

    /// A `bad_request` error.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// How long a finished job took, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Timings {
    /// From the server accepting the job to a worker starting it.
    pub queued_ms: u64,
    /// The worker's time from start to the finished output.
    pub compute_ms: u64,
    /// From the submit to the result leaving the server.
    pub total_ms: u64,
}

/// How a job ended, as the `status` of a `result` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// The model's output, a JSON value (the factorial's: its decimal digits as a string, with
    /// `digits` counting them).
    Done {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        digits: Option<u64>,
        #[serde(deserialize_with = "crate::model::json_via_value")]
        output: Json,
        timings: Timings,
    },
    /// No result; `error` says why.
    Failed { error: String },
    /// Stopped on request.
    Cancelled {},
}

impl Outcome {
    /// The output of a done job as text: a JSON string's content (the factorial's digits), or the
    /// JSON text of any other value. `None` unless done.
    pub fn output_text(&self) -> Option<String> {
        match self {
            Self::Done { output, .. } => Some(
                serde_json::from_str::<String>(output.get())
                    .unwrap_or_else(|_| output.get().to_owned()),
            ),
            _ => None,
        }
    }
}

/// A `result` message: a job's final state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The request ID.
    pub id: JobId,
    /// The job's model.
    pub model: String,
    /// The factorial's input (factorial jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// How it ended.
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The job is queued and will be pushed here when it ends.
    Accepted {
        id: JobId,
        model: String,
        /// The factorial's input (factorial jobs only).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<u64>,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
        /// Workers serving the model when the job was accepted, where the server can tell; 0 means the
        /// job waits, durably queued, until one starts.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workers: Option<u32>,
        /// The submit repeated an earlier one's idempotency key: this is that submit's job, and
        /// nothing new was started (its result follows, at once if it has ended).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        existing: bool,
    },
    /// Answer to a resume of a pending job (with the last progress reported, if any).
    Status {
        id: JobId,
        model: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        n: Option<u64>,
        status: JobStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fraction: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase: Option<String>,
        /// As in `accepted`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        workers: Option<u32>,
    },
    /// How far a running job is: pushed at most four times a second, only for jobs long enough to
    /// need it.
    Progress {
        id: JobId,
        model: String,
        fraction: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        phase: Option<String>,
    },
    /// The job's final state.
    Result(JobResult),
    /// A request that could not be taken.
    Error(ErrorMessage),
}

impl ServerMessage {
    /// What a client should learn from a record: its `result` if final, else its `status`.
    ///
    /// `now_ms` is when the message leaves the server (for `total_ms`). A done record must carry its
    /// output.
    pub fn from_record(id: JobId, record: &JobRecord, now_ms: u64) -> Self {
        let n = record.factorial_n();
        let outcome = match record.status {
            JobStatus::Queued | JobStatus::Running => {
                return Self::Status {
                    id,
                    model: record.model.clone(),
                    n,
                    status: record.status,
                    fraction: record.progress,
                    phase: record.phase.clone(),
                    workers: None,
                }
            }
            JobStatus::Done => {
                let started = record.started_ms.unwrap_or(record.submitted_ms);
                let output = record
                    .output
                    .clone()
                    .unwrap_or_else(|| crate::model::json("null").expect("valid JSON"));
                Outcome::Done {
                    // The factorial's output is a string of digits: its length less the quotes.
                    digits: n.map(|_| output.get().len().saturating_sub(2) as u64),
                    output,
                    timings: Timings {
                        queued_ms: started.saturating_sub(record.submitted_ms),
                        compute_ms: record.compute_ms.unwrap_or_default(),
                        total_ms: now_ms.saturating_sub(record.submitted_ms),
                    },
                }
            }
            JobStatus::Failed => Outcome::Failed {
                error: record
                    .error
                    .clone()
                    .unwrap_or_else(|| "unknown error".into()),
            },
            JobStatus::Cancelled => Outcome::Cancelled {},
        };
        Self::Result(JobResult {
            id,
            model: record.model.clone(),
            n,
            outcome,
        })
    }

    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a server message always serialises")
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{factorial_input, json, json_string, FACTORIAL};
    use serde_json::Value;

    #[test]
    fn server_messages_have_the_documented_shape() {
        let id = JobId::nil();
        let result = ServerMessage::Result(JobResult {
            id,
            model: FACTORIAL.into(),
            n: Some(3),
            outcome: Outcome::Done {
                digits: Some(1),
                output: json_string("6"),
                timings: Timings {
                    queued_ms: 1,
                    compute_ms: 2,
                    total_ms: 3,
                },
            },
        });
        let json_value: Value = serde_json::from_str(&result.to_json()).unwrap();
        assert_eq!(
            json_value,
            serde_json::json!({"type":"result","id":id,"model":"factorial","n":3,"status":"done","digits":1,"output":"6",
                "timings":{"queued_ms":1,"compute_ms":2,"total_ms":3}})
        );
        assert_eq!(
            serde_json::from_value::<ServerMessage>(json_value).unwrap(),
            result
        );
        let other = ServerMessage::Result(JobResult {
            id,
            model: "echo".into(),
            n: None,
            outcome: Outcome::Done {
                digits: None,
                output: json(r#"{"label":"positive","score":0.9}"#).unwrap(),
                timings: Timings {
                    queued_ms: 0,
                    compute_ms: 0,
                    total_ms: 0,
                },
            },
        });
        let text = other.to_json();
        assert!(
            text.contains(r#""output":{"label":"positive","score":0.9}"#),
            "{text}"
        );
        assert_eq!(serde_json::from_str::<ServerMessage>(&text).unwrap(), other);
        let failed = ServerMessage::Result(JobResult {
            id,
            model: FACTORIAL.into(),
            n: Some(3),
            outcome: Outcome::Failed { error: "x".into() },
        });
        assert_eq!(
            serde_json::from_str::<Value>(&failed.to_json()).unwrap(),
            serde_json::json!({"type":"result","id":id,"model":"factorial","n":3,"status":"failed","error":"x"})
        );
        let error = ServerMessage::Error(
            ErrorMessage::new(ErrorCode::NotFound, "gone")
                .with_id(id)
                .with_tag(None),
        );
        assert_eq!(
            serde_json::from_str::<Value>(&error.to_json()).unwrap(),
            serde_json::json!({"type":"error","code":"not_found","message":"gone","id":id})
        );
    }

    #[test]
    fn from_record_maps_pending_and_final() {
        let id = JobId::new_v4();
        let mut record = JobRecord::queued(FACTORIAL, factorial_input(4), 1000);
        record.progress = Some(0.5);
        record.phase = Some("product".into());
        assert_eq!(
            ServerMessage::from_record(id, &record, 2000),
            ServerMessage::Status {
                id,
                model: FACTORIAL.into(),
                n: Some(4),
                status: JobStatus::Queued,
                fraction: Some(0.5),
                phase: Some("product".into()),
                workers: None,
            }
        );
        record.status = JobStatus::Done;
        record.started_ms = Some(1005);
        record.compute_ms = Some(2);
        record.output = Some(json_string("24"));
        let ServerMessage::Result(JobResult {
            outcome: Outcome::Done {
                timings, digits, ..
            },
            ..
        }) = ServerMessage::from_record(id, &record, 1010)
        else {
            panic!("expected a done result");
        };
        assert_eq!(digits, Some(2));
        assert_eq!(
            timings,
            Timings {
                queued_ms: 5,
                compute_ms: 2,
                total_ms: 10
            }
        );
    }
}
