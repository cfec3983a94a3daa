//! The durable embedded mode with real server processes: a `kill -9` under queued, running and
//! finished jobs and a restart on the same data directory, after which every request ID resumes to its
//! correct result; one server per data directory; a clear refusal to start on an unwritable directory
//! or a damaged database; and expired records leaving the file.

use std::path::Path;

use herald_protocol::{JobId, Outcome, ServerMessage};
use serde_json::{json, Value};

use crate::helpers::{eventually, example_model, metric, Client, Process, PATIENCE};

/// A slow model with a deterministic output: the example sentiment model, taking `seconds` per job.
fn sentiment() -> String {
    format!("sentiment={}", example_model("slow_sentiment.py", ""))
}

/// The flags of an embedded server on `data_dir` computing one job at once.
fn embedded_args(data_dir: &Path, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--concurrency",
        "1",
        "--model",
        "factorial",
        "--model",
        &sentiment(),
    ]
    .iter()
    .map(|a| a.to_string())
    .collect();
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

/// GET /jobs/<id> of the server at `addr`: the job's JSON, or `None` for 404.
async fn job(addr: &str, id: JobId) -> Option<Value> {
    let response = reqwest::get(format!("http://{addr}/jobs/{id}"))
        .await
        .expect("the server answers");
    if response.status() == reqwest::StatusCode::NOT_FOUND {
        return None;
    }
    assert!(response.status().is_success(), "{response:?}");
    Some(serde_json::from_str(&response.text().await.unwrap()).unwrap())
}

/// The job's status, as GET /jobs/<id> says.
async fn status(addr: &str, id: JobId) -> String {
    let job = job(addr, id).await.expect("the job is known");
    job["status"].as_str().unwrap().to_owned()
}

/// Waits for a progress message of job `id` on `client`: the job is computing.
async fn until_progress(client: &mut Client, id: JobId) {
    loop {
        match client.recv_any().await {
            ServerMessage::Progress { id: of, .. } if of == id => return,
            ServerMessage::Error(error) => panic!("{error:?}"),
            _ => {}
        }
    }
}

/// The sentiment model's output for `text`, as JSON.
fn sentiment_output(outcome: &Outcome) -> Value {
    let text = outcome
        .output_text()
        .unwrap_or_else(|| panic!("expected done, got {outcome:?}"));
    serde_json::from_str(&text).unwrap()
}

#[tokio::test]
async fn a_killed_embedded_server_resumes_every_job_after_a_restart_on_its_data_directory() {
    let data = tempfile::tempdir().unwrap();
    let args = embedded_args(data.path(), &[]);
    let mut server = Process::start("herald-server", &args);
    let addr = server.server_addr().await;
    assert!(
        server
            .log_text()
            .contains(&data.path().join("herald.sqlite3").display().to_string()),
        "the start-up log says where the jobs are kept: {}",
        server.log_text()
    );
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;

    // Finished before the crash: a factorial and a quick sentiment.
    let factorial = client.submit(20).await;
    assert_eq!(client.output_of(factorial).await, "2432902008176640000");
    let quick = client
        .submit_to("sentiment", json!({"text": "a lovely day", "seconds": 0}))
        .await;
    let quick_output = sentiment_output(&client.result_of(quick).await);
    assert_eq!(quick_output["label"], "positive", "{quick_output}");

    // Running at the crash (one compute slot), and two queued behind it.
    let running = client
        .submit_to("sentiment", json!({"text": "a great result", "seconds": 3}))
        .await;
    let queued = [
        client
            .submit_to("sentiment", json!({"text": "a terrible day", "seconds": 1}))
            .await,
        client
            .submit_to("sentiment", json!({"text": "nothing much", "seconds": 1}))
            .await,
    ];
    // Its first progress: the start (and its attempt) was committed before it began to compute.
    until_progress(&mut client, running).await;
    for id in queued {
        assert_eq!(status(&addr, id).await, "queued");
    }
    server.kill().await;

    let mut server = Process::start("herald-server", &args);
    let addr = server.server_addr().await;
    let log = server.log_text();
    assert!(log.contains("requeued=3"), "{log}");
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;

    // Finished ones answer at once with what they had.
    client.resume(factorial).await;
    assert_eq!(client.output_of(factorial).await, "2432902008176640000");
    client.resume(quick).await;
    assert_eq!(
        sentiment_output(&client.result_of(quick).await),
        quick_output
    );

    // The others run again and reach their results.
    for id in [running, queued[0], queued[1]] {
        client.resume(id).await;
    }
    let mut outputs = std::collections::HashMap::new();
    while outputs.len() < 3 {
        match client.recv().await {
            ServerMessage::Result(result) => {
                outputs.insert(result.id, sentiment_output(&result.outcome));
            }
            ServerMessage::Status { .. } => {}
            other => panic!("expected statuses and results, got {other:?}"),
        }
    }
    assert_eq!(outputs[&running]["label"], "positive");
    assert_eq!(outputs[&queued[0]]["label"], "negative");
    assert_eq!(outputs[&queued[1]]["label"], "neutral");

    // The job that was running when the server died counted that attempt, as after a redelivery.
    let record = job(&addr, running).await.unwrap();
    assert_eq!(record["attempts"], 2, "{record}");
    for id in queued {
        let record = job(&addr, id).await.unwrap();
        assert_eq!(record["attempts"], 1, "{record}");
    }

    // A graceful stop keeps them too.
    server.terminate();
    assert!(server.wait().await.success());
    let server = Process::start("herald-server", &args);
    let addr = server.server_addr().await;
    assert!(
        server.log_text().contains("requeued=0"),
        "{}",
        server.log_text()
    );
    for id in [factorial, quick, running, queued[0], queued[1]] {
        assert_eq!(status(&addr, id).await, "done");
    }
}

#[tokio::test]
async fn a_job_that_keeps_killing_the_server_fails_at_its_attempt_limit() {
    // Each start of the server finds the job running from the last one (killed under it): attempts
    // count, and past --max-attempts the job fails instead of running for ever.
    let data = tempfile::tempdir().unwrap();
    let args = embedded_args(data.path(), &["--max-attempts", "2"]);
    let mut server = Process::start("herald-server", &args);
    let mut addr = server.server_addr().await;
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    let id = client
        .submit_to("sentiment", json!({"text": "doomed", "seconds": 60}))
        .await;
    for round in 0..2 {
        if round > 0 {
            client = Client::connect(&format!("ws://{addr}/ws")).await;
            client.resume(id).await;
        }
        until_progress(&mut client, id).await;
        server.kill().await;
        server = Process::start("herald-server", &args);
        addr = server.server_addr().await;
    }
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    client.resume(id).await;
    let outcome = loop {
        match client.recv().await {
            ServerMessage::Result(result) if result.id == id => break result.outcome,
            ServerMessage::Status { .. } => {}
            other => panic!("expected the job's result, got {other:?}"),
        }
    };
    let Outcome::Failed { error } = outcome else {
        panic!("expected failed, got {outcome:?}");
    };
    assert!(error.contains("attempts"), "{error}");
    assert_eq!(status(&addr, id).await, "failed");
}

/// The line of `process`'s log that contains `text`.
fn line_with(process: &Process, text: &str) -> String {
    let log = process.log_text();
    log.lines()
        .find(|l| l.contains(text))
        .unwrap_or_else(|| panic!("no line with {text:?} in: {log}"))
        .to_owned()
}

#[tokio::test]
async fn a_second_server_on_the_same_data_directory_refuses_to_start() {
    let data = tempfile::tempdir().unwrap();
    let mut first = Process::start("herald-server", &embedded_args(data.path(), &[]));
    first.server_addr().await;
    let mut second = Process::start("herald-server", &embedded_args(data.path(), &[]));
    assert!(!second.wait().await.success(), "the second server stops");
    let line = line_with(&second, "is in use by");
    assert!(
        line.contains(&format!(
            "the data directory {} (--data-dir) is in use by process {}",
            data.path().display(),
            first.pid()
        )),
        "{line}"
    );
    assert!(
        line.contains("give this one a data directory of its own"),
        "{line}"
    );
    assert!(
        !second.log_text().contains("panicked"),
        "{}",
        second.log_text()
    );

    // The lock goes with its process, however it ends.
    first.kill().await;
    let third = Process::start("herald-server", &embedded_args(data.path(), &[]));
    third.server_addr().await;
}

#[tokio::test]
async fn a_damaged_database_stops_the_start_with_what_to_do() {
    let data = tempfile::tempdir().unwrap();
    std::fs::write(
        data.path().join("herald.sqlite3"),
        "this is not a database, just text that happens to have its name\n".repeat(100),
    )
    .unwrap();
    let mut server = Process::start("herald-server", &embedded_args(data.path(), &[]));
    assert!(!server.wait().await.success(), "the server stops");
    let line = line_with(&server, "is damaged or not Herald's");
    assert!(
        line.contains(&data.path().join("herald.sqlite3").display().to_string()),
        "{line}"
    );
    assert!(line.contains("Move the file"), "{line}");
    assert!(
        !server.log_text().contains("panicked"),
        "{}",
        server.log_text()
    );
}

#[tokio::test]
async fn an_unwritable_data_directory_stops_the_start_with_what_to_do() {
    // A directory this process cannot write in: read-only, and the server runs as an unprivileged user
    // when the tests run as root (whom permissions do not stop).
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("data");
    std::fs::create_dir(&dir).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).unwrap();
    std::fs::set_permissions(parent.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut command = tokio::process::Command::new(crate::helpers::binary("herald-server"));
    command
        .args(embedded_args(&dir, &[]))
        .env("RUST_LOG", "info")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    // SAFETY: geteuid(2) has no preconditions and no side effects.
    if unsafe { libc::geteuid() } == 0 {
        command.uid(65_534).gid(65_534);
    }
    let output = tokio::time::timeout(PATIENCE, command.output())
        .await
        .expect("the server exits")
        .unwrap();
    let log = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("cannot use the data directory"))
        .unwrap_or_else(|| panic!("no clear error in: {log}"));
    assert!(line.contains(&dir.display().to_string()), "{line}");
    assert!(line.contains("Permission denied"), "{line}");
    assert!(line.contains("--in-memory"), "{line}");
    assert!(!log.contains("panicked"), "{log}");
}

/// Bytes the database takes on disk, its write-ahead log included.
fn database_bytes(dir: &Path) -> u64 {
    ["herald.sqlite3", "herald.sqlite3-wal"]
        .iter()
        .filter_map(|name| std::fs::metadata(dir.join(name)).ok())
        .map(|m| m.len())
        .sum()
}

/// Job rows in the database, read as any SQLite tool would while the server runs.
fn job_rows(dir: &Path) -> i64 {
    rows_of(dir, "jobs")
}

/// Rows of `table` in the database, read as any SQLite tool would while the server runs.
fn rows_of(dir: &Path, table: &str) -> i64 {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join("herald.sqlite3"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |row| {
        row.get(0)
    })
    .unwrap()
}

#[tokio::test]
async fn expired_records_leave_the_data_directory() {
    let data = tempfile::tempdir().unwrap();
    // Expired 20 s after their submit, swept every 5 s. One client submits 90 jobs at once: past the
    // default per-client quota of jobs queued, which is not what this test is about.
    let args = embedded_args(
        data.path(),
        &["--job-ttl-secs", "20", "--max-queued-per-client", "0"],
    );
    let server = Process::start("herald-server", &args);
    let addr = server.server_addr().await;
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    for n in 5000..5090 {
        client.send_json(json!({"type": "submit", "n": n})).await;
    }
    let mut ids = Vec::new();
    let mut done = 0;
    while done < 90 {
        match client.recv().await {
            ServerMessage::Accepted { id, .. } => ids.push(id),
            ServerMessage::Result(result) => {
                assert!(result.outcome.output_text().is_some(), "{result:?}");
                done += 1;
            }
            other => panic!("expected accepted and results, got {other:?}"),
        }
    }
    // Each output holds about 16,000 digits (stored compressed, once each): the file holds
    // hundreds of kilobytes now.
    let full = database_bytes(data.path());
    let rows = job_rows(data.path());
    assert!(rows > 0, "the records are in the file");
    assert_eq!(rows_of(data.path(), "outputs"), 90);
    eventually(
        "expired records and their outputs to leave the file",
        || async {
            job_rows(data.path()) == 0
                && rows_of(data.path(), "outputs") == 0
                && database_bytes(data.path()) < full / 4
        },
    )
    .await;
    assert!(job(&addr, ids[0]).await.is_none(), "expired: not found");
}

/// GET /jobs/<id>/output of the server at `addr`.
async fn output(addr: &str, id: JobId) -> String {
    let response = reqwest::get(format!("http://{addr}/jobs/{id}/output"))
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{response:?}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn an_output_stored_once_survives_a_kill_and_is_served_after_the_restart() {
    let data = tempfile::tempdir().unwrap();
    let args = embedded_args(data.path(), &[]);
    let mut server = Process::start("herald-server", &args);
    let addr = server.server_addr().await;
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    // Four jobs with one (compressible) output: computed once, stored once.
    let mut ids = Vec::new();
    let mut digits = String::new();
    for _ in 0..4 {
        let id = client.submit(3000).await;
        let output = client.output_of(id).await;
        assert_eq!(output.len(), 9131);
        if !digits.is_empty() {
            assert_eq!(output, digits);
        }
        digits = output;
        ids.push(id);
    }
    assert_eq!(metric(&addr, "herald_stored_outputs").await, Some(1.0));
    server.kill().await;

    let database = data.path().join("herald.sqlite3");
    {
        let db = rusqlite::Connection::open(&database).unwrap();
        let count = |sql: &str| -> i64 { db.query_row(sql, [], |row| row.get(0)).unwrap() };
        assert_eq!(count("SELECT COUNT(*) FROM outputs"), 1, "one stored copy");
        assert_eq!(count("SELECT COUNT(*) FROM job_outputs"), 4);
        assert!(
            (count("SELECT SUM(LENGTH(blob)) FROM outputs") as usize) < digits.len() / 2,
            "stored compressed"
        );
        assert_eq!(
            count(&format!(
                "SELECT COUNT(*) FROM jobs WHERE record LIKE '%{}%'",
                &digits[..40]
            )),
            0,
            "no record holds the output itself"
        );
    }

    let server = Process::start("herald-server", &args);
    let addr = server.server_addr().await;
    assert_eq!(metric(&addr, "herald_stored_outputs").await, Some(1.0));
    for id in &ids {
        assert_eq!(status(&addr, *id).await, "done");
        assert_eq!(
            output(&addr, *id).await,
            digits,
            "served from the stored copy"
        );
    }
    let mut client = Client::connect(&format!("ws://{addr}/ws")).await;
    client.resume(ids[3]).await;
    assert_eq!(client.output_of(ids[3]).await, digits);
    // A new submit of the same input is answered from the shared result kept across the restart,
    // still with one stored copy.
    let again = client.submit(3000).await;
    assert_eq!(client.output_of(again).await, digits);
    assert_eq!(metric(&addr, "herald_stored_outputs").await, Some(1.0));
}

const HEAVY: &str = "heavy-token-0123456789";
const LIGHT: &str = "light-token-0123456789";

/// GET /jobs/<id> of the server at `addr` as the holder of `token`: the job's JSON.
async fn job_as(addr: &str, token: &str, id: JobId) -> Value {
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/jobs/{id}"))
        .bearer_auth(token)
        .send()
        .await
        .expect("the server answers");
    assert!(response.status().is_success(), "{response:?}");
    serde_json::from_str(&response.text().await.unwrap()).unwrap()
}

#[tokio::test]
async fn jobs_recovered_after_a_kill_are_served_in_turn_between_clients() {
    // One compute slot; one client's four slow jobs, then another client's one, all unfinished at
    // the kill. After the restart the queue serves the clients in turn: the other client's job is
    // the next to start once the first has finished, not the last.
    let data = tempfile::tempdir().unwrap();
    let tokens = format!("heavy:{HEAVY},light:{LIGHT}");
    let args = embedded_args(data.path(), &["--auth-tokens", &tokens]);
    let mut server = Process::start("herald-server", &args);
    let addr = server.server_addr().await;
    let connect = |token: &'static str| {
        let url = format!("ws://{addr}/ws");
        async move {
            let bearer = format!("Bearer {token}");
            match crate::helpers::try_connect(&url, &[("Authorization", &bearer)]).await {
                Ok((client, _)) => client,
                Err(status) => panic!("the upgrade was refused with {status}"),
            }
        }
    };
    let mut heavy = connect(HEAVY).await;
    let mut heavy_ids = Vec::new();
    for i in 0..4 {
        let input = json!({"text": format!("a long day {i}"), "seconds": 2});
        heavy_ids.push(heavy.submit_to("sentiment", input).await);
    }
    until_progress(&mut heavy, heavy_ids[0]).await;
    let mut light = connect(LIGHT).await;
    let light_id = light
        .submit_to("sentiment", json!({"text": "a short one", "seconds": 0}))
        .await;
    assert_eq!(job_as(&addr, LIGHT, light_id).await["status"], "queued");
    server.kill().await;

    let server = Process::start("herald-server", &args);
    let addr = server.server_addr().await;
    assert!(
        server.log_text().contains("requeued=5"),
        "{}",
        server.log_text()
    );
    eventually("every recovered job done", || async {
        for id in &heavy_ids {
            if job_as(&addr, HEAVY, *id).await["status"] != "done" {
                return false;
            }
        }
        job_as(&addr, LIGHT, light_id).await["status"] == "done"
    })
    .await;
    let started = |job: Value| job["started_ms"].as_u64().unwrap();
    let light_started = started(job_as(&addr, LIGHT, light_id).await);
    let mut heavy_started = Vec::new();
    for id in &heavy_ids {
        heavy_started.push(started(job_as(&addr, HEAVY, *id).await));
    }
    assert!(
        heavy_started[0] <= light_started && light_started <= heavy_started[1],
        "the other client's job starts second, not last: heavy {heavy_started:?}, light \
         {light_started}"
    );
}
