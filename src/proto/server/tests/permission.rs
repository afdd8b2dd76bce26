//! CreatePermission (RFC 8656 §9, §10): permissions per peer IP for 300
//! seconds, all or nothing, within `max_permissions`, and expired ones not
//! counted against the limit.

use super::*;

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
fn expired_permissions_do_not_count_against_the_limit_before_their_timeout() {
    let mut h = Harness::new(TurnConfig { max_permissions: 2, ..turn_config() });
    let (mut alice, _) = allocated_alice(&mut h);
    assert_success(&alice.permit(&mut h, &[addr(PEER), addr(PEER_B)]));
    h.advance(Duration::from_secs(300));
    // No handle_timeout yet: the two permissions are expired but still listed.
    assert_success(&alice.permit(&mut h, &[addr(PEER_C)]));
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
}
