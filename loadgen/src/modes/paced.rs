//! Jobs submitted at a fixed rate over one socket of their own, each timed from its submit to its
//! result: how the server answers a working client while it holds many idle sockets (`connections
//! --jobs-per-sec`).

use std::collections::HashMap;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_protocol::{JobId, Outcome, ServerMessage};
use serde::Serialize;
use tokio::time::{sleep_until, Instant};

use super::push::code_name;
use super::CONNECT_TIMEOUT;
use crate::check::check_output;
use crate::stats::{Latencies, Problems, Summary};
use crate::target::Target;
use crate::ws::{self, classify, parse_tag, submit_frame, Incoming};

/// Longest wait for the results of jobs still in flight once submitting stops.
const DRAIN: Duration = Duration::from_secs(10);

/// What the paced jobs measured.
#[derive(Debug, Clone, Serialize)]
pub struct PacedReport {
    /// Submits per second asked for.
    pub rate: f64,
    /// Input of every job.
    pub n: u64,
    /// Jobs submitted.
    pub submitted: u64,
    /// Jobs whose result was `done` and correct.
    pub done: u64,
    /// Jobs refused, failed, cancelled or wrong.
    pub failed: u64,
    /// Jobs without a result when the run stopped waiting.
    pub unfinished: u64,
    /// Seconds from the first submit to the last.
    pub submitting_s: f64,
    /// From sending a submit frame to receiving the job's result.
    pub result_latency: Option<Summary>,
    /// Everything that went wrong.
    pub problems: Problems,
}

impl PacedReport {
    /// Every job done and correct, nothing unexpected.
    pub fn is_clean(&self) -> bool {
        self.failed == 0 && self.unfinished == 0 && self.problems.is_clean()
    }
}

/// Submits `n`! at `rate` per second until `stop`, then waits (at most 10 s) for the results.
pub async fn run(target: &Target, rate: f64, n: u64, stop: Instant) -> PacedReport {
    let mut report = PacedReport {
        rate,
        n,
        submitted: 0,
        done: 0,
        failed: 0,
        unfinished: 0,
        submitting_s: 0.0,
        result_latency: None,
        problems: Problems::default(),
    };
    let mut socket = match ws::connect(target, CONNECT_TIMEOUT).await {
        Ok(socket) => socket,
        Err(e) => {
            report
                .problems
                .transport(&format!("connect: {}", e.kind()), &e.to_string());
            return report;
        }
    };
    let start = Instant::now();
    let give_up = stop.max(start) + DRAIN;
    let mut latencies = Latencies::default();
    // Sent and waiting for `accepted` (by the submit's `ref`), then for the result (by ID).
    let mut by_tag: HashMap<u64, Instant> = HashMap::new();
    let mut by_id: HashMap<JobId, Instant> = HashMap::new();
    let mut last_submit = start;
    loop {
        // Each submit has its slot on a fixed schedule, so a slow answer does not lower the rate.
        let due = start + Duration::from_secs_f64(report.submitted as f64 / rate);
        let submitting = due < stop;
        if !submitting && by_tag.is_empty() && by_id.is_empty() {
            break;
        }
        tokio::select! {
            biased;
            () = sleep_until(give_up) => break,
            frame = socket.next() => match frame.map(|f| f.map(classify)) {
                Some(Ok(Incoming::Message(message, text))) => {
                    on_message(message, &text, n, &mut by_tag, &mut by_id, &mut latencies, &mut report);
                }
                Some(Ok(Incoming::Malformed { text, why })) => report.problems.malformed(&text, &why),
                Some(Ok(Incoming::Binary(len))) => {
                    report.problems.unexpected("binary frame", &format!("{len} bytes"));
                }
                Some(Ok(Incoming::Control)) => {}
                Some(Ok(Incoming::Closed(why))) => {
                    report.problems.transport("socket closed", &why);
                    break;
                }
                Some(Err(e)) => {
                    report.problems.transport("socket error", &e.to_string());
                    break;
                }
                None => {
                    report.problems.transport("socket closed", "the server closed the connection");
                    break;
                }
            },
            () = sleep_until(due), if submitting => {
                let tag = report.submitted;
                if let Err(e) = socket.send(submit_frame(n, tag)).await {
                    report.problems.transport("send failed", &e.to_string());
                    break;
                }
                last_submit = Instant::now();
                by_tag.insert(tag, last_submit);
                report.submitted += 1;
            }
        }
    }
    report.unfinished = (by_tag.len() + by_id.len()) as u64;
    report.submitting_s = last_submit.saturating_duration_since(start).as_secs_f64();
    report.result_latency = latencies.summary();
    let _ = tokio::time::timeout(Duration::from_secs(2), socket.close(None)).await;
    report
}

fn on_message(
    message: ServerMessage,
    text: &str,
    n: u64,
    by_tag: &mut HashMap<u64, Instant>,
    by_id: &mut HashMap<JobId, Instant>,
    latencies: &mut Latencies,
    report: &mut PacedReport,
) {
    match message {
        ServerMessage::Accepted { id, tag, .. } => {
            match parse_tag(tag.as_deref()).and_then(|tag| by_tag.remove(&tag)) {
                Some(sent) => {
                    by_id.insert(id, sent);
                }
                None => report.problems.unexpected("accepted for no submit", text),
            }
        }
        ServerMessage::Result(result) => {
            let Some(sent) = by_id.remove(&result.id) else {
                report
                    .problems
                    .unexpected("result of no job in flight", text);
                return;
            };
            let (status, detail) = match result.outcome {
                Outcome::Done { digits, output, .. } => {
                    match check_output(n, digits, output.get().trim_matches('"')) {
                        Ok(()) => {
                            latencies.record(sent.elapsed());
                            report.done += 1;
                            return;
                        }
                        Err(e) => {
                            report.failed += 1;
                            return report.problems.wrong(&format!("job {}: {e}", result.id));
                        }
                    }
                }
                Outcome::Failed { error } => ("failed", error),
                Outcome::Cancelled {} => ("cancelled", result.id.to_string()),
            };
            report.failed += 1;
            report.problems.failed(status, &detail);
        }
        ServerMessage::Error(error) => {
            report.problems.server_error(&code_name(error.code));
            if parse_tag(error.tag.as_deref())
                .and_then(|tag| by_tag.remove(&tag))
                .is_some()
            {
                report.failed += 1;
            }
        }
        // Progress and status only come for long jobs and resumes.
        ServerMessage::Progress { .. } | ServerMessage::Status { .. } => {}
    }
}
