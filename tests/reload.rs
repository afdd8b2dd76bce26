//! SIGHUP (`systemctl reload tern`) end to end, one test per class of
//! setting: the real binary, its configuration file rewritten, then the
//! signal. A reloaded setting applies to what is asked next (quotas and TCP
//! caps, peer lists, `max_bps`, lifetimes, permission and channel caps, the
//! rate limit, alternate servers, SOFTWARE and reason phrases, the log
//! level); a restart-only one is named in a warning and keeps its value;
//! and an allocation relays through reloads without losing a packet.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{
    SILENCE, TcpClient, TcpRead, TernServer, UdpClient, binding_request, error_code, parse_response, request_with,
    scratch_file, tern_command,
};
use tern::client::ClientSocket;
use tern::client::turn::{Credentials, TurnError, TurnSession};
use tern::io::clock;
use tern::proto::Transport;
use tern::proto::stun::Method;
use tern::proto::stun::attr::{self, AttrType};

const TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reload may take to be logged.
const RELOAD_WAIT: Duration = Duration::from_secs(10);

/// A configuration file: `top` (top-level keys) and `tables` (sections
/// after `[auth]`) around the settings every test needs: alice, and
/// loopback peers allowed.
fn config(top: &str, tables: &str) -> String {
    format!(
        "realm = \"tern.test\"\nworkers = 2\nallow_peers = [\"127.0.0.0/8\"]\n{top}\n\
         [auth.users]\nalice = \"wonderland\"\n{tables}\n"
    )
}

/// A server started from a file, which each test rewrites and reloads.
struct Reloading {
    server: TernServer,
    file: PathBuf,
    /// "configuration reloaded" lines so far.
    reloads: usize,
}

impl Reloading {
    fn start(name: &str, text: &str) -> Self {
        let file = scratch_file(name, text);
        let server = TernServer::start(&["--config", file.to_str().expect("utf-8 path")]);
        Self { server, file, reloads: 0 }
    }

    /// Rewrites the file, sends SIGHUP and waits for the reload; returns
    /// its "configuration reloaded" line.
    fn reload(&mut self, text: &str) -> serde_json::Value {
        self.signal(text);
        self.reloaded()
    }

    /// Rewrites the file and sends SIGHUP, without waiting.
    fn signal(&self, text: &str) {
        std::fs::write(&self.file, text).expect("rewrite the config");
        self.server.signal(libc::SIGHUP);
    }

    /// Waits for the next "configuration reloaded" line.
    fn reloaded(&mut self) -> serde_json::Value {
        self.reloads += 1;
        let lines = self.server.wait_for_log("configuration reloaded", self.reloads, RELOAD_WAIT);
        lines[self.reloads - 1].clone()
    }

    fn session(&self) -> TurnSession {
        let socket = ClientSocket::open(self.server.udp_addr(), Transport::Udp, TIMEOUT).expect("UDP socket");
        let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
        TurnSession::new(socket, credentials, TIMEOUT)
    }
}

/// A peer on loopback that reads what the relay sends it.
fn peer() -> (UdpSocket, SocketAddr) {
    peer_on("127.0.0.1")
}

/// A peer on the loopback address `ip`: permissions are per IP.
fn peer_on(ip: &str) -> (UdpSocket, SocketAddr) {
    let peer = UdpSocket::bind((ip, 0)).expect("peer socket");
    peer.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let addr = peer.local_addr().expect("bound");
    (peer, addr)
}

#[track_caller]
fn refused(result: Result<impl std::fmt::Debug, TurnError>, code: u16) -> TurnError {
    let error = result.expect_err("refused");
    assert_eq!(error.code(), Some(code), "{error}");
    error
}

/// Datagrams `peer` receives until none comes for [`SILENCE`], at most `max`.
fn received(peer: &UdpSocket, max: usize) -> usize {
    peer.set_read_timeout(Some(SILENCE)).expect("timeout");
    let mut buf = vec![0u8; 2048];
    let count = (0..max).take_while(|_| peer.recv_from(&mut buf).is_ok()).count();
    peer.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    count
}

/// A Binding request answered 420 and logged at debug: CHANGE-REQUEST
/// without RFC 5780 (RFC 5780 §6).
fn refused_binding() -> Vec<u8> {
    request_with(Method::BINDING, |w| {
        w.attr(AttrType::CHANGE_REQUEST, &[0, 0, 0, 0]);
    })
    .1
}

#[test]
fn a_lowered_user_quota_and_tcp_cap_refuse_newcomers_and_raised_ones_admit_them() {
    let mut tern = Reloading::start("quota.toml", &config("", ""));
    let mut first = tern.session();
    first.allocate(None).expect("within the default quota");
    let mut held = TcpClient::connect(tern.server.tcp_addr());
    held.assert_binding_works();

    tern.reload(&config("user_quota = 1\nmax_tcp_per_ip = 1", ""));
    refused(tern.session().allocate(None), 486);
    let mut over = TcpClient::connect(tern.server.tcp_addr());
    over.send(&binding_request(false).1);
    assert!(matches!(over.read(TIMEOUT), TcpRead::Closed(_)), "a connection over the new cap is closed unanswered");
    held.assert_binding_works();
    first.refresh(600).expect("the allocation over the new quota lives on");

    tern.reload(&config("user_quota = 2\nmax_tcp_per_ip = 2", ""));
    let mut second = tern.session();
    second.allocate(None).expect("a raised quota admits");
    TcpClient::connect(tern.server.tcp_addr()).assert_binding_works();
    second.refresh(0).expect("delete");
    first.refresh(0).expect("delete");
}

#[test]
fn a_denied_peer_gets_403_on_a_new_permission_and_an_installed_one_still_relays() {
    let mut tern = Reloading::start("peers.toml", &config("", ""));
    let (peer, peer_addr) = peer();
    let mut session = tern.session();
    let allocated = session.allocate(None).expect("allocation");
    session.create_permission(&[peer_addr]).expect("loopback peers are allowed");

    tern.reload(&config(&format!("deny_peers = [\"{}/32\"]", peer_addr.ip()), ""));
    refused(session.create_permission(&[peer_addr]), 403);
    // The permission installed before the reload relays until it expires.
    peer.send_to(b"installed before", allocated.relayed).expect("peer sends");
    let data = session.recv_data(clock::now() + TIMEOUT).expect("receive").expect("relayed to the client");
    assert_eq!(data.data, b"installed before");

    tern.reload(&config("", ""));
    session.create_permission(&[peer_addr]).expect("allowed again");
    session.refresh(0).expect("delete");
}

#[test]
fn a_new_max_bps_limits_new_allocations_and_existing_ones_keep_theirs() {
    const PACKETS: usize = 10;
    let mut tern = Reloading::start("max-bps.toml", &config("", ""));
    let (peer, peer_addr) = peer();
    let mut before = tern.session();
    before.allocate(None).expect("allocation");
    before.channel_bind(0x4000, peer_addr).expect("channel");

    tern.reload(&config("max_bps = 1000", ""));
    let mut after = tern.session();
    after.allocate(None).expect("allocation");
    after.channel_bind(0x4000, peer_addr).expect("channel");
    for _ in 0..PACKETS {
        before.send_channel_data(0x4000, &[1; 1000]).expect("send");
    }
    assert_eq!(received(&peer, PACKETS), PACKETS, "an allocation made before keeps no limit");
    let start = clock::now();
    for _ in 0..PACKETS {
        after.send_channel_data(0x4000, &[2; 1000]).expect("send");
    }
    let elapsed = clock::now() - start;
    // A second's worth at once, then 1000 bytes a second.
    let allowed = 1 + usize::try_from(elapsed.as_secs()).unwrap_or(PACKETS) + 1;
    let got = received(&peer, PACKETS);
    assert!(got <= allowed && got < PACKETS, "{got} of {PACKETS} packets in {elapsed:?} at 1000 bytes/s");
    before.refresh(0).expect("delete");
    after.refresh(0).expect("delete");
}

#[test]
fn new_lifetimes_are_answered_in_allocate_and_refresh() {
    let mut tern = Reloading::start("lifetimes.toml", &config("", ""));
    let mut before = tern.session();
    assert_eq!(before.allocate(None).expect("allocation").lifetime, 600);

    tern.reload(&config("default_lifetime = 120\nmax_lifetime = 300", ""));
    let mut after = tern.session();
    assert_eq!(after.allocate(None).expect("allocation").lifetime, 120, "the new default");
    assert_eq!(before.refresh(3600).expect("refresh"), 300, "the new maximum");
    assert_eq!(before.refresh(1).expect("refresh"), 120, "raised to the new default");
    before.refresh(0).expect("delete");
    after.refresh(0).expect("delete");
}

#[test]
fn lowered_permission_and_channel_caps_answer_508() {
    let mut tern = Reloading::start("caps.toml", &config("", ""));
    let peers: Vec<(UdpSocket, SocketAddr)> = ["127.0.0.1", "127.0.0.2", "127.0.0.3"].map(peer_on).into();
    let mut session = tern.session();
    session.allocate(None).expect("allocation");
    session.channel_bind(0x4000, peers[0].1).expect("channel and permission");

    tern.reload(&config("max_permissions = 1\nmax_channels = 1", ""));
    refused(session.create_permission(&[peers[1].1]), 508);
    session.create_permission(&[peers[0].1]).expect("refreshing the one it has");
    session.channel_bind(0x4000, peers[0].1).expect("refreshing the channel it has");

    tern.reload(&config("max_permissions = 2\nmax_channels = 1", ""));
    session.create_permission(&[peers[1].1]).expect("a second permission under the raised cap");
    refused(session.channel_bind(0x4001, peers[1].1), 508);
    tern.reload(&config("", ""));
    session.channel_bind(0x4001, peers[2].1).expect("the default caps again");
    session.refresh(0).expect("delete");
}

#[test]
fn a_rate_limit_applies_to_the_next_unauthenticated_answers() {
    const REQUESTS: usize = 6;
    let mut tern = Reloading::start("rate-limit.toml", &config("", ""));
    let mut client = UdpClient::new(tern.server.udp_addr());
    let answered = |client: &mut UdpClient| {
        let start = clock::now();
        for _ in 0..REQUESTS {
            client.send(&binding_request(false).1);
        }
        let mut buf = [0u8; 512];
        client.socket.set_read_timeout(Some(SILENCE)).expect("timeout");
        let count = (0..REQUESTS).take_while(|_| client.socket.recv_from(&mut buf).is_ok()).count();
        (count, clock::now() - start)
    };
    assert_eq!(answered(&mut client).0, REQUESTS, "loopback is exempt by default");

    tern.reload(&config("rate_limit = 1\nrate_limit_burst = 2\nrate_limit_loopback = true", ""));
    let (count, elapsed) = answered(&mut client);
    let allowed = 2 + usize::try_from(elapsed.as_secs()).unwrap_or(REQUESTS);
    assert!(count <= allowed && count < REQUESTS, "{count} of {REQUESTS} answered in {elapsed:?} at 1 a second");

    tern.reload(&config("", ""));
    assert_eq!(answered(&mut client).0, REQUESTS, "exempt again");
}

#[test]
fn new_alternate_servers_are_named_in_the_300() {
    let mut tern = Reloading::start("alternates.toml", &config("total_quota = 1", ""));
    let mut holder = tern.session();
    holder.allocate(None).expect("the one allocation the quota allows");
    refused(tern.session().allocate(None), 508);

    for alternate in ["203.0.113.9:3478", "203.0.113.10:3478"] {
        tern.reload(&config(&format!("total_quota = 1\nalternate_servers = [\"{alternate}\"]"), ""));
        match tern.session().allocate(None) {
            Err(TurnError::TryAlternate(to)) => assert_eq!(to.to_string(), alternate),
            other => panic!("expected 300 to {alternate}, got {other:?}"),
        }
    }
    holder.refresh(0).expect("delete");
}

#[test]
fn software_and_reason_phrases_appear_and_go_with_the_file() {
    let mut tern = Reloading::start("software.toml", &config("", ""));
    let mut client = UdpClient::new(tern.server.udp_addr());
    let look = |client: &mut UdpClient| {
        let binding = client.transact(&binding_request(false).1);
        let software = parse_response(&binding).attribute(AttrType::SOFTWARE).map(<[u8]>::to_vec);
        let error = client.transact(&refused_binding());
        let response = parse_response(&error);
        assert_eq!(error_code(&response), 420);
        let value = response.attribute(AttrType::ERROR_CODE).expect("ERROR-CODE");
        let reason = attr::read_error_code(value).expect("well-formed").reason.to_owned();
        (software, reason)
    };
    assert_eq!(look(&mut client), (None, String::new()), "both off by default");

    tern.reload(&config("software = \"tern reloaded\"\nreason_phrases = true", ""));
    let (software, reason) = look(&mut client);
    assert_eq!(software.as_deref(), Some(&b"tern reloaded"[..]));
    assert!(!reason.is_empty(), "a reason phrase now");

    tern.reload(&config("", ""));
    assert_eq!(look(&mut client), (None, String::new()), "gone again");
}

#[test]
fn a_raised_log_level_shows_debug_lines() {
    let mut tern = Reloading::start("log-level.toml", &config("", ""));
    let mut client = UdpClient::new(tern.server.udp_addr());
    let debug_lines = |tern: &Reloading| {
        let lines = tern.server.stderr_lines();
        lines.iter().filter(|l| l.contains("\"request refused\"")).count()
    };
    client.transact(&refused_binding());
    client.assert_binding_works();
    assert_eq!(debug_lines(&tern), 0, "request outcomes are debug lines; the default level is info");

    tern.reload(&config("", "[log]\nlevel = \"debug\""));
    client.transact(&refused_binding());
    tern.server.wait_for_log("request refused", 1, RELOAD_WAIT);

    tern.reload(&config("", ""));
    let seen = debug_lines(&tern);
    client.transact(&refused_binding());
    client.assert_binding_works();
    std::thread::sleep(SILENCE);
    assert_eq!(debug_lines(&tern), seen, "back to info");
}

/// Text to JSON and back: both formatters see every span from the start, so
/// an allocation logged inside the worker's span (open since before the
/// switch) comes out whole in the new format.
#[test]
fn the_log_format_switches_between_text_and_json() {
    let text = |format: &str| config("", &format!("[log]\nformat = \"{format}\"\nallocations = true"));
    let file = scratch_file("log-format.toml", &text("text"));
    let child = tern_command(&["serve", "--listen", "127.0.0.1:0", "--config", file.to_str().expect("utf-8")])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern serve");
    let mut child = KillOnDrop(child);
    let (sender, lines) = mpsc::channel();
    let stderr = child.0.stderr.take().expect("stderr is piped");
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = sender.send(line);
        }
    });
    let next = |wanted: &dyn Fn(&str) -> bool| {
        let deadline = clock::now() + RELOAD_WAIT;
        loop {
            let left = deadline.saturating_duration_since(clock::now());
            match lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(_) => {}
                Err(e) => panic!("no such log line within {RELOAD_WAIT:?}: {e}"),
            }
        }
    };
    let listening = next(&|line| line.contains("listening") && line.contains("transport=udp"));
    let udp: SocketAddr = listening
        .split_whitespace()
        .find_map(|field| field.strip_prefix("addr="))
        .and_then(|addr| addr.parse().ok())
        .unwrap_or_else(|| panic!("a text line with the address: {listening}"));
    let session = || {
        let socket = ClientSocket::open(udp, Transport::Udp, TIMEOUT).expect("UDP socket");
        TurnSession::new(socket, Credentials { username: "alice".into(), password: "wonderland".into() }, TIMEOUT)
    };

    for (format, json) in [("json", true), ("text", false)] {
        std::fs::write(&file, text(format)).expect("rewrite the config");
        let pid = libc::pid_t::try_from(child.0.id()).expect("PIDs fit in pid_t");
        // SAFETY: kill(2) with the PID of our own child, not reaped yet.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
        next(&|line| line.contains("configuration reloaded"));
        let mut allocation = session();
        allocation.allocate(None).expect("allocation");
        let created = next(&|line| line.contains("allocation created"));
        // Inside the worker's span, opened before the switch.
        match serde_json::from_str::<serde_json::Value>(&created) {
            Ok(parsed) => {
                assert!(json, "{format}: {created}");
                assert_eq!(parsed["spans"][0]["name"], "worker", "{created}");
            }
            Err(_) => assert!(!json && created.contains(" worker{id="), "{format}: {created}"),
        }
        allocation.refresh(0).expect("delete");
    }
}

/// A child process killed (by its PID, not reaped before) and reaped when
/// the test ends, failed or not.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = common::wait_bounded(&mut self.0, common::STOP_TIMEOUT);
    }
}

#[test]
fn a_restart_only_change_is_named_and_keeps_its_value_while_the_rest_applies() {
    let file = |listen: &str, workers: u32, software: &str| {
        format!(
            "listen = [\"{listen}\"]\nworkers = {workers}\nrelay_ports = \"{}\"\nsoftware = \"{software}\"\n\
             [auth.users]\nalice = \"wonderland\"\n",
            if workers == 2 { "49152-65535" } else { "50000-50100" }
        )
    };
    let path = scratch_file("restart-only.toml", &file("127.0.0.1:0", 2, "first"));
    let server = TernServer::start_without_default_listen(&["--config", path.to_str().expect("utf-8 path")]);
    let mut tern = Reloading { server, file: path, reloads: 0 };
    let udp = tern.server.udp_addr();

    let reloaded = tern.reload(&file("127.0.0.2:0", 3, "second"));
    assert_eq!(reloaded["generation"].as_u64(), Some(2), "{reloaded}");
    let warnings =
        tern.server.wait_for_log("this setting changed but takes a restart; keeping its running value", 3, RELOAD_WAIT);
    let keys: Vec<&str> = warnings.iter().filter_map(|w| w["key"].as_str()).collect();
    assert_eq!(keys, ["listen", "workers", "relay_ports"]);
    // The old address still serves, with the new SOFTWARE.
    let mut client = UdpClient::new(udp);
    let answer = client.transact(&binding_request(false).1);
    let software = parse_response(&answer).attribute(AttrType::SOFTWARE).map(<[u8]>::to_vec);
    assert_eq!(software.as_deref(), Some(&b"second"[..]));
    assert!(!tern.server.stderr_lines().iter().any(|l| l.contains("127.0.0.2")), "nothing listens on the new address");
}

/// "`systemctl reload tern` changes a quota or a peer list on a running
/// server without dropping a call": an allocation echoes packets through
/// a peer, one at a time, while reloads change quotas and peer lists.
#[test]
fn an_allocation_relays_every_packet_across_reloads() {
    const PACKETS: usize = 300;
    const RELOAD_EVERY: usize = 50;
    let mut tern = Reloading::start("live.toml", &config("", ""));
    let (peer, peer_addr) = peer();
    let echo = std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        let mut echoed = 0;
        while let Ok((n, from)) = peer.recv_from(&mut buf) {
            if &buf[..n] == b"done" {
                break;
            }
            peer.send_to(&buf[..n], from).expect("echo");
            echoed += 1;
        }
        echoed
    });
    let mut session = tern.session();
    session.allocate(None).expect("allocation");
    session.channel_bind(0x4000, peer_addr).expect("channel");

    let mut signals = 0;
    for n in 0..PACKETS {
        if n % RELOAD_EVERY == RELOAD_EVERY / 2 {
            // Signals that arrive while a reload runs are merged into one,
            // so each waits for the one before; packets flow meanwhile.
            if signals > 0 {
                tern.reloaded();
            }
            // Raise and lower the quotas, deny and allow another peer.
            let text = if signals % 2 == 0 {
                config("user_quota = 20\ndeny_peers = [\"127.0.0.99/32\"]", "")
            } else {
                config("user_quota = 1\ntotal_quota = 5", "")
            };
            tern.signal(&text);
            signals += 1;
        }
        let payload = format!("packet {n}");
        session.send_channel_data(0x4000, payload.as_bytes()).expect("send");
        let deadline: Instant = clock::now() + TIMEOUT;
        let echoed = session.recv_data(deadline).expect("receive").unwrap_or_else(|| panic!("packet {n} was lost"));
        assert_eq!((echoed.channel, echoed.data), (Some(0x4000), payload.into_bytes()), "in order, intact");
    }
    session.send_channel_data(0x4000, b"done").expect("send");
    assert_eq!(echo.join().expect("the echo peer"), PACKETS);
    let last = tern.reloaded();
    assert_eq!(last["generation"].as_u64(), Some(1 + signals), "{last}");
    assert_eq!(signals % 2, 0, "the last reload lowered the quota");
    refused(tern.session().allocate(None), 486);
    session.refresh(0).expect("delete");
}
