//! The settings both binaries share: where RabbitMQ and Redis are and the names Herald uses in them,
//! logging, and the error a setting that cannot work gives.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};

use std::sync::Arc;

use clap::{Args, ValueEnum};
use herald_models::{
    parse_model_spec, Executable, ExecutableOptions, Factorial, Model, ModelSpec, Models,
};

/// Where a worker finds RabbitMQ when `--amqp-url` is not given.
pub const DEFAULT_AMQP_URL: &str = "amqp://127.0.0.1:5672/%2f";
/// Where a worker finds Redis when `--redis-url` is not given.
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// For people: one readable line per event.
    #[default]
    Text,
    /// For machines: one JSON object per line, with the span fields (such as the job's `id`).
    Json,
}

/// Logging flags, shared by both binaries.
#[derive(Debug, Clone, Copy, Default, Args)]
pub struct LogArgs {
    /// Log format; `RUST_LOG` sets the level (default `info`).
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Where RabbitMQ and Redis are, and the names Herald uses in them. Server and worker must agree on all of
/// these, so both binaries take the same flags.
///
/// `Debug` is written by hand: the URLs can hold passwords, and it shows them redacted.
#[derive(Clone, Args)]
pub struct BackendArgs {
    /// RabbitMQ URL (amqp://user:password@host:port/vhost), or several comma-separated, one per node
    /// of a cluster: connections go to the first that answers and, when its node goes away, to the
    /// next. The worker's default is amqp://127.0.0.1:5672/%2f; a server given neither this nor a
    /// Redis (--redis-url or --redis-sentinel) runs embedded.
    #[arg(long, env = "HERALD_AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Redis URL (redis://[:password@]host:port[/db]). The worker's default is
    /// redis://127.0.0.1:6379; a server given neither this nor --amqp-url runs embedded. With
    /// --redis-sentinel, only its user, password and database are used (on the primary Sentinel names).
    #[arg(long, env = "HERALD_REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// Redis Sentinels, comma-separated host:port: the primary is the one they name for
    /// --redis-master-name, followed through failovers.
    #[arg(long, env = "HERALD_REDIS_SENTINEL")]
    pub redis_sentinel: Option<String>,
    /// The name Sentinel monitors Herald's Redis under; needed with --redis-sentinel.
    #[arg(long, env = "HERALD_REDIS_MASTER_NAME")]
    pub redis_master_name: Option<String>,
    /// Replicas that must hold a new job's record (server) or a final record (worker) before it
    /// counts as stored: each such write is followed by Redis WAIT. 0: do not wait.
    #[arg(long, env = "HERALD_REDIS_REPLICA_ACKS", default_value_t = 0)]
    pub redis_replica_acks: u32,
    /// Nodes a new job queue is replicated on (its quorum's initial group size), capped by the
    /// cluster's size; applies when the queue is first declared.
    #[arg(long, env = "HERALD_QUORUM_INITIAL_GROUP_SIZE", default_value_t = 3)]
    pub quorum_initial_group_size: u16,
    /// Name of each model's durable job queue, `{model}` standing for the model's name (so the
    /// factorial's is factorial_process). Every model has a queue of its own, so one model's backlog
    /// never delays another's jobs.
    #[arg(long, env = "HERALD_QUEUE", default_value = crate::topology::DEFAULT_QUEUE_TEMPLATE)]
    pub queue: String,
    /// Exchange that workers publish completions to; each server instance binds its own reply queue.
    #[arg(long, env = "HERALD_REPLY_EXCHANGE", default_value = "herald.replies")]
    pub reply_exchange: String,
    /// Prefix of every Redis key Herald writes.
    #[arg(long, env = "HERALD_REDIS_PREFIX", default_value = "herald:")]
    pub redis_prefix: String,
    /// Largest n the factorial accepts (the server refuses above it; a worker fails such a job).
    #[arg(long, env = "HERALD_MAX_N", default_value_t = 1_000_000)]
    pub max_n: u64,
    /// Cap on jobs waiting in the queue (declared on the queue, overflow `reject-publish`); submits beyond
    /// it are answered `busy`.
    #[arg(long, env = "HERALD_MAX_QUEUE_LENGTH", default_value_t = 100_000)]
    pub max_queue_length: u32,
}

impl std::fmt::Debug for BackendArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendArgs")
            .field("amqp_url", &self.amqp_url.as_deref().map(redact_url))
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("redis_sentinel", &self.redis_sentinel)
            .field("redis_master_name", &self.redis_master_name)
            .field("redis_replica_acks", &self.redis_replica_acks)
            .field("quorum_initial_group_size", &self.quorum_initial_group_size)
            .field("queue", &self.queue)
            .field("reply_exchange", &self.reply_exchange)
            .field("redis_prefix", &self.redis_prefix)
            .field("max_n", &self.max_n)
            .field("max_queue_length", &self.max_queue_length)
            .finish()
    }
}

/// `amqp://user:password@host/…` as `amqp://***@host/…`: the part before the last `@` can hold a
/// password, and a password may itself hold any character, so all of it goes. A comma-separated list
/// is redacted URL by URL.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// A listening address from the command line: `HOST:PORT` (`127.0.0.1:8080`, `0.0.0.0:8080`,
/// `[::1]:8080`), or a port alone, which means this machine only (`8080` is `127.0.0.1:8080`).
pub fn parse_listen_addr(text: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
    }
    text.parse().map_err(|_| {
        format!(
            "{text:?} is not an address: give IP:PORT (127.0.0.1:8080 for this machine only, \
             0.0.0.0:8080 for every interface) or a port alone (8080, on 127.0.0.1)"
        )
    })
}

/// A setting that must never be shown: its `Debug` prints a placeholder, so the settings can be logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The secret itself, for the one place that uses it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The flag both binaries take to choose their models (`herald-worker`, and `herald-server` in
/// embedded mode).
#[derive(Debug, Clone, Default, Args)]
pub struct ModelArgs {
    /// A model to serve (herald-worker, and herald-server in embedded mode): `factorial` (the
    /// built-in), or NAME=COMMAND, a program speaking JSON lines on stdin/stdout (docs/models.md),
    /// such as `sentiment=python3 examples/python/slow_sentiment.py`. Repeat the flag for several (in
    /// the environment, separate them with `;`); given at all, it lists every model served. Default:
    /// the factorial alone. A distributed server ignores it: workers announce what they serve.
    #[arg(long = "model", env = "HERALD_MODEL", value_delimiter = ';')]
    pub models: Vec<String>,
}

impl ModelArgs {
    /// Checks every value (without starting anything).
    pub fn validate(&self) -> Result<(), SettingsError> {
        let mut names = std::collections::BTreeSet::new();
        for spec in self.specs() {
            let spec =
                parse_model_spec(spec).map_err(|reason| SettingsError::new("model", reason))?;
            if !names.insert(spec.name().to_owned()) {
                return Err(SettingsError::new(
                    "model",
                    format!("the model `{}` is named twice", spec.name()),
                ));
            }
        }
        Ok(())
    }

    fn specs(&self) -> impl Iterator<Item = &str> {
        self.models
            .iter()
            .map(|s| s.trim())
            .filter(|s| !s.is_empty())
    }

    /// The models named, started: the factorial (with `max_n`) unless others are named, each
    /// program with `slots` copies kept running (one per compute slot). Fails with the flag's name on a
    /// bad value or a program that cannot start.
    pub async fn build(&self, max_n: u64, slots: usize) -> Result<Models, SettingsError> {
        self.validate()?;
        let mut models = Models::default();
        if self.specs().next().is_none() {
            return Ok(models.with(Arc::new(Factorial::new(max_n))));
        }
        for spec in self.specs() {
            let spec =
                parse_model_spec(spec).map_err(|reason| SettingsError::new("model", reason))?;
            let model: Arc<dyn Model> = match spec {
                ModelSpec::Builtin(_) => Arc::new(Factorial::new(max_n)),
                ModelSpec::Program { name, command } => {
                    let options = ExecutableOptions {
                        slots,
                        ..ExecutableOptions::default()
                    };
                    match Executable::start(&name, &command, options).await {
                        Ok(model) => Arc::new(model),
                        Err(e) => {
                            // The ones already started end with the process; end them now.
                            models.shutdown().await;
                            return Err(SettingsError::new("model", e.to_string()));
                        }
                    }
                }
            };
            models = models.with(model);
        }
        Ok(models)
    }
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
        for (i, url) in self.amqp_urls().iter().enumerate() {
            url.parse::<lapin::uri::AMQPUri>().map_err(|_| {
                SettingsError::new(
                    "amqp-url",
                    format!("URL {} of the list is not a valid amqp:// URL", i + 1),
                )
            })?;
        }
        redis::IntoConnectionInfo::into_connection_info(self.redis_url())
            .map_err(|_| SettingsError::new("redis-url", "not a valid redis:// URL"))?;
        if !self.queue.contains("{model}") {
            return Err(SettingsError::new(
                "queue",
                "must contain {model}, which stands for each model's name (such as {model}_process)",
            ));
        }
        // The longest queue name a model can give, with room for the dead-letter suffix.
        let longest = crate::topology::job_queue(
            &self.queue,
            &"m".repeat(herald_protocol::model::MAX_MODEL_NAME),
        );
        match (&self.redis_sentinel, &self.redis_master_name) {
            (Some(_), None) => return Err(SettingsError::new(
                "redis-master-name",
                "is needed with --redis-sentinel (the name Sentinel monitors the primary under)",
            )),
            (None, Some(_)) => return Err(SettingsError::new(
                "redis-sentinel",
                "is needed with --redis-master-name (the Sentinels' host:port, comma-separated)",
            )),
            (Some(_), Some(name)) if name.is_empty() || name.len() > 200 => {
                return Err(SettingsError::new(
                    "redis-master-name",
                    "must be 1 to 200 bytes",
                ));
            }
            _ => {}
        }
        self.sentinels()?;
        if self.redis_replica_acks > 16 {
            return Err(SettingsError::new(
                "redis-replica-acks",
                "must be from 0 to 16",
            ));
        }
        if self.quorum_initial_group_size == 0 || self.quorum_initial_group_size > 99 {
            return Err(SettingsError::new(
                "quorum-initial-group-size",
                "must be from 1 to 99",
            ));
        }
        for (flag, name) in [
            ("queue", &longest),
            ("reply-exchange", &self.reply_exchange),
        ] {
            // AMQP short strings; the `amq.` prefix is reserved by the broker.
            if name.is_empty() || name.len() > 200 || name.starts_with("amq.") {
                return Err(SettingsError::new(
                    flag,
                    "must be 1 to 200 bytes (with a 64-byte model name) and not start with \"amq.\"",
                ));
            }
        }
        if self.max_queue_length == 0 {
            return Err(SettingsError::new("max-queue-length", "must be at least 1"));
        }
        if self.redis_prefix.len() > 200 {
            return Err(SettingsError::new(
                "redis-prefix",
                "must be at most 200 bytes",
            ));
        }
        Ok(())
    }

    /// The RabbitMQ URL given (the first of a list), or the local default.
    pub fn amqp_url(&self) -> &str {
        self.amqp_urls()[0]
    }

    /// Every RabbitMQ URL given, in order (the local default when none is).
    pub fn amqp_urls(&self) -> Vec<&str> {
        self.amqp_url
            .as_deref()
            .unwrap_or(DEFAULT_AMQP_URL)
            .split(',')
            .map(str::trim)
            .collect()
    }

    /// Whether a Redis is given at all (a URL or Sentinels).
    pub fn redis_given(&self) -> bool {
        self.redis_url.is_some() || self.redis_sentinel.is_some()
    }

    /// The Sentinels of --redis-sentinel as (host, port), empty without it.
    pub fn sentinels(&self) -> Result<Vec<(String, u16)>, SettingsError> {
        let Some(list) = &self.redis_sentinel else {
            return Ok(Vec::new());
        };
        list.split(',')
            .map(str::trim)
            .enumerate()
            .map(|(i, entry)| {
                let bad = || {
                    SettingsError::new(
                        "redis-sentinel",
                        format!("entry {} is not host:port", i + 1),
                    )
                };
                let (host, port) = entry.rsplit_once(':').ok_or_else(bad)?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                let port: u16 = port.parse().map_err(|_| bad())?;
                if host.is_empty() || port == 0 {
                    return Err(bad());
                }
                Ok((host.to_owned(), port))
            })
            .collect()
    }

    /// The Redis URL given, or the local default.
    pub fn redis_url(&self) -> &str {
        self.redis_url.as_deref().unwrap_or(DEFAULT_REDIS_URL)
    }

    /// The job queue of `model`.
    pub fn job_queue(&self, model: &str) -> String {
        crate::topology::job_queue(&self.queue, model)
    }

    /// The Redis key layout these settings choose.
    pub fn keys(&self) -> herald_protocol::Keys {
        herald_protocol::Keys::new(self.redis_prefix.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            redact_url("amqp://guest:p@ss@host:5672/%2f"),
            "amqp://***@host:5672/%2f"
        );
        assert_eq!(redact_url("redis://:pw@h:6379"), "redis://***@h:6379");
        assert_eq!(
            redact_url("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            redact_url("amqp://a:p1@h1:5672/%2f,amqp://a:p2@h2:5672/%2f"),
            "amqp://***@h1:5672/%2f,amqp://***@h2:5672/%2f"
        );
    }

    fn args(extra: &[&str]) -> BackendArgs {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            backend: BackendArgs,
        }
        let mut all = vec!["test"];
        all.extend_from_slice(extra);
        <Cli as clap::Parser>::parse_from(all).backend
    }

    #[test]
    fn a_list_of_amqp_urls_is_checked_url_by_url() {
        let ok = args(&["--amqp-url", "amqp://h1:5672/%2f, amqp://h2:5673/%2f"]);
        ok.validate().unwrap();
        assert_eq!(ok.amqp_urls(), ["amqp://h1:5672/%2f", "amqp://h2:5673/%2f"]);
        let bad = args(&["--amqp-url", "amqp://h1:5672/%2f,http://h2"]);
        let e = bad.validate().unwrap_err();
        assert_eq!(e.flag, "amqp-url");
        assert!(e.reason.contains("URL 2"), "{e}");
    }

    #[test]
    fn sentinel_settings_come_together_and_are_host_port_pairs() {
        let ok = args(&[
            "--redis-sentinel",
            "127.0.0.1:26379,[::1]:26380",
            "--redis-master-name",
            "herald",
        ]);
        ok.validate().unwrap();
        assert_eq!(
            ok.sentinels().unwrap(),
            [("127.0.0.1".to_owned(), 26379), ("::1".to_owned(), 26380)]
        );
        assert!(ok.redis_given());
        let missing_name = args(&["--redis-sentinel", "127.0.0.1:26379"]);
        assert_eq!(
            missing_name.validate().unwrap_err().flag,
            "redis-master-name"
        );
        let missing_sentinels = args(&["--redis-master-name", "herald"]);
        assert_eq!(
            missing_sentinels.validate().unwrap_err().flag,
            "redis-sentinel"
        );
        for bad in ["127.0.0.1", "h:0", "h:port", ":26379"] {
            let e = args(&["--redis-sentinel", bad, "--redis-master-name", "m"])
                .validate()
                .unwrap_err();
            assert_eq!(e.flag, "redis-sentinel", "{bad}");
        }
        let acks = args(&["--redis-replica-acks", "17"]);
        assert_eq!(acks.validate().unwrap_err().flag, "redis-replica-acks");
        let group = args(&["--quorum-initial-group-size", "0"]);
        assert_eq!(
            group.validate().unwrap_err().flag,
            "quorum-initial-group-size"
        );
    }

    #[test]
    fn a_listen_address_may_be_a_port_alone() {
        let parse = |text| parse_listen_addr(text).map(|addr| addr.to_string());
        assert_eq!(parse("8080").as_deref(), Ok("127.0.0.1:8080"));
        assert_eq!(parse("0").as_deref(), Ok("127.0.0.1:0"));
        assert_eq!(parse("0.0.0.0:9000").as_deref(), Ok("0.0.0.0:9000"));
        assert_eq!(parse("[::1]:9000").as_deref(), Ok("[::1]:9000"));
        for bad in ["localhost:8080", "70000", "8080:", ""] {
            let error = parse(bad).unwrap_err();
            assert!(error.contains("a port alone"), "{bad}: {error}");
        }
    }
}
