//! Reaching the backends: a RabbitMQ cluster through its list of nodes, tried in turn (lapin connects
//! to one URL only), and the wait with backoff while a backend that has not come up yet is expected to.
//!
//! A failure is either transient (nothing listens yet, the connection dropped, the node is shutting
//! down, Redis is still loading its data) or permanent (a wrong password, an unknown vhost, a queue
//! declared with other arguments). At start-up the binaries wait through transient failures, logging
//! each try with the address it went to, and stop at a permanent one with a message naming it.

use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};
use tracing::{info, warn};

use crate::settings::Secret;

/// Longest wait for one node to answer a connection: past it the next node is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// First pause between two tries at start-up; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(250);

/// Longest pause between two tries.
pub const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A failure that may go away by itself if the same thing is tried again later.
pub trait Transient {
    /// Whether trying again later may succeed.
    fn is_transient(&self) -> bool;
}

/// Whether a RabbitMQ failure may go away: the node is not listening yet, the connection dropped or
/// timed out, or the broker closed it because it is stopping. A refused login or an unknown vhost
/// does not go away by waiting.
pub fn amqp_failure_is_transient(error: &lapin::Error) -> bool {
    use lapin::ErrorKind;
    match error.kind() {
        ErrorKind::IOError(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::InvalidChannelState(..) => true,
        ErrorKind::ProtocolError(amqp) => {
            use lapin::protocol::{AMQPErrorKind, AMQPHardError};
            matches!(
                amqp.kind(),
                AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED)
                    | AMQPErrorKind::Hard(AMQPHardError::INTERNALERROR)
            )
        }
        _ => false,
    }
}

/// The nodes of a RabbitMQ cluster (or the one broker), by URL.
///
/// Each connection goes to the node after the one the previous connection went to, so a client whose
/// node went away moves on to the next instead of waiting for it; with one URL, that is always it.
pub struct AmqpNodes {
    urls: Vec<Secret>,
    next: AtomicUsize,
}

impl fmt::Debug for AmqpNodes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.urls.iter().map(|url| node_address(url.expose())))
            .finish()
    }
}

/// `host:port` of an AMQP URL, without its credentials (for logs and errors).
pub fn node_address(url: &str) -> String {
    match url.parse::<lapin::uri::AMQPUri>() {
        Ok(uri) => format!("{}:{}", uri.authority.host, uri.authority.port),
        Err(_) => "an invalid URL".to_owned(),
    }
}

/// What one round over the nodes met: each node's address and its failure.
#[derive(Debug)]
pub struct Attempts(pub Vec<(String, lapin::Error)>);

impl fmt::Display for Attempts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (node, error)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{node}: {error}")?;
        }
        Ok(())
    }
}

/// Why RabbitMQ cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AmqpError {
    /// No node took the connection.
    #[error("could not connect to any node ({0})")]
    Unreachable(Attempts),
    /// A node took the connection and then failed or refused something.
    #[error("node {node}: {error}")]
    Node {
        /// The node's `host:port`.
        node: String,
        /// What it answered.
        error: lapin::Error,
    },
}

impl Transient for AmqpError {
    fn is_transient(&self) -> bool {
        match self {
            // One node's lasting refusal (a wrong password) is the whole cluster's: all share users.
            Self::Unreachable(Attempts(attempts)) => attempts
                .iter()
                .all(|(_, error)| amqp_failure_is_transient(error)),
            Self::Node { error, .. } => amqp_failure_is_transient(error),
        }
    }
}

impl AmqpNodes {
    /// The nodes at `urls`, in the order given (already checked by the settings).
    pub fn new<S: AsRef<str>>(urls: &[S]) -> Self {
        assert!(!urls.is_empty(), "at least one RabbitMQ URL");
        Self {
            urls: urls.iter().map(|url| Secret::from(url.as_ref())).collect(),
            next: AtomicUsize::new(0),
        }
    }

    /// The nodes' `host:port`, comma-separated (no credentials).
    pub fn addresses(&self) -> String {
        self.urls
            .iter()
            .map(|url| node_address(url.expose()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Connects to the first node that answers, starting after the one connected to last; each node
    /// is tried once, for at most [`CONNECT_TIMEOUT`]. Returns the connection and the node's
    /// `host:port`.
    pub async fn connect(
        &self,
        properties: &ConnectionProperties,
    ) -> Result<(Connection, String), AmqpError> {
        let start = self.next.load(Ordering::Relaxed);
        let mut attempts = Vec::new();
        for offset in 0..self.urls.len() {
            let index = (start + offset) % self.urls.len();
            let url = self.urls[index].expose();
            let node = node_address(url);
            let connected = tokio::time::timeout(
                CONNECT_TIMEOUT,
                Connection::connect(url, properties.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(lapin::Error::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no answer within {} s", CONNECT_TIMEOUT.as_secs()),
                )))
            });
            match connected {
                Ok(connection) => {
                    self.next.store(index + 1, Ordering::Relaxed);
                    return Ok((connection, node));
                }
                Err(error) => attempts.push((node, error)),
            }
        }
        Err(AmqpError::Unreachable(Attempts(attempts)))
    }
}

/// Runs `attempt` until it succeeds, waiting with backoff through transient failures, and logging
/// each one with `what` (the backend, its address without a password, and its flag: see
/// [`crate::startup::rabbitmq`]) and `hint` (what to do). A permanent failure is returned at once.
/// Meant for start-up, where a backend started at the same time (by Docker Compose or Kubernetes)
/// may not be up yet; a caller that must give up sooner wraps it in a timeout or a select on its
/// shutdown.
pub async fn wait_for<T, E, F, Fut>(what: &str, hint: &str, mut attempt: F) -> Result<T, E>
where
    E: Transient + fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = FIRST_BACKOFF;
    let mut failures = 0u32;
    loop {
        match attempt().await {
            Ok(value) => {
                if failures > 0 {
                    info!("{what} answers, after {failures} failed tries");
                }
                return Ok(value);
            }
            Err(e) if e.is_transient() => {
                failures += 1;
                warn!(
                    "cannot use {what} yet ({e}); trying again in {} ms. {hint}",
                    backoff.as_millis()
                );
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_addresses_hide_credentials() {
        let nodes = AmqpNodes::new(&[
            "amqp://user:secret@rabbit-1:5672/%2f",
            "amqp://user:secret@rabbit-2:5673/herald",
        ]);
        assert_eq!(nodes.addresses(), "rabbit-1:5672, rabbit-2:5673");
        assert!(!format!("{nodes:?}").contains("secret"));
    }

    #[tokio::test]
    async fn a_round_tries_each_node_once_and_names_them_all() {
        // Two ports nothing listens on: both are tried, both named, and the failure is transient.
        let dead = [
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
            std::net::TcpListener::bind("127.0.0.1:0").unwrap(),
        ];
        let ports: Vec<u16> = dead
            .iter()
            .map(|l| l.local_addr().unwrap().port())
            .collect();
        drop(dead);
        let urls: Vec<String> = ports
            .iter()
            .map(|p| format!("amqp://guest:pw@127.0.0.1:{p}/%2f"))
            .collect();
        let nodes = AmqpNodes::new(&urls);
        let Err(error) = nodes.connect(&ConnectionProperties::default()).await else {
            panic!("nothing listens");
        };
        let text = error.to_string();
        for port in ports {
            assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        }
        assert!(!text.contains("pw"), "{text}");
        assert!(error.is_transient(), "{text}");
    }
}
