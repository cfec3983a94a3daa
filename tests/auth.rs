//! Who may do what: authentication by static tokens and JWTs, jobs that only their owner can see, the
//! Origin check, limits per client, secrets kept out of logs, and random request IDs.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use herald_protocol::{ErrorCode, ErrorMessage, JobId, ServerMessage};
use herald_server::auth::sign_jwt;
use reqwest::StatusCode;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::{
    eventually, try_connect, Client, Process, TestEnv, TestServer, AMQP_URL, PATIENCE, REDIS_URL,
};

const ALICE: &str = "alice-token-6f1f4a522d3e4c4a";
const BOB: &str = "bob-token-9b0e1c2d3e4f5a6b";
const TOKENS: [(&str, &str); 2] = [("alice", ALICE), ("bob", BOB)];
const JWT_SECRET: &str = "jwt-secret-for-tests-0123456789abcdef";

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn bearer(token: &str) -> (&'static str, String) {
    ("Authorization", format!("Bearer {token}"))
}

/// Connects with `Authorization: Bearer <token>`; panics if refused.
async fn connect_as(server: &TestServer, token: &str) -> Client {
    let (name, value) = bearer(token);
    try_connect(&server.ws_url(), &[(name, &value)])
        .await
        .unwrap_or_else(|status| panic!("refused with {status}"))
        .0
}

/// Status and body of `GET path`, with a bearer token if given.
async fn get(server: &TestServer, path: &str, token: Option<&str>) -> (StatusCode, String) {
    let mut request = reqwest::Client::new().get(server.http_url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.text().await.unwrap())
}

async fn expect_error(client: &mut Client) -> ErrorMessage {
    match client.recv().await {
        ServerMessage::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test]
async fn without_a_valid_token_only_the_open_routes_answer() {
    let env = TestEnv::new();
    let server = env
        .spawn_server_with(env.server_settings_with_tokens(&TOKENS))
        .await;
    let url = server.ws_url();
    // Refused with 401 before any upgrade: no token, a wrong one, wherever it is put.
    assert_eq!(try_connect(&url, &[]).await.err(), Some(401));
    let (name, wrong) = bearer("wrong-token-0123456789");
    assert_eq!(try_connect(&url, &[(name, &wrong)]).await.err(), Some(401));
    let offered = "herald, bearer.wrong-token-0123456789";
    assert_eq!(
        try_connect(&url, &[("Sec-WebSocket-Protocol", offered)])
            .await
            .err(),
        Some(401)
    );
    let query = format!("{url}?token=wrong-token-0123456789");
    assert_eq!(try_connect(&query, &[]).await.err(), Some(401));
    // Even a plain GET that is no upgrade at all hears 401 first, not a WebSocket error.
    let (status, _) = get(&server, "/ws", None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    for path in ["/factorial?no=5", "/factorial/result?id=nope"] {
        for token in [None, Some("wrong-token-0123456789")] {
            let response = reqwest::Client::new().get(server.http_url(path));
            let response = match token {
                Some(token) => response.bearer_auth(token),
                None => response,
            };
            let response = response.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{path} {token:?}"
            );
            let challenge = response.headers()["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Bearer"), "{challenge}");
            assert_eq!(challenge.contains("invalid_token"), token.is_some());
        }
    }
    // The jobs API answers the same 401, with its JSON body; a submit's body is not even read.
    let id = uuid::Uuid::new_v4();
    let jobs_api = [
        reqwest::Method::POST,
        reqwest::Method::GET,
        reqwest::Method::DELETE,
        reqwest::Method::GET,
        reqwest::Method::GET,
    ]
    .into_iter()
    .zip([
        "/jobs".to_owned(),
        format!("/jobs/{id}"),
        format!("/jobs/{id}"),
        format!("/jobs/{id}/output"),
        "/models".to_owned(),
    ]);
    for (method, path) in jobs_api {
        for token in [None, Some("wrong-token-0123456789")] {
            let request = reqwest::Client::new()
                .request(method.clone(), server.http_url(&path))
                .body(r#"{"input":{"n":5}}"#);
            let request = match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            };
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{method} {path}"
            );
            assert!(response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer"));
            let body: serde_json::Value =
                serde_json::from_str(&response.text().await.unwrap()).unwrap();
            assert_eq!(body["code"], "unauthorized", "{method} {path}: {body}");
        }
    }
    // HTTP takes the token from the header only, not from the query.
    let (status, _) = get(&server, &format!("/factorial?no=5&token={ALICE}"), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    for path in ["/", "/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(get(&server, path, None).await.0, StatusCode::OK, "{path}");
    }
    // Refused submits stored nothing.
    let mut redis = env.redis().await;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}*", env.backend.redis_prefix))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(keys.is_empty(), "{keys:?}");
}

#[tokio::test]
async fn a_token_works_in_the_header_the_subprotocol_or_the_query() {
    let env = TestEnv::new();
    let server = env
        .spawn_server_with(env.server_settings_with_tokens(&TOKENS))
        .await;
    let _worker = env.spawn_worker(1).await;
    let url = server.ws_url();

    // Non-browser clients (websocat -H) can send the header; no subprotocol was offered, none is chosen.
    let (name, value) = bearer(ALICE);
    let (mut by_header, protocol) = try_connect(&url, &[(name, &value)]).await.unwrap();
    assert_eq!(protocol, None);
    // Browsers offer `herald, bearer.<token>`: the server must answer with `herald`, or they drop it.
    let offered = format!("herald, bearer.{ALICE}");
    let (mut by_protocol, protocol) = try_connect(&url, &[("Sec-WebSocket-Protocol", &offered)])
        .await
        .unwrap();
    assert_eq!(protocol.as_deref(), Some("herald"));
    let (mut by_query, _) = try_connect(&format!("{url}?token={ALICE}"), &[])
        .await
        .unwrap();

    for client in [&mut by_header, &mut by_protocol, &mut by_query] {
        let id = client.submit(10).await;
        assert_eq!(client.output_of(id).await, "3628800");
    }
    // All three are alice: a job submitted on one socket can be resumed on another.
    let id = by_header.submit(12).await;
    assert_eq!(by_header.output_of(id).await, "479001600");
    by_query.resume(id).await;
    assert_eq!(by_query.output_of(id).await, "479001600");

    // HTTP takes `Authorization: Bearer`; jobs submitted over HTTP belong to the same identity.
    let (status, id) = get(&server, "/factorial?no=10", Some(ALICE)).await;
    assert_eq!(status, StatusCode::OK);
    let id: JobId = id.parse().unwrap();
    by_protocol.resume(id).await;
    match by_protocol.recv().await {
        ServerMessage::Status { id: got, .. } => {
            assert_eq!(got, id);
            assert_eq!(by_protocol.output_of(id).await, "3628800");
        }
        ServerMessage::Result(result) => assert_eq!(result.id, id),
        other => panic!("expected the job, got {other:?}"),
    }
    eventually("the polled job to finish", || async {
        let (status, body) = get(&server, &format!("/factorial/result?id={id}"), Some(ALICE)).await;
        assert_eq!(status, StatusCode::OK);
        body.contains("\"done\"")
    })
    .await;
}

#[tokio::test]
async fn jwts_name_the_identity_and_expired_ones_are_refused() {
    let env = TestEnv::new();
    let mut settings = env.server_settings();
    settings.jwt_secret = Some(JWT_SECRET.into());
    let server = env.spawn_server_with(settings).await;
    let _worker = env.spawn_worker(1).await;
    let url = server.ws_url();
    let secret = JWT_SECRET.as_bytes();
    let carol = sign_jwt(secret, "carol", now_secs() + 600).unwrap();
    let dave = sign_jwt(secret, "dave", now_secs() + 600).unwrap();
    let expired = sign_jwt(secret, "carol", now_secs() - 3600).unwrap();
    let forged = sign_jwt(
        b"some-other-secret-0123456789abcdef",
        "carol",
        now_secs() + 600,
    )
    .unwrap();

    for bad in [&expired, &forged] {
        let (name, value) = bearer(bad);
        assert_eq!(try_connect(&url, &[(name, &value)]).await.err(), Some(401));
        let offered = format!("herald, bearer.{bad}");
        let refused = try_connect(&url, &[("Sec-WebSocket-Protocol", &offered)]).await;
        assert_eq!(refused.err(), Some(401));
        assert_eq!(
            try_connect(&format!("{url}?token={bad}"), &[]).await.err(),
            Some(401)
        );
        let (status, _) = get(&server, "/factorial?no=5", Some(bad)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
    }

    let offered = format!("herald, bearer.{carol}");
    let (mut as_carol, protocol) = try_connect(&url, &[("Sec-WebSocket-Protocol", &offered)])
        .await
        .unwrap();
    assert_eq!(protocol.as_deref(), Some("herald"));
    let id = as_carol.submit(20).await;
    assert_eq!(as_carol.output_of(id).await, "2432902008176640000");
    // The identity is the `sub`: carol's job is hers, not dave's.
    assert_eq!(
        env.record_field(&id, "owner").await.as_deref(),
        Some("carol")
    );
    let (status, _) = get(&server, &format!("/factorial/result?id={id}"), Some(&carol)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&server, &format!("/factorial/result?id={id}"), Some(&dave)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn another_identitys_job_reads_as_unknown_and_is_not_watched() {
    let env = TestEnv::new();
    let a = env
        .spawn_server_with(env.server_settings_with_tokens(&TOKENS))
        .await;
    let b = env
        .spawn_server_with(env.server_settings_with_tokens(&TOKENS))
        .await;
    // No worker yet: the job stays queued, so a resume would register a watcher if it were allowed to.
    let mut alice = connect_as(&a, ALICE).await;
    let id = alice.submit(20).await;
    assert_eq!(
        env.record_field(&id, "owner").await.as_deref(),
        Some("alice")
    );

    let mut bob_on_a = connect_as(&a, BOB).await;
    let (mut bob_on_b, _) = try_connect(&format!("{}?token={BOB}", b.ws_url()), &[])
        .await
        .unwrap();
    let unknown = JobId::new_v4();
    for bob in [&mut bob_on_a, &mut bob_on_b] {
        bob.resume(id).await;
        let refused = expect_error(bob).await;
        bob.resume(unknown).await;
        let missing = expect_error(bob).await;
        // Exactly the answer to an unknown ID, so IDs cannot be probed.
        assert_eq!(refused.code, ErrorCode::NotFound);
        assert_eq!(
            refused,
            ErrorMessage {
                id: Some(id),
                ..missing
            }
        );
    }
    // Only alice's instance watches the job, once: bob's resumes registered nothing in Redis.
    let mut redis = env.redis().await;
    let watchers: HashMap<String, i64> = redis::cmd("HGETALL")
        .arg(env.backend.keys().watchers(&id))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(watchers, HashMap::from([(a.instance.clone(), 1)]));

    // The polling API answers bob exactly as for an unknown ID; alice sees her job.
    let stranger = get(&a, &format!("/factorial/result?id={id}"), Some(BOB)).await;
    let missing = get(&a, &format!("/factorial/result?id={unknown}"), Some(BOB)).await;
    assert_eq!(stranger.0, StatusCode::NOT_FOUND);
    assert_eq!(stranger, missing);
    let (status, body) = get(&b, &format!("/factorial/result?id={id}"), Some(ALICE)).await;
    assert_eq!(
        (status, body.contains("processing")),
        (StatusCode::OK, true)
    );

    // The job finishes: alice hears of it, bob's sockets hear nothing, and a finished job stays hidden.
    let _worker = env.spawn_worker(1).await;
    assert_eq!(alice.output_of(id).await, "2432902008176640000");
    for bob in [&mut bob_on_a, &mut bob_on_b] {
        bob.expect_nothing_pending().await;
        bob.resume(id).await;
        assert_eq!(expect_error(bob).await.code, ErrorCode::NotFound);
    }
    let stranger = get(&b, &format!("/factorial/result?id={id}"), Some(BOB)).await;
    assert_eq!(stranger.0, StatusCode::NOT_FOUND);
    let mut alice_again = connect_as(&b, ALICE).await;
    alice_again.resume(id).await;
    assert_eq!(alice_again.output_of(id).await, "2432902008176640000");
}

#[tokio::test]
async fn a_stranger_resuming_while_jobs_finish_hears_nothing_of_them() {
    let env = TestEnv::new();
    let server = env
        .spawn_server_with(env.server_settings_with_tokens(&TOKENS))
        .await;
    let mut alice = connect_as(&server, ALICE).await;
    let mut ids = Vec::new();
    for n in 0..90 {
        ids.push(alice.submit(5000 + n).await);
    }
    // Bob, on the instance that receives the completions, resumes every job again and again while they
    // finish: a result arriving between one of his resumes and its answer must not reach him.
    let mut bob = connect_as(&server, BOB).await;
    let _worker = env.spawn_worker(1).await;
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let finished = done.clone();
    let results = tokio::spawn(async move {
        for _ in 0..90 {
            assert!(matches!(alice.recv().await, ServerMessage::Result(_)));
        }
        finished.store(true, std::sync::atomic::Ordering::SeqCst);
    });
    while !done.load(std::sync::atomic::Ordering::SeqCst) {
        for id in &ids {
            bob.resume(*id).await;
        }
        for _ in &ids {
            match bob.recv().await {
                ServerMessage::Error(e) => assert_eq!(e.code, ErrorCode::NotFound),
                ServerMessage::Result(r) => panic!("bob was told the result of alice's {}", r.id),
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    bob.expect_nothing_pending().await;
    results.await.unwrap();
}

#[tokio::test]
async fn pages_from_other_origins_are_refused() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let url = server.ws_url();
    // Default: only pages of the host the request went to.
    let own = format!("http://{}", server.addr);
    assert!(try_connect(&url, &[("Origin", &own)]).await.is_ok());
    assert!(
        try_connect(&url, &[]).await.is_ok(),
        "no Origin: not a browser"
    );
    for evil in [
        "http://evil.example",
        "http://127.0.0.1:1",
        &format!("http://localhost:{}", server.addr.port()),
        "null",
    ] {
        assert_eq!(
            try_connect(&url, &[("Origin", evil)]).await.err(),
            Some(403),
            "{evil}"
        );
    }

    // With an allow-list, its origins and only they may.
    let mut settings = env.server_settings_with_tokens(&TOKENS);
    settings.allowed_origins = vec!["https://app.example.com".into()];
    let listed = env.spawn_server_with(settings).await;
    let (name, token) = bearer(ALICE);
    let auth = (name, token.as_str());
    let url = listed.ws_url();
    let app = ("Origin", "https://app.example.com");
    let (mut client, _) = try_connect(&url, &[auth, app]).await.unwrap();
    client.expect_nothing_pending().await;
    let own = format!("http://{}", listed.addr);
    // A good token does not make up for a refused origin, nor a good origin for a missing token.
    assert_eq!(
        try_connect(&url, &[auth, ("Origin", &own)]).await.err(),
        Some(403)
    );
    assert_eq!(try_connect(&url, &[app]).await.err(), Some(401));
}

#[tokio::test]
async fn a_flood_of_submits_gets_busy_then_429_per_client() {
    let env = TestEnv::new();
    let mut settings = env.server_settings_with_tokens(&TOKENS);
    settings.submit_rate = 1;
    settings.submit_burst = 5;
    let server = env.spawn_server_with(settings).await;
    let mut alice = connect_as(&server, ALICE).await;
    const FLOOD: usize = 12;
    for i in 0..FLOOD {
        alice
            .send_json(serde_json::json!({"type":"submit","n":5,"ref":i.to_string()}))
            .await;
    }
    let (mut accepted, mut busy) = (0, Vec::new());
    for _ in 0..FLOOD {
        match alice.recv().await {
            ServerMessage::Accepted { .. } => accepted += 1,
            ServerMessage::Error(e) => busy.push(e),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The burst goes through (plus what the rate refilled meanwhile); the rest is `busy`.
    assert!(accepted >= 5 && !busy.is_empty(), "{accepted} accepted");
    for e in &busy {
        assert_eq!(e.code, ErrorCode::Busy);
        assert!(e.tag.is_some(), "the ref is echoed");
        let wait = e.retry_after_ms.expect("busy says when to retry");
        assert!((1..=1000).contains(&wait), "{wait} ms");
    }

    // The allowance is the identity's, over HTTP too: 429 with Retry-After.
    let mut refused = None;
    for _ in 0..5 {
        let response = reqwest::Client::new()
            .get(server.http_url("/factorial?no=5"))
            .bearer_auth(ALICE)
            .send()
            .await
            .unwrap();
        if response.status() == StatusCode::TOO_MANY_REQUESTS {
            refused = Some(response);
            break;
        }
    }
    let refused = refused.expect("alice's HTTP submits are refused too");
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry_after >= 1);

    // Bob has an allowance of his own.
    let mut bob = connect_as(&server, BOB).await;
    bob.submit(5).await;
    // Once the wait is over, alice may submit again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    alice.submit(5).await;

    // Without authentication the client is its address: sockets and HTTP from 127.0.0.1 share one.
    let mut settings = env.server_settings();
    settings.submit_rate = 1;
    settings.submit_burst = 2;
    let open = env.spawn_server_with(settings).await;
    let mut client = open.client().await;
    client.submit(5).await;
    let (status, _) = get(&open, "/factorial?no=5", None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&open, "/factorial?no=5", None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    client
        .send_json(serde_json::json!({"type":"submit","n":5}))
        .await;
    assert_eq!(expect_error(&mut client).await.code, ErrorCode::Busy);
}

/// The next thing on a socket refused for too many sockets: `busy`, then Close 1013.
async fn expect_refused_socket(client: &mut Client) {
    let busy = expect_error(client).await;
    assert_eq!(busy.code, ErrorCode::Busy);
    assert!(busy.retry_after_ms.unwrap() > 0);
    match client.next_message().await {
        Some(Message::Close(Some(frame))) => assert_eq!(frame.code, CloseCode::Again),
        other => panic!("expected close 1013, got {other:?}"),
    }
}

#[tokio::test]
async fn too_many_sockets_per_client_are_refused() {
    let env = TestEnv::new();
    let mut settings = env.server_settings_with_tokens(&TOKENS);
    settings.max_sockets_per_client = 2;
    let server = env.spawn_server_with(settings).await;
    let mut first = connect_as(&server, ALICE).await;
    let mut second = connect_as(&server, ALICE).await;
    first.expect_nothing_pending().await;
    second.expect_nothing_pending().await;
    let mut third = connect_as(&server, ALICE).await;
    expect_refused_socket(&mut third).await;
    // Another identity is counted apart.
    let mut bob = connect_as(&server, BOB).await;
    bob.expect_nothing_pending().await;
    // A closed socket gives its slot back.
    first.close().await;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let mut client = connect_as(&server, ALICE).await;
        client.resume(JobId::new_v4()).await;
        if expect_error(&mut client).await.code == ErrorCode::NotFound {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "alice's closed socket never gave its slot back"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Without authentication the limit is per address.
    let mut settings = env.server_settings();
    settings.max_sockets_per_client = 1;
    let open = env.spawn_server_with(settings).await;
    let mut only = open.client().await;
    only.expect_nothing_pending().await;
    let mut extra = open.client().await;
    expect_refused_socket(&mut extra).await;
}

#[tokio::test]
async fn request_ids_are_random_v4_uuids() {
    let env = TestEnv::new();
    let server = env.spawn_server().await;
    let mut client = server.client().await;
    let mut ids = Vec::new();
    for _ in 0..8 {
        ids.push(client.submit(3).await);
    }
    let (_, id) = get(&server, "/factorial?no=3", None).await;
    ids.push(id.parse().unwrap());
    for id in &ids {
        assert_eq!(id.get_version(), Some(uuid::Version::Random), "{id}");
        assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 9);
}

#[tokio::test]
async fn authentication_off_is_logged_as_a_warning() {
    let env = TestEnv::new();
    let mut args = env.backend_flags(AMQP_URL, REDIS_URL);
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let open = Process::start("herald-server", &args);
    open.server_addr().await;
    let log = open.log_text();
    let warning = log
        .lines()
        .find(|l| l.contains("authentication is OFF"))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(warning.contains("WARN"), "{warning}");

    let tokens = format!("alice:{ALICE}");
    let on = Process::start_with_env("herald-server", &args, &[("HERALD_AUTH_TOKENS", &tokens)]);
    on.server_addr().await;
    let log = on.log_text();
    assert!(log.contains("authentication is on"), "{log}");
    assert!(!log.contains("authentication is OFF"), "{log}");
}

#[tokio::test]
async fn passwords_and_tokens_stay_out_of_logs_errors_and_help() {
    const AMQP_PASSWORD: &str = "amqp-pw-5e1f0c2b";
    const REDIS_PASSWORD: &str = "redis-pw-7a3d9e41";
    let env = TestEnv::new();

    // Backends that cannot be used, with passwords in their URLs. One that refuses the password stops
    // the server with an error naming what failed; one where nothing listens yet is waited for, the
    // server saying where it tries, until it is stopped. Neither shows the password, even with every
    // log line on.
    let no_broker = format!("amqp://herald:{AMQP_PASSWORD}@127.0.0.1:1/%2f");
    let wrong_broker_password = format!("amqp://guest:{AMQP_PASSWORD}@127.0.0.1:5672/%2f");
    let no_redis = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:1");
    let wrong_redis_password = format!("redis://:{REDIS_PASSWORD}@127.0.0.1:6379");
    for (amqp, redis, failing, waits) in [
        (no_broker.as_str(), REDIS_URL, "RabbitMQ", true),
        (wrong_broker_password.as_str(), REDIS_URL, "RabbitMQ", false),
        (AMQP_URL, no_redis.as_str(), "Redis", true),
        (AMQP_URL, wrong_redis_password.as_str(), "Redis", false),
    ] {
        let mut args = env.backend_flags(amqp, redis);
        args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        let mut server = Process::start_with_env("herald-server", &args, &[("RUST_LOG", "trace")]);
        if waits {
            let waiting = format!("cannot use {failing} at 127.0.0.1:1");
            eventually("the server to say what it waits for", || {
                let log = server.log_text();
                std::future::ready(log.contains(&waiting) && log.contains(" yet ("))
            })
            .await;
            server.terminate();
            assert!(server.wait().await.success(), "{}", server.log_text());
        } else {
            assert!(!server.wait().await.success(), "the server cannot start");
            let log = server.log_text();
            assert!(
                log.contains(&format!("Error: cannot use {failing} at ")),
                "{log}"
            );
        }
        let log = server.log_text();
        for secret in [AMQP_PASSWORD, REDIS_PASSWORD] {
            assert!(!log.contains(secret), "{secret} in the log:\n{log}");
        }
    }

    // A running server at debug level, handed tokens and a JWT key, used with tokens in every place.
    let jwt = sign_jwt(JWT_SECRET.as_bytes(), "carol", now_secs() + 600).unwrap();
    let tokens = format!("alice:{ALICE}");
    let secrets = [
        ("HERALD_AUTH_TOKENS", tokens.as_str()),
        ("HERALD_JWT_SECRET", JWT_SECRET),
        ("RUST_LOG", "trace"),
    ];
    let mut args = env.backend_flags(AMQP_URL, REDIS_URL);
    args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
    let mut server = Process::start_with_env("herald-server", &args, &secrets);
    let addr = server.server_addr().await;
    let url = format!("ws://{addr}/ws");
    for token in [ALICE, &jwt] {
        let (name, value) = bearer(token);
        let offered = format!("herald, bearer.{token}");
        for (url, headers) in [
            (format!("{url}?token={token}"), vec![]),
            (
                url.clone(),
                vec![("Sec-WebSocket-Protocol", offered.as_str())],
            ),
            (url.clone(), vec![(name, value.as_str())]),
        ] {
            let (mut client, _) = try_connect(&url, &headers).await.unwrap();
            client.expect_nothing_pending().await;
            client.close().await;
        }
        let wrong = format!("{url}?token={token}x");
        assert_eq!(try_connect(&wrong, &[]).await.err(), Some(401));
        let response = reqwest::Client::new()
            .get(format!("http://{addr}/factorial?no=3"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
    }
    server.terminate();
    server.wait().await;
    let log = server.log_text();
    assert!(
        log.contains("request"),
        "requests are logged at debug:\n{log}"
    );
    for secret in [ALICE, JWT_SECRET, &jwt, "guest:guest"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }

    // `--help` shows no value taken from the environment.
    let secrets = [
        ("HERALD_AMQP_URL", wrong_broker_password.as_str()),
        ("HERALD_REDIS_URL", wrong_redis_password.as_str()),
        ("HERALD_AUTH_TOKENS", tokens.as_str()),
        ("HERALD_JWT_SECRET", JWT_SECRET),
    ];
    let mut help = Process::start_with_env("herald-server", &["--help".to_owned()], &secrets);
    assert!(help.wait().await.success());
    let text = help.log_text();
    assert!(text.contains("--jwt-secret"), "{text}");
    for secret in [AMQP_PASSWORD, REDIS_PASSWORD, ALICE, JWT_SECRET] {
        assert!(!text.contains(secret), "{secret} in --help:\n{text}");
    }
}
