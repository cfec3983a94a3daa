//! The push path (`latency` and `throughput`): sockets that submit jobs, pipelined up to a window, and
//! time each one from its submit frame to its pushed result.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use herald_protocol::{ErrorCode, JobId, Outcome, ServerMessage};
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::time::{sleep_until, Instant};

use super::{Ctx, JobPool, RunError, CONNECT_TIMEOUT};
use crate::check::check_output;
use crate::progress;
use crate::stats::{Latencies, Problems, Summary};
use crate::target::Target;
use crate::ws::{self, classify, parse_tag, submit_frame, Incoming, Socket};

/// Sockets opened at once while a run sets up.
const PARALLEL_CONNECTS: usize = 32;

/// How long a finished socket waits for its Close to go out.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Accepted jobs left without a result that a report names, for looking them up afterwards.
const MAX_AWAITING_IDS: usize = 10;

/// Wait before retrying a `busy` submit when the server gives no `retry_after_ms`.
const DEFAULT_RETRY: Duration = Duration::from_secs(1);

/// A job of another model than the factorial: what every job of a run submits and should get.
#[derive(Debug, Clone)]
pub struct ModelJob {
    /// The model.
    pub model: String,
    /// Its input, as JSON text.
    pub input: String,
    /// The output each job must give; without it, any `done` result counts.
    pub expect: Option<serde_json::Value>,
}

impl ModelJob {
    /// The submit frame of job `tag`.
    fn submit_frame(&self, tag: u64) -> tokio_tungstenite::tungstenite::Message {
        tokio_tungstenite::tungstenite::Message::text(format!(
            r#"{{"type":"submit","model":{},"input":{},"ref":"{tag}"}}"#,
            serde_json::Value::from(self.model.as_str()),
            self.input
        ))
    }
}

/// The shape of a push run.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Input of every job (the factorial's n).
    pub n: u64,
    /// Submit to this model instead of the factorial.
    pub model: Option<Arc<ModelJob>>,
    /// Sockets.
    pub connections: u64,
    /// Jobs in flight per socket.
    pub window: u64,
    /// Jobs measured.
    pub jobs: u64,
    /// Jobs run first and not measured.
    pub warmup: u64,
}

/// Means of the timings the server reports in each `done` result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerTimings {
    /// From the server taking the job to a worker starting it.
    pub queued_ms: f64,
    /// The worker's compute time.
    pub compute_ms: f64,
    /// From the submit to the result leaving the server.
    pub total_ms: f64,
}

/// What a `latency` or `throughput` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    /// The WebSocket URL.
    pub url: String,
    /// Input of every job.
    pub n: u64,
    /// Sockets asked for.
    pub connections: u64,
    /// Sockets that opened.
    pub connections_open: u64,
    /// Jobs in flight per socket at most.
    pub window: u64,
    /// Jobs measured (asked for).
    pub jobs: u64,
    /// Jobs run first and not measured.
    pub warmup: u64,
    /// Jobs (warm-up included) whose result was `done` and correct.
    pub done: u64,
    /// Jobs (warm-up included) that ended otherwise: failed or cancelled, refused with an error other
    /// than `busy`, or a wrong result.
    pub failed: u64,
    /// Jobs with no end: submitted when the run stopped or a socket closed, or never submitted.
    pub unfinished: u64,
    /// Of the unfinished jobs, those accepted whose result never came.
    pub awaiting_result: u64,
    /// Some of them, to look up (resume, or read their Redis record).
    pub awaiting_ids: Vec<JobId>,
    /// Submits answered `busy` and sent again after `retry_after_ms`.
    pub busy_retries: u64,
    /// The same, by the server limit that answered (`--submit-rate`, `--max-in-flight`, …).
    pub busy_by_limit: BTreeMap<String, u64>,
    /// Seconds from the first measured submit to the last measured result.
    pub elapsed_s: f64,
    /// Measured jobs done per second over `elapsed_s`.
    pub jobs_per_s: f64,
    /// From sending a submit frame to receiving the job's result.
    pub result_latency: Option<Summary>,
    /// From sending a submit frame to receiving its `accepted`.
    pub accepted_latency: Option<Summary>,
    /// Means of the timings the server reported in the measured results.
    pub server_timings: Option<ServerTimings>,
    /// Everything that went wrong.
    pub problems: Problems,
    /// The run hit `--timeout`.
    pub timed_out: bool,
    /// Remarks for the reader.
    pub notes: Vec<String>,
}

impl PushReport {
    /// Whether the run did all its jobs with no problem.
    pub fn is_clean(&self) -> bool {
        self.problems.is_clean() && self.failed == 0 && self.unfinished == 0
    }
}

/// Opens `plan.connections` sockets, runs the jobs over them, and reports.
pub async fn run(
    target: &Target,
    plan: Plan,
    label: &str,
    ctx: &Ctx,
) -> Result<PushReport, RunError> {
    let url = target.ws_url().to_string();
    let mut problems = Problems::default();
    let mut first_error = None;
    let results: Vec<_> = futures::stream::iter(0..plan.connections)
        .map(|_| ws::connect(target, ctx.bounded(CONNECT_TIMEOUT)))
        .buffer_unordered(PARALLEL_CONNECTS)
        .collect()
        .await;
    let mut sockets = Vec::new();
    for result in results {
        match result {
            Ok(socket) => sockets.push(socket),
            Err(e) => {
                problems.transport(&format!("connect: {}", e.kind()), &e.to_string());
                first_error.get_or_insert(e);
            }
        }
    }
    if sockets.is_empty() {
        let error = first_error.expect("at least one socket was attempted");
        return Err(RunError::Connect { url, error });
    }

    let pool = Arc::new(JobPool::new(plan.jobs, plan.warmup));
    let bar = progress::bar(pool.total(), label, ctx.quiet);
    let connections_open = sockets.len() as u64;
    let tasks: Vec<_> = sockets
        .into_iter()
        .map(|socket| {
            let driver = Driver {
                n: plan.n,
                model: plan.model.clone(),
                window: plan.window as usize,
                pool: pool.clone(),
                deadline: ctx.deadline,
                bar: bar.clone(),
            };
            tokio::spawn(async move { driver.drive(socket).await })
        })
        .collect();
    let mut total = SocketStats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(stats),
            Err(e) => problems.transport("socket task panicked", &e.to_string()),
        }
    }
    bar.finish_and_clear();
    // Jobs nobody claimed: every socket stopped early (closed, or the deadline came).
    let unclaimed = pool.total().saturating_sub(total.claimed);
    problems.merge(total.problems);

    let elapsed = match (total.first_submit, total.last_result) {
        (Some(first), Some(last)) if last > first => last - first,
        _ => Duration::ZERO,
    };
    let jobs_per_s = if elapsed.is_zero() {
        0.0
    } else {
        total.measured_done as f64 / elapsed.as_secs_f64()
    };
    let mut notes = Vec::new();
    if connections_open < plan.connections {
        notes.push(format!(
            "only {connections_open} of {} sockets opened",
            plan.connections
        ));
    }
    notes.extend(
        total
            .busy_by_limit
            .iter()
            .map(|(limit, count)| busy_note(limit, *count)),
    );
    Ok(PushReport {
        url,
        n: plan.n,
        connections: plan.connections,
        connections_open,
        window: plan.window,
        jobs: plan.jobs,
        warmup: plan.warmup,
        done: total.done,
        failed: total.failed,
        unfinished: total.unfinished + unclaimed,
        awaiting_result: total.awaiting_result,
        awaiting_ids: total.awaiting_ids,
        busy_retries: total.busy_retries,
        busy_by_limit: total
            .busy_by_limit
            .into_iter()
            .map(|(limit, count)| (limit.to_owned(), count))
            .collect(),
        elapsed_s: elapsed.as_secs_f64(),
        jobs_per_s,
        result_latency: total.result.summary(),
        accepted_latency: total.accepted.summary(),
        server_timings: total.timings.means(),
        problems,
        timed_out: total.timed_out,
        notes,
    })
}

/// The server limit a `busy` answer comes from, told by its message (the protocol gives one code for
/// all of them).
fn busy_limit(message: &str) -> &'static str {
    // The per-client quotas name their flag in their message.
    const QUOTAS: [&str; 3] = [
        "--max-queued-per-client",
        "--max-jobs-per-client",
        "--max-stored-bytes-per-client",
    ];
    if let Some(flag) = QUOTAS.into_iter().find(|flag| message.contains(flag)) {
        flag
    } else if message.contains("too many submits") {
        "--submit-rate"
    } else if message.contains("in flight") {
        "--max-in-flight"
    } else if message.contains("queue is full") {
        "--max-queue-length"
    } else {
        "another limit"
    }
}

/// What the reader should know about `count` submits answered `busy` by `limit`.
fn busy_note(limit: &str, count: u64) -> String {
    let what = match limit {
        "--submit-rate" => {
            "the server's submits per client (--submit-rate and --submit-burst, 20/s after a burst of \
             100 by default): the figures measure that limit, not the server. For load tests start \
             the server with --submit-rate 0 (scripts/bench.sh does)"
        }
        "--max-in-flight" => {
            "the server's jobs per socket (--max-in-flight, 100 by default): a --window above it \
             only adds waiting"
        }
        "--max-queue-length" => {
            "a full job queue (--max-queue-length): the workers cannot keep up with the submits"
        }
        "--max-queued-per-client" | "--max-jobs-per-client" | "--max-stored-bytes-per-client" => {
            "the server's quotas per client (--max-queued-per-client 32, --max-jobs-per-client \
             10000, --max-stored-bytes-per-client 256 MiB by default): the figures measure that \
             limit, not the server. For load tests start the server with each at 0 (scripts/bench.sh \
             does)"
        }
        _ => "a limit this tool does not know",
    };
    format!(
        "{count} submits were answered busy by {what}; each was sent again once the server's \
         retry_after_ms had passed"
    )
}

/// Sums of the server's timings, for their means.
#[derive(Debug, Default)]
struct TimingSums {
    count: u64,
    queued_ms: u64,
    compute_ms: u64,
    total_ms: u64,
}

impl TimingSums {
    fn means(&self) -> Option<ServerTimings> {
        let mean = |sum: u64| sum as f64 / self.count as f64;
        (self.count > 0).then(|| ServerTimings {
            queued_ms: mean(self.queued_ms),
            compute_ms: mean(self.compute_ms),
            total_ms: mean(self.total_ms),
        })
    }
}

/// What one socket saw.
#[derive(Debug, Default)]
struct SocketStats {
    result: Latencies,
    accepted: Latencies,
    timings: TimingSums,
    problems: Problems,
    claimed: u64,
    done: u64,
    measured_done: u64,
    failed: u64,
    unfinished: u64,
    awaiting_result: u64,
    awaiting_ids: Vec<JobId>,
    busy_retries: u64,
    busy_by_limit: BTreeMap<&'static str, u64>,
    first_submit: Option<Instant>,
    last_result: Option<Instant>,
    timed_out: bool,
}

impl SocketStats {
    fn merge(&mut self, other: Self) {
        self.result.merge(&other.result);
        self.accepted.merge(&other.accepted);
        self.timings.count += other.timings.count;
        self.timings.queued_ms += other.timings.queued_ms;
        self.timings.compute_ms += other.timings.compute_ms;
        self.timings.total_ms += other.timings.total_ms;
        self.problems.merge(other.problems);
        self.claimed += other.claimed;
        self.done += other.done;
        self.measured_done += other.measured_done;
        self.failed += other.failed;
        self.unfinished += other.unfinished;
        self.awaiting_result += other.awaiting_result;
        let room = MAX_AWAITING_IDS.saturating_sub(self.awaiting_ids.len());
        self.awaiting_ids
            .extend(other.awaiting_ids.into_iter().take(room));
        self.busy_retries += other.busy_retries;
        for (limit, count) in other.busy_by_limit {
            *self.busy_by_limit.entry(limit).or_default() += count;
        }
        self.first_submit = earliest(self.first_submit, other.first_submit);
        self.last_result = self.last_result.max(other.last_result);
        self.timed_out |= other.timed_out;
    }
}

fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        _ => a.or(b),
    }
}

/// A submitted job whose result has not come.
#[derive(Debug, Clone, Copy)]
struct Sent {
    seq: u64,
    at: Instant,
}

/// Whether a model job's output is what the run expects.
fn check_model_output(job: &ModelJob, output: &herald_protocol::Json) -> Result<(), String> {
    let Some(expected) = &job.expect else {
        return Ok(());
    };
    let got: serde_json::Value =
        serde_json::from_str(output.get()).map_err(|e| format!("output is not JSON: {e}"))?;
    if got == *expected {
        Ok(())
    } else {
        let shown: String = output.get().chars().take(120).collect();
        Err(format!("output {shown} is not the expected {expected}"))
    }
}

/// One socket's loop: keep up to `window` jobs in flight until the pool runs dry.
struct Driver {
    n: u64,
    model: Option<Arc<ModelJob>>,
    window: usize,
    pool: Arc<JobPool>,
    deadline: Instant,
    bar: ProgressBar,
}

/// Per-socket bookkeeping of jobs in flight.
#[derive(Default)]
struct Flight {
    /// Sent, waiting for `accepted` (keyed by `ref`).
    by_tag: HashMap<u64, Sent>,
    /// Accepted, waiting for the result.
    by_id: HashMap<JobId, Sent>,
    /// Answered `busy`: due time and job number.
    retries: BinaryHeap<Reverse<(Instant, u64)>>,
    /// Nothing is sent before this: the server answered `busy` and said how long to wait. Honouring
    /// it for every submit, not only the refused one, is what keeps a client from hammering a limit.
    hold_until: Option<Instant>,
    /// The pool has nothing more for this socket.
    exhausted: bool,
}

impl Flight {
    /// `seq` was answered `busy` at `now`: send it again after `wait`, and nothing else before.
    fn busy(&mut self, seq: u64, now: Instant, wait: Duration) {
        let until = now + wait;
        self.retries.push(Reverse((until, seq)));
        self.hold_until = Some(self.hold_until.map_or(until, |hold| hold.max(until)));
    }

    /// When there may be something to send, given room in the window: the first retry that comes due,
    /// or a new job, but never before the server's wait is over.
    fn next_send_at(&self, now: Instant) -> Option<Instant> {
        let retry = self.retries.peek().map(|Reverse((due, _))| *due);
        let fresh = (!self.exhausted).then_some(now);
        let at = retry.into_iter().chain(fresh).min()?;
        Some(self.hold_until.map_or(at, |hold| at.max(hold)))
    }

    fn in_flight(&self) -> usize {
        self.by_tag.len() + self.by_id.len()
    }

    fn pending(&self) -> usize {
        self.in_flight() + self.retries.len()
    }

    /// The next job to send: a retry that is due, else a new one from the pool; none while the
    /// server's `retry_after_ms` runs.
    fn next_job(&mut self, pool: &JobPool, now: Instant) -> Option<(u64, bool)> {
        if self.hold_until.is_some_and(|hold| now < hold) {
            return None;
        }
        if let Some(&Reverse((due, seq))) = self.retries.peek() {
            if due <= now {
                self.retries.pop();
                return Some((seq, false));
            }
        }
        if self.exhausted {
            return None;
        }
        let seq = pool.claim();
        self.exhausted = seq.is_none();
        seq.map(|seq| (seq, true))
    }
}

impl Driver {
    async fn drive(self, mut socket: Socket) -> SocketStats {
        let mut stats = SocketStats::default();
        let mut flight = Flight::default();
        let healthy = 'run: loop {
            let now = Instant::now();
            let mut sent_any = false;
            while flight.in_flight() < self.window {
                let Some((seq, new)) = flight.next_job(&self.pool, now) else {
                    break;
                };
                stats.claimed += u64::from(new);
                let at = Instant::now();
                // `feed` queues without flushing, so a burst of submits goes out in few writes.
                let frame = match &self.model {
                    Some(job) => job.submit_frame(seq),
                    None => submit_frame(self.n, seq),
                };
                if let Err(e) = socket.feed(frame).await {
                    stats.unfinished += 1;
                    stats.problems.transport("send failed", &e.to_string());
                    break 'run false;
                }
                flight.by_tag.insert(seq, Sent { seq, at });
                if self.pool.measured(seq) {
                    stats.first_submit = earliest(stats.first_submit, Some(at));
                }
                sent_any = true;
            }
            if sent_any {
                if let Err(e) = socket.flush().await {
                    stats.problems.transport("send failed", &e.to_string());
                    break false;
                }
            }
            if flight.pending() == 0 && flight.exhausted {
                break true;
            }
            // A send matters only with room in the window; armed without room, the timer would fire
            // at once, again and again, and the socket would never be read.
            let next_send = if flight.in_flight() < self.window {
                flight.next_send_at(now)
            } else {
                None
            };
            tokio::select! {
                biased;
                () = sleep_until(self.deadline) => {
                    stats.timed_out = true;
                    break true;
                }
                frame = socket.next() => match frame {
                    None => {
                        stats.problems.transport("socket closed", "the server closed the connection");
                        break false;
                    }
                    Some(Err(e)) => {
                        stats.problems.transport("socket error", &e.to_string());
                        break false;
                    }
                    Some(Ok(message)) => match classify(message) {
                        Incoming::Message(message, text) => {
                            self.on_message(message, &text, &mut flight, &mut stats);
                        }
                        Incoming::Malformed { text, why } => stats.problems.malformed(&text, &why),
                        Incoming::Binary(len) => {
                            stats.problems.unexpected("binary frame", &format!("{len} bytes"));
                        }
                        Incoming::Control => {}
                        Incoming::Closed(why) => {
                            stats.problems.transport("socket closed", &why);
                            break false;
                        }
                    },
                },
                () = sleep_until(next_send.unwrap_or(self.deadline)), if next_send.is_some() => {}
            }
        };
        stats.unfinished += flight.pending() as u64;
        stats.awaiting_result = flight.by_id.len() as u64;
        stats.awaiting_ids = flight
            .by_id
            .keys()
            .take(MAX_AWAITING_IDS)
            .copied()
            .collect();
        if healthy {
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.close(None)).await;
        }
        stats
    }

    fn on_message(
        &self,
        message: ServerMessage,
        text: &str,
        flight: &mut Flight,
        stats: &mut SocketStats,
    ) {
        let now = Instant::now();
        match message {
            // Long jobs report progress; the load generator measures only their end.
            ServerMessage::Progress { .. } => {}
            ServerMessage::Accepted {
                id, n, tag, model, ..
            } => {
                let Some(sent) = parse_tag(tag.as_deref()).and_then(|t| flight.by_tag.remove(&t))
                else {
                    return stats
                        .problems
                        .unexpected("accepted for no pending submit", text);
                };
                match &self.model {
                    Some(job) if model != job.model => stats
                        .problems
                        .wrong(&format!("accepted model={model} for {}", job.model)),
                    None if n != Some(self.n) => stats
                        .problems
                        .wrong(&format!("accepted n={n:?} for n={}", self.n)),
                    _ => {}
                }
                if self.pool.measured(sent.seq) {
                    stats.accepted.record(now - sent.at);
                }
                if flight.by_id.insert(id, sent).is_some() {
                    stats
                        .problems
                        .unexpected("accepted with a duplicate id", text);
                }
            }
            ServerMessage::Result(result) => {
                let Some(sent) = flight.by_id.remove(&result.id) else {
                    return stats.problems.unexpected("result for no pending job", text);
                };
                self.bar.inc(1);
                let measured = self.pool.measured(sent.seq);
                match result.outcome {
                    Outcome::Done {
                        digits,
                        output,
                        timings,
                    } => {
                        let checked = match &self.model {
                            Some(job) => check_model_output(job, &output),
                            // The factorial's output is the JSON string of its digits.
                            None if result.n == Some(self.n) => {
                                let digits_text = output.get().trim_matches('"');
                                check_output(self.n, digits, digits_text).map_err(|e| e.to_string())
                            }
                            None => Err(format!("result n={:?} for n={}", result.n, self.n)),
                        };
                        if let Err(why) = checked {
                            stats.failed += 1;
                            return stats.problems.wrong(&format!("job {}: {why}", result.id));
                        }
                        stats.done += 1;
                        if measured {
                            stats.measured_done += 1;
                            stats.result.record(now - sent.at);
                            stats.last_result = stats.last_result.max(Some(now));
                            stats.timings.count += 1;
                            stats.timings.queued_ms += timings.queued_ms;
                            stats.timings.compute_ms += timings.compute_ms;
                            stats.timings.total_ms += timings.total_ms;
                        }
                    }
                    Outcome::Failed { error } => {
                        stats.failed += 1;
                        stats.problems.failed("failed", &error);
                    }
                    Outcome::Cancelled {} => {
                        stats.failed += 1;
                        stats.problems.failed("cancelled", &result.id.to_string());
                    }
                }
            }
            ServerMessage::Error(error) => {
                stats.problems.server_error(&code_name(error.code));
                let Some(sent) =
                    parse_tag(error.tag.as_deref()).and_then(|t| flight.by_tag.remove(&t))
                else {
                    return stats
                        .problems
                        .unexpected("error for no pending submit", text);
                };
                if error.code == ErrorCode::Busy {
                    let wait = error
                        .retry_after_ms
                        .map_or(DEFAULT_RETRY, Duration::from_millis);
                    flight.busy(sent.seq, now, wait);
                    stats.busy_retries += 1;
                    *stats
                        .busy_by_limit
                        .entry(busy_limit(&error.message))
                        .or_default() += 1;
                } else {
                    self.bar.inc(1);
                    stats.failed += 1;
                }
            }
            ServerMessage::Status { .. } => {
                stats
                    .problems
                    .unexpected("status (this tool never resumes)", text);
            }
        }
    }
}

/// The wire name of an error code (`busy`, `too_large`, …).
pub fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{code:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_by_wire_name() {
        assert_eq!(code_name(ErrorCode::Busy), "busy");
        assert_eq!(code_name(ErrorCode::TooLarge), "too_large");
    }

    #[test]
    fn retries_come_before_new_jobs_once_due() {
        let pool = JobPool::new(2, 0);
        let mut flight = Flight::default();
        let now = Instant::now();
        flight
            .retries
            .push(Reverse((now + Duration::from_secs(1), 7)));
        assert_eq!(flight.next_job(&pool, now), Some((0, true)));
        assert_eq!(
            flight.next_job(&pool, now + Duration::from_secs(1)),
            Some((7, false))
        );
        assert_eq!(flight.next_job(&pool, now), Some((1, true)));
        assert_eq!(flight.next_job(&pool, now), None);
        assert!(flight.exhausted);
    }

    #[test]
    fn nothing_is_sent_until_the_servers_retry_after_has_passed() {
        let pool = JobPool::new(3, 0);
        let mut flight = Flight::default();
        let now = Instant::now();
        assert_eq!(flight.next_job(&pool, now), Some((0, true)));
        // Job 0 is refused with a wait of 200 ms: neither it nor a new job goes out before then.
        let wait = Duration::from_millis(200);
        flight.busy(0, now, wait);
        let later = now + Duration::from_millis(199);
        assert_eq!(flight.next_job(&pool, later), None);
        assert_eq!(flight.next_send_at(later), Some(now + wait));
        // Then the refused job first, and new ones after it.
        assert_eq!(flight.next_job(&pool, now + wait), Some((0, false)));
        assert_eq!(flight.next_job(&pool, now + wait), Some((1, true)));
        // A second, shorter wait does not cut the first one short.
        flight.busy(1, now + wait, Duration::from_secs(2));
        flight.busy(2, now + wait, Duration::from_millis(1));
        assert_eq!(
            flight.next_send_at(now + wait),
            Some(now + wait + Duration::from_secs(2))
        );
    }

    #[test]
    fn busy_answers_name_the_limit_that_gave_them() {
        // The server's own messages (server/src/session.rs and jobs.rs).
        for (message, limit) in [
            (
                "too many submits from this client; slow down",
                "--submit-rate",
            ),
            (
                "this connection already has 100 jobs in flight; wait for some to finish",
                "--max-in-flight",
            ),
            (
                "the job queue is full; try again shortly",
                "--max-queue-length",
            ),
        ] {
            assert_eq!(busy_limit(message), limit);
            assert!(
                busy_note(limit, 3).contains(limit),
                "{}",
                busy_note(limit, 3)
            );
        }
        assert!(!busy_note("--submit-rate", 3).contains("--max-in-flight"));
    }
}
