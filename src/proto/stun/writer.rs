//! Writing a STUN message into a caller's reusable buffer (RFC 8489 §5, §14).
//!
//! The header's length field is kept current after every attribute, so
//! MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256 and FINGERPRINT are computed over
//! exactly the bytes that go on the wire. Padding is zero. Callers keep a
//! message under 64 KiB, the most its 16-bit length can describe; a larger one
//! is a bug in the caller, not something the network can cause.

use std::net::SocketAddr;

use super::attr::{self, AttrType};
use super::error_code::ErrorCode;
use super::integrity::{self, SHA1_MAC_LEN, SHA256_MAC_LEN};
use super::{ATTR_HEADER_LEN, HEADER_LEN, MAGIC_COOKIE, MessageType, TransactionId};

/// Appends one message to a buffer. The buffer is not cleared, so several
/// messages can be written back to back (a TCP write queue, a test).
pub struct MessageWriter<'b> {
    buf: &'b mut Vec<u8>,
    start: usize,
    tid: TransactionId,
    padding: u8,
}

impl<'b> MessageWriter<'b> {
    /// Starts an RFC 8489 message with the magic cookie.
    pub fn new(buf: &'b mut Vec<u8>, message_type: MessageType, tid: TransactionId) -> Self {
        let mut tail = [0u8; 16];
        tail[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        tail[4..].copy_from_slice(&tid.0);
        Self::with_header_tail(buf, message_type, tail)
    }

    /// Starts a message whose bytes 4..20 are `tail`: an RFC 3489 response
    /// echoes the request's 128-bit transaction ID this way.
    pub fn with_header_tail(buf: &'b mut Vec<u8>, message_type: MessageType, tail: [u8; 16]) -> Self {
        let start = buf.len();
        buf.extend_from_slice(&message_type.to_u16().to_be_bytes());
        buf.extend_from_slice(&[0, 0]);
        buf.extend_from_slice(&tail);
        let mut tid = [0u8; 12];
        tid.copy_from_slice(&tail[4..]);
        Self { buf, start, tid: TransactionId(tid), padding: 0 }
    }

    /// Sets the byte used to pad later attributes. Receivers ignore padding
    /// (RFC 8489 §14); RFC 5769's samples pad with spaces, and reproducing them
    /// byte for byte needs this.
    pub fn padding_byte(&mut self, byte: u8) -> &mut Self {
        self.padding = byte;
        self
    }

    pub fn transaction_id(&self) -> TransactionId {
        self.tid
    }

    /// The length of the message so far, header included.
    pub fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Whether only the header has been written.
    pub fn is_empty(&self) -> bool {
        self.len() == HEADER_LEN
    }

    /// Appends an attribute with `value`, padded to four bytes.
    pub fn attr(&mut self, typ: AttrType, value: &[u8]) -> &mut Self {
        self.attr_with(typ, value.len(), |out| out.copy_from_slice(value))
    }

    /// Appends an attribute of `len` value bytes filled in by `fill`.
    pub fn attr_with(&mut self, typ: AttrType, len: usize, fill: impl FnOnce(&mut [u8])) -> &mut Self {
        let value_len = u16::try_from(len).expect("attribute values are built under 64 KiB");
        self.buf.extend_from_slice(&typ.0.to_be_bytes());
        self.buf.extend_from_slice(&value_len.to_be_bytes());
        let value_start = self.buf.len();
        let padded = (len + 3) & !3;
        self.buf.resize(value_start + padded, self.padding);
        fill(&mut self.buf[value_start..value_start + len]);
        self.update_length();
        self
    }

    pub fn attr_u32(&mut self, typ: AttrType, value: u32) -> &mut Self {
        self.attr(typ, &value.to_be_bytes())
    }

    /// MAPPED-ADDRESS-style attribute (plain address).
    pub fn address(&mut self, typ: AttrType, addr: &SocketAddr) -> &mut Self {
        self.attr_with(typ, attr::address_value_len(addr), |out| attr::write_address(out, addr, None))
    }

    /// XOR-MAPPED-ADDRESS-style attribute (address XORed with cookie and ID).
    pub fn xor_address(&mut self, typ: AttrType, addr: &SocketAddr) -> &mut Self {
        let tid = self.tid;
        self.attr_with(typ, attr::address_value_len(addr), |out| attr::write_address(out, addr, Some(&tid)))
    }

    /// ERROR-CODE with an optional reason phrase.
    pub fn error_code(&mut self, code: ErrorCode, reason: Option<&str>) -> &mut Self {
        let reason = reason.unwrap_or("");
        self.attr_with(AttrType::ERROR_CODE, 4 + reason.len(), |out| {
            out[..4].copy_from_slice(&code.value_prefix());
            out[4..].copy_from_slice(reason.as_bytes());
        })
    }

    /// ADDRESS-ERROR-CODE (RFC 8656 §18.12): why the relayed address of
    /// `family` was not allocated, laid out as ERROR-CODE with the family in
    /// its first byte.
    pub fn address_error_code(&mut self, family: u8, code: ErrorCode, reason: Option<&str>) -> &mut Self {
        let reason = reason.unwrap_or("");
        self.attr_with(AttrType::ADDRESS_ERROR_CODE, 4 + reason.len(), |out| {
            out[..4].copy_from_slice(&code.value_prefix());
            out[0] = family;
            out[4..].copy_from_slice(reason.as_bytes());
        })
    }

    /// UNKNOWN-ATTRIBUTES listing `types`.
    pub fn unknown_attributes(&mut self, types: &[AttrType]) -> &mut Self {
        self.attr_with(AttrType::UNKNOWN_ATTRIBUTES, types.len() * 2, |out| {
            for (slot, typ) in out.chunks_exact_mut(2).zip(types) {
                slot.copy_from_slice(&typ.0.to_be_bytes());
            }
        })
    }

    /// MESSAGE-INTEGRITY (HMAC-SHA1) over everything written so far.
    pub fn message_integrity(&mut self, key: &[u8]) -> &mut Self {
        let mac: [u8; SHA1_MAC_LEN] = self.mac_over_message(|header, body| integrity::hmac_sha1(key, header, body));
        self.attr(AttrType::MESSAGE_INTEGRITY, &mac)
    }

    /// MESSAGE-INTEGRITY-SHA256 (full 32 bytes) over everything written so far.
    pub fn message_integrity_sha256(&mut self, key: &[u8]) -> &mut Self {
        let mac: [u8; SHA256_MAC_LEN] = self.mac_over_message(|header, body| integrity::hmac_sha256(key, header, body));
        self.attr(AttrType::MESSAGE_INTEGRITY_SHA256, &mac)
    }

    /// FINGERPRINT, which must be the last attribute.
    pub fn fingerprint(&mut self) -> &mut Self {
        let covered = self.len() - HEADER_LEN + ATTR_HEADER_LEN + 4;
        let header = integrity::header_with_length(&self.buf[self.start..], covered);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&header);
        hasher.update(&self.buf[self.start + HEADER_LEN..]);
        let value = hasher.finalize() ^ integrity::FINGERPRINT_XOR;
        self.attr_u32(AttrType::FINGERPRINT, value)
    }

    /// Ends the message and returns its length.
    pub fn finish(self) -> usize {
        self.len()
    }

    /// Computes a MAC of `N` bytes over the message as it will read once an
    /// attribute holding that MAC is appended.
    fn mac_over_message<const N: usize>(&self, mac: impl FnOnce(&[u8; HEADER_LEN], &[u8]) -> [u8; N]) -> [u8; N] {
        let covered = self.len() - HEADER_LEN + ATTR_HEADER_LEN + N;
        let header = integrity::header_with_length(&self.buf[self.start..], covered);
        mac(&header, &self.buf[self.start + HEADER_LEN..])
    }

    fn update_length(&mut self) {
        let length = u16::try_from(self.len() - HEADER_LEN).expect("messages are built under 64 KiB");
        self.buf[self.start + 2..self.start + 4].copy_from_slice(&length.to_be_bytes());
    }
}
