//! The IO driver: sockets, threads, the clock and shutdown. It moves bytes and
//! time into the sans-IO core and decides nothing about the protocol.
//!
//! `start` binds every listen socket up front (so a bad address fails before
//! any worker runs), spawns one worker thread per configured worker, and
//! returns a handle that reports the bound addresses and waits for the
//! workers to stop.

pub mod clock;
pub mod commands;
mod listener;
pub mod liveness;
mod out;
pub mod proxy;
mod relay;
mod report;
pub mod shared;
pub mod shutdown;
mod stream;
#[allow(unsafe_code)]
pub mod sys;
mod tcp;
mod tcp_relay;
pub mod tls;
mod token;
mod worker;

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tracing::{error, info, warn};

use crate::proto::Transport;
use crate::proto::server::ServerConfig;
pub use listener::{BindError, size_buffers};
pub use report::{IoStats, WorkerReport};
pub use shared::ReloadStatus;
use shared::{Shared, SharedAccounts};
use shutdown::Shutdown;

pub use crate::proto::resources::QuotaLimits;

/// What the driver needs to run: where to listen, how many workers, the
/// relay port range and quotas, and the core's configuration.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    pub listen: Vec<SocketAddr>,
    pub workers: usize,
    /// SO_RCVBUF/SO_SNDBUF of each UDP listen socket, in bytes; 0 keeps the kernel's.
    pub udp_buffer: usize,
    /// Who to become once the listen sockets are bound.
    pub run_as: Option<sys::process::Identity>,
    pub relay_ports: (u16, u16),
    pub quotas: QuotaLimits,
    pub server: ServerConfig,
    /// TLS listeners, when a certificate is configured.
    pub tls: Option<TlsSettings>,
    /// Listeners behind a load balancer that sends PROXY headers.
    pub proxy: Option<proxy::ProxySettings>,
}

/// Where to serve TLS, with which certificate, and its limits.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    /// PEM certificate chain, leaf first.
    pub cert: std::path::PathBuf,
    /// PEM private key.
    pub key: std::path::PathBuf,
    /// Handshakes in progress per worker; a connection beyond it is closed at once.
    pub max_handshakes: usize,
    /// A connection whose handshake takes longer is closed.
    pub handshake_timeout: Duration,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot start worker: {0}")]
    Worker(#[source] std::io::Error),
    #[error("cannot switch to the configured user and group: {0}")]
    Privileges(#[source] std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
}

/// A running server.
pub struct Running {
    listening: Vec<(Transport, SocketAddr)>,
    proxied: Vec<(Transport, SocketAddr)>,
    workers: Vec<JoinHandle<std::io::Result<WorkerReport>>>,
    shutdown: Shutdown,
    shared: Arc<Shared>,
    tls: Option<Arc<tls::TlsStore>>,
}

/// What a reload (SIGHUP) can change while the workers run.
pub struct Reloader {
    shared: Arc<Shared>,
    tls: Option<Arc<tls::TlsStore>>,
}

impl Reloader {
    /// Puts `config` in force and returns its generation: the quotas at
    /// once for the whole process, the core's configuration and the TLS
    /// limits in every worker on its next loop turn. What binds a socket
    /// or changes the process (listen addresses, workers, relay ports,
    /// the identity to run as) is not read: it takes a restart, and
    /// `config::Config::reloaded` keeps it at its running value.
    pub fn reload(&self, config: &RuntimeConfig) -> u64 {
        self.shared.accounts.lock().set_limits(config.quotas);
        self.shared.publish_config(config.server.clone(), config.tls.clone())
    }

    /// Counts a reload that changed nothing, and says how the reloads stand.
    pub fn reload_failed(&self) -> ReloadStatus {
        self.shared.record_reload_failure()
    }

    /// The certificate store, when TLS is served.
    pub fn tls(&self) -> Option<&Arc<tls::TlsStore>> {
        self.tls.as_ref()
    }
}

/// A handle for metrics scrapes, kept by the metrics thread.
#[derive(Clone)]
pub struct MetricsSource {
    shared: Arc<Shared>,
    shutdown: Shutdown,
    workers: usize,
}

/// The server's state at a scrape: counters as of each worker's last tick
/// (at most a second old), gauges as of now.
#[derive(Clone, Copy, Debug)]
pub struct MetricsSnapshot {
    pub counters: WorkerReport,
    pub allocations: u32,
    pub connections: u32,
    pub workers: usize,
    /// SIGUSR1 was received: no new allocations.
    pub draining: bool,
    /// The configuration in force, and how its reloads went.
    pub reloads: ReloadStatus,
}

impl MetricsSource {
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            counters: self.shared.reports(),
            allocations: self.allocations(),
            connections: self.shared.accounts.lock().connections(),
            workers: self.workers,
            draining: self.shutdown.is_draining(),
            reloads: self.shared.reload_status(),
        }
    }

    /// Allocations now, in every worker: the gauge alone, without summing
    /// the counters.
    pub fn allocations(&self) -> u32 {
        self.shared.accounts.lock().allocations()
    }
}

/// What the control plane reaches the workers through: their command
/// queues and their heartbeats, never their state.
#[derive(Clone)]
pub struct Workers {
    shared: Arc<Shared>,
}

impl Workers {
    pub fn count(&self) -> usize {
        self.shared.commands.workers()
    }

    /// Queues `command` for `worker` and wakes it.
    pub fn send(&self, worker: usize, command: commands::Command) -> Result<(), commands::SendError> {
        self.shared.commands.send(worker, command)
    }

    pub fn liveness(&self) -> &liveness::Liveness {
        &self.shared.liveness
    }

    /// Sends the workers' store lookups to `lookups` from now on.
    pub fn connect_store(&self, lookups: tokio::sync::mpsc::Sender<commands::Lookup>) {
        self.shared.commands.connect_store(lookups);
    }

    /// Queues a store update for `worker` and wakes it.
    pub fn send_store(&self, worker: usize, update: commands::StoreUpdate) {
        self.shared.commands.send_store(worker, update);
    }

    /// Queues the update `make` makes for every worker.
    pub fn broadcast_store(&self, make: impl Fn() -> commands::StoreUpdate) {
        for worker in 0..self.count() {
            self.shared.commands.send_store(worker, make());
        }
    }

    /// Gives every worker the realm's REST secrets in the store.
    pub fn publish_secrets(&self, secrets: &[Vec<u8>]) {
        self.shared.commands.publish_secrets(secrets);
    }
}

/// Binds the listen sockets and starts the workers.
pub fn start(config: &RuntimeConfig, shutdown: &Shutdown) -> Result<Running, StartError> {
    // The certificate is read before anything binds, and before privileges
    // are dropped: the key file is often readable by root only.
    let tls = match &config.tls {
        Some(settings) => Some((settings, Arc::new(tls::TlsStore::load(&settings.cert, &settings.key)?))),
        None => None,
    };
    let tls_listen = config.tls.as_ref().map_or(&[][..], |t| &t.listen[..]);
    let per_worker =
        listener::bind_all(&config.listen, tls_listen, config.proxy.as_ref(), config.workers, config.udp_buffer)?;
    if let Some((socket, _)) = per_worker.first().and_then(|w| w.udp.first()) {
        let granted = socket2::SockRef::from(socket).recv_buffer_size().map(|b| b / 2).unwrap_or(0);
        if config.udp_buffer > 0 && granted < config.udp_buffer {
            warn!(
                asked = config.udp_buffer,
                granted,
                "UDP socket buffers are capped by the kernel; raise net.core.rmem_max and net.core.wmem_max \
                 (sysctl) or bursts will be dropped"
            );
        }
    }
    let mut listening = Vec::new();
    let mut proxied = Vec::new();
    if let Some(first) = per_worker.first() {
        listening.extend(first.udp.iter().map(|(_, addr)| (Transport::Udp, *addr)));
        listening.extend(first.tcp.iter().map(|(_, addr)| (Transport::Tcp, *addr)));
        listening.extend(first.tls.iter().map(|(_, addr)| (Transport::Tls, *addr)));
        proxied.extend(first.proxy.iter().flat_map(|proxy| proxy.listeners()).copied());
    }
    if let Some(identity) = config.run_as {
        sys::process::drop_privileges(identity).map_err(StartError::Privileges)?;
        info!(uid = identity.uid, gid = identity.gid, "dropped privileges");
    }
    let accounts = SharedAccounts::new(config.relay_ports, config.quotas, rand::random());
    let shared = Arc::new(Shared::new(accounts, per_worker.len()));
    let mut workers = Vec::with_capacity(config.workers);
    for (id, listeners) in per_worker.into_iter().enumerate() {
        let worker_tls = tls.as_ref().map(|(settings, store)| worker::WorkerTls {
            acceptor: tls::TlsAcceptor::new(Arc::clone(store)),
            max_handshakes: settings.max_handshakes,
            handshake_timeout: settings.handshake_timeout,
        });
        let seed = rand::random();
        let worker = worker::Worker::new(
            id,
            listeners,
            config.server.clone(),
            shared.clone(),
            shutdown.clone(),
            worker_tls,
            seed,
        )
        .map_err(StartError::Worker)?;
        let shutdown = shutdown.clone();
        let handle = std::thread::Builder::new()
            .name(format!("tern-worker-{id}"))
            .spawn(move || {
                let result = worker.run();
                if let Err(e) = &result {
                    error!(worker = id, error = %e, "worker failed; shutting down");
                    shutdown.trigger();
                }
                result
            })
            .map_err(StartError::Worker)?;
        workers.push(handle);
    }
    for (transport, addr) in &listening {
        if proxied.contains(&(*transport, *addr)) {
            info!(%transport, %addr, workers = config.workers, proxy_protocol = true, "listening");
        } else {
            info!(%transport, %addr, workers = config.workers, "listening");
        }
    }
    Ok(Running { listening, proxied, workers, shutdown: shutdown.clone(), shared, tls: tls.map(|(_, store)| store) })
}

impl Running {
    /// The addresses listened on, with port 0 resolved.
    pub fn listening(&self) -> &[(Transport, SocketAddr)] {
        &self.listening
    }

    /// The listening addresses that speak the PROXY protocol.
    pub fn proxied(&self) -> &[(Transport, SocketAddr)] {
        &self.proxied
    }

    /// The state shared by the workers: port pools and quotas.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// A handle for SIGHUP: the certificate store, and the configuration
    /// the workers and the accounts run with.
    pub fn reloader(&self) -> Reloader {
        Reloader { shared: Arc::clone(&self.shared), tls: self.tls.clone() }
    }

    /// What a metrics scrape reads: the workers' counters and the gauges.
    pub fn metrics(&self) -> MetricsSource {
        MetricsSource { shared: Arc::clone(&self.shared), shutdown: self.shutdown.clone(), workers: self.workers.len() }
    }

    /// What the control plane reaches the workers through.
    pub fn workers(&self) -> Workers {
        Workers { shared: Arc::clone(&self.shared) }
    }

    /// The shutdown handle the workers watch.
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// Waits for every worker to stop and sums their counters. The first
    /// worker error is returned after all have stopped.
    pub fn join(self) -> std::io::Result<WorkerReport> {
        let mut total = WorkerReport::default();
        let mut first_error = None;
        for handle in self.workers {
            match handle.join() {
                Ok(Ok(report)) => total.add(&report),
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(_) => {
                    first_error.get_or_insert_with(|| std::io::Error::other("worker panicked"));
                }
            }
        }
        first_error.map_or(Ok(total), Err)
    }
}
