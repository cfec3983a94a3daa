//! Bad input over WebSocket: each gets its documented error, and the connection keeps working.

use herald_protocol::{ErrorCode, ServerMessage};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::Mode;
use crate::helpers::TestEnv;

async fn every_bad_input_gets_its_error_and_the_socket_stays_usable(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let mut settings = env.server_settings();
    settings.backend.max_n = 5000;
    let server = env.spawn_app_with(settings).await;
    let mut client = server.client().await;

    let bad_requests = [
        "not json",
        "[1, 2]",
        "{}",
        r#"{"type":"explode"}"#,
        r#"{"type":"submit"}"#,
        r#"{"type":"submit","n":-4}"#,
        r#"{"type":"submit","n":2.5}"#,
        r#"{"type":"submit","n":"12"}"#,
        "-4",
        "2.5",
        r#"{"type":"resume"}"#,
        r#"{"type":"resume","id":"not-an-id"}"#,
        r#"{"type":"resume","id":17}"#,
        "",
    ];
    for frame in bad_requests {
        client.send_text(frame).await;
        client.expect_error(ErrorCode::BadRequest).await;
    }

    client
        .send_json(serde_json::json!({"type":"submit","n":-1,"ref":"neg"}))
        .await;
    let error = client.expect_error(ErrorCode::BadRequest).await;
    assert_eq!(error.tag.as_deref(), Some("neg"), "ref echoed in errors");

    client
        .send_json(serde_json::json!({"type":"submit","n":5001,"ref":"big"}))
        .await;
    let error = client.expect_error(ErrorCode::TooLarge).await;
    assert_eq!(error.tag.as_deref(), Some("big"));
    client.send_text("99999999999999999999999999").await;
    client.expect_error(ErrorCode::TooLarge).await;

    let unknown = uuid::Uuid::new_v4();
    client.resume(unknown).await;
    let error = client.expect_error(ErrorCode::NotFound).await;
    assert_eq!(error.id, Some(unknown));

    client
        .send_message(Message::Binary(vec![1, 2, 3].into()))
        .await;
    client.expect_error(ErrorCode::BadRequest).await;

    // After all of that, the same socket still works end to end.
    let id = client.submit(6).await;
    assert_eq!(client.output_of(id).await, "720");
}

async fn a_frame_over_the_limit_closes_with_1009(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let settings = env.server_settings();
    // A frame may hold an input of --max-input-bytes and a little more for the other fields.
    let limit = settings.max_input_bytes + herald_protocol::FRAME_OVERHEAD_BYTES;
    let server = env.spawn_server_with(settings).await;
    let mut client = server.client().await;
    // Just under the limit is read (and refused as a bad request), not a reason to close.
    let padding = " ".repeat(limit - 100);
    client.send_text(&format!("{padding}nope")).await;
    match client.recv().await {
        ServerMessage::Error(e) => assert_eq!(e.code, ErrorCode::BadRequest),
        other => panic!("expected an error, got {other:?}"),
    }
    client.send_text(&"7".repeat(limit + 1)).await;
    match client.next_message().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Size),
        other => panic!("expected a close frame with 1009, got {other:?}"),
    }
    // The server is unharmed: a new socket works.
    let mut again = server.client().await;
    again.expect_nothing_pending().await;
}

crate::both_modes!(
    every_bad_input_gets_its_error_and_the_socket_stays_usable,
    a_frame_over_the_limit_closes_with_1009,
);
