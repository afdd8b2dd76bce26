//! The user store against real engines started by the tests: SQLite files,
//! PostgreSQL on a Unix socket and Redis on a loopback port, each in a
//! temporary directory of its own, and coturn 4.17.1's `turnadmin` as the
//! other party. What turnadmin writes, tern reads as exactly the key its
//! own authentication computes; what `tern user add` and `tern secret add`
//! write, turnadmin lists; a change made through another connection reaches
//! a subscriber within 5 s; an engine stopped mid-test gives typed errors
//! and is reconnected to when it returns; TLS to PostgreSQL checks the
//! server's certificate. Usage records one node writes in batches, another
//! reads back exactly; a revocation one node makes reaches the other's
//! change feed within 5 s and expires; a store that schema version 1 made
//! is migrated by two nodes at once.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ipnet::IpNet;
use tern::proto::Transport;
use tern::proto::auth::{LongTermKey, PasswordAlgorithm, UserKeys};
use tern::store::{
    Change, ChangeFeed, FeedEvent, MAX_USAGE_BATCH, MAX_USAGE_LIST, PASSWORD_ENV, Store, StoreError, StoreSettings,
    StoreUrl, UsageFilter, UsageRecord,
};

use common::engines::{self, Postgres, REDIS_PASSWORD, Redis};
use common::{COMMAND_TIMEOUT, TestCert, run_bounded, scratch_file, tern_command, wait_bounded};

/// Changes must reach a subscriber within this (the issue's bound).
const PROPAGATION: Duration = Duration::from_secs(5);
/// How long a stopped and restarted engine may take to be usable again.
const RECONNECT: Duration = Duration::from_secs(30);
/// Feed events any one wait may skip before it gives up.
const MAX_EVENTS: usize = 10_000;

/// The MD5 key tern's own authentication derives for these credentials.
fn expected_keys(user: &str, realm: &str, password: &str) -> UserKeys {
    match LongTermKey::derive(PasswordAlgorithm::Md5, user, realm, password) {
        LongTermKey::Md5(key) => UserKeys::from_md5_key(key),
        LongTermKey::Sha256(_) => unreachable!("MD5 was asked for"),
    }
}

fn settings(url: &str, password: Option<&str>) -> StoreSettings {
    StoreSettings {
        url: StoreUrl::parse(url).expect("a valid store URL"),
        password: password.map(|p| tern::store::Password::new(p.to_owned())),
        timeout: Duration::from_secs(5),
        tls_ca: None,
    }
}

/// Runs a command off the runtime's threads, so the feed keeps reading.
async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || run_bounded(&mut command, COMMAND_TIMEOUT)).await.expect("the command thread")
}

/// `tern ARGS` with `input` on standard input.
async fn tern_with_input(args: Vec<String>, input: String) -> Output {
    tokio::task::spawn_blocking(move || {
        let mut child = tern_command(&[])
            .args(&args)
            .env_remove(PASSWORD_ENV)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("tern runs");
        {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin is piped");
            stdin.write_all(input.as_bytes()).expect("writing to tern");
        }
        wait_bounded(&mut child, COMMAND_TIMEOUT).expect("tern finishes");
        child.wait_with_output().expect("tern's output")
    })
    .await
    .expect("the command thread")
}

async fn turnadmin(turnadmin: &Path, db: &[String], args: &[&str]) -> String {
    let (turnadmin, mut all) = (turnadmin.to_owned(), args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
    all.extend(db.iter().cloned());
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = all.iter().map(String::as_str).collect();
        engines::run_turnadmin(&turnadmin, &args)
    })
    .await
    .expect("the turnadmin thread")
}

/// Waits for the first event `wanted` accepts, at most `timeout`.
async fn next_event(feed: &mut ChangeFeed, timeout: Duration, wanted: impl Fn(&FeedEvent) -> bool) -> FeedEvent {
    let deadline = tokio::time::Instant::now() + timeout;
    for _ in 0..MAX_EVENTS {
        match tokio::time::timeout_at(deadline, feed.next()).await {
            Ok(Some(event)) if wanted(&event) => return event,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the change feed ended"),
            Err(_) => break,
        }
    }
    panic!("no such change feed event within {timeout:?}");
}

fn is_all(event: &FeedEvent) -> bool {
    matches!(event, FeedEvent::Changed(Change::All))
}

fn is_user(realm: &'static str, name: &'static str) -> impl Fn(&FeedEvent) -> bool {
    move |event| matches!(event, FeedEvent::Changed(Change::User { realm: r, name: n }) if r == realm && n == name)
}

fn net(text: &str) -> IpNet {
    text.parse().expect("a CIDR literal")
}

/// One engine under test: its store settings, turnadmin's flags for it,
/// the `[store]` table of a tern configuration for it, and how to write
/// peer ranges with the engine's own client.
struct Engine<'a> {
    settings: StoreSettings,
    turnadmin_db: Vec<String>,
    store_table: String,
    add_peer_ranges: Box<dyn Fn() + Send + 'a>,
}

/// What every engine must do with coturn's tools on the other side.
async fn coturn_and_tern_share_the_store(engine: Engine<'_>, turnadmin_path: PathBuf) {
    let db = &engine.turnadmin_db;
    let store = Store::open(&engine.settings).await.expect("the store opens and migrates");
    assert_eq!(store.status().await.expect("status").schema_version, tern::store::SCHEMA_VERSION);
    let mut feed = store.subscribe();
    next_event(&mut feed, PROPAGATION * 2, is_all).await;

    // coturn's tool writes, over a connection of its own.
    turnadmin(&turnadmin_path, db, &["-a", "-u", "gorst", "-r", "north.gov", "-p", "hero"]).await;
    turnadmin(&turnadmin_path, db, &["-s", "logen", "-r", "north.gov"]).await;
    turnadmin(&turnadmin_path, db, &["-O", "-o", "http://crinna.org:80", "-r", "crinna.org"]).await;
    turnadmin(&turnadmin_path, db, &["-g", "--user-quota", "7", "-r", "north.gov"]).await;
    next_event(&mut feed, PROPAGATION, is_user("north.gov", "gorst")).await;

    // tern reads exactly the key its authentication computes.
    let keys = store.user_keys("north.gov", "gorst").await.expect("lookup");
    assert_eq!(keys, Some(expected_keys("gorst", "north.gov", "hero")));
    assert_ne!(keys, Some(expected_keys("gorst", "north.gov", "hero2")));
    assert_eq!(store.user_keys("crinna.org", "gorst").await.expect("lookup"), None);
    assert_eq!(store.rest_secrets("north.gov").await.expect("secrets"), vec![b"logen".to_vec()]);
    assert_eq!(store.origin_realm("http://crinna.org:80").await.expect("origin"), Some("crinna.org".into()));
    assert_eq!(store.origin_realm("https://elsewhere").await.expect("origin"), None);
    let options = store.realm_options("north.gov").await.expect("options");
    assert_eq!((options.user_quota, options.max_bps), (Some(7), None));

    (engine.add_peer_ranges)();
    let ranges = store.peer_ranges("north.gov").await.expect("peer ranges");
    assert_eq!(ranges.allowed, vec![net("172.17.13.200/32")]);
    for denied in ["172.17.13.133/32", "172.17.14.0/27", "172.17.14.56/32", "123::45/128"] {
        assert!(ranges.denied.contains(&net(denied)), "{denied} in {:?}", ranges.denied);
    }
    assert!(!ranges.denied.iter().any(|n| n.contains(&"172.17.14.57".parse::<IpAddr>().expect("IP"))));
    assert_eq!(store.peer_ranges("crinna.org").await.expect("peer ranges").denied, vec![net("123::45/128")]);

    // tern's admin commands write what turnadmin lists.
    let config = scratch_file("store.toml", &format!("realm = \"north.gov\"\n{}", engine.store_table));
    let config = config.to_str().expect("utf-8 path").to_owned();
    let with_config = |args: &[&str]| -> Vec<String> {
        let mut all: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
        all.extend(["--config".to_owned(), config.clone()]);
        all
    };
    let added =
        tern_with_input(with_config(&["user", "add", "ninefingers", "--password-stdin"]), "hero2\n".into()).await;
    assert!(added.status.success(), "tern user add: {added:?}");
    next_event(&mut feed, PROPAGATION, is_user("north.gov", "ninefingers")).await;
    assert_eq!(
        store.user_keys("north.gov", "ninefingers").await.expect("lookup"),
        Some(expected_keys("ninefingers", "north.gov", "hero2"))
    );
    let secret = tern_with_input(with_config(&["secret", "add", "--secret-stdin"]), "bloody9\n".into()).await;
    assert!(secret.status.success(), "tern secret add: {secret:?}");
    let option = tern_with_input(with_config(&["realm", "option", "max-bps", "500000"]), String::new()).await;
    assert!(option.status.success(), "tern realm option: {option:?}");
    let users = turnadmin(&turnadmin_path, db, &["-l"]).await;
    assert!(users.lines().any(|l| l == "ninefingers[north.gov]"), "turnadmin -l:\n{users}");
    assert!(users.lines().any(|l| l == "gorst[north.gov]"), "turnadmin -l:\n{users}");
    let secrets = turnadmin(&turnadmin_path, db, &["-S"]).await;
    assert!(secrets.lines().any(|l| l == "bloody9[north.gov]"), "turnadmin -S:\n{secrets}");
    let options = turnadmin(&turnadmin_path, db, &["-G"]).await;
    // turnadmin prints Redis's options its own way.
    let set = |l: &str| l == "max-bps[north.gov]=500000" || l == "north.gov/max-bps = 500000";
    assert!(options.lines().any(set), "turnadmin -G:\n{options}");

    // tern's listings show what both wrote.
    let listed = tern_with_input(with_config(&["user", "list", "--json"]), String::new()).await;
    assert!(listed.status.success(), "tern user list: {listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    assert_eq!(
        listed,
        serde_json::json!([{ "realm": "north.gov", "name": "gorst" }, { "realm": "north.gov", "name": "ninefingers" }])
    );
    let table = tern_with_input(with_config(&["realm", "option"]), String::new()).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert_eq!(table, "REALM      max-bps  user-quota  total-quota\nnorth.gov  500000   7           -\n", "{table}");

    // A deletion by tern is seen by the feed and by turnadmin.
    let deleted = tern_with_input(with_config(&["user", "delete", "gorst"]), String::new()).await;
    assert!(deleted.status.success(), "tern user delete: {deleted:?}");
    next_event(&mut feed, PROPAGATION, is_user("north.gov", "gorst")).await;
    assert_eq!(store.user_keys("north.gov", "gorst").await.expect("lookup"), None);
    let users = turnadmin(&turnadmin_path, db, &["-l"]).await;
    assert!(!users.lines().any(|l| l == "gorst[north.gov]"), "turnadmin -l:\n{users}");
    let again = tern_with_input(with_config(&["user", "delete", "gorst"]), String::new()).await;
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("no user gorst in realm north.gov"), "{again:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_made_by_turnadmin_is_shared_with_tern() {
    let Some(turnadmin_path) = engines::turnadmin() else { return };
    let dir = engines::temp_dir("sqlite");
    let file = dir.join("turndb");
    // coturn makes the database; tern adds its own tables to it.
    run_turnadmin_sync(&turnadmin_path, &["-l", "-b", file.to_str().expect("utf-8 path")]);
    let url = format!("sqlite://{}", file.display());
    let ranges_file = file.clone();
    let engine = Engine {
        settings: settings(&url, None),
        turnadmin_db: vec!["-b".into(), file.display().to_string()],
        store_table: format!("[store]\nurl = \"{url}\"\n"),
        add_peer_ranges: Box::new(move || {
            let connection = rusqlite::Connection::open(&ranges_file).expect("open");
            connection
                .execute_batch(
                    "INSERT INTO allowed_peer_ip (realm, ip_range) VALUES ('north.gov', '172.17.13.200'); \
                     INSERT INTO denied_peer_ip (realm, ip_range) VALUES ('north.gov', '172.17.13.133-172.17.14.56'), \
                     ('', '123::45');",
                )
                .expect("insert peer ranges");
        }),
    };
    coturn_and_tern_share_the_store(engine, turnadmin_path).await;
    let _ = std::fs::remove_dir_all(dir);
}

fn run_turnadmin_sync(turnadmin: &Path, args: &[&str]) {
    engines::run_turnadmin(turnadmin, args);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_schema_made_by_tern_is_shared_with_turnadmin() {
    let Some(turnadmin_path) = engines::turnadmin() else { return };
    let Some(postgres) = Postgres::start() else { return };
    let url = postgres.url();
    let postgres_ref = &postgres;
    let engine = Engine {
        settings: settings(&url, None),
        turnadmin_db: vec!["-e".into(), postgres.conninfo()],
        store_table: format!("[store]\nurl = \"{url}\"\n"),
        add_peer_ranges: Box::new(move || {
            postgres_ref.psql(
                "INSERT INTO allowed_peer_ip (realm, ip_range) VALUES ('north.gov', '172.17.13.200'); \
                 INSERT INTO denied_peer_ip (realm, ip_range) VALUES ('north.gov', '172.17.13.133-172.17.14.56'), \
                 ('', '123::45');",
            );
        }),
    };
    coturn_and_tern_share_the_store(engine, turnadmin_path).await;
    // The triggers tern installed are tern's own objects.
    let triggers = postgres.psql("SELECT DISTINCT tgname FROM pg_trigger WHERE NOT tgisinternal");
    assert_eq!(triggers.trim(), "tern_changes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_keys_written_by_turnadmin_are_shared_with_tern() {
    let Some(turnadmin_path) = engines::turnadmin() else { return };
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let password_file = scratch_file("redis-pass", &format!("{REDIS_PASSWORD}\n"));
    let engine = Engine {
        settings: settings(&url, Some(REDIS_PASSWORD)),
        turnadmin_db: vec!["-N".into(), redis.conninfo()],
        store_table: format!("[store]\nurl = \"{url}\"\npassword_file = \"{}\"\n", password_file.display()),
        add_peer_ranges: Box::new(|| {
            for (key, member) in [
                ("turn/realm/north.gov/allowed-peer-ip", "172.17.13.200"),
                ("turn/realm/north.gov/denied-peer-ip", "172.17.13.133-172.17.14.56"),
                ("turn/realm//denied-peer-ip", "123::45"),
            ] {
                redis.cli(&["SADD", key, member]);
            }
        }),
    };
    coturn_and_tern_share_the_store(engine, turnadmin_path).await;
}

/// Stops `stop` mid-test and starts it again with `resume`: lookups fail
/// with a transient typed error, the feed says it lost its connection, and
/// both work again once the engine is back.
async fn survives_a_restart(settings: StoreSettings, stop: impl FnOnce(), resume: impl FnOnce()) {
    let store = Store::open(&settings).await.expect("the store opens");
    let mut feed = store.subscribe();
    next_event(&mut feed, PROPAGATION * 2, is_all).await;
    store.add_user("north.gov", "gorst", [7; 16]).await.expect("add");

    tokio::task::block_in_place(stop);
    let error = store.user_keys("north.gov", "gorst").await.expect_err("the engine is down");
    assert!(error.is_transient(), "{error}");
    assert!(matches!(error, StoreError::Unreachable { .. } | StoreError::Timeout { .. }), "{error}");
    // While down, calls fail at once rather than each trying to connect.
    let again = store.user_keys("north.gov", "gorst").await.expect_err("still down");
    assert!(again.is_transient(), "{again}");
    next_event(&mut feed, RECONNECT, |event| matches!(event, FeedEvent::Lost(e) if e.is_transient())).await;

    tokio::task::block_in_place(resume);
    let deadline = tokio::time::Instant::now() + RECONNECT;
    let mut answered = false;
    for _ in 0..1000 {
        match store.user_keys("north.gov", "nobody").await {
            Ok(keys) => {
                assert_eq!(keys, None);
                answered = true;
                break;
            }
            Err(error) => assert!(error.is_transient(), "{error}"),
        }
        assert!(tokio::time::Instant::now() < deadline, "the store did not come back within {RECONNECT:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered);
    next_event(&mut feed, RECONNECT, is_all).await;
    store.add_user("north.gov", "after", [8; 16]).await.expect("add after the restart");
    next_event(&mut feed, PROPAGATION, is_user("north.gov", "after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_stopped_mid_test_is_reconnected_to() {
    let Some(postgres) = Postgres::start() else { return };
    survives_a_restart(settings(&postgres.url(), None), || postgres.stop(), || postgres.resume()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_mid_test_is_reconnected_to() {
    let Some(redis) = Redis::start() else { return };
    let redis = std::sync::Mutex::new(redis);
    let lock = || redis.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let url = lock().url();
    survives_a_restart(settings(&url, Some(REDIS_PASSWORD)), || lock().stop(), || lock().resume()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_redis_password_is_a_typed_error_and_check_reports_it() {
    let Some(redis) = Redis::start() else { return };
    let store = Store::new(&settings(&redis.url(), Some("wrong"))).expect("a store");
    let error = store.user_keys("north.gov", "gorst").await.expect_err("wrong password");
    assert!(matches!(error, StoreError::Unreachable { .. }), "{error}");
    let output = run(tern_command(&["check", "--store", &redis.url()])).await;
    assert!(output.status.success(), "tern check: {output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().find(|l| l.starts_with("# store: ")).expect("a store line");
    assert!(line.contains("Redis store unreachable") && line.contains("retries"), "{line}");
    let refused = run(tern_command(&["check", "--store", "redis://:secret@127.0.0.1/0"])).await;
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("a password on the command line"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_reports_the_schema_version() {
    let dir = engines::temp_dir("check");
    let url = format!("sqlite://{}", dir.join("tern.db").display());
    let before = run(tern_command(&["check", "--store", &url])).await;
    assert!(String::from_utf8_lossy(&before.stdout).contains("tern's tables are not there yet"), "{before:?}");
    Store::open(&settings(&url, None)).await.expect("migrated");
    let after = run(tern_command(&["check", "--store", &url])).await;
    let expected = format!("# store: {url}: reachable, tern schema version {}", tern::store::SCHEMA_VERSION);
    assert!(String::from_utf8_lossy(&after.stdout).lines().any(|l| l == expected), "{after:?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_over_tls_checks_the_certificate() {
    let cert = TestCert::new("postgres-tls");
    let Some(postgres) = Postgres::start_with_tls(&cert.cert, &cert.key) else { return };
    let port = postgres.tls_port().expect("a TLS port");
    let url = format!("postgresql://tern@localhost:{port}/postgres?hostaddr=127.0.0.1&sslmode=require");
    let mut trusted = settings(&url, None);
    trusted.tls_ca = Some(cert.cert.clone());
    let store = Store::open(&trusted).await.expect("TLS with the server's certificate trusted");
    store.add_user("north.gov", "gorst", [1; 16]).await.expect("a write over TLS");
    let encrypted = postgres.psql("SELECT count(*) FROM pg_stat_ssl WHERE ssl");
    assert!(encrypted.trim().parse::<u32>().expect("a count") >= 1, "no TLS connection: {encrypted}");

    let other = TestCert::new("postgres-other");
    let mut untrusted = settings(&url, None);
    untrusted.tls_ca = Some(other.cert.clone());
    let error = Store::open(&untrusted).await.expect_err("a certificate from another CA");
    assert!(matches!(error, StoreError::Unreachable { .. }), "{error}");
}

/// Two nodes on one engine, as a fleet has them: two store handles, each
/// with its connections; the engine's own client to look at what is
/// stored; and the `[store]` table of a tern configuration for the CLI.
struct Fleet<'a> {
    settings: StoreSettings,
    store_table: String,
    /// How many revocations of a realm the engine holds, expired or not.
    stored_revocations: Box<dyn Fn(&str) -> usize + Send + 'a>,
}

fn is_revocations(realm: &'static str) -> impl Fn(&FeedEvent) -> bool {
    move |event| matches!(event, FeedEvent::Changed(Change::Revocations { realm: r }) if r == realm)
}

/// `count` usage records as varied as a node writes: every transport, IPv4
/// and IPv6 clients, one relayed address of either family or both (the
/// widest that can be written, once), names
/// with quotes and non-ASCII bytes, counters up to the largest a column
/// holds; the one at `i` ended at `ended + i`.
fn usage_batch(count: usize, ended: u64) -> Vec<UsageRecord> {
    let names = ["1795328581:gorst", "ninefingers", "o'brien\"; DROP TABLE tern_usage; --", "glokta-ø-雪"];
    (0..count)
        .map(|i| {
            let n = i as u64;
            let address = |text: String| -> SocketAddr { text.parse().expect("an address") };
            let (client, relayed) = if i == 7 {
                let widest_v6 = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff";
                let relayed = vec![address("255.255.255.255:65535".into()), address(format!("[{widest_v6}]:65535"))];
                (address(format!("[{widest_v6}%4294967295]:65535")), relayed)
            } else {
                let client = if i % 4 == 0 {
                    address(format!("[fe80::{i:x}%2]:{}", 40000 + i))
                } else {
                    address(format!("192.0.2.{}:{}", i % 250, 40000 + i))
                };
                let v4 = address(format!("203.0.113.{}:{}", i % 250, 49152 + i));
                let v6 = address(format!("[2001:db8::{i:x}]:{}", 50000 + i));
                (client, [vec![v4], vec![v6], vec![v4, v6]][i % 3].clone())
            };
            UsageRecord {
                node: format!("tern-{}", i % 3),
                realm: if i % 2 == 0 { "north.gov" } else { "crinna.org" }.into(),
                username: names[i % names.len()].into(),
                transport: [Transport::Udp, Transport::Tcp, Transport::Tls][i % 3],
                client,
                relayed,
                started: ended + n - 60 * (n % 10),
                ended: ended + n,
                packets_to_peer: n,
                bytes_to_peer: if i == 5 { i64::MAX as u64 } else { 1200 * n },
                packets_to_client: 2 * n,
                bytes_to_client: 1300 * n,
            }
        })
        .collect()
}

fn filter(realm: Option<&str>, username: Option<&str>, since: Option<u64>, limit: usize) -> UsageFilter {
    UsageFilter { realm: realm.map(str::to_owned), username: username.map(str::to_owned), since, limit }
}

/// What every engine must do with usage records and revocations, with one
/// node writing and the other reading and following the change feed.
async fn usage_and_revocations_reach_the_fleet(fleet: Fleet<'_>) {
    let node_a = Store::open(&fleet.settings).await.expect("node A opens the store");
    let node_b = Store::open(&fleet.settings).await.expect("node B opens the store");
    let mut feed = node_a.subscribe();
    next_event(&mut feed, PROPAGATION * 2, is_all).await;

    // Usage written by one node in batches is read back exactly by the other.
    let ended = 1_795_300_000;
    // More than one step of a Redis listing (1000 entries) in all.
    let first = usage_batch(2 * MAX_USAGE_BATCH, ended);
    let second = usage_batch(40, ended + 10_000);
    for batch in first.chunks(MAX_USAGE_BATCH).chain([second.as_slice()]) {
        node_b.record_usage(batch).await.expect("a batch");
    }
    let all: Vec<UsageRecord> = first.iter().chain(&second).cloned().collect();
    assert_eq!(node_a.usage(&filter(None, None, None, MAX_USAGE_LIST)).await.expect("usage"), all);
    assert_eq!(node_a.usage(&filter(None, None, None, 30)).await.expect("the newest"), all[all.len() - 30..]);
    let wanted = |realm: &str, user: &str, since: u64| -> Vec<UsageRecord> {
        all.iter().filter(|r| r.realm == realm && r.username == user && r.ended >= since).cloned().collect()
    };
    let quoted = "o'brien\"; DROP TABLE tern_usage; --";
    for (realm, user, since) in [
        ("north.gov", quoted, 0),
        ("crinna.org", "glokta-ø-雪", ended + 300),
        ("crinna.org", "ninefingers", ended + 10_000),
    ] {
        let expected = wanted(realm, user, since);
        assert!(!expected.is_empty(), "{realm} {user} {since}");
        let read = node_a.usage(&filter(Some(realm), Some(user), Some(since), MAX_USAGE_LIST)).await.expect("usage");
        assert_eq!(read, expected, "{realm} {user} since {since}");
    }
    let since = node_a.usage(&filter(None, None, Some(ended + 500), MAX_USAGE_LIST)).await.expect("usage");
    assert_eq!(since, all.iter().filter(|r| r.ended >= ended + 500).cloned().collect::<Vec<_>>());
    assert_eq!(node_a.usage(&filter(Some("elsewhere"), None, None, 10)).await.expect("usage"), Vec::new());
    let error = node_b.record_usage(&usage_batch(MAX_USAGE_BATCH + 1, ended)).await.expect_err("too big a batch");
    assert!(matches!(error, StoreError::InvalidInput(_)), "{error}");

    // The command line lists the same, as JSON and as a table.
    let config = scratch_file("usage.toml", &fleet.store_table);
    let config = config.to_str().expect("utf-8 path").to_owned();
    let since_arg = (ended + 10_030).to_string();
    let listed = tern_with_input(
        ["usage", "list", "--json", "--realm", "north.gov", "--since", &since_arg, "--config", &config]
            .map(str::to_owned)
            .to_vec(),
        String::new(),
    )
    .await;
    assert!(listed.status.success(), "tern usage list: {listed:?}");
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).expect("JSON");
    let expected: Vec<&UsageRecord> =
        all.iter().filter(|r| r.realm == "north.gov" && r.ended >= ended + 10_030).collect();
    assert_eq!(listed, serde_json::to_value(&expected).expect("JSON"));
    assert_eq!(listed[0]["transport"], "udp", "{listed}");
    let table = tern_with_input(
        ["usage", "list", "--limit", "1", "--config", &config].map(str::to_owned).to_vec(),
        String::new(),
    )
    .await;
    let table = String::from_utf8_lossy(&table.stdout);
    let last = all.last().expect("records");
    let mut lines = table.lines();
    assert!(lines.next().expect("a header").starts_with("ENDED"), "{table}");
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row[0], "2026-11-22T01:13:59Z", "{table}");
    assert_eq!(row[2..5], [last.node.as_str(), last.realm.as_str(), last.username.as_str()], "{table}");
    assert_eq!(lines.next(), None, "{table}");

    // A revocation by one node reaches the other's feed, and expires.
    let now = tern::io::clock::unix_secs();
    let gorst = "1795328581:gorst";
    node_b.revoke("north.gov", gorst, now + 3600).await.expect("revoke");
    next_event(&mut feed, PROPAGATION, is_revocations("north.gov")).await;
    assert_eq!(node_a.revocations("north.gov").await.expect("read"), vec![(gorst.to_owned(), now + 3600)]);
    node_b.revoke("north.gov", gorst, now + 7200).await.expect("revoke again, for longer");
    node_b.revoke("north.gov", quoted, tern::store::MAX_REVOCATION_EXPIRY).await.expect("revoke until undone");
    next_event(&mut feed, PROPAGATION, is_revocations("north.gov")).await;
    assert_eq!(
        node_a.revocations("north.gov").await.expect("read"),
        vec![(gorst.to_owned(), now + 7200), (quoted.to_owned(), tern::store::MAX_REVOCATION_EXPIRY)]
    );
    assert_eq!(node_a.revocations("crinna.org").await.expect("read"), Vec::new());
    assert!(node_b.unrevoke("north.gov", quoted).await.expect("unrevoke"));
    next_event(&mut feed, PROPAGATION, is_revocations("north.gov")).await;
    assert!(!node_b.unrevoke("north.gov", quoted).await.expect("unrevoke again"));
    assert_eq!(node_a.revocations("north.gov").await.expect("read"), vec![(gorst.to_owned(), now + 7200)]);

    let brief = tern::io::clock::unix_secs() + 2;
    node_b.revoke("crinna.org", "brief", brief).await.expect("revoke briefly");
    next_event(&mut feed, PROPAGATION, is_revocations("crinna.org")).await;
    assert_eq!(node_a.revocations("crinna.org").await.expect("read"), vec![("brief".to_owned(), brief)]);
    let deadline = tokio::time::Instant::now() + PROPAGATION;
    while tern::io::clock::unix_secs() <= brief {
        assert!(tokio::time::Instant::now() < deadline, "the clock did not pass {brief}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(node_a.revocations("crinna.org").await.expect("read"), Vec::new(), "expired");
    assert_eq!((fleet.stored_revocations)("crinna.org"), 0, "the expired revocation is deleted");
    assert_eq!((fleet.stored_revocations)("north.gov"), 1);
    let error = node_b.revoke("north.gov", "late", now - 1).await.expect_err("an expiry in the past");
    assert!(matches!(error, StoreError::InvalidInput(_)), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_usage_and_revocations_reach_the_fleet() {
    let dir = engines::temp_dir("sqlite-fleet");
    let file = dir.join("tern.db");
    let url = format!("sqlite://{}", file.display());
    let fleet = Fleet {
        settings: settings(&url, None),
        store_table: format!("[store]\nurl = \"{url}\"\n"),
        stored_revocations: Box::new(move |realm| {
            let connection = rusqlite::Connection::open(&file).expect("open");
            let count: i64 = connection
                .query_row("SELECT count(*) FROM tern_revocation WHERE realm = ?1", [realm], |row| row.get(0))
                .expect("count");
            usize::try_from(count).expect("a count")
        }),
    };
    usage_and_revocations_reach_the_fleet(fleet).await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_usage_and_revocations_reach_the_fleet() {
    let Some(postgres) = Postgres::start() else { return };
    let url = postgres.url();
    let fleet = Fleet {
        settings: settings(&url, None),
        store_table: format!("[store]\nurl = \"{url}\"\n"),
        stored_revocations: Box::new(|realm| {
            let sql = format!("SELECT count(*) FROM tern_revocation WHERE realm = '{realm}'");
            postgres.psql(&sql).trim().parse().expect("a count")
        }),
    };
    usage_and_revocations_reach_the_fleet(fleet).await;
    // Two relayed addresses of the widest kind fit the column.
    let rows = postgres.psql("SELECT max(length(relayed)) FROM tern_usage");
    assert!(rows.trim().parse::<usize>().expect("a length") > 64, "{rows}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_usage_and_revocations_reach_the_fleet() {
    let Some(redis) = Redis::start() else { return };
    let url = redis.url();
    let password_file = scratch_file("redis-fleet-pass", &format!("{REDIS_PASSWORD}\n"));
    let fleet = Fleet {
        settings: settings(&url, Some(REDIS_PASSWORD)),
        store_table: format!("[store]\nurl = \"{url}\"\npassword_file = \"{}\"\n", password_file.display()),
        stored_revocations: Box::new(|realm| {
            redis.cli(&["ZCARD", &format!("tern/realm/{realm}/revoked")]).trim().parse().expect("a count")
        }),
    };
    usage_and_revocations_reach_the_fleet(fleet).await;
    // The layout the README documents: one stream entry per record, its
    // fields the SQL columns; one sorted set per realm that expires with
    // its last revocation.
    assert_eq!(redis.cli(&["XLEN", "tern/usage"]).trim(), (2 * MAX_USAGE_BATCH + 40).to_string());
    let first = redis.cli(&["XRANGE", "tern/usage", "-", "+", "COUNT", "1"]);
    let fields: Vec<&str> = first.lines().skip(1).step_by(2).collect();
    assert_eq!(
        fields,
        [
            "node",
            "realm",
            "username",
            "transport",
            "client",
            "relayed",
            "started",
            "ended",
            "packets_to_peer",
            "bytes_to_peer",
            "packets_to_client",
            "bytes_to_client"
        ],
        "{first}"
    );
    let ttl: i64 = redis.cli(&["TTL", "tern/realm/north.gov/revoked"]).trim().parse().expect("a TTL");
    assert!((7000..=7200).contains(&ttl), "the set expires with its last member: {ttl}");
    assert_eq!(redis.cli(&["EXISTS", "tern/realm/crinna.org/revoked"]).trim(), "0");
}

/// A store that schema version 1 made (migration 1 as it shipped, and a row
/// of each of tern's tables) opened by this tern: both nodes migrate it at
/// once, one of them does, the old rows read as before, and revocations
/// now reach the change feed.
async fn a_version_1_store_is_migrated(settings: StoreSettings) {
    let (a, b) = (Store::new(&settings).expect("a store"), Store::new(&settings).expect("a store"));
    assert_eq!(a.status().await.expect("status").schema_version, 1);
    let (migrated_a, migrated_b) = tokio::join!(a.migrate(), b.migrate());
    assert_eq!(migrated_a.expect("node A migrates"), tern::store::SCHEMA_VERSION);
    assert_eq!(migrated_b.expect("node B migrates"), tern::store::SCHEMA_VERSION);
    assert_eq!(b.status().await.expect("status").schema_version, tern::store::SCHEMA_VERSION);
    let old = a.usage(&filter(None, None, None, 10)).await.expect("version 1's usage row");
    assert_eq!(old.len(), 1);
    assert_eq!((old[0].username.as_str(), old[0].relayed.len(), old[0].bytes_to_peer), ("gorst", 1, 1200));
    let revoked = a.revocations("north.gov").await.expect("version 1's revocation");
    assert_eq!(revoked, vec![("ninefingers".to_owned(), tern::store::MAX_REVOCATION_EXPIRY)]);

    let mut feed = a.subscribe();
    next_event(&mut feed, PROPAGATION * 2, is_all).await;
    b.revoke("north.gov", "gorst", tern::io::clock::unix_secs() + 60).await.expect("revoke");
    next_event(&mut feed, PROPAGATION, is_revocations("north.gov")).await;
    b.record_usage(&usage_batch(3, 1_795_300_000)).await.expect("records with two relayed addresses");
    assert_eq!(a.usage(&filter(None, None, None, 10)).await.expect("usage").len(), 4);
}

/// The rows a version 1 store holds, in SQL both engines take.
const VERSION_1_ROWS: &str = "INSERT INTO tern_usage (node, realm, username, transport, client, relayed, started, \
     ended, packets_to_peer, bytes_to_peer, packets_to_client, bytes_to_client) VALUES ('tern-0', 'north.gov', \
     'gorst', 'udp', '192.0.2.1:4000', '203.0.113.5:49152', 1795300000, 1795300060, 10, 1200, 11, 1300); \
     INSERT INTO tern_revocation (realm, username, expires) VALUES ('north.gov', 'ninefingers', 253402300799);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_version_1_is_migrated() {
    let dir = engines::temp_dir("sqlite-v1");
    let file = dir.join("tern.db");
    let connection = rusqlite::Connection::open(&file).expect("open");
    connection.execute_batch(include_str!("vectors/store-schema-v1-sqlite.sql")).expect("version 1's schema");
    connection.execute_batch(VERSION_1_ROWS).expect("version 1's rows");
    drop(connection);
    a_version_1_store_is_migrated(settings(&format!("sqlite://{}", file.display()), None)).await;
    let connection = rusqlite::Connection::open(&file).expect("open");
    let versions: String = connection
        .query_row("SELECT group_concat(version) FROM tern_schema ORDER BY version", [], |row| row.get(0))
        .expect("versions");
    assert_eq!(versions, "1,2");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_version_1_is_migrated() {
    let Some(postgres) = Postgres::start() else { return };
    postgres.psql(include_str!("vectors/store-schema-v1-postgres.sql"));
    postgres.psql(VERSION_1_ROWS);
    let width = "SELECT character_maximum_length FROM information_schema.columns \
                 WHERE table_name = 'tern_usage' AND column_name = 'relayed'";
    assert_eq!(postgres.psql(width).trim(), "64");
    a_version_1_store_is_migrated(settings(&postgres.url(), None)).await;
    assert_eq!(postgres.psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM tern_schema").trim(), "1,2");
    assert_eq!(postgres.psql(width).trim(), "128");
}
