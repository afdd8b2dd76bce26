//! RFC 6062 sockets of one worker: the listening socket behind each TCP
//! allocation's relayed address, the peer data connections (opened by
//! Connect or accepted from peers), the client data connections bound to
//! them, and the unframed copying between the two.
//!
//! It decides nothing about the protocol: which connection is welcome, its
//! id and its deadlines are the core's (`crate::proto::tcp_relay`). What it
//! owns is memory: each direction of a bound pair has one buffer of
//! [`PIPE_CAPACITY`] bytes, and a side is read only while the buffer
//! towards the other side has room, so a slow reader slows its writer down
//! through TCP flow control instead of growing a queue.
//!
//! Also here: the hand-over of a client data connection that arrived on
//! another worker's listener (the kernel spreads connections over workers
//! by their 5-tuple) to the worker whose allocation it binds to.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use mio::{Interest, Registry, Waker};
use socket2::{Domain, Protocol, Socket, Type};

use super::stream::Stream;
use super::tcp::Detached;
use super::token::Source;
use crate::proto::allocation::RelayId;
use crate::proto::tcp_relay::ConnectionId;

/// Bytes buffered per direction of a bound pair: enough to keep a fast
/// connection busy between two turns of the loop, small enough that ten
/// thousand pairs fit in about a gigabyte.
pub const PIPE_CAPACITY: usize = 64 * 1024;
/// Bytes copied for one pair per wake-up before the others get a turn.
const PUMP_BUDGET: usize = 256 * 1024;
/// Pending connections in a relay listener's accept queue.
const LISTEN_BACKLOG: i32 = 128;

/// How a pair stands after [`TcpRelays::pump`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pumped {
    /// Both sides would block (or wait for room); an event will come.
    Idle,
    /// The budget ran out with work left: pump again next turn.
    More,
    /// A direction waits for its allocation's bandwidth budget (`max_bps`)
    /// to refill: pump again a little later.
    Throttled,
    /// Both directions ended, or a side failed: the pair is closed.
    Finished,
}

/// One direction of a bound pair.
#[derive(Default)]
struct Pipe {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    pos: usize,
    /// The reading side sent FIN.
    eof: bool,
    /// FIN passed on to the writing side.
    shut: bool,
}

impl Pipe {
    fn is_empty(&self) -> bool {
        self.pos == self.buf.len()
    }

    fn is_done(&self) -> bool {
        self.eof && self.shut
    }

    /// Whether the pipe would read but its bandwidth allowance is spent.
    fn is_throttled(&self, allowance: usize) -> bool {
        allowance == 0 && !self.eof && self.buf.len() < PIPE_CAPACITY
    }

    /// Moves bytes from `from` into the buffer while it has room (and at
    /// most `allowance` of them, which it lowers), then from the buffer to
    /// `to`, and passes FIN on once everything went. Returns the bytes moved
    /// (read and written: the pair's progress) and the bytes read from
    /// `from` (what it sent through the relay), or the error that ends the
    /// pair.
    fn transfer(&mut self, from: &mut Stream, to: &mut Stream, allowance: &mut usize) -> io::Result<(usize, usize)> {
        let mut moved = 0;
        let mut read = 0;
        if !self.eof && self.buf.len() < PIPE_CAPACITY && *allowance > 0 {
            if self.is_empty() {
                self.buf.clear();
                self.pos = 0;
            }
            let filled = self.buf.len();
            self.buf.resize(filled + (PIPE_CAPACITY - filled).min(*allowance), 0);
            match from.read(&mut self.buf[filled..]) {
                Ok(0) => {
                    self.buf.truncate(filled);
                    self.eof = true;
                }
                Ok(n) => {
                    self.buf.truncate(filled + n);
                    moved += n;
                    read = n;
                    *allowance -= n;
                }
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                    self.buf.truncate(filled);
                }
                Err(e) => return Err(e),
            }
        }
        // A TLS side may still hold records of an earlier write.
        let mut flushed = to.write_pending()?;
        while flushed && !self.is_empty() {
            match to.write(&self.buf[self.pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.pos += n;
                    moved += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            flushed = to.write_pending()?;
        }
        if self.is_empty() {
            self.buf.clear();
            self.pos = 0;
        } else if self.buf.len() == PIPE_CAPACITY && self.pos > 0 {
            // Full but partly written: make room at the end for the next read.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        if self.eof && self.is_empty() && flushed && !self.shut {
            // Half-close: the other side may still send (RFC 6062 §5.5 asks
            // for the connections to end together, and TCP ends in halves).
            to.shutdown_write();
            self.shut = true;
        }
        Ok((moved, read))
    }
}

/// A peer data connection, and once bound, the client data connection.
struct Pair {
    /// Plain TCP, always.
    peer: Stream,
    /// The Connect's SYN is out, no answer yet.
    connecting: bool,
    /// The client side and the IP its admission was counted under: the
    /// data connection, over TLS when the client connected over TLS.
    client: Option<(Stream, IpAddr)>,
    to_peer: Pipe,
    to_client: Pipe,
}

/// A TCP allocation's listening socket.
struct RelayListener {
    listener: mio::net::TcpListener,
    addr: SocketAddr,
}

/// One worker's RFC 6062 sockets.
#[derive(Default)]
pub struct TcpRelays {
    listeners: Vec<Option<RelayListener>>,
    pairs: HashMap<ConnectionId, Pair>,
}

impl TcpRelays {
    /// Binds and registers the listening socket of `relay` on `addr`.
    pub fn open_listener(&mut self, registry: &Registry, relay: RelayId, addr: SocketAddr) -> io::Result<()> {
        let mut listener = bind_listener(addr)?;
        registry.register(&mut listener, Source::TcpRelayListener(relay).token(), Interest::READABLE)?;
        if self.listeners.len() <= relay.0 {
            self.listeners.resize_with(relay.0 + 1, || None);
        }
        self.listeners[relay.0] = Some(RelayListener { listener, addr });
        Ok(())
    }

    /// Closes the listening socket of `relay` if it is bound to `addr`.
    pub fn close_listener(&mut self, registry: &Registry, relay: RelayId, addr: SocketAddr) {
        if let Some(mut closed) = self.listeners.get_mut(relay.0).and_then(|slot| slot.take_if(|l| l.addr == addr)) {
            let _ = registry.deregister(&mut closed.listener);
        }
    }

    /// Accepts one pending peer connection of `relay`.
    pub fn accept(&mut self, relay: RelayId) -> io::Result<(mio::net::TcpStream, SocketAddr)> {
        match self.listeners.get(relay.0).and_then(Option::as_ref) {
            Some(relay) => relay.listener.accept(),
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }

    /// Keeps an accepted peer connection under `id`. It is not read until
    /// a client data connection is bound to it: until then TCP flow
    /// control holds what the peer sends.
    pub fn insert_accepted(
        &mut self,
        registry: &Registry,
        id: ConnectionId,
        mut peer: mio::net::TcpStream,
    ) -> io::Result<()> {
        registry.register(&mut peer, Source::PeerSide(id).token(), Interest::READABLE | Interest::WRITABLE)?;
        let _ = peer.set_nodelay(true);
        self.pairs.insert(id, Pair::new(peer, false));
        Ok(())
    }

    /// Starts a non-blocking connection from the relayed address of `relay`
    /// to `peer` (RFC 6062 §5.2). The socket shares the listener's address,
    /// which SO_REUSEADDR and SO_REUSEPORT on both allow.
    pub fn connect(
        &mut self,
        registry: &Registry,
        relay: RelayId,
        id: ConnectionId,
        peer: SocketAddr,
    ) -> io::Result<()> {
        let local = self
            .listeners
            .get(relay.0)
            .and_then(Option::as_ref)
            .map(|l| l.addr)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no listener for this relay"))?;
        let socket = reusable_socket(local)?;
        socket.bind(&local.into())?;
        match socket.connect(&peer.into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => return Err(e),
        }
        let mut stream = mio::net::TcpStream::from_std(socket.into());
        registry.register(&mut stream, Source::PeerSide(id).token(), Interest::READABLE | Interest::WRITABLE)?;
        let _ = stream.set_nodelay(true);
        self.pairs.insert(id, Pair::new(stream, true));
        Ok(())
    }

    /// For a connection a Connect started: `Some(true)` once established,
    /// `Some(false)` if it failed (it is closed then), `None` while in
    /// progress or if it is not connecting.
    pub fn connect_result(&mut self, registry: &Registry, id: ConnectionId) -> Option<bool> {
        let pair = self.pairs.get_mut(&id).filter(|p| p.connecting)?;
        let failed = match pair.peer.socket().take_error() {
            Ok(Some(_)) | Err(_) => true,
            Ok(None) => match pair.peer.socket().peer_addr() {
                Ok(_) => false,
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return None,
                Err(_) => true,
            },
        };
        if failed {
            self.close(registry, id);
            return Some(false);
        }
        pair.connecting = false;
        Some(true)
    }

    /// Joins a client data connection to the peer connection `id`: first
    /// its unsent bytes (the end of the ConnectionBind response) go to the
    /// client and its unread ones (bytes the client sent right after the
    /// request) to the peer. Closes the connection and returns false if `id`
    /// has no peer connection (any more).
    pub fn attach_client(
        &mut self,
        registry: &Registry,
        id: ConnectionId,
        client: Detached,
        admitted_ip: IpAddr,
    ) -> bool {
        let Some(pair) = self.pairs.get_mut(&id) else { return false };
        let Detached { mut stream, unread, unsent, .. } = client;
        if registry
            .register(&mut stream, Source::ClientSide(id).token(), Interest::READABLE | Interest::WRITABLE)
            .is_err()
        {
            return false;
        }
        // Both are at most one read's worth: a frame and what followed it.
        pair.to_peer.buf = unread;
        pair.to_client.buf = unsent;
        pair.client = Some((stream, admitted_ip));
        true
    }

    /// Whether `id` has a client side yet.
    pub fn is_bound(&self, id: ConnectionId) -> bool {
        self.pairs.get(&id).is_some_and(|p| p.client.is_some())
    }

    /// Copies both ways until both would block, the budget is spent, or
    /// the pair ends (then it is closed here and the caller tells the core).
    /// Reads at most `allowance` bytes towards the peer and towards the
    /// client, and adds the bytes read to `moved`.
    pub fn pump(
        &mut self,
        registry: &Registry,
        id: ConnectionId,
        released: &mut Vec<IpAddr>,
        allowance: [usize; 2],
        moved: &mut [u64; 2],
    ) -> Pumped {
        let Some(pair) = self.pairs.get_mut(&id) else { return Pumped::Finished };
        let Pair { peer, client: Some((client, _)), to_peer, to_client, .. } = pair else { return Pumped::Idle };
        let mut budget = PUMP_BUDGET;
        let [mut towards_peer, mut towards_client] = allowance;
        let status = loop {
            let result = to_peer
                .transfer(client, peer, &mut towards_peer)
                .and_then(|a| to_client.transfer(peer, client, &mut towards_client).map(|b| (a, b)));
            let n = match result {
                Err(_) => break Pumped::Finished,
                Ok(((progress_a, read_a), (progress_b, read_b))) => {
                    moved[0] += read_a as u64;
                    moved[1] += read_b as u64;
                    progress_a + progress_b
                }
            };
            match n {
                _ if to_peer.is_done() && to_client.is_done() => break Pumped::Finished,
                0 if to_peer.is_throttled(towards_peer) || to_client.is_throttled(towards_client) => {
                    break Pumped::Throttled;
                }
                0 => break Pumped::Idle,
                n if n >= budget => break Pumped::More,
                n => budget -= n,
            }
        };
        if status == Pumped::Finished
            && let Some(ip) = self.close(registry, id)
        {
            released.push(ip);
        }
        status
    }

    /// Closes both sides of `id`; returns the client IP whose connection
    /// count the caller must release, if a client side was bound.
    pub fn close(&mut self, registry: &Registry, id: ConnectionId) -> Option<IpAddr> {
        let mut pair = self.pairs.remove(&id)?;
        let _ = registry.deregister(&mut pair.peer);
        let (mut client, ip) = pair.client?;
        let _ = registry.deregister(&mut client);
        Some(ip)
    }
}

impl Pair {
    fn new(peer: mio::net::TcpStream, connecting: bool) -> Self {
        Self {
            peer: Stream::new(peer, None),
            connecting,
            client: None,
            to_peer: Pipe::default(),
            to_client: Pipe::default(),
        }
    }
}

/// A TCP socket that may share its address with a relay's listener and
/// its outgoing connections.
fn reusable_socket(addr: SocketAddr) -> io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Binds a relay listener. SO_REUSEPORT would also let another process of
/// the same user bind the port and take half the peers, so the port is
/// first bound by a probe without it: that fails (EADDRINUSE) while anyone
/// listens there, including another tern, whose listeners are all probed
/// the same way.
fn bind_listener(addr: SocketAddr) -> io::Result<mio::net::TcpListener> {
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        probe.set_only_v6(true)?;
    }
    // TIME_WAIT remnants of an earlier allocation's connections do not count.
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())?;
    drop(probe);
    let socket = reusable_socket(addr)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    Ok(mio::net::TcpListener::from_std(socket.into()))
}

/// Every worker's inbox of handed-over connections, with the waker that
/// tells it to look: client connections on their way from the worker that
/// accepted them to the worker that owns the CONNECTION-ID of their
/// ConnectionBind, their unread bytes starting with that request. Touched
/// once per data connection, never per packet.
pub struct Handoffs {
    inboxes: Mutex<Vec<Inbox>>,
}

/// One worker's handed-over connections and its waker, once registered.
type Inbox = (Vec<Detached>, Option<Arc<Waker>>);

impl Handoffs {
    pub fn new(workers: usize) -> Self {
        Self { inboxes: Mutex::new((0..workers.max(1)).map(|_| (Vec::new(), None)).collect()) }
    }

    pub fn workers(&self) -> usize {
        self.lock().len()
    }

    /// Records how to wake `worker`.
    pub fn register(&self, worker: usize, waker: Arc<Waker>) {
        if let Some(inbox) = self.lock().get_mut(worker) {
            inbox.1 = Some(waker);
        }
    }

    /// Queues a connection for `worker` and wakes it; closes the connection
    /// and returns false if there is no such worker.
    pub fn send(&self, worker: usize, connection: Detached) -> bool {
        let mut inboxes = self.lock();
        let Some((queue, Some(waker))) = inboxes.get_mut(worker) else { return false };
        queue.push(connection);
        // A failed wake only delays the connection to the worker's next tick.
        let _ = waker.wake();
        true
    }

    /// Takes what was handed to `worker`.
    pub fn take(&self, worker: usize) -> Vec<Detached> {
        self.lock().get_mut(worker).map(|inbox| std::mem::take(&mut inbox.0)).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Inbox>> {
        // A worker that panicked while holding the lock left queues that are
        // still queues.
        self.inboxes.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
