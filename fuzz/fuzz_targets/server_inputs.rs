//! `server_inputs`: a sequence of operations, decoded from the input with
//! `arbitrary`, fed to the sans-IO `Server` with a fake clock, the fake
//! sockets of `tern::testing` as its driver and the real accounts (ports,
//! quotas, connection admission) it shares between workers.
//!
//! Operations: raw datagrams and well-formed STUN/TURN requests (built from
//! fuzzed fields, optionally signed with a known user's key and the nonce
//! and password algorithms learnt from an earlier 401/438, so the
//! authenticated paths are reached) from a few client 5-tuples over UDP, TCP
//! and TLS; ChannelData; peer datagrams through `handle_peer`; ICMP errors
//! through `handle_icmp`; clock steps; `handle_timeout`, at any time or at
//! the deadline `poll_timeout` names, as the driver sleeps; client connections
//! closing; relay ports another program takes (`Sockets::in_use`, so a
//! relay that cannot open is retried on the next port). Requests are signed
//! as an RFC 5389 client does (USERNAME, MD5 key, MESSAGE-INTEGRITY) or as
//! an RFC 8489 one does (PASSWORD-ALGORITHMS echoed, PASSWORD-ALGORITHM
//! SHA-256 or MD5, USERHASH or USERNAME, MESSAGE-INTEGRITY-SHA256).
//!
//! The harness is the driver: a TCP or TLS client connection is admitted
//! (`handle_connection_opened`) before its first packet reaches the core,
//! and after every operation `Sockets::drive` answers every event (relay
//! sockets open, or fail with EADDRINUSE on a port in use or without
//! DONT-FRAGMENT support when the setup says so; peers are connected, a
//! peer on port 0 failing at once) and returns the messages written for
//! later, which the harness checks.
//!
//! RFC 6062: TCP allocations, Connect and ConnectionBind (with CONNECTION-IDs
//! the harness learnt, or raw ones), and the driver's side of it: peers
//! answering a Connect (`handle_peer_connected`), peers connecting to a
//! relayed address (`handle_peer_accepted`), pairs closing
//! (`handle_tcp_relay_closed`) and moving bytes (`tcp_relay_allowance`,
//! `record_tcp_relay_traffic`). A client connection whose ConnectionBind
//! succeeded is the client side of its pair from then on: the harness sends
//! the core nothing more on it, and closing it closes the pair.
//!
//! The server runs anonymous (`auth: None`) or with long-term credentials,
//! as the first bytes of the input choose, with one worker. Every input
//! ends with `close_all`.
//!
//! After every step the harness asserts:
//! - nothing panicked;
//! - `table().is_consistent()`;
//! - every OpenRelay was answered within the step and no allocation is
//!   left opening; the open relay sockets are exactly the live
//!   allocations' relayed addresses (`Sockets::check`), no two allocations
//!   share a relayed address, and each relay is a TCP listener exactly when
//!   its allocation is a TCP one; a port is asked for at most 16 times per
//!   relay;
//! - the quota counts are exactly the table's allocations per quota key,
//!   and in all;
//! - no relay IP has more allocations than its port pool has ports, nor
//!   more allocations and free ports together, and no allocation more
//!   permissions or channels than configured;
//! - the client connections counted are exactly those the harness has
//!   open (a bound data connection until its pair ends), and a connection
//!   is refused only at a limit;
//! - every reply is one STUN response of the request's method and
//!   transaction ID; it is signed only when the request was an
//!   authenticated TURN request (Connect and ConnectionBind included), with
//!   the integrity attribute the request was checked with, and a signed
//!   reply to a request we signed verifies with our key, MD5 or SHA-256;
//! - a 401 or 438 carries a NONCE that starts with RFC 8489's nonce cookie,
//!   and PASSWORD-ALGORITHMS;
//! - a reply that is not signed (its request was not authenticated) is at
//!   most `AMPLIFICATION_BOUND` bytes longer than the request;
//! - only an Allocate or a Connect is answered later (`Deferred`), and
//!   never `HandOff` with one worker;
//! - the messages written for later are exactly what the step owes, each
//!   one STUN message: an answer to each Allocate answered `Deferred`, to
//!   its client, checked as a reply is and fingerprinted as its request,
//!   a success only with the allocation live and naming its relayed
//!   addresses, an error only with none left for its 5-tuple; and one Data
//!   indication with XOR-PEER-ADDRESS and ICMP for each ICMP error relayed,
//!   which happens exactly for the kinds RFC 8656 §11.5 relays, to a live
//!   allocation's client, for a peer with a permission;
//! - data is forwarded only to a peer the policy allows, from a live UDP
//!   allocation whose relay is open, with a range inside the packet;
//! - a peer datagram is relayed only with a permission, as a ChannelData
//!   frame or Data indication that reads back to the same peer and payload;
//! - what observers are told adds up: every AllocationCreated names an
//!   allocation as the table has it, and is followed by exactly one
//!   AllocationDeleted of the same id and 5-tuple before the id is created
//!   again; the allocations created and not deleted are the table's; a
//!   refresh, permission or channel is reported only for such an
//!   allocation; an expiry only of a permission or channel reported and not
//!   expired since; the permissions reported live are as many as the
//!   allocation holds, and a channel number changes peer only through its
//!   expiry;
//! - `poll_timeout` is at or before the next deadline of every allocation
//!   (its lifetime, a permission's or channel's expiry, a channel's guard)
//!   and of every peer connection waiting for its peer or its bind;
//! - after `handle_timeout(now)`, `poll_timeout` is not in the past, no
//!   expired allocation is left, and every permission and channel binding
//!   observers were told is live is live (`has_permission`,
//!   `channel_peer`), and every binding that is live was told.
//!
//! And for RFC 6062:
//! - TCP relays are opened without DONT-FRAGMENT; the driver connects only
//!   from an open TCP relay of the peer's family, to a peer the policy
//!   allows, for a Connect of this step and to its peer;
//! - the peer connections the driver holds are exactly the server's, each of
//!   a TCP allocation in the table and to a peer the policy allows; those
//!   the server has connecting are exactly those the driver has not
//!   reported on, each owed an answer; ids the driver closed are unknown to
//!   the server;
//! - no allocation has more peer connections than
//!   `max_tcp_peer_connections` (0: none at all), and a TCP allocation has
//!   no channels;
//! - a connection waiting for its peer or its ConnectionBind has its
//!   deadline at most 30 seconds away;
//! - a peer connecting to a relayed address is kept only by a live TCP
//!   allocation with a permission for it;
//! - the messages written for later include, each for the client of the
//!   TCP allocation concerned, exactly: a Connect answer for each Connect
//!   the driver reported on (or failed at once) or whose 30 seconds ran
//!   out (success with its CONNECTION-ID when established, 447 otherwise)
//!   with the Connect's transaction ID, signed when the server
//!   authenticates and verifying with our key, fingerprinted when the
//!   Connect was; and a ConnectionAttempt with the peer and CONNECTION-ID
//!   for each peer kept;
//! - a ConnectionBind succeeds only on a stream without an allocation, for
//!   the CONNECTION-ID it named and, with authentication, by the user of
//!   its allocation; the connection is then bound to that stream;
//! - a bound pair is allowed what is left of its allocation's `max_bps`
//!   budget (without a limit, anything), and what it moves is counted in
//!   the allocation's traffic, taken off the budget and added to the
//!   server's totals;
//! - after `handle_timeout`, no peer connection is left past its 30-second
//!   connect or bind deadline;
//! - after `handle_connection_closed` of a control connection, none of its
//!   allocation's peer connections is left.
//!
//! After `close_all`: no allocation, relay socket, peer connection or
//! quota count is left, and observers were told of every deletion.

#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tern::io::shared::SharedAccounts;
use tern::proto::allocation::{AllocationId, ClientHandle, RelayId};
use tern::proto::auth::{
    Authenticator, Integrity, LongTermKey, NONCE_COOKIE, PasswordAlgorithm, SigningKey, StaticCredentials, UserKeys,
    rest_password, userhash,
};
use tern::proto::channel_data::{self, ChannelData, ChannelNumber};
use tern::proto::policy::{self, PeerPolicy};
use tern::proto::rate_limit::RateLimit;
use tern::proto::resources::QuotaLimits;
use tern::proto::server::{
    ClientOutcome, Event, IcmpReport, PEER_HEADROOM, PEER_TAILROOM, RelayProtocol, Server, ServerConfig, Transmit,
    TurnConfig,
};
use tern::proto::stun::attr::{self, FAMILY_IPV4, FAMILY_IPV6};
use tern::proto::stun::integrity::long_term_key_md5;
use tern::proto::stun::{
    AttrType, Class, ErrorCode, HEADER_LEN, Message, MessageType, MessageWriter, Method, TransactionId,
};
use tern::proto::tcp_relay::{BIND_TIMEOUT, CONNECT_TIMEOUT, ConnectionId, State};
use tern::proto::{FiveTuple, Now, Transport};
use tern::testing::{self, Sockets};

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
/// Static users. The last is configured by its MD5 key alone (as coturn's
/// `turnadmin -k` gives one), so SHA-256 is not available to it.
const USERS: [(&str, &str); 3] = [("alice", "alice-password"), ("bob", "bob-password"), ("erin", "erin-password")];
const MD5_ONLY_USER: &str = "erin";
const REST_SECRET: &[u8] = b"rest-secret";
const REST_USERS: [&str; 2] = ["carol", "dave"];
const NONCE_LIFETIME: u64 = 600;
const UNIX_START: u64 = 1_800_000_000;
/// Each relay IP's pool: 8 ports, so exhaustion is near.
const PORT_MIN: u16 = 50000;
const PORT_MAX: u16 = 50007;
const POOL_SIZE: usize = (PORT_MAX - PORT_MIN) as usize + 1;
/// How often the core asks for another port when the one it took is in use
/// (its `BIND_ATTEMPTS`).
const OPEN_ATTEMPTS: usize = 16;
/// Seeds the core's randomness, so a crash replays.
const SEED: [u8; 32] = [0x7E; 32];

/// Client 5-tuples: two on one IP (they share an anonymous quota and a
/// nonce); three streams from another IP, TCP and TLS, so one can be an
/// RFC 6062 control connection and the others its data connections; IPv6
/// over UDP and TLS; and one that arrived on a wildcard address. A client's
/// index here is its `ClientHandle`.
const CLIENTS: [(&str, &str, Transport); 8] = [
    ("198.51.100.1:40000", "192.0.2.10:3478", Transport::Udp),
    ("198.51.100.1:40001", "192.0.2.10:3478", Transport::Udp),
    ("198.51.100.2:40000", "192.0.2.10:3478", Transport::Tcp),
    ("198.51.100.2:40001", "192.0.2.10:5349", Transport::Tls),
    ("[2001:db8:1::1]:40000", "[2001:db8::10]:3478", Transport::Udp),
    ("198.51.100.3:40000", "0.0.0.0:3478", Transport::Udp),
    ("198.51.100.2:40002", "192.0.2.10:3478", Transport::Tcp),
    ("[2001:db8:1::1]:40001", "[2001:db8::10]:5349", Transport::Tls),
];

/// Every IP a relay can be opened on: first the listeners' (relaying on the
/// address the Allocate arrived on), then the relay IPs a setup configures
/// (IPv4 first).
const RELAY_IPS: [&str; 4] = ["192.0.2.10", "2001:db8::10", "192.0.2.20", "2001:db8::20"];
const LISTENER_IPS: usize = 2;

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
    /// Bytes per second each way per allocation, or no limit.
    max_bps: Option<u16>,
    /// Taken modulo 4; 0 means no peer connection at all.
    max_tcp_peer_connections: u8,
    /// Client TCP/TLS connections per IP and in all, taken modulo 4 and 8;
    /// 0 means no limit.
    tcp_per_ip: u8,
    tcp_total: u8,
    /// The platform cannot set DONT-FRAGMENT: such relays fail to open.
    dont_fragment_unsupported: bool,
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
    /// `handle_timeout` now, whatever `poll_timeout` says.
    Timeout,
    /// A client connection closed (TCP and TLS clients only).
    ConnectionClosed {
        client: u8,
    },
    /// The outcome of a connection a Connect started, which the driver has
    /// not reported yet (chosen among them).
    PeerConnected {
        connection: u8,
        established: bool,
    },
    /// A peer connected to the TCP relay of an allocation.
    PeerAccepted {
        allocation: u8,
        peer: Peer,
    },
    /// A peer connection that is no longer connecting closed.
    PairClosed {
        connection: u8,
    },
    /// A bound pair has bytes to move each way.
    PairTraffic {
        connection: u8,
        to_peer: u16,
        to_client: u16,
    },
    /// Another program takes relay port `PORT_MIN + port % 8` of a relay
    /// IP, or gives it back if it held it.
    PortInUse {
        ip: u8,
        port: u8,
    },
    /// The driver sleeps until `poll_timeout` (if it is later than now) and
    /// calls `handle_timeout` then.
    Wake,
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
    Connect,
    ConnectionBind,
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
    ConnectionId(ConnectionIdChoice),
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
    Tcp,
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

#[derive(Arbitrary, Debug)]
enum ConnectionIdChoice {
    /// One the harness learnt (by index).
    Known(u8),
    Raw(u32),
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
    /// The user's name or hash, REALM, the nonce learnt for this client's
    /// IP, and integrity with the user's key, as `Scheme` says.
    Signed(Who, Scheme),
    /// The same with a wrong password.
    WrongKey(Who, Scheme),
    /// The same with a nonce of the fuzzer's choosing.
    ForgedNonce(Who, Scheme, Vec<u8>),
}

#[derive(Arbitrary, Debug)]
enum Who {
    Static(u8),
    /// A REST API credential expiring `expiry` seconds from now.
    Rest(u8, i16),
}

/// How a request is signed.
#[derive(Arbitrary, Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    /// RFC 5389: USERNAME, the MD5 key, MESSAGE-INTEGRITY.
    Rfc5389,
    /// RFC 8489 §9.2.5, as tern's client signs: the PASSWORD-ALGORITHMS of
    /// the challenge echoed, PASSWORD-ALGORITHM SHA-256, the SHA-256 key and
    /// MESSAGE-INTEGRITY-SHA256, with USERHASH instead of USERNAME when
    /// `userhash`.
    Sha256 { userhash: bool },
    /// The same with MD5 chosen off the list: the MD5 key under
    /// MESSAGE-INTEGRITY-SHA256.
    Md5 { userhash: bool },
}

// ---------------------------------------------------------------------------
// The harness
// ---------------------------------------------------------------------------

struct Harness {
    server: Server,
    /// The driver: relay sockets and peer connections, without sockets.
    sockets: Sockets,
    /// The accounts the server counts against, for inspection.
    accounts: SharedAccounts,
    policy: PeerPolicy,
    authenticated: bool,
    limits: QuotaLimits,
    max_permissions: usize,
    max_channels: usize,
    /// 0: no limit.
    max_bps: usize,
    max_tcp_peer_connections: usize,
    start: Instant,
    now: Now,
    /// What the last 401 or 438 to each client IP offered.
    challenges: HashMap<IpAddr, Challenge>,
    /// RESERVATION-TOKENs learnt from Allocate answers.
    tokens: Vec<[u8; 8]>,
    /// CONNECTION-IDs learnt from Connect answers, ConnectionAttempts and
    /// accepted peers, in the order learnt.
    connection_ids: Vec<ConnectionId>,
    /// Connects whose connection the driver started and the server still
    /// has to answer.
    owed: Vec<OwedAnswer>,
    /// A Connect answered `Deferred` this step: the drive starts its
    /// connection or fails it at once; its peer, canonical.
    connect_sent: Option<(OwedAnswer, SocketAddr)>,
    /// Connect answers the current step must send, and whether each says
    /// established.
    due_answers: Vec<(OwedAnswer, bool)>,
    /// ConnectionAttempts the current step must send: the connection, its
    /// allocation and its peer.
    due_attempts: Vec<(ConnectionId, AllocationId, SocketAddr)>,
    /// Allocates answered `Deferred`, whose answers the current step must
    /// send.
    due_allocates: Vec<DeferredAllocate>,
    /// ICMP Data indications the current step must send: the allocation and
    /// the peer, canonical.
    due_icmp: Vec<(AllocationId, SocketAddr)>,
    /// Client TCP/TLS connections admitted and not closed, bound data
    /// connections included.
    streams: Vec<FiveTuple>,
    /// Client connections a ConnectionBind made the client side of a pair.
    data_connections: Vec<(FiveTuple, ConnectionId)>,
    /// Peer connections the driver closed and has not made again since.
    closed: BTreeSet<ConnectionId>,
    /// What observers were told, as they would keep it.
    observed: Observed,
    /// How far the records of `sockets` have been read.
    read: Read,
    /// `handle_timeout` ran this step: what observers hold must be live.
    timed_out: bool,
    /// Each client's last transaction ID.
    last_tid: HashMap<ClientHandle, TransactionId>,
    tid_counter: u64,
    counts: Counts,
}

/// The NONCE and PASSWORD-ALGORITHMS of a 401 or 438.
struct Challenge {
    nonce: Vec<u8>,
    algorithms: Vec<u8>,
}

/// A Connect the server answers once the driver reports on its connection.
#[derive(Clone, Copy, Debug)]
struct OwedAnswer {
    /// `None` for a connection that failed at once, before the harness
    /// learnt its id.
    connection: Option<ConnectionId>,
    tid: TransactionId,
    tuple: FiveTuple,
    /// The key the harness signed the Connect with, when the server signs
    /// with it.
    key: Option<SigningKey>,
    fingerprint: bool,
}

/// An Allocate answered once its relays are open.
struct DeferredAllocate {
    client: ClientHandle,
    tuple: FiveTuple,
    request: Vec<u8>,
    key: Option<SigningKey>,
}

/// The state observers build from the events they see.
#[derive(Default)]
struct Observed {
    /// Allocations created and not deleted, with their 5-tuples.
    allocations: BTreeMap<AllocationId, FiveTuple>,
    /// Permissions installed and not expired.
    permissions: BTreeSet<(AllocationId, IpAddr)>,
    /// Channel bindings bound and not expired.
    channels: BTreeMap<(AllocationId, ChannelNumber), SocketAddr>,
    /// Every channel number bound on a live allocation.
    channel_numbers: BTreeSet<(AllocationId, ChannelNumber)>,
}

/// Positions in the records of [`Sockets`] up to which the harness has
/// checked them.
#[derive(Default)]
struct Read {
    open_calls: usize,
    connects: usize,
    closed_peers: usize,
    observed: usize,
}

/// What FUZZ_STATS shows besides the server's own counters.
#[derive(Default)]
struct Counts {
    signed_replies: u64,
    sha256_signed_replies: u64,
    allocate_answers: u64,
    tcp_relays: u64,
    /// Relays asked for on a port in use, each retried or refused.
    addr_in_use: u64,
    connect_answers: u64,
    connections_bound: u64,
    connections_refused: u64,
    icmp_indications: u64,
    permissions_expired: u64,
    channels_expired: u64,
    allocations_deleted: u64,
}

/// One base instant for every run, so runs do not depend on when they happen.
fn base_instant() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(tern::io::clock::now)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address literal")
}

fn client_at(index: u8) -> (ClientHandle, FiveTuple) {
    let i = usize::from(index) % CLIENTS.len();
    let (client, server, transport) = CLIENTS[i];
    (ClientHandle(i as u64), FiveTuple { client: addr(client), server: addr(server), transport })
}

fn relay_ips() -> impl Iterator<Item = IpAddr> {
    RELAY_IPS.iter().map(|ip| ip.parse().expect("IP literal"))
}

fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(policy::canonical(addr.ip()), addr.port())
}

/// A message written for later is one whole STUN message.
fn one_message(bytes: &[u8]) -> Message<'_> {
    let message = Message::parse(bytes).unwrap_or_else(|e| panic!("message for later is not STUN: {e}"));
    let length = bytes.get(2..4).map(|l| usize::from(u16::from_be_bytes([l[0], l[1]])));
    assert_eq!(length.map(|l| HEADER_LEN + l), Some(bytes.len()), "message for later is not one STUN message");
    message
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

/// Whether `message` carries `key`'s integrity attribute, valid under it.
fn verifies(key: &SigningKey, message: &Message<'_>) -> bool {
    match key.integrity {
        Integrity::Sha1 => message.verify_integrity(key.key.as_bytes()),
        Integrity::Sha256 => message.verify_integrity_sha256(key.key.as_bytes()),
    }
}

fn is_signed(message: &Message<'_>) -> bool {
    message.has_integrity() || message.has_integrity_sha256()
}

/// The user a request names, as the server reads it: USERNAME first, else
/// the static user whose USERHASH it carries.
fn claimed_user(request: &Message<'_>) -> Option<String> {
    if let Some(name) = request.attribute(AttrType::USERNAME) {
        return std::str::from_utf8(name).ok().map(str::to_owned);
    }
    let hash = request.attribute(AttrType::USERHASH)?;
    USERS.iter().find(|(user, _)| userhash(user, REALM) == hash).map(|(user, _)| (*user).to_owned())
}

fn connection_id(message: &Message<'_>) -> Option<ConnectionId> {
    message.attribute(AttrType::CONNECTION_ID).and_then(|v| attr::read_u32(v).ok()).map(ConnectionId)
}

impl Harness {
    fn new(setup: &Setup) -> Self {
        let auth = setup.authenticated.then(|| {
            let users = USERS
                .iter()
                .map(|(user, password)| {
                    let keys = if *user == MD5_ONLY_USER {
                        UserKeys::from_md5_key(long_term_key_md5(user, REALM, password))
                    } else {
                        UserKeys::from_password(user, REALM, password)
                    };
                    ((*user).to_owned(), keys)
                })
                .collect();
            let store = StaticCredentials::new(REALM, users, vec![REST_SECRET.to_vec()]);
            Authenticator::new(REALM.to_owned(), store, [7; 32], NONCE_LIFETIME)
        });
        let configured = relay_ips().skip(LISTENER_IPS);
        let relay_ips = match setup.relay_ips {
            RelayIps::Listener => vec![],
            RelayIps::V4 => configured.take(1).collect(),
            RelayIps::Both => configured.collect(),
        };
        let max_permissions = usize::from(setup.max_permissions % 5);
        let max_channels = usize::from(setup.max_channels % 5);
        let max_bps = setup.max_bps.unwrap_or(0);
        let max_tcp_peer_connections = usize::from(setup.max_tcp_peer_connections % 4);
        let turn = TurnConfig {
            auth,
            relay_ips,
            max_permissions,
            max_channels,
            rfc5766_channels: setup.rfc5766_channels,
            max_bps: u32::from(max_bps),
            max_tcp_peer_connections,
            ..TurnConfig::default()
        };
        let policy = turn.policy.clone();
        let config = ServerConfig {
            software: None,
            rfc3489: setup.rfc3489,
            reason_phrases: setup.reason_phrases,
            turn: Some(turn),
            // Off: the harness checks every answer a request gets, and the
            // limiter's own table is bounded and unit-tested.
            rate_limit: RateLimit { per_second: 0.0, ..RateLimit::default() },
            nat_discovery: None,
        };
        let limits = QuotaLimits {
            per_user: u32::from(setup.user_quota % 4),
            total: u32::from(setup.total_quota % 8),
            tcp_per_ip: u32::from(setup.tcp_per_ip % 4),
            tcp_total: u32::from(setup.tcp_total % 8),
        };
        let accounts = testing::accounts((PORT_MIN, PORT_MAX), limits);
        let server = Server::new(config, Box::new(accounts.clone()), SEED);
        let sockets = Sockets {
            dont_fragment_unsupported: setup.dont_fragment_unsupported,
            // A connection the socket refuses at once, so that the
            // server's answer to that is reached too.
            refuse_connect: Some(|peer| peer.port() == 0),
            ..Sockets::default()
        };
        let start = base_instant();
        Self {
            server,
            sockets,
            accounts,
            policy,
            authenticated: setup.authenticated,
            limits,
            max_permissions,
            max_channels,
            max_bps: usize::from(max_bps),
            max_tcp_peer_connections,
            start,
            now: Now { instant: start, unix: UNIX_START },
            challenges: HashMap::new(),
            tokens: Vec::new(),
            connection_ids: Vec::new(),
            owed: Vec::new(),
            connect_sent: None,
            due_answers: Vec::new(),
            due_attempts: Vec::new(),
            due_allocates: Vec::new(),
            due_icmp: Vec::new(),
            streams: Vec::new(),
            data_connections: Vec::new(),
            closed: BTreeSet::new(),
            observed: Observed::default(),
            read: Read::default(),
            timed_out: false,
            last_tid: HashMap::new(),
            tid_counter: 0,
            counts: Counts::default(),
        }
    }

    fn run(&mut self, op: &Op) {
        match op {
            Op::Request { client, request } => self.request(*client, request),
            Op::Datagram { client, bytes } => {
                let (handle, tuple) = client_at(*client);
                self.client_packet(handle, &tuple, bytes, None);
            }
            Op::ChannelData { client, channel, payload } => {
                let (handle, tuple) = client_at(*client);
                let payload = capped(payload);
                let mut packet = channel_number(*channel).to_be_bytes().to_vec();
                packet.extend_from_slice(&(payload.len() as u16).to_be_bytes());
                packet.extend_from_slice(payload);
                if tuple.transport.is_stream() {
                    packet.resize(channel_data::padded_frame_len(payload.len()), 0);
                }
                let outcome = self.client_packet(handle, &tuple, &packet, None);
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
                self.advance(by);
            }
            Op::Timeout => self.timeout(),
            Op::Wake => {
                if let Some(at) = self.server.poll_timeout() {
                    self.advance(at.saturating_duration_since(self.now.instant));
                    self.timeout();
                }
            }
            Op::ConnectionClosed { client } => self.connection_closed(*client),
            Op::PeerConnected { connection, established } => self.peer_connected(*connection, *established),
            Op::PeerAccepted { allocation, peer } => self.peer_accepted(*allocation, *peer),
            Op::PairClosed { connection } => {
                // A connection still connecting ends through PeerConnected.
                let open: Vec<ConnectionId> =
                    self.sockets.live.iter().copied().filter(|id| !self.sockets.connecting.contains(id)).collect();
                if !open.is_empty() {
                    self.close_pair(open[usize::from(*connection) % open.len()]);
                }
            }
            Op::PairTraffic { connection, to_peer, to_client } => {
                self.pair_traffic(*connection, usize::from(*to_peer), usize::from(*to_client));
            }
            Op::PortInUse { ip, port } => {
                let ip = relay_ips().nth(usize::from(*ip) % RELAY_IPS.len()).expect("index below the count");
                let port = SocketAddr::new(ip, PORT_MIN + u16::from(*port) % POOL_SIZE as u16);
                if !self.sockets.in_use.remove(&port) {
                    self.sockets.in_use.insert(port);
                }
            }
        }
        self.drive();
        self.check_invariants();
    }

    /// Builds a request from fuzzed fields, signed as `request.auth` says.
    fn request(&mut self, client: u8, request: &Request) {
        let (handle, tuple) = client_at(client);
        let method = match request.method {
            MethodChoice::Binding => Method::BINDING,
            MethodChoice::Allocate => Method::ALLOCATE,
            MethodChoice::Refresh => Method::REFRESH,
            MethodChoice::CreatePermission => Method::CREATE_PERMISSION,
            MethodChoice::ChannelBind => Method::CHANNEL_BIND,
            MethodChoice::Send => Method::SEND,
            MethodChoice::Connect => Method::CONNECT,
            MethodChoice::ConnectionBind => Method::CONNECTION_BIND,
            MethodChoice::Other(m) => Method(m & 0x0FFF),
        };
        let class = match (&request.class, method) {
            (ClassChoice::Usual, Method::SEND) | (ClassChoice::Indication, _) => Class::Indication,
            (ClassChoice::Usual, _) => Class::Request,
            (ClassChoice::Response, _) => Class::Success,
        };
        let tid = match (request.retransmit, self.last_tid.get(&handle)) {
            (true, Some(tid)) => *tid,
            _ => {
                self.tid_counter += 1;
                let mut tid = [0u8; 12];
                tid[4..].copy_from_slice(&self.tid_counter.to_be_bytes());
                TransactionId(tid)
            }
        };
        self.last_tid.insert(handle, tid);

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
        self.client_packet(handle, &tuple, &packet, key);
    }

    fn write_attr(&self, w: &mut MessageWriter<'_>, attribute: &Attr) {
        match attribute {
            Attr::RequestedTransport(protocol) => {
                let p = match protocol {
                    Protocol::Udp => 17,
                    Protocol::Tcp => 6,
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
            Attr::ConnectionId(choice) => {
                let id = match choice {
                    ConnectionIdChoice::Known(i) if !self.connection_ids.is_empty() => {
                        self.connection_ids[usize::from(*i) % self.connection_ids.len()].0
                    }
                    ConnectionIdChoice::Known(i) => u32::from(*i),
                    ConnectionIdChoice::Raw(raw) => *raw,
                };
                w.attr_u32(AttrType::CONNECTION_ID, id);
            }
            Attr::Raw(typ, value) => {
                w.attr(AttrType(*typ), capped(value));
            }
        }
    }

    /// Adds the credentials `auth` asks for; returns the key the server
    /// signs its answer with when the request is right but for the nonce
    /// (none from an anonymous server, which ignores credentials).
    fn sign(&self, w: &mut MessageWriter<'_>, tuple: &FiveTuple, auth: &Auth) -> Option<SigningKey> {
        let (who, scheme, wrong_key, nonce) = match auth {
            Auth::Unsigned => return None,
            Auth::Signed(who, scheme) => (who, *scheme, false, None),
            Auth::WrongKey(who, scheme) => (who, *scheme, true, None),
            Auth::ForgedNonce(who, scheme, nonce) => (who, *scheme, false, Some(capped(nonce))),
        };
        let (username, password, rest) = match who {
            Who::Static(i) => {
                let (user, password) = USERS[usize::from(*i) % USERS.len()];
                (user.to_owned(), password.to_owned(), false)
            }
            Who::Rest(i, expiry) => {
                let expiry = self.now.unix.saturating_add_signed(i64::from(*expiry));
                let username = format!("{expiry}:{}", REST_USERS[usize::from(*i) % REST_USERS.len()]);
                let password = rest_password(REST_SECRET, &username);
                (username, password, true)
            }
        };
        let password = if wrong_key { format!("{password}-wrong") } else { password };
        let (algorithm, integrity, hashed) = match scheme {
            Scheme::Rfc5389 => (PasswordAlgorithm::Md5, Integrity::Sha1, false),
            Scheme::Sha256 { userhash } => (PasswordAlgorithm::Sha256, Integrity::Sha256, userhash),
            Scheme::Md5 { userhash } => (PasswordAlgorithm::Md5, Integrity::Sha256, userhash),
        };
        let challenge = self.challenges.get(&tuple.client.ip());
        // Before any challenge there is no list to echo: the request then
        // reads as an RFC 5389 one, whose algorithm is MD5.
        let algorithms = challenge.map(|c| c.algorithms.as_slice()).filter(|_| scheme != Scheme::Rfc5389);
        let learnt = challenge.map_or(&b"no-nonce-yet"[..], |c| c.nonce.as_slice());
        if hashed {
            w.attr(AttrType::USERHASH, &userhash(&username, REALM));
        } else {
            w.attr(AttrType::USERNAME, username.as_bytes());
        }
        w.attr(AttrType::REALM, REALM.as_bytes());
        w.attr(AttrType::NONCE, nonce.unwrap_or(learnt));
        if let Some(algorithms) = algorithms {
            w.attr(AttrType::PASSWORD_ALGORITHMS, algorithms);
            w.attr(AttrType::PASSWORD_ALGORITHM, &algorithm.attribute_value());
        }
        let key = SigningKey { key: LongTermKey::derive(algorithm, &username, REALM, &password), integrity };
        match integrity {
            Integrity::Sha1 => w.message_integrity(key.key.as_bytes()),
            Integrity::Sha256 => w.message_integrity_sha256(key.key.as_bytes()),
        };
        // A USERHASH names static users only; the MD5-only user has no
        // SHA-256 key.
        let right = self.authenticated
            && !wrong_key
            && (algorithms.is_some() || algorithm == PasswordAlgorithm::Md5)
            && !(hashed && rest)
            && !(algorithm == PasswordAlgorithm::Sha256 && username == MD5_ONLY_USER);
        right.then_some(key)
    }

    /// Sends one client packet and checks what came back. `key` is the key
    /// the harness signed the packet with, when the server signs its answers
    /// with it.
    fn client_packet(
        &mut self,
        handle: ClientHandle,
        tuple: &FiveTuple,
        packet: &[u8],
        key: Option<SigningKey>,
    ) -> ClientOutcome {
        if self.data_connections.iter().any(|(data, _)| data == tuple) {
            // What a bound client connection carries goes to its peer
            // unframed, past the core.
            return ClientOutcome::Dropped;
        }
        if tuple.transport.is_stream() && !self.streams.contains(tuple) && !self.open_stream(tuple) {
            // Refused: the driver closes the connection unread.
            return ClientOutcome::Dropped;
        }
        let mut reply = Vec::new();
        let outcome = self.server.handle_client(self.now, tuple, handle, packet, &mut reply);
        match &outcome {
            ClientOutcome::Replied => self.check_reply(tuple, packet, &reply, key),
            ClientOutcome::ConnectionBound { id } => {
                self.check_reply(tuple, packet, &reply, key);
                self.check_bound(tuple, packet, *id);
            }
            ClientOutcome::Deferred => {
                assert!(reply.is_empty(), "deferred, yet a reply was written");
                self.deferred(handle, tuple, packet, key);
            }
            ClientOutcome::Dropped => assert!(reply.is_empty(), "dropped, yet a reply was written"),
            ClientOutcome::RepliedFrom { .. } => panic!("answered from another address without RFC 5780 configured"),
            ClientOutcome::HandOff { worker } => panic!("handed to worker {worker}, yet there is one worker"),
            ClientOutcome::Forward { relay, peer, payload } => {
                assert!(reply.is_empty(), "forwarded, yet a reply was written");
                assert!(payload.start <= payload.end && payload.end <= packet.len(), "range outside the packet");
                assert_eq!(relay.is_ipv6(), peer.is_ipv6(), "forward through the relay of another family");
                assert!(self.sockets.open.contains_key(relay), "forward through a relay that is not open");
                let a = self.server.table().get(relay.allocation()).expect("forward from an allocation that exists");
                assert_eq!(a.tuple, *tuple, "forward from another client's allocation");
                assert!(a.is_live(), "forward from an allocation still opening");
                assert!(!a.is_expired(self.now.instant), "forward from an expired allocation");
                assert!(!a.tcp_relay, "a datagram forwarded for a TCP allocation");
                assert_eq!(self.policy.check(peer.ip()), Ok(peer.ip()), "forward to a refused peer {peer}");
            }
        }
        outcome
    }

    /// A client opens a TCP or TLS connection; whether it was admitted.
    fn open_stream(&mut self, tuple: &FiveTuple) -> bool {
        let admitted = self.server.handle_connection_opened(tuple);
        let (all, from_ip) = {
            let accounts = self.accounts.lock();
            (accounts.connections(), accounts.connections_from(tuple.client.ip()))
        };
        let (per_ip, total) = (self.limits.tcp_per_ip, self.limits.tcp_total);
        if admitted {
            assert!(total == 0 || all <= total, "{all} connections admitted, over the limit of {total}");
            assert!(per_ip == 0 || from_ip <= per_ip, "{from_ip} connections admitted from an IP, over {per_ip}");
            self.streams.push(*tuple);
        } else {
            let at_limit = (total != 0 && all >= total) || (per_ip != 0 && from_ip >= per_ip);
            assert!(at_limit, "connection refused under the limits ({all} in all, {from_ip} from its IP)");
            self.counts.connections_refused += 1;
        }
        admitted
    }

    /// A request answered later: an Allocate once its relays are open, a
    /// Connect once its peer answers (or fails at once, in the drive).
    fn deferred(&mut self, client: ClientHandle, tuple: &FiveTuple, packet: &[u8], key: Option<SigningKey>) {
        let request = Message::parse(packet).expect("only a parsed request is answered later");
        assert_eq!(request.class(), Class::Request, "a {:?} answered later", request.class());
        match request.method() {
            Method::ALLOCATE => {
                let request = packet.to_vec();
                self.due_allocates.push(DeferredAllocate { client, tuple: *tuple, request, key });
            }
            Method::CONNECT => {
                let peer = request.attribute(AttrType::XOR_PEER_ADDRESS).expect("a Connect taken has a peer");
                let peer = attr::read_xor_address(peer, &request.transaction_id()).expect("a well-formed peer");
                let owed = OwedAnswer {
                    connection: None,
                    tid: request.transaction_id(),
                    tuple: *tuple,
                    key,
                    fingerprint: request.has_fingerprint(),
                };
                assert!(self.connect_sent.is_none(), "two Connects in one step");
                self.connect_sent = Some((owed, canonical(peer)));
            }
            method => panic!("a {} answered later", method.name()),
        }
    }

    fn check_reply(&mut self, tuple: &FiveTuple, packet: &[u8], reply: &[u8], key: Option<SigningKey>) {
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
            Method::ALLOCATE
                | Method::REFRESH
                | Method::CREATE_PERMISSION
                | Method::CHANNEL_BIND
                | Method::CONNECT
                | Method::CONNECTION_BIND
        );
        if is_signed(&response) {
            self.counts.signed_replies += 1;
            assert!(self.authenticated && turn_method && is_signed(&request), "reply signed unasked");
            // RFC 8489 §9.2.4: with the integrity the request was checked
            // with, which is MESSAGE-INTEGRITY-SHA256 whenever it has one.
            let sha256 = request.has_integrity_sha256();
            assert_eq!(
                (response.has_integrity(), response.has_integrity_sha256()),
                (!sha256, sha256),
                "reply signed with other integrity than its request"
            );
            if sha256 {
                self.counts.sha256_signed_replies += 1;
            }
            if let Some(key) = key {
                assert!(verifies(&key, &response), "reply signed with another key");
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
            assert!(is_signed(&response), "reply to an authenticated request is unsigned");
        }
        if challenge {
            let nonce = response.attribute(AttrType::NONCE).expect("a 401 or 438 carries NONCE");
            assert!(nonce.starts_with(NONCE_COOKIE), "NONCE without RFC 8489's nonce cookie");
            let algorithms =
                response.attribute(AttrType::PASSWORD_ALGORITHMS).expect("a 401 or 438 carries PASSWORD-ALGORITHMS");
            let challenge = Challenge { nonce: nonce.to_vec(), algorithms: algorithms.to_vec() };
            self.challenges.insert(tuple.client.ip(), challenge);
        }
        if let Some(token) = response.attribute(AttrType::RESERVATION_TOKEN) {
            self.tokens.push(attr::read_reservation_token(token).expect("RESERVATION-TOKEN is 8 bytes"));
        }
    }

    /// A ConnectionBind succeeded: on a stream without an allocation, for
    /// the connection it named, which is bound now to that stream. The
    /// client connection is the client side of that pair from now on.
    fn check_bound(&mut self, tuple: &FiveTuple, packet: &[u8], id: ConnectionId) {
        let request = Message::parse(packet).expect("a parsed request bound a connection");
        assert_eq!(request.method(), Method::CONNECTION_BIND, "{:?} bound a connection", request.method());
        assert_eq!(connection_id(&request), Some(id), "bound another connection than the one named");
        assert!(tuple.transport.is_stream(), "a datagram bound a connection");
        assert!(self.server.table().find(tuple).is_none(), "a control connection bound a connection");
        let connection = self.server.tcp_connections().get(id).expect("the bound connection is known");
        assert!(matches!(connection.state, State::Bound(bound) if bound == *tuple), "not bound to its stream");
        assert!(self.sockets.live.contains(&id), "bound a connection the driver does not hold");
        if self.authenticated {
            let a = self.server.table().get(connection.allocation).expect("a bound connection's allocation exists");
            assert_eq!(claimed_user(&request).as_deref(), Some(&*a.username), "bound by another user");
        }
        self.data_connections.push((*tuple, id));
        self.counts.connections_bound += 1;
    }

    /// An ICMP report: relayed exactly when RFC 8656 §11.5 relays its kind
    /// (ICMPv4 destination unreachable or time exceeded; ICMPv6 destination
    /// unreachable, packet too big or time exceeded) to a live allocation
    /// with a permission for the peer; the Data indication is checked when
    /// it is sent.
    fn icmp(&mut self, allocation: u8, report: &IcmpReport) {
        let id = self.pick_allocation(allocation);
        let relay = RelayId::new(id, report.peer.is_ipv6());
        let before = self.server.stats().icmp_relayed;
        self.server.handle_icmp(self.now, relay, report);
        let relayed = self.server.stats().icmp_relayed - before;
        // Permissions hold canonical addresses, and the indication names the
        // peer as its permission does.
        let peer = canonical(report.peer);
        let kind = matches!((report.ipv6, report.icmp_type), (false, 3 | 11) | (true, 1..=3));
        let now = self.now.instant;
        let allowed = self.server.table().get(id).is_some_and(|a| {
            assert!(a.is_live(), "an allocation left opening");
            !a.is_expired(now) && a.has_permission(peer.ip(), now)
        });
        assert_eq!(relayed, u64::from(kind && allowed), "ICMP {report:?} relayed {relayed} times");
        if relayed == 1 {
            self.due_icmp.push((id, peer));
        }
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

    fn advance(&mut self, by: Duration) {
        self.now.instant += by;
        self.now.unix = UNIX_START + (self.now.instant - self.start).as_secs();
    }

    /// `handle_timeout`: Connects past their deadline are owed a 447, unless
    /// their allocation expired too and takes them along unanswered.
    fn timeout(&mut self) {
        let now = self.now.instant;
        let tcp = self.server.tcp_connections();
        let table = self.server.table();
        let timed_out: Vec<ConnectionId> = self
            .sockets
            .connecting
            .iter()
            .copied()
            .filter(|id| {
                let connection = tcp.get(*id).expect("the server knows every connecting id");
                let allocation = table.get(connection.allocation);
                now >= connection.deadline && allocation.is_some_and(|a| !a.is_expired(now))
            })
            .collect();
        for id in timed_out {
            self.answer_due(id, false);
        }
        self.server.handle_timeout(self.now);
        let next = self.server.poll_timeout();
        assert!(next.is_none_or(|at| at > now), "poll_timeout in the past after handle_timeout");
        assert!(self.server.table().iter().all(|(_, a)| !a.is_expired(now)), "expired allocation kept");
        let tcp = self.server.tcp_connections();
        // Those the server forgot are closed in the drive.
        for connection in self.sockets.live.iter().filter_map(|id| tcp.get(*id)) {
            assert!(
                matches!(connection.state, State::Bound(_)) || now < connection.deadline,
                "peer connection to {} kept past its deadline",
                connection.peer
            );
        }
        self.timed_out = true;
    }

    /// The Connect of `id` is answered in this step.
    fn answer_due(&mut self, id: ConnectionId, established: bool) {
        let at = self.owed.iter().position(|o| o.connection == Some(id));
        let owed = self.owed.remove(at.unwrap_or_else(|| panic!("{id:?} connecting, yet owed no answer")));
        self.due_answers.push((owed, established));
    }

    /// A client connection closed: the pair of a data connection, or the
    /// allocation of a control connection and every peer connection of it.
    fn connection_closed(&mut self, client: u8) {
        let (_, tuple) = client_at(client);
        if let Some(&(_, id)) = self.data_connections.iter().find(|(data, _)| *data == tuple) {
            self.close_pair(id);
            return;
        }
        // Datagrams have no connection; a refused one never reached the core.
        let Some(at) = self.streams.iter().position(|open| *open == tuple) else { return };
        self.streams.remove(at);
        let allocation = self.server.table().find(&tuple);
        let tcp = self.server.tcp_connections();
        let of_allocation: Vec<ConnectionId> = self
            .sockets
            .live
            .iter()
            .copied()
            .filter(|id| allocation.is_some() && tcp.get(*id).map(|c| c.allocation) == allocation)
            .collect();
        self.server.handle_connection_closed(&tuple);
        assert!(self.server.table().find(&tuple).is_none(), "allocation outlived its connection");
        self.drive();
        assert!(
            of_allocation.iter().all(|id| !self.sockets.live.contains(id)),
            "a peer connection outlived its control connection"
        );
    }

    /// The driver reports on a connection a Connect started; a failed one
    /// it has closed already.
    fn peer_connected(&mut self, connection: u8, established: bool) {
        if self.sockets.connecting.is_empty() {
            return;
        }
        let at = usize::from(connection) % self.sockets.connecting.len();
        let id = self.sockets.connecting.remove(at);
        if !established {
            self.sockets.release(id);
            self.closed.insert(id);
        }
        self.answer_due(id, established);
        self.server.handle_peer_connected(self.now, id, established);
        let connection = self.server.tcp_connections().get(id);
        if established {
            let connection = connection.expect("an established connection is kept");
            assert!(matches!(connection.state, State::Unbound), "established, yet not waiting for its bind");
            assert_eq!(connection.deadline, self.now.instant + BIND_TIMEOUT, "bind deadline not from now");
        } else {
            assert!(connection.is_none(), "a failed connection is kept");
        }
    }

    /// A peer connects to a relayed address; the driver hears it only on
    /// the TCP relays it has open.
    fn peer_accepted(&mut self, allocation: u8, peer: Peer) {
        let id = self.pick_allocation(allocation);
        let peer = peer_addr(peer);
        let relay = RelayId::new(id, peer.is_ipv6());
        if !self.sockets.tcp_relays.contains(&relay) {
            return;
        }
        let count = self.server.tcp_connections().count(id);
        let Some(connection) = self.server.handle_peer_accepted(self.now, relay, peer) else {
            assert_eq!(self.server.tcp_connections().count(id), count, "a refused peer connection is kept");
            return;
        };
        let now = self.now.instant;
        let peer = canonical(peer);
        let a = self.server.table().get(id).expect("accepted by an allocation that exists");
        assert!(a.tcp_relay, "accepted by a UDP allocation");
        assert!(!a.is_expired(now), "accepted by an expired allocation");
        assert!(a.has_permission(peer.ip(), now), "accepted {peer} without a permission");
        assert_eq!(self.policy.check(peer.ip()), Ok(peer.ip()), "accepted a refused peer {peer}");
        let kept = self.server.tcp_connections().get(connection).expect("an accepted connection is kept");
        assert_eq!((kept.allocation, kept.peer), (id, peer), "accepted for another allocation or peer");
        assert!(matches!(kept.state, State::Unbound), "accepted, yet not waiting for its bind");
        assert_eq!(kept.deadline, now + BIND_TIMEOUT, "bind deadline not from now");
        self.sockets.hold(connection);
        self.closed.remove(&connection);
        self.due_attempts.push((connection, id, peer));
        self.learn(connection);
    }

    /// A pair ended; the driver has closed both sides.
    fn close_pair(&mut self, id: ConnectionId) {
        self.sockets.release(id);
        self.closed.insert(id);
        self.server.handle_tcp_relay_closed(id);
        assert!(self.server.tcp_connections().get(id).is_none(), "a closed pair is kept");
    }

    /// A bound pair moves what it has, up to its allowance.
    fn pair_traffic(&mut self, connection: u8, to_peer: usize, to_client: usize) {
        let tcp = self.server.tcp_connections();
        let bound: Vec<ConnectionId> = self
            .sockets
            .live
            .iter()
            .copied()
            .filter(|id| tcp.get(*id).is_some_and(|c| matches!(c.state, State::Bound(_))))
            .collect();
        if bound.is_empty() {
            return;
        }
        let id = bound[usize::from(connection) % bound.len()];
        let allocation = tcp.get(id).expect("listed above").allocation;
        let allowance = self.server.tcp_relay_allowance(self.now, id);
        if self.max_bps == 0 {
            assert_eq!(allowance, [usize::MAX; 2], "a pair allowance without max_bps");
        } else {
            assert!(allowance.iter().all(|a| *a <= self.max_bps), "a pair allowance over a second's budget");
        }
        let moved = [to_peer.min(allowance[0]), to_client.min(allowance[1])];
        let before = self.server.table().get(allocation).expect("a bound pair's allocation exists").traffic;
        let total = self.server.stats().tcp_relayed_bytes;
        self.server.record_tcp_relay_traffic(id, moved[0] as u64, moved[1] as u64);
        let after = self.server.table().get(allocation).expect("a bound pair's allocation exists").traffic;
        assert_eq!(
            (after.bytes_to_peer, after.bytes_to_client),
            (before.bytes_to_peer + moved[0] as u64, before.bytes_to_client + moved[1] as u64),
            "pair traffic not counted in its allocation"
        );
        assert_eq!(self.server.stats().tcp_relayed_bytes, total + (moved[0] + moved[1]) as u64);
        let left = self.server.tcp_relay_allowance(self.now, id);
        let expected = if self.max_bps == 0 { allowance } else { [allowance[0] - moved[0], allowance[1] - moved[1]] };
        assert_eq!(left, expected, "the budget did not shrink by what the pair moved");
    }

    /// The driver answers every event, as after every input; then what it
    /// was asked, what observers were told and the messages written for
    /// later are checked against what the step owes.
    fn drive(&mut self) {
        let transmits = self.sockets.drive(&mut self.server, self.now);
        self.check_driver_work();
        self.observe();
        for (transmit, bytes) in &transmits {
            self.transmit(transmit, bytes);
        }
        assert!(self.due_allocates.is_empty(), "{} Allocate answers owed, not sent", self.due_allocates.len());
        assert!(self.due_answers.is_empty(), "Connect answers owed, not sent: {:?}", self.due_answers);
        assert!(self.due_attempts.is_empty(), "ConnectionAttempts owed, not sent: {:?}", self.due_attempts);
        assert!(self.due_icmp.is_empty(), "ICMP Data indications owed, not sent: {:?}", self.due_icmp);
        // A Connect gone unanswered went with its allocation (RFC 6062 §5.5).
        let tcp = self.server.tcp_connections();
        self.owed
            .retain(|o| o.connection.and_then(|id| tcp.get(id)).is_some_and(|c| matches!(c.state, State::Connecting)));
        // The driver closes a pair's client side with its peer side.
        let live = &self.sockets.live;
        let ended: Vec<FiveTuple> =
            self.data_connections.iter().filter(|(_, id)| !live.contains(id)).map(|(tuple, _)| *tuple).collect();
        self.data_connections.retain(|(_, id)| live.contains(id));
        self.streams.retain(|open| !ended.contains(open));
    }

    /// What the core asked of the driver since the last drive: relay
    /// sockets on ports of the pools, and peer connections for the Connect
    /// of this step.
    fn check_driver_work(&mut self) {
        let calls = &self.sockets.open_calls[self.read.open_calls..];
        let mut per_relay: BTreeMap<RelayId, usize> = BTreeMap::new();
        for call in calls {
            assert!((PORT_MIN..=PORT_MAX).contains(&call.addr.port()), "relay opened outside the port range");
            assert!(relay_ips().any(|ip| ip == call.addr.ip()), "relay opened on {}, no relay IP", call.addr);
            assert!(call.protocol == RelayProtocol::Udp || !call.dont_fragment, "TCP relay opened with DONT-FRAGMENT");
            let tried = per_relay.entry(call.relay).or_default();
            *tried += 1;
            assert!(*tried <= OPEN_ATTEMPTS, "relay {:?} asked for more than {OPEN_ATTEMPTS} times", call.relay);
            if self.sockets.in_use.contains(&call.addr) {
                self.counts.addr_in_use += 1;
            }
        }
        self.read.open_calls = self.sockets.open_calls.len();

        let started = &self.sockets.connects[self.read.connects..];
        assert!(started.len() <= 1, "{} connections started in one step", started.len());
        let sent = self.connect_sent.take();
        match (started.first(), sent) {
            (Some(&(relay, connection, peer)), Some((mut owed, expected_peer))) => {
                assert_eq!(peer, expected_peer, "connected to another peer than the Connect named");
                assert_eq!(self.policy.check(peer.ip()), Ok(peer.ip()), "connect to a refused peer {peer}");
                let table = self.server.table();
                assert_eq!(table.find(&owed.tuple), Some(relay.allocation()), "connected from another allocation");
                let kept = self.server.tcp_connections().get(connection).expect("a started connection is kept");
                assert!(matches!(kept.state, State::Connecting), "started, yet not connecting");
                owed.connection = Some(connection);
                self.closed.remove(&connection);
                self.owed.push(owed);
            }
            (Some(started), None) => panic!("connection {started:?} started with no Connect this step"),
            (None, Some((owed, peer))) => {
                assert_eq!(peer.port(), 0, "the connection to {peer} neither started nor failed at once");
                self.due_answers.push((owed, false));
            }
            (None, None) => {}
        }
        self.read.connects = self.sockets.connects.len();

        self.closed.extend(&self.sockets.closed_peers[self.read.closed_peers..]);
        self.read.closed_peers = self.sockets.closed_peers.len();
    }

    /// Follows what observers were told since the last drive, as they would
    /// keep it, and checks that it adds up.
    fn observe(&mut self) {
        let events = &self.sockets.observed[self.read.observed..];
        let table = self.server.table();
        let seen = &mut self.observed;
        for event in events {
            match event {
                Event::AllocationCreated(info) => {
                    let a = table.get(info.id).expect("created, yet not in the table");
                    assert!(a.is_live(), "created, yet still opening");
                    assert_eq!(
                        (info.tuple, &*info.user, info.tcp),
                        (a.tuple, &*a.username, a.tcp_relay),
                        "created as another allocation than the table's"
                    );
                    assert_eq!(info.relayed, [a.relayed(false).copied(), a.relayed(true).copied()]);
                    assert_eq!(&*info.realm, if self.authenticated { REALM } else { "" });
                    let before = seen.allocations.insert(info.id, info.tuple);
                    assert!(before.is_none(), "{:?} created again before it was deleted", info.id);
                    if info.tcp {
                        self.counts.tcp_relays += 1;
                    }
                }
                Event::AllocationRefreshed { id, .. } => {
                    assert!(seen.allocations.contains_key(id), "refreshed {id:?}, which observers do not know");
                }
                Event::AllocationDeleted { id, tuple, .. } => {
                    let created = seen.allocations.remove(id);
                    assert_eq!(created, Some(*tuple), "deleted {id:?}, not created as {tuple:?}");
                    seen.permissions.retain(|(of, _)| of != id);
                    seen.channels.retain(|(of, _), _| of != id);
                    seen.channel_numbers.retain(|(of, _)| of != id);
                    self.counts.allocations_deleted += 1;
                }
                Event::PermissionInstalled { id, peer } => {
                    assert!(seen.allocations.contains_key(id), "permission for {id:?}, which observers do not know");
                    assert_eq!(self.policy.check(*peer), Ok(*peer), "permission for a refused peer {peer}");
                    seen.permissions.insert((*id, *peer));
                }
                Event::PermissionExpired { id, peer } => {
                    assert!(seen.permissions.remove(&(*id, *peer)), "expired a permission for {peer} never installed");
                    self.counts.permissions_expired += 1;
                }
                Event::ChannelBound { id, channel, peer } => {
                    assert!(seen.allocations.contains_key(id), "channel for {id:?}, which observers do not know");
                    let before = seen.channels.insert((*id, *channel), *peer);
                    assert!(before.is_none_or(|p| p == *peer), "channel {channel:?} moved to {peer} unexpired");
                    seen.channel_numbers.insert((*id, *channel));
                }
                Event::ChannelExpired { id, channel, peer } => {
                    let bound = seen.channels.remove(&(*id, *channel));
                    assert_eq!(bound, Some(*peer), "expired channel {channel:?} to {peer}, never bound so");
                    self.counts.channels_expired += 1;
                }
                driver_work => panic!("{driver_work:?} left to observers"),
            }
        }
        self.read.observed = self.sockets.observed.len();
    }

    /// One message written for later: what the step owes.
    fn transmit(&mut self, transmit: &Transmit, bytes: &[u8]) {
        let message = one_message(bytes);
        match (message.method(), message.class()) {
            (Method::ALLOCATE, Class::Success | Class::Error) => self.allocate_answer(transmit, bytes, &message),
            (Method::CONNECT, Class::Success | Class::Error) => {
                self.tcp_allocation_of(transmit);
                self.connect_answer(&transmit.tuple, &message);
            }
            (Method::CONNECTION_ATTEMPT, Class::Indication) => {
                let id = self.tcp_allocation_of(transmit);
                self.connection_attempt(id, &message);
            }
            (Method::DATA, Class::Indication) => self.icmp_indication(transmit, &message),
            (method, class) => panic!("message for later is a {} {class:?}", method.name()),
        }
    }

    /// The TCP allocation a message for later goes to the client of.
    fn tcp_allocation_of(&self, transmit: &Transmit) -> AllocationId {
        let table = self.server.table();
        let id = table.find(&transmit.tuple).expect("RFC 6062 message to a client without an allocation");
        let a = table.get(id).expect("indexed allocations exist");
        assert_eq!(a.client, transmit.client, "RFC 6062 message to another client's handle");
        assert!(a.tcp_relay, "RFC 6062 message for a UDP allocation");
        id
    }

    /// The answer to an Allocate answered `Deferred`: checked as a reply,
    /// fingerprinted as its request, and as the table has the allocation.
    fn allocate_answer(&mut self, transmit: &Transmit, bytes: &[u8], message: &Message<'_>) {
        let tid = message.transaction_id();
        let at = self.due_allocates.iter().position(|due| {
            due.tuple == transmit.tuple
                && Message::parse(&due.request).is_ok_and(|request| request.transaction_id() == tid)
        });
        let due = self.due_allocates.remove(at.expect("Allocate answer to no Allocate answered later"));
        assert_eq!(transmit.client, due.client, "Allocate answer to another client's handle");
        self.check_reply(&due.tuple, &due.request, bytes, due.key);
        let request = Message::parse(&due.request).expect("checked above");
        assert_eq!(
            message.has_fingerprint(),
            request.has_fingerprint(),
            "Allocate answer fingerprinted unlike its request"
        );
        let table = self.server.table();
        let allocation = table.find(&due.tuple).and_then(|id| table.get(id));
        if message.class() == Class::Success {
            let a = allocation.expect("an Allocate succeeded, yet its allocation is gone");
            assert!(a.is_live() && a.allocate_tid == tid, "an Allocate succeeded for another allocation");
            let relayed: Vec<SocketAddr> = message
                .attributes()
                .filter(|attribute| attribute.typ == AttrType::XOR_RELAYED_ADDRESS)
                .map(|attribute| attr::read_xor_address(attribute.value, &tid).expect("well-formed relayed address"))
                .collect();
            let advertised: Vec<SocketAddr> = a.relayed_addresses().map(|r| r.advertised).collect();
            assert_eq!(relayed, advertised, "Allocate success names other relayed addresses");
        } else {
            assert!(allocation.is_none(), "an Allocate failed, yet its allocation is kept");
        }
        self.counts.allocate_answers += 1;
    }

    /// A Data indication with XOR-PEER-ADDRESS and ICMP, for an ICMP error
    /// relayed this step, to its allocation's client.
    fn icmp_indication(&mut self, transmit: &Transmit, message: &Message<'_>) {
        assert_eq!(message.attribute(AttrType::ICMP).map(<[u8]>::len), Some(8), "Data indication without ICMP");
        assert!(message.attribute(AttrType::DATA).is_none(), "ICMP Data indication with DATA");
        let peer = attr::read_xor_address(
            message.attribute(AttrType::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS"),
            &message.transaction_id(),
        )
        .expect("well-formed XOR-PEER-ADDRESS");
        let at = self.due_icmp.iter().position(|(_, due)| *due == peer);
        let (id, _) =
            self.due_icmp.remove(at.unwrap_or_else(|| panic!("ICMP Data indication about {peer}, not relayed")));
        let a = self.server.table().get(id).expect("relayed for an allocation that exists");
        assert_eq!((transmit.client, transmit.tuple), (a.client, a.tuple), "ICMP Data indication to another client");
        self.counts.icmp_indications += 1;
    }

    fn learn(&mut self, id: ConnectionId) {
        if !self.connection_ids.contains(&id) {
            self.connection_ids.push(id);
        }
    }

    /// Shutdown: every allocation ends, and takes all it holds along.
    fn close_all(&mut self) {
        self.server.close_all();
        self.drive();
        self.check_invariants();
        assert!(self.server.table().is_empty(), "allocations left after close_all");
        assert!(self.sockets.open.is_empty() && self.sockets.live.is_empty(), "sockets left after close_all");
        assert!(self.observed.allocations.is_empty(), "allocations observers were not told the end of");
        let accounts = self.accounts.lock();
        assert_eq!((accounts.allocations(), accounts.per_user().count()), (0, 0), "quota left after close_all");
    }

    fn connection_attempt(&mut self, allocation: AllocationId, message: &Message<'_>) {
        assert!(!is_signed(message), "signed ConnectionAttempt");
        let id = connection_id(message).expect("ConnectionAttempt with a CONNECTION-ID");
        let peer = message.attribute(AttrType::XOR_PEER_ADDRESS).expect("ConnectionAttempt with XOR-PEER-ADDRESS");
        let peer = attr::read_xor_address(peer, &message.transaction_id()).expect("well-formed XOR-PEER-ADDRESS");
        let at = self.due_attempts.iter().position(|(due, _, _)| *due == id);
        let at = at.unwrap_or_else(|| panic!("ConnectionAttempt for {id:?}, which no peer made"));
        let (_, due_allocation, due_peer) = self.due_attempts.remove(at);
        assert_eq!((allocation, peer), (due_allocation, due_peer), "ConnectionAttempt to another client or peer");
        self.learn(id);
    }

    /// A Connect answer: to a Connect of this transaction and client whose
    /// outcome this step reported, saying that outcome, signed when the
    /// server authenticates (with our key when we signed the Connect right)
    /// and fingerprinted as the Connect was.
    fn connect_answer(&mut self, tuple: &FiveTuple, message: &Message<'_>) {
        let established = message.class() == Class::Success;
        let answered = connection_id(message);
        if established {
            assert!(answered.is_some(), "Connect success without CONNECTION-ID");
        } else {
            let code = message.attribute(AttrType::ERROR_CODE).and_then(|v| attr::read_error_code(v).ok());
            let code = code.expect("Connect error with a well-formed ERROR-CODE").code;
            assert_eq!(code, ErrorCode::CONNECTION_TIMEOUT_OR_FAILURE.0, "Connect answered {code}");
        }
        assert_eq!(
            is_signed(message),
            self.authenticated,
            "Connect answer signed without authentication or unsigned with"
        );
        if message.has_fingerprint() {
            assert!(message.verify_fingerprint(), "Connect answer with a wrong FINGERPRINT");
        }
        let tid = message.transaction_id();
        let of_transaction: Vec<usize> = (0..self.due_answers.len())
            .filter(|&i| self.due_answers[i].0.tid == tid && self.due_answers[i].0.tuple == *tuple)
            .collect();
        assert!(!of_transaction.is_empty(), "Connect answer to no Connect this step reported on");
        let same_outcome: Vec<usize> = of_transaction
            .into_iter()
            .filter(|&i| {
                let (owed, due_established) = &self.due_answers[i];
                *due_established == established && (!established || answered == owed.connection)
            })
            .collect();
        assert!(!same_outcome.is_empty(), "Connect answer of another outcome or CONNECTION-ID than reported");
        let matching = same_outcome.into_iter().find(|&i| {
            let (owed, _) = &self.due_answers[i];
            owed.fingerprint == message.has_fingerprint() && owed.key.is_none_or(|key| verifies(&key, message))
        });
        let at = matching.expect("Connect answer not signed or fingerprinted as its Connect");
        let (owed, _) = self.due_answers.remove(at);
        if let (true, Some(id)) = (established, owed.connection) {
            self.learn(id);
        }
        self.counts.connect_answers += 1;
    }

    fn check_invariants(&mut self) {
        let now = self.now.instant;
        let table = self.server.table();
        assert!(table.is_consistent(), "allocation table and its index disagree");
        assert!(table.iter().all(|(_, a)| a.is_live()), "an allocation left opening after the drive");
        self.sockets.check(&self.server);
        let relays: BTreeMap<RelayId, SocketAddr> = table
            .iter()
            .flat_map(|(id, a)| a.relayed_addresses().map(move |r| (RelayId::new(id, r.addr.is_ipv6()), r.addr)))
            .collect();
        let distinct: BTreeSet<SocketAddr> = relays.values().copied().collect();
        assert_eq!(distinct.len(), relays.len(), "two allocations share a relayed address");

        let tcp = self.server.tcp_connections();
        let mut per_user = BTreeMap::new();
        let mut per_ip = BTreeMap::new();
        for (id, a) in table.iter() {
            *per_user.entry(a.quota_key.to_string()).or_insert(0u32) += 1;
            for relayed in a.relayed_addresses() {
                *per_ip.entry(relayed.addr.ip()).or_insert(0usize) += 1;
                let relay = RelayId::new(id, relayed.addr.is_ipv6());
                assert_eq!(self.sockets.tcp_relays.contains(&relay), a.tcp_relay, "relay of the other transport");
            }
            assert!(a.permission_count() <= self.max_permissions, "permissions over the limit");
            assert!(a.channel_count() <= self.max_channels, "channels over the limit");
            assert!(!a.tcp_relay || a.channel_count() == 0, "a channel on a TCP allocation");
            assert!(tcp.count(id) <= self.max_tcp_peer_connections, "peer connections over the limit");
            let reported = self.observed.permissions.iter().filter(|(of, _)| *of == id).count();
            assert_eq!(reported, a.permission_count(), "observers know other permissions than {id:?} holds");
        }
        {
            let accounts = self.accounts.lock();
            let counted: BTreeMap<String, u32> = accounts.per_user().map(|(key, n)| (key.to_owned(), n)).collect();
            assert_eq!(per_user, counted, "quota counts differ from the table");
            assert_eq!(accounts.allocations() as usize, table.len(), "total quota differs from the table");
            for ip in relay_ips() {
                let used = per_ip.get(&ip).copied().unwrap_or(0);
                assert!(used + accounts.free_ports(ip) <= POOL_SIZE, "ports of {ip} both used and free");
            }
            assert_eq!(accounts.connections() as usize, self.streams.len(), "connections counted differ from open");
            for open in &self.streams {
                let from_ip = self.streams.iter().filter(|other| other.client.ip() == open.client.ip()).count();
                assert_eq!(accounts.connections_from(open.client.ip()) as usize, from_ip, "connections of an IP");
            }
        }
        assert!(per_ip.values().all(|n| *n <= POOL_SIZE), "more allocations than ports");
        let created: Vec<AllocationId> = self.observed.allocations.keys().copied().collect();
        let ids: Vec<AllocationId> = table.iter().map(|(id, _)| id).collect();
        assert_eq!(created, ids, "the allocations observers know differ from the table's");

        // The driver sleeps until poll_timeout: it must wake in time for
        // every deadline the server holds.
        let wake = self.server.poll_timeout();
        for (id, a) in table.iter() {
            assert!(wake.is_some_and(|at| at <= a.next_deadline()), "poll_timeout after a deadline of {id:?}");
        }

        assert_eq!(tcp.len(), self.sockets.live.len(), "the server and the driver hold different peer connections");
        for id in &self.sockets.live {
            let connection = tcp.get(*id).unwrap_or_else(|| panic!("the driver holds {id:?}, unknown to the server"));
            let a = table.get(connection.allocation).expect("a peer connection of an allocation that exists");
            assert!(a.tcp_relay, "a peer connection of a UDP allocation");
            let peer = connection.peer;
            assert_eq!(self.policy.check(peer.ip()), Ok(peer.ip()), "a peer connection to a refused peer {peer}");
            let connecting = matches!(connection.state, State::Connecting);
            assert_eq!(
                connecting,
                self.sockets.connecting.contains(id),
                "{id:?} connecting for one of the server and the driver only"
            );
            let owed = self.owed.iter().filter(|o| o.connection == Some(*id)).count();
            assert_eq!(owed, usize::from(connecting), "{id:?} connecting without one answer owed");
            let wait = match connection.state {
                State::Connecting => Some(CONNECT_TIMEOUT),
                State::Unbound => Some(BIND_TIMEOUT),
                State::Bound(_) => None,
            };
            if let Some(wait) = wait {
                assert!(connection.deadline <= now + wait, "{id:?} waits past its 30 seconds");
                assert!(wake.is_some_and(|at| at <= connection.deadline), "poll_timeout after {id:?}'s deadline");
            }
        }
        assert_eq!(self.owed.len(), self.sockets.connecting.len(), "answers owed for connections not connecting");
        for id in &self.closed {
            assert!(tcp.get(*id).is_none(), "{id:?} closed by the driver, known to the server");
        }
        for (tuple, id) in &self.data_connections {
            let bound = tcp.get(*id).is_some_and(|c| matches!(c.state, State::Bound(to) if to == *tuple));
            assert!(bound, "the pair of a data connection is not bound to it");
        }

        if std::mem::take(&mut self.timed_out) {
            self.check_observed_live();
        }
    }

    /// After `handle_timeout`: what observers hold as live is live, and
    /// what is live they were told of.
    fn check_observed_live(&self) {
        let now = self.now.instant;
        let table = self.server.table();
        for (id, peer) in &self.observed.permissions {
            let a = table.get(*id).expect("observers know a permission of an allocation that is gone");
            assert!(a.has_permission(*peer, now), "permission for {peer} expired, yet observers were not told");
        }
        for (id, number) in &self.observed.channel_numbers {
            let a = table.get(*id).expect("observers know a channel of an allocation that is gone");
            let bound = self.observed.channels.get(&(*id, *number)).copied();
            assert_eq!(a.channel_peer(*number, now), bound, "channel {number:?} is not as observers were told");
        }
    }
}

fuzz_target!(|input: Input| {
    let mut harness = Harness::new(&input.setup);
    for op in input.ops.iter().take(MAX_OPS) {
        harness.run(op);
    }
    harness.close_all();
    // FUZZ_STATS=1 shows whether the inputs reach the authenticated and
    // RFC 6062 paths (a harness that never signs a request fuzzes only the
    // 401 branch), one line per run.
    if std::env::var_os("FUZZ_STATS").is_some() {
        let stats = harness.server.stats();
        let counts = &harness.counts;
        eprintln!(
            "authenticated={} created={} allocate_answers={} addr_in_use={} deleted={} relayed_to_peer={} \
             relayed_to_client={} icmp_indications={} auth_failures={} signed_replies={} sha256_signed_replies={} \
             permissions_expired={} channels_expired={} tcp_relays={} tcp_peer_connections={} tcp_peer_refused={} \
             tcp_peer_failures={} connect_answers={} connections_bound={} connections_refused={} \
             tcp_relayed_bytes={}",
            input.setup.authenticated,
            stats.allocations_created,
            counts.allocate_answers,
            counts.addr_in_use,
            counts.allocations_deleted,
            stats.relayed_to_peer,
            stats.relayed_to_client,
            counts.icmp_indications,
            stats.auth_failures,
            counts.signed_replies,
            counts.sha256_signed_replies,
            counts.permissions_expired,
            counts.channels_expired,
            counts.tcp_relays,
            stats.tcp_peer_connections,
            stats.tcp_peer_refused,
            stats.tcp_peer_failures,
            counts.connect_answers,
            counts.connections_bound,
            counts.connections_refused,
            stats.tcp_relayed_bytes,
        );
    }
});
