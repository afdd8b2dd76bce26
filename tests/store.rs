//! The user store against real engines started by the tests: SQLite files,
//! PostgreSQL on a Unix socket and Redis on a loopback port, each in a
//! temporary directory of its own, and coturn 4.17.1's `turnadmin` as the
//! other party. What turnadmin writes, tern reads as exactly the key its
//! own authentication computes; what `tern user add` and `tern secret add`
//! write, turnadmin lists; a change made through another connection reaches
//! a subscriber within 5 s; an engine stopped mid-test gives typed errors
//! and is reconnected to when it returns; TLS to PostgreSQL checks the
//! server's certificate.

mod common;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use ipnet::IpNet;
use tern::proto::auth::{LongTermKey, PasswordAlgorithm, UserKeys};
use tern::store::{Change, ChangeFeed, FeedEvent, PASSWORD_ENV, Store, StoreError, StoreSettings, StoreUrl};

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
    let port = redis.port();
    let engine = Engine {
        settings: settings(&url, Some(REDIS_PASSWORD)),
        turnadmin_db: vec!["-N".into(), redis.conninfo()],
        store_table: format!("[store]\nurl = \"{url}\"\npassword_file = \"{}\"\n", password_file.display()),
        add_peer_ranges: Box::new(move || {
            for (key, member) in [
                ("turn/realm/north.gov/allowed-peer-ip", "172.17.13.200"),
                ("turn/realm/north.gov/denied-peer-ip", "172.17.13.133-172.17.14.56"),
                ("turn/realm//denied-peer-ip", "123::45"),
            ] {
                let output = run_bounded(
                    Command::new("redis-cli").args([
                        "-p",
                        &port.to_string(),
                        "--no-auth-warning",
                        "-a",
                        REDIS_PASSWORD,
                        "SADD",
                        key,
                        member,
                    ]),
                    COMMAND_TIMEOUT,
                );
                assert!(output.status.success(), "redis-cli: {output:?}");
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
