//! Peer policy on every path (RFC 8656 §21.3): special ranges refused on
//! CreatePermission, ChannelBind and Send, every known encoding that leads
//! into them, allow and deny lists; and the bound on how much larger than
//! its request an unauthenticated answer may be.

use super::*;
use crate::proto::policy::PeerPolicy;

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
    for (server, requested, peers) in [(SERVER, 0x01, BYPASS_V4), (SERVER_V6, 0x02, BYPASS_V6)] {
        let mut h = Harness::authenticated();
        let client = if requested == 0x01 { "198.51.100.1:40000" } else { "[2001:db8::1]:40000" };
        let mut alice = Client::new(client, server, Transport::Udp, Some(("alice", USERS[0].1)));
        assert_success(&alice.request(&mut h, Method::ALLOCATE, &|w| {
            w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(requested));
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

/// Two clients of one server whose relayed candidates pair up: each
/// allocation's relayed address is a peer of the other. Anything else on
/// tern's own address stays refused, on every path, even once a permission
/// for that IP is installed.
#[test]
fn another_allocation_on_this_server_is_a_peer_and_nothing_else_on_its_address() {
    let relay_ip = addr("8.8.4.4:0").ip();
    let policy = PeerPolicy::new(vec![], vec![], vec![relay_ip]).with_relay_ports(PORTS);
    let mut h = Harness::new(TurnConfig { policy, relay_ips: vec![relay_ip], ..turn_config() });
    let (mut alice, id) = allocated_alice(&mut h);
    let mut bob = Client::bob("198.51.100.2:40000");
    let bob_relayed = bob.allocated(&mut h);
    assert_eq!(bob_relayed.ip(), relay_ip);
    assert_success(&alice.permit(&mut h, &[bob_relayed]));
    assert_success(&alice.bind(&mut h, 0x4000, bob_relayed));
    let (outcome, packet) = alice.send(&mut h, bob_relayed, b"to bob");
    assert_forwarded(&outcome, &packet, id, bob_relayed, b"to bob");
    for other in
        [SocketAddr::new(relay_ip, 3478), SocketAddr::new(relay_ip, PORTS.0 - 1), SocketAddr::new(relay_ip, 22)]
    {
        let before = h.stats().peers_forbidden;
        assert_error(&alice.permit(&mut h, &[other]), 403);
        assert_error(&alice.bind(&mut h, 0x4001, other), 403);
        assert_eq!(alice.send(&mut h, other, b"x").0, ClientOutcome::Dropped, "Send to {other}");
        assert_eq!(h.stats().peers_forbidden, before + 3, "{other} counted on each path");
    }
}
