//! HTTP routes: the page, the WebSocket upgrade, the classic polling API and the health check.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State, WebSocketUpgrade};
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use herald_protocol::{JobId, JobStatus, MAX_FRAME_BYTES};
use serde::Serialize;
use tracing::warn;

use crate::jobs::Refusal;
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
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(ready))
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http())
}

/// `GET /readyz`: 200 when RabbitMQ is connected (reply queue consuming) and Redis answers, else 503.
async fn ready(State(state): State<AppState>) -> (StatusCode, &'static str) {
    if !state.jobs.broker.is_ready() {
        return (StatusCode::SERVICE_UNAVAILABLE, "rabbitmq unavailable");
    }
    if state.jobs.store.ping().await.is_err() {
        return (StatusCode::SERVICE_UNAVAILABLE, "redis unavailable");
    }
    (StatusCode::OK, "ready")
}

async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

async fn upgrade(ws: WebSocketUpgrade, State(state): State<AppState>) -> Response {
    // tungstenite's default 128 KiB read buffer is zero-filled on the first read: at 8 KiB an idle
    // socket costs a fraction of that, and frames above it are still read, in more steps.
    ws.read_buffer_size(8 * 1024)
        .max_message_size(MAX_FRAME_BYTES)
        .max_frame_size(MAX_FRAME_BYTES)
        .on_upgrade(move |socket| crate::session::run(socket, state))
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
    /// RabbitMQ or Redis cannot be reached.
    #[error("the job service is temporarily unavailable; try again shortly")]
    Unavailable,
    /// The job queue is full.
    #[error("the job queue is full; try again shortly")]
    Busy,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Busy => StatusCode::TOO_MANY_REQUESTS,
        };
        let mut response = (status, self.to_string()).into_response();
        if matches!(self, Self::Busy | Self::Unavailable) {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
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
async fn submit(State(state): State<AppState>, params: Params) -> Result<Response, ApiError> {
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
    let id = JobId::new_v4();
    state
        .jobs
        .submit(id, n, false)
        .await
        .map_err(|refusal| match refusal {
            Refusal::Busy => ApiError::Busy,
            Refusal::Unavailable => ApiError::Unavailable,
        })?;
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

/// `GET /factorial/result?id=ID`: where a job stands, in the classic polling shape.
async fn result(
    State(state): State<AppState>,
    params: Params,
) -> Result<Json<ClassicResult>, ApiError> {
    let raw = param(&params, "id")?;
    let id = JobId::try_parse(raw.trim())
        .map_err(|_| ApiError::BadRequest("malformed `id`: expected a request ID".into()))?;
    let record = match state.jobs.store.get(&id).await {
        Ok(Some(record)) => record,
        Ok(None) => return Err(ApiError::NotFound),
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
