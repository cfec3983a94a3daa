//! One WebSocket session: reads requests, answers them, and pushes the result of every job it watches.
//!
//! The session is a single task that owns all of its state, so ordering rules are plain code: `accepted`
//! goes out before the `result` of the same job (a result that arrives first is held back), and each job
//! gets exactly one `result` on this socket (a job leaves the session's table when its result is sent, and
//! anything arriving later for it is a duplicate). Writes go through a separate writer task with a byte
//! budget, so a client that stops reading costs bounded memory and never stalls the session; all sockets
//! together also keep within the server's budget (see `buffers`). A client that stays silent is pinged,
//! and closed if it does not answer (see `heartbeat`).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use futures::stream::StreamExt;
use futures::SinkExt;
use herald_engine::backend::Cancel;
use herald_protocol::{
    parse_client_frame, unix_ms, ClientMessage, ErrorCode, ErrorMessage, JobId, JobRecord,
    JobStatus, ProgressMessage, ServerMessage, Submit,
};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use crate::auth::Caller;
use crate::buffers::Account;
use crate::heartbeat::{Beat, Heartbeat};
use crate::jobs::{unavailable, Prepared, Taken};
use crate::limits::{retry_after_ms, SocketSlot};
use crate::mailbox::{SessionEvent, SessionHandle, Submitted};
use crate::AppState;

/// Events a session can hold before it counts as overloaded.
const EVENT_QUEUE: usize = 1024;

/// How long a closing session waits for its Close frame to be written before dropping the connection.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// Close codes (RFC 6455).
const GOING_AWAY: u16 = 1001;
const POLICY: u16 = 1008;
const INVALID_DATA: u16 = 1007;
const TOO_BIG: u16 = 1009;
const TRY_AGAIN_LATER: u16 = 1013;

/// A job this session waits for.
enum Watch {
    /// Submitted, not yet confirmed: a result arriving now is held until `accepted` is sent.
    Submitting(Option<Arc<JobRecord>>),
    /// Registered by a resume whose answer has not come yet. A result arriving now is held: only that
    /// answer tells whether this client may see the job at all.
    Resuming(Option<Arc<JobRecord>>),
    /// The job of an idempotency key a submit repeated: `accepted` is out, and a resume registers this
    /// instance as its watcher. Like `Resuming`, but its answer sends no `status`.
    Adopting(Option<Arc<JobRecord>>),
    /// The client knows the job is pending; the next thing it gets is the result. `registrations`: how
    /// many times this session counted itself among the job's watchers in Redis (released when it goes).
    Pending { registrations: u32 },
}

/// Tells a client it may not open this socket (`error`, then Close 1013 "try again later"), and drops it.
pub async fn refuse(mut socket: WebSocket, error: ErrorMessage) {
    let close = CloseFrame {
        code: TRY_AGAIN_LATER,
        reason: "too many sockets".into(),
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        socket
            .send(Message::Text(ServerMessage::Error(error).to_json().into()))
            .await?;
        socket.send(Message::Close(Some(close))).await?;
        // Wait for the client's Close, so the refusal is read before the connection drops.
        while let Some(Ok(message)) = socket.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
        }
        Ok::<_, axum::Error>(())
    })
    .await;
}

/// Starts a session on an upgraded socket for `caller`. The future it returns runs until the client
/// leaves, the server stops, or the client is too slow or stops answering pings. `slot` counts the
/// socket against the caller's limit while it is open.
///
/// The set-up runs here, before the future is built, so that the future holds only what an open
/// session needs: every idle socket keeps one for as long as it is open.
pub fn run(
    socket: WebSocket,
    state: AppState,
    caller: Caller,
    slot: SocketSlot,
) -> impl Future<Output = ()> + Send + 'static {
    let (sink, mut stream) = socket.split();
    let (events_tx, mut events) = mpsc::channel(EVENT_QUEUE);
    let overloaded = CancellationToken::new();
    let handle = SessionHandle {
        id: state.hub.new_session_id(),
        events: events_tx,
        overloaded: overloaded.clone(),
    };
    let (outbox, writer) = Outbox::start(
        sink,
        state.settings.socket_buffer_bytes,
        overloaded.clone(),
        state.buffers.open(),
    );
    let evicted = outbox.shared.account.usage().evicted().clone();
    let mut heartbeat = Heartbeat::new(
        state.settings.ping_interval(),
        state.settings.ping_timeout(),
    );
    let span = tracing::debug_span!("session", session = handle.id);
    let metrics = state.metrics.clone();
    metrics.sockets_open.inc();
    let mut session = Session {
        state,
        caller,
        handle,
        outbox,
        watches: HashMap::new(),
    };
    async move {
        let _slot = slot;
        debug!("session opened");
        let close = loop {
            tokio::select! {
                biased;
                _ = session.state.shutdown.cancelled() => break Some((GOING_AWAY, "server shutting down")),
                _ = overloaded.cancelled() => {
                    warn!("client too slow: closing its socket");
                    session.state.stats.sockets_closed_slow.fetch_add(1, Ordering::Relaxed);
                    break Some((POLICY, "too slow: outgoing buffer full; resume by request ID"));
                }
                _ = evicted.cancelled() => {
                    warn!("the server's socket buffers are full: closing the socket that holds most");
                    session.state.stats.sockets_closed_slow.fetch_add(1, Ordering::Relaxed);
                    break Some((POLICY, "too slow: the server's buffers are full; resume by request ID"));
                }
                Some(event) = events.recv() => session.on_event(event),
                frame = stream.next() => match frame.inspect(|_| heartbeat.heard()) {
                    Some(Ok(Message::Text(text))) => session.on_text(&text),
                    Some(Ok(Message::Binary(_))) => session.send(&ServerMessage::Error(ErrorMessage::new(
                        ErrorCode::BadRequest,
                        "binary frames are not supported; send text frames holding JSON",
                    ))),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break None,
                    Some(Err(e)) => break Some(close_for(e)),
                },
                beat = heartbeat.due() => match beat {
                    Beat::Ping => {
                        metrics.pings_sent.inc();
                        session.outbox.ping();
                    }
                    Beat::Dead => {
                        debug!("no answer to a ping: closing the socket");
                        metrics.ping_timeouts.inc();
                        break Some((GOING_AWAY, "no answer to ping; resume by request ID"));
                    }
                },
            }
        };
        session.close(close, writer).await;
        metrics.sockets_open.dec();
    }
    .instrument(span)
}

/// The close code and reason for a frame the socket could not read.
fn close_for(error: axum::Error) -> (u16, &'static str) {
    use tungstenite::error::{CapacityError, Error};
    match error.into_inner().downcast_ref::<Error>() {
        Some(Error::Capacity(CapacityError::MessageTooLong { .. })) => (
            TOO_BIG,
            "frame too large: the limit is --max-input-bytes plus 4 KiB",
        ),
        Some(Error::Utf8(_)) => (INVALID_DATA, "text frame is not valid UTF-8"),
        _ => (POLICY, "protocol error"),
    }
}

struct Session {
    state: AppState,
    caller: Caller,
    handle: SessionHandle,
    outbox: Outbox,
    watches: HashMap<JobId, Watch>,
}

impl Session {
    fn send(&self, message: &ServerMessage) {
        self.state.metrics.messages_pushed.inc();
        self.outbox.push(message.to_json());
    }

    fn on_text(&mut self, text: &str) {
        match parse_client_frame(text) {
            Ok(ClientMessage::Submit(submit)) => self.submit(submit),
            Ok(ClientMessage::Resume { id }) => self.resume(id),
            Ok(ClientMessage::Cancel { id }) => self.cancel(id),
            Err(error) => self.send(&ServerMessage::Error(error)),
        }
    }

    fn busy(&self) -> Option<ErrorMessage> {
        (self.watches.len() >= self.state.settings.max_in_flight).then(|| ErrorMessage {
            retry_after_ms: Some(1000),
            ..ErrorMessage::new(
                ErrorCode::Busy,
                format!(
                    "this connection already has {} jobs in flight; wait for some to finish",
                    self.watches.len()
                ),
            )
        })
    }

    fn submit(&mut self, submit: Submit) {
        let Submit {
            model,
            input,
            tag,
            key,
            webhook,
        } = submit;
        if let Some(busy) = self.busy() {
            return self.send(&ServerMessage::Error(busy.with_tag(tag)));
        }
        let webhook = match crate::webhook::check_submit(webhook.as_deref(), &self.state.settings) {
            Ok(webhook) => webhook,
            Err(refused) => return self.send(&ServerMessage::Error(refused.with_tag(tag))),
        };
        if let Err(wait) = self.state.limits.submit(&self.caller.key) {
            let busy = ErrorMessage {
                retry_after_ms: Some(retry_after_ms(wait)),
                ..ErrorMessage::new(
                    ErrorCode::Busy,
                    "too many submits from this client; slow down",
                )
            };
            return self.send(&ServerMessage::Error(busy.with_tag(tag)));
        }
        let id = JobId::new_v4();
        // Watch before publishing: the job may finish before the publish is even confirmed.
        self.state.hub.watch(id, &self.handle);
        self.watches.insert(id, Watch::Submitting(None));
        let jobs = self.state.jobs.clone();
        let events = self.handle.events.clone();
        let owner = self.caller.identity.clone();
        let client = self.caller.key.to_string();
        tokio::spawn(async move {
            // Runs to the end even if the session goes away, so a record is never left half-submitted.
            let outcome = match jobs.prepare(model.as_deref(), input).await {
                Ok(mut job) => {
                    job.key = key;
                    job.webhook = webhook;
                    jobs.submit(id, &job, true, owner.as_deref(), &client)
                        .await
                        .map(|taken| (job, taken))
                        .map_err(|r| r.to_error())
                }
                Err(refused) => Err(refused),
            };
            // A repeated key registers nothing: the session resumes the key's job itself.
            let registered = matches!(outcome, Ok((_, Taken::Created)));
            let event = SessionEvent::Submitted(Box::new(Submitted { id, tag, outcome }));
            if events.send(event).await.is_err() && registered {
                // The session left while this ran: release the registration it can no longer release.
                release(&jobs.store, &jobs.instance, id, 1).await;
            }
        });
    }

    fn resume(&mut self, id: JobId) {
        // A resume of a finished job sends its whole output: it costs as much as a submit answered
        // from the cache, and counts against the same allowance.
        if let Err(wait) = self.state.limits.submit(&self.caller.key) {
            let busy = ErrorMessage {
                retry_after_ms: Some(retry_after_ms(wait)),
                ..ErrorMessage::new(
                    ErrorCode::Busy,
                    "too many submits and resumes from this client; slow down",
                )
            };
            return self.send(&ServerMessage::Error(busy.with_id(id)));
        }
        if !self.watches.contains_key(&id) {
            if let Some(busy) = self.busy() {
                return self.send(&ServerMessage::Error(busy.with_id(id)));
            }
            // Register first, then read: a completion that lands between the two is not missed.
            self.state.hub.watch(id, &self.handle);
            self.watches.insert(id, Watch::Resuming(None));
        }
        self.read_and_watch(id, "a resume");
    }

    /// Reads job `id` in the background, registering this instance as its watcher while it is
    /// pending, and hands the outcome back to the session as [`SessionEvent::Resumed`]; `what` names
    /// the request in the log. A registration the session is gone for is released.
    fn read_and_watch(&self, id: JobId, what: &'static str) {
        let store = self.state.jobs.store.clone();
        let instance = self.state.jobs.instance.clone();
        let events = self.handle.events.clone();
        let identity = self.caller.identity.clone();
        tokio::spawn(async move {
            // The owner check is in the store's script, with the registration: a stranger is not
            // registered as a watcher, and gets `not_found` as for an unknown ID.
            let outcome = store
                .resume(&id, &instance, identity.as_deref())
                .await
                .map_err(|e| {
                    warn!(%id, error = %e, "could not read a job for {what}");
                    unavailable().with_id(id)
                });
            let registered = matches!(&outcome, Ok(Some(r)) if !r.status.is_final());
            let resumed = SessionEvent::Resumed {
                id,
                outcome: Box::new(outcome),
            };
            if events.send(resumed).await.is_err() && registered {
                release(&store, &instance, id, 1).await;
            }
        });
    }

    /// Cancels a job. The session watches it first (as a resume does), so that the cancelled result
    /// reaches this socket whether the job was queued (final at once) or running (its worker stops
    /// at the next checkpoint and publishes it).
    fn cancel(&mut self, id: JobId) {
        if !self.watches.contains_key(&id) {
            if let Some(busy) = self.busy() {
                return self.send(&ServerMessage::Error(busy.with_id(id)));
            }
            self.state.hub.watch(id, &self.handle);
            self.watches.insert(id, Watch::Resuming(None));
        }
        let jobs = self.state.jobs.clone();
        let events = self.handle.events.clone();
        let identity = self.caller.identity.clone();
        tokio::spawn(async move {
            let outcome = jobs
                .cancel(id, true, identity.as_deref())
                .await
                .map_err(|r| r.to_error().with_id(id));
            let registered = matches!(outcome, Ok(Cancel::Requested));
            if events
                .send(SessionEvent::Cancelled {
                    id,
                    outcome: Box::new(outcome),
                })
                .await
                .is_err()
                && registered
            {
                release(&jobs.store, &jobs.instance, id, 1).await;
            }
        });
    }

    fn on_cancelled(&mut self, id: JobId, outcome: Result<Cancel, ErrorMessage>) {
        let fresh = matches!(self.watches.get(&id), Some(Watch::Resuming(_)));
        match outcome {
            Ok(Cancel::Requested) => {
                self.state.metrics.cancels.inc();
                match self.watches.get_mut(&id) {
                    Some(Watch::Pending { registrations }) => *registrations += 1,
                    Some(Watch::Resuming(early)) => match early.take() {
                        // It ended after the cancel: the result held back is the answer.
                        Some(early) => self.deliver(id, &early),
                        None => {
                            self.watches.insert(id, Watch::Pending { registrations: 1 });
                        }
                    },
                    // Submitting: `accepted` is not out yet; the registration is released when the
                    // result comes (the job is final then) or the session goes.
                    Some(Watch::Submitting(_) | Watch::Adopting(_)) | None => {}
                }
            }
            Ok(Cancel::Cancelled { record, .. }) => {
                self.state.metrics.cancels.inc();
                // Sent from here unless the completion published for every watcher got here first
                // (then the job is no longer watched), or `accepted` is not out yet (then that
                // completion answers once it is).
                if matches!(
                    self.watches.get(&id),
                    Some(Watch::Pending { .. } | Watch::Resuming(_) | Watch::Adopting(_))
                ) {
                    self.deliver(id, &record);
                }
            }
            Ok(Cancel::Final(status)) => {
                let error = ErrorMessage::new(
                    ErrorCode::AlreadyFinished,
                    format!("the job already finished ({status}); there is nothing to cancel"),
                );
                self.refuse(id, fresh, error.with_id(id));
            }
            Ok(Cancel::Missing) => self.refuse(id, fresh, not_found(id)),
            Err(error) => self.refuse(id, fresh, error),
        }
    }

    fn on_event(&mut self, event: SessionEvent) {
        match event {
            SessionEvent::Cancelled { id, outcome } => self.on_cancelled(id, *outcome),
            SessionEvent::Progress(progress) => {
                // Only once the client knows the job: progress never comes before `accepted`.
                if let Some(Watch::Pending { .. }) = self.watches.get(&progress.id) {
                    let ProgressMessage {
                        id,
                        model,
                        fraction,
                        phase,
                    } = *progress;
                    self.send(&ServerMessage::Progress {
                        id,
                        model,
                        fraction,
                        phase,
                    });
                }
            }
            SessionEvent::Finished(id, record) => match self.watches.get_mut(&id) {
                Some(
                    Watch::Submitting(early) | Watch::Resuming(early) | Watch::Adopting(early),
                ) => *early = Some(record),
                Some(Watch::Pending { .. }) => self.deliver(id, &record),
                // Already answered: a duplicate completion.
                None => {}
            },
            SessionEvent::Submitted(submitted) => match *submitted {
                Submitted {
                    id,
                    tag,
                    outcome:
                        Ok((
                            job,
                            Taken::Existing {
                                id: existing,
                                record,
                            },
                        )),
                } => self.adopt(id, existing, &record, tag, &job),
                Submitted {
                    id,
                    tag,
                    outcome: Ok((job, Taken::Created)),
                } => {
                    self.state
                        .metrics
                        .submitted
                        .get_or_create(&crate::metrics::ViaLabel { via: "websocket" })
                        .inc();
                    let n = job.n();
                    self.send(&ServerMessage::Accepted {
                        id,
                        model: job.model.clone(),
                        n,
                        tag,
                        workers: job.workers,
                        existing: false,
                    });
                    info!(%id, model = %job.model, n, "job accepted");
                    let pending = Watch::Pending { registrations: 1 };
                    if let Some(Watch::Submitting(Some(early))) = self.watches.insert(id, pending) {
                        self.deliver(id, &early);
                    }
                }
                Submitted {
                    id,
                    tag,
                    outcome: Err(error),
                } => {
                    self.forget(id);
                    self.send(&ServerMessage::Error(error.with_tag(tag)));
                }
            },
            SessionEvent::Resumed { id, outcome } => {
                let outcome = *outcome;
                let Some(watch) = self.watches.get_mut(&id) else {
                    // The result was pushed while the resume read was in flight: already answered.
                    return;
                };
                let (fresh, early, quiet) = match watch {
                    Watch::Resuming(early) => (true, early.take(), false),
                    Watch::Adopting(early) => (true, early.take(), true),
                    _ => (false, None, false),
                };
                match outcome {
                    Ok(Some(record)) if record.status.is_final() => self.deliver(id, &record),
                    Ok(Some(record)) => {
                        if let Some(early) = early {
                            // It finished after the read: the result held back is the answer.
                            return self.deliver(id, &early);
                        }
                        // The script counted this session among the watchers once more.
                        match watch {
                            Watch::Pending { registrations } => *registrations += 1,
                            _ => *watch = Watch::Pending { registrations: 1 },
                        }
                        if quiet {
                            return;
                        }
                        let mut status = ServerMessage::from_record(id, &record, unix_ms());
                        if let ServerMessage::Status { workers, .. } = &mut status {
                            *workers = self.state.jobs.directory.workers(&record.model);
                        }
                        self.send(&status);
                    }
                    Ok(None) => self.refuse(id, fresh, not_found(id)),
                    Err(error) => self.refuse(id, fresh, error),
                }
            }
        }
    }

    /// Answers a submit that repeated an idempotency key: its provisional ID `id` is dropped, and the
    /// client is told of the key's job `existing` (`accepted` with `existing`), then of its result: at
    /// once if it has ended, else when it does (watched here first, then resumed, so that a
    /// completion cannot slip between the two).
    fn adopt(
        &mut self,
        id: JobId,
        existing: JobId,
        record: &JobRecord,
        tag: Option<String>,
        job: &Prepared,
    ) {
        self.watches.remove(&id);
        self.state.hub.unwatch(&id, self.handle.id);
        self.state
            .metrics
            .submitted
            .get_or_create(&crate::metrics::ViaLabel { via: "websocket" })
            .inc();
        self.send(&ServerMessage::Accepted {
            id: existing,
            model: record.model.clone(),
            n: record.factorial_n(),
            tag,
            workers: self.state.jobs.directory.workers(&record.model),
            existing: true,
        });
        info!(id = %existing, model = %job.model, "repeated submit: the key's job");
        if self.watches.contains_key(&existing) {
            // This socket already waits for it: its result comes once.
            return;
        }
        if record.status.is_final() {
            return self.deliver(existing, record);
        }
        self.state.hub.watch(existing, &self.handle);
        self.watches.insert(existing, Watch::Adopting(None));
        self.read_and_watch(existing, "a repeated submit");
    }

    /// Answers a resume or cancel with `error`; a watch it opened (`fresh`) is closed again.
    fn refuse(&mut self, id: JobId, fresh: bool, error: ErrorMessage) {
        if fresh {
            self.forget(id);
        }
        self.send(&ServerMessage::Error(error));
    }

    /// Sends a job's final result and stops watching it. (Its registrations need no release: the job
    /// is final, and its watcher counts expire with it.)
    fn deliver(&mut self, id: JobId, record: &JobRecord) {
        let now = unix_ms();
        if record.status.is_final() {
            let metrics = &self.state.metrics;
            metrics
                .finished
                .get_or_create(&crate::metrics::StatusLabel {
                    status: record.status.as_str(),
                })
                .inc();
            if record.status == JobStatus::Done {
                let total = now.saturating_sub(record.submitted_ms);
                metrics.time_to_result.observe(total as f64 / 1000.0);
            }
        }
        self.send(&ServerMessage::from_record(id, record, now));
        if self.watches.remove(&id).is_some() {
            self.state.hub.unwatch(&id, self.handle.id);
        }
    }

    /// Stops watching a job that is still pending, releasing this session's registrations in Redis so
    /// that its completion is not sent to an instance nobody waits on.
    fn forget(&mut self, id: JobId) {
        let Some(watch) = self.watches.remove(&id) else {
            return;
        };
        self.state.hub.unwatch(&id, self.handle.id);
        if let Watch::Pending { registrations } = watch {
            let store = self.state.jobs.store.clone();
            let instance = self.state.jobs.instance.clone();
            tokio::spawn(async move { release(&store, &instance, id, registrations).await });
        }
    }

    async fn close(&mut self, close: Option<(u16, &'static str)>, writer: JoinHandle<()>) {
        let pending: Vec<JobId> = self.watches.keys().copied().collect();
        for id in pending {
            self.forget(id);
        }
        self.outbox.close(close);
        let mut writer = writer;
        if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
            .await
            .is_err()
        {
            writer.abort();
        }
        debug!(session = self.handle.id, "session closed");
    }
}

/// The error for a job that is unknown, expired, or (with authentication) another identity's.
fn not_found(id: JobId) -> ErrorMessage {
    ErrorMessage::new(ErrorCode::NotFound, crate::jobs::NOT_FOUND).with_id(id)
}

/// Releases `registrations` of this instance among a job's watchers in Redis.
async fn release(store: &herald_engine::Store, instance: &str, id: JobId, registrations: u32) {
    if let Err(e) = store.unwatch(&id, instance, registrations).await {
        // Harmless: the instance gets one completion it drops, and the count expires with the job.
        debug!(%id, error = %e, "could not release a watcher registration");
    }
}

/// Most frames a session's writer sends in one write.
const WRITE_BATCH: usize = 64;

/// The session's outgoing queue, bounded in bytes, drained by a writer task.
///
/// A plain queue behind a mutex rather than a channel: a tokio channel allocates its first block of
/// slots up front, and an idle socket would pay for it; an empty `VecDeque` holds no memory.
struct Outbox {
    shared: Arc<Shared>,
    limit: usize,
    overloaded: CancellationToken,
}

/// What the session and its writer share.
struct Shared {
    pending: Mutex<Pending>,
    /// Wakes the writer; a wake-up given while it is busy is kept for its next wait.
    wake: Notify,
    /// Bytes queued and not yet written, and the write buffer, in the server's budget. Dropped with
    /// the last of the session and its writer, when the socket's memory goes.
    account: Account,
}

/// Work for the writer.
#[derive(Default)]
struct Pending {
    frames: VecDeque<Utf8Bytes>,
    ping: bool,
    /// Set when the session ends: the Close frame to send, if any. It goes before frames still queued.
    close: Option<Option<(u16, &'static str)>>,
}

impl Outbox {
    /// Starts the writer on `sink` (the socket's sending half), counting what it holds in `account`.
    fn start<S>(
        mut sink: S,
        limit: usize,
        overloaded: CancellationToken,
        account: Account,
    ) -> (Self, JoinHandle<()>)
    where
        S: futures::Sink<Message> + Unpin + Send + 'static,
    {
        let evicted = account.usage().evicted().clone();
        let shared = Arc::new(Shared {
            pending: Mutex::default(),
            wake: Notify::new(),
            account,
        });
        let work = shared.clone();
        let writer = tokio::spawn(async move {
            let close = loop {
                let (frames, ping) = {
                    let mut pending = work.pending.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(close) = pending.close.take() {
                        break close;
                    }
                    // Frames already queued go out in the same write: a socket with many jobs in
                    // flight gets its answers in a few system calls instead of one each. Taking the
                    // whole queue also frees its memory once written: an idle socket keeps none.
                    let frames = if pending.frames.len() <= WRITE_BATCH {
                        std::mem::take(&mut pending.frames)
                    } else {
                        pending.frames.drain(..WRITE_BATCH).collect()
                    };
                    (frames, std::mem::take(&mut pending.ping))
                };
                if frames.is_empty() && !ping {
                    work.wake.notified().await;
                    continue;
                }
                let write = async {
                    if ping {
                        sink.feed(Message::Ping(Default::default())).await.ok()?;
                    }
                    let mut written = 0;
                    for frame in frames {
                        written += frame.len();
                        sink.feed(Message::Text(frame)).await.ok()?;
                    }
                    sink.flush().await.ok()?;
                    Some(written)
                };
                // Closed by the budget: a write waiting on a client that does not read would hold its
                // memory; dropping it frees it now (no Close frame can pass that client's backlog).
                let written = tokio::select! {
                    biased;
                    _ = evicted.cancelled() => return,
                    written = write => written,
                };
                let Some(written) = written else {
                    return;
                };
                work.account.written(written);
            };
            if let Some((code, reason)) = close {
                let frame = CloseFrame {
                    code,
                    reason: reason.into(),
                };
                let _ = sink.send(Message::Close(Some(frame))).await;
            }
            let _ = sink.close().await;
        });
        let outbox = Self {
            shared,
            limit,
            overloaded,
        };
        (outbox, writer)
    }

    /// Queues a frame, or marks the session overloaded if the client has left too much unread. A frame
    /// larger than the socket's whole budget still goes out when nothing else is waiting. Past the
    /// server's budget, some socket is closed (this one, if it holds the most and waited longest: the
    /// frame is then dropped with it).
    fn push(&self, text: String) {
        let len = text.len();
        let before = self.shared.account.usage().queued();
        if before > 0 && before + len > self.limit {
            self.overloaded.cancel();
            return;
        }
        if !self.shared.account.queue(len) {
            return;
        }
        self.update(|pending| pending.frames.push_back(text.into()));
    }

    /// Asks the writer to send a Ping, ahead of the frames queued.
    fn ping(&self) {
        self.update(|pending| pending.ping = true);
    }

    /// Asks the writer to send a Close frame (if `close` is set) and finish; frames still queued are
    /// dropped. Only the first call counts.
    fn close(&mut self, close: Option<(u16, &'static str)>) {
        self.update(|pending| {
            pending.close.get_or_insert(close);
        });
    }

    fn update(&self, change: impl FnOnce(&mut Pending)) {
        change(
            &mut self
                .shared
                .pending
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        self.shared.wake.notify_one();
    }
}

impl Drop for Outbox {
    /// A session that goes without closing its outbox still ends its writer (without a Close frame).
    fn drop(&mut self) {
        self.close(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn queued_frames_go_out_whole_and_in_order_over_several_batches() {
        let (sink, mut written) = futures::channel::mpsc::unbounded::<Message>();
        let buffers =
            crate::buffers::Buffers::new(usize::MAX, Default::default(), Default::default());
        let (outbox, writer) =
            Outbox::start(sink, usize::MAX, CancellationToken::new(), buffers.open());
        // All queued before the writer first runs (the test's runtime has one thread), so the writer
        // finds more than three batches waiting.
        let count = WRITE_BATCH * 3 + 5;
        for i in 0..count {
            outbox.push(i.to_string());
        }
        for i in 0..count {
            match written.next().await {
                Some(Message::Text(text)) => assert_eq!(text.as_str(), i.to_string()),
                other => panic!("frame {i}: {other:?}"),
            }
        }
        assert_eq!(outbox.shared.account.usage().queued(), 0);
        drop(outbox);
        writer.await.unwrap();
        assert!(
            written.next().await.is_none(),
            "nothing more, and the sink closed"
        );
    }
}
