//! `tern serve` authenticating from a store (`--store`): users and REST
//! secrets written by `tern user add`, `tern secret add` and coturn 4.17.1's
//! `turnadmin` relay through the real binary; changes made while tern runs
//! (a user added, deleted, a secret added) apply without a restart; a
//! store that is down gets clients 500 (try later), not 401, and serves
//! again once it is back.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use common::engines::{self, Postgres};
use common::{COMMAND_TIMEOUT, TernServer, run_tern, tern_command, wait_bounded};

const REALM: &str = "fleet.example";
/// The store's changes reach the workers within this (SQLite's feed polls
/// every second; PostgreSQL notifies).
const PROPAGATION: Duration = Duration::from_secs(10);

/// `tern ARGS` with `input` on standard input.
fn tern_with_input(args: &[&str], input: &str) -> Output {
    let mut child = tern_command(args)
        .env_remove(tern::store::PASSWORD_ENV)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("tern runs");
    child.stdin.take().expect("stdin is piped").write_all(input.as_bytes()).expect("writing to tern");
    wait_bounded(&mut child, COMMAND_TIMEOUT).expect("tern finishes");
    child.wait_with_output().expect("tern's output")
}

fn add_user(store: &str, name: &str, password: &str) {
    let added = tern_with_input(
        &["user", "add", name, "--realm", REALM, "--password-stdin", "--store", store],
        &format!("{password}\n"),
    );
    assert!(added.status.success(), "tern user add: {added:?}");
}

fn serve(store: &str) -> TernServer {
    TernServer::start(&["--store", store, "--realm", REALM, "--allow-peer", "127.0.0.0/8", "--workers", "2"])
}

/// `tern turn` through `server`: whether it relayed, and what it said.
fn relay(server: &TernServer, credentials: &[&str]) -> (bool, String) {
    let addr = server.udp_addr().to_string();
    let mut args = vec!["turn", addr.as_str(), "--timeout", "8s"];
    args.extend_from_slice(credentials);
    let output = run_tern(&args);
    let said = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), said)
}

/// Retries `relay` until it succeeds (or fails) as `want`, within
/// [`PROPAGATION`]; what it said last.
fn relay_until(server: &TernServer, credentials: &[&str], want: bool) -> String {
    let deadline = tern::io::clock::now() + PROPAGATION;
    loop {
        let (ok, said) = relay(server, credentials);
        if ok == want || tern::io::clock::now() > deadline {
            assert_eq!(ok, want, "within {PROPAGATION:?}:\n{said}");
            return said;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn sqlite_url(dir: &Path) -> String {
    format!("sqlite://{}", dir.join("tern.db").display())
}

#[test]
fn users_of_a_sqlite_store_relay_and_changes_apply_while_tern_runs() {
    let dir = engines::temp_dir("store-auth-sqlite");
    let store = sqlite_url(&dir);
    add_user(&store, "alice", "wonderland");
    let server = serve(&store);

    let (ok, said) = relay(&server, &["-u", "alice", "-p", "wonderland"]);
    assert!(ok, "a stored user relays:\n{said}");
    // A stored user has an MD5 key only, so MD5 alone is offered.
    assert!(said.contains("MD5"), "{said}");
    let (ok, said) = relay(&server, &["-u", "alice", "-p", "looking-glass"]);
    assert!(!ok && said.contains("401"), "a wrong password gets 401:\n{said}");
    let (ok, said) = relay(&server, &["-u", "nobody", "-p", "wonderland"]);
    assert!(!ok && said.contains("401"), "an unknown user gets 401:\n{said}");

    // Added while tern runs: asked for when it comes (it was never cached).
    add_user(&store, "bob", "builder");
    let (ok, said) = relay(&server, &["-u", "bob", "-p", "builder"]);
    assert!(ok, "a user added while tern runs relays:\n{said}");

    // Deleted while tern runs: the change reaches the workers that
    // remember alice.
    let deleted = tern_with_input(&["user", "delete", "alice", "--realm", REALM, "--store", &store], "");
    assert!(deleted.status.success(), "tern user delete: {deleted:?}");
    relay_until(&server, &["-u", "alice", "-p", "wonderland"], false);

    // A password change replaces the remembered key.
    add_user(&store, "bob", "rebuilt");
    relay_until(&server, &["-u", "bob", "-p", "rebuilt"], true);
    let (ok, _) = relay(&server, &["-u", "bob", "-p", "builder"]);
    assert!(!ok, "the old password no longer works");

    // REST secrets in the store, read at start and when they change.
    let (ok, _) = relay(&server, &["-u", "carol", "--secret", "shared-secret-1"]);
    assert!(!ok, "no secret in the store yet");
    let secret =
        tern_with_input(&["secret", "add", "--realm", REALM, "--secret-stdin", "--store", &store], "shared-secret-1\n");
    assert!(secret.status.success(), "tern secret add: {secret:?}");
    relay_until(&server, &["-u", "carol", "--secret", "shared-secret-1"], true);

    let (_, log) = server.stop_with_log();
    let lookups = log.iter().filter(|line| line.contains("store did not answer")).count();
    assert_eq!(lookups, 0, "the store always answered:\n{}", log.join("\n"));
}

#[test]
fn a_user_turnadmin_adds_relays_through_tern() {
    let Some(turnadmin) = engines::turnadmin() else { return };
    let dir = engines::temp_dir("store-auth-turnadmin");
    let file = dir.join("coturn.db");
    let file = file.to_str().expect("utf-8 path");
    engines::run_turnadmin(&turnadmin, &["-a", "-b", file, "-u", "gorst", "-r", REALM, "-p", "hero"]);
    let server = serve(&format!("sqlite://{file}"));
    let (ok, said) = relay(&server, &["-u", "gorst", "-p", "hero"]);
    assert!(ok, "turnadmin's user relays through tern:\n{said}");
}

#[test]
fn a_store_that_is_down_gets_500_and_serves_again_when_back() {
    let Some(postgres) = Postgres::start() else { return };
    let store = postgres.url();
    add_user(&store, "dora", "explorer");
    add_user(&store, "eve", "listener");
    let server = serve(&store);
    let (ok, said) = relay(&server, &["-u", "dora", "-p", "explorer"]);
    assert!(ok, "a PostgreSQL user relays:\n{said}");

    postgres.stop();
    // Remembered: dora keeps working while the store is down.
    let (ok, said) = relay(&server, &["-u", "dora", "-p", "explorer"]);
    assert!(ok, "a remembered user relays with the store down:\n{said}");
    // Never asked before: the store cannot say, so 500, not 401.
    let (ok, said) = relay(&server, &["-u", "eve", "-p", "listener"]);
    assert!(!ok && said.contains("500"), "a user the store cannot answer for gets 500:\n{said}");

    postgres.resume();
    relay_until(&server, &["-u", "eve", "-p", "listener"], true);
    let (_, log) = server.stop_with_log();
    assert!(log.iter().any(|line| line.contains("store did not answer")), "the outage is logged");
}
