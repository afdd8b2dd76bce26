//! Allocate (RFC 8656 §7.2): the challenge, lifetimes, relay IPs and
//! advertised addresses, the request's checks in the RFC's order (400, 437,
//! 440, 442), EVEN-PORT and reservations, DONT-FRAGMENT, port exhaustion,
//! dual allocations (ADDITIONAL-ADDRESS-FAMILY), and the wait for the
//! driver's relay sockets: ports another program holds, and a connection
//! that closes while its relay opens.

use super::*;
use crate::proto::resources::{PortRequest, Resources};
use crate::proto::server::RelayProtocol;
use crate::testing::OpenCall;

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
    assert!(h.server.table().is_empty() && h.sockets.open_calls.is_empty(), "a challenge allocates nothing");

    let response = alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_success(&response);
    let relayed = response.relayed();
    let id = alice.id(&h);
    assert_eq!(relayed.ip(), addr(SERVER).ip(), "relay IP is the address the request arrived on");
    assert!((PORTS.0..=PORTS.1).contains(&relayed.port()));
    assert_eq!(h.sockets.open.get(&RelayId::new(id, false)), Some(&relayed), "relayed address is the driver's");
    assert_eq!(response.xor_address(AttrType::XOR_MAPPED_ADDRESS), Some(alice.tuple.client));
    assert_eq!(response.lifetime(), Some(600));
    assert_eq!(
        h.sockets.open_calls,
        [OpenCall {
            relay: RelayId::new(id, false),
            addr: relayed,
            protocol: RelayProtocol::Udp,
            dont_fragment: false
        }]
    );
    assert_eq!((h.quota("alice"), h.total()), (1, 1));
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
        let relayed = h.sockets.open[&RelayId::new(client.id(&h), false)];
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
    assert!(h.server.table().is_empty() && h.sockets.open_calls.is_empty());
}

#[test]
fn allocate_for_another_transport_is_442() {
    let mut h = Harness::authenticated();
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &[132, 0, 0, 0]);
    });
    assert_error(&response, 442);
    assert!(h.server.table().is_empty() && h.sockets.open_calls.is_empty());
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
    assert_eq!(h.sockets.open_calls.len(), 1, "no second relay for a retransmission");

    // A new transaction on the same 5-tuple is an allocation mismatch.
    let second = alice.exchange(&mut h, &alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport));
    assert_error(&second, 437);
    assert_eq!(h.server.table().len(), 1);
    assert_eq!(h.sockets.open_calls.len(), 1);
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
    assert!(h.sockets.open_calls.is_empty() && h.total() == 0);
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
    assert!(h.sockets.open_calls.is_empty());
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
    assert_eq!(h.quota("bob"), 0, "refused allocations hold no quota");
}

#[test]
fn dont_fragment_the_driver_cannot_honour_is_a_signed_420_listing_it() {
    let mut h = Harness::authenticated();
    h.sockets.dont_fragment_unsupported = true;
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
    assert!(h.sockets.open.is_empty() && h.total() == 0, "nothing held after the 420");

    h.sockets.dont_fragment_unsupported = false;
    assert_success(&alice.request(&mut h, Method::ALLOCATE, &with_df));
    assert!(h.sockets.open_calls.last().expect("opened").dont_fragment);
}

#[test]
fn exhausted_port_range_is_508_until_a_port_comes_back() {
    let mut h = Harness::authenticated();
    h.set_ports((50000, 50001));
    let mut first = Client::alice("198.51.100.1:40000");
    let freed = first.allocated(&mut h).port();
    Client::alice("198.51.100.1:40001").allocated(&mut h);
    let mut third = Client::bob("198.51.100.2:40000");
    assert_error(&third.allocate(&mut h), 508);
    assert_eq!(h.quota("bob"), 0, "the quota taken for it is given back");

    assert_success(&first.refresh(&mut h, Some(0)));
    assert_eq!(third.allocated(&mut h).port(), freed, "the freed port is reused");
}

// ---------------------------------------------------------------------------
// Dual allocation (RFC 8656 §7.2, ADDITIONAL-ADDRESS-FAMILY)
// ---------------------------------------------------------------------------

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
    assert_eq!((h.total(), h.sockets.open.len()), (1, 2), "one quota unit, two sockets");
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
    assert_eq!(h.sockets.close_calls.len(), 2);
    assert!(h.sockets.open.is_empty() && h.total() == 0);
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
    while h.accounts.lock().take_port(v6, PortRequest::Any, h.now.instant).is_ok() {}
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
    assert!(h.sockets.open_calls.is_empty() && h.total() == 0);
    // EVEN-PORT without the R bit is fine: both ports are even.
    let response = alice.request(&mut h, Method::ALLOCATE, &|w| {
        dual_allocate(w);
        w.attr(AttrType::EVEN_PORT, &[0x00]);
    });
    assert_success(&response);
    assert!(relayed_addresses(&response).iter().all(|a| a.port() % 2 == 0));
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
    assert!(h.sockets.open.contains_key(&RelayId::new(id, true)));
}

// ---------------------------------------------------------------------------
// Relay sockets: opened by the driver, answered later
// ---------------------------------------------------------------------------

#[test]
fn a_port_another_program_holds_is_traded_for_the_next_one() {
    // Two servers with the same seeds offer the same ports in the same
    // order: the first learns which port comes first, the second finds it
    // held elsewhere.
    let mut probe = Harness::authenticated();
    let first = Client::alice("198.51.100.1:40000").allocated(&mut probe);
    let mut h = Harness::authenticated();
    h.sockets.in_use.insert(first);
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.allocate(&mut h);
    assert_success(&response);
    let id = alice.id(&h);
    let relay = RelayId::new(id, false);
    let tried: Vec<(RelayId, SocketAddr)> = h.sockets.open_calls.iter().map(|call| (call.relay, call.addr)).collect();
    assert_eq!(tried.len(), 2, "the held port, then the next one: {tried:?}");
    assert_eq!(tried[0], (relay, first));
    assert_eq!(tried[1].0, relay, "the same relay asked again");
    assert_ne!(tried[1].1, first);
    assert_eq!(response.relayed(), tried[1].1);
    assert_eq!(h.sockets.open.get(&relay), Some(&tried[1].1));
    // The held port went back to the pool; only the relay's is taken.
    assert_eq!(h.free_ports(addr(SERVER).ip()), usize::from(PORTS.1 - PORTS.0));
    assert_eq!((h.quota("alice"), h.total()), (1, 1));
}

#[test]
fn an_allocate_whose_every_try_finds_its_port_held_is_508_and_holds_nothing() {
    let mut h = Harness::authenticated();
    // More ports than the core tries, every one held by another program.
    let ports = (50000, 50019);
    h.set_ports(ports);
    let ip = addr(SERVER).ip();
    h.sockets.in_use = (ports.0..=ports.1).map(|port| SocketAddr::new(ip, port)).collect();
    let mut alice = Client::alice("198.51.100.1:40000");
    let response = alice.allocate(&mut h);
    assert_error(&response, 508);
    let mut tried: Vec<SocketAddr> = h.sockets.open_calls.iter().map(|call| call.addr).collect();
    assert_eq!(tried.len(), 16, "sixteen tries");
    tried.sort();
    tried.dedup();
    assert_eq!(tried.len(), 16, "each try another port");
    assert!(h.server.table().is_empty() && h.sockets.open.is_empty());
    assert_eq!((h.quota("alice"), h.total()), (0, 0));
    assert_eq!(h.free_ports(ip), usize::from(ports.1 - ports.0) + 1, "every port tried went back");
    assert!(h.take_observed().is_empty(), "no allocation was created");
}

#[test]
fn a_connection_closed_while_its_relay_opens_leaves_nothing_and_its_id_waits_for_the_answer() {
    let mut h = Harness::authenticated();
    let mut alice = Client::new("198.51.100.1:40000", SERVER, Transport::Tcp, Some(("alice", USERS[0].1)));
    let mut bob = Client::bob("198.51.100.2:40000");
    for client in [&mut alice, &mut bob] {
        let challenge = client.build(Method::ALLOCATE, TransactionId::random(), &udp_transport);
        assert_error(&client.exchange(&mut h, &challenge), 401);
    }
    // From here the server is called directly, so the sockets do not answer
    // the relay open until the test lets them.
    let mut reply = Vec::new();
    let request = alice.build(Method::ALLOCATE, TransactionId::random(), &udp_transport);
    let outcome = h.server.handle_client(h.now, &alice.tuple, alice.handle, &request, &mut reply);
    assert_eq!((outcome, reply.len()), (ClientOutcome::Deferred, 0));
    let opening = alice.id(&h);
    assert!(!h.server.table().get(opening).expect("in the table").is_live());
    assert_eq!(h.quota("alice"), 1, "the quota is taken at once");
    h.server.handle_connection_closed(&alice.tuple);
    assert_eq!((h.quota("alice"), h.total()), (0, 0), "and released at once");
    assert!(h.server.table().get(opening).is_some(), "the id stays taken while the open may still be answered");
    // Another Allocate meanwhile gets another id.
    let request = bob.build(Method::ALLOCATE, TransactionId::random(), &udp_transport);
    let outcome = h.server.handle_client(h.now, &bob.tuple, bob.handle, &request, &mut reply);
    assert_eq!((outcome, reply.len()), (ClientOutcome::Deferred, 0));
    let other = bob.id(&h);
    assert_ne!(other, opening);
    // The sockets answer both opens: alice's relay opened, and is closed at once.
    let mut sent = h.settle();
    let alice_relay = RelayId::new(opening, false);
    assert_eq!(
        h.sockets.open_calls.iter().map(|call| call.relay).collect::<Vec<_>>(),
        [alice_relay, RelayId::new(other, false)]
    );
    assert_eq!(h.sockets.close_calls, [alice_relay]);
    assert!(h.server.table().get(opening).is_none(), "gone once answered");
    assert_eq!(h.sockets.open.keys().copied().collect::<Vec<_>>(), [RelayId::new(other, false)]);
    assert_eq!((h.quota("alice"), h.quota("bob"), h.total()), (0, 1, 1));
    // Only bob is answered, and observers hear only of bob's allocation.
    let (transmit, bytes) = sent.pop().expect("bob's answer");
    assert!(sent.is_empty(), "nothing for alice's closed connection");
    assert_eq!((transmit.client, transmit.tuple), (bob.handle, bob.tuple));
    assert_success(&Response::new(bytes));
    let observed = h.take_observed();
    assert!(
        matches!(&observed[..], [Event::AllocationCreated(info)] if info.id == other),
        "only bob's allocation is created: {observed:?}"
    );
    // Answered, the id is free: the table hands it to the next allocation.
    let mut next = Client::alice("198.51.100.1:40001");
    next.allocated(&mut h);
    assert_eq!(next.id(&h), opening);
}
