//! One running copy of a model's program: started with piped stdin, stdout and stderr in a process
//! group of its own, its stderr forwarded to the log, and stopped with SIGTERM, then SIGKILL.

use std::collections::VecDeque;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::BytesMut;
use futures::StreamExt;
use herald_protocol::JobId;
use rustix::process::{kill_process_group, Pid, Signal};
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::codec::{AnyDelimiterCodec, Decoder, FramedRead};

use super::Program;

/// Longest stderr line logged as one; a longer one is logged in pieces of this size.
const MAX_STDERR_LINE: usize = 8 * 1024;

/// Stderr lines kept to explain a program's exit.
const STDERR_TAIL_LINES: usize = 20;

/// How long the end of a program's stderr is awaited once it has exited (a child of it may hold
/// the pipe open).
const STDERR_DRAIN: Duration = Duration::from_millis(500);

/// A running program.
pub(super) struct Process {
    pub child: Child,
    /// Closed (taken) when the program is asked to end.
    pub stdin: Option<ChildStdin>,
    /// The program's lines, each at most the model's line limit.
    pub stdout: FramedRead<ChildStdout, AnyDelimiterCodec>,
    pub pid: u32,
    /// The job whose request ID stderr lines carry: the one running, or the one that ran last.
    job: watch::Sender<Option<JobId>>,
    stderr: JoinHandle<()>,
    tail: Arc<Mutex<VecDeque<String>>>,
}

/// How a program ended.
pub(super) struct Ended {
    /// Its exit status, if it could be had.
    pub status: Option<ExitStatus>,
    /// Its last stderr lines.
    pub stderr: Vec<String>,
}

impl Ended {
    /// The status as a reader expects it: "exit status: 1", "signal: 9 (SIGKILL)".
    pub fn status_text(&self) -> String {
        match self.status {
            Some(status) => status.to_string(),
            None => "exit status unknown".into(),
        }
    }
}

/// How to ask a program to end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ending {
    /// It has ended or is ending by itself (its stdout closed): wait the grace for its exit status
    /// before signalling it.
    Expected,
    /// Close its stdin and send SIGTERM at once.
    Terminate,
}

impl Process {
    /// Starts a copy of `program` for compute slot `slot`.
    pub fn spawn(program: &Program, slot: usize) -> io::Result<Self> {
        let (executable, args) = program
            .words
            .split_first()
            .expect("a command has a program");
        let mut child = Command::new(executable)
            .args(args)
            .env("HERALD_MODEL", &*program.name)
            .env("HERALD_SLOT", slot.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Its own process group: SIGTERM and SIGKILL reach the processes it starts too, and a
            // Ctrl-C at the worker's terminal reaches only the worker, which stops it in order.
            .process_group(0)
            // The last resort if the worker drops it without stopping it.
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().expect("a child just spawned has an ID");
        let stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = child.stderr.take().expect("stderr is piped");
        let (job, watched) = watch::channel(None);
        let tail = Arc::new(Mutex::new(VecDeque::with_capacity(STDERR_TAIL_LINES)));
        let stderr = tokio::spawn(forward_stderr(
            stderr,
            program.name.clone(),
            pid,
            watched,
            tail.clone(),
        ));
        // One extra byte reaches the codec past a full line: its newline.
        let codec = AnyDelimiterCodec::new_with_max_length(
            b"\n".to_vec(),
            b"\n".to_vec(),
            program.options.max_line_bytes,
        );
        Ok(Self {
            child,
            stdin: Some(stdin),
            stdout: FramedRead::new(stdout, codec),
            pid,
            job,
            stderr,
            tail,
        })
    }

    /// Tags the stderr lines from now on with job `id`.
    pub fn set_job(&self, id: JobId) {
        self.job.send_replace(Some(id));
    }

    /// Ends the program and reaps it, with `grace` between the request and SIGKILL; what the
    /// program's group left running is killed too.
    pub async fn stop(mut self, ending: Ending, grace: Duration) -> Ended {
        self.stdin = None;
        let status = match ending {
            Ending::Expected => match tokio::time::timeout(grace, self.child.wait()).await {
                Ok(status) => status.ok(),
                Err(_) => self.terminate(grace).await,
            },
            Ending::Terminate => match self.child.try_wait() {
                Ok(Some(status)) => Some(status),
                _ => self.terminate(grace).await,
            },
        };
        // Whatever the program started and left behind goes with it.
        self.signal(Signal::KILL);
        if tokio::time::timeout(STDERR_DRAIN, &mut self.stderr)
            .await
            .is_err()
        {
            self.stderr.abort();
        }
        let stderr = self
            .tail
            .lock()
            .expect("the tail's lock is never poisoned")
            .iter()
            .cloned()
            .collect();
        Ended { status, stderr }
    }

    /// SIGTERM, then SIGKILL if the program is still there after `grace`.
    async fn terminate(&mut self, grace: Duration) -> Option<ExitStatus> {
        self.signal(Signal::TERM);
        if let Ok(status) = tokio::time::timeout(grace, self.child.wait()).await {
            return status.ok();
        }
        self.signal(Signal::KILL);
        self.child.wait().await.ok()
    }

    /// Sends `signal` to the program's process group. The group's ID is the program's PID, which
    /// cannot be reused while a process of the group lives; a group already gone is no error.
    fn signal(&self, signal: Signal) {
        let Some(group) = i32::try_from(self.pid).ok().and_then(Pid::from_raw) else {
            return;
        };
        if let Err(e) = kill_process_group(group, signal) {
            if e != rustix::io::Errno::SRCH {
                tracing::warn!(pid = self.pid, error = %e, "cannot signal a model's program");
            }
        }
    }
}

/// Logs each of a program's stderr lines with the model's name and the request ID of its job.
async fn forward_stderr(
    stderr: ChildStderr,
    model: Arc<str>,
    pid: u32,
    job: watch::Receiver<Option<JobId>>,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut lines = FramedRead::new(stderr, StderrLines);
    while let Some(Ok(line)) = lines.next().await {
        let id = *job.borrow();
        match id {
            Some(id) => {
                let _job = tracing::info_span!("job", id = %id).entered();
                tracing::info!(model = %model, pid, "{line}");
            }
            None => tracing::info!(model = %model, pid, "{line}"),
        }
        let mut tail = tail.lock().expect("the tail's lock is never poisoned");
        if tail.len() == STDERR_TAIL_LINES {
            tail.pop_front();
        }
        tail.push_back(line);
    }
}

/// Stderr as lines of text for the log: any bytes (invalid UTF-8 is replaced), a line longer than
/// [`MAX_STDERR_LINE`] split into pieces, so that nothing a program writes stops the forwarding
/// (a program whose stderr is not read blocks once the pipe is full).
struct StderrLines;

impl Decoder for StderrLines {
    type Item = String;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<String>> {
        let searched = buf.len().min(MAX_STDERR_LINE);
        let (end, newline) = match buf[..searched].iter().position(|&b| b == b'\n') {
            Some(end) => (end, 1),
            None if buf.len() >= MAX_STDERR_LINE => (MAX_STDERR_LINE, 0),
            None => return Ok(None),
        };
        let line = buf.split_to(end + newline);
        Ok(Some(text(&line[..end])))
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> io::Result<Option<String>> {
        match self.decode(buf)? {
            Some(line) => Ok(Some(line)),
            None if buf.is_empty() => Ok(None),
            None => Ok(Some(text(&buf.split()))),
        }
    }
}

fn text(bytes: &[u8]) -> String {
    let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
    String::from_utf8_lossy(bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stderr_lines_are_bounded_and_lossy() {
        let mut buf = BytesMut::from(&b"one\r\ntw\xffo\nrest"[..]);
        assert_eq!(
            StderrLines.decode(&mut buf).unwrap().as_deref(),
            Some("one")
        );
        assert_eq!(
            StderrLines.decode(&mut buf).unwrap().as_deref(),
            Some("tw\u{fffd}o")
        );
        assert_eq!(StderrLines.decode(&mut buf).unwrap(), None);
        assert_eq!(
            StderrLines.decode_eof(&mut buf).unwrap().as_deref(),
            Some("rest")
        );
        assert_eq!(StderrLines.decode_eof(&mut buf).unwrap(), None);

        let mut buf = BytesMut::from(&vec![b'x'; MAX_STDERR_LINE + 10][..]);
        buf.extend_from_slice(b"\n");
        let first = StderrLines.decode(&mut buf).unwrap().unwrap();
        assert_eq!(first.len(), MAX_STDERR_LINE);
        assert_eq!(StderrLines.decode(&mut buf).unwrap().unwrap().len(), 10);
    }
}
