//! The job processing's Prometheus metrics (jobs by outcome, compute time, attempts), counted by
//! `herald-worker` and by the server's embedded workers alike, and their text rendering.

use herald_protocol::JobStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The content type of the OpenMetrics text format, which Prometheus scrapes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The label of a job's outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StatusLabel {
    /// done, failed or cancelled.
    pub status: &'static str,
}

/// What workers count.
#[derive(Clone)]
pub struct WorkerMetrics {
    /// Jobs that reached a final state here, by status.
    pub jobs: Family<StatusLabel, Counter>,
    /// Time from start to the decimal output of jobs finished here, in seconds.
    pub compute_seconds: Histogram,
    /// The attempt number of every job started here (1 for a first start).
    pub attempts: Histogram,
}

impl WorkerMetrics {
    /// Metrics registered in `registry` (the worker's own, or in embedded mode the server's).
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            jobs: Family::default(),
            compute_seconds: Histogram::new(exponential_buckets(0.001, 4.0, 10)),
            attempts: Histogram::new([1.0, 2.0, 3.0, 4.0, 5.0, 10.0]),
        };
        registry.register(
            "herald_worker_jobs",
            "Jobs that reached a final state on this worker, by status",
            metrics.jobs.clone(),
        );
        registry.register(
            "herald_worker_compute_seconds",
            "Time from a job's start to its decimal output",
            metrics.compute_seconds.clone(),
        );
        registry.register(
            "herald_worker_job_attempts",
            "Attempt number of each job started (1 for a first start)",
            metrics.attempts.clone(),
        );
        metrics
    }

    /// Counts a job that reached `status`, with its compute time if it was computed.
    pub fn finished(&self, status: JobStatus, compute_ms: Option<u64>) {
        self.jobs
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .inc();
        if let Some(ms) = compute_ms {
            self.compute_seconds.observe(ms as f64 / 1000.0);
        }
    }
}

/// Renders `registry` in the OpenMetrics text format.
pub fn render(registry: &Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)
        .expect("writing to a String never fails");
    text
}
