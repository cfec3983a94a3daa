//! The WebSocket protocol: text frames holding one JSON object each (or, from clients, a bare number).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::record::{JobRecord, JobStatus, Phase};
use crate::JobId;

/// Longest client tag (`ref`), in characters.
pub const MAX_REF_CHARS: usize = 64;

/// What a client asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMessage {
    /// Compute n!. `tag` is the client's `ref`, echoed in `accepted` or `error`.
    Submit { n: u64, tag: Option<String> },
    /// Tell me about this job now, and push its result when it comes.
    Resume { id: JobId },
    /// Stop this job: it ends as `cancelled`, pushed to every socket that watches it (this one too).
    Cancel { id: JobId },
}

/// Why a request could not be taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }
}

/// How long a finished job took, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timings {
    /// From the server accepting the job to a worker starting it.
    pub queued_ms: u64,
    /// The worker's time from start to the finished decimal string.
    pub compute_ms: u64,
    /// From the submit to the result leaving the server.
    pub total_ms: u64,
}

/// How a job ended, as the `status` of a `result` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "lowercase")]
pub enum Outcome {
    /// n! has `digits` decimal digits.
    Done {
        digits: u64,
        output: Arc<str>,
        timings: Timings,
    },
    /// No result; `error` says why.
    Failed { error: String },
    /// Stopped on request.
    Cancelled {},
}

/// A `result` message: a job's final state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobResult {
    /// The request ID.
    pub id: JobId,
    /// The input.
    pub n: u64,
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
        n: u64,
        #[serde(rename = "ref", default, skip_serializing_if = "Option::is_none")]
        tag: Option<String>,
    },
    /// Answer to a resume of a pending job (with the last progress reported, if any).
    Status {
        id: JobId,
        n: u64,
        status: JobStatus,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fraction: Option<f64>,
    },
    /// How far a running job is: pushed at most four times a second, only for jobs long enough to
    /// need it.
    Progress {
        id: JobId,
        fraction: f64,
        phase: Phase,
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
        let outcome = match record.status {
            JobStatus::Queued | JobStatus::Running => {
                return Self::Status {
                    id,
                    n: record.n,
                    status: record.status,
                    fraction: record.progress,
                }
            }
            JobStatus::Done => {
                let started = record.started_ms.unwrap_or(record.submitted_ms);
                Outcome::Done {
                    digits: record.digits.unwrap_or_default(),
                    output: record.output.clone().unwrap_or_else(|| Arc::from("")),
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
            n: record.n,
            outcome,
        })
    }

    /// The JSON text of this message.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a server message always serialises")
    }
}

/// Reads one text frame from a client.
///
/// A frame is a JSON object with a `type`, or a bare whole number (a submit, so that a person can type
/// numbers into `websocat`). Unknown fields are ignored so that newer clients work with older servers. The
/// error says what is wrong, in words a client developer can act on, and echoes `ref` when it was valid.
pub fn parse_client_frame(text: &str) -> Result<ClientMessage, ErrorMessage> {
    let trimmed = text.trim();
    // Checked before JSON: "007" is not JSON, and a long digit string would become a lossy float.
    if !trimmed.is_empty() && trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return match trimmed.parse::<u64>() {
            Ok(n) => Ok(ClientMessage::Submit { n, tag: None }),
            Err(_) => Err(too_large_for_u64()),
        };
    }
    let value: Value = serde_json::from_str(trimmed).map_err(|_| {
        ErrorMessage::bad_request("a frame must be a JSON object such as {\"type\":\"submit\",\"n\":10}, or a bare whole number")
    })?;
    match value {
        Value::Number(_) => Ok(ClientMessage::Submit {
            n: parse_n(Some(&value))?,
            tag: None,
        }),
        Value::Object(object) => parse_object(&object),
        _ => Err(ErrorMessage::bad_request(
            "a frame must be a JSON object with a \"type\", or a bare whole number",
        )),
    }
}

fn parse_object(object: &Map<String, Value>) -> Result<ClientMessage, ErrorMessage> {
    let kind = match object.get("type") {
        None => return Err(ErrorMessage::bad_request("\"type\" is missing")),
        Some(Value::String(kind)) => kind.as_str(),
        Some(_) => return Err(ErrorMessage::bad_request("\"type\" must be a string")),
    };
    match kind {
        "submit" => {
            let tag = parse_tag(object.get("ref"))?;
            let n = parse_n(object.get("n")).map_err(|e| e.with_tag(tag.clone()))?;
            Ok(ClientMessage::Submit { n, tag })
        }
        "resume" => Ok(ClientMessage::Resume {
            id: parse_id(object.get("id"))?,
        }),
        "cancel" => Ok(ClientMessage::Cancel {
            id: parse_id(object.get("id"))?,
        }),
        other => Err(ErrorMessage::bad_request(format!(
            "unknown type {:?}; expected \"submit\", \"resume\" or \"cancel\"",
            other.chars().take(32).collect::<String>()
        ))),
    }
}

fn parse_tag(value: Option<&Value>) -> Result<Option<String>, ErrorMessage> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(tag)) if tag.chars().count() <= MAX_REF_CHARS => Ok(Some(tag.clone())),
        Some(_) => Err(ErrorMessage::bad_request(format!(
            "\"ref\" must be a string of at most {MAX_REF_CHARS} characters"
        ))),
    }
}

fn parse_n(value: Option<&Value>) -> Result<u64, ErrorMessage> {
    let number = match value {
        None | Some(Value::Null) => return Err(ErrorMessage::bad_request("\"n\" is missing")),
        Some(Value::Number(number)) => number,
        Some(_) => {
            return Err(ErrorMessage::bad_request(
                "\"n\" must be a number, such as 150000",
            ))
        }
    };
    if let Some(n) = number.as_u64() {
        return Ok(n);
    }
    if number.as_i64().is_some() {
        return Err(ErrorMessage::bad_request("\"n\" must not be negative"));
    }
    let float = number.as_f64().unwrap_or(f64::NAN);
    if float < 0.0 {
        Err(ErrorMessage::bad_request("\"n\" must not be negative"))
    } else if float.fract() != 0.0 || !float.is_finite() {
        Err(ErrorMessage::bad_request("\"n\" must be a whole number"))
    } else if float >= u64::MAX as f64 {
        Err(too_large_for_u64())
    } else {
        // A whole number written as a float (1e3, 10.0) is what the client meant.
        Ok(float as u64)
    }
}

fn parse_id(value: Option<&Value>) -> Result<JobId, ErrorMessage> {
    match value {
        None | Some(Value::Null) => Err(ErrorMessage::bad_request("\"id\" is missing")),
        Some(Value::String(raw)) => JobId::try_parse(raw).map_err(|_| {
            ErrorMessage::bad_request("malformed \"id\": expected a request ID such as 6f1f4a52-2d3e-4c4a-9b0e-1c2d3e4f5a6b")
        }),
        Some(_) => Err(ErrorMessage::bad_request("\"id\" must be a string")),
    }
}

fn too_large_for_u64() -> ErrorMessage {
    ErrorMessage::new(ErrorCode::TooLarge, "n is far above the maximum")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit(n: u64) -> ClientMessage {
        ClientMessage::Submit { n, tag: None }
    }

    fn code_of(frame: &str) -> ErrorCode {
        parse_client_frame(frame).unwrap_err().code
    }

    #[test]
    fn bare_numbers_are_submits() {
        assert_eq!(parse_client_frame("150000"), Ok(submit(150000)));
        assert_eq!(parse_client_frame(" 7\n"), Ok(submit(7)));
        assert_eq!(parse_client_frame("007"), Ok(submit(7)));
        assert_eq!(parse_client_frame("1e3"), Ok(submit(1000)));
        assert_eq!(code_of("99999999999999999999999"), ErrorCode::TooLarge);
        assert_eq!(code_of("-5"), ErrorCode::BadRequest);
        assert_eq!(code_of("2.5"), ErrorCode::BadRequest);
        assert_eq!(code_of(""), ErrorCode::BadRequest);
    }

    #[test]
    fn submit_objects() {
        assert_eq!(
            parse_client_frame(r#"{"type":"submit","n":10,"ref":"a","extra":1}"#),
            Ok(ClientMessage::Submit {
                n: 10,
                tag: Some("a".into())
            })
        );
        let err = parse_client_frame(r#"{"type":"submit","n":-1,"ref":"x"}"#).unwrap_err();
        assert_eq!(
            (err.code, err.tag.as_deref()),
            (ErrorCode::BadRequest, Some("x"))
        );
        for bad in [
            r#"{"type":"submit"}"#,
            r#"{"type":"submit","n":null}"#,
            r#"{"type":"submit","n":"5"}"#,
            r#"{"type":"submit","n":1.5}"#,
            r#"{"type":"submit","n":-3.0}"#,
            r#"{"type":"submit","n":[1]}"#,
            r#"{"type":"submit","n":1,"ref":5}"#,
        ] {
            assert_eq!(code_of(bad), ErrorCode::BadRequest, "{bad}");
        }
        let long_ref = format!(r#"{{"type":"submit","n":1,"ref":"{}"}}"#, "é".repeat(65));
        assert_eq!(code_of(&long_ref), ErrorCode::BadRequest);
        assert_eq!(
            code_of(r#"{"type":"submit","n":1e30}"#),
            ErrorCode::TooLarge
        );
    }

    #[test]
    fn resume_objects() {
        let id = JobId::new_v4();
        assert_eq!(
            parse_client_frame(&format!(r#"{{"type":"resume","id":"{id}"}}"#)),
            Ok(ClientMessage::Resume { id })
        );
        for bad in [
            r#"{"type":"resume"}"#,
            r#"{"type":"resume","id":"not-a-uuid"}"#,
            r#"{"type":"resume","id":42}"#,
        ] {
            assert_eq!(code_of(bad), ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn other_frames_are_bad_requests() {
        for bad in [
            "hello",
            "[1,2]",
            "null",
            "{}",
            r#"{"type":5}"#,
            r#"{"type":"explode"}"#,
            "{\"type\":",
        ] {
            assert_eq!(code_of(bad), ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn server_messages_have_the_documented_shape() {
        let id = JobId::nil();
        let result = ServerMessage::Result(JobResult {
            id,
            n: 3,
            outcome: Outcome::Done {
                digits: 1,
                output: Arc::from("6"),
                timings: Timings {
                    queued_ms: 1,
                    compute_ms: 2,
                    total_ms: 3,
                },
            },
        });
        let json: Value = serde_json::from_str(&result.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"result","id":id,"n":3,"status":"done","digits":1,"output":"6",
                "timings":{"queued_ms":1,"compute_ms":2,"total_ms":3}})
        );
        assert_eq!(
            serde_json::from_value::<ServerMessage>(json).unwrap(),
            result
        );
        let failed = ServerMessage::Result(JobResult {
            id,
            n: 3,
            outcome: Outcome::Failed { error: "x".into() },
        });
        assert_eq!(
            serde_json::from_str::<Value>(&failed.to_json()).unwrap(),
            serde_json::json!({"type":"result","id":id,"n":3,"status":"failed","error":"x"})
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
        let mut record = JobRecord::queued(4, 1000);
        assert_eq!(
            ServerMessage::from_record(id, &record, 2000),
            ServerMessage::Status {
                id,
                n: 4,
                status: JobStatus::Queued,
                fraction: None
            }
        );
        record.status = JobStatus::Done;
        record.started_ms = Some(1005);
        record.compute_ms = Some(2);
        record.digits = Some(2);
        record.output = Some(Arc::from("24"));
        let ServerMessage::Result(JobResult {
            outcome: Outcome::Done { timings, .. },
            ..
        }) = ServerMessage::from_record(id, &record, 1010)
        else {
            panic!("expected a done result");
        };
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
