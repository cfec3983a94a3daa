//! What an executable model adds per job: `Model::run` of a program (by default the trivial Python
//! echo model) against the built-in factorial for n = 10, one job at a time, on one runtime thread
//! as in `herald-worker`. Prints percentiles of both and their difference; BENCHMARKS.md has the
//! figures.
//!
//! `cargo run --release -p herald-models --example model_overhead -- [JOBS] [COMMAND]`
//! (run from the repository's root; default 20000 jobs, `python3 examples/python/echo.py`).

use std::time::{Duration, Instant};

use herald_models::executable::{Executable, ExecutableOptions};
use herald_models::model::{Model, Run};
use herald_models::Factorial;
use herald_protocol::model::factorial_input;
use herald_protocol::JobId;

/// Jobs run first and not counted: the program's and the runtime's warm-up.
const WARMUP: usize = 1000;

fn main() {
    let mut args = std::env::args().skip(1);
    let jobs: usize = args
        .next()
        .map(|n| n.parse().expect("JOBS is a number"))
        .unwrap_or(20_000);
    let command = args
        .next()
        .unwrap_or_else(|| "python3 examples/python/echo.py".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let factorial = Factorial::new(1_000_000);
        let program = Executable::start("echo", &command, ExecutableOptions::default())
            .await
            .expect("the program starts");
        let builtin = measure(&factorial, jobs).await;
        let executable = measure(&program, jobs).await;
        program.shutdown().await;
        println!(
            "{jobs} jobs each, input {{\"n\":10}}, one at a time, after {WARMUP} warm-up jobs"
        );
        println!(
            "{:<40} {:>10} {:>10} {:>10} {:>10}",
            "µs per job", "p50", "p90", "p99", "mean"
        );
        report("factorial (in process)", &builtin);
        report(&format!("`{command}`"), &executable);
        println!(
            "added by the program at p50: {:.1} µs",
            micros(percentile(&executable, 0.5)) - micros(percentile(&builtin, 0.5))
        );
    });
}

/// Times `jobs` sequential runs of `model` on `{"n":10}`, after the warm-up; sorted.
async fn measure(model: &dyn Model, jobs: usize) -> Vec<Duration> {
    let input = factorial_input(10);
    let mut times = Vec::with_capacity(jobs);
    for i in 0..WARMUP + jobs {
        let run = Run::detached(JobId::new_v4(), Duration::from_secs(60));
        let started = Instant::now();
        model
            .run(input.clone(), run)
            .await
            .expect("the job succeeds");
        if i >= WARMUP {
            times.push(started.elapsed());
        }
    }
    times.sort();
    times
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn report(label: &str, sorted: &[Duration]) {
    let mean = sorted.iter().sum::<Duration>() / sorted.len() as u32;
    println!(
        "{label:<40} {:>10.1} {:>10.1} {:>10.1} {:>10.1}",
        micros(percentile(sorted, 0.5)),
        micros(percentile(sorted, 0.9)),
        micros(percentile(sorted, 0.99)),
        micros(mean)
    );
}
