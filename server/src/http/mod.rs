//! HTTP routes: the page, the WebSocket upgrade, the jobs API (`/jobs`), the classic polling API
//! (`/factorial`), the operations endpoints, and their OpenAPI description (`/openapi.json`).
//!
//! `/`, `/healthz`, `/readyz`, `/metrics` and `/openapi.json` are open to all. The others check, in this order: the page's
//! origin (`/ws` only, 403), the caller's token when authentication is on (401, before any upgrade), the
//! input (400), and the caller's limits (`busy`, or 429 over HTTP).

mod classic;
mod jobs;
pub mod openapi;
mod ops;
mod socket;

use std::time::Duration;

use std::net::SocketAddr;

use axum::extract::rejection::PathRejection;
use axum::extract::{ConnectInfo, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::{header, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use herald_engine::backend::Cancel;
use herald_protocol::{ErrorCode, ErrorMessage, JobId, JobRecord, JobStatus, FACTORIAL};
use tracing::warn;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::auth::{AuthError, Caller};
use crate::jobs::Refusal;
use crate::limits;
use crate::AppState;

/// All of the server's routes, and at `/openapi.json` their description.
pub fn router(state: AppState) -> Router {
    let (routes, document) = routes().split_for_parts();
    let document = openapi::complete(
        document,
        state.settings.backend.max_n,
        state.settings.auth_enabled(),
        state.settings.webhook_secret.is_some(),
    );
    routes
        .layer(axum::Extension(openapi::Served::new(&document)))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::host::check,
        ))
        .with_state(state)
        .layer(tower_http::trace::TraceLayer::new_for_http().make_span_with(request_span))
}

/// The routes with their OpenAPI descriptions: each handler's `#[utoipa::path]` names its path and
/// method, which `routes!` routes, so the document and the router cannot drift apart. Every route
/// the server serves is added here.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(ops::index))
        .routes(routes!(socket::upgrade))
        .routes(routes!(jobs::submit))
        .routes(routes!(jobs::show, jobs::cancel))
        .routes(routes!(jobs::output))
        .routes(routes!(jobs::models))
        .routes(routes!(classic::submit, classic::head))
        .routes(routes!(classic::result))
        .routes(routes!(classic::cancel))
        .routes(routes!(classic::output))
        .routes(routes!(ops::healthz))
        .routes(routes!(ops::ready))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi::serve))
}

/// The span of one request: method and path only. The query may hold a token (`/ws?token=`), and
/// headers hold them too, so neither is recorded.
fn request_span<B>(request: &Request<B>) -> tracing::Span {
    tracing::debug_span!("request", method = %request.method(), path = %request.uri().path())
}

/// Why an HTTP request failed: the protocol's error code and a sentence for the client. The classic
/// API answers it as plain text, the jobs API as JSON; internal details stay in the logs.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: ErrorMessage,
    /// How long to wait before trying again, for `busy` and `unavailable`.
    pub retry_after: Option<Duration>,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            error: ErrorMessage::new(code, message),
            retry_after: None,
        }
    }

    /// A `bad_request`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// An unknown ID (or another identity's job: the two read the same, so IDs cannot be probed).
    pub fn not_found() -> Self {
        Self::new(ErrorCode::NotFound, crate::jobs::NOT_FOUND)
    }

    /// RabbitMQ or Redis cannot be reached.
    pub fn unavailable() -> Self {
        Self::from(crate::jobs::unavailable())
    }

    /// The HTTP status of this failure.
    pub fn status(&self) -> StatusCode {
        match self.error.code {
            ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::NotFound | ErrorCode::UnknownModel => StatusCode::NOT_FOUND,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::Busy => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::AlreadyFinished | ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        }
    }

    /// Adds the `Retry-After` header where it applies.
    fn finish(&self, mut response: Response) -> Response {
        let retry_after = match (self.retry_after, self.error.code) {
            (Some(wait), _) => Some(limits::retry_after_secs(wait)),
            (None, ErrorCode::Busy | ErrorCode::Unavailable) => Some(1),
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
        }
        response
    }

    /// This failure as plain text.
    pub fn into_text(self) -> Response {
        let response = (self.status(), self.error.message.clone()).into_response();
        self.finish(response)
    }

    /// This failure as the jobs API's JSON body.
    pub fn into_json(self) -> Response {
        let body = herald_protocol::api::ApiErrorBody {
            code: self.error.code,
            message: self.error.message.clone(),
        };
        let response = (self.status(), axum::Json(body)).into_response();
        self.finish(response)
    }
}

impl From<ErrorMessage> for Failure {
    fn from(error: ErrorMessage) -> Self {
        let retry_after = error.retry_after_ms.map(Duration::from_millis);
        Self { error, retry_after }
    }
}

impl From<Refusal> for Failure {
    fn from(refusal: Refusal) -> Self {
        Self::from(refusal.to_error())
    }
}

/// An HTTP error: a failure, or a request that did not prove an identity (authentication on).
#[derive(Debug)]
pub enum ApiError {
    /// A failure of the request itself.
    Failed(Failure),
    /// 401, with `WWW-Authenticate`.
    Auth(AuthError),
}

impl<T: Into<Failure>> From<T> for ApiError {
    fn from(failure: T) -> Self {
        Self::Failed(failure.into())
    }
}

impl From<AuthError> for ApiError {
    fn from(error: AuthError) -> Self {
        Self::Auth(error)
    }
}

/// What a request on a job's route (`/jobs/{id}`, `/factorial/{id}`, …) comes with: its caller, checked
/// against the token, and the job's ID from the path. `E` is how the route answers a refusal: plain
/// text on the classic API, JSON on the jobs API.
pub struct JobRequest<E> {
    /// Who asks.
    pub caller: Caller,
    /// The job.
    pub id: JobId,
    answers: std::marker::PhantomData<E>,
}

impl<E> FromRequestParts<AppState> for JobRequest<E>
where
    E: From<ApiError> + IntoResponse,
{
    type Rejection = E;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, E> {
        let peer = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip())
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
        let caller = state
            .caller(crate::auth::bearer_header(&parts.headers), peer)
            .map_err(|e| E::from(ApiError::from(e)))?;
        let path = Path::<String>::from_request_parts(parts, state).await;
        let id = path_id(path).map_err(|e| E::from(ApiError::from(e)))?;
        Ok(Self {
            caller,
            id,
            answers: std::marker::PhantomData,
        })
    }
}

/// Cancels the job of `request` (see [`cancel_job`]) and answers as both APIs do.
async fn cancel_response<E>(
    state: &AppState,
    request: JobRequest<E>,
) -> Result<Response, ApiError> {
    let (code, answer) = cancel_job(state, &request.caller, request.id).await?;
    Ok((code, axum::Json(answer)).into_response())
}

/// The output of the job of `request` as a file (see [`output_file`]).
async fn output_response<E>(
    state: &AppState,
    request: JobRequest<E>,
) -> Result<Response, ApiError> {
    let record = read_job(state, &request.caller, request.id).await?;
    Ok(output_file(request.id, record)?)
}

/// The job ID in a path.
fn path_id(id: Result<Path<String>, PathRejection>) -> Result<JobId, Failure> {
    let Ok(Path(raw)) = id else {
        return Err(Failure::bad_request("malformed path"));
    };
    JobId::try_parse(raw.trim())
        .map_err(|_| Failure::bad_request("malformed job ID in the path: expected a request ID"))
}

/// Reads job `id` for `caller`: with authentication, another identity's job reads as unknown.
async fn read_job(state: &AppState, caller: &Caller, id: JobId) -> Result<JobRecord, Failure> {
    match state.jobs.store.get(&id).await {
        Ok(Some(record)) if caller.may_read(&record) => Ok(record),
        Ok(_) => Err(Failure::not_found()),
        Err(e) => {
            warn!(%id, error = %e, "could not read a job");
            Err(Failure::unavailable())
        }
    }
}

/// Cancels job `id` for `caller`: 200 `cancelled` when it was queued, 202 `cancelling` when it was
/// running; a finished job is `already_finished` (409), an unknown one `not_found`.
async fn cancel_job(
    state: &AppState,
    caller: &Caller,
    id: JobId,
) -> Result<(StatusCode, herald_protocol::api::CancelAnswer), Failure> {
    let outcome = state
        .jobs
        .cancel(id, false, caller.identity.as_deref())
        .await?;
    let (code, status) = match outcome {
        Cancel::Missing => return Err(Failure::not_found()),
        Cancel::Final(status) => {
            return Err(Failure::new(
                ErrorCode::AlreadyFinished,
                format!("the job already finished ({status}); there is nothing to cancel"),
            ))
        }
        Cancel::Cancelled { .. } => (StatusCode::OK, "cancelled"),
        Cancel::Requested => (StatusCode::ACCEPTED, "cancelling"),
    };
    state.metrics.cancels.inc();
    Ok((
        code,
        herald_protocol::api::CancelAnswer {
            id,
            status: status.into(),
        },
    ))
}

/// A done job's output as a file: the factorial's digits as text, any other model's output as JSON.
/// A job without an output (pending, failed or cancelled) is a conflict.
fn output_file(id: JobId, record: JobRecord) -> Result<Response, Failure> {
    let output = match (record.status, &record.output) {
        (JobStatus::Done, Some(output)) => output.clone(),
        (JobStatus::Done, None) => {
            warn!(%id, "a done record without its output");
            return Err(Failure::unavailable());
        }
        (status, _) => {
            return Err(Failure::new(
                ErrorCode::Conflict,
                format!("the job has no output: it is {status}"),
            ))
        }
    };
    let (content_type, name, body) = match record.factorial_n() {
        Some(n) if record.model == FACTORIAL => (
            "text/plain; charset=utf-8",
            format!("factorial-{n}.txt"),
            // The stored output is the JSON string of the digits: the digits are inside its quotes.
            output.get().trim_matches('"').to_owned(),
        ),
        _ => (
            "application/json",
            format!("{}-{id}.json", record.model),
            output.get().to_owned(),
        ),
    };
    Ok((
        [
            (header::CONTENT_TYPE, content_type.to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}
