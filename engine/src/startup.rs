//! Start-up failures as the person starting a binary reads them: what was tried (the address, with any
//! password hidden), what went wrong, and what to do about it.

use std::net::SocketAddr;

use crate::settings::{redact_url, BackendArgs};

/// Why a binary could not start: a backend it could not use, or an address it could not listen on.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// A backend refused what waiting cannot mend (a wrong password, an unknown vhost, a queue declared
    /// with other arguments). Backends that are only not up yet are waited for instead (see
    /// [`crate::connect::wait_for`]).
    #[error("cannot use {what}: {error}. {hint}")]
    Backend {
        /// What was tried: the backend, its address (password hidden) and the flag that set it.
        what: String,
        /// What it answered.
        error: String,
        /// What to do.
        hint: &'static str,
    },
    /// A listening socket could not be opened.
    #[error("cannot listen on {addr} (--{flag}): {error}. {}", listen_advice(.error, .flag))]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The flag that set it, without dashes.
        flag: &'static str,
        /// What the operating system said.
        error: std::io::Error,
    },
    /// The data directory of the durable embedded mode cannot be used (unwritable, locked by another
    /// server, or its database damaged).
    #[error("{0}. {hint}", hint = .0.hint())]
    Data(#[from] crate::durable::OpenError),
}

/// What a server that cannot reach a backend should be told.
pub const SERVER_BACKEND_HINT: &str =
    "Start it there (scripts/services.sh starts RabbitMQ and Redis \
     on this machine), or correct --amqp-url and --redis-url (HERALD_AMQP_URL, HERALD_REDIS_URL); \
     without either flag the server runs embedded and needs neither";

/// What a worker that cannot reach a backend should be told.
pub const WORKER_BACKEND_HINT: &str =
    "Start it there (scripts/services.sh starts RabbitMQ and Redis \
     on this machine), or correct --amqp-url and --redis-url (HERALD_AMQP_URL, HERALD_REDIS_URL): \
     the worker needs the same ones as its servers";

impl StartupError {
    /// `what` (see [`rabbitmq`] and [`redis`]) failed with `error`.
    pub fn backend(what: String, error: impl std::fmt::Display, hint: &'static str) -> Self {
        Self::Backend {
            what,
            error: error.to_string(),
            hint,
        }
    }

    /// Listening on `addr`, set by `--flag`, failed with `error`.
    pub fn listen(addr: SocketAddr, flag: &'static str, error: std::io::Error) -> Self {
        Self::Listen { addr, flag, error }
    }
}

/// RabbitMQ as a person reads where it was tried: its nodes (no credentials) and the flag.
pub fn rabbitmq(backend: &BackendArgs) -> String {
    let nodes: Vec<String> = backend
        .amqp_urls()
        .iter()
        .map(|url| crate::connect::node_address(url))
        .collect();
    format!("RabbitMQ at {} (--amqp-url)", nodes.join(", "))
}

/// Redis as a person reads where it was tried: its address (password hidden) or its Sentinels, and
/// the flag.
pub fn redis(backend: &BackendArgs) -> String {
    match (&backend.redis_sentinel, &backend.redis_master_name) {
        (Some(sentinels), Some(name)) => {
            format!("Redis through the Sentinels {sentinels} for {name:?} (--redis-sentinel)")
        }
        _ => format!(
            "Redis at {} (--redis-url)",
            redis_address(backend.redis_url())
        ),
    }
}

/// `host:port` (or the socket's path) of a Redis URL, without its credentials.
fn redis_address(url: &str) -> String {
    use redis::{ConnectionAddr, IntoConnectionInfo};
    match url.into_connection_info().map(|info| info.addr().clone()) {
        Ok(ConnectionAddr::Tcp(host, port)) | Ok(ConnectionAddr::TcpTls { host, port, .. }) => {
            format!("{host}:{port}")
        }
        Ok(ConnectionAddr::Unix(path)) => path.display().to_string(),
        _ => redact_url(url),
    }
}

/// What to do when an address cannot be listened on, by the operating system's reason.
fn listen_advice(error: &std::io::Error, flag: &str) -> String {
    use std::io::ErrorKind;
    match error.kind() {
        ErrorKind::AddrInUse => format!(
            "Another process listens there (another Herald?): stop it, or choose a free port with \
             --{flag}"
        ),
        ErrorKind::AddrNotAvailable => format!(
            "This machine has no such address: use 127.0.0.1 (this machine only) or 0.0.0.0 (every \
             interface) in --{flag}"
        ),
        ErrorKind::PermissionDenied => format!(
            "Ports below 1024 need privileges: choose a port from 1024 up in --{flag}, and put a \
             proxy on the low port"
        ),
        _ => format!("Check --{flag}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backend_errors_name_the_address_but_not_the_password() {
        use clap::Parser;
        #[derive(Parser)]
        struct Flags {
            #[command(flatten)]
            backend: BackendArgs,
        }
        let flags = Flags::parse_from([
            "test",
            "--redis-url",
            "redis://:hunter2@db.example:6380/0",
            "--amqp-url",
            "amqp://herald:hunter2@rabbit-1:5672/%2f,amqp://herald:hunter2@rabbit-2:5672/%2f",
        ]);
        let error = StartupError::backend(
            redis(&flags.backend),
            "Connection refused (os error 111)",
            SERVER_BACKEND_HINT,
        )
        .to_string();
        let broker = rabbitmq(&flags.backend);
        assert_eq!(
            broker,
            "RabbitMQ at rabbit-1:5672, rabbit-2:5672 (--amqp-url)"
        );
        assert!(error.contains("db.example:6380"), "{error}");
        assert!(error.contains("--redis-url"), "{error}");
        assert!(error.contains("scripts/services.sh"), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }

    #[test]
    fn a_taken_address_is_named_with_what_to_do() {
        let addr: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let error = StartupError::listen(
            addr,
            "listen",
            std::io::Error::from(std::io::ErrorKind::AddrInUse),
        )
        .to_string();
        assert!(
            error.starts_with("cannot listen on 127.0.0.1:8080 (--listen): "),
            "{error}"
        );
        assert!(
            error.contains("choose a free port with --listen"),
            "{error}"
        );
    }
}
