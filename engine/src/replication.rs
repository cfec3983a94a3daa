//! Waiting for Redis replicas to hold writes (`--redis-replica-acks`), one WAIT for many writes and
//! never on the connection that carries the writes.
//!
//! Redis's WAIT blocks the connection it is sent on until the replicas acknowledge, and everything
//! pipelined behind it waits too: on the one multiplexed connection every operation of a process
//! shares, one WAIT per write made writes take turns, one replication round trip each (half the
//! throughput of no waiting, BENCHMARKS.md "High availability"). Here a write's caller, once Redis
//! answered the write, asks [`Replicas::hold_writes`]; one task gathers every caller that asked
//! meanwhile and answers them all with one round on a connection of its own to the same Redis: a
//! small write (the tick) and a WAIT for it. Replication is one ordered stream, and each caller's
//! write was applied before the tick was sent, so replicas that hold the tick hold those writes.

use std::time::Duration;

use redis::aio::ConnectionManager;
use tokio::sync::{mpsc, oneshot};

use crate::store::{StoreError, REPLICA_WAIT};

/// How long the tick outlives its round; only its replication matters, not its value.
const TICK_TTL: Duration = Duration::from_secs(60);

/// One caller's question: do `required` replicas hold what was written on connection generation
/// `generation` so far?
struct Ask {
    generation: u64,
    /// The waiting connection of that generation: to the Redis that took the write.
    manager: ConnectionManager,
    answer: oneshot::Sender<Result<(), String>>,
}

/// The asking side of the task that waits for replicas; one per store, shared by its clones. The task
/// ends when the last of these is dropped.
pub(crate) struct Waiter {
    asks: mpsc::UnboundedSender<Ask>,
}

impl Waiter {
    /// Starts the task that answers `required` replicas at a time, writing its tick under `tick`.
    /// Must be called within a Tokio runtime.
    pub(crate) fn start(tick: String, required: u32) -> Self {
        let (asks, received) = mpsc::unbounded_channel();
        tokio::spawn(answer(received, tick, required));
        Self { asks }
    }
}

/// What one write needs to be held by the replicas: the waiter and the connection of the write's own
/// generation.
pub(crate) struct Replicas<'a> {
    pub(crate) waiter: &'a Waiter,
    pub(crate) generation: u64,
    pub(crate) manager: ConnectionManager,
}

impl Replicas<'_> {
    /// Returns once the required replicas hold every write that Redis answered on this generation's
    /// connection before the call, or fails `unavailable` when they do not within [`REPLICA_WAIT`].
    pub(crate) async fn hold_writes(self) -> Result<(), StoreError> {
        let (answer, answered) = oneshot::channel();
        let ask = Ask {
            generation: self.generation,
            manager: self.manager,
            answer,
        };
        if self.waiter.asks.send(ask).is_err() {
            return Err(StoreError::Unavailable("the replica waiter stopped".into()));
        }
        match answered.await {
            Ok(outcome) => outcome.map_err(StoreError::Unavailable),
            Err(_) => Err(StoreError::Unavailable("the replica waiter stopped".into())),
        }
    }
}

/// The task: takes every question asked so far, answers them with one round per connection
/// generation among them (normally one), and goes again.
async fn answer(mut received: mpsc::UnboundedReceiver<Ask>, tick: String, required: u32) {
    while let Some(first) = received.recv().await {
        let mut asks = vec![first];
        while let Ok(ask) = received.try_recv() {
            asks.push(ask);
        }
        // A failover between a write and its round gives a new generation: a round on the new
        // primary says nothing of writes to the old one, so each generation gets its own.
        asks.sort_by_key(|ask| ask.generation);
        while !asks.is_empty() {
            let generation = asks[0].generation;
            let split = asks
                .iter()
                .position(|ask| ask.generation != generation)
                .unwrap_or(asks.len());
            let rest = asks.split_off(split);
            let outcome = round(asks[0].manager.clone(), &tick, required).await;
            for ask in asks {
                let _ = ask.answer.send(outcome.clone());
            }
            asks = rest;
        }
    }
}

/// One round: the tick, then WAIT for it.
async fn round(mut conn: ConnectionManager, tick: &str, required: u32) -> Result<(), String> {
    let mut pipe = redis::pipe();
    pipe.cmd("SET")
        .arg(tick)
        .arg(1)
        .arg("PX")
        .arg(TICK_TTL.as_millis() as u64)
        .ignore();
    pipe.cmd("WAIT")
        .arg(required)
        .arg(REPLICA_WAIT.as_millis() as u64);
    // WAIT answers within REPLICA_WAIT; the margin covers a Redis that does not answer at all.
    let waited = tokio::time::timeout(REPLICA_WAIT * 2, pipe.query_async::<(u32,)>(&mut conn));
    let (acked,) = match waited.await {
        Ok(answered) => answered.map_err(|e| e.to_string())?,
        Err(_) => return Err("redis did not answer WAIT in time".into()),
    };
    if acked >= required {
        return Ok(());
    }
    Err(format!(
        "only {acked} of {required} redis replicas acknowledged the write within {} ms",
        REPLICA_WAIT.as_millis()
    ))
}
