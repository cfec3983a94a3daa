//! The HTTP API's documents: a job as `GET /jobs/<id>` shows it (and as webhooks will deliver it), and
//! the answers to a submit and a cancel.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::Json;
use crate::record::{JobRecord, JobStatus};
use crate::ws::Timings;
use crate::JobId;

/// A job, whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct JobView {
    /// The request ID.
    #[schema(value_type = uuid::Uuid)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ProgressView {
    /// 0.0 ..= 1.0.
    #[schema(minimum = 0.0, maximum = 1.0)]
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// The request ID.
    #[schema(value_type = uuid::Uuid)]
    pub id: JobId,
    /// The model.
    pub model: String,
    /// Workers serving the model when the job was accepted, where the server can tell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workers: Option<u32>,
}

/// The answer to a cancel over HTTP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct CancelAnswer {
    /// The request ID.
    #[schema(value_type = uuid::Uuid)]
    pub id: JobId,
    /// `cancelled` (it was queued, and is final now) or `cancelling` (it was running, and its worker
    /// stops at its next checkpoint).
    #[schema(schema_with = cancel_states)]
    pub status: String,
}

/// The two states a cancel over HTTP answers.
fn cancel_states() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["cancelled", "cancelling"]))
        .build()
}

/// The body of `POST /jobs` as the OpenAPI document describes it: one of three shapes.
/// [`crate::frame::parse_submit_body`] reads bodies (and says what is wrong with any other); this type
/// describes them, and its tests hold the two together.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum SubmitBody {
    /// The factorial of `n`, the oldest shape: `{"n":10}`.
    Factorial(FactorialSubmit),
    /// The factorial with its input as any model's: `{"model":"factorial","input":{"n":10}}`.
    FactorialInput(FactorialInputSubmit),
    /// Another model with its input: `{"model":"sentiment","input":{"text":"hi"}}`.
    Model(ModelSubmit),
}

/// Any of the three shapes (`anyOf`, not `oneOf`: a model name pattern cannot leave out `factorial`,
/// so `{"model":"factorial","input":{"n":1}}` is both the second shape and the third).
impl utoipa::PartialSchema for SubmitBody {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::AnyOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name(
                FactorialSubmit::name(),
            ))
            .item(utoipa::openapi::Ref::from_schema_name(
                FactorialInputSubmit::name(),
            ))
            .item(utoipa::openapi::Ref::from_schema_name(ModelSubmit::name()))
            .description(Some(
                "A job: the factorial's `n`, or a model and its input.",
            ))
            .into()
    }
}

impl ToSchema for SubmitBody {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        use utoipa::PartialSchema;
        schemas.push((FactorialSubmit::name().into(), FactorialSubmit::schema()));
        schemas.push((
            FactorialInputSubmit::name().into(),
            FactorialInputSubmit::schema(),
        ));
        schemas.push((FactorialInput::name().into(), FactorialInput::schema()));
        schemas.push((ModelSubmit::name().into(), ModelSubmit::schema()));
    }
}

/// `{"n":N}`, optionally naming the factorial.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct FactorialSubmit {
    /// The factorial's `n`, at most the server's `--max-n`.
    #[schema(schema_with = factorial_n)]
    pub n: u64,
    /// Never beside `n`, not even `null`: `n` and `input` are two ways to give the factorial's
    /// input, and a body with both is refused (`400`).
    #[serde(default)]
    #[schema(schema_with = no_input)]
    pub input: Option<()>,
    /// The factorial (the default).
    #[serde(default)]
    #[schema(schema_with = factorial_name)]
    pub model: Option<String>,
    /// A URL to POST the job's result to when it ends (only on a server with `--webhook-secret`).
    #[serde(default)]
    #[schema(schema_with = webhook)]
    pub webhook: Option<String>,
}

/// `{"input":{"n":N}}` (or `{"input":N}`), optionally naming the factorial.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct FactorialInputSubmit {
    /// The factorial (the default).
    #[serde(default)]
    #[schema(schema_with = factorial_name)]
    pub model: Option<String>,
    /// The factorial's input: `{"n":N}`, or `N` alone.
    #[schema(schema_with = factorial_input)]
    pub input: Json,
    /// `null` at most (read as absent): `n` and `input` are two ways to give the factorial's input,
    /// and a body with both is refused (`400`).
    #[serde(default)]
    #[schema(schema_with = no_n)]
    pub n: Option<()>,
    /// A URL to POST the job's result to when it ends (only on a server with `--webhook-secret`).
    #[serde(default)]
    #[schema(schema_with = webhook)]
    pub webhook: Option<String>,
}

/// The factorial's input as any model's: `{"n":N}`.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct FactorialInput {
    /// The factorial's `n`, at most the server's `--max-n`.
    #[schema(schema_with = factorial_n)]
    pub n: u64,
}

/// A model with its input.
#[derive(Debug, Clone, PartialEq, Deserialize, ToSchema)]
pub struct ModelSubmit {
    /// The model: one the server serves (`GET /models`), else `404` `unknown_model`.
    #[schema(schema_with = model_name)]
    pub model: String,
    /// The model's input, at most `--max-input-bytes` of JSON; the model may refuse it (`400`).
    pub input: Json,
    /// `null` at most (read as absent): `n` and `input` are two ways to give the factorial's input,
    /// and a body with both is refused (`400`).
    #[serde(default)]
    #[schema(schema_with = no_n)]
    pub n: Option<()>,
    /// A URL to POST the job's result to when it ends (only on a server with `--webhook-secret`).
    #[serde(default)]
    #[schema(schema_with = webhook)]
    pub webhook: Option<String>,
}

/// Name of the component holding the factorial's `n`: its maximum is the server's `--max-n`, known
/// only when the server starts, which adds the component to its document.
pub const FACTORIAL_N_SCHEMA: &str = "FactorialN";

fn factorial_n() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name(FACTORIAL_N_SCHEMA)
}

/// The factorial's `n` (`GET /factorial?no=`), as a reference to the component [`FACTORIAL_N_SCHEMA`].
pub struct FactorialN;

impl utoipa::PartialSchema for FactorialN {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        factorial_n().into()
    }
}

impl ToSchema for FactorialN {}

/// Name of the component describing a submit's `webhook`: what it takes depends on whether the
/// server sends webhooks (`--webhook-secret`), known only when the server starts, which adds the
/// component to its document.
pub const WEBHOOK_SCHEMA: &str = "Webhook";

fn webhook() -> utoipa::openapi::Ref {
    utoipa::openapi::Ref::from_schema_name(WEBHOOK_SCHEMA)
}

/// An idempotency key as [`crate::idempotency::check_key`] takes it, as a regular expression: the
/// pattern of the `Idempotency-Key` header in the OpenAPI document. (The body's `"key"`, which must
/// agree with the header when both are given, is left out of the document's body shapes: a schema
/// cannot say that a header and a body field must agree, and the header is how HTTP clients send it.)
pub const IDEMPOTENCY_KEY_PATTERN: &str = "^[ -~]{1,255}$";

/// `"factorial"`, or `null` (read as absent: the factorial).
fn factorial_name() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::SchemaType::from_iter([
            utoipa::openapi::Type::String,
            utoipa::openapi::Type::Null,
        ]))
        .enum_values(Some([Some(crate::FACTORIAL), None]))
        .build()
}

/// The factorial's input: `{"n":N}`, or `N` alone.
fn factorial_input() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::AnyOfBuilder::new()
        .item(utoipa::openapi::Ref::from_schema_name(
            FactorialInput::name(),
        ))
        .item(factorial_n())
        .build()
        .into()
}

/// `n` beside `input`: `null` only. (Without it, a body with `input` and any `n` would match the
/// shapes with `input`, which allow other properties, while the server refuses it.)
fn no_n() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::Null)
        .build()
}

/// `input` beside `n`: no value at all (an empty `enum`), since even `null` is an input (a model's).
fn no_input() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .enum_values(Some(Vec::<serde_json::Value>::new()))
        .build()
}

/// The rule of [`crate::model::check_model_name`].
fn model_name() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .pattern(Some(MODEL_NAME_PATTERN))
        .build()
}

/// A model name as [`crate::model::check_model_name`] takes it, as a regular expression.
pub const MODEL_NAME_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,63}$";

/// An error of the JSON API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
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
    fn the_key_pattern_is_the_key_rule() {
        assert_eq!(
            IDEMPOTENCY_KEY_PATTERN,
            format!("^[ -~]{{1,{}}}$", crate::idempotency::MAX_KEY_BYTES)
        );
        assert!(crate::idempotency::check_key(" ~").is_ok());
        assert!(crate::idempotency::check_key("\u{7f}").is_err());
    }

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
