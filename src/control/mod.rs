//! The control plane: a tokio runtime on a thread of its own, and what runs
//! on it — the metrics endpoint and the admin API (HTTP), and the store's
//! client (users, REST secrets and changes for the workers).
//!
//! It reaches the data plane only through `io`'s queues and snapshots: the
//! workers publish counters, answer commands between two loop turns, and
//! never wait on anything here. What it asks of the process (reload, drain,
//! log level) goes through [`Lifecycle`], which `crate::serve` implements,
//! so this module needs nothing of how tern starts and stops.

mod admin;
pub mod api;
mod dashboard;
mod http;
mod store;
mod token;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tracing::{error, info};

use crate::config::{AdminToken, LogLevel};
use crate::io::tls::TlsStore;
use crate::io::{MetricsSource, Workers};
use crate::store::StoreSettings;

/// What the control plane asks of the process; `crate::serve` answers.
pub trait Lifecycle: Send + Sync + 'static {
    /// What SIGHUP does; the generation in force after it, or why the
    /// configuration did not load (nothing changed then).
    fn reload(&self) -> Result<api::Reloaded, String>;
    /// What SIGUSR1 does, with `deadline` in place of `drain_timeout` when
    /// given. Returns the deadline the drain runs with.
    fn drain(&self, deadline: Option<Duration>) -> Option<Duration>;
    /// Sets the log level until the next reload or restart.
    fn set_log_level(&self, level: LogLevel);
    /// The admin token in force (a reload may have read a new one).
    fn admin_token(&self) -> Option<AdminToken>;
}

/// Everything the HTTP services read, shared by their connections.
pub struct Context {
    pub workers: Workers,
    pub metrics: MetricsSource,
    pub lifecycle: Arc<dyn Lifecycle>,
    /// The realm allocations are made in.
    pub realm: String,
    pub started: Instant,
    pub started_unix: u64,
    /// Users and secrets from a database (`[store]`).
    pub store: Option<StoreSettings>,
}

/// Listeners bound before privileges were dropped, served once the
/// runtime runs.
pub struct Listeners {
    /// `metrics.listen`: `/metrics` and the probes, without a token.
    pub metrics: Option<std::net::TcpListener>,
    /// `admin.listen`: the API, the dashboard, `/metrics` and the probes.
    pub admin: Option<std::net::TcpListener>,
    /// With `admin.tls`: the workers' certificate store, which the API
    /// serves too.
    pub admin_tls: Option<Arc<TlsStore>>,
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot start the control plane's runtime: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot serve on {addr}: {source}")]
    Listener {
        addr: String,
        #[source]
        source: std::io::Error,
    },
}

/// The running control plane; dropping it stops the runtime.
pub struct ControlPlane {
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    /// Where the metrics and admin listeners ended up (port 0 resolved).
    pub metrics_addr: Option<SocketAddr>,
    pub admin_addr: Option<SocketAddr>,
}

impl ControlPlane {
    /// Starts the runtime on its own thread and serves `listeners` on it.
    pub fn start(context: Context, listeners: Listeners) -> Result<Self, ControlError> {
        let listener_addr =
            |listener: &Option<std::net::TcpListener>| listener.as_ref().and_then(|l| l.local_addr().ok());
        let (metrics_addr, admin_addr) = (listener_addr(&listeners.metrics), listener_addr(&listeners.admin));
        let admin_tls = listeners.admin_tls.is_some();
        for listener in [&listeners.metrics, &listeners.admin].into_iter().flatten() {
            listener.set_nonblocking(true).map_err(|source| ControlError::Listener {
                addr: listener.local_addr().map_or_else(|_| "?".into(), |a| a.to_string()),
                source,
            })?;
        }
        // One thread: the control plane's work is small and bursty, and
        // the cores belong to the workers.
        let runtime =
            tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(ControlError::Runtime)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let mut context = context;
        let store = context.store.take();
        let context = Arc::new(context);
        let thread = std::thread::Builder::new()
            .name("tern-control".into())
            .spawn(move || {
                runtime.block_on(async move {
                    if let Some(settings) = store {
                        store::spawn(settings, context.realm.clone(), context.workers.clone());
                    }
                    if let Some(listener) = listeners.metrics {
                        spawn_service(listener, admin::metrics_router(Arc::clone(&context)), "metrics", None);
                    }
                    if let Some(listener) = listeners.admin {
                        spawn_service(listener, admin::router(Arc::clone(&context)), "admin", listeners.admin_tls);
                    }
                    // Until stopped, or until the handle is gone.
                    let _ = stopped.await;
                });
            })
            .map_err(ControlError::Runtime)?;
        if let Some(addr) = metrics_addr {
            info!(%addr, probes = "/healthz, /readyz", "serving metrics at /metrics");
        }
        if let Some(addr) = admin_addr {
            info!(%addr, api = api::PREFIX, tls = admin_tls, "serving the admin API");
        }
        Ok(Self { stop: Some(stop), thread: Some(thread), metrics_addr, admin_addr })
    }
}

/// Serves `router` on `listener` until the runtime stops.
fn spawn_service(
    listener: std::net::TcpListener,
    router: axum::Router,
    name: &'static str,
    tls: Option<Arc<TlsStore>>,
) {
    match tokio::net::TcpListener::from_std(listener) {
        Ok(listener) => {
            tokio::spawn(http::serve(listener, router, name, tls));
        }
        Err(e) => error!(error = %e, service = name, "cannot serve this listener"),
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
