//! The page and the operations endpoints: `/`, `/readyz` and `/metrics` (`/healthz` is a plain "ok").

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Response};

use crate::AppState;

/// The browser page, built into the binary so it is served wherever the server runs.
const INDEX_HTML: &str = include_str!("../../../web/index.html");

/// `GET /`: the page.
pub async fn index() -> Html<&'static str> {
    Html(INDEX_HTML)
}

/// `GET /readyz`: 200 when the job queue is usable (with RabbitMQ: connected, reply queue consuming)
/// and the store answers, else 503. Embedded mode is ready as soon as it runs. A model no worker serves
/// does not make the server unready (its jobs are taken and wait in its queue), but the body says so.
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
