//! The PROXY protocol (v1 and v2) on TCP and TLS listeners, against the
//! real binary on loopback: the client a header names is the client for
//! XOR-MAPPED-ADDRESS, the per-IP connection cap and the logs; a header
//! from an untrusted peer, a missing or broken one, and one that does not
//! come in time close the connection and are counted; and HAProxy
//! (Debian's `haproxy`) in front of tern, with `send-proxy` and
//! `send-proxy-v2`, in TCP mode and passing TLS through, gets each client
//! its own address.
//!
//! On loopback every address is local, so the roles have addresses of
//! their own: the load balancer (HAProxy, or the test speaking for it)
//! connects from [`BALANCER`], the only trusted source, and clients from
//! [`CLIENT`]; tern must report [`CLIENT`], never [`BALANCER`].

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;

use common::haproxy::{self, Haproxy, SendProxy};
use common::{
    ANSWER_TIMEOUT, TcpClient, TcpRead, TernServer, TestCert, assert_binding_success, binding_request, count, find_log,
    logged, parse_response, run_tern, scratch_file,
};
use tern::client::tls::ALPN_STUN;
use tern::io::clock;
use tern::proto::Transport;
use tern::proto::demux::StreamFramer;

/// The load balancer's address: the one `proxy.trusted` names.
const BALANCER: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
/// A client's address, which nothing trusts.
const CLIENT: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
const TRUSTED: &str = "127.0.0.3/32";
const MAX_READS: usize = 1000;

/// `tern serve` with a PROXY TCP listener trusting [`BALANCER`], debug logs
/// and `extra`.
fn start(extra: &[&str]) -> TernServer {
    let mut args = vec!["--proxy-listen", "127.0.0.1:0", "--proxy-trusted", TRUSTED, "--log-level", "debug"];
    args.extend_from_slice(extra);
    TernServer::start(&args)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("literal")
}

/// A v1 header for a TCP client `source` that connected to `destination`.
fn v1(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let family = if source.is_ipv4() { "TCP4" } else { "TCP6" };
    format!("PROXY {family} {} {} {} {}\r\n", source.ip(), destination.ip(), source.port(), destination.port())
        .into_bytes()
}

/// A v2 PROXY header for an IPv4 TCP client, with a NOOP TLV after the
/// addresses.
fn v2(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (SocketAddr::V4(source), SocketAddr::V4(destination)) = (source, destination) else {
        panic!("IPv4 addresses only here");
    };
    let mut block = Vec::new();
    block.extend(source.ip().octets());
    block.extend(destination.ip().octets());
    block.extend(source.port().to_be_bytes());
    block.extend(destination.port().to_be_bytes());
    block.extend([0x04, 0x00, 0x02, 0, 0]);
    v2_header(0x21, 0x11, &block)
}

/// A v2 LOCAL header: a load balancer's own health check.
fn v2_local() -> Vec<u8> {
    v2_header(0x20, 0x00, &[])
}

fn v2_header(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bytes.extend([command, family]);
    bytes.extend(u16::try_from(block.len()).expect("a short block").to_be_bytes());
    bytes.extend(block);
    bytes
}

/// Sends `header` and a Binding request in one write and returns the
/// XOR-MAPPED-ADDRESS of the answer.
fn binding_after(connection: &mut TcpClient, header: &[u8]) -> SocketAddr {
    let (tid, request) = binding_request(true);
    connection.send(&[header, &request[..]].concat());
    assert_binding_success(&parse_response(&connection.read_frame()), tid)
}

/// Asserts the server closes `connection` without answering anything.
fn assert_closed(connection: &mut TcpClient, what: &str) {
    match connection.read(ANSWER_TIMEOUT) {
        TcpRead::Closed(unread) => assert!(unread.is_empty(), "{what}: closed without an answer: {unread:02x?}"),
        other => panic!("{what}: expected the connection to be closed, got {other:?}"),
    }
}

/// Runs a TLS handshake over `stream` and a Binding inside it; returns the
/// XOR-MAPPED-ADDRESS.
fn tls_binding(cert: &TestCert, stream: TcpStream) -> SocketAddr {
    let mut tls = cert.client(&[ALPN_STUN]).connect(stream, ANSWER_TIMEOUT).expect("TLS handshake after the header");
    let (tid, request) = binding_request(false);
    tls.write_all(&request).expect("request sent");
    let mut framer = StreamFramer::new();
    let deadline = clock::now() + ANSWER_TIMEOUT;
    for _ in 0..MAX_READS {
        if let Some(frame) = framer.next_frame().expect("STUN framing") {
            return assert_binding_success(&parse_response(frame), tid);
        }
        assert!(clock::now() < deadline, "no answer over TLS within {ANSWER_TIMEOUT:?}");
        let mut chunk = [0u8; 4096];
        let n = tls.read(&mut chunk).expect("reading the answer");
        assert!(n > 0, "the server closed the TLS connection without answering");
        framer.extend(&chunk[..n]);
    }
    panic!("no answer over TLS");
}

/// A TCP connection from `local` to `server`.
fn connect_from(local: IpAddr, server: SocketAddr) -> TcpStream {
    TcpClient::connect_from(local, server).stream
}

#[test]
fn the_header_names_the_client_for_the_binding() {
    let server = start(&[]);
    let listener = server.proxy_addr(Transport::Tcp);

    let client = addr("192.0.2.10:50000");
    let mut v2_connection = TcpClient::connect_from(BALANCER, listener);
    assert_eq!(binding_after(&mut v2_connection, &v2(client, listener)), client, "v2: the header's client");
    // The connection goes on as that client.
    let (tid, request) = binding_request(false);
    assert_eq!(assert_binding_success(&parse_response(&v2_connection.transact(&request)), tid), client);

    // v1, IPv6, in pieces: half a header, the rest, then the request.
    let client = addr("[2001:db8::10]:443");
    let header = v1(client, addr("[2001:db8::1]:3478"));
    let mut v1_connection = TcpClient::connect_from(BALANCER, listener);
    v1_connection.send(&header[..10]);
    assert!(matches!(v1_connection.read(Duration::from_millis(200)), TcpRead::Nothing), "no answer yet");
    v1_connection.send(&header[10..]);
    let (tid, request) = binding_request(false);
    let mapped = assert_binding_success(&parse_response(&v1_connection.transact(&request)), tid);
    assert_eq!(mapped, client, "v1: the header's IPv6 client over an IPv4 connection");

    // A LOCAL header (a health check) names nobody: the peer is the client.
    let mut check = TcpClient::connect_from(BALANCER, listener);
    let own = check.local_addr();
    assert_eq!(binding_after(&mut check, &v2_local()), own, "LOCAL: the connection's own peer");

    // The plain TCP listener beside it takes no header.
    TcpClient::connect(server.tcp_addr()).assert_binding_works();

    drop((v2_connection, v1_connection, check));
    let (stopped, lines) = server.stop_with_summary();
    assert_eq!(count(&stopped, "proxy_headers"), 3, "{stopped}");
    let read = logged(&lines, "PROXY header read");
    assert_eq!(read.len(), 3, "{read:?}");
    assert_eq!(read[0]["client"], "192.0.2.10:50000", "{read:?}");
    assert_eq!(read[0]["version"], "v2", "{read:?}");
    assert_eq!(read[1]["client"], "[2001:db8::10]:443", "{read:?}");
    assert_eq!(read[1]["version"], "v1", "{read:?}");
    for line in &read {
        let proxy: SocketAddr = line["proxy"].as_str().and_then(|p| p.parse().ok()).expect("the proxy's address");
        assert_eq!(proxy.ip(), BALANCER, "{line}");
    }
}

#[test]
fn connections_without_a_usable_header_are_closed_and_counted() {
    let config = scratch_file("proxy-timeout.toml", "[proxy]\nheader_timeout = 1\n");
    let server = start(&["--config", config.to_str().expect("utf-8 path")]);
    let listener = server.proxy_addr(Transport::Tcp);
    let client = addr("192.0.2.10:50000");

    // A well-formed header from a peer that is not a trusted load balancer.
    let mut untrusted = TcpClient::connect_from(CLIENT, listener);
    let (_, request) = binding_request(false);
    untrusted.send(&[&v2(client, listener)[..], &request[..]].concat());
    assert_closed(&mut untrusted, "a header from an untrusted peer");

    // STUN straight away: no header.
    let mut missing = TcpClient::connect_from(BALANCER, listener);
    missing.send(&request);
    assert_closed(&mut missing, "no header");

    let mut malformed = TcpClient::connect_from(BALANCER, listener);
    malformed.send(b"PROXY TCP4 nowhere 127.0.0.1 1 2\r\n");
    assert_closed(&mut malformed, "a broken header");

    // Silence, and half a header: both closed at the deadline.
    let mut silent = TcpClient::connect_from(BALANCER, listener);
    let mut halfway = TcpClient::connect_from(BALANCER, listener);
    halfway.send(&v2(client, listener)[..20]);
    assert_closed(&mut silent, "no header in time");
    assert_closed(&mut halfway, "half a header in time");

    // The listener still serves a load balancer that sends a header.
    let mut good = TcpClient::connect_from(BALANCER, listener);
    assert_eq!(binding_after(&mut good, &v1(client, listener)), client);
    drop(good);

    let (stopped, lines) = server.stop_with_summary();
    for (field, expected) in [
        ("proxy_untrusted", 1),
        ("proxy_missing", 1),
        ("proxy_malformed", 1),
        ("proxy_timeouts", 2),
        ("proxy_headers", 1),
        ("proxy_closed", 0),
    ] {
        assert_eq!(count(&stopped, field), expected, "{field}: {stopped}");
    }
    let refused = find_log(&lines, "connection refused: not from a trusted PROXY source (proxy.trusted)")
        .unwrap_or_else(|| panic!("the untrusted peer is logged:\n{}", lines.join("\n")));
    assert!(refused["peer"].as_str().is_some_and(|peer| peer.starts_with("127.0.0.2:")), "{refused}");
}

#[test]
fn the_per_ip_cap_counts_the_client_the_header_names() {
    let server = start(&["--max-tcp-per-ip", "1"]);
    let listener = server.proxy_addr(Transport::Tcp);
    let first = addr("192.0.2.10:1000");
    let mut a = TcpClient::connect_from(BALANCER, listener);
    assert_eq!(binding_after(&mut a, &v2(first, listener)), first);
    // The same client again, through the same load balancer: over its cap.
    let mut b = TcpClient::connect_from(BALANCER, listener);
    let (_, request) = binding_request(false);
    b.send(&[&v2(addr("192.0.2.10:1001"), listener)[..], &request[..]].concat());
    assert_closed(&mut b, "a second connection of one client");
    // Another client through the same load balancer is under its own.
    let other = addr("192.0.2.11:1000");
    let mut c = TcpClient::connect_from(BALANCER, listener);
    assert_eq!(binding_after(&mut c, &v1(other, listener)), other);
    drop((a, c));
    let (stopped, _) = server.stop_with_summary();
    assert_eq!(count(&stopped, "tcp_refused"), 1, "{stopped}");
    assert_eq!(count(&stopped, "proxy_headers"), 3, "{stopped}");
}

#[test]
fn a_tls_listener_reads_the_header_before_the_handshake() {
    let cert = TestCert::new("proxy-tls");
    let server =
        start(&["--tls-cert", cert.cert_path(), "--tls-key", cert.key_path(), "--proxy-tls-listen", "127.0.0.1:0"]);
    assert!(server.addrs(Transport::Tls).is_empty(), "no direct TLS listener unless asked: {:?}", server.listening());
    let listener = server.proxy_addr(Transport::Tls);
    let client = addr("192.0.2.10:50000");
    let mut stream = connect_from(BALANCER, listener);
    stream.write_all(&v2(client, listener)).expect("header sent");
    assert_eq!(tls_binding(&cert, stream), client);
    let (stopped, _) = server.stop_with_summary();
    assert_eq!(count(&stopped, "tls_handshakes"), 1, "{stopped}");
    assert_eq!(count(&stopped, "proxy_headers"), 1, "{stopped}");
}

#[test]
fn proxy_configuration_mistakes_name_the_key_and_the_file() {
    let file = scratch_file("proxy-untrusted.toml", "[proxy]\nlisten = [\"127.0.0.1:3479\"]\n");
    let output = run_tern(&["check", "--config", file.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains(file.to_str().expect("utf-8 path")) && stderr.contains("key `proxy.trusted`"), "{stderr}");

    let output = run_tern(&["check", "--proxy-tls-listen", "127.0.0.1:5350", "--proxy-trusted", TRUSTED]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("key `proxy.tls_listen`: needs a certificate"), "{stderr}");

    let output = run_tern(&["check", "--proxy-listen", "127.0.0.1:3479", "--proxy-trusted", TRUSTED]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("[proxy]") && stdout.contains("127.0.0.3/32"), "{stdout}");
}

// ---------------------------------------------------------------------------
// HAProxy in front

#[test]
fn stun_through_haproxy_reports_the_clients_own_address() {
    if !haproxy::installed() {
        return;
    }
    let cert = TestCert::new("haproxy");
    let server =
        start(&["--tls-cert", cert.cert_path(), "--tls-key", cert.key_path(), "--proxy-tls-listen", "127.0.0.1:0"]);
    for version in [SendProxy::V1, SendProxy::V2] {
        let haproxy = Haproxy::start(server.proxy_addr(Transport::Tcp), version, BALANCER);
        let mut client = TcpClient::connect_from(CLIENT, haproxy.addr());
        let (tid, request) = binding_request(true);
        let mapped = assert_binding_success(&parse_response(&client.transact(&request)), tid);
        assert_eq!(mapped, client.local_addr(), "{version:?}: the client's own address, not HAProxy's");
    }
    // TLS passed through: the header, then the client's own handshake.
    let haproxy = Haproxy::start(server.proxy_addr(Transport::Tls), SendProxy::V2, BALANCER);
    let stream = connect_from(CLIENT, haproxy.addr());
    let local = stream.local_addr().expect("connected");
    assert_eq!(tls_binding(&cert, stream), local, "over TLS: the client's own address");
    drop(haproxy);

    let (stopped, lines) = server.stop_with_summary();
    assert!(count(&stopped, "proxy_headers") >= 3, "{stopped}");
    assert_eq!(count(&stopped, "proxy_untrusted"), 0, "{stopped}");
    let read = logged(&lines, "PROXY header read");
    let versions: Vec<&str> = read.iter().filter_map(|line| line["version"].as_str()).collect();
    assert!(versions.contains(&"v1") && versions.contains(&"v2"), "{read:?}");
    for line in &read {
        let client: SocketAddr = line["client"].as_str().and_then(|c| c.parse().ok()).expect("client");
        let proxy: SocketAddr = line["proxy"].as_str().and_then(|p| p.parse().ok()).expect("proxy");
        assert_eq!((client.ip(), proxy.ip()), (CLIENT, BALANCER), "{line}");
    }
}
