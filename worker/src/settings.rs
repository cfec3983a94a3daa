//! Command-line settings of the worker.

use std::net::SocketAddr;
use std::num::NonZeroUsize;

use clap::Parser;
use herald_engine::settings::{parse_listen_addr, BackendArgs, LogArgs, ModelArgs, SettingsError};

/// Settings of `herald-worker`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herald-worker",
    version,
    about = "Computes Herald's jobs from RabbitMQ."
)]
pub struct Settings {
    /// RabbitMQ, Redis and the names in them.
    #[command(flatten)]
    pub backend: BackendArgs,
    /// The models this worker serves.
    #[command(flatten)]
    pub models: ModelArgs,
    /// Jobs computed at once; default: the number of cores.
    #[arg(long, env = "HERALD_CONCURRENCY")]
    pub concurrency: Option<NonZeroUsize>,
    /// Jobs taken from the queue ahead of the computation (the AMQP prefetch count). Small jobs spend
    /// most of their time in round trips to Redis and RabbitMQ, so more of them must be in hand than
    /// there are cores; default: 32 per concurrent computation.
    #[arg(long, env = "HERALD_PREFETCH")]
    pub prefetch: Option<NonZeroUsize>,
    /// Starts of one job before it is failed and dead-lettered (a job that keeps killing its worker).
    #[arg(long, env = "HERALD_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Longest computation of one job, in seconds; past it the job fails with "time limit exceeded".
    #[arg(long, env = "HERALD_JOB_TIME_LIMIT_SECS", default_value_t = 300)]
    pub job_time_limit_secs: u64,
    /// On SIGTERM, how long running jobs may go on before they are stopped and returned to the queue.
    #[arg(long, env = "HERALD_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Address of the worker's Prometheus endpoint (`GET /metrics`, `GET /healthz`), such as
    /// 0.0.0.0:9464, or a port alone for 127.0.0.1; off when not given (workers on one machine would
    /// fight over a fixed port).
    #[arg(long, env = "HERALD_METRICS_LISTEN", value_parser = parse_listen_addr)]
    pub metrics_listen: Option<SocketAddr>,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

impl Settings {
    /// Checks every value; see [`BackendArgs::validate`].
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.backend.validate()?;
        self.models.validate()?;
        if self.concurrency() > 1024 {
            return Err(SettingsError::new("concurrency", "must be at most 1024"));
        }
        if self.max_attempts == 0 {
            return Err(SettingsError::new("max-attempts", "must be at least 1"));
        }
        // RabbitMQ closes a channel whose delivery stays unacknowledged past its consumer timeout
        // (30 minutes by default); a job allowed to run longer would be redelivered while it runs.
        if self.job_time_limit_secs == 0 || self.job_time_limit_secs > 25 * 60 {
            return Err(SettingsError::new(
                "job-time-limit-secs",
                "must be from 1 to 1500 seconds (below RabbitMQ's default consumer timeout of 30 minutes)",
            ));
        }
        Ok(())
    }

    /// Longest computation of one job.
    pub fn job_time_limit(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.job_time_limit_secs)
    }

    /// The AMQP prefetch count.
    pub fn prefetch(&self) -> u16 {
        let prefetch = self
            .prefetch
            .map_or(self.concurrency() * 32, NonZeroUsize::get);
        u16::try_from(prefetch).unwrap_or(u16::MAX)
    }

    /// Jobs computed at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_keeps_passwords_out() {
        let settings = Settings::parse_from([
            "herald-worker",
            "--amqp-url",
            "amqp://herald:s3cret-amqp@broker:5672/%2f",
            "--redis-url",
            "redis://:s3cret-redis@cache:6379",
        ]);
        let shown = format!("{settings:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("amqp://***@broker:5672/%2f"), "{shown}");
    }
}
