//! Issue 6 item 5: a flood of unauthenticated Allocates and junk must not
//! grow tern's memory without bound, and must not stop an honest client from
//! allocating and relaying, during the flood and after it.
//!
//! The flood comes from 127.0.0.2..=127.0.0.33 (many sources, many ports),
//! the honest client from 127.0.0.1, all on loopback.

mod common;

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use common::{SplitMix64, TernServer, run_tern};
use tern::io::sys::batch::{BATCH, SendScratch, Transmit, send_batch};
use tern::proto::stun::attr::AttrType;
use tern::proto::stun::{Class, MessageType, MessageWriter, Method, TransactionId};

const ALLOCATES: usize = 1_000_000;
const JUNK: usize = 100_000;
const SOURCES: usize = 32;
const SOCKETS_PER_SOURCE: usize = 8;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

/// Sends `count` datagrams made by `make` to `server`, spread over sockets on
/// many loopback addresses, as fast as sendmmsg goes.
fn flood(server: SocketAddr, count: usize, mut make: impl FnMut(usize) -> Vec<u8>) {
    let sockets: Vec<UdpSocket> = (0..SOURCES * SOCKETS_PER_SOURCE)
        .map(|i| UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2 + (i % SOURCES) as u8), 0)).expect("bind a flood source"))
        .collect();
    let mut scratch = SendScratch::default();
    let mut sent = 0;
    while sent < count {
        let batch: Vec<Vec<u8>> = (0..BATCH.min(count - sent)).map(|i| make(sent + i)).collect();
        let transmits: Vec<Transmit<'_>> = batch.iter().map(|p| Transmit::new(server, None, p)).collect();
        let socket = &sockets[(sent / BATCH) % sockets.len()];
        // A full socket buffer drops datagrams: that is part of a flood.
        let _ = send_batch(socket.as_raw_fd(), &transmits, &mut scratch);
        sent += batch.len();
    }
}

fn unauthenticated_allocate() -> Vec<u8> {
    let mut buf = Vec::with_capacity(32);
    let mut w =
        MessageWriter::new(&mut buf, MessageType::new(Method::ALLOCATE, Class::Request), TransactionId::random());
    w.attr(AttrType::REQUESTED_TRANSPORT, &[17, 0, 0, 0]);
    buf
}

fn probe(server: &TernServer) -> (bool, String) {
    let addr = server.udp_addr().to_string();
    let output = run_tern(&["turn", &addr, "-u", "alice", "-p", "wonderland", "--timeout", "10s"]);
    (output.status.success(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn a_flood_neither_grows_memory_nor_locks_out_honest_clients() {
    // The flood comes from loopback addresses: limit them as if they were not.
    let server = TernServer::start(&[
        "--user",
        "alice:wonderland",
        "--allow-peer",
        "127.0.0.0/8",
        "--workers",
        "2",
        "--rate-limit-loopback",
    ]);
    let (ok, out) = probe(&server);
    assert!(ok, "before the flood:\n{out}");
    let rss_before = rss_kib(server.pid());

    let addr = server.udp_addr();
    let flooding = Arc::new(AtomicBool::new(true));
    let flooder = {
        let flooding = flooding.clone();
        std::thread::spawn(move || {
            flood(addr, ALLOCATES, |_| unauthenticated_allocate());
            let mut rng = SplitMix64(0x5EED);
            flood(addr, JUNK, |_| (0..1 + rng.below(200)).map(|_| rng.next_u64() as u8).collect());
            flooding.store(false, Ordering::Relaxed);
        })
    };
    // An honest client during the flood: it may need retransmissions, but
    // it must get through.
    let (ok, out) = probe(&server);
    let during = flooding.load(Ordering::Relaxed);
    assert!(ok, "during the flood:\n{out}");
    flooder.join().expect("flooder thread");
    let rss_after = rss_kib(server.pid());

    let (ok, out) = probe(&server);
    assert!(ok, "after the flood:\n{out}");
    // Nothing is kept per unauthenticated request; the per-source rate
    // limiter's table is bounded (65,536 sources per worker).
    assert!(
        rss_after <= rss_before + 16 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_after} KiB over {ALLOCATES} allocates and {JUNK} junk packets"
    );

    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let stopped = common::find_log(&log, "tern stopped").expect("final report");
    // The three probes, and not one allocation for the flood.
    assert_eq!(stopped["allocations"].as_u64(), Some(3), "{stopped}");
    eprintln!("flood: RSS {rss_before} -> {rss_after} KiB; probe ran during the flood: {during}; report: {stopped}");
}
