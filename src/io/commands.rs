//! Commands from the control plane (the admin API) to the workers: a small
//! bounded queue per worker and its waker. A worker takes its commands
//! when woken, between two loop turns, and answers each through a oneshot
//! channel the asker awaits; so a worker never waits on the control plane,
//! and the control plane never touches a worker's state.
//!
//! The queue is bounded: an admin client in a loop meets [`SendError::Busy`]
//! (a 503) rather than a growing backlog in front of the relay.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use mio::Waker;
use tokio::sync::oneshot;

use crate::proto::server::{AllocationListing, AllocationQuery, RevokeError};

/// Commands waiting for one worker, at most.
pub const QUEUE_LIMIT: usize = 64;

/// What the control plane asks of one worker's core.
#[derive(Debug)]
pub enum Command {
    /// A page of the worker's allocations.
    Allocations { query: AllocationQuery, reply: oneshot::Sender<AllocationListing> },
    /// End the allocation of this serial, if the worker holds it.
    End { serial: u64, reply: oneshot::Sender<bool> },
    /// Revoke a user or REST username; answers how many allocations ended.
    Revoke { name: String, reply: oneshot::Sender<Result<usize, RevokeError>> },
    /// Let a revoked name in again; answers whether it was revoked.
    Unrevoke { name: String, reply: oneshot::Sender<bool> },
}

/// Why a command was not queued.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    #[error("worker {0} has {QUEUE_LIMIT} commands waiting already")]
    Busy(usize),
    #[error("there is no worker {0}")]
    NoWorker(usize),
}

/// Every worker's command queue.
pub struct Commands {
    inboxes: Vec<Mutex<Inbox>>,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Command>,
    waker: Option<Arc<Waker>>,
}

impl Commands {
    pub fn new(workers: usize) -> Self {
        Self { inboxes: (0..workers.max(1)).map(|_| Mutex::default()).collect() }
    }

    pub fn workers(&self) -> usize {
        self.inboxes.len()
    }

    /// Records how to wake `worker`.
    pub fn register(&self, worker: usize, waker: Arc<Waker>) {
        if let Some(inbox) = self.inboxes.get(worker) {
            lock(inbox).waker = Some(waker);
        }
    }

    /// Queues `command` for `worker` and wakes it.
    pub fn send(&self, worker: usize, command: Command) -> Result<(), SendError> {
        let inbox = self.inboxes.get(worker).ok_or(SendError::NoWorker(worker))?;
        let mut inbox = lock(inbox);
        if inbox.queue.len() >= QUEUE_LIMIT {
            return Err(SendError::Busy(worker));
        }
        inbox.queue.push_back(command);
        if let Some(waker) = &inbox.waker {
            // A failed wake leaves the command for the worker's next turn.
            let _ = waker.wake();
        }
        Ok(())
    }

    /// Takes what waits for `worker`, oldest first.
    pub fn take(&self, worker: usize) -> VecDeque<Command> {
        self.inboxes.get(worker).map(|inbox| std::mem::take(&mut lock(inbox).queue)).unwrap_or_default()
    }
}

fn lock(inbox: &Mutex<Inbox>) -> MutexGuard<'_, Inbox> {
    // A panic while holding the lock leaves a queue that is still a queue.
    inbox.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_is_bounded_and_taken_in_order() {
        let commands = Commands::new(2);
        let mut replies = Vec::new();
        for serial in 0..QUEUE_LIMIT as u64 {
            let (reply, answer) = oneshot::channel();
            replies.push(answer);
            commands.send(1, Command::End { serial, reply }).expect("room left");
        }
        let (reply, _) = oneshot::channel();
        assert_eq!(commands.send(1, Command::End { serial: 99, reply }).err(), Some(SendError::Busy(1)));
        let (reply, _) = oneshot::channel();
        assert_eq!(commands.send(2, Command::End { serial: 0, reply }).err(), Some(SendError::NoWorker(2)));
        let taken: Vec<u64> = commands
            .take(1)
            .into_iter()
            .map(|command| match command {
                Command::End { serial, .. } => serial,
                other => panic!("queued End only, took {other:?}"),
            })
            .collect();
        assert_eq!(taken, (0..QUEUE_LIMIT as u64).collect::<Vec<_>>());
        assert!(commands.take(1).is_empty() && commands.take(0).is_empty());
    }
}
