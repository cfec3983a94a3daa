//! Abuse limits per client (an identity, or an address without authentication): submits per second with
//! a burst, WebSockets open at once, and connections from one address that have not upgraded to a
//! WebSocket (plain HTTP, and handshakes in progress). They hold per server instance.

use std::net::IpAddr;
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
    sockets: Arc<Counts>,
    connections: Arc<Counts>,
}

/// How many of something each client holds, with a cap.
struct Counts {
    max: Option<NonZeroU32>,
    held: DashMap<ClientKey, u32>,
}

impl Counts {
    fn new(max: u32) -> Arc<Self> {
        Arc::new(Self {
            max: NonZeroU32::new(max),
            held: DashMap::new(),
        })
    }

    /// One more for `client`, held until the slot is dropped; `None` when it holds the maximum.
    fn take(self: &Arc<Self>, client: ClientKey) -> Option<Slot> {
        if let Some(max) = self.max {
            let mut open = self.held.entry(client.clone()).or_insert(0);
            if *open >= max.get() {
                return None;
            }
            *open += 1;
        }
        Some(Slot {
            counts: self.clone(),
            client,
        })
    }
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
            sockets: Counts::new(max_sockets),
            connections: Counts::new(max_sockets),
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

    /// A slot for one more WebSocket of `client`, held until the slot is dropped; `None` when the
    /// client already holds as many as it may.
    pub fn open_socket(&self, client: ClientKey) -> Option<SocketSlot> {
        self.sockets.take(client)
    }

    /// A slot for one more connection from `peer` that has not upgraded to a WebSocket (the same cap
    /// as sockets: a client may hold that many of each), held until the slot is dropped; `None` when
    /// the address already holds as many as it may. Counted by address whatever the token, as it is
    /// taken before any request is read.
    pub fn open_connection(&self, peer: IpAddr) -> Option<ConnectionSlot> {
        self.connections.take(ClientKey::for_address(peer))
    }

    /// Forgets clients whose allowance is full again, so that a stream of passing addresses does not
    /// grow the table for ever. Call now and then.
    pub fn forget_idle(&self) {
        if let Some(limiter) = &self.submits {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.sockets.held.shrink_to_fit();
        self.connections.held.shrink_to_fit();
    }
}

/// One open socket or connection, counted against its client until dropped.
pub struct Slot {
    counts: Arc<Counts>,
    client: ClientKey,
}

/// One open WebSocket, counted against its client until dropped.
pub type SocketSlot = Slot;

/// One connection that has not upgraded, counted against its address until dropped.
pub type ConnectionSlot = Slot;

impl Drop for Slot {
    fn drop(&mut self) {
        if self.counts.max.is_some() {
            // Remove the entry at zero: closed sockets leave nothing behind.
            self.counts.held.remove_if_mut(&self.client, |_, open| {
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
        let limits = Limits::new(0, 1, 2);
        let a = limits.open_socket(key(1)).unwrap();
        let _b = limits.open_socket(key(1)).unwrap();
        assert!(limits.open_socket(key(1)).is_none());
        let _other = limits.open_socket(key(2)).unwrap();
        drop(a);
        let _c = limits.open_socket(key(1)).expect("a slot came free");
        drop((_b, _c, _other));
        assert!(
            limits.sockets.held.is_empty(),
            "nothing left of closed sockets"
        );
    }

    #[test]
    fn connections_are_counted_by_address_apart_from_sockets() {
        let limits = Limits::new(0, 1, 2);
        let peer: IpAddr = [10, 0, 0, 1].into();
        let a = limits.open_connection(peer).unwrap();
        let _b = limits.open_connection(peer).unwrap();
        assert!(limits.open_connection(peer).is_none());
        // An IPv6 client is counted by its /64.
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        let _c = limits.open_connection(v6).unwrap();
        let _d = limits
            .open_connection("2001:db8::2".parse().unwrap())
            .unwrap();
        assert!(limits
            .open_connection("2001:db8::3".parse().unwrap())
            .is_none());
        // Upgraded sockets have their own count.
        let _socket = limits.open_socket(key(1)).unwrap();
        drop(a);
        let _e = limits.open_connection(peer).expect("a slot came free");
        let unlimited = Limits::new(0, 1, 0);
        let held: Vec<_> = (0..100).map(|_| unlimited.open_connection(peer)).collect();
        assert!(held.iter().all(Option::is_some));
        assert!(
            unlimited.connections.held.is_empty(),
            "nothing counted without a cap"
        );
    }

    #[test]
    fn waits_round_up() {
        assert_eq!(retry_after_ms(Duration::from_micros(1)), 1);
        assert_eq!(retry_after_ms(Duration::from_micros(1500)), 2);
        assert_eq!(retry_after_secs(Duration::from_millis(10)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
    }
}
