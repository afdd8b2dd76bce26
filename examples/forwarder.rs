//! A plain batched UDP forwarder: the baseline tern's relay is benchmarked
//! against (`bench/compare.sh`, BENCHMARKS.md).
//!
//! It is a TURN relay with the protocol taken out. One UDP socket listens for
//! clients; the first datagram from a client address opens an upstream socket
//! for that client (bound to the listening IP, any port), and the client's
//! datagrams leave from it to one fixed peer. What the peer sends back to an
//! upstream socket goes to its client through the listening socket. The
//! syscalls are the ones tern's workers make: `recvmmsg` batches, and one
//! `sendmmsg` per destination socket per batch, through `tern::io::sys` on a
//! `mio` event loop. There are no headers to add or strip, no
//! authentication, and one hash lookup of the client address per datagram,
//! so the difference between this and tern is what TURN costs.
//!
//! ```text
//! cargo run --release --example forwarder -- --listen 127.0.0.1:4000 --peer 127.0.0.1:5000
//! tern load 127.0.0.1:4000 --raw --peer-listen 127.0.0.1:5000 -u x --allocations 64 --window 4
//! ```
//!
//! With `--threads N`, each thread owns a listening socket bound with
//! SO_REUSEPORT (the kernel spreads clients over them, as over tern's
//! workers) and the upstream sockets of its clients. An upstream socket idle
//! for `--idle-timeout` is closed. Listen on a specific address: replies
//! leave from the listening socket without choosing a source address. Runs
//! until SIGINT or SIGTERM, then prints what it forwarded.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};
use tern::io::clock;
use tern::io::shutdown::Shutdown;
use tern::io::sys::batch::{BATCH, RecvBatch, SendScratch, Transmit, send_batch};

/// Receive slots hold any UDP datagram.
const SLOT: usize = 65536;
/// `recvmmsg` batches taken from one socket per wake-up before the others
/// get a turn, as in tern's workers.
const BATCHES_PER_WAKE: usize = 8;
/// How often idle upstream sockets are looked for.
const SWEEP_PERIOD: Duration = Duration::from_secs(1);
const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX);
const UNUSED: Transmit<'static> = Transmit {
    destination: SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)),
    source_ip: None,
    payload: &[],
    segment_size: None,
};

/// A plain batched UDP forwarder (no TURN), the baseline of tern's benchmarks.
#[derive(Parser)]
struct Args {
    /// Address to listen on for clients.
    #[arg(long)]
    listen: SocketAddr,
    /// Where every client's datagrams are forwarded.
    #[arg(long)]
    peer: SocketAddr,
    /// Threads, each with its own SO_REUSEPORT listening socket.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// SO_RCVBUF and SO_SNDBUF of each listening socket, in bytes; 0 keeps the kernel's.
    #[arg(long, default_value_t = 2 * 1024 * 1024)]
    udp_buffer: usize,
    /// Close a client's upstream socket after this long without traffic.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    idle_timeout: Duration,
}

fn main() -> io::Result<()> {
    let args = Args::parse();
    let shutdown = Shutdown::new();
    let _signals = shutdown.on_signals()?;
    let mut listen = args.listen;
    let mut threads = Vec::new();
    for index in 0..args.threads.max(1) {
        let listener = bind_listener(listen, args.udp_buffer)?;
        // Port 0 is resolved by the first socket; the others share its port.
        listen = listener.local_addr()?;
        let forwarder = Forwarder::new(listener, &args, &shutdown)?;
        threads.push(std::thread::Builder::new().name(format!("forwarder-{index}")).spawn(move || forwarder.run())?);
    }
    eprintln!("forwarder: listening on {listen}, forwarding to {}, {} thread(s)", args.peer, threads.len());
    let mut total = Counters::default();
    let mut first_error = None;
    for thread in threads {
        match thread.join() {
            Ok(Ok(counters)) => total.add(&counters),
            Ok(Err(e)) => {
                shutdown.trigger();
                first_error.get_or_insert(e);
            }
            Err(_) => {
                shutdown.trigger();
                first_error.get_or_insert_with(|| io::Error::other("forwarder thread panicked"));
            }
        }
    }
    eprintln!(
        "forwarder: {} datagrams to the peer, {} to clients, {} dropped, {} upstream sockets opened",
        total.to_peer, total.to_clients, total.dropped, total.upstreams_opened
    );
    first_error.map_or(Ok(()), Err)
}

fn bind_listener(addr: SocketAddr, buffer: usize) -> io::Result<mio::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    let granted = tern::io::size_buffers(&socket, buffer)?;
    if granted < buffer {
        eprintln!("forwarder: asked for {buffer} B socket buffers, the kernel granted {granted} B (net.core.rmem_max)");
    }
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(mio::net::UdpSocket::from_std(socket.into()))
}

#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    to_peer: u64,
    to_clients: u64,
    /// Refused by the kernel, from an unexpected source, or without an upstream socket.
    dropped: u64,
    upstreams_opened: u64,
}

impl Counters {
    fn add(&mut self, other: &Self) {
        self.to_peer += other.to_peer;
        self.to_clients += other.to_clients;
        self.dropped += other.dropped;
        self.upstreams_opened += other.upstreams_opened;
    }
}

/// The socket one client's datagrams leave from, and where replies go.
struct Upstream {
    socket: mio::net::UdpSocket,
    client: SocketAddr,
    last_active: Instant,
}

/// One thread's event loop: a listening socket and its clients' upstreams.
struct Forwarder {
    poll: Poll,
    listener: mio::net::UdpSocket,
    /// Upstream sockets are bound to this address, port 0.
    upstream_bind: SocketAddr,
    peer: SocketAddr,
    idle_timeout: Duration,
    upstreams: Slab<Upstream>,
    by_client: HashMap<SocketAddr, usize>,
    batch: RecvBatch,
    scratch: SendScratch,
    /// (upstream, slot) of each datagram of a client batch.
    outbound: Vec<(usize, usize)>,
    /// Sockets whose budget ran out with data left, served next turn.
    pending: Vec<Token>,
    shutdown: Shutdown,
    counters: Counters,
    /// The clock, read once per loop turn.
    now: Instant,
    next_sweep: Instant,
}

impl Forwarder {
    fn new(mut listener: mio::net::UdpSocket, args: &Args, shutdown: &Shutdown) -> io::Result<Self> {
        let poll = Poll::new()?;
        shutdown.register(Arc::new(mio::Waker::new(poll.registry(), WAKER)?));
        poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
        let ip = match listener.local_addr()?.ip() {
            ip if !ip.is_unspecified() => ip,
            _ if args.peer.is_ipv4() => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            _ => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        };
        let now = clock::now();
        Ok(Self {
            poll,
            listener,
            upstream_bind: SocketAddr::new(ip, 0),
            peer: args.peer,
            idle_timeout: args.idle_timeout,
            upstreams: Slab::new(),
            by_client: HashMap::new(),
            batch: RecvBatch::new(SLOT, 0),
            scratch: SendScratch::default(),
            outbound: Vec::with_capacity(BATCH),
            pending: Vec::new(),
            shutdown: shutdown.clone(),
            counters: Counters::default(),
            now,
            next_sweep: now + SWEEP_PERIOD,
        })
    }

    fn run(mut self) -> io::Result<Counters> {
        let mut events = Events::with_capacity(1024);
        let mut ready = Vec::with_capacity(1024);
        while !self.shutdown.is_requested() {
            let timeout = if self.pending.is_empty() {
                self.next_sweep.saturating_duration_since(clock::now())
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.now = clock::now();
            ready.clear();
            ready.append(&mut self.pending);
            ready.extend(events.iter().map(|event| event.token()));
            for &token in &ready {
                match token {
                    WAKER => {}
                    LISTENER => self.drain_listener(),
                    Token(key) => self.drain_upstream(key),
                }
            }
            if self.now >= self.next_sweep {
                self.sweep();
            }
        }
        Ok(self.counters)
    }

    /// Client datagrams: each to the peer from its client's upstream socket,
    /// one `sendmmsg` per upstream socket per batch.
    fn drain_listener(&mut self) {
        let fd = self.listener.as_raw_fd();
        for _ in 0..BATCHES_PER_WAKE {
            let received = match self.batch.recv(fd) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                // An ICMP error queued on the socket; the next datagram is unaffected.
                Err(_) => continue,
            };
            self.outbound.clear();
            for slot in 0..received {
                match self.upstream_for(self.batch.meta(slot).source) {
                    Some(key) => self.outbound.push((key, slot)),
                    None => self.counters.dropped += 1,
                }
            }
            // A stable sort: each client's datagrams keep their order.
            self.outbound.sort_by_key(|&(key, _)| key);
            for run in self.outbound.chunk_by(|a, b| a.0 == b.0) {
                let upstream = &mut self.upstreams[run[0].0];
                upstream.last_active = self.now;
                let mut transmits = [UNUSED; BATCH];
                for (transmit, &(_, slot)) in transmits.iter_mut().zip(run) {
                    *transmit = Transmit::new(self.peer, None, self.batch.payload(slot));
                }
                let dropped = send_all(upstream.socket.as_raw_fd(), &transmits[..run.len()], &mut self.scratch);
                self.counters.to_peer += run.len() as u64 - dropped;
                self.counters.dropped += dropped;
            }
            if received < BATCH {
                return;
            }
        }
        self.pending.push(LISTENER);
    }

    /// Peer datagrams on one upstream socket: all to its client, one
    /// `sendmmsg` on the listening socket per batch.
    fn drain_upstream(&mut self, key: usize) {
        let Some(upstream) = self.upstreams.get_mut(key) else { return };
        upstream.last_active = self.now;
        let (fd, client) = (upstream.socket.as_raw_fd(), upstream.client);
        for _ in 0..BATCHES_PER_WAKE {
            let received = match self.batch.recv(fd) {
                Ok(received) => received,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(_) => continue,
            };
            let mut transmits = [UNUSED; BATCH];
            let mut count = 0;
            for slot in 0..received {
                // Only the peer may reach a client, as only permitted peers reach a TURN client.
                if self.batch.meta(slot).source != self.peer {
                    self.counters.dropped += 1;
                    continue;
                }
                transmits[count] = Transmit::new(client, None, self.batch.payload(slot));
                count += 1;
            }
            let dropped = send_all(self.listener.as_raw_fd(), &transmits[..count], &mut self.scratch);
            self.counters.to_clients += count as u64 - dropped;
            self.counters.dropped += dropped;
            if received < BATCH {
                return;
            }
        }
        self.pending.push(Token(key));
    }

    /// The upstream socket of `client`, opened on its first datagram.
    fn upstream_for(&mut self, client: SocketAddr) -> Option<usize> {
        if let Some(&key) = self.by_client.get(&client) {
            return Some(key);
        }
        let entry = self.upstreams.vacant_entry();
        let key = entry.key();
        let opened = mio::net::UdpSocket::bind(self.upstream_bind).and_then(|mut socket| {
            self.poll.registry().register(&mut socket, Token(key), Interest::READABLE).map(|()| socket)
        });
        match opened {
            Ok(socket) => {
                entry.insert(Upstream { socket, client, last_active: self.now });
                self.by_client.insert(client, key);
                self.counters.upstreams_opened += 1;
                Some(key)
            }
            Err(e) => {
                // Descriptors or ports ran out: drop this datagram, try again on the next.
                eprintln!("forwarder: cannot open an upstream socket for {client}: {e}");
                None
            }
        }
    }

    /// Closes upstream sockets idle for longer than the idle timeout.
    fn sweep(&mut self) {
        self.next_sweep = self.now + SWEEP_PERIOD;
        let (now, timeout) = (self.now, self.idle_timeout);
        let idle: Vec<usize> = self
            .upstreams
            .iter()
            .filter(|(_, upstream)| now.saturating_duration_since(upstream.last_active) >= timeout)
            .map(|(key, _)| key)
            .collect();
        for key in idle {
            let mut upstream = self.upstreams.remove(key);
            let _ = self.poll.registry().deregister(&mut upstream.socket);
            self.by_client.remove(&upstream.client);
        }
    }
}

/// Sends every datagram, retrying after partial sends; returns how many the
/// kernel refused (dropped, as UDP allows).
fn send_all(fd: RawFd, transmits: &[Transmit<'_>], scratch: &mut SendScratch) -> u64 {
    let (mut sent, mut dropped) = (0, 0);
    while sent < transmits.len() {
        match send_batch(fd, &transmits[sent..], scratch) {
            Ok(n) => sent += n.max(1),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => {
                dropped += 1;
                sent += 1;
            }
        }
    }
    dropped
}
