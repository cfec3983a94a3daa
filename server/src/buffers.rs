//! The budget of all sockets' outgoing buffers together (--max-buffered-bytes). Each socket has its own
//! cap (--socket-buffer-bytes), but many sockets that never read, each resuming a large result, would
//! still hold the product of the two. Past the budget, the socket that holds the most and has waited
//! longest for its client to read is closed, until what the others hold fits; its jobs stay resumable.
//!
//! A socket holds the frames queued for it and its WebSocket write buffer, which keeps the size of the
//! largest write it ever made allocated for as long as the socket is open (tungstenite's buffer only
//! grows). Both count until the socket's memory is freed, when its [`Account`] is dropped.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

/// The budget and the sockets it covers.
pub struct Buffers {
    limit: usize,
    /// Bytes all sockets hold; also the `herald_buffered_bytes` gauge.
    held: Gauge,
    /// Sockets closed to keep within the budget; the `herald_sockets_closed_buffers` counter.
    evictions: Counter,
    sockets: Mutex<HashMap<u64, Arc<Usage>>>,
    next: AtomicU64,
    epoch: Instant,
}

/// What one socket holds, shared by its session, its writer and the budget.
#[derive(Debug, Default)]
pub struct Usage {
    /// Bytes queued or being written.
    queued: AtomicUsize,
    /// Bytes the socket's write buffer keeps allocated: its largest write so far.
    retained: AtomicUsize,
    /// Since when (ms after the budget's epoch) the socket's client has made the writer wait: when
    /// its queue last went from empty to not, or a write last completed.
    waiting_since: AtomicU64,
    /// Cancelled when the budget closes this socket.
    evicted: CancellationToken,
}

impl Usage {
    /// Bytes queued or being written for this socket.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Cancelled when the budget closes this socket: its session and writer stop at once.
    pub fn evicted(&self) -> &CancellationToken {
        &self.evicted
    }

    fn held(&self) -> usize {
        self.queued() + self.retained.load(Ordering::Relaxed)
    }
}

/// One socket's place in the budget; when dropped (the socket's memory is freed), what it held is
/// given back.
pub struct Account {
    buffers: Arc<Buffers>,
    id: u64,
    usage: Arc<Usage>,
}

impl Buffers {
    /// A budget of `limit` bytes, reporting to `held` and `evictions`.
    pub fn new(limit: usize, held: Gauge, evictions: Counter) -> Arc<Self> {
        Arc::new(Self {
            limit,
            held,
            evictions,
            sockets: Mutex::default(),
            next: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// The budget, in bytes.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes all sockets hold now.
    pub fn held(&self) -> usize {
        usize::try_from(self.held.get()).unwrap_or(0)
    }

    /// Opens the account of a new socket.
    pub fn open(self: &Arc<Self>) -> Account {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let usage = Arc::new(Usage::default());
        self.lock().insert(id, usage.clone());
        Account {
            buffers: self.clone(),
            id,
            usage,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Usage>>> {
        self.sockets.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn add(&self, bytes: usize) -> usize {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        (self.held.inc_by(bytes).saturating_add(bytes)).max(0) as usize
    }

    fn remove(&self, bytes: usize) {
        self.held.dec_by(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    /// Brings the sockets back within the budget after `pusher` queued more: closes sockets, the one
    /// that holds the most and has waited longest first, until those left fit. Sockets already closed
    /// by the budget count as gone (their memory goes as soon as their tasks see it). Returns whether
    /// `pusher` itself was closed.
    fn relieve(&self, pusher: u64) -> bool {
        let sockets = self.lock();
        let now = self.now_ms();
        let mut live = 0usize;
        let mut candidates = Vec::new();
        for (&id, usage) in sockets.iter() {
            if usage.evicted.is_cancelled() {
                continue;
            }
            let held = usage.held();
            live += held;
            let waited = now.saturating_sub(usage.waiting_since.load(Ordering::Relaxed)) + 1;
            // A socket with nothing to write holds only its write buffer: close one that keeps its
            // client waiting first.
            let waiting = usage.queued() > 0;
            candidates.push(((waiting, held as u128 * u128::from(waited)), id, held));
        }
        candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.0));
        let mut closed_pusher = false;
        for (_, id, held) in candidates {
            if live <= self.limit {
                break;
            }
            sockets[&id].evicted.cancel();
            self.evictions.inc();
            live -= held;
            closed_pusher |= id == pusher;
        }
        closed_pusher
    }
}

impl Account {
    /// What this socket holds.
    pub fn usage(&self) -> &Arc<Usage> {
        &self.usage
    }

    /// Counts `len` more bytes queued for this socket. Past the budget, sockets are closed until the
    /// others fit; `false` if that closed this one (the bytes are then not counted).
    pub fn queue(&self, len: usize) -> bool {
        let before = self.usage.queued.fetch_add(len, Ordering::Relaxed);
        if before == 0 {
            self.usage
                .waiting_since
                .store(self.buffers.now_ms(), Ordering::Relaxed);
        }
        if self.buffers.add(len) <= self.buffers.limit || !self.buffers.relieve(self.id) {
            return true;
        }
        self.unqueue(len);
        false
    }

    /// Gives back `len` bytes queued but never written (a frame refused after all).
    pub fn unqueue(&self, len: usize) {
        self.usage.queued.fetch_sub(len, Ordering::Relaxed);
        self.buffers.remove(len);
    }

    /// Records a completed write of `len` queued bytes: they leave the queue, and the write buffer
    /// keeps `len` allocated if that is more than it did.
    pub fn written(&self, len: usize) {
        self.usage
            .waiting_since
            .store(self.buffers.now_ms(), Ordering::Relaxed);
        let retained = self.usage.retained.fetch_max(len, Ordering::Relaxed);
        self.usage.queued.fetch_sub(len, Ordering::Relaxed);
        // The written bytes move from the queue to the write buffer, up to its new size.
        let kept = len.saturating_sub(retained);
        self.buffers.remove(len - kept);
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        self.buffers.lock().remove(&self.id);
        self.buffers.remove(self.usage.held());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(limit: usize) -> Arc<Buffers> {
        Buffers::new(limit, Gauge::default(), Counter::default())
    }

    #[test]
    fn within_the_budget_nothing_is_closed() {
        let buffers = budget(1500);
        let a = buffers.open();
        let b = buffers.open();
        assert!(a.queue(400));
        assert!(b.queue(600));
        assert_eq!(buffers.held(), 1000);
        a.written(400);
        assert_eq!(buffers.held(), 1000, "the write buffer keeps its size");
        assert!(a.queue(300));
        assert_eq!(
            buffers.held(),
            1300,
            "a frame queued and the buffer it will go through"
        );
        a.written(300);
        assert_eq!(buffers.held(), 1000, "a smaller write reuses the buffer");
        drop(a);
        assert_eq!(buffers.held(), 600);
        drop(b);
        assert_eq!(buffers.held(), 0);
        assert_eq!(buffers.lock().len(), 0);
    }

    #[test]
    fn past_the_budget_the_longest_waiting_biggest_holder_goes() {
        let buffers = budget(1000);
        let old = buffers.open();
        assert!(old.queue(500));
        std::thread::sleep(std::time::Duration::from_millis(20));
        let idle = buffers.open();
        assert!(idle.queue(200));
        idle.written(200);
        let fresh = buffers.open();
        assert!(fresh.queue(400), "another socket is closed instead");
        assert!(old.usage().evicted().is_cancelled());
        assert!(!idle.usage().evicted().is_cancelled());
        assert!(!fresh.usage().evicted().is_cancelled());
        assert_eq!(buffers.evictions.get(), 1);
        // A socket that alone would hold more than the rest is closed itself.
        assert!(!fresh.queue(900));
        assert!(fresh.usage().evicted().is_cancelled());
        assert_eq!(
            fresh.usage().queued(),
            400,
            "the refused bytes are not counted"
        );
        drop((old, fresh));
        assert_eq!(buffers.held(), 200);
    }
}
