//! `GET /openapi.json`: the document is valid OpenAPI 3.1 (checked by openapi-spec-validator), it
//! describes every route the server serves, and schemathesis, an OpenAPI fuzzer, runs every one of its
//! checks against a real server process with it and finds nothing (no 5xx; every status, content type, header
//! and body, errors included, as described), embedded and distributed, with authentication off and on.
//!
//! schemathesis and openapi-spec-validator come from PyPI into a virtualenv that
//! scripts/install-schemathesis.sh makes (scripts/test.sh runs it). Without them the tests fail: they
//! never skip.

use std::path::PathBuf;

use reqwest::StatusCode;
use serde_json::Value;

use crate::helpers::{Mode, Process, TestEnv, AMQP_URL, REDIS_URL};

/// The servers' `--max-n`: the fuzzer submits factorials of any `n` the document allows, and a
/// bound keeps each job short.
const MAX_N: u64 = 10_000;

/// A real `herald-server` process (embedded, or on this environment's RabbitMQ and Redis with a real
/// `herald-worker` process), killed when dropped.
struct Server {
    base: String,
    _server: Process,
    _worker: Option<Process>,
    // Removes the environment's queues and keys after the processes are gone.
    _env: TestEnv,
}

impl Server {
    /// Starts one with `flags` and [`MAX_N`].
    async fn start(mode: Mode, flags: &[&str]) -> Self {
        let mut env = TestEnv::in_mode(mode);
        env.backend.max_n = MAX_N;
        let mut args = match mode {
            Mode::Distributed => env.backend_flags(AMQP_URL, REDIS_URL),
            Mode::Embedded => vec!["--max-n".into(), MAX_N.to_string()],
        };
        args.extend(["--listen", "127.0.0.1:0"].map(String::from));
        args.extend(flags.iter().map(|flag| flag.to_string()));
        let server = Process::start("herald-server", &args);
        let base = format!("http://{}", server.server_addr().await);
        let worker = match mode {
            Mode::Distributed => Some(env.start_worker_process(&[])),
            Mode::Embedded => None,
        };
        Self {
            base,
            _server: server,
            _worker: worker,
            _env: env,
        }
    }

    fn http_url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

/// The keys of a path item that are operations.
const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// The virtualenv of scripts/install-schemathesis.sh (keep the version in step with it).
fn venv() -> PathBuf {
    if let Some(venv) = std::env::var_os("HERALD_SCHEMATHESIS_VENV") {
        return venv.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache")
        });
    let venv = cache.join("herald/schemathesis-4.32.5");
    assert!(
        venv.join("bin/schemathesis").is_file(),
        "schemathesis is not installed at {}: run scripts/install-schemathesis.sh, which scripts/test.sh \
         also runs",
        venv.display()
    );
    venv
}

/// Fetches the server's document.
async fn document(server: &Server) -> Value {
    let response = reqwest::get(server.http_url("/openapi.json"))
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["content-type"], "application/json");
    serde_json::from_str(&response.text().await.unwrap()).expect("the document is JSON")
}

/// Runs schemathesis with every check against `server`, `headers` on every request, and asserts that
/// it passed. `examples` bounds the cases per operation, so that a run stays within a couple of minutes.
async fn schemathesis(server: &Server, headers: &[&str], examples: u32) {
    let config = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("schemathesis.toml");
    let mut command = tokio::process::Command::new(venv().join("bin/schemathesis"));
    command
        .arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(server.http_url("/openapi.json"))
        .args(["--checks", "all"])
        // All but one: `use_after_free` expects a 404 from a resource after a 2xx DELETE of it. Here
        // `DELETE /jobs/{id}` cancels a job; it does not remove it. The job stays readable in its final
        // state `cancelled`, as Herald guarantees (once a client has a request ID, the job reaches a
        // final state the client can see): the 404 this check wants would break that guarantee.
        .args(["--exclude-checks", "use_after_free"])
        .args(["--max-examples", &examples.to_string()])
        // A fixed seed, so that a run tests what the last one did and CI does not fail at random;
        // HERALD_SCHEMATHESIS_SEED=random explores (a failure then prints its `st replay` case).
        .args(seed_args())
        // An HTTP client cannot follow a `101 Switching Protocols`: the connection then speaks the
        // WebSocket protocol, which schemathesis's HTTP client cannot, and it counts the 101 itself as a
        // failure of its checks (not 2xx, 3xx or 4xx). `/ws` is described (its handshake, as far as
        // OpenAPI can) and its refusals are checked below against the document instead; its sessions
        // are tested by the WebSocket tests.
        .args(["--exclude-path", "/ws"])
        .arg("--no-color")
        // schemathesis and hypothesis keep caches in the working directory: not in the repository.
        .current_dir(std::env::temp_dir())
        .env("NO_COLOR", "1")
        .kill_on_drop(true);
    for header in headers {
        command.args(["--header", header]);
    }
    let output = command.output().await.expect("schemathesis runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{stdout}\n{stderr}"
    );
    // A run that tested nothing would pass too: every operation is tested but `/ws`'s and that of
    // `/openapi.json` (schemathesis leaves out the URL it loaded the document from unless told; the
    // document's own answer is checked by the_document_is_valid_openapi_3_1_and_lists_every_route).
    let doc = document(server).await;
    let operations: usize = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(path, _)| !["/ws", "/openapi.json"].contains(&path.as_str()))
        .map(|(_, item)| {
            item.as_object()
                .unwrap()
                .keys()
                .filter(|key| METHODS.contains(&key.as_str()))
                .count()
        })
        .sum();
    assert!(
        stdout.contains(&format!("Tested: {operations}\n")),
        "schemathesis did not test all {operations} operations:\n{stdout}"
    );
}

/// schemathesis's seed: HERALD_SCHEMATHESIS_SEED (a number, or `random` for none), else a fixed one.
fn seed_args() -> Vec<String> {
    match std::env::var("HERALD_SCHEMATHESIS_SEED").as_deref() {
        Ok("random") => Vec::new(),
        Ok(seed) => vec![
            "--seed".into(),
            seed.parse::<u64>()
                .expect("HERALD_SCHEMATHESIS_SEED is a number or random")
                .to_string(),
        ],
        Err(_) => vec!["--seed".into(), "20261205".into()],
    }
}

/// Every check of schemathesis passes against a whole Herald.
async fn schemathesis_finds_nothing_wrong(mode: Mode) {
    let server = Server::start(mode, &[]).await;
    schemathesis(&server, &[], 25).await;
}

crate::both_modes!(schemathesis_finds_nothing_wrong);

/// With authentication on, every protected operation declares the bearer scheme, and schemathesis's
/// `ignored_auth` check sends each without the token and expects the documented 401.
#[tokio::test]
async fn schemathesis_finds_nothing_wrong_with_authentication_on() {
    let token = "openapi-test-token-0123456789";
    let server = Server::start(
        Mode::Embedded,
        &["--auth-tokens", &format!("fuzzer:{token}")],
    )
    .await;
    let doc = document(&server).await;
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"], "bearer",
        "{doc:#}"
    );
    assert_eq!(
        doc["paths"]["/jobs"]["post"]["security"][0]["bearer"],
        serde_json::json!([])
    );
    assert!(doc["paths"]["/healthz"]["get"].get("security").is_none());
    // The idempotency key's rule is the protocol crate's.
    let key = doc["paths"]["/jobs"]["post"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "Idempotency-Key")
        .expect("POST /jobs describes Idempotency-Key");
    assert_eq!(key["in"], "header");
    assert_eq!(
        key["schema"]["pattern"],
        herald_protocol::api::IDEMPOTENCY_KEY_PATTERN
    );
    // The WebSocket's refusal before any upgrade is the documented 401.
    let response = reqwest::get(server.http_url("/ws")).await.unwrap();
    conforms(&doc, "/ws", "get", response).await;
    schemathesis(&server, &[&format!("Authorization: Bearer {token}")], 15).await;
}

/// Whether `body` is valid against the request body schema of `method path` in `doc`, by the
/// `jsonschema` package that openapi-spec-validator brings (JSON Schema 2020-12, as OpenAPI 3.1).
async fn schema_accepts(doc: &Value, path: &str, method: &str, body: &Value) -> bool {
    let pointer = format!(
        "#/paths/{}/{method}/requestBody/content/application~1json/schema",
        path.replace('~', "~0").replace('/', "~1")
    );
    let mut root = doc.clone();
    root["$ref"] = Value::String(pointer);
    let script = "import json, sys, jsonschema\n\
                  root, body = json.loads(sys.argv[1]), json.loads(sys.argv[2])\n\
                  print(jsonschema.Draft202012Validator(root).is_valid(body))";
    let output = tokio::process::Command::new(venv().join("bin/python"))
        .args(["-c", script, &root.to_string(), &body.to_string()])
        .output()
        .await
        .expect("python runs");
    let answer = String::from_utf8_lossy(&output.stdout);
    match answer.trim() {
        "True" => true,
        "False" => false,
        _ => panic!(
            "jsonschema failed: {answer}{}",
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}

/// Asserts that `response` to `method path` has a status and content type the document gives.
async fn conforms(doc: &Value, path: &str, method: &str, response: reqwest::Response) {
    let status = response.status().as_u16().to_string();
    let described = &doc["paths"][path][method]["responses"][&status];
    assert!(
        described.is_object(),
        "{method} {path} answered {status}, which the document does not describe"
    );
    let content_type = response
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().split(';').next().unwrap().to_owned());
    if let Some(content_type) = content_type {
        assert!(
            described["content"][&content_type].is_object(),
            "{method} {path} answered {status} as {content_type}, not as described: {described}"
        );
    }
}

/// The document is valid OpenAPI 3.1 (by the specification's own schema), has no server-side
/// defaults left unfilled, and every operation it lists is served: each answers with a status it
/// describes, never the router's own 404 or 405.
#[tokio::test]
async fn the_document_is_valid_openapi_3_1_and_lists_every_route() {
    let server = Server::start(Mode::Embedded, &[]).await;
    let doc = document(&server).await;
    assert_eq!(doc["openapi"], "3.1.0");
    // A submit's answer links to every operation that takes a request ID, on both APIs (which
    // schemathesis's stateful phase follows).
    let links = &doc["paths"]["/jobs"]["post"]["responses"]["202"]["links"];
    for target in [
        "jobs_show",
        "jobs_cancel",
        "jobs_output",
        "classic_result",
        "classic_cancel",
        "classic_output",
    ] {
        assert_eq!(links[target]["operationId"], target, "{links}");
        let parameters = links[target]["parameters"].as_object().unwrap();
        assert_eq!(
            parameters.values().collect::<Vec<_>>(),
            ["$response.body#/id"],
            "{target}"
        );
    }
    // The server's --max-n, not the default.
    assert_eq!(doc["components"]["schemas"]["FactorialN"]["maximum"], MAX_N);
    // Authentication off: no operation asks for a token.
    assert!(
        doc["components"].get("securitySchemes").is_none(),
        "{doc:#}"
    );

    let file = std::env::temp_dir().join(format!("herald-openapi-{}.json", uuid::Uuid::new_v4()));
    std::fs::write(&file, doc.to_string()).unwrap();
    let output = tokio::process::Command::new(venv().join("bin/python"))
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .await
        .expect("openapi-spec-validator runs");
    let _ = std::fs::remove_file(&file);
    assert!(
        output.status.success(),
        "not valid OpenAPI:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    // Bodies of POST /jobs that the document's schema and the server judge alike: `n` beside
    // `input` is refused by both (schemathesis once sent one that the shapes with `input` allowed),
    // `null` for it is read as absent by both.
    let http = reqwest::Client::new();
    for body in [
        serde_json::json!({"input": 601, "n": "x"}),
        serde_json::json!({"model": "factorial", "input": {"n": 5}, "n": 5}),
        serde_json::json!({"input": {"n": 5}, "n": null}),
        serde_json::json!({"n": 5}),
    ] {
        let valid = schema_accepts(&doc, "/jobs", "post", &body).await;
        let response = http
            .post(server.http_url("/jobs"))
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        assert_eq!(
            valid,
            response.status().is_success(),
            "{body}: the document says valid = {valid}, the server answered {}",
            response.status()
        );
    }

    let mut operations = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            operations.push(format!("{} {path}", method.to_uppercase()));
            let url = server.http_url(&path.replace("{id}", &uuid::Uuid::new_v4().to_string()));
            let request = match method.as_str() {
                "get" => http.get(url),
                "post" => http.post(url).body("{}"),
                "delete" => http.delete(url),
                "head" => http.head(url),
                other => panic!("a method the test does not know: {other}"),
            };
            let response = request.send().await.unwrap();
            // The router's own 405 would mean the route is not served; `HEAD /factorial` is served,
            // and its documented answer is a 405 of its own (with `Allow: GET`).
            if item[method]["responses"].get("405").is_none() {
                assert_ne!(
                    response.status(),
                    StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path}"
                );
            } else {
                assert_eq!(response.headers()["allow"], "GET", "{method} {path}");
            }
            conforms(&doc, path, method, response).await;
        }
    }
    operations.sort();
    // The routes of server/src/http/mod.rs, all of which come from the annotated handlers.
    assert_eq!(
        operations,
        [
            "DELETE /factorial/{id}",
            "DELETE /jobs/{id}",
            "GET /",
            "GET /factorial",
            "GET /factorial/result",
            "GET /factorial/{id}/output",
            "GET /healthz",
            "GET /jobs/{id}",
            "GET /jobs/{id}/output",
            "GET /metrics",
            "GET /models",
            "GET /openapi.json",
            "GET /readyz",
            "GET /ws",
            "HEAD /factorial",
            "POST /jobs",
        ]
    );
}
