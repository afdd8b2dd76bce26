//! systemd's service protocol (sd_notify(3)) for `tern serve`, through the
//! `sd-notify` crate: `READY=1` once every listener is bound and every
//! worker has finished a first loop turn, `STATUS=` with the state and the
//! allocations, `RELOADING=1` (with `MONOTONIC_USEC`) and `READY=1` around a
//! reload, `STOPPING=1` when a drain or a stop starts, and `WATCHDOG=1` only
//! while every worker loop still turns (see `crate::io::liveness`).
//!
//! One thread (`tern-systemd`) sends what is periodic (status, watchdog)
//! and follows the shutdown flags, which wake it through a waker of its own
//! registered with [`Shutdown`]; a reload sends its two messages from the
//! reload thread itself, so they frame the reload exactly. Each change of
//! state is sent under the lock that guards the state, so systemd never
//! reads an old state after a new one.
//!
//! Nothing here runs when `NOTIFY_SOCKET` is unset (tern was not started by
//! systemd as `Type=notify`), and no ping is sent unless systemd set
//! `WATCHDOG_USEC` for this process.
//!
//! A drain tells systemd `STOPPING=1`, and systemd then allows the process
//! `TimeoutStopSec` to exit; a drain lasts as long as its allocations, so
//! every status refresh while draining extends that timeout
//! (`EXTEND_TIMEOUT_USEC`, systemd 236 and later), as long as the workers
//! still turn.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use mio::{Events, Poll, Token, Waker};
use sd_notify::NotifyState;
use tracing::{debug, error, info, warn};

use crate::io::MetricsSource;
use crate::io::clock;
use crate::io::liveness::Liveness;
use crate::io::shutdown::Shutdown;

/// How often `STATUS=` is refreshed: often enough that `systemctl status`
/// shows a recent allocation count, rarely enough to cost nothing.
const STATUS_EVERY: Duration = Duration::from_secs(5);
/// While draining, how long systemd should wait for the next message before
/// it may stop tern: a few status refreshes, so one late refresh is no harm.
const DRAIN_EXTENSION: Duration = Duration::from_secs(3 * STATUS_EVERY.as_secs());
/// How often the readiness check looks at the workers' first loop turns.
const FIRST_TURN_CHECK: Duration = Duration::from_millis(10);
/// The test-only hook that holds a worker still (see [`hold_worker_for_tests`]).
const HOLD_WORKER_VARIABLE: &str = "TERN_TEST_HOLD_WORKER";

/// Where `tern serve` stands, as systemd is told.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// `READY=1` not sent yet.
    Starting,
    Serving,
    Reloading,
    Draining,
    Stopping,
}

impl Phase {
    fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Serving => "serving",
            Self::Reloading => "reloading",
            Self::Draining => "draining",
            Self::Stopping => "stopping",
        }
    }
}

/// What tern tells systemd, shared by the lifecycle and the `tern-systemd`
/// thread.
pub(super) struct Systemd {
    /// `NOTIFY_SOCKET` is set.
    enabled: bool,
    phase: Mutex<Phase>,
    metrics: MetricsSource,
    /// The last message could not be sent: the next failure is logged at
    /// debug only, so a vanished socket does not flood the log.
    failing: AtomicBool,
}

/// Sends `READY=1` when dropped, ending the reload that
/// [`Systemd::reloading`] announced.
pub(super) struct Reloading<'a>(&'a Systemd);

impl Drop for Reloading<'_> {
    fn drop(&mut self) {
        self.0.reloaded();
    }
}

impl Systemd {
    pub fn new(metrics: MetricsSource) -> Arc<Self> {
        Arc::new(Self {
            enabled: std::env::var_os("NOTIFY_SOCKET").is_some(),
            phase: Mutex::new(Phase::Starting),
            metrics,
            failing: AtomicBool::new(false),
        })
    }

    /// Starts the `tern-systemd` thread, which sends `READY=1` once every
    /// worker has turned its loop, then keeps the status and the watchdog.
    pub fn start(self: &Arc<Self>, liveness: Arc<Liveness>, shutdown: Shutdown) -> std::io::Result<()> {
        if !self.enabled {
            return Ok(());
        }
        let watchdog = sd_notify::watchdog_enabled().filter(|timeout| !timeout.is_zero());
        let poll = Poll::new()?;
        shutdown.register(Arc::new(Waker::new(poll.registry(), Token(0))?));
        let systemd = Arc::clone(self);
        std::thread::Builder::new()
            .name("tern-systemd".into())
            .spawn(move || systemd.run(poll, &liveness, &shutdown, watchdog))?;
        Ok(())
    }

    /// Announces a reload (`RELOADING=1`); the returned guard says it is
    /// over (`READY=1`) when dropped. Only a serving tern reloads in
    /// systemd's eyes: before `READY=1`, or once stopping, nothing is sent.
    pub fn reloading(&self) -> Reloading<'_> {
        let mut phase = self.phase();
        if *phase == Phase::Serving {
            *phase = Phase::Reloading;
            match NotifyState::monotonic_usec_now() {
                Ok(now) => self.send(&[NotifyState::Reloading, now, self.status(Phase::Reloading).as_state()]),
                // Newer systemd rejects RELOADING=1 without MONOTONIC_USEC.
                Err(e) => warn!(error = %e, "cannot read CLOCK_MONOTONIC; not telling systemd about the reload"),
            }
        }
        Reloading(self)
    }

    fn reloaded(&self) {
        let mut phase = self.phase();
        if *phase == Phase::Reloading {
            *phase = Phase::Serving;
            self.send(&[NotifyState::Ready, self.status(Phase::Serving).as_state()]);
        }
    }

    /// Says `STOPPING=1`, unless it was said for the stop already: the
    /// process may exit before the `tern-systemd` thread gets to it.
    pub fn stopping(&self) {
        self.wind_down(Phase::Stopping, None);
    }

    /// Says `STOPPING=1` for a drain, which asks systemd for time while the
    /// workers turn (`alive`).
    fn draining(&self, alive: bool) {
        self.wind_down(Phase::Draining, alive.then(drain_extension));
    }

    fn run(&self, mut poll: Poll, liveness: &Liveness, shutdown: &Shutdown, watchdog: Option<Duration>) {
        let mut events = Events::with_capacity(4);
        let mut wait = |until: Instant| {
            let timeout = until.saturating_duration_since(clock::now());
            if let Err(e) = poll.poll(&mut events, Some(timeout))
                && e.kind() != std::io::ErrorKind::Interrupted
            {
                // Without its poll the thread would spin: sleep instead.
                debug!(error = %e, "systemd notifier poll failed");
                std::thread::sleep(timeout);
            }
        };
        liveness.wake_all();
        let started = vec![0; liveness.workers()];
        while liveness.turned_since(&started).is_err() {
            if shutdown.is_requested() {
                self.stopping();
                return;
            }
            wait(clock::now() + FIRST_TURN_CHECK);
        }
        self.ready();
        let probe_every = watchdog.map(|timeout| timeout / 2);
        if let Some(timeout) = watchdog {
            info!(timeout = ?timeout, "systemd watchdog on: pinging while every worker loop turns");
        }
        let mut probe = Probe { last: liveness.heartbeats(), stalled: None };
        liveness.wake_all();
        let now = clock::now();
        let mut next_probe = probe_every.map(|every| now + every);
        let mut next_status = now + STATUS_EVERY;
        loop {
            if shutdown.is_requested() {
                self.stopping();
                return;
            }
            if shutdown.is_draining() {
                self.draining(probe.stalled.is_none());
            }
            wait(next_probe.map_or(next_status, |at| at.min(next_status)));
            let now = clock::now();
            if let (Some(at), Some(every)) = (next_probe, probe_every)
                && now >= at
            {
                if probe.run(liveness) {
                    self.send(&[NotifyState::Watchdog]);
                }
                next_probe = Some(now + every);
            }
            if now >= next_status {
                self.refresh_status(probe.stalled.is_none());
                next_status = now + STATUS_EVERY;
            }
        }
    }

    fn ready(&self) {
        let mut phase = self.phase();
        if *phase == Phase::Starting {
            *phase = Phase::Serving;
            self.send(&[NotifyState::Ready, self.status(Phase::Serving).as_state()]);
        }
    }

    /// Moves to `Draining` or `Stopping` with `STOPPING=1`, and asks for
    /// `extension` microseconds more when given.
    fn wind_down(&self, next: Phase, extension: Option<u32>) {
        let mut phase = self.phase();
        if *phase == next || *phase == Phase::Stopping {
            return;
        }
        *phase = next;
        let status = self.status(next);
        let mut states = vec![NotifyState::Stopping, status.as_state()];
        states.extend(extension.map(NotifyState::ExtendTimeoutUsec));
        self.send(&states);
    }

    fn refresh_status(&self, alive: bool) {
        let phase = self.phase();
        if *phase == Phase::Starting {
            return;
        }
        let status = self.status(*phase);
        if *phase == Phase::Draining && alive {
            self.send(&[status.as_state(), NotifyState::ExtendTimeoutUsec(drain_extension())]);
        } else {
            self.send(&[status.as_state()]);
        }
    }

    fn status(&self, phase: Phase) -> Status {
        let allocations = self.metrics.allocations();
        Status(match phase {
            Phase::Stopping => "stopping".to_owned(),
            Phase::Draining => format!("draining; allocations left: {allocations}"),
            _ => format!("{}; allocations: {allocations}", phase.as_str()),
        })
    }

    fn send(&self, states: &[NotifyState]) {
        if !self.enabled {
            return;
        }
        let text: Vec<String> = states.iter().map(ToString::to_string).collect();
        match sd_notify::notify(states) {
            Ok(()) => {
                self.failing.store(false, Ordering::Relaxed);
                debug!(message = %text.join(" "), "told systemd");
            }
            Err(e) if self.failing.swap(true, Ordering::Relaxed) => {
                debug!(error = %e, message = %text.join(" "), "cannot notify systemd");
            }
            Err(e) => warn!(error = %e, message = %text.join(" "), "cannot notify systemd (NOTIFY_SOCKET)"),
        }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // The phase is one value, whole even if a sender panicked.
        self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A `STATUS=` text.
struct Status(String);

impl Status {
    fn as_state(&self) -> NotifyState<'_> {
        NotifyState::Status(&self.0)
    }
}

fn drain_extension() -> u32 {
    u32::try_from(DRAIN_EXTENSION.as_micros()).expect("the drain extension fits in u32 microseconds")
}

/// The watchdog's probe of the workers (see `crate::io::liveness`).
struct Probe {
    /// The heartbeats as the previous probe read them, before it woke
    /// every worker.
    last: Vec<u64>,
    /// The worker found stalled by the previous probe, if one was.
    stalled: Option<usize>,
}

impl Probe {
    /// Whether every worker turned its loop since the previous probe; then
    /// wakes them all for the next. Logs when a worker stalls and when all
    /// run again.
    fn run(&mut self, liveness: &Liveness) -> bool {
        let result = liveness.turned_since(&self.last);
        match (result, self.stalled) {
            (Ok(()), Some(worker)) => info!(worker, "every worker loop turns again; watchdog pings resume"),
            (Err(worker), None) => error!(
                worker,
                "a worker has not finished a loop turn since the last watchdog probe; no ping, so systemd \
                 restarts tern if this lasts"
            ),
            _ => {}
        }
        self.stalled = result.err();
        self.last = liveness.heartbeats();
        liveness.wake_all();
        self.stalled.is_none()
    }
}

/// TEST ONLY. With `TERN_TEST_HOLD_WORKER=WORKER:DELAY` (e.g. `0:3s`) in the
/// environment, worker WORKER stops turning its loop DELAY after start, as a
/// wedged worker would, so the tests can watch the watchdog pings stop. The
/// variable is named for what it does, appears in no help text, and nothing
/// but the tests sets it.
pub(super) fn hold_worker_for_tests(liveness: &Liveness) -> Result<(), String> {
    let Some(value) = std::env::var_os(HOLD_WORKER_VARIABLE) else { return Ok(()) };
    let invalid = |why: &str| format!("{HOLD_WORKER_VARIABLE}={value:?} (a test hook): {why}");
    let text = value.to_str().ok_or_else(|| invalid("not UTF-8"))?;
    let (worker, delay) = text.split_once(':').ok_or_else(|| invalid("expected WORKER:DELAY, e.g. 0:3s"))?;
    let worker: usize = worker.parse().map_err(|_| invalid("WORKER is not a number"))?;
    if worker >= liveness.workers() {
        return Err(invalid("no such worker"));
    }
    let delay = humantime::parse_duration(delay).map_err(|e| invalid(&e.to_string()))?;
    warn!(worker, delay = ?delay, "test hook {HOLD_WORKER_VARIABLE}: this worker will be held still");
    liveness.hold(worker, clock::now() + delay);
    Ok(())
}
