//! The admin API end to end (issue 13): the real binary with `--admin-listen`,
//! TURN clients making allocations, and `tern admin` and the API seeing,
//! ending and revoking them; the token and its failure limit; bad requests;
//! drain, reload, log level and the probes.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::Duration;

use common::{TernServer, TestCert, run_tern, scratch_file};
use tern::client::ClientSocket;
use tern::client::admin::{AdminClient, AdminError, Filters, Trust};
use tern::client::turn::{Credentials, TurnSession};
use tern::io::clock;
use tern::proto::Transport;

const TIMEOUT: Duration = Duration::from_secs(5);
const TOKEN: &str = "0123456789abcdef0123456789abcdef";

struct Admin {
    server: TernServer,
    addr: SocketAddr,
    token_file: std::path::PathBuf,
}

impl Admin {
    /// tern with alice and bob, a REST secret, two workers and the admin API.
    fn start(name: &str, extra: &[&str]) -> Self {
        let token_file = scratch_file(&format!("{name}.token"), &format!("{TOKEN}\n"));
        let token = token_file.to_str().expect("UTF-8 path").to_owned();
        let args = [
            &[
                "--user",
                "alice:wonderland",
                "--user",
                "bob:wonderland",
                "--secret",
                "rest-secret",
                "--allow-peer",
                "127.0.0.0/8",
                "--workers",
                "2",
                "--admin-listen",
                "127.0.0.1:0",
                "--admin-token-file",
                &token,
            ][..],
            extra,
        ]
        .concat();
        let server = TernServer::start(&args);
        let logged = server.wait_for_log("serving the admin API", 1, TIMEOUT);
        let addr = logged[0]["addr"].as_str().and_then(|a| a.parse().ok()).expect("the admin address is logged");
        Self { server, addr, token_file }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn client(&self) -> AdminClient {
        AdminClient::new(&self.url(), TOKEN, TIMEOUT, Trust::WebRoots).expect("client")
    }

    /// `tern admin ARGS --json`, parsed.
    fn cli_json(&self, args: &[&str]) -> serde_json::Value {
        let output = self.cli(&[args, &["--json"]].concat());
        assert!(output.status.success(), "tern admin {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).expect("tern admin --json prints JSON")
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        let token = self.token_file.to_str().expect("UTF-8 path");
        run_tern(&[&["admin", "--url", &self.url(), "--token-file", token][..], args].concat())
    }
}

fn session(server: SocketAddr, user: &str, password: &str) -> TurnSession {
    let socket = ClientSocket::open(server, Transport::Udp, TIMEOUT).expect("UDP socket");
    TurnSession::new(socket, Credentials { username: user.into(), password: password.into() }, TIMEOUT)
}

/// A REST API credential for `user`, valid for an hour.
fn rest(user: &str) -> (String, String) {
    let credential = tern::client::credentials::RestCredential::new(
        "rest-secret",
        user,
        Duration::from_secs(3600),
        clock::unix_secs(),
    );
    (credential.username, credential.password)
}

/// One raw HTTP/1.1 exchange on a connection of its own.
fn http(addr: SocketAddr, request: &str) -> (u16, String) {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("admin connection");
    stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    let request = request.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    stream.write_all(request.as_bytes()).expect("request sent");
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
    (status, response)
}

fn refused(result: Result<impl std::fmt::Debug, AdminError>) -> u16 {
    match result {
        Err(AdminError::Refused { status, .. }) => status,
        other => panic!("expected an HTTP error, got {other:?}"),
    }
}

#[test]
fn operators_see_every_allocation_end_one_and_revoke_a_user() {
    let admin = Admin::start("admin-allocations", &[]);
    let server = admin.server.udp_addr();
    let client = admin.client();
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer socket");
    let mut alice = session(server, "alice", "wonderland");
    let alice_relayed = alice.allocate(None).expect("alice allocates").relayed;
    alice.create_permission(&[peer.local_addr().expect("bound")]).expect("permission");
    alice.send_indication(peer.local_addr().expect("bound"), &[7; 500]).expect("send");
    let mut buf = [0u8; 1024];
    peer.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    assert_eq!(peer.recv_from(&mut buf).expect("relayed to the peer").0, 500);
    let mut alice_too = session(server, "alice", "wonderland");
    alice_too.allocate(None).expect("a second allocation of alice");
    let mut bob = session(server, "bob", "wonderland");
    bob.allocate(None).expect("bob allocates");

    let status = client.status().expect("status");
    assert_eq!((status.allocations, status.workers.len(), status.draining), (3, 2, false));
    assert_eq!(status.config_generation, 1);

    // Counters reach the listing at once: the worker answers from its table.
    let page = client.allocations(&Filters::default(), None).expect("allocations");
    assert_eq!(page.matching, 3);
    let ids: Vec<u64> = page.allocations.iter().map(|a| a.id).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    let first = page.allocations.iter().find(|a| a.relayed == [alice_relayed]).expect("alice's first is listed");
    assert_eq!((first.user.as_str(), first.realm.as_str(), first.transport.as_str()), ("alice", "tern", "udp"));
    assert_eq!(first.client.port(), alice.socket().local_addr().expect("bound").port());
    assert!(first.client.ip().is_loopback(), "{first:?}");
    assert_eq!((first.permissions, first.packets_to_peer, first.bytes_to_peer), (1, 1, 500));
    assert!(first.remaining_secs > 500 && first.remaining_secs <= 600, "{first:?}");
    let alices = Filters { user: Some("alice".into()), ..Filters::default() };
    assert_eq!(client.allocations(&alices, None).expect("filtered").matching, 2);
    let busiest = Filters { by_traffic: true, limit: Some(1), ..Filters::default() };
    assert_eq!(client.allocations(&busiest, None).expect("by traffic").allocations[0].id, first.id);
    let paged = Filters { limit: Some(2), ..Filters::default() };
    let page_one = client.allocations(&paged, None).expect("page one");
    let page_two = client.allocations(&paged, page_one.next).expect("page two");
    assert_eq!(page_one.allocations.len() + page_two.allocations.len(), 3);

    // The same through `tern admin`, as JSON and as a table.
    let listed = admin.cli_json(&["allocations"]);
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");
    let table = admin.cli(&["allocations", "--user", "bob"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(table.starts_with("ID") && table.lines().count() == 2 && table.contains("bob"), "{table}");

    // Ending bob's: his next Refresh finds nothing.
    let bob_id = page.allocations.iter().find(|a| a.user == "bob").expect("bob's").id;
    assert!(admin.cli(&["kill", &bob_id.to_string()]).status.success());
    assert_eq!(bob.refresh(600).expect_err("ended").code(), Some(437));
    assert_eq!(refused(client.kill(bob_id)), 404, "ended once");
    assert_eq!(admin.cli(&["kill", &bob_id.to_string()]).status.code(), Some(1));

    // Revoking alice ends both of hers and refuses her; undoing lets her in.
    let revoked = admin.cli_json(&["revoke", "alice"]);
    assert_eq!(revoked["allocations_ended"], 2, "{revoked}");
    assert_eq!(
        alice_too.refresh(600).expect_err("revoked").code(),
        Some(401),
        "refused before its allocation is looked up"
    );
    let refused_alice = session(server, "alice", "wonderland").allocate(None).expect_err("revoked");
    assert_eq!(refused_alice.code(), Some(401), "{refused_alice}");
    assert_eq!(client.revocations().expect("list").names, ["alice"]);
    assert_eq!(client.status().expect("status").allocations, 0);
    assert!(admin.cli(&["revoke", "alice", "--undo"]).status.success());
    session(server, "alice", "wonderland").allocate(None).expect("let in again");

    // A REST user: revoking the user covers every credential of it.
    let (username, password) = rest("carol");
    let mut carol = session(server, &username, &password);
    carol.allocate(None).expect("carol's REST credential works");
    assert_eq!(client.revoke("carol").expect("revoke").allocations_ended, 1);
    let (username, password) = rest("carol");
    assert_eq!(session(server, &username, &password).allocate(None).expect_err("revoked").code(), Some(401));

    let logged = admin.server.wait_for_log("allocation deleted", 4, TIMEOUT);
    let reasons: Vec<&str> = logged.iter().filter_map(|line| line["reason"].as_str()).collect();
    assert!(reasons.contains(&"ended by an operator") && reasons.contains(&"its user was revoked"), "{reasons:?}");
    admin.server.stop();
}

#[test]
fn the_token_is_required_and_guessing_is_limited() {
    let admin = Admin::start("admin-token", &[]);
    let (status, response) = http(admin.addr, "GET /api/v1/status HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 401, "{response}");
    assert!(response.to_ascii_lowercase().contains("www-authenticate: bearer"), "{response}");
    let wrong = AdminClient::new(&admin.url(), "not-the-token-at-all", TIMEOUT, Trust::WebRoots).expect("client");
    assert_eq!(refused(wrong.status()), 401);
    // The probes need no token.
    assert_eq!(http(admin.addr, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").0, 200);
    assert_eq!(http(admin.addr, "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").0, 200);
    // /metrics on the admin listener does.
    assert_eq!(http(admin.addr, "GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n").0, 401);
    let metrics = format!("GET /metrics HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {TOKEN}\r\n\r\n");
    let (status, text) = http(admin.addr, &metrics);
    assert_eq!(status, 200);
    assert!(text.contains("tern_admin_unauthorized_total 3"), "{text}");

    // Ten wrong tokens in a burst, then even the right one is refused unchecked.
    let mut statuses = Vec::new();
    for _ in 0..12 {
        statuses.push(refused(wrong.status()));
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(refused(admin.client().status()), 429, "locked out for now, whatever the token");
    admin.server.stop();
}

#[test]
fn bad_requests_get_4xx_and_bounded_answers() {
    let admin = Admin::start("admin-bad-input", &[]);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let with = |head: &str, body: &str| {
        http(admin.addr, &format!("{head}\r\nHost: t\r\n{auth}Content-Length: {}\r\n\r\n{body}", body.len()))
    };
    let (status, body) = with("GET /nowhere HTTP/1.1", "");
    assert_eq!(status, 404);
    assert!(body.contains("\"error\""), "JSON errors: {body}");
    assert_eq!(with("POST /api/v1/revocations HTTP/1.1", "{\"name\": ").0, 400, "malformed JSON");
    assert_eq!(with("POST /api/v1/revocations HTTP/1.1", "{\"nom\": \"x\"}").0, 400, "wrong fields");
    assert_eq!(with("POST /api/v1/revocations HTTP/1.1", "{\"name\": \"\"}").0, 422, "an empty name");
    assert_eq!(with("PUT /api/v1/log HTTP/1.1", "{\"level\": \"loud\"}").0, 400);
    assert_eq!(with("GET /api/v1/allocations?limit=0 HTTP/1.1", "").0, 400);
    assert_eq!(with("GET /api/v1/allocations?order=random HTTP/1.1", "").0, 400);
    assert_eq!(with("GET /api/v1/allocations?colour=red HTTP/1.1", "").0, 400, "unknown parameters");
    assert_eq!(with("GET /api/v1/allocations/not-a-number HTTP/1.1", "").0, 400);
    assert_eq!(with("GET /api/v1/allocations/12345 HTTP/1.1", "").0, 404);
    assert_eq!(with("DELETE /api/v1/status HTTP/1.1", "").0, 405);
    let huge = format!("{{\"name\": \"{}\"}}", "a".repeat(100_000));
    assert_eq!(with("POST /api/v1/revocations HTTP/1.1", &huge).0, 413, "bodies are bounded");
    let (status, _) = http(admin.addr, &format!("GET /healthz HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000)));
    assert_eq!(status, 431, "request heads are bounded");

    // A client that sends half a head is cut off at the head deadline.
    let mut slow = TcpStream::connect_timeout(&admin.addr, TIMEOUT).expect("connection");
    slow.write_all(b"GET /api/v1/status HTTP/1.1\r\nHost:").expect("half a head");
    slow.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    let started = clock::now();
    let mut rest = Vec::new();
    let _ = slow.read_to_end(&mut rest);
    let waited = clock::now() - started;
    assert!(waited < Duration::from_secs(19), "closed by the server, after {waited:?}");

    // Connections beyond the cap are closed as they come; the API carries on.
    let held: Vec<TcpStream> = (0..70).filter_map(|_| TcpStream::connect_timeout(&admin.addr, TIMEOUT).ok()).collect();
    let mut closed = 0;
    for mut stream in held.iter().skip(64) {
        stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        let mut byte = [0u8; 1];
        if matches!(stream.read(&mut byte), Ok(0)) {
            closed += 1;
        }
    }
    assert!(closed >= 1, "connections over the cap are closed");
    drop(held);
    assert_eq!(admin.client().status().expect("still serving").allocations, 0);
    admin.server.stop();
}

#[test]
fn drain_reload_log_level_and_probes_through_the_api() {
    let file = scratch_file("admin-reload.toml", "user_quota = 5\n");
    let admin = Admin::start("admin-lifecycle", &["--config", file.to_str().expect("UTF-8 path")]);
    let client = admin.client();
    std::fs::write(&file, "user_quota = 6\n").expect("rewrite");
    let reloaded = client.reload().expect("reload");
    assert_eq!((reloaded.generation, reloaded.needs_restart.len()), (2, 0));
    std::fs::write(&file, "user_quota = \"many\"\n").expect("rewrite");
    let status = refused(client.reload());
    assert_eq!(status, 422, "a file that does not load changes nothing");
    assert_eq!(client.status().expect("status").config_reload_failures, 1);
    std::fs::write(&file, "user_quota = 6\nrelay_ports = \"50000-50100\"\n").expect("rewrite");
    assert_eq!(client.reload().expect("reload").needs_restart, ["relay_ports"]);

    client.set_log_level(tern::config::LogLevel::Debug).expect("log level");
    let mut probe = session(admin.server.udp_addr(), "alice", "wonderland");
    probe.allocate(None).expect("allocate");
    admin.server.wait_for_log("allocation created", 1, TIMEOUT);

    let draining = admin.cli_json(&["drain", "--deadline", "2s"]);
    assert_eq!(draining["allocations"], 1, "{draining}");
    let left = draining["deadline_secs"].as_u64();
    assert!(left.is_some_and(|secs| (1..=2).contains(&secs)), "what is left of two seconds: {draining}");
    assert_eq!(http(admin.addr, "GET /readyz HTTP/1.1\r\nHost: t\r\n\r\n").0, 503);
    assert!(client.status().expect("status").draining);
    let refused_new = session(admin.server.udp_addr(), "bob", "wonderland").allocate(None).expect_err("draining");
    assert_eq!(refused_new.code(), Some(508));
    let (status, lines) = admin.server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "the drain deadline stops tern");
    let logged = common::logged(&lines, "drain deadline passed: ending the allocations left");
    assert_eq!(logged.len(), 1, "{lines:?}");
}

#[test]
fn healthz_fails_while_a_worker_is_wedged() {
    let token_file = scratch_file("admin-wedged.token", TOKEN);
    let token = token_file.to_str().expect("UTF-8 path");
    let args = ["--workers", "2", "--admin-listen", "127.0.0.1:0", "--admin-token-file", token];
    let server = TernServer::try_start_with_env(&args, &[("TERN_TEST_HOLD_WORKER", "1:1s")]).expect("tern starts");
    let logged = server.wait_for_log("serving the admin API", 1, TIMEOUT);
    let addr: SocketAddr = logged[0]["addr"].as_str().and_then(|a| a.parse().ok()).expect("address");
    assert_eq!(http(addr, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").0, 200);
    // The hold starts a second in, at the worker's next loop turn, which
    // the probe's wake-up brings.
    std::thread::sleep(Duration::from_millis(1200));
    let (status, body) = http(addr, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("worker 1"), "{body}");
    let held = "held still by the test hook TERN_TEST_HOLD_WORKER: this worker's loop stops until shutdown";
    server.wait_for_log(held, 1, TIMEOUT);
    // A listing needs every worker: the wedged one makes it a 503, not a hang.
    let client =
        AdminClient::new(&format!("http://{addr}"), TOKEN, Duration::from_secs(15), Trust::WebRoots).expect("client");
    assert_eq!(refused(client.allocations(&Filters::default(), None)), 503);
    server.stop();
}

#[test]
fn the_admin_listener_needs_a_good_token_file() {
    let output = run_tern(&["check", "--admin-listen", "127.0.0.1:0"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("key `admin.token_file`: is needed with admin.listen"), "{stderr}");
    let short = scratch_file("admin-short.token", "secret\n");
    let output =
        run_tern(&["check", "--admin-listen", "127.0.0.1:0", "--admin-token-file", short.to_str().expect("path")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("key `admin.token_file`") && stderr.contains("at least 16"), "{stderr}");
    let missing = run_tern(&["check", "--admin-listen", "127.0.0.1:0", "--admin-token-file", "/nonexistent/token"]);
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/token"));
}

/// Whatever arrives, the API answers with a status below 500 (or 503 for a
/// worker that cannot answer, which cannot happen here) and keeps serving.
/// Draining is left out: a well-formed drain would end the server.
#[test]
fn random_requests_get_answers_below_500_and_change_nothing() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let admin = Admin::start("admin-random", &[]);
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let request = (
        prop::sample::select(vec!["GET", "POST", "PUT", "DELETE", "PATCH"]),
        prop::sample::select(vec![
            "/api/v1/status",
            "/api/v1/allocations",
            "/api/v1/allocations/",
            "/api/v1/revocations",
            "/api/v1/revocations/",
            "/api/v1/log",
            "/api/v1/reload",
            "/api/v2/status",
            "/",
        ]),
        "[A-Za-z0-9_%=&?.:-]{0,40}",
        prop::collection::vec(any::<u8>(), 0..300),
        any::<bool>(),
    );
    let mut runner = TestRunner::new(Config { cases: 96, failure_persistence: None, ..Config::default() });
    runner
        .run(&request, |(method, path, tail, body, json_like)| {
            let body = if json_like {
                format!("{{\"name\": {:?}, \"level\": {:?}}}", String::from_utf8_lossy(&body), tail).into_bytes()
            } else {
                body
            };
            let head = format!(
                "{method} {path}{tail} HTTP/1.1\r\nHost: t\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let mut stream = TcpStream::connect_timeout(&admin.addr, TIMEOUT).expect("connection");
            stream.set_read_timeout(Some(TIMEOUT)).expect("timeout");
            stream.write_all(head.replacen("\r\n", "\r\nConnection: close\r\n", 1).as_bytes()).expect("head");
            stream.write_all(&body).expect("body");
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response);
            let text = String::from_utf8_lossy(&response);
            let status: u16 = text.split(' ').nth(1).and_then(|code| code.parse().ok()).unwrap_or(0);
            prop_assert!((200..500).contains(&status), "{method} {path}{tail}: {text}");
            Ok(())
        })
        .expect("every answer below 500");
    // Revocations the random bodies made are fine; the server still serves
    // and has not started draining.
    let status = admin.client().status().expect("still serving");
    assert!(!status.draining);
    admin.server.stop();
}

/// `admin.tls`: the API over TLS with the server's own certificate, checked
/// by `tern admin --tls-ca`; the clear-text protocol gets nothing.
#[test]
fn the_api_is_served_over_tls_with_the_servers_certificate() {
    let cert = TestCert::new("admin-tls");
    let admin = Admin::start("admin-tls", &[&cert.serve_args()[..], &["--admin-tls"]].concat());
    let logged = admin.server.wait_for_log("serving the admin API", 1, TIMEOUT);
    assert_eq!(logged[0]["tls"], true);
    let url = format!("https://localhost:{}", admin.addr.port());
    let ca = Trust::CaFile(&cert.cert);
    let client = AdminClient::new(&url, TOKEN, TIMEOUT, ca).expect("client");
    assert_eq!(client.status().expect("status over TLS").allocations, 0);
    let untrusted = AdminClient::new(&url, TOKEN, TIMEOUT, Trust::WebRoots).expect("client");
    assert!(matches!(untrusted.status(), Err(AdminError::Unreachable { .. })), "a self-signed certificate is refused");
    assert_ne!(http(admin.addr, "GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").0, 200, "no clear text on a TLS port");
    let token = admin.token_file.to_str().expect("UTF-8 path");
    let output = run_tern(&["admin", "--url", &url, "--token-file", token, "--tls-ca", cert.cert_path(), "status"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stdout).contains("state"));
    admin.server.stop();

    let output = run_tern(&["check", "--admin-listen", "127.0.0.1:0", "--admin-token-file", token, "--admin-tls"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("key `admin.tls`: needs a certificate"), "{stderr}");
}

/// Kept by the page's `securitypolicyviolation` listener, which DevTools
/// installs before the page's own script.
const WATCH_VIOLATIONS: &str = "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
     (e) => window.cspViolations.push(e.violatedDirective + ' ' + e.blockedURI));";
/// The rows of the dashboard's allocations table: ID, user, client,
/// transport and bytes both ways.
const PAGE_ROWS: &str = "[...document.querySelectorAll('#allocations-table tbody tr[data-id]')].map((r) => \
     [Number(r.dataset.id), r.cells[1].textContent, r.cells[2].textContent, r.cells[3].textContent, \
     Number(r.cells[10].dataset.value)])";

/// The same columns from the API.
fn api_rows(page: &tern::control::api::AllocationPage) -> serde_json::Value {
    page.allocations
        .iter()
        .map(|a| {
            serde_json::json!([a.id, a.user, a.client.to_string(), a.transport, a.bytes_to_peer + a.bytes_to_client])
        })
        .collect()
}

/// The value a number of the page keeps beside its text.
fn page_number(id: &str) -> String {
    format!("Number(document.getElementById('{id}').dataset.value)")
}

/// Empties a filter of the allocations table, as deleting its text does.
fn clear_filter(browser: &mut common::chromium::Browser, id: &str) {
    browser.evaluate(&format!(
        "(() => {{ const e = document.getElementById('{id}'); e.value = ''; \
         e.dispatchEvent(new Event('input', {{ bubbles: true }})); }})()"
    ));
}

/// The dashboard at `/` in headless Chromium: a wrong token is refused at
/// the login, the right one shows what the API says (allocations, traffic,
/// drops, the busiest allocations, the table and its filters, draining, the
/// config generation), ending an allocation from its row (after a confirm)
/// ends it for the API and the client, logging out forgets the token, and
/// a token that stops working returns to the login. The page's Content-Security-Policy is in force and
/// the page never trips it. A screenshot is kept in
/// target/test-artifacts/dashboard.png.
#[test]
fn the_dashboard_shows_what_the_api_says_and_ends_an_allocation_in_chromium() {
    let Some(chromium) = common::chromium::find() else { return };
    let admin = Admin::start("admin-dashboard", &[]);
    let client = admin.client();
    let server = admin.server.udp_addr();
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer socket");
    let peer_addr = peer.local_addr().expect("bound");
    let mut alice = session(server, "alice", "wonderland");
    alice.allocate(None).expect("alice allocates");
    alice.create_permission(&[peer_addr]).expect("permission");
    let mut bob = session(server, "bob", "wonderland");
    bob.allocate(None).expect("bob allocates");
    let tcp = ClientSocket::open(admin.server.tcp_addr(), Transport::Tcp, TIMEOUT).expect("TCP connection");
    let credentials = Credentials { username: "alice".into(), password: "wonderland".into() };
    let mut alice_tcp = TurnSession::new(tcp, credentials, TIMEOUT);
    alice_tcp.allocate(None).expect("alice allocates over TCP");
    let listed = client.allocations(&Filters::default(), None).expect("allocations");
    let id_of = |user: &str, transport: &str| {
        listed.allocations.iter().find(|a| a.user == user && a.transport == transport).expect("listed").id
    };
    let (alice_id, bob_id, alice_tcp_id) = (id_of("alice", "udp"), id_of("bob", "udp"), id_of("alice", "tcp"));

    // The page needs no token, and its headers allow nothing from elsewhere.
    let (status, response) = http(admin.addr, "GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(status, 200, "{response}");
    let head = response.split("\r\n\r\n").next().unwrap_or_default().to_ascii_lowercase();
    assert!(head.contains("content-type: text/html; charset=utf-8"), "{head}");
    assert!(head.contains("content-security-policy: default-src 'none'; script-src 'sha256-"), "{head}");
    assert!(head.contains("connect-src 'self'") && !head.contains("unsafe-inline"), "{head}");
    assert!(head.contains("x-frame-options: deny") && head.contains("cache-control: no-store"), "{head}");

    let mut browser = common::chromium::Browser::start(&chromium);
    browser.before_each_page(WATCH_VIOLATIONS);
    browser.navigate(&format!("{}/", admin.url()));
    browser.wait_for("the login form", "document.body.dataset.state === 'login'");

    // A wrong token stays at the login, saying so.
    browser.click("#token");
    browser.type_text("not-the-admin-token");
    browser.click("#login-form button");
    let refusal = browser.wait_for(
        "the refusal",
        "!document.getElementById('login-error').hidden && document.getElementById('login-error').textContent",
    );
    assert!(refusal.as_str().is_some_and(|text| text.contains("refused")), "{refusal}");
    browser.evaluate("document.getElementById('token').value = ''");
    browser.click("#token");
    browser.type_text(TOKEN);
    browser.click("#login-form button");
    browser.wait_for("the dashboard", "document.body.dataset.state === 'live'");
    let stored = browser.evaluate("sessionStorage.getItem('tern-admin-token')");
    assert_eq!(stored, TOKEN, "kept for this tab");

    // The table shows the API's rows, oldest first; the count card its count.
    browser.wait_for("three rows", &format!("{PAGE_ROWS}.length === 3"));
    assert_eq!(browser.evaluate(PAGE_ROWS), api_rows(&listed));
    let status = client.status().expect("status");
    assert_eq!(browser.evaluate(&page_number("allocations")), status.allocations);
    assert_eq!(browser.evaluate(&page_number("generation")), status.config_generation);
    assert_eq!(browser.evaluate(&page_number("workers")), status.workers.len());
    assert_eq!(browser.evaluate("document.getElementById('state').textContent"), "serving");
    let reasons: Vec<&str> = status.dropped.iter().map(|d| d.reason.as_str()).collect();
    let page_reasons =
        browser.evaluate("[...document.querySelectorAll('#drops tbody tr[data-id]')].map((r) => r.dataset.id)");
    assert_eq!(page_reasons, serde_json::json!(reasons));

    // Traffic: the totals reach the page as the API counts them, with a rate.
    let mut buf = [0u8; 1024];
    peer.set_read_timeout(Some(TIMEOUT)).expect("timeout");
    for _ in 0..20 {
        alice.send_indication(peer_addr, &[7; 500]).expect("send");
        assert_eq!(peer.recv_from(&mut buf).expect("relayed to the peer").0, 500);
    }
    browser.wait_for(
        "the traffic",
        &format!("{} === 10000 && {} > 0", page_number("bytes-to-peer"), page_number("rate-bytes-to-peer")),
    );
    let status = client.status().expect("status");
    assert_eq!((status.relayed_bytes_to_peer, status.relayed_packets_to_peer), (10_000, 20));
    let busiest = browser.wait_for(
        "the busiest allocation",
        "(r => r && r.cells[4].dataset.value === '10000' && Number(r.dataset.id))(document.querySelector('#top tbody tr[data-id]'))",
    );
    assert_eq!(busiest, alice_id);
    let listed = client.allocations(&Filters::default(), None).expect("allocations");
    browser.wait_for("the table's bytes", &format!("{PAGE_ROWS}.some((r) => r[0] === {alice_id} && r[4] === 10000)"));
    assert_eq!(browser.evaluate(PAGE_ROWS), api_rows(&listed));
    assert!(browser.evaluate("Number(document.body.dataset.samples)").as_u64() >= Some(2), "the graphs have points");

    // The filters are the API's.
    browser.click("#filter-user");
    browser.type_text("bob");
    browser.wait_for("bob's row alone", &format!("(r => r.length === 1 && r[0][0] === {bob_id})({PAGE_ROWS})"));
    assert_eq!(browser.evaluate(&page_number("matching")), 1);
    clear_filter(&mut browser, "filter-user");
    browser.evaluate(
        "(() => { const s = document.getElementById('filter-transport'); s.value = 'tcp'; \
         s.dispatchEvent(new Event('input', { bubbles: true })); })()",
    );
    let tcp_rows =
        browser.wait_for("the TCP row alone", &format!("(r => r.length === 1 && r[0][3] === 'tcp' && r)({PAGE_ROWS})"));
    let tcp_only = Filters { transport: Some("tcp".into()), ..Filters::default() };
    assert_eq!(tcp_rows, api_rows(&client.allocations(&tcp_only, None).expect("filtered")));
    assert_eq!(tcp_rows[0][0], alice_tcp_id);
    clear_filter(&mut browser, "filter-transport");
    browser.click("#filter-client-ip");
    browser.type_text("not-an-address");
    browser.wait_for("the API's complaint", "!document.getElementById('table-error').hidden");
    clear_filter(&mut browser, "filter-client-ip");
    browser.wait_for(
        "every row again",
        &format!("{PAGE_ROWS}.length === 3 && document.getElementById('table-error').hidden"),
    );

    let artifact =
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).with_file_name("test-artifacts").join("dashboard.png");
    browser.screenshot(&artifact);
    assert!(
        std::fs::metadata(&artifact).is_ok_and(|m| m.len() > 10_000),
        "{} is a real screenshot",
        artifact.display()
    );

    // Ending asks first: dismissed, nothing ends.
    browser.answer_dialogs(false);
    browser.click(&format!("button[data-end='{alice_id}']"));
    assert_eq!(browser.dialogs.len(), 1, "confirm() was asked");
    assert!(browser.dialogs[0].contains(&format!("End allocation {alice_id}")), "{:?}", browser.dialogs);
    assert_eq!(client.allocations(&Filters::default(), None).expect("allocations").matching, 3);
    // Accepted: bob's ends, for the API, for the page and for bob. The
    // button is held down across a poll or two: the rows stay the same
    // elements, so the click still lands.
    browser.answer_dialogs(true);
    browser.click_held(&format!("button[data-end='{bob_id}']"), Duration::from_millis(2500));
    assert_eq!(browser.dialogs.len(), 2);
    browser.wait_for("two rows", &format!("{PAGE_ROWS}.length === 2 && {} === 2", page_number("allocations")));
    let left = client.allocations(&Filters::default(), None).expect("allocations");
    assert_eq!(left.matching, 2);
    assert!(left.allocations.iter().all(|a| a.id != bob_id), "{left:?}");
    assert_eq!(browser.evaluate(PAGE_ROWS), api_rows(&left));
    assert_eq!(bob.refresh(600).expect_err("ended").code(), Some(437));
    let ended = browser.evaluate("document.getElementById('action').textContent");
    assert_eq!(ended, format!("Allocation {bob_id} ended."));

    // Logging out forgets the token; logging in again carries on.
    browser.click("#logout");
    browser.wait_for("the login", "document.body.dataset.state === 'login'");
    assert_eq!(browser.evaluate("sessionStorage.getItem('tern-admin-token')"), serde_json::Value::Null);
    browser.click("#token");
    browser.type_text(TOKEN);
    browser.click("#login-form button");
    browser.wait_for(
        "the dashboard again",
        &format!("document.body.dataset.state === 'live' && {PAGE_ROWS}.length === 2"),
    );

    // Draining shows.
    client.drain(Some(Duration::from_secs(600))).expect("drain");
    browser.wait_for("draining", "document.getElementById('state').textContent === 'draining'");

    // The page kept to its policy; the browser enforces it.
    assert_eq!(browser.evaluate("window.cspViolations"), serde_json::json!([]));
    assert!(browser.problems().is_empty(), "{:?}", browser.problems());
    browser.evaluate("document.body.setAttribute('style', 'color: red'); fetch('http://192.0.2.1:9/').catch(() => 0)");
    let violations = browser.wait_for("the violations", "window.cspViolations.length === 2 && window.cspViolations");
    assert!(
        violations.to_string().contains("style-src") && violations.to_string().contains("connect-src"),
        "{violations}"
    );

    // A token that stops working (a reload read a new one) returns to the login.
    std::fs::write(&admin.token_file, "fedcba9876543210fedcba9876543210\n").expect("new token");
    client.reload().expect("reload");
    let message = browser.wait_for(
        "the login again",
        "document.body.dataset.state === 'login' && document.getElementById('login-error').textContent",
    );
    assert!(message.as_str().is_some_and(|m| m.contains("refused")), "{message}");
    assert_eq!(browser.evaluate("sessionStorage.getItem('tern-admin-token')"), serde_json::Value::Null);
    drop(browser);
    admin.server.stop();
}
