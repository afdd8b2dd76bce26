//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere, so a misspelt key is an
//! error, not a silent default) and every error names the file, the key and
//! what is wrong. Command-line flags override the file after it is validated;
//! clap checks their syntax, so values reaching [`Overrides`] are typed.

use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::io::RuntimeConfig;
use crate::proto::server::ServerConfig;

/// The listen address when neither the file nor a flag gives one.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3478";
/// The realm when none is configured.
pub const DEFAULT_REALM: &str = "tern";
/// REALM is at most 763 bytes (RFC 8489 §14.9).
const MAX_REALM_LEN: usize = 763;
/// More workers than this is a typo, not a machine.
const MAX_WORKERS: usize = 1024;

/// A validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: Vec<SocketAddr>,
    pub realm: String,
    /// Worker threads; 0 in the file means one per CPU core and is resolved here.
    pub workers: usize,
    pub software: Option<String>,
    pub rfc3489: bool,
    pub reason_phrases: bool,
    pub log: LogConfig,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Error => "error",
            Self::Warn => "warn",
            Self::Info => "info",
            Self::Debug => "debug",
            Self::Trace => "trace",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Values given on the command line; each replaces the file's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    pub realm: Option<String>,
    pub workers: Option<usize>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
}

/// A configuration that cannot be used. The message names the file (or the
/// command line), the key, and what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Syntax { file: String, message: String },
    #[error("{file}: key `{key}`: {message}")]
    Invalid { file: String, key: String, message: String },
}

/// The file as written: every key optional, unknown keys refused.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    realm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    workers: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    software: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rfc3489: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_phrases: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<FileLog>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<LogLevel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<LogFormat>,
}

impl Config {
    /// Reads and validates `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
        Self::parse(&text, &file)
    }

    /// The embedded defaults, used when no file is given.
    pub fn defaults() -> Self {
        Self::from_file(FileConfig::default(), "defaults").expect("the embedded defaults are valid")
    }

    /// Parses TOML `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::Syntax { file: file.to_owned(), message: describe_toml_error(&e, text) })?;
        let raw: FileConfig = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let message = describe_toml_error(e.inner(), text);
            if key == "." || key.is_empty() {
                ConfigError::Syntax { file: file.to_owned(), message }
            } else {
                ConfigError::Invalid { file: file.to_owned(), key, message }
            }
        })?;
        Self::from_file(raw, file)
    }

    fn from_file(raw: FileConfig, file: &str) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { file: file.to_owned(), key, message };
        let listen = match raw.listen {
            None => vec![DEFAULT_LISTEN.parse().expect("the default listen address parses")],
            Some(list) if list.is_empty() => {
                return Err(invalid("listen".into(), "needs at least one address".into()));
            }
            Some(list) => list
                .iter()
                .enumerate()
                .map(|(i, text)| parse_socket_addr(text).map_err(|m| invalid(format!("listen[{i}]"), m)))
                .collect::<Result<_, _>>()?,
        };
        let realm = raw.realm.unwrap_or_else(|| DEFAULT_REALM.to_owned());
        validate_realm(&realm).map_err(|m| invalid("realm".into(), m))?;
        let workers = resolve_workers(raw.workers.unwrap_or(0)).map_err(|m| invalid("workers".into(), m))?;
        let software = raw.software.filter(|s| !s.is_empty());
        if let Some(software) = &software
            && software.len() > MAX_REALM_LEN
        {
            return Err(invalid("software".into(), format!("is {} bytes; at most 763", software.len())));
        }
        let log = raw.log.unwrap_or_default();
        Ok(Self {
            listen,
            realm,
            workers,
            software,
            rfc3489: raw.rfc3489.unwrap_or(false),
            reason_phrases: raw.reason_phrases.unwrap_or(false),
            log: LogConfig {
                level: log.level.unwrap_or(LogLevel::Info),
                format: log.format.unwrap_or(LogFormat::Text),
            },
        })
    }

    /// Applies command-line values over the file's.
    pub fn apply(&mut self, overrides: &Overrides) -> Result<(), ConfigError> {
        let invalid =
            |key: &str, message: String| ConfigError::Invalid { file: "command line".into(), key: key.into(), message };
        if !overrides.listen.is_empty() {
            self.listen = overrides.listen.clone();
        }
        if let Some(realm) = &overrides.realm {
            validate_realm(realm).map_err(|m| invalid("--realm", m))?;
            self.realm = realm.clone();
        }
        if let Some(workers) = overrides.workers {
            self.workers = resolve_workers(workers).map_err(|m| invalid("--workers", m))?;
        }
        if let Some(level) = overrides.log_level {
            self.log.level = level;
        }
        if let Some(format) = overrides.log_format {
            self.log.format = format;
        }
        Ok(())
    }

    /// What the IO driver needs.
    pub fn runtime(&self) -> RuntimeConfig {
        RuntimeConfig {
            listen: self.listen.clone(),
            workers: self.workers,
            server: ServerConfig {
                software: self.software.clone(),
                rfc3489: self.rfc3489,
                reason_phrases: self.reason_phrases,
            },
        }
    }

    /// The effective settings as a TOML file that would reproduce them.
    pub fn to_toml(&self) -> String {
        let file = FileConfig {
            listen: Some(self.listen.iter().map(ToString::to_string).collect()),
            realm: Some(self.realm.clone()),
            workers: Some(self.workers),
            software: Some(self.software.clone().unwrap_or_default()),
            rfc3489: Some(self.rfc3489),
            reason_phrases: Some(self.reason_phrases),
            log: Some(FileLog { level: Some(self.log.level), format: Some(self.log.format) }),
        };
        toml::to_string(&file).expect("the configuration serialises")
    }
}

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text)
        .map_err(|_| format!("{text:?} is not an IP:port address (like 0.0.0.0:3478 or [::]:3478)"))
}

fn validate_realm(realm: &str) -> Result<(), String> {
    if realm.is_empty() {
        return Err("must not be empty".into());
    }
    if realm.len() > MAX_REALM_LEN {
        return Err(format!("is {} bytes; at most {MAX_REALM_LEN}", realm.len()));
    }
    if realm.chars().any(|c| c.is_control() || c == '"') {
        return Err("must not contain control characters or quotes".into());
    }
    Ok(())
}

fn resolve_workers(workers: usize) -> Result<usize, String> {
    match workers {
        0 => Ok(std::thread::available_parallelism().map_or(1, |n| n.get())),
        n if n > MAX_WORKERS => Err(format!("{n} is more than the maximum of {MAX_WORKERS}")),
        n => Ok(n),
    }
}

/// The toml crate's message with the line and column of its span, without
/// the multi-line snippet, so the error fits on one line with its key.
fn describe_toml_error(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim_end_matches('\n').to_owned();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}

/// Parses a `--listen` value for clap.
pub fn parse_listen_flag(text: &str) -> Result<SocketAddr, String> {
    parse_socket_addr(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        Config::parse(text, "test.toml").expect_err("must be refused").to_string()
    }

    #[test]
    fn defaults_listen_on_all_ipv4_addresses() {
        let config = Config::parse("", "empty.toml").expect("empty file is valid");
        assert_eq!(config.listen, vec!["0.0.0.0:3478".parse::<SocketAddr>().expect("literal")]);
        assert!(config.workers >= 1);
        assert_eq!(config, Config::defaults());
    }

    #[test]
    fn unknown_key_is_named() {
        let message = error("lisen = [\"127.0.0.1:3478\"]\n");
        assert!(message.starts_with("test.toml: "), "{message}");
        assert!(message.contains("lisen"), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn unknown_key_in_a_table_is_named() {
        let message = error("[log]\nlevle = \"info\"\n");
        assert!(message.contains("levle"), "{message}");
    }

    #[test]
    fn bad_listen_address_names_the_index() {
        let message = error("listen = [\"127.0.0.1:3478\", \"localhost\"]\n");
        assert_eq!(
            message,
            "test.toml: key `listen[1]`: \"localhost\" is not an IP:port address (like 0.0.0.0:3478 or [::]:3478)"
        );
    }

    #[test]
    fn wrong_type_names_the_key() {
        let message = error("workers = \"four\"\n");
        assert!(message.starts_with("test.toml: key `workers`: "), "{message}");
    }

    #[test]
    fn bad_enum_value_names_the_key() {
        let message = error("[log]\nlevel = \"loud\"\n");
        assert!(message.starts_with("test.toml: key `log.level`: "), "{message}");
        assert!(message.contains("loud"), "{message}");
    }

    #[test]
    fn syntax_error_gives_the_line() {
        let message = error("realm = \"unterminated\n");
        assert!(message.starts_with("test.toml: "), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn empty_realm_and_absurd_workers_are_refused() {
        assert_eq!(error("realm = \"\"\n"), "test.toml: key `realm`: must not be empty");
        assert_eq!(error("workers = 5000\n"), "test.toml: key `workers`: 5000 is more than the maximum of 1024");
        assert_eq!(error("listen = []\n"), "test.toml: key `listen`: needs at least one address");
    }

    #[test]
    fn overrides_replace_file_values() {
        let mut config = Config::parse("listen = [\"127.0.0.1:3478\"]\nrealm = \"a\"\n", "t.toml").expect("valid");
        config
            .apply(&Overrides {
                listen: vec!["127.0.0.1:9999".parse().expect("literal")],
                realm: Some("b".into()),
                workers: Some(3),
                log_level: Some(LogLevel::Debug),
                log_format: Some(LogFormat::Json),
            })
            .expect("valid overrides");
        assert_eq!(config.listen, vec!["127.0.0.1:9999".parse::<SocketAddr>().expect("literal")]);
        assert_eq!((config.realm.as_str(), config.workers), ("b", 3));
        assert_eq!(config.log, LogConfig { level: LogLevel::Debug, format: LogFormat::Json });
    }

    #[test]
    fn effective_settings_round_trip_through_toml() {
        let config = Config::parse("listen = [\"[::1]:3478\", \"127.0.0.1:3478\"]\nworkers = 2\n", "t").expect("valid");
        let again = Config::parse(&config.to_toml(), "printed").expect("printed config is valid");
        assert_eq!(again, config);
    }
}
