//! What the workers share: the accounts behind every core's [`Resources`]
//! (relay ports, quotas, connection counts), RFC 6062 data connections on
//! their way between workers, the counters each worker publishes for
//! metrics, the configuration of the latest reload with its generation,
//! each worker's heartbeat, and the control plane's commands.
//!
//! Each piece sits behind its own mutex and is touched per allocation, per
//! connection or once a second, never per packet, so the hot path stays
//! lock-free while a port freed on one worker is at once available to all.
//! The heartbeat is the exception: an atomic on a cache line of the worker's
//! own, bumped once a loop turn (see `liveness`).

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use super::commands::Commands;
use super::liveness::Liveness;
use super::report::WorkerReport;
use super::tcp_relay::Handoffs;
use super::{TlsSettings, clock};
use crate::proto::port_pool::ReservationToken;
use crate::proto::resources::{Accounts, ConnectionLimit, PortError, PortRequest, QuotaError, QuotaLimits, Resources};
use crate::proto::server::ServerConfig;

/// The generation of the configuration a server starts with; each reload
/// that applies brings the next.
pub const FIRST_GENERATION: u64 = 1;

/// One process's [`Accounts`], shared by every worker's core.
#[derive(Clone)]
pub struct SharedAccounts(Arc<Mutex<Accounts>>);

impl SharedAccounts {
    pub fn new(ports: (u16, u16), limits: QuotaLimits, seed: [u8; 32]) -> Self {
        Self(Arc::new(Mutex::new(Accounts::new(ports, limits, seed))))
    }

    /// The accounts as they stand, for gauges, tests and the shutdown report.
    pub fn lock(&self) -> MutexGuard<'_, Accounts> {
        lock(&self.0)
    }
}

impl Resources for SharedAccounts {
    fn take_port(
        &mut self,
        ip: IpAddr,
        port: PortRequest,
        now: Instant,
    ) -> Result<(SocketAddr, Option<ReservationToken>), PortError> {
        self.lock().take_port(ip, port, now)
    }

    fn return_port(&mut self, addr: SocketAddr) {
        self.lock().return_port(addr);
    }

    fn expire_reservations(&mut self, now: Instant) {
        self.lock().expire_reservations(now);
    }

    fn acquire_allocation(&mut self, quota_key: &str) -> Result<(), QuotaError> {
        self.lock().acquire_allocation(quota_key)
    }

    fn release_allocation(&mut self, quota_key: &str) {
        self.lock().release_allocation(quota_key);
    }

    fn admit_connection(&mut self, ip: IpAddr) -> Result<(), ConnectionLimit> {
        self.lock().admit_connection(ip)
    }

    fn release_connection(&mut self, ip: IpAddr) {
        self.lock().release_connection(ip);
    }
}

/// State shared by every worker.
pub struct Shared {
    pub accounts: SharedAccounts,
    /// RFC 6062 data connections on their way to the worker that owns them.
    pub handoffs: Handoffs,
    /// Each worker's heartbeat and waker, for the watchdog.
    pub liveness: Arc<Liveness>,
    /// What the control plane asks of each worker.
    pub commands: Commands,
    /// Each worker's counters as last published, summed when metrics are
    /// scraped; a worker touches its own slot at most once a second.
    reports: Vec<Mutex<WorkerReport>>,
    /// The configuration of the latest reload (SIGHUP), if there was one.
    config: Mutex<Option<Arc<Reconfiguration>>>,
    /// Its generation, which a worker compares with its own once a loop
    /// turn, without the lock.
    generation: AtomicU64,
    reloads: Mutex<ReloadStatus>,
}

/// What a reload hands every worker, whole: each takes it on its next loop
/// turn.
pub struct Reconfiguration {
    pub generation: u64,
    pub server: ServerConfig,
    /// The TLS limits (handshakes in progress, handshake timeout), when TLS
    /// is served.
    pub tls: Option<TlsSettings>,
}

/// Which configuration is in force and how the reloads went, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadStatus {
    /// [`FIRST_GENERATION`] at start, one more for each reload that applied.
    pub generation: u64,
    /// Reloads that changed nothing: the configuration did not load.
    pub failures: u64,
    /// Unix seconds of the last reload that applied (the start, before any).
    pub last_success: u64,
    /// Unix seconds of the last reload that failed; 0 before any.
    pub last_failure: u64,
}

impl Shared {
    pub fn new(accounts: SharedAccounts, workers: usize) -> Self {
        Self {
            accounts,
            handoffs: Handoffs::new(workers),
            liveness: Arc::new(Liveness::new(workers)),
            commands: Commands::new(workers),
            reports: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            config: Mutex::default(),
            generation: AtomicU64::new(FIRST_GENERATION),
            reloads: Mutex::new(ReloadStatus {
                generation: FIRST_GENERATION,
                last_success: clock::unix_secs(),
                ..ReloadStatus::default()
            }),
        }
    }

    /// Hands a reloaded configuration to every worker and wakes them, so an
    /// idle one takes it too; returns its generation.
    pub fn publish_config(&self, server: ServerConfig, tls: Option<TlsSettings>) -> u64 {
        let generation = {
            let mut config = lock(&self.config);
            let generation = self.generation.load(Ordering::Acquire) + 1;
            *config = Some(Arc::new(Reconfiguration { generation, server, tls }));
            self.generation.store(generation, Ordering::Release);
            generation
        };
        let mut status = lock(&self.reloads);
        status.generation = generation;
        status.last_success = clock::unix_secs();
        drop(status);
        self.liveness.wake_all();
        generation
    }

    /// Counts a reload that changed nothing.
    pub fn record_reload_failure(&self) -> ReloadStatus {
        let mut status = lock(&self.reloads);
        status.failures += 1;
        status.last_failure = clock::unix_secs();
        *status
    }

    /// The generation of the configuration workers should run.
    pub fn config_generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The configuration of the latest reload, if there was one.
    pub fn config(&self) -> Option<Arc<Reconfiguration>> {
        lock(&self.config).clone()
    }

    pub fn reload_status(&self) -> ReloadStatus {
        *lock(&self.reloads)
    }

    /// Records `worker`'s counters for the next scrape.
    pub fn publish(&self, worker: usize, report: WorkerReport) {
        if let Some(slot) = self.reports.get(worker) {
            *lock(slot) = report;
        }
    }

    /// Every worker's counters as last published, summed.
    pub fn reports(&self) -> WorkerReport {
        let mut total = WorkerReport::default();
        for slot in &self.reports {
            total.add(&lock(slot));
        }
        total
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker that panicked while holding the lock left counts that are
    // still counts; carry on with them.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}
