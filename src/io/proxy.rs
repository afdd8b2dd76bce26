//! PROXY protocol listeners (`[proxy]`): TCP and TLS listeners behind a
//! TCP load balancer, which sends a PROXY header (v1 or v2, parsed by
//! `proto::proxy`) naming the client before anything else. Which listeners
//! speak it, whom they believe, how long a header may take, and reading the
//! header off a nonblocking socket without taking a byte of what follows.
//!
//! The header comes before STUN and, on a TLS listener, before the TLS
//! handshake (a load balancer in TCP mode passes TLS through). It is read
//! with `MSG_PEEK` first and consumed only once it is whole, so the bytes
//! after it stay in the socket for the framing or for rustls, and a header
//! that arrives in pieces is looked at again on the next readiness event.
//! (Peeking cannot see an end of stream behind bytes still unread, so a
//! connection that ends halfway through its header is closed at its
//! deadline, like one that stalls there.)
//! A connection whose peer is not trusted is closed before anything is
//! read: the address in a header is believed only from the load balancers.
//! The PROXY protocol runs over TCP only; UDP listeners never speak it.

use std::io::{self, Read};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ipnet::IpNet;

use crate::proto::Transport;
use crate::proto::proxy::{self, Header, HeaderError};

/// Bytes looked at first: a whole v1 header (107 bytes), and a v2 header
/// with any address block but no TLVs (16 + 216), the size the
/// specification asks receivers to read at once. A longer v2 header is
/// peeked again at its announced length.
const FIRST_PEEK: usize = proxy::V2_FIXED_LEN + 216;

/// Where PROXY headers are expected, from whom, and how soon.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxySettings {
    /// TCP listen addresses that speak the PROXY protocol.
    pub listen: Vec<SocketAddr>,
    /// TLS listen addresses that speak it: the header, then TLS.
    pub tls_listen: Vec<SocketAddr>,
    /// The load balancers: only connections from these may send a header.
    pub trusted: Vec<IpNet>,
    /// A connection whose header is not whole by then is closed.
    pub header_timeout: Duration,
}

/// A worker's view of the PROXY listeners, with their ports resolved.
#[derive(Clone, Debug)]
pub struct ProxyListeners {
    listeners: Vec<(Transport, SocketAddr)>,
    trusted: Vec<IpNet>,
    header_timeout: Duration,
}

impl ProxyListeners {
    /// `listeners`: the bound addresses of `settings`' listeners.
    pub fn new(settings: &ProxySettings, listeners: Vec<(Transport, SocketAddr)>) -> Self {
        Self { listeners, trusted: settings.trusted.clone(), header_timeout: settings.header_timeout }
    }

    /// The bound addresses, TCP and TLS.
    pub fn listeners(&self) -> &[(Transport, SocketAddr)] {
        &self.listeners
    }

    /// Whether the listener bound to `addr` over `transport` speaks PROXY.
    /// Listen addresses are distinct, so the address names the listener.
    pub fn speaks(&self, transport: Transport, addr: SocketAddr) -> bool {
        self.listeners.contains(&(transport, addr))
    }

    /// Whether a connection from `ip` may send a header.
    pub fn trusts(&self, ip: IpAddr) -> bool {
        self.trusted.iter().any(|range| range.contains(&ip))
    }

    pub fn header_timeout(&self) -> Duration {
        self.header_timeout
    }
}

/// Why a connection's header could not be read.
#[derive(Debug, thiserror::Error)]
pub enum HeaderFailure {
    #[error(transparent)]
    Header(#[from] HeaderError),
    #[error("closed before its PROXY header was whole")]
    Eof,
    #[error("{0}")]
    Io(io::Error),
}

/// Reads the PROXY header at the start of `socket`: the header once it is
/// whole (its bytes consumed, and nothing after them), `None` while more
/// must arrive (nothing consumed), or why there is none to be had.
pub fn read_header(socket: &mio::net::TcpStream) -> Result<Option<Header>, HeaderFailure> {
    let mut first = [0u8; FIRST_PEEK];
    let seen = peek(socket, &mut first)?;
    let (header, consumed) = match proxy::parse(&first[..seen])? {
        Some(found) => found,
        None => match proxy::announced_len(&first[..seen]) {
            Some(total) if total > FIRST_PEEK && seen == FIRST_PEEK => {
                let mut whole = vec![0u8; total];
                let seen = peek(socket, &mut whole)?;
                match proxy::parse(&whole[..seen])? {
                    Some(found) => found,
                    None => return Ok(None),
                }
            }
            _ => return Ok(None),
        },
    };
    consume(socket, consumed)?;
    Ok(Some(header))
}

fn peek(socket: &mio::net::TcpStream, buf: &mut [u8]) -> Result<usize, HeaderFailure> {
    loop {
        match socket.peek(buf) {
            Ok(0) => return Err(HeaderFailure::Eof),
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Nothing yet: the header is awaited like a partial one.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
            Err(e) => return Err(HeaderFailure::Io(e)),
        }
    }
}

/// Takes the `len` bytes of the header off the socket. They were peeked,
/// so they are there to read.
fn consume(mut socket: &mio::net::TcpStream, len: usize) -> Result<(), HeaderFailure> {
    let mut sink = [0u8; 1024];
    let mut left = len;
    while left > 0 {
        let chunk = left.min(sink.len());
        match socket.read(&mut sink[..chunk]) {
            Ok(0) => return Err(HeaderFailure::Eof),
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(HeaderFailure::Io(e)),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;

    use super::*;
    use crate::proto::proxy::Version;

    /// A connected pair on loopback: the writing end, and the reading end
    /// as a nonblocking mio socket.
    fn pair() -> (std::net::TcpStream, mio::net::TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("loopback listener");
        let client = std::net::TcpStream::connect(listener.local_addr().expect("bound")).expect("connect");
        let (accepted, _) = listener.accept().expect("accept");
        accepted.set_nonblocking(true).expect("nonblocking");
        (client, mio::net::TcpStream::from_std(accepted))
    }

    /// `read_header` until it answers, waiting a little for the bytes in
    /// flight on loopback.
    fn read_when_there(socket: &mio::net::TcpStream) -> Result<Option<Header>, HeaderFailure> {
        for _ in 0..200 {
            match read_header(socket) {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                answer => return answer,
            }
        }
        Ok(None)
    }

    fn rest(mut socket: &mio::net::TcpStream, len: usize) -> Vec<u8> {
        let mut bytes = vec![0u8; len];
        let mut filled = 0;
        for _ in 0..200 {
            match socket.read(&mut bytes[filled..]) {
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("read: {e}"),
            }
            if filled == len {
                break;
            }
        }
        bytes.truncate(filled);
        bytes
    }

    fn v2_inet(tlvs: usize) -> Vec<u8> {
        let mut bytes = b"\r\n\r\n\0\r\nQUIT\n\x21\x11".to_vec();
        bytes.extend(u16::try_from(12 + tlvs).expect("short").to_be_bytes());
        bytes.extend([192, 0, 2, 10, 127, 0, 0, 1]);
        bytes.extend(50000u16.to_be_bytes());
        bytes.extend(3478u16.to_be_bytes());
        // PP2_TYPE_NOOP: a type, a length, and that many bytes.
        if tlvs > 0 {
            bytes.extend([0x04]);
            bytes.extend(u16::try_from(tlvs - 3).expect("short").to_be_bytes());
            bytes.resize(bytes.len() + tlvs - 3, 0);
        }
        bytes
    }

    #[test]
    fn a_header_in_pieces_is_consumed_whole_and_nothing_after_it() {
        let (mut client, socket) = pair();
        assert!(read_header(&socket).expect("nothing sent yet").is_none());
        client.write_all(b"PROXY TCP4 192.0.2.10 ").expect("write");
        std::thread::sleep(Duration::from_millis(20));
        assert!(read_header(&socket).expect("half a header").is_none());
        client.write_all(b"127.0.0.1 50000 3478\r\nSTUN").expect("write");
        let header = read_when_there(&socket).expect("a header").expect("whole");
        assert_eq!(header.version, Version::V1);
        let addresses = header.addresses.expect("TCP4 names the client");
        assert_eq!(addresses.source, "192.0.2.10:50000".parse().expect("literal"));
        assert_eq!(rest(&socket, 4), b"STUN", "what follows the header stays in the socket");
    }

    #[test]
    fn a_v2_header_longer_than_the_first_peek_is_read_at_its_length() {
        let (mut client, socket) = pair();
        let header = v2_inet(600);
        assert!(header.len() > FIRST_PEEK);
        client.write_all(&header).expect("write");
        client.write_all(b"\x16\x03\x01").expect("write");
        let read = read_when_there(&socket).expect("a header").expect("whole");
        assert_eq!(read.version, Version::V2);
        assert_eq!(rest(&socket, 3), b"\x16\x03\x01", "the TLS record after it stays");
    }

    #[test]
    fn no_header_a_broken_one_and_an_early_end_are_failures() {
        let (mut client, socket) = pair();
        client.write_all(&[0x00, 0x01, 0x00, 0x00]).expect("write");
        assert!(matches!(read_when_there(&socket), Err(HeaderFailure::Header(HeaderError::Missing))));

        let (mut client, socket) = pair();
        client.write_all(b"PROXY TCP4 nowhere 127.0.0.1 1 2\r\n").expect("write");
        assert!(matches!(read_when_there(&socket), Err(HeaderFailure::Header(HeaderError::Malformed(_)))));

        let (client, socket) = pair();
        drop(client);
        assert!(matches!(read_when_there(&socket), Err(HeaderFailure::Eof)));

        // Peeking cannot see past the bytes that are there: a connection
        // that ends halfway through its header is left to the deadline.
        let (mut client, socket) = pair();
        client.write_all(&v2_inet(0)[..20]).expect("write");
        drop(client);
        std::thread::sleep(Duration::from_millis(20));
        assert!(read_header(&socket).expect("half a header").is_none());
    }

    #[test]
    fn only_trusted_peers_and_named_listeners() {
        let addr: SocketAddr = "127.0.0.1:3479".parse().expect("literal");
        let settings = ProxySettings {
            listen: vec![addr],
            tls_listen: Vec::new(),
            trusted: vec!["10.0.0.0/8".parse().expect("literal"), "2001:db8::1/128".parse().expect("literal")],
            header_timeout: Duration::from_secs(5),
        };
        let listeners = ProxyListeners::new(&settings, vec![(Transport::Tcp, addr)]);
        assert!(listeners.speaks(Transport::Tcp, addr));
        assert!(!listeners.speaks(Transport::Tls, addr));
        assert!(!listeners.speaks(Transport::Tcp, "127.0.0.1:3478".parse().expect("literal")));
        assert!(listeners.trusts("10.1.2.3".parse().expect("literal")));
        assert!(listeners.trusts("2001:db8::1".parse().expect("literal")));
        assert!(!listeners.trusts("192.0.2.1".parse().expect("literal")));
        assert!(!listeners.trusts("2001:db8::2".parse().expect("literal")));
    }
}
