//! Hostile input: random frames, invalid UTF-8, ping floods and odd query strings. Every frame gets a
//! reply or a clean close, and the service stays up.

use futures::SinkExt;
use herald_protocol::ServerMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::Mode;
use crate::helpers::TestEnv;

/// A small deterministic generator, so a failing case can be replayed from its seed.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// A frame that looks somewhat like what clients send, mutated at random.
fn random_frame(rng: &mut XorShift) -> String {
    const PIECES: &[&str] = &[
        "{",
        "}",
        "[",
        "]",
        "\"type\"",
        ":",
        ",",
        "\"submit\"",
        "\"resume\"",
        "\"n\"",
        "\"id\"",
        "\"ref\"",
        "12",
        "-7",
        "1e400",
        "0.5",
        "null",
        "true",
        "\"",
        "\\",
        "\u{0}",
        "é",
        "🙂",
        "99999999999999999999",
        " ",
        "\n",
        "\"6f1f4a52-2d3e-4c4a-9b0e-1c2d3e4f5a6b\"",
    ];
    let len = rng.below(24);
    let mut frame = String::new();
    for _ in 0..len {
        if rng.below(4) == 0 {
            frame.push(char::from_u32((rng.next() % 0x3000) as u32).unwrap_or('x'));
        } else {
            frame.push_str(PIECES[rng.below(PIECES.len())]);
        }
    }
    frame
}

/// Without a worker (in distributed mode), so that every message back is the reply to a frame.
#[tokio::test]
async fn every_random_frame_gets_exactly_one_reply() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let mut client = server.client().await;
    let seed = 0x5eed_u64 ^ std::process::id() as u64;
    let mut rng = XorShift(seed | 1);
    for round in 0..400 {
        let frame = random_frame(&mut rng);
        client.send_text(&frame).await;
        match client.recv().await {
            ServerMessage::Error(_) | ServerMessage::Accepted { .. } => {}
            other => panic!("seed {seed}, round {round}, frame {frame:?}: unexpected {other:?}"),
        }
    }
    client.expect_nothing_pending().await;
}

async fn invalid_utf8_in_a_text_frame_closes_with_1007(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_server().await;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url())
        .await
        .unwrap();
    let frame = Frame::message(vec![b'4', 0xff, 0xfe], OpCode::Data(Data::Text), true);
    ws.send(Message::Frame(frame)).await.unwrap();
    let mut client_side = crate::helpers::Client::from_stream(ws);
    match client_side.next_message().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Invalid),
        other => panic!("expected close 1007, got {other:?}"),
    }
    server.client().await.expect_nothing_pending().await;
}

async fn a_ping_flood_does_not_take_the_socket_down(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let mut client = server.client().await;
    for i in 0..5000u32 {
        client
            .send_message(Message::Ping(i.to_be_bytes().to_vec().into()))
            .await;
    }
    // Pongs come back (skipped by the client's reader); the socket still works.
    let id = client.submit(5).await;
    assert_eq!(client.output_of(id).await, "120");
}

async fn odd_query_strings_get_client_errors_never_server_errors(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_server().await;
    let http = reqwest::Client::new();
    let queries = [
        "/factorial?no=1&no=2",
        "/factorial?no=%00",
        "/factorial?no=%F0%9F%99%82",
        "/factorial?no=1%20",
        "/factorial?no=+5",
        "/factorial?no=0x10",
        "/factorial?=5",
        "/factorial?no",
        "/factorial?%%%",
        "/factorial/result?id=%FF%FE",
        "/factorial/result?id=6f1f4a52-2d3e-4c4a-9b0e-1c2d3e4f5a6b&id=x",
        "/factorial/result?id={6f1f4a52-2d3e-4c4a-9b0e-1c2d3e4f5a6b}",
        &format!("/factorial?no={}", "9".repeat(4000)),
    ];
    for query in queries {
        let response = http.get(server.http_url(query)).send().await.unwrap();
        let status = response.status();
        assert!(
            status.is_client_error() || status.is_success(),
            "{query}: {status}"
        );
    }
    assert_eq!(server.readyz().await, 200);
}

crate::both_modes!(
    invalid_utf8_in_a_text_frame_closes_with_1007,
    a_ping_flood_does_not_take_the_socket_down,
    odd_query_strings_get_client_errors_never_server_errors,
);
