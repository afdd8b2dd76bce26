//! The command line: `tern serve`, `tern check`, and the client subcommands.
//! Wiring only; every subcommand's work lives in its module.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, LogFormat, LogLevel, Overrides};

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
    /// Send STUN Binding requests and print the mapped address and round-trip time.
    Stun(StunArgs),
}

/// Settings shared by `serve` and `check`: a config file and flags that
/// override its keys.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// TOML configuration file; without it, the embedded defaults apply.
    #[arg(long, short, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address to listen on, UDP and TCP (repeatable; replaces `listen`).
    #[arg(long = "listen", value_name = "ADDR", value_parser = config::parse_listen_flag)]
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
}

impl ServerArgs {
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            realm: self.realm.clone(),
            workers: self.workers,
            log_level: self.log_level,
            log_format: self.log_format,
        }
    }
}

#[derive(Debug, Args)]
pub struct StunArgs {
    /// Server as HOST[:PORT] or a stun: URI; the port defaults to 3478.
    pub server: String,
    /// Use TCP instead of UDP.
    #[arg(long)]
    pub tcp: bool,
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

/// Parses durations such as `500ms`, `5s`, `24h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{text:?} is not a duration like 500ms, 5s or 24h: {e}"))
}
