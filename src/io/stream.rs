//! A client's byte stream, plain TCP or TLS: the one place that chooses
//! between the socket and its rustls session. STUN connections (`tcp.rs`)
//! and both sides of RFC 6062 pairs (`tcp_relay.rs`) read and write through
//! it; over TLS the rustls glue in `tls.rs` does the work, a message per
//! record. It decides nothing about STUN and frames nothing.

use std::io::{self, Read, Write};
use std::net::Shutdown;

use mio::{Interest, Registry, Token};
use rustls::ServerConnection;

use super::tls;

/// A nonblocking TCP socket, with the TLS session that runs over it for a
/// connection accepted on a TLS listener. The session carries on past an
/// RFC 6062 ConnectionBind: the peer's bytes then travel inside it.
pub struct Stream {
    socket: mio::net::TcpStream,
    /// Boxed: it is large, and plain TCP connections do without.
    tls: Option<Box<ServerConnection>>,
}

impl Stream {
    pub fn new(socket: mio::net::TcpStream, tls: Option<Box<ServerConnection>>) -> Self {
        Self { socket, tls }
    }

    /// The TCP socket, for its addresses and error state; bytes go through
    /// [`Self::read`] and [`Self::write`].
    pub fn socket(&self) -> &mio::net::TcpStream {
        &self.socket
    }

    /// The TLS session, for a connection accepted on a TLS listener.
    pub fn tls(&self) -> Option<&ServerConnection> {
        self.tls.as_deref()
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Runs `tls` over the socket from here on: for a connection whose
    /// PROXY header came before its TLS handshake.
    pub fn start_tls(&mut self, tls: Box<ServerConnection>) {
        debug_assert!(self.tls.is_none(), "a stream starts TLS once");
        self.tls = Some(tls);
    }

    /// Whether this is a TLS connection still in its handshake.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.is_handshaking())
    }

    /// Reads (decrypted) bytes, with the semantics of `Read::read` on a
    /// nonblocking socket: `Ok(0)` at the end of the stream, `WouldBlock`
    /// when the socket has nothing more.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls::read(tls, &mut self.socket, buf),
            None => self.socket.read(buf),
        }
    }

    /// Writes what the socket takes of `message`. Over TLS the message goes
    /// into records of its own, and only once the previous one's records
    /// reached the socket (`WouldBlock` until then): see [`tls::write`].
    pub fn write(&mut self, message: &[u8]) -> io::Result<usize> {
        match &mut self.tls {
            Some(tls) => tls::write(tls, &mut self.socket, message),
            None => self.socket.write(message),
        }
    }

    /// Sends TLS records held above the socket (the handshake's, or those
    /// left over when the socket was full) until it would block; whether
    /// none is held any more.
    pub fn write_pending(&mut self) -> io::Result<bool> {
        match &mut self.tls {
            Some(tls) => tls::write_pending(tls, &mut self.socket).map(|()| !tls.wants_write()),
            None => Ok(true),
        }
    }

    /// Whether TLS records wait to be sent.
    pub fn wants_write(&self) -> bool {
        self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Before a TLS connection ends: queue close_notify and send what the
    /// socket takes, so the client sees a clean end rather than a
    /// truncation.
    pub fn close_notify(&mut self) {
        if let Some(tls) = &mut self.tls {
            tls.send_close_notify();
            let _ = tls::write_pending(tls, &mut self.socket);
        }
    }

    /// Ends the sending direction: close_notify first, so the client tells
    /// an end from a truncation; it is a few bytes after a flushed stream,
    /// so the socket takes it.
    pub fn shutdown_write(&mut self) {
        self.close_notify();
        let _ = self.socket.shutdown(Shutdown::Write);
    }
}

impl mio::event::Source for Stream {
    fn register(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        self.socket.register(registry, token, interests)
    }

    fn reregister(&mut self, registry: &Registry, token: Token, interests: Interest) -> io::Result<()> {
        self.socket.reregister(registry, token, interests)
    }

    fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        self.socket.deregister(registry)
    }
}
