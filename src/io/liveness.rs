//! Whether every worker's loop still turns, for a watchdog (systemd's, driven
//! by `crate::serve`): a heartbeat per worker, bumped at the end of each loop
//! turn, and the worker's waker.
//!
//! An idle worker sleeps until its next deadline, possibly forever, so a
//! heartbeat that stands still proves nothing by itself. A probe therefore
//! wakes every worker and, at the next probe, checks that each heartbeat
//! moved: a worker that did not complete one loop turn in between is wedged
//! (a loop, a lock, a syscall that never returns). A probe costs one atomic
//! read and one wake-up per worker, whatever the allocations; a loop turn
//! costs one atomic add on a cache line of the worker's own.
//!
//! It also holds the test-only hook that stops a worker on purpose
//! ([`Liveness::hold`]), so the tests can show that a wedged worker stops the
//! watchdog's pings.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use mio::Waker;
use tracing::warn;

use super::clock;
use super::shutdown::Shutdown;

/// How often a held worker checks whether shutdown was asked for, so a
/// test's SIGTERM still ends tern.
const HOLD_STEP: Duration = Duration::from_millis(50);

/// A worker's heartbeat on a cache line of its own, so one worker's loop
/// turns never invalidate another's cache: the turns it completed, and when
/// the last one ended (milliseconds since [`Liveness::new`]).
#[repr(align(128))]
#[derive(Default)]
struct Heartbeat {
    turns: AtomicU64,
    last_turn_ms: AtomicU64,
}

/// Every worker's heartbeat and waker.
pub struct Liveness {
    started: Instant,
    heartbeats: Vec<Heartbeat>,
    wakers: Mutex<Vec<Option<Arc<Waker>>>>,
    /// Test only: the worker to hold still, plus one (0: none), and from when.
    held: AtomicUsize,
    hold_from: OnceLock<Instant>,
}

impl Liveness {
    pub fn new(workers: usize) -> Self {
        let workers = workers.max(1);
        Self {
            started: clock::now(),
            heartbeats: (0..workers).map(|_| Heartbeat::default()).collect(),
            wakers: Mutex::new(vec![None; workers]),
            held: AtomicUsize::new(0),
            hold_from: OnceLock::new(),
        }
    }

    pub fn workers(&self) -> usize {
        self.heartbeats.len()
    }

    /// Keeps `worker`'s waker, for probes.
    pub fn register(&self, worker: usize, waker: Arc<Waker>) {
        if let Some(slot) = self.lock_wakers().get_mut(worker) {
            *slot = Some(waker);
        }
    }

    /// `worker` finished a loop turn begun at `now`. A worker held by the
    /// test hook stops here, without a heartbeat, until shutdown.
    pub fn turn_ended(&self, worker: usize, now: Instant, shutdown: &Shutdown) {
        if self.held.load(Ordering::Relaxed) == worker + 1
            && self.hold_from.get().is_some_and(|&from| clock::now() >= from)
        {
            warn!("held still by the test hook TERN_TEST_HOLD_WORKER: this worker's loop stops until shutdown");
            while !shutdown.is_requested() {
                std::thread::sleep(HOLD_STEP);
            }
            return;
        }
        if let Some(heartbeat) = self.heartbeats.get(worker) {
            heartbeat.turns.fetch_add(1, Ordering::Relaxed);
            let since_start = now.saturating_duration_since(self.started).as_millis();
            heartbeat.last_turn_ms.store(u64::try_from(since_start).unwrap_or(u64::MAX), Ordering::Relaxed);
        }
    }

    /// Every worker's heartbeat now.
    pub fn heartbeats(&self) -> Vec<u64> {
        self.heartbeats.iter().map(|heartbeat| heartbeat.turns.load(Ordering::Relaxed)).collect()
    }

    /// How long ago each worker last finished a loop turn, as of `now`; an
    /// idle worker sleeps, so this alone says nothing of its health.
    pub fn since_last_turns(&self, now: Instant) -> Vec<Duration> {
        let elapsed = now.saturating_duration_since(self.started);
        self.heartbeats
            .iter()
            .map(|heartbeat| {
                let at = Duration::from_millis(heartbeat.last_turn_ms.load(Ordering::Relaxed));
                elapsed.saturating_sub(at)
            })
            .collect()
    }

    /// Whether every worker has finished a loop turn since `before` was read
    /// (with `before` all zeros: since it started), or else the first one
    /// that has not.
    pub fn turned_since(&self, before: &[u64]) -> Result<(), usize> {
        match self.heartbeats().iter().zip(before).position(|(now, then)| now == then) {
            Some(worker) => Err(worker),
            None => Ok(()),
        }
    }

    /// Wakes every worker, so each turns its loop once even when idle.
    pub fn wake_all(&self) {
        for waker in self.lock_wakers().iter().flatten() {
            // A worker that already exited has nothing left to wake.
            let _ = waker.wake();
        }
    }

    /// TEST ONLY: holds `worker` still from `from` on, as if it were wedged:
    /// at the end of its first loop turn after `from` it sleeps until
    /// shutdown, and its heartbeat stops. Only `crate::serve` calls this,
    /// when the environment variable `TERN_TEST_HOLD_WORKER` is set, which
    /// only the tests do.
    pub fn hold(&self, worker: usize, from: Instant) {
        if self.hold_from.set(from).is_ok() {
            self.held.store(worker + 1, Ordering::Relaxed);
        }
    }

    fn lock_wakers(&self) -> std::sync::MutexGuard<'_, Vec<Option<Arc<Waker>>>> {
        // A panic while holding the lock leaves a list of wakers that is
        // still a list of wakers.
        self.wakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
