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
//!
//! A reload ([`reload()`]) swaps the filter through tracing-subscriber's
//! reload layer and switches the format. Both formats are installed from
//! the start and one of them writes events, while both see every span: a
//! formatter keeps each open span's fields in its own form and writes an
//! event inside the spans it saw open, and the worker's span lives as long
//! as the worker, so a formatter that joined later would leave it out.

pub mod metrics;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry, fmt, reload};

use crate::config::{LogConfig, LogFormat};
use crate::proto::allocation::LOG_TARGET as ALLOCATION_TARGET;

/// What a reload changes in the subscriber [`init`] installed.
struct Logging {
    filter: reload::Handle<EnvFilter, Registry>,
    /// JSON writes, not text.
    json: Arc<AtomicBool>,
    /// `RUST_LOG` set the filter, and keeps it over the configuration.
    from_env: bool,
}

static LOGGING: OnceLock<Logging> = OnceLock::new();

/// What a reload of `[log]` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogReload {
    /// The level, the allocation lines and the format are the new ones.
    Applied,
    /// The format is the new one; `RUST_LOG` still decides what is logged.
    RustLogDecides,
    /// Logging was not set up by [`init`] (tern runs inside another
    /// program): nothing to change.
    NotSetUp,
}

pub fn init(log: &LogConfig) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let rust_log = from_env.is_some();
    let (filter, handle) = reload::Layer::new(from_env.unwrap_or_else(|| configured(log)));
    let json = Arc::new(AtomicBool::new(log.format == LogFormat::Json));
    // Spans go to both formatters, so either can write inside them.
    let writes = |as_json: bool| {
        let json = Arc::clone(&json);
        filter_fn(move |metadata| metadata.is_span() || json.load(Ordering::Relaxed) == as_json)
    };
    let text = fmt::layer().with_writer(std::io::stderr).with_ansi(std::io::stderr().is_terminal());
    let json_lines = fmt::layer().json().flatten_event(true).with_writer(std::io::stderr);
    let subscriber = Registry::default()
        .with(filter)
        .with(text.with_filter(writes(false)))
        .with(json_lines.with_filter(writes(true)));
    // A second init (tests that call `main` twice) keeps the first subscriber.
    if subscriber.try_init().is_ok() {
        let _ = LOGGING.set(Logging { filter: handle, json, from_env: rust_log });
    }
}

/// Applies a reloaded `[log]`: its level and allocation lines (unless
/// `RUST_LOG` set the filter) and its format, from the next line on.
pub fn reload(log: &LogConfig) -> LogReload {
    let Some(logging) = LOGGING.get() else { return LogReload::NotSetUp };
    logging.json.store(log.format == LogFormat::Json, Ordering::Relaxed);
    // Either call rebuilds the callsites' cached interest, which the
    // format switch needs as much as the filter does.
    let rebuilt = if logging.from_env { logging.filter.modify(|_| {}) } else { logging.filter.reload(configured(log)) };
    match rebuilt {
        Ok(()) if logging.from_env => LogReload::RustLogDecides,
        Ok(()) => LogReload::Applied,
        // The subscriber is gone: the process is exiting.
        Err(_) => LogReload::NotSetUp,
    }
}

/// The filter `[log]` asks for.
fn configured(log: &LogConfig) -> EnvFilter {
    let allocations = if log.allocations { "info" } else { "off" };
    EnvFilter::new(format!("{},{ALLOCATION_TARGET}={allocations}", log.level.as_str()))
}
