//! The `tern` binary: parse the command line, load the configuration, set up
//! logging, run the subcommand. Errors end as one readable line and exit 1.

use std::process::ExitCode;

use clap::Parser;
use tracing::{info, warn};

use tern::cli::{Cli, Command, ServerArgs, StunArgs};
use tern::client::{self, stun::StunProbe};
use tern::config::Config;
use tern::io::{self, shutdown::Shutdown};
use tern::proto::Transport;
use tern::telemetry;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(&args),
        Command::Check(args) => check(&args),
        Command::Stun(args) => stun(&args),
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
    let mut config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| e.to_string())?,
        None => Config::defaults(),
    };
    config.apply(&args.overrides()).map_err(|e| e.to_string())?;
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
    let local_addresses = tern::io::sys::local_addresses().map_err(|e| format!("cannot list local addresses: {e}"))?;
    let running = io::start(&config.runtime(rand::random(), &local_addresses), &shutdown).map_err(|e| e.to_string())?;
    let report = running.join().map_err(|e| format!("server failed: {e}"))?;
    signals.close();
    info!(
        requests = report.server.requests,
        binding_responses = report.server.binding_responses,
        error_responses = report.server.error_responses,
        malformed = report.server.malformed,
        allocations = report.server.allocations_created,
        relayed_to_peer = report.server.relayed_to_peer,
        relayed_to_client = report.server.relayed_to_client,
        tcp_connections = report.io.tcp_accepted,
        "tern stopped"
    );
    Ok(ExitCode::SUCCESS)
}

fn check(args: &ServerArgs) -> Result<ExitCode, String> {
    let config = load(args)?;
    let source = args.config.as_ref().map_or("embedded defaults".to_owned(), |p| p.display().to_string());
    println!("# {source}: valid; effective settings:");
    print!("{}", config.to_toml());
    Ok(ExitCode::SUCCESS)
}

fn stun(args: &StunArgs) -> Result<ExitCode, String> {
    let server = client::resolve_server(&args.server).map_err(|e| format!("{}: {e}", args.server))?;
    let probe = StunProbe {
        server,
        transport: if args.tcp { Transport::Tcp } else { Transport::Udp },
        count: args.count,
        timeout: args.timeout,
        interval: args.interval,
    };
    let ok = probe.run(&mut std::io::stdout().lock()).map_err(|e| e.to_string())?;
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
