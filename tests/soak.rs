//! Issue 6 item 8: a bounded soak. `tern load` relays through a set of
//! allocations while another thread churns allocations (allocate, permission,
//! delete) for the whole run; afterwards the server's descriptors are back to
//! where they started and its memory is within a fixed bound of it.
//!
//! TERN_SOAK_SECS sets the length (CI: 60; default 20). BENCHMARKS.md has the
//! 10-minute version run by hand.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{TernServer, run_bounded, tern_command};
use tern::client::ClientSocket;
use tern::client::turn::{Credentials, TurnSession};
use tern::proto::Transport;

fn soak_seconds() -> u64 {
    std::env::var("TERN_SOAK_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(20)
}

fn fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).expect("/proc fd").count()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("/proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}

#[test]
fn soak_returns_descriptors_ports_and_memory_to_baseline() {
    let seconds = soak_seconds();
    // Its own relay address and ports outside the ephemeral range, so the
    // final "every port is free" check counts only tern's own ports.
    let first = common::relay_range_outside_ephemeral(1000);
    let ports = format!("{first}-{}", first + 999);
    let server = TernServer::start(&[
        "--relay-ip",
        "127.0.0.2",
        "--user",
        "alice:wonderland",
        "--allow-peer",
        "127.0.0.0/8",
        "--user-quota",
        "0",
        "--rate-limit",
        "0",
        "--relay-ports",
        &ports,
    ]);
    let pid = server.pid();
    let fds_before = fds(pid);
    let rss_before = rss_kib(pid);

    let running = Arc::new(AtomicBool::new(true));
    let churned = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(AtomicU64::new(0));
    let churn = {
        let (running, churned, failures) = (running.clone(), churned.clone(), failures.clone());
        let addr = server.udp_addr();
        std::thread::spawn(move || {
            let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
            while running.load(Ordering::Relaxed) {
                let Ok(socket) = ClientSocket::open(addr, Transport::Udp, Duration::from_secs(5)) else { continue };
                let mut session = TurnSession::new(socket, credentials.clone(), Duration::from_secs(5));
                let ok = session.allocate(None).is_ok()
                    && session.create_permission(&["127.0.0.1:9".parse().expect("literal")]).is_ok()
                    && session.refresh(0).is_ok();
                if ok {
                    churned.fetch_add(1, Ordering::Relaxed)
                } else {
                    failures.fetch_add(1, Ordering::Relaxed)
                };
            }
        })
    };
    let addr = server.udp_addr().to_string();
    let duration = format!("{seconds}s");
    // The load run itself lasts `seconds`; allow for its start and final report.
    let load_timeout = Duration::from_secs(seconds + 30);
    let output = run_bounded(
        &mut tern_command(&[
            "load",
            &addr,
            "-u",
            "alice",
            "-p",
            "wonderland",
            "--allocations",
            "50",
            "--rate",
            "200",
            "--size",
            "200",
            "--duration",
            &duration,
            "--json",
        ]),
        load_timeout,
    );
    running.store(false, Ordering::Relaxed);
    churn.join().expect("churn thread");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON report");
    let relay = &report["relay"];
    assert!(relay["to_client"].as_u64().is_some_and(|n| n > 0), "{report}");
    assert!(relay["loss_percent"].as_f64().is_some_and(|p| p < 1.0), "{report}");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "every churn cycle succeeded");
    assert!(churned.load(Ordering::Relaxed) > 0);

    // Deletes are immediate, but give the last packets a moment to land.
    let mut fds_after = fds(pid);
    for _ in 0..50 {
        if fds_after == fds_before {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        fds_after = fds(pid);
    }
    assert_eq!(fds_after, fds_before, "every relay socket is closed again");
    let rss_after = rss_kib(pid);
    assert!(rss_after <= rss_before + 16 * 1024, "RSS {rss_before} KiB -> {rss_after} KiB");

    // Every port is free again: the whole range can be allocated at once.
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let mut held = Vec::new();
    for i in 0..1000 {
        let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, Duration::from_secs(5)).expect("socket");
        let mut session = TurnSession::new(socket, credentials.clone(), Duration::from_secs(5));
        session.allocate(None).unwrap_or_else(|e| panic!("port {i} of 1000 is not free after the soak: {e}"));
        held.push(session);
    }
    for session in &mut held {
        session.refresh(0).expect("delete");
    }
    eprintln!(
        "soak {seconds}s: {} churn cycles, {} relayed back, fds {fds_before} -> {fds_after}, RSS {rss_before} -> {rss_after} KiB",
        churned.load(Ordering::Relaxed),
        relay["to_client"]
    );
}
