//! `herald-worker`: computes Herald's jobs; see the library for what it does.

use clap::Parser;
use herald_engine::telemetry;
use herald_worker::{Settings, Worker};
use tokio_util::sync::CancellationToken;

// One runtime thread: the worker's async side only moves messages (40–50 µs of CPU a small job), long
// computations run on blocking threads, and RabbitMQ heartbeats on lapin's own I/O thread. Handing
// each job between two runtime threads cost more CPU than the job (BENCHMARKS.md, "Throughput").
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let settings = Settings::parse();
    telemetry::init(settings.log.log_format);
    let shutdown = CancellationToken::new();
    tokio::spawn(telemetry::cancel_on_signal(shutdown.clone()));
    // Connecting waits for RabbitMQ and Redis if they are not up yet; a signal meanwhile ends it.
    let worker = tokio::select! {
        worker = Worker::connect(settings) => worker?,
        () = shutdown.cancelled() => return Ok(()),
    };
    worker.run(shutdown).await?;
    Ok(())
}
