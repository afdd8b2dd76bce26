//! RFC 6062 on the client side: data connections (ConnectionBind) and
//! `tern turn --relay-transport tcp`, which allocates a TCP relay, connects
//! it to a TCP echo peer, binds a data connection, sends bytes through and
//! reads them back, and deletes the allocation.
//!
//! A data connection is a plain TCP connection to the server whose first
//! exchange is ConnectionBind; after its success response the stream
//! carries the peer's bytes unframed, so the response is read to its exact
//! length and not a byte further.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use super::ClientSocket;
use super::turn::{AuthState, Credentials, TurnError, TurnSession};
use crate::io::clock;
use crate::proto::Transport;
use crate::proto::stun::attr::{self, AttrType};
use crate::proto::stun::{Class, ErrorCode, HEADER_LEN, Message, MessageType, MessageWriter, Method, TransactionId};

/// Tries of one ConnectionBind: a stale nonce (438) gets one more.
const BIND_ATTEMPTS: usize = 2;
/// Bytes the probe sends through the relay and expects back.
const PROBE_BYTES: usize = 64 * 1024;
/// Connections the probe's own echo peer serves before it stops.
const ECHO_CONNECTIONS: usize = 1;

/// Opens a data connection to `server` and binds it to `connection_id`
/// with the control connection's credentials (RFC 6062 §4.4). Returns the
/// stream, which from now on carries the peer's bytes. A 438 updates the
/// nonce in `auth`.
pub fn connection_bind(
    server: SocketAddr,
    auth: &mut AuthState,
    connection_id: u32,
    timeout: Duration,
) -> Result<TcpStream, TurnError> {
    let mut stream = TcpStream::connect_timeout(&server, timeout)?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(timeout))?;
    for _ in 0..BIND_ATTEMPTS {
        let mut request = Vec::with_capacity(128);
        let tid = TransactionId::random();
        let mut w = MessageWriter::new(&mut request, MessageType::new(Method::CONNECTION_BIND, Class::Request), tid);
        w.attr_u32(AttrType::CONNECTION_ID, connection_id);
        auth.sign(&mut w);
        w.finish();
        stream.write_all(&request)?;
        let response = read_message(&mut stream)?;
        let message = Message::parse(&response).map_err(|e| TurnError::Invalid(e.to_string()))?;
        if message.transaction_id() != tid || message.method() != Method::CONNECTION_BIND {
            return Err(TurnError::Invalid("ConnectionBind answered with another message".into()));
        }
        if message.class() == Class::Success {
            if !auth.verify(&message) {
                return Err(TurnError::Integrity);
            }
            stream.set_read_timeout(None)?;
            return Ok(stream);
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

/// Reads one STUN message, exactly: its header, then the length it gives.
fn read_message(stream: &mut TcpStream) -> Result<Vec<u8>, TurnError> {
    let mut message = vec![0u8; HEADER_LEN];
    stream.read_exact(&mut message)?;
    let body = usize::from(u16::from_be_bytes([message[2], message[3]]));
    message.resize(HEADER_LEN + body, 0);
    stream.read_exact(&mut message[HEADER_LEN..])?;
    Ok(message)
}

/// `tern turn --relay-transport tcp`.
#[derive(Clone, Debug)]
pub struct TcpRelayProbe {
    pub server: SocketAddr,
    pub credentials: Credentials,
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
        let socket = ClientSocket::open(self.server, Transport::Tcp, self.timeout)
            .map_err(|e| format!("cannot reach {} over tcp: {e}", self.server))?;
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
        let mut data =
            connection_bind(self.server, &mut auth, id, self.timeout).map_err(|e| step_error("connection bind", &e))?;
        line(out, "connection bind", started, "data connection bound")?;

        let started = clock::now();
        echo_round_trip(&mut data, PROBE_BYTES, self.timeout)?;
        line(out, "tcp data", started, &format!("{PROBE_BYTES} bytes round trip through the relay"))?;
        let _ = data.shutdown(Shutdown::Both);

        let started = clock::now();
        session.refresh(0).map_err(|e| step_error("refresh", &e))?;
        line(out, "delete", started, "refresh with lifetime 0")?;
        Ok(())
    }
}

/// Sends `len` patterned bytes over `stream` in chunks and checks that the
/// same bytes come back, writing and reading in turn so neither side's
/// buffers need to hold it all.
pub fn echo_round_trip(stream: &mut TcpStream, len: usize, timeout: Duration) -> Result<(), String> {
    const CHUNK: usize = 16 * 1024;
    let pattern = |i: usize| (i.wrapping_mul(31) ^ (i >> 8)) as u8;
    stream.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
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
            stream.write_all(&chunk).map_err(|e| format!("echo: write: {e}"))?;
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
