//! RFC 6062 (TURN with TCP relays) end to end: tern's own client and
//! coturn's `turnutils_uclient -T` against the real binary, with TCP peers
//! on loopback that the tests run themselves.
//!
//! Servers run with several workers, so a data connection often reaches
//! another worker than its allocation's and is handed over: every test
//! below binds more than one data connection, which covers both paths.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use common::{TernServer, TestCert, require_tool, run_bounded};
use rustls::{ClientConnection, StreamOwned};
use tern::client::ClientSocket;
use tern::client::tcp_relay::{connection_bind, connection_bind_tls, echo_round_trip};
use tern::client::tls::{ALPN_TURN, TlsClient, TlsOptions};
use tern::client::turn::{Credentials, TurnError, TurnSession};
use tern::io::clock;
use tern::proto::Transport;

const USER_FLAG: &str = "alice:wonderland";
/// Each step's wait; generous, the machine is shared.
const TIMEOUT: Duration = Duration::from_secs(10);
/// How long to listen for what must not come.
const SILENCE: Duration = Duration::from_millis(500);
/// Polling step and turn bound of the loops that wait for a socket.
const POLL: Duration = Duration::from_millis(10);
const MAX_TURNS: usize = 10_000;
/// RFC 6062 §5.2: an unbound connection lives 30 s; the sweep runs each second.
const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// Relay ports outside Linux's ephemeral range, away from other tests.
const RELAY_PORTS: &str = "62000-62999";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

fn start(extra: &[&str]) -> TernServer {
    // Debug logs name each bound connection, which some tests count.
    let mut args = vec!["--user", USER_FLAG, "--workers", "4", "--relay-ports", RELAY_PORTS, "--user-quota", "0"];
    args.extend(["--log-level", "debug"]);
    args.extend_from_slice(extra);
    TernServer::start(&args)
}

/// A server whose peer policy lets loopback peers through.
fn start_open() -> TernServer {
    start(&["--allow-peer", "127.0.0.0/8"])
}

fn alice(server: &TernServer) -> TurnSession {
    let socket = ClientSocket::open(server.tcp_addr(), Transport::Tcp, TIMEOUT).expect("TCP connection to tern");
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    TurnSession::new(socket, credentials, TIMEOUT)
}

fn bind(server: &TernServer, session: &TurnSession, id: u32) -> Result<TcpStream, TurnError> {
    let mut auth = session.auth().cloned().expect("authenticated by the Allocate");
    connection_bind(server.tcp_addr(), &mut auth, id, TIMEOUT)
}

/// A TCP echo server on loopback for `connections` connections, each echoed
/// by a thread of its own until its peer closes (or [`TIMEOUT`] of silence).
fn spawn_echo(connections: usize) -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).expect("echo listener");
    let addr = listener.local_addr().expect("bound");
    std::thread::spawn(move || {
        for _ in 0..connections {
            let Some(stream) = accept_within(&listener, TIMEOUT * 6) else { return };
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(TIMEOUT * 6));
                let Ok(mut reader) = stream.try_clone() else { return };
                let mut writer = stream;
                let _ = std::io::copy(&mut reader, &mut writer);
            });
        }
    });
    addr
}

/// The next connection of `listener`, waiting at most `wait`.
fn accept_within(listener: &TcpListener, wait: Duration) -> Option<TcpStream> {
    listener.set_nonblocking(true).ok()?;
    let deadline = clock::now() + wait;
    for _ in 0..MAX_TURNS * 10 {
        match listener.accept() {
            Ok((stream, _)) => {
                stream.set_nonblocking(false).ok()?;
                return Some(stream);
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock && clock::now() < deadline => std::thread::sleep(POLL),
            Err(_) => return None,
        }
    }
    None
}

/// The JSON log lines whose message is `message`.
fn logged(log: &[String], message: &str) -> Vec<serde_json::Value> {
    log.iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|line| line["message"] == message)
        .collect()
}

/// `allocations` allocations over `transport` were deleted, each having
/// relayed `(to_peer, to_client)` bytes.
fn assert_traffic(log: &[String], allocations: usize, transport: &str, bytes: (u64, u64)) {
    let deleted = logged(log, "allocation deleted");
    assert_eq!(deleted.len(), allocations);
    for line in &deleted {
        assert_eq!(line["span"]["transport"], transport, "{line}");
        let counted = (line["bytes_to_peer"].as_u64(), line["bytes_to_client"].as_u64());
        assert_eq!(counted, (Some(bytes.0), Some(bytes.1)), "{line}");
    }
}

/// Reads exactly `len` bytes (within [`TIMEOUT`]).
fn read_exactly(stream: &mut TcpStream, len: usize) -> Vec<u8> {
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut bytes = vec![0u8; len];
    stream.read_exact(&mut bytes).expect("bytes through the relay");
    bytes
}

/// Whether the other side closed `stream` (EOF or reset) within [`TIMEOUT`];
/// bytes still in flight are skipped.
fn closes(stream: &mut TcpStream) -> bool {
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = [0u8; 4096];
    for _ in 0..MAX_TURNS {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted) => return true,
            Err(_) => return false,
        }
    }
    false
}

/// A port on loopback nobody listens on: bound, then released.
fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind((LOCALHOST, 0)).expect("bind");
    listener.local_addr().expect("bound")
}

/// A TCP connection from `local_ip` to `to`.
fn connect_from(local_ip: IpAddr, to: SocketAddr) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(socket2::Protocol::TCP))
        .expect("socket");
    socket.bind(&SocketAddr::new(local_ip, 0).into()).expect("bind peer");
    socket.connect_timeout(&to.into(), TIMEOUT).expect("connect to the relayed address");
    socket.into()
}

#[test]
fn connect_bind_and_echo_a_megabyte() {
    let server = start_open();
    let echo = spawn_echo(3);
    for round in 0..3 {
        let mut session = alice(&server);
        let allocated = session.allocate_tcp(false).expect("TCP allocation");
        assert_eq!(allocated.relayed.ip(), LOCALHOST, "round {round}");
        let id = session.connect(echo).expect("Connect to the echo peer");
        let mut data = bind(&server, &session, id).expect("ConnectionBind");
        echo_round_trip(&mut data, 1 << 20, TIMEOUT).unwrap_or_else(|e| panic!("round {round}: {e}"));
        session.refresh(0).expect("delete");
    }
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    assert_eq!(logged(&log, "connection bound").len(), 3, "three data connections bound");
    // The bytes are counted in each allocation's traffic and in the totals.
    assert_traffic(&log, 3, "tcp", (1 << 20, 1 << 20));
    // Three pairs, one MiB each way.
    let stopped = common::find_log(&log, "tern stopped").expect("final report");
    assert_eq!(stopped["tcp_relayed_bytes"].as_u64(), Some(3 * (2 << 20)), "{stopped}");
}

/// `max_bps` paces a pair instead of dropping bytes: tern reads no more
/// than the allocation's budget, and TCP flow control holds the rest. The
/// budget starts with a second's worth, so 3 seconds' worth towards the
/// peer cannot get through in less than 2 seconds, however fast the machine.
#[test]
fn max_bps_paces_a_pair_without_losing_a_byte() {
    const RATE: usize = 200_000;
    let server = start(&["--allow-peer", "127.0.0.0/8", "--max-bps", &RATE.to_string()]);
    let echo = spawn_echo(1);
    let mut session = alice(&server);
    session.allocate_tcp(false).expect("TCP allocation");
    let id = session.connect(echo).expect("Connect to the echo peer");
    let mut data = bind(&server, &session, id).expect("ConnectionBind");
    let started = clock::now();
    echo_round_trip(&mut data, 3 * RATE, TIMEOUT).expect("every byte back");
    let elapsed = clock::now() - started;
    assert!(elapsed >= Duration::from_millis(1900), "paced at {RATE} B/s, yet done in {elapsed:?}");
    session.refresh(0).expect("delete");
}

#[test]
fn inbound_peer_with_a_permission_reaches_the_client_both_ways() {
    let server = start_open();
    let mut session = alice(&server);
    let relayed = session.allocate_tcp(false).expect("TCP allocation").relayed;
    session.create_permission(&[SocketAddr::new(LOCALHOST, 0)]).expect("permission for 127.0.0.1");
    for round in 0..2 {
        let mut peer = connect_from(LOCALHOST, relayed);
        let attempt = session
            .connection_attempt(clock::now() + TIMEOUT)
            .expect("control connection")
            .unwrap_or_else(|| panic!("round {round}: no ConnectionAttempt"));
        assert_eq!(attempt.peer, peer.local_addr().expect("bound"), "round {round}");
        // The peer may speak first: its bytes wait for the bind.
        peer.write_all(b"early words from the peer").expect("peer writes");
        let mut data = bind(&server, &session, attempt.connection_id).expect("ConnectionBind");
        assert_eq!(read_exactly(&mut data, 25), b"early words from the peer");
        data.write_all(b"and the client answers").expect("client writes");
        assert_eq!(read_exactly(&mut peer, 22), b"and the client answers");
        // Half-close from the peer: the client sees EOF and may still send.
        peer.shutdown(Shutdown::Write).expect("peer FIN");
        assert!(closes(&mut data), "round {round}: the peer's FIN reaches the client");
        data.write_all(b"last words").expect("client writes after the peer's FIN");
        assert_eq!(read_exactly(&mut peer, 10), b"last words");
        data.shutdown(Shutdown::Write).expect("client FIN");
        assert!(closes(&mut peer), "round {round}: the client's FIN reaches the peer");
    }
    session.refresh(0).expect("delete");
}

#[test]
fn inbound_peer_without_a_permission_is_closed_without_an_indication() {
    let server = start_open();
    let mut session = alice(&server);
    let relayed = session.allocate_tcp(false).expect("TCP allocation").relayed;
    session.create_permission(&[SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0)]).expect("permission");
    let mut stranger = connect_from(LOCALHOST, relayed);
    assert!(closes(&mut stranger), "a peer without a permission is closed");
    let attempt = session.connection_attempt(clock::now() + SILENCE).expect("control connection");
    assert_eq!(attempt, None, "no ConnectionAttempt for a refused peer");
    // The permitted address gets through.
    let friend = connect_from(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), relayed);
    let attempt = session.connection_attempt(clock::now() + TIMEOUT).expect("control connection");
    assert_eq!(attempt.map(|a| a.peer), Some(friend.local_addr().expect("bound")));
}

#[test]
fn connect_errors_403_447_446_and_bind_errors_400() {
    let strict = start(&[]);
    let mut session = alice(&strict);
    session.allocate_tcp(false).expect("TCP allocation");
    let echo = spawn_echo(1);
    assert_eq!(session.connect(echo).map_err(|e| e.code()).err(), Some(Some(403)), "loopback refused by default");
    drop(session);

    let server = start_open();
    let mut session = alice(&server);
    session.allocate_tcp(false).expect("TCP allocation");
    assert_eq!(session.connect(closed_port()).map_err(|e| e.code()).err(), Some(Some(447)), "nobody listens");
    let echo = spawn_echo(1);
    session.connect(echo).expect("first Connect");
    assert_eq!(session.connect(echo).map_err(|e| e.code()).err(), Some(Some(446)), "second Connect to the same peer");
    let unknown = bind(&server, &session, 0x0bad_cafe).map_err(|e| e.code());
    assert_eq!(unknown.err(), Some(Some(400)), "ConnectionBind with an unknown id");
    // TCP relaying needs a TCP control connection.
    let udp = ClientSocket::open(server.udp_addr(), Transport::Udp, TIMEOUT).expect("UDP socket");
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let mut over_udp = TurnSession::new(udp, credentials, TIMEOUT);
    assert_eq!(over_udp.allocate_tcp(false).map_err(|e| e.code()).err(), Some(Some(400)));
}

#[test]
fn an_unbound_connection_expires_after_30_seconds() {
    let server = start_open();
    let mut session = alice(&server);
    session.allocate_tcp(false).expect("TCP allocation");
    let listener = TcpListener::bind((LOCALHOST, 0)).expect("peer listener");
    let id = session.connect(listener.local_addr().expect("bound")).expect("Connect");
    let mut peer = accept_within(&listener, TIMEOUT).expect("the relay connected");
    let started = clock::now();
    // Each wait gives up after TIMEOUT (10 s); the expiry comes at 30 s.
    let peer_closed = (0..6).any(|_| closes(&mut peer));
    let waited = clock::now() - started;
    assert!(peer_closed, "the peer connection is closed once the bind is overdue");
    assert!(waited + Duration::from_secs(2) >= BIND_TIMEOUT, "not before 30 s: closed after {waited:?}");
    let late = bind(&server, &session, id).map_err(|e| e.code());
    assert_eq!(late.err(), Some(Some(400)), "ConnectionBind with an expired id");
}

#[test]
fn deleting_the_allocation_or_closing_the_control_connection_closes_the_pairs() {
    let server = start_open();
    for close_control in [false, true] {
        let mut session = alice(&server);
        let relayed = session.allocate_tcp(false).expect("TCP allocation").relayed;
        session.create_permission(&[SocketAddr::new(LOCALHOST, 0)]).expect("permission");
        let mut peer = connect_from(LOCALHOST, relayed);
        let attempt = session.connection_attempt(clock::now() + TIMEOUT).expect("control").expect("attempt");
        let mut data = bind(&server, &session, attempt.connection_id).expect("ConnectionBind");
        data.write_all(b"ping").expect("write");
        assert_eq!(read_exactly(&mut peer, 4), b"ping");
        if close_control {
            drop(session);
        } else {
            session.refresh(0).expect("delete");
        }
        assert!(closes(&mut peer), "peer connection closed (control closed: {close_control})");
        assert!(closes(&mut data), "data connection closed (control closed: {close_control})");
    }
}

/// A peer that does not read slows its client down instead of growing a
/// queue in tern: the client's writes block after what kernel buffers and
/// one pipe buffer hold, and nothing is lost once the peer reads.
#[test]
fn a_peer_that_does_not_read_stops_the_client_instead_of_growing_memory() {
    /// Far more than every buffer on the way can hold: reaching it means
    /// something queues without bound.
    const UNBOUNDED: usize = 256 << 20;
    let server = start_open();
    let mut session = alice(&server);
    session.allocate_tcp(false).expect("TCP allocation");
    let listener = TcpListener::bind((LOCALHOST, 0)).expect("peer listener");
    let id = session.connect(listener.local_addr().expect("bound")).expect("Connect");
    let mut peer = accept_within(&listener, TIMEOUT).expect("the relay connected");
    let mut data = bind(&server, &session, id).expect("ConnectionBind");
    data.set_nonblocking(true).expect("non-blocking");
    let chunk = vec![0x5a; 64 * 1024];
    let mut written = 0;
    let mut blocked_since = None;
    let deadline = clock::now() + TIMEOUT * 3;
    for _ in 0..MAX_TURNS * 10 {
        if written >= UNBOUNDED || clock::now() >= deadline {
            break;
        }
        match data.write(&chunk) {
            Ok(n) => {
                written += n;
                blocked_since = None;
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let since = *blocked_since.get_or_insert_with(clock::now);
                if clock::now() - since >= Duration::from_secs(1) {
                    break;
                }
                std::thread::sleep(POLL);
            }
            Err(e) => panic!("client write failed after {written} bytes: {e}"),
        }
    }
    assert!(blocked_since.is_some(), "the client was never held back ({written} bytes written)");
    assert!(written < UNBOUNDED, "{written} bytes went in without the peer reading");
    // Once the peer reads, every byte arrives.
    peer.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0;
    for _ in 0..MAX_TURNS * 10 {
        if read >= written {
            break;
        }
        match peer.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                assert!(buf[..n].iter().all(|&b| b == 0x5a), "bytes intact");
                read += n;
            }
            Err(e) => panic!("peer read failed after {read} of {written} bytes: {e}"),
        }
    }
    assert_eq!(read, written, "nothing lost");
}

/// Every step of `tern turn --relay-transport tcp` printed " ok ".
fn assert_probe_steps_ok(stdout: &str) {
    for step in ["allocate", "connect", "connection bind", "tcp data", "delete"] {
        assert!(
            stdout.lines().any(|l| l.starts_with(step) && l.contains(" ok ")),
            "step {step:?} did not succeed:\n{stdout}"
        );
    }
}

#[test]
fn tern_turn_relay_transport_tcp_runs_every_step() {
    let server = start_open();
    let addr = server.tcp_addr().to_string();
    let output = common::run_tern(&["turn", &addr, "-u", "alice", "-p", "wonderland", "--relay-transport", "tcp"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "tern turn --relay-transport tcp failed:\n{stdout}");
    assert_probe_steps_ok(&stdout);
    // The peer policy's refusal is reported with the code.
    let strict = start(&[]);
    let addr = strict.tcp_addr().to_string();
    let output = common::run_tern(&["turn", &addr, "-u", "alice", "-p", "wonderland", "--relay-transport", "tcp"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(stdout.contains("FAILED: connect: 403"), "{stdout}");
}

#[test]
fn ipv6_tcp_relays_work_too() {
    let server = start(&["--listen", "[::1]:0", "--allow-peer", "::1/128"]);
    let addr = server.tcp_addr().to_string();
    let output = common::run_tern(&["turn", &addr, "-u", "alice", "-p", "wonderland", "--relay-transport", "tcp"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "over IPv6:\n{stdout}");
    assert!(stdout.contains("relayed [::1]:"), "{stdout}");
}

// ---------------------------------------------------------------------------
// Over TLS (`turns:`): the control and data connections are TLS, and the
// peer's bytes travel inside the data connection's session.

fn start_tls(cert: &TestCert) -> TernServer {
    let mut args = cert.serve_args();
    args.extend(["--allow-peer", "127.0.0.0/8"]);
    start(&args)
}

fn tls_client(cert: &TestCert) -> TlsClient {
    let options = TlsOptions {
        server_name: "localhost".into(),
        ca: Some(cert.cert.clone()),
        insecure: false,
        alpn: vec![ALPN_TURN.to_vec()],
    };
    TlsClient::new(&options).expect("client config")
}

/// Whether the server ended the TLS data connection (close_notify, or the
/// TCP connection closing) within the socket's read timeout.
fn tls_closes(stream: &mut StreamOwned<ClientConnection, TcpStream>) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..MAX_TURNS {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => return matches!(e.kind(), ErrorKind::UnexpectedEof | ErrorKind::ConnectionReset),
        }
    }
    false
}

#[test]
fn over_tls_connect_and_inbound_peers_relay_both_ways() {
    const ECHOED: usize = 256 << 10;
    let cert = TestCert::new("tcp-relay");
    let server = start_tls(&cert);
    let tls = tls_client(&cert);
    let echo = spawn_echo(3);
    for round in 0..3 {
        let socket = ClientSocket::open_tls(server.tls_addr(), &tls, TIMEOUT).expect("TLS connection to tern");
        let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
        let mut session = TurnSession::new(socket, credentials, TIMEOUT);
        let relayed = session.allocate_tcp(false).expect("TCP allocation over TLS").relayed;
        // Connect: the data connection echoes through the relay.
        let id = session.connect(echo).expect("Connect to the echo peer");
        let mut auth = session.auth().cloned().expect("authenticated by the Allocate");
        let mut data = connection_bind_tls(server.tls_addr(), &tls, &mut auth, id, TIMEOUT).expect("ConnectionBind");
        echo_round_trip(&mut data, ECHOED, TIMEOUT).unwrap_or_else(|e| panic!("round {round}: {e}"));
        // An inbound peer that speaks first, then half-closes.
        session.create_permission(&[SocketAddr::new(LOCALHOST, 0)]).expect("permission");
        let mut peer = connect_from(LOCALHOST, relayed);
        let attempt = session
            .connection_attempt(clock::now() + TIMEOUT)
            .expect("control connection")
            .unwrap_or_else(|| panic!("round {round}: no ConnectionAttempt"));
        peer.write_all(b"early words from the peer").expect("peer writes");
        let mut inbound = connection_bind_tls(server.tls_addr(), &tls, &mut auth, attempt.connection_id, TIMEOUT)
            .expect("ConnectionBind of the inbound peer");
        let mut early = [0u8; 25];
        inbound.read_exact(&mut early).expect("the peer's bytes inside TLS");
        assert_eq!(&early, b"early words from the peer", "round {round}");
        inbound.write_all(b"and the client answers").and_then(|()| inbound.flush()).expect("client writes");
        assert_eq!(read_exactly(&mut peer, 22), b"and the client answers");
        peer.shutdown(Shutdown::Write).expect("peer FIN");
        assert!(tls_closes(&mut inbound), "round {round}: the peer's FIN reaches the client as close_notify");
        // The client's end: close_notify and FIN reach the peer as FIN.
        inbound.conn.send_close_notify();
        inbound.flush().expect("close_notify sent");
        inbound.sock.shutdown(Shutdown::Write).expect("client FIN");
        assert!(closes(&mut peer), "round {round}: the client's end reaches the peer");
        session.refresh(0).expect("delete");
    }
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    assert_eq!(logged(&log, "connection bound").len(), 6, "six TLS data connections bound, over four workers");
    // Payload bytes, not TLS record bytes.
    assert_traffic(&log, 3, "tls", ((ECHOED + 22) as u64, (ECHOED + 25) as u64));
}

#[test]
fn tern_turn_tls_relay_transport_tcp_runs_every_step() {
    let cert = TestCert::new("tcp-relay-probe");
    let server = start_tls(&cert);
    let uri = format!("turns:{}", server.tls_addr());
    let args =
        ["turn", &uri, "-u", "alice", "-p", "wonderland", "--relay-transport", "tcp", "--tls-ca", cert.cert_path()];
    let output = common::run_tern(&args);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "tern turn turns:... --relay-transport tcp failed:\n{stdout}");
    assert_probe_steps_ok(&stdout);
}

// ---------------------------------------------------------------------------
// coturn's turnutils_uclient

/// Held for the whole of a uclient run: one at a time, as in turn_interop.rs.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The decimal number right after `prefix` in `line`.
fn number_after(line: &str, prefix: &str) -> Option<u64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// `turnutils_uclient -T` pairs its clients (`-y`): each allocates a TCP
/// relay, one of each pair Connects to the other's relayed address, which
/// gets a ConnectionAttempt, and both bind data connections; messages go
/// both ways through two relays, so Connect and inbound peers are covered.
/// Over plain TCP, and with `-S` over TLS (control and data connections).
#[test]
fn turnutils_uclient_relays_over_tcp_without_loss() {
    if !require_tool("turnutils_uclient", "coturn") {
        return;
    }
    let _serial = serial();
    let (clients, messages) = (4u64, 50u64);
    let cert = TestCert::new("uclient-tcp-relay");
    let server = start_tls(&cert);
    for (port, flags) in [(server.tcp_addr().port(), &[][..]), (server.tls_addr().port(), &["-S"][..])] {
        let mut command = Command::new("turnutils_uclient");
        command
            .args(["-T", "-m", &clients.to_string(), "-n", &messages.to_string(), "-l", "200"])
            .args(flags)
            .args(["-p", &port.to_string(), "-u", "alice", "-w", "wonderland"])
            .arg(LOCALHOST.to_string());
        let description = format!("{command:?}");
        let output = run_bounded(&mut command, Duration::from_secs(60));
        let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stderr));
        assert!(output.status.success(), "{description}: {}\n{text}", output.status);
        let loss = text.lines().find(|l| l.contains("Total lost packets ")).and_then(|line| {
            Some((number_after(line, "Total lost packets ")?, number_after(line, "total send dropped ")?))
        });
        assert_eq!(loss, Some((0, 0)), "{description}: no loss: {text}");
        let totals = text
            .lines()
            .rfind(|l| l.contains("tot_send_msgs=") && !l.contains("msz="))
            .and_then(|line| Some((number_after(line, "tot_send_msgs=")?, number_after(line, "tot_recv_msgs=")?)));
        let total = clients * messages;
        assert_eq!(totals, Some((total, total)), "{description}: {total} messages each way: {text}");
    }
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let bound = logged(&log, "connection bound");
    for transport in ["tcp", "tls"] {
        let count = bound.iter().filter(|line| line["span"]["transport"] == transport).count();
        assert!(count >= clients as usize, "every {transport} client bound a data connection ({count}): {bound:?}");
    }
    // With -S the data connections were TLS too: a handshake for each.
    let stopped = common::find_log(&log, "tern stopped").expect("final report");
    let handshakes = stopped["tls_handshakes"].as_u64().unwrap_or(0);
    assert!(handshakes >= 2 * clients, "control and data connections over TLS: {stopped}");
}
