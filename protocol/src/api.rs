//! The HTTP API's documents: a job as `GET /jobs/<id>` shows it (and as webhooks will deliver it), and
//! the answers to a submit and a cancel.

use serde::{Deserialize, Serialize};

use crate::model::Json;
use crate::record::{JobRecord, JobStatus};
use crate::ws::Timings;
use crate::JobId;

/// A job, whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobView {
    /// The request ID.
    pub id: JobId,
    /// The model.
    pub model: String,
    /// Where it stands.
    pub status: JobStatus,
    /// The input, as validated.
    pub input: Json,
    /// The factorial's `n` (factorial jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub n: Option<u64>,
    /// The output (done only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Json>,
    /// Why it failed (failed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How far it is (running only, once reported).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<ProgressView>,
    /// Starts by a worker so far.
    pub attempts: u32,
    /// When it was accepted (unix ms).
    pub submitted_ms: u64,
    /// When a worker last started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// How long it took (final jobs only; `total_ms` up to its final state).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<Timings>,
    /// Where the job is POSTed once it ends, if the submit named a webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

/// A running job's progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProgressView {
    /// 0.0 ..= 1.0.
    pub fraction: f64,
    /// The phase the model reported, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

impl JobView {
    /// The document of job `id` with `record`.
    pub fn new(id: JobId, record: &JobRecord) -> Self {
        let timings = record
            .finished_ms
            .filter(|_| record.status.is_final())
            .map(|finished| {
                let started = record.started_ms.unwrap_or(finished);
                Timings {
                    queued_ms: started.saturating_sub(record.submitted_ms),
                    compute_ms: record.compute_ms.unwrap_or_default(),
                    total_ms: finished.saturating_sub(record.submitted_ms),
                }
            });
        Self {
            id,
            model: record.model.clone(),
            status: record.status,
            input: record.input.clone(),
            n: record.factorial_n(),
            output: record
                .output
                .clone()
                .filter(|_| record.status == JobStatus::Done),
            error: record.error.clone(),
            progress: record
                .progress
                .filter(|_| !record.status.is_final())
                .map(|fraction| ProgressView {
                    fraction,
                    phase: record.phase.clone(),
                }),
            attempts: record.attempts,
            submitted_ms: record.submitted_ms,
            started_ms: record.started_ms,
            finished_ms: record.finished_ms,
            timings,
            webhook: record.webhook.clone(),
        }
    }
}

/// The answer to `POST /jobs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accepted {
    /// The request ID.
    pub id: JobId,
    /// The model.
    pub model: String,
    /// Workers serving the model when the job was accepted, where the server can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
}

/// The answer to a cancel over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CancelAnswer {
    /// The request ID.
    pub id: JobId,
    /// `cancelled` (it was queued, and is final now) or `cancelling` (it was running, and its worker
    /// stops at its next checkpoint).
    pub status: String,
}

/// An error of the JSON API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiErrorBody {
    /// Machine-readable reason (the WebSocket's error codes).
    pub code: crate::ErrorCode,
    /// A sentence for people.
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{factorial_input, json_string};
    use crate::FACTORIAL;

    #[test]
    fn a_finished_job_shows_its_output_and_timings() {
        let mut record = JobRecord::queued(FACTORIAL, factorial_input(4), 1000);
        record.status = JobStatus::Done;
        record.started_ms = Some(1010);
        record.compute_ms = Some(3);
        record.finished_ms = Some(1020);
        record.output = Some(json_string("24"));
        record.attempts = 1;
        let view = serde_json::to_value(JobView::new(JobId::nil(), &record)).unwrap();
        assert_eq!(
            view,
            serde_json::json!({"id": JobId::nil(), "model": "factorial", "status": "done",
                "input": {"n": 4}, "n": 4, "output": "24", "attempts": 1, "submitted_ms": 1000,
                "started_ms": 1010, "finished_ms": 1020,
                "timings": {"queued_ms": 10, "compute_ms": 3, "total_ms": 20}})
        );
    }
}
