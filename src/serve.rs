//! `tern serve` from a loaded configuration to its exit: the signals it
//! answers, the open-file limit, the workers ([`crate::io::start`]), the
//! control plane ([`crate::control`]: metrics and the admin API), reloads
//! and drains, and the line that reports what the workers did.
//!
//! [`serve`] catches SIGINT and SIGTERM (stop), SIGHUP (reload) and SIGUSR1
//! (drain) before anything listens: once "listening" is logged, a SIGHUP
//! must not meet its default action, which would end tern. The [`Serving`]
//! handle does what the signals do for a caller in the process, and the
//! admin API does it through [`crate::control::Lifecycle`]. Under systemd,
//! `systemd` tells the service manager about all of it.

mod systemd;

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use signal_hook::consts::{SIGHUP, SIGUSR1};
use signal_hook::iterator::{Handle, Signals};
use tracing::{error, info, warn};

use crate::config::{AdminToken, Config, Credentials, LogLevel, Source};
use crate::control::{self, ControlPlane, Lifecycle, api};
use crate::io::clock;
use crate::io::shutdown::Shutdown;
use crate::io::sys::{interfaces, process};
use crate::io::{MetricsSource, Reloader, Running, StartError, WorkerReport, start};
use crate::proto::Transport;
use crate::store::StoreSettings;
use crate::telemetry::{self, LogReload};

/// Why `tern serve` could not start, or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot install signal handlers: {0}")]
    StopSignals(#[source] std::io::Error),
    #[error("cannot install the {signal} handler: {source}")]
    InstallSignal {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the {signal} handler: {source}")]
    SignalThread {
        signal: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot list local addresses: {0}")]
    LocalAddresses(#[source] std::io::Error),
    #[error("cannot listen on {addr} ({key}): {source}")]
    ControlListen {
        addr: SocketAddr,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] control::ControlError),
    #[error("cannot start the systemd notifier: {0}")]
    SystemdThread(#[source] std::io::Error),
    #[error("{0}")]
    TestHook(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("server failed: {0}")]
    Failed(#[source] std::io::Error),
}

/// A serving tern: its workers, its metrics, and what the signals drive.
pub struct Serving {
    running: Running,
    control: Arc<Control>,
    control_plane: Option<ControlPlane>,
    signals: SignalHandles,
}

/// What reload, drain and stop act on, shared with the signal threads and
/// the control plane.
struct Control {
    reload: Reload,
    shutdown: Shutdown,
    metrics: MetricsSource,
    drain_started: AtomicBool,
    /// When a drain ends what is left, if it has a deadline.
    drain_deadline: Mutex<Option<Instant>>,
    systemd: Arc<systemd::Systemd>,
}

/// What a reload reads and what it changes: the source tern started with,
/// the configuration in force, and what a reloaded one is built with.
struct Reload {
    source: Source,
    /// The configuration in force; a reload holds the lock until the
    /// next one is in force, so reloads take turns.
    running: Mutex<Config>,
    /// Signs nonces: a reloaded configuration keeps it, so the nonces
    /// handed out stay valid.
    nonce_key: [u8; 32],
    /// The host's addresses at start, which the peer policy counts as
    /// tern's own.
    local_addresses: Vec<IpAddr>,
    reloader: Reloader,
}

/// The signal threads' handles; dropping them stops the threads.
#[derive(Default)]
struct SignalHandles(Vec<Handle>);

impl Drop for SignalHandles {
    fn drop(&mut self) {
        for handle in &self.0 {
            handle.close();
        }
    }
}

/// Starts serving `config`; a reload reads `source` again. `shutdown`
/// stops it (SIGINT and SIGTERM trigger it).
pub fn serve(config: &Config, source: Source, shutdown: Shutdown) -> Result<Serving, ServeError> {
    let mut signals = SignalHandles::default();
    signals.0.push(shutdown.on_signals().map_err(ServeError::StopSignals)?);
    info!(version = env!("CARGO_PKG_VERSION"), "tern starting");
    log_mode(config);
    if config.turn_enabled() {
        warn_about_ephemeral_overlap(config.relay_ports);
        raise_fd_limit(config);
    }
    if config.user.is_none() && process::running_as_root() {
        warn!("running as root: set `user` (or --run-as-user) to drop privileges once listening");
    }
    let local_addresses = interfaces::local_addresses().map_err(ServeError::LocalAddresses)?;
    // Caught before anything listens: once "listening" is logged, SIGHUP
    // must not hit its default action, which would end tern.
    let install =
        |signal, name| Signals::new([signal]).map_err(|source| ServeError::InstallSignal { signal: name, source });
    let hangups = install(SIGHUP, "SIGHUP")?;
    let drain_requests = install(SIGUSR1, "SIGUSR1")?;
    // Bound before `start` drops privileges, served once the workers run.
    let bind = |addr: Option<SocketAddr>, key| match addr {
        Some(addr) => std::net::TcpListener::bind(addr).map(Some).map_err(|source| ServeError::ControlListen {
            addr,
            key,
            source,
        }),
        None => Ok(None),
    };
    let mut listeners = control::Listeners {
        metrics: bind(config.metrics.listen, "metrics.listen")?,
        admin: bind(config.admin.listen, "admin.listen")?,
        admin_tls: None,
    };
    let started = (clock::now(), clock::unix_secs());
    let nonce_key = rand::random();
    let running = start(&config.runtime(nonce_key, &local_addresses), &shutdown)?;
    if config.admin.tls {
        listeners.admin_tls = running.reloader().tls().cloned();
    }
    let control = Arc::new(Control {
        reload: Reload {
            source,
            running: Mutex::new(config.clone()),
            nonce_key,
            local_addresses,
            reloader: running.reloader(),
        },
        shutdown,
        metrics: running.metrics(),
        drain_started: AtomicBool::new(false),
        drain_deadline: Mutex::new(None),
        systemd: systemd::Systemd::new(running.metrics()),
    });
    let mut serving = Serving { running, control, control_plane: None, signals };
    if let Err(e) =
        serving.run_extras(listeners, started, (&config.realm, config.store().cloned()), hangups, drain_requests)
    {
        serving.stop();
        // The start error is the one to report; the workers only stopped.
        let _ = serving.running.join();
        return Err(e);
    }
    Ok(serving)
}

impl Serving {
    /// Starts what runs beside the workers: the control plane, the signal
    /// threads and the systemd notifier.
    fn run_extras(
        &mut self,
        listeners: control::Listeners,
        (started, started_unix): (Instant, u64),
        (realm, store): (&str, Option<StoreSettings>),
        hangups: Signals,
        drain_requests: Signals,
    ) -> Result<(), ServeError> {
        if listeners.metrics.is_some() || listeners.admin.is_some() || store.is_some() {
            let context = control::Context {
                workers: self.running.workers(),
                metrics: self.running.metrics(),
                lifecycle: Arc::new(ControlPlaneView(Arc::clone(&self.control))),
                realm: realm.to_owned(),
                started,
                started_unix,
                store,
            };
            self.control_plane = Some(ControlPlane::start(context, listeners)?);
        }
        let thread = |signal| move |source| ServeError::SignalThread { signal, source };
        let reload = Arc::clone(&self.control);
        let reload_on_signal = move || {
            // The outcome is logged.
            let _ = reload.reload();
        };
        self.signals.0.push(on_signal("tern-reload", hangups, reload_on_signal).map_err(thread("SIGHUP"))?);
        let drain = Arc::clone(&self.control);
        let drain_on_signal = move || {
            drain.drain(drain.reload.drain_timeout());
        };
        self.signals.0.push(on_signal("tern-drain", drain_requests, drain_on_signal).map_err(thread("SIGUSR1"))?);
        let liveness = Arc::clone(&self.running.shared().liveness);
        systemd::hold_worker_for_tests(&liveness).map_err(ServeError::TestHook)?;
        let shutdown = self.control.shutdown.clone();
        self.control.systemd.start(liveness, shutdown).map_err(ServeError::SystemdThread)
    }

    /// The addresses listened on, with port 0 resolved.
    pub fn listening(&self) -> &[(Transport, SocketAddr)] {
        self.running.listening()
    }

    /// Where metrics are served, when they are.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.control_plane.as_ref().and_then(|plane| plane.metrics_addr)
    }

    /// Where the admin API is served, when it is.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.control_plane.as_ref().and_then(|plane| plane.admin_addr)
    }

    /// What a metrics scrape reads.
    pub fn metrics(&self) -> MetricsSource {
        self.running.metrics()
    }

    /// What SIGHUP does: reads the configuration and the TLS certificate
    /// again (see `Control::reload`).
    pub fn reload(&self) -> Result<api::Reloaded, String> {
        self.control.reload()
    }

    /// What SIGUSR1 does, with `deadline` in place of `drain_timeout`:
    /// drains, then stops once no allocation is left, or once `deadline`
    /// has passed, ending what is left (see `Control::drain`). `None` waits
    /// for the last allocation, however long it lasts.
    pub fn drain(&self, deadline: Option<Duration>) {
        self.control.drain(deadline);
    }

    /// What SIGTERM does: stops the workers; [`Serving::join`] waits for them.
    pub fn stop(&self) {
        self.control.shutdown.trigger();
    }

    /// Waits for the workers to stop, then logs and returns what they did.
    pub fn join(self) -> Result<WorkerReport, ServeError> {
        let report = self.running.join();
        drop(self.control_plane);
        self.control.systemd.stopping();
        let report = report.map_err(ServeError::Failed)?;
        drop(self.signals);
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
            proxy_headers = report.io.proxy_headers,
            proxy_untrusted = report.io.proxy_untrusted,
            proxy_missing = report.io.proxy_missing,
            proxy_malformed = report.io.proxy_malformed,
            proxy_closed = report.io.proxy_closed,
            proxy_timeouts = report.io.proxy_timeouts,
            over_bandwidth = report.server.over_bandwidth,
            icmp_relayed = report.server.icmp_relayed,
            tcp_relayed_bytes = report.server.tcp_relayed_bytes,
            "tern stopped"
        );
        Ok(report)
    }
}

impl Control {
    /// SIGHUP (`systemctl reload`) reads the configuration and the TLS
    /// certificate and key again.
    ///
    /// Configuration: the file is read and checked as at start (with the
    /// same command-line flags over it). A valid one is put in force as a
    /// new generation: every worker takes it on its next loop turn, for
    /// what comes next (`Server::replace_config` says what applies to
    /// what), without cutting calls. A restart-only setting it changes
    /// (see `config::RESTART_ONLY`) is named in a warning and keeps its
    /// running value. Users and secrets keep their checks: a file with none
    /// left, or with another realm, leaves the running ones in place. A
    /// file that does not load changes nothing, and is counted.
    ///
    /// TLS: new handshakes use the new pair, established connections keep
    /// theirs, and a pair that does not load leaves the old one in place.
    fn reload(&self) -> Result<api::Reloaded, String> {
        let _reloading = self.systemd.reloading();
        let reloaded = self.reload.configuration();
        match self.reload.reloader.tls() {
            None => info!("reload: no TLS certificate configured"),
            Some(store) => {
                let (cert, key) = store.files();
                match store.reload() {
                    Ok(()) => info!(cert = %cert.display(), key = %key.display(), "tls certificate reloaded"),
                    Err(e) => error!(error = %e, "tls certificate reload failed; keeping the previous certificate"),
                }
            }
        }
        reloaded
    }

    /// SIGUSR1 drains the server, for a restart that cuts no call: new
    /// allocations go to the alternate servers (or get 508), existing ones
    /// carry on, and tern stops as on SIGTERM once the last one has ended
    /// (SIGTERM still stops it at any time). With a `deadline`, tern stops
    /// when it passes too: the allocations left are deleted, and their
    /// clients are no longer served. A second request can only bring the
    /// deadline forward.
    /// Returns what is left of the deadline the drain runs with.
    fn drain(self: &Arc<Self>, deadline: Option<Duration>) -> Option<Duration> {
        const CHECK_EVERY: Duration = Duration::from_secs(1);
        let now = clock::now();
        if let Some(deadline) = deadline {
            let at = now + deadline;
            let mut current = self.drain_deadline();
            if current.is_none_or(|current| at < current) {
                *current = Some(at);
            }
        }
        let in_force = self.drain_deadline().map(|at| at.saturating_duration_since(now));
        if self.drain_started.swap(true, Ordering::AcqRel) {
            return in_force;
        }
        self.shutdown.drain();
        info!(
            allocations = self.metrics.allocations(),
            deadline = ?deadline,
            "draining: no new allocations; tern stops once the last one ends"
        );
        let control = Arc::clone(self);
        let watch = std::thread::Builder::new().name("tern-drained".into()).spawn(move || {
            while !control.shutdown.is_requested() {
                let allocations = control.metrics.allocations();
                if allocations == 0 {
                    info!("drained: no allocation left");
                    control.shutdown.trigger();
                    break;
                }
                let now = clock::now();
                let deadline = *control.drain_deadline();
                if deadline.is_some_and(|at| now >= at) {
                    warn!(allocations, "drain deadline passed: ending the allocations left");
                    control.shutdown.trigger();
                    break;
                }
                std::thread::sleep(deadline.map_or(CHECK_EVERY, |at| CHECK_EVERY.min(at - now)));
            }
        });
        if let Err(e) = watch {
            error!(error = %e, "cannot watch the drain; tern stops on SIGTERM only");
        }
        in_force
    }

    fn drain_deadline(&self) -> MutexGuard<'_, Option<Instant>> {
        // An instant is whole even if its writer panicked.
        self.drain_deadline.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The process as the control plane sees it.
struct ControlPlaneView(Arc<Control>);

impl Lifecycle for ControlPlaneView {
    fn reload(&self) -> Result<api::Reloaded, String> {
        self.0.reload()
    }

    fn drain(&self, deadline: Option<Duration>) -> Option<Duration> {
        self.0.drain(deadline.or_else(|| self.0.reload.drain_timeout()))
    }

    fn set_log_level(&self, level: LogLevel) {
        let log = crate::config::LogConfig { level, ..self.0.reload.running().log };
        if telemetry::reload(&log) == LogReload::RustLogDecides {
            info!("RUST_LOG is set: it decides what is logged, over the level asked for");
        }
    }

    fn admin_token(&self) -> Option<AdminToken> {
        self.0.reload.running().admin_token().cloned()
    }
}

impl Reload {
    /// `drain_timeout` as in force: the deadline SIGUSR1 gives a drain
    /// (one that started keeps its own).
    fn drain_timeout(&self) -> Option<Duration> {
        self.running().drain_timeout.map(|seconds| Duration::from_secs(u64::from(seconds.get())))
    }

    /// Reads the configuration again and puts it in force; its generation
    /// and the changes that need a restart, or why it did not load.
    fn configuration(&self) -> Result<api::Reloaded, String> {
        let file = self.source.to_string();
        let mut running = self.running();
        let reloaded = match self.source.load().and_then(|fresh| running.reloaded(fresh, &file)) {
            Ok(reloaded) => reloaded,
            Err(e) => {
                let status = self.reloader.reload_failed();
                error!(
                    error = %e,
                    generation = status.generation,
                    failures = status.failures,
                    "configuration reload failed; keeping the running configuration"
                );
                return Err(e.to_string());
            }
        };
        for key in &reloaded.needs_restart {
            warn!(key, file = %file, "this setting changed but takes a restart; keeping its running value");
        }
        let config = &reloaded.config;
        match reloaded.credentials {
            Credentials::Replaced => {
                let (users, secrets) = (config.auth.users.len(), config.auth.secrets.len());
                info!(file = %file, users, secrets, "credentials reloaded");
            }
            Credentials::KeptRealmChanged => error!(
                running = %config.realm,
                "the realm changed (it is in every key); keeping the current users and secrets until a restart"
            ),
            Credentials::KeptNoneLeft => {
                error!("the reloaded configuration has no auth.users or auth.secrets; keeping the current ones");
            }
            Credentials::NotUsed => {}
        }
        let generation = self.reloader.reload(&config.runtime(self.nonce_key, &self.local_addresses));
        if telemetry::reload(&config.log) == LogReload::RustLogDecides {
            info!("RUST_LOG is set: it decides what is logged, over [log] level and allocations");
        }
        info!(file = %file, generation, "configuration reloaded");
        *running = reloaded.config;
        Ok(api::Reloaded { generation, needs_restart: reloaded.needs_restart.iter().map(|&k| k.to_owned()).collect() })
    }

    fn running(&self) -> MutexGuard<'_, Config> {
        // A configuration is whole even if a reload panicked.
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Runs `action` on a thread of its own each time one of `signals` arrives.
/// A signal that arrives before the thread runs is queued in `signals`.
fn on_signal(name: &str, mut signals: Signals, action: impl Fn() + Send + 'static) -> std::io::Result<Handle> {
    let handle = signals.handle();
    std::thread::Builder::new().name(name.into()).spawn(move || {
        for _ in signals.forever() {
            action();
        }
    })?;
    Ok(handle)
}

/// Says what tern serves when that is not plain from the configuration.
fn log_mode(config: &Config) {
    if config.turn_enabled() {
        if config.auth.allow_anonymous {
            warn!("TURN relays for anyone: allow_anonymous = true and no credentials are configured");
        }
    } else if config.turn.is_none() {
        info!("serving STUN only: no TURN credentials configured ([auth] users or secrets)");
    }
}

/// A relay socket per allocation: the open-file limit is raised as far as
/// the process may, with a warning when it still cannot cover the relay
/// ports.
fn raise_fd_limit(config: &Config) {
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
