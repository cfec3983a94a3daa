//! The classic polling API: `GET /factorial?no=N` and `GET /factorial/result?id=ID`.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::Mode;
use crate::helpers::{TestEnv, PATIENCE};

async fn submit_then_poll_until_done(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_app(1).await;
    let http = reqwest::Client::new();

    let response = http
        .get(server.http_url("/factorial?no=10"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let id = response.text().await.unwrap();
    let id: uuid::Uuid = id.parse().expect("the body is the request ID");

    let deadline = tokio::time::Instant::now() + PATIENCE;
    let body = loop {
        let response = http
            .get(server.http_url(&format!("/factorial/result?id={id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let body: Value = serde_json::from_str(&response.text().await.unwrap()).unwrap();
        assert_eq!(body["input"], 10);
        match body["status"].as_str().unwrap() {
            "processing" => assert_eq!(body["output"], ""),
            "done" => break body,
            other => panic!("unexpected status {other}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "job never finished");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["output"], "3628800");
}

async fn bad_queries_get_400_and_unknown_ids_404(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let mut settings = env.server_settings();
    settings.backend.max_n = 1000;
    let server = env.spawn_server_with(settings).await;
    let http = reqwest::Client::new();
    let get = |path: &str| {
        let http = http.clone();
        let url = server.http_url(path);
        async move {
            let response = http.get(url).send().await.unwrap();
            let status = response.status();
            (status, response.text().await.unwrap())
        }
    };
    for path in [
        "/factorial",
        "/factorial?no=",
        "/factorial?no=abc",
        "/factorial?no=-3",
        "/factorial?no=2.5",
        "/factorial?no=1001",
        "/factorial?no=99999999999999999999999",
        "/factorial/result",
        "/factorial/result?id=",
        "/factorial/result?id=nope",
        "/factorial/result?id=%zz",
    ] {
        let (status, body) = get(path).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(!body.is_empty(), "{path}: a plain message explains the 400");
    }
    let (status, _) = get(&format!("/factorial/result?id={}", uuid::Uuid::new_v4())).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

async fn the_page_is_served_at_the_root(mode: Mode) {
    let env = TestEnv::in_mode(mode);
    let server = env.spawn_server().await;
    let response = reqwest::get(server.http_url("/")).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.text().await.unwrap();
    assert!(body.contains("<html") || body.contains("<!DOCTYPE") || body.contains("<!doctype"));
    assert!(body.contains("/ws"), "the page talks to the WebSocket");
}

crate::both_modes!(
    submit_then_poll_until_done,
    bad_queries_get_400_and_unknown_ids_404,
    the_page_is_served_at_the_root,
);
