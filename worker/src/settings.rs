//! Command-line settings of the worker, and the backend settings the server shares with it.

use std::num::NonZeroUsize;

use clap::{Args, Parser};

/// Where RabbitMQ and Redis are, and the names Herald uses in them. Server and worker must agree on all of
/// these, so both binaries take the same flags.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// RabbitMQ URL (amqp://user:password@host:port/vhost).
    #[arg(
        long,
        env = "HERALD_AMQP_URL",
        hide_env_values = true,
        default_value = "amqp://127.0.0.1:5672/%2f"
    )]
    pub amqp_url: String,
    /// Redis URL (redis://[:password@]host:port[/db]).
    #[arg(
        long,
        env = "HERALD_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// Durable job queue that workers consume.
    #[arg(long, env = "HERALD_QUEUE", default_value = "factorial_process")]
    pub queue: String,
    /// Exchange that workers publish completions to; each server instance binds its own reply queue.
    #[arg(long, env = "HERALD_REPLY_EXCHANGE", default_value = "herald.replies")]
    pub reply_exchange: String,
    /// Prefix of every Redis key Herald writes.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald:")]
    pub redis_prefix: String,
    /// Largest n accepted (the server refuses above it; a worker fails such a job).
    #[arg(long, env = "HERALD_MAX_N", default_value_t = 1_000_000)]
    pub max_n: u64,
}

/// A setting that cannot work; the binaries refuse to start with it.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting --{flag}: {reason}")]
pub struct SettingsError {
    /// The flag at fault, without dashes.
    pub flag: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl SettingsError {
    /// An error about `flag`.
    pub fn new(flag: &'static str, reason: impl Into<String>) -> Self {
        Self {
            flag,
            reason: reason.into(),
        }
    }
}

impl BackendArgs {
    /// Checks every value before anything connects, so a typo fails at start with a clear message.
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.amqp_url
            .parse::<lapin::uri::AMQPUri>()
            .map_err(|_| SettingsError::new("amqp-url", "not a valid amqp:// URL"))?;
        redis::IntoConnectionInfo::into_connection_info(self.redis_url.as_str())
            .map_err(|_| SettingsError::new("redis-url", "not a valid redis:// URL"))?;
        for (flag, name) in [
            ("queue", &self.queue),
            ("reply-exchange", &self.reply_exchange),
        ] {
            // AMQP short strings; the `amq.` prefix is reserved by the broker.
            if name.is_empty() || name.len() > 200 || name.starts_with("amq.") {
                return Err(SettingsError::new(
                    flag,
                    "must be 1 to 200 bytes and not start with \"amq.\"",
                ));
            }
        }
        if self.redis_prefix.len() > 200 {
            return Err(SettingsError::new(
                "redis-prefix",
                "must be at most 200 bytes",
            ));
        }
        Ok(())
    }

    /// The Redis key layout these settings choose.
    pub fn keys(&self) -> herald_protocol::Keys {
        herald_protocol::Keys::new(self.redis_prefix.clone())
    }
}

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
    /// Jobs computed at once (and the prefetch count); default: the number of cores.
    #[arg(long, env = "HERALD_CONCURRENCY")]
    pub concurrency: Option<NonZeroUsize>,
}

impl Settings {
    /// Checks every value; see [`BackendArgs::validate`].
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.backend.validate()?;
        if self.concurrency() > 1024 {
            return Err(SettingsError::new("concurrency", "must be at most 1024"));
        }
        Ok(())
    }

    /// Jobs computed at once.
    pub fn concurrency(&self) -> usize {
        self.concurrency
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }
}
