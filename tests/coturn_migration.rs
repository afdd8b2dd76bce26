//! Coming from coturn, through the real binary: `tern convert` on coturn's
//! own example configuration (from the coturn 4.17.1 source tarball) and
//! on realistic ones, whose output `tern check` must accept with exactly
//! the keys expected; every option of coturn's own option table is known
//! to the converter; a line it cannot read is an error naming the line;
//! and a default that bites a coturn user (`user_quota`) says so once in
//! the log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{COMMAND_TIMEOUT, TernServer, TestCert, run_bounded, run_tern, scratch_file};
use tern::client::ClientSocket;
use tern::client::turn::{Credentials, TurnSession};
use tern::proto::Transport;

/// coturn's source, next to the repository (the benchmarks use it too).
const COTURN_TARBALL: &str = "../shared/peers/coturn-4.17.1.tar.gz";

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `tern convert` on `text`, which must succeed; the output must pass
/// `tern check`. Returns the output and its TOML table.
fn convert_and_check(name: &str, text: &str) -> (String, toml::Table) {
    let coturn = scratch_file(&format!("{name}.conf"), text);
    let output = run_tern(&["convert", coturn.to_str().expect("utf-8 path")]);
    assert!(output.status.success(), "tern convert {name}: {output:?}");
    let converted = stdout(&output);
    let toml = scratch_file(&format!("{name}.toml"), &converted);
    let check = run_tern(&["check", "--config", toml.to_str().expect("utf-8 path")]);
    assert!(check.status.success(), "tern check of converted {name}: {check:?}\n{converted}");
    let table = converted.parse::<toml::Table>().unwrap_or_else(|e| panic!("{e}\n{converted}"));
    (converted, table)
}

fn keys(table: &toml::Table) -> Vec<&str> {
    let mut keys: Vec<&str> = table.keys().map(String::as_str).collect();
    keys.sort_unstable();
    keys
}

fn list(items: &[&str]) -> toml::Value {
    toml::Value::from(items.to_vec())
}

/// `files` of coturn's source tarball extracted into a scratch directory,
/// or `None` (and a notice) where the tarball is not there.
fn coturn_source(files: &[&str]) -> Option<PathBuf> {
    let tarball = Path::new(env!("CARGO_MANIFEST_DIR")).join(COTURN_TARBALL);
    if !tarball.exists() {
        eprintln!("skipping: {} not found", tarball.display());
        return None;
    }
    let dir = scratch_file("coturn-source", "").with_extension("d");
    std::fs::create_dir_all(&dir).expect("scratch directory");
    let mut tar = Command::new("tar");
    tar.arg("-xzf").arg(&tarball).arg("-C").arg(&dir);
    tar.args(files.iter().map(|file| format!("coturn-4.17.1/{file}")));
    let output = run_bounded(&mut tar, COMMAND_TIMEOUT);
    assert!(output.status.success(), "tar: {output:?}");
    Some(dir.join("coturn-4.17.1"))
}

#[test]
fn coturns_own_example_converts_to_what_coturn_does_with_it() {
    let Some(source) = coturn_source(&["examples/etc/turnserver.conf"]) else { return };
    let text = std::fs::read_to_string(source.join("examples/etc/turnserver.conf")).expect("the example");
    let (converted, table) = convert_and_check("example", &text);
    // Every option is commented out: coturn's defaults, which relay for anyone.
    assert_eq!(
        keys(&table),
        [
            "allow_peers",
            "auth",
            "listen",
            "max_channels",
            "max_permissions",
            "max_tcp_per_ip",
            "rate_limit",
            "user_quota"
        ],
        "{converted}"
    );
    assert_eq!(table["listen"], list(&["0.0.0.0:3478", "[::]:3478"]));
    assert_eq!(table["auth"]["allow_anonymous"].as_bool(), Some(true));
    assert_eq!(table["user_quota"].as_integer(), Some(0));
    assert_eq!(table["allow_peers"], list(&[]));
    assert!(converted.contains("turn_server_cert.pem"), "the TLS difference is explained: {converted}");
    assert!(!converted.contains("# Not carried over:"), "nothing is set, so nothing is dropped: {converted}");
}

#[test]
fn every_option_of_coturns_option_table_is_known() {
    let Some(source) = coturn_source(&["src/apps/relay/mainrelay.c"]) else { return };
    let code = std::fs::read_to_string(source.join("src/apps/relay/mainrelay.c")).expect("mainrelay.c");
    // The server's table runs from `long_options[]` to turnadmin's `admin_long_options[]`.
    let start = code.find("long_options[] = {").expect("coturn's option table");
    let end = code.find("admin_long_options[] = {").expect("turnadmin's option table");
    let names: Vec<&str> =
        code[start..end].split("{\"").skip(1).filter_map(|entry| entry.split_once('"').map(|(name, _)| name)).collect();
    assert!(names.len() > 140, "{} options found", names.len());
    for name in names {
        // A value coturn documents as a placeholder may be refused; the option may not be unknown.
        for value in ["", "1"] {
            let line = format!("{name}={value}\n");
            if let Err(error) = tern::config::coturn::convert(&line, "turnserver.conf") {
                assert!(!error.to_string().contains("unknown option"), "{line:?}: {error}");
            }
        }
    }
}

#[test]
fn a_webrtc_server_with_rest_secrets_tls_and_external_ip() {
    let cert = TestCert::new("coturn-rest");
    let text = format!(
        "# A WebRTC deployment on a cloud instance behind 1:1 NAT\n\
         listening-port=3478\n\
         tls-listening-port=5349\n\
         listening-ip=10.0.0.5\n\
         relay-ip=10.0.0.5\n\
         external-ip=203.0.113.5/10.0.0.5\n\
         min-port=49160\n\
         max-port=49200\n\
         fingerprint\n\
         use-auth-secret\n\
         static-auth-secret=\"north-secret\"\n\
         static-auth-secret=old-secret\n\
         realm=turn.example.com\n\
         total-quota=1000\n\
         stale-nonce=600\n\
         cert={}\n\
         pkey={}\n\
         no-multicast-peers\n\
         denied-peer-ip=10.0.0.0-10.255.255.255\n\
         denied-peer-ip=172.16.0.0-172.31.255.255\n\
         denied-peer-ip=192.168.0.0-192.168.255.255\n\
         no-cli\n\
         no-tlsv1\n\
         no-tlsv1_1\n\
         log-file=/var/log/turnserver/turn.log\n\
         simple-log\n\
         verbose\n\
         prometheus\n\
         proc-user=nobody\n\
         proc-group=nogroup\n",
        cert.cert_path(),
        cert.key_path()
    );
    let (converted, table) = convert_and_check("rest", &text);
    assert_eq!(
        keys(&table),
        [
            "allow_peers",
            "auth",
            "external_ip",
            "group",
            "listen",
            "log",
            "max_channels",
            "max_permissions",
            "max_tcp_per_ip",
            "metrics",
            "rate_limit",
            "realm",
            "relay_ips",
            "relay_ports",
            "tls",
            "total_quota",
            "user",
            "user_quota",
        ],
        "{converted}"
    );
    assert_eq!(table["listen"], list(&["10.0.0.5:3478"]));
    assert_eq!(table["realm"].as_str(), Some("turn.example.com"));
    assert_eq!(table["relay_ips"], list(&["10.0.0.5"]));
    assert_eq!(table["external_ip"], list(&["203.0.113.5/10.0.0.5"]));
    assert_eq!(table["relay_ports"].as_str(), Some("49160-49200"));
    // The denied ranges are all refused by tern's defaults already.
    assert_eq!(table["allow_peers"], list(&[]));
    assert!(converted.contains("relayed address (203.0.113.5/32)"), "relay to relay explained: {converted}");
    assert!(converted.contains("must hairpin"), "NAT hairpin explained: {converted}");
    assert_eq!(table["user_quota"].as_integer(), Some(0));
    assert_eq!(table["total_quota"].as_integer(), Some(1000));
    assert_eq!((table["user"].as_str(), table["group"].as_str()), (Some("nobody"), Some("nogroup")));
    let auth = table["auth"].as_table().expect("[auth]");
    assert_eq!(keys(auth), ["nonce_lifetime", "secrets"]);
    assert_eq!(auth["secrets"], list(&["north-secret", "old-secret"]));
    assert_eq!(auth["nonce_lifetime"].as_integer(), Some(600));
    let tls = table["tls"].as_table().expect("[tls]");
    assert_eq!(keys(tls), ["cert", "key", "listen"]);
    assert_eq!(tls["listen"], list(&["10.0.0.5:5349"]));
    assert_eq!(tls["cert"].as_str(), Some(cert.cert_path()));
    assert_eq!(table["log"]["allocations"].as_bool(), Some(true));
    assert_eq!(table["metrics"]["listen"].as_str(), Some("0.0.0.0:9641"));
    let trailer = converted.split("# Not carried over:").nth(1).expect("the options not carried");
    for option in ["fingerprint", "no-multicast-peers", "no-cli", "no-tlsv1", "no-tlsv1_1", "log-file", "simple-log"] {
        assert!(trailer.contains(&format!(", {option}: ")), "{option} is listed: {trailer}");
    }
}

#[test]
fn static_users_with_long_term_credentials_and_quotas() {
    let text = "listening-ip=127.0.0.1\n\
                listening-ip=::1\n\
                lt-cred-mech\n\
                realm=example.org\n\
                user=alice:wonderland\n\
                user=bob:0xbc807ee29df3c9ffa736523fb2c4e8ee\n\
                user=\"carol smith:pass:with:colons\"\n\
                user-quota=50\n\
                total-quota=2000\n\
                max-bps=262144\n\
                max-allocate-lifetime=300\n\
                log-min-level=info\n\
                no-tls\n\
                unauthorized-ratelimit\n\
                unauthorized-ratelimit-rps=40\n\
                psql-userdb=\"host=db dbname=coturn user=coturn password=hunter2\"\n\
                cli-password=qwerty\n";
    let (converted, table) = convert_and_check("users", text);
    assert_eq!(
        keys(&table),
        [
            "allow_peers",
            "auth",
            "default_lifetime",
            "listen",
            "log",
            "max_bps",
            "max_channels",
            "max_lifetime",
            "max_permissions",
            "max_tcp_per_ip",
            "rate_limit",
            "realm",
            "total_quota",
            "user_quota",
        ],
        "{converted}"
    );
    assert_eq!(table["listen"], list(&["127.0.0.1:3478", "[::1]:3478"]));
    assert_eq!(table["user_quota"].as_integer(), Some(50));
    assert_eq!(table["total_quota"].as_integer(), Some(2000));
    assert_eq!(table["max_bps"].as_integer(), Some(262_144));
    assert_eq!((table["max_lifetime"].as_integer(), table["default_lifetime"].as_integer()), (Some(300), Some(300)));
    assert_eq!(table["rate_limit"].as_integer(), Some(40));
    let users = table["auth"]["users"].as_table().expect("[auth.users]");
    assert_eq!(keys(users), ["alice", "bob", "carol smith"]);
    assert_eq!(users["alice"].as_str(), Some("wonderland"));
    assert_eq!(users["bob"]["key"].as_str(), Some("0xbc807ee29df3c9ffa736523fb2c4e8ee"));
    assert_eq!(users["carol smith"].as_str(), Some("pass:with:colons"));
    assert_eq!(table["log"]["level"].as_str(), Some("info"));
    assert!(converted.contains("line 16, psql-userdb: not yet"), "{converted}");
    assert!(converted.contains("line 17, cli-password: no equivalent"), "{converted}");
    assert!(!converted.contains("hunter2") && !converted.contains("qwerty"), "dropped values are not echoed");
}

#[test]
fn allowed_and_denied_peer_ranges_become_cidr_blocks() {
    let text = "listening-ip=127.0.0.1\n\
                user=app:app-password\n\
                realm=peers.example\n\
                denied-peer-ip=83.166.64.0-83.166.95.255\n\
                allowed-peer-ip=83.166.68.45\n\
                denied-peer-ip=8.8.8.0-8.8.8.9\n\
                allowed-peer-ip=10.20.0.0-10.20.1.255\n\
                allowed-peer-ip=169.254.169.254\n\
                denied-peer-ip 10.0.0.0-10.255.255.255\n";
    let (converted, table) = convert_and_check("peers", text);
    assert_eq!(
        keys(&table),
        [
            "allow_peers",
            "auth",
            "deny_peers",
            "listen",
            "max_channels",
            "max_permissions",
            "max_tcp_per_ip",
            "rate_limit",
            "realm",
            "user_quota",
        ],
        "{converted}"
    );
    // The metadata address stays refused, as coturn refuses it whatever it allows.
    assert_eq!(table["allow_peers"], list(&["10.20.0.0/23", "83.166.68.45/32"]));
    assert_eq!(
        table["deny_peers"],
        list(&[
            "8.8.8.0/29",
            "8.8.8.8/31",
            "83.166.64.0/22",
            "83.166.68.0/27",
            "83.166.68.32/29",
            "83.166.68.40/30",
            "83.166.68.44/32",
            "83.166.68.46/31",
            "83.166.68.48/28",
            "83.166.68.64/26",
            "83.166.68.128/25",
            "83.166.69.0/24",
            "83.166.70.0/23",
            "83.166.72.0/21",
            "83.166.80.0/20",
        ])
    );
}

#[test]
fn debians_own_turnserver_conf_converts() {
    // The options Debian's coturn 4.6.1 package leaves on in /etc/turnserver.conf.
    let text = "syslog\nno-rfc5780\nno-stun-backward-compatibility\nresponse-origin-only-with-rfc5780\n";
    let (converted, table) = convert_and_check("debian", text);
    assert_eq!(table["auth"]["allow_anonymous"].as_bool(), Some(true), "{converted}");
    for option in ["syslog", "no-rfc5780", "no-stun-backward-compatibility", "response-origin-only-with-rfc5780"] {
        assert!(converted.contains(&format!(", {option}: ")), "{option} is listed: {converted}");
    }
}

#[test]
fn a_line_tern_cannot_read_stops_the_conversion_with_its_number() {
    let coturn = scratch_file("bad.conf", "realm=example.org\n# fine so far\nmin-port=sixty\n");
    let path = coturn.to_str().expect("utf-8 path");
    let output = run_tern(&["convert", path]);
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert_eq!(stdout(&output), "", "nothing half-converted on stdout");
    assert_eq!(
        String::from_utf8_lossy(&output.stderr),
        format!("tern: {path}: line 3: min-port: \"sixty\" is not a port number\n")
    );
    let missing = run_tern(&["convert", "/nonexistent/turnserver.conf"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).starts_with("tern: cannot read coturn configuration /nonexistent"),
        "{missing:?}"
    );
}

/// A static user shared by an app's clients meets the default `user_quota`
/// of 10 (coturn has none) at its eleventh allocation: 486, and one warning
/// naming the user, the limit and the key, however often it happens.
#[test]
fn the_default_user_quota_is_named_once_when_it_bites() {
    let server = TernServer::start(&["--user", "app:shared-password", "--workers", "1"]);
    let credentials = Credentials { username: "app".into(), password: "shared-password".into() };
    let session = || {
        let socket = ClientSocket::open(server.udp_addr(), Transport::Udp, Duration::from_secs(5)).expect("socket");
        TurnSession::new(socket, credentials.clone(), Duration::from_secs(5))
    };
    let mut held: Vec<TurnSession> = (0..10)
        .map(|i| {
            let mut s = session();
            s.allocate(None).unwrap_or_else(|e| panic!("allocation {i} within the quota: {e}"));
            s
        })
        .collect();
    for _ in 0..3 {
        let error = session().allocate(None).expect_err("the eleventh is over the quota");
        assert_eq!(error.code(), Some(486), "{error}");
    }
    let (status, log) = {
        for s in &mut held {
            s.refresh(0).expect("delete");
        }
        server.stop_with_log()
    };
    assert!(status.success());
    let notices: Vec<serde_json::Value> = log
        .iter()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| line["setting"] == "user_quota")
        .collect();
    assert_eq!(notices.len(), 1, "one line for three refusals: {notices:?}");
    let notice = &notices[0];
    assert_eq!(notice["level"], "WARN", "{notice}");
    assert_eq!((notice["user"].as_str(), notice["limit"].as_u64()), (Some("app"), Some(10)), "{notice}");
}
