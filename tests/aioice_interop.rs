//! Interop with aioice, the Python ICE stack aiortc uses (PyPI `aioice`):
//! its TURN client allocates over UDP and TCP, binds a channel and relays
//! through tern to an echo peer; its ICE agent gathers a server-reflexive
//! and a relayed candidate from tern. The script is tests/interop/aioice_turn.py.
//!
//! The Python interpreter is `TERN_PYTHON` (CI points it at a virtualenv
//! with aioice installed) or `python3`. Without aioice the test prints a
//! notice and skips, unless `TERN_REQUIRE_INTEROP=1` (CI) makes it fail.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TernServer, run_bounded};

fn python() -> Option<String> {
    let python = std::env::var("TERN_PYTHON").unwrap_or_else(|_| "python3".to_owned());
    let has_aioice = Command::new(&python).args(["-c", "import aioice"]).output().is_ok_and(|o| o.status.success());
    if has_aioice {
        return Some(python);
    }
    if std::env::var("TERN_REQUIRE_INTEROP").is_ok_and(|v| v == "1") {
        panic!(
            "{python} cannot import aioice, and TERN_REQUIRE_INTEROP=1 makes interop tests mandatory (pip install aioice)"
        );
    }
    eprintln!("skipping: {python} cannot import aioice (pip install aioice, or set TERN_PYTHON)");
    None
}

#[test]
fn aioice_relays_through_tern_over_udp_and_tcp() {
    let Some(python) = python() else { return };
    let server = TernServer::start(&["--user", "alice:wonderland", "--allow-peer", "127.0.0.0/8"]);
    let port = server.udp_addr().port().to_string();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/aioice_turn.py");
    for transport in ["udp", "tcp"] {
        let output = run_bounded(
            Command::new(&python).args([script, "127.0.0.1", &port, "alice", "wonderland", transport, "200"]),
            Duration::from_secs(60),
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "aioice over {transport} failed:\n{stdout}\n{stderr}");
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).expect("the script prints JSON");
        assert_eq!(report["received"], 200, "{report}");
        assert_eq!(report["intact"], true, "{report}");
        // Every echo came back from the peer's own address, through the relay.
        assert_eq!(report["sources"].as_array().map(Vec::len), Some(1), "{report}");
        assert_eq!(report["sources"][0], report["peer"], "{report}");
        let types = report["candidate_types"].as_array().expect("candidate types");
        assert!(types.contains(&"srflx".into()) && types.contains(&"relay".into()), "{report}");
    }
    let (status, log) = server.stop_with_log();
    assert!(status.success());
    // Two relay runs and two gatherings, each deleting what it allocated.
    let created = log.iter().filter(|l| l.contains("\"allocation created\"")).count();
    assert_eq!(created, 4, "one allocation per aioice client");
}
