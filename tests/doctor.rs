//! `tern doctor` against the real `tern serve`: a healthy deployment on
//! loopback passes every check that applies there, and each deliberately
//! broken one is caught by the right failing line with the right fix: a
//! relay behind a NAT without `external_ip` and relay ports behind a
//! firewall (network namespaces with nftables, common::netns), an expired
//! certificate (rcgen), a wrong secret, a wrong password, a wrong realm, a
//! version in SOFTWARE, and a server that relays for anyone.

mod common;

use std::process::Output;

use common::netns::{self, NamespacedServer, Plan, Topology};
use common::{TernServer, TestCert, run_tern, scratch_file};
use serde_json::Value;

/// Bound on each network step of the doctor; short, since the broken setups
/// make some steps wait it out.
const TIMEOUT: &str = "2s";

/// Runs `tern doctor ARGS --json` and returns its exit code and report.
fn doctor(args: &[&str]) -> (Option<i32>, Value) {
    let mut full = vec!["doctor", "--json", "--timeout", TIMEOUT];
    full.extend_from_slice(args);
    report_of(&run_tern(&full))
}

fn report_of(output: &Output) -> (Option<i32>, Value) {
    let stdout = String::from_utf8_lossy(&output.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|e| {
        panic!("tern doctor printed no JSON report ({e}): {stdout}\n{}", String::from_utf8_lossy(&output.stderr))
    });
    (output.status.code(), report)
}

/// The check named `name`, failing the test when it did not run.
fn check<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["checks"]
        .as_array()
        .and_then(|checks| checks.iter().find(|c| c["check"] == name))
        .unwrap_or_else(|| panic!("no {name:?} check in {report:#}"))
}

fn status<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["status"].as_str().unwrap_or_else(|| panic!("{name}: status is a string"))
}

fn fix<'a>(report: &'a Value, name: &str) -> &'a str {
    check(report, name)["fix"].as_str().unwrap_or_else(|| panic!("{name} has a fix: {report:#}"))
}

/// The names of the checks with `wanted` status.
fn with_status<'a>(report: &'a Value, wanted: &str) -> Vec<&'a str> {
    report["checks"]
        .as_array()
        .expect("checks")
        .iter()
        .filter(|c| c["status"] == wanted)
        .filter_map(|c| c["check"].as_str())
        .collect()
}

#[test]
fn a_healthy_loopback_deployment_passes_every_check_that_applies() {
    let cert = TestCert::new("doctor-healthy");
    let mut args = cert.serve_args();
    args.extend(["--secret", "s3cret", "--realm", "example.org", "--allow-peer", "127.0.0.0/8"]);
    let server = TernServer::start(&args);
    let udp = format!("turn:{}?transport=udp", server.udp_addr());
    let tcp = format!("turn:{}?transport=tcp", server.tcp_addr());
    let tls = format!("turns:{}", server.tls_addr());
    let urls = [udp.as_str(), tcp.as_str(), tls.as_str()];
    let mut args = urls.to_vec();
    args.extend(["--user", "alice", "--secret", "s3cret", "--realm", "example.org"]);
    args.extend(["--tls-ca", cert.cert_path(), "--sni", "localhost"]);
    let (code, report) = doctor(&args);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(report["ok"], true);
    assert!(with_status(&report, "fail").is_empty() && with_status(&report, "warn").is_empty(), "{report:#}");
    // What cannot apply on loopback, and why: an IP literal needs no DNS,
    // and a relay on loopback says nothing of what a client elsewhere reaches.
    assert_eq!(with_status(&report, "skip"), ["dns", "relayed address"], "{report:#}");
    assert!(check(&report, "relayed address")["detail"].as_str().is_some_and(|d| d.contains("loopback")));
    for name in [
        "stun udp",
        "allocate udp",
        "relay ports",
        "relay permission udp",
        "relay channel udp",
        "stun tcp",
        "allocate tcp",
        "relay permission tcp",
        "relay channel tcp",
        "tls alpn",
        "tls chain",
        "tls hostname",
        "tls expiry",
        "stun tls",
        "allocate tls",
        "relay permission tls",
        "relay channel tls",
        "reflexive address",
        "auth",
        "realm",
        "rest expiry",
        "software",
        "amplification",
    ] {
        assert_eq!(status(&report, name), "ok", "{name}: {report:#}");
    }
    assert!(check(&report, "tls alpn")["detail"].as_str().is_some_and(|d| d.contains("stun.turn")));
    assert!(check(&report, "realm")["detail"].as_str().is_some_and(|d| d.contains("example.org")));
    let amplification = check(&report, "amplification")["detail"].as_str().expect("detail");
    assert!(amplification.starts_with("Binding 20 → 32 bytes"), "{amplification}");

    // Every allocation it made was deleted; the expired credential got none.
    server.wait_for_log("allocation deleted", 3, common::ANSWER_TIMEOUT);
    let (stopped, lines) = server.stop_with_summary();
    assert_eq!(common::logged(&lines, "allocation created").len(), 3, "{stopped}");

    // The same as text: one line per check, and a tally.
    let cert = TestCert::new("doctor-text");
    let mut args = cert.serve_args();
    args.extend(["--user", "alice:wonderland", "--allow-peer", "127.0.0.0/8"]);
    let server = TernServer::start(&args);
    let url = format!("turn:{}?transport=udp", server.udp_addr());
    let output = run_tern(&["doctor", &url, "-u", "alice", "-p", "wonderland", "--timeout", TIMEOUT]);
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{text}");
    assert!(text.lines().any(|l| l.starts_with("ok    allocate udp") && l.contains("relayed 127.0.0.1:")), "{text}");
    assert!(text.lines().any(|l| l.starts_with("skip  rest expiry") && l.contains("needs --secret")), "{text}");
    assert!(text.lines().last().is_some_and(|l| l.ends_with("0 failures, 3 skipped")), "{text}");
    server.stop();
}

#[test]
fn an_expired_certificate_fails_the_expiry_check_with_the_renewal_fix() {
    let cert = TestCert::with_validity("doctor-expired", (2020, 1, 1), (2021, 1, 1));
    let mut args = cert.serve_args();
    args.extend(["--user", "alice:wonderland", "--allow-peer", "127.0.0.0/8"]);
    let server = TernServer::start(&args);
    let url = format!("turns:{}", server.tls_addr());
    let (code, report) =
        doctor(&[&url, "-u", "alice", "-p", "wonderland", "--tls-ca", cert.cert_path(), "--sni", "localhost"]);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(with_status(&report, "fail"), ["tls expiry"], "{report:#}");
    let detail = check(&report, "tls expiry")["detail"].as_str().expect("detail");
    assert!(detail.starts_with("expired 2021-01-01T00:00:00Z"), "{detail}");
    assert!(fix(&report, "tls expiry").contains("systemctl reload tern"), "{report:#}");
    // Trusted and for the right name: only the date is wrong, and the rest
    // of the deployment was still checked over that connection.
    for name in ["tls chain", "tls hostname", "tls alpn", "stun tls", "allocate tls", "relay channel tls"] {
        assert_eq!(status(&report, name), "ok", "{name}: {report:#}");
    }

    // Checked against another name, the hostname check fails too.
    let (_, report) = doctor(&[&url, "--tls-ca", cert.cert_path(), "--sni", "turn.example.com"]);
    assert_eq!(status(&report, "tls hostname"), "fail", "{report:#}");
    assert!(fix(&report, "tls hostname").contains("names turn.example.com"), "{report:#}");
    // Without the CA, the self-signed chain is not trusted.
    let (_, report) = doctor(&[&url, "--sni", "localhost"]);
    assert_eq!(status(&report, "tls chain"), "fail", "{report:#}");
    assert!(check(&report, "tls chain")["detail"].as_str().is_some_and(|d| d.contains("self-signed")), "{report:#}");
    server.stop();
}

#[test]
fn a_wrong_secret_or_password_fails_allocate_with_what_to_check() {
    let server = TernServer::start(&["--secret", "right", "--user", "alice:wonderland"]);
    let url = format!("turn:{}?transport=udp", server.udp_addr());

    let (code, report) = doctor(&[&url, "--user", "alice", "--secret", "wrong"]);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(with_status(&report, "fail"), ["allocate udp"], "{report:#}");
    assert!(check(&report, "allocate udp")["detail"].as_str().is_some_and(|d| d.starts_with("401")), "{report:#}");
    assert!(fix(&report, "allocate udp").contains("--secret is not one of its auth.secrets"), "{report:#}");
    assert_eq!(status(&report, "stun udp"), "ok");
    assert_eq!(status(&report, "auth"), "ok");
    assert_eq!(status(&report, "rest expiry"), "skip", "nothing to compare with: {report:#}");

    let (code, report) = doctor(&[&url, "--user", "alice", "--pass", "wrong"]);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(with_status(&report, "fail"), ["allocate udp"], "{report:#}");
    assert!(fix(&report, "allocate udp").contains("wrong password for \"alice\""), "{report:#}");

    // Without credentials the unauthenticated checks still run.
    let (code, report) = doctor(&[&url]);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(status(&report, "allocate udp"), "skip");
    assert_eq!(status(&report, "auth"), "ok");
    server.stop();
}

#[test]
fn a_version_in_software_a_wrong_realm_and_an_open_relay_are_reported() {
    let config = scratch_file("doctor-software.toml", "software = \"tern 0.1.0\"\nrealm = \"example.org\"\n");
    let config = config.to_str().expect("utf-8 path");
    let server = TernServer::start(&["--config", config, "--user", "alice:wonderland"]);
    let url = format!("turn:{}?transport=udp", server.udp_addr());
    let (code, report) = doctor(&[&url, "--realm", "example.com"]);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(status(&report, "software"), "warn", "{report:#}");
    assert!(check(&report, "software")["detail"].as_str().is_some_and(|d| d.contains("tern 0.1.0")));
    assert!(fix(&report, "software").contains("software = \"\""), "{report:#}");
    assert_eq!(status(&report, "realm"), "fail", "{report:#}");
    assert!(fix(&report, "realm").contains("realm = \"example.com\""), "{report:#}");
    server.stop();

    let server = TernServer::start(&["--allow-anonymous"]);
    let url = format!("turn:{}?transport=udp", server.udp_addr());
    let (code, report) = doctor(&[&url]);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(status(&report, "auth"), "fail", "{report:#}");
    assert!(fix(&report, "auth").contains("allow_anonymous"), "{report:#}");
    // The allocation the stranger got was deleted again.
    server.wait_for_log("allocation deleted", 1, common::ANSWER_TIMEOUT);
    server.stop();
}

// ---------------------------------------------------------------------------
// A server on a private address behind a cloud-style 1:1 NAT, reached by a
// client on the "Internet" (TEST-NET-3, which tern doctor counts as public):
//
//   client ns 203.0.113.2 ── router ns 203.0.113.1, 203.0.113.10 ⇄ 10.77.2.10 ── server ns 10.77.2.10
//
// The router forwards every port of 203.0.113.10 to the server and sends
// the server's traffic out from 203.0.113.10; like the Internet, it routes
// nothing from the client side to private addresses.

const PUBLIC_IP: &str = "203.0.113.10";
const PRIVATE_IP: &str = "10.77.2.10";
const RELAY_PORTS: &str = "50000-50100";

const CLOUD: Plan<'static> = Plan {
    client: "203.0.113.2/24",
    router_client: &["203.0.113.1/24", "203.0.113.10/24"],
    router_server: "10.77.2.1/24",
    server: &["10.77.2.10/24"],
};

/// The topology with its 1:1 NAT, or why it cannot be built here.
fn cloud() -> Option<Topology> {
    if let Some(missing) = netns::tools_missing() {
        eprintln!("skipping: {missing}");
        return None;
    }
    let topology = match Topology::build(&CLOUD) {
        Ok(topology) => topology,
        Err(reason) => {
            eprintln!("skipping: cannot build network namespaces (needs root): {reason}");
            return None;
        }
    };
    let rules = format!(
        "table ip tern_cloud {{\n\
         chain unrouted {{ type filter hook prerouting priority raw; policy accept; \
         iifname \"{down}\" ip daddr 10.0.0.0/8 drop; }}\n\
         chain to_server {{ type nat hook prerouting priority dstnat; policy accept; \
         ip daddr {PUBLIC_IP} dnat to {PRIVATE_IP}; }}\n\
         chain from_server {{ type nat hook postrouting priority srcnat; policy accept; \
         oifname \"{down}\" ip saddr {PRIVATE_IP} snat to {PUBLIC_IP}; }}\n}}\n",
        down = topology.downlink
    );
    if let Err(reason) = topology.nft(&topology.router, &rules) {
        eprintln!("skipping: cannot install an nftables NAT in a namespace: {reason}");
        return None;
    }
    Some(topology)
}

/// tern in the server namespace, with REST credentials and the client's
/// network allowed as peers, plus `extra`.
fn cloud_server(topology: &Topology, extra: &[&str]) -> NamespacedServer {
    let listen = format!("{PRIVATE_IP}:3478");
    let mut args =
        vec!["--listen", &listen, "--secret", "s3cret", "--allow-peer", "203.0.113.0/24", "--relay-ports", RELAY_PORTS];
    args.extend_from_slice(extra);
    NamespacedServer::start(&topology.server, &args, &listen)
}

fn doctor_from_outside(topology: &Topology) -> (Option<i32>, Value) {
    let url = format!("turn:{PUBLIC_IP}:3478");
    report_of(&topology.tern_in_client(&[
        "doctor",
        &url,
        "--user",
        "alice",
        "--secret",
        "s3cret",
        "--timeout",
        TIMEOUT,
        "--json",
    ]))
}

#[test]
fn a_relay_behind_nat_without_external_ip_is_caught_and_the_fix_works() {
    let Some(topology) = cloud() else { return };
    let server = cloud_server(&topology, &[]);
    let (code, report) = doctor_from_outside(&topology);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(status(&report, "relayed address"), "fail", "{report:#}");
    let detail = check(&report, "relayed address")["detail"].as_str().expect("detail");
    assert!(
        detail.starts_with(&format!("{PRIVATE_IP} is private, but clients reach the server at {PUBLIC_IP}")),
        "{detail}"
    );
    let external_ip = format!("external_ip = [\"{PUBLIC_IP}/{PRIVATE_IP}\"]");
    assert!(fix(&report, "relayed address").contains(&external_ip), "{report:#}");
    // The round trips fail for the same reason, and say so: the relay's
    // datagrams arrive from the public address, not the advertised one.
    for name in ["relay permission udp", "relay channel udp", "relay permission tcp", "relay channel tcp"] {
        assert_eq!(status(&report, name), "fail", "{name}: {report:#}");
        assert!(fix(&report, name).contains(&external_ip), "{name}: {report:#}");
    }
    assert!(fix(&report, "relay ports").contains("fix the relayed address first"), "{report:#}");
    for name in ["stun udp", "stun tcp", "allocate udp", "allocate tcp", "reflexive address", "auth", "rest expiry"] {
        assert_eq!(status(&report, name), "ok", "{name}: {report:#}");
    }
    drop(server);

    // With the fix in place, everything passes.
    let external = format!("{PUBLIC_IP}/{PRIVATE_IP}");
    let _server = cloud_server(&topology, &["--external-ip", &external]);
    let (code, report) = doctor_from_outside(&topology);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(with_status(&report, "fail"), Vec::<&str>::new(), "{report:#}");
    assert_eq!(status(&report, "relayed address"), "ok", "{report:#}");
    assert_eq!(status(&report, "relay ports"), "ok", "{report:#}");
}

#[test]
fn relay_ports_blocked_by_a_firewall_are_caught() {
    let Some(topology) = cloud() else { return };
    // The server's host firewall drops new inbound flows to the relay
    // ports; answers to what the relay sent still pass (it is stateful).
    let firewall = format!(
        "table inet tern_firewall {{\n  chain input {{\n    type filter hook input priority filter; policy accept;\n    \
         udp dport {RELAY_PORTS} ct state new drop\n  }}\n}}\n"
    );
    topology.nft(&topology.server, &firewall).unwrap_or_else(|e| panic!("{e}"));
    let external = format!("{PUBLIC_IP}/{PRIVATE_IP}");
    let _server = cloud_server(&topology, &["--external-ip", &external]);
    let (code, report) = doctor_from_outside(&topology);
    assert_eq!(code, Some(1), "{report:#}");
    assert_eq!(with_status(&report, "fail"), ["relay ports"], "{report:#}");
    assert!(fix(&report, "relay ports").contains("open the relay port range"), "{report:#}");
    assert_eq!(status(&report, "relayed address"), "ok", "{report:#}");
    assert_eq!(status(&report, "relay permission udp"), "ok", "{report:#}");
}
