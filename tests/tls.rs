//! STUN and TURN over TLS (RFC 8489 §6.2.2, RFC 8656 §3.1, ALPN per RFC
//! 7443) against the real binary on loopback, with certificates rcgen makes
//! at test time: our client's probes, ALPN, the handshake timeout and cap,
//! certificate reload on SIGHUP, and the configuration errors.

mod common;

use std::io::Read;
use std::net::TcpStream;
use std::time::Duration;

use common::{ANSWER_TIMEOUT, TernServer, TestCert, count, run_tern, scratch_file};
use serde_json::Value;
use tern::client::ClientSocket;
use tern::client::stun::{self, BindingResult};
use tern::client::tls::{ALPN_STUN, ALPN_TURN, TlsClient, TlsOptions};
use tern::client::turn::{Credentials, TurnSession};
use tern::io::clock;

const TIMEOUT: Duration = Duration::from_secs(5);

/// A client that accepts any certificate, to see which one the server presents.
fn insecure_client() -> TlsClient {
    TlsClient::new(&TlsOptions { server_name: "localhost".into(), insecure: true, ..TlsOptions::default() })
        .expect("client config")
}

fn start(cert: &TestCert, extra: &[&str]) -> TernServer {
    let mut args = cert.serve_args();
    args.extend_from_slice(extra);
    TernServer::start(&args)
}

fn assert_binding_maps_to_local(socket: &mut ClientSocket) {
    let local = socket.local_addr().expect("local address");
    match stun::binding(socket, TIMEOUT).expect("binding over TLS") {
        BindingResult::Mapped { address, .. } => assert_eq!(address, local, "XOR-MAPPED-ADDRESS is our address"),
        other => panic!("expected a mapped address, got {other:?}"),
    }
}

/// Reads from a raw TCP connection until EOF or reset; returns how long it
/// took, or `None` if the connection is still open after `wait`.
fn time_until_closed(stream: &mut TcpStream, wait: Duration) -> Option<Duration> {
    let started = clock::now();
    let deadline = started + wait;
    let mut buf = [0u8; 4096];
    for _ in 0..10_000 {
        let now = clock::now();
        if now >= deadline {
            return None;
        }
        stream.set_read_timeout(Some(deadline - now)).expect("set_read_timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(clock::now() - started),
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return Some(clock::now() - started),
        }
    }
    None
}

#[test]
fn stun_binding_over_tls_with_tern_stun() {
    let cert = TestCert::new("stun");
    let server = start(&cert, &[]);
    let addr = server.tls_addr().to_string();
    let output = run_tern(&["stun", &addr, "--tls", "--tls-ca", cert.cert_path(), "--sni", "localhost"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "tern stun --tls: {output:?}");
    assert!(stdout.contains("ALPN stun.nat-discovery"), "{stdout}");
    assert!(stdout.contains("(tls): mapped address 127.0.0.1:"), "{stdout}");

    // The certificate names 127.0.0.1 too, so the IP works as the name, and
    // a stuns: URI implies TLS.
    let uri = format!("stuns:{addr}");
    let output = run_tern(&["stun", &uri, "--tls-ca", cert.cert_path()]);
    assert!(output.status.success(), "tern stun {uri}: {output:?}");

    // Without the CA the certificate is refused; --insecure takes it.
    let output = run_tern(&["stun", &addr, "--tls", "--sni", "localhost", "--timeout", "2s"]);
    assert!(!output.status.success(), "an unknown CA is refused: {output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("UnknownIssuer"), "{output:?}");
    let output = run_tern(&["stun", &addr, "--tls", "--insecure"]);
    assert!(output.status.success(), "--insecure: {output:?}");

    // The library client: the mapped address is the client's own.
    let mut socket = ClientSocket::open_tls(server.tls_addr(), &cert.client(&[ALPN_STUN]), TIMEOUT).expect("tls");
    assert_binding_maps_to_local(&mut socket);
    drop(socket);

    let (stopped, _) = server.stop_with_summary();
    assert!(count(&stopped, "tls_handshakes") >= 4, "{stopped}");
    assert_eq!(count(&stopped, "tls_handshake_timeouts"), 0, "{stopped}");
}

#[test]
fn turn_relays_over_tls_with_tern_turn() {
    let cert = TestCert::new("turn");
    let server = start(&cert, &["--user", "alice:wonderland", "--allow-peer", "127.0.0.0/8", "--workers", "2"]);
    let addr = server.tls_addr().to_string();
    let output = run_tern(&[
        "turn",
        &addr,
        "--tls",
        "--tls-ca",
        cert.cert_path(),
        "--sni",
        "localhost",
        "-u",
        "alice",
        "-p",
        "wonderland",
        "--timeout",
        "5s",
    ]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "tern turn --tls failed:\n{stdout}\n{output:?}");
    for step in ["allocate", "create permission", "send indication", "channel bind", "channel data", "delete"] {
        assert!(stdout.lines().any(|l| l.starts_with(step) && l.contains(" ok ")), "step {step}:\n{stdout}");
    }

    // One allocation per connection: closing the connection deletes it.
    let socket = ClientSocket::open_tls(server.tls_addr(), &cert.client(&[ALPN_TURN]), TIMEOUT).expect("tls");
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let mut session = TurnSession::new(socket, credentials, TIMEOUT);
    let allocated = session.allocate(None).expect("allocate over TLS");
    assert_eq!(allocated.mapped, session.socket().local_addr().expect("local"));
    let again = session.allocate(None).expect_err("a second Allocate on the same connection");
    assert_eq!(again.code(), Some(437), "{again}");
    drop(session);
    server.wait_for_log("allocation deleted", 2, ANSWER_TIMEOUT);

    let (stopped, lines) = server.stop_with_summary();
    let created: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "allocation created")
        .collect();
    assert_eq!(created.len(), 2, "{}", lines.join("\n"));
    for allocation in &created {
        assert_eq!(allocation["span"]["transport"], "tls", "{allocation}");
    }
    let deleted: Vec<Value> = lines
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "allocation deleted")
        .collect();
    let reasons: Vec<&str> = deleted.iter().filter_map(|v| v["reason"].as_str()).collect();
    assert!(reasons.contains(&"refreshed with lifetime 0"), "{reasons:?}");
    assert!(reasons.contains(&"connection closed"), "{reasons:?}");
    assert_eq!(count(&stopped, "relayed_to_peer"), 2, "{stopped}");
    // The two round trips, and the packet the probe's peer sends first to
    // open a NAT towards the relay.
    assert_eq!(count(&stopped, "relayed_to_client"), 3, "{stopped}");
}

#[test]
fn alpn_negotiates_stun_turn_and_refuses_other_protocols() {
    let cert = TestCert::new("alpn");
    let server = start(&cert, &[]);
    let addr = server.tls_addr();

    let socket = ClientSocket::open_tls(addr, &cert.client(&[b"h2", ALPN_TURN]), TIMEOUT).expect("stun.turn");
    assert_eq!(socket.alpn_protocol(), Some(ALPN_TURN), "the server picks stun.turn");
    let socket = ClientSocket::open_tls(addr, &cert.client(&[ALPN_STUN]), TIMEOUT).expect("stun.nat-discovery");
    assert_eq!(socket.alpn_protocol(), Some(ALPN_STUN));

    // No ALPN at all: accepted, and served.
    let mut socket = ClientSocket::open_tls(addr, &cert.client(&[]), TIMEOUT).expect("no ALPN");
    assert_eq!(socket.alpn_protocol(), None);
    assert!(socket.tls_version().is_some());
    assert_binding_maps_to_local(&mut socket);

    // Only other protocols: the handshake fails with no_application_protocol.
    let refused = ClientSocket::open_tls(addr, &cert.client(&[b"h2", b"http/1.1"]), TIMEOUT)
        .err()
        .expect("no common ALPN protocol");
    assert!(refused.to_string().contains("NoApplicationProtocol"), "{refused}");

    let (stopped, _) = server.stop_with_summary();
    assert_eq!(count(&stopped, "tls_handshake_failures"), 1, "{stopped}");
    assert_eq!(count(&stopped, "tls_handshakes"), 3, "{stopped}");
}

#[test]
fn a_connection_that_does_not_finish_its_handshake_is_closed() {
    let cert = TestCert::new("timeout");
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\n[tls]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\nhandshake_timeout = 1\n",
        cert.cert_path(),
        cert.key_path()
    );
    let file = scratch_file("timeout.toml", &config);
    let file = file.to_str().expect("utf-8 path");
    let server = TernServer::start_without_default_listen(&["--config", file, "--tls-listen", "127.0.0.1:0"]);

    // A TCP connection that never says hello.
    let mut idle = TcpStream::connect_timeout(&server.tls_addr(), ANSWER_TIMEOUT).expect("connect");
    let closed_after = time_until_closed(&mut idle, Duration::from_secs(10)).expect("closed within 10 s");
    // Checked once a second: closed between 1 and about 2 s after accept.
    assert!(closed_after >= Duration::from_millis(900), "closed too early: {closed_after:?}");
    // A client that does finish is served as usual.
    let mut socket = ClientSocket::open_tls(server.tls_addr(), &cert.client(&[ALPN_STUN]), TIMEOUT).expect("tls");
    assert_binding_maps_to_local(&mut socket);
    drop(socket);

    let (stopped, _) = server.stop_with_summary();
    assert_eq!(count(&stopped, "tls_handshake_timeouts"), 1, "{stopped}");
    assert_eq!(count(&stopped, "tls_handshakes"), 1, "{stopped}");
}

#[test]
fn handshakes_beyond_the_cap_are_refused() {
    let cert = TestCert::new("cap");
    let config = format!(
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[tls]\nlisten = [\"127.0.0.1:0\"]\ncert = {:?}\nkey = {:?}\nmax_handshakes = 2\n",
        cert.cert_path(),
        cert.key_path()
    );
    let file = scratch_file("cap.toml", &config);
    let file = file.to_str().expect("utf-8 path");
    let server = TernServer::start_without_default_listen(&["--config", file, "--tls-listen", "127.0.0.1:0"]);

    // Two silent connections hold both handshake slots of the one worker;
    // the worker accepts in arrival order, so the third is the one refused.
    let held: Vec<TcpStream> =
        (0..2).map(|_| TcpStream::connect_timeout(&server.tls_addr(), ANSWER_TIMEOUT).expect("connect")).collect();
    let mut third = TcpStream::connect_timeout(&server.tls_addr(), ANSWER_TIMEOUT).expect("connect");
    assert!(time_until_closed(&mut third, Duration::from_secs(5)).is_some(), "the third connection is closed");
    let refused = ClientSocket::open_tls(server.tls_addr(), &cert.client(&[]), TIMEOUT);
    assert!(refused.is_err(), "a full handshake is refused while the slots are held");
    drop(held);
    // The slots free up when the silent connections close.
    let mut served = None;
    for _ in 0..50 {
        if let Ok(socket) = ClientSocket::open_tls(server.tls_addr(), &cert.client(&[]), TIMEOUT) {
            served = Some(socket);
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_binding_maps_to_local(&mut served.expect("served once the held connections are gone"));

    let (stopped, _) = server.stop_with_summary();
    assert!(count(&stopped, "tls_refused") >= 2, "{stopped}");
}

#[test]
fn sighup_reloads_the_certificate_and_keeps_the_old_one_when_the_new_is_broken() {
    let first = TestCert::new("reload-a");
    let second = TestCert::new("reload-b");
    // The server reads these paths; the test rewrites them.
    let cert_path = scratch_file("live-cert.pem", &std::fs::read_to_string(&first.cert).expect("read"));
    let key_path = scratch_file("live-key.pem", &std::fs::read_to_string(&first.key).expect("read"));
    let args = [
        "--tls-listen",
        "127.0.0.1:0",
        "--tls-cert",
        cert_path.to_str().expect("utf-8"),
        "--tls-key",
        key_path.to_str().expect("utf-8"),
    ];
    let server = TernServer::start(&args);
    let presented = |server: &TernServer| -> Vec<u8> {
        let socket = ClientSocket::open_tls(server.tls_addr(), &insecure_client(), TIMEOUT).expect("tls");
        socket.peer_certificates().and_then(|c| c.first()).expect("a certificate").to_vec()
    };
    assert_eq!(presented(&server), first.der, "the first certificate");
    let mut established = ClientSocket::open_tls(server.tls_addr(), &insecure_client(), TIMEOUT).expect("tls");

    std::fs::copy(&second.cert, &cert_path).expect("copy");
    std::fs::copy(&second.key, &key_path).expect("copy");
    server.signal(libc::SIGHUP);
    server.wait_for_log("tls certificate reloaded", 1, ANSWER_TIMEOUT);
    assert_eq!(presented(&server), second.der, "new handshakes get the new certificate");
    assert_binding_maps_to_local(&mut established);
    assert_eq!(
        established.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec()),
        Some(first.der.clone()),
        "an established connection keeps going on the old one"
    );

    // A broken certificate, then a key that does not match: both refused.
    std::fs::write(&cert_path, "-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n")
        .expect("write");
    server.signal(libc::SIGHUP);
    let failed = server.wait_for_log("tls certificate reload failed; keeping the previous certificate", 1, TIMEOUT);
    assert!(failed[0]["error"].as_str().is_some_and(|e| e.contains("live-cert.pem")), "{failed:?}");
    assert_eq!(presented(&server), second.der, "the previous certificate stays");
    std::fs::copy(&first.cert, &cert_path).expect("copy");
    server.signal(libc::SIGHUP);
    let failed = server.wait_for_log("tls certificate reload failed; keeping the previous certificate", 2, TIMEOUT);
    assert!(failed[1]["error"].as_str().is_some_and(|e| e.contains("does not belong")), "{failed:?}");
    assert_eq!(presented(&server), second.der, "the previous certificate stays");
    assert_binding_maps_to_local(&mut established);

    let (stopped, _) = server.stop_with_summary();
    assert_eq!(count(&stopped, "tls_handshake_failures"), 0, "{stopped}");
}

#[test]
fn sighup_without_tls_does_not_stop_tern() {
    let server = TernServer::start(&[]);
    server.signal(libc::SIGHUP);
    server.wait_for_log("reload: no TLS certificate configured", 1, ANSWER_TIMEOUT);
    let mut client = common::UdpClient::new(server.udp_addr());
    client.assert_binding_works();
    server.stop_with_summary();
}

/// `tern check ARGS` must fail with one stderr line naming `key`; returns it.
fn check_refuses(args: &[&str], key: &str) -> String {
    let mut full = vec!["check"];
    full.extend_from_slice(args);
    let output = run_tern(&full);
    assert_eq!(output.status.code(), Some(1), "tern {full:?}: {output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr).trim_end().to_owned();
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(&format!("key `{key}`")), "names {key}: {stderr}");
    stderr
}

#[test]
fn tls_configuration_mistakes_refuse_to_start() {
    let cert = TestCert::new("config");
    let other = TestCert::new("config-other");
    let missing = cert.cert.with_file_name("no-such-key.pem");
    let missing = missing.to_str().expect("utf-8");

    let line = check_refuses(&["--tls-cert", cert.cert_path()], "tls.key");
    assert!(line.contains("is missing"), "{line}");
    check_refuses(&["--tls-key", cert.key_path()], "tls.cert");
    check_refuses(&["--tls-listen", "127.0.0.1:5349"], "tls.listen");
    let line = check_refuses(&["--tls-cert", cert.cert_path(), "--tls-key", missing], "tls.key");
    assert!(line.contains("no-such-key.pem"), "names the file: {line}");
    let line = check_refuses(&["--tls-cert", cert.cert_path(), "--tls-key", other.key_path()], "tls.cert");
    assert!(line.contains("does not belong"), "{line}");
    let garbage = scratch_file("garbage.pem", "not a certificate\n");
    let line =
        check_refuses(&["--tls-cert", garbage.to_str().expect("utf-8"), "--tls-key", cert.key_path()], "tls.cert");
    assert!(line.contains("garbage.pem"), "{line}");
    let line = check_refuses(
        &[
            "--listen",
            "127.0.0.1:5349",
            "--tls-listen",
            "127.0.0.1:5349",
            "--tls-cert",
            cert.cert_path(),
            "--tls-key",
            cert.key_path(),
        ],
        "tls.listen",
    );
    assert!(line.contains("also in `listen`"), "{line}");

    // In a file: the file and the key are named; unknown keys are refused.
    let file = scratch_file("tls-no-key.toml", &format!("[tls]\ncert = {:?}\n", cert.cert_path()));
    let line = check_refuses(&["--config", file.to_str().expect("utf-8")], "tls.key");
    assert!(line.contains(file.to_str().expect("utf-8")), "names the file: {line}");
    let file = scratch_file("tls-typo.toml", "[tls]\ncertificate = \"x\"\n");
    let output = run_tern(&["check", "--config", file.to_str().expect("utf-8")]);
    assert_eq!(output.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&output.stderr).contains("certificate"), "{output:?}");

    // `tern serve` refuses the same way, before listening.
    let failure =
        TernServer::try_start(&["--tls-listen", "127.0.0.1:0", "--tls-cert", cert.cert_path(), "--tls-key", missing])
            .err()
            .expect("tern serve refuses a missing key");
    assert_eq!(failure.status.and_then(|s| s.code()), Some(1), "{failure}");
    assert!(failure.stderr.iter().any(|l| l.contains("key `tls.key`") && l.contains("no-such-key.pem")), "{failure}");
}

#[test]
fn tern_check_shows_the_tls_settings() {
    let cert = TestCert::new("check");
    let output = run_tern(&["check", "--tls-cert", cert.cert_path(), "--tls-key", cert.key_path()]);
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let printed: toml::Table = stdout.parse().unwrap_or_else(|e| panic!("TOML: {e}\n{stdout}"));
    let tls = printed["tls"].as_table().unwrap_or_else(|| panic!("[tls] table:\n{stdout}"));
    assert_eq!(tls["listen"].as_array().map(|a| a.len()), Some(1), "{stdout}");
    assert_eq!(tls["listen"][0].as_str(), Some("0.0.0.0:5349"), "the default TLS port: {stdout}");
    assert_eq!(tls["cert"].as_str(), Some(cert.cert_path()));
    assert_eq!(tls["key"].as_str(), Some(cert.key_path()));
    assert_eq!(tls["max_handshakes"].as_integer(), Some(256));
    assert_eq!(tls["handshake_timeout"].as_integer(), Some(10));
}

#[test]
fn tcp_connection_caps_count_tls_connections_too() {
    let cert = TestCert::new("caps");
    let server = start(&cert, &["--max-tcp-per-ip", "1"]);
    let mut first = ClientSocket::open_tls(server.tls_addr(), &cert.client(&[]), TIMEOUT).expect("first");
    // The cap is shared with plain TCP: a second connection, TLS or not, is closed.
    let mut tcp = TcpStream::connect_timeout(&server.tcp_addr(), ANSWER_TIMEOUT).expect("connect");
    assert!(time_until_closed(&mut tcp, Duration::from_secs(5)).is_some(), "a TCP connection over the cap is closed");
    let second = ClientSocket::open_tls(server.tls_addr(), &cert.client(&[]), TIMEOUT);
    assert!(second.is_err(), "a TLS connection over the cap is closed");
    assert_binding_maps_to_local(&mut first);

    let (stopped, _) = server.stop_with_summary();
    assert_eq!(count(&stopped, "tcp_refused"), 2, "{stopped}");
    assert_eq!(count(&stopped, "tls_handshakes"), 1, "{stopped}");
}
