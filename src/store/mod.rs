//! The user store: users, REST secrets, peer ranges, realm options and
//! origin→realm in a database that coturn's tools also use, chosen by URL
//! (SQLite, PostgreSQL or Redis), with a feed of what changed in it; and
//! tern's own fleet-wide state beside them: revocations and usage records.
//!
//! It owns the conversation with the engine: connecting (and reconnecting
//! with backoff), tern's schema and its migrations, bounded reads (every
//! value, row count and wait has a limit, and whatever the engine answers is
//! refused with a typed error rather than trusted), bound parameters only,
//! and the change feed. It must not decide anything about authentication:
//! it answers "this user has this key", and the control plane caches the
//! answer and hands it to the workers. Everything here is async and runs on
//! the control plane's tokio runtime; SQLite's blocking calls go to tokio's
//! blocking pool.
//!
//! The layout is coturn 4.17.1's (`turndb/schema.sql` and the Redis keys of
//! `turndb/schema.userdb.redis`), so `turnadmin` and tern manage the same
//! users: coturn's `hmackey` is the hex MD5 long-term key of RFC 5389
//! §15.4 (coturn retired its SHA-256/384/512 key storage in 4.4.5.2 and
//! has no password-algorithm setting, so a key is always 32 hex digits).
//! tern's own state lives in tables and keys named `tern_…` / `tern/…`.

pub mod admin;
mod postgres;
mod redis;
mod schema;
mod settings;
mod sqlite;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use ipnet::IpNet;
use tokio::sync::mpsc;

pub use settings::{PASSWORD_ENV, Password, StoreSettings, StoreUrl};

use crate::io::clock;
use crate::proto::Transport;
use crate::proto::auth::UserKeys;

/// The schema version this tern creates and understands.
pub const SCHEMA_VERSION: i64 = schema::VERSION;
/// A user name: USERNAME is at most 513 bytes (RFC 8489 §14.3), as is
/// coturn's `name varchar(512)` (plus its terminator).
pub const MAX_NAME: usize = 513;
/// A realm: coturn's `realm varchar(127)`.
pub const MAX_REALM: usize = 127;
/// A REST secret: coturn's `value varchar(256)`.
pub const MAX_SECRET: usize = 256;
/// REST secrets of one realm: a handful in rotation; more is a mistake.
pub const MAX_SECRETS: usize = 64;
/// A peer range: coturn's `ip_range varchar(256)`.
pub const MAX_RANGE: usize = 256;
/// Peer ranges of one list for one realm.
pub const MAX_RANGES: usize = 1024;
/// An origin: coturn's `origin varchar(127)`.
pub const MAX_ORIGIN: usize = 127;
/// A realm option's value: coturn's `value varchar(128)`.
const MAX_OPTION_VALUE: usize = 128;
/// Rows one listing (`tern user list`) may return.
pub const MAX_LIST: usize = 1_000_000;
/// A node's name in a usage record: `tern_usage.node varchar(255)`.
pub const MAX_NODE: usize = 255;
/// Relayed addresses of one allocation: one of each family at most (a dual
/// allocation, RFC 8656 ADDITIONAL-ADDRESS-FAMILY).
pub const MAX_RELAYED: usize = 2;
/// Usage records one [`Store::record_usage`] call writes: a batch is one
/// transaction or pipeline, and this keeps it well inside one engine
/// round trip and the store's timeout.
pub const MAX_USAGE_BATCH: usize = 512;
/// About how many entries Redis's usage stream `tern/usage` keeps (`XADD
/// MAXLEN ~`): the oldest go first, so whoever bills from Redis reads the
/// stream (`XREAD`, `XREADGROUP`) well before a million allocations more
/// have ended. About 150 MB of Redis memory when full.
pub const USAGE_STREAM_LENGTH: usize = 1_000_000;
/// Usage records one [`Store::usage`] listing may return.
pub const MAX_USAGE_LIST: usize = 100_000;
/// Unexpired revocations one realm may hold, and one listing return.
pub const MAX_REVOCATIONS: usize = 65_536;
/// The latest expiry a revocation may have, which every engine's time
/// types and Redis's `EXPIREAT` hold: "until undone".
pub const MAX_REVOCATION_EXPIRY: u64 = LAST_SECOND_OF_9999;
/// 9999-12-31T23:59:59Z in unix seconds: the last time RFC 3339 can write.
const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
/// A client address as text: `tern_usage.client varchar(64)`, enough for
/// `[IPv6%scope]:port`.
const MAX_CLIENT_TEXT: usize = 64;
/// The relayed addresses as text, comma-separated: `tern_usage.relayed
/// varchar(128)` since migration 2.
const MAX_RELAYED_TEXT: usize = 128;
/// `tern_usage.transport varchar(8)`.
const MAX_TRANSPORT_TEXT: usize = 8;
/// The hex of an MD5 key.
const KEY_HEX_LEN: usize = 32;
/// Changes the feed buffers before the subscriber reads them; past that it
/// says [`Change::All`] once instead.
const FEED_BUFFER: usize = 1024;
/// The first wait after a failed connection attempt, doubled up to
/// [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
/// The longest wait between connection attempts: a returning engine is seen
/// within this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// A database engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
    Redis,
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
            Self::Redis => "Redis",
        })
    }
}

/// Why the store did not answer, or answered something unusable.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No connection: the engine is down or unreachable, or refused the
    /// login. Retried with backoff by the next call.
    #[error("{engine} store unreachable: {message}")]
    Unreachable { engine: Engine, message: String },
    /// The engine took longer than the configured timeout.
    #[error("{engine} store did not answer within {timeout:?} ({what})")]
    Timeout { engine: Engine, what: &'static str, timeout: Duration },
    /// The engine answered with an error.
    #[error("{engine} store: {what}: {message}")]
    Query { engine: Engine, what: &'static str, message: String },
    /// The engine answered, but with a value tern refuses: too long, too
    /// many, not hex, not a number, not text.
    #[error("{engine} store: {what}: {message}")]
    BadValue { engine: Engine, what: &'static str, message: String },
    /// The database was migrated by a newer tern.
    #[error("{engine} store has tern schema version {found}; this tern knows up to {SCHEMA_VERSION}: upgrade tern")]
    SchemaTooNew { engine: Engine, found: i64 },
    /// A name, realm or value given to the store that it cannot hold.
    #[error("{0}")]
    InvalidInput(String),
}

impl StoreError {
    /// Whether the same call may work later (the engine was unreachable or
    /// slow), as opposed to an answer that will not change by itself.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unreachable { .. } | Self::Timeout { .. })
    }
}

/// A user of a realm, as listed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UserEntry {
    pub realm: String,
    pub name: String,
}

/// A REST secret of a realm, as listed.
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct SecretEntry {
    pub realm: String,
    pub secret: String,
}

impl fmt::Debug for SecretEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretEntry").field("realm", &self.realm).finish_non_exhaustive()
    }
}

/// A realm's peer lists: coturn's `allowed_peer_ip` and `denied_peer_ip`
/// rows of the realm and those of no realm (`''`), which apply to every
/// realm, as coturn applies them. coturn's `IP` and `IP-IP` ranges come as
/// the fewest CIDR blocks that cover them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerRanges {
    pub allowed: Vec<IpNet>,
    pub denied: Vec<IpNet>,
}

/// A realm option of coturn's `turn_realm_option` (turnadmin `-g`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum RealmOption {
    /// Bytes per second an allocation may relay.
    #[value(name = "max-bps")]
    #[serde(rename = "max-bps")]
    MaxBps,
    /// Allocations per user.
    #[value(name = "user-quota")]
    #[serde(rename = "user-quota")]
    UserQuota,
    /// Allocations in the realm.
    #[value(name = "total-quota")]
    #[serde(rename = "total-quota")]
    TotalQuota,
}

impl RealmOption {
    pub const ALL: [Self; 3] = [Self::MaxBps, Self::UserQuota, Self::TotalQuota];

    /// The name coturn stores.
    pub fn name(self) -> &'static str {
        match self {
            Self::MaxBps => "max-bps",
            Self::UserQuota => "user-quota",
            Self::TotalQuota => "total-quota",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|option| option.name() == name)
    }
}

/// A realm's options; `None` where the store sets none (the configuration's
/// value applies).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RealmOptions {
    #[serde(rename = "max-bps")]
    pub max_bps: Option<u64>,
    #[serde(rename = "user-quota")]
    pub user_quota: Option<u64>,
    #[serde(rename = "total-quota")]
    pub total_quota: Option<u64>,
}

impl RealmOptions {
    pub fn get(&self, option: RealmOption) -> Option<u64> {
        match option {
            RealmOption::MaxBps => self.max_bps,
            RealmOption::UserQuota => self.user_quota,
            RealmOption::TotalQuota => self.total_quota,
        }
    }

    fn set(&mut self, option: RealmOption, value: u64) {
        match option {
            RealmOption::MaxBps => self.max_bps = Some(value),
            RealmOption::UserQuota => self.user_quota = Some(value),
            RealmOption::TotalQuota => self.total_quota = Some(value),
        }
    }
}

/// What changed in the store, as precisely as the engine can say.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A user was added, changed or deleted.
    User { realm: String, name: String },
    /// A realm's REST secrets changed.
    Secrets { realm: String },
    /// A realm's peer lists changed; `realm` is empty for the lists of every
    /// realm.
    PeerRanges { realm: String },
    /// A realm's options changed.
    RealmOptions { realm: String },
    /// The origin→realm map changed.
    Origins,
    /// A realm's revocations changed (one was added, changed or removed; one
    /// that merely expires is not reported, since each carries its expiry).
    Revocations { realm: String },
    /// Anything may have changed: the feed (re)connected after a gap in
    /// which it saw nothing, or fell behind. Drop every cached answer.
    All,
}

/// What a [`ChangeFeed`] reports.
#[derive(Debug)]
pub enum FeedEvent {
    Changed(Change),
    /// The feed lost its connection (or never had one) and is reconnecting
    /// with backoff; a [`Change::All`] follows once it is back.
    Lost(StoreError),
}

/// The store's changes, from a task that keeps its own connection and
/// reconnects with backoff. Dropping the feed stops the task.
#[derive(Debug)]
pub struct ChangeFeed {
    events: mpsc::Receiver<FeedEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl ChangeFeed {
    /// The next event; `None` only if the feed's task has ended, which it
    /// does not do on its own.
    pub async fn next(&mut self) -> Option<FeedEvent> {
        self.events.recv().await
    }
}

impl Drop for ChangeFeed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The sending half of a feed, for the engine's watcher.
struct FeedSender {
    events: mpsc::Sender<FeedEvent>,
    /// A change could not be queued: say [`Change::All`] when there is room.
    overflowed: bool,
}

impl FeedSender {
    /// Queues `event`; `false` once the subscriber is gone.
    fn send(&mut self, event: FeedEvent) -> bool {
        if self.overflowed {
            match self.events.try_send(FeedEvent::Changed(Change::All)) {
                Ok(()) => self.overflowed = false,
                Err(mpsc::error::TrySendError::Full(_)) => return true,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
            }
        }
        match self.events.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.overflowed = true;
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn is_closed(&self) -> bool {
        self.events.is_closed()
    }
}

fn spawn_feed<F, Fut>(watch: F) -> ChangeFeed
where
    F: FnOnce(FeedSender) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (events, receiver) = mpsc::channel(FEED_BUFFER);
    let task = tokio::spawn(watch(FeedSender { events, overflowed: false }));
    ChangeFeed { events: receiver, task }
}

/// An engine that pushes its changes over a connection of its own
/// (PostgreSQL's `LISTEN`, Redis pub/sub), rather than being polled.
trait Listener: Clone + Send + Sync + 'static {
    const ENGINE: Engine;

    /// Listens until the connection fails, sending what it hears to `feed`;
    /// `Ok` when the feed's subscriber is gone.
    fn listen(&self, feed: &mut FeedSender) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// The feed of a [`Listener`]: every lost connection is reported and
/// listened on again, with backoff, until the subscriber is gone.
fn listening_feed<L: Listener>(store: L) -> ChangeFeed {
    spawn_feed(move |mut feed| async move {
        let mut backoff = Backoff::new();
        while !feed.is_closed() {
            match store.listen(&mut feed).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%error, "{} change feed lost; reconnecting", L::ENGINE);
                    if !feed.send(FeedEvent::Lost(error)) {
                        return;
                    }
                    backoff.failed();
                    tokio::time::sleep(backoff.remaining()).await;
                }
            }
        }
    })
}

/// One allocation's usage, for billing: who, over what, from where, when,
/// and the traffic each way. Written in batches by [`Store::record_usage`];
/// a SQL row of `tern_usage`, or an entry of the Redis stream `tern/usage`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct UsageRecord {
    /// The tern node that held the allocation; at most [`MAX_NODE`] bytes.
    pub node: String,
    pub realm: String,
    pub username: String,
    /// How the client reached tern.
    #[serde(serialize_with = "transport_name")]
    pub transport: Transport,
    pub client: SocketAddr,
    /// The relayed addresses, one per family: 1 to [`MAX_RELAYED`].
    pub relayed: Vec<SocketAddr>,
    /// Unix seconds the allocation was made and ended.
    pub started: u64,
    pub ended: u64,
    pub packets_to_peer: u64,
    pub bytes_to_peer: u64,
    pub packets_to_client: u64,
    pub bytes_to_client: u64,
}

fn transport_name<S: serde::Serializer>(transport: &Transport, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(transport.as_str())
}

/// The text columns of `tern_usage` (and fields of a `tern/usage` entry),
/// in the order [`UsageRow::text`] holds them, with the bytes each holds.
const USAGE_TEXT: [(&str, usize); 6] = [
    ("node", MAX_NODE),
    ("realm", MAX_REALM),
    ("username", MAX_NAME),
    ("transport", MAX_TRANSPORT_TEXT),
    ("client", MAX_CLIENT_TEXT),
    ("relayed", MAX_RELAYED_TEXT),
];
/// The number columns, in the order [`UsageRow::numbers`] holds them.
const USAGE_NUMBERS: [&str; 6] =
    ["started", "ended", "packets_to_peer", "bytes_to_peer", "packets_to_client", "bytes_to_client"];

/// Every column of a usage record, text first, as SQL lists them.
fn usage_columns() -> String {
    USAGE_TEXT.iter().map(|(name, _)| *name).chain(USAGE_NUMBERS).collect::<Vec<_>>().join(", ")
}

/// What a SQL usage listing selects: [`usage_columns`], each text cut one
/// byte past its bound (`substr`, which both SQL engines have), so an
/// oversized value is refused without being read whole.
fn usage_select() -> String {
    USAGE_TEXT
        .iter()
        .map(|(name, max)| format!("substr({name}, 1, {})", max + 1))
        .chain(USAGE_NUMBERS.iter().map(|name| (*name).to_owned()))
        .collect::<Vec<_>>()
        .join(", ")
}

impl UsageRecord {
    /// Whether every engine can hold this record as it is: names within
    /// their columns and without NUL (which PostgreSQL text cannot hold),
    /// 1 or 2 relayed addresses, `started <= ended`, and every number
    /// within a signed 64-bit column. The usage writer checks each record
    /// when it queues it, so one bad record cannot fail a batch.
    pub fn validate(&self) -> Result<(), StoreError> {
        check_text("node name", &self.node, MAX_NODE)?;
        check_text("realm", &self.realm, MAX_REALM)?;
        check_text("user name", &self.username, MAX_NAME)?;
        if self.relayed.is_empty() || self.relayed.len() > MAX_RELAYED {
            return Err(StoreError::InvalidInput(format!(
                "{} relayed addresses; an allocation has 1 to {MAX_RELAYED}",
                self.relayed.len()
            )));
        }
        check_len("client address", &self.client.to_string(), MAX_CLIENT_TEXT)?;
        check_len("relayed addresses", &self.relayed_text(), MAX_RELAYED_TEXT)?;
        if self.started > self.ended {
            return Err(StoreError::InvalidInput(format!(
                "the allocation ended ({}) before it started ({})",
                self.ended, self.started
            )));
        }
        for (name, value) in USAGE_NUMBERS.iter().zip(self.numbers()) {
            if i64::try_from(value).is_err() {
                return Err(StoreError::InvalidInput(format!("{name} is {value}; at most {}", i64::MAX)));
            }
        }
        Ok(())
    }

    fn numbers(&self) -> [u64; 6] {
        [
            self.started,
            self.ended,
            self.packets_to_peer,
            self.bytes_to_peer,
            self.packets_to_client,
            self.bytes_to_client,
        ]
    }

    /// The relayed addresses as stored: comma-separated.
    fn relayed_text(&self) -> String {
        self.relayed.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",")
    }
}

/// A usage record as the engines hold it: text and signed 64-bit numbers,
/// in the orders of [`USAGE_TEXT`] and [`USAGE_NUMBERS`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct UsageRow {
    text: [String; 6],
    numbers: [i64; 6],
}

impl UsageRow {
    /// The row of a record that [`UsageRecord::validate`] accepted.
    fn of(record: &UsageRecord) -> Self {
        Self {
            text: [
                record.node.clone(),
                record.realm.clone(),
                record.username.clone(),
                record.transport.as_str().to_owned(),
                record.client.to_string(),
                record.relayed_text(),
            ],
            // validate() refused any number above i64::MAX.
            numbers: record.numbers().map(|value| i64::try_from(value).unwrap_or(i64::MAX)),
        }
    }

    /// A row of [`usage_select`]'s columns, read by the engine's
    /// `text(index, column, max)` and `number(index, column)`.
    fn read(
        mut text: impl FnMut(usize, &'static str, usize) -> Result<String, StoreError>,
        mut number: impl FnMut(usize, &'static str) -> Result<i64, StoreError>,
    ) -> Result<Self, StoreError> {
        let mut row = Self { text: Default::default(), numbers: [0; 6] };
        for (index, ((name, max), value)) in USAGE_TEXT.iter().zip(&mut row.text).enumerate() {
            *value = text(index, name, *max)?;
        }
        for (index, (name, value)) in USAGE_NUMBERS.iter().zip(&mut row.numbers).enumerate() {
            *value = number(USAGE_TEXT.len() + index, name)?;
        }
        Ok(row)
    }

    /// The record a stored row stands for, or why it is not one.
    fn record(self, engine: Engine) -> Result<UsageRecord, StoreError> {
        let bad = |what: &'static str, message: String| StoreError::BadValue { engine, what, message };
        for ((name, max), value) in USAGE_TEXT.iter().zip(&self.text) {
            if value.len() > *max {
                return Err(bad(name, format!("a value of more than {max} bytes")));
            }
        }
        let [node, realm, username, transport, client, relayed] = self.text;
        let transport = match transport.as_str() {
            "udp" => Transport::Udp,
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            _ => return Err(bad("transport", format!("{transport:?} is not udp, tcp or tls"))),
        };
        let address = |what: &'static str, text: &str| {
            text.parse::<SocketAddr>().map_err(|_| bad(what, format!("{text:?} is not an address and port")))
        };
        let client = address("client", &client)?;
        let relayed = relayed.split(',').map(|text| address("relayed", text)).collect::<Result<Vec<_>, _>>()?;
        let mut numbers = [0u64; 6];
        for ((number, stored), name) in numbers.iter_mut().zip(self.numbers).zip(USAGE_NUMBERS) {
            *number = u64::try_from(stored).map_err(|_| bad(name, format!("{stored} is negative")))?;
        }
        let [started, ended, packets_to_peer, bytes_to_peer, packets_to_client, bytes_to_client] = numbers;
        let record = UsageRecord {
            node,
            realm,
            username,
            transport,
            client,
            relayed,
            started,
            ended,
            packets_to_peer,
            bytes_to_peer,
            packets_to_client,
            bytes_to_client,
        };
        record.validate().map_err(|e| bad("usage record", e.to_string()))?;
        Ok(record)
    }
}

/// Which usage records [`Store::usage`] returns: those matching every
/// filter given, the newest `limit` of them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UsageFilter {
    pub realm: Option<String>,
    pub username: Option<String>,
    /// Only allocations that ended at or after this (unix seconds).
    pub since: Option<u64>,
    /// At most this many, 1 to [`MAX_USAGE_LIST`].
    pub limit: usize,
}

/// What `tern check` reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreStatus {
    pub engine: Engine,
    /// tern's schema version in the store; 0 before tern first used it.
    pub schema_version: i64,
}

/// Exponential backoff between connection attempts, so a flood of lookups
/// while the engine is down costs it one attempt per backoff step.
#[derive(Debug)]
struct Backoff {
    delay: Duration,
    next_attempt: Option<std::time::Instant>,
}

impl Backoff {
    fn new() -> Self {
        Self { delay: MIN_BACKOFF, next_attempt: None }
    }

    /// Whether an attempt may be made now.
    fn ready(&self) -> bool {
        self.next_attempt.is_none_or(|at| clock::now() >= at)
    }

    /// How long until the next attempt may be made.
    fn remaining(&self) -> Duration {
        self.next_attempt.map_or(Duration::ZERO, |at| at.saturating_duration_since(clock::now()))
    }

    fn failed(&mut self) {
        self.next_attempt = Some(clock::now() + self.delay);
        self.delay = (self.delay * 2).min(MAX_BACKOFF);
    }

    fn succeeded(&mut self) {
        *self = Self::new();
    }
}

/// The store, by engine. Cheap to clone: clones share the connection.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
}

#[derive(Clone, Debug)]
enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PostgresStore),
    Redis(redis::RedisStore),
}

/// Calls the same method on whichever engine this is.
macro_rules! dispatch {
    ($self:ident.$method:ident($($arg:expr),*)) => {
        match &$self.backend {
            Backend::Sqlite(store) => store.$method($($arg),*).await,
            Backend::Postgres(store) => store.$method($($arg),*).await,
            Backend::Redis(store) => store.$method($($arg),*).await,
        }
    };
}

impl Store {
    /// A store for `settings`, not yet connected: the first call connects,
    /// and a store that is down at start is retried with backoff by every
    /// call after. Fails only for settings the engine's client refuses
    /// (an unreadable `tls_ca`).
    pub fn new(settings: &StoreSettings) -> Result<Self, StoreError> {
        let backend = match settings.url.engine() {
            Engine::Sqlite => Backend::Sqlite(sqlite::SqliteStore::new(settings)?),
            Engine::Postgres => Backend::Postgres(postgres::PostgresStore::new(settings)?),
            Engine::Redis => Backend::Redis(redis::RedisStore::new(settings)?),
        };
        Ok(Self { backend })
    }

    /// [`Store::new`], then [`Store::migrate`]: what the server and the
    /// admin commands use.
    pub async fn open(settings: &StoreSettings) -> Result<Self, StoreError> {
        let store = Self::new(settings)?;
        store.migrate().await?;
        Ok(store)
    }

    pub fn engine(&self) -> Engine {
        match &self.backend {
            Backend::Sqlite(_) => Engine::Sqlite,
            Backend::Postgres(_) => Engine::Postgres,
            Backend::Redis(_) => Engine::Redis,
        }
    }

    /// Creates coturn's tables where they are missing (compatible with
    /// coturn's own) and brings tern's to [`SCHEMA_VERSION`], one versioned
    /// migration at a time, safely against other nodes doing the same.
    /// Returns the version now in the store.
    pub async fn migrate(&self) -> Result<i64, StoreError> {
        dispatch!(self.migrate())
    }

    /// Reachable, and at which schema version; changes nothing.
    pub async fn status(&self) -> Result<StoreStatus, StoreError> {
        let schema_version = dispatch!(self.schema_version())?;
        Ok(StoreStatus { engine: self.engine(), schema_version })
    }

    /// The keys of `name` in `realm`, if the store has the user. Keys from
    /// coturn's `hmackey` are MD5 only, as [`UserKeys::from_md5_key`].
    pub async fn user_keys(&self, realm: &str, name: &str) -> Result<Option<UserKeys>, StoreError> {
        check_realm(realm)?;
        check_name(name)?;
        let key = dispatch!(self.user_key(realm, name))?;
        key.map(|hex| parse_key(self.engine(), &hex).map(UserKeys::from_md5_key)).transpose()
    }

    /// The REST secrets of `realm`, sorted (coturn keeps no order).
    pub async fn rest_secrets(&self, realm: &str) -> Result<Vec<Vec<u8>>, StoreError> {
        check_realm(realm)?;
        let mut secrets = dispatch!(self.secrets(realm))?;
        secrets.sort();
        Ok(secrets.into_iter().map(String::into_bytes).collect())
    }

    /// The peer lists that apply to `realm`.
    pub async fn peer_ranges(&self, realm: &str) -> Result<PeerRanges, StoreError> {
        check_realm(realm)?;
        let engine = self.engine();
        let blocks = |ranges: Vec<String>| -> Result<Vec<IpNet>, StoreError> {
            let mut blocks = Vec::new();
            for range in ranges {
                let cidrs = crate::config::coturn::peer_range_cidrs(&range)
                    .map_err(|message| StoreError::BadValue { engine, what: "peer range", message })?;
                blocks.extend(cidrs);
            }
            Ok(blocks)
        };
        let allowed = blocks(dispatch!(self.peer_ranges(PeerList::Allowed, realm))?)?;
        let denied = blocks(dispatch!(self.peer_ranges(PeerList::Denied, realm))?)?;
        Ok(PeerRanges { allowed, denied })
    }

    /// The options the store sets for `realm`.
    pub async fn realm_options(&self, realm: &str) -> Result<RealmOptions, StoreError> {
        check_realm(realm)?;
        let engine = self.engine();
        let mut options = RealmOptions::default();
        for (name, value) in dispatch!(self.realm_options(realm))? {
            // coturn logs unknown options and goes on; so does tern.
            let Some(option) = RealmOption::from_name(&name) else {
                tracing::warn!(realm, option = name, "unknown realm option in the store, ignored");
                continue;
            };
            let number = value.trim().parse::<u64>().map_err(|_| StoreError::BadValue {
                engine,
                what: "realm option",
                message: format!("{name} of realm {realm:?} is {value:?}, not a number"),
            })?;
            options.set(option, number);
        }
        Ok(options)
    }

    /// The realm that `origin` (the ORIGIN attribute) maps to, if any.
    pub async fn origin_realm(&self, origin: &str) -> Result<Option<String>, StoreError> {
        check_len("origin", origin, MAX_ORIGIN)?;
        dispatch!(self.origin_realm(origin))
    }

    /// Subscribes to changes: PostgreSQL `LISTEN`, Redis keyspace events and
    /// tern's own channel, or SQLite's change log polled every second. The
    /// feed's first event is [`Change::All`] once it is connected, since
    /// anything may have changed before.
    pub fn subscribe(&self) -> ChangeFeed {
        match &self.backend {
            Backend::Sqlite(store) => store.subscribe(),
            Backend::Postgres(store) => store.subscribe(),
            Backend::Redis(store) => store.subscribe(),
        }
    }

    /// Writes `records` in one batch: one transaction on SQLite, one
    /// multi-row `INSERT` on PostgreSQL, one `MULTI`/`EXEC` pipeline of
    /// `XADD`s to the stream `tern/usage` on Redis (trimmed to about
    /// [`USAGE_STREAM_LENGTH`] entries). All or nothing: on an error none is
    /// written, and the batch may be sent again (a timeout may have hidden
    /// a write that happened). More than [`MAX_USAGE_BATCH`] records, or one
    /// that [`UsageRecord::validate`] refuses, is [`StoreError::InvalidInput`].
    pub async fn record_usage(&self, records: &[UsageRecord]) -> Result<(), StoreError> {
        if records.len() > MAX_USAGE_BATCH {
            return Err(StoreError::InvalidInput(format!(
                "{} usage records in one batch; at most {MAX_USAGE_BATCH}",
                records.len()
            )));
        }
        for (index, record) in records.iter().enumerate() {
            record.validate().map_err(|e| StoreError::InvalidInput(format!("usage record {index}: {e}")))?;
        }
        if records.is_empty() {
            return Ok(());
        }
        let rows: Vec<UsageRow> = records.iter().map(UsageRow::of).collect();
        dispatch!(self.record_usage(rows))
    }

    /// The newest usage records that `filter` matches, oldest first.
    pub async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRecord>, StoreError> {
        if filter.limit == 0 || filter.limit > MAX_USAGE_LIST {
            return Err(StoreError::InvalidInput(format!(
                "a limit of {} usage records; 1 to {MAX_USAGE_LIST}",
                filter.limit
            )));
        }
        filter.realm.as_deref().map(check_realm).transpose()?;
        filter.username.as_deref().map(check_name).transpose()?;
        if filter.since.is_some_and(|since| i64::try_from(since).is_err()) {
            return Err(StoreError::InvalidInput(format!("since is after {}", i64::MAX)));
        }
        let engine = self.engine();
        let mut rows = dispatch!(self.usage(filter))?;
        rows.reverse();
        rows.into_iter().map(|row| row.record(engine)).collect()
    }

    /// Refuses `username` in `realm` until `expires` (unix seconds, after
    /// now and at most [`MAX_REVOCATION_EXPIRY`]), on every node that
    /// follows the change feed ([`Change::Revocations`]); revoking it again
    /// moves the expiry. A realm holds at most [`MAX_REVOCATIONS`]
    /// unexpired ones; past that a new one is [`StoreError::InvalidInput`].
    pub async fn revoke(&self, realm: &str, username: &str, expires: u64) -> Result<(), StoreError> {
        check_realm(realm)?;
        check_name(username)?;
        let now = clock::unix_secs();
        if expires <= now || expires > MAX_REVOCATION_EXPIRY {
            return Err(StoreError::InvalidInput(format!(
                "a revocation until {expires}: after now ({now}) and at most {MAX_REVOCATION_EXPIRY}"
            )));
        }
        if !dispatch!(self.revoke(realm, username, expires, now))? {
            return Err(StoreError::InvalidInput(format!("realm {realm:?} already has {MAX_REVOCATIONS} revocations")));
        }
        Ok(())
    }

    /// Ends the revocation of `username` in `realm`; whether an unexpired
    /// one was there.
    pub async fn unrevoke(&self, realm: &str, username: &str) -> Result<bool, StoreError> {
        check_realm(realm)?;
        check_name(username)?;
        dispatch!(self.unrevoke(realm, username, clock::unix_secs()))
    }

    /// The unexpired revocations of `realm` and their expiries (unix
    /// seconds), sorted by name; expired ones are deleted on the way.
    pub async fn revocations(&self, realm: &str) -> Result<Vec<(String, u64)>, StoreError> {
        check_realm(realm)?;
        let engine = self.engine();
        let now = clock::unix_secs();
        let mut revocations = Vec::new();
        for (name, expires) in dispatch!(self.revocations(realm, now))? {
            let expires =
                u64::try_from(expires).ok().filter(|expires| *expires <= MAX_REVOCATION_EXPIRY).ok_or_else(|| {
                    StoreError::BadValue {
                        engine,
                        what: "revocation expiry",
                        message: format!("{expires} for {name:?}"),
                    }
                })?;
            if expires > now {
                revocations.push((name, expires));
            }
        }
        revocations.sort();
        Ok(revocations)
    }

    /// Adds `name` to `realm`, or changes its key (turnadmin `-a`).
    pub async fn add_user(&self, realm: &str, name: &str, key: [u8; 16]) -> Result<(), StoreError> {
        check_realm(realm)?;
        check_name(name)?;
        dispatch!(self.add_user(realm, name, &key_hex(&key)))
    }

    /// Deletes `name` from `realm` (turnadmin `-d`); whether it was there.
    pub async fn delete_user(&self, realm: &str, name: &str) -> Result<bool, StoreError> {
        check_realm(realm)?;
        check_name(name)?;
        dispatch!(self.delete_user(realm, name))
    }

    /// The users of `realm`, or of every realm, sorted by realm and name.
    pub async fn list_users(&self, realm: Option<&str>) -> Result<Vec<UserEntry>, StoreError> {
        realm.map(check_realm).transpose()?;
        let mut users = dispatch!(self.list_users(realm))?;
        users.sort_by(|a, b| (&a.realm, &a.name).cmp(&(&b.realm, &b.name)));
        Ok(users)
    }

    /// Adds a REST secret to `realm` (turnadmin `-s`).
    pub async fn add_secret(&self, realm: &str, secret: &str) -> Result<(), StoreError> {
        check_realm(realm)?;
        if secret.is_empty() {
            return Err(StoreError::InvalidInput("the secret is empty".into()));
        }
        check_len("secret", secret, MAX_SECRET)?;
        dispatch!(self.add_secret(realm, secret))
    }

    /// Deletes one REST secret of `realm` (turnadmin `-X`), or all of them
    /// (`--delete-all-secrets`) when `secret` is `None`; how many went.
    pub async fn delete_secrets(&self, realm: &str, secret: Option<&str>) -> Result<u64, StoreError> {
        check_realm(realm)?;
        dispatch!(self.delete_secrets(realm, secret))
    }

    /// The REST secrets of `realm`, or of every realm (turnadmin `-S`).
    pub async fn list_secrets(&self, realm: Option<&str>) -> Result<Vec<SecretEntry>, StoreError> {
        realm.map(check_realm).transpose()?;
        let mut secrets = dispatch!(self.list_secrets(realm))?;
        secrets.sort_by(|a, b| (&a.realm, &a.secret).cmp(&(&b.realm, &b.secret)));
        Ok(secrets)
    }

    /// Sets a realm option (turnadmin `-g`); 0 removes it, as in turnadmin.
    pub async fn set_realm_option(&self, realm: &str, option: RealmOption, value: u64) -> Result<(), StoreError> {
        check_realm(realm)?;
        dispatch!(self.set_realm_option(realm, option.name(), value))
    }

    /// The options of every realm that has any (turnadmin `-G`).
    pub async fn list_realm_options(&self) -> Result<Vec<(String, RealmOptions)>, StoreError> {
        let mut realms: Vec<String> = dispatch!(self.option_realms())?;
        realms.sort();
        realms.dedup();
        let mut listed = Vec::with_capacity(realms.len());
        for realm in realms {
            let options = self.realm_options(&realm).await?;
            listed.push((realm, options));
        }
        Ok(listed)
    }
}

/// coturn's two peer lists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PeerList {
    Allowed,
    Denied,
}

impl PeerList {
    /// coturn's SQL table.
    fn table(self) -> &'static str {
        match self {
            Self::Allowed => "allowed_peer_ip",
            Self::Denied => "denied_peer_ip",
        }
    }

    /// The last part of coturn's Redis key.
    fn redis_suffix(self) -> &'static str {
        match self {
            Self::Allowed => "allowed-peer-ip",
            Self::Denied => "denied-peer-ip",
        }
    }
}

fn check_len(what: &str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.len() > max {
        return Err(StoreError::InvalidInput(format!("the {what} is {} bytes; at most {max}", value.len())));
    }
    Ok(())
}

/// A name of a usage record: not empty, at most `max` bytes, no NUL.
fn check_text(what: &str, value: &str, max: usize) -> Result<(), StoreError> {
    if value.is_empty() {
        return Err(StoreError::InvalidInput(format!("the {what} is empty")));
    }
    if value.contains('\0') {
        return Err(StoreError::InvalidInput(format!("the {what} holds a NUL byte")));
    }
    check_len(what, value, max)
}

fn check_realm(realm: &str) -> Result<(), StoreError> {
    if realm.is_empty() {
        return Err(StoreError::InvalidInput("the realm is empty".into()));
    }
    check_len("realm", realm, MAX_REALM)
}

fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::InvalidInput("the user name is empty".into()));
    }
    check_len("user name", name, MAX_NAME)
}

/// `key` as coturn stores it: lowercase hex.
pub fn key_hex(key: &[u8]) -> String {
    key.iter().map(|b| format!("{b:02x}")).collect()
}

/// The 16 bytes of 32 hex digits (either case), or `None`.
pub fn parse_key_hex(hex: &str) -> Option<[u8; 16]> {
    if hex.len() != KEY_HEX_LEN || !hex.is_ascii() {
        return None;
    }
    let mut key = [0u8; 16];
    for (i, byte) in key.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(key)
}

/// An `hmackey` as the store holds it: 32 hex digits, padded with blanks by
/// PostgreSQL's `char(128)`.
fn parse_key(engine: Engine, stored: &str) -> Result<[u8; 16], StoreError> {
    let hex = stored.trim_end_matches(' ');
    parse_key_hex(hex).ok_or_else(|| StoreError::BadValue {
        engine,
        what: "hmackey",
        message: if hex.len() == KEY_HEX_LEN {
            "not hex".into()
        } else {
            format!("{} characters; an MD5 key is {KEY_HEX_LEN} hex digits", hex.chars().count())
        },
    })
}

/// A bounded text value from the engine: refused when it is longer than
/// `max` bytes.
fn bounded(engine: Engine, what: &'static str, value: String, max: usize) -> Result<String, StoreError> {
    if value.len() > max {
        return Err(StoreError::BadValue { engine, what, message: format!("a value of more than {max} bytes") });
    }
    Ok(value)
}

/// A listing of more than `max` rows.
fn too_many(engine: Engine, what: &'static str, max: usize) -> StoreError {
    StoreError::BadValue { engine, what, message: format!("more than {max} entries") }
}

/// Refuses a listing of more than `max` rows.
fn bounded_rows<T>(engine: Engine, what: &'static str, rows: Vec<T>, max: usize) -> Result<Vec<T>, StoreError> {
    if rows.len() > max {
        return Err(too_many(engine, what, max));
    }
    Ok(rows)
}

/// A connection that is made on first use and made again, with backoff,
/// after it is lost: while the engine is down, calls fail at once with the
/// last error instead of each trying to connect.
#[derive(Debug)]
struct Reconnecting<C> {
    engine: Engine,
    state: tokio::sync::Mutex<ConnectionState<C>>,
}

#[derive(Debug)]
struct ConnectionState<C> {
    connection: Option<C>,
    backoff: Backoff,
    last_error: String,
}

impl<C: Clone> Reconnecting<C> {
    fn new(engine: Engine) -> Self {
        let state = ConnectionState { connection: None, backoff: Backoff::new(), last_error: String::new() };
        Self { engine, state: tokio::sync::Mutex::new(state) }
    }

    /// The connection, if it is `alive`; else a new one from `connect`,
    /// when the backoff allows an attempt.
    async fn get<Fut>(&self, alive: impl Fn(&C) -> bool, connect: impl FnOnce() -> Fut) -> Result<C, StoreError>
    where
        Fut: Future<Output = Result<C, StoreError>>,
    {
        let mut state = self.state.lock().await;
        if let Some(connection) = &state.connection {
            if alive(connection) {
                return Ok(connection.clone());
            }
            state.connection = None;
        }
        if !state.backoff.ready() {
            let message = format!("{} (next attempt in {:?})", state.last_error, state.backoff.remaining());
            return Err(StoreError::Unreachable { engine: self.engine, message });
        }
        match connect().await {
            Ok(connection) => {
                if !state.last_error.is_empty() {
                    tracing::info!(engine = %self.engine, "store reachable again");
                }
                state.backoff.succeeded();
                state.last_error.clear();
                state.connection = Some(connection.clone());
                Ok(connection)
            }
            Err(error) => {
                if state.last_error.is_empty() {
                    tracing::warn!(%error, "store unreachable; retrying with backoff");
                }
                state.backoff.failed();
                state.last_error = match &error {
                    StoreError::Unreachable { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                Err(error)
            }
        }
    }

    /// Forgets the connection after it failed, so the next call reconnects.
    async fn lost(&self) {
        self.state.lock().await.connection = None;
    }
}

/// The TLS client configuration for PostgreSQL: `ca`'s certificates, or
/// the system's roots. A system without roots is no error until a TLS
/// connection is tried (a Unix socket or `sslmode=disable` needs none).
fn tls_config(ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, StoreError> {
    use crate::client::tls::{TlsClientError, trusted_roots};
    let roots = match trusted_roots(ca) {
        Ok(roots) => roots,
        Err(TlsClientError::NoSystemRoots) => rustls::RootCertStore::empty(),
        Err(e) => return Err(StoreError::InvalidInput(format!("store.tls_ca: {e}"))),
    };
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| StoreError::InvalidInput(format!("TLS setup: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// Runs `future` within `timeout`, naming `what` if it does not finish.
async fn within<T>(
    engine: Engine,
    what: &'static str,
    timeout: Duration,
    future: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, future).await.map_err(|_| StoreError::Timeout { engine, what, timeout })?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_32_hex_digits_of_either_case() {
        let key = crate::proto::stun::integrity::long_term_key_md5("gorst", "north.gov", "hero");
        assert_eq!(key_hex(&key), "7da2270ccfa49786e0115366d3a3d14d");
        assert_eq!(parse_key_hex("7DA2270CCFA49786E0115366D3A3D14D"), Some(key));
        assert_eq!(parse_key(Engine::Postgres, &format!("{}{}", key_hex(&key), " ".repeat(96))).ok(), Some(key));
        for bad in ["", "7da2", "7da2270ccfa49786e0115366d3a3d14", "zza2270ccfa49786e0115366d3a3d14d", "é"] {
            assert_eq!(parse_key_hex(bad), None, "{bad:?}");
        }
        let message = parse_key(Engine::Redis, &"ab".repeat(32)).expect_err("a SHA-256 length").to_string();
        assert_eq!(message, "Redis store: hmackey: 64 characters; an MD5 key is 32 hex digits");
        let message = parse_key(Engine::Sqlite, "zza2270ccfa49786e0115366d3a3d14d").expect_err("not hex").to_string();
        assert_eq!(message, "SQLite store: hmackey: not hex");
    }

    #[test]
    fn inputs_are_bounded() {
        assert!(check_name(&"a".repeat(MAX_NAME)).is_ok());
        assert!(check_name(&"a".repeat(MAX_NAME + 1)).is_err());
        assert!(check_name("").is_err());
        assert!(check_realm(&"r".repeat(MAX_REALM + 1)).is_err());
        assert!(bounded(Engine::Redis, "secret", "x".repeat(MAX_SECRET + 1), MAX_SECRET).is_err());
        assert!(bounded_rows(Engine::Redis, "secrets", vec![(); MAX_SECRETS + 1], MAX_SECRETS).is_err());
    }

    fn record() -> UsageRecord {
        UsageRecord {
            node: "tern-1".into(),
            realm: "north.gov".into(),
            username: "1795328581:gorst".into(),
            transport: Transport::Tls,
            client: "[2001:db8::7%3]:50000".parse().expect("literal"),
            relayed: vec![
                "203.0.113.5:49152".parse().expect("literal"),
                "[2001:db8::1]:49153".parse().expect("literal"),
            ],
            started: 1_795_320_000,
            ended: 1_795_320_090,
            packets_to_peer: 10,
            bytes_to_peer: 1200,
            packets_to_client: 11,
            bytes_to_client: 1300,
        }
    }

    #[test]
    fn usage_records_round_trip_through_their_stored_form() {
        let record = record();
        record.validate().expect("valid");
        let row = UsageRow::of(&record);
        assert_eq!(row.text[5], "203.0.113.5:49152,[2001:db8::1]:49153");
        assert_eq!(row.text[3], "tls");
        assert_eq!(row.clone().record(Engine::Sqlite).expect("a record"), record);
        // The widest addresses fit their columns.
        let widest = UsageRecord {
            client: "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff%4294967295]:65535".parse().expect("literal"),
            relayed: vec![
                "255.255.255.255:65535".parse().expect("literal"),
                "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535".parse().expect("literal"),
            ],
            ..record
        };
        widest.validate().expect("the widest addresses fit");
    }

    #[test]
    fn usage_records_that_no_engine_can_hold_are_refused() {
        let refused = |change: fn(&mut UsageRecord), wanted: &str| {
            let mut record = record();
            change(&mut record);
            let error = record.validate().expect_err(wanted).to_string();
            assert!(error.contains(wanted), "{error} lacks {wanted:?}");
        };
        refused(|r| r.node.clear(), "the node name is empty");
        refused(|r| r.node = "n".repeat(MAX_NODE + 1), "node name is 256 bytes; at most 255");
        refused(|r| r.realm = "r".repeat(MAX_REALM + 1), "realm is 128 bytes");
        refused(|r| r.username = "u".repeat(MAX_NAME + 1), "user name is 514 bytes");
        refused(|r| r.username = "a\0b".into(), "holds a NUL byte");
        refused(|r| r.relayed.clear(), "0 relayed addresses");
        refused(|r| r.relayed = vec![r.relayed[0]; 3], "3 relayed addresses");
        refused(|r| r.started = r.ended + 1, "ended (1795320090) before it started");
        refused(|r| r.bytes_to_client = u64::MAX, "bytes_to_client is 18446744073709551615");
    }

    #[test]
    fn stored_usage_that_is_not_a_record_is_refused() {
        let stored = UsageRow::of(&record());
        let refused = |change: fn(&mut UsageRow), wanted: &str| {
            let mut row = stored.clone();
            change(&mut row);
            let error = row.record(Engine::Postgres).expect_err(wanted).to_string();
            assert!(error.starts_with("PostgreSQL store: ") && error.contains(wanted), "{error} lacks {wanted:?}");
        };
        refused(|r| r.text[3] = "sctp".into(), "\"sctp\" is not udp, tcp or tls");
        refused(|r| r.text[4] = "nowhere".into(), "\"nowhere\" is not an address and port");
        refused(|r| r.text[5] = "1.2.3.4:5,".into(), "\"\" is not an address and port");
        refused(|r| r.text[0] = "n".repeat(300), "node: a value of more than 255 bytes");
        refused(|r| r.numbers[3] = -1, "bytes_to_peer: -1 is negative");
        refused(|r| r.numbers[0] = i64::MAX, "before it started");
    }

    #[test]
    fn usage_columns_name_every_field_once() {
        assert_eq!(
            usage_columns(),
            "node, realm, username, transport, client, relayed, started, ended, packets_to_peer, bytes_to_peer, \
             packets_to_client, bytes_to_client"
        );
        assert!(usage_select().starts_with("substr(node, 1, 256), substr(realm, 1, 128), "), "{}", usage_select());
        let json = serde_json::to_value(record()).expect("JSON");
        assert_eq!(json["transport"], "tls");
        assert_eq!(json["relayed"], serde_json::json!(["203.0.113.5:49152", "[2001:db8::1]:49153"]));
        let fields: Vec<&str> = json.as_object().expect("an object").keys().map(String::as_str).collect();
        let columns = usage_columns();
        assert_eq!(fields, columns.split(", ").collect::<Vec<_>>());
    }

    #[test]
    fn backoff_doubles_up_to_its_ceiling_and_resets() {
        let mut backoff = Backoff::new();
        assert!(backoff.ready());
        for _ in 0..10 {
            backoff.failed();
        }
        assert!(!backoff.ready());
        assert_eq!(backoff.delay, MAX_BACKOFF);
        assert!(backoff.remaining() <= MAX_BACKOFF);
        backoff.succeeded();
        assert!(backoff.ready());
        assert_eq!(backoff.delay, MIN_BACKOFF);
    }

    #[tokio::test]
    async fn a_full_feed_says_all_once_there_is_room() {
        let (events, mut receiver) = mpsc::channel(1);
        let mut sender = FeedSender { events, overflowed: false };
        assert!(sender.send(FeedEvent::Changed(Change::Origins)));
        assert!(sender.send(FeedEvent::Changed(Change::Secrets { realm: "r".into() })));
        assert!(sender.overflowed);
        assert!(matches!(receiver.recv().await, Some(FeedEvent::Changed(Change::Origins))));
        assert!(sender.send(FeedEvent::Changed(Change::Origins)));
        assert!(matches!(receiver.recv().await, Some(FeedEvent::Changed(Change::All))));
        drop(receiver);
        assert!(!sender.send(FeedEvent::Changed(Change::Origins)));
    }
}
