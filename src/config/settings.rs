//! The settings table: every key of the file, in file order, with its type
//! (which says how it is read and written, see `values`), its default, and
//! the command-line flag that overrides it. The table is the only place
//! that names a key's default or its flag: the macro below writes the
//! structs serde reads and `tern check` prints, their `Default`, and
//! `apply_flags`, which lays the command line over them.
//!
//! A row reads `pub KEY: TYPE = DEFAULT, HOW FLAG;`, where HOW is
//! - `replace FLAG`: a given flag replaces the value (a list flag when given
//!   at least once);
//! - `check FLAG with RULE`: the same, after `RULE` accepts the flag's value
//!   (for what clap cannot check: the error names the flag);
//! - `extend FLAG`: the flag's entries are added to the file's;
//! - `if FLAG => VALUE`: a switch that sets the key;
//! - `section`: a table of its own, with rows of its own.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::num::NonZeroU32;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::Overrides;
use super::values::{
    Address, AlternateIp, AlternateServer, BlankOr, Credential, Domain, ExternalAddress, FilePath, List,
    ListenAddresses, LogFormat, LogLevel, Map, Maybe, Name, One, PeerRange, PortRange, Positive, Realm, RelayIp, Rule,
    Secret, Software, StoreFlag, StoreLocation, UserSecret, Workers, positive, table,
};
use crate::proto::server::ExternalIp;
use crate::store::StoreUrl;

/// The listen address when neither the file nor a flag gives one.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 3478));
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
pub const DEFAULT_TLS_LISTEN: SocketAddr = SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 5349));
/// TLS handshakes in progress per worker. A handshake costs one key
/// exchange and a signature (well under a millisecond each), so 256 at once
/// is more than a busy server starts in a second, yet bounds what a flood of
/// half-open handshakes can hold.
pub const DEFAULT_TLS_MAX_HANDSHAKES: NonZeroU32 = positive(256);
/// Seconds a TLS handshake may take: generous for a slow mobile link,
/// short enough that idle connections do not pile up.
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: NonZeroU32 = positive(10);
/// Seconds a store query, or a connection to the store, may take.
pub const DEFAULT_STORE_TIMEOUT: NonZeroU32 = positive(5);
/// Seconds a load balancer may take to send its PROXY header: it sends the
/// header as soon as it connects, so a few seconds cover a busy one.
pub const DEFAULT_PROXY_HEADER_TIMEOUT: NonZeroU32 = positive(5);

/// A flag whose value a rule refused.
#[derive(Debug)]
pub(super) struct FlagError {
    /// The flag's field in [`Overrides`], which clap spells with dashes.
    pub field: &'static str,
    pub message: String,
}

impl FlagError {
    /// The flag as typed: `--alternate-domain`.
    pub fn flag(&self) -> String {
        format!("--{}", self.field.replace('_', "-"))
    }
}

/// A flag's value, when it was given: a list flag counts as given when it
/// was given at least once, and then replaces the file's list.
trait Given {
    type Value;

    fn given(&self) -> Option<&Self::Value>;
}

impl<T> Given for Option<T> {
    type Value = T;

    fn given(&self) -> Option<&T> {
        self.as_ref()
    }
}

impl<T> Given for Vec<T> {
    type Value = Vec<T>;

    fn given(&self) -> Option<&Vec<T>> {
        (!self.is_empty()).then_some(self)
    }
}

/// One row's flag, laid over `$key` (see the module doc for the forms).
macro_rules! apply_flag {
    ($key:expr, $flags:ident, replace $flag:ident) => {
        if let Some(value) = Given::given(&$flags.$flag) {
            $key = value.clone().into();
        }
    };
    ($key:expr, $flags:ident, check $flag:ident with $rule:ty) => {
        if let Some(value) = Given::given(&$flags.$flag) {
            let checked = <$rule as Rule>::check(value.clone())
                .map_err(|message| FlagError { field: stringify!($flag), message })?;
            $key = checked.into();
        }
    };
    ($key:expr, $flags:ident, extend $flag:ident) => {
        $key.extend($flags.$flag.iter().cloned());
    };
    ($key:expr, $flags:ident, if $flag:ident => $value:expr) => {
        if $flags.$flag {
            $key = $value;
        }
    };
    ($key:expr, $flags:ident, section) => {
        $key.apply_flags($flags)?;
    };
}

/// Writes one table of settings: the struct (serde reads it strictly,
/// missing keys from its default), its `Default`, and `apply_flags`.
macro_rules! settings {
    (
        $(#[$struct_meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$meta:meta])*
                pub $key:ident: $ty:ty = $default:expr
                    $(, $how:ident $($flag:ident)? $(with $rule:ty)? $(=> $value:expr)?)?;
            )*
        }
    ) => {
        $(#[$struct_meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
        #[serde(default, deny_unknown_fields)]
        pub struct $name {
            $($(#[$meta])* pub $key: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self { $($key: $default,)* }
            }
        }

        impl $name {
            /// Lays the command line over these settings.
            pub(super) fn apply_flags(&mut self, flags: &Overrides) -> Result<(), FlagError> {
                $($(apply_flag!(self.$key, flags, $how $($flag)? $(with $rule)? $(=> $value)?);)?)*
                Ok(())
            }
        }
    };
}

settings! {
    /// What the file and the command line say, each value valid on its own.
    pub struct Settings {
        /// Addresses to listen on, UDP and TCP.
        #[serde(with = "One::<ListenAddresses>")]
        pub listen: Vec<SocketAddr> = vec![DEFAULT_LISTEN], replace listen;
        #[serde(with = "One::<Realm>")]
        pub realm: String = DEFAULT_REALM.to_owned(), check realm with Realm;
        /// Worker threads; 0 in the file means one per CPU core, resolved as it is read.
        #[serde(with = "One::<Workers>")]
        pub workers: usize = Workers::per_core(), check workers with Workers;
        #[serde(with = "BlankOr::<Software>")]
        pub software: Option<String> = None;
        pub rfc3489: bool = false;
        /// RFC 5780 NAT behaviour discovery, answered from `alternate_ip` and
        /// `alternate_port` too.
        pub rfc5780: bool = false, if rfc5780 => true;
        #[serde(with = "Maybe::<AlternateIp>", skip_serializing_if = "Option::is_none")]
        pub alternate_ip: Option<IpAddr> = None, replace alternate_ip;
        /// Unset: the primary listen port plus one.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub alternate_port: Option<u16> = None, replace alternate_port;
        pub reason_phrases: bool = false;
        /// `turn` as configured; `None` means on exactly when credentials exist.
        #[serde(skip_serializing_if = "Option::is_none")]
        pub turn: Option<bool> = None, if stun_only => Some(false);
        #[serde(with = "List::<RelayIp>")]
        pub relay_ips: Vec<IpAddr> = Vec::new(), replace relay_ips;
        #[serde(with = "One::<PortRange>")]
        pub relay_ports: (u16, u16) = DEFAULT_RELAY_PORTS, replace relay_ports;
        #[serde(rename = "external_ip", with = "List::<ExternalAddress>")]
        pub external_ips: Vec<ExternalIp> = Vec::new(), replace external_ips;
        #[serde(with = "List::<PeerRange>")]
        pub allow_peers: Vec<IpNet> = Vec::new(), replace allow_peers;
        #[serde(with = "List::<PeerRange>")]
        pub deny_peers: Vec<IpNet> = Vec::new(), replace deny_peers;
        pub user_quota: u32 = 10, replace user_quota;
        pub total_quota: u32 = 0, replace total_quota;
        /// Where to send new allocations once `total_quota` is reached (300).
        #[serde(with = "List::<AlternateServer>")]
        pub alternate_servers: Vec<SocketAddr> = Vec::new(), replace alternate_servers;
        /// The alternates' domain, for TLS clients to check their certificate
        /// against (ALTERNATE-DOMAIN, RFC 8489 §14.16).
        #[serde(with = "Maybe::<Domain>", skip_serializing_if = "Option::is_none")]
        pub alternate_domain: Option<String> = None, check alternate_domain with Domain;
        /// TCP connections from one IP, and in all (0: no limit).
        pub max_tcp_per_ip: u32 = DEFAULT_TCP_PER_IP, replace max_tcp_per_ip;
        pub max_tcp_connections: u32 = 0;
        /// Bytes per second an allocation may relay each way (0: no limit).
        pub max_bps: u32 = 0, replace max_bps;
        #[serde(with = "One::<Positive>")]
        pub max_permissions: NonZeroU32 = positive(64);
        #[serde(with = "One::<Positive>")]
        pub max_channels: NonZeroU32 = positive(64);
        /// RFC 6062 peer data connections per TCP allocation.
        #[serde(with = "One::<Positive>")]
        pub max_tcp_peer_connections: NonZeroU32 = positive(64);
        /// Seconds.
        #[serde(with = "One::<Positive>")]
        pub default_lifetime: NonZeroU32 = positive(600);
        /// Seconds.
        #[serde(with = "One::<Positive>")]
        pub max_lifetime: NonZeroU32 = positive(3600);
        pub rfc5766_channels: bool = false, if rfc5766_channels => true;
        pub udp_buffer: u32 = DEFAULT_UDP_BUFFER, replace udp_buffer;
        /// Unauthenticated answers per second per source IP (0: no limit).
        pub rate_limit: u32 = DEFAULT_RATE_LIMIT, replace rate_limit;
        /// Answers a quiet source may get at once; unset: twice `rate_limit`.
        #[serde(with = "Maybe::<Positive>", skip_serializing_if = "Option::is_none")]
        pub rate_limit_burst: Option<NonZeroU32> = None;
        /// Limit loopback sources too (they are exempt by default).
        pub rate_limit_loopback: bool = false, if rate_limit_loopback => true;
        /// Seconds a drain (SIGUSR1) may last before it ends the allocations
        /// left and tern stops; unset: until the last one ends.
        #[serde(with = "Maybe::<Positive>", skip_serializing_if = "Option::is_none")]
        pub drain_timeout: Option<NonZeroU32> = None, check drain_timeout with Positive;
        /// The user and group to run as after binding (started as root).
        #[serde(with = "BlankOr::<Name>", skip_serializing_if = "Option::is_none")]
        pub user: Option<String> = None, replace run_as_user;
        #[serde(with = "BlankOr::<Name>", skip_serializing_if = "Option::is_none")]
        pub group: Option<String> = None, replace run_as_group;
        #[serde(deserialize_with = "table")]
        pub auth: AuthConfig = AuthConfig::default(), section;
        #[serde(deserialize_with = "table")]
        pub log: LogConfig = LogConfig::default(), section;
        #[serde(deserialize_with = "table", skip_serializing_if = "TlsConfig::disabled")]
        pub tls: TlsConfig = TlsConfig::default(), section;
        #[serde(deserialize_with = "table", skip_serializing_if = "MetricsConfig::disabled")]
        pub metrics: MetricsConfig = MetricsConfig::default(), section;
        #[serde(deserialize_with = "table", skip_serializing_if = "ProxyConfig::disabled")]
        pub proxy: ProxyConfig = ProxyConfig::default(), section;
        #[serde(deserialize_with = "table", skip_serializing_if = "AdminConfig::disabled")]
        pub admin: AdminConfig = AdminConfig::default(), section;
        #[serde(deserialize_with = "table", skip_serializing_if = "StoreConfig::disabled")]
        pub store: StoreConfig = StoreConfig::default(), section;
    }
}

settings! {
    /// `[auth]`: who may relay.
    pub struct AuthConfig {
        #[serde(with = "Map::<Credential>")]
        pub users: BTreeMap<String, UserSecret> = BTreeMap::new(), extend users;
        #[serde(with = "List::<Secret>")]
        pub secrets: Vec<String> = Vec::new(), extend secrets;
        pub allow_anonymous: bool = false, if allow_anonymous => true;
        /// Seconds a nonce stays valid.
        #[serde(with = "One::<Positive>")]
        pub nonce_lifetime: NonZeroU32 = positive(600);
    }
}

impl AuthConfig {
    /// Users or secrets in the configuration itself.
    pub fn has_credentials(&self) -> bool {
        !self.users.is_empty() || !self.secrets.is_empty()
    }
}

impl Settings {
    /// Whether anyone can authenticate: users or secrets configured, or a
    /// store to find them in (which may be empty now and filled later).
    pub fn has_credentials(&self) -> bool {
        self.auth.has_credentials() || self.store.url.is_some()
    }
}

settings! {
    /// `[log]`.
    #[derive(Copy)]
    pub struct LogConfig {
        pub level: LogLevel = LogLevel::Info, replace log_level;
        pub format: LogFormat = LogFormat::Text, replace log_format;
        /// One line per allocation created and deleted (with its traffic), at
        /// any level: an audit trail that costs a few microseconds per
        /// allocation, so it is off by default.
        pub allocations: bool = false, if log_allocations => true;
    }
}

settings! {
    /// `[tls]`: TURN and STUN over TLS (`turns:`, `stuns:`). On exactly when a
    /// certificate is configured.
    pub struct TlsConfig {
        /// TLS listen addresses; [`DEFAULT_TLS_LISTEN`] when a certificate is
        /// set and none is.
        #[serde(with = "List::<Address>")]
        pub listen: Vec<SocketAddr> = Vec::new(), replace tls_listen;
        #[serde(with = "BlankOr::<FilePath>", skip_serializing_if = "Option::is_none")]
        pub cert: Option<PathBuf> = None, replace tls_cert;
        #[serde(with = "BlankOr::<FilePath>", skip_serializing_if = "Option::is_none")]
        pub key: Option<PathBuf> = None, replace tls_key;
        #[serde(with = "One::<Positive>")]
        pub max_handshakes: NonZeroU32 = DEFAULT_TLS_MAX_HANDSHAKES;
        /// Seconds.
        #[serde(with = "One::<Positive>")]
        pub handshake_timeout: NonZeroU32 = DEFAULT_TLS_HANDSHAKE_TIMEOUT;
    }
}

impl TlsConfig {
    pub fn enabled(&self) -> bool {
        self.cert.is_some()
    }

    fn disabled(&self) -> bool {
        !self.enabled()
    }
}

settings! {
    /// `[metrics]`.
    pub struct MetricsConfig {
        /// Where Prometheus scrapes `/metrics`; off when unset.
        #[serde(with = "BlankOr::<Address>", skip_serializing_if = "Option::is_none")]
        pub listen: Option<SocketAddr> = None, replace metrics_listen;
    }
}

impl MetricsConfig {
    fn disabled(&self) -> bool {
        self.listen.is_none()
    }
}

settings! {
    /// `[admin]`: the admin API and dashboard, behind a bearer token.
    pub struct AdminConfig {
        /// Where the admin API listens; off when unset.
        #[serde(with = "BlankOr::<Address>", skip_serializing_if = "Option::is_none")]
        pub listen: Option<SocketAddr> = None, replace admin_listen;
        /// The file holding the bearer token (required with `listen`).
        #[serde(with = "BlankOr::<FilePath>", skip_serializing_if = "Option::is_none")]
        pub token_file: Option<PathBuf> = None, replace admin_token_file;
        /// Serve the API over TLS with the `[tls]` certificate.
        pub tls: bool = false, if admin_tls => true;
    }
}

impl AdminConfig {
    fn disabled(&self) -> bool {
        self.listen.is_none() && self.token_file.is_none()
    }
}

settings! {
    /// `[proxy]`: listeners behind a TCP load balancer that sends a PROXY
    /// protocol header (v1 or v2) first, naming the client. They are
    /// addresses of their own, beside `listen` and `tls.listen`, since a
    /// listener either expects a header on every connection or on none.
    pub struct ProxyConfig {
        /// TCP addresses where the header comes first, then STUN.
        #[serde(with = "List::<Address>")]
        pub listen: Vec<SocketAddr> = Vec::new(), replace proxy_listen;
        /// TLS addresses where the header comes first, then TLS (needs
        /// `tls.cert` and `tls.key`).
        #[serde(with = "List::<Address>")]
        pub tls_listen: Vec<SocketAddr> = Vec::new(), replace proxy_tls_listen;
        /// The load balancers' addresses or ranges: a connection from
        /// anywhere else is closed before its header is read.
        #[serde(with = "List::<PeerRange>")]
        pub trusted: Vec<IpNet> = Vec::new(), replace proxy_trusted;
        /// Seconds.
        #[serde(with = "One::<Positive>")]
        pub header_timeout: NonZeroU32 = DEFAULT_PROXY_HEADER_TIMEOUT;
    }
}

impl ProxyConfig {
    /// Whether any listener speaks the PROXY protocol.
    pub fn enabled(&self) -> bool {
        !self.listen.is_empty() || !self.tls_listen.is_empty()
    }

    fn disabled(&self) -> bool {
        !self.enabled() && self.trusted.is_empty()
    }
}

settings! {
    /// `[store]`: users, REST secrets, peer lists and realm options in a
    /// database shared with coturn's tools and other tern nodes.
    pub struct StoreConfig {
        /// `sqlite:///PATH`, `postgresql://…` or `redis://…`; off when unset.
        #[serde(with = "BlankOr::<StoreLocation>", skip_serializing_if = "Option::is_none")]
        pub url: Option<StoreUrl> = None, check store with StoreFlag;
        /// The password, on the file's first line (else TERN_STORE_PASSWORD).
        #[serde(with = "BlankOr::<FilePath>", skip_serializing_if = "Option::is_none")]
        pub password_file: Option<PathBuf> = None;
        /// CA certificates (PEM) for TLS to the store, instead of the system's.
        #[serde(with = "BlankOr::<FilePath>", skip_serializing_if = "Option::is_none")]
        pub tls_ca: Option<PathBuf> = None;
        /// Seconds.
        #[serde(with = "One::<Positive>")]
        pub timeout: NonZeroU32 = DEFAULT_STORE_TIMEOUT;
    }
}

impl StoreConfig {
    fn disabled(&self) -> bool {
        self.url.is_none() && self.password_file.is_none() && self.tls_ca.is_none()
    }
}
