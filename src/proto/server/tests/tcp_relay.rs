//! RFC 6062 TCP relaying: TCP allocations (§5.1), Connect and its answer
//! when the peer answers or after 30 seconds (§5.2), peers connecting to a
//! relayed address and their ConnectionAttempt (§5.3), ConnectionBind
//! (§5.4) on this worker or handed to the one that owns the CONNECTION-ID,
//! and what a pair's end or the allocation's deletion closes (§5.5).

use super::*;
use crate::proto::server::RelayProtocol;
use crate::proto::tcp_relay::owner;

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
    let (transmit, bytes) = h.take_sent().expect("a late answer");
    assert_eq!((transmit.client, transmit.tuple), (client.handle, client.tuple));
    let response = Response::new(bytes);
    let parsed = response.message();
    assert_eq!((parsed.method(), parsed.transaction_id()), (Method::CONNECT, tid));
    assert!(parsed.verify_integrity(&client.key().expect("signed")), "late answers are signed too");
    response
}

/// The TCP relays the sockets were asked to open, in order.
fn tcp_relays_opened(h: &Harness) -> Vec<RelayId> {
    h.sockets.open_calls.iter().filter(|call| call.protocol == RelayProtocol::Tcp).map(|call| call.relay).collect()
}

fn connection_id(value: &[u8]) -> ConnectionId {
    ConnectionId(attr::read_u32(value).expect("CONNECTION-ID is 4 bytes"))
}

#[test]
fn tcp_allocation_opens_a_tcp_relay_and_refuses_udp_only_attributes() {
    let mut h = Harness::authenticated();
    let (_, id) = tcp_alice(&mut h);
    assert_eq!(tcp_relays_opened(&h), vec![RelayId::new(id, false)]);
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
    assert_eq!((outcome, reply.len()), (ClientOutcome::Deferred, 0), "answered later");
    let (relay, connection, to) = h.sockets.connects[0];
    assert_eq!((relay, to), (RelayId::new(id, false), peer));
    assert!(h.take_sent().is_none(), "nothing until the peer answers");
    h.peer_connected(connection, true);
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
    let (_, connection, _) = h.sockets.connects[0];
    h.peer_connected(connection, false);
    assert_error(&control_response(&mut h, &alice, tid), 447);
    // Failing before it starts.
    h.sockets.refuse_connect = Some(|_| true);
    let (_, _, reply) = send_connect(&mut h, &alice, addr(PEER));
    assert_error(&Response::new(reply), 447);
    h.sockets.refuse_connect = None;
    // Never answered: 447 after 30 seconds, not before, and the socket is closed.
    let (tid, _, _) = send_connect(&mut h, &alice, addr(PEER_B));
    let (_, slow, _) = h.sockets.connects[1];
    h.advance(secs(29));
    h.timeout();
    assert!(h.take_sent().is_none());
    h.advance(SECOND);
    h.timeout();
    assert_error(&control_response(&mut h, &alice, tid), 447);
    assert_eq!(h.sockets.closed_peers, vec![slow]);
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
    assert!(h.sockets.connects.is_empty(), "no connection to a forbidden peer is even started");
    let (_, outcome, _) = send_connect(&mut h, &alice, addr(PEER));
    assert_eq!(outcome, ClientOutcome::Deferred);
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
    assert_eq!(h.peer_accepted(relay, peer), None, "no permission yet");
    assert!(h.take_sent().is_none(), "no indication for a refused peer");
    assert_success(&alice.permit(&mut h, &[peer]));
    let connection = h.peer_accepted(relay, peer).expect("permitted");
    let (_, bytes) = h.take_sent().expect("ConnectionAttempt");
    let parsed = Message::parse(&bytes).expect("well-formed");
    assert_eq!(parsed.message_type(), MessageType::new(Method::CONNECTION_ATTEMPT, Class::Indication));
    let tid = parsed.transaction_id();
    let value = parsed.attribute(AttrType::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS");
    assert_eq!(attr::read_xor_address(value, &tid).expect("address"), peer);
    assert_eq!(connection_id(parsed.attribute(AttrType::CONNECTION_ID).expect("CONNECTION-ID")), connection);
    assert_eq!((h.stats().tcp_peer_refused, h.stats().tcp_peer_connections), (1, 1));
    // Unbound for 30 seconds: closed, and the id is gone (400).
    h.advance(secs(30));
    h.timeout();
    assert_eq!(h.sockets.closed_peers, vec![connection]);
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
    let connection = h.peer_accepted(RelayId::new(id, false), addr(PEER)).expect("permitted");
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
    h.tcp_relay_closed(connection);
    assert!(h.server.tcp_connections().is_empty());
}

#[test]
fn deleting_a_tcp_allocation_closes_its_connections() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = tcp_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    let _ = send_connect(&mut h, &alice, addr(PEER_B));
    let (_, outbound, _) = h.sockets.connects[0];
    // A peer connects just before the allocation goes: its
    // ConnectionAttempt is queued, not yet taken by the sockets.
    let inbound = h.server.handle_peer_accepted(h.now, RelayId::new(id, false), addr(PEER)).expect("permitted");
    h.sockets.hold(inbound);
    h.connection_closed(&alice.tuple);
    let mut closed = h.sockets.closed_peers.clone();
    closed.sort();
    let mut expected = vec![inbound, outbound];
    expected.sort();
    assert_eq!(closed, expected);
    assert!(h.server.tcp_connections().is_empty());
    // What was queued for the client is not sent, and a late report about
    // a forgotten connection is ignored.
    assert!(h.take_sent().is_none(), "the queued ConnectionAttempt went with the allocation");
    h.peer_connected(outbound, true);
    assert!(h.take_sent().is_none());
    // And the peer gets no Send or ChannelData path either way.
    assert!(tcp_relays_opened(&h).len() == 1 && h.sockets.close_calls == vec![RelayId::new(id, false)]);
}

#[test]
fn tcp_allocation_and_connection_bind_work_over_tls() {
    let mut h = Harness::authenticated();
    let mut alice = Client::new("198.51.100.1:40000", SERVER, Transport::Tls, Some(("alice", USERS[0].1)));
    assert_success(&alice.request(&mut h, Method::ALLOCATE, &tcp_transport));
    assert_eq!(tcp_relays_opened(&h).len(), 1, "a TCP relay over a TLS control connection");
    let id = h.server.table().find(&alice.tuple).expect("allocated");
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    let connection = h.peer_accepted(RelayId::new(id, false), addr(PEER)).expect("permitted");
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
    let first = h.peer_accepted(relay, addr(PEER)).expect("permitted");
    let second = h.peer_accepted(relay, addr(PEER_B)).expect("permitted");
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
    let pair = open.peer_accepted(RelayId::new(id, false), addr(PEER)).expect("permitted");
    assert_eq!(open.server.tcp_relay_allowance(open.now, pair), [usize::MAX; 2]);
    assert_eq!(h.server.tcp_relay_allowance(h.now, ConnectionId(u32::MAX)), [usize::MAX; 2]);
}

#[test]
fn a_connection_bind_for_another_workers_connection_is_handed_over_unanswered() {
    let mut h = Harness::authenticated();
    h.server.set_worker(0, 2);
    let (mut alice, id) = tcp_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    let mine = h.peer_accepted(RelayId::new(id, false), addr(PEER)).expect("permitted");
    assert!(h.take_sent().is_some(), "its ConnectionAttempt");
    assert_eq!(owner(mine, 2), 0, "this worker's ids are its own");
    let mut data = alice.on(FiveTuple { client: addr("198.51.100.1:40001"), ..alice.tuple });
    let challenge = data.build(Method::CONNECTION_BIND, TransactionId::random(), &no_attributes);
    assert_error(&data.exchange(&mut h, &challenge), 401);
    let theirs = ConnectionId(mine.0 + 1);
    assert_eq!(owner(theirs, 2), 1);
    let before = h.stats();
    let packet = data.build(Method::CONNECTION_BIND, TransactionId::random(), &|w| {
        w.attr_u32(AttrType::CONNECTION_ID, theirs.0);
    });
    let (outcome, reply) = h.client_packet(&data.tuple, data.handle, &packet);
    assert_eq!(outcome, ClientOutcome::HandOff { worker: 1 });
    assert!(reply.is_empty() && h.take_sent().is_none(), "the other worker answers it");
    assert_eq!(h.stats().error_responses, before.error_responses);
    // The connection of this worker is untouched, and binds here.
    assert!(h.server.tcp_connections().get(mine).is_some_and(|c| c.is_bindable(h.now.instant)));
    let packet = data.build(Method::CONNECTION_BIND, TransactionId::random(), &|w| {
        w.attr_u32(AttrType::CONNECTION_ID, mine.0);
    });
    assert_eq!(h.client_packet(&data.tuple, data.handle, &packet).0, ClientOutcome::ConnectionBound { id: mine });
}

#[test]
fn a_bound_client_side_counts_as_a_connection_until_its_pair_ends() {
    let mut h = Harness::authenticated();
    let connections = |h: &Harness| h.accounts.lock().connections();
    let (mut alice, id) = tcp_alice(&mut h);
    assert!(h.connection_opened(&alice.tuple), "the control connection");
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
    let relay = RelayId::new(id, false);
    let mut bound = Vec::new();
    for (port, peer) in [(40001, PEER), (40002, PEER_B)] {
        let connection = h.peer_accepted(relay, addr(peer)).expect("permitted");
        let mut data = alice.on(FiveTuple { client: SocketAddr::new(alice.tuple.client.ip(), port), ..alice.tuple });
        assert!(h.connection_opened(&data.tuple), "a data connection");
        let response = data.request(&mut h, Method::CONNECTION_BIND, &|w| {
            w.attr_u32(AttrType::CONNECTION_ID, connection.0);
        });
        assert_success(&response);
        bound.push(connection);
    }
    assert_eq!(connections(&h), 3, "the control connection and two bound client sides");
    // One pair ends: its client side no longer counts.
    h.tcp_relay_closed(bound[0]);
    assert_eq!(connections(&h), 2);
    // The control connection closes: the allocation, the other pair and its
    // client side go with it.
    h.connection_closed(&alice.tuple);
    assert_eq!(h.sockets.closed_peers, [bound[1]]);
    assert!(h.server.tcp_connections().is_empty());
    assert_eq!(connections(&h), 0);
}
