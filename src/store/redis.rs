//! Redis, through redis-rs on tokio: coturn's key layout
//! (`turn/realm/<realm>/user/<name>/key`, `…/secret`, `…/allowed-peer-ip`,
//! `…/denied-peer-ip`, `…/max-bps`, `…/user-quota`, `…/total-quota`,
//! `turn/origin/<origin>`) over one multiplexed connection, reconnected with
//! backoff when lost; TLS with rustls for `rediss://`. Values are read by
//! small Lua scripts that check their size on the server first, so a huge
//! value or set is refused without being sent.
//!
//! The change feed subscribes to keyspace events of coturn's keys (turned
//! on by tern where the server allows `CONFIG SET`; otherwise only tern's own
//! changes are seen, and a warning says so) and to tern's own channel
//! [`CHANNEL`], which tern's writes publish to.
//!
//! tern's own keys: revocations in a sorted set per realm,
//! `tern/realm/<realm>/revoked` (member the user name, score the expiry in
//! unix seconds; the key expires with its last member, and expired members
//! are removed whenever the set is read or written), and usage records in
//! the stream `tern/usage` (one entry per allocation, fields named as the
//! SQL columns of `tern_usage`, trimmed to about
//! [`super::USAGE_STREAM_LENGTH`] entries), which billing reads with
//! `XREAD` or `XREADGROUP`.
//!
//! Realms may not contain `/` here: the key layout could not tell
//! `turn/realm/a/user/b/user/c/key` apart.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Script, Value};

use super::schema::{self, VERSION};
use super::{
    Change, ChangeFeed, Engine, FeedEvent, MAX_LIST, MAX_NAME, MAX_OPTION_VALUE, MAX_RANGE, MAX_RANGES, MAX_REALM,
    MAX_REVOCATIONS, MAX_SECRET, MAX_SECRETS, PeerList, RealmOption, Reconnecting, SecretEntry, StoreError,
    StoreSettings, USAGE_NUMBERS, USAGE_STREAM_LENGTH, USAGE_TEXT, UsageFilter, UsageRow, UserEntry, bounded, too_many,
    within,
};

const ENGINE: Engine = Engine::Redis;
/// tern's change channel: tern's writes publish what they changed here.
const CHANNEL: &str = "tern/changes";
/// tern's schema version.
const VERSION_KEY: &str = "tern/schema-version";
/// How often the feed pings its connection.
const FEED_PING: Duration = Duration::from_secs(3);
/// Keys one SCAN step asks for.
const SCAN_COUNT: u64 = 1000;
/// Longest key a listing accepts.
const MAX_KEY: usize = 1024;
/// What a key's value may be: the longest of the bounded values.
const MAX_KEY_TEXT: usize = 128;
/// The stream of usage records.
const USAGE_STREAM: &str = "tern/usage";
/// Stream entries one step of a usage listing looks at.
const USAGE_SCAN_COUNT: usize = 1000;
/// Steps a usage listing takes at most: the whole stream, even trimmed
/// late, and no further.
const USAGE_SCAN_STEPS: usize = 2 * USAGE_STREAM_LENGTH / USAGE_SCAN_COUNT;
/// The longest value of a usage entry: its longest column.
const MAX_USAGE_VALUE: usize = MAX_NAME;
/// How far the clock of the node that wrote a record may be ahead of
/// Redis's, whose clock stamps the entry's ID: a listing `since` a time
/// stops at entries stamped this long before it.
const USAGE_CLOCK_SKEW: u64 = 3600;

/// One step of a usage listing, newest first: the entries of the stream
/// KEYS[1] from ARGV[1] (`+`, or an ID) back, at most ARGV[2]
/// of them, that match realm ARGV[4], user ARGV[5] and ended at or after
/// ARGV[6] (each empty for any), or an error reply naming a value longer
/// than ARGV[3] bytes. Replies {last ID looked at, entries looked at, the
/// entries that match}.
const USAGE_STEP: &str = r"
local entries = redis.call('XREVRANGE', KEYS[1], ARGV[1], '-', 'COUNT', tonumber(ARGV[2]))
local longest, since = tonumber(ARGV[3]), tonumber(ARGV[6])
local matched = {}
for _, entry in ipairs(entries) do
  local record = {}
  local fields = entry[2]
  for i = 1, #fields, 2 do
    if #fields[i + 1] > longest then
      return redis.error_reply('tern: ' .. fields[i] .. ' of entry ' .. entry[1] .. ' is ' .. #fields[i + 1] ..
        ' bytes; at most ' .. longest)
    end
    record[fields[i]] = fields[i + 1]
  end
  local ended = tonumber(record.ended or '')
  if (ARGV[4] == '' or record.realm == ARGV[4]) and (ARGV[5] == '' or record.username == ARGV[5])
    and (since == nil or ended == nil or ended >= since) then
    matched[#matched + 1] = entry
  end
end
local last = entries[#entries]
return {last and last[1] or '', #entries, matched}
";

/// Revokes ARGV[1] in the realm's set KEYS[1] until ARGV[2], after
/// removing what expired by ARGV[3]; 0 when the set already holds ARGV[4]
/// others. The key expires with its last member.
const REVOKE: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[4]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], last[2])
return 1
";

/// Removes ARGV[1] from the realm's set KEYS[1], which then expires with
/// its new last member; 1 if ARGV[1] was revoked past ARGV[2] (now).
const UNREVOKE: &str = r"
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[1], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then redis.call('EXPIREAT', KEYS[1], last[2]) end
if expires and tonumber(expires) > tonumber(ARGV[2]) then return 1 end
return 0
";

/// The members and scores of the realm's set KEYS[1] after removing what
/// expired by ARGV[1], or an error reply when there are more than ARGV[2]
/// or one is longer than ARGV[3] bytes.
const REVOCATIONS: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local count = redis.call('ZCARD', KEYS[1])
if count > tonumber(ARGV[2]) then
  return redis.error_reply('tern: ' .. count .. ' revocations; at most ' .. ARGV[2])
end
local all = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
for i = 1, #all, 2 do
  if #all[i] > tonumber(ARGV[3]) then
    return redis.error_reply('tern: a revoked name of ' .. #all[i] .. ' bytes; at most ' .. ARGV[3])
  end
end
return all
";

/// `GET` of each key in KEYS, or an error reply naming the first value
/// longer than ARGV[1] bytes; missing keys are nil.
const BOUNDED_GET: &str = r"
local max = tonumber(ARGV[1])
local values = {}
for i, key in ipairs(KEYS) do
  local length = redis.call('STRLEN', key)
  if length > max then
    return redis.error_reply('tern: the value of ' .. key .. ' is ' .. length .. ' bytes; at most ' .. max)
  end
  values[i] = redis.call('GET', key)
end
return values
";

/// The members of the sets in KEYS, or an error reply when there are more
/// than ARGV[1] in all or one is longer than ARGV[2] bytes.
const BOUNDED_MEMBERS: &str = r"
local max, longest = tonumber(ARGV[1]), tonumber(ARGV[2])
local count = 0
for _, key in ipairs(KEYS) do count = count + redis.call('SCARD', key) end
if count > max then
  return redis.error_reply('tern: ' .. count .. ' members; at most ' .. max)
end
local members = {}
for _, key in ipairs(KEYS) do
  for _, member in ipairs(redis.call('SMEMBERS', key)) do
    if #member > longest then
      return redis.error_reply('tern: a member of ' .. key .. ' is ' .. #member .. ' bytes; at most ' .. longest)
    end
    members[#members + 1] = member
  end
end
return members
";

/// Sets KEYS[1] to ARGV[1] unless it holds more; the version now, negated
/// when it is newer than ARGV[1].
const MIGRATE: &str = r"
local current = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local target = tonumber(ARGV[1])
if current > target then return -current end
if current < target then redis.call('SET', KEYS[1], target) end
return target
";

#[derive(Clone, Debug)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    timeout: Duration,
    db: i64,
    connection: Reconnecting<MultiplexedConnection>,
    get: Script,
    members: Script,
    migrate: Script,
    usage_step: Script,
    revocations: Script,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("db", &self.db).finish_non_exhaustive()
    }
}

/// A redis-rs error, typed: lost or refused connections and failed logins
/// are unreachable, anything else the server said is a query error.
fn error(what: &'static str) -> impl Fn(RedisError) -> StoreError {
    move |e| {
        if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() {
            StoreError::Unreachable { engine: ENGINE, message: format!("{what}: {e}") }
        } else if e.is_timeout() {
            StoreError::Unreachable { engine: ENGINE, message: format!("{what}: timed out") }
        } else if e.kind() == redis::ErrorKind::AuthenticationFailed || matches!(e.code(), Some("NOAUTH" | "WRONGPASS"))
        {
            StoreError::Unreachable { engine: ENGINE, message: format!("login refused: {e}") }
        } else {
            let message = e.detail().map_or_else(|| e.to_string(), str::to_owned);
            match message.strip_prefix("tern: ") {
                Some(bound) => StoreError::BadValue { engine: ENGINE, what, message: bound.to_owned() },
                None => StoreError::Query { engine: ENGINE, what, message },
            }
        }
    }
}

/// A reply value as text of at most `max` bytes (`None` for nil).
fn text(value: &Value, what: &'static str, max: usize) -> Result<Option<String>, StoreError> {
    let bad = |message: &str| StoreError::BadValue { engine: ENGINE, what, message: message.to_owned() };
    let bytes = match value {
        Value::Nil => return Ok(None),
        Value::BulkString(bytes) => bytes.as_slice(),
        Value::SimpleString(text) => text.as_bytes(),
        Value::Int(number) => return Ok(Some(number.to_string())),
        _ => return Err(bad("not a string")),
    };
    let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
    bounded(ENGINE, what, text.to_owned(), max).map(Some)
}

/// The array of a script's reply.
fn array(value: Value, what: &'static str) -> Result<Vec<Value>, StoreError> {
    match value {
        Value::Array(values) => Ok(values),
        _ => Err(StoreError::BadValue { engine: ENGINE, what, message: "not an array".into() }),
    }
}

/// `text` for a SCAN MATCH pattern: glob characters stand for themselves.
fn escape_glob(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}

fn realm_key(realm: &str, rest: &str) -> String {
    format!("turn/realm/{realm}/{rest}")
}

fn user_key(realm: &str, name: &str) -> String {
    realm_key(realm, &format!("user/{name}/key"))
}

/// The sorted set of a realm's revocations.
fn revoked_key(realm: &str) -> String {
    format!("tern/realm/{realm}/revoked")
}

/// A number as Redis replies it (an integer, or a score as text).
fn number(value: &Value, what: &'static str) -> Result<i64, StoreError> {
    let text = text(value, what, 32)?.unwrap_or_default();
    text.parse().map_err(|_| StoreError::BadValue {
        engine: ENGINE,
        what,
        message: format!("{text:?} is not an integer"),
    })
}

/// A usage row of a stream entry's fields (name, value, name, value...).
fn usage_row(id: &str, fields: &[Value]) -> Result<UsageRow, StoreError> {
    let what = "usage entry";
    let mut text_values: [Option<String>; 6] = Default::default();
    let mut numbers: [Option<i64>; 6] = Default::default();
    for pair in fields.chunks(2) {
        let [name, value] = pair else { break };
        let name = text(name, what, 64)?.unwrap_or_default();
        if let Some(index) = USAGE_TEXT.iter().position(|(column, _)| *column == name) {
            text_values[index] = text(value, what, MAX_USAGE_VALUE)?;
        } else if let Some(index) = USAGE_NUMBERS.iter().position(|column| *column == name) {
            numbers[index] = Some(number(value, what)?);
        }
    }
    let missing =
        |column: &str| StoreError::BadValue { engine: ENGINE, what, message: format!("{id} has no {column}") };
    UsageRow::read(
        |index, column, _| text_values[index].take().ok_or_else(|| missing(column)),
        |index, column| numbers[index - USAGE_TEXT.len()].ok_or_else(|| missing(column)),
    )
}

/// The unix seconds of a stream entry's ID (`milliseconds-sequence`).
fn entry_seconds(id: &str) -> Option<u64> {
    Some(id.split_once('-')?.0.parse::<u64>().ok()? / 1000)
}

/// The greatest ID before `id`, which an inclusive range ends at (an
/// exclusive one, `(ID`, needs Redis 6.2); `None` before the first.
fn entry_before(id: &str) -> Option<String> {
    let (milliseconds, sequence) = id.split_once('-')?;
    let (milliseconds, sequence): (u64, u64) = (milliseconds.parse().ok()?, sequence.parse().ok()?);
    match sequence.checked_sub(1) {
        Some(sequence) => Some(format!("{milliseconds}-{sequence}")),
        None => Some(format!("{}-{}", milliseconds.checked_sub(1)?, u64::MAX)),
    }
}

/// What a coturn key stands for: the change when it changes.
fn key_change(key: &str) -> Option<Change> {
    if let Some(origin) = key.strip_prefix("turn/origin/") {
        return (!origin.is_empty()).then_some(Change::Origins);
    }
    let rest = key.strip_prefix("turn/realm/")?;
    if let Some((realm, user)) = rest.strip_suffix("/key").and_then(|r| r.split_once("/user/")) {
        return Some(Change::User { realm: realm.to_owned(), name: user.to_owned() });
    }
    let (realm, what) = rest.rsplit_once('/')?;
    let realm = realm.to_owned();
    Some(match what {
        "secret" => Change::Secrets { realm },
        "allowed-peer-ip" | "denied-peer-ip" => Change::PeerRanges { realm },
        _ if RealmOption::from_name(what).is_some() => Change::RealmOptions { realm },
        _ => return None,
    })
}

/// The realm and user of a `turn/realm/<realm>/user/<name>/key` key.
fn user_of_key(key: &str) -> Option<UserEntry> {
    let rest = key.strip_prefix("turn/realm/")?.strip_suffix("/key")?;
    let (realm, name) = rest.split_once("/user/")?;
    Some(UserEntry { realm: realm.to_owned(), name: name.to_owned() })
}

fn check_realm(realm: &str) -> Result<(), StoreError> {
    if realm.contains('/') {
        return Err(StoreError::InvalidInput(format!(
            "realm {realm:?} has a '/', which coturn's Redis keys cannot hold unambiguously"
        )));
    }
    Ok(())
}

impl RedisStore {
    pub fn new(settings: &StoreSettings) -> Result<Self, StoreError> {
        let mut info = settings.url.redis_info().map_err(StoreError::InvalidInput)?;
        if let Some(password) = &settings.password {
            let redis = info.redis_settings().clone().set_password(password.expose());
            info = info.set_redis_settings(redis);
        }
        let db = info.redis_settings().db();
        let client = match &settings.tls_ca {
            Some(path) => {
                let root_cert = std::fs::read(path).map_err(|e| {
                    StoreError::InvalidInput(format!("store.tls_ca: cannot read {}: {e}", path.display()))
                })?;
                Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(root_cert) })
            }
            None => Client::open(info),
        }
        .map_err(|e| StoreError::InvalidInput(format!("Redis client: {e}")))?;
        let inner = Inner {
            client,
            timeout: settings.timeout,
            db,
            connection: Reconnecting::new(ENGINE),
            get: Script::new(BOUNDED_GET),
            members: Script::new(BOUNDED_MEMBERS),
            migrate: Script::new(MIGRATE),
            usage_step: Script::new(USAGE_STEP),
            revocations: Script::new(REVOCATIONS),
        };
        Ok(Self { inner: Arc::new(inner) })
    }

    async fn connection(&self) -> Result<MultiplexedConnection, StoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.inner.timeout))
            .set_response_timeout(Some(self.inner.timeout));
        self.inner
            .connection
            .get(
                |_| true,
                || async {
                    self.inner
                        .client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await
                        .map_err(error("connecting"))
                },
            )
            .await
    }

    /// Runs `command` over the connection within the timeout; a lost
    /// connection is made again by the next call.
    async fn run<T, Fut>(
        &self,
        what: &'static str,
        command: impl FnOnce(MultiplexedConnection) -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let connection = self.connection().await?;
        let result =
            within(ENGINE, what, self.inner.timeout, async { command(connection).await.map_err(error(what)) }).await;
        if result.as_ref().is_err_and(StoreError::is_transient) {
            self.inner.connection.lost().await;
        }
        result
    }

    /// The values of `keys`, each at most `max` bytes.
    async fn get(&self, what: &'static str, keys: &[String], max: usize) -> Result<Vec<Option<String>>, StoreError> {
        let reply: Value = self
            .run(what, |mut connection| async move {
                let mut invocation = self.inner.get.prepare_invoke();
                for key in keys {
                    invocation.key(key);
                }
                invocation.arg(max).invoke_async(&mut connection).await
            })
            .await?;
        array(reply, what)?.iter().map(|value| text(value, what, max)).collect()
    }

    /// The members of the sets `keys`, at most `count` in all, each at most
    /// `max` bytes.
    async fn members(
        &self,
        what: &'static str,
        keys: &[String],
        count: usize,
        max: usize,
    ) -> Result<Vec<String>, StoreError> {
        let reply: Value = self
            .run(what, |mut connection| async move {
                let mut invocation = self.inner.members.prepare_invoke();
                for key in keys {
                    invocation.key(key);
                }
                invocation.arg(count).arg(max).invoke_async(&mut connection).await
            })
            .await?;
        let mut members = Vec::new();
        for value in array(reply, what)? {
            members.extend(text(&value, what, max)?);
        }
        Ok(members)
    }

    /// Keys matching `pattern`, at most [`MAX_LIST`].
    async fn scan(&self, what: &'static str, pattern: &str) -> Result<Vec<String>, StoreError> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        // Every SCAN step returns its cursor; MAX_LIST / SCAN_COUNT steps of
        // matches, plus as many of none, bound a full iteration.
        for _ in 0..(2 * MAX_LIST as u64 / SCAN_COUNT + 1024) {
            let (next, batch): (u64, Vec<Vec<u8>>) = self
                .run(what, |mut connection| async move {
                    redis::cmd("SCAN")
                        .arg(cursor)
                        .arg("MATCH")
                        .arg(pattern)
                        .arg("COUNT")
                        .arg(SCAN_COUNT)
                        .query_async(&mut connection)
                        .await
                })
                .await?;
            for key in batch {
                if key.len() <= MAX_KEY
                    && let Ok(key) = String::from_utf8(key)
                {
                    keys.push(key);
                }
            }
            if keys.len() > MAX_LIST {
                return Err(too_many(ENGINE, what, MAX_LIST));
            }
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
        Err(too_many(ENGINE, what, MAX_LIST))
    }

    /// Runs a write and publishes what it changed on [`CHANNEL`].
    async fn write<T: redis::FromRedisValue>(
        &self,
        what: &'static str,
        command: redis::Cmd,
        source: &str,
        realm: &str,
        name: Option<&str>,
    ) -> Result<T, StoreError> {
        let notice = serde_json::json!({ "source": source, "realm": realm, "name": name }).to_string();
        let (result, _subscribers): (T, i64) = self
            .run(what, |mut connection| async move {
                redis::pipe()
                    .add_command(command)
                    .cmd("PUBLISH")
                    .arg(CHANNEL)
                    .arg(notice)
                    .query_async(&mut connection)
                    .await
            })
            .await?;
        Ok(result)
    }

    pub async fn migrate(&self) -> Result<i64, StoreError> {
        let version: i64 = self
            .run("migrating the schema", |mut connection| async move {
                self.inner.migrate.key(VERSION_KEY).arg(VERSION).invoke_async(&mut connection).await
            })
            .await?;
        if version < 0 {
            return Err(StoreError::SchemaTooNew { engine: ENGINE, found: -version });
        }
        Ok(version)
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let what = "reading the schema version";
        let values = self.get(what, &[VERSION_KEY.to_owned()], 32).await?;
        match values.into_iter().next().flatten() {
            None => Ok(0),
            Some(text) => text.parse().map_err(|_| StoreError::BadValue {
                engine: ENGINE,
                what,
                message: format!("{text:?} is not a number"),
            }),
        }
    }

    pub async fn user_key(&self, realm: &str, name: &str) -> Result<Option<String>, StoreError> {
        check_realm(realm)?;
        let values = self.get("hmackey", &[user_key(realm, name)], MAX_KEY_TEXT).await?;
        Ok(values.into_iter().next().flatten())
    }

    pub async fn secrets(&self, realm: &str) -> Result<Vec<String>, StoreError> {
        check_realm(realm)?;
        let secrets = self.members("REST secrets", &[realm_key(realm, "secret")], MAX_SECRETS, MAX_SECRET).await?;
        Ok(secrets.into_iter().filter(|secret| !secret.is_empty()).collect())
    }

    pub async fn peer_ranges(&self, list: PeerList, realm: &str) -> Result<Vec<String>, StoreError> {
        check_realm(realm)?;
        let keys = [realm_key(realm, list.redis_suffix()), realm_key("", list.redis_suffix())];
        self.members("peer ranges", &keys, MAX_RANGES, MAX_RANGE).await
    }

    pub async fn realm_options(&self, realm: &str) -> Result<Vec<(String, String)>, StoreError> {
        check_realm(realm)?;
        let keys: Vec<String> = RealmOption::ALL.iter().map(|option| realm_key(realm, option.name())).collect();
        let values = self.get("realm options", &keys, MAX_OPTION_VALUE).await?;
        Ok(RealmOption::ALL
            .iter()
            .zip(values)
            .filter_map(|(option, value)| Some((option.name().to_owned(), value?)))
            .collect())
    }

    pub async fn origin_realm(&self, origin: &str) -> Result<Option<String>, StoreError> {
        let values = self.get("origin realm", &[format!("turn/origin/{origin}")], MAX_REALM).await?;
        Ok(values.into_iter().next().flatten().filter(|realm| !realm.is_empty()))
    }

    pub async fn option_realms(&self) -> Result<Vec<String>, StoreError> {
        let mut realms = Vec::new();
        for option in RealmOption::ALL {
            for key in self.scan("listing realm options", &format!("turn/realm/*/{}", option.name())).await? {
                if let Some(Change::RealmOptions { realm }) = key_change(&key)
                    && !realm.is_empty()
                    && realm.len() <= MAX_REALM
                {
                    realms.push(realm);
                }
            }
        }
        Ok(realms)
    }

    pub async fn add_user(&self, realm: &str, name: &str, key: &str) -> Result<(), StoreError> {
        check_realm(realm)?;
        let command = redis::cmd("SET").arg(user_key(realm, name)).arg(key).clone();
        self.write::<()>("adding a user", command, "turnusers_lt", realm, Some(name)).await
    }

    pub async fn delete_user(&self, realm: &str, name: &str) -> Result<bool, StoreError> {
        check_realm(realm)?;
        let command = redis::cmd("DEL").arg(user_key(realm, name)).clone();
        let deleted: i64 = self.write("deleting a user", command, "turnusers_lt", realm, Some(name)).await?;
        Ok(deleted > 0)
    }

    pub async fn list_users(&self, realm: Option<&str>) -> Result<Vec<UserEntry>, StoreError> {
        let pattern = match realm {
            Some(realm) => {
                check_realm(realm)?;
                format!("turn/realm/{}/user/*/key", escape_glob(realm))
            }
            None => "turn/realm/*/user/*/key".to_owned(),
        };
        let keys = self.scan("listing users", &pattern).await?;
        Ok(keys
            .iter()
            .filter_map(|key| user_of_key(key))
            .filter(|user| user.realm.len() <= MAX_REALM && user.name.len() <= MAX_NAME && !user.realm.contains('/'))
            .collect())
    }

    pub async fn add_secret(&self, realm: &str, secret: &str) -> Result<(), StoreError> {
        check_realm(realm)?;
        let command = redis::cmd("SADD").arg(realm_key(realm, "secret")).arg(secret).clone();
        self.write::<i64>("adding a secret", command, "turn_secret", realm, None).await.map(drop)
    }

    pub async fn delete_secrets(&self, realm: &str, secret: Option<&str>) -> Result<u64, StoreError> {
        check_realm(realm)?;
        let key = realm_key(realm, "secret");
        let what = "deleting secrets";
        let deleted: u64 = match secret {
            Some(secret) => {
                let command = redis::cmd("SREM").arg(&key).arg(secret).clone();
                self.write(what, command, "turn_secret", realm, None).await?
            }
            None => {
                let scard = redis::cmd("SCARD").arg(&key).clone();
                let count: u64 = self.run(what, |mut c| async move { scard.query_async(&mut c).await }).await?;
                let command = redis::cmd("DEL").arg(&key).clone();
                self.write::<u64>(what, command, "turn_secret", realm, None).await?;
                count
            }
        };
        Ok(deleted)
    }

    pub async fn list_secrets(&self, realm: Option<&str>) -> Result<Vec<SecretEntry>, StoreError> {
        let pattern = match realm {
            Some(realm) => {
                check_realm(realm)?;
                format!("turn/realm/{}/secret", escape_glob(realm))
            }
            None => "turn/realm/*/secret".to_owned(),
        };
        let mut listed = Vec::new();
        for key in self.scan("listing secrets", &pattern).await? {
            let Some(Change::Secrets { realm }) = key_change(&key) else { continue };
            for secret in self.members("REST secrets", &[key], MAX_SECRETS, MAX_SECRET).await? {
                listed.push(SecretEntry { realm: realm.clone(), secret });
            }
            if listed.len() > MAX_LIST {
                return Err(too_many(ENGINE, "secrets", MAX_LIST));
            }
        }
        Ok(listed)
    }

    pub async fn set_realm_option(&self, realm: &str, option: &'static str, value: u64) -> Result<(), StoreError> {
        check_realm(realm)?;
        let key = realm_key(realm, option);
        let command =
            if value == 0 { redis::cmd("DEL").arg(key).clone() } else { redis::cmd("SET").arg(key).arg(value).clone() };
        self.write::<Value>("setting a realm option", command, "turn_realm_option", realm, None).await.map(drop)
    }

    pub async fn record_usage(&self, rows: Vec<UsageRow>) -> Result<(), StoreError> {
        let mut pipe = redis::pipe();
        pipe.atomic();
        for row in &rows {
            pipe.cmd("XADD").arg(USAGE_STREAM).arg("MAXLEN").arg("~").arg(USAGE_STREAM_LENGTH).arg("*");
            for ((name, _), value) in USAGE_TEXT.iter().zip(&row.text) {
                pipe.arg(name).arg(value);
            }
            for (name, value) in USAGE_NUMBERS.iter().zip(row.numbers) {
                pipe.arg(name).arg(value);
            }
            pipe.ignore();
        }
        self.run("recording usage", |mut connection| async move { pipe.query_async::<()>(&mut connection).await }).await
    }

    /// The newest entries `filter` matches, newest first, among the
    /// newest [`USAGE_SCAN_STEPS`] × [`USAGE_SCAN_COUNT`] of the stream.
    pub async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError> {
        let what = "reading usage";
        let since = filter.since.map(|since| since.to_string()).unwrap_or_default();
        let mut start = "+".to_owned();
        let mut found = Vec::new();
        for _ in 0..USAGE_SCAN_STEPS {
            let mut step = self.inner.usage_step.key(USAGE_STREAM);
            step.arg(&start)
                .arg(USAGE_SCAN_COUNT)
                .arg(MAX_USAGE_VALUE)
                .arg(filter.realm.as_deref().unwrap_or(""))
                .arg(filter.username.as_deref().unwrap_or(""))
                .arg(&since);
            let reply: Value =
                self.run(what, |mut connection| async move { step.invoke_async(&mut connection).await }).await?;
            let [last, looked_at, matched]: [Value; 3] = array(reply, what)?
                .try_into()
                .map_err(|_| StoreError::BadValue { engine: ENGINE, what, message: "not 3 values".into() })?;
            for entry in array(matched, what)? {
                let [id, fields]: [Value; 2] = array(entry, what)?.try_into().map_err(|_| StoreError::BadValue {
                    engine: ENGINE,
                    what,
                    message: "not an entry".into(),
                })?;
                let id = text(&id, what, 64)?.unwrap_or_default();
                found.push(usage_row(&id, &array(fields, what)?)?);
                if found.len() == filter.limit {
                    return Ok(found);
                }
            }
            let last = text(&last, what, 64)?.unwrap_or_default();
            let past_since = filter.since.is_some_and(|since| {
                entry_seconds(&last).is_some_and(|stamped| stamped.saturating_add(USAGE_CLOCK_SKEW) < since)
            });
            let Some(before) = entry_before(&last) else { break };
            if number(&looked_at, what)? < USAGE_SCAN_COUNT as i64 || past_since {
                break;
            }
            start = before;
        }
        Ok(found)
    }

    /// `false` when the realm is full.
    pub async fn revoke(&self, realm: &str, username: &str, expires: u64, now: u64) -> Result<bool, StoreError> {
        check_realm(realm)?;
        let command = redis::cmd("EVAL")
            .arg(REVOKE)
            .arg(1)
            .arg(revoked_key(realm))
            .arg(username)
            .arg(expires)
            .arg(now)
            .arg(MAX_REVOCATIONS)
            .clone();
        let added: i64 = self.write("revoking", command, "tern_revocation", realm, None).await?;
        Ok(added == 1)
    }

    pub async fn unrevoke(&self, realm: &str, username: &str, now: u64) -> Result<bool, StoreError> {
        check_realm(realm)?;
        let command = redis::cmd("EVAL").arg(UNREVOKE).arg(1).arg(revoked_key(realm)).arg(username).arg(now).clone();
        let removed: i64 = self.write("ending a revocation", command, "tern_revocation", realm, None).await?;
        Ok(removed == 1)
    }

    pub async fn revocations(&self, realm: &str, now: u64) -> Result<Vec<(String, i64)>, StoreError> {
        check_realm(realm)?;
        let what = "revocations";
        let reply: Value = self
            .run(what, |mut connection| async move {
                self.inner
                    .revocations
                    .key(revoked_key(realm))
                    .arg(now)
                    .arg(MAX_REVOCATIONS)
                    .arg(MAX_NAME)
                    .invoke_async(&mut connection)
                    .await
            })
            .await?;
        array(reply, what)?
            .chunks(2)
            .map(|pair| match pair {
                [name, expires] => Ok((text(name, what, MAX_NAME)?.unwrap_or_default(), number(expires, what)?)),
                _ => Err(StoreError::BadValue { engine: ENGINE, what, message: "a name without a score".into() }),
            })
            .collect()
    }

    /// Turns on the keyspace events the feed needs (keys, for strings, sets
    /// and generic commands) where they are off; `false` if the server does
    /// not let tern.
    async fn enable_keyspace_events(&self) -> bool {
        let what = "enabling keyspace events";
        let current: Result<Vec<String>, StoreError> = self
            .run(what, |mut c| async move {
                redis::cmd("CONFIG").arg("GET").arg("notify-keyspace-events").query_async(&mut c).await
            })
            .await;
        let flags = match current {
            Ok(reply) => reply.get(1).cloned().unwrap_or_default(),
            Err(error) => {
                tracing::warn!(%error, "cannot read Redis notify-keyspace-events");
                return false;
            }
        };
        let has = |c: char| flags.contains(c) || (c != 'K' && flags.contains('A'));
        if ['K', 'g', '$', 's'].into_iter().all(has) {
            return true;
        }
        let wanted: String = flags.chars().chain("Kg$s".chars()).fold(String::new(), |mut out, c| {
            if !out.contains(c) {
                out.push(c);
            }
            out
        });
        let set: Result<Value, StoreError> = self
            .run(what, |mut c| async move {
                redis::cmd("CONFIG").arg("SET").arg("notify-keyspace-events").arg(&wanted).query_async(&mut c).await
            })
            .await;
        match set {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(
                    %error,
                    "Redis keyspace events are off and tern may not turn them on (set notify-keyspace-events to \
                     include Kg$s): changes by other tools such as turnadmin reach tern only when its cache expires"
                );
                false
            }
        }
    }

    /// Listens until the connection fails; `Ok` when the subscriber is gone.
    async fn listen(&self, feed: &mut super::FeedSender) -> Result<(), StoreError> {
        let keyspace = self.enable_keyspace_events().await;
        let what = "subscribing to changes";
        let pubsub = within(ENGINE, what, self.inner.timeout, async {
            self.inner.client.get_async_pubsub().await.map_err(error(what))
        })
        .await?;
        let (mut sink, mut stream) = pubsub.split();
        let prefix = format!("__keyspace@{}__:", self.inner.db);
        within(ENGINE, what, self.inner.timeout, async {
            sink.subscribe(CHANNEL).await.map_err(error(what))?;
            if keyspace {
                sink.psubscribe(format!("{prefix}turn/*")).await.map_err(error(what))?;
            }
            Ok(())
        })
        .await?;
        if !feed.send(FeedEvent::Changed(Change::All)) {
            return Ok(());
        }
        let mut ping = tokio::time::interval(FEED_PING);
        loop {
            tokio::select! {
                message = stream.next() => {
                    let Some(message) = message else {
                        return Err(StoreError::Unreachable { engine: ENGINE, message: "the connection closed".into() });
                    };
                    let channel = message.get_channel_name();
                    let change = match channel.strip_prefix(&prefix) {
                        Some(key) => key_change(key),
                        None if channel == CHANNEL => schema::notice_change(message.get_payload_bytes()),
                        None => None,
                    };
                    if let Some(change) = change
                        && !feed.send(FeedEvent::Changed(change))
                    {
                        return Ok(());
                    }
                }
                _ = ping.tick() => {
                    if feed.is_closed() {
                        return Ok(());
                    }
                    within(ENGINE, what, self.inner.timeout, async {
                        sink.ping::<Value>().await.map_err(error(what))
                    })
                    .await?;
                }
            }
        }
    }

    pub fn subscribe(&self) -> ChangeFeed {
        super::listening_feed(self.clone())
    }
}

impl super::Listener for RedisStore {
    const ENGINE: Engine = ENGINE;

    fn listen(&self, feed: &mut super::FeedSender) -> impl Future<Output = Result<(), StoreError>> + Send {
        RedisStore::listen(self, feed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coturn_keys_map_to_changes() {
        let user = |realm: &str, name: &str| Some(Change::User { realm: realm.into(), name: name.into() });
        assert_eq!(key_change("turn/realm/north.gov/user/gorst/key"), user("north.gov", "gorst"));
        assert_eq!(key_change("turn/realm/north.gov/user/a/user/b/key"), user("north.gov", "a/user/b"));
        assert_eq!(key_change("turn/realm/north.gov/secret"), Some(Change::Secrets { realm: "north.gov".into() }));
        assert_eq!(key_change("turn/realm//denied-peer-ip"), Some(Change::PeerRanges { realm: String::new() }));
        assert_eq!(key_change("turn/realm/r/max-bps"), Some(Change::RealmOptions { realm: "r".into() }));
        assert_eq!(key_change("turn/origin/http://crinna.org:80"), Some(Change::Origins));
        assert_eq!(key_change("turn/realm/r/user/x/allocation/1/status"), None);
        assert_eq!(key_change("turn/admin_user/bayaz"), None);
        assert_eq!(
            user_of_key("turn/realm/crinna.org/user/stranger-come-knocking/key"),
            Some(UserEntry { realm: "crinna.org".into(), name: "stranger-come-knocking".into() })
        );
    }

    #[test]
    fn stream_ids_step_back_one_at_a_time() {
        assert_eq!(entry_before("1700000000123-5").as_deref(), Some("1700000000123-4"));
        assert_eq!(entry_before("1700000000123-0").as_deref(), Some("1700000000122-18446744073709551615"));
        assert_eq!(entry_before("0-0"), None);
        assert_eq!(entry_before(""), None);
        assert_eq!(entry_seconds("1700000000123-0"), Some(1_700_000_000));
    }

    #[test]
    fn globs_are_escaped_and_slashed_realms_refused() {
        assert_eq!(escape_glob("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
        assert!(check_realm("a/user/b").is_err());
        assert!(check_realm("north.gov").is_ok());
    }
}
