//! `herald-worker`: computes Herald's jobs; see the library for what it does.

use clap::Parser;
use herald_worker::{telemetry, Settings, Worker};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    telemetry::init(settings.log.log_format);
    let worker = Worker::connect(settings).await?;
    let shutdown = CancellationToken::new();
    tokio::spawn(herald_worker::telemetry::cancel_on_signal(shutdown.clone()));
    worker.run(shutdown).await?;
    Ok(())
}
