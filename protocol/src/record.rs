//! The job record kept in Redis: one hash per job, plus the server instances that watch it.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::model::{check_model_name, json, Json, FACTORIAL};
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// The model that computes it.
    pub model: String,
    /// The input, as validated (for the factorial its canonical form `{"n":N}`).
    pub input: Json,
    /// Where the job stands.
    pub status: JobStatus,
    /// When the server accepted the submit.
    pub submitted_ms: u64,
    /// When a worker last started it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_ms: Option<u64>,
    /// The worker's time from start to the finished output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compute_ms: Option<u64>,
    /// When it reached its final state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_ms: Option<u64>,
    /// The model's output, a JSON value (done only; absent when it was not read or is too large to
    /// travel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Json>,
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
    /// Who submitted it, for the limits and the fair share of each client: `id:<identity>` with
    /// authentication, else `ip:<address>` (an IPv6 client by its /64). Absent in records of older
    /// versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// The fraction done, as last reported by the worker (pending jobs only; 0.0 ..= 1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<f64>,
    /// The phase the model last reported with its progress (pending jobs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
    /// A client asked to cancel the job while it ran: its worker stops at its next checkpoint.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel_requested: bool,
    /// Where the server POSTs the job once it ends (the URL the submit named, checked by the server).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<String>,
}

impl JobRecord {
    /// A record for a job of `model` with `input` the server has just taken.
    pub fn queued(model: &str, input: Json, submitted_ms: u64) -> Self {
        Self {
            model: model.to_owned(),
            input,
            status: JobStatus::Queued,
            submitted_ms,
            started_ms: None,
            compute_ms: None,
            finished_ms: None,
            output: None,
            error: None,
            attempts: 0,
            owner: None,
            client: None,
            progress: None,
            phase: None,
            cancel_requested: false,
            webhook: None,
        }
    }

    /// The same record, to be POSTed to `webhook` once it ends (see [`JobRecord::webhook`]).
    pub fn with_webhook(mut self, webhook: Option<&str>) -> Self {
        self.webhook = webhook.map(str::to_owned);
        self
    }

    /// The same record, belonging to `owner` (see [`JobRecord::owner`]).
    pub fn owned_by(mut self, owner: Option<&str>) -> Self {
        self.owner = owner.map(str::to_owned);
        self
    }

    /// The same record, submitted by `client` (see [`JobRecord::client`]).
    pub fn from_client(mut self, client: Option<&str>) -> Self {
        self.client = client.map(str::to_owned);
        self
    }

    /// `n` of a factorial job (`None` for other models).
    pub fn factorial_n(&self) -> Option<u64> {
        (self.model == FACTORIAL)
            .then(|| crate::model::factorial_n(self.input.raw()))
            .flatten()
    }

    /// The Redis hash fields of this record, for `HSET`.
    pub fn to_fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("model", self.model.clone()),
            ("input", self.input.get().to_owned()),
            ("status", self.status.as_str().to_owned()),
            ("submitted_ms", self.submitted_ms.to_string()),
            ("attempts", self.attempts.to_string()),
        ];
        let optional = [
            ("started_ms", self.started_ms),
            ("compute_ms", self.compute_ms),
            ("finished_ms", self.finished_ms),
        ];
        fields.extend(
            optional
                .into_iter()
                .filter_map(|(name, v)| v.map(|v| (name, v.to_string()))),
        );
        if let Some(output) = &self.output {
            fields.push(("output", output.get().to_owned()));
        }
        if let Some(error) = &self.error {
            fields.push(("error", error.clone()));
        }
        if let Some(owner) = &self.owner {
            fields.push(("owner", owner.clone()));
        }
        if let Some(client) = &self.client {
            fields.push(("client", client.clone()));
        }
        if let Some(progress) = self.progress {
            fields.push(("progress", progress.to_string()));
        }
        if let Some(phase) = &self.phase {
            fields.push(("phase", phase.clone()));
        }
        if self.cancel_requested {
            fields.push(("cancel", "1".to_owned()));
        }
        if let Some(webhook) = &self.webhook {
            fields.push(("webhook", webhook.clone()));
        }
        fields
    }

    /// Reads a record from the fields of its Redis hash (as `HGETALL` returns them), validating each one.
    ///
    /// An empty hash is not a record: callers treat it as "not found" before calling this. Records
    /// written before jobs named their model (a factorial's `n` and its output as bare digits) still
    /// read, as factorial jobs.
    pub fn from_fields(fields: HashMap<String, String>) -> Result<Self, RecordError> {
        let mut fields = fields;
        let (model, input) = match fields.remove("model") {
            Some(model) => {
                check_model_name(&model)
                    .map_err(|_| RecordError::Invalid("model", clip(&model)))?;
                let input = fields
                    .remove("input")
                    .ok_or(RecordError::Missing("input"))?;
                let input =
                    json(&input).map_err(|_| RecordError::Invalid("input", clip(&input)))?;
                (model, input)
            }
            None => {
                let n: u64 = required(&mut fields, "n")?;
                if let Some(digits) = fields.get_mut("output") {
                    if !digits.bytes().all(|b| b.is_ascii_digit()) {
                        return Err(RecordError::Invalid("output", clip(digits)));
                    }
                    *digits = format!("\"{digits}\"");
                }
                (FACTORIAL.to_owned(), crate::model::factorial_input(n))
            }
        };
        let output = match fields.remove("output") {
            Some(text) => {
                Some(json(&text).map_err(|_| RecordError::Invalid("output", clip(&text)))?)
            }
            None => None,
        };
        let record = Self {
            model,
            input,
            status: required(&mut fields, "status")?,
            submitted_ms: required(&mut fields, "submitted_ms")?,
            started_ms: optional(&mut fields, "started_ms")?,
            compute_ms: optional(&mut fields, "compute_ms")?,
            finished_ms: optional(&mut fields, "finished_ms")?,
            output,
            error: fields.remove("error"),
            attempts: optional(&mut fields, "attempts")?.unwrap_or(0),
            owner: fields.remove("owner"),
            client: fields.remove("client"),
            progress: optional(&mut fields, "progress")?,
            phase: fields.remove("phase"),
            cancel_requested: match fields.remove("cancel").as_deref() {
                None | Some("0") => false,
                Some("1") => true,
                Some(other) => return Err(RecordError::Invalid("cancel", clip(other))),
            },
            webhook: fields.remove("webhook"),
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
        if let Some(phase) = &self.phase {
            if check_phase(phase).is_err() {
                return Err(RecordError::Invalid("phase", clip(phase)));
            }
        }
        match self.status {
            JobStatus::Done => match &self.output {
                Some(output) if self.model == FACTORIAL && !is_decimal_string(output.get()) => Err(
                    RecordError::Inconsistent("a factorial's output is not a decimal number"),
                ),
                None if need_output => Err(RecordError::Inconsistent("done without an output")),
                _ => Ok(()),
            },
            JobStatus::Failed if self.error.is_none() => {
                Err(RecordError::Inconsistent("failed without an error"))
            }
            _ => Ok(()),
        }
    }
}

/// Longest phase name a model may report, in characters.
pub const MAX_PHASE_CHARS: usize = 32;

/// Checks a progress phase: 1 to 32 printable characters.
pub fn check_phase(phase: &str) -> Result<(), String> {
    let count = phase.chars().count();
    if count == 0 || count > MAX_PHASE_CHARS || phase.chars().any(char::is_control) {
        return Err(format!(
            "a phase is 1 to {MAX_PHASE_CHARS} printable characters"
        ));
    }
    Ok(())
}

/// Whether a JSON text is a string of decimal digits (how the factorial's output is stored).
fn is_decimal_string(text: &str) -> bool {
    text.len() >= 3
        && text.starts_with('"')
        && text.ends_with('"')
        && text[1..text.len() - 1].bytes().all(|b| b.is_ascii_digit())
}

/// The start of a stored value, for an error message.
fn clip(value: &str) -> String {
    value.chars().take(32).collect()
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

    /// The digest of the output shared by every job of `model` with this `input` (see
    /// [`result_digest`]), whose stored form is under [`Keys::output`].
    pub fn result(&self, model: &str, input: &RawValue) -> String {
        format!("{}result:{}", self.prefix, result_digest(model, input))
    }

    /// A stored output, under the SHA-256 of its JSON text in hex (64 characters, the key's end):
    /// kept once however many records refer to it (by their `output_digest` field).
    pub fn output(&self, digest: &str) -> String {
        format!("{}output:{digest}", self.prefix)
    }

    /// The hash of workers' announcements: each worker's ID with the models it serves and until when.
    pub fn workers(&self) -> String {
        format!("{}workers", self.prefix)
    }

    /// What every job hash's key starts with (the job's ID follows), for scripts that reach a job
    /// named by a value they read.
    pub fn job_prefix(&self) -> String {
        format!("{}job:", self.prefix)
    }

    /// The string that holds the job of an idempotency key (`<id> <fingerprint>`) in `scope` (the
    /// identity that sent it, or `None` for every client without authentication). The key is hashed,
    /// so any printable key makes a key name of fixed size.
    pub fn idempotency(&self, scope: Option<&str>, key: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        match scope {
            Some(identity) => {
                hasher.update(b"id:");
                hasher.update(identity.as_bytes());
            }
            None => hasher.update(b"all"),
        }
        hasher.update(b"\n");
        hasher.update(key.as_bytes());
        format!("{}idem:{:x}", self.prefix, hasher.finalize())
    }

    /// The sorted set of pending webhook deliveries: job IDs scored by when each is due (Redis time,
    /// in ms).
    pub fn webhooks(&self) -> String {
        format!("{}webhooks", self.prefix)
    }
}

/// What identifies a shared result: the SHA-256 of the model's name and its input's text, in hex.
/// Inputs are compared as written (the factorial's are canonical, so equal `n` means equal text).
pub fn result_digest(model: &str, input: &RawValue) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(model.as_bytes());
    hasher.update(b"\n");
    hasher.update(input.get().as_bytes());
    format!("{:x}", hasher.finalize())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{factorial_input, json_string};

    fn hash(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn fields_of(record: &JobRecord) -> HashMap<String, String> {
        record
            .to_fields()
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v))
            .collect()
    }

    #[test]
    fn fields_round_trip() {
        let mut record = JobRecord::queued(FACTORIAL, factorial_input(20), 1_700_000_000_000);
        record.status = JobStatus::Done;
        record.started_ms = Some(1_700_000_000_010);
        record.compute_ms = Some(3);
        record.finished_ms = Some(1_700_000_000_013);
        record.output = Some(json_string("2432902008176640000"));
        record.attempts = 1;
        record.owner = Some("alice".into());
        record.client = Some("id:alice".into());
        record.webhook = Some("https://example.com/hook".into());
        assert_eq!(JobRecord::from_fields(fields_of(&record)).unwrap(), record);
        let mut other = JobRecord::queued("echo", json(r#"{"text": [1, 2.50, "é"]}"#).unwrap(), 1);
        other.status = JobStatus::Running;
        other.progress = Some(0.5);
        other.phase = Some("loading".into());
        let back = JobRecord::from_fields(fields_of(&other)).unwrap();
        assert_eq!(
            back.input.get(),
            r#"{"text": [1, 2.50, "é"]}"#,
            "inputs are kept as written"
        );
        assert_eq!(back, other);
    }

    #[test]
    fn records_of_older_versions_read_as_factorial_jobs() {
        let fields = hash(&[
            ("n", "4"),
            ("status", "done"),
            ("submitted_ms", "1"),
            ("digits", "2"),
            ("output", "24"),
        ]);
        let record = JobRecord::from_fields(fields).unwrap();
        assert_eq!(record.model, FACTORIAL);
        assert_eq!(record.factorial_n(), Some(4));
        assert_eq!(record.output.unwrap().get(), "\"24\"");
    }

    #[test]
    fn rejects_damaged_records() {
        let base = [
            ("model", "factorial"),
            ("input", r#"{"n":5}"#),
            ("submitted_ms", "1"),
        ];
        let cases: &[(&[(&str, &str)], RecordError)] = &[
            (
                &[("status", "queued"), ("model", "Bad Name")],
                RecordError::Invalid("model", "Bad Name".into()),
            ),
            (
                &[("status", "queued"), ("input", "{")],
                RecordError::Invalid("input", "{".into()),
            ),
            (
                &[("status", "queued"), ("submitted_ms", "-1")],
                RecordError::Invalid("submitted_ms", "-1".into()),
            ),
            (
                &[("status", "weird")],
                RecordError::Invalid("status", "weird".into()),
            ),
            (
                &[("status", "done"), ("output", "\"1x0\"")],
                RecordError::Inconsistent("a factorial's output is not a decimal number"),
            ),
            (
                &[("status", "done"), ("output", "not json")],
                RecordError::Invalid("output", "not json".into()),
            ),
            (
                &[("status", "failed")],
                RecordError::Inconsistent("failed without an error"),
            ),
            (
                &[("status", "running"), ("phase", "")],
                RecordError::Invalid("phase", "".into()),
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
        let old = hash(&[
            ("n", "5"),
            ("status", "done"),
            ("submitted_ms", "1"),
            ("output", "1x0"),
        ]);
        assert_eq!(
            JobRecord::from_fields(old).unwrap_err(),
            RecordError::Invalid("output", "1x0".into())
        );
    }

    #[test]
    fn records_without_an_owner_still_read() {
        // Written by a server without authentication, or before owners existed.
        let fields = hash(&[
            ("model", "factorial"),
            ("input", r#"{"n":5}"#),
            ("status", "queued"),
            ("submitted_ms", "1"),
        ]);
        let record = JobRecord::from_fields(fields).unwrap();
        assert_eq!(record.owner, None);
        assert!(!record.to_fields().iter().any(|(name, _)| *name == "owner"));
        let owned = JobRecord::queued(FACTORIAL, factorial_input(5), 1).owned_by(Some("bob"));
        assert!(owned.to_fields().contains(&("owner", "bob".to_owned())));
    }

    #[test]
    fn requires_the_fields_every_record_has() {
        let fields = hash(&[
            ("model", "factorial"),
            ("status", "queued"),
            ("submitted_ms", "1"),
        ]);
        assert_eq!(
            JobRecord::from_fields(fields).unwrap_err(),
            RecordError::Missing("input")
        );
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
        let ten = factorial_input(10);
        assert_eq!(
            keys.result(FACTORIAL, ten.raw()),
            keys.result(FACTORIAL, factorial_input(10).raw())
        );
        assert_ne!(
            keys.result(FACTORIAL, ten.raw()),
            keys.result("echo", ten.raw())
        );
        assert_ne!(
            keys.result(FACTORIAL, ten.raw()),
            keys.result(FACTORIAL, factorial_input(11).raw())
        );
        assert_eq!(
            keys.result(FACTORIAL, ten.raw()).len(),
            "t:result:".len() + 64
        );
    }
}
