//! One compute slot of an executable model: it keeps one copy of the program running, hands it the
//! jobs it takes from the model's queue one at a time, and replaces it (with backoff when it keeps
//! failing) whenever it is stopped, dies or breaks the line protocol.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use herald_protocol::{JobId, Json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio_util::codec::AnyDelimiterCodecError;
use tokio_util::sync::CancellationToken;

use super::process::{Ending, Process};
use super::wire::{self, Message};
use super::Program;
use crate::model::{Run, RunError, Stop};

/// Lines longer than this are read on a blocking thread: checking megabytes of JSON would hold up
/// the runtime for milliseconds.
const PARSE_INLINE_BYTES: usize = 64 * 1024;

/// The longest wait between two starts of a program that keeps failing.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(30);

/// A job handed to the slots, with where its answer goes.
pub(super) struct Job {
    pub input: Json,
    pub run: Run,
    pub reply: oneshot::Sender<Result<Json, RunError>>,
}

/// Counters the slots of one model share.
#[derive(Default)]
pub(super) struct Stats {
    /// Programs started after the first ones.
    pub restarts: AtomicU64,
}

/// A compute slot: see the module's documentation.
pub(super) struct Slot {
    pub index: usize,
    pub program: Arc<Program>,
    pub jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    pub shutdown: CancellationToken,
    pub stats: Arc<Stats>,
}

/// Whether the job's line was written whole before the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whole {
    Yes,
    No,
}

/// How a job's exchange with the program ended.
enum Exchange {
    /// The program answered: it serves the next job, unless it answered before the whole job line
    /// was written (the rest of it would be read as the next job's start).
    Answered(Result<Json, RunError>, Whole),
    /// The job must stop (cancel, time limit, shutdown): the program is stopped mid-job.
    Stopped(Stop),
    /// Nobody waits for the answer any more: the program is stopped mid-job.
    Abandoned,
    /// The program went away (its stdout closed, it exited, its stdin broke).
    Gone,
    /// The program broke the line protocol: why (the job's error), and the line if it was read.
    Broken(String, Option<String>),
}

impl Slot {
    /// Serves jobs with `process`, and the programs that replace it, until the model shuts down.
    pub async fn serve(self, process: Process) {
        let mut process = Some(process);
        // Failures in a row without a job answered: the restart backoff.
        let mut failures = 0u32;
        loop {
            let mut current = match process.take() {
                Some(current) => current,
                None => match self.restart(failures).await {
                    Some(Ok(started)) => started,
                    Some(Err(())) => {
                        failures += 1;
                        continue;
                    }
                    None => return,
                },
            };
            // What the program printed after its answer is read before a new job is handed to it:
            // a stray line is not taken for the next job's answer.
            let job = tokio::select! {
                biased;
                line = current.stdout.next() => {
                    let (ending, what) = match line {
                        Some(Ok(line)) => (
                            Ending::Terminate,
                            format!("printed a line while it had no job: {}", excerpt(&line)),
                        ),
                        Some(Err(_)) => (
                            Ending::Terminate,
                            "printed an overlong line while it had no job".into(),
                        ),
                        None => (Ending::Expected, "closed its stdout while it had no job".into()),
                    };
                    failures += 1;
                    self.replace(current, ending, &what, Some(failures), None).await;
                    continue;
                }
                _ = current.child.wait() => {
                    failures += 1;
                    self.replace(current, Ending::Expected, "exited while it had no job", Some(failures), None)
                        .await;
                    continue;
                }
                _ = self.shutdown.cancelled() => None,
                job = async { self.jobs.lock().await.recv().await } => job,
            };
            let Some(job) = job else {
                // Shut down, or the model was dropped: the program is asked to end.
                current
                    .stop(Ending::Terminate, self.program.options.stop_grace)
                    .await;
                return;
            };
            if job.reply.is_closed() {
                process = Some(current);
                continue;
            }
            if let Some(stop) = job.run.should_stop() {
                let _ = job.reply.send(Err(stop_error(stop)));
                process = Some(current);
                continue;
            }
            process = self.exchange(current, job, &mut failures).await;
        }
    }

    /// Runs `job` on `process` and answers it. Gives the program back when it can take the next
    /// job; else stops it, so that a new one replaces it.
    async fn exchange(
        &self,
        mut process: Process,
        mut job: Job,
        failures: &mut u32,
    ) -> Option<Process> {
        let id = job.run.id();
        process.set_job(id);
        let line = wire::job_line(id, &job.input);
        let exchange = {
            let talk = talk(&mut process, &line, &job.run);
            tokio::pin!(talk);
            tokio::select! {
                biased;
                exchange = &mut talk => exchange,
                stop = job.run.stopped() => Exchange::Stopped(stop),
                _ = job.reply.closed() => Exchange::Abandoned,
                _ = self.shutdown.cancelled() => Exchange::Stopped(Stop::Stopped),
            }
        };
        match exchange {
            Exchange::Answered(answer, Whole::Yes) => {
                let _ = job.reply.send(answer);
                *failures = 0;
                return Some(process);
            }
            Exchange::Answered(answer, Whole::No) => {
                let _ = job.reply.send(answer);
                *failures = 0;
                self.replace(
                    process,
                    Ending::Terminate,
                    "answered before it had read its whole job line",
                    None,
                    Some(id),
                )
                .await;
            }
            Exchange::Stopped(stop) => {
                // Answered first: the stop takes effect for the job at once, the program's end
                // (up to the grace) only delays this slot's next job.
                let _ = job.reply.send(Err(stop_error(stop)));
                let what = match stop {
                    Stop::Stopped => "was stopped mid-job",
                    Stop::TimedOut => "was stopped at the job's time limit",
                };
                self.replace(process, Ending::Terminate, what, None, Some(id))
                    .await;
            }
            Exchange::Abandoned => {
                self.replace(
                    process,
                    Ending::Terminate,
                    "was stopped mid-job, nobody waiting for it",
                    None,
                    Some(id),
                )
                .await;
            }
            Exchange::Broken(why, line) => {
                let _ = job.reply.send(Err(RunError::Failed(format!(
                    "the model's program printed {why}"
                ))));
                *failures += 1;
                // The line itself goes to the log only: it may be anything.
                let what = match line {
                    Some(line) => format!("printed {why}: {line}"),
                    None => format!("printed {why}"),
                };
                self.replace(process, Ending::Terminate, &what, Some(*failures), Some(id))
                    .await;
            }
            Exchange::Gone => {
                *failures += 1;
                // The exit status makes the job's error: it is awaited before the answer.
                let status = self
                    .replace(
                        process,
                        Ending::Expected,
                        "ended during a job",
                        Some(*failures),
                        Some(id),
                    )
                    .await;
                let _ = job.reply.send(Err(RunError::Crashed(format!(
                    "the model's program ended during the job ({status})"
                ))));
            }
        }
        None
    }

    /// Stops `process` and reports why a new one replaces it: as a fault (with the `failures` in a
    /// row) or as expected. Returns how it ended.
    async fn replace(
        &self,
        process: Process,
        ending: Ending,
        what: &str,
        failures: Option<u32>,
        job: Option<JobId>,
    ) -> String {
        let pid = process.pid;
        let ended = process.stop(ending, self.program.options.stop_grace).await;
        let status = ended.status_text();
        let span = match job {
            Some(id) => tracing::info_span!("job", id = %id),
            None => tracing::Span::none(),
        };
        let _job = span.entered();
        let program = &self.program;
        match failures {
            Some(failures) => tracing::warn!(
                model = %program.name,
                command = %program.command,
                pid,
                status,
                failures,
                restart_in = ?restart_delay(failures),
                stderr = %ended.stderr.join("\n"),
                "the model's program {what}; a new one replaces it"
            ),
            None => tracing::info!(
                model = %program.name,
                pid,
                status,
                "the model's program {what}; a new one replaces it"
            ),
        }
        status
    }

    /// Starts a new program after the backoff for `failures`; `None` on shutdown, `Err` when it
    /// cannot start (reported here).
    async fn restart(&self, failures: u32) -> Option<Result<Process, ()>> {
        let delay = restart_delay(failures);
        if !delay.is_zero() {
            tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        if self.shutdown.is_cancelled() {
            return None;
        }
        self.stats.restarts.fetch_add(1, Ordering::Relaxed);
        Some(Process::spawn(&self.program, self.index).map_err(|e| {
            tracing::error!(
                model = %self.program.name,
                command = %self.program.command,
                error = %e,
                failures = failures + 1,
                restart_in = ?restart_delay(failures + 1),
                "cannot start the model's program"
            );
        }))
    }
}

/// Hands the job line to the program and reads its messages until its answer, reporting progress.
async fn talk(process: &mut Process, line: &[u8], run: &Run) -> Exchange {
    let Some(stdin) = process.stdin.as_mut() else {
        return Exchange::Gone;
    };
    // The line is written while the answer is read: a program may answer before it has read all of
    // a long input, and neither side then waits on a full pipe.
    let write = stdin.write_all(line);
    tokio::pin!(write);
    let mut written = false;
    let whole = |written| if written { Whole::Yes } else { Whole::No };
    loop {
        tokio::select! {
            biased;
            line = process.stdout.next() => match line {
                Some(Ok(line)) => match read(line.clone()).await {
                    Ok(Message::Progress(progress)) => run.report(progress),
                    Ok(Message::Output(output)) => {
                        return Exchange::Answered(Ok(output), whole(written))
                    }
                    Ok(Message::Error(message)) => {
                        return Exchange::Answered(Err(RunError::Failed(message)), whole(written))
                    }
                    Err(why) => return Exchange::Broken(why.0, Some(excerpt(&line))),
                },
                Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => {
                    return Exchange::Broken(
                        format!(
                            "a line longer than the limit of {} bytes",
                            process.stdout.decoder().max_length()
                        ),
                        None,
                    )
                }
                Some(Err(AnyDelimiterCodecError::Io(_))) | None => return Exchange::Gone,
            },
            written_now = &mut write, if !written => match written_now {
                Ok(()) => written = true,
                Err(_) => return Exchange::Gone,
            },
            _ = process.child.wait() => return Exchange::Gone,
        }
    }
}

/// Parses a program's line, on a blocking thread when it is long.
async fn read(line: bytes::Bytes) -> Result<Message, wire::WireError> {
    if line.len() <= PARSE_INLINE_BYTES {
        return wire::parse(&line);
    }
    tokio::task::spawn_blocking(move || wire::parse(&line))
        .await
        .unwrap_or_else(|_| Err(wire::WireError("a line that could not be read".into())))
}

/// The start of a line a program printed, for the log.
fn excerpt(line: &[u8]) -> String {
    const SHOWN: usize = 200;
    let shown = &line[..line.len().min(SHOWN)];
    let mut text = String::from_utf8_lossy(shown).into_owned();
    if line.len() > SHOWN {
        text.push('…');
    }
    format!("{text:?}")
}

/// The wait before starting a program again after `failures` failures in a row: none after the
/// first (a program that crashed on one input serves the next job at once), then 0.25 s doubling
/// up to [`MAX_RESTART_DELAY`].
pub fn restart_delay(failures: u32) -> Duration {
    if failures <= 1 {
        return Duration::ZERO;
    }
    let doublings = (failures - 2).min(16);
    (Duration::from_millis(250) * 2u32.pow(doublings)).min(MAX_RESTART_DELAY)
}

/// The error a stopped run ends with.
pub(super) fn stop_error(stop: Stop) -> RunError {
    match stop {
        Stop::Stopped => RunError::Stopped,
        Stop::TimedOut => RunError::TimedOut,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_to_a_ceiling() {
        let delays: Vec<_> = (0..=9).map(restart_delay).collect();
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            delays,
            [0, 0, 250, 500, 1000, 2000, 4000, 8000, 16000, 30000].map(ms)
        );
        assert_eq!(restart_delay(u32::MAX), MAX_RESTART_DELAY);
    }
}
