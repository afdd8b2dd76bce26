//! PostgreSQL, through tokio-postgres: one shared connection (queries are
//! pipelined over it), reconnected with backoff when lost; TLS with rustls
//! as `sslmode` asks (`prefer` by default, `require`, `disable`), against the
//! system's roots or `[store] tls_ca`. Every value is bounded in the query
//! itself (`left(…)`, `LIMIT`), so an oversized row is cut by the server
//! and then refused here, never read whole.
//!
//! The change feed is a second connection that `LISTEN`s on the channel
//! that tern's trigger on coturn's tables notifies, and pings it every few
//! seconds so a silent loss is noticed.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::types::ToSql;
use tokio_postgres::{AsyncMessage, Client, Row};
use tokio_postgres_rustls::MakeRustlsConnect;

use super::schema::{self, NOTIFY_CHANNEL, POSTGRES_LOCK, VERSION};
use super::{
    Change, ChangeFeed, Engine, FeedEvent, MAX_LIST, MAX_NAME, MAX_OPTION_VALUE, MAX_RANGE, MAX_RANGES, MAX_REALM,
    MAX_REVOCATIONS, MAX_SECRET, MAX_SECRETS, PeerList, Reconnecting, SecretEntry, StoreError, StoreSettings,
    USAGE_NUMBERS, USAGE_TEXT, UsageFilter, UsageRow, UserEntry, bounded, bounded_rows, usage_columns, usage_select,
    within,
};
use crate::io::clock;

const ENGINE: Engine = Engine::Postgres;
/// How often the feed checks that its connection is still there.
const FEED_PING: Duration = Duration::from_secs(3);
/// What `hmackey char(128)` can hold.
const MAX_KEY_TEXT: usize = 128;
/// Realm options: coturn has three, so a few more rows are already junk.
const MAX_OPTIONS: usize = 16;
/// Deletes a realm's ($1) revocations that expired by $2.
const DELETE_EXPIRED: &str = "DELETE FROM tern_revocation WHERE realm = $1 AND expires <= $2";
/// Notifications the feed's connection buffers before it waits for the feed.
const NOTIFICATION_BUFFER: usize = 256;

#[derive(Clone, Debug)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
    timeout: Duration,
    connection: Reconnecting<Arc<Client>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore").field("config", &self.config).finish_non_exhaustive()
    }
}

/// An error of tokio-postgres, typed: the server's own error for a query it
/// refused, otherwise (I/O, a closed connection) unreachable.
fn error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> StoreError {
    move |e| match e.as_db_error() {
        Some(db) => StoreError::Query { engine: ENGINE, what, message: db.message().to_owned() },
        None => StoreError::Unreachable { engine: ENGINE, message: format!("{what}: {e}") },
    }
}

/// Column `index` as text (`None` for NULL), at most `max` bytes.
fn text(row: &Row, index: usize, what: &'static str, max: usize) -> Result<Option<String>, StoreError> {
    let value: Option<String> =
        row.try_get(index).map_err(|e| StoreError::BadValue { engine: ENGINE, what, message: e.to_string() })?;
    value.map(|value| bounded(ENGINE, what, value, max)).transpose()
}

fn text_or_empty(row: &Row, index: usize, what: &'static str, max: usize) -> Result<String, StoreError> {
    Ok(text(row, index, what, max)?.unwrap_or_default())
}

/// Column `index` as a `bigint`.
fn integer(row: &Row, index: usize, what: &'static str) -> Result<i64, StoreError> {
    row.try_get(index).map_err(|e| StoreError::BadValue { engine: ENGINE, what, message: e.to_string() })
}

/// Unix seconds as a `bigint`; the store refuses any later than
/// [`super::MAX_REVOCATION_EXPIRY`] before they get here.
fn seconds(unix: u64) -> i64 {
    i64::try_from(unix).unwrap_or(i64::MAX)
}

impl PostgresStore {
    pub fn new(settings: &StoreSettings) -> Result<Self, StoreError> {
        let mut config = settings.url.postgres_config().map_err(StoreError::InvalidInput)?;
        if let Some(password) = &settings.password {
            config.password(password.expose());
        }
        config.connect_timeout(settings.timeout);
        let tls = MakeRustlsConnect::new(super::tls_config(settings.tls_ca.as_deref())?);
        let inner = Inner { config, tls, timeout: settings.timeout, connection: Reconnecting::new(ENGINE) };
        Ok(Self { inner: Arc::new(inner) })
    }

    /// A new connection, driven by a task of its own; notifications on it
    /// go to `notifications` when given.
    async fn connect(
        &self,
        notifications: Option<mpsc::Sender<Result<String, StoreError>>>,
    ) -> Result<Client, StoreError> {
        let connecting = self.inner.config.connect(self.inner.tls.clone());
        let (client, mut connection) = within(ENGINE, "connecting", self.inner.timeout, async {
            connecting.await.map_err(|e| StoreError::Unreachable { engine: ENGINE, message: e.to_string() })
        })
        .await?;
        tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(message) = messages.next().await {
                let forwarded = match message {
                    Ok(AsyncMessage::Notification(notification)) => Ok(notification.payload().to_owned()),
                    Ok(_) => continue,
                    Err(e) => Err(StoreError::Unreachable { engine: ENGINE, message: e.to_string() }),
                };
                let failed = forwarded.is_err();
                if let Some(notifications) = &notifications
                    && notifications.send(forwarded).await.is_err()
                {
                    return;
                }
                if failed {
                    return;
                }
            }
        });
        Ok(client)
    }

    async fn client(&self) -> Result<Arc<Client>, StoreError> {
        self.inner
            .connection
            .get(|client| !client.is_closed(), || async { self.connect(None).await.map(Arc::new) })
            .await
    }

    /// Runs `sql` with bound `params`, within the timeout.
    async fn query(
        &self,
        what: &'static str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        let client = self.client().await?;
        let result =
            within(ENGINE, what, self.inner.timeout, async { client.query(sql, params).await.map_err(error(what)) })
                .await;
        if result.as_ref().is_err_and(StoreError::is_transient) {
            self.inner.connection.lost().await;
        }
        result
    }

    async fn execute(&self, what: &'static str, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let result =
            within(ENGINE, what, self.inner.timeout, async { client.execute(sql, params).await.map_err(error(what)) })
                .await;
        if result.as_ref().is_err_and(StoreError::is_transient) {
            self.inner.connection.lost().await;
        }
        result
    }

    pub async fn migrate(&self) -> Result<i64, StoreError> {
        let what = "migrating the schema";
        // A connection of its own: the transaction must not share the
        // pipelined one with lookups.
        let mut client = self.connect(None).await?;
        within(ENGINE, what, self.inner.timeout * 4, async {
            let transaction = client.transaction().await.map_err(error(what))?;
            transaction.execute("SELECT pg_advisory_xact_lock($1)", &[&POSTGRES_LOCK]).await.map_err(error(what))?;
            transaction.batch_execute(schema::SCHEMA_TABLE).await.map_err(error(what))?;
            let current: i64 = transaction
                .query_one("SELECT coalesce(max(version), 0)::bigint FROM tern_schema", &[])
                .await
                .map_err(error(what))?
                .try_get(0)
                .map_err(|e| StoreError::BadValue { engine: ENGINE, what, message: e.to_string() })?;
            if current > VERSION {
                return Err(StoreError::SchemaTooNew { engine: ENGINE, found: current });
            }
            for version in current + 1..=VERSION {
                for statement in schema::postgres_migration(version) {
                    transaction.batch_execute(&statement).await.map_err(error(what))?;
                }
                let applied = i64::try_from(clock::unix_secs()).unwrap_or(i64::MAX);
                let version32 = i32::try_from(version).expect("migration numbers are small");
                transaction
                    .execute("INSERT INTO tern_schema (version, applied) VALUES ($1, $2)", &[&version32, &applied])
                    .await
                    .map_err(error(what))?;
                tracing::info!(version, "PostgreSQL store migrated");
            }
            transaction.commit().await.map_err(error(what))?;
            Ok(current.max(VERSION))
        })
        .await
    }

    pub async fn schema_version(&self) -> Result<i64, StoreError> {
        let what = "reading the schema version";
        let rows = self.query(what, "SELECT to_regclass('tern_schema') IS NOT NULL", &[]).await?;
        let exists: bool = rows.first().and_then(|row| row.try_get(0).ok()).unwrap_or(false);
        if !exists {
            return Ok(0);
        }
        let rows = self.query(what, "SELECT coalesce(max(version), 0)::bigint FROM tern_schema", &[]).await?;
        rows.first().and_then(|row| row.try_get(0).ok()).ok_or_else(|| StoreError::BadValue {
            engine: ENGINE,
            what,
            message: "no version".into(),
        })
    }

    pub async fn user_key(&self, realm: &str, name: &str) -> Result<Option<String>, StoreError> {
        let sql = format!(
            "SELECT left(hmackey::text, {}) FROM turnusers_lt WHERE realm = $1 AND name = $2",
            MAX_KEY_TEXT + 1
        );
        let rows = self.query("looking up a user", &sql, &[&realm, &name]).await?;
        match rows.first() {
            None => Ok(None),
            Some(row) => text(row, 0, "hmackey", MAX_KEY_TEXT)?.map(Some).ok_or_else(|| StoreError::BadValue {
                engine: ENGINE,
                what: "hmackey",
                message: "NULL".into(),
            }),
        }
    }

    pub async fn secrets(&self, realm: &str) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT left(value, {}) FROM turn_secret WHERE realm = $1 LIMIT {}",
            MAX_SECRET + 1,
            MAX_SECRETS + 1
        );
        let rows = bounded_rows(
            ENGINE,
            "REST secrets",
            self.query("reading REST secrets", &sql, &[&realm]).await?,
            MAX_SECRETS,
        )?;
        let mut secrets = Vec::with_capacity(rows.len());
        for row in &rows {
            secrets.extend(text(row, 0, "REST secret", MAX_SECRET)?.filter(|secret| !secret.is_empty()));
        }
        Ok(secrets)
    }

    pub async fn peer_ranges(&self, list: PeerList, realm: &str) -> Result<Vec<String>, StoreError> {
        let sql = format!(
            "SELECT left(ip_range, {}) FROM {} WHERE realm = $1 OR realm = '' OR realm IS NULL LIMIT {}",
            MAX_RANGE + 1,
            list.table(),
            MAX_RANGES + 1
        );
        let rows =
            bounded_rows(ENGINE, "peer ranges", self.query("reading peer ranges", &sql, &[&realm]).await?, MAX_RANGES)?;
        let mut ranges = Vec::with_capacity(rows.len());
        for row in &rows {
            ranges.extend(text(row, 0, "peer range", MAX_RANGE)?);
        }
        Ok(ranges)
    }

    pub async fn realm_options(&self, realm: &str) -> Result<Vec<(String, String)>, StoreError> {
        let sql = format!(
            "SELECT left(opt, 33), left(value, {}) FROM turn_realm_option WHERE realm = $1 LIMIT {}",
            MAX_OPTION_VALUE + 1,
            MAX_OPTIONS + 1
        );
        let rows = bounded_rows(
            ENGINE,
            "realm options",
            self.query("reading realm options", &sql, &[&realm]).await?,
            MAX_OPTIONS,
        )?;
        rows.iter()
            .map(|row| {
                Ok((
                    text_or_empty(row, 0, "realm option", 32)?,
                    text_or_empty(row, 1, "realm option value", MAX_OPTION_VALUE)?,
                ))
            })
            .collect()
    }

    pub async fn origin_realm(&self, origin: &str) -> Result<Option<String>, StoreError> {
        let sql = format!("SELECT left(realm, {}) FROM turn_origin_to_realm WHERE origin = $1", MAX_REALM + 1);
        let rows = self.query("looking up an origin", &sql, &[&origin]).await?;
        match rows.first() {
            None => Ok(None),
            Some(row) => Ok(text(row, 0, "origin realm", MAX_REALM)?.filter(|realm| !realm.is_empty())),
        }
    }

    pub async fn option_realms(&self) -> Result<Vec<String>, StoreError> {
        let sql =
            format!("SELECT DISTINCT left(realm, {}) FROM turn_realm_option LIMIT {}", MAX_REALM + 1, MAX_LIST + 1);
        let rows = bounded_rows(ENGINE, "realms", self.query("listing realm options", &sql, &[]).await?, MAX_LIST)?;
        rows.iter().map(|row| text_or_empty(row, 0, "realm", MAX_REALM)).collect()
    }

    pub async fn add_user(&self, realm: &str, name: &str, key: &str) -> Result<(), StoreError> {
        let sql = "INSERT INTO turnusers_lt (realm, name, hmackey) VALUES ($1, $2, $3) \
                   ON CONFLICT (realm, name) DO UPDATE SET hmackey = excluded.hmackey";
        self.execute("adding a user", sql, &[&realm, &name, &key]).await.map(drop)
    }

    pub async fn delete_user(&self, realm: &str, name: &str) -> Result<bool, StoreError> {
        let sql = "DELETE FROM turnusers_lt WHERE realm = $1 AND name = $2";
        Ok(self.execute("deleting a user", sql, &[&realm, &name]).await? > 0)
    }

    pub async fn list_users(&self, realm: Option<&str>) -> Result<Vec<UserEntry>, StoreError> {
        let sql = format!(
            "SELECT left(realm, {}), left(name, {}) FROM turnusers_lt WHERE $1::text IS NULL OR realm = $1 LIMIT {}",
            MAX_REALM + 1,
            MAX_NAME + 1,
            MAX_LIST + 1
        );
        let rows = bounded_rows(ENGINE, "users", self.query("listing users", &sql, &[&realm]).await?, MAX_LIST)?;
        rows.iter()
            .map(|row| {
                Ok(UserEntry {
                    realm: text_or_empty(row, 0, "realm", MAX_REALM)?,
                    name: text_or_empty(row, 1, "user name", MAX_NAME)?,
                })
            })
            .collect()
    }

    pub async fn add_secret(&self, realm: &str, secret: &str) -> Result<(), StoreError> {
        let sql = "INSERT INTO turn_secret (realm, value) VALUES ($1, $2) ON CONFLICT (realm, value) DO NOTHING";
        self.execute("adding a secret", sql, &[&realm, &secret]).await.map(drop)
    }

    pub async fn delete_secrets(&self, realm: &str, secret: Option<&str>) -> Result<u64, StoreError> {
        let sql = "DELETE FROM turn_secret WHERE realm = $1 AND ($2::text IS NULL OR value = $2)";
        self.execute("deleting secrets", sql, &[&realm, &secret]).await
    }

    pub async fn list_secrets(&self, realm: Option<&str>) -> Result<Vec<SecretEntry>, StoreError> {
        let sql = format!(
            "SELECT left(realm, {}), left(value, {}) FROM turn_secret WHERE $1::text IS NULL OR realm = $1 LIMIT {}",
            MAX_REALM + 1,
            MAX_SECRET + 1,
            MAX_LIST + 1
        );
        let rows = bounded_rows(ENGINE, "secrets", self.query("listing secrets", &sql, &[&realm]).await?, MAX_LIST)?;
        rows.iter()
            .map(|row| {
                Ok(SecretEntry {
                    realm: text_or_empty(row, 0, "realm", MAX_REALM)?,
                    secret: text_or_empty(row, 1, "REST secret", MAX_SECRET)?,
                })
            })
            .collect()
    }

    pub async fn set_realm_option(&self, realm: &str, option: &'static str, value: u64) -> Result<(), StoreError> {
        let what = "setting a realm option";
        if value == 0 {
            let sql = "DELETE FROM turn_realm_option WHERE realm = $1 AND opt = $2";
            return self.execute(what, sql, &[&realm, &option]).await.map(drop);
        }
        let sql = "INSERT INTO turn_realm_option (realm, opt, value) VALUES ($1, $2, $3) \
                   ON CONFLICT (realm, opt) DO UPDATE SET value = excluded.value";
        self.execute(what, sql, &[&realm, &option, &value.to_string()]).await.map(drop)
    }

    pub async fn record_usage(&self, rows: Vec<UsageRow>) -> Result<(), StoreError> {
        // One statement whatever the batch's size: a column array per
        // column, unnested into rows.
        let casts: Vec<String> = (1..=USAGE_TEXT.len())
            .map(|i| format!("${i}::text[]"))
            .chain((1..=USAGE_NUMBERS.len()).map(|i| format!("${}::bigint[]", USAGE_TEXT.len() + i)))
            .collect();
        let sql = format!("INSERT INTO tern_usage ({}) SELECT * FROM unnest({})", usage_columns(), casts.join(", "));
        let mut text: [Vec<&str>; 6] = Default::default();
        let mut numbers: [Vec<i64>; 6] = Default::default();
        for row in &rows {
            for (column, value) in text.iter_mut().zip(&row.text) {
                column.push(value);
            }
            for (column, value) in numbers.iter_mut().zip(row.numbers) {
                column.push(value);
            }
        }
        let params: Vec<&(dyn ToSql + Sync)> = text
            .iter()
            .map(|column| column as &(dyn ToSql + Sync))
            .chain(numbers.iter().map(|column| column as &(dyn ToSql + Sync)))
            .collect();
        self.execute("recording usage", &sql, &params).await.map(drop)
    }

    /// The newest rows `filter` matches, newest first.
    pub async fn usage(&self, filter: &UsageFilter) -> Result<Vec<UsageRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM tern_usage WHERE ($1::text IS NULL OR realm = $1) AND ($2::text IS NULL OR username = $2) \
             AND ($3::bigint IS NULL OR ended >= $3) ORDER BY id DESC LIMIT $4",
            usage_select()
        );
        let since = filter.since.map(seconds);
        let limit = i64::try_from(filter.limit).unwrap_or(i64::MAX);
        let rows = self.query("reading usage", &sql, &[&filter.realm, &filter.username, &since, &limit]).await?;
        let rows = bounded_rows(ENGINE, "usage records", rows, filter.limit)?;
        rows.iter()
            .map(|row| {
                UsageRow::read(
                    |index, name, max| text_or_empty(row, index, name, max),
                    |index, name| integer(row, index, name),
                )
            })
            .collect()
    }

    /// `false` when the realm is full.
    pub async fn revoke(&self, realm: &str, username: &str, expires: u64, now: u64) -> Result<bool, StoreError> {
        let what = "revoking";
        let (expires, now) = (seconds(expires), seconds(now));
        self.execute(what, DELETE_EXPIRED, &[&realm, &now]).await?;
        // The bound is checked in the statement that inserts; two nodes
        // revoking at the same instant may pass it by one each.
        let sql = "INSERT INTO tern_revocation (realm, username, expires) SELECT $1::text, $2::text, $3::bigint \
                   WHERE (SELECT count(*) FROM tern_revocation WHERE realm = $1 AND username <> $2) < $4 \
                   ON CONFLICT (realm, username) DO UPDATE SET expires = excluded.expires";
        let max = MAX_REVOCATIONS as i64;
        Ok(self.execute(what, sql, &[&realm, &username, &expires, &max]).await? > 0)
    }

    pub async fn unrevoke(&self, realm: &str, username: &str, now: u64) -> Result<bool, StoreError> {
        let sql = "DELETE FROM tern_revocation WHERE realm = $1 AND username = $2 RETURNING expires";
        let rows = self.query("ending a revocation", sql, &[&realm, &username]).await?;
        let mut unexpired = false;
        for row in &rows {
            unexpired |= integer(row, 0, "revocation expiry")? > seconds(now);
        }
        Ok(unexpired)
    }

    pub async fn revocations(&self, realm: &str, now: u64) -> Result<Vec<(String, i64)>, StoreError> {
        let what = "reading revocations";
        let now = seconds(now);
        self.execute(what, DELETE_EXPIRED, &[&realm, &now]).await?;
        let sql = format!(
            "SELECT left(username, {}), expires FROM tern_revocation WHERE realm = $1 AND expires > $2 LIMIT {}",
            MAX_NAME + 1,
            MAX_REVOCATIONS + 1
        );
        let rows =
            bounded_rows(ENGINE, "revocations", self.query(what, &sql, &[&realm, &now]).await?, MAX_REVOCATIONS)?;
        rows.iter()
            .map(|row| Ok((text_or_empty(row, 0, "revoked name", MAX_NAME)?, integer(row, 1, "revocation expiry")?)))
            .collect()
    }

    /// Listens until the connection fails, sending what it hears to `feed`;
    /// `Ok` when the feed's subscriber is gone.
    async fn listen(&self, feed: &mut super::FeedSender) -> Result<(), StoreError> {
        let (sender, mut notifications) = mpsc::channel(NOTIFICATION_BUFFER);
        let client = self.connect(Some(sender)).await?;
        let what = "listening for changes";
        within(ENGINE, what, self.inner.timeout, async {
            client.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}")).await.map_err(error(what))
        })
        .await?;
        if !feed.send(FeedEvent::Changed(Change::All)) {
            return Ok(());
        }
        let mut ping = tokio::time::interval(FEED_PING);
        loop {
            tokio::select! {
                notification = notifications.recv() => match notification {
                    Some(Ok(payload)) => {
                        if let Some(change) = schema::notice_change(payload.as_bytes())
                            && !feed.send(FeedEvent::Changed(change))
                        {
                            return Ok(());
                        }
                    }
                    Some(Err(error)) => return Err(error),
                    None => return Err(StoreError::Unreachable { engine: ENGINE, message: "the connection closed".into() }),
                },
                _ = ping.tick() => {
                    if feed.is_closed() {
                        return Ok(());
                    }
                    within(ENGINE, what, self.inner.timeout, async {
                        client.batch_execute("SELECT 1").await.map_err(error(what))
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

impl super::Listener for PostgresStore {
    const ENGINE: Engine = ENGINE;

    fn listen(&self, feed: &mut super::FeedSender) -> impl Future<Output = Result<(), StoreError>> + Send {
        PostgresStore::listen(self, feed)
    }
}
