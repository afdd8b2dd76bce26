//! What allocations and connections may cost the whole server: the user
//! quota (486), the total quota (508, or 300 Try Alternate to an alternate
//! server of the client's family, RFC 8656 §7.2, RFC 8489 §10), draining,
//! and the admission of TCP and TLS connections per source IP and in all.

use super::*;
use crate::proto::stun::attr::FAMILY_IPV6;

#[test]
fn user_quota_is_486_and_leaks_nothing() {
    let mut h = Harness::authenticated();
    h.set_limits(|l| l.per_user = 1);
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    let free = h.free_ports(addr(SERVER).ip());
    let mut again = Client::alice("198.51.100.1:40001");
    assert_error(&again.allocate(&mut h), 486);
    assert_eq!((h.quota("alice"), h.total()), (1, 1));
    assert_eq!(h.sockets.open.len(), 1);
    assert_eq!(h.free_ports(addr(SERVER).ip()), free, "no port taken");
    assert_eq!(h.sockets.open_calls.len(), 1, "no relay even tried");
    assert!(h.server.table().find(&again.tuple).is_none());
    // Another user is not affected.
    Client::bob("198.51.100.2:40000").allocated(&mut h);
}

#[test]
fn total_quota_is_508() {
    let mut h = Harness::authenticated();
    h.set_limits(|l| l.total = 1);
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    assert_error(&Client::bob("198.51.100.2:40000").allocate(&mut h), 508);
    assert_eq!((h.quota("bob"), h.total(), h.sockets.open.len()), (0, 1, 1));
}

#[test]
fn total_quota_with_alternates_is_a_signed_300_naming_one_of_the_family_in_turn() {
    let alternates = [addr("203.0.113.5:3478"), addr("[2001:db8::5]:3478"), addr("203.0.113.6:3478")];
    let mut h = Harness::new(TurnConfig { alternate_servers: alternates.to_vec(), ..turn_config() });
    h.set_limits(|l| l.total = 1);
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    let mut redirected = Vec::new();
    for port in 40001..40004 {
        // `exchange` checks the 300 is signed with the client's key.
        let response = Client::bob(&format!("198.51.100.2:{port}")).rfc8489().allocate(&mut h);
        assert_error(&response, 300);
        let value = response.attr(AttrType::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
        redirected.push(attr::read_address(value).expect("a plain address"));
    }
    assert_eq!(redirected, [alternates[0], alternates[2], alternates[0]], "IPv4 alternates in turn");
    // An IPv6 listener gets the IPv6 one.
    let mut v6 = Client::new("[2001:db8::99]:40000", SERVER_V6, Transport::Udp, Some(("bob", USERS[1].1)));
    let response = v6.request(&mut h, Method::ALLOCATE, &|w| {
        w.attr(AttrType::REQUESTED_TRANSPORT, &UDP).attr(AttrType::REQUESTED_ADDRESS_FAMILY, &family(FAMILY_IPV6));
    });
    assert_error(&response, 300);
    let value = response.attr(AttrType::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(attr::read_address(value), Ok(alternates[1]));
    assert_eq!((h.quota("bob"), h.total(), h.sockets.open.len()), (0, 1, 1), "nothing held");
    // The user quota is still 486, not a redirect.
    h.set_limits(|l| {
        l.total = 0;
        l.per_user = 1;
    });
    assert_error(&Client::alice("198.51.100.1:40009").allocate(&mut h), 486);
}

#[test]
fn a_draining_server_redirects_or_refuses_new_allocations_and_keeps_the_old_ones() {
    let mut h = Harness::new(TurnConfig { alternate_servers: vec![addr("203.0.113.5:3478")], ..turn_config() });
    let (mut alice, id) = allocated_alice(&mut h);
    assert_success(&alice.bind(&mut h, 0x4000, addr(PEER)));
    h.server.start_draining();
    assert!(h.server.is_draining());
    // A new client is sent to the alternate, signed; nothing is held for it.
    let response = Client::bob("198.51.100.2:40000").allocate(&mut h);
    assert_error(&response, 300);
    let value = response.attr(AttrType::ALTERNATE_SERVER).expect("ALTERNATE-SERVER");
    assert_eq!(attr::read_address(value), Ok(addr("203.0.113.5:3478")));
    assert_eq!((h.quota("bob"), h.sockets.open.len()), (0, 1));
    // Alice's allocation lives on: refresh, permissions, channels, data.
    assert_success(&alice.refresh(&mut h, Some(600)));
    assert_success(&alice.permit(&mut h, &[addr(PEER_B)]));
    assert!(matches!(alice.channel_data(&mut h, 0x4000, b"still relayed").0, ClientOutcome::Forward { .. }));
    assert!(h.peer_packet(id, addr(PEER), b"and back").0.is_some());
    // Without alternates a draining server answers 508.
    let mut lone = Harness::authenticated();
    lone.server.start_draining();
    assert_error(&Client::alice("198.51.100.1:40000").allocate(&mut lone), 508);
    assert!(lone.server.table().is_empty() && lone.sockets.open.is_empty());
}

#[test]
fn a_tls_client_is_told_the_alternate_domain_too() {
    let turn = TurnConfig {
        alternate_servers: vec![addr("203.0.113.5:5349")],
        alternate_domain: Some("turn2.example.com".into()),
        ..turn_config()
    };
    let mut h = Harness::new(turn);
    h.set_limits(|l| l.total = 1);
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    let mut tls = Client::new("198.51.100.2:40000", SERVER, Transport::Tls, Some(("bob", USERS[1].1)));
    let response = tls.allocate(&mut h);
    assert_error(&response, 300);
    assert_eq!(response.attr(AttrType::ALTERNATE_DOMAIN), Some(&b"turn2.example.com"[..]));
    // Over UDP there is no certificate to check: no ALTERNATE-DOMAIN.
    let response = Client::bob("198.51.100.2:40001").allocate(&mut h);
    assert_error(&response, 300);
    assert!(response.attr(AttrType::ALTERNATE_DOMAIN).is_none());
}

#[test]
fn total_quota_without_an_alternate_of_the_family_is_508() {
    let mut h = Harness::new(TurnConfig { alternate_servers: vec![addr("[2001:db8::5]:3478")], ..turn_config() });
    h.set_limits(|l| l.total = 1);
    Client::alice("198.51.100.1:40000").allocated(&mut h);
    let response = Client::bob("198.51.100.2:40000").allocate(&mut h);
    assert_error(&response, 508);
    assert!(response.attr(AttrType::ALTERNATE_SERVER).is_none());
}

#[test]
fn connections_are_admitted_within_the_per_ip_and_total_limits() {
    let mut h = Harness::authenticated();
    h.set_limits(|l| {
        l.tcp_per_ip = 2;
        l.tcp_total = 3;
    });
    let tuple = |client: &str| FiveTuple { client: addr(client), server: addr(SERVER), transport: Transport::Tcp };
    let connections = |h: &Harness| {
        let accounts = h.accounts.lock();
        let from = |ip: &str| accounts.connections_from(ip.parse().expect("IP literal"));
        (from("198.51.100.1"), from("198.51.100.2"), accounts.connections())
    };
    assert!(h.connection_opened(&tuple("198.51.100.1:40000")));
    assert!(h.connection_opened(&tuple("198.51.100.1:40001")));
    assert!(!h.connection_opened(&tuple("198.51.100.1:40002")), "two from one IP");
    assert!(h.connection_opened(&tuple("198.51.100.2:40000")));
    assert_eq!(connections(&h), (2, 1, 3));
    assert!(!h.connection_opened(&tuple("198.51.100.3:40000")), "three in all");
    // A connection that closes makes room again, and takes its allocation.
    let mut alice = Client::new("198.51.100.1:40000", SERVER, Transport::Tcp, Some(("alice", USERS[0].1)));
    alice.allocated(&mut h);
    h.connection_closed(&alice.tuple);
    assert!(h.server.table().is_empty());
    assert_eq!(connections(&h), (1, 1, 2));
    assert!(h.connection_opened(&tuple("198.51.100.3:40000")));
    assert!(!h.connection_opened(&tuple("198.51.100.1:40003")), "three in all again");
    assert_eq!(connections(&h), (1, 1, 3));
}
