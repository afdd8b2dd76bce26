//! `server_inputs`: a sequence of operations, decoded from the input with
//! `arbitrary`, fed to the sans-IO `Server` with a fake driver and clock.
//!
//! Operations: raw datagrams and well-formed STUN/TURN requests (built from
//! fuzzed fields, optionally signed with a known user's key and the nonce
//! learnt from an earlier 401/438, so the authenticated paths are reached)
//! from a few client 5-tuples over UDP, TCP and TLS; ChannelData; peer
//! datagrams through `handle_peer`; clock steps; `handle_timeout`;
//! `handle_connection_closed`. The server runs anonymous (`auth: None`) or
//! with long-term credentials, as the first bytes of the input choose.
//!
//! After every step the harness asserts:
//! - nothing panicked;
//! - `table().is_consistent()`;
//! - the fake driver's open relays are exactly the table's allocations, and
//!   no two allocations share a relayed address;
//! - the quota counts are exactly the table's allocations per quota key;
//! - no relay IP has more allocations than its fake port pool has ports, and
//!   no allocation more permissions or channels than configured;
//! - every reply is one STUN response of the request's method and
//!   transaction ID; it is signed only when the request was an
//!   authenticated TURN request, and a signed reply to a request we signed
//!   verifies with our key;
//! - a reply that is not signed (its request was not authenticated) is at
//!   most `AMPLIFICATION_BOUND` bytes longer than the request;
//! - data is forwarded only to a peer the policy allows, from a live
//!   allocation, with a range inside the packet;
//! - a peer datagram is relayed only with a permission, as a ChannelData
//!   frame or Data indication that reads back to the same peer and payload;
//! - after `handle_timeout`, no expired allocation is left.

#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tern::proto::allocation::{AllocationId, ClientHandle, RelayId};
use tern::proto::auth::{Authenticator, LongTermKey, StaticCredentials, UserKeys, rest_password};
use tern::proto::channel_data::{self, ChannelData};
use tern::proto::policy::{self, PeerPolicy};
use tern::proto::rate_limit::RateLimit;
use tern::proto::server::{
    ClientOutcome, Driver, IcmpReport, PEER_HEADROOM, PEER_TAILROOM, PortRequest, QuotaError, RelayError, RelayOpened,
    RelayRequest, Server, ServerConfig, TurnConfig,
};
use tern::proto::stun::attr::{self, FAMILY_IPV4, FAMILY_IPV6};
use tern::proto::stun::integrity::long_term_key_md5;
use tern::proto::stun::{AttrType, Class, Message, MessageType, MessageWriter, Method, TransactionId};
use tern::proto::{FiveTuple, Now, Transport};

/// Most bytes an unauthenticated request's reply may add to the request
/// (issue 6 item 3). The largest today is a 401 with a reason phrase:
/// ERROR-CODE (24), REALM (16), NONCE (44, with RFC 8489's nonce cookie) and
/// PASSWORD-ALGORITHMS (12) after a 20-byte request.
const AMPLIFICATION_BOUND: usize = 128;
/// Operations per input, attributes per request and bytes per value: enough
/// to reach every path, small enough to keep runs fast and messages < 64 KiB.
const MAX_OPS: usize = 64;
const MAX_ATTRS: usize = 12;
const MAX_VALUE: usize = 512;

const REALM: &str = "example.org";
const USERS: [(&str, &str); 2] = [("alice", "alice-password"), ("bob", "bob-password")];
const REST_SECRET: &[u8] = b"rest-secret";
const REST_USERS: [&str; 2] = ["carol", "dave"];
const NONCE_LIFETIME: u64 = 600;
const UNIX_START: u64 = 1_800_000_000;
/// Each relay IP's fake pool: 8 ports, so exhaustion is near.
const PORT_MIN: u16 = 50000;
const PORT_MAX: u16 = 50007;
const RESERVATION_LIFETIME: Duration = Duration::from_secs(30);

/// Client 5-tuples: two on one IP (they share an anonymous quota and a
/// nonce), TCP and TLS, IPv6, and one that arrived on a wildcard address.
const CLIENTS: [(&str, &str, Transport); 6] = [
    ("198.51.100.1:40000", "192.0.2.10:3478", Transport::Udp),
    ("198.51.100.1:40001", "192.0.2.10:3478", Transport::Udp),
    ("198.51.100.2:40000", "192.0.2.10:3478", Transport::Tcp),
    ("198.51.100.2:40001", "192.0.2.10:5349", Transport::Tls),
    ("[2001:db8:1::1]:40000", "[2001:db8::10]:3478", Transport::Udp),
    ("198.51.100.3:40000", "0.0.0.0:3478", Transport::Udp),
];

/// Peers: public ones the default policy allows, an IPv4-mapped public one,
/// and loopback, private, metadata and mapped-loopback ones it refuses.
const PEERS: [&str; 9] = [
    "8.8.8.8:1000",
    "1.1.1.1:2000",
    "[2606:4700::1111]:4000",
    "[::ffff:8.8.8.8]:1000",
    "127.0.0.1:9",
    "[::ffff:127.0.0.1]:9",
    "10.0.0.1:9",
    "169.254.169.254:80",
    "[::1]:9",
];

// ---------------------------------------------------------------------------
// The input
// ---------------------------------------------------------------------------

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    /// Long-term credentials, or anonymous relaying.
    authenticated: bool,
    rfc3489: bool,
    reason_phrases: bool,
    rfc5766_channels: bool,
    relay_ips: RelayIps,
    /// Taken modulo small numbers; 0 means no limit.
    user_quota: u8,
    total_quota: u8,
    max_permissions: u8,
    max_channels: u8,
}

#[derive(Arbitrary, Debug)]
enum RelayIps {
    /// The address each Allocate arrived on.
    Listener,
    V4,
    Both,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Request {
        client: u8,
        request: Request,
    },
    Datagram {
        client: u8,
        bytes: Vec<u8>,
    },
    ChannelData {
        client: u8,
        channel: Channel,
        payload: Vec<u8>,
    },
    Peer {
        allocation: u8,
        peer: Peer,
        payload: Vec<u8>,
    },
    /// A large peer datagram, to reach the 16-bit length limits.
    LargePeer {
        allocation: u8,
        peer: Peer,
        len: u16,
    },
    /// An ICMP error the relay socket got for a datagram to `peer`.
    Icmp {
        allocation: u8,
        peer: Peer,
        ipv6: bool,
        icmp_type: u8,
        icmp_code: u8,
        mtu: u32,
    },
    Advance(Step),
    Timeout,
    ConnectionClosed {
        client: u8,
    },
}

#[derive(Arbitrary, Debug)]
enum Step {
    Millis(u16),
    Seconds(u16),
    Minutes(u8),
}

#[derive(Arbitrary, Debug)]
struct Request {
    method: MethodChoice,
    class: ClassChoice,
    /// Reuse this client's last transaction ID (a retransmission).
    retransmit: bool,
    attrs: Vec<Attr>,
    auth: Auth,
    fingerprint: bool,
}

#[derive(Arbitrary, Debug)]
enum MethodChoice {
    Binding,
    Allocate,
    Refresh,
    CreatePermission,
    ChannelBind,
    Send,
    Other(u16),
}

#[derive(Arbitrary, Debug)]
enum ClassChoice {
    /// Indication for Send, request for the rest.
    Usual,
    Indication,
    Response,
}

#[derive(Arbitrary, Debug)]
enum Attr {
    RequestedTransport(Protocol),
    Lifetime(u32),
    XorPeer(Peer),
    ChannelNumber(Channel),
    Data(Vec<u8>),
    EvenPort(bool),
    ReservationToken(Token),
    RequestedFamily(Family),
    AdditionalFamily(Family),
    DontFragment,
    Raw(u16, Vec<u8>),
}

impl Attr {
    /// Whether a fuzzed attribute before the harness's own credentials
    /// decides what the server reads (a second MESSAGE-INTEGRITY hides our
    /// USERNAME: 400; a lone PASSWORD-ALGORITHMS: 400).
    fn touches_credentials(&self) -> bool {
        matches!(
            self,
            Attr::Raw(typ, _) if matches!(
                AttrType(*typ),
                AttrType::USERNAME
                    | AttrType::USERHASH
                    | AttrType::REALM
                    | AttrType::NONCE
                    | AttrType::PASSWORD_ALGORITHMS
                    | AttrType::PASSWORD_ALGORITHM
                    | AttrType::MESSAGE_INTEGRITY
                    | AttrType::MESSAGE_INTEGRITY_SHA256
                    | AttrType::FINGERPRINT
            )
        )
    }
}

#[derive(Arbitrary, Debug)]
enum Protocol {
    Udp,
    Other(u8),
}

#[derive(Arbitrary, Debug)]
enum Family {
    V4,
    V6,
    Other(u8),
}

impl Family {
    fn value(&self) -> u8 {
        match self {
            Family::V4 => FAMILY_IPV4,
            Family::V6 => FAMILY_IPV6,
            Family::Other(f) => *f,
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Token {
    /// One the server handed out earlier (by index).
    Known(u8),
    Raw([u8; 8]),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Channel {
    /// 0x4000..=0x4003: few, so binds collide.
    Low(u8),
    Raw(u16),
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Peer {
    Known(u8),
    V4([u8; 4], u16),
    V6([u8; 16], u16),
}

#[derive(Arbitrary, Debug)]
enum Auth {
    Unsigned,
    /// USERNAME, REALM, the nonce learnt for this client's IP, and
    /// MESSAGE-INTEGRITY with the user's key.
    Signed(Who),
    /// The same with a wrong password.
    WrongKey(Who),
    /// The same with a nonce of the fuzzer's choosing.
    ForgedNonce(Who, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Who {
    Static(u8),
    /// A REST API credential expiring `expiry` seconds from now.
    Rest(u8, i16),
}

// ---------------------------------------------------------------------------
// The fake driver
// ---------------------------------------------------------------------------

/// A port pool with the real one's contract and none of its randomness, so
/// a crash replays: lowest free port first.
struct FakePool {
    free: BTreeSet<u16>,
}

/// A [`Driver`] with port pools, reservations and quotas, and no sockets.
struct FakeDriver {
    pools: HashMap<IpAddr, FakePool>,
    reservations: HashMap<[u8; 8], (SocketAddr, Instant)>,
    next_token: u64,
    open: HashMap<RelayId, SocketAddr>,
    user_quota: u32,
    total_quota: u32,
    per_user: BTreeMap<String, u32>,
    total: u32,
    now: Instant,
}

impl FakeDriver {
    fn pool(&mut self, ip: IpAddr) -> &mut FakePool {
        self.pools.entry(ip).or_insert_with(|| FakePool { free: (PORT_MIN..=PORT_MAX).collect() })
    }

    /// Reservations past their 30 seconds give their port back.
    fn expire_reservations(&mut self) {
        let now = self.now;
        let expired: Vec<[u8; 8]> =
            self.reservations.iter().filter(|(_, (_, deadline))| *deadline <= now).map(|(t, _)| *t).collect();
        for token in expired {
            let (addr, _) = self.reservations.remove(&token).expect("listed above");
            self.pool(addr.ip()).free.insert(addr.port());
        }
    }
}

impl Driver for FakeDriver {
    fn open_relay(&mut self, id: RelayId, request: &RelayRequest) -> Result<RelayOpened, RelayError> {
        assert!(!self.open.contains_key(&id), "relay of {id:?} opened while open");
        assert_eq!(id.is_ipv6(), request.ip.is_ipv6(), "relay id and address of different families");
        self.expire_reservations();
        let (addr, reservation) = match request.port {
            PortRequest::Reserved(token) => {
                // A reservation is claimed only in its own family.
                match self.reservations.get(&token) {
                    Some((addr, _)) if addr.is_ipv6() == request.ip.is_ipv6() => {}
                    _ => return Err(RelayError::BadToken),
                }
                let (addr, _) = self.reservations.remove(&token).ok_or(RelayError::BadToken)?;
                (addr, None)
            }
            PortRequest::Even { reserve_next } => {
                let pool = self.pool(request.ip);
                let port = pool
                    .free
                    .iter()
                    .copied()
                    .find(|p| p % 2 == 0 && (!reserve_next || pool.free.contains(&(p + 1))))
                    .ok_or(RelayError::NoPorts)?;
                pool.free.remove(&port);
                let mut token = None;
                if reserve_next {
                    pool.free.remove(&(port + 1));
                    self.next_token += 1;
                    let next = SocketAddr::new(request.ip, port + 1);
                    let t = self.next_token.to_be_bytes();
                    self.reservations.insert(t, (next, self.now + RESERVATION_LIFETIME));
                    token = Some(t);
                }
                (SocketAddr::new(request.ip, port), token)
            }
            PortRequest::Any => {
                let port = self.pool(request.ip).free.pop_first().ok_or(RelayError::NoPorts)?;
                (SocketAddr::new(request.ip, port), None)
            }
        };
        self.open.insert(id, addr);
        Ok(RelayOpened { addr, reservation })
    }

    fn close_relay(&mut self, id: RelayId) {
        let addr = self.open.remove(&id).unwrap_or_else(|| panic!("close_relay({id:?}) of a relay not open"));
        assert!(self.pool(addr.ip()).free.insert(addr.port()), "port {addr} released twice");
    }

    fn acquire_quota(&mut self, user: &str) -> Result<(), QuotaError> {
        if self.total_quota != 0 && self.total >= self.total_quota {
            return Err(QuotaError::Total);
        }
        let count = self.per_user.get(user).copied().unwrap_or(0);
        if self.user_quota != 0 && count >= self.user_quota {
            return Err(QuotaError::User);
        }
        self.per_user.insert(user.to_owned(), count + 1);
        self.total += 1;
        Ok(())
    }

    fn release_quota(&mut self, user: &str) {
        let count = self.per_user.get_mut(user).unwrap_or_else(|| panic!("quota of {user:?} released, not held"));
        *count -= 1;
        if *count == 0 {
            self.per_user.remove(user);
        }
        self.total -= 1;
    }
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

struct Harness {
    server: Server,
    driver: FakeDriver,
    policy: PeerPolicy,
    authenticated: bool,
    max_permissions: usize,
    max_channels: usize,
    start: Instant,
    now: Now,
    /// Nonces learnt from 401 and 438 answers, by client IP.
    nonces: HashMap<IpAddr, Vec<u8>>,
    /// RESERVATION-TOKENs learnt from Allocate answers.
    tokens: Vec<[u8; 8]>,
    /// Each client's last transaction ID.
    last_tid: HashMap<usize, TransactionId>,
    tid_counter: u64,
}

/// One base instant for every run, so runs do not depend on when they happen.
fn base_instant() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(tern::io::clock::now)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address literal")
}

fn tuple(index: u8) -> (usize, FiveTuple) {
    let i = usize::from(index) % CLIENTS.len();
    let (client, server, transport) = CLIENTS[i];
    (i, FiveTuple { client: addr(client), server: addr(server), transport })
}

fn peer_addr(peer: Peer) -> SocketAddr {
    match peer {
        Peer::Known(i) => addr(PEERS[usize::from(i) % PEERS.len()]),
        Peer::V4(ip, port) => SocketAddr::new(IpAddr::V4(Ipv4Addr::from(ip)), port),
        Peer::V6(ip, port) => SocketAddr::new(IpAddr::V6(Ipv6Addr::from(ip)), port),
    }
}

fn channel_number(channel: Channel) -> u16 {
    match channel {
        Channel::Low(n) => 0x4000 + u16::from(n % 4),
        Channel::Raw(n) => n,
    }
}

fn capped(bytes: &[u8]) -> &[u8] {
    &bytes[..bytes.len().min(MAX_VALUE)]
}

impl Harness {
    fn new(setup: &Setup) -> Self {
        let auth = setup.authenticated.then(|| {
            let users = USERS
                .iter()
                .map(|(user, password)| ((*user).to_owned(), UserKeys::from_password(user, REALM, password)))
                .collect();
            let store = StaticCredentials::new(REALM, users, vec![REST_SECRET.to_vec()]);
            Authenticator::new(REALM.to_owned(), store, [7; 32], NONCE_LIFETIME)
        });
        let relay_ips = match setup.relay_ips {
            RelayIps::Listener => vec![],
            RelayIps::V4 => vec![addr("192.0.2.20:0").ip()],
            RelayIps::Both => vec![addr("192.0.2.20:0").ip(), addr("[2001:db8::20]:0").ip()],
        };
        let max_permissions = usize::from(setup.max_permissions % 5);
        let max_channels = usize::from(setup.max_channels % 5);
        let turn = TurnConfig {
            auth,
            relay_ips,
            max_permissions,
            max_channels,
            rfc5766_channels: setup.rfc5766_channels,
            ..TurnConfig::default()
        };
        let policy = turn.policy.clone();
        let server = Server::new(ServerConfig {
            software: None,
            rfc3489: setup.rfc3489,
            reason_phrases: setup.reason_phrases,
            turn: Some(turn),
            // Off: the harness checks every answer a request gets, and the
            // limiter's own table is bounded and unit-tested.
            rate_limit: RateLimit { per_second: 0.0, ..RateLimit::default() },
            nat_discovery: None,
        });
        let start = base_instant();
        let driver = FakeDriver {
            pools: HashMap::new(),
            reservations: HashMap::new(),
            next_token: 0,
            open: HashMap::new(),
            user_quota: u32::from(setup.user_quota % 4),
            total_quota: u32::from(setup.total_quota % 8),
            per_user: BTreeMap::new(),
            total: 0,
            now: start,
        };
        Self {
            server,
            driver,
            policy,
            authenticated: setup.authenticated,
            max_permissions,
            max_channels,
            start,
            now: Now { instant: start, unix: UNIX_START },
            nonces: HashMap::new(),
            tokens: Vec::new(),
            last_tid: HashMap::new(),
            tid_counter: 0,
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Request { client, request } => self.request(*client, request),
            Op::Datagram { client, bytes } => {
                let (_, tuple) = tuple(*client);
                self.client_packet(&tuple, bytes, None);
            }
            Op::ChannelData { client, channel, payload } => {
                let (_, tuple) = tuple(*client);
                let payload = capped(payload);
                let mut packet = channel_number(*channel).to_be_bytes().to_vec();
                packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                packet.extend_from_slice(payload);
                if tuple.transport.is_stream() {
                    packet.resize(channel_data::padded_frame_len(payload.len()), 0);
                }
                let outcome = self.client_packet(&tuple, &packet, None);
                if let ClientOutcome::Forward { payload: range, .. } = outcome {
                    assert_eq!(&packet[range], payload, "forwarded range is not the ChannelData payload");
                }
            }
            Op::Peer { allocation, peer, payload } => self.peer(*allocation, *peer, capped(payload)),
            Op::LargePeer { allocation, peer, len } => {
                self.peer(*allocation, *peer, &vec![0x5A; usize::from(*len)]);
            }
            Op::Icmp { allocation, peer, ipv6, icmp_type, icmp_code, mtu } => {
                let report = IcmpReport {
                    peer: peer_addr(*peer),
                    ipv6: *ipv6,
                    icmp_type: *icmp_type,
                    icmp_code: *icmp_code,
                    mtu: *mtu,
                };
                self.icmp(*allocation, &report);
            }
            Op::Advance(step) => {
                let by = match step {
                    Step::Millis(ms) => Duration::from_millis(u64::from(*ms)),
                    Step::Seconds(s) => Duration::from_secs(u64::from(*s)),
                    Step::Minutes(m) => Duration::from_secs(60 * u64::from(*m)),
                };
                self.now.instant += by;
                self.now.unix = UNIX_START + (self.now.instant - self.start).as_secs();
                self.driver.now = self.now.instant;
            }
            Op::Timeout => {
                self.server.handle_timeout(self.now, &mut self.driver);
                let now = self.now.instant;
                assert!(self.server.table().iter().all(|(_, a)| !a.is_expired(now)), "expired allocation kept");
            }
            Op::ConnectionClosed { client } => {
                let (_, tuple) = tuple(*client);
                self.server.handle_connection_closed(&tuple, &mut self.driver);
                assert!(self.server.table().find(&tuple).is_none(), "allocation outlived its connection");
            }
        }
        self.check_invariants();
    }

    /// Builds a request from fuzzed fields, signed as `request.auth` says.
    fn request(&mut self, client: u8, request: &Request) {
        let (index, tuple) = tuple(client);
        let method = match request.method {
            MethodChoice::Binding => Method::BINDING,
            MethodChoice::Allocate => Method::ALLOCATE,
            MethodChoice::Refresh => Method::REFRESH,
            MethodChoice::CreatePermission => Method::CREATE_PERMISSION,
            MethodChoice::ChannelBind => Method::CHANNEL_BIND,
            MethodChoice::Send => Method::SEND,
            MethodChoice::Other(m) => Method(m & 0x0FFF),
        };
        let class = match (&request.class, method) {
            (ClassChoice::Usual, Method::SEND) | (ClassChoice::Indication, _) => Class::Indication,
            (ClassChoice::Usual, _) => Class::Request,
            (ClassChoice::Response, _) => Class::Success,
        };
        let tid = match (request.retransmit, self.last_tid.get(&index)) {
            (true, Some(tid)) => *tid,
            _ => {
                self.tid_counter += 1;
                let mut tid = [0u8; 12];
                tid[4..].copy_from_slice(&self.tid_counter.to_be_bytes());
                TransactionId(tid)
            }
        };
        self.last_tid.insert(index, tid);

        let mut packet = Vec::new();
        let mut w = MessageWriter::new(&mut packet, MessageType::new(method, class), tid);
        for attribute in request.attrs.iter().take(MAX_ATTRS) {
            self.write_attr(&mut w, attribute);
        }
        let key = self.sign(&mut w, &tuple, &request.auth);
        let key = key.filter(|_| !request.attrs.iter().take(MAX_ATTRS).any(Attr::touches_credentials));
        if request.fingerprint {
            w.fingerprint();
        }
        w.finish();
        self.client_packet(&tuple, &packet, key);
    }

    fn write_attr(&self, w: &mut MessageWriter<'_>, attribute: &Attr) {
        match attribute {
            Attr::RequestedTransport(protocol) => {
                let p = match protocol {
                    Protocol::Udp => 17,
                    Protocol::Other(p) => *p,
                };
                w.attr(AttrType::REQUESTED_TRANSPORT, &[p, 0, 0, 0]);
            }
            Attr::Lifetime(secs) => {
                w.attr_u32(AttrType::LIFETIME, *secs);
            }
            Attr::XorPeer(peer) => {
                w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer_addr(*peer));
            }
            Attr::ChannelNumber(channel) => {
                let [hi, lo] = channel_number(*channel).to_be_bytes();
                w.attr(AttrType::CHANNEL_NUMBER, &[hi, lo, 0, 0]);
            }
            Attr::Data(data) => {
                w.attr(AttrType::DATA, capped(data));
            }
            Attr::EvenPort(reserve) => {
                w.attr(AttrType::EVEN_PORT, &[if *reserve { 0x80 } else { 0 }]);
            }
            Attr::ReservationToken(token) => {
                let token = match token {
                    Token::Known(i) if !self.tokens.is_empty() => self.tokens[usize::from(*i) % self.tokens.len()],
                    Token::Known(i) => [*i; 8],
                    Token::Raw(raw) => *raw,
                };
                w.attr(AttrType::RESERVATION_TOKEN, &token);
            }
            Attr::RequestedFamily(family) => {
                w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &[family.value(), 0, 0, 0]);
            }
            Attr::AdditionalFamily(family) => {
                w.attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[family.value(), 0, 0, 0]);
            }
            Attr::DontFragment => {
                w.attr(AttrType::DONT_FRAGMENT, &[]);
            }
            Attr::Raw(typ, value) => {
                w.attr(AttrType(*typ), capped(value));
            }
        }
    }

    /// Adds USERNAME, REALM, NONCE and MESSAGE-INTEGRITY; returns the key
    /// when it is the user's right one.
    fn sign(&self, w: &mut MessageWriter<'_>, tuple: &FiveTuple, auth: &Auth) -> Option<LongTermKey> {
        let (who, wrong_key, nonce) = match auth {
            Auth::Unsigned => return None,
            Auth::Signed(who) => (who, false, None),
            Auth::WrongKey(who) => (who, true, None),
            Auth::ForgedNonce(who, nonce) => (who, false, Some(capped(nonce))),
        };
        let (username, password) = match who {
            Who::Static(i) => {
                let (user, password) = USERS[usize::from(*i) % USERS.len()];
                (user.to_owned(), password.to_owned())
            }
            Who::Rest(i, expiry) => {
                let expiry = self.now.unix.saturating_add_signed(i64::from(*expiry));
                let username = format!("{expiry}:{}", REST_USERS[usize::from(*i) % REST_USERS.len()]);
                let password = rest_password(REST_SECRET, &username);
                (username, password)
            }
        };
        let password = if wrong_key { format!("{password}-wrong") } else { password };
        let key = LongTermKey::Md5(long_term_key_md5(&username, REALM, &password));
        let learnt = self.nonces.get(&tuple.client.ip()).map_or(&b"no-nonce-yet"[..], Vec::as_slice);
        w.attr(AttrType::USERNAME, username.as_bytes());
        w.attr(AttrType::REALM, REALM.as_bytes());
        w.attr(AttrType::NONCE, nonce.unwrap_or(learnt));
        w.message_integrity(key.as_bytes());
        (!wrong_key).then_some(key)
    }

    /// Sends one client packet and checks what came back. `key` is the key
    /// the harness signed the packet with, when it was the right one.
    fn client_packet(&mut self, tuple: &FiveTuple, packet: &[u8], key: Option<LongTermKey>) -> ClientOutcome {
        self.driver.now = self.now.instant;
        let mut reply = Vec::new();
        let handle = ClientHandle(u64::from(tuple.client.port()));
        let outcome = self.server.handle_client(self.now, tuple, handle, packet, &mut reply, &mut self.driver);
        match &outcome {
            // This driver opens no TCP relays, so no ConnectionBind can
            // succeed; its answer is checked like any other.
            ClientOutcome::Replied | ClientOutcome::ConnectionBound { .. } => {
                self.check_reply(tuple, packet, &reply, key)
            }
            ClientOutcome::Dropped => assert!(reply.is_empty(), "dropped, yet a reply was written"),
            ClientOutcome::RepliedFrom { .. } => panic!("answered from another address without RFC 5780 configured"),
            ClientOutcome::Forward { relay, peer, payload } => {
                assert!(reply.is_empty(), "forwarded, yet a reply was written");
                assert!(payload.start <= payload.end && payload.end <= packet.len(), "range outside the packet");
                assert_eq!(relay.is_ipv6(), peer.is_ipv6(), "forward through the relay of another family");
                assert!(self.driver.open.contains_key(relay), "forward through a relay that is not open");
                let a = self.server.table().get(relay.allocation()).expect("forward from an allocation that exists");
                assert_eq!(a.tuple, *tuple, "forward from another client's allocation");
                assert!(!a.is_expired(self.now.instant), "forward from an expired allocation");
                assert_eq!(self.policy.check(peer.ip()), Ok(peer.ip()), "forward to a refused peer {peer}");
            }
        }
        outcome
    }

    fn check_reply(&mut self, tuple: &FiveTuple, packet: &[u8], reply: &[u8], key: Option<LongTermKey>) {
        let request = Message::parse(packet)
            .or_else(|_| Message::parse_rfc3489(packet))
            .expect("only a well-formed STUN message is answered");
        assert_eq!(request.class(), Class::Request, "a {:?} was answered", request.class());
        let response = if request.has_magic_cookie() { Message::parse(reply) } else { Message::parse_rfc3489(reply) };
        let response = response.unwrap_or_else(|e| panic!("reply is not one STUN message: {e}"));
        assert!(matches!(response.class(), Class::Success | Class::Error), "reply is a {:?}", response.class());
        assert_eq!(response.method(), request.method(), "reply of another method");
        assert_eq!(response.header_tail(), request.header_tail(), "reply of another transaction");
        if let Some(value) = response.attribute(AttrType::ERROR_CODE) {
            attr::read_error_code(value).expect("ERROR-CODE is well-formed");
        } else {
            assert_eq!(response.class(), Class::Success, "error reply without ERROR-CODE");
        }

        let turn_method = matches!(
            request.method(),
            Method::ALLOCATE | Method::REFRESH | Method::CREATE_PERMISSION | Method::CHANNEL_BIND
        );
        if response.has_integrity() {
            SIGNED_REPLIES.fetch_add(1, Ordering::Relaxed);
            assert!(self.authenticated && turn_method && request.has_integrity(), "reply signed unasked");
            if let Some(key) = key {
                assert!(response.verify_integrity(key.as_bytes()), "reply signed with another key");
            }
        } else {
            // Not signed, so the request was not authenticated: amplification bound.
            assert!(
                reply.len() <= packet.len() + AMPLIFICATION_BOUND,
                "{}-byte reply to a {}-byte unauthenticated request",
                reply.len(),
                packet.len()
            );
        }
        let code = response.attribute(AttrType::ERROR_CODE).and_then(|v| attr::read_error_code(v).ok());
        let challenge = code.is_some_and(|c| matches!(c.code, 401 | 438));
        if let (true, true, Some(_)) = (self.authenticated && turn_method, !challenge, key) {
            assert!(response.has_integrity(), "reply to an authenticated request is unsigned");
        }
        if let Some(nonce) = response.attribute(AttrType::NONCE) {
            self.nonces.insert(tuple.client.ip(), nonce.to_vec());
        }
        if let Some(token) = response.attribute(AttrType::RESERVATION_TOKEN) {
            self.tokens.push(attr::read_reservation_token(token).expect("RESERVATION-TOKEN is 8 bytes"));
        }
    }

    /// An ICMP report: relayed only as a well-formed Data indication with
    /// XOR-PEER-ADDRESS and ICMP, to the allocation's client, for a peer
    /// with a permission.
    fn icmp(&mut self, allocation: u8, report: &IcmpReport) {
        let id = self.pick_allocation(allocation);
        let relay = RelayId::new(id, report.peer.is_ipv6());
        let mut out = Vec::new();
        let Some((client, tuple)) = self.server.handle_icmp(self.now, relay, report, &mut out) else {
            assert!(out.is_empty(), "an ICMP report not relayed, yet written");
            return;
        };
        // Permissions hold canonical addresses, and the indication names the
        // peer as its permission does.
        let expected = SocketAddr::new(policy::canonical(report.peer.ip()), report.peer.port());
        let a = self.server.table().get(id).expect("relayed for an allocation that exists");
        assert_eq!((client, tuple), (a.client, a.tuple));
        assert!(a.has_permission(expected.ip(), self.now.instant), "ICMP about {expected} without a permission");
        let message = Message::parse(&out).expect("the ICMP Data indication parses");
        assert_eq!(message.message_type(), MessageType::new(Method::DATA, Class::Indication));
        assert_eq!(message.attribute(AttrType::ICMP).map(<[u8]>::len), Some(8));
        assert!(message.attribute(AttrType::DATA).is_none());
        let peer = attr::read_xor_address(
            message.attribute(AttrType::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS"),
            &message.transaction_id(),
        )
        .expect("well-formed XOR-PEER-ADDRESS");
        assert_eq!(peer, expected);
    }

    /// A live allocation chosen by the input, or (for bytes from 0xF0) any
    /// id, live or not.
    fn pick_allocation(&self, allocation: u8) -> AllocationId {
        let ids: Vec<AllocationId> = self.server.table().iter().map(|(id, _)| id).collect();
        if ids.is_empty() || allocation >= 0xF0 {
            AllocationId(usize::from(allocation & 0x0F))
        } else {
            ids[usize::from(allocation) % ids.len()]
        }
    }

    /// A peer datagram as the driver receives it: at `PEER_HEADROOM` in a
    /// slot with `PEER_TAILROOM` after it, the rest junk.
    fn peer(&mut self, allocation: u8, peer: Peer, payload: &[u8]) {
        let id = self.pick_allocation(allocation);
        let peer = peer_addr(peer);
        let mut slot = vec![0xAA; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        slot[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let relay = RelayId::new(id, peer.is_ipv6());
        let Some(outcome) = self.server.handle_peer(self.now, relay, peer, &mut slot, PEER_HEADROOM, payload.len())
        else {
            return;
        };
        let a = self.server.table().get(id).expect("relayed for an allocation that exists");
        assert!(a.has_permission(peer.ip(), self.now.instant), "relayed from {peer} without a permission");
        assert_eq!(outcome.tuple, a.tuple);
        let (start, end) = outcome.frame;
        assert!(start <= end && end <= slot.len(), "frame outside the slot");
        let frame = &slot[start..end];
        if a.tuple.transport.is_stream() {
            assert!(frame.len().is_multiple_of(4), "stream frame not padded");
        }
        match a.peer_channel(peer, self.now.instant) {
            Some(channel) => {
                let data = ChannelData::parse(frame).expect("relayed ChannelData parses");
                assert_eq!((data.channel, data.payload), (channel, payload));
            }
            None => {
                let message = Message::parse(frame).expect("relayed Data indication parses");
                assert_eq!(message.message_type(), MessageType::new(Method::DATA, Class::Indication));
                let from = message.attribute(AttrType::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS");
                assert_eq!(attr::read_xor_address(from, &message.transaction_id()), Ok(peer));
                assert_eq!(message.attribute(AttrType::DATA), Some(payload));
            }
        }
    }

    fn check_invariants(&self) {
        let table = self.server.table();
        assert!(table.is_consistent(), "allocation table and its index disagree");
        let relays: HashMap<RelayId, SocketAddr> = table
            .iter()
            .flat_map(|(id, a)| a.relayed_addresses().map(move |r| (RelayId::new(id, r.addr.is_ipv6()), r.addr)))
            .collect();
        assert_eq!(relays, self.driver.open, "open relays differ from the table");
        let distinct: BTreeSet<SocketAddr> = relays.values().copied().collect();
        assert_eq!(distinct.len(), relays.len(), "two allocations share a relayed address");

        let mut per_user = BTreeMap::new();
        let mut per_ip = BTreeMap::new();
        for (_, a) in table.iter() {
            *per_user.entry(a.quota_key.to_string()).or_insert(0u32) += 1;
            for relayed in a.relayed_addresses() {
                *per_ip.entry(relayed.addr.ip()).or_insert(0usize) += 1;
            }
            assert!(a.permission_count() <= self.max_permissions, "permissions over the limit");
            assert!(a.channel_count() <= self.max_channels, "channels over the limit");
        }
        assert_eq!(per_user, self.driver.per_user, "quota counts differ from the table");
        assert_eq!(self.driver.total as usize, table.len(), "total quota differs from the table");
        let pool_size = usize::from(PORT_MAX - PORT_MIN) + 1;
        assert!(per_ip.values().all(|n| *n <= pool_size), "more allocations than ports");
        assert!(table.len() <= 2 * pool_size, "more allocations than the pools hold");
    }
}

fuzz_target!(|input: Input| {
    let mut harness = Harness::new(&input.setup);
    for op in input.ops.iter().take(MAX_OPS) {
        harness.run(op);
    }
    // FUZZ_STATS=1 shows whether the inputs reach the authenticated paths
    // (a harness that never signs a request fuzzes only the 401 branch).
    if std::env::var_os("FUZZ_STATS").is_some() {
        let stats = harness.server.stats();
        eprintln!(
            "authenticated={} created={} relayed_to_peer={} relayed_to_client={} auth_failures={} signed_replies={}",
            input.setup.authenticated,
            stats.allocations_created,
            stats.relayed_to_peer,
            stats.relayed_to_client,
            stats.auth_failures,
            SIGNED_REPLIES.load(Ordering::Relaxed)
        );
    }
});

/// Signed replies seen by this process, for FUZZ_STATS.
static SIGNED_REPLIES: AtomicU64 = AtomicU64::new(0);
