//! The embedded job queue's order: one lane per client (first in, first out within it), served in
//! turn, so that a client that queued a hundred jobs delays another's next job by at most one of
//! its own, not a hundred.
//!
//! The taker may pass over a lane whose next job it cannot start yet (a heavy job while every
//! compute slot is taken; see [`crate::memory::run_pool`]): the next lane in turn is served, and the
//! passed-over lane keeps its place, so light jobs never wait behind heavy ones for a slot they do
//! not need.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use herald_protocol::JobMessage;
use tokio::sync::Notify;

/// Why a job was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushError {
    /// The queue holds its capacity.
    Full,
    /// The queue was closed: nobody takes jobs any more.
    Closed,
}

#[derive(Default)]
struct Lanes {
    /// Each client's jobs, oldest first (jobs without a client share the lane "").
    lanes: HashMap<String, VecDeque<JobMessage>>,
    /// Clients with jobs, in the order their turns come.
    turns: VecDeque<String>,
    /// Jobs queued, all lanes together.
    len: usize,
    closed: bool,
}

/// A bounded queue of jobs served round-robin between clients.
pub struct FairQueue {
    lanes: Mutex<Lanes>,
    capacity: usize,
    /// Woken by every push (and the close): the taker looks again.
    pushed: Notify,
}

impl FairQueue {
    /// An empty queue holding at most `capacity` jobs.
    pub fn new(capacity: usize) -> Self {
        Self {
            lanes: Mutex::default(),
            capacity: capacity.max(1),
            pushed: Notify::new(),
        }
    }

    fn lanes(&self) -> std::sync::MutexGuard<'_, Lanes> {
        self.lanes.lock().expect("queue never poisoned")
    }

    /// Queues `job` at the end of its client's lane; `force` ignores the capacity (a job put back
    /// must not be lost).
    pub fn push(&self, job: JobMessage, force: bool) -> Result<(), PushError> {
        let mut lanes = self.lanes();
        if lanes.closed {
            return Err(PushError::Closed);
        }
        if !force && lanes.len >= self.capacity {
            return Err(PushError::Full);
        }
        let client = job.client.clone().unwrap_or_default();
        let lane = lanes.lanes.entry(client.clone()).or_default();
        let first = lane.is_empty();
        lane.push_back(job);
        if first {
            lanes.turns.push_back(client);
        }
        lanes.len += 1;
        drop(lanes);
        self.pushed.notify_one();
        Ok(())
    }

    /// Takes the next job whose turn it is among those `startable` accepts: the lanes are looked at
    /// in turn, and the one served goes to the back of the turns.
    pub fn pop(&self, startable: impl Fn(&JobMessage) -> bool) -> Option<JobMessage> {
        let mut lanes = self.lanes();
        let position = lanes
            .turns
            .iter()
            .position(|client| lanes.lanes[client].front().is_some_and(&startable))?;
        let client = lanes.turns.remove(position).expect("found");
        let lane = lanes.lanes.get_mut(&client).expect("a lane for every turn");
        let job = lane.pop_front().expect("not empty");
        if lane.is_empty() {
            lanes.lanes.remove(&client);
        } else {
            lanes.turns.push_back(client);
        }
        lanes.len -= 1;
        Some(job)
    }

    /// Waits for a job `startable` accepts ([`FairQueue::pop`]); `None` once the queue is closed
    /// and nothing startable is left. Call again after anything that changes what is startable.
    pub async fn take(&self, startable: impl Fn(&JobMessage) -> bool) -> Option<JobMessage> {
        loop {
            let pushed = self.pushed.notified();
            if let Some(job) = self.pop(&startable) {
                return Some(job);
            }
            if self.lanes().closed {
                return None;
            }
            pushed.await;
        }
    }

    /// Jobs queued.
    pub fn len(&self) -> usize {
        self.lanes().len
    }

    /// Whether no job is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Refuses every push from now on; the jobs already queued can still be taken.
    pub fn close(&self) {
        self.lanes().closed = true;
        self.pushed.notify_waiters();
        self.pushed.notify_one();
    }

    /// Whether the queue was closed.
    pub fn is_closed(&self) -> bool {
        self.lanes().closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::model::factorial_input;
    use herald_protocol::{JobId, FACTORIAL};

    fn job(client: &str, n: u64) -> JobMessage {
        JobMessage {
            id: JobId::new_v4(),
            model: FACTORIAL.into(),
            input: factorial_input(n),
            client: Some(client.into()),
        }
    }

    fn n(job: &JobMessage) -> u64 {
        herald_protocol::model::factorial_n(job.input.raw()).unwrap()
    }

    #[test]
    fn clients_take_turns_and_each_keeps_its_order() {
        let queue = FairQueue::new(100);
        for i in 0..5 {
            queue.push(job("ip:heavy", 1_000_000 + i), false).unwrap();
        }
        queue.push(job("ip:light", 10), false).unwrap();
        queue.push(job("ip:light", 11), false).unwrap();
        let order: Vec<u64> = std::iter::from_fn(|| queue.pop(|_| true))
            .map(|j| n(&j))
            .collect();
        assert_eq!(
            order,
            [1_000_000, 10, 1_000_001, 11, 1_000_002, 1_000_003, 1_000_004]
        );
        assert!(queue.is_empty());
    }

    #[test]
    fn a_lane_that_cannot_start_is_passed_over_and_keeps_its_turn() {
        let queue = FairQueue::new(100);
        queue.push(job("ip:heavy", 1_000_000), false).unwrap();
        queue.push(job("ip:light", 10), false).unwrap();
        let light = |j: &JobMessage| n(j) < 1000;
        assert_eq!(queue.pop(light).map(|j| n(&j)), Some(10));
        assert!(queue.pop(light).is_none());
        assert_eq!(queue.pop(|_| true).map(|j| n(&j)), Some(1_000_000));
    }

    #[test]
    fn a_full_queue_refuses_but_a_job_put_back_is_kept() {
        let queue = FairQueue::new(1);
        queue.push(job("a", 1), false).unwrap();
        assert_eq!(queue.push(job("b", 2), false), Err(PushError::Full));
        queue.push(job("b", 2), true).unwrap();
        assert_eq!(queue.len(), 2);
        queue.close();
        assert_eq!(queue.push(job("b", 3), true), Err(PushError::Closed));
        assert_eq!(queue.len(), 2, "queued jobs can still be taken");
    }
}
