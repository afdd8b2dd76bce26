//! TURN end to end with tern's own client: `tern turn` and `tern credentials`
//! against the real binary, and allocation churn that must give every relay
//! port back.

mod common;

use std::time::Duration;

use common::{TernServer, run_tern, scratch_file};
use tern::client::ClientSocket;
use tern::client::turn::{Credentials, TurnSession};
use tern::proto::Transport;

const STEPS: [&str; 6] = ["allocate", "create permission", "send indication", "channel bind", "channel data", "delete"];

fn assert_all_steps_ok(stdout: &str) {
    for step in STEPS {
        assert!(
            stdout.lines().any(|line| line.starts_with(step) && line.contains(" ok ")),
            "step {step:?} did not succeed:\n{stdout}"
        );
    }
}

fn turn_probe(server: &TernServer, transport: &str, credentials: &[&str]) -> (bool, String) {
    let addr = match transport {
        "tcp" => server.tcp_addr(),
        _ => server.udp_addr(),
    }
    .to_string();
    let mut args = vec!["turn", addr.as_str(), "--transport", transport, "--timeout", "5s"];
    args.extend_from_slice(credentials);
    let output = run_tern(&args);
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

fn relay_server(extra: &[&str]) -> TernServer {
    let mut args = vec!["--user", "alice:wonderland", "--allow-peer", "127.0.0.0/8", "--workers", "2"];
    args.extend_from_slice(extra);
    TernServer::start(&args)
}

#[test]
fn tern_turn_relays_both_ways_over_udp_and_tcp() {
    let server = relay_server(&[]);
    for transport in ["udp", "tcp"] {
        let (ok, stdout) = turn_probe(&server, transport, &["-u", "alice", "-p", "wonderland"]);
        assert!(ok, "tern turn over {transport} failed:\n{stdout}");
        assert_all_steps_ok(&stdout);
        let allocate = stdout.lines().find(|l| l.starts_with("allocate")).expect("allocate line");
        assert!(allocate.contains("relayed 127.0.0.1:"), "{allocate}");
        assert!(allocate.contains("lifetime 600 s"), "{allocate}");
    }
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let created = log.iter().filter(|l| l.contains("\"allocation created\"")).count();
    let deleted = log.iter().filter(|l| l.contains("refreshed with lifetime 0")).count();
    assert_eq!((created, deleted), (2, 2), "each probe allocates once and deletes what it allocated");
}

/// RFC 8489 from the command line: SHA-256 with USERHASH (what the default
/// picks too against a server without REST secrets, whose nonce asks for
/// USERHASH), and the RFC 5389 behaviour of browsers on the same server.
#[test]
fn tern_turn_relays_with_sha256_and_userhash_and_with_legacy_md5() {
    let server = relay_server(&[]);
    let cases: [(&[&str], &str); 3] = [
        (&["--password-algorithm", "sha256", "--userhash"], "auth RFC 8489 SHA-256 USERHASH"),
        (&[], "auth RFC 8489 SHA-256 USERHASH"),
        (&["--password-algorithm", "md5"], "auth RFC 5389 MD5"),
    ];
    for (flags, auth) in cases {
        let mut credentials = vec!["-u", "alice", "-p", "wonderland"];
        credentials.extend_from_slice(flags);
        let (ok, stdout) = turn_probe(&server, "udp", &credentials);
        assert!(ok, "tern turn {flags:?} failed:\n{stdout}");
        assert_all_steps_ok(&stdout);
        let allocate = stdout.lines().find(|l| l.starts_with("allocate")).expect("allocate line");
        assert!(allocate.ends_with(auth), "{flags:?}: {allocate}");
    }
    let (ok, stdout) = turn_probe(&server, "udp", &["-u", "alice", "-p", "looking-glass", "--userhash"]);
    assert!(!ok && stdout.contains("FAILED: allocate: 401"), "{stdout}");
    let refused = run_tern(&["turn", "127.0.0.1:1", "-u", "a", "-p", "b", "--password-algorithm", "md5", "--userhash"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--userhash needs RFC 8489"));
}

/// A server at its total quota sends new allocations to its alternate
/// (300 Try Alternate), and `tern turn` says where, exiting non-zero.
#[test]
fn a_full_server_redirects_tern_turn_to_the_alternate_server() {
    let server = relay_server(&["--total-quota", "1", "--alternate-server", "203.0.113.5:3478"]);
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, Duration::from_secs(5)).expect("socket");
    let mut holder = TurnSession::new(socket, credentials, Duration::from_secs(5));
    holder.allocate(None).expect("the one allocation the quota allows");

    let (ok, stdout) = turn_probe(&server, "udp", &["-u", "alice", "-p", "wonderland"]);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("FAILED: allocate: try alternate server 203.0.113.5:3478"), "{stdout}");
    holder.refresh(0).expect("delete");
}

/// SIGUSR1 drains: new allocations go to the alternate (300), the live one
/// keeps relaying and refreshing, and tern exits by itself, cleanly, once
/// it is deleted.
#[test]
fn a_draining_server_redirects_newcomers_and_exits_after_the_last_allocation() {
    let server = relay_server(&["--alternate-server", "203.0.113.5:3478"]);
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, Duration::from_secs(5)).expect("socket");
    let mut holder = TurnSession::new(socket, credentials, Duration::from_secs(5));
    holder.allocate(None).expect("allocation before the drain");

    server.signal(libc::SIGUSR1);
    server.wait_for_log("draining: no new allocations; tern stops once the last one ends", 1, Duration::from_secs(5));
    let (ok, stdout) = turn_probe(&server, "udp", &["-u", "alice", "-p", "wonderland"]);
    assert!(!ok, "{stdout}");
    assert!(stdout.contains("FAILED: allocate: try alternate server 203.0.113.5:3478"), "{stdout}");
    // Over TCP too: every worker drains.
    let (ok, stdout) = turn_probe(&server, "tcp", &["-u", "alice", "-p", "wonderland"]);
    assert!(!ok && stdout.contains("try alternate server"), "{stdout}");
    holder.refresh(600).expect("the live allocation refreshes while draining");
    holder.refresh(0).expect("delete");

    let (status, log) = server.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "a drained tern exits with 0: {status}");
    assert!(log.iter().any(|l| l.contains("drained: no allocation left")));
    let stopped = common::find_log(&log, "tern stopped").expect("final report");
    assert_eq!(stopped["allocations"].as_u64(), Some(1), "only the allocation from before the drain: {stopped}");
}

/// SIGHUP reads the users and REST secrets again: a new user and a new
/// secret work at once, a removed user and secret get 401, and a file that
/// does not load changes nothing.
#[test]
fn sighup_reloads_users_and_secrets() {
    let credentials = |user: &str, secret: &str| {
        format!("realm = \"tern.test\"\n[auth]\nsecrets = [\"{secret}\"]\n[auth.users]\n{user} = \"wonderland\"\n")
    };
    let file = scratch_file("reload-credentials.toml", &credentials("carol", "old-secret"));
    let path = file.to_str().expect("utf-8 path");
    let server = relay_server(&["--config", path]);
    let works = |args: &[&str]| turn_probe(&server, "udp", args);
    assert!(works(&["-u", "carol", "-p", "wonderland"]).0);
    assert!(works(&["-u", "rest-user", "--secret", "old-secret"]).0);

    std::fs::write(&file, credentials("bob", "new-secret")).expect("rewrite the config");
    server.signal(libc::SIGHUP);
    server.wait_for_log("credentials reloaded", 1, Duration::from_secs(5));
    assert!(works(&["-u", "bob", "-p", "wonderland"]).0, "a new user works at once");
    assert!(works(&["-u", "rest-user", "--secret", "new-secret"]).0, "so does a new secret");
    for revoked in [&["-u", "carol", "-p", "wonderland"][..], &["-u", "rest-user", "--secret", "old-secret"]] {
        let (ok, stdout) = works(revoked);
        assert!(!ok && stdout.contains("FAILED: allocate: 401"), "{revoked:?} is revoked: {stdout}");
    }
    // Flags add to the file, on reload too: relay_server's --user alice stays.
    assert!(works(&["-u", "alice", "-p", "wonderland"]).0);

    std::fs::write(&file, "[auth]\nusers = 5\n").expect("break the config");
    server.signal(libc::SIGHUP);
    server.wait_for_log("configuration reload failed; keeping the running configuration", 1, Duration::from_secs(5));
    assert!(works(&["-u", "bob", "-p", "wonderland"]).0, "a broken file changes nothing");
}

/// `tern key` prints an `auth.users` line with the MD5 key (as coturn's
/// `turnadmin -k` does); a server configured with it lets the user in with
/// the password over MD5, as browsers sign.
#[test]
fn a_key_from_tern_key_lets_its_user_in() {
    let output = run_tern(&["key", "--user", "dave", "--realm", "tern.test", "--password", "pa55"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let entry = stdout.lines().find(|l| l.starts_with("dave = { key = \"0x")).expect("an auth.users line");
    let file = scratch_file("tern-key.toml", &format!("realm = \"tern.test\"\n[auth.users]\n{entry}\n"));
    let server = relay_server(&["--config", file.to_str().expect("utf-8 path")]);
    let (ok, stdout) = turn_probe(&server, "udp", &["-u", "dave", "-p", "pa55", "--password-algorithm", "md5"]);
    assert!(ok, "{stdout}");
    assert_all_steps_ok(&stdout);
    let (ok, stdout) = turn_probe(&server, "udp", &["-u", "dave", "-p", "guess", "--password-algorithm", "md5"]);
    assert!(!ok && stdout.contains("FAILED: allocate: 401"), "{stdout}");
    let empty = run_tern(&["key", "--user", "dave", "--password", ""]);
    assert!(!empty.status.success());
    assert!(String::from_utf8_lossy(&empty.stderr).contains("the password is empty"));
}

#[test]
fn wrong_password_is_refused_with_401() {
    let server = relay_server(&[]);
    let (ok, stdout) = turn_probe(&server, "udp", &["-u", "alice", "-p", "looking-glass"]);
    assert!(!ok);
    assert!(stdout.contains("FAILED: allocate: 401"), "{stdout}");
    let (ok, stdout) = turn_probe(&server, "udp", &["-u", "mallory", "-p", "wonderland"]);
    assert!(!ok);
    assert!(stdout.contains("401"), "{stdout}");
    let log = server.stderr_lines();
    assert!(!log.iter().any(|l| l.contains("\"allocation created\"")), "no allocation for wrong credentials");
}

#[test]
fn loopback_peer_is_refused_by_default_and_allowed_when_configured() {
    let strict = TernServer::start(&["--user", "alice:wonderland"]);
    let (ok, stdout) = turn_probe(&strict, "udp", &["-u", "alice", "-p", "wonderland"]);
    assert!(!ok);
    assert!(stdout.contains("create permission: 403"), "{stdout}");
    assert!(stdout.contains("--allow-peer 127.0.0.0/8"), "the failure says how to allow it:\n{stdout}");
    let (_, log) = strict.stop_with_log();
    let refused = common::find_log(&log, "peer refused").expect("the refusal is logged");
    assert!(refused["rule"].as_str().is_some_and(|r| r.contains("127.0.0.0/8")), "{refused}");
    // The probe deletes its allocation when a step fails.
    assert!(log.iter().any(|l| l.contains("refreshed with lifetime 0")));

    let open = relay_server(&[]);
    let (ok, stdout) = turn_probe(&open, "udp", &["-u", "alice", "-p", "wonderland"]);
    assert!(ok, "{stdout}");
}

#[test]
fn rest_credentials_from_tern_credentials_work_until_they_expire() {
    let server = TernServer::start(&["--secret", "s3cr3t", "--secret", "0ld-s3cr3t", "--allow-peer", "127.0.0.0/8"]);
    let output = run_tern(&["credentials", "--secret", "0ld-s3cr3t", "--user", "carol", "--ttl", "1h"]);
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
            .unwrap_or_else(|| panic!("no {name} in:\n{stdout}"))
            .to_owned()
    };
    let (username, password) = (field("username:"), field("password:"));
    assert!(username.ends_with(":carol"), "{username}");
    let json_start = stdout.find('{').expect("JSON snippet");
    let snippet: serde_json::Value = serde_json::from_str(&stdout[json_start..]).expect("valid JSON");
    assert_eq!(snippet["iceServers"][0]["username"], username.as_str());
    assert_eq!(snippet["iceServers"][0]["credential"], password.as_str());

    // A browser would use exactly these as username and credential.
    let (ok, out) = turn_probe(&server, "udp", &["-u", &username, "-p", &password]);
    assert!(ok, "{out}");
    // `tern turn --secret` makes its own credential from the current secret.
    let (ok, out) = turn_probe(&server, "tcp", &["-u", "dave", "--secret", "s3cr3t"]);
    assert!(ok, "{out}");
    // RFC 8489 SHA-256 works for REST credentials; USERHASH cannot (the
    // server needs the username to compute the password), and with secrets
    // configured the server's nonce does not ask for it.
    let (ok, out) = turn_probe(&server, "udp", &["-u", "dave", "--secret", "s3cr3t", "--password-algorithm", "sha256"]);
    assert!(ok && out.contains("auth RFC 8489 SHA-256\n"), "{out}");
    let (ok, out) = turn_probe(&server, "udp", &["-u", "dave", "--secret", "s3cr3t", "--userhash"]);
    assert!(!ok && out.contains("401"), "{out}");

    let expired = run_tern(&["credentials", "--secret", "s3cr3t", "--user", "carol", "--ttl", "0s"]);
    let stdout = String::from_utf8_lossy(&expired.stdout).into_owned();
    let username = stdout.lines().find_map(|l| l.strip_prefix("username:")).expect("username").trim().to_owned();
    let password = stdout.lines().find_map(|l| l.strip_prefix("password:")).expect("password").trim().to_owned();
    let (ok, out) = turn_probe(&server, "udp", &["-u", &username, "-p", &password]);
    assert!(!ok && out.contains("401"), "an expired REST credential is refused:\n{out}");
}

/// Allocates and deletes many times through a small port range: every
/// delete must give its port back, or the range runs dry and Allocate gets
/// 508. Then fills the range, checks the next Allocate gets 508, empties it
/// and fills it again. Resident memory must come back near where it was.
#[test]
fn allocation_churn_returns_ports_and_memory() {
    const PORTS: u16 = 64;
    const CYCLES: usize = 3000;
    // Its own relay address and a range outside the kernel's ephemeral
    // ports, so no other socket on the machine (other tests' servers relay
    // on 127.0.0.1, the soak test on 127.0.0.2) can take a relay port while
    // the test counts them.
    let first = common::relay_range_outside_ephemeral(PORTS);
    let ports = format!("{first}-{}", first + PORTS - 1);
    // Thousands of 401s to one source: the per-source limit is off here.
    let server = TernServer::start(&[
        "--rate-limit",
        "0",
        "--user",
        "alice:wonderland",
        "--user-quota",
        "0",
        "--relay-ports",
        &ports,
        "--relay-ip",
        "127.0.0.3",
    ]);
    let addr = server.udp_addr();
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let session = || {
        let socket = ClientSocket::open(addr, Transport::Udp, Duration::from_secs(5)).expect("socket");
        TurnSession::new(socket, credentials.clone(), Duration::from_secs(5))
    };

    // Warm up so the allocator's first growth is not counted.
    for _ in 0..200 {
        let mut s = session();
        s.allocate(None).expect("allocate");
        s.refresh(0).expect("delete");
    }
    let rss_before = rss_kib(server.pid());

    let mut relayed = std::collections::HashSet::new();
    for cycle in 0..CYCLES {
        let mut s = session();
        let allocated = s.allocate(None).unwrap_or_else(|e| panic!("cycle {cycle}: allocate failed: {e}"));
        relayed.insert(allocated.relayed.port());
        assert_eq!(s.refresh(0).expect("delete"), 0);
    }
    assert_eq!(relayed.len(), usize::from(PORTS), "churn cycles through the whole range");

    let mut held: Vec<TurnSession> = (0..PORTS)
        .map(|i| {
            let mut s = session();
            s.allocate(None).unwrap_or_else(|e| panic!("allocation {i} of a full range failed: {e}"));
            s
        })
        .collect();
    let error = session().allocate(None).expect_err("the range is full");
    assert_eq!(error.code(), Some(508), "{error}");
    for s in &mut held {
        s.refresh(0).expect("delete");
    }
    for s in &mut held {
        s.allocate(None).expect("every port is free again");
        s.refresh(0).expect("delete");
    }

    let rss_after = rss_kib(server.pid());
    // Nothing per allocation may stay behind: 3000 leaked allocations of
    // even 1 KiB would be 3 MiB. The bound leaves room for allocator slack.
    assert!(
        rss_after <= rss_before + 2048,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB over {CYCLES} allocate/delete cycles"
    );
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let stopped = common::find_log(&log, "tern stopped").expect("final report");
    assert_eq!(stopped["allocations"].as_u64(), Some(200 + CYCLES as u64 + 2 * u64::from(PORTS)));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// A server relaying on 127.0.0.1 and ::1 to loopback peers, and a UDP
/// session of alice's with it.
fn dual_stack_session() -> (TernServer, TurnSession) {
    let server = TernServer::start(&[
        "--user",
        "alice:wonderland",
        "--relay-ip",
        "127.0.0.1",
        "--relay-ip",
        "::1",
        "--allow-peer",
        "127.0.0.0/8",
        "--allow-peer",
        "::1/128",
    ]);
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, Duration::from_secs(5)).expect("socket");
    let session = TurnSession::new(socket, credentials, Duration::from_secs(5));
    (server, session)
}

/// RFC 8656 §7.2: one Allocate with ADDITIONAL-ADDRESS-FAMILY gets an IPv4
/// and an IPv6 relayed address, and each relays to peers of its family, both
/// ways, with Send/Data indications and with ChannelData.
#[test]
fn dual_allocation_relays_ipv4_and_ipv6_peers() {
    let (server, mut session) = dual_stack_session();
    let allocated = session.allocate_dual().expect("dual allocate");
    let v6 = allocated.also_relayed.expect("a second relayed address");
    assert!(allocated.relayed.ip().is_loopback() && allocated.relayed.is_ipv4(), "{allocated:?}");
    assert_eq!(v6.ip(), "::1".parse::<std::net::IpAddr>().expect("literal"), "{allocated:?}");
    assert_eq!(allocated.address_error, None);

    let timeout = Duration::from_secs(5);
    let peers: Vec<std::net::UdpSocket> = ["127.0.0.1:0", "[::1]:0"]
        .iter()
        .map(|a| {
            let peer = std::net::UdpSocket::bind(a).expect("peer socket");
            peer.set_read_timeout(Some(timeout)).expect("timeout");
            peer
        })
        .collect();
    let addrs: Vec<std::net::SocketAddr> = peers.iter().map(|p| p.local_addr().expect("bound")).collect();
    session.create_permission(&addrs).expect("permission for both families");
    session.channel_bind(0x4001, addrs[1]).expect("channel to the IPv6 peer");

    for (peer, (addr, relayed)) in peers.iter().zip(addrs.iter().zip([allocated.relayed, v6])) {
        // Client to peer: the datagram leaves the relay of the peer's family.
        session.send_indication(*addr, b"to the peer").expect("send");
        let mut buf = [0u8; 64];
        let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
        assert_eq!((&buf[..n], from), (&b"to the peer"[..], relayed));
        // Peer to client, through that same relayed address.
        peer.send_to(b"to the client", relayed).expect("peer sends");
        let deadline = tern::io::clock::now() + timeout;
        let received = session.recv_data(deadline).expect("receive").expect("data from the peer");
        assert_eq!(received.data, b"to the client");
        if addr.is_ipv6() {
            assert_eq!(received.channel, Some(0x4001), "a bound peer's data comes as ChannelData");
        } else {
            assert_eq!(received.peer, Some(*addr), "a Data indication names the IPv4 peer");
        }
    }
    session.send_channel_data(0x4001, b"over the channel").expect("channel data");
    let mut buf = [0u8; 64];
    let (n, from) = peers[1].recv_from(&mut buf).expect("the IPv6 peer receives");
    assert_eq!((&buf[..n], from), (&b"over the channel"[..], v6));

    assert_eq!(session.refresh(0).expect("delete"), 0);
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let created = common::find_log(&log, "allocation created").expect("logged");
    assert_eq!(created["also"].as_str(), Some(v6.to_string().as_str()), "{created}");
}

/// RFC 8656 §11.5: a datagram relayed to a closed port draws an ICMP port
/// unreachable, which reaches the client as a Data indication with the ICMP
/// attribute and the peer's address, for IPv4 and IPv6 relays alike.
#[test]
fn icmp_errors_for_relayed_datagrams_reach_the_client() {
    let (server, mut session) = dual_stack_session();
    session.allocate_dual().expect("dual allocate");
    // Ports that were free a moment ago: nothing listens there.
    let closed: Vec<std::net::SocketAddr> = ["127.0.0.1:0", "[::1]:0"]
        .iter()
        .map(|a| std::net::UdpSocket::bind(a).expect("bind").local_addr().expect("bound"))
        .collect();
    session.create_permission(&closed).expect("permission");
    // (ICMP type, code) of "port unreachable" in ICMPv4 and ICMPv6.
    for (peer, expected) in closed.iter().zip([(3, 3), (1, 4)]) {
        session.send_indication(*peer, b"anyone there?").expect("send");
        let deadline = tern::io::clock::now() + Duration::from_secs(5);
        let received = session.recv_data(deadline).expect("receive").expect("an ICMP report");
        let icmp = received.icmp.unwrap_or_else(|| panic!("a Data indication with ICMP, got {received:?}"));
        assert_eq!((icmp.icmp_type, icmp.code), expected, "{peer}");
        assert_eq!(icmp.error_data, 0);
        assert_eq!(received.peer, Some(*peer));
        assert!(received.data.is_empty());
    }

    // The kernel reports an ICMP error on the relay socket's next send too;
    // a datagram to a live peer right after one to a dead peer still goes.
    let live = std::net::UdpSocket::bind("127.0.0.1:0").expect("peer");
    live.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let live_addr = live.local_addr().expect("bound");
    session.create_permission(&[live_addr]).expect("permission");
    const ROUNDS: usize = 20;
    for _ in 0..ROUNDS {
        session.send_indication(closed[0], b"dead").expect("send");
        session.send_indication(live_addr, b"alive").expect("send");
    }
    let mut buf = [0u8; 16];
    for round in 0..ROUNDS {
        let n = live.recv(&mut buf).unwrap_or_else(|e| panic!("datagram {round} to the live peer lost: {e}"));
        assert_eq!(&buf[..n], b"alive");
    }

    session.refresh(0).expect("delete");
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let stopped = common::find_log(&log, "tern stopped").expect("final report");
    assert!(stopped["icmp_relayed"].as_u64().is_some_and(|n| n >= 2), "{stopped}");
}

/// A load run longer than the nonce lifetime: its refreshes and its final
/// deletes meet 438 Stale Nonce and must try again with the new nonce, or
/// its allocations stay behind (they did on the 10-minute soak).
#[test]
fn tern_load_deletes_its_allocations_after_the_nonce_went_stale() {
    let config =
        common::scratch_file("stale-nonce.toml", "[auth]\nusers = { alice = \"wonderland\" }\nnonce_lifetime = 1\n");
    let server = TernServer::start(&["--config", config.to_str().expect("utf-8 path"), "--allow-peer", "127.0.0.0/8"]);
    let fds = || std::fs::read_dir(format!("/proc/{}/fd", server.pid())).expect("/proc fd").count();
    let before = fds();
    let addr = server.udp_addr().to_string();
    let output = run_tern(&[
        "load",
        &addr,
        "-u",
        "alice",
        "-p",
        "wonderland",
        "--allocations",
        "4",
        "--rate",
        "20",
        "--duration",
        "3s",
        "--json",
    ]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let mut after = fds();
    for _ in 0..50 {
        if after == before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        after = fds();
    }
    assert_eq!(after, before, "every allocation of the load run was deleted");
}
