//! Prometheus metrics end to end: `tern serve --metrics-listen` answers
//! `GET /metrics` with OpenMetrics text whose counters follow what the
//! server did (a `tern turn` probe's allocation and packets) and whose
//! gauges follow what it holds now (and whether it drains) and which
//! configuration is in force; other requests get HTTP errors; a bad or busy
//! metrics address stops tern from starting, naming the key.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use common::metrics::{http, metrics_addr, scrape};
use common::{TernServer, run_tern, scratch_file};
use tern::client::ClientSocket;
use tern::client::turn::{Credentials, TurnSession};
use tern::io::clock;
use tern::proto::Transport;

const TIMEOUT: Duration = Duration::from_secs(5);
/// Counters are published by each worker once a second.
const PUBLISH_WAIT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(100);

fn start() -> (TernServer, SocketAddr) {
    let args = ["--user", "alice:wonderland", "--allow-peer", "127.0.0.0/8", "--workers", "2"];
    let server = TernServer::start(&[&args[..], &["--metrics-listen", "127.0.0.1:0"]].concat());
    let addr = metrics_addr(&server);
    (server, addr)
}

/// The value of the sample named `sample` (with its labels, as written).
fn value(metrics: &str, sample: &str) -> Option<u64> {
    metrics.lines().find_map(|line| line.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
}

/// Scrapes until `sample` reaches `at_least`, or fails after [`PUBLISH_WAIT`].
fn scrape_until(addr: SocketAddr, sample: &str, at_least: u64) -> String {
    let deadline = clock::now() + PUBLISH_WAIT;
    loop {
        let metrics = scrape(addr);
        if value(&metrics, sample).is_some_and(|v| v >= at_least) {
            return metrics;
        }
        assert!(clock::now() < deadline, "{sample} did not reach {at_least}:\n{metrics}");
        std::thread::sleep(POLL);
    }
}

#[test]
fn metrics_follow_the_servers_work() {
    let (server, metrics) = start();
    let first = scrape(metrics);
    assert_eq!(value(&first, "tern_workers"), Some(2), "{first}");
    assert_eq!(value(&first, "tern_allocations"), Some(0), "{first}");
    assert_eq!(value(&first, "tern_proxy_headers_total"), Some(0), "{first}");
    for reason in ["untrusted", "missing", "malformed", "closed", "timeout"] {
        let sample = format!("tern_proxy_failures_total{{reason=\"{reason}\"}}");
        assert_eq!(value(&first, &sample), Some(0), "{first}");
    }
    assert!(first.ends_with("# EOF\n"), "{first}");

    // A live allocation shows in the gauge at once.
    let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, TIMEOUT).expect("UDP socket");
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let mut session = TurnSession::new(socket, credentials, TIMEOUT);
    session.allocate(None).expect("allocation");
    assert_eq!(value(&scrape(metrics), "tern_allocations"), Some(1));

    // A probe's round trip shows in the counters once the workers publish.
    let addr = server.udp_addr().to_string();
    let output = run_tern(&["turn", &addr, "-u", "alice", "-p", "wonderland"]);
    assert!(output.status.success(), "tern turn: {}", String::from_utf8_lossy(&output.stdout));
    let after = scrape_until(metrics, "tern_allocations_created_total", 2);
    assert!(value(&after, "tern_relayed_packets_total{direction=\"to_peer\"}").is_some_and(|v| v >= 1), "{after}");
    assert!(value(&after, "tern_relayed_packets_total{direction=\"to_client\"}").is_some_and(|v| v >= 1), "{after}");
    assert!(value(&after, "tern_relayed_bytes_total{direction=\"to_peer\"}").is_some_and(|v| v >= 1), "{after}");
    assert!(value(&after, "tern_auth_failures_total").is_some_and(|v| v >= 2), "the 401s of both clients: {after}");
    assert!(value(&after, "tern_stun_requests_total").is_some_and(|v| v >= 6), "{after}");

    session.refresh(0).expect("delete");
    let deleted = scrape_until(metrics, "tern_allocations_deleted_total", 2);
    assert_eq!(value(&deleted, "tern_allocations"), Some(0), "{deleted}");

    // Anything but GET /metrics is an HTTP error, and the server carries on.
    let (status, _, _) = http(metrics, "GET / HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, _, _) = http(metrics, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    let (status, _, _) = http(metrics, &format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)));
    assert_eq!(status, "HTTP/1.1 431 Request Header Fields Too Large");
    assert_eq!(value(&scrape(metrics), "tern_draining"), Some(0));

    // Draining (SIGUSR1) shows; the drained server then stops by itself.
    session.allocate(None).expect("a second allocation");
    server.signal(libc::SIGUSR1);
    scrape_until(metrics, "tern_draining", 1);
    session.refresh(0).expect("delete");
    let (status, _) = server.wait_exit(PUBLISH_WAIT);
    assert!(status.success());
}

/// The configuration's generation and its reloads: 1 at start, one more
/// per reload that applies; a file that does not load changes nothing, is
/// counted, and its time is kept.
#[test]
fn metrics_say_which_configuration_is_in_force_and_when_a_reload_failed() {
    let good = |quota: u32| format!("user_quota = {quota}\n[auth.users]\nalice = \"wonderland\"\n");
    let file = scratch_file("metrics-reload.toml", &good(1));
    let path = file.to_str().expect("utf-8 path");
    let server = TernServer::start(&["--config", path, "--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics_addr(&server);
    let first = scrape(metrics);
    assert_eq!(value(&first, "tern_config_generation"), Some(1), "{first}");
    assert_eq!(value(&first, "tern_config_reload_failures_total"), Some(0), "{first}");
    assert_eq!(value(&first, "tern_config_last_reload_failure_timestamp_seconds"), Some(0), "{first}");
    let started = value(&first, "tern_config_last_reload_success_timestamp_seconds").expect("the start counts");
    assert!(started > 0, "{first}");
    let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, TIMEOUT).expect("UDP socket");
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let mut session = TurnSession::new(socket, credentials, TIMEOUT);
    session.allocate(None).expect("the one allocation the quota allows");

    std::fs::write(&file, good(2)).expect("rewrite the config");
    server.signal(libc::SIGHUP);
    let reloaded = server.wait_for_log("configuration reloaded", 1, TIMEOUT);
    assert_eq!(reloaded[0]["generation"].as_u64(), Some(2), "{reloaded:?}");
    let after = scrape(metrics);
    assert_eq!(value(&after, "tern_config_generation"), Some(2), "{after}");
    assert!(value(&after, "tern_config_last_reload_success_timestamp_seconds").is_some_and(|t| t >= started));

    std::fs::write(&file, "user_quota = \"many\"\n").expect("break the config");
    server.signal(libc::SIGHUP);
    let failed = server.wait_for_log("configuration reload failed; keeping the running configuration", 1, TIMEOUT);
    let error = failed[0]["error"].as_str().expect("the error is logged");
    assert!(error.contains("user_quota") && error.contains(path), "names the key and the file: {error}");
    assert_eq!(failed[0]["generation"].as_u64(), Some(2), "{failed:?}");
    let broken = scrape(metrics);
    assert_eq!(value(&broken, "tern_config_generation"), Some(2), "{broken}");
    assert_eq!(value(&broken, "tern_config_reload_failures_total"), Some(1), "{broken}");
    assert!(value(&broken, "tern_config_last_reload_failure_timestamp_seconds").is_some_and(|t| t >= started));
    // Nothing changed: the quota is still 2, and alice still gets in.
    let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, TIMEOUT).expect("UDP socket");
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let mut second = TurnSession::new(socket, credentials, TIMEOUT);
    second.allocate(None).expect("the reloaded quota of 2 still holds");
    second.refresh(0).expect("delete");
    session.refresh(0).expect("delete");
}

#[test]
fn a_bad_or_busy_metrics_address_stops_tern_naming_the_key() {
    let file = scratch_file("metrics-bad.toml", "[metrics]\nlisten = \"localhost:9641\"\n");
    let output = run_tern(&["check", "--config", file.to_str().expect("utf-8 path")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("metrics.listen") && stderr.contains("not an IP:port"), "{stderr}");

    let busy = TcpListener::bind("127.0.0.1:0").expect("a port to occupy");
    let taken = busy.local_addr().expect("bound").to_string();
    let failure = TernServer::try_start(&["--metrics-listen", &taken]).err().expect("tern refuses to start");
    let stderr = failure.stderr.join("\n");
    assert!(stderr.contains("metrics.listen") && stderr.contains(&taken), "{stderr}");
}
