//! The server as a whole: a model-based property (random Allocates,
//! Refreshes, permissions, channels, time steps, timeouts and closed
//! connections, under random quotas and port ranges; the table, the open
//! relays and the quotas must follow a model of allocations and expiry
//! after every step), and replay (the same seed and the same inputs give
//! the same bytes out).

use proptest::prelude::*;

use super::*;

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
    h.set_limits(|l| {
        l.per_user = limits.user_quota;
        l.total = limits.total_quota;
    });
    h.set_ports((PORTS.0, PORTS.0 + limits.ports - 1));
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
        assert_eq!(h.sockets.open.len(), model.allocations.len(), "open relays after {op:?}");
        assert_eq!(h.per_user(), model.per_user(), "quotas after {op:?}");
        assert_eq!(h.total() as usize, model.allocations.len(), "total quota after {op:?}");
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
// Replay: the same seed and the same inputs, the same bytes out
// ---------------------------------------------------------------------------

/// Two servers with the same seeds, fed the same inputs at the same times;
/// every output of the second must be the first's.
struct Twins {
    first: Harness,
    second: Harness,
}

impl Twins {
    /// One request, built once, to both: the same answer, which `client`
    /// checks and learns from as in any exchange.
    #[track_caller]
    fn exchange(&mut self, client: &mut Client, method: Method, attributes: AttrFn<'_>) -> Response {
        let packet = client.build(method, TransactionId::random(), attributes);
        let (_, reply) = self.second.client_packet(&client.tuple, client.handle, &packet);
        let response = client.exchange(&mut self.first, &packet);
        assert_eq!(reply, response.0, "the same answer");
        response
    }

    /// A packet, built once, to both: the same outcome and reply.
    #[track_caller]
    fn send(&mut self, client: &Client, packet: &[u8]) -> (ClientOutcome, Vec<u8>) {
        let answer = self.first.client_packet(&client.tuple, client.handle, packet);
        assert_eq!(self.second.client_packet(&client.tuple, client.handle, packet), answer);
        answer
    }

    #[track_caller]
    fn peer_packet(&mut self, id: AllocationId, peer: SocketAddr, payload: &[u8]) -> Option<PeerOutcome> {
        let delivered = self.first.peer_packet(id, peer, payload);
        assert_eq!(self.second.peer_packet(id, peer, payload), delivered, "the same frame");
        delivered.0
    }

    #[track_caller]
    fn peer_accepted(&mut self, relay: RelayId, peer: SocketAddr) -> Option<ConnectionId> {
        let accepted = self.first.peer_accepted(relay, peer);
        assert_eq!(self.second.peer_accepted(relay, peer), accepted, "the same CONNECTION-ID");
        accepted
    }

    fn peer_connected(&mut self, id: ConnectionId, established: bool) {
        self.first.peer_connected(id, established);
        self.second.peer_connected(id, established);
    }

    fn advance(&mut self, by: Duration) {
        self.first.advance(by);
        self.second.advance(by);
    }

    fn timeout(&mut self) {
        self.first.timeout();
        self.second.timeout();
    }

    /// Everything else that left the two servers is the same too.
    #[track_caller]
    fn check(&self) {
        let (first, second) = (&self.first, &self.second);
        assert_eq!(first.sent, second.sent, "messages written for later");
        // Each harness has a clock of its own: an instant is compared as
        // the time since its harness started.
        let on_one_clock = |h: &Harness| -> Vec<Event> {
            let mut events = h.sockets.observed.clone();
            for event in &mut events {
                if let Event::AllocationDeleted { created, .. } = event {
                    *created = second.start + created.duration_since(h.start);
                }
            }
            events
        };
        assert_eq!(on_one_clock(first), on_one_clock(second), "events");
        assert_eq!(first.sockets.open_calls, second.sockets.open_calls, "relays opened");
        assert_eq!(first.sockets.connects, second.sockets.connects, "peers connected");
        assert_eq!(first.sockets.closed_peers, second.sockets.closed_peers, "peer connections closed");
        assert_eq!(first.stats(), second.stats(), "counters");
    }
}

#[test]
fn the_same_seed_and_the_same_inputs_give_the_same_bytes() {
    let mut twins = Twins { first: Harness::authenticated(), second: Harness::authenticated() };
    // Relay ports and a reservation token come from the accounts' seed.
    let mut alice = Client::alice("198.51.100.1:40000");
    let even_port = |w: &mut MessageWriter<'_>| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::EVEN_PORT, &[0x80]);
    };
    assert_error(&twins.exchange(&mut alice, Method::ALLOCATE, &even_port), 401);
    let response = twins.exchange(&mut alice, Method::ALLOCATE, &even_port);
    assert_success(&response);
    assert!(response.attr(AttrType::RESERVATION_TOKEN).is_some());
    let permit = |peer: SocketAddr| {
        move |w: &mut MessageWriter<'_>| {
            w.xor_address(AttrType::XOR_PEER_ADDRESS, &peer);
        }
    };
    assert_success(&twins.exchange(&mut alice, Method::CREATE_PERMISSION, &permit(addr(PEER))));
    // Data indications' transaction IDs come from the server's seed.
    let id = alice.id(&twins.first);
    for payload in [&b"one"[..], b"two"] {
        assert!(twins.peer_packet(id, addr(PEER), payload).is_some());
    }
    // So do CONNECTION-IDs (RFC 6062).
    let mut bob = Client::new("198.51.100.2:40000", SERVER, Transport::Tcp, Some(("bob", USERS[1].1)));
    let tcp = |w: &mut MessageWriter<'_>| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &TCP);
    };
    assert_error(&twins.exchange(&mut bob, Method::ALLOCATE, &tcp), 401);
    assert_success(&twins.exchange(&mut bob, Method::ALLOCATE, &tcp));
    assert_success(&twins.exchange(&mut bob, Method::CREATE_PERMISSION, &permit(addr(PEER_B))));
    let relay = RelayId::new(bob.id(&twins.first), false);
    assert!(twins.peer_accepted(relay, addr(PEER_B)).is_some());
    let packet = bob.build(Method::CONNECT, TransactionId::random(), &|w| {
        w.xor_address(AttrType::XOR_PEER_ADDRESS, &addr(PEER));
    });
    assert_eq!(twins.send(&bob, &packet).0, ClientOutcome::Deferred);
    let (_, connection, _) = twins.first.sockets.connects[0];
    twins.peer_connected(connection, true);
    // Both lives end on time, with the same totals.
    twins.advance(secs(600));
    twins.timeout();
    assert!(twins.first.server.table().is_empty());
    twins.check();
}
