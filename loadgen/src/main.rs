//! `herald-loadgen`: drives load at a Herald server on this machine and reports latency, throughput and
//! connection capacity.

mod check;
mod cli;
mod modes;
mod progress;
mod report;
mod stats;
mod sys;
mod target;
mod ws;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tokio::time::Instant;

use crate::cli::{Cli, Command};
use crate::modes::push::Plan;
use crate::modes::{cancel, compare, connections, poll, push, Ctx};
use crate::report::Report;
use crate::target::Endpoints;

/// Past the deadline, how long a mode may take to wrap up before the run is abandoned.
const WRAP_UP: Duration = Duration::from_secs(15);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let common = cli.common;
    let target = Endpoints::parse(&common.url)?.resolve().await?;
    let ctx = Ctx {
        deadline: Instant::now() + common.timeout,
        quiet: common.quiet,
    };
    let work = async {
        anyhow::Ok(match &cli.command {
            Command::Latency(args) => {
                let plan = Plan {
                    n: args.n,
                    model: args.model.job(),
                    connections: 1,
                    window: 1,
                    jobs: args.jobs,
                    warmup: args.warmup,
                };
                Report::Latency(push::run(&target, plan, "latency", &ctx).await?)
            }
            Command::Throughput(args) => {
                let plan = Plan {
                    n: args.n,
                    model: args.model.job(),
                    connections: args.connections,
                    window: args.window,
                    jobs: args.jobs,
                    warmup: 0,
                };
                Report::Throughput(push::run(&target, plan, "throughput", &ctx).await?)
            }
            Command::Poll(args) => Report::Poll(poll::run(&target, args, &ctx).await?),
            Command::Compare(args) => {
                Report::Compare(Box::new(compare::run(&target, args, &ctx).await?))
            }
            Command::Connections(args) => {
                Report::Connections(connections::run(&target, args, &ctx).await?)
            }
            Command::Cancel(args) => Report::Cancel(cancel::run(&target, args, &ctx).await?),
        })
    };
    // Every mode stops itself at the deadline; this only guards against one that hangs while wrapping up.
    let report = tokio::time::timeout_at(ctx.deadline + WRAP_UP, work)
        .await
        .context("the run did not stop at its --timeout; nothing to report")??;
    if common.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_table());
    }
    Ok(ExitCode::from(report.verdict() as u8))
}
