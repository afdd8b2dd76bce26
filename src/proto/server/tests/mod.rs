//! Tests of the TURN core through `Server`'s inputs and outputs, with a fake
//! clock, the fake sockets of [`crate::testing::Sockets`] answering the
//! core's events, and the real shared accounts, so nothing here sleeps or
//! opens a socket. This module holds the harness, the clients and the
//! checks every test shares; each submodule tests one part of the server,
//! named as the server's own files are.
//!
//! Clients do the long-term credential dance as a real one would (RFC 8489
//! §9.2): an unsigned first request, a 401 that carries REALM and NONCE, then
//! signed requests. Every response is parsed and its class, method,
//! transaction ID and ERROR-CODE checked, and every response to a signed
//! request must carry a MESSAGE-INTEGRITY made with the same key, except the
//! 401 and 438 answers, which cannot be signed (RFC 8489 §9.2.4). A request
//! the core answers later (an Allocate waiting for its relay socket, a
//! Connect for its peer) is read from the messages it writes for later, so
//! a test reads one response either way.
//!
//! After every input the harness lets the sockets answer every event, then
//! checks that the table is consistent, that the sockets have exactly the
//! live allocations' relays open, and that the quota counts are exactly the
//! table's allocations, so a leak anywhere fails the step that caused it.

mod admin;
mod allocate;
mod auth;
mod binding;
mod channel;
mod data;
mod expiry;
mod lookup;
mod model;
mod notices;
mod permission;
mod policy;
mod quota;
mod refresh;
mod reload;
mod tcp_relay;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{
    ClientOutcome, Event, ExternalIp, IcmpReport, PEER_HEADROOM, PEER_TAILROOM, PeerOutcome, Server, ServerConfig,
    Stats, Transmit, TurnConfig,
};
use crate::io::shared::SharedAccounts;
use crate::proto::allocation::{Allocation, AllocationId, ClientHandle, RelayId};
use crate::proto::auth::{
    Authenticator, MD5_ONLY, NONCE_COOKIE, OFFERED_ALGORITHMS, PasswordAlgorithm, StaticCredentials, UserKeys,
    rest_password, userhash,
};
use crate::proto::channel_data;
use crate::proto::resources::{Accounts, QuotaLimits};
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::integrity::{long_term_key_md5, long_term_key_sha256};
use crate::proto::stun::{Class, Message, MessageType, MessageWriter, Method, TransactionId};
use crate::proto::tcp_relay::ConnectionId;
use crate::proto::{FiveTuple, Now, Transport};
use crate::testing::{self, Sockets};

const REALM: &str = "example.org";
const USERS: &[(&str, &str)] = &[("alice", "alice-password"), ("bob", "bob-password")];
const REST_SECRET_NEW: &[u8] = b"rest-secret-new";
const REST_SECRET_OLD: &[u8] = b"rest-secret-old";
const NONCE_LIFETIME: u64 = 600;
/// Wall-clock start of every test (2027-01-15).
const UNIX_START: u64 = 1_800_000_000;
/// The server's randomness, fixed so every run of a test is the same run.
const SEED: [u8; 32] = [0x7E; 32];
/// The accounts' randomness (port order, reservation tokens) when a test
/// gives them another port range.
const ACCOUNTS_SEED: [u8; 32] = [0x3C; 32];
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

const SECOND: Duration = Duration::from_secs(1);

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address literal")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
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

/// A message the server wrote for later, as the sockets took it.
type Sent = (Transmit, Vec<u8>);

/// The server under test, the sockets that answer its events, the accounts
/// it counts against, and a clock that moves only when told.
struct Harness {
    server: Server,
    sockets: Sockets,
    accounts: SharedAccounts,
    now: Now,
    start: Instant,
    /// Messages written for later that no test has read yet, oldest first.
    sent: VecDeque<Sent>,
}

impl Harness {
    fn new(turn: TurnConfig) -> Self {
        Self::with_config(ServerConfig { turn: Some(turn), ..ServerConfig::default() })
    }

    fn with_config(config: ServerConfig) -> Self {
        let start = crate::io::clock::now();
        let accounts = testing::accounts(PORTS, QuotaLimits::default());
        let server = Server::new(config, Box::new(accounts.clone()), SEED);
        Self {
            server,
            sockets: Sockets::default(),
            accounts,
            now: Now { instant: start, unix: UNIX_START },
            start,
            sent: VecDeque::new(),
        }
    }

    fn authenticated() -> Self {
        Self::new(turn_config())
    }

    /// Whether the server looks users up in a store.
    fn looks_up_users(&self) -> bool {
        let auth = self.server.config.turn.as_ref().and_then(|turn| turn.auth.as_ref());
        auth.is_some_and(Authenticator::looks_up_users)
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

    /// Changes the quota limits for what is counted from now on.
    fn set_limits(&mut self, change: impl FnOnce(&mut QuotaLimits)) {
        let mut accounts = self.accounts.lock();
        let mut limits = accounts.limits();
        change(&mut limits);
        accounts.set_limits(limits);
    }

    /// Another relay port range on every relay IP; before the first
    /// allocation, since the accounts start over.
    fn set_ports(&mut self, ports: (u16, u16)) {
        let mut accounts = self.accounts.lock();
        assert_eq!(accounts.allocations(), 0, "the port range changes before the first allocation");
        *accounts = Accounts::new(ports, accounts.limits(), ACCOUNTS_SEED);
    }

    /// Allocations counted under `user`.
    fn quota(&self, user: &str) -> u32 {
        self.accounts.lock().allocations_of(user)
    }

    /// Allocations counted in all.
    fn total(&self) -> u32 {
        self.accounts.lock().allocations()
    }

    /// Allocations counted, by quota key.
    fn per_user(&self) -> BTreeMap<String, u32> {
        self.accounts.lock().per_user().map(|(key, count)| (key.to_owned(), count)).collect()
    }

    fn free_ports(&self, ip: IpAddr) -> usize {
        self.accounts.lock().free_ports(ip)
    }

    /// Lets the sockets answer what the last input asked of them, checks
    /// the invariants, and returns the messages written for later.
    fn settle(&mut self) -> Vec<Sent> {
        let sent = self.sockets.drive(&mut self.server, self.now);
        self.check_invariants();
        sent
    }

    /// [`Self::settle`], keeping the messages for the test to read.
    fn settle_and_keep(&mut self) {
        let sent = self.settle();
        self.sent.extend(sent);
    }

    /// One packet from a client, and the answer to it: the reply buffer, or
    /// for a request answered later in this same step (an Allocate once its
    /// relay opened, a Connect that failed at once) the message written
    /// for this client. Other messages are kept for [`Self::take_sent`].
    fn client_packet(&mut self, tuple: &FiveTuple, client: ClientHandle, packet: &[u8]) -> (ClientOutcome, Vec<u8>) {
        let mut reply = Vec::new();
        let outcome = self.server.handle_client(self.now, tuple, client, packet, &mut reply);
        let sent = self.settle();
        if outcome != ClientOutcome::Deferred {
            self.sent.extend(sent);
            return (outcome, reply);
        }
        assert!(reply.is_empty(), "a deferred request has nothing in the reply buffer");
        let (mut answers, others): (Vec<Sent>, Vec<Sent>) =
            sent.into_iter().partition(|(transmit, _)| transmit.tuple == *tuple);
        self.sent.extend(others);
        assert!(answers.len() <= 1, "one answer to one request: {answers:?}");
        if let Some((transmit, bytes)) = answers.pop() {
            assert_eq!(transmit.client, client, "answered through the handle the request came with");
            reply = bytes;
        }
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
        self.settle_and_keep();
        (outcome, slot)
    }

    /// An ICMP error about a datagram of `relay`, and the Data indication it
    /// became, if any.
    fn icmp(&mut self, relay: RelayId, report: &IcmpReport) -> Option<Sent> {
        self.server.handle_icmp(self.now, relay, report);
        let mut sent = self.settle();
        assert!(sent.len() <= 1, "one ICMP error, one indication at most: {sent:?}");
        sent.pop()
    }

    /// A peer connected to the TCP relay `relay`; the sockets keep the
    /// connection if the core welcomes it.
    fn peer_accepted(&mut self, relay: RelayId, peer: SocketAddr) -> Option<ConnectionId> {
        let accepted = self.server.handle_peer_accepted(self.now, relay, peer);
        if let Some(id) = accepted {
            self.sockets.hold(id);
        }
        self.settle_and_keep();
        accepted
    }

    /// The sockets' report on a connection a Connect started; one that
    /// failed is closed, as the driver closes it.
    fn peer_connected(&mut self, id: ConnectionId, established: bool) {
        self.sockets.connecting.retain(|connecting| *connecting != id);
        if !established {
            self.sockets.release(id);
        }
        self.server.handle_peer_connected(self.now, id, established);
        self.settle_and_keep();
    }

    /// A peer data connection ended; the sockets closed both of its sides.
    fn tcp_relay_closed(&mut self, id: ConnectionId) {
        self.sockets.release(id);
        self.server.handle_tcp_relay_closed(id);
        self.settle_and_keep();
    }

    fn timeout(&mut self) {
        self.server.handle_timeout(self.now);
        self.settle_and_keep();
    }

    fn connection_opened(&mut self, tuple: &FiveTuple) -> bool {
        let admitted = self.server.handle_connection_opened(tuple);
        self.settle_and_keep();
        admitted
    }

    fn connection_closed(&mut self, tuple: &FiveTuple) {
        self.server.handle_connection_closed(tuple);
        self.settle_and_keep();
    }

    fn close_all(&mut self) {
        self.server.close_all();
        self.settle_and_keep();
    }

    /// The oldest message written for later that the test has not read.
    fn take_sent(&mut self) -> Option<Sent> {
        self.sent.pop_front()
    }

    /// The events observers saw since the last call, in order.
    fn take_observed(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.sockets.observed)
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

    /// What must hold after every input once the sockets have answered:
    /// the table agrees with its index and holds no allocation still
    /// opening, the sockets have exactly the live allocations' relays open
    /// (same ids, same addresses), and the quotas count exactly the table's
    /// allocations.
    fn check_invariants(&self) {
        let table = self.server.table();
        assert!(table.is_consistent(), "allocation table and its index disagree");
        assert!(table.iter().all(|(_, a)| a.is_live()), "an allocation still opening, though every open was answered");
        self.sockets.check(&self.server);
        let mut per_user = BTreeMap::new();
        for (_, allocation) in table.iter() {
            *per_user.entry(allocation.quota_key.to_string()).or_insert(0u32) += 1;
        }
        assert_eq!(per_user, self.per_user(), "quota counts differ from the table's allocations");
        assert_eq!(self.total() as usize, table.len(), "total quota differs from the table");
    }
}

// ---------------------------------------------------------------------------
// Clients and their checks
// ---------------------------------------------------------------------------

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

/// A request was answered: in the reply buffer, or (deferred) by the
/// message [`Harness::client_packet`] found written for the client.
#[track_caller]
fn assert_answered(outcome: &ClientOutcome, reply: &[u8]) {
    let answered = match outcome {
        ClientOutcome::Replied | ClientOutcome::ConnectionBound { .. } => true,
        ClientOutcome::Deferred => !reply.is_empty(),
        _ => false,
    };
    assert!(answered, "a request is answered: {outcome:?}");
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
        assert_answered(&outcome, &reply);
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
            if h.looks_up_users() {
                assert_eq!(algorithms, MD5_ONLY, "stored users have MD5 keys only");
            } else {
                assert_eq!(algorithms, OFFERED_ALGORITHMS, "SHA-256, then MD5");
            }
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

/// An allocated client and its allocation id.
fn allocated_alice(h: &mut Harness) -> (Client, AllocationId) {
    let mut alice = Client::alice("198.51.100.1:40000");
    alice.allocated(h);
    let id = alice.id(h);
    (alice, id)
}
