//! Abuse limits per client (an identity, or an address without authentication): submits per second with
//! a burst, and WebSockets open at once. They hold per server instance.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::auth::ClientKey;

/// What a client refused for too many sockets is told to wait: a socket frees up when a job or a user
/// is done, which no clock predicts.
pub const SOCKET_RETRY_AFTER: Duration = Duration::from_secs(5);

/// The limits of this server instance.
pub struct Limits {
    submits: Option<DefaultKeyedRateLimiter<ClientKey>>,
    max_sockets: Option<NonZeroU32>,
    sockets: DashMap<ClientKey, u32>,
}

impl Limits {
    /// `submit_rate` submits per second on average with bursts of `submit_burst`, and `max_sockets`
    /// sockets at once, per client; 0 turns a limit off.
    pub fn new(submit_rate: u32, submit_burst: u32, max_sockets: u32) -> Self {
        let submits = NonZeroU32::new(submit_rate).map(|rate| {
            let burst = NonZeroU32::new(submit_burst).unwrap_or(NonZeroU32::MIN);
            RateLimiter::dashmap(Quota::per_second(rate).allow_burst(burst))
        });
        Self {
            submits,
            max_sockets: NonZeroU32::new(max_sockets),
            sockets: DashMap::new(),
        }
    }

    /// Takes one submit from `client`'s allowance, or says how long until there is one again.
    pub fn submit(&self, client: &ClientKey) -> Result<(), Duration> {
        let Some(limiter) = &self.submits else {
            return Ok(());
        };
        limiter
            .check_key(client)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }

    /// A slot for one more socket of `client`, held until the slot is dropped; `None` when the client
    /// already holds as many as it may.
    pub fn open_socket(self: &Arc<Self>, client: ClientKey) -> Option<SocketSlot> {
        if let Some(max) = self.max_sockets {
            let mut open = self.sockets.entry(client.clone()).or_insert(0);
            if *open >= max.get() {
                return None;
            }
            *open += 1;
        }
        Some(SocketSlot {
            limits: self.clone(),
            client,
        })
    }

    /// Forgets clients whose allowance is full again, so that a stream of passing addresses does not
    /// grow the table for ever. Call now and then.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.submits {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.sockets.shrink_to_fit();
    }
}

/// One open socket, counted against its client until dropped.
pub struct SocketSlot {
    limits: Arc<Limits>,
    client: ClientKey,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        if self.limits.max_sockets.is_some() {
            // Remove the entry at zero: closed sockets leave nothing behind.
            self.limits.sockets.remove_if_mut(&self.client, |_, open| {
                *open = open.saturating_sub(1);
                *open == 0
            });
        }
    }
}

/// Whole milliseconds to wait, at least 1 (a `retry_after_ms` of 0 would invite a spin).
pub fn retry_after_ms(wait: Duration) -> u64 {
    (wait.as_micros().div_ceil(1000) as u64).max(1)
}

/// Whole seconds to wait, at least 1, for `Retry-After`.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_millis().div_ceil(1000).max(1) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> ClientKey {
        ClientKey::Address([10, 0, 0, n].into())
    }

    #[test]
    fn submits_beyond_the_burst_wait() {
        let limits = Limits::new(1, 3, 0);
        for _ in 0..3 {
            limits.submit(&key(1)).unwrap();
        }
        let wait = limits.submit(&key(1)).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        limits
            .submit(&key(2))
            .expect("another client has its own allowance");
        let unlimited = Limits::new(0, 1, 0);
        for _ in 0..10_000 {
            unlimited.submit(&key(1)).unwrap();
        }
    }

    #[test]
    fn socket_slots_are_given_back_when_dropped() {
        let limits = Arc::new(Limits::new(0, 1, 2));
        let a = limits.open_socket(key(1)).unwrap();
        let _b = limits.open_socket(key(1)).unwrap();
        assert!(limits.open_socket(key(1)).is_none());
        let _other = limits.open_socket(key(2)).unwrap();
        drop(a);
        let _c = limits.open_socket(key(1)).expect("a slot came free");
        drop((_b, _c, _other));
        assert!(limits.sockets.is_empty(), "nothing left of closed sockets");
    }

    #[test]
    fn waits_round_up() {
        assert_eq!(retry_after_ms(Duration::from_micros(1)), 1);
        assert_eq!(retry_after_ms(Duration::from_micros(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
