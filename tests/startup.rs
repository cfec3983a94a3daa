//! What a person starting the binaries reads: the distributed server names its mode and backends, a
//! start-up failure names the address it tried (never a password) and what to do, and logs written
//! to a file carry no terminal colour codes. Real processes, their stderr in a file.

use std::net::{SocketAddr, TcpListener};

use crate::helpers::{eventually, Process, TestEnv, AMQP_URL, REDIS_URL};

/// A loopback address where nothing listens: bound by the OS, then released.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The first log line that mentions `needle`, waiting for it to be written (the process may also exit
/// first: its last words are then in the log).
async fn line_naming(process: &Process, needle: &str) -> String {
    let mut found = None;
    eventually(&format!("a log line naming {needle}"), || {
        found = process
            .log_text()
            .lines()
            .find(|line| line.contains(needle))
            .map(str::to_owned);
        std::future::ready(found.is_some())
    })
    .await;
    found.unwrap()
}

/// Panics if the log holds an ANSI escape: a file is not a terminal.
fn assert_no_colour(process: &Process) {
    let log = process.log_text();
    assert!(!log.is_empty(), "the process logged nothing");
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log written to a file ({}):\n{log}",
        process.log.display()
    );
}

#[tokio::test]
async fn backends_that_cannot_be_reached_are_named_with_what_to_do() {
    const PASSWORD: &str = "pw-b7c41e9a";
    let env = TestEnv::new();
    let nowhere = closed_port();
    let broker = format!("amqp://herald:{PASSWORD}@{nowhere}/%2f");
    let redis = format!("redis://:{PASSWORD}@{nowhere}");
    for (binary, amqp, redis, flag) in [
        ("herald-server", broker.as_str(), REDIS_URL, "--amqp-url"),
        ("herald-server", AMQP_URL, redis.as_str(), "--redis-url"),
        ("herald-worker", broker.as_str(), REDIS_URL, "--amqp-url"),
        ("herald-worker", AMQP_URL, redis.as_str(), "--redis-url"),
    ] {
        let mut args = env.backend_flags(amqp, redis);
        if binary == "herald-server" {
            args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        }
        let mut process = Process::start(binary, &args);
        // Nothing listens there: the binary waits (a backend may be starting beside it), and each
        // try's line names the address as the user wrote it (host:port), the flag, and what to do.
        let line = line_naming(&process, "cannot use").await;
        assert!(line.contains(" yet ("), "{binary} waits: {line}");
        assert!(line.contains(&nowhere.to_string()), "{binary}: {line}");
        assert!(line.contains(flag), "{binary} should name {flag}: {line}");
        assert!(
            line.contains("scripts/services.sh"),
            "{binary} should say how to start the backends: {line}"
        );
        assert!(
            !process.log_text().contains(PASSWORD),
            "{binary} logged the password:\n{}",
            process.log_text()
        );
        // SIGTERM ends the wait cleanly.
        process.terminate();
        assert!(
            process.wait().await.success(),
            "{binary}: {}",
            process.log_text()
        );
        assert_no_colour(&process);
    }
}

#[tokio::test]
async fn an_address_in_use_is_named_with_what_to_do() {
    let env = TestEnv::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();

    // The server (embedded: it needs nothing else to get as far as listening).
    let mut server = Process::start("herald-server", &["--listen".to_owned(), addr.clone()]);
    assert!(!server.wait().await.success(), "the server cannot listen");
    let line = line_naming(&server, "cannot listen").await;
    assert!(
        line.contains(&format!("cannot listen on {addr} (--listen): ")),
        "{line}"
    );
    assert!(line.contains("choose a free port with --listen"), "{line}");

    // A worker's metrics endpoint.
    let mut worker = env.start_worker_process(&["--metrics-listen", &addr]);
    assert!(!worker.wait().await.success(), "the worker cannot listen");
    let line = line_naming(&worker, "cannot listen").await;
    assert!(
        line.contains(&format!("cannot listen on {addr} (--metrics-listen): ")),
        "{line}"
    );
    drop(taken);
}

#[tokio::test]
async fn the_distributed_server_logs_its_mode_and_backends_without_passwords() {
    let env = TestEnv::new();
    let mut args = env.backend_flags(AMQP_URL, REDIS_URL);
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let mut server = Process::start("herald-server", &args);
    server.server_addr().await;
    let line = line_naming(&server, "DISTRIBUTED mode").await;
    for expected in [
        "RabbitMQ at 127.0.0.1:5672 (--amqp-url)",
        "Redis at 127.0.0.1:6379 (--redis-url)",
        &format!("queue={}", env.backend.queue),
        &format!("reply_exchange={}", env.backend.reply_exchange),
        &format!("redis_prefix={}", env.backend.redis_prefix),
    ] {
        assert!(line.contains(expected), "no {expected} in: {line}");
    }
    assert!(!line.contains("guest:guest"), "{line}");
    assert_no_colour(&server);
    server.kill().await;
}

#[tokio::test]
async fn logs_written_to_a_file_carry_no_colour_codes() {
    // Embedded: no services needed. Its stderr is a file here, as under systemd or `2>server.log`.
    let mut server = Process::start(
        "herald-server",
        &["--listen".to_owned(), "127.0.0.1:0".to_owned()],
    );
    server.server_addr().await;
    assert!(server.log_text().contains("EMBEDDED mode"));
    assert_no_colour(&server);
    server.kill().await;
}

#[tokio::test]
async fn a_server_with_no_worker_says_so_and_keeps_the_jobs_until_one_comes() {
    let env = TestEnv::new();
    let mut args = env.backend_flags(AMQP_URL, REDIS_URL);
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let mut server = Process::start("herald-server", &args);
    let addr = server.server_addr().await;
    let http = |path: &str| {
        let url = format!("http://{addr}{path}");
        async move {
            let response = reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    // Ready (the server itself works), and the body says what is missing.
    let (status, body) = http("/readyz").await;
    assert_eq!(status, 200);
    assert!(body.contains("no worker serves: factorial"), "{body}");
    // The job is taken, with the news that nobody computes it yet.
    let mut client = crate::helpers::Client::connect(&format!("ws://{addr}/ws")).await;
    client.send_text("10").await;
    let id = match client.recv().await {
        herald_protocol::ServerMessage::Accepted { id, workers, .. } => {
            assert_eq!(workers, Some(0));
            id
        }
        other => panic!("expected accepted, got {other:?}"),
    };
    line_naming(&server, "no worker serves the model factorial").await;
    let (_, metrics) = http("/metrics").await;
    assert!(
        metrics.contains("herald_model_workers{model=\"factorial\"} 0"),
        "{metrics}"
    );
    // A worker that comes later computes it: it waited, durably queued.
    let _worker = env.spawn_worker(1).await;
    assert_eq!(client.output_of(id).await, "3628800");
    eventually("readyz to stop mentioning a missing worker", || async {
        http("/readyz").await == (200, "ready".to_owned())
    })
    .await;
    assert_no_colour(&server);
    server.kill().await;
}
