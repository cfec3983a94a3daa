//! The WebSocket client side: connecting to the checked address, building submits, reading server frames.

use std::io;
use std::time::Duration;

use herald_protocol::ServerMessage;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::WebSocketStream;

use crate::target::Target;

/// An open WebSocket to the server.
pub type Socket = WebSocketStream<TcpStream>;

/// Why a socket could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The TCP connection failed.
    #[error("TCP connect failed: {0}")]
    Tcp(io::Error),
    /// TCP worked; the WebSocket handshake did not.
    #[error("WebSocket handshake failed: {0}")]
    Handshake(tungstenite::Error),
    /// Neither finished in time.
    #[error("no WebSocket after {0:?}")]
    Timeout(Duration),
}

impl ConnectError {
    /// A short label for counting failures by kind.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Tcp(e) => io_kind(e),
            Self::Handshake(tungstenite::Error::Io(e)) => io_kind(e),
            Self::Handshake(tungstenite::Error::Http(_)) => "handshake refused (HTTP status)",
            Self::Handshake(_) => "handshake failed",
            Self::Timeout(_) => "handshake timeout",
        }
    }

    /// This process ran out of file descriptors.
    pub fn is_local_emfile(&self) -> bool {
        self.kind() == EMFILE_LOCAL
    }
}

const EMFILE_LOCAL: &str = "EMFILE here (too many open files)";

/// A short label for an I/O error of a connection.
pub fn io_kind(e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EMFILE) | Some(libc::ENFILE) => return EMFILE_LOCAL,
        Some(libc::EADDRNOTAVAIL) => return "EADDRNOTAVAIL (out of local ports)",
        _ => {}
    }
    match e.kind() {
        io::ErrorKind::ConnectionRefused => "connection refused",
        io::ErrorKind::ConnectionReset => "connection reset",
        io::ErrorKind::ConnectionAborted => "connection aborted",
        io::ErrorKind::UnexpectedEof => "closed during handshake",
        io::ErrorKind::TimedOut => "TCP timeout",
        _ => "other I/O error",
    }
}

/// Opens a WebSocket to the target's checked loopback address within `limit`.
pub async fn connect(target: &Target, limit: Duration) -> Result<Socket, ConnectError> {
    connect_with(target, limit, None).await
}

/// [`connect`] with a WebSocket configuration (buffer sizes) other than the library's default.
pub async fn connect_with(
    target: &Target,
    limit: Duration,
    config: Option<WebSocketConfig>,
) -> Result<Socket, ConnectError> {
    let open = async {
        let stream = TcpStream::connect(target.addr)
            .await
            .map_err(ConnectError::Tcp)?;
        // Frames are small and latency is what is measured: do not let Nagle hold them back.
        stream.set_nodelay(true).map_err(ConnectError::Tcp)?;
        let (socket, _) =
            tokio_tungstenite::client_async_with_config(target.ws_url().as_str(), stream, config)
                .await
                .map_err(ConnectError::Handshake)?;
        Ok(socket)
    };
    tokio::time::timeout(limit, open)
        .await
        .unwrap_or(Err(ConnectError::Timeout(limit)))
}

/// A submit of n!, tagged so that its `accepted` (or `error`) can be matched to it.
pub fn submit_frame(n: u64, tag: u64) -> Message {
    Message::text(format!(r#"{{"type":"submit","n":{n},"ref":"{tag}"}}"#))
}

/// A frame from the server, sorted.
#[derive(Debug)]
pub enum Incoming {
    /// A valid server message (and its text, for reports).
    Message(ServerMessage, String),
    /// A text frame that is not a valid server message.
    Malformed {
        /// The frame.
        text: String,
        /// What the parser said.
        why: String,
    },
    /// A binary frame: the server never sends one.
    Binary(usize),
    /// Ping, pong: handled by the library.
    Control,
    /// The server closed the socket (code and reason, when it gave them).
    Closed(String),
}

/// Sorts one frame; every text frame is parsed as a [`ServerMessage`].
pub fn classify(message: Message) -> Incoming {
    match message {
        Message::Text(text) => match serde_json::from_str::<ServerMessage>(text.as_str()) {
            Ok(parsed) => Incoming::Message(parsed, text.as_str().to_owned()),
            Err(e) => Incoming::Malformed {
                text: text.as_str().to_owned(),
                why: e.to_string(),
            },
        },
        Message::Binary(bytes) => Incoming::Binary(bytes.len()),
        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Control,
        Message::Close(frame) => Incoming::Closed(match frame {
            Some(f) => format!("closed by server: {} {}", u16::from(f.code), f.reason),
            None => "closed by server".into(),
        }),
    }
}

/// Parses a tag this tool put in a submit.
pub fn parse_tag(tag: Option<&str>) -> Option<u64> {
    tag?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::{parse_client_frame, ClientMessage, ErrorCode, Submit, SubmitInput};

    #[test]
    fn submit_frames_are_what_the_server_parses() {
        let Message::Text(text) = submit_frame(150_000, 42) else {
            panic!("a text frame");
        };
        assert_eq!(
            parse_client_frame(text.as_str()),
            Ok(ClientMessage::Submit(Submit {
                model: None,
                input: SubmitInput::N(150_000),
                tag: Some("42".into()),
                key: None,
                webhook: None,
            }))
        );
    }

    #[test]
    fn frames_are_sorted() {
        let busy =
            r#"{"type":"error","code":"busy","message":"m","ref":"7","retry_after_ms":1000}"#;
        match classify(Message::text(busy)) {
            Incoming::Message(ServerMessage::Error(e), _) => {
                assert_eq!(e.code, ErrorCode::Busy);
                assert_eq!(parse_tag(e.tag.as_deref()), Some(7));
                assert_eq!(e.retry_after_ms, Some(1000));
            }
            other => panic!("{other:?}"),
        }
        for bad in [
            "nope",
            r#"{"type":"result","id":"x"}"#,
            r#"{"type":"hello"}"#,
        ] {
            assert!(
                matches!(classify(Message::text(bad)), Incoming::Malformed { .. }),
                "{bad}"
            );
        }
        assert!(matches!(
            classify(Message::binary(vec![1, 2])),
            Incoming::Binary(2)
        ));
        assert_eq!(parse_tag(Some("x")), None);
    }
}
