//! Command-line settings of the server.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use std::num::NonZeroUsize;

use clap::Parser;
use herald_engine::settings::{parse_listen_addr, LogArgs, ModelArgs};
use herald_engine::{BackendArgs, Secret, SettingsError};

use crate::auth;
use crate::host::AllowedHost;
use crate::origin::Origin;

/// Settings of `herald-server`.
#[derive(Clone, Parser)]
#[command(
    name = "herald-server",
    version,
    about = "Herald's WebSocket and HTTP job gateway."
)]
pub struct Settings {
    /// RabbitMQ, Redis and the names in them (shared with the worker).
    #[command(flatten)]
    pub backend: BackendArgs,
    /// Address to listen on: IP:PORT, or a port alone for 127.0.0.1 (port 0 picks a free port).
    #[arg(
        long,
        env = "HERALD_LISTEN",
        default_value = "127.0.0.1:8080",
        value_parser = parse_listen_addr
    )]
    pub listen: SocketAddr,
    /// How long a job's record (and result) is kept after the submit (in Redis, or in the data
    /// directory in embedded mode), in seconds.
    #[arg(long, env = "HERALD_JOB_TTL_SECS", default_value_t = 86_400)]
    pub job_ttl_secs: u64,
    /// Jobs one WebSocket connection may have in flight; more are answered `busy`.
    #[arg(long, env = "HERALD_MAX_IN_FLIGHT", default_value_t = 100)]
    pub max_in_flight: usize,
    /// Bytes queued for one socket that does not read; past this it is closed (its jobs stay resumable).
    #[arg(long, env = "HERALD_SOCKET_BUFFER_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub socket_buffer_bytes: usize,
    /// Bytes all sockets together may hold for their clients (frames queued and write buffers); past
    /// it the socket that holds the most and reads the slowest is closed (its jobs stay resumable).
    /// Default: an eighth of the machine's memory (or of the cgroup's limit), logged at start.
    #[arg(long, env = "HERALD_MAX_BUFFERED_BYTES")]
    pub max_buffered_bytes: Option<usize>,
    /// Static bearer tokens, comma-separated `identity:token` pairs (a token: at least 16 of
    /// A-Z a-z 0-9 . _ ~ -). Turns authentication on. Prefer the environment or --auth-tokens-file:
    /// other users of the machine can read a command line.
    #[arg(long, env = "HERALD_AUTH_TOKENS", hide_env_values = true)]
    pub auth_tokens: Option<Secret>,
    /// File of static bearer tokens: one `identity:token` per line; blank lines and `#` comments are
    /// skipped. Turns authentication on.
    #[arg(long, env = "HERALD_AUTH_TOKENS_FILE")]
    pub auth_tokens_file: Option<PathBuf>,
    /// Key of HS256 JSON Web Tokens (at least 32 bytes): a token's `sub` is the identity, and its `exp`
    /// is required and checked. Turns authentication on.
    #[arg(long, env = "HERALD_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<Secret>,
    /// Origins (`http(s)://host[:port]`, comma-separated) whose pages may open a WebSocket; default: only
    /// pages of the host the request was sent to. Requests without an Origin header are not browsers and
    /// pass.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
    /// Host names (`name` or `name:port`, comma-separated; `*` for any) requests may address the
    /// server by, besides the loopback names (`localhost`, `127.0.0.1`, `[::1]`); others get 403 on
    /// every route but /healthz. Default: loopback names only on a loopback --listen address, any name
    /// on others.
    #[arg(long, env = "HERALD_ALLOWED_HOSTS", value_delimiter = ',')]
    pub allowed_hosts: Vec<String>,
    /// Submits per second one client (identity, or IP address without authentication) may make on
    /// average; more are answered `busy` (HTTP 429). 0: no limit.
    #[arg(long, env = "HERALD_SUBMIT_RATE", default_value_t = 20)]
    pub submit_rate: u32,
    /// Submits one client may make in a burst before --submit-rate applies.
    #[arg(long, env = "HERALD_SUBMIT_BURST", default_value_t = 100)]
    pub submit_burst: u32,
    /// WebSockets one client (identity, or IP address without authentication) may hold open at once;
    /// more are answered `busy` and closed. The same number bounds one address's connections that have
    /// not upgraded to a WebSocket (plain HTTP, handshakes): one more gets 429 at once. 0: no limit.
    #[arg(long, env = "HERALD_MAX_SOCKETS_PER_CLIENT", default_value_t = 32)]
    pub max_sockets_per_client: u32,
    /// Connections (WebSockets and plain HTTP) open at once; past it a new connection is answered 503
    /// with Retry-After at once and closed, and the open ones are not disturbed. Default: 90 % of the
    /// open-file limit, which the server raises to its hard limit at start (both are logged).
    #[arg(long, env = "HERALD_MAX_CONNECTIONS")]
    pub max_connections: Option<u32>,
    /// Longest wait, in seconds, for a request's headers: from a new connection's start, or from the
    /// end of the previous request on a kept-alive one. Past it the connection is closed.
    #[arg(long, env = "HERALD_HEADER_TIMEOUT_SECS", default_value_t = 10)]
    pub header_timeout_secs: u64,
    /// Longest time, in seconds, from a plain HTTP request's headers to the start of its response
    /// (reading its body included); past it the answer is 408. A download that has started is not
    /// cut, and WebSockets are not concerned.
    #[arg(long, env = "HERALD_REQUEST_TIMEOUT_SECS", default_value_t = 30)]
    pub request_timeout_secs: u64,
    /// Jobs one client (identity, or IP address without authentication) may have queued or running
    /// at once, across all its connections and every server instance; one more submit is answered
    /// `busy` with `retry_after`. 0: no limit.
    #[arg(long, env = "HERALD_MAX_QUEUED_PER_CLIENT", default_value_t = 32)]
    pub max_queued_per_client: u32,
    /// Jobs one client may have kept (finished or not) until their records expire after
    /// --job-ttl-secs; one more submit is answered `busy` with `retry_after`. 0: no limit.
    #[arg(long, env = "HERALD_MAX_JOBS_PER_CLIENT", default_value_t = 10_000)]
    pub max_jobs_per_client: u32,
    /// Bytes of stored results one client's kept jobs may refer to (each distinct result counted
    /// once, as stored: compressed); once past it, a submit is answered `busy` with `retry_after`
    /// until enough of them expire. No result is ever dropped for it. 0: no limit.
    #[arg(long, env = "HERALD_MAX_STORED_BYTES_PER_CLIENT", default_value_t = 256 * 1024 * 1024)]
    pub max_stored_bytes_per_client: u64,
    /// Seconds a WebSocket may stay silent before the server sends it a Ping.
    #[arg(long, env = "HERALD_PING_INTERVAL_SECS", default_value_t = 20)]
    pub ping_interval_secs: u64,
    /// Seconds a pinged WebSocket has to send anything (its Pong) before the server closes it; its
    /// jobs stay resumable.
    #[arg(long, env = "HERALD_PING_TIMEOUT_SECS", default_value_t = 20)]
    pub ping_timeout_secs: u64,
    /// Embedded mode only: jobs computed at once by the in-process workers; default: the number of
    /// cores.
    #[arg(long, env = "HERALD_CONCURRENCY")]
    pub concurrency: Option<NonZeroUsize>,
    /// Embedded mode only: longest computation of one job, in seconds; past it the job fails with
    /// "time limit exceeded".
    #[arg(long, env = "HERALD_JOB_TIME_LIMIT_SECS", default_value_t = 300)]
    pub job_time_limit_secs: u64,
    /// The models to run in embedded mode (as herald-worker's --model). Distributed servers take jobs
    /// for the models workers announce, and ignore it (with a warning), so that server and workers
    /// may share one environment.
    #[command(flatten)]
    pub models: ModelArgs,
    /// Embedded mode only: starts of one job before it is failed (a job whose model's program keeps
    /// dying on it).
    #[arg(long, env = "HERALD_MAX_ATTEMPTS", default_value_t = 3)]
    pub max_attempts: u32,
    /// Embedded mode only: the directory where job records, the jobs not yet finished and results
    /// are kept (an SQLite database), so that they survive a restart or a crash; created if missing,
    /// and used by one server at a time. Default: `herald-data` in the working directory.
    #[arg(long, env = "HERALD_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Embedded mode only: keep jobs and results in memory only, with no data directory: a restart
    /// loses every job (clients then get not_found for their IDs).
    #[arg(long, env = "HERALD_IN_MEMORY")]
    pub in_memory: bool,
    /// Largest job input, in bytes of JSON text; a larger one is refused with `too_large`.
    #[arg(long, env = "HERALD_MAX_INPUT_BYTES", default_value_t = herald_protocol::model::DEFAULT_MAX_INPUT_BYTES)]
    pub max_input_bytes: usize,
    /// Key that signs webhooks, as the Standard Webhooks specification writes it: `whsec_` and 24 to
    /// 64 bytes in base64. Turns webhooks on: submits may name a `webhook`, and this server sends the
    /// deliveries. Give every server instance the same one.
    #[arg(long, env = "HERALD_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<Secret>,
    /// Lets webhooks reach loopback, private, link-local, unique-local, shared (CGNAT) and cloud
    /// metadata addresses: for tests and internal networks only.
    #[arg(long, env = "HERALD_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// Delays before each retry of a webhook that failed, comma-separated (`500ms`, `5s`, `5m`, `2h`):
    /// the first attempt is at once, and once the last retry fails the delivery is given up.
    #[arg(
        long,
        env = "HERALD_WEBHOOK_RETRY_DELAYS",
        default_value = "5s,5m,30m,2h,5h,10h,10h"
    )]
    pub webhook_retry_delays: String,
    /// Longest time, in seconds, for one webhook request (connecting, sending, the answer).
    #[arg(long, env = "HERALD_WEBHOOK_TIMEOUT_SECS", default_value_t = 10)]
    pub webhook_timeout_secs: u64,
    /// Largest webhook body, in bytes: a job whose document is larger is sent without its output.
    #[arg(long, env = "HERALD_WEBHOOK_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub webhook_max_body_bytes: usize,
    /// Logging.
    #[command(flatten)]
    pub log: LogArgs,
}

impl Settings {
    /// Whether the server runs embedded (neither RabbitMQ nor Redis given). Giving only one of the two
    /// is a mistake, not a mode: the server would silently keep jobs where other instances can't see
    /// them.
    pub fn embedded(&self) -> Result<bool, SettingsError> {
        match (self.backend.amqp_url.is_some(), self.backend.redis_given()) {
            (false, false) => Ok(true),
            (true, true) => Ok(false),
            (true, false) => Err(SettingsError::new(
                "redis-url",
                "is needed with --amqp-url (give both for RabbitMQ and Redis, or neither for embedded mode)",
            )),
            (false, true) => Err(SettingsError::new(
                "amqp-url",
                "is needed with --redis-url or --redis-sentinel (give both for RabbitMQ and Redis, or \
                 neither for embedded mode)",
            )),
        }
    }

    /// Each client's quotas.
    pub fn client_limits(&self) -> herald_engine::backend::ClientLimits {
        herald_engine::backend::ClientLimits {
            max_queued: self.max_queued_per_client,
            max_jobs: self.max_jobs_per_client,
            max_stored_bytes: self.max_stored_bytes_per_client,
        }
    }

    /// Where embedded mode keeps its jobs: `None` with --in-memory.
    pub fn data_dir(&self) -> Option<PathBuf> {
        if self.in_memory {
            return None;
        }
        Some(
            self.data_dir
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
        )
    }

    /// Jobs computed at once in embedded mode.
    pub fn concurrency(&self) -> usize {
        self.concurrency
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }
}

/// The data directory when --data-dir is not given, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "herald-data";

/// Upper bound of the rate settings: beyond it a limit is no limit, and a typo should not pass.
const MAX_RATE: u32 = 1_000_000;

/// Upper bound of --max-input-bytes: a submit travels whole in one WebSocket frame and one message.
const MAX_INPUT_BYTES: usize = 16 * 1024 * 1024;
/// Upper bound of the timeouts, in seconds (an hour): beyond it a timeout no longer protects anything.
const MAX_TIMEOUT_SECS: u64 = 3600;

/// Lower bound of --max-buffered-bytes: below a mebibyte, a single large result would close sockets.
const MIN_BUFFERED_BYTES: usize = 1024 * 1024;

/// Upper bound of --max-connections: Linux's largest possible open-file limit (fs.nr_open) is 2^30.
pub const MAX_CONNECTIONS: u32 = 1 << 30;

/// Most retries of one webhook delivery.
const MAX_WEBHOOK_RETRIES: usize = 20;
/// Longest delay before one retry (a week).
const MAX_WEBHOOK_DELAY: Duration = Duration::from_secs(7 * 86_400);

impl Settings {
    /// The webhook signing key, if webhooks are on.
    pub fn webhook_signer(&self) -> Result<Option<crate::webhook::sign::Signer>, SettingsError> {
        self.webhook_secret
            .as_ref()
            .map(|secret| {
                crate::webhook::sign::Signer::parse(secret.expose())
                    .map_err(|reason| SettingsError::new("webhook-secret", reason))
            })
            .transpose()
    }

    /// The delays of --webhook-retry-delays.
    pub fn webhook_retry_delays(&self) -> Result<Vec<Duration>, SettingsError> {
        let delays = self
            .webhook_retry_delays
            .split(',')
            .map(str::trim)
            .filter(|text| !text.is_empty())
            .map(|text| {
                humantime::parse_duration(text)
                    .ok()
                    .filter(|delay| *delay <= MAX_WEBHOOK_DELAY)
                    .ok_or_else(|| {
                        SettingsError::new(
                            "webhook-retry-delays",
                            format!(
                                "{text:?} is not a delay such as 500ms, 5s, 5m or 2h of at most 7 days"
                            ),
                        )
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if delays.len() > MAX_WEBHOOK_RETRIES {
            return Err(SettingsError::new(
                "webhook-retry-delays",
                format!("lists at most {MAX_WEBHOOK_RETRIES} retries"),
            ));
        }
        Ok(delays)
    }

    /// How the webhook dispatcher sends, if webhooks are on.
    pub fn webhooks(&self) -> Result<Option<crate::webhook::dispatch::Config>, SettingsError> {
        let Some(signer) = self.webhook_signer()? else {
            return Ok(None);
        };
        Ok(Some(crate::webhook::dispatch::Config {
            signer,
            retry_delays: self.webhook_retry_delays()?,
            timeout: Duration::from_secs(self.webhook_timeout_secs),
            max_body_bytes: self.webhook_max_body_bytes,
            allow_private: self.webhook_allow_private,
        }))
    }
}

impl Settings {
    /// How long a connection may take to send a request's headers.
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }

    /// How long a plain HTTP request may take until its response starts.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }

    /// How long a WebSocket may stay silent before it is pinged.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }

    /// How long a pinged WebSocket has to answer.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_secs(self.ping_timeout_secs)
    }
}

impl Settings {
    /// Checks every value before anything connects (and reads --auth-tokens-file).
    pub fn validate(&self) -> Result<(), SettingsError> {
        self.backend.validate()?;
        self.embedded()?;
        self.models.validate()?;
        if self.in_memory && self.data_dir.is_some() {
            return Err(SettingsError::new(
                "in-memory",
                "keeps no data directory: give --in-memory or --data-dir (HERALD_IN_MEMORY, \
                 HERALD_DATA_DIR), not both",
            ));
        }
        if self
            .data_dir
            .as_ref()
            .is_some_and(|d| d.as_os_str().is_empty())
        {
            return Err(SettingsError::new("data-dir", "must name a directory"));
        }
        if self.max_attempts == 0 {
            return Err(SettingsError::new("max-attempts", "must be at least 1"));
        }
        if self.max_input_bytes == 0 || self.max_input_bytes > MAX_INPUT_BYTES {
            return Err(SettingsError::new(
                "max-input-bytes",
                format!("must be from 1 to {MAX_INPUT_BYTES}"),
            ));
        }
        if self.concurrency.is_some_and(|c| c.get() > 1024) {
            return Err(SettingsError::new("concurrency", "must be at most 1024"));
        }
        if self.job_time_limit_secs == 0 || self.job_time_limit_secs > 25 * 60 {
            return Err(SettingsError::new(
                "job-time-limit-secs",
                "must be from 1 to 1500 seconds",
            ));
        }
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
        for (flag, secs) in [
            ("header-timeout-secs", self.header_timeout_secs),
            ("request-timeout-secs", self.request_timeout_secs),
            ("ping-interval-secs", self.ping_interval_secs),
            ("ping-timeout-secs", self.ping_timeout_secs),
            ("webhook-timeout-secs", self.webhook_timeout_secs),
        ] {
            if secs == 0 || secs > MAX_TIMEOUT_SECS {
                return Err(SettingsError::new(
                    flag,
                    format!("must be from 1 to {MAX_TIMEOUT_SECS} seconds"),
                ));
            }
        }
        if let Some(max) = self.max_connections {
            if max == 0 || max > MAX_CONNECTIONS {
                return Err(SettingsError::new(
                    "max-connections",
                    format!("must be from 1 to {MAX_CONNECTIONS}"),
                ));
            }
        }
        self.webhooks()?;
        if self.webhook_max_body_bytes < 1024 {
            return Err(SettingsError::new(
                "webhook-max-body-bytes",
                "must be at least 1024",
            ));
        }
        self.static_tokens()?;
        if let Some(secret) = &self.jwt_secret {
            // HS256 is only as strong as its key; a short one can be found by trying.
            if secret.expose().len() < 32 {
                return Err(SettingsError::new(
                    "jwt-secret",
                    "must be at least 32 bytes",
                ));
            }
        }
        self.origins()?;
        self.hosts()?;
        if self
            .max_buffered_bytes
            .is_some_and(|bytes| bytes < MIN_BUFFERED_BYTES)
        {
            return Err(SettingsError::new(
                "max-buffered-bytes",
                format!("must be at least {MIN_BUFFERED_BYTES}"),
            ));
        }
        if self.submit_rate > MAX_RATE {
            return Err(SettingsError::new(
                "submit-rate",
                format!("must be at most {MAX_RATE} (0 for no limit)"),
            ));
        }
        if self.submit_burst == 0 || self.submit_burst > MAX_RATE {
            return Err(SettingsError::new(
                "submit-burst",
                format!("must be from 1 to {MAX_RATE}"),
            ));
        }
        Ok(())
    }

    /// How long records live.
    pub fn job_ttl(&self) -> Duration {
        Duration::from_secs(self.job_ttl_secs)
    }

    /// Whether any way of authenticating is configured.
    pub fn auth_enabled(&self) -> bool {
        self.auth_tokens.is_some() || self.auth_tokens_file.is_some() || self.jwt_secret.is_some()
    }

    /// The static tokens of --auth-tokens and --auth-tokens-file, as (identity, token) pairs.
    ///
    /// Errors name the flag and the entry's position, never its content: the content is a secret.
    pub fn static_tokens(&self) -> Result<Vec<(String, Secret)>, SettingsError> {
        let mut tokens = Vec::new();
        if let Some(list) = &self.auth_tokens {
            for (i, entry) in list.expose().split(',').enumerate() {
                let pair = auth::parse_token_entry(entry.trim()).map_err(|reason| {
                    SettingsError::new("auth-tokens", format!("entry {}: {reason}", i + 1))
                })?;
                tokens.push(pair);
            }
        }
        if let Some(path) = &self.auth_tokens_file {
            let text = std::fs::read_to_string(path).map_err(|e| {
                SettingsError::new("auth-tokens-file", format!("cannot read it: {e}"))
            })?;
            let before = tokens.len();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let pair = auth::parse_token_entry(line).map_err(|reason| {
                    SettingsError::new("auth-tokens-file", format!("line {}: {reason}", i + 1))
                })?;
                tokens.push(pair);
            }
            if tokens.len() == before {
                return Err(SettingsError::new(
                    "auth-tokens-file",
                    "holds no `identity:token` line",
                ));
            }
        }
        for (i, (_, token)) in tokens.iter().enumerate() {
            // One token for two identities would make a job's owner depend on the order of the list.
            if tokens[..i].iter().any(|(_, other)| other == token) {
                return Err(SettingsError::new(
                    "auth-tokens",
                    "two entries share one token; every token must be unique",
                ));
            }
        }
        Ok(tokens)
    }

    /// The origins of --allowed-origins (empty: only the request's own host).
    pub fn origins(&self) -> Result<Vec<Origin>, SettingsError> {
        self.allowed_origins
            .iter()
            .map(|text| text.trim())
            .filter(|text| !text.is_empty())
            .map(|text| {
                Origin::parse(text.trim_end_matches('/')).ok_or_else(|| {
                    SettingsError::new(
                        "allowed-origins",
                        format!("{text:?} is not an origin such as https://example.com:8443"),
                    )
                })
            })
            .collect()
    }
}

impl Settings {
    /// The names of --allowed-hosts.
    pub fn hosts(&self) -> Result<Vec<AllowedHost>, SettingsError> {
        self.allowed_hosts
            .iter()
            .map(|text| text.trim())
            .filter(|text| !text.is_empty())
            .map(|text| {
                AllowedHost::parse(text).ok_or_else(|| {
                    SettingsError::new(
                        "allowed-hosts",
                        format!("{text:?} is not a host name such as herald.example.com or herald.example.com:8443"),
                    )
                })
            })
            .collect()
    }
}

/// Hand-written so that passwords in the backend URLs and every secret stay out of logs and panics.
impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("backend", &self.backend)
            .field("listen", &self.listen)
            .field("job_ttl_secs", &self.job_ttl_secs)
            .field("max_in_flight", &self.max_in_flight)
            .field("socket_buffer_bytes", &self.socket_buffer_bytes)
            .field("max_buffered_bytes", &self.max_buffered_bytes)
            .field("auth_tokens", &self.auth_tokens)
            .field("auth_tokens_file", &self.auth_tokens_file)
            .field("jwt_secret", &self.jwt_secret)
            .field("allowed_origins", &self.allowed_origins)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("submit_rate", &self.submit_rate)
            .field("submit_burst", &self.submit_burst)
            .field("max_sockets_per_client", &self.max_sockets_per_client)
            .field("max_connections", &self.max_connections)
            .field("header_timeout_secs", &self.header_timeout_secs)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("max_queued_per_client", &self.max_queued_per_client)
            .field("max_jobs_per_client", &self.max_jobs_per_client)
            .field(
                "max_stored_bytes_per_client",
                &self.max_stored_bytes_per_client,
            )
            .field("ping_interval_secs", &self.ping_interval_secs)
            .field("ping_timeout_secs", &self.ping_timeout_secs)
            .field("concurrency", &self.concurrency)
            .field("job_time_limit_secs", &self.job_time_limit_secs)
            .field("models", &self.models)
            .field("max_attempts", &self.max_attempts)
            .field("data_dir", &self.data_dir)
            .field("in_memory", &self.in_memory)
            .field("max_input_bytes", &self.max_input_bytes)
            .field("webhook_secret", &self.webhook_secret)
            .field("webhook_allow_private", &self.webhook_allow_private)
            .field("webhook_retry_delays", &self.webhook_retry_delays)
            .field("webhook_timeout_secs", &self.webhook_timeout_secs)
            .field("webhook_max_body_bytes", &self.webhook_max_body_bytes)
            .field("log", &self.log)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Settings {
        Settings::try_parse_from(std::iter::once("herald-server").chain(args.iter().copied()))
            .expect("flags parse")
    }

    #[test]
    fn defaults_are_valid_and_leave_authentication_off() {
        let settings = parse(&[]);
        settings.validate().unwrap();
        assert!(!settings.auth_enabled());
        assert!(settings.origins().unwrap().is_empty());
        assert_eq!(
            (settings.submit_rate, settings.submit_burst),
            (20, 100),
            "limits are on by default"
        );
        assert_eq!(settings.max_sockets_per_client, 32);
        assert_eq!(
            settings.client_limits(),
            herald_engine::backend::ClientLimits {
                max_queued: 32,
                max_jobs: 10_000,
                max_stored_bytes: 256 * 1024 * 1024,
            },
            "quotas are on by default"
        );
        assert_eq!(
            (
                settings.header_timeout_secs,
                settings.request_timeout_secs,
                settings.ping_interval_secs,
                settings.ping_timeout_secs,
                settings.max_connections,
            ),
            (10, 30, 20, 20, None),
            "connection limits are on by default; the cap comes from the file limit"
        );
        assert!(settings.embedded().unwrap(), "no URLs: embedded mode");
        assert_eq!(
            settings.data_dir(),
            Some(PathBuf::from("herald-data")),
            "embedded mode keeps its jobs by default"
        );
    }

    #[test]
    fn in_memory_keeps_no_data_directory_and_excludes_one() {
        let settings = parse(&["--in-memory"]);
        settings.validate().unwrap();
        assert_eq!(settings.data_dir(), None);
        let settings = parse(&["--data-dir", "/var/lib/herald"]);
        assert_eq!(settings.data_dir(), Some(PathBuf::from("/var/lib/herald")));
        let both = parse(&["--in-memory", "--data-dir", "/var/lib/herald"]);
        assert_eq!(both.validate().unwrap_err().flag, "in-memory");
    }

    #[test]
    fn one_url_without_the_other_is_refused() {
        let amqp_only = parse(&["--amqp-url", "amqp://127.0.0.1:5672/%2f"]);
        assert_eq!(amqp_only.validate().unwrap_err().flag, "redis-url");
        let redis_only = parse(&["--redis-url", "redis://127.0.0.1:6379"]);
        assert_eq!(redis_only.validate().unwrap_err().flag, "amqp-url");
        let both = parse(&[
            "--amqp-url",
            "amqp://127.0.0.1:5672/%2f",
            "--redis-url",
            "redis://127.0.0.1:6379",
        ]);
        assert!(!both.embedded().unwrap());
    }

    #[test]
    fn debug_shows_no_secret() {
        let settings = parse(&[
            "--amqp-url",
            "amqp://herald:amqp-pa55word@rabbit:5672/%2f",
            "--redis-url",
            "redis://:redis-pa55word@redis:6379",
            "--auth-tokens",
            "alice:alice-token-0123456789",
            "--jwt-secret",
            "jwt-secret-0123456789-0123456789-xyz",
        ]);
        settings.validate().unwrap();
        let shown = format!("{settings:?} {settings:#?}");
        for secret in [
            "amqp-pa55word",
            "redis-pa55word",
            "alice-token-0123456789",
            "jwt-secret-0123456789",
        ] {
            assert!(!shown.contains(secret), "{secret} shown in {shown}");
        }
        assert!(shown.contains("amqp://***@rabbit:5672/%2f"), "{shown}");
    }

    #[test]
    fn token_lists_are_checked_without_echoing_them() {
        for (list, reason) in [
            ("alice", "entry 1"),
            ("alice:short", "entry 1"),
            (
                "alice:good-token-0123456789,:other-token-0123456789",
                "entry 2",
            ),
            ("alice:bad token 0123456789", "entry 1"),
            (
                "alice:same-token-0123456789,bob:same-token-0123456789",
                "share one token",
            ),
        ] {
            let error = parse(&["--auth-tokens", list]).validate().unwrap_err();
            assert_eq!(error.flag, "auth-tokens");
            let shown = error.to_string();
            assert!(shown.contains(reason), "{list}: {shown}");
            assert!(!shown.contains("0123456789"), "{list}: {shown}");
        }
        let settings = parse(&[
            "--auth-tokens",
            "alice:a-token-0123456789, bob:b-token-0123456789",
        ]);
        let identities: Vec<String> = settings
            .static_tokens()
            .unwrap()
            .into_iter()
            .map(|(identity, _)| identity)
            .collect();
        assert_eq!(identities, ["alice", "bob"]);
    }

    #[test]
    fn a_token_file_is_read_line_by_line() {
        let path = std::env::temp_dir().join(format!("herald-tokens-{}", uuid::Uuid::new_v4()));
        std::fs::write(
            &path,
            "# ops\n\nalice:a-token-0123456789\nbob:b-token-0123456789\n",
        )
        .unwrap();
        let settings = parse(&["--auth-tokens-file", path.to_str().unwrap()]);
        settings.validate().unwrap();
        assert!(settings.auth_enabled());
        assert_eq!(settings.static_tokens().unwrap().len(), 2);
        std::fs::write(&path, "alice:a-token-0123456789\nnonsense-0123456789\n").unwrap();
        let error = settings.validate().unwrap_err();
        assert!(error.to_string().contains("line 2"), "{error}");
        assert!(!error.to_string().contains("0123456789"), "{error}");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(settings.validate().unwrap_err().flag, "auth-tokens-file");
    }

    #[test]
    fn bad_values_name_their_flag() {
        for (args, flag) in [
            (&["--jwt-secret", "too-short"][..], "jwt-secret"),
            (&["--allowed-origins", "example.com"], "allowed-origins"),
            (
                &["--allowed-origins", "https://example.com/path"],
                "allowed-origins",
            ),
            (&["--allowed-origins", "null"], "allowed-origins"),
            (&["--allowed-hosts", "http://example.com"], "allowed-hosts"),
            (&["--max-buffered-bytes", "1000"], "max-buffered-bytes"),
            (&["--submit-burst", "0"], "submit-burst"),
            (&["--submit-rate", "2000000"], "submit-rate"),
            (&["--header-timeout-secs", "0"], "header-timeout-secs"),
            (&["--request-timeout-secs", "3601"], "request-timeout-secs"),
            (&["--ping-interval-secs", "0"], "ping-interval-secs"),
            (&["--ping-timeout-secs", "0"], "ping-timeout-secs"),
            (&["--max-connections", "0"], "max-connections"),
            (&["--max-connections", "2000000000"], "max-connections"),
            (&["--webhook-secret", "not-whsec"], "webhook-secret"),
            (&["--webhook-secret", "whsec_c2hvcnQ="], "webhook-secret"),
            (
                &[
                    "--webhook-secret",
                    "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                    "--webhook-retry-delays",
                    "5s,soon",
                ],
                "webhook-retry-delays",
            ),
            (&["--webhook-timeout-secs", "0"], "webhook-timeout-secs"),
        ] {
            let error = parse(args).validate().unwrap_err();
            assert_eq!(error.flag, flag, "{args:?}");
            if flag == "jwt-secret" {
                assert!(!error.to_string().contains("too-short"));
            }
        }
        let settings = parse(&[
            "--allowed-origins",
            "https://app.example.com,http://localhost:3000/",
        ]);
        settings.validate().unwrap();
        assert_eq!(settings.origins().unwrap().len(), 2);
    }
}
