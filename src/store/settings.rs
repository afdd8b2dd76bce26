//! Where the store is and how to log in: the `[store]` URL, checked as the
//! configuration is read, and the password, which comes from a file or the
//! environment so that it never has to be typed on a command line, where
//! every user of the machine can read it in the process list.
//!
//! The URL is kept as text (each engine's client parses its own form again
//! when it connects, from the same text), so the settings stay comparable and
//! printable; printing redacts any password the URL holds.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use redis::IntoConnectionInfo;

use super::Engine;

/// The environment variable that holds the store's password, when no
/// `password_file` is configured.
pub const PASSWORD_ENV: &str = "TERN_STORE_PASSWORD";
/// A password file larger than this is not a password file.
const MAX_PASSWORD_FILE: u64 = 4096;
/// What replaces a password when a URL is printed.
const REDACTED: &str = "<redacted>";

/// A store URL that its engine's client accepts: `sqlite:///ABSOLUTE/PATH`,
/// `postgresql://…` or `postgres://…` (libpq's URL form, TLS by `sslmode`),
/// `redis://…` or `rediss://…` (TLS), or `redis+unix:///PATH` / `unix:///PATH`.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    engine: Engine,
    text: String,
}

impl StoreUrl {
    /// Checks `text` as its engine's client would read it.
    pub fn parse(text: &str) -> Result<Self, String> {
        let scheme = text.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
        let engine = match scheme.as_deref() {
            Some("sqlite") => Engine::Sqlite,
            Some("postgresql" | "postgres") => Engine::Postgres,
            Some("redis" | "rediss" | "redis+unix" | "unix") => Engine::Redis,
            _ => {
                return Err(format!(
                    "{:?} is not a store URL: use sqlite:///PATH, postgresql://… or redis://…",
                    redact(text)
                ));
            }
        };
        let url = Self { engine, text: text.to_owned() };
        match engine {
            Engine::Sqlite => {
                url.sqlite_path()?;
            }
            Engine::Postgres => {
                url.postgres_config()?;
            }
            Engine::Redis => {
                url.redis_info()?;
            }
        }
        Ok(url)
    }

    pub fn engine(&self) -> Engine {
        self.engine
    }

    /// Whether the URL itself holds a password (which `--store` refuses).
    pub fn has_password(&self) -> bool {
        match self.engine {
            Engine::Sqlite => false,
            Engine::Postgres => self.postgres_config().is_ok_and(|c| c.get_password().is_some()),
            Engine::Redis => self.redis_info().is_ok_and(|info| info.redis_settings().password().is_some()),
        }
    }

    /// The database file of a `sqlite://` URL.
    pub(super) fn sqlite_path(&self) -> Result<PathBuf, String> {
        let path = self.text.split_once("://").map_or("", |(_, rest)| rest);
        let path = path.split_once('?').map_or(path, |(path, _)| path);
        if !path.starts_with('/') || path.len() < 2 {
            return Err(format!(
                "{:?}: a SQLite URL names an absolute path, like sqlite:///var/lib/tern/tern.db",
                self.text
            ));
        }
        Ok(PathBuf::from(path))
    }

    pub(super) fn postgres_config(&self) -> Result<tokio_postgres::Config, String> {
        tokio_postgres::Config::from_str(&self.text)
            .map_err(|e| format!("{:?} is not a PostgreSQL URL: {e}", redact(&self.text)))
    }

    pub(super) fn redis_info(&self) -> Result<redis::ConnectionInfo, String> {
        self.text
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("{:?} is not a Redis URL: {e}", redact(&self.text)))
    }
}

/// The URL with any password in it replaced.
impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact(&self.text))
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({self})")
    }
}

/// `text` with the password of its `user:password@` part, and of a
/// `password=` query parameter, replaced.
fn redact(text: &str) -> String {
    let mut out = text.to_owned();
    if let Some((scheme, rest)) = text.split_once("://") {
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@')
            && let Some(colon) = rest[..at].find(':')
        {
            out = format!("{scheme}://{}:{REDACTED}{}", &rest[..colon], &rest[at..]);
        }
    }
    if let Some(start) = out.find("password=") {
        let value = start + "password=".len();
        let end = out[value..].find('&').map_or(out.len(), |i| value + i);
        out.replace_range(value..end, REDACTED);
    }
    out
}

/// A password; never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(password: String) -> Self {
        Self(password)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Password(..)")
    }
}

/// Everything needed to reach the store.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoreSettings {
    pub url: StoreUrl,
    /// From `password_file`, else [`PASSWORD_ENV`], else whatever the URL
    /// holds; it replaces the URL's.
    pub password: Option<Password>,
    /// How long one query, or one connection attempt, may take.
    pub timeout: Duration,
    /// A PEM file of CA certificates to trust instead of the system's, for
    /// TLS to PostgreSQL or Redis.
    pub tls_ca: Option<PathBuf>,
}

impl StoreSettings {
    /// The settings with the password from `password_file`, or else from
    /// the environment. The error says what is wrong with the file (the
    /// caller names the key).
    pub fn new(
        url: StoreUrl,
        password_file: Option<&Path>,
        timeout: Duration,
        tls_ca: Option<PathBuf>,
    ) -> Result<Self, String> {
        let password = match password_file {
            Some(path) => Some(read_password_file(path)?),
            None => std::env::var(PASSWORD_ENV).ok().filter(|p| !p.is_empty()).map(Password),
        };
        Ok(Self { url, password, timeout, tls_ca })
    }
}

/// The first line of `path`, which must not be empty.
fn read_password_file(path: &Path) -> Result<Password, String> {
    let name = path.display();
    let size = std::fs::metadata(path).map_err(|e| format!("cannot read {name}: {e}"))?.len();
    if size > MAX_PASSWORD_FILE {
        return Err(format!("{name} is {size} bytes; a password file holds one line"));
    }
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {name}: {e}"))?;
    let line = text.lines().next().unwrap_or("").trim_end_matches('\r');
    if line.is_empty() {
        return Err(format!("{name} is empty; it should hold the password on its first line"));
    }
    Ok(Password(line.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_engine_is_recognised_by_its_scheme() {
        let engine = |text: &str| StoreUrl::parse(text).map(|url| url.engine());
        assert_eq!(engine("sqlite:///var/lib/tern/tern.db"), Ok(Engine::Sqlite));
        assert_eq!(engine("postgresql://tern@db.example/tern?sslmode=require"), Ok(Engine::Postgres));
        assert_eq!(engine("postgres://tern@%2Frun%2Fpostgresql/tern"), Ok(Engine::Postgres));
        assert_eq!(engine("redis://127.0.0.1:6379/2"), Ok(Engine::Redis));
        assert_eq!(engine("rediss://cache.example:6380"), Ok(Engine::Redis));
        assert_eq!(engine("redis+unix:///run/redis.sock"), Ok(Engine::Redis));
    }

    #[test]
    fn bad_urls_say_what_is_expected() {
        let error = |text: &str| StoreUrl::parse(text).expect_err("must be refused");
        assert!(error("mysql://x").contains("use sqlite:///PATH"), "{}", error("mysql://x"));
        assert!(error("sqlite://tern.db").contains("absolute path"));
        assert!(error("redis://:6379:x").contains("not a Redis URL"));
        assert!(error("postgresql://h/db?sslmode=sometimes").contains("not a PostgreSQL URL"));
    }

    #[test]
    fn printing_redacts_passwords() {
        let url = StoreUrl::parse("postgresql://tern:hunter2@db.example/tern").expect("valid");
        assert_eq!(url.to_string(), "postgresql://tern:<redacted>@db.example/tern");
        assert!(url.has_password());
        let url = StoreUrl::parse("redis://:hunter2@127.0.0.1/0").expect("valid");
        assert_eq!(url.to_string(), "redis://:<redacted>@127.0.0.1/0");
        assert!(url.has_password());
        let url = StoreUrl::parse("postgresql:///tern?host=/tmp&password=hunter2&user=t").expect("valid");
        assert_eq!(url.to_string(), "postgresql:///tern?host=/tmp&password=<redacted>&user=t");
        assert!(!StoreUrl::parse("redis://127.0.0.1/0").expect("valid").has_password());
    }

    #[test]
    fn the_password_file_gives_its_first_line() {
        let dir = std::env::temp_dir().join(format!("tern-store-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let file = dir.join("pass");
        std::fs::write(&file, "s3cret\nignored\n").expect("write");
        assert_eq!(read_password_file(&file).expect("read").expose(), "s3cret");
        std::fs::write(&file, "\n").expect("write");
        assert!(read_password_file(&file).expect_err("empty").contains("is empty"));
        let missing = dir.join("missing");
        assert!(read_password_file(&missing).expect_err("missing").starts_with("cannot read"));
    }
}
