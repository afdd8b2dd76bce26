//! STUN Binding against the real `tern serve` binary on loopback (RFC 8489).

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;

use common::{
    COMMAND_TIMEOUT, SILENCE, TcpClient, TernServer, UdpClient, assert_binding_success, binding_request, error_code,
    find_log, message_with, parse_response, request_with, require_tool, run_bounded, run_tern, scratch_file,
};
use tern::proto::Transport;
use tern::proto::stun::attr::{self, AttrType};
use tern::proto::stun::{Class, Message, MessageType, Method, TransactionId};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Runs `tern stun` and returns the mapped addresses it printed.
fn tern_stun(server: SocketAddr, extra: &[&str]) -> Vec<SocketAddr> {
    let target = server.to_string();
    let mut args = vec!["stun", target.as_str(), "--count", "3", "--interval", "10ms", "--timeout", "5s"];
    args.extend_from_slice(extra);
    let output = run_tern(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "tern {args:?} failed: {}\nstdout:\n{stdout}", output.status);
    let transport = if extra.contains(&"--tcp") { "tcp" } else { "udp" };
    let prefix = format!("{server} ({transport}): mapped address ");
    let mapped: Vec<SocketAddr> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let (addr, rtt) = rest.split_once(", rtt ").unwrap_or_else(|| panic!("no rtt in {rest:?}"));
            assert!(rtt.ends_with(" ms"), "rtt in ms: {rest:?}");
            addr.parse().unwrap_or_else(|e| panic!("mapped address {addr:?}: {e}"))
        })
        .collect();
    assert_eq!(mapped.len(), 3, "one mapped line per request:\n{stdout}");
    assert!(stdout.contains("3 requests, 3 mapped"), "summary line:\n{stdout}");
    for addr in &mapped {
        assert_eq!(addr.ip(), LOCALHOST, "{stdout}");
        assert_ne!(addr.port(), 0, "{stdout}");
    }
    mapped
}

#[test]
fn tern_stun_over_udp_and_tcp() {
    let server = TernServer::start(&[]);
    assert_eq!(server.udp_addr(), server.tcp_addr(), "port 0 resolves to one port for UDP and TCP");
    assert_eq!(server.udp_addr().ip(), LOCALHOST);
    assert_ne!(server.udp_addr().port(), 0);

    let udp = tern_stun(server.udp_addr(), &[]);
    // One socket sends all three requests, so all three see one mapping.
    assert!(udp.iter().all(|a| *a == udp[0]), "{udp:?}");
    let tcp = tern_stun(server.tcp_addr(), &["--tcp"]);
    assert!(tcp.iter().all(|a| *a == tcp[0]), "one connection, one mapping: {tcp:?}");
}

#[test]
fn tern_stun_exits_non_zero_when_nothing_answers() {
    // A bound socket that never reads: the port is ours and silent.
    let silent = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let target = silent.local_addr().expect("addr").to_string();
    let output = run_tern(&["stun", &target, "--timeout", "300ms"]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("no response within"), "{stdout}");
}

#[test]
fn binding_over_udp_maps_the_exact_source_address() {
    let server = TernServer::start(&[]);
    let mut client = UdpClient::new(server.udp_addr());

    let (tid, request) = binding_request(false);
    let answer = client.transact(&request);
    let response = parse_response(&answer);
    assert_eq!(assert_binding_success(&response, tid), client.local_addr());
    assert!(!response.has_fingerprint(), "no FINGERPRINT in the request, none in the response");
    assert!(!response.has_integrity(), "an unauthenticated Binding is answered without MESSAGE-INTEGRITY");
    assert_eq!(response.attribute(AttrType::SOFTWARE), None, "no SOFTWARE unless configured");

    let (tid, request) = binding_request(true);
    let answer = client.transact(&request);
    let response = parse_response(&answer);
    assert_eq!(assert_binding_success(&response, tid), client.local_addr());
    assert!(response.has_fingerprint(), "FINGERPRINT in the request, FINGERPRINT in the response");
    assert!(response.verify_fingerprint(), "the response's FINGERPRINT is valid");
}

#[test]
fn binding_over_tcp_maps_the_exact_source_address() {
    let server = TernServer::start(&[]);
    let mut client = TcpClient::connect(server.tcp_addr());

    let (tid, request) = binding_request(false);
    let answer = client.transact(&request);
    let response = parse_response(&answer);
    assert_eq!(assert_binding_success(&response, tid), client.local_addr());
    assert!(!response.has_fingerprint());

    // A second transaction on the same connection.
    let (tid, request) = binding_request(true);
    let answer = client.transact(&request);
    let response = parse_response(&answer);
    assert_eq!(assert_binding_success(&response, tid), client.local_addr());
    assert!(response.verify_fingerprint());
}

#[test]
fn turnutils_stunclient_gets_a_reflexive_address() {
    if !require_tool("turnutils_stunclient", "coturn") {
        return;
    }
    let server = TernServer::start(&[]);
    let port = server.udp_addr().port().to_string();
    let output = run_bounded(Command::new("turnutils_stunclient").args(["-p", &port, "127.0.0.1"]), COMMAND_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "turnutils_stunclient failed: {output:?}");
    let reflexive: Vec<SocketAddr> = stdout
        .lines()
        .filter_map(|line| line.split_once("reflexive addr: "))
        .map(|(_, addr)| addr.trim().parse().unwrap_or_else(|e| panic!("reflexive addr {addr:?}: {e}")))
        .collect();
    assert!(!reflexive.is_empty(), "no reflexive address in:\n{stdout}");
    for addr in reflexive {
        assert_eq!(addr.ip(), LOCALHOST, "{stdout}");
        assert_ne!(addr.port(), 0, "{stdout}");
    }
}

#[test]
fn unknown_comprehension_required_attribute_gets_420() {
    let server = TernServer::start(&[]);
    let check = |answer: &[u8], tid: TransactionId| {
        let response = parse_response(answer);
        assert_eq!(response.message_type(), MessageType::new(Method::BINDING, Class::Error));
        assert_eq!(response.transaction_id(), tid);
        assert_eq!(error_code(&response), 420);
        let listed: Vec<AttrType> = attr::read_unknown_attributes(
            response.attribute(AttrType::UNKNOWN_ATTRIBUTES).expect("UNKNOWN-ATTRIBUTES"),
        )
        .expect("well-formed UNKNOWN-ATTRIBUTES")
        .collect();
        assert_eq!(listed, [AttrType(0x7F01)]);
        assert_eq!(response.attribute(AttrType::XOR_MAPPED_ADDRESS), None, "an error carries no mapped address");
    };
    let (tid, request) = request_with(Method::BINDING, |w| {
        w.attr(AttrType(0x7F01), b"what is this");
    });
    let mut udp = UdpClient::new(server.udp_addr());
    check(&udp.transact(&request), tid);
    let mut tcp = TcpClient::connect(server.tcp_addr());
    check(&tcp.transact(&request), tid);

    // Unknown comprehension-optional attributes (0x8000-0xFFFF) are ignored.
    let (tid, request) = request_with(Method::BINDING, |w| {
        w.attr(AttrType(0xC0DE), b"optional");
    });
    let answer = udp.transact(&request);
    assert_eq!(assert_binding_success(&parse_response(&answer), tid), udp.local_addr());
}

#[test]
fn unknown_method_gets_400() {
    let server = TernServer::start(&[]);
    let mut client = UdpClient::new(server.udp_addr());
    let (tid, request) = request_with(Method(0x0FF), |_| {});
    let answer = client.transact(&request);
    let response = parse_response(&answer);
    assert_eq!(response.message_type(), MessageType::new(Method(0x0FF), Class::Error));
    assert_eq!(response.transaction_id(), tid);
    assert_eq!(error_code(&response), 400);
}

#[test]
fn binding_indication_gets_no_answer() {
    let server = TernServer::start(&[]);
    let mut udp = UdpClient::new(server.udp_addr());
    let (_, indication) = message_with(MessageType::new(Method::BINDING, Class::Indication), |_| {});
    udp.send(&indication);
    udp.assert_silence(SILENCE, "Binding indication over UDP");
    udp.assert_binding_works();

    let mut tcp = TcpClient::connect(server.tcp_addr());
    tcp.send(&indication);
    // The next frame on the connection must answer the request, not the indication.
    tcp.assert_binding_works();
}

#[test]
fn responses_sent_to_the_server_get_no_answer() {
    let server = TernServer::start(&[]);
    let mut udp = UdpClient::new(server.udp_addr());
    for class in [Class::Success, Class::Error] {
        let (_, response) = message_with(MessageType::new(Method::BINDING, class), |w| {
            w.xor_address(AttrType::XOR_MAPPED_ADDRESS, &"127.0.0.1:9".parse().expect("literal"));
        });
        udp.send(&response);
    }
    udp.assert_silence(SILENCE, "responses sent to the server");
    udp.assert_binding_works();
}

#[test]
fn two_workers_answer_fifty_clients() {
    let server = TernServer::start(&["--workers", "2"]);
    let first = find_log(&server.stderr_lines(), "listening").expect("listening line");
    assert_eq!(first["workers"], 2, "{first}");
    let addr = server.udp_addr();
    let mapped: Vec<(SocketAddr, SocketAddr)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..50)
            .map(|_| {
                scope.spawn(move || {
                    let mut client = UdpClient::new(addr);
                    let (tid, request) = binding_request(true);
                    let answer = client.transact(&request);
                    let response = parse_response(&answer);
                    assert!(response.verify_fingerprint());
                    (client.local_addr(), assert_binding_success(&response, tid))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("client thread")).collect()
    });
    for (local, seen) in &mapped {
        assert_eq!(local, seen, "each client gets its own address back");
    }
    // And over TCP, a connection per client.
    let tcp_addr = server.tcp_addr();
    std::thread::scope(|scope| {
        for _ in 0..50 {
            scope.spawn(move || TcpClient::connect(tcp_addr).assert_binding_works());
        }
    });
    let (status, log) = server.stop_with_log();
    assert!(status.success(), "{status}");
    let stopped = find_log(&log, "tern stopped").expect("the server logs its totals when it stops");
    assert!(stopped["binding_responses"].as_u64().is_some_and(|n| n >= 100), "{stopped}");
    assert_eq!(stopped["malformed"], 0, "{stopped}");
}

#[test]
fn ipv6_loopback() {
    if let Err(e) = UdpSocket::bind("[::1]:0") {
        eprintln!("skipping: cannot bind [::1] on this machine ({e})");
        return;
    }
    let server = TernServer::start(&["--listen", "[::1]:0"]);
    assert!(server.udp_addr().is_ipv6() && server.udp_addr().ip().is_loopback(), "{:?}", server.listening());
    assert_eq!(server.udp_addr(), server.tcp_addr());

    let mut udp = UdpClient::new(server.udp_addr());
    let (tid, request) = binding_request(true);
    let answer = udp.transact(&request);
    let response = parse_response(&answer);
    // An IPv6 XOR-MAPPED-ADDRESS is XORed with the cookie and the transaction ID.
    assert_eq!(assert_binding_success(&response, tid), udp.local_addr());
    assert!(response.verify_fingerprint());

    let mut tcp = TcpClient::connect(server.tcp_addr());
    tcp.assert_binding_works();

    let output = run_tern(&["stun", &server.udp_addr().to_string(), "--timeout", "5s"]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("mapped address [::1]:"), "{output:?}");
}

#[test]
fn ipv4_and_ipv6_listen_addresses_together() {
    if UdpSocket::bind("[::1]:0").is_err() {
        eprintln!("skipping: cannot bind [::1] on this machine");
        return;
    }
    let server = TernServer::start(&["--listen", "127.0.0.1:0", "--listen", "[::1]:0"]);
    let udp = server.addrs(Transport::Udp);
    let tcp = server.addrs(Transport::Tcp);
    assert_eq!(udp.len(), 2, "{:?}", server.listening());
    assert_eq!(udp, tcp, "UDP and TCP on the same addresses");
    for addr in udp {
        UdpClient::new(addr).assert_binding_works();
        TcpClient::connect(addr).assert_binding_works();
    }
}

#[test]
fn classic_rfc3489_requests_are_answered_only_when_enabled() {
    // A classic request: no magic cookie, a 128-bit transaction ID.
    let (_, mut classic) = binding_request(false);
    classic[4..8].copy_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);

    let strict = TernServer::start(&[]);
    let mut client = UdpClient::new(strict.udp_addr());
    client.send(&classic);
    client.assert_silence(SILENCE, "RFC 3489 request with rfc3489 off");
    client.assert_binding_works();

    let config = scratch_file("rfc3489.toml", "rfc3489 = true\n");
    let classic_server = TernServer::start(&["--config", config.to_str().expect("utf-8 path")]);
    let mut client = UdpClient::new(classic_server.udp_addr());
    let answer = client.transact(&classic);
    let response = Message::parse_rfc3489(&answer).expect("well-formed classic response");
    assert_eq!(response.message_type(), MessageType::new(Method::BINDING, Class::Success));
    assert_eq!(answer[4..20], classic[4..20], "the whole 128-bit transaction ID is echoed");
    let mapped = attr::read_address(response.attribute(AttrType::MAPPED_ADDRESS).expect("MAPPED-ADDRESS"));
    assert_eq!(mapped, Ok(client.local_addr()));
    assert_eq!(response.attribute(AttrType::XOR_MAPPED_ADDRESS), None, "RFC 3489 has no XOR-MAPPED-ADDRESS");
    // And modern requests still work on the same server.
    client.assert_binding_works();
}

#[test]
fn software_and_reason_phrases_from_the_config_file() {
    let config = scratch_file("software.toml", "software = \"tern-e2e\"\nreason_phrases = true\n");
    let server = TernServer::start(&["--config", config.to_str().expect("utf-8 path")]);
    let mut client = UdpClient::new(server.udp_addr());

    let (tid, request) = binding_request(true);
    let answer = client.transact(&request);
    let response = parse_response(&answer);
    assert_eq!(assert_binding_success(&response, tid), client.local_addr());
    assert_eq!(response.attribute(AttrType::SOFTWARE), Some(&b"tern-e2e"[..]));
    assert!(response.verify_fingerprint(), "FINGERPRINT covers SOFTWARE and comes last");

    let (_, request) = request_with(Method::BINDING, |w| {
        w.attr(AttrType(0x7F01), b"");
    });
    let answer = client.transact(&request);
    let response = parse_response(&answer);
    let code = attr::read_error_code(response.attribute(AttrType::ERROR_CODE).expect("ERROR-CODE")).expect("valid");
    assert_eq!(code.code, 420);
    assert!(!code.reason.is_empty(), "reason_phrases = true puts a reason phrase in ERROR-CODE");
}

#[test]
fn sigterm_stops_the_server_cleanly() {
    let server = TernServer::start(&["--workers", "2"]);
    // Some state to tear down: an open TCP connection and a served request.
    let mut tcp = TcpClient::connect(server.tcp_addr());
    tcp.assert_binding_works();
    let (status, log) = server.stop_with_log();
    assert!(status.success(), "SIGTERM ends tern with exit status 0, got {status}");
    assert!(find_log(&log, "shutting down").is_some_and(|l| l["signal"] == 15), "{log:#?}");
    assert!(find_log(&log, "tern stopped").is_some(), "{log:#?}");
}

#[test]
fn sigint_stops_the_server_cleanly() {
    let server = TernServer::start(&[]);
    UdpClient::new(server.udp_addr()).assert_binding_works();
    let (status, log) = server.stop_with_signal(libc::SIGINT);
    assert!(status.success(), "SIGINT ends tern with exit status 0, got {status}");
    assert!(find_log(&log, "shutting down").is_some_and(|l| l["signal"] == 2), "{log:#?}");
}
