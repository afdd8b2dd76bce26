//! One worker: a single-threaded event loop that owns its share of the listen
//! sockets, its TCP connections and its [`Server`], and drives the core with
//! bytes and time.
//!
//! The loop is a plain `mio` poll rather than an async runtime: a ready socket
//! is served directly, with no task to wake, and a batch of datagrams read in
//! one `recvmmsg` is answered in one `sendmmsg`. Readiness is edge-triggered,
//! so a socket that still has data when its budget runs out goes on a pending
//! list and is served again on the next turn, after everyone else.

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
use super::shutdown::Shutdown;
use super::sys::{self, RecvBatch, SendScratch, Transmit};
use super::tcp::{Closed, ReadStatus, TcpConnection};
use crate::proto::server::{ClientOutcome, Server, ServerConfig, Stats};
use crate::proto::{FiveTuple, Transport};

/// Receive slots are large enough for any UDP datagram.
const UDP_SLOT: usize = 65536;
/// `recvmmsg` batches taken from one socket per wake-up before the others get
/// a turn (quinn bounds its loop the same way).
const BATCHES_PER_WAKE: usize = 8;
/// Connections accepted per listener per wake-up.
const ACCEPTS_PER_WAKE: usize = 64;
/// Housekeeping period: idle sweeps.
const TICK: Duration = Duration::from_secs(1);
/// A TCP connection that sends nothing for this long is closed.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

const WAKER: Token = Token(usize::MAX);
/// Tokens below this are listeners (UDP first, then TCP); connections start here.
const CONN_BASE: usize = 1 << 32;

/// Counters the driver keeps beside the core's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoStats {
    /// Datagrams larger than a receive slot.
    pub truncated: u64,
    /// Datagrams the kernel refused to send (buffer full, unreachable).
    pub send_failures: u64,
    pub tcp_accepted: u64,
    pub tcp_closed: u64,
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
        self.io.tcp_accepted += other.io.tcp_accepted;
        self.io.tcp_closed += other.io.tcp_closed;
    }
}

/// A worker ready to run on its own thread.
pub struct Worker {
    id: usize,
    poll: Poll,
    server: Server,
    udp: Vec<(mio::net::UdpSocket, SocketAddr)>,
    tcp_listeners: Vec<(mio::net::TcpListener, SocketAddr)>,
    connections: Slab<TcpConnection>,
    recv: RecvBatch,
    send_scratch: SendScratch,
    /// Answers produced by one receive batch, back to back.
    replies: Vec<u8>,
    /// Where each answer in `replies` goes: (end offset, destination, source).
    reply_meta: Vec<(usize, SocketAddr, Option<std::net::IpAddr>)>,
    pending: Vec<Token>,
    shutdown: Shutdown,
    stats: IoStats,
    next_tick: Instant,
}

impl Worker {
    pub fn new(id: usize, listeners: WorkerListeners, config: ServerConfig, shutdown: Shutdown) -> io::Result<Self> {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        shutdown.register(waker);
        let WorkerListeners { mut udp, mut tcp } = listeners;
        for (index, (socket, _)) in udp.iter_mut().enumerate() {
            poll.registry().register(socket, Token(index), Interest::READABLE)?;
        }
        for (index, (listener, _)) in tcp.iter_mut().enumerate() {
            poll.registry().register(listener, Token(udp.len() + index), Interest::READABLE)?;
        }
        Ok(Self {
            id,
            poll,
            server: Server::new(config),
            udp,
            tcp_listeners: tcp,
            connections: Slab::new(),
            recv: RecvBatch::new(UDP_SLOT, 0),
            send_scratch: SendScratch::default(),
            replies: Vec::with_capacity(sys::BATCH * 128),
            reply_meta: Vec::with_capacity(sys::BATCH),
            pending: Vec::new(),
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
            let timeout = if self.pending.is_empty() {
                self.next_tick.saturating_duration_since(clock::now())
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
            let now = clock::now();
            for &token in &ready {
                self.dispatch(token, now);
            }
            if now >= self.next_tick {
                self.tick(now);
            }
        }
        debug!(connections = self.connections.len(), "worker stopping");
        Ok(WorkerReport { server: *self.server.stats(), io: self.stats })
    }

    fn dispatch(&mut self, token: Token, now: Instant) {
        let udp_count = self.udp.len();
        match token.0 {
            _ if token == WAKER => {}
            index if index < udp_count => self.drain_udp(index),
            index if index < udp_count + self.tcp_listeners.len() => self.accept(index - udp_count, now),
            index if index >= CONN_BASE => self.serve_connection(index - CONN_BASE, now),
            _ => {}
        }
    }

    fn drain_udp(&mut self, index: usize) {
        let (socket, bound) = &self.udp[index];
        let fd = socket.as_raw_fd();
        let bound = *bound;
        for _ in 0..BATCHES_PER_WAKE {
            let received = match self.recv.recv(fd) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // ICMP errors queued on the socket surface here; the next
                    // datagram is unaffected.
                    trace!(error = %e, "udp receive error");
                    continue;
                }
            };
            self.replies.clear();
            self.reply_meta.clear();
            for i in 0..received {
                let meta = *self.recv.meta(i);
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
                if self.server.handle_client(&tuple, self.recv.payload(i), &mut self.replies) == ClientOutcome::Replied
                {
                    self.reply_meta.push((self.replies.len(), meta.source, source_ip));
                }
            }
            self.send_replies(fd);
            if received < sys::BATCH {
                return;
            }
        }
        self.pending.push(Token(index));
    }

    /// Sends the answers gathered in `replies`; a datagram the kernel will
    /// not take is dropped and counted, as UDP allows.
    fn send_replies(&mut self, fd: std::os::fd::RawFd) {
        let unused = Transmit { destination: SocketAddr::from(([0, 0, 0, 0], 0)), source_ip: None, payload: &[] };
        let mut transmits = [unused; sys::BATCH];
        let mut start = 0;
        for (slot, &(end, destination, source_ip)) in transmits.iter_mut().zip(&self.reply_meta) {
            *slot = Transmit { destination, source_ip, payload: &self.replies[start..end] };
            start = end;
        }
        let transmits = &transmits[..self.reply_meta.len()];
        let mut sent = 0;
        while sent < transmits.len() {
            match sys::send_batch(fd, &transmits[sent..], &mut self.send_scratch) {
                Ok(n) => sent += n.max(1),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    trace!(error = %e, destination = %transmits[sent].destination, "udp send failed");
                    self.stats.send_failures += 1;
                    sent += 1;
                }
            }
        }
    }

    fn accept(&mut self, index: usize, now: Instant) {
        for _ in 0..ACCEPTS_PER_WAKE {
            let (listener, bound) = &self.tcp_listeners[index];
            let bound = *bound;
            let (mut stream, client) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: stop accepting this turn; the
                    // listener stays readable and is retried on the next.
                    warn!(error = %e, "tcp accept failed");
                    self.pending.push(Token(self.udp.len() + index));
                    return;
                }
            };
            let server = stream.local_addr().unwrap_or(bound);
            let _ = stream.set_nodelay(true);
            let entry = self.connections.vacant_entry();
            let token = Token(CONN_BASE + entry.key());
            if let Err(e) = self.poll.registry().register(&mut stream, token, Interest::READABLE | Interest::WRITABLE) {
                warn!(error = %e, "cannot register tcp connection");
                continue;
            }
            trace!(%client, "tcp connection accepted");
            entry.insert(TcpConnection::new(stream, FiveTuple { client, server, transport: Transport::Tcp }, now));
            self.stats.tcp_accepted += 1;
        }
        self.pending.push(Token(self.udp.len() + index));
    }

    fn serve_connection(&mut self, key: usize, now: Instant) {
        let Some(connection) = self.connections.get_mut(key) else { return };
        let server = &mut self.server;
        let read = if connection.peer_closed {
            Ok(ReadStatus::Drained)
        } else {
            connection.read_frames(now, |tuple, frame, out| {
                server.handle_client(tuple, frame, out);
            })
        };
        // A client that shuts down its sending side after its requests
        // still reads: answers to what it sent are written before the
        // connection is closed.
        let read = match read {
            Err(Closed::Eof) => {
                connection.peer_closed = true;
                Ok(ReadStatus::Drained)
            }
            other => other,
        };
        let result = read.and_then(|status| connection.flush().map(|()| status));
        let finished = connection.peer_closed && connection.queued() == 0;
        match result {
            Ok(_) if finished => self.close_connection(key, &Closed::Eof),
            Ok(ReadStatus::Drained) => {}
            Ok(ReadStatus::MoreAvailable) => self.pending.push(Token(CONN_BASE + key)),
            Err(reason) => self.close_connection(key, &reason),
        }
    }

    fn close_connection(&mut self, key: usize, reason: &Closed) {
        let mut connection = self.connections.remove(key);
        let _ = self.poll.registry().deregister(&mut connection.stream);
        self.stats.tcp_closed += 1;
        trace!(client = %connection.tuple.client, %reason, "tcp connection closed");
    }

    fn tick(&mut self, now: Instant) {
        self.next_tick = now + TICK;
        let idle: Vec<usize> = self
            .connections
            .iter()
            .filter(|(_, c)| now.saturating_duration_since(c.last_received) >= TCP_IDLE_TIMEOUT)
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            self.close_connection(key, &Closed::Idle);
        }
    }
}
