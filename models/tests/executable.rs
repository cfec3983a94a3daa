//! Executable models driven through the `Model` trait with real CPython processes: the example
//! models of `examples/python/`, and `faulty.py`, which misbehaves on request.

use std::sync::Arc;
use std::time::Duration;

use herald_models::executable::{Executable, ExecutableOptions, StartError};
use herald_models::model::{InputError, Model, Progress, Run, RunError};
use herald_protocol::model::json;
use herald_protocol::{JobId, Json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The bound on waiting for something that must happen (a process gone, a restart): reaching it
/// fails the test, and nothing is measured against it.
const PATIENCE: Duration = Duration::from_secs(30);

/// The time limit of runs that must end for another reason than their limit: well beyond
/// [`PATIENCE`], so that the limit cannot make a test pass.
const NO_LIMIT: Duration = Duration::from_secs(3600);

fn example(file: &str) -> String {
    format!(
        "python3 {}/../examples/python/{file}",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn options(slots: usize) -> ExecutableOptions {
    ExecutableOptions {
        slots,
        stop_grace: Duration::from_millis(500),
        start_check: Duration::from_millis(100),
        ..ExecutableOptions::default()
    }
}

async fn start(file: &str, options: ExecutableOptions) -> Executable {
    Executable::start("testmodel", &example(file), options)
        .await
        .expect("the model starts")
}

fn input(text: &str) -> Json {
    json(text).expect("valid JSON")
}

/// A run with its cancel token and progress channel, as the engine makes them.
struct Watched {
    run: Run,
    cancel: CancellationToken,
    progress: watch::Receiver<Option<Progress>>,
}

fn watched(time_limit: Duration) -> Watched {
    let (sender, progress) = watch::channel(None);
    let cancel = CancellationToken::new();
    let run = Run::new(
        JobId::new_v4(),
        time_limit,
        cancel.clone(),
        Arc::new(sender),
    );
    Watched {
        run,
        cancel,
        progress,
    }
}

fn detached() -> Run {
    Run::detached(JobId::new_v4(), NO_LIMIT)
}

fn value(output: &Json) -> serde_json::Value {
    serde_json::from_str(output.get()).expect("outputs are JSON")
}

/// Runs faulty.py's echo and returns the PID of the program that answered.
async fn echo_pid(model: &Executable) -> u32 {
    let output = model
        .run(input(r#"{"do":"echo"}"#), detached())
        .await
        .expect("echo answers");
    value(&output)["pid"].as_u64().expect("a PID") as u32
}

/// The PID faulty.py reports in its progress phase ("pid N"), once it reports.
async fn reported_pid(progress: &mut watch::Receiver<Option<Progress>>) -> u32 {
    let progress = tokio::time::timeout(
        PATIENCE,
        progress.wait_for(|p| p.as_ref().is_some_and(|p| p.phase.is_some())),
    )
    .await
    .expect("the program reports progress")
    .expect("the run's progress channel stays open");
    let phase = progress.as_ref().unwrap().phase.as_deref().unwrap();
    phase
        .strip_prefix("pid ")
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("phase {phase:?}"))
}

fn alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Waits until process `pid` is gone (stopped and reaped).
async fn gone(pid: u32) {
    tokio::time::timeout(PATIENCE, async {
        while alive(pid) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("process {pid} is still there"));
}

#[tokio::test]
async fn a_result_comes_back() {
    let model = start("echo.py", options(1)).await;
    assert_eq!(model.name(), "testmodel");
    // Raw line breaks in an input (whitespace of its JSON) do not break the line protocol.
    let sent = input("{\"text\": \"a\\nb\",\n \"n\": [1, 2.5, null]}");
    let validated = model.validate(&sent).expect("any JSON passes");
    assert_eq!(validated, sent);
    assert!(!model.shares_results(&validated));
    let output = model.run(validated, detached()).await.unwrap();
    assert_eq!(
        value(&output),
        serde_json::json!({"text": "a\nb", "n": [1, 2.5, null]})
    );
    // The program stays up between jobs: the same one answers.
    let model = start("faulty.py", options(1)).await;
    let pid = echo_pid(&model).await;
    assert_eq!(echo_pid(&model).await, pid);
    assert_eq!(model.restarts(), 0);
    model.shutdown().await;
    assert!(!alive(pid));
}

#[tokio::test]
async fn progress_reaches_the_run_and_the_output_follows() {
    let model = start("slow_sentiment.py", options(1)).await;
    let mut job = watched(NO_LIMIT);
    let running = model.run(
        input(r#"{"text":"what a lovely, wonderful day","seconds":0.5}"#),
        job.run.clone(),
    );
    let (output, seen) = tokio::join!(running, async {
        let mut seen = Vec::new();
        while job.progress.changed().await.is_ok() {
            let progress = job.progress.borrow_and_update().clone().unwrap();
            let done = progress.fraction >= 1.0;
            seen.push(progress);
            if done {
                break;
            }
        }
        seen
    });
    let output = value(&output.unwrap());
    assert_eq!(output["label"], "positive");
    assert_eq!(
        output["matched"],
        serde_json::json!(["lovely", "wonderful"])
    );
    assert!(!seen.is_empty(), "progress arrived");
    assert!(seen
        .iter()
        .all(|p| (0.0..=1.0).contains(&p.fraction) && p.phase.is_some()));
    assert_eq!(seen.last().unwrap().fraction, 1.0);

    // The model checks its own input, and its refusal is the job's error.
    assert_eq!(
        model.run(input(r#"{"text":""}"#), detached()).await,
        Err(RunError::Failed(
            "\"text\" must be a non-empty string".into()
        ))
    );
}

#[tokio::test]
async fn a_cancelled_job_stops_the_program_and_the_next_job_is_served() {
    let model = Arc::new(start("faulty.py", options(1)).await);
    let mut job = watched(NO_LIMIT);
    let running = tokio::spawn({
        let (model, run) = (model.clone(), job.run.clone());
        async move { model.run(input(r#"{"do":"sleep"}"#), run).await }
    });
    let pid = reported_pid(&mut job.progress).await;
    job.cancel.cancel();
    assert_eq!(running.await.unwrap(), Err(RunError::Stopped));
    gone(pid).await;
    let next = echo_pid(&model).await;
    assert_ne!(next, pid);
    assert_eq!(model.restarts(), 1);
}

#[tokio::test]
async fn a_program_that_ignores_sigterm_is_killed_after_the_grace() {
    let model = Arc::new(start("faulty.py", options(1)).await);
    let mut job = watched(NO_LIMIT);
    let running = tokio::spawn({
        let (model, run) = (model.clone(), job.run.clone());
        async move { model.run(input(r#"{"do":"stubborn"}"#), run).await }
    });
    let pid = reported_pid(&mut job.progress).await;
    job.cancel.cancel();
    assert_eq!(running.await.unwrap(), Err(RunError::Stopped));
    gone(pid).await;
    assert_ne!(echo_pid(&model).await, pid);
}

#[tokio::test]
async fn the_time_limit_stops_a_program_that_reports_progress_or_stays_silent() {
    let model = start("faulty.py", options(1)).await;
    let first = echo_pid(&model).await;
    for what in ["sleep", "hang"] {
        let job = watched(Duration::from_millis(400));
        assert_eq!(
            model
                .run(input(&format!(r#"{{"do":"{what}"}}"#)), job.run)
                .await,
            Err(RunError::TimedOut),
            "{what}"
        );
    }
    gone(first).await;
    let next = echo_pid(&model).await;
    assert_ne!(next, first);
    assert_eq!(model.restarts(), 2);
}

#[tokio::test]
async fn a_program_that_crashes_on_one_input_crashes_that_job_only() {
    let model = start("faulty.py", options(1)).await;
    let first = echo_pid(&model).await;
    match model.run(input(r#"{"do":"crash"}"#), detached()).await {
        Err(RunError::Crashed(message)) => {
            assert!(message.contains("exit status: 3"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!alive(first));
    let second = echo_pid(&model).await;
    assert_ne!(second, first);
    for _ in 0..3 {
        assert_eq!(echo_pid(&model).await, second);
    }
    assert_eq!(model.restarts(), 1);
}

#[tokio::test]
async fn lines_outside_the_protocol_fail_the_job_and_replace_the_program() {
    let model = start("faulty.py", options(1)).await;
    let cases = [
        (r#"{"do":"garbage"}"#, "a line that is not JSON"),
        (r#"{"do":"bad_progress"}"#, "outside 0 to 1"),
    ];
    for (sent, why) in cases {
        let before = echo_pid(&model).await;
        match model.run(input(sent), detached()).await {
            Err(RunError::Failed(message)) => {
                assert!(
                    message.starts_with("the model's program printed"),
                    "{message}"
                );
                assert!(message.contains(why), "{sent}: {message}");
            }
            other => panic!("{sent}: {other:?}"),
        }
        gone(before).await;
        assert_ne!(echo_pid(&model).await, before);
    }
}

#[tokio::test]
async fn an_error_answer_fails_the_job_with_its_message_and_keeps_the_program() {
    let model = start("faulty.py", options(1)).await;
    let pid = echo_pid(&model).await;
    assert_eq!(
        model
            .run(
                input(r#"{"do":"error","message":"text too long"}"#),
                detached()
            )
            .await,
        Err(RunError::Failed("text too long".into()))
    );
    let long = "é".repeat(5000);
    match model
        .run(
            input(&format!(r#"{{"do":"error","message":"{long}"}}"#)),
            detached(),
        )
        .await
    {
        Err(RunError::Failed(message)) => {
            assert!(message.len() <= 1024 && message.ends_with('…'), "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(echo_pid(&model).await, pid);
    assert_eq!(model.restarts(), 0);
}

#[tokio::test]
async fn lines_are_limited_in_size_both_ways() {
    let model = start(
        "faulty.py",
        ExecutableOptions {
            max_line_bytes: 4096,
            ..options(1)
        },
    )
    .await;
    // A line of exactly the limit passes; one byte more fails the job.
    let output = model
        .run(input(r#"{"do":"huge","bytes":4096}"#), detached())
        .await
        .unwrap();
    assert_eq!(output.get().len(), 4096 - 12);
    match model
        .run(input(r#"{"do":"huge","bytes":4097}"#), detached())
        .await
    {
        Err(RunError::Failed(message)) => {
            assert!(
                message.contains("longer than the limit of 4096 bytes"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    // A line without end fails its job too, without the worker holding more than the limit.
    match model.run(input(r#"{"do":"endless"}"#), detached()).await {
        Err(RunError::Failed(message)) => {
            assert!(message.contains("longer than the limit"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // An input over the limit is refused before it runs.
    let big = input(&format!(r#"{{"do":"size","pad":"{}"}}"#, "x".repeat(5000)));
    assert!(matches!(model.validate(&big), Err(InputError::TooLarge(_))));
    echo_pid(&model).await;
}

#[tokio::test]
async fn a_large_input_reaches_the_program_whole() {
    let model = start("faulty.py", options(1)).await;
    // Larger than a pipe's buffer: written while the answer is read.
    let pad = "x".repeat(1 << 20);
    let sent = format!(r#"{{"do":"size","pad":"{pad}"}}"#);
    let id = JobId::new_v4();
    let output = model
        .run(input(&sent), Run::detached(id, NO_LIMIT))
        .await
        .unwrap();
    let line = format!("{{\"id\":\"{id}\",\"input\":{sent}}}\n");
    assert_eq!(output.get(), line.len().to_string());
}

#[tokio::test]
async fn a_program_that_answers_before_reading_its_whole_job_is_replaced() {
    let model = Executable::start(
        "early",
        &format!("{} --answer-early", example("faulty.py")),
        options(1),
    )
    .await
    .unwrap();
    // Far more than a pipe holds: the worker is still writing when the answer comes, and the rest
    // of the line must not become the start of the next job's.
    let big = input(&format!(r#""{}""#, "x".repeat(1 << 20)));
    let mut pids = Vec::new();
    for _ in 0..2 {
        let output = model
            .run(big.clone(), Run::detached(JobId::new_v4(), PATIENCE))
            .await
            .unwrap();
        pids.push(value(&output)["pid"].as_u64().unwrap() as u32);
    }
    assert_ne!(pids[0], pids[1]);
    gone(pids[0]).await;
}

#[tokio::test]
async fn a_second_answer_replaces_the_program() {
    let model = start("faulty.py", options(1)).await;
    let first = echo_pid(&model).await;
    let output = model
        .run(input(r#"{"do":"two_answers"}"#), detached())
        .await
        .unwrap();
    assert_eq!(output.get(), "1");
    gone(first).await;
    assert_ne!(echo_pid(&model).await, first);
}

#[tokio::test]
async fn jobs_run_side_by_side_on_as_many_programs_as_slots() {
    let model = Arc::new(start("faulty.py", options(2)).await);
    let mut first = watched(NO_LIMIT);
    let mut second = watched(NO_LIMIT);
    let runs = [&first, &second].map(|job| {
        let (model, run) = (model.clone(), job.run.clone());
        tokio::spawn(async move { model.run(input(r#"{"do":"sleep"}"#), run).await })
    });
    // Both report progress before either ends: two programs at work at once.
    let pids = [
        reported_pid(&mut first.progress).await,
        reported_pid(&mut second.progress).await,
    ];
    assert_ne!(pids[0], pids[1]);
    // A third job waits for a slot, and a stop ends it there.
    let third = watched(NO_LIMIT);
    let queued = tokio::spawn({
        let (model, run) = (model.clone(), third.run.clone());
        async move { model.run(input(r#"{"do":"echo"}"#), run).await }
    });
    third.cancel.cancel();
    assert_eq!(queued.await.unwrap(), Err(RunError::Stopped));
    // Shutdown ends the running jobs and every program.
    model.shutdown().await;
    for run in runs {
        assert_eq!(run.await.unwrap(), Err(RunError::Stopped));
    }
    for pid in pids {
        assert!(!alive(pid), "{pid}");
    }
    assert_eq!(
        model.run(input(r#"{"do":"echo"}"#), detached()).await,
        Err(RunError::Stopped)
    );
}

#[tokio::test]
async fn a_run_dropped_mid_job_stops_its_program() {
    let model = start("faulty.py", options(1)).await;
    let mut job = watched(NO_LIMIT);
    let mut running = Box::pin(model.run(input(r#"{"do":"sleep"}"#), job.run.clone()));
    let pid = tokio::select! {
        ended = &mut running => panic!("{ended:?}"),
        pid = reported_pid(&mut job.progress) => pid,
    };
    drop(running);
    gone(pid).await;
    echo_pid(&model).await;
}

#[tokio::test]
async fn a_program_that_cannot_start_fails_the_start_naming_the_command() {
    let error = Executable::start(
        "missing",
        "/nonexistent/model --flag",
        ExecutableOptions::default(),
    )
    .await
    .err()
    .expect("no such program");
    assert!(matches!(error, StartError::Spawn { .. }));
    let message = error.to_string();
    assert!(
        message.starts_with("model `missing`: cannot start `/nonexistent/model --flag`"),
        "{message}"
    );

    let command = format!("{} --exit-at-start 4", example("faulty.py"));
    let error = Executable::start(
        "dies",
        &command,
        ExecutableOptions {
            slots: 2,
            start_check: PATIENCE,
            ..ExecutableOptions::default()
        },
    )
    .await
    .err()
    .expect("the program exits at start");
    let message = error.to_string();
    assert!(message.contains(&command), "{message}");
    assert!(
        message.contains("exited at start (exit status: 4)"),
        "{message}"
    );
    assert!(
        message.contains("faulty.py: told to exit at start"),
        "{message}"
    );

    for (name, command) in [("Bad Name", "python3"), ("ok", ""), ("ok", "python3 'x")] {
        let error = Executable::start(name, command, ExecutableOptions::default())
            .await
            .err()
            .expect("refused");
        assert!(matches!(error, StartError::Invalid { .. }), "{error}");
    }
}

#[tokio::test]
async fn a_program_that_keeps_dying_is_restarted_and_never_holds_a_job_forever() {
    let model = Executable::start(
        "flaky",
        &format!("{} --live 0.1", example("faulty.py")),
        ExecutableOptions {
            start_check: Duration::ZERO,
            ..options(1)
        },
    )
    .await
    .unwrap();
    tokio::time::timeout(PATIENCE, async {
        while model.restarts() < 3 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the program is started again");
    // A job in the middle of this ends: answered by a program that lived long enough, crashed
    // with the program, or at its time limit while waiting for a program.
    let ended = model
        .run(
            input(r#"{"do":"sleep"}"#),
            Run::detached(JobId::new_v4(), Duration::from_secs(2)),
        )
        .await;
    match ended {
        Err(RunError::Crashed(message)) => assert!(message.contains("exit status: 5"), "{message}"),
        Err(RunError::TimedOut) => {}
        other => panic!("{other:?}"),
    }
    model.shutdown().await;
}
