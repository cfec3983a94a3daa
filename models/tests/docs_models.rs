//! Holds docs/models.md to the code: its complete Python model runs as a model and answers as the
//! page says, its session transcript is made of real job lines and messages, and the limits it
//! states are the code's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herald_models::executable::wire::{self, job_line, MAX_ERROR_BYTES, MAX_PHASE_CHARS};
use herald_models::executable::{
    restart_delay, Executable, ExecutableOptions, DEFAULT_MAX_LINE_BYTES, DEFAULT_START_CHECK,
    DEFAULT_STOP_GRACE,
};
use herald_models::model::{Model, Run, RunError};
use herald_protocol::model::json;
use herald_protocol::JobId;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

fn page() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/models.md");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The body of the first fenced block of `language` after `heading`.
fn block(page: &str, heading: &str, language: &str) -> String {
    let section = &page[page.find(heading).expect("the heading is on the page")..];
    let fence = format!("```{language}\n");
    let start = section.find(&fence).expect("the block is there") + fence.len();
    let end = start + section[start..].find("```").expect("the block ends");
    section[start..end].to_owned()
}

#[tokio::test]
async fn the_complete_python_model_runs_as_the_page_says() {
    let code = block(&page(), "## A complete model in Python", "python");
    let path = std::env::temp_dir().join(format!("herald-docs-model-{}.py", std::process::id()));
    std::fs::write(&path, code).unwrap();
    let model = Executable::start(
        "count",
        &format!("python3 {}", path.display()),
        ExecutableOptions::default(),
    )
    .await
    .expect("the page's model starts");

    let (progress, mut seen) = watch::channel(None);
    let run = Run::new(
        JobId::new_v4(),
        Duration::from_secs(60),
        CancellationToken::new(),
        Arc::new(progress),
    );
    let output = model
        .run(json(r#"{"text":"to be or not"}"#).unwrap(), run)
        .await
        .unwrap();
    assert_eq!(output.get(), r#"{"words": 4, "longest": "not"}"#);
    let progress = seen
        .borrow_and_update()
        .clone()
        .expect("progress was reported");
    assert_eq!(progress.fraction, 0.5);
    assert_eq!(progress.phase.as_deref(), Some("counting"));

    assert_eq!(
        model
            .run(
                json("[1]").unwrap(),
                Run::detached(JobId::new_v4(), Duration::from_secs(60))
            )
            .await,
        Err(RunError::Failed(r#"the input is {"text": "..."}"#.into()))
    );
    model.shutdown().await;
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn the_session_is_made_of_job_lines_and_messages() {
    let session = block(&page(), "### A session", "text");
    let (mut jobs, mut messages) = (0, 0);
    for line in session.lines() {
        if let Some(sent) = line.strip_prefix("> ") {
            #[derive(serde::Deserialize)]
            #[serde(deny_unknown_fields)]
            struct JobLine<'a> {
                id: JobId,
                #[serde(borrow)]
                input: &'a serde_json::value::RawValue,
            }
            let job: JobLine = serde_json::from_str(sent).expect(sent);
            let written = job_line(job.id, &json(job.input.get()).unwrap());
            assert_eq!(written, format!("{sent}\n").into_bytes(), "{sent}");
            jobs += 1;
        } else if let Some(answered) = line.strip_prefix("< ") {
            wire::parse(answered.as_bytes()).expect(answered);
            messages += 1;
        } else {
            panic!("a line of the session without a marker: {line:?}");
        }
    }
    assert!(jobs >= 3 && messages >= 6);
}

#[test]
fn the_limits_on_the_page_are_the_code_s() {
    let page = page();
    let stated = [
        (
            DEFAULT_MAX_LINE_BYTES == 8 << 20,
            "**8 MiB** (8,388,608 bytes",
        ),
        (
            DEFAULT_MAX_LINE_BYTES == 8_388_608,
            "a line longer than the limit of 8388608 bytes",
        ),
        (MAX_PHASE_CHARS == 32, "1 to 32 characters"),
        (MAX_ERROR_BYTES == 1024, "cut to 1,024 bytes"),
        (DEFAULT_STOP_GRACE == Duration::from_secs(2), "grace of 2 s"),
        (
            DEFAULT_START_CHECK == Duration::from_millis(500),
            "exits within 0.5 s of its start",
        ),
        (
            restart_delay(1).is_zero()
                && restart_delay(2) == Duration::from_millis(250)
                && restart_delay(3) == Duration::from_millis(500)
                && restart_delay(100) == Duration::from_secs(30),
            "at once after the first failure, then after 0.25 s, 0.5 s, 1 s, … up to 30 s",
        ),
    ];
    // Compared with every run of whitespace as one space: rewrapping the page changes nothing.
    let words = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let page = words(&page);
    for (holds, text) in stated {
        assert!(page.contains(&words(text)), "the page says {text:?}");
        assert!(holds, "the code does what the page says: {text:?}");
    }
}
