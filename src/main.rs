//! The `tern` binary: parse the command line, load the configuration, set up
//! logging, run the subcommand. Errors end as one readable line and exit 1.

#![deny(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;

use tern::cli::{
    AdminArgs, AdminCommand, Cli, ClientTransport, Command, ConvertArgs, CredentialsArgs, DoctorArgs, KeyArgs,
    LoadArgs, LoadMode, NatArgs, PasswordAlgorithmArg, ServerArgs, StunArgs, TlsClientArgs, TurnArgs,
};
use tern::client::credentials::RestCredential;
use tern::client::doctor::{Doctor, DoctorCredentials, ServerUrl};
use tern::client::load::{self, LoadConfig, Mode, Pacing};
use tern::client::nat::NatProbe;
use tern::client::relay_probe::RelayProbe;
use tern::client::tcp_relay::TcpRelayProbe;
use tern::client::tls::{self as client_tls, TlsClient, TlsOptions};
use tern::client::turn::{AuthMode, AuthOptions, Credentials};
use tern::client::{self, stun::StunProbe};
use tern::io::shutdown::Shutdown;
use tern::io::sys::process;
use tern::proto::Transport;
use tern::serve;
use tern::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Check(args) => check(&args),
        Command::Convert(args) => convert(&args),
        Command::Stun(args) => stun(&args),
        Command::Nat(args) => nat(&args),
        Command::Turn(args) => turn(&args),
        Command::Credentials(args) => credentials(&args),
        Command::Key(args) => key(&args),
        Command::Load(args) => load_test(&args),
        Command::Admin(args) => admin(&args),
        Command::Doctor(args) => doctor(&args),
        Command::User(command) => tern::store::admin::user(&command).map(|()| ExitCode::SUCCESS),
        Command::Secret(command) => tern::store::admin::secret(&command).map(|()| ExitCode::SUCCESS),
        Command::Realm(command) => tern::store::admin::realm(&command).map(|()| ExitCode::SUCCESS),
        Command::Usage(command) => tern::store::admin::usage(&command).map(|()| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("tern: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: &ServerArgs) -> Result<ExitCode, String> {
    let source = args.source();
    let config = source.load().map_err(|e| e.to_string())?;
    telemetry::init(&config.log);
    let serving = serve::serve(&config, source, Shutdown::new()).map_err(|e| e.to_string())?;
    serving.join().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn check(args: &ServerArgs) -> Result<ExitCode, String> {
    let source = args.source();
    let config = source.load().map_err(|e| e.to_string())?;
    println!("# {source}: valid; effective settings:");
    print!("{}", config.to_toml());
    if let Some(store) = config.store() {
        println!("{}", tern::store::admin::check_line(store));
    }
    Ok(ExitCode::SUCCESS)
}

/// `tern convert`: coturn's configuration as tern's, on standard output.
fn convert(args: &ConvertArgs) -> Result<ExitCode, String> {
    let toml = tern::config::coturn::convert_file(&args.file).map_err(|e| e.to_string())?;
    print!("{toml}");
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

/// `tern admin`: one call to a running server's admin API, printed.
fn admin(args: &AdminArgs) -> Result<ExitCode, String> {
    use tern::client::admin::{self, AdminClient, Filters, Trust};
    let token = match (&args.token_file, std::env::var("TERN_ADMIN_TOKEN")) {
        (Some(file), _) => {
            std::fs::read_to_string(file).map_err(|e| format!("cannot read the token file {}: {e}", file.display()))?
        }
        (None, Ok(token)) => token,
        (None, Err(_)) => return Err("the admin token: give --token-file FILE or set TERN_ADMIN_TOKEN".into()),
    };
    let trust = match (&args.tls_ca, args.insecure) {
        (Some(ca), _) => Trust::CaFile(ca),
        (None, true) => Trust::Insecure,
        (None, false) => Trust::WebRoots,
    };
    let client = AdminClient::new(&args.url, &token, args.timeout, trust).map_err(|e| e.to_string())?;
    let print = |json: String, text: String| println!("{}", if args.json { json } else { text });
    let failed = |e: admin::AdminError| e.to_string();
    match &args.command {
        AdminCommand::Status => {
            let status = client.status().map_err(failed)?;
            print(pretty_json(&status), admin::status_text(&status));
        }
        AdminCommand::Allocations { user, client_ip, transport, by_traffic, limit } => {
            let filters = Filters {
                user: user.clone(),
                client_ip: client_ip.map(|ip| ip.to_string()),
                transport: transport.clone(),
                by_traffic: *by_traffic,
                limit: *limit,
            };
            let allocations = match (by_traffic, limit) {
                (false, None) => client.all_allocations(&filters).map_err(failed)?,
                _ => client.allocations(&filters, None).map_err(failed)?.allocations,
            };
            print(pretty_json(&allocations), admin::allocations_table(&allocations));
        }
        AdminCommand::Kill { id } => {
            client.kill(*id).map_err(failed)?;
            print(format!("{{\"ended\": {id}}}"), format!("allocation {id} ended"));
        }
        AdminCommand::Revoke { name: None, .. } => {
            let revoked = client.revocations().map_err(failed)?;
            print(pretty_json(&revoked), revoked.names.join("\n"));
        }
        AdminCommand::Revoke { name: Some(name), undo: true } => {
            client.unrevoke(name).map_err(failed)?;
            print(format!("{{\"unrevoked\": {}}}", pretty_json(name)), format!("{name} is let in again"));
        }
        AdminCommand::Revoke { name: Some(name), undo: false } => {
            let revoked = client.revoke(name).map_err(failed)?;
            let text = format!("{name} revoked: {} allocations ended", revoked.allocations_ended);
            print(pretty_json(&revoked), text);
        }
        AdminCommand::Drain { deadline } => {
            let draining = client.drain(*deadline).map_err(failed)?;
            let until =
                draining.deadline_secs.map_or("until the last one ends".into(), |s| format!("for at most {s} s"));
            print(pretty_json(&draining), format!("draining {} allocations {until}", draining.allocations));
        }
        AdminCommand::Reload => {
            let reloaded = client.reload().map_err(failed)?;
            let mut text = format!("configuration generation {} in force", reloaded.generation);
            if !reloaded.needs_restart.is_empty() {
                text.push_str(&format!("; takes a restart: {}", reloaded.needs_restart.join(", ")));
            }
            print(pretty_json(&reloaded), text);
        }
        AdminCommand::Log { level } => {
            client.set_log_level(*level).map_err(failed)?;
            print(format!("{{\"level\": \"{level}\"}}"), format!("log level {level} until the next reload"));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The JSON `tern admin --json` prints.
fn pretty_json(value: &impl serde::Serialize) -> String {
    // Serializing plain data into a String cannot fail.
    serde_json::to_string_pretty(value).unwrap_or_default()
}

/// `tern key`: the MD5 long-term key of RFC 5389 (what coturn's
/// `turnadmin -k` prints), as an `auth.users` line.
fn key(args: &KeyArgs) -> Result<ExitCode, String> {
    let password = match &args.password {
        Some(password) if password.is_empty() => return Err("the password is empty".into()),
        Some(password) => password.clone(),
        None => tern::store::admin::first_line_of_stdin("the password")?,
    };
    let key = tern::proto::stun::integrity::long_term_key_md5(&args.user, &args.realm, &password);
    let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
    println!(
        "# [auth.users] entry for realm {:?}: MD5 only (browsers, RFC 5389 clients); a password allows SHA-256 too",
        args.realm
    );
    println!("{} = {{ key = \"0x{hex}\" }}", tern::config::toml_key(&args.user));
    Ok(ExitCode::SUCCESS)
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

/// `tern doctor`: the report on standard output; failures make the exit
/// status 1.
fn doctor(args: &DoctorArgs) -> Result<ExitCode, String> {
    let urls = args.urls.iter().map(|url| ServerUrl::parse(url)).collect::<Result<Vec<_>, _>>();
    let credentials = match (&args.user, &args.pass, &args.secret) {
        (Some(user), Some(pass), _) => {
            Some(DoctorCredentials::Password(Credentials { username: user.clone(), password: pass.clone() }))
        }
        (Some(user), None, Some(secret)) => {
            Some(DoctorCredentials::Secret { user: user.clone(), secret: secret.clone() })
        }
        _ => None,
    };
    let doctor = Doctor {
        urls: urls.map_err(|e| e.to_string())?,
        credentials,
        realm: args.realm.clone(),
        tls_ca: args.tls_ca.clone(),
        sni: args.sni.clone(),
        timeout: args.timeout,
    };
    let report = doctor.run();
    if args.json {
        println!("{}", report.to_json());
    } else {
        print!("{}", report.to_text());
    }
    Ok(if report.passed() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
