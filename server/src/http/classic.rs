//! The classic polling API, for clients written before Herald pushed results: `GET /factorial?no=N`
//! submits a factorial and answers its request ID as text, `GET /factorial/result?id=ID` says where a
//! job stands. Errors are plain text.

use std::collections::HashMap;
use std::net::SocketAddr;

use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
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

/// `GET /factorial?no=N`: queue a factorial job; the body is its request ID.
///
/// A GET that creates a job is one any page can send (an `<img>` will do): `HEAD` creates nothing
/// (405), and a request from a page that may not open a WebSocket here, or that the browser marks
/// cross-site, is refused (403) before anything else is read.
pub async fn submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<Response, ApiError> {
    if method == Method::HEAD {
        return Ok((
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET")],
            "HEAD creates no job: send GET",
        )
            .into_response());
    }
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
#[derive(Debug, Serialize)]
pub struct ClassicResult {
    /// n for a factorial job; any other job's input as it was given.
    input: JsonText,
    status: &'static str,
    /// The factorial's digits ("" until done); any other job's output as JSON text.
    output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /factorial/result?id=ID`: where a job stands, in the classic polling shape. With
/// authentication, another identity's job is answered exactly like an unknown one.
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
pub async fn cancel(
    State(state): State<AppState>,
    request: JobRequest<ApiError>,
) -> Result<Response, ApiError> {
    cancel_response(&state, request).await
}

/// `GET /factorial/ID/output`: the whole output as a file, so that a large result can be fetched
/// without a JSON message around it.
pub async fn output(
    State(state): State<AppState>,
    request: JobRequest<ApiError>,
) -> Result<Response, ApiError> {
    output_response(&state, request).await
}
