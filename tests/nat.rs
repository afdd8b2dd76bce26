//! RFC 5780 NAT behaviour discovery against the real `tern serve` binary:
//! the server on loopback (127.0.0.1 primary, 127.0.0.2 alternate), `tern
//! nat` against it, coturn's `turnutils_natdiscovery` against it, and a real
//! NAT built from network namespaces when the machine allows it.
//!
//! Every datagram is checked twice: where it came from (the socket tern
//! actually used) and what RESPONSE-ORIGIN says, which must agree.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::time::Duration;

use common::netns::{self, NamespacedServer, Plan, Topology};
use common::{SILENCE, TcpClient, TernServer, error_code, parse_response, request_with, run_tern, scratch_file};
use tern::io::clock;
use tern::proto::stun::attr::{self, AttrType, ChangeRequest};
use tern::proto::stun::{Message, Method, TransactionId};

const PRIMARY_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
const ALTERNATE_IP: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
/// Port pairs tried before giving up on finding a free one.
const PORT_ATTEMPTS: usize = 20;
/// How long to wait for one answer that must come.
const ANSWER_WAIT: Duration = Duration::from_secs(5);

/// Whether UDP and TCP port `port` is free on both loopback IPs: bound and
/// released again, so someone may still take it before tern binds it
/// (callers retry).
fn pair_free(port: u16) -> bool {
    [PRIMARY_IP, ALTERNATE_IP].iter().all(|ip| {
        [port, port + 1].iter().all(|p| {
            let addr = SocketAddr::new(*ip, *p);
            UdpSocket::bind(addr).is_ok() && TcpListener::bind(addr).is_ok()
        })
    })
}

/// Starts tern with RFC 5780 on 127.0.0.1:P and 127.0.0.2 (ports P and
/// P + 1), plus `extra` lines of configuration.
fn start_discovery(extra: &str) -> (TernServer, u16) {
    let mut failures = Vec::new();
    for _ in 0..PORT_ATTEMPTS {
        let port = common::free_udp_port(PRIMARY_IP);
        if port == u16::MAX || !pair_free(port) {
            continue;
        }
        let config =
            format!("listen = [\"{PRIMARY_IP}:{port}\"]\nrfc5780 = true\nalternate_ip = \"{ALTERNATE_IP}\"\n{extra}");
        let path = scratch_file("rfc5780.toml", &config);
        let path = path.to_string_lossy();
        match TernServer::try_start_without_default_listen(&["--config", &path, "--workers", "2"]) {
            Ok(server) => return (server, port),
            Err(failure) => failures.push(failure.to_string()),
        }
    }
    panic!("tern with rfc5780 did not start in {PORT_ATTEMPTS} attempts: {failures:#?}");
}

fn change(change_ip: bool, change_port: bool) -> [u8; 4] {
    ChangeRequest { change_ip, change_port }.to_bytes()
}

/// Sends `request` from `socket` to `to` until an answer with its
/// transaction ID arrives; returns the answer and the address it came from.
fn exchange(socket: &UdpSocket, to: SocketAddr, tid: TransactionId, request: &[u8]) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let deadline = clock::now() + ANSWER_WAIT;
    for _ in 0..50 {
        let now = clock::now();
        if now >= deadline {
            break;
        }
        socket.send_to(request, to).expect("send");
        socket.set_read_timeout(Some((deadline - now).min(Duration::from_millis(500)))).expect("timeout");
        if let Ok((n, from)) = socket.recv_from(&mut buf)
            && common::header_tid(&buf[..n]) == Some(tid)
        {
            return (buf[..n].to_vec(), from);
        }
    }
    panic!("no answer from {to} within {ANSWER_WAIT:?}");
}

fn address(message: &Message<'_>, typ: AttrType) -> SocketAddr {
    let value = message.attribute(typ).unwrap_or_else(|| panic!("{typ:?} missing"));
    attr::read_address(value).expect("well-formed address")
}

#[test]
fn binding_carries_other_address_and_change_request_picks_the_socket() {
    let (server, port) = start_discovery("");
    let primary = SocketAddr::new(PRIMARY_IP, port);
    let listening: Vec<SocketAddr> = server.addrs(tern::proto::Transport::Udp);
    for addr in [primary, SocketAddr::new(PRIMARY_IP, port + 1), SocketAddr::new(ALTERNATE_IP, port)] {
        assert!(listening.contains(&addr), "{addr} not in {listening:?}");
    }
    let socket = UdpSocket::bind((PRIMARY_IP, 0)).expect("bind");
    let local = socket.local_addr().expect("addr");

    for (flags, expected_ip, expected_port) in [
        (None, PRIMARY_IP, port),
        (Some(change(false, false)), PRIMARY_IP, port),
        (Some(change(false, true)), PRIMARY_IP, port + 1),
        (Some(change(true, false)), ALTERNATE_IP, port),
        (Some(change(true, true)), ALTERNATE_IP, port + 1),
    ] {
        let (tid, request) = request_with(Method::BINDING, |w| {
            if let Some(flags) = flags {
                w.attr(AttrType::CHANGE_REQUEST, &flags);
            }
        });
        let (bytes, from) = exchange(&socket, primary, tid, &request);
        let expected = SocketAddr::new(expected_ip, expected_port);
        assert_eq!(from, expected, "datagram source for {flags:?}");
        let message = parse_response(&bytes);
        assert_eq!(common::assert_binding_success(&message, tid), local);
        assert_eq!(address(&message, AttrType::RESPONSE_ORIGIN), expected, "RESPONSE-ORIGIN for {flags:?}");
        assert_eq!(address(&message, AttrType::OTHER_ADDRESS), SocketAddr::new(ALTERNATE_IP, port + 1));
        assert_eq!(address(&message, AttrType::MAPPED_ADDRESS), local);
    }

    // Sent to the alternate address, the other address is the primary.
    let (tid, request) = request_with(Method::BINDING, |_| {});
    let (bytes, from) = exchange(&socket, SocketAddr::new(ALTERNATE_IP, port + 1), tid, &request);
    assert_eq!(from, SocketAddr::new(ALTERNATE_IP, port + 1));
    assert_eq!(address(&parse_response(&bytes), AttrType::OTHER_ADDRESS), primary);

    // Over TCP the mapping tests work, the filtering ones cannot (400).
    let mut tcp = TcpClient::connect(primary);
    let (_, request) = request_with(Method::BINDING, |_| {});
    let answer = tcp.transact(&request);
    assert_eq!(address(&parse_response(&answer), AttrType::OTHER_ADDRESS), SocketAddr::new(ALTERNATE_IP, port + 1));
    let (_, request) = request_with(Method::BINDING, |w| {
        w.attr(AttrType::CHANGE_REQUEST, &change(false, true));
    });
    assert_eq!(error_code(&parse_response(&tcp.transact(&request))), 400);
    server.stop();
}

#[test]
fn without_rfc5780_change_request_gets_420_listing_it() {
    let server = TernServer::start(&[]);
    let mut client = common::UdpClient::new(server.udp_addr());
    let (_, request) = request_with(Method::BINDING, |w| {
        w.attr(AttrType::CHANGE_REQUEST, &change(true, true));
    });
    let answer = client.transact(&request);
    let message = parse_response(&answer);
    assert_eq!(error_code(&message), 420);
    let listed: Vec<AttrType> =
        attr::read_unknown_attributes(message.attribute(AttrType::UNKNOWN_ATTRIBUTES).expect("UNKNOWN-ATTRIBUTES"))
            .expect("well-formed")
            .collect();
    assert_eq!(listed, [AttrType::CHANGE_REQUEST]);
    assert!(message.attribute(AttrType::OTHER_ADDRESS).is_none());
    client.assert_silence(SILENCE, "one answer per request");
    client.assert_binding_works();
    server.stop();
}

#[test]
fn rfc5780_configuration_errors_refuse_to_start() {
    for (args, key) in [
        (vec!["--listen", "127.0.0.1:3478", "--rfc5780"], "alternate_ip"),
        (vec!["--listen", "127.0.0.1:3478", "--rfc5780", "--alternate-ip", "127.0.0.1"], "alternate_ip"),
        (vec!["--listen", "0.0.0.0:3478", "--rfc5780", "--alternate-ip", "127.0.0.2"], "listen"),
        (vec!["--listen", "127.0.0.1:0", "--rfc5780", "--alternate-ip", "127.0.0.2"], "listen"),
        (vec!["--listen", "127.0.0.1:3478", "--alternate-ip", "127.0.0.2"], "alternate_ip"),
    ] {
        for command in ["serve", "check"] {
            let mut full = vec![command];
            full.extend_from_slice(&args);
            let output = run_tern(&full);
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert_eq!(output.status.code(), Some(1), "{full:?}: {stderr}");
            assert!(stderr.contains(&format!("key `{key}`")), "{full:?} names {key}: {stderr}");
        }
    }
    let output = run_tern(&["check", "--listen", "127.0.0.1:3478", "--rfc5780", "--alternate-ip", "127.0.0.2"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains("rfc5780 = true") && stdout.contains("alternate_ip = \"127.0.0.2\""), "{stdout}");
}

#[test]
fn tern_nat_on_loopback_finds_no_nat() {
    let (server, port) = start_discovery("");
    let target = SocketAddr::new(PRIMARY_IP, port).to_string();
    let output = run_tern(&["nat", &target, "--timeout", "2s", "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "tern nat failed: {}\n{stdout}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"));
    assert_eq!(report["nat"], false, "{report}");
    assert_eq!(report["mapping"], "endpoint-independent", "{report}");
    assert_eq!(report["filtering"], "endpoint-independent", "{report}");
    assert_eq!(report["hairpinning"], serde_json::Value::Null, "{report}");
    assert_eq!(report["other_address"], SocketAddr::new(ALTERNATE_IP, port + 1).to_string());
    assert_eq!(report["local_address"], report["mapped_address"]);

    let output = run_tern(&["nat", &target, "--timeout", "2s"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains("NAT:         none"), "{stdout}");
    assert!(stdout.contains("filtering:   endpoint-independent"), "{stdout}");
    server.stop();
}

#[test]
fn tern_nat_says_when_the_server_lacks_rfc5780() {
    let server = TernServer::start(&[]);
    let output = run_tern(&["nat", &server.udp_addr().to_string(), "--timeout", "2s"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("does not support RFC 5780"), "{stderr}");
    server.stop();
}

/// coturn's RFC 5780 client against tern: mapping, filtering, hairpinning,
/// each also with 1500 bytes of PADDING (which tern pads its answers for
/// only up to the request's size).
#[test]
fn turnutils_natdiscovery_reports_the_behaviours() {
    if !common::require_tool("turnutils_natdiscovery", "coturn") {
        return;
    }
    let (server, port) = start_discovery("");
    let other = SocketAddr::new(ALTERNATE_IP, port + 1);
    for padding in [false, true] {
        let mut command = std::process::Command::new("turnutils_natdiscovery");
        command.args(["-m", "-f", "-H", "-p", &port.to_string()]);
        if padding {
            command.arg("-P");
        }
        command.arg(PRIMARY_IP.to_string());
        let output = common::run_bounded(&mut command, common::COMMAND_TIMEOUT);
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "padding {padding}: {}\n{text}", output.status);
        for expected in [
            "NAT with Endpoint Independent Mapping!".to_owned(),
            "NAT with Endpoint Independent Filtering!".to_owned(),
            "No ALG: Mapped == XOR-Mapped".to_owned(),
            format!("Other addr: : {other}"),
            // The answer to CHANGE-REQUEST (change IP and port) says where it came from.
            format!("Response origin: : {other}"),
            "Received a request (maybe a successful hairpinning)".to_owned(),
        ] {
            assert!(text.contains(&expected), "padding {padding}: {expected:?} missing from\n{text}");
        }
        let lower = text.to_lowercase();
        assert!(!lower.contains("error") && !lower.contains("timeout"), "padding {padding}:\n{text}");
    }
    server.stop();
}

// ---------------------------------------------------------------------------
// A real NAT: three network namespaces made by the test (common::netns)
//
//   client ns (10.77.1.2) ── router ns (10.77.1.1 | 172.31.77.1, nft masquerade) ── server ns (172.31.77.10, .11)
//
// Needs root, `ip` and `nft`; skips with the reason otherwise.

const NETNS_SERVER: &str = "172.31.77.10";
const NETNS_ALTERNATE: &str = "172.31.77.11";

const PLAN: Plan<'static> = Plan {
    client: "10.77.1.2/24",
    router_client: &["10.77.1.1/24"],
    router_server: "172.31.77.1/24",
    server: &["172.31.77.10/24", "172.31.77.11/24"],
};

/// Replaces the router's NAT with masquerade plus `options` (empty, or
/// `fully-random` for a new port per destination).
fn masquerade(topology: &Topology, options: &str) -> Result<(), String> {
    let rules = format!(
        "table ip tern_nat {{\n  chain post {{\n    type nat hook postrouting priority srcnat; policy accept;\n    \
         oifname \"{}\" masquerade {options}\n  }}\n}}\n",
        topology.uplink
    );
    topology.nft(&topology.router, &rules)
}

/// Runs `tern nat` in the client namespace and returns its JSON report.
fn tern_nat_behind(topology: &Topology) -> serde_json::Value {
    let target = format!("{NETNS_SERVER}:3478");
    let output = topology.tern_in_client(&["nat", &target, "--timeout", "1s", "--json"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "tern nat behind the NAT: {output:?}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn tern_nat_behind_a_real_nat_tells_cone_from_symmetric() {
    if let Some(missing) = netns::tools_missing() {
        eprintln!("skipping: {missing}");
        return;
    }
    let topology = match Topology::build(&PLAN) {
        Ok(topology) => topology,
        Err(reason) => {
            eprintln!("skipping: cannot build network namespaces (needs root): {reason}");
            return;
        }
    };
    if let Err(reason) = masquerade(&topology, "") {
        eprintln!("skipping: cannot install an nftables NAT in a namespace: {reason}");
        return;
    }
    let listen = format!("{NETNS_SERVER}:3478");
    let _server = NamespacedServer::start(
        &topology.server,
        &["--listen", &listen, "--rfc5780", "--alternate-ip", NETNS_ALTERNATE],
        &listen,
    );

    // Plain masquerade: Linux keeps the source port and one mapping for
    // every destination; conntrack lets in only what answers the exact
    // 5-tuple; nothing hairpins without a DNAT rule.
    let cone = tern_nat_behind(&topology);
    assert_eq!(cone["nat"], true, "{cone}");
    assert_eq!(cone["mapping"], "endpoint-independent", "{cone}");
    assert_eq!(cone["filtering"], "address-and-port-dependent", "{cone}");
    assert_eq!(cone["hairpinning"], false, "{cone}");
    assert_eq!(cone["other_address"], format!("{NETNS_ALTERNATE}:3479"), "{cone}");
    let mapped: SocketAddr = cone["mapped_address"].as_str().and_then(|a| a.parse().ok()).expect("mapped address");
    assert_eq!(mapped.ip(), "172.31.77.1".parse::<IpAddr>().expect("literal"), "{cone}");

    // fully-random: a new random port per destination, a symmetric NAT.
    masquerade(&topology, "fully-random").unwrap_or_else(|e| panic!("{e}"));
    let symmetric = tern_nat_behind(&topology);
    assert_eq!(symmetric["nat"], true, "{symmetric}");
    assert_eq!(symmetric["mapping"], "address-and-port-dependent", "{symmetric}");
    assert_eq!(symmetric["filtering"], "address-and-port-dependent", "{symmetric}");
}
