//! `herald-server`: the WebSocket and HTTP job gateway; see the library for what it does.

use clap::Parser;
use herald_engine::telemetry;
use herald_server::{Application, Settings};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    herald_server::capacity::return_large_blocks();
    let settings = Settings::parse();
    telemetry::init(settings.log.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(telemetry::cancel_on_signal(shutdown.clone()));
    // Building waits for RabbitMQ and Redis if they are not up yet; a signal meanwhile ends it.
    let app = tokio::select! {
        app = Application::build(settings) => app?,
        () = shutdown.cancelled() => return Ok(()),
    };
    app.run(shutdown).await?;
    Ok(())
}
