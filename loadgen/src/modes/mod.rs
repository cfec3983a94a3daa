//! The kinds of run, and what they share: the run's deadline and a pool of job numbers.

pub mod cancel;
pub mod compare;
pub mod connections;
pub mod paced;
pub mod poll;
pub mod push;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use crate::sys::SysError;
use crate::ws::ConnectError;

/// Longest wait for one socket or request to open before it counts as failed.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// What every run gets: when it must stop, and whether to stay quiet on stderr.
#[derive(Debug, Clone, Copy)]
pub struct Ctx {
    /// End of the run: measuring stops here and what was measured is reported.
    pub deadline: Instant,
    /// No progress bar, no notes on stderr.
    pub quiet: bool,
}

impl Ctx {
    /// `limit`, or less if the deadline comes first.
    pub fn bounded(&self, limit: Duration) -> Duration {
        limit.min(self.deadline.saturating_duration_since(Instant::now()))
    }

    /// Prints a note on stderr unless quiet.
    pub fn note(&self, text: &str) {
        if !self.quiet {
            eprintln!("note: {text}");
        }
    }
}

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Not one WebSocket could be opened.
    #[error("cannot open a WebSocket to {url}: {error}")]
    Connect {
        /// The WebSocket URL.
        url: String,
        /// Why (in the message: connection errors print their own cause).
        error: ConnectError,
    },
    /// The HTTP client could not be built.
    #[error("cannot set up the HTTP client")]
    Http(#[from] reqwest::Error),
    /// A system limit or /proc reading that the run needs.
    #[error(transparent)]
    Sys(#[from] SysError),
}

/// Job numbers handed out to whichever socket or worker is free, so that fast ones take more and the total
/// is exact. Numbers below `warmup` are run but not measured.
#[derive(Debug)]
pub struct JobPool {
    next: AtomicU64,
    total: u64,
    warmup: u64,
}

impl JobPool {
    /// `warmup` unmeasured jobs followed by `measured` ones.
    pub fn new(measured: u64, warmup: u64) -> Self {
        Self {
            next: AtomicU64::new(0),
            total: measured + warmup,
            warmup,
        }
    }

    /// The next job number, or `None` when all have been handed out.
    pub fn claim(&self) -> Option<u64> {
        // Overshooting past `total` is harmless: every caller past it just hears "none left".
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        (seq < self.total).then_some(seq)
    }

    /// Whether job `seq` counts in the measurements.
    pub fn measured(&self, seq: u64) -> bool {
        seq >= self.warmup
    }

    /// Jobs in all, warm-up included.
    pub fn total(&self) -> u64 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_hands_out_each_number_once() {
        let pool = JobPool::new(3, 2);
        let got: Vec<_> = std::iter::from_fn(|| pool.claim()).collect();
        assert_eq!(got, [0, 1, 2, 3, 4]);
        assert_eq!(pool.claim(), None);
        assert!(!pool.measured(1) && pool.measured(2));
        assert_eq!(pool.total(), 5);
    }
}
