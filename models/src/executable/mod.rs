//! Executable models: a program in any language behind Herald, speaking JSON lines over its stdin
//! and stdout (the protocol is in docs/models.md, and in [`wire`]). [`Executable`] keeps one copy
//! of the program running per compute slot ([`slot`]), so a model loads once, not per job.

mod process;
mod slot;
pub mod spec;
pub mod wire;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use herald_protocol::model::check_model_name;
use herald_protocol::Json;
use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use self::process::{Ending, Process};
use self::slot::{stop_error, Job, Slot, Stats};
use crate::model::{InputError, Model, Run, RunError};

pub use slot::restart_delay;
pub use spec::{command_words, parse_model_spec, ModelSpec, BUILTIN_MODELS};

/// Default cap on one line between the worker and a program (a job's input, a program's output),
/// in bytes.
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// Default time between SIGTERM and SIGKILL when a program is stopped.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(2);

/// Default time a program must stay up at start for the model to start.
pub const DEFAULT_START_CHECK: Duration = Duration::from_millis(500);

/// How an executable model runs its program.
#[derive(Debug, Clone)]
pub struct ExecutableOptions {
    /// Copies of the program kept running, one per compute slot: the jobs it runs at once.
    pub slots: usize,
    /// Longest line, in bytes without its newline, that goes to or comes from the program: a
    /// larger input is refused, a longer line from the program fails its job.
    pub max_line_bytes: usize,
    /// How long a program has to end after SIGTERM before SIGKILL.
    pub stop_grace: Duration,
    /// How long the programs must stay up at start: one that exits sooner makes
    /// [`Executable::start`] fail, with its exit status and stderr. Zero skips the check.
    pub start_check: Duration,
}

impl Default for ExecutableOptions {
    fn default() -> Self {
        Self {
            slots: 1,
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            stop_grace: DEFAULT_STOP_GRACE,
            start_check: DEFAULT_START_CHECK,
        }
    }
}

/// What the slots of a model share about its program.
pub(crate) struct Program {
    name: Arc<str>,
    /// The command line as given, for messages.
    command: String,
    words: Vec<String>,
    options: ExecutableOptions,
}

/// Why an executable model did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The model's name or command cannot be used.
    #[error("model `{name}`: {reason}")]
    Invalid {
        /// The model's name.
        name: String,
        /// What is wrong.
        reason: String,
    },
    /// The program could not be started (not found, not executable).
    #[error("model `{name}`: cannot start `{command}`: {source}")]
    Spawn {
        /// The model's name.
        name: String,
        /// The command line.
        command: String,
        /// Why.
        source: std::io::Error,
    },
    /// The program exited right after it started.
    #[error("model `{name}`: `{command}` exited at start ({status}){}", stderr_text(.stderr))]
    Exited {
        /// The model's name.
        name: String,
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its last stderr lines.
        stderr: Vec<String>,
    },
}

fn stderr_text(stderr: &[String]) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; its stderr ends with:\n{}", stderr.join("\n"))
    }
}

/// A model computed by a program: see the module's documentation.
///
/// Jobs wait in a queue of the model's own until a slot is free. Dropping it ends the programs in
/// the background; [`Executable::shutdown`] ends them and waits until they are gone.
pub struct Executable {
    name: String,
    max_line_bytes: usize,
    jobs: mpsc::Sender<Job>,
    shutdown: CancellationToken,
    slots: std::sync::Mutex<Vec<JoinHandle<()>>>,
    stats: Arc<Stats>,
}

impl Executable {
    /// Starts `options.slots` copies of the program `command` (a command line, split as a POSIX
    /// shell would; no shell runs it) as the model `name`. Fails when the name or command is not
    /// valid, the program cannot be started, or a copy exits within `options.start_check`.
    pub async fn start(
        name: &str,
        command: &str,
        options: ExecutableOptions,
    ) -> Result<Self, StartError> {
        let invalid = |reason: String| StartError::Invalid {
            name: name.to_owned(),
            reason,
        };
        check_model_name(name).map_err(invalid)?;
        let words = command_words(command).map_err(invalid)?;
        if options.slots == 0 {
            return Err(invalid("it needs at least one slot".into()));
        }
        let program = Arc::new(Program {
            name: Arc::from(name),
            command: command.to_owned(),
            words,
            options,
        });
        let mut processes = Vec::with_capacity(program.options.slots);
        for slot in 0..program.options.slots {
            let process = Process::spawn(&program, slot).map_err(|source| StartError::Spawn {
                name: name.to_owned(),
                command: command.to_owned(),
                source,
            })?;
            processes.push(process);
        }
        let processes = check_start(&program, processes).await?;
        tracing::info!(
            model = name,
            command,
            slots = processes.len(),
            pids = ?processes.iter().map(|p| p.pid).collect::<Vec<_>>(),
            "model's program started"
        );

        let (jobs, queue) = mpsc::channel(program.options.slots);
        let queue = Arc::new(Mutex::new(queue));
        let shutdown = CancellationToken::new();
        let stats = Arc::new(Stats::default());
        let slots = processes
            .into_iter()
            .enumerate()
            .map(|(index, process)| {
                let slot = Slot {
                    index,
                    program: program.clone(),
                    jobs: queue.clone(),
                    shutdown: shutdown.clone(),
                    stats: stats.clone(),
                };
                tokio::spawn(slot.serve(process))
            })
            .collect();
        Ok(Self {
            name: name.to_owned(),
            max_line_bytes: program.options.max_line_bytes,
            jobs,
            shutdown,
            slots: std::sync::Mutex::new(slots),
            stats,
        })
    }

    /// How many times a program was started again (after a stop, a crash, a protocol error).
    pub fn restarts(&self) -> u64 {
        self.stats.restarts.load(Ordering::Relaxed)
    }

    /// Ends every program (stdin closed and SIGTERM, SIGKILL after the grace) and waits until they
    /// are gone. A job still running ends [`RunError::Stopped`]; later ones too.
    pub async fn shutdown(&self) {
        self.shutdown.cancel();
        let slots = std::mem::take(&mut *self.slots.lock().expect("never poisoned"));
        for slot in slots {
            let _ = slot.await;
        }
    }
}

impl Drop for Executable {
    /// The slots end their programs in the background: at once if idle, else as soon as their job
    /// is abandoned (nobody can wait for it any more), and no new program is started.
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Waits `start_check` for any of the programs to exit, and fails the start if one does.
async fn check_start(
    program: &Program,
    mut processes: Vec<Process>,
) -> Result<Vec<Process>, StartError> {
    if program.options.start_check.is_zero() {
        return Ok(processes);
    }
    let exited = {
        let waits = processes
            .iter_mut()
            .enumerate()
            .map(|(index, process)| Box::pin(async move { (index, process.child.wait().await) }));
        match tokio::time::timeout(
            program.options.start_check,
            futures::future::select_all(waits),
        )
        .await
        {
            Ok(((index, _), _, _)) => Some(index),
            Err(_) => None,
        }
    };
    let Some(index) = exited else {
        return Ok(processes);
    };
    let failed = processes.swap_remove(index);
    for other in processes {
        other
            .stop(Ending::Terminate, program.options.stop_grace)
            .await;
    }
    let ended = failed
        .stop(Ending::Expected, program.options.stop_grace)
        .await;
    Err(StartError::Exited {
        name: program.name.to_string(),
        command: program.command.clone(),
        status: ended.status_text(),
        stderr: ended.stderr,
    })
}

#[async_trait]
impl Model for Executable {
    fn name(&self) -> &str {
        &self.name
    }

    /// Any JSON within the line limit: the program checks its own input and answers
    /// `{"error":…}` for one it refuses.
    fn validate(&self, input: &Json) -> Result<Json, InputError> {
        if input.get().len() > self.max_line_bytes {
            return Err(InputError::TooLarge(format!(
                "the input must be at most {} bytes of JSON",
                self.max_line_bytes
            )));
        }
        Ok(input.clone())
    }

    /// Never: a program may answer differently to the same input (sampling, a clock, a model
    /// updated in place).
    fn shares_results(&self, _input: &Json) -> bool {
        false
    }

    async fn shutdown(&self) {
        Executable::shutdown(self).await;
    }

    async fn run(&self, input: Json, run: Run) -> Result<Json, RunError> {
        if let Some(stop) = run.should_stop() {
            return Err(stop_error(stop));
        }
        let (reply, answer) = oneshot::channel();
        let job = Job {
            input,
            run: run.clone(),
            reply,
        };
        // The run's own stop is watched here too: a job still queued for a slot ends at once.
        tokio::select! {
            biased;
            sent = self.jobs.send(job) => {
                if sent.is_err() {
                    return Err(RunError::Stopped);
                }
            }
            stop = run.stopped() => return Err(stop_error(stop)),
        }
        tokio::select! {
            biased;
            // A slot that ends without answering is shutting down.
            answer = answer => answer.unwrap_or(Err(RunError::Stopped)),
            stop = run.stopped() => Err(stop_error(stop)),
        }
    }
}
