//! `compare`: the same jobs pushed over a WebSocket and polled over HTTP, one after the other, side by side.

use serde::Serialize;

use super::poll::{self, PollReport};
use super::push::{self, Plan, PushReport};
use super::{Ctx, RunError};
use crate::cli::CompareArgs;
use crate::stats::Summary;
use crate::target::Target;

/// Both halves and how they relate.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    /// One job at a time over one WebSocket.
    pub push: PushReport,
    /// The classic polling API.
    pub poll: PollReport,
    /// Mean poll latency over mean push latency.
    pub ratio_mean: Option<f64>,
    /// Median poll latency over median push latency.
    pub ratio_p50: Option<f64>,
}

impl CompareReport {
    /// Joins the halves.
    pub fn new(push: PushReport, poll: PollReport) -> Self {
        let (ratio_mean, ratio_p50) = ratios(push.result_latency, poll.result_latency);
        Self {
            push,
            poll,
            ratio_mean,
            ratio_p50,
        }
    }

    /// Either half hit the deadline.
    pub fn timed_out(&self) -> bool {
        self.push.timed_out || self.poll.timed_out
    }

    /// Both halves did all their jobs with no problem.
    pub fn is_clean(&self) -> bool {
        self.push.is_clean() && self.poll.is_clean()
    }
}

/// Poll over push, of the means and of the medians.
pub fn ratios(push: Option<Summary>, poll: Option<Summary>) -> (Option<f64>, Option<f64>) {
    let ratio = |a: f64, b: f64| (b > 0.0).then(|| a / b);
    match (push, poll) {
        (Some(push), Some(poll)) => (
            ratio(poll.mean_ms, push.mean_ms),
            ratio(poll.p50_ms, push.p50_ms),
        ),
        _ => (None, None),
    }
}

/// Runs the push half, then the polling half, within one deadline.
pub async fn run(
    target: &Target,
    args: &CompareArgs,
    ctx: &Ctx,
) -> Result<CompareReport, RunError> {
    let latency = args.latency();
    let plan = Plan {
        n: latency.n,
        model: None,
        connections: 1,
        window: 1,
        jobs: latency.jobs,
        warmup: latency.warmup,
    };
    let push = push::run(target, plan, "push", ctx).await?;
    let poll = poll::run(target, &args.poll(), ctx).await?;
    Ok(CompareReport::new(push, poll))
}
