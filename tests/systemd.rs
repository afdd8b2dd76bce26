//! systemd's service protocol end to end: the real `tern serve`, with
//! `NOTIFY_SOCKET` naming a Unix datagram socket of the test (and
//! `WATCHDOG_USEC` set as systemd sets it), tells it READY, STATUS,
//! RELOADING, STOPPING and WATCHDOG in the right order; a worker held still
//! by the test-only hook stops the watchdog pings. The unit file itself
//! passes `systemd-analyze verify`.
//!
//! Every wait is bounded; the only timing assertion is that once tern has
//! logged a held worker as stalled, no ping comes for several watchdog
//! periods, which a slow machine can only make easier to pass.

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::{TernServer, UdpClient, require_tool};
use tern::client::ClientSocket;
use tern::client::turn::{Credentials, TurnSession};
use tern::io::clock;
use tern::proto::Transport;

/// How long a message that must come may take.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(20);
/// Upper bound on the datagrams any one wait reads.
const MAX_MESSAGES: usize = 10_000;

/// The test's end of `NOTIFY_SOCKET`: what tern sent, one datagram at a time.
struct NotifySocket {
    dir: PathBuf,
    path: String,
    socket: UnixDatagram,
    /// Every datagram received so far, in order.
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind() -> Self {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // In the system's temporary directory: a socket path must be short
        // (108 bytes), which a deep target directory may not be.
        let dir = std::env::temp_dir().join(format!("tern-notify-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        let path = dir.join("notify");
        let socket = UnixDatagram::bind(&path).unwrap_or_else(|e| panic!("binding {}: {e}", path.display()));
        let path = path.to_str().expect("a UTF-8 temporary path").to_owned();
        Self { dir, path, socket, seen: Vec::new() }
    }

    /// The next datagram, if one comes within `timeout`.
    fn next(&mut self, timeout: Duration) -> Option<String> {
        let mut buf = [0u8; 4096];
        self.socket.set_read_timeout(Some(timeout.max(Duration::from_millis(1)))).expect("a read timeout");
        let len = self.socket.recv(&mut buf).ok()?;
        let text = String::from_utf8_lossy(&buf[..len]).into_owned();
        self.seen.push(text.clone());
        Some(text)
    }

    /// Reads datagrams until one satisfies `wanted`, and returns it; fails
    /// the test with everything seen when none does within `timeout`.
    fn wait_for(&mut self, what: &str, timeout: Duration, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = clock::now() + timeout;
        for _ in 0..MAX_MESSAGES {
            let left = deadline.saturating_duration_since(clock::now());
            if left.is_zero() {
                break;
            }
            if let Some(message) = self.next(left)
                && wanted(&message)
            {
                return message;
            }
        }
        panic!("no {what} within {timeout:?}; received:\n{:#?}", self.seen);
    }

    /// Takes in what is already queued, without waiting.
    fn take_queued(&mut self) {
        let mut buf = [0u8; 4096];
        self.socket.set_nonblocking(true).expect("a non-blocking socket");
        for _ in 0..MAX_MESSAGES {
            let Ok(len) = self.socket.recv(&mut buf) else { break };
            self.seen.push(String::from_utf8_lossy(&buf[..len]).into_owned());
        }
        self.socket.set_nonblocking(false).expect("a blocking socket");
    }

    /// Every datagram that arrives within `window`.
    fn collect(&mut self, window: Duration) -> Vec<String> {
        let deadline = clock::now() + window;
        let mut messages = Vec::new();
        for _ in 0..MAX_MESSAGES {
            let left = deadline.saturating_duration_since(clock::now());
            if left.is_zero() {
                break;
            }
            messages.extend(self.next(left));
        }
        messages
    }
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether `message` holds the line `line` (`READY=1`).
fn has(message: &str, line: &str) -> bool {
    message.lines().any(|l| l == line)
}

/// The value of `key` in `message` (`STATUS` of `STATUS=serving`).
fn value<'a>(message: &'a str, key: &str) -> Option<&'a str> {
    message.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
}

fn start(args: &[&str], env: &[(&str, &str)]) -> TernServer {
    TernServer::try_start_with_env(args, env).unwrap_or_else(|failure| panic!("{failure}"))
}

#[test]
fn tern_tells_systemd_it_is_ready_reloading_draining_and_stopping() {
    let mut notify = NotifySocket::bind();
    let env = [("NOTIFY_SOCKET", notify.path.as_str()), ("WATCHDOG_USEC", "2000000")];
    let server = start(&["--user", "alice:wonderland", "--workers", "2"], &env);

    let ready = notify.wait_for("READY=1", MESSAGE_TIMEOUT, |m| has(m, "READY=1"));
    assert_eq!(notify.seen.len(), 1, "READY=1 comes first: {:#?}", notify.seen);
    assert_eq!(value(&ready, "STATUS"), Some("serving; allocations: 0"), "{ready}");
    // Every listener was bound before READY=1.
    UdpClient::new(server.udp_addr()).assert_binding_works();

    let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, Duration::from_secs(5)).expect("socket");
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let mut alice = TurnSession::new(socket, credentials, Duration::from_secs(5));
    alice.allocate(None).expect("an allocation");
    notify.wait_for("a STATUS with the allocation", MESSAGE_TIMEOUT, |m| {
        value(m, "STATUS") == Some("serving; allocations: 1")
    });
    for ping in 1..=3 {
        notify.wait_for(&format!("WATCHDOG=1 #{ping}"), MESSAGE_TIMEOUT, |m| has(m, "WATCHDOG=1"));
    }

    server.signal(libc::SIGHUP);
    let reloading = notify.wait_for("RELOADING=1", MESSAGE_TIMEOUT, |m| has(m, "RELOADING=1"));
    let monotonic = value(&reloading, "MONOTONIC_USEC").and_then(|usec| usec.parse::<u64>().ok());
    assert!(monotonic.is_some_and(|usec| usec > 0), "RELOADING=1 carries MONOTONIC_USEC: {reloading}");
    assert_eq!(value(&reloading, "STATUS"), Some("reloading; allocations: 1"), "{reloading}");
    let reloaded = notify.wait_for("READY=1 after the reload", MESSAGE_TIMEOUT, |m| has(m, "READY=1"));
    assert_eq!(value(&reloaded, "STATUS"), Some("serving; allocations: 1"), "{reloaded}");

    server.signal(libc::SIGUSR1);
    let draining = notify.wait_for("STOPPING=1 at the drain", MESSAGE_TIMEOUT, |m| has(m, "STOPPING=1"));
    assert_eq!(value(&draining, "STATUS"), Some("draining; allocations left: 1"), "{draining}");
    assert!(value(&draining, "EXTEND_TIMEOUT_USEC").is_some(), "a drain asks for time: {draining}");
    notify.wait_for("WATCHDOG=1 while draining", MESSAGE_TIMEOUT, |m| has(m, "WATCHDOG=1"));

    let (status, _) = server.stop_with_log();
    assert!(status.success(), "{status}");
    let stopping = notify.wait_for("STOPPING=1 on SIGTERM", MESSAGE_TIMEOUT, |m| has(m, "STOPPING=1"));
    assert_eq!(value(&stopping, "STATUS"), Some("stopping"), "{stopping}");
}

#[test]
fn sigterm_says_stopping_and_without_watchdog_usec_there_is_no_ping() {
    let mut notify = NotifySocket::bind();
    let server = start(&[], &[("NOTIFY_SOCKET", notify.path.as_str())]);
    notify.wait_for("READY=1", MESSAGE_TIMEOUT, |m| has(m, "READY=1"));
    let (status, _) = server.stop_with_log();
    assert!(status.success(), "{status}");
    let stopping = notify.wait_for("STOPPING=1", MESSAGE_TIMEOUT, |m| has(m, "STOPPING=1"));
    assert_eq!(value(&stopping, "STATUS"), Some("stopping"), "{stopping}");
    notify.collect(Duration::from_millis(200));
    assert!(!notify.seen.iter().any(|m| has(m, "WATCHDOG=1")), "no watchdog, no ping: {:#?}", notify.seen);
}

/// A worker that stops turning its loop (held still by the test-only hook)
/// stops the pings, so systemd would restart tern.
#[test]
fn a_worker_held_still_stops_the_watchdog_pings() {
    const WATCHDOG: Duration = Duration::from_secs(1);
    let mut notify = NotifySocket::bind();
    let usec = WATCHDOG.as_micros().to_string();
    let env =
        [("NOTIFY_SOCKET", notify.path.as_str()), ("WATCHDOG_USEC", usec.as_str()), ("TERN_TEST_HOLD_WORKER", "1:3s")];
    let server = start(&["--workers", "2"], &env);
    notify.wait_for("READY=1", MESSAGE_TIMEOUT, |m| has(m, "READY=1"));
    notify.wait_for("WATCHDOG=1 before the hold", MESSAGE_TIMEOUT, |m| has(m, "WATCHDOG=1"));

    let held = "held still by the test hook TERN_TEST_HOLD_WORKER: this worker's loop stops until shutdown";
    server.wait_for_log(held, 1, MESSAGE_TIMEOUT);
    let stalled = "a worker has not finished a loop turn since the last watchdog probe; no ping, so systemd restarts \
                   tern if this lasts";
    let logged = server.wait_for_log(stalled, 1, MESSAGE_TIMEOUT);
    assert_eq!(logged[0]["worker"], 1, "{}", logged[0]);
    // Every ping from before the probe that found the worker stalled is
    // queued by now; after it, none in four watchdog periods.
    notify.take_queued();
    let after = notify.collect(4 * WATCHDOG);
    let pings = after.iter().filter(|m| has(m, "WATCHDOG=1")).count();
    assert_eq!(pings, 0, "pings with a worker held still: {after:#?}");

    let (status, _) = server.stop_with_log();
    assert!(status.success(), "the held worker lets go at shutdown: {status}");
}

/// The shipped unit, with its binary paths pointed at the binary under
/// test, passes `systemd-analyze verify` without a word (it reports a
/// misspelt key or a bad value and still exits 0).
#[test]
fn the_unit_passes_systemd_analyze_verify() {
    if !require_tool("systemd-analyze", "systemd") {
        return;
    }
    let unit = include_str!("../systemd/tern.service");
    assert!(unit.contains("/usr/local/bin/tern"), "the unit runs /usr/local/bin/tern");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
    let path = dir.join("tern.service");
    std::fs::write(&path, unit.replace("/usr/local/bin/tern", common::tern_bin()))
        .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    let output = common::run_bounded(Command::new("systemd-analyze").arg("verify").arg(&path), common::COMMAND_TIMEOUT);
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success() && said.trim().is_empty(), "systemd-analyze verify: {}\n{said}", output.status);
}
