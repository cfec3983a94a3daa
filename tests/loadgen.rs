//! `herald-loadgen` against a real server with its per-client limits on: a `busy` answer names the
//! limit that gave it, and the load generator waits the `retry_after_ms` it was told before sending
//! anything more, instead of hammering the limit.

use serde_json::Value;

use crate::helpers::{binary, Mode, TestEnv, PATIENCE};

#[tokio::test]
async fn loadgen_honours_retry_after_and_names_the_submit_rate() {
    const JOBS: u64 = 20;
    let env = TestEnv::in_mode(Mode::Embedded);
    // A burst of 4, then 10 submits a second: the latency run (one job at a time, a millisecond each)
    // submits far faster than that.
    let server = env
        .spawn_app_with(herald_server::Settings {
            submit_rate: 10,
            submit_burst: 4,
            ..env.server_settings()
        })
        .await;
    let run = tokio::process::Command::new(binary("herald-loadgen"))
        .args([
            "--url",
            &server.http_url(""),
            "--json",
            "--quiet",
            "--timeout",
            "50s",
        ])
        .args(["latency", "--jobs", &JOBS.to_string(), "--warmup", "0"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PATIENCE, run)
        .await
        .expect("the load generator ends within its --timeout")
        .expect("herald-loadgen runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "herald-loadgen failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_str(&stdout).expect("one JSON report");
    assert_eq!(report["done"], JOBS, "{report}");

    // Every job beyond the burst meets the limit about once: told to wait, it waits, and the next
    // submit fits. A client that sent more in the meantime, or retried at once, would collect many
    // busy answers per job.
    let busy = report["busy_retries"].as_u64().expect("busy_retries");
    assert!(busy > 0, "the rate limit never answered busy: {report}");
    assert!(
        busy <= JOBS,
        "{busy} busy answers for {JOBS} jobs: the load generator did not wait as told: {report}"
    );
    assert_eq!(report["busy_by_limit"]["--submit-rate"], busy, "{report}");

    // The note blames the limit that answered, and not one that never did.
    let notes = report["notes"].to_string();
    assert!(notes.contains("--submit-rate"), "{notes}");
    assert!(!notes.contains("--max-in-flight"), "{notes}");
}

#[tokio::test]
async fn loadgen_measures_any_model_and_checks_its_output() {
    let env = TestEnv::in_mode(Mode::Embedded);
    let echo = format!("echo={}", crate::helpers::example_model("echo.py", ""));
    let server = env.spawn_app_with_models(&[echo], 1, 30).await;
    let run_with = |expect: &'static str| {
        let url = server.http_url("");
        async move {
            let run = tokio::process::Command::new(binary("herald-loadgen"))
                .args(["--url", &url, "--json", "--quiet", "--timeout", "50s"])
                .args([
                    "latency", "--jobs", "30", "--warmup", "2", "--model", "echo",
                ])
                .args([
                    "--input",
                    r#"{"text":"hi","n":[1,2.5]}"#,
                    "--expect",
                    expect,
                ])
                .kill_on_drop(true)
                .output();
            let output = tokio::time::timeout(PATIENCE, run)
                .await
                .expect("the load generator ends within its --timeout")
                .expect("herald-loadgen runs");
            let report: Value = serde_json::from_slice(&output.stdout).expect("one JSON report");
            (output.status.success(), report)
        }
    };
    // echo.py answers its input: the right expectation passes every job, a wrong one fails them.
    let (clean, report) = run_with(r#"{"text":"hi","n":[1,2.5]}"#).await;
    assert!(clean, "{report}");
    assert_eq!(report["done"], 32, "{report}");
    let (clean, report) = run_with(r#"{"text":"other"}"#).await;
    assert!(!clean, "a wrong output must fail the run: {report}");
    assert_eq!(report["done"], 0, "{report}");
}
