//! Commands from the control plane (the admin API) to the workers: a small
//! bounded queue per worker and its waker. A worker takes its commands
//! when woken, between two loop turns, and answers each through a oneshot
//! channel the asker awaits; so a worker never waits on the control plane,
//! and the control plane never touches a worker's state.
//!
//! The queue is bounded: an admin client in a loop meets [`SendError::Busy`]
//! (a 503) rather than a growing backlog in front of the relay.
//!
//! The store (`[store]`) has a lane of its own both ways, so an admin client
//! never crowds out an answer a request is waiting for: workers ask for
//! users through [`Commands::ask_store`], and the control plane's answers
//! and the store's changes come back as [`StoreUpdate`]s, with the realm's
//! REST secrets as a snapshot each worker takes whole.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use mio::Waker;
use tokio::sync::{mpsc, oneshot};

use crate::proto::lookup::StoreAnswer;
use crate::proto::server::{AllocationListing, AllocationQuery, MAX_PARKED, RevokeError};

/// Commands waiting for one worker, at most.
pub const QUEUE_LIMIT: usize = 64;
/// Store updates waiting for one worker, at most: an answer for each
/// request it can have parked, and as many changes. Past that the worker
/// is told that anything may have changed ([`StoreUpdate::Outdated`]).
pub const STORE_QUEUE_LIMIT: usize = 2 * MAX_PARKED;
/// Lookups on their way to the control plane, from all workers.
pub const LOOKUP_QUEUE_LIMIT: usize = 1024;

/// A worker asks the store for a user.
#[derive(Debug)]
pub struct Lookup {
    pub worker: usize,
    pub realm: Box<str>,
    pub name: Box<str>,
}

/// What the store said, for one worker's core.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StoreUpdate {
    /// The answer to a [`Lookup`]; `None`: the store could not answer.
    Looked { name: Box<str>, answer: Option<StoreAnswer> },
    /// A user changed in the store.
    Changed { name: Box<str>, answer: StoreAnswer },
    /// Anything may have changed.
    Outdated,
}

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
    /// Where workers' lookups go, once the control plane has a store.
    lookups: Mutex<Option<mpsc::Sender<Lookup>>>,
}

#[derive(Default)]
struct Inbox {
    queue: VecDeque<Command>,
    store: VecDeque<StoreUpdate>,
    /// A store update did not fit: [`StoreUpdate::Outdated`] follows.
    store_overflowed: bool,
    /// The realm's REST secrets in the store, when they changed.
    secrets: Option<Vec<Vec<u8>>>,
    waker: Option<Arc<Waker>>,
}

impl Inbox {
    fn wake(&self) {
        if let Some(waker) = &self.waker {
            // A failed wake leaves the work for the worker's next turn.
            let _ = waker.wake();
        }
    }
}

/// What the store sent one worker since it last looked.
#[derive(Debug, Default)]
pub struct FromStore {
    pub updates: VecDeque<StoreUpdate>,
    pub secrets: Option<Vec<Vec<u8>>>,
}

impl Commands {
    pub fn new(workers: usize) -> Self {
        Self { inboxes: (0..workers.max(1)).map(|_| Mutex::default()).collect(), lookups: Mutex::new(None) }
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
        inbox.wake();
        Ok(())
    }

    /// Takes what waits for `worker`, oldest first.
    pub fn take(&self, worker: usize) -> VecDeque<Command> {
        self.inboxes.get(worker).map(|inbox| std::mem::take(&mut lock(inbox).queue)).unwrap_or_default()
    }

    /// Sends the workers' lookups to `lookups` from now on.
    pub fn connect_store(&self, lookups: mpsc::Sender<Lookup>) {
        *lock(&self.lookups) = Some(lookups);
    }

    /// Queues a lookup for the control plane; `false` when there is no
    /// store or its queue is full, and so no answer will come.
    pub fn ask_store(&self, lookup: Lookup) -> bool {
        lock(&self.lookups).as_ref().is_some_and(|lookups| lookups.try_send(lookup).is_ok())
    }

    /// Queues `update` for `worker` and wakes it; when its queue is full,
    /// the worker will outdate everything it remembers instead.
    pub fn send_store(&self, worker: usize, update: StoreUpdate) {
        let Some(inbox) = self.inboxes.get(worker) else { return };
        let mut inbox = lock(inbox);
        if inbox.store.len() >= STORE_QUEUE_LIMIT {
            inbox.store_overflowed = true;
        } else {
            inbox.store.push_back(update);
        }
        inbox.wake();
    }

    /// Gives every worker the realm's REST secrets in the store.
    pub fn publish_secrets(&self, secrets: &[Vec<u8>]) {
        for inbox in &self.inboxes {
            let mut inbox = lock(inbox);
            inbox.secrets = Some(secrets.to_vec());
            inbox.wake();
        }
    }

    /// Takes what the store sent `worker`, oldest first.
    pub fn take_store(&self, worker: usize) -> FromStore {
        let Some(inbox) = self.inboxes.get(worker) else { return FromStore::default() };
        let mut inbox = lock(inbox);
        let mut updates = std::mem::take(&mut inbox.store);
        if std::mem::take(&mut inbox.store_overflowed) {
            // After what was queued, which is older than what was lost.
            updates.push_back(StoreUpdate::Outdated);
        }
        FromStore { updates, secrets: inbox.secrets.take() }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock leaves a queue that is still a queue.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
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
