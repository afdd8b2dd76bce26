//! Limits that protect tern and others from floods, against the real binary.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{TernServer, binding_request};

/// Answers a socket receives within `wait` after a burst of `count` Binding
/// requests.
fn answers_to_burst(socket: &UdpSocket, server: std::net::SocketAddr, count: usize, wait: Duration) -> usize {
    for _ in 0..count {
        let (_, request) = binding_request(false);
        socket.send_to(&request, server).expect("send");
    }
    socket.set_read_timeout(Some(wait)).expect("timeout");
    let mut buf = [0u8; 512];
    let mut answers = 0;
    while socket.recv_from(&mut buf).is_ok() {
        answers += 1;
        if answers == count {
            break;
        }
    }
    answers
}

/// Issue 6 item 4: a source that floods unauthenticated requests gets its
/// burst and then silence, while another source is still answered; the
/// drops are counted in the final report.
#[test]
fn unauthenticated_answers_are_limited_per_source() {
    let server = TernServer::start(&["--rate-limit", "10", "--rate-limit-loopback", "--workers", "1"]);
    let flooder = UdpSocket::bind("127.0.0.1:0").expect("bind");
    // Burst defaults to twice the rate: 20 answers, then only the refill.
    let answered = answers_to_burst(&flooder, server.udp_addr(), 500, Duration::from_millis(500));
    assert!((20..=40).contains(&answered), "flooder got {answered} answers to 500 requests");

    let other = UdpSocket::bind("127.0.0.2:0").expect("bind a second loopback address");
    assert_eq!(answers_to_burst(&other, server.udp_addr(), 5, Duration::from_secs(5)), 5);

    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let stopped = common::find_log(&log, "tern stopped").expect("final report");
    let limited = stopped["rate_limited"].as_u64().expect("rate_limited is reported");
    assert!(limited >= 400, "{limited} answers were held back");
}

/// Issue 6 item 9: started as root with a user to run as, tern binds its
/// sockets (a port below 1024 here) and then runs as that user.
#[test]
fn root_drops_to_the_configured_user_after_binding() {
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        eprintln!("skipping: needs root to switch users");
        return;
    }
    let server = TernServer::start_without_default_listen(&["--listen", "127.0.0.1:987", "--run-as-user", "nobody"]);
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.pid())).expect("/proc status");
    let uids: Vec<&str> =
        status.lines().find_map(|l| l.strip_prefix("Uid:")).expect("Uid line").split_whitespace().collect();
    assert_eq!(uids, ["65534"; 4], "real, effective, saved and filesystem uid are all nobody's");
    let gids: Vec<&str> =
        status.lines().find_map(|l| l.strip_prefix("Groups:")).expect("Groups line").split_whitespace().collect();
    assert!(gids.is_empty(), "supplementary groups are dropped: {gids:?}");
    let mut client = common::UdpClient::new(server.udp_addr());
    client.assert_binding_works();
}

#[test]
fn an_unknown_user_to_run_as_is_a_config_error() {
    let output = common::run_tern(&["check", "--run-as-user", "no-such-user-here"]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("key `user`: no user named \"no-such-user-here\""), "{stderr}");
}

/// Issue 6 item 7: connections from one IP beyond `max_tcp_per_ip` are
/// closed at once and counted; the ones admitted keep working, and a closed
/// one frees its place.
#[test]
fn tcp_connections_per_ip_are_capped() {
    use std::io::{Read, Write};
    use std::net::TcpStream;

    let server = TernServer::start(&["--max-tcp-per-ip", "3", "--workers", "2"]);
    let connect = || TcpStream::connect(server.tcp_addr()).expect("connect");
    let mut admitted: Vec<TcpStream> = (0..3).map(|_| connect()).collect();
    // Make sure the server has taken the three before the fourth arrives.
    for stream in &mut admitted {
        let (_, request) = binding_request(false);
        stream.write_all(&request).expect("write");
        stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
        let mut header = [0u8; 20];
        stream.read_exact(&mut header).expect("an admitted connection is answered");
        let mut rest = vec![0u8; usize::from(u16::from_be_bytes([header[2], header[3]]))];
        stream.read_exact(&mut rest).expect("the rest of the answer");
    }
    let mut refused = connect();
    refused.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let (_, request) = binding_request(false);
    let _ = refused.write_all(&request);
    let mut buf = [0u8; 64];
    // Closed without an answer: EOF, or a reset if the write raced the close.
    assert!(matches!(refused.read(&mut buf), Ok(0) | Err(_)), "the fourth connection is closed unanswered");

    drop(admitted.pop());
    let mut replacement = None;
    for _ in 0..50 {
        // The server notices the close on its next turn; retry briefly.
        let mut stream = connect();
        stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
        let (_, request) = binding_request(false);
        if stream.write_all(&request).is_ok() && matches!(stream.read(&mut buf), Ok(n) if n > 0) {
            replacement = Some(stream);
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(replacement.is_some(), "a freed place is given to a new connection");

    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let stopped = common::find_log(&log, "tern stopped").expect("final report");
    assert!(stopped["tcp_refused"].as_u64().is_some_and(|n| n >= 1), "{stopped}");
}
