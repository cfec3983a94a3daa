//! The job record kept in Redis: one hash per job, plus the server instances that watch it.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::JobId;

/// Milliseconds since the Unix epoch: the clock every timestamp in a record uses, so that a server and a
/// worker on different machines can subtract each other's times.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Where a job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    /// Stored and published; no worker has started it.
    Queued,
    /// A worker is computing it.
    Running,
    /// Finished with a result.
    Done,
    /// Finished without a result; `error` says why.
    Failed,
    /// Stopped on a client's request.
    Cancelled,
}

impl JobStatus {
    /// Whether the job has reached one of its final states.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Done | Self::Failed | Self::Cancelled)
    }

    /// The name stored in Redis and sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Done => "done",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobStatus {
    type Err = RecordError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Self::Queued,
            "running" => Self::Running,
            "done" => Self::Done,
            "failed" => Self::Failed,
            "cancelled" => Self::Cancelled,
            other => {
                return Err(RecordError::Invalid(
                    "status",
                    other.chars().take(32).collect(),
                ))
            }
        })
    }
}

/// Which part of the work a running job is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Multiplying the factors of n!.
    Product,
    /// Converting the product to decimal.
    Decimal,
}

/// A stored record that cannot be read: it was written by something else, or damaged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// A field every record has is absent.
    #[error("job record has no `{0}` field")]
    Missing(&'static str),
    /// A field holds a value it never holds when Herald writes it.
    #[error("job record field `{0}` holds an invalid value {1:?}")]
    Invalid(&'static str, String),
    /// A finished record lacks what its status requires.
    #[error("job record is inconsistent: {0}")]
    Inconsistent(&'static str),
}

/// One job as Redis keeps it (a hash whose field names are these field names).
///
/// Timestamps are [`unix_ms`]. The record is created by the server with `queued` and only moved forward
/// by workers (and cancellations), never back from a final state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The input.
    pub n: u64,
    /// Where the job stands.
    pub status: JobStatus,
    /// When the server accepted the submit.
    pub submitted_ms: u64,
    /// When a worker last started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// The worker's time from start to the finished decimal string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_ms: Option<u64>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// Number of decimal digits of the output (done only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digits: Option<u64>,
    /// The decimal output (done only; absent when it was not read or is too large to travel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Arc<str>>,
    /// What went wrong (failed only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// How many times a worker has started it.
    #[serde(default)]
    pub attempts: u32,
    /// The identity that submitted it, when the server authenticates clients: only that identity may
    /// read it. Absent in records written without authentication (and by older versions).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// The fraction done, as last reported by the worker (pending jobs only; 0.0 ..= 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// A client asked to cancel the job while it ran: its worker stops at its next checkpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
}

impl JobRecord {
    /// A record for a job the server has just taken.
    pub fn queued(n: u64, submitted_ms: u64) -> Self {
        Self {
            n,
            status: JobStatus::Queued,
            submitted_ms,
            started_ms: None,
            compute_ms: None,
            finished_ms: None,
            digits: None,
            output: None,
            error: None,
            attempts: 0,
            owner: None,
            progress: None,
            cancel_requested: false,
        }
    }

    /// The same record, belonging to `owner` (see [`JobRecord::owner`]).
    pub fn owned_by(mut self, owner: Option<&str>) -> Self {
        self.owner = owner.map(str::to_owned);
        self
    }

    /// The Redis hash fields of this record, for `HSET`.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("n", self.n.to_string()),
            ("status", self.status.as_str().to_owned()),
            ("submitted_ms", self.submitted_ms.to_string()),
            ("attempts", self.attempts.to_string()),
        ];
        let optional = [
            ("started_ms", self.started_ms),
            ("compute_ms", self.compute_ms),
            ("finished_ms", self.finished_ms),
            ("digits", self.digits),
        ];
        fields.extend(
            optional
                .into_iter()
                .filter_map(|(name, v)| v.map(|v| (name, v.to_string()))),
        );
        if let Some(output) = &self.output {
            fields.push(("output", output.to_string()));
        }
        if let Some(error) = &self.error {
            fields.push(("error", error.clone()));
        }
        if let Some(owner) = &self.owner {
            fields.push(("owner", owner.clone()));
        }
        if let Some(progress) = self.progress {
            fields.push(("progress", progress.to_string()));
        }
        if self.cancel_requested {
            fields.push(("cancel", "1".to_owned()));
        }
        fields
    }

    /// Reads a record from the fields of its Redis hash (as `HGETALL` returns them), validating each one.
    ///
    /// An empty hash is not a record: callers treat it as "not found" before calling this.
    pub fn from_fields(fields: HashMap<String, String>) -> Result<Self, RecordError> {
        let mut fields = fields;
        let record = Self {
            n: required(&mut fields, "n")?,
            status: required(&mut fields, "status")?,
            submitted_ms: required(&mut fields, "submitted_ms")?,
            started_ms: optional(&mut fields, "started_ms")?,
            compute_ms: optional(&mut fields, "compute_ms")?,
            finished_ms: optional(&mut fields, "finished_ms")?,
            digits: optional(&mut fields, "digits")?,
            output: fields.remove("output").map(Arc::from),
            error: fields.remove("error"),
            attempts: optional(&mut fields, "attempts")?.unwrap_or(0),
            owner: fields.remove("owner"),
            progress: optional(&mut fields, "progress")?,
            cancel_requested: match fields.remove("cancel").as_deref() {
                None | Some("0") => false,
                Some("1") => true,
                Some(other) => {
                    return Err(RecordError::Invalid(
                        "cancel",
                        other.chars().take(32).collect(),
                    ))
                }
            },
        };
        record.validate(false)?;
        Ok(record)
    }

    /// Checks what the status requires. `need_output`: a done record must carry its output.
    pub fn validate(&self, need_output: bool) -> Result<(), RecordError> {
        if let Some(progress) = self.progress {
            if !(0.0..=1.0).contains(&progress) {
                return Err(RecordError::Invalid("progress", progress.to_string()));
            }
        }
        match self.status {
            JobStatus::Done => {
                let digits = self
                    .digits
                    .ok_or(RecordError::Inconsistent("done without a digit count"))?;
                match &self.output {
                    Some(output) if output.len() as u64 != digits => Err(
                        RecordError::Inconsistent("digit count does not match the output"),
                    ),
                    Some(output) if !output.bytes().all(|b| b.is_ascii_digit()) => {
                        Err(RecordError::Inconsistent("output is not a decimal number"))
                    }
                    None if need_output => Err(RecordError::Inconsistent("done without an output")),
                    _ => Ok(()),
                }
            }
            JobStatus::Failed if self.error.is_none() => {
                Err(RecordError::Inconsistent("failed without an error"))
            }
            _ => Ok(()),
        }
    }
}

fn required<T: FromStr>(
    fields: &mut HashMap<String, String>,
    name: &'static str,
) -> Result<T, RecordError> {
    optional(fields, name)?.ok_or(RecordError::Missing(name))
}

fn optional<T: FromStr>(
    fields: &mut HashMap<String, String>,
    name: &'static str,
) -> Result<Option<T>, RecordError> {
    fields
        .remove(name)
        .map(|raw| {
            raw.parse()
                .map_err(|_| RecordError::Invalid(name, raw.chars().take(32).collect()))
        })
        .transpose()
}

/// The Redis key layout under one prefix (all of Herald's keys start with it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix`, such as `herald:`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// The prefix itself.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The hash that holds a job's [`JobRecord`].
    pub fn job(&self, id: &JobId) -> String {
        format!("{}job:{}", self.prefix, id.as_hyphenated())
    }

    /// The hash of server instances (their reply routing keys) with a socket waiting for a job, each
    /// with its count of waiting sockets.
    pub fn watchers(&self, id: &JobId) -> String {
        format!("{}watch:{}", self.prefix, id.as_hyphenated())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn fields_round_trip() {
        let mut record = JobRecord::queued(20, 1_700_000_000_000);
        record.status = JobStatus::Done;
        record.started_ms = Some(1_700_000_000_010);
        record.compute_ms = Some(3);
        record.finished_ms = Some(1_700_000_000_013);
        record.digits = Some(19);
        record.output = Some(Arc::from("2432902008176640000"));
        record.attempts = 1;
        record.owner = Some("alice".into());
        let fields = record
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect();
        assert_eq!(JobRecord::from_fields(fields).unwrap(), record);
    }

    #[test]
    fn rejects_damaged_records() {
        let base = [("n", "5"), ("submitted_ms", "1")];
        let cases: &[(&[(&str, &str)], RecordError)] = &[
            (
                &[("status", "queued"), ("n", "")],
                RecordError::Invalid("n", "".into()),
            ),
            (
                &[("n", "-1"), ("status", "queued"), ("submitted_ms", "1")],
                RecordError::Invalid("n", "-1".into()),
            ),
            (
                &[("status", "weird")],
                RecordError::Invalid("status", "weird".into()),
            ),
            (
                &[("status", "done"), ("output", "120")],
                RecordError::Inconsistent("done without a digit count"),
            ),
            (
                &[("status", "done"), ("digits", "2"), ("output", "120")],
                RecordError::Inconsistent("digit count does not match the output"),
            ),
            (
                &[("status", "done"), ("digits", "3"), ("output", "1x0")],
                RecordError::Inconsistent("output is not a decimal number"),
            ),
            (
                &[("status", "failed")],
                RecordError::Inconsistent("failed without an error"),
            ),
        ];
        for (extra, expected) in cases {
            let mut fields = hash(&base);
            fields.extend(hash(extra));
            assert_eq!(
                JobRecord::from_fields(fields).unwrap_err(),
                *expected,
                "{extra:?}"
            );
        }
    }

    #[test]
    fn records_without_an_owner_still_read() {
        // Written by a server without authentication, or before owners existed.
        let fields = hash(&[("n", "5"), ("status", "queued"), ("submitted_ms", "1")]);
        let record = JobRecord::from_fields(fields).unwrap();
        assert_eq!(record.owner, None);
        assert!(!record.to_fields().iter().any(|(name, _)| *name == "owner"));
        let json = r#"{"n":5,"status":"queued","submitted_ms":1}"#;
        let parsed: JobRecord = serde_json::from_str(json).unwrap();
        assert_eq!(parsed, JobRecord::queued(5, 1));
        let owned = JobRecord::queued(5, 1).owned_by(Some("bob"));
        assert!(owned.to_fields().contains(&("owner", "bob".to_owned())));
    }

    #[test]
    fn requires_the_fields_every_record_has() {
        let fields = hash(&[("status", "queued"), ("submitted_ms", "1")]);
        assert_eq!(
            JobRecord::from_fields(fields).unwrap_err(),
            RecordError::Missing("n")
        );
    }

    #[test]
    fn keys_share_the_prefix() {
        let keys = Keys::new("t:");
        let id = JobId::nil();
        assert_eq!(keys.job(&id), "t:job:00000000-0000-0000-0000-000000000000");
        assert!(keys.watchers(&id).starts_with("t:watch:"));
    }
}
