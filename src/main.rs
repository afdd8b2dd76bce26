//! The `tern` binary: parse the command line, load the configuration, set up
//! logging, run the subcommand. Errors end as one readable line and exit 1.

#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use tracing::{error, info, warn};

use tern::cli::{
    Cli, ClientTransport, Command, CredentialsArgs, KeyArgs, LoadArgs, LoadMode, NatArgs, PasswordAlgorithmArg,
    ServerArgs, StunArgs, TlsClientArgs, TurnArgs,
};
use tern::client::credentials::RestCredential;
use tern::client::load::{self, LoadConfig, Mode, Pacing};
use tern::client::nat::NatProbe;
use tern::client::relay_probe::RelayProbe;
use tern::client::tcp_relay::TcpRelayProbe;
use tern::client::tls::{self as client_tls, TlsClient, TlsOptions};
use tern::client::turn::{AuthMode, AuthOptions, Credentials};
use tern::client::{self, stun::StunProbe};
use tern::config::Config;
use tern::io::sys::{interfaces, process};
use tern::io::{self, shutdown::Shutdown};
use tern::proto::Transport;
use tern::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Check(args) => check(&args),
        Command::Stun(args) => stun(&args),
        Command::Nat(args) => nat(&args),
        Command::Turn(args) => turn(&args),
        Command::Credentials(args) => credentials(&args),
        Command::Key(args) => key(&args),
        Command::Load(args) => load_test(&args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tern: {message}");
            ExitCode::FAILURE
        }
    }
}

fn load(args: &ServerArgs) -> Result<Config, String> {
    load_config(args.config.as_deref(), &args.overrides())
}

/// The file (or the embedded defaults) with the command line over it, as
/// at start and on every SIGHUP.
fn load_config(file: Option<&std::path::Path>, overrides: &tern::config::Overrides) -> Result<Config, String> {
    let mut config = match file {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::defaults(),
    };
    config.apply(overrides).map_err(|e| e.to_string())?;
    Ok(config)
}

fn serve(args: &ServerArgs) -> Result<ExitCode, String> {
    let config = load(args)?;
    telemetry::init(&config.log);
    let shutdown = Shutdown::new();
    let signals = shutdown.on_signals().map_err(|e| format!("cannot install signal handlers: {e}"))?;
    info!(version = env!("CARGO_PKG_VERSION"), "tern starting");
    if config.turn_enabled() {
        if config.auth.allow_anonymous {
            warn!("TURN relays for anyone: allow_anonymous = true and no credentials are configured");
        }
    } else if config.turn.is_none() {
        info!("serving STUN only: no TURN credentials configured ([auth] users or secrets)");
    }
    if config.turn_enabled() {
        warn_about_ephemeral_overlap(config.relay_ports);
        match process::raise_fd_limit(process::fd_ceiling()) {
            Ok(limit) => {
                let ports = u64::from(config.relay_ports.1 - config.relay_ports.0) + 1;
                let relay_ips = config.relay_ips.len().max(1) as u64;
                if limit < ports * relay_ips {
                    warn!(
                        limit,
                        relay_ports = ports * relay_ips,
                        "the open-file limit is below the number of relay ports; allocations will fail before the \
                         ports run out (raise LimitNOFILE or ulimit -n)"
                    );
                }
            }
            Err(e) => warn!(error = %e, "cannot read the open-file limit"),
        }
    }
    if config.user.is_none() && process::running_as_root() {
        warn!("running as root: set `user` (or --run-as-user) to drop privileges once listening");
    }
    let local_addresses = interfaces::local_addresses().map_err(|e| format!("cannot list local addresses: {e}"))?;
    // Caught before anything listens: once "listening" is logged, SIGHUP
    // must not hit its default action, which would end tern.
    let hangups = signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP])
        .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
    let drain_requests = signal_hook::iterator::Signals::new([signal_hook::consts::SIGUSR1])
        .map_err(|e| format!("cannot install the SIGUSR1 handler: {e}"))?;
    // Bound before io::start drops privileges, served once the workers run.
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            telemetry::metrics::bind(addr)
                .map_err(|e| format!("cannot listen for metrics on {addr} (metrics.listen): {e}"))?,
        ),
        None => None,
    };
    let running = io::start(&config.runtime(rand::random(), &local_addresses), &shutdown).map_err(|e| e.to_string())?;
    if let Some(listener) = metrics {
        telemetry::metrics::serve(listener, running.metrics())
            .map_err(|e| format!("cannot start the metrics thread: {e}"))?;
    }
    let reloadable = Reloadable {
        file: args.config.clone(),
        overrides: args.overrides(),
        realm: config.realm.clone(),
        authenticates: config.turn_enabled() && config.auth.has_credentials(),
    };
    let reload = on_reload(hangups, reloadable, running.reloader())
        .map_err(|e| format!("cannot start the SIGHUP handler: {e}"))?;
    let drain = on_drain(drain_requests, shutdown.clone(), running.metrics())
        .map_err(|e| format!("cannot start the SIGUSR1 handler: {e}"))?;
    let report = running.join().map_err(|e| format!("server failed: {e}"))?;
    signals.close();
    reload.close();
    drain.close();
    info!(
        requests = report.server.requests,
        binding_responses = report.server.binding_responses,
        error_responses = report.server.error_responses,
        malformed = report.server.malformed,
        allocations = report.server.allocations_created,
        relayed_to_peer = report.server.relayed_to_peer,
        relayed_to_client = report.server.relayed_to_client,
        rate_limited = report.server.rate_limited,
        tcp_connections = report.io.tcp_accepted,
        tcp_refused = report.io.tcp_refused,
        tls_connections = report.io.tls_accepted,
        tls_handshakes = report.io.tls_handshakes,
        tls_handshake_failures = report.io.tls_handshake_failures,
        tls_handshake_timeouts = report.io.tls_handshake_timeouts,
        tls_refused = report.io.tls_refused,
        over_bandwidth = report.server.over_bandwidth,
        icmp_relayed = report.server.icmp_relayed,
        tcp_relayed_bytes = report.server.tcp_relayed_bytes,
        "tern stopped"
    );
    Ok(ExitCode::SUCCESS)
}

/// SIGHUP (`systemctl reload`) reads the configuration's users and REST
/// secrets and the TLS certificate and key again.
///
/// Credentials: the file is read and checked as at start (with the same
/// command-line flags over it); the users and secrets of a valid one
/// replace the old ones in every worker, so a secret can be rotated or a
/// user revoked without cutting calls. A file that does not load, has no
/// credentials left, or changes the realm leaves the old ones in place.
///
/// TLS: new handshakes use the new pair, established connections keep
/// theirs, and a pair that does not load leaves the old one in place.
///
/// SIGHUP is caught even with nothing to reload: its default would end
/// tern. A SIGHUP that arrives before this runs is queued in `signals`.
fn on_reload(
    mut signals: signal_hook::iterator::Signals,
    args: Reloadable,
    running: io::Reloader,
) -> std::io::Result<signal_hook::iterator::Handle> {
    let handle = signals.handle();
    std::thread::Builder::new().name("tern-reload".into()).spawn(move || {
        for _ in signals.forever() {
            args.reload_credentials(&running);
            let Some(store) = running.tls() else {
                info!("SIGHUP: no TLS certificate configured");
                continue;
            };
            let (cert, key) = store.files();
            match store.reload() {
                Ok(()) => info!(cert = %cert.display(), key = %key.display(), "tls certificate reloaded"),
                Err(e) => error!(error = %e, "tls certificate reload failed; keeping the previous certificate"),
            }
        }
    })?;
    Ok(handle)
}

/// What a SIGHUP reads the credentials from: the configuration file and
/// flags tern started with, and the realm and mode it runs in.
struct Reloadable {
    file: Option<std::path::PathBuf>,
    overrides: tern::config::Overrides,
    realm: String,
    /// Whether tern authenticates at all (not STUN only, not anonymous).
    authenticates: bool,
}

impl Reloadable {
    fn reload_credentials(&self, running: &io::Reloader) {
        if !self.authenticates {
            info!("SIGHUP: no credentials in use; authenticating takes a restart");
            return;
        }
        let Some(file) = &self.file else {
            info!("SIGHUP: credentials come from the command line only; nothing to reload");
            return;
        };
        let config = match load_config(Some(file), &self.overrides) {
            Ok(config) => config,
            Err(e) => {
                error!(error = %e, "configuration reload failed; keeping the current users and secrets");
                return;
            }
        };
        if config.realm != self.realm {
            error!(
                realm = %config.realm,
                running = %self.realm,
                "the realm changed (it is in every key); keeping the current users and secrets until a restart"
            );
        } else if !config.auth.has_credentials() {
            error!("the reloaded configuration has no auth.users or auth.secrets; keeping the current ones");
        } else {
            let (users, secrets) = (config.auth.users.len(), config.auth.secrets.len());
            running.reload_credentials(config.credentials());
            info!(file = %file.display(), users, secrets, "credentials reloaded");
        }
    }
}

/// SIGUSR1 drains the server, for a restart that cuts no call: new
/// allocations go to the alternate servers (or get 508), existing ones
/// carry on, and tern stops as on SIGTERM once the last one has ended
/// (SIGTERM still stops it at any time).
fn on_drain(
    mut signals: signal_hook::iterator::Signals,
    shutdown: Shutdown,
    metrics: io::MetricsSource,
) -> std::io::Result<signal_hook::iterator::Handle> {
    const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
    let handle = signals.handle();
    std::thread::Builder::new().name("tern-drain".into()).spawn(move || {
        if signals.forever().next().is_none() {
            return;
        }
        shutdown.drain();
        info!(allocations = metrics.allocations(), "draining: no new allocations; tern stops once the last one ends");
        while !shutdown.is_requested() {
            if metrics.allocations() == 0 {
                info!("drained: no allocation left");
                shutdown.trigger();
                break;
            }
            std::thread::sleep(CHECK_EVERY);
        }
    })?;
    Ok(handle)
}

fn check(args: &ServerArgs) -> Result<ExitCode, String> {
    let config = load(args)?;
    let source = args.config.as_ref().map_or("embedded defaults".to_owned(), |p| p.display().to_string());
    println!("# {source}: valid; effective settings:");
    print!("{}", config.to_toml());
    Ok(ExitCode::SUCCESS)
}

/// The TLS client for `server`, when `--tls` or a secure URI asks for one.
fn tls_client(server: &str, args: &TlsClientArgs, alpn: &[u8]) -> Result<Option<TlsClient>, String> {
    if !args.tls && !client::is_secure_uri(server) {
        return Ok(None);
    }
    let options = TlsOptions {
        server_name: args.sni.clone().unwrap_or_else(|| client_tls::server_name(server)),
        ca: args.tls_ca.clone(),
        insecure: args.insecure,
        alpn: vec![alpn.to_vec()],
    };
    TlsClient::new(&options).map(Some).map_err(|e| e.to_string())
}

/// Resolves the server, on 5349 by default over TLS.
fn resolve(server: &str, tls: bool) -> Result<std::net::SocketAddr, String> {
    let port = if tls { client_tls::DEFAULT_TLS_PORT } else { client::DEFAULT_PORT };
    client::resolve_server_with_port(server, port).map_err(|e| format!("{server}: {e}"))
}

fn stun(args: &StunArgs) -> Result<ExitCode, String> {
    let tls = tls_client(&args.server, &args.tls, client_tls::ALPN_STUN)?;
    let server = resolve(&args.server, tls.is_some())?;
    let probe = StunProbe {
        server,
        transport: match (&tls, args.tcp) {
            (Some(_), _) => Transport::Tls,
            (None, true) => Transport::Tcp,
            (None, false) => Transport::Udp,
        },
        tls,
        count: args.count,
        timeout: args.timeout,
        interval: args.interval,
    };
    let ok = probe.run(&mut std::io::stdout().lock()).map_err(|e| e.to_string())?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn nat(args: &NatArgs) -> Result<ExitCode, String> {
    let server = client::resolve_server(&args.server).map_err(|e| format!("{}: {e}", args.server))?;
    let report = NatProbe { server, timeout: args.timeout }.run().map_err(|e| e.to_string())?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}

/// Credentials from `--pass`, or made from `--secret` (valid for a day).
fn client_credentials(user: &str, pass: Option<&String>, secret: Option<&String>) -> Result<Credentials, String> {
    match (pass, secret) {
        (Some(password), _) => Ok(Credentials { username: user.to_owned(), password: password.clone() }),
        (None, Some(secret)) => {
            let ttl = std::time::Duration::from_secs(24 * 3600);
            let rest = RestCredential::new(secret, user, ttl, tern::io::clock::unix_secs());
            Ok(Credentials { username: rest.username, password: rest.password })
        }
        (None, None) => Err("give --pass or --secret".into()),
    }
}

fn transport(transport: ClientTransport) -> Transport {
    match transport {
        ClientTransport::Udp => Transport::Udp,
        ClientTransport::Tcp => Transport::Tcp,
    }
}

fn turn(args: &TurnArgs) -> Result<ExitCode, String> {
    let tls = tls_client(&args.server, &args.tls, client_tls::ALPN_TURN)?;
    let server = resolve(&args.server, tls.is_some())?;
    let credentials = client_credentials(&args.user, args.pass.as_ref(), args.secret.as_ref())?;
    let mode = match args.password_algorithm {
        None => AuthMode::Auto,
        Some(PasswordAlgorithmArg::Md5) => AuthMode::Legacy,
        Some(PasswordAlgorithmArg::Sha256) => AuthMode::Sha256,
    };
    if mode == AuthMode::Legacy && args.userhash {
        return Err("--userhash needs RFC 8489; --password-algorithm md5 is the RFC 5389 behaviour, which has only \
                    USERNAME"
            .into());
    }
    if args.relay_transport == ClientTransport::Tcp {
        let probe = TcpRelayProbe { server, credentials, tls, peer: args.peer, timeout: args.timeout };
        let ok = probe.run(&mut std::io::stdout().lock()).map_err(|e| e.to_string())?;
        return Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE });
    }
    let probe = RelayProbe {
        server,
        transport: if tls.is_some() { Transport::Tls } else { transport(args.transport) },
        tls,
        credentials,
        auth: AuthOptions { mode, userhash: args.userhash },
        peer: args.peer,
        timeout: args.timeout,
    };
    let ok = probe.run(&mut std::io::stdout().lock()).map_err(|e| e.to_string())?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn credentials(args: &CredentialsArgs) -> Result<ExitCode, String> {
    let credential = RestCredential::new(&args.secret, &args.user, args.ttl, tern::io::clock::unix_secs());
    print!("{}", credential.report(&args.uris));
    Ok(ExitCode::SUCCESS)
}

/// `tern key`: the MD5 long-term key of RFC 5389 (what coturn's
/// `turnadmin -k` prints), as an `auth.users` line.
fn key(args: &KeyArgs) -> Result<ExitCode, String> {
    let password = match &args.password {
        Some(password) => password.clone(),
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line).map_err(|e| format!("cannot read the password: {e}"))?;
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if password.is_empty() {
        return Err("the password is empty (give --password, or one line on standard input)".into());
    }
    let key = tern::proto::stun::integrity::long_term_key_md5(&args.user, &args.realm, &password);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "# [auth.users] entry for realm {:?}: MD5 only (browsers, RFC 5389 clients); a password allows SHA-256 too",
        args.realm
    );
    println!("{} = {{ key = \"0x{hex}\" }}", toml_key(&args.user));
    Ok(ExitCode::SUCCESS)
}

/// `name` as a TOML key: bare when it can be, quoted otherwise.
fn toml_key(name: &str) -> String {
    let bare = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if bare { name.to_owned() } else { toml::Value::String(name.to_owned()).to_string() }
}

/// Relay ports inside the kernel's ephemeral range can be taken by any
/// program's outgoing sockets; tern skips those, but a busy host can run a
/// relay out of ports that way.
fn warn_about_ephemeral_overlap((min, max): (u16, u16)) {
    let Ok(text) = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range") else { return };
    let bounds: Vec<u16> = text.split_whitespace().filter_map(|n| n.parse().ok()).collect();
    if let [low, high] = bounds[..]
        && min <= high
        && low <= max
    {
        info!(
            relay_ports = %format!("{min}-{max}"),
            ephemeral = %format!("{low}-{high}"),
            "the relay port range overlaps the kernel's ephemeral port range; other programs may take relay ports \
             (move one of them: relay_ports, or sysctl net.ipv4.ip_local_port_range)"
        );
    }
}

fn load_test(args: &LoadArgs) -> Result<ExitCode, String> {
    let server = client::resolve_server(&args.server).map_err(|e| format!("{}: {e}", args.server))?;
    let credentials = client_credentials(&args.user, args.pass.as_ref(), args.secret.as_ref())?;
    let mode = match args.mode {
        LoadMode::Relay => Mode::Relay {
            allocations: args.allocations as usize,
            pacing: match (args.rate, args.window) {
                (Some(rate), _) if rate > 0.0 => Pacing::Rate(rate),
                (Some(_), _) => return Err("--rate must be positive".into()),
                (None, window) => Pacing::Window(window.unwrap_or(1).max(1)),
            },
            size: args.size,
            send_indication: args.send_indication,
            peer: args.peer,
            peer_listen: args.peer_listen,
            peer_threads: args.peer_threads,
            raw: args.raw,
            client_ips: args.client_ips.clone(),
        },
        LoadMode::Alloc => Mode::Alloc { concurrency: args.concurrency.max(1) },
    };
    let config = LoadConfig {
        server,
        transport: transport(args.transport),
        credentials,
        mode,
        duration: args.duration,
        threads: args.threads.max(1),
        server_pid: args.server_pid,
        progress: !args.json,
        timeout: args.timeout,
    };
    // A socket per allocation, on this side too.
    let _ = process::raise_fd_limit(process::fd_ceiling());
    let report = load::run(&config)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?);
    } else {
        print!("{}", report.to_text());
    }
    Ok(ExitCode::SUCCESS)
}
