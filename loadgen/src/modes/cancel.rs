//! `cancel`: long jobs cancelled once they run, one after the other over one socket, each timed from its
//! cancel frame to the job's `cancelled` result.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_protocol::{ErrorCode, JobId, Outcome, ServerMessage};
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::push::code_name;
use super::{Ctx, RunError, CONNECT_TIMEOUT};
use crate::cli::CancelArgs;
use crate::progress;
use crate::stats::{Latencies, Problems, Summary};
use crate::target::Target;
use crate::ws::{self, classify, parse_tag, submit_frame, Incoming, Socket};

/// How long the socket's Close, or a last cancel at the deadline, may take to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A `cancel` run that cannot start.
#[derive(Debug, thiserror::Error)]
pub enum CancelError {
    /// Job k computes (n - k)!: more jobs than n would run out of inputs.
    #[error(
        "--jobs {jobs} is more than --n {n}: job k computes (n - k)!, so that no two jobs share an n \
         (the worker computes an n once)"
    )]
    TooManyJobs {
        /// `--n`.
        n: u64,
        /// `--jobs`.
        jobs: u64,
    },
    /// No socket, or another reason common to all modes.
    #[error(transparent)]
    Run(#[from] RunError),
}

/// How one job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RoundOutcome {
    /// `cancelled`, after this tool's cancel: what is measured.
    Cancelled,
    /// `done`: the job finished before its cancel took effect (or before it was sent).
    Done,
    /// `failed`.
    Failed,
    /// `cancelled` before this tool sent a cancel (someone else cancelled it).
    CancelledElsewhere,
    /// The server refused the submit or the cancel with an `error`.
    Refused,
    /// No end: the run stopped, or the socket closed, first.
    Unfinished,
}

/// One job of the run.
#[derive(Debug, Clone, Serialize)]
pub struct RoundReport {
    /// Its input.
    pub n: u64,
    /// Its request ID, once accepted.
    pub id: Option<JobId>,
    /// How it ended.
    pub outcome: RoundOutcome,
    /// What the server said beyond the outcome: an error, or a finished job's digits and compute time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// From the submit to `accepted`, ms.
    pub accepted_ms: Option<f64>,
    /// From the submit to the first `progress`, ms.
    pub progress_ms: Option<f64>,
    /// The first progress's fraction, at which the cancel was sent (after `--delay`).
    pub fraction: Option<f64>,
    /// The first progress's phase.
    pub phase: Option<String>,
    /// From the cancel to the job's result, ms.
    pub cancel_ms: Option<f64>,
    /// What arrived about this job between its cancel and its result (`progress`, `error
    /// already_finished`), and after its result (`late …`), by kind.
    pub after_cancel: BTreeMap<String, u64>,
}

/// What a `cancel` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct CancelReport {
    /// The WebSocket URL.
    pub url: String,
    /// Input of the first job; job k computes (n - k)!.
    pub n: u64,
    /// Jobs asked for.
    pub jobs: u64,
    /// Wait between a job's first progress and its cancel, ms.
    pub delay_ms: f64,
    /// Jobs that ended `cancelled` after their cancel.
    pub cancelled: u64,
    /// Jobs that ended otherwise: done, failed, or cancelled by someone else.
    pub finished: u64,
    /// Jobs whose submit or cancel the server refused.
    pub refused: u64,
    /// Jobs with no end: pending when the run stopped or the socket closed, or never submitted.
    pub unfinished: u64,
    /// From sending a cancel to receiving the job's `cancelled` result.
    pub cancel_latency: Option<Summary>,
    /// From sending a submit to receiving the job's first `progress` (the job runs).
    pub progress_latency: Option<Summary>,
    /// From sending a submit to receiving its `accepted`.
    pub accepted_latency: Option<Summary>,
    /// What arrived between the cancels and their results, by kind, over all jobs.
    pub after_cancel: BTreeMap<String, u64>,
    /// Every job, in order.
    pub rounds: Vec<RoundReport>,
    /// Everything that went wrong.
    pub problems: Problems,
    /// The run hit `--timeout`.
    pub timed_out: bool,
    /// Remarks for the reader.
    pub notes: Vec<String>,
}

impl CancelReport {
    /// Whether every job ended `cancelled` after its cancel, with nothing unexpected.
    pub fn is_clean(&self) -> bool {
        self.problems.is_clean() && self.cancelled == self.jobs
    }

    /// Smallest and largest fraction at which a cancel went out.
    pub fn fraction_range(&self) -> Option<(f64, f64)> {
        self.rounds
            .iter()
            .filter_map(|r| r.fraction)
            .fold(None, |range, f| match range {
                None => Some((f, f)),
                Some((lo, hi)) => Some((f64::min(lo, f), f64::max(hi, f))),
            })
    }
}

/// A cancel frame for job `id`.
pub fn cancel_frame(id: JobId) -> Message {
    Message::text(format!(r#"{{"type":"cancel","id":"{id}"}}"#))
}

/// Submits `args.jobs` long jobs one after the other over one socket, cancels each once it reports
/// progress, and reports how long the cancels took.
pub async fn run(
    target: &Target,
    args: &CancelArgs,
    ctx: &Ctx,
) -> Result<CancelReport, CancelError> {
    if args.jobs > args.n {
        return Err(CancelError::TooManyJobs {
            n: args.n,
            jobs: args.jobs,
        });
    }
    let url = target.ws_url().to_string();
    let socket = match ws::connect(target, ctx.bounded(CONNECT_TIMEOUT)).await {
        Ok(socket) => socket,
        Err(error) => return Err(RunError::Connect { url, error }.into()),
    };
    let mut driver = Driver {
        socket,
        delay: args.delay,
        deadline: ctx.deadline,
        bar: progress::bar(args.jobs, "cancel", ctx.quiet),
        tally: Tally::default(),
    };
    let healthy = driver.drive(args).await;
    driver.bar.finish_and_clear();
    if healthy {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, driver.socket.close(None)).await;
    }
    Ok(driver.tally.into_report(url, args))
}

/// Counts over the whole run.
#[derive(Debug, Default)]
struct Tally {
    cancel: Latencies,
    progress: Latencies,
    accepted: Latencies,
    rounds: Vec<RoundReport>,
    /// Index in `rounds` of every job accepted so far, for messages that come after its round.
    earlier: HashMap<JobId, usize>,
    problems: Problems,
    timed_out: bool,
}

impl Tally {
    /// Records one finished round.
    fn end(&mut self, round: &Round, end: End) {
        if let Some(at) = round.accepted {
            self.accepted.record(at - round.submitted);
        }
        if let Some((at, _, _)) = round.progress {
            self.progress.record(at - round.submitted);
        }
        let what = format!("job {} (n={})", round.id_text(), round.n);
        let (outcome, detail, after) = match end {
            End::Cancelled(after) => {
                self.cancel.record(after);
                (RoundOutcome::Cancelled, None, Some(after))
            }
            End::Finished {
                outcome,
                detail,
                after,
            } => {
                // Short, so that a report's examples keep the ID and the figures whole.
                let (status, why) = match (outcome, after) {
                    (RoundOutcome::Done, Some(after)) => (
                        "done before its cancel took effect",
                        format!(
                            "{what}: done {:.1} ms after its cancel ({detail})",
                            ms(after)
                        ),
                    ),
                    (RoundOutcome::Done, None) => (
                        "done before any progress (no cancel sent)",
                        format!("{what}: done with no progress ({detail})"),
                    ),
                    (RoundOutcome::CancelledElsewhere, _) => (
                        "cancelled by someone else",
                        format!("{what}: cancelled before this tool sent its cancel"),
                    ),
                    _ => ("failed instead of cancelled", format!("{what}: {detail}")),
                };
                self.problems.failed(status, &why);
                (outcome, Some(detail), after)
            }
            End::Refused { code, message } => {
                let code = code_name(code);
                self.problems.server_error(&code);
                let what = if round.cancel_sent.is_some() {
                    "cancel"
                } else {
                    "submit"
                };
                self.problems.failed(
                    "refused",
                    &format!("{what} of n={}: {code}: {message}", round.n),
                );
                (
                    RoundOutcome::Refused,
                    Some(format!("{code}: {message}")),
                    None,
                )
            }
            End::Unfinished => (RoundOutcome::Unfinished, None, None),
        };
        if let Some(id) = round.id {
            self.earlier.insert(id, self.rounds.len());
        }
        self.rounds.push(RoundReport {
            n: round.n,
            id: round.id,
            outcome,
            detail,
            accepted_ms: round.accepted.map(|at| ms(at - round.submitted)),
            progress_ms: round
                .progress
                .as_ref()
                .map(|(at, _, _)| ms(*at - round.submitted)),
            fraction: round.progress.as_ref().map(|(_, fraction, _)| *fraction),
            phase: round
                .progress
                .as_ref()
                .and_then(|(_, _, phase)| phase.clone()),
            cancel_ms: after.map(ms),
            after_cancel: round.after_cancel.clone(),
        });
    }

    /// Files a message about a job whose round is over; `false` if it is about no earlier job.
    fn late(&mut self, message: &ServerMessage, text: &str) -> bool {
        let Some(index) = about(message).and_then(|id| self.earlier.get(&id).copied()) else {
            return false;
        };
        let kind = kind(message);
        let Some(round) = self.rounds.get_mut(index) else {
            return false;
        };
        // A cancel that reaches a job just finished is answered `already_finished` after the result:
        // that job is already counted as a problem. Anything else about an ended job should not come.
        if !(kind == "error already_finished" && round.outcome != RoundOutcome::Cancelled) {
            self.problems.unexpected("message about an ended job", text);
        }
        *round
            .after_cancel
            .entry(format!("late {kind}"))
            .or_default() += 1;
        true
    }

    fn into_report(self, url: String, args: &CancelArgs) -> CancelReport {
        let count = |outcome: RoundOutcome| {
            self.rounds.iter().filter(|r| r.outcome == outcome).count() as u64
        };
        let cancelled = count(RoundOutcome::Cancelled);
        let refused = count(RoundOutcome::Refused);
        let unfinished =
            args.jobs.saturating_sub(self.rounds.len() as u64) + count(RoundOutcome::Unfinished);
        let finished =
            self.rounds.len() as u64 - cancelled - refused - count(RoundOutcome::Unfinished);
        let mut after_cancel = BTreeMap::new();
        for round in &self.rounds {
            for (kind, count) in &round.after_cancel {
                *after_cancel.entry(kind.clone()).or_default() += count;
            }
        }
        let mut notes = Vec::new();
        let done = |cancel_sent: bool| {
            self.rounds
                .iter()
                .filter(|r| r.outcome == RoundOutcome::Done && r.cancel_ms.is_some() == cancel_sent)
                .count()
        };
        if done(true) > 0 {
            notes.push(format!(
                "{} of {} jobs ended done, not cancelled: they finished before their cancel took \
                 effect. Raise --n (at most the server's --max-n) or shorten --delay",
                done(true),
                self.rounds.len()
            ));
        }
        if done(false) > 0 {
            notes.push(format!(
                "{} of {} jobs ended done before their first progress, so no cancel was sent: jobs \
                 shorter than 250 ms report no progress (and a loaded machine delays it). Raise --n",
                done(false),
                self.rounds.len()
            ));
        }
        CancelReport {
            url,
            n: args.n,
            jobs: args.jobs,
            delay_ms: ms(args.delay),
            cancelled,
            finished,
            refused,
            unfinished,
            cancel_latency: self.cancel.summary(),
            progress_latency: self.progress.summary(),
            accepted_latency: self.accepted.summary(),
            after_cancel,
            rounds: self.rounds,
            problems: self.problems,
            timed_out: self.timed_out,
            notes,
        }
    }
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// The job a server message is about, where it names one.
fn about(message: &ServerMessage) -> Option<JobId> {
    match message {
        ServerMessage::Accepted { id, .. }
        | ServerMessage::Status { id, .. }
        | ServerMessage::Progress { id, .. } => Some(*id),
        ServerMessage::Result(result) => Some(result.id),
        ServerMessage::Error(error) => error.id,
    }
}

/// A short name of a server message: `progress`, `result cancelled`, `error already_finished`, ….
fn kind(message: &ServerMessage) -> String {
    match message {
        ServerMessage::Accepted { .. } => "accepted".into(),
        ServerMessage::Status { .. } => "status".into(),
        ServerMessage::Progress { .. } => "progress".into(),
        ServerMessage::Result(result) => match result.outcome {
            Outcome::Done { .. } => "result done".into(),
            Outcome::Failed { .. } => "result failed".into(),
            Outcome::Cancelled {} => "result cancelled".into(),
        },
        ServerMessage::Error(error) => format!("error {}", code_name(error.code)),
    }
}

/// How a round ended.
#[derive(Debug, Clone, PartialEq)]
enum End {
    /// `cancelled`, this long after the cancel went out.
    Cancelled(Duration),
    /// Done, failed, or cancelled by someone else; `after` is the time since this tool's cancel, if sent.
    Finished {
        outcome: RoundOutcome,
        detail: String,
        after: Option<Duration>,
    },
    /// The server refused the submit or the cancel.
    Refused { code: ErrorCode, message: String },
    /// The run stopped, or the socket closed, first.
    Unfinished,
}

/// What a message means for the round in progress.
#[derive(Debug, Clone, PartialEq)]
enum Step {
    /// Read on.
    Wait,
    /// The job's first progress: it runs, so its cancel is due (after `--delay`).
    Running(JobId),
    /// The round is over.
    End(End),
    /// A message that does not belong (what it was, for the problems).
    Unexpected(&'static str),
}

/// One job, from its submit to its result.
#[derive(Debug)]
struct Round {
    /// Its `ref`: the job's number in the run.
    seq: u64,
    n: u64,
    submitted: Instant,
    id: Option<JobId>,
    accepted: Option<Instant>,
    progress: Option<(Instant, f64, Option<String>)>,
    cancel_sent: Option<Instant>,
    after_cancel: BTreeMap<String, u64>,
}

impl Round {
    fn new(seq: u64, n: u64, submitted: Instant) -> Self {
        Self {
            seq,
            n,
            submitted,
            id: None,
            accepted: None,
            progress: None,
            cancel_sent: None,
            after_cancel: BTreeMap::new(),
        }
    }

    fn id_text(&self) -> String {
        self.id
            .map_or_else(|| "(not accepted)".into(), |id| id.to_string())
    }

    fn ours(&self, id: JobId) -> bool {
        self.id == Some(id)
    }

    /// Takes one message from the server, received at `now`.
    fn on_message(&mut self, message: &ServerMessage, now: Instant) -> Step {
        match message {
            ServerMessage::Accepted { id, n, tag, .. } => {
                if self.id.is_some() || parse_tag(tag.as_deref()) != Some(self.seq) {
                    return Step::Unexpected("accepted for no pending submit");
                }
                if *n != Some(self.n) {
                    return Step::Unexpected("accepted with another n");
                }
                self.id = Some(*id);
                self.accepted = Some(now);
                Step::Wait
            }
            ServerMessage::Progress {
                id,
                fraction,
                phase,
                ..
            } if self.ours(*id) => {
                if self.cancel_sent.is_some() {
                    self.count_after_cancel(message);
                    Step::Wait
                } else if self.progress.is_some() {
                    // A further progress while --delay runs: the cancel is already due.
                    Step::Wait
                } else {
                    self.progress = Some((now, *fraction, phase.clone()));
                    Step::Running(*id)
                }
            }
            ServerMessage::Result(result) if self.ours(result.id) => {
                let after = self.cancel_sent.map(|at| now.saturating_duration_since(at));
                let (outcome, detail) = match (&result.outcome, after) {
                    (Outcome::Cancelled {}, Some(after)) => {
                        return Step::End(End::Cancelled(after))
                    }
                    (Outcome::Cancelled {}, None) => {
                        (RoundOutcome::CancelledElsewhere, "cancelled".to_owned())
                    }
                    (
                        Outcome::Done {
                            digits, timings, ..
                        },
                        _,
                    ) => (
                        RoundOutcome::Done,
                        format!(
                            "{} digits, compute_ms {}",
                            digits.unwrap_or_default(),
                            timings.compute_ms
                        ),
                    ),
                    (Outcome::Failed { error }, _) => (RoundOutcome::Failed, error.clone()),
                };
                Step::End(End::Finished {
                    outcome,
                    detail,
                    after,
                })
            }
            ServerMessage::Error(error) => {
                let refused = End::Refused {
                    code: error.code,
                    message: error.message.clone(),
                };
                if self.id.is_none() && parse_tag(error.tag.as_deref()) == Some(self.seq) {
                    return Step::End(refused);
                }
                match error.id {
                    Some(id) if self.ours(id) && self.cancel_sent.is_some() => {
                        if error.code == ErrorCode::AlreadyFinished {
                            // The job ended first; its result reaches this socket all the same, since
                            // the submit made it a watcher.
                            self.count_after_cancel(message);
                            Step::Wait
                        } else {
                            Step::End(refused)
                        }
                    }
                    _ => Step::Unexpected("error for no pending request"),
                }
            }
            ServerMessage::Progress { .. } => Step::Unexpected("progress of another job"),
            ServerMessage::Result(_) => Step::Unexpected("result of another job"),
            ServerMessage::Status { .. } => Step::Unexpected("status (this tool never resumes)"),
        }
    }

    fn count_after_cancel(&mut self, message: &ServerMessage) {
        *self.after_cancel.entry(kind(message)).or_default() += 1;
    }
}

/// How waiting on one round stopped.
enum Flow {
    /// The round ended.
    Ended(End),
    /// The deadline came first.
    TimedOut,
    /// The socket closed or broke.
    Lost,
}

/// The socket and what it has counted.
struct Driver {
    socket: Socket,
    delay: Duration,
    deadline: Instant,
    bar: ProgressBar,
    tally: Tally,
}

impl Driver {
    /// Runs the rounds; `false` if the socket was lost.
    async fn drive(&mut self, args: &CancelArgs) -> bool {
        for seq in 0..args.jobs {
            // Distinct inputs: a job for an n the worker already computes would wait for that computation.
            let mut round = Round::new(seq, args.n - seq, Instant::now());
            if let Err(e) = self.socket.send(submit_frame(round.n, seq)).await {
                self.tally.problems.transport("send failed", &e.to_string());
                self.tally.end(&round, End::Unfinished);
                return false;
            }
            let flow = self.wait(&mut round).await;
            self.bar.inc(1);
            match flow {
                Flow::Ended(end) => self.tally.end(&round, end),
                Flow::TimedOut => {
                    self.tally.timed_out = true;
                    // Spare the worker the rest of a computation nobody waits for.
                    if let (Some(id), None) = (round.id, round.cancel_sent) {
                        let send = self.socket.send(cancel_frame(id));
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, send).await;
                    }
                    self.tally.end(&round, End::Unfinished);
                    return true;
                }
                Flow::Lost => {
                    self.tally.end(&round, End::Unfinished);
                    return false;
                }
            }
        }
        true
    }

    /// Reads until `round` ends, sending its cancel once the job runs (and `--delay` has passed).
    async fn wait(&mut self, round: &mut Round) -> Flow {
        let mut cancel_due: Option<(Instant, JobId)> = None;
        loop {
            tokio::select! {
                biased;
                () = sleep_until(self.deadline) => return Flow::TimedOut,
                () = sleep_until(cancel_due.map_or(self.deadline, |(at, _)| at)), if cancel_due.is_some() => {
                    let Some((_, id)) = cancel_due.take() else { continue };
                    let at = Instant::now();
                    if let Err(e) = self.socket.send(cancel_frame(id)).await {
                        self.tally.problems.transport("send failed", &e.to_string());
                        return Flow::Lost;
                    }
                    round.cancel_sent = Some(at);
                }
                frame = self.socket.next() => {
                    // Taken before parsing, so that the time is the frame's arrival.
                    let now = Instant::now();
                    let problems = &mut self.tally.problems;
                    match frame {
                        None => {
                            problems.transport("socket closed", "the server closed the connection");
                            return Flow::Lost;
                        }
                        Some(Err(e)) => {
                            problems.transport("socket error", &e.to_string());
                            return Flow::Lost;
                        }
                        Some(Ok(message)) => match classify(message) {
                            Incoming::Message(message, text) => {
                                if self.tally.late(&message, &text) {
                                    continue;
                                }
                                match round.on_message(&message, now) {
                                    Step::Wait => {}
                                    Step::Running(id) => cancel_due = Some((now + self.delay, id)),
                                    Step::End(end) => return Flow::Ended(end),
                                    Step::Unexpected(what) => {
                                        self.tally.problems.unexpected(what, &text);
                                    }
                                }
                            }
                            Incoming::Malformed { text, why } => problems.malformed(&text, &why),
                            Incoming::Binary(len) => {
                                problems.unexpected("binary frame", &format!("{len} bytes"));
                            }
                            Incoming::Control => {}
                            Incoming::Closed(why) => {
                                problems.transport("socket closed", &why);
                                return Flow::Lost;
                            }
                        },
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::{parse_client_frame, ClientMessage, ErrorMessage, JobResult, Timings};

    const ID: &str = "0b8c6f1e-5d0c-4a8e-9c55-2f0c1f7f4a11";
    const OTHER: &str = "5d1f0000-5d0c-4a8e-9c55-2f0c1f7f4a11";

    fn id(text: &str) -> JobId {
        text.parse().unwrap()
    }

    fn accepted(seq: u64, n: u64) -> ServerMessage {
        ServerMessage::Accepted {
            id: id(ID),
            model: herald_protocol::FACTORIAL.into(),
            n: Some(n),
            tag: Some(seq.to_string()),
            workers: None,
            existing: false,
        }
    }

    fn progress(job: &str, fraction: f64) -> ServerMessage {
        ServerMessage::Progress {
            id: id(job),
            model: herald_protocol::FACTORIAL.into(),
            fraction,
            phase: Some("product".into()),
        }
    }

    fn result(job: &str, n: u64, outcome: Outcome) -> ServerMessage {
        ServerMessage::Result(JobResult {
            id: id(job),
            model: herald_protocol::FACTORIAL.into(),
            n: Some(n),
            outcome,
        })
    }

    fn done() -> Outcome {
        Outcome::Done {
            digits: Some(5_565_709),
            output: herald_protocol::model::json_string("1"),
            timings: Timings {
                queued_ms: 0,
                compute_ms: 900,
                total_ms: 905,
            },
        }
    }

    fn error(code: ErrorCode, job: Option<&str>, tag: Option<&str>) -> ServerMessage {
        let mut e = ErrorMessage::new(code, "m").with_tag(tag.map(str::to_owned));
        e.id = job.map(id);
        ServerMessage::Error(e)
    }

    #[test]
    fn cancel_frames_are_what_the_server_parses() {
        let Message::Text(text) = cancel_frame(id(ID)) else {
            panic!("a text frame");
        };
        assert_eq!(
            parse_client_frame(text.as_str()),
            Ok(ClientMessage::Cancel { id: id(ID) })
        );
    }

    #[test]
    fn a_cancel_is_due_at_the_first_progress_and_timed_to_the_cancelled_result() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        let mut round = Round::new(3, 999_997, t0);
        assert_eq!(round.on_message(&accepted(3, 999_997), at(2)), Step::Wait);
        assert_eq!(
            round.on_message(&progress(ID, 0.25), at(260)),
            Step::Running(id(ID))
        );
        round.cancel_sent = Some(at(261));
        // A progress already on its way is counted, not a second cancel.
        assert_eq!(round.on_message(&progress(ID, 0.3), at(280)), Step::Wait);
        assert_eq!(
            round.on_message(&result(ID, 999_997, Outcome::Cancelled {}), at(311)),
            Step::End(End::Cancelled(Duration::from_millis(50)))
        );
        assert_eq!(round.after_cancel, BTreeMap::from([("progress".into(), 1)]));

        let mut tally = Tally::default();
        tally.end(&round, End::Cancelled(Duration::from_millis(50)));
        let report = tally.into_report(
            "ws://x/ws".into(),
            &CancelArgs {
                n: 1_000_000,
                jobs: 1,
                delay: Duration::ZERO,
            },
        );
        assert!(report.is_clean(), "{report:?}");
        assert_eq!(
            (report.cancelled, report.finished, report.unfinished),
            (1, 0, 0)
        );
        // Three significant digits: the histogram's bucket, not the exact value.
        let near = |s: Option<Summary>, want: f64| {
            s.is_some_and(|s| (s.p50_ms - want).abs() < want / 1000.0)
        };
        assert!(
            near(report.cancel_latency, 50.0),
            "{:?}",
            report.cancel_latency
        );
        assert!(
            near(report.progress_latency, 260.0),
            "{:?}",
            report.progress_latency
        );
        assert_eq!(report.rounds[0].fraction, Some(0.25));
        assert_eq!(report.rounds[0].cancel_ms, Some(50.0));
        assert_eq!(report.after_cancel["progress"], 1);
        assert_eq!(report.fraction_range(), Some((0.25, 0.25)));
    }

    #[test]
    fn a_job_that_finishes_first_is_a_clear_problem() {
        let t0 = Instant::now();
        let mut round = Round::new(0, 1_000_000, t0);
        round.on_message(&accepted(0, 1_000_000), t0);
        round.on_message(&progress(ID, 0.9), t0);
        round.cancel_sent = Some(t0);
        let later = t0 + Duration::from_millis(5);
        let Step::End(end) = round.on_message(&result(ID, 1_000_000, done()), later) else {
            panic!("the result ends the round");
        };
        assert!(matches!(
            end,
            End::Finished {
                outcome: RoundOutcome::Done,
                after: Some(_),
                ..
            }
        ));
        let mut tally = Tally::default();
        tally.end(&round, end);
        // The cancel's answer comes after the result: filed under that job, not a second problem.
        let late = error(ErrorCode::AlreadyFinished, Some(ID), None);
        assert!(tally.late(&late, "{}"));
        assert!(!tally.late(&progress(OTHER, 0.1), "{}"));
        let report = tally.into_report(
            "ws://x/ws".into(),
            &CancelArgs {
                n: 1_000_000,
                jobs: 2,
                delay: Duration::ZERO,
            },
        );
        assert!(!report.is_clean());
        assert_eq!(
            (report.cancelled, report.finished, report.unfinished),
            (0, 1, 1)
        );
        assert_eq!(
            report.problems.failed_jobs["done before its cancel took effect"],
            1
        );
        assert!(
            report.problems.unexpected.is_empty(),
            "{:?}",
            report.problems
        );
        assert!(
            report.problems.samples[0].contains("done 5.0 ms after its cancel"),
            "{:?}",
            report.problems.samples
        );
        assert_eq!(
            report.rounds[0].after_cancel["late error already_finished"],
            1
        );
        assert!(report.notes[0].contains("Raise --n"), "{:?}", report.notes);
        assert_eq!(report.cancel_latency, None);
    }

    #[test]
    fn a_short_job_ends_before_any_progress() {
        let t0 = Instant::now();
        let mut round = Round::new(0, 10, t0);
        round.on_message(&accepted(0, 10), t0);
        assert!(matches!(
            round.on_message(&result(ID, 10, done()), t0),
            Step::End(End::Finished {
                outcome: RoundOutcome::Done,
                after: None,
                ..
            })
        ));
    }

    #[test]
    fn refusals_and_strays() {
        let t0 = Instant::now();
        let mut round = Round::new(4, 100, t0);
        // Before `accepted`: nothing of this job can be recognised by ID yet.
        assert_eq!(
            round.on_message(&progress(ID, 0.5), t0),
            Step::Unexpected("progress of another job")
        );
        assert_eq!(
            round.on_message(&accepted(5, 100), t0),
            Step::Unexpected("accepted for no pending submit")
        );
        assert_eq!(
            round.on_message(&accepted(4, 101), t0),
            Step::Unexpected("accepted with another n")
        );
        assert!(matches!(
            round.on_message(&error(ErrorCode::TooLarge, None, Some("4")), t0),
            Step::End(End::Refused {
                code: ErrorCode::TooLarge,
                ..
            })
        ));
        round.on_message(&accepted(4, 100), t0);
        assert_eq!(
            round.on_message(&result(OTHER, 100, Outcome::Cancelled {}), t0),
            Step::Unexpected("result of another job")
        );
        assert_eq!(
            round.on_message(&error(ErrorCode::NotFound, Some(ID), None), t0),
            Step::Unexpected("error for no pending request"),
            "no cancel was sent yet"
        );
        round.cancel_sent = Some(t0);
        assert_eq!(
            round.on_message(&error(ErrorCode::AlreadyFinished, Some(ID), None), t0),
            Step::Wait
        );
        assert!(matches!(
            round.on_message(&error(ErrorCode::NotFound, Some(ID), None), t0),
            Step::End(End::Refused {
                code: ErrorCode::NotFound,
                ..
            })
        ));
        assert!(matches!(
            Round::new(0, 5, t0).on_message(&result(ID, 5, Outcome::Cancelled {}), t0),
            Step::Unexpected(_)
        ));
    }

    #[test]
    fn too_many_jobs_for_n() {
        let e = CancelError::TooManyJobs { n: 5, jobs: 6 };
        assert!(e.to_string().contains("--jobs 6 is more than --n 5"), "{e}");
    }
}
