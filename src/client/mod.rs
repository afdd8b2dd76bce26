//! The bundled client: probes and tools an operator runs against a STUN/TURN
//! server (tern or any other). It shares the codec with the server, never the
//! server itself, and its transaction timing is sans-IO ([`transaction`]).
//!
//! The probes use blocking sockets with deadlines: one request at a time is
//! what they do, and a thread per probe is simpler than an event loop.

pub mod admin;
pub mod credentials;
pub mod doctor;
pub mod load;
pub mod nat;
pub mod relay_probe;
pub mod stun;
pub mod tcp_relay;
pub mod tls;
pub mod transaction;
pub mod turn;

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use crate::io::clock;
use crate::proto::Transport;
use crate::proto::demux::StreamFramer;
use crate::proto::stun::{HEADER_LEN, Message, TransactionId};
use rustls::{ClientConnection, StreamOwned};
use tls::TlsClient;
use transaction::{TimerAction, Transaction};

/// The STUN/TURN port when none is given (RFC 8489 §18.4, RFC 8656 §18).
pub const DEFAULT_PORT: u16 = 3478;

/// Splits a `stun:`, `stuns:`, `turn:` or `turns:` scheme off; true for the
/// TLS ones (RFC 7064, RFC 7065).
pub fn strip_scheme(text: &str) -> (&str, bool) {
    for (scheme, secure) in [("stuns:", true), ("turns:", true), ("stun:", false), ("turn:", false)] {
        if let Some(rest) = text.strip_prefix(scheme) {
            return (rest, secure);
        }
    }
    (text, false)
}

/// Whether `text` is a `stuns:` or `turns:` URI.
pub fn is_secure_uri(text: &str) -> bool {
    strip_scheme(text).1
}

/// Splits `HOST[:PORT]` into the host (an IPv6 literal without its
/// brackets) and the port's text, if there is one. A bare IPv6 literal has
/// no port.
pub fn split_host_port(text: &str) -> (&str, Option<&str>) {
    if let Some((host, after)) = text.strip_prefix('[').and_then(|rest| rest.split_once(']')) {
        return (host, after.strip_prefix(':'));
    }
    if text.parse::<std::net::Ipv6Addr>().is_ok() {
        return (text, None);
    }
    match text.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (text, None),
    }
}

/// Resolves `SERVER[:PORT]`, also accepting `stun:` and `turn:` URIs as they
/// appear in `iceServers` (a `?transport=` suffix is ignored here).
pub fn resolve_server(text: &str) -> io::Result<SocketAddr> {
    resolve_server_with_port(text, DEFAULT_PORT)
}

/// Like [`resolve_server`], with `default_port` when none is given (5349
/// for TLS).
pub fn resolve_server_with_port(text: &str, default_port: u16) -> io::Result<SocketAddr> {
    let text = strip_scheme(text).0;
    let text = text.split('?').next().unwrap_or(text);
    if let Ok(addr) = text.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if let Ok(ip) = text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, default_port));
    }
    let with_port = if text.contains(':') { text.to_owned() } else { format!("{text}:{default_port}") };
    with_port
        .to_socket_addrs()?
        .next()
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{text}: no address found")))
}

/// Why a request got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum TransactError {
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// A client's connection to one server over UDP, TCP or TLS.
pub struct ClientSocket {
    server: SocketAddr,
    kind: Kind,
}

enum Kind {
    Udp(UdpSocket),
    Tcp { stream: TcpStream, inbuf: StreamFramer },
    Tls { stream: Box<StreamOwned<ClientConnection, TcpStream>>, inbuf: StreamFramer },
}

impl ClientSocket {
    /// Opens a socket to `server`; over TCP this connects within `timeout`.
    /// TLS needs its settings: use [`Self::open_tls`] or [`Self::connect`].
    pub fn open(server: SocketAddr, transport: Transport, timeout: Duration) -> io::Result<Self> {
        Self::open_from(None, server, transport, timeout)
    }

    /// Like [`Self::open`], from the local address `local` when given.
    pub fn open_from(
        local: Option<IpAddr>,
        server: SocketAddr,
        transport: Transport,
        timeout: Duration,
    ) -> io::Result<Self> {
        let unspecified = if server.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) };
        let local = SocketAddr::new(local.unwrap_or(unspecified), 0);
        let kind = match transport {
            Transport::Udp => Kind::Udp(UdpSocket::bind(local)?),
            Transport::Tcp => Kind::Tcp { stream: tcp_connect(local, server, timeout)?, inbuf: StreamFramer::new() },
            Transport::Tls => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "TLS needs a certificate policy: use ClientSocket::open_tls",
                ));
            }
        };
        Ok(Self { server, kind })
    }

    /// Connects to `server` over TCP and runs the TLS handshake, each step
    /// within `timeout`.
    pub fn open_tls(server: SocketAddr, tls: &TlsClient, timeout: Duration) -> io::Result<Self> {
        let unspecified = if server.is_ipv4() { IpAddr::from([0, 0, 0, 0]) } else { IpAddr::from([0u16; 8]) };
        let stream = tcp_connect(SocketAddr::new(unspecified, 0), server, timeout)?;
        let stream = tls.connect(stream, timeout)?;
        Ok(Self { server, kind: Kind::Tls { stream: Box::new(stream), inbuf: StreamFramer::new() } })
    }

    /// Opens a socket over `transport`; `tls` is required for TLS.
    pub fn connect(
        server: SocketAddr,
        transport: Transport,
        tls: Option<&TlsClient>,
        timeout: Duration,
    ) -> io::Result<Self> {
        match (transport, tls) {
            (Transport::Tls, Some(tls)) => Self::open_tls(server, tls, timeout),
            _ => Self::open(server, transport, timeout),
        }
    }

    /// The ALPN ID the server chose, over TLS.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Tls { stream, .. } => stream.conn.alpn_protocol(),
            _ => None,
        }
    }

    /// The certificate the server presented (DER, leaf first), over TLS.
    pub fn peer_certificates(&self) -> Option<&[rustls::pki_types::CertificateDer<'static>]> {
        match &self.kind {
            Kind::Tls { stream, .. } => stream.conn.peer_certificates(),
            _ => None,
        }
    }

    /// The TLS version negotiated, over TLS.
    pub fn tls_version(&self) -> Option<rustls::ProtocolVersion> {
        match &self.kind {
            Kind::Tls { stream, .. } => stream.conn.protocol_version(),
            _ => None,
        }
    }

    /// Wraps a UDP socket the caller already has.
    pub fn from_udp(socket: UdpSocket, server: SocketAddr) -> Self {
        Self { server, kind: Kind::Udp(socket) }
    }

    /// The UDP socket, if this is one.
    pub fn into_udp(self) -> Option<UdpSocket> {
        match self.kind {
            Kind::Udp(socket) => Some(socket),
            Kind::Tcp { .. } | Kind::Tls { .. } => None,
        }
    }

    /// The TCP stream and its framer, holding any bytes already read from it.
    pub fn into_tcp(self) -> Option<(TcpStream, StreamFramer)> {
        match self.kind {
            Kind::Tcp { stream, inbuf } => Some((stream, inbuf)),
            Kind::Udp(_) | Kind::Tls { .. } => None,
        }
    }

    pub fn server(&self) -> SocketAddr {
        self.server
    }

    pub fn transport(&self) -> Transport {
        match self.kind {
            Kind::Udp(_) => Transport::Udp,
            Kind::Tcp { .. } => Transport::Tcp,
            Kind::Tls { .. } => Transport::Tls,
        }
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        match &self.kind {
            Kind::Udp(socket) => socket.local_addr(),
            Kind::Tcp { stream, .. } => stream.local_addr(),
            Kind::Tls { stream, .. } => stream.sock.local_addr(),
        }
    }

    /// Sends one STUN message or ChannelData frame.
    pub fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        match &mut self.kind {
            Kind::Udp(socket) => socket.send_to(frame, self.server).map(drop),
            Kind::Tcp { stream, .. } => stream.write_all(frame),
            Kind::Tls { stream, .. } => {
                stream.write_all(frame)?;
                stream.flush()
            }
        }
    }

    /// Waits until `deadline` for the next frame from the server and puts it
    /// in `out`. Returns false at the deadline.
    pub fn recv(&mut self, deadline: Instant, out: &mut Vec<u8>) -> io::Result<bool> {
        loop {
            let now = clock::now();
            if now >= deadline {
                return Ok(false);
            }
            let wait = (deadline - now).max(Duration::from_millis(1));
            match &mut self.kind {
                Kind::Udp(socket) => {
                    socket.set_read_timeout(Some(wait))?;
                    out.resize(65536, 0);
                    match socket.recv_from(out) {
                        Ok((n, from)) if from == self.server => {
                            out.truncate(n);
                            return Ok(true);
                        }
                        Ok(_) => continue,
                        Err(e) if is_timeout(&e) => continue,
                        Err(e) => return Err(e),
                    }
                }
                Kind::Tcp { stream, inbuf } => {
                    stream.set_read_timeout(Some(wait))?;
                    if read_frame(stream, inbuf, out)? {
                        return Ok(true);
                    }
                }
                Kind::Tls { stream, inbuf } => {
                    stream.sock.set_read_timeout(Some(wait))?;
                    if read_frame(stream.as_mut(), inbuf, out)? {
                        return Ok(true);
                    }
                }
            }
        }
    }

    /// Sends `request` and waits for the response with the same transaction
    /// ID, retransmitting over UDP as RFC 8489 §6.2.1 says. The response is
    /// left in `response`; other frames that arrive meanwhile go to `other`.
    pub fn transact(
        &mut self,
        request: &[u8],
        timeout: Duration,
        response: &mut Vec<u8>,
        mut other: impl FnMut(&[u8]),
    ) -> Result<(), TransactError> {
        let tid = request.get(8..HEADER_LEN).map(|id| {
            let mut bytes = [0u8; 12];
            bytes.copy_from_slice(id);
            TransactionId(bytes)
        });
        self.send(request)?;
        let mut transaction = Transaction::new(clock::now(), self.transport().is_stream(), timeout);
        loop {
            if self.recv(transaction.poll_timeout(), response)? {
                match Message::parse(response) {
                    Ok(message) if Some(message.transaction_id()) == tid => return Ok(()),
                    _ => other(response),
                }
                continue;
            }
            match transaction.handle_timeout(clock::now()) {
                TimerAction::Retransmit => self.send(request)?,
                TimerAction::TimedOut => return Err(TransactError::Timeout(timeout)),
                TimerAction::Wait => {}
            }
        }
    }
}

/// One step of reading a stream: a whole frame buffered in `inbuf` goes to
/// `out` (true); otherwise one read into `inbuf` (false), where a timeout is
/// no error.
fn read_frame(stream: &mut impl Read, inbuf: &mut StreamFramer, out: &mut Vec<u8>) -> io::Result<bool> {
    if let Some(frame) = inbuf.next_frame().map_err(io::Error::other)? {
        out.clear();
        out.extend_from_slice(frame);
        return Ok(true);
    }
    let mut chunk = [0u8; 16384];
    match stream.read(&mut chunk) {
        Ok(0) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed the connection")),
        Ok(n) => {
            inbuf.extend(&chunk[..n]);
            Ok(false)
        }
        Err(e) if is_timeout(&e) => Ok(false),
        Err(e) => Err(e),
    }
}

fn tcp_connect(local: SocketAddr, server: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(server),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if !local.ip().is_unspecified() {
        socket.bind(&local.into())?;
    }
    socket.connect_timeout(&server.into(), timeout)?;
    let stream: TcpStream = socket.into();
    stream.set_nodelay(true)?;
    Ok(stream)
}

fn is_timeout(error: &io::Error) -> bool {
    matches!(error.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_addresses_accept_the_usual_spellings() {
        let v4: SocketAddr = "127.0.0.1:3478".parse().expect("literal");
        assert_eq!(resolve_server("127.0.0.1").expect("ip"), v4);
        assert_eq!(resolve_server("127.0.0.1:3478").expect("ip:port"), v4);
        assert_eq!(resolve_server("stun:127.0.0.1:3478").expect("uri"), v4);
        assert_eq!(resolve_server("turn:127.0.0.1?transport=udp").expect("uri"), v4);
        assert_eq!(resolve_server("::1").expect("v6").to_string(), "[::1]:3478");
        assert_eq!(resolve_server("[::1]:5000").expect("v6").to_string(), "[::1]:5000");
        assert_eq!(resolve_server("localhost:4000").expect("host").port(), 4000);
        assert_eq!(resolve_server_with_port("turns:127.0.0.1?transport=tcp", 5349).expect("uri").port(), 5349);
        assert!(is_secure_uri("turns:example.com") && is_secure_uri("stuns:example.com"));
        assert!(!is_secure_uri("turn:example.com") && !is_secure_uri("example.com"));
    }
}
