//! The data path (RFC 8656 §11, §12): Send indications and ChannelData to
//! peers, forwarded as ranges of the client's packet; peer datagrams to
//! clients as ChannelData (padded on streams) or Data indications, written
//! in place around the payload; `max_bps`; and ICMP errors about relayed
//! datagrams, passed on as Data indications (§11.5).

use super::*;
use crate::proto::channel_data::ChannelData;
use crate::proto::demux;

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
    // No permission yet: nothing is relayed.
    assert!(h.icmp(v4, &icmp(PEER, false, 3, 3, 0)).is_none());
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
        let (transmit, out) = h.icmp(relay, &report).expect("relayed");
        assert_eq!((transmit.client, transmit.tuple), (alice.handle, alice.tuple));
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
        assert!(h.icmp(relay, &report).is_none(), "{report:?}");
    }
    assert_eq!(h.stats().icmp_relayed, 6);
    // Nor for a deleted allocation.
    assert_success(&alice.refresh(&mut h, Some(0)));
    assert!(h.icmp(v4, &icmp(PEER, false, 3, 3, 0)).is_none());
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
