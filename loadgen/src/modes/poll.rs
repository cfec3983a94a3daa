//! The classic polling path (`poll`): `GET /factorial?no=N`, then `GET /factorial/result?id=` every
//! interval until a poll sees `done`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use herald_protocol::JobId;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use tokio::time::{sleep_until, Instant};
use url::Url;

use super::{Ctx, JobPool, RunError};
use crate::check::check_output;
use crate::cli::PollArgs;
use crate::progress;
use crate::stats::{Latencies, Problems, Summary};
use crate::target::Target;

/// What a `poll` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct PollReport {
    /// Base URL of the HTTP API.
    pub url: String,
    /// Input of every job.
    pub n: u64,
    /// Jobs asked for.
    pub jobs: u64,
    /// Jobs at once.
    pub concurrency: u64,
    /// Seconds between two polls of a job.
    pub interval_s: f64,
    /// Jobs a poll saw `done`, with a correct output.
    pub done: u64,
    /// Jobs that ended otherwise (failed, refused, not found, wrong output).
    pub failed: u64,
    /// Jobs with no end when the run stopped.
    pub unfinished: u64,
    /// HTTP requests sent (submits and polls).
    pub requests: u64,
    /// Polls per finished job, on average.
    pub polls_per_job: f64,
    /// Seconds from the first submit to the last poll.
    pub elapsed_s: f64,
    /// `GET /factorial` until the request ID arrives.
    pub submit_latency: Option<Summary>,
    /// From sending the submit to receiving the poll that says `done`.
    pub result_latency: Option<Summary>,
    /// Everything that went wrong.
    pub problems: Problems,
    /// The run hit `--timeout`.
    pub timed_out: bool,
    /// Remarks for the reader.
    pub notes: Vec<String>,
}

impl PollReport {
    /// Whether the run did all its jobs with no problem.
    pub fn is_clean(&self) -> bool {
        self.problems.is_clean() && self.failed == 0 && self.unfinished == 0
    }
}

/// The document `GET /factorial/result` answers with.
#[derive(Debug, Deserialize)]
struct ClassicResult {
    input: u64,
    status: String,
    output: String,
    #[serde(default)]
    error: Option<String>,
}

/// Runs `args.jobs` jobs through the polling API, `args.concurrency` at a time.
pub async fn run(target: &Target, args: &PollArgs, ctx: &Ctx) -> Result<PollReport, RunError> {
    let client = target.http_client()?;
    let pool = Arc::new(JobPool::new(args.jobs, 0));
    let bar = progress::bar(args.jobs, "poll", ctx.quiet);
    let started = Instant::now();
    let poller = Arc::new(Poller {
        client,
        submit_url: target.http_url("factorial"),
        result_url: target.http_url("factorial/result"),
        n: args.n,
        interval: args.interval,
        deadline: ctx.deadline,
    });
    let tasks: Vec<_> = (0..args.concurrency.min(args.jobs))
        .map(|_| {
            let (poller, pool, bar) = (poller.clone(), pool.clone(), bar.clone());
            tokio::spawn(async move { poller.work(&pool, &bar).await })
        })
        .collect();
    let mut total = PollStats::default();
    for task in tasks {
        match task.await {
            Ok(stats) => total.merge(stats),
            Err(e) => total
                .problems
                .transport("poll task panicked", &e.to_string()),
        }
    }
    bar.finish_and_clear();
    let finished = total.done + total.failed;
    let unclaimed = pool.total().saturating_sub(total.claimed);
    let elapsed = total.last_answer.map_or(Duration::ZERO, |last| {
        last.saturating_duration_since(started)
    });
    Ok(PollReport {
        url: target.endpoints.http.to_string(),
        n: args.n,
        jobs: args.jobs,
        concurrency: args.concurrency.min(args.jobs),
        interval_s: args.interval.as_secs_f64(),
        done: total.done,
        failed: total.failed,
        unfinished: total.unfinished + unclaimed,
        requests: total.requests,
        polls_per_job: if finished == 0 {
            0.0
        } else {
            total.polls_of_finished as f64 / finished as f64
        },
        elapsed_s: elapsed.as_secs_f64(),
        submit_latency: total.submit.summary(),
        result_latency: total.result.summary(),
        problems: total.problems,
        timed_out: total.timed_out,
        notes: Vec::new(),
    })
}

/// What one polling worker saw.
#[derive(Debug, Default)]
struct PollStats {
    submit: Latencies,
    result: Latencies,
    problems: Problems,
    claimed: u64,
    done: u64,
    failed: u64,
    unfinished: u64,
    requests: u64,
    polls_of_finished: u64,
    last_answer: Option<Instant>,
    timed_out: bool,
}

impl PollStats {
    fn merge(&mut self, other: Self) {
        self.submit.merge(&other.submit);
        self.result.merge(&other.result);
        self.problems.merge(other.problems);
        self.claimed += other.claimed;
        self.done += other.done;
        self.failed += other.failed;
        self.unfinished += other.unfinished;
        self.requests += other.requests;
        self.polls_of_finished += other.polls_of_finished;
        self.last_answer = self.last_answer.max(other.last_answer);
        self.timed_out |= other.timed_out;
    }
}

/// How one job ended.
enum End {
    /// A poll saw `done` with a correct output, after this many polls.
    Done(u64),
    /// It ended otherwise (already counted in the problems), after this many polls.
    Failed(u64),
    /// The run's deadline came first.
    TimedOut,
}

/// An HTTP answer: status (with the Retry-After it came with) and body.
type Answer = (Status, Vec<u8>);

/// An HTTP status and the server's Retry-After, in whole seconds, if it sent one.
#[derive(Debug, Clone, Copy)]
struct Status {
    code: reqwest::StatusCode,
    retry_after: Option<u64>,
}

impl Status {
    fn as_u16(&self) -> u16 {
        self.code.as_u16()
    }

    /// When to try again after a 429 or 503: the server's Retry-After, else a second.
    fn retry_after(&self) -> Duration {
        Duration::from_secs(self.retry_after.unwrap_or(1).clamp(1, 60))
    }
}

struct Poller {
    client: reqwest::Client,
    submit_url: Url,
    result_url: Url,
    n: u64,
    interval: Duration,
    deadline: Instant,
}

impl Poller {
    async fn work(&self, pool: &JobPool, bar: &ProgressBar) -> PollStats {
        let mut stats = PollStats::default();
        while pool.claim().is_some() {
            stats.claimed += 1;
            match self.job(&mut stats).await {
                End::Done(polls) => {
                    stats.done += 1;
                    stats.polls_of_finished += polls;
                }
                End::Failed(polls) => {
                    stats.failed += 1;
                    stats.polls_of_finished += polls;
                }
                End::TimedOut => {
                    stats.unfinished += 1;
                    stats.timed_out = true;
                    break;
                }
            }
            bar.inc(1);
        }
        stats
    }

    /// Sends `request` and reads the whole answer, unless the deadline comes first (`None`).
    async fn fetch(
        &self,
        stats: &mut PollStats,
        request: impl Future<Output = reqwest::Result<reqwest::Response>>,
    ) -> Option<reqwest::Result<Answer>> {
        stats.requests += 1;
        let exchange = async {
            let response = request.await?;
            let status = Status {
                code: response.status(),
                retry_after: response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok()),
            };
            Ok((status, response.bytes().await?.to_vec()))
        };
        let answer = tokio::select! {
            biased;
            () = sleep_until(self.deadline) => None,
            answer = exchange => Some(answer),
        };
        stats.last_answer = Some(Instant::now());
        answer
    }

    async fn job(&self, stats: &mut PollStats) -> End {
        let mut url = self.submit_url.clone();
        url.query_pairs_mut().append_pair("no", &self.n.to_string());
        let start = Instant::now();
        let id = loop {
            let sent = Instant::now();
            let (status, body) = match self.fetch(stats, self.client.get(url.clone()).send()).await
            {
                None => return End::TimedOut,
                Some(Err(e)) => {
                    stats
                        .problems
                        .transport(http_error_kind(&e), &e.to_string());
                    return End::Failed(0);
                }
                Some(Ok(answer)) => answer,
            };
            let text = String::from_utf8_lossy(&body);
            match status.as_u16() {
                200 => match JobId::try_parse(text.trim()) {
                    Ok(id) => {
                        stats.submit.record(sent.elapsed());
                        break id;
                    }
                    Err(_) => {
                        stats.problems.malformed(&text, "not a request ID");
                        return End::Failed(0);
                    }
                },
                // Queue full or backend away: the server says when to come back (Retry-After).
                code @ (429 | 503) => {
                    if code == 429 {
                        stats.problems.server_error("busy");
                    } else {
                        stats.problems.transport("GET /factorial: HTTP 503", &text);
                    }
                    let resume = Instant::now() + status.retry_after();
                    if resume >= self.deadline {
                        sleep_until(self.deadline).await;
                        return End::TimedOut;
                    }
                    sleep_until(resume).await;
                }
                code => {
                    stats
                        .problems
                        .transport(&format!("GET /factorial: HTTP {code}"), &text);
                    return End::Failed(0);
                }
            }
        };
        let mut url = self.result_url.clone();
        url.query_pairs_mut().append_pair("id", &id.to_string());
        let mut polls = 0;
        loop {
            // The classic client waits before each poll, the first one included.
            let next = Instant::now() + self.interval;
            if next >= self.deadline {
                sleep_until(self.deadline).await;
                return End::TimedOut;
            }
            sleep_until(next).await;
            polls += 1;
            let (status, body) = match self.fetch(stats, self.client.get(url.clone()).send()).await
            {
                None => return End::TimedOut,
                Some(Err(e)) => {
                    // A lost poll is retried at the next interval, as a polling client would.
                    stats
                        .problems
                        .transport(http_error_kind(&e), &e.to_string());
                    continue;
                }
                Some(Ok(answer)) => answer,
            };
            match status.as_u16() {
                200 => {}
                // Unavailable is passing trouble: poll again, as a classic client does.
                503 => {
                    let body = String::from_utf8_lossy(&body);
                    stats
                        .problems
                        .transport("GET /factorial/result: HTTP 503", &body);
                    continue;
                }
                code => {
                    let body = String::from_utf8_lossy(&body);
                    stats
                        .problems
                        .transport(&format!("GET /factorial/result: HTTP {code}"), &body);
                    return End::Failed(polls);
                }
            }
            let document: ClassicResult = match serde_json::from_slice(&body) {
                Ok(document) => document,
                Err(e) => {
                    stats
                        .problems
                        .malformed(&String::from_utf8_lossy(&body), &e.to_string());
                    return End::Failed(polls);
                }
            };
            if document.input != self.n {
                stats.problems.wrong(&format!(
                    "job {id}: input {} for n={}",
                    document.input, self.n
                ));
                return End::Failed(polls);
            }
            match document.status.as_str() {
                "processing" => continue,
                "done" => {
                    if let Err(e) = check_output(self.n, None, &document.output) {
                        stats.problems.wrong(&format!("job {id}: {e}"));
                        return End::Failed(polls);
                    }
                    stats.result.record(start.elapsed());
                    return End::Done(polls);
                }
                "failed" | "cancelled" => {
                    let error = document.error.unwrap_or_default();
                    stats.problems.failed(&document.status, &error);
                    return End::Failed(polls);
                }
                other => {
                    stats.problems.unexpected(
                        &format!("status {other:?}"),
                        &String::from_utf8_lossy(&body),
                    );
                    return End::Failed(polls);
                }
            }
        }
    }
}

/// A short label for a failed HTTP exchange.
fn http_error_kind(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "HTTP timeout"
    } else if e.is_connect() {
        "HTTP connect failed"
    } else if e.is_body() || e.is_decode() {
        "HTTP body error"
    } else {
        "HTTP request failed"
    }
}
