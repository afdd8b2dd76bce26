//! The PROXY protocol header (HAProxy's "PROXY protocol" specification,
//! versions 1 and 2): the few bytes a TCP load balancer sends before
//! anything else on a connection it opens to tern, naming the client it
//! accepted the connection from.
//!
//! [`parse`] reads the header from the start of a connection's bytes and
//! says how many bytes it takes, or that more must arrive first; what
//! follows it (STUN, or a TLS ClientHello) is not looked at. Nothing here
//! decides whether a header is to be believed: which peers may send one is
//! the IO layer's (`io::proxy`).
//!
//! Version 1 is a text line of at most [`V1_MAX_LEN`] bytes:
//! `PROXY TCP4|TCP6 SRC DST SPORT DPORT\r\n`, or `PROXY UNKNOWN ...\r\n`.
//! Version 2 is binary: a 12-byte signature, version and command, family
//! and transport, a 16-bit length, then the addresses and TLVs. TLVs are
//! skipped, unread. A v2 LOCAL command (a load balancer's own health
//! check), a v1 UNKNOWN line and a v2 header for an unspecified or Unix
//! family carry no client address: the connection's own peer is the client.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use thiserror::Error;

/// The longest version 1 header, CRLF included (the specification's
/// worst case, `PROXY UNKNOWN` followed by two full IPv6 addresses and ports).
pub const V1_MAX_LEN: usize = 107;
/// The fixed part of a version 2 header: signature, version and command,
/// family and transport, length.
pub const V2_FIXED_LEN: usize = 16;
/// A version 2 header is at most its fixed part and a 16-bit length.
pub const V2_MAX_LEN: usize = V2_FIXED_LEN + u16::MAX as usize;

const V1_PREFIX: &[u8] = b"PROXY ";
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";

const V2_VERSION: u8 = 0x2;
const V2_LOCAL: u8 = 0x0;
const V2_PROXY: u8 = 0x1;
const FAMILY_UNSPEC: u8 = 0x0;
const FAMILY_INET: u8 = 0x1;
const FAMILY_INET6: u8 = 0x2;
const FAMILY_UNIX: u8 = 0x3;
const TRANSPORT_STREAM: u8 = 0x1;
const TRANSPORT_DGRAM: u8 = 0x2;
/// Address block sizes: two addresses and two ports; two 108-byte paths.
const INET_BLOCK: usize = 4 + 4 + 2 + 2;
const INET6_BLOCK: usize = 16 + 16 + 2 + 2;
const UNIX_BLOCK: usize = 108 + 108;

/// Which version of the protocol the header was written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1 => "v1",
            Self::V2 => "v2",
        }
    }
}

/// The client's connection as the load balancer accepted it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addresses {
    /// The client.
    pub source: SocketAddr,
    /// Where the client connected to: the load balancer's address.
    pub destination: SocketAddr,
}

/// A header read off the front of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// `None`: the header names no client (v2 LOCAL, v1 UNKNOWN, an
    /// unspecified or Unix family), and the connection's own peer is it.
    pub addresses: Option<Addresses>,
}

/// Why the bytes are not a PROXY header tern can use.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum HeaderError {
    /// Neither `PROXY ` nor the version 2 signature: no header was sent.
    #[error("no PROXY header: the connection starts with neither \"PROXY \" nor the v2 signature")]
    Missing,
    /// A version 1 line with no CRLF within [`V1_MAX_LEN`] bytes.
    #[error("PROXY v1 line longer than 107 bytes")]
    TooLong,
    #[error("malformed PROXY {0}")]
    Malformed(&'static str),
    #[error("unsupported PROXY {0}")]
    Unsupported(&'static str),
}

/// Reads the header at the start of `bytes`: the header and the number of
/// bytes it takes, `None` if `bytes` is a valid beginning of a header that
/// needs more bytes, or why `bytes` cannot start with one.
///
/// The answer for a prefix of a header is always `None`, and bytes after
/// the header change nothing, so a caller may call this again with more
/// bytes each time until it gets an answer.
pub fn parse(bytes: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    match bytes.first() {
        None => Ok(None),
        Some(b'P') => parse_v1(bytes),
        Some(b'\r') => parse_v2(bytes),
        Some(_) => Err(HeaderError::Missing),
    }
}

/// The length of the whole header, once `bytes` holds enough of a version
/// 2 header to tell; a reader that holds fewer bytes must wait for more.
pub fn announced_len(bytes: &[u8]) -> Option<usize> {
    let fixed = bytes.get(..V2_FIXED_LEN)?;
    if !fixed.starts_with(V2_SIGNATURE) {
        return None;
    }
    Some(V2_FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]])))
}

fn parse_v1(bytes: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    let window = &bytes[..bytes.len().min(V1_MAX_LEN)];
    if !window.starts_with(&V1_PREFIX[..window.len().min(V1_PREFIX.len())]) {
        return Err(HeaderError::Missing);
    }
    let Some(end) = window.iter().position(|&b| !(0x20..0x7f).contains(&b)) else {
        return if window.len() == V1_MAX_LEN { Err(HeaderError::TooLong) } else { Ok(None) };
    };
    match window.get(end..end + 2) {
        Some(b"\r\n") => {}
        // A CR that may yet be followed by its LF.
        None if window[end] == b'\r' && window.len() < V1_MAX_LEN => return Ok(None),
        None if window[end] == b'\r' => return Err(HeaderError::TooLong),
        _ => return Err(HeaderError::Malformed("v1 line: a character that is not printable ASCII")),
    }
    let line = std::str::from_utf8(&window[..end]).map_err(|_| HeaderError::Malformed("v1 line"))?;
    let consumed = end + 2;
    let mut fields = line.split(' ');
    // The prefix was checked: the first field is "PROXY".
    fields.next();
    let family = fields.next().unwrap_or_default();
    let header = |addresses| Ok(Some((Header { version: Version::V1, addresses }, consumed)));
    let is_v4 = match family {
        // The rest of an UNKNOWN line is to be ignored.
        "UNKNOWN" => return header(None),
        "TCP4" => true,
        "TCP6" => false,
        _ => return Err(HeaderError::Unsupported("v1 protocol (not TCP4, TCP6 or UNKNOWN)")),
    };
    let (Some(source), Some(destination), Some(source_port), Some(destination_port), None) =
        (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(HeaderError::Malformed("v1 line: not four fields after the protocol"));
    };
    let ip = |text: &str| -> Result<IpAddr, HeaderError> {
        let ip =
            if is_v4 { Ipv4Addr::from_str(text).map(IpAddr::V4) } else { Ipv6Addr::from_str(text).map(IpAddr::V6) };
        ip.map_err(|_| HeaderError::Malformed("v1 address (not of the family the line names)"))
    };
    let addresses = Addresses {
        source: SocketAddr::new(ip(source)?, v1_port(source_port)?),
        destination: SocketAddr::new(ip(destination)?, v1_port(destination_port)?),
    };
    header(Some(addresses))
}

/// A decimal port: digits only (`u16::from_str` would take a `+`).
fn v1_port(text: &str) -> Result<u16, HeaderError> {
    let malformed = HeaderError::Malformed("v1 port");
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(malformed);
    }
    text.parse().map_err(|_| malformed)
}

fn parse_v2(bytes: &[u8]) -> Result<Option<(Header, usize)>, HeaderError> {
    let signature = &bytes[..bytes.len().min(V2_SIGNATURE.len())];
    if !V2_SIGNATURE.starts_with(signature) {
        return Err(HeaderError::Missing);
    }
    let Some(fixed) = bytes.get(..V2_FIXED_LEN) else { return Ok(None) };
    let (version, command) = (fixed[12] >> 4, fixed[12] & 0x0f);
    if version != V2_VERSION {
        return Err(HeaderError::Unsupported("version (the v2 signature with another version)"));
    }
    if command != V2_LOCAL && command != V2_PROXY {
        return Err(HeaderError::Unsupported("v2 command (neither LOCAL nor PROXY)"));
    }
    let (family, transport) = (fixed[13] >> 4, fixed[13] & 0x0f);
    let total = V2_FIXED_LEN + usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    let Some(block) = bytes.get(V2_FIXED_LEN..total) else { return Ok(None) };
    let header = |addresses| Ok(Some((Header { version: Version::V2, addresses }, total)));
    // LOCAL: the connection is the load balancer's own; its block is
    // discarded whatever it holds.
    if command == V2_LOCAL {
        return header(None);
    }
    let needed = match family {
        FAMILY_UNSPEC => return header(None),
        FAMILY_INET => INET_BLOCK,
        FAMILY_INET6 => INET6_BLOCK,
        FAMILY_UNIX => UNIX_BLOCK,
        _ => return Err(HeaderError::Unsupported("v2 address family")),
    };
    match transport {
        TRANSPORT_STREAM => {}
        TRANSPORT_DGRAM => return Err(HeaderError::Unsupported("v2 transport: a datagram client on a stream")),
        _ => return Err(HeaderError::Unsupported("v2 transport")),
    }
    if block.len() < needed {
        return Err(HeaderError::Malformed("v2 length: shorter than the addresses of its family"));
    }
    let port = |at: usize| u16::from_be_bytes([block[at], block[at + 1]]);
    let addresses = match family {
        FAMILY_INET => {
            let ip = |at: usize| IpAddr::from([block[at], block[at + 1], block[at + 2], block[at + 3]]);
            Addresses { source: SocketAddr::new(ip(0), port(8)), destination: SocketAddr::new(ip(4), port(10)) }
        }
        FAMILY_INET6 => {
            let ip = |at: usize| {
                let octets: [u8; 16] = block[at..at + 16].try_into().expect("the block holds 36 bytes");
                IpAddr::from(octets)
            };
            Addresses { source: SocketAddr::new(ip(0), port(32)), destination: SocketAddr::new(ip(16), port(34)) }
        }
        // A Unix socket path says nothing tern can use as a client address.
        _ => return header(None),
    };
    header(Some(addresses))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("literal")
    }

    fn proxied(version: Version, source: &str, destination: &str) -> Header {
        Header { version, addresses: Some(Addresses { source: addr(source), destination: addr(destination) }) }
    }

    /// A v2 header: `command_byte`, `family_byte`, then `block`.
    fn v2(command: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut bytes = V2_SIGNATURE.to_vec();
        bytes.extend([command, family]);
        bytes.extend(u16::try_from(block.len()).expect("short block").to_be_bytes());
        bytes.extend(block);
        bytes
    }

    fn inet_block() -> Vec<u8> {
        let mut block = vec![192, 0, 2, 10, 198, 51, 100, 1];
        block.extend(50000u16.to_be_bytes());
        block.extend(3478u16.to_be_bytes());
        block
    }

    /// Every strict prefix of `header` needs more, and bytes after it are
    /// left alone.
    fn assert_parses(bytes: &[u8], expected: Header) {
        assert_eq!(parse(bytes), Ok(Some((expected, bytes.len()))), "{bytes:02x?}");
        for cut in 0..bytes.len() {
            assert_eq!(parse(&bytes[..cut]), Ok(None), "prefix of {cut} bytes");
        }
        let mut followed = bytes.to_vec();
        followed.extend([0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42]);
        assert_eq!(parse(&followed), Ok(Some((expected, bytes.len()))), "with STUN after it");
    }

    #[test]
    fn v1_tcp4_and_tcp6() {
        assert_parses(
            b"PROXY TCP4 192.0.2.10 198.51.100.1 50000 3478\r\n",
            proxied(Version::V1, "192.0.2.10:50000", "198.51.100.1:3478"),
        );
        assert_parses(
            b"PROXY TCP6 2001:db8::10 2001:db8::1 65535 0\r\n",
            proxied(Version::V1, "[2001:db8::10]:65535", "[2001:db8::1]:0"),
        );
    }

    #[test]
    fn v1_unknown_names_no_client() {
        let unknown = Header { version: Version::V1, addresses: None };
        assert_parses(b"PROXY UNKNOWN\r\n", unknown);
        assert_parses(b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", unknown);
    }

    #[test]
    fn v1_longest_line_and_one_more() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.resize(V1_MAX_LEN - 2, b'f');
        line.extend(b"\r\n");
        assert_parses(&line, Header { version: Version::V1, addresses: None });
        let mut long = line[..V1_MAX_LEN - 2].to_vec();
        long.extend(b"f\r\n");
        assert_eq!(parse(&long), Err(HeaderError::TooLong));
        assert_eq!(parse(&long[..V1_MAX_LEN]), Err(HeaderError::TooLong), "a CR in the last place is too late");
    }

    #[test]
    fn v1_mistakes_are_refused() {
        for (line, error) in [
            (&b"PROXY TCP4 192.0.2.10 198.51.100.1 50000\r\n"[..], "v1 line: not four fields after the protocol"),
            (b"PROXY TCP4 192.0.2.10 198.51.100.1 50000 3478 9\r\n", "v1 line: not four fields after the protocol"),
            (b"PROXY TCP4  192.0.2.10 198.51.100.1 50000 3478\r\n", "v1 line: not four fields after the protocol"),
            (b"PROXY TCP4 192.0.2.10 198.51.100 50000 3478\r\n", "v1 address (not of the family the line names)"),
            (b"PROXY TCP4 2001:db8::1 198.51.100.1 50000 3478\r\n", "v1 address (not of the family the line names)"),
            (b"PROXY TCP6 192.0.2.10 2001:db8::1 50000 3478\r\n", "v1 address (not of the family the line names)"),
            (b"PROXY TCP4 192.0.2.10 198.51.100.1 65536 3478\r\n", "v1 port"),
            (b"PROXY TCP4 192.0.2.10 198.51.100.1 +1 3478\r\n", "v1 port"),
            (b"PROXY TCP4 192.0.2.10 198.51.100.1 50000 -1\r\n", "v1 port"),
            (b"PROXY TCP4 192.0.2.10\n", "v1 line: a character that is not printable ASCII"),
            (b"PROXY TCP4 192.0.2.10\rX", "v1 line: a character that is not printable ASCII"),
            (b"PROXY TCP4 19\xc3\xa9", "v1 line: a character that is not printable ASCII"),
        ] {
            assert_eq!(parse(line), Err(HeaderError::Malformed(error)), "{}", String::from_utf8_lossy(line));
        }
        assert_eq!(
            parse(b"PROXY UDP4 192.0.2.10 198.51.100.1 1 2\r\n"),
            Err(HeaderError::Unsupported("v1 protocol (not TCP4, TCP6 or UNKNOWN)"))
        );
        assert_eq!(parse(b"PROXY\r\n"), Err(HeaderError::Missing));
        assert_eq!(parse(b"PROXX"), Err(HeaderError::Missing));
    }

    #[test]
    fn v2_proxy_ipv4_and_ipv6() {
        assert_parses(&v2(0x21, 0x11, &inet_block()), proxied(Version::V2, "192.0.2.10:50000", "198.51.100.1:3478"));
        let mut block = Vec::new();
        block.extend("2001:db8::10".parse::<Ipv6Addr>().expect("literal").octets());
        block.extend("2001:db8::1".parse::<Ipv6Addr>().expect("literal").octets());
        block.extend(443u16.to_be_bytes());
        block.extend(5349u16.to_be_bytes());
        assert_parses(&v2(0x21, 0x21, &block), proxied(Version::V2, "[2001:db8::10]:443", "[2001:db8::1]:5349"));
    }

    #[test]
    fn v2_tlvs_are_skipped() {
        let mut block = inet_block();
        // PP2_TYPE_ALPN "stun.turn", PP2_TYPE_NOOP with padding.
        block.extend([0x01, 0x00, 0x09]);
        block.extend(b"stun.turn");
        block.extend([0x04, 0x00, 0x03, 0, 0, 0]);
        assert_parses(&v2(0x21, 0x11, &block), proxied(Version::V2, "192.0.2.10:50000", "198.51.100.1:3478"));
    }

    #[test]
    fn v2_headers_without_a_client_address() {
        let own = Header { version: Version::V2, addresses: None };
        // LOCAL: a health check; its block, whatever it holds, is discarded.
        assert_parses(&v2(0x20, 0x00, &[]), own);
        assert_parses(&v2(0x20, 0x11, &inet_block()), own);
        assert_parses(&v2(0x20, 0x77, &[1, 2, 3]), own);
        assert_parses(&v2(0x21, 0x00, &[]), own);
        assert_parses(&v2(0x21, 0x31, &[b'/'; UNIX_BLOCK]), own);
    }

    #[test]
    fn v2_mistakes_are_refused() {
        let block = inet_block();
        assert_eq!(
            parse(&v2(0x11, 0x11, &block)),
            Err(HeaderError::Unsupported("version (the v2 signature with another version)"))
        );
        assert_eq!(
            parse(&v2(0x22, 0x11, &block)),
            Err(HeaderError::Unsupported("v2 command (neither LOCAL nor PROXY)"))
        );
        assert_eq!(parse(&v2(0x21, 0x41, &block)), Err(HeaderError::Unsupported("v2 address family")));
        assert_eq!(
            parse(&v2(0x21, 0x12, &block)),
            Err(HeaderError::Unsupported("v2 transport: a datagram client on a stream"))
        );
        assert_eq!(parse(&v2(0x21, 0x10, &block)), Err(HeaderError::Unsupported("v2 transport")));
        assert_eq!(
            parse(&v2(0x21, 0x21, &block)),
            Err(HeaderError::Malformed("v2 length: shorter than the addresses of its family"))
        );
        assert_eq!(
            parse(&v2(0x21, 0x11, &block[..11])),
            Err(HeaderError::Malformed("v2 length: shorter than the addresses of its family"))
        );
        let mut bad_signature = v2(0x21, 0x11, &block);
        bad_signature[6] = b'X';
        assert_eq!(parse(&bad_signature), Err(HeaderError::Missing));
        assert_eq!(parse(&bad_signature[..7]), Err(HeaderError::Missing));
    }

    #[test]
    fn the_announced_length_comes_with_the_fixed_part() {
        let header = v2(0x21, 0x11, &[0; 300]);
        assert_eq!(announced_len(&header[..15]), None);
        assert_eq!(announced_len(&header[..16]), Some(316));
        assert_eq!(announced_len(b"PROXY TCP4 192.0.2.10 198.51.100.1 1 2\r\n"), None);
        assert_eq!(V2_MAX_LEN, 65551);
    }

    #[test]
    fn garbage_and_stun_are_not_headers() {
        for bytes in [
            &[0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42][..],
            &[0x16, 0x03, 0x01, 0x02, 0x00][..],
            b"GET / HTTP/1.1\r\n",
            b"\n",
            &[0xff][..],
        ] {
            assert_eq!(parse(bytes), Err(HeaderError::Missing), "{bytes:02x?}");
        }
        assert_eq!(parse(&[]), Ok(None));
    }
}
