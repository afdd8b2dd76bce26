//! The command line: `tern serve`, `tern check`, and the client subcommands.
//! Wiring only; every subcommand's work lives in its module.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Overrides};

#[derive(Debug, Parser)]
#[command(name = "tern", version, about = "A STUN/TURN server, and a client to test one")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the STUN/TURN server.
    Serve(ServerArgs),
    /// Validate a configuration and print the effective settings as TOML.
    Check(ServerArgs),
    /// Print the tern.toml equivalent to a coturn turnserver.conf, with a
    /// comment on every option that cannot be carried over.
    Convert(ConvertArgs),
    /// Send STUN Binding requests and print the mapped address and round-trip time.
    Stun(StunArgs),
    /// Discover how the NAT in front of this host maps and filters UDP (RFC 5780; the server must support it).
    Nat(NatArgs),
    /// Check a TURN server end to end: allocate, permission, relay both ways, channel, delete.
    Turn(TurnArgs),
    /// Print TURN REST API credentials and the iceServers entry that uses them.
    Credentials(CredentialsArgs),
    /// Print a user's long-term key for `auth.users`, so the config need not hold the password.
    Key(KeyArgs),
    /// Load-test a TURN server: relay through many allocations, or an allocation storm.
    Load(LoadArgs),
    /// Talk to a running server's admin API: status, allocations, end one,
    /// revoke a user, drain, reload.
    Admin(AdminArgs),
    /// Check a deployment from the outside: DNS, STUN, TLS, allocation, relaying,
    /// and the usual mistakes, one line per check with a fix for each failure.
    Doctor(DoctorArgs),
    /// Add, delete or list long-term users in the store (what coturn's `turnadmin -a/-d/-l` does).
    #[command(subcommand)]
    User(UserCommand),
    /// Add, delete or list TURN REST API secrets in the store (`turnadmin -s/-X/-S`).
    #[command(subcommand)]
    Secret(SecretCommand),
    /// Realm settings in the store.
    #[command(subcommand)]
    Realm(RealmCommand),
    /// Usage records in the store: one per allocation, for billing.
    #[command(subcommand)]
    Usage(UsageCommand),
}

/// `tern admin`.
#[derive(Debug, Args)]
pub struct AdminArgs {
    /// The admin listener (`admin.listen`).
    #[arg(long, env = "TERN_ADMIN_URL", default_value = "http://127.0.0.1:9642")]
    pub url: String,
    /// File holding the admin token (`admin.token_file`); or set TERN_ADMIN_TOKEN.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Print the API's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// How long to wait for each answer.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// With an https:// URL: check the server's certificate against this PEM
    /// file instead of the web's roots.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure")]
    pub tls_ca: Option<PathBuf>,
    /// With an https:// URL: do not check the server's certificate.
    #[arg(long)]
    pub insecure: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Version, uptime, state, workers and counters.
    Status,
    /// List allocations, oldest first (or busiest first with --by-traffic).
    Allocations {
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        client_ip: Option<IpAddr>,
        /// `udp`, `tcp` or `tls`: how the client reaches the server.
        #[arg(long)]
        transport: Option<String>,
        /// Busiest first, by bytes relayed.
        #[arg(long)]
        by_traffic: bool,
        /// At most this many (default: every one, page after page; with
        /// --by-traffic, 100).
        #[arg(long)]
        limit: Option<usize>,
    },
    /// End an allocation now (its ID from `allocations`).
    Kill { id: u64 },
    /// Revoke a user or one REST username: its allocations end and it is
    /// refused until `revoke --undo`. Without a name, list the revoked.
    Revoke {
        name: Option<String>,
        /// Let the name in again.
        #[arg(long, requires = "name")]
        undo: bool,
    },
    /// Take no new allocations; stop once the last ends, or when the deadline passes.
    Drain {
        /// End what is left after this long (default: `drain_timeout`).
        #[arg(long, value_parser = parse_duration)]
        deadline: Option<Duration>,
    },
    /// Read the configuration again (as SIGHUP does).
    Reload,
    /// Set the log level until the next reload.
    Log { level: config::LogLevel },
}

/// Which store the admin commands work on, and in which realm.
#[derive(Debug, Args)]
pub struct StoreArgs {
    /// TOML configuration whose `[store]` (and `realm`) to use.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The store's URL, over the configuration's `store.url`; its password comes from
    /// `store.password_file` or TERN_STORE_PASSWORD, never from the command line.
    #[arg(long, value_name = "URL")]
    pub store: Option<String>,
}

impl StoreArgs {
    /// The configuration (or the defaults) with `--store` over it.
    pub fn source(&self) -> config::Source {
        config::Source::new(self.config.clone(), Overrides { store: self.store.clone(), ..Overrides::default() })
    }
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user, or change its password; the password is prompted for, or read from standard input.
    Add(UserAddArgs),
    /// Delete a user.
    Delete(UserNameArgs),
    /// List users as a table, or JSON.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct UserAddArgs {
    #[command(flatten)]
    pub user: UserNameArgs,
    /// Read the password from the first line of standard input instead of prompting.
    #[arg(long)]
    pub password_stdin: bool,
}

#[derive(Debug, Args)]
pub struct UserNameArgs {
    /// The user name.
    pub name: String,
    /// The realm (default: the configuration's `realm`); it is part of the key.
    #[arg(long, short)]
    pub realm: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this realm (default: every realm).
    #[arg(long, short)]
    pub realm: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum SecretCommand {
    /// Add a shared secret: prompted for, read from standard input, or generated and printed.
    Add(SecretAddArgs),
    /// Delete a shared secret (prompted for, or read from standard input), or all of a realm's.
    Delete(SecretDeleteArgs),
    /// List shared secrets as a table, or JSON.
    List(ListArgs),
}

#[derive(Debug, Args)]
pub struct SecretAddArgs {
    /// The realm (default: the configuration's `realm`).
    #[arg(long, short)]
    pub realm: Option<String>,
    /// Read the secret from the first line of standard input instead of prompting.
    #[arg(long, conflicts_with = "generate")]
    pub secret_stdin: bool,
    /// Generate a random secret and print it.
    #[arg(long)]
    pub generate: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Args)]
pub struct SecretDeleteArgs {
    /// The realm (default: the configuration's `realm`).
    #[arg(long, short)]
    pub realm: Option<String>,
    /// Read the secret from the first line of standard input instead of prompting.
    #[arg(long, conflicts_with = "all")]
    pub secret_stdin: bool,
    /// Delete every secret of the realm.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum RealmCommand {
    /// Show the realm options (max-bps, user-quota, total-quota), or set one (0 removes it), as
    /// `turnadmin -g/-G` does.
    Option(RealmOptionArgs),
}

#[derive(Debug, Args)]
pub struct RealmOptionArgs {
    /// The option to set; without it, the options of every realm (or of `--realm`) are listed.
    #[arg(value_enum, requires = "value")]
    pub option: Option<crate::store::RealmOption>,
    /// Its value; 0 removes the option.
    pub value: Option<u64>,
    /// The realm (default when setting: the configuration's `realm`).
    #[arg(long, short)]
    pub realm: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

#[derive(Debug, Subcommand)]
pub enum UsageCommand {
    /// List the newest usage records (oldest of them first) as a table, or JSON.
    List(UsageListArgs),
}

#[derive(Debug, Args)]
pub struct UsageListArgs {
    /// Only this realm.
    #[arg(long, short)]
    pub realm: Option<String>,
    /// Only this user (a REST username in full: `EXPIRY:USER`).
    #[arg(long, short)]
    pub user: Option<String>,
    /// Only allocations that ended at or after this time, in unix seconds.
    #[arg(long, value_name = "UNIX")]
    pub since: Option<u64>,
    /// At most this many, the newest.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=crate::store::MAX_USAGE_LIST as u64))]
    pub limit: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Settings shared by `serve` and `check`: a config file and flags that
/// override its keys.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML configuration file; without it, the embedded defaults apply.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub overrides: Overrides,
}

impl ServerArgs {
    /// The file (or the defaults) with these flags over it.
    pub fn source(&self) -> config::Source {
        config::Source::new(self.config.clone(), self.overrides.clone())
    }
}

#[derive(Debug, Args)]
pub struct ConvertArgs {
    /// coturn's configuration file, such as /etc/turnserver.conf.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// How the client tools talk TLS.
#[derive(Debug, Args)]
pub struct TlsClientArgs {
    /// Use TLS (the default port becomes 5349); implied by a stuns: or turns: URI.
    #[arg(long)]
    pub tls: bool,
    /// Trust the certificates in this PEM file instead of the system's roots (TLS).
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Accept any server certificate (TLS; for testing only).
    #[arg(long, conflicts_with = "tls_ca")]
    pub insecure: bool,
    /// Name to send as SNI and check the certificate against (TLS; default: the server's host).
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
}

#[derive(Debug, Args)]
pub struct StunArgs {
    /// Server as HOST[:PORT] or a stun: or stuns: URI; the port defaults to 3478 (5349 over TLS).
    pub server: String,
    /// Use TCP instead of UDP.
    #[arg(long, conflicts_with = "tls")]
    pub tcp: bool,
    #[command(flatten)]
    pub tls: TlsClientArgs,
    /// Number of Binding requests to send.
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub count: u32,
    /// How long to wait for each response, retransmissions included.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Pause between requests.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
}

#[derive(Debug, Args)]
pub struct NatArgs {
    /// Server as HOST[:PORT] or a stun: URI; the port defaults to 3478.
    pub server: String,
    /// How long each test waits for its answer, retransmissions included; a
    /// test whose answer the NAT filters always waits this long.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses durations such as `500ms`, `5s`, `24h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 500ms, 5s or 24h: {e}"))
}

/// The transport between a client and the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientTransport {
    Udp,
    Tcp,
}

#[derive(Debug, Args)]
pub struct TurnArgs {
    /// Server as HOST[:PORT] or a turn: or turns: URI; the port defaults to 3478 (5349 over TLS).
    pub server: String,
    /// Username (with --pass), or the user part of REST credentials (with --secret).
    #[arg(long, short)]
    pub user: String,
    /// Password of a long-term credential.
    #[arg(long, short, required_unless_present = "secret", conflicts_with = "secret")]
    pub pass: Option<String>,
    /// TURN REST API secret: the probe makes its own time-limited credential.
    #[arg(long)]
    pub secret: Option<String>,
    /// Transport to the server (`--tls` replaces it).
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: ClientTransport,
    #[command(flatten)]
    pub tls: TlsClientArgs,
    /// An echo server to use as the peer (UDP, or TCP with `--relay-transport tcp`),
    /// instead of a socket of this client.
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<SocketAddr>,
    /// Transport between the relay and the peer; `tcp` (RFC 6062) talks to
    /// the server over TCP whatever `--transport` says.
    #[arg(long, value_enum, default_value = "udp")]
    pub relay_transport: ClientTransport,
    /// How long to wait for each step.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Password algorithm: `sha256` requires RFC 8489 SHA-256, `md5` behaves
    /// like an RFC 5389 client (browsers). Default: SHA-256 when the server
    /// offers it, else MD5.
    #[arg(long, value_enum, value_name = "ALGORITHM")]
    pub password_algorithm: Option<PasswordAlgorithmArg>,
    /// Send USERHASH instead of USERNAME (RFC 8489; not with `--password-algorithm md5`).
    #[arg(long)]
    pub userhash: bool,
}

/// `--password-algorithm` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PasswordAlgorithmArg {
    Md5,
    Sha256,
}

#[derive(Debug, Args)]
pub struct CredentialsArgs {
    /// The shared secret configured on the server (`auth.secrets`, `--secret`).
    #[arg(long)]
    pub secret: String,
    /// The user the credential is for.
    #[arg(long)]
    pub user: String,
    /// How long the credential stays valid.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    pub ttl: Duration,
    /// TURN URIs for the iceServers entry (repeatable).
    #[arg(long = "uri", value_name = "URI", default_values_t = ["turn:127.0.0.1:3478?transport=udp".to_owned(), "turn:127.0.0.1:3478?transport=tcp".to_owned()])]
    pub uris: Vec<String>,
}

#[derive(Debug, Args)]
pub struct KeyArgs {
    /// The user name.
    #[arg(long)]
    pub user: String,
    /// The server's realm (`realm`); it is part of the key.
    #[arg(long, default_value = config::DEFAULT_REALM)]
    pub realm: String,
    /// The password; read from the first line of standard input when not
    /// given, so it stays out of the shell history.
    #[arg(long)]
    pub password: Option<String>,
}

/// What `tern load` does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LoadMode {
    /// Relay data through allocations to an echo peer and back.
    Relay,
    /// Allocate and delete as fast as the server answers.
    Alloc,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Server as HOST[:PORT] or a turn: URI; the port defaults to 3478.
    pub server: String,
    /// Username (with --pass), or the user part of REST credentials (with --secret).
    #[arg(long, short)]
    pub user: String,
    /// Password of a long-term credential.
    #[arg(long, short, required_unless_present = "secret", conflicts_with = "secret")]
    pub pass: Option<String>,
    /// TURN REST API secret: the generator makes its own time-limited credential.
    #[arg(long)]
    pub secret: Option<String>,
    #[arg(long, value_enum, default_value = "relay")]
    pub mode: LoadMode,
    /// Allocations to relay through.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub allocations: u32,
    /// Open loop: packets per second per allocation.
    #[arg(long, conflicts_with = "window")]
    pub rate: Option<f64>,
    /// Closed loop: packets in flight per allocation (the default, with 1).
    #[arg(long)]
    pub window: Option<u32>,
    /// Payload bytes per packet (at least 24).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// How long to send.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Transport to the server.
    #[arg(long, value_enum, default_value = "udp")]
    pub transport: ClientTransport,
    /// Relay with Send/Data indications instead of channels.
    #[arg(long)]
    pub send_indication: bool,
    /// A UDP echo server to use as the peer instead of the built-in one.
    #[arg(long, value_name = "ADDR")]
    pub peer: Option<SocketAddr>,
    /// Address of the built-in echo peer (default: an ephemeral port on loopback).
    #[arg(long, value_name = "ADDR", conflicts_with = "peer")]
    pub peer_listen: Option<SocketAddr>,
    /// Threads of the built-in echo peer.
    #[arg(long, default_value_t = 1)]
    pub peer_threads: usize,
    /// No TURN: send bare payloads to a plain UDP forwarder (the benchmark baseline).
    #[arg(long)]
    pub raw: bool,
    /// Local addresses for the client sockets, used in turn (repeatable); one
    /// address has about 28 000 ephemeral ports, so more allocations need more.
    #[arg(long = "client-ip", value_name = "IP")]
    pub client_ips: Vec<IpAddr>,
    /// Client threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Allocations in progress at once, in alloc mode.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// The server's process ID, to report its CPU time and work per CPU-second.
    #[arg(long, value_name = "PID")]
    pub server_pid: Option<u32>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for each setup step.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("credential").args(["pass", "secret"])))]
pub struct DoctorArgs {
    /// The deployment's URLs as in iceServers: turn:HOST[:PORT][?transport=udp|tcp],
    /// turns:HOST[:PORT], stun:, stuns:, or HOST[:PORT]; without ?transport=,
    /// UDP and TCP are both checked.
    #[arg(required = true, value_name = "URL")]
    pub urls: Vec<String>,
    /// Username (with --pass), or the user part of REST credentials (with
    /// --secret); without it, allocation and relaying are not checked.
    #[arg(long, short, requires = "credential")]
    pub user: Option<String>,
    /// Password of a long-term credential.
    #[arg(long, short, requires = "user")]
    pub pass: Option<String>,
    /// TURN REST API secret: the doctor makes its own credentials, and checks
    /// that an expired one is refused.
    #[arg(long, requires = "user")]
    pub secret: Option<String>,
    /// The realm the server must announce.
    #[arg(long)]
    pub realm: Option<String>,
    /// Trust the certificates in this PEM file instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// Name to check the certificate against (default: each URL's host).
    #[arg(long, value_name = "NAME")]
    pub sni: Option<String>,
    /// Bound on every network step.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}
