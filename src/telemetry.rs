//! Logging setup: `tracing` to stderr, as text or JSON lines; Prometheus
//! metrics are in [`metrics`].
//!
//! The level comes from the config (`[log] level`, `--log-level`);
//! `RUST_LOG`, when set, replaces it with a full filter for debugging
//! (for example `RUST_LOG=tern=trace`).
//!
//! Allocation lifecycle lines have a target of their own,
//! [`ALLOCATION_TARGET`], switched by `[log] allocations` rather than by the
//! level: they are one or two lines per allocation, and at tens of
//! thousands of allocations a second their formatting would cost more than
//! the allocations themselves.

pub mod metrics;

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat};
use crate::proto::allocation::LOG_TARGET as ALLOCATION_TARGET;

pub fn init(log: &LogConfig) {
    let allocations = if log.allocations { "info" } else { "off" };
    let configured = format!("{},{ALLOCATION_TARGET}={allocations}", log.level.as_str());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(configured));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    // A second init (tests that call `main` twice) keeps the first subscriber.
    let _ = match log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
