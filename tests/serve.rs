//! `tern::serve` in the test process: the `Serving` handle reloads the
//! credentials from the source tern started with, drains and stops it, as
//! SIGHUP, SIGUSR1 and SIGTERM do for the binary.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{LOOPBACK_V4, scratch_file};
use tern::client::ClientSocket;
use tern::client::turn::{Credentials, TurnSession};
use tern::config::Overrides;
use tern::config::Source;
use tern::io::shutdown::Shutdown;
use tern::proto::Transport;
use tern::serve::{self, Serving};

const TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `file` with one worker on an ephemeral loopback port.
fn serve(file: Option<std::path::PathBuf>) -> (Serving, SocketAddr) {
    let overrides =
        Overrides { listen: vec![LOOPBACK_V4.parse().expect("literal")], workers: Some(1), ..Overrides::default() };
    let source = Source::new(file, overrides);
    let config = source.load().expect("a valid configuration");
    let serving = serve::serve(&config, source, Shutdown::new()).expect("tern serves");
    let udp = serving.listening().iter().find(|(transport, _)| *transport == Transport::Udp).expect("a UDP address");
    let udp = udp.1;
    (serving, udp)
}

fn session(server: SocketAddr, user: &str) -> TurnSession {
    let socket = ClientSocket::open(server, Transport::Udp, TIMEOUT).expect("UDP socket");
    TurnSession::new(socket, Credentials { username: user.into(), password: "wonderland".into() }, TIMEOUT)
}

/// A file with alice, who stays, and `name`.
fn users(name: &str) -> String {
    format!("[auth.users]\nalice = \"wonderland\"\n{name} = \"wonderland\"\n")
}

#[test]
fn the_handle_reloads_drains_and_stops_once_drained() {
    let file = scratch_file("serve-in-process.toml", &users("carol"));
    let (serving, server) = serve(Some(file.clone()));
    let mut alice = session(server, "alice");
    alice.allocate(None).expect("alice is in the file");
    let mut carol = session(server, "carol");
    carol.allocate(None).expect("so is carol");
    carol.refresh(0).expect("delete");

    std::fs::write(&file, users("bob")).expect("rewrite the config");
    let reloaded = serving.reload().expect("the rewritten file loads");
    assert_eq!((reloaded.generation, reloaded.needs_restart.len()), (2, 0));
    let mut bob = session(server, "bob");
    bob.allocate(None).expect("a reloaded user works at once");
    bob.refresh(0).expect("delete");
    let revoked = session(server, "carol").allocate(None).expect_err("a removed user is refused");
    assert_eq!(revoked.code(), Some(401), "{revoked}");

    serving.drain(None);
    assert!(serving.metrics().snapshot().draining);
    let refused = session(server, "bob").allocate(None).expect_err("no new allocation while draining");
    assert_eq!(refused.code(), Some(508), "{refused}");
    alice.refresh(600).expect("the live allocation refreshes while draining");
    alice.refresh(0).expect("delete");
    let report = serving.join().expect("a drained server stops by itself");
    assert_eq!(report.server.allocations_created, 3, "alice's, carol's and bob's");
}

#[test]
fn stop_ends_a_server_without_a_file() {
    let (serving, _) = serve(None);
    assert_eq!(serving.metrics_addr(), None, "metrics are off by default");
    serving.stop();
    let report = serving.join().expect("a stopped server reports");
    assert_eq!(report.server.requests, 0);
}
