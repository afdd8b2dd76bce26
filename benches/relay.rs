//! Micro-benchmarks of the per-packet relay path of the sans-IO core alone
//! (`tern::proto::server::Server`, no sockets), over tables of 10 000 and
//! 100 000 allocations:
//!
//! - client → peer: `handle_client` on a ChannelData frame from a random
//!   allocation's 5-tuple (demux, parse, 5-tuple lookup, channel lookup),
//!   ending in `ClientOutcome::Forward`;
//! - peer → client: `handle_peer` for a peer with a channel (ChannelData
//!   header written in front of the payload) and for a peer with only a
//!   permission (Data indication written around it).
//!
//! The allocations are made with real STUN requests through `handle_client`
//! (anonymous Allocate, then ChannelBind), answered by the fake sockets of
//! [`tern::testing`], which open relays without sockets, and counted in real
//! accounts. Allocations are visited in a fixed pseudo-random order so the
//! table is not walked in cache order.
//!
//! Run with `cargo bench --bench relay` (add `-- --quick` for a fast pass).

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use tern::io::clock;
use tern::proto::allocation::{ClientHandle, RelayId};
use tern::proto::channel_data::{self, ChannelNumber};
use tern::proto::policy::PeerPolicy;
use tern::proto::resources::QuotaLimits;
use tern::proto::server::{ClientOutcome, PEER_HEADROOM, PEER_TAILROOM, Server, ServerConfig, TurnConfig};
use tern::proto::stun::attr::AttrType;
use tern::proto::stun::{Class, Message, MessageType, MessageWriter, Method, TransactionId};
use tern::proto::{FiveTuple, Now, Transport};
use tern::testing::{self, Sockets};

const TABLE_SIZES: [usize; 2] = [10_000, 100_000];
/// Payload bytes per packet, as in the S2 and S3 load scenarios.
const PAYLOAD: usize = 100;
/// Where clients send; with no relay IPs configured, also the relay IP.
const SERVER: &str = "192.0.2.10:3478";
/// The peer every allocation binds its channel to.
const PEER: &str = "198.51.100.1:5000";
/// Same IP, so the permission covers it, but no channel: Data indications.
const PEER_NO_CHANNEL: &str = "198.51.100.1:5001";
const CHANNEL: u16 = 0x4000;
const CLIENT: ClientHandle = ClientHandle(0);
/// Length of the visiting order (a power of two).
const ORDER_LEN: usize = 1 << 16;

/// Relay ports per relay IP: 60 000, over as many IPs as the largest table
/// needs.
const RELAY_PORTS: (u16, u16) = (1024, 61_023);
const PORTS_PER_IP: usize = 60_000;

/// A server holding `n` allocations, each with a channel to [`PEER`].
struct Fixture {
    server: Server,
    now: Now,
    tuples: Vec<FiveTuple>,
    ids: Vec<RelayId>,
    /// Indices into `tuples` and `ids`, in the order they are visited.
    order: Vec<u32>,
}

impl Fixture {
    fn new(n: usize) -> Self {
        let all = vec!["0.0.0.0/0".parse().expect("CIDR"), "::/0".parse().expect("CIDR")];
        // Relay IPs 10.64.0.0, 10.64.0.1, ...: the allocations take turns.
        let relay_ips = (0..n.div_ceil(PORTS_PER_IP) as u32)
            .map(|block| IpAddr::V4(Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + block)))
            .collect();
        let turn =
            TurnConfig { auth: None, relay_ips, policy: PeerPolicy::new(all, vec![], vec![]), ..TurnConfig::default() };
        let accounts = testing::accounts(RELAY_PORTS, QuotaLimits::default());
        let config = ServerConfig { turn: Some(turn), ..ServerConfig::default() };
        let mut sockets = Sockets::default();
        let mut fixture = Self {
            server: Server::new(config, Box::new(accounts), [0x42; 32]),
            now: clock::reading(),
            tuples: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            order: pseudo_random_order(n),
        };
        let peer = addr(PEER);
        for index in 0..n {
            let client = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + index as u32)), 40_000);
            let tuple = FiveTuple { client, server: addr(SERVER), transport: Transport::Udp };
            fixture.request(&mut sockets, &tuple, Method::ALLOCATE, index, |w| {
                w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
            });
            fixture.request(&mut sockets, &tuple, Method::CHANNEL_BIND, index, |w| {
                w.attr(AttrType::CHANNEL_NUMBER, &[(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0]);
                w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer);
            });
            fixture.ids.push(RelayId::new(fixture.server.table().find(&tuple).expect("allocated"), false));
            fixture.tuples.push(tuple);
            // Only the answers matter here, not what observers would see.
            sockets.observed.clear();
        }
        assert_eq!(fixture.server.table().len(), n);
        sockets.check(&fixture.server);
        fixture
    }

    /// Sends one request from `tuple`, lets the sockets answer what the
    /// core asks of them, and checks that the request succeeded.
    fn request(
        &mut self,
        sockets: &mut Sockets,
        tuple: &FiveTuple,
        method: Method,
        index: usize,
        attrs: impl FnOnce(&mut MessageWriter<'_>),
    ) {
        let mut tid = [0u8; 12];
        tid[..8].copy_from_slice(&(index as u64).to_be_bytes());
        tid[8] = method.0 as u8;
        let mut request = Vec::new();
        let mut w = MessageWriter::new(&mut request, MessageType::new(method, Class::Request), TransactionId(tid));
        attrs(&mut w);
        w.finish();
        let mut reply = Vec::new();
        let outcome = self.server.handle_client(self.now, tuple, CLIENT, &request, &mut reply);
        let transmits = sockets.drive(&mut self.server, self.now);
        // An Allocate is answered once its relay is open, the rest at once.
        let reply = match (outcome, transmits.as_slice()) {
            (ClientOutcome::Replied, []) => reply,
            (ClientOutcome::Deferred, [(transmit, answer)]) if transmit.tuple == *tuple => answer.clone(),
            (outcome, transmits) => {
                panic!("{} for allocation {index}: {outcome:?}, {} later messages", method.name(), transmits.len())
            }
        };
        let response = Message::parse(&reply).expect("a STUN response");
        assert_eq!(response.class(), Class::Success, "{} for allocation {index} failed", method.name());
    }
}

/// `n`-bounded indices from a fixed xorshift sequence, so every run visits
/// the same allocations in the same order.
fn pseudo_random_order(n: usize) -> Vec<u32> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..ORDER_LEN)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as u32
        })
        .collect()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("address literal")
}

fn channel_data_frame() -> Vec<u8> {
    let mut frame = vec![0xAB; channel_data::HEADER_LEN + PAYLOAD];
    let channel = ChannelNumber::new(CHANNEL).expect("in range");
    let header: &mut [u8; channel_data::HEADER_LEN] =
        (&mut frame[..channel_data::HEADER_LEN]).try_into().expect("header length");
    channel_data::write_header(header, channel, PAYLOAD as u16);
    frame
}

fn client_to_peer(c: &mut Criterion, fixtures: &mut [Fixture]) {
    let frame = channel_data_frame();
    let mut group = c.benchmark_group("client to peer: ChannelData");
    group.throughput(Throughput::Elements(1));
    for fixture in fixtures {
        let Fixture { server, now, tuples, order, .. } = fixture;
        let mut reply = Vec::new();
        let outcome = server.handle_client(*now, &tuples[0], CLIENT, &frame, &mut reply);
        assert!(matches!(outcome, ClientOutcome::Forward { peer, .. } if peer == addr(PEER)), "{outcome:?}");
        group.bench_function(BenchmarkId::from_parameter(format!("{} allocations", tuples.len())), |b| {
            let mut next = 0;
            b.iter(|| {
                let tuple = &tuples[order[next & (ORDER_LEN - 1)] as usize];
                next += 1;
                black_box(server.handle_client(*now, tuple, CLIENT, black_box(&frame), &mut reply))
            })
        });
    }
    group.finish();
}

fn peer_to_client(c: &mut Criterion, fixtures: &mut [Fixture], name: &str, peer: SocketAddr) {
    let mut slot = vec![0xAB; PEER_HEADROOM + PAYLOAD + PEER_TAILROOM];
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    for fixture in fixtures {
        let Fixture { server, now, ids, order, .. } = fixture;
        let out = server.handle_peer(*now, ids[0], peer, &mut slot, PEER_HEADROOM, PAYLOAD).expect("relayed");
        let frame = &slot[out.frame.0..out.frame.1];
        if peer == addr(PEER) {
            assert_eq!(frame[..2], CHANNEL.to_be_bytes(), "a ChannelData frame");
        } else {
            assert_eq!(Message::parse(frame).expect("a STUN message").method(), Method::DATA, "a Data indication");
        }
        group.bench_function(BenchmarkId::from_parameter(format!("{} allocations", ids.len())), |b| {
            let mut next = 0;
            b.iter(|| {
                let id = ids[order[next & (ORDER_LEN - 1)] as usize];
                next += 1;
                black_box(server.handle_peer(*now, id, black_box(peer), &mut slot, PEER_HEADROOM, PAYLOAD))
            })
        });
    }
    group.finish();
}

fn relay(c: &mut Criterion) {
    let mut fixtures: Vec<Fixture> = TABLE_SIZES.iter().map(|&n| Fixture::new(n)).collect();
    client_to_peer(c, &mut fixtures);
    peer_to_client(c, &mut fixtures, "peer to client: ChannelData", addr(PEER));
    peer_to_client(c, &mut fixtures, "peer to client: Data indication", addr(PEER_NO_CHANNEL));
}

criterion_group!(benches, relay);
criterion_main!(benches);
