//! What allocations and connections cost the whole server, in the core's
//! terms: relay ports (a pool per relay IP, RFC 8656 §7.2), allocations per
//! user and in all (486 and 508), and client TCP/TLS connections per source
//! IP and in all.
//!
//! Every worker's core asks one [`Resources`] for these, so the limits hold
//! across the process; a fleet-wide store can implement the same trait
//! later. [`Accounts`] is the counting itself, with no lock: the IO layer
//! shares one behind a mutex (touched per allocation and per connection,
//! never per packet), and tests, benches and the fuzzer use the very same
//! rules.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::proto::port_pool::{PortPool, ReservationToken};

/// Limits on allocations and TCP connections, shared by all workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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

/// Which port an Allocate asks for (RFC 8656 §7.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortRequest {
    Any,
    /// EVEN-PORT; with `reserve_next` the next port is held for a later Allocate.
    Even {
        reserve_next: bool,
    },
    /// RESERVATION-TOKEN from an earlier EVEN-PORT.
    Reserved(ReservationToken),
}

/// Why no relay port was handed out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortError {
    /// Every port of the range is taken.
    Exhausted,
    /// The reservation token is unknown or expired.
    BadToken,
}

/// Why an allocation was refused a quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaError {
    /// The user has `limit` (`user_quota`) allocations.
    User { limit: u32 },
    /// The server has `total_quota` allocations.
    Total,
}

/// Why a client connection was not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionLimit {
    /// Its source IP has `limit` (`max_tcp_per_ip`) connections.
    PerIp { limit: u32 },
    /// The server has `limit` (`max_tcp_connections`) connections.
    Total { limit: u32 },
}

/// The costs the core counts against the limits of the whole server.
pub trait Resources: Send {
    /// A free port of `ip` (for a reservation: of the family of `ip`, at the
    /// address the reservation names), and the token of a port reserved
    /// along with it.
    fn take_port(
        &mut self,
        ip: IpAddr,
        port: PortRequest,
        now: Instant,
    ) -> Result<(SocketAddr, Option<ReservationToken>), PortError>;
    /// Gives a port back: its allocation ended, or binding it failed.
    fn return_port(&mut self, addr: SocketAddr);
    /// Frees reserved ports whose 30 seconds are over.
    fn expire_reservations(&mut self, now: Instant);
    /// Counts one more allocation under `quota_key`.
    fn acquire_allocation(&mut self, quota_key: &str) -> Result<(), QuotaError>;
    fn release_allocation(&mut self, quota_key: &str);
    /// Counts a new client TCP or TLS connection from `ip`, unless it would
    /// pass a limit.
    fn admit_connection(&mut self, ip: IpAddr) -> Result<(), ConnectionLimit>;
    fn release_connection(&mut self, ip: IpAddr);
}

/// The counts behind [`Resources`], for one process.
pub struct Accounts {
    ports: (u16, u16),
    limits: QuotaLimits,
    pools: HashMap<IpAddr, PortPool>,
    per_user: HashMap<Box<str>, u32>,
    allocations: u32,
    per_ip: HashMap<IpAddr, u32>,
    connections: u32,
    /// Shuffles new pools and draws reservation tokens; seeded, so a fuzz
    /// run replays.
    rng: StdRng,
}

impl Accounts {
    pub fn new(ports: (u16, u16), limits: QuotaLimits, seed: [u8; 32]) -> Self {
        Self {
            ports,
            limits,
            pools: HashMap::new(),
            per_user: HashMap::new(),
            allocations: 0,
            per_ip: HashMap::new(),
            connections: 0,
            rng: StdRng::from_seed(seed),
        }
    }

    pub fn limits(&self) -> QuotaLimits {
        self.limits
    }

    /// New limits for what is counted from now on; what is counted stays,
    /// even above them.
    pub fn set_limits(&mut self, limits: QuotaLimits) {
        self.limits = limits;
    }

    /// Allocations counted now, in all.
    pub fn allocations(&self) -> u32 {
        self.allocations
    }

    /// Allocations counted now under `quota_key`.
    pub fn allocations_of(&self, quota_key: &str) -> u32 {
        self.per_user.get(quota_key).copied().unwrap_or(0)
    }

    /// Every quota key with its count, for checks against the tables.
    pub fn per_user(&self) -> impl Iterator<Item = (&str, u32)> {
        self.per_user.iter().map(|(key, count)| (&**key, *count))
    }

    /// Client connections counted now (data connections included).
    pub fn connections(&self) -> u32 {
        self.connections
    }

    /// Connections counted now from `ip`.
    pub fn connections_from(&self, ip: IpAddr) -> u32 {
        self.per_ip.get(&ip).copied().unwrap_or(0)
    }

    /// Free ports of the pool of `ip`: the whole range before its first use.
    pub fn free_ports(&self, ip: IpAddr) -> usize {
        self.pools.get(&ip).map_or(usize::from(self.ports.1 - self.ports.0) + 1, PortPool::free_ports)
    }
}

impl Resources for Accounts {
    fn take_port(
        &mut self,
        ip: IpAddr,
        port: PortRequest,
        now: Instant,
    ) -> Result<(SocketAddr, Option<ReservationToken>), PortError> {
        if let PortRequest::Reserved(token) = port {
            // The core asks once per family; a token only counts in its own.
            return self
                .pools
                .iter_mut()
                .filter(|(pool_ip, _)| pool_ip.is_ipv6() == ip.is_ipv6())
                .find_map(|(pool_ip, pool)| pool.claim(&token, now).map(|port| (SocketAddr::new(*pool_ip, port), None)))
                .ok_or(PortError::BadToken);
        }
        let (min, max) = self.ports;
        let rng = &mut self.rng;
        let pool = self.pools.entry(ip).or_insert_with(|| PortPool::new(min, max, rng));
        match port {
            PortRequest::Even { reserve_next } => pool
                .allocate_even(reserve_next, now, &mut self.rng)
                .map(|(port, token)| (SocketAddr::new(ip, port), token))
                .ok_or(PortError::Exhausted),
            _ => pool.allocate().map(|port| (SocketAddr::new(ip, port), None)).ok_or(PortError::Exhausted),
        }
    }

    fn return_port(&mut self, addr: SocketAddr) {
        if let Some(pool) = self.pools.get_mut(&addr.ip()) {
            pool.release(addr.port());
        }
    }

    fn expire_reservations(&mut self, now: Instant) {
        for pool in self.pools.values_mut() {
            pool.expire_reservations(now);
        }
    }

    fn acquire_allocation(&mut self, quota_key: &str) -> Result<(), QuotaError> {
        if self.limits.total != 0 && self.allocations >= self.limits.total {
            return Err(QuotaError::Total);
        }
        let count = self.allocations_of(quota_key);
        if self.limits.per_user != 0 && count >= self.limits.per_user {
            return Err(QuotaError::User { limit: self.limits.per_user });
        }
        self.per_user.insert(quota_key.into(), count + 1);
        self.allocations += 1;
        Ok(())
    }

    fn release_allocation(&mut self, quota_key: &str) {
        if let Some(count) = self.per_user.get_mut(quota_key) {
            self.allocations = self.allocations.saturating_sub(1);
            *count -= 1;
            if *count == 0 {
                self.per_user.remove(quota_key);
            }
        }
    }

    fn admit_connection(&mut self, ip: IpAddr) -> Result<(), ConnectionLimit> {
        let from_ip = self.connections_from(ip);
        if self.limits.tcp_total != 0 && self.connections >= self.limits.tcp_total {
            return Err(ConnectionLimit::Total { limit: self.limits.tcp_total });
        }
        if self.limits.tcp_per_ip != 0 && from_ip >= self.limits.tcp_per_ip {
            return Err(ConnectionLimit::PerIp { limit: self.limits.tcp_per_ip });
        }
        self.per_ip.insert(ip, from_ip + 1);
        self.connections += 1;
        Ok(())
    }

    fn release_connection(&mut self, ip: IpAddr) {
        if let Some(count) = self.per_ip.get_mut(&ip) {
            self.connections = self.connections.saturating_sub(1);
            *count -= 1;
            if *count == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accounts(limits: QuotaLimits) -> Accounts {
        Accounts::new((50000, 50003), limits, [1; 32])
    }

    #[test]
    fn quotas_count_per_user_and_in_all() {
        let mut a = accounts(QuotaLimits { per_user: 2, total: 3, ..QuotaLimits::default() });
        a.acquire_allocation("alice").expect("first");
        a.acquire_allocation("alice").expect("second");
        assert_eq!(a.acquire_allocation("alice"), Err(QuotaError::User { limit: 2 }));
        a.acquire_allocation("bob").expect("bob's first");
        assert_eq!(a.acquire_allocation("carol"), Err(QuotaError::Total));
        a.release_allocation("alice");
        assert_eq!(a.allocations_of("alice"), 1);
        a.acquire_allocation("carol").expect("room again");
        assert_eq!(a.allocations(), 3);
        // A release nobody holds changes nothing.
        a.release_allocation("dave");
        assert_eq!(a.allocations(), 3);
    }

    #[test]
    fn connections_count_per_ip_and_in_all() {
        let mut a = accounts(QuotaLimits { tcp_per_ip: 1, tcp_total: 2, ..QuotaLimits::default() });
        let (x, y, z) =
            ("192.0.2.1".parse().expect("ip"), "192.0.2.2".parse().expect("ip"), "192.0.2.3".parse().expect("ip"));
        assert_eq!(a.admit_connection(x), Ok(()));
        assert_eq!(a.admit_connection(x), Err(ConnectionLimit::PerIp { limit: 1 }), "per-IP limit");
        assert_eq!(a.admit_connection(y), Ok(()));
        assert_eq!(a.admit_connection(z), Err(ConnectionLimit::Total { limit: 2 }), "total limit");
        a.release_connection(x);
        a.release_connection(x);
        assert_eq!(a.connections(), 1);
        assert_eq!(a.admit_connection(z), Ok(()));
    }

    #[test]
    fn ports_come_from_a_pool_per_ip_and_go_back() {
        let now = crate::io::clock::now();
        let mut a = accounts(QuotaLimits::default());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let taken: Vec<SocketAddr> = (0..4).map(|_| a.take_port(ip, PortRequest::Any, now).expect("free").0).collect();
        assert_eq!(a.take_port(ip, PortRequest::Any, now), Err(PortError::Exhausted));
        assert_eq!(a.free_ports(ip), 0);
        a.return_port(taken[0]);
        assert_eq!(a.take_port(ip, PortRequest::Any, now).expect("returned").0, taken[0]);
        let other: IpAddr = "192.0.2.2".parse().expect("ip");
        assert_eq!(a.free_ports(other), 4, "another IP has its own pool");
    }

    #[test]
    fn a_reservation_is_claimed_in_its_own_family_once() {
        let now = crate::io::clock::now();
        let mut a = accounts(QuotaLimits::default());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let (even, token) = a.take_port(ip, PortRequest::Even { reserve_next: true }, now).expect("pair free");
        let token = token.expect("reserved");
        let v6: IpAddr = "2001:db8::1".parse().expect("ip");
        assert_eq!(a.take_port(v6, PortRequest::Reserved(token), now), Err(PortError::BadToken));
        let claimed = a.take_port(ip, PortRequest::Reserved(token), now).expect("claimed").0;
        assert_eq!(claimed.port(), even.port() + 1);
        assert_eq!(a.take_port(ip, PortRequest::Reserved(token), now), Err(PortError::BadToken));
    }
}
