//! Attribute types and the typed readers of their values.
//!
//! Types are a newtype with named constants (not a closed enum) so an unknown
//! type survives a round trip and a comprehension-required one can be listed in
//! a 420 response (RFC 8489 §14). Readers take the value bytes the message
//! iterator hands out and never index past them.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use super::{MAGIC_COOKIE, TransactionId};
use crate::proto::error::ParseError;

/// A STUN attribute type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttrType(pub u16);

impl AttrType {
    // RFC 8489 §18.3, comprehension-required.
    pub const MAPPED_ADDRESS: Self = Self(0x0001);
    /// RFC 3489 §11.2.5, sent only in answers to classic requests.
    pub const SOURCE_ADDRESS: Self = Self(0x0004);
    /// RFC 5780 §7.2; also RFC 3489's CHANGE-REQUEST. Understood only when
    /// NAT behaviour discovery is on, so it is not in [`Self::is_known`].
    pub const CHANGE_REQUEST: Self = Self(0x0003);
    /// RFC 3489 §11.2.3, sent only in answers to classic requests; RFC 5780
    /// renamed it OTHER-ADDRESS and gave it a new number.
    pub const CHANGED_ADDRESS: Self = Self(0x0005);
    pub const USERNAME: Self = Self(0x0006);
    pub const MESSAGE_INTEGRITY: Self = Self(0x0008);
    pub const ERROR_CODE: Self = Self(0x0009);
    pub const UNKNOWN_ATTRIBUTES: Self = Self(0x000A);
    pub const REALM: Self = Self(0x0014);
    pub const NONCE: Self = Self(0x0015);
    pub const MESSAGE_INTEGRITY_SHA256: Self = Self(0x001C);
    pub const PASSWORD_ALGORITHM: Self = Self(0x001D);
    pub const USERHASH: Self = Self(0x001E);
    pub const XOR_MAPPED_ADDRESS: Self = Self(0x0020);
    /// RFC 5780 §7.6; like CHANGE-REQUEST, known only with discovery on.
    pub const PADDING: Self = Self(0x0026);
    /// RFC 5780 §7.5; like CHANGE-REQUEST, known only with discovery on.
    pub const RESPONSE_PORT: Self = Self(0x0027);
    // RFC 8656 §18, comprehension-required.
    pub const CHANNEL_NUMBER: Self = Self(0x000C);
    pub const LIFETIME: Self = Self(0x000D);
    pub const XOR_PEER_ADDRESS: Self = Self(0x0012);
    pub const DATA: Self = Self(0x0013);
    pub const XOR_RELAYED_ADDRESS: Self = Self(0x0016);
    pub const REQUESTED_ADDRESS_FAMILY: Self = Self(0x0017);
    pub const EVEN_PORT: Self = Self(0x0018);
    pub const REQUESTED_TRANSPORT: Self = Self(0x0019);
    pub const DONT_FRAGMENT: Self = Self(0x001A);
    pub const RESERVATION_TOKEN: Self = Self(0x0022);
    /// RFC 6062 §6.2.1.
    pub const CONNECTION_ID: Self = Self(0x002A);
    // RFC 8489 §18.3, comprehension-optional.
    pub const PASSWORD_ALGORITHMS: Self = Self(0x8002);
    pub const ALTERNATE_DOMAIN: Self = Self(0x8003);
    pub const SOFTWARE: Self = Self(0x8022);
    pub const ALTERNATE_SERVER: Self = Self(0x8023);
    pub const FINGERPRINT: Self = Self(0x8028);
    // RFC 8656 §18, comprehension-optional.
    pub const ADDITIONAL_ADDRESS_FAMILY: Self = Self(0x8000);
    pub const ADDRESS_ERROR_CODE: Self = Self(0x8001);
    pub const ICMP: Self = Self(0x8004);
    // RFC 5780 §7, comprehension-optional.
    pub const RESPONSE_ORIGIN: Self = Self(0x802B);
    pub const OTHER_ADDRESS: Self = Self(0x802C);
    // RFC 8445 §16.1 (ICE), comprehension-optional and -required. Known so that
    // a Binding request from an ICE agent is not answered with 420.
    pub const PRIORITY: Self = Self(0x0024);
    pub const USE_CANDIDATE: Self = Self(0x0025);
    pub const ICE_CONTROLLED: Self = Self(0x8029);
    pub const ICE_CONTROLLING: Self = Self(0x802A);

    /// Types 0x0000-0x7FFF must be understood or the request is refused with 420.
    pub fn is_comprehension_required(self) -> bool {
        self.0 < 0x8000
    }

    /// The comprehension-required request attributes of RFC 5780 §7, which
    /// a server understands only when it has an alternate address (§6): the
    /// server, not the codec, decides whether they get 420.
    pub fn is_nat_discovery_request(self) -> bool {
        matches!(self, Self::CHANGE_REQUEST | Self::PADDING | Self::RESPONSE_PORT)
    }

    /// Whether tern always understands this type. A request that carries a
    /// comprehension-required type not in this list gets 420, unless the
    /// server understands it in context ([`Self::is_nat_discovery_request`]).
    pub fn is_known(self) -> bool {
        matches!(
            self,
            Self::MAPPED_ADDRESS
                | Self::USERNAME
                | Self::MESSAGE_INTEGRITY
                | Self::ERROR_CODE
                | Self::UNKNOWN_ATTRIBUTES
                | Self::REALM
                | Self::NONCE
                | Self::MESSAGE_INTEGRITY_SHA256
                | Self::PASSWORD_ALGORITHM
                | Self::USERHASH
                | Self::XOR_MAPPED_ADDRESS
                | Self::CHANNEL_NUMBER
                | Self::LIFETIME
                | Self::XOR_PEER_ADDRESS
                | Self::DATA
                | Self::XOR_RELAYED_ADDRESS
                | Self::REQUESTED_ADDRESS_FAMILY
                | Self::EVEN_PORT
                | Self::REQUESTED_TRANSPORT
                | Self::DONT_FRAGMENT
                | Self::RESERVATION_TOKEN
                | Self::CONNECTION_ID
                | Self::PRIORITY
                | Self::USE_CANDIDATE
        ) || !self.is_comprehension_required()
    }
}

/// Address family codes used in address attributes and
/// REQUESTED-ADDRESS-FAMILY (RFC 8489 §14.1, RFC 8656 §18.8).
pub const FAMILY_IPV4: u8 = 0x01;
pub const FAMILY_IPV6: u8 = 0x02;

/// Length of an address attribute's value for the address's family.
pub fn address_value_len(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 8,
        SocketAddr::V6(_) => 20,
    }
}

/// Reads a MAPPED-ADDRESS-style value (also ALTERNATE-SERVER, RESPONSE-ORIGIN,
/// OTHER-ADDRESS).
pub fn read_address(value: &[u8]) -> Result<SocketAddr, ParseError> {
    let (family, port, raw) = split_address(value)?;
    Ok(match family {
        FAMILY_IPV4 => {
            let octets: [u8; 4] = raw.try_into().map_err(|_| ParseError::InvalidValue("address"))?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port)
        }
        _ => {
            let octets: [u8; 16] = raw.try_into().map_err(|_| ParseError::InvalidValue("address"))?;
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)
        }
    })
}

/// Reads an XOR-MAPPED-ADDRESS-style value (also XOR-PEER-ADDRESS,
/// XOR-RELAYED-ADDRESS): the port is XORed with the cookie's top half, an IPv4
/// address with the cookie, an IPv6 address with the cookie and transaction ID
/// (RFC 8489 §14.2).
pub fn read_xor_address(value: &[u8], tid: &TransactionId) -> Result<SocketAddr, ParseError> {
    let (family, port, raw) = split_address(value)?;
    let port = port ^ (MAGIC_COOKIE >> 16) as u16;
    let mask = xor_mask(tid);
    Ok(match family {
        FAMILY_IPV4 => {
            let mut octets: [u8; 4] = raw.try_into().map_err(|_| ParseError::InvalidValue("address"))?;
            xor_in_place(&mut octets, &mask);
            SocketAddr::new(IpAddr::V4(Ipv4Addr::from(octets)), port)
        }
        _ => {
            let mut octets: [u8; 16] = raw.try_into().map_err(|_| ParseError::InvalidValue("address"))?;
            xor_in_place(&mut octets, &mask);
            SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port)
        }
    })
}

/// Writes an address value into `out`, which must be exactly
/// [`address_value_len`] bytes long.
pub fn write_address(out: &mut [u8], addr: &SocketAddr, xor: Option<&TransactionId>) {
    out[0] = 0;
    let mut port = addr.port();
    if xor.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    out[2..4].copy_from_slice(&port.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(ip) => {
            out[1] = FAMILY_IPV4;
            out[4..8].copy_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out[1] = FAMILY_IPV6;
            out[4..20].copy_from_slice(&ip.octets());
        }
    }
    if let Some(tid) = xor {
        xor_in_place(&mut out[4..], &xor_mask(tid));
    }
}

fn split_address(value: &[u8]) -> Result<(u8, u16, &[u8]), ParseError> {
    let [_, family, p0, p1, raw @ ..] = value else {
        return Err(ParseError::InvalidValue("address"));
    };
    let expected = match *family {
        FAMILY_IPV4 => 4,
        FAMILY_IPV6 => 16,
        _ => return Err(ParseError::InvalidValue("address family")),
    };
    if raw.len() != expected {
        return Err(ParseError::InvalidValue("address"));
    }
    Ok((*family, u16::from_be_bytes([*p0, *p1]), raw))
}

fn xor_mask(tid: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(&tid.0);
    mask
}

fn xor_in_place(bytes: &mut [u8], mask: &[u8; 16]) {
    for (byte, m) in bytes.iter_mut().zip(mask) {
        *byte ^= m;
    }
}

/// Reads a 32-bit value (LIFETIME, PRIORITY, FINGERPRINT, CONNECTION-ID).
pub fn read_u32(value: &[u8]) -> Result<u32, ParseError> {
    let bytes: [u8; 4] = value.try_into().map_err(|_| ParseError::InvalidValue("32-bit value"))?;
    Ok(u32::from_be_bytes(bytes))
}

/// Reads a UTF-8 text value (USERNAME, REALM, NONCE, SOFTWARE) no longer than
/// `max` bytes, the limits of RFC 8489 §14.
pub fn read_text<'a>(value: &'a [u8], max: usize, what: &'static str) -> Result<&'a str, ParseError> {
    if value.len() > max {
        return Err(ParseError::InvalidValue(what));
    }
    std::str::from_utf8(value).map_err(|_| ParseError::InvalidValue(what))
}

/// An ERROR-CODE value: the code (300-699) and its reason phrase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ErrorCodeValue<'a> {
    pub code: u16,
    pub reason: &'a str,
}

/// Reads ERROR-CODE (RFC 8489 §14.8): 21 reserved bits, class (3-6) and number (0-99).
pub fn read_error_code(value: &[u8]) -> Result<ErrorCodeValue<'_>, ParseError> {
    let [_, _, class, number, reason @ ..] = value else {
        return Err(ParseError::InvalidValue("ERROR-CODE"));
    };
    let class = u16::from(class & 0x07);
    let number = u16::from(*number);
    if !(3..=6).contains(&class) || number > 99 {
        return Err(ParseError::InvalidValue("ERROR-CODE"));
    }
    let reason = read_text(reason, 763, "ERROR-CODE reason")?;
    Ok(ErrorCodeValue { code: class * 100 + number, reason })
}

/// Reads ADDRESS-ERROR-CODE (RFC 8656 §18.12): the family, then an
/// ERROR-CODE value.
pub fn read_address_error_code(value: &[u8]) -> Result<(u8, ErrorCodeValue<'_>), ParseError> {
    let family = *value.first().ok_or(ParseError::InvalidValue("ADDRESS-ERROR-CODE"))?;
    let code = read_error_code(value).map_err(|_| ParseError::InvalidValue("ADDRESS-ERROR-CODE"))?;
    Ok((family, code))
}

/// Iterates the types listed in UNKNOWN-ATTRIBUTES.
pub fn read_unknown_attributes(value: &[u8]) -> Result<impl Iterator<Item = AttrType> + '_, ParseError> {
    if !value.len().is_multiple_of(2) {
        return Err(ParseError::InvalidValue("UNKNOWN-ATTRIBUTES"));
    }
    Ok(value.chunks_exact(2).map(|pair| AttrType(u16::from_be_bytes([pair[0], pair[1]]))))
}

/// The transport protocol number in REQUESTED-TRANSPORT (RFC 8656 §18.7).
pub fn read_requested_transport(value: &[u8]) -> Result<u8, ParseError> {
    match value {
        [protocol, _, _, _] => Ok(*protocol),
        _ => Err(ParseError::InvalidValue("REQUESTED-TRANSPORT")),
    }
}

/// The family in REQUESTED-ADDRESS-FAMILY or ADDITIONAL-ADDRESS-FAMILY
/// (RFC 8656 §18.8, §18.11).
pub fn read_address_family(value: &[u8]) -> Result<u8, ParseError> {
    match value {
        [family, _, _, _] => Ok(*family),
        _ => Err(ParseError::InvalidValue("address family")),
    }
}

/// The R bit of EVEN-PORT (RFC 8656 §18.6): reserve the next-higher port too.
pub fn read_even_port(value: &[u8]) -> Result<bool, ParseError> {
    match value {
        [flags] => Ok(flags & 0x80 != 0),
        _ => Err(ParseError::InvalidValue("EVEN-PORT")),
    }
}

/// CHANNEL-NUMBER (RFC 8656 §18.1): the number, then 16 reserved bits.
pub fn read_channel_number(value: &[u8]) -> Result<u16, ParseError> {
    match value {
        [hi, lo, _, _] => Ok(u16::from_be_bytes([*hi, *lo])),
        _ => Err(ParseError::InvalidValue("CHANNEL-NUMBER")),
    }
}

/// The flags of CHANGE-REQUEST (RFC 5780 §7.2).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChangeRequest {
    pub change_ip: bool,
    pub change_port: bool,
}

impl ChangeRequest {
    /// Bit A of the last byte.
    const CHANGE_IP: u8 = 0x04;
    /// Bit B of the last byte.
    const CHANGE_PORT: u8 = 0x02;

    /// The four value bytes.
    pub fn to_bytes(self) -> [u8; 4] {
        let mut flags = 0;
        if self.change_ip {
            flags |= Self::CHANGE_IP;
        }
        if self.change_port {
            flags |= Self::CHANGE_PORT;
        }
        [0, 0, 0, flags]
    }

    pub fn is_change(self) -> bool {
        self.change_ip || self.change_port
    }
}

/// CHANGE-REQUEST (RFC 5780 §7.2): 32 bits of which two are flags; the
/// other bits are ignored.
pub fn read_change_request(value: &[u8]) -> Result<ChangeRequest, ParseError> {
    match value {
        [_, _, _, flags] => Ok(ChangeRequest {
            change_ip: flags & ChangeRequest::CHANGE_IP != 0,
            change_port: flags & ChangeRequest::CHANGE_PORT != 0,
        }),
        _ => Err(ParseError::InvalidValue("CHANGE-REQUEST")),
    }
}

/// RESPONSE-PORT (RFC 5780 §7.5): a port, then two bytes of padding.
pub fn read_response_port(value: &[u8]) -> Result<u16, ParseError> {
    match value {
        [hi, lo, _, _] => Ok(u16::from_be_bytes([*hi, *lo])),
        _ => Err(ParseError::InvalidValue("RESPONSE-PORT")),
    }
}

/// RESERVATION-TOKEN (RFC 8656 §18.9): eight opaque bytes.
pub fn read_reservation_token(value: &[u8]) -> Result<[u8; 8], ParseError> {
    value.try_into().map_err(|_| ParseError::InvalidValue("RESERVATION-TOKEN"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xor_address_matches_rfc_5769_vectors() {
        let tid = TransactionId([0xb7, 0xe7, 0xa7, 0x01, 0xbc, 0x34, 0xd6, 0x86, 0xfa, 0x87, 0xdf, 0xae]);
        let v4 = [0x00, 0x01, 0xa1, 0x47, 0xe1, 0x12, 0xa6, 0x43];
        let addr = read_xor_address(&v4, &tid).expect("valid vector");
        assert_eq!(addr, "192.0.2.1:32853".parse().expect("literal"));
        let mut out = [0u8; 8];
        write_address(&mut out, &addr, Some(&tid));
        assert_eq!(out, v4);

        let v6 = [
            0x00, 0x02, 0xa1, 0x47, 0x01, 0x13, 0xa9, 0xfa, 0xa5, 0xd3, 0xf1, 0x79, 0xbc, 0x25, 0xf4, 0xb5, 0xbe, 0xd2,
            0xb9, 0xd9,
        ];
        let addr = read_xor_address(&v6, &tid).expect("valid vector");
        assert_eq!(addr, "[2001:db8:1234:5678:11:2233:4455:6677]:32853".parse().expect("literal"));
        let mut out = [0u8; 20];
        write_address(&mut out, &addr, Some(&tid));
        assert_eq!(out, v6);
    }

    #[test]
    fn address_rejects_bad_family_and_length() {
        assert!(read_address(&[0, 3, 0, 1, 1, 2, 3, 4]).is_err());
        assert!(read_address(&[0, 1, 0, 1, 1, 2, 3]).is_err());
        assert!(read_address(&[0, 2, 0, 1, 1, 2, 3, 4]).is_err());
        assert!(read_address(&[]).is_err());
    }

    #[test]
    fn error_code_reads_class_and_number() {
        let value = [0, 0, 4, 1, b'U', b'n'];
        assert_eq!(read_error_code(&value), Ok(ErrorCodeValue { code: 401, reason: "Un" }));
        assert!(read_error_code(&[0, 0, 2, 1]).is_err());
        assert!(read_error_code(&[0, 0, 4, 100]).is_err());
    }

    #[test]
    fn comprehension_required_unknowns_are_not_known() {
        assert!(!AttrType(0x0030).is_known());
        assert!(AttrType(0x8030).is_known());
        assert!(AttrType::XOR_PEER_ADDRESS.is_known());
        for typ in [AttrType::CHANGE_REQUEST, AttrType::PADDING, AttrType::RESPONSE_PORT] {
            assert!(!typ.is_known() && typ.is_nat_discovery_request());
        }
    }

    #[test]
    fn change_request_flags_round_trip() {
        for (change_ip, change_port) in [(false, false), (true, false), (false, true), (true, true)] {
            let flags = ChangeRequest { change_ip, change_port };
            assert_eq!(read_change_request(&flags.to_bytes()), Ok(flags));
        }
        assert_eq!(read_change_request(&[0, 0, 0, 0x06]), Ok(ChangeRequest { change_ip: true, change_port: true }));
        assert!(read_change_request(&[0, 0, 6]).is_err());
        assert_eq!(read_response_port(&[0x12, 0x34, 0, 0]), Ok(0x1234));
        assert!(read_response_port(&[0x12, 0x34]).is_err());
    }
}
