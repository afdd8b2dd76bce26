//! The command-line flags that override configuration keys, declared once
//! for clap and for the settings table (`settings.rs`), which says which
//! key each one sets. `crate::cli` flattens them into `tern serve` and
//! `tern check`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::Args;
use ipnet::IpNet;

use super::{LogFormat, LogLevel, UserSecret};
use crate::proto::server::ExternalIp;

/// The flags that override configuration keys; `config`'s settings table
/// says which key each one sets. Lists replace the file's lists, except
/// users and secrets, which are added to the file's.
#[derive(Clone, Debug, Default, Args)]
pub struct Overrides {
    /// Address to listen on, UDP and TCP (repeatable; replaces `listen`).
    #[arg(long = "listen", value_name = "ADDR", value_parser = super::flag::<super::Address>)]
    pub listen: Vec<SocketAddr>,
    /// Realm for long-term credentials (replaces `realm`).
    #[arg(long)]
    pub realm: Option<String>,
    /// Worker threads, 0 for one per CPU core (replaces `workers`).
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Log level (replaces `log.level`).
    #[arg(long, value_enum, value_name = "LEVEL")]
    pub log_level: Option<LogLevel>,
    /// Log format (replaces `log.format`).
    #[arg(long, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// Log every allocation created and deleted, with its traffic (sets `log.allocations`).
    #[arg(long)]
    pub log_allocations: bool,
    /// Serve STUN only, even with credentials configured (sets `turn = false`).
    #[arg(long)]
    pub stun_only: bool,
    /// Answer RFC 5780 NAT behaviour discovery from a second address (sets `rfc5780`; needs --alternate-ip).
    #[arg(long)]
    pub rfc5780: bool,
    /// The second IP for RFC 5780 (replaces `alternate_ip`).
    #[arg(long, value_name = "IP", value_parser = super::flag::<super::AlternateIp>)]
    pub alternate_ip: Option<IpAddr>,
    /// The second port for RFC 5780, default the listen port + 1 (replaces `alternate_port`).
    #[arg(long, value_name = "PORT")]
    pub alternate_port: Option<u16>,
    /// A TURN user (repeatable; added to `auth.users`).
    #[arg(long = "user", value_name = "NAME:PASSWORD", value_parser = super::user_flag)]
    pub users: Vec<(String, UserSecret)>,
    /// A TURN REST API shared secret (repeatable; added to `auth.secrets`).
    #[arg(long = "secret", value_name = "SECRET")]
    pub secrets: Vec<String>,
    /// Relay for anyone without credentials (sets `auth.allow_anonymous`).
    #[arg(long)]
    pub allow_anonymous: bool,
    /// Relay address (repeatable; replaces `relay_ips`).
    #[arg(long = "relay-ip", value_name = "IP", value_parser = super::flag::<super::RelayIp>)]
    pub relay_ips: Vec<IpAddr>,
    /// Relay port range (replaces `relay_ports`).
    #[arg(long, value_name = "MIN-MAX", value_parser = super::flag::<super::PortRange>)]
    pub relay_ports: Option<(u16, u16)>,
    /// Public address advertised for a private relay address (repeatable; replaces `external_ip`).
    #[arg(long = "external-ip", value_name = "PUBLIC[/PRIVATE]", value_parser = super::flag::<super::ExternalAddress>)]
    pub external_ips: Vec<ExternalIp>,
    /// Peer range to allow despite the default deny list (repeatable; replaces `allow_peers`).
    #[arg(long = "allow-peer", value_name = "CIDR", value_parser = super::flag::<super::PeerRange>)]
    pub allow_peers: Vec<IpNet>,
    /// Peer range to refuse (repeatable; replaces `deny_peers`).
    #[arg(long = "deny-peer", value_name = "CIDR", value_parser = super::flag::<super::PeerRange>)]
    pub deny_peers: Vec<IpNet>,
    /// Allocations per user, 0 for no limit (replaces `user_quota`).
    #[arg(long, value_name = "N")]
    pub user_quota: Option<u32>,
    /// Allocations in all, 0 for no limit (replaces `total_quota`).
    #[arg(long, value_name = "N")]
    pub total_quota: Option<u32>,
    /// Server to send new allocations to once the total quota is reached,
    /// with 300 Try Alternate (repeatable; replaces `alternate_servers`).
    #[arg(long = "alternate-server", value_name = "ADDR", value_parser = super::flag::<super::AlternateServer>)]
    pub alternate_servers: Vec<SocketAddr>,
    /// The alternates' domain, sent to TLS clients with ALTERNATE-DOMAIN (replaces `alternate_domain`).
    #[arg(long, value_name = "NAME")]
    pub alternate_domain: Option<String>,
    /// TCP connections from one IP, 0 for no limit (replaces `max_tcp_per_ip`).
    #[arg(long, value_name = "N")]
    pub max_tcp_per_ip: Option<u32>,
    /// Bytes per second each allocation may relay each way, 0 for no limit (replaces `max_bps`).
    #[arg(long, value_name = "BYTES")]
    pub max_bps: Option<u32>,
    /// Accept channel numbers 0x5000-0x7FFF from RFC 5766 clients (sets `rfc5766_channels`).
    #[arg(long)]
    pub rfc5766_channels: bool,
    /// Receive and send buffer of each UDP listen socket, in bytes (replaces `udp_buffer`).
    #[arg(long, value_name = "BYTES")]
    pub udp_buffer: Option<u32>,
    /// Unauthenticated answers per second per source IP, 0 for no limit (replaces `rate_limit`).
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// Apply the per-source limit to loopback sources too (sets `rate_limit_loopback`).
    #[arg(long)]
    pub rate_limit_loopback: bool,
    /// Seconds a drain (SIGUSR1) may last before it ends what is left (replaces `drain_timeout`).
    #[arg(long, value_name = "SECONDS")]
    pub drain_timeout: Option<u32>,
    /// When started as root, the user to run as once listening (replaces `user`).
    #[arg(long, value_name = "NAME")]
    pub run_as_user: Option<String>,
    /// The group to run as (replaces `group`; default: the user's group).
    #[arg(long, value_name = "NAME")]
    pub run_as_group: Option<String>,
    /// Address to serve TLS on (repeatable; replaces `tls.listen`; default 0.0.0.0:5349 with a certificate).
    #[arg(long = "tls-listen", value_name = "ADDR", value_parser = super::flag::<super::Address>)]
    pub tls_listen: Vec<SocketAddr>,
    /// PEM certificate chain for TLS, leaf first (replaces `tls.cert`).
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate (replaces `tls.key`).
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
    /// TCP address where a load balancer sends a PROXY header first (repeatable; replaces `proxy.listen`).
    #[arg(long = "proxy-listen", value_name = "ADDR", value_parser = super::flag::<super::Address>)]
    pub proxy_listen: Vec<SocketAddr>,
    /// TLS address where a load balancer sends a PROXY header first (repeatable; replaces `proxy.tls_listen`).
    #[arg(long = "proxy-tls-listen", value_name = "ADDR", value_parser = super::flag::<super::Address>)]
    pub proxy_tls_listen: Vec<SocketAddr>,
    /// Load balancer allowed to send PROXY headers (repeatable; replaces `proxy.trusted`).
    #[arg(long = "proxy-trusted", value_name = "CIDR", value_parser = super::flag::<super::PeerRange>)]
    pub proxy_trusted: Vec<IpNet>,
    /// Address to serve Prometheus metrics on, at /metrics (replaces `metrics.listen`).
    #[arg(long, value_name = "ADDR", value_parser = super::flag::<super::Address>)]
    pub metrics_listen: Option<SocketAddr>,
    /// Address to serve the admin API and dashboard on (replaces `admin.listen`).
    #[arg(long, value_name = "ADDR", value_parser = super::flag::<super::Address>)]
    pub admin_listen: Option<SocketAddr>,
    /// File holding the admin API's bearer token (replaces `admin.token_file`).
    #[arg(long, value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// Serve the admin API over TLS with the [tls] certificate (sets `admin.tls`).
    #[arg(long)]
    pub admin_tls: bool,
    /// Users, secrets and realm options from this database (replaces `store.url`; no password in it:
    /// use `store.password_file` or TERN_STORE_PASSWORD).
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}
