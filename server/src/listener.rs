//! The accept loop: every connection is served by hyper's HTTP/1 with a deadline on request headers and
//! a timeout on plain requests; connections are bounded in number (--max-connections in all, and
//! --max-sockets-per-client per address until they upgrade to a WebSocket) and refused at once past
//! either bound; on shutdown the server stops accepting and waits, bounded, for every connection to
//! close (sessions send their Close frames themselves).

use std::io;
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode};
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use prometheus_client::metrics::gauge::Gauge;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;
use tower_http::timeout::TimeoutLayer;
use tracing::{debug, info, warn};

use crate::limits::{Limits, SOCKET_RETRY_AFTER};
use crate::metrics::{RefusedLabel, ServerMetrics};

/// Longest wait for open connections to close once the server stops: sessions need up to 5 s to
/// write their Close frame, and a plain request in progress is let finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Pause after `accept` fails for another reason than the connection itself (out of files): retrying
/// at once would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Refused connections being answered at once at most; past it they are closed without an answer, so
/// that a flood of them cannot take the files the cap keeps free.
const REFUSALS_AT_ONCE: usize = 64;

/// How long a refused connection is kept to read what its client sent, after the answer: closing with
/// unread data resets the connection, and the client might lose the answer.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// How long a client refused at --max-connections is asked to wait.
const FULL_RETRY_AFTER: Duration = Duration::from_secs(1);

/// What the accept loop needs besides the listener and the routes.
pub struct Serving {
    /// --max-connections.
    pub max_connections: u32,
    /// --header-timeout-secs.
    pub header_timeout: Duration,
    /// --request-timeout-secs.
    pub request_timeout: Duration,
    /// Counts connections per address.
    pub limits: Arc<Limits>,
    /// Counts what the limits did.
    pub metrics: Arc<ServerMetrics>,
}

/// Serves `app` on `listener` until `shutdown` is cancelled, then waits (at most 10 s) until every
/// connection has closed.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    serving: Serving,
    shutdown: CancellationToken,
) {
    let Serving {
        max_connections,
        header_timeout,
        request_timeout,
        limits,
        metrics,
    } = serving;
    // The deadline runs until the response starts: a download that has begun is not cut, and the
    // WebSocket handler answers at once (its session is not a request).
    let app = app.layer(TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        request_timeout,
    ));
    let mut http = http1::Builder::new();
    // The timer is what makes hyper enforce the header deadline; it runs from a connection's start, and
    // again from the end of each response on a kept-alive connection.
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let open = Arc::new(Semaphore::new(max_connections as usize));
    let refusals = Arc::new(Semaphore::new(REFUSALS_AT_ONCE));
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    warn!(error = %e, "accept failed; retrying shortly");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            refuse(stream, Refusal::ServerFull, &refusals, &metrics);
            continue;
        };
        let Some(pending) = limits.open_connection(peer.ip()) else {
            refuse(stream, Refusal::ClientFull, &refusals, &metrics);
            continue;
        };
        // Small frames (accepted, status, results of small jobs) must not wait for Nagle's algorithm.
        if let Err(e) = stream.set_nodelay(true) {
            debug!(error = %e, "could not set TCP_NODELAY");
        }
        let io = Counted::new(stream, permit, metrics.connections_open.clone());
        // The peer's address is what limits count against when there is no identity.
        let service = app
            .clone()
            .map_request(move |mut request: Request<Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request.map(Body::new)
            });
        let connection = http
            .serve_connection(TokioIo::new(io), TowerToHyperService::new(service))
            .with_upgrades();
        let stopping = shutdown.clone();
        let metrics = metrics.clone();
        tokio::spawn(async move {
            // Counted against its address until it ends or upgrades: hyper hands an upgraded
            // connection to its WebSocket session and returns.
            let _pending = pending;
            let mut connection = pin!(connection);
            let outcome = tokio::select! {
                outcome = connection.as_mut() => outcome,
                () = stopping.cancelled() => {
                    // Idle connections close now; a request in progress gets its answer first.
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            match outcome {
                Ok(()) => {}
                Err(e) if e.is_timeout() => {
                    metrics.header_timeouts.inc();
                    debug!(%peer, "request headers did not arrive in time: connection closed");
                }
                Err(e) => debug!(%peer, error = %e, "connection ended with an error"),
            }
        });
    }
    drop(listener);
    let open_now = metrics.connections_open.get();
    if open_now > 0 {
        info!(
            connections = open_now,
            "waiting for open connections to close"
        );
    }
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, open.acquire_many(max_connections)).await;
    if drained.is_err() {
        warn!(
            connections = metrics.connections_open.get(),
            "connections still open {DRAIN_TIMEOUT:?} after the shutdown began; dropping them"
        );
    }
}

/// Errors of one incoming connection, not of the listener: the next `accept` works.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Why a connection is refused before anything is read from it.
#[derive(Clone, Copy)]
enum Refusal {
    /// The server holds --max-connections.
    ServerFull,
    /// The peer's address holds --max-sockets-per-client connections that have not upgraded.
    ClientFull,
}

impl Refusal {
    fn label(self) -> &'static str {
        match self {
            Self::ServerFull => "max_connections",
            Self::ClientFull => "per_client",
        }
    }

    /// The whole HTTP answer: a status, `Retry-After` and a plain sentence, then the connection closes.
    fn response(self) -> String {
        let (status, wait, body) = match self {
            Self::ServerFull => (
                "503 Service Unavailable",
                FULL_RETRY_AFTER,
                "the server holds as many connections as it may; try again shortly",
            ),
            Self::ClientFull => (
                "429 Too Many Requests",
                SOCKET_RETRY_AFTER,
                "too many connections from this address; close one or try again later",
            ),
        };
        format!(
            "HTTP/1.1 {status}\r\nretry-after: {}\r\ncontent-type: text/plain; charset=utf-8\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            crate::limits::retry_after_secs(wait),
            body.len(),
        )
    }
}

/// Refuses a connection at once, without reading a request from it: an answer is written (when not too
/// many refusals are in progress already) and the connection closed.
fn refuse(
    mut stream: TcpStream,
    refusal: Refusal,
    refusals: &Arc<Semaphore>,
    metrics: &ServerMetrics,
) {
    metrics
        .connections_refused
        .get_or_create(&RefusedLabel {
            limit: refusal.label(),
        })
        .inc();
    let Ok(permit) = refusals.clone().try_acquire_owned() else {
        return;
    };
    tokio::spawn(async move {
        let _permit = permit;
        let _ = tokio::time::timeout(REFUSAL_LINGER, async {
            stream.write_all(refusal.response().as_bytes()).await?;
            stream.shutdown().await?;
            let mut discard = [0; 512];
            while stream.read(&mut discard).await? > 0 {}
            Ok::<_, io::Error>(())
        })
        .await;
    });
}

/// An accepted connection that holds its place under --max-connections, and in the open-connections
/// gauge, for as long as its socket is open, through an upgrade to a WebSocket too.
struct Counted {
    stream: TcpStream,
    _permit: OwnedSemaphorePermit,
    open: Gauge,
}

impl Counted {
    fn new(stream: TcpStream, permit: OwnedSemaphorePermit, open: Gauge) -> Self {
        open.inc();
        Self {
            stream,
            _permit: permit,
            open,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
