//! The terminal session of docs/terminal.md, driven through the real `websocat` binary: numbers typed as
//! lines, JSON lines back, a bad line that leaves the session usable, and a resume by ID after a
//! reconnect. And every websocat command line that README.md and docs/ give, run by a shell exactly
//! as written, against a real server.
//!
//! websocat is not a Rust dependency but a separate tool (scripts/install-websocat.sh builds it). A
//! machine without it fails this test instead of skipping it, so a green run always means the documented
//! session really works.

use std::path::PathBuf;
use std::process::Stdio;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};

use crate::helpers::{Mode, TestEnv, PATIENCE};

/// The websocat binary: on PATH, or where `cargo install` puts it (often not on PATH in CI shells).
fn websocat_binary() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")));
    on_path
        .into_iter()
        .chain(cargo_home.map(|home| home.join("bin")))
        .map(|dir| dir.join("websocat"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "websocat is not installed (not on PATH, not in ~/.cargo/bin): \
                 run scripts/install-websocat.sh, which scripts/test.sh also runs"
            )
        })
}

/// One `websocat ws://…` process, as a user runs it in a terminal: we type into its stdin and read its
/// stdout line by line. Killed when dropped.
struct Websocat {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Lines<BufReader<ChildStdout>>,
    log: PathBuf,
}

/// A fresh file for websocat's stderr.
fn log_path() -> PathBuf {
    let dir = std::env::temp_dir().join("herald-tests");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("websocat-{}.log", uuid::Uuid::new_v4().simple()))
}

impl Websocat {
    /// `command`, a line from the docs, run by `sh` as a user's shell would, with `env` set (such as
    /// `TOKEN`) and websocat on the PATH.
    fn shell(command: &str, env: &[(&str, &str)]) -> Self {
        let log = log_path();
        let websocat_dir = websocat_binary().parent().unwrap().to_path_buf();
        let path = std::env::join_paths(
            std::iter::once(websocat_dir).chain(
                std::env::var_os("PATH")
                    .map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
                    .unwrap_or_default(),
            ),
        )
        .unwrap();
        // bash with pipefail, as a user's shell: a documented pipeline fails when websocat does. From the
        // repository's root, where the docs' relative paths (scripts/…) point.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("repository root")
            .to_path_buf();
        let mut child = tokio::process::Command::new("bash")
            .args(["-o", "pipefail", "-c", command])
            .current_dir(root)
            .env("PATH", path)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("sh starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            stdout,
            log,
        }
    }

    fn connect(url: &str) -> Self {
        let log = log_path();
        let mut child = tokio::process::Command::new(websocat_binary())
            // The command of docs/terminal.md. Line mode (a line typed is one message, a message
            // received is one line) is websocat's default between stdio and a WebSocket.
            // `--text`: lines go out as text frames, as the protocol wants (binary frames get
            // bad_request); 1.x sends text already, but the session should not hang on a default.
            // `-B 8000000`: websocat's buffer (64 KiB by default) is also its largest message, and it
            // splits a longer one into several lines, so results above about n = 17,000 would not
            // parse; 8 MB holds the largest result (n = 1,000,000: 5,565,709 digits).
            // No `--no-close` or `-E`: at the end of input (Ctrl-D; stdin closed here) websocat should
            // send Close and exit, as a user expects and as the reconnect below relies on.
            .args(["--text", "-B", "8000000"])
            .arg(url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("websocat starts");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            child,
            stdin,
            stdout,
            log,
        }
    }

    /// Types `lines`, Enter after each, in one write (as a paste would).
    async fn type_lines(&mut self, lines: &[&str]) {
        let mut text = lines.join("\n");
        text.push('\n');
        let stdin = self.stdin.as_mut().expect("stdin still open");
        stdin.write_all(text.as_bytes()).await.unwrap();
        stdin.flush().await.unwrap();
    }

    /// The next JSON line on the screen, skipping `progress` lines (which only long jobs get, and
    /// whose number depends on the machine's speed).
    async fn read_json(&mut self) -> Value {
        loop {
            let value = self.read_any().await;
            if value["type"] != "progress" {
                return value;
            }
        }
    }

    /// The next JSON line on the screen, whatever it is.
    async fn read_any(&mut self) -> Value {
        {
            let line = tokio::time::timeout(PATIENCE, self.stdout.next_line())
                .await
                .unwrap_or_else(|_| {
                    panic!("no line from websocat; its log: {}", self.log.display())
                })
                .expect("reading websocat's stdout")
                .unwrap_or_else(|| {
                    panic!(
                        "websocat closed its stdout; its log: {}\n{}",
                        self.log.display(),
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    )
                });
            serde_json::from_str(&line).unwrap_or_else(|e| {
                // A message split over several lines (see `-B`) is not JSON; its start is enough.
                let start: String = line.chars().take(200).collect();
                panic!("websocat printed a line that is not JSON ({e}): {start}…")
            })
        }
    }

    /// Ends the input (Ctrl-D) and waits for websocat to close the socket and exit by itself.
    async fn end_input(self) {
        let (status, log) = self.exit().await;
        assert!(
            status.success(),
            "websocat exited with {status}; its log:\n{log}"
        );
    }

    /// Ends the input and returns how the process exited, and what it wrote on stderr.
    async fn exit(mut self) -> (std::process::ExitStatus, String) {
        drop(self.stdin.take());
        let status = tokio::time::timeout(PATIENCE, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("websocat did not exit at the end of its input"))
            .unwrap();
        (
            status,
            std::fs::read_to_string(&self.log).unwrap_or_default(),
        )
    }
}

/// Every websocat command line of README.md and docs/*.md: the lines of their code blocks that start
/// with `websocat ` (after an optional `$ ` prompt), as written, with the file they come from.
fn documented_commands() -> Vec<(String, String)> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf();
    let mut files = vec![root.join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root.join("docs"))
        .expect("docs/")
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    docs.sort();
    files.extend(docs);
    let mut commands = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let name = file.strip_prefix(&root).unwrap().display().to_string();
        let mut in_code = false;
        for line in text.lines() {
            let trimmed = line.trim();
            if trimmed.starts_with("```") {
                in_code = !in_code;
                continue;
            }
            let command = trimmed.strip_prefix("$ ").unwrap_or(trimmed);
            if in_code && command.starts_with("websocat ") {
                commands.push((name.clone(), command.to_owned()));
            }
        }
    }
    commands
}

/// Runs `command` (its `127.0.0.1:8080` pointed at `addr`), types `10`, and checks the documented
/// answer: `accepted`, then the result, then a clean exit at the end of the input.
async fn run_documented(file: &str, command: &str, addr: &str, env: &[(&str, &str)]) {
    let command = command.replace("127.0.0.1:8080", addr);
    let mut terminal = Websocat::shell(&command, env);
    terminal.type_lines(&["10"]).await;
    let line = terminal.read_json().await;
    assert_eq!(
        line["type"], "accepted",
        "{file}: `{command}` printed {line}"
    );
    let id = accepted_id(&line, 10);
    assert_result(&terminal.read_json().await, &id, 10, "3628800");
    let (status, log) = terminal.exit().await;
    assert!(
        status.success(),
        "{file}: `{command}` exited with {status}:\n{log}"
    );
}

#[tokio::test]
async fn every_documented_websocat_command_works_as_written() {
    const TOKEN: &str = "doc-token-3b8e61f0c2d94a57";
    let commands = documented_commands();
    // README's terminal section, terminal.md's sessions and Security's three ways to send a token.
    assert!(
        commands.len() >= 6,
        "the docs give fewer websocat commands than expected: {commands:?}"
    );
    let env = TestEnv::in_mode(Mode::Embedded);
    let open = env.spawn_app(2).await;
    let guarded = env
        .spawn_app_with(env.server_settings_with_tokens(&[("alice", TOKEN)]))
        .await;
    let open_addr = open.addr.to_string();
    let guarded_addr = guarded.addr.to_string();
    let token_env = [("TOKEN", TOKEN)];
    let mut with_token = 0;
    for (file, command) in &commands {
        if command.contains("$TOKEN") {
            with_token += 1;
            run_documented(file, command, &guarded_addr, &token_env).await;
        } else {
            run_documented(file, command, &open_addr, &token_env).await;
            // As docs/terminal.md shows: without a token, a server with authentication on refuses.
            let refused = Websocat::shell(&command.replace("127.0.0.1:8080", &guarded_addr), &[]);
            let (status, log) = refused.exit().await;
            assert!(
                !status.success(),
                "{file}: `{command}` got in without a token"
            );
            assert!(
                log.contains("401"),
                "{file}: `{command}` without a token:\n{log}"
            );
        }
    }
    assert!(
        with_token >= 3,
        "the docs should show the header, the subprotocol and the query: {commands:?}"
    );
}

/// The `id` of an `accepted` line for `n`.
fn accepted_id(line: &Value, n: u64) -> String {
    assert_eq!(line["type"], "accepted", "expected accepted, got {line}");
    assert_eq!(line["n"], n, "{line}");
    let id = line["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id: {line}"));
    uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("id {id} is not a UUID ({e})"));
    id.to_owned()
}

/// Checks a `result` line: done, for `id` and `n`, with `output`.
fn assert_result(line: &Value, id: &str, n: u64, output: &str) {
    assert_eq!(line["type"], "result", "expected result, got {line}");
    assert_eq!(line["id"], id, "{line}");
    assert_eq!(line["n"], n, "{line}");
    assert_eq!(line["status"], "done", "{line}");
    assert_eq!(line["output"], output, "{line}");
    assert_eq!(line["digits"], output.len(), "{line}");
    assert!(line["timings"]["total_ms"].is_u64(), "{line}");
}

#[tokio::test]
async fn the_documented_websocat_session_works() {
    // As docs/terminal.md starts it: embedded, the factorial and the slow example model.
    let env = TestEnv::in_mode(Mode::Embedded);
    let sentiment = format!(
        "sentiment={}",
        crate::helpers::example_model("slow_sentiment.py", "")
    );
    let server = env
        .spawn_app_with_models(&["factorial".to_owned(), sentiment], 2, 120)
        .await;
    let url = server.ws_url();

    let mut terminal = Websocat::connect(&url);

    // One number: accepted at once with its ID, then the result.
    terminal.type_lines(&["10"]).await;
    let ten = accepted_id(&terminal.read_json().await, 10);
    assert_result(&terminal.read_json().await, &ten, 10, "3628800");

    // Several at once: each is accepted before its result; results may come in any order.
    let expected = [(3u64, "6"), (4, "24"), (5, "120")];
    terminal.type_lines(&["3", "4", "5"]).await;
    let mut ids = std::collections::HashMap::new();
    let mut done = std::collections::HashSet::new();
    while done.len() < expected.len() {
        let line = terminal.read_json().await;
        let n = line["n"].as_u64().unwrap_or_else(|| panic!("no n: {line}"));
        let (_, output) = expected
            .iter()
            .find(|(m, _)| *m == n)
            .unwrap_or_else(|| panic!("a line about a job not typed: {line}"));
        match line["type"].as_str() {
            Some("accepted") => {
                assert!(ids.insert(n, accepted_id(&line, n)).is_none(), "{line}");
            }
            Some("result") => {
                let id = ids
                    .get(&n)
                    .unwrap_or_else(|| panic!("result before accepted: {line}"));
                assert_result(&line, id, n, output);
                assert!(done.insert(n), "a second result: {line}");
            }
            _ => panic!("expected accepted or result, got {line}"),
        }
    }

    // A typo gets an error line, and the connection stays usable.
    terminal.type_lines(&["hello"]).await;
    let error = terminal.read_json().await;
    assert_eq!(error["type"], "error", "expected error, got {error}");
    assert_eq!(error["code"], "bad_request", "{error}");
    assert!(error["message"].is_string(), "{error}");
    terminal.type_lines(&["7"]).await;
    let seven = accepted_id(&terminal.read_json().await, 7);
    assert_result(&terminal.read_json().await, &seven, 7, "5040");

    // A result longer than websocat's default buffer still arrives as one line.
    terminal.type_lines(&["20000"]).await;
    let big = accepted_id(&terminal.read_json().await, 20_000);
    let line = terminal.read_json().await;
    // Digit count from log10, independent of any big-integer code.
    let digits = (1..=20_000u32).map(|k| f64::from(k).log10()).sum::<f64>() as usize + 1;
    assert_eq!(
        line["type"], "result",
        "expected result, got {}",
        line["type"]
    );
    assert_eq!(line["id"], big.as_str());
    assert_eq!(line["digits"], digits);
    let output = line["output"].as_str().expect("an output");
    assert_eq!(output.len(), digits);
    assert!(
        output.starts_with("18192063202303451348"),
        "20000! begins so"
    );

    // The same large n twice: the second comes from the stored result of the first, not computed.
    terminal.type_lines(&["100000"]).await;
    let first = accepted_id(&terminal.read_json().await, 100_000);
    let computed = terminal.read_json().await;
    assert_eq!(computed["id"], first.as_str(), "{}", computed["type"]);
    terminal.type_lines(&["100000"]).await;
    let second = accepted_id(&terminal.read_json().await, 100_000);
    let stored = terminal.read_json().await;
    assert_eq!(stored["id"], second.as_str(), "{}", stored["type"]);
    assert_eq!(stored["output"], computed["output"]);
    assert_eq!(stored["timings"]["compute_ms"], 0, "{}", stored["timings"]);

    // The slow model: watch its progress, then cancel it with its ID.
    terminal
        .type_lines(&[
            r#"{"type":"submit","model":"sentiment","input":{"text":"what a lovely day","seconds":30}}"#,
        ])
        .await;
    let accepted = terminal.read_json().await;
    assert_eq!(
        (accepted["type"].as_str(), accepted["model"].as_str()),
        (Some("accepted"), Some("sentiment")),
        "{accepted}"
    );
    let slow = accepted["id"].as_str().unwrap().to_owned();
    let progress = terminal.read_any().await;
    assert_eq!(progress["type"], "progress", "{progress}");
    assert_eq!(progress["id"], slow.as_str(), "{progress}");
    terminal
        .type_lines(&[&format!(r#"{{"type":"cancel","id":"{slow}"}}"#)])
        .await;
    let cancelled = terminal.read_json().await;
    assert_eq!(
        (cancelled["type"].as_str(), cancelled["status"].as_str()),
        (Some("result"), Some("cancelled")),
        "{cancelled}"
    );
    assert_eq!(cancelled["id"], slow.as_str());

    // The user leaves (Ctrl-D), comes back with a new websocat, and resumes the first job by its ID.
    terminal.end_input().await;
    let mut terminal = Websocat::connect(&url);
    terminal
        .type_lines(&[&format!(r#"{{"type":"resume","id":"{ten}"}}"#)])
        .await;
    assert_result(&terminal.read_json().await, &ten, 10, "3628800");
    terminal.end_input().await;
}

#[tokio::test]
async fn a_websocat_session_idle_for_several_ping_intervals_stays_open() {
    let env = TestEnv::in_mode(crate::helpers::Mode::Embedded);
    let mut settings = env.server_settings();
    // A generous timeout: websocat answers at once, but the machine may be busy.
    settings.ping_interval_secs = 1;
    settings.ping_timeout_secs = 3;
    let server = env.spawn_app_with(settings).await;
    let mut terminal = Websocat::connect(&server.ws_url());
    terminal.type_lines(&["10"]).await;
    let ten = accepted_id(&terminal.read_json().await, 10);
    assert_result(&terminal.read_json().await, &ten, 10, "3628800");

    // Idle for five ping intervals: the server pings, websocat answers by itself, nothing is closed.
    let metric = |name: &'static str| {
        let url = server.http_url("/metrics");
        async move {
            let page = reqwest::get(url).await.unwrap().text().await.unwrap();
            page.lines()
                .find_map(|l| {
                    l.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .trim()
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or_else(|| panic!("no {name} in {page}"))
        }
    };
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    assert!(metric("herald_pings_sent_total").await >= 2.0);
    assert_eq!(metric("herald_sockets_ping_timeouts_total").await, 0.0);
    assert_eq!(metric("herald_sockets_open").await, 1.0);

    terminal.type_lines(&["7"]).await;
    let seven = accepted_id(&terminal.read_json().await, 7);
    assert_result(&terminal.read_json().await, &seven, 7, "5040");
    terminal.end_input().await;
}
