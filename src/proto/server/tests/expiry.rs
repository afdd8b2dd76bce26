//! Time passing (RFC 8656 §3.1, §7, §9, §12): allocations, permissions and
//! channel bindings that end at exactly their deadlines, what an expired
//! allocation still does before its timeout is handled, teardown by a
//! closed connection and at shutdown, the events observers see over a
//! whole life, and the deadlines `poll_timeout` names.

use super::*;
use crate::proto::allocation::{Relayed, Traffic};
use crate::proto::channel_data::ChannelNumber;
use crate::proto::server::{AllocationInfo, DeleteReason};

// ---------------------------------------------------------------------------
// Expiry and teardown (RFC 8656 §3.1, §7, §9, §12)
// ---------------------------------------------------------------------------

#[test]
fn the_timeout_deletes_an_allocation_at_its_expiry() {
    let mut h = Harness::authenticated();
    let (_, id) = allocated_alice(&mut h);
    let free = h.free_ports(addr(SERVER).ip());
    h.advance(secs(599));
    h.timeout();
    assert_eq!(h.server.table().len(), 1);
    h.advance(SECOND);
    h.timeout();
    assert!(h.server.table().is_empty());
    assert_eq!(h.sockets.close_calls, [RelayId::new(id, false)]);
    assert_eq!((h.quota("alice"), h.total()), (0, 0));
    assert_eq!(h.free_ports(addr(SERVER).ip()), free + 1, "the port went back to the pool");
    assert_eq!(h.stats().allocations_deleted, 1);
}

#[test]
fn timeouts_forget_expired_permissions_and_channels() {
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
fn an_expired_allocation_relays_nothing_even_before_its_timeout() {
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
    assert_eq!(h.server.table().len(), 1, "its timeout not handled yet");
    // A Refresh finds it dead and deletes it.
    assert_error(&alice.refresh(&mut h, None), 437);
    assert!(h.server.table().is_empty());
    assert_eq!(h.sockets.close_calls, [RelayId::new(id, false)]);
}

#[test]
fn allocate_over_an_expired_allocation_replaces_it() {
    let mut h = Harness::authenticated();
    let (mut alice, old) = allocated_alice(&mut h);
    h.advance(secs(600));
    alice.allocated(&mut h);
    assert_eq!(h.sockets.close_calls, [RelayId::new(old, false)]);
    assert_eq!(h.sockets.open_calls.len(), 2);
    assert_eq!((h.server.table().len(), h.quota("alice")), (1, 1));
}

#[test]
fn a_closed_tcp_connection_takes_its_allocation_with_it() {
    let mut h = Harness::authenticated();
    let mut tcp = Client::new("198.51.100.1:40001", SERVER, Transport::Tcp, Some(("alice", USERS[0].1)));
    tcp.allocated(&mut h);
    let id = tcp.id(&h);
    let (udp, _) = allocated_alice(&mut h);
    h.connection_closed(&tcp.tuple);
    assert_eq!(h.sockets.close_calls, [RelayId::new(id, false)]);
    assert!(h.server.table().find(&tcp.tuple).is_none());
    assert!(h.server.table().find(&udp.tuple).is_some());
    assert_eq!(h.quota("alice"), 1);
    // A second close, or one without an allocation, does nothing.
    h.connection_closed(&tcp.tuple);
    assert_eq!(h.sockets.close_calls.len(), 1);
}

#[test]
fn close_all_deletes_every_allocation_and_returns_everything() {
    let mut h = Harness::authenticated();
    let free = h.free_ports(addr(SERVER).ip());
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    Client::alice("198.51.100.1:40001").allocated(&mut h);
    Client::bob("198.51.100.2:40000").allocated(&mut h);
    h.close_all();
    assert!(h.server.table().is_empty());
    assert_eq!(h.sockets.close_calls.len(), 3);
    assert!(h.per_user().is_empty() && h.total() == 0);
    assert_eq!(h.free_ports(addr(SERVER).ip()), free);
    assert_eq!(h.stats().allocations_deleted, 3);
}

// ---------------------------------------------------------------------------
// What observers see, and when the core wants to be woken
// ---------------------------------------------------------------------------

#[test]
fn a_full_life_is_told_to_observers_in_order_and_each_expiry_at_its_deadline() {
    let mut h = Harness::authenticated();
    let (mut alice, id) = allocated_alice(&mut h);
    let relayed = h.sockets.open[&RelayId::new(id, false)];
    let created = AllocationInfo {
        id,
        serial: 1,
        user: "alice".into(),
        realm: REALM.into(),
        tuple: alice.tuple,
        relayed: [Some(Relayed { addr: relayed, advertised: relayed }), None],
        lifetime: secs(600),
        tcp: false,
    };
    let (serial, relayed) = (created.serial, created.relayed);
    assert_eq!(h.take_observed(), [Event::AllocationCreated(created)]);
    let (peer, bound) = (addr(PEER), addr(PEER_B));
    assert_success(&alice.permit(&mut h, &[peer]));
    assert_eq!(h.take_observed(), [Event::PermissionInstalled { id, peer: peer.ip() }]);
    let channel = ChannelNumber::new(0x4000).expect("in range");
    assert_success(&alice.bind(&mut h, channel.get(), bound));
    assert_eq!(
        h.take_observed(),
        [Event::ChannelBound { id, channel, peer: bound }, Event::PermissionInstalled { id, peer: bound.ip() }]
    );
    h.advance(secs(100));
    assert_success(&alice.refresh(&mut h, Some(1000)));
    assert_eq!(h.take_observed(), [Event::AllocationRefreshed { id, lifetime: secs(1000) }]);
    // Relaying is counted, not told.
    assert!(matches!(alice.send(&mut h, peer, b"hello").0, ClientOutcome::Forward { .. }));
    assert!(matches!(alice.channel_data(&mut h, channel.get(), b"hi").0, ClientOutcome::Forward { .. }));
    assert!(h.peer_packet(id, peer, b"back").0.is_some());
    assert!(h.take_observed().is_empty());

    // Each expiry is told at its deadline and not a second before: the
    // permissions at 300 s, the channel at 600 s (its guard ends quietly at
    // 900 s), the allocation at 1100 s.
    let expiries = [
        (
            300,
            vec![Event::PermissionExpired { id, peer: peer.ip() }, Event::PermissionExpired { id, peer: bound.ip() }],
        ),
        (600, vec![Event::ChannelExpired { id, channel, peer: bound }]),
        (900, vec![]),
        (
            1100,
            vec![Event::AllocationDeleted {
                id,
                serial,
                user: "alice".into(),
                tuple: alice.tuple,
                relayed,
                created: h.start,
                reason: DeleteReason::Expired,
                traffic: Traffic { packets_to_peer: 2, bytes_to_peer: 7, packets_to_client: 1, bytes_to_client: 4 },
            }],
        ),
    ];
    for (deadline, events) in expiries {
        h.advance(secs(deadline - 1) - h.elapsed());
        h.timeout();
        assert!(h.take_observed().is_empty(), "nothing a second before {deadline} s");
        h.advance(SECOND);
        h.timeout();
        assert_eq!(h.take_observed(), events, "at {deadline} s");
    }
    assert!(h.server.table().is_empty());
}

#[test]
fn poll_timeout_names_the_earliest_deadline_and_nothing_happens_before_it() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr_u32(AttrType::LIFETIME, 3600);
    });
    assert_success(&response);
    let id = alice.id(&h);
    let at = |h: &Harness, secs_: u64| h.start + secs(secs_);
    // The 401 made the rate limiter remember alice's IP; it forgets quiet
    // sources 10 s later, the earliest deadline.
    assert_eq!(h.server.poll_timeout(), Some(at(&h, 10)));
    h.advance(secs(10));
    h.timeout();
    // An idle allocation has nothing due before its lifetime ends: no
    // periodic wake-up.
    assert_eq!(h.server.poll_timeout(), Some(at(&h, 3600)));
    for step in [1, 60, 500] {
        h.advance(secs(step));
        h.timeout();
        assert_eq!(h.server.poll_timeout(), Some(at(&h, 3600)), "after {:?}", h.elapsed());
    }
    let observed = h.take_observed();
    assert!(matches!(&observed[..], [Event::AllocationCreated(_)]), "nothing after the Allocate: {observed:?}");
    // A permission is due first.
    assert_success(&alice.permit(&mut h, &[addr(PEER)]));
    assert_eq!(h.take_observed(), [Event::PermissionInstalled { id, peer: addr(PEER).ip() }]);
    let expires = h.elapsed().as_secs() + 300;
    assert_eq!(h.server.poll_timeout(), Some(at(&h, expires)));
    // Just before it, a timeout changes nothing.
    h.advance(secs(299));
    let before = h.stats();
    h.timeout();
    let allocation = h.server.table().get(id).expect("alive");
    assert_eq!((allocation.permission_count(), h.take_observed(), h.stats()), (1, vec![], before));
    assert_eq!(h.server.poll_timeout(), Some(at(&h, expires)));
    // At it, the permission goes and the lifetime is next.
    h.advance(SECOND);
    h.timeout();
    assert_eq!(h.take_observed(), [Event::PermissionExpired { id, peer: addr(PEER).ip() }]);
    assert_eq!(h.server.poll_timeout(), Some(at(&h, 3600)));
    // A Refresh moves the lifetime; waking at the old one changes nothing,
    // and the new one is next.
    assert_success(&alice.refresh(&mut h, Some(3600)));
    assert_eq!(h.take_observed(), [Event::AllocationRefreshed { id, lifetime: secs(3600) }]);
    let refreshed = h.elapsed().as_secs() + 3600;
    h.advance(at(&h, 3600) - h.now.instant);
    h.timeout();
    assert!(h.take_observed().is_empty() && h.server.table().get(id).is_some());
    assert_eq!(h.server.poll_timeout(), Some(at(&h, refreshed)));
}
