//! An executable model's stderr in the worker's log. Its own test binary: tracing caches which
//! subscribers want a log line per call site, and a subscriber scoped to one test misses lines
//! while other tests of the same binary run on other threads without one.

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herald_models::executable::{Executable, ExecutableOptions};
use herald_models::model::{Model, Run};
use herald_protocol::model::json;
use herald_protocol::JobId;

/// Log lines written by the test's thread (tests run on a current-thread runtime).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn stderr_goes_to_the_log_with_the_model_and_the_request_id() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _default = tracing::subscriber::set_default(subscriber);

    let command = format!(
        "python3 {}/../examples/python/faulty.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let model = Executable::start("testmodel", &command, ExecutableOptions::default())
        .await
        .unwrap();
    let id = JobId::new_v4();
    model
        .run(
            json(r#"{"do":"log","text":"hello from the model"}"#).unwrap(),
            Run::detached(id, Duration::from_secs(3600)),
        )
        .await
        .unwrap();
    // The line is read by its own task: wait until it is in the log.
    let line = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
            if let Some(line) = text.lines().find(|l| l.contains("hello from the model")) {
                return line.to_owned();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the stderr line is logged");
    assert!(line.contains(&format!("job{{id={id}}}")), "{line}");
    assert!(line.contains("model=testmodel"), "{line}");
}
