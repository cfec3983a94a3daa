//! Command-line settings of the server.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use herald_worker::{BackendArgs, SettingsError};

/// Settings of `herald-server`.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "herald-server",
    version,
    about = "Herald's WebSocket and HTTP job gateway."
)]
pub struct Settings {
    /// RabbitMQ, Redis and the names in them (shared with the worker).
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "HERALD_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// How long a job's record (and result) is kept in Redis after the submit, in seconds.
    #[arg(long, env = "HERALD_JOB_TTL_SECS", default_value_t = 86_400)]
    pub job_ttl_secs: u64,
    /// Jobs one WebSocket connection may have in flight; more are answered `busy`.
    #[arg(long, env = "HERALD_MAX_IN_FLIGHT", default_value_t = 100)]
    pub max_in_flight: usize,
    /// Bytes queued for one socket that does not read; past this it is closed (its jobs stay resumable).
    #[arg(long, env = "HERALD_SOCKET_BUFFER_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub socket_buffer_bytes: usize,
}

impl Settings {
    /// Checks every value before anything connects.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.backend.validate()?;
        if self.job_ttl_secs == 0 || self.job_ttl_secs > 365 * 86_400 {
            return Err(SettingsError::new(
                "job-ttl-secs",
                "must be from 1 second to 365 days",
            ));
        }
        if self.max_in_flight == 0 {
            return Err(SettingsError::new("max-in-flight", "must be at least 1"));
        }
        if self.socket_buffer_bytes < 64 * 1024 {
            return Err(SettingsError::new(
                "socket-buffer-bytes",
                "must be at least 65536",
            ));
        }
        Ok(())
    }

    /// How long records live.
    pub fn job_ttl(&self) -> Duration {
        Duration::from_secs(self.job_ttl_secs)
    }
}
