//! The soaks' clients (tests/soak.rs, and tests/cluster.rs on the cluster): sockets that keep factorial
//! jobs in flight on any of the servers, reconnect and resume across faults, and count what they see,
//! so that a test can say at the end whether any accepted job was lost, answered twice or wrongly.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use herald_protocol::{ErrorCode, JobId, ServerMessage};
use num_bigint::BigUint;
use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Message;

/// What the clients saw, summed.
#[derive(Default)]
pub struct Tally {
    /// Jobs some client still waits for, with the client's number (for diagnosing a stall).
    pub waiting: Mutex<HashMap<JobId, usize>>,
    pub accepted: AtomicUsize,
    pub results: AtomicUsize,
    /// Results for a job the client already had one for.
    pub duplicated: AtomicUsize,
    /// Results that are not the job's n!, or for a job the client never submitted, and `accepted`
    /// or `status` that do not match what was sent.
    pub wrong: AtomicUsize,
    /// Submits answered `unavailable` or `busy`, and submitted again later.
    pub refused: AtomicUsize,
    /// Every `unavailable` answer (to submits and to resumes).
    pub unavailable: AtomicUsize,
    /// Submits answered `busy`.
    pub busy: AtomicUsize,
    /// Errors other than `unavailable` and `busy`, with their text.
    pub other_errors: Mutex<Vec<String>>,
    /// Submits sent on a socket lost before their answer: their IDs never reached the client.
    pub unanswered_submits: AtomicUsize,
    pub reconnects: AtomicUsize,
}

impl Tally {
    /// Panics unless every result came once, right, and no error but `unavailable` (and `busy`
    /// when `busy_allowed`) was heard.
    pub fn check(&self, busy_allowed: bool) {
        let lost = self.waiting.lock().unwrap().len();
        assert_eq!(lost, 0, "accepted jobs without a result");
        assert_eq!(
            self.duplicated.load(Ordering::Relaxed),
            0,
            "results delivered twice"
        );
        assert_eq!(self.wrong.load(Ordering::Relaxed), 0, "wrong answers");
        let other_errors = self.other_errors.lock().unwrap().clone();
        assert!(
            other_errors.is_empty(),
            "errors besides unavailable: {other_errors:?}"
        );
        if !busy_allowed {
            assert_eq!(self.busy.load(Ordering::Relaxed), 0, "busy answers");
        }
    }
}

/// A small deterministic random source (xorshift), so a run's choices repeat with its seed.
pub struct Xs(pub u64);

impl Xs {
    /// A number below `n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// n!, computed here (once per n) to check the servers' answers against.
fn reference(n: u64, cache: &Mutex<HashMap<u64, Arc<str>>>) -> Arc<str> {
    if let Some(hit) = cache.lock().unwrap().get(&n) {
        return hit.clone();
    }
    let value: Arc<str> = (1..=n)
        .fold(BigUint::from(1u32), |acc, k| acc * k)
        .to_string()
        .into();
    cache.lock().unwrap().insert(n, value.clone());
    value
}

/// What the clients share: the servers, the jobs left to submit, the counts and the reference
/// results.
#[derive(Clone)]
pub struct Shared {
    pub urls: Arc<Vec<String>>,
    pub budget: Arc<AtomicUsize>,
    pub tally: Arc<Tally>,
    cache: Arc<Mutex<HashMap<u64, Arc<str>>>>,
    /// Jobs each client keeps in flight.
    window: usize,
    /// The largest n submitted.
    max_n: u64,
}

impl Shared {
    /// `jobs` to submit to the servers at `urls`, `window` in flight per client, n up to `max_n`.
    pub fn new(urls: Vec<String>, jobs: usize, window: usize, max_n: u64) -> Self {
        Self {
            urls: Arc::new(urls),
            budget: Arc::new(AtomicUsize::new(jobs)),
            tally: Arc::new(Tally::default()),
            cache: Arc::new(Mutex::new(HashMap::new())),
            window,
            max_n,
        }
    }
}

/// One client (number `client_no`): keeps up to the window of jobs in flight on a server chosen at
/// random, reconnects when its socket drops or `drop_now` drops it (or a resume meets an outage),
/// resumes what it still waits for, and counts what it sees. Returns when the budget is spent and
/// every job it holds has its result.
pub async fn client(client_no: usize, seed: u64, shared: Shared, drop_now: Arc<Notify>) {
    let Shared {
        urls,
        budget,
        tally,
        cache,
        window,
        max_n,
    } = shared;
    let mut rng = Xs(seed);
    let mut pending: HashMap<JobId, u64> = HashMap::new();
    let mut finished: HashSet<JobId> = HashSet::new();
    loop {
        let url = &urls[rng.below(urls.len() as u64) as usize];
        let Ok((mut ws, _)) = tokio_tungstenite::connect_async(url.as_str()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tally.reconnects.fetch_add(1, Ordering::Relaxed);
        for id in pending.keys() {
            let frame = serde_json::json!({"type":"resume","id":id}).to_string();
            if ws.send(Message::text(frame)).await.is_err() {
                break;
            }
        }
        let mut submits_in_flight = 0usize;
        let mut retry_at = Instant::now();
        loop {
            if pending.len() + submits_in_flight < window && Instant::now() >= retry_at {
                let taken = budget
                    .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| b.checked_sub(1))
                    .is_ok();
                if taken {
                    let n = rng.below(max_n + 1);
                    let frame = serde_json::json!({"type":"submit","n":n,"ref":n.to_string()});
                    if ws.send(Message::text(frame.to_string())).await.is_err() {
                        budget.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                    submits_in_flight += 1;
                    continue;
                }
            }
            if pending.is_empty() && submits_in_flight == 0 && budget.load(Ordering::Relaxed) == 0 {
                let _ = ws.close(None).await;
                return;
            }
            let message = tokio::select! {
                _ = drop_now.notified() => break,
                _ = tokio::time::sleep(Duration::from_millis(20)) => continue,
                message = ws.next() => message,
            };
            let Some(Ok(Message::Text(text))) = message else {
                match message {
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => break,
                }
            };
            match serde_json::from_str::<ServerMessage>(&text).expect("valid server message") {
                ServerMessage::Accepted { id, n, tag, .. } => {
                    submits_in_flight -= 1;
                    let Some(n) = n.filter(|n| tag == Some(n.to_string())) else {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    pending.insert(id, n);
                    tally.waiting.lock().unwrap().insert(id, client_no);
                    tally.accepted.fetch_add(1, Ordering::Relaxed);
                }
                ServerMessage::Error(e) => {
                    match e.code {
                        ErrorCode::Unavailable => {
                            tally.unavailable.fetch_add(1, Ordering::Relaxed);
                        }
                        ErrorCode::Busy if e.tag.is_some() => {
                            tally.busy.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => tally.other_errors.lock().unwrap().push(format!("{e:?}")),
                    }
                    if e.tag.is_some() {
                        // A refused submit: try it again a little later.
                        submits_in_flight -= 1;
                        budget.fetch_add(1, Ordering::Relaxed);
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                        retry_at = Instant::now() + Duration::from_millis(100);
                    } else {
                        // A resume met the outage: ask again on a new socket.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        break;
                    }
                }
                ServerMessage::Status { id, .. } | ServerMessage::Progress { id, .. } => {
                    if !pending.contains_key(&id) {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                    }
                }
                ServerMessage::Result(result) => {
                    if finished.contains(&result.id) {
                        tally.duplicated.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let Some(n) = pending.remove(&result.id) else {
                        tally.wrong.fetch_add(1, Ordering::Relaxed);
                        continue;
                    };
                    match result.outcome.output_text() {
                        Some(output) if *output == *reference(n, &cache) => {}
                        _ => {
                            tally.wrong.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    finished.insert(result.id);
                    tally.waiting.lock().unwrap().remove(&result.id);
                    tally.results.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        tally
            .unanswered_submits
            .fetch_add(submits_in_flight, Ordering::Relaxed);
    }
}
