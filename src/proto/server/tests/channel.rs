//! ChannelBind (RFC 8656 §11.2, §12): channel numbers and their range, the
//! permission a binding installs, 600-second bindings and their refresh,
//! conflicts, the five-minute guard after a binding ends, and
//! `max_channels`.

use super::*;

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
    // A timeout while guarded must not forget the guard.
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
