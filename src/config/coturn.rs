//! `tern convert`: a coturn `turnserver.conf` in, the equivalent `tern.toml`
//! out, with a comment on every option that could not be carried over and
//! on every default of tern's that differs from coturn's.
//!
//! The file is read as coturn 4.17.1 reads it (`read_config_file` and
//! `set_option` in src/apps/relay/mainrelay.c): one option a line, its
//! name up to the first blank or `=`, the value after any run of blanks and
//! `=` (so `key=value`, `key value` and a bare flag all work), `#` only at
//! the start of a line, one pair of quotes taken off a value, a flag's
//! value read as coturn's booleans, repeated options adding to a list or
//! replacing a value as coturn does. Unlike coturn, which skips an option
//! it does not know with a warning, an unknown option or a value tern
//! cannot read is an error naming the line: a conversion that quietly lost
//! a line would not be equivalent.
//!
//! What is carried: whatever keeps the service the same for its clients,
//! coturn's defaults included where they differ: no credentials means
//! anonymous relaying (`auth.allow_anonymous`), no user-quota means no
//! limit (`user_quota = 0`). What tern keeps stricter than coturn, with
//! the value that would match coturn in a comment: the peer policy (tern
//! refuses private and other special ranges and its own addresses, coturn
//! relays to them), the rate limit on unauthenticated answers, the TCP
//! connections per source IP, the permission and channel caps. The server
//! names each of those in a warning the first time it refuses something
//! (`proto::server::notices`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

use ipnet::{IpNet, Ipv4Subnets, Ipv6Subnets};

use super::values::{AlternateServer, Credential, ExternalAddress, Realm, RelayIp, Rule, TextRule};
use super::{DEFAULT_RATE_LIMIT, DEFAULT_TCP_PER_IP, LogLevel, Settings, toml_key};
use crate::proto::server::ExternalIp;
use crate::proto::{coturn, policy};

/// coturn's defaults for the options the conversion has to spell out.
const COTURN_PORT: u16 = 3478;
const COTURN_TLS_PORT: u16 = 5349;
const COTURN_MIN_PORT: u16 = 49152;
const COTURN_MAX_PORT: u16 = 65535;
/// Allocation, channel and permission lifetimes, and the nonce's, seconds.
const COTURN_LIFETIME: u32 = 600;
const COTURN_MAX_LIFETIME: u32 = 3600;
const COTURN_CHANNEL_LIFETIME: u32 = 600;
const COTURN_PERMISSION_LIFETIME: u32 = 300;
const COTURN_STALE_NONCE: u32 = 600;
const COTURN_PROMETHEUS_PORT: u16 = 9641;
/// coturn's most relay threads.
const COTURN_MAX_RELAY_THREADS: u32 = 128;
/// 401 answers per second per source with `unauthorized-ratelimit`.
const COTURN_RATELIMIT_RPS: u32 = 10;

/// Why an option is not carried over, for the options that share a reason.
const DATABASE: &str = "not yet: tern has no database credential store (a later feature); put users in \
                        [auth] users (`tern key` prints the key of a password) and REST secrets in auth.secrets";
const TELNET_CLI: &str = "no equivalent: tern has no telnet CLI; its admin API ([admin] listen and token_file) and `tern admin` do that work";
const WEB_ADMIN: &str = "no equivalent: tern has no web admin of coturn's kind; its admin API ([admin] listen and token_file) does that work";
const TLS_LIBRARY: &str = "no equivalent: tern's TLS (rustls) offers TLS 1.2 and 1.3 with its own safe choice of \
                           ciphers, curves and key exchange";
const LOG_DESTINATION: &str = "no equivalent: tern logs to standard error (the journal, under systemd); \
                               log.format = \"json\" for a collector";
const ALWAYS_ON: &str = "nothing to carry: tern always does this";
const NO_EFFECT: &str = "nothing to carry: it has no effect in coturn 4.17.1 either";
const MULTIPLEX: &str = "no equivalent: multiplex-peer is coturn's non-standard shared relay socket; tern opens a \
                         relay socket per allocation from relay_ports";
const DATABASE_OPTION: &str = "nothing to carry: it tunes coturn's database, which tern does not have";

/// A coturn configuration that cannot be converted.
#[derive(Debug, thiserror::Error)]
pub enum ConvertError {
    #[error("cannot read coturn configuration {file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: line {line}: {message}")]
    Line { file: String, line: usize, message: String },
}

/// Reads coturn's `path` and returns the equivalent tern configuration.
pub fn convert_file(path: &Path) -> Result<String, ConvertError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConvertError::Read { file: file.clone(), source })?;
    convert(&text, &file)
}

/// Converts coturn configuration `text`; `file` names it in errors and in
/// the header of the result.
pub fn convert(text: &str, file: &str) -> Result<String, ConvertError> {
    let error = |line: usize, message: String| ConvertError::Line { file: file.to_owned(), line, message };
    let mut coturn = Coturn::default();
    for option in options(text) {
        coturn.read(&option).map_err(|message| error(option.line, format!("{}: {message}", option.name)))?;
    }
    coturn.to_toml(file).map_err(|(line, message)| error(line, message))
}

/// One option of the file, as coturn splits a line.
struct Setting<'a> {
    line: usize,
    name: &'a str,
    value: &'a str,
}

/// The options of `text`, in order.
fn options(text: &str) -> impl Iterator<Item = Setting<'_>> {
    text.lines().enumerate().filter_map(|(index, line)| {
        let line_number = index + 1;
        let line = line.trim_start_matches([' ', '\t']).trim_end();
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let separators = [' ', '\t', '='];
        let (name, value) = match line.find(separators) {
            Some(at) => (&line[..at], line[at..].trim_start_matches(separators)),
            None => (line, ""),
        };
        // coturn takes off one opening quote and, after trailing blanks, one closing one.
        let value = match value.strip_prefix('"') {
            Some(quoted) => {
                let quoted = quoted.trim_end();
                quoted.strip_suffix('"').unwrap_or(quoted)
            }
            None => value,
        };
        Some(Setting { line: line_number, name, value })
    })
}

/// coturn's booleans (`get_bool_value`): no value is true; `0`, `n`..,
/// `f`.. and `off` are false; `1`-`9`.., `y`.., `t`.. and `on` are true.
fn boolean(value: &str) -> Result<bool, String> {
    match value.as_bytes().first() {
        None => Ok(true),
        Some(b'0' | b'n' | b'N' | b'f' | b'F') => Ok(false),
        Some(b'1'..=b'9' | b'y' | b'Y' | b't' | b'T') => Ok(true),
        _ if matches!(value, "off" | "OFF" | "Off") => Ok(false),
        _ if matches!(value, "on" | "ON" | "On") => Ok(true),
        _ => Err(format!("{value:?} is not a boolean (on/off, yes/no, 1/0, true/false)")),
    }
}

fn required(value: &str) -> Result<&str, String> {
    if value.is_empty() { Err("needs a value".into()) } else { Ok(value) }
}

fn number<T: std::str::FromStr>(value: &str) -> Result<T, String> {
    required(value)?.parse().map_err(|_| format!("{value:?} is not a number tern can take"))
}

fn port(value: &str) -> Result<u16, String> {
    required(value)?.parse().map_err(|_| format!("{value:?} is not a port number"))
}

/// An IP address, IPv6 with or without brackets.
fn ip(value: &str) -> Result<IpAddr, String> {
    let bare = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
    required(bare)?.parse().map_err(|_| format!("{value:?} is not an IP address"))
}

/// `IP[:PORT]`, IPv6 in brackets with a port, the port `default` when left out.
fn server_address(value: &str, default: u16) -> Result<SocketAddr, String> {
    required(value)?
        .parse::<SocketAddr>()
        .or_else(|_| ip(value).map(|ip| SocketAddr::new(ip, default)))
        .map_err(|_| format!("{value:?} is not IP[:PORT]"))
}

/// Inclusive address ranges of one family, as coturn's peer lists hold
/// them: `start..=end` over the address as a number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Span {
    v6: bool,
    start: u128,
    end: u128,
}

impl Span {
    fn of_net(net: IpNet) -> Self {
        let number = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => u128::from(u32::from(v4)),
            IpAddr::V6(v6) => u128::from(v6),
        };
        Self { v6: net.addr().is_ipv6(), start: number(net.network()), end: number(net.broadcast()) }
    }

    /// coturn's `IP` or `IP-IP` (it takes no CIDR).
    fn parse(value: &str) -> Result<Self, String> {
        let bad = || format!("{value:?} is not an IP address or an IP-IP range");
        let (first, last) = match required(value)?.split_once('-') {
            Some((first, last)) => (ip(first.trim()).map_err(|_| bad())?, ip(last.trim()).map_err(|_| bad())?),
            None => {
                let single = ip(value).map_err(|_| bad())?;
                (single, single)
            }
        };
        match (first, last) {
            (IpAddr::V4(a), IpAddr::V4(b)) if a <= b => {
                Ok(Self { v6: false, start: u128::from(u32::from(a)), end: u128::from(u32::from(b)) })
            }
            (IpAddr::V6(a), IpAddr::V6(b)) if a <= b => Ok(Self { v6: true, start: a.into(), end: b.into() }),
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                Err(format!("{value:?} ends before it starts"))
            }
            _ => Err(format!("{value:?} mixes IPv4 and IPv6")),
        }
    }

    /// The fewest CIDR blocks that cover exactly this range.
    fn cidrs(self) -> Vec<IpNet> {
        if self.v6 {
            Ipv6Subnets::new(Ipv6Addr::from(self.start), Ipv6Addr::from(self.end), 0).map(IpNet::V6).collect()
        } else {
            let v4 = |n: u128| Ipv4Addr::from(u32::try_from(n).expect("an IPv4 span holds 32-bit numbers"));
            Ipv4Subnets::new(v4(self.start), v4(self.end), 0).map(IpNet::V4).collect()
        }
    }
}

/// coturn's `IP` or `IP-IP` peer range as the fewest CIDR blocks that
/// cover it: how the store reads coturn's peer lists.
pub fn peer_range_cidrs(value: &str) -> Result<Vec<IpNet>, String> {
    Span::parse(value).map(Span::cidrs)
}

/// `spans` sorted, with overlapping and adjacent ones merged.
fn merge(mut spans: Vec<Span>) -> Vec<Span> {
    spans.sort();
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for span in spans {
        match merged.last_mut() {
            Some(last) if last.v6 == span.v6 && span.start <= last.end.saturating_add(1) => {
                last.end = last.end.max(span.end);
            }
            _ => merged.push(span),
        }
    }
    merged
}

/// What of `spans` lies outside every one of `minus`.
fn subtract(spans: Vec<Span>, minus: &[Span]) -> Vec<Span> {
    let mut left = merge(spans);
    for cut in minus {
        left = left
            .into_iter()
            .flat_map(|span| {
                if span.v6 != cut.v6 || cut.end < span.start || cut.start > span.end {
                    return vec![span];
                }
                let mut pieces = Vec::new();
                if cut.start > span.start {
                    pieces.push(Span { end: cut.start - 1, ..span });
                }
                if cut.end < span.end {
                    pieces.push(Span { start: cut.end + 1, ..span });
                }
                pieces
            })
            .collect();
    }
    left
}

fn spans_of(ranges: &[&str]) -> Vec<Span> {
    ranges.iter().map(|range| Span::of_net(range.parse().expect("the coturn ranges are valid CIDR"))).collect()
}

/// How coturn authenticates, as `set_option` and the checks after it
/// decide: the last of `lt-cred-mech` and `no-auth` wins, a REST secret
/// turns long-term credentials on, and with neither coturn relays for
/// anyone unless a static user exists.
#[derive(Debug, Default)]
struct AuthFlags {
    long_term: bool,
    anonymous: bool,
    /// `use-auth-secret` or `static-auth-secret`: only REST credentials.
    rest: bool,
    /// The line of the last option that changed one of these.
    line: usize,
}

/// The options coturn reads as booleans (`get_bool_value`), which stops
/// coturn at a value that is not one, whatever the option does.
const BOOLEAN_OPTIONS: &[&str] = &[
    "allow-loopback-peers",
    "check-origin-consistency",
    "cli",
    "daemon",
    "dh1066",
    "dh566",
    "drop-invalid-packets",
    "drop-invalid-packets-log",
    "dtls",
    "fingerprint",
    "include-reason-string",
    "keep-address-family",
    "log-binding",
    "lt-cred-mech",
    "mobility",
    "new-log-timestamp",
    "no-auth",
    "no-dtls",
    "no-multicast-peers",
    "no-software-attribute",
    "no-stdout-log",
    "no-stun",
    "no-tcp",
    "no-tcp-relay",
    "no-tls",
    "no-tlsv1_2",
    "no-udp",
    "no-udp-relay",
    "oauth",
    "prometheus-tls",
    "raw-public-keys",
    "respond-http-unsupported",
    "rfc3489-compatibility",
    "rfc5766-channel-numbers",
    "secure-stun",
    "server-relay",
    "simple-log",
    "software-attribute",
    "stateless-nonce",
    "stun-backward-compatibility",
    "stun-only",
    "syslog",
    "tlsv1",
    "tlsv1_1",
    "udp-gso",
    "udp-recvmmsg",
    "udp-recvmmsg-log",
    "udp-self-balance",
    "udp-sendmmsg-log",
    "unauthorized-ratelimit",
    "verbose",
    "Verbose",
    "web-admin",
    "web-admin-listen-on-workers",
];

/// A static user as coturn's `user=NAME:PASSWORD` or `user=NAME:0xKEY` gave it.
struct User {
    line: usize,
    name: String,
    /// `"password"` or `{ key = "0x..." }`, checked as `auth.users` checks it.
    secret: toml::Value,
}

/// A coturn option that is not carried over, and why.
#[derive(Clone)]
struct Note {
    line: usize,
    option: String,
    why: String,
}

/// The coturn settings that matter to the conversion, as read.
#[derive(Default)]
struct Coturn {
    listening_ips: Vec<IpAddr>,
    listening_port: Option<(usize, u16)>,
    tls_listening_port: Option<(usize, u16)>,
    alt_listening_port: Option<(usize, u16)>,
    aux_servers: Vec<SocketAddr>,
    relay_ips: Vec<IpAddr>,
    external_ips: Vec<ExternalIp>,
    /// An `external-ip` without a private address was read; coturn takes one.
    sole_external_ip: bool,
    min_port: Option<u16>,
    max_port: Option<u16>,
    /// The line of the later of the two.
    ports_line: usize,
    relay_threads: Option<u32>,
    cpus: Option<u32>,
    sock_buf_size: Option<u32>,
    auth: AuthFlags,
    users: Vec<User>,
    secrets: Vec<String>,
    realm: Option<String>,
    user_quota: Option<u32>,
    total_quota: Option<u32>,
    max_bps: Option<u32>,
    stale_nonce: Option<u32>,
    max_allocate_lifetime: Option<u32>,
    allowed: Vec<Span>,
    denied: Vec<Span>,
    allow_loopback: bool,
    cert: Option<String>,
    pkey: Option<String>,
    no_tls: bool,
    stun_only: bool,
    software: bool,
    rfc5780: Option<usize>,
    rfc3489: bool,
    rfc5766_channels: bool,
    reason_strings: bool,
    alternate_servers: Vec<SocketAddr>,
    log_level: Option<LogLevel>,
    /// 1 for `verbose`, 2 for `Verbose`.
    verbose: u8,
    proc_user: Option<String>,
    proc_group: Option<(usize, String)>,
    prometheus: bool,
    prometheus_port: Option<u16>,
    prometheus_address: Option<IpAddr>,
    unauthorized_ratelimit: bool,
    ratelimit_rps: Option<u32>,
    notes: Vec<Note>,
}

impl Coturn {
    /// Takes one option in, as coturn's `set_option` would; an error is
    /// what is wrong with its value (the caller names the line and option).
    fn read(&mut self, option: &Setting<'_>) -> Result<(), String> {
        let value = option.value;
        let flag = || boolean(value);
        if BOOLEAN_OPTIONS.contains(&option.name) {
            flag()?;
        }
        match option.name {
            "listening-ip" => self.listening_ips.push(ip(value)?),
            "listening-port" => self.listening_port = Some((option.line, port(value)?)),
            "tls-listening-port" => self.tls_listening_port = Some((option.line, port(value)?)),
            "alt-listening-port" => self.alt_listening_port = Some((option.line, port(value)?)),
            "aux-server" => self
                .aux_servers
                .push(required(value)?.parse().map_err(|_| format!("{value:?} is not IP:PORT ([IPv6]:PORT)"))?),
            "relay-ip" => self.relay_ips.push(RelayIp::parse(value.to_owned())?),
            "external-ip" => {
                let external = ExternalAddress::check(required(value)?.to_owned())?;
                if external.private.is_none() {
                    if self.sole_external_ip {
                        return Err("a second address without /PRIVATE: coturn takes only one; map each relay \
                                    address as PUBLIC/PRIVATE"
                            .into());
                    }
                    self.sole_external_ip = true;
                }
                self.external_ips.push(external);
            }
            "min-port" => {
                self.min_port = Some(port(value)?);
                self.ports_line = option.line;
            }
            "max-port" => {
                self.max_port = Some(port(value)?);
                self.ports_line = option.line;
            }
            "relay-threads" => self.relay_threads = Some(number(value)?),
            "cpus" => self.cpus = Some(number(value)?),
            "sock-buf-size" => self.sock_buf_size = Some(number(value)?),
            "lt-cred-mech" => {
                self.auth.long_term = flag()?;
                self.auth.line = option.line;
            }
            "no-auth" => {
                self.auth.anonymous = flag()?;
                self.auth.line = option.line;
            }
            "use-auth-secret" => self.rest_on(option.line),
            "static-auth-secret" => {
                self.secrets.push(required(value)?.to_owned());
                self.rest_on(option.line);
            }
            "user" => self.users.push(user(option.line, value)?),
            "realm" => self.realm = Some(Realm::parse(required(value)?.to_owned())?),
            "user-quota" => self.user_quota = Some(number(value)?),
            "total-quota" => self.total_quota = Some(number(value)?),
            "max-bps" => self.max_bps = Some(number(value)?),
            "stale-nonce" => {
                self.stale_nonce = Some(if value.is_empty() { COTURN_STALE_NONCE } else { number(value)? })
            }
            "max-allocate-lifetime" => {
                self.max_allocate_lifetime = Some(if value.is_empty() { COTURN_MAX_LIFETIME } else { number(value)? })
            }
            "channel-lifetime" => {
                let lifetime = if value.is_empty() { COTURN_CHANNEL_LIFETIME } else { number(value)? };
                self.lifetime_note(option, lifetime, COTURN_CHANNEL_LIFETIME);
            }
            "permission-lifetime" => {
                let lifetime = if value.is_empty() { COTURN_PERMISSION_LIFETIME } else { number(value)? };
                self.lifetime_note(option, lifetime, COTURN_PERMISSION_LIFETIME);
            }
            "allowed-peer-ip" => self.allowed.push(Span::parse(value)?),
            "denied-peer-ip" => self.denied.push(Span::parse(value)?),
            "allow-loopback-peers" => self.allow_loopback = flag()?,
            "no-multicast-peers" if flag()? => {
                self.note(option, "nothing to carry: tern refuses multicast peers always")
            }
            "no-multicast-peers" => self.note(
                option,
                "no equivalent: tern refuses multicast peers always; allow_peers can open a multicast range",
            ),
            "cert" => self.cert = Some(required(value)?.to_owned()),
            "pkey" => self.pkey = Some(required(value)?.to_owned()),
            "no-tls" => self.no_tls = flag()?,
            "stun-only" => self.stun_only = flag()?,
            "software-attribute" => self.software = flag()?,
            "no-software-attribute" => self.software = !flag()?,
            "rfc5780" => self.rfc5780 = Some(option.line),
            "rfc3489-compatibility" => self.rfc3489 = flag()?,
            "rfc5766-channel-numbers" => self.rfc5766_channels = flag()?,
            "include-reason-string" => self.reason_strings = flag()?,
            "alternate-server" => {
                self.alternate_servers.push(AlternateServer::parse(server_address(value, COTURN_PORT)?.to_string())?)
            }
            "log-min-level" => {
                self.log_level = Some(match value.to_ascii_lowercase().as_str() {
                    "debug" => LogLevel::Debug,
                    "info" => LogLevel::Info,
                    "warning" => LogLevel::Warn,
                    "error" => LogLevel::Error,
                    _ => return Err(format!("{value:?} is not debug, info, warning or error")),
                })
            }
            "verbose" if self.verbose < 2 => self.verbose = u8::from(flag()?),
            "verbose" => {}
            "Verbose" if flag()? => self.verbose = 2,
            "Verbose" => {}
            "proc-user" => self.proc_user = Some(required(value)?.to_owned()),
            "proc-group" => self.proc_group = Some((option.line, required(value)?.to_owned())),
            "prometheus" => self.prometheus = true,
            "prometheus-port" => self.prometheus_port = Some(port(value)?),
            "prometheus-address" => self.prometheus_address = Some(ip(value)?),
            "unauthorized-ratelimit" => self.unauthorized_ratelimit = flag()?,
            "unauthorized-ratelimit-rps" => {
                let rps: u32 = if value.is_empty() { COTURN_RATELIMIT_RPS } else { number(value)? };
                self.ratelimit_rps = Some(if rps == 0 { COTURN_RATELIMIT_RPS } else { rps });
            }
            _ => return self.read_uncarried(option),
        }
        Ok(())
    }

    /// The options tern has no key for: each is noted with the reason.
    fn read_uncarried(&mut self, option: &Setting<'_>) -> Result<(), String> {
        let value = option.value;
        let why = match option.name {
            "userdb" | "db" | "psql-userdb" | "sql-userdb" | "mysql-userdb" | "mongo-userdb" | "redis-userdb" => {
                DATABASE
            }
            "secret-key-file" | "no-auth-pings" | "no-dynamic-ip-list" | "no-dynamic-realms" => DATABASE_OPTION,
            "redis-statsdb" => {
                "not yet: tern publishes no allocation events to Redis; log.allocations logs every allocation \
                 with its traffic, and the metrics endpoint counts them"
            }
            "cli" | "no-cli" | "cli-ip" | "cli-port" | "cli-password" | "cli-max-output-sessions" => TELNET_CLI,
            "web-admin" | "web-admin-ip" | "web-admin-port" | "web-admin-listen-on-workers" => WEB_ADMIN,
            "acme-redirect" => "no equivalent: tern answers no HTTP on its TURN ports; serve ACME challenges elsewhere",
            "cipher-list" | "ec-curve-name" | "dh566" | "dh1066" | "dh-file" | "tlsv1" | "tlsv1_1" | "no-tlsv1_2" => {
                TLS_LIBRARY
            }
            "no-tlsv1" | "no-tlsv1_1" | "no-sslv2" | "no-sslv3" => {
                "nothing to carry: tern never offers TLS older than 1.2"
            }
            "pkey-pwd" => {
                "not supported: tern reads unencrypted keys only; decrypt the key file (`openssl pkey -in KEY -out \
                 KEY.plain`) and keep it root-only"
            }
            "CA-file" => "not yet: tern does not ask TURN clients for certificates",
            "raw-public-keys" => "no equivalent: tern serves certificates only (no RFC 7250 raw public keys)",
            "dtls" if boolean(value)? => {
                "not yet: tern has no DTLS (turns: over UDP, which no browser uses); clients can use TLS over TCP"
            }
            "dtls" => "nothing to carry: DTLS is off",
            "no-dtls" => "nothing to carry: tern has no DTLS",
            "no-udp" if boolean(value)? => {
                "no equivalent: tern serves UDP and TCP on every listen address; block UDP to them in the \
                 firewall to do without it"
            }
            "no-tcp" if boolean(value)? => {
                "no equivalent: tern serves UDP and TCP on every listen address; block TCP to them in the \
                 firewall to do without it"
            }
            "no-udp" | "no-tcp" => "nothing to carry: tern serves it",
            "no-udp-relay" | "no-tcp-relay" if boolean(value)? => {
                "no equivalent: tern relays UDP (RFC 8656) and TCP (RFC 6062) alike"
            }
            "no-udp-relay" | "no-tcp-relay" => "nothing to carry: tern relays it",
            "listening-device" | "relay-device" => {
                "no equivalent: tern binds addresses, not devices; list the device's addresses in listen or \
                 relay_ips"
            }
            "tcp-proxy-port" => "not yet: tern takes no PROXY protocol on its listeners",
            "alt-tls-listening-port" => "no equivalent: tern's RFC 5780 discovery runs over UDP and TCP, not TLS",
            "udp-self-balance" => {
                "no equivalent: tern redirects to alternate_servers only once total_quota is reached or while \
                 draining"
            }
            "tls-alternate-server" | "udp-alternate-server" | "tcp-alternate-server" => {
                "no equivalent: tern has one alternate_servers list for every transport (with alternate_domain \
                 for TLS clients)"
            }
            "multiplex-peer" | "multiplex-peer-port" | "multiplex-peer-max-peers" => MULTIPLEX,
            "udp-recvmmsg" | "udp-gso" => "nothing to carry: tern batches datagrams with recvmmsg and sendmmsg always",
            "udp-recvmmsg-log" | "udp-sendmmsg-log" => "no equivalent: tern logs no batch statistics",
            "server-relay" => "no equivalent: tern checks permissions on every packet from a peer (RFC 8656 §9)",
            "mobility" => "not yet: tern has no MICE mobility",
            "oauth" | "server-name" => "not yet: tern has no OAuth (RFC 7635); server-name only serves it",
            "check-origin-consistency" => "no equivalent: tern does not read ORIGIN",
            "secure-stun" => "no equivalent: tern answers Binding requests without credentials",
            "no-stun" => "no equivalent: tern always answers Binding requests",
            "rest-api-separator" if value == ":" => "nothing to carry: tern's REST usernames are EXPIRY:USER too",
            "rest-api-separator" => {
                "no equivalent: tern's REST usernames are EXPIRY:USER; have the credential service use ':'"
            }
            "stateless-nonce" if boolean(value)? => ALWAYS_ON,
            "stateless-nonce" => "no equivalent: tern's nonces are always stateless (an HMAC, no table)",
            "stateless-nonce-secret" => {
                "no equivalent: tern signs nonces with a random key per process, so a client a load balancer \
                 moves to another node gets one 438 and a fresh nonce"
            }
            "allocation-default-address-family" if value.eq_ignore_ascii_case("ipv4") => {
                "nothing to carry: tern relays IPv4 unless the client asks for IPv6 (RFC 8656 §7.2)"
            }
            "allocation-default-address-family" | "keep-address-family" => {
                "no equivalent: tern relays IPv4 unless the client asks for IPv6 (RFC 8656 §7.2)"
            }
            "max-allocate-timeout" => "no equivalent: tern answers an Allocate as soon as its relay socket is open",
            "drain-min-allocations" => {
                "no equivalent: tern's drain (SIGUSR1) ends when the last allocation has, or at drain_timeout"
            }
            "bps-capacity" => "not yet: tern limits bandwidth per allocation (max_bps), not for the whole server",
            "prometheus-path" if value == "/metrics" => "nothing to carry: tern serves /metrics",
            "prometheus-path" => "no equivalent: tern serves its metrics at /metrics only",
            "prometheus-username-labels" => "no equivalent: tern's metrics carry no usernames",
            "prometheus-tls" | "prometheus-cert" | "prometheus-key" => {
                "not yet: tern's metrics endpoint is plain HTTP; keep it on loopback or a management network"
            }
            "fingerprint" => "nothing to carry: tern adds FINGERPRINT to the answers of requests that carry one",
            "no-rfc5780" | "response-origin-only-with-rfc5780" | "no-stun-backward-compatibility" | "ne" => NO_EFFECT,
            "stun-backward-compatibility" => {
                "no equivalent: tern's Binding responses carry XOR-MAPPED-ADDRESS (and MAPPED-ADDRESS too with \
                 rfc5780, and to classic RFC 3489 requests with rfc3489)"
            }
            "respond-http-unsupported" => "no equivalent: tern closes connections that do not speak STUN",
            "drop-invalid-packets" => ALWAYS_ON,
            "drop-invalid-packets-log" => "no equivalent: tern counts malformed packets (metrics), logs them at trace",
            "log-binding" => "no equivalent: tern logs Binding requests at trace",
            "log-file" | "no-stdout-log" | "syslog" | "syslog-facility" | "simple-log" => LOG_DESTINATION,
            "new-log-timestamp" | "new-log-timestamp-format" => {
                "no equivalent: tern's log lines carry RFC 3339 timestamps"
            }
            "no-loopback-peers" => "nothing to carry: tern refuses loopback peers by default",
            "daemon" => "nothing to carry: tern runs in the foreground, as systemd wants (systemd/tern.service)",
            "pidfile" => "no equivalent: systemd tracks tern's process",
            "version" => "nothing to carry: it only prints coturn's version",
            _ => return Err("unknown option (not one of coturn 4.17.1's)".into()),
        };
        self.note(option, why);
        Ok(())
    }

    fn note(&mut self, option: &Setting<'_>, why: &str) {
        self.notes.push(Note { line: option.line, option: option.name.to_owned(), why: why.to_owned() });
    }

    fn rest_on(&mut self, line: usize) {
        self.auth.rest = true;
        self.auth.long_term = true;
        self.auth.line = line;
    }

    fn lifetime_note(&mut self, option: &Setting<'_>, lifetime: u32, standard: u32) {
        if lifetime == standard {
            self.note(option, "nothing to carry: tern's is the same, as RFC 8656 sets it");
        } else {
            self.note(option, &format!("no equivalent: tern keeps RFC 8656's {standard} seconds"));
        }
    }

    /// The tern configuration; an error names the line it comes from.
    fn to_toml(&self, file: &str) -> Result<String, (usize, String)> {
        let mut out = Toml::default();
        let mut notes = self.notes.clone();
        writeln!(
            out.header,
            "# tern configuration converted by `tern convert` from coturn's\n# {file}\n\
             # Check it with `tern check --config FILE` before use. Each key says what it\n\
             # comes from and how tern differs; the options that could not be carried\n\
             # over are listed at the end, each with the reason."
        )
        .expect("writing to a String cannot fail");

        let anonymous = self.anonymous()?;
        self.listen(&mut out);
        if let Some(realm) = &self.realm {
            out.top.key("realm", string(realm), "realm: the realm is part of every long-term key.");
        } else if !anonymous {
            out.top.comment(
                "realm: not set. coturn then uses the host's domain name, and its keys (user=NAME:0x...) were \
                 made with it: set realm to that name (tern's default is \"tern\").",
            );
        }
        let workers = match (self.relay_threads, self.cpus) {
            (Some(threads), _) => Some((threads, "relay-threads (0 in coturn: one thread)")),
            (None, Some(cpus)) => Some((cpus, "cpus")),
            (None, None) => None,
        };
        if let Some((workers, from)) = workers {
            let workers = workers.clamp(1, COTURN_MAX_RELAY_THREADS);
            out.top.key("workers", workers.to_string(), &format!("{from}: worker threads, each with its own sockets."));
        }
        if self.software {
            out.top.key(
                "software",
                string("tern"),
                "software-attribute: a SOFTWARE attribute in answers (coturn sends its version).",
            );
        }
        if self.rfc3489 {
            out.top.key("rfc3489", "true".into(), "rfc3489-compatibility.");
        }
        if self.reason_strings {
            out.top.key(
                "reason_phrases",
                "true".into(),
                "include-reason-string: coturn always sends the standard reason phrase and adds detail with \
                 this option; tern sends a phrase only with it.",
            );
        }
        self.relay(&mut out)?;
        self.peers(&mut out);
        self.limits(&mut out);
        if !self.alternate_servers.is_empty() {
            out.top.key(
                "alternate_servers",
                strings(self.alternate_servers.iter().map(ToString::to_string)),
                "alternate-server: coturn sends every Allocate to them in turn (300); tern only once total_quota \
                 is reached, or while draining.",
            );
        }
        if self.rfc5766_channels {
            out.top.key("rfc5766_channels", "true".into(), "rfc5766-channel-numbers.");
        }
        if let Some(user) = &self.proc_user {
            out.top.key("user", string(user), "proc-user: tern drops to it after binding, when started as root.");
            if let Some((_, group)) = &self.proc_group {
                out.top.key("group", string(group), "proc-group.");
            }
        } else if let Some((line, _)) = &self.proc_group {
            notes.push(Note {
                line: *line,
                option: "proc-group".into(),
                why: "no equivalent without proc-user: tern sets group only with user".into(),
            });
        }
        notes.extend(self.auth(&mut out, anonymous));
        self.log(&mut out);
        self.tls(&mut out)?;
        self.metrics(&mut out);

        notes.sort_by_key(|note| note.line);
        Ok(out.render(&notes))
    }

    /// `listen`, and RFC 5780's second address when coturn had one.
    fn listen(&self, out: &mut Toml) {
        let port = self.listening_port.map_or(COTURN_PORT, |(_, port)| port);
        let mut ips = self.listening_ips.clone();
        let mut comment = String::from("listening-ip and listening-port: each address serves UDP and TCP.");
        if ips.is_empty() {
            ips = vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)];
            comment = "listening-ip: not set, so coturn listens on every address of the host, IPv4 and IPv6; \
                       so does this (drop \"[::]\" on a host without IPv6)."
                .into();
        }
        let mut discovery = None;
        if let Some(line) = self.rfc5780 {
            // coturn answers RFC 5780 from two listening IPs of one family.
            let concrete: Vec<IpAddr> = ips.iter().copied().filter(|ip| !ip.is_unspecified()).collect();
            let pair = concrete.iter().enumerate().find_map(|(i, first)| {
                concrete[i + 1..].iter().find(|second| second.is_ipv4() == first.is_ipv4()).map(|s| (*first, *s))
            });
            match pair {
                Some((primary, alternate)) => {
                    ips.retain(|ip| *ip != alternate);
                    // tern's primary is the first listen address of its family.
                    ips.retain(|ip| *ip == primary || ip.is_ipv4() != primary.is_ipv4());
                    ips.insert(0, primary);
                    ips.dedup();
                    discovery = Some(alternate);
                }
                None => out.top.comment(&format!(
                    "rfc5780 (line {line}): not carried: coturn needs two listening-ip addresses of one family \
                     for it, and so does tern (listen and alternate_ip)."
                )),
            }
        }
        let mut listen: Vec<String> = ips.iter().map(|ip| SocketAddr::new(*ip, port).to_string()).collect();
        if !self.aux_servers.is_empty() {
            comment.push_str(" aux-server addresses are served the same way.");
            listen.extend(self.aux_servers.iter().map(ToString::to_string));
        }
        out.top.key("listen", strings(listen), &comment);
        if let Some(alternate) = discovery {
            out.top.key("rfc5780", "true".into(), "rfc5780: NAT behaviour discovery.");
            out.top.key(
                "alternate_ip",
                string(&alternate.to_string()),
                "The second listening-ip of the family: tern listens on it by itself.",
            );
            if let Some((_, alt_port)) = self.alt_listening_port.filter(|(_, p)| *p != 0) {
                out.top.key("alternate_port", alt_port.to_string(), "alt-listening-port.");
            }
        } else if let Some((line, _)) = self.alt_listening_port {
            out.top.comment(&format!(
                "alt-listening-port (line {line}): not carried: it serves RFC 5780 only, which is off."
            ));
        }
    }

    /// Relay addresses, the port range, and the socket buffer.
    fn relay(&self, out: &mut Toml) -> Result<(), (usize, String)> {
        if !self.relay_ips.is_empty() {
            out.top.key(
                "relay_ips",
                strings(self.relay_ips.iter().map(ToString::to_string)),
                "relay-ip: relay addresses, used in turn per family.",
            );
        }
        if !self.external_ips.is_empty() {
            out.top.key(
                "external_ip",
                strings(self.external_ips.iter().map(ExternalAddress::render)),
                "external-ip: the public address advertised for a private relay address (1:1 NAT).",
            );
        }
        if self.min_port.is_some() || self.max_port.is_some() {
            let (min, max) = (self.min_port.unwrap_or(COTURN_MIN_PORT), self.max_port.unwrap_or(COTURN_MAX_PORT));
            if min == 0 || min > max {
                return Err((self.ports_line, format!("min-port {min} and max-port {max} are not a port range")));
            }
            out.top.key("relay_ports", string(&format!("{min}-{max}")), "min-port and max-port.");
        }
        if let Some(bytes) = self.sock_buf_size {
            out.top.key(
                "udp_buffer",
                bytes.to_string(),
                "sock-buf-size: the buffers of the UDP listen sockets (tern's default is 4 MiB, coturn's 2 MiB).",
            );
        }
        Ok(())
    }

    /// `allow_peers` and `deny_peers` from coturn's lists. coturn lets an
    /// allowed range override a denied one, and refuses some ranges
    /// whatever it allows; tern's deny list always wins and its allow list
    /// overrides its built-in refusals, so both lists are cut to match.
    fn peers(&self, out: &mut Toml) {
        let allowed = self.allowed.clone();
        let mut refused = spans_of(coturn::ALWAYS_REFUSED_PEERS);
        if !self.allow_loopback {
            refused.extend(spans_of(coturn::LOOPBACK_PEERS));
        }
        let mut allow = subtract(allowed.clone(), &refused);
        if self.allow_loopback {
            allow = merge([allow, spans_of(coturn::LOOPBACK_PEERS)].concat());
        }
        // What tern refuses by default needs no deny_peers entry: allow_peers
        // opens none of it (it is all outside coturn's allowed ranges).
        let builtin: Vec<&str> = policy::BUILTIN_DENY.iter().map(|(range, _)| *range).collect();
        let denied = subtract(self.denied.clone(), &merge(allowed));
        let outside_builtin = subtract(denied.clone(), &spans_of(&builtin));
        // Either is exact; the one with fewer blocks reads better.
        let blocks = |spans: &[Span]| spans.iter().map(|s| s.cidrs().len()).sum::<usize>();
        let deny = if blocks(&outside_builtin) < blocks(&denied) { outside_builtin } else { denied.clone() };
        let mut comment = String::from(
            "Peers: tern refuses loopback, private (RFC 1918, fc00::/7), shared, link-local, multicast, \
             documentation, benchmarking and reserved ranges, and its own addresses, unless allow_peers names \
             them; coturn refuses only loopback, 0.0.0.0/8, link-local and unique/site-local. A peer \
             refused that way is logged once per range.",
        );
        if self.allow_loopback {
            comment.push_str(" allow-loopback-peers allows loopback.");
        }
        // The addresses relayed clients are told, which their peers send to.
        let advertised: Vec<IpAddr> = if !self.external_ips.is_empty() {
            self.external_ips.iter().map(|e| e.public).collect()
        } else if !self.relay_ips.is_empty() {
            self.relay_ips.clone()
        } else {
            self.listening_ips.iter().copied().filter(|ip| !ip.is_unspecified()).collect()
        };
        let own: Vec<String> = advertised.into_iter().map(|ip| IpNet::from(ip).to_string()).collect();
        if !own.is_empty() {
            comment.push_str(&format!(
                " Two clients relayed by this server reach each other's relayed address ({}) as coturn's do: \
                 tern's own addresses are peers at the relay ports and refused at any other port.",
                own.join(", ")
            ));
        }
        if !self.external_ips.is_empty() {
            comment.push_str(
                " Behind NAT, a peer at an external-ip's public address is sent to that address, which the NAT \
                 must hairpin; coturn maps it to the private one.",
            );
        }
        if !self.allowed.is_empty() {
            comment.push_str(
                " allowed-peer-ip ranges are written as CIDR blocks, less the ranges coturn refuses whatever it \
                 allows.",
            );
        }
        let cidrs = allow.into_iter().flat_map(Span::cidrs).map(|n| n.to_string());
        out.top.key("allow_peers", strings(cidrs), &comment);
        let mut comment = String::from(
            "denied-peer-ip ranges as CIDR blocks, less the allowed ones (in coturn an allowed address wins over \
             a denied one; in tern deny_peers wins)",
        );
        if deny != denied {
            comment.push_str(", and less what tern refuses by default already");
        }
        comment.push('.');
        if !deny.is_empty() {
            let cidrs = deny.into_iter().flat_map(Span::cidrs).map(|n| n.to_string());
            out.top.key("deny_peers", strings(cidrs), &comment);
        } else if !self.denied.is_empty() {
            out.top.comment("denied-peer-ip: every range is one tern refuses by default already.");
        }
    }

    /// Quotas, bandwidth, lifetimes, and the caps where tern is stricter.
    fn limits(&self, out: &mut Toml) {
        match self.user_quota {
            Some(quota) => out.top.key("user_quota", quota.to_string(), "user-quota: 0 means no limit."),
            None => out.top.key(
                "user_quota",
                "0".into(),
                "user-quota: not set, so no limit, as in coturn (tern's default is 10 allocations per user: \
                 clients that share one user, or one REST user part, would get 486 at the eleventh).",
            ),
        }
        if let Some(quota) = self.total_quota {
            out.top.key("total_quota", quota.to_string(), "total-quota: 0 means no limit.");
        }
        if let Some(bps) = self.max_bps {
            out.top.key("max_bps", bps.to_string(), "max-bps: bytes per second per allocation, each way.");
        }
        if let Some(max) = self.max_allocate_lifetime {
            let max = max.max(1);
            out.top.key("max_lifetime", max.to_string(), "max-allocate-lifetime, seconds.");
            if max < COTURN_LIFETIME {
                out.top.key(
                    "default_lifetime",
                    max.to_string(),
                    "coturn grants at most max-allocate-lifetime when the client asks for nothing; tern's \
                     default_lifetime must not exceed max_lifetime.",
                );
            }
        }
        let defaults = Settings::default();
        out.top.key(
            "max_permissions",
            defaults.max_permissions.to_string(),
            &format!(
                "tern's default: permissions per allocation (coturn allows {}; 508 beyond).",
                coturn::MAX_PERMISSIONS
            ),
        );
        out.top.key(
            "max_channels",
            defaults.max_channels.to_string(),
            "tern's default: channels per allocation (coturn has no cap but the 4096 channel numbers).",
        );
        match (self.unauthorized_ratelimit, self.ratelimit_rps) {
            (true, rps) => out.top.key(
                "rate_limit",
                rps.unwrap_or(COTURN_RATELIMIT_RPS).to_string(),
                "unauthorized-ratelimit: coturn limits the 401 answers over UDP; tern every unauthenticated \
                 answer (401s, Binding responses, errors) over every transport, per source IP and second.",
            ),
            (false, rps) => {
                let unused = if rps.is_some() { " (unauthorized-ratelimit-rps has no effect without it)" } else { "" };
                out.top.key(
                    "rate_limit",
                    DEFAULT_RATE_LIMIT.to_string(),
                    &format!(
                        "tern's default: unauthenticated answers per second per source IP; coturn does not limit \
                         them without unauthorized-ratelimit{unused}. 0 turns the limit off."
                    ),
                );
            }
        }
        out.top.key(
            "max_tcp_per_ip",
            DEFAULT_TCP_PER_IP.to_string(),
            "tern's default: TCP and TLS connections per source IP (coturn has no such limit); 0 turns it off.",
        );
    }

    /// Whether coturn relays for anyone: `no-auth`, or no credential
    /// option and no user it takes. coturn refuses to start with both
    /// `no-auth` and long-term credentials.
    fn anonymous(&self) -> Result<bool, (usize, String)> {
        match (self.auth.long_term, self.auth.anonymous) {
            (true, true) => Err((
                self.auth.line,
                "no-auth with long-term credentials (lt-cred-mech, use-auth-secret or static-auth-secret): \
                 coturn refuses to start with both"
                    .into(),
            )),
            (false, true) => Ok(true),
            (false, false) => Ok(self.users.is_empty() || self.auth.rest),
            (true, false) => Ok(false),
        }
    }

    /// `turn`, and `[auth]`; returns the notes on users coturn ignores.
    fn auth(&self, out: &mut Toml, anonymous: bool) -> Vec<Note> {
        let mut ignored = Vec::new();
        let mut ignore = |user: &User, why: &str| {
            ignored.push(Note { line: user.line, option: format!("user {}", user.name), why: why.to_owned() })
        };
        if self.stun_only {
            out.top.key("turn", "false".into(), "stun-only: no relaying.");
        }
        if anonymous {
            for user in &self.users {
                ignore(user, "ignored: coturn relays for anyone here (no-auth), so it ignores its users too");
            }
            if !self.stun_only {
                out.auth.key(
                    "allow_anonymous",
                    "true".into(),
                    if self.auth.anonymous {
                        "no-auth: relay for anyone, without credentials. tern warns about it at every start."
                    } else {
                        "No credentials are configured, so coturn relays for anyone (its default, no-auth); tern \
                         does only with this key, and warns about it at every start. For a public server, add \
                         users or secrets and remove it."
                    },
                );
            }
            return ignored;
        }
        if self.auth.rest {
            for user in &self.users {
                ignore(user, "ignored: with use-auth-secret coturn takes REST credentials only");
            }
            if self.secrets.is_empty() {
                out.auth.comment(
                    "use-auth-secret without static-auth-secret: coturn reads its secrets from the database, \
                     which tern cannot; until auth.secrets lists them, tern has no credentials and serves STUN \
                     only.",
                );
            } else {
                out.auth.key(
                    "secrets",
                    strings(self.secrets.iter().cloned()),
                    "static-auth-secret: TURN REST API secrets (EXPIRY:USER usernames); user_quota counts the \
                     USER part.",
                );
            }
        } else if self.users.is_empty() {
            out.auth.comment(
                "lt-cred-mech without user lines: coturn reads its users from the database, which tern cannot; \
                 until [auth] users lists them, tern has no credentials and serves STUN only.",
            );
        } else {
            // coturn keeps the last line of a name, as a map does.
            let users: BTreeMap<&str, &toml::Value> =
                self.users.iter().map(|user| (user.name.as_str(), &user.secret)).collect();
            out.users.comment(
                "user: long-term credentials; a password allows MD5 and SHA-256, a key (0x...) MD5 only, which \
                 every browser uses.",
            );
            for (name, secret) in users {
                writeln!(out.users.lines, "{} = {secret}", toml_key(name)).expect("writing to a String cannot fail");
            }
        }
        if let Some(seconds) = self.stale_nonce {
            if seconds == 0 {
                out.auth.comment(
                    "stale-nonce=0: coturn's nonces then never go stale; tern's always do, after \
                     auth.nonce_lifetime (600 seconds), with a 438 that clients answer by themselves.",
                );
            } else {
                out.auth.key("nonce_lifetime", seconds.to_string(), "stale-nonce, seconds.");
            }
        }
        ignored
    }

    /// `[log]`.
    fn log(&self, out: &mut Toml) {
        let level = match (self.log_level, self.verbose) {
            (Some(level), _) => Some((level, "log-min-level.")),
            (None, 2) => Some((LogLevel::Debug, "Verbose: tern's debug level logs every request's outcome.")),
            _ => None,
        };
        if let Some((level, comment)) = level {
            out.log.key("level", string(level.as_str()), comment);
        }
        if self.verbose > 0 {
            out.log.key(
                "allocations",
                "true".into(),
                "verbose: one line per allocation created and deleted, with its traffic.",
            );
        }
    }

    /// `[tls]`, when coturn would serve TLS with the files it names.
    fn tls(&self, out: &mut Toml) -> Result<(), (usize, String)> {
        let (Some(cert), Some(key)) = (&self.cert, &self.pkey) else {
            if !self.no_tls {
                out.tls.comment(
                    "No cert and pkey: coturn serves TLS anyway if it finds turn_server_cert.pem and \
                     turn_server_pkey.pem in its search path; tern serves TLS only with [tls] cert and key.",
                );
            }
            return Ok(());
        };
        if self.no_tls {
            out.tls.comment("no-tls: TLS is off, so cert and pkey are not carried.");
            return Ok(());
        }
        let port = self.listening_port.map_or(COTURN_PORT, |(_, port)| port);
        let (line, tls_port) = self.tls_listening_port.unwrap_or((0, COTURN_TLS_PORT));
        if tls_port == port {
            let line = if line == 0 { self.listening_port.map_or(0, |(line, _)| line) } else { line };
            return Err((
                line,
                format!("tls-listening-port is listening-port ({port}): tern serves TLS on a port of its own"),
            ));
        }
        let ips = if self.listening_ips.is_empty() {
            vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)]
        } else {
            self.listening_ips.clone()
        };
        out.tls.key(
            "listen",
            strings(ips.iter().map(|ip| SocketAddr::new(*ip, tls_port).to_string())),
            "tls-listening-port on each listening address. coturn also takes plain TCP and UDP on its TLS port \
             and TLS on its plain one; tern serves TLS only here and plain TURN only on listen.",
        );
        let relative = [cert, key].iter().any(|path| Path::new(path).is_relative());
        let where_ = if relative {
            " coturn looks for a relative path in its config search path; tern reads it from its working \
             directory: give an absolute path."
        } else {
            ""
        };
        out.tls.key("cert", string(cert), &format!("cert: the PEM chain, leaf first.{where_}"));
        out.tls.key("key", string(key), "pkey: the PEM private key, unencrypted.");
        Ok(())
    }

    /// `[metrics]`, when coturn's Prometheus exporter is on.
    fn metrics(&self, out: &mut Toml) {
        if !self.prometheus {
            return;
        }
        let ip = self.prometheus_address.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        let addr = SocketAddr::new(ip, self.prometheus_port.unwrap_or(COTURN_PROMETHEUS_PORT));
        out.metrics.key(
            "listen",
            string(&addr.to_string()),
            "prometheus, prometheus-address and prometheus-port: GET /metrics. The metrics tell anyone who can \
             reach them how busy the server is: prefer 127.0.0.1 or a management address.",
        );
    }
}

/// `user=NAME:PASSWORD` or `user=NAME:0xKEY`: the name up to the first
/// colon; blanks after it are skipped, as coturn does.
fn user(line: usize, value: &str) -> Result<User, String> {
    let (name, secret) = value.split_once(':').ok_or_else(|| "is not NAME:PASSWORD or NAME:0xKEY".to_owned())?;
    let secret = secret.trim_start_matches([' ', '\t']);
    if name.is_empty() || secret.is_empty() {
        return Err("is not NAME:PASSWORD or NAME:0xKEY".into());
    }
    let secret = match secret.strip_prefix("0x") {
        Some(_) => toml::Value::Table(toml::Table::from_iter([("key".to_owned(), toml::Value::from(secret))])),
        None => toml::Value::from(secret),
    };
    Credential::check(secret.clone()).map_err(|message| format!("user {name}: {message}"))?;
    Ok(User { line, name: name.to_owned(), secret })
}

/// A TOML string.
fn string(text: &str) -> String {
    toml::Value::from(text).to_string()
}

/// A TOML array of strings, one a line when there are several.
fn strings(items: impl IntoIterator<Item = String>) -> String {
    let items: Vec<String> = items.into_iter().map(|item| string(&item)).collect();
    if items.len() <= 2 {
        return format!("[{}]", items.join(", "));
    }
    let mut text = String::from("[\n");
    for item in items {
        writeln!(text, "    {item},").expect("writing to a String cannot fail");
    }
    text.push(']');
    text
}

/// One table of the output, its lines in order.
#[derive(Default)]
struct Table {
    lines: String,
}

impl Table {
    fn key(&mut self, key: &str, value: String, comment: &str) {
        self.comment(comment);
        writeln!(self.lines, "{key} = {value}").expect("writing to a String cannot fail");
    }

    /// `text` as `#` lines of at most 78 columns, after a blank line.
    fn comment(&mut self, text: &str) {
        if !self.lines.is_empty() {
            self.lines.push('\n');
        }
        comment_lines(&mut self.lines, text);
    }
}

fn comment_lines(out: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split_whitespace() {
        if line.len() + 1 + word.len() > 78 && line.len() > 1 {
            writeln!(out, "{line}").expect("writing to a String cannot fail");
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    writeln!(out, "{line}").expect("writing to a String cannot fail");
}

/// The output, by table.
#[derive(Default)]
struct Toml {
    header: String,
    top: Table,
    auth: Table,
    users: Table,
    log: Table,
    tls: Table,
    metrics: Table,
}

impl Toml {
    fn render(&self, notes: &[Note]) -> String {
        let mut text = self.header.clone();
        text.push('\n');
        text.push_str(&self.top.lines);
        for (name, table) in [
            ("auth", &self.auth),
            ("auth.users", &self.users),
            ("log", &self.log),
            ("tls", &self.tls),
            ("metrics", &self.metrics),
        ] {
            if table.lines.is_empty() {
                continue;
            }
            // A table with comments only is written as comments, so it adds no key.
            let header = if table.lines.lines().all(|l| l.is_empty() || l.starts_with('#')) { "# " } else { "" };
            write!(text, "\n{header}[{name}]\n{}", table.lines).expect("writing to a String cannot fail");
        }
        if !notes.is_empty() {
            text.push_str("\n# Not carried over:\n");
            for note in notes {
                comment_lines(&mut text, &format!("line {}, {}: {}.", note.line, note.option, note.why));
            }
        }
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    /// The conversion of `text`, which must succeed and give a valid tern
    /// configuration (no TLS files or system users here), as a TOML table.
    fn converted(text: &str) -> (String, toml::Table) {
        let toml = convert(text, "turnserver.conf").expect("converts");
        Config::parse(&toml, "converted.toml").unwrap_or_else(|e| panic!("{e}\n{toml}"));
        let table = toml.parse::<toml::Table>().expect("TOML");
        (toml, table)
    }

    fn error(text: &str) -> String {
        convert(text, "turnserver.conf").expect_err("must be refused").to_string()
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("literal")
    }

    #[test]
    fn lines_split_as_coturn_splits_them() {
        let text = "# comment\n\n  listening-port=3479\nrealm  example.org\nverbose\n\tuser = \"a b:c d\"  \n \
                    static-auth-secret\t\"x\"y\"\n#realm=ignored\n";
        let options: Vec<(usize, &str, &str)> = options(text).map(|o| (o.line, o.name, o.value)).collect();
        assert_eq!(
            options,
            [
                (3, "listening-port", "3479"),
                (4, "realm", "example.org"),
                (5, "verbose", ""),
                (6, "user", "a b:c d"),
                (7, "static-auth-secret", "x\"y"),
            ]
        );
    }

    #[test]
    fn booleans_read_as_coturn_reads_them() {
        for (text, value) in [("", true), ("1", true), ("yes", true), ("True", true), ("on", true), ("9", true)] {
            assert_eq!(boolean(text), Ok(value), "{text:?}");
        }
        for text in ["0", "no", "false", "F", "off", "Off"] {
            assert_eq!(boolean(text), Ok(false), "{text:?}");
        }
        assert!(boolean("maybe").is_err());
    }

    #[test]
    fn ranges_become_the_fewest_cidr_blocks() {
        let span = Span::parse("83.166.64.0-83.166.95.255").expect("range");
        assert_eq!(span.cidrs(), [net("83.166.64.0/19")]);
        let span = Span::parse("10.0.0.1-10.0.0.6").expect("range");
        assert_eq!(span.cidrs(), [net("10.0.0.1/32"), net("10.0.0.2/31"), net("10.0.0.4/31"), net("10.0.0.6/32")]);
        assert_eq!(Span::parse("2001:db8::-2001:db8::ffff").expect("range").cidrs(), [net("2001:db8::/112")]);
        assert_eq!(Span::parse("192.0.2.7").expect("one address").cidrs(), [net("192.0.2.7/32")]);
        assert_eq!(Span::parse("0.0.0.0-255.255.255.255").expect("all").cidrs(), [net("0.0.0.0/0")]);
        assert!(Span::parse("10.0.0.9-10.0.0.1").expect_err("backwards").contains("ends before it starts"));
        assert!(Span::parse("10.0.0.1-::1").expect_err("mixed").contains("mixes IPv4 and IPv6"));
        assert!(Span::parse("10.0.0.0/8").expect_err("CIDR").contains("IP-IP range"));
    }

    #[test]
    fn subtracting_cuts_holes_and_merging_joins_neighbours() {
        let all = Span::parse("10.0.0.0-10.0.0.255").expect("range");
        let hole = Span::parse("10.0.0.128").expect("address");
        let cut = subtract(vec![all], &[hole]);
        let cidrs: Vec<IpNet> = cut.into_iter().flat_map(Span::cidrs).collect();
        assert_eq!(
            cidrs,
            [
                net("10.0.0.0/25"),
                net("10.0.0.129/32"),
                net("10.0.0.130/31"),
                net("10.0.0.132/30"),
                net("10.0.0.136/29"),
                net("10.0.0.144/28"),
                net("10.0.0.160/27"),
                net("10.0.0.192/26")
            ]
        );
        let halves =
            vec![Span::parse("10.0.0.0-10.0.0.127").expect("a"), Span::parse("10.0.0.128-10.0.0.255").expect("b")];
        assert_eq!(merge(halves), [all]);
        let top = Span::parse("ffff::-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff").expect("the top of IPv6");
        assert_eq!(merge(vec![top, top]), [top], "no overflow at the last address");
    }

    #[test]
    fn no_credentials_is_anonymous_relaying_without_a_user_quota() {
        let (toml, table) = converted("listening-port=3478\n");
        assert_eq!(table["auth"]["allow_anonymous"].as_bool(), Some(true), "{toml}");
        assert_eq!(table["user_quota"].as_integer(), Some(0));
        assert_eq!(table["listen"], toml::Value::from(vec!["0.0.0.0:3478", "[::]:3478"]));
        let (_, table) = converted("stun-only\n");
        assert_eq!(table["turn"].as_bool(), Some(false));
        assert!(table.get("auth").is_none());
    }

    #[test]
    fn users_make_long_term_credentials_even_without_lt_cred_mech() {
        let (toml, table) = converted("realm=r\nuser=alice:pw\nuser=bob: 0xbc807ee29df3c9ffa736523fb2c4e8ee\n");
        let users = table["auth"]["users"].as_table().expect("users");
        assert_eq!(users["alice"].as_str(), Some("pw"), "{toml}");
        assert_eq!(users["bob"]["key"].as_str(), Some("0xbc807ee29df3c9ffa736523fb2c4e8ee"));
        assert!(table["auth"].get("allow_anonymous").is_none());
    }

    #[test]
    fn coturn_ignores_users_with_no_auth_or_a_rest_secret_and_so_does_the_conversion() {
        let (toml, table) = converted("no-auth\nuser=alice:pw\n");
        assert_eq!(table["auth"]["allow_anonymous"].as_bool(), Some(true));
        assert!(toml.contains("line 2, user alice: ignored"), "{toml}");
        let (toml, table) = converted("user=alice:pw\nuse-auth-secret\nstatic-auth-secret=s3cret\n");
        assert_eq!(table["auth"]["secrets"], toml::Value::from(vec!["s3cret"]));
        assert!(table["auth"].get("users").is_none(), "{toml}");
        assert!(toml.contains("line 1, user alice: ignored: with use-auth-secret"), "{toml}");
    }

    #[test]
    fn long_term_credentials_with_no_auth_are_refused_as_coturn_refuses_them() {
        assert_eq!(
            error("lt-cred-mech\nuser=a:b\nno-auth\n"),
            "turnserver.conf: line 3: no-auth with long-term credentials (lt-cred-mech, use-auth-secret or \
             static-auth-secret): coturn refuses to start with both"
        );
        // The last of the two wins, as in coturn.
        let (_, table) = converted("no-auth\nlt-cred-mech\nuser=a:b\nno-auth=false\n");
        assert!(table["auth"].get("users").is_some());
    }

    #[test]
    fn a_line_tern_cannot_read_is_named() {
        assert_eq!(
            error("realm=x\nlisening-port=3478\n"),
            "turnserver.conf: line 2: lisening-port: unknown option (not one of coturn 4.17.1's)"
        );
        assert_eq!(
            error("# a comment\nlistening-port=34 78\n"),
            "turnserver.conf: line 2: listening-port: \"34 78\" is not a port number"
        );
        assert_eq!(error("listening-ip\n"), "turnserver.conf: line 1: listening-ip: needs a value");
        assert_eq!(
            error("fingerprint=maybe\n"),
            "turnserver.conf: line 1: fingerprint: \"maybe\" is not a boolean (on/off, yes/no, 1/0, true/false)"
        );
        assert_eq!(error("user=alice\n"), "turnserver.conf: line 1: user: is not NAME:PASSWORD or NAME:0xKEY");
        assert_eq!(
            error("user=bob:0x1234\n"),
            "turnserver.conf: line 1: user: user bob: key \"0x1234\" is not 32 hex digits"
        );
        assert!(
            error("denied-peer-ip=10.0.0.0/8\n")
                .starts_with("turnserver.conf: line 1: denied-peer-ip: \"10.0.0.0/8\" is not")
        );
        assert!(error("relay-ip=0.0.0.0\n").contains("relay addresses must be concrete"));
        assert!(
            error("external-ip=1.2.3.4\nexternal-ip=1.2.3.5\n")
                .starts_with("turnserver.conf: line 2: external-ip: a second address")
        );
        assert!(
            error("min-port=60000\nmax-port=50000\n")
                .starts_with("turnserver.conf: line 2: min-port 60000 and max-port 50000")
        );
        assert!(
            error("cert=/c\npkey=/k\ntls-listening-port=3478\n")
                .starts_with("turnserver.conf: line 3: tls-listening-port is listening-port")
        );
    }

    #[test]
    fn allowed_ranges_win_over_denied_ones_but_not_over_what_coturn_always_refuses() {
        let text = "user=a:b\ndenied-peer-ip=83.166.64.0-83.166.95.255\nallowed-peer-ip=83.166.68.45\n\
                    allowed-peer-ip=169.254.169.254\nallowed-peer-ip=127.0.0.1\nallowed-peer-ip=10.1.0.0-10.1.255.255\n";
        let (toml, table) = converted(text);
        assert_eq!(table["allow_peers"], toml::Value::from(vec!["10.1.0.0/16", "83.166.68.45/32"]), "{toml}");
        let deny: Vec<&str> = table["deny_peers"].as_array().expect("deny").iter().filter_map(|v| v.as_str()).collect();
        let blocks: Vec<IpNet> = deny.iter().map(|d| net(d)).collect();
        let denied = |ip: &str| blocks.iter().any(|b| b.contains(&ip.parse::<IpAddr>().expect("ip")));
        assert!(denied("83.166.64.0") && denied("83.166.68.44") && denied("83.166.68.46") && denied("83.166.95.255"));
        assert!(!denied("83.166.68.45") && !denied("83.166.63.255") && !denied("83.166.96.0"));
        let (_, table) = converted("user=a:b\nallow-loopback-peers\nallowed-peer-ip=127.0.0.1\n");
        assert_eq!(table["allow_peers"], toml::Value::from(vec!["127.0.0.0/8", "::1/128"]));
    }

    #[test]
    fn a_deny_list_that_tern_has_built_in_is_not_repeated() {
        let text = "user=a:b\ndenied-peer-ip=10.0.0.0-10.255.255.255\ndenied-peer-ip=192.168.0.0-192.168.255.255\n";
        let (toml, table) = converted(text);
        assert!(table.get("deny_peers").is_none(), "{toml}");
        assert!(toml.contains("every range is one tern refuses by default already"), "{toml}");
    }

    #[test]
    fn rfc5780_takes_the_second_listening_address_as_the_alternate() {
        let (toml, table) =
            converted("listening-ip=192.0.2.1\nlistening-ip=192.0.2.2\nlistening-ip=2001:db8::1\nrfc5780\n");
        assert_eq!(table["listen"], toml::Value::from(vec!["192.0.2.1:3478", "[2001:db8::1]:3478"]), "{toml}");
        assert_eq!(table["alternate_ip"].as_str(), Some("192.0.2.2"));
        assert_eq!(table["rfc5780"].as_bool(), Some(true));
        let (toml, table) = converted("listening-ip=192.0.2.1\nrfc5780\nalt-listening-port=3479\n");
        assert!(table.get("rfc5780").is_none());
        assert!(toml.contains("rfc5780 (line 2): not carried"), "{toml}");
    }

    #[test]
    fn every_option_not_carried_is_listed_with_its_line() {
        let text = "user=a:b\ncli-password=secret-value\nmysql-userdb=\"host=db password=hunter2\"\nmultiplex-peer\n\
                    dtls\nno-tcp-relay\n";
        let (toml, _) = converted(text);
        let trailer = toml.split("# Not carried over:").nth(1).expect("a list of what was not carried");
        for (line, option) in
            [(2, "cli-password"), (3, "mysql-userdb"), (4, "multiplex-peer"), (5, "dtls"), (6, "no-tcp-relay")]
        {
            assert!(trailer.contains(&format!("line {line}, {option}:")), "{toml}");
        }
        assert!(!toml.contains("secret-value") && !toml.contains("hunter2"), "values are never echoed: {toml}");
    }
}
