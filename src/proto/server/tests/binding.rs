//! Binding (RFC 8489): RFC 5780 NAT behaviour discovery (OTHER-ADDRESS,
//! RESPONSE-ORIGIN, CHANGE-REQUEST, RESPONSE-PORT, PADDING, and 420 without
//! it), its amplification bound, and classic RFC 3489 CHANGE-REQUEST.

use super::*;
use crate::proto::nat_discovery::NatDiscovery;

/// The alternate of [`SERVER`]: another IP and port.
const ALTERNATE: &str = "192.0.2.11:3479";

fn discovery_harness(rfc3489: bool) -> Harness {
    let nat_discovery = NatDiscovery::new(addr(SERVER), addr(ALTERNATE));
    assert!(nat_discovery.is_some());
    Harness::with_config(ServerConfig { nat_discovery, rfc3489, ..ServerConfig::default() })
}

fn binding(build: impl FnOnce(&mut MessageWriter<'_>)) -> Vec<u8> {
    let mut packet = Vec::new();
    let mut w =
        MessageWriter::new(&mut packet, MessageType::new(Method::BINDING, Class::Request), TransactionId::random());
    build(&mut w);
    packet
}

fn change(change_ip: bool, change_port: bool) -> [u8; 4] {
    attr::ChangeRequest { change_ip, change_port }.to_bytes()
}

fn plain_address(response: &Response, typ: AttrType) -> Option<SocketAddr> {
    response.attr(typ).map(|value| attr::read_address(value).expect("valid address"))
}

#[test]
fn without_discovery_its_request_attributes_get_420() {
    let mut h = Harness::with_config(ServerConfig::default());
    let tuple = FiveTuple { client: addr("198.51.100.9:1234"), server: addr(SERVER), transport: Transport::Udp };
    for typ in [AttrType::CHANGE_REQUEST, AttrType::RESPONSE_PORT, AttrType::PADDING] {
        let packet = binding(|w| {
            w.attr(typ, &change(false, true));
        });
        let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &packet);
        assert_eq!(outcome, ClientOutcome::Replied);
        let response = Response::new(reply);
        assert_error(&response, 420);
        let listed: Vec<AttrType> =
            attr::read_unknown_attributes(response.attr(AttrType::UNKNOWN_ATTRIBUTES).expect("listed"))
                .expect("valid")
                .collect();
        assert_eq!(listed, [typ]);
        assert_eq!(response.attr(AttrType::OTHER_ADDRESS), None);
    }
}

#[test]
fn discovery_answers_carry_other_address_and_response_origin() {
    let mut h = discovery_harness(false);
    let client = addr("198.51.100.9:1234");
    let tuple = FiveTuple { client, server: addr(SERVER), transport: Transport::Udp };
    let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &binding(|_| {}));
    assert_eq!(outcome, ClientOutcome::Replied);
    let response = Response::new(reply);
    assert_success(&response);
    assert_eq!(response.xor_address(AttrType::XOR_MAPPED_ADDRESS), Some(client));
    assert_eq!(plain_address(&response, AttrType::MAPPED_ADDRESS), Some(client));
    assert_eq!(plain_address(&response, AttrType::RESPONSE_ORIGIN), Some(addr(SERVER)));
    assert_eq!(plain_address(&response, AttrType::OTHER_ADDRESS), Some(addr(ALTERNATE)));

    // A listen address outside the four is served without the usage.
    let elsewhere = FiveTuple { server: addr("192.0.2.99:3478"), ..tuple };
    let (_, reply) = h.client_packet(&elsewhere, ClientHandle(0), &binding(|_| {}));
    assert_eq!(Response::new(reply).attr(AttrType::OTHER_ADDRESS), None);
    let (_, reply) = h.client_packet(
        &elsewhere,
        ClientHandle(0),
        &binding(|w| {
            w.attr(AttrType::CHANGE_REQUEST, &change(true, true));
        }),
    );
    assert_error(&Response::new(reply), 420);
}

#[test]
fn change_request_names_the_address_to_answer_from() {
    let mut h = discovery_harness(false);
    let client = addr("198.51.100.9:1234");
    for (received_on, change_ip, change_port, origin) in [
        (SERVER, false, false, SERVER),
        (SERVER, false, true, "192.0.2.10:3479"),
        (SERVER, true, false, "192.0.2.11:3478"),
        (SERVER, true, true, ALTERNATE),
        (ALTERNATE, true, true, SERVER),
        ("192.0.2.11:3478", false, true, ALTERNATE),
    ] {
        let tuple = FiveTuple { client, server: addr(received_on), transport: Transport::Udp };
        let packet = binding(|w| {
            w.attr(AttrType::CHANGE_REQUEST, &change(change_ip, change_port));
        });
        let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &packet);
        let expected = if origin == received_on {
            ClientOutcome::Replied
        } else {
            ClientOutcome::RepliedFrom { source: addr(origin), destination: client }
        };
        assert_eq!(outcome, expected, "{received_on} {change_ip} {change_port}");
        let response = Response::new(reply);
        assert_eq!(plain_address(&response, AttrType::RESPONSE_ORIGIN), Some(addr(origin)));
        let other = if received_on == SERVER {
            ALTERNATE
        } else if received_on == ALTERNATE {
            SERVER
        } else {
            "192.0.2.10:3479"
        };
        assert_eq!(plain_address(&response, AttrType::OTHER_ADDRESS), Some(addr(other)));
    }
}

#[test]
fn response_port_redirects_and_connections_refuse_changes() {
    let mut h = discovery_harness(false);
    let client = addr("198.51.100.9:1234");
    let udp = FiveTuple { client, server: addr(SERVER), transport: Transport::Udp };
    let packet = binding(|w| {
        w.attr(AttrType::RESPONSE_PORT, &[0x10, 0x00, 0, 0]);
    });
    let (outcome, _) = h.client_packet(&udp, ClientHandle(0), &packet);
    assert_eq!(outcome, ClientOutcome::RepliedFrom { source: addr(SERVER), destination: addr("198.51.100.9:4096") });

    let tcp = FiveTuple { transport: Transport::Tcp, ..udp };
    let packet = binding(|w| {
        w.attr(AttrType::CHANGE_REQUEST, &change(true, false));
    });
    let (outcome, reply) = h.client_packet(&tcp, ClientHandle(0), &packet);
    assert_eq!(outcome, ClientOutcome::Replied);
    assert_error(&Response::new(reply), 400);
    // A Binding over TCP still tells the client its alternate address.
    let (_, reply) = h.client_packet(&tcp, ClientHandle(0), &binding(|_| {}));
    assert_eq!(plain_address(&Response::new(reply), AttrType::OTHER_ADDRESS), Some(addr(ALTERNATE)));
}

/// RFC 5780 §6.1 asks for PADDING up to the MTU; tern pads only up to the
/// request's own size, so a padded request is never amplified.
#[test]
fn padding_fills_the_response_up_to_the_request_size_only() {
    let mut h = discovery_harness(false);
    let tuple = FiveTuple { client: addr("198.51.100.9:1234"), server: addr(SERVER), transport: Transport::Udp };
    for (request_padding, fingerprint) in [(1400, false), (1400, true), (0, false), (13, true)] {
        let packet = binding(|w| {
            w.attr(AttrType::PADDING, &vec![0xAB; request_padding]);
            if fingerprint {
                w.fingerprint();
            }
        });
        let (_, reply) = h.client_packet(&tuple, ClientHandle(0), &packet);
        let response = Response::new(reply.clone());
        assert_success(&response);
        let padding = response.attr(AttrType::PADDING).expect("PADDING echoed in kind");
        assert!(reply.len() <= packet.len().max(reply.len() - padding.len()), "{request_padding}");
        assert!(reply.len() <= packet.len() + 64, "{request_padding}: {} > {}", reply.len(), packet.len());
        if request_padding >= 1000 {
            assert!(reply.len() + 4 > packet.len(), "padded to the request size: {} vs {}", reply.len(), packet.len());
        }
        assert_eq!(response.message().has_fingerprint(), fingerprint);
    }
}

#[test]
fn unauthenticated_discovery_answers_stay_within_the_amplification_bound() {
    const BOUND: usize = 64;
    let mut h = discovery_harness(false);
    let tuple = FiveTuple { client: addr("198.51.100.9:1234"), server: addr(SERVER), transport: Transport::Udp };
    for packet in [
        binding(|_| {}),
        binding(|w| {
            w.attr(AttrType::CHANGE_REQUEST, &change(true, true));
        }),
    ] {
        let (_, reply) = h.client_packet(&tuple, ClientHandle(0), &packet);
        assert!(reply.len() <= packet.len() + BOUND, "{} bytes for {}", reply.len(), packet.len());
    }
}

#[test]
fn classic_change_request_is_honoured_with_discovery_and_refused_without() {
    let client = addr("198.51.100.9:1234");
    let tuple = FiveTuple { client, server: addr(SERVER), transport: Transport::Udp };
    let classic = |flags: [u8; 4]| {
        let mut packet = Vec::new();
        let mut w =
            MessageWriter::with_header_tail(&mut packet, MessageType::new(Method::BINDING, Class::Request), [9; 16]);
        w.attr(AttrType::CHANGE_REQUEST, &flags);
        packet
    };
    let mut h = discovery_harness(true);
    let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &classic(change(true, true)));
    assert_eq!(outcome, ClientOutcome::RepliedFrom { source: addr(ALTERNATE), destination: client });
    let message = Message::parse_rfc3489(&reply).expect("classic response");
    assert_eq!(message.class(), Class::Success);
    let read = |typ| message.attribute(typ).map(|v| attr::read_address(v).expect("address"));
    assert_eq!(read(AttrType::SOURCE_ADDRESS), Some(addr(ALTERNATE)));
    assert_eq!(read(AttrType::CHANGED_ADDRESS), Some(addr(ALTERNATE)));

    let mut h = Harness::with_config(ServerConfig { rfc3489: true, ..ServerConfig::default() });
    let (outcome, reply) = h.client_packet(&tuple, ClientHandle(0), &classic(change(false, true)));
    assert_eq!(outcome, ClientOutcome::Replied);
    let message = Message::parse_rfc3489(&reply).expect("classic response");
    assert_eq!(message.class(), Class::Error);
    let (outcome, _) = h.client_packet(&tuple, ClientHandle(0), &classic(change(false, false)));
    assert_eq!(outcome, ClientOutcome::Replied);
}
