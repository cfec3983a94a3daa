//! Start-up failures as the person starting a binary reads them: what was tried (the address, with any
//! password hidden), what went wrong, and what to do about it.

use std::net::SocketAddr;

use crate::settings::redact_url;
use crate::store::StoreError;

/// Why a binary could not start: a backend it could not use, or an address it could not listen on.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    /// RabbitMQ could not be connected to, or refused what Herald declares.
    #[error("cannot use RabbitMQ at {url} (--amqp-url): {error}. {hint}")]
    Broker {
        /// The URL tried, password hidden.
        url: String,
        /// What lapin reported.
        error: lapin::Error,
        /// What to do.
        hint: &'static str,
    },
    /// Redis could not be connected to.
    #[error("cannot use Redis at {url} (--redis-url): {error}. {hint}")]
    Redis {
        /// The URL tried, password hidden.
        url: String,
        /// What the store reported.
        error: StoreError,
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
    /// RabbitMQ at `url` failed with `error`.
    pub fn broker(url: &str, error: lapin::Error, hint: &'static str) -> Self {
        Self::Broker {
            url: redact_url(url),
            error,
            hint,
        }
    }

    /// Redis at `url` failed with `error`.
    pub fn redis(url: &str, error: StoreError, hint: &'static str) -> Self {
        Self::Redis {
            url: redact_url(url),
            error,
            hint,
        }
    }

    /// Listening on `addr`, set by `--flag`, failed with `error`.
    pub fn listen(addr: SocketAddr, flag: &'static str, error: std::io::Error) -> Self {
        Self::Listen { addr, flag, error }
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
        let error = StartupError::redis(
            "redis://:hunter2@db.example:6380/0",
            StoreError::Unavailable("Connection refused (os error 111)".into()),
            SERVER_BACKEND_HINT,
        )
        .to_string();
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
