//! A drain with a deadline (`drain_timeout`, `--drain-timeout`): an
//! allocation that outlives it is ended, and tern exits by itself with
//! status 0. Without a deadline a drain waits for the last allocation
//! (tests/turn_e2e.rs).

mod common;

use std::time::Duration;

use common::{TernServer, find_log, run_tern, scratch_file};
use tern::client::ClientSocket;
use tern::client::turn::{Credentials, TurnSession};
use tern::proto::Transport;

#[test]
fn a_drain_timeout_ends_the_allocations_left_and_tern_exits_cleanly() {
    let server = TernServer::start(&["--user", "alice:wonderland", "--workers", "2", "--drain-timeout", "1"]);
    let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, Duration::from_secs(5)).expect("socket");
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let mut alice = TurnSession::new(socket, credentials, Duration::from_secs(2));
    alice.allocate(None).expect("an allocation before the drain");

    server.signal(libc::SIGUSR1);
    let (status, log) = server.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "a drain that reaches its deadline exits with 0: {status}");
    let passed = find_log(&log, "drain deadline passed: ending the allocations left").expect("the deadline is logged");
    assert_eq!(passed["allocations"], 1, "{passed}");
    let deleted = find_log(&log, "allocation deleted").expect("the allocation is deleted");
    assert_eq!(deleted["reason"], "server shutting down", "{deleted}");
    assert!(find_log(&log, "drained: no allocation left").is_none(), "the allocation did not end by itself");
    assert!(alice.refresh(600).is_err(), "the client is no longer served");
}

#[test]
fn drain_timeout_is_whole_seconds_from_the_file_or_the_flag() {
    let file = scratch_file("drain.toml", "drain_timeout = 30\n");
    let path = file.to_str().expect("utf-8 path");
    let output = run_tern(&["check", "--config", path]);
    assert!(output.status.success(), "{output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("\ndrain_timeout = 30\n"), "{output:?}");
    let output = run_tern(&["check", "--config", path, "--drain-timeout", "45"]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("\ndrain_timeout = 45\n"), "{output:?}");

    let output = run_tern(&["check", "--drain-timeout", "0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(stderr.trim_end(), "tern: command line: key `--drain-timeout`: must be at least 1", "{output:?}");
    let file = scratch_file("drain-zero.toml", "drain_timeout = 0\n");
    let output = run_tern(&["check", "--config", file.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("key `drain_timeout`: must be at least 1"), "{output:?}");
}
