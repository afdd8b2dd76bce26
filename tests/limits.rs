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
    let server = TernServer::start(&["--rate-limit", "10", "--workers", "1"]);
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
