//! What gets in, against real server processes (embedded, and distributed on the real RabbitMQ and
//! Redis): only requests addressed to the server's own names (a DNS-rebinding page is refused), pages of
//! the server's own origin (scheme included), requests meant to create jobs (no HEAD, no cross-site
//! GET), and numbers exactly as written.

use std::net::SocketAddr;

use herald_protocol::{ErrorCode, ServerMessage};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};

use crate::helpers::{Client, Mode, Process, TestEnv, AMQP_URL, REDIS_URL};

/// A server process: embedded, or on this environment's RabbitMQ and Redis, with a worker in-process;
/// with `flags`. Returns the process, its address and the worker (distributed mode).
async fn start(
    env: &TestEnv,
    flags: &[&str],
) -> (Process, SocketAddr, Option<crate::helpers::TestWorker>) {
    let mut args = match env.mode {
        Mode::Distributed => env.backend_flags(AMQP_URL, REDIS_URL),
        Mode::Embedded => Vec::new(),
    };
    args.extend(["--listen", "127.0.0.1:0", "--submit-rate", "0"].map(String::from));
    args.extend(flags.iter().map(|flag| flag.to_string()));
    let server = Process::start("herald-server", &args);
    let addr = server
        .server_addr()
        .await
        .parse()
        .expect("a socket address");
    let worker = match env.mode {
        Mode::Distributed => Some(env.spawn_worker(1).await),
        Mode::Embedded => None,
    };
    (server, addr, worker)
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap()
}

/// The status of `method path` on `addr` with `headers`.
async fn status(
    addr: SocketAddr,
    method: reqwest::Method,
    path: &str,
    headers: &[(&str, &str)],
) -> u16 {
    let mut request = http().request(method, format!("http://{addr}{path}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.expect("an answer").status().as_u16()
}

async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> u16 {
    status(addr, reqwest::Method::GET, path, headers).await
}

/// A WebSocket upgrade to `addr` with `headers` (a `Host` replaces the URL's): the client, or the
/// status of the refusal.
async fn upgrade(addr: SocketAddr, headers: &[(&str, &str)]) -> Result<Client, u16> {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(Client::from_stream(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("the handshake failed without an HTTP answer: {e}"),
    }
}

/// The jobs this server took in over HTTP, from its metrics.
async fn http_submits(addr: SocketAddr) -> u64 {
    let page = http()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    page.lines()
        .find_map(|l| l.strip_prefix("herald_jobs_submitted_total{via=\"http\"} "))
        .map_or(0, |v| v.trim().parse().unwrap())
}

async fn a_loopback_server_answers_only_its_own_names(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let (_server, addr, _worker) = start(&env, &[]).await;
    let port = addr.port();
    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ] {
        assert_eq!(
            get(addr, "/factorial?no=5", &[("Host", &host)]).await,
            200,
            "{host}"
        );
        assert!(upgrade(addr, &[("Host", &host)]).await.is_ok(), "{host}");
    }
    // A DNS-rebinding page: its name in Host, and its Origin matching it.
    let rebound = format!("attacker.example:{port}");
    let page = format!("http://{rebound}");
    let attacker = [("Host", rebound.as_str()), ("Origin", page.as_str())];
    assert_eq!(upgrade(addr, &attacker).await.err(), Some(403));
    for path in [
        "/",
        "/factorial?no=5",
        "/models",
        "/readyz",
        "/metrics",
        "/nowhere",
    ] {
        assert_eq!(get(addr, path, &attacker).await, 403, "{path}");
    }
    let posted = http()
        .post(format!("http://{addr}/jobs"))
        .header("Host", &rebound)
        .body(r#"{"n":5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 403);
    assert_eq!(
        get(addr, "/healthz", &attacker).await,
        200,
        "/healthz stays open"
    );
    assert_eq!(
        http_submits(addr).await,
        3,
        "only the loopback submits went in"
    );

    // An https page is not the http server's, even on its own name.
    let own = format!("127.0.0.1:{port}");
    let https = format!("https://{own}");
    assert_eq!(
        upgrade(addr, &[("Host", &own), ("Origin", &https)])
            .await
            .err(),
        Some(403)
    );
    let http_page = format!("http://{own}");
    assert!(upgrade(addr, &[("Host", &own), ("Origin", &http_page)])
        .await
        .is_ok());

    // --allowed-hosts names others.
    let (_named, named_addr, _named_worker) =
        start(&env, &["--allowed-hosts", "herald.example.com"]).await;
    let named = format!("herald.example.com:{}", named_addr.port());
    assert_eq!(
        get(named_addr, "/factorial?no=5", &[("Host", &named)]).await,
        200
    );
    let other = format!("attacker.example:{}", named_addr.port());
    assert_eq!(
        get(named_addr, "/factorial?no=5", &[("Host", &other)]).await,
        403
    );
}

#[tokio::test]
async fn a_loopback_server_answers_only_its_own_names_embedded() {
    a_loopback_server_answers_only_its_own_names(Mode::Embedded).await;
}

#[tokio::test]
async fn a_loopback_server_answers_only_its_own_names_distributed() {
    a_loopback_server_answers_only_its_own_names(Mode::Distributed).await;
}

async fn only_intended_requests_create_jobs(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let (_server, addr, _worker) = start(&env, &[]).await;
    assert_eq!(
        status(addr, reqwest::Method::HEAD, "/factorial?no=7", &[]).await,
        405
    );
    let evil = [("Origin", "http://evil.example")];
    assert_eq!(get(addr, "/factorial?no=7", &evil).await, 403);
    let img = [("Sec-Fetch-Site", "cross-site")];
    assert_eq!(get(addr, "/factorial?no=7", &img).await, 403);
    let https_page = format!("https://{addr}");
    assert_eq!(
        get(addr, "/factorial?no=7", &[("Origin", &https_page)]).await,
        403
    );
    assert_eq!(http_submits(addr).await, 0, "none of those created a job");
    if mode == Mode::Distributed {
        let mut redis = env.redis().await;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}job:*", env.backend.redis_prefix))
            .query_async(&mut redis)
            .await
            .unwrap();
        assert!(keys.is_empty(), "{keys:?}");
    }
    // Scripts, curl, the page itself and same-site pages go on.
    let own_page = format!("http://{addr}");
    for headers in [
        &[][..],
        &[("Origin", own_page.as_str())],
        &[("Sec-Fetch-Site", "same-origin")],
        &[("Sec-Fetch-Site", "none")],
    ] {
        assert_eq!(
            get(addr, "/factorial?no=7", headers).await,
            200,
            "{headers:?}"
        );
    }
    assert_eq!(http_submits(addr).await, 4);
    // Reading stays possible from anywhere: HEAD of a read creates nothing either.
    assert_eq!(
        status(addr, reqwest::Method::HEAD, "/healthz", &[]).await,
        200
    );
}

#[tokio::test]
async fn only_intended_requests_create_jobs_embedded() {
    only_intended_requests_create_jobs(Mode::Embedded).await;
}

#[tokio::test]
async fn only_intended_requests_create_jobs_distributed() {
    only_intended_requests_create_jobs(Mode::Distributed).await;
}

/// What a WebSocket submit of `frame` is answered: an error's code and message, or `None` if accepted
/// (once its result has come).
async fn ws_answer(client: &mut Client, frame: &str) -> Option<(ErrorCode, String)> {
    client.send_text(frame).await;
    match client.recv().await {
        ServerMessage::Accepted { id, .. } => {
            client.result_of(id).await;
            None
        }
        ServerMessage::Error(e) => Some((e.code, e.message)),
        other => panic!("{frame}: unexpected {other:?}"),
    }
}

/// `POST /jobs` with `body`: status and body.
async fn post(addr: SocketAddr, body: &str) -> (u16, String) {
    let response = http()
        .post(format!("http://{addr}/jobs"))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

async fn numbers_are_read_exactly_as_written(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let (_server, addr, _worker) = start(&env, &[]).await;
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    // Each form on every API: a WebSocket submit (object and bare frame), the jobs API (`n` and
    // `input`), and the classic API.
    for (text, code, status) in [
        ("1.5", ErrorCode::BadRequest, 400),
        ("1.5e0", ErrorCode::BadRequest, 400),
        ("-0", ErrorCode::BadRequest, 400),
        ("-5", ErrorCode::BadRequest, 400),
        ("1e-400", ErrorCode::BadRequest, 400),
        ("1000000.0000000001", ErrorCode::BadRequest, 400),
        ("1000001", ErrorCode::TooLarge, 413),
        ("99999999999999999999999", ErrorCode::TooLarge, 413),
    ] {
        for frame in [
            format!(r#"{{"type":"submit","n":{text}}}"#),
            format!(r#"{{"type":"submit","model":"factorial","input":{{"n":{text}}}}}"#),
            text.to_owned(),
        ] {
            let (got, message) = ws_answer(&mut client, &frame)
                .await
                .unwrap_or_else(|| panic!("{frame} was accepted"));
            assert_eq!(got, code, "{frame}: {message}");
            assert!(message.contains("\"n\""), "{frame}: {message}");
        }
        for body in [
            format!(r#"{{"n":{text}}}"#),
            format!(r#"{{"model":"factorial","input":{{"n":{text}}}}}"#),
        ] {
            let (got, message) = post(addr, &body).await;
            assert_eq!(got, status, "{body}: {message}");
            assert!(message.contains("\\\"n\\\""), "{body}: {message}");
        }
        let query = text.replace('+', "%2B");
        assert_eq!(
            get(addr, &format!("/factorial?no={query}"), &[]).await,
            400,
            "{text}"
        );
    }
    // A JSON number that is exactly whole is that number however it is written (JSON, and the
    // `integer` of the OpenAPI document, do not tell 10.0 from 10): nothing is rounded. A query string
    // is not JSON: `no` takes digits only.
    for (text, n) in [("10.0", 10), ("1e3", 1000), ("1E3", 1000), ("1500e-2", 15)] {
        for frame in [
            format!(r#"{{"type":"submit","n":{text}}}"#),
            format!(r#"{{"type":"submit","model":"factorial","input":{{"n":{text}}}}}"#),
            text.to_owned(),
        ] {
            assert_eq!(ws_answer(&mut client, &frame).await, None, "{frame}");
        }
        for body in [
            format!(r#"{{"n":{text}}}"#),
            format!(r#"{{"model":"factorial","input":{{"n":{text}}}}}"#),
        ] {
            let (status, answer) = post(addr, &body).await;
            assert_eq!(status, 202, "{body}: {answer}");
            let id = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_owned();
            let job: serde_json::Value = serde_json::from_str(
                &http()
                    .get(format!("http://{addr}/jobs/{id}"))
                    .send()
                    .await
                    .unwrap()
                    .text()
                    .await
                    .unwrap(),
            )
            .unwrap();
            assert_eq!(job["input"], serde_json::json!({ "n": n }), "{body}");
        }
        assert_eq!(
            get(addr, &format!("/factorial?no={text}"), &[]).await,
            400,
            "{text}"
        );
    }
    for query in ["no=5&no=6", "no=%2B5", "no=", "no=0x10", "n=5"] {
        assert_eq!(
            get(addr, &format!("/factorial?{query}"), &[]).await,
            400,
            "{query}"
        );
    }
    // What is accepted, is accepted everywhere.
    assert_eq!(
        ws_answer(&mut client, r#"{"type":"submit","n":10}"#).await,
        None
    );
    assert_eq!(ws_answer(&mut client, "10").await, None);
    assert_eq!(post(addr, r#"{"n":10}"#).await.0, 202);
    assert_eq!(get(addr, "/factorial?no=10", &[]).await, 200);
}

#[tokio::test]
async fn numbers_are_read_exactly_as_written_embedded() {
    numbers_are_read_exactly_as_written(Mode::Embedded).await;
}

#[tokio::test]
async fn numbers_are_read_exactly_as_written_distributed() {
    numbers_are_read_exactly_as_written(Mode::Distributed).await;
}
