//! What the core is told to be: a STUN server, a TURN relay with its
//! credentials, policy, lifetimes and caps, and the addresses it advertises.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::proto::auth::Authenticator;
use crate::proto::nat_discovery::NatDiscovery;
use crate::proto::policy::PeerPolicy;
use crate::proto::rate_limit::RateLimit;

/// Behaviour of the STUN and TURN service.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// SOFTWARE attribute in responses; none by default so answers stay small.
    pub software: Option<String>,
    /// Answer RFC 3489 requests (no magic cookie) with MAPPED-ADDRESS.
    pub rfc3489: bool,
    /// Put reason phrases in ERROR-CODE; off by default so answers stay small.
    pub reason_phrases: bool,
    /// TURN, or `None` for a STUN-only server.
    pub turn: Option<TurnConfig>,
    /// Budget per source IP of answers that need no credentials.
    pub rate_limit: RateLimit,
    /// RFC 5780 NAT behaviour discovery on the four addresses it names, or
    /// `None` (the default): then CHANGE-REQUEST, PADDING and RESPONSE-PORT
    /// get 420 as RFC 5780 §6 asks of a server with one address.
    pub nat_discovery: Option<NatDiscovery>,
}

/// Behaviour of the TURN relay.
#[derive(Clone, Debug)]
pub struct TurnConfig {
    /// Long-term credentials, or `None` when the operator explicitly
    /// allowed anonymous relaying.
    pub auth: Option<Authenticator>,
    pub policy: PeerPolicy,
    /// Relay addresses; empty means the address each Allocate arrived on.
    pub relay_ips: Vec<IpAddr>,
    /// Public addresses to advertise for private relay addresses (1:1 NAT).
    pub external_ips: Vec<ExternalIp>,
    pub default_lifetime: Duration,
    pub max_lifetime: Duration,
    pub max_permissions: usize,
    pub max_channels: usize,
    /// Let ChannelBind use RFC 5766's 0x5000..=0x7FFF too, which RFC 8656
    /// reserves but older clients (coturn's turnutils) still pick from.
    pub rfc5766_channels: bool,
    /// Bytes per second an allocation may relay each way; 0 for no limit.
    pub max_bps: u32,
    /// Servers to send new allocations to once `total_quota` is reached:
    /// 300 Try Alternate with one of the client's address family instead of
    /// 508 (RFC 8489 §10, RFC 8656 §7.2). Empty: 508.
    pub alternate_servers: Vec<SocketAddr>,
    /// Sent as ALTERNATE-DOMAIN with a 300 to a client over TLS, so it can
    /// check the alternate's certificate (RFC 8489 §14.16).
    pub alternate_domain: Option<String>,
    /// Peer data connections a TCP allocation may have at once (RFC 6062).
    pub max_tcp_peer_connections: usize,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self {
            auth: None,
            policy: PeerPolicy::default(),
            relay_ips: Vec::new(),
            external_ips: Vec::new(),
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_permissions: 64,
            max_channels: 64,
            rfc5766_channels: false,
            max_bps: 0,
            alternate_servers: Vec::new(),
            alternate_domain: None,
            max_tcp_peer_connections: 64,
        }
    }
}

/// A public address behind which the relay sits: with `private` set it maps
/// that one relay address, without it every relay address of its family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExternalIp {
    pub public: IpAddr,
    pub private: Option<IpAddr>,
}

/// The address to advertise for a relay bound to `relayed`.
pub(super) fn advertise(external: &[ExternalIp], relayed: SocketAddr) -> SocketAddr {
    let ip = relayed.ip();
    let public = external
        .iter()
        .find(|e| e.private == Some(ip))
        .or_else(|| external.iter().find(|e| e.private.is_none() && e.public.is_ipv4() == ip.is_ipv4()))
        .map_or(ip, |e| e.public);
    SocketAddr::new(public, relayed.port())
}
