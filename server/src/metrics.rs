//! The server's Prometheus metrics, served at `GET /metrics`: jobs submitted, results pushed (by
//! status), time to result, sockets open, messages pushed, each model's queue depth and workers, and
//! what the connection limits did (connections open and refused, slow headers, pings and unanswered
//! ones) and webhook deliveries by outcome. In embedded mode the in-process workers' metrics are in the same registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The label of a job's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// done, failed or cancelled.
    pub status: &'static str,
}

/// The label of how a job came in.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViaLabel {
    /// `websocket` or `http`.
    pub via: &'static str,
}

/// The label of a model.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabel {
    /// The model's name.
    pub model: String,
}

/// The label of a refused connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabel {
    /// `max_connections` (the server holds --max-connections) or `per_client` (the address holds
    /// --max-sockets-per-client connections that have not upgraded).
    pub limit: &'static str,
}

/// Every outcome [`WebhookLabel`] takes.
pub const WEBHOOK_OUTCOMES: [&str; 5] = ["delivered", "failed", "abandoned", "refused", "expired"];

/// The label of a webhook delivery attempt's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabel {
    /// `delivered` (2xx), `failed` (retry scheduled), `abandoned` (the last attempt failed),
    /// `refused` (a private address; not retried) or `expired` (the job's record was gone).
    pub outcome: &'static str,
}

/// What the server counts.
#[derive(Clone)]
pub struct ServerMetrics {
    /// Jobs taken in (stored and queued), by the API they came through.
    pub submitted: Family<ViaLabel, Counter>,
    /// Result messages pushed to sockets, by status (a job watched by two sockets counts twice; the
    /// workers' `herald_worker_jobs_total` counts each job once).
    pub finished: Family<StatusLabel, Counter>,
    /// From the submit to the result leaving this server, of the results it pushed, in seconds.
    pub time_to_result: Histogram,
    /// Cancels that took effect (queued jobs cancelled, running ones asked to stop).
    pub cancels: Counter,
    /// WebSocket sessions open now.
    pub sockets_open: Gauge,
    /// Messages (frames) pushed to WebSocket clients.
    pub messages_pushed: Counter,
    /// Jobs waiting in each model's queue, read when scraped.
    pub queue_depth: Family<ModelLabel, Gauge>,
    /// Workers announcing each model, read when scraped (distributed mode).
    pub model_workers: Family<ModelLabel, Gauge>,
    /// TCP connections open now (WebSockets, plain HTTP, and handshakes in progress).
    pub connections_open: Gauge,
    /// Connections refused at once, by the limit they hit.
    pub connections_refused: Family<RefusedLabel, Counter>,
    /// Connections closed because a request's headers did not arrive within --header-timeout-secs.
    pub header_timeouts: Counter,
    /// Pings sent to WebSockets that stayed silent for --ping-interval-secs.
    pub pings_sent: Counter,
    /// WebSockets closed because nothing came back within --ping-timeout-secs of a ping.
    pub ping_timeouts: Counter,
    /// Bytes all sockets hold for their clients (queued frames and write buffers).
    pub buffered_bytes: Gauge,
    /// WebSockets closed to keep the sockets within --max-buffered-bytes.
    pub sockets_closed_buffers: Counter,
    /// Webhook delivery attempts made by this instance, by outcome.
    pub webhook_deliveries: Family<WebhookLabel, Counter>,
}

impl ServerMetrics {
    /// Metrics registered in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            submitted: Family::default(),
            finished: Family::default(),
            time_to_result: Histogram::new(exponential_buckets(0.0005, 2.0, 24)),
            cancels: Counter::default(),
            sockets_open: Gauge::default(),
            messages_pushed: Counter::default(),
            queue_depth: Family::default(),
            model_workers: Family::default(),
            connections_open: Gauge::default(),
            connections_refused: Family::default(),
            header_timeouts: Counter::default(),
            pings_sent: Counter::default(),
            ping_timeouts: Counter::default(),
            buffered_bytes: Gauge::default(),
            sockets_closed_buffers: Counter::default(),
            webhook_deliveries: Family::default(),
        };
        registry.register(
            "herald_jobs_submitted",
            "Jobs taken in by this server, by API",
            metrics.submitted.clone(),
        );
        registry.register(
            "herald_results_pushed",
            "Result messages this server pushed to sockets, by status",
            metrics.finished.clone(),
        );
        registry.register(
            "herald_time_to_result_seconds",
            "From a job's submit to its result leaving this server",
            metrics.time_to_result.clone(),
        );
        registry.register(
            "herald_job_cancels",
            "Cancels that took effect through this server",
            metrics.cancels.clone(),
        );
        registry.register(
            "herald_sockets_open",
            "WebSocket sessions open on this server",
            metrics.sockets_open.clone(),
        );
        registry.register(
            "herald_messages_pushed",
            "Messages pushed to WebSocket clients",
            metrics.messages_pushed.clone(),
        );
        registry.register(
            "herald_queue_depth",
            "Jobs waiting in each model's job queue",
            metrics.queue_depth.clone(),
        );
        registry.register(
            "herald_model_workers",
            "Workers announcing each model (distributed mode)",
            metrics.model_workers.clone(),
        );
        registry.register(
            "herald_connections_open",
            "TCP connections open on this server, WebSockets and plain HTTP",
            metrics.connections_open.clone(),
        );
        registry.register(
            "herald_connections_refused",
            "Connections refused at once, by the limit they hit",
            metrics.connections_refused.clone(),
        );
        registry.register(
            "herald_connections_header_timeouts",
            "Connections closed because a request's headers did not arrive in time",
            metrics.header_timeouts.clone(),
        );
        registry.register(
            "herald_pings_sent",
            "Pings sent to silent WebSockets",
            metrics.pings_sent.clone(),
        );
        registry.register(
            "herald_sockets_ping_timeouts",
            "WebSockets closed because they did not answer a ping in time",
            metrics.ping_timeouts.clone(),
        );
        registry.register(
            "herald_buffered_bytes",
            "Bytes all WebSockets hold for their clients: queued frames and write buffers",
            metrics.buffered_bytes.clone(),
        );
        registry.register(
            "herald_sockets_closed_buffers",
            "WebSockets closed to keep the sockets within --max-buffered-bytes",
            metrics.sockets_closed_buffers.clone(),
        );
        registry.register(
            "herald_webhook_deliveries",
            "Webhook delivery attempts by this server, by outcome",
            metrics.webhook_deliveries.clone(),
        );
        metrics
    }
}
