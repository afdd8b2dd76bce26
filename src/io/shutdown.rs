//! Shutdown: one flag all workers watch, and a waker per worker so a blocked
//! event loop notices at once. SIGINT and SIGTERM trigger it from a signal
//! thread; a worker that fails triggers it too, so the process never runs on
//! with a dead worker.
//!
//! Draining is the gentle way out: a second flag, after which the workers
//! take no new allocation but serve the ones they have (see
//! `Server::start_draining`); `crate::serve` stops the process once none is left.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::{Handle, Signals};
use tracing::info;

/// A cloneable handle to the process-wide shutdown signal.
#[derive(Clone)]
pub struct Shutdown {
    requested: Arc<AtomicBool>,
    draining: Arc<AtomicBool>,
    wakers: Arc<std::sync::Mutex<Vec<Arc<mio::Waker>>>>,
}

impl Shutdown {
    pub fn new() -> Self {
        Self { requested: Arc::default(), draining: Arc::default(), wakers: Arc::default() }
    }

    /// Registers a worker's waker; if shutdown was already requested, the
    /// worker is woken at once.
    pub fn register(&self, waker: Arc<mio::Waker>) {
        self.wakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(waker.clone());
        if self.is_requested() {
            let _ = waker.wake();
        }
    }

    pub fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Acquire)
    }

    pub fn trigger(&self) {
        self.requested.store(true, Ordering::Release);
        self.wake_all();
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Asks every worker to stop taking new allocations.
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.wake_all();
    }

    fn wake_all(&self) {
        for waker in self.wakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).iter() {
            // A worker that already exited has nothing left to wake.
            let _ = waker.wake();
        }
    }

    /// Triggers shutdown on SIGINT or SIGTERM. The returned handle stops the
    /// signal thread.
    pub fn on_signals(&self) -> std::io::Result<Handle> {
        let mut signals = Signals::new([SIGINT, SIGTERM])?;
        let handle = signals.handle();
        let shutdown = self.clone();
        std::thread::Builder::new().name("tern-signals".into()).spawn(move || {
            if let Some(signal) = signals.forever().next() {
                info!(signal, "shutting down");
                shutdown.trigger();
            }
        })?;
        Ok(handle)
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}
