//! The configuration: a TOML file and the command line in, a validated
//! [`Config`] out.
//!
//! Parse, don't validate: the file is read straight into [`Settings`], whose
//! every value is checked as it is read (`values`), and the command line is
//! laid over them by the same rules (`settings`). Parsing is strict
//! (`deny_unknown_fields` everywhere, so a misspelt key is an error, not a
//! silent default) and every error names the file (or the command line),
//! the key and what is wrong. Rules that involve several keys (TURN needs
//! credentials) are checked last, over the merged result, by
//! `Config::new`, which keeps what they work out (the RFC 5780 addresses,
//! the identity to run as, the TLS and PROXY listeners), so
//! [`Config::runtime`] only assembles. On SIGHUP, [`Config::reloaded`] lays
//! a freshly loaded file over the running configuration: `reload` says
//! which keys a reload may change.

pub mod coturn;
mod flags;
mod reload;
mod settings;
mod values;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use flags::Overrides;
pub use reload::{Credentials, RELOADABLE, RESTART_ONLY, Reloaded};
pub use settings::{
    AuthConfig, DEFAULT_LISTEN, DEFAULT_PROXY_HEADER_TIMEOUT, DEFAULT_RATE_LIMIT, DEFAULT_REALM, DEFAULT_RELAY_PORTS,
    DEFAULT_TCP_PER_IP, DEFAULT_TLS_HANDSHAKE_TIMEOUT, DEFAULT_TLS_LISTEN, DEFAULT_TLS_MAX_HANDSHAKES,
    DEFAULT_UDP_BUFFER, LogConfig, MetricsConfig, ProxyConfig, Settings, StoreConfig, TlsConfig,
};
pub use values::{
    Address, AlternateIp, AlternateServer, ExternalAddress, LogFormat, LogLevel, PeerRange, PortRange, RelayIp,
    UserSecret, flag, toml_key, user_flag,
};

use crate::io::proxy::ProxySettings;
use crate::io::sys::{self, process::Identity};
use crate::io::{QuotaLimits, RuntimeConfig, TlsSettings};
use crate::proto::auth::{Authenticator, StaticCredentials, UserKeys};
use crate::proto::nat_discovery::NatDiscovery;
use crate::proto::policy::PeerPolicy;
use crate::proto::rate_limit::RateLimit;
use crate::proto::server::{ServerConfig, TurnConfig};
use crate::store::{Engine, StoreSettings};

/// A configuration whose settings are valid each on its own and together.
/// It reads as its [`Settings`]; only [`Config::apply`] changes it, and
/// checks the result again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    settings: Settings,
    /// The RFC 5780 addresses, when discovery is on.
    nat_discovery: Option<NatDiscovery>,
    /// Who to become once listening: `user` and `group`, looked up.
    run_as: Option<Identity>,
    /// The TLS listeners, when a certificate is configured; its files load
    /// and belong together.
    tls_settings: Option<TlsSettings>,
    /// The PROXY listeners, when there are any, and whom they trust.
    proxy_settings: Option<ProxySettings>,
    /// The admin API's token, read from `admin.token_file`.
    admin_token: Option<AdminToken>,
    /// The store, when one is configured, with its password read.
    store_settings: Option<StoreSettings>,
}

/// The bearer token of the admin API. Read when the configuration loads,
/// so `tern check` and a reload catch a missing or unreadable file; never
/// printed.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Box<[u8]>);

/// Shorter tokens are refused: a token is a password an attacker may try
/// at the rate limit, so it must be long and random (`openssl rand -hex 32`).
pub const MIN_ADMIN_TOKEN: usize = 16;

impl AdminToken {
    /// Whether `presented` is this token, in time that does not depend on
    /// where they differ (both are hashed first, so not on their lengths
    /// either).
    pub fn matches(&self, presented: &[u8]) -> bool {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        Sha256::digest(&self.0).ct_eq(&Sha256::digest(presented)).into()
    }

    /// Reads the token: the file's contents, whitespace around them left out.
    fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let token = text.trim();
        if token.len() < MIN_ADMIN_TOKEN {
            return Err(format!(
                "{} holds a token of {} bytes; use at least {MIN_ADMIN_TOKEN} random ones (openssl rand -hex 32 > \
                 FILE)",
                path.display(),
                token.len()
            ));
        }
        if token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!("{} holds a token with spaces or control characters", path.display()));
        }
        Ok(Self(token.as_bytes().into()))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl Deref for Config {
    type Target = Settings;

    fn deref(&self) -> &Settings {
        &self.settings
    }
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

/// Where a configuration comes from: a file, or the embedded defaults, with
/// the command line over it. `tern serve` keeps it to read the same again
/// on SIGHUP.
#[derive(Clone, Debug)]
pub struct Source {
    file: Option<PathBuf>,
    overrides: Overrides,
}

impl Source {
    pub fn new(file: Option<PathBuf>, overrides: Overrides) -> Self {
        Self { file, overrides }
    }

    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the file (or takes the defaults) and applies the command line.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut config = match &self.file {
            Some(path) => Config::load(path)?,
            None => Config::defaults(),
        };
        config.apply(&self.overrides)?;
        Ok(config)
    }
}

/// The file's path, or "embedded defaults".
impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.file {
            Some(path) => write!(f, "{}", path.display()),
            None => f.write_str("embedded defaults"),
        }
    }
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
        Self::new(Settings::default(), "defaults").expect("the embedded defaults are valid")
    }

    /// Parses TOML `text`; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::Syntax { file: file.to_owned(), message: describe_toml_error(&e, text) })?;
        let settings: Settings = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let message = describe_toml_error(e.inner(), text);
            if key == "." || key.is_empty() {
                ConfigError::Syntax { file: file.to_owned(), message }
            } else {
                ConfigError::Invalid { file: file.to_owned(), key, message }
            }
        })?;
        Self::new(settings, file)
    }

    /// Applies command-line values over the file's, then checks the result
    /// as a whole again.
    pub fn apply(&mut self, overrides: &Overrides) -> Result<(), ConfigError> {
        let mut settings = self.settings.clone();
        settings.apply_flags(overrides).map_err(|e| ConfigError::Invalid {
            file: "command line".into(),
            key: e.flag(),
            message: e.message,
        })?;
        *self = Self::new(settings, "configuration")?;
        Ok(())
    }

    /// Checks the rules across keys, and keeps what they work out.
    fn new(mut settings: Settings, file: &str) -> Result<Self, ConfigError> {
        let invalid =
            |key: &str, message: String| ConfigError::Invalid { file: file.to_owned(), key: key.to_owned(), message };
        // A certificate without TLS addresses (direct or behind a load
        // balancer) serves on the default one.
        if settings.tls.enabled() && settings.tls.listen.is_empty() && settings.proxy.tls_listen.is_empty() {
            settings.tls.listen = vec![DEFAULT_TLS_LISTEN];
        }
        if settings.turn == Some(true) && !settings.has_credentials() && !settings.auth.allow_anonymous {
            return Err(invalid(
                "turn",
                "TURN is on but no credentials are configured: add [auth] users or secrets \
                 (or --user/--secret), a [store], or set allow_anonymous = true to relay for anyone"
                    .into(),
            ));
        }
        if settings.auth.allow_anonymous && settings.has_credentials() {
            return Err(invalid(
                "auth.allow_anonymous",
                "cannot be combined with users, secrets or a store: with credentials configured, every TURN \
                 request is authenticated"
                    .into(),
            ));
        }
        if settings.default_lifetime > settings.max_lifetime {
            return Err(invalid("default_lifetime", "must not exceed max_lifetime".into()));
        }
        if settings.group.is_some() && settings.user.is_none() {
            return Err(invalid("group", "needs `user` too".into()));
        }
        let run_as = match &settings.user {
            Some(user) => Some(sys::lookup_identity(user, settings.group.as_deref()).map_err(|m| invalid("user", m))?),
            None => None,
        };
        let nat_discovery = nat_discovery(&settings).map_err(|(key, message)| invalid(key, message))?;
        let tls_settings = tls_settings(&settings).map_err(|(key, message)| invalid(key, message))?;
        let proxy_settings = proxy_settings(&settings).map_err(|(key, message)| invalid(key, message))?;
        let admin_token = admin_token(&settings).map_err(|(key, message)| invalid(key, message))?;
        let store_settings = store_settings(&settings.store).map_err(|(key, message)| invalid(key, message))?;
        Ok(Self { settings, nat_discovery, run_as, tls_settings, proxy_settings, admin_token, store_settings })
    }

    /// The admin API's token, when `admin.listen` is set.
    pub fn admin_token(&self) -> Option<&AdminToken> {
        self.admin_token.as_ref()
    }

    /// The store, when `[store] url` (or `--store`) names one.
    pub fn store(&self) -> Option<&StoreSettings> {
        self.store_settings.as_ref()
    }

    /// Whether tern relays: as configured, or when unset, exactly when
    /// credentials (or anonymous relaying) are configured.
    pub fn turn_enabled(&self) -> bool {
        self.turn.unwrap_or(self.has_credentials() || self.auth.allow_anonymous)
    }

    /// Whether tern authenticates: it relays, with users or secrets (not
    /// STUN only, not anonymous relaying).
    pub fn authenticates(&self) -> bool {
        self.turn_enabled() && self.has_credentials()
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
        let seconds = |value: std::num::NonZeroU32| Duration::from_secs(u64::from(value.get()));
        let turn = self.turn_enabled().then(|| {
            let auth = self.has_credentials().then(|| {
                let nonce_lifetime = u64::from(self.auth.nonce_lifetime.get());
                let auth = Authenticator::new(self.realm.clone(), self.credentials(), nonce_key, nonce_lifetime);
                if self.store.url.is_some() { auth.with_store_users() } else { auth }
            });
            let listen =
                self.listen.iter().chain(&self.tls.listen).chain(&self.proxy.listen).chain(&self.proxy.tls_listen);
            let mut own: Vec<IpAddr> = listen.clone().map(SocketAddr::ip).collect();
            own.extend(self.alternate_ip);
            if listen.clone().any(|a| a.ip().is_unspecified()) {
                own.extend_from_slice(local_addresses);
            }
            own.extend(&self.relay_ips);
            own.extend(self.external_ips.iter().map(|e| e.public));
            TurnConfig {
                auth,
                policy: PeerPolicy::new(self.allow_peers.clone(), self.deny_peers.clone(), own)
                    .with_relay_ports(self.relay_ports),
                relay_ips: self.relay_ips.clone(),
                external_ips: self.external_ips.clone(),
                default_lifetime: seconds(self.default_lifetime),
                max_lifetime: seconds(self.max_lifetime),
                max_permissions: self.max_permissions.get() as usize,
                max_channels: self.max_channels.get() as usize,
                rfc5766_channels: self.rfc5766_channels,
                max_bps: self.max_bps,
                alternate_servers: self.alternate_servers.clone(),
                alternate_domain: self.alternate_domain.clone(),
                max_tcp_peer_connections: self.max_tcp_peer_connections.get() as usize,
            }
        });
        let mut listen = self.listen.clone();
        if let Some(discovery) = &self.nat_discovery {
            listen.extend(discovery.extra_addresses());
        }
        RuntimeConfig {
            listen,
            workers: self.workers,
            udp_buffer: self.udp_buffer as usize,
            run_as: self.run_as,
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
                nat_discovery: self.nat_discovery,
                turn,
                rate_limit: RateLimit {
                    per_second: f64::from(self.rate_limit),
                    burst: f64::from(
                        self.rate_limit_burst.map_or(self.rate_limit.saturating_mul(2), std::num::NonZeroU32::get),
                    ),
                    limit_loopback: self.rate_limit_loopback,
                    ..RateLimit::default()
                },
            },
            tls: self.tls_settings.clone(),
            proxy: self.proxy_settings.clone(),
        }
    }

    /// The effective settings as a TOML file. Passwords, keys and secrets
    /// are printed as a placeholder, so the output can go to a log and still
    /// describes the same server (the same users, as many secrets).
    pub fn to_toml(&self) -> String {
        let mut text = toml::to_string(&self.settings).expect("the settings serialise");
        text.push_str(&format!(
            "# TURN relaying: {}; passwords, keys and secrets are shown as {:?}\n",
            if self.turn_enabled() { "on" } else { "off (STUN only)" },
            values::REDACTED,
        ));
        text
    }
}

/// The RFC 5780 addresses, or `None` when discovery is off; the error names
/// the key at fault. The primary address is the first listen address of the
/// alternate IP's family. It must be a concrete address with a fixed port:
/// OTHER-ADDRESS and RESPONSE-ORIGIN name concrete addresses, and the three
/// extra sockets are bound on ports derived from it before anything runs.
fn nat_discovery(settings: &Settings) -> Result<Option<NatDiscovery>, (&'static str, String)> {
    if !settings.rfc5780 {
        if settings.alternate_ip.is_some() {
            return Err(("alternate_ip", "is set but rfc5780 is off (set rfc5780 = true or --rfc5780)".into()));
        }
        if settings.alternate_port.is_some() {
            return Err(("alternate_port", "is set but rfc5780 is off (set rfc5780 = true or --rfc5780)".into()));
        }
        return Ok(None);
    }
    let Some(alternate_ip) = settings.alternate_ip else {
        return Err((
            "alternate_ip",
            "rfc5780 = true needs alternate_ip (or --alternate-ip): NAT behaviour discovery answers from a \
             second IP address of this host"
                .into(),
        ));
    };
    let Some(primary) = settings.listen.iter().copied().find(|a| a.is_ipv4() == alternate_ip.is_ipv4()) else {
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
    let alternate_port = match settings.alternate_port {
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
    if let Some(taken) = discovery.extra_addresses().iter().find(|a| settings.listen.contains(a)) {
        return Err((
            "listen",
            format!("{taken} is one of the RFC 5780 addresses tern listens on by itself; remove it from listen"),
        ));
    }
    Ok(Some(discovery))
}

/// The TLS listeners, or `None` without a certificate. TLS needs both
/// files, and they must load and belong together; they are read here so
/// `tern check` and a start refuse the same mistakes.
fn tls_settings(settings: &Settings) -> Result<Option<TlsSettings>, (&'static str, String)> {
    let tls = &settings.tls;
    let (cert, key) = match (&tls.cert, &tls.key) {
        (None, None) if tls.listen.is_empty() => return Ok(None),
        (None, None) => {
            return Err((
                "tls.listen",
                "TLS addresses are set but no certificate: add tls.cert and tls.key (--tls-cert, --tls-key)".into(),
            ));
        }
        (Some(_), None) => {
            return Err((
                "tls.key",
                "is missing: tls.cert is set, and TLS needs the certificate's private key too (--tls-key)".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "tls.cert",
                "is missing: tls.key is set, and TLS needs the certificate chain too (--tls-cert)".into(),
            ));
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    // Port 0 is resolved to distinct ports at bind time, so it never clashes.
    if let Some(shared) = tls.listen.iter().find(|addr| addr.port() != 0 && settings.listen.contains(addr)) {
        return Err((
            "tls.listen",
            format!("{shared} is also in `listen`; TLS needs a port of its own (usually 5349)"),
        ));
    }
    crate::io::tls::server_config(cert, key).map_err(|e| (e.key(), e.to_string()))?;
    Ok(Some(TlsSettings {
        listen: tls.listen.clone(),
        cert: cert.clone(),
        key: key.clone(),
        max_handshakes: tls.max_handshakes.get() as usize,
        handshake_timeout: Duration::from_secs(u64::from(tls.handshake_timeout.get())),
    }))
}

/// The admin API's token, when it listens: it takes one, for the API can
/// end calls and drain the server.
fn admin_token(settings: &Settings) -> Result<Option<AdminToken>, (&'static str, String)> {
    let admin = &settings.admin;
    match (&admin.listen, &admin.token_file) {
        (None, _) if admin.tls => Err(("admin.tls", "is set but admin.listen is not (--admin-listen)".into())),
        (None, None) => Ok(None),
        (Some(_), None) => Err((
            "admin.token_file",
            "is needed with admin.listen: the admin API answers only requests that carry its token \
             (--admin-token-file; make one with: openssl rand -hex 32 > FILE)"
                .into(),
        )),
        (None, Some(_)) => Err(("admin.token_file", "is set but admin.listen is not (--admin-listen)".into())),
        (Some(_), Some(_)) if admin.tls && !settings.tls.enabled() => Err((
            "admin.tls",
            "needs a certificate: add tls.cert and tls.key (--tls-cert, --tls-key); the API serves the same one".into(),
        )),
        (Some(_), Some(file)) => AdminToken::read(file).map(Some).map_err(|message| ("admin.token_file", message)),
    }
}

/// The PROXY listeners, or `None` when there are none. They need trusted
/// load balancers (or any client could claim any address), TLS ones need
/// the certificate, and each needs an address of its own: a listener
/// either expects a header on every connection or on none.
fn proxy_settings(settings: &Settings) -> Result<Option<ProxySettings>, (&'static str, String)> {
    let proxy = &settings.proxy;
    if !proxy.enabled() {
        if !proxy.trusted.is_empty() {
            return Err((
                "proxy.trusted",
                "is set but no listener speaks the PROXY protocol: add proxy.listen or proxy.tls_listen \
                 (--proxy-listen, --proxy-tls-listen)"
                    .into(),
            ));
        }
        return Ok(None);
    }
    if proxy.trusted.is_empty() {
        return Err((
            "proxy.trusted",
            "is empty, so no load balancer may send PROXY headers: list their addresses or ranges \
             (--proxy-trusted); tern believes the client address in a header only from them"
                .into(),
        ));
    }
    if !proxy.tls_listen.is_empty() && !settings.tls.enabled() {
        return Err((
            "proxy.tls_listen",
            "needs a certificate: add tls.cert and tls.key (--tls-cert, --tls-key)".into(),
        ));
    }
    let keyed =
        |addrs: &[SocketAddr], key: &'static str| addrs.iter().map(move |addr| (*addr, key)).collect::<Vec<_>>();
    let mut taken = keyed(&settings.listen, "listen");
    taken.extend(keyed(&settings.tls.listen, "tls.listen"));
    for (addr, key) in
        keyed(&proxy.listen, "proxy.listen").into_iter().chain(keyed(&proxy.tls_listen, "proxy.tls_listen"))
    {
        // Port 0 is resolved to distinct ports at bind time, so it never clashes.
        if addr.port() != 0
            && let Some((_, other)) = taken.iter().find(|(used, _)| *used == addr)
        {
            return Err((key, format!("{addr} is also in `{other}`; a PROXY listener needs an address of its own")));
        }
        taken.push((addr, key));
    }
    Ok(Some(ProxySettings {
        listen: proxy.listen.clone(),
        tls_listen: proxy.tls_listen.clone(),
        trusted: proxy.trusted.clone(),
        header_timeout: Duration::from_secs(u64::from(proxy.header_timeout.get())),
    }))
}

/// The store's settings, or `None` without a URL; the error names the key.
/// The password file is read here, so a missing one stops `tern check`.
fn store_settings(store: &StoreConfig) -> Result<Option<StoreSettings>, (&'static str, String)> {
    let Some(url) = &store.url else {
        if store.password_file.is_some() {
            return Err(("store.password_file", "is set but store.url is not".into()));
        }
        if store.tls_ca.is_some() {
            return Err(("store.tls_ca", "is set but store.url is not".into()));
        }
        return Ok(None);
    };
    if url.engine() == Engine::Sqlite && store.password_file.is_some() {
        return Err(("store.password_file", "a SQLite store has no password".into()));
    }
    let timeout = Duration::from_secs(u64::from(store.timeout.get()));
    StoreSettings::new(url.clone(), store.password_file.as_deref(), timeout, store.tls_ca.clone())
        .map(Some)
        .map_err(|message| ("store.password_file", message))
}

/// The toml crate's message with the line and column of its span, without
/// the multi-line snippet, so the error fits on one line with its key. A
/// value a rule refused names itself, so it keeps its message alone.
fn describe_toml_error(error: &toml::de::Error, text: &str) -> String {
    if let Some(message) = values::value_error_message(error.message()) {
        return message.to_owned();
    }
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
    fn proxy_listeners_need_trusted_sources_and_addresses_of_their_own() {
        assert_eq!(
            error("[proxy]\nlisten = [\"127.0.0.1:3479\"]\n"),
            "test.toml: key `proxy.trusted`: is empty, so no load balancer may send PROXY headers: list their \
             addresses or ranges (--proxy-trusted); tern believes the client address in a header only from them"
        );
        assert!(
            error("[proxy]\ntrusted = [\"10.0.0.0/8\"]\n")
                .starts_with("test.toml: key `proxy.trusted`: is set but no listener speaks the PROXY protocol")
        );
        assert!(
            error("[proxy]\nlisten = [\"127.0.0.1:3479\"]\ntrusted = [\"10.0.0.0/33\"]\n")
                .starts_with("test.toml: key `proxy.trusted[0]`: \"10.0.0.0/33\" is not an address or CIDR block")
        );
        assert!(error("[proxy]\nlisten = [\"nowhere\"]\n").starts_with("test.toml: key `proxy.listen[0]`: "));
        assert_eq!(
            error("[proxy]\ntls_listen = [\"127.0.0.1:5350\"]\ntrusted = [\"10.0.0.1\"]\n"),
            "test.toml: key `proxy.tls_listen`: needs a certificate: add tls.cert and tls.key (--tls-cert, --tls-key)"
        );
        assert_eq!(
            error("listen = [\"127.0.0.1:3478\"]\n[proxy]\nlisten = [\"127.0.0.1:3478\"]\ntrusted = [\"10.0.0.1\"]\n"),
            "test.toml: key `proxy.listen`: 127.0.0.1:3478 is also in `listen`; a PROXY listener needs an address of \
             its own"
        );
        assert!(
            error("[proxy]\nlisten = [\"127.0.0.1:3479\", \"127.0.0.1:3479\"]\ntrusted = [\"10.0.0.1\"]\n")
                .contains("127.0.0.1:3479 is also in `proxy.listen`")
        );
        assert_eq!(
            error("[proxy]\nlisten = [\"127.0.0.1:3479\"]\ntrusted = [\"10.0.0.1\"]\nheader_timeout = 0\n"),
            "test.toml: key `proxy.header_timeout`: must be at least 1"
        );
    }

    #[test]
    fn proxy_settings_reach_the_runtime_and_round_trip() {
        let text = "listen = [\"127.0.0.1:3478\"]\n[proxy]\nlisten = [\"127.0.0.1:0\", \"127.0.0.1:0\"]\n\
                    trusted = [\"10.0.0.0/8\", \"192.0.2.1\"]\nheader_timeout = 2\n";
        let config = Config::parse(text, "t").expect("valid");
        let proxy = config.runtime([0; 32], &[]).proxy.expect("PROXY listeners");
        assert_eq!(proxy.listen.len(), 2);
        assert!(proxy.tls_listen.is_empty());
        let trusted: Vec<String> = proxy.trusted.iter().map(ToString::to_string).collect();
        assert_eq!(trusted, ["10.0.0.0/8", "192.0.2.1/32"]);
        assert_eq!(proxy.header_timeout, Duration::from_secs(2));
        let again = Config::parse(&config.to_toml(), "printed").expect("printed config is valid");
        assert_eq!(again, config);
        assert!(!Config::defaults().to_toml().contains("[proxy]"), "no [proxy] table unless configured");
        assert!(Config::defaults().runtime([0; 32], &[]).proxy.is_none());

        let mut flagged = Config::defaults();
        flagged
            .apply(&Overrides {
                proxy_listen: vec!["127.0.0.1:3479".parse().expect("literal")],
                proxy_trusted: vec!["127.0.0.3/32".parse().expect("literal")],
                ..Overrides::default()
            })
            .expect("valid flags");
        assert_eq!(flagged.proxy.listen, vec!["127.0.0.1:3479".parse::<SocketAddr>().expect("literal")]);
        let message = Config::defaults()
            .apply(&Overrides {
                proxy_listen: vec!["127.0.0.1:3479".parse().expect("literal")],
                ..Overrides::default()
            })
            .expect_err("no trusted source")
            .to_string();
        assert!(message.starts_with("configuration: key `proxy.trusted`: is empty"), "{message}");
    }

    #[test]
    fn the_store_is_checked_and_its_errors_name_the_key() {
        assert!(Config::defaults().store().is_none());
        assert!(!Config::defaults().to_toml().contains("[store]"), "no [store] table unless configured");
        assert_eq!(
            error("[store]\nurl = \"mysql://db/turn\"\n"),
            "test.toml: key `store.url`: \"mysql://db/turn\" is not a store URL: use sqlite:///PATH, postgresql://… \
             or redis://…"
        );
        assert_eq!(
            error("[store]\nurl = \"sqlite:///tern.db\"\npassword_file = \"/etc/p\"\n"),
            "test.toml: key `store.password_file`: a SQLite store has no password"
        );
        assert_eq!(
            error("[store]\npassword_file = \"/etc/p\"\n"),
            "test.toml: key `store.password_file`: is set but store.url is not"
        );
        let missing = error("[store]\nurl = \"redis://127.0.0.1/2\"\npassword_file = \"/nonexistent/tern-pass\"\n");
        assert!(
            missing.starts_with("test.toml: key `store.password_file`: cannot read /nonexistent/tern-pass"),
            "{missing}"
        );

        let text = "[store]\nurl = \"postgresql://tern:hunter2@db.example/tern\"\ntimeout = 2\n";
        let config = Config::parse(text, "t").expect("valid");
        let store = config.store().expect("a store");
        assert_eq!(store.timeout, Duration::from_secs(2));
        let printed = config.to_toml();
        assert!(printed.contains("url = \"postgresql://tern:<redacted>@db.example/tern\""), "{printed}");
        assert!(!printed.contains("hunter2"), "{printed}");

        let mut flagged = Config::defaults();
        flagged
            .apply(&Overrides { store: Some("redis://127.0.0.1:6379/2".into()), ..Overrides::default() })
            .expect("a URL without a password");
        assert!(flagged.store().is_some());
        let message = Config::defaults()
            .apply(&Overrides { store: Some("redis://:hunter2@127.0.0.1/2".into()), ..Overrides::default() })
            .expect_err("a password on the command line")
            .to_string();
        assert!(
            message.starts_with("command line: key `--store`: redis://:<redacted>@127.0.0.1/2: a password"),
            "{message}"
        );
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
