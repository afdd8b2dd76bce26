//! The server: what tern does with each packet from a client or a peer
//! (RFC 8489 §6.3 for STUN, RFC 8656 §7-§12 for TURN, RFC 3489 §8 when
//! classic STUN is enabled).
//!
//! Inputs are `handle_client`, `handle_peer`, `handle_timeout` and
//! `handle_connection_closed`, each with the time. Answers are appended to the
//! caller's buffer; data to relay comes back as ranges into the caller's
//! packet. Relay sockets and quotas are resources shared with other workers,
//! so the core asks the driver for them through [`Driver`] and decides
//! everything else itself.
//!
//! Malformed packets, responses, and indications that cannot be relayed are
//! dropped and counted, never answered: junk is not reflected.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::Range;
use std::time::Duration;

use tracing::{debug, info, info_span, trace};

use crate::proto::allocation::{
    Allocation, AllocationId, ByteBucket, ChannelBindError, ClientHandle, LOG_TARGET, RelayId, Relayed,
};
use crate::proto::auth::{AuthError, Authenticator, SigningKey, StaticCredentials};
use crate::proto::channel_data::{self, ChannelData, ChannelNumber};
use crate::proto::demux::{self, PacketKind};
use crate::proto::error::{ParseError, RequestError};
use crate::proto::nat_discovery::NatDiscovery;
use crate::proto::policy::{self, PeerPolicy};
use crate::proto::port_pool::ReservationToken;
use crate::proto::rate_limit::{RateLimit, SourceLimiter};
use crate::proto::stun::attr::{self, AttrType, FAMILY_IPV4, FAMILY_IPV6};
use crate::proto::stun::{
    ATTR_HEADER_LEN, Class, ErrorCode, HEADER_LEN, MAGIC_COOKIE, Message, MessageType, MessageWriter, Method,
    TransactionId,
};
use crate::proto::table::AllocationTable;
use crate::proto::tcp_relay::{ConnectionId, TcpRelayTable};
use crate::proto::{FiveTuple, Now, Transport};

/// The most unknown attributes listed in one 420 response; more are not
/// listed, which keeps the answer no larger than the request.
const MAX_UNKNOWN_LISTED: usize = 8;
/// IANA protocol number of UDP, the one REQUESTED-TRANSPORT tern relays.
const PROTOCOL_UDP: u8 = 17;
/// IANA protocol number of TCP, for RFC 6062 allocations.
const PROTOCOL_TCP: u8 = 6;
/// Room a driver must leave in front of a peer's payload: the largest Data
/// indication header (STUN header, XOR-PEER-ADDRESS with an IPv6 address,
/// DATA attribute header).
pub const PEER_HEADROOM: usize = HEADER_LEN + ATTR_HEADER_LEN + 20 + ATTR_HEADER_LEN;
/// Room a driver must leave after a peer's payload for padding to four bytes.
pub const PEER_TAILROOM: usize = 3;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayRequest {
    /// The relay IP; ignored for `PortRequest::Reserved`, whose reservation names it.
    pub ip: IpAddr,
    pub port: PortRequest,
    pub dont_fragment: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RelayOpened {
    pub addr: SocketAddr,
    pub reservation: Option<ReservationToken>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayError {
    /// Every port of the range is taken.
    NoPorts,
    /// The reservation token is unknown or expired.
    BadToken,
    /// DONT-FRAGMENT cannot be honoured on this platform.
    DontFragmentUnsupported,
    /// The socket could not be opened (descriptor limit, address gone).
    Unavailable,
}

/// A TCP connection to a peer could not even be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectFailed;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaError {
    /// The user has `user_quota` allocations.
    User,
    /// The server has `total_quota` allocations.
    Total,
}

/// What the core needs from the driver: relay sockets and the quotas shared
/// by all workers.
pub trait Driver {
    /// Opens a relay socket of an allocation (the family of `relay` is the
    /// family of `request.ip`).
    fn open_relay(&mut self, relay: RelayId, request: &RelayRequest) -> Result<RelayOpened, RelayError>;
    /// Closes it (UDP or TCP) and returns its port to the pool.
    fn close_relay(&mut self, relay: RelayId);
    /// Opens the TCP listening socket of an RFC 6062 allocation. A driver
    /// without TCP relays refuses them.
    fn open_tcp_relay(&mut self, _relay: RelayId, _request: &RelayRequest) -> Result<RelayOpened, RelayError> {
        Err(RelayError::Unavailable)
    }
    /// Starts a TCP connection from the relayed address of `relay` to
    /// `peer`; the driver reports its outcome through
    /// [`Server::handle_peer_connected`].
    fn connect_peer(&mut self, _relay: RelayId, _id: ConnectionId, _peer: SocketAddr) -> Result<(), ConnectFailed> {
        Err(ConnectFailed)
    }
    /// Closes a peer data connection and the client data connection bound to it.
    fn close_peer(&mut self, _id: ConnectionId) {}
    /// Counts one more allocation for `user` against the quotas.
    fn acquire_quota(&mut self, user: &str) -> Result<(), QuotaError>;
    fn release_quota(&mut self, user: &str);
}

/// Counters kept by one server; the driver sums them across workers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// STUN requests received and parsed.
    pub requests: u64,
    pub binding_responses: u64,
    /// Error responses sent, all codes (authentication challenges included).
    pub error_responses: u64,
    /// 401 and 438 answers: challenges, wrong credentials, stale nonces.
    pub auth_failures: u64,
    pub indications: u64,
    /// Packets that were not well-formed STUN or ChannelData.
    pub malformed: u64,
    pub bad_fingerprint: u64,
    /// Success or error responses sent to us, which a server ignores.
    pub unexpected_responses: u64,
    pub allocations_created: u64,
    pub allocations_deleted: u64,
    /// Peers refused by the peer policy, on any path.
    pub peers_forbidden: u64,
    pub relayed_to_peer: u64,
    pub relayed_to_client: u64,
    /// Payload bytes of those packets.
    pub relayed_bytes_to_peer: u64,
    pub relayed_bytes_to_client: u64,
    /// Packets from peers without a permission.
    pub dropped_no_permission: u64,
    /// Send indications and ChannelData with no allocation, channel or permission.
    pub dropped_client_data: u64,
    /// Unauthenticated requests not answered: their source was over its budget.
    pub rate_limited: u64,
    /// Relayed packets dropped: the allocation was over `max_bps`.
    pub over_bandwidth: u64,
    /// ICMP errors about relayed datagrams passed on to clients.
    pub icmp_relayed: u64,
    /// RFC 6062 peer data connections made, by Connect or by a peer.
    pub tcp_peer_connections: u64,
    /// Inbound peer connections closed at once: no permission, or the
    /// allocation's `max_tcp_peer_connections` reached.
    pub tcp_peer_refused: u64,
    /// Connects answered 447, and connections not bound in time.
    pub tcp_peer_failures: u64,
    /// Bytes RFC 6062 data connections carried, both ways.
    pub tcp_relayed_bytes: u64,
}

impl Stats {
    /// Adds another worker's counters to these.
    pub fn add(&mut self, other: &Self) {
        self.requests += other.requests;
        self.binding_responses += other.binding_responses;
        self.error_responses += other.error_responses;
        self.auth_failures += other.auth_failures;
        self.indications += other.indications;
        self.malformed += other.malformed;
        self.bad_fingerprint += other.bad_fingerprint;
        self.unexpected_responses += other.unexpected_responses;
        self.allocations_created += other.allocations_created;
        self.allocations_deleted += other.allocations_deleted;
        self.peers_forbidden += other.peers_forbidden;
        self.relayed_to_peer += other.relayed_to_peer;
        self.relayed_to_client += other.relayed_to_client;
        self.relayed_bytes_to_peer += other.relayed_bytes_to_peer;
        self.relayed_bytes_to_client += other.relayed_bytes_to_client;
        self.dropped_no_permission += other.dropped_no_permission;
        self.dropped_client_data += other.dropped_client_data;
        self.rate_limited += other.rate_limited;
        self.over_bandwidth += other.over_bandwidth;
        self.icmp_relayed += other.icmp_relayed;
        self.tcp_peer_connections += other.tcp_peer_connections;
        self.tcp_peer_refused += other.tcp_peer_refused;
        self.tcp_peer_failures += other.tcp_peer_failures;
        self.tcp_relayed_bytes += other.tcp_relayed_bytes;
    }
}

/// What the driver must do after `handle_client`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOutcome {
    /// Nothing to send.
    Dropped,
    /// A response was appended to the reply buffer; send it to the client.
    Replied,
    /// A response was appended to the reply buffer; send it from the listen
    /// address `source` to `destination` instead of back the way the
    /// request came (RFC 5780 CHANGE-REQUEST and RESPONSE-PORT, UDP only).
    RepliedFrom { source: SocketAddr, destination: SocketAddr },
    /// Send `packet[payload]` from the relay socket `relay` to `peer`.
    Forward { relay: RelayId, peer: SocketAddr, payload: Range<usize> },
    /// A ConnectionBind succeeded (RFC 6062 §5.4): send the response, and
    /// from then on relay the connection's bytes, unframed, to and from the
    /// peer data connection `id`.
    ConnectionBound { id: ConnectionId },
}

/// An ICMP error about a datagram a relay socket sent (RFC 8656 §11.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcmpReport {
    /// Where the datagram was going.
    pub peer: SocketAddr,
    /// ICMPv6 rather than ICMPv4.
    pub ipv6: bool,
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The next-hop MTU the kernel reported with the error, if any.
    pub mtu: u32,
}

/// Where a peer's packet goes, once `handle_peer` has put a header on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerOutcome {
    pub client: ClientHandle,
    pub tuple: FiveTuple,
    /// The ChannelData message or Data indication within the slot.
    pub frame: (usize, usize),
}

/// Where a peer address came from: a request is logged at info when refused,
/// a Send indication (which a client can repeat at line rate) at debug.
#[derive(Clone, Copy)]
enum Path {
    Request,
    Send,
}

/// Who sent an authenticated request.
struct Identity<'m> {
    /// Borrowed from USERNAME, or owned when a USERHASH named the user.
    username: Cow<'m, str>,
    /// Signs every response; `None` only in anonymous mode.
    key: Option<SigningKey>,
}

/// One worker's STUN/TURN server state.
pub struct Server {
    config: ServerConfig,
    table: AllocationTable,
    stats: Stats,
    /// Round-robin position among `relay_ips` of a family.
    relay_cursor: usize,
    /// Round-robin position among `alternate_servers` of a family.
    alternate_cursor: usize,
    /// Transaction IDs of Data indications: a counter after a random prefix.
    indication_counter: u64,
    indication_prefix: [u8; 4],
    limiter: SourceLimiter,
    /// RFC 6062 peer data connections.
    tcp: TcpRelayTable,
    /// Draining: no new allocation here, existing ones carry on.
    draining: bool,
}

impl Server {
    pub fn new(config: ServerConfig) -> Self {
        Self {
            limiter: SourceLimiter::new(config.rate_limit),
            config,
            table: AllocationTable::default(),
            stats: Stats::default(),
            relay_cursor: 0,
            alternate_cursor: 0,
            indication_counter: 0,
            indication_prefix: rand::random(),
            tcp: TcpRelayTable::default(),
            draining: false,
        }
    }

    /// Stops taking new allocations, for a restart without cutting calls:
    /// an Allocate gets 300 Try Alternate to an alternate server when one is
    /// configured, 508 otherwise; existing allocations, their refreshes,
    /// permissions, channels and relaying carry on. There is no way back:
    /// a draining server is on its way out.
    pub fn start_draining(&mut self) {
        self.draining = true;
    }

    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Swaps in the users and secrets of a reloaded configuration; requests
    /// from now on are checked against them, so an allocation of a user or
    /// secret that is gone cannot be refreshed and ends with its lifetime
    /// (or its deletion). False, and nothing
    /// changes, when this server does not authenticate (STUN only, or
    /// anonymous relaying): that takes a restart to change.
    pub fn replace_credentials(&mut self, store: StaticCredentials) -> bool {
        match self.config.turn.as_mut().and_then(|turn| turn.auth.as_mut()) {
            Some(auth) => {
                auth.replace_store(store);
                true
            }
            None => false,
        }
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    pub fn table(&self) -> &AllocationTable {
        &self.table
    }

    /// Handles one packet from a client: a datagram, or one frame cut from a
    /// stream by [`demux::stream_frame_len`]. `client` is how the driver
    /// reaches this client again, stored with any allocation made.
    pub fn handle_client(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        packet: &[u8],
        reply: &mut Vec<u8>,
        driver: &mut dyn Driver,
    ) -> ClientOutcome {
        match demux::classify(packet) {
            PacketKind::Stun => self.handle_stun(now, tuple, client, packet, reply, driver),
            PacketKind::ChannelData => self.handle_channel_data(now, tuple, packet),
            PacketKind::Other => self.drop_malformed(tuple, ParseError::NotStun),
        }
    }

    /// Handles a datagram a peer sent to the relay socket of `id`. The
    /// payload sits at `slot[headroom..headroom + len]`; the ChannelData or
    /// Data indication header is written in front of it, and padding after
    /// it, in place. `headroom` must be at least [`PEER_HEADROOM`] and the
    /// slot must extend [`PEER_TAILROOM`] bytes past the payload.
    pub fn handle_peer(
        &mut self,
        now: Now,
        relay: RelayId,
        peer: SocketAddr,
        slot: &mut [u8],
        headroom: usize,
        len: usize,
    ) -> Option<PeerOutcome> {
        let allocation = self.table.get_mut(relay.allocation())?;
        if allocation.is_expired(now.instant) || !allocation.has_permission(peer.ip(), now.instant) {
            self.stats.dropped_no_permission += 1;
            trace!(%peer, "peer data dropped: no permission");
            return None;
        }
        if !allocation.within_bandwidth(false, len, now.instant) {
            self.stats.over_bandwidth += 1;
            return None;
        }
        let stream = allocation.tuple.transport.is_stream();
        let frame = match allocation.peer_channel(peer, now.instant) {
            Some(channel) => write_channel_data(slot, headroom, len, channel, stream)?,
            None => {
                let tid = next_indication_tid(&self.indication_prefix, &mut self.indication_counter);
                write_data_indication(slot, headroom, len, peer, tid)?
            }
        };
        allocation.traffic.packets_to_client += 1;
        allocation.traffic.bytes_to_client += len as u64;
        self.stats.relayed_to_client += 1;
        self.stats.relayed_bytes_to_client += len as u64;
        Some(PeerOutcome { client: allocation.client, tuple: allocation.tuple, frame })
    }

    /// RFC 8656 §11.5: an ICMP error about a datagram the relay sent goes to
    /// the client as a Data indication with XOR-PEER-ADDRESS and ICMP, when
    /// it is of a kind the RFC relays (ICMPv4 destination unreachable or
    /// time exceeded; ICMPv6 destination unreachable, packet too big or time
    /// exceeded) and the peer has a permission. The indication is written
    /// to `out`; the driver sends it to the returned client.
    pub fn handle_icmp(
        &mut self,
        now: Now,
        relay: RelayId,
        report: &IcmpReport,
        out: &mut Vec<u8>,
    ) -> Option<(ClientHandle, FiveTuple)> {
        let relayed = matches!((report.ipv6, report.icmp_type), (false, 3 | 11) | (true, 1..=3));
        let allocation = self.table.get_mut(relay.allocation())?;
        let peer = SocketAddr::new(policy::canonical(report.peer.ip()), report.peer.port());
        if !relayed || allocation.is_expired(now.instant) || !allocation.has_permission(peer.ip(), now.instant) {
            trace!(%peer, icmp_type = report.icmp_type, "ICMP error not relayed");
            return None;
        }
        // Error Data carries the MTU for "fragmentation needed" and "packet
        // too big" (RFC 8656 §18.13), and is zero otherwise.
        let mtu_error = matches!((report.ipv6, report.icmp_type, report.icmp_code), (false, 3, 4) | (true, 2, _));
        let error_data = if mtu_error { report.mtu } else { 0 };
        let mut icmp = [0u8; 8];
        icmp[2] = report.icmp_type;
        icmp[3] = report.icmp_code;
        icmp[4..].copy_from_slice(&error_data.to_be_bytes());
        let tid = next_indication_tid(&self.indication_prefix, &mut self.indication_counter);
        let mut w = MessageWriter::new(out, MessageType::new(Method::DATA, Class::Indication), TransactionId(tid));
        w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer).attr(AttrType::ICMP, &icmp);
        w.finish();
        debug!(parent: &allocation.span, %peer, icmp_type = report.icmp_type, icmp_code = report.icmp_code, "ICMP error relayed");
        self.stats.icmp_relayed += 1;
        Some((allocation.client, allocation.tuple))
    }

    /// Expires allocations, permissions and channel bindings. Call it
    /// periodically (the driver does once a second); expiry is also checked
    /// lazily on every use, so the period only bounds how long a dead
    /// allocation holds its port.
    pub fn handle_timeout(&mut self, now: Now, driver: &mut dyn Driver) {
        let expired: Vec<AllocationId> =
            self.table.iter().filter(|(_, a)| a.is_expired(now.instant)).map(|(id, _)| id).collect();
        for id in expired {
            self.delete(id, driver, "expired");
        }
        for (_, allocation) in self.table.iter_mut() {
            allocation.expire_entries(now.instant);
        }
        self.expire_tcp_connections(now, driver);
        self.limiter.forget_idle(now.instant);
    }

    /// A TCP or TLS connection closed: its allocation goes with it (RFC 8656 §3.1).
    pub fn handle_connection_closed(&mut self, tuple: &FiveTuple, driver: &mut dyn Driver) {
        if let Some(id) = self.table.find(tuple) {
            self.delete(id, driver, "connection closed");
        }
    }

    /// Deletes every allocation, for shutdown.
    pub fn close_all(&mut self, driver: &mut dyn Driver) {
        let ids: Vec<AllocationId> = self.table.iter().map(|(id, _)| id).collect();
        for id in ids {
            self.delete(id, driver, "server shutting down");
        }
    }

    fn handle_stun(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        packet: &[u8],
        reply: &mut Vec<u8>,
        driver: &mut dyn Driver,
    ) -> ClientOutcome {
        let message = match Message::parse(packet) {
            Ok(message) => message,
            Err(ParseError::NoMagicCookie) if self.config.rfc3489 => match Message::parse_rfc3489(packet) {
                Ok(message) => {
                    if self.over_rate_limit(now, tuple) {
                        return ClientOutcome::Dropped;
                    }
                    return self.handle_rfc3489(tuple, &message, reply);
                }
                Err(error) => return self.drop_malformed(tuple, error),
            },
            Err(error) => return self.drop_malformed(tuple, error),
        };
        if message.has_fingerprint() && !message.verify_fingerprint() {
            self.stats.bad_fingerprint += 1;
            trace!(client = %tuple.client, "dropped: FINGERPRINT mismatch");
            return ClientOutcome::Dropped;
        }
        match message.class() {
            Class::Request => {
                self.stats.requests += 1;
                self.handle_request(now, tuple, client, &message, reply, driver)
            }
            Class::Indication => {
                self.stats.indications += 1;
                if message.method() == Method::SEND && self.config.turn.is_some() {
                    self.handle_send(now, tuple, &message)
                } else {
                    ClientOutcome::Dropped
                }
            }
            Class::Success | Class::Error => {
                self.stats.unexpected_responses += 1;
                ClientOutcome::Dropped
            }
        }
    }

    fn handle_request(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        request: &Message<'_>,
        reply: &mut Vec<u8>,
        driver: &mut dyn Driver,
    ) -> ClientOutcome {
        let is_turn_method = matches!(
            request.method(),
            Method::ALLOCATE
                | Method::REFRESH
                | Method::CREATE_PERMISSION
                | Method::CHANNEL_BIND
                | Method::CONNECT
                | Method::CONNECTION_BIND
        );
        if is_turn_method && self.config.turn.is_some() {
            // Authenticated first; unknown attributes are checked after that.
            return self.handle_turn_request(now, tuple, client, request, reply, driver);
        }
        // Everything below is answered without credentials.
        if self.over_rate_limit(now, tuple) {
            return ClientOutcome::Dropped;
        }
        if self.reject_unknown_attributes(tuple, request, None, reply) {
            return ClientOutcome::Replied;
        }
        match request.method() {
            Method::BINDING => self.binding_success(tuple, request, reply),
            method => {
                debug!(client = %tuple.client, method = method.0, "400: method not supported");
                self.error_response(request, ErrorCode::BAD_REQUEST, None, reply, |_| {});
                ClientOutcome::Replied
            }
        }
    }

    fn handle_turn_request(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        request: &Message<'_>,
        reply: &mut Vec<u8>,
        driver: &mut dyn Driver,
    ) -> ClientOutcome {
        let auth = self.config.turn.as_ref().and_then(|turn| turn.auth.as_ref());
        let identity = match auth.map(|auth| auth.authenticate(request, tuple.client.ip(), now.unix)) {
            Some(Ok(authenticated)) => Identity { username: authenticated.username, key: Some(authenticated.key) },
            Some(Err(error)) => {
                if self.over_rate_limit(now, tuple) {
                    return ClientOutcome::Dropped;
                }
                self.auth_error(now, tuple, request, error, reply);
                return ClientOutcome::Replied;
            }
            None => Identity { username: Cow::Borrowed(""), key: None },
        };
        if identity.key.is_none() && self.over_rate_limit(now, tuple) {
            return ClientOutcome::Dropped;
        }
        if self.reject_unknown_attributes(tuple, request, identity.key.as_ref(), reply) {
            return ClientOutcome::Replied;
        }
        let replied = |result: Result<(), RequestError>| result.map(|()| ClientOutcome::Replied);
        let result = match request.method() {
            Method::ALLOCATE => replied(self.allocate(now, tuple, client, request, &identity, reply, driver)),
            Method::REFRESH => replied(self.refresh(now, tuple, request, &identity, reply, driver)),
            Method::CREATE_PERMISSION => replied(self.create_permission(now, tuple, request, &identity, reply)),
            Method::CONNECT => self.connect(now, tuple, request, &identity, driver),
            Method::CONNECTION_BIND => self.connection_bind(now, tuple, request, &identity, reply),
            _ => replied(self.channel_bind(now, tuple, request, &identity, reply)),
        };
        match result {
            Ok(outcome) => outcome,
            Err(error) => {
                let code = error.code();
                debug!(client = %tuple.client, method = request.method().name(), code = code.0, %error, "request refused");
                let domain =
                    self.config.turn.as_ref().and_then(|t| t.alternate_domain.clone()).filter(|_| {
                        matches!(error, RequestError::TryAlternate(_)) && tuple.transport == Transport::Tls
                    });
                self.error_response(request, code, identity.key.as_ref(), reply, |w| match error {
                    RequestError::UnsupportedAttribute(typ) => {
                        w.unknown_attributes(&[AttrType(typ)]);
                    }
                    // RFC 8489 §14.15: a plain (not XORed) address.
                    RequestError::TryAlternate(alternate) => {
                        w.address(AttrType::ALTERNATE_SERVER, &alternate);
                        if let Some(domain) = &domain {
                            w.attr(AttrType::ALTERNATE_DOMAIN, domain.as_bytes());
                        }
                    }
                    _ => {}
                });
                ClientOutcome::Replied
            }
        }
    }

    /// RFC 8489 §6.3.1: a request with comprehension-required attributes
    /// tern does not know gets 420 listing them, signed with `key` when the
    /// request was authenticated (§9.2.4). RFC 8489 §6.3 checks this after
    /// authentication, so TURN requests come here only once authenticated.
    /// Returns whether it answered.
    fn reject_unknown_attributes(
        &mut self,
        tuple: &FiveTuple,
        request: &Message<'_>,
        key: Option<&SigningKey>,
        reply: &mut Vec<u8>,
    ) -> bool {
        // RFC 5780 §7: its request attributes are understood in Binding
        // requests to the addresses discovery serves, and nowhere else.
        let discovery = request.method() == Method::BINDING
            && self.config.nat_discovery.as_ref().is_some_and(|d| d.serves(tuple.server));
        let unknown_here = request.unknown_required().filter(|typ| !(discovery && typ.is_nat_discovery_request()));
        let mut unknown = [AttrType(0); MAX_UNKNOWN_LISTED];
        let mut unknown_count = 0;
        for (slot, typ) in unknown.iter_mut().zip(unknown_here) {
            *slot = typ;
            unknown_count += 1;
        }
        if unknown_count == 0 {
            return false;
        }
        debug!(client = %tuple.client, method = request.method().name(), "420: unknown comprehension-required attributes");
        self.error_response(request, ErrorCode::UNKNOWN_ATTRIBUTE, key, reply, |w| {
            w.unknown_attributes(&unknown[..unknown_count]);
        });
        true
    }

    /// 401 or 438 with REALM, a fresh NONCE and PASSWORD-ALGORITHMS (RFC 8489
    /// §9.2.4), or 400 for a request that carried integrity without the
    /// attributes it needs or with password algorithms other than offered.
    /// Never signed: the key is unknown or wrong.
    fn auth_error(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        error: AuthError,
        reply: &mut Vec<u8>,
    ) {
        self.stats.auth_failures += 1;
        let Some(auth) = self.config.turn.as_ref().and_then(|t| t.auth.as_ref()) else { return };
        if error != AuthError::Challenge {
            debug!(client = %tuple.client, method = request.method().name(), ?error, "authentication failed");
        }
        let nonce = auth.nonce(tuple.client.ip(), now.unix);
        let realm = auth.realm().to_owned();
        let algorithms = auth.password_algorithms();
        self.error_response(request, error.code(), None, reply, |w| {
            if error.sends_challenge() {
                w.attr(AttrType::REALM, realm.as_bytes());
                w.attr(AttrType::NONCE, &nonce);
                w.attr(AttrType::PASSWORD_ALGORITHMS, algorithms);
            }
        });
    }

    /// RFC 8656 §7.2, in its order.
    #[allow(clippy::too_many_arguments)]
    fn allocate(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        client: ClientHandle,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
        driver: &mut dyn Driver,
    ) -> Result<(), RequestError> {
        if let Some(id) = self.table.find(tuple) {
            let allocation = self.table.get(id).expect("indexed allocations exist");
            // A retransmission is the same transaction from the same user.
            let (expired, same_transaction) = (
                allocation.is_expired(now.instant),
                allocation.allocate_tid == request.transaction_id() && *allocation.username == *identity.username,
            );
            if expired {
                self.delete(id, driver, "expired");
            } else if same_transaction {
                // A retransmission: the first answer was lost, send it again.
                self.allocate_success(now, id, request, identity, reply);
                return Ok(());
            } else {
                return Err(RequestError::AllocationExists);
            }
        }
        let transport = request
            .attribute(AttrType::REQUESTED_TRANSPORT)
            .ok_or(RequestError::BadRequest("REQUESTED-TRANSPORT missing"))?;
        let protocol = attr::read_requested_transport(transport)
            .map_err(|_| RequestError::BadRequest("REQUESTED-TRANSPORT malformed"))?;
        let tcp = match protocol {
            PROTOCOL_UDP => false,
            PROTOCOL_TCP => {
                check_tcp_allocate(tuple, request)?;
                true
            }
            _ => return Err(RequestError::UnsupportedTransport(protocol)),
        };
        let dont_fragment = request.attribute(AttrType::DONT_FRAGMENT).is_some();
        let token = request
            .attribute(AttrType::RESERVATION_TOKEN)
            .map(attr::read_reservation_token)
            .transpose()
            .map_err(|_| RequestError::BadRequest("RESERVATION-TOKEN malformed"))?;
        let even_port = request
            .attribute(AttrType::EVEN_PORT)
            .map(attr::read_even_port)
            .transpose()
            .map_err(|_| RequestError::BadRequest("EVEN-PORT malformed"))?;
        let family = request
            .attribute(AttrType::REQUESTED_ADDRESS_FAMILY)
            .map(attr::read_address_family)
            .transpose()
            .map_err(|_| RequestError::BadRequest("REQUESTED-ADDRESS-FAMILY malformed"))?;
        let additional = request
            .attribute(AttrType::ADDITIONAL_ADDRESS_FAMILY)
            .map(attr::read_address_family)
            .transpose()
            .map_err(|_| RequestError::BadRequest("ADDITIONAL-ADDRESS-FAMILY malformed"))?;
        // RFC 8656 §7.2 rules 5, 6 and 8, and §18.11: IPv6 is the only
        // additional family (the first is IPv4).
        if token.is_some() && (even_port.is_some() || family.is_some() || additional.is_some()) {
            return Err(RequestError::BadRequest("RESERVATION-TOKEN with EVEN-PORT or an address family"));
        }
        if family.is_some() && additional.is_some() {
            return Err(RequestError::BadRequest("REQUESTED-ADDRESS-FAMILY with ADDITIONAL-ADDRESS-FAMILY"));
        }
        if additional.is_some_and(|f| f != FAMILY_IPV6) {
            return Err(RequestError::BadRequest("ADDITIONAL-ADDRESS-FAMILY other than IPv6"));
        }
        if additional.is_some() && even_port == Some(true) {
            return Err(RequestError::BadRequest("EVEN-PORT reservation with ADDITIONAL-ADDRESS-FAMILY"));
        }
        // The families to relay, as (is IPv6) in the order of the response.
        // A reservation names its address, so its family is whichever of
        // the two the driver finds it in.
        let families: &[bool] = match (family, additional) {
            _ if token.is_some() => &[false, true],
            (_, Some(_)) => &[false, true],
            (None | Some(FAMILY_IPV4), None) => &[false],
            (Some(FAMILY_IPV6), None) => &[true],
            (Some(_), None) => return Err(RequestError::AddressFamilyNotSupported),
        };
        let turn = self.config.turn.as_ref().expect("TURN requests reach here only with TURN on");
        let requested = request
            .attribute(AttrType::LIFETIME)
            .map(attr::read_u32)
            .transpose()
            .map_err(|_| RequestError::BadRequest("LIFETIME malformed"))?;
        let lifetime = initial_lifetime(requested, turn.default_lifetime, turn.max_lifetime);
        let port = match (token, even_port) {
            (Some(token), _) => PortRequest::Reserved(token),
            (None, Some(reserve_next)) => PortRequest::Even { reserve_next },
            (None, None) => PortRequest::Any,
        };
        if self.draining {
            return Err(match self.alternate_server(tuple) {
                Some(alternate) => RequestError::TryAlternate(alternate),
                None => RequestError::InsufficientCapacity("server draining: no new allocations"),
            });
        }
        let quota_key = quota_key(identity, tuple);
        match driver.acquire_quota(&quota_key) {
            Ok(()) => {}
            Err(QuotaError::User) => return Err(RequestError::QuotaReached),
            Err(QuotaError::Total) => {
                return Err(match self.alternate_server(tuple) {
                    Some(alternate) => RequestError::TryAlternate(alternate),
                    None => RequestError::InsufficientCapacity("total allocation quota reached"),
                });
            }
        }
        let id = self.table.next_id();
        let mut relayed = Vec::with_capacity(families.len());
        let mut reservation = None;
        let mut refused = Vec::new();
        for &ipv6 in families {
            if token.is_some() && !relayed.is_empty() {
                break;
            }
            let ip = match token {
                Some(_) => Ok(if ipv6 { Ipv6Addr::UNSPECIFIED.into() } else { Ipv4Addr::UNSPECIFIED.into() }),
                None => self.relay_ip(tuple, ipv6),
            };
            let opened = ip.and_then(|ip| {
                let (relay, request) = (RelayId::new(id, ipv6), RelayRequest { ip, port, dont_fragment });
                let opened =
                    if tcp { driver.open_tcp_relay(relay, &request) } else { driver.open_relay(relay, &request) };
                opened.map_err(relay_error)
            });
            match opened {
                Ok(opened) => {
                    let turn = self.config.turn.as_ref().expect("TURN requests reach here only with TURN on");
                    relayed.push(Relayed { addr: opened.addr, advertised: advertise(&turn.external_ips, opened.addr) });
                    reservation = reservation.or(opened.reservation);
                }
                Err(error) => refused.push((ipv6, error)),
            }
        }
        if relayed.is_empty() {
            driver.release_quota(&quota_key);
            let (_, error) = refused.into_iter().next().expect("every family was refused");
            return Err(error);
        }
        let span = info_span!(
            target: LOG_TARGET,
            "alloc",
            id = id.0,
            client = %tuple.client,
            transport = %tuple.transport,
            relay = %relayed[0].advertised,
        );
        let mut allocation = Allocation::new(
            *tuple,
            client,
            &relayed,
            &identity.username,
            &quota_key,
            now.instant + lifetime,
            request.transaction_id(),
            reservation,
            span,
        );
        // A dual allocation that got one family says why not the other in
        // every answer to its Allocate, retransmissions included.
        if token.is_none() {
            allocation.refused_family = refused.first().map(|(ipv6, error)| (*ipv6, error.code()));
        }
        allocation.tcp_relay = tcp;
        let max_bps = self.config.turn.as_ref().map_or(0, |t| t.max_bps);
        if max_bps > 0 {
            allocation.bandwidth =
                Some(Box::new([ByteBucket::new(max_bps, now.instant), ByteBucket::new(max_bps, now.instant)]));
        }
        if let Some(second) = relayed.get(1) {
            info!(target: LOG_TARGET, parent: &allocation.span, user = &*identity.username, lifetime = lifetime.as_secs(), also = %second.advertised, "allocation created");
        } else {
            info!(target: LOG_TARGET, parent: &allocation.span, user = &*identity.username, lifetime = lifetime.as_secs(), "allocation created");
        }
        let inserted = self.table.insert(allocation);
        debug_assert_eq!(inserted, id);
        self.stats.allocations_created += 1;
        self.allocate_success(now, id, request, identity, reply);
        Ok(())
    }

    fn allocate_success(
        &mut self,
        now: Now,
        id: AllocationId,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
    ) {
        let allocation = self.table.get(id).expect("caller found it");
        let mut advertised = allocation.relayed_addresses().map(|r| r.advertised);
        let (first, second) = (advertised.next(), advertised.next());
        let (client, lifetime, token, refused) = (
            allocation.tuple.client,
            allocation.remaining_secs(now.instant),
            allocation.reservation_token,
            allocation.refused_family,
        );
        let reason_phrases = self.config.reason_phrases;
        self.success_response(request, identity.key.as_ref(), reply, |w| {
            for relayed in first.iter().chain(&second) {
                w.xor_address(AttrType::XOR_RELAYED_ADDRESS, relayed);
            }
            if let Some((ipv6, code)) = refused {
                let family = if ipv6 { FAMILY_IPV6 } else { FAMILY_IPV4 };
                w.address_error_code(family, code, reason_phrases.then(|| code.reason()));
            }
            w.attr_u32(AttrType::LIFETIME, lifetime);
            if let Some(token) = token {
                w.attr(AttrType::RESERVATION_TOKEN, &token);
            }
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, &client);
        });
    }

    /// RFC 8656 §7.3.
    fn refresh(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
        driver: &mut dyn Driver,
    ) -> Result<(), RequestError> {
        let id = self.live_allocation(now, tuple, identity, driver)?;
        let turn = self.config.turn.as_ref().expect("TURN requests reach here only with TURN on");
        let (default_lifetime, max_lifetime) = (turn.default_lifetime, turn.max_lifetime);
        let allocation = self.table.get_mut(id).expect("found above");
        // RFC 8656 §7.3: REQUESTED-ADDRESS-FAMILY names one relayed address
        // of the allocation (443 if it has none of that family); with
        // LIFETIME 0 only that one goes, when a dual allocation has two.
        let only_family = match request.attribute(AttrType::REQUESTED_ADDRESS_FAMILY) {
            Some(value) => {
                let ipv6 = match attr::read_address_family(value) {
                    Ok(FAMILY_IPV4) => false,
                    Ok(FAMILY_IPV6) => true,
                    Ok(_) => return Err(RequestError::PeerAddressFamilyMismatch),
                    Err(_) => return Err(RequestError::BadRequest("REQUESTED-ADDRESS-FAMILY malformed")),
                };
                if allocation.relayed(ipv6).is_none() {
                    return Err(RequestError::PeerAddressFamilyMismatch);
                }
                Some(ipv6)
            }
            None => None,
        };
        let requested = request
            .attribute(AttrType::LIFETIME)
            .map(attr::read_u32)
            .transpose()
            .map_err(|_| RequestError::BadRequest("LIFETIME malformed"))?;
        let lifetime = match requested {
            Some(0) => Duration::ZERO,
            requested => initial_lifetime(requested, default_lifetime, max_lifetime),
        };
        let mut reported = lifetime;
        if lifetime.is_zero() {
            match only_family.and_then(|ipv6| allocation.drop_relayed(ipv6)) {
                Some(dropped) => {
                    info!(target: LOG_TARGET, parent: &allocation.span, relay = %dropped.advertised, "relayed address deleted");
                    driver.close_relay(RelayId::new(id, dropped.addr.is_ipv6()));
                    // The rest of the allocation lives on as it was.
                    reported = allocation.expires.saturating_duration_since(now.instant);
                }
                None => self.delete(id, driver, "refreshed with lifetime 0"),
            }
        } else {
            allocation.expires = now.instant + lifetime;
            debug!(parent: &allocation.span, lifetime = lifetime.as_secs(), "refreshed");
        }
        let lifetime = reported;
        self.success_response(request, identity.key.as_ref(), reply, |w| {
            w.attr_u32(AttrType::LIFETIME, u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX));
        });
        Ok(())
    }

    /// RFC 8656 §10.2: every XOR-PEER-ADDRESS is checked before any
    /// permission is installed, so a request succeeds or fails as a whole.
    fn create_permission(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<(), RequestError> {
        let id = self.table.find(tuple).ok_or(RequestError::NoAllocation)?;
        self.check_owner(now, id, identity)?;
        let mut peers = Vec::new();
        for attribute in request.attributes().filter(|a| a.typ == AttrType::XOR_PEER_ADDRESS) {
            let ip = self.checked_peer(id, attribute.value, request, Path::Request)?.ip();
            if !peers.contains(&ip) {
                peers.push(ip);
            }
        }
        if peers.is_empty() {
            return Err(RequestError::BadRequest("XOR-PEER-ADDRESS missing"));
        }
        let max_permissions = self.config.turn.as_ref().map_or(0, |t| t.max_permissions);
        let allocation = self.table.get_mut(id).expect("found above");
        // Expired permissions must not count against the limit before the sweep.
        allocation.expire_entries(now.instant);
        let added = peers.iter().filter(|ip| allocation.would_add_permission(**ip)).count();
        if allocation.permission_count() + added > max_permissions {
            return Err(RequestError::InsufficientCapacity("permission limit of the allocation reached"));
        }
        for ip in peers {
            allocation.install_permission(ip, now.instant);
            debug!(parent: &allocation.span, peer = %ip, "permission installed");
        }
        self.success_response(request, identity.key.as_ref(), reply, |_| {});
        Ok(())
    }

    /// RFC 8656 §11.2.
    fn channel_bind(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        request: &Message<'_>,
        identity: &Identity<'_>,
        reply: &mut Vec<u8>,
    ) -> Result<(), RequestError> {
        let id = self.table.find(tuple).ok_or(RequestError::NoAllocation)?;
        self.check_owner(now, id, identity)?;
        if self.table.get(id).is_some_and(|a| a.tcp_relay) {
            // RFC 6062 §4: a TCP allocation relays over connections, never channels.
            return Err(RequestError::BadRequest("ChannelBind on a TCP allocation"));
        }
        let number =
            request.attribute(AttrType::CHANNEL_NUMBER).ok_or(RequestError::BadRequest("CHANNEL-NUMBER missing"))?;
        let rfc5766 = self.config.turn.as_ref().is_some_and(|t| t.rfc5766_channels);
        let number = attr::read_channel_number(number)
            .ok()
            .and_then(if rfc5766 { ChannelNumber::new_rfc5766 } else { ChannelNumber::new })
            .ok_or(RequestError::BadRequest("channel number outside 0x4000-0x4FFF"))?;
        let peer = request
            .attribute(AttrType::XOR_PEER_ADDRESS)
            .ok_or(RequestError::BadRequest("XOR-PEER-ADDRESS missing"))?;
        let peer = self.checked_peer(id, peer, request, Path::Request)?;
        let turn = self.config.turn.as_ref().expect("TURN requests reach here only with TURN on");
        let (max_channels, max_permissions) = (turn.max_channels, turn.max_permissions);
        let allocation = self.table.get_mut(id).expect("found above");
        allocation.expire_entries(now.instant);
        allocation.bind_channel(number, peer, now.instant, max_channels, max_permissions).map_err(|e| match e {
            ChannelBindError::Conflict => RequestError::BadRequest("channel or peer already bound otherwise"),
            ChannelBindError::Capacity => RequestError::InsufficientCapacity("channel or permission limit reached"),
        })?;
        debug!(parent: &allocation.span, channel = number.get(), %peer, "channel bound");
        self.success_response(request, identity.key.as_ref(), reply, |_| {});
        Ok(())
    }

    /// RFC 8656 §11.1: a Send indication goes to its peer only with a
    /// permission; otherwise it is dropped silently.
    fn handle_send(&mut self, now: Now, tuple: &FiveTuple, message: &Message<'_>) -> ClientOutcome {
        let Some(id) = self.table.find(tuple) else { return self.drop_client_data("Send without allocation") };
        if self.table.get(id).is_some_and(|a| a.tcp_relay) {
            return self.drop_client_data("Send on a TCP allocation");
        }
        let Some(peer) = message.attribute(AttrType::XOR_PEER_ADDRESS) else {
            return self.drop_client_data("Send without XOR-PEER-ADDRESS");
        };
        let Some(data) = message.attributes().find(|a| a.typ == AttrType::DATA) else {
            return self.drop_client_data("Send without DATA");
        };
        let Ok(peer) = self.checked_peer(id, peer, message, Path::Send) else {
            return self.drop_client_data("Send to refused peer");
        };
        let allocation = self.table.get_mut(id).expect("indexed allocations exist");
        if allocation.is_expired(now.instant) || !allocation.has_permission(peer.ip(), now.instant) {
            return self.drop_client_data("Send without permission");
        }
        if !allocation.within_bandwidth(true, data.value.len(), now.instant) {
            self.stats.over_bandwidth += 1;
            return ClientOutcome::Dropped;
        }
        let start = data.offset + ATTR_HEADER_LEN;
        allocation.traffic.packets_to_peer += 1;
        allocation.traffic.bytes_to_peer += data.value.len() as u64;
        self.stats.relayed_to_peer += 1;
        self.stats.relayed_bytes_to_peer += data.value.len() as u64;
        ClientOutcome::Forward {
            relay: RelayId::new(id, peer.is_ipv6()),
            peer,
            payload: start..start + data.value.len(),
        }
    }

    /// RFC 8656 §12.6: ChannelData on a bound channel goes to its peer.
    fn handle_channel_data(&mut self, now: Now, tuple: &FiveTuple, packet: &[u8]) -> ClientOutcome {
        let data = match ChannelData::parse(packet) {
            Ok(data) => data,
            Err(error) => return self.drop_malformed(tuple, error),
        };
        let Some(id) = self.table.find(tuple) else { return self.drop_client_data("ChannelData without allocation") };
        let allocation = self.table.get_mut(id).expect("indexed allocations exist");
        if allocation.is_expired(now.instant) {
            return self.drop_client_data("ChannelData on expired allocation");
        }
        let Some(peer) = allocation.channel_peer(data.channel, now.instant) else {
            return self.drop_client_data("ChannelData on unbound channel");
        };
        if !allocation.within_bandwidth(true, data.payload.len(), now.instant) {
            self.stats.over_bandwidth += 1;
            return ClientOutcome::Dropped;
        }
        allocation.traffic.packets_to_peer += 1;
        allocation.traffic.bytes_to_peer += data.payload.len() as u64;
        self.stats.relayed_to_peer += 1;
        self.stats.relayed_bytes_to_peer += data.payload.len() as u64;
        let start = channel_data::HEADER_LEN;
        ClientOutcome::Forward {
            relay: RelayId::new(id, peer.is_ipv6()),
            peer,
            payload: start..start + data.payload.len(),
        }
    }

    /// The allocation of `tuple` if it is alive and `identity` owns it.
    fn live_allocation(
        &mut self,
        now: Now,
        tuple: &FiveTuple,
        identity: &Identity<'_>,
        driver: &mut dyn Driver,
    ) -> Result<AllocationId, RequestError> {
        let id = self.table.find(tuple).ok_or(RequestError::NoAllocation)?;
        if self.table.get(id).is_some_and(|a| a.is_expired(now.instant)) {
            self.delete(id, driver, "expired");
            return Err(RequestError::NoAllocation);
        }
        self.check_owner(now, id, identity)?;
        Ok(id)
    }

    /// 437 for an expired allocation, 441 for another user's (RFC 8656 §5).
    fn check_owner(&self, now: Now, id: AllocationId, identity: &Identity<'_>) -> Result<(), RequestError> {
        let allocation = self.table.get(id).ok_or(RequestError::NoAllocation)?;
        if allocation.is_expired(now.instant) {
            return Err(RequestError::NoAllocation);
        }
        if identity.key.is_some() && *allocation.username != *identity.username {
            return Err(RequestError::WrongCredentials);
        }
        Ok(())
    }

    /// Reads a XOR-PEER-ADDRESS and applies the family check (443) and the
    /// peer policy (403). Returns the peer in canonical form.
    fn checked_peer(
        &mut self,
        id: AllocationId,
        value: &[u8],
        message: &Message<'_>,
        path: Path,
    ) -> Result<SocketAddr, RequestError> {
        let peer = attr::read_xor_address(value, &message.transaction_id())
            .map_err(|_| RequestError::BadRequest("XOR-PEER-ADDRESS malformed"))?;
        let ip = policy::canonical(peer.ip());
        let allocation = self.table.get(id).ok_or(RequestError::NoAllocation)?;
        if allocation.relayed(ip.is_ipv6()).is_none() {
            return Err(RequestError::PeerAddressFamilyMismatch);
        }
        let policy = &self.config.turn.as_ref().expect("TURN is on").policy;
        match policy.check(ip) {
            Ok(ip) => Ok(SocketAddr::new(ip, peer.port())),
            Err(rule) => {
                self.stats.peers_forbidden += 1;
                match path {
                    Path::Request => {
                        info!(parent: &allocation.span, client = %allocation.tuple.client, peer = %ip, %rule, "peer refused")
                    }
                    Path::Send => {
                        debug!(parent: &allocation.span, client = %allocation.tuple.client, peer = %ip, %rule, "Send to refused peer")
                    }
                }
                Err(RequestError::PeerForbidden(rule))
            }
        }
    }

    /// The relay IP for a new allocation: a configured relay IP of the family
    /// (round robin), or the address the request arrived on.
    fn relay_ip(&mut self, tuple: &FiveTuple, ipv6: bool) -> Result<IpAddr, RequestError> {
        let turn = self.config.turn.as_ref().expect("TURN is on");
        let candidates = turn.relay_ips.iter().filter(|ip| ip.is_ipv6() == ipv6);
        let count = candidates.clone().count();
        if count > 0 {
            self.relay_cursor = self.relay_cursor.wrapping_add(1);
            return Ok(*candidates.clone().nth(self.relay_cursor % count).expect("index below count"));
        }
        if turn.relay_ips.is_empty() && tuple.server.is_ipv6() == ipv6 && !tuple.server.ip().is_unspecified() {
            return Ok(tuple.server.ip());
        }
        Err(RequestError::AddressFamilyNotSupported)
    }

    /// The next configured alternate server (round robin) of the address
    /// family of the listener the client reached, so the client can reach
    /// it the same way. An IPv4 client on a dual-stack socket counts as IPv4.
    fn alternate_server(&mut self, tuple: &FiveTuple) -> Option<SocketAddr> {
        let ipv4 = match tuple.server.ip() {
            IpAddr::V4(_) => true,
            IpAddr::V6(ip) => ip.to_ipv4_mapped().is_some(),
        };
        let alternates = &self.config.turn.as_ref()?.alternate_servers;
        let count = alternates.iter().filter(|a| a.is_ipv4() == ipv4).count();
        if count == 0 {
            return None;
        }
        let chosen = alternates.iter().filter(|a| a.is_ipv4() == ipv4).nth(self.alternate_cursor % count).copied();
        self.alternate_cursor = self.alternate_cursor.wrapping_add(1);
        chosen
    }

    fn delete(&mut self, id: AllocationId, driver: &mut dyn Driver, reason: &'static str) {
        let Some(allocation) = self.table.remove(id) else { return };
        self.close_tcp_connections(id, &allocation.tuple, driver);
        for relayed in allocation.relayed_addresses() {
            driver.close_relay(RelayId::new(id, relayed.addr.is_ipv6()));
        }
        driver.release_quota(&allocation.quota_key);
        self.stats.allocations_deleted += 1;
        let t = allocation.traffic;
        info!(
            target: LOG_TARGET,
            parent: &allocation.span,
            reason,
            packets_to_peer = t.packets_to_peer,
            bytes_to_peer = t.bytes_to_peer,
            packets_to_client = t.packets_to_client,
            bytes_to_client = t.bytes_to_client,
            "allocation deleted"
        );
    }

    /// RFC 8489 §6.3.1: XOR-MAPPED-ADDRESS is the source of the request as
    /// tern saw it. With NAT behaviour discovery, RFC 5780 §6.1 adds
    /// MAPPED-ADDRESS, RESPONSE-ORIGIN and OTHER-ADDRESS, honours
    /// CHANGE-REQUEST and RESPONSE-PORT, and pads the response when asked,
    /// but never beyond the request's own size: the answer must not become
    /// an amplifier.
    fn binding_success(&mut self, tuple: &FiveTuple, request: &Message<'_>, reply: &mut Vec<u8>) -> ClientOutcome {
        let plan = match self.config.nat_discovery.as_ref().map(|d| d.plan(tuple, request)).transpose() {
            Ok(plan) => plan.flatten(),
            Err(error) => {
                debug!(client = %tuple.client, %error, "Binding request refused");
                self.error_response(request, error.code(), None, reply, |_| {});
                return ClientOutcome::Replied;
            }
        };
        let trailer = self.trailer_len(request);
        let request_len = request.as_bytes().len();
        self.success_response(request, None, reply, |w| {
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, &tuple.client);
            if let Some(plan) = &plan {
                // Both forms, so a client can spot an ALG rewriting addresses (§3.6).
                w.address(AttrType::MAPPED_ADDRESS, &tuple.client);
                w.address(AttrType::RESPONSE_ORIGIN, &plan.origin);
                w.address(AttrType::OTHER_ADDRESS, &plan.other);
                if plan.padding {
                    let room = request_len.saturating_sub(w.len() + ATTR_HEADER_LEN + trailer) & !3;
                    w.attr_with(AttrType::PADDING, room, |out| out.fill(0));
                }
            }
        });
        self.stats.binding_responses += 1;
        trace!(client = %tuple.client, transport = %tuple.transport, "binding success");
        match plan {
            Some(plan) if plan.origin != tuple.server || plan.destination != tuple.client => {
                ClientOutcome::RepliedFrom { source: plan.origin, destination: plan.destination }
            }
            _ => ClientOutcome::Replied,
        }
    }

    /// RFC 3489 §11.2: MAPPED-ADDRESS and SOURCE-ADDRESS, transaction ID echoed
    /// in full (the "cookie" bytes are part of it).
    fn handle_rfc3489(&mut self, tuple: &FiveTuple, request: &Message<'_>, reply: &mut Vec<u8>) -> ClientOutcome {
        if request.class() != Class::Request || request.method() != Method::BINDING {
            return self.drop_malformed(tuple, ParseError::NoMagicCookie);
        }
        self.stats.requests += 1;
        // RFC 3489 §11.2.4: the CHANGE-REQUEST RFC 5780 took over, answered
        // from the same addresses. Without discovery on this address (or on
        // a connection) it cannot be honoured, and a classic client takes an
        // answer from the usual address for a NAT that let it through, so
        // it gets an error instead.
        let change = match request.attribute(AttrType::CHANGE_REQUEST).map(attr::read_change_request).transpose() {
            Ok(change) => change.unwrap_or_default(),
            Err(error) => return self.drop_malformed(tuple, error),
        };
        let discovery = self.config.nat_discovery.filter(|d| d.serves(tuple.server));
        let origin = match discovery.and_then(|d| d.origin(tuple.server, change)) {
            Some(origin) if tuple.transport == Transport::Udp || !change.is_change() => origin,
            _ if !change.is_change() => tuple.server,
            _ => {
                let code = if discovery.is_some() { ErrorCode::BAD_REQUEST } else { ErrorCode::UNKNOWN_ATTRIBUTE };
                let mut w = MessageWriter::with_header_tail(
                    reply,
                    MessageType::new(Method::BINDING, Class::Error),
                    request.header_tail(),
                );
                w.error_code(code, self.config.reason_phrases.then(|| code.reason()));
                if code == ErrorCode::UNKNOWN_ATTRIBUTE {
                    // RFC 3489 §11.2.10 lists an even number of types,
                    // repeating one when needed.
                    w.unknown_attributes(&[AttrType::CHANGE_REQUEST, AttrType::CHANGE_REQUEST]);
                }
                self.stats.error_responses += 1;
                debug!(client = %tuple.client, code = code.0, "classic CHANGE-REQUEST refused");
                return ClientOutcome::Replied;
            }
        };
        let mut w = MessageWriter::with_header_tail(
            reply,
            MessageType::new(Method::BINDING, Class::Success),
            request.header_tail(),
        );
        w.address(AttrType::MAPPED_ADDRESS, &tuple.client);
        w.address(AttrType::SOURCE_ADDRESS, &origin);
        if let Some(discovery) = discovery
            && let Some(other) =
                discovery.origin(tuple.server, attr::ChangeRequest { change_ip: true, change_port: true })
        {
            w.address(AttrType::CHANGED_ADDRESS, &other);
        }
        self.stats.binding_responses += 1;
        trace!(client = %tuple.client, "classic binding success");
        if origin == tuple.server {
            ClientOutcome::Replied
        } else {
            ClientOutcome::RepliedFrom { source: origin, destination: tuple.client }
        }
    }

    fn success_response(
        &self,
        request: &Message<'_>,
        key: Option<&SigningKey>,
        reply: &mut Vec<u8>,
        attributes: impl FnOnce(&mut MessageWriter<'_>),
    ) {
        let mut w =
            MessageWriter::new(reply, MessageType::new(request.method(), Class::Success), request.transaction_id());
        attributes(&mut w);
        self.finish_response(&mut w, request, key);
    }

    fn error_response(
        &mut self,
        request: &Message<'_>,
        code: ErrorCode,
        key: Option<&SigningKey>,
        reply: &mut Vec<u8>,
        extra: impl FnOnce(&mut MessageWriter<'_>),
    ) {
        let mut w =
            MessageWriter::new(reply, MessageType::new(request.method(), Class::Error), request.transaction_id());
        w.error_code(code, self.config.reason_phrases.then(|| code.reason()));
        extra(&mut w);
        self.finish_response(&mut w, request, key);
        self.stats.error_responses += 1;
    }

    /// Bytes [`Self::finish_response`] appends after the attributes of an
    /// unauthenticated response: SOFTWARE and FINGERPRINT.
    fn trailer_len(&self, request: &Message<'_>) -> usize {
        let software = self.config.software.as_ref().map_or(0, |s| ATTR_HEADER_LEN + ((s.len() + 3) & !3));
        let fingerprint = if request.has_fingerprint() { ATTR_HEADER_LEN + 4 } else { 0 };
        software + fingerprint
    }

    /// SOFTWARE when configured; the request's kind of integrity
    /// (MESSAGE-INTEGRITY or MESSAGE-INTEGRITY-SHA256) with its key when it
    /// was authenticated (RFC 8489 §9.2.4: every such response is signed);
    /// FINGERPRINT when the request had one (§7.3.1.1).
    fn finish_response(&self, w: &mut MessageWriter<'_>, request: &Message<'_>, key: Option<&SigningKey>) {
        if let Some(software) = &self.config.software {
            w.attr(AttrType::SOFTWARE, software.as_bytes());
        }
        if let Some(key) = key {
            key.sign(w);
        }
        if request.has_fingerprint() {
            w.fingerprint();
        }
    }

    /// Whether an answer without credentials to this client would exceed its
    /// source's budget; counted when it does.
    fn over_rate_limit(&mut self, now: Now, tuple: &FiveTuple) -> bool {
        if self.limiter.allow(tuple.client.ip(), now.instant) {
            return false;
        }
        self.stats.rate_limited += 1;
        trace!(client = %tuple.client, "unauthenticated answer rate-limited");
        true
    }

    fn drop_malformed(&mut self, tuple: &FiveTuple, error: ParseError) -> ClientOutcome {
        self.stats.malformed += 1;
        trace!(client = %tuple.client, %error, "dropped malformed packet");
        ClientOutcome::Dropped
    }

    fn drop_client_data(&mut self, why: &'static str) -> ClientOutcome {
        self.stats.dropped_client_data += 1;
        trace!(why, "client data dropped");
        ClientOutcome::Dropped
    }
}

/// Who an allocation counts against for `user_quota`: the user, and for a
/// REST API credential (`EXPIRY:USER`) the user part, or every fresh
/// credential would bring a fresh quota. Without authentication, the client IP.
fn quota_key(identity: &Identity<'_>, tuple: &FiveTuple) -> String {
    match identity.key {
        Some(_) => match identity.username.split_once(':') {
            Some((expiry, user)) if !expiry.is_empty() && expiry.bytes().all(|b| b.is_ascii_digit()) => user.to_owned(),
            _ => identity.username.clone().into_owned(),
        },
        None => tuple.client.ip().to_string(),
    }
}

/// RFC 8656 §7.2, and §7.3 for a non-zero Refresh: the client's LIFETIME
/// capped at the maximum, but never below the default.
fn initial_lifetime(requested: Option<u32>, default: Duration, max: Duration) -> Duration {
    match requested {
        Some(secs) => Duration::from_secs(u64::from(secs)).min(max).max(default),
        None => default,
    }
}

/// The address to advertise for a relay bound to `relayed`.
fn advertise(external: &[ExternalIp], relayed: SocketAddr) -> SocketAddr {
    let ip = relayed.ip();
    let public = external
        .iter()
        .find(|e| e.private == Some(ip))
        .or_else(|| external.iter().find(|e| e.private.is_none() && e.public.is_ipv4() == ip.is_ipv4()))
        .map_or(ip, |e| e.public);
    SocketAddr::new(public, relayed.port())
}

/// Writes a ChannelData header before the payload (and, on streams, padding
/// after it). Returns the frame's bounds in the slot.
fn write_channel_data(
    slot: &mut [u8],
    headroom: usize,
    len: usize,
    channel: ChannelNumber,
    stream: bool,
) -> Option<(usize, usize)> {
    let start = headroom.checked_sub(channel_data::HEADER_LEN)?;
    let mut header = [0u8; channel_data::HEADER_LEN];
    channel_data::write_header(&mut header, channel, u16::try_from(len).ok()?);
    slot[start..headroom].copy_from_slice(&header);
    let end = if stream { start + channel_data::padded_frame_len(len) } else { headroom + len };
    slot.get_mut(headroom + len..end)?.fill(0);
    Some((start, end))
}

/// Writes a Data indication (RFC 8656 §11.4) around the payload: STUN
/// header, XOR-PEER-ADDRESS, DATA header before it, padding after it.
fn write_data_indication(
    slot: &mut [u8],
    headroom: usize,
    len: usize,
    peer: SocketAddr,
    tid: [u8; 12],
) -> Option<(usize, usize)> {
    let address_len = attr::address_value_len(&peer);
    let header_len = HEADER_LEN + ATTR_HEADER_LEN + address_len + ATTR_HEADER_LEN;
    let start = headroom.checked_sub(header_len)?;
    let padded = (len + 3) & !3;
    let message_len = u16::try_from(header_len - HEADER_LEN + padded).ok()?;
    let data_len = u16::try_from(len).ok()?;
    let out = slot.get_mut(start..headroom + padded)?;
    out[..2].copy_from_slice(&MessageType::new(Method::DATA, Class::Indication).to_u16().to_be_bytes());
    out[2..4].copy_from_slice(&message_len.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..20].copy_from_slice(&tid);
    let mut at = HEADER_LEN;
    out[at..at + 2].copy_from_slice(&AttrType::XOR_PEER_ADDRESS.0.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&(address_len as u16).to_be_bytes());
    at += ATTR_HEADER_LEN;
    let tid = crate::proto::stun::TransactionId(tid);
    attr::write_address(&mut out[at..at + address_len], &peer, Some(&tid));
    at += address_len;
    out[at..at + 2].copy_from_slice(&AttrType::DATA.0.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&data_len.to_be_bytes());
    out[header_len + len..].fill(0);
    Some((start, headroom + padded))
}

/// A Data indication's transaction ID: the server's random prefix and a
/// counter, unique without a random draw per packet.
fn next_indication_tid(prefix: &[u8; 4], counter: &mut u64) -> [u8; 12] {
    *counter += 1;
    let mut tid = [0u8; 12];
    tid[..4].copy_from_slice(prefix);
    tid[4..].copy_from_slice(&counter.to_be_bytes());
    tid
}

/// What the client is told when no relay socket could be opened.
fn relay_error(error: RelayError) -> RequestError {
    match error {
        RelayError::NoPorts => RequestError::InsufficientCapacity("relay port range exhausted"),
        RelayError::BadToken => RequestError::InsufficientCapacity("reservation token unknown or expired"),
        RelayError::DontFragmentUnsupported => RequestError::UnsupportedAttribute(AttrType::DONT_FRAGMENT.0),
        RelayError::Unavailable => RequestError::InsufficientCapacity("relay socket unavailable"),
    }
}

mod tcp_relay;
#[cfg(test)]
mod tests;

use tcp_relay::check_tcp_allocate;
