//! HTTP routes: the page, the WebSocket upgrade, the classic polling API, cancel and output download,
//! and the operations endpoints.
//!
//! `/`, `/healthz`, `/readyz` and `/metrics` are open to all. The others check, in this order: the page's origin
//! (`/ws` only, 403), the caller's token when authentication is on (401, before any upgrade), the input
//! (400), and the caller's limits (`busy`, or 429 over HTTP).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::rejection::PathRejection;
use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, Path, Query, State, WebSocketUpgrade};
use axum::http::{header, HeaderMap, Request, StatusCode, Uri};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{delete, get};
use axum::{Json, Router};
use herald_engine::backend::Cancel;
use herald_protocol::{ErrorCode, ErrorMessage, JobId, JobStatus, MAX_FRAME_BYTES};
use serde::Serialize;
use tracing::warn;

use crate::auth::{self, AuthError};
use crate::jobs::Refusal;
use crate::limits::{self, SOCKET_RETRY_AFTER};
use crate::AppState;

/// The browser page, built into the binary so it is served wherever the server runs.
const INDEX_HTML: &str = include_str!("../../web/index.html");

/// All of the server's routes.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/ws", get(upgrade))
        .route("/factorial", get(submit))
        .route("/factorial/result", get(result))
        .route("/factorial/{id}", delete(cancel))
        .route("/factorial/{id}/output", get(output))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
}

/// The span of one request: method and path only. The query may hold a token (`/ws?token=`), and
/// headers hold them too, so neither is recorded.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
}

/// `GET /readyz`: 200 when the job queue is usable (with RabbitMQ: connected, reply queue consuming)
/// and the store answers, else 503. Embedded mode is ready as soon as it runs.
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if !state.jobs.queue.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "job queue unavailable");
    }
    if state.jobs.store.ping().await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "job store unavailable");
    }
    (StatusCode::OK, "ready")
}

/// `GET /metrics`: the Prometheus text format. The queue depth is read now (a passive declare with
/// RabbitMQ); if it cannot be, the last value stays.
async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(depth) = state.jobs.queue.depth().await {
        state
            .metrics
            .queue_depth
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
    let text = herald_engine::metrics::render(&state.registry);
    (
        [(header::CONTENT_TYPE, herald_engine::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `GET /ws`: checks the origin (403) and the token (401) before upgrading, then runs a session; a
/// client already holding as many sockets as it may gets `busy` and a Close frame instead.
async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !state.origins.allows(&headers, &uri) {
        return (
            StatusCode::FORBIDDEN,
            "this page's origin may not open a socket here",
        )
            .into_response();
    }
    // Browsers cannot set headers on a WebSocket: the token may also come as a subprotocol or in the query.
    let query = auth::query_token(&uri);
    let token = auth::bearer_header(&headers)
        .or_else(|| auth::bearer_protocol(&headers))
        .or(query.as_deref());
    let caller = match state.caller(token, peer.ip()) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // tungstenite's default 128 KiB read buffer is zero-filled on the first read, and every idle
    // socket keeps it. Requests are a few dozen bytes: 1 KiB still takes a burst of them in one read,
    // and frames above it (up to the 64 KiB limit) are read in more steps.
    let ws = ws
        .protocols([auth::WS_PROTOCOL])
        .read_buffer_size(1024)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES);
    match state.limits.open_socket(caller.key.clone()) {
        Some(slot) => ws.on_upgrade(move |socket| crate::session::run(socket, state, caller, slot)),
        None => {
            // Told over the socket rather than with a 429: a browser never shows a script the status
            // of a refused upgrade.
            let busy = ErrorMessage {
                retry_after_ms: Some(limits::retry_after_ms(SOCKET_RETRY_AFTER)),
                ..ErrorMessage::new(
                    ErrorCode::Busy,
                    "too many sockets open for this client; close one or try again later",
                )
            };
            ws.on_upgrade(move |socket| crate::session::refuse(socket, busy))
        }
    }
}

/// An HTTP API error. The body is a plain sentence for the client; internal details stay in the logs.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The query is missing something or holds a bad value.
    #[error("{0}")]
    BadRequest(String),
    /// No such job.
    #[error("no such job: the ID is unknown or its record expired")]
    NotFound,
    /// The job is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// RabbitMQ or Redis cannot be reached.
    #[error("the job service is temporarily unavailable; try again shortly")]
    Unavailable,
    /// The job queue is full.
    #[error("the job queue is full; try again shortly")]
    Busy,
    /// The caller has used up its submits for now.
    #[error("too many submits from this client; try again in {} s", limits::retry_after_secs(*.0))]
    RateLimited(Duration),
    /// Authentication is on and the request did not prove an identity.
    #[error(transparent)]
    Auth(#[from] AuthError),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Busy | Self::RateLimited(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Auth(e) => return e.into_response(),
        };
        let retry_after = match self {
            Self::Busy | Self::Unavailable => Some(1),
            Self::RateLimited(wait) => Some(limits::retry_after_secs(wait)),
            _ => None,
        };
        let mut response = (status, self.to_string()).into_response();
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }
}

type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

fn param<'a>(params: &'a Params, name: &str) -> Result<&'a str, ApiError> {
    let Ok(Query(params)) = params else {
        return Err(ApiError::BadRequest("malformed query string".into()));
    };
    params
        .get(name)
        .map(String::as_str)
        .ok_or_else(|| ApiError::BadRequest(format!("missing query parameter `{name}`")))
}

/// `GET /factorial?no=N`: queue a job; the body is its request ID.
async fn submit(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Params,
) -> Result<Response, ApiError> {
    let caller = state.caller(auth::bearer_header(&headers), peer.ip())?;
    let raw = param(&params, "no")?.trim();
    let max_n = state.settings.backend.max_n;
    let n: u64 = match raw.parse() {
        Ok(n) if n <= max_n => n,
        Ok(_) => {
            return Err(ApiError::BadRequest(format!(
                "`no` must be at most {max_n}"
            )))
        }
        Err(_) if !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit()) => {
            return Err(ApiError::BadRequest(format!(
                "`no` must be at most {max_n}"
            )))
        }
        Err(_) => {
            return Err(ApiError::BadRequest(
                "`no` must be a whole number such as 150000".into(),
            ))
        }
    };
    state
        .limits
        .submit(&caller.key)
        .map_err(ApiError::RateLimited)?;
    let id = JobId::new_v4();
    state
        .jobs
        .submit(id, n, false, caller.identity.as_deref())
        .await
        .map_err(refused)?;
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
struct ClassicResult {
    input: u64,
    status: &'static str,
    output: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// `GET /factorial/result?id=ID`: where a job stands, in the classic polling shape. With
/// authentication, another identity's job is answered exactly like an unknown one.
async fn result(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    params: Params,
) -> Result<Json<ClassicResult>, ApiError> {
    let caller = state.caller(auth::bearer_header(&headers), peer.ip())?;
    let raw = param(&params, "id")?;
    let id = JobId::try_parse(raw.trim())
        .map_err(|_| ApiError::BadRequest("malformed `id`: expected a request ID".into()))?;
    let record = match state.jobs.store.get(&id).await {
        Ok(Some(record)) if caller.may_read(&record) => record,
        Ok(_) => return Err(ApiError::NotFound),
        Err(e) => {
            warn!(%id, error = %e, "could not read a job for polling");
            return Err(ApiError::Unavailable);
        }
    };
    let status = match record.status {
        JobStatus::Queued | JobStatus::Running => "processing",
        JobStatus::Done => "done",
        JobStatus::Failed => "failed",
        JobStatus::Cancelled => "cancelled",
    };
    Ok(Json(ClassicResult {
        input: record.n,
        status,
        output: record.output.as_deref().unwrap_or_default().to_owned(),
        error: record.error,
    }))
}

fn refused(refusal: Refusal) -> ApiError {
    match refusal {
        Refusal::Busy => ApiError::Busy,
        Refusal::Unavailable => ApiError::Unavailable,
    }
}

fn path_id(id: Result<Path<String>, PathRejection>) -> Result<JobId, ApiError> {
    let Ok(Path(raw)) = id else {
        return Err(ApiError::BadRequest("malformed path".into()));
    };
    JobId::try_parse(raw.trim()).map_err(|_| {
        ApiError::BadRequest("malformed job ID in the path: expected a request ID".into())
    })
}

/// The answer to a cancel over HTTP.
#[derive(Debug, Serialize)]
struct Cancelled {
    id: JobId,
    /// `cancelled` (it was queued, and is final now) or `cancelling` (it was running, and its worker
    /// stops at its next checkpoint).
    status: &'static str,
}

/// `DELETE /factorial/ID`: cancels a job. 200 `cancelled` when it was queued, 202 `cancelling` when
/// it was running, 409 when it had already finished, 404 when unknown (or another identity's).
async fn cancel(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = state.caller(auth::bearer_header(&headers), peer.ip())?;
    let id = path_id(id)?;
    let outcome = state
        .jobs
        .cancel(id, false, caller.identity.as_deref())
        .await
        .map_err(refused)?;
    let (code, status) = match outcome {
        Cancel::Missing => return Err(ApiError::NotFound),
        Cancel::Final(status) => {
            return Err(ApiError::Conflict(format!(
                "the job already finished ({status}); there is nothing to cancel"
            )))
        }
        Cancel::Cancelled { .. } => (StatusCode::OK, "cancelled"),
        Cancel::Requested => (StatusCode::ACCEPTED, "cancelling"),
    };
    state.metrics.cancels.inc();
    Ok((code, Json(Cancelled { id, status })).into_response())
}

/// `GET /factorial/ID/output`: the whole decimal output as a text file, so that a large result can be
/// fetched without a JSON message around it. 409 while the job has no output (pending, failed or
/// cancelled).
async fn output(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let caller = state.caller(auth::bearer_header(&headers), peer.ip())?;
    let id = path_id(id)?;
    let record = match state.jobs.store.get(&id).await {
        Ok(Some(record)) if caller.may_read(&record) => record,
        Ok(_) => return Err(ApiError::NotFound),
        Err(e) => {
            warn!(%id, error = %e, "could not read a job's output");
            return Err(ApiError::Unavailable);
        }
    };
    let output = match (record.status, record.output) {
        (JobStatus::Done, Some(output)) => output,
        (JobStatus::Done, None) => {
            warn!(%id, "a done record without its output");
            return Err(ApiError::Unavailable);
        }
        (status, _) => {
            return Err(ApiError::Conflict(format!(
                "the job has no output: it is {status}"
            )))
        }
    };
    let disposition = format!("attachment; filename=\"factorial-{}.txt\"", record.n);
    Ok((
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_owned()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        output.to_string(),
    )
        .into_response())
}
