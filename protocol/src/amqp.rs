//! AMQP payloads: the job message workers consume, and the completions and progress they publish to the
//! reply exchange.

use serde::{Deserialize, Serialize};

use crate::model::{check_model_name, factorial_input, Json, FACTORIAL};
use crate::record::{check_phase, JobRecord, RecordError};
use crate::JobId;

/// A payload that is not what Herald publishes.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    /// Not JSON, or JSON of another shape.
    #[error("payload is not a valid message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// Well-formed JSON whose content contradicts itself.
    #[error("payload is inconsistent: {0}")]
    Inconsistent(#[from] RecordError),
}

/// A job on its model's queue: `{"id":"<uuid>","model":"factorial","input":{"n":150000}}`, published
/// persistent with publisher confirms.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobMessage {
    /// The request ID.
    pub id: JobId,
    /// The model that computes it.
    pub model: String,
    /// Its input.
    pub input: Json,
    /// Who submitted it (see [`JobRecord::client`]), for a queue that shares its workers fairly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// What a job message holds on the wire; older servers published `{"id","n"}` for the factorial.
#[derive(Deserialize)]
struct WireJob {
    id: JobId,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    input: Option<Json>,
    #[serde(default)]
    n: Option<u64>,
    #[serde(default)]
    client: Option<String>,
}

impl JobMessage {
    /// JSON bytes to publish.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job message always serialises")
    }

    /// Reads a job message from a delivery body.
    pub fn decode(body: &[u8]) -> Result<Self, PayloadError> {
        let wire: WireJob = serde_json::from_slice(body)?;
        let (model, input) = match (wire.model, wire.input, wire.n) {
            (Some(model), Some(input), _) => {
                check_model_name(&model)
                    .map_err(|_| RecordError::Invalid("model", model.chars().take(32).collect()))?;
                (model, input)
            }
            (None, None, Some(n)) => (FACTORIAL.to_owned(), factorial_input(n)),
            _ => return Err(RecordError::Inconsistent("a job needs a model and an input").into()),
        };
        Ok(Self {
            id: wire.id,
            model,
            input,
            client: wire.client,
        })
    }
}

/// A finished job, published by a worker to the reply exchange, once for each server instance that waits.
///
/// It carries the final record, so the server answers without a Redis read, except for outputs over
/// [`crate::MAX_INLINE_OUTPUT_BYTES`]: those stay in Redis and `output_in_store` says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    /// The request ID (also the message's `correlation_id`).
    pub id: JobId,
    /// The final record.
    pub record: JobRecord,
    /// The output was left out of this message because of its size: read it from Redis.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub output_in_store: bool,
}

impl Completion {
    /// A completion for `record`, leaving a large output in the store.
    pub fn new(id: JobId, mut record: JobRecord) -> Self {
        let too_large = record
            .output
            .as_ref()
            .is_some_and(|o| o.get().len() > crate::MAX_INLINE_OUTPUT_BYTES);
        if too_large {
            record.output = None;
        }
        Self {
            id,
            record,
            output_in_store: too_large,
        }
    }

    /// JSON bytes to publish.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a completion always serialises")
    }

    /// Reads and validates a completion from a delivery body.
    pub fn decode(body: &[u8]) -> Result<Self, PayloadError> {
        let completion: Self = serde_json::from_slice(body)?;
        if !completion.record.status.is_final() {
            return Err(RecordError::Inconsistent("a completion must hold a final status").into());
        }
        check_model_name(&completion.record.model)
            .map_err(|_| RecordError::Inconsistent("a completion's model name is invalid"))?;
        completion.record.validate(!completion.output_in_store)?;
        Ok(completion)
    }
}

/// How far a running job is, published by a worker to the reply exchange (AMQP `type` `progress`) for
/// each server instance that waits; transient and unconfirmed, since a lost one is replaced by the next.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressMessage {
    /// The request ID.
    pub id: JobId,
    /// The job's model.
    pub model: String,
    /// The fraction done, 0.0 ..= 1.0.
    pub fraction: f64,
    /// The part of the work it is in, if the model says (the factorial: `product`, then `decimal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl ProgressMessage {
    /// The AMQP `type` property that marks a progress message on the reply exchange.
    pub const KIND: &'static str = "progress";

    /// JSON bytes to publish.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a progress message always serialises")
    }

    /// Reads and validates a progress message from a delivery body.
    pub fn decode(body: &[u8]) -> Result<Self, PayloadError> {
        let progress: Self = serde_json::from_slice(body)?;
        if !(0.0..=1.0).contains(&progress.fraction) {
            return Err(RecordError::Inconsistent("a fraction must be within 0..=1").into());
        }
        if progress
            .phase
            .as_deref()
            .is_some_and(|p| check_phase(p).is_err())
        {
            return Err(
                RecordError::Inconsistent("a phase must be 1 to 32 printable characters").into(),
            );
        }
        check_model_name(&progress.model)
            .map_err(|_| RecordError::Inconsistent("a progress message's model name is invalid"))?;
        Ok(progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{json, json_string};
    use crate::JobStatus;

    fn factorial_job(n: u64) -> JobMessage {
        JobMessage {
            id: JobId::new_v4(),
            model: FACTORIAL.into(),
            input: factorial_input(n),
            client: Some("ip:127.0.0.1".into()),
        }
    }

    #[test]
    fn job_message_round_trip_and_rejects() {
        let job = factorial_job(42);
        assert_eq!(JobMessage::decode(&job.encode()).unwrap(), job);
        let other = JobMessage {
            id: JobId::new_v4(),
            model: "echo".into(),
            input: json(r#"{"text":"hi","big":123456789012345678901234567890}"#).unwrap(),
            client: None,
        };
        let decoded = JobMessage::decode(&other.encode()).unwrap();
        assert_eq!(
            decoded.input.get(),
            other.input.get(),
            "inputs travel as written"
        );
        // What an older server published.
        let id = job.id;
        let old = JobMessage::decode(format!(r#"{{"id":"{id}","n":42}}"#).as_bytes()).unwrap();
        assert_eq!(
            old,
            JobMessage {
                id,
                client: None,
                ..factorial_job(42)
            }
        );
        for bad in [
            &b"not json"[..],
            br#"{"n":5}"#,
            br#"{"id":"nope","n":5}"#,
            br#"{"id":"6f1f4a52-2d3e-4c4a-9b0e-1c2d3e4f5a6b","n":-5}"#,
            br#"{"id":"6f1f4a52-2d3e-4c4a-9b0e-1c2d3e4f5a6b","model":"echo"}"#,
            br#"{"id":"6f1f4a52-2d3e-4c4a-9b0e-1c2d3e4f5a6b","model":"../x","input":1}"#,
            b"\xff\xfe",
        ] {
            assert!(JobMessage::decode(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn progress_round_trip_and_rejects() {
        let progress = ProgressMessage {
            id: JobId::new_v4(),
            model: FACTORIAL.into(),
            fraction: 0.42,
            phase: Some("decimal".into()),
        };
        assert_eq!(
            ProgressMessage::decode(&progress.encode()).unwrap(),
            progress
        );
        let id = progress.id;
        for bad in [
            format!(r#"{{"id":"{id}","model":"factorial","fraction":1.5}}"#),
            format!(r#"{{"id":"{id}","model":"factorial","fraction":-0.1}}"#),
            format!(r#"{{"id":"{id}","model":"factorial","fraction":0.5,"phase":""}}"#),
            format!(
                r#"{{"id":"{id}","model":"factorial","fraction":0.5,"phase":"{}"}}"#,
                "x".repeat(33)
            ),
            format!(r#"{{"id":"{id}","model":"Bad","fraction":0.5}}"#),
            format!(r#"{{"id":"{id}","phase":"product"}}"#),
        ] {
            assert!(ProgressMessage::decode(bad.as_bytes()).is_err(), "{bad}");
        }
    }

    #[test]
    fn completion_leaves_big_output_in_store() {
        let mut record = JobRecord::queued(FACTORIAL, factorial_input(1), 0);
        record.status = JobStatus::Done;
        record.output = Some(json_string(&"7".repeat(crate::MAX_INLINE_OUTPUT_BYTES + 1)));
        let completion = Completion::new(JobId::new_v4(), record);
        assert!(completion.output_in_store);
        assert!(completion.record.output.is_none());
        let decoded = Completion::decode(&completion.encode()).unwrap();
        assert_eq!(decoded, completion);
    }

    #[test]
    fn completion_rejects_pending_or_inconsistent() {
        let record = JobRecord::queued(FACTORIAL, factorial_input(1), 0);
        let pending = Completion::new(JobId::new_v4(), record.clone());
        assert!(Completion::decode(&pending.encode()).is_err());
        let mut done = record;
        done.status = JobStatus::Done;
        let no_output = Completion::new(JobId::new_v4(), done);
        assert!(Completion::decode(&no_output.encode()).is_err());
    }
}
