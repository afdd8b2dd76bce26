//! Relay mode: allocations set up in parallel, then data through them to the
//! echo peer and back, paced open-loop or closed-loop, on client threads
//! that each run an event loop over their share of the allocations.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use mio::{Events, Interest, Poll, Token};

use super::{
    CpuMeter, EchoPeer, LoadConfig, MIN_PAYLOAD, Mode, Pacing, Percentiles, RelayReport, Report, SetupReport,
    failure_key, read_payload, write_payload,
};
use crate::client::ClientSocket;
use crate::client::turn::{AuthState, TurnSession};
use crate::io::clock;
use crate::io::sys::batch::{BATCH, RecvBatch, SendScratch, Transmit, send_batch};
use crate::proto::channel_data::{self, ChannelData, ChannelNumber};
use crate::proto::demux::{self, PacketKind, StreamFramer};
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{
    Class, ErrorCode, HEADER_LEN, Message, MessageType, MessageWriter, Method, TransactionId, indication,
};
use crate::proto::{Transport, server::PEER_HEADROOM};

/// The channel every allocation binds (channels are per allocation).
const CHANNEL: u16 = 0x4000;
/// Lifetime asked for, and how often it, the permission and the channel are
/// refreshed on long runs (well inside the 300 s permission lifetime).
const LIFETIME: u32 = 600;
const MAINTENANCE_PERIOD: Duration = Duration::from_secs(120);
/// Most allocations set up at once.
const SETUP_THREADS: usize = 64;
/// How long to wait for packets still in flight after the last send.
const DRAIN: Duration = Duration::from_secs(1);
/// Most packets one thread sends in one go when catching up, so receiving
/// is never starved.
const SEND_BURST: usize = 1024;
/// Receive events handled between two looks at the send schedule.
const SEND_CHECK_EVERY: usize = 32;
/// Receive and send buffer of every client socket: a burst the kernel drops
/// here would count as loss of the server under test.
pub const SOCKET_BUFFER: usize = 4 * 1024 * 1024;
/// Attempts, and the wait between them, to delete each allocation at the end.
const DELETE_ATTEMPTS: usize = 5;
const DELETE_WAIT: Duration = Duration::from_millis(300);
/// RTTs above this are recorded as this (the histogram's range).
const MAX_RTT_NS: u64 = 60_000_000_000;
/// The largest payload every frame can carry: a Send indication to an IPv6
/// peer, whose padded attributes must fit STUN's 16-bit length.
const MAX_PAYLOAD: usize = (u16::MAX as usize - (indication::MAX_HEADER_LEN - HEADER_LEN)) & !3;

/// An allocation ready to carry data.
struct Prepared {
    index: u32,
    conn: PreparedConn,
    peer: SocketAddr,
    auth: Option<AuthState>,
}

enum PreparedConn {
    Udp(std::net::UdpSocket),
    Tcp(std::net::TcpStream, StreamFramer),
}

pub fn run(config: &LoadConfig, report: &mut Report) -> Result<(), String> {
    let Mode::Relay { allocations, pacing, size, send_indication, peer, peer_listen, peer_threads, raw, client_ips } =
        config.mode.clone()
    else {
        unreachable!("relay::run is called for relay mode");
    };
    if size < MIN_PAYLOAD {
        return Err(format!(
            "--size must be at least {MIN_PAYLOAD} bytes (the payload carries a sequence number and timestamp)"
        ));
    }
    if size > MAX_PAYLOAD {
        return Err(format!(
            "--size must be at most {MAX_PAYLOAD} bytes (what a ChannelData frame or Send indication holds)"
        ));
    }
    report.mode = match pacing {
        Pacing::Rate(rate) => format!("{allocations} allocations, {rate} pps each, {size} B"),
        Pacing::Window(window) => format!("{allocations} allocations, window {window}, {size} B"),
    } + if raw {
        ", raw UDP (no TURN)"
    } else if send_indication {
        ", Send/Data indications"
    } else {
        ", channels"
    };
    if raw && config.transport != Transport::Udp {
        return Err("--raw runs over UDP".into());
    }

    let echo = match peer {
        Some(_) => None,
        None => {
            let loopback = if config.server.is_ipv4() { "127.0.0.1:0" } else { "[::1]:0" };
            let bind = peer_listen.unwrap_or_else(|| loopback.parse().expect("loopback literal"));
            let echo = EchoPeer::start(bind, peer_threads)
                .map_err(|e| format!("cannot start the echo peer on {bind}: {e}"))?;
            Some(echo)
        }
    };
    let peer = match (&echo, peer) {
        (Some(echo), _) => echo.addr(),
        (None, Some(peer)) => peer,
        (None, None) => unreachable!("one of the two is set"),
    };

    let (prepared, setup) = setup(config, peer, allocations, send_indication, raw, &client_ips);
    report.setup = Some(setup);
    if prepared.is_empty() {
        if let Some(echo) = echo {
            echo.stop();
        }
        return Err("no allocation could be set up".into());
    }

    let shared = Shared {
        config: config.clone(),
        pacing,
        size,
        send_indication,
        raw,
        base: clock::now(),
        stop_sending: AtomicBool::new(false),
        stop: AtomicBool::new(false),
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
    };
    let threads = config.threads.clamp(1, prepared.len());
    let mut per_thread: Vec<Vec<Prepared>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, p) in prepared.into_iter().enumerate() {
        per_thread[i % threads].push(p);
    }
    let meter = CpuMeter::start(config.server_pid)?;
    let peer_before = echo.as_ref().map_or(0, EchoPeer::received);
    let started = clock::now();
    let results: Vec<Result<ThreadResult, String>> = std::thread::scope(|scope| {
        let shared = &shared;
        let handles: Vec<_> =
            per_thread.into_iter().map(|flows| scope.spawn(move || client_thread(shared, flows))).collect();
        progress(shared, config, started);
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err("client thread panicked".into()))).collect()
    });
    let wall = clock::now() - started;
    let to_peer = echo.as_ref().map(|e| e.received() - peer_before);
    if let Some(echo) = echo {
        echo.stop();
    }

    let mut histogram = new_histogram();
    let (mut sent, mut received, mut bytes) = (0u64, 0u64, 0u64);
    for result in results {
        let result = result?;
        histogram.add(&result.histogram).map_err(|e| e.to_string())?;
        sent += result.sent;
        received += result.received;
        bytes += result.received * size as u64;
    }
    let send_window = config.duration.as_secs_f64().max(1e-9);
    let ms = |q: f64| histogram.value_at_quantile(q) as f64 / 1e6;
    let lost = sent.saturating_sub(received);
    report.relay = Some(RelayReport {
        size,
        sent,
        to_peer,
        to_client: received,
        to_peer_pps: to_peer.map(|n| n as f64 / send_window),
        to_client_pps: received as f64 / send_window,
        to_client_mbit_s: bytes as f64 * 8.0 / 1e6 / send_window,
        lost,
        loss_percent: if sent > 0 { lost as f64 * 100.0 / sent as f64 } else { 0.0 },
        rtt_ms: Percentiles {
            p50: ms(0.5),
            p90: ms(0.9),
            p99: ms(0.99),
            p999: ms(0.999),
            max: histogram.max() as f64 / 1e6,
        },
    });
    let delivered = received + to_peer.unwrap_or(received);
    report.server_cpu = meter.finish(wall, delivered as f64)?;
    Ok(())
}

/// Allocate, then a permission or a channel, for each allocation; in raw
/// mode just a socket.
fn setup(
    config: &LoadConfig,
    peer: SocketAddr,
    count: usize,
    send_indication: bool,
    raw: bool,
    client_ips: &[IpAddr],
) -> (Vec<Prepared>, SetupReport) {
    let started = clock::now();
    let prepared = Mutex::new(Vec::with_capacity(count));
    let failures: Mutex<BTreeMap<String, u64>> = Mutex::default();
    let threads = SETUP_THREADS.min(count).max(1);
    std::thread::scope(|scope| {
        for thread in 0..threads {
            let (prepared, failures) = (&prepared, &failures);
            scope.spawn(move || {
                for index in (thread..count).step_by(threads) {
                    let local = (!client_ips.is_empty()).then(|| client_ips[index % client_ips.len()]);
                    let outcome = if raw {
                        raw_socket(config, local, index as u32, peer)
                    } else {
                        prepare(config, local, index as u32, peer, send_indication)
                    };
                    match outcome {
                        Ok(p) => lock(prepared).push(p),
                        Err(key) => *lock(failures).entry(key).or_default() += 1,
                    }
                }
            });
        }
    });
    let seconds = (clock::now() - started).as_secs_f64();
    let mut prepared = prepared.into_inner().unwrap_or_else(|p| p.into_inner());
    prepared.sort_by_key(|p| p.index);
    let succeeded = prepared.len();
    let report = SetupReport {
        requested: count,
        succeeded,
        seconds,
        per_second: succeeded as f64 / seconds.max(1e-9),
        failures: failures.into_inner().unwrap_or_else(|p| p.into_inner()),
    };
    (prepared, report)
}

fn prepare(
    config: &LoadConfig,
    local: Option<IpAddr>,
    index: u32,
    peer: SocketAddr,
    send_indication: bool,
) -> Result<Prepared, String> {
    let socket = ClientSocket::open_from(local, config.server, config.transport, config.timeout)
        .map_err(|_| "connect".to_owned())?;
    let mut session = TurnSession::new(socket, config.credentials.clone(), config.timeout);
    session.allocate(Some(LIFETIME)).map_err(|e| failure_key(&e))?;
    if send_indication {
        session.create_permission(&[peer]).map_err(|e| failure_key(&e))?;
    } else {
        session.channel_bind(CHANNEL, peer).map_err(|e| failure_key(&e))?;
    }
    let (socket, auth) = session.into_parts();
    let conn = match config.transport {
        Transport::Udp => PreparedConn::Udp(socket.into_udp().ok_or("udp")?),
        _ => {
            let (stream, inbuf) = socket.into_tcp().ok_or("tcp")?;
            PreparedConn::Tcp(stream, inbuf)
        }
    };
    Ok(Prepared { index, conn, peer, auth })
}

fn raw_socket(config: &LoadConfig, local: Option<IpAddr>, index: u32, peer: SocketAddr) -> Result<Prepared, String> {
    let unspecified = if config.server.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) };
    let bind = SocketAddr::new(local.unwrap_or(unspecified), 0);
    let socket = std::net::UdpSocket::bind(bind).map_err(|_| "io".to_owned())?;
    Ok(Prepared { index, conn: PreparedConn::Udp(socket), peer, auth: None })
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// What the client threads share.
struct Shared {
    config: LoadConfig,
    pacing: Pacing,
    size: usize,
    send_indication: bool,
    raw: bool,
    /// Timestamps in payloads are nanoseconds since this.
    base: Instant,
    stop_sending: AtomicBool,
    stop: AtomicBool,
    sent: AtomicU64,
    received: AtomicU64,
}

impl Shared {
    fn now_ns(&self) -> u64 {
        u64::try_from((clock::now() - self.base).as_nanos()).unwrap_or(u64::MAX)
    }
}

/// Prints progress once a second while the run lasts, and tells the threads
/// when to stop sending and when to stop.
fn progress(shared: &Shared, config: &LoadConfig, started: Instant) {
    let bar = if config.progress { indicatif::ProgressBar::new_spinner() } else { indicatif::ProgressBar::hidden() };
    let end = started + config.duration;
    let (mut last_sent, mut last_received, mut last) = (0, 0, started);
    while clock::now() < end {
        std::thread::sleep(Duration::from_millis(200).min(end.saturating_duration_since(clock::now())));
        let now = clock::now();
        if now - last >= Duration::from_secs(1) {
            let (sent, received) = (shared.sent.load(Ordering::Relaxed), shared.received.load(Ordering::Relaxed));
            let secs = (now - last).as_secs_f64();
            bar.set_message(format!(
                "{:>5.1} s  sent {sent}  received {received}  {:.0} pps out, {:.0} pps back",
                (now - started).as_secs_f64(),
                (sent - last_sent) as f64 / secs,
                (received - last_received) as f64 / secs
            ));
            bar.tick();
            (last_sent, last_received, last) = (sent, received, now);
        }
    }
    shared.stop_sending.store(true, Ordering::Relaxed);
    let drain_end = clock::now() + DRAIN;
    while clock::now() < drain_end && shared.received.load(Ordering::Relaxed) < shared.sent.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(10));
    }
    shared.stop.store(true, Ordering::Relaxed);
    bar.finish_and_clear();
}

/// Open-loop pacing: packet k of a thread is due at start + k / total rate,
/// to flow k mod n.
struct Schedule {
    start: Instant,
    total_rate: f64,
    base: Instant,
}

impl Schedule {
    fn due_at(&self, packet: u64) -> Instant {
        self.start + Duration::from_secs_f64(packet as f64 / self.total_rate)
    }

    /// Sends every packet already due, up to a burst.
    fn send_due(&self, shared: &Shared, state: &mut ThreadState, flows: &mut [Flow], next_packet: &mut u64) {
        let now = clock::now();
        for _ in 0..SEND_BURST {
            let intended = self.due_at(*next_packet);
            if intended > now {
                break;
            }
            let flow = (*next_packet % flows.len() as u64) as usize;
            // The intended send time, not the actual one: a late send shows
            // up as latency.
            let timestamp = u64::try_from((intended - self.base).as_nanos()).unwrap_or(u64::MAX);
            state.send(shared, &mut flows[flow], timestamp);
            *next_packet += 1;
        }
    }

    /// How long to wait for the next packet to fall due.
    fn until_due(&self, next_packet: u64) -> Duration {
        self.due_at(next_packet).saturating_duration_since(clock::now()).min(Duration::from_millis(20))
    }
}

struct ThreadResult {
    histogram: Histogram<u64>,
    sent: u64,
    received: u64,
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_RTT_NS, 3).expect("valid histogram bounds")
}

/// One allocation on a client thread.
struct Flow {
    index: u32,
    conn: Conn,
    peer: SocketAddr,
    auth: Option<AuthState>,
    sequence: u64,
}

enum Conn {
    Udp(mio::net::UdpSocket),
    Tcp { stream: mio::net::TcpStream, inbuf: StreamFramer, outbuf: Vec<u8> },
}

/// A client thread: an event loop over its flows.
fn client_thread(shared: &Shared, prepared: Vec<Prepared>) -> Result<ThreadResult, String> {
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut flows = Vec::with_capacity(prepared.len());
    for (slot, p) in prepared.into_iter().enumerate() {
        let conn = match p.conn {
            PreparedConn::Udp(socket) => {
                socket.connect(shared.config.server).map_err(|e| e.to_string())?;
                crate::io::size_buffers(&socket2::SockRef::from(&socket), SOCKET_BUFFER).map_err(|e| e.to_string())?;
                socket.set_nonblocking(true).map_err(|e| e.to_string())?;
                let mut socket = mio::net::UdpSocket::from_std(socket);
                poll.registry().register(&mut socket, Token(slot), Interest::READABLE).map_err(|e| e.to_string())?;
                Conn::Udp(socket)
            }
            PreparedConn::Tcp(stream, inbuf) => {
                stream.set_nonblocking(true).map_err(|e| e.to_string())?;
                let mut stream = mio::net::TcpStream::from_std(stream);
                poll.registry()
                    .register(&mut stream, Token(slot), Interest::READABLE | Interest::WRITABLE)
                    .map_err(|e| e.to_string())?;
                Conn::Tcp { stream, inbuf, outbuf: Vec::new() }
            }
        };
        flows.push(Flow { index: p.index, conn, peer: p.peer, auth: p.auth, sequence: 0 });
    }
    let mut state = ThreadState {
        counters: Counters {
            histogram: new_histogram(),
            sent: 0,
            received: 0,
            sent_since_report: 0,
            received_since_report: 0,
        },
        frame: Vec::with_capacity((shared.size + 64) * BATCH),
        frame_ends: Vec::with_capacity(BATCH),
        batch: RecvBatch::new(65536 + PEER_HEADROOM, 0),
        scratch: SendScratch::default(),
        chunk: vec![0; 65536],
    };
    let mut events = Events::with_capacity(1024);
    let start = clock::now();
    let mut next_maintenance = start + MAINTENANCE_PERIOD;
    // Open loop: packet k of this thread is due at start + k / total rate.
    let total_rate = match shared.pacing {
        Pacing::Rate(rate) => rate * flows.len() as f64,
        Pacing::Window(_) => 0.0,
    };
    let mut next_packet: u64 = 0;
    if let Pacing::Window(window) = shared.pacing {
        for flow in &mut flows {
            state.send_many(shared, flow, window);
        }
    }
    let schedule = Schedule { start, total_rate, base: shared.base };
    while !shared.stop.load(Ordering::Relaxed) {
        let sending = !shared.stop_sending.load(Ordering::Relaxed);
        let paced = sending && total_rate > 0.0;
        if paced {
            schedule.send_due(shared, &mut state, &mut flows, &mut next_packet);
        }
        if sending && clock::now() >= next_maintenance {
            next_maintenance += MAINTENANCE_PERIOD;
            for flow in &mut flows {
                state.maintain(shared, flow);
            }
        }
        let timeout = if paced { schedule.until_due(next_packet) } else { Duration::from_millis(20) };
        poll.poll(&mut events, Some(timeout))
            .or_else(|e| if e.kind() == io::ErrorKind::Interrupted { Ok(()) } else { Err(e.to_string()) })?;
        for (i, event) in events.iter().enumerate() {
            let flow = &mut flows[event.token().0];
            state.receive(shared, flow, sending);
            // Receiving many sockets takes time; packets that fall due
            // meanwhile go out now rather than at the next turn.
            if paced && i % SEND_CHECK_EVERY == SEND_CHECK_EVERY - 1 {
                schedule.send_due(shared, &mut state, &mut flows, &mut next_packet);
            }
        }
        shared.sent.fetch_add(std::mem::take(&mut state.counters.sent_since_report), Ordering::Relaxed);
        shared.received.fetch_add(std::mem::take(&mut state.counters.received_since_report), Ordering::Relaxed);
    }
    delete_all(&mut poll, &mut flows, &mut events);
    let Counters { histogram, sent, received, .. } = state.counters;
    Ok(ThreadResult { histogram, sent, received })
}

/// What a thread measures.
struct Counters {
    histogram: Histogram<u64>,
    sent: u64,
    received: u64,
    sent_since_report: u64,
    received_since_report: u64,
}

/// A thread's counters and reusable buffers: nothing is allocated per packet.
struct ThreadState {
    counters: Counters,
    /// Frames about to be sent on one flow, back to back, and where each ends.
    frame: Vec<u8>,
    frame_ends: Vec<usize>,
    batch: RecvBatch,
    scratch: SendScratch,
    chunk: Vec<u8>,
}

impl ThreadState {
    /// Sends the flow's next payload as ChannelData or a Send indication.
    fn send(&mut self, shared: &Shared, flow: &mut Flow, timestamp_ns: u64) {
        self.write_frame(shared, flow, timestamp_ns);
        self.send_frames(shared, flow);
    }

    /// Sends `count` payloads on one flow: one `sendmmsg` per 32 over UDP,
    /// one write over TCP.
    fn send_many(&mut self, shared: &Shared, flow: &mut Flow, count: u32) {
        for _ in 0..count {
            let timestamp = shared.now_ns();
            self.write_frame(shared, flow, timestamp);
            if self.frame_ends.len() == BATCH {
                self.send_frames(shared, flow);
            }
        }
        self.send_frames(shared, flow);
    }

    /// Appends the flow's next frame to the pending frames.
    fn write_frame(&mut self, shared: &Shared, flow: &mut Flow, timestamp_ns: u64) {
        let start = self.frame.len();
        let size = shared.size;
        if shared.raw {
            self.frame.resize(start + size, 0);
            write_payload(&mut self.frame[start..], flow.index, flow.sequence, timestamp_ns);
        } else {
            let fill = |payload: &mut [u8]| write_payload(payload, flow.index, flow.sequence, timestamp_ns);
            let written = if shared.send_indication {
                indication::append_with(
                    &mut self.frame,
                    indication::Kind::Send,
                    &flow.peer,
                    TransactionId::random(),
                    size,
                    fill,
                )
            } else {
                let channel = ChannelNumber::new(CHANNEL).expect("0x4000 is a valid channel");
                channel_data::append_with(&mut self.frame, channel, size, matches!(flow.conn, Conn::Tcp { .. }), fill)
            };
            written.expect("--size is checked against MAX_PAYLOAD");
        }
        flow.sequence += 1;
        self.frame_ends.push(self.frame.len());
    }

    /// Sends the pending frames and counts those the socket took.
    fn send_frames(&mut self, shared: &Shared, flow: &mut Flow) {
        let sent = match &mut flow.conn {
            Conn::Udp(socket) => {
                let unused = Transmit::new(shared.config.server, None, &[]);
                let mut transmits = [unused; BATCH];
                let mut start = 0;
                for (transmit, &end) in transmits.iter_mut().zip(&self.frame_ends) {
                    *transmit = Transmit::new(shared.config.server, None, &self.frame[start..end]);
                    start = end;
                }
                let count = self.frame_ends.len().min(BATCH);
                // What the socket did not take is a client-side drop.
                send_batch(socket.as_raw_fd(), &transmits[..count], &mut self.scratch).unwrap_or(0)
            }
            Conn::Tcp { stream, outbuf, .. } => {
                outbuf.extend_from_slice(&self.frame);
                if flush(stream, outbuf).is_ok() { self.frame_ends.len() } else { 0 }
            }
        };
        self.counters.sent += sent as u64;
        self.counters.sent_since_report += sent as u64;
        self.frame.clear();
        self.frame_ends.clear();
    }

    /// Reads what the flow's socket has; in window mode each echo is
    /// answered with the next packet.
    fn receive(&mut self, shared: &Shared, flow: &mut Flow, sending: bool) {
        let mut echoes = 0u32;
        let mut responses: Vec<Vec<u8>> = Vec::new();
        match &mut flow.conn {
            Conn::Udp(socket) => {
                while let Ok(count) = self.batch.recv(socket.as_raw_fd()) {
                    for i in 0..count {
                        let datagram = self.batch.payload(i);
                        let kind = if shared.raw {
                            self.counters.read_payload(shared, datagram)
                        } else {
                            self.counters.read_frame(shared, datagram)
                        };
                        match kind {
                            FrameKind::Echo => echoes += 1,
                            FrameKind::Response(bytes) => responses.push(bytes),
                            FrameKind::Other => {}
                        }
                    }
                    // A short batch emptied the socket; asking again would
                    // only hear "would block".
                    if count < BATCH {
                        break;
                    }
                }
            }
            Conn::Tcp { stream, inbuf, outbuf } => {
                let _ = flush(stream, outbuf);
                loop {
                    match stream.read(&mut self.chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => inbuf.extend(&self.chunk[..n]),
                    }
                }
                while let Ok(Some(frame)) = inbuf.next_frame() {
                    match self.counters.read_frame(shared, frame) {
                        FrameKind::Echo => echoes += 1,
                        FrameKind::Response(bytes) => responses.push(bytes),
                        FrameKind::Other => {}
                    }
                }
            }
        }
        for response in responses {
            self.handle_response(shared, flow, &response);
        }
        if sending && matches!(shared.pacing, Pacing::Window(_)) {
            self.send_many(shared, flow, echoes);
        }
    }
}

impl Counters {
    /// Records an echo's round trip; control responses are handed back.
    fn read_frame(&mut self, shared: &Shared, frame: &[u8]) -> FrameKind {
        let payload = match demux::classify(frame) {
            PacketKind::ChannelData => match ChannelData::parse(frame) {
                Ok(data) => data.payload,
                Err(_) => return FrameKind::Other,
            },
            PacketKind::Stun => match Message::parse(frame) {
                Ok(message) if message.message_type() == MessageType::new(Method::DATA, Class::Indication) => {
                    match message.attribute(AttrType::DATA) {
                        Some(data) => data,
                        None => return FrameKind::Other,
                    }
                }
                Ok(message) if matches!(message.class(), Class::Success | Class::Error) => {
                    return FrameKind::Response(frame.to_vec());
                }
                _ => return FrameKind::Other,
            },
            PacketKind::Other => return FrameKind::Other,
        };
        self.read_payload(shared, payload)
    }

    /// Records the round trip of an echoed payload.
    fn read_payload(&mut self, shared: &Shared, payload: &[u8]) -> FrameKind {
        let Some((_, _, timestamp)) = read_payload(payload) else { return FrameKind::Other };
        let rtt = shared.now_ns().saturating_sub(timestamp).clamp(1, MAX_RTT_NS);
        let _ = self.histogram.record(rtt);
        self.received += 1;
        self.received_since_report += 1;
        FrameKind::Echo
    }
}

impl ThreadState {
    /// A 438 to a refresh means a new nonce: take it and refresh again.
    fn handle_response(&mut self, shared: &Shared, flow: &mut Flow, response: &[u8]) {
        let Ok(message) = Message::parse(response) else { return };
        if message.class() != Class::Error {
            return;
        }
        if let (Some(nonce), Some(auth)) = (stale_nonce(&message), flow.auth.as_mut()) {
            auth.nonce = nonce.to_vec();
            self.maintain(shared, flow);
        }
    }

    /// Refreshes the allocation and its permission or channel.
    fn maintain(&mut self, shared: &Shared, flow: &mut Flow) {
        let Some(auth) = &flow.auth else { return };
        let mut frames = Vec::new();
        for method in
            [Method::REFRESH, if shared.send_indication { Method::CREATE_PERMISSION } else { Method::CHANNEL_BIND }]
        {
            let mut request = Vec::new();
            let mut w =
                MessageWriter::new(&mut request, MessageType::new(method, Class::Request), TransactionId::random());
            match method {
                Method::REFRESH => {
                    w.attr_u32(AttrType::LIFETIME, LIFETIME);
                }
                Method::CHANNEL_BIND => {
                    w.attr(AttrType::CHANNEL_NUMBER, &[(CHANNEL >> 8) as u8, CHANNEL as u8, 0, 0]);
                    w.xor_address(AttrType::XOR_PEER_ADDRESS, &flow.peer);
                }
                _ => {
                    w.xor_address(AttrType::XOR_PEER_ADDRESS, &flow.peer);
                }
            }
            auth.sign(&mut w);
            frames.push(request);
        }
        for frame in frames {
            transmit(&mut flow.conn, &frame);
        }
    }
}

/// The fresh NONCE of a 438 Stale Nonce answer.
fn stale_nonce<'a>(message: &Message<'a>) -> Option<&'a [u8]> {
    let code = attr::read_error_code(message.attribute(AttrType::ERROR_CODE)?).ok()?;
    (code.code == ErrorCode::STALE_NONCE.0).then(|| message.attribute(AttrType::NONCE)).flatten()
}

/// Deletes every allocation with Refresh LIFETIME 0, sending again to those
/// not answered yet: a lost delete would leave an allocation (and, when its
/// client port is reused, a 437) behind for the lifetime.
fn delete_all(poll: &mut Poll, flows: &mut [Flow], events: &mut Events) {
    let mut waiting: Vec<Option<TransactionId>> = vec![None; flows.len()];
    let mut confirmed: Vec<bool> = flows.iter().map(|f| f.auth.is_none()).collect();
    let mut buf = vec![0u8; 65536];
    for _ in 0..DELETE_ATTEMPTS {
        for ((flow, waiting), done) in flows.iter_mut().zip(&mut waiting).zip(&confirmed) {
            let (false, Some(auth)) = (*done, &flow.auth) else { continue };
            let tid = TransactionId::random();
            let mut request = Vec::new();
            let mut w = MessageWriter::new(&mut request, MessageType::new(Method::REFRESH, Class::Request), tid);
            w.attr_u32(AttrType::LIFETIME, 0);
            auth.sign(&mut w);
            transmit(&mut flow.conn, &request);
            *waiting = Some(tid);
        }
        let deadline = clock::now() + DELETE_WAIT;
        while confirmed.contains(&false) && clock::now() < deadline {
            if poll.poll(events, Some(deadline.saturating_duration_since(clock::now()))).is_err() {
                break;
            }
            for event in events.iter() {
                let index = event.token().0;
                for frame in drain_frames(&mut flows[index].conn, &mut buf) {
                    let Ok(message) = Message::parse(&frame) else { continue };
                    if !matches!(message.class(), Class::Success | Class::Error)
                        || waiting[index] != Some(message.transaction_id())
                    {
                        continue;
                    }
                    // A 438 (the nonce aged out on a long run) is not an
                    // answer: the next attempt goes with the fresh nonce.
                    if let (Some(nonce), Some(auth)) = (stale_nonce(&message), flows[index].auth.as_mut()) {
                        auth.nonce = nonce.to_vec();
                        continue;
                    }
                    // Any other answer counts: a 437 means an earlier attempt got through.
                    confirmed[index] = true;
                }
            }
        }
        if !confirmed.contains(&false) {
            return;
        }
    }
}

/// The frames waiting on a connection, read without blocking.
fn drain_frames(conn: &mut Conn, buf: &mut [u8]) -> Vec<Vec<u8>> {
    let mut frames = Vec::new();
    match conn {
        Conn::Udp(socket) => {
            while let Ok(n) = socket.recv(buf) {
                frames.push(buf[..n].to_vec());
            }
        }
        Conn::Tcp { stream, inbuf, outbuf } => {
            let _ = flush(stream, outbuf);
            while let Ok(n) = stream.read(buf) {
                if n == 0 {
                    break;
                }
                inbuf.extend(&buf[..n]);
            }
            while let Ok(Some(frame)) = inbuf.next_frame() {
                frames.push(frame.to_vec());
            }
        }
    }
    frames
}

enum FrameKind {
    Echo,
    Response(Vec<u8>),
    Other,
}

/// Sends a frame; false when the socket would not take it (a UDP drop).
fn transmit(conn: &mut Conn, frame: &[u8]) -> bool {
    match conn {
        Conn::Udp(socket) => socket.send(frame).is_ok(),
        Conn::Tcp { stream, outbuf, .. } => {
            outbuf.extend_from_slice(frame);
            flush(stream, outbuf).is_ok()
        }
    }
}

fn flush(stream: &mut mio::net::TcpStream, outbuf: &mut Vec<u8>) -> io::Result<()> {
    let mut written = 0;
    while written < outbuf.len() {
        match stream.write(&outbuf[written..]) {
            Ok(0) => break,
            Ok(n) => written += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => {
                outbuf.drain(..written);
                return Err(e);
            }
        }
    }
    outbuf.drain(..written);
    Ok(())
}
