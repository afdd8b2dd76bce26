//! Reading a STUN message: a checked header and a lazy attribute iterator over
//! the received bytes (RFC 8489 §5, §14, §15).
//!
//! `parse` validates the whole structure once: header bits, cookie, length
//! against the packet, every attribute's bounds and the placement and size of
//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT. After that the
//! iterator and the integrity checks cannot go out of bounds, so they are
//! infallible and allocation-free.

use super::attr::{self, AttrType};
use super::integrity::{self, SHA1_MAC_LEN, SHA256_MAC_LEN, SHA256_MAC_MIN_LEN};
use super::{ATTR_HEADER_LEN, Class, HEADER_LEN, MAGIC_COOKIE, MessageType, Method, TransactionId};
use crate::proto::error::ParseError;

/// A parsed STUN message borrowing the packet it was read from.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    bytes: &'a [u8],
    message_type: MessageType,
    integrity: Option<usize>,
    integrity_sha256: Option<usize>,
    fingerprint: Option<usize>,
}

/// One attribute: its type, its value (without padding) and where its header
/// starts in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Attribute<'a> {
    pub typ: AttrType,
    pub value: &'a [u8],
    pub offset: usize,
}

impl<'a> Message<'a> {
    /// Reads an RFC 5389/8489 message that fills `bytes` exactly (a datagram,
    /// or a frame cut from a stream by its length field).
    pub fn parse(bytes: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse_with(bytes, true)
    }

    /// Reads a message without requiring the magic cookie, as RFC 3489 clients
    /// send them. Only used when classic STUN is enabled.
    pub fn parse_rfc3489(bytes: &'a [u8]) -> Result<Self, ParseError> {
        Self::parse_with(bytes, false)
    }

    fn parse_with(bytes: &'a [u8], require_cookie: bool) -> Result<Self, ParseError> {
        if bytes.len() < HEADER_LEN {
            return Err(ParseError::Truncated("STUN header"));
        }
        let message_type =
            MessageType::from_u16(u16::from_be_bytes([bytes[0], bytes[1]])).ok_or(ParseError::NotStun)?;
        let length = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        if !length.is_multiple_of(4) {
            return Err(ParseError::UnalignedLength);
        }
        if HEADER_LEN + length != bytes.len() {
            return Err(ParseError::LengthMismatch { announced: HEADER_LEN + length, actual: bytes.len() });
        }
        if require_cookie && bytes[4..8] != MAGIC_COOKIE.to_be_bytes() {
            return Err(ParseError::NoMagicCookie);
        }

        let mut message = Self { bytes, message_type, integrity: None, integrity_sha256: None, fingerprint: None };
        let mut offset = HEADER_LEN;
        while offset < bytes.len() {
            // The length is a multiple of 4 and so is `offset`, so a whole
            // attribute header is always there.
            let typ = AttrType(u16::from_be_bytes([bytes[offset], bytes[offset + 1]]));
            let value_len = usize::from(u16::from_be_bytes([bytes[offset + 2], bytes[offset + 3]]));
            let padded = (value_len + 3) & !3;
            if offset + ATTR_HEADER_LEN + padded > bytes.len() {
                return Err(ParseError::AttributeOverrun(typ.0));
            }
            if message.fingerprint.is_some() {
                return Err(ParseError::AttributeAfterFingerprint);
            }
            match typ {
                AttrType::MESSAGE_INTEGRITY if message.integrity.is_none() && message.integrity_sha256.is_none() => {
                    if value_len != SHA1_MAC_LEN {
                        return Err(ParseError::AttributeLength(typ.0));
                    }
                    message.integrity = Some(offset);
                }
                AttrType::MESSAGE_INTEGRITY_SHA256 if message.integrity_sha256.is_none() => {
                    if !(SHA256_MAC_MIN_LEN..=SHA256_MAC_LEN).contains(&value_len) || !value_len.is_multiple_of(4) {
                        return Err(ParseError::AttributeLength(typ.0));
                    }
                    message.integrity_sha256 = Some(offset);
                }
                AttrType::FINGERPRINT => {
                    if value_len != 4 {
                        return Err(ParseError::AttributeLength(typ.0));
                    }
                    message.fingerprint = Some(offset);
                }
                _ => {}
            }
            offset += ATTR_HEADER_LEN + padded;
        }
        Ok(message)
    }

    pub fn message_type(&self) -> MessageType {
        self.message_type
    }

    pub fn method(&self) -> Method {
        self.message_type.method
    }

    pub fn class(&self) -> Class {
        self.message_type.class
    }

    pub fn transaction_id(&self) -> TransactionId {
        let mut id = [0u8; 12];
        id.copy_from_slice(&self.bytes[8..HEADER_LEN]);
        TransactionId(id)
    }

    /// Bytes 4..20: the cookie and transaction ID, which an RFC 3489 response
    /// echoes as its 128-bit transaction ID.
    pub fn header_tail(&self) -> [u8; 16] {
        let mut tail = [0u8; 16];
        tail.copy_from_slice(&self.bytes[4..HEADER_LEN]);
        tail
    }

    pub fn has_magic_cookie(&self) -> bool {
        self.bytes[4..8] == MAGIC_COOKIE.to_be_bytes()
    }

    /// The whole message as received.
    pub fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The attributes an agent must process: everything up to
    /// MESSAGE-INTEGRITY, then only MESSAGE-INTEGRITY-SHA256 and FINGERPRINT
    /// (RFC 8489 §14.5, §14.6).
    pub fn attributes(&self) -> Attributes<'a> {
        Attributes { bytes: self.bytes, offset: HEADER_LEN, seen_integrity: false, seen_integrity_sha256: false }
    }

    /// The first processed attribute of type `typ`.
    pub fn attribute(&self, typ: AttrType) -> Option<&'a [u8]> {
        self.attributes().find(|a| a.typ == typ).map(|a| a.value)
    }

    /// Comprehension-required attributes tern does not understand.
    pub fn unknown_required(&self) -> impl Iterator<Item = AttrType> + 'a {
        self.attributes().map(|a| a.typ).filter(|t| !t.is_known())
    }

    pub fn has_integrity(&self) -> bool {
        self.integrity.is_some()
    }

    pub fn has_integrity_sha256(&self) -> bool {
        self.integrity_sha256.is_some()
    }

    pub fn has_fingerprint(&self) -> bool {
        self.fingerprint.is_some()
    }

    /// Checks MESSAGE-INTEGRITY with `key`; false when absent or wrong.
    pub fn verify_integrity(&self, key: &[u8]) -> bool {
        let Some(offset) = self.integrity else { return false };
        let covered = offset - HEADER_LEN + ATTR_HEADER_LEN + SHA1_MAC_LEN;
        let header = integrity::header_with_length(self.bytes, covered);
        let value = &self.bytes[offset + ATTR_HEADER_LEN..offset + ATTR_HEADER_LEN + SHA1_MAC_LEN];
        integrity::verify_hmac_sha1(key, &header, &self.bytes[HEADER_LEN..offset], value)
    }

    /// Checks MESSAGE-INTEGRITY-SHA256 with `key`; false when absent or wrong.
    pub fn verify_integrity_sha256(&self, key: &[u8]) -> bool {
        let Some(offset) = self.integrity_sha256 else { return false };
        let value_len = usize::from(u16::from_be_bytes([self.bytes[offset + 2], self.bytes[offset + 3]]));
        let covered = offset - HEADER_LEN + ATTR_HEADER_LEN + value_len;
        let header = integrity::header_with_length(self.bytes, covered);
        let value = &self.bytes[offset + ATTR_HEADER_LEN..offset + ATTR_HEADER_LEN + value_len];
        integrity::verify_hmac_sha256(key, &header, &self.bytes[HEADER_LEN..offset], value)
    }

    /// Checks FINGERPRINT; false when absent or wrong.
    pub fn verify_fingerprint(&self) -> bool {
        let Some(offset) = self.fingerprint else { return false };
        let value = &self.bytes[offset + ATTR_HEADER_LEN..offset + ATTR_HEADER_LEN + 4];
        attr::read_u32(value).is_ok_and(|v| v == integrity::fingerprint(&self.bytes[..offset]))
    }
}

/// Iterator over the attributes of a [`Message`] that an agent processes.
#[derive(Clone, Debug)]
pub struct Attributes<'a> {
    bytes: &'a [u8],
    offset: usize,
    seen_integrity: bool,
    seen_integrity_sha256: bool,
}

impl<'a> Iterator for Attributes<'a> {
    type Item = Attribute<'a>;

    fn next(&mut self) -> Option<Self::Item> {
        while self.offset < self.bytes.len() {
            let offset = self.offset;
            // Bounds were checked by `Message::parse`.
            let typ = AttrType(u16::from_be_bytes([self.bytes[offset], self.bytes[offset + 1]]));
            let len = usize::from(u16::from_be_bytes([self.bytes[offset + 2], self.bytes[offset + 3]]));
            self.offset += ATTR_HEADER_LEN + ((len + 3) & !3);
            let ignored = match typ {
                AttrType::FINGERPRINT => false,
                AttrType::MESSAGE_INTEGRITY_SHA256 => self.seen_integrity_sha256,
                _ => self.seen_integrity || self.seen_integrity_sha256,
            };
            if ignored {
                continue;
            }
            match typ {
                AttrType::MESSAGE_INTEGRITY => self.seen_integrity = true,
                AttrType::MESSAGE_INTEGRITY_SHA256 => self.seen_integrity_sha256 = true,
                _ => {}
            }
            let start = offset + ATTR_HEADER_LEN;
            return Some(Attribute { typ, value: &self.bytes[start..start + len], offset });
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stun::writer::MessageWriter;

    fn binding_request() -> Vec<u8> {
        let mut buf = Vec::new();
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(Method::BINDING, Class::Request), TransactionId([7; 12]));
        w.attr(AttrType::SOFTWARE, b"abc");
        w.finish();
        buf
    }

    #[test]
    fn header_checks_reject_each_defect() {
        let good = binding_request();
        assert!(Message::parse(&good).is_ok());
        assert_eq!(Message::parse(&good[..19]).err(), Some(ParseError::Truncated("STUN header")));

        let mut bad = good.clone();
        bad[0] |= 0x80;
        assert_eq!(Message::parse(&bad).err(), Some(ParseError::NotStun));

        let mut bad = good.clone();
        bad[4] = 0;
        assert_eq!(Message::parse(&bad).err(), Some(ParseError::NoMagicCookie));
        assert!(Message::parse_rfc3489(&bad).is_ok());

        let mut bad = good.clone();
        bad[3] += 1;
        assert_eq!(Message::parse(&bad).err(), Some(ParseError::UnalignedLength));

        let mut bad = good.clone();
        bad.extend_from_slice(&[0; 4]);
        assert!(matches!(Message::parse(&bad), Err(ParseError::LengthMismatch { .. })));

        let mut bad = good.clone();
        bad[23] = 200;
        assert_eq!(Message::parse(&bad).err(), Some(ParseError::AttributeOverrun(0x8022)));
    }

    #[test]
    fn attributes_after_integrity_are_ignored_except_sha256_and_fingerprint() {
        let mut buf = Vec::new();
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(Method::BINDING, Class::Request), TransactionId([1; 12]));
        w.attr(AttrType::USERNAME, b"user");
        w.message_integrity(b"key");
        w.attr(AttrType::SOFTWARE, b"late");
        w.message_integrity_sha256(b"key");
        w.fingerprint();
        w.finish();
        let message = Message::parse(&buf).expect("well-formed");
        let types: Vec<_> = message.attributes().map(|a| a.typ).collect();
        assert_eq!(
            types,
            [
                AttrType::USERNAME,
                AttrType::MESSAGE_INTEGRITY,
                AttrType::MESSAGE_INTEGRITY_SHA256,
                AttrType::FINGERPRINT
            ]
        );
        assert!(message.verify_integrity(b"key"));
        assert!(!message.verify_integrity(b"other"));
        // SOFTWARE sits between the two MACs, so the SHA-256 one covers it.
        assert!(message.verify_integrity_sha256(b"key"));
        assert!(message.verify_fingerprint());
    }

    #[test]
    fn fingerprint_must_be_last() {
        let mut buf = Vec::new();
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(Method::BINDING, Class::Request), TransactionId([1; 12]));
        w.fingerprint();
        w.attr(AttrType::SOFTWARE, b"x");
        w.finish();
        assert_eq!(Message::parse(&buf).err(), Some(ParseError::AttributeAfterFingerprint));
    }

    #[test]
    fn flipped_bit_breaks_integrity_and_fingerprint() {
        let mut buf = Vec::new();
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(Method::BINDING, Class::Request), TransactionId([1; 12]));
        w.attr(AttrType::USERNAME, b"user");
        w.message_integrity(b"key");
        w.fingerprint();
        w.finish();
        buf[25] ^= 1;
        let message = Message::parse(&buf).expect("still well-formed");
        assert!(!message.verify_integrity(b"key"));
        assert!(!message.verify_fingerprint());
    }

    #[test]
    fn unknown_required_lists_only_comprehension_required_unknowns() {
        let mut buf = Vec::new();
        let mut w =
            MessageWriter::new(&mut buf, MessageType::new(Method::BINDING, Class::Request), TransactionId([1; 12]));
        w.attr(AttrType(0x7777), b"");
        w.attr(AttrType(0xC001), b"opt");
        w.attr(AttrType::SOFTWARE, b"s");
        w.finish();
        let message = Message::parse(&buf).expect("well-formed");
        assert_eq!(message.unknown_required().collect::<Vec<_>>(), [AttrType(0x7777)]);
    }
}
