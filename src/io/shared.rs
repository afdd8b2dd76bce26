//! What the workers share: the accounts behind every core's [`Resources`]
//! (relay ports, quotas, connection counts), RFC 6062 data connections on
//! their way between workers, the counters each worker publishes for
//! metrics, reloaded credentials, and each worker's heartbeat.
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

use super::liveness::Liveness;
use super::report::WorkerReport;
use super::tcp_relay::Handoffs;
use crate::proto::auth::StaticCredentials;
use crate::proto::port_pool::ReservationToken;
use crate::proto::resources::{Accounts, ConnectionLimit, PortError, PortRequest, QuotaError, QuotaLimits, Resources};

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
    /// Each worker's counters as last published, summed when metrics are
    /// scraped; a worker touches its own slot at most once a second.
    reports: Vec<Mutex<WorkerReport>>,
    /// Users and secrets of the latest reload (SIGHUP), and how many
    /// reloads there were: a worker compares the count once a loop turn.
    credentials: Mutex<Option<Arc<StaticCredentials>>>,
    credentials_generation: AtomicU64,
}

impl Shared {
    pub fn new(accounts: SharedAccounts, workers: usize) -> Self {
        Self {
            accounts,
            handoffs: Handoffs::new(workers),
            liveness: Arc::new(Liveness::new(workers)),
            reports: (0..workers.max(1)).map(|_| Mutex::default()).collect(),
            credentials: Mutex::default(),
            credentials_generation: AtomicU64::new(0),
        }
    }

    /// Hands reloaded users and secrets to every worker.
    pub fn publish_credentials(&self, store: StaticCredentials) {
        *lock(&self.credentials) = Some(Arc::new(store));
        self.credentials_generation.fetch_add(1, Ordering::Release);
    }

    /// How many times credentials were reloaded.
    pub fn credentials_generation(&self) -> u64 {
        self.credentials_generation.load(Ordering::Acquire)
    }

    /// The credentials of the latest reload, if there was one.
    pub fn credentials(&self) -> Option<Arc<StaticCredentials>> {
        lock(&self.credentials).clone()
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
