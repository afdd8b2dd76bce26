//! The configuration file: TOML in, a validated [`Config`] out.
//!
//! Parsing is strict (`deny_unknown_fields` everywhere, so a misspelt key is an
//! error, not a silent default) and every error names the file, the key and
//! what is wrong. Command-line flags override the file after it is validated;
//! clap checks their syntax, so values reaching [`Overrides`] are typed. Rules
//! that involve several keys (TURN needs credentials) are checked last, over
//! the merged result.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::io::{QuotaLimits, RuntimeConfig, TlsSettings};
use crate::proto::auth::{Authenticator, StaticCredentials, UserKeys};
use crate::proto::nat_discovery::NatDiscovery;
use crate::proto::policy::PeerPolicy;
use crate::proto::rate_limit::RateLimit;
use crate::proto::server::{ExternalIp, ServerConfig, TurnConfig};

/// The listen address when neither the file nor a flag gives one.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3478";
/// The realm when none is configured.
pub const DEFAULT_REALM: &str = "tern";
/// The relay port range when none is configured: the IANA dynamic range.
pub const DEFAULT_RELAY_PORTS: (u16, u16) = (49152, 65535);
/// SO_RCVBUF/SO_SNDBUF of UDP listen sockets: 4 MiB holds a few thousand
/// datagrams, enough to ride out a scheduling hiccup at hundreds of
/// thousands of packets per second. The kernel's default (208 KiB) is not.
pub const DEFAULT_UDP_BUFFER: u32 = 4 * 1024 * 1024;
/// TCP connections from one source IP: enough for a large office behind one
/// NAT, too few to exhaust descriptors from one host.
pub const DEFAULT_TCP_PER_IP: u32 = 500;
/// Unauthenticated answers per second per source IP. Every allocation
/// starts with one (the 401), and a large NAT puts thousands of users behind
/// one address, so this is generous; a spoofed flood still gets at most
/// about 40 KB/s of small answers per worker reflected at its victim.
pub const DEFAULT_RATE_LIMIT: u32 = 500;
/// The TLS listen address when a certificate is configured and no TLS
/// address is: the `turns:`/`stuns:` port (RFC 8656 §18, RFC 8489 §18.4).
pub const DEFAULT_TLS_LISTEN: &str = "0.0.0.0:5349";
/// TLS handshakes in progress per worker. A handshake costs one key
/// exchange and a signature (well under a millisecond each), so 256 at once
/// is more than a busy server starts in a second, yet bounds what a flood of
/// half-open handshakes can hold.
pub const DEFAULT_TLS_MAX_HANDSHAKES: u32 = 256;
/// Seconds a TLS handshake may take: generous for a slow mobile link,
/// short enough that idle connections do not pile up.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: u32 = 10;
/// REALM is at most 763 bytes (RFC 8489 §14.9).
const MAX_REALM_LEN: usize = 763;
/// What `tern check` prints instead of a password, key or secret.
const REDACTED: &str = "<redacted>";
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
    /// RFC 5780 NAT behaviour discovery, answered from `alternate_ip` and
    /// `alternate_port` too.
    pub rfc5780: bool,
    pub alternate_ip: Option<IpAddr>,
    /// Unset: the primary listen port plus one.
    pub alternate_port: Option<u16>,
    pub reason_phrases: bool,
    /// `turn` as configured; `None` means on exactly when credentials exist.
    pub turn: Option<bool>,
    pub relay_ips: Vec<IpAddr>,
    pub relay_ports: (u16, u16),
    pub external_ips: Vec<ExternalIp>,
    pub allow_peers: Vec<IpNet>,
    pub deny_peers: Vec<IpNet>,
    pub user_quota: u32,
    pub total_quota: u32,
    /// Where to send new allocations once `total_quota` is reached (300).
    pub alternate_servers: Vec<SocketAddr>,
    /// The alternates' domain, for TLS clients to check their certificate
    /// against (ALTERNATE-DOMAIN, RFC 8489 §14.16).
    pub alternate_domain: Option<String>,
    /// TCP connections from one IP, and in all (0: no limit).
    pub max_tcp_per_ip: u32,
    pub max_tcp_connections: u32,
    /// Bytes per second an allocation may relay each way (0: no limit).
    pub max_bps: u32,
    pub max_permissions: u32,
    pub max_channels: u32,
    /// RFC 6062 peer data connections per TCP allocation.
    pub max_tcp_peer_connections: u32,
    pub default_lifetime: u32,
    pub max_lifetime: u32,
    pub rfc5766_channels: bool,
    pub udp_buffer: u32,
    /// Unauthenticated answers per second per source IP (0: no limit).
    pub rate_limit: u32,
    /// Answers a quiet source may get at once; unset: twice `rate_limit`.
    pub rate_limit_burst: Option<u32>,
    /// Limit loopback sources too (they are exempt by default).
    pub rate_limit_loopback: bool,
    /// The user and group to run as after binding (started as root).
    pub user: Option<String>,
    pub group: Option<String>,
    pub auth: AuthConfig,
    pub log: LogConfig,
    pub tls: TlsConfig,
    /// `[metrics] listen`: where Prometheus scrapes `/metrics`; off when unset.
    pub metrics_listen: Option<SocketAddr>,
}

/// `[tls]`: TURN and STUN over TLS (`turns:`, `stuns:`). On exactly when a
/// certificate is configured.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// TLS listen addresses; defaults to [`DEFAULT_TLS_LISTEN`] once a
    /// certificate is set.
    pub listen: Vec<SocketAddr>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub max_handshakes: u32,
    /// Seconds.
    pub handshake_timeout: u32,
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// A certificate without TLS addresses serves on the default one.
    fn resolve_listen(&mut self) {
        if self.cert.is_some() && self.listen.is_empty() {
            self.listen = vec![DEFAULT_TLS_LISTEN.parse().expect("the default TLS listen address parses")];
        }
    }
}

/// `[auth]`: who may relay.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuthConfig {
    pub users: BTreeMap<String, UserSecret>,
    pub secrets: Vec<String>,
    pub allow_anonymous: bool,
    /// Seconds a nonce stays valid.
    pub nonce_lifetime: u32,
}

/// A static user's credential: a password, or the long-term key itself
/// (MD5 of `user:realm:password`, as coturn's `turnadmin -k` prints it).
#[derive(Clone, PartialEq, Eq)]
pub enum UserSecret {
    Password(String),
    Key([u8; 16]),
}

impl fmt::Debug for UserSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Password(_) => "Password(..)",
            Self::Key(_) => "Key(..)",
        })
    }
}

impl AuthConfig {
    pub fn has_credentials(&self) -> bool {
        !self.users.is_empty() || !self.secrets.is_empty()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogConfig {
    pub level: LogLevel,
    pub format: LogFormat,
    /// One line per allocation created and deleted (with its traffic), at
    /// any level: an audit trail that costs a few microseconds per
    /// allocation, so it is off by default.
    pub allocations: bool,
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

impl fmt::Display for LogLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Values given on the command line. Lists replace the file's lists, except
/// users and secrets, which are added to the file's.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Vec<SocketAddr>,
    pub realm: Option<String>,
    pub workers: Option<usize>,
    pub log_level: Option<LogLevel>,
    pub log_format: Option<LogFormat>,
    pub log_allocations: bool,
    pub stun_only: bool,
    pub rfc5780: bool,
    pub alternate_ip: Option<IpAddr>,
    pub alternate_port: Option<u16>,
    pub users: Vec<(String, String)>,
    pub secrets: Vec<String>,
    pub allow_anonymous: bool,
    pub relay_ips: Vec<IpAddr>,
    pub relay_ports: Option<(u16, u16)>,
    pub external_ips: Vec<ExternalIp>,
    pub allow_peers: Vec<IpNet>,
    pub deny_peers: Vec<IpNet>,
    pub user_quota: Option<u32>,
    pub total_quota: Option<u32>,
    pub alternate_servers: Vec<SocketAddr>,
    pub alternate_domain: Option<String>,
    pub max_tcp_per_ip: Option<u32>,
    pub max_bps: Option<u32>,
    pub rfc5766_channels: bool,
    pub udp_buffer: Option<u32>,
    pub rate_limit: Option<u32>,
    pub rate_limit_loopback: bool,
    pub user: Option<String>,
    pub group: Option<String>,
    pub tls_listen: Vec<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
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
    rfc5780: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alternate_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alternate_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason_phrases: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    turn: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_ips: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    relay_ports: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    external_ip: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_peers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    deny_peers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_quota: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_quota: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alternate_servers: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    alternate_domain: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tcp_per_ip: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tcp_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_bps: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_permissions: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_channels: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tcp_peer_connections: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    default_lifetime: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_lifetime: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rfc5766_channels: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    udp_buffer: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_burst: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rate_limit_loopback: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auth: Option<FileAuth>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log: Option<FileLog>,
    #[serde(skip_serializing_if = "Option::is_none")]
    tls: Option<FileTls>,
    #[serde(skip_serializing_if = "Option::is_none")]
    metrics: Option<FileMetrics>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    listen: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_handshakes: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    handshake_timeout: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<BTreeMap<String, toml::Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    secrets: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allow_anonymous: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    nonce_lifetime: Option<u32>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct FileLog {
    #[serde(skip_serializing_if = "Option::is_none")]
    level: Option<LogLevel>,
    #[serde(skip_serializing_if = "Option::is_none")]
    format: Option<LogFormat>,
    #[serde(skip_serializing_if = "Option::is_none")]
    allocations: Option<bool>,
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
        let config = Self::from_file(raw, file)?;
        config.check_combination(file)?;
        Ok(config)
    }

    fn from_file(raw: FileConfig, file: &str) -> Result<Self, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid { file: file.to_owned(), key, message };
        let listen = match raw.listen {
            None => vec![DEFAULT_LISTEN.parse().expect("the default listen address parses")],
            Some(list) if list.is_empty() => {
                return Err(invalid("listen".into(), "needs at least one address".into()));
            }
            Some(list) => parse_list(&list, "listen", parse_socket_addr).map_err(|(k, m)| invalid(k, m))?,
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
        let relay_ips =
            parse_list(&raw.relay_ips.unwrap_or_default(), "relay_ips", parse_ip).map_err(|(k, m)| invalid(k, m))?;
        let alternate_ip = raw
            .alternate_ip
            .as_deref()
            .map(parse_alternate_ip_flag)
            .transpose()
            .map_err(|m| invalid("alternate_ip".into(), m))?;
        let relay_ports = match raw.relay_ports {
            Some(text) => parse_port_range(&text).map_err(|m| invalid("relay_ports".into(), m))?,
            None => DEFAULT_RELAY_PORTS,
        };
        let external_ips = parse_list(&raw.external_ip.unwrap_or_default(), "external_ip", parse_external_ip)
            .map_err(|(k, m)| invalid(k, m))?;
        let allow_peers = parse_list(&raw.allow_peers.unwrap_or_default(), "allow_peers", parse_cidr)
            .map_err(|(k, m)| invalid(k, m))?;
        let deny_peers = parse_list(&raw.deny_peers.unwrap_or_default(), "deny_peers", parse_cidr)
            .map_err(|(k, m)| invalid(k, m))?;
        let alternate_servers =
            parse_list(&raw.alternate_servers.unwrap_or_default(), "alternate_servers", parse_alternate_server)
                .map_err(|(k, m)| invalid(k, m))?;
        let auth = raw.auth.unwrap_or_default();
        let mut users = BTreeMap::new();
        for (name, value) in auth.users.unwrap_or_default() {
            let secret = parse_user_secret(&value).map_err(|m| invalid(format!("auth.users.{name}"), m))?;
            users.insert(name, secret);
        }
        let secrets = auth.secrets.unwrap_or_default();
        if let Some(index) = secrets.iter().position(String::is_empty) {
            return Err(invalid(format!("auth.secrets[{index}]"), "must not be empty".into()));
        }
        let log = raw.log.unwrap_or_default();
        let tls = raw.tls.unwrap_or_default();
        let mut tls = TlsConfig {
            listen: parse_list(&tls.listen.unwrap_or_default(), "tls.listen", parse_socket_addr)
                .map_err(|(k, m)| invalid(k, m))?,
            cert: tls.cert.filter(|c| !c.is_empty()).map(PathBuf::from),
            key: tls.key.filter(|k| !k.is_empty()).map(PathBuf::from),
            max_handshakes: positive(tls.max_handshakes.unwrap_or(DEFAULT_TLS_MAX_HANDSHAKES), "tls.max_handshakes")
                .map_err(|(k, m)| invalid(k, m))?,
            handshake_timeout: positive(
                tls.handshake_timeout.unwrap_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT),
                "tls.handshake_timeout",
            )
            .map_err(|(k, m)| invalid(k, m))?,
        };
        tls.resolve_listen();
        let metrics_listen = match raw.metrics.and_then(|m| m.listen).filter(|l| !l.is_empty()) {
            Some(text) => Some(parse_socket_addr(&text).map_err(|m| invalid("metrics.listen".into(), m))?),
            None => None,
        };
        Ok(Self {
            listen,
            realm,
            workers,
            software,
            rfc3489: raw.rfc3489.unwrap_or(false),
            rfc5780: raw.rfc5780.unwrap_or(false),
            alternate_ip,
            alternate_port: raw.alternate_port,
            reason_phrases: raw.reason_phrases.unwrap_or(false),
            turn: raw.turn,
            relay_ips,
            relay_ports,
            external_ips,
            allow_peers,
            deny_peers,
            user_quota: raw.user_quota.unwrap_or(10),
            total_quota: raw.total_quota.unwrap_or(0),
            alternate_servers,
            alternate_domain: raw
                .alternate_domain
                .map(|d| check_domain(d, "alternate_domain"))
                .transpose()
                .map_err(|(k, m)| invalid(k, m))?,
            max_tcp_per_ip: raw.max_tcp_per_ip.unwrap_or(DEFAULT_TCP_PER_IP),
            max_tcp_connections: raw.max_tcp_connections.unwrap_or(0),
            max_bps: raw.max_bps.unwrap_or(0),
            max_permissions: positive(raw.max_permissions.unwrap_or(64), "max_permissions")
                .map_err(|(k, m)| invalid(k, m))?,
            max_channels: positive(raw.max_channels.unwrap_or(64), "max_channels").map_err(|(k, m)| invalid(k, m))?,
            max_tcp_peer_connections: positive(raw.max_tcp_peer_connections.unwrap_or(64), "max_tcp_peer_connections")
                .map_err(|(k, m)| invalid(k, m))?,
            default_lifetime: positive(raw.default_lifetime.unwrap_or(600), "default_lifetime")
                .map_err(|(k, m)| invalid(k, m))?,
            max_lifetime: positive(raw.max_lifetime.unwrap_or(3600), "max_lifetime").map_err(|(k, m)| invalid(k, m))?,
            rfc5766_channels: raw.rfc5766_channels.unwrap_or(false),
            udp_buffer: raw.udp_buffer.unwrap_or(DEFAULT_UDP_BUFFER),
            rate_limit: raw.rate_limit.unwrap_or(DEFAULT_RATE_LIMIT),
            rate_limit_loopback: raw.rate_limit_loopback.unwrap_or(false),
            user: raw.user.filter(|u| !u.is_empty()),
            group: raw.group.filter(|g| !g.is_empty()),
            rate_limit_burst: raw
                .rate_limit_burst
                .map(|burst| positive(burst, "rate_limit_burst"))
                .transpose()
                .map_err(|(k, m)| invalid(k, m))?,
            auth: AuthConfig {
                users,
                secrets,
                allow_anonymous: auth.allow_anonymous.unwrap_or(false),
                nonce_lifetime: positive(auth.nonce_lifetime.unwrap_or(600), "auth.nonce_lifetime")
                    .map_err(|(k, m)| invalid(k, m))?,
            },
            log: LogConfig {
                level: log.level.unwrap_or(LogLevel::Info),
                format: log.format.unwrap_or(LogFormat::Text),
                allocations: log.allocations.unwrap_or(false),
            },
            tls,
            metrics_listen,
        })
    }

    /// Applies command-line values over the file's, then checks the result
    /// as a whole again.
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
        self.log.allocations |= overrides.log_allocations;
        if overrides.stun_only {
            self.turn = Some(false);
        }
        self.rfc5780 |= overrides.rfc5780;
        if let Some(ip) = overrides.alternate_ip {
            self.alternate_ip = Some(ip);
        }
        if let Some(port) = overrides.alternate_port {
            self.alternate_port = Some(port);
        }
        for (name, password) in &overrides.users {
            self.auth.users.insert(name.clone(), UserSecret::Password(password.clone()));
        }
        self.auth.secrets.extend(overrides.secrets.iter().cloned());
        self.auth.allow_anonymous |= overrides.allow_anonymous;
        if !overrides.relay_ips.is_empty() {
            self.relay_ips = overrides.relay_ips.clone();
        }
        if let Some(ports) = overrides.relay_ports {
            self.relay_ports = ports;
        }
        if !overrides.external_ips.is_empty() {
            self.external_ips = overrides.external_ips.clone();
        }
        if !overrides.allow_peers.is_empty() {
            self.allow_peers = overrides.allow_peers.clone();
        }
        if !overrides.deny_peers.is_empty() {
            self.deny_peers = overrides.deny_peers.clone();
        }
        if let Some(quota) = overrides.user_quota {
            self.user_quota = quota;
        }
        if let Some(quota) = overrides.total_quota {
            self.total_quota = quota;
        }
        if !overrides.alternate_servers.is_empty() {
            self.alternate_servers = overrides.alternate_servers.clone();
        }
        if let Some(domain) = &overrides.alternate_domain {
            self.alternate_domain =
                Some(check_domain(domain.clone(), "--alternate-domain").map_err(|(k, m)| invalid(&k, m))?);
        }
        if let Some(limit) = overrides.max_tcp_per_ip {
            self.max_tcp_per_ip = limit;
        }
        if let Some(bps) = overrides.max_bps {
            self.max_bps = bps;
        }
        if let Some(bytes) = overrides.udp_buffer {
            self.udp_buffer = bytes;
        }
        if let Some(rate) = overrides.rate_limit {
            self.rate_limit = rate;
        }
        self.rate_limit_loopback |= overrides.rate_limit_loopback;
        if let Some(user) = &overrides.user {
            self.user = Some(user.clone());
        }
        if let Some(group) = &overrides.group {
            self.group = Some(group.clone());
        }
        self.rfc5766_channels |= overrides.rfc5766_channels;
        if !overrides.tls_listen.is_empty() {
            self.tls.listen = overrides.tls_listen.clone();
        }
        if let Some(cert) = &overrides.tls_cert {
            self.tls.cert = Some(cert.clone());
        }
        if let Some(key) = &overrides.tls_key {
            self.tls.key = Some(key.clone());
        }
        self.tls.resolve_listen();
        if let Some(addr) = overrides.metrics_listen {
            self.metrics_listen = Some(addr);
        }
        self.check_combination("configuration")
    }

    /// Rules across keys.
    fn check_combination(&self, file: &str) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: &str| ConfigError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message: message.to_owned(),
        };
        if self.turn == Some(true) && !self.auth.has_credentials() && !self.auth.allow_anonymous {
            return Err(invalid(
                "turn",
                "TURN is on but no credentials are configured: add [auth] users or secrets \
                 (or --user/--secret), or set allow_anonymous = true to relay for anyone",
            ));
        }
        if self.auth.allow_anonymous && self.auth.has_credentials() {
            return Err(invalid(
                "auth.allow_anonymous",
                "cannot be combined with users or secrets: with credentials configured, every TURN request is authenticated",
            ));
        }
        if self.default_lifetime > self.max_lifetime {
            return Err(invalid("default_lifetime", "must not exceed max_lifetime"));
        }
        if self.group.is_some() && self.user.is_none() {
            return Err(invalid("group", "needs `user` too"));
        }
        if let Some(user) = &self.user {
            crate::io::sys::lookup_identity(user, self.group.as_deref()).map_err(|m| invalid("user", &m))?;
        }
        self.checked_nat_discovery().map_err(|(key, message)| invalid(key, &message))?;
        self.check_tls(file)
    }

    /// TLS needs both files, and they must load and belong together; read
    /// here so `tern check` and a start refuse the same mistakes.
    fn check_tls(&self, file: &str) -> Result<(), ConfigError> {
        let invalid =
            |key: &str, message: String| ConfigError::Invalid { file: file.to_owned(), key: key.to_owned(), message };
        let tls = &self.tls;
        let (cert, key) = match (&tls.cert, &tls.key) {
            (None, None) if tls.listen.is_empty() => return Ok(()),
            (None, None) => {
                return Err(invalid(
                    "tls.listen",
                    "TLS addresses are set but no certificate: add tls.cert and tls.key (--tls-cert, --tls-key)".into(),
                ));
            }
            (Some(_), None) => {
                return Err(invalid(
                    "tls.key",
                    "is missing: tls.cert is set, and TLS needs the certificate's private key too (--tls-key)".into(),
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "tls.cert",
                    "is missing: tls.key is set, and TLS needs the certificate chain too (--tls-cert)".into(),
                ));
            }
            (Some(cert), Some(key)) => (cert, key),
        };
        // Port 0 is resolved to distinct ports at bind time, so it never clashes.
        if let Some(shared) = tls.listen.iter().find(|addr| addr.port() != 0 && self.listen.contains(addr)) {
            return Err(invalid(
                "tls.listen",
                format!("{shared} is also in `listen`; TLS needs a port of its own (usually 5349)"),
            ));
        }
        crate::io::tls::server_config(cert, key).map(drop).map_err(|e| invalid(e.key(), e.to_string()))
    }

    /// The RFC 5780 addresses, or `None` when discovery is off; the error
    /// names the key at fault. The primary address is the first listen
    /// address of the alternate IP's family. It must be a concrete address
    /// with a fixed port: OTHER-ADDRESS and RESPONSE-ORIGIN name concrete
    /// addresses, and the three extra sockets are bound on ports derived
    /// from it before anything runs.
    fn checked_nat_discovery(&self) -> Result<Option<NatDiscovery>, (&'static str, String)> {
        if !self.rfc5780 {
            if self.alternate_ip.is_some() {
                return Err(("alternate_ip", "is set but rfc5780 is off (set rfc5780 = true or --rfc5780)".into()));
            }
            if self.alternate_port.is_some() {
                return Err(("alternate_port", "is set but rfc5780 is off (set rfc5780 = true or --rfc5780)".into()));
            }
            return Ok(None);
        }
        let Some(alternate_ip) = self.alternate_ip else {
            return Err((
                "alternate_ip",
                "rfc5780 = true needs alternate_ip (or --alternate-ip): NAT behaviour discovery answers from a \
                 second IP address of this host"
                    .into(),
            ));
        };
        let Some(primary) = self.listen.iter().copied().find(|a| a.is_ipv4() == alternate_ip.is_ipv4()) else {
            return Err(("alternate_ip", format!("{alternate_ip} has no listen address of its family to pair with")));
        };
        if primary.ip().is_unspecified() {
            return Err((
                "listen",
                format!(
                    "{primary} is a wildcard; rfc5780 needs the concrete primary address, which OTHER-ADDRESS and \
                     RESPONSE-ORIGIN name (listen on the host's public IP instead)"
                ),
            ));
        }
        if primary.port() == 0 {
            return Err(("listen", format!("{primary}: rfc5780 needs a fixed port, not 0")));
        }
        if alternate_ip == primary.ip() {
            return Err(("alternate_ip", format!("{alternate_ip} is the listen address; it must be a second IP")));
        }
        let alternate_port = match self.alternate_port {
            Some(0) => return Err(("alternate_port", "must not be 0".into())),
            Some(port) if port == primary.port() => {
                return Err(("alternate_port", format!("{port} is the listen port; it must differ")));
            }
            Some(port) => port,
            None => primary.port().checked_add(1).ok_or((
                "alternate_port",
                format!("the listen port is {}, so the default (port + 1) does not exist; set it", primary.port()),
            ))?,
        };
        let discovery = NatDiscovery::new(primary, SocketAddr::new(alternate_ip, alternate_port))
            .ok_or(("alternate_ip", format!("{alternate_ip} cannot pair with {primary}")))?;
        if let Some(taken) = discovery.extra_addresses().iter().find(|a| self.listen.contains(a)) {
            return Err((
                "listen",
                format!("{taken} is one of the RFC 5780 addresses tern listens on by itself; remove it from listen"),
            ));
        }
        Ok(Some(discovery))
    }

    /// Whether tern relays: as configured, or when unset, exactly when
    /// credentials (or anonymous relaying) are configured.
    pub fn turn_enabled(&self) -> bool {
        self.turn.unwrap_or(self.auth.has_credentials() || self.auth.allow_anonymous)
    }

    /// The users' keys and the REST secrets, as the authenticator takes
    /// them (at start, and again on SIGHUP).
    pub fn credentials(&self) -> StaticCredentials {
        let users = self
            .auth
            .users
            .iter()
            .map(|(name, secret)| {
                let keys = match secret {
                    UserSecret::Password(password) => UserKeys::from_password(name, &self.realm, password),
                    UserSecret::Key(key) => UserKeys::from_md5_key(*key),
                };
                (name.clone(), keys)
            })
            .collect();
        let secrets = self.auth.secrets.iter().map(|s| s.as_bytes().to_vec()).collect();
        StaticCredentials::new(&self.realm, users, secrets)
    }

    /// What the IO driver needs. `nonce_key` signs nonces: random per
    /// process, shared by its workers.
    pub fn runtime(&self, nonce_key: [u8; 32], local_addresses: &[IpAddr]) -> RuntimeConfig {
        // Checked by `check_combination`, so the lookup succeeds here.
        let run_as =
            self.user.as_ref().and_then(|user| crate::io::sys::lookup_identity(user, self.group.as_deref()).ok());
        let turn = self.turn_enabled().then(|| {
            let auth = self.auth.has_credentials().then(|| {
                let nonce_lifetime = u64::from(self.auth.nonce_lifetime);
                Authenticator::new(self.realm.clone(), self.credentials(), nonce_key, nonce_lifetime)
            });
            let listen = self.listen.iter().chain(&self.tls.listen);
            let mut own: Vec<IpAddr> = listen.clone().map(SocketAddr::ip).collect();
            own.extend(self.alternate_ip);
            if listen.clone().any(|a| a.ip().is_unspecified()) {
                own.extend_from_slice(local_addresses);
            }
            own.extend(&self.relay_ips);
            own.extend(self.external_ips.iter().map(|e| e.public));
            TurnConfig {
                auth,
                policy: PeerPolicy::new(self.allow_peers.clone(), self.deny_peers.clone(), own),
                relay_ips: self.relay_ips.clone(),
                external_ips: self.external_ips.clone(),
                default_lifetime: Duration::from_secs(u64::from(self.default_lifetime)),
                max_lifetime: Duration::from_secs(u64::from(self.max_lifetime)),
                max_permissions: self.max_permissions as usize,
                max_channels: self.max_channels as usize,
                rfc5766_channels: self.rfc5766_channels,
                max_bps: self.max_bps,
                alternate_servers: self.alternate_servers.clone(),
                alternate_domain: self.alternate_domain.clone(),
                max_tcp_peer_connections: self.max_tcp_peer_connections as usize,
            }
        });
        let tls = match (&self.tls.cert, &self.tls.key) {
            (Some(cert), Some(key)) => Some(TlsSettings {
                listen: self.tls.listen.clone(),
                cert: cert.clone(),
                key: key.clone(),
                max_handshakes: self.tls.max_handshakes as usize,
                handshake_timeout: Duration::from_secs(u64::from(self.tls.handshake_timeout)),
            }),
            _ => None,
        };
        // Checked by `check_combination` too, so an error cannot happen here.
        let nat_discovery = self.checked_nat_discovery().ok().flatten();
        let mut listen = self.listen.clone();
        if let Some(discovery) = &nat_discovery {
            listen.extend(discovery.extra_addresses());
        }
        RuntimeConfig {
            listen,
            workers: self.workers,
            udp_buffer: self.udp_buffer as usize,
            run_as,
            relay_ports: self.relay_ports,
            quotas: QuotaLimits {
                per_user: self.user_quota,
                total: self.total_quota,
                tcp_per_ip: self.max_tcp_per_ip,
                tcp_total: self.max_tcp_connections,
            },
            server: ServerConfig {
                software: self.software.clone(),
                rfc3489: self.rfc3489,
                reason_phrases: self.reason_phrases,
                nat_discovery,
                turn,
                rate_limit: RateLimit {
                    per_second: f64::from(self.rate_limit),
                    burst: f64::from(self.rate_limit_burst.unwrap_or(self.rate_limit.saturating_mul(2))),
                    limit_loopback: self.rate_limit_loopback,
                    ..RateLimit::default()
                },
            },
            tls,
        }
    }

    /// The effective settings as a TOML file. Passwords, keys and secrets
    /// are printed as a placeholder, so the output can go to a log and still
    /// describes the same server (the same users, as many secrets).
    pub fn to_toml(&self) -> String {
        let file = FileConfig {
            listen: Some(self.listen.iter().map(ToString::to_string).collect()),
            realm: Some(self.realm.clone()),
            workers: Some(self.workers),
            software: Some(self.software.clone().unwrap_or_default()),
            rfc3489: Some(self.rfc3489),
            rfc5780: Some(self.rfc5780),
            alternate_ip: self.alternate_ip.map(|ip| ip.to_string()),
            alternate_port: self.alternate_port,
            reason_phrases: Some(self.reason_phrases),
            turn: self.turn,
            relay_ips: Some(self.relay_ips.iter().map(ToString::to_string).collect()),
            relay_ports: Some(format!("{}-{}", self.relay_ports.0, self.relay_ports.1)),
            external_ip: Some(
                self.external_ips
                    .iter()
                    .map(|e| match e.private {
                        Some(private) => format!("{}/{private}", e.public),
                        None => e.public.to_string(),
                    })
                    .collect(),
            ),
            allow_peers: Some(self.allow_peers.iter().map(ToString::to_string).collect()),
            deny_peers: Some(self.deny_peers.iter().map(ToString::to_string).collect()),
            user_quota: Some(self.user_quota),
            total_quota: Some(self.total_quota),
            alternate_servers: Some(self.alternate_servers.iter().map(ToString::to_string).collect()),
            alternate_domain: self.alternate_domain.clone(),
            max_tcp_per_ip: Some(self.max_tcp_per_ip),
            max_tcp_connections: Some(self.max_tcp_connections),
            max_bps: Some(self.max_bps),
            max_permissions: Some(self.max_permissions),
            max_channels: Some(self.max_channels),
            max_tcp_peer_connections: Some(self.max_tcp_peer_connections),
            default_lifetime: Some(self.default_lifetime),
            max_lifetime: Some(self.max_lifetime),
            rfc5766_channels: Some(self.rfc5766_channels),
            udp_buffer: Some(self.udp_buffer),
            rate_limit: Some(self.rate_limit),
            rate_limit_burst: self.rate_limit_burst,
            rate_limit_loopback: Some(self.rate_limit_loopback),
            user: self.user.clone(),
            group: self.group.clone(),
            auth: Some(FileAuth {
                users: Some(
                    self.auth.users.keys().map(|name| (name.clone(), toml::Value::String(REDACTED.into()))).collect(),
                ),
                secrets: Some(vec![REDACTED.to_owned(); self.auth.secrets.len()]),
                allow_anonymous: Some(self.auth.allow_anonymous),
                nonce_lifetime: Some(self.auth.nonce_lifetime),
            }),
            log: Some(FileLog {
                level: Some(self.log.level),
                format: Some(self.log.format),
                allocations: Some(self.log.allocations),
            }),
            tls: self.tls.enabled().then(|| FileTls {
                listen: Some(self.tls.listen.iter().map(ToString::to_string).collect()),
                cert: self.tls.cert.as_ref().map(|p| p.display().to_string()),
                key: self.tls.key.as_ref().map(|p| p.display().to_string()),
                max_handshakes: Some(self.tls.max_handshakes),
                handshake_timeout: Some(self.tls.handshake_timeout),
            }),
            metrics: self.metrics_listen.map(|addr| FileMetrics { listen: Some(addr.to_string()) }),
        };
        let mut text = toml::to_string(&file).expect("the configuration serialises");
        text.push_str(&format!(
            "# TURN relaying: {}; passwords, keys and secrets are shown as {REDACTED:?}\n",
            if self.turn_enabled() { "on" } else { "off (STUN only)" },
        ));
        text
    }
}

fn parse_list<T>(
    values: &[String],
    key: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, (String, String)> {
    values.iter().enumerate().map(|(i, text)| parse(text).map_err(|m| (format!("{key}[{i}]"), m))).collect()
}

/// A domain name for ALTERNATE-DOMAIN: ASCII (IDNA A-labels), letters,
/// digits, hyphens and dots, under 256 bytes (RFC 8489 §14.16).
fn check_domain(domain: String, key: &str) -> Result<String, (String, String)> {
    let valid = !domain.is_empty()
        && domain.len() < 256
        && domain.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(domain)
    } else {
        Err((key.to_owned(), format!("{domain:?} is not a domain name (ASCII letters, digits, '-' and '.')")))
    }
}

fn positive(value: u32, key: &str) -> Result<u32, (String, String)> {
    if value == 0 { Err((key.to_owned(), "must be at least 1".to_owned())) } else { Ok(value) }
}

fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    SocketAddr::from_str(text)
        .map_err(|_| format!("{text:?} is not an IP:port address (like 0.0.0.0:3478 or [::]:3478)"))
}

fn parse_ip(text: &str) -> Result<IpAddr, String> {
    let ip = IpAddr::from_str(text).map_err(|_| format!("{text:?} is not an IP address"))?;
    if ip.is_unspecified() {
        return Err(format!("{text:?} is a wildcard; relay addresses must be concrete"));
    }
    Ok(ip)
}

/// An `IP:PORT` another TURN server listens on: a client must be able to
/// reach it, so no wildcard address and no port 0.
pub fn parse_alternate_server(text: &str) -> Result<SocketAddr, String> {
    let addr = parse_socket_addr(text)?;
    if addr.ip().is_unspecified() || addr.port() == 0 {
        return Err(format!("{text:?} is not an address a client can reach (no wildcard IP, no port 0)"));
    }
    Ok(addr)
}

/// `MIN-MAX`, both inclusive.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let parsed = text
        .split_once('-')
        .and_then(|(min, max)| Some((min.trim().parse::<u16>().ok()?, max.trim().parse::<u16>().ok()?)));
    match parsed {
        Some((min, max)) if min >= 1 && min <= max => Ok((min, max)),
        _ => Err(format!("{text:?} is not a port range like 49152-65535")),
    }
}

/// A CIDR block, or a single address.
pub fn parse_cidr(text: &str) -> Result<IpNet, String> {
    IpNet::from_str(text)
        .or_else(|_| IpAddr::from_str(text).map(IpNet::from))
        .map_err(|_| format!("{text:?} is not an address or CIDR block like 10.0.0.0/8"))
}

/// `PUBLIC` or `PUBLIC/PRIVATE`.
pub fn parse_external_ip(text: &str) -> Result<ExternalIp, String> {
    let bad = || format!("{text:?} is not PUBLIC or PUBLIC/PRIVATE, like 203.0.113.5/10.0.0.5");
    let (public, private) = match text.split_once('/') {
        Some((public, private)) => (public, Some(private)),
        None => (text, None),
    };
    let public = IpAddr::from_str(public).map_err(|_| bad())?;
    let private = private.map(IpAddr::from_str).transpose().map_err(|_| bad())?;
    if private.is_some_and(|p| p.is_ipv4() != public.is_ipv4()) {
        return Err(format!("{text:?} maps between address families"));
    }
    Ok(ExternalIp { public, private })
}

/// `NAME:PASSWORD` for `--user`.
pub fn parse_user_flag(text: &str) -> Result<(String, String), String> {
    match text.split_once(':') {
        Some((name, password)) if !name.is_empty() && !password.is_empty() => Ok((name.into(), password.into())),
        _ => Err(format!("{text:?} is not NAME:PASSWORD")),
    }
}

fn parse_user_secret(value: &toml::Value) -> Result<UserSecret, String> {
    const EXPECTED: &str = "expected a password string or { key = \"0x<32 hex digits>\" }";
    match value {
        toml::Value::String(password) if !password.is_empty() => Ok(UserSecret::Password(password.clone())),
        toml::Value::String(_) => Err("the password must not be empty".into()),
        toml::Value::Table(table) => {
            let key = match (table.len(), table.get("key")) {
                (1, Some(toml::Value::String(key))) => key,
                _ => return Err(EXPECTED.into()),
            };
            let hex = key.strip_prefix("0x").unwrap_or(key);
            let mut bytes = [0u8; 16];
            if hex.len() != 32 {
                return Err(format!("key {key:?} is not 32 hex digits"));
            }
            for (i, byte) in bytes.iter_mut().enumerate() {
                *byte =
                    u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| format!("key {key:?} is not hex"))?;
            }
            Ok(UserSecret::Key(bytes))
        }
        _ => Err(EXPECTED.into()),
    }
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

/// Parses an `--alternate-ip` value for clap.
pub fn parse_alternate_ip_flag(text: &str) -> Result<IpAddr, String> {
    let ip = IpAddr::from_str(text).map_err(|_| format!("{text:?} is not an IP address"))?;
    if ip.is_unspecified() {
        return Err(format!("{text:?} is a wildcard; the alternate address must be concrete"));
    }
    Ok(ip)
}

/// Parses a `--relay-ip` value for clap.
pub fn parse_relay_ip_flag(text: &str) -> Result<IpAddr, String> {
    parse_ip(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stun::integrity::long_term_key_md5;

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
                log_allocations: true,
                ..Overrides::default()
            })
            .expect("valid overrides");
        assert_eq!(config.listen, vec!["127.0.0.1:9999".parse::<SocketAddr>().expect("literal")]);
        assert_eq!((config.realm.as_str(), config.workers), ("b", 3));
        assert_eq!(config.log, LogConfig { level: LogLevel::Debug, format: LogFormat::Json, allocations: true });
    }

    #[test]
    fn turn_follows_credentials_unless_set() {
        let stun_only = Config::parse("", "t").expect("valid");
        assert!(!stun_only.turn_enabled());
        let with_user = Config::parse("[auth]\nusers = { alice = \"pw\" }\n", "t").expect("valid");
        assert!(with_user.turn_enabled());
        let off = Config::parse("turn = false\n[auth]\nsecrets = [\"s\"]\n", "t").expect("valid");
        assert!(!off.turn_enabled());
    }

    #[test]
    fn turn_without_credentials_is_refused() {
        let message = error("turn = true\n");
        assert!(message.starts_with("test.toml: key `turn`: TURN is on but no credentials"), "{message}");
        assert!(Config::parse("turn = true\n[auth]\nallow_anonymous = true\n", "t").expect("valid").turn_enabled());
        let message = error("[auth]\nallow_anonymous = true\nsecrets = [\"s\"]\n");
        assert!(message.starts_with("test.toml: key `auth.allow_anonymous`: cannot be combined"), "{message}");
    }

    #[test]
    fn turn_values_are_checked_and_named() {
        assert_eq!(
            error("relay_ports = \"70000-2\"\n"),
            "test.toml: key `relay_ports`: \"70000-2\" is not a port range like 49152-65535"
        );
        assert_eq!(
            error("relay_ips = [\"0.0.0.0\"]\n"),
            "test.toml: key `relay_ips[0]`: \"0.0.0.0\" is a wildcard; relay addresses must be concrete"
        );
        assert!(error("allow_peers = [\"10.0.0.0/33\"]\n").starts_with("test.toml: key `allow_peers[0]`: "));
        assert!(error("external_ip = [\"1.2.3.4/::1\"]\n").contains("maps between address families"));
        assert!(error("[auth]\nusers = { bob = 5 }\n").starts_with("test.toml: key `auth.users.bob`: expected"));
        assert!(error("[auth]\nusers = { bob = { key = \"0x12\" } }\n").contains("not 32 hex digits"));
        assert_eq!(error("max_channels = 0\n"), "test.toml: key `max_channels`: must be at least 1");
        assert_eq!(
            error("alternate_servers = [\"203.0.113.5:3478\", \"0.0.0.0:3478\"]\n"),
            "test.toml: key `alternate_servers[1]`: \"0.0.0.0:3478\" is not an address a client can reach (no \
             wildcard IP, no port 0)"
        );
        assert!(error("alternate_servers = [\"203.0.113.5\"]\n").starts_with("test.toml: key `alternate_servers[0]`"));
        assert_eq!(
            error("alternate_domain = \"turn two.example\"\n"),
            "test.toml: key `alternate_domain`: \"turn two.example\" is not a domain name (ASCII letters, digits, '-' and '.')"
        );
        assert_eq!(
            error("default_lifetime = 4000\n"),
            "test.toml: key `default_lifetime`: must not exceed max_lifetime"
        );
    }

    #[test]
    fn precomputed_keys_and_passwords_give_the_same_key() {
        let key = long_term_key_md5("alice", "tern", "pw");
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let text = format!("[auth]\nusers = {{ alice = {{ key = \"0x{hex}\" }} }}\n");
        let config = Config::parse(&text, "t").expect("valid");
        assert_eq!(config.auth.users["alice"], UserSecret::Key(key));
    }

    #[test]
    fn rfc5780_needs_two_concrete_addresses() {
        const LISTEN: &str = "listen = [\"127.0.0.1:3478\"]\n";
        assert!(error("rfc5780 = true\n").starts_with("test.toml: key `alternate_ip`: rfc5780 = true needs"));
        assert!(error(&format!("{LISTEN}rfc5780 = true\n")).contains("key `alternate_ip`"));
        assert!(
            error("rfc5780 = true\nalternate_ip = \"127.0.0.2\"\n")
                .starts_with("test.toml: key `listen`: 0.0.0.0:3478 is a wildcard")
        );
        assert!(
            error(&format!("{LISTEN}rfc5780 = true\nalternate_ip = \"127.0.0.1\"\n"))
                .starts_with("test.toml: key `alternate_ip`: 127.0.0.1 is the listen address")
        );
        assert!(
            error(&format!("{LISTEN}rfc5780 = true\nalternate_ip = \"::1\"\n"))
                .contains("has no listen address of its family")
        );
        assert!(
            error("listen = [\"127.0.0.1:0\"]\nrfc5780 = true\nalternate_ip = \"127.0.0.2\"\n")
                .contains("needs a fixed port")
        );
        assert!(
            error(&format!("{LISTEN}rfc5780 = true\nalternate_ip = \"127.0.0.2\"\nalternate_port = 3478\n"))
                .starts_with("test.toml: key `alternate_port`: 3478 is the listen port")
        );
        assert!(
            error(&format!("{LISTEN}alternate_ip = \"127.0.0.2\"\n"))
                .starts_with("test.toml: key `alternate_ip`: is set but rfc5780 is off")
        );
        assert!(
            error("listen = [\"127.0.0.1:3478\", \"127.0.0.2:3479\"]\nrfc5780 = true\nalternate_ip = \"127.0.0.2\"\n")
                .contains("127.0.0.2:3479 is one of the RFC 5780 addresses")
        );
    }

    #[test]
    fn rfc5780_listens_on_the_four_addresses() {
        let text = "listen = [\"127.0.0.1:3478\"]\nrfc5780 = true\nalternate_ip = \"127.0.0.2\"\n";
        let config = Config::parse(text, "t").expect("valid");
        let runtime = config.runtime([0; 32], &[]);
        let listen: Vec<String> = runtime.listen.iter().map(ToString::to_string).collect();
        assert_eq!(listen, ["127.0.0.1:3478", "127.0.0.1:3479", "127.0.0.2:3478", "127.0.0.2:3479"]);
        let discovery = runtime.server.nat_discovery.expect("on");
        assert_eq!(discovery.alternate().to_string(), "127.0.0.2:3479");
        let again = Config::parse(&config.to_toml(), "printed").expect("printed config is valid");
        assert_eq!(again, config);
        assert!(Config::defaults().runtime([0; 32], &[]).server.nat_discovery.is_none());
    }

    #[test]
    fn effective_settings_round_trip_through_toml() {
        let config = Config::parse(
            "listen = [\"[::1]:3478\", \"127.0.0.1:3478\"]\nworkers = 2\n\
             alternate_servers = [\"203.0.113.5:3478\", \"[2001:db8::5]:3478\"]\n",
            "t",
        )
        .expect("valid");
        assert_eq!(config.alternate_servers.len(), 2);
        let again = Config::parse(&config.to_toml(), "printed").expect("printed config is valid");
        assert_eq!(again, config);
    }
}
