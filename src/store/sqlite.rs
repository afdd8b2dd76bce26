//! SQLite: one file, no server. rusqlite's calls block, so each one runs on
//! tokio's blocking pool over one connection (SQLite serialises writers
//! anyway), bounded by the store's timeout both as SQLite's busy timeout
//! and as a deadline on the call. The change feed polls tern's change log,
//! which triggers on coturn's tables fill for every writer.
//!
//! rusqlite is built with its bundled SQLite: the binary then needs no
//! SQLite library on the host and behaves the same everywhere (the
//! `ON CONFLICT` upserts need SQLite 3.24), at the cost of compiling SQLite
//! once.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OptionalExtension, Row, ToSql, TransactionBehavior, params, params_from_iter};

use super::schema::{self, VERSION};
use super::{
    Backoff, Change, ChangeFeed, Engine, FeedEvent, MAX_LIST, MAX_NAME, MAX_OPTION_VALUE, MAX_RANGE, MAX_RANGES,
    MAX_REALM, MAX_REVOCATIONS, MAX_SECRET, MAX_SECRETS, PeerList, SecretEntry, StoreError, StoreSettings, UsageFilter,
    UsageRow, UserEntry, bounded, spawn_feed, too_many, usage_columns, usage_select, within,
};
use crate::io::clock;

const ENGINE: Engine = Engine::Sqlite;
/// How often the feed reads the change log.
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// Change log rows read per poll; a poll that gets this many reads again at once.
const POLL_ROWS: i64 = 1000;
/// What `hmackey char(128)` can hold.
const MAX_KEY_TEXT: usize = 128;
/// Realm options: coturn has three, so a few more rows are already junk.
const MAX_OPTIONS: usize = 16;
/// Deletes a realm's (?1) revocations that expired by ?2.
const DELETE_EXPIRED: &str = "DELETE FROM tern_revocation WHERE realm = ?1 AND expires <= ?2";

#[derive(Clone, Debug)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    timeout: Duration,
    connection: Mutex<Option<Connection>>,
}

fn query_error(what: &'static str) -> impl Fn(rusqlite::Error) -> StoreError {
    move |e| StoreError::Query { engine: ENGINE, what, message: e.to_string() }
}

/// Column `index` as text of at most `max` bytes (`None` for NULL).
fn text(row: &Row<'_>, index: usize, what: &'static str, max: usize) -> Result<Option<String>, StoreError> {
    let bad = |message: &str| StoreError::BadValue { engine: ENGINE, what, message: message.to_owned() };
    match row.get_ref(index).map_err(query_error(what))? {
        ValueRef::Null => Ok(None),
        ValueRef::Text(bytes) => {
            let text = std::str::from_utf8(bytes).map_err(|_| bad("not UTF-8"))?;
            bounded(ENGINE, what, text.to_owned(), max).map(Some)
        }
        ValueRef::Integer(number) => Ok(Some(number.to_string())),
        ValueRef::Real(_) | ValueRef::Blob(_) => Err(bad("not text")),
    }
}

/// Like [`text`], with NULL as empty (coturn's realm columns default to '').
fn text_or_empty(row: &Row<'_>, index: usize, what: &'static str, max: usize) -> Result<String, StoreError> {
    Ok(text(row, index, what, max)?.unwrap_or_default())
}

/// Column `index` as a number.
fn integer(row: &Row<'_>, index: usize, what: &'static str) -> Result<i64, StoreError> {
    match row.get_ref(index).map_err(query_error(what))? {
        ValueRef::Integer(number) => Ok(number),
        _ => Err(StoreError::BadValue { engine: ENGINE, what, message: "not an integer".into() }),
    }
}

/// Runs `sql` with `params` and reads each row with `read`, refusing more
/// than `max` rows.
fn rows<T>(
    connection: &Connection,
    what: &'static str,
    sql: &str,
    params: impl rusqlite::Params,
    max: usize,
    read: impl Fn(&Row<'_>) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut statement = connection.prepare_cached(sql).map_err(query_error(what))?;
    let mut cursor = statement.query(params).map_err(query_error(what))?;
    let mut out = Vec::new();
    while let Some(row) = cursor.next().map_err(query_error(what))? {
        if out.len() == max {
            return Err(too_many(ENGINE, what, max));
        }
        out.push(read(row)?);
    }
    Ok(out)
}

impl SqliteStore {
    pub fn new(settings: &StoreSettings) -> Result<Self, StoreError> {
        let path = settings.url.sqlite_path().map_err(StoreError::InvalidInput)?;
        Ok(Self { inner: Arc::new(Inner { path, timeout: settings.timeout, connection: Mutex::new(None) }) })
    }

    /// Runs `work` on the connection (opening it first if need be) on the
    /// blocking pool, within the timeout.
    async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        within(ENGINE, what, self.inner.timeout, async move {
            tokio::task::spawn_blocking(move || {
                // A panic while the lock was held cannot leave the
                // connection half-changed: SQLite rolls back what was open.
                let mut guard = inner.connection.lock().unwrap_or_else(PoisonError::into_inner);
                if guard.is_none() {
                    *guard = Some(open(&inner.path, inner.timeout)?);
                }
                let connection = guard.as_mut().expect("the connection was opened just above");
                work(connection)
            })
            .await
            .map_err(|e| StoreError::Query {
                engine: ENGINE,
                what,
                message: format!("the SQLite task failed: {e}"),
            })?
        })
        .await
    }

    pub async fn migrate(&self) -> Result<i64, StoreError> {
        self.run("migrating the schema", |connection| {
            let what = "migrating the schema";
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(query_error(what))?;
            transaction.execute(schema::SCHEMA_TABLE, []).map_err(query_error(what))?;
            let current: i64 = transaction
                .query_row("SELECT coalesce(max(version), 0) FROM tern_schema", [], |row| row.get(0))
                .map_err(query_error(what))?;
            if current > VERSION {
                return Err(StoreError::SchemaTooNew { engine: ENGINE, found: current });
            }
            for version in current + 1..=VERSION {
                for statement in schema::sqlite_migration(version) {
                    transaction.execute_batch(&statement).map_err(query_error(what))?;
                }
                let applied = i64::try_from(clock::unix_secs()).unwrap_or(i64::MAX);
                transaction
                    .execute("INSERT INTO tern_schema (version, applied) VALUES (?1, ?2)", params![version, applied])
                    .map_err(query_error(what))?;
                tracing::info!(version, "SQLite store migrated");
            }
            transaction.commit().map_err(query_error(what))?;
            Ok(current.max(VERSION))
        })
        .await
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        // A database tern has not made yet is version 0, not an error, and
        // asking must not create the file.
        if !self.inner.path.exists() {
            return Ok(0);
        }
        self.run("reading the schema version", |connection| {
            let what = "reading the schema version";
            let tables: i64 = connection
                .query_row(
                    "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'tern_schema'",
                    [],
                    |r| r.get(0),
                )
                .map_err(query_error(what))?;
            if tables == 0 {
                return Ok(0);
            }
            connection
                .query_row("SELECT coalesce(max(version), 0) FROM tern_schema", [], |row| row.get(0))
                .map_err(query_error(what))
        })
        .await
    }

    pub async fn user_key(&self, realm: &str, name: &str) -> Result<Option<String>, StoreError> {
        let (realm, name) = (realm.to_owned(), name.to_owned());
        self.run("looking up a user", move |connection| {
            let what = "hmackey";
            let sql = format!(
                "SELECT substr(hmackey, 1, {}) FROM turnusers_lt WHERE realm = ?1 AND name = ?2",
                MAX_KEY_TEXT + 1
            );
            let mut statement = connection.prepare_cached(&sql).map_err(query_error(what))?;
            let key = statement
                .query_row(params![realm, name], |row| Ok(text(row, 0, what, MAX_KEY_TEXT)))
                .optional()
                .map_err(query_error(what))?;
            match key.transpose()? {
                Some(Some(key)) => Ok(Some(key)),
                Some(None) => Err(StoreError::BadValue { engine: ENGINE, what, message: "NULL".into() }),
                None => Ok(None),
            }
        })
        .await
    }

    pub async fn secrets(&self, realm: &str) -> Result<Vec<String>, StoreError> {
        let realm = realm.to_owned();
        self.run("reading REST secrets", move |connection| {
            let sql = format!(
                "SELECT substr(value, 1, {}) FROM turn_secret WHERE realm = ?1 LIMIT {}",
                MAX_SECRET + 1,
                MAX_SECRETS + 1
            );
            let secrets = rows(connection, "REST secrets", &sql, params![realm], MAX_SECRETS, |row| {
                text(row, 0, "REST secret", MAX_SECRET)
            })?;
            Ok(secrets.into_iter().flatten().filter(|secret| !secret.is_empty()).collect())
        })
        .await
    }

    pub async fn peer_ranges(&self, list: PeerList, realm: &str) -> Result<Vec<String>, StoreError> {
        let realm = realm.to_owned();
        self.run("reading peer ranges", move |connection| {
            let sql = format!(
                "SELECT substr(ip_range, 1, {}) FROM {} WHERE realm = ?1 OR realm = '' OR realm IS NULL LIMIT {}",
                MAX_RANGE + 1,
                list.table(),
                MAX_RANGES + 1
            );
            let ranges = rows(connection, "peer ranges", &sql, params![realm], MAX_RANGES, |row| {
                text(row, 0, "peer range", MAX_RANGE)
            })?;
            Ok(ranges.into_iter().flatten().collect())
        })
        .await
    }

    pub async fn realm_options(&self, realm: &str) -> Result<Vec<(String, String)>, StoreError> {
        let realm = realm.to_owned();
        self.run("reading realm options", move |connection| {
            let sql = format!(
                "SELECT substr(opt, 1, 33), substr(value, 1, {}) FROM turn_realm_option WHERE realm = ?1 LIMIT {}",
                MAX_OPTION_VALUE + 1,
                MAX_OPTIONS + 1
            );
            rows(connection, "realm options", &sql, params![realm], MAX_OPTIONS, |row| {
                Ok((
                    text_or_empty(row, 0, "realm option", 32)?,
                    text_or_empty(row, 1, "realm option value", MAX_OPTION_VALUE)?,
                ))
            })
        })
        .await
    }

    pub async fn origin_realm(&self, origin: &str) -> Result<Option<String>, StoreError> {
        let origin = origin.to_owned();
        self.run("looking up an origin", move |connection| {
            let what = "origin realm";
            let sql = format!("SELECT substr(realm, 1, {}) FROM turn_origin_to_realm WHERE origin = ?1", MAX_REALM + 1);
            let mut statement = connection.prepare_cached(&sql).map_err(query_error(what))?;
            let realm = statement
                .query_row(params![origin], |row| Ok(text(row, 0, what, MAX_REALM)))
                .optional()
                .map_err(query_error(what))?;
            Ok(realm.transpose()?.flatten().filter(|realm| !realm.is_empty()))
        })
        .await
    }

    pub async fn option_realms(&self) -> Result<Vec<String>, StoreError> {
        self.run("listing realm options", |connection| {
            let sql = format!(
                "SELECT DISTINCT substr(realm, 1, {}) FROM turn_realm_option LIMIT {}",
                MAX_REALM + 1,
                MAX_LIST + 1
            );
            rows(connection, "realms", &sql, [], MAX_LIST, |row| text_or_empty(row, 0, "realm", MAX_REALM))
        })
        .await
    }

    pub async fn add_user(&self, realm: &str, name: &str, key: &str) -> Result<(), StoreError> {
        let (realm, name, key) = (realm.to_owned(), name.to_owned(), key.to_owned());
        self.run("adding a user", move |connection| {
            connection
                .execute(
                    "INSERT INTO turnusers_lt (realm, name, hmackey) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (realm, name) DO UPDATE SET hmackey = excluded.hmackey",
                    params![realm, name, key],
                )
                .map_err(query_error("adding a user"))?;
            Ok(())
        })
        .await
    }

    pub async fn delete_user(&self, realm: &str, name: &str) -> Result<bool, StoreError> {
        let (realm, name) = (realm.to_owned(), name.to_owned());
        self.run("deleting a user", move |connection| {
            let deleted = connection
                .execute("DELETE FROM turnusers_lt WHERE realm = ?1 AND name = ?2", params![realm, name])
                .map_err(query_error("deleting a user"))?;
            Ok(deleted > 0)
        })
        .await
    }

    pub async fn list_users(&self, realm: Option<&str>) -> Result<Vec<UserEntry>, StoreError> {
        let realm = realm.map(str::to_owned);
        self.run("listing users", move |connection| {
            let sql = format!(
                "SELECT substr(realm, 1, {}), substr(name, 1, {}) FROM turnusers_lt \
                 WHERE ?1 IS NULL OR realm = ?1 LIMIT {}",
                MAX_REALM + 1,
                MAX_NAME + 1,
                MAX_LIST + 1
            );
            rows(connection, "users", &sql, params![realm], MAX_LIST, |row| {
                Ok(UserEntry {
                    realm: text_or_empty(row, 0, "realm", MAX_REALM)?,
                    name: text_or_empty(row, 1, "user name", MAX_NAME)?,
                })
            })
        })
        .await
    }

    pub async fn add_secret(&self, realm: &str, secret: &str) -> Result<(), StoreError> {
        let (realm, secret) = (realm.to_owned(), secret.to_owned());
        self.run("adding a secret", move |connection| {
            connection
                .execute(
                    "INSERT INTO turn_secret (realm, value) VALUES (?1, ?2) ON CONFLICT (realm, value) DO NOTHING",
                    params![realm, secret],
                )
                .map_err(query_error("adding a secret"))?;
            Ok(())
        })
        .await
    }

    pub async fn delete_secrets(&self, realm: &str, secret: Option<&str>) -> Result<u64, StoreError> {
        let (realm, secret) = (realm.to_owned(), secret.map(str::to_owned));
        self.run("deleting secrets", move |connection| {
            let deleted = connection
                .execute(
                    "DELETE FROM turn_secret WHERE realm = ?1 AND (?2 IS NULL OR value = ?2)",
                    params![realm, secret],
                )
                .map_err(query_error("deleting secrets"))?;
            Ok(deleted as u64)
        })
        .await
    }

    pub async fn list_secrets(&self, realm: Option<&str>) -> Result<Vec<SecretEntry>, StoreError> {
        let realm = realm.map(str::to_owned);
        self.run("listing secrets", move |connection| {
            let sql = format!(
                "SELECT substr(realm, 1, {}), substr(value, 1, {}) FROM turn_secret WHERE ?1 IS NULL OR realm = ?1 LIMIT {}",
                MAX_REALM + 1,
                MAX_SECRET + 1,
                MAX_LIST + 1
            );
            rows(connection, "secrets", &sql, params![realm], MAX_LIST, |row| {
                Ok(SecretEntry {
                    realm: text_or_empty(row, 0, "realm", MAX_REALM)?,
                    secret: text_or_empty(row, 1, "REST secret", MAX_SECRET)?,
                })
            })
        })
        .await
    }

    pub async fn set_realm_option(&self, realm: &str, option: &'static str, value: u64) -> Result<(), StoreError> {
        let realm = realm.to_owned();
        self.run("setting a realm option", move |connection| {
            let what = "setting a realm option";
            if value == 0 {
                connection
                    .execute("DELETE FROM turn_realm_option WHERE realm = ?1 AND opt = ?2", params![realm, option])
                    .map_err(query_error(what))?;
            } else {
                connection
                    .execute(
                        "INSERT INTO turn_realm_option (realm, opt, value) VALUES (?1, ?2, ?3) \
                         ON CONFLICT (realm, opt) DO UPDATE SET value = excluded.value",
                        params![realm, option, value.to_string()],
                    )
                    .map_err(query_error(what))?;
            }
            Ok(())
        })
        .await
    }

    pub async fn record_usage(&self, rows: Vec<UsageRow>) -> Result<(), StoreError> {
        self.run("recording usage", move |connection| {
            let what = "recording usage";
            let transaction = connection.transaction().map_err(query_error(what))?;
            {
                let columns = super::USAGE_TEXT.len() + super::USAGE_NUMBERS.len();
                let placeholders = (1..=columns).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                let sql = format!("INSERT INTO tern_usage ({}) VALUES ({placeholders})", usage_columns());
                let mut statement = transaction.prepare_cached(&sql).map_err(query_error(what))?;
                for row in &rows {
                    let values =
                        row.text.iter().map(|t| t as &dyn ToSql).chain(row.numbers.iter().map(|n| n as &dyn ToSql));
                    statement.execute(params_from_iter(values)).map_err(query_error(what))?;
                }
            }
            transaction.commit().map_err(query_error(what))
        })
        .await
    }

    /// The newest rows `filter` matches, newest first.
    pub async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError> {
        let filter = filter.clone();
        self.run("reading usage", move |connection| {
            let sql = format!(
                "SELECT {} FROM tern_usage WHERE (?1 IS NULL OR realm = ?1) AND (?2 IS NULL OR username = ?2) \
                 AND (?3 IS NULL OR ended >= ?3) ORDER BY id DESC LIMIT ?4",
                usage_select()
            );
            let since = filter.since.map(|since| i64::try_from(since).unwrap_or(i64::MAX));
            let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
            rows(
                connection,
                "usage records",
                &sql,
                params![filter.realm, filter.username, since, limit],
                filter.limit,
                |row| {
                    UsageRow::read(
                        |index, name, max| text_or_empty(row, index, name, max),
                        |index, name| integer(row, index, name),
                    )
                },
            )
        })
        .await
    }

    /// `false` when the realm is full.
    pub async fn revoke(&self, realm: &str, username: &str, expires: u64, now: u64) -> Result<bool, StoreError> {
        let (realm, username) = (realm.to_owned(), username.to_owned());
        self.run("revoking", move |connection| {
            let what = "revoking";
            let (expires, now) = (seconds(expires), seconds(now));
            let transaction =
                connection.transaction_with_behavior(TransactionBehavior::Immediate).map_err(query_error(what))?;
            transaction.execute(DELETE_EXPIRED, params![realm, now]).map_err(query_error(what))?;
            let others: i64 = transaction
                .query_row(
                    "SELECT count(*) FROM tern_revocation WHERE realm = ?1 AND username <> ?2",
                    params![realm, username],
                    |row| row.get(0),
                )
                .map_err(query_error(what))?;
            if others >= MAX_REVOCATIONS as i64 {
                return Ok(false);
            }
            transaction
                .execute(
                    "INSERT INTO tern_revocation (realm, username, expires) VALUES (?1, ?2, ?3) \
                     ON CONFLICT (realm, username) DO UPDATE SET expires = excluded.expires",
                    params![realm, username, expires],
                )
                .map_err(query_error(what))?;
            transaction.commit().map_err(query_error(what))?;
            Ok(true)
        })
        .await
    }

    pub async fn unrevoke(&self, realm: &str, username: &str, now: u64) -> Result<bool, StoreError> {
        let (realm, username) = (realm.to_owned(), username.to_owned());
        self.run("ending a revocation", move |connection| {
            let expires: Option<i64> = connection
                .query_row(
                    "DELETE FROM tern_revocation WHERE realm = ?1 AND username = ?2 RETURNING expires",
                    params![realm, username],
                    |row| row.get(0),
                )
                .optional()
                .map_err(query_error("ending a revocation"))?;
            Ok(expires.is_some_and(|expires| expires > seconds(now)))
        })
        .await
    }

    pub async fn revocations(&self, realm: &str, now: u64) -> Result<Vec<(String, i64)>, StoreError> {
        let realm = realm.to_owned();
        self.run("reading revocations", move |connection| {
            let what = "revocations";
            let now = seconds(now);
            connection.execute(DELETE_EXPIRED, params![realm, now]).map_err(query_error(what))?;
            let sql = format!(
                "SELECT substr(username, 1, {}), expires FROM tern_revocation WHERE realm = ?1 AND expires > ?2 \
                 LIMIT {}",
                MAX_NAME + 1,
                MAX_REVOCATIONS + 1
            );
            rows(connection, what, &sql, params![realm, now], MAX_REVOCATIONS, |row| {
                Ok((text_or_empty(row, 0, "revoked name", MAX_NAME)?, integer(row, 1, "revocation expiry")?))
            })
        })
        .await
    }

    /// The change log after `last`: the newest id, the changes, and whether
    /// rows after `last` were trimmed before they were read. With no `last`,
    /// only the newest id.
    async fn changes_since(&self, last: Option<i64>) -> Result<(i64, Vec<Change>, bool), StoreError> {
        self.run("reading the change log", move |connection| {
            let what = "reading the change log";
            let Some(last) = last else {
                let newest = connection
                    .query_row("SELECT coalesce(max(id), 0) FROM tern_change", [], |row| row.get(0))
                    .map_err(query_error(what))?;
                return Ok((newest, Vec::new(), false));
            };
            let oldest: Option<i64> =
                connection.query_row("SELECT min(id) FROM tern_change", [], |row| row.get(0)).map_err(query_error(what))?;
            let trimmed = oldest.is_some_and(|oldest| oldest > last + 1);
            let sql = format!(
                "SELECT id, source, substr(realm, 1, {}), substr(name, 1, {}) FROM tern_change WHERE id > ?1 ORDER BY id LIMIT {POLL_ROWS}",
                MAX_REALM + 1,
                MAX_NAME + 1
            );
            let entries = rows(connection, what, &sql, params![last], POLL_ROWS as usize, |row| {
                let id: i64 = row.get(0).map_err(query_error(what))?;
                let source = text_or_empty(row, 1, "change source", 64)?;
                let change = schema::change_of(&source, text(row, 2, "realm", MAX_REALM)?, text(row, 3, "user name", MAX_NAME)?);
                Ok((id, change))
            })?;
            let newest = entries.last().map_or(last, |(id, _)| *id);
            Ok((newest, entries.into_iter().filter_map(|(_, change)| change).collect(), trimmed))
        })
        .await
    }

    pub fn subscribe(&self) -> ChangeFeed {
        let store = self.clone();
        spawn_feed(move |mut feed| async move {
            let mut last: Option<i64> = None;
            let mut backoff = Backoff::new();
            let mut lost = false;
            while !feed.is_closed() {
                match store.changes_since(last).await {
                    Ok((newest, changes, trimmed)) => {
                        let full = changes.len() as i64 == POLL_ROWS;
                        if last.is_none() || trimmed {
                            feed.send(FeedEvent::Changed(Change::All));
                        }
                        for change in changes {
                            feed.send(FeedEvent::Changed(change));
                        }
                        last = Some(newest);
                        lost = false;
                        backoff.succeeded();
                        if !full {
                            tokio::time::sleep(POLL_INTERVAL).await;
                        }
                    }
                    Err(error) => {
                        if !lost {
                            tracing::warn!(%error, "SQLite change feed lost; retrying");
                            feed.send(FeedEvent::Lost(error));
                            lost = true;
                        }
                        last = None;
                        backoff.failed();
                        tokio::time::sleep(backoff.remaining()).await;
                    }
                }
            }
        })
    }
}

/// Unix seconds as SQLite's integers hold them; the store refuses any
/// later than [`super::MAX_REVOCATION_EXPIRY`] before they get here.
fn seconds(unix: u64) -> i64 {
    i64::try_from(unix).unwrap_or(i64::MAX)
}

/// Opens (creating if need be) the database file.
fn open(path: &std::path::Path, timeout: Duration) -> Result<Connection, StoreError> {
    let unreachable =
        |e: rusqlite::Error| StoreError::Unreachable { engine: ENGINE, message: format!("{}: {e}", path.display()) };
    let connection = Connection::open(path).map_err(unreachable)?;
    connection.busy_timeout(timeout).map_err(unreachable)?;
    Ok(connection)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MAX_REVOCATION_EXPIRY, MAX_USAGE_BATCH, MAX_USAGE_LIST, Store, StoreUrl, UsageRecord};

    fn store(name: &str) -> (Store, PathBuf) {
        let dir = std::env::temp_dir().join(format!("tern-sqlite-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("tern.db");
        let url = StoreUrl::parse(&format!("sqlite://{}", path.display())).expect("valid URL");
        let settings = StoreSettings { url, password: None, timeout: Duration::from_secs(5), tls_ca: None };
        (Store::new(&settings).expect("store"), path)
    }

    #[tokio::test]
    async fn migrating_twice_keeps_the_version_and_status_does_not_create_the_file() {
        let (store, path) = store("migrate");
        assert_eq!(store.status().await.expect("status").schema_version, 0);
        assert!(!path.exists());
        assert_eq!(store.migrate().await.expect("migrate"), VERSION);
        assert_eq!(store.migrate().await.expect("again"), VERSION);
        assert_eq!(store.status().await.expect("status").schema_version, VERSION);
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused() {
        let (store, path) = store("newer");
        store.migrate().await.expect("migrate");
        let connection = Connection::open(&path).expect("open");
        connection.execute("INSERT INTO tern_schema (version, applied) VALUES (99, 0)", []).expect("insert");
        let error = store.migrate().await.expect_err("too new");
        assert!(matches!(error, StoreError::SchemaTooNew { found: 99, .. }), "{error}");
    }

    #[tokio::test]
    async fn malformed_and_oversized_values_are_refused() {
        let (store, path) = store("malformed");
        store.migrate().await.expect("migrate");
        let connection = Connection::open(&path).expect("open");
        connection
            .execute("INSERT INTO turnusers_lt (realm, name, hmackey) VALUES ('r', 'short', 'abcd'), ('r', 'null', NULL), ('r', 'blob', x'00')", [])
            .expect("insert");
        connection
            .execute("INSERT INTO turn_secret (realm, value) VALUES ('r', ?1)", [&"s".repeat(5000)])
            .expect("insert");
        connection
            .execute("INSERT INTO turn_realm_option (realm, opt, value) VALUES ('r', 'max-bps', 'lots')", [])
            .expect("insert");
        connection
            .execute("INSERT INTO allowed_peer_ip (realm, ip_range) VALUES ('r', '10.0.0.9-10.0.0.1')", [])
            .expect("insert");
        for name in ["short", "null", "blob"] {
            let error = store.user_keys("r", name).await.expect_err(name);
            assert!(matches!(error, StoreError::BadValue { .. }), "{name}: {error}");
        }
        assert!(matches!(store.rest_secrets("r").await, Err(StoreError::BadValue { .. })));
        assert!(store.realm_options("r").await.expect_err("not a number").to_string().contains("\"lots\""));
        assert!(store.peer_ranges("r").await.expect_err("backwards").to_string().contains("ends before it starts"));
        assert_eq!(store.user_keys("r", "nobody").await.expect("absent"), None);
    }

    #[tokio::test]
    async fn too_many_secrets_are_refused() {
        let (store, _) = store("many");
        store.migrate().await.expect("migrate");
        for i in 0..=MAX_SECRETS {
            store.add_secret("r", &format!("secret-{i}")).await.expect("add");
        }
        let error = store.rest_secrets("r").await.expect_err("too many");
        assert!(error.to_string().contains("more than 64 entries"), "{error}");
    }

    #[tokio::test]
    async fn expired_revocations_are_not_listed_and_are_deleted_when_read() {
        let (store, path) = store("revocations");
        store.migrate().await.expect("migrate");
        let later = clock::unix_secs() + 3600;
        store.revoke("north.gov", "gorst", later).await.expect("revoke");
        let connection = Connection::open(&path).expect("open");
        connection
            .execute("INSERT INTO tern_revocation (realm, username, expires) VALUES ('north.gov', 'old', 1)", [])
            .expect("insert");
        assert_eq!(store.revocations("north.gov").await.expect("read"), vec![("gorst".to_owned(), later)]);
        let left: i64 =
            connection.query_row("SELECT count(*) FROM tern_revocation", [], |row| row.get(0)).expect("count");
        assert_eq!(left, 1, "the expired row is gone");
        connection
            .execute("INSERT INTO tern_revocation (realm, username, expires) VALUES ('north.gov', 'old', 1)", [])
            .expect("insert");
        assert!(!store.unrevoke("north.gov", "old").await.expect("unrevoke"), "an expired one was no revocation");
        for (expires, wanted) in [(0, "after now"), (1, "after now"), (MAX_REVOCATION_EXPIRY + 1, "at most")] {
            let error = store.revoke("north.gov", "x", expires).await.expect_err("refused").to_string();
            assert!(error.contains(wanted), "{error}");
        }
        store.revoke("north.gov", "forever", MAX_REVOCATION_EXPIRY).await.expect("until undone");
        connection
            .execute("UPDATE tern_revocation SET expires = 1000000000000000 WHERE username = 'forever'", [])
            .expect("update");
        let error = store.revocations("north.gov").await.expect_err("past the year 9999").to_string();
        assert!(error.contains("revocation expiry"), "{error}");
    }

    #[tokio::test]
    async fn a_full_realm_refuses_new_revocations_but_moves_existing_ones() {
        let (store, path) = store("full");
        store.migrate().await.expect("migrate");
        let later = clock::unix_secs() + 3600;
        let mut connection = Connection::open(&path).expect("open");
        let transaction = connection.transaction().expect("transaction");
        for i in 0..MAX_REVOCATIONS {
            transaction
                .execute(
                    "INSERT INTO tern_revocation (realm, username, expires) VALUES ('r', ?1, ?2)",
                    params![format!("user-{i}"), later as i64],
                )
                .expect("insert");
        }
        transaction.commit().expect("commit");
        let error = store.revoke("r", "one-more", later).await.expect_err("full").to_string();
        assert_eq!(error, "realm \"r\" already has 65536 revocations");
        store.revoke("r", "user-7", later + 1).await.expect("an existing one moves");
        store.revoke("elsewhere", "one-more", later).await.expect("another realm has room");
        assert_eq!(store.revocations("r").await.expect("read").len(), MAX_REVOCATIONS);
    }

    #[tokio::test]
    async fn usage_batches_are_bounded_and_bad_rows_refused() {
        let (store, path) = store("usage");
        store.migrate().await.expect("migrate");
        let record = UsageRecord {
            node: "n".into(),
            realm: "r".into(),
            username: "u".into(),
            transport: crate::proto::Transport::Udp,
            client: "192.0.2.1:4000".parse().expect("literal"),
            relayed: vec!["192.0.2.2:50000".parse().expect("literal")],
            started: 10,
            ended: 20,
            packets_to_peer: 1,
            bytes_to_peer: 2,
            packets_to_client: 3,
            bytes_to_client: 4,
        };
        let error = store.record_usage(&vec![record.clone(); MAX_USAGE_BATCH + 1]).await.expect_err("too many");
        assert_eq!(error.to_string(), "513 usage records in one batch; at most 512");
        let mut bad = record.clone();
        bad.relayed.clear();
        let error = store.record_usage(&[record.clone(), bad]).await.expect_err("a bad record").to_string();
        assert!(error.starts_with("usage record 1: "), "{error}");
        store.record_usage(&[]).await.expect("nothing to write");
        let all = UsageFilter { realm: None, username: None, since: None, limit: 10 };
        assert_eq!(store.usage(&all).await.expect("read"), Vec::new(), "a refused batch writes nothing");
        store.record_usage(&vec![record.clone(); MAX_USAGE_BATCH]).await.expect("a full batch");
        assert_eq!(store.usage(&all).await.expect("read").len(), 10);
        for limit in [0, MAX_USAGE_LIST + 1] {
            assert!(matches!(
                store.usage(&UsageFilter { limit, ..all.clone() }).await,
                Err(StoreError::InvalidInput(_))
            ));
        }
        let connection = Connection::open(&path).expect("open");
        connection
            .execute("UPDATE tern_usage SET bytes_to_peer = 'many' WHERE id = (SELECT max(id) FROM tern_usage)", [])
            .expect("update");
        let error = store.usage(&all).await.expect_err("not a number").to_string();
        assert!(error.contains("bytes_to_peer: not an integer"), "{error}");
    }
}
