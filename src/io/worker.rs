//! One worker: a single-threaded event loop that owns its share of the listen
//! sockets, its TCP and TLS connections, the relay sockets of its allocations
//! and its [`Server`], and drives the core with bytes and time.
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

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use tracing::{debug, info_span, trace, warn};

use super::clock;
use super::listener::WorkerListeners;
use super::out::{OutQueue, Via};
use super::relay::{RelaySocket, Shared, WorkerDriver};
use super::shutdown::Shutdown;
use super::stream::Stream;
use super::sys::batch::{BATCH, RecvBatch};
use super::sys::{icmp, sockopt};
use super::tcp::{Closed, Next, ReadStatus, TcpConnection, WRITE_QUEUE_LIMIT};
use super::tcp_relay::{self, TcpRelays};
use super::tls::TlsAcceptor;
use crate::proto::allocation::{ClientHandle, RelayId};
use crate::proto::auth::StaticCredentials;
use crate::proto::server::{ClientOutcome, IcmpReport, PEER_HEADROOM, PEER_TAILROOM, Server, ServerConfig, Stats};
use crate::proto::{FiveTuple, Now, Transport};

/// Receive slots are large enough for any UDP datagram.
const UDP_SLOT: usize = 65536;
/// `recvmmsg` batches taken from one socket per wake-up before the others get
/// a turn (quinn bounds its loop the same way).
const BATCHES_PER_WAKE: usize = 8;
/// Connections accepted per listener per wake-up.
const ACCEPTS_PER_WAKE: usize = 64;
/// Housekeeping period: expiry sweeps and idle checks.
const TICK: Duration = Duration::from_secs(1);
/// How soon an RFC 6062 pair waiting for its `max_bps` budget is pumped
/// again: short enough that a paced stream flows smoothly, long enough that
/// a throttled pair costs little.
const THROTTLE_RETRY: Duration = Duration::from_millis(25);
/// A TCP connection without an allocation that sends nothing for this long
/// is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const WAKER: Token = Token(usize::MAX);
/// Tokens below this are listeners (UDP first, then TCP, then TLS).
const CONN_BASE: usize = 1 << 32;
/// Relay socket tokens: this plus the allocation id.
const RELAY_BASE: usize = 1 << 48;
/// Marks a [`ClientHandle`] as a TCP connection rather than a UDP listener.
const HANDLE_TCP: u64 = 1 << 63;

mod splice;

/// Counters the driver keeps beside the core's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams larger than a receive slot.
    pub truncated: u64,
    /// Datagrams the kernel refused to send (buffer full, unreachable).
    pub send_failures: u64,
    /// Relayed data dropped because a TCP client's queue was full.
    pub tcp_queue_drops: u64,
    pub tcp_accepted: u64,
    pub tcp_closed: u64,
    /// TCP connections closed at once: a connection limit was reached.
    pub tcp_refused: u64,
    /// Connections accepted on TLS listeners (also counted as TCP).
    pub tls_accepted: u64,
    /// TLS handshakes completed.
    pub tls_handshakes: u64,
    /// TLS connections closed before their handshake finished: a protocol
    /// error (no common ALPN, version or cipher suite, a bad record) or EOF.
    pub tls_handshake_failures: u64,
    /// TLS connections closed because the handshake took too long.
    pub tls_handshake_timeouts: u64,
    /// TLS connections closed at once: too many handshakes in progress.
    pub tls_refused: u64,
}

/// What a worker reports when it stops.
#[derive(Clone, Copy, Debug, Default)]
pub struct WorkerReport {
    pub server: Stats,
    pub io: IoStats,
}

impl WorkerReport {
    pub fn add(&mut self, other: &Self) {
        self.server.add(&other.server);
        self.io.truncated += other.io.truncated;
        self.io.send_failures += other.io.send_failures;
        self.io.tcp_queue_drops += other.io.tcp_queue_drops;
        self.io.tcp_accepted += other.io.tcp_accepted;
        self.io.tcp_closed += other.io.tcp_closed;
        self.io.tcp_refused += other.io.tcp_refused;
        self.io.tls_accepted += other.io.tls_accepted;
        self.io.tls_handshakes += other.io.tls_handshakes;
        self.io.tls_handshake_failures += other.io.tls_handshake_failures;
        self.io.tls_handshake_timeouts += other.io.tls_handshake_timeouts;
        self.io.tls_refused += other.io.tls_refused;
    }
}

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
    /// TLS connections of this worker still in their handshake.
    handshaking: usize,
    connections: Slab<TcpConnection>,
    relays: Vec<Option<RelaySocket>>,
    /// RFC 6062 listeners and peer/client data connection pairs.
    tcp_relays: TcpRelays,
    client_batch: RecvBatch,
    peer_batch: RecvBatch,
    /// UDP datagrams to send at the end of the loop turn.
    out: OutQueue,
    /// TCP connections with relayed data to write at the end of the turn.
    dirty_connections: Vec<usize>,
    pending: Vec<Token>,
    /// RFC 6062 pairs waiting for bandwidth budget, pumped again at
    /// `next_throttle`.
    throttled: Vec<Token>,
    next_throttle: Instant,
    /// The credential reloads this worker has taken in.
    credentials_generation: u64,
    /// Relay sockets with ICMP errors queued, to read this turn.
    icmp_pending: Vec<RelayId>,
    shutdown: Shutdown,
    stats: IoStats,
    next_tick: Instant,
}

impl Worker {
    pub fn new(
        id: usize,
        listeners: WorkerListeners,
        config: ServerConfig,
        shared: Arc<Shared>,
        shutdown: Shutdown,
        tls: Option<WorkerTls>,
    ) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        shared.handoffs.register(id, waker.clone());
        shutdown.register(waker);
        let WorkerListeners { mut udp, mut tcp, tls: mut tls_listeners } = listeners;
        for (index, (socket, _)) in udp.iter_mut().enumerate() {
            poll.registry().register(socket, Token(index), Interest::READABLE)?;
        }
        for (index, (listener, _)) in tcp.iter_mut().enumerate() {
            poll.registry().register(listener, Token(udp.len() + index), Interest::READABLE)?;
        }
        for (index, (listener, _)) in tls_listeners.iter_mut().enumerate() {
            poll.registry().register(listener, Token(udp.len() + tcp.len() + index), Interest::READABLE)?;
        }
        let gso = udp.first().is_some_and(|(socket, _)| sockopt::gso_supported(socket.as_raw_fd()));
        let mut server = Server::new(config);
        server.set_worker(id, shared.handoffs.workers());
        Ok(Self {
            id,
            poll,
            server,
            shared,
            udp,
            tcp_listeners: tcp,
            tls_listeners,
            tls,
            handshaking: 0,
            connections: Slab::new(),
            relays: Vec::new(),
            tcp_relays: TcpRelays::default(),
            client_batch: RecvBatch::new(UDP_SLOT, 0),
            peer_batch: RecvBatch::new(PEER_HEADROOM + UDP_SLOT + PEER_TAILROOM, PEER_HEADROOM),
            out: OutQueue::new(gso),
            dirty_connections: Vec::new(),
            pending: Vec::new(),
            throttled: Vec::new(),
            next_throttle: clock::now(),
            credentials_generation: 0,
            icmp_pending: Vec::new(),
            shutdown,
            stats: IoStats::default(),
            next_tick: clock::now() + TICK,
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
                let wake =
                    if self.throttled.is_empty() { self.next_tick } else { self.next_tick.min(self.next_throttle) };
                wake.saturating_duration_since(clock::now())
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            ready.clear();
            ready.append(&mut self.pending);
            ready.extend(events.iter().map(|event| event.token()));
            // A relay socket with a queued ICMP error is reported as in
            // error (EPOLLERR); its error queue must be read, or it fills
            // the socket's receive budget.
            self.icmp_pending.extend(
                events
                    .iter()
                    .filter(|event| event.is_error() && event.token().0 >= RELAY_BASE)
                    .map(|event| RelayId(event.token().0 - RELAY_BASE)),
            );
            if self.shutdown.is_draining() && !self.server.is_draining() {
                self.server.start_draining();
                debug!("draining: no new allocations");
            }
            let reloads = self.shared.credentials_generation();
            if reloads != self.credentials_generation {
                self.credentials_generation = reloads;
                if let Some(store) = self.shared.credentials() {
                    self.server.replace_credentials(StaticCredentials::clone(&store));
                }
            }
            let now = clock::reading();
            if !self.throttled.is_empty() && now.instant >= self.next_throttle {
                // A pair may have been throttled again by an event meanwhile.
                self.throttled.sort_unstable();
                self.throttled.dedup();
                ready.append(&mut self.throttled);
            }
            for &token in &ready {
                self.dispatch(token, now);
            }
            for relay in std::mem::take(&mut self.icmp_pending) {
                self.drain_icmp(relay, now);
            }
            self.flush(now);
            if now.instant >= self.next_tick {
                self.tick(now);
                self.flush(now);
            }
        }
        let now = clock::reading();
        let mut driver = driver(&self.poll, &mut self.relays, &mut self.tcp_relays, &self.shared, now.instant);
        self.server.close_all(&mut driver);
        debug!(connections = self.connections.len(), "worker stopping");
        self.shared.publish(self.id, self.report());
        Ok(self.report())
    }

    fn report(&self) -> WorkerReport {
        WorkerReport { server: *self.server.stats(), io: self.stats }
    }

    fn dispatch(&mut self, token: Token, now: Now) {
        let udp_count = self.udp.len();
        let tcp_end = udp_count + self.tcp_listeners.len();
        match token.0 {
            _ if token == WAKER => self.take_handoffs(now),
            index if index >= RELAY_BASE => self.drain_relay(RelayId(index - RELAY_BASE), now),
            index if (tcp_relay::TOKEN_BASE..tcp_relay::TOKEN_END).contains(&index) => self.serve_tcp_relay(token, now),
            index if index >= CONN_BASE => self.serve_connection(index - CONN_BASE, now),
            index if index < udp_count => self.drain_udp(index, now),
            index if index < tcp_end => self.accept(index, now),
            index if index < tcp_end + self.tls_listeners.len() => self.accept(index, now),
            _ => {}
        }
    }

    fn drain_udp(&mut self, index: usize, now: Now) {
        let fd = self.udp[index].0.as_raw_fd();
        let bound = self.udp[index].1;
        for _ in 0..BATCHES_PER_WAKE {
            let received = match self.client_batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // ICMP errors queued on the socket surface here; the next
                    // datagram is unaffected.
                    trace!(error = %e, "udp receive error");
                    continue;
                }
            };
            let mut driver = driver(&self.poll, &mut self.relays, &mut self.tcp_relays, &self.shared, now.instant);
            for i in 0..received {
                let meta = *self.client_batch.meta(i);
                if meta.truncated {
                    self.stats.truncated += 1;
                    continue;
                }
                // On a wildcard listener the server address is the one the
                // datagram was sent to, and answers must leave from it.
                let (local_ip, source_ip) = match meta.local_ip {
                    Some(ip) if bound.ip().is_unspecified() => (ip, Some(ip)),
                    _ => (bound.ip(), None),
                };
                let tuple = FiveTuple {
                    client: meta.source,
                    server: SocketAddr::new(local_ip, bound.port()),
                    transport: Transport::Udp,
                };
                let start = self.out.bytes_mut().len();
                let handle = ClientHandle(index as u64);
                let packet = self.client_batch.payload(i);
                match self.server.handle_client(now, &tuple, handle, packet, self.out.bytes_mut(), &mut driver) {
                    ClientOutcome::Dropped => {}
                    // The core binds data connections on streams only.
                    ClientOutcome::Replied | ClientOutcome::ConnectionBound { .. } => {
                        self.out.push_written(Via::Listener(index), meta.source, source_ip, start)
                    }
                    ClientOutcome::RepliedFrom { source, destination } => {
                        // RFC 5780: the core names one of the discovery
                        // addresses, and every worker listens on all four.
                        match self.udp.iter().position(|(_, bound)| *bound == source) {
                            Some(from) => self.out.push_written(Via::Listener(from), destination, None, start),
                            None => {
                                self.out.bytes_mut().truncate(start);
                                self.stats.send_failures += 1;
                            }
                        }
                    }
                    ClientOutcome::Forward { relay, peer, payload } => {
                        self.out.push(Via::Relay(relay), peer, None, &packet[payload]);
                    }
                }
            }
            if self.out.is_full() {
                self.flush(now);
            }
            if received < BATCH {
                return;
            }
        }
        self.pending.push(Token(index));
    }

    fn drain_relay(&mut self, relay: RelayId, now: Now) {
        let Some(fd) = self.relays.get(relay.0).and_then(Option::as_ref).map(|r| r.socket.as_raw_fd()) else { return };
        for _ in 0..BATCHES_PER_WAKE {
            let received = match self.peer_batch.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // The socket's pending error: an ICMP error about
                    // something it sent, queued in full on its error queue.
                    trace!(error = %e, "relay receive error");
                    self.icmp_pending.push(relay);
                    continue;
                }
            };
            for i in 0..received {
                let meta = *self.peer_batch.meta(i);
                if meta.truncated {
                    self.stats.truncated += 1;
                    continue;
                }
                let slot = self.peer_batch.slot_mut(i);
                let Some(out) = self.server.handle_peer(now, relay, meta.source, slot, PEER_HEADROOM, meta.len) else {
                    continue;
                };
                let frame = &self.peer_batch.slot(i)[out.frame.0..out.frame.1];
                Delivery {
                    udp: &self.udp,
                    connections: &mut self.connections,
                    dirty: &mut self.dirty_connections,
                    out: &mut self.out,
                    stats: &mut self.stats,
                }
                .send(out.client, &out.tuple, frame);
            }
            if self.out.is_full() {
                self.flush(now);
            }
            if received < BATCH {
                return;
            }
        }
        self.pending.push(Token(RELAY_BASE + relay.0));
    }

    /// Queues a frame the core built apart from any receive batch for its
    /// client. (A frame inside a batch borrows it, so `drain_relay` builds
    /// its [`Delivery`] field by field.)
    pub(super) fn deliver(&mut self, client: ClientHandle, tuple: &FiveTuple, frame: &[u8]) {
        Delivery {
            udp: &self.udp,
            connections: &mut self.connections,
            dirty: &mut self.dirty_connections,
            out: &mut self.out,
            stats: &mut self.stats,
        }
        .send(client, tuple, frame);
    }

    /// Reads the relay socket's error queue and passes ICMP errors on to the
    /// client (RFC 8656 §11.5). Bounded per turn like a receive; what is
    /// left is read on the next turn.
    fn drain_icmp(&mut self, relay: RelayId, now: Now) {
        let Some(fd) = self.relays.get(relay.0).and_then(Option::as_ref).map(|r| r.socket.as_raw_fd()) else { return };
        for _ in 0..BATCH {
            let error = match icmp::recv_icmp_error(fd) {
                Ok(Some(error)) => error,
                Ok(None) => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    trace!(error = %e, "relay error queue");
                    return;
                }
            };
            let report = IcmpReport {
                peer: error.destination,
                ipv6: error.ipv6,
                icmp_type: error.icmp_type,
                icmp_code: error.icmp_code,
                mtu: error.info,
            };
            let mut indication = Vec::new();
            if let Some((client, tuple)) = self.server.handle_icmp(now, relay, &report, &mut indication) {
                self.deliver(client, &tuple, &indication);
            }
        }
        self.icmp_pending.push(relay);
    }

    /// Sends what the turn produced: queued datagrams, and relayed data for
    /// TCP clients.
    fn flush(&mut self, now: Now) {
        if !self.out.is_empty() {
            let (udp, relays) = (&self.udp, &self.relays);
            let flushed = self.out.flush(|via| match via {
                Via::Listener(index) => udp.get(index).map(|(socket, _)| socket.as_raw_fd()),
                Via::Relay(id) => relays.get(id.0).and_then(Option::as_ref).map(|r| r.socket.as_raw_fd()),
            });
            self.stats.send_failures += flushed.failures;
        }
        for key in std::mem::take(&mut self.dirty_connections) {
            self.flush_connection(key, now);
        }
    }

    /// Accepts connections on the listener with token `token`: a TCP
    /// listener, or a TLS one past them.
    fn accept(&mut self, token: usize, now: Now) {
        let tcp_index = token - self.udp.len();
        let tls_index = tcp_index.checked_sub(self.tcp_listeners.len());
        for _ in 0..ACCEPTS_PER_WAKE {
            let (listener, bound) = match tls_index {
                Some(index) => &self.tls_listeners[index],
                None => &self.tcp_listeners[tcp_index],
            };
            let bound = *bound;
            let (mut stream, client) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: stop accepting this turn; the
                    // listener is retried on the next.
                    warn!(error = %e, "tcp accept failed");
                    self.pending.push(Token(token));
                    return;
                }
            };
            let transport = if tls_index.is_some() { Transport::Tls } else { Transport::Tcp };
            let tls = match (&mut self.tls, tls_index) {
                (Some(tls), Some(_)) => {
                    if self.handshaking >= tls.max_handshakes {
                        // Closing at once keeps a handshake flood from
                        // holding memory and CPU; clients retry.
                        self.stats.tls_refused += 1;
                        debug!(%client, "tls connection refused: too many handshakes in progress");
                        continue;
                    }
                    match tls.acceptor.accept() {
                        Ok(connection) => Some(Box::new(connection)),
                        Err(e) => {
                            warn!(error = %e, "cannot start a tls connection");
                            continue;
                        }
                    }
                }
                _ => None,
            };
            if !self.shared.admit_connection(client.ip()) {
                // Closing at once; the client sees a reset or EOF.
                self.stats.tcp_refused += 1;
                debug!(%client, %transport, "connection refused: connection limit");
                continue;
            }
            let server = stream.local_addr().unwrap_or(bound);
            let _ = stream.set_nodelay(true);
            let entry = self.connections.vacant_entry();
            let conn_token = Token(CONN_BASE + entry.key());
            if let Err(e) =
                self.poll.registry().register(&mut stream, conn_token, Interest::READABLE | Interest::WRITABLE)
            {
                warn!(error = %e, "cannot register tcp connection");
                self.shared.release_connection(client.ip());
                continue;
            }
            trace!(%client, %transport, "connection accepted");
            if tls.is_some() {
                self.handshaking += 1;
                self.stats.tls_accepted += 1;
            }
            let tuple = FiveTuple { client, server, transport };
            entry.insert(TcpConnection::new(Stream::new(stream, tls), tuple, now.instant));
            self.stats.tcp_accepted += 1;
        }
        self.pending.push(Token(token));
    }

    fn serve_connection(&mut self, key: usize, now: Now) {
        let Some(connection) = self.connections.get_mut(key) else { return };
        let server = &mut self.server;
        let mut driver = driver(&self.poll, &mut self.relays, &mut self.tcp_relays, &self.shared, now.instant);
        let handle = ClientHandle(HANDLE_TCP | key as u64);
        let udp_out = &mut self.out;
        let (worker, workers) = (self.id, self.shared.handoffs.workers());
        let mut unframed = None;
        let read = if connection.peer_closed {
            Ok(ReadStatus::Drained)
        } else {
            connection.read_frames(now.instant, |tuple, frame, replies| {
                if let Some(owner) = splice::handoff_owner(server, tuple, frame, worker, workers) {
                    unframed = Some(splice::Unframed::HandOff { owner, frame: frame.to_vec() });
                    return Next::Unframed;
                }
                match server.handle_client(now, tuple, handle, frame, replies, &mut driver) {
                    ClientOutcome::Forward { relay, peer, payload } => {
                        udp_out.push(Via::Relay(relay), peer, None, &frame[payload]);
                    }
                    ClientOutcome::ConnectionBound { id } => {
                        unframed = Some(splice::Unframed::Bound(id));
                        return Next::Unframed;
                    }
                    // RepliedFrom is for UDP only: over a stream the core answers on it.
                    ClientOutcome::Dropped | ClientOutcome::Replied | ClientOutcome::RepliedFrom { .. } => {}
                }
                Next::Frame
            })
        };
        if let Some(unframed) = unframed {
            // RFC 6062 data connection: no longer a STUN connection.
            self.unframe_connection(key, unframed, now);
            return;
        }
        // A client that shuts down its sending side after its requests still
        // reads: answers to what it sent are written before the connection
        // is closed.
        let read = match read {
            Err(Closed::Eof) => {
                connection.peer_closed = true;
                Ok(ReadStatus::Drained)
            }
            other => other,
        };
        let result = read.and_then(|status| connection.flush().map(|()| status));
        let finished = connection.peer_closed && connection.drained();
        if connection.stream.is_tls() && !connection.handshake_done && !connection.handshaking() && result.is_ok() {
            connection.handshake_done = true;
            self.handshaking -= 1;
            self.stats.tls_handshakes += 1;
            if let Some(tls) = connection.stream.tls() {
                debug!(
                    client = %connection.tuple.client,
                    alpn = tls.alpn_protocol().map(String::from_utf8_lossy).as_deref(),
                    sni = tls.server_name(),
                    version = ?tls.protocol_version(),
                    "tls handshake complete"
                );
            }
        }
        match result {
            Ok(_) if finished => self.close_connection(key, &Closed::Eof, now),
            Ok(ReadStatus::Drained | ReadStatus::Unframed) => {}
            Ok(ReadStatus::MoreAvailable) => self.pending.push(Token(CONN_BASE + key)),
            Err(reason) => self.close_connection(key, &reason, now),
        }
    }

    fn flush_connection(&mut self, key: usize, now: Now) {
        let Some(connection) = self.connections.get_mut(key) else { return };
        match connection.flush() {
            Err(reason) => self.close_connection(key, &reason, now),
            Ok(()) if connection.peer_closed && connection.drained() => {
                self.close_connection(key, &Closed::Eof, now);
            }
            Ok(()) => {}
        }
    }

    fn close_connection(&mut self, key: usize, reason: &Closed, now: Now) {
        let mut connection = self.connections.remove(key);
        if connection.stream.is_tls() && !connection.handshake_done {
            self.handshaking -= 1;
            if matches!(reason, Closed::HandshakeTimeout) {
                self.stats.tls_handshake_timeouts += 1;
            } else {
                self.stats.tls_handshake_failures += 1;
            }
            debug!(client = %connection.tuple.client, %reason, "tls handshake failed");
        }
        if matches!(reason, Closed::Eof | Closed::Idle | Closed::HandshakeTimeout) {
            connection.close_notify();
        }
        let _ = self.poll.registry().deregister(&mut connection.stream);
        let mut driver = driver(&self.poll, &mut self.relays, &mut self.tcp_relays, &self.shared, now.instant);
        self.server.handle_connection_closed(&connection.tuple, &mut driver);
        self.shared.release_connection(connection.tuple.client.ip());
        self.stats.tcp_closed += 1;
        trace!(client = %connection.tuple.client, transport = %connection.tuple.transport, %reason, "connection closed");
    }

    fn tick(&mut self, now: Now) {
        self.next_tick = now.instant + TICK;
        self.shared.publish(self.id, self.report());
        let mut driver = driver(&self.poll, &mut self.relays, &mut self.tcp_relays, &self.shared, now.instant);
        self.server.handle_timeout(now, &mut driver);
        self.deliver_control();
        self.shared.expire_reservations(now.instant);
        let table = self.server.table();
        let idle: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, c)| {
                now.instant.saturating_duration_since(c.last_received) >= TCP_IDLE_TIMEOUT
                    && table.find(&c.tuple).is_none()
            })
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.close_connection(key, &Closed::Idle, now);
        }
        if let Some(tls) = &self.tls {
            let timeout = tls.handshake_timeout;
            let slow: Vec<usize> = self
                .connections
                .iter()
                .filter(|(_, c)| {
                    c.stream.is_tls()
                        && !c.handshake_done
                        && now.instant.saturating_duration_since(c.accepted) >= timeout
                })
                .map(|(key, _)| key)
                .collect();
            for key in slow {
                self.close_connection(key, &Closed::HandshakeTimeout, now);
            }
        }
    }
}

fn driver<'a>(
    poll: &'a Poll,
    relays: &'a mut Vec<Option<RelaySocket>>,
    tcp: &'a mut TcpRelays,
    shared: &'a Shared,
    now: Instant,
) -> WorkerDriver<'a> {
    WorkerDriver { registry: poll.registry(), relays, tcp, shared, token_base: RELAY_BASE, now }
}
