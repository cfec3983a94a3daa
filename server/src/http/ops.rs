//! The page and the operations endpoints: `/`, `/healthz`, `/readyz` and `/metrics`.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use crate::AppState;

/// The browser page, built into the binary so it is served wherever the server runs.
const INDEX_HTML: &str = include_str!("../../../web/index.html");

/// `GET /`: the page.
#[utoipa::path(get, path = "/", tag = "ops",
    responses((status = 200, description = "The browser page.", body = String, content_type = "text/html")))]
pub async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `GET /healthz`: `ok` while the process runs.
#[utoipa::path(get, path = "/healthz", tag = "ops",
    responses((status = 200, description = "`ok`: the process runs.", body = String, content_type = "text/plain")))]
pub async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz`: 200 when the job queue is usable (with RabbitMQ: connected, reply queue consuming)
/// and the store answers, else 503. Embedded mode is ready as soon as it runs. A model no worker serves
/// does not make the server unready (its jobs are taken and wait in its queue), but the body says so.
#[utoipa::path(get, path = "/readyz", tag = "ops",
    responses(
        (status = 200, description = "`ready`, naming any model no worker serves now.", body = String,
            content_type = "text/plain"),
        (status = 503, description = "The job queue or the job store cannot be used now.", body = String,
            content_type = "text/plain"),
    ))]
pub async fn ready(State(state): State<AppState>) -> (StatusCode, String) {
    if !state.jobs.queue.is_ready() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "job queue unavailable".into(),
        );
    }
    if state.jobs.store.ping().await.is_err() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "job store unavailable".into(),
        );
    }
    let idle = state.jobs.directory.idle();
    if idle.is_empty() {
        return (StatusCode::OK, "ready".into());
    }
    (
        StatusCode::OK,
        format!(
            "ready; no worker serves: {} (their jobs wait in their queues until one starts)",
            idle.join(", ")
        ),
    )
}

/// `GET /metrics`: the OpenMetrics text format. Each served model's queue depth is read now (a
/// passive declare with RabbitMQ); one that cannot be read is left out.
#[utoipa::path(get, path = "/metrics", tag = "ops",
    responses((status = 200, description = "The server's metrics.", body = String,
        content_type = "application/openmetrics-text")))]
pub async fn metrics(State(state): State<AppState>) -> Response {
    // Read afresh on every scrape: a model no longer served, or whose depth cannot be read now,
    // is left out rather than shown with a stale value.
    state.metrics.model_workers.clear();
    state.metrics.queue_depth.clear();
    for (model, workers) in state.jobs.directory.served() {
        if let Some(depth) = state.jobs.queue.depth(&model).await {
            state
                .metrics
                .queue_depth
                .get_or_create(&crate::metrics::ModelLabel {
                    model: model.clone(),
                })
                .set(i64::try_from(depth).unwrap_or(i64::MAX));
        }
        if let Some(workers) = workers {
            state
                .metrics
                .model_workers
                .get_or_create(&crate::metrics::ModelLabel { model })
                .set(i64::from(workers));
        }
    }
    let text = herald_engine::metrics::render(&state.registry);
    (
        [(header::CONTENT_TYPE, herald_engine::metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}
