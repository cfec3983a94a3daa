//! The WebSocket upgrade: the origin and token checks that come before it, and the per-client socket
//! limit.

use std::net::SocketAddr;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{ConnectInfo, State, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use herald_protocol::{ErrorCode, ErrorMessage};

use crate::auth;
use crate::limits::{self, SOCKET_RETRY_AFTER};
use crate::AppState;

/// `GET /ws`: checks the origin (403) and the token (401) before upgrading, then runs a session; a
/// client already holding as many sockets as it may gets `busy` and a Close frame instead.
///
/// OpenAPI describes the handshake only: the messages that follow are in docs/protocol.md.
#[utoipa::path(get, path = "/ws", tag = "websocket",
    params(
        ("Connection" = String, Header, pattern = "^[Uu]pgrade$", description = "`Upgrade` (RFC 6455)."),
        ("Upgrade" = String, Header, pattern = "^websocket$", description = "`websocket`."),
        ("Sec-WebSocket-Version" = String, Header, pattern = "^13$", description = "`13`."),
        ("Sec-WebSocket-Key" = String, Header, pattern = "^[A-Za-z0-9+/]{21}[AQgw]==$",
            description = "16 random bytes in base64."),
        ("Sec-WebSocket-Protocol" = Option<String>, Header,
            description = "`herald`, and `bearer.<token>` to send the token (authentication on)."),
    ),
    responses(
        (status = 101, description = "Switching to the WebSocket protocol: a session runs (a client over \
            its socket limit gets a `busy` message and a Close frame)."),
        (status = 400, description = "Not a WebSocket handshake.", body = String, content_type = "text/plain"),
        (status = 401, description = "No valid token (authentication on).", body = String,
            content_type = "text/plain", headers(("WWW-Authenticate" = String))),
        (status = 403, description = "The page's origin may not open a socket here (--allowed-origins).",
            body = String, content_type = "text/plain"),
        (status = 426, description = "The connection cannot be upgraded.", body = String,
            content_type = "text/plain"),
    ),
    security(("bearer" = []), ("token_query" = [])))]
pub async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !state.origins.allows(&headers, &uri) {
        return (
            StatusCode::FORBIDDEN,
            "this page's origin may not open a socket here",
        )
            .into_response();
    }
    // Browsers cannot set headers on a WebSocket: the token may also come as a subprotocol or in the query.
    let query = auth::query_token(&uri);
    let token = auth::bearer_header(&headers)
        .or_else(|| auth::bearer_protocol(&headers))
        .or(query.as_deref());
    let caller = match state.caller(token, peer.ip()) {
        Ok(caller) => caller,
        Err(e) => return e.into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return rejection.into_response(),
    };
    // A submit is its input plus a little; a larger frame closes the socket with 1009.
    let max_frame = state.settings.max_input_bytes + herald_protocol::FRAME_OVERHEAD_BYTES;
    // tungstenite's default 128 KiB read buffer is zero-filled on the first read, and every idle
    // socket keeps it. Requests are a few dozen bytes: 1 KiB still takes a burst of them in one read,
    // and frames above it (up to the limit) are read in more steps.
    let ws = ws
        .protocols([auth::WS_PROTOCOL])
        .read_buffer_size(1024)
        .max_message_size(max_frame)
        .max_frame_size(max_frame);
    match state.limits.open_socket(caller.key.clone()) {
        Some(slot) => ws.on_upgrade(move |socket| crate::session::run(socket, state, caller, slot)),
        None => {
            // Told over the socket rather than with a 429: a browser never shows a script the status
            // of a refused upgrade.
            let busy = ErrorMessage {
                retry_after_ms: Some(limits::retry_after_ms(SOCKET_RETRY_AFTER)),
                ..ErrorMessage::new(
                    ErrorCode::Busy,
                    "too many sockets open for this client; close one or try again later",
                )
            };
            ws.on_upgrade(move |socket| crate::session::refuse(socket, busy))
        }
    }
}
