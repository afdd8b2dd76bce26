//! Relay sockets and the resources every worker shares: the relay port pools
//! (one per relay IP) and the allocation quotas.
//!
//! The shared state sits behind one mutex each. It is touched when an
//! allocation is created or deleted, never per packet, so the hot path stays
//! lock-free while a port freed on one worker is at once available to all.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mio::{Interest, Registry, Token};
use socket2::{Domain, Protocol, Socket, Type};
use tracing::{debug, warn};

use super::sys::sockopt;
use super::tcp_relay::{Handoffs, TcpRelays};
use super::worker::WorkerReport;
use crate::proto::allocation::RelayId;
use crate::proto::auth::StaticCredentials;
use crate::proto::port_pool::PortPool;
use crate::proto::server::{ConnectFailed, Driver, PortRequest, QuotaError, RelayError, RelayOpened, RelayRequest};
use crate::proto::tcp_relay::ConnectionId;

/// Ports tried when the one the pool offers is taken by another program.
const BIND_ATTEMPTS: usize = 16;

/// Limits on allocations and TCP connections, shared by all workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuotaLimits {
    /// Allocations per user; 0 for no limit.
    pub per_user: u32,
    /// Allocations in all; 0 for no limit.
    pub total: u32,
    /// TCP connections from one IP; 0 for no limit.
    pub tcp_per_ip: u32,
    /// TCP connections in all; 0 for no limit.
    pub tcp_total: u32,
}

/// State shared by every worker.
pub struct Shared {
    ports: (u16, u16),
    pools: Mutex<HashMap<IpAddr, PortPool>>,
    quotas: Mutex<Quotas>,
    connections: Mutex<Connections>,
    limits: QuotaLimits,
    /// RFC 6062 data connections on their way to the worker that owns them.
    pub handoffs: Handoffs,
    /// Each worker's counters as of its last tick, summed when metrics are
    /// scraped; a worker touches its own slot once a second.
    reports: Vec<Mutex<WorkerReport>>,
    /// Users and secrets of the latest reload (SIGHUP), and how many
    /// reloads there were: a worker compares the count once a loop turn.
    credentials: Mutex<Option<Arc<StaticCredentials>>>,
    credentials_generation: AtomicU64,
}

#[derive(Default)]
struct Connections {
    per_ip: HashMap<IpAddr, u32>,
    total: u32,
}

#[derive(Default)]
struct Quotas {
    per_user: HashMap<Box<str>, u32>,
    total: u32,
}

impl Shared {
    pub fn new(ports: (u16, u16), limits: QuotaLimits, workers: usize) -> Self {
        Self {
            ports,
            pools: Mutex::default(),
            quotas: Mutex::default(),
            connections: Mutex::default(),
            limits,
            handoffs: Handoffs::new(workers),
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

    /// Client TCP and TLS connections open now (data connections included).
    pub fn connections(&self) -> u32 {
        lock(&self.connections).total
    }

    /// Counts a new TCP connection from `ip`, unless it would pass a limit.
    pub fn admit_connection(&self, ip: IpAddr) -> bool {
        let mut connections = lock(&self.connections);
        let from_ip = connections.per_ip.get(&ip).copied().unwrap_or(0);
        if (self.limits.tcp_total != 0 && connections.total >= self.limits.tcp_total)
            || (self.limits.tcp_per_ip != 0 && from_ip >= self.limits.tcp_per_ip)
        {
            return false;
        }
        connections.per_ip.insert(ip, from_ip + 1);
        connections.total += 1;
        true
    }

    /// Forgets a connection [`Self::admit_connection`] counted.
    pub fn release_connection(&self, ip: IpAddr) {
        let mut connections = lock(&self.connections);
        connections.total = connections.total.saturating_sub(1);
        if let Some(count) = connections.per_ip.get_mut(&ip) {
            *count -= 1;
            if *count == 0 {
                connections.per_ip.remove(&ip);
            }
        }
    }

    /// Free ports of the pool of `ip`, for tests and the shutdown report.
    pub fn free_ports(&self, ip: IpAddr) -> Option<usize> {
        lock(&self.pools).get(&ip).map(PortPool::free_ports)
    }

    pub fn allocations(&self) -> u32 {
        lock(&self.quotas).total
    }

    pub fn expire_reservations(&self, now: Instant) {
        for pool in lock(&self.pools).values_mut() {
            pool.expire_reservations(now);
        }
    }

    fn take_port(&self, request: &RelayRequest, now: Instant) -> Result<(IpAddr, u16, Option<[u8; 8]>), RelayError> {
        let mut pools = lock(&self.pools);
        if let PortRequest::Reserved(token) = request.port {
            // The core asks once per family; a token only counts in its own.
            return pools
                .iter_mut()
                .filter(|(ip, _)| ip.is_ipv6() == request.ip.is_ipv6())
                .find_map(|(ip, pool)| pool.claim(&token, now).map(|port| (*ip, port, None)))
                .ok_or(RelayError::BadToken);
        }
        let pool = pools.entry(request.ip).or_insert_with(|| PortPool::new(self.ports.0, self.ports.1));
        match request.port {
            PortRequest::Even { reserve_next } => pool
                .allocate_even(reserve_next, now)
                .map(|(port, token)| (request.ip, port, token))
                .ok_or(RelayError::NoPorts),
            _ => pool.allocate().map(|port| (request.ip, port, None)).ok_or(RelayError::NoPorts),
        }
    }

    fn return_port(&self, addr: SocketAddr) {
        if let Some(pool) = lock(&self.pools).get_mut(&addr.ip()) {
            pool.release(addr.port());
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A worker that panicked while holding the lock left counts that are
    // still counts; carry on with them.
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// One allocation's relay socket.
pub struct RelaySocket {
    pub socket: mio::net::UdpSocket,
    pub addr: SocketAddr,
}

/// The [`Driver`] a worker hands to its server for one call.
pub struct WorkerDriver<'a> {
    pub registry: &'a Registry,
    pub relays: &'a mut Vec<Option<RelaySocket>>,
    pub tcp: &'a mut TcpRelays,
    pub shared: &'a Shared,
    pub token_base: usize,
    pub now: Instant,
}

impl Driver for WorkerDriver<'_> {
    fn open_relay(&mut self, relay: RelayId, request: &RelayRequest) -> Result<RelayOpened, RelayError> {
        let mut last_error = RelayError::NoPorts;
        for _ in 0..BIND_ATTEMPTS {
            let (ip, port, reservation) = self.shared.take_port(request, self.now)?;
            let addr = SocketAddr::new(ip, port);
            match bind_relay(addr, request.dont_fragment) {
                Ok(mut socket) => {
                    if let Err(e) =
                        self.registry.register(&mut socket, Token(self.token_base + relay.0), Interest::READABLE)
                    {
                        warn!(%addr, error = %e, "cannot register relay socket");
                        self.shared.return_port(addr);
                        return Err(RelayError::Unavailable);
                    }
                    if self.relays.len() <= relay.0 {
                        self.relays.resize_with(relay.0 + 1, || None);
                    }
                    self.relays[relay.0] = Some(RelaySocket { socket, addr });
                    return Ok(RelayOpened { addr, reservation });
                }
                Err(BindFailure::DontFragment) => {
                    self.shared.return_port(addr);
                    return Err(RelayError::DontFragmentUnsupported);
                }
                Err(BindFailure::Io(e)) if e.kind() == io::ErrorKind::AddrInUse => {
                    // Another program holds the port: send it to the back of
                    // the queue and try the next one.
                    debug!(%addr, "relay port in use elsewhere");
                    self.shared.return_port(addr);
                    if matches!(request.port, PortRequest::Reserved(_)) {
                        return Err(RelayError::BadToken);
                    }
                    last_error = RelayError::NoPorts;
                }
                Err(BindFailure::Io(e)) => {
                    warn!(%addr, error = %e, "cannot open relay socket");
                    self.shared.return_port(addr);
                    return Err(RelayError::Unavailable);
                }
            }
        }
        Err(last_error)
    }

    fn close_relay(&mut self, relay: RelayId) {
        if let Some(mut relay) = self.relays.get_mut(relay.0).and_then(Option::take) {
            let _ = self.registry.deregister(&mut relay.socket);
            self.shared.return_port(relay.addr);
        } else if let Some(addr) = self.tcp.close_listener(self.registry, relay) {
            self.shared.return_port(addr);
        }
    }

    fn open_tcp_relay(&mut self, relay: RelayId, request: &RelayRequest) -> Result<RelayOpened, RelayError> {
        for _ in 0..BIND_ATTEMPTS {
            let (ip, port, _) = self.shared.take_port(request, self.now)?;
            let addr = SocketAddr::new(ip, port);
            match self.tcp.open_listener(self.registry, relay, addr) {
                Ok(()) => return Ok(RelayOpened { addr, reservation: None }),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    // Another program listens there: back of the queue, next port.
                    debug!(%addr, "TCP relay port in use elsewhere");
                    self.shared.return_port(addr);
                }
                Err(e) => {
                    warn!(%addr, error = %e, "cannot open TCP relay socket");
                    self.shared.return_port(addr);
                    return Err(RelayError::Unavailable);
                }
            }
        }
        Err(RelayError::NoPorts)
    }

    fn connect_peer(&mut self, relay: RelayId, id: ConnectionId, peer: SocketAddr) -> Result<(), ConnectFailed> {
        self.tcp.connect(self.registry, relay, id, peer).map_err(|e| {
            debug!(%peer, error = %e, "TCP connection to peer failed at once");
            ConnectFailed
        })
    }

    fn close_peer(&mut self, id: ConnectionId) {
        if let Some(ip) = self.tcp.close(self.registry, id) {
            self.shared.release_connection(ip);
        }
    }

    fn acquire_quota(&mut self, user: &str) -> Result<(), QuotaError> {
        let limits = self.shared.limits;
        let mut quotas = lock(&self.shared.quotas);
        if limits.total != 0 && quotas.total >= limits.total {
            return Err(QuotaError::Total);
        }
        let count = quotas.per_user.get(user).copied().unwrap_or(0);
        if limits.per_user != 0 && count >= limits.per_user {
            return Err(QuotaError::User);
        }
        quotas.per_user.insert(user.into(), count + 1);
        quotas.total += 1;
        Ok(())
    }

    fn release_quota(&mut self, user: &str) {
        let mut quotas = lock(&self.shared.quotas);
        quotas.total = quotas.total.saturating_sub(1);
        if let Some(count) = quotas.per_user.get_mut(user) {
            *count -= 1;
            if *count == 0 {
                quotas.per_user.remove(user);
            }
        }
    }
}

enum BindFailure {
    DontFragment,
    Io(io::Error),
}

fn bind_relay(addr: SocketAddr, dont_fragment: bool) -> Result<mio::net::UdpSocket, BindFailure> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(BindFailure::Io)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true).map_err(BindFailure::Io)?;
    }
    socket.set_nonblocking(true).map_err(BindFailure::Io)?;
    // ICMP errors reach the client where the kernel reports them; relaying
    // works without them.
    if let Err(e) = sockopt::enable_recv_err(socket.as_raw_fd(), addr.is_ipv6()) {
        debug!(%addr, error = %e, "no ICMP errors for this relay socket");
    }
    if dont_fragment {
        sockopt::set_dont_fragment(socket.as_raw_fd(), addr.is_ipv6()).map_err(|_| BindFailure::DontFragment)?;
    }
    socket.bind(&addr.into()).map_err(BindFailure::Io)?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}
