//! The real ML example, `examples/python/embeddings.py` (WordLlama from PyPI), behind the Model
//! trait. Not built in the default run (cargo feature `ml-example`): it needs the example's virtual
//! environment, from PyPI. Run it with
//!
//! ```sh
//! python3 -m venv target/embeddings-venv
//! target/embeddings-venv/bin/pip install -r examples/python/requirements-embeddings.txt
//! HERALD_EMBEDDINGS_PYTHON=$PWD/target/embeddings-venv/bin/python \
//!     cargo test -p herald-models --features ml-example --test embeddings
//! ```

use std::time::Duration;

use herald_models::executable::{Executable, ExecutableOptions};
use herald_models::model::{Model, Run, RunError};
use herald_protocol::model::json;
use herald_protocol::JobId;

fn run() -> Run {
    Run::detached(JobId::new_v4(), Duration::from_secs(120))
}

#[tokio::test]
async fn sentence_embeddings_from_a_real_model() {
    let python = std::env::var("HERALD_EMBEDDINGS_PYTHON")
        .expect("HERALD_EMBEDDINGS_PYTHON names the Python of the example's virtual environment");
    let command = format!(
        "{python} {}/../examples/python/embeddings.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let model = Executable::start(
        "embed",
        &command,
        ExecutableOptions {
            start_check: Duration::from_secs(2),
            ..ExecutableOptions::default()
        },
    )
    .await
    .expect("the model starts");

    let output = model
        .run(
            json(r#"{"texts":["hello world","good morning"]}"#).unwrap(),
            run(),
        )
        .await
        .unwrap();
    let output: serde_json::Value = serde_json::from_str(output.get()).unwrap();
    assert_eq!(output["dim"], 256);
    let embeddings = output["embeddings"].as_array().unwrap();
    assert_eq!(embeddings.len(), 2);
    assert!(embeddings
        .iter()
        .all(|e| e.as_array().unwrap().len() == 256));

    let output = model
        .run(
            json(r#"{"query":"i went to the car","candidates":["i went to the park","i went to the vehicle"]}"#)
                .unwrap(),
            run(),
        )
        .await
        .unwrap();
    let output: serde_json::Value = serde_json::from_str(output.get()).unwrap();
    // The model knows that a vehicle is closer to a car than a park is.
    assert_eq!(output["ranked"][0]["text"], "i went to the vehicle");

    assert!(matches!(
        model.run(json(r#"{"texts":[]}"#).unwrap(), run()).await,
        Err(RunError::Failed(message)) if message.contains("\"texts\" must be a list")
    ));
    model.shutdown().await;
}
