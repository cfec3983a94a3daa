//! The jobs API, for programs: `POST /jobs` submits a job of any model, `GET /jobs/<id>` shows it,
//! `DELETE /jobs/<id>` cancels it, `GET /jobs/<id>/output` downloads its output, and `GET /models`
//! lists the models served. Bodies and errors are JSON.

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_protocol::api::{Accepted, ApiErrorBody, JobView};
use herald_protocol::frame::parse_submit_body;
use herald_protocol::idempotency::check_key;
use herald_protocol::{ErrorCode, JobId};
use serde::Serialize;

use super::{cancel_response, output_response, read_job, ApiError, Failure, JobRequest};
use crate::auth;
use crate::jobs::Taken;
use crate::AppState;

/// An error of the jobs API: its body is JSON (`{"code","message"}`).
pub struct JsonError(ApiError);

impl<T: Into<ApiError>> From<T> for JsonError {
    fn from(error: T) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for JsonError {
    fn into_response(self) -> Response {
        match self.0 {
            ApiError::Failed(failure) => failure.into_json(),
            ApiError::Auth(e) => e.into_json_response(),
        }
    }
}

/// `POST /jobs` with `{"model":"NAME","input":…}` (no model: the factorial, which also takes `"n"`),
/// optionally `"webhook":"https://…"`: 202 with the job's ID and `Location: /jobs/<id>`. The caller's
/// token is checked before the body is read, and the body is read only up to the largest input and a
/// little more.
///
/// With an `Idempotency-Key` header, a repeat of an earlier submit under the same key (same caller,
/// same model and input, job not expired) answers 200 with that job's ID and starts nothing; another
/// model or input under the key answers 409.
#[utoipa::path(post, path = "/jobs", operation_id = "jobs_submit", tag = "jobs",
    params(("Idempotency-Key" = Option<String>, Header, pattern = r"^[ -~]{1,255}$",
        description = "Makes the submit safe to repeat: 1 to 255 printable ASCII characters. A repeat \
                       under the same key (same caller, model and input, job not expired) answers 200 \
                       with the first job; another model or input under the key answers 409. The body's `\"key\"` \
                       (the WebSocket's field) is read too, and must then agree with the header.")),
    request_body(content = herald_protocol::api::SubmitBody, content_type = "application/json"),
    responses(
        (status = 200, description = "A repeat of an earlier submit under its idempotency key: that job's ID \
            (nothing new was started).", body = Accepted,
            headers(("Location" = String, description = "`/jobs/<id>`, where the job is shown."))),
        (status = 202, description = "Accepted: the job's ID.", body = Accepted,
            headers(("Location" = String, description = "`/jobs/<id>`, where the job is shown."))),
        (status = 400, description = "`bad_request`: not a valid body, key or webhook, or the model refuses the input.",
            body = ApiErrorBody),
        (status = 401, description = "`unauthorized`: no valid token (authentication on).", body = ApiErrorBody,
            headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The request addresses the server by a host name it does not answer to \
            (see --allowed-hosts).", body = String, content_type = "text/plain"),
        (status = 404, description = "`unknown_model`: no worker serves the model.", body = ApiErrorBody),
        (status = 409, description = "`conflict`: the idempotency key was used for another model or input.",
            body = ApiErrorBody),
        (status = 413, description = "`too_large`: the body, the input or `n` is above the server's limits.",
            body = ApiErrorBody),
        (status = 429, description = "`busy`: too many submits from this client, the client at a quota (jobs \
            queued, jobs kept, bytes stored), or too much work in flight.",
            body = ApiErrorBody, headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "`unavailable`: RabbitMQ or Redis cannot be reached.", body = ApiErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, JsonError> {
    let caller = state.caller(auth::bearer_header(&headers), peer.ip())?;
    let limit = state.settings.max_input_bytes + herald_protocol::FRAME_OVERHEAD_BYTES;
    let body = axum::body::to_bytes(body, limit).await.map_err(|_| {
        Failure::new(
            ErrorCode::TooLarge,
            format!(
                "the body must be at most {limit} bytes (--max-input-bytes and 4 KiB for the other fields)"
            ),
        )
    })?;
    let text = std::str::from_utf8(&body)
        .map_err(|_| Failure::bad_request("the body must be UTF-8 JSON"))?;
    let submit = parse_submit_body(text)?;
    let key = idempotency_key(&headers, submit.key)?;
    let webhook = crate::webhook::check_submit(submit.webhook.as_deref(), &state.settings)?;
    let mut job = state
        .jobs
        .prepare(submit.model.as_deref(), submit.input)
        .await?;
    job.key = key;
    job.webhook = webhook;
    state.limits.submit(&caller.key).map_err(|wait| Failure {
        retry_after: Some(wait),
        ..Failure::new(
            ErrorCode::Busy,
            "too many submits from this client; slow down",
        )
    })?;
    let id = JobId::new_v4();
    let taken = state
        .jobs
        .submit(
            id,
            &job,
            false,
            caller.identity.as_deref(),
            &caller.key.to_string(),
        )
        .await?;
    if let Taken::Existing { id, record } = taken {
        tracing::info!(%id, model = %record.model, "repeated submit: the key's job");
        let workers = state.jobs.directory.workers(&record.model);
        let accepted = Accepted {
            id,
            model: record.model,
            workers,
        };
        return Ok((
            StatusCode::OK,
            [(header::LOCATION, format!("/jobs/{id}"))],
            Json(accepted),
        )
            .into_response());
    }
    state
        .metrics
        .submitted
        .get_or_create(&crate::metrics::ViaLabel { via: "http" })
        .inc();
    tracing::info!(%id, model = %job.model, "job accepted");
    let accepted = Accepted {
        id,
        model: job.model,
        workers: job.workers,
    };
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/jobs/{id}"))],
        Json(accepted),
    )
        .into_response())
}

/// The idempotency key of a submit: the `Idempotency-Key` header, or `"key"` in the body (both may be
/// given only if they agree).
fn idempotency_key(
    headers: &HeaderMap,
    in_body: Option<String>,
) -> Result<Option<String>, Failure> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(in_body);
    };
    let key = value
        .to_str()
        .map_err(|_| Failure::bad_request("Idempotency-Key must be printable ASCII"))?;
    check_key(key).map_err(|reason| Failure::bad_request(format!("Idempotency-Key {reason}")))?;
    if in_body.as_deref().is_some_and(|body| body != key) {
        return Err(Failure::bad_request(
            "Idempotency-Key and the body's \"key\" differ; give one",
        ));
    }
    Ok(Some(key.to_owned()))
}

/// `GET /jobs/<id>`: the job, whole (its output once done).
#[utoipa::path(get, path = "/jobs/{id}", operation_id = "jobs_show", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The request ID.")),
    responses(
        (status = 200, description = "The job.", body = JobView),
        (status = 400, description = "`bad_request`: not a request ID.", body = ApiErrorBody),
        (status = 401, description = "`unauthorized`: no valid token (authentication on).", body = ApiErrorBody,
            headers(("WWW-Authenticate" = String))),
        (status = 404, description = "`not_found`: no such job (or another identity's), or it expired.",
            body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached.", body = ApiErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
    security(("bearer" = [])))]
pub async fn show(
    State(state): State<AppState>,
    request: JobRequest<JsonError>,
) -> Result<Json<JobView>, JsonError> {
    let record = read_job(&state, &request.caller, request.id).await?;
    Ok(Json(JobView::new(request.id, &record)))
}

/// `DELETE /jobs/<id>`: cancels the job; 200 `cancelled` when it was queued, 202 `cancelling` when it
/// was running, 409 when it had already finished.
#[utoipa::path(delete, path = "/jobs/{id}", operation_id = "jobs_cancel", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The request ID.")),
    responses(
        (status = 200, description = "`cancelled`: it was queued, and is final now.",
            body = herald_protocol::api::CancelAnswer),
        (status = 202, description = "`cancelling`: it is running, and its worker stops at its next checkpoint.",
            body = herald_protocol::api::CancelAnswer),
        (status = 400, description = "`bad_request`: not a request ID.", body = ApiErrorBody),
        (status = 401, description = "`unauthorized`: no valid token (authentication on).", body = ApiErrorBody,
            headers(("WWW-Authenticate" = String))),
        (status = 404, description = "`not_found`: no such job (or another identity's), or it expired.",
            body = ApiErrorBody),
        (status = 409, description = "`already_finished`: there is nothing to cancel.", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: RabbitMQ or Redis cannot be reached.", body = ApiErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    request: JobRequest<JsonError>,
) -> Result<Response, JsonError> {
    Ok(cancel_response(&state, request).await?)
}

/// `GET /jobs/<id>/output`: the output as a file (the factorial's as text, others' as JSON).
#[utoipa::path(get, path = "/jobs/{id}/output", operation_id = "jobs_output", tag = "jobs",
    params(("id" = uuid::Uuid, Path, description = "The request ID.")),
    responses(
        (status = 200, description = "The output as a file: the factorial's digits as text, any other \
            model's output as JSON.",
            content((String = "text/plain"), (herald_protocol::Json = "application/json")),
            headers(("Content-Disposition" = String, description = "`attachment` with a file name."))),
        (status = 400, description = "`bad_request`: not a request ID.", body = ApiErrorBody),
        (status = 401, description = "`unauthorized`: no valid token (authentication on).", body = ApiErrorBody,
            headers(("WWW-Authenticate" = String))),
        (status = 404, description = "`not_found`: no such job (or another identity's), or it expired.",
            body = ApiErrorBody),
        (status = 409, description = "`conflict`: the job has no output (not done).", body = ApiErrorBody),
        (status = 503, description = "`unavailable`: Redis cannot be reached.", body = ApiErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
    security(("bearer" = [])))]
pub async fn output(
    State(state): State<AppState>,
    request: JobRequest<JsonError>,
) -> Result<Response, JsonError> {
    Ok(output_response(&state, request).await?)
}

/// The models served.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelList {
    models: Vec<ModelEntry>,
}

/// One model served.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct ModelEntry {
    name: String,
    /// Workers serving it now (distributed mode); absent in embedded mode, where the server runs it.
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<u32>,
}

/// `GET /models`: the models jobs may name, with their workers in distributed mode. With
/// authentication on, only for callers with a token, as the jobs themselves.
#[utoipa::path(get, path = "/models", operation_id = "models", tag = "jobs",
    responses(
        (status = 200, description = "The models served.", body = ModelList),
        (status = 401, description = "`unauthorized`: no valid token (authentication on).", body = ApiErrorBody,
            headers(("WWW-Authenticate" = String))),
    ),
    security(("bearer" = [])))]
pub async fn models(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Result<Json<ModelList>, JsonError> {
    state.caller(auth::bearer_header(&headers), peer.ip())?;
    let models = state
        .jobs
        .directory
        .served()
        .into_iter()
        .map(|(name, workers)| ModelEntry { name, workers })
        .collect();
    Ok(Json(ModelList { models }))
}
