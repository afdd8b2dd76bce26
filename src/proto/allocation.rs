//! One allocation: its relayed address, lifetime, permissions and channel
//! bindings (RFC 8656 §2.2, §9, §12).
//!
//! Permissions and channels live in small vectors searched linearly: an
//! allocation has a handful of each (the server caps them), and a scan of a
//! few entries beats hashing on the per-packet path.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tracing::Span;

use crate::proto::FiveTuple;
use crate::proto::channel_data::ChannelNumber;
use crate::proto::stun::{ErrorCode, TransactionId};

/// The `tracing` target of allocation lifecycle lines and of the span each
/// allocation logs under; `[log] allocations` switches it (src/telemetry.rs).
pub const LOG_TARGET: &str = "tern::allocation";

/// A permission lasts 300 seconds unless refreshed (RFC 8656 §9).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// A channel binding lasts 600 seconds unless refreshed (RFC 8656 §12).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// After a binding expires, neither its number nor its peer may be bound to
/// anything else for 300 more seconds (RFC 8656 §12), so late packets cannot
/// reach the wrong peer.
pub const CHANNEL_REUSE_GUARD: Duration = Duration::from_secs(300);

/// Index of an allocation in its worker's table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AllocationId(pub usize);

/// The driver's name for a relay socket: its allocation and its address
/// family, since a dual allocation (RFC 8656 §7.2) has a socket per family.
/// A packet from a peer reaches its allocation by arithmetic, not a hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayId(pub usize);

impl RelayId {
    pub fn new(allocation: AllocationId, ipv6: bool) -> Self {
        Self(allocation.0 * 2 + usize::from(ipv6))
    }

    pub fn allocation(self) -> AllocationId {
        AllocationId(self.0 / 2)
    }

    pub fn is_ipv6(self) -> bool {
        self.0 % 2 == 1
    }
}

/// One relayed transport address of an allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Relayed {
    /// The address the relay socket is bound to.
    pub addr: SocketAddr,
    /// The address given to the client: `addr`, or its public mapping when
    /// an external IP is configured.
    pub advertised: SocketAddr,
}

/// The driver's name for how to reach a client (a listener socket or a TCP
/// connection); the core stores it and hands it back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClientHandle(pub u64);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Permission {
    ip: IpAddr,
    expires: Instant,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChannelBinding {
    number: ChannelNumber,
    peer: SocketAddr,
    expires: Instant,
    /// Its expiry was reported; a refresh makes it active again.
    expiry_reported: bool,
}

impl ChannelBinding {
    fn is_active(&self, now: Instant) -> bool {
        now < self.expires
    }

    fn is_guarded(&self, now: Instant) -> bool {
        now < self.expires + CHANNEL_REUSE_GUARD
    }
}

/// Why a ChannelBind cannot be honoured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelBindError {
    /// The number is bound to another peer, or the peer to another number.
    Conflict,
    /// The allocation has as many channels as it may.
    TooManyChannels,
    /// The peer needs a permission, and the allocation has as many as it may.
    TooManyPermissions,
}

/// A byte budget: `rate` bytes per second, up to a second's worth saved up.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ByteBucket {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl ByteBucket {
    pub fn new(bytes_per_second: u32, now: Instant) -> Self {
        let rate = f64::from(bytes_per_second);
        Self { rate, tokens: rate, last: now }
    }

    /// Whether `bytes` fit the budget now; takes them if so.
    pub fn take(&mut self, bytes: usize, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= bytes as f64 {
            self.tokens -= bytes as f64;
            true
        } else {
            false
        }
    }

    /// Bytes the budget allows now, for a stream that reads no more than
    /// that and then [`Self::spend`]s what it read.
    pub fn available(&mut self, now: Instant) -> usize {
        self.refill(now);
        self.tokens as usize
    }

    pub fn spend(&mut self, bytes: u64) {
        self.tokens = (self.tokens - bytes as f64).max(0.0);
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.last = now;
    }
}

/// Traffic counters of one allocation, logged when it ends.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
}

pub struct Allocation {
    pub tuple: FiveTuple,
    pub client: ClientHandle,
    /// Relayed addresses by family (IPv4, IPv6): one, or both for a dual
    /// allocation. Never both empty once the allocation is live.
    relayed: [Option<Relayed>; 2],
    /// Who created it; later requests must come from the same user (441).
    pub username: Box<str>,
    /// The key quotas are counted under (the username, or the client IP
    /// when authentication is off).
    pub quota_key: Box<str>,
    /// Names it in the admin API; no other allocation of the process takes
    /// it (see `server::admin`). Set by the server as it is created.
    pub serial: u64,
    pub created: Instant,
    pub expires: Instant,
    /// The Allocate that created it, so a retransmission gets the same answer.
    pub allocate_tid: TransactionId,
    pub reservation_token: Option<[u8; 8]>,
    /// In a dual allocation that got only one family: the other family
    /// (is IPv6) and why it was refused, for ADDRESS-ERROR-CODE.
    pub refused_family: Option<(bool, ErrorCode)>,
    pub traffic: Traffic,
    /// `max_bps` budgets towards peers and towards the client, when set.
    pub bandwidth: Option<Box<[ByteBucket; 2]>>,
    /// REQUESTED-TRANSPORT was TCP (RFC 6062): the relayed address is a
    /// listening TCP socket and data goes over peer data connections.
    pub tcp_relay: bool,
    pub span: Span,
    /// Its relay sockets are open and its Allocate answered; until then it
    /// holds its 5-tuple and its id, and nothing is relayed.
    live: bool,
    /// The deadline of its current entry in the server's timers.
    pub scheduled: Option<Instant>,
    permissions: Vec<Permission>,
    channels: Vec<ChannelBinding>,
}

/// A permission or channel binding that ran out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expired {
    Permission(IpAddr),
    Channel(ChannelNumber, SocketAddr),
}

impl Allocation {
    /// An allocation whose relay sockets are being opened.
    pub fn opening(
        tuple: FiveTuple,
        client: ClientHandle,
        username: &str,
        quota_key: &str,
        created: Instant,
        lifetime: Duration,
        allocate_tid: TransactionId,
    ) -> Self {
        Self {
            tuple,
            client,
            relayed: [None; 2],
            username: username.into(),
            quota_key: quota_key.into(),
            serial: 0,
            created,
            expires: created + lifetime,
            allocate_tid,
            reservation_token: None,
            refused_family: None,
            traffic: Traffic::default(),
            bandwidth: None,
            tcp_relay: false,
            span: Span::none(),
            live: false,
            scheduled: None,
            permissions: Vec::new(),
            channels: Vec::new(),
        }
    }

    /// Its relay sockets are open: it relays through `relayed` from now on.
    pub fn go_live(&mut self, relayed: &[Relayed], span: Span) {
        for relayed in relayed {
            self.relayed[usize::from(relayed.addr.is_ipv6())] = Some(*relayed);
        }
        debug_assert!(self.relayed.iter().any(Option::is_some), "an allocation relays through at least one address");
        self.span = span;
        self.live = true;
    }

    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The relayed address of a family, if the allocation has one.
    pub fn relayed(&self, ipv6: bool) -> Option<&Relayed> {
        self.relayed[usize::from(ipv6)].as_ref()
    }

    /// Every relayed address, IPv4 first.
    pub fn relayed_addresses(&self) -> impl Iterator<Item = &Relayed> {
        self.relayed.iter().flatten()
    }

    /// Drops the relayed address of a family (a Refresh with lifetime 0 and
    /// REQUESTED-ADDRESS-FAMILY on a dual allocation); the last one stays,
    /// since an allocation without one is deleted as a whole.
    pub fn drop_relayed(&mut self, ipv6: bool) -> Option<Relayed> {
        if self.relayed_addresses().count() < 2 {
            return None;
        }
        self.relayed[usize::from(ipv6)].take()
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        now >= self.expires
    }

    /// Time left, rounded down to whole seconds, for LIFETIME.
    pub fn remaining_secs(&self, now: Instant) -> u32 {
        u32::try_from(self.expires.saturating_duration_since(now).as_secs()).unwrap_or(u32::MAX)
    }

    pub fn has_permission(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.iter().any(|p| p.ip == ip && now < p.expires)
    }

    /// Whether installing `ip` would add a permission rather than refresh one.
    pub fn would_add_permission(&self, ip: IpAddr) -> bool {
        !self.permissions.iter().any(|p| p.ip == ip)
    }

    pub fn permission_count(&self) -> usize {
        self.permissions.len()
    }

    /// Installs or refreshes the permission for `ip`; the caller has checked
    /// the per-allocation limit with [`Self::would_add_permission`].
    pub fn install_permission(&mut self, ip: IpAddr, now: Instant) {
        let expires = now + PERMISSION_LIFETIME;
        match self.permissions.iter_mut().find(|p| p.ip == ip) {
            Some(permission) => permission.expires = expires,
            None => self.permissions.push(Permission { ip, expires }),
        }
    }

    /// The peer a channel number is bound to, if the binding is active.
    pub fn channel_peer(&self, number: ChannelNumber, now: Instant) -> Option<SocketAddr> {
        self.channels.iter().find(|c| c.number == number && c.is_active(now)).map(|c| c.peer)
    }

    /// The channel bound to `peer`, if the binding is active.
    pub fn peer_channel(&self, peer: SocketAddr, now: Instant) -> Option<ChannelNumber> {
        self.channels.iter().find(|c| c.peer == peer && c.is_active(now)).map(|c| c.number)
    }

    /// Binds `number` to `peer` or refreshes that binding (RFC 8656 §12.2),
    /// and installs or refreshes the permission for the peer's IP.
    pub fn bind_channel(
        &mut self,
        number: ChannelNumber,
        peer: SocketAddr,
        now: Instant,
        max_channels: usize,
        max_permissions: usize,
    ) -> Result<(), ChannelBindError> {
        // A binding that shares the number or the peer, but not both,
        // conflicts until its guard time is over; then it is dead and goes.
        let conflicts = |c: &ChannelBinding| (c.number == number) != (c.peer == peer);
        if self.channels.iter().any(|c| conflicts(c) && c.is_guarded(now)) {
            return Err(ChannelBindError::Conflict);
        }
        self.channels.retain(|c| !conflicts(c));
        let existing = self.channels.iter().position(|c| c.number == number);
        if existing.is_none() && self.channels.len() >= max_channels {
            return Err(ChannelBindError::TooManyChannels);
        }
        if self.would_add_permission(peer.ip()) && self.permissions.len() >= max_permissions {
            return Err(ChannelBindError::TooManyPermissions);
        }
        let expires = now + CHANNEL_LIFETIME;
        match existing {
            Some(index) => {
                self.channels[index].expires = expires;
                self.channels[index].expiry_reported = false;
            }
            None => self.channels.push(ChannelBinding { number, peer, expires, expiry_reported: false }),
        }
        self.install_permission(peer.ip(), now);
        Ok(())
    }

    /// Forgets expired permissions and channel bindings past their guard
    /// time, and tells `on_expired` of each permission and each binding
    /// (once) as it runs out.
    pub fn expire_entries(&mut self, now: Instant, mut on_expired: impl FnMut(Expired)) {
        self.permissions.retain(|p| {
            let live = now < p.expires;
            if !live {
                on_expired(Expired::Permission(p.ip));
            }
            live
        });
        for channel in self.channels.iter_mut().filter(|c| !c.is_active(now) && !c.expiry_reported) {
            channel.expiry_reported = true;
            on_expired(Expired::Channel(channel.number, channel.peer));
        }
        self.channels.retain(|c| c.is_guarded(now));
    }

    /// When something of it next comes due: its lifetime, a permission, a
    /// channel binding's expiry or the end of its guard time.
    pub fn next_deadline(&self) -> Instant {
        let permissions = self.permissions.iter().map(|p| p.expires);
        let channels =
            self.channels.iter().map(|c| if c.expiry_reported { c.expires + CHANNEL_REUSE_GUARD } else { c.expires });
        permissions.chain(channels).fold(self.expires, Instant::min)
    }

    pub fn channel_count(&self) -> usize {
        self.channels.len()
    }

    /// Whether `bytes` towards a peer (`to_peer`) or the client fit the
    /// allocation's bandwidth budget.
    pub fn within_bandwidth(&mut self, to_peer: bool, bytes: usize, now: Instant) -> bool {
        match &mut self.bandwidth {
            Some(buckets) => buckets[usize::from(!to_peer)].take(bytes, now),
            None => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::Transport;

    fn allocation(now: Instant) -> Allocation {
        let tuple = FiveTuple {
            client: "192.0.2.1:5000".parse().expect("literal"),
            server: "198.51.100.1:3478".parse().expect("literal"),
            transport: Transport::Udp,
        };
        let relayed: SocketAddr = "198.51.100.1:50000".parse().expect("literal");
        let mut a = Allocation::opening(
            tuple,
            ClientHandle(0),
            "alice",
            "alice",
            now,
            Duration::from_secs(600),
            TransactionId([0; 12]),
        );
        a.go_live(&[Relayed { addr: relayed, advertised: relayed }], Span::none());
        a
    }

    fn channel(n: u16) -> ChannelNumber {
        ChannelNumber::new(n).expect("in range")
    }

    #[test]
    fn permission_expires_after_300_seconds_and_refresh_extends_it() {
        let now = crate::io::clock::now();
        let mut a = allocation(now);
        let ip: IpAddr = "203.0.113.9".parse().expect("literal");
        a.install_permission(ip, now);
        assert!(a.has_permission(ip, now + Duration::from_secs(299)));
        assert!(!a.has_permission(ip, now + Duration::from_secs(300)));
        a.install_permission(ip, now + Duration::from_secs(200));
        assert!(a.has_permission(ip, now + Duration::from_secs(499)));
        assert_eq!(a.permission_count(), 1);
        a.expire_entries(now + Duration::from_secs(500), |_| {});
        assert_eq!(a.permission_count(), 0);
    }

    #[test]
    fn channel_binding_lasts_600_seconds_and_installs_a_permission() {
        let now = crate::io::clock::now();
        let mut a = allocation(now);
        let peer: SocketAddr = "203.0.113.9:7000".parse().expect("literal");
        a.bind_channel(channel(0x4000), peer, now, 16, 16).expect("bind");
        assert_eq!(a.channel_peer(channel(0x4000), now + Duration::from_secs(599)), Some(peer));
        assert_eq!(a.peer_channel(peer, now), Some(channel(0x4000)));
        assert_eq!(a.channel_peer(channel(0x4000), now + Duration::from_secs(600)), None);
        assert!(a.has_permission(peer.ip(), now));
    }

    #[test]
    fn conflicting_bindings_are_refused_until_the_guard_time_has_passed() {
        let now = crate::io::clock::now();
        let mut a = allocation(now);
        let peer: SocketAddr = "203.0.113.9:7000".parse().expect("literal");
        let other: SocketAddr = "203.0.113.9:7001".parse().expect("literal");
        a.bind_channel(channel(0x4000), peer, now, 16, 16).expect("bind");
        assert_eq!(a.bind_channel(channel(0x4000), other, now, 16, 16), Err(ChannelBindError::Conflict));
        assert_eq!(a.bind_channel(channel(0x4001), peer, now, 16, 16), Err(ChannelBindError::Conflict));
        // Expired but guarded: still refused.
        let expired = now + CHANNEL_LIFETIME + Duration::from_secs(10);
        assert_eq!(a.bind_channel(channel(0x4000), other, expired, 16, 16), Err(ChannelBindError::Conflict));
        // Rebinding the same pair after expiry is allowed.
        a.bind_channel(channel(0x4000), peer, expired, 16, 16).expect("same pair rebinds");
        // Past the guard the number may go to another peer.
        let later = expired + CHANNEL_LIFETIME + CHANNEL_REUSE_GUARD;
        a.bind_channel(channel(0x4000), other, later, 16, 16).expect("reuse after guard");
        assert_eq!(a.channel_peer(channel(0x4000), later), Some(other));
        assert_eq!(a.channel_count(), 1);
    }

    #[test]
    fn channel_limit_is_enforced() {
        let now = crate::io::clock::now();
        let mut a = allocation(now);
        for i in 0..2u16 {
            let peer = SocketAddr::new("203.0.113.9".parse().expect("literal"), 7000 + i);
            a.bind_channel(channel(0x4000 + i), peer, now, 2, 16).expect("under the limit");
        }
        let peer: SocketAddr = "203.0.113.9:8000".parse().expect("literal");
        assert_eq!(a.bind_channel(channel(0x4100), peer, now, 2, 16), Err(ChannelBindError::TooManyChannels));
    }
}
