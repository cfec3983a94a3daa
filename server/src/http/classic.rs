//! The classic polling API, for clients written before Herald pushed results: `GET /factorial?no=N`
//! submits a factorial and answers its request ID as text, `GET /factorial/result?id=ID` says where a
//! job stands. Errors are plain text.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use herald_protocol::number::{parse_digits, NumberError};
use herald_protocol::Json as JsonText;
use herald_protocol::{JobId, JobStatus, SubmitInput, FACTORIAL};
use serde::Serialize;

use super::{cancel_response, output_response, read_job, ApiError, Failure, JobRequest};
use crate::auth;
use crate::AppState;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            Self::Failed(failure) => failure.into_text(),
            Self::Auth(e) => e.into_response(),
        }
    }
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn param<'a>(params: &'a Params, name: &str) -> Result<&'a str, Failure> {
    let Ok(Query(params)) = params else {
        return Err(Failure::bad_request("malformed query string"));
    };
    params
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| Failure::bad_request(format!("missing query parameter `{name}`")))
}

/// `HEAD /factorial`: 405. Routed on its own, or axum would answer it with the GET handler, which
/// creates a job: a HEAD must not.
#[utoipa::path(head, path = "/factorial", operation_id = "classic_submit_head", tag = "classic",
    responses(
        (status = 405, description = "HEAD creates no job: send GET. (The answer to a HEAD has no body; its \
            headers are those of the text a GET would get.)", body = String, content_type = "text/plain",
            headers(("Allow" = String, description = "`GET`."))),
        (status = 403, description = "The request addresses the server by a host name it does not answer to \
            (see --allowed-hosts).", body = String, content_type = "text/plain"),
    ))]
pub async fn head() -> Response {
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(header::ALLOW, "GET")],
        "HEAD creates no job: send GET",
    )
        .into_response()
}

/// `GET /factorial?no=N`: queue a factorial job; the body is its request ID.
///
/// A GET that creates a job is one any page can send (an `<img>` will do): `HEAD` creates nothing
/// (405), and a request from a page that may not open a WebSocket here, or that the browser marks
/// cross-site, is refused (403) before anything else is read.
#[utoipa::path(get, path = "/factorial", operation_id = "classic_submit", tag = "classic",
    params(("no" = herald_protocol::api::FactorialN, Query, description = "n: a whole number up to --max-n.")),
    responses(
        (status = 200, description = "Accepted: the request ID.", body = String, content_type = "text/plain"),
        (status = 400, description = "`no` is missing, not a whole number, or above --max-n.", body = String,
            content_type = "text/plain"),
        (status = 401, description = "No valid token (authentication on).", body = String,
            content_type = "text/plain", headers(("WWW-Authenticate" = String))),
        (status = 403, description = "A request from a page that may not open a WebSocket here, or that the \
            browser marks cross-site (or addressed to a host name the server does not answer to).",
            body = String, content_type = "text/plain"),
        (status = 404, description = "The server serves no factorial.", body = String, content_type = "text/plain"),
        (status = 429, description = "Too many submits from this client, the client at a quota (jobs queued, jobs kept, \
            bytes stored), or too much work in flight.",
            body = String, content_type = "text/plain",
            headers(("Retry-After" = u64, description = "Seconds to wait."))),
        (status = 503, description = "RabbitMQ or Redis cannot be reached.", body = String,
            content_type = "text/plain", headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
    security(("bearer" = [])))]
pub async fn submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    if !state.origins.allows_job_request(&headers, &uri) {
        return Ok((
            StatusCode::FORBIDDEN,
            "jobs are not created for requests from other sites",
        )
            .into_response());
    }
    let caller = state.caller(auth::bearer_header(&headers), peer.ip())?;
    let Ok(Query(params)) = params else {
        return Err(Failure::bad_request("malformed query string").into());
    };
    let mut given = params.iter().filter(|(name, _)| name == "no");
    let raw = match (given.next(), given.next()) {
        (Some((_, raw)), None) => raw.trim(),
        (None, _) => return Err(Failure::bad_request("missing query parameter `no`").into()),
        (Some(_), Some(_)) => {
            return Err(Failure::bad_request("give the query parameter `no` once").into())
        }
    };
    let max_n = state.settings.backend.max_n;
    // Digits only, as a WebSocket frame: no sign, fraction or exponent.
    let n = parse_digits(raw, max_n).map_err(|e| match e {
        NumberError::TooLarge => Failure::bad_request(format!("`no` must be at most {max_n}")),
        _ => Failure::bad_request("`no` must be a whole number such as 150000"),
    })?;
    // Refused only where no model is the factorial (an embedded server given other models): 404.
    let job = state
        .jobs
        .prepare(Some(FACTORIAL), SubmitInput::N(n))
        .await?;
    state.limits.submit(&caller.key).map_err(|wait| Failure {
        retry_after: Some(wait),
        ..Failure::new(
            herald_protocol::ErrorCode::Busy,
            format!(
                "too many submits from this client; try again in {} s",
                crate::limits::retry_after_secs(wait)
            ),
        )
    })?;
    let id = JobId::new_v4();
    state
        .jobs
        .submit(
            id,
            &job,
            false,
            caller.identity.as_deref(),
            &caller.key.to_string(),
        )
        .await?;
    state
        .metrics
        .submitted
        .get_or_create(&crate::metrics::ViaLabel { via: "http" })
        .inc();
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        id.to_string(),
    )
        .into_response())
}

/// The classic result document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClassicResult {
    /// n for a factorial job; any other job's input as it was given.
    input: JsonText,
    /// `processing` (queued or running), `done`, `failed` or `cancelled`.
    #[schema(schema_with = classic_states)]
    status: &'static str,
    /// The factorial's digits ("" until done); any other job's output as JSON text.
    output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// The states of the classic result document.
fn classic_states() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::Type::String)
        .enum_values(Some(["processing", "done", "failed", "cancelled"]))
        .build()
}

/// `GET /factorial/result?id=ID`: where a job stands, in the classic polling shape. With
/// authentication, another identity's job is answered exactly like an unknown one.
#[utoipa::path(get, path = "/factorial/result", operation_id = "classic_result", tag = "classic",
    params(("id" = uuid::Uuid, Query, description = "The request ID.")),
    responses(
        (status = 200, description = "Where the job stands.", body = ClassicResult),
        (status = 400, description = "`id` is missing or not a request ID.", body = String,
            content_type = "text/plain"),
        (status = 401, description = "No valid token (authentication on).", body = String,
            content_type = "text/plain", headers(("WWW-Authenticate" = String))),
        (status = 404, description = "No such job (or another identity's), or it expired.", body = String,
            content_type = "text/plain"),
        (status = 503, description = "Redis cannot be reached.", body = String,
            content_type = "text/plain", headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
    security(("bearer" = [])))]
pub async fn result(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<ClassicResult>, ApiError> {
    let caller = state.caller(auth::bearer_header(&headers), peer.ip())?;
    let raw = param(&params, "id")?;
    let id = JobId::try_parse(raw.trim())
        .map_err(|_| Failure::bad_request("malformed `id`: expected a request ID"))?;
    let record = read_job(&state, &caller, id).await?;
    let status = match record.status {
        JobStatus::Queued | JobStatus::Running => "processing",
        JobStatus::Done => "done",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    };
    let (input, output) = match record.factorial_n() {
        Some(n) => (
            herald_protocol::model::json(&n.to_string()).expect("a number is JSON"),
            record
                .output
                .as_ref()
                .map(|o| o.get().trim_matches('"').to_owned())
                .unwrap_or_default(),
        ),
        None => (
            record.input.clone(),
            record
                .output
                .as_ref()
                .map(|o| o.get().to_owned())
                .unwrap_or_default(),
        ),
    };
    Ok(Json(ClassicResult {
        input,
        status,
        output,
        error: record.error,
    }))
}

/// `DELETE /factorial/ID`: cancels a job (as `DELETE /jobs/ID`).
#[utoipa::path(delete, path = "/factorial/{id}", operation_id = "classic_cancel", tag = "classic",
    params(("id" = uuid::Uuid, Path, description = "The request ID.")),
    responses(
        (status = 200, description = "`cancelled`: it was queued, and is final now.",
            body = herald_protocol::api::CancelAnswer),
        (status = 202, description = "`cancelling`: it is running, and its worker stops at its next checkpoint.",
            body = herald_protocol::api::CancelAnswer),
        (status = 400, description = "Not a request ID.", body = String, content_type = "text/plain"),
        (status = 401, description = "No valid token (authentication on).", body = String,
            content_type = "text/plain", headers(("WWW-Authenticate" = String))),
        (status = 404, description = "No such job (or another identity's), or it expired.", body = String,
            content_type = "text/plain"),
        (status = 409, description = "The job already finished: there is nothing to cancel.", body = String,
            content_type = "text/plain"),
        (status = 503, description = "RabbitMQ or Redis cannot be reached.", body = String,
            content_type = "text/plain", headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
    security(("bearer" = [])))]
pub async fn cancel(
    State(state): State<AppState>,
    request: JobRequest<ApiError>,
) -> Result<Response, ApiError> {
    cancel_response(&state, request).await
}

/// `GET /factorial/ID/output`: the whole output as a file, so that a large result can be fetched
/// without a JSON message around it.
#[utoipa::path(get, path = "/factorial/{id}/output", operation_id = "classic_output", tag = "classic",
    params(("id" = uuid::Uuid, Path, description = "The request ID.")),
    responses(
        (status = 200, description = "The output as a file: the factorial's digits as text, any other \
            model's output as JSON.",
            content((String = "text/plain"), (herald_protocol::Json = "application/json")),
            headers(("Content-Disposition" = String, description = "`attachment` with a file name."))),
        (status = 400, description = "Not a request ID.", body = String, content_type = "text/plain"),
        (status = 401, description = "No valid token (authentication on).", body = String,
            content_type = "text/plain", headers(("WWW-Authenticate" = String))),
        (status = 404, description = "No such job (or another identity's), or it expired.", body = String,
            content_type = "text/plain"),
        (status = 409, description = "The job has no output (not done).", body = String,
            content_type = "text/plain"),
        (status = 503, description = "Redis cannot be reached.", body = String,
            content_type = "text/plain", headers(("Retry-After" = u64, description = "Seconds to wait."))),
    ),
    security(("bearer" = [])))]
pub async fn output(
    State(state): State<AppState>,
    request: JobRequest<ApiError>,
) -> Result<Response, ApiError> {
    output_response(&state, request).await
}
