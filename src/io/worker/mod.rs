//! One worker: a single-threaded event loop that owns its share of the listen
//! sockets, its TCP and TLS connections, the relay sockets of its allocations
//! and its [`Server`], and drives the core with bytes and time.
//!
//! After every input the worker drains the core's outputs: it acts on each
//! [`Event`] (opening and closing relay sockets, connecting peers) and
//! reports back, and sends each [`Transmit`] to its client. It sleeps until
//! the earliest of the core's next deadline, its own (idle connections, TLS
//! handshakes, paced RFC 6062 pairs, publishing counters) or a ready socket:
//! an idle relay does no work however many allocations it holds.
//!
//! A TLS connection is a TCP connection with a rustls state machine between
//! the socket and the framing; it shares the connection table, the caps per
//! source IP and in all, and the idle timeout with plain TCP. On top, a
//! worker caps the handshakes in progress and closes connections whose
//! handshake takes too long, so half-open handshakes cannot pile up.
//!
//! The loop is a plain `mio` poll rather than an async runtime: a ready socket
//! is served directly, with no task to wake, and a batch of datagrams read in
//! one `recvmmsg` is answered in one `sendmmsg` per destination socket.
//! Readiness is edge-triggered, so a socket that still has data when its
//! budget runs out goes on a pending list and is served again on the next
//! turn, after everyone else.
//!
//! This file is the loop and the core's outputs; `datagrams.rs` serves the
//! UDP listeners and relay sockets, `connections.rs` the TCP and TLS
//! clients, `proxied.rs` the PROXY headers that come first on some of them,
//! and `splice.rs` RFC 6062's relay listeners and data connections.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll};
use slab::Slab;
use tracing::{debug, info_span, warn};

use super::clock;
use super::commands::{Command, Lookup, StoreUpdate};
use super::listener::WorkerListeners;
use super::out::{OutQueue, Via};
use super::proxy::ProxyListeners;
use super::relay::UdpRelays;
use super::report::{IoStats, WorkerReport};
use super::shared::{Shared, SharedAccounts};
use super::shutdown::Shutdown;
use super::sys::batch::RecvBatch;
use super::sys::sockopt;
use super::tcp::{TcpConnection, WRITE_QUEUE_LIMIT};
use super::tcp_relay::TcpRelays;
use super::tls::TlsAcceptor;
use super::token::Source;
use crate::proto::allocation::{ClientHandle, RelayId};
use crate::proto::server::{Event, PEER_HEADROOM, PEER_TAILROOM, RelayOpenError, RelayProtocol, Server, ServerConfig};
use crate::proto::{FiveTuple, Now, Transport};

/// Receive slots are large enough for any UDP datagram.
const UDP_SLOT: usize = 65536;
/// `recvmmsg` batches taken from one socket per wake-up before the others get
/// a turn (quinn bounds its loop the same way).
const BATCHES_PER_WAKE: usize = 8;
/// Connections accepted per listener per wake-up.
const ACCEPTS_PER_WAKE: usize = 64;
/// How long counters may go unpublished after they change: metrics are at
/// most this old, and an idle worker publishes nothing.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);
/// How soon an RFC 6062 pair waiting for its `max_bps` budget is pumped
/// again: short enough that a paced stream flows smoothly, long enough that
/// a throttled pair costs little.
const THROTTLE_RETRY: Duration = Duration::from_millis(25);
/// A TCP connection without an allocation that sends nothing for this long
/// is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Marks a [`ClientHandle`] as a TCP connection rather than a UDP listener.
const HANDLE_TCP: u64 = 1 << 63;

mod connections;
mod datagrams;
mod proxied;
mod splice;

/// Where frames for clients go: a client's TCP connection, or the UDP
/// listener it talks to. Borrows the worker's fields one by one, so a frame
/// may still borrow the receive batch it was built in.
struct Delivery<'a> {
    udp: &'a [(mio::net::UdpSocket, SocketAddr)],
    connections: &'a mut Slab<TcpConnection>,
    dirty: &'a mut Vec<usize>,
    out: &'a mut OutQueue,
    stats: &'a mut IoStats,
}

impl Delivery<'_> {
    fn send(&mut self, client: ClientHandle, tuple: &FiveTuple, frame: &[u8]) {
        if client.0 & HANDLE_TCP != 0 {
            let key = (client.0 & !HANDLE_TCP) as usize;
            let Some(connection) = self.connections.get_mut(key) else { return };
            if connection.queued() > WRITE_QUEUE_LIMIT {
                self.stats.tcp_queue_drops += 1;
                return;
            }
            connection.outbuf.extend_from_slice(frame);
            if !self.dirty.contains(&key) {
                self.dirty.push(key);
            }
        } else {
            let listener = client.0 as usize;
            let source_ip =
                self.udp.get(listener).and_then(|(_, bound)| bound.ip().is_unspecified().then(|| tuple.server.ip()));
            self.out.push(Via::Listener(listener), tuple.client, source_ip, frame);
        }
    }
}

/// A worker's TLS settings.
pub struct WorkerTls {
    pub acceptor: TlsAcceptor,
    pub max_handshakes: usize,
    pub handshake_timeout: Duration,
}

/// A worker ready to run on its own thread.
pub struct Worker {
    id: usize,
    poll: Poll,
    server: Server,
    shared: Arc<Shared>,
    udp: Vec<(mio::net::UdpSocket, SocketAddr)>,
    tcp_listeners: Vec<(mio::net::TcpListener, SocketAddr)>,
    tls_listeners: Vec<(mio::net::TcpListener, SocketAddr)>,
    tls: Option<WorkerTls>,
    /// Which stream listeners speak the PROXY protocol, when any do.
    proxy: Option<ProxyListeners>,
    /// TLS connections of this worker still in their handshake.
    handshaking: usize,
    connections: Slab<TcpConnection>,
    /// When each connection's idle or handshake deadline is checked next;
    /// an entry counts only while it matches its connection's `timer`.
    connection_timers: BinaryHeap<Reverse<(Instant, usize)>>,
    relays: UdpRelays,
    /// RFC 6062 listeners and peer/client data connection pairs.
    tcp_relays: TcpRelays,
    client_batch: RecvBatch,
    peer_batch: RecvBatch,
    /// UDP datagrams to send at the end of the loop turn.
    out: OutQueue,
    /// TCP connections with relayed data to write at the end of the turn.
    dirty_connections: Vec<usize>,
    pending: Vec<Source>,
    /// RFC 6062 pairs waiting for bandwidth budget, pumped again at
    /// `next_throttle`.
    throttled: Vec<Source>,
    next_throttle: Instant,
    /// The generation of the configuration this worker runs.
    config_generation: u64,
    /// Relay sockets with ICMP errors queued, to read this turn.
    icmp_pending: Vec<RelayId>,
    /// A message the core wrote for later, on its way to its client.
    transmit: Vec<u8>,
    /// When the counters changed since they were last published are due.
    publish_at: Option<Instant>,
    last_published: Instant,
    shutdown: Shutdown,
    stats: IoStats,
}

impl Worker {
    pub fn new(
        id: usize,
        listeners: WorkerListeners,
        config: ServerConfig,
        shared: Arc<Shared>,
        shutdown: Shutdown,
        tls: Option<WorkerTls>,
        seed: [u8; 32],
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), Source::Waker.token())?);
        shared.handoffs.register(id, waker.clone());
        shared.liveness.register(id, waker.clone());
        shared.commands.register(id, waker.clone());
        shutdown.register(waker);
        let WorkerListeners { mut udp, mut tcp, tls: mut tls_listeners, proxy } = listeners;
        for (index, (socket, _)) in udp.iter_mut().enumerate() {
            poll.registry().register(socket, Source::Udp(index).token(), Interest::READABLE)?;
        }
        for (index, (listener, _)) in tcp.iter_mut().enumerate() {
            poll.registry().register(listener, Source::TcpListener(index).token(), Interest::READABLE)?;
        }
        for (index, (listener, _)) in tls_listeners.iter_mut().enumerate() {
            poll.registry().register(listener, Source::TlsListener(index).token(), Interest::READABLE)?;
        }
        let gso = udp.first().is_some_and(|(socket, _)| sockopt::gso_supported(socket.as_raw_fd()));
        let resources: SharedAccounts = shared.accounts.clone();
        let mut server = Server::new(config, Box::new(resources), seed);
        server.set_worker(id, shared.handoffs.workers());
        let config_generation = shared.config_generation();
        let now = clock::now();
        Ok(Self {
            id,
            poll,
            server,
            shared,
            udp,
            tcp_listeners: tcp,
            tls_listeners,
            tls,
            proxy,
            handshaking: 0,
            connections: Slab::new(),
            connection_timers: BinaryHeap::new(),
            relays: UdpRelays::default(),
            tcp_relays: TcpRelays::default(),
            client_batch: RecvBatch::new(UDP_SLOT, 0),
            peer_batch: RecvBatch::new(PEER_HEADROOM + UDP_SLOT + PEER_TAILROOM, PEER_HEADROOM),
            out: OutQueue::new(gso),
            dirty_connections: Vec::new(),
            pending: Vec::new(),
            throttled: Vec::new(),
            next_throttle: now,
            config_generation,
            icmp_pending: Vec::new(),
            transmit: Vec::new(),
            publish_at: None,
            last_published: now,
            shutdown,
            stats: IoStats::default(),
        })
    }

    /// Runs until shutdown is requested.
    pub fn run(mut self) -> io::Result<WorkerReport> {
        let span = info_span!("worker", id = self.id);
        let _entered = span.enter();
        let mut events = Events::with_capacity(1024);
        let mut ready = Vec::with_capacity(1024);
        while !self.shutdown.is_requested() {
            let timeout = if self.pending.is_empty() && self.icmp_pending.is_empty() {
                self.next_wake().map(|wake| wake.saturating_duration_since(clock::now()))
            } else {
                Some(Duration::ZERO)
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            ready.clear();
            ready.append(&mut self.pending);
            ready.extend(events.iter().filter_map(|event| Source::from_token(event.token())));
            // A relay socket with a queued ICMP error is reported as in
            // error (EPOLLERR); its error queue must be read, or it fills
            // the socket's receive budget.
            self.icmp_pending.extend(events.iter().filter(|event| event.is_error()).filter_map(|event| {
                match Source::from_token(event.token()) {
                    Some(Source::Relay(relay)) => Some(relay),
                    _ => None,
                }
            }));
            if self.shutdown.is_draining() && !self.server.is_draining() {
                self.server.start_draining();
                debug!("draining: no new allocations");
            }
            if self.shared.config_generation() != self.config_generation {
                self.take_config();
            }
            let now = clock::reading();
            if !self.throttled.is_empty() && now.instant >= self.next_throttle {
                // A pair may have been throttled again by an event meanwhile.
                self.throttled.sort_unstable();
                self.throttled.dedup();
                ready.append(&mut self.throttled);
            }
            for &source in &ready {
                self.dispatch(source, now);
                self.drive(now);
            }
            for relay in std::mem::take(&mut self.icmp_pending) {
                self.drain_icmp(relay, now);
                self.drive(now);
            }
            let due = self.server.poll_timeout().is_some_and(|due| due <= now.instant);
            if due {
                self.server.handle_timeout(now);
                self.drive(now);
            }
            self.expire_connections(now);
            if due || !ready.is_empty() {
                self.publish_at.get_or_insert(now.instant.max(self.last_published + PUBLISH_EVERY));
            }
            if self.publish_at.is_some_and(|at| at <= now.instant) {
                self.publish_at = None;
                self.last_published = now.instant;
                self.shared.publish(self.id, self.report());
            }
            self.flush();
            self.shared.liveness.turn_ended(self.id, now.instant, &self.shutdown);
        }
        self.server.close_all();
        self.drive(clock::reading());
        debug!(connections = self.connections.len(), "worker stopping");
        self.shared.publish(self.id, self.report());
        Ok(self.report())
    }

    /// Takes the configuration of the latest reload: the core's, for what
    /// comes next (see [`Server::replace_config`]), and the TLS limits, for
    /// the handshakes from now on.
    fn take_config(&mut self) {
        let Some(reloaded) = self.shared.config() else { return };
        self.config_generation = reloaded.generation;
        if !self.server.replace_config(reloaded.server.clone()) {
            warn!(
                generation = reloaded.generation,
                "the reloaded configuration changes whether tern relays or authenticates; keeping the running one"
            );
            return;
        }
        if let (Some(tls), Some(limits)) = (&mut self.tls, &reloaded.tls) {
            tls.max_handshakes = limits.max_handshakes;
            tls.handshake_timeout = limits.handshake_timeout;
        }
        debug!(generation = reloaded.generation, "configuration taken");
    }

    /// Answers what the control plane asked; the asker may have given up
    /// waiting, which leaves nothing to answer.
    fn take_commands(&mut self, now: Now) {
        for command in self.shared.commands.take(self.id) {
            match command {
                Command::Allocations { query, reply } => {
                    let _ = reply.send(self.server.allocations(now, &query));
                }
                Command::End { serial, reply } => {
                    let _ = reply.send(self.server.end_allocation(serial));
                }
                Command::Revoke { name, reply } => {
                    let _ = reply.send(self.server.revoke(&name));
                }
                Command::Unrevoke { name, reply } => {
                    let _ = reply.send(self.server.unrevoke(&name));
                }
            }
            self.drive(now);
        }
        let from_store = self.shared.commands.take_store(self.id);
        if let Some(secrets) = from_store.secrets {
            self.server.set_store_secrets(secrets);
        }
        for update in from_store.updates {
            match update {
                StoreUpdate::Looked { name, answer } => self.server.handle_user_lookup(now, &name, answer),
                StoreUpdate::Changed { name, answer } => self.server.handle_user_changed(now, &name, answer),
                StoreUpdate::Outdated => self.server.handle_store_outdated(),
            }
            self.drive(now);
        }
    }

    fn report(&self) -> WorkerReport {
        WorkerReport { server: *self.server.stats(), io: self.stats }
    }

    /// The earliest moment something is due; `None`: only sockets can wake
    /// the worker.
    fn next_wake(&self) -> Option<Instant> {
        let throttle = (!self.throttled.is_empty()).then_some(self.next_throttle);
        let connections = self.connection_timers.peek().map(|Reverse((at, _))| *at);
        [self.server.poll_timeout(), throttle, connections, self.publish_at].into_iter().flatten().min()
    }

    fn dispatch(&mut self, source: Source, now: Now) {
        match source {
            Source::Waker => {
                self.take_handoffs(now);
                self.take_commands(now);
            }
            Source::Udp(index) => self.drain_udp(index, now),
            Source::TcpListener(index) => self.accept(Transport::Tcp, index, now),
            Source::TlsListener(index) => self.accept(Transport::Tls, index, now),
            Source::Connection(key) => self.serve_connection(key, now),
            Source::Relay(relay) => self.drain_relay(relay, now),
            Source::TcpRelayListener(relay) => self.accept_peers(relay, now),
            Source::PeerSide(id) | Source::ClientSide(id) => self.serve_pair(id, source, now),
        }
    }

    /// Acts on what the core decided and sends what it wrote for later,
    /// until it has nothing left: an answer to an event (a relay socket
    /// opened) may bring more.
    fn drive(&mut self, now: Now) {
        loop {
            if let Some(event) = self.server.poll_event() {
                self.handle_event(event, now);
                continue;
            }
            let mut bytes = std::mem::take(&mut self.transmit);
            bytes.clear();
            let transmit = self.server.poll_transmit(&mut bytes);
            if let Some(transmit) = transmit {
                self.deliver(transmit.client, &transmit.tuple, &bytes);
            }
            self.transmit = bytes;
            if transmit.is_none() {
                return;
            }
        }
    }

    fn handle_event(&mut self, event: Event, now: Now) {
        let registry = self.poll.registry();
        match event {
            Event::OpenRelay { relay, addr, protocol, dont_fragment } => {
                let result = match protocol {
                    RelayProtocol::Udp => self.relays.open(registry, relay, addr, dont_fragment),
                    RelayProtocol::Tcp => self.tcp_relays.open_listener(registry, relay, addr).map_err(|e| {
                        if e.kind() == io::ErrorKind::AddrInUse {
                            // Another program listens there: the core tries the next port.
                            debug!(%addr, "TCP relay port in use elsewhere");
                            RelayOpenError::AddrInUse
                        } else {
                            warn!(%addr, error = %e, "cannot open TCP relay socket");
                            RelayOpenError::Unavailable
                        }
                    }),
                };
                self.server.handle_relay_opened(now, relay, result);
            }
            Event::CloseRelay { relay, addr } => {
                if !self.relays.close(registry, relay, addr) {
                    self.tcp_relays.close_listener(registry, relay, addr);
                }
            }
            Event::ConnectPeer { relay, connection, peer } => {
                if let Err(e) = self.tcp_relays.connect(registry, relay, connection, peer) {
                    debug!(%peer, error = %e, "TCP connection to peer failed at once");
                    self.server.handle_peer_connected(now, connection, false);
                }
            }
            Event::ClosePeer { connection } => {
                self.tcp_relays.close(registry, connection);
            }
            Event::LookupUser { realm, name } => {
                let lookup = Lookup { worker: self.id, realm, name: name.clone() };
                if !self.shared.commands.ask_store(lookup) {
                    self.server.handle_user_lookup(now, &name, None);
                }
            }
            // Observers (usage records, the admin API, a kernel fast path)
            // plug in here; the core has logged and counted these already.
            Event::AllocationCreated(_)
            | Event::AllocationRefreshed { .. }
            | Event::AllocationDeleted { .. }
            | Event::PermissionInstalled { .. }
            | Event::PermissionExpired { .. }
            | Event::ChannelBound { .. }
            | Event::ChannelExpired { .. } => {}
        }
    }

    /// Queues a frame the core built apart from any receive batch for its
    /// client. (A frame inside a batch borrows it, so `drain_relay` builds
    /// its [`Delivery`] field by field.)
    fn deliver(&mut self, client: ClientHandle, tuple: &FiveTuple, frame: &[u8]) {
        Delivery {
            udp: &self.udp,
            connections: &mut self.connections,
            dirty: &mut self.dirty_connections,
            out: &mut self.out,
            stats: &mut self.stats,
        }
        .send(client, tuple, frame);
    }

    /// Sends what the turn produced: queued datagrams, and relayed data for
    /// TCP clients.
    fn flush(&mut self) {
        if !self.out.is_empty() {
            let (udp, relays) = (&self.udp, &self.relays);
            let flushed = self.out.flush(|via| match via {
                Via::Listener(index) => udp.get(index).map(|(socket, _)| socket.as_raw_fd()),
                Via::Relay(id) => relays.fd(id),
            });
            self.stats.send_failures += flushed.failures;
        }
        for key in std::mem::take(&mut self.dirty_connections) {
            self.flush_connection(key);
        }
    }
}
