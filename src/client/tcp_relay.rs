//! RFC 6062 on the client side: data connections (ConnectionBind) and
//! `tern turn --relay-transport tcp`, which allocates a TCP relay, connects
//! it to a TCP echo peer, binds a data connection, sends bytes through and
//! reads them back, and deletes the allocation.
//!
//! A data connection is a new TCP (or, for a `turns:` client, TLS)
//! connection to the server whose first exchange is ConnectionBind; after
//! its success response the stream carries the peer's bytes unframed, so the
//! response is read to its exact length and not a byte further.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use rustls::{ClientConnection, StreamOwned};

use super::ClientSocket;
use super::tls::TlsClient;
use super::turn::{AuthState, Credentials, TurnError, TurnSession};
use crate::io::clock;
use crate::proto::Transport;
use crate::proto::demux::StreamFramer;
use crate::proto::error::ParseError;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{Class, ErrorCode, Message, MessageType, MessageWriter, Method, TransactionId};

/// Tries of one ConnectionBind: a stale nonce (438) gets one more.
const BIND_ATTEMPTS: usize = 2;
/// Bytes the probe sends through the relay and expects back.
const PROBE_BYTES: usize = 64 * 1024;
/// Connections the probe's own echo peer serves before it stops.
const ECHO_CONNECTIONS: usize = 1;

/// Opens a data connection to `server` and binds it to `connection_id`
/// with the control connection's credentials (RFC 6062 §4.4). Returns the
/// stream, which from now on carries the peer's bytes, with `timeout` as
/// its read timeout. A 438 updates the nonce in `auth`.
pub fn connection_bind(
    server: SocketAddr,
    auth: &mut AuthState,
    connection_id: u32,
    timeout: Duration,
) -> Result<TcpStream, TurnError> {
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    bind(&mut stream, auth, connection_id)?;
    Ok(stream)
}

/// [`connection_bind`] over TLS, for a client whose control connection is
/// TLS (`turns:`): the data connection is TLS too, and after the bind the
/// peer's bytes travel inside that session.
pub fn connection_bind_tls(
    server: SocketAddr,
    tls: &TlsClient,
    auth: &mut AuthState,
    connection_id: u32,
    timeout: Duration,
) -> Result<StreamOwned<ClientConnection, TcpStream>, TurnError> {
    let stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_nodelay(true)?;
    let mut stream = tls.connect(stream, timeout)?;
    bind(&mut stream, auth, connection_id)?;
    Ok(stream)
}

/// The ConnectionBind exchange on a fresh data connection.
fn bind(stream: &mut (impl Read + Write), auth: &mut AuthState, connection_id: u32) -> Result<(), TurnError> {
    for _ in 0..BIND_ATTEMPTS {
        let mut request = Vec::with_capacity(128);
        let tid = TransactionId::random();
        let mut w = MessageWriter::new(&mut request, MessageType::new(Method::CONNECTION_BIND, Class::Request), tid);
        w.attr_u32(AttrType::CONNECTION_ID, connection_id);
        auth.sign(&mut w);
        w.finish();
        stream.write_all(&request)?;
        stream.flush()?;
        let response = read_message(stream)?;
        let message = Message::parse(&response).map_err(|e| TurnError::Invalid(e.to_string()))?;
        if message.transaction_id() != tid || message.method() != Method::CONNECTION_BIND {
            return Err(TurnError::Invalid("ConnectionBind answered with another message".into()));
        }
        if message.class() == Class::Success {
            return if auth.verify(&message) { Ok(()) } else { Err(TurnError::Integrity) };
        }
        let error = message
            .attribute(AttrType::ERROR_CODE)
            .map(attr::read_error_code)
            .ok_or_else(|| TurnError::Invalid("error response without ERROR-CODE".into()))?
            .map_err(|e| TurnError::Invalid(e.to_string()))?;
        match message.attribute(AttrType::NONCE) {
            Some(nonce) if error.code == ErrorCode::STALE_NONCE.0 => auth.nonce = nonce.to_vec(),
            _ => return Err(TurnError::Rejected { code: error.code, reason: error.reason.to_owned() }),
        }
    }
    Err(TurnError::Rejected { code: ErrorCode::STALE_NONCE.0, reason: "nonce refused twice".into() })
}

/// Reads one frame, exactly: never a byte past it, which belongs to the peer.
fn read_message(stream: &mut impl Read) -> Result<Vec<u8>, TurnError> {
    let mut framer = StreamFramer::new();
    let invalid = |e: ParseError| TurnError::Invalid(e.to_string());
    loop {
        if let Some(frame) = framer.next_frame().map_err(invalid)? {
            return Ok(frame.to_vec());
        }
        let missing = framer.missing().map_err(invalid)?;
        stream.read_exact(framer.spare(missing))?;
        framer.commit(missing);
    }
}

/// `tern turn --relay-transport tcp`.
#[derive(Clone, Debug)]
pub struct TcpRelayProbe {
    pub server: SocketAddr,
    pub credentials: Credentials,
    /// TLS for the control and data connections (`turns:`), or plain TCP.
    pub tls: Option<TlsClient>,
    /// A TCP echo server to use as the peer, instead of one of our own.
    pub peer: Option<SocketAddr>,
    pub timeout: Duration,
}

impl TcpRelayProbe {
    /// Runs every step, printing one line each to `out`. Returns true when
    /// all succeeded.
    pub fn run(&self, out: &mut impl Write) -> std::io::Result<bool> {
        match self.steps(out) {
            Ok(()) => Ok(true),
            Err(message) => {
                writeln!(out, "FAILED: {message}")?;
                Ok(false)
            }
        }
    }

    fn steps(&self, out: &mut impl Write) -> Result<(), String> {
        let transport = if self.tls.is_some() { Transport::Tls } else { Transport::Tcp };
        let socket = ClientSocket::connect(self.server, transport, self.tls.as_ref(), self.timeout)
            .map_err(|e| format!("cannot reach {} over {transport}: {e}", self.server))?;
        let local_ip = socket.local_addr().map_err(|e| e.to_string())?.ip();
        let mut session = TurnSession::new(socket, self.credentials.clone(), self.timeout);
        let started = clock::now();
        // The relayed address is of the server's family, which is the peer's.
        let ipv6 = self.server.is_ipv6();
        let allocated = session.allocate_tcp(ipv6).map_err(|e| step_error("allocate (TCP)", &e))?;
        line(
            out,
            "allocate",
            started,
            &format!("relayed {} (tcp)  lifetime {} s", allocated.relayed, allocated.lifetime),
        )?;
        let peer = match self.peer {
            Some(peer) => peer,
            None => spawn_echo(SocketAddr::new(local_ip, 0)).map_err(|e| format!("cannot start the echo peer: {e}"))?,
        };
        let result = self.relay_steps(out, &mut session, peer);
        if result.is_err() {
            // Do not leave the allocation behind for its lifetime.
            let _ = session.refresh(0);
        }
        result
    }

    fn relay_steps(&self, out: &mut impl Write, session: &mut TurnSession, peer: SocketAddr) -> Result<(), String> {
        let started = clock::now();
        let id = session.connect(peer).map_err(|e| step_error("connect", &e))?;
        line(out, "connect", started, &format!("peer {peer}  connection id {id:#010x}"))?;

        let started = clock::now();
        let mut auth = session.auth().cloned().ok_or("no credentials learnt from the server")?;
        let bound: Result<Box<dyn ReadWrite>, TurnError> = match &self.tls {
            Some(tls) => connection_bind_tls(self.server, tls, &mut auth, id, self.timeout).map(|s| Box::new(s) as _),
            None => connection_bind(self.server, &mut auth, id, self.timeout).map(|s| Box::new(s) as _),
        };
        let mut data = bound.map_err(|e| step_error("connection bind", &e))?;
        line(out, "connection bind", started, "data connection bound")?;

        let started = clock::now();
        echo_round_trip(&mut data, PROBE_BYTES, self.timeout)?;
        line(out, "tcp data", started, &format!("{PROBE_BYTES} bytes round trip through the relay"))?;
        // Closing the data connection ends the peer's too (RFC 6062 §5.5).
        drop(data);

        let started = clock::now();
        session.refresh(0).map_err(|e| step_error("refresh", &e))?;
        line(out, "delete", started, "refresh with lifetime 0")?;
        Ok(())
    }
}

/// A data connection, plain or TLS.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// Sends `len` patterned bytes over `stream` in chunks and checks that the
/// same bytes come back, writing and reading in turn so neither side's
/// buffers need to hold it all. Reads wait at most the stream's own read
/// timeout, which [`connection_bind`] sets.
pub fn echo_round_trip(stream: &mut (impl Read + Write), len: usize, timeout: Duration) -> Result<(), String> {
    const CHUNK: usize = 16 * 1024;
    let pattern = |i: usize| (i.wrapping_mul(31) ^ (i >> 8)) as u8;
    let deadline = clock::now() + timeout.max(Duration::from_secs(1)) * 4;
    let mut received = vec![0u8; CHUNK];
    let mut sent = 0;
    let mut checked = 0;
    while checked < len {
        if clock::now() >= deadline {
            return Err(format!("echo: {checked} of {len} bytes back before the deadline"));
        }
        if sent < len && sent - checked < CHUNK * 4 {
            let chunk: Vec<u8> = (sent..(sent + CHUNK).min(len)).map(pattern).collect();
            stream.write_all(&chunk).and_then(|()| stream.flush()).map_err(|e| format!("echo: write: {e}"))?;
            sent += chunk.len();
            continue;
        }
        let n = stream.read(&mut received).map_err(|e| format!("echo: read after {checked} bytes: {e}"))?;
        if n == 0 {
            return Err(format!("echo: the relay closed the data connection after {checked} of {len} bytes"));
        }
        if let Some(offset) = (0..n).find(|&i| received[i] != pattern(checked + i)) {
            return Err(format!("echo: byte {} differs", checked + offset));
        }
        checked += n;
    }
    Ok(())
}

/// A TCP echo server on `addr` in a thread of its own, for
/// [`ECHO_CONNECTIONS`] connections; returns its address.
fn spawn_echo(addr: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming().take(ECHO_CONNECTIONS) {
            let Ok(mut stream) = stream else { continue };
            let mut reader = match stream.try_clone() {
                Ok(reader) => reader,
                Err(_) => continue,
            };
            // Ends when the relay closes the connection.
            let _ = std::io::copy(&mut reader, &mut stream);
        }
    });
    Ok(bound)
}

fn line(out: &mut impl Write, step: &str, started: Instant, detail: &str) -> Result<(), String> {
    let ms = (clock::now() - started).as_secs_f64() * 1e3;
    writeln!(out, "{step:<18} ok  {ms:>8.3} ms  {detail}").map_err(|e| e.to_string())
}

/// A failed step, with what RFC 6062's codes mean for an operator.
fn step_error(step: &str, error: &TurnError) -> String {
    let hint = match error.code() {
        Some(400) => "the server refused the request as malformed (TCP relays need a TCP connection to the server)",
        Some(403) => "the server's peer policy refuses this peer (see allow_peers)",
        Some(442) => "the server does not relay TCP (RFC 6062)",
        Some(446) => "the allocation already has a connection to this peer",
        Some(447) => "the server could not connect to the peer (refused or timed out)",
        Some(508) => "the server is out of capacity (relay ports, or peer connections of the allocation)",
        _ => "",
    };
    if hint.is_empty() { format!("{step}: {error}") } else { format!("{step}: {error}: {hint}") }
}
