//! Finding dead peers: a WebSocket that stays silent for the ping interval is pinged, and one that
//! sends nothing back within the ping timeout is given up on. A peer that vanished without a FIN (a
//! phone that lost its network, a NAT that dropped its mapping) would otherwise hold its socket and
//! session for ever.

use std::pin::Pin;
use std::time::Duration;

use tokio::time::{sleep, Instant, Sleep};

/// What the session must do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The peer has been silent for the interval: send it a Ping.
    Ping,
    /// The peer sent nothing within the timeout after a Ping: close the socket.
    Dead,
}

/// When a session last heard from its peer, and whether it waits for an answer to a ping.
pub struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    last_heard: Instant,
    /// A ping is out, and nothing has come back since.
    awaiting: bool,
    /// Boxed: a session holds it for its whole life, and an idle session's future stays small.
    timer: Pin<Box<Sleep>>,
}

impl Heartbeat {
    /// Starts counting silence now.
    pub fn new(interval: Duration, timeout: Duration) -> Self {
        Self {
            interval,
            timeout,
            last_heard: Instant::now(),
            awaiting: false,
            timer: Box::pin(sleep(interval)),
        }
    }

    /// The peer sent something (any frame: a Pong, a request, a Ping of its own): it is alive. Costs a
    /// clock read, not a timer update, so that a busy socket pays next to nothing.
    pub fn heard(&mut self) {
        self.last_heard = Instant::now();
        self.awaiting = false;
    }

    /// Waits until the peer must be pinged or given up on. Cancel-safe: a call dropped before it
    /// returns changes nothing, so it can be a branch of a `select!` loop.
    pub async fn due(&mut self) -> Beat {
        loop {
            self.timer.as_mut().await;
            if self.awaiting {
                return Beat::Dead;
            }
            let now = Instant::now();
            let quiet_until = self.last_heard + self.interval;
            if quiet_until > now {
                // Heard from since the timer was set: wait for the rest of the interval.
                self.timer.as_mut().reset(quiet_until);
                continue;
            }
            self.awaiting = true;
            self.timer.as_mut().reset(now + self.timeout);
            return Beat::Ping;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(20);
    const TIMEOUT: Duration = Duration::from_secs(10);

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_pinged_then_given_up_on() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(INTERVAL, TIMEOUT);
        assert_eq!(heartbeat.due().await, Beat::Ping);
        assert_eq!(start.elapsed(), INTERVAL);
        assert_eq!(heartbeat.due().await, Beat::Dead);
        assert_eq!(start.elapsed(), INTERVAL + TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn an_answer_to_the_ping_keeps_the_peer() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(INTERVAL, TIMEOUT);
        assert_eq!(heartbeat.due().await, Beat::Ping);
        tokio::time::advance(Duration::from_secs(3)).await;
        heartbeat.heard();
        // The next ping comes a whole interval after the answer.
        assert_eq!(heartbeat.due().await, Beat::Ping);
        assert_eq!(
            start.elapsed(),
            INTERVAL + Duration::from_secs(3) + INTERVAL
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_talking_peer_is_never_pinged() {
        let start = Instant::now();
        let mut heartbeat = Heartbeat::new(INTERVAL, TIMEOUT);
        for _ in 0..10 {
            tokio::time::advance(Duration::from_secs(15)).await;
            heartbeat.heard();
        }
        // Silent from now on: pinged one interval after the last frame.
        assert_eq!(heartbeat.due().await, Beat::Ping);
        assert_eq!(start.elapsed(), Duration::from_secs(150) + INTERVAL);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_wait_changes_nothing() {
        let mut heartbeat = Heartbeat::new(INTERVAL, TIMEOUT);
        let cut_short = tokio::time::timeout(Duration::from_secs(5), heartbeat.due()).await;
        assert!(cut_short.is_err());
        assert_eq!(heartbeat.due().await, Beat::Ping);
        let cut_short = tokio::time::timeout(Duration::from_secs(5), heartbeat.due()).await;
        assert!(cut_short.is_err());
        assert_eq!(heartbeat.due().await, Beat::Dead);
    }
}
