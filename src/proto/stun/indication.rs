//! Send and Data indications (RFC 8656 §11.2, §11.4): a peer's address and
//! application data in one STUN indication, XOR-PEER-ADDRESS then DATA.
//!
//! One layout, written two ways: around a payload that already sits in a
//! buffer with room in front of it ([`write_in_place`], the server's
//! peer-to-client hot path, which allocates nothing), or appended whole to a
//! buffer ([`append`], for senders that make the payload as they go). Both
//! give the bytes [`MessageWriter`](super::MessageWriter) would write for
//! the same message.

use std::net::SocketAddr;

use super::attr::{self, AttrType};
use super::{ATTR_HEADER_LEN, Class, HEADER_LEN, MAGIC_COOKIE, MessageType, Method, TransactionId};

/// The most bytes an indication puts in front of its data: the STUN header,
/// XOR-PEER-ADDRESS with an IPv6 address (a 20-byte value) and the DATA
/// attribute's header.
pub const MAX_HEADER_LEN: usize = HEADER_LEN + ATTR_HEADER_LEN + 20 + ATTR_HEADER_LEN;
/// The most padding after the data: up to the next multiple of four.
pub const MAX_PADDING: usize = 3;

/// Which of the two indications that carry data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Client to server, for the peer (RFC 8656 §11.2).
    Send,
    /// Server to client, from the peer (RFC 8656 §11.4).
    Data,
}

impl Kind {
    pub fn message_type(self) -> MessageType {
        let method = match self {
            Self::Send => Method::SEND,
            Self::Data => Method::DATA,
        };
        MessageType::new(method, Class::Indication)
    }
}

/// The bytes an indication about `peer` puts in front of its data.
pub fn header_len(peer: &SocketAddr) -> usize {
    HEADER_LEN + ATTR_HEADER_LEN + attr::address_value_len(peer) + ATTR_HEADER_LEN
}

/// Writes an indication around the payload at `slot[headroom..headroom + len]`:
/// STUN header, XOR-PEER-ADDRESS, DATA header before it, zero padding after
/// it. Returns the message's bounds in the slot, or `None` when the slot has
/// no room for the header ([`header_len`]) or the padding, or the message
/// would be over 64 KiB.
pub fn write_in_place(
    slot: &mut [u8],
    headroom: usize,
    len: usize,
    kind: Kind,
    peer: &SocketAddr,
    tid: TransactionId,
) -> Option<(usize, usize)> {
    let address_len = attr::address_value_len(peer);
    let header_len = header_len(peer);
    let start = headroom.checked_sub(header_len)?;
    let padded = (len + 3) & !3;
    let message_len = u16::try_from(header_len - HEADER_LEN + padded).ok()?;
    let data_len = u16::try_from(len).ok()?;
    let out = slot.get_mut(start..headroom + padded)?;
    out[..2].copy_from_slice(&kind.message_type().to_u16().to_be_bytes());
    out[2..4].copy_from_slice(&message_len.to_be_bytes());
    out[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    out[8..HEADER_LEN].copy_from_slice(&tid.0);
    let mut at = HEADER_LEN;
    out[at..at + 2].copy_from_slice(&AttrType::XOR_PEER_ADDRESS.0.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&(address_len as u16).to_be_bytes());
    at += ATTR_HEADER_LEN;
    attr::write_address(&mut out[at..at + address_len], peer, Some(&tid));
    at += address_len;
    out[at..at + 2].copy_from_slice(&AttrType::DATA.0.to_be_bytes());
    out[at + 2..at + 4].copy_from_slice(&data_len.to_be_bytes());
    out[header_len + len..].fill(0);
    Some((start, headroom + padded))
}

/// Appends an indication carrying `payload` to `out`. Returns its length,
/// or `None` (and `out` unchanged) when it would be over 64 KiB.
pub fn append(out: &mut Vec<u8>, kind: Kind, peer: &SocketAddr, tid: TransactionId, payload: &[u8]) -> Option<usize> {
    append_with(out, kind, peer, tid, payload.len(), |room| room.copy_from_slice(payload))
}

/// [`append`] for a payload of `len` bytes that `fill` writes in place, so
/// a sender that makes its payload (the load generator) copies it nowhere.
pub fn append_with(
    out: &mut Vec<u8>,
    kind: Kind,
    peer: &SocketAddr,
    tid: TransactionId,
    len: usize,
    fill: impl FnOnce(&mut [u8]),
) -> Option<usize> {
    let header_len = header_len(peer);
    if header_len - HEADER_LEN + ((len + 3) & !3) > usize::from(u16::MAX) {
        return None;
    }
    let start = out.len();
    out.resize(start + header_len + len + MAX_PADDING, 0);
    let slot = &mut out[start..];
    fill(&mut slot[header_len..header_len + len]);
    let (_, end) = write_in_place(slot, header_len, len, kind, peer, tid)
        .expect("the length fits 16 bits and the slot has room for header and padding");
    out.truncate(start + end);
    Some(end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::stun::{Message, MessageWriter};

    fn peers() -> [SocketAddr; 2] {
        ["192.0.2.7:40000".parse().expect("literal"), "[2001:db8::7]:40001".parse().expect("literal")]
    }

    /// The same message built attribute by attribute.
    fn written_by_message_writer(kind: Kind, peer: &SocketAddr, tid: TransactionId, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut w = MessageWriter::new(&mut out, kind.message_type(), tid);
        w.xor_address(AttrType::XOR_PEER_ADDRESS, peer).attr(AttrType::DATA, payload);
        w.finish();
        out
    }

    #[test]
    fn indications_are_what_message_writer_writes() {
        let tid = TransactionId([0x5A; 12]);
        for kind in [Kind::Send, Kind::Data] {
            for peer in &peers() {
                for len in 0..=9 {
                    let payload: Vec<u8> = (1..=len as u8).collect();
                    let expected = written_by_message_writer(kind, peer, tid, &payload);
                    // Old bytes around the payload, as in a reused receive slot.
                    let mut slot = vec![0xAA; MAX_HEADER_LEN + len + MAX_PADDING];
                    slot[MAX_HEADER_LEN..MAX_HEADER_LEN + len].copy_from_slice(&payload);
                    let (start, end) = write_in_place(&mut slot, MAX_HEADER_LEN, len, kind, peer, tid).expect("room");
                    assert_eq!(&slot[start..end], &expected[..], "{kind:?} {peer} len {len}");
                    let mut appended = vec![0xEE];
                    let appended_len = append(&mut appended, kind, peer, tid, &payload).expect("small");
                    assert_eq!(appended_len, expected.len());
                    assert_eq!(&appended[1..], &expected[..], "{kind:?} {peer} len {len}");
                }
            }
        }
    }

    #[test]
    fn indications_round_trip_through_the_parser() {
        let tid = TransactionId::random();
        for peer in &peers() {
            let mut out = Vec::new();
            append(&mut out, Kind::Data, peer, tid, b"hello").expect("small");
            let message = Message::parse(&out).expect("well-formed");
            assert_eq!(message.message_type(), MessageType::new(Method::DATA, Class::Indication));
            assert_eq!(message.transaction_id(), tid);
            let address = message.attribute(AttrType::XOR_PEER_ADDRESS).expect("XOR-PEER-ADDRESS");
            assert_eq!(attr::read_xor_address(address, &tid), Ok(*peer));
            assert_eq!(message.attribute(AttrType::DATA), Some(&b"hello"[..]));
            assert_eq!(out.len() % 4, 0, "padded to four");
        }
    }

    #[test]
    fn an_ipv6_peer_uses_all_of_the_headroom() {
        let [v4, v6] = peers();
        assert_eq!(header_len(&v6), MAX_HEADER_LEN);
        assert_eq!(header_len(&v4), MAX_HEADER_LEN - 12);
        let mut slot = [0u8; MAX_HEADER_LEN + 5 + MAX_PADDING];
        let tid = TransactionId([1; 12]);
        assert_eq!(write_in_place(&mut slot, MAX_HEADER_LEN, 5, Kind::Data, &v6, tid), Some((0, MAX_HEADER_LEN + 8)));
        assert_eq!(write_in_place(&mut slot, MAX_HEADER_LEN, 5, Kind::Data, &v4, tid), Some((12, MAX_HEADER_LEN + 8)));
        assert_eq!(write_in_place(&mut slot, MAX_HEADER_LEN - 1, 5, Kind::Data, &v6, tid), None, "no headroom");
        assert_eq!(write_in_place(&mut slot, MAX_HEADER_LEN, 9, Kind::Data, &v6, tid), None, "no tailroom");
    }

    #[test]
    fn messages_over_64k_are_refused() {
        let [v4, _] = peers();
        let tid = TransactionId([1; 12]);
        // The most data whose padded length still fits the 16-bit length.
        let most = (usize::from(u16::MAX) - (header_len(&v4) - HEADER_LEN)) & !3;
        let mut out = vec![1, 2, 3];
        assert_eq!(append(&mut out, Kind::Send, &v4, tid, &vec![0; most + 1]), None);
        assert_eq!(out, [1, 2, 3]);
        assert_eq!(append(&mut out, Kind::Send, &v4, tid, &vec![0; most]), Some(header_len(&v4) + most));
    }
}
