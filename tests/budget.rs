//! The server's memory under sockets that never read, against a real server process (embedded, and
//! distributed on the real RabbitMQ and Redis with a worker): many sockets each resume a finished
//! n = 10^6 (5.5 MB of digits) and read nothing; the sockets together stay within --max-buffered-bytes,
//! so the process's resident memory (VmRSS in /proc) grows by no more than that and a margin; the
//! socket that holds most and waited longest is closed, and other clients go on. Resumes count against
//! the submit allowance.

use std::net::SocketAddr;

use futures::{SinkExt, StreamExt};
use herald_protocol::{ErrorCode, ServerMessage};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::helpers::{
    eventually, metric, Client, Mode, Process, TestEnv, AMQP_URL, PATIENCE, REDIS_URL,
};

const MIB: u64 = 1024 * 1024;

/// The budget the server is given.
const BUDGET: u64 = 64 * MIB;

/// What the process may hold beyond the budget: a result on its way to a socket (the record read for
/// the resume and its JSON, 5.5 MB each) and the allocator's slack.
const MARGIN: u64 = 32 * MIB;

/// Sockets that never read: together they would hold 40 × 5.5 MB = 220 MB, far past budget and margin.
const SILENT_SOCKETS: usize = 40;

/// The process's resident memory, in bytes.
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .map(|v| v.trim().parse().unwrap())
        .expect("VmRSS in /proc/<pid>/status");
    kb * 1024
}

/// The value of `name` on the server's metrics page (0 if absent).
async fn counter(addr: SocketAddr, name: &str) -> u64 {
    metric(addr, name).await.map_or(0, |v| v as u64)
}

/// A WebSocket whose client takes almost nothing off the wire (a 4 KiB receive buffer), so that what
/// the server sends it stays in the server.
async fn silent_socket(addr: SocketAddr) -> WebSocketStream<TcpStream> {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .expect("the upgrade succeeds");
    ws
}

async fn sockets_that_never_read_stay_within_the_buffer_budget(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let mut args = match mode {
        Mode::Distributed => env.backend_flags(AMQP_URL, REDIS_URL),
        Mode::Embedded => Vec::new(),
    };
    args.extend(
        [
            "--listen",
            "127.0.0.1:0",
            "--submit-rate",
            "0",
            "--max-sockets-per-client",
            "0",
            "--max-buffered-bytes",
            &BUDGET.to_string(),
        ]
        .map(String::from),
    );
    let server = Process::start("herald-server", &args);
    let _worker = match mode {
        Mode::Distributed => Some(env.spawn_worker(2).await),
        Mode::Embedded => None,
    };
    let addr: SocketAddr = server.server_addr().await.parse().unwrap();
    let url = format!("ws://{addr}/ws");
    let mut reader = Client::connect(&url).await;
    let id = reader.submit(1_000_000).await;
    let digits = reader.digits_of(id).await;
    assert_eq!(digits, 5_565_709);
    // Once more, so that what a resume costs in passing is part of the baseline.
    reader.resume(id).await;
    assert_eq!(reader.digits_of(id).await, digits);
    let baseline = rss(server.pid());

    let mut silent = Vec::new();
    let mut peak = baseline;
    for i in 0..SILENT_SOCKETS {
        let pushed = counter(addr, "herald_messages_pushed_total").await;
        let mut ws = silent_socket(addr).await;
        let resume = serde_json::json!({"type": "resume", "id": id}).to_string();
        ws.send(Message::Text(resume.into())).await.unwrap();
        silent.push(ws);
        // The result has been pushed to it (or the socket closed in its place).
        eventually("the resume to be answered", || async {
            counter(addr, "herald_messages_pushed_total").await > pushed
        })
        .await;
        let now = rss(server.pid());
        peak = peak.max(now);
        assert!(
            now <= baseline + BUDGET + MARGIN,
            "after {} silent sockets the server holds {} MiB, from {} MiB: past the budget of {} MiB \
             and the margin of {} MiB",
            i + 1,
            now / MIB,
            baseline / MIB,
            BUDGET / MIB,
            MARGIN / MIB,
        );
    }
    // A frame let in while a closed socket's memory is on its way out may pass the budget for a
    // moment; then the sockets are back within it.
    eventually("the sockets to hold no more than the budget", || async {
        counter(addr, "herald_buffered_bytes").await <= BUDGET
    })
    .await;
    let closed = counter(addr, "herald_sockets_closed_buffers_total").await;
    assert!(
        closed as usize >= SILENT_SOCKETS - (BUDGET / (5 * MIB)) as usize,
        "only {closed} sockets closed"
    );
    eprintln!(
        "RSS {} MiB before, at most {} MiB with {SILENT_SOCKETS} silent sockets; {closed} closed",
        baseline / MIB,
        peak / MIB
    );

    // The first silent socket waited longest: it was closed, and never got its result whole.
    let mut first = silent.remove(0);
    let ended = tokio::time::timeout(PATIENCE, async {
        loop {
            match first.next().await {
                Some(Ok(Message::Text(text))) => panic!(
                    "a closed socket got a whole message of {} bytes",
                    text.len()
                ),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the first silent socket is still open");

    // Others go on: a small job, and the large result read whole by a client that reads.
    let small = reader.submit(10).await;
    assert_eq!(reader.output_of(small).await, "3628800");
    reader.resume(id).await;
    assert_eq!(reader.digits_of(id).await, digits);
    drop(silent);
}

#[tokio::test]
async fn sockets_that_never_read_stay_within_the_buffer_budget_embedded() {
    sockets_that_never_read_stay_within_the_buffer_budget(Mode::Embedded).await;
}

#[tokio::test]
async fn sockets_that_never_read_stay_within_the_buffer_budget_distributed() {
    sockets_that_never_read_stay_within_the_buffer_budget(Mode::Distributed).await;
}

#[tokio::test]
async fn resumes_count_against_the_submit_allowance() {
    let env = TestEnv::in_mode(Mode::Embedded);
    let mut settings = env.server_settings();
    settings.submit_rate = 1;
    settings.submit_burst = 3;
    let server = env.spawn_server_with(settings).await;
    let mut client = server.client().await;
    let id = client.submit(5).await;
    assert_eq!(client.output_of(id).await, "120");
    client.resume(id).await;
    assert_eq!(client.output_of(id).await, "120");
    client.resume(id).await;
    assert_eq!(client.output_of(id).await, "120");
    // The burst of 3 is spent: one submit and two resumes.
    client.resume(id).await;
    match client.recv().await {
        ServerMessage::Error(e) => {
            assert_eq!(e.code, ErrorCode::Busy);
            assert_eq!(e.id, Some(id));
            assert!(e.retry_after_ms.is_some_and(|ms| ms > 0));
        }
        other => panic!("expected busy, got {other:?}"),
    }
}
