//! A real browser: headless Chromium makes a WebRTC call between two
//! RTCPeerConnections that may only use relayed candidates, with tern as
//! their TURN server (`turn:…?transport=udp`, `?transport=tcp` and `turns:`, a static
//! user and a TURN REST credential). The data channel must open through
//! tern and carry a message each way. The page and its driver are
//! tests/interop/browser_webrtc.py.
//!
//! Chromium is `TERN_CHROMIUM` or `chromium` on PATH (Debian: apt-get
//! install chromium). Without it the test prints a notice and skips, unless
//! `TERN_REQUIRE_INTEROP=1` (CI) makes it fail.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TernServer, run_bounded, run_tern};

/// Runs the call; returns the page's report.
fn call(chromium: &str, uri: &str, user: &str, password: &str) -> serde_json::Value {
    call_with(chromium, uri, user, password, &[])
}

/// The same, with extra Chromium flags.
fn call_with(chromium: &str, uri: &str, user: &str, password: &str, flags: &[&str]) -> serde_json::Value {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/browser_webrtc.py");
    let output = run_bounded(
        Command::new("python3").args([script, chromium, uri, user, password]).args(flags),
        Duration::from_secs(90),
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("the driver prints JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr))
    });
    assert!(output.status.success(), "the call through {uri} failed: {report}");
    report
}

#[test]
fn chromium_calls_through_tern_over_udp_and_tcp() {
    let Some(chromium) = common::chromium::find() else { return };
    let server =
        TernServer::start(&["--user", "alice:wonderland", "--secret", "s3cr3t", "--allow-peer", "127.0.0.0/8"]);
    let port = server.udp_addr().port();

    let udp = call(&chromium, &format!("turn:127.0.0.1:{port}?transport=udp"), "alice", "wonderland");
    assert_eq!((&udp["local_type"], &udp["remote_type"]), (&"relay".into(), &"relay".into()), "{udp}");
    assert_eq!(udp["relay_protocol"], "udp", "{udp}");

    // What a WebRTC app gets from its backend: a time-limited REST credential.
    let output = run_tern(&["credentials", "--secret", "s3cr3t", "--user", "browser", "--ttl", "1h"]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        stdout.lines().find_map(|l| l.strip_prefix(name)).map(str::trim).expect("credential field").to_owned()
    };
    let (username, password) = (field("username:"), field("password:"));
    let tcp = call(&chromium, &format!("turn:127.0.0.1:{port}?transport=tcp"), &username, &password);
    assert_eq!(tcp["relay_protocol"], "tcp", "{tcp}");

    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let created = log.iter().filter(|l| l.contains("\"allocation created\"")).count();
    assert!(created >= 4, "each peer connection allocated once per call: {created}");
}

/// `turns:`: the same call through TURN over TLS. The test certificate is
/// self-signed, so Chromium is told to accept it.
#[test]
fn chromium_calls_through_tern_over_tls() {
    let Some(chromium) = common::chromium::find() else { return };
    let cert = common::TestCert::new("browser");
    let mut args = vec!["--user", "alice:wonderland", "--allow-peer", "127.0.0.0/8"];
    args.extend(cert.serve_args());
    let server = TernServer::start(&args);
    let port = server.tls_addr().port();
    let report = call_with(
        &chromium,
        &format!("turns:localhost:{port}?transport=tcp"),
        "alice",
        "wonderland",
        &["--ignore-certificate-errors"],
    );
    assert_eq!(report["relay_protocol"], "tls", "{report}");
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    let created: Vec<_> = log.iter().filter(|l| l.contains("\"allocation created\"")).collect();
    assert!(created.len() >= 2 && created.iter().all(|l| l.contains("tls")), "{created:?}");
}
