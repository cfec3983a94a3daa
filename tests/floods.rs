//! Connection floods and dead peers, against real server processes: request headers that never finish
//! are cut at the header timeout, a request left without an answer gets 408 at the request timeout,
//! WebSockets that stop answering are pinged and closed (their jobs stay resumable), and past
//! --max-connections, or past --max-sockets-per-client connections from one address that have not
//! upgraded, a new connection is refused at once while the open ones go on.

use std::net::SocketAddr;
use std::time::Duration;

use herald_protocol::{Outcome, ServerMessage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::MaybeTlsStream;

use crate::helpers::{
    eventually, metric, Client, Mode, Process, Proxy, TestEnv, AMQP_URL, PATIENCE, REDIS_URL,
};

/// A server process: embedded, or on this environment's RabbitMQ and Redis; with `flags`.
async fn start_server(env: &TestEnv, flags: &[&str]) -> (Process, SocketAddr) {
    let mut args = match env.mode {
        Mode::Distributed => env.backend_flags(AMQP_URL, REDIS_URL),
        Mode::Embedded => Vec::new(),
    };
    args.extend(["--listen", "127.0.0.1:0"].map(String::from));
    args.extend(flags.iter().map(|flag| flag.to_string()));
    let server = Process::start("herald-server", &args);
    let addr = server
        .server_addr()
        .await
        .parse()
        .expect("a socket address");
    (server, addr)
}

/// An HTTP client that keeps no idle connection: one left open would be cut at the header timeout
/// and counted with the slow clients.
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// A TCP connection to `addr` from the loopback address `from` (127.0.0.x: another client).
async fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind((from, 0).into()).unwrap();
    socket.connect(addr).await.expect("the server accepts")
}

/// Everything the server sends until it closes the connection (a reset counts as a close).
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(PATIENCE, stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server never closed the connection");
    answer
}

/// The status line and headers of a refusal written before any request was read.
async fn refusal(stream: &mut TcpStream) -> String {
    let answer = read_to_close(stream).await;
    String::from_utf8(answer).expect("a text answer")
}

#[tokio::test]
async fn request_headers_that_never_finish_are_cut_while_others_are_served() {
    let env = TestEnv::in_mode(Mode::Embedded);
    let (server, addr) = start_server(&env, &["--header-timeout-secs", "2"]).await;
    let log = server.log_text();
    assert!(
        log.contains("open-file limit") && log.contains("90 % of the file limit"),
        "the file limit and the cap are logged: {log}"
    );

    // 200 clients on 10 addresses (20 each, under the default 32 per address) start a request and
    // then send one more header byte every 300 ms, never finishing: the deadline does not move.
    let slow: Vec<_> = (0..200u8)
        .map(|i| {
            tokio::spawn(async move {
                let mut stream = connect_from([127, 0, 0, 10 + i % 10], addr).await;
                stream
                    .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\nX-Slow: ")
                    .await
                    .unwrap();
                let mut answer = Vec::new();
                let mut chunk = [0u8; 256];
                let deadline = tokio::time::Instant::now() + PATIENCE;
                loop {
                    tokio::select! {
                        read = stream.read(&mut chunk) => match read {
                            Ok(0) | Err(_) => return answer,
                            Ok(n) => answer.extend_from_slice(&chunk[..n]),
                        },
                        () = tokio::time::sleep(Duration::from_millis(300)) => {
                            if stream.write_all(b"a").await.is_err() {
                                // Closed by the server: read what it may have sent.
                                let _ = stream.read_to_end(&mut answer).await;
                                return answer;
                            }
                        }
                    }
                    assert!(
                        tokio::time::Instant::now() < deadline,
                        "a slow connection was never closed"
                    );
                }
            })
        })
        .collect();

    // Meanwhile another client is served, over HTTP and over a WebSocket.
    let health = http()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    let id = client.submit(10).await;
    assert_eq!(client.output_of(id).await, "3628800");

    for task in slow {
        let answer = task.await.unwrap();
        assert!(
            answer.is_empty(),
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(
        metric(addr, "herald_connections_header_timeouts_total").await,
        Some(200.0)
    );
    // The WebSocket, upgraded long before, was not concerned.
    let id = client.submit(5).await;
    assert_eq!(client.output_of(id).await, "120");
}

/// WebSockets that complete their handshake and then never read (so never answer a ping) are closed
/// after the ping interval and timeout; a pending job of theirs is resumed from another socket. In
/// distributed mode the job waits in RabbitMQ (no worker yet) while its socket dies.
async fn silent_websockets_are_pinged_then_closed(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let (_server, addr) = start_server(
        &env,
        &["--ping-interval-secs", "1", "--ping-timeout-secs", "1"],
    )
    .await;
    let url = format!("ws://{addr}/ws");
    let mut silent = Vec::new();
    for _ in 0..5 {
        silent.push(Client::connect(&url).await);
    }
    let id = silent[0].submit(20).await;
    assert_eq!(metric(addr, "herald_sockets_open").await, Some(5.0));
    // From here on no test socket is read, so none answers a ping.
    eventually("the silent sockets to be closed", || async {
        metric(addr, "herald_sockets_open").await == Some(0.0)
    })
    .await;
    assert_eq!(
        metric(addr, "herald_sockets_ping_timeouts_total").await,
        Some(5.0)
    );
    let pings = metric(addr, "herald_pings_sent_total").await.unwrap_or(0.0);
    assert!(pings >= 5.0, "{pings} pings sent");

    // What a silent client finds once it reads again: the ping it never answered, then the close.
    // (The job's result may come before them, in embedded mode where it runs at once.)
    let mut first = silent.swap_remove(0);
    let mut seen = Vec::new();
    let close = loop {
        match first.next_message().await {
            Some(Message::Close(frame)) => break frame.expect("a close code"),
            Some(other) => seen.push(other),
            None => panic!("closed without a Close frame after {seen:?}"),
        }
    };
    assert!(
        seen.iter().any(|m| matches!(m, Message::Ping(_))),
        "{seen:?}"
    );
    assert_eq!(close.code, CloseCode::Away);
    assert_eq!(close.reason, "no answer to ping; resume by request ID");

    // The job goes on, and another socket resumes it.
    let _worker = match mode {
        Mode::Distributed => Some(env.spawn_worker(1).await),
        Mode::Embedded => None,
    };
    let mut again = Client::connect(&url).await;
    again.resume(id).await;
    let result = loop {
        match again.recv().await {
            ServerMessage::Status { .. } => continue,
            ServerMessage::Result(result) if result.id == id => break result,
            other => panic!("expected the result of {id}, got {other:?}"),
        }
    };
    match result.outcome {
        Outcome::Done { output, .. } => assert_eq!(output.get(), "\"2432902008176640000\""),
        other => panic!("expected done, got {other:?}"),
    }
}

crate::both_modes!(silent_websockets_are_pinged_then_closed);

#[tokio::test]
async fn past_max_connections_a_new_one_is_refused_and_open_sessions_go_on() {
    let env = TestEnv::in_mode(Mode::Embedded);
    let (server, addr) = start_server(&env, &["--max-connections", "3"]).await;
    assert!(
        server
            .log_text()
            .contains("at most 3 connections (--max-connections)"),
        "{}",
        server.log_text()
    );
    let url = format!("ws://{addr}/ws");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut client = Client::connect(&url).await;
        client.expect_nothing_pending().await;
        held.push(client);
    }

    // The fourth is answered at once, before it sends anything, and closed.
    let mut refused = 0;
    let mut fourth = TcpStream::connect(addr).await.unwrap();
    let answer = refusal(&mut fourth).await;
    refused += 1;
    assert!(
        answer.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nretry-after: 1\r\n"), "{answer}");
    // A WebSocket client sees the status as its handshake's answer.
    match tokio_tungstenite::connect_async(&url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503);
            refused += 1;
        }
        other => panic!("expected a 503, got {other:?}"),
    }

    // The sessions already open are not disturbed: each still submits and gets its result.
    for (n, client) in (3u64..).zip(held.iter_mut()) {
        let id = client.submit(n).await;
        let digits = (1..=n).product::<u64>().to_string();
        assert_eq!(client.output_of(id).await, digits);
    }

    // A closed one frees its place.
    held.pop().unwrap().close().await;
    let served = loop {
        match http().get(format!("http://{addr}/metrics")).send().await {
            Ok(response) if response.status() == 200 => break response.text().await.unwrap(),
            Ok(response) => {
                assert_eq!(response.status(), 503);
                refused += 1;
            }
            Err(e) => panic!("{e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let counted = served
        .lines()
        .find_map(|l| {
            l.strip_prefix("herald_connections_refused_total{limit=\"max_connections\"} ")
        })
        .and_then(|v| v.trim().parse::<f64>().ok());
    assert_eq!(counted, Some(f64::from(refused)), "{served}");
    let id = held[0].submit(3).await;
    assert_eq!(held[0].output_of(id).await, "6");
}

#[tokio::test]
async fn an_address_holds_only_so_many_connections_that_have_not_upgraded() {
    let env = TestEnv::in_mode(Mode::Embedded);
    let (_server, addr) = start_server(&env, &["--max-sockets-per-client", "2"]).await;
    // Two connections from 127.0.0.20 that send nothing yet.
    let mut quiet = vec![
        connect_from([127, 0, 0, 20], addr).await,
        connect_from([127, 0, 0, 20], addr).await,
    ];
    // A third from there is refused at once with 429 and Retry-After.
    let mut third = connect_from([127, 0, 0, 20], addr).await;
    let answer = refusal(&mut third).await;
    assert!(
        answer.starts_with("HTTP/1.1 429 Too Many Requests\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nretry-after: 5\r\n"), "{answer}");
    // Another address has its own allowance.
    let mut other = connect_from([127, 0, 0, 21], addr).await;
    other
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(read_to_close(&mut other).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");

    // The held connections still work; once one has upgraded to a WebSocket it counts among the
    // address's sockets instead, and its place among connections is free again.
    let held = MaybeTlsStream::Plain(quiet.remove(0));
    let (socket, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), held)
        .await
        .expect("the held connection upgrades");
    let mut socket = Client::from_stream(socket);
    socket.expect_nothing_pending().await;
    let mut fourth = connect_from([127, 0, 0, 20], addr).await;
    fourth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: herald\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(read_to_close(&mut fourth).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert_eq!(
        metric(
            addr,
            "herald_connections_refused_total{limit=\"per_client\"}"
        )
        .await,
        Some(1.0)
    );
    drop(quiet);
}

#[tokio::test]
async fn a_request_left_without_an_answer_gets_408_at_the_request_timeout() {
    // Redis behind a proxy that goes silent: a poll waits on it (the store gives up only after 5 s).
    let env = TestEnv::new();
    let redis = Proxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let mut args = env.backend_flags(AMQP_URL, &redis.redis_url());
    args.extend(["--listen", "127.0.0.1:0", "--request-timeout-secs", "1"].map(String::from));
    let server = Process::start("herald-server", &args);
    let addr: SocketAddr = server.server_addr().await.parse().unwrap();
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    client.expect_nothing_pending().await;

    redis.stall();
    let poll = format!("http://{addr}/factorial/result?id={}", uuid::Uuid::new_v4());
    let response = http().get(&poll).send().await.unwrap();
    assert_eq!(response.status(), 408);
    // The server stays up; the WebSocket, not a request, is not cut.
    let health = http()
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    client.send_text("bad").await;
    client
        .expect_error(herald_protocol::ErrorCode::BadRequest)
        .await;
}
