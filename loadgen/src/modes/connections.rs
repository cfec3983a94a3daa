//! `connections`: many idle WebSockets opened at a bounded rate and held, to see how many the server takes
//! and what each one costs it in resident memory; optionally with jobs at a steady rate meanwhile, to see
//! how it serves a working client while it holds them.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use super::paced::{self, PacedReport};
use super::{Ctx, RunError};
use crate::cli::ConnectionsArgs;
use crate::progress;
use crate::stats::{Latencies, Problems, Summary};
use crate::sys::{self, FdLimit, KernelMemory};
use crate::target::Target;
use crate::ws::{self, ConnectError};

/// File descriptors this process needs besides its sockets (stdio, runtime, resolver, slack).
const FD_MARGIN: u64 = 64;

/// How long closing all sockets may take at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Time the server gets to free what closed sockets held before its memory is read again.
const SETTLE: Duration = Duration::from_secs(1);

/// Idle sockets read next to nothing: a small buffer keeps this tool's own memory low at 10 000 sockets.
const READ_BUFFER: usize = 4096;

/// What a `connections` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct ConnectionsReport {
    /// The WebSocket URL.
    pub url: String,
    /// Sockets asked for.
    pub sockets: u64,
    /// Sockets that opened.
    pub opened: u64,
    /// Sockets that could not be opened (by kind in `problems.transport`).
    pub failed: u64,
    /// Sockets the server closed, or that broke, while held.
    pub dropped: u64,
    /// Opening rate asked for, per second.
    pub rate_limit: f64,
    /// Handshakes at once at most.
    pub handshakes_limit: u64,
    /// Seconds from the first connect to the last socket opened or failed.
    pub open_elapsed_s: f64,
    /// Sockets opened per second over `open_elapsed_s`.
    pub open_rate: f64,
    /// Seconds the sockets were held.
    pub hold_s: f64,
    /// From starting the TCP connect to the end of the WebSocket handshake.
    pub handshake_latency: Option<Summary>,
    /// This process's open-file limit.
    pub fd_limit: Option<FdLimit>,
    /// The server's process, where given.
    pub server_pid: Option<u32>,
    /// The server's soft open-file limit.
    pub server_fd_limit: Option<u64>,
    /// Server VmRSS before opening, KiB.
    pub rss_before_kib: Option<u64>,
    /// Server VmRSS with the sockets held, KiB.
    pub rss_held_kib: Option<u64>,
    /// Server VmRSS a moment after closing them, KiB.
    pub rss_after_close_kib: Option<u64>,
    /// (held - before) / opened, KiB.
    pub rss_per_socket_kib: Option<f64>,
    /// The kernel's memory for sockets before opening (machine-wide; needs root for /proc/slabinfo).
    pub kernel_before: Option<KernelMemory>,
    /// The same with the sockets held.
    pub kernel_held: Option<KernelMemory>,
    /// Growth of the socket slab caches per socket, KiB: (held - before) / (2 × opened), as both ends
    /// of every connection are sockets on this machine.
    pub kernel_per_socket_kib: Option<f64>,
    /// The jobs submitted at `--jobs-per-sec` while the sockets were held.
    pub jobs: Option<Box<PacedReport>>,
    /// Everything that went wrong.
    pub problems: Problems,
    /// The run hit `--timeout`.
    pub timed_out: bool,
    /// Remarks for the reader: limits, hints.
    pub notes: Vec<String>,
}

impl ConnectionsReport {
    /// Every socket opened and stayed open, with nothing unexpected.
    pub fn is_clean(&self) -> bool {
        self.opened == self.sockets
            && self.dropped == 0
            && self.problems.is_clean()
            && self.jobs.as_ref().is_none_or(|jobs| jobs.is_clean())
    }
}

/// News from one socket's task.
enum Event {
    Opened(Duration),
    Failed(ConnectError),
    Dropped(String),
    Unexpected(String),
}

#[derive(Default)]
struct Tally {
    opened: u64,
    failed: u64,
    dropped: u64,
    local_emfile: bool,
    last_open: Option<Instant>,
    handshakes: Latencies,
    problems: Problems,
}

impl Tally {
    fn apply(&mut self, event: Event) {
        match event {
            Event::Opened(took) => {
                self.opened += 1;
                self.handshakes.record(took);
                self.last_open = Some(Instant::now());
            }
            Event::Failed(e) => {
                self.failed += 1;
                self.local_emfile |= e.is_local_emfile();
                self.last_open = Some(Instant::now());
                self.problems
                    .transport(&format!("connect: {}", e.kind()), &e.to_string());
            }
            Event::Dropped(why) => {
                self.dropped += 1;
                self.problems.transport("dropped while held", &why);
            }
            Event::Unexpected(text) => self.problems.unexpected("message on an idle socket", &text),
        }
    }

    fn settled(&self) -> u64 {
        self.opened + self.failed
    }
}

/// Opens, holds and closes the sockets, reading the server's memory around it.
pub async fn run(
    target: &Target,
    args: &ConnectionsArgs,
    ctx: &Ctx,
) -> Result<ConnectionsReport, RunError> {
    let Preflight {
        mut notes,
        needed,
        fd_limit,
        server_fd_limit,
        rss_before,
    } = preflight(args)?;
    let kernel_before = match sys::kernel_memory() {
        Ok(memory) => Some(memory),
        Err(e) => {
            notes.push(format!(
                "{e}: the kernel's memory per socket is not measured"
            ));
            None
        }
    };
    for note in &notes {
        ctx.note(note);
    }

    let target = Arc::new(target.clone());
    let (release, released) = watch::channel(false);
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let permits = Arc::new(Semaphore::new(args.handshakes as usize));
    let bar = progress::bar(args.sockets, "connections", ctx.quiet);
    let mut tally = Tally::default();
    let mut tasks = JoinSet::new();
    let mut timed_out = false;
    let start = Instant::now();
    let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);

    // Open, at most `rate` per second and `handshakes` at once.
    let mut spawned = 0;
    for i in 0..args.sockets {
        let slot = start + Duration::from_secs_f64(i as f64 / args.rate);
        let acquire = async {
            sleep_until(slot).await;
            permits.clone().acquire_owned().await
        };
        let permit = tokio::select! {
            biased;
            () = sleep_until(ctx.deadline) => {
                timed_out = true;
                break;
            }
            permit = acquire => permit.expect("the semaphore is never closed"),
        };
        while let Ok(event) = events.try_recv() {
            tally.apply(event);
        }
        bar.set_position(tally.settled());
        let socket = Held {
            target: target.clone(),
            limit: args.handshake_timeout,
            config,
            events: events_tx.clone(),
            released: released.clone(),
        };
        tasks.spawn(socket.run(permit));
        spawned += 1;
    }
    drop(events_tx);
    // Wait for the handshakes in progress; each one is bounded by --handshake-timeout.
    while tally.settled() < spawned {
        tokio::select! {
            biased;
            () = sleep_until(ctx.deadline) => {
                timed_out = true;
                break;
            }
            event = events.recv() => match event {
                Some(event) => tally.apply(event),
                None => break,
            },
        }
        bar.set_position(tally.settled());
    }
    bar.finish_and_clear();
    let open_elapsed = tally
        .last_open
        .map_or(Duration::ZERO, |last| last.saturating_duration_since(start));
    ctx.note(&format!(
        "{} sockets open ({} failed) in {:.2} s; holding them for {:.1} s",
        tally.opened,
        tally.failed,
        open_elapsed.as_secs_f64(),
        args.hold.as_secs_f64()
    ));

    // Hold, watching for sockets the server drops, with jobs at a steady rate meanwhile if asked.
    let hold_start = Instant::now();
    let hold_end = (hold_start + args.hold).min(ctx.deadline);
    if hold_start + args.hold > ctx.deadline {
        timed_out = true;
    }
    let paced = args.jobs_per_sec.map(|rate| {
        let target = target.clone();
        let n = args.n;
        tokio::spawn(async move { paced::run(&target, rate, n, hold_end).await })
    });
    loop {
        tokio::select! {
            biased;
            () = sleep_until(hold_end) => break,
            event = events.recv() => match event {
                Some(event) => tally.apply(event),
                None => {
                    sleep_until(hold_end).await;
                    break;
                }
            },
        }
    }
    let hold = hold_start.elapsed();
    let rss_held = match args.server_pid {
        Some(pid) => Some(sys::rss_kib(pid)?),
        None => None,
    };
    let kernel_held = kernel_before.and_then(|_| sys::kernel_memory().ok());

    let jobs = match paced {
        Some(task) => match task.await {
            Ok(report) => {
                ctx.note(&format!(
                    "{} jobs submitted at {}/s while holding: {} done, {} failed, {} unfinished",
                    report.submitted, report.rate, report.done, report.failed, report.unfinished
                ));
                Some(Box::new(report))
            }
            Err(e) => {
                tally
                    .problems
                    .transport("job task panicked", &e.to_string());
                None
            }
        },
        None => None,
    };

    // Close every socket, bounded, then let the server settle and read its memory once more.
    let _ = release.send(true);
    let closing = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
        notes.push(format!(
            "{} sockets were still closing after {CLOSE_TIMEOUT:?}; dropped",
            tasks.len()
        ));
        tasks.abort_all();
    }
    while let Ok(event) = events.try_recv() {
        tally.apply(event);
    }
    let rss_after_close = match args.server_pid {
        Some(pid) => {
            tokio::time::sleep(SETTLE).await;
            Some(sys::rss_kib(pid)?)
        }
        None => None,
    };

    if tally.local_emfile {
        notes.push(
            "this process ran out of file descriptors (EMFILE): raise its hard limit (`ulimit -Hn`)"
                .into(),
        );
    }
    let server_side_failures = tally.failed > 0 && !tally.local_emfile;
    if server_side_failures {
        notes.push(format!(
            "{} sockets failed to open: if the server's open-file limit is below {} it hits EMFILE and \
             stops accepting (handshakes then time out or are reset); start it from a shell with \
             `ulimit -n 65536`",
            tally.failed, needed
        ));
    }
    if let (Some(before), Some(held), Some(after)) = (rss_before, rss_held, rss_after_close) {
        if held > before && after > before + (held - before) / 2 {
            notes.push(
                "the server kept most of that memory after the sockets closed (its allocator holds on to \
                 freed pages): another run against this same server process reuses it and under-reports \
                 the cost per socket; measure against a freshly started server"
                    .into(),
            );
        }
    }
    let kernel_per_socket = match (kernel_before, kernel_held) {
        (Some(before), Some(held)) if tally.opened > 0 => Some(
            (held.socket_slabs_bytes as f64 - before.socket_slabs_bytes as f64)
                / 1024.0
                / (2 * tally.opened) as f64,
        ),
        _ => None,
    };
    let per_socket = match (rss_before, rss_held) {
        (Some(before), Some(held)) if tally.opened > 0 => {
            Some((held as f64 - before as f64) / tally.opened as f64)
        }
        _ => None,
    };
    Ok(ConnectionsReport {
        url: target.ws_url().to_string(),
        sockets: args.sockets,
        opened: tally.opened,
        failed: tally.failed,
        dropped: tally.dropped,
        rate_limit: args.rate,
        handshakes_limit: args.handshakes,
        open_elapsed_s: open_elapsed.as_secs_f64(),
        open_rate: if open_elapsed.is_zero() {
            0.0
        } else {
            tally.opened as f64 / open_elapsed.as_secs_f64()
        },
        hold_s: hold.as_secs_f64(),
        handshake_latency: tally.handshakes.summary(),
        fd_limit,
        server_pid: args.server_pid,
        server_fd_limit,
        rss_before_kib: rss_before,
        rss_held_kib: rss_held,
        rss_after_close_kib: rss_after_close,
        rss_per_socket_kib: per_socket,
        kernel_before,
        kernel_held,
        kernel_per_socket_kib: kernel_per_socket,
        jobs,
        problems: tally.problems,
        timed_out,
        notes,
    })
}

/// Limits checked, and the server's memory read, before any socket opens.
struct Preflight {
    notes: Vec<String>,
    /// File descriptors the run needs on each side.
    needed: u64,
    fd_limit: Option<FdLimit>,
    server_fd_limit: Option<u64>,
    rss_before: Option<u64>,
}

/// Raises this process's open-file limit and checks both sides' limits against `--sockets`, saying
/// clearly when the count cannot be reached.
fn preflight(args: &ConnectionsArgs) -> Result<Preflight, RunError> {
    let mut notes = Vec::new();
    let needed = args.sockets + FD_MARGIN;
    let fd_limit = match sys::raise_fd_limit() {
        Ok(limit) => {
            if limit.soft < needed {
                notes.push(format!(
                    "this process may open {} files (hard limit {}): {} sockets cannot all be opened; \
                     at most about {} can. Raise the hard limit (as root: `ulimit -Hn {needed}`) to reach it",
                    limit.soft,
                    limit.hard,
                    args.sockets,
                    limit.soft.saturating_sub(FD_MARGIN)
                ));
            }
            Some(limit)
        }
        Err(e) => {
            notes.push(format!("{e}: the run keeps the limit it has"));
            None
        }
    };
    if let Some(ports) = sys::local_ports() {
        if args.sockets > ports {
            notes.push(format!(
                "only {ports} local ports (net.ipv4.ip_local_port_range) for connections to one server \
                 address: at most that many sockets can be open"
            ));
        }
    }
    let mut server_fd_limit = None;
    let mut rss_before = None;
    if let Some(pid) = args.server_pid {
        match sys::max_open_files(pid) {
            Ok(limit) => {
                server_fd_limit = Some(limit);
                if limit < needed {
                    notes.push(format!(
                        "the server (pid {pid}) may open {limit} files: it cannot take {} sockets. \
                         Start it from a shell with a higher limit (`ulimit -n 65536`)",
                        args.sockets
                    ));
                }
            }
            Err(e) => notes.push(e.to_string()),
        }
        rss_before = Some(sys::rss_kib(pid)?);
    }

    Ok(Preflight {
        notes,
        needed,
        fd_limit,
        server_fd_limit,
        rss_before,
    })
}

/// One idle socket: opened, then held until released or dropped by the server.
struct Held {
    target: Arc<Target>,
    limit: Duration,
    config: WebSocketConfig,
    events: mpsc::UnboundedSender<Event>,
    released: watch::Receiver<bool>,
}

impl Held {
    async fn run(mut self, permit: OwnedSemaphorePermit) {
        let start = Instant::now();
        let opened = ws::connect_with(&self.target, self.limit, Some(self.config)).await;
        drop(permit);
        let mut socket = match opened {
            Ok(socket) => {
                let _ = self.events.send(Event::Opened(start.elapsed()));
                socket
            }
            Err(e) => {
                let _ = self.events.send(Event::Failed(e));
                return;
            }
        };
        loop {
            tokio::select! {
                _ = self.released.wait_for(|released| *released) => break,
                frame = socket.next() => match frame {
                    // Pings are answered by the library on the next read or write.
                    Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Text(text))) => {
                        let _ = self.events.send(Event::Unexpected(text.as_str().to_owned()));
                    }
                    Some(Ok(Message::Binary(bytes))) => {
                        let _ = self
                            .events
                            .send(Event::Unexpected(format!("binary frame of {} bytes", bytes.len())));
                    }
                    Some(Ok(Message::Close(frame))) => {
                        let why = frame.map_or_else(
                            || "closed by server".to_owned(),
                            |f| format!("closed by server: {} {}", u16::from(f.code), f.reason),
                        );
                        let _ = self.events.send(Event::Dropped(why));
                        return;
                    }
                    Some(Err(e)) => {
                        let _ = self.events.send(Event::Dropped(e.to_string()));
                        return;
                    }
                    None => {
                        let _ = self.events.send(Event::Dropped("connection ended".into()));
                        return;
                    }
                },
            }
        }
        let _ = socket.close(None).await;
    }
}
