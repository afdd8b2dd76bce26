//! Tests of the TURN core through `Server`'s inputs, with a fake clock and a
//! fake [`Driver`], so nothing here sleeps or opens a socket.
//!
//! Clients do the long-term credential dance as a real one would (RFC 8489
//! §9.2): an unsigned first request, a 401 that carries REALM and NONCE, then
//! signed requests. Every response is parsed and its class, method,
//! transaction ID and ERROR-CODE checked, and every response to a signed
//! request must carry a MESSAGE-INTEGRITY made with the same key, except the
//! 401 and 438 answers, which cannot be signed (RFC 8489 §9.2.4).
//!
//! After every input the harness checks that the table is consistent, that
//! the driver has exactly the table's relays open, and that the quota counts
//! are exactly the table's allocations, so a leak anywhere fails the step
//! that caused it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use proptest::prelude::*;

use super::*;
use crate::proto::Transport;
use crate::proto::auth::{
    NONCE_COOKIE, OFFERED_ALGORITHMS, PasswordAlgorithm, StaticCredentials, UserKeys, rest_password, userhash,
};
use crate::proto::port_pool::PortPool;
use crate::proto::stun::TransactionId;
use crate::proto::stun::integrity::{long_term_key_md5, long_term_key_sha256};

const REALM: &str = "example.org";
const USERS: &[(&str, &str)] = &[("alice", "alice-password"), ("bob", "bob-password")];
const REST_SECRET_NEW: &[u8] = b"rest-secret-new";
const REST_SECRET_OLD: &[u8] = b"rest-secret-old";
const NONCE_LIFETIME: u64 = 600;
/// Wall-clock start of every test (2027-01-15).
const UNIX_START: u64 = 1_800_000_000;
/// Where clients send their requests; with no `relay_ips` configured, also
/// the relay IP.
const SERVER: &str = "192.0.2.10:3478";
const SERVER_V6: &str = "[2001:db8::10]:3478";
/// A small relay port range, so exhaustion is a few allocations away.
const PORTS: (u16, u16) = (50000, 50007);
/// REQUESTED-TRANSPORT values: UDP (17) and TCP (6) with the RFFU bytes.
const UDP: [u8; 4] = [17, 0, 0, 0];
const TCP: [u8; 4] = [6, 0, 0, 0];
/// Public peers that the default policy lets through.
const PEER: &str = "8.8.8.8:1000";
const PEER_B: &str = "1.1.1.1:2000";
const PEER_C: &str = "9.9.9.9:3000";
const PEER_V6: &str = "[2606:4700::1111]:4000";
/// Peers the default policy refuses (RFC 8656 §21.3), IPv4 or IPv4-mapped.
const FORBIDDEN_PEERS: &[&str] =
    &["127.0.0.1:9", "[::ffff:127.0.0.1]:9", "0.0.0.0:9", "10.0.0.1:9", "169.254.169.254:80", "192.168.1.1:9"];

/// Issue 6 item 6: every encoding we know of that leads into loopback,
/// unspecified, private, metadata or special ranges, for an IPv4 relay.
/// Only loopback and unroutable addresses, so a failing test sends nothing
/// off this machine (the core sends nothing at all, but the rule stands).
const BYPASS_V4: &[&str] = &[
    "127.0.0.1:9",
    "127.255.255.254:9",
    "0.0.0.0:9",
    "0.1.2.3:9",
    "10.0.0.1:9",
    "172.16.0.1:9",
    "172.31.255.254:9",
    "192.168.1.1:9",
    "100.64.0.1:9",
    "169.254.169.254:80",
    "192.0.0.1:9",
    "192.0.2.1:9",
    "198.18.0.1:9",
    "224.0.0.1:9",
    "239.255.255.250:1900",
    "240.0.0.1:9",
    "255.255.255.255:9",
    // IPv4-mapped and IPv4-compatible forms judged as the IPv4 inside.
    "[::ffff:127.0.0.1]:9",
    "[::ffff:0.0.0.0]:9",
    "[::ffff:10.0.0.1]:9",
    "[::ffff:169.254.169.254]:80",
    "[::127.0.0.1]:9",
    "[::169.254.169.254]:80",
];

/// The same for an IPv6 relay: loopback, unspecified, NAT64, 6to4 and Teredo
/// forms of IPv4 targets, ULA (incl. cloud metadata), link-local, multicast.
const BYPASS_V6: &[&str] = &[
    "[::1]:9",
    "[::]:9",
    "[64:ff9b::7f00:1]:9",
    "[64:ff9b::a9fe:a9fe]:80",
    "[2002:7f00:1::]:9",
    "[2002:a9fe:a9fe::1]:80",
    "[2001:0:4136:e378:8000:63bf:3fff:fdd2]:9",
    "[fc00::1]:9",
    "[fd00:ec2::254]:80",
    "[fe80::1]:9",
    "[ff02::1]:9",
    "[2001:db8::1]:9",
    "[100::1]:9",
];

const SECOND: Duration = Duration::from_secs(1);

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address literal")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

// ---------------------------------------------------------------------------
// The fake driver
// ---------------------------------------------------------------------------

/// A [`Driver`] with the real one's port pools and quota rules and no sockets.
struct FakeDriver {
    ports: (u16, u16),
    pools: HashMap<IpAddr, PortPool>,
    /// Relays open now, by allocation.
    open: HashMap<RelayId, SocketAddr>,
    /// Every `open_relay` call, successful or not.
    open_calls: Vec<(RelayId, RelayRequest)>,
    /// Every `close_relay` call.
    close_calls: Vec<RelayId>,
    /// Allocations per user; 0 for no limit (as `io::relay::QuotaLimits`).
    user_quota: u32,
    /// Allocations in all; 0 for no limit.
    total_quota: u32,
    per_user: BTreeMap<String, u32>,
    total: u32,
    /// Refuse DONT-FRAGMENT, as on a platform without IP_DONTFRAG.
    dont_fragment_unsupported: bool,
    /// The harness's clock, for reservation deadlines.
    now: Instant,
    /// RFC 6062: TCP relays opened, connections started, connections closed.
    tcp_relays: Vec<RelayId>,
    connects: Vec<(RelayId, ConnectionId, SocketAddr)>,
    closed_peers: Vec<ConnectionId>,
    /// Make `connect_peer` fail at once.
    connect_fails: bool,
}

impl FakeDriver {
    fn new(now: Instant) -> Self {
        Self {
            ports: PORTS,
            pools: HashMap::new(),
            open: HashMap::new(),
            open_calls: Vec::new(),
            close_calls: Vec::new(),
            user_quota: 0,
            total_quota: 0,
            per_user: BTreeMap::new(),
            total: 0,
            dont_fragment_unsupported: false,
            now,
            tcp_relays: Vec::new(),
            connects: Vec::new(),
            closed_peers: Vec::new(),
            connect_fails: false,
        }
    }

    fn pool(&mut self, ip: IpAddr) -> &mut PortPool {
        let (min, max) = self.ports;
        self.pools.entry(ip).or_insert_with(|| PortPool::new(min, max))
    }

    fn free_ports(&self, ip: IpAddr) -> usize {
        self.pools.get(&ip).map_or(usize::from(self.ports.1 - self.ports.0) + 1, PortPool::free_ports)
    }

    fn quota(&self, user: &str) -> u32 {
        self.per_user.get(user).copied().unwrap_or(0)
    }
}

impl Driver for FakeDriver {
    fn open_relay(&mut self, id: RelayId, request: &RelayRequest) -> Result<RelayOpened, RelayError> {
        assert!(!self.open.contains_key(&id), "relay of {id:?} opened while open");
        assert_eq!(id.is_ipv6(), request.ip.is_ipv6(), "relay id and address of different families");
        self.open_calls.push((id, *request));
        if request.dont_fragment && self.dont_fragment_unsupported {
            return Err(RelayError::DontFragmentUnsupported);
        }
        let now = self.now;
        let (ip, port, reservation) = match request.port {
            PortRequest::Reserved(token) => self
                .pools
                .iter_mut()
                .filter(|(ip, _)| ip.is_ipv6() == request.ip.is_ipv6())
                .find_map(|(ip, pool)| pool.claim(&token, now).map(|port| (*ip, port, None)))
                .ok_or(RelayError::BadToken)?,
            PortRequest::Even { reserve_next } => {
                let (port, token) =
                    self.pool(request.ip).allocate_even(reserve_next, now).ok_or(RelayError::NoPorts)?;
                (request.ip, port, token)
            }
            PortRequest::Any => (request.ip, self.pool(request.ip).allocate().ok_or(RelayError::NoPorts)?, None),
        };
        let addr = SocketAddr::new(ip, port);
        self.open.insert(id, addr);
        Ok(RelayOpened { addr, reservation })
    }

    fn close_relay(&mut self, id: RelayId) {
        let addr = self.open.remove(&id).unwrap_or_else(|| panic!("close_relay({id:?}) of a relay that is not open"));
        self.close_calls.push(id);
        self.pool(addr.ip()).release(addr.port());
    }

    fn open_tcp_relay(&mut self, id: RelayId, request: &RelayRequest) -> Result<RelayOpened, RelayError> {
        assert_eq!(request.port, PortRequest::Any, "TCP relays take any port");
        let opened = self.open_relay(id, request)?;
        self.tcp_relays.push(id);
        Ok(opened)
    }

    fn connect_peer(&mut self, relay: RelayId, id: ConnectionId, peer: SocketAddr) -> Result<(), ConnectFailed> {
        assert!(self.open.contains_key(&relay), "connect from a relay that is not open");
        if self.connect_fails {
            return Err(ConnectFailed);
        }
        self.connects.push((relay, id, peer));
        Ok(())
    }

    fn close_peer(&mut self, id: ConnectionId) {
        self.closed_peers.push(id);
    }

    fn acquire_quota(&mut self, user: &str) -> Result<(), QuotaError> {
        if self.total_quota != 0 && self.total >= self.total_quota {
            return Err(QuotaError::Total);
        }
        let count = self.quota(user);
        if self.user_quota != 0 && count >= self.user_quota {
            return Err(QuotaError::User);
        }
        self.per_user.insert(user.to_owned(), count + 1);
        self.total += 1;
        Ok(())
    }

    fn release_quota(&mut self, user: &str) {
        let count = self.per_user.get_mut(user).unwrap_or_else(|| panic!("quota of {user} released but not held"));
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

fn authenticator() -> Authenticator {
    let users = USERS
        .iter()
        .map(|(user, password)| ((*user).to_owned(), UserKeys::from_password(user, REALM, password)))
        .collect();
    let store = StaticCredentials::new(REALM, users, vec![REST_SECRET_NEW.to_vec(), REST_SECRET_OLD.to_vec()]);
    Authenticator::new(REALM.to_owned(), store, [7; 32], NONCE_LIFETIME)
}

/// TURN with long-term credentials and every other setting at its default.
fn turn_config() -> TurnConfig {
    TurnConfig { auth: Some(authenticator()), ..TurnConfig::default() }
}

struct Harness {
    server: Server,
    driver: FakeDriver,
    now: Now,
    start: Instant,
}

impl Harness {
    fn new(turn: TurnConfig) -> Self {
        Self::with_config(ServerConfig { turn: Some(turn), ..ServerConfig::default() })
    }

    fn with_config(config: ServerConfig) -> Self {
        let start = crate::io::clock::now();
        let server = Server::new(config);
        Self { server, driver: FakeDriver::new(start), now: Now { instant: start, unix: UNIX_START }, start }
    }

    fn authenticated() -> Self {
        Self::new(turn_config())
    }

    /// Moves both clocks forward.
    fn advance(&mut self, by: Duration) {
        self.now.instant += by;
        self.now.unix += by.as_secs();
    }

    /// Seconds since the start of the test.
    fn elapsed(&self) -> Duration {
        self.now.instant - self.start
    }

    fn client_packet(&mut self, tuple: &FiveTuple, client: ClientHandle, packet: &[u8]) -> (ClientOutcome, Vec<u8>) {
        self.driver.now = self.now.instant;
        let mut reply = Vec::new();
        let outcome = self.server.handle_client(self.now, tuple, client, packet, &mut reply, &mut self.driver);
        self.check_invariants();
        (outcome, reply)
    }

    /// A datagram of `payload` from `peer` to the relay of `id`, received as
    /// the driver does: at `PEER_HEADROOM` in a slot with `PEER_TAILROOM`
    /// after it. The rest of the slot holds junk that must not leak.
    fn peer_packet(&mut self, id: AllocationId, peer: SocketAddr, payload: &[u8]) -> (Option<PeerOutcome>, Vec<u8>) {
        let mut slot = vec![0xAA; PEER_HEADROOM + payload.len() + PEER_TAILROOM];
        slot[PEER_HEADROOM..PEER_HEADROOM + payload.len()].copy_from_slice(payload);
        let relay = RelayId::new(id, peer.is_ipv6());
        let outcome = self.server.handle_peer(self.now, relay, peer, &mut slot, PEER_HEADROOM, payload.len());
        self.check_invariants();
        (outcome, slot)
    }

    fn timeout(&mut self) {
        self.driver.now = self.now.instant;
        self.server.handle_timeout(self.now, &mut self.driver);
        self.check_invariants();
    }

    fn connection_closed(&mut self, tuple: &FiveTuple) {
        self.server.handle_connection_closed(tuple, &mut self.driver);
        self.check_invariants();
    }

    fn close_all(&mut self) {
        self.server.close_all(&mut self.driver);
        self.check_invariants();
    }

    /// A nonce the server would issue to this client now.
    fn server_nonce(&mut self, tuple: &FiveTuple) -> Vec<u8> {
        let mut packet = Vec::new();
        MessageWriter::new(&mut packet, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId::random());
        let (_, reply) = self.client_packet(tuple, ClientHandle(0), &packet);
        Response::new(reply).attr(AttrType::NONCE).expect("a 401 carries a NONCE").to_vec()
    }

    fn allocation(&self, tuple: &FiveTuple) -> Option<&Allocation> {
        self.server.table().find(tuple).and_then(|id| self.server.table().get(id))
    }

    fn stats(&self) -> Stats {
        *self.server.stats()
    }

    /// What must hold after every input: the table agrees with its index,
    /// the driver has exactly the table's relays open (same ids, same
    /// addresses), and the quotas count exactly the table's allocations.
    fn check_invariants(&self) {
        let table = self.server.table();
        assert!(table.is_consistent(), "allocation table and its index disagree");
        let relays: HashMap<RelayId, SocketAddr> = table
            .iter()
            .flat_map(|(id, a)| a.relayed_addresses().map(move |r| (RelayId::new(id, r.addr.is_ipv6()), r.addr)))
            .collect();
        assert_eq!(relays, self.driver.open, "open relays differ from the table's allocations");
        let mut per_user = BTreeMap::new();
        for (_, allocation) in table.iter() {
            *per_user.entry(allocation.quota_key.to_string()).or_insert(0u32) += 1;
        }
        assert_eq!(per_user, self.driver.per_user, "quota counts differ from the table's allocations");
        assert_eq!(self.driver.total as usize, table.len(), "total quota differs from the table");
    }
}

/// A response, parsed and checked for what every response must be.
struct Response(Vec<u8>);

impl Response {
    fn new(bytes: Vec<u8>) -> Self {
        let message = Message::parse(&bytes).expect("a response is one well-formed STUN message");
        match message.class() {
            Class::Success => assert!(message.attribute(AttrType::ERROR_CODE).is_none(), "success with ERROR-CODE"),
            Class::Error => {
                let value = message.attribute(AttrType::ERROR_CODE).expect("error response without ERROR-CODE");
                attr::read_error_code(value).expect("ERROR-CODE is well-formed");
            }
            class => panic!("a request was answered with {class:?}"),
        }
        Self(bytes)
    }

    fn message(&self) -> Message<'_> {
        Message::parse(&self.0).expect("checked in new")
    }

    fn is_success(&self) -> bool {
        self.message().class() == Class::Success
    }

    /// The ERROR-CODE number, `None` for a success.
    fn code(&self) -> Option<u16> {
        let value = self.message().attribute(AttrType::ERROR_CODE)?;
        Some(attr::read_error_code(value).expect("checked in new").code)
    }

    fn attr(&self, typ: AttrType) -> Option<&[u8]> {
        self.message().attribute(typ)
    }

    fn xor_address(&self, typ: AttrType) -> Option<SocketAddr> {
        let message = self.message();
        let value = message.attribute(typ)?;
        Some(attr::read_xor_address(value, &message.transaction_id()).expect("address attributes are well-formed"))
    }

    fn lifetime(&self) -> Option<u32> {
        self.attr(AttrType::LIFETIME).map(|v| attr::read_u32(v).expect("LIFETIME is 4 bytes"))
    }

    fn relayed(&self) -> SocketAddr {
        self.xor_address(AttrType::XOR_RELAYED_ADDRESS).expect("XOR-RELAYED-ADDRESS in an Allocate success")
    }
}

#[track_caller]
fn assert_success(response: &Response) {
    assert!(response.is_success(), "expected success, got error {:?}", response.code());
}

#[track_caller]
fn assert_error(response: &Response, code: u16) {
    assert_eq!(response.code(), Some(code), "expected error {code}");
}

#[track_caller]
fn assert_forwarded(outcome: &ClientOutcome, packet: &[u8], id: AllocationId, peer: SocketAddr, data: &[u8]) {
    match outcome {
        ClientOutcome::Forward { relay, peer: to, payload } => {
            assert_eq!((relay.allocation(), *to), (id, peer));
            assert_eq!(relay.is_ipv6(), peer.is_ipv6(), "sent from the relay of the peer's family");
            assert_eq!(&packet[payload.clone()], data, "the forwarded range is exactly the data");
        }
        other => panic!("expected Forward to {peer}, got {other:?}"),
    }
}

type AttrFn<'a> = &'a dyn Fn(&mut MessageWriter<'_>);

fn no_attributes(_: &mut MessageWriter<'_>) {}

fn udp_transport(w: &mut MessageWriter<'_>) {
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP);
}

/// A TURN client: its 5-tuple and what it has learnt of the realm and nonce.
struct Client {
    tuple: FiveTuple,
    handle: ClientHandle,
    /// Username and password; `None` in anonymous mode.
    credentials: Option<(String, String)>,
    realm: Option<String>,
    nonce: Option<Vec<u8>>,
    /// Add FINGERPRINT as the last attribute of requests.
    fingerprint: bool,
    /// RFC 8489 (the default is an RFC 5389 client, as browsers are): echo
    /// PASSWORD-ALGORITHMS, choose SHA-256, sign with
    /// MESSAGE-INTEGRITY-SHA256.
    sha256: bool,
    /// Send USERHASH instead of USERNAME.
    userhash: bool,
    /// PASSWORD-ALGORITHMS of the last 401 or 438.
    algorithms: Option<Vec<u8>>,
}

impl Client {
    fn new(client: &str, server: &str, transport: Transport, credentials: Option<(&str, &str)>) -> Self {
        let tuple = FiveTuple { client: addr(client), server: addr(server), transport };
        Self {
            tuple,
            handle: ClientHandle(u64::from(tuple.client.port())),
            credentials: credentials.map(|(u, p)| (u.to_owned(), p.to_owned())),
            realm: None,
            nonce: None,
            fingerprint: false,
            sha256: false,
            userhash: false,
            algorithms: None,
        }
    }

    fn user(name: &str, client: &str) -> Self {
        let password = USERS.iter().find(|(u, _)| *u == name).expect("a configured user").1;
        Self::new(client, SERVER, Transport::Udp, Some((name, password)))
    }

    fn alice(client: &str) -> Self {
        Self::user("alice", client)
    }

    fn bob(client: &str) -> Self {
        Self::user("bob", client)
    }

    fn anonymous(client: &str) -> Self {
        Self::new(client, SERVER, Transport::Udp, None)
    }

    /// The same user on another 5-tuple.
    fn on(&self, tuple: FiveTuple) -> Self {
        Self {
            tuple,
            handle: ClientHandle(u64::from(tuple.client.port())),
            credentials: self.credentials.clone(),
            realm: None,
            nonce: None,
            fingerprint: false,
            sha256: self.sha256,
            userhash: self.userhash,
            algorithms: None,
        }
    }

    /// An RFC 8489 client: SHA-256 key, MESSAGE-INTEGRITY-SHA256.
    fn rfc8489(mut self) -> Self {
        self.sha256 = true;
        self
    }

    /// Sends USERHASH instead of USERNAME.
    fn hashed(mut self) -> Self {
        self.userhash = true;
        self
    }

    fn key(&self) -> Option<Vec<u8>> {
        let (username, password) = self.credentials.as_ref()?;
        let realm = self.realm.as_deref()?;
        Some(if self.sha256 {
            long_term_key_sha256(username, realm, password).to_vec()
        } else {
            long_term_key_md5(username, realm, password).to_vec()
        })
    }

    /// A request with `attributes`, signed (USERNAME or USERHASH, REALM,
    /// NONCE, for RFC 8489 the password algorithms, MESSAGE-INTEGRITY or
    /// MESSAGE-INTEGRITY-SHA256) once the client knows a nonce.
    fn build(&self, method: Method, tid: TransactionId, attributes: AttrFn<'_>) -> Vec<u8> {
        let mut packet = Vec::new();
        let mut w = MessageWriter::new(&mut packet, MessageType::new(method, Class::Request), tid);
        attributes(&mut w);
        if let (Some((username, _)), Some(realm), Some(nonce), Some(key)) =
            (&self.credentials, &self.realm, &self.nonce, self.key())
        {
            if self.userhash {
                w.attr(AttrType::USERHASH, &userhash(username, realm));
            } else {
                w.attr(AttrType::USERNAME, username.as_bytes());
            }
            w.attr(AttrType::REALM, realm.as_bytes());
            w.attr(AttrType::NONCE, nonce);
            if self.sha256 {
                let algorithms = self.algorithms.as_deref().expect("learnt with the nonce");
                w.attr(AttrType::PASSWORD_ALGORITHMS, algorithms);
                w.attr(AttrType::PASSWORD_ALGORITHM, &PasswordAlgorithm::Sha256.attribute_value());
                w.message_integrity_sha256(&key);
            } else {
                w.message_integrity(&key);
            }
        }
        if self.fingerprint {
            w.fingerprint();
        }
        w.finish();
        packet
    }

    /// One transaction: sends `packet` and checks the answer: a response
    /// of the request's method and transaction ID, signed with the
    /// request's key when the request was signed (RFC 8489 §9.2.4), unsigned
    /// otherwise and for 401 and 438. Learns REALM and NONCE from 401 and 438.
    #[track_caller]
    fn exchange(&mut self, h: &mut Harness, packet: &[u8]) -> Response {
        let request = Message::parse(packet).expect("our own request parses");
        let (outcome, reply) = h.client_packet(&self.tuple, self.handle, packet);
        assert!(
            matches!(outcome, ClientOutcome::Replied | ClientOutcome::ConnectionBound { .. }),
            "a request is answered: {outcome:?}"
        );
        let response = Response::new(reply);
        let message = response.message();
        assert_eq!(message.method(), request.method(), "response method");
        assert_eq!(message.transaction_id(), request.transaction_id(), "response transaction ID");
        assert!(message.attribute(AttrType::USERNAME).is_none(), "no response names the user");
        let challenge = matches!(response.code(), Some(401 | 438));
        if challenge {
            assert!(
                !message.has_integrity() && !message.has_integrity_sha256(),
                "a {} cannot be signed",
                response.code().unwrap_or(0)
            );
            let realm = response.attr(AttrType::REALM).expect("REALM with a 401 or 438");
            let nonce = response.attr(AttrType::NONCE).expect("NONCE with a 401 or 438");
            assert_eq!(realm, REALM.as_bytes());
            assert!(nonce.starts_with(NONCE_COOKIE), "RFC 8489 §9.2: the nonce cookie starts the NONCE");
            let algorithms = response.attr(AttrType::PASSWORD_ALGORITHMS).expect("PASSWORD-ALGORITHMS");
            assert_eq!(algorithms, OFFERED_ALGORITHMS, "SHA-256, then MD5");
            let (realm, nonce) = (String::from_utf8(realm.to_vec()).expect("ASCII realm"), nonce.to_vec());
            self.realm = Some(realm);
            self.nonce = Some(nonce);
            self.algorithms = Some(algorithms.to_vec());
        } else if request.has_integrity_sha256() {
            // RFC 8489 §9.2.4: answered with the integrity the request used.
            let key = self.key().expect("a signed request was built with a key");
            assert!(message.has_integrity_sha256(), "response {:?} to a SHA-256 request", response.code());
            assert!(!message.has_integrity(), "no MESSAGE-INTEGRITY next to MESSAGE-INTEGRITY-SHA256");
            assert!(message.verify_integrity_sha256(&key), "response signed with another key");
        } else if request.has_integrity() {
            let key = self.key().expect("a signed request was built with a key");
            assert!(message.has_integrity(), "response {:?} to a signed request is unsigned", response.code());
            assert!(!message.has_integrity_sha256(), "an RFC 5389 client gets MESSAGE-INTEGRITY only");
            assert!(message.verify_integrity(&key), "response signed with another key");
        } else {
            assert!(!message.has_integrity(), "response to an unsigned request is signed");
        }
        response
    }

    /// What a real client does: learn REALM and NONCE from a 401 first,
    /// then send signed, and once more with the fresh nonce after a 438.
    #[track_caller]
    fn request(&mut self, h: &mut Harness, method: Method, attributes: AttrFn<'_>) -> Response {
        if self.credentials.is_some() && self.nonce.is_none() {
            let challenge = self.exchange(h, &self.build(method, TransactionId::random(), attributes));
            assert_error(&challenge, 401);
        }
        let response = self.exchange(h, &self.build(method, TransactionId::random(), attributes));
        if response.code() == Some(438) {
            return self.exchange(h, &self.build(method, TransactionId::random(), attributes));
        }
        response
    }

    fn allocate(&mut self, h: &mut Harness) -> Response {
        self.request(h, Method::ALLOCATE, &udp_transport)
    }

    /// Allocates and returns the relayed address.
    #[track_caller]
    fn allocated(&mut self, h: &mut Harness) -> SocketAddr {
        let response = self.allocate(h);
        assert_success(&response);
        response.relayed()
    }

    fn refresh(&mut self, h: &mut Harness, lifetime: Option<u32>) -> Response {
        self.request(h, Method::REFRESH, &|w| {
            if let Some(lifetime) = lifetime {
                w.attr_u32(AttrType::LIFETIME, lifetime);
            }
        })
    }

    fn permit(&mut self, h: &mut Harness, peers: &[SocketAddr]) -> Response {
        self.request(h, Method::CREATE_PERMISSION, &|w| {
            for peer in peers {
                w.xor_address(AttrType::XOR_PEER_ADDRESS, peer);
            }
        })
    }

    fn bind(&mut self, h: &mut Harness, number: u16, peer: SocketAddr) -> Response {
        self.request(h, Method::CHANNEL_BIND, &|w| {
            w.attr(AttrType::CHANNEL_NUMBER, &[(number >> 8) as u8, number as u8, 0, 0]);
            w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer);
        })
    }

    /// A Send indication; returns the outcome and the packet it indexes.
    fn send(&self, h: &mut Harness, peer: SocketAddr, data: &[u8]) -> (ClientOutcome, Vec<u8>) {
        let mut packet = Vec::new();
        let mut w =
            MessageWriter::new(&mut packet, MessageType::new(Method::SEND, Class::Indication), TransactionId::random());
        w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer);
        w.attr(AttrType::DATA, data);
        w.finish();
        let (outcome, reply) = h.client_packet(&self.tuple, self.handle, &packet);
        assert!(reply.is_empty(), "indications are never answered");
        (outcome, packet)
    }

    /// A ChannelData message, padded to four bytes on streams (RFC 8656 §12.5).
    fn channel_data(&self, h: &mut Harness, number: u16, payload: &[u8]) -> (ClientOutcome, Vec<u8>) {
        let mut packet = number.to_be_bytes().to_vec();
        packet.extend_from_slice(&u16::try_from(payload.len()).expect("small payload").to_be_bytes());
        packet.extend_from_slice(payload);
        if self.tuple.transport.is_stream() {
            packet.resize(channel_data::padded_frame_len(payload.len()), 0);
        }
        let (outcome, reply) = h.client_packet(&self.tuple, self.handle, &packet);
        assert!(reply.is_empty(), "ChannelData is never answered");
        (outcome, packet)
    }

    #[track_caller]
    fn id(&self, h: &Harness) -> AllocationId {
        h.server.table().find(&self.tuple).expect("the client has an allocation")
    }
}

fn family(value: u8) -> [u8; 4] {
    [value, 0, 0, 0]
}

// ---------------------------------------------------------------------------
// Allocate (RFC 8656 §7.2)
// ---------------------------------------------------------------------------

#[test]
fn allocate_is_challenged_then_succeeds_with_relayed_mapped_address_and_default_lifetime() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");

    // RFC 8489 §9.2.4: no MESSAGE-INTEGRITY → 401 with REALM and NONCE, unsigned.
    let challenge = alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_error(&challenge, 401);
    assert_eq!(challenge.attr(AttrType::NONCE).map(<[u8]>::len), Some(crate::proto::auth::NONCE_LEN));
    assert!(challenge.attr(AttrType::XOR_RELAYED_ADDRESS).is_none());
    assert!(h.server.table().is_empty() && h.driver.open_calls.is_empty(), "a challenge allocates nothing");

    let response = alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_success(&response);
    let relayed = response.relayed();
    let id = alice.id(&h);
    assert_eq!(relayed.ip(), addr(SERVER).ip(), "relay IP is the address the request arrived on");
    assert!((PORTS.0..=PORTS.1).contains(&relayed.port()));
    assert_eq!(h.driver.open.get(&RelayId::new(id, false)), Some(&relayed), "relayed address is the driver's");
    assert_eq!(response.xor_address(AttrType::XOR_MAPPED_ADDRESS), Some(alice.tuple.client));
    assert_eq!(response.lifetime(), Some(600));
    assert_eq!(
        h.driver.open_calls[0].1,
        RelayRequest { ip: addr(SERVER).ip(), port: PortRequest::Any, dont_fragment: false }
    );
    assert_eq!((h.driver.quota("alice"), h.driver.total), (1, 1));
    assert_eq!(h.stats().allocations_created, 1);
}

#[test]
fn requested_lifetime_is_raised_to_the_default_and_capped_at_the_maximum() {
    let mut h = Harness::authenticated();
    for (port, requested, granted) in [(40001, 30, 600), (40002, 5000, 3600), (40003, 1000, 1000), (40004, 0, 600)] {
        let mut client = Client::alice(&format!("198.51.100.1:{port}"));
        let response = client.request(&mut h, Method::ALLOCATE, &|w| {
            w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr_u32(AttrType::LIFETIME, requested);
        });
        assert_success(&response);
        assert_eq!(response.lifetime(), Some(granted), "LIFETIME {requested}");
        let expires = h.allocation(&client.tuple).expect("allocated").expires;
        assert_eq!(expires, h.now.instant + secs(u64::from(granted)));
    }
}

#[test]
fn configured_relay_ips_take_turns_and_external_ips_are_advertised() {
    let ip = |text: &str| -> IpAddr { text.parse().expect("IP literal") };
    let turn = TurnConfig {
        relay_ips: vec![ip("198.51.100.20"), ip("198.51.100.21"), ip("2001:db8::20")],
        external_ips: vec![ExternalIp { public: ip("203.0.113.5"), private: Some(ip("198.51.100.20")) }],
        ..turn_config()
    };
    let mut h = Harness::new(turn);
    let mut relays = Vec::new();
    for port in 40000..40004 {
        let mut client = Client::alice(&format!("198.51.100.1:{port}"));
        let advertised = client.allocated(&mut h);
        let relayed = h.driver.open[&RelayId::new(client.id(&h), false)];
        // The client is told the public address of a mapped relay IP, with
        // the relay's port; an unmapped relay IP is advertised as it is.
        let expected = if relayed.ip() == ip("198.51.100.20") { ip("203.0.113.5") } else { relayed.ip() };
        assert_eq!(advertised, SocketAddr::new(expected, relayed.port()));
        relays.push(relayed.ip());
    }
    assert!(relays.windows(2).all(|pair| pair[0] != pair[1]), "IPv4 relay IPs alternate: {relays:?}");
    let mut v6 = Client::alice("198.51.100.1:40004");
    let response = v6.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x02));
    });
    assert_success(&response);
    assert_eq!(response.relayed().ip(), ip("2001:db8::20"), "an IPv4 client can get an IPv6 relay");
}

#[test]
fn allocate_without_requested_transport_is_400() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.request(&mut h, Method::ALLOCATE, &no_attributes), 400);
    assert!(h.server.table().is_empty());
}

#[test]
fn allocate_for_tcp_relaying_over_udp_is_400() {
    // RFC 6062 §5.1: TCP relaying needs a TCP or TLS control connection.
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &TCP);
    });
    assert_error(&response, 400);
    assert!(h.server.table().is_empty() && h.driver.open_calls.is_empty());
}

#[test]
fn allocate_for_another_transport_is_442() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &[132, 0, 0, 0]);
    });
    assert_error(&response, 442);
    assert!(h.server.table().is_empty() && h.driver.open_calls.is_empty());
}

#[test]
fn second_allocate_is_437_but_a_retransmission_gets_the_same_success() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)), 401);
    let first = alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport);
    let original = alice.exchange(&mut h, &first);
    assert_success(&original);

    // The success was lost; the client retransmits the same request.
    h.advance(secs(10));
    let again = alice.exchange(&mut h, &first);
    assert_success(&again);
    assert_eq!(again.relayed(), original.relayed());
    assert_eq!(again.lifetime(), Some(590), "LIFETIME is the time left");
    assert_eq!(h.driver.open_calls.len(), 1, "no second relay for a retransmission");

    // A new transaction on the same 5-tuple is an allocation mismatch.
    let second = alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_error(&second, 437);
    assert_eq!(h.server.table().len(), 1);
    assert_eq!(h.driver.open_calls.len(), 1);
}

#[test]
fn requested_address_family_the_server_cannot_relay_is_440() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    for value in [0x02, 0x03] {
        let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
            w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(value));
        });
        assert_error(&response, 440);
    }
    assert!(h.driver.open_calls.is_empty() && h.driver.total == 0);
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x01));
    });
    assert_success(&response);
    assert!(response.relayed().is_ipv4());
}

#[test]
fn an_ipv6_relay_needs_requested_address_family() {
    // RFC 8656 §7.2: without REQUESTED-ADDRESS-FAMILY the relay is IPv4,
    // which an IPv6-only server cannot offer.
    let mut h = Harness::authenticated();
    let mut alice = Client::new("[2001:db8::1]:40000", SERVER_V6, Transport::Udp, Some(("alice", USERS[0].1)));
    assert_error(&alice.allocate(&mut h), 440);
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x02));
    });
    assert_success(&response);
    assert_eq!(response.relayed().ip(), addr(SERVER_V6).ip());
    assert_eq!(response.xor_address(AttrType::XOR_MAPPED_ADDRESS), Some(alice.tuple.client));
}

#[test]
fn reservation_token_with_even_port_or_address_family_is_400() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
            .attr(AttrType::RESERVATION_TOKEN, &[1; 8])
            .attr(AttrType::EVEN_PORT, &[0x80]);
    });
    assert_error(&response, 400);
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
            .attr(AttrType::RESERVATION_TOKEN, &[1; 8])
            .attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x01));
    });
    assert_error(&response, 400);
    assert!(h.driver.open_calls.is_empty());
}

#[test]
fn even_port_gets_an_even_port() {
    let mut h = Harness::authenticated();
    // Ports come in random order; take a few so an even one is not simply first.
    for port in 40000..40003 {
        Client::alice(&format!("198.51.100.1:{port}")).allocated(&mut h);
    }
    let mut bob = Client::bob("198.51.100.2:40000");
    let response = bob.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::EVEN_PORT, &[0x00]);
    });
    assert_success(&response);
    assert_eq!(response.relayed().port() % 2, 0);
    assert!(response.attr(AttrType::RESERVATION_TOKEN).is_none(), "no token without the R bit");
}

#[test]
fn even_port_with_r_bit_reserves_the_next_port_for_the_token() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::EVEN_PORT, &[0x80]);
    });
    assert_success(&response);
    let even = response.relayed();
    assert_eq!(even.port() % 2, 0);
    let token: [u8; 8] = response.attr(AttrType::RESERVATION_TOKEN).expect("token").try_into().expect("8 bytes");

    // Another 5-tuple claims the reserved port with the token.
    let mut second = Client::alice("198.51.100.1:40001");
    let with_token = |w: &mut MessageWriter<'_>| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::RESERVATION_TOKEN, &token);
    };
    let response = second.request(&mut h, Method::ALLOCATE, &with_token);
    assert_success(&response);
    assert_eq!(response.relayed(), SocketAddr::new(even.ip(), even.port() + 1));

    // A token claims once; an unknown one never.
    let mut third = Client::bob("198.51.100.2:40000");
    assert_error(&third.request(&mut h, Method::ALLOCATE, &with_token), 508);
    let response = third.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::RESERVATION_TOKEN, &[0x55; 8]);
    });
    assert_error(&response, 508);
    assert_eq!(h.driver.quota("bob"), 0, "refused allocations hold no quota");
}

#[test]
fn dont_fragment_the_driver_cannot_honour_is_a_signed_420_listing_it() {
    let mut h = Harness::authenticated();
    h.driver.dont_fragment_unsupported = true;
    let mut alice = Client::alice("198.51.100.1:40000");
    let with_df = |w: &mut MessageWriter<'_>| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::DONT_FRAGMENT, &[]);
    };
    let response = alice.request(&mut h, Method::ALLOCATE, &with_df);
    assert_error(&response, 420);
    let unknown: Vec<AttrType> =
        attr::read_unknown_attributes(response.attr(AttrType::UNKNOWN_ATTRIBUTES).expect("listed"))
            .expect("well-formed")
            .collect();
    assert_eq!(unknown, [AttrType::DONT_FRAGMENT]);
    assert!(h.driver.open.is_empty() && h.driver.total == 0, "nothing held after the 420");

    h.driver.dont_fragment_unsupported = false;
    assert_success(&alice.request(&mut h, Method::ALLOCATE, &with_df));
    assert!(h.driver.open_calls.last().expect("opened").1.dont_fragment);
}

#[test]
fn exhausted_port_range_is_508_until_a_port_comes_back() {
    let mut h = Harness::authenticated();
    h.driver.ports = (50000, 50001);
    let mut first = Client::alice("198.51.100.1:40000");
    let freed = first.allocated(&mut h).port();
    Client::alice("198.51.100.1:40001").allocated(&mut h);
    let mut third = Client::bob("198.51.100.2:40000");
    assert_error(&third.allocate(&mut h), 508);
    assert_eq!(h.driver.quota("bob"), 0, "the quota taken for it is given back");

    assert_success(&first.refresh(&mut h, Some(0)));
    assert_eq!(third.allocated(&mut h).port(), freed, "the freed port is reused");
}

#[test]
fn user_quota_is_486_and_leaks_nothing() {
    let mut h = Harness::authenticated();
    h.driver.user_quota = 1;
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    let free = h.driver.free_ports(addr(SERVER).ip());
    let mut again = Client::alice("198.51.100.1:40001");
    assert_error(&again.allocate(&mut h), 486);
    assert_eq!((h.driver.quota("alice"), h.driver.total), (1, 1));
    assert_eq!(h.driver.open.len(), 1);
    assert_eq!(h.driver.free_ports(addr(SERVER).ip()), free, "no port taken");
    assert_eq!(h.driver.open_calls.len(), 1, "no relay even tried");
    assert!(h.server.table().find(&again.tuple).is_none());
    // Another user is not affected.
    Client::bob("198.51.100.2:40000").allocated(&mut h);
}

#[test]
fn total_quota_is_508() {
    let mut h = Harness::authenticated();
    h.driver.total_quota = 1;
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    assert_error(&Client::bob("198.51.100.2:40000").allocate(&mut h), 508);
    assert_eq!((h.driver.quota("bob"), h.driver.total, h.driver.open.len()), (0, 1, 1));
}

#[test]
fn total_quota_with_alternates_is_a_signed_300_naming_one_of_the_family_in_turn() {
    let alternates = [addr("203.0.113.5:3478"), addr("[2001:db8::5]:3478"), addr("203.0.113.6:3478")];
    let mut h = Harness::new(TurnConfig { alternate_servers: alternates.to_vec(), ..turn_config() });
    h.driver.total_quota = 1;
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    let mut redirected = Vec::new();
    for port in 40001..40004 {
        // `exchange` checks the 300 is signed with the client's key.
        let response = Client::bob(&format!("198.51.100.2:{port}")).rfc8489().allocate(&mut h);
        assert_error(&response, 300);
        let value = response.attr(AttrType::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
        redirected.push(attr::read_address(value).expect("a plain address"));
    }
    assert_eq!(redirected, [alternates[0], alternates[2], alternates[0]], "IPv4 alternates in turn");
    // An IPv6 listener gets the IPv6 one.
    let mut v6 = Client::new("[2001:db8::99]:40000", SERVER_V6, Transport::Udp, Some(("bob", USERS[1].1)));
    let response = v6.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(FAMILY_IPV6));
    });
    assert_error(&response, 300);
    let value = response.attr(AttrType::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(attr::read_address(value), Ok(alternates[1]));
    assert_eq!((h.driver.quota("bob"), h.driver.total, h.driver.open.len()), (0, 1, 1), "nothing held");
    // The user quota is still 486, not a redirect.
    h.driver.total_quota = 0;
    h.driver.user_quota = 1;
    assert_error(&Client::alice("198.51.100.1:40009").allocate(&mut h), 486);
}

#[test]
fn a_draining_server_redirects_or_refuses_new_allocations_and_keeps_the_old_ones() {
    let mut h = Harness::new(TurnConfig { alternate_servers: vec![addr("203.0.113.5:3478")], ..turn_config() });
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    h.server.start_draining();
    assert!(h.server.is_draining());
    // A new client is sent to the alternate, signed; nothing is held for it.
    let response = Client::bob("198.51.100.2:40000").allocate(&mut h);
    assert_error(&response, 300);
    let value = response.attr(AttrType::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(attr::read_address(value), Ok(addr("203.0.113.5:3478")));
    assert_eq!((h.driver.quota("bob"), h.driver.open.len()), (0, 1));
    // Alice's allocation lives on: refresh, permissions, channels, data.
    assert_success(&alice.refresh(&mut h, Some(600)));
    assert_success(&alice.permit(&mut h, &[addr(PEER_B)]));
    assert!(matches!(alice.channel_data(&mut h, 0x4000, b"still relayed").0, ClientOutcome::Forward { .. }));
    assert!(h.peer_packet(id, addr(PEER), b"and back").0.is_some());
    // Without alternates a draining server answers 508.
    let mut lone = Harness::authenticated();
    lone.server.start_draining();
    assert_error(&Client::alice("198.51.100.1:40000").allocate(&mut lone), 508);
    assert!(lone.server.table().is_empty() && lone.driver.open.is_empty());
}

#[test]
fn a_tls_client_is_told_the_alternate_domain_too() {
    let turn = TurnConfig {
        alternate_servers: vec![addr("203.0.113.5:5349")],
        alternate_domain: Some("turn2.example.com".into()),
        ..turn_config()
    };
    let mut h = Harness::new(turn);
    h.driver.total_quota = 1;
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    let mut tls = Client::new("198.51.100.2:40000", SERVER, Transport::Tls, Some(("bob", USERS[1].1)));
    let response = tls.allocate(&mut h);
    assert_error(&response, 300);
    assert_eq!(response.attr(AttrType::ALTERNATE_DOMAIN), Some(&b"turn2.example.com"[..]));
    // Over UDP there is no certificate to check: no ALTERNATE-DOMAIN.
    let response = Client::bob("198.51.100.2:40001").allocate(&mut h);
    assert_error(&response, 300);
    assert!(response.attr(AttrType::ALTERNATE_DOMAIN).is_none());
}

#[test]
fn total_quota_without_an_alternate_of_the_family_is_508() {
    let mut h = Harness::new(TurnConfig { alternate_servers: vec![addr("[2001:db8::5]:3478")], ..turn_config() });
    h.driver.total_quota = 1;
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    let response = Client::bob("198.51.100.2:40000").allocate(&mut h);
    assert_error(&response, 508);
    assert!(response.attr(AttrType::ALTERNATE_SERVER).is_none());
}

// ---------------------------------------------------------------------------
// Authentication (RFC 8489 §9.2, RFC 8656 §5)
// ---------------------------------------------------------------------------

#[test]
fn fingerprint_is_checked_and_echoed_after_the_signature() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.fingerprint = true;
    // `exchange` verifies MESSAGE-INTEGRITY, which must not cover FINGERPRINT.
    let response = alice.allocate(&mut h);
    assert_success(&response);
    let message = response.message();
    assert_eq!(message.attributes().last().map(|a| a.typ), Some(AttrType::FINGERPRINT));
    assert!(message.verify_fingerprint(), "RFC 8489 §14.7: FINGERPRINT covers the signed response");

    // RFC 8489 §6.3: a wrong FINGERPRINT is dropped silently.
    let mut packet = alice.build(Method::REFRESH, TransactionId::random(), &no_attributes);
    let last = packet.len() - 1;
    packet[last] ^= 1;
    let (outcome, reply) = h.client_packet(&alice.tuple, alice.handle, &packet);
    assert_eq!((outcome, reply.len()), (ClientOutcome::Dropped, 0));
    assert_eq!(h.stats().bad_fingerprint, 1);
}

#[test]
fn wrong_password_is_an_unsigned_401_with_realm_and_nonce() {
    let mut h = Harness::authenticated();
    let mut mallory = Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("alice", "guess")));
    // `request` checks the challenge; `exchange` that the 401 is unsigned
    // and carries REALM and NONCE.
    assert_error(&mallory.allocate(&mut h), 401);
    assert!(h.server.table().is_empty() && h.driver.open_calls.is_empty());
    assert_eq!(h.stats().auth_failures, 2);
}

#[test]
fn unknown_user_is_401() {
    let mut h = Harness::authenticated();
    let mut carol = Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("carol", "carol-password")));
    assert_error(&carol.allocate(&mut h), 401);
    assert!(h.server.table().is_empty());
}

#[test]
fn message_integrity_without_nonce_is_400() {
    let mut h = Harness::authenticated();
    let alice = Client::alice("198.51.100.1:40000");
    let key = long_term_key_md5("alice", REALM, USERS[0].1);
    let mut packet = Vec::new();
    let tid = TransactionId::random();
    let mut w = MessageWriter::new(&mut packet, MessageType::new(Method::ALLOCATE, Class::Request), tid);
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
        .attr(AttrType::USERNAME, b"alice")
        .attr(AttrType::REALM, REALM.as_bytes())
        .message_integrity(&key);
    w.finish();
    let (outcome, reply) = h.client_packet(&alice.tuple, alice.handle, &packet);
    assert_eq!(outcome, ClientOutcome::Replied);
    let response = Response::new(reply);
    assert_eq!((response.message().method(), response.message().transaction_id()), (Method::ALLOCATE, tid));
    assert_error(&response, 400);
    assert!(!response.message().has_integrity(), "the request was not authenticated, so neither is the answer");
    assert!(h.server.table().is_empty());
}

#[test]
fn unknown_comprehension_required_attributes_are_checked_after_authentication() {
    // RFC 8489 §6.3: authentication checks first, then unknown attributes;
    // §6.3.1: 420 listing the unknown comprehension-required ones; §9.2.4:
    // that 420 is signed like any other answer to an authenticated request.
    let mut h = Harness::authenticated();
    let with_unknown = |w: &mut MessageWriter<'_>| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType(0x7F01), b"?").attr(AttrType(0xC001), b"ignored");
    };
    let mut alice = Client::alice("198.51.100.1:40000");
    // `request` checks the unsigned first try is challenged (401), `exchange`
    // that the 420 to the signed retry carries alice's MESSAGE-INTEGRITY.
    let response = alice.request(&mut h, Method::ALLOCATE, &with_unknown);
    assert_error(&response, 420);
    let listed: Vec<AttrType> =
        attr::read_unknown_attributes(response.attr(AttrType::UNKNOWN_ATTRIBUTES).expect("listed"))
            .expect("well-formed")
            .collect();
    assert_eq!(listed, [AttrType(0x7F01)]);
    assert!(h.server.table().is_empty() && h.driver.open_calls.is_empty());
    // Wrong credentials are reported as such, not as a 420.
    let mut mallory = Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("alice", "guess")));
    assert_error(&mallory.request(&mut h, Method::ALLOCATE, &with_unknown), 401);
}

#[test]
fn expired_nonce_is_438_with_a_fresh_nonce_that_then_works() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)), 401);
    let old = alice.nonce.clone().expect("learnt");

    // Still valid one second before its lifetime ends...
    h.advance(secs(NONCE_LIFETIME - 1));
    let mut probe = alice.on(alice.tuple);
    probe.realm.clone_from(&alice.realm);
    probe.nonce = Some(old.clone());
    assert_error(&probe.exchange(&mut h, &probe.build(Method::REFRESH, TransactionId::random(), &no_attributes)), 437);

    // ...stale at its end.
    h.advance(SECOND);
    let stale = alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_error(&stale, 438);
    let fresh = alice.nonce.clone().expect("learnt from the 438");
    assert_ne!(fresh, old);
    assert!(h.server.table().is_empty());
    assert_success(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)));
}

#[test]
fn rest_credentials_work_with_either_secret_until_they_expire() {
    let mut h = Harness::authenticated();
    let username = format!("{}:carol", UNIX_START + 3600);
    for (port, secret) in [(40000, REST_SECRET_NEW), (40001, REST_SECRET_OLD)] {
        let password = rest_password(secret, &username);
        let mut carol =
            Client::new(&format!("198.51.100.3:{port}"), SERVER, Transport::Udp, Some((&username, &password)));
        carol.allocated(&mut h);
        assert_eq!(&*h.allocation(&carol.tuple).expect("allocated").username, username);
    }
    // Quotas count the user, not the credential: a fresh EXPIRY brings no fresh quota.
    let renewed = format!("{}:carol", UNIX_START + 7200);
    let password = rest_password(REST_SECRET_NEW, &renewed);
    Client::new("198.51.100.3:40003", SERVER, Transport::Udp, Some((&renewed, &password))).allocated(&mut h);
    assert_eq!(h.driver.quota("carol"), 3);
    assert_eq!(h.driver.quota(&username), 0);

    let unknown_secret = rest_password(b"not-a-secret", &username);
    let mut forger = Client::new("198.51.100.4:40000", SERVER, Transport::Udp, Some((&username, &unknown_secret)));
    assert_error(&forger.allocate(&mut h), 401);

    let expired = format!("{}:carol", UNIX_START - 1);
    let password = rest_password(REST_SECRET_NEW, &expired);
    let mut late = Client::new("198.51.100.3:40002", SERVER, Transport::Udp, Some((&expired, &password)));
    assert_error(&late.allocate(&mut h), 401);

    // A credential valid at allocation time stops working at its expiry.
    let short = format!("{}:dave", UNIX_START + 100);
    let password = rest_password(REST_SECRET_NEW, &short);
    let mut dave = Client::new("198.51.100.5:40000", SERVER, Transport::Udp, Some((&short, &password)));
    dave.allocated(&mut h);
    h.advance(secs(100));
    assert_error(&dave.refresh(&mut h, None), 401);
    assert_eq!(h.server.table().len(), 4);
}

// ---------------------------------------------------------------------------
// RFC 8489 authentication: SHA-256, MESSAGE-INTEGRITY-SHA256, USERHASH
// ---------------------------------------------------------------------------

#[test]
fn rfc8489_client_uses_sha256_and_every_answer_is_signed_with_message_integrity_sha256() {
    let mut h = Harness::authenticated();
    // `exchange` checks each answer carries MESSAGE-INTEGRITY-SHA256 under
    // the SHA-256 key, and no MESSAGE-INTEGRITY.
    let mut alice = Client::alice("198.51.100.1:40000").rfc8489();
    alice.allocated(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    assert_success(&alice.refresh(&mut h, None));
    // Errors too: a signed 400 and a signed 437.
    assert_error(&alice.permit(&mut h, &[]), 400);
    assert_success(&alice.refresh(&mut h, Some(0)));
    assert_error(&alice.refresh(&mut h, None), 437);
}

#[test]
fn legacy_md5_client_is_answered_exactly_as_before() {
    let mut h = Harness::authenticated();
    // The default harness client is an RFC 5389 client (as browsers are): it
    // ignores the cookie and PASSWORD-ALGORITHMS, and `exchange` checks it
    // gets MESSAGE-INTEGRITY only.
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.allocate(&mut h);
    assert_success(&response);
    let types: Vec<AttrType> = response.message().attributes().map(|a| a.typ).collect();
    assert_eq!(
        types,
        [AttrType::XOR_RELAYED_ADDRESS, AttrType::LIFETIME, AttrType::XOR_MAPPED_ADDRESS, AttrType::MESSAGE_INTEGRITY]
    );
    assert_error(&alice.allocate(&mut h), 437);
}

/// Alice's Allocate with the password-algorithm attributes given, signed
/// with `key` by a MESSAGE-INTEGRITY-SHA256 of `mac_len` bytes.
fn crafted_allocate(
    client: &Client,
    algorithms: Option<&[u8]>,
    algorithm: Option<PasswordAlgorithm>,
    key: &[u8],
    mac_len: usize,
) -> Vec<u8> {
    let mut packet = Vec::new();
    let mut w =
        MessageWriter::new(&mut packet, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId::random());
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
        .attr(AttrType::USERNAME, b"alice")
        .attr(AttrType::REALM, REALM.as_bytes())
        .attr(AttrType::NONCE, client.nonce.as_deref().expect("challenged first"));
    if let Some(algorithms) = algorithms {
        w.attr(AttrType::PASSWORD_ALGORITHMS, algorithms);
    }
    if let Some(algorithm) = algorithm {
        w.attr(AttrType::PASSWORD_ALGORITHM, &algorithm.attribute_value());
    }
    w.finish();
    crate::proto::stun::integrity::append_truncated_integrity_sha256(&mut packet, key, mac_len);
    packet
}

/// Sends `packet` for `client` and returns the raw answer.
fn send_raw(h: &mut Harness, client: &Client, packet: &[u8]) -> Response {
    let (outcome, reply) = h.client_packet(&client.tuple, client.handle, packet);
    assert_eq!(outcome, ClientOutcome::Replied);
    Response::new(reply)
}

#[test]
fn password_algorithm_downgrades_are_400_and_allocate_nothing() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000").rfc8489();
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)), 401);
    let key = long_term_key_sha256("alice", REALM, USERS[0].1);
    let md5_only: &[u8] = &[0, 1, 0, 0];
    type Case<'a> = (&'a str, Option<&'a [u8]>, Option<PasswordAlgorithm>);
    let cases: [Case<'_>; 4] = [
        ("PASSWORD-ALGORITHMS stripped", None, Some(PasswordAlgorithm::Sha256)),
        ("PASSWORD-ALGORITHM stripped", Some(&OFFERED_ALGORITHMS), None),
        ("SHA-256 struck off the list", Some(md5_only), Some(PasswordAlgorithm::Md5)),
        ("list changed", Some(&[0, 2, 0, 0]), Some(PasswordAlgorithm::Sha256)),
    ];
    for (what, algorithms, algorithm) in cases {
        let response = send_raw(&mut h, &alice, &crafted_allocate(&alice, algorithms, algorithm, &key, 32));
        assert_error(&response, 400);
        assert!(!response.message().has_integrity_sha256() && !response.message().has_integrity(), "{what}");
        assert!(response.attr(AttrType::NONCE).is_none(), "{what}: a 400 is no challenge");
    }
    // An algorithm that is not on the list at all.
    let mut packet = Vec::new();
    let mut w =
        MessageWriter::new(&mut packet, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId::random());
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
        .attr(AttrType::USERNAME, b"alice")
        .attr(AttrType::REALM, REALM.as_bytes())
        .attr(AttrType::NONCE, alice.nonce.as_deref().expect("learnt"))
        .attr(AttrType::PASSWORD_ALGORITHMS, &OFFERED_ALGORITHMS)
        .attr(AttrType::PASSWORD_ALGORITHM, &[0, 3, 0, 0])
        .message_integrity_sha256(&key);
    w.finish();
    assert_error(&send_raw(&mut h, &alice, &packet), 400);
    assert!(h.server.table().is_empty() && h.driver.open_calls.is_empty());
    // The untouched request goes through.
    let response = send_raw(
        &mut h,
        &alice,
        &crafted_allocate(&alice, Some(&OFFERED_ALGORITHMS), Some(PasswordAlgorithm::Sha256), &key, 32),
    );
    assert_success(&response);
}

#[test]
fn truncated_message_integrity_sha256_is_accepted_and_answered_in_full() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000").rfc8489();
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)), 401);
    let key = long_term_key_sha256("alice", REALM, USERS[0].1);
    let packet = crafted_allocate(&alice, Some(&OFFERED_ALGORITHMS), Some(PasswordAlgorithm::Sha256), &key, 16);
    let response = send_raw(&mut h, &alice, &packet);
    assert_success(&response);
    let message = response.message();
    let mac = message.attributes().find(|a| a.typ == AttrType::MESSAGE_INTEGRITY_SHA256).expect("signed");
    assert_eq!(mac.value.len(), 32);
    assert!(message.verify_integrity_sha256(&key));
}

#[test]
fn wrong_message_integrity_sha256_is_an_unsigned_401() {
    let mut h = Harness::authenticated();
    let mut mallory = Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("alice", "guess"))).rfc8489();
    assert_error(&mallory.allocate(&mut h), 401);
    assert_eq!(h.stats().auth_failures, 2);
    assert!(h.server.table().is_empty());
}

#[test]
fn userhash_names_a_static_user_and_the_allocation_is_theirs() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000").rfc8489().hashed();
    alice.allocated(&mut h);
    assert_eq!(&*h.allocation(&alice.tuple).expect("allocated").username, "alice");
    assert_eq!(h.driver.quota("alice"), 1);
    // The same user by name on the same 5-tuple owns it too; bob does not.
    let mut by_name = alice.on(alice.tuple);
    by_name.userhash = false;
    assert_success(&by_name.refresh(&mut h, None));
    let mut bob = Client::bob("198.51.100.1:40000").rfc8489().hashed();
    assert_error(&bob.refresh(&mut h, None), 441);
    // USERHASH works with an RFC 5389-style MD5 request too.
    let mut legacy = Client::bob("198.51.100.2:40000").hashed();
    legacy.allocated(&mut h);
}

#[test]
fn unknown_userhash_is_401() {
    let mut h = Harness::authenticated();
    let mut carol =
        Client::new("198.51.100.9:40000", SERVER, Transport::Udp, Some(("carol", "carol-password"))).rfc8489().hashed();
    assert_error(&carol.allocate(&mut h), 401);
    assert!(h.server.table().is_empty());
}

#[test]
fn rest_credentials_work_with_sha256_by_username_but_not_by_userhash() {
    let mut h = Harness::authenticated();
    let username = format!("{}:carol", UNIX_START + 3600);
    let password = rest_password(REST_SECRET_NEW, &username);
    let mut carol = Client::new("198.51.100.3:40000", SERVER, Transport::Udp, Some((&username, &password))).rfc8489();
    carol.allocated(&mut h);
    assert_eq!(h.driver.quota("carol"), 1);
    // The password is HMAC(secret, username): a hash of the username gives
    // nothing to compute it from.
    let mut hashed =
        Client::new("198.51.100.3:40001", SERVER, Transport::Udp, Some((&username, &password))).rfc8489().hashed();
    assert_error(&hashed.allocate(&mut h), 401);
    assert_eq!(h.server.table().len(), 1);
}

#[test]
fn with_both_integrity_attributes_the_answer_is_signed_with_sha256() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport)), 401);
    let key = long_term_key_md5("alice", REALM, USERS[0].1);
    let mut packet = Vec::new();
    let mut w =
        MessageWriter::new(&mut packet, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId::random());
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
        .attr(AttrType::USERNAME, b"alice")
        .attr(AttrType::REALM, REALM.as_bytes())
        .attr(AttrType::NONCE, alice.nonce.as_deref().expect("learnt"))
        .message_integrity(&key)
        .message_integrity_sha256(&key);
    w.finish();
    let response = send_raw(&mut h, &alice, &packet);
    assert_success(&response);
    let message = response.message();
    assert!(message.verify_integrity_sha256(&key) && !message.has_integrity());
}

#[test]
fn another_user_on_an_existing_allocation_is_441() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    let relayed = alice.allocated(&mut h);
    let mut bob = Client::bob("198.51.100.1:40000");
    assert_eq!(bob.tuple, alice.tuple);

    // `exchange` checks each answer is signed with bob's key.
    assert_error(&bob.refresh(&mut h, Some(0)), 441);
    assert_error(&bob.permit(&mut h, &[addr(PEER)]), 441);
    assert_error(&bob.bind(&mut h, 0x4000, addr(PEER)), 441);
    assert_error(&bob.allocate(&mut h), 437);

    let allocation = h.allocation(&alice.tuple).expect("untouched");
    assert_eq!((&*allocation.username, allocation.relayed(false).map(|r| r.addr)), ("alice", Some(relayed)));
    assert_eq!((allocation.permission_count(), allocation.channel_count()), (0, 0));
    assert_eq!(h.driver.quota("bob"), 0);
    assert_success(&alice.refresh(&mut h, None));
}

#[test]
fn anonymous_mode_relays_without_credentials_and_signs_nothing() {
    let mut h = Harness::new(TurnConfig::default());
    let mut anon = Client::anonymous("198.51.100.7:40000");
    // `exchange` checks that no answer to an unsigned request is signed.
    let relayed = anon.allocated(&mut h);
    assert_eq!(relayed.ip(), addr(SERVER).ip());
    assert_eq!(h.driver.quota("198.51.100.7"), 1, "quotas count by client IP");
    assert_success(&anon.permit(&mut h, &[addr(PEER)]));
    assert_success(&anon.bind(&mut h, 0x4000, addr(PEER_B)));
    assert_success(&anon.refresh(&mut h, Some(0)));
    assert!(h.server.table().is_empty());
}

// ---------------------------------------------------------------------------
// Refresh (RFC 8656 §7.3)
// ---------------------------------------------------------------------------

#[test]
fn refresh_lifetime_sets_the_new_expiry_exactly() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    h.advance(secs(100));
    let response = alice.refresh(&mut h, Some(1200));
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(1200));

    h.advance(secs(1199));
    h.timeout();
    assert_eq!(h.server.table().len(), 1, "alive one second before");
    h.advance(SECOND);
    h.timeout();
    assert!(h.server.table().is_empty(), "gone at the new expiry");
    assert_eq!(h.driver.close_calls.len(), 1);
}

#[test]
fn refresh_without_lifetime_gives_the_default_and_caps_at_the_maximum() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    assert_eq!(alice.refresh(&mut h, None).lifetime(), Some(600));
    assert_eq!(alice.refresh(&mut h, Some(5000)).lifetime(), Some(3600));
    assert_eq!(h.allocation(&alice.tuple).expect("alive").expires, h.now.instant + secs(3600));
}

#[test]
fn refresh_lifetime_below_the_default_is_raised_to_the_default() {
    // RFC 8656 §7.3: a non-zero LIFETIME is capped at the maximum and, when
    // below the default, raised to it, as for Allocate.
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    h.advance(secs(100));
    let response = alice.refresh(&mut h, Some(30));
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(600));
    h.advance(secs(599));
    h.timeout();
    assert_eq!(h.server.table().len(), 1, "alive until the default lifetime has passed");
    h.advance(SECOND);
    h.timeout();
    assert!(h.server.table().is_empty());
}

#[test]
fn refresh_with_lifetime_zero_deletes_at_once() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    let id = alice.id(&h);
    let response = alice.refresh(&mut h, Some(0));
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(0));
    assert_eq!(h.driver.close_calls, [RelayId::new(id, false)]);
    assert_eq!((h.driver.quota("alice"), h.driver.total), (0, 0));
    assert!(h.server.table().is_empty());
    assert_eq!(h.stats().allocations_deleted, 1);
    // The 5-tuple is free again.
    assert_error(&alice.refresh(&mut h, None), 437);
    alice.allocated(&mut h);
}

#[test]
fn refresh_without_allocation_is_437() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.refresh(&mut h, Some(600)), 437);
}

#[test]
fn refresh_with_the_other_address_family_is_443() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(&mut h);
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x02));
    });
    assert_error(&response, 443);
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x01));
    });
    assert_success(&response);
}

// ---------------------------------------------------------------------------
// Dual allocation (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY)
// ---------------------------------------------------------------------------

fn dual_stack() -> TurnConfig {
    TurnConfig { relay_ips: vec![addr("198.51.100.20:0").ip(), addr("[2001:db8::20]:0").ip()], ..turn_config() }
}

fn dual_allocate(w: &mut MessageWriter<'_>) {
    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &family(0x02));
}

/// Every XOR-RELAYED-ADDRESS of a response, in order.
fn relayed_addresses(response: &Response) -> Vec<SocketAddr> {
    let message = response.message();
    message
        .attributes()
        .filter(|a| a.typ == AttrType::XOR_RELAYED_ADDRESS)
        .map(|a| attr::read_xor_address(a.value, &message.transaction_id()).expect("well-formed"))
        .collect()
}

#[test]
fn dual_allocation_relays_both_families_from_one_allocation() {
    let mut h = Harness::new(dual_stack());
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &dual_allocate)), 401);
    let first = alice.build(Method::ALLOCATE, TransactionId::random(), &dual_allocate);
    let response = alice.exchange(&mut h, &first);
    assert_success(&response);
    let relayed = relayed_addresses(&response);
    assert_eq!(relayed.len(), 2, "two XOR-RELAYED-ADDRESS: {relayed:?}");
    assert!(relayed[0].is_ipv4() && relayed[1].is_ipv6(), "IPv4 first: {relayed:?}");
    assert!(response.attr(AttrType::ADDRESS_ERROR_CODE).is_none());
    assert_eq!((h.driver.total, h.driver.open.len()), (1, 2), "one quota unit, two sockets");
    let id = alice.id(&h);

    // Each family's peers go out of that family's relay, and come back.
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_V6)]));
    for peer in [addr(PEER), addr(PEER_V6)] {
        let (outcome, packet) = alice.send(&mut h, peer, b"hi");
        assert_forwarded(&outcome, &packet, id, peer, b"hi");
        assert!(h.peer_packet(id, peer, b"back").0.is_some(), "{peer} reaches the client");
    }
    assert_success(&alice.bind(&mut h, 0x4001, addr(PEER_V6)));

    // A retransmission gets the same two addresses.
    h.advance(secs(1));
    let again = alice.exchange(&mut h, &first);
    assert_eq!(relayed_addresses(&again), relayed);

    // Deleting the allocation closes both sockets.
    assert_success(&alice.refresh(&mut h, Some(0)));
    assert_eq!(h.driver.close_calls.len(), 2);
    assert!(h.driver.open.is_empty() && h.driver.total == 0);
}

#[test]
fn dual_allocation_without_an_ipv6_relay_reports_address_error_code() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.request(&mut h, Method::ALLOCATE, &dual_allocate);
    assert_success(&response);
    let relayed = relayed_addresses(&response);
    assert_eq!(relayed.len(), 1);
    assert!(relayed[0].is_ipv4());
    let value = response.attr(AttrType::ADDRESS_ERROR_CODE).expect("ADDRESS-ERROR-CODE");
    let (family, code) = attr::read_address_error_code(value).expect("well-formed");
    assert_eq!((family, code.code), (0x02, 440), "IPv6 not supported");
    let id = alice.id(&h);
    assert_error(&alice.permit(&mut h, &[addr(PEER_V6)]), 443);
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    assert_eq!(h.server.table().get(id).expect("alive").permission_count(), 1);
}

#[test]
fn dual_allocation_with_an_exhausted_ipv6_range_reports_508_for_it() {
    let mut h = Harness::new(dual_stack());
    let v6 = addr("[2001:db8::20]:0").ip();
    while h.driver.pool(v6).allocate().is_some() {}
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.request(&mut h, Method::ALLOCATE, &dual_allocate);
    assert_success(&response);
    let value = response.attr(AttrType::ADDRESS_ERROR_CODE).expect("ADDRESS-ERROR-CODE");
    let (family, code) = attr::read_address_error_code(value).expect("well-formed");
    assert_eq!((family, code.code), (0x02, 508));
    assert_eq!(relayed_addresses(&response).len(), 1);
}

#[test]
fn dual_allocation_attribute_conflicts_are_400() {
    let mut h = Harness::new(dual_stack());
    let mut alice = Client::alice("198.51.100.1:40000");
    let conflicts: [&dyn Fn(&mut MessageWriter<'_>); 4] = [
        // Both family attributes.
        &|w| {
            dual_allocate(w);
            w.attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x01));
        },
        // IPv4 as the additional family.
        &|w| {
            w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &family(0x01));
        },
        // EVEN-PORT asking for a reservation.
        &|w| {
            dual_allocate(w);
            w.attr(AttrType::EVEN_PORT, &[0x80]);
        },
        // A reservation token.
        &|w| {
            dual_allocate(w);
            w.attr(AttrType::RESERVATION_TOKEN, &[1; 8]);
        },
    ];
    for attributes in conflicts {
        assert_error(&alice.request(&mut h, Method::ALLOCATE, attributes), 400);
    }
    assert!(h.driver.open_calls.is_empty() && h.driver.total == 0);
    // EVEN-PORT without the R bit is fine: both ports are even.
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        dual_allocate(w);
        w.attr(AttrType::EVEN_PORT, &[0x00]);
    });
    assert_success(&response);
    assert!(relayed_addresses(&response).iter().all(|a| a.port() % 2 == 0));
}

#[test]
fn refresh_with_a_family_and_lifetime_zero_deletes_only_that_relayed_address() {
    let mut h = Harness::new(dual_stack());
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_success(&alice.request(&mut h, Method::ALLOCATE, &dual_allocate));
    let id = alice.id(&h);
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr_u32(AttrType::LIFETIME, 0).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x01));
    });
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(600), "the rest of the allocation lives on");
    assert_eq!(h.driver.close_calls, [RelayId::new(id, false)]);
    let allocation = h.server.table().get(id).expect("still allocated");
    assert!(allocation.relayed(false).is_none() && allocation.relayed(true).is_some());
    assert_error(&alice.permit(&mut h, &[addr(PEER)]), 443);
    assert_success(&alice.permit(&mut h, &[addr(PEER_V6)]));
    // The IPv4 address is gone: asking for it is 443; the last one goes
    // with the allocation.
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr_u32(AttrType::LIFETIME, 0).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x01));
    });
    assert_error(&response, 443);
    let response = alice.request(&mut h, Method::REFRESH, &|w| {
        w.attr_u32(AttrType::LIFETIME, 0).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x02));
    });
    assert_success(&response);
    assert_eq!(response.lifetime(), Some(0));
    assert!(h.server.table().is_empty() && h.driver.open.is_empty() && h.driver.total == 0);
}

#[test]
fn reservation_token_of_an_ipv6_relay_is_claimed_in_its_family() {
    let mut h = Harness::new(dual_stack());
    let mut first = Client::alice("198.51.100.1:40000");
    let response = first.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP)
            .attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x02))
            .attr(AttrType::EVEN_PORT, &[0x80]);
    });
    assert_success(&response);
    let even = response.relayed();
    let token: [u8; 8] = response.attr(AttrType::RESERVATION_TOKEN).expect("token").try_into().expect("8 bytes");
    let mut second = Client::alice("198.51.100.1:40001");
    let response = second.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::RESERVATION_TOKEN, &token);
    });
    assert_success(&response);
    assert_eq!(response.relayed(), SocketAddr::new(even.ip(), even.port() + 1));
    let id = second.id(&h);
    assert!(h.driver.open.contains_key(&RelayId::new(id, true)));
}

// ---------------------------------------------------------------------------
// ICMP (RFC 8656 §11.5)
// ---------------------------------------------------------------------------

fn icmp(peer: &str, ipv6: bool, icmp_type: u8, icmp_code: u8, mtu: u32) -> IcmpReport {
    IcmpReport { peer: addr(peer), ipv6, icmp_type, icmp_code, mtu }
}

#[test]
fn icmp_errors_reach_the_client_only_for_permitted_peers_and_relayed_kinds() {
    let mut h = Harness::new(dual_stack());
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_success(&alice.request(&mut h, Method::ALLOCATE, &dual_allocate));
    let id = alice.id(&h);
    let (v4, v6) = (RelayId::new(id, false), RelayId::new(id, true));
    let mut out = Vec::new();
    // No permission yet: nothing is relayed.
    assert!(h.server.handle_icmp(h.now, v4, &icmp(PEER, false, 3, 3, 0), &mut out).is_none());
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_V6)]));

    // (report, what the ICMP attribute must carry as type, code, error data)
    let relayed = [
        (v4, icmp(PEER, false, 3, 3, 1500), (3, 3, 0)),
        (v4, icmp(PEER, false, 3, 4, 1400), (3, 4, 1400)),
        (v4, icmp(PEER, false, 11, 0, 0), (11, 0, 0)),
        (v6, icmp(PEER_V6, true, 1, 4, 0), (1, 4, 0)),
        (v6, icmp(PEER_V6, true, 2, 0, 1280), (2, 0, 1280)),
        (v6, icmp(PEER_V6, true, 3, 0, 9), (3, 0, 0)),
    ];
    for (relay, report, (icmp_type, code, data)) in relayed {
        out.clear();
        let (client, tuple) = h.server.handle_icmp(h.now, relay, &report, &mut out).expect("relayed");
        assert_eq!((client, tuple), (alice.handle, alice.tuple));
        let message = Message::parse(&out).expect("a STUN message");
        assert_eq!(message.message_type(), MessageType::new(Method::DATA, Class::Indication));
        let peer = attr::read_xor_address(
            message.attribute(AttrType::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS"),
            &message.transaction_id(),
        )
        .expect("well-formed");
        assert_eq!(peer, report.peer);
        let value = message.attribute(AttrType::ICMP).expect("ICMP");
        assert_eq!(value.len(), 8);
        assert_eq!(
            (value[2], value[3], u32::from_be_bytes(value[4..].try_into().expect("4 bytes"))),
            (icmp_type, code, data)
        );
        assert!(message.attribute(AttrType::DATA).is_none(), "ICMP instead of DATA");
    }
    // Kinds RFC 8656 does not relay: echo reply, redirect, ICMPv6 parameter
    // problem; and a peer without a permission.
    for (relay, report) in [
        (v4, icmp(PEER, false, 0, 0, 0)),
        (v4, icmp(PEER, false, 5, 1, 0)),
        (v6, icmp(PEER_V6, true, 4, 0, 0)),
        (v4, icmp(PEER_B, false, 3, 3, 0)),
    ] {
        assert!(h.server.handle_icmp(h.now, relay, &report, &mut Vec::new()).is_none(), "{report:?}");
    }
    assert_eq!(h.stats().icmp_relayed, 6);
    // Nor for a deleted allocation.
    assert_success(&alice.refresh(&mut h, Some(0)));
    assert!(h.server.handle_icmp(h.now, v4, &icmp(PEER, false, 3, 3, 0), &mut Vec::new()).is_none());
}

// ---------------------------------------------------------------------------
// CreatePermission (RFC 8656 §9, §10)
// ---------------------------------------------------------------------------

/// An allocated client and its allocation id.
fn allocated_alice(h: &mut Harness) -> (Client, AllocationId) {
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(h);
    let id = alice.id(h);
    (alice, id)
}

#[test]
fn create_permission_installs_every_peer_of_the_request() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
    assert_eq!(h.server.table().get(id).expect("alive").permission_count(), 2);
    for peer in [addr(PEER), addr(PEER_B)] {
        let (outcome, packet) = alice.send(&mut h, peer, b"hi");
        assert_forwarded(&outcome, &packet, id, peer, b"hi");
    }
    let dropped = h.stats().dropped_client_data;
    assert_eq!(alice.send(&mut h, addr(PEER_C), b"hi").0, ClientOutcome::Dropped);
    assert_eq!(h.stats().dropped_client_data, dropped + 1);
}

#[test]
fn a_permission_covers_every_port_of_the_peer_ip() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr("8.8.8.8:1000")]));
    let other_port = addr("8.8.8.8:5555");
    let (outcome, packet) = alice.send(&mut h, other_port, b"x");
    assert_forwarded(&outcome, &packet, id, other_port, b"x");
    assert!(h.peer_packet(id, addr("8.8.8.8:7777"), b"y").0.is_some());
}

#[test]
fn a_permission_lasts_exactly_300_seconds_and_repeating_refreshes_it() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.refresh(&mut h, Some(3600)));
    let peer = addr(PEER);
    assert_success(&alice.permit(&mut h, &[peer]));
    h.advance(secs(299));
    assert!(matches!(alice.send(&mut h, peer, b"x").0, ClientOutcome::Forward { .. }));
    assert!(h.peer_packet(id, peer, b"y").0.is_some());
    h.advance(SECOND);
    assert_eq!(alice.send(&mut h, peer, b"x").0, ClientOutcome::Dropped);
    assert!(h.peer_packet(id, peer, b"y").0.is_none());

    // Installed again at 300 s and refreshed at 500 s: alive until 800 s.
    assert_success(&alice.permit(&mut h, &[peer]));
    h.advance(secs(200));
    assert_success(&alice.permit(&mut h, &[peer]));
    assert_eq!(h.server.table().get(id).expect("alive").permission_count(), 1, "refreshed, not duplicated");
    h.advance(secs(299));
    assert!(h.peer_packet(id, peer, b"y").0.is_some());
    h.advance(SECOND);
    assert!(h.peer_packet(id, peer, b"y").0.is_none());
}

#[test]
fn create_permission_without_peer_is_400() {
    let mut h = Harness::authenticated();
    let (mut alice, _) = allocated_alice(&mut h);
    assert_error(&alice.permit(&mut h, &[]), 400);
}

#[test]
fn create_permission_without_allocation_is_437() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    assert_error(&alice.permit(&mut h, &[addr(PEER)]), 437);
    assert_error(&alice.bind(&mut h, 0x4000, addr(PEER)), 437);
}

#[test]
fn ipv6_peer_on_an_ipv4_relay_is_443() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_error(&alice.permit(&mut h, &[addr(PEER_V6)]), 443);
    assert_error(&alice.bind(&mut h, 0x4000, addr(PEER_V6)), 443);
    let allocation = h.server.table().get(id).expect("alive");
    assert_eq!((allocation.permission_count(), allocation.channel_count()), (0, 0));
}

#[test]
fn create_permission_is_all_or_nothing() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_error(&alice.permit(&mut h, &[addr(PEER), addr("10.0.0.1:9")]), 403);
    assert_eq!(h.server.table().get(id).expect("alive").permission_count(), 0);
    assert_eq!(alice.send(&mut h, addr(PEER), b"x").0, ClientOutcome::Dropped);
    assert_error(&alice.permit(&mut h, &[addr(PEER), addr(PEER_V6)]), 443);
    assert_eq!(h.server.table().get(id).expect("alive").permission_count(), 0);
}

#[test]
fn permissions_beyond_the_limit_are_508() {
    let mut h = Harness::new(TurnConfig { max_permissions: 2, ..turn_config() });
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
    assert_error(&alice.permit(&mut h, &[addr(PEER_C)]), 508);
    assert_error(&alice.permit(&mut h, &[addr(PEER), addr(PEER_C)]), 508);
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
    // ChannelBind installs a permission too, under the same limit.
    assert_error(&alice.bind(&mut h, 0x4000, addr(PEER_C)), 508);
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    assert_eq!(h.server.table().get(id).expect("alive").permission_count(), 2);
}

#[test]
fn expired_permissions_do_not_count_against_the_limit_before_the_sweep() {
    let mut h = Harness::new(TurnConfig { max_permissions: 2, ..turn_config() });
    let (mut alice, _) = allocated_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
    h.advance(Duration::from_secs(300));
    // No handle_timeout yet: the two permissions are expired but still listed.
    assert_success(&alice.permit(&mut h, &[addr(PEER_C)]));
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
}

// ---------------------------------------------------------------------------
// ChannelBind (RFC 8656 §11.2, §12)
// ---------------------------------------------------------------------------

#[test]
fn channel_numbers_outside_0x4000_to_0x4fff_are_400() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    for number in [0x0000, 0x3FFF, 0x5000, 0x7FFF, 0x8000, 0xFFFF] {
        assert_error(&alice.bind(&mut h, number, addr(PEER)), 400);
    }
    assert_eq!(h.server.table().get(id).expect("alive").permission_count(), 0, "no permission from a 400");
    assert_success(&alice.bind(&mut h, 0x4FFF, addr(PEER)));
}

#[test]
fn rfc5766_channels_accepts_0x5000_to_0x7fff() {
    let mut h = Harness::new(TurnConfig { rfc5766_channels: true, ..turn_config() });
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.bind(&mut h, 0x5000, addr(PEER)));
    assert_success(&alice.bind(&mut h, 0x7FFF, addr(PEER_B)));
    assert_error(&alice.bind(&mut h, 0x3FFF, addr(PEER_C)), 400);
    assert_error(&alice.bind(&mut h, 0x8000, addr(PEER_C)), 400);
    let (outcome, packet) = alice.channel_data(&mut h, 0x5000, b"old client");
    assert_forwarded(&outcome, &packet, id, addr(PEER), b"old client");
}

#[test]
fn channel_bind_without_channel_number_or_peer_is_400() {
    let mut h = Harness::authenticated();
    let (mut alice, _) = allocated_alice(&mut h);
    let response = alice.request(&mut h, Method::CHANNEL_BIND, &|w| {
        w.xor_address(AttrType::XOR_PEER_ADDRESS, &addr(PEER));
    });
    assert_error(&response, 400);
    let response = alice.request(&mut h, Method::CHANNEL_BIND, &|w| {
        w.attr(AttrType::CHANNEL_NUMBER, &[0x40, 0, 0, 0]);
    });
    assert_error(&response, 400);
}

#[test]
fn channel_bind_installs_a_permission_for_the_peer_ip() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    let peer = addr(PEER);
    assert_success(&alice.bind(&mut h, 0x4000, peer));
    // RFC 8656 §12.2: the binding installs a permission for the peer's IP.
    let other_port = addr("8.8.8.8:2000");
    let (outcome, packet) = alice.send(&mut h, other_port, b"by Send");
    assert_forwarded(&outcome, &packet, id, other_port, b"by Send");
    assert!(h.peer_packet(id, other_port, b"x").0.is_some());
    // The permission lasts 300 s like any other (RFC 8656 §9).
    h.advance(secs(300));
    assert!(h.peer_packet(id, peer, b"x").0.is_none());
}

#[test]
fn a_channel_binding_lasts_600_seconds_and_rebinding_refreshes_it() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.refresh(&mut h, Some(3600)));
    let peer = addr(PEER);
    assert_success(&alice.bind(&mut h, 0x4000, peer));
    h.advance(secs(599));
    let (outcome, packet) = alice.channel_data(&mut h, 0x4000, b"data");
    assert_forwarded(&outcome, &packet, id, peer, b"data");
    h.advance(SECOND);
    assert_eq!(alice.channel_data(&mut h, 0x4000, b"data").0, ClientOutcome::Dropped);

    // The same pair may be rebound at any time, which refreshes it.
    let start = h.elapsed();
    assert_success(&alice.bind(&mut h, 0x4000, peer));
    h.advance(secs(400));
    assert_success(&alice.bind(&mut h, 0x4000, peer));
    h.advance(secs(599));
    assert!(matches!(alice.channel_data(&mut h, 0x4000, b"data").0, ClientOutcome::Forward { .. }));
    h.advance(SECOND);
    assert_eq!(h.elapsed() - start, secs(1000));
    assert_eq!(alice.channel_data(&mut h, 0x4000, b"data").0, ClientOutcome::Dropped);
    assert_eq!(h.server.table().get(id).expect("alive").channel_count(), 1);
}

#[test]
fn a_number_or_peer_bound_otherwise_is_400() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    assert_error(&alice.bind(&mut h, 0x4000, addr(PEER_B)), 400);
    // Same IP, other port: another peer.
    assert_error(&alice.bind(&mut h, 0x4000, addr("8.8.8.8:1001")), 400);
    assert_error(&alice.bind(&mut h, 0x4001, addr(PEER)), 400);
    let (outcome, packet) = alice.channel_data(&mut h, 0x4000, b"x");
    assert_forwarded(&outcome, &packet, id, addr(PEER), b"x");
    assert_eq!(alice.channel_data(&mut h, 0x4001, b"x").0, ClientOutcome::Dropped);
}

#[test]
fn an_expired_binding_guards_its_number_and_peer_for_300_more_seconds() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.refresh(&mut h, Some(3600)));
    let (peer, other) = (addr(PEER), addr(PEER_B));
    assert_success(&alice.bind(&mut h, 0x4000, peer));
    h.advance(secs(600));
    assert_eq!(alice.channel_data(&mut h, 0x4000, b"x").0, ClientOutcome::Dropped, "expired");
    // A sweep while guarded must not forget the guard.
    h.timeout();
    assert_error(&alice.bind(&mut h, 0x4000, other), 400);
    assert_error(&alice.bind(&mut h, 0x4001, peer), 400);
    h.advance(secs(299));
    h.timeout();
    assert_error(&alice.bind(&mut h, 0x4000, other), 400);
    assert_error(&alice.bind(&mut h, 0x4001, peer), 400);
    h.advance(SECOND);
    assert_success(&alice.bind(&mut h, 0x4000, other));
    assert_success(&alice.bind(&mut h, 0x4001, peer));
    let (outcome, packet) = alice.channel_data(&mut h, 0x4000, b"x");
    assert_forwarded(&outcome, &packet, id, other, b"x");
}

#[test]
fn channels_beyond_the_limit_are_508() {
    let mut h = Harness::new(TurnConfig { max_channels: 2, ..turn_config() });
    let (mut alice, _) = allocated_alice(&mut h);
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    assert_success(&alice.bind(&mut h, 0x4001, addr(PEER_B)));
    assert_error(&alice.bind(&mut h, 0x4002, addr(PEER_C)), 508);
    // Refreshing a binding is not adding one.
    assert_success(&alice.bind(&mut h, 0x4001, addr(PEER_B)));
}

// ---------------------------------------------------------------------------
// Peer policy on every path (RFC 8656 §21.3)
// ---------------------------------------------------------------------------

#[test]
fn the_default_policy_refuses_special_peers_on_every_path() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    for (i, peer) in FORBIDDEN_PEERS.iter().map(|p| addr(p)).enumerate() {
        let before = h.stats();
        assert_error(&alice.permit(&mut h, &[peer]), 403);
        assert_error(&alice.bind(&mut h, 0x4000 + i as u16, peer), 403);
        assert_eq!(alice.send(&mut h, peer, b"x").0, ClientOutcome::Dropped, "Send to {peer}");
        let after = h.stats();
        assert_eq!(after.peers_forbidden, before.peers_forbidden + 3, "{peer} counted on each path");
        assert_eq!(after.dropped_client_data, before.dropped_client_data + 1);
        assert_eq!(after.relayed_to_peer, before.relayed_to_peer);
    }
    let allocation = h.server.table().get(id).expect("alive");
    assert_eq!((allocation.permission_count(), allocation.channel_count()), (0, 0));
}

/// Issue 6 item 6: the bypass suite, on CreatePermission, ChannelBind and
/// Send, for IPv4 and IPv6 relays.
#[test]
fn every_known_bypass_encoding_is_refused_on_every_path() {
    for (server, family, peers) in [(SERVER, 0x01, BYPASS_V4), (SERVER_V6, 0x02, BYPASS_V6)] {
        let mut h = Harness::authenticated();
        let client = if family == 0x01 { "198.51.100.1:40000" } else { "[2001:db8::1]:40000" };
        let mut alice = Client::new(client, server, Transport::Udp, Some(("alice", USERS[0].1)));
        assert_success(&alice.request(&mut h, Method::ALLOCATE, &|w| {
            w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family_value(family));
        }));
        for (i, peer) in peers.iter().map(|p| addr(p)).enumerate() {
            let before = h.stats();
            let permit = alice.permit(&mut h, &[peer]);
            let bind = alice.bind(&mut h, 0x4000 + i as u16, peer);
            // 403, or 443 where the form names the other family than the
            // relay's after canonicalising: refused either way.
            for (path, response) in [("CreatePermission", &permit), ("ChannelBind", &bind)] {
                assert!(matches!(response.code(), Some(403 | 443)), "{path} to {peer}: {:?}", response.code());
            }
            assert_eq!(alice.send(&mut h, peer, b"x").0, ClientOutcome::Dropped, "Send to {peer}");
            let after = h.stats();
            assert_eq!(after.relayed_to_peer, before.relayed_to_peer, "nothing reaches {peer}");
        }
        let id = alice.id(&h);
        let allocation = h.server.table().get(id).expect("alive");
        assert_eq!((allocation.permission_count(), allocation.channel_count()), (0, 0));
    }
}

fn family_value(family: u8) -> [u8; 4] {
    [family, 0, 0, 0]
}

/// Issue 6 item 3: no answer to an unauthenticated request is more than a
/// small fixed number of bytes larger than the request (realm "example.org";
/// a longer realm adds its own length to the 401s).
#[test]
fn unauthenticated_answers_are_barely_larger_than_their_requests() {
    // 56 bytes before RFC 8489 authentication; its 401 must also carry
    // PASSWORD-ALGORITHMS (12 bytes) and a NONCE that starts with the nonce
    // cookie and the security features (13 characters, 12 bytes more once
    // padded). The bare 401 is exactly at this bound.
    const BOUND: usize = 80;
    let mut h = Harness::authenticated();
    let tuple = FiveTuple { client: addr("198.51.100.9:1234"), server: addr(SERVER), transport: Transport::Udp };
    let request = |method: Method, attributes: AttrFn<'_>| {
        let mut packet = Vec::new();
        let mut w = MessageWriter::new(&mut packet, MessageType::new(method, Class::Request), TransactionId::random());
        attributes(&mut w);
        packet
    };
    let wrong_key = long_term_key_md5("alice", REALM, "wrong");
    let nonce = h.server_nonce(&tuple);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("Binding success", request(Method::BINDING, &|_| {})),
        ("401 to a bare Allocate", request(Method::ALLOCATE, &|_| {})),
        ("401 to a Refresh", request(Method::REFRESH, &|_| {})),
        (
            "401 to a wrong password",
            request(Method::ALLOCATE, &|w| {
                w.attr(AttrType::USERNAME, b"alice")
                    .attr(AttrType::REALM, REALM.as_bytes())
                    .attr(AttrType::NONCE, &nonce);
                w.message_integrity(&wrong_key);
            }),
        ),
        (
            "401 to an unknown user",
            request(Method::ALLOCATE, &|w| {
                w.attr(AttrType::USERNAME, b"x").attr(AttrType::REALM, REALM.as_bytes()).attr(AttrType::NONCE, &nonce);
                w.message_integrity(&wrong_key);
            }),
        ),
        (
            "438 to a stale nonce",
            request(Method::ALLOCATE, &|w| {
                w.attr(AttrType::USERNAME, b"alice")
                    .attr(AttrType::REALM, REALM.as_bytes())
                    .attr(AttrType::NONCE, b"stale");
                w.message_integrity(&long_term_key_md5("alice", REALM, USERS[0].1));
            }),
        ),
        (
            "400 to integrity without credentials",
            request(Method::ALLOCATE, &|w| {
                w.message_integrity(&wrong_key);
            }),
        ),
        (
            "420 to many unknown attributes",
            request(Method::BINDING, &|w| {
                for typ in 0x7F00..0x7F40 {
                    w.attr(AttrType(typ), &[]);
                }
            }),
        ),
        ("400 to an unknown method", request(Method(0x0FF), &|_| {})),
    ];
    for (kind, packet) in cases {
        let (outcome, reply) = h.client_packet(&tuple, ClientHandle(9), &packet);
        assert_eq!(outcome, ClientOutcome::Replied, "{kind}");
        assert!(
            reply.len() <= packet.len() + BOUND,
            "{kind}: a {}-byte request got {} bytes back",
            packet.len(),
            reply.len()
        );
    }
}

#[test]
fn allow_peers_opens_what_it_names_including_mapped_forms() {
    let allow = PeerPolicy::new(vec!["127.0.0.0/8".parse().expect("CIDR")], vec![], vec![]);
    let mut h = Harness::new(TurnConfig { policy: allow, ..turn_config() });
    let (mut alice, id) = allocated_alice(&mut h);
    let (loopback, mapped) = (addr("127.0.0.1:9"), addr("[::ffff:127.0.0.1]:9"));
    assert_success(&alice.permit(&mut h, &[mapped]));
    // The mapped form is the IPv4 peer: forwarded to its canonical address.
    let (outcome, packet) = alice.send(&mut h, mapped, b"x");
    assert_forwarded(&outcome, &packet, id, loopback, b"x");
    assert_success(&alice.bind(&mut h, 0x4000, loopback));
    assert!(h.peer_packet(id, loopback, b"y").0.is_some());
    for other in ["10.0.0.1:9", "169.254.169.254:80", "192.168.1.1:9"] {
        assert_error(&alice.permit(&mut h, &[addr(other)]), 403);
    }
}

#[test]
fn deny_peers_wins_over_allow_peers() {
    let policy = PeerPolicy::new(
        vec!["127.0.0.0/8".parse().expect("CIDR")],
        vec!["127.0.0.2/32".parse().expect("CIDR"), "8.8.8.0/24".parse().expect("CIDR")],
        vec![],
    );
    let mut h = Harness::new(TurnConfig { policy, ..turn_config() });
    let (mut alice, _) = allocated_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr("127.0.0.1:9")]));
    assert_error(&alice.permit(&mut h, &[addr("127.0.0.2:9")]), 403);
    assert_error(&alice.permit(&mut h, &[addr("[::ffff:127.0.0.2]:9")]), 403);
    assert_error(&alice.bind(&mut h, 0x4000, addr("127.0.0.2:9")), 403);
    assert_error(&alice.permit(&mut h, &[addr(PEER)]), 403);
    assert_success(&alice.permit(&mut h, &[addr(PEER_B)]));
    let before = h.stats().peers_forbidden;
    assert_eq!(alice.send(&mut h, addr("127.0.0.2:9"), b"x").0, ClientOutcome::Dropped);
    assert_eq!(h.stats().peers_forbidden, before + 1);
}

// ---------------------------------------------------------------------------
// Data path (RFC 8656 §11, §12.6, §12.7)
// ---------------------------------------------------------------------------

#[test]
fn send_indication_forwards_exactly_the_data_bytes() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    let peer = addr(PEER);
    assert_success(&alice.permit(&mut h, &[peer]));
    for len in 0..=9 {
        let data: Vec<u8> = (1..=len).collect();
        let (outcome, packet) = alice.send(&mut h, peer, &data);
        assert_forwarded(&outcome, &packet, id, peer, &data);
    }
    assert_eq!(h.stats().relayed_to_peer, 10);
    assert_eq!(h.server.table().get(id).expect("alive").traffic.bytes_to_peer, (0..=9).sum::<u64>());
}

#[test]
fn send_indication_without_permission_or_allocation_is_dropped_and_counted() {
    let mut h = Harness::authenticated();
    let stranger = Client::alice("198.51.100.9:40000");
    assert_eq!(stranger.send(&mut h, addr(PEER), b"x").0, ClientOutcome::Dropped);
    let (alice, _) = allocated_alice(&mut h);
    assert_eq!(alice.send(&mut h, addr(PEER), b"x").0, ClientOutcome::Dropped);
    assert_eq!(h.stats().dropped_client_data, 2);
    assert_eq!(h.stats().relayed_to_peer, 0);
}

#[test]
fn channel_data_on_a_bound_channel_forwards_the_payload() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.bind(&mut h, 0x4abc, addr(PEER)));
    for len in 0..=5 {
        let payload = vec![0x42; len];
        let (outcome, packet) = alice.channel_data(&mut h, 0x4abc, &payload);
        assert_forwarded(&outcome, &packet, id, addr(PEER), &payload);
    }
    let dropped = h.stats().dropped_client_data;
    assert_eq!(alice.channel_data(&mut h, 0x4abd, b"unbound").0, ClientOutcome::Dropped);
    assert_eq!(h.stats().dropped_client_data, dropped + 1);
}

#[test]
fn channel_data_over_tcp_forwards_the_payload_without_padding() {
    let mut h = Harness::authenticated();
    let mut alice = Client::new("198.51.100.1:40000", SERVER, Transport::Tcp, Some(("alice", USERS[0].1)));
    alice.allocated(&mut h);
    let id = alice.id(&h);
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    for len in 0..=5 {
        let payload = vec![7; len];
        let (outcome, packet) = alice.channel_data(&mut h, 0x4000, &payload);
        assert_eq!(packet.len() % 4, 0, "the client pads on a stream");
        assert_eq!(demux::stream_frame_len(&packet), Ok(Some(packet.len())));
        assert_forwarded(&outcome, &packet, id, addr(PEER), &payload);
    }
}

#[test]
fn max_bps_limits_each_direction_separately() {
    let mut h = Harness::new(TurnConfig { max_bps: 1000, ..turn_config() });
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    // A second's worth towards the peer, then nothing until it refills.
    assert!(matches!(alice.channel_data(&mut h, 0x4000, &[1; 600]).0, ClientOutcome::Forward { .. }));
    assert!(matches!(alice.channel_data(&mut h, 0x4000, &[1; 400]).0, ClientOutcome::Forward { .. }));
    assert_eq!(alice.channel_data(&mut h, 0x4000, &[1; 10]).0, ClientOutcome::Dropped);
    // The other direction has its own budget.
    assert!(h.peer_packet(id, addr(PEER), &[2; 900]).0.is_some());
    assert_eq!(h.peer_packet(id, addr(PEER), &[2; 200]).0, None);
    assert_eq!(h.stats().over_bandwidth, 2);
    h.advance(Duration::from_millis(500));
    assert!(matches!(alice.channel_data(&mut h, 0x4000, &[1; 500]).0, ClientOutcome::Forward { .. }));
    assert_eq!(alice.channel_data(&mut h, 0x4000, &[1; 10]).0, ClientOutcome::Dropped);
}

#[test]
fn peer_data_without_permission_is_dropped_and_counted() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_eq!(h.peer_packet(id, addr(PEER), b"x").0, None);
    assert_success(&alice.permit(&mut h, &[addr(PEER_B)]));
    assert_eq!(h.peer_packet(id, addr(PEER), b"x").0, None);
    assert_eq!(h.stats().dropped_no_permission, 2);
    assert_eq!(h.stats().relayed_to_client, 0);
}

/// Checks a ChannelData frame built in the slot by `handle_peer`.
#[track_caller]
fn check_channel_frame(outcome: &PeerOutcome, slot: &[u8], number: u16, payload: &[u8], stream: bool) {
    let (start, end) = outcome.frame;
    assert_eq!(start, PEER_HEADROOM - channel_data::HEADER_LEN, "header right in front of the payload");
    let frame = &slot[start..end];
    assert_eq!(&frame[..2], &number.to_be_bytes());
    assert_eq!(&frame[2..4], &(payload.len() as u16).to_be_bytes());
    assert_eq!(&frame[4..4 + payload.len()], payload);
    if stream {
        // RFC 8656 §12.5: padded to four on TCP, with zeros.
        assert_eq!(frame.len(), channel_data::padded_frame_len(payload.len()));
        assert!(frame[4 + payload.len()..].iter().all(|b| *b == 0), "padding is zero");
        assert_eq!(demux::stream_frame_len(frame), Ok(Some(frame.len())));
    } else {
        assert_eq!(frame.len(), channel_data::HEADER_LEN + payload.len(), "no padding on UDP");
    }
    let parsed = ChannelData::parse(frame).expect("a well-formed ChannelData message");
    assert_eq!((parsed.channel.get(), parsed.payload), (number, payload));
}

#[test]
fn peer_data_on_a_channel_gets_a_channel_data_header_unpadded_on_udp() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.bind(&mut h, 0x4123, addr(PEER)));
    for len in 0..=7u8 {
        let payload: Vec<u8> = (1..=len).collect();
        let (outcome, slot) = h.peer_packet(id, addr(PEER), &payload);
        let outcome = outcome.expect("permitted and bound");
        assert_eq!((outcome.client, outcome.tuple), (alice.handle, alice.tuple));
        check_channel_frame(&outcome, &slot, 0x4123, &payload, false);
    }
    assert_eq!(h.stats().relayed_to_client, 8);
}

#[test]
fn peer_data_on_a_channel_is_padded_to_four_on_tcp() {
    let mut h = Harness::authenticated();
    let mut alice = Client::new("198.51.100.1:40000", SERVER, Transport::Tcp, Some(("alice", USERS[0].1)));
    alice.allocated(&mut h);
    let id = alice.id(&h);
    assert_success(&alice.bind(&mut h, 0x4123, addr(PEER)));
    for len in 0..=7u8 {
        let payload: Vec<u8> = (1..=len).collect();
        let (outcome, slot) = h.peer_packet(id, addr(PEER), &payload);
        let outcome = outcome.expect("permitted and bound");
        assert_eq!(outcome.tuple.transport, Transport::Tcp);
        check_channel_frame(&outcome, &slot, 0x4123, &payload, true);
    }
}

/// Checks a Data indication built in the slot by `handle_peer`; returns its
/// transaction ID.
#[track_caller]
fn check_data_indication(outcome: &PeerOutcome, slot: &[u8], peer: SocketAddr, payload: &[u8]) -> TransactionId {
    let (start, end) = outcome.frame;
    assert_eq!(end, PEER_HEADROOM + payload.len().next_multiple_of(4), "ends at the padded payload");
    let message = Message::parse(&slot[start..end]).expect("a Data indication is a well-formed STUN message");
    assert_eq!(message.message_type(), MessageType::new(Method::DATA, Class::Indication));
    let types: Vec<AttrType> = message.attributes().map(|a| a.typ).collect();
    assert_eq!(types, [AttrType::XOR_PEER_ADDRESS, AttrType::DATA]);
    let xor_peer = message.attribute(AttrType::XOR_PEER_ADDRESS).expect("listed");
    assert_eq!(attr::read_xor_address(xor_peer, &message.transaction_id()), Ok(peer));
    assert_eq!(message.attribute(AttrType::DATA), Some(payload));
    assert!(slot[PEER_HEADROOM + payload.len()..end].iter().all(|b| *b == 0), "padding is zero, not old bytes");
    message.transaction_id()
}

#[test]
fn peer_data_without_a_channel_becomes_a_data_indication() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    let peer = addr(PEER);
    assert_success(&alice.permit(&mut h, &[peer]));
    let mut tids = Vec::new();
    for len in 0..=7u8 {
        let payload: Vec<u8> = (1..=len).collect();
        let (outcome, slot) = h.peer_packet(id, peer, &payload);
        let outcome = outcome.expect("permitted");
        assert_eq!((outcome.client, outcome.tuple), (alice.handle, alice.tuple));
        tids.push(check_data_indication(&outcome, &slot, peer, &payload));
    }
    tids.sort_by_key(|t| t.0);
    tids.dedup();
    assert_eq!(tids.len(), 8, "each indication has its own transaction ID");
    // A bound channel is for its peer only; another port of the IP gets indications.
    assert_success(&alice.bind(&mut h, 0x4000, peer));
    let other_port = addr("8.8.8.8:1001");
    let (outcome, slot) = h.peer_packet(id, other_port, b"abc");
    check_data_indication(&outcome.expect("permitted"), &slot, other_port, b"abc");
}

#[test]
fn peer_data_from_an_ipv6_peer_becomes_a_data_indication() {
    let mut h = Harness::authenticated();
    let mut alice = Client::new("[2001:db8::1]:40000", SERVER_V6, Transport::Udp, Some(("alice", USERS[0].1)));
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(0x02));
    });
    assert_success(&response);
    let id = alice.id(&h);
    let peer = addr(PEER_V6);
    assert_success(&alice.permit(&mut h, &[peer]));
    assert_error(&alice.permit(&mut h, &[addr(PEER)]), 443);
    for len in 0..=7u8 {
        let payload: Vec<u8> = (1..=len).collect();
        let (outcome, slot) = h.peer_packet(id, peer, &payload);
        let outcome = outcome.expect("permitted");
        assert_eq!(outcome.frame.0, 0, "an IPv6 Data indication uses all of PEER_HEADROOM");
        check_data_indication(&outcome, &slot, peer, &payload);
    }
    let (outcome, packet) = alice.send(&mut h, peer, b"v6");
    assert_forwarded(&outcome, &packet, id, peer, b"v6");
}

// ---------------------------------------------------------------------------
// Expiry and teardown (RFC 8656 §3.1, §7, §9, §12)
// ---------------------------------------------------------------------------

#[test]
fn the_sweep_deletes_an_allocation_at_its_expiry() {
    let mut h = Harness::authenticated();
    let (_, id) = allocated_alice(&mut h);
    let free = h.driver.free_ports(addr(SERVER).ip());
    h.advance(secs(599));
    h.timeout();
    assert_eq!(h.server.table().len(), 1);
    h.advance(SECOND);
    h.timeout();
    assert!(h.server.table().is_empty());
    assert_eq!(h.driver.close_calls, [RelayId::new(id, false)]);
    assert_eq!((h.driver.quota("alice"), h.driver.total), (0, 0));
    assert_eq!(h.driver.free_ports(addr(SERVER).ip()), free + 1, "the port went back to the pool");
    assert_eq!(h.stats().allocations_deleted, 1);
}

#[test]
fn the_sweep_forgets_expired_permissions_and_channels() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.refresh(&mut h, Some(3600)));
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER_B)));
    let counts = |h: &Harness| {
        let allocation = h.server.table().get(id).expect("alive");
        (allocation.permission_count(), allocation.channel_count())
    };
    h.advance(secs(299));
    h.timeout();
    assert_eq!(counts(&h), (2, 1));
    h.advance(SECOND);
    h.timeout();
    assert_eq!(counts(&h), (0, 1), "permissions gone at 300 s, the channel lives on");
    // The channel expires at 600 s and is forgotten after its guard time.
    h.advance(secs(599));
    h.timeout();
    assert_eq!(counts(&h), (0, 1));
    h.advance(SECOND);
    h.timeout();
    assert_eq!(counts(&h), (0, 0));
}

#[test]
fn an_expired_allocation_relays_nothing_even_before_the_sweep() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    let peer = addr(PEER);
    assert_success(&alice.bind(&mut h, 0x4000, peer));
    h.advance(secs(400));
    assert_success(&alice.permit(&mut h, &[peer]));
    assert_success(&alice.bind(&mut h, 0x4000, peer));
    h.advance(secs(200));
    // 600 s: the allocation is dead though its permission and channel are not.
    assert_eq!(alice.send(&mut h, peer, b"x").0, ClientOutcome::Dropped);
    assert_eq!(alice.channel_data(&mut h, 0x4000, b"x").0, ClientOutcome::Dropped);
    assert_eq!(h.peer_packet(id, peer, b"x").0, None);
    assert_error(&alice.permit(&mut h, &[peer]), 437);
    assert_error(&alice.bind(&mut h, 0x4000, peer), 437);
    assert_eq!(h.server.table().len(), 1, "not swept yet");
    // A Refresh finds it dead and deletes it.
    assert_error(&alice.refresh(&mut h, None), 437);
    assert!(h.server.table().is_empty());
    assert_eq!(h.driver.close_calls, [RelayId::new(id, false)]);
}

#[test]
fn allocate_over_an_expired_allocation_replaces_it() {
    let mut h = Harness::authenticated();
    let (mut alice, old) = allocated_alice(&mut h);
    h.advance(secs(600));
    alice.allocated(&mut h);
    assert_eq!(h.driver.close_calls, [RelayId::new(old, false)]);
    assert_eq!(h.driver.open_calls.len(), 2);
    assert_eq!((h.server.table().len(), h.driver.quota("alice")), (1, 1));
}

#[test]
fn a_closed_tcp_connection_takes_its_allocation_with_it() {
    let mut h = Harness::authenticated();
    let mut tcp = Client::new("198.51.100.1:40001", SERVER, Transport::Tcp, Some(("alice", USERS[0].1)));
    tcp.allocated(&mut h);
    let id = tcp.id(&h);
    let (udp, _) = allocated_alice(&mut h);
    h.connection_closed(&tcp.tuple);
    assert_eq!(h.driver.close_calls, [RelayId::new(id, false)]);
    assert!(h.server.table().find(&tcp.tuple).is_none());
    assert!(h.server.table().find(&udp.tuple).is_some());
    assert_eq!(h.driver.quota("alice"), 1);
    // A second close, or one without an allocation, does nothing.
    h.connection_closed(&tcp.tuple);
    assert_eq!(h.driver.close_calls.len(), 1);
}

#[test]
fn close_all_deletes_every_allocation_and_returns_everything() {
    let mut h = Harness::authenticated();
    let free = h.driver.free_ports(addr(SERVER).ip());
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    Client::alice("198.51.100.1:40001").allocated(&mut h);
    Client::bob("198.51.100.2:40000").allocated(&mut h);
    h.close_all();
    assert!(h.server.table().is_empty());
    assert_eq!(h.driver.close_calls.len(), 3);
    assert!(h.driver.per_user.is_empty() && h.driver.total == 0);
    assert_eq!(h.driver.free_ports(addr(SERVER).ip()), free);
    assert_eq!(h.stats().allocations_deleted, 3);
}

// ---------------------------------------------------------------------------
// Stateful property: the table follows a model of allocations
// ---------------------------------------------------------------------------

/// The clients of the property: user, address, transport. Three belong to
/// alice, so her quota can run out; the TCP ones can have their connection closed.
const MODEL_CLIENTS: &[(&str, &str, Transport)] = &[
    ("alice", "198.51.100.1:40000", Transport::Udp),
    ("alice", "198.51.100.1:40001", Transport::Tcp),
    ("alice", "198.51.100.1:40002", Transport::Udp),
    ("bob", "198.51.100.2:40000", Transport::Udp),
    ("bob", "198.51.100.2:40001", Transport::Tcp),
];
/// Channel `i` is always bound to peer `i`, so bindings never conflict.
const MODEL_PEERS: &[&str] = &[PEER, PEER_B, PEER_C];

#[derive(Clone, Debug)]
enum Op {
    Allocate { client: usize, lifetime: Option<u32> },
    Refresh { client: usize, lifetime: Option<u32> },
    CreatePermission { client: usize, peer: usize },
    ChannelBind { client: usize, channel: usize },
    Advance(u64),
    Timeout,
    ConnectionClosed { client: usize },
}

#[derive(Clone, Copy, Debug)]
struct Limits {
    user_quota: u32,
    total_quota: u32,
    ports: u16,
}

fn limits() -> impl Strategy<Value = Limits> {
    (0..=3u32, 0..=4u32, 1..=4u16).prop_map(|(user_quota, total_quota, ports)| Limits {
        user_quota,
        total_quota,
        ports,
    })
}

fn op() -> impl Strategy<Value = Op> {
    let client = 0..MODEL_CLIENTS.len();
    let lifetime = prop_oneof![Just(None), Just(Some(0)), (1..=4000u32).prop_map(Some)];
    let tcp_clients: Vec<usize> = (0..MODEL_CLIENTS.len()).filter(|i| MODEL_CLIENTS[*i].2.is_stream()).collect();
    // Steps land on and around every deadline: 300 s permissions, 600 s
    // default lifetime, 600 s nonces, 3600 s maximum.
    let step = prop_oneof![1..=5u64, Just(299), Just(300), Just(599), Just(600), Just(601), 0..=4000u64];
    prop_oneof![
        3 => (client.clone(), lifetime.clone()).prop_map(|(client, lifetime)| Op::Allocate { client, lifetime }),
        3 => (client.clone(), lifetime).prop_map(|(client, lifetime)| Op::Refresh { client, lifetime }),
        1 => (client.clone(), 0..MODEL_PEERS.len()).prop_map(|(client, peer)| Op::CreatePermission { client, peer }),
        1 => (client, 0..MODEL_PEERS.len()).prop_map(|(client, channel)| Op::ChannelBind { client, channel }),
        3 => step.prop_map(Op::Advance),
        1 => Just(Op::Timeout),
        1 => proptest::sample::select(tcp_clients).prop_map(|client| Op::ConnectionClosed { client }),
    ]
}

/// What the table should hold: which clients have an allocation (expired
/// or not, until something deletes it) and when each expires, in seconds
/// since the start.
#[derive(Debug, Default)]
struct Model {
    allocations: BTreeMap<usize, u64>,
    now: u64,
}

impl Model {
    /// RFC 8656 §7.2 and §7.3: min(requested, 3600), at least the default 600.
    fn lifetime(requested: Option<u32>) -> u64 {
        requested.map_or(600, |secs| u64::from(secs).clamp(600, 3600))
    }

    fn is_alive(&self, client: usize) -> bool {
        self.allocations.get(&client).is_some_and(|expires| self.now < *expires)
    }

    fn per_user(&self) -> BTreeMap<String, u32> {
        let mut per_user = BTreeMap::new();
        for client in self.allocations.keys() {
            *per_user.entry(MODEL_CLIENTS[*client].0.to_owned()).or_insert(0) += 1;
        }
        per_user
    }

    /// The expected answer to an Allocate: an error code, or the lifetime.
    fn allocate(&mut self, client: usize, requested: Option<u32>, limits: Limits) -> Result<u64, u16> {
        if self.is_alive(client) {
            return Err(437);
        }
        // An expired allocation on the 5-tuple is deleted first.
        self.allocations.remove(&client);
        let total = self.allocations.len();
        let user = self.per_user().get(MODEL_CLIENTS[client].0).copied().unwrap_or(0);
        if limits.total_quota != 0 && total >= limits.total_quota as usize {
            return Err(508);
        }
        if limits.user_quota != 0 && user >= limits.user_quota {
            return Err(486);
        }
        if total >= usize::from(limits.ports) {
            return Err(508);
        }
        let lifetime = Self::lifetime(requested);
        self.allocations.insert(client, self.now + lifetime);
        Ok(lifetime)
    }

    fn refresh(&mut self, client: usize, requested: Option<u32>) -> Result<u64, u16> {
        if !self.is_alive(client) {
            // A Refresh finds an expired allocation and deletes it.
            self.allocations.remove(&client);
            return Err(437);
        }
        if requested == Some(0) {
            self.allocations.remove(&client);
            return Ok(0);
        }
        let lifetime = Self::lifetime(requested);
        self.allocations.insert(client, self.now + lifetime);
        Ok(lifetime)
    }

    fn timeout(&mut self) {
        let now = self.now;
        self.allocations.retain(|_, expires| now < *expires);
    }
}

#[track_caller]
fn assert_answer(response: &Response, expected: Result<u64, u16>, op: &Op) {
    match expected {
        Ok(lifetime) => {
            assert!(response.is_success(), "{op:?}: expected success, got {:?}", response.code());
            assert_eq!(response.lifetime().map(u64::from), Some(lifetime), "{op:?}: LIFETIME");
        }
        Err(code) => assert_eq!(response.code(), Some(code), "{op:?}"),
    }
}

fn run_against_model(limits: Limits, ops: &[Op]) {
    let mut h = Harness::authenticated();
    h.driver.user_quota = limits.user_quota;
    h.driver.total_quota = limits.total_quota;
    h.driver.ports = (PORTS.0, PORTS.0 + limits.ports - 1);
    let mut clients: Vec<Client> = MODEL_CLIENTS
        .iter()
        .map(|(user, client, transport)| {
            let password = USERS.iter().find(|(u, _)| u == user).expect("a configured user").1;
            Client::new(client, SERVER, *transport, Some((user, password)))
        })
        .collect();
    let mut model = Model::default();
    for op in ops {
        match *op {
            Op::Allocate { client, lifetime } => {
                let response = clients[client].request(&mut h, Method::ALLOCATE, &|w| {
                    w.attr(AttrType::REQUESTED_TRANSPORT, &UDP);
                    if let Some(lifetime) = lifetime {
                        w.attr_u32(AttrType::LIFETIME, lifetime);
                    }
                });
                assert_answer(&response, model.allocate(client, lifetime, limits), op);
            }
            Op::Refresh { client, lifetime } => {
                let response = clients[client].refresh(&mut h, lifetime);
                assert_answer(&response, model.refresh(client, lifetime), op);
            }
            Op::CreatePermission { client, peer } => {
                let response = clients[client].permit(&mut h, &[addr(MODEL_PEERS[peer])]);
                assert_eq!(response.code(), if model.is_alive(client) { None } else { Some(437) }, "{op:?}");
            }
            Op::ChannelBind { client, channel } => {
                let number = 0x4000 + u16::try_from(channel).expect("few channels");
                let response = clients[client].bind(&mut h, number, addr(MODEL_PEERS[channel]));
                assert_eq!(response.code(), if model.is_alive(client) { None } else { Some(437) }, "{op:?}");
            }
            Op::Advance(by) => {
                h.advance(secs(by));
                model.now += by;
            }
            Op::Timeout => {
                h.timeout();
                model.timeout();
            }
            Op::ConnectionClosed { client } => {
                h.connection_closed(&clients[client].tuple);
                model.allocations.remove(&client);
            }
        }
        // The harness has checked the table's consistency and that open
        // relays and quotas match the table; now the table against the model.
        let table = h.server.table();
        assert_eq!(table.len(), model.allocations.len(), "after {op:?}");
        for (index, client) in clients.iter().enumerate() {
            let expires = table.find(&client.tuple).and_then(|id| table.get(id)).map(|a| a.expires);
            let expected = model.allocations.get(&index).map(|secs_| h.start + secs(*secs_));
            assert_eq!(expires, expected, "client {index} after {op:?}");
        }
        assert_eq!(h.driver.open.len(), model.allocations.len(), "open relays after {op:?}");
        assert_eq!(h.driver.per_user, model.per_user(), "quotas after {op:?}");
        assert_eq!(h.driver.total as usize, model.allocations.len(), "total quota after {op:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn allocations_follow_the_model(limits in limits(), ops in proptest::collection::vec(op(), 1..60)) {
        run_against_model(limits, &ops);
    }
}

// ---------------------------------------------------------------------------
// RFC 5780 NAT behaviour discovery
// ---------------------------------------------------------------------------

/// The alternate of [`SERVER`]: another IP and port.
const ALTERNATE: &str = "192.0.2.11:3479";

fn discovery_harness(rfc3489: bool) -> Harness {
    let nat_discovery = NatDiscovery::new(addr(SERVER), addr(ALTERNATE));
    assert!(nat_discovery.is_some());
    Harness::with_config(ServerConfig { nat_discovery, rfc3489, ..ServerConfig::default() })
}

fn binding(build: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
    let mut packet = Vec::new();
    let mut w =
        MessageWriter::new(&mut packet, MessageType::new(Method::BINDING, Class::Request), TransactionId::random());
    build(&mut w);
    packet
}

fn change(change_ip: bool, change_port: bool) -> [u8; 4] {
    attr::ChangeRequest { change_ip, change_port }.to_bytes()
}

fn plain_address(response: &Response, typ: AttrType) -> Option<SocketAddr> {
    response.attr(typ).map(|value| attr::read_address(value).expect("valid address"))
}

#[test]
fn without_discovery_its_request_attributes_get_420() {
    let mut h = Harness::with_config(ServerConfig::default());
    let tuple = FiveTuple { client: addr("198.51.100.9:1234"), server: addr(SERVER), transport: Transport::Udp };
    for typ in [AttrType::CHANGE_REQUEST, AttrType::RESPONSE_PORT, AttrType::PADDING] {
        let packet = binding(|w| {
            w.attr(typ, &change(false, true));
        });
        let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &packet);
        assert_eq!(outcome, ClientOutcome::Replied);
        let response = Response::new(reply);
        assert_error(&response, 420);
        let listed: Vec<AttrType> =
            attr::read_unknown_attributes(response.attr(AttrType::UNKNOWN_ATTRIBUTES).expect("listed"))
                .expect("valid")
                .collect();
        assert_eq!(listed, [typ]);
        assert_eq!(response.attr(AttrType::OTHER_ADDRESS), None);
    }
}

#[test]
fn discovery_answers_carry_other_address_and_response_origin() {
    let mut h = discovery_harness(false);
    let client = addr("198.51.100.9:1234");
    let tuple = FiveTuple { client, server: addr(SERVER), transport: Transport::Udp };
    let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &binding(|_| {}));
    assert_eq!(outcome, ClientOutcome::Replied);
    let response = Response::new(reply);
    assert_success(&response);
    assert_eq!(response.xor_address(AttrType::XOR_MAPPED_ADDRESS), Some(client));
    assert_eq!(plain_address(&response, AttrType::MAPPED_ADDRESS), Some(client));
    assert_eq!(plain_address(&response, AttrType::RESPONSE_ORIGIN), Some(addr(SERVER)));
    assert_eq!(plain_address(&response, AttrType::OTHER_ADDRESS), Some(addr(ALTERNATE)));

    // A listen address outside the four is served without the usage.
    let elsewhere = FiveTuple { server: addr("192.0.2.99:3478"), ..tuple };
    let (_, reply) = h.client_packet(&elsewhere, ClientHandle(0), &binding(|_| {}));
    assert_eq!(Response::new(reply).attr(AttrType::OTHER_ADDRESS), None);
    let (_, reply) = h.client_packet(
        &elsewhere,
        ClientHandle(0),
        &binding(|w| {
            w.attr(AttrType::CHANGE_REQUEST, &change(true, true));
        }),
    );
    assert_error(&Response::new(reply), 420);
}

#[test]
fn change_request_names_the_address_to_answer_from() {
    let mut h = discovery_harness(false);
    let client = addr("198.51.100.9:1234");
    for (received_on, change_ip, change_port, origin) in [
        (SERVER, false, false, SERVER),
        (SERVER, false, true, "192.0.2.10:3479"),
        (SERVER, true, false, "192.0.2.11:3478"),
        (SERVER, true, true, ALTERNATE),
        (ALTERNATE, true, true, SERVER),
        ("192.0.2.11:3478", false, true, ALTERNATE),
    ] {
        let tuple = FiveTuple { client, server: addr(received_on), transport: Transport::Udp };
        let packet = binding(|w| {
            w.attr(AttrType::CHANGE_REQUEST, &change(change_ip, change_port));
        });
        let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &packet);
        let expected = if origin == received_on {
            ClientOutcome::Replied
        } else {
            ClientOutcome::RepliedFrom { source: addr(origin), destination: client }
        };
        assert_eq!(outcome, expected, "{received_on} {change_ip} {change_port}");
        let response = Response::new(reply);
        assert_eq!(plain_address(&response, AttrType::RESPONSE_ORIGIN), Some(addr(origin)));
        let other = if received_on == SERVER {
            ALTERNATE
        } else if received_on == ALTERNATE {
            SERVER
        } else {
            "192.0.2.10:3479"
        };
        assert_eq!(plain_address(&response, AttrType::OTHER_ADDRESS), Some(addr(other)));
    }
}

#[test]
fn response_port_redirects_and_connections_refuse_changes() {
    let mut h = discovery_harness(false);
    let client = addr("198.51.100.9:1234");
    let udp = FiveTuple { client, server: addr(SERVER), transport: Transport::Udp };
    let packet = binding(|w| {
        w.attr(AttrType::RESPONSE_PORT, &[0x10, 0x00, 0, 0]);
    });
    let (outcome, _) = h.client_packet(&udp, ClientHandle(0), &packet);
    assert_eq!(outcome, ClientOutcome::RepliedFrom { source: addr(SERVER), destination: addr("198.51.100.9:4096") });

    let tcp = FiveTuple { transport: Transport::Tcp, ..udp };
    let packet = binding(|w| {
        w.attr(AttrType::CHANGE_REQUEST, &change(true, false));
    });
    let (outcome, reply) = h.client_packet(&tcp, ClientHandle(0), &packet);
    assert_eq!(outcome, ClientOutcome::Replied);
    assert_error(&Response::new(reply), 400);
    // A Binding over TCP still tells the client its alternate address.
    let (_, reply) = h.client_packet(&tcp, ClientHandle(0), &binding(|_| {}));
    assert_eq!(plain_address(&Response::new(reply), AttrType::OTHER_ADDRESS), Some(addr(ALTERNATE)));
}

/// RFC 5780 §6.1 asks for PADDING up to the MTU; tern pads only up to the
/// request's own size, so a padded request is never amplified.
#[test]
fn padding_fills_the_response_up_to_the_request_size_only() {
    let mut h = discovery_harness(false);
    let tuple = FiveTuple { client: addr("198.51.100.9:1234"), server: addr(SERVER), transport: Transport::Udp };
    for (request_padding, fingerprint) in [(1400, false), (1400, true), (0, false), (13, true)] {
        let packet = binding(|w| {
            w.attr(AttrType::PADDING, &vec![0xAB; request_padding]);
            if fingerprint {
                w.fingerprint();
            }
        });
        let (_, reply) = h.client_packet(&tuple, ClientHandle(0), &packet);
        let response = Response::new(reply.clone());
        assert_success(&response);
        let padding = response.attr(AttrType::PADDING).expect("PADDING echoed in kind");
        assert!(reply.len() <= packet.len().max(reply.len() - padding.len()), "{request_padding}");
        assert!(reply.len() <= packet.len() + 64, "{request_padding}: {} > {}", reply.len(), packet.len());
        if request_padding >= 1000 {
            assert!(reply.len() + 4 > packet.len(), "padded to the request size: {} vs {}", reply.len(), packet.len());
        }
        assert_eq!(response.message().has_fingerprint(), fingerprint);
    }
}

#[test]
fn unauthenticated_discovery_answers_stay_within_the_amplification_bound() {
    const BOUND: usize = 64;
    let mut h = discovery_harness(false);
    let tuple = FiveTuple { client: addr("198.51.100.9:1234"), server: addr(SERVER), transport: Transport::Udp };
    for packet in [
        binding(|_| {}),
        binding(|w| {
            w.attr(AttrType::CHANGE_REQUEST, &change(true, true));
        }),
    ] {
        let (_, reply) = h.client_packet(&tuple, ClientHandle(0), &packet);
        assert!(reply.len() <= packet.len() + BOUND, "{} bytes for {}", reply.len(), packet.len());
    }
}

#[test]
fn classic_change_request_is_honoured_with_discovery_and_refused_without() {
    let client = addr("198.51.100.9:1234");
    let tuple = FiveTuple { client, server: addr(SERVER), transport: Transport::Udp };
    let classic = |flags: [u8; 4]| {
        let mut packet = Vec::new();
        let mut w =
            MessageWriter::with_header_tail(&mut packet, MessageType::new(Method::BINDING, Class::Request), [9; 16]);
        w.attr(AttrType::CHANGE_REQUEST, &flags);
        packet
    };
    let mut h = discovery_harness(true);
    let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &classic(change(true, true)));
    assert_eq!(outcome, ClientOutcome::RepliedFrom { source: addr(ALTERNATE), destination: client });
    let message = Message::parse_rfc3489(&reply).expect("classic response");
    assert_eq!(message.class(), Class::Success);
    let read = |typ| message.attribute(typ).map(|v| attr::read_address(v).expect("address"));
    assert_eq!(read(AttrType::SOURCE_ADDRESS), Some(addr(ALTERNATE)));
    assert_eq!(read(AttrType::CHANGED_ADDRESS), Some(addr(ALTERNATE)));

    let mut h = Harness::with_config(ServerConfig { rfc3489: true, ..ServerConfig::default() });
    let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &classic(change(false, true)));
    assert_eq!(outcome, ClientOutcome::Replied);
    let message = Message::parse_rfc3489(&reply).expect("classic response");
    assert_eq!(message.class(), Class::Error);
    let (outcome, _) = h.client_packet(&tuple, ClientHandle(0), &classic(change(false, false)));
    assert_eq!(outcome, ClientOutcome::Replied);
}

// ---------------------------------------------------------------------------
// RFC 6062: TCP allocations, Connect, ConnectionAttempt, ConnectionBind
// ---------------------------------------------------------------------------

fn tcp_transport(w: &mut MessageWriter<'_>) {
    w.attr(AttrType::REQUESTED_TRANSPORT, &TCP);
}

/// Alice on a TCP control connection with a TCP allocation.
fn tcp_alice(h: &mut Harness) -> (Client, AllocationId) {
    let mut alice = Client::new("198.51.100.1:40000", SERVER, Transport::Tcp, Some(("alice", USERS[0].1)));
    assert_success(&alice.request(h, Method::ALLOCATE, &tcp_transport));
    let id = h.server.table().find(&alice.tuple).expect("allocated");
    assert!(h.server.table().get(id).is_some_and(|a| a.tcp_relay));
    (alice, id)
}

/// Sends a signed Connect; returns the outcome and any immediate answer.
fn send_connect(h: &mut Harness, client: &Client, peer: SocketAddr) -> (TransactionId, ClientOutcome, Vec<u8>) {
    let tid = TransactionId::random();
    let packet = client.build(Method::CONNECT, tid, &|w| {
        w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer);
    });
    let (outcome, reply) = h.client_packet(&client.tuple, client.handle, &packet);
    (tid, outcome, reply)
}

/// The next late message for a client, checked as a response signed with `client`'s key.
#[track_caller]
fn control_response(h: &mut Harness, client: &Client, tid: TransactionId) -> Response {
    let message = h.server.poll_control().expect("a late answer");
    assert_eq!((message.client, message.tuple), (client.handle, client.tuple));
    let response = Response::new(message.bytes);
    let parsed = response.message();
    assert_eq!((parsed.method(), parsed.transaction_id()), (Method::CONNECT, tid));
    assert!(parsed.verify_integrity(&client.key().expect("signed")), "late answers are signed too");
    response
}

fn connection_id(value: &[u8]) -> ConnectionId {
    ConnectionId(attr::read_u32(value).expect("CONNECTION-ID is 4 bytes"))
}

#[test]
fn tcp_allocation_opens_a_tcp_relay_and_refuses_udp_only_attributes() {
    let mut h = Harness::authenticated();
    let (_, id) = tcp_alice(&mut h);
    assert_eq!(h.driver.tcp_relays, vec![RelayId::new(id, false)]);
    let attributes: [(&str, AttrFn<'_>); 4] = [
        ("DONT-FRAGMENT", &|w| {
            w.attr(AttrType::DONT_FRAGMENT, &[]);
        }),
        ("EVEN-PORT", &|w| {
            w.attr(AttrType::EVEN_PORT, &[0x80, 0, 0, 0]);
        }),
        ("RESERVATION-TOKEN", &|w| {
            w.attr(AttrType::RESERVATION_TOKEN, &[1; 8]);
        }),
        ("ADDITIONAL-ADDRESS-FAMILY", &|w| {
            w.attr(AttrType::ADDITIONAL_ADDRESS_FAMILY, &[2, 0, 0, 0]);
        }),
    ];
    for (port, (name, extra)) in attributes.iter().enumerate() {
        let client = format!("198.51.100.2:{}", 41000 + port);
        let mut bob = Client::new(&client, SERVER, Transport::Tcp, Some(("bob", USERS[1].1)));
        let response = bob.request(&mut h, Method::ALLOCATE, &|w| {
            tcp_transport(w);
            extra(w);
        });
        assert_eq!(response.code(), Some(400), "{name} with TCP");
    }
    assert_eq!(h.server.table().len(), 1);
}

#[test]
fn connect_is_answered_when_the_peer_answers_and_the_id_binds_once() {
    let mut h = Harness::authenticated();
    let (alice, id) = tcp_alice(&mut h);
    let peer = addr(PEER);
    let (tid, outcome, reply) = send_connect(&mut h, &alice, peer);
    assert_eq!((outcome, reply.len()), (ClientOutcome::Dropped, 0), "answered later");
    let (relay, connection, to) = h.driver.connects[0];
    assert_eq!((relay, to), (RelayId::new(id, false), peer));
    assert!(h.server.poll_control().is_none(), "nothing until the peer answers");
    h.server.handle_peer_connected(h.now, connection, true);
    let response = control_response(&mut h, &alice, tid);
    assert_success(&response);
    assert_eq!(connection_id(response.attr(AttrType::CONNECTION_ID).expect("CONNECTION-ID")), connection);
    // A second Connect to the same peer: 446.
    let (_, _, reply) = send_connect(&mut h, &alice, peer);
    assert_error(&Response::new(reply), 446);
    // ConnectionBind on a new connection of the same user.
    let mut data = alice.on(FiveTuple { client: addr("198.51.100.1:40001"), ..alice.tuple });
    let bind = |w: &mut MessageWriter<'_>| {
        w.attr_u32(AttrType::CONNECTION_ID, connection.0);
    };
    let packet_tid = TransactionId::random();
    let _ = data.exchange(&mut h, &data.build(Method::CONNECTION_BIND, packet_tid, &bind));
    let packet = data.build(Method::CONNECTION_BIND, TransactionId::random(), &bind);
    let (outcome, reply) = h.client_packet(&data.tuple, data.handle, &packet);
    assert_eq!(outcome, ClientOutcome::ConnectionBound { id: connection });
    assert_success(&Response::new(reply));
    // Bound once: another bind of the same id is 400.
    let mut other = alice.on(FiveTuple { client: addr("198.51.100.1:40002"), ..alice.tuple });
    assert_error(&other.request(&mut h, Method::CONNECTION_BIND, &bind), 400);
    assert_eq!(h.stats().tcp_peer_connections, 1);
}

#[test]
fn connect_failures_are_447_at_once_or_later_and_after_30_seconds() {
    let mut h = Harness::authenticated();
    let (alice, _) = tcp_alice(&mut h);
    // Refused by the kernel.
    let (tid, _, _) = send_connect(&mut h, &alice, addr(PEER));
    let (_, connection, _) = h.driver.connects[0];
    h.server.handle_peer_connected(h.now, connection, false);
    assert_error(&control_response(&mut h, &alice, tid), 447);
    // Failing before it starts.
    h.driver.connect_fails = true;
    let (_, _, reply) = send_connect(&mut h, &alice, addr(PEER));
    assert_error(&Response::new(reply), 447);
    h.driver.connect_fails = false;
    // Never answered: 447 after 30 seconds, not before, and the socket is closed.
    let (tid, _, _) = send_connect(&mut h, &alice, addr(PEER_B));
    let (_, slow, _) = h.driver.connects[1];
    h.advance(secs(29));
    h.timeout();
    assert!(h.server.poll_control().is_none());
    h.advance(SECOND);
    h.timeout();
    assert_error(&control_response(&mut h, &alice, tid), 447);
    assert_eq!(h.driver.closed_peers, vec![slow]);
    assert!(h.server.tcp_connections().is_empty());
    assert_eq!(h.stats().tcp_peer_failures, 3);
}

#[test]
fn connect_is_subject_to_the_peer_policy_and_the_connection_limit() {
    let mut h = Harness::new(TurnConfig { max_tcp_peer_connections: 1, ..turn_config() });
    let (alice, _) = tcp_alice(&mut h);
    for forbidden in FORBIDDEN_PEERS {
        let (_, _, reply) = send_connect(&mut h, &alice, addr(forbidden));
        assert_error(&Response::new(reply), 403);
    }
    assert!(h.driver.connects.is_empty(), "no connection to a forbidden peer is even started");
    let (_, outcome, _) = send_connect(&mut h, &alice, addr(PEER));
    assert_eq!(outcome, ClientOutcome::Dropped);
    let (_, _, reply) = send_connect(&mut h, &alice, addr(PEER_B));
    assert_error(&Response::new(reply), 508);
}

#[test]
fn connect_and_channel_bind_on_the_wrong_kind_of_allocation_are_400() {
    let mut h = Harness::authenticated();
    let mut udp = Client::new("198.51.100.3:40000", SERVER, Transport::Tcp, Some(("bob", USERS[1].1)));
    udp.allocated(&mut h);
    let (_, _, reply) = send_connect(&mut h, &udp, addr(PEER));
    assert_error(&Response::new(reply), 400);
    let (mut alice, _) = tcp_alice(&mut h);
    assert_error(&alice.bind(&mut h, 0x4000, addr(PEER)), 400);
    // Without an allocation: 437.
    let mut carol = Client::new("198.51.100.4:40000", SERVER, Transport::Tcp, Some(("alice", USERS[0].1)));
    let response = carol.request(&mut h, Method::CONNECT, &|w| {
        w.xor_address(AttrType::XOR_PEER_ADDRESS, &addr(PEER));
    });
    assert_error(&response, 437);
}

#[test]
fn inbound_peers_need_a_permission_and_get_a_connection_attempt() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = tcp_alice(&mut h);
    let relay = RelayId::new(id, false);
    let peer = addr(PEER);
    assert_eq!(h.server.handle_peer_accepted(h.now, relay, peer), None, "no permission yet");
    assert!(h.server.poll_control().is_none(), "no indication for a refused peer");
    assert_success(&alice.permit(&mut h, &[peer]));
    let connection = h.server.handle_peer_accepted(h.now, relay, peer).expect("permitted");
    let message = h.server.poll_control().expect("ConnectionAttempt");
    let parsed = Message::parse(&message.bytes).expect("well-formed");
    assert_eq!(parsed.message_type(), MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication));
    let tid = parsed.transaction_id();
    let value = parsed.attribute(AttrType::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS");
    assert_eq!(attr::read_xor_address(value, &tid).expect("address"), peer);
    assert_eq!(connection_id(parsed.attribute(AttrType::CONNECTION_ID).expect("CONNECTION-ID")), connection);
    assert_eq!((h.stats().tcp_peer_refused, h.stats().tcp_peer_connections), (1, 1));
    // Unbound for 30 seconds: closed, and the id is gone (400).
    h.advance(secs(30));
    h.timeout();
    assert_eq!(h.driver.closed_peers, vec![connection]);
    assert_success(&alice.refresh(&mut h, None));
    let mut data = alice.on(FiveTuple { client: addr("198.51.100.1:40001"), ..alice.tuple });
    let response = data.request(&mut h, Method::CONNECTION_BIND, &|w| {
        w.attr_u32(AttrType::CONNECTION_ID, connection.0);
    });
    assert_error(&response, 400);
}

#[test]
fn connection_bind_checks_the_connection_and_the_user() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = tcp_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    let connection = h.server.handle_peer_accepted(h.now, RelayId::new(id, false), addr(PEER)).expect("permitted");
    let bind = |w: &mut MessageWriter<'_>| {
        w.attr_u32(AttrType::CONNECTION_ID, connection.0);
    };
    // On the control connection itself.
    assert_error(&alice.request(&mut h, Method::CONNECTION_BIND, &bind), 400);
    // Over UDP.
    let mut udp = Client::alice("198.51.100.1:40005");
    assert_error(&udp.request(&mut h, Method::CONNECTION_BIND, &bind), 400);
    // Without CONNECTION-ID, or an unknown one.
    let mut data = alice.on(FiveTuple { client: addr("198.51.100.1:40001"), ..alice.tuple });
    assert_error(&data.request(&mut h, Method::CONNECTION_BIND, &no_attributes), 400);
    let unknown = |w: &mut MessageWriter<'_>| {
        w.attr_u32(AttrType::CONNECTION_ID, connection.0.wrapping_add(1));
    };
    assert_error(&data.request(&mut h, Method::CONNECTION_BIND, &unknown), 400);
    // Another user: 441.
    let mut bob = Client::new("198.51.100.2:40001", SERVER, Transport::Tcp, Some(("bob", USERS[1].1)));
    assert_error(&bob.request(&mut h, Method::CONNECTION_BIND, &bind), 441);
    // Alice, on a new connection: bound.
    assert_success(&data.request(&mut h, Method::CONNECTION_BIND, &bind));
    // The pair ends: the core forgets it.
    h.server.handle_tcp_relay_closed(connection);
    assert!(h.server.tcp_connections().is_empty());
}

#[test]
fn deleting_a_tcp_allocation_closes_its_connections() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = tcp_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    let inbound = h.server.handle_peer_accepted(h.now, RelayId::new(id, false), addr(PEER)).expect("permitted");
    let _ = send_connect(&mut h, &alice, addr(PEER_B));
    let (_, outbound, _) = h.driver.connects[0];
    h.connection_closed(&alice.tuple);
    let mut closed = h.driver.closed_peers.clone();
    closed.sort();
    let mut expected = vec![inbound, outbound];
    expected.sort();
    assert_eq!(closed, expected);
    assert!(h.server.tcp_connections().is_empty());
    // A late report about a forgotten connection is ignored.
    h.server.handle_peer_connected(h.now, outbound, true);
    assert!(h.server.poll_control().is_none());
    // And the peer gets no Send or ChannelData path either way.
    assert!(h.driver.tcp_relays.len() == 1 && h.driver.close_calls == vec![RelayId::new(id, false)]);
}

#[test]
fn tcp_allocation_and_connection_bind_work_over_tls() {
    let mut h = Harness::authenticated();
    let mut alice = Client::new("198.51.100.1:40000", SERVER, Transport::Tls, Some(("alice", USERS[0].1)));
    assert_success(&alice.request(&mut h, Method::ALLOCATE, &tcp_transport));
    assert_eq!(h.driver.tcp_relays.len(), 1, "a TCP relay over a TLS control connection");
    let id = h.server.table().find(&alice.tuple).expect("allocated");
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    let connection = h.server.handle_peer_accepted(h.now, RelayId::new(id, false), addr(PEER)).expect("permitted");
    // The data connection over TLS as well.
    let mut data = alice.on(FiveTuple { client: addr("198.51.100.1:40001"), ..alice.tuple });
    let bind = |w: &mut MessageWriter<'_>| {
        w.attr_u32(AttrType::CONNECTION_ID, connection.0);
    };
    assert_success(&data.request(&mut h, Method::CONNECTION_BIND, &bind));
}

#[test]
fn tcp_pairs_share_their_allocations_bandwidth_budget() {
    let mut h = Harness::new(TurnConfig { max_bps: 1000, ..turn_config() });
    let (mut alice, id) = tcp_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
    let relay = RelayId::new(id, false);
    let first = h.server.handle_peer_accepted(h.now, relay, addr(PEER)).expect("permitted");
    let second = h.server.handle_peer_accepted(h.now, relay, addr(PEER_B)).expect("permitted");
    assert_eq!(h.server.tcp_relay_allowance(h.now, first), [1000, 1000]);
    h.server.record_tcp_relay_traffic(first, 600, 100);
    h.server.record_tcp_relay_traffic(second, 300, 0);
    assert_eq!(h.server.tcp_relay_allowance(h.now, second), [100, 900], "one budget per allocation and direction");
    h.advance(Duration::from_millis(500));
    assert_eq!(h.server.tcp_relay_allowance(h.now, first), [600, 1000], "refilled at max_bps, up to a second's worth");
    // Without max_bps, and for an unknown pair, there is no limit.
    let mut open = Harness::authenticated();
    let (mut bob, id) = tcp_alice(&mut open);
    assert_success(&bob.permit(&mut open, &[addr(PEER)]));
    let pair = open.server.handle_peer_accepted(open.now, RelayId::new(id, false), addr(PEER)).expect("permitted");
    assert_eq!(open.server.tcp_relay_allowance(open.now, pair), [usize::MAX; 2]);
    assert_eq!(h.server.tcp_relay_allowance(h.now, ConnectionId(u32::MAX)), [usize::MAX; 2]);
}
